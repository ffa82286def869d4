//! The `vws` binary end to end: `vws up` in a temporary VWS_HOME, the main
//! path through the CLI, exit codes, and a kill -9 of the service that loses
//! nothing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{ok, vws, VWS};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

struct Up {
    child: Child,
}

impl Up {
    fn start(home: &Path) -> Up {
        let server = home.join("server.json");
        let _ = std::fs::remove_file(&server);
        let child = Command::new(VWS)
            .args(["up", "--listen", "127.0.0.1:0"])
            .env("VWS_HOME", home)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !server.exists() {
            assert!(
                Instant::now() < deadline,
                "vws up did not write {}",
                server.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Up { child }
    }

    fn kill9(mut self) {
        // SIGKILL: no shutdown code runs.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json(home: &Path, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    serde_json::from_str(&ok(home, &a)).unwrap()
}

fn import_kernel(home: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let (k, i) = (dir.path().join("vmlinuz"), dir.path().join("initrd"));
    // A stand-in kernel whose bzImage header says 6.1.0 (what
    // examples/minimal.xml requires).
    let mut kernel = vec![7u8; 300_000];
    kernel[0x202..0x206].copy_from_slice(b"HdrS");
    kernel[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
    kernel[0x300..0x30b].copy_from_slice(b"6.1.0-fake\0");
    std::fs::write(&k, kernel).unwrap();
    std::fs::write(&i, vec![9u8; 100_000]).unwrap();
    let image = json(
        home,
        &[
            "image",
            "import",
            "minimal:1",
            "--kernel",
            k.to_str().unwrap(),
            "--initrd",
            i.to_str().unwrap(),
        ],
    );
    assert_eq!(image["tags"][0], "minimal:1");
}

#[test]
fn the_main_path_through_the_cli() {
    let home = tempfile::tempdir().unwrap();
    let _up = Up::start(home.path());
    import_kernel(home.path());
    let minimal = examples().join("minimal.xml");
    let ws = json(
        home.path(),
        &["create", minimal.to_str().unwrap(), "--name", "demo"],
    );
    let id = ws["id"].as_str().unwrap().to_string();
    assert_eq!(ws["state"], "shutdown");
    let listed = json(home.path(), &["list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let shown = json(home.path(), &["show", &id, "--history"]);
    assert_eq!(shown["name"], "demo");
    assert_eq!(shown["history"][0]["action"], "create");
    let xml = ok(home.path(), &["show", &id, "--xml"]);
    assert!(xml.contains("<ResourceKey>"), "{xml}");
    let human = ok(home.path(), &["show", &id]);
    assert!(
        human.contains("EPR") && human.contains("qcow2 overlay"),
        "{human}"
    );
    let copy = json(home.path(), &["clone", &id, "--name", "demo-copy"]);
    assert_ne!(copy["id"], ws["id"]);
    ok(home.path(), &["renew", &id, "--for", "2h"]);
    ok(home.path(), &["destroy", &id]);
    assert_eq!(json(home.path(), &["list"]).as_array().unwrap().len(), 1);

    // A refused description: exit 1, and the message names the element.
    let out = vws(
        home.path(),
        &["create", examples().join("paper.xml").to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/virtualWorkspace/hw:hardware/hw:device[1]/@image"),
        "{err}"
    );
    // Someone else's or a missing workspace: exit 1.
    assert_eq!(
        vws(home.path(), &["show", "ws-000000000000"]).status.code(),
        Some(1)
    );
    // Ids stay one path segment: `..` and `/` cannot reach other routes
    // (`vws destroy ../images/minimal:1` removed the image once).
    for args in [
        vec!["destroy", "../images/minimal:1"],
        vec!["show", "../nodes"],
        vec!["show", "ws-1/../../nodes"],
        vec!["show", "%2e%2e"],
    ] {
        let out = vws(home.path(), &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("is not a workspace id"), "{args:?}: {err}");
    }
    assert_eq!(
        json(home.path(), &["image", "show", "minimal:1"])["tags"][0],
        "minimal:1",
        "the image is still there"
    );
    // A usage error: exit 2.
    assert_eq!(vws(home.path(), &["create"]).status.code(), Some(2));
    assert_eq!(
        vws(home.path(), &["renew", &id, "--for", "soon"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn a_second_service_on_one_sqlite_file_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let _up = Up::start(home.path());
    let out = vws(
        home.path(),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--ui-listen",
            "off",
            "--ec2-listen",
            "off",
        ],
    );
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("another vws service") && said.contains("PostgreSQL"),
        "{said}"
    );
    // The first is still serving, and says its database answers.
    let health = ok(home.path(), &["node", "list", "--json"]);
    assert!(health.contains("local"), "{health}");
}

#[test]
fn no_service_is_a_clear_error() {
    let home = tempfile::tempdir().unwrap();
    let out = vws(home.path(), &["list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("vws up"));
}

#[test]
fn kill_9_of_the_service_loses_nothing() {
    let home = tempfile::tempdir().unwrap();
    let up = Up::start(home.path());
    import_kernel(home.path());
    let toml = home.path().join("w.toml");
    std::fs::write(&toml, "category = \"vm\"\n[hardware]\ndisk = { size = \"16MiB\" }\n[software]\nimage = \"minimal:1\"\n").unwrap();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            json(home.path(), &["create", toml.to_str().unwrap()])["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    ok(home.path(), &["destroy", &ids[0]]);
    up.kill9();
    let _up = Up::start(home.path());
    let listed = json(home.path(), &["list"]);
    let mut after: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap().to_string())
        .collect();
    after.sort();
    let mut want = ids[1..].to_vec();
    want.sort();
    assert_eq!(after, want);
    for w in listed.as_array().unwrap() {
        assert!(
            Path::new(w["disk_path"].as_str().unwrap()).exists(),
            "disk of {} survived",
            w["id"]
        );
    }
    let disks = std::fs::read_dir(home.path().join("disks"))
        .unwrap()
        .count();
    assert_eq!(disks, 4, "no disk without a record");
    assert_eq!(
        json(home.path(), &["image", "list"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    json(home.path(), &["create", toml.to_str().unwrap()]);
}
