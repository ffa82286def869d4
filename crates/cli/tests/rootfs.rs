//! One image, both categories: a root filesystem image from `vws image
//! build` (Debian by debootstrap, with an extra package) runs as a `vm`
//! workspace — the minimal guest's kernel and init, the image as its root
//! through the workspace's own copy-on-write overlay — and as a dynamic
//! account. Steps, in order: an unbootable image is refused at create; a
//! VM sees Debian and runs the extra package's program; its writes survive
//! stop, undeploy, deploy and start; a second VM of the image does not see
//! them and the node's copy of the image is unchanged; the same image runs
//! as an account; the catalogue shows what it holds (`image show`, `image
//! list --has`); a description naming no image, only Debian 12 and bc,
//! gets it chosen (`vws match`, the history) as a VM and as an account, and
//! one needing a program no image holds is refused with the nearest
//! candidate; a hot image of the Debian VM gives clones with their own
//! identity, a job running in each.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

mod common;
use common::{debian_image_with, import_minimal, minimal_guest, ok, refused, vws, Reap};

fn run(home: &Path, id: &str, script: &str) -> Output {
    vws(home, &["run", id, "--", "sh", "-c", script])
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn create(home: &Path, text: &str, name: &str) -> String {
    let desc = home.join(format!("{name}.toml"));
    std::fs::write(&desc, text).unwrap();
    common::create(home, &desc)
}

const VM: &str =
    "category = \"vm\"\n[hardware]\nram = \"256MiB\"\n[software]\nimage = \"debian:12\"\n";

#[test]
fn a_root_filesystem_image_runs_as_a_vm_and_as_an_account() {
    let guest = minimal_guest();
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _reap = Reap(home.to_path_buf());
    let _up = common::vws_up(home, &[]);
    // Step: a root filesystem needs the boot image; without it, and for a
    // disk that is neither bootable nor a filesystem, create says why.
    common::import_debian(home);
    let desc = home.join("vm.toml");
    std::fs::write(&desc, VM).unwrap();
    let e = refused(home, &["create", desc.to_str().unwrap()]);
    assert!(
        e.contains("software.image") && e.contains("boot image minimal:1"),
        "{e}"
    );
    let blank = home.join("blank.raw");
    std::fs::write(&blank, vec![0u8; 1 << 20]).unwrap();
    ok(
        home,
        &[
            "image",
            "import",
            "blank:1",
            "--disk",
            blank.to_str().unwrap(),
        ],
    );
    std::fs::write(home.join("blank.toml"), VM.replace("debian:12", "blank:1")).unwrap();
    let e = refused(home, &["create", home.join("blank.toml").to_str().unwrap()]);
    assert!(
        e.contains("software.image") && e.contains("cannot boot as a VM"),
        "{e}"
    );
    import_minimal(home, &guest);

    // Step: the VM runs Debian's userland, the extra package's program too.
    let a = create(home, VM, "a");
    ok(home, &["deploy", &a]);
    ok(home, &["start", &a]);
    let text = stdout(&run(
        home,
        &a,
        "cat /etc/debian_version; echo 6*7 | bc; apt-get --version | head -1; \
         cat /etc/resolv.conf; echo kept > /root/keep; sync",
    ));
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("12."), "{text}");
    assert_eq!(lines[1], "42", "bc from the image: {text}");
    assert!(lines[2].starts_with("apt "), "{text}");
    assert!(text.contains("nameserver 10.0.2.3"), "{text}");

    // Step: its writes survive stop, undeploy, deploy and start.
    ok(home, &["stop", &a]);
    ok(home, &["undeploy", &a]);
    ok(home, &["deploy", &a]);
    ok(home, &["start", &a]);
    assert_eq!(stdout(&run(home, &a, "cat /root/keep")).trim(), "kept");

    // Step: a second VM of the image sees none of it, and the node's copy
    // of the image is the image.
    let b = create(home, VM, "b");
    ok(home, &["deploy", &b]);
    ok(home, &["start", &b]);
    let text = stdout(&run(home, &b, "cat /root/keep 2>&1 || echo absent"));
    assert!(text.contains("absent"), "{text}");
    let digest: Value =
        serde_json::from_str(&ok(home, &["image", "show", "debian:12", "--json"])).unwrap();
    let digest = digest["id"].as_str().unwrap().trim_start_matches("sha256:");
    let cached = home.join("node/cache/sha256").join(digest);
    let sum = Command::new("sha256sum").arg(&cached).output().unwrap();
    assert!(
        String::from_utf8_lossy(&sum.stdout).starts_with(digest),
        "the cached image is unchanged: {sum:?}"
    );
    ok(home, &["destroy", &b]);

    // Step: the same image as a dynamic account.
    let acct = create(
        home,
        "category = \"dynamic account\"\n[hardware]\nram = \"128MiB\"\n[software]\nimage = \"debian:12\"\n",
        "acct",
    );
    ok(home, &["deploy", &acct]);
    ok(home, &["start", &acct]);
    let text = stdout(&run(
        home,
        &acct,
        "cat /etc/debian_version; echo 6*7 | bc; id -un",
    ));
    assert_eq!(
        text.lines().collect::<Vec<_>>()[1..],
        ["42", "ws"],
        "{text}"
    );
    ok(home, &["destroy", &acct]);

    // Step: the catalogue: what the image holds, read at import.
    let shown = ok(home, &["image", "show", "debian:12"]);
    assert!(shown.contains("Debian GNU/Linux 12"), "{shown}");
    assert!(shown.contains("libc  2.36"), "{shown}");
    let listed = ok(home, &["image", "list", "--has", "bc"]);
    assert!(
        listed.contains("debian:12") && !listed.contains("blank:1"),
        "{listed}"
    );
    // Step: found by what it needs: no image named, a VM and an account
    // made from the one image that holds bc, running it.
    let wants = "[software]\nos = { distribution = \"debian-12\" }\nprograms = [{ name = \"bc\", min = \"1.07\" }]\n";
    let by_need = home.join("need.toml");
    std::fs::write(
        &by_need,
        format!("category = \"vm\"\n[hardware]\nram = \"256MiB\"\n{wants}"),
    )
    .unwrap();
    let m = ok(home, &["match", by_need.to_str().unwrap()]);
    assert!(
        m.contains("fits   debian:12") && m.contains("debian:12 chosen"),
        "{m}"
    );
    let v = create(
        home,
        &format!("category = \"vm\"\n[hardware]\nram = \"256MiB\"\n{wants}"),
        "need-vm",
    );
    let shown: Value = serde_json::from_str(&ok(home, &["show", &v, "--json"])).unwrap();
    assert_eq!(shown["description"]["software"]["image"], "debian:12");
    let history = ok(home, &["show", &v, "--history"]);
    assert!(history.contains("debian:12 chosen"), "{history}");
    ok(home, &["deploy", &v]);
    ok(home, &["start", &v]);
    assert_eq!(stdout(&run(home, &v, "echo 3^4 | bc")).trim(), "81");
    ok(home, &["destroy", &v]);
    let acct = create(
        home,
        &format!("category = \"dynamic account\"\n[hardware]\nram = \"128MiB\"\n{wants}"),
        "need-acct",
    );
    ok(home, &["deploy", &acct]);
    ok(home, &["start", &acct]);
    assert_eq!(stdout(&run(home, &acct, "echo 3^4 | bc")).trim(), "81");
    ok(home, &["destroy", &acct]);
    // Nothing holds emboss: refused with the nearest candidates.
    let none = home.join("none.toml");
    std::fs::write(
        &none,
        "category = \"vm\"\n[software]\nprograms = [{ name = \"emboss\" }]\n",
    )
    .unwrap();
    let e = refused(home, &["create", none.to_str().unwrap()]);
    assert!(
        e.contains("no image meets") && e.contains("nearest candidate debian:12"),
        "{e}"
    );

    // Step: the image's own init, when asked for: refused for an image
    // without systemd, naming the element; systemd as PID 1 where it is.
    std::fs::write(
        home.join("sd.toml"),
        VM.replace(
            "image = \"debian:12\"",
            "image = \"debian:12\"\nos = { init = \"systemd\" }",
        ),
    )
    .unwrap();
    let e = refused(home, &["create", home.join("sd.toml").to_str().unwrap()]);
    assert!(
        e.contains("software.os.init") && e.contains("no systemd"),
        "{e}"
    );
    let sd_image = debian_image_with(home, "systemd-sysv,bc");
    ok(
        home,
        &[
            "image",
            "import",
            "debian-sd:12",
            "--disk",
            sd_image.to_str().unwrap(),
        ],
    );
    let sd = create(
        home,
        &VM.replace(
            "image = \"debian:12\"",
            "image = \"debian-sd:12\"\nos = { init = \"systemd\" }",
        ),
        "sd",
    );
    ok(home, &["deploy", &sd]);
    ok(home, &["start", &sd]);
    let text = stdout(&run(home, &sd, "cat /proc/1/comm; echo 5+5 | bc"));
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["systemd", "10"],
        "{text}"
    );
    ok(home, &["stop", &sd]);
    ok(home, &["destroy", &sd]);

    // Step: a hot image of the Debian VM; its clones have their own
    // identity and run jobs in Debian.
    ok(home, &["pause", &a]);
    ok(home, &["snapshot", &a, "--as", "debian-hot:1"]);
    let mut seen = Vec::new();
    for n in ["h1", "h2"] {
        let h = create(home, &VM.replace("debian:12", "debian-hot:1"), n);
        ok(home, &["deploy", &h]);
        ok(home, &["start", &h]);
        let text = stdout(&run(home, &h, "hostname; cat /root/keep; echo 2^10 | bc"));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines, [h.as_str(), "kept", "1024"], "{text}");
        seen.push(lines[0].to_string());
        ok(home, &["destroy", &h]);
    }
    assert_ne!(seen[0], seen[1]);
    ok(home, &["destroy", &a]);
}

/// The QEMU command line of a workspace's VM on the local node.
fn qemu_args(home: &Path, id: &str) -> String {
    let pid = std::fs::read_to_string(home.join("node/vms").join(id).join("qemu.pid")).unwrap();
    std::fs::read_to_string(format!("/proc/{}/cmdline", pid.trim()))
        .unwrap()
        .replace('\0', " ")
}

/// A node reading images on demand (`--on-demand-images`): a VM of an
/// image the node lacks starts with the image read over the node's NBD
/// server, runs Debian's programs from it, and writes to its own disk;
/// the image then arrives whole in the node's cache, with its digest; the
/// next start reads it there, and the workspace's writes are still there.
#[test]
fn a_vm_starts_before_its_image_is_on_the_node() {
    let guest = minimal_guest();
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _reap = Reap(home.to_path_buf());
    let _up = common::vws_up(home, &["--on-demand-images"]);
    import_minimal(home, &guest);
    common::import_debian(home);
    let digest: Value =
        serde_json::from_str(&ok(home, &["image", "show", "debian:12", "--json"])).unwrap();
    let digest = digest["id"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let a = create(home, VM, "lazy");
    ok(home, &["deploy", &a]);
    ok(home, &["start", &a]);
    let args = qemu_args(home, &a);
    assert!(
        args.contains("file.driver=nbd") && args.contains("backing=disk0-base"),
        "started over the node's NBD server: {args}"
    );
    let text = stdout(&run(
        home,
        &a,
        "cat /etc/debian_version; echo 6*7 | bc; echo mine > /root/mine; sync",
    ));
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("12."), "{text}");
    assert_eq!(lines[1], "42", "{text}");
    // The image arrives whole in the cache, checked.
    let cached = home.join("node/cache/sha256").join(&digest);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !cached.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the image read on demand was not staged whole"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let sum = Command::new("sha256sum").arg(&cached).output().unwrap();
    assert!(
        String::from_utf8_lossy(&sum.stdout).starts_with(&digest),
        "the cached image is the image: {sum:?}"
    );
    // Started again, it reads the cached image, and its writes are kept.
    ok(home, &["stop", &a]);
    ok(home, &["start", &a]);
    let args = qemu_args(home, &a);
    assert!(!args.contains("nbd"), "{args}");
    assert_eq!(stdout(&run(home, &a, "cat /root/mine")).trim(), "mine");
    ok(home, &["destroy", &a]);
}
