//! The seam between the VW Manager and a workspace implementation (paper
//! §2.2): what any driver must do ([`Driver`]), what only some can
//! ([`SavesMemory`], [`Migrates`]), and the registry that picks one by the
//! workspace's category ([`Drivers`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use vws_model::node::{JobRequest, WorkspaceCredentials};
use vws_model::Category;

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
    /// The disk's base image, read on demand over the node's NBD server
    /// while it is staged (`crate::on_demand`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_base: Option<OnDemandBase>,
    /// Set for a `dynamic account` workspace: run by the account driver,
    /// not as a VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<AccountSpec>,
}

/// A disk's base image that the node serves over NBD until it is in the
/// node's cache.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OnDemandBase {
    /// The NBD server's Unix socket.
    pub socket: PathBuf,
    /// The image's format (`raw`, `qcow2`).
    pub format: String,
    /// Where the image is once staged whole: a VM started after that reads
    /// it there, as the disk's own backing file names it.
    pub cached: PathBuf,
}

impl VmSpec {
    /// The workspace's category, which picks its driver.
    pub fn category(&self) -> Category {
        match self.account {
            Some(_) => Category::DynamicAccount,
            None => Category::Vm,
        }
    }
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
    #[error("{what} is not supported for a {} workspace", category.as_str())]
    Unsupported {
        /// What was asked.
        what: &'static str,
        /// The workspace's category.
        category: Category,
    },
    /// This node does not run workspaces of the category.
    #[error("this node does not run {} workspaces", .0.as_str())]
    NoDriver(Category),
    /// The workspace's credential could not be put in.
    #[error("putting the workspace's credential in the guest: {0}")]
    Credential(crate::agent::AgentError),
    /// The workspace's disk could not be converted.
    #[error("the workspace's disk: {0}")]
    Disk(String),
    /// The guest refused or did not answer.
    #[error("{0}")]
    Guest(#[from] crate::agent::AgentError),
    /// Files or processes.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A workspace implementation (the paper's VMM, or a dynamic account): one
/// per category, chosen once per workspace from [`Drivers`]. What not every
/// driver can do is a capability trait ([`SavesMemory`], [`Migrates`]) that
/// the driver hands out, not a default that fails.
#[async_trait::async_trait]
pub trait Driver: Send + Sync + 'static {
    /// The category of workspace it runs.
    fn category(&self) -> Category;
    /// After a restart of the node: takes over the workspaces a previous
    /// run left running (and the jobs in them, whose event logs are in
    /// `jobs`), and cleans up after those that ended meanwhile.
    async fn adopt(&self, jobs: &Path) -> Adopted;
    /// Readies a freshly staged workspace's own disk for this driver (an
    /// account's upper layer is a raw ext4 image). Most need nothing.
    async fn prepare(
        &self,
        _spec: &mut VmSpec,
        _lease: Option<vws_model::node::AccountLease>,
        _image: Option<PathBuf>,
    ) -> Result<(), DriverError> {
        Ok(())
    }
    /// Returns the workspace's own disk to the repository's form
    /// (`disk.qcow2` in its folder) before a check-in. Most need nothing.
    async fn prepare_check_in(&self, _spec: &VmSpec) -> Result<(), DriverError> {
        Ok(())
    }
    /// Starts (boots, or restores a hot image as a new workspace), waits
    /// until it reports ready, and puts its credential in.
    async fn start(
        &self,
        spec: &VmSpec,
        credentials: Option<&WorkspaceCredentials>,
    ) -> Result<(), DriverError>;
    /// Puts the workspace's own credential under [`CREDENTIALS_DIR`].
    async fn install_credentials(
        &self,
        spec: &VmSpec,
        credentials: &WorkspaceCredentials,
    ) -> Result<(), DriverError>;
    /// Shuts it down: gracefully within `grace`, then hard.
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), DriverError>;
    /// Ends it at once, whatever its state, leaving nothing of it running
    /// on the host (it is being destroyed).
    async fn remove(&self, id: &str) -> Result<(), DriverError>;
    /// Freezes it.
    async fn pause(&self, id: &str) -> Result<(), DriverError>;
    /// Thaws it.
    async fn unpause(&self, id: &str) -> Result<(), DriverError>;
    /// Its state as the implementation sees it.
    async fn status(&self, id: &str) -> VmState;
    /// Its serial console log.
    fn console(&self, id: &str) -> PathBuf;
    /// Its processes on the host, for usage figures.
    async fn pids(&self, id: &str) -> Vec<i32>;
    /// Its I/O since it started: bytes read from and written to its disks,
    /// and received and sent by its interfaces (loopback aside).
    async fn io(&self, id: &str) -> Io;
    /// Starts a job; its events go to `log`, its end to the node's job channel.
    async fn run_job(
        &self,
        spec: &VmSpec,
        job: JobRequest,
        log: PathBuf,
    ) -> Result<(), DriverError>;
    /// Signals a running job's process group.
    async fn signal_job(&self, id: &str, job: &str, log: &Path, signal: Signal);
    /// Writes a file inside the running workspace (with its permissions).
    async fn write_file(&self, spec: &VmSpec, path: &str, data: &[u8]) -> Result<(), DriverError>;
    /// Reads a file inside the running workspace.
    async fn read_file(&self, spec: &VmSpec, path: &str) -> Result<Vec<u8>, DriverError>;
    /// The uids it leases to workspaces, if it does (reported to the
    /// service, which leases them).
    fn leases(&self) -> Option<vws_model::node::AccountRange> {
        None
    }
    /// Its warm pool of processes waiting for workspaces, if it keeps one.
    fn warm_pool(&self) -> Option<vws_model::node::WarmPool> {
        None
    }
    /// Gives up what it holds for workspaces not yet asked for (a warm
    /// pool), when the node stops; running workspaces stay.
    fn close(&self) {}
    /// Saving and restoring memory, where the driver can.
    fn memory(&self) -> Option<&dyn SavesMemory> {
        None
    }
    /// Live migration between nodes, where the driver can.
    fn migration(&self) -> Option<&dyn Migrates> {
        None
    }
}

/// A running workspace's I/O counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Io {
    /// Bytes read from its disks.
    pub block_read: u64,
    /// Bytes written to its disks.
    pub block_write: u64,
    /// Bytes its interfaces received.
    pub net_rx: u64,
    /// Bytes its interfaces sent.
    pub net_tx: u64,
}

impl Io {
    /// Counters from a disk's bytes (read, written) and an interface
    /// table in `/proc/net/dev`'s form.
    pub fn new((block_read, block_write): (u64, u64), net_dev: &str) -> Io {
        let (net_rx, net_tx) = crate::usage::net_bytes(net_dev);
        Io {
            block_read,
            block_write,
            net_rx,
            net_tx,
        }
    }
}

/// What a driver took over at a restart of the node.
#[derive(Debug, Default)]
pub struct Adopted {
    /// Workspaces still running.
    pub workspaces: Vec<String>,
    /// Jobs still running: (job, workspace).
    pub jobs: Vec<(String, String)>,
}

/// A driver that can save a paused workspace's memory and bring it back.
#[async_trait::async_trait]
pub trait SavesMemory: Send + Sync {
    /// Saves a paused workspace's memory and device state to `to`, then
    /// ends it (a check-in of a paused workspace).
    async fn save_memory(&self, id: &str, to: &Path) -> Result<(), DriverError>;
    /// Saves a paused workspace's device state (and RAM, unless it is a
    /// file of its own, which is returned) to `to`; it stays paused.
    async fn snapshot_memory(&self, id: &str, to: &Path) -> Result<Option<PathBuf>, DriverError>;
    /// Brings a workspace back from saved state, running, as itself.
    async fn restore(&self, spec: &VmSpec, from: &Path) -> Result<(), DriverError>;
}

/// A driver that can move a running workspace to another node.
#[async_trait::async_trait]
pub trait Migrates: Send + Sync {
    /// Whether streams between nodes use TLS.
    fn tls(&self) -> bool;
    /// Target side: starts the workspace waiting for its state on `host`;
    /// returns the migration URI and, with a disk, its NBD export's URI.
    async fn incoming(
        &self,
        spec: &VmSpec,
        host: &str,
    ) -> Result<(String, Option<String>), DriverError>;
    /// Source side: sends the workspace to a waiting target, its progress
    /// in `meter`; on failure it goes on here.
    async fn migrate_out(
        &self,
        id: &str,
        migrate_uri: &str,
        nbd_uri: Option<&str>,
        tls_name: Option<&str>,
        meter: &MigrationMeter,
    ) -> Result<(), DriverError>;
    /// Target side, last step: takes over the handed-over jobs
    /// (job, log, output bytes) and resumes the workspace if it was running.
    async fn finish_incoming(
        &self,
        id: &str,
        jobs: Vec<(String, PathBuf, u64)>,
        running: bool,
    ) -> Result<(), DriverError>;
}

/// Live-migration progress of one outgoing workspace, shared with whoever asks.
#[derive(Default)]
pub struct MigrationMeter {
    /// `disk`, `memory`, `done` or `failed`.
    pub phase: std::sync::Mutex<String>,
    /// Bytes done in the phase.
    pub done: std::sync::atomic::AtomicU64,
    /// Bytes in the phase.
    pub total: std::sync::atomic::AtomicU64,
}

impl MigrationMeter {
    pub(crate) fn set(&self, phase: &str, done: u64, total: u64) {
        if let Ok(mut p) = self.phase.lock() {
            if *p != phase {
                *p = phase.to_string();
            }
        }
        self.done.store(done, std::sync::atomic::Ordering::Relaxed);
        self.total
            .store(total, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The drivers of one node, keyed by the category each runs.
#[derive(Clone, Default)]
pub struct Drivers(HashMap<Category, Arc<dyn Driver>>);

impl Drivers {
    /// Adds a driver for its category (replacing one registered before).
    pub fn register(&mut self, driver: Arc<dyn Driver>) {
        self.0.insert(driver.category(), driver);
    }

    /// The driver of a category, if this node runs it.
    pub fn get(&self, category: Category) -> Option<&Arc<dyn Driver>> {
        self.0.get(&category)
    }

    /// Every registered driver.
    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Driver>> {
        self.0.values()
    }
}

/// Where a node keeps what must never touch its disk (guest RAM files, an
/// encrypted disk's passphrase): tmpfs where there is one, one folder per
/// node home (its VMs' folder `root`).
pub fn tmpfs_dir(root: &Path) -> PathBuf {
    use sha2::Digest;
    let tag = sha2::Sha256::digest(root.to_string_lossy().as_bytes());
    if Path::new(SHM).is_dir() {
        PathBuf::from(format!("{SHM}/vws-{}", hex::encode(&tag[..6])))
    } else {
        root.join(".ram")
    }
}

/// Where [`tmpfs_dir`] puts its folders when the host has one.
const SHM: &str = "/dev/shm";

/// The file in a [`tmpfs_dir`] naming the folder it belongs to.
const OWNER_FILE: &str = "home";

/// Makes `root`'s [`tmpfs_dir`] and names `root` in it, so that a sweep
/// by another node can tell when the home is gone. Returns the folder.
pub fn own_tmpfs_dir(root: &Path) -> std::io::Result<PathBuf> {
    let dir = tmpfs_dir(root);
    std::fs::create_dir_all(&dir)?;
    let owner = dir.join(OWNER_FILE);
    if !owner.exists() {
        std::fs::write(owner, root.to_string_lossy().as_bytes())?;
    }
    Ok(dir)
}

/// Removes `root`'s [`tmpfs_dir`] if it holds nothing but its owner file:
/// the last of a driver's VMs is gone and nothing of theirs is left.
pub fn release_tmpfs_dir(root: &Path) {
    let dir = tmpfs_dir(root);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let only_owner = entries
        .flatten()
        .all(|e| e.file_name() == std::ffi::OsStr::new(OWNER_FILE));
    if only_owner {
        let _ = std::fs::remove_file(dir.join(OWNER_FILE));
        // Fails, leaving the folder, if a file arrived meanwhile.
        let _ = std::fs::remove_dir(&dir);
    }
}

/// How long an empty folder without an owner file is left alone before a
/// sweep removes it: long enough for the one making it to name itself.
const UNOWNED_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Makes `root`'s [`tmpfs_dir`] (see [`own_tmpfs_dir`]) and removes the
/// folders of node homes that are gone: a node killed with its VMs, its
/// home deleted after, would otherwise hold their RAM in tmpfs until the
/// host reboots. Empty folders that name no home (left by builds before
/// [`own_tmpfs_dir`]) go too once [`UNOWNED_GRACE`] old. Returns how many
/// it removed.
pub fn claim_tmpfs_dir(root: &Path) -> std::io::Result<usize> {
    let dir = own_tmpfs_dir(root)?;
    let Ok(entries) = std::fs::read_dir(SHM) else {
        return Ok(0);
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let path = e.path();
        if !e.file_name().to_string_lossy().starts_with("vws-") || path == dir {
            continue;
        }
        match std::fs::read_to_string(path.join(OWNER_FILE)) {
            Ok(owner) => {
                if !Path::new(&owner).exists() && std::fs::remove_dir_all(&path).is_ok() {
                    tracing::info!(folder = %path.display(), home = owner, "removed the RAM files of a node home that is gone");
                    removed += 1;
                }
            }
            Err(_) => {
                let idle = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age >= UNOWNED_GRACE);
                // `remove_dir` removes only an empty folder.
                if idle && std::fs::remove_dir(&path).is_ok() {
                    tracing::info!(folder = %path.display(), "removed an empty RAM folder that names no node home");
                    removed += 1;
                }
            }
        }
    }
    Ok(removed)
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

pub use vws_guest::CREDENTIALS_DIR;

/// The files of a workspace's credential under [`CREDENTIALS_DIR`]: name,
/// contents and mode (the key readable by its owner only), and its
/// instance metadata (`metadata.json`, which the metadata service inside
/// the workspace serves) when the service sent it.
pub fn credential_files(c: &WorkspaceCredentials) -> Vec<(&'static str, String, u32)> {
    let mut files = vec![
        ("key.pem", c.key.clone(), 0o600),
        ("cert.pem", c.cert.clone(), 0o644),
        ("ca.pem", c.ca.clone(), 0o644),
    ];
    if let Some(m) = &c.metadata {
        let text = serde_json::to_string(m).unwrap_or_default();
        files.push((vws_guest::imds::FILE, text, 0o644));
    }
    files
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gone_homes_ram_folder_is_removed_and_a_live_ones_kept() {
        let (gone, live) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        claim_tmpfs_dir(gone.path()).unwrap();
        let left = tmpfs_dir(gone.path());
        std::fs::write(left.join("ws-x.ram"), b"guest pages").unwrap();
        let gone_path = gone.path().to_path_buf();
        drop(gone);
        assert!(!gone_path.exists());
        let other = tempfile::tempdir().unwrap();
        claim_tmpfs_dir(other.path()).unwrap();
        claim_tmpfs_dir(live.path()).unwrap();
        assert!(!left.exists(), "{} was kept", left.display());
        assert!(tmpfs_dir(other.path()).join(OWNER_FILE).exists());
        for d in [other.path(), live.path()] {
            std::fs::remove_dir_all(tmpfs_dir(d)).unwrap();
        }
    }

    #[test]
    fn an_old_empty_unowned_ram_folder_is_removed_and_a_fresh_or_full_one_kept() {
        let unowned =
            |name: &str| PathBuf::from(format!("{SHM}/vws-test-{name}-{}", std::process::id()));
        let (old_empty, fresh_empty, old_full) =
            (unowned("old"), unowned("fresh"), unowned("full"));
        for d in [&old_empty, &fresh_empty, &old_full] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(old_full.join("ws-x.ram"), b"guest pages").unwrap();
        let long_ago = std::time::SystemTime::now() - 2 * UNOWNED_GRACE;
        for d in [&old_empty, &old_full] {
            std::fs::File::open(d)
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
        let home = tempfile::tempdir().unwrap();
        claim_tmpfs_dir(home.path()).unwrap();
        assert!(!old_empty.exists(), "{} was kept", old_empty.display());
        assert!(fresh_empty.exists() && old_full.exists());
        for d in [&fresh_empty, &old_full, &tmpfs_dir(home.path())] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn a_drivers_ram_folder_names_its_home_and_goes_when_emptied() {
        let home = tempfile::tempdir().unwrap();
        let dir = own_tmpfs_dir(home.path()).unwrap();
        let owner = std::fs::read_to_string(dir.join(OWNER_FILE)).unwrap();
        assert_eq!(owner, home.path().to_string_lossy());
        std::fs::write(dir.join("ws-x.ram"), b"guest pages").unwrap();
        release_tmpfs_dir(home.path());
        assert!(dir.join("ws-x.ram").exists() && dir.join(OWNER_FILE).exists());
        std::fs::remove_file(dir.join("ws-x.ram")).unwrap();
        release_tmpfs_dir(home.path());
        assert!(!dir.exists(), "{} was kept", dir.display());
    }
}
