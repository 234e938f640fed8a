//! Admin routes: reloading the catalog from disk, and issuing and revoking tokens while the
//! service runs.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Admins, Authorized};
use super::tools::{summary, ToolSummary};
use super::{ApiError, AppState, Json, Path};
use crate::auth::{self, RevokeError, Role, TokenRecord};
use crate::catalog::Catalog;
use crate::forms::Violation;

/// What a reload put in force.
#[derive(Debug, Serialize, ToSchema)]
pub struct Reloaded {
    /// Every tool now served.
    pub tools: Vec<ToolSummary>,
    /// Ids whose digest changed, appeared or disappeared.
    pub changed: Vec<String>,
    /// How many tool cases ran (and passed) before the catalog was put in force.
    pub cases_run: usize,
    /// Tools served with no case to pin what they decide: nothing checked them. A site
    /// deployed without its `tests/cases` folder has every core tool here.
    pub untested: Vec<String>,
}

/// Reload tools and plugins from disk. The new catalog is put in force whole, or, on any
/// problem, not at all: the old one keeps serving and the problems are returned. Requests already
/// running finish on the catalog they started with.
#[utoipa::path(post, path = "/v1/admin/reload", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "The new catalog is in force", body = Reloaded),
        super::TokenProblems,
        (status = 403, description = "Not an admin", body = super::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The new catalog does not load, or one of its cases fails; the old one keeps serving", body = super::Problem, content_type = "application/problem+json"),
        super::WriteProblems,
))]
pub async fn catalog_reload(
    _caller: Authorized<Admins>,
    State(state): State<AppState>,
) -> Result<Json<Reloaded>, ApiError> {
    reload(&state).await.map(Json)
}

/// Reloads as [`reload_files`] does, and logs a refusal with its reasons: the request's own line
/// says only 422, and an operator reading the log must not need the answer to know why.
pub(crate) async fn reload(state: &AppState) -> Result<Reloaded, ApiError> {
    let reloaded = reload_files(state).await;
    if let Err(e) = &reloaded {
        let problem = e.to_problem();
        tracing::warn!(
            problem = %problem.detail,
            errors = ?problem.errors,
            "the catalog was not reloaded; the one in force keeps serving"
        );
    }
    reloaded
}

/// Reloads the catalog from disk as `POST /v1/admin/reload` does (also on SIGHUP).
async fn reload_files(state: &AppState) -> Result<Reloaded, ApiError> {
    // One reload at a time, each reading the files after the one before has put its catalog in
    // force: the last reload answered is the catalog served.
    let _reloading = state.reloads.lock().await;
    let root = state.tools_dir.clone();
    // Loading compiles every schema and script, and the cases run against what loaded: seconds
    // of CPU at worst, off the async threads.
    let loaded = tokio::task::spawn_blocking(move || {
        let catalog = Catalog::load(&root)?;
        let gate = crate::check::gate(&root, &catalog);
        Ok((catalog, gate))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let violations = |problems: Vec<(String, String)>| {
        let violations = problems
            .into_iter()
            .map(|(path, message)| Violation { path, message })
            .collect();
        ApiError::CatalogInvalid(violations)
    };
    let (catalog, gate) = loaded.map_err(|errors: Vec<crate::catalog::LoadError>| {
        violations(
            errors
                .into_iter()
                .map(|e| (e.location(), e.message))
                .collect(),
        )
    })?;
    // A catalog whose own cases fail does not go live: they pin what it decides.
    if !gate.broken.is_empty() {
        return Err(violations(gate.broken));
    }
    let old = state.decisions.catalog();
    let mut changed: Vec<String> = catalog
        .tools()
        .filter(|t| old.get(t.id()).is_none_or(|o| o.digest != t.digest))
        .map(|t| t.id().to_owned())
        .collect();
    changed.extend(
        old.tools()
            .filter(|t| catalog.get(t.id()).is_none())
            .map(|t| t.id().to_owned()),
    );
    let tools = catalog.tools().map(|t| summary(t)).collect();
    state
        .decisions
        .replace_catalog(catalog)
        .map_err(ApiError::from)?;
    tracing::info!(changed = ?changed, cases_run = gate.cases_run, "catalog reloaded");
    gate.warn_untested();
    Ok(Reloaded {
        tools,
        changed,
        cases_run: gate.cases_run,
        untested: gate.untested,
    })
}

/// A token as an admin sees it: who holds it and since when, never the token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    /// The first 12 hex digits of the token's SHA-256: how it is named to revoke it.
    pub id: String,
    pub role: Role,
    /// Who holds it: the actor of everything done with it.
    pub subject: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

impl From<&TokenRecord> for TokenView {
    fn from(r: &TokenRecord) -> Self {
        TokenView {
            id: r.id().to_owned(),
            role: r.role,
            subject: r.subject.clone(),
            created_at: r.created_at.clone(),
            revoked_at: r.revoked_at.clone(),
        }
    }
}

/// The subject of a new token: `auth::check_subject` is the rule, and the pattern is derived from
/// it (`auth::subject_pattern`), as far as a pattern can say it.
fn subject_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(auth::MAX_SUBJECT_CHARS))
        .pattern(Some(auth::subject_pattern()))
        .description(Some(
            "Who will hold it: 1-128 characters with no control or invisible characters (a zero-width space, a direction mark, a variation selector, a tag character), words separated by single ordinary spaces and none at either end, in Unicode's normalisation form NFKC (an accented letter as one character; no ligatures, full-width or Roman-numeral letters), so that two subjects that look the same are the same. A zero-width joiner or non-joiner is taken only where its script needs one: after a virama between two letters of its script, or a non-joiner between two letters that would otherwise join (RFC 5892 appendix A). The pattern names the invisible characters of the Basic Multilingual Plane only, allows the joiners anywhere, and cannot say NFKC: a subject it matches is still refused for an invisible character beyond the BMP, a joiner out of place, or not being in NFKC.",
        ))
        .build()
}

/// A token to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub role: Role,
    /// Who will hold it (`subject_schema` describes it).
    #[schema(schema_with = subject_schema)]
    pub subject: String,
}

/// A token just created: the only time the token itself is ever shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub record: TokenView,
    /// The bearer token. Only its hash is stored: keep it now, it cannot be shown again.
    pub token: String,
}

/// Every token ever issued, revoked ones included, oldest first.
#[utoipa::path(get, path = "/v1/admin/tokens", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "Every token, without the tokens themselves", body = [TokenView]),
        super::TokenProblems,
        (status = 403, description = "Not an admin", body = super::Problem, content_type = "application/problem+json"),
))]
pub async fn tokens_list(
    _caller: Authorized<Admins>,
    State(state): State<AppState>,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    let mut records = state.decisions.store().tokens().map_err(ApiError::from)?;
    records.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.hash.cmp(&b.hash)));
    Ok(Json(records.iter().map(TokenView::from).collect()))
}

/// Create a token; it is accepted at once. The answer is the only place the token appears.
#[utoipa::path(post, path = "/v1/admin/tokens", tag = "admin", security(("bearer" = [])),
    request_body = NewToken,
    responses(
        (status = 201, description = "The token, shown this once", body = CreatedToken),
        (status = 400, description = "Malformed request, or a subject that is blank, too long, has control or invisible characters (a joiner out of place among them), edge, doubled or unusual spaces, or is not in NFKC", body = super::Problem, content_type = "application/problem+json"),
        super::TokenProblems,
        (status = 403, description = "Not an admin", body = super::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The subject looks the same as another token's (in use or revoked) without being it: Unicode's confusables (UTS #39), such as a Cyrillic letter for a Latin one, \"rn\" for \"m\", or another case", body = super::Problem, content_type = "application/problem+json"),
        super::BodyProblems,
        super::WriteProblems,
))]
pub async fn token_create(
    caller: Authorized<Admins>,
    State(state): State<AppState>,
    Json(request): Json<NewToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    auth::check_subject(&request.subject).map_err(|m| ApiError::invalid("/subject", m))?;
    // Under the lock, so two look-alike subjects created at once cannot both pass.
    let _writing = state.token_writes.lock().await;
    let records = state.decisions.store().tokens().map_err(ApiError::from)?;
    if let Some(alike) = auth::look_alike(&records, &request.subject) {
        return Err(ApiError::SubjectLooksAlike(alike.why()));
    }
    let (token, record) = auth::issue(request.role, &request.subject);
    store_token(&state, &record).await?;
    state
        .tokens
        .write()
        .expect("token lock poisoned")
        .add(record.clone());
    tracing::info!(id = record.id(), role = %record.role, subject = record.subject.as_str(), by = caller.subject.as_str(), "token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            record: TokenView::from(&record),
            token,
        }),
    ))
}

/// Revoke a token: it is refused from now on. Its record is kept, so who held it stays on
/// record. The last admin token that is not revoked cannot be revoked.
#[utoipa::path(post, path = "/v1/admin/tokens/{id}/revoke", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "The token's id from GET /v1/admin/tokens (or a longer prefix of its hash)")),
    responses(
        (status = 400, description = "A path parameter that is not UTF-8", body = super::Problem, content_type = "application/problem+json"),
        (status = 200, description = "The token, revoked", body = TokenView),
        super::TokenProblems,
        (status = 403, description = "Not an admin", body = super::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No token has this id", body = super::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already revoked, the id names more than one token, or it is the last admin token", body = super::Problem, content_type = "application/problem+json"),
        super::WriteProblems,
))]
pub async fn token_revoke(
    caller: Authorized<Admins>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, ApiError> {
    let _writing = state.token_writes.lock().await;
    let records = state.decisions.store().tokens().map_err(ApiError::from)?;
    let revoked = auth::revoke(&records, &id).map_err(|e| match e {
        RevokeError::Unknown(id) => ApiError::UnknownToken(id),
        other => ApiError::TokenConflict(other.to_string()),
    })?;
    let admins_left = records
        .iter()
        .filter(|r| r.role == Role::Admin && r.revoked_at.is_none() && r.hash != revoked.hash)
        .count();
    if revoked.role == Role::Admin && admins_left == 0 {
        return Err(ApiError::TokenConflict(
            "this is the last admin token: create another admin token first".into(),
        ));
    }
    store_token(&state, &revoked).await?;
    state
        .tokens
        .write()
        .expect("token lock poisoned")
        .remove(&revoked.hash);
    tracing::info!(id = revoked.id(), role = %revoked.role, subject = revoked.subject.as_str(), by = caller.subject.as_str(), "token revoked");
    Ok(Json(TokenView::from(&revoked)))
}

/// Stores a token record durably (flushed and fdatasync'd), off the async threads, before the
/// caller changes which tokens are accepted or answers.
async fn store_token(state: &AppState, record: &TokenRecord) -> Result<(), ApiError> {
    let store = Arc::clone(state.decisions.store());
    let record = record.clone();
    tokio::task::spawn_blocking(move || store.put_token(&record))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::from)
}
