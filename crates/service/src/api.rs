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
/// [`crate::routes::ROUTES`]): the caller's kind, its name (for
/// nodes) and the ACL, from the route's [`Rule`].
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
        Auth::Local(who) => {
            return match rule {
                Rule::Client(class) | Rule::ClientOrNode(class) => {
                    state.service.authorize(who, class)
                }
                _ => Ok(()),
            }
        }
        Auth::Tls => {
            peer.ok_or_else(|| ServiceError::Unauthenticated("no client certificate".into()))?
        }
    };
    use vws_pki::Kind as K;
    match (rule, peer.kind) {
        (Rule::Open, _) => Ok(()),
        (Rule::Client(class) | Rule::ClientOrNode(class), K::Client) => {
            state.service.authorize(&peer.identity, class)
        }
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
        ("post", "/v1/workspaces/{id}/undeploy") => post(undeploy),
        ("post", "/v1/workspaces/{id}/start") => post(start),
        ("post", "/v1/workspaces/{id}/stop") => post(stop),
        ("post", "/v1/workspaces/{id}/pause") => post(pause),
        ("post", "/v1/workspaces/{id}/unpause") => post(unpause),
        ("get", "/v1/workspaces/{id}/staging") => get(staging),
        ("get", "/v1/workspaces/{id}/console") => get(console),
        ("get", "/v1/workspaces/{id}/disk") => get(disk),
        ("put", "/v1/workspaces/{id}/disk") => put(receive_disk).layer(unlimited()),
        ("get", "/v1/workspaces/{id}/disk/chunks") => get(disk_chunks),
        ("get", "/v1/workspaces/{id}/memory") => get(memory),
        ("put", "/v1/workspaces/{id}/memory") => put(receive_memory).layer(unlimited()),
        ("get", "/v1/workspaces/{id}/memory/chunks") => get(memory_chunks),
        ("get", "/v1/nodes") => get(nodes),
        ("post", "/v1/nodes") => post(register_node),
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

/// Builds the router: the routes of the access table, each behind the
/// guard that checks its rule.
pub fn router(state: AppState) -> Router {
    crate::routes::ROUTES
        .iter()
        .fold(Router::new(), |router, r| router.route(r.path, handler(r)))
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

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
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
    let (d, form) = description_body(&headers, b)?;
    let ws = s.service.create(&who, d, form, q.name).await?;
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
    let d = d.without_server_fields();
    Ok(Json(s.service.match_description(&who, &d, form).await?).into_response())
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
    let page = s
        .service
        .list(
            &who,
            Filter {
                owner: q.owner,
                state,
                category,
                limit: q.limit,
                after: q.after,
            },
        )
        .await?;
    Ok(Json(page).into_response())
}

async fn show(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ServiceError> {
    let mut ws = s.service.workspace(&who, &id).await?;
    ws.addresses = s.service.store().addresses_of(&id).await?;
    ws.account = s.service.store().account_of(&id).await?;
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
    s.service.destroy(&who, &id).await?;
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
    let ws = s
        .service
        .clone_workspace(&who, &id, name, changes.as_ref())
        .await?;
    Ok((StatusCode::CREATED, Json(ws)).into_response())
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
    Ok(Json(s.service.renew(&who, &id, req.lifetime).await?).into_response())
}

async fn history(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    Ok(Json(s.service.history(&who, &id).await?).into_response())
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
    Ok((
        StatusCode::CREATED,
        Json(s.service.import_image(&who, req).await?),
    )
        .into_response())
}

async fn images(State(s): State<AppState>, Caller(who): Caller) -> Result<Response, ServiceError> {
    Ok(Json(s.service.images(&who).await?).into_response())
}

async fn image(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(reference): Path<String>,
) -> Result<Response, ServiceError> {
    Ok(Json(s.service.image(&who, &reference).await?).into_response())
}

async fn remove_image(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(reference): Path<String>,
) -> Result<StatusCode, ServiceError> {
    s.service.remove_image(&who, &reference).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn has_blob(
    State(s): State<AppState>,
    _who: AnyCaller,
    Path(digest): Path<String>,
) -> Result<Response, ServiceError> {
    match s.service.has_blob(&digest).await? {
        Some(size) => Ok((
            StatusCode::OK,
            [(axum::http::header::CONTENT_LENGTH, size.to_string())],
        )
            .into_response()),
        None => Err(ServiceError::NotFound(format!("blob {digest} not found"))),
    }
}

async fn upload(
    State(s): State<AppState>,
    _who: AnyCaller,
    Path(digest): Path<String>,
    request: Request<axum::body::Body>,
) -> Result<Response, ServiceError> {
    let stream = request
        .into_body()
        .into_data_stream()
        .map_err(std::io::Error::other);
    let reader = tokio_util::io::StreamReader::new(stream);
    let (d, size) = s.service.put_blob(&digest, reader).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "digest": d.to_string(), "size": size })),
    )
        .into_response())
}

/// Serves a file with HTTP Range support (staging fetches chunks by range).
async fn serve_file(
    path: std::path::PathBuf,
    request: Request<axum::body::Body>,
) -> Result<Response, ServiceError> {
    use tower::ServiceExt;
    let resp = tower_http::services::ServeFile::new(path)
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
    if let AnyCaller::Client(who) = &who {
        s.service.check_blob_readable(who, &digest).await?;
    }
    let d: vws_store::Digest = digest.parse()?;
    if !s.service.blobs().contains(&d).await {
        return Err(ServiceError::NotFound(format!("blob {digest} not found")));
    }
    serve_file(s.service.blobs().path(&d), request).await
}

async fn blob_chunks(
    State(s): State<AppState>,
    who: AnyCaller,
    Path(digest): Path<String>,
) -> Result<Response, ServiceError> {
    if let AnyCaller::Client(who) = &who {
        s.service.check_blob_readable(who, &digest).await?;
    }
    let d: vws_store::Digest = digest.parse()?;
    if !s.service.blobs().contains(&d).await {
        return Err(ServiceError::NotFound(format!("blob {digest} not found")));
    }
    Ok(Json(s.service.blobs().manifest(&d).await?).into_response())
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
    Ok(Json(s.service.deploy(&who, &id, req.host.as_deref()).await?).into_response())
}

async fn undeploy(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    Ok(Json(s.service.undeploy(&who, &id).await?).into_response())
}

async fn start(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    Ok(Json(s.service.start(&who, &id).await?).into_response())
}

async fn stop(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    Ok(Json(s.service.stop(&who, &id).await?).into_response())
}

async fn pause(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    Ok(Json(s.service.pause(&who, &id).await?).into_response())
}

async fn unpause(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    Ok(Json(s.service.unpause(&who, &id).await?).into_response())
}

async fn staging(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    Ok(Json(s.service.staging(&who, &id).await?).into_response())
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
    let resp = s.service.console(&who, &id, q.follow).await?;
    Ok(relay(resp, "text/plain; charset=utf-8"))
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

async fn nodes(State(s): State<AppState>, _: Caller) -> Result<Response, ServiceError> {
    Ok(Json(s.service.nodes().await?).into_response())
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
    let req: crate::jobs::Submit = json_body(&headers, b)?
        .ok_or_else(|| ServiceError::BadRequest("expected {\"argv\": [...]}".into()))?;
    Ok((
        StatusCode::CREATED,
        Json(s.service.submit_job(&who, &id, req).await?),
    )
        .into_response())
}

async fn jobs(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    Ok(Json(s.service.jobs(&who, &id).await?).into_response())
}

async fn job(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(job): Path<String>,
) -> Result<Response, ServiceError> {
    Ok(Json(s.service.job(&who, &job).await?).into_response())
}

async fn cancel_job(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(job): Path<String>,
) -> Result<Response, ServiceError> {
    Ok(Json(s.service.cancel_job(&who, &job).await?).into_response())
}

async fn job_output(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(job): Path<String>,
    Query(q): Query<ConsoleQuery>,
) -> Result<Response, ServiceError> {
    let resp = s.service.job_output(&who, &job, q.follow).await?;
    Ok(relay(resp, "application/x-ndjson"))
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
    s.service
        .put_file(&who, &id, &q.path, data.to_vec())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_file(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
) -> Result<Response, ServiceError> {
    Ok(s.service
        .get_file(&who, &id, &q.path)
        .await?
        .into_response())
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
    Ok((
        StatusCode::CREATED,
        Json(
            s.service
                .submit_batch(&who, &id, batch.jobs, batch.concurrency)
                .await?,
        ),
    )
        .into_response())
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
    Ok((
        StatusCode::CREATED,
        Json(s.service.snapshot(&who, &id, name, tag).await?),
    )
        .into_response())
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
    Ok(Json(s.service.migrate(&who, &id, &req.to).await?).into_response())
}

async fn migration(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    Ok(Json(s.service.migration(&who, &id).await?).into_response())
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
    Ok(Json(
        s.service
            .sign_image(&who, &reference, &req.certificate, &req.signature)
            .await?,
    )
    .into_response())
}

async fn networks(State(s): State<AppState>, _: Caller) -> Result<Response, ServiceError> {
    Ok(Json(s.service.networks().await?).into_response())
}

async fn network(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(name): Path<String>,
) -> Result<Response, ServiceError> {
    Ok(Json(s.service.network(&who, &name).await?).into_response())
}

async fn crl(State(s): State<AppState>) -> Result<Response, ServiceError> {
    let pem = s.service.crl().await?;
    Ok(([(CONTENT_TYPE, "application/pkix-crl")], pem).into_response())
}
