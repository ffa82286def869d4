//! `vws bench`: the measuring harness. Output follows BENCHMARKS.md: a human
//! table, or with `--json` one object with min/median/max per metric.

mod account;
mod api;
mod args;
mod density;
mod emboss;
mod oci;
mod on_demand;
mod paper;
mod rig;
mod scale;
mod vm;

pub use args::BenchArgs;
use args::Suite;

use crate::Globals;

/// Runs a suite.
pub async fn run(g: &Globals, a: BenchArgs) -> anyhow::Result<()> {
    match a.suite {
        Suite::Api => api::api_suite(g, &a).await,
        Suite::Start => vm::start_suite(g, &a).await,
        Suite::Stage => vm::stage_suite(g, &a).await,
        Suite::Job => vm::job_suite(g, &a).await,
        Suite::Clone => vm::clone_suite(g, &a).await,
        Suite::Paper => paper::paper_suite(g, &a).await,
        Suite::Emboss => emboss::emboss_suite(g, &a).await,
        Suite::Density => density::density_suite(g, &a).await,
        Suite::OnDemand => on_demand::on_demand_suite(g, &a).await,
        Suite::Oci => oci::oci_suite(g, &a).await,
        Suite::Scale => scale::scale_suite(g, &a).await,
    }
}
