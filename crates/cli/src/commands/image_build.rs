//! `vws image build`: makes a root filesystem image from Debian's packages
//! (debootstrap) or from the host's static busybox, as a raw ext4 image
//! that dynamic accounts mount read-only as their root and VMs boot with
//! the vws kernel; or (`--bootable`) a cloud-style disk that boots by
//! itself: an MBR, a FAT boot partition with syslinux, the image's kernel
//! and initramfs, and the ext4 root with systemd, cloud-init,
//! openssh-server and the vws agent. Everything is made in files (mkfs -d,
//! mtools, syslinux's own installer): no loop device, no mount.

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
    /// Make a bootable cloud-style disk (Debian only).
    pub bootable: Option<Bootable>,
    /// Output image file.
    pub out: PathBuf,
}

/// What a bootable build needs besides the packages.
#[derive(Debug, Clone)]
pub struct Bootable {
    /// The static vws agent to install [default: beside vws, else PATH].
    pub agent: Option<PathBuf>,
}

/// The packages of a bootable cloud-style image, beyond minbase.
pub const BOOTABLE_PACKAGES: &[&str] = &[
    "linux-image-cloud-amd64",
    "systemd-sysv",
    "udev",
    "cloud-init",
    "openssh-server",
    "sudo",
    "ifupdown",
    "isc-dhcp-client",
    "iproute2",
    // cloud-init's locale module runs update-locale.
    "locales",
    // python3-cryptography needs a virtual package debootstrap cannot pick.
    "python3-cffi-backend",
];

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
        // debootstrap says why on stdout.
        let err = match String::from_utf8_lossy(&out.stderr) {
            e if e.trim().is_empty() => String::from_utf8_lossy(&out.stdout).into_owned(),
            e => e.into_owned(),
        };
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
            let mut include = b.include.clone();
            if b.bootable.is_some() {
                include.extend(BOOTABLE_PACKAGES.iter().map(|p| p.to_string()));
            }
            if !include.is_empty() {
                cmd.arg(format!("--include={}", include.join(",")));
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
    let tmp = b.out.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    match &b.bootable {
        None => {
            let size = vws_oci::ext4::size_for(vws_oci::ext4::tree_size(&root)?);
            ext4(&root, &tmp, size)?;
        }
        Some(boot) => {
            if matches!(b.base, Base::Busybox) {
                bail!("--bootable needs --from debian (a kernel, systemd and cloud-init)");
            }
            bootable_disk(&root, work.path(), &tmp, boot)?;
        }
    }
    std::fs::rename(&tmp, &b.out)?;
    Ok(b.out.clone())
}

fn ext4(root: &Path, file: &Path, size: u64) -> anyhow::Result<()> {
    let pb = spinner("mkfs.ext4");
    let r = vws_oci::ext4::make_sized(root, file, size);
    pb.finish_and_clear();
    r
}

/// The static agent to install: the one given, beside this vws, or on PATH.
fn agent_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("vws-agent")))
        .filter(|p| p.exists());
    let on_path = || {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("vws-agent"))
                .find(|p| p.exists())
        })
    };
    beside.or_else(on_path).context(
        "no vws-agent to install: give --agent FILE (scripts/build-minimal-image builds it, statically linked)",
    )
}

/// The image's newest kernel and its initramfs, under /boot.
fn kernel_of(root: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir(root.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    let kernel = kernels.pop().context("no kernel in the image's /boot")?;
    let version = kernel
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    let initrd = root.join(format!("boot/initrd.img-{version}"));
    anyhow::ensure!(
        initrd.exists(),
        "no initramfs for kernel {version} in /boot"
    );
    Ok((kernel, initrd))
}

/// Writes `part` into `disk` at `offset` bytes.
fn place(disk: &Path, part: &Path, offset: u64) -> anyhow::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut out = std::fs::OpenOptions::new().write(true).open(disk)?;
    out.seek(SeekFrom::Start(offset))?;
    std::io::copy(&mut std::fs::File::open(part)?, &mut out)?;
    Ok(())
}

/// The root's files that make it a cloud image under vws: the root by
/// label, cloud-init reading only NoCloud (the seed vws attaches), and the
/// vws agent as a service that also puts the metadata address on lo.
fn cloud_files(root: &Path, agent: &Path) -> anyhow::Result<()> {
    std::fs::write(
        root.join("etc/fstab"),
        "LABEL=vws-root / ext4 defaults,errors=remount-ro 0 1\n",
    )?;
    std::fs::create_dir_all(root.join("etc/cloud/cloud.cfg.d"))?;
    std::fs::write(
        root.join("etc/cloud/cloud.cfg.d/90-vws.cfg"),
        "# vws attaches a NoCloud seed (label cidata) to every disk-booted VM.\n\
         datasource_list: [ NoCloud, None ]\n\
         # The one locale every Debian has without locale-gen.\n\
         locale: C.UTF-8\n",
    )?;
    let _ = std::fs::remove_file(root.join("etc/hostname"));
    std::fs::create_dir_all(root.join("usr/local/sbin"))?;
    std::fs::copy(agent, root.join("usr/local/sbin/vws-agent"))?;
    std::fs::write(
        root.join("etc/systemd/system/vws-agent.service"),
        "[Unit]\nDescription=vws guest agent (jobs, files, instance metadata)\n\
         [Service]\nExecStartPre=-/sbin/ip addr add 169.254.169.254/32 dev lo\n\
         ExecStart=/usr/local/sbin/vws-agent\nRestart=always\nRestartSec=1\n\
         [Install]\nWantedBy=multi-user.target\n",
    )?;
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants)?;
    let link = wants.join("vws-agent.service");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("/etc/systemd/system/vws-agent.service", link)?;
    Ok(())
}

/// A disk that boots by itself: MBR (syslinux's), a FAT boot partition
/// (syslinux, the kernel, the initramfs) and the ext4 root.
fn bootable_disk(root: &Path, work: &Path, disk: &Path, b: &Bootable) -> anyhow::Result<()> {
    const MIB: u64 = 1 << 20;
    let agent = agent_binary(b.agent.as_deref())?;
    for tool in ["mkfs.vfat", "mcopy", "syslinux", "sfdisk"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("{tool} is not installed (apt-get install dosfstools mtools syslinux fdisk)");
        }
    }
    let mbr = Path::new("/usr/lib/syslinux/mbr/mbr.bin");
    anyhow::ensure!(
        mbr.exists(),
        "{} is missing (apt-get install syslinux-common)",
        mbr.display()
    );
    cloud_files(root, &agent)?;
    let (kernel, initrd) = kernel_of(root)?;

    // The boot partition: FAT, with syslinux and what it loads.
    let boot = work.join("boot.vfat");
    let boot_size =
        (std::fs::metadata(&kernel)?.len() + std::fs::metadata(&initrd)?.len() + 8 * MIB)
            .div_ceil(MIB)
            * MIB;
    std::fs::File::create(&boot)?.set_len(boot_size)?;
    run(
        Command::new("mkfs.vfat").args(["-n", "VWSBOOT"]).arg(&boot),
        "mkfs.vfat",
    )?;
    let cfg = work.join("syslinux.cfg");
    std::fs::write(
        &cfg,
        "DEFAULT vws\nPROMPT 0\nTIMEOUT 0\nLABEL vws\n  LINUX /vmlinuz\n  INITRD /initrd.img\n  \
         APPEND root=LABEL=vws-root ro console=ttyS0\n",
    )?;
    for (from, to) in [
        (&kernel, "::vmlinuz"),
        (&initrd, "::initrd.img"),
        (&cfg, "::syslinux.cfg"),
    ] {
        run(
            Command::new("mcopy").arg("-i").arg(&boot).arg(from).arg(to),
            "mcopy",
        )?;
    }
    run(
        Command::new("syslinux").arg("--install").arg(&boot),
        "syslinux --install",
    )?;

    // The root partition.
    let rootfs = work.join("root.ext4");
    let root_size = (vws_oci::ext4::tree_size(root)? * 5 / 4 + 64 * MIB).div_ceil(MIB) * MIB;
    ext4(root, &rootfs, root_size)?;

    // The disk: 1 MiB for the MBR, then both partitions.
    std::fs::File::create(disk)?.set_len(MIB + boot_size + root_size)?;
    let table = format!(
        "label: dos\nstart=2048, size={}, type=c, bootable\nstart={}, type=83\n",
        boot_size / 512,
        (MIB + boot_size) / 512
    );
    let mut sfdisk = Command::new("sfdisk");
    sfdisk
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(disk)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = sfdisk.spawn().context("sfdisk")?;
    std::io::Write::write_all(
        &mut child.stdin.take().context("sfdisk stdin")?,
        table.as_bytes(),
    )?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "sfdisk failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // syslinux's MBR code (its first 440 bytes; the table stays).
    let code = std::fs::read(mbr)?;
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(disk)?;
        f.write_all(&code[..code.len().min(440)])?;
    }
    place(disk, &boot, MIB)?;
    place(disk, &rootfs, MIB + boot_size)?;
    Ok(())
}
