//! `safeguard check` as a tool owner runs it: the real binary, its exit code and what it prints.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use safeguard::check::CASES_DIR;
use serde_json::json;

use crate::{broken_root, copy_tool, hostile_root};

/// Runs the `safeguard` binary with `args` and returns its exit status and output.
fn safeguard<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_safeguard"))
        .args(args)
        .output()
        .expect("the safeguard binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("the report is UTF-8")
}

/// Asserts that `check` failed: exit code 1 and a report that ends in `FAILED`.
fn assert_check_failed(output: &Output) {
    let text = stdout(output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.trim_end().ends_with("FAILED"), "{text}");
}

#[test]
fn check_of_a_rules_syntax_error_fails_and_prints_file_line_column_and_reason() {
    let root = broken_root("rhai-syntax");

    let output = safeguard([OsStr::new("check"), root.as_os_str()]);

    assert_check_failed(&output);
    let location = format!("{}:3:34: ", root.join("rules/rhai-syntax.rhai").display());
    let text = stdout(&output);
    assert!(
        text.contains(&format!("{location}Syntax error: Unexpected ';'")),
        "expected {location:?} and the reason in:\n{text}"
    );
}

#[test]
fn check_of_a_json_syntax_error_fails_and_prints_file_line_column_and_reason() {
    let root = broken_root("json-syntax");

    let output = safeguard([OsStr::new("check"), root.as_os_str()]);

    assert_check_failed(&output);
    let location = format!(
        "{}:5:3: ",
        root.join("tool-schemas/json-syntax.json").display()
    );
    let text = stdout(&output);
    assert!(
        text.contains(&format!("{location}not valid JSON")),
        "expected {location:?} and the reason in:\n{text}"
    );
    assert!(text.contains("1 load problem(s)"), "{text}");
}

#[test]
fn check_of_a_failing_case_fails_and_prints_the_difference() {
    let output = safeguard([OsStr::new("check"), broken_root("failing-case").as_os_str()]);

    assert_check_failed(&output);
    let text = stdout(&output);
    assert!(text.contains("FAIL failing-case"), "{text}");
    assert!(
        text.contains(r#"level: expected "low", got "high""#),
        "{text}"
    );
}

#[test]
fn check_of_the_hostile_catalog_fails_because_it_has_no_cases_to_reach_any_level() {
    // Every hostile script compiles, so the catalog loads; but with no cases no declared level
    // is reached, and a tool is not done until every level is.
    let output = safeguard([OsStr::new("check"), hostile_root().as_os_str()]);

    assert_check_failed(&output);
    let text = stdout(&output);
    assert!(text.contains("0 load problem(s)"), "{text}");
    assert!(
        text.contains("8 tool(s), 0 case(s)")
            && text.contains("16 declared level(s) reached by no case"),
        "{text}"
    );
}

#[test]
fn check_with_tool_reports_only_that_tool() {
    let output = safeguard([
        OsStr::new("check"),
        OsStr::new("--tool"),
        OsStr::new("well-behaved"),
        hostile_root().as_os_str(),
    ]);

    assert_check_failed(&output);
    let text = stdout(&output);
    assert!(text.contains("FAIL well-behaved 1.0.0"), "{text}");
    assert!(
        text.contains("low (NOT REACHED), high (NOT REACHED)"),
        "{text}"
    );
    assert!(!text.contains("endless-loop"), "{text}");
    assert!(text.contains("1 tool(s), 0 case(s)"), "{text}");
}

#[test]
fn check_with_an_unknown_tool_fails_and_says_there_is_no_such_tool() {
    let output = safeguard([
        OsStr::new("check"),
        OsStr::new("--tool"),
        OsStr::new("no-such-tool"),
        hostile_root().as_os_str(),
    ]);

    assert_check_failed(&output);
    let said = stdout(&output);
    assert!(
        said.contains(r#"there is no tool "no-such-tool" in this catalog (its tools: bad-sum,"#),
        "{said}"
    );
    assert!(!said.contains("does not load"), "the catalog loads: {said}");
}

#[test]
fn check_of_a_folder_without_tools_fails_instead_of_passing_nothing() {
    let empty = tempfile::tempdir().expect("a temp folder");
    for dir in [empty.path().to_owned(), empty.path().join("missing")] {
        let output = safeguard([OsStr::new("check"), dir.as_os_str()]);

        assert_check_failed(&output);
        assert!(
            stdout(&output).contains("no tool here"),
            "{}",
            stdout(&output)
        );
    }
}

#[test]
fn check_without_a_folder_checks_the_configured_tools_dir() {
    let elsewhere = tempfile::tempdir().expect("a temp folder");
    let output = Command::new(env!("CARGO_BIN_EXE_safeguard"))
        .arg("check")
        .env("SAFEGUARD_TOOLS_DIR", hostile_root())
        .current_dir(elsewhere.path())
        .output()
        .expect("the safeguard binary runs");

    // The hostile fixture has no cases, so its check fails; but it is the catalog checked.
    let said = stdout(&output);
    assert!(
        said.starts_with(&format!("safeguard check {}", hostile_root().display())),
        "{said}"
    );
    assert!(said.contains("endless-loop"), "{said}");
}

#[test]
fn a_case_file_that_is_not_json_is_reported_once_at_its_line_and_column() {
    let root = copy_tool(crate::repo_root(), "threshold");
    write_case(root.path(), "threshold", "broken.json", json!({}));
    let broken = root.path().join(CASES_DIR).join("threshold/broken.json");
    fs::write(&broken, "{\n  oops\n}\n").unwrap();

    let output = safeguard([OsStr::new("check"), root.path().as_os_str()]);

    assert_check_failed(&output);
    let said = stdout(&output);
    let line = said
        .lines()
        .find(|l| l.contains("broken.json"))
        .unwrap_or_else(|| panic!("no line for the case file: {said}"));
    assert!(
        line.contains("broken.json:2:3: key must be a string"),
        "{line}"
    );
    assert!(!line.contains("at line"), "the place is said once: {line}");
}

/// Writes a case for `id` under the catalog at `root`.
fn write_case(root: &Path, id: &str, file: &str, case: serde_json::Value) {
    let dir = root.join(CASES_DIR).join(id);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(file), serde_json::to_string_pretty(&case).unwrap()).unwrap();
}

#[test]
fn check_exits_zero_when_every_case_passes_and_every_level_is_reached() {
    let dir = copy_tool(&hostile_root(), "well-behaved");
    write_case(
        dir.path(),
        "well-behaved",
        "two-concerns-just-below-the-cut-is-low.json",
        json!({
            "name": "two concerns, just below the cut, is low",
            "input": {"concerns": 2, "child_view": "feels-safe"},
            "expect": {"level": "low", "score": 4, "flags": [], "reasons": ["WB-CONCERNS"]}
        }),
    );
    write_case(
        dir.path(),
        "well-behaved",
        "three-concerns-at-the-cut-is-high.json",
        json!({
            "name": "three concerns, exactly at the cut, is high",
            "input": {"concerns": 3},
            "expect": {"level": "high", "score": 6, "flags": ["child-voice-missing"]}
        }),
    );

    let output = safeguard([
        OsStr::new("check"),
        OsStr::new("--tool"),
        OsStr::new("well-behaved"),
        dir.path().as_os_str(),
    ]);

    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("ok   well-behaved 1.0.0"), "{text}");
    assert!(text.contains("2/2 cases passed"), "{text}");
    assert!(text.trim_end().ends_with("PASSED"), "{text}");
}

/// Runs `safeguard` with `args` over the store in `data`, from the repository's own catalog.
fn safeguard_on(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_safeguard"))
        .args(args)
        .env("SAFEGUARD_DATA_DIR", data)
        .output()
        .expect("the safeguard binary runs")
}

/// A store filled by `demo-data` with 24 `threshold` decisions (seed 3).
fn threshold_demo_store() -> tempfile::TempDir {
    let data = tempfile::tempdir().expect("a temp folder");
    let filled = safeguard_on(
        data.path(),
        &[
            "demo-data",
            "--count",
            "24",
            "--seed",
            "3",
            "--tool",
            "threshold",
        ],
    );
    assert!(filled.status.success(), "{filled:?}");
    assert!(
        stdout(&filled).starts_with("24 decision(s), "),
        "{}",
        stdout(&filled)
    );
    data
}

#[test]
fn demo_data_for_one_tool_fills_a_store_that_verifies_and_exports_only_that_tool() {
    let data = threshold_demo_store();

    let verified = safeguard_on(data.path(), &["verify"]);
    assert!(verified.status.success(), "{verified:?}");
    let exported = safeguard_on(data.path(), &["export"]);
    assert!(exported.status.success(), "{exported:?}");
    let lines: Vec<serde_json::Value> = stdout(&exported)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let submitted = lines.iter().filter(|l| l["kind"] == "submitted").count();
    assert_eq!(submitted, 24);
    assert!(lines.iter().all(|l| l["tool"]["id"] == "threshold"));
}

#[test]
fn the_data_folder_and_an_export_file_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().expect("a temp folder");
    let data = root.path().join("new");
    let filled = safeguard_on(
        &data,
        &["demo-data", "--count", "24", "--tool", "threshold"],
    );
    assert!(filled.status.success(), "{filled:?}");
    let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode(&data),
        0o700,
        "the data folder holds children's records"
    );

    // A file already there, open to everyone, is made private too.
    let out = root.path().join("export.jsonl");
    fs::write(&out, "old").unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o644)).unwrap();
    let exported = safeguard_on(&data, &["export", "--out", out.to_str().unwrap()]);
    assert!(exported.status.success(), "{exported:?}");
    assert_eq!(mode(&out), 0o600);
    assert!(fs::read_to_string(&out).unwrap().lines().count() >= 24);

    // A link is not followed: the file it names keeps its content and its mode.
    let victim = root.path().join("victim.txt");
    fs::write(&victim, "someone else's").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
    let link = root.path().join("link.jsonl");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let refused = safeguard_on(&data, &["export", "--out", link.to_str().unwrap()]);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("is a symbolic link"),
        "{refused:?}"
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), "someone else's");
    assert_eq!(mode(&victim), 0o644);
}

#[test]
fn the_configuration_file_can_be_named_by_its_variable() {
    let root = tempfile::tempdir().expect("a temp folder");
    let data = root.path().join("from-the-file");
    let file = root.path().join("site.toml");
    fs::write(
        &file,
        format!("data_dir = {:?}\n", data.display().to_string()),
    )
    .expect("write");

    let created = Command::new(env!("CARGO_BIN_EXE_safeguard"))
        .args(["token", "create", "--role", "auditor", "--subject", "ann"])
        .env(safeguard::config::FILE_VARIABLE, &file)
        .env_remove("SAFEGUARD_DATA_DIR")
        .current_dir(root.path())
        .output()
        .expect("the safeguard binary runs");

    assert!(created.status.success(), "{created:?}");
    // The store is where the file says, read back with the file named by `--config`.
    let listed = Command::new(env!("CARGO_BIN_EXE_safeguard"))
        .args(["token", "list", "--config"])
        .arg(&file)
        .env_remove(safeguard::config::FILE_VARIABLE)
        .env_remove("SAFEGUARD_DATA_DIR")
        .current_dir(root.path())
        .output()
        .expect("the safeguard binary runs");
    assert!(listed.status.success(), "{listed:?}");
    assert_eq!(token_line(&stdout(&listed), "ann")[1], "auditor");
}

#[test]
fn replay_reproduces_the_stored_decisions_and_shows_what_a_candidate_would_change() {
    let data = threshold_demo_store();
    let report = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["replay", "--tool", "threshold", "--json"];
        all.extend_from_slice(args);
        let output = safeguard_on(data.path(), &all);
        assert!(output.status.success(), "{output:?}");
        serde_json::from_str(&stdout(&output)).expect("a JSON report")
    };

    let recorded = report(&[]);
    assert_eq!(
        (
            &recorded["considered"],
            &recorded["unchanged"],
            &recorded["irreproducible"]
        ),
        (&json!(24), &json!(24), &json!(0)),
        "{recorded}"
    );

    // Early help from a score of 0: every universal decision moves up, and nothing else does.
    let candidate = data.path().join("params.json");
    fs::write(&candidate, r#"{"cut_points": {"early_help": 0}}"#).expect("write");
    let changed = report(&["--params", candidate.to_str().unwrap()]);
    let universal = recorded["matrix"][0][0].as_u64().unwrap();
    assert!(
        universal > 0,
        "the demo data has universal decisions: {recorded}"
    );
    assert_eq!(changed["changed"], json!(universal), "{changed}");
    assert_eq!(changed["matrix"][0][1], json!(universal), "{changed}");
    assert_eq!(
        changed["changes"].as_array().unwrap().len() as u64,
        universal
    );

    // Against a stored version (here the one that made them all), named once.
    let exported = safeguard_on(data.path(), &["export"]);
    let first: serde_json::Value =
        serde_json::from_str(stdout(&exported).lines().next().expect("a line")).unwrap();
    let digest = first["tool"]["digest"].as_str().unwrap();
    let text = safeguard_on(
        data.path(),
        &["replay", "--tool", "threshold", "--version", digest],
    );
    assert!(text.status.success(), "{text:?}");
    let heading = stdout(&text).lines().next().unwrap_or_default().to_owned();
    assert_eq!(
        heading,
        format!("replay of threshold against version {digest}")
    );
    // A base with no candidate to apply to it is a usage error, not ignored.
    let base = safeguard_on(
        data.path(),
        &["replay", "--tool", "threshold", "--base", digest],
    );
    assert_eq!(base.status.code(), Some(2), "{base:?}");

    // A candidate that does not load is refused, saying why.
    fs::write(&candidate, r#"{"cut_points": {"nope": 0}}"#).expect("write");
    let refused = safeguard_on(
        data.path(),
        &[
            "replay",
            "--tool",
            "threshold",
            "--params",
            candidate.to_str().unwrap(),
        ],
    );
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("the candidate does not load") && said.contains("nope"),
        "{said}"
    );
}

#[test]
fn commands_that_read_a_store_refuse_a_folder_that_holds_none_and_create_nothing() {
    let root = tempfile::tempdir().expect("a temp folder");
    let missing = root.path().join("dta");

    for args in [
        &["verify"][..],
        &["export"],
        &["replay", "--tool", "threshold"],
        &["token", "list"],
        &["token", "revoke", "0123456789ab"],
    ] {
        let output = safeguard_on(&missing, args);

        assert_eq!(output.status.code(), Some(1), "{args:?}: {output:?}");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(
            said.contains("there is no store in") && said.contains("dta"),
            "{args:?}: {said}"
        );
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
    }
}

#[test]
fn demo_data_for_an_unknown_tool_fails_and_names_it() {
    let data = tempfile::tempdir().expect("a temp folder");

    let output = safeguard_on(
        data.path(),
        &["demo-data", "--count", "5", "--tool", "nope"],
    );

    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("nope"), "{said}");
}

/// The line of `token list` for `subject`, split into its columns.
fn token_line(listing: &str, subject: &str) -> Vec<String> {
    listing
        .lines()
        .map(|line| {
            line.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .find(|columns| columns.get(3).map(String::as_str) == Some(subject))
        .unwrap_or_else(|| panic!("no line for {subject} in:\n{listing}"))
}

#[tokio::test]
async fn a_revoked_token_stays_listed_and_is_refused_after_a_restart() {
    use reqwest::StatusCode;
    use safeguard::auth::Role;

    let mut app = crate::common::spawn_app().await;
    app.stop().await;
    let data = app.data_dir().to_owned();

    let listed = safeguard_on(&data, &["token", "list"]);
    assert!(listed.status.success(), "{listed:?}");
    let listing = stdout(&listed);
    for role in Role::ALL {
        let columns = token_line(&listing, crate::common::subject(role));
        assert_eq!(columns[1], role.as_str(), "{listing}");
        assert_eq!(columns[4], "-", "not revoked yet:\n{listing}");
        // Only a hash is stored, so no token can be shown.
        assert!(!listing.contains(app.token(role)), "{listing}");
    }
    let practitioner = token_line(&listing, "pat-practitioner")[0].clone();
    assert_eq!(practitioner.len(), 12, "{listing}");

    let revoked = safeguard_on(&data, &["token", "revoke", &practitioner]);
    assert!(revoked.status.success(), "{revoked:?}");
    assert!(
        stdout(&revoked).contains(&format!("revoked {practitioner}")),
        "{revoked:?}"
    );
    let listing = stdout(&safeguard_on(&data, &["token", "list"]));
    assert_ne!(
        token_line(&listing, "pat-practitioner")[4],
        "-",
        "{listing}"
    );
    assert_eq!(token_line(&listing, "ari-auditor")[4], "-", "{listing}");

    for (id, says) in [
        (practitioner.as_str(), "already revoked"),
        ("0000000000zz", "no token has the id"),
    ] {
        let refused = safeguard_on(&data, &["token", "revoke", id]);
        assert_eq!(refused.status.code(), Some(1), "{refused:?}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains(says), "{id}: {stderr}");
    }

    let app = app.restart().await;
    assert_eq!(
        app.get("/v1/tools", Role::Practitioner).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/v1/tools", Role::Auditor).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_store_whose_tokens_were_all_revoked_gets_no_new_admin_token() {
    let mut app = crate::common::spawn_app().await;
    app.stop().await;
    let data = app.data_dir().to_owned();
    let listing = stdout(&safeguard_on(&data, &["token", "list"]));
    let ids: Vec<&str> = listing
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    // One a role and a second supervisor (the test service shows no first admin token, so
    // none was kept).
    assert_eq!(ids.len(), 5, "{listing}");
    for id in ids {
        let revoked = safeguard_on(&data, &["token", "revoke", id]);
        assert!(revoked.status.success(), "{revoked:?}");
    }

    let config = crate::common::config(&data, Path::new(env!("CARGO_MANIFEST_DIR")));
    let server = safeguard::server::Server::build(&config).await.unwrap();
    assert!(
        server.first_admin_token().is_none(),
        "only a store that never had a token gets one made"
    );
}

#[test]
fn token_list_says_which_subjects_todays_rules_refuse() {
    let data = tempfile::tempdir().unwrap();
    let created = safeguard_on(
        data.path(),
        &[
            "token",
            "create",
            "--role",
            "auditor",
            "--subject",
            "Zo\u{eb}",
        ],
    );
    assert!(created.status.success(), "{created:?}");
    // A token from before subjects had to be in NFKC: "Zoë" written decomposed.
    let (_, mut old) = safeguard::auth::issue(safeguard::auth::Role::Supervisor, "Zoe");
    old.subject = "Zoe\u{308}".into();

    let flagged = warnings_of_token_list_with(data.path(), &old);

    assert_eq!(flagged.len(), 1, "{flagged:?}");
    assert!(flagged[0].contains(old.id()), "{flagged:?}");
    assert!(flagged[0].contains("NFKC"), "{flagged:?}");
}

/// Stores `record` as a token from before today's subject rules would have let it be made, then
/// runs `token list`: the warning lines it prints.
fn warnings_of_token_list_with(data: &Path, record: &safeguard::auth::TokenRecord) -> Vec<String> {
    use safeguard::store::Store;
    {
        let store = safeguard::store::SledStore::open_existing(data, Default::default()).unwrap();
        store.put_token(record).unwrap();
    }
    let listed = safeguard_on(data, &["token", "list"]);
    assert!(listed.status.success(), "{listed:?}");
    String::from_utf8_lossy(&listed.stderr)
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn token_create_refuses_a_subject_that_looks_like_one_on_record_and_list_names_old_ones() {
    let data = tempfile::tempdir().unwrap();
    let create = |subject: &str| {
        safeguard_on(
            data.path(),
            &[
                "token",
                "create",
                "--role",
                "supervisor",
                "--subject",
                subject,
            ],
        )
    };
    assert!(create("Arnie").status.success());

    // "Amie": "rn" reads as "m".
    let refused = create("Amie");

    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        refused.stdout.is_empty(),
        "no token is printed: {refused:?}"
    );
    let why = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(why.contains("looks the same as \"Arnie\""), "{why}");
    assert!(
        create("Arnie").status.success(),
        "the same subject is the same person"
    );

    // A look-alike stored before the rule: `token list` names it, and not the first "Arnie".
    // Made after both "Arnie" tokens, so it is the later of each pair.
    let old = safeguard::auth::TokenRecord {
        created_at: "2100-01-01T00:00:00Z".into(),
        ..safeguard::auth::issue(safeguard::auth::Role::Supervisor, "Amie").1
    };
    let flagged = warnings_of_token_list_with(data.path(), &old);
    assert_eq!(flagged.len(), 1, "{flagged:?}");
    assert!(flagged[0].contains(old.id()), "{flagged:?}");
    assert!(flagged[0].contains("looks the same"), "{flagged:?}");
    // The first of the pair still takes new tokens, and the later one's subject still does not.
    assert!(create("Arnie").status.success());
    assert!(!create("Amie").status.success());
    assert!(
        !create("ARNIE").status.success(),
        "another case looks the same"
    );
}
