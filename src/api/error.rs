//! The one place errors become HTTP: every error the API can return is an [`ApiError`] variant,
//! and [`ApiError::problem`] is the table that maps each to its RFC 9457 problem type, title and
//! status. 5xx bodies say nothing internal; the cause is logged once, here.

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::auth::Role;
use crate::decisions::DecisionError;
use crate::forms::Violation;
use crate::rules::EvalError;
use crate::store::StoreError;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Every error the API returns.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a bearer token is required")]
    Unauthorized,
    #[error("the bearer token is not valid: it is unknown, mistyped or revoked")]
    TokenRefused,
    #[error("this needs the role {}", roles(.0))]
    Forbidden(&'static [Role]),
    #[error("an override must be approved by someone other than the person who made it")]
    FourEyes,
    #[error("only a supervisor, or the practitioner who asked for it, may decline an override")]
    NotTheAuthor,
    #[error("the form is invalid")]
    InvalidForm(Vec<Violation>),
    #[error("{message}")]
    InvalidRequest { field: String, message: String },
    /// A well-formed filter that could only be a mistake (a level the tool never had, a window
    /// that ends before it starts).
    #[error("{message}")]
    InvalidFilter { field: String, message: String },
    #[error("the body must be JSON sent as `Content-Type: application/json`")]
    UnsupportedMediaType,
    #[error(
        "the body is larger than the service accepts (see `body_limit_bytes`; 1 MiB by default)"
    )]
    PayloadTooLarge,
    #[error("the body did not arrive within {} s of the request's head (see `read_timeout_secs`)", .0.as_secs_f64())]
    RequestTimeout(std::time::Duration),
    #[error("there is no tool {0:?}")]
    UnknownTool(String),
    #[error("there is no decision {0:?}")]
    UnknownDecision(String),
    #[error("no version {0} of this tool is stored")]
    UnknownVersion(String),
    #[error("the candidate does not load")]
    CandidateInvalid(Vec<Violation>),
    #[error("there is nothing at this address")]
    NotFound,
    #[error("this address does not take that method (the Allow header lists those it takes)")]
    MethodNotAllowed,
    #[error("{message}")]
    InvalidOverride { field: String, message: String },
    #[error("{0}")]
    NoPendingOverride(String),
    #[error("{0}")]
    Conflict(String),
    #[error("say which revision this change builds on: an `If-Match` header with the decision's ETag, or `expected_revision` in the body")]
    RevisionRequired,
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyMismatch,
    #[error("{0}")]
    ScriptLimit(String),
    #[error("the tool could not decide; the tool owner has the details in the service log")]
    ToolFailed(String),
    #[error("the catalog on disk has {} problem(s); the catalog in force keeps serving", .0.len())]
    CatalogInvalid(Vec<Violation>),
    #[error("no token has the id {0:?}")]
    UnknownToken(String),
    #[error("{0}")]
    TokenConflict(String),
    #[error("the service is not ready")]
    Unavailable,
    #[error("nothing was stored: {0}")]
    StoreUnavailable(String),
    #[error("something went wrong on our side; it has been logged")]
    Internal(String),
}

fn roles(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(" or ")
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI reference naming the kind of problem; stable, so clients can branch on it.
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The fields at fault, as JSON Pointers into the request body (or a parameter name).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Violation>,
}

/// The problems every route that reads a JSON body may answer, besides its own: listed once and
/// named in each of those routes' `responses(...)`. Only its description is used; the answers
/// themselves are [`ApiError`]s.
#[derive(utoipa::IntoResponses)]
pub enum BodyProblems {
    #[response(
        status = 408,
        description = "The body did not arrive within the read timeout",
        content_type = "application/problem+json"
    )]
    Timeout(Problem),
    #[response(
        status = 413,
        description = "Body too large",
        content_type = "application/problem+json"
    )]
    TooLarge(Problem),
    #[response(
        status = 415,
        description = "Not JSON",
        content_type = "application/problem+json"
    )]
    NotJson(Problem),
}

/// The problem every route behind a bearer token may answer, listed once and named in each of
/// those routes' `responses(...)`. (What a wrong role gets, 403, is described route by route:
/// each route says who may call it.)
#[derive(utoipa::IntoResponses)]
pub enum TokenProblems {
    #[response(
        status = 401,
        description = "No valid token",
        content_type = "application/problem+json"
    )]
    Unauthorized(Problem),
}

/// The problem every route that writes to the store may answer once a write could not be made
/// durable (a full or failing disk): 503 for every write until the service is restarted.
#[derive(utoipa::IntoResponses)]
pub enum WriteProblems {
    #[response(
        status = 503,
        description = "Nothing was stored: the store could not make an earlier write durable and takes no more until the service is restarted",
        content_type = "application/problem+json"
    )]
    StoreUnavailable(Problem),
}

impl ApiError {
    /// The table: variant -> (problem type, title, status).
    fn problem(&self) -> (&'static str, &'static str, StatusCode) {
        use ApiError::*;
        match self {
            Unauthorized | TokenRefused => {
                ("unauthorized", "Unauthorized", StatusCode::UNAUTHORIZED)
            }
            Forbidden(_) => ("forbidden", "Forbidden", StatusCode::FORBIDDEN),
            FourEyes => (
                "four-eyes",
                "Approval needs a second person",
                StatusCode::FORBIDDEN,
            ),
            NotTheAuthor => ("forbidden", "Forbidden", StatusCode::FORBIDDEN),
            InvalidForm(_) => (
                "invalid-form",
                "The form is invalid",
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            InvalidRequest { .. } => (
                "invalid-request",
                "The request is invalid",
                StatusCode::BAD_REQUEST,
            ),
            InvalidFilter { .. } => (
                "invalid-filter",
                "The filter matches nothing that could exist",
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            UnsupportedMediaType => (
                "unsupported-media-type",
                "Unsupported media type",
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            PayloadTooLarge => (
                "payload-too-large",
                "Payload too large",
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            RequestTimeout(_) => (
                "request-timeout",
                "Request timeout",
                StatusCode::REQUEST_TIMEOUT,
            ),
            UnknownTool(_) => ("unknown-tool", "Unknown tool", StatusCode::NOT_FOUND),
            UnknownDecision(_) => (
                "unknown-decision",
                "Unknown decision",
                StatusCode::NOT_FOUND,
            ),
            UnknownVersion(_) => (
                "unknown-version",
                "Unknown tool version",
                StatusCode::NOT_FOUND,
            ),
            CandidateInvalid(_) => (
                "candidate-invalid",
                "The candidate does not load",
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            NotFound => ("not-found", "Not found", StatusCode::NOT_FOUND),
            MethodNotAllowed => (
                "method-not-allowed",
                "Method not allowed",
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            InvalidOverride { .. } => (
                "invalid-override",
                "The override request is not allowed",
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            NoPendingOverride(_) => (
                "no-pending-override",
                "No override is waiting for a supervisor",
                StatusCode::CONFLICT,
            ),
            Conflict(_) => ("conflict", "The decision has changed", StatusCode::CONFLICT),
            RevisionRequired => (
                "revision-required",
                "Revision required",
                StatusCode::PRECONDITION_REQUIRED,
            ),
            IdempotencyMismatch => (
                "idempotency-mismatch",
                "Idempotency-Key reused",
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            ScriptLimit(_) => (
                "script-limit",
                "The rules hit a safety limit",
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            ToolFailed(_) => (
                "tool-error",
                "The tool failed",
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            CatalogInvalid(_) => (
                "catalog-invalid",
                "The catalog has problems",
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            UnknownToken(_) => ("unknown-token", "Unknown token", StatusCode::NOT_FOUND),
            TokenConflict(_) => (
                "token-conflict",
                "The token cannot be changed so",
                StatusCode::CONFLICT,
            ),
            Unavailable => (
                "unavailable",
                "Service unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            StoreUnavailable(_) => (
                "store-unavailable",
                "The store cannot take writes",
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            Internal(_) => (
                "internal",
                "Internal error",
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.problem().2
    }

    /// The problem document for this error.
    pub fn to_problem(&self) -> Problem {
        let (slug, title, status) = self.problem();
        let errors = match self {
            ApiError::InvalidForm(v)
            | ApiError::CatalogInvalid(v)
            | ApiError::CandidateInvalid(v) => v.clone(),
            ApiError::InvalidRequest { field, message }
            | ApiError::InvalidFilter { field, message }
            | ApiError::InvalidOverride { field, message } => {
                vec![Violation {
                    path: field.clone(),
                    message: message.clone(),
                }]
            }
            _ => Vec::new(),
        };
        Problem {
            type_: format!("/problems/{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
            errors,
        }
    }

    /// A request-body problem at `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::ToolFailed(cause) => tracing::error!(%cause, "a tool failed to decide"),
            ApiError::Internal(cause) => tracing::error!(%cause, "internal error"),
            _ => {}
        }
        let problem = self.to_problem();
        let mut response = (self.status(), axum::Json(problem)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if matches!(self, ApiError::Unauthorized | ApiError::TokenRefused) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            JsonRejection::JsonSyntaxError(e) => {
                // Where the text went wrong, when it is inside a field (a lone surrogate in a
                // string, say): serde_path_to_error names the field as for a data error.
                let (path, message) = pointed(source_text(&e));
                ApiError::invalid(path, format!("the body is not valid JSON: {message}"))
            }
            JsonRejection::JsonDataError(e) => {
                let (parent, message) = pointed(source_text(&e));
                // A missing field is reported at its parent; name the field itself.
                let path = match message
                    .strip_prefix("missing field `")
                    .and_then(|rest| rest.split_once('`'))
                {
                    Some((field, _)) => format!("{parent}/{field}"),
                    None => parent,
                };
                ApiError::invalid(path, message)
            }
            JsonRejection::BytesRejection(e) => {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::invalid("", e.body_text())
                }
            }
            other => ApiError::invalid("", other.body_text()),
        }
    }
}

/// serde_path_to_error writes "path.to.field: message"; the field as a JSON Pointer (so every
/// error in the API points the same way), and the message.
fn pointed(text: String) -> (String, String) {
    match text.split_once(": ") {
        Some((path, message)) if !path.contains(' ') => {
            let path = if path == "." {
                String::new()
            } else {
                format!("/{}", path.replace('.', "/"))
            };
            (path, message.to_owned())
        }
        _ => (String::new(), text),
    }
}

fn source_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = s.to_string();
        source = s.source();
    }
    text
}

impl From<DecisionError> for ApiError {
    fn from(e: DecisionError) -> Self {
        match e {
            DecisionError::UnknownTool(id) => ApiError::UnknownTool(id),
            DecisionError::UnknownDecision(id) => ApiError::UnknownDecision(id),
            DecisionError::Eval(e) => e.into(),
            DecisionError::InvalidOverride { field, message } => ApiError::InvalidOverride {
                field: field.to_owned(),
                message,
            },
            e @ DecisionError::NoPendingOverride(_) => ApiError::NoPendingOverride(e.to_string()),
            DecisionError::FourEyes => ApiError::FourEyes,
            DecisionError::NotTheAuthor => ApiError::NotTheAuthor,
            e @ DecisionError::Conflict { .. } => ApiError::Conflict(e.to_string()),
            DecisionError::IdempotencyMismatch => ApiError::IdempotencyMismatch,
            DecisionError::Store(e) => e.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unwritable(_) => ApiError::StoreUnavailable(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<EvalError> for ApiError {
    fn from(e: EvalError) -> Self {
        match e {
            EvalError::InvalidForm(v) => ApiError::InvalidForm(v),
            e @ EvalError::Limit { .. } => ApiError::ScriptLimit(e.to_string()),
            e @ (EvalError::Script { .. } | EvalError::Contract(_)) => {
                ApiError::ToolFailed(e.to_string())
            }
        }
    }
}
