//! The audit surface over HTTP: tool versions and their snapshots, replay and impact analysis,
//! export, verification of the hash chain (including a store changed under the service's feet),
//! the disparity audit and the supervisor dashboard.

use std::path::Path;

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, Response, StatusCode};
use safeguard::auth::Role;
use safeguard::store::hash_value_without_hash;
use serde_json::{json, Value};

use crate::common::{
    array_of, catalog_copy, core_cases, error_paths, json_of, problem, spawn_app, spawn_app_with,
    valid_input, write_plugin, TestApp, TOOL,
};

/// The plugin the version tests write.
const PLUGIN: &str = "test-agency";

/// Writes a plugin that moves harm-analysis's medium cut-point to `medium`.
fn recalibrate(root: &Path, medium: u32) {
    let manifest = format!(
        "name = \"{PLUGIN}\"\nversion = \"1.0.0\"\ndescription = \"A plugin the tests write\"\n\n[overrides.{TOOL}]\nparams = {{ cut_points = {{ medium = {medium} }} }}\n"
    );
    write_plugin(root, PLUGIN, &manifest, &[]);
}

/// harm-analysis's levels, least serious first.
const LEVELS: [&str; 4] = ["low", "medium", "high", "very-high"];

/// The level harm-analysis gives `score` with these cut-points, as its rules derive it.
fn level_for(score: u64, medium: u64, high: u64, very_high: u64) -> &'static str {
    if score >= very_high {
        "very-high"
    } else if score >= high {
        "high"
    } else if score >= medium {
        "medium"
    } else {
        "low"
    }
}

fn index(level: &str) -> usize {
    LEVELS
        .iter()
        .position(|l| *l == level)
        .unwrap_or_else(|| panic!("{level} is not a harm-analysis level"))
}

/// The level-change matrix a replay of every core harm-analysis case (stored `copies` times
/// each, by the core tool) must give against a medium cut-point of `medium`.
fn expected_matrix(medium: u64, copies: u64) -> Vec<Vec<u64>> {
    let mut matrix = vec![vec![0u64; LEVELS.len()]; LEVELS.len()];
    for case in core_cases(TOOL) {
        let stored = case["expect"]["level"].as_str().unwrap();
        let score = case["expect"]["score"]
            .as_u64()
            .expect("a core case pins its score");
        matrix[index(stored)][index(level_for(score, medium, 13, 20))] += copies;
    }
    matrix
}

/// Submits every core harm-analysis case once to each of `cases`; returns the decisions in
/// submission (and so journal) order.
async fn decide_every_core_case(app: &TestApp, cases: &[&str]) -> Vec<Value> {
    let mut decisions = Vec::new();
    for case in cases {
        for tool_case in core_cases(TOOL) {
            let response = app
                .submit(case, TOOL, &tool_case["input"], Role::Practitioner)
                .await;
            decisions.push(json_of(response, StatusCode::CREATED).await);
        }
    }
    decisions
}

async fn replay(app: &TestApp, body: &Value) -> Response {
    app.post_json("/v1/audit/replay", Role::Auditor, body).await
}

/// The report of a replay that must succeed.
async fn replay_report(app: &TestApp, body: &Value) -> Value {
    json_of(replay(app, body).await, StatusCode::OK).await
}

#[tokio::test]
async fn a_replay_of_a_tool_never_served_is_404_and_a_level_typo_is_422() {
    let app = spawn_app().await;
    app.decide("case-1", TOOL).await;

    for against in [
        json!({"kind": "recorded"}),
        json!({"kind": "candidate", "params": {}}),
    ] {
        let body = json!({"tool": "harm-analysys", "against": against});
        problem(
            replay(&app, &body).await,
            StatusCode::NOT_FOUND,
            "/problems/unknown-tool",
        )
        .await;
    }
    let typo = json!({"tool": TOOL, "level": "hgih", "against": {"kind": "recorded"}});
    let body = problem(
        replay(&app, &typo).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/invalid-filter",
    )
    .await;
    assert_eq!(error_paths(&body), ["/level"], "{body}");
}

/// A level next to `level` in `tool`: an override within one step.
async fn neighbour(app: &TestApp, tool: &str, level: &str) -> String {
    let levels = app.levels(tool).await;
    let at = levels.iter().position(|l| l == level).expect("a level");
    levels[if at + 1 < levels.len() {
        at + 1
    } else {
        at - 1
    }]
    .clone()
}

/// Overrides `decision` (at revision 1) to a neighbouring level as the practitioner; returns
/// the new revision.
async fn override_decision(app: &TestApp, decision: &Value) -> Value {
    let tool = decision["tool"]["id"].as_str().unwrap();
    let level = neighbour(app, tool, decision["level"].as_str().unwrap()).await;
    app.override_level(
        decision["id"].as_str().unwrap(),
        Role::Practitioner,
        1,
        &level,
    )
    .await
}

// Versions.

#[tokio::test]
async fn a_tool_version_is_listed_with_the_number_of_decisions_it_made() {
    let app = spawn_app().await;
    let first = app.decide("case-1", TOOL).await;
    app.decide("case-2", TOOL).await;
    app.decide("case-3", TOOL).await;

    let versions = array_of(
        app.get(&format!("/v1/tools/{TOOL}/versions"), Role::Auditor)
            .await,
    )
    .await;

    let [version] = versions.as_slice() else {
        panic!("expected one version, got {versions:#?}");
    };
    assert_eq!(version["tool"], TOOL);
    assert_eq!(version["digest"], first["tool"]["digest"]);
    assert_eq!(version["version"], first["tool"]["version"]);
    assert_eq!(version["decisions"], 3, "{version}");
    for field in ["first_served_at", "first_used_at", "last_used_at"] {
        assert!(version[field].is_string(), "{field} missing: {version}");
    }
}

#[tokio::test]
async fn a_tool_version_is_served_with_the_snapshot_its_digest_covers() {
    let app = spawn_app().await;
    let digest = app.listed(TOOL).await["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let tool = json_of(
        app.get(&format!("/v1/tools/{TOOL}"), Role::Admin).await,
        StatusCode::OK,
    )
    .await;

    let version = json_of(
        app.get(&format!("/v1/tools/{TOOL}/versions/{digest}"), Role::Admin)
            .await,
        StatusCode::OK,
    )
    .await;

    assert_eq!(version["digest"], digest.as_str());
    let snapshot = &version["snapshot"];
    assert_eq!(snapshot["schema"], tool["schema"]);
    assert_eq!(snapshot["params"], tool["params"]);
    assert!(snapshot["rules"].as_str().unwrap().contains("fn decide("));
    assert!(snapshot["plugins"].is_array(), "{snapshot}");
    assert_eq!(safeguard::catalog::digest(snapshot), digest);
}

#[tokio::test]
async fn a_version_that_is_not_stored_is_a_404() {
    let app = spawn_app().await;
    let digest = format!("sha256:{}", "0".repeat(64));

    let response = app
        .get(
            &format!("/v1/tools/{TOOL}/versions/{digest}"),
            Role::Auditor,
        )
        .await;

    problem(response, StatusCode::NOT_FOUND, "/problems/unknown-version").await;
}

#[tokio::test]
async fn decisions_are_counted_against_the_version_that_made_them() {
    let root = catalog_copy(false);
    let app = spawn_app_with(root.path()).await;
    let input = core_cases(TOOL)[0]["input"].clone();
    let mut made = Vec::new();
    for case in ["case-1", "case-2"] {
        let response = app.submit(case, TOOL, &input, Role::Practitioner).await;
        made.push(json_of(response, StatusCode::CREATED).await);
    }
    recalibrate(root.path(), 8);
    json_of(app.reload().await, StatusCode::OK).await;
    let response = app.submit("case-3", TOOL, &input, Role::Practitioner).await;
    made.push(json_of(response, StatusCode::CREATED).await);

    let versions = array_of(
        app.get(&format!("/v1/tools/{TOOL}/versions"), Role::Auditor)
            .await,
    )
    .await;

    let counts: Vec<(&Value, &Value)> = versions
        .iter()
        .map(|v| (&v["digest"], &v["decisions"]))
        .collect();
    assert_eq!(
        counts,
        [
            (&made[0]["tool"]["digest"], &json!(2)),
            (&made[2]["tool"]["digest"], &json!(1))
        ]
    );
}

// Replay.

#[tokio::test]
async fn replay_against_the_recorded_versions_reproduces_every_stored_outcome() {
    let root = catalog_copy(false);
    let app = spawn_app_with(root.path()).await;
    let mut decisions = decide_every_core_case(&app, &["case-core"]).await;
    // Half the decisions are made by a version that is no longer served when the replay runs.
    recalibrate(root.path(), 8);
    json_of(app.reload().await, StatusCode::OK).await;
    decisions.extend(decide_every_core_case(&app, &["case-local"]).await);

    let report = replay_report(
        &app,
        &json!({"tool": TOOL, "against": {"kind": "recorded"}}),
    )
    .await;

    let n = decisions.len();
    assert_eq!(report["against"], "recorded");
    assert_eq!(report["irreproducible"], 0, "{report:#}");
    assert_eq!(report["considered"], n, "{report:#}");
    assert_eq!(report["replayed"], n, "{report:#}");
    assert_eq!(report["unchanged"], n, "{report:#}");
    assert_eq!(report["changed"], 0, "{report:#}");
    assert_eq!(report["reworded"], 0, "{report:#}");
    assert_eq!(report["rejected_count"], 0, "{report:#}");
}

#[tokio::test]
async fn replay_against_candidate_params_counts_each_level_change_in_the_matrix() {
    let root = catalog_copy(false);
    let app = spawn_app_with(root.path()).await;
    decide_every_core_case(&app, &["case-1"]).await;
    let expected = expected_matrix(8, 1);
    assert!(
        expected[1][0] >= 2,
        "the cases must cross the moved cut-point"
    );

    let report = replay_report(
        &app,
        &json!({
            "tool": TOOL,
            "against": {"kind": "candidate", "params": {"cut_points": {"medium": 8}}}
        }),
    )
    .await;

    assert_eq!(report["against"], "candidate");
    assert_eq!(report["levels"], json!(LEVELS));
    assert_eq!(report["matrix"], json!(expected), "{report:#}");
    assert_eq!(report["changed"], expected[1][0], "{report:#}");
    for change in report["changes"].as_array().unwrap() {
        assert_eq!(
            (&change["old_level"], &change["new_level"]),
            (&json!("medium"), &json!("low")),
            "{change}"
        );
        assert_eq!(change["old_score"], change["new_score"], "{change}");
        assert_eq!(change["reworded"], false, "{change}");
    }
    // Decisions that stay where they were but whose level reason names the moved cut-point
    // (HA-LEVEL: "below the medium cut-point (8)") are the same decisions in other words:
    // counted apart, not listed, so the list is what the recalibration moves.
    assert!(report["reworded"].as_u64() > Some(0), "{report:#}");
    let accounted = ["unchanged", "changed", "reworded"]
        .iter()
        .map(|k| report[k].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(Some(accounted), report["replayed"].as_u64(), "{report:#}");
}

#[tokio::test]
async fn replay_lists_the_changed_decisions_in_journal_order_a_page_at_a_time() {
    let root = catalog_copy(false);
    let app = spawn_app_with(root.path()).await;
    let decisions = decide_every_core_case(&app, &["case-1", "case-2"]).await;
    let request = |offset: usize, limit: usize| {
        json!({
            "tool": TOOL,
            "against": {"kind": "candidate", "params": {"cut_points": {"medium": 8}}},
            "offset": offset,
            "limit": limit
        })
    };
    let changed: Vec<&Value> = decisions
        .iter()
        .filter(|d| d["level"] == "medium" && d["score"].as_u64().is_some_and(|s| s < 8))
        .collect();
    assert!(changed.len() >= 4, "too few decisions cross the cut-point");

    let all = replay_report(&app, &request(0, 100)).await;
    let page = replay_report(&app, &request(1, 2)).await;

    let ids = |report: &Value| -> Vec<Value> {
        report["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["decision_id"].clone())
            .collect()
    };
    let expected: Vec<Value> = changed.iter().map(|d| d["id"].clone()).collect();
    assert_eq!(ids(&all), expected);
    assert_eq!(all["changed"], changed.len());
    assert_eq!(ids(&page), expected[1..3]);
    assert_eq!(
        page["changed"],
        changed.len(),
        "the total counts every page"
    );
    assert_eq!((&page["offset"], &page["limit"]), (&json!(1), &json!(2)));

    // An offset past any store is an empty page, not an overflow.
    let far = replay_report(&app, &request(usize::MAX, 2)).await;
    assert_eq!(ids(&far), Vec::<Value>::new());
    assert_eq!(far["changed"], changed.len());
}

#[tokio::test]
async fn replay_against_a_candidate_schema_the_stored_inputs_fail_lists_them_as_rejected() {
    let root = catalog_copy(false);
    let app = spawn_app_with(root.path()).await;
    let decisions = decide_every_core_case(&app, &["case-1"]).await;
    let tool = json_of(
        app.get(&format!("/v1/tools/{TOOL}"), Role::Auditor).await,
        StatusCode::OK,
    )
    .await;
    let mut required = tool["schema"]["required"].as_array().unwrap().clone();
    required.push(json!("local_ref"));
    let patch = json!({
        "properties": {"local_ref": {"type": "string"}},
        "required": required
    });

    let report = replay_report(
        &app,
        &json!({"tool": TOOL, "against": {"kind": "candidate", "schema_patch": patch}}),
    )
    .await;

    assert_eq!(report["considered"], decisions.len(), "{report:#}");
    assert_eq!(report["replayed"], 0, "{report:#}");
    assert_eq!(report["rejected_count"], decisions.len(), "{report:#}");
    let rejected = report["rejected"].as_array().unwrap();
    let ids: Vec<&Value> = rejected.iter().map(|r| &r["decision_id"]).collect();
    let expected: Vec<&Value> = decisions.iter().map(|d| &d["id"]).collect();
    assert_eq!(ids, expected);
    for r in rejected {
        assert!(r["error"].as_str().unwrap().contains("local_ref"), "{r}");
    }
}

#[tokio::test]
async fn replay_against_a_candidate_script_with_a_syntax_error_is_a_422() {
    let app = spawn_app().await;
    app.decide("case-1", TOOL).await;

    let response = replay(
        &app,
        &json!({
            "tool": TOOL,
            "against": {"kind": "candidate", "rules": "fn decide(form, params) {\n    let x = ;\n}\n"}
        }),
    )
    .await;

    let body = problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/candidate-invalid",
    )
    .await;
    let errors = body["errors"].as_array().expect("the problems are listed");
    assert!(!errors.is_empty(), "{body}");
    assert!(
        errors
            .iter()
            .any(|e| e["message"].as_str().unwrap().contains("Unexpected ';'")),
        "{body}"
    );
}

#[tokio::test]
async fn replay_against_a_stored_version_by_digest_decides_as_that_version_did() {
    let root = catalog_copy(false);
    recalibrate(root.path(), 8);
    let app = spawn_app_with(root.path()).await;
    let recalibrated = app.listed(TOOL).await["digest"].clone();
    // The recalibrated version is withdrawn; the core version decides from now on.
    std::fs::remove_dir_all(root.path().join("plugins").join(PLUGIN)).unwrap();
    json_of(app.reload().await, StatusCode::OK).await;
    decide_every_core_case(&app, &["case-1"]).await;

    let report = replay_report(
        &app,
        &json!({"tool": TOOL, "against": {"kind": "version", "digest": recalibrated}}),
    )
    .await;

    assert_eq!(report["target_digest"], recalibrated, "{report:#}");
    assert_eq!(
        report["against"],
        format!("version {}", recalibrated.as_str().unwrap())
    );
    assert_eq!(report["matrix"], json!(expected_matrix(8, 1)), "{report:#}");
}

// Export.

/// A history across tools, cases and kinds of revision: five revisions.
async fn some_history(app: &TestApp) {
    let first = app.decide("case-a", TOOL).await;
    app.decide("case-b", "threshold").await;
    let overridden = override_decision(app, &first).await;
    app.approve(
        first["id"].as_str().unwrap(),
        overridden["revision"].as_u64().unwrap() as u32,
    )
    .await;
    app.decide("case-b", TOOL).await;
}

/// The exported revisions for `query` (e.g. `[("tool", "threshold")]`), one per line.
async fn export(app: &TestApp, query: &[(&str, &str)]) -> Vec<Value> {
    let response = app
        .request(
            Method::GET,
            "/v1/audit/decisions",
            Some(app.token(Role::Auditor)),
        )
        .query(query)
        .send()
        .await
        .expect("the request is sent");
    let status = response.status();
    let content_type = response.headers()[CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.text().await.expect("a body");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(content_type, "application/x-ndjson");
    assert!(body.is_empty() || body.ends_with('\n'), "{body}");
    body.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

fn seqs(revisions: &[Value]) -> Vec<u64> {
    revisions
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect()
}

/// The seqs of the revisions of `all` that `keep` keeps.
fn seqs_where(all: &[Value], keep: impl Fn(&Value) -> bool) -> Vec<u64> {
    all.iter()
        .filter(|r| keep(r))
        .map(|r| r["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn export_streams_every_revision_as_one_json_line_carrying_its_hash() {
    let app = spawn_app().await;
    some_history(&app).await;

    let lines = export(&app, &[]).await;

    assert_eq!(seqs(&lines), [1, 2, 3, 4, 5]);
    for line in &lines {
        let stored = line["hash"].as_str().expect("a hash").to_owned();
        assert_eq!(hash_value_without_hash(&mut line.clone()), stored, "{line}");
        let id = line["decision_id"].as_str().unwrap();
        let revision = &app.revisions(id).await[line["revision"].as_u64().unwrap() as usize - 1];
        assert_eq!(revision["hash"], stored.as_str());
    }
}

#[tokio::test]
async fn export_filters_by_tool() {
    let app = spawn_app().await;
    some_history(&app).await;
    let all = export(&app, &[]).await;

    let lines = export(&app, &[("tool", "threshold")]).await;

    let expected = seqs_where(&all, |r| r["tool"]["id"] == "threshold");
    assert_eq!(seqs(&lines), expected);
    assert!(!expected.is_empty());
}

#[tokio::test]
async fn export_filters_by_case() {
    let app = spawn_app().await;
    some_history(&app).await;
    let all = export(&app, &[]).await;

    let lines = export(&app, &[("case", "case-b")]).await;

    let expected = seqs_where(&all, |r| r["case_id"] == "case-b");
    assert_eq!(seqs(&lines), expected);
    assert_eq!(expected.len(), 2);
}

#[tokio::test]
async fn export_filters_by_the_level_in_force() {
    let app = spawn_app().await;
    some_history(&app).await;
    let all = export(&app, &[]).await;
    let approved = all
        .iter()
        .find(|r| r["override"]["status"] == "approved")
        .expect("an approved override");
    let level = approved["override"]["level"].as_str().unwrap();

    let lines = export(&app, &[("level", level)]).await;

    let in_force = |r: &Value| -> Value {
        if r["override"]["status"] == "approved" {
            r["override"]["level"].clone()
        } else {
            r["outcome"]["level"].clone()
        }
    };
    let expected = seqs_where(&all, |r| in_force(r) == level);
    assert_eq!(seqs(&lines), expected);
    assert!(expected.contains(&approved["seq"].as_u64().unwrap()));
}

#[tokio::test]
async fn export_filters_by_recorded_time_from_inclusive_to_exclusive() {
    let app = spawn_app().await;
    some_history(&app).await;
    let all = export(&app, &[]).await;
    let middle = all[2]["recorded_at"].as_str().unwrap().to_owned();

    let from = export(&app, &[("from", &middle)]).await;
    let to = export(&app, &[("to", &middle)]).await;

    let at = |r: &Value| r["recorded_at"].as_str().unwrap().to_owned();
    assert_eq!(seqs(&from), seqs_where(&all, |r| at(r) >= middle));
    assert_eq!(seqs(&to), seqs_where(&all, |r| at(r) < middle));
    assert!(seqs(&from).contains(&3));
    assert!(!seqs(&to).contains(&3));
}

/// Three decisions at once, which often share a millisecond, then a pause.
async fn burst(app: &TestApp, n: usize) {
    let case = format!("case-{n}");
    tokio::join!(
        app.decide(&case, TOOL),
        app.decide(&case, "threshold"),
        app.decide(&case, TOOL)
    );
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
}

/// Decisions in bursts over many milliseconds, with a restart between them.
async fn decisions_over_many_milliseconds(app: TestApp) -> TestApp {
    for n in 0..4 {
        burst(&app, n).await;
    }
    let app = app.restart().await;
    for n in 4..6 {
        burst(&app, n).await;
    }
    app
}

#[tokio::test]
async fn export_of_a_time_window_is_exactly_the_revisions_recorded_in_it() {
    let app = decisions_over_many_milliseconds(spawn_app().await).await;
    let all = export(&app, &[]).await;
    assert_eq!(all.len(), 18);
    let at = |r: &Value| r["recorded_at"].as_str().unwrap().to_owned();
    for pair in all.windows(2) {
        assert!(at(&pair[0]) <= at(&pair[1]), "time goes back: {pair:?}");
    }
    let mut times: Vec<String> = all.iter().map(at).collect();
    times.dedup();
    assert!(
        times.len() >= 6,
        "the bursts share too few milliseconds: {times:?}"
    );

    // The same instants, written with microseconds (truncated to the millisecond, as stored)
    // and with an offset.
    let with_micros = |t: &str| t.replace('Z', "999Z");
    let with_offset = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .unwrap()
            .with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap())
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
    };
    for from in &times {
        for to in times.iter().filter(|to| *to >= from) {
            let expected = seqs_where(&all, |r| at(r) >= *from && at(r) < *to);
            for (f, t) in [
                (from.clone(), to.clone()),
                (with_micros(from), with_micros(to)),
                (with_offset(from), with_offset(to)),
            ] {
                let window = export(&app, &[("from", &f), ("to", &t)]).await;
                assert_eq!(seqs(&window), expected, "from {f} to {t}");
            }
        }
        let since = export(&app, &[("from", from)]).await;
        assert_eq!(
            seqs(&since),
            seqs_where(&all, |r| at(r) >= *from),
            "from {from}"
        );
        let until = export(&app, &[("to", from)]).await;
        assert_eq!(
            seqs(&until),
            seqs_where(&all, |r| at(r) < *from),
            "to {from}"
        );
    }
    // After the last revision, and before the first.
    assert!(export(&app, &[("from", "2999-01-01T00:00:00Z")])
        .await
        .is_empty());
    assert!(export(&app, &[("to", "2000-01-01T00:00:00Z")])
        .await
        .is_empty());
    // Time and content together.
    let window = export(&app, &[("from", &times[1]), ("tool", "threshold")]).await;
    assert_eq!(
        seqs(&window),
        seqs_where(&all, |r| at(r) >= times[1]
            && r["tool"]["id"] == "threshold")
    );
}

/// Asserts that an export with `query` is refused with `status` and problem `kind`, naming
/// `field`.
async fn assert_export_refused_as(
    app: &TestApp,
    query: &str,
    status: StatusCode,
    kind: &str,
    field: &str,
) {
    let response = app
        .request(
            Method::GET,
            &format!("/v1/audit/decisions?{query}"),
            Some(app.token(Role::Auditor)),
        )
        .send()
        .await
        .unwrap();

    let body = problem(response, status, kind).await;
    assert_eq!(error_paths(&body), [field], "{query}: {body}");
}

/// Asserts that an export with `query` is refused as a 400 naming `field`.
async fn assert_export_refused(app: &TestApp, query: &str, field: &str) {
    assert_export_refused_as(
        app,
        query,
        StatusCode::BAD_REQUEST,
        "/problems/invalid-request",
        field,
    )
    .await;
}

#[tokio::test]
async fn export_with_a_from_that_is_not_a_time_is_a_400_naming_it() {
    let app = spawn_app().await;

    assert_export_refused(&app, "from=yesterday", "from").await;
}

#[tokio::test]
async fn an_export_filter_that_could_only_be_a_typo_is_refused_naming_it() {
    let app = spawn_app().await;
    app.decide("case-1", TOOL).await;

    // A level the tool never declared, a tool never served, a window that ends before it starts:
    // each would answer an empty export that reads as "no such decisions".
    let unprocessable = |query: String, field: &'static str| {
        let app = &app;
        async move {
            assert_export_refused_as(
                app,
                &query,
                StatusCode::UNPROCESSABLE_ENTITY,
                "/problems/invalid-filter",
                field,
            )
            .await
        }
    };
    unprocessable(format!("tool={TOOL}&level=hgih"), "level").await;
    unprocessable(
        "from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z".into(),
        "to",
    )
    .await;
    let unknown = app
        .request(
            Method::GET,
            "/v1/audit/decisions?tool=harm-analysys",
            Some(app.token(Role::Auditor)),
        )
        .send()
        .await
        .unwrap();
    problem(unknown, StatusCode::NOT_FOUND, "/problems/unknown-tool").await;
    // Their right spellings are answered.
    let level = app.levels(TOOL).await.remove(0);
    export(&app, &[("tool", TOOL), ("level", &level)]).await;
}

// Verify.

async fn verify(app: &TestApp) -> Value {
    json_of(
        app.get("/v1/audit/verify", Role::Auditor).await,
        StatusCode::OK,
    )
    .await
}

#[tokio::test]
async fn verify_on_a_healthy_store_is_ok_and_counts_every_revision() {
    let app = spawn_app().await;
    some_history(&app).await;

    let report = verify(&app).await;

    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["revisions"], 5, "{report}");
    assert_eq!(report["head"]["seq"], 5, "{report}");
    assert!(report.get("first_break").is_none(), "{report}");
}

/// The key of journal entry `seq` in sled's default tree: `j` and the big-endian seq.
fn journal_key(seq: u64) -> Vec<u8> {
    [b"j".as_slice(), &seq.to_be_bytes()].concat()
}

/// Stops `app`, lets `change` edit its store directly with sled, and starts it again.
async fn under_the_store(mut app: TestApp, change: impl FnOnce(&sled::Db)) -> TestApp {
    app.stop().await;
    {
        let db = sled::open(app.data_dir()).expect("the stopped service's store opens");
        change(&db);
        db.flush().expect("the change is written");
    }
    app.restart().await
}

/// `bytes` with the first letter of the first string value inside `"input"` changed to another
/// letter: one byte, and still valid JSON.
fn with_one_input_byte_changed(bytes: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(bytes).expect("a stored revision is UTF-8");
    let input = text.find("\"input\":{").expect("the revision has an input");
    let value = input + text[input..].find("\":\"").expect("a string value") + 3;
    let mut changed = bytes.to_vec();
    assert!(changed[value].is_ascii_lowercase(), "{text}");
    changed[value] = if changed[value] == b'z' {
        b'y'
    } else {
        changed[value] + 1
    };
    changed
}

#[tokio::test]
async fn verify_catches_one_byte_changed_in_a_stored_revision() {
    let app = spawn_app().await;
    for case in ["case-1", "case-2", "case-3"] {
        app.decide(case, TOOL).await;
    }

    let app = under_the_store(app, |db| {
        let key = journal_key(2);
        let stored = db.get(&key).unwrap().expect("revision 2 is stored");
        let changed = with_one_input_byte_changed(&stored);
        // A stored entry is its hash, a newline and the canonical JSON that hash covers.
        let split = |bytes: &[u8]| {
            let newline = bytes.iter().position(|&b| b == b'\n').expect("a hash line");
            let json: Value = serde_json::from_slice(&bytes[newline + 1..]).expect("valid JSON");
            (bytes[..newline].to_vec(), json)
        };
        let ((hash_before, before), (hash_after, after)) = (split(&stored), split(&changed));
        assert_ne!(before["input"], after["input"]);
        assert_eq!(hash_before, hash_after);
        db.insert(key, changed).unwrap();
    })
    .await;
    let report = verify(&app).await;

    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["first_break"]["seq"], 2, "{report}");
    let reason = report["first_break"]["reason"].as_str().unwrap();
    assert!(reason.contains("does not match its hash"), "{reason}");
}

/// Why the stopped `app`'s service will not start again on its store (once sled's threads from
/// the last run have let go of its lock).
async fn refused_start(app: &TestApp) -> String {
    loop {
        match safeguard::server::Server::build(&app.config()).await {
            Err(e) if e.to_string().contains("another process") => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(e) => return e.to_string(),
            Ok(_) => panic!("the service started on a store that has lost revisions"),
        }
    }
}

/// `verify` of the stopped `app`'s store, as `safeguard verify` runs it.
fn verify_stopped(app: &TestApp) -> safeguard::audit::verify::VerifyReport {
    let store =
        safeguard::store::SledStore::open_existing(app.data_dir(), Default::default()).unwrap();
    safeguard::audit::verify::verify(&store, &|_| {}).unwrap()
}

/// The store as sled's recovery leaves it when it stops at damage: the batch of the revision
/// after `seq` gone whole (its journal entry, its index entries, the head that named it), the
/// journal whole up to `seq`.
fn truncate_to(db: &sled::Db, seq: u64) {
    let last = db
        .get(journal_key(seq))
        .unwrap()
        .expect("the revision is stored");
    let hash = safeguard::store::Entry::split(&last)
        .unwrap()
        .hash
        .to_owned();
    let head = json!({"seq": seq, "hash": hash});
    db.remove(journal_key(seq + 1))
        .unwrap()
        .expect("the next revision was stored");
    // The decision index (`d`) names the revision's seq in its value; the case, tool and time
    // indexes (`c`, `t`, `w`) end their keys with it.
    let lost = (seq + 1).to_be_bytes();
    let mut indexed = 0;
    for entry in db.iter() {
        let (key, value) = entry.unwrap();
        let names_it = match key[0] {
            b'd' => value.as_ref() == lost,
            b'c' | b't' | b'w' => key.ends_with(&lost),
            _ => false,
        };
        if names_it {
            db.remove(&key).unwrap();
            indexed += 1;
        }
    }
    assert!(indexed >= 3, "the lost revision's index entries were found");
    db.insert(b"h", serde_json::to_vec(&head).unwrap()).unwrap();
}

#[tokio::test]
async fn a_store_that_lost_its_last_revisions_is_not_served_and_verify_says_what_is_missing() {
    let mut app = spawn_app().await;
    for case in ["case-1", "case-2", "case-3"] {
        app.decide(case, TOOL).await;
    }
    app.stop().await;
    {
        let db = sled::open(app.data_dir()).expect("the stopped service's store opens");
        truncate_to(&db, 2);
        db.flush().unwrap();
    }

    // Serving it would put a new revision 3 where the lost one was and move the anchor past
    // the evidence: the service does not start, and says what to do.
    let refused = refused_start(&app).await;
    assert!(refused.contains("revisions 3-3 are lost"), "{refused}");
    assert!(refused.contains("backup"), "{refused}");

    // It can still be read and verified (as `safeguard verify` does, the service stopped).
    let report = verify_stopped(&app);
    assert!(!report.ok);
    assert_eq!(report.revisions, 2);
    let reason = &report.first_break.as_ref().unwrap().reason;
    assert!(reason.contains("missing from the end"), "{reason}");

    // The loss accepted (the anchor moved aside, kept): served again, and writes go on.
    let anchor = app.data_dir().join("anchor");
    std::fs::rename(&anchor, app.data_dir().join("anchor.lost")).unwrap();
    let app = app.restart().await;
    let report = verify(&app).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["revisions"], 2, "{report}");
    app.decide("case-4", TOOL).await;
}

#[tokio::test]
async fn a_store_whose_anchor_names_another_revision_is_not_served() {
    // Two stores of three revisions each: the anchor of one names its own third revision, whose
    // hash the other's journal does not have, as when a folder's files are mixed with another's.
    let (mut ours, mut theirs) = (spawn_app().await, spawn_app().await);
    for case in ["case-1", "case-2", "case-3"] {
        ours.decide(case, TOOL).await;
        theirs.decide(case, TOOL).await;
    }
    ours.stop().await;
    theirs.stop().await;
    std::fs::copy(
        theirs.data_dir().join("anchor"),
        ours.data_dir().join("anchor"),
    )
    .unwrap();

    let refused = refused_start(&ours).await;
    assert!(
        refused.contains("not the files the service last wrote"),
        "{refused}"
    );
    // Verify, reading it, names the same break.
    let report = verify_stopped(&ours);
    assert!(!report.ok);
    let reason = &report.first_break.as_ref().unwrap().reason;
    assert!(reason.contains("anchor file says revision 3"), "{reason}");
}

// Disparity.

/// Twelve decisions whose form says the risks are `present` (one of them overridden) and three
/// that say `resolved`.
async fn decisions_by_current_risks(app: &TestApp) {
    for (n, risks) in std::iter::repeat_n("present", 12)
        .chain(std::iter::repeat_n("resolved", 3))
        .enumerate()
    {
        let mut input = valid_input(TOOL);
        input["current_risks"] = json!(risks);
        let response = app
            .submit(&format!("case-{n}"), TOOL, &input, Role::Practitioner)
            .await;
        let decision = json_of(response, StatusCode::CREATED).await;
        if n == 0 {
            override_decision(app, &decision).await;
        }
    }
}

async fn disparity(app: &TestApp, field: &str) -> Response {
    app.post_json(
        "/v1/audit/disparity",
        Role::Auditor,
        &json!({"tool": TOOL, "field": field}),
    )
    .await
}

#[tokio::test]
async fn disparity_groups_decisions_by_a_form_field_and_marks_small_groups() {
    let app = spawn_app().await;
    decisions_by_current_risks(&app).await;

    let report = json_of(disparity(&app, "/current_risks").await, StatusCode::OK).await;

    assert_eq!(report["total"], 15, "{report:#}");
    assert_eq!(report["overall"]["n"], 15, "{report:#}");
    let groups: Vec<(&Value, &Value, &Value)> = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (&g["value"], &g["n"], &g["small"]))
        .collect();
    assert_eq!(
        groups,
        [
            (&json!("present"), &json!(12), &json!(false)),
            (&json!("resolved"), &json!(3), &json!(true))
        ]
    );
    assert_eq!(report["groups"][0]["override_rate"]["count"], 1);
    assert_eq!(report["groups"][1]["override_rate"]["count"], 0);
}

#[tokio::test]
async fn disparity_studies_a_tool_no_longer_served_from_its_stored_versions() {
    let root = catalog_copy(false);
    let app = spawn_app_with(root.path()).await;
    let input = valid_input("threshold");
    for case in ["case-1", "case-2", "case-3"] {
        let response = app
            .submit(case, "threshold", &input, Role::Practitioner)
            .await;
        json_of(response, StatusCode::CREATED).await;
    }
    // The agency withdraws the tool; its decisions stay on record.
    std::fs::remove_file(root.path().join("tool-schemas/threshold.json")).unwrap();
    std::fs::remove_file(root.path().join("rules/threshold.rhai")).unwrap();
    std::fs::remove_dir_all(root.path().join("tests/cases/threshold")).unwrap();
    json_of(app.reload().await, StatusCode::OK).await;
    let field = input.as_object().unwrap().keys().next().unwrap().clone();

    let response = app
        .post_json(
            "/v1/audit/disparity",
            Role::Auditor,
            &json!({"tool": "threshold", "field": format!("/{field}")}),
        )
        .await;

    let report = json_of(response, StatusCode::OK).await;
    assert_eq!(report["total"], 3, "{report:#}");
    assert_eq!(report["groups"].as_array().unwrap().len(), 1, "{report:#}");
    // A tool that never existed is still unknown.
    let unknown = app
        .post_json(
            "/v1/audit/disparity",
            Role::Auditor,
            &json!({"tool": "no-such-tool", "field": "/x"}),
        )
        .await;
    problem(unknown, StatusCode::NOT_FOUND, "/problems/unknown-tool").await;
}

#[tokio::test]
async fn disparity_gives_every_rate_a_wilson_interval() {
    let app = spawn_app().await;
    decisions_by_current_risks(&app).await;

    let report = json_of(disparity(&app, "/current_risks").await, StatusCode::OK).await;

    let mut groups = report["groups"].as_array().unwrap().clone();
    groups.push(report["overall"].clone());
    for group in &groups {
        let rates = group["levels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| &l["rate"])
            .chain([&group["override_rate"]]);
        for rate in rates {
            let (low, mid, high) = (
                rate["low"].as_f64().expect("a lower bound"),
                rate["rate"].as_f64().expect("a rate"),
                rate["high"].as_f64().expect("an upper bound"),
            );
            assert!(
                0.0 <= low && low <= mid && mid <= high && high <= 1.0,
                "{rate}"
            );
        }
    }
    // No override among 3: the 95% Wilson interval is [0, z^2 / (n + z^2)].
    let small = &report["groups"][1]["override_rate"];
    let z2 = 1.96f64 * 1.96;
    assert_eq!(small["low"], 0.0, "{small}");
    assert!(
        (small["high"].as_f64().unwrap() - z2 / (3.0 + z2)).abs() < 1e-9,
        "{small}"
    );
}

#[tokio::test]
async fn disparity_by_a_field_that_is_not_a_json_pointer_is_a_400_naming_it() {
    let app = spawn_app().await;

    let response = disparity(&app, "current_risks").await;

    let body = problem(
        response,
        StatusCode::BAD_REQUEST,
        "/problems/invalid-request",
    )
    .await;
    assert_eq!(error_paths(&body), ["/field"], "{body}");
}

// The dashboard.

async fn dashboard(app: &TestApp) -> Value {
    json_of(
        app.get("/v1/dashboard", Role::Supervisor).await,
        StatusCode::OK,
    )
    .await
}

#[tokio::test]
async fn the_dashboard_lists_pending_overrides_oldest_first() {
    let app = spawn_app().await;
    let first = app.decide("case-a", TOOL).await;
    let second = app.decide("case-b", TOOL).await;
    // The later decision is overridden first.
    override_decision(&app, &second).await;
    override_decision(&app, &first).await;

    let figures = dashboard(&app).await;

    let pending: Vec<&Value> = figures["pending_overrides"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["decision_id"])
        .collect();
    assert_eq!(pending, [&second["id"], &first["id"]], "{figures:#}");
    assert_eq!(figures["pending_overrides"][0]["revision"], 2);
    assert_eq!(figures["pending_overrides"][0]["case"], "case-b");
}

#[tokio::test]
async fn the_dashboard_gives_the_override_rate_of_each_tool() {
    let app = spawn_app().await;
    let mut harm = Vec::new();
    for case in ["case-1", "case-2", "case-3", "case-4"] {
        harm.push(app.decide(case, TOOL).await);
    }
    app.decide("case-1", "threshold").await;
    override_decision(&app, &harm[0]).await;
    override_decision(&app, &harm[1]).await;
    app.approve(harm[1]["id"].as_str().unwrap(), 2).await;

    let figures = dashboard(&app).await;

    assert_eq!(
        figures["override_rate_by_tool"],
        json!([
            {"tool": TOOL, "decisions": 4, "overridden": 2, "pending": 1, "declined": 0, "rate": 0.5},
            {"tool": "threshold", "decisions": 1, "overridden": 0, "pending": 0, "declined": 0, "rate": 0.0}
        ]),
        "{figures:#}"
    );
}

#[tokio::test]
async fn the_dashboard_counts_cases_at_their_furthest_stage() {
    let app = spawn_app().await;
    // threshold is stage 0, harm-analysis stage 1, network-meeting stage 3.
    app.decide("case-front-door", "threshold").await;
    app.decide("case-assessed", "threshold").await;
    app.decide("case-assessed", TOOL).await;
    app.decide("case-planned", TOOL).await;
    app.decide("case-planned", "network-meeting").await;

    let figures = dashboard(&app).await;

    assert_eq!(
        figures["cases_per_stage"],
        json!({"0": 1, "1": 1, "2": 0, "3": 1, "4": 0, "5": 0, "6": 0, "7": 0}),
        "{figures:#}"
    );
}

#[tokio::test]
async fn the_dashboard_lists_cases_held_at_their_stage() {
    let app = spawn_app().await;
    let fails = app
        .decide_at("case-fails", "plan-stress-test", "fails")
        .await;
    app.decide_at("case-robust", "plan-stress-test", "robust")
        .await;

    let figures = dashboard(&app).await;

    assert_eq!(
        figures["cases_held"],
        json!([{
            "case": "case-fails",
            "stage": 4,
            "tool": "plan-stress-test",
            "decision_id": fails["id"],
            "level": "fails",
            "since": fails["recorded_at"],
        }]),
        "{figures:#}"
    );
}

#[tokio::test]
async fn the_dashboard_is_open_to_supervisors_and_auditors_only() {
    let app = spawn_app().await;

    for role in Role::ALL {
        let response = app.get("/v1/dashboard", role).await;

        match role {
            Role::Supervisor | Role::Auditor => {
                json_of(response, StatusCode::OK).await;
            }
            Role::Practitioner | Role::Admin => {
                problem(response, StatusCode::FORBIDDEN, "/problems/forbidden").await;
            }
        }
    }
}
