//! What the derives cannot say about the API, added to its description in one place: the shape
//! of every case and decision id in a path, the form of the `Idempotency-Key` and `If-Match`
//! headers, the time format of the export filter, and the closed variants of a replay target
//! (the audit request bodies carry their bounds on their own derives). Each constraint restates
//! a check the service makes (the patterns sit beside the checks in `decisions.rs`), so that a
//! client, or a fuzzer, reading the description sends what the service accepts, and the service
//! refuses what the description rules out.
//!
//! The constraints on parameters are pinned by `tests/api/openapi.rs`, which also checks that
//! the service agrees.

use utoipa::openapi::path::{Operation, Parameter, ParameterIn};
use utoipa::openapi::schema::{
    AdditionalProperties, KnownFormat, Object, ObjectBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::{OpenApi, RefOr};

use super::decisions::{IDEMPOTENCY_KEY_PATTERN, ID_MAX_LENGTH, ID_PATTERN, IF_MATCH_PATTERN};

/// Applied to the description once the routes are in it (see `api::routes`).
pub(super) struct Constraints;

impl utoipa::Modify for Constraints {
    fn modify(&self, openapi: &mut OpenApi) {
        for (path, operation) in operations(openapi) {
            for parameter in operation.parameters.iter_mut().flatten() {
                let schema = match (&parameter.parameter_in, parameter.name.as_str()) {
                    (ParameterIn::Path, "case" | "id") => id_schema(),
                    (ParameterIn::Header, "Idempotency-Key") => {
                        string_schema(IDEMPOTENCY_KEY_PATTERN)
                    }
                    (ParameterIn::Header, "If-Match") => string_schema(IF_MATCH_PATTERN),
                    (ParameterIn::Query, "from" | "to") if path == "/v1/audit/decisions" => {
                        date_time(parameter)
                    }
                    _ => continue,
                };
                parameter.schema = Some(RefOr::T(Schema::Object(schema)));
            }
        }
        audit_bounds(openapi);
    }
}

/// Every operation with its path.
fn operations(openapi: &mut OpenApi) -> impl Iterator<Item = (&str, &mut Operation)> {
    openapi.paths.paths.iter_mut().flat_map(|(path, item)| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        .map(move |operation| (path.as_str(), operation))
    })
}

fn id_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(ID_PATTERN))
        .min_length(Some(1))
        .max_length(Some(ID_MAX_LENGTH))
        .build()
}

fn string_schema(pattern: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .build()
}

/// A query parameter's own schema, as an RFC 3339 time.
fn date_time(parameter: &Parameter) -> Object {
    let mut schema = match &parameter.schema {
        Some(RefOr::T(Schema::Object(schema))) => schema.clone(),
        _ => panic!(
            "the query parameter {} has no inline schema",
            parameter.name
        ),
    };
    schema.format = Some(SchemaFormat::KnownFormat(KnownFormat::DateTime));
    schema
}

/// What the audit types' derives cannot say: the closed variants of a replay target.
fn audit_bounds(openapi: &mut OpenApi) {
    // `Target` refuses unknown fields (`deny_unknown_fields`), which the derive does not carry
    // over to the variants of an internally tagged enum; every variant is a struct variant, so
    // serde refuses them in each.
    match component_mut(openapi, "Target") {
        Schema::OneOf(target) => {
            for variant in &mut target.items {
                match variant {
                    RefOr::T(Schema::Object(variant)) => {
                        variant.additional_properties =
                            Some(Box::new(AdditionalProperties::FreeForm(false)));
                    }
                    _ => panic!("a variant of Target is not an inline object"),
                }
            }
        }
        _ => panic!("Target is not a oneOf"),
    }
}

fn component_mut<'a>(openapi: &'a mut OpenApi, schema: &str) -> &'a mut Schema {
    let found = openapi
        .components
        .as_mut()
        .and_then(|c| c.schemas.get_mut(schema));
    match found {
        Some(RefOr::T(schema)) => schema,
        _ => panic!("the API description has no inline schema {schema}"),
    }
}
