//! `Idempotency-Key` on mutating requests (POST and DELETE): a client that
//! retries — after a timeout, a dropped connection, or against another
//! replica behind a load balancer — sends the same key, and gets the first
//! request's answer instead of a second create, deploy or destroy. Keys
//! are the caller's own (scoped by DN), kept a day, and bound to the
//! request they first came with (method, path, query and body): the same
//! key on another request is 422; a retry while the first is still being
//! handled is 409 `idempotency_in_progress`, until the first's replica is
//! found dead (its lease ran out) and the retry takes the key over. An
//! answer the server failed (5xx), or a 409 `settling` (another replica's
//! action holds the workspace for a moment), is not kept, so a retry runs
//! again. The record is in the database, so every replica sees it.

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::Digest;
use vws_store::Claim;

use crate::error::error_response;

/// The header.
pub const HEADER: &str = "idempotency-key";

/// The header a replayed answer carries.
pub const REPLAYED: &str = "idempotent-replayed";

/// The error code of a retry while the first request with its key is
/// still being handled (clients retry it after a pause).
pub const IN_PROGRESS: &str = "idempotency_in_progress";

/// How long a key is kept.
pub const KEPT_FOR: time::Duration = time::Duration::hours(24);

/// Largest request and answer bodies of a request with a key.
pub const MAX_BODY: usize = 1 << 20;

/// Whether a key is 1 to 255 visible ASCII characters.
pub fn valid_key(k: &str) -> bool {
    (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic())
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    error_response(status, code, message.into(), vec![])
}

/// Runs a request that carries a key for caller `who`: its first time, or
/// its kept answer (called by the API's layer inside the route guard, so
/// only callers a route admits get here). `None` for `who`: not a client's
/// request (a node's), which is run as it is.
pub(crate) async fn run(
    service: &crate::core::Service,
    who: Option<vws_model::Identity>,
    req: Request,
    next: Next,
) -> Response {
    if !matches!(*req.method(), Method::POST | Method::DELETE) {
        return next.run(req).await;
    }
    let key = match req.headers().get(HEADER).map(|v| v.to_str()) {
        None => return next.run(req).await,
        Some(Ok(k)) if valid_key(k) => k.to_string(),
        Some(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            )
        }
    };
    let Some(who) = who else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "a request with an Idempotency-Key carries at most 1 MiB",
        );
    };
    let mut h = sha2::Sha256::new();
    h.update(parts.method.as_str());
    h.update(b"\n");
    h.update(parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or(""));
    h.update(b"\n");
    h.update(&bytes);
    let fingerprint = hex::encode(h.finalize());
    let store = service.store();
    let now = service.clock().now();
    match store
        .claim_idempotency(&who.dn, &key, &fingerprint, service.instance(), now)
        .await
    {
        Err(e) => crate::error::ServiceError::from(e).into_response(),
        Ok(Claim::Mismatch) => refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for another request",
        ),
        Ok(Claim::InProgress) => refuse(
            StatusCode::CONFLICT,
            IN_PROGRESS,
            "the first request with this Idempotency-Key is still being handled; retry later",
        ),
        Ok(Claim::Replay {
            status,
            content_type,
            body,
        }) => {
            let mut r =
                (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body).into_response();
            if let Some(ct) = content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
                r.headers_mut().insert(axum::http::header::CONTENT_TYPE, ct);
            }
            r.headers_mut()
                .insert(REPLAYED, HeaderValue::from_static("true"));
            r
        }
        Ok(Claim::New) => {
            let answer = next
                .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await;
            let status = answer.status();
            let (rparts, rbody) = answer.into_parts();
            let kept = match axum::body::to_bytes(rbody, MAX_BODY).await {
                Ok(b) => b,
                Err(e) => {
                    let _ = store.forget_idempotency(&who.dn, &key).await;
                    tracing::warn!(error = %e, "an answer with an Idempotency-Key could not be read whole");
                    return refuse(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "the answer could not be kept for its Idempotency-Key",
                    );
                }
            };
            let text = std::str::from_utf8(&kept).ok();
            // Kept unless it says to try again: a server error, or the
            // workspace held by another replica's action for a moment.
            let again = |text: &str| {
                status.is_server_error()
                    || (status == StatusCode::CONFLICT
                        && serde_json::from_str::<serde_json::Value>(text)
                            .is_ok_and(|v| v["error"]["code"] == crate::error::SETTLING))
            };
            match text.filter(|t| !again(t)) {
                Some(text) => {
                    let ct = rparts
                        .headers
                        .get(axum::http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok());
                    if let Err(e) = store
                        .finish_idempotency(&who.dn, &key, status.as_u16(), ct, text)
                        .await
                    {
                        tracing::warn!(error = %e, "an answer could not be kept for its Idempotency-Key");
                    }
                }
                None => {
                    let _ = store.forget_idempotency(&who.dn, &key).await;
                }
            }
            Response::from_parts(rparts, axum::body::Body::from(kept))
        }
    }
}
