//! The one place errors become HTTP: every error the API can return is an [`ApiError`] variant,
//! and [`ApiError::kind`] maps each to its RFC 9457 problem type, whose slug, title, status and
//! page are in [`super::problems`]. 5xx bodies say nothing internal; the cause is logged once, here.

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::problems::ProblemType;
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
    #[error("{0}")]
    SubjectLooksAlike(String),
    #[error("the service is not ready")]
    Unavailable,
    /// The store takes no writes: one could not be made durable earlier, or it has lost
    /// revisions. The cause was logged when it happened; the answer says only what to do.
    #[error("nothing was stored: the store takes no writes until the service is restarted, because a write could not be made durable (a full or failing disk, or a data folder moved while the service ran); the cause is in the service log")]
    StoreUnavailable,
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
    /// The kind of problem each variant is; [`ProblemType::doc`] has its slug, title, status
    /// and page.
    pub fn kind(&self) -> ProblemType {
        use ApiError::*;
        match self {
            Unauthorized | TokenRefused => ProblemType::Unauthorized,
            Forbidden(_) | NotTheAuthor => ProblemType::Forbidden,
            FourEyes => ProblemType::FourEyes,
            InvalidForm(_) => ProblemType::InvalidForm,
            InvalidRequest { .. } => ProblemType::InvalidRequest,
            InvalidFilter { .. } => ProblemType::InvalidFilter,
            UnsupportedMediaType => ProblemType::UnsupportedMediaType,
            PayloadTooLarge => ProblemType::PayloadTooLarge,
            RequestTimeout(_) => ProblemType::RequestTimeout,
            UnknownTool(_) => ProblemType::UnknownTool,
            UnknownDecision(_) => ProblemType::UnknownDecision,
            UnknownVersion(_) => ProblemType::UnknownVersion,
            CandidateInvalid(_) => ProblemType::CandidateInvalid,
            NotFound => ProblemType::NotFound,
            MethodNotAllowed => ProblemType::MethodNotAllowed,
            InvalidOverride { .. } => ProblemType::InvalidOverride,
            NoPendingOverride(_) => ProblemType::NoPendingOverride,
            Conflict(_) => ProblemType::Conflict,
            RevisionRequired => ProblemType::RevisionRequired,
            IdempotencyMismatch => ProblemType::IdempotencyMismatch,
            ScriptLimit(_) => ProblemType::ScriptLimit,
            ToolFailed(_) => ProblemType::ToolError,
            CatalogInvalid(_) => ProblemType::CatalogInvalid,
            UnknownToken(_) => ProblemType::UnknownToken,
            TokenConflict(_) => ProblemType::TokenConflict,
            SubjectLooksAlike(_) => ProblemType::SubjectLooksAlike,
            Unavailable => ProblemType::Unavailable,
            StoreUnavailable => ProblemType::StoreUnavailable,
            Internal(_) => ProblemType::Internal,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.kind().doc().status
    }

    /// The problem document for this error.
    pub fn to_problem(&self) -> Problem {
        let kind = self.kind();
        let doc = kind.doc();
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
            type_: kind.uri(),
            title: doc.title.to_owned(),
            status: doc.status.as_u16(),
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
            StoreError::Unwritable(_) | StoreError::LostRevisions(_) => ApiError::StoreUnavailable,
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
