//! The case journey route.

use axum::extract::State;

use super::auth::{AnyRole, Authorized};
use super::decisions::check_id;
use super::{ApiError, AppState, Json, Path};
use crate::decisions::Journey;

/// Where a case stands: its stage, the latest decision per tool, and what is due next.
#[utoipa::path(get, path = "/v1/cases/{case}", tag = "cases", security(("bearer" = [])),
    params(("case" = String, Path, description = "The case id")),
    responses(
        (status = 200, description = "The case journey", body = Journey),
        (status = 400, description = "Malformed case id", body = super::Problem, content_type = "application/problem+json"),
        super::TokenProblems,
))]
pub async fn case_journey(
    _caller: Authorized<AnyRole>,
    State(state): State<AppState>,
    Path(case): Path<String>,
) -> Result<Json<Journey>, ApiError> {
    check_id("case", &case)?;
    Ok(Json(state.decisions.journey(&case, chrono::Utc::now())?))
}
