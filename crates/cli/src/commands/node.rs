//! `vws node`: the VW Manager of this host, and `vws node list`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

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
    /// The service to register with: its URL, or several replicas' URLs
    /// separated by commas (the node moves to the next when one stops
    /// answering) [default: the one `vws up` recorded]
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
    #[arg(long, env = "VWS_NODE_ACCOUNTS", value_name = "RANGE", default_value = vws_node::server::DEFAULT_ACCOUNTS)]
    accounts: vws_model::node::AccountRange,
    /// The RAM this node offers to workspaces, e.g. 16GiB [default: all of
    /// the host's]: what placement and agreements count as its capacity
    #[arg(long, env = "VWS_NODE_RAM", value_name = "SIZE")]
    ram: Option<vws_model::ByteSize>,
    /// Seconds a VM's boot may take to report ready before the start
    /// fails [default: 90 with KVM, 300 under software emulation]
    #[arg(long, env = "VWS_BOOT_TIMEOUT", value_name = "SECONDS")]
    boot_timeout: Option<u64>,
    /// QEMU processes kept started ahead of hot starts, of the shapes
    /// lately restored (0 turns the pool off)
    #[arg(long, env = "VWS_WARM_POOL", value_name = "N", default_value_t = vws_node::server::DEFAULT_WARM_POOL)]
    warm_pool: usize,
    /// Start a VM whose base image is not on the node yet at once, reading
    /// the image from the repository on demand (each block checked) while
    /// it is staged whole in the background
    #[arg(long, env = "VWS_ON_DEMAND_IMAGES")]
    on_demand_images: bool,
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
        (None, None) => vws_pki::home::node_credentials(&g.home, &name)?,
        _ => anyhow::bail!("--cert and --key go together"),
    };
    let listener = tokio::net::TcpListener::bind(r.listen)
        .await
        .with_context(|| format!("node listening on {}", r.listen))?;
    let node = vws_node::server::launch(vws_node::server::NodeLaunch {
        name: name.clone(),
        home: home.clone(),
        service: service.clone(),
        listener,
        heartbeat: Duration::from_secs(r.heartbeat.max(1)),
        stop_grace: Duration::from_secs(r.stop_grace),
        credentials,
        publish: r.publish,
        accounts: r.accounts,
        ram: r.ram.map(|r| r.0),
        boot_timeout: r.boot_timeout.map(Duration::from_secs),
        warm_pool: r.warm_pool,
        on_demand_images: r.on_demand_images,
    })
    .await?;
    eprintln!(
        "vws node {name} at {} (state {}), reporting to {service}",
        node.url,
        home.display()
    );
    crate::shutdown::signalled().await?;
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
        "WARM POOL",
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
            warm_pool(&r["warm_pool"]),
            seen.map(output::relative).unwrap_or_default(),
        ]);
    }
    println!("{t}");
    Ok(())
}

/// A node's warm pool as `waiting/size (memory)`, `off` without one.
fn warm_pool(p: &serde_json::Value) -> String {
    match p.as_object() {
        None => "off".into(),
        Some(_) => format!(
            "{}/{} ({})",
            p["waiting"],
            p["size"],
            vws_model::ByteSize(p["memory_bytes"].as_u64().unwrap_or(0)).human()
        ),
    }
}
