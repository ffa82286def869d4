//! The QEMU driver: one QEMU process per workspace, driven over QMP.
//!
//! QEMU runs in its own process group, so it outlives a node that is killed;
//! the node finds it again from its pidfile and QMP socket (`adopt`). One
//! owner task per VM watches the process: an exit nobody asked for is
//! reported as an event with the exit status and the console's last lines.
//! The driver seam's side of it is in `driver`.

mod driver;
mod pool;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use qapi::futures::{QapiService, QmpStreamTokio};
use tokio::io::WriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch, Mutex};

use crate::accel::Accel;
use crate::agent::{Agent, JobDone};
use crate::driver::{Boot, Driver, DriverError, MigrationMeter, VmEvent, VmSpec, VmState};

type Qmp = QapiService<QmpStreamTokio<WriteHalf<UnixStream>>>;

/// A VM's QMP connection: commands, and a task reading its replies and
/// events until QEMU closes it.
struct QmpConnection {
    qmp: Qmp,
    /// Ends when QEMU is gone (after its last event has been read).
    events: tokio::task::JoinHandle<()>,
    /// Set when QEMU reports that the guest reset itself.
    reset: Arc<AtomicBool>,
}

impl QmpConnection {
    fn follow(
        stream: qapi::futures::QapiStream<
            QmpStreamTokio<tokio::io::ReadHalf<UnixStream>>,
            QmpStreamTokio<WriteHalf<UnixStream>>,
        >,
    ) -> Self {
        use futures::StreamExt;
        let (qmp, mut events) = stream.into_parts();
        let reset = Arc::new(AtomicBool::new(false));
        let seen = reset.clone();
        let events = tokio::spawn(async move {
            // Released: the stream then ends when the commands' side is dropped.
            if events.release().is_err() {
                return;
            }
            while let Some(event) = events.next().await {
                match event {
                    Ok(qapi::qmp::Event::SHUTDOWN { data, .. })
                        if matches!(data.reason, qapi::qmp::ShutdownCause::guest_reset) =>
                    {
                        seen.store(true, Ordering::SeqCst)
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "QMP connection ended");
                        break;
                    }
                }
            }
        });
        QmpConnection { qmp, events, reset }
    }
}

/// The line the guest's init prints when it is up.
pub const READY_MARK: &str = "vws: ready";

struct Vm {
    qmp: Qmp,
    /// The guest agent's connection (made late for a migration target, whose
    /// guest must not talk before its jobs are handed over).
    agent: std::sync::RwLock<Option<Arc<Agent>>>,
    pid: u32,
    /// Set before a stop, so the exit that follows is not reported.
    expected: Arc<AtomicBool>,
    /// Becomes true when the process is gone.
    gone: watch::Receiver<bool>,
    /// Whether the guest has network interfaces to count.
    nics: bool,
    /// Set when QEMU reports that the guest reset itself.
    reset: Arc<AtomicBool>,
    /// What to boot when the guest of a restored VM (which QEMU ends on a
    /// reset: it has no kernel to boot again) resets itself.
    reboot: Option<VmSpec>,
}

impl Vm {
    fn agent(&self) -> Option<Arc<Agent>> {
        self.agent.read().ok().and_then(|a| a.clone())
    }
}

/// Drives QEMU.
pub struct QemuDriver {
    root: PathBuf,
    /// Where guest RAM files live (tmpfs where there is one).
    ram_dir: PathBuf,
    /// QEMU TLS credentials (the node's certificate, in QEMU's file names)
    /// for migration and NBD streams between nodes.
    tls_dir: Option<PathBuf>,
    accel: Accel,
    tsc_khz: Option<u64>,
    boot_timeout: Duration,
    vms: Mutex<HashMap<String, Arc<Vm>>>,
    /// VMs whose guest reset itself, between their QEMU's end and the start
    /// of the one that boots them again.
    rebooting: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Each guest's interface counters as last read, and when (a paused or
    /// busy guest is not waited for: its last figures stand).
    pub(crate) net_seen: std::sync::Mutex<HashMap<String, (std::time::Instant, u64, u64)>>,
    events: mpsc::UnboundedSender<VmEvent>,
    jobs_done: JobDone,
    /// Keeps user NICs off the host's loopback (none: not confined).
    loopback: Option<Arc<crate::loopback::LoopbackGuard>>,
    /// QEMU processes waiting for hot starts.
    pool: pool::WarmPool,
}

impl Drop for QemuDriver {
    /// Takes the RAM folder away once nothing of a VM is left in it; VMs
    /// left running (for a restarted node to adopt) keep it.
    fn drop(&mut self) {
        crate::driver::release_tmpfs_dir(&self.root);
    }
}

fn qemu_err(e: impl std::fmt::Display) -> DriverError {
    DriverError::Qemu(e.to_string())
}

/// The RFC 7919 `ffdhe2048` Diffie-Hellman group, the `dh-params.pem` of the
/// node's QEMU TLS folder (public, standard parameters).
pub const FFDHE2048_PEM: &str = "-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
";

pub use vws_model::node::mac_address;

/// The last `n` lines of a file, for error reports: terminal escapes
/// (a guest's colours and progress redraws) taken out, and each line as
/// it last stood after carriage returns.
pub fn tail(path: &Path, n: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let lines: Vec<String> = bytes
        .split(|b| *b == b'\n')
        .map(|l| {
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            let last = l.rsplit(|b| *b == b'\r').next().unwrap_or_default();
            String::from_utf8_lossy(&strip_ansi_escapes::strip(last)).into_owned()
        })
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// How long a boot may take to report ready unless configured: a whole
/// distribution's boot (systemd, cloud-init) under software emulation on
/// a loaded host takes minutes, the same boot with KVM seconds.
pub fn default_boot_timeout(accel: Accel) -> Duration {
    match accel {
        Accel::Kvm => Duration::from_secs(90),
        Accel::Tcg => Duration::from_secs(300),
    }
}

fn alive(pid: u32) -> bool {
    rustix::process::Pid::from_raw(pid as i32)
        .map(|p| rustix::process::test_kill_process(p).is_ok())
        .unwrap_or(false)
}

impl QemuDriver {
    /// A driver keeping per-VM files under `root/<id>/`; unexpected exits are
    /// sent on `events`.
    pub fn new(
        root: PathBuf,
        accel: Accel,
        events: mpsc::UnboundedSender<VmEvent>,
        jobs_done: JobDone,
    ) -> Self {
        // Guest RAM is a shared file mapping, so a snapshot can hand it over
        // without copying it through the migration stream. On tmpfs it is
        // memory like any other.
        let ram_dir = crate::driver::tmpfs_dir(&root);
        QemuDriver {
            pool: pool::WarmPool::new(&root, 0),
            root,
            ram_dir,
            tls_dir: None,
            accel,
            tsc_khz: crate::accel::tsc_khz(),
            boot_timeout: default_boot_timeout(accel),
            vms: Mutex::new(HashMap::new()),
            rebooting: Default::default(),
            net_seen: Default::default(),
            events,
            jobs_done,
            loopback: None,
        }
    }

    /// The driver of a node's VMs under `root`, with the host's
    /// accelerator, and each VM's user NICs cut off from the host's
    /// loopback where the host allows (else a warning says why not).
    pub fn for_node(
        root: PathBuf,
        events: mpsc::UnboundedSender<VmEvent>,
        jobs_done: JobDone,
    ) -> Self {
        let accel = crate::accel::detect();
        let tag = QemuDriver::host_tag(&root);
        let driver = QemuDriver::new(root, accel.0, events, jobs_done);
        match crate::loopback::LoopbackGuard::install(&tag) {
            Ok(guard) => driver.with_loopback_guard(guard),
            Err(e) => {
                tracing::warn!(
                    "VMs' user NICs can reach this host's loopback services ({e}); \
                     run the node as root on a host with cgroup v2 and nftables to cut them off"
                );
                driver
            }
        }
    }

    /// Every QEMU joins `guard`'s cgroup at start, so that its user NICs
    /// cannot reach the host's loopback (`crate::loopback`).
    pub fn with_loopback_guard(mut self, guard: crate::loopback::LoopbackGuard) -> Self {
        self.loopback = Some(Arc::new(guard));
        self
    }

    /// The tag of a node's per-host names (RAM folder, cgroup, nftables
    /// table): a digest of its VMs' folder.
    pub fn host_tag(root: &Path) -> String {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(root.to_string_lossy().as_bytes())[..6])
    }

    /// Streams between nodes (migration, disk mirror) use TLS with the
    /// credentials in `dir` (`ca-cert.pem`, `server-*.pem`, `client-*.pem`).
    pub fn with_tls(mut self, dir: PathBuf) -> Self {
        self.tls_dir = Some(dir);
        self
    }

    /// Whether streams between nodes use TLS.
    pub fn tls(&self) -> bool {
        self.tls_dir.is_some()
    }

    /// The TSC frequency the guest kernel is told (`tsc_early_khz`, which
    /// saves it a calibration at boot); none lets it calibrate. The host's,
    /// where it can be read, unless set.
    pub fn with_tsc_khz(mut self, khz: Option<u64>) -> Self {
        self.tsc_khz = khz;
        self
    }

    /// Keeps up to `size` QEMU processes started ahead of hot starts, of
    /// the shapes lately restored (0: none).
    pub fn with_warm_pool(mut self, size: usize) -> Self {
        self.pool = pool::WarmPool::new(&self.root, size);
        self
    }

    /// How long a boot may take to report ready.
    pub fn with_boot_timeout(mut self, t: Duration) -> Self {
        self.boot_timeout = t;
        self
    }

    /// The folder of one VM's files.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Where an encrypted disk's passphrase is kept while deployed: tmpfs,
    /// never the node's disk.
    pub fn key_file(&self, id: &str) -> PathBuf {
        self.ram_dir.join(format!("{id}.key"))
    }

    /// Where the node's network helpers (dnsmasq) keep their files.
    pub fn net_dir(&self) -> PathBuf {
        self.root
            .parent()
            .map(|p| p.join("net"))
            .unwrap_or_else(|| self.root.join(".net"))
    }

    /// The file holding a VM's RAM (when it is not a hot image's).
    pub fn ram_file(&self, id: &str) -> PathBuf {
        self.ram_dir.join(format!("{id}.ram"))
    }

    /// The QEMU command line for a spec (without the program name).
    pub fn command_line(&self, spec: &VmSpec) -> Vec<String> {
        self.command_line_for(spec, false)
    }

    /// The command line of a QEMU that takes an incoming migration
    /// (`incoming`) or starts as `spec` says.
    fn command_line_for(&self, spec: &VmSpec, incoming: bool) -> Vec<String> {
        let dir = self.dir(&spec.id);
        let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let mut a: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        let (machine, blk, net) = match spec.boot {
            Boot::Kernel { .. } => (
                format!(
                    "microvm,accel={},memory-backend=ram0{}",
                    self.accel.as_str(),
                    if legacy_pit(spec, incoming) {
                        ""
                    } else {
                        ",pit=off"
                    }
                ),
                "virtio-blk-device",
                "virtio-net-device",
            ),
            Boot::Disk => (
                format!("q35,accel={},memory-backend=ram0", self.accel.as_str()),
                "virtio-blk-pci",
                "virtio-net-pci",
            ),
        };
        push(&[
            "-name",
            &spec.id,
            "-machine",
            &machine,
            "-nodefaults",
            "-no-user-config",
            "-nographic",
        ]);
        // The default CPU model with ARAT (the local APIC timer keeps
        // running in deep C-states): without it Linux will not run that
        // timer one-shot (microvm has no HPET to stand in), so an idle
        // guest takes its 250 Hz tick forever. With it the guest idles
        // tickless: an idle guest cost 2.1-2.6% of a core under TCG
        // before, 0.6-0.7% after (its vCPU woken 5-8 times a second
        // instead of 254).
        push(&["-cpu", "qemu64,+arat"]);
        push(&[
            "-m",
            &format!("{}M", spec.ram >> 20),
            "-smp",
            &spec.cpus.to_string(),
        ]);
        // RAM: a hot image's, mapped private (pages shared between all its
        // workspaces through the page cache until written; QEMU 7.2 opens the
        // file read-write even so, and `readonly=on` would make guest RAM a
        // ROM), or a file of the VM's own, shared.
        let backend = match &spec.restore_ram {
            Some(ram) => format!(
                "memory-backend-file,id=ram0,size={}M,mem-path={},share=off",
                spec.ram >> 20,
                ram.display()
            ),
            None => format!(
                "memory-backend-file,id=ram0,size={}M,mem-path={},share=on",
                spec.ram >> 20,
                self.ram_file(&spec.id).display()
            ),
        };
        push(&["-object", &backend]);
        push(&[
            "-chardev",
            &format!("file,id=console,path={},append=on", p("console.log")),
            "-serial",
            "chardev:console",
        ]);
        push(&[
            "-qmp",
            &format!("unix:{},server=on,wait=off", p("qmp.sock")),
            "-pidfile",
            &p("qemu.pid"),
        ]);
        // A VM restored over a hot image's RAM is not booted: QEMU is not
        // given the kernel, whose copy it would keep in its own memory (25 of
        // a restored VM's 62 MiB of PSS with this guest), and a reset of the
        // guest ends QEMU instead, for the driver to boot it cold (`watch`).
        if spec.restore_ram.is_some() {
            push(&["-no-reboot"]);
        } else if let Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } = &spec.boot
        {
            let mut append = format!("{cmdline} vws.hostname={}", spec.hostname);
            if !cmdline.contains("console=") {
                append.push_str(" console=ttyS0");
            }
            // The guest resets itself by triple fault, which QEMU always
            // sees. microvm has neither a keyboard controller nor port
            // 0xcf9; when its ACPI reset does not take (seen once in about
            // ten restored guests), Linux falls through to jumping into the
            // firmware in software, which QEMU cannot tell from a running
            // guest: a restored VM (`-no-reboot`, no kernel to boot) then
            // sat halted in the firmware instead of being booted cold.
            if !cmdline.contains("reboot=") {
                append.push_str(" reboot=t");
            }
            if let Some(k) = self.tsc_khz {
                append.push_str(&format!(" tsc_early_khz={k}"));
            }
            // How the guest's init configures each interface.
            for (i, nic) in spec.nics.iter().enumerate() {
                match (&nic.bridged, nic.method) {
                    (Some(b), _) if b.dhcp => append.push_str(&format!(" vws.net{i}=dhcp")),
                    (Some(b), _) => append.push_str(&format!(
                        " vws.net{i}=static:{}:{}",
                        b.address,
                        b.gateway.as_deref().unwrap_or("")
                    )),
                    (None, vws_model::NicMethod::User) => {
                        append.push_str(&format!(" vws.net{i}=user"))
                    }
                    _ => append.push_str(&format!(" vws.net{i}=none")),
                }
            }
            if let Some(s) = &spec.startup {
                append.push_str(&format!(
                    " vws.startup={}",
                    base64::engine::general_purpose::STANDARD.encode(s)
                ));
            }
            push(&[
                "-kernel",
                &kernel.to_string_lossy(),
                "-initrd",
                &initrd.to_string_lossy(),
                "-append",
                &append,
            ]);
        }
        if let Some(disk) = &spec.disk {
            let mut secret = String::new();
            if let Some(key) = &spec.disk_key {
                push(&[
                    "-object",
                    &format!("secret,id=disk0-key,file={}", key.display()),
                ]);
                secret = ",encrypt.key-secret=disk0-key".into();
            }
            // A base image still being staged is read through the node's
            // NBD server, which fetches what the guest reads first (a node
            // of its own: QEMU refuses NBD options beside the file name the
            // disk's header holds); once cached, that name is the one read.
            let mut base = String::new();
            if let Some(b) = spec.disk_base.as_ref().filter(|b| !b.cached.exists()) {
                push(&[
                    "-blockdev",
                    &format!(
                        "driver={},node-name=disk0-base,read-only=on,file.driver=nbd,\
                         file.server.type=unix,file.server.path={},file.export={},\
                         file.reconnect-delay=30",
                        b.format,
                        b.socket.display(),
                        crate::on_demand::EXPORT
                    ),
                ]);
                base = ",backing=disk0-base".into();
            }
            push(&[
                "-drive",
                &format!(
                    // The node name lets a migration target export the disk over NBD.
                    "id=disk0,node-name=disk0-top,file={},format=qcow2,if=none,cache=writeback{secret}{base}",
                    disk.display()
                ),
            ]);
            push(&["-device", &format!("{blk},drive=disk0")]);
        }
        for (i, cd) in spec.cdroms.iter().enumerate() {
            push(&[
                "-drive",
                &format!(
                    "id=cd{i},file={},format=raw,if=none,readonly=on",
                    cd.display()
                ),
            ]);
            push(&["-device", &format!("{blk},drive=cd{i}")]);
        }
        // A disk that boots by itself gets its NoCloud seed (crate::seed).
        if matches!(spec.boot, Boot::Disk) {
            push(&[
                "-drive",
                &format!(
                    "id=seed,file={},format=raw,if=none,readonly=on",
                    p(crate::seed::FILE)
                ),
                "-device",
                &format!("{blk},drive=seed"),
            ]);
        }
        for (i, nic) in spec.nics.iter().enumerate() {
            if let Some(b) = &nic.bridged {
                push(&[
                    "-netdev",
                    &format!("tap,id=n{i},ifname={},script=no,downscript=no", b.tap),
                    "-device",
                    &format!("{net},netdev=n{i},mac={}", b.mac),
                ]);
            } else if nic.method == vws_model::NicMethod::User {
                let mac = mac_address(&spec.id, i);
                // Served ports reach the first user-mode NIC from the host's loopback.
                let mut netdev = format!("user,id=n{i}");
                if i == 0 {
                    for f in &spec.forwards {
                        netdev.push_str(&format!(",hostfwd={}:{}-:{}", f.protocol, f.host, f.port));
                    }
                }
                push(&[
                    "-netdev",
                    &netdev,
                    "-device",
                    &format!("{net},netdev=n{i},mac={mac}"),
                ]);
            }
        }
        // The guest agent's channel: virtio-serial (there is no vhost-vsock here).
        let serial = if matches!(spec.boot, Boot::Kernel { .. }) {
            "virtio-serial-device"
        } else {
            "virtio-serial-pci"
        };
        push(&[
            "-chardev",
            &format!(
                "socket,id=agent,path={},server=on,wait=off",
                p("agent.sock")
            ),
        ]);
        push(&[
            "-device",
            serial,
            "-device",
            &format!("virtserialport,chardev=agent,name={}", vws_guest::PORT_NAME),
        ]);
        if let Some(dir) = &self.tls_dir {
            // Both ends, so a VM can send or receive a migration over TLS.
            let dir = dir.display();
            push(&[
                "-object",
                &format!(
                    "tls-creds-x509,id=vws-tls-server,endpoint=server,dir={dir},verify-peer=on"
                ),
            ]);
            push(&[
                "-object",
                &format!("tls-creds-x509,id=vws-tls-client,endpoint=client,dir={dir}"),
            ]);
        }
        // Guests get entropy from the host, so clones never share a random seed.
        push(&["-object", "rng-random,id=rng0,filename=/dev/urandom"]);
        let rng = if matches!(spec.boot, Boot::Kernel { .. }) {
            "virtio-rng-device"
        } else {
            "virtio-rng-pci"
        };
        push(&["-device", &format!("{rng},rng=rng0")]);
        a
    }

    async fn connect(path: &Path, deadline: Instant) -> Result<QmpConnection, DriverError> {
        loop {
            match QmpStreamTokio::open_uds(path).await {
                Ok(neg) => {
                    let stream = neg.negotiate().await.map_err(qemu_err)?;
                    return Ok(QmpConnection::follow(stream));
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(qemu_err(format!("QMP socket {}: {e}", path.display())))
                }
                // QEMU opens its socket ~20 ms after exec: a fine poll keeps
                // that from becoming 30.
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }

    /// A VM, waiting for it if its guest is being booted again after a
    /// reset (a stop then stops the new boot).
    async fn vm_or_rebooting(&self, id: &str) -> Result<Arc<Vm>, DriverError> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match self.vm(id).await {
                Err(_)
                    if self.rebooting.lock().unwrap().contains(id) && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                found => return found,
            }
        }
    }

    async fn vm(&self, id: &str) -> Result<Arc<Vm>, DriverError> {
        self.vms
            .lock()
            .await
            .get(id)
            .cloned()
            .ok_or_else(|| DriverError::NotRunning(id.to_string()))
    }

    fn report_exit(&self, id: &str, expected: &AtomicBool, how: String) {
        let _ = std::fs::remove_file(self.dir(id).join("qemu.pid"));
        let _ = std::fs::remove_file(self.ram_file(id));
        if expected.load(Ordering::SeqCst) {
            return;
        }
        let console = tail(&self.dir(id).join("console.log"), 5);
        let reason = format!(
            "QEMU exited unexpectedly ({how}); last console lines: {}",
            console.replace('\n', " | ")
        );
        tracing::warn!(%id, %reason, "workspace died");
        let _ = self.events.send(VmEvent {
            id: id.to_string(),
            reason,
        });
    }

    /// Finds VMs a previous node process left running (pidfile + QMP socket)
    /// and takes them over with the jobs they ran (their logs and running
    /// markers in `jobs`); cleans up after ones that died meanwhile, whose
    /// jobs fail. Returns the ids adopted and their jobs (job, workspace).
    pub async fn adopt_vms(self: &Arc<Self>, jobs: &Path) -> (Vec<String>, Vec<(String, String)>) {
        let mut adopted = (Vec::new(), Vec::new());
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return adopted;
        };
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            // Not a workspace: the warm pool's (swept when it is made).
            if id.starts_with('.') {
                continue;
            }
            let dir = entry.path();
            let Some(pid) = std::fs::read_to_string(dir.join("qemu.pid"))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            else {
                continue;
            };
            let marked = driver::marked_jobs(jobs, &id);
            if !alive(pid) {
                tracing::warn!(%id, pid, "QEMU of a workspace died while the node was down");
                for (job, log, bytes) in marked {
                    let why = crate::agent::STOPPED_UNDER_JOB;
                    crate::agent::fail_job(&self.jobs_done, job, &log, bytes, why).await;
                }
                let expected = AtomicBool::new(false);
                self.report_exit(
                    &id,
                    &expected,
                    format!("pid {pid} gone while the node was down"),
                );
                continue;
            }
            match Self::connect(
                &dir.join("qmp.sock"),
                Instant::now() + Duration::from_secs(5),
            )
            .await
            {
                Ok(conn) => {
                    let followed: Vec<(String, String)> = marked
                        .iter()
                        .map(|(j, _, _)| (j.clone(), id.clone()))
                        .collect();
                    let agent = Agent::connect(
                        &dir.join("agent.sock"),
                        Duration::from_secs(5),
                        self.jobs_done.clone(),
                        marked,
                    )
                    .await
                    .ok();
                    let read = |file: &str| {
                        std::fs::read_to_string(dir.join(file))
                            .ok()
                            .and_then(|t| serde_json::from_str::<VmSpec>(&t).ok())
                    };
                    let nics = read("spec.json").map(|s| s.nics).unwrap_or_default();
                    let reboot = read(REBOOT_FILE);
                    self.watch(Watched {
                        id: id.clone(),
                        conn,
                        agent,
                        pid,
                        child: None,
                        nics,
                        reboot,
                    })
                    .await;
                    // A migration the killed node drove is over: the service
                    // rolls it back or finishes it by what each node holds.
                    if let Ok(vm) = self.vm(&id).await {
                        QemuDriver::abandon_migration(&vm, self.tls()).await;
                    }
                    tracing::info!(%id, pid, jobs = followed.len(), "re-adopted a running workspace");
                    adopted.0.push(id);
                    adopted.1.extend(followed);
                }
                Err(e) => tracing::warn!(%id, error = %e, "cannot re-adopt a workspace"),
            }
        }
        adopted
    }

    async fn watch(self: &Arc<Self>, w: Watched) {
        let Watched {
            id,
            conn,
            agent,
            pid,
            child,
            nics,
            reboot,
        } = w;
        let expected = Arc::new(AtomicBool::new(false));
        let (tx, rx) = watch::channel(false);
        let vm = Arc::new(Vm {
            qmp: conn.qmp,
            agent: std::sync::RwLock::new(agent),
            pid,
            expected: expected.clone(),
            gone: rx,
            nics: !nics.is_empty(),
            reset: conn.reset.clone(),
            reboot,
        });
        self.vms.lock().await.insert(id.clone(), vm.clone());
        let me = self.clone();
        let events = conn.events;
        tokio::spawn(async move {
            let how = match child {
                Some(mut child) => {
                    let how = match child.wait().await {
                        Ok(s) => s.to_string(),
                        Err(e) => format!("wait failed: {e}"),
                    };
                    // Its last events (a reset) are read before it is judged.
                    let _ = tokio::time::timeout(Duration::from_secs(1), events).await;
                    how
                }
                // Not our child: the QMP stream's end is the process's end.
                None => {
                    let _ = events.await;
                    while alive(pid) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    "exit status unknown: the process was adopted after a node restart".to_string()
                }
            };
            // Taps go before anyone hears the VM is gone, so a start that
            // follows makes fresh ones that nothing removes.
            crate::net::unplug(&nics, &me.net_dir());
            let _ = tx.send(true);
            let reboot = {
                let mut vms = me.vms.lock().await;
                vms.remove(&id);
                // Decided under the lock a stop takes its VM with.
                let reset = vm.reset.load(Ordering::SeqCst) && !expected.load(Ordering::SeqCst);
                let reboot = vm.reboot.clone().filter(|_| reset);
                if reboot.is_some() {
                    me.rebooting.lock().unwrap().insert(id.clone());
                }
                reboot
            };
            if let Ok(mut seen) = me.net_seen.lock() {
                seen.remove(&id);
            }
            match reboot {
                Some(spec) => me.boot_after_reset(spec),
                None => me.report_exit(&id, &expected, how),
            }
        });
    }

    /// The guest of a restored VM reset itself, and QEMU ended (it has no
    /// kernel to boot again): boots it cold from its own kernel, as QEMU
    /// would have. Its jobs ended with the reset, as in any reboot.
    fn boot_after_reset(self: &Arc<Self>, spec: VmSpec) {
        let me = self.clone();
        tokio::spawn(async move {
            tracing::info!(id = %spec.id, "the guest reset itself: booting it again");
            let booted = me.spawn(&spec, &[], true).await;
            me.rebooting.lock().unwrap().remove(&spec.id);
            let failed = match booted {
                Ok(()) => match me.vm(&spec.id).await {
                    Ok(vm) => match me.wait_ready(&spec.id, &vm).await {
                        // A stop that came meanwhile ended it.
                        Err(_) if vm.expected.load(Ordering::SeqCst) => None,
                        Err(e) => {
                            vm.expected.store(true, Ordering::SeqCst);
                            QemuDriver::kill(&vm).await;
                            Some(e)
                        }
                        Ok(()) => None,
                    },
                    Err(_) => None,
                },
                Err(e) => Some(e),
            };
            if let Some(e) = failed {
                let expected = AtomicBool::new(false);
                let why = format!("the guest reset itself, and booting it again failed: {e}");
                me.report_exit(&spec.id, &expected, why);
            }
        });
    }

    async fn wait_gone(vm: &Vm, within: Duration) -> bool {
        let mut gone = vm.gone.clone();
        let waited = tokio::time::timeout(within, gone.wait_for(|g| *g)).await;
        waited.is_ok()
    }

    /// Ready means the guest agent answered its handshake.
    async fn wait_ready(&self, id: &str, vm: &Vm) -> Result<(), DriverError> {
        let console = self.dir(id).join("console.log");
        let agent = vm
            .agent()
            .ok_or_else(|| qemu_err("no guest agent channel"))?;
        let mut gone = vm.gone.clone();
        tokio::select! {
            hello = agent.ready(self.boot_timeout) => {
                if hello.is_some() {
                    return Ok(());
                }
            }
            _ = gone.wait_for(|g| *g) => {
                return Err(qemu_err(format!("QEMU exited during boot; console: {}", tail(&console, 10))));
            }
        }
        Err(DriverError::BootTimeout {
            id: id.into(),
            waited: self.boot_timeout,
            console: tail(&console, 10),
        })
    }

    /// Bytes a running VM's disks were read and written (QMP's
    /// `query-blockstats`, summed over its devices); zero when it is not
    /// running.
    pub async fn block_bytes(&self, id: &str) -> (u64, u64) {
        let Ok(vm) = self.vm(id).await else {
            return (0, 0);
        };
        // One entry per device the guest sees (their backing nodes are
        // not listed without `query-nodes`).
        let stats = vm
            .qmp
            .execute(QueryBlockstats(serde_json::json!({})))
            .await
            .unwrap_or_default();
        let sum = |key: &str| {
            stats.as_array().map_or(0, |devs| {
                devs.iter()
                    .map(|d| d["stats"][key].as_u64().unwrap_or(0))
                    .sum()
            })
        };
        (sum("rd_bytes"), sum("wr_bytes"))
    }

    /// The guest agent of a running VM.
    pub async fn agent(&self, id: &str) -> Option<Arc<Agent>> {
        self.vms.lock().await.get(id).and_then(|v| v.agent())
    }

    /// Process id of a running VM.
    pub async fn pid(&self, id: &str) -> Option<u32> {
        self.vms.lock().await.get(id).map(|v| v.pid)
    }

    async fn kill(vm: &Vm) {
        if let Ok(p) = rustix::process::Pid::from_raw(vm.pid as i32).ok_or(()) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
        Self::wait_gone(vm, Duration::from_secs(5)).await;
    }
}

/// A QEMU process for [`QemuDriver::watch`] to follow.
struct Watched {
    id: String,
    conn: QmpConnection,
    agent: Option<Arc<Agent>>,
    pid: u32,
    /// The process, when this node started it (else it was adopted).
    child: Option<tokio::process::Child>,
    nics: Vec<crate::driver::NicSpec>,
    /// What a reset of its guest boots (a restored VM's own spec, cold).
    reboot: Option<VmSpec>,
}

/// A QEMU process just started, before it is watched as a VM.
struct Launched {
    child: tokio::process::Child,
    pid: u32,
    conn: QmpConnection,
    agent: Option<Arc<Agent>>,
}

/// The file in a VM's folder holding what a reset of its guest boots, for a
/// node that adopts the VM after a restart.
const REBOOT_FILE: &str = "reboot.json";

/// QEMU's own migration status, read with a command type of our own: the
/// qapi crate's schema is newer than Debian's QEMU 7.2.
#[derive(serde::Serialize)]
struct QueryMigrate {}

impl qapi::Command for QueryMigrate {
    type Ok = serde_json::Value;
    const NAME: &'static str = "query-migrate";
    const ALLOW_OOB: bool = false;
}

impl qapi::qmp::QmpCommand for QueryMigrate {}

/// `query-status` answered as raw JSON.
#[derive(serde::Serialize)]
struct QueryStatus {}

impl qapi::Command for QueryStatus {
    type Ok = serde_json::Value;
    const NAME: &'static str = "query-status";
    const ALLOW_OOB: bool = false;
}

impl qapi::qmp::QmpCommand for QueryStatus {}

impl QemuDriver {
    /// Spawns QEMU for a spec (with extra arguments), connects QMP and the
    /// agent socket, and starts watching the process.
    async fn spawn(
        self: &Arc<Self>,
        spec: &VmSpec,
        extra: &[String],
        with_agent: bool,
    ) -> Result<(), DriverError> {
        self.spawn_with(spec, extra, with_agent, None).await
    }

    /// [`spawn`](Self::spawn), with the process taken from the warm pool
    /// when `warm` holds one (started with `extra` for this spec's shape).
    async fn spawn_with(
        self: &Arc<Self>,
        spec: &VmSpec,
        extra: &[String],
        with_agent: bool,
        warm: Option<pool::Slot>,
    ) -> Result<(), DriverError> {
        if self.vms.lock().await.contains_key(&spec.id) {
            return Err(DriverError::WrongState {
                id: spec.id.clone(),
                state: VmState::Running,
            });
        }
        let dir = self.dir(&spec.id);
        std::fs::create_dir_all(&dir)?;
        crate::driver::own_tmpfs_dir(&self.root)?;
        let _ = std::fs::remove_file(self.ram_file(&spec.id));
        let _ = std::fs::remove_file(dir.join("qmp.sock"));
        let _ = std::fs::remove_file(dir.join("agent.sock"));
        // A restored VM's guest is booted cold if it resets (`watch`), also
        // by a node that adopts it after a restart.
        let reboot = spec.restore_ram.as_ref().map(|_| VmSpec {
            restore: None,
            restore_ram: None,
            ..spec.clone()
        });
        match &reboot {
            Some(cold) => std::fs::write(
                dir.join(REBOOT_FILE),
                serde_json::to_vec(cold).map_err(qemu_err)?,
            )?,
            None => {
                let _ = std::fs::remove_file(dir.join(REBOOT_FILE));
            }
        }
        // The console log of this boot starts empty, so what it shows is this boot's.
        std::fs::write(dir.join("console.log"), b"")?;
        // A migration's target has no metadata to write: a seed naming the
        // instance, so that its devices are the source's.
        if matches!(spec.boot, Boot::Disk) && !dir.join(crate::seed::FILE).exists() {
            crate::seed::write(&dir, &spec.id, &spec.hostname, None)?;
        }
        crate::net::plug(&spec.nics, &self.net_dir())
            .and_then(|()| crate::net::publish(spec))
            .map_err(|e| {
                crate::net::unplug(&spec.nics, &self.net_dir());
                DriverError::Network(e)
            })?;
        let launched = match warm {
            Some(slot) => slot.hand_over(&dir).map_err(DriverError::from),
            None => self.launch(spec, extra, with_agent).await,
        };
        let Launched {
            child,
            pid,
            conn,
            agent,
        } = match launched {
            Ok(l) => l,
            Err(e) => {
                crate::net::unplug(&spec.nics, &self.net_dir());
                return Err(e);
            }
        };
        self.watch(Watched {
            id: spec.id.clone(),
            conn,
            agent,
            pid,
            child: Some(child),
            nics: spec.nics.clone(),
            reboot,
        })
        .await;
        Ok(())
    }

    /// Runs QEMU for `spec` in its folder and connects to its QMP socket
    /// and (`with_agent`) its guest agent's; the process is killed if
    /// either fails.
    async fn launch(
        &self,
        spec: &VmSpec,
        extra: &[String],
        with_agent: bool,
    ) -> Result<Launched, DriverError> {
        let dir = self.dir(&spec.id);
        let log = std::fs::File::create(dir.join("qemu.log"))?;
        let mut cmd = tokio::process::Command::new("qemu-system-x86_64");
        let incoming = extra.iter().any(|a| a == "-incoming");
        cmd.args(self.command_line_for(spec, incoming))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a signal to the node's group (Ctrl-C)
            // does not take the VMs with it.
            .process_group(0);
        if let Some(guard) = self.loopback.clone() {
            // SAFETY: join_self makes only async-signal-safe calls on
            // memory allocated before the fork.
            #[allow(unsafe_code)]
            unsafe {
                cmd.pre_exec(move || guard.join_self());
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| qemu_err(format!("cannot run qemu-system-x86_64: {e}")))?;
        let pid = child.id().unwrap_or(0);
        let t0 = Instant::now();
        let connected = QemuDriver::connect(
            &dir.join("qmp.sock"),
            Instant::now() + Duration::from_secs(10),
        )
        .await;
        let conn = match connected {
            Ok(c) => c,
            Err(e) => {
                let log = tail(&dir.join("qemu.log"), 5);
                let _ = child.kill().await;
                return Err(qemu_err(format!("{e}; qemu said: {log}")));
            }
        };
        tracing::debug!(id = %spec.id, qmp = ?t0.elapsed(), "QEMU spawned");
        let agent = if with_agent {
            match Agent::connect(
                &dir.join("agent.sock"),
                Duration::from_secs(10),
                self.jobs_done.clone(),
                Vec::new(),
            )
            .await
            {
                Ok(a) => Some(a),
                Err(e) => {
                    let _ = child.kill().await;
                    return Err(qemu_err(format!("guest agent socket: {e}")));
                }
            }
        } else {
            None
        };
        Ok(Launched {
            child,
            pid,
            conn,
            agent,
        })
    }

    /// Saves a paused VM's memory and device state to `to` with QEMU's own
    /// migration (to an `exec:` target: 7.2 has no `file:`), then ends it.
    pub async fn save_memory(self: &Arc<Self>, id: &str, to: &Path) -> Result<(), DriverError> {
        self.save(id, to, true).await
    }

    /// Saves a paused VM's device state to `to` and leaves it paused (a
    /// snapshot). A VM whose RAM is its own shared file leaves the RAM out of
    /// the stream (QEMU's `x-ignore-shared`: milliseconds, whatever the size)
    /// and returns that file, which holds the RAM while the VM stays paused.
    /// Otherwise (a VM itself restored from a hot image) the RAM goes into
    /// the stream.
    pub async fn snapshot_memory(
        self: &Arc<Self>,
        id: &str,
        to: &Path,
    ) -> Result<Option<PathBuf>, DriverError> {
        let vm = self.vm(id).await?;
        let ram = self.ram_file(id);
        let shared = ram.exists();
        set_ignore_shared(&vm.qmp, shared).await?;
        let saved = self.save(id, to, false).await;
        set_ignore_shared(&vm.qmp, false).await?;
        saved.map(|_| shared.then_some(ram))
    }

    async fn save(self: &Arc<Self>, id: &str, to: &Path, end: bool) -> Result<(), DriverError> {
        let vm = self.vm(id).await?;
        if self.status(id).await != VmState::Paused {
            return Err(DriverError::WrongState {
                id: id.into(),
                state: self.status(id).await,
            });
        }
        // After an earlier save QEMU is in `postmigrate`, from which it
        // refuses to migrate again ("paused due to previous migration"):
        // back to an ordinary pause first (the guest runs for the moment
        // between the two commands).
        // A save a killed node left running (its migration still active)
        // is cancelled first: QEMU runs one migration at a time.
        let info = vm.qmp.execute(QueryMigrate {}).await.map_err(qemu_err)?;
        if matches!(info["status"].as_str(), Some("setup" | "active" | "device")) {
            let _ = vm.qmp.execute(MigrateCancel(serde_json::json!({}))).await;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let info = vm.qmp.execute(QueryMigrate {}).await.map_err(qemu_err)?;
                match info["status"].as_str() {
                    Some("setup" | "active" | "device" | "cancelling")
                        if Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(10)).await
                    }
                    _ => break,
                }
            }
        }
        let status = vm.qmp.execute(QueryStatus {}).await.map_err(qemu_err)?;
        if status["status"].as_str() == Some("postmigrate") {
            vm.qmp.execute(qapi::qmp::cont {}).await.map_err(qemu_err)?;
            vm.qmp.execute(qapi::qmp::stop {}).await.map_err(qemu_err)?;
        }
        let uri = format!("exec:cat > '{}'", to.display());
        vm.qmp
            .execute(qapi::qmp::migrate {
                uri: Some(uri),
                channels: None,
                detach: None,
                resume: None,
            })
            .await
            .map_err(qemu_err)?;
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let info = vm.qmp.execute(QueryMigrate {}).await.map_err(qemu_err)?;
            match info["status"].as_str() {
                Some("completed") => break,
                Some("failed" | "cancelled") => {
                    return Err(qemu_err(format!(
                        "saving memory failed: {}",
                        info["error-desc"].as_str().unwrap_or("no reason given")
                    )))
                }
                _ if Instant::now() > deadline => {
                    return Err(qemu_err("saving memory took longer than 300 s"))
                }
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        if end {
            vm.expected.store(true, Ordering::SeqCst);
            let _ = vm.qmp.execute(qapi::qmp::quit {}).await;
            if !QemuDriver::wait_gone(&vm, Duration::from_secs(10)).await {
                QemuDriver::kill(&vm).await;
            }
        }
        Ok(())
    }

    /// Runs a human monitor command (`info lapic`, `info registers`) in a
    /// VM's QEMU and returns its text: for diagnostics, never parsed.
    pub async fn monitor(&self, id: &str, command: &str) -> Result<String, DriverError> {
        let vm = self.vm(id).await?;
        let out = vm
            .qmp
            .execute(HumanMonitorCommand(
                serde_json::json!({ "command-line": command }),
            ))
            .await
            .map_err(qemu_err)?;
        Ok(out.as_str().unwrap_or_default().to_string())
    }

    /// Brings a VM back from saved memory state, paused, then running. With
    /// a hot image's RAM file, only device state is read: the RAM is mapped.
    pub async fn restore(self: &Arc<Self>, spec: &VmSpec, from: &Path) -> Result<(), DriverError> {
        let t0 = Instant::now();
        if spec.restore_ram.is_some() {
            let warm = self
                .pool_shape(spec)
                .and_then(|shape| self.pool.take(&shape, spec));
            let warmed = warm.is_some();
            tracing::debug!(id = %spec.id, warmed, "restoring");
            let spawned = self
                .spawn_with(
                    spec,
                    &["-S".into(), "-incoming".into(), "defer".into()],
                    true,
                    warm,
                )
                .await;
            if self.pool.size > 0 {
                self.refill_pool();
            }
            spawned?;
            // A pooled QEMU has its device state loaded, paused.
            if !warmed {
                load_device_state(&self.vm(&spec.id).await?.qmp, from).await?;
            }
        } else {
            let incoming = format!("exec:cat '{}'", from.display());
            self.spawn(spec, &["-S".into(), "-incoming".into(), incoming], true)
                .await?;
        }
        let vm = self.vm(&spec.id).await?;
        wait_restored(&vm.qmp, Duration::from_secs(300)).await?;
        let loaded = t0.elapsed();
        vm.qmp.execute(qapi::qmp::cont {}).await.map_err(qemu_err)?;
        if let Some(agent) = vm.agent() {
            agent.ready(Duration::from_secs(30)).await;
        }
        tracing::debug!(id = %spec.id, ?loaded, agent = ?t0.elapsed(), "memory state restored");
        match self.status(&spec.id).await {
            VmState::Running => Ok(()),
            state => Err(DriverError::WrongState {
                id: spec.id.clone(),
                state,
            }),
        }
    }
}

/// Whether a microvm gets the legacy PIT (i8254). A guest booted here does
/// not: the firmware leaves it counting, and it woke an idle QEMU 36 times
/// a second for nothing (the guest's TSC rate is given, its APIC timer
/// calibrated against the TSC). A machine that takes saved state has one
/// if that state may hold one, since QEMU cannot load a device the machine
/// lacks (a device the state lacks is harmless): a hot image's device
/// state (a small file) is read for the PIT's section; a full saved state
/// or a live migration's stream cannot be read ahead, so those machines
/// keep it.
fn legacy_pit(spec: &VmSpec, incoming: bool) -> bool {
    match (&spec.restore, &spec.restore_ram) {
        (Some(state), Some(_)) => std::fs::read(state).map_or(true, |s| holds_pit(&s)),
        (Some(_), None) => true,
        (None, _) => incoming,
    }
}

/// Whether a QEMU migration stream names the PIT's section: its idstr is
/// written with a length byte before it.
pub fn holds_pit(stream: &[u8]) -> bool {
    stream.windows(6).any(|w| w == b"\x05i8254")
}

/// Declares a QMP command sent with free-form JSON arguments and answered as
/// raw JSON: the block and migration commands of Debian's QEMU 7.2 differ from
/// the qapi crate's newer schema.
macro_rules! raw_command {
    ($ty:ident, $name:literal) => {
        #[derive(serde::Serialize)]
        struct $ty(serde_json::Value);

        impl qapi::Command for $ty {
            type Ok = serde_json::Value;
            const NAME: &'static str = $name;
            const ALLOW_OOB: bool = false;
        }

        impl qapi::qmp::QmpCommand for $ty {}
    };
}

raw_command!(MigrateIncoming, "migrate-incoming");
raw_command!(QueryBlockstats, "query-blockstats");
raw_command!(HumanMonitorCommand, "human-monitor-command");
raw_command!(Migrate, "migrate");
raw_command!(MigrateCancel, "migrate_cancel");
raw_command!(NbdServerStart, "nbd-server-start");
raw_command!(NbdServerStop, "nbd-server-stop");
raw_command!(BlockExportAdd, "block-export-add");
raw_command!(BlockExportDel, "block-export-del");
raw_command!(DriveMirror, "drive-mirror");
raw_command!(QueryBlockJobs, "query-block-jobs");
raw_command!(BlockJobCancel, "block-job-cancel");

raw_command!(MigrateSetCapabilities, "migrate-set-capabilities");
raw_command!(MigrateSetParameters, "migrate-set-parameters");
raw_command!(BlockdevAdd, "blockdev-add");
raw_command!(BlockdevDel, "blockdev-del");
raw_command!(BlockdevMirror, "blockdev-mirror");

/// Turns QEMU's `x-ignore-shared` migration capability on or off: with it,
/// RAM in a shared file backend is not sent (the file is the RAM).
async fn set_ignore_shared(qmp: &Qmp, on: bool) -> Result<(), DriverError> {
    qmp.execute(MigrateSetCapabilities(serde_json::json!({
        "capabilities": [{ "capability": "x-ignore-shared", "state": on }]
    })))
    .await
    .map(drop)
    .map_err(qemu_err)
}

/// Sends a QEMU waiting with `-incoming defer` over a hot image's RAM the
/// device state in `from` (the RAM itself is mapped, not sent).
async fn load_device_state(qmp: &Qmp, from: &Path) -> Result<(), DriverError> {
    set_ignore_shared(qmp, true).await?;
    qmp.execute(MigrateIncoming(serde_json::json!({
        "uri": format!("exec:cat '{}'", from.display())
    })))
    .await
    .map(drop)
    .map_err(qemu_err)
}

/// Waits up to `within` for an incoming migration to end (the VM then
/// paused).
async fn wait_restored(qmp: &Qmp, within: Duration) -> Result<(), DriverError> {
    let deadline = Instant::now() + within;
    loop {
        // Raw JSON: run-state names differ between the crate's schema and 7.2.
        let status = qmp.execute(QueryStatus {}).await.map_err(qemu_err)?;
        if status["status"].as_str() != Some("inmigrate") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(qemu_err(format!(
                "restoring memory took longer than {} s",
                within.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A free TCP port on `host` (bound, read, released: QEMU binds it next).
fn free_port(host: &str) -> Result<u16, DriverError> {
    Ok(std::net::TcpListener::bind((host, 0))?.local_addr()?.port())
}

impl QemuDriver {
    /// Starts QEMU waiting for an incoming migration on `host` (paused, with
    /// no agent connection yet) and, if the VM has a disk, exports its blank
    /// overlay over NBD for the source's mirror. Returns the migration URI and
    /// the NBD URI.
    pub async fn incoming(
        self: &Arc<Self>,
        spec: &VmSpec,
        host: &str,
    ) -> Result<(String, Option<String>), DriverError> {
        self.spawn(
            spec,
            &["-S".into(), "-incoming".into(), "defer".into()],
            false,
        )
        .await?;
        let vm = self.vm(&spec.id).await?;
        let prepared = async {
            let uri = format!("tcp:{host}:{}", free_port(host)?);
            if self.tls() {
                vm.qmp
                    .execute(MigrateSetParameters(serde_json::json!({ "tls-creds": "vws-tls-server" })))
                    .await
                    .map_err(qemu_err)?;
            }
            vm.qmp
                .execute(MigrateIncoming(serde_json::json!({ "uri": uri })))
                .await
                .map_err(qemu_err)?;
            let nbd = match spec.disk {
                None => None,
                Some(_) => {
                    let port = free_port(host)?;
                    let mut args = serde_json::json!({
                        "addr": { "type": "inet", "data": { "host": host, "port": port.to_string() } }
                    });
                    if self.tls() {
                        args["tls-creds"] = "vws-tls-server".into();
                    }
                    vm.qmp
                        .execute(NbdServerStart(args))
                        .await
                        .map_err(qemu_err)?;
                    vm.qmp
                        .execute(BlockExportAdd(serde_json::json!({
                            "type": "nbd", "id": "migration-disk0", "node-name": "disk0-top",
                            "name": "disk0", "writable": true
                        })))
                        .await
                        .map_err(qemu_err)?;
                    Some(format!("nbd://{host}:{port}/disk0"))
                }
            };
            Ok::<_, DriverError>((uri, nbd))
        }
        .await;
        if prepared.is_err() {
            vm.expected.store(true, Ordering::SeqCst);
            QemuDriver::kill(&vm).await;
        }
        prepared
    }

    /// Stops an outgoing migration and its disk mirror, and goes back to
    /// plain streams (`tls`: they were TLS), for a later save to a file.
    /// Nothing of it need be in flight.
    async fn abandon_migration(vm: &Vm, tls: bool) {
        let _ = vm.qmp.execute(MigrateCancel(serde_json::json!({}))).await;
        let _ = vm
            .qmp
            .execute(BlockJobCancel(
                serde_json::json!({ "device": "migration-mirror", "force": true }),
            ))
            .await;
        // The mirror's target goes once its job has ended.
        let attempts = if tls { 50 } else { 1 };
        for _ in 0..attempts {
            let del = vm
                .qmp
                .execute(BlockdevDel(
                    serde_json::json!({ "node-name": "migration-target" }),
                ))
                .await;
            if del.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = vm
            .qmp
            .execute(MigrateSetParameters(serde_json::json!({ "tls-creds": "" })))
            .await;
    }

    /// Sends a running (or paused) VM to a waiting target: mirrors its disk
    /// to the target's NBD export, then migrates memory and device state over
    /// TCP; on success ends this QEMU (the target now runs the guest). On
    /// failure everything is undone here and the VM goes on as before.
    pub async fn migrate_out(
        self: &Arc<Self>,
        id: &str,
        migrate_uri: &str,
        nbd_uri: Option<&str>,
        tls_name: Option<&str>,
        meter: &MigrationMeter,
    ) -> Result<(), DriverError> {
        let vm = self.vm(id).await?;
        let was_running = self.status(id).await == VmState::Running;
        // A target on this host's loopback is let through the guard while
        // the streams run.
        let _allowed: Vec<_> = match &self.loopback {
            Some(g) => [Some(migrate_uri), nbd_uri]
                .into_iter()
                .flatten()
                .filter_map(crate::loopback::target_of)
                .map(|(addr, port)| g.allow(addr, port))
                .collect(),
            None => Vec::new(),
        };
        let sent = self
            .send_state(&vm, migrate_uri, nbd_uri, tls_name, meter)
            .await;
        if let Err(e) = sent {
            meter.set("failed", 0, 0);
            // Rollback: stop whatever is in flight; the guest resumes here.
            QemuDriver::abandon_migration(&vm, tls_name.is_some()).await;
            if was_running && self.status(id).await != VmState::Running {
                let _ = vm.qmp.execute(qapi::qmp::cont {}).await;
            }
            return Err(e);
        }
        meter.set("done", 1, 1);
        // The guest runs on the target now: this QEMU ends, and the agent's
        // jobs are handed over rather than failed.
        let agent = vm.agent();
        if let Some(a) = &agent {
            a.hand_off();
        }
        vm.expected.store(true, Ordering::SeqCst);
        let _ = vm.qmp.execute(qapi::qmp::quit {}).await;
        if !QemuDriver::wait_gone(&vm, Duration::from_secs(10)).await {
            QemuDriver::kill(&vm).await;
        }
        if let Some(a) = agent {
            a.closed(Duration::from_secs(5)).await;
        }
        Ok(())
    }

    async fn send_state(
        &self,
        vm: &Vm,
        migrate_uri: &str,
        nbd_uri: Option<&str>,
        tls_name: Option<&str>,
        meter: &MigrationMeter,
    ) -> Result<(), DriverError> {
        let deadline = Instant::now() + Duration::from_secs(600);
        if let Some(nbd) = nbd_uri {
            match tls_name {
                // Over TLS: the target as a block node of its own (the URI
                // form of drive-mirror takes no TLS credentials).
                Some(name) => {
                    let rest = nbd.trim_start_matches("nbd://");
                    let (addr, export) = rest.split_once('/').unwrap_or((rest, "disk0"));
                    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "10809"));
                    vm.qmp
                        .execute(BlockdevAdd(serde_json::json!({
                            "driver": "nbd", "node-name": "migration-target",
                            "server": { "type": "inet", "host": host, "port": port },
                            "export": export, "tls-creds": "vws-tls-client", "tls-hostname": name
                        })))
                        .await
                        .map_err(qemu_err)?;
                    vm.qmp
                        .execute(BlockdevMirror(serde_json::json!({
                            "device": "disk0", "job-id": "migration-mirror",
                            "target": "migration-target", "sync": "top"
                        })))
                        .await
                        .map_err(qemu_err)?;
                }
                None => {
                    vm.qmp
                        .execute(DriveMirror(serde_json::json!({
                            "device": "disk0", "job-id": "migration-mirror", "target": nbd,
                            "format": "raw", "sync": "top", "mode": "existing"
                        })))
                        .await
                        .map_err(qemu_err)?;
                }
            }
            loop {
                let jobs = vm
                    .qmp
                    .execute(QueryBlockJobs(serde_json::json!({})))
                    .await
                    .map_err(qemu_err)?;
                let job = jobs
                    .as_array()
                    .and_then(|a| a.iter().find(|j| j["device"] == "migration-mirror"))
                    .cloned()
                    .ok_or_else(|| qemu_err("the disk mirror ended before it was ready"))?;
                meter.set(
                    "disk",
                    job["offset"].as_u64().unwrap_or(0),
                    job["len"].as_u64().unwrap_or(0),
                );
                if job["ready"].as_bool() == Some(true) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(qemu_err("mirroring the disk took longer than 600 s"));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if let Some(name) = tls_name {
            vm.qmp
                .execute(MigrateSetParameters(serde_json::json!({
                    "tls-creds": "vws-tls-client", "tls-hostname": name
                })))
                .await
                .map_err(qemu_err)?;
        }
        vm.qmp
            .execute(Migrate(serde_json::json!({ "uri": migrate_uri })))
            .await
            .map_err(qemu_err)?;
        loop {
            let info = vm.qmp.execute(QueryMigrate {}).await.map_err(qemu_err)?;
            let ram = &info["ram"];
            meter.set(
                "memory",
                ram["transferred"].as_u64().unwrap_or(0),
                ram["transferred"].as_u64().unwrap_or(0) + ram["remaining"].as_u64().unwrap_or(0),
            );
            match info["status"].as_str() {
                Some("completed") => break,
                Some("failed" | "cancelled") => {
                    return Err(qemu_err(format!(
                        "migration failed: {}",
                        info["error-desc"].as_str().unwrap_or("no reason given")
                    )))
                }
                _ if Instant::now() > deadline => {
                    return Err(qemu_err("migration took longer than 600 s"))
                }
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        if nbd_uri.is_some() {
            // After the switch-over the mirror is in sync: cancelling a ready
            // mirror ends it cleanly.
            vm.qmp
                .execute(BlockJobCancel(
                    serde_json::json!({ "device": "migration-mirror" }),
                ))
                .await
                .map_err(qemu_err)?;
        }
        Ok(())
    }

    /// Ends an incoming migration on the target: closes the disk export,
    /// connects the guest agent with the handed-over jobs already known, and
    /// resumes the guest if it was running.
    pub async fn finish_incoming(
        self: &Arc<Self>,
        id: &str,
        jobs: Vec<(String, PathBuf, u64)>,
        running: bool,
    ) -> Result<(), DriverError> {
        let vm = self.vm(id).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = vm.qmp.execute(QueryStatus {}).await.map_err(qemu_err)?;
            match status["status"].as_str() {
                Some("inmigrate") if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Some("inmigrate") => return Err(qemu_err("the incoming migration did not end")),
                _ => break,
            }
        }
        let _ = vm
            .qmp
            .execute(BlockExportDel(
                serde_json::json!({ "id": "migration-disk0" }),
            ))
            .await;
        let _ = vm.qmp.execute(NbdServerStop(serde_json::json!({}))).await;
        for (_, log, _) in &jobs {
            std::fs::write(crate::agent::running_marker(log), id)?;
        }
        // Connected already if this node restarted and adopted the waiting
        // VM (the service then finishes a migration it was killed during).
        let agent = match vm.agent() {
            Some(agent) => {
                agent.follow(jobs).await;
                agent
            }
            None => {
                Agent::connect(
                    &self.dir(id).join("agent.sock"),
                    Duration::from_secs(10),
                    self.jobs_done.clone(),
                    jobs,
                )
                .await?
            }
        };
        if let Ok(mut a) = vm.agent.write() {
            *a = Some(agent.clone());
        }
        if running {
            vm.qmp.execute(qapi::qmp::cont {}).await.map_err(qemu_err)?;
            agent.ready(Duration::from_secs(30)).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_console_tail_is_plain_text() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(
            &log,
            "[\x1b[0;32m  OK  \x1b[0m] Reached target network-pre.\r\n\
             \x1b[0;31m*\x1b[0m Job networking.service/start running (48s)\r\
             \x1bM\r\x1b[K[ \x1b[0;31m*\x1b[0m ] Job networking.service/start running (49s)\r\n\
             \r\n",
        )
        .unwrap();
        assert_eq!(
            super::tail(&log, 10),
            "[  OK  ] Reached target network-pre.\n[ * ] Job networking.service/start running (49s)"
        );
        assert_eq!(
            super::tail(&log, 1),
            "[ * ] Job networking.service/start running (49s)"
        );
    }
}
