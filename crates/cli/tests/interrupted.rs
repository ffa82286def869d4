//! `kill -9` of `vws up` while a real VM starts, stops, runs jobs, undeploys
//! or is destroyed: after the restart the record says what the node has
//! (never `corrupted` for an action that was asked for), jobs are followed
//! again, and the workspace can be driven on.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn state(home: &std::path::Path, id: &str) -> String {
    let v: Value = serde_json::from_str(&ok(home, &["show", id, "--json"])).unwrap();
    v["state"].as_str().unwrap_or_default().to_string()
}

/// Runs `vws VERB ID` and kills `vws up` (-9) `after` into it.
fn killed_during(home: &std::path::Path, up: Kill, verb: &str, id: &str, after: Duration) {
    kill_during(home, up, &[verb, id], after)
}

/// Kills `vws up` the given milliseconds into a start, for each delay:
/// after each restart the workspace runs (the start happened) or is shut
/// down (it did not, and starts now), then runs a job and stops. Returns
/// the `vws up` running at the end.
fn starts_despite_kills(home: &std::path::Path, mut up: Kill, id: &str, afters: &[u64]) -> Kill {
    for after in afters {
        killed_during(home, up, "start", id, Duration::from_millis(*after));
        up = vws_up(home, &[]);
        if settled(home, id, &["running", "shutdown"])["state"] == "shutdown" {
            ok(home, &["start", id]);
        }
        echoes(home, id);
        ok(home, &["stop", id]);
    }
    up
}

/// Starts the workspace and kills `vws up` `after` ms into its stop: after
/// the restart it ends shut down (the stop that was asked for), or still
/// runs if the guest had not gone (and may yet finish powering off), and
/// then stops; never corrupted.
fn stops_despite_a_kill(home: &std::path::Path, up: Kill, id: &str, after: u64) -> Kill {
    ok(home, &["start", id]);
    killed_during(home, up, "stop", id, Duration::from_millis(after));
    let up = vws_up(home, &[]);
    if settled(home, id, &["running", "shutdown"])["state"] == "running" {
        std::thread::sleep(Duration::from_secs(3));
        if state(home, id) == "running" {
            ok(home, &["stop", id]);
        }
    }
    assert_eq!(settled(home, id, &["shutdown"])["state"], "shutdown");
    up
}

/// Kills `vws up` `after` into a deploy: after the restart the deploy is
/// rolled back (nothing half-staged is used) and deploys when asked.
fn deploys_despite_a_kill(home: &std::path::Path, up: Kill, id: &str, after: u64) -> Kill {
    killed_during(home, up, "deploy", id, Duration::from_millis(after));
    let up = vws_up(home, &[]);
    if settled(home, id, &[])["placement"] == "repository" {
        ok(home, &["deploy", id]);
    }
    up
}

/// Kills `vws up` `after` into a destroy: it is finished after the
/// restart (or, if the kill came first, the workspace is as it was and is
/// destroyed now). Returns once it is gone.
fn destroys_despite_a_kill(home: &std::path::Path, up: Kill, id: &str, after: u64) -> Kill {
    killed_during(home, up, "destroy", id, Duration::from_millis(after));
    let up = vws_up(home, &[]);
    // The restarted node registers at once; ten seconds is ample.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let shown = vws(home, &["show", id, "--json"]);
        if !shown.status.success() {
            assert!(
                String::from_utf8_lossy(&shown.stderr).contains("not found"),
                "{}",
                String::from_utf8_lossy(&shown.stderr)
            );
            return up;
        }
        let s = state(home, id);
        assert_ne!(s, "corrupted", "{}", ok(home, &["history", id]));
        if Instant::now() > deadline {
            ok(home, &["destroy", id]);
            return up;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Nothing of a destroyed VM is left on its node: no QEMU, no folder, no
/// job log.
fn assert_vm_gone(home: &std::path::Path, id: &str) {
    let qemu = Command::new("pgrep").args(["-f", id]).output().unwrap();
    assert!(
        qemu.stdout.is_empty(),
        "processes of {id} left: {}",
        String::from_utf8_lossy(&qemu.stdout)
    );
    assert!(!home.join("node/vms").join(id).exists());
    let list = home.join("node/jobs").join(format!("{id}.list"));
    assert!(!list.exists(), "{} left", list.display());
}

fn ended(home: &std::path::Path, job: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let j = job_state(home, job);
        if j["state"] != "running" {
            return j;
        }
        assert!(Instant::now() < deadline, "job {job} stayed running: {j}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kills `vws up` (-9) while two jobs run in the workspace: one ends while
/// nothing is up, the other runs on. After the restart the first is
/// recorded with its real exit status and all its output, and the second
/// is followed again: its output goes on and a cancel reaches it.
fn jobs_survive_a_kill(home: &std::path::Path, up: Kill, id: &str) -> Kill {
    let short = detached(home, id, "echo before; sleep 2; echo after; exit 3");
    let long = detached(
        home,
        id,
        "echo waiting; sleep 4; echo still; exec sleep 1000",
    );
    std::thread::sleep(Duration::from_millis(700));
    drop(up);
    std::thread::sleep(Duration::from_millis(2500));
    let up = vws_up(home, &[]);
    let j = ended(home, &short);
    assert_eq!(
        (j["state"].as_str(), j["exit_code"].as_i64()),
        (Some("exited"), Some(3)),
        "{j}"
    );
    assert_eq!(ok(home, &["job", "output", &short]), "before\nafter\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    while ok(home, &["job", "output", &long]) != "waiting\nstill\n" {
        assert!(
            Instant::now() < deadline,
            "the running job's output stopped"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    ok(home, &["job", "cancel", &long]);
    let j = ended(home, &long);
    assert_eq!(
        (j["state"].as_str(), j["signal"].as_i64()),
        (Some("cancelled"), Some(15)),
        "{j}"
    );
    up
}

#[test]
fn kill_9_during_start_stop_undeploy_or_destroy_leaves_the_workspace_drivable() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _reap = Reap(home.to_path_buf());
    let guest = minimal_guest();
    let mut up = vws_up(home, &[]);
    import_minimal(home, &guest);
    let desc = root().join("examples/minimal.xml");
    let id = create(home, &desc);
    // Killed while the image and the disk are staged.
    up = deploys_despite_a_kill(home, up, &id, 150);

    // Killed early in a start (QEMU launched or not yet) and late (the
    // guest booting).
    up = starts_despite_kills(home, up, &id, &[300, 1500]);

    // Killed during a stop.
    up = stops_despite_a_kill(home, up, &id, 200);
    ok(home, &["start", &id]);
    echoes(home, &id);

    // Killed while jobs run.
    up = jobs_survive_a_kill(home, up, &id);

    // Killed during a pause, then during a snapshot (memory and disk being
    // saved): it ends paused or running as the node has it, a snapshot
    // either registered or left nothing, and another works at once.
    killed_during(home, up, "pause", &id, Duration::from_millis(40));
    up = vws_up(home, &[]);
    if settled(home, &id, &["running", "paused"])["state"] == "running" {
        ok(home, &["pause", &id]);
    }
    kill_during(
        home,
        up,
        &["snapshot", &id, "--as", "killed:1"],
        Duration::from_millis(300),
    );
    up = vws_up(home, &[]);
    assert_eq!(settled(home, &id, &["paused"])["state"], "paused");
    ok(home, &["snapshot", &id, "--as", "killed:2"]);
    ok(home, &["unpause", &id]);
    echoes(home, &id);

    // Killed during an undeploy (the disk going back to the repository):
    // after the restart it is in the repository, or still on its node and
    // can be undeployed again; then it deploys and runs.
    ok(home, &["stop", &id]);
    killed_during(home, up, "undeploy", &id, Duration::from_millis(300));
    let up = vws_up(home, &[]);
    std::thread::sleep(Duration::from_secs(1));
    let v: Value = serde_json::from_str(&ok(home, &["show", &id, "--json"])).unwrap();
    assert_ne!(v["state"], "corrupted", "{}", ok(home, &["history", &id]));
    if v["placement"] == "host" {
        ok(home, &["undeploy", &id]);
    }
    let up = deploys_despite_a_kill(home, up, &id, 400);
    ok(home, &["start", &id]);
    echoes(home, &id);

    // Killed during a destroy.
    let up = destroys_despite_a_kill(home, up, &id, 100);
    assert_vm_gone(home, &id);
    drop(up);
}

#[test]
fn kill_9_during_an_accounts_deploy_start_stop_jobs_pause_undeploy_or_destroy_leaves_it_drivable() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _reap = Reap(home.to_path_buf());
    let up = vws_up(home, &[]);

    // An import whose service is killed while the disk is uploaded says so
    // and fails (it was a silent exit 141), and leaves nothing behind.
    let disk = home.join("big.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(3 << 30)
        .unwrap();
    let import = Command::new(VWS)
        .args(["image", "import", "big:1", "--disk", disk.to_str().unwrap()])
        .env("VWS_HOME", home)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let uploading = || {
        std::fs::read_dir(home.join("images/tmp"))
            .map(|d| {
                d.flatten()
                    .any(|e| e.metadata().is_ok_and(|m| m.len() > (64 << 20)))
            })
            .unwrap_or(false)
    };
    wait_until("the upload", Duration::from_secs(60), uploading);
    drop(up);
    let out = import.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("cannot reach the vws service"), "{said}");
    let mut up = vws_up(home, &[]);
    assert!(!uploading(), "the half-upload was removed");
    assert!(!vws(home, &["image", "show", "big:1"]).status.success());
    std::fs::remove_file(&disk).unwrap();
    let desc = tiny_account(home);
    let id = create(home, &desc);
    up = deploys_despite_a_kill(home, up, &id, 100);
    // An account starts in tens of milliseconds: killed at 30 ms it may
    // or may not have begun.
    up = starts_despite_kills(home, up, &id, &[30, 300]);
    let up = stops_despite_a_kill(home, up, &id, 100);
    ok(home, &["start", &id]);
    echoes(home, &id);
    let up = jobs_survive_a_kill(home, up, &id);
    // Killed during a pause (the freezer), then during an undeploy (the
    // upper layer going back to the repository): it ends as the node has
    // it, and goes on.
    killed_during(home, up, "pause", &id, Duration::from_millis(20));
    let up = vws_up(home, &[]);
    if settled(home, &id, &["running", "paused"])["state"] == "paused" {
        ok(home, &["unpause", &id]);
    }
    echoes(home, &id);
    ok(home, &["stop", &id]);
    killed_during(home, up, "undeploy", &id, Duration::from_millis(50));
    let up = vws_up(home, &[]);
    if settled(home, &id, &[])["placement"] == "host" {
        ok(home, &["undeploy", &id]);
    }
    ok(home, &["deploy", &id]);
    ok(home, &["start", &id]);
    echoes(home, &id);
    // A copy the account's own permissions refuse says so (403), not
    // "bad request" or "not found".
    let file = home.join("x.txt");
    std::fs::write(&file, "x").unwrap();
    let refused = vws(
        home,
        &["cp", file.to_str().unwrap(), &format!("{id}:/etc/x")],
    );
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("permissions refuse") && said.contains("[forbidden]"),
        "{said}"
    );
    let uid = serde_json::from_str::<Value>(&ok(home, &["show", &id, "--json"])).unwrap()
        ["account"]["uid"]
        .as_u64()
        .unwrap();
    let up = destroys_despite_a_kill(home, up, &id, 30);
    // Nothing of the uid is left (zombies included), and its lease is free.
    let left = Command::new("pgrep")
        .args(["-U", &uid.to_string()])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&left.stdout)
    );
    let next = create(home, &desc);
    ok(home, &["deploy", &next]);
    ok(home, &["destroy", &next]);
    drop(up);
}
