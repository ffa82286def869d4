//! What `vws bench` is asked to run.

use clap::{Args, ValueEnum};

/// Which suite to run.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Suite {
    /// create/list/show latency and throughput as the record count grows
    Api,
    /// request → workspace ready (cold boot), against bare QEMU booting the same guest
    Start,
    /// staging throughput onto a node, against curl and cp of the same bytes; re-staging
    Stage,
    /// `vws run` → first output byte, and a CPU-bound job's slowdown, against the host
    Job,
    /// creating a workspace (a copy-on-write clone of its image) at several image sizes, against cp
    Clone,
    /// the paper's Figure 2: a job on the host, in a workspace from a hot image, in a workspace that starts it at boot
    Paper,
    /// the paper's EMBOSS experiment (§4): installing EMBOSS, deploying and starting it as a cold VM, a hot VM and an account, water and needle against the host's
    Emboss,
    /// how many idle workspaces a node holds: N VMs from one hot image, then N dynamic accounts; memory each beyond what they share, the node's memory, start times
    Density,
    /// a VM of an image its node lacks (the EMBOSS bench's Debian image), to first job output: staged whole first, against read on demand while it is staged
    OnDemand,
    /// OCI images: vws image pull of ~200 MB from a loopback registry against skopeo copy; create → first output from the pulled image as an account and a VM, against a built one
    Oci,
    /// the control plane at scale: simulated nodes heartbeating against 1 and 3 replicas on PostgreSQL with many records; heartbeats/s, deploy (placement), create and list latency, create throughput, lost-node detection (needs --database postgres://…)
    Scale,
}

/// `vws bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The suite
    pub(crate) suite: Suite,
    /// Record counts to measure at (api suite)
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    pub(crate) sizes: Vec<usize>,
    /// Requests timed per operation at each size
    #[arg(long, default_value_t = 200)]
    pub(crate) samples: usize,
    /// Database for the service under test [default: SQLite in a temporary
    /// folder]; for the scale suite, a PostgreSQL server it makes its
    /// databases on
    #[arg(long, value_name = "URL")]
    pub(crate) database: Option<String>,
    /// Repetitions (start and stage suites)
    #[arg(long, default_value_t = 5)]
    pub(crate) runs: usize,
    /// Folder with the minimal guest's vmlinuz and initrd.img [default: VWS_HOME/build/minimal]
    #[arg(long, value_name = "DIR")]
    pub(crate) guest: Option<std::path::PathBuf>,
    /// Size of the image the stage suite moves, in MiB
    #[arg(long, default_value_t = 512)]
    pub(crate) stage_mib: u64,
    /// Image sizes of the clone suite, in MiB
    #[arg(long, value_delimiter = ',', default_value = "8,1024,8192")]
    pub(crate) clone_mib: Vec<u64>,
    /// Workspace counts the density suite measures at
    #[arg(long, value_delimiter = ',', default_value = "1,10,25,50")]
    pub(crate) counts: Vec<usize>,
    /// Simulated node counts (scale suite)
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    pub(crate) nodes: Vec<usize>,
    /// Workspace record counts (scale suite)
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    pub(crate) records: Vec<u64>,
    /// Service replica counts (scale suite)
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    pub(crate) replicas: Vec<usize>,
    /// Seconds each scale configuration is measured for
    #[arg(long, default_value_t = 20)]
    pub(crate) window: u64,
    /// Where the paper suite writes its plot (SVG)
    #[arg(long, value_name = "FILE")]
    pub(crate) plot: Option<std::path::PathBuf>,
}
