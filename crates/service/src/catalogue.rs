//! The image catalogue: what an image holds, read from its files at import
//! without booting or mounting it. A root filesystem is read with
//! e2fsprogs' `debugfs` (os-release, the dpkg database, or busybox's
//! applets and version); a kernel's version comes from its bzImage header.

use std::collections::BTreeMap;
use std::path::Path;

use vws_model::software::Manifest;

/// Runs `debugfs -R "cat PATH"` on an ext2/3/4 image; none if the file is
/// not there (or the image not readable).
fn cat(image: &Path, path: &str) -> Option<Vec<u8>> {
    let out = std::process::Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(image)
        .output()
        .ok()?;
    let err = String::from_utf8_lossy(&out.stderr);
    (out.status.success() && !err.contains("not found") && !out.stdout.is_empty())
        .then_some(out.stdout)
}

/// The entries of a folder of the image (names only).
fn ls(image: &Path, path: &str) -> Vec<String> {
    let Ok(out) = std::process::Command::new("debugfs")
        .arg("-R")
        .arg(format!("ls -p {path}"))
        .arg(image)
        .output()
    else {
        return Vec::new();
    };
    // `ls -p`: /inode/mode/uid/gid/name/size/ per entry.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split('/').nth(5).map(str::to_string))
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .collect()
}

fn os_release(text: &str, m: &mut Manifest) {
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').to_string();
        match k.trim() {
            "ID" => m.distribution = Some(v),
            "VERSION_ID" => m.release = Some(v),
            "PRETTY_NAME" => m.pretty_name = Some(v),
            _ => {}
        }
    }
}

/// Installed packages of a dpkg status file, and the architecture of its
/// C library (or of any package that is not `all`).
fn dpkg_status(text: &str, m: &mut Manifest) {
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(':'))
                    .map(|v| v.trim().to_string())
            })
        };
        let (Some(name), Some(version)) = (field("Package"), field("Version")) else {
            continue;
        };
        if !field("Status").is_some_and(|s| s.ends_with(" installed")) {
            continue;
        }
        if let Some(arch) = field("Architecture").filter(|a| a != "all") {
            if m.arch.is_none() || name == "libc6" {
                m.arch = Some(arch);
            }
        }
        if name == "libc6" {
            m.libc = Some(version.clone());
        }
        m.packages.insert(name, version);
    }
}

/// The version in a busybox binary's banner (`BusyBox v1.35.0`).
fn busybox_version(binary: &[u8]) -> Option<String> {
    let at = binary.windows(9).position(|w| w == b"BusyBox v")? + 9;
    let rest = &binary[at..(at + 32).min(binary.len())];
    let end = rest
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || b"._-".contains(b)))
        .unwrap_or(rest.len());
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// What a root filesystem image holds.
pub fn read_rootfs(image: &Path) -> Manifest {
    let mut m = Manifest::default();
    let release = cat(image, "/usr/lib/os-release").or_else(|| cat(image, "/etc/os-release"));
    if let Some(text) = release {
        os_release(&String::from_utf8_lossy(&text), &mut m);
    }
    if let Some(status) = cat(image, "/var/lib/dpkg/status") {
        dpkg_status(&String::from_utf8_lossy(&status), &mut m);
    } else if let Some(version) = cat(image, "/bin/busybox").and_then(|b| busybox_version(&b)) {
        // No package database: busybox's applets, at busybox's version.
        let applets: BTreeMap<String, String> = ls(image, "/bin")
            .into_iter()
            .map(|a| (a, version.clone()))
            .collect();
        m.note = Some(format!(
            "no package database: busybox {version} and its {} applets",
            applets.len()
        ));
        m.packages = applets;
        m.arch = Some("amd64".into());
    } else {
        m.note = Some("no package database".into());
    }
    m
}

/// The version of a Linux kernel image (bzImage), from its setup header.
pub fn kernel_version(kernel: &Path) -> Option<String> {
    let bytes = std::fs::read(kernel).ok()?;
    if bytes.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let offset = u16::from_le_bytes([*bytes.get(0x20e)?, *bytes.get(0x20f)?]) as usize + 0x200;
    let text = bytes.get(offset..offset + 256)?;
    let end = text.iter().position(|&b| b == 0 || b == b' ')?;
    Some(String::from_utf8_lossy(&text[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_gives_packages_libc_and_arch() {
        let mut m = Manifest::default();
        dpkg_status(
            "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9+deb12u9\n\n\
             Package: tzdata\nStatus: install ok installed\nArchitecture: all\nVersion: 2024a-0+deb12u1\n\n\
             Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1.0\n",
            &mut m,
        );
        assert_eq!(m.libc.as_deref(), Some("2.36-9+deb12u9"));
        assert_eq!(m.arch.as_deref(), Some("amd64"));
        assert_eq!(m.packages.len(), 2, "{:?}", m.packages);
        let mut o = Manifest::default();
        os_release(
            "ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
            &mut o,
        );
        assert_eq!(
            (o.distribution.as_deref(), o.release.as_deref()),
            (Some("debian"), Some("12"))
        );
        assert_eq!(
            busybox_version(b"xx BusyBox v1.35.0 (Debian 1:1.35.0-4+b3) multi-call"),
            Some("1.35.0".into())
        );
    }
}
