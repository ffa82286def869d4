//! `vws bench api`: create, list and show latency and throughput as the
//! record count grows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vws_client::{Client, ListQuery};
use vws_model::Form;

use super::args::BenchArgs;
use super::rig::local_service;
use crate::output::table;
use crate::Globals;

/// min, median, p99 and max of samples, in milliseconds.
pub(crate) fn stats(mut ms: Vec<f64>) -> Value {
    ms.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    json!({ "min": at(0.0), "median": at(0.5), "p99": at(0.99), "max": at(1.0), "n": ms.len() })
}

async fn timed<F, Fut, T>(n: usize, mut f: F) -> anyhow::Result<Vec<f64>>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, vws_client::ClientError>>,
{
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(i).await?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(out)
}

const DESCRIPTION: &str = "category = \"vm\"\nlifeCycle = 86400\n[hardware]\nram = \"128MiB\"\n[software]\nimage = \"bench:1\"\n";

/// Creates records with 8 clients at once until there are `target`; returns creates per second.
async fn fill(
    client: &Client,
    have: usize,
    target: usize,
    ids: &mut Vec<String>,
) -> anyhow::Result<f64> {
    if target <= have {
        return Ok(0.0);
    }
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(have));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, next) = (client.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < target {
                mine.push(
                    client
                        .create(DESCRIPTION.into(), Form::Toml, None)
                        .await?
                        .record
                        .id,
                );
            }
            Ok::<_, vws_client::ClientError>(mine)
        }));
    }
    for t in tasks {
        ids.extend(t.await??);
    }
    Ok((target - have) as f64 / start.elapsed().as_secs_f64())
}

/// Requests per second of `call` from 8 concurrent tasks for `window`;
/// task `k` gets `clients[k % len]` and counts its calls from 0.
pub(crate) async fn per_second<F, Fut>(
    clients: &[Client],
    window: Duration,
    call: F,
) -> anyhow::Result<f64>
where
    F: Fn(Client, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), vws_client::ClientError>> + Send,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..8 {
        let (client, call) = (clients[k % clients.len()].clone(), call.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < window {
                call(client.clone(), k, n).await?;
                n += 1;
            }
            Ok::<_, vws_client::ClientError>(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Show requests per second with 8 concurrent clients for `window`.
async fn show_throughput(client: &Client, ids: &[String], window: Duration) -> anyhow::Result<f64> {
    let ids = Arc::new(ids.to_vec());
    per_second(std::slice::from_ref(client), window, move |c, k, n| {
        let ids = ids.clone();
        async move {
            c.show(&ids[(n as usize * 7919 + k) % ids.len()])
                .await
                .map(drop)
        }
    })
    .await
}

pub(super) async fn api_suite(g: &Globals, a: &BenchArgs) -> anyhow::Result<()> {
    let home = std::env::temp_dir().join(format!("vws-bench-{}", std::process::id()));
    std::fs::create_dir_all(&home)?;
    let database = a
        .database
        .clone()
        .unwrap_or_else(|| format!("sqlite:{}", home.join("vws.db").display()));
    let policy = vws_service::Policy::from_toml(
        "[defaults]\nmax_workspaces = 1000000\nmax_total_ram = \"1000TiB\"",
    )?;
    let running = local_service(&home, &database, policy, vws_service::DEFAULT_BOOT_IMAGE).await?;
    let client = Client::with_credentials(&running.url, &running.admin)?;
    let result = async {
        // A kernel image: creating its workspaces needs no disk, so this
        // measures the API and the database, not qemu-img.
        let blob = home.join("kernel");
        std::fs::write(&blob, b"bench kernel")?;
        let digest = format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"bench kernel")));
        client.upload_blob(&blob, &digest, |_| {}).await?;
        client.import_image(json!({"name": "bench", "tag": "1", "kernel": digest, "initrd": digest})).await?;

        let mut ids = Vec::new();
        let mut rows = Vec::new();
        let mut metrics = serde_json::Map::new();
        let mut sizes = a.sizes.clone();
        sizes.sort_unstable();
        for &n in &sizes {
            let have = ids.len();
            let fill_rate = fill(&client, have, n, &mut ids).await?;
            eprintln!("bench api: {n} records; timing {} requests of each kind", a.samples);
            let create = timed(a.samples, |_| client.create(DESCRIPTION.into(), Form::Toml, None)).await?;
            let first_page = ListQuery { limit: Some(100), ..Default::default() };
            let list = timed(a.samples, |_| client.list(&first_page)).await?;
            let ids_now = ids.clone();
            let show = timed(a.samples, |i| client.show(&ids_now[(i * 7919) % ids_now.len()])).await?;
            let rps = show_throughput(&client, &ids, Duration::from_secs(2)).await?;
            // The timed creates joined the records: account for them.
            let page = client.list_all(&ListQuery::default()).await?;
            ids = page.into_iter().map(|w| w.record.id).collect();
            let (c, l, s) = (stats(create), stats(list), stats(show));
            rows.push(vec![
                n.to_string(),
                format!("{:.2} / {:.2}", c["median"].as_f64().unwrap_or(0.0), c["p99"].as_f64().unwrap_or(0.0)),
                format!("{:.2} / {:.2}", l["median"].as_f64().unwrap_or(0.0), l["p99"].as_f64().unwrap_or(0.0)),
                format!("{:.2} / {:.2}", s["median"].as_f64().unwrap_or(0.0), s["p99"].as_f64().unwrap_or(0.0)),
                format!("{rps:.0}"),
                if fill_rate > 0.0 { format!("{fill_rate:.0}") } else { "-".into() },
            ]);
            metrics.insert(format!("create_ms_at_{n}"), c);
            metrics.insert(format!("list100_ms_at_{n}"), l);
            metrics.insert(format!("show_ms_at_{n}"), s);
            metrics.insert(format!("show_rps_at_{n}"), json!(rps));
            metrics.insert(format!("create_rps_8_clients_at_{n}"), json!(fill_rate));
        }
        let median = |k: &str| metrics.get(k).and_then(|v| v["median"].as_f64()).unwrap_or(f64::NAN);
        let (lo, hi) = (sizes[0], sizes[sizes.len() - 1]);
        let ratios = json!({
            format!("create_p50_{hi}_over_{lo}"): median(&format!("create_ms_at_{hi}")) / median(&format!("create_ms_at_{lo}")),
            format!("list100_p50_{hi}_over_{lo}"): median(&format!("list100_ms_at_{hi}")) / median(&format!("list100_ms_at_{lo}")),
            format!("show_p50_{hi}_over_{lo}"): median(&format!("show_ms_at_{hi}")) / median(&format!("show_ms_at_{lo}")),
        });
        let backend = if database.starts_with("sqlite") { "sqlite" } else { "postgres" };
        let report = json!({
            "suite": "api",
            "runs": a.samples,
            "metrics": metrics,
            "ratios": ratios,
            "env": { "database": backend, "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "transport": "http loopback" },
        });
        if g.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            let mut t = table(&["RECORDS", "CREATE ms p50/p99", "LIST(100) ms p50/p99", "SHOW ms p50/p99", "SHOW req/s (8 clients)", "CREATE/s (8 clients)"]);
            for r in rows {
                t.add_row(r);
            }
            println!("{t}");
            println!("ratios: {ratios}  ({backend}, {} samples each)", a.samples);
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    running.stop().await?;
    let _ = std::fs::remove_dir_all(&home);
    result
}
