//! Admin routes: reloading the catalog from disk.

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::{Admins, Authorized};
use super::tools::{summary, ToolSummary};
use super::{ApiError, AppState, Json};
use crate::catalog::Catalog;
use crate::forms::Violation;

/// What a reload put in force.
#[derive(Debug, Serialize, ToSchema)]
pub struct Reloaded {
    /// Every tool now served.
    pub tools: Vec<ToolSummary>,
    /// Ids whose digest changed, appeared or disappeared.
    pub changed: Vec<String>,
}

/// Reload tools and plugins from disk. The new catalog is put in force whole, or, on any
/// problem, not at all: the old one keeps serving and the problems are returned. Requests already
/// running finish on the catalog they started with.
#[utoipa::path(post, path = "/v1/admin/reload", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "The new catalog is in force", body = Reloaded),
        (status = 401, description = "No valid token", body = super::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = super::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The new catalog has problems; the old one keeps serving", body = super::Problem, content_type = "application/problem+json"),
))]
pub async fn catalog_reload(
    _caller: Authorized<Admins>,
    State(state): State<AppState>,
) -> Result<Json<Reloaded>, ApiError> {
    let root = state.tools_dir.clone();
    // Loading compiles every schema and script: seconds of CPU at worst, off the async threads.
    let loaded = tokio::task::spawn_blocking(move || Catalog::load(&root))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let catalog = loaded.map_err(|errors| {
        ApiError::CatalogInvalid(
            errors
                .into_iter()
                .map(|e| Violation {
                    path: e.location(),
                    message: e.message,
                })
                .collect(),
        )
    })?;
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
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    tracing::info!(changed = ?changed, "catalog reloaded");
    Ok(Json(Reloaded { tools, changed }))
}
