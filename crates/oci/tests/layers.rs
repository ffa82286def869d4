//! Layers applied exactly, and hostile ones refused with nothing written
//! outside the root: tar archives made here entry by entry.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use vws_oci::layers::{Applier, LayerError, Limits};

/// A tar entry: (path, kind, content or link target, mode).
enum E<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str, u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str),
}

fn raw_name(h: &mut tar::Header, name: &str) {
    // set_path refuses `..` and absolute paths: write the bytes as a
    // hostile builder would.
    let old = h.as_old_mut();
    old.name = [0; 100];
    old.name[..name.len()].copy_from_slice(name.as_bytes());
}

fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_mtime(1_700_000_000);
        let data: &[u8] = match e {
            E::File(p, d, mode) => {
                raw_name(&mut h, p);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(d.len() as u64);
                d
            }
            E::Dir(p, mode) => {
                raw_name(&mut h, p);
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                &[]
            }
            E::Symlink(p, t) | E::Hardlink(p, t) => {
                raw_name(&mut h, p);
                h.set_entry_type(if matches!(e, E::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.set_mode(0o777);
                h.set_size(0);
                let old = h.as_old_mut();
                old.linkname = [0; 100];
                old.linkname[..t.len()].copy_from_slice(t.as_bytes());
                &[]
            }
            E::Char(p) => {
                raw_name(&mut h, p);
                h.set_entry_type(tar::EntryType::Char);
                h.set_mode(0o666);
                h.set_size(0);
                &[]
            }
        };
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

fn apply(a: &mut Applier, digest: &str, bytes: &[u8]) -> Result<(), LayerError> {
    a.apply(digest, TAR, bytes).map(drop)
}

fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

#[test]
fn layers_apply_in_order_with_whiteouts_links_and_modes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let mut a = Applier::new(&root, Limits::default());
    apply(
        &mut a,
        "sha256:base",
        &layer(&[
            E::Dir("etc/", 0o755),
            E::File("etc/motd", b"base", 0o644),
            E::File("etc/gone", b"x", 0o644),
            E::Dir("opt/", 0o755),
            E::File("opt/old", b"old", 0o644),
            E::File("bin/tool", b"#!/bin/sh\n", 0o4755),
            E::Symlink("bin/alias", "tool"),
            E::Hardlink("bin/twin", "bin/tool"),
            E::Dir("usr/lib/", 0o755),
            E::Symlink("lib", "usr/lib"),
        ]),
    )
    .unwrap();
    apply(
        &mut a,
        "sha256:top",
        &layer(&[
            E::File("etc/motd", b"top", 0o600),
            E::File("etc/.wh.gone", b"", 0o644),
            E::File("opt/.wh..wh..opq", b"", 0o644),
            E::File("opt/new", b"new", 0o644),
            // Through a symlink that stays inside: lands in usr/lib.
            E::File("lib/libx.so", b"elf", 0o755),
        ]),
    )
    .unwrap();
    assert_eq!(std::fs::read(root.join("etc/motd")).unwrap(), b"top");
    assert_eq!(
        std::fs::metadata(root.join("etc/motd"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o600
    );
    assert!(!root.join("etc/gone").exists(), "whited out");
    assert!(
        !root.join("opt/old").exists(),
        "hidden by the opaque folder"
    );
    assert!(root.join("opt/new").exists());
    assert_eq!(std::fs::read(root.join("usr/lib/libx.so")).unwrap(), b"elf");
    assert_eq!(
        std::fs::read_link(root.join("bin/alias")).unwrap(),
        Path::new("tool")
    );
    let (tool, twin) = (
        std::fs::metadata(root.join("bin/tool")).unwrap(),
        std::fs::metadata(root.join("bin/twin")).unwrap(),
    );
    assert_eq!(tool.ino(), twin.ino(), "a hard link");
    assert_eq!(tool.mode() & 0o7777, 0o4755, "set-uid kept");
    assert_eq!(tool.mtime(), 1_700_000_000);
    if rustix::process::geteuid().is_root() {
        assert_eq!((tool.uid(), tool.gid()), (1000, 1000), "owners kept");
    }
}

#[test]
fn hostile_layers_are_refused_and_nothing_is_written_outside() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            layer(&[E::File("../escape", b"x", 0o644)]),
            "a path with ..",
        ),
        (
            "absolute",
            layer(&[E::File("/escape", b"x", 0o644)]),
            "an absolute path",
        ),
        (
            "symlink out",
            layer(&[
                E::Symlink("up", "../../.."),
                E::File("up/escape", b"x", 0o644),
            ]),
            "leads out of the root",
        ),
        ("device", layer(&[E::Char("dev/evil")]), "a device node"),
        (
            "hard link out",
            layer(&[E::Hardlink("passwd", "../../etc/passwd")]),
            "a hard link to a path with ..",
        ),
        (
            "too large",
            layer(&[E::File("big", &[0u8; 4096], 0o644)]),
            "passes the limit of 1024 bytes",
        ),
    ];
    for (what, bytes, says) in cases {
        let root = dir.path().join(what).join("root");
        std::fs::create_dir_all(&root).unwrap();
        let mut a = Applier::new(
            &root,
            Limits {
                layer_bytes: 1024,
                image_bytes: 1 << 20,
            },
        );
        let e = apply(&mut a, "sha256:hostile", &bytes).unwrap_err();
        assert!(e.to_string().contains(says), "{what}: {e}");
        assert!(
            e.to_string().contains("sha256:hostile"),
            "names the layer: {e}"
        );
        // Nothing outside the root: its parent holds the root alone.
        let outside = tree(&dir.path().join(what));
        assert!(
            outside
                .iter()
                .all(|p| p == "root" || p.starts_with("root/")),
            "{what}: {outside:?}"
        );
    }
    assert!(!dir.path().join("escape").exists());
}

#[test]
fn an_absolute_symlink_is_followed_inside_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let mut a = Applier::new(&root, Limits::default());
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let target = outside.to_string_lossy().into_owned();
    apply(
        &mut a,
        "sha256:abs",
        &layer(&[
            E::Symlink("link", &target),
            E::File("link/file", b"in", 0o644),
        ]),
    )
    .unwrap();
    assert!(tree(&outside).is_empty(), "the host's folder is untouched");
    let inside = root.join(target.trim_start_matches('/')).join("file");
    assert_eq!(std::fs::read(inside).unwrap(), b"in");
}
