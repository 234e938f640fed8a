//! The catalog routes: list tools, read one, and evaluate a form without storing anything.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::auth::{AnyRole, Authorized};
use super::{ApiError, AppState, Json, Path};
use crate::catalog::{OutcomeDecl, OverridePolicy, ReviewAfter, Stage, Tool};
use crate::decisions::tool_ref;
use crate::rules::{Outcome, Reason};
use crate::store::ToolRef;

/// A tool as the catalog lists it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolSummary {
    pub id: String,
    pub title: String,
    pub version: String,
    pub digest: String,
    /// The stage of the case journey, 0 (front door) to 7 (close), or "any" or "org".
    #[schema(schema_with = stage_schema)]
    pub stage: Stage,
    /// `core`, or `plugin:<name>` for a tool a plugin added or changed.
    pub source: String,
}

/// How a [`Stage`] is written in JSON: a number for a case stage, a word for the others. Described
/// here rather than derived, because the derive cannot bound the number to the stages that exist.
fn stage_schema() -> utoipa::openapi::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type};
    let stage = OneOfBuilder::new()
        .description(Some(
            "The stage of the case journey, 0 (front door) to 7 (close), or \"any\" or \"org\".",
        ))
        .item(
            ObjectBuilder::new()
                .schema_type(SchemaType::Type(Type::Integer))
                .minimum(Some(0))
                .maximum(Some(7)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(SchemaType::Type(Type::String))
                .enum_values(Some(["any", "org"])),
        )
        .build();
    Schema::OneOf(stage)
}

/// One tool in full: what a form renderer and a client need.
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolDetail {
    #[serde(flatten)]
    pub summary: ToolSummary,
    /// The JSON Schema (draft 2020-12) of the form, `x-tool` included.
    #[schema(value_type = Object)]
    pub schema: Value,
    #[schema(value_type = Vec<Object>)]
    pub outcomes: Vec<OutcomeDecl>,
    #[schema(value_type = Object)]
    pub params: Value,
    #[serde(rename = "override", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub override_policy: Option<OverridePolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review_after_days: Option<u32>,
}

pub(super) fn summary(tool: &Tool) -> ToolSummary {
    ToolSummary {
        id: tool.id().to_owned(),
        title: tool.title.clone(),
        version: tool.meta.version.clone(),
        digest: tool.digest.clone(),
        stage: tool.meta.stage,
        source: tool.source.to_string(),
    }
}

/// Every tool in the catalog.
#[utoipa::path(get, path = "/v1/tools", tag = "tools", security(("bearer" = [])), responses(
    (status = 200, description = "The catalog", body = Vec<ToolSummary>),
    super::TokenProblems,
))]
pub async fn tools_list(
    _caller: Authorized<AnyRole>,
    State(state): State<AppState>,
) -> Result<Json<Vec<ToolSummary>>, ApiError> {
    let catalog = state.decisions.catalog();
    Ok(Json(catalog.tools().map(|t| summary(t)).collect()))
}

/// One tool: schema, outcomes, params, digest.
#[utoipa::path(get, path = "/v1/tools/{tool}", tag = "tools", security(("bearer" = [])),
    params(("tool" = String, Path, description = "The tool id")),
    responses(
        (status = 400, description = "A path parameter that is not UTF-8", body = super::Problem, content_type = "application/problem+json"),
        (status = 200, description = "The tool", body = ToolDetail),
        super::TokenProblems,
        (status = 404, description = "No such tool", body = super::Problem, content_type = "application/problem+json"),
))]
pub async fn tool_get(
    _caller: Authorized<AnyRole>,
    State(state): State<AppState>,
    Path(tool): Path<String>,
) -> Result<Json<ToolDetail>, ApiError> {
    let catalog = state.decisions.catalog();
    let tool = catalog.get(&tool).ok_or(ApiError::UnknownTool(tool))?;
    Ok(Json(ToolDetail {
        summary: summary(tool),
        schema: tool.schema.clone(),
        // Review intervals in days, whether the tool gives the number or the param that holds it.
        outcomes: tool
            .meta
            .outcomes
            .iter()
            .map(|o| OutcomeDecl {
                review_after_days: o
                    .review_after_days
                    .as_ref()
                    .and_then(|r| r.days(&tool.meta.params))
                    .map(ReviewAfter::Days),
                ..o.clone()
            })
            .collect(),
        params: tool.meta.params.clone(),
        override_policy: tool.meta.override_policy,
        review_after_days: tool
            .meta
            .review_after_days
            .as_ref()
            .and_then(|r| r.days(&tool.meta.params)),
    }))
}

/// A form to evaluate.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateRequest {
    /// The completed form, as the tool's schema describes it.
    #[schema(value_type = Object)]
    #[serde(deserialize_with = "super::form_json::unique_names")]
    pub input: Value,
}

/// What a tool decides for a form, with the version that decided it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Evaluation {
    pub tool: ToolRef,
    pub level: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f64>)]
    pub score: Option<serde_json::Number>,
    pub recommendation: String,
    pub explanation: String,
    pub reasons: Vec<Reason>,
    pub flags: Vec<String>,
}

impl Evaluation {
    fn new(tool: ToolRef, outcome: Outcome) -> Self {
        Evaluation {
            tool,
            level: outcome.level,
            score: outcome.score,
            recommendation: outcome.recommendation,
            explanation: outcome.explanation,
            reasons: outcome.reasons,
            flags: outcome.flags,
        }
    }
}

/// A dry run: validate the form and decide, storing nothing.
#[utoipa::path(post, path = "/v1/tools/{tool}/evaluate", tag = "tools", security(("bearer" = [])),
    params(("tool" = String, Path, description = "The tool id")),
    request_body = EvaluateRequest,
    responses(
        (status = 200, description = "The decision the tool would make", body = Evaluation),
        (status = 400, description = "Malformed request", body = super::Problem, content_type = "application/problem+json"),
        super::TokenProblems,
        (status = 404, description = "No such tool", body = super::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid form, or the rules hit a limit", body = super::Problem, content_type = "application/problem+json"),
        super::BodyProblems,
))]
pub async fn tool_evaluate(
    _caller: Authorized<AnyRole>,
    State(state): State<AppState>,
    Path(tool): Path<String>,
    Json(request): Json<EvaluateRequest>,
) -> Result<Json<Evaluation>, ApiError> {
    let (tool, outcome) = state.decisions.evaluate(&tool, request.input).await?;
    Ok(Json(Evaluation::new(tool_ref(&tool), outcome)))
}
