//! `vws image build`: makes a root filesystem image from Debian's packages
//! (debootstrap) or from the host's static busybox, as a raw ext4 image
//! that dynamic accounts mount read-only as their root (and that a VM can
//! attach as a disk).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

/// What to build a root filesystem from.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Base {
    /// A Debian system by debootstrap (variant minbase) from a Debian mirror
    Debian,
    /// A tiny system: the host's busybox-static and its applets
    Busybox,
}

/// Options of a build.
#[derive(Debug, Clone)]
pub struct Build {
    /// What from.
    pub base: Base,
    /// Debian suite.
    pub suite: String,
    /// Debian mirror [default: the host's apt source].
    pub mirror: Option<String>,
    /// Extra Debian packages.
    pub include: Vec<String>,
    /// Output image file.
    pub out: PathBuf,
}

fn spinner(msg: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("a valid template"),
    );
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

/// The first Debian mirror in the host's apt sources (deb822 or one-line).
fn host_mirror() -> Option<String> {
    let mut texts = Vec::new();
    if let Ok(d) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in d.flatten() {
            if e.path()
                .extension()
                .is_some_and(|x| x == "sources" || x == "list")
            {
                texts.push(std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    texts.push(std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    texts.iter().flat_map(|t| t.lines()).find_map(|l| {
        let l = l.trim();
        let uri = l
            .strip_prefix("URIs:")
            .map(|u| u.split_whitespace().next().unwrap_or(""))
            .or_else(|| {
                l.strip_prefix("deb ")
                    .and_then(|r| r.split_whitespace().find(|w| w.contains("://")))
            })?;
        (uri.contains("debian") && !uri.contains("security")).then(|| uri.to_string())
    })
}

/// The host's busybox (busybox-static).
pub(crate) fn busybox() -> anyhow::Result<&'static str> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("busybox is not installed (apt-get install busybox-static)")
}

fn busybox_root(dir: &Path) -> anyhow::Result<()> {
    let busybox = busybox()?;
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "home", "root", "proc", "dev",
    ] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy(busybox, dir.join("bin/busybox"))?;
    let list = Command::new(busybox).arg("--list-full").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let at = dir.join(applet);
        if applet != "bin/busybox" && !at.exists() {
            let _ = std::os::unix::fs::symlink("/bin/busybox", at);
        }
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\n")?;
    std::fs::write(dir.join("etc/vws-release"), "vws-busybox\n")?;
    Ok(())
}

/// Bytes used by a tree (as `du` counts).
fn tree_size(dir: &Path) -> anyhow::Result<u64> {
    let out = Command::new("du").args(["-sb"]).arg(dir).output()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du")
}

/// Builds the image; returns its path.
pub fn build(b: &Build) -> anyhow::Result<PathBuf> {
    let parent = b
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let work = tempfile::Builder::new()
        .prefix(".vws-rootfs-")
        .tempdir_in(parent)?;
    let root = work.path().join("root");
    std::fs::create_dir_all(&root)?;
    match b.base {
        Base::Busybox => busybox_root(&root)?,
        Base::Debian => {
            if Command::new("debootstrap")
                .arg("--version")
                .output()
                .is_err()
            {
                bail!("debootstrap is not installed (apt-get install debootstrap)");
            }
            let mirror = b
                .mirror
                .clone()
                .or_else(host_mirror)
                .unwrap_or_else(|| "http://deb.debian.org/debian".into());
            let pb = spinner(&format!("debootstrap {} from {mirror}", b.suite));
            let mut cmd = Command::new("debootstrap");
            cmd.args(["--variant=minbase"]);
            if !b.include.is_empty() {
                cmd.arg(format!("--include={}", b.include.join(",")));
            }
            cmd.arg(&b.suite).arg(&root).arg(&mirror);
            let r = run(&mut cmd, "debootstrap");
            pb.finish_and_clear();
            r?;
            // Package caches are not part of a root filesystem.
            let _ = std::fs::remove_dir_all(root.join("var/cache/apt/archives"));
            std::fs::write(
                root.join("etc/vws-release"),
                format!("vws-debian {}\n", b.suite),
            )?;
        }
    }
    // Room for the tree plus ext4's own: a quarter more and 16 MiB.
    let size = (tree_size(&root)? * 5 / 4 + (16 << 20)).div_ceil(1 << 20) << 20;
    let tmp = b.out.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    std::fs::File::create(&tmp)?.set_len(size)?;
    let pb = spinner("mkfs.ext4");
    let r = run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-L", "vws-root", "-d"])
            .arg(&root)
            .arg(&tmp),
        "mkfs.ext4",
    );
    pb.finish_and_clear();
    r?;
    std::fs::rename(&tmp, &b.out)?;
    Ok(b.out.clone())
}
