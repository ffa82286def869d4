//! A node in this process: the wiring `vws node`, `vws up`, the bench and
//! the tests share. The CLI only parses arguments into a [`NodeLaunch`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::account::AccountDriver;
use crate::driver::Drivers;
use crate::qemu::QemuDriver;
use crate::service_urls::ServiceUrls;
use crate::Manager;

/// The account pool unless configured: far above any distribution's
/// accounts and the usual subordinate-id ranges.
pub const DEFAULT_ACCOUNTS: &str = "1000000000-1000000999";

/// The warm pool's size unless configured: off. A restored guest was seen
/// not to come back from its own reset, first beside a warming slot, then
/// once without one (docs/benchmarks.md, the warm pool), so the pool is
/// opt-in until that is understood; `--warm-pool 2` is what the bench
/// measures.
pub const DEFAULT_WARM_POOL: usize = 0;

/// The warm pool's size the benches run with.
pub const BENCH_WARM_POOL: usize = 2;

/// A node running in this process.
pub struct RunningNode {
    /// Its API's URL.
    pub url: String,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    manager: Arc<Manager>,
}

impl RunningNode {
    /// Stops heartbeats and the API. Workspaces keep running: the next start
    /// of the node re-adopts them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.manager.close();
    }
}

/// Where and how to run a node.
pub struct NodeLaunch {
    /// Node name.
    pub name: String,
    /// State folder.
    pub home: PathBuf,
    /// The service's URL, or several replicas' URLs separated by commas
    /// (the node reports to one and moves on when it stops answering).
    pub service: String,
    /// Where the node's API listens (incoming migrations listen on its
    /// address too).
    pub listener: tokio::net::TcpListener,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// How long a graceful stop may take.
    pub stop_grace: Duration,
    /// The node's certificate.
    pub credentials: vws_pki::Credentials,
    /// Where to publish bridged workspaces' served ports.
    pub publish: Option<std::net::IpAddr>,
    /// The account pool for dynamic accounts.
    pub accounts: vws_model::node::AccountRange,
    /// The RAM this node offers to workspaces (none: all of the host's).
    pub ram: Option<u64>,
    /// How long a VM's boot may take to report ready (none: the
    /// accelerator's default, [`crate::qemu::default_boot_timeout`]).
    pub boot_timeout: Option<Duration>,
    /// How many QEMU processes to keep started ahead of hot starts (0:
    /// none; [`DEFAULT_WARM_POOL`] in the CLI).
    pub warm_pool: usize,
    /// Whether a VM whose base image is not here yet starts at once,
    /// reading the image on demand while it is staged.
    pub on_demand_images: bool,
}

/// Starts a node on `listener`: re-adopts running workspaces, serves its
/// API, registers and heartbeats until [`RunningNode::stop`].
pub async fn launch(l: NodeLaunch) -> anyhow::Result<RunningNode> {
    let NodeLaunch {
        name,
        home,
        service,
        listener,
        heartbeat,
        stop_grace,
        credentials,
        publish,
        accounts,
        ram,
        boot_timeout,
        warm_pool,
        on_demand_images,
    } = l;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (jobs_tx, jobs_rx) = tokio::sync::mpsc::unbounded_channel();
    let http = credentials
        .http_client()?
        .connect_timeout(Duration::from_secs(5))
        .build()?;
    // QEMU reads TLS credentials from a folder with fixed names; the node's
    // certificate serves as both ends of migration and disk-mirror streams.
    let tls_dir = home.join("tls");
    std::fs::create_dir_all(&tls_dir)?;
    for (file, text, private) in [
        ("ca-cert.pem", &credentials.ca_pem, false),
        ("server-cert.pem", &credentials.cert_pem, false),
        ("client-cert.pem", &credentials.cert_pem, false),
        ("server-key.pem", &credentials.key_pem, true),
        ("client-key.pem", &credentials.key_pem, true),
        // Without it QEMU generates Diffie-Hellman parameters at every
        // launch (~0.1 s of each VM start and restore).
        (
            "dh-params.pem",
            &crate::qemu::FFDHE2048_PEM.to_string(),
            false,
        ),
    ] {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if private { 0o600 } else { 0o644 })
            .open(tls_dir.join(file))?
            .write_all(text.as_bytes())?;
    }
    // Revocation: the last list saved, then the service's, before serving.
    let revocation = crate::revocation::Revocation::load(&credentials.ca_pem, &home, &tls_dir);
    if let Err(e) = revocation
        .refresh(&http, &ServiceUrls::parse(&service).current())
        .await
    {
        tracing::info!(error = %e, "revocation list not fetched yet; will retry");
    }
    // One driver per category: VMs always, dynamic accounts where the host
    // allows (root, cgroups).
    let mut drivers = Drivers::default();
    let vms = crate::manager::vms_dir(&home);
    std::fs::create_dir_all(&vms)?;
    crate::driver::claim_tmpfs_dir(&vms)?;
    let mut qemu = QemuDriver::for_node(vms.clone(), tx.clone(), jobs_tx.clone()).with_tls(tls_dir);
    if let Some(t) = boot_timeout {
        qemu = qemu.with_boot_timeout(t);
    }
    qemu = qemu.with_warm_pool(warm_pool);
    drivers.register(Arc::new(Arc::new(qemu)));
    let program = std::env::current_exe().context("finding the vws executable")?;
    let net = crate::manager::net_dir(&home);
    match AccountDriver::new(vms, net, program, accounts, tx, jobs_tx) {
        Ok(driver) => {
            drivers.register(Arc::new(driver));
            tracing::info!(
                first = accounts.first,
                last = accounts.last,
                "dynamic accounts enabled"
            );
        }
        Err(e) => tracing::warn!("dynamic accounts disabled on this node: {e}"),
    }
    let mut manager = Manager::new(name, home, http.clone(), drivers)?;
    manager.stop_grace = stop_grace;
    manager.ram_limit = ram;
    manager.on_demand_images = on_demand_images;
    manager.publish = publish.map(|a| a.to_string());
    let service = ServiceUrls::parse(&service);
    manager.service = Some(service.clone());
    // Incoming migrations listen where the node's API does (loopback stays
    // loopback; a wildcard listen means "any of this host's addresses").
    let listen = listener.local_addr()?;
    manager.migration_host = match listen.ip() {
        ip if ip.is_unspecified() => "0.0.0.0".into(),
        ip => ip.to_string(),
    };
    let manager = Arc::new(manager);
    let adopted = manager.adopt().await;
    if !adopted.is_empty() {
        tracing::info!(count = adopted.len(), "re-adopted running workspaces");
    }
    let url = format!("https://{listen}");
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut s1 = stop_rx.clone();
    let router = crate::api::secured(crate::api::router(manager.clone()));
    let revoked = revocation.list();
    let tls = Arc::new(credentials.server_config()?);
    let api = tokio::spawn(async move {
        let _ = vws_pki::serve::serve_tls(listener, tls, Some(revoked), router, async move {
            let _ = s1.wait_for(|s| *s).await;
        })
        .await;
    });
    let mut s3 = stop_rx.clone();
    let crl = tokio::spawn(revocation.keep_fresh(
        http,
        service.clone(),
        heartbeat.max(Duration::from_secs(1)),
        async move {
            let _ = s3.wait_for(|s| *s).await;
        },
    ));
    let mut s2 = stop_rx;
    let reporter = tokio::spawn(crate::manager::report_to_service(
        manager.clone(),
        service,
        url.clone(),
        heartbeat,
        rx,
        jobs_rx,
        async move {
            let _ = s2.wait_for(|s| *s).await;
        },
    ));
    Ok(RunningNode {
        url,
        stop,
        tasks: vec![api, reporter, crl],
        manager,
    })
}
