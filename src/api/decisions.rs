//! Decision routes: submit, read, amend, override, approve. Writes that build on a revision
//! carry it (`If-Match` with the ETag of the read, or `expected_revision`), so two people
//! changing one decision cannot silently overwrite each other.

use axum::extract::State;
use axum::http::header::{ETAG, IF_MATCH, LOCATION};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::auth::{AnyRole, Authorized, Supervisors, Writers};
use super::{ApiError, AppState, Json, Path};
use crate::decisions::Decisions;
use crate::rules::Reason;
use crate::store::{Actor, Override, Revision, RevisionKind, ToolRef};

/// A decision as of one revision.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionView {
    pub id: String,
    pub case: String,
    pub revision: u32,
    pub kind: RevisionKind,
    pub tool: ToolRef,
    /// The level in force: an approved override's, else the tool's.
    pub level: String,
    /// The level the tool decided.
    pub tool_level: String,
    /// While an approved override is in force: what its level asks for, as the tool version
    /// declares it. `recommendation` and `explanation` stay the tool's own, written for
    /// `tool_level`: read them with this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_force: Option<LevelInForce>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f64>)]
    pub score: Option<serde_json::Number>,
    pub recommendation: String,
    pub explanation: String,
    pub reasons: Vec<Reason>,
    pub flags: Vec<String>,
    #[serde(rename = "override", skip_serializing_if = "Option::is_none")]
    pub override_: Option<Override>,
    #[schema(value_type = Object)]
    pub input: Value,
    pub actor: Actor,
    pub recorded_at: String,
    /// Position in the global journal.
    pub seq: u64,
    pub prev_hash: String,
    pub hash: String,
}

/// An overridden level as its tool declares it.
#[derive(Debug, Serialize, ToSchema)]
pub struct LevelInForce {
    pub level: String,
    pub label: String,
    /// What the service response at this level is.
    pub response: String,
}

impl DecisionView {
    /// The view of `r`, with what the level in force asks for when an override put it there.
    fn of(decisions: &Decisions, r: Revision) -> Result<Self, ApiError> {
        let in_force = decisions.overridden_outcome(&r)?.map(|d| LevelInForce {
            level: d.level,
            label: d.label,
            response: d.response,
        });
        Ok(DecisionView {
            in_force,
            ..DecisionView::from(r)
        })
    }
}

impl From<Revision> for DecisionView {
    fn from(r: Revision) -> Self {
        DecisionView {
            in_force: None,
            level: r.effective_level().to_owned(),
            id: r.decision_id,
            case: r.case_id,
            revision: r.revision,
            kind: r.kind,
            tool: r.tool,
            tool_level: r.outcome.level,
            score: r.outcome.score,
            recommendation: r.outcome.recommendation,
            explanation: r.outcome.explanation,
            reasons: r.outcome.reasons,
            flags: r.outcome.flags,
            override_: r.override_,
            input: r.input,
            actor: r.actor,
            recorded_at: r.recorded_at,
            seq: r.seq,
            prev_hash: r.prev_hash,
            hash: r.hash,
        }
    }
}

fn etag(revision: u32) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{revision}\"")).expect("a number is a valid header value")
}

/// A decision with its ETag.
fn decision_response(
    decisions: &Decisions,
    status: StatusCode,
    revision: Revision,
) -> Result<Response, ApiError> {
    let tag = etag(revision.revision);
    let location = format!("/v1/decisions/{}", revision.decision_id);
    let mut response = (status, Json(DecisionView::of(decisions, revision)?)).into_response();
    response.headers_mut().insert(ETAG, tag);
    if status == StatusCode::CREATED {
        if let Ok(location) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(LOCATION, location);
        }
    }
    Ok(response)
}

/// The views of `revisions`, in order.
fn views(decisions: &Decisions, revisions: Vec<Revision>) -> Result<Vec<DecisionView>, ApiError> {
    revisions
        .into_iter()
        .map(|r| DecisionView::of(decisions, r))
        .collect()
}

/// Ids are 1-128 characters of letters, digits and `.`, `_`, `:`, `-`: safe in URLs, logs and
/// store keys. The API description states the same rule for every `case` and `id` in a path.
pub(super) const ID_PATTERN: &str = "^[A-Za-z0-9._:-]{1,128}$";
pub(super) const ID_MAX_LENGTH: usize = 128;

/// An `Idempotency-Key` is 1-255 visible ASCII characters: no spaces, no control characters.
pub(super) const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]{1,255}$";
const IDEMPOTENCY_KEY_MAX_LENGTH: usize = 255;

/// An `If-Match` is the ETag of a decision read (`"3"`, or weak, `W/"3"`), or its bare number.
/// Nine digits at most, so that every value the description allows is a revision number.
pub(super) const IF_MATCH_PATTERN: &str = r#"^(W/)?("[0-9]{1,9}"|[0-9]{1,9})$"#;

/// Checks an id against [`ID_PATTERN`].
pub(super) fn check_id(name: &str, value: &str) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= ID_MAX_LENGTH
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            name,
            format!("{name} must be 1-128 characters of letters, digits, '.', '_', ':' or '-'"),
        ))
    }
}

/// The revision an `If-Match` value names, if it has the form [`IF_MATCH_PATTERN`] describes.
fn if_match_revision(value: &str) -> Option<u32> {
    let value = value.trim();
    let tag = value.strip_prefix("W/").unwrap_or(value);
    let number = tag
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(tag);
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    number.parse().ok()
}

/// The revision a change builds on, from `If-Match` or the body; both must agree if both are
/// given.
fn expected_revision(headers: &HeaderMap, in_body: Option<u32>) -> Result<u32, ApiError> {
    let from_header =
        match headers.get(IF_MATCH) {
            None => None,
            Some(value) => Some(value.to_str().ok().and_then(if_match_revision).ok_or_else(
                || {
                    ApiError::invalid(
                        "If-Match",
                        "If-Match must be the ETag of a decision read, e.g. \"3\"",
                    )
                },
            )?),
        };
    match (from_header, in_body) {
        (Some(h), Some(b)) if h != b => Err(ApiError::invalid(
            "/expected_revision",
            format!("If-Match says revision {h} but expected_revision says {b}"),
        )),
        (Some(r), _) | (None, Some(r)) => Ok(r),
        (None, None) => Err(ApiError::RevisionRequired),
    }
}

/// The `Idempotency-Key` of a request, if it sent one of the form [`IDEMPOTENCY_KEY_PATTERN`].
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty()
                && k.len() <= IDEMPOTENCY_KEY_MAX_LENGTH
                && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::invalid(
                "Idempotency-Key",
                "Idempotency-Key must be 1-255 visible ASCII characters",
            )
        })?;
    Ok(Some(key.to_owned()))
}

/// A completed form for a case.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The tool id.
    pub tool: String,
    /// The completed form.
    #[schema(value_type = Object)]
    #[serde(deserialize_with = "super::form_json::unique_names")]
    pub input: Value,
}

/// Decide a form for a case and store the decision. A retry with the same `Idempotency-Key`
/// returns the first decision, never a second one.
#[utoipa::path(post, path = "/v1/cases/{case}/decisions", tag = "decisions", security(("bearer" = [])),
    params(
        ("case" = String, Path, description = "The case id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe"),
    ),
    request_body = SubmitRequest,
    responses(
        (status = 201, description = "The decision, durable", body = DecisionView),
        (status = 400, description = "Malformed request", body = super::Problem, content_type = "application/problem+json"),
        super::TokenProblems,
        (status = 403, description = "Wrong role", body = super::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tool", body = super::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid form, a reused Idempotency-Key, or the rules hit a limit", body = super::Problem, content_type = "application/problem+json"),
        super::BodyProblems,
        super::WriteProblems,
))]
pub async fn decision_submit(
    caller: Authorized<Writers>,
    State(state): State<AppState>,
    Path(case): Path<String>,
    headers: HeaderMap,
    Json(request): Json<SubmitRequest>,
) -> Result<Response, ApiError> {
    check_id("case", &case)?;
    let key = idempotency_key(&headers)?;
    let appended = state
        .decisions
        .submit(&case, &request.tool, request.input, caller.actor(), key)
        .await?;
    decision_response(&state.decisions, StatusCode::CREATED, appended.revision)
}

/// The latest revision of every decision of a case.
#[utoipa::path(get, path = "/v1/cases/{case}/decisions", tag = "cases", security(("bearer" = [])),
    params(("case" = String, Path, description = "The case id")),
    responses(
        (status = 200, description = "The case's decisions, oldest first", body = Vec<DecisionView>),
        (status = 400, description = "Malformed case id", body = super::Problem, content_type = "application/problem+json"),
        super::TokenProblems,
))]
pub async fn case_decisions_list(
    _caller: Authorized<AnyRole>,
    State(state): State<AppState>,
    Path(case): Path<String>,
) -> Result<Json<Vec<DecisionView>>, ApiError> {
    check_id("case", &case)?;
    let decisions = state.decisions.case_decisions(&case)?;
    Ok(Json(views(&state.decisions, decisions)?))
}

/// The latest revision of a decision, with its ETag.
#[utoipa::path(get, path = "/v1/decisions/{id}", tag = "decisions", security(("bearer" = [])),
    params(("id" = String, Path, description = "The decision id")),
    responses(
        (status = 400, description = "A path parameter that is not UTF-8", body = super::Problem, content_type = "application/problem+json"),
        (status = 200, description = "The decision", body = DecisionView, headers(("ETag" = String, description = "The revision, for If-Match"))),
        super::TokenProblems,
        (status = 404, description = "No such decision", body = super::Problem, content_type = "application/problem+json"),
))]
pub async fn decision_get(
    _caller: Authorized<AnyRole>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_id("id", &id).map_err(|_| ApiError::UnknownDecision(id.clone()))?;
    let latest = state.decisions.latest(&id)?;
    decision_response(&state.decisions, StatusCode::OK, latest)
}

/// Every revision of a decision, oldest first.
#[utoipa::path(get, path = "/v1/decisions/{id}/revisions", tag = "decisions", security(("bearer" = [])),
    params(("id" = String, Path, description = "The decision id")),
    responses(
        (status = 400, description = "A path parameter that is not UTF-8", body = super::Problem, content_type = "application/problem+json"),
        (status = 200, description = "The history", body = Vec<DecisionView>),
        super::TokenProblems,
        (status = 404, description = "No such decision", body = super::Problem, content_type = "application/problem+json"),
))]
pub async fn revisions_list(
    _caller: Authorized<AnyRole>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<DecisionView>>, ApiError> {
    check_id("id", &id).map_err(|_| ApiError::UnknownDecision(id.clone()))?;
    let history = state.decisions.history(&id)?;
    Ok(Json(views(&state.decisions, history)?))
}

/// New input for a decision.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AmendRequest {
    #[schema(value_type = Object)]
    #[serde(deserialize_with = "super::form_json::unique_names")]
    pub input: Value,
    /// The revision this builds on, if not given as `If-Match`.
    #[serde(default, deserialize_with = "crate::whole::optional")]
    pub expected_revision: Option<u32>,
}

/// Amend a decision's input: it is re-evaluated with the tool version served now.
#[utoipa::path(post, path = "/v1/decisions/{id}/revisions", tag = "decisions", security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The decision id"),
        ("If-Match" = Option<String>, Header, description = "The ETag of the revision this builds on"),
    ),
    request_body = AmendRequest,
    responses(
        (status = 201, description = "The new revision, durable", body = DecisionView),
        (status = 400, description = "Malformed request", body = super::Problem, content_type = "application/problem+json"),
        super::TokenProblems,
        (status = 403, description = "Wrong role", body = super::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such decision", body = super::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The decision has moved on", body = super::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid form", body = super::Problem, content_type = "application/problem+json"),
        (status = 428, description = "No revision given", body = super::Problem, content_type = "application/problem+json"),
        super::BodyProblems,
        super::WriteProblems,
))]
pub async fn decision_amend(
    caller: Authorized<Writers>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(request): Json<AmendRequest>,
) -> Result<Response, ApiError> {
    check_id("id", &id).map_err(|_| ApiError::UnknownDecision(id.clone()))?;
    let expected = expected_revision(&headers, request.expected_revision)?;
    let revision = state
        .decisions
        .amend(&id, request.input, expected, caller.actor())
        .await?;
    decision_response(&state.decisions, StatusCode::CREATED, revision)
}

/// A practitioner's override of the level.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverrideRequest {
    /// One of the tool's declared levels.
    pub level: String,
    /// Why: required, in words (a letter or digit, not punctuation alone), and kept with the
    /// decision for ever.
    pub reason: String,
    /// The revision this builds on, if not given as `If-Match`.
    #[serde(default, deserialize_with = "crate::whole::optional")]
    pub expected_revision: Option<u32>,
}

/// Override the level with a reason; it waits for a supervisor's approval.
#[utoipa::path(post, path = "/v1/decisions/{id}/override", tag = "decisions", security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The decision id"),
        ("If-Match" = Option<String>, Header, description = "The ETag of the revision this builds on"),
    ),
    request_body = OverrideRequest,
    responses(
        (status = 201, description = "The new revision, durable", body = DecisionView),
        (status = 400, description = "Malformed request", body = super::Problem, content_type = "application/problem+json"),
        super::TokenProblems,
        (status = 403, description = "Wrong role", body = super::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such decision", body = super::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The decision has moved on", body = super::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Level not declared, no reason, or outside the tool's override policy", body = super::Problem, content_type = "application/problem+json"),
        (status = 428, description = "No revision given", body = super::Problem, content_type = "application/problem+json"),
        super::BodyProblems,
        super::WriteProblems,
))]
pub async fn decision_override(
    caller: Authorized<Writers>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(request): Json<OverrideRequest>,
) -> Result<Response, ApiError> {
    check_id("id", &id).map_err(|_| ApiError::UnknownDecision(id.clone()))?;
    let expected = expected_revision(&headers, request.expected_revision)?;
    let revision = state
        .decisions
        .override_level(
            &id,
            &request.level,
            &request.reason,
            expected,
            caller.actor(),
        )
        .await?;
    decision_response(&state.decisions, StatusCode::CREATED, revision)
}

/// A supervisor's approval.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    /// The revision this builds on, if not given as `If-Match`.
    #[serde(default, deserialize_with = "crate::whole::optional")]
    pub expected_revision: Option<u32>,
}

/// Approve the pending override. The approver must not be the person who made it. The body is
/// optional when `If-Match` is sent.
#[utoipa::path(post, path = "/v1/decisions/{id}/approve", tag = "decisions", security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The decision id"),
        ("If-Match" = Option<String>, Header, description = "The ETag of the revision this builds on"),
    ),
    request_body = ApproveRequest,
    responses(
        (status = 201, description = "The new revision, durable", body = DecisionView),
        (status = 400, description = "Malformed request", body = super::Problem, content_type = "application/problem+json"),
        super::TokenProblems,
        (status = 403, description = "Wrong role, or the approver made the override", body = super::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such decision", body = super::Problem, content_type = "application/problem+json"),
        (status = 409, description = "No pending override, or the decision has moved on", body = super::Problem, content_type = "application/problem+json"),
        (status = 428, description = "No revision given", body = super::Problem, content_type = "application/problem+json"),
        super::BodyProblems,
        super::WriteProblems,
))]
pub async fn decision_approve(
    caller: Authorized<Supervisors>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Option<Json<ApproveRequest>>,
) -> Result<Response, ApiError> {
    // The body is optional: `If-Match` alone is enough.
    let request = body.map(|Json(r)| r).unwrap_or_default();
    check_id("id", &id).map_err(|_| ApiError::UnknownDecision(id.clone()))?;
    let expected = expected_revision(&headers, request.expected_revision)?;
    let revision = state
        .decisions
        .approve(&id, expected, caller.actor())
        .await?;
    decision_response(&state.decisions, StatusCode::CREATED, revision)
}

/// A supervisor's refusal of an override, or its author withdrawing it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeclineRequest {
    /// Why the override is declined (or withdrawn): required, in words (a letter or digit, not
    /// punctuation alone), and kept with the decision for ever.
    pub reason: String,
    /// The revision this builds on, if not given as `If-Match`.
    #[serde(default, deserialize_with = "crate::whole::optional")]
    pub expected_revision: Option<u32>,
}

/// Decline the pending override, with a reason: a supervisor refusing it, or the practitioner
/// who asked for it withdrawing it. The level in force does not change (the tool's, or an
/// override approved before); the override stays on record as declined, and a new one may be
/// asked for.
#[utoipa::path(post, path = "/v1/decisions/{id}/decline", tag = "decisions", security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The decision id"),
        ("If-Match" = Option<String>, Header, description = "The ETag of the revision this builds on"),
    ),
    request_body = DeclineRequest,
    responses(
        (status = 201, description = "The new revision, durable", body = DecisionView),
        (status = 400, description = "Malformed request", body = super::Problem, content_type = "application/problem+json"),
        super::TokenProblems,
        (status = 403, description = "Wrong role, or a practitioner declining someone else's override", body = super::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such decision", body = super::Problem, content_type = "application/problem+json"),
        (status = 409, description = "No pending override, or the decision has moved on", body = super::Problem, content_type = "application/problem+json"),
        (status = 422, description = "No reason", body = super::Problem, content_type = "application/problem+json"),
        (status = 428, description = "No revision given", body = super::Problem, content_type = "application/problem+json"),
        super::BodyProblems,
        super::WriteProblems,
))]
pub async fn decision_decline(
    caller: Authorized<Writers>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(request): Json<DeclineRequest>,
) -> Result<Response, ApiError> {
    check_id("id", &id).map_err(|_| ApiError::UnknownDecision(id.clone()))?;
    let expected = expected_revision(&headers, request.expected_revision)?;
    let revision = state
        .decisions
        .decline(&id, &request.reason, expected, caller.actor())
        .await?;
    decision_response(&state.decisions, StatusCode::CREATED, revision)
}
