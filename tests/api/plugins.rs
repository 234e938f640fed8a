//! Plugins end to end: each kind of override as a client sees it over HTTP, each broken plugin
//! refused with its precise location (by the loader, by a reload, and by `serve`), and a reload
//! that swaps the catalog under live traffic without failing a request or losing a version.
//!
//! Every test works on its own copy of the core catalog (`catalog_copy`) with a plugin of its
//! own, so what it proves does not depend on the example agency the repository ships.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use safeguard::auth::Role;
use safeguard::server::{Server, StartError};
use safeguard::{check, Catalog};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::common::{
    array_of, catalog_copy, config, core_case_scoring, error_paths, json_of, problem,
    spawn_app_with, write_plugin, TestApp, TOOL,
};

/// The name (and folder) of every plugin these tests write.
const PLUGIN: &str = "test-agency";

/// A manifest of [`PLUGIN`] with `body` after its header (overrides, tools).
fn manifest(body: &str) -> String {
    format!(
        "name = \"{PLUGIN}\"\nversion = \"1.0.0\"\ndescription = \"A plugin the tests write\"\n\n{body}"
    )
}

/// A manifest that moves harm-analysis's medium cut-point to `medium` and nothing else.
fn medium_at(medium: u32) -> String {
    manifest(&format!(
        "[overrides.{TOOL}]\nparams = {{ cut_points = {{ medium = {medium} }} }}\n"
    ))
}

/// A core catalog copy with a plugin that moves harm-analysis's medium cut-point to `medium`.
fn recalibrated(medium: u32) -> tempfile::TempDir {
    let root = catalog_copy(false);
    write_plugin(root.path(), PLUGIN, &medium_at(medium), &[]);
    root
}

/// The input of the core harm-analysis case that scores `score`.
fn scoring(score: u64) -> Value {
    core_case_scoring(TOOL, score)["input"].clone()
}

/// The evaluation of `input` by `tool`, which must succeed.
async fn evaluation(app: &TestApp, tool: &str, input: &Value) -> Value {
    json_of(app.evaluate(tool, input).await, StatusCode::OK).await
}

/// The reason codes of an evaluation or decision.
fn reason_codes(outcome: &Value) -> Vec<&str> {
    outcome["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .map(|r| r["code"].as_str().expect("a reason code"))
        .collect()
}

/// The `required` list of the core harm-analysis schema, with `extra` added.
fn core_required_and(extra: &str) -> Value {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tool-schemas/{TOOL}.json")),
    )
    .expect("the core schema");
    let schema: Value = serde_json::from_str(&text).expect("the core schema is JSON");
    let mut required = schema["required"]
        .as_array()
        .expect("a required list")
        .clone();
    required.push(json!(extra));
    Value::Array(required)
}

/// A schema patch that adds the optional local question `local_ref` (a string).
fn local_ref_patch() -> Value {
    json!({
        "properties": {
            "local_ref": {
                "type": "string",
                "title": "Local reference",
                "description": "The agency's own reference for the analysis."
            }
        }
    })
}

/// A replacement script that runs the core rules and adds the 0-point reason `TP-CHECK` and the
/// flag `local-check`.
const ADDS_A_REASON: &str = r#"fn decide(form, params) {
    import "harm-analysis" as core;
    let out = core::decide(form, params);
    out.reasons.push(#{code: "TP-CHECK", text: "The local check was done", points: 0});
    out.flags.push("local-check");
    out
}
"#;

/// A local tool, `local-triage`: low below 6 points (2 a concern), high from 6.
fn local_tool_files() -> [(&'static str, String); 2] {
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Local triage",
        "description": "A local tool the tests add.",
        "type": "object",
        "additionalProperties": false,
        "required": ["concerns"],
        "properties": {
            "concerns": {
                "title": "How many separate concerns have been raised?",
                "type": "integer",
                "minimum": 0,
                "maximum": 100
            }
        },
        "x-tool": {
            "id": "local-triage",
            "version": "1.0.0",
            "stage": 0,
            "outcomes": [
                {"level": "low", "label": "Low", "response": "Universal services"},
                {"level": "high", "label": "High", "response": "Social work assessment"}
            ],
            "params": {"weight_per_concern": 2, "cut_points": {"high": 6}}
        }
    });
    let rules = r#"fn decide(form, params) {
    let points = form.concerns * params.weight_per_concern;
    let reasons = [];
    if points > 0 {
        reasons.push(#{code: "LT-CONCERNS", points: points, text: `${form.concerns} concern(s)`});
    }
    let level = if points >= params.cut_points.high { "high" } else { "low" };
    #{level: level, score: points, reasons: reasons, flags: [],
      recommendation: "Follow the local triage guidance.",
      explanation: "We have looked at what you told us."}
}
"#;
    [
        (
            "tool-schemas/local-triage.json",
            serde_json::to_string_pretty(&schema).unwrap(),
        ),
        ("rules/local-triage.rhai", rules.to_owned()),
    ]
}

// Each kind of override, over HTTP.

#[tokio::test]
async fn a_params_override_lowers_the_level_of_a_form_at_the_core_cut_point() {
    let core = catalog_copy(false);
    let local = recalibrated(7);
    let core_app = spawn_app_with(core.path()).await;
    let local_app = spawn_app_with(local.path()).await;

    let at_core_cut = scoring(6);
    let core_outcome = evaluation(&core_app, TOOL, &at_core_cut).await;
    let local_outcome = evaluation(&local_app, TOOL, &at_core_cut).await;
    let at_local_cut = evaluation(&local_app, TOOL, &scoring(7)).await;

    assert_eq!(
        (&core_outcome["level"], &core_outcome["score"]),
        (&json!("medium"), &json!(6))
    );
    assert_eq!(
        (&local_outcome["level"], &local_outcome["score"]),
        (&json!("low"), &json!(6))
    );
    assert_eq!(at_local_cut["level"], "medium");
}

#[tokio::test]
async fn a_schema_patch_makes_a_new_local_field_accepted() {
    let core = catalog_copy(false);
    let local = catalog_copy(false);
    write_plugin(
        local.path(),
        PLUGIN,
        &manifest(&format!(
            "[overrides.{TOOL}]\nschema_patch = \"patches/{TOOL}.json\"\n"
        )),
        &[(
            &format!("patches/{TOOL}.json"),
            &local_ref_patch().to_string(),
        )],
    );
    let core_app = spawn_app_with(core.path()).await;
    let local_app = spawn_app_with(local.path()).await;
    let mut input = scoring(6);
    input["local_ref"] = json!("EA-2026-0042");

    let accepted = evaluation(&local_app, TOOL, &input).await;
    let refused = core_app.evaluate(TOOL, &input).await;

    assert_eq!(accepted["level"], "medium");
    let body = problem(
        refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/invalid-form",
    )
    .await;
    assert_eq!(error_paths(&body), ["/local_ref"], "{body}");
}

#[tokio::test]
async fn a_schema_patch_that_requires_a_local_field_refuses_a_form_without_it_naming_it() {
    let root = catalog_copy(false);
    let mut patch = local_ref_patch();
    patch["required"] = core_required_and("local_ref");
    write_plugin(
        root.path(),
        PLUGIN,
        &manifest(&format!(
            "[overrides.{TOOL}]\nschema_patch = \"patches/{TOOL}.json\"\n"
        )),
        &[(&format!("patches/{TOOL}.json"), &patch.to_string())],
    );
    let app = spawn_app_with(root.path()).await;

    let response = app.evaluate(TOOL, &scoring(6)).await;

    let body = problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/invalid-form",
    )
    .await;
    assert_eq!(error_paths(&body), ["/local_ref"], "{body}");
}

#[tokio::test]
async fn a_replacement_script_importing_the_core_adds_its_reason_and_flag_to_the_core_outcome() {
    let core = catalog_copy(false);
    let local = catalog_copy(false);
    write_plugin(
        local.path(),
        PLUGIN,
        &manifest(&format!(
            "[overrides.{TOOL}]\nrules = \"overrides/{TOOL}.rhai\"\n"
        )),
        &[(&format!("overrides/{TOOL}.rhai"), ADDS_A_REASON)],
    );
    let core_app = spawn_app_with(core.path()).await;
    let local_app = spawn_app_with(local.path()).await;
    let input = scoring(7);

    let core_outcome = evaluation(&core_app, TOOL, &input).await;
    let local_outcome = evaluation(&local_app, TOOL, &input).await;

    assert_eq!(local_outcome["level"], core_outcome["level"]);
    assert_eq!(local_outcome["score"], core_outcome["score"]);
    let mut expected_reasons = reason_codes(&core_outcome);
    expected_reasons.push("TP-CHECK");
    assert_eq!(reason_codes(&local_outcome), expected_reasons);
    let mut expected_flags = core_outcome["flags"].as_array().unwrap().clone();
    expected_flags.push(json!("local-check"));
    assert_eq!(local_outcome["flags"], Value::Array(expected_flags));
}

#[tokio::test]
async fn a_plugin_tool_is_listed_with_its_plugin_as_source_and_decides() {
    let root = catalog_copy(false);
    let [schema, rules] = local_tool_files();
    write_plugin(
        root.path(),
        PLUGIN,
        &manifest("tools = [\"local-triage\"]\n"),
        &[(schema.0, &schema.1), (rules.0, &rules.1)],
    );
    let app = spawn_app_with(root.path()).await;

    let listed = app.listed("local-triage").await;
    let outcome = evaluation(&app, "local-triage", &json!({"concerns": 3})).await;

    assert_eq!(listed["source"], format!("plugin:{PLUGIN}"), "{listed}");
    assert_eq!(outcome["level"], "high", "{outcome}");
    assert_eq!(outcome["score"], 6, "{outcome}");
    assert_eq!(outcome["tool"]["digest"], listed["digest"], "{outcome}");
}

#[tokio::test]
async fn an_overridden_tool_is_listed_with_its_plugin_as_source_and_the_others_as_core() {
    let root = recalibrated(7);
    let app = spawn_app_with(root.path()).await;

    let tools = array_of(app.get("/v1/tools", Role::Practitioner).await).await;

    for tool in &tools {
        let expected = if tool["id"] == TOOL {
            format!("plugin:{PLUGIN}")
        } else {
            "core".to_owned()
        };
        assert_eq!(tool["source"], expected.as_str(), "{tool}");
    }
    assert!(tools.iter().any(|t| t["id"] == TOOL));
}

// Broken plugins: the loader, a reload and `serve` each refuse them, precisely located.

/// Where a load problem must be reported.
enum At {
    /// The problem concerns the whole file: no line is claimed.
    File,
    Position(usize, usize),
}

/// Serves a catalog copy with a working plugin (medium at 7), then replaces the plugin with
/// `manifest` and `files` and asserts that:
/// - `Catalog::load` fails with exactly one problem, in `file` (relative to the plugin folder),
///   at `at`, whose message contains `phrase`;
/// - a reload is a 422 `/problems/catalog-invalid` whose one error has that location as its
///   `path` and that message;
/// - the old catalog keeps serving: same digest, same decision.
async fn check_broken_plugin(
    manifest: &str,
    files: &[(&str, &str)],
    file: &str,
    at: At,
    phrase: &str,
) {
    let root = recalibrated(7);
    let app = spawn_app_with(root.path()).await;
    let served = app.listed(TOOL).await;
    let folder = write_plugin(root.path(), PLUGIN, manifest, files);

    let errors = Catalog::load(root.path()).expect_err("a broken plugin must not load");
    let response = app.reload().await;

    let [error] = errors.as_slice() else {
        panic!("expected exactly one problem, got {errors:#?}");
    };
    assert_eq!(error.file, folder.join(file), "{error}");
    match at {
        At::File => assert_eq!(error.line, None, "{error}"),
        At::Position(line, column) => assert_eq!(
            (error.line, error.column),
            (Some(line), Some(column)),
            "{error}"
        ),
    }
    assert!(
        error.message.contains(phrase),
        "expected {phrase:?} in {error}"
    );
    let body = problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/catalog-invalid",
    )
    .await;
    assert_eq!(error_paths(&body), [error.location()], "{body}");
    assert_eq!(body["errors"][0]["message"], error.message.as_str());
    assert_eq!(app.listed(TOOL).await["digest"], served["digest"]);
    let outcome = evaluation(&app, TOOL, &scoring(6)).await;
    assert_eq!(
        outcome["level"], "low",
        "the recalibrated tool still serves"
    );
    assert_eq!(outcome["tool"]["digest"], served["digest"]);
}

#[tokio::test]
async fn a_manifest_that_is_not_toml_is_refused_at_its_line_and_column() {
    let broken = manifest(&format!(
        "[overrides.{TOOL}]\nparams = {{ cut_points = {{ medium = }} }}\n"
    ));

    check_broken_plugin(
        &broken,
        &[],
        "plugin.toml",
        At::Position(6, 36),
        "invalid string",
    )
    .await;
}

#[tokio::test]
async fn a_schema_patch_that_is_not_json_is_refused_at_its_line_and_column() {
    let broken = manifest(&format!(
        "[overrides.{TOOL}]\nschema_patch = \"patches/{TOOL}.json\"\n"
    ));
    // A comma is missing after the first property.
    let patch = "{\n  \"properties\": {\n    \"local_ref\": {\"type\": \"string\"}\n    \"other\": {\"type\": \"string\"}\n  }\n}\n";

    check_broken_plugin(
        &broken,
        &[(&format!("patches/{TOOL}.json"), patch)],
        &format!("patches/{TOOL}.json"),
        At::Position(4, 5),
        "not valid JSON: expected `,` or `}`",
    )
    .await;
}

#[tokio::test]
async fn a_schema_patch_that_touches_x_tool_is_refused() {
    let broken = manifest(&format!(
        "[overrides.{TOOL}]\nschema_patch = \"patches/{TOOL}.json\"\n"
    ));
    let patch = json!({"x-tool": {"stage": 3}}).to_string();

    check_broken_plugin(
        &broken,
        &[(&format!("patches/{TOOL}.json"), &patch)],
        &format!("patches/{TOOL}.json"),
        At::File,
        "the schema patch changes `x-tool`",
    )
    .await;
}

#[tokio::test]
async fn a_replacement_script_with_a_syntax_error_is_refused_at_its_line_and_column() {
    let broken = manifest(&format!(
        "[overrides.{TOOL}]\nrules = \"overrides/{TOOL}.rhai\"\n"
    ));
    let script = "fn decide(form, params) {\n    import \"harm-analysis\" as core;\n    let out = ;\n    out\n}\n";

    check_broken_plugin(
        &broken,
        &[(&format!("overrides/{TOOL}.rhai"), script)],
        &format!("overrides/{TOOL}.rhai"),
        At::Position(3, 15),
        "Unexpected ';'",
    )
    .await;
}

#[tokio::test]
async fn a_plugin_file_outside_the_plugin_folder_is_refused_and_not_read() {
    // A file the service can read but the plugin has no business naming: the core schema, two
    // folders up; a script at an absolute path elsewhere.
    let outside = tempfile::tempdir().expect("a temporary folder");
    let script = outside.path().join("rules.rhai");
    std::fs::write(&script, ADDS_A_REASON).expect("write");
    for line in [
        format!("schema_patch = \"../../tool-schemas/{TOOL}.json\""),
        format!("rules = {:?}", script.display().to_string()),
    ] {
        let broken = manifest(&format!("[overrides.{TOOL}]\n{line}\n"));

        check_broken_plugin(
            &broken,
            &[],
            "plugin.toml",
            At::File,
            "must be a path inside the plugin folder",
        )
        .await;
    }
}

#[tokio::test]
async fn a_params_override_of_another_kind_is_refused_naming_the_key() {
    // A list or a text where the core has a number would compare as neither greater nor
    // smaller, and every level would change without a word.
    for (value, said) in [("[7, 8]", "a list ([7,8])"), ("\"7\"", "a text (\"7\")")] {
        let broken = manifest(&format!(
            "[overrides.{TOOL}]\nparams = {{ cut_points = {{ medium = {value} }} }}\n"
        ));

        check_broken_plugin(
            &broken,
            &[],
            "plugin.toml",
            At::File,
            &format!("`params.cut_points.medium` of harm-analysis is a number (6), not {said}"),
        )
        .await;
    }
}

#[tokio::test]
async fn a_params_override_with_an_unknown_key_is_refused_naming_the_key() {
    let broken = manifest(&format!(
        "[overrides.{TOOL}]\nparams = {{ cut_points = {{ meduim = 7 }} }}\n"
    ));

    check_broken_plugin(
        &broken,
        &[],
        "plugin.toml",
        At::File,
        "`params.cut_points.meduim`: harm-analysis has no param \"meduim\"",
    )
    .await;
}

#[tokio::test]
async fn a_replacement_script_importing_a_missing_module_is_refused_naming_it_at_its_line() {
    let broken = manifest(&format!(
        "[overrides.{TOOL}]\nrules = \"overrides/{TOOL}.rhai\"\n"
    ));
    let script = "fn decide(form, params) {\n    import \"no-such-tool\" as core;\n    core::decide(form, params)\n}\n";

    check_broken_plugin(
        &broken,
        &[(&format!("overrides/{TOOL}.rhai"), script)],
        &format!("overrides/{TOOL}.rhai"),
        At::Position(2, 5),
        "imports \"no-such-tool\", which is not a core tool",
    )
    .await;
}

#[tokio::test]
async fn a_replacement_script_importing_a_computed_name_is_refused_at_its_line() {
    // The name is a core tool's, but computed: the version could not record what it loads.
    let broken = manifest(&format!(
        "[overrides.{TOOL}]\nrules = \"overrides/{TOOL}.rhai\"\n"
    ));
    let script = "fn decide(form, params) {\n    let name = \"harm-\" + \"analysis\";\n    import name as core;\n    core::decide(form, params)\n}\n";

    check_broken_plugin(
        &broken,
        &[(&format!("overrides/{TOOL}.rhai"), script)],
        &format!("overrides/{TOOL}.rhai"),
        At::Position(3, 5),
        "an import must name its module as a string literal",
    )
    .await;
}

/// A plugin whose replacement script returns the level `urgent`, which harm-analysis does not
/// declare; `with_case`, with a plugin case that expects `medium`. That case stops it going live
/// (at start or on a reload); deployed without it, only the outcome check stands in its way.
fn undeclared_level_plugin(with_case: bool) -> tempfile::TempDir {
    let root = catalog_copy(false);
    let script = "fn decide(form, params) {\n    import \"harm-analysis\" as core;\n    let out = core::decide(form, params);\n    out.level = \"urgent\";\n    out\n}\n";
    let case = json!({
        "name": "a form the core decides at medium",
        "input": scoring(7),
        "expect": {"level": "medium"}
    });
    write_plugin(
        root.path(),
        PLUGIN,
        &manifest(&format!(
            "[overrides.{TOOL}]\nrules = \"overrides/{TOOL}.rhai\"\n"
        )),
        &[
            (format!("overrides/{TOOL}.rhai").as_str(), script),
            (&format!("cases/{TOOL}/core-medium.json"), &case.to_string()),
        ][..if with_case { 2 } else { 1 }],
    );
    root
}

#[tokio::test]
async fn a_replacement_script_returning_an_undeclared_level_loads_but_its_evaluation_is_a_500() {
    let root = undeclared_level_plugin(false);
    let catalog = Catalog::load(root.path());
    let app = spawn_app_with(root.path()).await;

    let response = app.evaluate(TOOL, &scoring(7)).await;

    assert!(catalog.is_ok(), "the catalog loads: {:?}", catalog.err());
    let body = problem(
        response,
        StatusCode::INTERNAL_SERVER_ERROR,
        "/problems/tool-error",
    )
    .await;
    let detail = body["detail"].as_str().unwrap();
    assert!(
        !detail.contains("urgent"),
        "a 5xx says nothing internal: {body}"
    );
}

#[tokio::test]
async fn a_replacement_script_returning_an_undeclared_level_stores_nothing() {
    let root = undeclared_level_plugin(false);
    let app = spawn_app_with(root.path()).await;

    let response = app
        .submit("case-1", TOOL, &scoring(7), Role::Practitioner)
        .await;

    problem(
        response,
        StatusCode::INTERNAL_SERVER_ERROR,
        "/problems/tool-error",
    )
    .await;
    assert!(app.case_decisions("case-1").await.is_empty());
    let verified = json_of(
        app.get("/v1/audit/verify", Role::Auditor).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(verified["revisions"], 0, "{verified}");
    assert_eq!(verified["head"]["seq"], 0, "{verified}");
}

#[test]
fn a_replacement_script_returning_an_undeclared_level_fails_its_plugin_cases_in_check() {
    let root = undeclared_level_plugin(true);

    let report = check::run(root.path(), Some(TOOL));

    assert!(!report.passed(), "{report}");
    assert!(report.load_errors.is_empty(), "{report}");
    let served = report
        .tool_from(TOOL, &format!("plugin:{PLUGIN}"))
        .expect("the plugin's version is reported");
    assert_eq!(served.failed(), 1, "{report}");
    let failures = served.cases[0].failures.join("; ");
    assert!(failures.contains("urgent"), "{failures}");
    let core = report.tool(TOOL).expect("the core version is reported");
    assert!(core.passed(), "{report}");
}

#[tokio::test]
async fn serve_refuses_to_start_with_a_broken_plugin() {
    let root = catalog_copy(false);
    let folder = write_plugin(
        root.path(),
        PLUGIN,
        &manifest(&format!(
            "[overrides.{TOOL}]\nparams = {{ cut_points = {{ meduim = 7 }} }}\n"
        )),
        &[],
    );
    let data = tempfile::tempdir().unwrap();

    let started = Server::build(&config(data.path(), root.path())).await;

    match started {
        Err(StartError::Catalog(errors)) => {
            let [error] = errors.as_slice() else {
                panic!("expected exactly one problem, got {errors:#?}");
            };
            assert_eq!(error.file, folder.join("plugin.toml"), "{error}");
            assert!(
                error.message.contains("`params.cut_points.meduim`"),
                "{error}"
            );
        }
        Err(other) => panic!("expected a catalog error, got {other}"),
        Ok(_) => panic!("the service started with a broken plugin"),
    }
}

#[tokio::test]
async fn a_plugin_folder_whose_manifest_is_misnamed_is_refused_not_skipped() {
    let root = recalibrated(7);
    let app = spawn_app_with(root.path()).await;
    let served = app.listed(TOOL).await;
    let folder = root.path().join("plugins").join(PLUGIN);
    std::fs::rename(folder.join("plugin.toml"), folder.join("Plugin.toml")).expect("rename");

    let errors = Catalog::load(root.path()).expect_err("the folder is not skipped");
    let response = app.reload().await;

    let [error] = errors.as_slice() else {
        panic!("expected exactly one problem, got {errors:#?}");
    };
    assert_eq!(error.file, folder, "{error}");
    assert!(error.message.contains("without its plugin.toml"), "{error}");
    problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/catalog-invalid",
    )
    .await;
    // The recalibrated version goes on being served, not the core one.
    assert_eq!(app.listed(TOOL).await["digest"], served["digest"]);
}

// Reloading.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_under_concurrent_evaluate_traffic_fails_no_request() {
    let root = recalibrated(7);
    let app = Arc::new(spawn_app_with(root.path()).await);
    let input = scoring(7);
    // Traffic runs for at least 2 s and until the last reload has answered, so every reload
    // happens under load.
    let reloading = Arc::new(AtomicBool::new(true));
    let until = Instant::now() + Duration::from_secs(2);

    let mut traffic = JoinSet::new();
    for _ in 0..8 {
        let app = Arc::clone(&app);
        let input = input.clone();
        let reloading = Arc::clone(&reloading);
        traffic.spawn(async move {
            let mut answers = Vec::new();
            while reloading.load(Ordering::SeqCst) || Instant::now() < until {
                let response = app.evaluate(TOOL, &input).await;
                let status = response.status();
                let body = response.text().await.expect("a body");
                answers.push((status, body));
            }
            answers
        });
    }
    for medium in [8, 7, 8, 7, 8] {
        write_plugin(root.path(), PLUGIN, &medium_at(medium), &[]);
        let reloaded = json_of(app.reload().await, StatusCode::OK).await;
        assert_eq!(reloaded["changed"], json!([TOOL]), "{reloaded}");
    }
    reloading.store(false, Ordering::SeqCst);
    let mut answers = Vec::new();
    while let Some(done) = traffic.join_next().await {
        answers.extend(done.expect("a traffic task does not panic"));
    }

    let levels: BTreeSet<String> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, StatusCode::OK, "{body}");
            let outcome: Value = serde_json::from_str(body).expect("a JSON body");
            outcome["level"].as_str().expect("a level").to_owned()
        })
        .collect();
    assert!(answers.len() >= 8, "only {} requests", answers.len());
    assert!(
        levels.is_subset(&BTreeSet::from(["low".into(), "medium".into()])),
        "{levels:?}"
    );
}

/// Writes the plugin that moves medium to 8, with one case that pins a score of 7 at `level`
/// (it is `low` there, so any other level fails).
fn medium_at_8_pinning_7_at(root: &Path, level: &str) {
    let case = json!({
        "name": format!("a score of 7 is {level} here"),
        "input": scoring(7),
        "expect": {"level": level}
    });
    write_plugin(
        root,
        PLUGIN,
        &medium_at(8),
        &[(&format!("cases/{TOOL}/seven.json"), &case.to_string())],
    );
}

#[test]
fn check_runs_the_cases_of_the_plugin_version_whose_tools_it_read() {
    // Two versions of one plugin, as a deployment might swap them: both move medium to 8; the
    // first pins a score of 7 at low (right for it), the second at medium (wrong for the first).
    let root = catalog_copy(false);
    let versions = tempfile::tempdir().unwrap();
    for (version, level) in [("first", "low"), ("second", "medium")] {
        medium_at_8_pinning_7_at(root.path(), level);
        std::fs::rename(
            root.path().join("plugins").join(PLUGIN),
            versions.path().join(version),
        )
        .unwrap();
    }
    let plugin_cases = |report: &check::Report| {
        assert!(report.case_errors.is_empty(), "{report}");
        cases_run(report, &format!("plugin:{PLUGIN}"))
    };
    let load = || read_whole(root.path());
    let place = root.path().join("plugins").join(PLUGIN);

    // Reached through a link, which moves to the second version after the catalog is read.
    std::os::unix::fs::symlink(versions.path().join("first"), &place).unwrap();
    let served = load();
    assert_eq!(
        plugin_cases(&check::run_against(root.path(), &served)),
        (1, 0)
    );
    std::fs::remove_file(&place).unwrap();
    std::os::unix::fs::symlink(versions.path().join("second"), &place).unwrap();
    // The first version's case ran against the first version's tools, not the second's case.
    assert_eq!(
        plugin_cases(&check::run_against(root.path(), &served)),
        (1, 0)
    );
    // Read afresh, the second version fails its own case.
    assert_eq!(
        plugin_cases(&check::run_against(root.path(), &load())),
        (1, 1)
    );

    // A real folder, moved away and replaced by the other version after the catalog is read.
    std::fs::remove_file(&place).unwrap();
    std::fs::rename(versions.path().join("first"), &place).unwrap();
    let served = load();
    std::fs::rename(&place, versions.path().join("first")).unwrap();
    std::fs::rename(versions.path().join("second"), &place).unwrap();
    assert_eq!(
        plugin_cases(&check::run_against(root.path(), &served)),
        (1, 0)
    );

    // Removed after the catalog is read: its cases cannot be run, and that is said.
    let served = load();
    std::fs::remove_dir_all(&place).unwrap();
    let report = check::run_against(root.path(), &served);
    assert_eq!(report.case_errors.len(), 1, "{report}");
    assert!(
        report.case_errors[0]
            .message
            .contains("removed or replaced while the catalog was read"),
        "{report}"
    );
}

/// The catalog under `root`, read as a reload reads it; it must load without a problem.
fn read_whole(root: &Path) -> Catalog {
    let (catalog, errors) = Catalog::load_partial(root, safeguard::rules::Limits::default());
    assert!(errors.is_empty(), "{errors:?}");
    catalog
}

/// How many cases `check` ran against the version of harm-analysis from `source` (`core` or
/// `plugin:<name>`), and how many of them failed.
fn cases_run(report: &check::Report, source: &str) -> (usize, usize) {
    let version = report
        .tool_from(TOOL, source)
        .unwrap_or_else(|| panic!("no {source} version of {TOOL} in {report}"));
    (version.cases.len(), version.failed())
}

#[test]
fn check_runs_the_core_cases_against_the_core_tools_the_catalog_read() {
    // A plugin changes harm-analysis, so its core version is built beside the served one.
    let root = recalibrated(7);
    let served = read_whole(root.path());
    let core_failures = |report: &check::Report| cases_run(report, "core");
    let (cases, failed) = core_failures(&check::run_against(root.path(), &served));
    assert!(cases > 0);
    assert_eq!(failed, 0);

    // The core rules change on disk after the catalog read them.
    std::fs::write(
        root.path().join("rules").join(format!("{TOOL}.rhai")),
        "fn decide(form, params) { throw \"changed\"; }",
    )
    .unwrap();

    // The core cases still run against the core the catalog read, not against a second reading.
    assert_eq!(
        core_failures(&check::run_against(root.path(), &served)),
        (cases, 0)
    );
    // Read afresh, the changed rules fail every case that expects a decision.
    let (_, failed) = core_failures(&check::run(root.path(), Some(TOOL)));
    assert!(failed > 0);
}

#[test]
fn check_names_a_core_tool_that_does_not_build_once_and_skips_its_cases() {
    let root = catalog_copy(false);
    std::fs::write(
        root.path().join("rules").join(format!("{TOOL}.rhai")),
        "fn decide(form, params) { let = ; }",
    )
    .unwrap();

    let report = check::run(root.path(), None);

    assert!(!report.passed(), "{report}");
    assert!(
        report
            .load_errors
            .iter()
            .any(|e| e.file.ends_with(format!("rules/{TOOL}.rhai"))),
        "{report}"
    );
    // Its cases are not read as cases of a tool the catalog does not have.
    assert!(report.case_errors.is_empty(), "{report}");
    assert!(report.tool(TOOL).is_none(), "{report}");
}

#[tokio::test]
async fn a_reload_whose_own_cases_fail_is_refused_and_the_catalog_in_force_keeps_serving() {
    let root = recalibrated(7);
    let app = spawn_app_with(root.path()).await;
    let input = scoring(7);
    let before = evaluation(&app, TOOL, &input).await;
    medium_at_8_pinning_7_at(root.path(), "medium");

    let body = problem(
        app.reload().await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/catalog-invalid",
    )
    .await;

    let errors = body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{body}");
    assert!(
        errors[0]["path"].as_str().unwrap().ends_with("seven.json"),
        "{body}"
    );
    let message = errors[0]["message"].as_str().unwrap();
    assert!(message.contains("a score of 7 is medium here"), "{message}");
    assert_eq!(
        evaluation(&app, TOOL, &input).await,
        before,
        "the old catalog serves"
    );
    // With the case brought in line, the same plugin goes live.
    medium_at_8_pinning_7_at(root.path(), "low");
    json_of(app.reload().await, StatusCode::OK).await;
    assert_eq!(evaluation(&app, TOOL, &input).await["level"], "low");
}

#[tokio::test]
async fn a_catalog_whose_own_cases_fail_does_not_start_as_a_reload_would_not_put_it_in_force() {
    let root = recalibrated(7);
    medium_at_8_pinning_7_at(root.path(), "medium");
    let data = tempfile::tempdir().unwrap();

    let refused = Server::build(&config(data.path(), root.path())).await;
    let Err(StartError::Cases(broken)) = refused else {
        panic!("a catalog whose case fails must not start");
    };
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert!(broken[0].0.ends_with("seven.json"), "{broken:?}");
    assert!(
        broken[0].1.contains("a score of 7 is medium here"),
        "{broken:?}"
    );
    // Nothing was opened: the data folder is as it was.
    assert_eq!(std::fs::read_dir(data.path()).unwrap().count(), 0);

    // With the case brought in line, the same catalog starts and serves the plugin.
    medium_at_8_pinning_7_at(root.path(), "low");
    let app = spawn_app_with(root.path()).await;
    assert_eq!(evaluation(&app, TOOL, &scoring(7)).await["level"], "low");
}

#[tokio::test]
async fn a_reload_says_how_many_cases_it_ran_and_which_tools_none_checked() {
    let root = catalog_copy(false);
    let app = spawn_app_with(root.path()).await;
    let core_count: usize = std::fs::read_dir(root.path().join("tests/cases"))
        .unwrap()
        .map(|dir| std::fs::read_dir(dir.unwrap().path()).unwrap().count())
        .sum();

    let reloaded = json_of(app.reload().await, StatusCode::OK).await;
    assert_eq!(reloaded["cases_run"], core_count, "{reloaded}");
    assert_eq!(reloaded["untested"], json!([]), "{reloaded}");

    // Deployed without its cases, the catalog goes live unchecked, and the answer says so.
    std::fs::remove_dir_all(root.path().join("tests")).unwrap();
    let reloaded = json_of(app.reload().await, StatusCode::OK).await;
    assert_eq!(reloaded["cases_run"], 0, "{reloaded}");
    let untested = reloaded["untested"].as_array().unwrap();
    assert_eq!(untested.len(), reloaded["tools"].as_array().unwrap().len());
    assert!(untested.contains(&json!(TOOL)), "{reloaded}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_overlapping_reloads_the_files_read_last_are_the_catalog_left_in_force() {
    let root = recalibrated(7);
    // Each version of the plugin is deployed into a folder of its own, and the plugin's name is
    // a link swapped onto it at once (a rename), as a deployment would: a reload reads whole
    // the version its link leads to when it starts.
    let versions = tempfile::tempdir().unwrap();
    let place = root.path().join("plugins").join(PLUGIN);
    let deploy = |version: usize, medium: u32| {
        write_plugin(versions.path(), PLUGIN, &medium_at(medium), &[]);
        let folder = versions.path().join(format!("v{version}"));
        std::fs::rename(versions.path().join("plugins").join(PLUGIN), &folder).unwrap();
        let link = root.path().join("plugins").join(".next");
        std::os::unix::fs::symlink(&folder, &link).unwrap();
        std::fs::rename(&link, &place).unwrap();
    };
    std::fs::remove_dir_all(&place).unwrap();
    deploy(0, 7);
    let app = Arc::new(spawn_app_with(root.path()).await);
    let input = scoring(7);
    // Evaluations keep the CPU busy, so a reload's load takes longer at some moments than at
    // others, and an earlier one can finish after a later one.
    let busy = Arc::new(AtomicBool::new(true));
    let mut traffic = JoinSet::new();
    for _ in 0..6 {
        let (app, input, busy) = (Arc::clone(&app), input.clone(), Arc::clone(&busy));
        traffic.spawn(async move {
            while busy.load(Ordering::SeqCst) {
                app.evaluate(TOOL, &input).await;
            }
        });
    }
    for round in 0..12u64 {
        let version = 2 * round as usize + 1;
        deploy(version, 7);
        let first = {
            let app = Arc::clone(&app);
            tokio::spawn(async move { app.reload().await.status() })
        };
        tokio::time::sleep(Duration::from_millis(round % 4)).await;
        deploy(version + 1, 8);
        let second = app.reload().await.status();
        assert_eq!(first.await.unwrap(), StatusCode::OK, "round {round}");
        assert_eq!(second, StatusCode::OK, "round {round}");

        // Both answered: the files say medium 8, under which a score of 7 is low.
        let outcome = evaluation(&app, TOOL, &input).await;
        assert_eq!(outcome["level"], "low", "round {round}: {outcome}");
    }
    busy.store(false, Ordering::SeqCst);
    while traffic.join_next().await.is_some() {}
}

#[tokio::test]
async fn decisions_before_and_after_a_reload_name_different_digests_and_both_versions_are_kept() {
    let root = recalibrated(7);
    let app = spawn_app_with(root.path()).await;
    let input = scoring(7);
    let before = json_of(
        app.submit("case-1", TOOL, &input, Role::Practitioner).await,
        StatusCode::CREATED,
    )
    .await;

    write_plugin(root.path(), PLUGIN, &medium_at(8), &[]);
    let reloaded = json_of(app.reload().await, StatusCode::OK).await;
    let after = json_of(
        app.submit("case-1", TOOL, &input, Role::Practitioner).await,
        StatusCode::CREATED,
    )
    .await;

    assert_eq!(reloaded["changed"], json!([TOOL]), "{reloaded}");
    assert_eq!(
        (&before["level"], &after["level"]),
        (&json!("medium"), &json!("low"))
    );
    let (old, new) = (&before["tool"]["digest"], &after["tool"]["digest"]);
    assert_ne!(old, new);
    let versions = array_of(
        app.get(&format!("/v1/tools/{TOOL}/versions"), Role::Auditor)
            .await,
    )
    .await;
    let digests: Vec<&Value> = versions.iter().map(|v| &v["digest"]).collect();
    assert_eq!(digests, [old, new], "{versions:#?}");
    for (digest, medium) in [(old, 7), (new, 8)] {
        let path = format!("/v1/tools/{TOOL}/versions/{}", digest.as_str().unwrap());
        let version = json_of(app.get(&path, Role::Auditor).await, StatusCode::OK).await;
        assert_eq!(&version["digest"], digest);
        assert_eq!(version["decisions"], 1, "{version}");
        assert_eq!(
            version["snapshot"]["params"]["cut_points"]["medium"], medium,
            "{version}"
        );
        assert_eq!(
            version["snapshot"]["plugins"][0]["plugin"], PLUGIN,
            "{version}"
        );
    }
}

/// The review interval `GET /v1/tools/{tool}` gives for `level`, in days.
async fn review_days_of(app: &TestApp, tool: &str, level: &str) -> Option<u64> {
    let detail = json_of(
        app.get(&format!("/v1/tools/{tool}"), Role::Practitioner)
            .await,
        StatusCode::OK,
    )
    .await;
    detail["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["level"] == level)
        .unwrap_or_else(|| panic!("no level {level}: {detail}"))["review_after_days"]
        .as_u64()
}

#[tokio::test]
async fn a_review_interval_held_in_a_param_moves_with_the_plugin_s_params() {
    let tool = "plan-stress-test";
    let root = catalog_copy(false);
    let core = spawn_app_with(root.path()).await;
    assert_eq!(review_days_of(&core, tool, "gaps").await, Some(10));
    assert_eq!(review_days_of(&core, tool, "robust").await, None);

    write_plugin(
        root.path(),
        PLUGIN,
        &manifest(&format!(
            "[overrides.{tool}]\nparams = {{ timescales_days = {{ gaps = 14 }} }}\n"
        )),
        &[],
    );
    let local = spawn_app_with(root.path()).await;
    assert_eq!(review_days_of(&local, tool, "gaps").await, Some(14));
    assert_eq!(review_days_of(&local, tool, "fails").await, Some(14));

    // The case journey dates the re-test by it.
    let decision = local.decide_at("case-1", tool, "gaps").await;
    assert_eq!(decision["level"], "gaps");
    let journey = json_of(
        local.get("/v1/cases/case-1", Role::Practitioner).await,
        StatusCode::OK,
    )
    .await;
    let entry = &journey["latest"][tool];
    let at = |t: &Value| chrono::DateTime::parse_from_rfc3339(t.as_str().unwrap()).unwrap();
    let days = (at(&entry["review_due"]) - at(&entry["assessed_at"])).num_seconds() + 1;
    assert_eq!(days.div_euclid(86_400), 14, "{journey}");
}

/// The load errors of a core catalog copy with a plugin of manifest `body`, which must not load.
fn load_errors_with(body: &str) -> Vec<safeguard::catalog::LoadError> {
    let root = catalog_copy(false);
    write_plugin(root.path(), PLUGIN, &manifest(body), &[]);
    Catalog::load(root.path()).expect_err("the plugin must not load")
}

#[test]
fn a_plugin_param_that_leaves_a_review_interval_no_whole_days_is_a_load_error() {
    let errors =
        load_errors_with("[overrides.network-meeting]\nparams = { min_notice_days = 2.5 }\n");

    // One for each level whose interval the param holds.
    let levels: Vec<&str> = errors
        .iter()
        .map(|e| {
            assert!(e.file.ends_with("plugin.toml"), "{e}");
            assert!(e.message.contains(r#"names the param "min_notice_days", which params does not hold as a whole number of days"#), "{e}");
            e.message.split('"').nth(1).unwrap()
        })
        .collect();
    assert_eq!(levels, ["ready-with-actions", "not-ready"], "{errors:#?}");
}

/// The one load error of the catalog under `root`, which must be a link out of the plugin
/// folder at `file` (relative to it).
fn assert_link_out_refused(root: &Path, file: &str) {
    let errors = Catalog::load(root).expect_err("a link out of the plugin folder must not load");
    let folder = root.join("plugins").join(PLUGIN);
    let out: Vec<_> = errors
        .iter()
        .filter(|e| {
            e.message
                .contains("is a link to a file outside the plugin folder")
        })
        .collect();
    assert_eq!(out.len(), 1, "{errors:#?}");
    assert_eq!(out[0].file, folder.join(file), "{errors:#?}");
}

#[test]
fn a_plugin_file_that_links_outside_its_folder_is_refused_and_one_inside_is_read() {
    let root = catalog_copy(false);
    let elsewhere = tempfile::tempdir().unwrap();
    let secret = elsewhere.path().join("secret.json");
    std::fs::write(&secret, r#"{"description": "db_password=hunter2"}"#).unwrap();
    let patch = format!("patches/{TOOL}.json");
    let folder = write_plugin(
        root.path(),
        PLUGIN,
        &manifest(&format!("[overrides.{TOOL}]\nschema_patch = \"{patch}\"\n")),
        &[(
            "patches/real.json",
            r#"{"description": "Our local wording."}"#,
        )],
    );
    std::os::unix::fs::symlink(&secret, folder.join(&patch)).unwrap();

    assert_link_out_refused(root.path(), &patch);

    // A link to a file inside the folder is the plugin's own file.
    std::fs::remove_file(folder.join(&patch)).unwrap();
    std::os::unix::fs::symlink(folder.join("patches/real.json"), folder.join(&patch)).unwrap();
    let catalog = Catalog::load(root.path()).expect("a link inside the folder loads");
    assert_eq!(
        catalog.get(TOOL).unwrap().schema["description"],
        "Our local wording."
    );
}

#[test]
fn a_local_tool_whose_schema_links_outside_the_plugin_folder_is_refused() {
    let root = catalog_copy(false);
    let elsewhere = tempfile::tempdir().unwrap();
    // A whole tool schema outside, which would be served to every role.
    let outside = elsewhere.path().join("linked.json");
    let core = std::fs::read_to_string(root.path().join("tool-schemas/five-cs.json")).unwrap();
    std::fs::write(&outside, core.replace("\"five-cs\"", "\"linked\"")).unwrap();
    let core_rules = std::fs::read_to_string(root.path().join("rules/five-cs.rhai")).unwrap();
    let folder = write_plugin(
        root.path(),
        PLUGIN,
        &manifest("tools = [\"linked\"]\n"),
        &[("rules/linked.rhai", &core_rules)],
    );
    std::fs::create_dir_all(folder.join("tool-schemas")).unwrap();
    std::os::unix::fs::symlink(&outside, folder.join("tool-schemas/linked.json")).unwrap();

    assert_link_out_refused(root.path(), "tool-schemas/linked.json");
}

#[test]
fn a_plugin_param_that_makes_a_review_interval_centuries_long_is_a_load_error() {
    let errors = load_errors_with(
        "[overrides.plan-stress-test]\nparams = { timescales_days = { gaps = 100000000 } }\n",
    );

    // Both levels whose interval the param holds; a review date that far out cannot be computed.
    assert_eq!(errors.len(), 2, "{errors:#?}");
    for e in &errors {
        assert!(
            e.message
                .contains("is 100000000 days; a review interval is at most 36500 days"),
            "{e}"
        );
    }
}

#[test]
fn a_plugin_manifest_that_links_outside_its_folder_is_refused() {
    let root = catalog_copy(false);
    let elsewhere = tempfile::tempdir().unwrap();
    let outside = elsewhere.path().join("plugin.toml");
    std::fs::write(&outside, medium_at(6)).unwrap();
    let folder = root.path().join("plugins").join(PLUGIN);
    std::fs::create_dir_all(&folder).unwrap();
    std::os::unix::fs::symlink(&outside, folder.join("plugin.toml")).unwrap();

    assert_link_out_refused(root.path(), "plugin.toml");
}
