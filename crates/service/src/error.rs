//! The service's errors and the one place they become HTTP statuses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use vws_model::{FieldError, IllegalTransition, InvalidDescription};
use vws_store::{BlobError, StoreError};

/// Everything a service call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The description was refused; each problem names its element.
    #[error(transparent)]
    Invalid(#[from] InvalidDescription),
    /// The request itself is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// An agreement's terms are well-formed but mean nothing (a start in
    /// the past, a window that ends before it begins, no duration); the
    /// message names the term.
    #[error("{0}")]
    InvalidTerms(String),
    /// Nothing by that name that the caller may see.
    #[error("{0}")]
    NotFound(String),
    /// The workspace's state forbids the action.
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    /// Something else is in the way (a name taken, an image in use, a concurrent change).
    #[error("{0}")]
    Conflict(String),
    /// Another replica's action on the workspace is in flight, or being
    /// settled after that replica stopped: the same request succeeds
    /// within seconds (clients retry it).
    #[error("{0}")]
    Settling(String),
    /// Policy refused the request; the reason is for the client.
    #[error("refused by policy: {0}")]
    Policy(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The caller did not say who it is.
    #[error("{0}")]
    Unauthenticated(String),
    /// The body is larger than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// The body's content type is not one this endpoint reads.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Content did not match its digest.
    #[error("{0}")]
    Integrity(String),
    /// A dependency is not available right now.
    #[error("{0}")]
    Unavailable(String),
    /// The capacity asked for cannot be promised (agreements): why, and
    /// the earliest start that could be met, if any.
    #[error("{message}{}", earliest_start.as_ref().map(|e| format!("; the earliest start that fits is {e}")).unwrap_or_default())]
    NoCapacity {
        /// Why.
        message: String,
        /// RFC 3339, when some later start would fit.
        earliest_start: Option<String>,
    },
    /// A node refused or failed; its status and code are passed on
    /// (507 no space, 504 boot timeout, 422 digest mismatch, 502 otherwise).
    #[error("node {node}: {message}")]
    Node {
        /// Which node.
        node: String,
        /// Status to answer with.
        status: StatusCode,
        /// The node's error code.
        code: String,
        /// The node's message.
        message: String,
    },
    /// A bug or an environment failure.
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(_) | StoreError::Duplicate(_) => {
                ServiceError::Conflict(e.to_string())
            }
            StoreError::BadCursor(_) => ServiceError::BadRequest(e.to_string()),
            StoreError::Gone(_) | StoreError::InUse(_) => ServiceError::Conflict(e.to_string()),
            StoreError::OverQuota(m) => ServiceError::Policy(m),
            StoreError::NameTaken { .. } => ServiceError::Forbidden(format!(
                "{e}: only its owner or an administrator may publish under it"
            )),
            StoreError::Db(vws_store::SqlxError::PoolTimedOut) => {
                ServiceError::Unavailable("the database is busy; try again".into())
            }
            other => ServiceError::Internal(other.into()),
        }
    }
}

impl From<BlobError> for ServiceError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::BadDigest(_) => ServiceError::BadRequest(e.to_string()),
            BlobError::Mismatch { .. } => ServiceError::Integrity(e.to_string()),
            BlobError::TooLarge { .. } => ServiceError::TooLarge(e.to_string()),
            BlobError::Io(_) => ServiceError::Internal(e.into()),
        }
    }
}

/// The one error shape: `{"error": {"code": …, "message": …, "details": [...]}}`.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorInfo,
}

/// Inside [`ErrorBody`].
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ErrorInfo {
    /// Stable machine-readable code.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// For description errors: each problem with its path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<Detail>,
    /// For `no_capacity` refusals of agreements: the earliest start that
    /// could be met (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earliest_start: Option<String>,
}

/// One problem in a refused description.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Detail {
    /// Path of the element at fault.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl From<&FieldError> for Detail {
    fn from(e: &FieldError) -> Self {
        Detail {
            path: e.path.clone(),
            message: e.message.clone(),
        }
    }
}

/// The error code of a request on a workspace another replica is acting on
/// (or whose action is being settled after that replica stopped).
pub const SETTLING: &str = "settling";

impl ServiceError {
    /// Whether a node could not be reached or did not answer: what it was
    /// asked may or may not have happened.
    pub fn node_unreachable(&self) -> bool {
        matches!(self, ServiceError::Node { code, .. } if code == "node_unreachable")
    }

    /// HTTP status and stable code of each error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ServiceError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_description"),
            ServiceError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ServiceError::InvalidTerms(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_terms"),
            ServiceError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ServiceError::Illegal(_) => (StatusCode::CONFLICT, "illegal_transition"),
            ServiceError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ServiceError::Settling(_) => (StatusCode::CONFLICT, SETTLING),
            ServiceError::Policy(_) => (StatusCode::FORBIDDEN, "policy_refused"),
            ServiceError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ServiceError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            ServiceError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ServiceError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ServiceError::Integrity(_) => (StatusCode::UNPROCESSABLE_ENTITY, "digest_mismatch"),
            ServiceError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ServiceError::NoCapacity { .. } => (StatusCode::CONFLICT, "no_capacity"),
            ServiceError::Node { status, .. } => (*status, "node_failed"),
            ServiceError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// Builds an error response in the one shape.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: String,
    details: Vec<Detail>,
) -> Response {
    error_body(
        status,
        ErrorInfo {
            code: code.into(),
            message,
            details,
            earliest_start: None,
        },
    )
}

fn error_body(status: StatusCode, error: ErrorInfo) -> Response {
    (status, axum::Json(ErrorBody { error })).into_response()
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let (status, mut code) = self.status_and_code();
        if let ServiceError::Node {
            code: node_code, ..
        } = &self
        {
            code = match node_code.as_str() {
                "no_space" => "no_space",
                "boot_timeout" => "boot_timeout",
                "digest_mismatch" => "digest_mismatch",
                "wrong_state" => "wrong_state",
                _ => "node_failed",
            };
        }
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::info!(error = %self, code, "request refused");
        }
        let details = match &self {
            ServiceError::Invalid(inv) => inv.0.iter().map(Detail::from).collect(),
            _ => Vec::new(),
        };
        let earliest_start = match &self {
            ServiceError::NoCapacity { earliest_start, .. } => earliest_start.clone(),
            _ => None,
        };
        error_body(
            status,
            ErrorInfo {
                code: code.into(),
                message: self.to_string(),
                details,
                earliest_start,
            },
        )
    }
}
