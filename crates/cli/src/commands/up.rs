//! `vws up` / `vws serve`: the service on this machine.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use vws_service::server::Launch;
use vws_service::Policy;

use crate::config::{self, ServerFile, DEFAULT_LISTEN};
use crate::Globals;

/// Settings of the service; each falls back to `VWS_HOME/config.toml`'s
/// `[service]` table, then to the default.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// Address to listen on (mutual TLS) [default: 127.0.0.1:7480]
    #[arg(long, env = "VWS_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// Database: sqlite:PATH or postgres://… [default: sqlite:VWS_HOME/vws.db]
    #[arg(long, env = "VWS_DATABASE", value_name = "URL")]
    database: Option<String>,
    /// Factory policy file (TOML) [default: VWS_HOME/policy.toml if present]
    #[arg(long, env = "VWS_POLICY", value_name = "FILE")]
    policy: Option<std::path::PathBuf>,
    /// Access control list (TOML; see docs/security.md) [default: VWS_HOME/acl.toml if present]
    #[arg(long, env = "VWS_ACL", value_name = "FILE")]
    acl: Option<std::path::PathBuf>,
    /// Networks and address pools (TOML; see docs/networking.md) [default: VWS_HOME/networks.toml if present]
    #[arg(long, env = "VWS_NETWORKS", value_name = "FILE")]
    networks: Option<std::path::PathBuf>,
    /// URL clients use to reach this service, for EPRs [default: https://LISTEN]
    #[arg(long, env = "VWS_PUBLIC_URL", value_name = "URL")]
    public_url: Option<String>,
    /// Seconds between rounds of the lifetime reaper [default: 10]
    #[arg(long, value_name = "SECONDS")]
    reap_interval: Option<u64>,
    /// Where Prometheus scrapes /metrics: plain HTTP, for loopback
    /// (docs/metrics.md) [default: 127.0.0.1:7481; "off" for none]
    #[arg(long, env = "VWS_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Where the web dashboard is served: plain HTTP, for loopback
    /// (docs/dashboard.md) [default: 127.0.0.1:7482; "off" for none]
    #[arg(long, env = "VWS_UI_LISTEN", value_name = "ADDR")]
    ui_listen: Option<String>,
    /// Where the EC2 Query API is served: TLS with the service's
    /// certificate, requests signed by `vws key` access keys
    /// (docs/ec2.md) [default: 127.0.0.1:7483; "off" for none]
    #[arg(long, env = "VWS_EC2_LISTEN", value_name = "ADDR")]
    ec2_listen: Option<String>,
    /// The kernel image root-filesystem images boot with as VMs
    /// [default: minimal:1]
    #[arg(long, env = "VWS_BOOT_IMAGE", value_name = "NAME:TAG")]
    boot_image: Option<String>,
    /// The local node's uids for dynamic accounts, FIRST-LAST (`vws up` only)
    #[arg(long, env = "VWS_NODE_ACCOUNTS", value_name = "RANGE", default_value = vws_node::server::DEFAULT_ACCOUNTS)]
    accounts: vws_model::node::AccountRange,
    /// The RAM the local node offers to workspaces, e.g. 16GiB [default:
    /// all of the host's] (`vws up` only)
    #[arg(long = "node-ram", env = "VWS_NODE_RAM", value_name = "SIZE")]
    node_ram: Option<vws_model::ByteSize>,
    /// Seconds a VM's boot on the local node may take to report ready
    /// [default: 90 with KVM, 300 under software emulation] (`vws up` only)
    #[arg(long, env = "VWS_BOOT_TIMEOUT", value_name = "SECONDS")]
    boot_timeout: Option<u64>,
    /// QEMU processes the local node keeps started ahead of hot starts (0
    /// turns the pool off) (`vws up` only)
    #[arg(long, env = "VWS_WARM_POOL", value_name = "N", default_value_t = vws_node::server::DEFAULT_WARM_POOL)]
    warm_pool: usize,
    /// Start a VM whose base image is not on the node yet at once, reading
    /// the image from the repository on demand (each block checked) while
    /// it is staged whole in the background (`vws up` only)
    #[arg(long, env = "VWS_ON_DEMAND_IMAGES")]
    on_demand_images: bool,
}

/// Where metrics are served unless configured.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:7481";

/// Where the dashboard is served unless configured.
pub const DEFAULT_UI_LISTEN: &str = "127.0.0.1:7482";

/// Where the EC2 Query API is served unless configured.
pub const DEFAULT_EC2_LISTEN: &str = "127.0.0.1:7483";

/// The OS user running the service: the CN of the administrator's
/// certificate made on first run.
pub fn local_user_name() -> String {
    let uid = rustix::process::getuid().as_raw();
    let from_passwd = std::fs::read_to_string("/etc/passwd").ok().and_then(|p| {
        p.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
        })
    });
    from_passwd
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| format!("uid-{uid}"))
}

/// The listener of a side server (metrics, dashboard, EC2): none for
/// `off`, or when the address is taken (said, not fatal: `vws up` runs on).
async fn side_listener(
    what: &str,
    flag: &str,
    at: &str,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    if at == "off" {
        return Ok(None);
    }
    let addr: SocketAddr = at
        .parse()
        .with_context(|| format!("{flag} {at:?} is not an address"))?;
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Ok(Some(l)),
        Err(e) => {
            tracing::warn!(%addr, error = %e, "{what} not served: the address is taken");
            Ok(None)
        }
    }
}

/// Runs until Ctrl-C or SIGTERM.
pub async fn run(g: &Globals, a: UpArgs, with_node: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(&g.home).with_context(|| format!("creating {}", g.home.display()))?;
    let loaded = config::load(&g.home)?;
    let (file, ec2_config) = (loaded.service, loaded.ec2);
    ec2_config
        .check()
        .map_err(|e| anyhow::anyhow!("{}: {e}", g.home.join("config.toml").display()))?;
    let listen = a
        .listen
        .or(file.listen)
        .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("--listen {listen:?} is not an address"))?;
    let database = a
        .database
        .or(file.database)
        .unwrap_or_else(|| format!("sqlite:{}", g.home.join("vws.db").display()));
    let policy_path = a
        .policy
        .or(file.policy)
        .or_else(|| Some(g.home.join("policy.toml")).filter(|p| p.exists()));
    let policy = match &policy_path {
        Some(p) => Policy::load(p)?,
        None => Policy::default(),
    };
    let acl_path = a
        .acl
        .or(file.acl)
        .or_else(|| Some(g.home.join("acl.toml")).filter(|p| p.exists()));
    let acl = match &acl_path {
        Some(p) => vws_service::acl::Acl::load(p)?,
        None => vws_service::acl::Acl::default(),
    };
    let networks_path = a
        .networks
        .or(file.networks)
        .or_else(|| Some(g.home.join("networks.toml")).filter(|p| p.exists()));
    let networks = match &networks_path {
        Some(p) => vws_service::network::Networks::load(p)?,
        None => Default::default(),
    };
    let reap_every =
        Duration::from_secs(a.reap_interval.or(file.reap_interval).unwrap_or(10).max(1));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let running = Launch {
        home: g.home.clone(),
        listener,
        admin_name: local_user_name(),
        database: database.clone(),
        policy,
        acl,
        networks,
        public_url: a.public_url.or(file.public_url),
        reap_every,
        boot_image: a
            .boot_image
            .or(file.boot_image)
            .unwrap_or_else(|| vws_service::DEFAULT_BOOT_IMAGE.into()),
        region: (ec2_config.region.clone(), ec2_config.zone.clone()),
    }
    .start()
    .await?;

    // `vws up` is the service plus this host's VW Manager; `vws serve` is the service alone.
    let node = if with_node {
        let node = vws_node::server::launch(vws_node::server::NodeLaunch {
            name: "local".into(),
            home: g.home.join("node"),
            service: running.url.clone(),
            listener: tokio::net::TcpListener::bind("127.0.0.1:0").await?,
            heartbeat: Duration::from_secs(2),
            stop_grace: Duration::from_secs(5),
            credentials: vws_pki::home::node_credentials(&g.home, "local")?,
            publish: None,
            accounts: a.accounts,
            ram: a.node_ram.map(|r| r.0),
            boot_timeout: a.boot_timeout.map(Duration::from_secs),
            warm_pool: a.warm_pool,
            on_demand_images: a.on_demand_images,
        })
        .await?;
        // Registered (at this new address, after a restart) before vws
        // says it is up: a command right after must not find the record of
        // the node's previous run.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let nodes = running.service.nodes().await?;
            if nodes
                .iter()
                .any(|n| n.record.name == "local" && n.record.url == node.url && n.status == "up")
            {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the local node did not register with the service within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!(
            "node local at {} (state {})",
            node.url,
            g.home.join("node").display()
        );
        Some(node)
    } else {
        None
    };
    // Metrics on a listener of their own (plain HTTP, loopback by default):
    // a scraper needs no client certificate. Taken port: said, not fatal.
    let metrics_at = a
        .metrics_listen
        .or(file.metrics_listen)
        .unwrap_or_else(|| DEFAULT_METRICS_LISTEN.into());
    let metrics = match side_listener("metrics", "--metrics-listen", &metrics_at).await? {
        Some(listener) => {
            let url = format!("http://{}/metrics", listener.local_addr()?);
            let router = vws_service::api::metrics_router(running.service.clone());
            tokio::spawn(async move { axum::serve(listener, router).await });
            eprintln!("metrics at {url}");
            Some(url)
        }
        None => None,
    };
    // The dashboard on a listener of its own too: a browser has no client
    // certificate; it signs in with a link `vws ui` prints.
    let ui_at = a
        .ui_listen
        .or(file.ui_listen)
        .unwrap_or_else(|| DEFAULT_UI_LISTEN.into());
    let ui = match side_listener("dashboard", "--ui-listen", &ui_at).await? {
        Some(listener) => {
            let url = format!("http://{}", listener.local_addr()?);
            let router = vws_ui::router(running.service.clone());
            tokio::spawn(async move { axum::serve(listener, router).await });
            eprintln!("dashboard at {url}/ui (sign in with `vws ui`)");
            Some(url)
        }
        None => None,
    };
    // The EC2 Query API on a listener of its own: TLS with the service's
    // certificate, no client certificate (requests are SigV4-signed).
    let ec2_at = a
        .ec2_listen
        .or(file.ec2_listen)
        .unwrap_or_else(|| DEFAULT_EC2_LISTEN.into());
    let ec2 = match side_listener("EC2 API", "--ec2-listen", &ec2_at).await? {
        Some(listener) => {
            let url = format!("https://{}", listener.local_addr()?);
            let credentials = vws_pki::Credentials::from_dir(&g.home.join("pki/service"))?;
            let region = ec2_config.region.clone();
            let service = running.service.clone();
            tokio::spawn(async move {
                if let Err(e) = vws_ec2::serve(
                    listener,
                    &credentials,
                    service,
                    ec2_config,
                    std::future::pending(),
                )
                .await
                {
                    tracing::error!(error = %e, "the EC2 front-end stopped");
                }
            });
            eprintln!("EC2 API at {url} (region {region}; access keys: `vws key create`)");
            Some(config::Ec2Endpoint { url, region })
        }
        None => None,
    };
    // The file that tells CLI commands where vws is: written once it is ready.
    let server_file = config::server_file(&g.home);
    let record = ServerFile {
        url: running.url.clone(),
        pid: std::process::id(),
        metrics,
        ui,
        ec2,
    };
    std::fs::write(&server_file, serde_json::to_vec_pretty(&record)?)?;
    eprintln!(
        "vws is up at {}  (home {}, database {database})",
        running.url,
        g.home.display()
    );

    crate::shutdown::signalled().await?;
    tracing::info!("shutting down");
    let _ = std::fs::remove_file(&server_file);
    if let Some(n) = node {
        n.stop().await;
    }
    running.stop().await
}
