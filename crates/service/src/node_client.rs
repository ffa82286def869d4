//! The service's side of the node protocol: one trait with the node's
//! operations, typed requests and replies from `vws_model::node`, the
//! routes of `vws_model::node::routes` (the node serves the same), one
//! mapping of a node's failures to [`ServiceError`]. [`HttpNodes`] speaks
//! it over mutual TLS; tests put a fake node behind the same trait to drive
//! the service's failure paths and rollbacks without QEMU.

use std::time::Duration;

use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use vws_model::node::{
    routes, DeployRequest, Deployed, IncomingRequest, JobRequest, MigrationDone, MigrationProgress,
    MigrationTarget, Snapshot, StagingProgress, StartRequest, Transitioned,
};
use vws_model::Verb;
use vws_store::NodeRecord;

use crate::error::ServiceError;

/// What the service asks of a node.
#[async_trait::async_trait]
pub trait NodeClient: Send + Sync + 'static {
    /// Stages a workspace (pool files and disk) onto the node.
    async fn deploy(
        &self,
        node: &NodeRecord,
        req: &DeployRequest,
    ) -> Result<Deployed, ServiceError>;
    /// How far its staging has come.
    async fn staging(&self, node: &NodeRecord, id: &str) -> Result<StagingProgress, ServiceError>;
    /// A lifecycle verb; start and unpause may carry the workspace's
    /// credential.
    async fn transition(
        &self,
        node: &NodeRecord,
        id: &str,
        verb: Verb,
        req: Option<&StartRequest>,
    ) -> Result<Transitioned, ServiceError>;
    /// Ends the workspace on the node at once, without checking it in.
    async fn remove(&self, node: &NodeRecord, id: &str) -> Result<(), ServiceError>;
    /// Its console log, streamed.
    async fn console(
        &self,
        node: &NodeRecord,
        id: &str,
        follow: bool,
    ) -> Result<reqwest::Response, ServiceError>;
    /// Starts a job.
    async fn run_job(
        &self,
        node: &NodeRecord,
        id: &str,
        req: &JobRequest,
    ) -> Result<(), ServiceError>;
    /// Cancels a job.
    async fn cancel_job(&self, node: &NodeRecord, job: &str) -> Result<(), ServiceError>;
    /// A job's events (NDJSON), streamed.
    async fn job_output(
        &self,
        node: &NodeRecord,
        job: &str,
        follow: bool,
    ) -> Result<reqwest::Response, ServiceError>;
    /// Saves memory and disk into the repository's blob store.
    async fn snapshot(&self, node: &NodeRecord, id: &str) -> Result<Snapshot, ServiceError>;
    /// Migration, target: get ready to receive.
    async fn incoming(
        &self,
        node: &NodeRecord,
        req: &IncomingRequest,
    ) -> Result<MigrationTarget, ServiceError>;
    /// Migration, source: send to the target and let go.
    async fn migrate(
        &self,
        node: &NodeRecord,
        id: &str,
        to: &MigrationTarget,
    ) -> Result<MigrationDone, ServiceError>;
    /// Migration, target: take over the jobs and resume.
    async fn finish_incoming(
        &self,
        node: &NodeRecord,
        id: &str,
        done: &MigrationDone,
    ) -> Result<(), ServiceError>;
    /// How far a migration has come (source).
    async fn migration(
        &self,
        node: &NodeRecord,
        id: &str,
    ) -> Result<MigrationProgress, ServiceError>;
    /// Writes a file into a running workspace.
    async fn put_file(
        &self,
        node: &NodeRecord,
        id: &str,
        path: &str,
        data: Vec<u8>,
    ) -> Result<(), ServiceError>;
    /// Reads a file out of a running workspace.
    async fn get_file(
        &self,
        node: &NodeRecord,
        id: &str,
        path: &str,
    ) -> Result<Vec<u8>, ServiceError>;
}

/// A node's failure as the service reports it (the one mapping): the
/// node's code and message; a conflict, a digest mismatch, a boot timeout
/// or a full disk keep their status, anything else is a bad gateway.
pub fn node_failure(node: &str, status: StatusCode, body: &[u8]) -> ServiceError {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let code = v["error"]["code"]
        .as_str()
        .unwrap_or("node_failed")
        .to_string();
    let message = v["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body).trim().to_string();
            if text.is_empty() {
                "the node failed".into()
            } else {
                text
            }
        });
    let status = match status.as_u16() {
        409 => StatusCode::CONFLICT,
        422 | 504 | 507 => status,
        _ => StatusCode::BAD_GATEWAY,
    };
    ServiceError::Node {
        node: node.into(),
        status,
        code,
        message,
    }
}

/// The node protocol over HTTPS (mutual TLS with the service's certificate).
#[derive(Clone, Debug)]
pub struct HttpNodes {
    http: reqwest::Client,
}

impl HttpNodes {
    /// A client presenting `credentials` (none: plain HTTP, for tests on
    /// loopback).
    pub fn new(credentials: Option<&vws_pki::Credentials>) -> anyhow::Result<HttpNodes> {
        let builder = match credentials {
            Some(c) => c.http_client()?,
            None => reqwest::Client::builder(),
        };
        Ok(HttpNodes {
            http: builder.connect_timeout(Duration::from_secs(5)).build()?,
        })
    }

    fn url(node: &NodeRecord, route: &str, param: &str) -> Result<String, ServiceError> {
        let path = routes::path(route, param).ok_or_else(|| {
            ServiceError::BadRequest(format!("{param:?} is not an id a node knows"))
        })?;
        Ok(format!("{}{path}", node.url))
    }

    /// Sends a request; a node that cannot be reached is 502
    /// `node_unreachable`, a refusal is mapped by [`node_failure`].
    async fn send(
        &self,
        node: &NodeRecord,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ServiceError> {
        let resp = req.send().await.map_err(|e| ServiceError::Node {
            node: node.name.clone(),
            status: StatusCode::BAD_GATEWAY,
            code: "node_unreachable".into(),
            message: format!("cannot reach node {} at {}: {e}", node.name, node.url),
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        Err(node_failure(&node.name, status, &body))
    }

    async fn post<B: Serialize + ?Sized>(
        &self,
        node: &NodeRecord,
        route: &str,
        param: &str,
        body: Option<&B>,
    ) -> Result<reqwest::Response, ServiceError> {
        let mut req = self.http.post(Self::url(node, route, param)?);
        if let Some(b) = body {
            req = req.json(b);
        }
        self.send(node, req).await
    }

    async fn get(
        &self,
        node: &NodeRecord,
        route: &str,
        param: &str,
        query: &[(&str, &str)],
    ) -> Result<reqwest::Response, ServiceError> {
        let req = self.http.get(Self::url(node, route, param)?).query(query);
        self.send(node, req).await
    }

    /// A log the node streams (console, job output), followed if asked.
    async fn stream(
        &self,
        node: &NodeRecord,
        route: &str,
        param: &str,
        follow: bool,
    ) -> Result<reqwest::Response, ServiceError> {
        let follow = follow.to_string();
        self.get(node, route, param, &[("follow", &follow)]).await
    }
}

/// Reads a node's JSON answer (a malformed one is the node's failure).
async fn reply<T: DeserializeOwned>(
    node: &NodeRecord,
    resp: reqwest::Response,
) -> Result<T, ServiceError> {
    resp.json().await.map_err(|e| ServiceError::Node {
        node: node.name.clone(),
        status: StatusCode::BAD_GATEWAY,
        code: "node_failed".into(),
        message: format!(
            "node {} answered what the service cannot read: {e}",
            node.name
        ),
    })
}

fn verb_route(verb: Verb) -> &'static str {
    match verb {
        Verb::Start => routes::START,
        Verb::Stop => routes::STOP,
        Verb::Pause => routes::PAUSE,
        Verb::Unpause => routes::UNPAUSE,
        Verb::Undeploy => routes::UNDEPLOY,
    }
}

#[async_trait::async_trait]
impl NodeClient for HttpNodes {
    async fn deploy(
        &self,
        node: &NodeRecord,
        req: &DeployRequest,
    ) -> Result<Deployed, ServiceError> {
        let resp = self.post(node, routes::DEPLOY, &req.id, Some(req)).await?;
        reply(node, resp).await
    }

    async fn staging(&self, node: &NodeRecord, id: &str) -> Result<StagingProgress, ServiceError> {
        reply(node, self.get(node, routes::STAGING, id, &[]).await?).await
    }

    async fn transition(
        &self,
        node: &NodeRecord,
        id: &str,
        verb: Verb,
        req: Option<&StartRequest>,
    ) -> Result<Transitioned, ServiceError> {
        let resp = self.post(node, verb_route(verb), id, req).await?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(Transitioned::default());
        }
        reply(node, resp).await
    }

    async fn remove(&self, node: &NodeRecord, id: &str) -> Result<(), ServiceError> {
        let req = self.http.delete(Self::url(node, routes::VM, id)?);
        self.send(node, req).await.map(drop)
    }

    async fn console(
        &self,
        node: &NodeRecord,
        id: &str,
        follow: bool,
    ) -> Result<reqwest::Response, ServiceError> {
        self.stream(node, routes::CONSOLE, id, follow).await
    }

    async fn run_job(
        &self,
        node: &NodeRecord,
        id: &str,
        req: &JobRequest,
    ) -> Result<(), ServiceError> {
        self.post(node, routes::JOBS, id, Some(req)).await.map(drop)
    }

    async fn cancel_job(&self, node: &NodeRecord, job: &str) -> Result<(), ServiceError> {
        self.post::<()>(node, routes::CANCEL_JOB, job, None)
            .await
            .map(drop)
    }

    async fn job_output(
        &self,
        node: &NodeRecord,
        job: &str,
        follow: bool,
    ) -> Result<reqwest::Response, ServiceError> {
        self.stream(node, routes::JOB_OUTPUT, job, follow).await
    }

    async fn snapshot(&self, node: &NodeRecord, id: &str) -> Result<Snapshot, ServiceError> {
        let resp = self.post::<()>(node, routes::SNAPSHOT, id, None).await?;
        reply(node, resp).await
    }

    async fn incoming(
        &self,
        node: &NodeRecord,
        req: &IncomingRequest,
    ) -> Result<MigrationTarget, ServiceError> {
        let resp = self
            .post(node, routes::INCOMING, &req.deploy.id, Some(req))
            .await?;
        reply(node, resp).await
    }

    async fn migrate(
        &self,
        node: &NodeRecord,
        id: &str,
        to: &MigrationTarget,
    ) -> Result<MigrationDone, ServiceError> {
        let resp = self.post(node, routes::MIGRATE, id, Some(to)).await?;
        reply(node, resp).await
    }

    async fn finish_incoming(
        &self,
        node: &NodeRecord,
        id: &str,
        done: &MigrationDone,
    ) -> Result<(), ServiceError> {
        self.post(node, routes::INCOMING_FINISH, id, Some(done))
            .await
            .map(drop)
    }

    async fn migration(
        &self,
        node: &NodeRecord,
        id: &str,
    ) -> Result<MigrationProgress, ServiceError> {
        reply(node, self.get(node, routes::MIGRATION, id, &[]).await?).await
    }

    async fn put_file(
        &self,
        node: &NodeRecord,
        id: &str,
        path: &str,
        data: Vec<u8>,
    ) -> Result<(), ServiceError> {
        let req = self
            .http
            .put(Self::url(node, routes::FILES, id)?)
            .query(&[("path", path)])
            .body(data);
        self.send(node, req).await.map(drop)
    }

    async fn get_file(
        &self,
        node: &NodeRecord,
        id: &str,
        path: &str,
    ) -> Result<Vec<u8>, ServiceError> {
        let resp = self.get(node, routes::FILES, id, &[("path", path)]).await?;
        let bytes = resp.bytes().await.map_err(|e| ServiceError::Node {
            node: node.name.clone(),
            status: StatusCode::BAD_GATEWAY,
            code: "node_failed".into(),
            message: format!("reading {path} from node {}: {e}", node.name),
        })?;
        Ok(bytes.to_vec())
    }
}
