//! Security end to end, with `vws serve` and certificates made by `vws cert`:
//! mutual TLS refusals (no certificate, another CA, expired, revoked, a
//! truncated handshake), owners and administrators, the access control list,
//! and node and client certificates kept apart.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

const VWS: &str = env!("CARGO_BIN_EXE_vws");

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn vws_as(home: &Path, who: Option<&Path>, args: &[&str]) -> Output {
    let mut c = Command::new(VWS);
    c.env("VWS_HOME", home).env_remove("VWS_SERVER");
    for v in ["VWS_CERT", "VWS_KEY", "VWS_CA"] {
        c.env_remove(v);
    }
    if let Some(dir) = who {
        c.arg("--cert")
            .arg(dir.join("cert.pem"))
            .arg("--key")
            .arg(dir.join("key.pem"));
    }
    c.args(args).output().unwrap()
}

fn ok_as(home: &Path, who: Option<&Path>, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = vws_as(home, who, &a);
    assert!(
        out.status.success(),
        "vws {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn refused_as(home: &Path, who: Option<&Path>, args: &[&str]) -> String {
    let out = vws_as(home, who, args);
    assert!(
        !out.status.success(),
        "vws {args:?} should have been refused"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn issue(home: &Path, args: &[&str], out: &Path) -> PathBuf {
    let mut a = vec!["cert", "issue"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["--out", out.to_str().unwrap()]);
    let o = vws_as(home, None, &a);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out.to_path_buf()
}

fn curl(home: &Path, who: Option<&Path>, args: &[&str]) -> (bool, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10"])
        .arg("--cacert")
        .arg(home.join("pki/ca/ca.pem"));
    if let Some(dir) = who {
        c.arg("--cert")
            .arg(dir.join("cert.pem"))
            .arg("--key")
            .arg(dir.join("key.pem"));
    }
    let out = c.args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ),
    )
}

#[test]
fn certificates_owners_and_access_control() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _reap = common::Reap(home.to_path_buf());
    std::fs::write(
        home.join("acl.toml"),
        "[[rule]]\nname = \"guests run no jobs\"\nactions = [\"run\"]\ndn = \"/O=Grid/OU=guests/*\"\neffect = \"deny\"\n",
    )
    .unwrap();
    std::fs::write(
        home.join("policy.toml"),
        "[[owner]]\ndn = \"/O=Grid/OU=secure/*\"\nrequire_signed_images = true\n",
    )
    .unwrap();
    let serve = Serve(
        Command::new(VWS)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("VWS_HOME", home)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(home.join("serve.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !home.join("server.json").exists() {
        assert!(Instant::now() < deadline, "vws serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let server: Value =
        serde_json::from_str(&std::fs::read_to_string(home.join("server.json")).unwrap()).unwrap();
    let url = server["url"].as_str().unwrap().to_string();
    assert!(url.starts_with("https://"), "{url}");
    let certs = home.join("certs");
    let alice = issue(
        home,
        &["--dn", "/O=Grid/OU=bio/CN=Alice", "--attr", "vo=bio"],
        &certs.join("alice"),
    );
    let bob = issue(home, &["--dn", "/O=Grid/OU=bio/CN=Bob"], &certs.join("bob"));
    let gus = issue(
        home,
        &["--dn", "/O=Grid/OU=guests/CN=Gus"],
        &certs.join("gus"),
    );
    let node = issue(home, &["--host", "n9"], &certs.join("n9"));
    let expired = issue(
        home,
        &["--dn", "/O=Grid/CN=Old", "--days", "0"],
        &certs.join("old"),
    );
    let revoked = issue(
        home,
        &["--dn", "/O=Grid/CN=Mallory"],
        &certs.join("mallory"),
    );

    // The administrator's certificate (made on first run) is used by default.
    let me = ok_as(home, None, &["cert", "show"]);
    assert!(me["attributes"].to_string().contains("admin"), "{me}");
    // A disk that boots by itself as far as vws can tell: a boot sector's
    // signature (a blank disk is refused for a VM at create).
    let disk = home.join("tiny.raw");
    let mut tiny = vec![0u8; 1 << 20];
    tiny[510..512].copy_from_slice(&[0x55, 0xaa]);
    std::fs::File::create(&disk)
        .unwrap()
        .write_all(&tiny)
        .unwrap();
    ok_as(
        home,
        None,
        &[
            "image",
            "import",
            "tiny:1",
            "--disk",
            disk.to_str().unwrap(),
        ],
    );

    // Image names have owners: Bob cannot publish under the administrator's
    // name, nor remove its tag; what admin's name points at is unchanged.
    let tiny = ok_as(home, None, &["image", "show", "tiny:1"])["id"].clone();
    let bobs = home.join("bobs.raw");
    std::fs::write(&bobs, vec![7u8; 1 << 20]).unwrap();
    let e = refused_as(
        home,
        Some(&bob),
        &[
            "image",
            "import",
            "tiny:1",
            "--disk",
            bobs.to_str().unwrap(),
        ],
    );
    assert!(e.contains("belongs to"), "{e}");
    let e = refused_as(home, Some(&bob), &["image", "rm", "tiny:1"]);
    assert!(e.contains("belongs to"), "{e}");
    assert_eq!(ok_as(home, None, &["image", "show", "tiny:1"])["id"], tiny);
    // A private image is its owner's: others do not see it or make from it.
    ok_as(
        home,
        Some(&bob),
        &[
            "image",
            "import",
            "secret:1",
            "--private",
            "--disk",
            bobs.to_str().unwrap(),
        ],
    );
    assert_eq!(
        ok_as(home, Some(&bob), &["image", "show", "secret:1"])["visibility"],
        "private"
    );
    let e = refused_as(home, Some(&alice), &["image", "show", "secret:1"]);
    assert!(e.contains("not found"), "{e}");
    assert!(!ok_as(home, Some(&alice), &["image", "list"])
        .to_string()
        .contains("secret:1"));

    // Alice owns what she creates.
    let desc = home.join("w.toml");
    std::fs::write(
        &desc,
        "category = \"vm\"\n[hardware]\nram = \"64MiB\"\n[software]\nimage = \"tiny:1\"\n",
    )
    .unwrap();
    let ws = ok_as(home, Some(&alice), &["create", desc.to_str().unwrap()]);
    let id = ws["id"].as_str().unwrap().to_string();
    assert_eq!(ws["owner"], "/O=Grid/OU=bio/CN=Alice");
    let before = ok_as(home, Some(&alice), &["show", &id]);

    // Bob cannot see, start or destroy it: not found, and nothing changes.
    for args in [
        vec!["show", &id],
        vec!["deploy", &id],
        vec!["destroy", &id],
        vec!["renew", &id, "--for", "60s"],
    ] {
        let e = refused_as(home, Some(&bob), &args);
        assert!(e.contains("not found"), "{args:?}: {e}");
    }
    let listed = ok_as(home, Some(&bob), &["list"]);
    assert!(
        !listed.to_string().contains(&id),
        "Bob's list does not show it"
    );
    assert_eq!(
        ok_as(home, Some(&alice), &["show", &id]),
        before,
        "nothing about it changed"
    );
    // An administrator can.
    assert_eq!(
        ok_as(home, None, &["show", &id])["owner"],
        "/O=Grid/OU=bio/CN=Alice"
    );

    // The ACL: guests may create but not run jobs (403, even on their own).
    let g = ok_as(home, Some(&gus), &["create", desc.to_str().unwrap()]);
    let gid = g["id"].as_str().unwrap();
    let (_, body) = curl(
        home,
        Some(&gus),
        // HTTP/1.1: refused before its body is read (see the heartbeat below).
        &[
            "--http1.1",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"argv": ["true"]}"#,
            &format!("{url}/v1/workspaces/{gid}/jobs"),
        ],
    );
    assert!(
        body.contains("may not run jobs") && body.ends_with("403"),
        "{body}"
    );
    let log = std::fs::read_to_string(home.join("serve.log")).unwrap();
    assert!(
        log.contains("guests run no jobs"),
        "the refusing rule is logged"
    );
    // Admin-class actions need role=admin.
    let e = refused_as(home, Some(&alice), &["node", "list"]);
    assert!(e.contains("may not do administrative actions"), "{e}");

    // A node certificate cannot act as a client; a client cannot act as a node.
    let e = refused_as(home, Some(&node), &["list"]);
    assert!(
        e.contains("node certificate cannot call client actions"),
        "{e}"
    );
    let (_, body) = curl(
        home,
        Some(&alice),
        // HTTP/1.1: the service answers 403 before reading the body, and
        // curl 7.88 (Debian 12) reports the RST_STREAM(NO_ERROR) that HTTP/2
        // then sends as a framing error (curl 92) instead of the response.
        &[
            "--http1.1",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            "{}",
            &format!("{url}/v1/nodes/n9/heartbeat"),
        ],
    );
    assert!(body.ends_with("403"), "{body}");

    // Refused at TLS: no certificate, another CA's, an expired one, a revoked one.
    let (done, body) = curl(home, None, &[&format!("{url}/v1/health")]);
    assert!(
        !done && !body.ends_with("200"),
        "no client certificate: {body}"
    );
    let other = tempfile::tempdir().unwrap();
    ok_as(other.path(), None, &["ca", "init"]);
    let foreign = issue(
        other.path(),
        &["--dn", "/O=Grid/OU=bio/CN=Alice", "--attr", "role=admin"],
        &other.path().join("f"),
    );
    std::fs::copy(home.join("pki/ca/ca.pem"), foreign.join("ca.pem")).unwrap();
    refused_as(home, Some(&foreign), &["list"]);
    std::thread::sleep(Duration::from_millis(1100));
    refused_as(home, Some(&expired), &["list"]);
    ok_as(home, Some(&revoked), &["list"]);
    let o = vws_as(
        home,
        None,
        &["cert", "revoke", revoked.join("cert.pem").to_str().unwrap()],
    );
    assert!(o.status.success());
    refused_as(home, Some(&revoked), &["list"]);

    // Where the policy requires signed images, an unsigned one is refused;
    // signed (by a certificate of this CA) it is accepted.
    let sue = issue(
        home,
        &["--dn", "/O=Grid/OU=secure/CN=Sue"],
        &certs.join("sue"),
    );
    let e = refused_as(home, Some(&sue), &["create", desc.to_str().unwrap()]);
    assert!(e.contains("not signed"), "{e}");
    let e = refused_as(home, Some(&foreign), &["image", "sign", "tiny:1"]);
    assert!(e.contains("error"), "{e}");
    let signed = ok_as(home, Some(&alice), &["image", "sign", "tiny:1"]);
    assert_eq!(signed["signer"], "/O=Grid/OU=bio/CN=Alice");
    ok_as(home, Some(&sue), &["create", desc.to_str().unwrap()]);

    // A tampered image chunk is refused at staging; the deploy fails cleanly.
    let node = Serve(
        Command::new(VWS)
            .args(["node", "--name", "n1", "--heartbeat", "1", "--node-home"])
            .arg(home.join("n1"))
            .env("VWS_HOME", home)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(home.join("node.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok_as(home, None, &["node", "list"])
        .to_string()
        .contains("\"up\"")
    {
        assert!(Instant::now() < deadline, "the node did not register");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut payload: Vec<u8> = (0..(9u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    payload[510..512].copy_from_slice(&[0x55, 0xaa]);
    payload[1080] = 0; // and no ext superblock magic by chance
    let big = home.join("big.raw");
    std::fs::write(&big, &payload).unwrap();
    let img = ok_as(
        home,
        None,
        &["image", "import", "big:1", "--disk", big.to_str().unwrap()],
    );
    let digest = img["id"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let desc2 = home.join("big.toml");
    std::fs::write(
        &desc2,
        "category = \"vm\"\n[hardware]\nram = \"64MiB\"\n[software]\nimage = \"big:1\"\n",
    )
    .unwrap();
    let victim = ok_as(home, Some(&alice), &["create", desc2.to_str().unwrap()]);
    let vid = victim["id"].as_str().unwrap().to_string();
    let stored = home.join("images/sha256").join(&digest);
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[5 << 20] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();
    let e = refused_as(home, Some(&alice), &["deploy", &vid]);
    assert!(e.contains("digest"), "{e}");
    let after = ok_as(home, Some(&alice), &["show", &vid]);
    assert_eq!(
        (after["placement"].as_str(), after["lock_holder"].as_str()),
        (Some("repository"), None),
        "nothing half-deployed"
    );
    assert!(
        !home.join("n1/cache/sha256").join(&digest).exists(),
        "no tampered image cached"
    );
    assert!(!home.join("n1/vms").join(&vid).exists());

    // The node honours revocation: a service certificate it accepted is
    // refused once revoked (the node fetches the CA's CRL every heartbeat).
    let nodes = ok_as(home, None, &["node", "list"]);
    let node_url = nodes
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == "n1"))
        .and_then(|n| n["url"].as_str())
        .unwrap_or_else(|| panic!("no url for n1 in {nodes}"))
        .to_string();
    let svc = issue(home, &["--host", "svc2", "--service"], &certs.join("svc2"));
    let (done, body) = curl(home, Some(&svc), &[&format!("{node_url}/node/v1/health")]);
    assert!(done && body.ends_with("200"), "{body}");
    ok_as(
        home,
        None,
        &["cert", "revoke", svc.join("cert.pem").to_str().unwrap()],
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (done, body) = curl(home, Some(&svc), &[&format!("{node_url}/node/v1/health")]);
        if !done || body.ends_with("401") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node still serves a revoked certificate: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        std::fs::read_to_string(home.join("n1/crl.pem"))
            .unwrap()
            .contains("BEGIN X509 CRL"),
        "the node keeps the list"
    );
    assert!(
        home.join("n1/tls/ca-crl.pem").exists(),
        "and hands it to QEMU"
    );
    drop(node);

    // A truncated handshake and garbage are dropped; the service goes on.
    let addr = url.trim_start_matches("https://").to_string();
    for junk in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        b"GET / HTTP/1.1\r\n\r\n",
        b"",
    ] {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let _ = s.write_all(junk);
        drop(s);
    }
    assert_eq!(ok_as(home, Some(&alice), &["show", &id])["id"], id.as_str());
    drop(serve);
}
