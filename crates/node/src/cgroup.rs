//! Control groups for dynamic-account workspaces: the hardware description
//! enforced by the kernel (RAM, CPU share, process count) and pause by the
//! freezer. Version 1 (one hierarchy per controller, as on these machines)
//! and version 2 (one unified hierarchy) are both handled.

use std::path::{Path, PathBuf};
use std::time::Duration;

const ROOT: &str = "/sys/fs/cgroup";
/// v1 controllers a workspace is placed in.
const V1: [&str; 4] = ["memory", "cpu", "pids", "freezer"];

/// Which cgroup hierarchy the host has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One hierarchy per controller (`/sys/fs/cgroup/memory`, …).
    V1,
    /// The unified hierarchy (`/sys/fs/cgroup/cgroup.controllers`).
    V2,
}

/// Why this host's cgroups cannot confine workspaces.
#[derive(Debug, thiserror::Error)]
pub enum CgroupUnavailable {
    /// The v2 hierarchy lacks a controller workspaces need.
    #[error("cgroup v2 controller {0} is not available")]
    V2Controller(&'static str),
    /// A v1 controller is not mounted where it is looked for.
    #[error("cgroup v1 controller {0} is not mounted at /sys/fs/cgroup/{0}")]
    V1Controller(&'static str),
}

impl Layout {
    /// The host's layout, or why workspaces cannot be confined here.
    pub fn detect() -> Result<Layout, CgroupUnavailable> {
        let root = Path::new(ROOT);
        if root.join("cgroup.controllers").exists() {
            let have = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            for c in ["memory", "cpu", "pids"] {
                if !have.split_whitespace().any(|h| h == c) {
                    return Err(CgroupUnavailable::V2Controller(c));
                }
            }
            return Ok(Layout::V2);
        }
        for c in V1 {
            if !root.join(c).join("cgroup.procs").exists() {
                return Err(CgroupUnavailable::V1Controller(c));
            }
        }
        Ok(Layout::V1)
    }
}

/// What a workspace may use.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// RAM in bytes (no swap beyond it).
    pub ram: u64,
    /// CPUs' worth of time per period.
    pub cpus: u32,
    /// Processes and threads.
    pub pids: u32,
}

/// One workspace's cgroup (a directory per controller on v1).
#[derive(Clone, Debug)]
pub struct Cgroup {
    layout: Layout,
    name: String,
    /// Where the hierarchies are mounted: /sys/fs/cgroup.
    root: PathBuf,
}

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::write(path, value).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("writing {value:?} to {}: {e}", path.display()),
        )
    })
}

impl Cgroup {
    /// The cgroup named `vws/<name>` (not created).
    pub fn new(layout: Layout, name: &str) -> Cgroup {
        Cgroup {
            layout,
            name: name.to_string(),
            root: PathBuf::from(ROOT),
        }
    }

    /// The same under another mount point (tests: a scratch tree, or the
    /// host's v2 hierarchy where v1 owns the controllers).
    #[cfg(test)]
    fn under(root: &Path, layout: Layout, name: &str) -> Cgroup {
        Cgroup {
            layout,
            name: name.to_string(),
            root: root.to_path_buf(),
        }
    }

    fn dir(&self, controller: &str) -> PathBuf {
        match self.layout {
            Layout::V1 => self.root.join(controller).join("vws").join(&self.name),
            Layout::V2 => self.root.join("vws").join(&self.name),
        }
    }

    fn dirs(&self) -> Vec<PathBuf> {
        match self.layout {
            Layout::V1 => V1
                .iter()
                .map(|c| self.dir(c))
                // I/O accounting where the host has the controller.
                .chain(self.has_blkio().then(|| self.dir("blkio")))
                .collect(),
            Layout::V2 => vec![self.dir("")],
        }
    }

    fn has_blkio(&self) -> bool {
        self.root.join("blkio").join("cgroup.procs").exists()
    }

    /// Bytes its processes read from and wrote to block devices (the I/O
    /// controller's counters; zero where the host has none).
    pub fn io_bytes(&self) -> (u64, u64) {
        let (mut read, mut written) = (0, 0);
        match self.layout {
            Layout::V1 => {
                let text = std::fs::read_to_string(
                    self.dir("blkio").join("blkio.throttle.io_service_bytes"),
                )
                .unwrap_or_default();
                for l in text.lines() {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    let n = f.get(2).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                    match f.get(1) {
                        Some(&"Read") => read += n,
                        Some(&"Write") => written += n,
                        _ => {}
                    }
                }
            }
            Layout::V2 => {
                let text =
                    std::fs::read_to_string(self.dir("").join("io.stat")).unwrap_or_default();
                for field in text.split_whitespace() {
                    let n = |p: &str| field.strip_prefix(p).and_then(|v| v.parse::<u64>().ok());
                    if let Some(v) = n("rbytes=") {
                        read += v;
                    } else if let Some(v) = n("wbytes=") {
                        written += v;
                    }
                }
            }
        }
        (read, written)
    }

    /// Makes the cgroup and sets its limits.
    pub fn create(&self, l: Limits) -> std::io::Result<()> {
        if self.layout == Layout::V2 {
            // Controllers must be handed down to vws/ and to its children.
            let top = self.root.join("cgroup.subtree_control");
            if write(&top, "+memory +cpu +pids +io").is_err() {
                let _ = write(&top, "+memory +cpu +pids");
            }
            std::fs::create_dir_all(self.root.join("vws"))?;
            // With I/O accounting where the host offers the controller.
            let sub = self.root.join("vws/cgroup.subtree_control");
            if write(&sub, "+memory +cpu +pids +io").is_err() {
                write(&sub, "+memory +cpu +pids")?;
            }
        }
        for d in self.dirs() {
            std::fs::create_dir_all(&d)?;
        }
        let quota = (l.cpus.max(1) as u64) * 100_000;
        match self.layout {
            Layout::V1 => {
                let mem = self.dir("memory");
                write(&mem.join("memory.limit_in_bytes"), &l.ram.to_string())?;
                // Without swap accounting the limit alone already holds.
                if mem.join("memory.memsw.limit_in_bytes").exists() {
                    write(&mem.join("memory.memsw.limit_in_bytes"), &l.ram.to_string())?;
                }
                let cpu = self.dir("cpu");
                write(&cpu.join("cpu.cfs_period_us"), "100000")?;
                write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
                write(
                    &cpu.join("cpu.shares"),
                    &(1024 * l.cpus.max(1) as u64).to_string(),
                )?;
                write(&self.dir("pids").join("pids.max"), &l.pids.to_string())?;
            }
            Layout::V2 => {
                let d = self.dir("");
                write(&d.join("memory.max"), &l.ram.to_string())?;
                let _ = write(&d.join("memory.swap.max"), "0");
                write(&d.join("cpu.max"), &format!("{quota} 100000"))?;
                write(&d.join("pids.max"), &l.pids.to_string())?;
            }
        }
        Ok(())
    }

    /// Whether it exists.
    pub fn exists(&self) -> bool {
        self.dirs()[0].exists()
    }

    /// The `cgroup.procs` files a process writes its pid to, to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// The file whose `oom_kill` line counts processes the kernel killed
    /// for going over the RAM limit.
    pub fn oom_file(&self) -> PathBuf {
        match self.layout {
            Layout::V1 => self.dir("memory").join("memory.oom_control"),
            Layout::V2 => self.dir("").join("memory.events"),
        }
    }

    /// Every process in it (host pids).
    pub fn pids(&self) -> Vec<i32> {
        let d = match self.layout {
            Layout::V1 => self.dir("pids"),
            Layout::V2 => self.dir(""),
        };
        std::fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Freezes (`true`) or thaws every process in it.
    pub fn freeze(&self, frozen: bool) -> std::io::Result<()> {
        match self.layout {
            Layout::V1 => write(
                &self.dir("freezer").join("freezer.state"),
                if frozen { "FROZEN" } else { "THAWED" },
            )?,
            Layout::V2 => write(
                &self.dir("").join("cgroup.freeze"),
                if frozen { "1" } else { "0" },
            )?,
        }
        // The kernel freezes asynchronously: wait until it says so.
        for _ in 0..500 {
            if self.frozen() == frozen {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Err(std::io::Error::other(format!(
            "cgroup {} did not {} within a second",
            self.name,
            if frozen { "freeze" } else { "thaw" }
        )))
    }

    /// Whether it is frozen.
    pub fn frozen(&self) -> bool {
        match self.layout {
            Layout::V1 => std::fs::read_to_string(self.dir("freezer").join("freezer.state"))
                .map(|s| s.trim() == "FROZEN")
                .unwrap_or(false),
            Layout::V2 => std::fs::read_to_string(self.dir("").join("cgroup.events"))
                .map(|s| s.lines().any(|l| l.trim() == "frozen 1"))
                .unwrap_or(false),
        }
    }

    /// Kills every process in it (thawing it so that they can die) and
    /// removes it. Waits up to five seconds for the processes to go.
    pub fn destroy(&self) -> std::io::Result<()> {
        if !self.exists() {
            return Ok(());
        }
        for _ in 0..250 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = self.freeze(false);
            std::thread::sleep(Duration::from_millis(20));
        }
        for d in self.dirs() {
            match std::fs::remove_dir(&d) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("removing {}: {e}", d.display()),
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Names of the workspace cgroups present on this host.
    pub fn all(layout: Layout) -> Vec<String> {
        let parent = match layout {
            Layout::V1 => Path::new(ROOT).join("memory/vws"),
            Layout::V2 => Path::new(ROOT).join("vws"),
        };
        std::fs::read_dir(parent)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The `oom_kill N` line's N, from a v1 `memory.oom_control` or a v2
/// `memory.events`.
pub fn parse_oom_kills(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::{Cgroup, Layout, Limits};
    use std::path::Path;

    #[test]
    fn v2_limits_are_written_as_the_kernel_reads_them() {
        // A scratch tree: these machines' v2 hierarchy has no controllers.
        let root = tempfile::tempdir().unwrap();
        let cg = Cgroup::under(root.path(), Layout::V2, "n-ws-1");
        cg.create(Limits {
            ram: 128 << 20,
            cpus: 2,
            pids: 64,
        })
        .unwrap();
        let read = |f: &str| std::fs::read_to_string(root.path().join(f)).unwrap();
        assert_eq!(read("cgroup.subtree_control"), "+memory +cpu +pids +io");
        assert_eq!(read("vws/cgroup.subtree_control"), "+memory +cpu +pids +io");
        assert_eq!(read("vws/n-ws-1/memory.max"), "134217728");
        assert_eq!(read("vws/n-ws-1/memory.swap.max"), "0");
        assert_eq!(read("vws/n-ws-1/cpu.max"), "200000 100000");
        assert_eq!(read("vws/n-ws-1/pids.max"), "64");
        assert_eq!(
            cg.procs_files(),
            [root.path().join("vws/n-ws-1/cgroup.procs")]
        );
        assert_eq!(cg.oom_file(), root.path().join("vws/n-ws-1/memory.events"));
    }

    #[test]
    fn v2_freeze_thaw_and_destroy_on_the_hosts_v2_hierarchy() {
        // The kernel's own v2 hierarchy: at /sys/fs/cgroup on a v2 host, at
        // /sys/fs/cgroup/unified beside v1 (these machines). Its freezer is
        // a core feature, there without controllers.
        let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(Path::new)
            .find(|r| r.join("cgroup.controllers").exists())
            .expect(
                "no cgroup v2 hierarchy mounted (needs /sys/fs/cgroup or /sys/fs/cgroup/unified)",
            );
        let cg = Cgroup::under(root, Layout::V2, &format!("test-{}", std::process::id()));
        std::fs::create_dir_all(cg.dir("")).expect("making a v2 cgroup (needs root)");
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        std::fs::write(&cg.procs_files()[0], child.id().to_string()).unwrap();
        assert_eq!(cg.pids(), [child.id() as i32]);
        cg.freeze(true).unwrap();
        assert!(cg.frozen(), "the kernel says frozen");
        cg.freeze(false).unwrap();
        assert!(!cg.frozen());
        cg.freeze(true).unwrap();
        // Destroy thaws, kills everyone and removes it.
        cg.destroy().unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{status:?}");
        assert!(!cg.exists());
    }

    #[test]
    fn oom_kill_counts_are_read_from_v1_and_v2_files() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        let v2 = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(super::parse_oom_kills(v1), 3);
        assert_eq!(super::parse_oom_kills(v2), 2);
        assert_eq!(super::parse_oom_kills("oom_kill_disable 1\n"), 0);
    }
}
