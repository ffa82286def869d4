//! An ext4 image of a folder, made in a file (`mkfs.ext4 -d`): no loop
//! device, no mount. Owners, modes, times, links and xattrs are the
//! folder's.

use std::path::Path;
use std::process::Command;

use anyhow::Context;

/// Bytes a tree uses (as `du -sb` counts).
pub fn tree_size(dir: &Path) -> anyhow::Result<u64> {
    let out = Command::new("du").args(["-sb"]).arg(dir).output()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du")
}

/// Room for a tree of `used` bytes plus ext4's own: a quarter more and
/// 16 MiB, in whole MiB.
pub fn size_for(used: u64) -> u64 {
    (used * 5 / 4 + (16 << 20)).div_ceil(1 << 20) << 20
}

/// Makes `file` an ext4 filesystem of `size` bytes holding `root`.
pub fn make_sized(root: &Path, file: &Path, size: u64) -> anyhow::Result<()> {
    std::fs::File::create(file)?.set_len(size)?;
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-L", "vws-root", "-d"])
        .arg(root)
        .arg(file)
        .output()
        .context("running mkfs.ext4 (apt-get install e2fsprogs)")?;
    anyhow::ensure!(
        out.status.success(),
        "mkfs.ext4 failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Makes `file` an ext4 filesystem holding `root`, sized for it.
pub fn make(root: &Path, file: &Path) -> anyhow::Result<()> {
    make_sized(root, file, size_for(tree_size(root)?))
}
