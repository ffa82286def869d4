//! OCI images against a real registry (docs/images.md): Debian's
//! docker-registry on a free loopback port, images made here with umoci
//! out of a busybox root and pushed with skopeo. One pulled image runs a
//! job as a dynamic account and as a VM, each seeing the image's marker
//! file, its `Env` and its `WorkingDir`; a second pull moves no layer; a
//! pull cut off mid-layer (the registry gone) registers nothing and the
//! next one completes; a hostile layer is refused with the host's files
//! unchanged.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sh(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Debian's docker-registry, serving `dir` on a free loopback port.
fn registry(dir: &Path) -> (Kill, u16) {
    registry_with(dir, "")
}

/// The same with more of its configuration (an `auth:` section).
fn registry_with(dir: &Path, more: &str) -> (Kill, u16) {
    let port = free_port();
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{more}",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
        .spawn()
        .expect("docker-registry (scripts/setup installs it)");
    wait_until("the registry", Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (Kill(child), port)
}

/// A root with busybox, its applets, `/marker` and `/work`.
fn busybox_root(root: &Path, marker: &str) {
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("work")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    std::fs::write(root.join("marker"), marker).unwrap();
}

/// An OCI image made with umoci from a busybox root (plus `extra`, one
/// more layer, if given), pushed to `registry` as `name`.
fn push_image(work: &Path, port: u16, name: &str, marker: &str, extra: Option<&dyn Fn(&Path)>) {
    push_image_as(work, port, name, marker, extra, None)
}

/// The same, pushed with `creds` (`USER:PASSWORD`).
fn push_image_as(
    work: &Path,
    port: u16,
    name: &str,
    marker: &str,
    extra: Option<&dyn Fn(&Path)>,
    creds: Option<&str>,
) {
    let layout = work.join(format!("layout-{}", name.replace([':', '/'], "-")));
    let bundle = work.join(format!("bundle-{}", name.replace([':', '/'], "-")));
    let l = layout.to_str().unwrap();
    let image = format!("{l}:1");
    sh(
        Command::new("umoci").args(["init", "--layout", l]),
        "umoci init",
    );
    sh(
        Command::new("umoci").args(["new", "--image", &image]),
        "umoci new",
    );
    sh(
        Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(&bundle),
        "umoci unpack",
    );
    busybox_root(&bundle.join("rootfs"), marker);
    // --refresh-bundle: a second repack diffs against this one.
    sh(
        Command::new("umoci")
            .args(["repack", "--refresh-bundle", "--image", &image])
            .arg(&bundle),
        "umoci repack",
    );
    if let Some(add) = extra {
        add(&bundle.join("rootfs"));
        sh(
            Command::new("umoci")
                .args(["repack", "--image", &image])
                .arg(&bundle),
            "umoci repack (second layer)",
        );
    }
    sh(
        Command::new("umoci").args([
            "config",
            "--image",
            &image,
            "--config.env",
            "MARKER_ENV=from-the-image",
            "--config.workingdir",
            "/work",
            "--config.label",
            "org.opencontainers.image.title=marker test",
        ]),
        "umoci config",
    );
    let mut copy = Command::new("skopeo");
    copy.args(["copy", "--dest-tls-verify=false"]);
    if let Some(c) = creds {
        copy.args(["--dest-creds", c]);
    }
    sh(
        copy.args([
            &format!("oci:{image}"),
            &format!("docker://127.0.0.1:{port}/{name}"),
        ]),
        "skopeo copy",
    );
}

fn pull(home: &Path, reference: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["image", "pull", reference, "--json"];
    args.extend_from_slice(extra);
    vws(home, &args)
}

fn pulled(home: &Path, reference: &str, extra: &[&str]) -> Value {
    let out = pull(home, reference, extra);
    assert!(
        out.status.success(),
        "pull {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn describe(home: &Path, name: &str, body: &str) -> PathBuf {
    let p = home.join(format!("{name}.toml"));
    std::fs::write(&p, body).unwrap();
    p
}

const PROBE: &str = "cat /marker; echo; echo env=$MARKER_ENV; echo cwd=$(pwd)";

/// A loopback proxy to the registry that can cut every connection once
/// `cut_after` bytes have gone to the client, and refuse new ones, as a
/// registry that stops would.
struct Cutter {
    port: u16,
    armed: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
}

impl Cutter {
    fn new(upstream: u16, cut_after: u64) -> Cutter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (a, s) = (armed.clone(), sent.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let cut = || a.load(Ordering::SeqCst) && s.load(Ordering::SeqCst) >= cut_after;
                if cut() {
                    drop(client);
                    continue;
                }
                let up = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                let (mut c1, mut u1) = (client.try_clone().unwrap(), up.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c1, &mut u1);
                });
                let (a, s) = (a.clone(), s.clone());
                let (mut c2, mut u2) = (client, up);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    loop {
                        let n = match u2.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if c2.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        let total = s.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                        if a.load(Ordering::SeqCst) && total >= cut_after {
                            let _ = c2.shutdown(std::net::Shutdown::Both);
                            let _ = u2.shutdown(std::net::Shutdown::Both);
                            break;
                        }
                    }
                });
            }
        });
        Cutter { port, armed, sent }
    }
}

#[test]
fn one_pulled_image_runs_as_an_account_and_as_a_vm() {
    let guest = minimal_guest();
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _reap = Reap(home.to_path_buf());
    let work = home.join("oci");
    std::fs::create_dir_all(&work).unwrap();
    let (mut reg, port) = registry(&work);
    push_image(&work, port, "marker:1", "marker-of-the-image", None);
    let _up = vws_up(home, &[]);
    import_minimal(home, &guest);

    let steps = Steps::new("pull: layers into the pool, the config into the catalogue");
    let first = pulled(home, &format!("127.0.0.1:{port}/marker:1"), &[]);
    assert_eq!(first["operation"]["state"], "done", "{first}");
    assert_eq!(first["operation"]["image"], "marker:1");
    let layers = first["operation"]["layers"].as_array().unwrap().clone();
    assert!(!layers.is_empty());
    assert!(
        layers
            .iter()
            .all(|l| l["cached"] == false && l["done"] == l["size"]),
        "{layers:?}"
    );
    let image = &first["image"];
    let oci = &image["manifest"]["oci"];
    assert_eq!(oci["env"][0], "MARKER_ENV=from-the-image", "{oci}");
    assert_eq!(oci["working_dir"], "/work");
    assert_eq!(
        image["manifest"]["labels"]["org.opencontainers.image.title"],
        "marker test"
    );

    steps.at("the same image as a dynamic account");
    let account = create(
        home,
        &describe(
            home,
            "account",
            "category = \"dynamic account\"\n[hardware]\nram = \"128MiB\"\ndisk = { size = \"16MiB\" }\n[software]\nimage = \"marker:1\"\n",
        ),
    );
    ok(home, &["deploy", &account]);
    ok(home, &["start", &account]);
    let out = ok(home, &["run", &account, "--", "sh", "-c", PROBE]);
    assert_eq!(
        out, "marker-of-the-image\nenv=from-the-image\ncwd=/work\n",
        "account"
    );

    steps.at("and as a VM");
    let vm = create(
        home,
        &describe(
            home,
            "vm",
            "category = \"vm\"\n[hardware]\nram = \"256MiB\"\n[software]\nimage = \"marker:1\"\n",
        ),
    );
    ok(home, &["deploy", &vm]);
    ok(home, &["start", &vm]);
    let out = ok(home, &["run", &vm, "--", "sh", "-c", PROBE]);
    assert_eq!(
        out, "marker-of-the-image\nenv=from-the-image\ncwd=/work\n",
        "vm"
    );
    // A job's own variables and folder win over the image's.
    let out = ok(
        home,
        &[
            "run",
            &vm,
            "--env",
            "MARKER_ENV=mine",
            "--cwd",
            "/",
            "--",
            "sh",
            "-c",
            PROBE,
        ],
    );
    assert_eq!(out, "marker-of-the-image\nenv=mine\ncwd=/\n");

    steps.at("the image's User runs a VM's jobs");
    let layout = work.join("layout-marker-1");
    sh(
        Command::new("umoci").args([
            "config",
            "--image",
            &format!("{}:1", layout.display()),
            "--tag",
            "2",
            "--config.user",
            "1000:1001",
        ]),
        "umoci config --config.user",
    );
    sh(
        Command::new("skopeo").args([
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:2", layout.display()),
            &format!("docker://127.0.0.1:{port}/marker:user"),
        ]),
        "skopeo copy (user)",
    );
    pulled(
        home,
        &format!("127.0.0.1:{port}/marker:user"),
        &["--name", "marker:user"],
    );
    let as_user = create(
        home,
        &describe(
            home,
            "as-user",
            "category = \"vm\"\n[hardware]\nram = \"256MiB\"\n[software]\nimage = \"marker:user\"\n",
        ),
    );
    ok(home, &["deploy", &as_user]);
    ok(home, &["start", &as_user]);
    let out = ok(
        home,
        &["run", &as_user, "--", "sh", "-c", "echo $(id -u):$(id -g)"],
    );
    assert_eq!(out, "1000:1001\n", "the job ran as the image's User");
    ok(home, &["destroy", &as_user]);

    steps.at("push: the VM's disk as one more layer over the pulled image; pulled back alike");
    ok(
        home,
        &[
            "run",
            &vm,
            "--",
            "sh",
            "-c",
            "echo refined > /added; rm /marker; sync",
        ],
    );
    ok(home, &["stop", &vm]);
    ok(home, &["undeploy", &vm]);
    ok(home, &["snapshot", &vm, "--as", "refined:1"]);
    let out = ok(
        home,
        &[
            "image",
            "push",
            "refined:1",
            &format!("127.0.0.1:{port}/refined:1"),
            "--json",
        ],
    );
    let pushed: Value = serde_json::from_str(&out).unwrap();
    let at = pushed["operation"]["image"].as_str().unwrap().to_string();
    let digest = at.rsplit_once('@').unwrap().1.to_string();
    let pushed_layers: Vec<&str> = pushed["operation"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    let base_layers: Vec<&str> = oci["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(pushed_layers.len(), base_layers.len() + 1, "{pushed}");
    assert_eq!(
        &pushed_layers[..base_layers.len()],
        &base_layers[..],
        "the image's own layers, then one"
    );
    let back = pulled(
        home,
        &format!("127.0.0.1:{port}/refined:1"),
        &["--name", "refined:back"],
    );
    // The new layer holds what the job changed, and not the VM's own
    // credentials.
    let new_layer = home
        .join("images/sha256")
        .join(pushed_layers.last().unwrap().trim_start_matches("sha256:"));
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&new_layer)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains("added") && listing.contains(".wh.marker"),
        "{listing}"
    );
    assert!(
        !listing.contains("credentials"),
        "a workspace's key went out: {listing}"
    );
    assert_eq!(
        back["image"]["manifest"]["oci"]["manifest_digest"],
        digest.as_str(),
        "the same digest"
    );
    assert_eq!(
        back["image"]["manifest"]["oci"]["env"][0],
        "MARKER_ENV=from-the-image"
    );
    let refined = create(
        home,
        &describe(
            home,
            "refined",
            "category = \"dynamic account\"\n[hardware]\nram = \"128MiB\"\ndisk = { size = \"16MiB\" }\n[software]\nimage = \"refined:back\"\n",
        ),
    );
    ok(home, &["deploy", &refined]);
    ok(home, &["start", &refined]);
    let out = ok(
        home,
        &[
            "run",
            &refined,
            "--",
            "sh",
            "-c",
            "cat /added; test -e /marker && echo marker-still-there; echo env=$MARKER_ENV",
        ],
    );
    assert_eq!(
        out, "refined\nenv=from-the-image\n",
        "the change, the whiteout and the config came back"
    );

    steps.at("a second pull moves no layer");
    let again = pulled(
        home,
        &format!("127.0.0.1:{port}/marker:1"),
        &["--name", "marker:again"],
    );
    let layers = again["operation"]["layers"].as_array().unwrap();
    assert!(layers.iter().all(|l| l["cached"] == true), "{layers:?}");
    assert_eq!(
        again["image"]["id"], image["id"],
        "the same image, named again"
    );

    steps.at("import of an OCI layout folder and of a docker save archive");
    let layout = work.join("layout-marker-1");
    let out = ok(
        home,
        &[
            "image",
            "import",
            "marker:layout",
            "--oci",
            layout.to_str().unwrap(),
            "--json",
        ],
    );
    let from_layout: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        from_layout["image"]["id"], image["id"],
        "the same layers, the same image"
    );
    let archive = work.join("marker.tar");
    sh(
        Command::new("skopeo").args([
            "copy",
            &format!("oci:{}:1", layout.display()),
            &format!("docker-archive:{}:marker:1", archive.display()),
        ]),
        "skopeo copy to a docker archive",
    );
    let out = ok(
        home,
        &[
            "image",
            "import",
            "marker:archive",
            "--oci",
            archive.to_str().unwrap(),
            "--json",
        ],
    );
    let from_archive: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        from_archive["image"]["manifest"]["oci"]["working_dir"], "/work",
        "{from_archive}"
    );
    let archived = create(
        home,
        &describe(
            home,
            "archived",
            "category = \"dynamic account\"\n[hardware]\nram = \"128MiB\"\ndisk = { size = \"16MiB\" }\n[software]\nimage = \"marker:archive\"\n",
        ),
    );
    ok(home, &["deploy", &archived]);
    ok(home, &["start", &archived]);
    let out = ok(home, &["run", &archived, "--", "sh", "-c", PROBE]);
    assert_eq!(
        out, "marker-of-the-image\nenv=from-the-image\ncwd=/work\n",
        "from the archive"
    );

    steps.at("a whiteout removes a lower layer's folder; without a shell, create refuses");
    let no_shell = |root: &Path| std::fs::remove_dir_all(root.join("bin")).unwrap();
    push_image(&work, port, "noshell:1", "none", Some(&no_shell));
    let bare = pulled(home, &format!("127.0.0.1:{port}/noshell:1"), &[]);
    assert_eq!(bare["image"]["manifest"]["oci"]["shell"], false, "{bare}");
    let refused_create = vws(
        home,
        &[
            "create",
            describe(
                home,
                "bare",
                "category = \"dynamic account\"\n[software]\nimage = \"noshell:1\"\n",
            )
            .to_str()
            .unwrap(),
        ],
    );
    assert!(!refused_create.status.success());
    let said = String::from_utf8_lossy(&refused_create.stderr);
    assert!(
        said.contains("software.image") && said.contains("has no /bin/sh"),
        "{said}"
    );

    steps.at("a pull cut off mid-layer registers nothing; the next completes");
    let big = |root: &Path| {
        // Incompressible, so the layer is as large as the file.
        let mut data = vec![0u8; 48 << 20];
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        std::fs::write(root.join("big.bin"), data).unwrap();
    };
    push_image(&work, port, "big:1", "big", Some(&big));
    let cutter = Cutter::new(port, 16 << 20);
    cutter.armed.store(true, Ordering::SeqCst);
    let reference = format!("127.0.0.1:{}/big:1", cutter.port);
    let out = pull(home, &reference, &[]);
    assert!(!out.status.success(), "the cut pull failed");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("broke off") || said.contains("does not match"),
        "{said}"
    );
    assert!(cutter.sent.load(Ordering::SeqCst) >= 16 << 20);
    assert!(
        !vws(home, &["image", "show", "big:1"]).status.success(),
        "nothing registered"
    );
    cutter.armed.store(false, Ordering::SeqCst);
    let done = pulled(home, &reference, &[]);
    assert_eq!(done["operation"]["state"], "done");
    let layers = done["operation"]["layers"].as_array().unwrap();
    assert!(
        layers.iter().any(|l| l["cached"] == true) && layers.iter().any(|l| l["cached"] == false),
        "the base layer was kept, the cut one moved again: {layers:?}"
    );

    steps.at("a hostile layer is refused and the host is unchanged");
    let escape = home.join("escaped-from-a-layer");
    let evil = |root: &Path| {
        // umoci would not write `..`: a symlink that leads out, then a
        // file through it.
        std::os::unix::fs::symlink("../../../../../../../../..", root.join("up")).unwrap();
    };
    push_image(&work, port, "evil:1", "evil", Some(&evil));
    // The second layer's symlink is harmless alone; a third writes through it.
    let layout = work.join("layout-evil-1");
    hostile_layer(&layout, &format!("up{}", escape.display()));
    sh(
        Command::new("skopeo").args([
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:1", layout.display()),
            &format!("docker://127.0.0.1:{port}/evil:1"),
        ]),
        "skopeo copy (hostile)",
    );
    let out = pull(home, &format!("127.0.0.1:{port}/evil:1"), &[]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("leads out of the root"), "{said}");
    assert!(!escape.exists(), "nothing was written outside the image");
    assert!(!vws(home, &["image", "show", "evil:1"]).status.success());

    steps.at("a layer that does not match its digest is refused");
    push_image(&work, port, "tampered:1", "tampered", None);
    // The registry keeps each blob as a file; one byte of the layer's is
    // changed where it sits.
    let blobs = work.join("data/docker/registry/v2/blobs/sha256");
    let manifest_of = |name: &str| -> Value {
        let out = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://127.0.0.1:{port}/{name}"))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let layer = manifest_of("tampered:1")["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let data = blobs.join(&layer[..2]).join(&layer).join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 20;
    bytes[last] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let out = pull(home, &format!("127.0.0.1:{port}/tampered:1"), &[]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("does not match") || said.contains("igest"),
        "{said}"
    );
    assert!(!vws(home, &["image", "show", "tampered:1"]).status.success());
    assert!(
        !home.join("images/sha256").join(&layer).exists(),
        "nothing under the layer's name"
    );

    steps.at("the layers stay in the pool with their image, and go with it");
    let layer = home.join("images/sha256").join(
        first["operation"]["layers"][0]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:"),
    );
    assert!(layer.exists(), "kept for the next pull that shares it");
    ok(home, &["destroy", &account, &vm, &refined]);
    for tag in [
        "marker:1",
        "marker:again",
        "marker:layout",
        "marker:user",
        "refined:1",
        "refined:back",
    ] {
        ok(home, &["image", "rm", tag]);
    }
    assert!(!layer.exists(), "removed with the last image made of it");
    reg.0.kill().unwrap();
}

/// Appends to the OCI layout's image `1` a layer holding one file at
/// `path` (written raw, as a hostile builder would), with its manifest
/// and index updated.
fn hostile_layer(layout: &Path, path: &str) {
    let script = r#"
import hashlib, io, json, os, sys, tarfile
layout, path = sys.argv[1], sys.argv[2]
def blob(data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", d), "wb") as f:
        f.write(data)
    return "sha256:" + d, len(data)
def read(digest):
    with open(os.path.join(layout, "blobs", "sha256", digest.split(":")[1]), "rb") as f:
        return f.read()
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as t:
    data = b"escaped\n"
    info = tarfile.TarInfo(path.lstrip("/"))
    info.size = len(data)
    t.addfile(info, io.BytesIO(data))
layer = buf.getvalue()
ldigest, lsize = blob(layer)
index = json.load(open(os.path.join(layout, "index.json")))
entry = index["manifests"][0]
manifest = json.loads(read(entry["digest"]))
config = json.loads(read(manifest["config"]["digest"]))
config["rootfs"]["diff_ids"].append(ldigest)
cdigest, csize = blob(json.dumps(config).encode())
manifest["config"].update(digest=cdigest, size=csize)
manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ldigest, "size": lsize})
mdigest, msize = blob(json.dumps(manifest).encode())
entry.update(digest=mdigest, size=msize)
json.dump(index, open(os.path.join(layout, "index.json"), "w"))
"#;
    sh(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(layout)
            .arg(path),
        "the hostile layer",
    );
}

#[test]
fn a_bearer_token_registry_takes_the_registries_file_credentials() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _reap = Reap(home.to_path_buf());
    let work = home.join("oci");
    std::fs::create_dir_all(&work).unwrap();
    // The token server the registry sends clients to.
    let token_port = free_port();
    let cert = work.join("token-signer.pem");
    let server = Command::new(python())
        .arg(root().join("crates/cli/tests/oci/token_server.py"))
        .arg(token_port.to_string())
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join("token.log")).unwrap())
        .spawn()
        .unwrap();
    let _server = Kill(server);
    wait_until("the token server", Duration::from_secs(20), || {
        cert.exists() && TcpStream::connect(("127.0.0.1", token_port)).is_ok()
    });
    let auth = format!(
        "auth:\n  token:\n    realm: http://127.0.0.1:{token_port}/token\n    service: vws-test\n    issuer: vws-test-issuer\n    rootcertbundle: {}\n",
        cert.display()
    );
    let (mut reg, port) = registry_with(&work, &auth);
    push_image_as(
        &work,
        port,
        "private:1",
        "behind-a-token",
        None,
        Some("user:secret"),
    );
    let _up = vws_up(home, &[]);
    let reference = format!("127.0.0.1:{port}/private:1");
    let registries = |body: &str| std::fs::write(home.join("registries.toml"), body).unwrap();

    // Without credentials, and with wrong ones: refused, saying where they go.
    for (file, name) in [
        (String::new(), "anonymous:1"),
        (
            format!("[\"127.0.0.1:{port}\"]\nusername = \"user\"\npassword = \"wrong\"\n"),
            "wrong:1",
        ),
    ] {
        registries(&file);
        let out = pull(home, &reference, &["--name", name]);
        assert!(!out.status.success(), "{name}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("access refused") && said.contains("registries file"),
            "{name}: {said}"
        );
        assert!(!vws(home, &["image", "show", name]).status.success());
    }
    // With the right ones, from the file: the library trades them for a token.
    registries(&format!(
        "[\"127.0.0.1:{port}\"]\nusername = \"user\"\npassword = \"secret\"\n"
    ));
    let done = pulled(home, &reference, &[]);
    assert_eq!(done["operation"]["state"], "done", "{done}");
    assert_eq!(
        done["image"]["manifest"]["oci"]["env"][0],
        "MARKER_ENV=from-the-image"
    );
    reg.0.kill().unwrap();
}
