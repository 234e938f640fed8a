//! The API description tells the truth: responses have the shape it describes, and it describes
//! each parameter as the service checks it, so what it allows is accepted and what it rules out
//! is refused. Each test here pins a mismatch that the fuzzer (`benches/fuzz.sh`, schemathesis
//! driven by `/openapi.json`) once found.

use reqwest::header::IF_MATCH;
use reqwest::{Method, StatusCode};
use safeguard::auth::Role;
use serde_json::{json, Value};

use crate::common::{error_paths, json_of, problem, spawn_app, valid_input, TestApp, TOOL};

/// The service's own API description.
async fn description(app: &TestApp) -> Value {
    let response = app
        .request(Method::GET, "/openapi.json", None)
        .send()
        .await
        .expect("the request is sent");
    json_of(response, StatusCode::OK).await
}

/// Whether `value` is valid against `schema`, a schema taken from the description `doc`: its
/// `$ref`s point into the description's components, and formats are checked.
fn allows(doc: &Value, schema: &Value, value: &Value) -> bool {
    let mut root = schema.clone();
    root["components"] = doc["components"].clone();
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("the described schema compiles: {e}\n{schema}"))
        .is_valid(value)
}

/// The schema of parameter `name` of `method path`.
fn parameter_schema(doc: &Value, method: &str, path: &str, name: &str) -> Value {
    doc["paths"][path][method]["parameters"]
        .as_array()
        .unwrap_or_else(|| panic!("{method} {path} has no parameters"))
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))["schema"]
        .clone()
}

/// The JSON schema of the `status` response of `method path`.
fn response_schema(doc: &Value, method: &str, path: &str, status: u16) -> Value {
    let schema = &doc["paths"][path][method]["responses"][status.to_string()]["content"]
        ["application/json"]["schema"];
    assert!(
        !schema.is_null(),
        "{method} {path} describes no JSON {status}"
    );
    schema.clone()
}

/// The request body schema of `method path`.
fn request_schema(doc: &Value, method: &str, path: &str) -> Value {
    let schema =
        &doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"];
    assert!(!schema.is_null(), "{method} {path} describes no JSON body");
    schema.clone()
}

/// `text` with every byte but the URL-safe ones percent-encoded, to send it as one path segment.
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Asserts that the description allows `value` exactly when the service accepts it.
fn check(doc: &Value, schema: &Value, value: &Value, accepted: bool, what: &str) {
    assert_eq!(
        allows(doc, schema, value),
        accepted,
        "the description {} {what} {value}, which the service {}",
        if accepted { "refuses" } else { "allows" },
        if accepted { "accepts" } else { "refuses" },
    );
}

/// Posts each body to `path` as `role`: the service must answer `success` exactly for the bodies
/// marked accepted, and the description of the request body must allow exactly those.
async fn bodies_agree(
    app: &TestApp,
    path: &str,
    role: Role,
    success: StatusCode,
    cases: impl IntoIterator<Item = (Value, bool)>,
    what: &str,
) {
    let doc = description(app).await;
    let schema = request_schema(&doc, "post", path);
    for (body, accepted) in cases {
        let response = app.post_json(path, role, &body).await;

        let status = response.status();
        assert_eq!(
            status == success,
            accepted,
            "{body}: {status} {}",
            response.text().await.unwrap()
        );
        check(&doc, &schema, &body, accepted, what);
    }
}

#[tokio::test]
async fn every_operation_describes_the_problems_of_its_token_and_body() {
    let app = spawn_app().await;
    let doc = description(&app).await;

    let mut bodies = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let what = format!("{method} {path}");
            let described = |status: &str| {
                !operation["responses"][status]["content"]["application/problem+json"]["schema"]
                    .is_null()
            };
            let behind_a_token = operation["security"]
                .as_array()
                .is_some_and(|s| !s.is_empty());
            assert_eq!(
                described("401"),
                behind_a_token,
                "{what}: a 401 is described exactly when a token is needed"
            );
            if !operation["requestBody"].is_null() {
                bodies += 1;
                for status in ["408", "413", "415"] {
                    assert!(
                        described(status),
                        "{what} reads a body but does not describe {status}"
                    );
                }
            }
        }
    }
    // Evaluate, submit, amend, override, approve, decline, replay, disparity, new token.
    assert_eq!(bodies, 9, "operations that read a body");
}

#[tokio::test]
async fn tools_and_their_stages_are_answered_as_described() {
    let app = spawn_app().await;
    let doc = description(&app).await;

    let list = json_of(app.get("/v1/tools", Role::Auditor).await, StatusCode::OK).await;

    assert!(
        allows(&doc, &response_schema(&doc, "get", "/v1/tools", 200), &list),
        "GET /v1/tools: {list}"
    );
    let stages: Vec<&Value> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["stage"])
        .collect();
    for stage in [json!(1), json!("any"), json!("org")] {
        assert!(stages.contains(&&stage), "no tool at stage {stage}");
    }
    let detail_schema = response_schema(&doc, "get", "/v1/tools/{tool}", 200);
    for tool in list.as_array().unwrap() {
        let path = format!("/v1/tools/{}", tool["id"].as_str().unwrap());
        let detail = json_of(app.get(&path, Role::Auditor).await, StatusCode::OK).await;
        assert!(allows(&doc, &detail_schema, &detail), "GET {path}");
    }
}

#[tokio::test]
async fn a_reload_is_answered_as_described() {
    let app = spawn_app().await;
    let doc = description(&app).await;

    let reloaded = json_of(app.reload().await, StatusCode::OK).await;

    let schema = response_schema(&doc, "post", "/v1/admin/reload", 200);
    assert!(allows(&doc, &schema, &reloaded), "{reloaded}");
}

#[tokio::test]
async fn case_ids_are_described_as_the_service_checks_them() {
    let app = spawn_app().await;
    let doc = description(&app).await;
    let schema = parameter_schema(&doc, "get", "/v1/cases/{case}", "case");

    for (id, accepted) in [
        ("case-42", true),
        ("LA.2024_07:child-3", true),
        (&"x".repeat(128), true),
        (&"x".repeat(129), false),
        ("case 42", false),
        ("case/42", false),
        ("café", false),
    ] {
        let response = app
            .get(&format!("/v1/cases/{}", segment(id)), Role::Auditor)
            .await;

        assert_eq!(
            response.status() == StatusCode::OK,
            accepted,
            "GET /v1/cases/{id}: {}",
            response.status()
        );
        check(&doc, &schema, &json!(id), accepted, "the case id");
    }
    assert!(!allows(&doc, &schema, &json!("")), "an empty case id");
}

#[tokio::test]
async fn every_case_and_decision_id_in_a_path_is_described_alike() {
    let app = spawn_app().await;
    let doc = description(&app).await;
    let expected = parameter_schema(&doc, "get", "/v1/cases/{case}", "case");

    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for p in operation["parameters"].as_array().into_iter().flatten() {
                if p["in"] == "path" && (p["name"] == "case" || p["name"] == "id") {
                    assert_eq!(p["schema"], expected, "{method} {path} {}", p["name"]);
                }
            }
        }
    }
}

#[tokio::test]
async fn idempotency_keys_are_described_as_the_service_checks_them() {
    let app = spawn_app().await;
    let doc = description(&app).await;
    let schema = parameter_schema(
        &doc,
        "post",
        "/v1/cases/{case}/decisions",
        "Idempotency-Key",
    );
    let body = json!({"tool": TOOL, "input": valid_input(TOOL)});

    for (n, (key, accepted)) in [
        ("visit-2024-05-01", true),
        ("~!#$%&'*+.^_`|", true),
        (&"k".repeat(255), true),
        (&"k".repeat(256), false),
        ("visit 2024-05-01", false),
        ("visit\t1", false),
    ]
    .into_iter()
    .enumerate()
    {
        let response = app
            .request(
                Method::POST,
                &format!("/v1/cases/case-{n}/decisions"),
                Some(app.token(Role::Practitioner)),
            )
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .unwrap();

        assert_eq!(
            response.status() == StatusCode::CREATED,
            accepted,
            "Idempotency-Key {key:?}: {}",
            response.status()
        );
        check(&doc, &schema, &json!(key), accepted, "the Idempotency-Key");
    }
}

#[tokio::test]
async fn if_match_is_described_as_the_service_reads_it() {
    let app = spawn_app().await;
    let doc = description(&app).await;
    let schema = parameter_schema(&doc, "post", "/v1/decisions/{id}/revisions", "If-Match");
    let decision = app.decide("case-1", TOOL).await;
    let path = format!(
        "/v1/decisions/{}/revisions",
        decision["id"].as_str().unwrap()
    );
    let body = json!({"input": valid_input(TOOL)});

    // Revision 7 does not exist yet: a value the service reads is a 409, one it cannot is a 400.
    for (value, read) in [
        ("\"7\"", true),
        ("W/\"7\"", true),
        ("7", true),
        ("null", false),
        ("\"7", false),
        ("+7", false),
        ("\"\"7\"\"", false),
        ("*", false),
        ("99999999999", false),
    ] {
        let response = app
            .request(Method::POST, &path, Some(app.token(Role::Practitioner)))
            .header(IF_MATCH, value)
            .json(&body)
            .send()
            .await
            .unwrap();

        let expected = if read {
            StatusCode::CONFLICT
        } else {
            StatusCode::BAD_REQUEST
        };
        assert_eq!(response.status(), expected, "If-Match {value}");
        check(&doc, &schema, &json!(value), read, "the If-Match");
    }
}

#[tokio::test]
async fn export_filters_are_described_as_the_service_checks_them() {
    let app = spawn_app().await;
    let doc = description(&app).await;

    for (name, value, accepted) in [
        ("from", "2026-01-31T00:00:00Z", true),
        ("to", "2026-01-31T09:30:00.5+01:00", true),
        ("from", "", false),
        ("to", "yesterday", false),
        ("from", "2026-01-31", false),
    ] {
        let schema = parameter_schema(&doc, "get", "/v1/audit/decisions", name);
        let response = app
            .request(
                Method::GET,
                "/v1/audit/decisions",
                Some(app.token(Role::Auditor)),
            )
            .query(&[(name, value)])
            .send()
            .await
            .unwrap();

        assert_eq!(
            response.status() == StatusCode::OK,
            accepted,
            "{name}={value}: {}",
            response.status()
        );
        check(&doc, &schema, &json!(value), accepted, name);
    }
}

#[tokio::test]
async fn new_tokens_are_described_as_the_service_checks_them() {
    let app = spawn_app().await;
    let subjects = [
        ("pat.smith".to_owned(), true),
        ("Pat Smith (duty)".to_owned(), true),
        ("é".repeat(128), true),
        (String::new(), false),
        ("   ".to_owned(), false),
        (" Pat Smith (duty) ".to_owned(), false),
        ("pat\nsmith".to_owned(), false),
        ("pat\u{85}".to_owned(), false),
        ("pat\u{200b}".to_owned(), false),
        ("x".repeat(129), false),
    ];
    let cases = subjects.map(|(subject, accepted)| {
        (
            json!({"role": "practitioner", "subject": subject}),
            accepted,
        )
    });

    bodies_agree(
        &app,
        "/v1/admin/tokens",
        Role::Admin,
        StatusCode::CREATED,
        cases,
        "the subject",
    )
    .await;
}

#[tokio::test]
async fn replay_requests_are_described_as_the_service_checks_them() {
    let app = spawn_app().await;
    app.decide("case-1", TOOL).await;
    let replay = |changes: Value| {
        let mut body = json!({"tool": TOOL, "against": {"kind": "recorded"}});
        body.as_object_mut()
            .unwrap()
            .extend(changes.as_object().unwrap().clone());
        body
    };

    let cases = [
        (replay(json!({})), true),
        (
            replay(json!({"limit": 1000, "from": "2020-01-01T00:00:00Z"})),
            true,
        ),
        (replay(json!({"limit": 1001})), false),
        // JSON Schema counts 5.0 as the integer 5; so does the service.
        (replay(json!({"limit": 5.0, "offset": 0.0})), true),
        (replay(json!({"limit": 5.5})), false),
        (replay(json!({"to": "tomorrow"})), false),
        (replay(json!({"from": ""})), false),
        (
            replay(json!({"against": {"kind": "version", "digest": "sha256:0", "colour": "blue"}})),
            false,
        ),
        (
            replay(json!({"against": {"kind": "recorded", "digest": "sha256:0"}})),
            false,
        ),
    ];

    bodies_agree(
        &app,
        "/v1/audit/replay",
        Role::Auditor,
        StatusCode::OK,
        cases,
        "the replay",
    )
    .await;
}

#[tokio::test]
async fn disparity_requests_are_described_as_the_service_checks_them() {
    let app = spawn_app().await;
    app.decide("case-1", TOOL).await;
    let cases = [
        (json!({"tool": TOOL, "field": "/severity"}), true),
        (
            json!({"tool": TOOL, "field": "/severity", "from": "2020-01-01T00:00:00Z"}),
            true,
        ),
        (json!({"tool": " ", "field": "/severity"}), false),
        (json!({"tool": TOOL, "field": "severity"}), false),
        (
            json!({"tool": TOOL, "field": "/severity", "to": "soon"}),
            false,
        ),
    ];

    bodies_agree(
        &app,
        "/v1/audit/disparity",
        Role::Auditor,
        StatusCode::OK,
        cases,
        "the disparity request",
    )
    .await;
}

#[tokio::test]
async fn a_disparity_group_of_forms_without_the_field_is_answered_as_described() {
    let app = spawn_app().await;
    app.decide("case-1", TOOL).await;
    let doc = description(&app).await;
    let body = json!({"tool": TOOL, "field": "/not_a_field"});

    let response = app
        .post_json("/v1/audit/disparity", Role::Auditor, &body)
        .await;

    let disparity = json_of(response, StatusCode::OK).await;
    assert_eq!(disparity["groups"][0]["value"], Value::Null, "{disparity}");
    let schema = response_schema(&doc, "post", "/v1/audit/disparity", 200);
    assert!(allows(&doc, &schema, &disparity), "{disparity}");
}

#[tokio::test]
async fn an_expected_revision_written_as_a_whole_float_is_that_revision() {
    let app = spawn_app().await;
    let decision = app.decide("case-1", TOOL).await;
    let path = format!(
        "/v1/decisions/{}/revisions",
        decision["id"].as_str().unwrap()
    );
    let body = json!({"input": valid_input(TOOL), "expected_revision": 1.0});

    let response = app.post_json(&path, Role::Practitioner, &body).await;

    let amended = json_of(response, StatusCode::CREATED).await;
    assert_eq!(amended["revision"], 2, "{amended}");
}

#[tokio::test]
async fn an_expected_revision_that_is_not_a_whole_number_is_a_400_naming_it() {
    let app = spawn_app().await;
    let decision = app.decide("case-1", TOOL).await;
    let path = format!(
        "/v1/decisions/{}/revisions",
        decision["id"].as_str().unwrap()
    );

    for revision in [json!(1.5), json!(-1), json!(4294967296_u64), json!("1")] {
        let body = json!({"input": valid_input(TOOL), "expected_revision": revision});

        let response = app.post_json(&path, Role::Practitioner, &body).await;

        let problem = problem(
            response,
            StatusCode::BAD_REQUEST,
            "/problems/invalid-request",
        )
        .await;
        assert_eq!(
            error_paths(&problem),
            ["/expected_revision"],
            "{revision}: {problem}"
        );
    }
}
