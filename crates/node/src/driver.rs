//! The seam between the VW Manager and a workspace implementation (paper
//! §2.2): what any driver must do. Saving memory and live migration are
//! QEMU's alone (`qemu::QemuDriver`), not defaults of the trait.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a VM boots.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Boot {
    /// Kernel and initrd given directly (QEMU microvm).
    Kernel {
        /// Kernel file.
        kernel: PathBuf,
        /// Initrd file.
        initrd: PathBuf,
        /// The image's kernel command line.
        cmdline: String,
    },
    /// The workspace disk boots by itself (q35 with firmware).
    Disk,
}

/// A network interface as the driver realizes it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NicSpec {
    /// Name inside the guest.
    pub name: String,
    /// How it gets its address.
    pub method: vws_model::NicMethod,
    /// For `pool`: the tap device, its bridge, MAC, address (CIDR form) and
    /// gateway.
    #[serde(default)]
    pub bridged: Option<Bridged>,
}

/// A bridged interface's host side and guest configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Bridged {
    /// Tap device on the host.
    pub tap: String,
    /// Bridge it joins.
    pub bridge: String,
    /// Guest MAC.
    pub mac: String,
    /// Guest address, `a.b.c.d/len`.
    pub address: String,
    /// Guest gateway.
    pub gateway: Option<String>,
    /// The guest asks by DHCP; the node's dnsmasq on the bridge answers
    /// with `address` (the bridge then holds the gateway address).
    #[serde(default)]
    pub dhcp: bool,
}

/// Everything a driver needs to run one workspace on this host.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VmSpec {
    /// Workspace id.
    pub id: String,
    /// Guest hostname.
    pub hostname: String,
    /// Bound vCPUs.
    pub cpus: u32,
    /// Bound RAM in bytes.
    pub ram: u64,
    /// How it boots.
    pub boot: Boot,
    /// The workspace disk (a qcow2 overlay), if any.
    pub disk: Option<PathBuf>,
    /// Read-only CD-ROM images.
    #[serde(default)]
    pub cdroms: Vec<PathBuf>,
    /// Network interfaces.
    #[serde(default)]
    pub nics: Vec<NicSpec>,
    /// Startup program (a shell command line).
    #[serde(default)]
    pub startup: Option<String>,
    /// Served ports forwarded from the host (user-mode networking).
    #[serde(default)]
    pub forwards: Vec<vws_model::node::Forward>,
    /// Memory state to restore instead of booting (a hot image).
    #[serde(default)]
    pub restore: Option<PathBuf>,
    /// The hot image's guest RAM, mapped copy-on-write (private) so that all
    /// workspaces of one hot image share its pages; `restore` then holds only
    /// the device state.
    #[serde(default)]
    pub restore_ram: Option<PathBuf>,
    /// The passphrase file of an encrypted disk (on tmpfs, for the life of
    /// the deployment).
    #[serde(default)]
    pub disk_key: Option<PathBuf>,
    /// Set for a `dynamic account` workspace: run by the account driver,
    /// not as a VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<AccountSpec>,
}

/// What a driver reports about a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// No process.
    Shutdown,
    /// Executing.
    Running,
    /// Frozen.
    Paused,
}

/// Something that happened to a VM without being asked.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmEvent {
    /// Workspace id.
    pub id: String,
    /// What happened, for the workspace's `corrupted` reason.
    pub reason: String,
}

/// What a driver action can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// No such VM on this host.
    #[error("workspace {0} is not running on this node")]
    NotRunning(String),
    /// The action does not fit the VM's state.
    #[error("workspace {id} is {state:?} here")]
    WrongState {
        /// Workspace.
        id: String,
        /// Its state.
        state: VmState,
    },
    /// The guest did not become ready in time.
    #[error(
        "workspace {id} did not report ready within {waited:?}; last console lines:\n{console}"
    )]
    BootTimeout {
        /// Workspace.
        id: String,
        /// How long we waited.
        waited: Duration,
        /// The console's tail.
        console: String,
    },
    /// QEMU refused or died.
    #[error("qemu: {0}")]
    Qemu(String),
    /// The namespace helper of a dynamic account failed.
    #[error("dynamic account: {0}")]
    Sandbox(String),
    /// The workspace's host network could not be set up.
    #[error("network: {0}")]
    Network(#[from] NetError),
    /// This driver cannot do that.
    #[error("{0} is not supported by this driver")]
    Unsupported(&'static str),
    /// Files or processes.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A workspace implementation (the paper's VMM, or a dynamic account).
pub trait Driver: Send + Sync + 'static {
    /// Starts (boots) the workspace and waits until it reports ready.
    fn start(
        &self,
        spec: &VmSpec,
    ) -> impl std::future::Future<Output = Result<(), DriverError>> + Send;
    /// Shuts it down: gracefully within `grace`, then hard.
    fn stop(
        &self,
        id: &str,
        grace: Duration,
    ) -> impl std::future::Future<Output = Result<(), DriverError>> + Send;
    /// Freezes it.
    fn pause(&self, id: &str) -> impl std::future::Future<Output = Result<(), DriverError>> + Send;
    /// Thaws it.
    fn unpause(
        &self,
        id: &str,
    ) -> impl std::future::Future<Output = Result<(), DriverError>> + Send;
    /// Its state as the implementation sees it.
    fn status(&self, id: &str) -> impl std::future::Future<Output = VmState> + Send;
    /// Its serial console log.
    fn console(&self, id: &str) -> PathBuf;
}

/// What an account workspace is made of on this host (a dynamic account's
/// part of a [`VmSpec`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AccountSpec {
    /// The leased uid (= gid).
    pub uid: u32,
    /// The image: a filesystem image, the read-only lower layer.
    pub image: PathBuf,
    /// The workspace's own disk: an ext4 image, the upper layer.
    pub upper: PathBuf,
}

/// Where a workspace's own credential is put inside it (the agent writes it
/// in a VM; the account's own job, in a dynamic account).
pub const CREDENTIALS_DIR: &str = "/etc/vws/credentials";

/// What setting up a workspace's host network can fail with.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A tool (`ip`, `nft`, `dnsmasq`, `nsenter`) refused.
    #[error("{command}: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it said.
        stderr: String,
    },
    /// A file or a program could not be reached.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A step failed; `source` says how.
    #[error("{what}: {source}")]
    Step {
        /// The step.
        what: String,
        /// Its failure.
        source: Box<NetError>,
    },
    /// The network's configuration cannot do what was asked.
    #[error("{0}")]
    Config(&'static str),
}

impl NetError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetError {
        let what = what.into();
        move |source| NetError::Io { what, source }
    }

    pub(crate) fn during(what: impl Into<String>) -> impl FnOnce(NetError) -> NetError {
        let what = what.into();
        move |e| NetError::Step {
            what,
            source: Box::new(e),
        }
    }
}
