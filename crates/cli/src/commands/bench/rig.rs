//! What the suites share: a service and a node in a scratch folder (the
//! same wiring as `vws up`), the minimal guest's import, timing helpers.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vws_client::Client;
use vws_model::Form;
use vws_node::server::{launch, NodeLaunch, RunningNode};
use vws_service::server::{Launch, Running};

use super::args::BenchArgs;
use crate::Globals;

/// A service on loopback over `database`, its state in `home`.
pub(crate) async fn local_service(
    home: &Path,
    database: &str,
    policy: vws_service::Policy,
    boot_image: &str,
) -> anyhow::Result<Running> {
    Launch {
        home: home.to_path_buf(),
        listener: tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        admin_name: "bench".into(),
        database: database.into(),
        policy,
        acl: Default::default(),
        networks: Default::default(),
        public_url: None,
        reap_every: Duration::from_secs(3600),
        boot_image: boot_image.into(),
        region: (
            vws_service::DEFAULT_REGION.into(),
            vws_service::DEFAULT_ZONE.into(),
        ),
    }
    .start()
    .await
}

/// min / median / max of samples.
pub(crate) fn summary(mut v: Vec<f64>) -> Value {
    v.sort_by(|a, b| a.total_cmp(b));
    json!({ "min": v[0], "median": v[v.len() / 2], "max": v[v.len() - 1], "n": v.len() })
}

pub(crate) fn median(v: &Value) -> f64 {
    v["median"].as_f64().unwrap_or(f64::NAN)
}

pub(crate) struct Rig {
    pub(crate) home: PathBuf,
    pub(crate) running: Running,
    pub(crate) node: RunningNode,
    pub(crate) client: Client,
}

/// Rigs made by this process, so that each has a folder of its own.
static RIGS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Rig {
    pub(crate) async fn up() -> anyhow::Result<Rig> {
        Rig::with_warm_pool(vws_node::server::BENCH_WARM_POOL).await
    }

    /// A rig whose node keeps a warm pool of `size` (0: none).
    pub(crate) async fn with_warm_pool(size: usize) -> anyhow::Result<Rig> {
        Rig::with_node(size, false).await
    }

    /// A rig whose node reads VMs' base images on demand.
    pub(crate) async fn on_demand() -> anyhow::Result<Rig> {
        Rig::with_node(vws_node::server::BENCH_WARM_POOL, true).await
    }

    async fn with_node(size: usize, on_demand_images: bool) -> anyhow::Result<Rig> {
        let home = std::env::temp_dir().join(format!(
            "vws-bench-vm-{}-{}",
            std::process::id(),
            RIGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home)?;
        let database = format!("sqlite:{}", home.join("vws.db").display());
        // The benches import the minimal guest under this tag.
        let running = local_service(&home, &database, Default::default(), "minimal:bench").await?;
        let node = launch(NodeLaunch {
            name: "bench".into(),
            home: home.join("node"),
            service: running.url.clone(),
            listener: tokio::net::TcpListener::bind("127.0.0.1:0").await?,
            heartbeat: Duration::from_millis(500),
            stop_grace: Duration::ZERO,
            credentials: vws_pki::home::node_credentials(&home, "bench")?,
            publish: None,
            accounts: vws_node::server::DEFAULT_ACCOUNTS
                .parse()
                .expect("the default range parses"),
            ram: None,
            boot_timeout: None,
            warm_pool: size,
            on_demand_images,
        })
        .await?;
        let client = Client::with_credentials(&running.url, &running.admin)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.nodes().await?.is_empty() {
            anyhow::ensure!(Instant::now() < deadline, "the bench node did not register");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Rig {
            home,
            running,
            node,
            client,
        })
    }

    /// The rig's scratch folder.
    pub(crate) fn home(&self) -> &Path {
        &self.home
    }

    pub(crate) async fn down(self) -> anyhow::Result<()> {
        for ws in self
            .client
            .list_all(&Default::default())
            .await
            .unwrap_or_default()
        {
            let _ = self.client.destroy(&ws.record.id).await;
        }
        self.node.stop().await;
        self.running.stop().await?;
        let _ = std::fs::remove_dir_all(&self.home);
        Ok(())
    }
}

pub(crate) fn guest_dir(g: &Globals, a: &BenchArgs) -> anyhow::Result<PathBuf> {
    let dir = a
        .guest
        .clone()
        .unwrap_or_else(|| g.home.join("build/minimal"));
    anyhow::ensure!(
        dir.join("vmlinuz").exists() && dir.join("initrd.img").exists(),
        "no guest image in {}: build one with `scripts/build-minimal-image {}` (scripts/bench does)",
        dir.display(),
        dir.display()
    );
    Ok(dir)
}

pub(crate) async fn import_guest(client: &Client, guest: &Path) -> anyhow::Result<()> {
    let mut req = json!({ "name": "minimal", "tag": "bench", "cmdline": "console=ttyS0 quiet" });
    for (role, file) in [("kernel", "vmlinuz"), ("initrd", "initrd.img")] {
        let path = guest.join(file);
        let digest = format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(std::fs::read(
                &path
            )?))
        );
        if !client.has_blob(&digest).await? {
            client.upload_blob(&path, &digest, |_| {}).await?;
        }
        req[role] = digest.into();
    }
    client.import_image(req).await?;
    Ok(())
}

pub(crate) fn env_json() -> Value {
    let qemu = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(3)
                .map(str::to_string)
        })
        .unwrap_or_default();
    json!({ "accel": vws_node::accel::detect().0.as_str(), "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "qemu": qemu })
}

/// Hot starts of workspaces from a hot image of a booted workspace of
/// `image`: to ready, and to a job's first output.
pub(crate) async fn hot_runs_of(
    client: &Client,
    image: &str,
    mib: u64,
    nic: bool,
    runs: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let net = if nic {
        "[network]\nnics = [{ name = \"eth0\", method = \"user\" }]\n"
    } else {
        ""
    };
    let desc = format!(
        "category = \"vm\"\n[hardware]\nram = \"{mib}MiB\"\n{net}[software]\nimage = \"{image}\"\n"
    );
    let src = client.create(desc, Form::Toml, None).await?.record.id;
    client.deploy(&src, None).await?;
    client.action(&src, vws_model::Verb::Start).await?;
    client.action(&src, vws_model::Verb::Pause).await?;
    let tag = format!(
        "hot-{}-{mib}{}:bench",
        image.split(':').next().unwrap_or("image"),
        if nic { "-nic" } else { "" }
    );
    client.snapshot(&src, &tag).await?;
    client.destroy(&src).await?;
    let hot_desc = format!(
        "category = \"vm\"\n[hardware]\nram = \"{mib}MiB\"\n{net}[software]\nimage = \"{tag}\"\n"
    );
    let (mut ready, mut job) = (Vec::new(), Vec::new());
    for run in 0..runs {
        // Each run starts once the node's warm pool (if it has one) has
        // refilled behind the last: a hot start as a node that is not
        // asked for one every few hundred milliseconds serves it. The
        // first run of a shape finds none of its own in the pool.
        let full = pool_full(client, Duration::from_secs(10)).await?;
        let w = client
            .create(hot_desc.clone(), Form::Toml, None)
            .await?
            .record
            .id;
        client.deploy(&w, None).await?;
        let t = Instant::now();
        client.action(&w, vws_model::Verb::Start).await?;
        ready.push(t.elapsed().as_secs_f64());
        let out = first_byte(client, &w, &["echo", "hi"]).await?;
        job.push(ready[run] + out);
        client.destroy(&w).await?;
        eprintln!(
            "bench start: hot {mib} MiB{} run {}/{runs}: ready {:.3} s, job output {:.3} s{}",
            if nic { " user NIC" } else { "" },
            run + 1,
            ready[run],
            job[run],
            if full {
                ""
            } else {
                " (the warm pool was not full)"
            }
        );
    }
    Ok((ready, job))
}

/// Waits up to `within` until every node's warm pool holds as many QEMUs
/// as it keeps, by reports made after the call; true if they do (or no
/// node has a pool).
async fn pool_full(client: &Client, within: Duration) -> anyhow::Result<bool> {
    let (since, deadline) = (time::OffsetDateTime::now_utc(), Instant::now() + within);
    loop {
        let nodes = client.nodes().await?;
        let full = nodes.iter().all(|n| {
            let p = &n["report"]["warm_pool"];
            let fresh = n["last_seen"].as_str().and_then(|s| {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
            }) > Some(since);
            p.is_null() || (fresh && p["waiting"] == p["size"])
        });
        if full || Instant::now() > deadline {
            return Ok(full);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Time until a job's first stdout byte arrives through the API.
pub(crate) async fn first_byte(client: &Client, id: &str, argv: &[&str]) -> anyhow::Result<f64> {
    use futures::StreamExt;
    let t = Instant::now();
    let job = client.submit_job(id, json!({ "argv": argv })).await?;
    let mut body = client.job_output(&job.id, true).await?.bytes_stream();
    let mut seen = Vec::new();
    while let Some(chunk) = body.next().await {
        seen.extend_from_slice(&chunk?);
        let marker: &[u8] = b"\"event\":\"stdout\"";
        if seen.windows(marker.len()).any(|w| w == marker) {
            let at = t.elapsed().as_secs_f64();
            while body.next().await.is_some() {}
            return Ok(at);
        }
    }
    anyhow::bail!("job {} ended without output", job.id)
}
