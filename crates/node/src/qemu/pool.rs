//! The warm pool: QEMU processes started ahead of demand, each paused and
//! waiting for an incoming migration (`-incoming defer`) over the RAM file
//! of a hot image the node was lately asked to restore. A hot start that
//! finds one of its shape takes it and only sends the device state, saving
//! QEMU's own start (the dynamic linker, device creation, QMP); the pool
//! then refills in the background.
//!
//! A slot lives in `ROOT/.pool/N/` (the dot keeps it out of the folders
//! that name workspaces) and is moved into the workspace's folder when
//! taken: its sockets, logs and pid file are renamed there, which the open
//! files and listening sockets of the process do not notice.
//!
//! Only what QEMU's command line fixes for good can be pooled: a restore of
//! a hot image's RAM without a disk, CD-ROMs, bridged NICs or served ports
//! (each of those names a file, a tap or a port of one workspace).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{qemu_err, Launched, QemuDriver};
use crate::driver::{Boot, DriverError, VmSpec};

/// The folder under a driver's root holding the pool's slots.
pub(super) const DIR: &str = ".pool";

/// The per-process files a slot hands over to the workspace taking it.
const HANDED_OVER: [&str; 5] = [
    "qmp.sock",
    "agent.sock",
    "console.log",
    "qemu.log",
    "qemu.pid",
];

/// What makes two restores interchangeable: their QEMU command line with
/// the workspace's id taken out.
pub(super) type Shape = Vec<String>;

/// One waiting QEMU.
pub(super) struct Slot {
    shape: Shape,
    dir: PathBuf,
    launched: Launched,
}

impl Slot {
    /// Moves the slot's files into `dir` (the workspace's folder) and gives
    /// up its process for the driver to watch as the workspace's.
    pub(super) fn hand_over(self, dir: &Path) -> std::io::Result<Launched> {
        for f in HANDED_OVER {
            let from = self.dir.join(f);
            if from.exists() {
                std::fs::rename(&from, dir.join(f))?;
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(self.launched)
    }

    fn discard(mut self) {
        let _ = self.launched.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Readies a slot's QEMU as far as a restore can go before it knows its
/// workspace: the hot image's device state loaded, the guest run until its
/// agent answered, it took the slot's identity and ran one command (which
/// translates, under TCG, the code a restore's identity step and a first
/// job run again), then paused. The
/// workspace taking it is given its own identity after `cont`, as any
/// restored guest is.
pub(super) async fn warm_up(l: &Launched, slot: &VmSpec) -> Result<(), DriverError> {
    let qmp = &l.conn.qmp;
    let state = slot
        .restore
        .as_ref()
        .ok_or_else(|| qemu_err("a pooled restore has device state"))?;
    super::load_device_state(qmp, state).await?;
    super::wait_restored(qmp, Duration::from_secs(60)).await?;
    qmp.execute(qapi::qmp::cont {}).await.map_err(qemu_err)?;
    let agent = l
        .agent
        .as_ref()
        .ok_or_else(|| qemu_err("a pooled QEMU has its agent connected"))?;
    agent
        .ready(Duration::from_secs(30))
        .await
        .ok_or_else(|| qemu_err("the pooled guest's agent did not answer"))?;
    super::driver::give_identity(agent, slot).await?;
    // One process started and ended, so that a workspace's first job finds
    // the guest's fork, exec and exit paths (and the agent's) translated.
    match agent
        .run_untracked(vec!["true".into()], Duration::from_secs(30))
        .await
    {
        Some(crate::agent::JobEvent::Exited { code: Some(0), .. }) => {}
        other => {
            return Err(qemu_err(format!(
                "the pooled guest's warm-up command: {other:?}"
            )))
        }
    }
    qmp.execute(qapi::qmp::stop {}).await.map_err(qemu_err)?;
    Ok(())
}

impl QemuDriver {
    /// The warm pool's shape of a restore, if it can be pooled (see
    /// the module's doc): its command line with the workspace's id taken out.
    pub(super) fn pool_shape(&self, spec: &VmSpec) -> Option<Shape> {
        let poolable = self.pool.size > 0
            && spec.restore.is_some()
            && spec.restore_ram.is_some()
            && matches!(spec.boot, Boot::Kernel { .. })
            && spec.disk.is_none()
            && spec.disk_key.is_none()
            && spec.cdroms.is_empty()
            && spec.forwards.is_empty()
            && spec.account.is_none()
            && spec.nics.iter().all(|n| n.bridged.is_none());
        poolable.then(|| {
            let mut shape = self.command_line(&VmSpec {
                id: DIR.into(),
                hostname: String::new(),
                startup: None,
                ..spec.clone()
            });
            // A slot has loaded the device state already.
            shape.extend(
                spec.restore
                    .iter()
                    .map(|r| r.to_string_lossy().into_owned()),
            );
            shape
        })
    }

    /// Starts the pool's missing processes, one at a time, in the
    /// background of whatever the node does next.
    pub(super) fn refill_pool(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let _one_at_a_time = me.pool.refilling.lock().await;
            while let Some((shape, spec, dir)) = me.pool.next_missing() {
                let id = format!(
                    "{}/{}",
                    DIR,
                    dir.file_name().unwrap_or_default().to_string_lossy()
                );
                let slot = VmSpec {
                    id,
                    hostname: "pool".into(),
                    ..spec
                };
                if let Err(e) = std::fs::create_dir_all(&dir) {
                    tracing::warn!(error = %e, "warm pool: no folder for a slot");
                    return;
                }
                let defer = ["-S".to_string(), "-incoming".into(), "defer".into()];
                let t0 = Instant::now();
                let launched = match me.launch(&slot, &defer, true).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "warm pool: a QEMU did not start; the pool stays short");
                        let _ = std::fs::remove_dir_all(&dir);
                        return;
                    }
                };
                match warm_up(&launched, &slot).await {
                    Ok(()) => {
                        tracing::debug!(slot = %slot.id, took = ?t0.elapsed(), "warm pool: a QEMU waits");
                        me.pool.put(shape, dir, launched)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "warm pool: a QEMU did not warm up; the pool stays short");
                        let mut child = launched.child;
                        let _ = child.kill().await;
                        let _ = std::fs::remove_dir_all(&dir);
                        return;
                    }
                }
            }
        });
    }
}

/// The pool of one driver.
pub(super) struct WarmPool {
    /// How many processes it keeps (0: off).
    pub(super) size: usize,
    root: PathBuf,
    slots: std::sync::Mutex<Vec<Slot>>,
    /// The shapes restored lately, the latest first, with the spec of the
    /// last restore of each: what refills start.
    wanted: std::sync::Mutex<VecDeque<(Shape, VmSpec)>>,
    /// Held while a refill runs, so that refills do not overlap.
    pub(super) refilling: tokio::sync::Mutex<()>,
    next: AtomicU64,
}

impl WarmPool {
    /// A pool of `size` under `root`, after killing what a previous run of
    /// the node left in it (a pooled QEMU is no workspace to adopt).
    pub(super) fn new(root: &Path, size: usize) -> Self {
        sweep(&root.join(DIR));
        WarmPool {
            size,
            root: root.to_path_buf(),
            slots: Default::default(),
            wanted: Default::default(),
            refilling: Default::default(),
            next: AtomicU64::new(0),
        }
    }

    /// Takes a waiting process of `shape`, if one is there and alive, and
    /// notes the shape as wanted (with `spec`, for refills).
    pub(super) fn take(&self, shape: &Shape, spec: &VmSpec) -> Option<Slot> {
        if self.size == 0 {
            return None;
        }
        {
            let mut wanted = self.wanted.lock().unwrap();
            wanted.retain(|(s, _)| s != shape);
            wanted.push_front((shape.clone(), spec.clone()));
            wanted.truncate(self.size);
        }
        let mut slots = self.slots.lock().unwrap();
        while let Some(i) = slots.iter().position(|s| &s.shape == shape) {
            let mut slot = slots.swap_remove(i);
            match slot.launched.child.try_wait() {
                Ok(None) => return Some(slot),
                _ => {
                    tracing::warn!(slot = %slot.dir.display(), "a pooled QEMU had exited; discarded");
                    slot.discard();
                }
            }
        }
        None
    }

    /// What the pool should hold: the wanted shapes, the latest first, in
    /// turn until `size` (so a node asked for one shape holds `size` of it).
    fn plan(&self) -> Vec<(Shape, VmSpec)> {
        let wanted = self.wanted.lock().unwrap();
        wanted
            .iter()
            .cycle()
            .take(if wanted.is_empty() { 0 } else { self.size })
            .cloned()
            .collect()
    }

    /// The next slot to start, after discarding the slots the plan no
    /// longer has room for (and those whose hot image is gone). `None`
    /// when the pool is as planned.
    pub(super) fn next_missing(&self) -> Option<(Shape, VmSpec, PathBuf)> {
        let mut plan = self.plan();
        let mut slots = self.slots.lock().unwrap();
        let mut kept = Vec::new();
        for slot in slots.drain(..) {
            match plan.iter().position(|(s, _)| *s == slot.shape) {
                Some(i) => {
                    plan.remove(i);
                    kept.push(slot);
                }
                None => slot.discard(),
            }
        }
        *slots = kept;
        let (shape, spec) = plan.into_iter().find(|(_, spec)| {
            spec.restore_ram.as_deref().is_some_and(Path::exists)
                && spec.restore.as_deref().is_some_and(Path::exists)
        })?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Some((shape, spec, self.root.join(DIR).join(n.to_string())))
    }

    /// Adds a started slot.
    pub(super) fn put(&self, shape: Shape, dir: PathBuf, launched: Launched) {
        self.slots.lock().unwrap().push(Slot {
            shape,
            dir,
            launched,
        });
    }

    /// How many processes wait, and the memory they hold between them
    /// (their proportional set sizes: what they do not share).
    pub(super) fn report(&self) -> vws_model::node::WarmPool {
        let slots = self.slots.lock().unwrap();
        vws_model::node::WarmPool {
            size: self.size as u32,
            waiting: slots.len() as u32,
            memory_bytes: slots.iter().map(|s| pss(s.launched.pid)).sum(),
        }
    }

    /// Ends every waiting process and wants no more.
    pub(super) fn close(&self) {
        self.wanted.lock().unwrap().clear();
        for slot in self.slots.lock().unwrap().drain(..) {
            slot.discard();
        }
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        self.close();
    }
}

/// A process's proportional set size in bytes (0 if it cannot be read).
pub(super) fn pss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// Kills the pooled processes named by the pid files under `dir` and
/// removes their folders.
fn sweep(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let pid = std::fs::read_to_string(e.path().join("qemu.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        // Only a QEMU started for this very folder is killed: a pid file
        // outlives its process, and pids are reused.
        let ours = pid.filter(|pid| *pid > 0).filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let needle = e.path().join("qmp.sock");
                c.windows(needle.as_os_str().len())
                    .any(|w| w == needle.as_os_str().as_encoded_bytes())
            })
        });
        if let Some(pid) = ours {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid).expect("positive, checked above"),
                rustix::process::Signal::KILL,
            );
            tracing::info!(pid, "killed a pooled QEMU a previous run left");
        }
        let _ = std::fs::remove_dir_all(e.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool made where a killed node left slots kills their processes
    /// (known by their folder in the command line) and removes the folders;
    /// a process whose pid a stale file names is left alone.
    #[test]
    fn a_new_pool_sweeps_what_a_killed_node_left() {
        let root = tempfile::tempdir().unwrap();
        let (left, stale) = (
            root.path().join(DIR).join("0"),
            root.path().join(DIR).join("1"),
        );
        // A shell that stays itself (`sleep` then something else: a lone
        // last command would be exec'd in its place), its argument in its
        // command line as QEMU's socket path is in QEMU's.
        let spawn = |arg: &Path| {
            std::process::Command::new("sh")
                .args(["-c", "sleep 60; true", "sh"])
                .arg(arg)
                .spawn()
                .unwrap()
        };
        let mut qemu = spawn(&left.join("qmp.sock"));
        let mut bystander = spawn(Path::new("elsewhere"));
        for (dir, pid) in [(&left, qemu.id()), (&stale, bystander.id())] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("qemu.pid"), pid.to_string()).unwrap();
        }
        let _pool = WarmPool::new(root.path(), 1);
        let status = qemu.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        assert!(
            bystander.try_wait().unwrap().is_none(),
            "a bystander was killed"
        );
        assert!(!left.exists() && !stale.exists());
        bystander.kill().unwrap();
        bystander.wait().unwrap();
    }
}
