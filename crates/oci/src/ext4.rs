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
///
/// The usage type is `default` whatever the size: left to itself, mke2fs
/// takes a filesystem under 512 MiB for `small` and gives it 1 KiB blocks,
/// four times the blocks to allocate (a 200 MiB tree went in in 0.80 s
/// instead of 0.36 s) and to read for the guest.
///
/// `mkfs.ext4 -d` recomputes metadata checksums in software at every
/// block it allocates (half its time for a 200 MiB file), so the tree goes
/// in without them and `tune2fs` turns them on once at the end; `e2fsck
/// -fyD` then gives the folders that were full the room for theirs (as
/// tune2fs asks) and checks the whole image.
pub fn make_sized(root: &Path, file: &Path, size: u64) -> anyhow::Result<()> {
    std::fs::File::create(file)?.set_len(size)?;
    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.args([
        "-q",
        "-F",
        "-m",
        "0",
        "-L",
        "vws-root",
        "-T",
        "default",
        "-O",
        "^metadata_csum",
        "-d",
    ])
    .arg(root)
    .arg(file);
    run(&mut mkfs, "mkfs.ext4", &[0])?;
    let mut tune = Command::new("tune2fs");
    run(
        tune.args(["-O", "metadata_csum"]).arg(file),
        "tune2fs",
        &[0],
    )?;
    // 1: folders were rebuilt to hold their checksums.
    let mut fsck = Command::new("e2fsck");
    run(fsck.args(["-f", "-y", "-D"]).arg(file), "e2fsck", &[0, 1])
}

/// Runs an e2fsprogs tool; an exit code outside `ok` is an error with its
/// output.
fn run(cmd: &mut Command, what: &str, ok: &[i32]) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running {what} (apt-get install e2fsprogs)"))?;
    anyhow::ensure!(
        out.status.code().is_some_and(|c| ok.contains(&c)),
        "{what} failed ({}): {} {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Makes `file` an ext4 filesystem holding `root`, sized for it.
pub fn make(root: &Path, file: &Path) -> anyhow::Result<()> {
    make_sized(root, file, size_for(tree_size(root)?))
}
