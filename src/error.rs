//! One error type for the HTTP surface: a kind that picks the status and the `error` field,
//! a message for the client, and for server faults a cause that is logged, never shown.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidJson,
    InvalidRequest,
    InvalidCursor,
    UnknownKind,
    KindNotAllowed,
    InvalidData,
    UnsupportedMediaType,
    PayloadTooLarge,
    /// The request body did not arrive within `server.body_timeout_secs`.
    RequestTimeout,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    /// The request clashes with the current state; the code names the clash.
    Conflict(&'static str),
    TooManySessions,
    RateLimited,
    Unavailable,
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidJson => "invalid_json",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::InvalidCursor => "invalid_cursor",
            ErrorKind::UnknownKind => "unknown_kind",
            ErrorKind::KindNotAllowed => "kind_not_allowed",
            ErrorKind::InvalidData => "invalid_data",
            ErrorKind::UnsupportedMediaType => "unsupported_media_type",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::Conflict(code) => code,
            ErrorKind::TooManySessions => "too_many_sessions",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidJson
            | ErrorKind::InvalidRequest
            | ErrorKind::InvalidCursor
            | ErrorKind::UnknownKind
            | ErrorKind::KindNotAllowed
            | ErrorKind::InvalidData => StatusCode::BAD_REQUEST,
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::Conflict(_) => StatusCode::CONFLICT,
            ErrorKind::TooManySessions | ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    /// Sent as `Retry-After` (whole seconds, rounded up).
    retry_after: Option<std::time::Duration>,
    #[source]
    cause: Option<anyhow::Error>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            retry_after: None,
            cause: None,
        }
    }

    /// Adds a `Retry-After` header to the response.
    pub fn retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthorized, message)
    }

    /// A server fault: the client sees a generic message, the cause goes to the log.
    pub fn internal(cause: anyhow::Error) -> Self {
        ApiError {
            kind: ErrorKind::Internal,
            message: "internal error".into(),
            retry_after: None,
            cause: Some(cause),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    /// A database that cannot be reached is the client's to retry (503 with `Retry-After`);
    /// anything else is a fault of ours.
    fn from(cause: anyhow::Error) -> Self {
        if crate::store::is_unavailable(&cause) {
            tracing::warn!(error = %format!("{cause:#}"), "the database is not reachable");
            return ApiError::new(
                ErrorKind::Unavailable,
                "the database is not reachable; try again",
            )
            .retry_after(STORE_RETRY_AFTER);
        }
        ApiError::internal(cause)
    }
}

/// What a client is told to wait when the database cannot be reached.
const STORE_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// The body of every 4xx and 5xx response.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    /// The error kind, e.g. `invalid_request`; stable, for programs.
    #[schema(example = "invalid_request")]
    error: &'a str,
    /// What went wrong, for people.
    message: &'a str,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.kind.status()
    }

    fn error_response(&self) -> HttpResponse {
        if let Some(cause) = &self.cause {
            tracing::error!(error = ?cause, "request failed");
        }
        let mut response = HttpResponse::build(self.status_code());
        if self.kind == ErrorKind::Unauthorized {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        if self.kind == ErrorKind::RequestTimeout {
            // The rest of the body may still come: the connection cannot be reused.
            response.force_close();
        }
        if let Some(wait) = self.retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response.insert_header(("Retry-After", secs.max(1).to_string()));
        }
        response.json(ErrorBody {
            error: self.kind.as_str(),
            message: &self.message,
        })
    }
}

/// Maps actix's body and query extractor failures onto JSON errors.
pub mod extractors {
    use actix_web::HttpRequest;
    use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};

    use super::{ApiError, ErrorKind};

    pub fn json(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
        let api = match &err {
            JsonPayloadError::OverflowKnownLength { length, limit } => ApiError::new(
                ErrorKind::PayloadTooLarge,
                format!("body of {length} bytes is larger than the limit of {limit} bytes"),
            ),
            JsonPayloadError::Overflow { limit } => ApiError::new(
                ErrorKind::PayloadTooLarge,
                format!("body is larger than the limit of {limit} bytes"),
            ),
            JsonPayloadError::Payload(e) if crate::http::body_deadline::is_timeout(e) => {
                ApiError::new(
                    ErrorKind::RequestTimeout,
                    "the request body did not arrive in time",
                )
            }
            JsonPayloadError::ContentType => ApiError::new(
                ErrorKind::UnsupportedMediaType,
                "expected Content-Type: application/json",
            ),
            JsonPayloadError::Deserialize(e) if e.is_data() => {
                ApiError::new(ErrorKind::InvalidRequest, e.to_string())
            }
            JsonPayloadError::Deserialize(e) => {
                ApiError::new(ErrorKind::InvalidJson, format!("malformed JSON: {e}"))
            }
            other => ApiError::new(ErrorKind::InvalidJson, other.to_string()),
        };
        api.into()
    }

    pub fn query(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
        ApiError::new(
            ErrorKind::InvalidRequest,
            format!("bad query string: {err}"),
        )
        .into()
    }

    pub fn path(err: PathError, _req: &HttpRequest) -> actix_web::Error {
        ApiError::new(ErrorKind::NotFound, format!("bad path: {err}")).into()
    }
}
