//! `vws bench scale`: the control plane at scale. N simulated nodes speak
//! the real node protocol (mutual TLS with a certificate of their own,
//! registration, a heartbeat every 2 s with capacity, cached images and
//! their workspaces, answers to deploy and start) but run nothing, against
//! 1 or 3 service replicas in this process on one PostgreSQL database
//! seeded with many workspace records. It measures heartbeats ingested,
//! deploy (placement) latency, create and list latency, create throughput
//! and the time to detect a lost node.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use vws_client::{Client, ListQuery};
use vws_model::node::{routes, Deployed, NodeReport, Registration, Transitioned};
use vws_model::Form;
use vws_service::server::{Launch, Running};

use super::api::stats;
use super::args::BenchArgs;
use crate::output::table;
use crate::Globals;

/// How often a simulated node heartbeats (as `vws node` does by default).
const HEARTBEAT: Duration = Duration::from_secs(2);

const DESCRIPTION: &str = "category = \"vm\"\nlifeCycle = 86400\n[hardware]\nram = \"128MiB\"\n[software]\nimage = \"bench:1\"\n";

/// One simulated node: its name, workspaces and heartbeat client.
struct SimNode {
    name: String,
    workspaces: Mutex<BTreeMap<String, String>>,
    /// Cleared to make the node go silent (the lost-node measure).
    alive: AtomicBool,
}

impl SimNode {
    fn report(&self, image: &str) -> NodeReport {
        NodeReport {
            cores: 64,
            ram_total: 512 << 30,
            ram_free: 500 << 30,
            disk_free: 4 << 40,
            accel: "kvm".into(),
            accel_reason: "simulated".into(),
            images: vec![image.to_string()],
            workspaces: self.workspaces.lock().expect("not poisoned").clone(),
            health: "ok".into(),
            ..Default::default()
        }
    }

    fn set(&self, id: &str, state: &str) {
        let mut w = self.workspaces.lock().expect("not poisoned");
        w.insert(id.to_string(), state.to_string());
    }
}

/// Heartbeats answered, and how long each took.
#[derive(Default)]
struct Beats {
    ok: AtomicU64,
    failed: AtomicU64,
    ms: Mutex<Vec<f64>>,
}

type Fleet = Arc<BTreeMap<String, Arc<SimNode>>>;

/// The node API of every simulated node on one listener, each under
/// `/sim/NAME` (the service appends the node protocol's paths to a node's
/// URL).
fn node_api(fleet: Fleet) -> Router {
    let at = |route: &str| format!("/sim/{{node}}{route}");
    async fn deploy(
        State(f): State<Fleet>,
        UrlPath((node, id)): UrlPath<(String, String)>,
    ) -> Json<Deployed> {
        if let Some(n) = f.get(&node) {
            n.set(&id, "shutdown");
        }
        Json(Deployed { moved: 0 })
    }
    async fn start(
        State(f): State<Fleet>,
        UrlPath((node, id)): UrlPath<(String, String)>,
    ) -> Json<Transitioned> {
        if let Some(n) = f.get(&node) {
            n.set(&id, "running");
        }
        Json(Transitioned {
            state: "running".into(),
            forwards: None,
        })
    }
    Router::new()
        .route(
            &at(routes::HEALTH),
            get(|| async { Json(json!({"status": "ok"})) }),
        )
        .route(&at(routes::DEPLOY), post(deploy))
        .route(&at(routes::START), post(start))
        .with_state(fleet)
}

/// One configuration and what it measured.
struct Measured {
    replicas: usize,
    nodes: usize,
    records: u64,
    offered_per_s: f64,
    f: Figures,
}

/// What one run against a configuration measured.
struct Figures {
    heartbeats_per_s: f64,
    /// Heartbeats refused or timed out (10 s), over the whole run.
    heartbeats_failed: u64,
    heartbeat: Value,
    deploy: Value,
    create: Value,
    list: Value,
    creates_per_s: f64,
    lost_after_s: f64,
}

pub(super) async fn scale_suite(g: &Globals, a: &BenchArgs) -> anyhow::Result<()> {
    let server = a.database.clone().filter(|d| d.starts_with("postgres")).ok_or_else(|| {
        anyhow::anyhow!("bench scale needs --database postgres://… (a server it may make databases on; scripts/postgres start DIR runs one)")
    })?;
    let home = std::env::temp_dir().join(format!("vws-bench-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home)?;
    let result = async {
        let mut rows = Vec::new();
        let most = a.nodes.iter().copied().max().unwrap_or(0);
        eprintln!("bench scale: certificates for {most} simulated nodes");
        let creds = node_certificates(&home, most)?;
        for &records in &a.records {
            for &nodes in &a.nodes {
                for &replicas in &a.replicas {
                    eprintln!(
                        "bench scale: {replicas} replica(s), {nodes} nodes, {records} records"
                    );
                    rows.push(
                        one(&home, &server, replicas, nodes, records, &creds[..nodes], a).await?,
                    );
                }
            }
        }
        report(g, &rows, a)
    }
    .await;
    let _ = std::fs::remove_dir_all(&home);
    result
}

/// The nodes' client identities, made by the bench's CA.
fn node_certificates(
    home: &std::path::Path,
    n: usize,
) -> anyhow::Result<Vec<(String, vws_pki::Credentials)>> {
    vws_pki::home::provision_service(home, &[], "bench")?;
    (0..n)
        .map(|i| {
            let name = format!("sim{i:05}");
            let c = vws_pki::home::node_credentials(home, &name)?;
            Ok((name, c))
        })
        .collect()
}

async fn one(
    home: &std::path::Path,
    server: &str,
    replicas: usize,
    nodes: usize,
    records: u64,
    creds: &[(String, vws_pki::Credentials)],
    a: &BenchArgs,
) -> anyhow::Result<Measured> {
    let database = vws_store::Store::create_postgres_database(
        server,
        &format!("vws_bench_scale_{}", std::process::id()),
    )
    .await?;
    let policy = "[defaults]\nmax_workspaces = 10000000\nmax_total_ram = \"100000TiB\"";
    let mut running: Vec<Running> = Vec::new();
    for _ in 0..replicas {
        running.push(
            Launch {
                home: home.to_path_buf(),
                listener: tokio::net::TcpListener::bind("127.0.0.1:0").await?,
                admin_name: "bench".into(),
                database: database.clone(),
                policy: vws_service::Policy::from_toml(policy)?,
                acl: Default::default(),
                networks: Default::default(),
                public_url: None,
                reap_every: Duration::from_secs(1),
                boot_image: vws_service::DEFAULT_BOOT_IMAGE.into(),
                region: (
                    vws_service::DEFAULT_REGION.into(),
                    vws_service::DEFAULT_ZONE.into(),
                ),
            }
            .start()
            .await?,
        );
    }
    let clients: Vec<Client> = running
        .iter()
        .map(|r| Client::with_credentials(&r.url, &r.admin))
        .collect::<Result<_, _>>()?;
    let outcome = measure(home, &running, &clients, records, creds, a).await;
    for r in running {
        r.stop().await?;
    }
    Ok(Measured {
        replicas,
        nodes,
        records,
        offered_per_s: nodes as f64 / HEARTBEAT.as_secs_f64(),
        f: outcome?,
    })
}

async fn measure(
    home: &std::path::Path,
    running: &[Running],
    clients: &[Client],
    records: u64,
    creds: &[(String, vws_pki::Credentials)],
    a: &BenchArgs,
) -> anyhow::Result<Figures> {
    // The image (a kernel: its workspaces need no disk) and the records.
    let admin = &clients[0];
    let blob = home.join("kernel");
    std::fs::write(&blob, b"bench kernel")?;
    let digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"bench kernel"))
    );
    admin.upload_blob(&blob, &digest, |_| {}).await?;
    admin
        .import_image(json!({"name": "bench", "tag": "1", "kernel": digest, "initrd": digest}))
        .await?;
    let template = admin.create(DESCRIPTION.into(), Form::Toml, None).await?;
    let seeded = running[0]
        .service
        .store()
        .seed_workspace_copies(&template.record.id, records.saturating_sub(1), 100)
        .await?;
    anyhow::ensure!(
        seeded + 1 >= records,
        "seeded {seeded} records of {records}"
    );

    // The fleet: one listener for every node's API, a heartbeat task each.
    let fleet: Fleet = Arc::new(
        creds
            .iter()
            .map(|(name, _)| {
                let n = SimNode {
                    name: name.clone(),
                    workspaces: Mutex::new(BTreeMap::new()),
                    alive: AtomicBool::new(true),
                };
                (name.clone(), Arc::new(n))
            })
            .collect(),
    );
    let server_creds = vws_pki::home::node_credentials(home, "sim-api")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api_at = format!("https://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut api_stop = stopped.clone();
    let api = tokio::spawn(vws_pki::serve::serve_tls(
        listener,
        Arc::new(server_creds.server_config()?),
        None,
        node_api(fleet.clone()),
        async move {
            let _ = api_stop.wait_for(|s| *s).await;
        },
    ));
    let beats = Arc::new(Beats::default());
    let registered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, (name, identity)) in creds.iter().enumerate() {
        let http = identity
            .http_client()?
            .timeout(Duration::from_secs(10))
            .build()?;
        let base = running[i % running.len()].url.clone();
        let node = fleet[name].clone();
        let (beats, registered, url) = (
            beats.clone(),
            registered.clone(),
            format!("{api_at}/sim/{name}"),
        );
        let mut stopped = stopped.clone();
        let image = digest.clone();
        // Spread over the period, as independent hosts are.
        let offset = HEARTBEAT.mul_f64(i as f64 / creds.len().max(1) as f64);
        tasks.push(tokio::spawn(async move {
            let reg = Registration {
                name: node.name.clone(),
                url,
                report: node.report(&image),
            };
            loop {
                match http
                    .post(format!("{base}/v1/nodes"))
                    .json(&reg)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                {
                    Ok(_) => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            registered.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(offset).await;
            let mut tick = tokio::time::interval(HEARTBEAT);
            loop {
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => return,
                    _ = tick.tick() => {}
                }
                if !node.alive.load(Ordering::Relaxed) {
                    continue;
                }
                let t = Instant::now();
                let sent = http
                    .post(format!("{base}/v1/nodes/{}/heartbeat", node.name))
                    .json(&node.report(&image))
                    .send()
                    .await
                    .and_then(|r| r.error_for_status());
                match sent {
                    Ok(_) => {
                        beats.ok.fetch_add(1, Ordering::Relaxed);
                        beats
                            .ms
                            .lock()
                            .expect("not poisoned")
                            .push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                    Err(_) => {
                        beats.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while registered.load(Ordering::Relaxed) < creds.len() as u64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the simulated nodes did not register"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A full period so that every node heartbeats before the window.
    tokio::time::sleep(HEARTBEAT).await;

    // The window: heartbeats flow while a client creates, lists and
    // deploys (the deploy is placement plus a simulated node's answer).
    let window = Duration::from_secs(a.window);
    beats.ms.lock().expect("not poisoned").clear();
    let ok_before = beats.ok.load(Ordering::Relaxed);
    let started = Instant::now();
    let (mut create, mut list, mut deploy) = (Vec::new(), Vec::new(), Vec::new());
    let page = ListQuery {
        limit: Some(100),
        ..Default::default()
    };
    let mut k = 0usize;
    while started.elapsed() < window {
        let c = &clients[k % clients.len()];
        k += 1;
        let t = Instant::now();
        let ws = c.create(DESCRIPTION.into(), Form::Toml, None).await?;
        create.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        c.list(&page).await?;
        list.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        c.deploy(&ws.record.id, None).await?;
        deploy.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let heartbeats_per_s = (beats.ok.load(Ordering::Relaxed) - ok_before) as f64 / elapsed;
    let heartbeat = stats(std::mem::take(&mut *beats.ms.lock().expect("not poisoned")));
    let heartbeats_failed = beats.failed.load(Ordering::Relaxed);

    // Create throughput: 8 clients spread over the replicas.
    let creates_per_s = throughput(clients, Duration::from_secs(5)).await?;

    // A node goes silent: how long after its last heartbeat the service
    // reports it lost.
    let victim = fleet.values().next().expect("a node").clone();
    victim.alive.store(false, Ordering::Relaxed);
    let silent = Instant::now();
    let lost_after_s = loop {
        let listed = admin.nodes().await?;
        let status = listed
            .iter()
            .find(|n| n["name"] == victim.name.as_str())
            .map(|n| n["status"].as_str().unwrap_or_default().to_string());
        if status.as_deref() == Some("lost") {
            break silent.elapsed().as_secs_f64();
        }
        anyhow::ensure!(
            silent.elapsed() < Duration::from_secs(60),
            "the silent node was not found lost"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let _ = api.await;
    Ok(Figures {
        heartbeats_per_s,
        heartbeats_failed,
        heartbeat,
        deploy: stats(deploy),
        create: stats(create),
        list: stats(list),
        creates_per_s,
        lost_after_s,
    })
}

async fn throughput(clients: &[Client], window: Duration) -> anyhow::Result<f64> {
    super::api::per_second(clients, window, |c, _, _| async move {
        c.create(DESCRIPTION.into(), Form::Toml, None)
            .await
            .map(drop)
    })
    .await
}

fn report(g: &Globals, rows: &[Measured], a: &BenchArgs) -> anyhow::Result<()> {
    let p = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let metrics: Vec<Value> = rows
        .iter()
        .map(|m| {
            json!({
                "replicas": m.replicas, "nodes": m.nodes, "records": m.records,
                "heartbeats_per_s": m.f.heartbeats_per_s, "heartbeats_offered_per_s": m.offered_per_s,
                "heartbeats_failed": m.f.heartbeats_failed,
                "heartbeat_ms": m.f.heartbeat, "deploy_ms": m.f.deploy, "create_ms": m.f.create,
                "list100_ms": m.f.list, "creates_per_s_8_clients": m.f.creates_per_s,
                "lost_node_detected_s": m.f.lost_after_s,
            })
        })
        .collect();
    if g.json {
        let out = json!({
            "suite": "scale",
            "window_s": a.window,
            "metrics": metrics,
            "env": { "database": "postgres", "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "replicas": "in this process", "heartbeat_s": HEARTBEAT.as_secs() },
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let mut t = table(&[
        "REPLICAS",
        "NODES",
        "RECORDS",
        "HEARTBEATS/s (offered)",
        "FAILED",
        "HEARTBEAT ms p50/p99",
        "DEPLOY ms p50/p99",
        "CREATE ms p50/p99",
        "LIST(100) ms p50/p99",
        "CREATES/s (8)",
        "LOST AFTER s",
    ]);
    for m in rows {
        t.add_row(vec![
            m.replicas.to_string(),
            m.nodes.to_string(),
            m.records.to_string(),
            format!("{:.0} ({:.0})", m.f.heartbeats_per_s, m.offered_per_s),
            m.f.heartbeats_failed.to_string(),
            format!(
                "{:.1} / {:.1}",
                p(&m.f.heartbeat, "median"),
                p(&m.f.heartbeat, "p99")
            ),
            format!(
                "{:.1} / {:.1}",
                p(&m.f.deploy, "median"),
                p(&m.f.deploy, "p99")
            ),
            format!(
                "{:.1} / {:.1}",
                p(&m.f.create, "median"),
                p(&m.f.create, "p99")
            ),
            format!("{:.1} / {:.1}", p(&m.f.list, "median"), p(&m.f.list, "p99")),
            format!("{:.0}", m.f.creates_per_s),
            format!("{:.1}", m.f.lost_after_s),
        ]);
    }
    println!("{t}");
    Ok(())
}
