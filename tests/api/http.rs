//! The service as an HTTP citizen: the open operational routes, the API description, metrics,
//! and the problem every malformed request gets, after which nothing has been stored.

use reqwest::header::{ALLOW, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use safeguard::auth::Role;
use serde_json::{json, Value};

use crate::common::{error_paths, problem, spawn_app, spawn_app_with, valid_input, TestApp, TOOL};
use crate::hostile_root;

#[tokio::test]
async fn health_readiness_metrics_and_the_api_description_need_no_token() {
    let app = spawn_app().await;

    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let response = app.request(Method::GET, path, None).send().await.unwrap();

        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
    }
}

#[tokio::test]
async fn every_problem_type_leads_to_a_page_that_needs_no_token() {
    let app = spawn_app().await;
    // A real problem's type, followed as a client would, relative to the request's address.
    let refused = app
        .request(Method::GET, "/v1/tools", None)
        .send()
        .await
        .unwrap();
    let body = problem(refused, StatusCode::UNAUTHORIZED, "/problems/unauthorized").await;
    let followed = app
        .request(Method::GET, body["type"].as_str().unwrap(), None)
        .send()
        .await
        .unwrap();
    assert_eq!(followed.status(), StatusCode::OK);
    let page = followed.text().await.unwrap();
    assert!(page.contains("<h1>Unauthorized</h1>"), "{page}");
    assert!(page.contains("Authorization: Bearer"), "{page}");

    let index = app
        .request(Method::GET, "/problems", None)
        .send()
        .await
        .unwrap();
    assert_eq!(index.status(), StatusCode::OK);
    let index = index.text().await.unwrap();
    for kind in safeguard::api::ProblemType::ALL {
        let doc = kind.doc();
        let response = app
            .request(Method::GET, &kind.uri(), None)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{}", kind.uri());
        let content_type = response.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(content_type.starts_with("text/html"), "{content_type}");
        let page = response.text().await.unwrap();
        assert!(
            page.contains(&format!("HTTP status {}", doc.status.as_u16())),
            "{page}"
        );
        assert!(
            index.contains(&format!("href=\"{}\"", kind.uri())),
            "{index}"
        );
    }
    let unknown = app
        .request(Method::GET, "/problems/nope", None)
        .send()
        .await
        .unwrap();
    problem(unknown, StatusCode::NOT_FOUND, "/problems/not-found").await;
}

#[tokio::test]
async fn a_method_a_client_invents_is_counted_as_other_not_as_a_series_of_its_own() {
    let app = spawn_app().await;
    for i in 0..3 {
        let method = Method::from_bytes(format!("INVENTED{i}").as_bytes()).unwrap();
        let response = app.request(method, "/healthz", None).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    let text = app
        .request(Method::GET, "/metrics", None)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    assert!(!text.contains("INVENTED"), "{text}");
    assert!(
        text.contains(r#"route="/healthz",method="other",status="405""#),
        "{text}"
    );
}

#[tokio::test]
async fn health_and_readiness_answer_json() {
    let app = spawn_app().await;

    for (path, status) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let response = app.request(Method::GET, path, None).send().await.unwrap();

        assert_eq!(
            response.headers()[CONTENT_TYPE],
            "application/json",
            "{path}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, json!({"status": status}), "{path}");
    }
}

#[tokio::test]
async fn the_api_description_is_openapi_3_1_and_lists_every_route() {
    let app = spawn_app().await;
    let expected = [
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
        ("get", "/v1/tools"),
        ("get", "/v1/tools/{tool}"),
        ("post", "/v1/tools/{tool}/evaluate"),
        ("post", "/v1/cases/{case}/decisions"),
        ("get", "/v1/cases/{case}/decisions"),
        ("get", "/v1/cases/{case}"),
        ("get", "/v1/decisions/{id}"),
        ("get", "/v1/decisions/{id}/revisions"),
        ("post", "/v1/decisions/{id}/revisions"),
        ("post", "/v1/decisions/{id}/override"),
        ("post", "/v1/decisions/{id}/approve"),
    ];

    let response = app
        .request(Method::GET, "/openapi.json", None)
        .send()
        .await
        .unwrap();

    let doc: Value = response.json().await.unwrap();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "openapi is {}",
        doc["openapi"]
    );
    let missing: Vec<String> = expected
        .iter()
        .filter(|(method, path)| doc["paths"][path][method].is_null())
        .map(|(method, path)| format!("{} {path}", method.to_uppercase()))
        .collect();
    assert!(missing.is_empty(), "not described: {missing:?}");
}

#[tokio::test]
async fn metrics_count_requests_decisions_and_commit_batches() {
    let app = spawn_app().await;
    app.decide("case-metrics", TOOL).await;

    let response = app
        .request(Method::GET, "/metrics", None)
        .send()
        .await
        .unwrap();

    let text = response.text().await.unwrap();
    for name in [
        "safeguard_http_requests_total",
        "safeguard_decisions_total",
        "safeguard_commit_batch_size",
        "safeguard_commit_seconds",
        "safeguard_commit_phase_seconds_sum{phase=\"sync\"}",
        "safeguard_store_writable 1",
    ] {
        assert!(text.contains(name), "{name} is missing from:\n{text}");
    }
}

#[tokio::test]
async fn request_metrics_are_labelled_by_route_template_not_by_case() {
    let app = spawn_app().await;
    app.decide("case-labels", TOOL).await;

    let response = app
        .request(Method::GET, "/metrics", None)
        .send()
        .await
        .unwrap();

    let text = response.text().await.unwrap();
    assert!(
        text.contains(r#"route="/v1/cases/{case}/decisions",method="POST",status="201""#),
        "{text}"
    );
    assert!(!text.contains("case-labels"), "{text}");
}

#[tokio::test]
async fn an_unknown_address_is_a_404_problem() {
    let app = spawn_app().await;

    let response = app.get("/v1/nothing-here", Role::Auditor).await;

    problem(response, StatusCode::NOT_FOUND, "/problems/not-found").await;
}

#[tokio::test]
async fn an_unknown_tool_is_a_404_problem_and_nothing_is_stored() {
    let app = spawn_app().await;

    let response = app
        .submit("case-1", "no-such-tool", &json!({}), Role::Practitioner)
        .await;

    problem(response, StatusCode::NOT_FOUND, "/problems/unknown-tool").await;
    assert!(app.case_decisions("case-1").await.is_empty());
    app.assert_journal_empty().await;
}

/// Submits `input` for a new case and asserts it is refused as an invalid form naming exactly
/// `paths`, with nothing stored.
async fn assert_form_refused(app: &TestApp, input: &Value, paths: &[&str]) {
    assert_form_of_refused(app, TOOL, input, paths).await;
}

/// [`assert_form_refused`] for a form of `tool`.
async fn assert_form_of_refused(app: &TestApp, tool: &str, input: &Value, paths: &[&str]) {
    let response = app.submit("case-1", tool, input, Role::Practitioner).await;

    let body = problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/invalid-form",
    )
    .await;
    assert_eq!(error_paths(&body), paths, "{body}");
    assert!(app.case_decisions("case-1").await.is_empty());
    app.assert_journal_empty().await;
}

#[tokio::test]
async fn a_form_missing_a_required_field_is_422_naming_the_field() {
    let app = spawn_app().await;
    let mut input = valid_input(TOOL);
    input.as_object_mut().unwrap().remove("severity");

    assert_form_refused(&app, &input, &["/severity"]).await;
}

#[tokio::test]
async fn a_form_that_answers_a_question_twice_is_refused_naming_it_and_nothing_is_stored() {
    let app = spawn_app().await;
    // Two answers to one question, as a case system with a bug might send them: serde_json
    // alone would keep the last and decide on it without a word.
    let input = valid_input(TOOL).to_string();
    let twice = input.replacen("{", r#"{"severity": "none", "#, 1);
    let body = format!(r#"{{"tool": "{TOOL}", "input": {twice}}}"#);

    let response = submit_raw(&app, "application/json", body).await;

    assert!(response.status().is_client_error(), "{}", response.status());
    let problem: Value = response.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("\"severity\" is given twice"),
        "{problem}"
    );
    // The object that holds the name twice (the message names the name).
    assert_eq!(error_paths(&problem), ["/input"], "{problem}");
    assert!(app.case_decisions("case-1").await.is_empty());
}

#[tokio::test]
async fn a_text_longer_than_a_tool_can_read_is_422_naming_the_field() {
    // The fixture's notes have no maxLength (every core text field has one, which refuses a
    // long text first); the rules can hold 64 KiB of text.
    let app = spawn_app_with(&hostile_root()).await;
    let mut input = json!({"concerns": 1, "notes": "x".repeat(70_000)});

    assert_form_of_refused(&app, "well-behaved", &input, &["/notes"]).await;
    // Just within the bound, it decides.
    input["notes"] = json!("x".repeat(65_536));
    let response = app
        .submit("case-2", "well-behaved", &input, Role::Practitioner)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn a_list_of_hundreds_of_thousands_of_bad_items_is_refused_for_its_length_alone() {
    let app = spawn_app().await;
    let mut input = valid_input(TOOL);
    // About 900 KB, under the body limit: each item breaks the list's choices.
    input["harm_types"] = json!(vec![0; 450_000]);

    assert_form_refused(&app, &input, &["/harm_types"]).await;
}

#[tokio::test]
async fn a_form_with_hundreds_of_bad_answers_lists_the_first_hundred_and_says_so() {
    let app = spawn_app().await;
    // Within what a tool can read (10,000 items), each item not one of the list's choices.
    let mut input = valid_input(TOOL);
    input["harm_types"] = json!(vec![0; 5_000]);
    let response = app.submit("case-1", TOOL, &input, Role::Practitioner).await;

    let body = problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/invalid-form",
    )
    .await;
    let paths = error_paths(&body);
    assert_eq!(paths.len(), 101, "{}", &body.to_string()[..2000]);
    assert_eq!(paths[100], "", "{}", body["errors"][100]);
    assert!(app.case_decisions("case-1").await.is_empty());
}

#[tokio::test]
async fn a_form_with_an_unknown_field_is_422_naming_the_field() {
    let app = spawn_app().await;
    let mut input = valid_input(TOOL);
    input["favourite_colour"] = json!("blue");

    assert_form_refused(&app, &input, &["/favourite_colour"]).await;
}

#[tokio::test]
async fn a_value_outside_the_form_is_422_naming_the_field() {
    let app = spawn_app().await;
    let mut input = valid_input(TOOL);
    input["severity"] = json!("catastrophic");

    assert_form_refused(&app, &input, &["/severity"]).await;
}

/// Asserts `response` is a 400 invalid-request naming exactly `paths`, and that case-1 holds no
/// decision.
async fn assert_request_refused(app: &TestApp, response: reqwest::Response, paths: &[&str]) {
    let body = problem(
        response,
        StatusCode::BAD_REQUEST,
        "/problems/invalid-request",
    )
    .await;
    assert_eq!(error_paths(&body), paths, "{body}");
    assert!(app.case_decisions("case-1").await.is_empty());
}

/// Submits `body`, as it is, with `content_type`, for case-1 as the practitioner.
async fn submit_raw(
    app: &TestApp,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    app.request(
        Method::POST,
        "/v1/cases/case-1/decisions",
        Some(app.token(Role::Practitioner)),
    )
    .header(CONTENT_TYPE, content_type)
    .body(body)
    .send()
    .await
    .unwrap()
}

#[tokio::test]
async fn malformed_json_is_a_400_problem_and_nothing_is_stored() {
    let app = spawn_app().await;

    let response = submit_raw(
        &app,
        "application/json",
        r#"{"tool": "harm-analysis", "input": {"#,
    )
    .await;

    problem(
        response,
        StatusCode::BAD_REQUEST,
        "/problems/invalid-request",
    )
    .await;
    assert!(app.case_decisions("case-1").await.is_empty());
    app.assert_journal_empty().await;
}

#[tokio::test]
async fn text_that_is_not_json_inside_a_field_is_a_400_naming_the_field() {
    let app = spawn_app().await;
    // A lone surrogate: no character at all, so the text is not JSON.
    let input = valid_input(TOOL).to_string();
    let broken = input.replacen(r#""child_view":""#, r#""child_view":"\ud800"#, 1);
    assert_ne!(broken, input, "the form has a child_view to break");

    let response = submit_raw(
        &app,
        "application/json",
        format!(r#"{{"tool": "{TOOL}", "input": {broken}}}"#),
    )
    .await;

    assert_request_refused(&app, response, &["/input/child_view"]).await;
}

#[tokio::test]
async fn a_body_that_is_not_json_is_a_415_problem_and_nothing_is_stored() {
    let app = spawn_app().await;
    let body = json!({"tool": TOOL, "input": valid_input(TOOL)});

    let response = submit_raw(&app, "text/plain", body.to_string()).await;

    problem(
        response,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "/problems/unsupported-media-type",
    )
    .await;
    assert!(app.case_decisions("case-1").await.is_empty());
    app.assert_journal_empty().await;
}

#[tokio::test]
async fn a_body_over_one_mebibyte_is_a_413_problem_and_nothing_is_stored() {
    let app = spawn_app().await;
    let mut input = valid_input(TOOL);
    input["child_view"] = json!("x".repeat(1024 * 1024 + 1));

    let response = app.submit("case-1", TOOL, &input, Role::Practitioner).await;

    problem(
        response,
        StatusCode::PAYLOAD_TOO_LARGE,
        "/problems/payload-too-large",
    )
    .await;
    assert!(app.case_decisions("case-1").await.is_empty());
    app.assert_journal_empty().await;
}

#[tokio::test]
async fn an_unknown_field_in_the_submit_body_is_a_400_naming_it() {
    let app = spawn_app().await;
    let body = json!({"tool": TOOL, "input": valid_input(TOOL), "urgent": true});

    let response = app
        .post_json("/v1/cases/case-1/decisions", Role::Practitioner, &body)
        .await;

    let body = problem(
        response,
        StatusCode::BAD_REQUEST,
        "/problems/invalid-request",
    )
    .await;
    let named = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["path"] == "/urgent" || e["message"].as_str().unwrap().contains("urgent"));
    assert!(named, "the problem does not name `urgent`: {body}");
    assert!(app.case_decisions("case-1").await.is_empty());
    app.assert_journal_empty().await;
}

#[tokio::test]
async fn a_submit_body_without_the_tool_is_a_400_naming_it() {
    let app = spawn_app().await;
    let body = json!({"input": valid_input(TOOL)});

    let response = app
        .post_json("/v1/cases/case-1/decisions", Role::Practitioner, &body)
        .await;

    assert_request_refused(&app, response, &["/tool"]).await;
}

#[tokio::test]
async fn a_submit_body_with_a_tool_that_is_not_a_string_is_a_400_naming_it() {
    let app = spawn_app().await;
    let body = json!({"tool": 5, "input": valid_input(TOOL)});

    let response = app
        .post_json("/v1/cases/case-1/decisions", Role::Practitioner, &body)
        .await;

    let body = problem(
        response,
        StatusCode::BAD_REQUEST,
        "/problems/invalid-request",
    )
    .await;
    assert_eq!(error_paths(&body), ["/tool"], "{body}");
}

#[tokio::test]
async fn a_method_a_route_does_not_have_is_a_405_problem() {
    let app = spawn_app().await;

    let response = app
        .request(
            Method::DELETE,
            "/v1/cases/case-1/decisions",
            Some(app.token(Role::Admin)),
        )
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(response.headers().contains_key(ALLOW), "no Allow header");
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(
        content_type.as_deref(),
        Some("application/problem+json"),
        "a 405 is not a problem document"
    );
}

#[tokio::test]
async fn a_case_id_with_a_space_is_a_400_naming_the_case_and_nothing_is_stored() {
    let app = spawn_app().await;

    let response = app
        .submit("case%201", TOOL, &valid_input(TOOL), Role::Practitioner)
        .await;

    let body = problem(
        response,
        StatusCode::BAD_REQUEST,
        "/problems/invalid-request",
    )
    .await;
    assert_eq!(error_paths(&body), ["case"], "{body}");
    app.assert_journal_empty().await;
}

#[tokio::test]
async fn a_path_parameter_that_is_not_utf8_is_a_described_400_problem_naming_it_on_every_route() {
    let app = spawn_app().await;
    let description: Value = app
        .request(Method::GET, "/openapi.json", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut checked = 0;
    for (template, operations) in description["paths"].as_object().unwrap() {
        let operations = operations.as_object().unwrap();
        for (method, operation) in operations {
            let Some(parameters) = operation["parameters"].as_array() else {
                continue;
            };
            for parameter in parameters.iter().filter(|p| p["in"] == "path") {
                let name = parameter["name"].as_str().unwrap();
                assert!(
                    operation["responses"].get("400").is_some(),
                    "{method} {template} does not describe its 400"
                );
                // %FF decodes to a byte that is not UTF-8; the other parameters get a plain value.
                let mut path = template.replace(&format!("{{{name}}}"), "%FF");
                while let Some(start) = path.find('{') {
                    let end = path[start..].find('}').unwrap() + start;
                    path.replace_range(start..=end, "x");
                }
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                // The role check comes first, so only a role that may call the route reaches
                // the path; every answer must be a problem, and one of them the 400.
                let mut named = false;
                for role in Role::ALL {
                    let response = app
                        .request(method.clone(), &path, Some(app.token(role)))
                        .json(&json!({}))
                        .send()
                        .await
                        .unwrap();
                    let status = response.status();
                    let content_type = response.headers()[CONTENT_TYPE]
                        .to_str()
                        .unwrap()
                        .to_owned();
                    assert_eq!(
                        content_type, "application/problem+json",
                        "{method} {path} as {role:?}: {status}"
                    );
                    if status == StatusCode::BAD_REQUEST {
                        let body: Value = response.json().await.unwrap();
                        assert_eq!(error_paths(&body), [name], "{method} {path}: {body}");
                        named = true;
                    }
                }
                assert!(
                    named,
                    "{method} {path}: no role got the 400 naming `{name}`"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 12, "only {checked} path parameters were checked");
}

#[tokio::test]
async fn a_case_id_with_a_space_is_a_400_when_read_too() {
    let app = spawn_app().await;

    for path in ["/v1/cases/case%201", "/v1/cases/case%201/decisions"] {
        let response = app.get(path, Role::Auditor).await;

        problem(
            response,
            StatusCode::BAD_REQUEST,
            "/problems/invalid-request",
        )
        .await;
    }
}
