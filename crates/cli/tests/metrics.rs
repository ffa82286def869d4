//! Metrics scraped by Debian's real Prometheus server: `vws up` serves
//! /metrics on its own loopback listener; Prometheus scrapes it every
//! second; a query through Prometheus's HTTP API returns a running VM's CPU
//! seconds, and the value rises while a job burns CPU in it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{answer, host_address, import_minimal, minimal_guest, ok, vws, Kill, Reap};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of an instant query, if it has one.
fn query(prom: &str, q: &str) -> Option<f64> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "5", "-G"])
        .arg(format!("{prom}/api/v1/query"))
        .arg("--data-urlencode")
        .arg(format!("query={q}"))
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> Option<f64>) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn prometheus_scrapes_a_workspaces_cpu_seconds() {
    let prometheus = which("prometheus")
        .expect("this test needs Debian's prometheus (scripts/setup installs it)");
    let guest = minimal_guest();
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _reap = Reap(home.to_path_buf());
    let _up = common::vws_up(home, &["--metrics-listen", "127.0.0.1:0"]);
    let server: Value =
        serde_json::from_str(&std::fs::read_to_string(home.join("server.json")).unwrap()).unwrap();
    let metrics = server["metrics"]
        .as_str()
        .expect("a metrics URL")
        .to_string();
    let target = metrics
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();

    import_minimal(home, &guest);
    let desc = home.join("w.toml");
    std::fs::write(
        &desc,
        "category = \"vm\"\n[hardware]\nram = \"256MiB\"\ndisk = { size = \"32MiB\" }\n[[network.nics]]\nname = \"eth0\"\nmethod = \"user\"\n[software]\nimage = \"minimal:1\"\n",
    )
    .unwrap();
    let id = common::create(home, &desc);
    ok(home, &["deploy", &id]);
    ok(home, &["start", &id]);

    // The endpoint itself: OpenMetrics text with the families documented.
    let text = String::from_utf8(
        Command::new("curl")
            .args(["-sf", &metrics])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for family in [
        "# TYPE vws_http_requests counter",
        "# TYPE vws_http_request_duration_seconds histogram",
        "# TYPE vws_workspaces gauge",
        "# TYPE vws_nodes gauge",
        "# TYPE vws_jobs_running gauge",
        "# TYPE vws_workspace_cpu_seconds counter",
        "# TYPE vws_workspace_block_written_bytes counter",
        "# TYPE vws_workspace_network_receive_bytes counter",
        "# TYPE vws_staging_bytes counter",
        "# TYPE vws_reaper_actions counter",
        "# EOF",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }

    // Debian's Prometheus scrapes it.
    let data = home.join("prometheus");
    std::fs::create_dir_all(&data).unwrap();
    let config = home.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: vws\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let _prom = Kill(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(home.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let prom = format!("http://127.0.0.1:{port}");
    let cpu = format!("vws_workspace_cpu_seconds_total{{workspace=\"{id}\"}}");
    let before = wait_for(
        "Prometheus to have the workspace's CPU seconds",
        Duration::from_secs(60),
        || query(&prom, &cpu),
    );
    assert_eq!(
        query(
            &prom,
            "sum(vws_workspaces{state=\"running\",category=\"vm\"})"
        ),
        Some(1.0)
    );
    assert!(query(&prom, "sum(vws_http_requests_total)").is_some_and(|n| n > 0.0));

    // A job burns CPU for 6 s: the value Prometheus reads rises.
    let out = vws(
        home,
        &[
            "run",
            "--detach",
            &id,
            "--",
            "sh",
            "-c",
            "end=$(($(date +%s)+6)); while [ $(date +%s) -lt $end ]; do :; done",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let after = wait_for("the CPU seconds to rise", Duration::from_secs(40), || {
        query(&prom, &cpu).filter(|v| *v > before + 2.0)
    });
    assert!(after > before + 2.0, "{before} → {after}");

    // A job writes 8 MiB to the disk and fetches 2 MB from the host: the
    // block and network counters Prometheus reads rise by as much.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let web = format!(
        "{}:{}",
        host_address(),
        listener.local_addr().unwrap().port()
    );
    answer(listener, "x".repeat(2_000_000).leak());
    let written = format!("vws_workspace_block_written_bytes_total{{workspace=\"{id}\"}}");
    let received = format!("vws_workspace_network_receive_bytes_total{{workspace=\"{id}\"}}");
    let (w0, r0) = (
        query(&prom, &written).unwrap_or(0.0),
        query(&prom, &received).unwrap_or(0.0),
    );
    let script = format!(
        "dd if=/dev/zero of=/data/eight bs=1M count=8 conv=fsync 2>/dev/null && wget -q -O /dev/null http://{web}/"
    );
    let out = vws(home, &["run", &id, "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{out:?}");
    wait_for("the written bytes to rise", Duration::from_secs(30), || {
        query(&prom, &written).filter(|v| *v >= w0 + 8.0 * 1048576.0)
    });
    wait_for(
        "the received bytes to rise",
        Duration::from_secs(30),
        || query(&prom, &received).filter(|v| *v >= r0 + 2_000_000.0),
    );
    assert!(query(&prom, "vws_staging_bytes_total").is_some_and(|n| n > 0.0));
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.exists())
}
