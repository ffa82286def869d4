//! `vws bench`: the measuring harness (docs/benchmarks.md).

use clap::{Args, ValueEnum};

use crate::Globals;

/// Which suite to run.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Suite {
    /// create/list/show latency and throughput as the record count grows
    Api,
}

/// `vws bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The suite
    suite: Suite,
    /// Record counts to measure at (api suite)
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    sizes: Vec<usize>,
    /// Requests timed per operation at each size
    #[arg(long, default_value_t = 200)]
    samples: usize,
}

/// Runs a suite.
pub async fn run(_g: &Globals, a: BenchArgs) -> anyhow::Result<()> {
    match a.suite {
        Suite::Api => anyhow::bail!("bench api: samples {} sizes {:?}", a.samples, a.sizes),
    }
}
