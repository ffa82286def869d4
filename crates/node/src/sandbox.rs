//! The namespace helper of dynamic-account workspaces. The node runs it as
//! a separate, single-threaded process (`vws __sandbox init < PLAN`,
//! `vws __sandbox exec PLANFILE`),
//! because entering namespaces and forking are only sound before any other
//! thread exists.
//!
//! - `init` makes the workspace: new mount, PID, UTS, IPC, network and
//!   cgroup namespaces; the image mounted read-only under an overlay whose
//!   upper layer is the workspace's own size-limited disk; a minimal /dev
//!   and /proc; `pivot_root` into it; then a user namespace mapping only the
//!   leased uid/gid. Its PID 1 stays to hold the namespaces and reap.
//! - `exec` runs one job in those namespaces as the leased uid and writes
//!   its events (output, exit) to the job's log, like the guest agent does
//!   for VMs; so jobs outlive a restart of the node.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{kill, signal, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Gid, Pid, Uid};
use serde::{Deserialize, Serialize};

use crate::agent::JobEvent;

/// How `init` builds a workspace.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InitPlan {
    /// The image: a filesystem image mounted read-only as the lower layer.
    pub image: PathBuf,
    /// The workspace's disk: an ext4 image, the overlay's upper layer.
    pub upper: PathBuf,
    /// An empty folder for the mount points.
    pub mounts: PathBuf,
    /// Leased uid (= gid).
    pub uid: u32,
    /// Hostname.
    pub hostname: String,
    /// `cgroup.procs` files to join before anything else.
    pub cgroups: Vec<PathBuf>,
    /// Size of /dev/shm (charged to the workspace's memory).
    pub shm: u64,
    /// The workspace's console log: PID 1's output.
    pub console: PathBuf,
    /// The name server of its user-mode network, if it has one, for
    /// /etc/resolv.conf.
    #[serde(default)]
    pub resolver: Option<String>,
}

/// How `exec` runs a job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExecPlan {
    /// The workspace's PID 1 (host pid) whose namespaces to enter.
    pub init: i32,
    /// Its start time (clock ticks since boot), so a reused pid is refused.
    pub init_start: u64,
    /// Leased uid (= gid).
    pub uid: u32,
    /// `cgroup.procs` files to join.
    pub cgroups: Vec<PathBuf>,
    /// The memory cgroup's OOM counter, to tell a kill by the RAM limit.
    pub oom_file: Option<PathBuf>,
    /// RAM limit, for the message.
    pub ram: u64,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Working directory (default: the account's home).
    pub cwd: Option<String>,
    /// Seconds before the job is killed.
    pub timeout: Option<u64>,
    /// A file to give the job as its standard input (default /dev/null).
    #[serde(default)]
    pub stdin: Option<PathBuf>,
    /// The job's event log; without one, the job uses this process's
    /// stdin, stdout and stderr and its exit status becomes ours.
    pub log: Option<PathBuf>,
}

/// The account's home inside the workspace.
pub const HOME: &str = "/home/ws";
/// The account's name inside the workspace.
pub const USER: &str = "ws";

/// Entry point of `vws __sandbox MODE PLAN`: never returns.
pub fn main(args: &[String]) -> ! {
    // Nothing the node inherited (from whatever started `vws up`: a
    // directory, a pipe) reaches the workspace: only stdin, stdout and
    // stderr stay open.
    close_from(3, false);
    let result = match (args.first().map(String::as_str), args.get(1)) {
        // From stdin: PID 1's command line is visible inside the workspace.
        (Some("init"), None) => {
            let mut plan = String::new();
            std::io::stdin()
                .read_to_string(&mut plan)
                .map_err(err("reading the plan"))
                .and_then(|_| serde_json::from_str(&plan).map_err(err("the plan")))
                .and_then(init)
        }
        // From a file the node wrote (0600), removed once read.
        (Some("exec"), Some(file)) => std::fs::read(file)
            .map_err(err(format!("reading the plan {file}")))
            .and_then(|text| {
                let _ = std::fs::remove_file(file);
                serde_json::from_slice(&text).map_err(err("the plan"))
            })
            .and_then(exec),
        _ => Err(SandboxError::Refused(
            "usage: vws __sandbox init < PLAN | exec PLANFILE (run by the node)",
        )),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("vws sandbox: {e}");
            std::process::exit(125)
        }
    }
}

/// Closes every descriptor from `first` up (or, with `on_exec`, marks them
/// close-on-exec, so that a pipe still needed before the exec stays usable).
fn close_from(first: u32, on_exec: bool) {
    let flags = if on_exec {
        nix::libc::CLOSE_RANGE_CLOEXEC
    } else {
        0
    };
    // SAFETY: close_range(2) takes plain integers; no memory is shared.
    // Descriptors held by Rust values are not used after this (at entry
    // there are none; in the job's child only the CLOEXEC failure pipe,
    // which stays open until the exec).
    unsafe {
        nix::libc::syscall(nix::libc::SYS_close_range, first, u32::MAX, flags);
    }
}

/// Why the helper could not build or enter a workspace. It crosses to the
/// node as the helper's standard error (the node reports it as the
/// driver's failure), so each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A step failed on a system call or a file.
    #[error("{what}: {cause}")]
    Step {
        /// The step.
        what: String,
        /// Why.
        cause: Cause,
    },
    /// A program the helper ran refused.
    #[error("{command}: {stderr}")]
    Command {
        /// Its command line.
        command: String,
        /// What it said.
        stderr: String,
    },
    /// What the workspace's side said went wrong (its first process
    /// building the root, or a job's program failing to start).
    #[error("{0}")]
    Inside(String),
    /// The request cannot be done.
    #[error("{0}")]
    Refused(&'static str),
    /// A step of a larger one failed.
    #[error("{what}: {inner}")]
    During {
        /// The larger step.
        what: &'static str,
        /// How it failed.
        inner: Box<SandboxError>,
    },
}

/// Names the larger step a failure happened in.
fn during(what: &'static str) -> impl FnOnce(SandboxError) -> SandboxError {
    move |e| SandboxError::During {
        what,
        inner: Box::new(e),
    }
}

/// The failure under a [`SandboxError::Step`].
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    /// A system call.
    #[error(transparent)]
    Sys(#[from] nix::Error),
    /// A file.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A plan that does not parse.
    #[error(transparent)]
    Plan(#[from] serde_json::Error),
    /// A string with a NUL byte where the kernel takes a C string.
    #[error(transparent)]
    Nul(#[from] std::ffi::NulError),
}

/// Names the step a failure happened in.
fn err<E: Into<Cause>>(what: impl Into<String>) -> impl FnOnce(E) -> SandboxError {
    let what = what.into();
    move |e| SandboxError::Step {
        what,
        cause: e.into(),
    }
}

/// Moves this process into the workspace's cgroups ("0": the writer,
/// whatever its pid namespace calls it).
fn join_cgroups(files: &[PathBuf]) -> Result<(), SandboxError> {
    for f in files {
        std::fs::write(f, "0").map_err(err(&format!("joining {}", f.display())))?;
    }
    Ok(())
}

/// A pipe whose ends are closed on exec.
fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(err("pipe"))
}

fn init(plan: InitPlan) -> Result<i32, SandboxError> {
    // The PID namespace takes effect for the child; the others are the
    // child's own (this process keeps the host's /proc to map its ids).
    unshare(CloneFlags::CLONE_NEWPID).map_err(err("unshare pid"))?;
    let (ready_r, ready_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    // SAFETY: this process is single-threaded (the helper starts no
    // threads), so the child may do anything after fork.
    match unsafe { fork() }.map_err(err("fork"))? {
        ForkResult::Child => {
            drop(ready_r);
            drop(go_w);
            let code = match pid1(&plan, ready_w, go_r) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("vws sandbox: {e}");
                    1
                }
            };
            std::process::exit(code)
        }
        ForkResult::Parent { child } => {
            drop(ready_w);
            drop(go_r);
            // The child reports its root made and its user namespace open.
            let said = read_all(ready_r);
            if said != "userns" {
                let _ = waitpid(child, None);
                return Err(SandboxError::Inside(if said.is_empty() {
                    "the workspace's first process died while setting up".into()
                } else {
                    said
                }));
            }
            let map = format!("{0} {0} 1\n", plan.uid);
            let proc = PathBuf::from(format!("/proc/{child}"));
            std::fs::write(proc.join("uid_map"), &map).map_err(err("writing uid_map"))?;
            std::fs::write(proc.join("gid_map"), &map).map_err(err("writing gid_map"))?;
            let mut go = std::fs::File::from(go_w);
            go.write_all(b"go")
                .map_err(err("releasing the workspace"))?;
            drop(go);
            println!("{}", serde_json::json!({ "pid": child.as_raw() }));
            // This process stays as PID 1's parent and reaps it the moment
            // it ends (its namespace's processes are gone by then): nothing
            // of the workspace waits as a zombie for the host's init. The
            // node has read all it needs: our output goes.
            if let Ok(null) = std::fs::File::options().write(true).open("/dev/null") {
                let _ = std::io::stdout().flush();
                let _ = nix::unistd::dup2_stdout(&null);
                let _ = nix::unistd::dup2_stderr(&null);
            }
            loop {
                match waitpid(child, None) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    _ => return Ok(0),
                }
            }
        }
    }
}

fn read_all(fd: OwnedFd) -> String {
    let mut s = String::new();
    let _ = std::fs::File::from(fd).read_to_string(&mut s);
    s
}

fn run(program: &str, args: &[&str]) -> Result<(), SandboxError> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(err(program))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SandboxError::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// PID 1 of the workspace: builds its root, then holds the namespaces.
fn pid1(plan: &InitPlan, ready: OwnedFd, go: OwnedFd) -> Result<(), SandboxError> {
    let mut ready = std::fs::File::from(ready);
    // The node reads our parent's output to its end: PID 1 must not hold it.
    if let Ok(log) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&plan.console)
    {
        let _ = nix::unistd::dup2_stdout(&log);
        let _ = nix::unistd::dup2_stderr(&log);
    }
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(&null);
    }
    // The holder of the namespaces is never what the RAM limit kills: -1000
    // where the host grants CAP_SYS_RESOURCE; jobs raise their own score
    // (see `exec`), which needs no privilege, so they go first regardless.
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    // PID 1 joins the workspace's cgroups, and what it starts with it; its
    // parent (which reaps it) stays out.
    let made = join_cgroups(&plan.cgroups)
        .and_then(|()| {
            unshare(
                CloneFlags::CLONE_NEWNS
                    | CloneFlags::CLONE_NEWUTS
                    | CloneFlags::CLONE_NEWIPC
                    | CloneFlags::CLONE_NEWNET
                    | CloneFlags::CLONE_NEWCGROUP,
            )
            .map_err(err("unshare"))
        })
        .and_then(|()| make_root(plan));
    if let Err(e) = made {
        let _ = ready.write_all(e.to_string().as_bytes());
        return Err(e);
    }
    // The instance metadata service: its address on this namespace's lo,
    // its port bound now (port 80 needs the privilege PID 1 is about to
    // drop); served by a thread of PID 1 from the account's own file, so a
    // job can neither stop it nor reach another workspace's.
    let metadata = metadata_listener();
    unshare(CloneFlags::CLONE_NEWUSER).map_err(err("unshare user"))?;
    ready.write_all(b"userns").map_err(err("ready"))?;
    drop(ready);
    if read_all(go) != "go" {
        return Err(SandboxError::Refused("the node did not map the account"));
    }
    let id = Gid::from_raw(plan.uid);
    nix::unistd::setgroups(&[id]).map_err(err("setgroups"))?;
    nix::unistd::setresgid(id, id, id).map_err(err("setgid"))?;
    let id = Uid::from_raw(plan.uid);
    nix::unistd::setresuid(id, id, id).map_err(err("setuid"))?;
    // Jobs run as the same uid: they must not trace PID 1 or read its
    // /proc entries (its descriptors are host files).
    nix::sys::prctl::set_dumpable(false).map_err(err("dumpable"))?;
    // The kernel lets processes of its namespace send PID 1 only signals it
    // handles; the handler then takes SIGTERM only from outside (a sender
    // in an ancestor namespace has pid 0 here): the node's stop. A job's
    // `kill 1` does nothing.
    let on_term = nix::sys::signal::SigAction::new(
        SigHandler::SigAction(on_term),
        nix::sys::signal::SaFlags::SA_SIGINFO | nix::sys::signal::SaFlags::SA_RESTART,
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: the handler only reads its siginfo and stores to an atomic.
    unsafe { nix::sys::signal::sigaction(Signal::SIGTERM, &on_term) }.map_err(err("signal"))?;
    if let Some(listener) = metadata {
        let file = Path::new(crate::driver::CREDENTIALS_DIR).join(vws_guest::imds::FILE);
        std::thread::spawn(move || vws_guest::imds::serve(listener, file));
    }
    let mut term_at: Option<Instant> = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            _ => continue,
        }
        if TERM.load(std::sync::atomic::Ordering::Relaxed) {
            // A graceful stop: everyone gets SIGTERM; PID 1's exit then
            // has the kernel kill what is left.
            match term_at {
                None => {
                    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
                    term_at = Some(Instant::now());
                }
                Some(t) if t.elapsed() > Duration::from_secs(3) || alone() => return Ok(()),
                _ => {}
            }
        }
    }
}

/// 169.254.169.254:80 in the account's network namespace, if it can be had
/// (said on the console if not: the account runs without it).
fn metadata_listener() -> Option<std::net::TcpListener> {
    let addr: std::net::Ipv4Addr = vws_guest::imds::ADDRESS.parse().ok()?;
    let bound = crate::loopdev::add_loopback_address(addr)
        .and_then(|()| std::net::TcpListener::bind((addr, 80)));
    match bound {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("vws: no instance metadata service: {e}");
            None
        }
    }
}

static TERM: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_term(_: i32, info: *mut nix::libc::siginfo_t, _: *mut nix::libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let from = unsafe { info.as_ref().map(|i| i.si_pid()) };
    if from == Some(0) {
        TERM.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether PID 1 is the only process left in its namespace.
fn alone() -> bool {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .count()
                <= 1
        })
        .unwrap_or(true)
}

fn mnt(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), SandboxError> {
    mount(src, target, fstype, flags, data).map_err(err(format!(
        "mounting {} on {}",
        fstype.or(src).unwrap_or("-"),
        target.display()
    )))
}

fn make_root(plan: &InitPlan) -> Result<(), SandboxError> {
    // Nothing mounted here propagates to the host, and all of it goes
    // away with the namespace (the loop devices are released by autoclear).
    mnt(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    let lower = plan.mounts.join("lower");
    let disk = plan.mounts.join("disk");
    let root = plan.mounts.join("root");
    for d in [&lower, &disk, &root] {
        std::fs::create_dir_all(d).map_err(err("mount points"))?;
    }
    let path = |p: &Path| p.to_string_lossy().into_owned();
    // Loop devices made and mounted by the kernel's own calls (mount(8)
    // costs ~8 ms a time); the kernel releases them at unmount (autoclear).
    let image = crate::loopdev::attach(&plan.image, true)
        .map_err(err("the image cannot be put on a loop device"))?;
    let ext = mount(
        Some(&image.path),
        &lower,
        Some("ext4"),
        MsFlags::MS_RDONLY,
        None::<&str>,
    );
    drop(image);
    if ext.is_err() {
        // Not ext2/3/4 (`vws image build` makes ext4): mount(8) finds out.
        run(
            "mount",
            &["-o", "loop,ro", &path(&plan.image), &path(&lower)],
        )
        .map_err(during(
            "the image cannot be mounted (a filesystem image is needed)",
        ))?;
    }
    let upper_disk = crate::loopdev::attach(&plan.upper, false)
        .map_err(err("the workspace disk cannot be put on a loop device"))?;
    mnt(
        Some(&upper_disk.path.to_string_lossy()),
        &disk,
        Some("ext4"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None,
    )
    .map_err(during("the workspace disk cannot be mounted"))?;
    drop(upper_disk);
    let upper = disk.join("upper");
    let work = disk.join("work");
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).map_err(err("overlay folders"))?;
    }
    // Files the account made under an earlier lease become this lease's.
    own_tree(&upper, plan.uid)?;
    // Relative to the mount points' folder: the options show in the
    // workspace's /proc/self/mountinfo, and host paths need not.
    nix::unistd::chdir(&plan.mounts).map_err(err("chdir"))?;
    mnt(
        Some("overlay"),
        &root,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("lowerdir=lower,upperdir=disk/upper,workdir=disk/work"),
    )?;
    // /dev from the host's device nodes, while they are reachable. (A mount
    // through a symlink of the image lands in this namespace only.)
    let dev = root.join("dev");
    std::fs::create_dir_all(&dev).map_err(err("/dev"))?;
    mnt(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=64k"),
    )?;
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let at = dev.join(node);
        std::fs::write(&at, b"").map_err(err("/dev"))?;
        mnt(
            Some(&format!("/dev/{node}")),
            &at,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(to, dev.join(link)).map_err(err("/dev links"))?;
    }
    std::fs::create_dir_all(dev.join("shm")).map_err(err("/dev/shm"))?;
    mnt(
        Some("tmpfs"),
        &dev.join("shm"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&format!("mode=1777,size={}", plan.shm)),
    )?;
    nix::unistd::sethostname(&plan.hostname).map_err(err("sethostname"))?;
    crate::loopdev::loopback_up().map_err(err("bringing lo up"))?;
    // The overlay becomes / and the host's tree is let go of.
    nix::unistd::chdir(&root).map_err(err("chdir"))?;
    nix::unistd::pivot_root(".", ".").map_err(err("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(err("detaching the host's root"))?;
    nix::unistd::chdir("/").map_err(err("chdir /"))?;
    // Only now the files: every path below resolves inside the workspace's
    // root, so an image whose /etc/passwd or /tmp is a symlink to a host
    // path cannot turn these writes onto the host.
    let account = |p: &str| Path::new("/").join(p.trim_start_matches('/'));
    for d in ["proc", "tmp", "etc", HOME] {
        std::fs::create_dir_all(account(d)).map_err(err("root folders"))?;
    }
    let _ = nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        &account("tmp"),
        nix::sys::stat::Mode::from_bits_truncate(0o1777),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    );
    let creds = account(crate::driver::CREDENTIALS_DIR);
    std::fs::create_dir_all(&creds).map_err(err("credentials folder"))?;
    let id = Some(Uid::from_raw(plan.uid));
    for d in [account(HOME), creds] {
        nix::unistd::chown(&d, id, Some(Gid::from_raw(plan.uid))).map_err(err("chown"))?;
    }
    add_account(
        &account("etc/passwd"),
        &format!("{USER}:x:{0}:{0}:workspace:{HOME}:/bin/sh", plan.uid),
        plan.uid,
    )?;
    add_account(
        &account("etc/group"),
        &format!("{USER}:x:{}:", plan.uid),
        plan.uid,
    )?;
    if let Some(ns) = &plan.resolver {
        // Replaced, not written through: the image's may be a symlink.
        let conf = account("etc/resolv.conf");
        let _ = std::fs::remove_file(&conf);
        std::fs::write(&conf, format!("nameserver {ns}\n")).map_err(err("/etc/resolv.conf"))?;
    }
    mnt(
        Some("proc"),
        &account("proc"),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    // The host kernel's command line is not the workspace's business; the
    // mask is locked in place once the user namespace is made.
    mnt(
        Some("/dev/null"),
        &account("proc/cmdline"),
        None,
        MsFlags::MS_BIND,
        None,
    )?;
    Ok(())
}

/// Appends an account line to /etc/passwd or /etc/group unless the uid is
/// there already.
fn add_account(file: &Path, line: &str, uid: u32) -> Result<(), SandboxError> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let field = format!(":{uid}:");
    if text.lines().any(|l| l.contains(&field)) {
        return Ok(());
    }
    let mut text = text;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    std::fs::write(file, text).map_err(err(&format!("writing {}", file.display())))
}

/// Gives every file not owned by root in the upper layer to `uid`: only
/// the account (or root, copying up from the image) ever writes there.
fn own_tree(dir: &Path, uid: u32) -> Result<(), SandboxError> {
    use std::os::unix::fs::MetadataExt;
    let entries = std::fs::read_dir(dir).map_err(err(&format!("reading {}", dir.display())))?;
    for e in entries.flatten() {
        let path = e.path();
        let Ok(md) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if (md.uid() != 0 && md.uid() != uid) || (md.gid() != 0 && md.gid() != uid) {
            let to = |cur: u32| (cur != 0).then_some(uid);
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                &path,
                to(md.uid()).map(Uid::from_raw),
                to(md.gid()).map(Gid::from_raw),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(err(&format!("chown {}", path.display())))?;
        }
        if md.is_dir() {
            own_tree(&path, uid)?;
        }
    }
    Ok(())
}

/// Start time of a process in clock ticks since boot (field 22 of stat).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

fn append(log: &mut std::fs::File, ev: &JobEvent) {
    let mut line = serde_json::to_vec(ev).expect("events serialize");
    line.push(b'\n');
    let _ = log.write_all(&line);
    // A byte on stdout wakes the node's readers of the log (if it listens).
    let _ = std::io::stdout().write_all(b".");
    let _ = std::io::stdout().flush();
}

fn exec(plan: ExecPlan) -> Result<i32, SandboxError> {
    if start_time(plan.init) != Some(plan.init_start) {
        return Err(SandboxError::Refused("the workspace is not running"));
    }
    // Opened before any setns: /proc changes meaning after the mount one.
    let ns = |name: &str| {
        std::fs::File::open(format!("/proc/{}/ns/{name}", plan.init))
            .map_err(err(&format!("namespace {name}")))
    };
    let spaces: Vec<(std::fs::File, CloneFlags)> = vec![
        (ns("ipc")?, CloneFlags::CLONE_NEWIPC),
        (ns("uts")?, CloneFlags::CLONE_NEWUTS),
        (ns("net")?, CloneFlags::CLONE_NEWNET),
        (ns("pid")?, CloneFlags::CLONE_NEWPID),
        (ns("cgroup")?, CloneFlags::CLONE_NEWCGROUP),
        (ns("mnt")?, CloneFlags::CLONE_NEWNS),
    ];
    let user = ns("user")?;
    let mut log = match &plan.log {
        Some(p) => Some(
            // Made by the node before the job started; not re-created if
            // the workspace was removed meanwhile.
            std::fs::OpenOptions::new()
                .append(true)
                .open(p)
                .map_err(err("opening the job log"))?,
        ),
        None => None,
    };
    // Host paths, so opened before entering the workspace.
    let null = std::fs::File::open(plan.stdin.as_deref().unwrap_or(Path::new("/dev/null")))
        .map_err(err("the job's standard input"))?;
    join_cgroups(&plan.cgroups)?;
    // Over the RAM limit the job goes; its helper (which reports how it
    // ended) and the workspace's PID 1 are never chosen, even when what
    // fills the limit is tmpfs pages no process holds.
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    // Host files are out of reach once inside: the OOM counter is kept open.
    let mut oom = plan
        .oom_file
        .as_deref()
        .and_then(|f| std::fs::File::open(f).ok());
    let oom_before = oom.as_mut().map(read_oom);
    for (f, kind) in &spaces {
        setns(f.as_fd(), *kind).map_err(err(&format!("entering {kind:?}")))?;
    }
    // Last: after it, this process has no power outside the workspace.
    setns(user.as_fd(), CloneFlags::CLONE_NEWUSER).map_err(err("entering the user namespace"))?;
    let gid = Gid::from_raw(plan.uid);
    nix::unistd::setgroups(&[gid]).map_err(err("setgroups"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(err("setgid"))?;
    let uid = Uid::from_raw(plan.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(err("setuid"))?;
    nix::sys::prctl::set_no_new_privs().map_err(err("no_new_privs"))?;

    let argv: Vec<CString> = plan
        .argv
        .iter()
        .map(|a| CString::new(a.as_str()).map_err(err("argument")))
        .collect::<Result<_, _>>()?;
    if argv.is_empty() {
        return Err(SandboxError::Refused("a job needs a program to run"));
    }
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOME".into(), HOME.into()),
        ("USER".into(), USER.into()),
        ("LOGNAME".into(), USER.into()),
        ("SHELL".into(), "/bin/sh".into()),
    ];
    for (k, v) in &plan.env {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    let envp: Vec<CString> = env
        .iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")).map_err(err("environment")))
        .collect::<Result<_, _>>()?;
    let cwd = plan.cwd.clone().unwrap_or_else(|| HOME.into());

    let pipes = if log.is_some() {
        Some((pipe()?, pipe()?))
    } else {
        None
    };
    let (fail_r, fail_w) = pipe()?;
    // SAFETY: this process is single-threaded, so the child may do
    // anything after fork; it ends in execve or _exit.
    let child = match unsafe { fork() }.map_err(err("fork"))? {
        ForkResult::Child => {
            let _ = nix::unistd::setsid();
            // Changing uid made this process non-dumpable, and its /proc
            // files root's: dumpable again (as the exec would make it), it
            // may raise its own OOM score.
            let _ = nix::sys::prctl::set_dumpable(true);
            let _ = std::fs::write("/proc/self/oom_score_adj", "1000");
            close_from(3, true);
            if let Some(((_, out_w), (_, err_w))) = &pipes {
                let _ = nix::unistd::dup2_stdout(out_w);
                let _ = nix::unistd::dup2_stderr(err_w);
                let _ = nix::unistd::dup2_stdin(&null);
            }
            let why = match nix::unistd::chdir(cwd.as_str()) {
                Err(e) => format!("cannot enter {cwd}: {e}"),
                Ok(()) => match nix::unistd::execvpe(&argv[0], &argv, &envp) {
                    Err(e) => format!("cannot run {}: {e}", plan.argv[0]),
                    Ok(_) => unreachable!("execvpe returned"),
                },
            };
            let _ = nix::unistd::write(&fail_w, why.as_bytes());
            // SAFETY: _exit skips destructors shared with the parent.
            unsafe { nix::libc::_exit(127) }
        }
        ForkResult::Parent { child } => child,
    };
    drop(fail_w);
    let failed = read_all(fail_r);
    let Some(mut log) = log.take() else {
        // Captured mode: our stdio was the job's.
        if !failed.is_empty() {
            return Err(SandboxError::Inside(failed));
        }
        return Ok(match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, c)) => c,
            Ok(WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
            _ => 125,
        });
    };
    if !failed.is_empty() {
        let _ = waitpid(child, None);
        append(&mut log, &JobEvent::Failed { message: failed });
        return Ok(0);
    }
    append(
        &mut log,
        &JobEvent::Started {
            pid: child.as_raw() as u32,
        },
    );
    let ((out_r, out_w), (err_r, err_w)) = pipes.expect("pipes with a log");
    drop(out_w);
    drop(err_w);
    // The node may go away; its wake-up pipe must not kill us.
    // SAFETY: ignoring a signal installs no handler.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) };
    let status = pump(&mut log, child, out_r, err_r, plan.timeout);
    let (code, sig, timed_out) = status;
    let oom = match (oom_before, oom.as_mut()) {
        (Some(before), Some(f)) if sig == Some(9) => read_oom(f) > before,
        _ => false,
    };
    append(
        &mut log,
        &JobEvent::Exited {
            code,
            signal: sig,
            timed_out,
            reason: oom.then(|| {
                format!(
                    "killed by the workspace's memory limit ({})",
                    vws_model::ByteSize(plan.ram).human()
                )
            }),
        },
    );
    Ok(0)
}

/// The `oom_kill` count of an open cgroup file, read from its start.
fn read_oom(f: &mut std::fs::File) -> u64 {
    use std::io::Seek;
    let mut text = String::new();
    let _ = f.seek(std::io::SeekFrom::Start(0));
    let _ = f.read_to_string(&mut text);
    crate::cgroup::parse_oom_kills(&text)
}

/// Copies the job's output into its log until it ends (and its pipes are
/// drained or closed); returns (code, signal, timed out).
fn pump(
    log: &mut std::fs::File,
    child: Pid,
    out: OwnedFd,
    err_fd: OwnedFd,
    timeout: Option<u64>,
) -> (Option<i32>, Option<i32>, bool) {
    use base64::Engine;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let b64 = base64::engine::general_purpose::STANDARD;
    let deadline = timeout.map(|t| Instant::now() + Duration::from_secs(t));
    let mut open = [Some(out), Some(err_fd)];
    let mut timed_out = false;
    let mut ended: Option<(Option<i32>, Option<i32>)> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if ended.is_none() {
            match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, c)) => ended = Some((Some(c), None)),
                Ok(WaitStatus::Signaled(_, s, _)) => ended = Some((None, Some(s as i32))),
                _ => {}
            }
        }
        if let (Some(d), None, false) = (deadline, ended, timed_out) {
            if Instant::now() >= d {
                let _ = kill(Pid::from_raw(-child.as_raw()), Signal::SIGKILL);
                timed_out = true;
            }
        }
        if open.iter().all(Option::is_none) {
            if let Some((c, s)) = ended {
                return (c, s, timed_out);
            }
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let mut fds: Vec<PollFd> = open
            .iter()
            .flatten()
            .map(|f| PollFd::new(f.as_fd(), PollFlags::POLLIN))
            .collect();
        let wait = if ended.is_some() { 0u16 } else { 100 };
        let n = poll(&mut fds, PollTimeout::from(wait)).unwrap_or(0);
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| {
                f.revents().is_some_and(|r| {
                    r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                })
            })
            .collect();
        drop(fds);
        if n == 0 {
            if let Some((c, s)) = ended {
                // Exited and nothing more to read now: what is left belongs
                // to its background children, not to this job.
                return (c, s, timed_out);
            }
            continue;
        }
        let mut k = 0;
        for (i, slot) in open.iter_mut().enumerate() {
            let Some(fd) = slot else { continue };
            let is_ready = ready[k];
            k += 1;
            if !is_ready {
                continue;
            }
            match nix::unistd::read(fd.as_fd(), &mut buf) {
                Ok(0) | Err(_) => *slot = None,
                Ok(len) => {
                    let data = b64.encode(&buf[..len]);
                    let ev = if i == 0 {
                        JobEvent::Stdout { data }
                    } else {
                        JobEvent::Stderr { data }
                    };
                    append(log, &ev);
                }
            }
        }
    }
}
