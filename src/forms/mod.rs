//! Form validation: a tool's JSON Schema (draft 2020-12) compiled once, and every violation of a
//! submitted form reported as `{path, message}` with `path` a JSON Pointer into the form.
//!
//! Beyond its schema, a form may hold no integer that a JSON reader cannot hold exactly (beyond
//! ±(2^53 − 1), the I-JSON limit of RFC 7493): the service stores forms as RFC 8785 canonical
//! JSON, which is defined over IEEE doubles, so such a number could not be stored as sent, nor
//! its hash checked by others.
//!
//! Schemas resolve `$ref` only inside their own document. The crate is built without its
//! network and file features, and the validator is also given a retriever that refuses every
//! external reference, so a form schema can never make the service fetch anything.

use jsonschema::error::ValidationErrorKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The JSON Pointer of field `name` of the object at `parent`.
fn child(parent: &str, name: &str) -> String {
    format!("{parent}/{}", name.replace('~', "~0").replace('/', "~1"))
}

/// The largest magnitude of an integer every JSON reader holds exactly: 2^53 - 1.
pub const MAX_EXACT_INTEGER: u64 = 9_007_199_254_740_991;

/// Whether `n` is within ±(2^53 - 1), where every whole number is held exactly by an IEEE
/// double. Beyond it every double is whole, and canonical JSON writes it as an integer
/// (`1e16` as `10000000000000000`) that could not be read back exactly, nor accepted again: a
/// stored form must pass the same check it passed when it was sent, or it could not be replayed.
fn exact(n: &serde_json::Number) -> bool {
    match (n.as_u64(), n.as_i64(), n.as_f64()) {
        (Some(u), _, _) => u <= MAX_EXACT_INTEGER,
        (None, Some(i), _) => i.unsigned_abs() <= MAX_EXACT_INTEGER,
        (None, None, Some(f)) => f.abs() <= MAX_EXACT_INTEGER as f64,
        _ => true,
    }
}

/// One way a submitted form breaks its schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Violation {
    /// JSON Pointer to the offending value in the form (`""` for the form itself).
    pub path: String,
    /// What is wrong, in words a practitioner can act on.
    pub message: String,
}

/// The largest values a tool's rules can hold (the sandbox's bounds). A form holding a larger
/// one is refused here, naming the field, rather than failing later in the rules with a limit
/// the practitioner cannot place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Bytes of one text.
    pub text_bytes: usize,
    /// Items of one list.
    pub items: usize,
    /// Fields of one object.
    pub fields: usize,
}

impl Bounds {
    /// No bound beyond the schema's own.
    pub const NONE: Bounds = Bounds {
        text_bytes: usize::MAX,
        items: usize::MAX,
        fields: usize::MAX,
    };
}

/// Whether `value` and everything in it can be stored exactly and held by a tool's rules: every
/// number [`exact`], every text, list and object within `bounds`. One walk, allocating nothing:
/// the path every valid form takes.
fn holdable(value: &Value, bounds: &Bounds) -> bool {
    match value {
        Value::Number(n) => exact(n),
        Value::String(s) => s.len() <= bounds.text_bytes,
        Value::Array(items) => {
            items.len() <= bounds.items && items.iter().all(|v| holdable(v, bounds))
        }
        Value::Object(fields) => {
            fields.len() <= bounds.fields && fields.values().all(|v| holdable(v, bounds))
        }
        _ => true,
    }
}

/// The most violations an answer lists: enough for any form a person filled in, and a bound on
/// the answer to one that was not.
pub const MAX_VIOLATIONS: usize = 100;

/// `violations` as an answer lists them: the first [`MAX_VIOLATIONS`], then, when there were
/// more, one that says so.
fn listed(mut violations: Vec<Violation>) -> Vec<Violation> {
    if violations.len() > MAX_VIOLATIONS {
        violations.truncate(MAX_VIOLATIONS);
        violations.push(Violation {
            path: String::new(),
            message: format!(
                "the form has more problems than these: only the first {MAX_VIOLATIONS} are listed"
            ),
        });
    }
    violations
}

/// A violation for every value in `value` (at JSON Pointer `path`) that [`holdable`] refuses,
/// up to one more than [`MAX_VIOLATIONS`] (enough to say there were more).
fn unholdable(value: &Value, path: &str, bounds: &Bounds, out: &mut Vec<Violation>) {
    if out.len() > MAX_VIOLATIONS {
        return;
    }
    let mut say = |message: String| {
        out.push(Violation {
            path: path.to_owned(),
            message,
        })
    };
    match value {
        Value::Number(n) if !exact(n) => say(format!(
            "is too large to be stored exactly: numbers must be between -{MAX_EXACT_INTEGER} and {MAX_EXACT_INTEGER}"
        )),
        Value::String(s) if s.len() > bounds.text_bytes => say(format!(
            "is {} bytes long; the longest text a tool can read is {} bytes",
            s.len(),
            bounds.text_bytes
        )),
        Value::Array(items) => {
            if items.len() > bounds.items {
                say(format!(
                    "has {} items; a tool can read at most {}",
                    items.len(),
                    bounds.items
                ));
            }
            for (i, item) in items.iter().enumerate() {
                if out.len() > MAX_VIOLATIONS {
                    break;
                }
                unholdable(item, &format!("{path}/{i}"), bounds, out);
            }
        }
        Value::Object(fields) => {
            if fields.len() > bounds.fields {
                say(format!(
                    "has {} fields; a tool can read at most {}",
                    fields.len(),
                    bounds.fields
                ));
            }
            for (name, field) in fields {
                if out.len() > MAX_VIOLATIONS {
                    break;
                }
                unholdable(field, &child(path, name), bounds, out);
            }
        }
        _ => {}
    }
}

/// A compiled form schema.
pub struct Form {
    validator: jsonschema::Validator,
    bounds: Bounds,
    /// The schema, to name the choices of a `oneOf` a value matched none of.
    schema: Value,
}

impl std::fmt::Debug for Form {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Form")
    }
}

/// Why a schema could not be compiled.
#[derive(Debug, thiserror::Error)]
#[error("{message}{}", if schema_path.is_empty() { String::new() } else { format!(" (at {schema_path})") })]
pub struct SchemaError {
    /// Where in the schema the problem is, as a JSON Pointer.
    pub schema_path: String,
    pub message: String,
    /// Text to find in the schema file when the pointer is unknown (an external `$ref`'s URI).
    pub needle: Option<String>,
}

/// Refuses every external `$ref`, naming it, so the load error says exactly what to fix.
struct NoExternalRefs;

impl jsonschema::Retrieve for NoExternalRefs {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        Err(format!(
            "external reference {uri} is not allowed: a form schema may only use `$ref` inside its own document (\"#/$defs/...\")"
        )
        .into())
    }
}

impl Form {
    /// This form, also refusing any value beyond `bounds`.
    pub fn within(self, bounds: Bounds) -> Self {
        Form { bounds, ..self }
    }

    /// Compiles `schema` as draft 2020-12 (whatever its `$schema` says), checking it against the
    /// meta-schema first so a tool owner hears about a misspelt keyword type, not a vague failure.
    pub fn compile(schema: &Value) -> Result<Self, Vec<SchemaError>> {
        if let Some(declared) = schema.get("$schema").and_then(Value::as_str) {
            if !declared.contains("2020-12") {
                return Err(vec![SchemaError {
                    needle: None,
                    schema_path: "/$schema".into(),
                    message: format!("`$schema` is {declared:?}; tools use draft 2020-12 (\"https://json-schema.org/draft/2020-12/schema\")"),
                }]);
            }
        }
        let meta_errors: Vec<SchemaError> = jsonschema::draft202012::meta::validator()
            .iter_errors(schema)
            .map(|e| SchemaError {
                schema_path: e.instance_path().as_str().to_owned(),
                message: e.to_string(),
                needle: None,
            })
            .collect();
        if !meta_errors.is_empty() {
            return Err(meta_errors);
        }
        let validator = jsonschema::draft202012::options()
            .with_retriever(NoExternalRefs)
            .build(schema)
            .map_err(|e| {
                let message = e.to_string();
                // jsonschema names an unresolvable reference as "Resource '<uri>' ...".
                let needle = message
                    .split_once("Resource '")
                    .and_then(|(_, rest)| rest.split_once('\''))
                    .map(|(uri, _)| uri.to_owned());
                vec![SchemaError {
                    schema_path: e.instance_path().as_str().to_owned(),
                    message,
                    needle,
                }]
            })?;
        Ok(Form {
            validator,
            schema: schema.clone(),
            bounds: Bounds::NONE,
        })
    }

    /// Every violation of `input`, in document order; empty when the form is valid.
    ///
    /// A missing required field and an unexpected field are reported at the field's own
    /// pointer (the validator reports them at the parent object), so a form renderer can put the
    /// message next to the field it is about.
    pub fn violations(&self, input: &Value) -> Vec<Violation> {
        let mut out = Vec::new();
        // A form too big for a tool to read is refused for that alone, before the schema is
        // walked: the validator collects a violation for every bad item of a list, and a list
        // of 450,000 would cost seconds and an answer of tens of megabytes. The walk that names
        // each value builds a pointer for every node; most forms need none, so look first.
        if !holdable(input, &self.bounds) {
            unholdable(input, "", &self.bounds, &mut out);
            return listed(out);
        }
        for e in self.validator.iter_errors(input) {
            // The validator lists every violation at once; turning each into ours stops at the
            // bound.
            if out.len() > MAX_VIOLATIONS {
                break;
            }
            let parent = e.instance_path().as_str();
            match e.kind() {
                ValidationErrorKind::Required {
                    property: Value::String(name),
                } => out.push(Violation {
                    path: child(parent, name),
                    message: format!("{name:?} is required"),
                }),
                ValidationErrorKind::AdditionalProperties { unexpected }
                | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
                    out.extend(unexpected.iter().map(|name| Violation {
                        path: child(parent, name),
                        message: format!("{name:?} is not a field of this form"),
                    }))
                }
                kind => out.push(Violation {
                    path: parent.to_owned(),
                    message: self
                        .message(kind, e.schema_path().as_str())
                        .unwrap_or_else(|| e.to_string()),
                }),
            }
        }
        listed(out)
    }

    /// What a violation asks of the practitioner, in words that never repeat the value itself
    /// (a form holds personal data, a child's age included, and problem details end up in case
    /// systems' logs); `None` for any other kind, whose own message is used.
    fn message(&self, kind: &ValidationErrorKind, keyword: &str) -> Option<String> {
        use ValidationErrorKind as K;
        let listed = |values: &[Value]| {
            values
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        Some(match kind {
            K::Minimum { limit } => format!("must be at least {limit}"),
            K::Maximum { limit } => format!("must be at most {limit}"),
            K::ExclusiveMinimum { limit } => format!("must be more than {limit}"),
            K::ExclusiveMaximum { limit } => format!("must be less than {limit}"),
            K::MultipleOf { multiple_of } => format!("must be a multiple of {multiple_of}"),
            K::MaxLength { limit } => format!("must be at most {limit} characters long"),
            K::MinLength { limit: 1 } => "must not be empty".into(),
            K::MinLength { limit } => format!("must be at least {limit} characters long"),
            K::MaxItems { limit } => format!("must have at most {limit} items"),
            K::MinItems { limit: 1 } => "must have at least one item".into(),
            K::MinItems { limit } => format!("must have at least {limit} items"),
            K::MaxProperties { limit } => format!("must have at most {limit} fields"),
            K::MinProperties { limit } => format!("must have at least {limit} fields"),
            K::Enum { options } => match options.as_array() {
                Some(options) => format!("must be one of: {}", listed(options)),
                None => "is not one of the allowed values".into(),
            },
            K::Constant { expected_value } => format!("must be {expected_value}"),
            K::Type {
                kind: jsonschema::error::TypeKind::Single(t),
            } => format!("must be of type {t}"),
            K::Type { .. } => "is not of an allowed type".into(),
            K::Pattern { pattern } => format!("must match the pattern {pattern}"),
            K::Format { format } => format!("must be a valid {format}"),
            K::UniqueItems => "must not hold the same item twice".into(),
            K::OneOfNotValid { .. } | K::AnyOf { .. } => {
                // A choice list (`oneOf` of `const`s, with titles) names its choices.
                let choices: Option<Vec<Value>> = self
                    .schema
                    .pointer(keyword)
                    .and_then(Value::as_array)
                    .and_then(|alternatives| {
                        alternatives
                            .iter()
                            .map(|a| a.get("const").cloned())
                            .collect()
                    });
                match choices {
                    Some(choices) => format!("must be one of: {}", listed(&choices)),
                    None => "matches none of the allowed forms".into(),
                }
            }
            K::OneOfMultipleValid { .. } => "matches more than one of the allowed forms".into(),
            K::Contains => {
                // The list's own description says what it must hold.
                let list = keyword.strip_suffix("/contains").unwrap_or(keyword);
                match self
                    .schema
                    .pointer(list)
                    .and_then(|l| l.get("description"))
                    .and_then(Value::as_str)
                {
                    Some(description) => {
                        format!("holds no entry of the kind it needs: {description}")
                    }
                    None => "holds no entry of the kind it needs".into(),
                }
            }
            K::Not { .. } | K::FalseSchema => "is not allowed here".into(),
            K::AdditionalItems { limit } => format!("must have at most {limit} items"),
            K::UnevaluatedItems { .. } => "has items this form does not allow".into(),
            K::PropertyNames { .. } => "has a field name this form does not allow".into(),
            _ => return None,
        })
    }

    /// Whether `input` is valid: the fast path, which allocates nothing for a valid form.
    pub fn is_valid(&self, input: &Value) -> bool {
        self.validator.is_valid(input) && holdable(input, &self.bounds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn form() -> Form {
        Form::compile(&json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "additionalProperties": false,
            "required": ["age"],
            "properties": {
                "age": {"type": "integer", "minimum": 0},
                "people": {"type": "array", "items": {"$ref": "#/$defs/person"}}
            },
            "$defs": {"person": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}
        }))
        .unwrap()
    }

    #[test]
    fn messages_say_what_is_allowed_and_never_repeat_the_value() {
        let form = Form::compile(&json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "view": {"type": "string", "maxLength": 5},
                "summary": {"type": "string", "minLength": 1},
                "severity": {"oneOf": [{"const": "none", "title": "None"}, {"const": "minor"}]},
                "colour": {"enum": ["red", "blue"]},
                "count": {"type": "integer"},
                "age": {"type": "integer", "maximum": 17},
                "people": {
                    "type": "array",
                    "description": "The practitioner's view is required.",
                    "maxItems": 2,
                    "items": {"$ref": "#/$defs/person"},
                    "contains": {"properties": {"who": {"const": "practitioner"}}, "required": ["who"]}
                }
            },
            "$defs": {"person": {"type": "object", "properties": {"role": {"oneOf": [{"const": "a"}, {"const": "b"}]}}}}
        }))
        .unwrap();
        let secret = "SECRET-NAME";
        let violations = form.violations(&json!({
            "view": format!("{secret} said more"),
            "summary": "",
            "severity": secret,
            "colour": secret,
            "count": secret,
            "age": 4242,
            "people": [{"who": secret, "role": secret}, {"who": secret}, {"who": secret}]
        }));
        let said: Vec<(&str, &str)> = violations
            .iter()
            .map(|v| (v.path.as_str(), v.message.as_str()))
            .collect();
        for (path, message) in [
            ("/view", "must be at most 5 characters long"),
            ("/summary", "must not be empty"),
            ("/severity", "must be one of: \"none\", \"minor\""),
            ("/colour", "must be one of: \"red\", \"blue\""),
            ("/count", "must be of type integer"),
            ("/age", "must be at most 17"),
            ("/people", "must have at most 2 items"),
            (
                "/people",
                "holds no entry of the kind it needs: The practitioner's view is required.",
            ),
            ("/people/0/role", "must be one of: \"a\", \"b\""),
        ] {
            assert!(
                said.contains(&(path, message)),
                "{path} {message}: {said:#?}"
            );
        }
        assert!(
            violations
                .iter()
                .all(|v| !v.message.contains(secret) && !v.message.contains("4242")),
            "{said:#?}"
        );
    }

    #[test]
    fn every_violation_is_reported_with_its_pointer() {
        let v = form().violations(&json!({"age": -1, "people": [{"name": "a"}, {}], "extra": 1}));
        let paths: Vec<&str> = v.iter().map(|v| v.path.as_str()).collect();
        assert!(paths.contains(&"/age"), "{v:?}");
        assert!(paths.contains(&"/people/1/name"), "{v:?}");
        assert!(paths.contains(&"/extra"), "{v:?}");
        assert_eq!(v.len(), 3, "{v:?}");
    }

    #[test]
    fn a_value_beyond_the_bounds_is_refused_at_its_pointer() {
        let f = form().within(Bounds {
            text_bytes: 4,
            items: 2,
            fields: 3,
        });
        let fits = json!({"age": 3, "people": [{"name": "four"}, {"name": "é"}]});
        assert!(f.is_valid(&fits), "{:?}", f.violations(&fits));

        let input = json!({"age": 3, "people": [{"name": "fives"}, {"name": "a"}, {"name": "b"}]});
        assert!(!f.is_valid(&input));
        let v = f.violations(&input);
        let found: Vec<(&str, &str)> = v
            .iter()
            .map(|v| (v.path.as_str(), v.message.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                ("/people", "has 3 items; a tool can read at most 2"),
                (
                    "/people/0/name",
                    "is 5 bytes long; the longest text a tool can read is 4 bytes"
                ),
            ]
        );
    }

    #[test]
    fn a_form_too_big_for_a_tool_is_refused_for_that_alone_before_the_schema_is_walked() {
        let f = form().within(Bounds {
            text_bytes: 100,
            items: 10,
            fields: 10,
        });
        // 450,000 people without the required name: the schema would refuse each one.
        let people = vec![json!({}); 450_000];
        let v = f.violations(&json!({"age": 3, "people": people}));
        assert_eq!(v.len(), 1, "{:?}", &v[..v.len().min(3)]);
        assert_eq!(v[0].path, "/people");
        assert_eq!(v[0].message, "has 450000 items; a tool can read at most 10");
    }

    #[test]
    fn an_answer_lists_the_first_hundred_violations_and_says_there_were_more() {
        let f = form();
        let nameless = json!({"age": 3, "people": vec![json!({}); 250]});
        let v = f.violations(&nameless);
        assert_eq!(v.len(), MAX_VIOLATIONS + 1);
        assert_eq!(v[0].path, "/people/0/name");
        assert_eq!(v[MAX_VIOLATIONS - 1].path, "/people/99/name");
        assert_eq!(v[MAX_VIOLATIONS].path, "");
        assert!(
            v[MAX_VIOLATIONS]
                .message
                .contains("only the first 100 are listed"),
            "{:?}",
            v[MAX_VIOLATIONS]
        );
        // Numbers beyond what can be stored, one per item: the walk stops at the bound too.
        let huge = json!({"age": 3, "people": vec![json!({"name": "a", "n": u64::MAX}); 5_000]});
        let v = f.violations(&huge);
        assert_eq!(v.len(), MAX_VIOLATIONS + 1);
        assert_eq!(v[MAX_VIOLATIONS - 1].path, "/people/99/n");
        // Exactly the bound: listed whole, with nothing said.
        let hundred = json!({"age": 3, "people": vec![json!({}); 100]});
        assert_eq!(f.violations(&hundred).len(), MAX_VIOLATIONS);
    }

    #[test]
    fn a_valid_form_has_no_violations() {
        let f = form();
        let input = json!({"age": 3, "people": [{"name": "a"}]});
        assert!(f.violations(&input).is_empty());
        assert!(f.is_valid(&input));
    }

    #[test]
    fn an_integer_a_json_reader_cannot_hold_exactly_is_refused_at_its_pointer() {
        let f = form();
        let edge =
            json!({"age": MAX_EXACT_INTEGER, "people": [{"name": "a", "n": -9007199254740991i64}]});
        assert!(f.is_valid(&edge), "{:?}", f.violations(&edge));
        assert!(f.violations(&edge).is_empty());

        let beyond =
            json!({"age": MAX_EXACT_INTEGER + 1, "people": [{"name": "a", "n/x": i64::MIN}]});
        assert!(!f.is_valid(&beyond));
        let v = f.violations(&beyond);
        let paths: Vec<&str> = v.iter().map(|v| v.path.as_str()).collect();
        assert_eq!(paths, ["/age", "/people/0/n~1x"], "{v:?}");
        assert!(v[0].message.starts_with("is too large"), "{v:?}");
        assert!(!v[0].message.contains("9007199254740992"), "{v:?}");
        // A fraction is within the range whenever it is a fraction at all.
        assert!(f.is_valid(&json!({"age": 3, "people": [{"name": "a", "x": 0.1}]})));
    }

    #[test]
    fn a_float_beyond_the_exact_range_is_refused_as_the_integer_it_would_be_stored_as() {
        // Canonical JSON writes 1e16 as 10000000000000000, which this check refuses: accepting
        // it as a float would store a form that could never be sent again, or replayed.
        let f = form();
        for text in [
            "1e16",
            "9007199254740992.0",
            "99999999999999999999",
            "1e300",
            "-1e16",
        ] {
            let input: Value = serde_json::from_str(&format!(
                r#"{{"age": 1, "people": [{{"name": "a", "x": {text}}}]}}"#
            ))
            .unwrap();
            assert!(!f.is_valid(&input), "{text}");
            let v = f.violations(&input);
            assert_eq!(v.len(), 1, "{text}: {v:?}");
            assert_eq!(v[0].path, "/people/0/x", "{text}");
        }
        let edge: Value = serde_json::from_str(
            r#"{"age": 1, "people": [{"name": "a", "x": 9007199254740991.0}]}"#,
        )
        .unwrap();
        assert!(f.is_valid(&edge));
    }

    #[test]
    fn external_references_are_refused() {
        for reference in ["https://example.com/s.json", "file:///etc/passwd"] {
            let err =
                Form::compile(&json!({"properties": {"a": {"$ref": reference}}})).unwrap_err();
            assert!(err[0].message.contains("not allowed"), "{err:?}");
        }
    }

    #[test]
    fn a_schema_that_breaks_the_meta_schema_names_the_place() {
        let err = Form::compile(&json!({"properties": {"a": {"type": "integr"}}})).unwrap_err();
        assert_eq!(err[0].schema_path, "/properties/a/type", "{err:?}");
    }

    #[test]
    fn other_drafts_are_refused() {
        let err = Form::compile(&json!({"$schema": "http://json-schema.org/draft-07/schema#"}))
            .unwrap_err();
        assert!(err[0].message.contains("2020-12"));
    }
}
