//! Who may call what: every authenticated route against no token, a bad token and each role,
//! and what `/openapi.json` says of it, driven by one table that mirrors DESIGN.md's.

use reqwest::header::WWW_AUTHENTICATE;
use reqwest::{Method, RequestBuilder, StatusCode};
use safeguard::auth::Role;
use serde_json::{json, Value};

use crate::common::{problem, spawn_app, valid_input, TestApp, TOOL};

const ANY: &[Role] = &Role::ALL;
const WRITERS: &[Role] = &[Role::Practitioner, Role::Supervisor];
const SUPERVISORS: &[Role] = &[Role::Supervisor];
const ADMINS: &[Role] = &[Role::Admin];
const AUDITORS: &[Role] = &[Role::Auditor];
/// Those who may read tool versions.
const VERSION_READERS: &[Role] = &[Role::Auditor, Role::Admin];
/// Those who watch the caseload.
const OVERSEERS: &[Role] = &[Role::Supervisor, Role::Auditor];

/// One authenticated route, with a request an allowed caller gets `allowed` for.
struct Route {
    method: Method,
    path: String,
    body: Option<Value>,
    roles: &'static [Role],
    /// The status an allowed role gets. Changes to a decision are sent without the revision they
    /// build on, so an allowed caller gets 428 and the table leaves the decision as it was.
    allowed: StatusCode,
}

/// Every authenticated route, aimed at a real case and decision of `app`.
async fn routes(app: &TestApp) -> Vec<Route> {
    let decision = app.decide("case-roles", TOOL).await;
    let id = decision["id"].as_str().unwrap();
    let digest = decision["tool"]["digest"].as_str().unwrap();
    let input = valid_input(TOOL);
    let route = |method: Method, path: String, body: Option<Value>, roles, allowed| Route {
        method,
        path,
        body,
        roles,
        allowed,
    };
    vec![
        route(Method::GET, "/v1/tools".into(), None, ANY, StatusCode::OK),
        route(
            Method::GET,
            format!("/v1/tools/{TOOL}"),
            None,
            ANY,
            StatusCode::OK,
        ),
        route(
            Method::POST,
            format!("/v1/tools/{TOOL}/evaluate"),
            Some(json!({"input": input})),
            ANY,
            StatusCode::OK,
        ),
        route(
            Method::POST,
            "/v1/cases/case-roles/decisions".into(),
            Some(json!({"tool": TOOL, "input": input})),
            WRITERS,
            StatusCode::CREATED,
        ),
        route(
            Method::GET,
            "/v1/cases/case-roles/decisions".into(),
            None,
            ANY,
            StatusCode::OK,
        ),
        route(
            Method::GET,
            "/v1/cases/case-roles".into(),
            None,
            ANY,
            StatusCode::OK,
        ),
        route(
            Method::GET,
            format!("/v1/decisions/{id}"),
            None,
            ANY,
            StatusCode::OK,
        ),
        route(
            Method::GET,
            format!("/v1/decisions/{id}/revisions"),
            None,
            ANY,
            StatusCode::OK,
        ),
        route(
            Method::POST,
            format!("/v1/decisions/{id}/revisions"),
            Some(json!({"input": input})),
            WRITERS,
            StatusCode::PRECONDITION_REQUIRED,
        ),
        route(
            Method::POST,
            format!("/v1/decisions/{id}/override"),
            Some(json!({"level": "high", "reason": "seen at the visit"})),
            WRITERS,
            StatusCode::PRECONDITION_REQUIRED,
        ),
        route(
            Method::POST,
            format!("/v1/decisions/{id}/approve"),
            Some(json!({})),
            SUPERVISORS,
            StatusCode::PRECONDITION_REQUIRED,
        ),
        route(
            Method::POST,
            format!("/v1/decisions/{id}/decline"),
            Some(json!({"reason": "not borne out"})),
            WRITERS,
            StatusCode::PRECONDITION_REQUIRED,
        ),
        route(
            Method::POST,
            "/v1/admin/reload".into(),
            None,
            ADMINS,
            StatusCode::OK,
        ),
        route(
            Method::GET,
            "/v1/admin/tokens".into(),
            None,
            ADMINS,
            StatusCode::OK,
        ),
        route(
            Method::POST,
            "/v1/admin/tokens".into(),
            Some(json!({"role": "practitioner", "subject": "table"})),
            ADMINS,
            StatusCode::CREATED,
        ),
        // No token has this id: an allowed caller gets 404 and nothing is revoked.
        route(
            Method::POST,
            "/v1/admin/tokens/000000000000/revoke".into(),
            None,
            ADMINS,
            StatusCode::NOT_FOUND,
        ),
        route(
            Method::GET,
            format!("/v1/tools/{TOOL}/versions"),
            None,
            VERSION_READERS,
            StatusCode::OK,
        ),
        route(
            Method::GET,
            format!("/v1/tools/{TOOL}/versions/{digest}"),
            None,
            VERSION_READERS,
            StatusCode::OK,
        ),
        route(
            Method::POST,
            "/v1/audit/replay".into(),
            Some(json!({"tool": TOOL, "against": {"kind": "recorded"}})),
            AUDITORS,
            StatusCode::OK,
        ),
        route(
            Method::GET,
            "/v1/audit/decisions".into(),
            None,
            AUDITORS,
            StatusCode::OK,
        ),
        route(
            Method::GET,
            "/v1/audit/verify".into(),
            None,
            AUDITORS,
            StatusCode::OK,
        ),
        route(
            Method::POST,
            "/v1/audit/disparity".into(),
            Some(json!({"tool": TOOL, "field": "/severity"})),
            AUDITORS,
            StatusCode::OK,
        ),
        route(
            Method::GET,
            "/v1/dashboard".into(),
            None,
            OVERSEERS,
            StatusCode::OK,
        ),
    ]
}

fn request(app: &TestApp, route: &Route, token: Option<&str>) -> RequestBuilder {
    let request = app.request(route.method.clone(), &route.path, token);
    match &route.body {
        Some(body) => request.json(body),
        None => request,
    }
}

#[tokio::test]
async fn every_route_without_a_token_is_401_with_a_bearer_challenge() {
    let app = spawn_app().await;

    for route in routes(&app).await {
        let response = request(&app, &route, None).send().await.unwrap();

        let what = format!("{} {}", route.method, route.path);
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok());
        assert_eq!(challenge, Some("Bearer"), "{what}");
        let body = problem(response, StatusCode::UNAUTHORIZED, "/problems/unauthorized").await;
        assert_eq!(body["detail"], "a bearer token is required", "{what}");
    }
}

#[tokio::test]
async fn every_route_with_an_unknown_token_is_401() {
    let app = spawn_app().await;
    let forged = format!("sg_{}", "0".repeat(64));

    for route in routes(&app).await {
        let response = request(&app, &route, Some(&forged)).send().await.unwrap();

        assert!(response.headers().contains_key(WWW_AUTHENTICATE));
        let body = problem(response, StatusCode::UNAUTHORIZED, "/problems/unauthorized").await;
        // Not "a token is required": the caller sent one, which is what they need to hear about.
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains("not valid"), "{detail}");
    }
}

#[tokio::test]
async fn a_token_sent_as_basic_credentials_is_401() {
    let app = spawn_app().await;

    let response = app
        .client
        .get(app.url("/v1/tools"))
        .header(
            reqwest::header::AUTHORIZATION,
            format!("Basic {}", app.token(Role::Admin)),
        )
        .send()
        .await
        .unwrap();

    problem(response, StatusCode::UNAUTHORIZED, "/problems/unauthorized").await;
}

#[tokio::test]
async fn every_route_refuses_a_role_it_does_not_allow_with_403() {
    let app = spawn_app().await;

    for route in routes(&app).await {
        for role in Role::ALL.into_iter().filter(|r| !route.roles.contains(r)) {
            let response = request(&app, &route, Some(app.token(role)))
                .send()
                .await
                .unwrap();

            let status = response.status();
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{role} on {} {}",
                route.method,
                route.path
            );
            problem(response, status, "/problems/forbidden").await;
        }
    }
}

/// The operation of `/openapi.json` that serves `method path`: the described path whose
/// segments match `path`'s, a `{name}` segment matching any one.
fn described<'d>(doc: &'d Value, method: &Method, path: &str) -> &'d Value {
    let segments: Vec<&str> = path.split('/').collect();
    let paths = doc["paths"].as_object().expect("the description has paths");
    let template = paths
        .keys()
        .find(|template| {
            let parts: Vec<&str> = template.split('/').collect();
            parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(part, segment)| part.starts_with('{') || part == segment)
        })
        .unwrap_or_else(|| panic!("{method} {path} is not in the description"));
    let operation = &paths[template][method.as_str().to_lowercase()];
    assert!(
        operation.is_object(),
        "{method} {template} is not described"
    );
    operation
}

#[tokio::test]
async fn every_route_is_described_with_the_403_it_answers() {
    let app = spawn_app().await;
    let doc = crate::common::json_of(
        app.request(Method::GET, "/openapi.json", None)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;

    // A route some role may not call answers that role 403 (the test above). The 401 of every
    // route behind a token is checked over the whole description in `openapi.rs`.
    for route in routes(&app).await {
        let operation = described(&doc, &route.method, &route.path);
        let forbidden = &operation["responses"]["403"]["content"]["application/problem+json"];
        assert_eq!(
            !forbidden.is_null(),
            route.roles.len() < Role::ALL.len(),
            "{} {}: a 403 is described exactly when some role may not call it",
            route.method,
            route.path
        );
    }
}

#[tokio::test]
async fn every_route_lets_each_role_it_allows_through() {
    let app = spawn_app().await;

    for route in routes(&app).await {
        for &role in route.roles {
            let response = request(&app, &route, Some(app.token(role)))
                .send()
                .await
                .unwrap();

            let status = response.status();
            let body = response.text().await.unwrap();
            assert_eq!(
                status, route.allowed,
                "{role} on {} {}: {body}",
                route.method, route.path
            );
        }
    }
}

#[tokio::test]
async fn a_refused_role_writes_nothing() {
    let app = spawn_app().await;
    let input = valid_input(TOOL);

    for role in [Role::Auditor, Role::Admin] {
        let response = app.submit("case-1", TOOL, &input, role).await;

        problem(response, StatusCode::FORBIDDEN, "/problems/forbidden").await;
    }
    assert!(app.case_decisions("case-1").await.is_empty());
    app.assert_journal_empty().await;
}

/// The tokens an admin sees, by subject.
async fn listed_tokens(app: &TestApp) -> Vec<Value> {
    crate::common::array_of(app.get("/v1/admin/tokens", Role::Admin).await).await
}

fn token_of<'a>(tokens: &'a [Value], subject: &str) -> &'a Value {
    tokens
        .iter()
        .find(|t| t["subject"] == subject)
        .unwrap_or_else(|| panic!("no token for {subject} in {tokens:?}"))
}

#[tokio::test]
async fn an_admin_creates_a_token_that_works_at_once_and_after_a_restart() {
    let app = spawn_app().await;

    let response = app
        .post_json(
            "/v1/admin/tokens",
            Role::Admin,
            &json!({"role": "auditor", "subject": "quality team"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    assert_eq!(created["role"], "auditor");
    assert_eq!(created["id"].as_str().unwrap().len(), 12);

    let reads = |app: &TestApp, token: String| {
        app.request(Method::GET, "/v1/audit/verify", Some(&token))
            .send()
    };
    assert_eq!(
        reads(&app, token.clone()).await.unwrap().status(),
        StatusCode::OK
    );
    // Listed with its id, never with the token.
    let tokens = listed_tokens(&app).await;
    assert_eq!(token_of(&tokens, "quality team")["id"], created["id"]);
    assert!(!serde_json::to_string(&tokens).unwrap().contains(&token));

    let app = app.restart().await;
    assert_eq!(reads(&app, token).await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn a_subject_that_is_blank_or_has_control_characters_is_400_naming_it() {
    let app = spawn_app().await;
    // Invisible characters and edge spaces too: a supervisor `pat\u{200b}` would pass four eyes
    // over an override by `pat`, and look like the same person in every record.
    for subject in [
        "  ",
        "pat\nsmith",
        "pat-practitioner\u{200b}",
        "pat-practitioner ",
        // Zoë written decomposed, and with a tag character: each looks like "Zoë".
        "Zoe\u{308}",
        "Zo\u{eb}\u{e0020}",
    ] {
        let response = app
            .post_json(
                "/v1/admin/tokens",
                Role::Admin,
                &json!({"role": "practitioner", "subject": subject}),
            )
            .await;
        let body = problem(
            response,
            StatusCode::BAD_REQUEST,
            "/problems/invalid-request",
        )
        .await;
        assert_eq!(crate::common::error_paths(&body), ["/subject"], "{body}");
    }
}

#[tokio::test]
async fn a_subject_that_looks_like_another_tokens_is_409_naming_it_and_nothing_is_stored() {
    let app = spawn_app().await;
    let create = |subject: &'static str| {
        let app = &app;
        async move {
            app.post_json(
                "/v1/admin/tokens",
                Role::Admin,
                &json!({"role": "supervisor", "subject": subject}),
            )
            .await
        }
    };
    let before = listed_tokens(&app).await.len();
    // "pat-practitioner" with a Cyrillic "а"; "ada-admin" with "rn" for "m".
    for (subject, like) in [
        ("p\u{430}t-practitioner", "pat-practitioner"),
        ("ada-adrnin", "ada-admin"),
    ] {
        let body = problem(
            create(subject).await,
            StatusCode::CONFLICT,
            "/problems/subject-looks-alike",
        )
        .await;
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(&format!("{like:?}")), "{body}");
        assert!(
            detail.contains(
                token_of(&listed_tokens(&app).await, like)["id"]
                    .as_str()
                    .unwrap()
            ),
            "{body}"
        );
    }
    assert_eq!(listed_tokens(&app).await.len(), before);

    // The same subject again is the same person: a second token of theirs.
    assert_eq!(
        create("pat-practitioner").await.status(),
        StatusCode::CREATED
    );
    // A revoked token's subject stays on record, and so does its likeness.
    let id = token_of(&listed_tokens(&app).await, "ari-auditor")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoked = app
        .post_json(
            &format!("/v1/admin/tokens/{id}/revoke"),
            Role::Admin,
            &json!({}),
        )
        .await;
    assert_eq!(revoked.status(), StatusCode::OK);
    problem(
        create("\u{430}ri-auditor").await,
        StatusCode::CONFLICT,
        "/problems/subject-looks-alike",
    )
    .await;
    assert_eq!(listed_tokens(&app).await.len(), before + 1);
}

#[tokio::test]
async fn a_revoked_token_is_refused_at_once_and_the_last_admin_token_cannot_be_revoked() {
    let app = spawn_app().await;
    let practitioner = token_of(&listed_tokens(&app).await, "pat-practitioner")["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let revoke = |id: String| {
        let app = &app;
        async move {
            app.post_json(
                &format!("/v1/admin/tokens/{id}/revoke"),
                Role::Admin,
                &json!({}),
            )
            .await
        }
    };
    let response = revoke(practitioner.clone()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let revoked: Value = response.json().await.unwrap();
    assert!(revoked["revoked_at"].is_string(), "{revoked}");

    // Refused at once, without a restart; other tokens still work.
    problem(
        app.get("/v1/tools", Role::Practitioner).await,
        StatusCode::UNAUTHORIZED,
        "/problems/unauthorized",
    )
    .await;
    assert_eq!(
        app.get("/v1/tools", Role::Auditor).await.status(),
        StatusCode::OK
    );
    assert!(token_of(&listed_tokens(&app).await, "pat-practitioner")["revoked_at"].is_string());

    problem(
        revoke(practitioner).await,
        StatusCode::CONFLICT,
        "/problems/token-conflict",
    )
    .await;
    problem(
        revoke("abcdef012345".into()).await,
        StatusCode::NOT_FOUND,
        "/problems/unknown-token",
    )
    .await;

    // Two admin tokens: another made over the API, and the caller's. The other can go; the
    // caller's is then the last.
    let created = app
        .post_json(
            "/v1/admin/tokens",
            Role::Admin,
            &json!({"role": "admin", "subject": "second admin"}),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let tokens = listed_tokens(&app).await;
    let other = token_of(&tokens, "second admin")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let own = token_of(&tokens, "ada-admin")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(revoke(other).await.status(), StatusCode::OK);
    let body = problem(
        revoke(own).await,
        StatusCode::CONFLICT,
        "/problems/token-conflict",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("last admin token"),
        "{body}"
    );
    assert_eq!(
        app.get("/v1/admin/tokens", Role::Admin).await.status(),
        StatusCode::OK
    );
}
