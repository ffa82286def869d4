//! The QEMU driver behind the driver seam: the lifecycle, the guest's setup
//! through its agent (identity, credential, jobs, files), and the
//! capabilities only VMs have (saving memory, live migration).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use vws_model::node::{JobRequest, WorkspaceCredentials};
use vws_model::Category;

use super::{qemu_err, QemuDriver};
use crate::agent::Agent;
use crate::driver::{
    credential_files, Adopted, Driver, DriverError, Io, Migrates, MigrationMeter, SavesMemory,
    VmSpec, VmState, CREDENTIALS_DIR,
};

/// The jobs that ran in VM `id` when the node last saw it (their running
/// markers in `jobs`): (job, log, output bytes so far).
pub(super) fn marked_jobs(jobs: &Path, id: &str) -> Vec<(String, PathBuf, u64)> {
    let Ok(entries) = std::fs::read_dir(jobs) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "vm"))
        .filter(|p| std::fs::read_to_string(p).is_ok_and(|w| w == id))
        .filter_map(|marker| {
            let job = marker.file_stem()?.to_string_lossy().into_owned();
            let log = marker.with_extension("ndjson");
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            Some((job, log, crate::agent::log_output_bytes(&text)))
        })
        .collect()
}

/// How long a heartbeat waits for a guest's interface counters.
const NET_ANSWER_WITHIN: Duration = Duration::from_millis(300);

/// How often a guest's interface counters are read for the heartbeat.
const NET_READ_EVERY: Duration = Duration::from_secs(10);

/// How long a job waits for a running guest's agent to answer its
/// connection (it reconnects after a restart of the node).
const AGENT_ANSWERS_WITHIN: Duration = Duration::from_secs(5);

impl QemuDriver {
    /// Boots QEMU and waits until the guest's agent answers.
    pub(super) async fn boot(self: &Arc<Self>, spec: &VmSpec) -> Result<(), DriverError> {
        self.spawn(spec, &[], true).await?;
        let vm = self.vm(&spec.id).await?;
        if let Err(e) = self.wait_ready(&spec.id, &vm).await {
            vm.expected.store(true, Ordering::SeqCst);
            QemuDriver::kill(&vm).await;
            return Err(e);
        }
        Ok(())
    }

    async fn running_agent(&self, id: &str) -> Result<Arc<Agent>, DriverError> {
        self.agent(id)
            .await
            .ok_or_else(|| DriverError::NotRunning(id.into()))
    }

    /// A workspace restored from a hot image wakes up as the image's source:
    /// give it its own hostname, MAC, entropy and agent session.
    async fn refresh_identity(&self, spec: &VmSpec) -> Result<(), DriverError> {
        let agent = self.running_agent(&spec.id).await?;
        give_identity(&agent, spec).await
    }
}

/// Gives a restored guest `spec`'s identity (hostname, eth0's MAC for a
/// user NIC, bridged NICs' addresses, fresh entropy) and waits for the new
/// agent session that says it took it.
pub(super) async fn give_identity(
    agent: &crate::agent::Agent,
    spec: &VmSpec,
) -> Result<(), DriverError> {
    let before = agent.hello().map(|h| h.session);
    // eth0's MAC for a user NIC; bridged NICs get theirs with their
    // addresses.
    let mac = spec
        .nics
        .first()
        .filter(|n| n.bridged.is_none())
        .map(|_| super::mac_address(&spec.id, 0));
    let net = spec
        .nics
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            n.bridged.as_ref().map(|b| vws_guest::NetConfig {
                dev: format!("eth{i}"),
                mac: b.mac.clone(),
                address: (!b.dhcp).then(|| b.address.clone()),
                gateway: b.gateway.clone(),
                dhcp: b.dhcp,
            })
        })
        .collect();
    let seed: Vec<u8> = (0..64).map(|_| rand::random::<u8>()).collect();
    agent.identity(&spec.hostname, mac, &seed, net);
    // A new agent session is the sign that all of it happened.
    match agent
        .new_session(before.as_deref(), Duration::from_secs(15))
        .await
    {
        Some(_) => Ok(()),
        None => Err(qemu_err("the restored guest did not take its new identity")),
    }
}

#[async_trait::async_trait]
impl Driver for Arc<QemuDriver> {
    fn category(&self) -> Category {
        Category::Vm
    }

    async fn adopt(&self, jobs: &Path) -> Adopted {
        let (workspaces, jobs) = self.adopt_vms(jobs).await;
        Adopted { workspaces, jobs }
    }

    async fn start(
        &self,
        spec: &VmSpec,
        credentials: Option<&WorkspaceCredentials>,
    ) -> Result<(), DriverError> {
        let t = Instant::now();
        let install = async {
            match credentials {
                Some(c) => self.install_credentials(spec, c).await,
                None => Ok(()),
            }
        };
        match &spec.restore {
            // A hot image's workspaces are restored from its memory, not booted.
            Some(memory) => {
                QemuDriver::restore(self, spec, memory).await?;
                let restored = t.elapsed();
                // The credential is sent alongside the identity message, not
                // after its answer: the writes do not depend on it, and the
                // round trip between them is saved.
                let (identity, installed) = tokio::join!(self.refresh_identity(spec), install);
                identity?;
                installed?;
                tracing::debug!(id = %spec.id, ?restored, identity = ?(t.elapsed() - restored), "restored");
            }
            None => {
                if matches!(spec.boot, crate::driver::Boot::Disk) {
                    let metadata = credentials.and_then(|c| c.metadata.as_ref());
                    let dir = self.dir(&spec.id);
                    std::fs::create_dir_all(&dir)?;
                    crate::seed::write(&dir, &spec.id, &spec.hostname, metadata)?;
                }
                self.boot(spec).await?;
                let ready = t.elapsed();
                install.await?;
                tracing::debug!(id = %spec.id, ?ready, credentials = ?(t.elapsed() - ready), "started");
            }
        }
        Ok(())
    }

    async fn install_credentials(
        &self,
        spec: &VmSpec,
        c: &WorkspaceCredentials,
    ) -> Result<(), DriverError> {
        let agent = self.running_agent(&spec.id).await?;
        let dir = CREDENTIALS_DIR;
        // All three in flight at once: the agent answers each by its id.
        let writes = credential_files(c).into_iter().map(|(name, text, mode)| {
            let agent = agent.clone();
            async move {
                agent
                    .write_file(&format!("{dir}/{name}"), text.as_bytes(), Some(mode))
                    .await
            }
        });
        for done in futures::future::join_all(writes).await {
            done.map_err(DriverError::Credential)?;
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), DriverError> {
        if self.status(id).await != VmState::Shutdown {
            self.stop(id, Duration::ZERO).await?;
        }
        Ok(())
    }

    async fn pids(&self, id: &str) -> Vec<i32> {
        self.pid(id).await.map(|p| p as i32).into_iter().collect()
    }

    /// QEMU's block statistics, and the guest's own interface counters
    /// (read through its agent: a user NIC has no host-side device). The
    /// heartbeat must not wait on a guest: one that is paused, or does not
    /// answer within [`NET_ANSWER_WITHIN`], keeps its last figures. Nor
    /// wake idle ones at every beat: a guest without interfaces is not
    /// asked, and one with them at most every [`NET_READ_EVERY`].
    async fn io(&self, id: &str) -> Io {
        let block = self.block_bytes(id).await;
        let last = self
            .net_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .copied();
        let due = last.is_none_or(|(at, _, _)| at.elapsed() >= NET_READ_EVERY);
        let agent = match self.vm(id).await {
            Ok(vm) if vm.nics && due => vm.agent(),
            _ => None,
        };
        let agent = match agent {
            Some(a) if a.hello().is_some() && self.status(id).await == VmState::Running => Some(a),
            _ => None,
        };
        let read = match agent {
            Some(a) => tokio::time::timeout(NET_ANSWER_WITHIN, a.read_file("/proc/net/dev"))
                .await
                .ok()
                .and_then(Result::ok),
            None => None,
        };
        let mut seen = self.net_seen.lock().unwrap_or_else(|e| e.into_inner());
        let (rx, tx) = match read {
            Some(table) => {
                let now = crate::usage::net_bytes(&String::from_utf8_lossy(&table));
                seen.insert(id.to_string(), (std::time::Instant::now(), now.0, now.1));
                now
            }
            None => last.map(|(_, rx, tx)| (rx, tx)).unwrap_or_default(),
        };
        let mut io = Io::new(block, "");
        io.net_rx = rx;
        io.net_tx = tx;
        io
    }

    async fn run_job(
        &self,
        spec: &VmSpec,
        req: JobRequest,
        log: PathBuf,
    ) -> Result<(), DriverError> {
        let agent = self.running_agent(&spec.id).await?;
        // Right after a restart of the node, the adopted guest's agent
        // answers the new connection within a poll of its port (~0.1 s):
        // a job sent then waits for it rather than failing.
        if agent.ready(AGENT_ANSWERS_WITHIN).await.is_none() {
            return Err(DriverError::NotRunning(spec.id.clone()));
        }
        // Kept while the job runs: a restarted node follows it again.
        std::fs::write(crate::agent::running_marker(&log), &spec.id)?;
        agent
            .exec(
                &req.job,
                log,
                req.argv,
                req.env,
                req.cwd,
                req.stdin,
                req.timeout.map(|t| t.saturating_mul(1000)),
                req.user,
            )
            .await;
        Ok(())
    }

    async fn signal_job(&self, id: &str, job: &str, _log: &Path, signal: Signal) {
        if let Some(agent) = self.agent(id).await {
            agent.signal(job, signal as i32);
        }
    }

    async fn write_file(&self, spec: &VmSpec, path: &str, data: &[u8]) -> Result<(), DriverError> {
        let agent = self.running_agent(&spec.id).await?;
        Ok(agent.write_file(path, data, None).await?)
    }

    async fn read_file(&self, spec: &VmSpec, path: &str) -> Result<Vec<u8>, DriverError> {
        let agent = self.running_agent(&spec.id).await?;
        Ok(agent.read_file(path).await?)
    }

    fn warm_pool(&self) -> Option<vws_model::node::WarmPool> {
        (self.pool.size > 0).then(|| self.pool.report())
    }

    fn close(&self) {
        self.pool.close();
    }

    fn memory(&self) -> Option<&dyn SavesMemory> {
        Some(self)
    }

    fn migration(&self) -> Option<&dyn Migrates> {
        Some(self)
    }
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), DriverError> {
        let vm = self.vm_or_rebooting(id).await?;
        vm.expected.store(true, Ordering::SeqCst);
        // A paused guest cannot react to anything: wake it first.
        let _ = vm.qmp.execute(qapi::qmp::cont {}).await;
        if grace > Duration::ZERO {
            // The guest shuts itself down: through its agent (sync, then power
            // off), and the ACPI power button for guests that listen to it.
            if let Some(agent) = vm.agent().filter(|a| a.hello().is_some()) {
                let log = self.dir(id).join("shutdown.ndjson");
                // busybox's poweroff where the guest runs a root filesystem's
                // userland (a Debian's may need systemd to act).
                let argv = vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "sync; if [ -x /run/vws/bin/poweroff ]; then /run/vws/bin/poweroff -f; else poweroff -f; fi".into(),
                ];
                agent
                    .exec("shutdown", log, argv, vec![], None, None, None, None)
                    .await;
            }
            let _ = vm.qmp.execute(qapi::qmp::system_powerdown {}).await;
        }
        if QemuDriver::wait_gone(&vm, grace).await {
            return Ok(());
        }
        let _ = vm.qmp.execute(qapi::qmp::quit {}).await;
        if QemuDriver::wait_gone(&vm, Duration::from_secs(5)).await {
            return Ok(());
        }
        QemuDriver::kill(&vm).await;
        Ok(())
    }

    async fn pause(&self, id: &str) -> Result<(), DriverError> {
        let vm = self.vm(id).await?;
        vm.qmp.execute(qapi::qmp::stop {}).await.map_err(qemu_err)?;
        match self.status(id).await {
            VmState::Paused => Ok(()),
            state => Err(DriverError::WrongState {
                id: id.into(),
                state,
            }),
        }
    }

    async fn unpause(&self, id: &str) -> Result<(), DriverError> {
        let vm = self.vm(id).await?;
        vm.qmp.execute(qapi::qmp::cont {}).await.map_err(qemu_err)?;
        match self.status(id).await {
            VmState::Running => Ok(()),
            state => Err(DriverError::WrongState {
                id: id.into(),
                state,
            }),
        }
    }

    async fn status(&self, id: &str) -> VmState {
        let Ok(vm) = self.vm(id).await else {
            return VmState::Shutdown;
        };
        match vm.qmp.execute(qapi::qmp::query_status {}).await {
            Ok(s) if s.running => VmState::Running,
            Ok(_) => VmState::Paused,
            Err(_) => VmState::Shutdown,
        }
    }

    fn console(&self, id: &str) -> PathBuf {
        self.dir(id).join("console.log")
    }
}

#[async_trait::async_trait]
impl SavesMemory for Arc<QemuDriver> {
    async fn save_memory(&self, id: &str, to: &Path) -> Result<(), DriverError> {
        QemuDriver::save_memory(self, id, to).await
    }

    async fn snapshot_memory(&self, id: &str, to: &Path) -> Result<Option<PathBuf>, DriverError> {
        QemuDriver::snapshot_memory(self, id, to).await
    }

    async fn restore(&self, spec: &VmSpec, from: &Path) -> Result<(), DriverError> {
        QemuDriver::restore(self, spec, from).await
    }
}

#[async_trait::async_trait]
impl Migrates for Arc<QemuDriver> {
    fn tls(&self) -> bool {
        QemuDriver::tls(self)
    }

    async fn incoming(
        &self,
        spec: &VmSpec,
        host: &str,
    ) -> Result<(String, Option<String>), DriverError> {
        QemuDriver::incoming(self, spec, host).await
    }

    async fn migrate_out(
        &self,
        id: &str,
        migrate_uri: &str,
        nbd_uri: Option<&str>,
        tls_name: Option<&str>,
        meter: &MigrationMeter,
    ) -> Result<(), DriverError> {
        QemuDriver::migrate_out(self, id, migrate_uri, nbd_uri, tls_name, meter).await
    }

    async fn finish_incoming(
        &self,
        id: &str,
        jobs: Vec<(String, PathBuf, u64)>,
        running: bool,
    ) -> Result<(), DriverError> {
        QemuDriver::finish_incoming(self, id, jobs, running).await
    }
}
