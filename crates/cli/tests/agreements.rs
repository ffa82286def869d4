//! An agreement kept with real VMs (docs/agreements.md): on a node that
//! offers 800 MiB, a best-effort VM of 256 MiB runs a counter; a
//! reservation of 384 MiB needs its room. Before the start the
//! best-effort VM is paused and checked in with its memory (recorded in
//! its history with the policy), the reserved VM starts on time and runs
//! a job; at the end it is checked in, and the best-effort VM comes back
//! in the same boot with its counter going on from where it stopped.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn json(home: &std::path::Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(&ok(home, &all)).unwrap()
}

fn read(home: &std::path::Path, id: &str, path: &str) -> String {
    ok(home, &["run", id, "--", "cat", path]).trim().to_string()
}

/// The counter, if the VM answers now.
fn try_counter(home: &std::path::Path, id: &str) -> Option<u64> {
    let out = vws(home, &["run", id, "--", "cat", "/tmp/counter"]);
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn time_of(v: &Value) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(
        v.as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
}

#[test]
fn a_reservation_suspends_best_effort_work_and_resumes_it_after() {
    let guest = minimal_guest();
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _reap = Reap(home.to_path_buf());
    let _up = vws_up(home, &["--node-ram", "800MiB"]);
    import_minimal(home, &guest);
    let vm = |name: &str, ram: &str| {
        let path = home.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!("category = \"vm\"\n[hardware]\nram = \"{ram}\"\n[software]\nimage = \"minimal:1\"\n"),
        )
        .unwrap();
        path
    };

    // Best-effort work: a VM counting in its memory.
    let be = create(home, &vm("best-effort", "256MiB"));
    ok(home, &["deploy", &be]);
    ok(home, &["start", &be]);
    let boot = read(home, &be, "/proc/sys/kernel/random/boot_id");
    detached(
        home,
        &be,
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.2; done",
    );
    // Zero until the job has written it.
    let counter = || try_counter(home, &be).unwrap_or(0);
    wait_until("the counter to count", Duration::from_secs(20), || {
        counter() >= 5
    });

    // A reservation that needs the room: 256 + 384 MiB pass the 544 MiB
    // the node offers beyond its reserve.
    let offer = json(
        home,
        &[
            "agree",
            vm("reserved", "384MiB").to_str().unwrap(),
            "--at",
            "+15s",
            "--for",
            "15s",
            "--accept",
        ],
    );
    assert_eq!(offer["state"], "reserved", "{offer}");
    let (id, due) = (
        offer["id"].as_str().unwrap().to_string(),
        time_of(&offer["start"]),
    );
    let reserved = offer["slots"][0]["workspace"].as_str().unwrap().to_string();
    let agreement = || json(home, &["agreement", "show", &id]);

    // Room is made ahead of the start: the counter's last value before it
    // went is what it must go on from.
    let mut last = counter();
    wait_until(
        "the best-effort VM's suspension",
        Duration::from_secs(40),
        || {
            let ws = json(home, &["show", &be]);
            if ws["placement"] == "repository" {
                return true;
            }
            if let Some(n) = try_counter(home, &be) {
                last = last.max(n);
            }
            false
        },
    );
    let ws = json(home, &["show", &be]);
    assert_eq!(ws["state"], "paused", "checked in with its memory: {ws}");
    let history = ok(home, &["show", &be, "--history"]);
    assert!(history.contains("suspend"), "{history}");
    assert!(
        history.contains(&id) && history.contains("newest first"),
        "{history}"
    );

    // The reservation starts on time and runs.
    wait_until("the reservation's start", Duration::from_secs(60), || {
        agreement()["state"] == "active"
    });
    let a = agreement();
    let events = a["history"].as_array().unwrap();
    let start = events
        .iter()
        .find(|e| e["action"] == "start")
        .expect("started");
    let late = time_of(&start["at"]) - due;
    assert!(
        late >= time::Duration::ZERO && late < time::Duration::seconds(5),
        "started {late} after its time"
    );
    assert!(!events.iter().any(|e| e["action"] == "missed-start"), "{a}");
    echoes(home, &reserved);

    // At the end it is checked in, and the best-effort VM resumes in the
    // same boot, its counter going on from where it stopped.
    wait_until("the reservation's end", Duration::from_secs(90), || {
        agreement()["state"] == "ended"
    });
    let r = json(home, &["show", &reserved]);
    assert_eq!(r["placement"], "repository", "{r}");
    wait_until(
        "the best-effort VM's return",
        Duration::from_secs(60),
        || {
            let ws = json(home, &["show", &be]);
            ws["placement"] == "host" && ws["state"] == "running"
        },
    );
    assert_eq!(
        read(home, &be, "/proc/sys/kernel/random/boot_id"),
        boot,
        "the same boot"
    );
    let resumed = counter();
    assert!(
        resumed >= last,
        "the counter went on from {last}: {resumed}"
    );
    assert!(
        resumed < last + 50,
        "it was suspended, not left running: {last} → {resumed}"
    );
    wait_until("the counter to go on", Duration::from_secs(20), || {
        counter() > resumed
    });
    let history = ok(home, &["show", &be, "--history"]);
    assert!(history.contains("resume"), "{history}");
}
