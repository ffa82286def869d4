//! The web dashboard in a real browser: `vws up` with its dashboard, a
//! dynamic account created, deployed, started, read and paused from the
//! page by the administrator, and another user who sees none of it. The
//! browser part is `tests/dashboard/dashboard.py` (selenium driving
//! Debian's chromium, installed by scripts/setup); its screenshots are kept
//! in target/dashboard-screenshots (docs/dashboard.md shows them).

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

fn link(home: &std::path::Path, who: &[&str]) -> String {
    let mut args = who.to_vec();
    args.extend(["ui", "--json"]);
    let v: Value = serde_json::from_str(&ok(home, &args)).unwrap();
    v["url"].as_str().unwrap().to_string()
}

#[test]
fn the_dashboard_in_a_real_browser() {
    let python = root().join("target/py/bin/python");
    assert!(
        python.exists(),
        "{} is missing: scripts/setup installs selenium",
        python.display()
    );
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _reap = Reap(home.to_path_buf());
    let _up = vws_up(home, &["--ui-listen", "127.0.0.1:0"]);
    let server: Value =
        serde_json::from_str(&std::fs::read_to_string(home.join("server.json")).unwrap()).unwrap();
    let ui = server["ui"]
        .as_str()
        .expect("the dashboard's URL")
        .to_string();
    ok(home, &["image", "build", "tiny:1", "--from", "busybox"]);
    let bob = user(home, "bob", "/O=Grid/OU=bio/CN=Bob");
    let bob_link = link(home, &bob.iter().map(String::as_str).collect::<Vec<_>>());
    let admin_link = link(home, &[]);
    let shots = root().join("target/dashboard-screenshots");
    let out = Command::new(&python)
        .arg(root().join("crates/cli/tests/dashboard/dashboard.py"))
        .env("UI", &ui)
        .env("ADMIN_LINK", admin_link)
        .env("BOB_LINK", bob_link)
        .env(
            "GOOD",
            "category = \"dynamic account\"\n[hardware]\nram = \"128MiB\"\ndisk = { size = \"16MiB\" }\n[software]\nimage = \"tiny:1\"\n",
        )
        .env(
            "BAD",
            "category = \"dynamic account\"\n[hardware]\nram = { min = \"2GiB\", max = \"1GiB\" }\n[software]\nimage = \"tiny:1\"\n",
        )
        .env("SHOTS", &shots)
        .output()
        .unwrap();
    script_passed(&out, "the browser test", "dashboard: all steps passed");
    for shot in [
        "1-workspaces",
        "3-running",
        "4-paused",
        "5-narrow",
        "6-other-user",
    ] {
        assert!(
            shots.join(format!("{shot}.png")).exists(),
            "{shot} was not taken"
        );
    }
    // The page's workspace, paused, goes with the test.
    let listed: Value = serde_json::from_str(&ok(home, &["list", "--json"])).unwrap();
    for w in listed.as_array().or(listed["items"].as_array()).unwrap() {
        ok(home, &["destroy", w["id"].as_str().unwrap()]);
    }
}
