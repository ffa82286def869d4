//! Serving an axum router over mutual TLS: every connection must present a
//! certificate chained to the CA (checked by rustls, expiry included), not
//! revoked, carrying the vws extension; its [`Peer`] is put in each
//! request's extensions for the handlers' extractors.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tower::ServiceExt;

use crate::{peer_of, Peer, Revoked};

/// Runs each request's handler in a task of its own, so that a client
/// that goes away (killed, timed out) does not cut an action in half: a
/// start, a deploy or a migration goes on to its end and records it,
/// whether or not anyone reads the answer.
async fn to_completion(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::spawn(next.run(req)).await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(error = %e, "a request's handler panicked");
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(serde_json::json!({ "error": { "code": "internal",
                    "message": "the request's handler failed; see the server's log" } })),
            )
                .into_response()
        }
    }
}

/// How long a client may take to finish the TLS handshake (a truncated or
/// stalled handshake is dropped after this).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` with `tls` until `shutdown` resolves.
/// Connections whose certificate is revoked or has no vws identity are
/// closed after the handshake.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    revoked: Option<Revoked>,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve(listener, tls, Some(revoked), router, shutdown).await
}

/// Serves `router` over TLS without client certificates (a front-end
/// whose requests carry their own authentication, such as SigV4), with
/// the same per-request tasks and timeouts as [`serve_tls`].
pub async fn serve_tls_without_client_certificates(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve(listener, tls, None, router, shutdown).await
}

/// The accept loop. `clients`: client certificates are required, checked
/// against the deny list if one is given; `None`: none are asked for.
async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    clients: Option<Option<Revoked>>,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let require_peer = clients.is_some();
    let revoked = clients.flatten();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let router = router.layer(axum::middleware::from_fn(to_completion));
    // Checked again on every request: a connection kept alive across a
    // revocation must not go on being served.
    let router = match revoked.clone() {
        Some(list) => router.layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let list = list.clone();
                async move {
                    match req.extensions().get::<Peer>() {
                        Some(p) if list.contains(&p.serial) => revoked_response(),
                        _ => next.run(req).await,
                    }
                }
            },
        )),
        None => router,
    };
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Small writes (a response's head, then a stream's events) go out at
        // once: with Nagle's algorithm, each waited for the peer's delayed
        // ACK (40 ms on Linux) — the whole of a job's first-byte latency.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%addr, error = %e, "TCP_NODELAY not set");
        }
        let (acceptor, router, revoked) = (acceptor.clone(), router.clone(), revoked.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(%addr, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::info!(%addr, "TLS handshake timed out");
                    return;
                }
            };
            let peer = if require_peer {
                let peer = match stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                {
                    Some(cert) => peer_of(cert),
                    None => return,
                };
                let peer: Peer = match peer {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(%addr, error = %e, "certificate without a vws identity");
                        return;
                    }
                };
                if revoked.as_ref().is_some_and(|r| r.contains(&peer.serial)) {
                    tracing::warn!(%addr, dn = %peer.identity.dn, serial = %peer.serial, "revoked certificate refused");
                    return;
                }
                Some(peer)
            } else {
                None
            };
            let svc =
                router.map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    if let Some(peer) = &peer {
                        req.extensions_mut().insert(peer.clone());
                    }
                    req.map(axum::body::Body::new)
                });
            let served = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(svc))
                .await;
            if let Err(e) = served {
                tracing::debug!(%addr, error = %e, "connection ended with an error");
            }
        });
    }
}

/// 401 in the vws error shape.
fn revoked_response() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::UNAUTHORIZED,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        r#"{"error":{"code":"unauthenticated","message":"the client certificate is revoked"}}"#,
    )
        .into_response()
}
