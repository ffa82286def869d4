//! The service core: one value that the HTTP API, the CLI's embedded mode and
//! tests all call. Every call takes the caller's [`Identity`], so the
//! transport (loopback today, mutual TLS later) never reaches in here.

use std::path::PathBuf;
use std::sync::Arc;

use vws_model::{Epr, Identity};
use vws_store::{BlobStore, Store, WorkspaceRecord};

use crate::clock::Clock;
use crate::error::ServiceError;
use crate::policy::Policy;

/// Where the service keeps things and how it is reached.
#[derive(Clone, Debug)]
pub struct Settings {
    /// State folder (`VWS_HOME`).
    pub home: PathBuf,
    /// Base URL clients and nodes use; EPRs are built from it.
    pub public_url: String,
    /// The factory's policy.
    pub policy: Policy,
    /// Who may do which class of action.
    pub acl: crate::acl::Acl,
    /// Networks and their address pools.
    pub networks: crate::network::Networks,
    /// The service's own certificate, for calling nodes over mutual TLS
    /// (none: nodes are called over plain HTTP, for tests on loopback).
    pub credentials: Option<vws_pki::Credentials>,
    /// The CA that issues workspaces' own credentials (none: workspaces get
    /// none).
    pub ca_dir: Option<PathBuf>,
    /// The kernel image (`name:tag`) that root-filesystem images boot with
    /// as VMs ([`DEFAULT_BOOT_IMAGE`] unless configured).
    pub boot_image: String,
}

/// The boot image unless configured: the minimal guest, whose kernel,
/// init and agent then run a root filesystem image's userland.
pub const DEFAULT_BOOT_IMAGE: &str = "minimal:1";

/// The region this service calls itself unless configured (instance
/// metadata and the EC2 front-end say it).
pub const DEFAULT_REGION: &str = "vws-local";

/// Its one availability zone unless configured.
pub const DEFAULT_ZONE: &str = "vws-local-a";

/// The VW Factory and VW Repository behind one handle.
pub struct Service {
    pub(crate) store: Store,
    pub(crate) blobs: BlobStore,
    pub(crate) disks: PathBuf,
    /// Empty overlays made once by qemu-img, copied for each new disk.
    pub(crate) templates: vws_qemu::img::Templates,
    /// Memory states of paused, checked-in workspaces.
    pub(crate) memory: PathBuf,
    pub(crate) policy: Policy,
    pub(crate) acl: crate::acl::Acl,
    pub(crate) networks: crate::network::Networks,
    pub(crate) ca_dir: Option<PathBuf>,
    pub(crate) boot_image: String,
    pub(crate) home: PathBuf,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) public_url: String,
    /// This process among the service's runs: intents it wrote are its own
    /// to finish (`Store::set_pending`).
    pub(crate) instance: String,
    /// When this process opened the repository: a node not heard from
    /// since may be at another address now.
    pub(crate) opened_at: time::OffsetDateTime,
    /// The node protocol (HTTPS; a fake node in tests).
    pub(crate) nodes: Arc<dyn crate::node_client::NodeClient>,
    /// Request counts and durations (docs/metrics.md).
    pub(crate) metrics: crate::request_metrics::Metrics,
    /// The region and zone workspaces' instance metadata names.
    pub(crate) region: (String, String),
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

pub use vws_model::records::Workspace;

impl Service {
    /// Checks the access control list for a class of action (403 naming
    /// what was refused; the rule goes to the log).
    pub fn authorize(&self, who: &Identity, class: crate::acl::Class) -> Result<(), ServiceError> {
        self.acl.check(who, class)
    }
}

impl Service {
    /// The CA's revocation list, signed, for nodes and QEMU (503 when this
    /// service has no CA).
    pub async fn crl(&self) -> Result<String, ServiceError> {
        let dir = self.ca_dir.as_ref().ok_or_else(|| {
            ServiceError::Unavailable("this service has no certificate authority".into())
        })?;
        let ca = vws_pki::Ca::open(dir).map_err(anyhow::Error::from)?;
        Ok(ca.crl_pem().map_err(anyhow::Error::from)?)
    }
}

impl Service {
    /// Opens the service's state under `settings.home` on an open store.
    pub async fn open(
        store: Store,
        settings: Settings,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Service> {
        let blobs = BlobStore::open(settings.home.join("images")).await?;
        let disks = settings.home.join("disks");
        tokio::fs::create_dir_all(&disks).await?;
        // At the repository's precision (ms), as heartbeats are kept.
        let opened_at = vws_store::from_millis(vws_store::millis(clock.now()));
        let service = Service {
            store,
            blobs,
            disks,
            templates: vws_qemu::img::Templates::new(settings.home.join("overlay-templates")),
            memory: settings.home.join("memory"),
            policy: settings.policy,
            acl: settings.acl,
            networks: settings.networks.clone(),
            ca_dir: settings.ca_dir.clone(),
            boot_image: settings.boot_image.clone(),
            home: settings.home.clone(),
            clock,
            public_url: settings.public_url.trim_end_matches('/').to_string(),
            instance: hex::encode(rand::random::<[u8; 8]>()),
            opened_at,
            nodes: Arc::new(crate::node_client::HttpNodes::new(
                settings.credentials.as_ref(),
            )?),
            metrics: Default::default(),
            region: (DEFAULT_REGION.into(), DEFAULT_ZONE.into()),
        };
        // A replica from the moment it opens the repository: what it does
        // is its own while its lease runs (`replicas::keep_lease` renews it).
        let alone = service.alone().await?;
        service.renew_lease().await?;
        if alone {
            service.collect_garbage().await?;
        } else {
            tracing::info!("other replicas are alive: what no record refers to is left to them");
        }
        Ok(service)
    }

    /// The same service naming `region` and `zone` in its workspaces'
    /// instance metadata.
    pub fn with_region(mut self, region: &str, zone: &str) -> Service {
        self.region = (region.into(), zone.into());
        self
    }

    /// The same service speaking to its nodes through `nodes` (tests put a
    /// fake node here).
    #[cfg(feature = "testing")]
    pub fn with_nodes(mut self, nodes: Arc<dyn crate::node_client::NodeClient>) -> Service {
        self.nodes = nodes;
        self
    }

    /// The repository database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The clock the service reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub(crate) fn view(&self, record: WorkspaceRecord) -> Workspace {
        let epr = Epr {
            address: format!("{}/v1/workspaces/{}", self.public_url, record.id),
            resource_key: vws_model::resource_key(&record.owner, &record.id),
        };
        Workspace {
            record,
            epr,
            addresses: Vec::new(),
            account: None,
            usage: None,
        }
    }

    /// Every workspace record, page by page.
    pub(crate) async fn all_workspaces(&self) -> Result<Vec<WorkspaceRecord>, ServiceError> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .list_workspaces(&vws_store::Filter {
                    limit: Some(1000),
                    after,
                    ..Default::default()
                })
                .await?;
            all.extend(page.items);
            match page.next {
                Some(n) => after = Some(n),
                None => return Ok(all),
            }
        }
    }

    /// Loads a workspace the caller may see; others' workspaces are "not
    /// found", never "forbidden", so their existence does not leak.
    pub(crate) async fn visible(
        &self,
        who: &Identity,
        id: &str,
    ) -> Result<WorkspaceRecord, ServiceError> {
        match self.store.workspace(id).await? {
            Some(r) if r.owner == who.dn || who.is_admin() => Ok(r),
            _ => Err(ServiceError::NotFound(format!("workspace {id} not found"))),
        }
    }

    /// Removes files a crash left without a record: disk overlays no record
    /// names, and temporary uploads (the blob store clears those on open).
    async fn collect_garbage(&self) -> anyhow::Result<()> {
        // A pull this process's predecessor left half-applied.
        let _ = tokio::fs::remove_dir_all(self.home.join("oci-work")).await;
        let orphans = self.store.release_orphan_addresses().await?;
        if orphans > 0 {
            tracing::info!(orphans, "released addresses no record holds");
        }
        let orphans = self.store.release_orphan_accounts().await?;
        if orphans > 0 {
            tracing::info!(orphans, "released account leases of workspaces on no node");
        }
        let known: std::collections::HashSet<String> =
            self.store.disk_paths().await?.into_iter().collect();
        let mut dir = tokio::fs::read_dir(&self.disks).await?;
        while let Some(entry) = dir.next_entry().await? {
            let path = entry.path().to_string_lossy().into_owned();
            if !known.contains(&path) {
                tracing::info!(%path, "removing a disk overlay no record refers to");
                tokio::fs::remove_file(&path).await?;
            }
        }
        Ok(())
    }
}
