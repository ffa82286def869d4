//! EC2's errors: a code clients switch on (`InvalidInstanceID.NotFound`,
//! `AuthFailure`, …), a message, and the status EC2 answers them with.

use axum::http::StatusCode;
use vws_service::ServiceError;

/// An error in EC2's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2Error {
    /// HTTP status.
    pub status: StatusCode,
    /// EC2's error code.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
}

impl Ec2Error {
    /// An error with its status and code.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Ec2Error {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    /// 400 with a code of the client's doing.
    pub fn client(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 400 `InvalidParameterValue`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::client("InvalidParameterValue", message)
    }

    /// 400 `MissingParameter`.
    pub fn missing(name: &str) -> Self {
        Self::client(
            "MissingParameter",
            format!("The request must contain the parameter {name}"),
        )
    }

    /// 401 `AuthFailure`.
    pub fn auth(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "AuthFailure", message)
    }

    /// 500 `InternalError`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    /// The core's error, for a request about a resource whose absence is
    /// `not_found` (`InvalidInstanceID.NotFound`, `InvalidAMIID.NotFound`).
    pub fn from_service(e: ServiceError, not_found: &str) -> Self {
        let message = e.to_string();
        match e {
            ServiceError::NotFound(_) => Self::client(not_found, message),
            ServiceError::Invalid(_)
            | ServiceError::BadRequest(_)
            | ServiceError::InvalidTerms(_) => Self::invalid(message),
            ServiceError::Illegal(_) | ServiceError::Conflict(_) => {
                Self::client("IncorrectInstanceState", message)
            }
            ServiceError::Policy(_) => Self::client("InstanceLimitExceeded", message),
            // AWS's SDKs retry this one by themselves.
            ServiceError::Settling(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", message)
            }
            ServiceError::Forbidden(_) => {
                Self::new(StatusCode::FORBIDDEN, "UnauthorizedOperation", message)
            }
            ServiceError::Unauthenticated(_) => Self::auth(message),
            ServiceError::Unavailable(_) | ServiceError::NoCapacity { .. } => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InsufficientInstanceCapacity",
                message,
            ),
            ServiceError::TooLarge(_) | ServiceError::UnsupportedMediaType(_) => {
                Self::invalid(message)
            }
            ServiceError::Integrity(_) | ServiceError::Node { .. } | ServiceError::Internal(_) => {
                Self::internal(message)
            }
        }
    }
}

impl From<vws_store::StoreError> for Ec2Error {
    fn from(e: vws_store::StoreError) -> Self {
        tracing::error!(error = %e, "EC2 front-end: the repository failed");
        Ec2Error::internal(format!("the repository failed: {e}"))
    }
}
