//! A decision's life over HTTP: evaluate, submit, read, retry, amend, override and approve, and
//! who each revision says made it.

use reqwest::header::{ETAG, LOCATION};
use reqwest::StatusCode;
use safeguard::auth::Role;
use serde_json::{json, Value};

use crate::common::{
    case_not_at, catalog_copy, error_paths, input_at, json_of, problem, spawn_app, spawn_app_with,
    subject, valid_case, valid_input, TestApp, SECOND_SUPERVISOR, TOOL,
};

/// What the tool is expected to decide for [`valid_input`].
fn expected_for_valid_input() -> Value {
    valid_case(TOOL)["expect"].clone()
}

/// A level `steps` away from `level` in `levels`, in whichever direction exists.
fn levels_away(levels: &[String], level: &str, steps: usize) -> String {
    let at = levels.iter().position(|l| l == level).unwrap();
    let to = if at + steps < levels.len() {
        at + steps
    } else {
        at.checked_sub(steps)
            .expect("the tool has enough levels for this step")
    };
    levels[to].clone()
}

/// Submits a decision and overrides it one level away as `by`; returns the pending revision.
async fn pending_override(app: &TestApp, case: &str, by: Role) -> Value {
    let decision = app.decide(case, TOOL).await;
    let levels = app.levels(TOOL).await;
    let level = levels_away(&levels, decision["level"].as_str().unwrap(), 1);
    app.override_level(decision["id"].as_str().unwrap(), by, 1, &level)
        .await
}

#[tokio::test]
async fn evaluate_returns_level_score_and_reasons() {
    let app = spawn_app().await;
    let expect = expected_for_valid_input();

    let response = app
        .post_json(
            &format!("/v1/tools/{TOOL}/evaluate"),
            Role::Practitioner,
            &json!({"input": valid_input(TOOL)}),
        )
        .await;

    let evaluation = json_of(response, StatusCode::OK).await;
    assert_eq!(evaluation["level"], expect["level"], "{evaluation}");
    if let Some(score) = expect.get("score") {
        assert_eq!(&evaluation["score"], score, "{evaluation}");
    }
    assert!(!evaluation["reasons"].as_array().unwrap().is_empty());
    assert_eq!(evaluation["tool"]["id"], TOOL);
}

#[tokio::test]
async fn evaluate_stores_nothing() {
    let app = spawn_app().await;

    let response = app
        .post_json(
            &format!("/v1/tools/{TOOL}/evaluate"),
            Role::Practitioner,
            &json!({"input": valid_input(TOOL)}),
        )
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    assert!(app.case_decisions("case-1").await.is_empty());
    app.assert_journal_empty().await;
}

#[tokio::test]
async fn evaluate_of_an_invalid_form_is_422_naming_the_field() {
    let app = spawn_app().await;
    let mut input = valid_input(TOOL);
    input.as_object_mut().unwrap().remove("information_from");

    let response = app
        .post_json(
            &format!("/v1/tools/{TOOL}/evaluate"),
            Role::Auditor,
            &json!({"input": input}),
        )
        .await;

    let body = problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/invalid-form",
    )
    .await;
    assert_eq!(error_paths(&body), ["/information_from"], "{body}");
}

#[tokio::test]
async fn a_whole_number_no_json_reader_holds_exactly_is_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    let mut input = valid_input("monitoring-review");
    input["safety_scale_now"] = json!(9_007_199_254_740_993u64);
    // Written as a float, the same kind of number (stored, it would be that integer); in a
    // field whose schema sets no maximum, so only this check can refuse it.
    let mut as_float = valid_input("return-home-triage");
    as_float["hours_missing"] = json!(1e16);
    let refused = app
        .submit(
            "case-1",
            "return-home-triage",
            &as_float,
            Role::Practitioner,
        )
        .await;
    let body = problem(
        refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/invalid-form",
    )
    .await;
    assert_eq!(error_paths(&body), ["/hours_missing"], "{body}");

    let response = app
        .submit("case-1", "monitoring-review", &input, Role::Practitioner)
        .await;

    let body = problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/invalid-form",
    )
    .await;
    let errors = body["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e["path"] == "/safety_scale_now"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("too large to be stored exactly")),
        "{body}"
    );
    app.assert_journal_empty().await;
}

#[tokio::test]
async fn evaluate_of_an_unknown_tool_is_404() {
    let app = spawn_app().await;

    let response = app
        .post_json(
            "/v1/tools/no-such-tool/evaluate",
            Role::Auditor,
            &json!({"input": {}}),
        )
        .await;

    problem(response, StatusCode::NOT_FOUND, "/problems/unknown-tool").await;
}

#[tokio::test]
async fn submit_returns_201_with_the_whole_decision_its_etag_and_location() {
    let app = spawn_app().await;
    let expect = expected_for_valid_input();

    let response = app
        .submit("case-1", TOOL, &valid_input(TOOL), Role::Practitioner)
        .await;

    let etag = response.headers().get(ETAG).cloned();
    let location = response.headers().get(LOCATION).cloned();
    let decision = json_of(response, StatusCode::CREATED).await;
    let id = decision["id"].as_str().expect("an id");
    assert_eq!(etag.unwrap(), "\"1\"");
    assert_eq!(location.unwrap(), format!("/v1/decisions/{id}").as_str());
    assert_eq!(decision["revision"], 1);
    assert_eq!(decision["case"], "case-1");
    assert_eq!(decision["level"], expect["level"]);
    if let Some(score) = expect.get("score") {
        assert_eq!(&decision["score"], score);
    }
    for field in ["recommendation", "explanation"] {
        assert!(
            decision[field].as_str().is_some_and(|s| !s.is_empty()),
            "{field}: {decision}"
        );
    }
    assert!(!decision["reasons"].as_array().unwrap().is_empty());
    assert!(decision["flags"].is_array());
    assert_eq!(decision["tool"]["id"], TOOL);
    assert!(decision["tool"]["version"].is_string());
    assert!(decision["tool"]["digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert!(decision["hash"].as_str().unwrap().starts_with("sha256:"));
}

#[tokio::test]
async fn a_submitted_decision_reads_back_with_its_etag() {
    let app = spawn_app().await;
    let decision = app.decide("case-1", TOOL).await;
    let id = decision["id"].as_str().unwrap();

    let response = app.get(&format!("/v1/decisions/{id}"), Role::Auditor).await;

    assert_eq!(response.headers().get(ETAG).unwrap(), "\"1\"");
    assert_eq!(json_of(response, StatusCode::OK).await, decision);
}

#[tokio::test]
async fn a_submitted_decision_has_a_history_of_one_revision() {
    let app = spawn_app().await;
    let decision = app.decide("case-1", TOOL).await;

    let history = app.revisions(decision["id"].as_str().unwrap()).await;

    assert_eq!(history, [decision]);
}

#[tokio::test]
async fn an_unknown_decision_is_a_404_problem() {
    let app = spawn_app().await;
    let id = "0190f0f0-0000-7000-8000-000000000000";

    for path in [
        format!("/v1/decisions/{id}"),
        format!("/v1/decisions/{id}/revisions"),
    ] {
        let response = app.get(&path, Role::Auditor).await;

        problem(
            response,
            StatusCode::NOT_FOUND,
            "/problems/unknown-decision",
        )
        .await;
    }
}

#[tokio::test]
async fn amending_an_unknown_decision_is_a_404_and_stores_nothing() {
    let app = spawn_app().await;

    let response = app
        .change(
            "0190f0f0-0000-7000-8000-000000000000",
            "revisions",
            Role::Practitioner,
            1,
            &json!({"input": valid_input(TOOL)}),
        )
        .await;

    problem(
        response,
        StatusCode::NOT_FOUND,
        "/problems/unknown-decision",
    )
    .await;
    app.assert_journal_empty().await;
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_returns_the_first_decision() {
    let app = spawn_app().await;
    let body = json!({"tool": TOOL, "input": valid_input(TOOL)});
    let token = app.token(Role::Practitioner);
    let send = || {
        app.request(
            reqwest::Method::POST,
            "/v1/cases/case-1/decisions",
            Some(token),
        )
        .header("Idempotency-Key", "visit-2024-05-01")
        .json(&body)
        .send()
    };
    let first = json_of(send().await.unwrap(), StatusCode::CREATED).await;

    let retry = json_of(send().await.unwrap(), StatusCode::CREATED).await;

    assert_eq!(retry["id"], first["id"]);
    assert_eq!(app.case_decisions("case-1").await.len(), 1);
}

#[tokio::test]
async fn a_retry_is_answered_with_the_first_decision_after_the_tool_has_changed() {
    let root = catalog_copy(true);
    let app = spawn_app_with(root.path()).await;
    let token = app.token(Role::Practitioner);
    let body = json!({"tool": TOOL, "input": valid_input(TOOL)});
    let send = |key: &'static str| {
        app.request(
            reqwest::Method::POST,
            "/v1/cases/case-1/decisions",
            Some(token),
        )
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
    };
    let first = json_of(send("visit-1").await.unwrap(), StatusCode::CREATED).await;
    // The tool now takes a child's view of at most five characters, so the same form is
    // refused...
    let schema_path = root.path().join(format!("tool-schemas/{TOOL}.json"));
    let mut schema: Value =
        serde_json::from_str(&std::fs::read_to_string(&schema_path).unwrap()).unwrap();
    assert!(valid_input(TOOL)["child_view"].as_str().unwrap().len() > 5);
    schema["properties"]["child_view"]["maxLength"] = json!(5);
    std::fs::write(&schema_path, schema.to_string()).unwrap();
    // The cases pin the old tool, and a reload runs them: this deploy goes without them.
    for cases in ["tests/cases", "plugins/example-agency/cases"] {
        std::fs::remove_dir_all(root.path().join(cases)).unwrap();
    }
    json_of(app.reload().await, StatusCode::OK).await;
    problem(
        send("visit-2").await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/invalid-form",
    )
    .await;

    // ...but the retry of the request that was decided gets the decision it made.
    let retry = json_of(send("visit-1").await.unwrap(), StatusCode::CREATED).await;

    assert_eq!(retry, first);
    assert_eq!(app.case_decisions("case-1").await.len(), 1);
}

#[tokio::test]
async fn an_idempotency_key_reused_with_another_body_is_422() {
    let app = spawn_app().await;
    let token = app.token(Role::Practitioner);
    let send = |input: Value| {
        app.request(
            reqwest::Method::POST,
            "/v1/cases/case-1/decisions",
            Some(token),
        )
        .header("Idempotency-Key", "visit-2024-05-01")
        .json(&json!({"tool": TOOL, "input": input}))
        .send()
    };
    let mut input = valid_input(TOOL);
    json_of(send(input.clone()).await.unwrap(), StatusCode::CREATED).await;
    input["child_view"] = json!("He says he is scared at night.");

    let response = send(input).await.unwrap();

    problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/idempotency-mismatch",
    )
    .await;
    assert_eq!(app.case_decisions("case-1").await.len(), 1);
}

#[tokio::test]
async fn an_idempotency_key_reused_for_another_case_is_422() {
    let app = spawn_app().await;
    let token = app.token(Role::Practitioner);
    let send = |case: &str| {
        app.request(
            reqwest::Method::POST,
            &format!("/v1/cases/{case}/decisions"),
            Some(token),
        )
        .header("Idempotency-Key", "visit-2024-05-01")
        .json(&json!({"tool": TOOL, "input": valid_input(TOOL)}))
        .send()
    };
    json_of(send("case-1").await.unwrap(), StatusCode::CREATED).await;

    let response = send("case-2").await.unwrap();

    problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/idempotency-mismatch",
    )
    .await;
    assert!(app.case_decisions("case-2").await.is_empty());
}

#[tokio::test]
async fn an_idempotency_key_belongs_to_the_subject_that_sent_it() {
    let app = spawn_app().await;
    let send = |role: Role| {
        app.request(
            reqwest::Method::POST,
            "/v1/cases/case-1/decisions",
            Some(app.token(role)),
        )
        .header("Idempotency-Key", "visit-2024-05-01")
        .json(&json!({"tool": TOOL, "input": valid_input(TOOL)}))
        .send()
    };
    let practitioners = json_of(send(Role::Practitioner).await.unwrap(), StatusCode::CREATED).await;

    let response = send(Role::Supervisor).await.unwrap();

    let supervisors = json_of(response, StatusCode::CREATED).await;
    assert_ne!(supervisors["id"], practitioners["id"]);
    assert_eq!(app.case_decisions("case-1").await.len(), 2);
}

#[tokio::test]
async fn amending_with_the_current_etag_appends_a_re_evaluated_revision() {
    let app = spawn_app().await;
    let decision = app.decide("case-1", TOOL).await;
    let id = decision["id"].as_str().unwrap();
    let (input, expect) = case_not_at(TOOL, decision["level"].as_str().unwrap());

    let response = app
        .change(
            id,
            "revisions",
            Role::Practitioner,
            1,
            &json!({"input": input}),
        )
        .await;

    assert_eq!(response.headers().get(ETAG).unwrap(), "\"2\"");
    let amended = json_of(response, StatusCode::CREATED).await;
    assert_eq!(amended["id"], decision["id"]);
    assert_eq!(amended["revision"], 2);
    assert_eq!(amended["kind"], "amended");
    assert_eq!(amended["input"], input);
    assert_eq!(amended["level"], expect["level"], "{amended}");
    assert_eq!(app.revisions(id).await.len(), 2);
}

#[tokio::test]
async fn amending_with_expected_revision_in_the_body_works_like_if_match() {
    let app = spawn_app().await;
    let decision = app.decide("case-1", TOOL).await;
    let path = format!(
        "/v1/decisions/{}/revisions",
        decision["id"].as_str().unwrap()
    );

    let response = app
        .post_json(
            &path,
            Role::Supervisor,
            &json!({"input": valid_input(TOOL), "expected_revision": 1}),
        )
        .await;

    let amended = json_of(response, StatusCode::CREATED).await;
    assert_eq!(amended["revision"], 2);
}

#[tokio::test]
async fn a_stale_if_match_is_rejected_with_409_and_nothing_is_written() {
    let app = spawn_app().await;
    let decision = app.decide("case-1", TOOL).await;
    let id = decision["id"].as_str().unwrap();
    let body = json!({"input": valid_input(TOOL)});
    json_of(
        app.change(id, "revisions", Role::Practitioner, 1, &body)
            .await,
        StatusCode::CREATED,
    )
    .await;

    let response = app
        .change(id, "revisions", Role::Supervisor, 1, &body)
        .await;

    problem(response, StatusCode::CONFLICT, "/problems/conflict").await;
    assert_eq!(app.revisions(id).await.len(), 2);
}

#[tokio::test]
async fn a_change_built_on_an_old_revision_is_409_whatever_else_is_wrong_with_it() {
    let app = spawn_app().await;
    let decision = app.decide("case-1", TOOL).await;
    let id = decision["id"].as_str().unwrap();
    app.amend(id, Role::Practitioner, 1).await;

    // Each of these would be refused for another reason at revision 2 (an invalid form, an
    // override without a reason, nothing to approve); built on revision 1, the author first
    // needs to hear that the decision has moved on.
    for (action, role, body) in [
        ("revisions", Role::Practitioner, json!({"input": {}})),
        (
            "override",
            Role::Practitioner,
            json!({"level": "high", "reason": " "}),
        ),
        ("approve", Role::Supervisor, json!({})),
    ] {
        let response = app.change(id, action, role, 1, &body).await;
        let conflict = problem(response, StatusCode::CONFLICT, "/problems/conflict").await;
        assert!(
            conflict["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("revision 2"),
            "{action}: {conflict}"
        );
    }
    assert_eq!(app.revisions(id).await.len(), 2);
}

#[tokio::test]
async fn a_change_without_if_match_or_expected_revision_is_428() {
    let app = spawn_app().await;
    let decision = app.decide("case-1", TOOL).await;
    let id = decision["id"].as_str().unwrap();

    let response = app
        .post_json(
            &format!("/v1/decisions/{id}/revisions"),
            Role::Practitioner,
            &json!({"input": valid_input(TOOL)}),
        )
        .await;

    problem(
        response,
        StatusCode::PRECONDITION_REQUIRED,
        "/problems/revision-required",
    )
    .await;
    assert_eq!(app.revisions(id).await.len(), 1);
}

/// Overrides the first revision of decision `id` with `request` as a practitioner and asserts it is
/// refused as an invalid override naming exactly `paths`, with nothing written; returns the problem.
async fn assert_override_refused(
    app: &TestApp,
    id: &str,
    request: &Value,
    paths: &[&str],
) -> Value {
    assert_override_refused_at(app, id, 1, request, paths).await
}

/// As [`assert_override_refused`], on revision `revision`, the decision's latest.
async fn assert_override_refused_at(
    app: &TestApp,
    id: &str,
    revision: u32,
    request: &Value,
    paths: &[&str],
) -> Value {
    let response = app
        .change(id, "override", Role::Practitioner, revision, request)
        .await;

    let body = problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/invalid-override",
    )
    .await;
    assert_eq!(error_paths(&body), paths, "{body}");
    assert_eq!(
        app.revisions(id).await.len(),
        revision as usize,
        "nothing is written"
    );
    body
}

#[tokio::test]
async fn an_override_to_an_undeclared_level_is_422_naming_the_level() {
    let app = spawn_app().await;
    let decision = app.decide("case-1", TOOL).await;
    let id = decision["id"].as_str().unwrap();

    assert_override_refused(
        &app,
        id,
        &json!({"level": "catastrophic", "reason": "seen at the visit"}),
        &["/level"],
    )
    .await;
}

#[tokio::test]
async fn an_override_without_a_reason_is_422_naming_the_reason() {
    let app = spawn_app().await;
    let decision = app.decide("case-1", TOOL).await;
    let id = decision["id"].as_str().unwrap();
    let levels = app.levels(TOOL).await;
    let level = levels_away(&levels, decision["level"].as_str().unwrap(), 1);

    for reason in ["  ", "\u{200b}", "\u{feff} \u{200b}", "-", "\u{1f44d}"] {
        assert_override_refused(
            &app,
            id,
            &json!({"level": level, "reason": reason}),
            &["/reason"],
        )
        .await;
    }
}

#[tokio::test]
async fn an_override_two_levels_away_breaks_the_one_step_policy_and_is_422() {
    let app = spawn_app().await;
    let decision = app.decide("case-1", TOOL).await;
    let id = decision["id"].as_str().unwrap();
    let levels = app.levels(TOOL).await;
    let level = levels_away(&levels, decision["level"].as_str().unwrap(), 2);

    let body = assert_override_refused(
        &app,
        id,
        &json!({"level": level, "reason": "seen at the visit"}),
        &["/level"],
    )
    .await;
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("override policy") && message.contains("at most 1"),
        "the message does not name the rule: {message}"
    );
}

#[tokio::test]
async fn a_valid_override_waits_for_approval_and_leaves_the_level_unchanged() {
    let app = spawn_app().await;
    let decision = app.decide("case-1", TOOL).await;
    let levels = app.levels(TOOL).await;
    let level = levels_away(&levels, decision["level"].as_str().unwrap(), 1);

    let overridden = app
        .override_level(
            decision["id"].as_str().unwrap(),
            Role::Practitioner,
            1,
            &level,
        )
        .await;

    assert_eq!(overridden["revision"], 2);
    assert_eq!(overridden["kind"], "overridden");
    assert_eq!(overridden["level"], decision["level"]);
    assert_eq!(overridden["tool_level"], decision["level"]);
    assert_eq!(overridden["override"]["status"], "pending");
    assert_eq!(overridden["override"]["level"], level.as_str());
    assert_eq!(
        overridden["override"]["reason"],
        "the child told us more at the visit"
    );
    assert_eq!(
        overridden["override"]["by"]["subject"],
        subject(Role::Practitioner)
    );
}

#[tokio::test]
async fn an_override_one_level_down_is_allowed_when_the_policy_says_any_direction() {
    let app = spawn_app().await;
    let decision = app.decide("case-1", TOOL).await;
    let levels = app.levels(TOOL).await;
    let at = levels.iter().position(|l| *l == decision["level"]).unwrap();
    let lower = &levels[at
        .checked_sub(1)
        .expect("the valid input is above the lowest level")];

    let overridden = app
        .override_level(
            decision["id"].as_str().unwrap(),
            Role::Practitioner,
            1,
            lower,
        )
        .await;

    assert_eq!(overridden["override"]["level"], lower.as_str());
}

#[tokio::test]
async fn an_override_to_the_level_the_tool_decided_is_422() {
    let app = spawn_app().await;
    let decision = app.decide("case-1", TOOL).await;
    let id = decision["id"].as_str().unwrap();

    assert_override_refused(
        &app,
        id,
        &json!({"level": decision["level"], "reason": "seen at the visit"}),
        &["/level"],
    )
    .await;
}

#[tokio::test]
async fn the_supervisor_who_made_an_override_cannot_approve_it() {
    let app = spawn_app().await;
    let pending = pending_override(&app, "case-1", Role::Supervisor).await;
    let id = pending["id"].as_str().unwrap();

    let response = app
        .change(id, "approve", Role::Supervisor, 2, &json!({}))
        .await;

    problem(response, StatusCode::FORBIDDEN, "/problems/four-eyes").await;
    assert_eq!(app.revisions(id).await.len(), 2);
}

#[tokio::test]
async fn a_supervisor_whose_subject_looks_like_the_authors_cannot_approve_the_override() {
    use safeguard::store::Store;
    let mut app = spawn_app().await;
    let pending = pending_override(&app, "case-1", Role::Supervisor).await;
    let id = pending["id"].as_str().unwrap();
    assert_eq!(pending["override"]["by"]["subject"], "sue-supervisor");
    // A token issued before look-alike subjects were refused: "sue-supervisor" with a Cyrillic
    // "е", which a record shows as the same person.
    app.stop().await;
    let (look_alike, record) = safeguard::auth::issue(Role::Supervisor, "sue-sup\u{435}rvisor");
    {
        let store =
            safeguard::store::SledStore::open_existing(app.data_dir(), Default::default()).unwrap();
        store.put_token(&record).unwrap();
    }
    let app = app.restart().await;
    let path = format!("/v1/decisions/{id}/approve");

    problem(
        app.post_json_as(&path, &look_alike, Some(2), &json!({}))
            .await,
        StatusCode::FORBIDDEN,
        "/problems/four-eyes",
    )
    .await;
    assert_eq!(app.revisions(id).await.len(), 2);
    // A supervisor whose subject reads differently approves it.
    let response = app
        .post_json_as(&path, &app.second_supervisor, Some(2), &json!({}))
        .await;
    let approved = json_of(response, StatusCode::CREATED).await;
    assert_eq!(approved["override"]["status"], "approved");
}

#[tokio::test]
async fn another_supervisor_approves_an_override_and_its_level_takes_effect() {
    let app = spawn_app().await;
    let pending = pending_override(&app, "case-1", Role::Supervisor).await;
    let id = pending["id"].as_str().unwrap();

    let response = app
        .post_json_as(
            &format!("/v1/decisions/{id}/approve"),
            &app.second_supervisor,
            Some(2),
            &json!({}),
        )
        .await;

    let approved = json_of(response, StatusCode::CREATED).await;
    assert_eq!(approved["revision"], 3);
    assert_eq!(approved["kind"], "approved");
    assert_eq!(approved["level"], pending["override"]["level"]);
    assert_eq!(approved["tool_level"], pending["tool_level"]);
    assert_eq!(approved["override"]["status"], "approved");
    assert_eq!(
        approved["override"]["approved_by"],
        json!({"subject": SECOND_SUPERVISOR, "role": "supervisor"})
    );
}

#[tokio::test]
async fn a_supervisor_approves_a_practitioners_override() {
    let app = spawn_app().await;
    let pending = pending_override(&app, "case-1", Role::Practitioner).await;
    let id = pending["id"].as_str().unwrap();

    let response = app
        .change(id, "approve", Role::Supervisor, 2, &json!({}))
        .await;

    let approved = json_of(response, StatusCode::CREATED).await;
    assert_eq!(approved["level"], pending["override"]["level"]);
    assert_eq!(
        approved["override"]["approved_by"]["subject"],
        subject(Role::Supervisor)
    );
    // What the level in force asks for, as the tool declares it, beside the tool's own texts.
    let tool = json_of(
        app.get(&format!("/v1/tools/{TOOL}"), Role::Auditor).await,
        StatusCode::OK,
    )
    .await;
    let declared = tool["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["level"] == approved["level"])
        .unwrap();
    assert_eq!(
        approved["in_force"],
        json!({"level": declared["level"], "label": declared["label"], "response": declared["response"]}),
        "{approved}"
    );
    assert!(
        pending.get("in_force").is_none(),
        "nothing in force yet: {pending}"
    );
    let read = json_of(
        app.get(&format!("/v1/decisions/{id}"), Role::Auditor).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(read["in_force"], approved["in_force"]);
}

#[tokio::test]
async fn an_approved_override_stays_in_force_until_a_new_override_is_approved() {
    let app = spawn_app().await;
    let pending = pending_override(&app, "case-1", Role::Practitioner).await;
    let id = pending["id"].as_str().unwrap();
    let tool_level = pending["tool_level"].clone();
    let agreed = pending["override"]["level"].clone();
    app.approve(id, 2).await;

    // One practitioner alone asks to go back to the tool's level (withdrawing the override)...
    let withdrawal =
        json!({"level": tool_level, "reason": "the family has moved away from the risk"});
    let asked = json_of(
        app.change(id, "override", Role::Practitioner, 3, &withdrawal)
            .await,
        StatusCode::CREATED,
    )
    .await;
    // ...and the level the two agreed stays in force while that waits.
    assert_eq!(asked["level"], agreed, "{asked}");
    assert_eq!(asked["override"]["status"], "pending");
    assert_eq!(asked["override"]["replaces"]["level"], agreed, "{asked}");
    let journey = json_of(
        app.get("/v1/cases/case-1", Role::Auditor).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(journey["latest"][TOOL]["level"], agreed, "{journey}");
    // Asking for the level already in force is refused.
    assert_override_refused_at(
        &app,
        id,
        4,
        &json!({"level": agreed, "reason": "again"}),
        &["/level"],
    )
    .await;

    let approved = app.approve(id, 4).await;
    assert_eq!(approved["level"], tool_level, "{approved}");
    assert!(approved["override"].get("replaces").is_none(), "{approved}");
}

#[tokio::test]
async fn an_approval_with_if_match_and_an_empty_json_body_is_taken() {
    let app = spawn_app().await;
    let pending = pending_override(&app, "case-1", Role::Practitioner).await;
    let id = pending["id"].as_str().unwrap();

    let response = app
        .request(
            reqwest::Method::POST,
            &format!("/v1/decisions/{id}/approve"),
            Some(app.token(Role::Supervisor)),
        )
        .header(reqwest::header::IF_MATCH, "\"2\"")
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body("")
        .send()
        .await
        .unwrap();

    let approved = json_of(response, StatusCode::CREATED).await;
    assert_eq!(approved["override"]["status"], "approved");
}

/// Sends `POST path` with a chunked body of `chunks` (no `Content-Length`), as a client streaming
/// its body does, and returns the status code and the body of the answer.
async fn post_chunked(
    app: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
    chunks: &[&[u8]],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let host = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    for chunk in chunks {
        bytes.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
        bytes.extend(*chunk);
        bytes.extend(b"\r\n");
    }
    bytes.extend(b"0\r\n\r\n");
    // The server may answer (413) before it has read all of a body too large, and close.
    let _ = stream.write_all(&bytes).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    (status, answer)
}

#[tokio::test]
async fn an_approval_with_an_empty_chunked_body_is_taken_like_an_empty_one() {
    let app = spawn_app().await;
    let pending = pending_override(&app, "case-1", Role::Practitioner).await;
    let id = pending["id"].as_str().unwrap();
    let bearer = format!("Bearer {}", app.token(Role::Supervisor));
    let path = format!("/v1/decisions/{id}/approve");
    let headers = [
        ("Authorization", bearer.as_str()),
        ("If-Match", "\"2\""),
        ("Content-Type", "application/json"),
    ];

    let (status, answer) = post_chunked(&app, &path, &headers, &[]).await;

    assert_eq!(status, 201, "{answer}");
    assert!(answer.contains("\"approved\""), "{answer}");
}

#[tokio::test]
async fn a_chunked_body_is_read_as_json_and_refused_when_malformed_or_too_large() {
    let app = spawn_app().await;
    let pending = pending_override(&app, "case-1", Role::Practitioner).await;
    let id = pending["id"].as_str().unwrap();
    let bearer = format!("Bearer {}", app.token(Role::Supervisor));
    let path = format!("/v1/decisions/{id}/approve");
    let headers = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
    ];

    // Malformed: refused, nothing written.
    let (status, answer) =
        post_chunked(&app, &path, &headers, &[b"{\"expected_", b"revision\": "]).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("/problems/invalid-request"), "{answer}");
    // Over the body limit (1 MiB), in many chunks: 413.
    let spaces = vec![b' '; 64 * 1024];
    let chunks: Vec<&[u8]> = std::iter::repeat_n(spaces.as_slice(), 20).collect();
    let (status, answer) = post_chunked(&app, &path, &headers, &chunks).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(app.revisions(id).await.len(), 2);

    // Whole, in two chunks: read and acted on, its `expected_revision` the one built on.
    let (status, answer) =
        post_chunked(&app, &path, &headers, &[b"{\"expected_", b"revision\": 2}"]).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(app.revisions(id).await.len(), 3);
}

#[tokio::test]
async fn approving_with_no_override_pending_is_409() {
    let app = spawn_app().await;
    let decision = app.decide("case-1", TOOL).await;
    let id = decision["id"].as_str().unwrap();

    let response = app
        .change(id, "approve", Role::Supervisor, 1, &json!({}))
        .await;

    problem(
        response,
        StatusCode::CONFLICT,
        "/problems/no-pending-override",
    )
    .await;
    assert_eq!(app.revisions(id).await.len(), 1);
}

#[tokio::test]
async fn approving_an_override_twice_is_409() {
    let app = spawn_app().await;
    let pending = pending_override(&app, "case-1", Role::Practitioner).await;
    let id = pending["id"].as_str().unwrap();
    app.approve(id, 2).await;

    let response = app
        .post_json_as(
            &format!("/v1/decisions/{id}/approve"),
            &app.second_supervisor,
            Some(3),
            &json!({}),
        )
        .await;

    problem(
        response,
        StatusCode::CONFLICT,
        "/problems/no-pending-override",
    )
    .await;
    assert_eq!(app.revisions(id).await.len(), 3);
}

#[tokio::test]
async fn a_practitioner_cannot_approve_an_override() {
    let app = spawn_app().await;
    let pending = pending_override(&app, "case-1", Role::Supervisor).await;
    let id = pending["id"].as_str().unwrap();

    let response = app
        .change(id, "approve", Role::Practitioner, 2, &json!({}))
        .await;

    problem(response, StatusCode::FORBIDDEN, "/problems/forbidden").await;
    assert_eq!(app.revisions(id).await.len(), 2);
}

#[tokio::test]
async fn a_supervisor_declines_an_override_with_a_reason_and_the_tools_level_stays() {
    let app = spawn_app().await;
    let pending = pending_override(&app, "case-1", Role::Practitioner).await;
    let id = pending["id"].as_str().unwrap();
    let reason = json!({"reason": "the visit notes do not bear this out"});

    let declined = json_of(
        app.change(id, "decline", Role::Supervisor, 2, &reason)
            .await,
        StatusCode::CREATED,
    )
    .await;

    assert_eq!(declined["revision"], 3);
    assert_eq!(declined["kind"], "declined");
    assert_eq!(declined["level"], pending["tool_level"], "{declined}");
    let o = &declined["override"];
    assert_eq!(o["status"], "declined");
    assert_eq!(o["level"], pending["override"]["level"]);
    assert_eq!(o["reason"], pending["override"]["reason"]);
    assert_eq!(o["declined"]["reason"], reason["reason"]);
    assert_eq!(o["declined"]["by"]["role"], "supervisor");
    // Nothing waits any more: approving it now finds nothing to approve.
    problem(
        app.change(id, "approve", Role::Supervisor, 3, &json!({}))
            .await,
        StatusCode::CONFLICT,
        "/problems/no-pending-override",
    )
    .await;
    let board = json_of(
        app.get("/v1/dashboard", Role::Supervisor).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(board["pending_overrides"], json!([]), "{board}");
    // A new override may be asked for again.
    let again = json!({"level": pending["override"]["level"], "reason": "a second visit"});
    json_of(
        app.change(id, "override", Role::Practitioner, 3, &again)
            .await,
        StatusCode::CREATED,
    )
    .await;
}

#[tokio::test]
async fn declining_needs_a_reason_and_a_pending_override() {
    let app = spawn_app().await;
    let pending = pending_override(&app, "case-1", Role::Practitioner).await;
    let id = pending["id"].as_str().unwrap();

    let body = problem(
        app.change(id, "decline", Role::Supervisor, 2, &json!({"reason": "  "}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/invalid-override",
    )
    .await;
    assert_eq!(error_paths(&body), ["/reason"], "{body}");
    let decision = app.decide("case-2", TOOL).await;
    problem(
        app.change(
            decision["id"].as_str().unwrap(),
            "decline",
            Role::Supervisor,
            1,
            &json!({"reason": "nothing to decline"}),
        )
        .await,
        StatusCode::CONFLICT,
        "/problems/no-pending-override",
    )
    .await;
    assert_eq!(app.revisions(id).await.len(), 2, "nothing is written");
}

#[tokio::test]
async fn a_practitioner_may_withdraw_their_own_override_but_not_decline_anothers() {
    let app = spawn_app().await;
    let theirs = pending_override(&app, "case-1", Role::Supervisor).await;
    let id = theirs["id"].as_str().unwrap();
    let reason = json!({"reason": "I disagree"});

    problem(
        app.change(id, "decline", Role::Practitioner, 2, &reason)
            .await,
        StatusCode::FORBIDDEN,
        "/problems/forbidden",
    )
    .await;
    assert_eq!(app.revisions(id).await.len(), 2, "nothing is written");

    let own = pending_override(&app, "case-2", Role::Practitioner).await;
    let withdrawn = json_of(
        app.change(
            own["id"].as_str().unwrap(),
            "decline",
            Role::Practitioner,
            2,
            &json!({"reason": "asked for on the wrong decision"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(withdrawn["override"]["status"], "declined");
    assert_eq!(
        withdrawn["override"]["declined"]["by"]["role"],
        "practitioner"
    );
}

#[tokio::test]
async fn declining_an_override_that_would_replace_an_approved_one_leaves_that_in_force() {
    let app = spawn_app().await;
    let pending = pending_override(&app, "case-1", Role::Practitioner).await;
    let id = pending["id"].as_str().unwrap();
    let agreed = pending["override"]["level"].clone();
    app.approve(id, 2).await;
    let withdrawal = json!({"level": pending["tool_level"], "reason": "the risk has gone"});
    json_of(
        app.change(id, "override", Role::Practitioner, 3, &withdrawal)
            .await,
        StatusCode::CREATED,
    )
    .await;

    let declined = json_of(
        app.change(
            id,
            "decline",
            Role::Supervisor,
            4,
            &json!({"reason": "too soon"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;

    assert_eq!(declined["level"], agreed, "{declined}");
    assert_eq!(
        declined["override"]["replaces"]["level"], agreed,
        "{declined}"
    );
}

#[tokio::test]
async fn amending_drops_an_override_made_on_the_old_input() {
    let app = spawn_app().await;
    let pending = pending_override(&app, "case-1", Role::Practitioner).await;
    let id = pending["id"].as_str().unwrap();

    let response = app
        .change(
            id,
            "revisions",
            Role::Practitioner,
            2,
            &json!({"input": valid_input(TOOL)}),
        )
        .await;

    let amended = json_of(response, StatusCode::CREATED).await;
    assert!(amended.get("override").is_none(), "{amended}");
}

#[tokio::test]
async fn an_amendment_alone_never_lowers_a_level_two_people_agreed() {
    let app = spawn_app().await;
    let low = input_at(TOOL, "low");
    let decision = json_of(
        app.submit("case-1", TOOL, &low, Role::Practitioner).await,
        StatusCode::CREATED,
    )
    .await;
    let id = decision["id"].as_str().unwrap();
    app.change(
        id,
        "override",
        Role::Practitioner,
        1,
        &json!({"level": "medium", "reason": "the school's account worries us"}),
    )
    .await;
    app.approve(id, 2).await;

    // The same form again (one answer reworded, say): the tool still says low, and the level
    // two people agreed stays in force, with their override.
    let amended = app.amend_with(id, Role::Practitioner, 3, &low).await;
    assert_eq!(amended["kind"], "amended");
    assert_eq!(amended["tool_level"], "low");
    assert_eq!(amended["level"], "medium", "{amended}");
    assert_eq!(amended["override"]["status"], "approved", "{amended}");

    // Nor do two amendments in a row: one at the agreed level, then one below it.
    for (revision, level) in [(4, "medium"), (5, "low")] {
        let again = app
            .amend_with(id, Role::Practitioner, revision, &input_at(TOOL, level))
            .await;
        assert_eq!(again["tool_level"], level);
        assert_eq!(again["level"], "medium", "{again}");
    }

    // A form the tool places above the agreed level stands alone: more serious needs no one's
    // approval.
    let high = input_at(TOOL, "high");
    let raised = app.amend_with(id, Role::Practitioner, 6, &high).await;
    assert_eq!(raised["level"], "high", "{raised}");
    assert!(raised.get("override").is_none(), "{raised}");

    // Put aside, not undone: an amendment back below the agreed level finds it in force again.
    let lowered = app.amend_with(id, Role::Practitioner, 7, &low).await;
    assert_eq!(lowered["tool_level"], "low");
    assert_eq!(lowered["level"], "medium", "{lowered}");
    assert_eq!(lowered["override"]["status"], "approved", "{lowered}");
    assert_eq!(
        lowered["override"]["reason"], "the school's account worries us",
        "{lowered}"
    );
}

#[tokio::test]
async fn every_revision_records_the_subject_and_role_of_the_token_that_made_it() {
    let app = spawn_app().await;
    let pending = pending_override(&app, "case-1", Role::Practitioner).await;
    let id = pending["id"].as_str().unwrap();
    app.approve(id, 2).await;
    app.amend(id, Role::Supervisor, 3).await;
    json_of(
        app.post_json_as(
            &format!("/v1/decisions/{id}/override"),
            &app.second_supervisor,
            Some(4),
            &json!({"level": pending["tool_level"], "reason": "the risk has passed"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;

    let history = app.revisions(id).await;

    let actors: Vec<Value> = history.iter().map(|r| r["actor"].clone()).collect();
    let actor = |subject: &str, role: &str| json!({"subject": subject, "role": role});
    assert_eq!(
        actors,
        [
            actor(subject(Role::Practitioner), "practitioner"),
            actor(subject(Role::Practitioner), "practitioner"),
            actor(subject(Role::Supervisor), "supervisor"),
            actor(subject(Role::Supervisor), "supervisor"),
            actor(SECOND_SUPERVISOR, "supervisor"),
        ]
    );
}

#[tokio::test]
async fn a_tool_that_hits_a_limit_or_breaks_the_contract_decides_nothing_and_the_service_goes_on() {
    let app = spawn_app_with(&crate::hostile_root()).await;
    let form = json!({"concerns": 2});

    // A limit is the form's answer (the practitioner hears which); a broken contract is the
    // tool's fault, whose details are for its owner, in the log.
    for (tool, status, type_, said) in [
        (
            "endless-loop",
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/script-limit",
            "too many operations",
        ),
        (
            "endless-recursion",
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/script-limit",
            "too deeply",
        ),
        (
            "slow-strings",
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/script-limit",
            "longer than 1000 ms",
        ),
        (
            "huge-array",
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/script-limit",
            "too large",
        ),
        (
            "huge-string",
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/script-limit",
            "too large",
        ),
        (
            "bad-sum",
            StatusCode::INTERNAL_SERVER_ERROR,
            "/problems/tool-error",
            "the tool owner has the details",
        ),
        (
            "undeclared-level",
            StatusCode::INTERNAL_SERVER_ERROR,
            "/problems/tool-error",
            "the tool owner has the details",
        ),
    ] {
        let evaluated = app
            .post_json(
                &format!("/v1/tools/{tool}/evaluate"),
                Role::Practitioner,
                &json!({"input": form}),
            )
            .await;
        let body = problem(evaluated, status, type_).await;
        assert!(
            body["detail"].as_str().unwrap_or_default().contains(said),
            "{tool}: {body}"
        );
        let submitted = app
            .submit("case-hostile", tool, &form, Role::Practitioner)
            .await;
        problem(submitted, status, type_).await;
    }
    assert!(app.case_decisions("case-hostile").await.is_empty());

    // The same sandbox goes on deciding, and the first decision stored is the first revision.
    let input = json!({"concerns": 3, "child_view": "worried"});
    let decided = json_of(
        app.submit("case-hostile", "well-behaved", &input, Role::Practitioner)
            .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(
        (&decided["level"], &decided["seq"]),
        (&json!("high"), &json!(1))
    );
}

/// One evaluation of the hostile catalog's `slow-strings`, whose script runs to its time limit
/// (a second) and is refused for it.
async fn evaluate_slowly(app: &TestApp) {
    let response = app
        .post_json(
            "/v1/tools/slow-strings/evaluate",
            Role::Practitioner,
            &json!({"input": {"concerns": 2}}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_once_slow_runs_off_the_async_workers_and_holds_up_no_other_request() {
    let app = std::sync::Arc::new(spawn_app_with(&crate::hostile_root()).await);
    // Its first decision runs inline, as every tool's does, and shows it slow (it holds one
    // async worker for its second: the price of not handing every decision to another thread).
    evaluate_slowly(&app).await;
    // Then more slow evaluations than the runtime has async workers, each running its second.
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let app = std::sync::Arc::clone(&app);
        slow.spawn(async move {
            evaluate_slowly(&app).await;
            std::time::Instant::now()
        });
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    let answered = std::time::Instant::now();

    assert_eq!(health.status(), StatusCode::OK);
    let first_slow = slow.join_next().await.unwrap().unwrap();
    assert!(
        answered < first_slow,
        "the health check waited for the scripts"
    );
    while slow.join_next().await.is_some() {}
}
