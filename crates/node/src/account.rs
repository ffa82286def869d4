//! The dynamic-account driver (paper §2.1–§2.2): a workspace made of a
//! Unix account leased on this host, confined by namespaces, an overlay
//! root and cgroups, at native speed. Processes are started by the node
//! through the namespace helper ([`crate::sandbox`]); no agent runs inside.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::Mutex;
use vws_model::node::{AccountRange, Forward, JobRequest, WorkspaceCredentials};
use vws_model::Category;

use crate::agent::{JobDone, JobEvent, LOG_APPENDED};
use crate::cgroup::{Cgroup, Layout, Limits};
pub use crate::driver::AccountSpec;
use crate::driver::{
    Adopted, Driver, DriverError, Io, NicSpec, VmEvent, VmSpec, VmState, CREDENTIALS_DIR,
};
use crate::sandbox::{start_time, ExecPlan, InitPlan};

/// Why this node cannot run dynamic accounts (it runs VMs either way).
#[derive(Debug, thiserror::Error)]
pub enum AccountsUnavailable {
    /// Leasing uids and building namespaces needs root.
    #[error("dynamic accounts need the node to run as root")]
    NotRoot,
    /// Workspaces could not be confined.
    #[error(transparent)]
    Cgroups(#[from] crate::cgroup::CgroupUnavailable),
    /// The uids to lease include an account of this host.
    #[error("the account range {}-{} holds an existing account ({who}, uid {uid}); choose another with --accounts", range.first, range.last)]
    RangeTaken {
        /// The range asked for.
        range: AccountRange,
        /// Where the account was found.
        who: String,
        /// Its uid.
        uid: u32,
    },
}

/// A running workspace's PID 1 and where its served ports are.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Running {
    pid: i32,
    start: u64,
    #[serde(default)]
    forwards: Vec<Forward>,
    /// Its interfaces: the bridged ones' host ends are removed at its end.
    #[serde(default)]
    nics: Vec<NicSpec>,
    /// The leased uid (absent in records of older nodes).
    #[serde(default)]
    uid: Option<u32>,
}

/// How long a stop or destroy waits for the last processes of the uid to
/// be reaped (an orphaned job helper of a node that was killed is the
/// host init's to reap), and a start for a uid's previous holder to be gone.
const UID_CLEARS_WITHIN: Duration = Duration::from_secs(10);

/// Host processes (zombies included) whose real uid is `uid`.
fn processes_of(uid: u32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    let line = s.lines().find_map(|l| l.strip_prefix("Uid:"))?;
                    line.split_whitespace().next()?.parse::<u32>().ok()
                })
                == Some(uid)
        })
        .collect()
}

/// Waits until no process of `uid` is left; returns those still there.
async fn uid_cleared(uid: u32, within: Duration) -> Vec<i32> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = processes_of(uid);
        if left.is_empty() || tokio::time::Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Name server of a user-mode network (slirp4netns's, as QEMU's).
const SLIRP_DNS: &str = "10.0.2.3";

/// Whether the workspace has a `user` NIC: outbound access through NAT.
fn outbound(spec: &VmSpec) -> bool {
    spec.nics
        .iter()
        .any(|n| n.method == vws_model::NicMethod::User)
}

/// Processes per workspace unless configured.
pub const DEFAULT_PIDS: u32 = 512;

/// The driver.
pub struct AccountDriver {
    vms: PathBuf,
    /// Where the node's bridged networking keeps its files.
    net_dir: PathBuf,
    program: PathBuf,
    layout: Layout,
    /// The uids this node leases.
    pub range: AccountRange,
    /// Processes (and threads) a workspace may have.
    pub pids: u32,
    tag: String,
    events: tokio::sync::mpsc::UnboundedSender<VmEvent>,
    jobs_done: JobDone,
    proxies: Mutex<HashMap<String, Vec<tokio::task::JoinHandle<()>>>>,
}

/// The ids of `range` that are accounts or groups of this host already: in
/// /etc/passwd and /etc/group, and through the host's name service (NSS:
/// LDAP, sssd, …) for each id of the range up to [`NSS_CHECKED`] of them.
pub fn existing_accounts(range: AccountRange) -> Vec<(String, u32)> {
    let mut found = Vec::new();
    for file in ["/etc/passwd", "/etc/group"] {
        for line in std::fs::read_to_string(file).unwrap_or_default().lines() {
            let f: Vec<&str> = line.split(':').collect();
            if let Some(id) = f.get(2).and_then(|x| x.parse::<u32>().ok()) {
                if (range.first..=range.last).contains(&id) {
                    found.push((format!("{} in {file}", f[0]), id));
                }
            }
        }
    }
    for (who, id) in name_service_accounts(range) {
        if !found.iter().any(|(_, known)| *known == id) {
            found.push((who, id));
        }
    }
    found
}

/// How many ids of a range are looked up one by one in the name service
/// (a directory answers each over the network; ranges are usually ~1000).
pub const NSS_CHECKED: u32 = 100_000;

/// The ids of `range` (its first [`NSS_CHECKED`]) that the name service
/// knows as a user or a group.
fn name_service_accounts(range: AccountRange) -> Vec<(String, u32)> {
    let last = range.last.min(range.first.saturating_add(NSS_CHECKED - 1));
    let mut found = Vec::new();
    for id in range.first..=last {
        if let Ok(Some(u)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(id)) {
            found.push((format!("user {} of the name service", u.name), id));
        } else if let Ok(Some(g)) = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(id)) {
            found.push((format!("group {} of the name service", g.name), id));
        }
    }
    found
}

impl AccountDriver {
    /// A driver for workspaces under `vms`, running `program __sandbox` as
    /// its namespace helper. Fails, saying why, where this host cannot
    /// confine workspaces or where the range holds existing accounts.
    pub fn new(
        vms: PathBuf,
        net_dir: PathBuf,
        program: PathBuf,
        range: AccountRange,
        events: tokio::sync::mpsc::UnboundedSender<VmEvent>,
        jobs_done: JobDone,
    ) -> Result<AccountDriver, AccountsUnavailable> {
        if !nix::unistd::geteuid().is_root() {
            return Err(AccountsUnavailable::NotRoot);
        }
        let layout = Layout::detect()?;
        if let Some((who, uid)) = existing_accounts(range).first() {
            return Err(AccountsUnavailable::RangeTaken {
                range,
                who: who.clone(),
                uid: *uid,
            });
        }
        let tag = {
            use sha2::Digest;
            hex::encode(&sha2::Sha256::digest(vms.to_string_lossy().as_bytes())[..4])
        };
        Ok(AccountDriver {
            vms,
            net_dir,
            program,
            layout,
            range,
            pids: DEFAULT_PIDS,
            tag,
            events,
            jobs_done,
            proxies: Mutex::new(HashMap::new()),
        })
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.vms.join(id)
    }

    /// `<node tag>-<id>`: nodes sharing a host keep to their own cgroups.
    fn cgroup(&self, id: &str) -> Cgroup {
        Cgroup::new(self.layout, &format!("{}-{id}", self.tag))
    }

    fn running(&self, id: &str) -> Option<Running> {
        running_in(&self.dir(id))
    }

    fn console_line(&self, id: &str, line: &str) {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.console(id))
        {
            let _ = writeln!(f, "[vws] {line}");
        }
    }

    /// Served ports: a loopback port of the host per served port, relayed
    /// into the workspace's network namespace.
    async fn serve_ports(&self, id: &str, pid: i32, forwards: &[Forward]) -> std::io::Result<()> {
        let mut tasks = Vec::new();
        for f in forwards {
            let listener = tokio::net::TcpListener::bind(&f.host).await?;
            let (port, netns) = (f.port, PathBuf::from(format!("/proc/{pid}/ns/net")));
            tasks.push(tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let netns = netns.clone();
                    tokio::spawn(async move {
                        let connected =
                            tokio::task::spawn_blocking(move || connect_in(&netns, port)).await;
                        if let Ok(Ok(s)) = connected {
                            if s.set_nonblocking(true).is_ok() {
                                if let Ok(mut out) = tokio::net::TcpStream::from_std(s) {
                                    let _ =
                                        tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                                }
                            }
                        }
                    });
                }
            }));
        }
        self.proxies.lock().await.insert(id.to_string(), tasks);
        Ok(())
    }

    /// Notices a workspace whose PID 1 ended without being asked.
    fn watch(&self, id: &str) {
        let (dir, cg, events) = (self.dir(id), self.cgroup(id), self.events.clone());
        let net_dir = self.net_dir.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if !dir.join("init.json").exists() {
                    return; // stopped on purpose
                }
                if running_in(&dir).is_none() {
                    let nics = recorded_in(&dir).map(|r| r.nics).unwrap_or_default();
                    let _ = std::fs::remove_file(dir.join("init.json"));
                    let _ = cg.destroy();
                    let _ =
                        tokio::task::spawn_blocking(move || crate::net::unplug(&nics, &net_dir))
                            .await;
                    let _ = events.send(VmEvent {
                        id,
                        reason: "the workspace's first process ended unexpectedly".into(),
                    });
                    return;
                }
            }
        });
    }

    /// Starts the workspace: cgroup with its limits, then the namespace
    /// helper's `init`; returns once its root is built.
    async fn launch(&self, spec: &VmSpec) -> Result<(), DriverError> {
        let a = spec.account.as_ref().ok_or_else(|| {
            DriverError::Sandbox(format!("{} is not an account workspace", spec.id))
        })?;
        if self.running(&spec.id).is_some() {
            return Err(DriverError::WrongState {
                id: spec.id.clone(),
                state: VmState::Running,
            });
        }
        // A uid is used again only when nothing of its previous holder is
        // left, not even a zombie.
        let left = uid_cleared(a.uid, UID_CLEARS_WITHIN).await;
        if !left.is_empty() {
            return Err(DriverError::Sandbox(format!(
                "uid {} still has processes of its previous holder: {left:?}",
                a.uid
            )));
        }
        let cg = self.cgroup(&spec.id);
        cg.destroy()?;
        cg.create(Limits {
            ram: spec.ram,
            cpus: spec.cpus,
            pids: self.pids,
        })?;
        let mounts = self.dir(&spec.id).join("mnt");
        let plan = InitPlan {
            image: a.image.clone(),
            upper: a.upper.clone(),
            mounts,
            uid: a.uid,
            hostname: spec.hostname.clone(),
            cgroups: cg.procs_files(),
            shm: (spec.ram / 4).max(1 << 20),
            console: self.console(&spec.id),
            resolver: outbound(spec).then(|| SLIRP_DNS.to_string()),
        };
        let mut helper = tokio::process::Command::new(&self.program)
            .arg("__sandbox")
            .arg("init")
            // Its own process group: the node's signals are not the workspace's.
            .process_group(0)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        {
            use tokio::io::AsyncWriteExt;
            let mut input = helper.stdin.take().expect("piped");
            input
                .write_all(&serde_json::to_vec(&plan).expect("plans serialize"))
                .await?;
        }
        // The helper stays, as PID 1's reaper, once it has said PID 1's pid
        // and closed its output; it ends (with an error) if it cannot.
        let (mut out, mut errors) = (Vec::new(), Vec::new());
        let (mut so, mut se) = (
            helper.stdout.take().expect("piped"),
            helper.stderr.take().expect("piped"),
        );
        let (o, e) = tokio::join!(so.read_to_end(&mut out), se.read_to_end(&mut errors));
        o?;
        e?;
        let said: Option<serde_json::Value> = serde_json::from_slice(&out).ok();
        let pid = said.as_ref().and_then(|v| v["pid"].as_i64());
        let Some(pid) = pid else {
            let _ = helper.wait().await;
            let _ = cg.destroy();
            let why = String::from_utf8_lossy(&errors).trim().to_string();
            self.console_line(&spec.id, &format!("start failed: {why}"));
            return Err(DriverError::Sandbox(why));
        };
        let pid = pid as i32;
        let running = Running {
            pid,
            start: start_time(pid).unwrap_or_default(),
            forwards: spec.forwards.clone(),
            nics: spec.nics.clone(),
            uid: Some(a.uid),
        };
        std::fs::write(
            self.dir(&spec.id).join("init.json"),
            serde_json::to_vec(&running).expect("serializes"),
        )?;
        self.console_line(
            &spec.id,
            &format!(
                "started as uid {} ({} cpus, {} RAM, {} processes)",
                a.uid,
                spec.cpus,
                vws_model::ByteSize(spec.ram).human(),
                self.pids
            ),
        );
        if outbound(spec) {
            if let Err(e) = self.connect_outbound(&spec.id, pid, &cg).await {
                let _ = self.halt(&spec.id, Duration::ZERO).await;
                return Err(e);
            }
        }
        if spec.nics.iter().any(|n| n.bridged.is_some()) {
            // The default route is the user NIC's where there is one.
            let (nics, dir, route) = (spec.nics.clone(), self.net_dir.clone(), !outbound(spec));
            let plugged =
                tokio::task::spawn_blocking(move || crate::net::plug_into(&nics, &dir, pid, route))
                    .await
                    .map_err(|e| DriverError::Sandbox(e.to_string()))
                    .and_then(|r| r.map_err(DriverError::Network));
            if let Err(e) = plugged {
                let _ = self.halt(&spec.id, Duration::ZERO).await;
                return Err(e);
            }
        }
        self.serve_ports(&spec.id, pid, &spec.forwards).await?;
        self.watch(&spec.id);
        Ok(())
    }

    /// A `user` NIC: slirp4netns (QEMU's user-mode network stack, as a
    /// process) gives the namespace `eth0`, 10.0.2.100/24 behind NAT with
    /// gateway 10.0.2.2 and name server 10.0.2.3 — what a VM's user NIC
    /// sees — and keeps the host's loopback out of reach. It joins the
    /// workspace's cgroups: pause freezes it, stop and destroy end it, and
    /// it outlives a restart of the node like PID 1 does.
    async fn connect_outbound(&self, id: &str, pid: i32, cg: &Cgroup) -> Result<(), DriverError> {
        let log = self.dir(id).join("slirp4netns.log");
        let out = std::fs::File::create(&log)?;
        let netns = format!("/proc/{pid}/ns/net");
        let mut slirp = tokio::process::Command::new("slirp4netns")
            .args(["--configure", "--mtu=65520", "--disable-host-loopback"])
            .args(["--netns-type=path", &netns, "eth0"])
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .map_err(|e| {
                DriverError::Sandbox(format!(
                    "cannot run slirp4netns for the workspace's user NIC (apt-get install slirp4netns): {e}"
                ))
            })?;
        if let Some(p) = slirp.id() {
            for f in cg.procs_files() {
                std::fs::write(f, p.to_string())?;
            }
        }
        // Ready when the namespace has its default route.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let route = format!("/proc/{pid}/net/route");
        loop {
            let table = std::fs::read_to_string(&route).unwrap_or_default();
            if table
                .lines()
                .skip(1)
                .any(|l| l.split_whitespace().nth(1) == Some("00000000"))
            {
                return Ok(());
            }
            let ended = slirp.try_wait()?;
            if ended.is_some() || tokio::time::Instant::now() > deadline {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(DriverError::Sandbox(format!(
                    "the user NIC's network (slirp4netns) did not come up: {}",
                    said.trim()
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Removes the host ends of bridged interfaces and their rules.
    async fn unplug(&self, nics: Vec<NicSpec>) {
        if nics.iter().any(|n| n.bridged.is_some()) {
            let dir = self.net_dir.clone();
            let _ = tokio::task::spawn_blocking(move || crate::net::unplug(&nics, &dir)).await;
        }
    }

    /// Pause and unpause: the freezer cgroup, for every process of it.
    async fn freeze(&self, id: &str, frozen: bool) -> Result<(), DriverError> {
        if self.running(id).is_none() {
            return Err(DriverError::NotRunning(id.into()));
        }
        let cg = self.cgroup(id);
        tokio::task::spawn_blocking(move || cg.freeze(frozen))
            .await
            .map_err(|e| DriverError::Sandbox(e.to_string()))??;
        Ok(())
    }

    /// Ends the workspace: SIGTERM to everyone, SIGKILL after `grace`; then
    /// its cgroup goes (and any process still in it).
    pub async fn halt(&self, id: &str, grace: Duration) -> Result<(), DriverError> {
        let cg = self.cgroup(id);
        let running = self.running(id);
        let recorded = recorded_in(&self.dir(id));
        // Gone first: the watcher must not take this stop for a crash.
        let _ = std::fs::remove_file(self.dir(id).join("init.json"));
        if let Some(r) = running {
            let _ = cg.freeze(false);
            let pid = nix::unistd::Pid::from_raw(r.pid);
            let alive = || start_time(r.pid) == Some(r.start);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = tokio::time::Instant::now() + grace;
            while alive() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if alive() {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            // Gone means reaped by its helper, which happens only once every
            // process of its namespace is: the cgroup (helper included) goes
            // after that, so nothing is left as an orphan or a zombie.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while alive() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if let Some(tasks) = self.proxies.lock().await.remove(id) {
            tasks.iter().for_each(|t| t.abort());
        }
        // Its other members (slirp4netns, job helpers) are ended with the
        // cgroup; each is waited for until it is reaped, whoever its parent.
        let members: Vec<(i32, Option<u64>)> =
            cg.pids().into_iter().map(|p| (p, start_time(p))).collect();
        tokio::task::spawn_blocking(move || cg.destroy())
            .await
            .map_err(|e| DriverError::Sandbox(e.to_string()))??;
        let deadline = tokio::time::Instant::now() + UID_CLEARS_WITHIN;
        while members
            .iter()
            .any(|(p, t)| t.is_some() && start_time(*p) == *t)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(r) = recorded {
            if let Some(uid) = r.uid {
                let left = uid_cleared(uid, UID_CLEARS_WITHIN).await;
                if !left.is_empty() {
                    tracing::warn!(%id, uid, ?left, "processes of the workspace's uid outlived it");
                }
            }
            self.unplug(r.nics).await;
        }
        self.console_line(id, "stopped");
        Ok(())
    }

    fn exec_plan(&self, id: &str, spec: &VmSpec) -> Result<ExecPlan, DriverError> {
        let r = self
            .running(id)
            .ok_or_else(|| DriverError::NotRunning(id.into()))?;
        let a = spec
            .account
            .as_ref()
            .ok_or_else(|| DriverError::Sandbox(format!("{id} is not an account workspace")))?;
        let cg = self.cgroup(id);
        Ok(ExecPlan {
            init: r.pid,
            init_start: r.start,
            uid: a.uid,
            cgroups: cg.procs_files(),
            oom_file: Some(cg.oom_file()),
            ram: spec.ram,
            argv: Vec::new(),
            env: Vec::new(),
            cwd: None,
            timeout: None,
            stdin: None,
            log: None,
        })
    }

    /// Starts a job; its events go to `log`, its end to the job channel.
    async fn exec_job(
        &self,
        spec: &VmSpec,
        req: vws_model::node::JobRequest,
        log: PathBuf,
    ) -> Result<(), DriverError> {
        let done = self.jobs_done.clone();
        let mut plan = self.exec_plan(&spec.id, spec)?;
        plan.argv = req.argv;
        plan.env = req.env;
        plan.cwd = req.cwd;
        plan.timeout = req.timeout;
        plan.log = Some(log.clone());
        let stdin = req.stdin.map(|s| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .unwrap_or_default()
        });
        // Read by the helper before it enters the workspace; gone with the job.
        let input = log.with_extension("stdin");
        if let Some(data) = stdin.filter(|s| !s.is_empty()) {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&input)?
                .write_all(&data)?;
            plan.stdin = Some(input.clone());
        }
        let plan_file = write_plan(&self.vms.join(&spec.id), &plan)?;
        let mut child = tokio::process::Command::new(&self.program)
            .arg("__sandbox")
            .arg("exec")
            .arg(&plan_file)
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let job = req.job.clone();
        let marker = job_marker(&log);
        std::fs::write(
            &marker,
            serde_json::json!({ "workspace": spec.id, "pid": child.id(),
                "start": child.id().and_then(|p| start_time(p as i32)) })
            .to_string(),
        )?;
        tokio::spawn(async move {
            let mut wake = child.stdout.take().expect("piped");
            let mut buf = [0u8; 256];
            while let Ok(n) = wake.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                LOG_APPENDED.notify_waiters();
            }
            let mut errors = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut errors).await;
            }
            let _ = child.wait().await;
            let _ = std::fs::remove_file(&input);
            finish_job(&job, &log, &marker, errors.trim(), &done);
        });
        Ok(())
    }

    /// Runs a program in the workspace as its account, with `stdin`;
    /// returns its standard output, or its standard error as the failure.
    async fn run_captured(
        &self,
        spec: &VmSpec,
        argv: Vec<String>,
        stdin: &[u8],
    ) -> Result<Vec<u8>, DriverError> {
        use tokio::io::AsyncWriteExt;
        let mut plan = self.exec_plan(&spec.id, spec)?;
        plan.argv = argv;
        let plan_file = write_plan(&self.vms.join(&spec.id), &plan)?;
        let mut child = tokio::process::Command::new(&self.program)
            .arg("__sandbox")
            .arg("exec")
            .arg(&plan_file)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let mut input = child.stdin.take().expect("piped");
        let data = stdin.to_vec();
        let writer = tokio::spawn(async move {
            let _ = input.write_all(&data).await;
        });
        let out = child.wait_with_output().await?;
        let _ = writer.await;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(DriverError::Sandbox(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ))
        }
    }

    /// Signals a job's process group (its pid from the `started` event).
    fn signal_group(log: &Path, signal: nix::sys::signal::Signal) -> bool {
        let pid = std::fs::read_to_string(log).ok().and_then(|text| {
            text.lines().find_map(|l| match serde_json::from_str(l) {
                Ok(JobEvent::Started { pid }) => Some(pid as i32),
                _ => None,
            })
        });
        match pid {
            Some(p) => nix::sys::signal::kill(nix::unistd::Pid::from_raw(-p), signal).is_ok(),
            None => false,
        }
    }

    /// After a restart of the node: takes over workspaces whose PID 1
    /// lives (their ports served again), cleans up those that died, and
    /// removes cgroups no deployed workspace owns. Returns those adopted.
    async fn adopt_workspaces(&self) -> Vec<String> {
        let mut adopted = Vec::new();
        let mut keep = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.vms) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                if !e.path().join("init.json").exists() {
                    continue;
                }
                keep.push(id.clone());
                match self.running(&id) {
                    Some(r) => {
                        if let Err(err) = self.serve_ports(&id, r.pid, &r.forwards).await {
                            tracing::warn!(%id, error = %err, "served ports not restored");
                        }
                        self.watch(&id);
                        self.console_line(&id, "adopted by a restarted node");
                        adopted.push(id);
                    }
                    None => {
                        if let Some(r) = recorded_in(&e.path()) {
                            self.unplug(r.nics).await;
                        }
                        let _ = std::fs::remove_file(e.path().join("init.json"));
                        self.console_line(&id, "ended while the node was down");
                        keep.pop();
                    }
                }
            }
        }
        for name in Cgroup::all(self.layout) {
            let Some(id) = name.strip_prefix(&format!("{}-", self.tag)) else {
                continue; // another node's
            };
            if !keep.iter().any(|k| k == id) {
                let cg = self.cgroup(id);
                if let Err(e) = tokio::task::spawn_blocking(move || cg.destroy()).await {
                    tracing::warn!(%name, error = %e, "could not remove a stray cgroup");
                }
            }
        }
        adopted
    }

    /// After a restart of the node: reports jobs that ended while it was
    /// down and follows those still running.
    fn adopt_jobs(&self, jobs: &Path) -> Vec<(String, String)> {
        let done = &self.jobs_done;
        let mut running = Vec::new();
        let Ok(entries) = std::fs::read_dir(jobs) else {
            return running;
        };
        for e in entries.flatten() {
            let marker = e.path();
            if marker.extension().and_then(|x| x.to_str()) != Some("account") {
                continue;
            }
            let Some(job) = marker.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
                continue;
            };
            let log = jobs.join(format!("{job}.ndjson"));
            let info: serde_json::Value = std::fs::read(&marker)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            let pid = info["pid"].as_i64().unwrap_or(0) as i32;
            let start = info["start"].as_u64();
            let workspace = info["workspace"].as_str().unwrap_or_default().to_string();
            running.push((job.clone(), workspace));
            let done = done.clone();
            tokio::spawn(async move {
                while pid > 0 && start.is_some() && start_time(pid) == start {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    LOG_APPENDED.notify_waiters();
                }
                finish_job(&job, &log, &marker, "", &done);
            });
        }
        running
    }
}

/// The PID 1 recorded in a workspace's folder, if it still lives.
fn running_in(dir: &Path) -> Option<Running> {
    recorded_in(dir).filter(|r| start_time(r.pid) == Some(r.start))
}

/// What a workspace's folder records of its PID 1, living or not.
fn recorded_in(dir: &Path) -> Option<Running> {
    serde_json::from_slice(&std::fs::read(dir.join("init.json")).ok()?).ok()
}

/// The file that says a job is a dynamic account's (and which helper runs it).
fn job_marker(log: &Path) -> PathBuf {
    log.with_extension("account")
}

/// Reports a job's end from its log (a helper that died before writing
/// one is a failure).
fn finish_job(job: &str, log: &Path, marker: &Path, errors: &str, done: &JobDone) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let last = text
        .lines()
        .filter_map(|l| serde_json::from_str::<JobEvent>(l).ok())
        .find(JobEvent::is_final);
    let ev = match last {
        Some(ev) => ev,
        None => {
            let ev = JobEvent::Failed {
                message: if errors.is_empty() {
                    "the job's helper ended without a status (the workspace stopped?)".into()
                } else {
                    errors.to_string()
                },
            };
            let mut line = serde_json::to_vec(&ev).expect("serializes");
            line.push(b'\n');
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(log) {
                let _ = f.write_all(&line);
            }
            ev
        }
    };
    LOG_APPENDED.notify_waiters();
    let _ = std::fs::remove_file(marker);
    let _ = done.send((job.to_string(), ev, crate::agent::log_output_bytes(&text)));
}

/// Connects to `port` on the loopback of the network namespace `netns`,
/// from this (blocking-pool) thread, which then returns to its own.
fn connect_in(netns: &Path, port: u16) -> std::io::Result<std::net::TcpStream> {
    use nix::sched::{setns, CloneFlags};
    let mine = std::fs::File::open("/proc/thread-self/ns/net")?;
    let theirs = std::fs::File::open(netns)?;
    setns(&theirs, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
    let s = std::net::TcpStream::connect(("127.0.0.1", port));
    // A thread of the pool must not stay in the workspace's namespace.
    setns(&mine, CloneFlags::CLONE_NEWNET).expect("returning to the node's network namespace");
    s
}

#[async_trait::async_trait]
impl Driver for AccountDriver {
    fn category(&self) -> Category {
        Category::DynamicAccount
    }

    fn leases(&self) -> Option<AccountRange> {
        Some(self.range)
    }

    async fn adopt(&self, jobs: &Path) -> Adopted {
        Adopted {
            workspaces: self.adopt_workspaces().await,
            jobs: self.adopt_jobs(jobs),
        }
    }

    /// The upper layer: the staged qcow2 disk turned into a raw ext4 image
    /// (sparse), formatted on first use.
    async fn prepare(
        &self,
        spec: &mut VmSpec,
        lease: Option<vws_model::node::AccountLease>,
        image: Option<PathBuf>,
    ) -> Result<(), DriverError> {
        let lease = lease.ok_or(DriverError::Disk(
            "a dynamic account needs a leased uid".into(),
        ))?;
        let image = image.ok_or(DriverError::Disk(
            "a dynamic account needs a filesystem image".into(),
        ))?;
        let dir = self.dir(&spec.id);
        let upper = dir.join("upper.img");
        let qcow = dir.join("disk.qcow2");
        if !qcow.exists() {
            return Err(DriverError::Disk(
                "a dynamic account needs a workspace disk (its upper layer)".into(),
            ));
        }
        vws_qemu::img::flatten(&qcow, &upper, "raw")
            .await
            .map_err(|e| DriverError::Disk(e.to_string()))?;
        std::fs::remove_file(&qcow)?;
        if vws_qemu::img::content(&upper)? != vws_qemu::img::Content::RootFs {
            let out = tokio::process::Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0", "-L", "vws-upper"])
                .arg(&upper)
                .output()
                .await?;
            if !out.status.success() {
                return Err(DriverError::Disk(format!(
                    "mkfs.ext4: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        spec.account = Some(AccountSpec {
            uid: lease.uid,
            image,
            upper,
        });
        Ok(())
    }

    async fn prepare_check_in(&self, spec: &VmSpec) -> Result<(), DriverError> {
        if let Some(acc) = &spec.account {
            vws_qemu::img::flatten(&acc.upper, &self.dir(&spec.id).join("disk.qcow2"), "qcow2")
                .await
                .map_err(|e| DriverError::Disk(e.to_string()))?;
        }
        Ok(())
    }

    async fn start(
        &self,
        spec: &VmSpec,
        credentials: Option<&WorkspaceCredentials>,
    ) -> Result<(), DriverError> {
        self.launch(spec).await?;
        if let Some(c) = credentials {
            self.install_credentials(spec, c).await?;
        }
        Ok(())
    }

    /// No agent inside: the credential is written by the account itself.
    async fn install_credentials(
        &self,
        spec: &VmSpec,
        c: &WorkspaceCredentials,
    ) -> Result<(), DriverError> {
        let dir = CREDENTIALS_DIR;
        for (name, text, mode) in crate::driver::credential_files(c) {
            let path = format!("{dir}/{name}");
            let script =
                format!("umask 077 && mkdir -p {dir} && cat > {path} && chmod {mode:o} {path}");
            self.run_captured(
                spec,
                vec!["/bin/sh".into(), "-c".into(), script],
                text.as_bytes(),
            )
            .await?;
        }
        Ok(())
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), DriverError> {
        self.halt(id, grace).await
    }

    async fn remove(&self, id: &str) -> Result<(), DriverError> {
        self.halt(id, Duration::ZERO).await
    }

    async fn pause(&self, id: &str) -> Result<(), DriverError> {
        self.freeze(id, true).await
    }

    async fn unpause(&self, id: &str) -> Result<(), DriverError> {
        self.freeze(id, false).await
    }

    async fn status(&self, id: &str) -> VmState {
        match self.running(id) {
            None => VmState::Shutdown,
            Some(_) if self.cgroup(id).frozen() => VmState::Paused,
            Some(_) => VmState::Running,
        }
    }

    fn console(&self, id: &str) -> PathBuf {
        self.dir(id).join("console.log")
    }

    /// A workspace's processes are its cgroup's.
    async fn pids(&self, id: &str) -> Vec<i32> {
        self.cgroup(id).pids()
    }

    /// The cgroup's block I/O, and its network namespace's interfaces.
    async fn io(&self, id: &str) -> Io {
        let table = self
            .running(id)
            .and_then(|r| std::fs::read_to_string(format!("/proc/{}/net/dev", r.pid)).ok())
            .unwrap_or_default();
        Io::new(self.cgroup(id).io_bytes(), &table)
    }

    async fn run_job(
        &self,
        spec: &VmSpec,
        req: JobRequest,
        log: PathBuf,
    ) -> Result<(), DriverError> {
        self.exec_job(spec, req, log).await
    }

    async fn signal_job(&self, _id: &str, _job: &str, log: &Path, signal: Signal) {
        AccountDriver::signal_group(log, signal);
    }

    /// Written by the account itself: its permissions apply.
    async fn write_file(&self, spec: &VmSpec, path: &str, data: &[u8]) -> Result<(), DriverError> {
        let argv = vec![
            "/bin/sh".into(),
            "-c".into(),
            "cat > \"$1\"".into(),
            "sh".into(),
            path.into(),
        ];
        self.run_captured(spec, argv, data).await.map(drop)
    }

    async fn read_file(&self, spec: &VmSpec, path: &str) -> Result<Vec<u8>, DriverError> {
        let argv = vec!["cat".into(), "--".into(), path.into()];
        self.run_captured(spec, argv, b"").await
    }
}

/// Writes a job's plan for the helper (`vws __sandbox exec FILE`), which
/// reads and removes it: a job's argv and environment (where users put
/// secrets) never show on a command line in the host's `ps`, and their size
/// is not bound by the kernel's per-argument limit (128 KiB).
fn write_plan(dir: &std::path::Path, plan: &ExecPlan) -> Result<PathBuf, DriverError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = dir.join("plans");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{:016x}.json", rand::random::<u64>()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?
        .write_all(&serde_json::to_vec(plan).expect("plans serialize"))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use vws_model::node::AccountRange;

    #[test]
    fn a_range_holding_an_account_of_the_host_is_refused_by_name() {
        let (events, _) = tokio::sync::mpsc::unbounded_channel();
        let (jobs, _) = tokio::sync::mpsc::unbounded_channel();
        let dir = std::env::temp_dir();
        let range = AccountRange { first: 0, last: 0 };
        let made = super::AccountDriver::new(dir.clone(), dir.clone(), dir, range, events, jobs);
        let Err(refused) = made else {
            panic!("a range holding root's uid was accepted");
        };
        if nix::unistd::geteuid().is_root() {
            assert!(
                matches!(
                    &refused,
                    super::AccountsUnavailable::RangeTaken { uid: 0, .. }
                ) || matches!(&refused, super::AccountsUnavailable::Cgroups(_)),
                "{refused}"
            );
        } else {
            assert!(
                matches!(refused, super::AccountsUnavailable::NotRoot),
                "{refused}"
            );
        }
    }

    #[test]
    fn existing_accounts_in_a_range_are_found() {
        // root (uid 0) is in every /etc/passwd.
        let found = super::existing_accounts(AccountRange { first: 0, last: 0 });
        assert!(found
            .iter()
            .any(|(who, id)| *id == 0 && who.starts_with("root in /etc/passwd")));
        let free = super::existing_accounts(AccountRange {
            first: 4_000_000_000,
            last: 4_000_000_010,
        });
        assert!(free.is_empty(), "{free:?}");
    }

    #[test]
    fn the_name_service_is_asked_too() {
        // Through NSS (getpwuid_r/getgrgid_r), whatever its sources.
        let found = super::name_service_accounts(AccountRange { first: 0, last: 0 });
        assert_eq!(found, [("user root of the name service".to_string(), 0)]);
        let t = std::time::Instant::now();
        let free = super::name_service_accounts(AccountRange {
            first: 1_000_000_000,
            last: 1_000_000_999,
        });
        assert!(free.is_empty(), "{free:?}");
        eprintln!("1000 ids looked up in {:?}", t.elapsed());
    }
}
