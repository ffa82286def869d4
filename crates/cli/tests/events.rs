//! The event stream end to end, with `vws up` and a dynamic account: a
//! follower sees an image added, the workspace's transitions and its job's
//! start and end as they happen, in order; `vws wait` returns on the event
//! (and exits 3 on its timeout); a reader resumes after any sequence number
//! (`--after`, and `Last-Event-ID` over plain HTTP); and another user sees
//! none of it but the public image.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn events(home: &std::path::Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["events", "--json"];
    args.extend_from_slice(extra);
    ok(home, &args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn events_are_streamed_in_order_waited_on_resumed_and_filtered() {
    let steps = Steps::new("vws up and a follower");
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _reap = Reap(home.to_path_buf());
    let _up = vws_up(home, &[]);
    // The node's registration is an event (administrators see nodes).
    let before = events(home, &[]);
    assert!(
        before
            .iter()
            .any(|e| e["kind"] == "node" && e["data"]["status"] == "up"),
        "{before:?}"
    );
    let mut follower = Command::new(VWS)
        .args(["events", "-f", "--json"])
        .env("VWS_HOME", home)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    let (tx, seen) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            if tx.send(serde_json::from_str(&l).unwrap()).is_err() {
                return;
            }
        }
    });
    // Let the follower connect.
    std::thread::sleep(Duration::from_millis(500));

    steps.at("An image, a workspace's lifecycle and a job");
    let desc = tiny_account(home);
    let id = create(home, &desc);
    ok(home, &["deploy", &id]);
    // `vws wait` returns when the start's event comes.
    let started = std::thread::spawn({
        let home = home.to_path_buf();
        let id = id.clone();
        move || {
            std::thread::sleep(Duration::from_millis(300));
            ok(&home, &["start", &id]);
        }
    });
    let waited = Command::new(VWS)
        .args(["wait", &id, "--state", "running", "--timeout", "30s"])
        .env("VWS_HOME", home)
        .output()
        .unwrap();
    started.join().unwrap();
    assert!(
        waited.status.success(),
        "{}",
        String::from_utf8_lossy(&waited.stderr)
    );
    let out = vws(home, &["run", &id, "--", "true"]);
    assert!(out.status.success());
    // A state it never reaches: exit 3 when the timeout passes.
    let t = Instant::now();
    let timed_out = vws(home, &["wait", &id, "--state", "paused", "--timeout", "1s"]);
    assert_eq!(timed_out.status.code(), Some(3));
    assert!(t.elapsed() < Duration::from_secs(5));

    steps.at("The follower saw it all, in order");
    let mut got: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !got
        .iter()
        .any(|e| e["kind"] == "job" && e["data"]["state"] == "exited")
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match seen.recv_timeout(left) {
            Ok(e) => got.push(e),
            Err(_) => panic!("the job's end never came: {got:#?}"),
        }
    }
    let seqs: Vec<i64> = got.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let image = got
        .iter()
        .position(|e| e["kind"] == "image" && e["data"]["name"] == "tiny")
        .expect("the image's event");
    let states: Vec<&str> = got
        .iter()
        .filter(|e| e["kind"] == "workspace" && e["subject"] == id.as_str())
        .filter_map(|e| e["data"]["action"].as_str())
        .collect();
    assert_eq!(
        states,
        ["create", "checkout", "deploy", "start"],
        "{got:#?}"
    );
    let created = got
        .iter()
        .position(|e| e["subject"] == id.as_str())
        .unwrap();
    assert!(image < created);
    let running = got
        .iter()
        .find(|e| e["subject"] == id.as_str() && e["data"]["action"] == "start")
        .unwrap();
    assert_eq!(running["data"]["state"], "running");
    let job_states: Vec<&str> = got
        .iter()
        .filter(|e| e["kind"] == "job")
        .filter_map(|e| e["data"]["state"].as_str())
        .collect();
    assert_eq!(job_states.last(), Some(&"exited"), "{job_states:?}");
    let _ = follower.kill();
    let _ = follower.wait();

    steps.at("Resumed after a sequence number");
    let start_seq = running["seq"].as_i64().unwrap();
    let after = events(home, &["--after", &start_seq.to_string()]);
    assert!(after.iter().all(|e| e["seq"].as_i64().unwrap() > start_seq));
    assert!(after.iter().any(|e| e["kind"] == "job"));
    // Over plain HTTP with Last-Event-ID, as a browser's EventSource does.
    let server: Value =
        serde_json::from_str(&std::fs::read_to_string(home.join("server.json")).unwrap()).unwrap();
    let url = format!("{}/v1/events?follow=false", server["url"].as_str().unwrap());
    let curl = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(home.join("pki/ca/ca.pem"))
        .arg("--cert")
        .arg(home.join("pki/admin/cert.pem"))
        .arg("--key")
        .arg(home.join("pki/admin/key.pem"))
        .args(["-H", &format!("Last-Event-ID: {start_seq}"), &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&curl.stdout);
    assert!(text.contains("event: ready"), "{text}");
    let ids: Vec<i64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: ")?.parse().ok())
        .collect();
    assert_eq!(ids.first(), Some(&start_seq), "ready names where it starts");
    assert!(ids[1..].iter().all(|s| *s > start_seq), "{text}");
    assert_eq!(ids.len() - 1, after.len(), "{text}");

    steps.at("Another user sees none of it but the public image");
    let bob = user(home, "bob", "/O=Grid/OU=bio/CN=Bob");
    let mut args: Vec<&str> = bob.iter().map(String::as_str).collect();
    args.extend(["events", "--json"]);
    let his: Vec<Value> = ok(home, &args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        his.iter().all(|e| e["kind"] == "image"),
        "bob sees only images: {his:#?}"
    );
    assert!(his.iter().any(|e| e["data"]["name"] == "tiny"));
    ok(home, &["destroy", &id]);
}
