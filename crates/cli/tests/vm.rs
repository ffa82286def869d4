//! Real workspaces end to end under TCG: `vws serve` and `vws node` as separate
//! processes, the minimal guest built from Debian packages. One guest is
//! shared across the steps, in order: illegal transitions, a node killed with
//! -9 and restarted (the VM is re-adopted and still controllable), data on
//! the workspace disk surviving stop → undeploy → deploy → start, a paused
//! workspace checked in and resumed on a second node, live migration back
//! with a job's output going on, a refused migration changing nothing, and a
//! QEMU killed by hand corrupting the workspace with a reason.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

mod common;
use common::{root, spawn, start_node, vws, wait_until, Reap, Steps};

fn guest() -> PathBuf {
    let out = root().join("target/vws-test-guest");
    let ok = Command::new(root().join("scripts/build-minimal-image"))
        .arg(&out)
        .status()
        .unwrap()
        .success();
    assert!(ok, "building the minimal guest failed");
    out
}

fn ok(home: &Path, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = vws(home, &a);
    assert!(
        out.status.success(),
        "vws {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn refused(home: &Path, args: &[&str]) -> String {
    let out = vws(home, args);
    assert_eq!(out.status.code(), Some(1), "vws {args:?} should be refused");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn console(home: &Path, id: &str) -> String {
    String::from_utf8_lossy(&vws(home, &["console", id]).stdout).into_owned()
}

/// Output of the workspace's latest job whose command contains `marker`.
fn job_output(home: &Path, id: &str, marker: &str) -> String {
    let jobs = ok(home, &["jobs", id]);
    let job = jobs
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|j| {
            j["argv"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a.as_str().unwrap().contains(marker))
        })
        .map(|j| j["id"].as_str().unwrap().to_string());
    match job {
        Some(job) => {
            String::from_utf8_lossy(&vws(home, &["job", "output", &job]).stdout).into_owned()
        }
        None => String::new(),
    }
}

#[test]
fn a_real_workspace_through_its_lifecycle() {
    let steps = Steps::new("service, node and image");
    let image = guest();
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _reap = Reap(home.to_path_buf());
    let _serve = spawn(home, &["serve", "--listen", "127.0.0.1:0"], "serve.log");
    wait_until("the service", Duration::from_secs(30), || {
        home.join("server.json").exists()
    });
    let t0 = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let mut node = start_node(home, "n1", t0);
    let mut node2 = start_node(home, "n2", t0);

    common::import_minimal(home, &image);
    let desc = home.join("w.toml");
    std::fs::write(
        &desc,
        r#"category = "vm"
[hardware]
ram = "256MiB"
disk = { size = "32MiB" }
[software]
image = "minimal:1"
[capability]
startup = "n=$(cat /data/boots 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/boots; sync; echo boots=$n; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"
"#,
    )
    .unwrap();
    let id = ok(home, &["create", desc.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_string();

    steps.at("Illegal transitions are refused and name the state");
    // Illegal transitions are refused and name the state.
    assert!(refused(home, &["start", &id]).contains("in the repository"));
    let ws = ok(home, &["deploy", &id, "--host", "n1"]);
    assert_eq!(
        (ws["state"].as_str(), ws["node"].as_str()),
        (Some("shutdown"), Some("n1"))
    );
    assert_eq!(ws["binding"]["ram"], 256 << 20);
    assert!(refused(home, &["deploy", &id]).contains("already deployed"));
    assert!(refused(home, &["pause", &id]).contains("shutdown"));
    let ws = ok(home, &["start", &id]);
    assert_eq!(ws["state"], "running");
    wait_until(
        "the startup job's first line",
        Duration::from_secs(20),
        || job_output(home, &id, "boots").contains("boots=1"),
    );
    assert!(
        console(home, &id).contains(&format!("vws: ready {id}")),
        "the console shows the boot"
    );
    assert!(refused(home, &["undeploy", &id]).contains("stop or pause it first"));

    steps.at("kill -9 of the node: the VM keeps running, the restarted node adopts it");
    // kill -9 of the node: the VM keeps running, the restarted node adopts it.
    let pidfile = home.join("n1/vms").join(&id).join("qemu.pid");
    let qemu_pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    node.0.kill().unwrap();
    node.0.wait().unwrap();
    assert!(
        Path::new(&format!("/proc/{qemu_pid}")).exists(),
        "QEMU outlives the node"
    );
    let t1 = time::OffsetDateTime::now_utc();
    node = start_node(home, "n1", t1);
    assert_eq!(
        ok(home, &["show", &id])["state"],
        "running",
        "re-adopted, not corrupted"
    );
    steps.at("Still controllable: a counter started now freezes while paused and goes on after");
    // Still controllable: a counter started now freezes while paused and goes on after.
    let out = vws(
        home,
        &[
            "run",
            "--detach",
            &id,
            "--",
            "sh",
            "-c",
            "i=0; while true; do echo count $i; i=$((i+1)); sleep 0.2; done",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counter = || job_output(home, &id, "count").matches("count ").count();
    wait_until("the counter to count", Duration::from_secs(20), || {
        counter() >= 3
    });
    ok(home, &["pause", &id]);
    let frozen = counter();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        counter(),
        frozen,
        "no output while paused after re-adoption"
    );
    ok(home, &["unpause", &id]);
    wait_until("the counter to go on", Duration::from_secs(20), || {
        counter() > frozen
    });

    steps.at("Disk contents survive a round trip through the repository");
    // Disk contents survive a round trip through the repository.
    assert_eq!(ok(home, &["stop", &id])["state"], "shutdown");
    let ws = ok(home, &["undeploy", &id]);
    assert_eq!(
        (ws["placement"].as_str(), ws["lock_holder"].as_str()),
        (Some("repository"), None)
    );
    assert!(
        !home.join("n1/vms").join(&id).exists(),
        "nothing left on the node"
    );
    ok(home, &["deploy", &id, "--host", "n1"]);
    ok(home, &["start", &id]);
    steps.at("The disk written by the first boot came back");
    // The disk written by the first boot came back.
    wait_until(
        "boots=2 from the startup job",
        Duration::from_secs(20),
        || job_output(home, &id, "boots").contains("boots=2"),
    );

    steps.at("Undeploy from paused keeps the memory");
    // Undeploy from paused keeps the memory: deployed again, on another
    // node, and unpaused, a process's computation goes on from where it was
    // (a fresh boot would have no /tmp/count at all).
    let out = vws(
        home,
        &[
            "run",
            "--detach",
            &id,
            "--",
            "sh",
            "-c",
            // Renamed into place: a reader never sees the file half written.
            "i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.2; done",
        ],
    );
    assert!(out.status.success());
    let count = || -> u64 {
        let out = vws(
            home,
            &[
                "run",
                &id,
                "--",
                "sh",
                "-c",
                "cat /tmp/count 2>/dev/null || echo 0",
            ],
        );
        assert!(
            out.status.success(),
            "vws run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    wait_until("the memory counter", Duration::from_secs(20), || {
        count() >= 5
    });
    let before = count();
    ok(home, &["pause", &id]);
    let ws = ok(home, &["undeploy", &id]);
    assert_eq!(
        (ws["state"].as_str(), ws["placement"].as_str()),
        (Some("paused"), Some("repository"))
    );
    assert_eq!(ok(home, &["deploy", &id, "--host", "n2"])["node"], "n2");
    assert_eq!(ok(home, &["unpause", &id])["state"], "running");
    let after = count();
    assert!(
        after >= before && after < before + 15,
        "the counter went on from {before}, not from scratch: {after}"
    );
    wait_until(
        "the restored counter to count",
        Duration::from_secs(20),
        || count() > after,
    );

    steps.at("Live migration n2 → n1 with a job running");
    // Live migration n2 → n1 with a job running: its output goes on without
    // a gap (lines before the move were logged on n2, lines after on n1),
    // and the disk written on n2 came along.
    let out = vws(
        home,
        &[
            "run",
            "--detach",
            &id,
            "--",
            "sh",
            "-c",
            "echo moved-disk > /data/m; sync; i=0; while true; do echo seq $i; i=$((i+1)); sleep 0.1; done",
        ],
    );
    assert!(out.status.success());
    let seq = || -> Vec<u64> {
        job_output(home, &id, "seq")
            .lines()
            .filter_map(|l| l.strip_prefix("seq ")?.parse().ok())
            .collect()
    };
    wait_until("the job to print", Duration::from_secs(20), || {
        seq().len() >= 5
    });
    let ws = ok(home, &["migrate", &id, "--to", "n1"]);
    assert_eq!(
        (ws["state"].as_str(), ws["node"].as_str()),
        (Some("running"), Some("n1"))
    );
    assert!(!home.join("n2/vms").join(&id).exists(), "n2 let it go");
    let raw = std::fs::read_to_string(home.join("n2.log")).unwrap();
    // Without terminal colour codes.
    let mut n2_log = String::new();
    let mut in_escape = false;
    for c in raw.chars() {
        match (in_escape, c) {
            (false, '\u{1b}') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, c) => n2_log.push(c),
        }
    }
    assert!(
        n2_log.contains("migrating out") && n2_log.contains("tls=true"),
        "the migration and disk-mirror streams went over TLS"
    );
    let moved_at = seq().len();
    wait_until("output after the move", Duration::from_secs(20), || {
        seq().len() > moved_at + 5
    });
    let lines = seq();
    assert_eq!(
        lines,
        (0..lines.len() as u64).collect::<Vec<_>>(),
        "no line lost or repeated across the move"
    );
    let out = vws(home, &["run", &id, "--", "cat", "/data/m"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "moved-disk");

    steps.at("A migration to a node that cannot take it fails and changes nothing");
    // A migration to a node that cannot take it fails and changes nothing.
    node2.0.kill().unwrap();
    node2.0.wait().unwrap();
    assert!(refused(home, &["migrate", &id, "--to", "n2"]).contains("n2"));
    let ws = ok(home, &["show", &id]);
    assert_eq!(
        (ws["state"].as_str(), ws["node"].as_str()),
        (Some("running"), Some("n1"))
    );
    let still = seq().len();
    wait_until("output after the refusal", Duration::from_secs(20), || {
        seq().len() > still
    });

    steps.at("QEMU killed by hand: the workspace is corrupted, with a reason");
    // QEMU killed by hand: the workspace is corrupted, with a reason.
    let qemu_pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    Command::new("kill")
        .args(["-9", &qemu_pid])
        .status()
        .unwrap();
    wait_until(
        "the workspace to be corrupted",
        Duration::from_secs(20),
        || ok(home, &["show", &id])["state"] == "corrupted",
    );
    let reason = ok(home, &["show", &id])["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        // (Restored from memory, this QEMU's console has printed nothing.)
        reason.contains("signal: 9") && reason.contains("last console lines"),
        "{reason}"
    );
    assert!(refused(home, &["start", &id]).contains("corrupted"));
    ok(home, &["destroy", &id]);
    assert!(!home.join("n1/vms").join(&id).exists());
    drop(node);
    drop(node2);
}
