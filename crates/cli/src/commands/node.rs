//! `vws node`: the VW Manager of this host, and `vws node list`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use vws_node::Manager;

use crate::output::{self, table};
use crate::Globals;

/// `vws node`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodeArgs {
    #[command(subcommand)]
    command: Option<NodeCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum NodeCommand {
    /// List the nodes the service knows, with capacity and health
    #[command(alias = "ls")]
    List,
}

/// Running a node.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The service to register with [default: the one `vws up` recorded]
    #[arg(long, value_name = "URL")]
    service: Option<String>,
    /// Node name [default: this host's name]
    #[arg(long)]
    name: Option<String>,
    /// Address of the node's API [default: 127.0.0.1:0]
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The node's state folder [default: VWS_HOME/node]
    #[arg(long, value_name = "DIR")]
    node_home: Option<PathBuf>,
    /// Seconds between heartbeats
    #[arg(long, default_value_t = 2)]
    heartbeat: u64,
    /// Seconds a stop waits for the guest to power off before forcing it
    #[arg(long, default_value_t = 5)]
    stop_grace: u64,
    /// The node's certificate (from `vws cert issue --host NAME`) [default:
    /// VWS_HOME/pki/nodes/NAME, issued by the local CA on first run]
    #[arg(long = "node-cert", env = "VWS_NODE_CERT", value_name = "FILE")]
    cert: Option<PathBuf>,
    /// Its private key
    #[arg(long = "node-key", env = "VWS_NODE_KEY", value_name = "FILE")]
    key: Option<PathBuf>,
    /// CA to trust [default: ca.pem beside the certificate]
    #[arg(long = "node-ca", env = "VWS_NODE_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Publish served ports of bridged workspaces on this address of the
    /// node (nftables forwards; turns on IPv4 forwarding) [default: not published]
    #[arg(long, env = "VWS_NODE_PUBLISH", value_name = "ADDR")]
    publish: Option<std::net::IpAddr>,
    /// The uids (= gids) leased to dynamic-account workspaces, FIRST-LAST;
    /// none may be an existing account of this host
    #[arg(long, env = "VWS_NODE_ACCOUNTS", value_name = "RANGE", default_value = DEFAULT_ACCOUNTS)]
    accounts: vws_model::node::AccountRange,
}

/// The account pool unless configured: far above any distribution's
/// accounts and the usual subordinate-id ranges.
pub const DEFAULT_ACCOUNTS: &str = "1000000000-1000000999";

/// A node running in this process.
pub struct RunningNode {
    /// Its API's URL.
    pub url: String,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningNode {
    /// Stops heartbeats and the API. Workspaces keep running: the next start
    /// of the node re-adopts them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Where and how to run a node.
pub struct NodeLaunch {
    /// Node name.
    pub name: String,
    /// State folder.
    pub home: PathBuf,
    /// The service's URL.
    pub service: String,
    /// The node API's address.
    pub listen: SocketAddr,
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
}

/// Starts a node: re-adopts running VMs, serves its API, registers.
pub async fn launch(l: NodeLaunch) -> anyhow::Result<RunningNode> {
    let NodeLaunch {
        name,
        home,
        service,
        listen,
        heartbeat,
        stop_grace,
        credentials,
        publish,
        accounts,
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
            &vws_node::qemu::FFDHE2048_PEM.to_string(),
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
    let revocation = vws_node::revocation::Revocation::load(&credentials.ca_pem, &home, &tls_dir);
    if let Err(e) = revocation.refresh(&http, &service).await {
        tracing::info!(error = %e, "revocation list not fetched yet; will retry");
    }
    let mut manager = Manager::new(name, home, http.clone(), Some(tls_dir), tx, jobs_tx)?;
    manager.stop_grace = stop_grace;
    manager.publish = publish.map(|a| a.to_string());
    // Dynamic accounts where the host allows (root, cgroups); VMs either way.
    let program = std::env::current_exe().context("finding the vws executable")?;
    match manager.enable_accounts(accounts, program) {
        Ok(()) => tracing::info!(
            first = accounts.first,
            last = accounts.last,
            "dynamic accounts enabled"
        ),
        Err(e) => tracing::warn!("dynamic accounts disabled on this node: {e}"),
    }
    // Incoming migrations listen where the node's API does (loopback stays
    // loopback; a wildcard listen means "any of this host's addresses").
    manager.migration_host = match listen.ip() {
        ip if ip.is_unspecified() => "0.0.0.0".into(),
        ip => ip.to_string(),
    };
    let manager = Arc::new(manager);
    let adopted = manager.adopt().await;
    if !adopted.is_empty() {
        tracing::info!(count = adopted.len(), "re-adopted running workspaces");
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("node listening on {listen}"))?;
    let url = format!("https://{}", listener.local_addr()?);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut s1 = stop_rx.clone();
    let router = vws_node::api::secured(vws_node::api::router(manager.clone()));
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
    let reporter = tokio::spawn(vws_node::manager::report_to_service(
        manager,
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
    })
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".into())
}

/// Runs `vws node` until Ctrl-C / SIGTERM, or lists nodes.
pub async fn run(g: &Globals, a: NodeArgs) -> anyhow::Result<()> {
    if let Some(NodeCommand::List) = a.command {
        return list(g).await;
    }
    let r = a.run;
    let service = match r.service {
        Some(s) => s,
        None => crate::config::server_url(g.server.clone(), &g.home)?,
    };
    let home = r.node_home.unwrap_or_else(|| g.home.join("node"));
    let name = r.name.unwrap_or_else(host_name);
    let credentials = match (&r.cert, &r.key) {
        (Some(c), Some(k)) => {
            let ca = r.ca.clone().unwrap_or_else(|| c.with_file_name("ca.pem"));
            vws_pki::Credentials::read(c, k, &ca)?
        }
        (None, None) => crate::commands::pki::node_credentials(&g.home, &name)?,
        _ => anyhow::bail!("--cert and --key go together"),
    };
    let node = launch(NodeLaunch {
        name: name.clone(),
        home: home.clone(),
        service: service.clone(),
        listen: r.listen,
        heartbeat: Duration::from_secs(r.heartbeat.max(1)),
        stop_grace: Duration::from_secs(r.stop_grace),
        credentials,
        publish: r.publish,
        accounts: r.accounts,
    })
    .await?;
    eprintln!(
        "vws node {name} at {} (state {}), reporting to {service}",
        node.url,
        home.display()
    );
    crate::commands::up::wait_for_signal().await?;
    node.stop().await;
    Ok(())
}

async fn list(g: &Globals) -> anyhow::Result<()> {
    let nodes = g.client()?.nodes().await?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&nodes)?);
        return Ok(());
    }
    if nodes.is_empty() {
        eprintln!("no nodes; start one with `vws node --service URL` (vws up runs one)");
        return Ok(());
    }
    let mut t = table(&[
        "NAME",
        "STATUS",
        "ACCEL",
        "CORES",
        "RAM FREE",
        "DISK FREE",
        "IMAGES",
        "WORKSPACES",
        "LAST SEEN",
    ]);
    for n in nodes {
        let r = &n["report"];
        let size = |v: &serde_json::Value| vws_model::ByteSize(v.as_u64().unwrap_or(0)).human();
        let seen = n["last_seen"].as_str().and_then(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        });
        t.add_row(vec![
            n["name"].as_str().unwrap_or("").to_string(),
            n["status"].as_str().unwrap_or("").to_string(),
            r["accel"].as_str().unwrap_or("").to_string(),
            r["cores"].to_string(),
            size(&r["ram_free"]),
            size(&r["disk_free"]),
            r["images"].as_array().map_or(0, |a| a.len()).to_string(),
            r["workspaces"]
                .as_object()
                .map_or(0, |o| o.len())
                .to_string(),
            seen.map(output::relative).unwrap_or_default(),
        ]);
    }
    println!("{t}");
    Ok(())
}
