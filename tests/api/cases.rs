//! A case over HTTP: its decisions and its journey (stage, latest decision per tool, what is due).

use reqwest::StatusCode;
use safeguard::auth::Role;
use serde_json::{json, Value};

use crate::common::{input_at, json_of, spawn_app, TestApp, TOOL};

async fn journey(app: &TestApp, case: &str) -> Value {
    json_of(
        app.get(&format!("/v1/cases/{case}"), Role::Practitioner)
            .await,
        StatusCode::OK,
    )
    .await
}

/// The tools the journey says are due for `why`.
fn due(journey: &Value, why: &str) -> Vec<String> {
    journey["due"]
        .as_array()
        .unwrap_or_else(|| panic!("no due list: {journey}"))
        .iter()
        .filter(|d| d["why"] == why)
        .map(|d| d["tool"].as_str().unwrap().to_owned())
        .collect()
}

/// Overrides `decision` (at revision 1) to a level one step from its own, which every override
/// policy allows, and has a supervisor approve it; the level and the approval.
async fn override_approved(app: &TestApp, decision: &Value) -> (String, Value) {
    let id = decision["id"].as_str().unwrap();
    let levels = app.levels(TOOL).await;
    let at = levels.iter().position(|l| *l == decision["level"]).unwrap();
    let level = levels[if at + 1 < levels.len() {
        at + 1
    } else {
        at - 1
    }]
    .clone();
    app.override_level(id, Role::Practitioner, 1, &level).await;
    let approved = app.approve(id, 2).await;
    (level, approved)
}

#[tokio::test]
async fn a_case_with_no_decisions_is_at_stage_0_with_the_front_door_due() {
    let app = spawn_app().await;

    let journey = journey(&app, "case-new").await;

    assert_eq!(journey["case"], "case-new");
    assert_eq!(journey["stage"], 0);
    assert_eq!(journey["latest"], json!({}));
    assert!(
        due(&journey, "not-done").contains(&"threshold".to_owned()),
        "{journey}"
    );
}

#[tokio::test]
async fn a_harm_analysis_moves_the_case_to_stage_1_with_the_rest_of_stage_1_due() {
    let app = spawn_app().await;
    let decision = app.decide("case-1", TOOL).await;

    let journey = journey(&app, "case-1").await;

    assert_eq!(journey["stage"], 1);
    let latest = &journey["latest"][TOOL];
    assert_eq!(latest["decision_id"], decision["id"]);
    assert_eq!(latest["revision"], 1);
    assert_eq!(latest["level"], decision["level"]);
    assert!(latest["review_due"].is_string(), "{journey}");
    let not_done = due(&journey, "not-done");
    assert!(not_done.contains(&"safety-scaling".to_owned()), "{journey}");
    assert!(!not_done.contains(&TOOL.to_owned()), "{journey}");
}

#[tokio::test]
async fn the_stage_is_the_furthest_stage_with_a_decision() {
    let app = spawn_app().await;
    app.decide("case-1", TOOL).await;
    app.decide("case-1", "threshold").await;

    let journey = journey(&app, "case-1").await;

    assert_eq!(journey["stage"], 1);
    assert!(journey["latest"]["threshold"].is_object(), "{journey}");
}

#[tokio::test]
async fn when_a_stage_is_done_the_next_stages_tools_are_due() {
    let app = spawn_app().await;
    app.decide("case-1", TOOL).await;
    app.decide("case-1", "safety-scaling").await;

    let journey = journey(&app, "case-1").await;

    assert_eq!(journey["stage"], 1);
    let not_done = due(&journey, "not-done");
    for tool in ["engagement-readiness", "network-map"] {
        assert!(not_done.contains(&tool.to_owned()), "{tool}: {journey}");
    }
    assert!(due(&journey, "review-overdue").is_empty(), "{journey}");
}

#[tokio::test]
async fn the_journey_shows_the_newest_decision_of_each_tool() {
    let app = spawn_app().await;
    app.decide("case-1", TOOL).await;
    let newer = app.decide("case-1", TOOL).await;

    let journey = journey(&app, "case-1").await;

    assert_eq!(journey["latest"][TOOL]["decision_id"], newer["id"]);
}

#[tokio::test]
async fn the_journey_shows_the_level_of_an_approved_override() {
    let app = spawn_app().await;
    let decision = app.decide("case-1", TOOL).await;
    let (level, _) = override_approved(&app, &decision).await;

    let journey = journey(&app, "case-1").await;

    assert_eq!(journey["latest"][TOOL]["level"], level.as_str());
    assert_eq!(journey["latest"][TOOL]["revision"], 3);
}

#[tokio::test]
async fn an_old_decisions_override_approved_later_leaves_the_newer_assessment_the_latest() {
    let app = spawn_app().await;
    let older = app.decide("case-1", TOOL).await;
    let newer = app.decide("case-1", TOOL).await;
    let (_, approved) = override_approved(&app, &older).await;

    let journey = journey(&app, "case-1").await;

    let latest = &journey["latest"][TOOL];
    assert_eq!(latest["decision_id"], newer["id"], "{journey}");
    assert_eq!(latest["assessed_at"], newer["recorded_at"], "{journey}");
    assert!(
        approved["recorded_at"].as_str() > newer["recorded_at"].as_str(),
        "the approval came last: {approved}"
    );
}

#[tokio::test]
async fn an_override_and_its_approval_do_not_restart_the_review_clock() {
    let app = spawn_app().await;
    let decision = app.decide("case-1", TOOL).await;
    let before = journey(&app, "case-1").await["latest"][TOOL].clone();
    // A second on, so a clock restarted by the override would show in `review_due` (seconds).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (level, _) = override_approved(&app, &decision).await;

    let after = journey(&app, "case-1").await["latest"][TOOL].clone();

    assert_eq!(after["revision"], 3);
    assert_eq!(after["level"], level.as_str());
    assert_eq!(after["assessed_at"], decision["recorded_at"]);
    assert_ne!(after["recorded_at"], decision["recorded_at"]);
    assert!(before["review_due"].is_string(), "{before}");
    assert_eq!(after["review_due"], before["review_due"]);
}

#[tokio::test]
async fn an_amendment_is_a_new_assessment() {
    let app = spawn_app().await;
    let decision = app.decide("case-1", TOOL).await;
    let id = decision["id"].as_str().unwrap();
    let amended = app.amend(id, Role::Practitioner, 1).await;

    let latest = &journey(&app, "case-1").await["latest"][TOOL];

    assert_eq!(latest["revision"], 2);
    assert_eq!(latest["assessed_at"], amended["recorded_at"]);
}

#[tokio::test]
async fn a_case_closed_by_its_latest_assessment_has_nothing_due_until_a_new_one_reopens_it() {
    let app = spawn_app().await;
    app.decide("case-1", TOOL).await;
    let closing = app
        .decide_at("case-1", "closure-readiness", "ready-to-close")
        .await;

    let closed = journey(&app, "case-1").await;

    assert_eq!(closed["closed"]["decision_id"], closing["id"], "{closed}");
    assert_eq!(closed["closed"]["level"], "ready-to-close");
    assert_eq!(closed["due"], json!([]), "{closed}");

    // A tool used at any stage (sharing information, say) leaves it closed.
    app.decide_at("case-1", "information-sharing", "share-with-consent")
        .await;
    assert_eq!(journey(&app, "case-1").await["closed"], closed["closed"]);

    // New concerns: a front-door decision after the closure reopens the case.
    app.decide("case-1", "threshold").await;
    let reopened = journey(&app, "case-1").await;
    assert!(reopened.get("closed").is_none(), "{reopened}");
}

#[tokio::test]
async fn a_case_lists_the_latest_revision_of_each_decision_oldest_first() {
    let app = spawn_app().await;
    let first = app.decide("case-1", TOOL).await;
    let second = app.decide("case-1", "threshold").await;
    let first_id = first["id"].as_str().unwrap();
    let amended = app.amend(first_id, Role::Practitioner, 1).await;

    let decisions = app.case_decisions("case-1").await;

    assert_eq!(decisions, [amended, second]);
}

#[tokio::test]
async fn cases_whose_ids_share_a_prefix_keep_their_decisions_apart() {
    let app = spawn_app().await;
    let short = app.decide("case-1", TOOL).await;
    let long = app.decide("case-10", TOOL).await;

    let decisions = app.case_decisions("case-1").await;

    assert_eq!(decisions, [short]);
    assert_eq!(app.case_decisions("case-10").await, [long]);
}

/// Days from `assessed_at` to `review_due` in a journey's entry, or `None` when it has no review.
fn review_days(entry: &Value) -> Option<i64> {
    let due = entry["review_due"].as_str()?;
    let at = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap();
    let assessed = at(entry["assessed_at"].as_str().unwrap());
    // review_due is given to the second, assessed_at to the millisecond: round to whole days.
    Some(((at(due) - assessed).num_seconds() + 43_200).div_euclid(86_400))
}

#[tokio::test]
async fn a_level_that_asks_for_the_tool_again_is_due_for_review_sooner_than_the_tool() {
    let app = spawn_app().await;
    // A plan that failed its stress test is re-tested in 10 days; a robust one only when
    // circumstances change (the tool sets no interval).
    app.decide_at("case-fails", "plan-stress-test", "fails")
        .await;
    app.decide_at("case-robust", "plan-stress-test", "robust")
        .await;
    // A fragile safety scale is rescaled in 14 days, not the tool's 90.
    app.decide_at("case-fails", "safety-scaling", "fragile")
        .await;
    app.decide_at("case-robust", "safety-scaling", "safe-enough")
        .await;

    let fails = journey(&app, "case-fails").await;
    let robust = journey(&app, "case-robust").await;

    assert_eq!(
        review_days(&fails["latest"]["plan-stress-test"]),
        Some(10),
        "{fails}"
    );
    assert_eq!(
        review_days(&robust["latest"]["plan-stress-test"]),
        None,
        "{robust}"
    );
    assert_eq!(
        review_days(&fails["latest"]["safety-scaling"]),
        Some(14),
        "{fails}"
    );
    assert_eq!(
        review_days(&robust["latest"]["safety-scaling"]),
        Some(90),
        "{robust}"
    );
}

#[tokio::test]
async fn a_plan_that_fails_its_stress_test_holds_the_case_until_it_is_re_tested() {
    let app = spawn_app().await;
    let fails = app.decide_at("case-1", "plan-stress-test", "fails").await;

    let held = journey(&app, "case-1").await;

    assert_eq!(held["stage"], 4, "{held}");
    assert_eq!(held["held"].as_array().map(Vec::len), Some(1), "{held}");
    assert_eq!(held["held"][0]["decision_id"], fails["id"], "{held}");
    assert_eq!(held["held"][0]["tool"], "plan-stress-test");
    assert_eq!(held["held"][0]["level"], "fails");
    assert_eq!(held["held"][0]["since"], fails["recorded_at"]);
    // Stage 4 has no other tool: without the hold, monitoring the launched plan would be due.
    assert_eq!(due(&held, "not-done"), Vec::<String>::new(), "{held}");

    // Rebuilt and re-tested: the same decision amended to a robust plan moves the case on.
    let id = fails["id"].as_str().unwrap();
    let robust = input_at("plan-stress-test", "robust");
    app.amend_with(id, Role::Practitioner, 1, &robust).await;
    let moved = journey(&app, "case-1").await;

    assert!(moved.get("held").is_none(), "{moved}");
    assert_eq!(due(&moved, "not-done"), ["monitoring-review"], "{moved}");
}

#[tokio::test]
async fn a_hold_at_an_earlier_stage_than_the_cases_holds_nothing() {
    let app = spawn_app().await;
    app.decide_at("case-1", "plan-stress-test", "gaps").await;
    app.decide_at("case-1", "monitoring-review", "on-track")
        .await;

    let journey = journey(&app, "case-1").await;

    assert_eq!(journey["stage"], 5, "{journey}");
    assert!(journey.get("held").is_none(), "{journey}");
    assert_eq!(
        due(&journey, "not-done"),
        ["risk-reassessment", "sustainability-plan"],
        "{journey}"
    );
}

#[tokio::test]
async fn an_agreed_level_that_holds_stays_in_force_over_a_re_test_until_one_below_it_is_agreed() {
    let app = spawn_app().await;
    let gaps = app.decide_at("case-1", "plan-stress-test", "gaps").await;
    let id = gaps["id"].as_str().unwrap();
    // Two people agree the plan fails...
    app.override_level(id, Role::Practitioner, 1, "fails").await;
    app.approve(id, 2).await;
    // ...and one person's robust re-test of the same decision does not undo that alone.
    let robust = input_at("plan-stress-test", "robust");
    app.amend_with(id, Role::Practitioner, 3, &robust).await;

    let journey = journey(&app, "case-1").await;

    assert_eq!(journey["held"][0]["level"], "fails", "{journey}");
    assert_eq!(due(&journey, "not-done"), Vec::<String>::new(), "{journey}");
}

#[tokio::test]
async fn an_agencys_own_assessment_is_no_childs_case_and_its_journey_says_so() {
    let app = spawn_app().await;
    app.decide("agency-1", "org-self-assessment").await;
    app.decide("case-1", TOOL).await;

    let agency = journey(&app, "agency-1").await;
    let child = journey(&app, "case-1").await;

    assert_eq!(agency["organisational"], true, "{agency}");
    assert_eq!(agency["stage"], 0, "{agency}");
    assert_eq!(due(&agency, "not-done"), Vec::<String>::new(), "{agency}");
    assert!(child.get("organisational").is_none(), "{child}");
}
