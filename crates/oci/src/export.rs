//! Layers out of root filesystem images, for a push: an ext4 image's tree
//! (read with e2fsprogs' `debugfs rdump`: no mount), the whole tree as one
//! layer, or what one tree changed over another as a layer of additions,
//! changes and whiteouts. Layers are uncompressed tar, entries sorted, so
//! the same trees make the same bytes.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

/// Dumps an ext4 image's tree into `into` (which exists), owners and
/// modes kept (as root); its `lost+found` is left out.
pub fn tree_of(image: &Path, into: &Path) -> anyhow::Result<()> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", into.display()))
        .arg(image)
        .output()
        .context("running debugfs (apt-get install e2fsprogs)")?;
    anyhow::ensure!(
        out.status.success(),
        "debugfs rdump of {}: {}",
        image.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let _ = std::fs::remove_dir_all(into.join("lost+found"));
    Ok(())
}

/// What a workspace's own run put in its filesystem and no image may
/// carry: its credentials (certificate, private key, instance metadata:
/// `vws_guest::CREDENTIALS_DIR`).
pub const WORKSPACE_ONLY: &[&str] = &["etc/vws/credentials"];

/// Every path under `root`, relative, sorted (parents before children),
/// but [`WORKSPACE_ONLY`]'s.
fn paths(root: &Path) -> anyhow::Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        for e in std::fs::read_dir(root.join(&rel))? {
            let e = e?;
            let p = rel.join(e.file_name());
            if WORKSPACE_ONLY.iter().any(|w| p == Path::new(w)) {
                continue;
            }
            if e.file_type()?.is_dir() {
                todo.push(p.clone());
            }
            out.insert(p);
        }
    }
    Ok(out)
}

fn append(b: &mut tar::Builder<Vec<u8>>, root: &Path, rel: &Path) -> anyhow::Result<()> {
    let path = root.join(rel);
    let m = std::fs::symlink_metadata(&path)?;
    let mut h = tar::Header::new_gnu();
    h.set_metadata_in_mode(&m, tar::HeaderMode::Complete);
    h.set_uid(m.uid() as u64);
    h.set_gid(m.gid() as u64);
    if m.file_type().is_symlink() {
        b.append_link(&mut h, rel, std::fs::read_link(&path)?)?;
    } else if m.is_dir() {
        h.set_size(0);
        b.append_data(&mut h, rel, std::io::empty())?;
    } else if m.is_file() {
        b.append_data(&mut h, rel, std::fs::File::open(&path)?)?;
    } else {
        anyhow::bail!(
            "{} is neither a file, a folder nor a symlink",
            rel.display()
        );
    }
    Ok(())
}

/// The whole tree as one layer.
pub fn whole_layer(root: &Path) -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    for rel in paths(root)? {
        append(&mut b, root, &rel)?;
    }
    Ok(b.into_inner()?)
}

/// Whether a path differs between the trees (type, mode, owner, content
/// or link target).
fn changed(base: &Path, new: &Path) -> anyhow::Result<bool> {
    let (a, b) = (
        std::fs::symlink_metadata(base)?,
        std::fs::symlink_metadata(new)?,
    );
    if a.file_type() != b.file_type()
        || a.mode() != b.mode()
        || (a.uid(), a.gid()) != (b.uid(), b.gid())
    {
        return Ok(true);
    }
    if a.file_type().is_symlink() {
        return Ok(std::fs::read_link(base)? != std::fs::read_link(new)?);
    }
    if a.is_file() {
        return Ok(a.size() != b.size() || std::fs::read(base)? != std::fs::read(new)?);
    }
    Ok(false)
}

/// What `new` changed over `base`, as a layer: paths added or changed,
/// and a whiteout (`.wh.NAME`) for each removed (not its children).
pub fn diff_layer(base: &Path, new: &Path) -> anyhow::Result<Vec<u8>> {
    let (before, after) = (paths(base)?, paths(new)?);
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    for rel in &after {
        if !before.contains(rel) || changed(&base.join(rel), &new.join(rel))? {
            append(&mut b, new, rel)?;
        }
    }
    for rel in before.difference(&after) {
        if rel
            .parent()
            .is_some_and(|p| !p.as_os_str().is_empty() && !after.contains(p))
        {
            continue; // its folder went, and says so
        }
        let name = format!(
            ".wh.{}",
            rel.file_name().unwrap_or_default().to_string_lossy()
        );
        let wh = rel.parent().unwrap_or(Path::new("")).join(name);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        b.append_data(&mut h, wh, std::io::empty())?;
    }
    Ok(b.into_inner()?)
}
