//! Audit routes (auditor only, versions also admin): tool versions, replay, export, verify.
//! The work runs on blocking threads: it walks the store and uses every core.

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::auth::{Auditors, Authorized, Overseers, VersionReaders};
use super::{ApiError, AppState, Json, Path};
use crate::audit::dashboard::{self, Dashboard};
use crate::audit::disparity::{self, Disparity, DisparityRequest};
use crate::audit::export::{self, Filter};
use crate::audit::replay::{self, ReplayError, ReplayReport, ReplayRequest};
use crate::audit::verify::{self, VerifyReport};
use crate::audit::Cancel;
use crate::decisions::Standing;
use crate::forms::Violation;
use crate::rules::Limits;
use crate::store::VersionInfo;

/// Every version of a tool ever served or used, oldest first.
#[utoipa::path(get, path = "/v1/tools/{tool}/versions", tag = "audit", security(("bearer" = [])),
    params(("tool" = String, Path, description = "The tool id")),
    responses(
        (status = 400, description = "A path parameter that is not UTF-8", body = super::Problem, content_type = "application/problem+json"),
        (status = 200, description = "The versions", body = Vec<VersionInfo>),
        super::TokenProblems,
        (status = 403, description = "Not an auditor or admin", body = super::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tool", body = super::Problem, content_type = "application/problem+json"),
))]
pub async fn versions_list(
    _caller: Authorized<VersionReaders>,
    State(state): State<AppState>,
    Path(tool): Path<String>,
) -> Result<Json<Vec<VersionInfo>>, ApiError> {
    let versions = state
        .decisions
        .store()
        .versions(&tool)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if versions.is_empty() && state.decisions.catalog().get(&tool).is_none() {
        return Err(ApiError::UnknownTool(tool));
    }
    Ok(Json(versions))
}

/// One version with its full snapshot: everything needed to re-run it.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionDetail {
    #[serde(flatten)]
    pub info: VersionInfo,
    /// `{schema, rules, params, plugins}`: what the digest covers.
    #[schema(value_type = Object)]
    pub snapshot: Value,
}

/// One version of a tool, with its snapshot.
#[utoipa::path(get, path = "/v1/tools/{tool}/versions/{digest}", tag = "audit", security(("bearer" = [])),
    params(("tool" = String, Path, description = "The tool id"), ("digest" = String, Path, description = "sha256:<hex>")),
    responses(
        (status = 400, description = "A path parameter that is not UTF-8", body = super::Problem, content_type = "application/problem+json"),
        (status = 200, description = "The version", body = VersionDetail),
        super::TokenProblems,
        (status = 403, description = "Not an auditor or admin", body = super::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such version", body = super::Problem, content_type = "application/problem+json"),
))]
pub async fn version_get(
    _caller: Authorized<VersionReaders>,
    State(state): State<AppState>,
    Path((tool, digest)): Path<(String, String)>,
) -> Result<Json<VersionDetail>, ApiError> {
    let store = state.decisions.store();
    let internal = |e: crate::store::StoreError| ApiError::Internal(e.to_string());
    let info = store
        .versions(&tool)
        .map_err(internal)?
        .into_iter()
        .find(|v| v.digest == digest)
        .ok_or_else(|| ApiError::UnknownVersion(digest.clone()))?;
    let snapshot = store
        .snapshot(&digest)
        .map_err(internal)?
        .ok_or_else(|| ApiError::UnknownVersion(digest.clone()))?;
    Ok(Json(VersionDetail { info, snapshot }))
}

/// Re-run stored decisions against the version that made them, another version, or candidate
/// rules, params or schema patch: the level-change matrix, score shifts, the changed decisions
/// (paged) and the inputs the target rejects.
#[utoipa::path(post, path = "/v1/audit/replay", tag = "audit", security(("bearer" = [])),
    request_body = ReplayRequest,
    responses(
        (status = 200, description = "What would change", body = ReplayReport),
        (status = 400, description = "Malformed request", body = super::Problem, content_type = "application/problem+json"),
        super::TokenProblems,
        (status = 403, description = "Not an auditor", body = super::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tool or version", body = super::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The candidate does not load, or the filter matches nothing that could exist (a level the tool never had, a window that ends before it starts)", body = super::Problem, content_type = "application/problem+json"),
        super::BodyProblems,
))]
pub async fn audit_replay(
    _caller: Authorized<Auditors>,
    State(state): State<AppState>,
    Json(request): Json<ReplayRequest>,
) -> Result<Json<ReplayReport>, ApiError> {
    let decisions = state.decisions.clone();
    // Dropped with this request (its client gone, or the service stopping): the replay stops.
    let cancel = Cancel::default();
    let _cancel_on_drop = cancel.when_dropped();
    let report = tokio::task::spawn_blocking(move || {
        let catalog = decisions.catalog();
        replay::replay(
            decisions.store().as_ref(),
            &catalog,
            &request,
            Limits::default(),
            &|_| {},
            &cancel,
        )
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| match e {
        ReplayError::UnknownTool(t) => ApiError::UnknownTool(t),
        ReplayError::UnknownVersion(d) => ApiError::UnknownVersion(d),
        ReplayError::CandidateInvalid(errors) => ApiError::CandidateInvalid(
            errors
                .into_iter()
                .map(|e| Violation {
                    path: e.location(),
                    message: e.message,
                })
                .collect(),
        ),
        ReplayError::InvalidRequest(field, message) => ApiError::invalid(field, message),
        ReplayError::InvalidFilter(field, message) => ApiError::InvalidFilter { field, message },
        ReplayError::Store(e) => ApiError::Internal(e.to_string()),
        // Only once this request is dropped, so never answered.
        e @ ReplayError::Cancelled => ApiError::Internal(e.to_string()),
    })?;
    Ok(Json(report))
}

/// Every revision matching the filter, as JSON Lines, streamed in journal order; each line is
/// the revision exactly as stored, hash included.
#[utoipa::path(get, path = "/v1/audit/decisions", tag = "audit", security(("bearer" = [])),
    params(Filter),
    responses(
        (status = 200, description = "JSON Lines, one revision a line", content_type = "application/x-ndjson", body = String),
        (status = 400, description = "Malformed filter", body = super::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No version of the tool was ever served or used", body = super::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A level the tool never had, or a window that ends before it starts", body = super::Problem, content_type = "application/problem+json"),
        super::TokenProblems,
        (status = 403, description = "Not an auditor", body = super::Problem, content_type = "application/problem+json"),
))]
pub async fn audit_export(
    _caller: Authorized<Auditors>,
    State(state): State<AppState>,
    filter: Result<Query<Filter>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(filter) = filter.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    // Reads the tool's versions and their snapshots: off the async threads.
    let (decisions, checked) = (state.decisions.clone(), filter.clone());
    tokio::task::spawn_blocking(move || export::check_filter(decisions.store().as_ref(), &checked))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| match e {
            export::FilterError::UnknownTool(tool) => ApiError::UnknownTool(tool),
            export::FilterError::Malformed { field, message } => ApiError::invalid(field, message),
            export::FilterError::Invalid { field, message } => {
                ApiError::InvalidFilter { field, message }
            }
            export::FilterError::Store(e) => e.into(),
        })?;
    // A blocking thread walks the store and hands the body chunks of about 64 KiB; the channel
    // is small, so a slow client slows the walk instead of filling memory.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let decisions = state.decisions.clone();
    tokio::task::spawn_blocking(move || {
        let mut chunk = Vec::with_capacity(64 * 1024);
        for line in export::lines(decisions.store().as_ref(), filter) {
            match line {
                Ok(line) => {
                    chunk.extend_from_slice(&line);
                    if chunk.len() >= 64 * 1024 {
                        let full = std::mem::replace(&mut chunk, Vec::with_capacity(64 * 1024));
                        if tx.blocking_send(Ok(Bytes::from(full))).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "export stopped");
                    let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
            }
        }
        if !chunk.is_empty() {
            let _ = tx.blocking_send(Ok(Bytes::from(chunk)));
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok((
        [(CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Walk the whole chain, recompute every hash, and report the first break by sequence number.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit", security(("bearer" = [])),
    responses(
        (status = 200, description = "The verification; `ok` says whether the chain is whole", body = VerifyReport),
        super::TokenProblems,
        (status = 403, description = "Not an auditor", body = super::Problem, content_type = "application/problem+json"),
))]
pub async fn audit_verify(
    _caller: Authorized<Auditors>,
    State(state): State<AppState>,
) -> Result<Json<VerifyReport>, ApiError> {
    let decisions = state.decisions.clone();
    // Dropped with this request (its client gone, or the service stopping): verify stops.
    let cancel = Cancel::default();
    let _cancel_on_drop = cancel.when_dropped();
    let report = tokio::task::spawn_blocking(move || {
        verify::verify_until(decisions.store().as_ref(), &|_| {}, &cancel)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::Internal(e.to_string()))?
    // Cancelled only once this request is dropped, so never answered.
    .ok_or_else(|| ApiError::Internal("verify was cancelled".into()))?;
    Ok(Json(report))
}

/// The latest revision of every decision (of `tool`), decoded and read on by `then`; the first
/// store error stops the walk and is left in `error` so the caller can refuse a partial answer.
fn latest_revisions<'a, T>(
    store: &'a dyn crate::store::Store,
    tool: Option<&str>,
    error: &'a mut Option<crate::store::StoreError>,
    then: impl Fn(crate::store::Revision) -> crate::store::StoreResult<T> + 'a,
) -> impl Iterator<Item = T> + 'a {
    store.latest_raw(tool).map_while(move |raw| {
        match raw.and_then(|bytes| then(crate::store::decode_revision(&bytes)?)) {
            Ok(read) => Some(read),
            Err(e) => {
                *error = Some(e);
                None
            }
        }
    })
}

/// Outcome and override rates across the values of one form field, each with a 95% Wilson
/// interval and its ratio to the overall rate. Groups under 10 decisions are shown, marked.
#[utoipa::path(post, path = "/v1/audit/disparity", tag = "audit", security(("bearer" = [])),
    request_body = DisparityRequest,
    responses(
        (status = 200, description = "Rates per value of the field", body = Disparity),
        (status = 400, description = "Malformed request", body = super::Problem, content_type = "application/problem+json"),
        super::TokenProblems,
        (status = 403, description = "Not an auditor", body = super::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tool", body = super::Problem, content_type = "application/problem+json"),
        super::BodyProblems,
))]
pub async fn audit_disparity(
    _caller: Authorized<Auditors>,
    State(state): State<AppState>,
    Json(request): Json<DisparityRequest>,
) -> Result<Json<Disparity>, ApiError> {
    if let Err(problems) = request.validate() {
        let (field, message) = problems
            .into_iter()
            .next()
            .expect("validate reports at least one problem");
        return Err(ApiError::invalid(field, message));
    }
    let levels = state.decisions.levels_of(&request.tool)?;
    let decisions = state.decisions.clone();
    let report = tokio::task::spawn_blocking(move || {
        let mut error = None;
        let store = decisions.store().as_ref();
        let report = disparity::disparity(
            &request,
            &levels,
            latest_revisions(store, Some(&request.tool), &mut error, Ok),
        );
        match error {
            Some(e) => Err(ApiError::Internal(e.to_string())),
            None => Ok(report),
        }
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(Json(report))
}

/// The supervisor's figures: pending overrides oldest first, decisions by tool and level per
/// week, override rate by tool, cases per stage, overdue reviews.
#[utoipa::path(get, path = "/v1/dashboard", tag = "audit", security(("bearer" = [])),
    responses(
        (status = 200, description = "The figures", body = Dashboard),
        super::TokenProblems,
        (status = 403, description = "Not a supervisor or auditor", body = super::Problem, content_type = "application/problem+json"),
))]
pub async fn dashboard_get(
    _caller: Authorized<Overseers>,
    State(state): State<AppState>,
) -> Result<Json<Dashboard>, ApiError> {
    let decisions = state.decisions.clone();
    let figures = tokio::task::spawn_blocking(move || {
        let mut error = None;
        let catalog = decisions.catalog();
        let store = decisions.store().as_ref();
        let figures = dashboard::dashboard(
            &catalog,
            latest_revisions(store, None, &mut error, |latest| {
                Standing::of(store, latest)
            }),
            chrono::Utc::now(),
        );
        match error {
            Some(e) => Err(ApiError::Internal(e.to_string())),
            None => Ok(figures),
        }
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(Json(figures))
}
