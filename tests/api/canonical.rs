//! Canonical JSON (RFC 8785) decides every hash and digest the service makes, so the
//! implementation it uses (`canon-json`) is checked against a second, independent one
//! (`serde_json_canonicalizer`): byte for byte on every JSON file the repository ships, on every
//! revision the service stores, and on the values where implementations usually part ways.
//! (They part ways on integers beyond 2^53 - 1, which RFC 8785 leaves out; forms holding one are
//! refused, see `forms::MAX_EXACT_INTEGER`.)

use std::path::Path;

use canon_json::CanonJsonSerialize;
use reqwest::Method;
use safeguard::auth::Role;
use serde_json::{json, Value};

use crate::common::{spawn_app, valid_input};
use crate::repo_root;

fn assert_agree(value: &Value, what: &str) {
    let ours = value.to_canon_json_vec().expect("canonical JSON");
    let theirs = serde_json_canonicalizer::to_vec(value).expect("canonical JSON");
    assert_eq!(
        String::from_utf8_lossy(&ours),
        String::from_utf8_lossy(&theirs),
        "the two implementations disagree on {what}"
    );
}

fn json_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a readable folder") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            if !path.ends_with("target") && !path.ends_with(".git") {
                json_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
}

#[test]
fn both_implementations_agree_on_every_json_file_in_the_repository() {
    let mut files = Vec::new();
    for dir in ["tool-schemas", "tests", "plugins"] {
        json_files(&repo_root().join(dir), &mut files);
    }
    assert!(files.len() > 200, "only {} files found", files.len());
    let mut read = 0;
    for path in files {
        let Ok(value) = serde_json::from_str::<Value>(&std::fs::read_to_string(&path).unwrap())
        else {
            continue; // the broken fixtures
        };
        assert_agree(&value, &path.display().to_string());
        read += 1;
    }
    assert!(read > 200, "only {read} files parsed");
}

#[test]
fn both_implementations_agree_where_implementations_usually_differ() {
    let values = [
        // ES6 number formatting: exponents, the fixed/scientific boundaries, -0, extremes.
        json!([
            1e21,
            1e20,
            1e-7,
            1e-6,
            0.000001234,
            -0.0,
            0.1,
            1.5e300,
            5e-324,
            1.7976931348623157e308,
            123456789012345680000.0,
            4.35,
            0.3,
            100.0,
            -1e-7
        ]),
        // Integers up to the I-JSON limit, 2^53 - 1. Beyond it the implementations differ (one
        // writes the integer, the other the nearest double), which is why forms holding such a
        // number are refused (`forms::MAX_EXACT_INTEGER`).
        json!([
            9007199254740991u64,
            -9007199254740991i64,
            4503599627370497u64,
            0,
            -1
        ]),
        // Escapes: controls, quote, backslash, solidus, DEL, line and paragraph separators.
        json!("\u{0}\u{1}\u{8}\t\n\u{b}\u{c}\r\u{1f}\"\\/\u{7f}\u{2028}\u{2029}é😀"),
        // Keys sorted by UTF-16 code units: U+10000 (D800 DC00) sorts before U+FFFF.
        json!({"\u{ffff}": 1, "\u{10000}": 2, "é": 3, "e": 4, "E": 5, "": 6, "\u{1f}": 7,
               "10": 8, "9": 9, "a\u{0}": 10, "a": 11}),
        // Nesting, empty containers, null and booleans.
        json!({"b": [{"z": null, "a": [[], {}]}], "a": {"y": true, "x": false}}),
    ];
    for value in &values {
        assert_agree(value, &value.to_string());
    }
}

#[tokio::test]
async fn both_implementations_agree_on_every_stored_revision() {
    let app = spawn_app().await;
    let tools = crate::common::array_of(app.get("/v1/tools", Role::Auditor).await).await;
    for tool in &tools {
        let id = tool["id"].as_str().unwrap();
        let response = app
            .submit("case-canonical", id, &valid_input(id), Role::Practitioner)
            .await;
        assert!(
            response.status().is_success(),
            "{id}: {}",
            response.status()
        );
    }
    let export = app
        .request(
            Method::GET,
            "/v1/audit/decisions",
            Some(app.token(Role::Auditor)),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<&str> = export.lines().collect();
    assert_eq!(lines.len(), tools.len());
    for line in lines {
        let mut revision: Value = serde_json::from_str(line).unwrap();
        revision.as_object_mut().unwrap().remove("hash");
        assert_agree(&revision, line);
    }
}
