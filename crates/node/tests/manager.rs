//! The VW Manager driven through fake drivers, one per category: that each
//! workspace goes to its category's driver, that what a driver cannot do
//! is refused as unsupported (and what the node does not run, as such),
//! that failures leave the workspace drivable, and the manager's own part
//! of jobs (cancel's escalation), check-in and removal. No QEMU, no root.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use vws_model::node::{AccountLease, BootKind, DeployRequest, JobRequest, WorkspaceCredentials};
use vws_model::Category;
use vws_node::driver::{
    AccountSpec, Adopted, Driver, DriverError, Drivers, Io, SavesMemory, VmSpec, VmState,
};
use vws_node::{Manager, NodeError};

/// A driver that keeps states in a map and records every call.
#[derive(Default)]
struct Fake {
    category: Option<Category>,
    states: Mutex<HashMap<String, VmState>>,
    calls: Mutex<Vec<String>>,
    /// Makes `start` fail (once) with a boot timeout.
    fail_start: Mutex<bool>,
    /// Workspaces and jobs `adopt` reports.
    adoptable: Mutex<Adopted>,
    /// Whether it hands out memory saving.
    saves: bool,
}

impl Fake {
    fn new(category: Category) -> Arc<Fake> {
        Arc::new(Fake {
            category: Some(category),
            ..Fake::default()
        })
    }

    fn call(&self, what: String) {
        self.calls.lock().unwrap().push(what);
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn set(&self, id: &str, state: VmState) {
        self.states.lock().unwrap().insert(id.into(), state);
    }

    fn in_state(&self, id: &str, wanted: VmState) -> Result<(), DriverError> {
        match self.states.lock().unwrap().get(id).copied() {
            Some(s) if s == wanted => Ok(()),
            Some(state) => Err(DriverError::WrongState {
                id: id.into(),
                state,
            }),
            None => Err(DriverError::NotRunning(id.into())),
        }
    }
}

#[async_trait::async_trait]
impl Driver for Fake {
    fn category(&self) -> Category {
        self.category.expect("set")
    }

    async fn adopt(&self, _jobs: &Path) -> Adopted {
        self.call("adopt".into());
        std::mem::take(&mut *self.adoptable.lock().unwrap())
    }

    async fn prepare(
        &self,
        spec: &mut VmSpec,
        lease: Option<AccountLease>,
        image: Option<PathBuf>,
    ) -> Result<(), DriverError> {
        self.call(format!("prepare {}", spec.id));
        if let Some(lease) = lease {
            spec.account = Some(AccountSpec {
                uid: lease.uid,
                image: image.unwrap_or_default(),
                upper: PathBuf::from("/nonexistent/upper.img"),
            });
        }
        Ok(())
    }

    async fn prepare_check_in(&self, spec: &VmSpec) -> Result<(), DriverError> {
        self.call(format!("check-in {}", spec.id));
        Ok(())
    }

    async fn start(
        &self,
        spec: &VmSpec,
        credentials: Option<&WorkspaceCredentials>,
    ) -> Result<(), DriverError> {
        self.call(format!(
            "start {} credentials={}",
            spec.id,
            credentials.is_some()
        ));
        if std::mem::take(&mut *self.fail_start.lock().unwrap()) {
            return Err(DriverError::BootTimeout {
                id: spec.id.clone(),
                waited: Duration::from_secs(1),
                console: String::new(),
            });
        }
        self.set(&spec.id, VmState::Running);
        Ok(())
    }

    async fn install_credentials(
        &self,
        spec: &VmSpec,
        _c: &WorkspaceCredentials,
    ) -> Result<(), DriverError> {
        self.call(format!("credentials {}", spec.id));
        Ok(())
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), DriverError> {
        self.call(format!("stop {id} grace={}s", grace.as_secs()));
        self.states.lock().unwrap().remove(id);
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), DriverError> {
        self.call(format!("remove {id}"));
        self.states.lock().unwrap().remove(id);
        Ok(())
    }

    async fn pause(&self, id: &str) -> Result<(), DriverError> {
        self.in_state(id, VmState::Running)?;
        self.set(id, VmState::Paused);
        Ok(())
    }

    async fn unpause(&self, id: &str) -> Result<(), DriverError> {
        self.in_state(id, VmState::Paused)?;
        self.set(id, VmState::Running);
        Ok(())
    }

    async fn status(&self, id: &str) -> VmState {
        let states = self.states.lock().unwrap();
        states.get(id).copied().unwrap_or(VmState::Shutdown)
    }

    fn console(&self, id: &str) -> PathBuf {
        PathBuf::from(format!("/fake/{id}/console.log"))
    }

    async fn pids(&self, _id: &str) -> Vec<i32> {
        vec![std::process::id() as i32]
    }

    async fn io(&self, _id: &str) -> Io {
        Io {
            block_read: 4096,
            block_write: 8192,
            net_rx: 1,
            net_tx: 2,
        }
    }

    async fn run_job(
        &self,
        spec: &VmSpec,
        job: JobRequest,
        log: PathBuf,
    ) -> Result<(), DriverError> {
        self.in_state(&spec.id, VmState::Running)?;
        assert!(
            log.exists(),
            "the manager makes the job's log before the driver runs it"
        );
        self.call(format!("job {} {}", job.job, job.argv.join(" ")));
        Ok(())
    }

    async fn signal_job(&self, _id: &str, job: &str, _log: &Path, signal: Signal) {
        self.call(format!("signal {job} {signal}"));
    }

    async fn write_file(&self, spec: &VmSpec, path: &str, data: &[u8]) -> Result<(), DriverError> {
        self.call(format!("write {} {path} {}", spec.id, data.len()));
        Ok(())
    }

    async fn read_file(&self, spec: &VmSpec, path: &str) -> Result<Vec<u8>, DriverError> {
        self.call(format!("read {} {path}", spec.id));
        Ok(b"contents".to_vec())
    }

    fn memory(&self) -> Option<&dyn SavesMemory> {
        self.saves.then_some(self as &dyn SavesMemory)
    }
}

#[async_trait::async_trait]
impl SavesMemory for Fake {
    async fn save_memory(&self, id: &str, to: &Path) -> Result<(), DriverError> {
        self.call(format!("save {id}"));
        std::fs::write(to, b"memory")?;
        self.states.lock().unwrap().remove(id);
        Ok(())
    }

    async fn snapshot_memory(&self, id: &str, to: &Path) -> Result<Option<PathBuf>, DriverError> {
        self.call(format!("snapshot {id}"));
        std::fs::write(to, b"memory")?;
        Ok(None)
    }

    async fn restore(&self, spec: &VmSpec, _from: &Path) -> Result<(), DriverError> {
        self.call(format!("restore {}", spec.id));
        self.set(&spec.id, VmState::Running);
        Ok(())
    }
}

struct Node {
    manager: Arc<Manager>,
    home: tempfile::TempDir,
}

fn node<const N: usize>(drivers: [Arc<Fake>; N]) -> Node {
    let home = tempfile::tempdir().unwrap();
    let mut registry = Drivers::default();
    for d in drivers {
        registry.register(d);
    }
    let manager = Manager::new(
        "fake-node".into(),
        home.path().to_path_buf(),
        reqwest::Client::new(),
        registry,
    )
    .unwrap();
    Node {
        manager: Arc::new(manager),
        home,
    }
}

fn request(id: &str, account: Option<u32>) -> DeployRequest {
    DeployRequest {
        id: id.into(),
        hostname: id.into(),
        cpus: 1,
        ram: 64 << 20,
        boot: BootKind::Disk,
        cmdline: None,
        blobs: vec![],
        disk: None,
        memory: None,
        backing_format: None,
        nics: vec![],
        startup: None,
        services: vec![],
        repository: "https://127.0.0.1:1".into(),
        disk_key: None,
        addresses: vec![],
        account: account.map(|uid| AccountLease { uid }),
    }
}

fn job(id: &str) -> JobRequest {
    JobRequest {
        job: id.into(),
        argv: vec!["echo".into(), "hi".into()],
        env: vec![],
        cwd: None,
        stdin: None,
        timeout: None,
        user: None,
    }
}

#[tokio::test]
async fn each_workspace_is_driven_by_its_categorys_driver() {
    let (vm, acc) = (Fake::new(Category::Vm), Fake::new(Category::DynamicAccount));
    let n = node([vm.clone(), acc.clone()]);
    n.manager.deploy(request("ws-vm", None)).await.unwrap();
    n.manager
        .deploy(request("ws-acc", Some(1_000_000)))
        .await
        .unwrap();
    n.manager.start("ws-vm", None).await.unwrap();
    n.manager.start("ws-acc", None).await.unwrap();
    n.manager.pause("ws-acc").await.unwrap();
    assert_eq!(n.manager.status("ws-vm").await, VmState::Running);
    assert_eq!(n.manager.status("ws-acc").await, VmState::Paused);
    assert_eq!(
        vm.calls(),
        ["prepare ws-vm", "start ws-vm credentials=false"]
    );
    assert_eq!(
        acc.calls(),
        ["prepare ws-acc", "start ws-acc credentials=false"]
    );
    assert_eq!(n.manager.console("ws-acc"), acc.console("ws-acc"));
    let report = n.manager.report().await;
    assert_eq!(report.workspaces["ws-vm"], "running");
    assert_eq!(report.workspaces["ws-acc"], "paused");
    let u = &report.usage["ws-vm"];
    assert_eq!(
        (
            u.block_read_bytes,
            u.block_write_bytes,
            u.net_rx_bytes,
            u.net_tx_bytes
        ),
        (4096, 8192, 1, 2),
        "the driver's I/O counters are reported"
    );
}

#[tokio::test]
async fn a_category_the_node_does_not_run_is_refused_and_nothing_stays() {
    let n = node([Fake::new(Category::Vm)]);
    let refused = n
        .manager
        .deploy(request("ws-acc", Some(1_000_000)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            NodeError::Driver(DriverError::NoDriver(Category::DynamicAccount))
        ),
        "{refused:?}"
    );
    assert_eq!(refused.status_and_code().1, "unsupported");
    assert!(!n.home.path().join("vms/ws-acc").exists());
    assert!(n.manager.report().await.workspaces.is_empty());
}

#[tokio::test]
async fn what_a_driver_cannot_do_is_unsupported_and_the_workspace_goes_on() {
    let vm = Fake::new(Category::Vm);
    let n = node([vm.clone()]);
    n.manager.deploy(request("ws-1", None)).await.unwrap();
    n.manager.start("ws-1", None).await.unwrap();
    n.manager.pause("ws-1").await.unwrap();
    let refused = n.manager.snapshot("ws-1").await.unwrap_err();
    assert!(
        matches!(
            refused,
            NodeError::Driver(DriverError::Unsupported {
                category: Category::Vm,
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(refused.status_and_code().1, "unsupported");
    // Undeploying a paused workspace needs its memory saved: refused too,
    // and nothing is checked in.
    let refused = n.manager.undeploy("ws-1").await.unwrap_err();
    assert_eq!(refused.status_and_code().1, "wrong_state", "{refused}");
    n.manager.unpause("ws-1").await.unwrap();
    assert_eq!(n.manager.status("ws-1").await, VmState::Running);
    assert!(!vm.calls().iter().any(|c| c.starts_with("check-in")));
}

#[tokio::test]
async fn a_failed_start_leaves_the_workspace_deployed_and_startable() {
    let vm = Fake::new(Category::Vm);
    let n = node([vm.clone()]);
    n.manager.deploy(request("ws-1", None)).await.unwrap();
    *vm.fail_start.lock().unwrap() = true;
    let failed = n.manager.start("ws-1", None).await.unwrap_err();
    assert_eq!(failed.status_and_code().1, "boot_timeout");
    assert_eq!(n.manager.status("ws-1").await, VmState::Shutdown);
    let creds = WorkspaceCredentials {
        key: "k".into(),
        cert: "c".into(),
        ca: "a".into(),
        metadata: None,
    };
    n.manager.start("ws-1", Some(creds)).await.unwrap();
    assert_eq!(n.manager.status("ws-1").await, VmState::Running);
    assert_eq!(
        vm.calls().last().map(String::as_str),
        Some("start ws-1 credentials=true")
    );
}

#[tokio::test]
async fn a_cancelled_job_is_killed_only_if_it_outlives_the_grace() {
    let vm = Fake::new(Category::Vm);
    let n = node([vm.clone()]);
    n.manager.deploy(request("ws-1", None)).await.unwrap();
    n.manager.start("ws-1", None).await.unwrap();
    n.manager.run_job("ws-1", job("job-stays")).await.unwrap();
    n.manager.run_job("ws-1", job("job-ends")).await.unwrap();
    n.manager.cancel_job("job-stays").await.unwrap();
    n.manager.cancel_job("job-ends").await.unwrap();
    n.manager.job_finished("job-ends").await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let signals: Vec<String> = vm
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("signal"))
        .collect();
    assert_eq!(
        signals,
        [
            "signal job-stays SIGTERM",
            "signal job-ends SIGTERM",
            "signal job-stays SIGKILL"
        ]
    );
    // A job needs a program, and an unknown job cannot be cancelled.
    let mut empty = job("job-empty");
    empty.argv.clear();
    assert!(n.manager.run_job("ws-1", empty).await.is_err());
    let unknown = n.manager.cancel_job("job-none").await.unwrap_err();
    assert_eq!(unknown.status_and_code().1, "not_deployed");
}

#[tokio::test]
async fn a_job_the_driver_refuses_is_not_left_cancellable() {
    let vm = Fake::new(Category::Vm);
    let n = node([vm.clone()]);
    n.manager.deploy(request("ws-1", None)).await.unwrap();
    // Not started: the driver refuses the job.
    let refused = n.manager.run_job("ws-1", job("job-1")).await.unwrap_err();
    assert_eq!(refused.status_and_code().1, "not_deployed", "{refused}");
    let gone = n.manager.cancel_job("job-1").await.unwrap_err();
    assert_eq!(gone.status_and_code().1, "not_deployed");
}

#[tokio::test]
async fn undeploy_saves_a_paused_workspace_where_the_driver_can_and_checks_in() {
    let vm = Arc::new(Fake {
        category: Some(Category::Vm),
        saves: true,
        ..Fake::default()
    });
    let n = node([vm.clone()]);
    n.manager.deploy(request("ws-1", None)).await.unwrap();
    n.manager.start("ws-1", None).await.unwrap();
    let refused = n.manager.undeploy("ws-1").await.unwrap_err();
    assert_eq!(
        refused.status_and_code().1,
        "wrong_state",
        "a running one stays"
    );
    n.manager.pause("ws-1").await.unwrap();
    // The saved memory goes back to the repository, which is unreachable
    // here: the check-in fails as the repository's, and the workspace is
    // still deployed on this node.
    let failed = n.manager.undeploy("ws-1").await.unwrap_err();
    assert_eq!(
        failed.status_and_code().1,
        "repository_unreachable",
        "{failed}"
    );
    assert!(n.home.path().join("vms/ws-1/spec.json").exists());
    assert_eq!(
        vm.calls()[2..],
        ["save ws-1".to_string(), "check-in ws-1".to_string()]
    );
    // Saved and not resumed: unpause restores it from the saved memory.
    assert!(n.manager.unpause("ws-1").await.unwrap().is_some());
    assert_eq!(n.manager.status("ws-1").await, VmState::Running);
    assert_eq!(vm.calls().last().map(String::as_str), Some("restore ws-1"));
    assert!(!n.home.path().join("vms/ws-1/memory.state").exists());
}

#[tokio::test]
async fn a_stopped_workspace_checks_in_with_nothing_to_send_and_is_gone() {
    let acc = Fake::new(Category::DynamicAccount);
    let n = node([acc.clone()]);
    n.manager.deploy(request("ws-1", Some(7))).await.unwrap();
    n.manager.start("ws-1", None).await.unwrap();
    n.manager.stop("ws-1").await.unwrap();
    n.manager.undeploy("ws-1").await.unwrap();
    assert!(!n.home.path().join("vms/ws-1").exists());
    assert!(acc.calls().contains(&"check-in ws-1".to_string()));
    assert!(acc.calls().contains(&"stop ws-1 grace=5s".to_string()));
    let gone = n.manager.start("ws-1", None).await.unwrap_err();
    assert_eq!(gone.status_and_code().1, "not_deployed");
}

#[tokio::test]
async fn remove_ends_the_workspace_through_its_driver_and_takes_its_job_logs() {
    let vm = Fake::new(Category::Vm);
    let n = node([vm.clone()]);
    n.manager.deploy(request("ws-1", None)).await.unwrap();
    n.manager.start("ws-1", None).await.unwrap();
    n.manager.run_job("ws-1", job("job-1")).await.unwrap();
    let log = n.manager.job_log("job-1");
    assert!(log.exists());
    n.manager.put_file("ws-1", "/tmp/f", b"abc").await.unwrap();
    assert_eq!(
        n.manager.get_file("ws-1", "/tmp/f").await.unwrap(),
        b"contents"
    );
    n.manager.remove("ws-1").await.unwrap();
    assert!(vm.calls().contains(&"remove ws-1".to_string()));
    assert!(!log.exists(), "the job's log went with its workspace");
    assert!(!n.home.path().join("vms/ws-1").exists());
    assert_eq!(n.manager.status("ws-1").await, VmState::Shutdown);
    // Removing again is not an error: destroy may be retried.
    n.manager.remove("ws-1").await.unwrap();
}

#[tokio::test]
async fn adopted_jobs_can_be_cancelled_after_a_restart() {
    let acc = Fake::new(Category::DynamicAccount);
    let n = node([acc.clone()]);
    n.manager.deploy(request("ws-1", Some(7))).await.unwrap();
    acc.set("ws-1", VmState::Running);
    *acc.adoptable.lock().unwrap() = Adopted {
        workspaces: vec!["ws-1".into()],
        jobs: vec![("job-1".into(), "ws-1".into())],
    };
    assert_eq!(n.manager.adopt().await, ["ws-1"]);
    n.manager.cancel_job("job-1").await.unwrap();
    assert!(acc.calls().contains(&"signal job-1 SIGTERM".to_string()));
}
