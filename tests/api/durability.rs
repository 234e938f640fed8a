//! What the store promises over HTTP: nothing acknowledged is lost across a restart, the hash
//! chain holds, and concurrent requests neither lose a write nor let two win a race.

use std::collections::HashSet;

use reqwest::header::IF_MATCH;
use reqwest::{Method, StatusCode};
use safeguard::auth::Role;
use safeguard::store::GENESIS_HASH;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::common::{json_of, spawn_app, valid_input, TestApp, TOOL};

/// Every revision of every decision of `cases`, in journal order.
async fn journal(app: &TestApp, cases: &[&str]) -> Vec<Value> {
    let mut revisions = Vec::new();
    for case in cases {
        for decision in app.case_decisions(case).await {
            revisions.extend(app.revisions(decision["id"].as_str().unwrap()).await);
        }
    }
    revisions.sort_by_key(|r| r["seq"].as_u64().expect("a seq"));
    revisions
}

/// Asserts that `revisions` (in journal order) are the whole journal and chain from genesis.
fn assert_chained(revisions: &[Value]) {
    let mut prev_hash = GENESIS_HASH.to_owned();
    for (i, revision) in revisions.iter().enumerate() {
        assert_eq!(revision["seq"], i as u64 + 1, "a gap in the journal");
        assert_eq!(revision["prev_hash"], prev_hash.as_str(), "{revision}");
        prev_hash = revision["hash"].as_str().expect("a hash").to_owned();
    }
}

/// Submits, amends, overrides and approves across two cases; returns the first decision.
async fn some_history(app: &TestApp) -> Value {
    let first = app.decide("case-a", TOOL).await;
    let id = first["id"].as_str().unwrap();
    app.decide("case-b", "threshold").await;
    app.amend(id, Role::Practitioner, 1).await;
    app.decide("case-a", "safety-scaling").await;
    let levels = app.levels(TOOL).await;
    let at = levels.iter().position(|l| *l == first["level"]).unwrap();
    let level = &levels[if at + 1 < levels.len() {
        at + 1
    } else {
        at - 1
    }];
    app.override_level(id, Role::Practitioner, 2, level).await;
    json_of(
        app.change(id, "approve", Role::Supervisor, 3, &json!({}))
            .await,
        StatusCode::CREATED,
    )
    .await
}

#[tokio::test]
async fn a_restart_keeps_every_decision_and_revision() {
    let app = spawn_app().await;
    let latest = some_history(&app).await;
    let before = journal(&app, &["case-a", "case-b"]).await;

    let app = app.restart().await;

    let after = journal(&app, &["case-a", "case-b"]).await;
    assert_eq!(after.len(), 6);
    assert_eq!(after, before);
    let id = latest["id"].as_str().unwrap();
    let response = app.get(&format!("/v1/decisions/{id}"), Role::Auditor).await;
    assert_eq!(json_of(response, StatusCode::OK).await, latest);
}

#[tokio::test]
async fn a_restart_keeps_the_hash_chain() {
    let app = spawn_app().await;
    some_history(&app).await;

    let app = app.restart().await;

    assert_chained(&journal(&app, &["case-a", "case-b"]).await);
}

#[tokio::test]
async fn a_decision_made_after_a_restart_continues_the_chain() {
    let app = spawn_app().await;
    some_history(&app).await;
    let app = app.restart().await;

    app.decide("case-c", TOOL).await;

    let revisions = journal(&app, &["case-a", "case-b", "case-c"]).await;
    assert_eq!(revisions.len(), 7);
    assert_chained(&revisions);
}

#[tokio::test]
async fn the_first_decision_reads_back_identically_after_a_restart() {
    let app = spawn_app().await;
    let first = app.decide("case-a", TOOL).await;
    let id = first["id"].as_str().unwrap().to_owned();

    let app = app.restart().await;

    let response = app.get(&format!("/v1/decisions/{id}"), Role::Auditor).await;
    assert_eq!(json_of(response, StatusCode::OK).await, first);
}

#[tokio::test]
async fn an_idempotency_key_still_returns_the_first_decision_after_a_restart() {
    let app = spawn_app().await;
    let body = json!({"tool": TOOL, "input": valid_input(TOOL)});
    let send = |app: &TestApp| {
        app.request(
            Method::POST,
            "/v1/cases/case-a/decisions",
            Some(app.token(Role::Practitioner)),
        )
        .header("Idempotency-Key", "k-1")
        .json(&body)
        .send()
    };
    let first = json_of(send(&app).await.unwrap(), StatusCode::CREATED).await;
    let app = app.restart().await;

    let retry = json_of(send(&app).await.unwrap(), StatusCode::CREATED).await;

    assert_eq!(retry["id"], first["id"]);
    assert_eq!(app.case_decisions("case-a").await.len(), 1);
}

#[tokio::test]
async fn a_burst_of_200_concurrent_submits_to_one_case_loses_nothing() {
    let app = spawn_app().await;
    let body = json!({"tool": TOOL, "input": valid_input(TOOL)});
    let url = app.url("/v1/cases/case-burst/decisions");
    let token = app.token(Role::Practitioner).to_owned();
    let mut tasks = JoinSet::new();
    for task in 0..16 {
        let (client, url, token, body) =
            (app.client.clone(), url.clone(), token.clone(), body.clone());
        // 200 = 16 * 12 + 8: the first 8 tasks send one more.
        let count = 12 + usize::from(task < 8);
        tasks.spawn(async move {
            let mut answers = Vec::new();
            for _ in 0..count {
                let response = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .expect("the request is sent");
                answers.push(json_of(response, StatusCode::CREATED).await);
            }
            answers
        });
    }

    let answers: Vec<Value> = tasks.join_all().await.into_iter().flatten().collect();

    assert_eq!(answers.len(), 200);
    let ids: HashSet<&str> = answers.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 200, "two submits got the same decision id");
    let seqs: HashSet<u64> = answers.iter().map(|d| d["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs.len(),
        200,
        "two revisions got the same journal position"
    );
    let listed = app.case_decisions("case-burst").await;
    assert_eq!(listed.len(), 200);
    let listed: HashSet<&str> = listed.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(listed, ids);
    assert_chained(&journal(&app, &["case-burst"]).await);
}

#[tokio::test]
async fn of_concurrent_amends_built_on_one_revision_exactly_one_wins() {
    let app = spawn_app().await;
    let decision = app.decide("case-a", TOOL).await;
    let id = decision["id"].as_str().unwrap();
    let url = app.url(&format!("/v1/decisions/{id}/revisions"));
    let token = app.token(Role::Practitioner).to_owned();
    let body = json!({"input": valid_input(TOOL)});
    let mut tasks = JoinSet::new();
    for _ in 0..16 {
        let (client, url, token, body) =
            (app.client.clone(), url.clone(), token.clone(), body.clone());
        tasks.spawn(async move {
            let response = client
                .post(&url)
                .bearer_auth(&token)
                .header(IF_MATCH, "\"1\"")
                .json(&body)
                .send()
                .await
                .expect("the request is sent");
            response.status()
        });
    }

    let statuses = tasks.join_all().await;

    let won = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    let lost = statuses
        .iter()
        .filter(|s| **s == StatusCode::CONFLICT)
        .count();
    assert_eq!((won, lost), (1, 15), "{statuses:?}");
    assert_eq!(app.revisions(id).await.len(), 2);
}

#[tokio::test]
async fn concurrent_retries_with_one_idempotency_key_make_one_decision() {
    let app = spawn_app().await;
    let url = app.url("/v1/cases/case-a/decisions");
    let token = app.token(Role::Practitioner).to_owned();
    let body = json!({"tool": TOOL, "input": valid_input(TOOL)});
    let mut tasks = JoinSet::new();
    for _ in 0..16 {
        let (client, url, token, body) =
            (app.client.clone(), url.clone(), token.clone(), body.clone());
        tasks.spawn(async move {
            let response = client
                .post(&url)
                .bearer_auth(&token)
                .header("Idempotency-Key", "same-visit")
                .json(&body)
                .send()
                .await
                .expect("the request is sent");
            json_of(response, StatusCode::CREATED).await
        });
    }

    let answers = tasks.join_all().await;

    let ids: HashSet<&str> = answers.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(app.case_decisions("case-a").await.len(), 1);
}
