//! The web dashboard (`/ui`): one more front-end over the service's core.
//! Every page and action runs the same commands as the REST API, as the
//! signed-in identity, so the ACLs and what each caller may see are the
//! API's. Pages are rendered on the server (maud); a small vendored script
//! makes states follow the event stream and sends actions without leaving
//! the page. Sign-in is a one-time link (`vws ui`) that becomes an
//! HttpOnly, SameSite=Strict session cookie; forms carry the session's
//! CSRF token. docs/dashboard.md shows it.

mod pages;
mod view;

use std::sync::Arc;

use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use vws_service::ui_sessions::UiSession;
use vws_service::{Service, ServiceError};

/// The session cookie's name.
const COOKIE: &str = "vws_session";

/// The dashboard's router, to serve on its own listener (plain HTTP on
/// loopback by default: docs/dashboard.md).
pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui") }))
        .route("/ui/login", get(login))
        .route("/ui/logout", post(logout))
        .route("/ui/events", get(pages::events))
        .route("/ui", get(pages::workspaces))
        .route("/ui/new", get(pages::new_form).post(pages::create))
        .route("/ui/w/{id}", get(pages::workspace))
        .route("/ui/w/{id}/console", get(pages::console))
        .route("/ui/w/{id}/usage", get(pages::usage))
        .route("/ui/w/{id}/action", post(pages::action))
        .route("/ui/jobs/{job}", get(pages::job))
        .route("/ui/images", get(pages::images))
        .route("/ui/nodes", get(pages::nodes))
        .route("/ui/networks", get(pages::networks))
        .route("/ui/networks/{name}", get(pages::network))
        .with_state(service)
}

/// The signed-in browser's session, from its cookie; without one, the
/// request is answered with how to sign in.
pub(crate) struct Session(pub UiSession);

impl FromRequestParts<Arc<Service>> for Session {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        service: &Arc<Service>,
    ) -> Result<Self, Self::Rejection> {
        let secret = cookie(&parts.headers);
        let found = match secret {
            Some(s) => service.ui_session(&s).await.map_err(|e| failed(&e))?,
            None => None,
        };
        found.map(Session).ok_or_else(signed_out)
    }
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

fn signed_out() -> Response {
    let body = maud::html! {
        h1 { "Sign in" }
        p { "Run " code { "vws ui" } " on a machine with your vws certificate: it prints a one-time link that signs this browser in." }
    };
    (
        StatusCode::UNAUTHORIZED,
        view::page("Sign in", None, None, body),
    )
        .into_response()
}

/// A service error as a page, with its status.
pub(crate) fn failed(e: &ServiceError) -> Response {
    let (status, code) = e.status_and_code();
    let body = maud::html! {
        h1 { (status.canonical_reason().unwrap_or("Error")) }
        div class="error" { (e.to_string()) " [" (code) "]" }
        p { a href="/ui" { "Back to the workspaces" } }
    };
    (status, view::page("Error", None, None, body)).into_response()
}

#[derive(Deserialize)]
struct LoginQuery {
    token: String,
}

/// `/ui/login?token=…`: a one-time link becomes this browser's session.
async fn login(State(s): State<Arc<Service>>, Query(q): Query<LoginQuery>) -> Response {
    match s.sign_in(&q.token).await {
        Ok(Some(session)) => {
            let age = (session.expires_at - time::OffsetDateTime::now_utc())
                .whole_seconds()
                .max(0);
            let cookie = format!(
                "{COOKIE}={}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={age}",
                session.secret
            );
            (
                StatusCode::SEE_OTHER,
                [
                    (header::SET_COOKIE, cookie),
                    (header::LOCATION, "/ui".into()),
                ],
            )
                .into_response()
        }
        Ok(None) => {
            let body = maud::html! {
                h1 { "This link is used or expired" }
                p { "A sign-in link works once, for ten minutes. Run " code { "vws ui" } " for a new one." }
            };
            (
                StatusCode::UNAUTHORIZED,
                view::page("Sign in", None, None, body),
            )
                .into_response()
        }
        Err(e) => failed(&e),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(
    State(s): State<Arc<Service>>,
    Session(session): Session,
    axum::Form(f): axum::Form<CsrfForm>,
) -> Response {
    if f.csrf != session.csrf {
        return forbidden_form();
    }
    if let Err(e) = s.sign_out(&session.secret).await {
        return failed(&e);
    }
    let clear = format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0");
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, clear),
            (header::LOCATION, "/ui".into()),
        ],
    )
        .into_response()
}

/// A form whose CSRF token is not the session's.
pub(crate) fn forbidden_form() -> Response {
    (
        StatusCode::FORBIDDEN,
        "this form is not from this session (reload the page)",
    )
        .into_response()
}
