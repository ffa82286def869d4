//! The REST API under /v1 (ARCHITECTURE.md §5): thin handlers over
//! [`Service`], one error shape, strict bodies, request ids in every log line.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, head, post, put, MethodRouter};
use axum::{Json, Router};
use futures::TryStreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use vws_model::{Category, Form, Identity, State as WsState};
use vws_store::Filter;

use crate::command::{Command, Reply, Verb};
use crate::core::Service;
use crate::error::{error_response, ServiceError};
use crate::pool::ImportRequest;
use crate::routes::Rule;

/// Largest request body outside blob uploads (descriptions, JSON requests).
pub const MAX_BODY: usize = 1 << 20;

/// How a request's identity is established.
#[derive(Clone, Debug)]
pub enum Auth {
    /// Every request acts as this identity (in-process tests).
    Local(Identity),
    /// Mutual TLS: the client certificate's [`vws_pki::Peer`], put in the
    /// request's extensions by [`vws_pki::serve::serve_tls`].
    Tls,
}

/// What handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The core.
    pub service: Arc<Service>,
    /// How callers are identified.
    pub auth: Auth,
}

/// The caller of a request.
pub struct Caller(pub Identity);

fn peer(parts: &Parts) -> Result<&vws_pki::Peer, ServiceError> {
    parts
        .extensions
        .get::<vws_pki::Peer>()
        .ok_or_else(|| ServiceError::Unauthenticated("no client certificate".into()))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ServiceError;

    /// Client actions take client certificates only: a node's certificate
    /// cannot act for a user.
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match &state.auth {
            Auth::Local(id) => Ok(Caller(id.clone())),
            Auth::Tls => {
                let p = peer(parts)?;
                match p.kind {
                    vws_pki::Kind::Client => Ok(Caller(p.identity.clone())),
                    kind => Err(ServiceError::Forbidden(format!(
                        "a {} certificate cannot call client actions",
                        kind.as_str()
                    ))),
                }
            }
        }
    }
}

/// The node calling (registration, heartbeats, reports, check-in): its
/// certificate's CN is its name, and it may speak only for itself.
pub struct NodeCaller(Option<String>);

impl NodeCaller {
    /// Refuses a node speaking for another.
    pub fn check(&self, name: &str) -> Result<(), ServiceError> {
        match &self.0 {
            Some(cn) if cn != name => Err(ServiceError::Forbidden(format!(
                "node {cn} cannot act as node {name}"
            ))),
            _ => Ok(()),
        }
    }
}

impl FromRequestParts<AppState> for NodeCaller {
    type Rejection = ServiceError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match &state.auth {
            Auth::Local(_) => Ok(NodeCaller(None)),
            Auth::Tls => {
                let p = peer(parts)?;
                match p.kind {
                    vws_pki::Kind::Node => {
                        Ok(NodeCaller(crate::routes::common_name(&p.identity.dn)))
                    }
                    kind => Err(ServiceError::Forbidden(format!(
                        "only nodes may do this, not a {} certificate",
                        kind.as_str()
                    ))),
                }
            }
        }
    }
}

/// A client or a node: blobs, and the disk and memory a node stages and
/// returns (nodes are trusted with every workspace placed on them).
pub enum AnyCaller {
    /// A client.
    Client(Identity),
    /// A node.
    Node,
}

impl FromRequestParts<AppState> for AnyCaller {
    type Rejection = ServiceError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match &state.auth {
            Auth::Local(id) => Ok(AnyCaller::Client(id.clone())),
            Auth::Tls => {
                let p = peer(parts)?;
                match p.kind {
                    vws_pki::Kind::Client => Ok(AnyCaller::Client(p.identity.clone())),
                    vws_pki::Kind::Node => Ok(AnyCaller::Node),
                    kind => Err(ServiceError::Forbidden(format!(
                        "a {} certificate cannot do this",
                        kind.as_str()
                    ))),
                }
            }
        }
    }
}

/// Every (method, path) the API serves, from the access table
/// ([`crate::routes::ROUTES`]); the checked-in OpenAPI document must list
/// exactly these (a test holds them together).
pub fn routes() -> impl Iterator<Item = (&'static str, &'static str)> {
    crate::routes::ROUTES.iter().map(|r| (r.method, r.path))
}

/// The OpenAPI document, checked in beside the code.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Builds the router.
/// The `name` segment of a `/v1/nodes/{name}/…` path.
fn node_in_path(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/nodes/")?.split('/').next()
}

/// The `id` segment of a `/v1/workspaces/{id}/…` path.
fn workspace_in_path(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/workspaces/")?.split('/').next()
}

/// The guard every route is served behind (its rule from
/// [`crate::routes::ROUTES`]): the caller's kind and its name (for
/// nodes), from the route's [`Rule`]. The ACL class is the command's to
/// check, at the core's door ([`Service::execute`]).
pub async fn guard(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // What the check needs, taken out of the request (whose body is not
    // Sync, so it cannot be held across the check's awaits).
    let matched = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let peer = req.extensions().get::<vws_pki::Peer>().cloned();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // Every path parameter matches its grammar before anything reads it.
    let (mut parts, body) = req.into_parts();
    if let Ok(params) = axum::extract::RawPathParams::from_request_parts(&mut parts, &state).await {
        for (name, value) in &params {
            if let Err(m) = crate::path_params::check_param(name, value) {
                return ServiceError::BadRequest(m).into_response();
            }
        }
    }
    let req = Request::from_parts(parts, body);
    match check(&state, &method, matched, &path, peer.as_ref()).await {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

async fn check(
    state: &AppState,
    method: &axum::http::Method,
    matched: Option<axum::extract::MatchedPath>,
    path: &str,
    peer: Option<&vws_pki::Peer>,
) -> Result<(), ServiceError> {
    let Some(matched) = matched else {
        return Err(ServiceError::Internal(anyhow::anyhow!(
            "request reached the guard without a matched route"
        )));
    };
    let Some(rule) = crate::routes::rule_of(method, matched.as_str()) else {
        return Err(ServiceError::Internal(anyhow::anyhow!(
            "route {method} {} has no access rule",
            matched.as_str()
        )));
    };
    let peer = match &state.auth {
        // In-process callers are trusted as the identity they were given,
        // and as any node (tests of the node-facing routes).
        Auth::Local(_) => return Ok(()),
        Auth::Tls => {
            peer.ok_or_else(|| ServiceError::Unauthenticated("no client certificate".into()))?
        }
    };
    use vws_pki::Kind as K;
    match (rule, peer.kind) {
        (Rule::Open, _) => Ok(()),
        // The command checks the ACL class at the core's door.
        (Rule::Client(_) | Rule::ClientOrNode(_), K::Client) => Ok(()),
        (Rule::ClientOrNode(_), K::Node) => Ok(()),
        (Rule::SelfNode, K::Node) => {
            // Registration names the node in its body; the handler checks it.
            match node_in_path(path) {
                Some(name) if Some(name) != crate::routes::node_name(peer).as_deref() => {
                    Err(ServiceError::Forbidden(format!(
                        "node {} cannot act as node {name}",
                        crate::routes::node_name(peer).unwrap_or_default()
                    )))
                }
                _ => Ok(()),
            }
        }
        (Rule::HoldingNode, K::Node) => {
            let id = workspace_in_path(path).unwrap_or_default();
            let holds = match state.service.store().workspace(id).await? {
                Some(r) => {
                    let me = crate::routes::node_name(peer);
                    me.is_some() && (r.lock_holder == me || r.node == me)
                }
                None => false,
            };
            if holds {
                Ok(())
            } else {
                Err(ServiceError::NotFound(format!(
                    "workspace {id} is not held by this node"
                )))
            }
        }
        (Rule::Client(_), kind) => Err(ServiceError::Forbidden(format!(
            "a {} certificate cannot call client actions",
            kind.as_str()
        ))),
        (Rule::SelfNode | Rule::HoldingNode, kind) => Err(ServiceError::Forbidden(format!(
            "only nodes may do this, not a {} certificate",
            kind.as_str()
        ))),
        (Rule::ClientOrNode(_), kind) => Err(ServiceError::Forbidden(format!(
            "a {} certificate cannot do this",
            kind.as_str()
        ))),
    }
}

/// Counts and times each request by its route (the matched path, so ids
/// do not make labels of their own).
async fn observe(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let method = req.method().to_string();
    let resp = next.run(req).await;
    state
        .service
        .metrics()
        .observe(&route, &method, resp.status().as_u16(), started);
    resp
}

/// The metrics endpoint, served on its own listener (docs/metrics.md).
pub fn metrics_router(service: Arc<Service>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(s): State<Arc<Service>>| async move {
                match s.metrics_text().await {
                    Ok(text) => (
                        [(
                            CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                        .into_response(),
                    Err(e) => e.into_response(),
                }
            }),
        )
        .with_state(service)
}

/// The handler of a route of the table. A route gets into the router only
/// through the table (so it cannot lack an access rule), and a rule without
/// a handler here stops the router from being built.
fn handler(route: &crate::routes::Route) -> MethodRouter<AppState> {
    // Uploads stream to disk with limits of their own.
    let unlimited = DefaultBodyLimit::disable;
    match (route.method, route.path) {
        ("get", "/v1/health") => get(health),
        ("get", "/v1/openapi.json") => get(openapi),
        ("post", "/v1/workspaces") => post(create),
        ("post", "/v1/match") => post(match_description),
        ("get", "/v1/workspaces") => get(list),
        ("get", "/v1/workspaces/{id}") => get(show),
        ("delete", "/v1/workspaces/{id}") => delete(destroy),
        ("post", "/v1/workspaces/{id}/clone") => post(clone),
        ("post", "/v1/workspaces/{id}/renew") => post(renew),
        ("get", "/v1/workspaces/{id}/history") => get(history),
        ("post", "/v1/images") => post(import),
        ("get", "/v1/images") => get(images),
        ("post", "/v1/images/pull") => post(pull_image),
        ("post", "/v1/images/oci") => post(import_oci),
        ("post", "/v1/images/{reference}/push") => post(push_image),
        ("get", "/v1/operations/{operation}") => get(operation),
        ("get", "/v1/images/{reference}") => get(image),
        ("delete", "/v1/images/{reference}") => delete(remove_image),
        ("post", "/v1/images/{reference}/signature") => post(sign_image),
        ("put", "/v1/blobs/{digest}") => put(upload).layer(unlimited()),
        ("head", "/v1/blobs/{digest}") => head(has_blob),
        ("get", "/v1/blobs/{digest}") => get(download),
        ("get", "/v1/blobs/{digest}/chunks") => get(blob_chunks),
        ("post", "/v1/workspaces/{id}/deploy") => post(deploy),
        ("post", "/v1/workspaces/{id}/snapshot") => post(snapshot),
        ("post", "/v1/workspaces/{id}/migrate") => post(migrate),
        ("get", "/v1/workspaces/{id}/migration") => get(migration),
        ("post", path) if verb_of(path).is_some() => {
            let verb = verb_of(path).expect("matched");
            post(
                move |State(s): State<AppState>, Caller(who): Caller, Path(id): Path<String>| {
                    transition(s, who, id, verb)
                },
            )
        }
        ("get", "/v1/workspaces/{id}/staging") => get(staging),
        ("get", "/v1/workspaces/{id}/console") => get(console),
        ("get", "/v1/workspaces/{id}/disk") => get(disk),
        ("put", "/v1/workspaces/{id}/disk") => put(receive_disk).layer(unlimited()),
        ("get", "/v1/workspaces/{id}/disk/chunks") => get(disk_chunks),
        ("get", "/v1/workspaces/{id}/memory") => get(memory),
        ("put", "/v1/workspaces/{id}/memory") => put(receive_memory).layer(unlimited()),
        ("get", "/v1/workspaces/{id}/memory/chunks") => get(memory_chunks),
        ("get", "/v1/nodes") => get(nodes),
        ("get", "/v1/events") => get(events),
        ("post", "/v1/ui/links") => post(sign_in_link),
        ("post", "/v1/keys") => post(create_access_key),
        ("get", "/v1/keys") => get(access_keys),
        ("delete", "/v1/keys/{key}") => delete(revoke_access_key),
        ("post", "/v1/nodes") => post(register_node),
        ("post", "/v1/agreements") => post(offer_agreement),
        ("get", "/v1/agreements") => get(agreements),
        ("get", "/v1/agreements/{agreement}") => get(show_agreement),
        ("post", "/v1/agreements/{agreement}/accept") => post(accept_agreement),
        ("post", "/v1/agreements/{agreement}/cancel") => post(cancel_agreement),
        ("post", "/v1/agreements/{agreement}/offers") => post(renegotiate),
        ("get", "/v1/networks") => get(networks),
        ("get", "/v1/networks/{name}") => get(network),
        ("get", "/v1/pki/crl") => get(crl),
        ("post", "/v1/nodes/{name}/heartbeat") => post(heartbeat),
        ("post", "/v1/nodes/{name}/events") => post(node_event),
        ("post", "/v1/nodes/{name}/jobs/{job}") => post(job_report),
        ("get", "/v1/workspaces/{id}/jobs") => get(jobs),
        ("post", "/v1/workspaces/{id}/jobs") => post(submit_job),
        ("post", "/v1/workspaces/{id}/jobs/batch") => post(submit_batch),
        ("get", "/v1/jobs/{job}") => get(job),
        ("get", "/v1/jobs/{job}/output") => get(job_output),
        ("post", "/v1/jobs/{job}/cancel") => post(cancel_job),
        ("get", "/v1/workspaces/{id}/files") => get(get_file),
        ("put", "/v1/workspaces/{id}/files") => {
            put(put_file).layer(DefaultBodyLimit::max(64 << 20))
        }
        (method, path) => panic!("route {method} {path} has an access rule but no handler"),
    }
}

/// The verb of a `/v1/workspaces/{id}/VERB` route, for the lifecycle
/// verbs.
fn verb_of(path: &str) -> Option<Verb> {
    let verb = path.strip_prefix("/v1/workspaces/{id}/")?;
    Verb::ALL.into_iter().find(|v| v.as_str() == verb)
}

impl AppState {
    /// Runs a command as `who` through the core's door.
    async fn run(&self, who: &Identity, command: Command) -> Result<Reply, ServiceError> {
        self.service.execute(who, command).await
    }

    /// Runs a command and renders its reply.
    async fn reply(&self, who: &Identity, command: Command) -> Result<Response, ServiceError> {
        Ok(self.run(who, command).await?.into_response())
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        match self {
            Reply::Workspace(ws) => Json(ws).into_response(),
            Reply::Workspaces(page) => Json(page).into_response(),
            Reply::Match(m) => Json(m).into_response(),
            Reply::History(h) => Json(h).into_response(),
            Reply::Staging(p) => Json(p).into_response(),
            Reply::Migration(p) => Json(p).into_response(),
            Reply::Document(v) => Json(v).into_response(),
            Reply::Stream { body, content_type } => relay(body, content_type),
            Reply::Jobs(j) => Json(j).into_response(),
            Reply::Job(j) => Json(j).into_response(),
            Reply::Bytes(b) => b.into_response(),
            Reply::Image(i) => Json(i).into_response(),
            Reply::Images(i) => Json(i).into_response(),
            Reply::Blob { digest, size } => {
                Json(serde_json::json!({ "digest": digest, "size": size })).into_response()
            }
            // Served with ranges by its handler, which has the request.
            Reply::File(_) => unexpected().into_response(),
            Reply::Chunks(m) => Json(m).into_response(),
            Reply::Nodes(n) => Json(n).into_response(),
            Reply::Events { events, .. } => Json(events).into_response(),
            Reply::Operation(o) => Json(o).into_response(),
            Reply::Agreement(a) => Json(a).into_response(),
            Reply::Agreements(a) => Json(a).into_response(),
            Reply::Done => StatusCode::NO_CONTENT.into_response(),
        }
    }
}

/// Builds the router: the routes of the access table, each behind the
/// guard that checks its rule.
pub fn router(state: AppState) -> Router {
    crate::routes::ROUTES
        .iter()
        .fold(Router::new(), |router, r| router.route(r.path, handler(r)))
        // Retried mutations answered once (inside the guard).
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), idempotent))
        // Who may call each route is decided here, before any handler runs.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        // Counted and timed, refusals included (docs/metrics.md).
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .with_state(state)
        .layer(axum::middleware::map_response(one_error_shape))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(CatchPanicLayer::custom(|_| {
            error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error".into(), vec![])
        }))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// Retried mutations answered once ([`crate::idempotency`]), for the
/// client whose request it is.
async fn idempotent(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (mut parts, body) = req.into_parts();
    let who = Caller::from_request_parts(&mut parts, &state)
        .await
        .ok()
        .map(|Caller(who)| who);
    let req = axum::extract::Request::from_parts(parts, body);
    crate::idempotency::run(&state.service, who, req, next).await
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains
/// in-flight requests for at most `grace`.
pub async fn serve(
    router: Router,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = tx.send(());
    });
    let drained = async move {
        let _ = rx.await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        r = server => r,
        _ = drained => {
            tracing::warn!("requests still running after the grace period; stopping anyway");
            Ok(())
        }
    }
}

/// Rewrites errors produced outside the handlers (axum's own extractor
/// rejections, such as a bad query string) into the one error shape.
async fn one_error_shape(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 10)
        .await
        .unwrap_or_default();
    let message = String::from_utf8_lossy(&bytes).trim().to_string();
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
        s if s.is_server_error() => "internal",
        _ => "error",
    };
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        message
    };
    error_response(status, code, message, vec![])
}

async fn no_route() -> ServiceError {
    ServiceError::NotFound("no such API route (see /v1/openapi.json)".into())
}

async fn no_method() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route".into(),
        vec![],
    )
}

fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ServiceError> {
    b.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ServiceError::TooLarge(format!("request body is larger than {} bytes", MAX_BODY))
        } else {
            ServiceError::BadRequest(format!("could not read the request body: {e}"))
        }
    })
}

/// Reads a JSON body strictly; an empty body is `None`.
fn json_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Option<T>, ServiceError> {
    let b = body(b)?;
    if b.is_empty() {
        return Ok(None);
    }
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if Form::from_content_type(ct) != Some(Form::Json) {
        return Err(ServiceError::UnsupportedMediaType(format!(
            "expected Content-Type application/json, got {ct:?}"
        )));
    }
    serde_json::from_slice(&b)
        .map(Some)
        .map_err(|e| ServiceError::BadRequest(format!("invalid JSON body: {e}")))
}

/// `GET /v1/health`: whether this replica is up and reaches its database
/// (what a load balancer's health check asks: 503 takes it out of rotation).
async fn health(State(s): State<AppState>) -> Response {
    let version = env!("CARGO_PKG_VERSION");
    let reached = tokio::time::timeout(Duration::from_secs(2), s.service.store().ping()).await;
    match reached {
        Ok(Ok(())) => Json(
            serde_json::json!({ "status": "ok", "version": version, "database": "ok",
                "replica": s.service.instance() }),
        )
        .into_response(),
        Ok(Err(e)) => unhealthy(&s, &e.to_string()),
        Err(_) => unhealthy(&s, "no answer within 2 s"),
    }
}

fn unhealthy(s: &AppState, why: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(
            serde_json::json!({ "status": "unavailable", "version": env!("CARGO_PKG_VERSION"),
            "database": format!("unreachable: {why}"), "replica": s.service.instance() }),
        ),
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        OPENAPI,
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateQuery {
    name: Option<String>,
}

async fn create(
    State(s): State<AppState>,
    Caller(who): Caller,
    Query(q): Query<CreateQuery>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    let (description, form) = description_body(&headers, b)?;
    let ws = s
        .run(
            &who,
            Command::Create {
                description,
                form,
                name: q.name,
            },
        )
        .await?
        .into_workspace()?;
    let location = format!("/v1/workspaces/{}", ws.record.id);
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::LOCATION, location)],
        Json(ws),
    )
        .into_response())
}

/// A description in the form its Content-Type names.
fn description_body(
    headers: &HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<(vws_model::Description, Form), ServiceError> {
    let b = body(b)?;
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let form = Form::from_content_type(ct).ok_or_else(|| {
        ServiceError::UnsupportedMediaType(format!(
            "a description is application/xml, application/toml or application/json, not {ct:?}"
        ))
    })?;
    let text = std::str::from_utf8(&b)
        .map_err(|_| ServiceError::BadRequest("the description is not UTF-8".into()))?;
    Ok((vws_model::parse(text, form)?, form))
}

/// The images of the pool judged against a description: a dry run of the
/// factory's choice (the paper's "workspaces can be selected").
async fn match_description(
    State(s): State<AppState>,
    Caller(who): Caller,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    let (d, form) = description_body(&headers, b)?;
    let description = d.without_server_fields();
    s.reply(&who, Command::Match { description, form }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    owner: Option<String>,
    category: Option<String>,
    limit: Option<u32>,
    after: Option<String>,
}

async fn list(
    State(s): State<AppState>,
    Caller(who): Caller,
    Query(q): Query<ListQuery>,
) -> Result<Response, ServiceError> {
    let state = q
        .state
        .map(|v| {
            WsState::parse(&v)
                .ok_or_else(|| ServiceError::BadRequest(format!("{v:?} is not a state")))
        })
        .transpose()?;
    let category = q
        .category
        .map(|v| {
            Category::parse(&v)
                .ok_or_else(|| ServiceError::BadRequest(format!("{v:?} is not a category")))
        })
        .transpose()?;
    if q.limit == Some(0) || q.limit.is_some_and(|l| l > 1000) {
        return Err(ServiceError::BadRequest(
            "limit must be between 1 and 1000".into(),
        ));
    }
    let filter = Filter {
        owner: q.owner,
        state,
        category,
        limit: q.limit,
        after: q.after,
    };
    s.reply(&who, Command::ListWorkspaces(filter)).await
}

async fn show(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ServiceError> {
    let ws = s
        .run(&who, Command::ShowWorkspace { id })
        .await?
        .into_workspace()?;
    let accept = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // The description alone, in the form asked for; JSON gets the whole record.
    match Form::from_content_type(accept) {
        Some(form @ (Form::Xml | Form::Toml)) => {
            let text = vws_model::write(&ws.full_description(), form);
            Ok(([(CONTENT_TYPE, form.content_type())], text).into_response())
        }
        _ => Ok(Json(ws).into_response()),
    }
}

async fn destroy(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ServiceError> {
    s.run(&who, Command::Destroy { id }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct CloneRequest {
    name: Option<String>,
    /// A JSON merge patch (RFC 7386) over the source's description (JSON
    /// form): the clone's changes, checked as a create's description is.
    #[serde(default)]
    changes: Option<serde_json::Value>,
}

async fn clone(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    let req: Option<CloneRequest> = json_body(&headers, b)?;
    let (name, changes) = match req {
        Some(r) => (r.name, r.changes),
        None => (None, None),
    };
    let reply = s.run(&who, Command::Clone { id, name, changes }).await?;
    Ok((StatusCode::CREATED, reply).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewRequest {
    /// Seconds from now.
    lifetime: u64,
}

async fn renew(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    let req: RenewRequest = json_body(&headers, b)?.ok_or_else(|| {
        ServiceError::BadRequest("expected a body {\"lifetime\": SECONDS}".into())
    })?;
    let lifetime = req.lifetime;
    s.reply(&who, Command::Renew { id, lifetime }).await
}

async fn history(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    s.reply(&who, Command::History { id }).await
}

async fn import(
    State(s): State<AppState>,
    Caller(who): Caller,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    let req: ImportRequest = json_body(&headers, b)?.ok_or_else(|| {
        ServiceError::BadRequest("expected a JSON body naming the image and its blobs".into())
    })?;
    let reply = s.run(&who, Command::ImportImage(req)).await?;
    Ok((StatusCode::CREATED, reply).into_response())
}

async fn images(State(s): State<AppState>, Caller(who): Caller) -> Result<Response, ServiceError> {
    s.reply(&who, Command::Images).await
}

async fn image(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(reference): Path<String>,
) -> Result<Response, ServiceError> {
    s.reply(&who, Command::Image { reference }).await
}

async fn remove_image(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(reference): Path<String>,
) -> Result<StatusCode, ServiceError> {
    s.run(&who, Command::RemoveImage { reference }).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn has_blob(
    State(s): State<AppState>,
    who: AnyCaller,
    Path(digest): Path<String>,
) -> Result<Response, ServiceError> {
    let size = match who {
        AnyCaller::Client(who) => match s.run(&who, Command::HasBlob { digest }).await? {
            Reply::Blob { size, .. } => size,
            _ => return Err(unexpected()),
        },
        AnyCaller::Node => s
            .service
            .has_blob(&digest)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("blob {digest} not found")))?,
    };
    Ok((
        StatusCode::OK,
        [(axum::http::header::CONTENT_LENGTH, size.to_string())],
    )
        .into_response())
}

/// A reply of another kind than the command's (a bug in the core).
fn unexpected() -> ServiceError {
    ServiceError::Internal(anyhow::anyhow!("the command answered an unexpected reply"))
}

async fn upload(
    State(s): State<AppState>,
    who: AnyCaller,
    Path(digest): Path<String>,
    request: Request<axum::body::Body>,
) -> Result<Response, ServiceError> {
    let stream = request
        .into_body()
        .into_data_stream()
        .map_err(std::io::Error::other);
    let body = Box::new(tokio_util::io::StreamReader::new(stream));
    let reply = match who {
        AnyCaller::Client(who) => s.run(&who, Command::PutBlob { digest, body }).await?,
        AnyCaller::Node => {
            let (d, size) = s.service.put_blob(&digest, body).await?;
            Reply::Blob {
                digest: d.to_string(),
                size,
            }
        }
    };
    Ok((StatusCode::CREATED, reply).into_response())
}

/// Serves a file with HTTP Range support (staging fetches chunks by range).
async fn serve_file(
    path: std::path::PathBuf,
    request: Request<axum::body::Body>,
) -> Result<Response, ServiceError> {
    use tower::ServiceExt;
    // Reads of 1 MiB rather than 64 KiB: fewer wake-ups per staged chunk.
    let resp = tower_http::services::ServeFile::new(path)
        .with_buf_chunk_size(1 << 20)
        .oneshot(request)
        .await
        .map_err(|e| ServiceError::Internal(e.into()))?;
    Ok(resp.map(axum::body::Body::new))
}

async fn manifest_of(path: std::path::PathBuf) -> Result<Response, ServiceError> {
    let m = tokio::task::spawn_blocking(move || vws_store::manifest(&path))
        .await
        .map_err(|e| ServiceError::Internal(e.into()))?
        .map_err(|e| ServiceError::Internal(e.into()))?;
    Ok(Json(m).into_response())
}

async fn download(
    State(s): State<AppState>,
    who: AnyCaller,
    Path(digest): Path<String>,
    request: Request<axum::body::Body>,
) -> Result<Response, ServiceError> {
    let path = match who {
        AnyCaller::Client(who) => match s.run(&who, Command::ReadBlob { digest }).await? {
            Reply::File(path) => path,
            _ => return Err(unexpected()),
        },
        AnyCaller::Node => s.service.blob_path(&digest).await?,
    };
    serve_file(path, request).await
}

async fn blob_chunks(
    State(s): State<AppState>,
    who: AnyCaller,
    Path(digest): Path<String>,
) -> Result<Response, ServiceError> {
    match who {
        AnyCaller::Client(who) => s.reply(&who, Command::BlobChunks { digest }).await,
        AnyCaller::Node => Ok(Json(s.service.blob_manifest(&digest).await?).into_response()),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeployRequest {
    host: Option<String>,
}

async fn deploy(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    let req: DeployRequest = json_body(&headers, b)?.unwrap_or_default();
    let host = req.host;
    s.reply(&who, Command::Deploy { id, host }).await
}

/// Start, stop, pause, unpause and undeploy: one handler, the verb from
/// the route.
async fn transition(
    s: AppState,
    who: Identity,
    id: String,
    verb: Verb,
) -> Result<Response, ServiceError> {
    s.reply(&who, Command::Transition { id, verb }).await
}

async fn staging(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    s.reply(&who, Command::Staging { id }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleQuery {
    #[serde(default)]
    follow: bool,
}

async fn console(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Query(q): Query<ConsoleQuery>,
) -> Result<Response, ServiceError> {
    let follow = q.follow;
    s.reply(&who, Command::Console { id, follow }).await
}

/// Passes a node's streamed answer on to the client as it arrives.
fn relay(resp: reqwest::Response, content_type: &'static str) -> Response {
    let stream = resp.bytes_stream().map_err(std::io::Error::other);
    (
        [(CONTENT_TYPE, content_type)],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

async fn disk(
    State(s): State<AppState>,
    _who: AnyCaller,
    Path(id): Path<String>,
    request: Request<axum::body::Body>,
) -> Result<Response, ServiceError> {
    serve_file(s.service.disk_path(&id).await?, request).await
}

async fn disk_chunks(
    State(s): State<AppState>,
    _who: AnyCaller,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    manifest_of(s.service.disk_path(&id).await?).await
}

async fn receive_disk(
    State(s): State<AppState>,
    _node: NodeCaller,
    Path(id): Path<String>,
    request: Request<axum::body::Body>,
) -> Result<Response, ServiceError> {
    let digest = request
        .headers()
        .get("x-vws-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| {
            ServiceError::BadRequest("a returned disk needs its digest in x-vws-digest".into())
        })?;
    let stream = request
        .into_body()
        .into_data_stream()
        .map_err(std::io::Error::other);
    s.service
        .receive_disk(&id, &digest, tokio_util::io::StreamReader::new(stream))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn sign_in_link(
    State(s): State<AppState>,
    Caller(who): Caller,
) -> Result<Response, ServiceError> {
    let reply = s.reply(&who, Command::SignInLink).await?;
    Ok((StatusCode::CREATED, reply).into_response())
}

/// What `POST /v1/keys` takes: whom the key acts as (an administrator's
/// choice; the caller by default).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewKeyBody {
    #[serde(default)]
    identity: Option<Identity>,
}

async fn create_access_key(
    State(s): State<AppState>,
    Caller(who): Caller,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    let body: Option<NewKeyBody> = json_body(&headers, b)?;
    let identity = body.and_then(|b| b.identity);
    let reply = s.reply(&who, Command::CreateAccessKey { identity }).await?;
    Ok((StatusCode::CREATED, reply).into_response())
}

async fn access_keys(
    State(s): State<AppState>,
    Caller(who): Caller,
) -> Result<Response, ServiceError> {
    s.reply(&who, Command::AccessKeys).await
}

async fn revoke_access_key(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    s.reply(&who, Command::RevokeAccessKey { id }).await
}

/// A JSON body this endpoint cannot do without.
fn required_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<T, ServiceError> {
    json_body(headers, b)?.ok_or_else(|| ServiceError::BadRequest("a JSON body is required".into()))
}

async fn pull_image(
    State(s): State<AppState>,
    Caller(who): Caller,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    let req = required_json(&headers, b)?;
    let reply = s.reply(&who, Command::PullImage(req)).await?;
    Ok((StatusCode::ACCEPTED, reply).into_response())
}

async fn import_oci(
    State(s): State<AppState>,
    Caller(who): Caller,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    let req = required_json(&headers, b)?;
    let reply = s.reply(&who, Command::ImportOci(req)).await?;
    Ok((StatusCode::ACCEPTED, reply).into_response())
}

async fn push_image(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(reference): Path<String>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    let push = required_json(&headers, b)?;
    let reply = s
        .reply(&who, Command::PushImage { reference, push })
        .await?;
    Ok((StatusCode::ACCEPTED, reply).into_response())
}

async fn operation(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    s.reply(&who, Command::Operation { id }).await
}

async fn offer_agreement(
    State(s): State<AppState>,
    Caller(who): Caller,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    let req = required_json(&headers, b)?;
    let reply = s.reply(&who, Command::OfferAgreement(req)).await?;
    Ok((StatusCode::CREATED, reply).into_response())
}

async fn agreements(
    State(s): State<AppState>,
    Caller(who): Caller,
) -> Result<Response, ServiceError> {
    s.reply(&who, Command::Agreements).await
}

async fn show_agreement(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    s.reply(&who, Command::ShowAgreement { id }).await
}

async fn accept_agreement(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    s.reply(&who, Command::AcceptAgreement { id }).await
}

async fn cancel_agreement(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    s.reply(&who, Command::CancelAgreement { id }).await
}

async fn renegotiate(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    let change = required_json(&headers, b)?;
    let reply = s.reply(&who, Command::Renegotiate { id, change }).await?;
    Ok((StatusCode::CREATED, reply).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// The last sequence number seen (none: from now on).
    #[serde(default)]
    after: Option<i64>,
    /// Keep the stream open for new events (the default); false ends it
    /// once the backlog is sent.
    #[serde(default = "yes")]
    follow: bool,
}

fn yes() -> bool {
    true
}

/// `GET /v1/events`: server-sent events, each with its sequence number as
/// its id (a reconnecting client sends it back as `Last-Event-ID`) and its
/// kind as its type. The ACL and visibility are checked on every read, so
/// a stream stops at a revocation.
async fn events(
    State(s): State<AppState>,
    Caller(who): Caller,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ServiceError> {
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let after = resumed.or(q.after);
    if after.is_some_and(|a| a < 0) {
        return Err(ServiceError::BadRequest(
            "after must be a sequence number (0 or more)".into(),
        ));
    }
    // The first read answers errors (ACL, bad request) as errors.
    let (start, events) = crate::events::follow(s.service.clone(), who, after, q.follow).await?;
    Ok(sse(start, events))
}

/// Server-sent events: first `ready` with where the stream starts as its id,
/// then each event with its sequence number as its id and its kind as its
/// type (also the dashboard's live updates).
pub fn sse(
    start: i64,
    events: impl futures::Stream<Item = vws_model::records::Event> + Send + 'static,
) -> Response {
    use axum::response::sse::{Event as Sse, KeepAlive};
    use futures::StreamExt;
    let ready = Sse::default()
        .id(start.to_string())
        .event("ready")
        .data("{}");
    let stream = futures::stream::once(async move { ready })
        .chain(events.map(|ev| {
            Sse::default()
                .id(ev.seq.to_string())
                .event(ev.kind.as_str())
                .json_data(&ev)
                .expect("events serialize")
        }))
        .map(Ok::<_, std::convert::Infallible>);
    axum::response::sse::Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn nodes(State(s): State<AppState>, Caller(who): Caller) -> Result<Response, ServiceError> {
    s.reply(&who, Command::Nodes).await
}

async fn register_node(
    State(s): State<AppState>,
    node: NodeCaller,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    let reg: vws_model::node::Registration = json_body(&headers, b)?
        .ok_or_else(|| ServiceError::BadRequest("expected a registration".into()))?;
    node.check(&reg.name)?;
    s.service.register_node(reg).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn heartbeat(
    State(s): State<AppState>,
    node: NodeCaller,
    Path(name): Path<String>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    node.check(&name)?;
    let report: vws_model::node::NodeReport = json_body(&headers, b)?
        .ok_or_else(|| ServiceError::BadRequest("expected a node report".into()))?;
    s.service.node_heartbeat(&name, report).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn node_event(
    State(s): State<AppState>,
    node: NodeCaller,
    Path(name): Path<String>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    node.check(&name)?;
    let ev: vws_model::node::NodeEvent = json_body(&headers, b)?
        .ok_or_else(|| ServiceError::BadRequest("expected an event".into()))?;
    s.service.node_event(&name, ev).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn submit_job(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    let job: crate::jobs::Submit = json_body(&headers, b)?
        .ok_or_else(|| ServiceError::BadRequest("expected {\"argv\": [...]}".into()))?;
    let reply = s.run(&who, Command::SubmitJob { id, job }).await?;
    Ok((StatusCode::CREATED, reply).into_response())
}

async fn jobs(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    s.reply(&who, Command::Jobs { id }).await
}

async fn job(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(job): Path<String>,
) -> Result<Response, ServiceError> {
    s.reply(&who, Command::Job { job }).await
}

async fn cancel_job(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(job): Path<String>,
) -> Result<Response, ServiceError> {
    s.reply(&who, Command::CancelJob { job }).await
}

async fn job_output(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(job): Path<String>,
    Query(q): Query<ConsoleQuery>,
) -> Result<Response, ServiceError> {
    let follow = q.follow;
    s.reply(&who, Command::JobOutput { job, follow }).await
}

async fn job_report(
    State(s): State<AppState>,
    node: NodeCaller,
    Path((name, job)): Path<(String, String)>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    node.check(&name)?;
    let rep: vws_model::node::JobReport = json_body(&headers, b)?
        .ok_or_else(|| ServiceError::BadRequest("expected a job report".into()))?;
    s.service.job_ended(&name, &job, rep).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQuery {
    path: String,
}

async fn put_file(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    let data = b.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ServiceError::TooLarge("file larger than 64 MiB".into())
        } else {
            ServiceError::BadRequest(e.to_string())
        }
    })?;
    let (path, data) = (q.path, data.to_vec());
    s.reply(&who, Command::PutFile { id, path, data }).await
}

async fn get_file(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
) -> Result<Response, ServiceError> {
    let path = q.path;
    s.reply(&who, Command::GetFile { id, path }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    jobs: Vec<crate::jobs::Submit>,
    #[serde(default = "one")]
    concurrency: usize,
}

fn one() -> usize {
    1
}

async fn submit_batch(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    let batch: Batch = json_body(&headers, b)?.ok_or_else(|| {
        ServiceError::BadRequest("expected {\"jobs\": [...], \"concurrency\": N}".into())
    })?;
    let (jobs, concurrency) = (batch.jobs, batch.concurrency);
    let reply = s
        .run(
            &who,
            Command::SubmitBatch {
                id,
                jobs,
                concurrency,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, reply).into_response())
}

async fn memory_file(s: &AppState, id: &str) -> Result<std::path::PathBuf, ServiceError> {
    let path = s.service.memory_path(id);
    if !path.exists() {
        return Err(ServiceError::NotFound(format!(
            "workspace {id} has no saved memory state"
        )));
    }
    Ok(path)
}

async fn memory(
    State(s): State<AppState>,
    _who: AnyCaller,
    Path(id): Path<String>,
    request: Request<axum::body::Body>,
) -> Result<Response, ServiceError> {
    serve_file(memory_file(&s, &id).await?, request).await
}

async fn memory_chunks(
    State(s): State<AppState>,
    _who: AnyCaller,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    manifest_of(memory_file(&s, &id).await?).await
}

async fn receive_memory(
    State(s): State<AppState>,
    _node: NodeCaller,
    Path(id): Path<String>,
    request: Request<axum::body::Body>,
) -> Result<Response, ServiceError> {
    let digest = request
        .headers()
        .get("x-vws-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| {
            ServiceError::BadRequest(
                "a returned memory state needs its digest in x-vws-digest".into(),
            )
        })?;
    let stream = request
        .into_body()
        .into_data_stream()
        .map_err(std::io::Error::other);
    s.service
        .receive_memory(&id, &digest, tokio_util::io::StreamReader::new(stream))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotRequest {
    /// `name:tag` of the hot image.
    #[serde(rename = "as")]
    as_: String,
}

async fn snapshot(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    let req: SnapshotRequest = json_body(&headers, b)?
        .ok_or_else(|| ServiceError::BadRequest("expected {\"as\": \"NAME:TAG\"}".into()))?;
    let (name, tag) = req.as_.split_once(':').unwrap_or((&req.as_, "latest"));
    let (name, tag) = (name.to_string(), tag.to_string());
    let reply = s.run(&who, Command::Snapshot { id, name, tag }).await?;
    Ok((StatusCode::CREATED, reply).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrateRequest {
    /// Name of the target node.
    to: String,
}

async fn migrate(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    let req: MigrateRequest = json_body(&headers, b)?
        .ok_or_else(|| ServiceError::BadRequest("expected {\"to\": \"NODE\"}".into()))?;
    let to = req.to;
    s.reply(&who, Command::Migrate { id, to }).await
}

async fn migration(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    s.reply(&who, Command::Migration { id }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignRequest {
    /// The signer's certificate, PEM.
    certificate: String,
    /// ECDSA P-256 signature (ASN.1, base64) over the image's content id.
    signature: String,
}

async fn sign_image(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(reference): Path<String>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    let req: SignRequest = json_body(&headers, b)?.ok_or_else(|| {
        ServiceError::BadRequest("expected {\"certificate\": PEM, \"signature\": BASE64}".into())
    })?;
    let (certificate, signature) = (req.certificate, req.signature);
    let sign = Command::SignImage {
        reference,
        certificate,
        signature,
    };
    s.reply(&who, sign).await
}

async fn networks(
    State(s): State<AppState>,
    Caller(who): Caller,
) -> Result<Response, ServiceError> {
    s.reply(&who, Command::Networks).await
}

async fn network(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(name): Path<String>,
) -> Result<Response, ServiceError> {
    s.reply(&who, Command::Network { name }).await
}

async fn crl(State(s): State<AppState>) -> Result<Response, ServiceError> {
    let pem = s.service.crl().await?;
    Ok(([(CONTENT_TYPE, "application/pkix-crl")], pem).into_response())
}
