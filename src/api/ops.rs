//! Liveness, readiness, metrics, the API description and the pages of its problem types: the
//! routes that need no token (none says anything about a case, a decision or a token).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::Extension;

use axum::response::Html;

use super::problems::{self, ProblemType};
use super::{ApiError, AppState, Json, Path};

/// The API description, rendered once at start-up.
#[derive(Clone)]
pub struct OpenApiJson(pub Arc<String>);

/// The answer of the health routes: `{"status": "ok"}` or `{"status": "ready"}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive", body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: the catalog is loaded, the store is open and shutdown has not begun.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready", body = Health),
    (status = 503, description = "Not ready: starting, stopping, or the store can no longer make writes durable", body = super::Problem, content_type = "application/problem+json")
))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    if !state.ready.load(Ordering::SeqCst) {
        return Err(ApiError::Unavailable);
    }
    // A store that could not make a write durable refuses every write until a restart: a load
    // balancer should send the case systems elsewhere, and an operator restart it.
    if let Some(refusal) = state.decisions.store().write_failure() {
        return Err(refusal.into());
    }
    Ok(Json(Health { status: "ready" }))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Metrics", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // Read at each scrape, so an alert can fire on a store that takes no more writes.
    let writable = state.decisions.store().write_failure().is_none();
    metrics::gauge!("safeguard_store_writable").set(if writable { 1.0 } else { 0.0 });
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        super::metrics_handle().render(),
    )
}

/// This API's OpenAPI 3.1 description.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "The OpenAPI description", content_type = "application/json", body = Object)))]
pub async fn openapi(Extension(doc): Extension<OpenApiJson>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "application/json")],
        doc.0.as_str().to_owned(),
    )
}

/// Every problem type this API answers with, each linked to its page.
#[utoipa::path(get, path = "/problems", tag = "operations", responses((status = 200, description = "The problem types, as an HTML page", content_type = "text/html", body = String)))]
pub async fn problem_types() -> Html<String> {
    Html(problems::index())
}

/// What a problem type means and what to do about it: the page a problem document's `type`
/// leads to.
#[utoipa::path(get, path = "/problems/{slug}", tag = "operations",
    params(("slug" = String, Path, description = "The problem type's slug, e.g. `invalid-form`")),
    responses(
        (status = 200, description = "The problem type's page, in HTML", content_type = "text/html", body = String),
        (status = 400, description = "A path parameter that is not UTF-8", body = super::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No problem type has this slug", body = super::Problem, content_type = "application/problem+json")
    ))]
pub async fn problem_type(Path(slug): Path<String>) -> Result<Html<String>, ApiError> {
    ProblemType::from_slug(&slug)
        .map(|kind| Html(problems::page(kind)))
        .ok_or(ApiError::NotFound)
}
