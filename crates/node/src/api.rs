//! The node's HTTP API under /node/v1, called by the service.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use vws_model::node::{routes, DeployRequest, Deployed, Transitioned};

use crate::driver::{DriverError, VmState};
use crate::manager::{Manager, NodeError};
use crate::staging::StageError;

impl NodeError {
    /// HTTP status and stable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            NodeError::NotDeployed(_) | NodeError::Driver(DriverError::NotRunning(_)) => {
                (StatusCode::NOT_FOUND, "not_deployed")
            }
            NodeError::AlreadyDeployed(_) | NodeError::Driver(DriverError::WrongState { .. }) => {
                (StatusCode::CONFLICT, "wrong_state")
            }
            NodeError::Stage(StageError::NoSpace { .. }) => {
                (StatusCode::INSUFFICIENT_STORAGE, "no_space")
            }
            NodeError::Stage(StageError::CorruptChunk { .. } | StageError::CorruptFile { .. }) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "digest_mismatch")
            }
            NodeError::Stage(StageError::Http { .. }) | NodeError::CheckIn(_) => {
                (StatusCode::BAD_GATEWAY, "repository_unreachable")
            }
            NodeError::Driver(DriverError::BootTimeout { .. }) => {
                (StatusCode::GATEWAY_TIMEOUT, "boot_timeout")
            }
            NodeError::Driver(DriverError::Unsupported { .. } | DriverError::NoDriver(_)) => {
                (StatusCode::NOT_IMPLEMENTED, "unsupported")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "node_error"),
        }
    }
}

impl IntoResponse for NodeError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        tracing::warn!(error = %self, "node action failed");
        (
            status,
            Json(serde_json::json!({ "error": { "code": code, "message": self.to_string() } })),
        )
            .into_response()
    }
}

/// The node's router: the routes of [`vws_model::node::routes`].
pub fn router(manager: Arc<Manager>) -> Router {
    Router::new()
        .route(routes::HEALTH, get(health))
        .route(routes::DEPLOY, post(deploy))
        .route(routes::STAGING, get(staging))
        .route(routes::START, post(start))
        .route(routes::STOP, post(stop))
        .route(routes::PAUSE, post(pause))
        .route(routes::UNPAUSE, post(unpause))
        .route(routes::UNDEPLOY, post(undeploy))
        .route(routes::VM, get(status).delete(remove))
        .route(routes::CONSOLE, get(console))
        .route(routes::JOBS, post(run_job))
        .route(routes::SNAPSHOT, post(snapshot))
        .route(
            routes::FILES,
            get(get_file)
                .put(put_file)
                .layer(axum::extract::DefaultBodyLimit::max(64 << 20)),
        )
        .route(routes::INCOMING, post(incoming))
        .route(routes::INCOMING_FINISH, post(finish_incoming))
        .route(routes::MIGRATE, post(migrate_out))
        .route(routes::MIGRATION, get(migration))
        .route(routes::JOB_OUTPUT, get(job_output))
        .route(routes::CANCEL_JOB, post(cancel_job))
        .with_state(manager)
}

async fn health(State(m): State<Arc<Manager>>) -> Response {
    Json(m.report().await).into_response()
}

async fn deploy(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
    Json(req): Json<DeployRequest>,
) -> Result<Response, NodeError> {
    if req.id != id {
        return Err(NodeError::Other(anyhow::anyhow!(
            "deploy request for {} sent to {id}",
            req.id
        )));
    }
    let moved = m.deploy(req).await?;
    Ok(Json(Deployed { moved }).into_response())
}

async fn staging(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
) -> Result<Response, NodeError> {
    m.staging(&id)
        .await
        .map(|p| Json(p).into_response())
        .ok_or(NodeError::NotDeployed(id))
}

async fn incoming(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
    Json(req): Json<vws_model::node::IncomingRequest>,
) -> Result<Response, NodeError> {
    if req.deploy.id != id {
        return Err(NodeError::Other(anyhow::anyhow!(
            "migration request for {} sent to {id}",
            req.deploy.id
        )));
    }
    Ok(Json(m.incoming(req).await?).into_response())
}

async fn finish_incoming(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
    Json(done): Json<vws_model::node::MigrationDone>,
) -> Result<Response, NodeError> {
    m.finish_incoming(&id, done).await?;
    Ok(state_json(m.status(&id).await))
}

async fn migrate_out(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
    Json(to): Json<vws_model::node::MigrationTarget>,
) -> Result<Response, NodeError> {
    Ok(Json(m.migrate_out(&id, to).await?).into_response())
}

async fn migration(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
) -> Result<Response, NodeError> {
    m.migration(&id)
        .await
        .map(|p| Json(p).into_response())
        .ok_or(NodeError::NotDeployed(id))
}

fn state_json(s: VmState) -> Response {
    transitioned(s, None)
}

fn transitioned(s: VmState, forwards: Option<Vec<vws_model::node::Forward>>) -> Response {
    let state = serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    Json(Transitioned { state, forwards }).into_response()
}

fn start_request(body: &[u8]) -> Result<vws_model::node::StartRequest, NodeError> {
    if body.is_empty() {
        return Ok(Default::default());
    }
    serde_json::from_slice(body).map_err(|e| NodeError::Other(e.into()))
}

async fn start(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, NodeError> {
    let req = start_request(&body)?;
    let forwards = m.start(&id, req.credentials).await?;
    Ok(transitioned(m.status(&id).await, Some(forwards)))
}

async fn stop(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
) -> Result<Response, NodeError> {
    m.stop(&id).await?;
    Ok(state_json(m.status(&id).await))
}

async fn pause(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
) -> Result<Response, NodeError> {
    m.pause(&id).await?;
    Ok(state_json(m.status(&id).await))
}

async fn unpause(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, NodeError> {
    let req = start_request(&body)?;
    let forwards = m.unpause(&id).await?;
    if let Some(c) = req.credentials {
        m.install_credentials(&id, &c).await?;
    }
    Ok(transitioned(m.status(&id).await, forwards))
}

async fn undeploy(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
) -> Result<Response, NodeError> {
    m.undeploy(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn remove(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
) -> Result<Response, NodeError> {
    m.remove(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn status(State(m): State<Arc<Manager>>, Path(id): Path<String>) -> Response {
    state_json(m.status(&id).await)
}

#[derive(Deserialize)]
struct ConsoleQuery {
    #[serde(default)]
    follow: bool,
}

/// The console log; with `follow`, keeps sending what the guest writes until
/// it shuts down.
async fn console(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
    Query(q): Query<ConsoleQuery>,
) -> Result<Response, NodeError> {
    let path = m.console(&id);
    if !path.exists() {
        return Err(NodeError::NotDeployed(id));
    }
    if !q.follow {
        return Ok(tokio::fs::read(&path).await?.into_response());
    }
    let stream = futures::stream::unfold(
        (0u64, m, id, path, false),
        |(offset, m, id, path, last)| async move {
            if last {
                return None;
            }
            loop {
                let data = tokio::fs::read(&path).await.unwrap_or_default();
                if (data.len() as u64) > offset {
                    let chunk = data[offset as usize..].to_vec();
                    let next = data.len() as u64;
                    return Some((Ok::<_, std::io::Error>(chunk), (next, m, id, path, false)));
                }
                if m.status(&id).await == VmState::Shutdown {
                    return Some((Ok(Vec::new()), (offset, m, id, path, true)));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        },
    );
    Ok(axum::body::Body::from_stream(stream).into_response())
}

async fn run_job(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
    Json(req): Json<vws_model::node::JobRequest>,
) -> Result<Response, NodeError> {
    m.run_job(&id, req).await?;
    Ok(StatusCode::CREATED.into_response())
}

async fn cancel_job(
    State(m): State<Arc<Manager>>,
    Path(job): Path<String>,
) -> Result<Response, NodeError> {
    m.cancel_job(&job).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

#[derive(Deserialize)]
struct FileQuery {
    path: String,
}

async fn put_file(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
    body: axum::body::Bytes,
) -> Result<Response, NodeError> {
    m.put_file(&id, &q.path, &body).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_file(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
) -> Result<Response, NodeError> {
    Ok(m.get_file(&id, &q.path).await?.into_response())
}

/// A file's bytes from `offset` on (none if it cannot be read).
async fn read_from(path: &std::path::Path, offset: u64) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut data = Vec::new();
    if let Ok(mut f) = tokio::fs::File::open(path).await {
        if f.seek(std::io::SeekFrom::Start(offset)).await.is_ok() {
            let _ = f.read_to_end(&mut data).await;
        }
    }
    data
}

/// A job's events as NDJSON, from the start; with `follow`, until it ends.
async fn job_output(
    State(m): State<Arc<Manager>>,
    Path(job): Path<String>,
    Query(q): Query<ConsoleQuery>,
) -> Result<Response, NodeError> {
    let path = m.job_log(&job);
    if !path.exists() {
        return Err(NodeError::NotDeployed(format!("job {job}")));
    }
    let follow = q.follow;
    let stream = futures::stream::unfold(
        (0u64, path, false),
        move |(offset, path, done)| async move {
            if done {
                return None;
            }
            loop {
                // Armed before reading, so an append in between is not missed.
                let appended = crate::agent::LOG_APPENDED.notified();
                let data = read_from(&path, offset).await;
                // Only whole lines: the writer appends one event per line.
                let upto = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                if upto > 0 {
                    let chunk = data[..upto].to_vec();
                    let upto = offset + upto as u64;
                    let text = String::from_utf8_lossy(&chunk);
                    let ended = text.lines().any(|l| {
                        l.contains("\"event\":\"exited\"") || l.contains("\"event\":\"failed\"")
                    });
                    return Some((
                        Ok::<_, std::io::Error>(chunk),
                        (upto, path, ended || !follow),
                    ));
                }
                if !follow {
                    return None;
                }
                // Woken by the next append; the timeout covers writers elsewhere.
                let _ = tokio::time::timeout(Duration::from_millis(100), appended).await;
            }
        },
    );
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

async fn snapshot(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
) -> Result<Response, NodeError> {
    Ok(Json(m.snapshot(&id).await?).into_response())
}

/// The node's router behind mutual TLS: only the service's certificate may
/// call it (a client's or another node's is refused with 403).
pub fn secured(router: Router) -> Router {
    router.layer(axum::middleware::from_fn(
        |req: axum::extract::Request, next: axum::middleware::Next| async move {
            match req.extensions().get::<vws_pki::Peer>().map(|p| p.kind) {
                Some(vws_pki::Kind::Service) => next.run(req).await,
                other => {
                    let who = other.map_or("no", |k| k.as_str());
                    tracing::warn!(certificate = who, "refused a caller that is not the service");
                    (
                        StatusCode::FORBIDDEN,
                        Json(serde_json::json!({ "error": { "code": "forbidden",
                            "message": format!("only the service may call a node, not a {who} certificate") } })),
                    )
                        .into_response()
                }
            }
        },
    ))
}
