//! A service in this process: the wiring `vws up`, `vws serve`, the bench
//! and the tests share. The CLI only parses arguments into a [`Launch`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::api::{self, AppState, Auth};
use crate::{Policy, Service, Settings, SystemClock};

/// A service started in this process.
pub struct Running {
    /// Base URL of its API.
    pub url: String,
    /// The administrator's credentials (made on first run).
    pub admin: vws_pki::Credentials,
    /// The core.
    pub service: Arc<Service>,
    stop: tokio::sync::watch::Sender<bool>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    reaper: tokio::task::JoinHandle<()>,
    scheduler: tokio::task::JoinHandle<()>,
    lease: tokio::task::JoinHandle<()>,
    /// The SQLite file's lock, held while this service runs.
    _database_lock: Option<std::fs::File>,
}

/// One service process per SQLite file: an exclusive `flock` on
/// `FILE.lock` (released when the process ends, however it ends). Several
/// replicas share a database only on PostgreSQL.
fn lock_sqlite(url: &str) -> anyhow::Result<Option<std::fs::File>> {
    let Some(path) = url.strip_prefix("sqlite:") else {
        return Ok(None);
    };
    let path = path.split('?').next().unwrap_or(path);
    let lock_path = format!("{path}.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {lock_path}"))?;
    if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        let holder = std::fs::read_to_string(&lock_path).unwrap_or_default();
        anyhow::bail!(
            "another vws service (pid {}) uses the database {url}: SQLite serves one process; run replicas on PostgreSQL (docs/ARCHITECTURE.md)",
            holder.trim()
        );
    }
    std::fs::write(&lock_path, std::process::id().to_string())?;
    Ok(Some(file))
}

/// Where and how to run a service.
pub struct Launch {
    /// State folder.
    pub home: std::path::PathBuf,
    /// Where the API listens (mutual TLS).
    pub listener: tokio::net::TcpListener,
    /// The CN of the administrator's certificate made on first run.
    pub admin_name: String,
    /// Database URL.
    pub database: String,
    /// Factory policy.
    pub policy: Policy,
    /// Access control list.
    pub acl: crate::acl::Acl,
    /// Networks and their address pools.
    pub networks: crate::network::Networks,
    /// URL for EPRs, if not `http://` + the bound address.
    pub public_url: Option<String>,
    /// Reaper period.
    pub reap_every: Duration,
    /// The kernel image root filesystems boot with as VMs.
    pub boot_image: String,
    /// The region and zone instance metadata names.
    pub region: (String, String),
}

impl Launch {
    /// Opens the database (making the CA and the service's certificates on
    /// first run) and starts the API, the reaper, the agreements'
    /// scheduler and the replica's lease.
    pub async fn start(self) -> anyhow::Result<Running> {
        let listener = self.listener;
        let bound = listener.local_addr()?;
        let url = self
            .public_url
            .unwrap_or_else(|| format!("https://{bound}"));
        let hosts = [bound.ip().to_string()];
        let credentials = vws_pki::home::provision_service(&self.home, &hosts, &self.admin_name)?;
        let admin = vws_pki::Credentials::from_dir(&self.home.join("pki/admin"))?;
        let tls = Arc::new(credentials.server_config()?);
        let revoked = vws_pki::Ca::open(&vws_pki::home::ca_dir(&self.home))
            .ok()
            .map(|ca| ca.revoked());
        let database_lock = lock_sqlite(&self.database)?;
        let store = vws_store::Store::open(&self.database)
            .await
            .with_context(|| format!("opening the database {}", self.database))?;
        let settings = Settings {
            credentials: Some(credentials),
            ca_dir: Some(vws_pki::home::ca_dir(&self.home)),
            boot_image: self.boot_image,
            home: self.home,
            public_url: url.clone(),
            policy: self.policy,
            acl: self.acl,
            networks: self.networks,
        };
        let service = Arc::new(
            Service::open(store, settings, Arc::new(SystemClock))
                .await?
                .with_region(&self.region.0, &self.region.1),
        );
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut reaper_stop = stop_rx.clone();
        let reaper = tokio::spawn(crate::repository::run_reaper(
            service.clone(),
            self.reap_every,
            async move {
                let _ = reaper_stop.wait_for(|s| *s).await;
            },
        ));
        let mut lease_stop = stop_rx.clone();
        let lease = tokio::spawn(crate::replicas::keep_lease(service.clone(), async move {
            let _ = lease_stop.wait_for(|s| *s).await;
        }));
        let mut scheduler_stop = stop_rx.clone();
        let scheduler = tokio::spawn(crate::scheduler::run_scheduler(
            service.clone(),
            SCHEDULE_EVERY,
            async move {
                let _ = scheduler_stop.wait_for(|s| *s).await;
            },
        ));
        let state = AppState {
            service: service.clone(),
            auth: Auth::Tls,
        };
        let mut server_stop = stop_rx;
        let served = tokio::spawn(vws_pki::serve::serve_tls(
            listener,
            tls,
            revoked,
            api::router(state),
            async move {
                let _ = server_stop.wait_for(|s| *s).await;
            },
        ));
        Ok(Running {
            url,
            admin,
            service,
            stop,
            served,
            reaper,
            scheduler,
            lease,
            _database_lock: database_lock,
        })
    }
}

/// How often the agreements' scheduler runs: starts and ends are kept to
/// the second.
pub const SCHEDULE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Running {
    /// Stops accepting, drains requests, stops the reaper and the
    /// scheduler, gives up the replica's lease, closes the database.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let served = self.served.await?;
        let _ = self.reaper.await;
        let _ = self.scheduler.await;
        let _ = self.lease.await;
        self.service.store().close().await;
        served.context("serving the API")
    }
}
