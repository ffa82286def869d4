//! The VW Manager: this host's workspaces. Stages them from the repository
//! (check-out), starts, stops, pauses and unpauses them through the driver
//! of their category, and sends them back (check-in). Reports capacity and
//! health by heartbeat.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use vws_model::node::{DeployRequest, NodeEvent, NodeReport, Registration, StagingProgress};

use crate::agent::JobEvent;
use crate::driver::{
    Boot, Driver, DriverError, Drivers, MigrationMeter, NicSpec, VmEvent, VmSpec, VmState,
};
use crate::on_demand::OnDemand;
use crate::staging::{self, Progress, StageError};

/// What a node action can fail with.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No such workspace here.
    #[error("workspace {0} is not deployed on this node")]
    NotDeployed(String),
    /// Already here.
    #[error("workspace {0} is already deployed on this node")]
    AlreadyDeployed(String),
    /// Staging failed.
    #[error(transparent)]
    Stage(#[from] StageError),
    /// The driver failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// Returning the disk failed.
    #[error("returning the disk to the repository: {0}")]
    CheckIn(String),
    /// Local files.
    #[error("node files: {0}")]
    Io(#[from] std::io::Error),
    /// Something else.
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

pub use crate::driver::CREDENTIALS_DIR;

/// One host's manager.
pub struct Manager {
    /// Node name.
    pub name: String,
    home: PathBuf,
    drivers: Drivers,
    http: reqwest::Client,
    accel: (crate::accel::Accel, String),
    progress: Mutex<HashMap<String, Arc<Progress>>>,
    /// Which workspace each running job is in.
    jobs: Mutex<HashMap<String, String>>,
    /// How long a graceful stop may take before it is forced.
    pub stop_grace: Duration,
    /// The address other nodes reach this one at, for incoming migrations.
    pub migration_host: String,
    /// Where served ports of bridged interfaces are published (nftables
    /// forwards), if anywhere.
    pub publish: Option<String>,
    /// The service this node reports to, where check-ins and snapshots go
    /// (the URL a deploy named is used when none is set). A service that
    /// restarted at another address is reached where it is now.
    pub service: Option<crate::service_urls::ServiceUrls>,
    migrations: Mutex<HashMap<String, Arc<MigrationMeter>>>,
    /// The action under way on each workspace, for the report.
    busy: Arc<std::sync::Mutex<BTreeMap<String, &'static str>>>,
    /// The RAM offered to workspaces, when less than the host's: the
    /// report's total is this, and its free RAM this less what the
    /// workspaces here that hold memory were given.
    pub ram_limit: Option<u64>,
    /// Whether a VM whose base disk image is not on this node yet starts at
    /// once, reading the image on demand while it is staged
    /// (`crate::on_demand`), instead of after staging it whole.
    pub on_demand_images: bool,
    /// The images read on demand since this node started, by digest (a VM
    /// started from one reads it through its server for the VM's life).
    on_demand: Mutex<HashMap<String, Served>>,
}

/// An image read on demand: its server, and its staging (aborted when
/// dropped).
struct Served {
    image: Arc<OnDemand>,
    _fill: tokio_util::task::AbortOnDropHandle<()>,
}

/// A snapshot's memory and flattened disk while they are sent.
const SNAPSHOT_FILES: [&str; 2] = ["snapshot-memory.state", "snapshot-disk.qcow2"];

/// Marks a workspace as acted on until dropped.
struct Busy {
    map: Arc<std::sync::Mutex<BTreeMap<String, &'static str>>>,
    id: String,
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(&self.id);
        }
    }
}

impl Manager {
    /// A manager keeping its state under `home` and running workspaces
    /// through `drivers` (one per category it runs). `http` is how it
    /// reaches the repository (with the node's certificate).
    pub fn new(
        name: String,
        home: PathBuf,
        http: reqwest::Client,
        drivers: Drivers,
    ) -> anyhow::Result<Manager> {
        std::fs::create_dir_all(home.join("cache/sha256"))?;
        std::fs::create_dir_all(vms_dir(&home))?;
        std::fs::create_dir_all(home.join("jobs"))?;
        Ok(Manager {
            name,
            home,
            drivers,
            http,
            accel: crate::accel::detect(),
            progress: Mutex::new(HashMap::new()),
            jobs: Mutex::new(HashMap::new()),
            stop_grace: Duration::from_secs(5),
            migration_host: "127.0.0.1".into(),
            publish: None,
            service: None,
            migrations: Mutex::new(HashMap::new()),
            busy: Arc::default(),
            ram_limit: None,
            on_demand_images: false,
            on_demand: Mutex::new(HashMap::new()),
        })
    }

    /// Notes that `action` is under way on `id` until the guard goes.
    fn busy(&self, id: &str, action: &'static str) -> Busy {
        if let Ok(mut m) = self.busy.lock() {
            m.insert(id.to_string(), action);
        }
        Busy {
            map: self.busy.clone(),
            id: id.to_string(),
        }
    }

    /// The driver of a category, or why this node cannot run it.
    fn driver_of(&self, category: vws_model::Category) -> Result<&Arc<dyn Driver>, NodeError> {
        self.drivers
            .get(category)
            .ok_or(NodeError::Driver(DriverError::NoDriver(category)))
    }

    /// A deployed workspace's spec and driver.
    fn deployed_with_driver(&self, id: &str) -> Result<(VmSpec, &Arc<dyn Driver>), NodeError> {
        let spec = self.spec(id)?;
        let driver = self.driver_of(spec.category())?;
        Ok((spec, driver))
    }

    /// Takes over workspaces a previous run of this node left running (and
    /// their jobs), and removes the taps and rules of those that did not
    /// survive.
    pub async fn adopt(&self) -> Vec<String> {
        self.sweep_leftovers();
        let mut adopted = Vec::new();
        for driver in self.drivers.all() {
            let found = driver.adopt(&self.home.join("jobs")).await;
            adopted.extend(found.workspaces);
            self.jobs.lock().await.extend(found.jobs);
        }
        for id in &adopted {
            if let Err(e) = self.serve_base_again(id).await {
                tracing::error!(%id, error = %e, "the base image this workspace reads on demand is not served");
            }
        }
        let keep: Vec<String> = adopted
            .iter()
            .filter_map(|id| self.spec(id).ok())
            .flat_map(|s| s.nics.into_iter().filter_map(|n| n.bridged.map(|b| b.tap)))
            .collect();
        let swept = crate::net::sweep(&keep, &net_dir(&self.home));
        if !swept.is_empty() {
            tracing::info!(?swept, "removed taps no running workspace uses");
        }
        adopted
    }

    /// Removes what a killed node left half-made: deploys half-staged (a
    /// folder without the spec that makes a deploy real; their blobs stay
    /// in the cache, where a later deploy resumes them) and the files of
    /// snapshots cut off before they were sent.
    fn sweep_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(vms_dir(&self.home)) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !e.path().is_dir() {
                continue;
            }
            if e.path().join("spec.json").exists() {
                for f in SNAPSHOT_FILES {
                    let _ = std::fs::remove_file(e.path().join(f));
                }
                continue;
            }
            tracing::info!(id = %name, "removing a deploy a previous run left half-staged");
            let _ = std::fs::remove_dir_all(e.path());
            let _ = std::fs::remove_file(self.key_file(&name));
        }
    }

    /// Where a deployed workspace's files go back to.
    fn repository_for(&self, dir: &std::path::Path) -> Result<String, NodeError> {
        if let Some(s) = &self.service {
            return Ok(s.current());
        }
        std::fs::read_to_string(dir.join("repository"))
            .map(|s| s.trim().to_string())
            .map_err(|e| NodeError::CheckIn(e.to_string()))
    }

    fn vm_dir(&self, id: &str) -> PathBuf {
        vms_dir(&self.home).join(id)
    }

    /// Where an encrypted disk's passphrase is kept while deployed: tmpfs,
    /// never the node's disk.
    fn key_file(&self, id: &str) -> PathBuf {
        crate::driver::tmpfs_dir(&vms_dir(&self.home)).join(format!("{id}.key"))
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.home
            .join("cache/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    fn deployed(&self, id: &str) -> bool {
        self.vm_dir(id).join("spec.json").exists()
    }

    fn spec(&self, id: &str) -> Result<VmSpec, NodeError> {
        let text = std::fs::read_to_string(self.vm_dir(id).join("spec.json"))
            .map_err(|_| NodeError::NotDeployed(id.into()))?;
        serde_json::from_str(&text).map_err(|e| NodeError::Other(e.into()))
    }

    /// Staging progress of a deploy in flight.
    pub async fn staging(&self, id: &str) -> Option<StagingProgress> {
        self.progress.lock().await.get(id).map(|p| StagingProgress {
            done: p.done.load(std::sync::atomic::Ordering::Relaxed),
            total: p.total.load(std::sync::atomic::Ordering::Relaxed),
            moved: p.moved.load(std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Check-out: stages the pool files (skipping those already cached) and
    /// the workspace's disk, then records the spec. Returns bytes moved.
    pub async fn deploy(&self, req: DeployRequest) -> Result<u64, NodeError> {
        let _busy = self.busy(&req.id, "deploy");
        if self.deployed(&req.id) {
            return Err(NodeError::AlreadyDeployed(req.id));
        }
        let progress = Arc::new(Progress::default());
        self.progress
            .lock()
            .await
            .insert(req.id.clone(), progress.clone());
        let result = self.stage(&req, None, progress).await;
        self.progress.lock().await.remove(&req.id);
        if result.is_err() {
            // Nothing half-made stays usable: the spec is what makes a deploy real.
            let _ = std::fs::remove_dir_all(self.vm_dir(&req.id));
            let _ = std::fs::remove_file(self.key_file(&req.id));
        }
        result
    }

    async fn stage(
        &self,
        req: &DeployRequest,
        blank_disk: Option<u64>,
        progress: Arc<Progress>,
    ) -> Result<u64, NodeError> {
        let partial = self.home.join("cache/partial");
        let mut moved = 0;
        let on_demand = self.reads_on_demand(req, blank_disk);
        for b in &req.blobs {
            if on_demand.is_some_and(|d| d.digest == b.digest) {
                continue;
            }
            let url = format!("{}/v1/blobs/{}", req.repository, b.digest);
            moved += staging::fetch(
                &self.http,
                &url,
                Some(&b.digest),
                &self.blob_path(&b.digest),
                &partial,
                progress.clone(),
            )
            .await?;
        }
        let dir = self.vm_dir(&req.id);
        std::fs::create_dir_all(&dir)?;
        let backing = req
            .blobs
            .iter()
            .find(|b| b.role == vws_model::node::BlobRole::Disk);
        let driver = self.driver_of(req.category())?;
        // An encrypted disk's passphrase lives on tmpfs while deployed.
        let key_file = match &req.disk_key {
            Some(key) => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let path = self.key_file(&req.id);
                crate::driver::own_tmpfs_dir(&vms_dir(&self.home))?;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&path)?
                    .write_all(key.as_bytes())?;
                Some(path)
            }
            None => None,
        };
        let disk = match &req.disk {
            // A migration target's disk: blank, over the same backing image,
            // filled by the source's mirror.
            None if blank_disk.is_some() => {
                let path = dir.join("disk.qcow2");
                let size = blank_disk.unwrap_or_default();
                let base = backing.map(|b| self.blob_path(&b.digest));
                let made = match (&base, &req.backing_format) {
                    (Some(base), Some(fmt)) => {
                        vws_qemu::img::create_overlay(base, fmt, &path, Some(size)).await
                    }
                    _ => vws_qemu::img::create(&path, "qcow2", size).await,
                };
                made.map_err(|e| NodeError::Other(e.into()))?;
                Some(path)
            }
            Some(d) => {
                let url = format!("{}/v1/workspaces/{}/disk", req.repository, req.id);
                let path = dir.join("disk.qcow2");
                moved += staging::fetch(
                    &self.http,
                    &url,
                    Some(&d.digest),
                    &path,
                    &partial,
                    progress.clone(),
                )
                .await?;
                if let (Some(fmt), Some(backing)) = (&req.backing_format, backing) {
                    let base = self.blob_path(&backing.digest);
                    let rebased = match &key_file {
                        Some(k) => {
                            vws_qemu::img::rebase_unsafe_encrypted(&path, &base, fmt, k).await
                        }
                        None => vws_qemu::img::rebase_unsafe(&path, &base, fmt).await,
                    };
                    rebased.map_err(|e| NodeError::Other(e.into()))?;
                }
                Some(path)
            }
            None => None,
        };
        let disk_base = match on_demand {
            Some(b) => Some(
                self.read_on_demand(&req.repository, b, &req.backing_format, progress.clone())
                    .await?,
            ),
            None => None,
        };
        if let Some(m) = &req.memory {
            let url = format!("{}/v1/workspaces/{}/memory", req.repository, req.id);
            moved += staging::fetch(
                &self.http,
                &url,
                Some(&m.digest),
                &dir.join("memory.state"),
                &partial,
                progress.clone(),
            )
            .await?;
        }
        let find = |role: vws_model::node::BlobRole| {
            req.blobs
                .iter()
                .find(|b| b.role == role)
                .map(|b| self.blob_path(&b.digest))
        };
        let boot = match req.boot {
            vws_model::node::BootKind::Kernel => Boot::Kernel {
                kernel: find(vws_model::node::BlobRole::Kernel)
                    .ok_or_else(|| anyhow::anyhow!("no kernel in the deploy request"))?,
                initrd: find(vws_model::node::BlobRole::Initrd)
                    .ok_or_else(|| anyhow::anyhow!("no initrd in the deploy request"))?,
                cmdline: req.cmdline.clone().unwrap_or_default(),
            },
            vws_model::node::BootKind::Disk => Boot::Disk,
        };
        let spec = VmSpec {
            id: req.id.clone(),
            hostname: req.hostname.clone(),
            cpus: req.cpus,
            ram: req.ram,
            boot,
            disk,
            cdroms: req
                .blobs
                .iter()
                .filter(|b| b.role == vws_model::node::BlobRole::Cdrom)
                .map(|b| self.blob_path(&b.digest))
                .collect(),
            nics: req
                .nics
                .iter()
                .map(|(name, method)| NicSpec {
                    name: name.clone(),
                    method: *method,
                    bridged: req.addresses.iter().find(|a| &a.nic == name).map(|a| {
                        crate::driver::Bridged {
                            tap: crate::net::tap_name(&req.id, name),
                            bridge: crate::net::bridge_name(&a.segment),
                            mac: a.mac.clone(),
                            address: format!("{}/{}", a.address, a.prefix_len),
                            gateway: a.gateway.clone(),
                            dhcp: a.dhcp,
                        }
                    }),
                })
                .collect(),
            startup: req.startup.clone(),
            forwards: req
                .services
                .iter()
                .map(|(port, protocol)| vws_model::node::Forward {
                    port: *port,
                    protocol: protocol.clone(),
                    host: String::new(),
                })
                .collect(),
            // A hot image's workspaces are restored from its memory, not booted.
            restore: req
                .blobs
                .iter()
                .find(|b| b.role == vws_model::node::BlobRole::Memory)
                .map(|b| self.blob_path(&b.digest)),
            restore_ram: req
                .blobs
                .iter()
                .find(|b| b.role == vws_model::node::BlobRole::Ram)
                .map(|b| self.blob_path(&b.digest)),
            disk_key: key_file,
            disk_base,
            account: None,
        };
        let mut spec = spec;
        driver
            .prepare(
                &mut spec,
                req.account,
                backing.map(|b| self.blob_path(&b.digest)),
            )
            .await?;
        // Written last, atomically: a deploy is real only once this exists.
        let tmp = dir.join("spec.json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&spec).map_err(anyhow::Error::from)?,
        )?;
        std::fs::write(dir.join("repository"), &req.repository)?;
        std::fs::rename(tmp, dir.join("spec.json"))?;
        tracing::info!(id = %req.id, moved, "workspace staged");
        Ok(moved)
    }

    /// The base disk image of a deploy to read on demand: a VM's, with its
    /// own disk over it, not cached here, when this node reads images on
    /// demand (a migration target's blank disk stages its base whole).
    fn reads_on_demand<'r>(
        &self,
        req: &'r DeployRequest,
        blank_disk: Option<u64>,
    ) -> Option<&'r vws_model::node::BlobRef> {
        let base = req
            .blobs
            .iter()
            .find(|b| b.role == vws_model::node::BlobRole::Disk)?;
        (self.on_demand_images
            && blank_disk.is_none()
            && req.disk.is_some()
            && req.backing_format.is_some()
            && req.category() == vws_model::Category::Vm
            && !self.blob_path(&base.digest).exists())
        .then_some(base)
    }

    /// Serves `base` from the repository on demand (one server per image
    /// on this node, shared by the VMs started from it) and stages it whole
    /// in the background.
    async fn read_on_demand(
        &self,
        repository: &str,
        base: &vws_model::node::BlobRef,
        format: &Option<String>,
        progress: Arc<Progress>,
    ) -> Result<crate::driver::OnDemandBase, NodeError> {
        let hex = base.digest.trim_start_matches("sha256:");
        let socket = self
            .home
            .join("on-demand")
            .join(format!("{}.nbd", &hex[..16.min(hex.len())]));
        let cached = self.blob_path(&base.digest);
        let mut images = self.on_demand.lock().await;
        if !images.contains_key(&base.digest) {
            let url = format!("{repository}/v1/blobs/{}", base.digest);
            let image = OnDemand::open(
                &self.http,
                &url,
                &base.digest,
                &cached,
                &self.home.join("cache/partial"),
                progress,
            )
            .await?;
            image.serve(&socket)?;
            let filling = image.clone();
            let fill = tokio::spawn(async move {
                if let Err(e) = filling.fill().await {
                    tracing::error!(error = %e, "staging an image read on demand failed: \
                        the blocks its VMs have not read yet are fetched when they read them");
                }
            });
            images.insert(
                base.digest.clone(),
                Served {
                    image,
                    _fill: tokio_util::task::AbortOnDropHandle::new(fill),
                },
            );
        }
        Ok(crate::driver::OnDemandBase {
            socket,
            format: format.clone().unwrap_or_else(|| "raw".into()),
            cached,
        })
    }

    /// Serves again, after a restart of this node, the base image an
    /// adopted VM reads over NBD (its QEMU reconnects within 30 s), and
    /// resumes staging it.
    async fn serve_base_again(&self, id: &str) -> Result<(), NodeError> {
        let Some(base) = self.spec(id)?.disk_base else {
            return Ok(());
        };
        let digest = format!(
            "sha256:{}",
            base.cached
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
        );
        let repository = self.repository_for(&self.vm_dir(id))?;
        let blob = vws_model::node::BlobRef {
            digest,
            role: vws_model::node::BlobRole::Disk,
            size: 0,
        };
        self.read_on_demand(&repository, &blob, &Some(base.format), Arc::default())
            .await
            .map(drop)
    }

    /// Waits until a workspace's base image read on demand is staged
    /// whole: what reads the disk's chain outside QEMU (a snapshot's
    /// flattening) needs it.
    async fn base_settled(&self, spec: &VmSpec) -> Result<(), NodeError> {
        let Some(base) = spec.disk_base.as_ref().filter(|b| !b.cached.exists()) else {
            return Ok(());
        };
        let image = self
            .on_demand
            .lock()
            .await
            .values()
            .find(|s| s.image.dest() == base.cached)
            .map(|s| s.image.clone());
        match image {
            Some(image) => Ok(image.settled().await?),
            None => Err(NodeError::Other(anyhow::anyhow!(
                "the base image of {} is neither staged nor being staged",
                spec.id
            ))),
        }
    }

    /// Boots a deployed workspace and waits for it to report ready; returns
    /// where its served ports are reachable.
    pub async fn start(
        &self,
        id: &str,
        credentials: Option<vws_model::node::WorkspaceCredentials>,
    ) -> Result<Vec<vws_model::node::Forward>, NodeError> {
        let _busy = self.busy(id, "start");
        let spec = self.spec_with_forwards(id)?;
        let driver = self.driver_of(spec.category())?;
        driver.start(&spec, credentials.as_ref()).await?;
        Ok(spec.forwards)
    }

    /// Puts the workspace's own credential into it, under
    /// `/etc/vws/credentials` (the key readable by its owner only). Nothing
    /// is written on this host.
    pub async fn install_credentials(
        &self,
        id: &str,
        c: &vws_model::node::WorkspaceCredentials,
    ) -> Result<(), NodeError> {
        let (spec, driver) = self.deployed_with_driver(id)?;
        Ok(driver.install_credentials(&spec, c).await?)
    }

    /// Saves a paused workspace as a hot image: memory and device state, and
    /// its disk flattened to one standalone qcow2, sent to the repository as
    /// blobs. The workspace stays paused.
    pub async fn snapshot(&self, id: &str) -> Result<vws_model::node::Snapshot, NodeError> {
        let _busy = self.busy(id, "snapshot");
        let (spec, driver) = self.deployed_with_driver(id)?;
        let saver = driver.memory().ok_or(DriverError::Unsupported {
            what: "a snapshot",
            category: spec.category(),
        })?;
        let dir = self.vm_dir(id);
        let repository = self.repository_for(&dir)?;
        let [memory, disk] = SNAPSHOT_FILES.map(|f| dir.join(f));
        let result = async {
            let ram = saver.snapshot_memory(id, &memory).await?;
            let mut out = vws_model::node::Snapshot {
                memory: self.send_blob(&repository, &memory).await?,
                ram: None,
                disk: None,
            };
            if let Some(ram) = ram {
                // Read while the VM stays paused: the file is its RAM.
                out.ram = Some(self.send_blob(&repository, &ram).await?);
            }
            if dir.join("disk.qcow2").exists() {
                self.base_settled(&spec).await?;
                vws_qemu::img::flatten(&dir.join("disk.qcow2"), &disk, "qcow2")
                    .await
                    .map_err(|e| NodeError::Other(e.into()))?;
                out.disk = Some(self.send_blob(&repository, &disk).await?);
            }
            Ok::<_, NodeError>(out)
        }
        .await;
        let _ = std::fs::remove_file(&memory);
        let _ = std::fs::remove_file(&disk);
        result
    }

    /// Uploads a file to the repository's blob store.
    async fn send_blob(
        &self,
        repository: &str,
        path: &std::path::Path,
    ) -> Result<vws_model::node::SentBlob, NodeError> {
        let (digest, size) = self
            .upload(path, |d| format!("{repository}/v1/blobs/{d}"))
            .await?;
        Ok(vws_model::node::SentBlob { digest, size })
    }

    /// The spec with a free loopback port for each served port, chosen at
    /// each launch of QEMU.
    fn spec_with_forwards(&self, id: &str) -> Result<VmSpec, NodeError> {
        let mut spec = self.spec(id)?;
        let user = spec
            .nics
            .iter()
            .any(|n| n.method == vws_model::NicMethod::User);
        let bridged = spec.nics.iter().any(|n| n.bridged.is_some());
        // A user NIC's ports come from QEMU on loopback; a bridged NIC's,
        // where the node publishes them, from an nftables forward. A
        // dynamic account's are relayed by the node itself, whatever its
        // interfaces: on the published address or else on loopback.
        let account = spec.account.is_some();
        let at = match (&self.publish, user, bridged) {
            (_, true, _) => "127.0.0.1".to_string(),
            (Some(addr), false, true) => addr.clone(),
            _ if account => "127.0.0.1".to_string(),
            _ => {
                spec.forwards.clear();
                return Ok(spec);
            }
        };
        for f in &mut spec.forwards {
            let probe = std::net::TcpListener::bind((at.as_str(), 0))?;
            f.host = probe.local_addr()?.to_string();
        }
        Ok(spec)
    }

    /// Live migration, target side: stages the pool files, makes a blank
    /// disk overlay, and starts QEMU waiting for the guest's state.
    pub async fn incoming(
        &self,
        req: vws_model::node::IncomingRequest,
    ) -> Result<vws_model::node::MigrationTarget, NodeError> {
        let mut deploy = req.deploy;
        let id = deploy.id.clone();
        let _busy = self.busy(&id, "incoming");
        let category = deploy.category();
        let migrates = self
            .driver_of(category)?
            .migration()
            .ok_or(DriverError::Unsupported {
                what: "live migration",
                category,
            })?;
        if self.deployed(&id) {
            return Err(NodeError::AlreadyDeployed(id));
        }
        // Nothing comes from the repository's copy: the source sends it all.
        deploy.disk = None;
        deploy.memory = None;
        let prepared = async {
            self.stage(&deploy, req.disk_size, Arc::new(Progress::default()))
                .await?;
            let mut spec = self.spec_with_forwards(&id)?;
            spec.restore = None;
            spec.restore_ram = None;
            let (migrate_uri, nbd_uri) = migrates.incoming(&spec, &self.migration_host).await?;
            Ok::<_, NodeError>(vws_model::node::MigrationTarget {
                migrate_uri,
                nbd_uri,
                forwards: spec.forwards,
                tls_name: migrates.tls().then(|| self.name.clone()),
            })
        }
        .await;
        if prepared.is_err() {
            let _ = std::fs::remove_dir_all(self.vm_dir(&id));
        }
        prepared
    }

    /// Live migration, source side: sends the workspace to a waiting target.
    /// On success this host forgets it and returns its running jobs' output
    /// so far, for the target to go on with; on failure it runs on here.
    pub async fn migrate_out(
        &self,
        id: &str,
        to: vws_model::node::MigrationTarget,
    ) -> Result<vws_model::node::MigrationDone, NodeError> {
        let _busy = self.busy(id, "migrate");
        let (spec, driver) = self.deployed_with_driver(id)?;
        let migrates = driver.migration().ok_or(DriverError::Unsupported {
            what: "live migration",
            category: spec.category(),
        })?;
        let running = driver.status(id).await == VmState::Running;
        tracing::info!(%id, to = %to.migrate_uri, tls = to.tls_name.is_some(), "migrating out");
        let meter = Arc::new(MigrationMeter::default());
        self.migrations
            .lock()
            .await
            .insert(id.to_string(), meter.clone());
        let sent = migrates
            .migrate_out(
                id,
                &to.migrate_uri,
                to.nbd_uri.as_deref(),
                to.tls_name.as_deref(),
                &meter,
            )
            .await;
        self.migrations.lock().await.remove(id);
        sent?;
        let mut done = vws_model::node::MigrationDone {
            jobs: Vec::new(),
            running,
        };
        let mut map = self.jobs.lock().await;
        let mine: Vec<String> = map
            .iter()
            .filter(|(_, ws)| ws.as_str() == id)
            .map(|(j, _)| j.clone())
            .collect();
        for job in mine {
            map.remove(&job);
            let path = self.job_log(&job);
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            self.remove_job_files(&[job.as_str()]);
            let bytes = crate::agent::log_output_bytes(&log);
            done.jobs
                .push(vws_model::node::JobHandoff { job, log, bytes });
        }
        drop(map);
        std::fs::remove_dir_all(self.vm_dir(id))?;
        tracing::info!(%id, jobs = done.jobs.len(), "workspace migrated away");
        Ok(done)
    }

    /// Live migration, target side, last step: takes over the running jobs
    /// and resumes the guest.
    pub async fn finish_incoming(
        &self,
        id: &str,
        done: vws_model::node::MigrationDone,
    ) -> Result<(), NodeError> {
        let _busy = self.busy(id, "finish_incoming");
        let (spec, driver) = self.deployed_with_driver(id)?;
        let migrates = driver.migration().ok_or(DriverError::Unsupported {
            what: "live migration",
            category: spec.category(),
        })?;
        let mut jobs = Vec::new();
        for h in done.jobs {
            let path = self.job_log(&h.job);
            std::fs::write(&path, &h.log)?;
            self.note_job(id, &h.job);
            self.jobs.lock().await.insert(h.job.clone(), id.to_string());
            jobs.push((h.job, path, h.bytes));
        }
        migrates.finish_incoming(id, jobs, done.running).await?;
        tracing::info!(%id, "workspace migrated here");
        Ok(())
    }

    /// Progress of an outgoing migration.
    pub async fn migration(&self, id: &str) -> Option<vws_model::node::MigrationProgress> {
        self.migrations
            .lock()
            .await
            .get(id)
            .map(|m| vws_model::node::MigrationProgress {
                phase: m.phase.lock().map(|p| p.clone()).unwrap_or_default(),
                done: m.done.load(std::sync::atomic::Ordering::Relaxed),
                total: m.total.load(std::sync::atomic::Ordering::Relaxed),
            })
    }

    /// Shuts a workspace down.
    pub async fn stop(&self, id: &str) -> Result<(), NodeError> {
        let _busy = self.busy(id, "stop");
        let (_, driver) = self.deployed_with_driver(id)?;
        let memory = self.vm_dir(id).join("memory.state");
        if driver.status(id).await == VmState::Shutdown && memory.exists() {
            // A saved paused state that was never resumed: stopping discards it.
            std::fs::remove_file(&memory)?;
            return Ok(());
        }
        Ok(driver.stop(id, self.stop_grace).await?)
    }

    /// Freezes a workspace.
    pub async fn pause(&self, id: &str) -> Result<(), NodeError> {
        let _busy = self.busy(id, "pause");
        let (_, driver) = self.deployed_with_driver(id)?;
        Ok(driver.pause(id).await?)
    }

    /// Thaws a workspace; one deployed from the repository while paused is
    /// restored from its saved memory (returning its new port forwards).
    pub async fn unpause(
        &self,
        id: &str,
    ) -> Result<Option<Vec<vws_model::node::Forward>>, NodeError> {
        let _busy = self.busy(id, "unpause");
        let (spec, driver) = self.deployed_with_driver(id)?;
        let memory = self.vm_dir(id).join("memory.state");
        if driver.status(id).await == VmState::Shutdown && memory.exists() {
            let saver = driver.memory().ok_or(DriverError::Unsupported {
                what: "restoring saved memory",
                category: spec.category(),
            })?;
            let spec = self.spec_with_forwards(id)?;
            saver.restore(&spec, &memory).await?;
            let _ = std::fs::remove_file(&memory);
            return Ok(Some(spec.forwards));
        }
        driver.unpause(id).await?;
        Ok(None)
    }

    /// The driver's view of a workspace (shut down if it is not deployed).
    pub async fn status(&self, id: &str) -> VmState {
        match self.deployed_with_driver(id) {
            Ok((_, driver)) => driver.status(id).await,
            Err(_) => VmState::Shutdown,
        }
    }

    /// Its console log.
    pub fn console(&self, id: &str) -> PathBuf {
        match self.deployed_with_driver(id) {
            Ok((_, driver)) => driver.console(id),
            Err(_) => self.vm_dir(id).join("console.log"),
        }
    }

    /// Check-in: sends the workspace's disk back to the repository (verified
    /// there by digest) and removes it from this host. Refused while it runs.
    pub async fn undeploy(&self, id: &str) -> Result<(), NodeError> {
        let _busy = self.busy(id, "undeploy");
        let (spec, driver) = self.deployed_with_driver(id)?;
        let dir = self.vm_dir(id);
        match driver.status(id).await {
            VmState::Shutdown => {}
            // A paused workspace keeps its memory where the driver can save
            // it: saved, then ended.
            VmState::Paused if driver.memory().is_some() => {
                if let Some(saver) = driver.memory() {
                    saver.save_memory(id, &dir.join("memory.state")).await?
                }
            }
            // An account's processes cannot leave this host: stop it first.
            state => {
                return Err(NodeError::Driver(DriverError::WrongState {
                    id: id.into(),
                    state,
                }))
            }
        }
        driver.prepare_check_in(&spec).await?;
        let repository = self.repository_for(&dir)?;
        for (file, what) in [("disk.qcow2", "disk"), ("memory.state", "memory")] {
            if dir.join(file).exists() {
                self.check_in(&repository, id, what, &dir.join(file))
                    .await?;
            }
        }
        std::fs::remove_dir_all(&dir)?;
        let _ = std::fs::remove_file(self.key_file(id));
        tracing::info!(%id, "workspace checked in");
        Ok(())
    }

    /// Sends one file of a workspace back to the repository, which checks it
    /// against the digest sent along.
    async fn check_in(
        &self,
        repository: &str,
        id: &str,
        what: &str,
        path: &std::path::Path,
    ) -> Result<(), NodeError> {
        self.upload(path, |_| format!("{repository}/v1/workspaces/{id}/{what}"))
            .await
            .map(drop)
    }

    /// Streams a file to the repository with its digest (in `x-vws-digest`,
    /// and to `url`, which may name it); returns the digest and size.
    async fn upload(
        &self,
        path: &std::path::Path,
        url: impl FnOnce(&str) -> String,
    ) -> Result<(String, u64), NodeError> {
        let check = path.to_path_buf();
        let digest = tokio::task::spawn_blocking(move || staging::file_digest(&check))
            .await
            .map_err(anyhow::Error::from)??;
        let file = tokio::fs::File::open(path).await?;
        let len = file.metadata().await?.len();
        let body =
            reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
        let resp = self
            .http
            .put(url(&digest))
            .header("x-vws-digest", &digest)
            .header("content-length", len)
            .body(body)
            .send()
            .await
            .map_err(|e| NodeError::CheckIn(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(NodeError::CheckIn(resp.text().await.unwrap_or_default()));
        }
        Ok((digest, len))
    }

    /// Ends a workspace here at once, whatever its state, without checking
    /// its disk back in (the workspace is being destroyed).
    pub async fn remove(&self, id: &str) -> Result<(), NodeError> {
        let _busy = self.busy(id, "remove");
        if let Ok((_, driver)) = self.deployed_with_driver(id) {
            driver.remove(id).await?;
        }
        let _ = std::fs::remove_file(self.key_file(id));
        // Its jobs' logs go with it (they were kept across stop and
        // undeploy, for `vws job output`).
        let list = self.jobs_list(id);
        let jobs = std::fs::read_to_string(&list).unwrap_or_default();
        self.remove_job_files(&jobs.lines().collect::<Vec<_>>());
        let _ = std::fs::remove_file(list);
        match std::fs::remove_dir_all(self.vm_dir(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// The jobs a workspace ran on this node, one id a line (kept across
    /// stop and undeploy, as their logs are).
    fn jobs_list(&self, id: &str) -> PathBuf {
        self.home.join("jobs").join(format!("{id}.list"))
    }

    /// Records that `job` ran in workspace `id`, so that its log goes when
    /// the workspace is removed from this node.
    fn note_job(&self, id: &str, job: &str) {
        use std::io::Write;
        // One write of the whole line: jobs started at once append at once,
        // and `writeln!` may split a line into two writes that interleave
        // (two ids on one line, whose logs then outlived the workspace).
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.jobs_list(id))
            .and_then(|mut f| f.write_all(format!("{job}\n").as_bytes()));
        if let Err(e) = written {
            tracing::warn!(%id, %job, error = %e, "job not recorded for removal with its workspace");
        }
    }

    /// Removes jobs' logs and whatever their drivers kept beside them
    /// (`<job>.*`: input, running markers).
    fn remove_job_files(&self, jobs: &[&str]) {
        if jobs.is_empty() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(self.home.join("jobs")) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let stem = name.split_once('.').map_or(&*name, |(stem, _)| stem);
            if jobs.contains(&stem) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// The event log of a job.
    pub fn job_log(&self, job: &str) -> PathBuf {
        self.home.join("jobs").join(format!("{job}.ndjson"))
    }

    /// Starts a job in a running workspace.
    pub async fn run_job(
        &self,
        id: &str,
        req: vws_model::node::JobRequest,
    ) -> Result<(), NodeError> {
        let (spec, driver) = self.deployed_with_driver(id)?;
        if req.argv.is_empty() {
            return Err(NodeError::Other(anyhow::anyhow!(
                "a job needs a program to run"
            )));
        }
        let log = self.job_log(&req.job);
        tokio::fs::write(&log, b"").await?;
        self.note_job(id, &req.job);
        let job = req.job.clone();
        self.jobs.lock().await.insert(job.clone(), id.to_string());
        if let Err(e) = driver.run_job(&spec, req, log).await {
            self.jobs.lock().await.remove(&job);
            return Err(e.into());
        }
        Ok(())
    }

    /// Cancels a job: SIGTERM to its process group, SIGKILL two seconds
    /// later if it has not ended.
    pub async fn cancel_job(self: &Arc<Self>, job: &str) -> Result<(), NodeError> {
        use nix::sys::signal::Signal;
        let id = self
            .jobs
            .lock()
            .await
            .get(job)
            .cloned()
            .ok_or_else(|| NodeError::NotDeployed(format!("job {job}")))?;
        let (_, driver) = self.deployed_with_driver(&id)?;
        let driver = driver.clone();
        let log = self.job_log(job);
        driver.signal_job(&id, job, &log, Signal::SIGTERM).await;
        let me = self.clone();
        let job = job.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if me.jobs.lock().await.contains_key(&job) {
                driver.signal_job(&id, &job, &log, Signal::SIGKILL).await;
            }
        });
        Ok(())
    }

    /// Forgets a finished job's workspace mapping.
    pub async fn job_finished(&self, job: &str) {
        self.jobs.lock().await.remove(job);
    }

    /// Writes a file into a running workspace.
    pub async fn put_file(&self, id: &str, path: &str, data: &[u8]) -> Result<(), NodeError> {
        let (spec, driver) = self.deployed_with_driver(id)?;
        Ok(driver.write_file(&spec, path, data).await?)
    }

    /// Reads a file from a running workspace.
    pub async fn get_file(&self, id: &str, path: &str) -> Result<Vec<u8>, NodeError> {
        let (spec, driver) = self.deployed_with_driver(id)?;
        Ok(driver.read_file(&spec, path).await?)
    }

    /// What a workspace in `state` uses, if it runs.
    async fn usage(&self, id: &str, state: &str) -> Option<vws_model::node::Usage> {
        if state == "shutdown" {
            return None;
        }
        let (_, driver) = self.deployed_with_driver(id).ok()?;
        let pids = driver.pids(id).await;
        if pids.is_empty() {
            return None;
        }
        let mut u = crate::usage::of_processes(&pids);
        let io = driver.io(id).await;
        u.block_read_bytes = io.block_read;
        u.block_write_bytes = io.block_write;
        u.net_rx_bytes = io.net_rx;
        u.net_tx_bytes = io.net_tx;
        Some(u)
    }

    /// Lets each driver give up what it holds ahead of demand (the warm
    /// pool), when the node stops.
    pub fn close(&self) {
        for d in self.drivers.all() {
            d.close();
        }
        // The images read on demand stop being served and staged (a node
        // started on this home serves them again to the VMs it adopts).
        if let Ok(mut images) = self.on_demand.try_lock() {
            for (_, served) in images.drain() {
                served.image.close();
            }
        }
    }

    /// Capacity, cache, workspaces and health.
    pub async fn report(&self) -> NodeReport {
        crate::net::supervise(&net_dir(&self.home));
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib = |key: &str| {
            meminfo
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        let deployed: Vec<(String, PathBuf)> = std::fs::read_dir(vms_dir(&self.home))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().join("spec.json").exists())
                    .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                    .collect()
            })
            .unwrap_or_default();
        // Every workspace's state and counters are asked for at once: a
        // report takes as long as the slowest VM's answers, not their sum
        // (with a hundred VMs in turn it outgrew the heartbeat).
        let seen = futures::future::join_all(deployed.iter().map(|(id, dir)| async move {
            let state = match self.status(id).await {
                VmState::Shutdown if dir.join("memory.state").exists() => "paused",
                VmState::Shutdown => "shutdown",
                VmState::Running => "running",
                VmState::Paused => "paused",
            };
            (id.clone(), state, self.usage(id, state).await)
        }))
        .await;
        let mut workspaces = BTreeMap::new();
        let mut usage = BTreeMap::new();
        for (id, state, u) in seen {
            if let Some(u) = u {
                usage.insert(id.clone(), u);
            }
            workspaces.insert(id, state.to_string());
        }
        let images = std::fs::read_dir(self.home.join("cache/sha256"))
            .map(|d| {
                d.flatten()
                    .map(|e| format!("sha256:{}", e.file_name().to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        let (mut ram_total, mut ram_free) = (kib("MemTotal:"), kib("MemAvailable:"));
        if let Some(limit) = self.ram_limit {
            let given: u64 = workspaces
                .iter()
                .filter(|(_, s)| *s != "shutdown")
                .filter_map(|(id, _)| self.spec(id).ok())
                .map(|s| s.ram)
                .sum();
            ram_total = ram_total.min(limit);
            ram_free = ram_free.min(limit.saturating_sub(given));
        }
        NodeReport {
            cores: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            ram_total,
            ram_free,
            disk_free: staging::free_space(&self.home),
            accel: self.accel.0.as_str().into(),
            accel_reason: self.accel.1.clone(),
            images,
            workspaces,
            health: "ok".into(),
            accounts: self.drivers.all().find_map(|d| d.leases()),
            warm_pool: self.drivers.all().find_map(|d| d.warm_pool()),
            busy: self
                .busy
                .lock()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.to_string())).collect())
                .unwrap_or_default(),
            usage,
        }
    }
}

/// Where a node home keeps its deployed workspaces, one folder each.
pub fn vms_dir(home: &std::path::Path) -> PathBuf {
    home.join("vms")
}

/// Where a node home's network helpers (dnsmasq) keep their files.
pub fn net_dir(home: &std::path::Path) -> PathBuf {
    home.join("net")
}

/// Registers with the service, then heartbeats every `every` and forwards
/// VM events, until `shutdown`.
pub async fn report_to_service(
    manager: Arc<Manager>,
    service: crate::service_urls::ServiceUrls,
    url: String,
    every: Duration,
    mut events: tokio::sync::mpsc::UnboundedReceiver<VmEvent>,
    mut jobs_done: tokio::sync::mpsc::UnboundedReceiver<(String, JobEvent, u64)>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let http = manager.http.clone();
    let post = |url: String| http.post(url).timeout(Duration::from_secs(10));
    let mut registered = false;
    let mut tick = tokio::time::interval(every);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            Some((job, ev, bytes)) = jobs_done.recv() => {
                manager.job_finished(&job).await;
                let report = match ev {
                    JobEvent::Exited { code, signal, timed_out, reason } => vws_model::node::JobReport {
                        outcome: "exited".into(), code, signal, timed_out, message: reason, output_bytes: bytes,
                    },
                    JobEvent::Failed { message } => vws_model::node::JobReport {
                        outcome: "failed".into(), code: None, signal: None, timed_out: false, message: Some(message), output_bytes: bytes,
                    },
                    _ => continue,
                };
                let url = format!("{}/v1/nodes/{}/jobs/{job}", service.current(), manager.name);
                if let Err(e) = post(url).json(&report).send().await.and_then(|r| r.error_for_status()) {
                    tracing::warn!(%job, error = %e, "could not report a finished job");
                }
            }
            Some(ev) = events.recv() => {
                let body = NodeEvent { id: ev.id, reason: ev.reason };
                let r = post(format!("{}/v1/nodes/{}/events", service.current(), manager.name)).json(&body).send().await;
                if let Err(e) = r.and_then(|r| r.error_for_status()) {
                    tracing::warn!(error = %e, "could not report a workspace event");
                }
            }
            _ = tick.tick() => {
                let report = manager.report().await;
                let to = service.current();
                let result = if registered {
                    post(format!("{to}/v1/nodes/{}/heartbeat", manager.name)).json(&report).send().await
                } else {
                    let reg = Registration { name: manager.name.clone(), url: url.clone(), report };
                    post(format!("{to}/v1/nodes")).json(&reg).send().await
                };
                match result.and_then(|r| r.error_for_status()) {
                    Ok(_) => {
                        if !registered {
                            tracing::info!(node = %manager.name, service = %to, "registered with the service");
                        }
                        registered = true;
                    }
                    Err(e) => {
                        tracing::warn!(service = %to, error = %e, "service unreachable; will register again");
                        // No answer, or a replica without its database: the next replica.
                        if e.status().is_none_or(|s| s == reqwest::StatusCode::SERVICE_UNAVAILABLE) {
                            service.failed(&to);
                        }
                        registered = false;
                    }
                }
            }
        }
    }
}
