//! `vws bench scale` runs end to end on a small fleet: simulated nodes
//! register and heartbeat through two replicas on PostgreSQL, deploys are
//! placed on them, and a node that goes silent is found lost. (The figures
//! themselves are the bench's, in docs/scale.md; here only that each was
//! measured.)

mod common;

use std::process::Command;

#[test]
fn the_scale_bench_measures_a_small_fleet() {
    let server = std::env::var("VWS_TEST_POSTGRES")
        .expect("VWS_TEST_POSTGRES must name a PostgreSQL server (scripts/test starts one)");
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(common::VWS)
        .args([
            "bench",
            "scale",
            "--database",
            &server,
            "--nodes",
            "12",
            "--records",
            "300",
        ])
        .args(["--replicas", "2", "--window", "2", "--json"])
        .env("VWS_HOME", home.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = &v["metrics"][0];
    assert_eq!(
        (m["replicas"].as_u64(), m["nodes"].as_u64()),
        (Some(2), Some(12))
    );
    assert_eq!(m["records"], 300);
    // 12 nodes every 2 s offer 6 heartbeats a second.
    let rate = m["heartbeats_per_s"].as_f64().unwrap();
    assert!((3.0..=9.0).contains(&rate), "{m}");
    for k in ["heartbeat_ms", "deploy_ms", "create_ms", "list100_ms"] {
        assert!(m[k]["n"].as_u64().unwrap() >= 1, "{k}: {m}");
        assert!(m[k]["p99"].as_f64().unwrap() > 0.0, "{k}: {m}");
    }
    assert!(m["creates_per_s_8_clients"].as_f64().unwrap() > 0.0);
    // Lost after 10 s without a heartbeat, found by a reaper round each second.
    let lost = m["lost_node_detected_s"].as_f64().unwrap();
    assert!((7.0..=14.0).contains(&lost), "{m}");
}
