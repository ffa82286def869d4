//! A node behind the service's `NodeClient` trait, in memory: it records
//! what it was asked and fails the operations it is told to, so the
//! service's failure paths and rollbacks run without QEMU.

use std::collections::HashSet;
use std::sync::Mutex;

use axum::http::StatusCode;
use vws_model::node::{
    DeployRequest, Deployed, Forward, IncomingRequest, JobRequest, MigrationDone,
    MigrationProgress, MigrationTarget, Snapshot, StagingProgress, StartRequest, Transitioned,
};
use vws_service::command::Verb;
use vws_service::node_client::NodeClient;
use vws_service::ServiceError;
use vws_store::NodeRecord;

/// The fake. Calls are recorded as `"OP NODE ID"`.
#[derive(Default)]
pub struct FakeNode {
    calls: Mutex<Vec<String>>,
    failing: Mutex<HashSet<String>>,
    memory: Option<std::path::PathBuf>,
}

impl FakeNode {
    /// A fake whose check-ins return a memory state into `dir` (the
    /// service's `VWS_HOME/memory`), as a node uploads a paused
    /// workspace's.
    pub fn returning_memory(dir: std::path::PathBuf) -> FakeNode {
        FakeNode {
            memory: Some(dir),
            ..Default::default()
        }
    }

    /// Makes `op` (`deploy`, `start`, `snapshot`, `incoming`, `migrate`,
    /// `finish_incoming`, `remove`, …) fail from now on; `unreachable`
    /// in front (`unreachable remove`) fails it as a lost connection,
    /// `hang` in front never answers.
    pub fn fail(&self, op: &str) {
        self.failing.lock().unwrap().insert(op.to_string());
    }

    /// Lets every operation succeed again.
    pub fn heal(&self) {
        self.failing.lock().unwrap().clear();
    }

    /// What the service asked, in order.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    async fn call(&self, op: &str, node: &NodeRecord, id: &str) -> Result<(), ServiceError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("{op} {} {id}", node.name));
        let hangs = self.failing.lock().unwrap().contains(&format!("hang {op}"));
        if hangs {
            // A node that never answers: the caller is killed meanwhile.
            std::future::pending::<()>().await;
        }
        let failing = self.failing.lock().unwrap();
        if failing.contains(&format!("unreachable {op}")) {
            return Err(ServiceError::Node {
                node: node.name.clone(),
                status: StatusCode::BAD_GATEWAY,
                code: "node_unreachable".into(),
                message: format!("cannot reach node {}", node.name),
            });
        }
        if failing.contains(op) {
            let body = format!(
                r#"{{"error":{{"code":"node_error","message":"{op} failed on purpose"}}}}"#
            );
            return Err(vws_service::node_client::node_failure(
                &node.name,
                StatusCode::INTERNAL_SERVER_ERROR,
                body.as_bytes(),
            ));
        }
        Ok(())
    }
}

fn stream() -> reqwest::Response {
    reqwest::Response::from(axum::http::Response::new("fake output\n"))
}

#[async_trait::async_trait]
impl NodeClient for FakeNode {
    async fn deploy(
        &self,
        node: &NodeRecord,
        req: &DeployRequest,
    ) -> Result<Deployed, ServiceError> {
        self.call("deploy", node, &req.id).await?;
        Ok(Deployed { moved: 4096 })
    }

    async fn staging(&self, node: &NodeRecord, id: &str) -> Result<StagingProgress, ServiceError> {
        self.call("staging", node, id).await?;
        Ok(StagingProgress::default())
    }

    async fn transition(
        &self,
        node: &NodeRecord,
        id: &str,
        verb: Verb,
        _req: Option<&StartRequest>,
    ) -> Result<Transitioned, ServiceError> {
        self.call(verb.as_str(), node, id).await?;
        if let (Verb::Undeploy, Some(dir)) = (verb, &self.memory) {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(format!("{id}.state")), b"fake memory").unwrap();
        }
        let forwards = (verb == Verb::Start).then(|| {
            vec![Forward {
                port: 80,
                protocol: "tcp".into(),
                host: "127.0.0.1:18080".into(),
            }]
        });
        Ok(Transitioned {
            state: verb.as_str().into(),
            forwards,
        })
    }

    async fn remove(&self, node: &NodeRecord, id: &str) -> Result<(), ServiceError> {
        self.call("remove", node, id).await
    }

    async fn console(
        &self,
        node: &NodeRecord,
        id: &str,
        _follow: bool,
    ) -> Result<reqwest::Response, ServiceError> {
        self.call("console", node, id).await?;
        Ok(stream())
    }

    async fn run_job(
        &self,
        node: &NodeRecord,
        id: &str,
        _req: &JobRequest,
    ) -> Result<(), ServiceError> {
        self.call("run_job", node, id).await
    }

    async fn cancel_job(&self, node: &NodeRecord, job: &str) -> Result<(), ServiceError> {
        self.call("cancel_job", node, job).await
    }

    async fn job_output(
        &self,
        node: &NodeRecord,
        job: &str,
        _follow: bool,
    ) -> Result<reqwest::Response, ServiceError> {
        self.call("job_output", node, job).await?;
        Ok(stream())
    }

    async fn snapshot(&self, node: &NodeRecord, id: &str) -> Result<Snapshot, ServiceError> {
        self.call("snapshot", node, id).await?;
        Err(ServiceError::Internal(anyhow::anyhow!(
            "the fake node uploads no memory state"
        )))
    }

    async fn incoming(
        &self,
        node: &NodeRecord,
        req: &IncomingRequest,
    ) -> Result<MigrationTarget, ServiceError> {
        self.call("incoming", node, &req.deploy.id).await?;
        Ok(MigrationTarget {
            migrate_uri: "tcp:127.0.0.1:1".into(),
            nbd_uri: None,
            forwards: Vec::new(),
            tls_name: None,
        })
    }

    async fn migrate(
        &self,
        node: &NodeRecord,
        id: &str,
        _to: &MigrationTarget,
    ) -> Result<MigrationDone, ServiceError> {
        self.call("migrate", node, id).await?;
        Ok(MigrationDone {
            jobs: Vec::new(),
            running: true,
        })
    }

    async fn finish_incoming(
        &self,
        node: &NodeRecord,
        id: &str,
        _done: &MigrationDone,
    ) -> Result<(), ServiceError> {
        self.call("finish_incoming", node, id).await
    }

    async fn migration(
        &self,
        node: &NodeRecord,
        id: &str,
    ) -> Result<MigrationProgress, ServiceError> {
        self.call("migration", node, id).await?;
        Ok(MigrationProgress::default())
    }

    async fn put_file(
        &self,
        node: &NodeRecord,
        id: &str,
        _path: &str,
        _data: Vec<u8>,
    ) -> Result<(), ServiceError> {
        self.call("put_file", node, id).await
    }

    async fn get_file(
        &self,
        node: &NodeRecord,
        id: &str,
        _path: &str,
    ) -> Result<Vec<u8>, ServiceError> {
        self.call("get_file", node, id).await?;
        Ok(b"fake file".to_vec())
    }
}
