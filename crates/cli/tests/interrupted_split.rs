//! `vws serve` and two `vws node`s as separate processes, killed (-9) in
//! the middle of what a real VM is doing: a node during a start and while
//! jobs run (a VM's and a dynamic account's), the service during live
//! migrations and a deploy, and the service with the source node during a
//! migration. After each restart the record says what the nodes hold
//! (never `corrupted` for an action that was asked for), nothing is left
//! locked, and the workspace is driven on with the ordinary commands. One
//! guest is shared by the steps, in order.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn show(home: &Path, id: &str) -> Value {
    serde_json::from_str(&ok(home, &["show", id, "--json"])).unwrap()
}

/// A time before the registration that follows (not before the one that
/// came before: a restarted node is waited for, not its earlier run).
fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() - time::Duration::milliseconds(50)
}

#[test]
fn a_service_or_a_node_killed_alone_leaves_the_workspace_drivable() {
    let steps = Steps::new("service, two nodes and a VM");
    let guest = minimal_guest();
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _reap = Reap(home.to_path_buf());
    let mut serve = start_service(home, "127.0.0.1:0");
    let server: Value =
        serde_json::from_str(&std::fs::read_to_string(home.join("server.json")).unwrap()).unwrap();
    // Restarted where the nodes report to.
    let listen = server["url"]
        .as_str()
        .unwrap()
        .trim_start_matches("https://")
        .to_string();
    let mut n1 = start_node(home, "n1", now());
    let n2 = start_node(home, "n2", now());
    import_minimal(home, &guest);
    let id = create(home, &root().join("examples/minimal.xml"));
    ok(home, &["deploy", &id, "--host", "n1"]);

    steps.at("The node killed during a start");
    for after in [300, 1500] {
        kill_during(home, n1, &["start", &id], Duration::from_millis(after));
        n1 = start_node(home, "n1", now());
        let v = settled(home, &id, &["running", "shutdown"]);
        if v["state"] == "shutdown" {
            ok(home, &["start", &id]);
        }
        echoes(home, &id);
        ok(home, &["stop", &id]);
    }

    steps.at("The node killed while jobs run");
    ok(home, &["start", &id]);
    let short = detached(home, &id, "echo a; sleep 2; echo b");
    let long = detached(home, &id, "echo w; exec sleep 1000");
    std::thread::sleep(Duration::from_millis(700));
    drop(n1);
    std::thread::sleep(Duration::from_millis(2500));
    n1 = start_node(home, "n1", now());
    wait_until("the short job to end", Duration::from_secs(30), || {
        job_state(home, &short)["state"] != "running"
    });
    assert_eq!(
        job_state(home, &short)["exit_code"],
        0,
        "{}",
        job_state(home, &short)
    );
    assert_eq!(ok(home, &["job", "output", &short]), "a\nb\n");
    ok(home, &["job", "cancel", &long]);
    wait_until(
        "the long job to be cancelled",
        Duration::from_secs(30),
        || job_state(home, &long)["state"] == "cancelled",
    );

    steps.at("The service killed during live migrations");
    // Early (the target getting ready, or the disk mirror) and late (the
    // memory stream or the switch-over): it ends on one node or the other,
    // running, and then migrates when asked.
    for (after, to) in [(400, "n2"), (2500, "n1"), (1200, "n2")] {
        let from = show(home, &id)["node"].as_str().unwrap().to_string();
        let to = if from == to {
            if to == "n1" {
                "n2"
            } else {
                "n1"
            }
        } else {
            to
        };
        kill_during(
            home,
            serve,
            &["migrate", &id, "--to", to],
            Duration::from_millis(after),
        );
        serve = start_service(home, &listen);
        // Until both nodes have reported the migration is being settled,
        // and a job is refused saying so.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = vws(home, &["run", &id, "--", "echo", "still-here"]);
            if out.status.success() {
                assert_eq!(String::from_utf8_lossy(&out.stdout), "still-here\n");
                break;
            }
            let said = String::from_utf8_lossy(&out.stderr);
            assert!(said.contains("being settled"), "{said}");
            assert!(Instant::now() < deadline, "{said}");
            std::thread::sleep(Duration::from_millis(200));
        }
        let v = settled(home, &id, &["running"]);
        let at = v["node"].as_str().unwrap().to_string();
        assert!(at == from || at == to, "{v}");
        eprintln!("killed {after} ms into a migration {from} → {to}: it runs on {at}");
        let other = if at == "n1" { "n2" } else { "n1" };
        // Nothing of it is left on the node it is not on.
        wait_until("the other node to let go", Duration::from_secs(20), || {
            !home.join(other).join("vms").join(&id).exists()
        });
        let moved =
            serde_json::from_str::<Value>(&ok(home, &["migrate", &id, "--to", other, "--json"]))
                .unwrap();
        assert_eq!(moved["node"], other, "{moved}");
        echoes(home, &id);
    }

    steps.at("The service and the source node killed together during a migration");
    // The source's migration dies with it (the restarted node abandons
    // what its QEMU was still sending): rolled back, unless the guest had
    // already gone over.
    let from = show(home, &id)["node"].as_str().unwrap().to_string();
    let to = if from == "n1" { "n2" } else { "n1" };
    let mut nodes = vec![n1, n2];
    let source = usize::from(from == "n2");
    kill_during(
        home,
        (serve, nodes.remove(source)),
        &["migrate", &id, "--to", to],
        Duration::from_millis(900),
    );
    let t = now();
    serve = start_service(home, &listen);
    nodes.insert(source, start_node(home, &from, t));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = vws(home, &["run", &id, "--", "echo", "still-here"]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let v = settled(home, &id, &["running"]);
    eprintln!(
        "service and {from} killed during a migration to {to}: it runs on {}",
        v["node"]
    );

    steps.at("The node killed during a dynamic account's start and while its job runs");
    let desc = tiny_account(home);
    let acct = create(home, &desc);
    ok(home, &["deploy", &acct, "--host", "n2"]);
    let t = now();
    kill_during(
        home,
        nodes.remove(1),
        &["start", &acct],
        Duration::from_millis(30),
    );
    nodes.insert(1, start_node(home, "n2", t));
    if settled(home, &acct, &["running", "shutdown"])["state"] == "shutdown" {
        ok(home, &["start", &acct]);
    }
    echoes(home, &acct);
    let job = detached(home, &acct, "echo a; sleep 2; echo b");
    std::thread::sleep(Duration::from_millis(500));
    let t = now();
    drop(nodes.remove(1));
    std::thread::sleep(Duration::from_millis(2500));
    nodes.insert(1, start_node(home, "n2", t));
    wait_until("the account's job to end", Duration::from_secs(30), || {
        serde_json::from_str::<Value>(&ok(home, &["job", "show", &job, "--json"])).unwrap()["state"]
            != "running"
    });
    assert_eq!(ok(home, &["job", "output", &job]), "a\nb\n");
    ok(home, &["destroy", &acct]);

    steps.at("The service killed during a deploy");
    ok(home, &["stop", &id]);
    ok(home, &["undeploy", &id]);
    kill_during(home, serve, &["deploy", &id], Duration::from_millis(150));
    let _serve = start_service(home, &listen);
    let _nodes = nodes;
    let v = settled(home, &id, &["shutdown"]);
    if v["placement"] == "repository" {
        ok(home, &["deploy", &id]);
    }
    ok(home, &["start", &id]);
    echoes(home, &id);
    ok(home, &["destroy", &id]);
}
