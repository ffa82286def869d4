//! `vws up` / `vws serve`: the service on this machine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use vws_model::Identity;
use vws_service::api::{self, AppState, Auth};
use vws_service::{Policy, Service, Settings, SystemClock};

use crate::config::{self, ServerFile, DEFAULT_LISTEN};
use crate::Globals;

/// Settings of the service; each falls back to `VWS_HOME/config.toml`'s
/// `[service]` table, then to the default.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// Address to listen on (loopback only until mutual TLS) [default: 127.0.0.1:7480]
    #[arg(long, env = "VWS_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// Database: sqlite:PATH or postgres://… [default: sqlite:VWS_HOME/vws.db]
    #[arg(long, env = "VWS_DATABASE", value_name = "URL")]
    database: Option<String>,
    /// Factory policy file (TOML) [default: VWS_HOME/policy.toml if present]
    #[arg(long, env = "VWS_POLICY", value_name = "FILE")]
    policy: Option<std::path::PathBuf>,
    /// URL clients use to reach this service, for EPRs [default: http://LISTEN]
    #[arg(long, env = "VWS_PUBLIC_URL", value_name = "URL")]
    public_url: Option<String>,
    /// Seconds between rounds of the lifetime reaper [default: 10]
    #[arg(long, value_name = "SECONDS")]
    reap_interval: Option<u64>,
}

/// The OS user running the service: until mutual TLS, every request acts as
/// this user (the service listens on loopback only).
fn local_identity() -> Identity {
    let uid = rustix::process::getuid().as_raw();
    let from_passwd = std::fs::read_to_string("/etc/passwd").ok().and_then(|p| {
        p.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
        })
    });
    let name = from_passwd
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| format!("uid-{uid}"));
    Identity::local_user(&name)
}

/// Runs until Ctrl-C or SIGTERM.
pub async fn run(g: &Globals, a: UpArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&g.home).with_context(|| format!("creating {}", g.home.display()))?;
    let file = config::load(&g.home)?.service;
    let listen = a.listen.or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    let addr: SocketAddr = listen.parse().with_context(|| format!("--listen {listen:?} is not an address"))?;
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "the service listens on loopback only until mutual TLS is in place; {addr} is not a loopback address"
    );
    let database = a
        .database
        .or(file.database)
        .unwrap_or_else(|| format!("sqlite:{}", g.home.join("vws.db").display()));
    let policy_path = a.policy.or(file.policy).or_else(|| Some(g.home.join("policy.toml")).filter(|p| p.exists()));
    let policy = match &policy_path {
        Some(p) => Policy::load(p)?,
        None => Policy::default(),
    };

    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?;
    let bound = listener.local_addr()?;
    let public_url = a.public_url.or(file.public_url).unwrap_or_else(|| format!("http://{bound}"));
    let store = vws_store::Store::open(&database).await.with_context(|| format!("opening the database {database}"))?;
    let settings = Settings { home: g.home.clone(), public_url: public_url.clone(), policy };
    let service = Arc::new(Service::open(store, settings, Arc::new(SystemClock)).await?);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reap_every = Duration::from_secs(a.reap_interval.or(file.reap_interval).unwrap_or(10).max(1));
    let mut reaper_stop = stop_rx.clone();
    let reaper = tokio::spawn(vws_service::repository::run_reaper(service.clone(), reap_every, async move {
        let _ = reaper_stop.wait_for(|s| *s).await;
    }));

    let server_file = config::server_file(&g.home);
    let record = ServerFile { url: public_url.clone(), pid: std::process::id() };
    std::fs::write(&server_file, serde_json::to_vec_pretty(&record)?)?;
    eprintln!("vws is up at {public_url}  (home {}, database {database})", g.home.display());

    let state = AppState { service: service.clone(), auth: Auth::Local(local_identity()) };
    let mut server_stop = stop_rx.clone();
    let served = api::serve(
        api::router(state),
        listener,
        async move {
            let _ = server_stop.wait_for(|s| *s).await;
        },
        Duration::from_secs(10),
    );
    let signals = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    };
    tokio::pin!(served);
    let result = tokio::select! {
        r = &mut served => r,
        () = signals => served.await,
    };
    let _ = reaper.await;
    let _ = std::fs::remove_file(&server_file);
    service.store().close().await;
    result.context("serving the API")
}
