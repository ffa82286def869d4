//! VMs' user-mode NAT cut off from the host's loopback. QEMU's slirp maps
//! the guest's gateway (10.0.2.2) to the host's 127.0.0.1, so without this a
//! guest reaches every service the host keeps on loopback (databases,
//! exporters, management APIs). Dynamic accounts have slirp4netns's
//! `--disable-host-loopback`; QEMU 7.2 has no such switch, so the node puts
//! every QEMU it starts in a cgroup of its own (cgroup v2) and one nftables
//! table refuses new connections from that cgroup's sockets to loopback,
//! except DNS (slirp forwards the guest's queries to the host's resolver,
//! often 127.0.0.53) and the migration and disk-mirror streams the node
//! itself opens to a target on loopback (allowed one by one while they
//! run). Replies on connections made to the VM (its served ports) are not
//! new connections and pass.
#![allow(unsafe_code)] // joining the cgroup between fork and exec

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::net::NetError;

/// The cgroup and the table of one node.
#[derive(Debug)]
pub struct LoopbackGuard {
    cgroup: PathBuf,
    table: String,
    procs: CString,
}

/// The v2 hierarchy's root: /sys/fs/cgroup on a v2 host, or
/// /sys/fs/cgroup/unified beside v1.
fn v2_root() -> Option<&'static Path> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(Path::new)
        .find(|r| r.join("cgroup.controllers").exists())
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<(), NetError> {
    let mut cmd = std::process::Command::new("nft");
    cmd.args(args);
    run_nft(cmd, args, stdin)
}

/// Loads a ruleset whose `socket cgroupv2` paths are relative to `root`:
/// nft resolves them under /sys/fs/cgroup only, so where the v2 hierarchy
/// is elsewhere (/sys/fs/cgroup/unified beside v1) nft runs in a mount
/// namespace of its own where it is bound there. The rule keeps the
/// cgroup's id, not its path.
fn nft_load(ruleset: &str, root: &Path) -> Result<(), NetError> {
    if root == Path::new("/sys/fs/cgroup") {
        return nft(&["-f", "-"], Some(ruleset));
    }
    let mut cmd = std::process::Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount --bind \"$0\" /sys/fs/cgroup && exec nft -f -",
    ])
    .arg(root);
    run_nft(cmd, &["-f", "-"], Some(ruleset))
}

fn run_nft(
    mut cmd: std::process::Command,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<(), NetError> {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(NetError::io("nft"))?;
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(text.as_bytes())
            .map_err(NetError::io("nft's ruleset"))?;
    }
    let out = child.wait_with_output().map_err(NetError::io("nft"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Command {
            command: format!("nft {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// The ruleset for a node's cgroup `name` (relative to the v2 root).
fn ruleset(table: &str, name: &str) -> String {
    format!(
        "table inet {table}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
           set allowed {{ type ipv4_addr . inet_service; }}\n\
           chain out {{\n\
             type filter hook output priority filter; policy accept;\n\
             socket cgroupv2 level 1 \"{name}\" jump qemu\n\
           }}\n\
           chain qemu {{\n\
             ct state != new accept\n\
             meta l4proto {{ tcp, udp }} th dport 53 accept\n\
             meta l4proto tcp ip daddr . tcp dport @allowed accept\n\
             meta l4proto tcp ip daddr 127.0.0.0/8 reject with tcp reset\n\
             ip daddr 127.0.0.0/8 reject\n\
             meta l4proto tcp ip6 daddr ::1 reject with tcp reset\n\
             ip6 daddr ::1 reject\n\
           }}\n\
         }}\n"
    )
}

impl LoopbackGuard {
    /// Makes (or takes over, after a restart) the cgroup `vws-qemu-TAG` and
    /// the table `inet vws_lo_TAG`. Fails, saying why, where the host has no
    /// cgroup v2 hierarchy or no nftables, or the node is not root.
    pub fn install(tag: &str) -> Result<LoopbackGuard, NetError> {
        let root = v2_root().ok_or(NetError::Config("no cgroup v2 hierarchy is mounted"))?;
        let name = format!("vws-qemu-{tag}");
        let cgroup = root.join(&name);
        std::fs::create_dir_all(&cgroup).map_err(NetError::io(format!(
            "making the cgroup {}",
            cgroup.display()
        )))?;
        let table = format!("vws_lo_{tag}");
        nft_load(&ruleset(&table, &name), root)?;
        let procs = CString::new(cgroup.join("cgroup.procs").to_string_lossy().into_owned())
            .map_err(|_| NetError::Config("the cgroup's path holds a NUL byte"))?;
        Ok(LoopbackGuard {
            cgroup,
            table,
            procs,
        })
    }

    /// The cgroup every QEMU joins.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Moves the calling process into the cgroup: for a child between fork
    /// and exec, so it uses only async-signal-safe calls on memory made
    /// before the fork.
    pub fn join_self(&self) -> std::io::Result<()> {
        // SAFETY: open, write and close on a NUL-terminated path and a
        // static buffer; no allocation, as required after fork.
        unsafe {
            let fd = libc::open(self.procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, c"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Lets the node's QEMUs connect to `addr:port` on loopback (a
    /// migration or mirror target) until the returned value is dropped.
    pub fn allow(&self, addr: Ipv4Addr, port: u16) -> Allowed<'_> {
        let element = format!("{{ {addr} . {port} }}");
        let added = addr.is_loopback()
            && nft(
                &["add", "element", "inet", &self.table, "allowed", &element],
                None,
            )
            .map_err(|e| tracing::warn!(error = %e, "a loopback migration target not allowed"))
            .is_ok();
        Allowed {
            guard: self,
            element: added.then_some(element),
        }
    }
}

/// An allowance of [`LoopbackGuard::allow`], withdrawn when dropped.
pub struct Allowed<'a> {
    guard: &'a LoopbackGuard,
    element: Option<String>,
}

impl Drop for Allowed<'_> {
    fn drop(&mut self) {
        if let Some(e) = &self.element {
            let _ = nft(
                &["delete", "element", "inet", &self.guard.table, "allowed", e],
                None,
            );
        }
    }
}

/// The `host:port` of a `tcp:HOST:PORT` or `nbd://HOST:PORT/…` URI, when
/// the host is an IPv4 address.
pub fn target_of(uri: &str) -> Option<(Ipv4Addr, u16)> {
    let rest = uri
        .strip_prefix("tcp:")
        .or_else(|| uri.strip_prefix("nbd://"))?;
    let addr = rest.split('/').next()?;
    let (host, port) = addr.rsplit_once(':')?;
    Some((host.parse().ok()?, port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_read_from_both_uri_forms() {
        assert_eq!(
            target_of("tcp:127.0.0.1:4444"),
            Some((Ipv4Addr::LOCALHOST, 4444))
        );
        assert_eq!(
            target_of("nbd://127.0.0.1:10809/disk0"),
            Some((Ipv4Addr::LOCALHOST, 10809))
        );
        assert_eq!(target_of("exec:cat > f"), None);
        assert_eq!(target_of("tcp:node-2:4444"), None);
    }

    #[test]
    fn the_ruleset_names_the_cgroup_and_keeps_dns() {
        let r = ruleset("vws_lo_x", "vws-qemu-x");
        assert!(r.contains("socket cgroupv2 level 1 \"vws-qemu-x\""), "{r}");
        assert!(r.contains("th dport 53 accept"), "{r}");
        assert!(r.contains("ct state != new accept"), "{r}");
    }
}
