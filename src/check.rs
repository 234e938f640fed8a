//! `safeguard check`: prove a catalog before it goes live. Loads every tool and plugin, runs every
//! case in `tests/cases/<tool-id>/*.json` and `plugins/<name>/cases/<tool-id>/*.json`, holds every explanation to the plain-language bar, and reports
//! per tool what passed, what failed (with the difference) and what the cases cover.
//!
//! The report is data ([`Report`]) with a `Display` for people, so the CLI prints it and the test
//! suite asserts on it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Number, Value};

use crate::catalog::{Catalog, LoadError, Tool, ToolSource};
use crate::plain;
use crate::rules::{EvalError, Limits, Outcome};

/// Folder of core tool cases under a catalog root.
pub const CASES_DIR: &str = "tests/cases";

/// One case file: an input and what the tool must make of it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub input: Value,
    pub expect: Expect,
}

/// What a case expects. Exactly one of `level` and `invalid`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub level: Option<String>,
    pub score: Option<Number>,
    /// The exact set of flags.
    pub flags: Option<Vec<String>>,
    /// The exact set of reason codes.
    pub reasons: Option<Vec<String>>,
    /// The form is rejected, with a violation at each of these JSON Pointers and no others.
    pub invalid: Option<Vec<String>>,
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    pub file: PathBuf,
    /// Every difference from what was expected; empty when the case passed.
    pub failures: Vec<String>,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// One tool's cases and coverage.
#[derive(Debug, Clone)]
pub struct ToolReport {
    pub id: String,
    /// `core`, or `plugin:<name>` for the version a plugin serves.
    pub source: String,
    pub version: String,
    pub digest: String,
    pub cases: Vec<CaseResult>,
    /// Declared levels, in order, with whether any case's outcome reached them.
    pub levels: Vec<(String, bool)>,
    /// Reason codes and flags that some case's outcome carried.
    pub reasons_reached: BTreeSet<String>,
    pub flags_reached: BTreeSet<String>,
    /// Reason codes written in the rules (as `code: "..."`) that no case reached.
    pub reasons_unreached: BTreeSet<String>,
}

impl ToolReport {
    pub fn failed(&self) -> usize {
        self.cases.iter().filter(|c| !c.passed()).count()
    }

    pub fn levels_unreached(&self) -> Vec<&str> {
        self.levels
            .iter()
            .filter(|(_, reached)| !reached)
            .map(|(l, _)| l.as_str())
            .collect()
    }

    pub fn passed(&self) -> bool {
        self.failed() == 0 && self.levels_unreached().is_empty()
    }
}

/// Everything `check` found.
#[derive(Debug, Clone)]
pub struct Report {
    pub root: PathBuf,
    /// The tool `--tool` asked for, when the catalog has no such tool, and the ones it has.
    pub unknown_tool: Option<(String, Vec<String>)>,
    /// Problems that stop the catalog from loading at all.
    pub load_errors: Vec<LoadError>,
    /// Case files that could not be read or parsed, or that name no tool.
    pub case_errors: Vec<LoadError>,
    pub tools: Vec<ToolReport>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.unknown_tool.is_none()
            && self.load_errors.is_empty()
            && self.case_errors.is_empty()
            && self.tools.iter().all(ToolReport::passed)
    }

    /// What a deploy must not go live with: every case that failed and every case file that
    /// could not be read, as `(where, what)`. Coverage gaps (a level no case reaches) are for
    /// `check` to report, not a reason to refuse a catalog.
    pub fn broken_cases(&self) -> Vec<(String, String)> {
        let failed = self.tools.iter().flat_map(|tool| {
            tool.cases.iter().filter(|c| !c.passed()).map(move |c| {
                (
                    c.file.display().to_string(),
                    format!(
                        "{} [{}]: case {:?} fails: {}",
                        tool.id,
                        tool.source,
                        c.name,
                        c.failures.join("; ")
                    ),
                )
            })
        });
        let unreadable = self
            .case_errors
            .iter()
            .map(|e| (e.location(), e.message.clone()));
        failed.chain(unreadable).collect()
    }

    /// The report of the core version of `id`.
    pub fn tool(&self, id: &str) -> Option<&ToolReport> {
        self.tool_from(id, "core")
    }

    /// The report of `id` as `source` (`core` or `plugin:<name>`) serves it.
    pub fn tool_from(&self, id: &str, source: &str) -> Option<&ToolReport> {
        self.tools.iter().find(|t| t.id == id && t.source == source)
    }
}

/// What the cases say about a catalog about to be put in force, at start or on a reload: it goes
/// live only when `broken` is empty.
#[derive(Debug)]
pub struct Gate {
    /// Every case that failed or could not be read, as `(where, what)`.
    pub broken: Vec<(String, String)>,
    /// How many cases ran.
    pub cases_run: usize,
    /// Tools served with no case to pin what they decide: nothing checked them.
    pub untested: Vec<String>,
}

/// Runs the cases under `root` against `served`, the catalog loaded from it, for a start or a
/// reload to decide whether it may go live.
pub fn gate(root: &Path, served: &Catalog) -> Gate {
    let report = run_against(root, served);
    let cases_run = report.tools.iter().map(|t| t.cases.len()).sum::<usize>();
    // The version served: a plugin's replacement is checked by its own cases, not by the
    // core's, which ran against the core version.
    let untested = served
        .tools()
        .filter(|t| {
            report
                .tool_from(t.id(), &t.source.to_string())
                .is_none_or(|r| r.cases.is_empty())
        })
        .map(|t| t.id().to_owned())
        .collect();
    Gate {
        broken: report.broken_cases(),
        cases_run,
        untested,
    }
}

impl Gate {
    /// Warns, when some tool goes live with no case to check it, that it does.
    pub fn warn_untested(&self) {
        if !self.untested.is_empty() {
            tracing::warn!(
                untested = ?self.untested,
                "tools were put in force with no case to check them: is the tools folder's tests/cases deployed?"
            );
        }
    }
}

/// Checks the catalog under `root`; with `only`, just that tool's cases.
///
/// Core cases pin the core tools as shipped, so they run against the catalog without plugins;
/// plugin cases pin what the agency serves, so they run against the catalog with every plugin
/// applied, for each tool a plugin added or changed.
pub fn run(root: &Path, only: Option<&str>) -> Report {
    let (served, load_errors) = Catalog::load_partial(root, Limits::default());
    run_on(root, only, &served, load_errors)
}

/// The cases under `root` against `served`, a catalog already loaded from it (a reload checks
/// the very catalog it would put in force, not a second reading of the files).
pub fn run_against(root: &Path, served: &Catalog) -> Report {
    run_on(root, None, served, Vec::new())
}

fn run_on(
    root: &Path,
    only: Option<&str>,
    served: &Catalog,
    load_errors: Vec<LoadError>,
) -> Report {
    let mut report = Report {
        root: root.to_owned(),
        unknown_tool: None,
        load_errors,
        case_errors: Vec::new(),
        tools: Vec::new(),
    };
    let core = served.core_only();
    if let Some(id) = only {
        if served.get(id).is_none() && !served.failed_to_load(id) {
            let known = served.tools().map(|t| t.id().to_owned()).collect();
            report.unknown_tool = Some((id.to_owned(), known));
            return report;
        }
    }
    let wanted = |id: &str| only.is_none_or(|only| only == id);

    let core_cases = read_cases(&root.join(CASES_DIR), None, &core, &mut report.case_errors);
    for tool in core.tools().filter(|t| wanted(t.id())) {
        let cases = core_cases
            .get(tool.id())
            .map(Vec::as_slice)
            .unwrap_or_default();
        report.tools.push(check_tool(tool, cases));
    }

    let mut plugin_cases: BTreeMap<String, Vec<(PathBuf, Case)>> = BTreeMap::new();
    for inside in served.plugin_folders() {
        // A plugin's cases are its files too: found through the very folder the catalog read
        // the plugin from, whatever its path names now (a link to it moved, the folder renamed
        // or replaced), so they are the cases of the version whose tools they are run against;
        // and read only from inside it.
        let dir = inside.shown().join("cases");
        if inside.reach(&dir).is_dir() {
            let found = read_cases(&dir, Some(inside), served, &mut report.case_errors);
            for (id, mut more) in found {
                plugin_cases.entry(id).or_default().append(&mut more);
            }
        }
        // Removed since its tools were read (before its cases were, or while): its cases could
        // not all be read, and its tools must not pass for untested.
        report.case_errors.extend(inside.gone_error(&dir));
    }
    for tool in served.tools().filter(|t| wanted(t.id())) {
        if tool.source == ToolSource::Core {
            if plugin_cases.contains_key(tool.id()) {
                report.case_errors.push(error(
                    &root.join(crate::catalog::PLUGINS_DIR),
                    None,
                    format!(
                        "plugin cases for {:?}, which no plugin changes (its core cases pin it)",
                        tool.id()
                    ),
                ));
            }
            continue;
        }
        let cases = plugin_cases
            .get(tool.id())
            .map(Vec::as_slice)
            .unwrap_or_default();
        report.tools.push(check_tool(tool, cases));
    }
    report
}

/// The cases in `dir`, one folder per tool, by tool id. With `confine` (a plugin's folder), they
/// are listed and read through the folder held, and named as `dir` names them.
fn read_cases(
    dir: &Path,
    confine: Option<&crate::catalog::Folder>,
    catalog: &Catalog,
    errors: &mut Vec<LoadError>,
) -> BTreeMap<String, Vec<(PathBuf, Case)>> {
    let mut out: BTreeMap<String, Vec<(PathBuf, Case)>> = BTreeMap::new();
    let reach = |path: &Path| confine.map_or_else(|| path.to_owned(), |f| f.reach(path));
    let tool_dirs = match std::fs::read_dir(reach(dir)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return out,
        Err(e) => {
            errors.push(error(dir, None, format!("cannot read the folder: {e}")));
            return out;
        }
    };
    let mut tool_dirs: Vec<PathBuf> = tool_dirs
        .flatten()
        .map(|e| dir.join(e.file_name()))
        .collect();
    tool_dirs.sort();
    for tool_dir in tool_dirs.into_iter().filter(|p| reach(p).is_dir()) {
        let id = tool_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if catalog.get(&id).is_none() {
            if !catalog.failed_to_load(&id) {
                errors.push(error(
                    &tool_dir,
                    None,
                    format!("cases for {id:?}, which is not a tool in the catalog"),
                ));
            }
            continue;
        }
        let listed = match std::fs::read_dir(reach(&tool_dir)) {
            Ok(entries) => entries,
            Err(e) => {
                errors.push(error(
                    &tool_dir,
                    None,
                    format!("cannot read the folder: {e}"),
                ));
                continue;
            }
        };
        let mut files: Vec<PathBuf> = listed
            .flatten()
            .map(|e| tool_dir.join(e.file_name()))
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("json"))
            .collect();
        files.sort();
        for file in files {
            let text = match crate::catalog::read_text(&file, confine) {
                Ok(text) => text,
                Err(message) => {
                    errors.push(error(&file, None, message));
                    continue;
                }
            };
            match serde_json::from_str::<Case>(&text) {
                Ok(case) => match (&case.expect.level, &case.expect.invalid) {
                    (Some(_), None) | (None, Some(_)) => {
                        out.entry(id.clone()).or_default().push((file, case))
                    }
                    _ => errors.push(error(
                        &file,
                        None,
                        "`expect` needs exactly one of `level` (a decision) and `invalid` (a rejected form)".into(),
                    )),
                },
                Err(e) => errors.push(error(
                    &file,
                    Some((e.line(), e.column())),
                    crate::catalog::serde_message(&e),
                )),
            }
        }
    }
    out
}

fn error(file: &Path, at: Option<(usize, usize)>, message: String) -> LoadError {
    LoadError {
        file: file.to_owned(),
        line: at.map(|a| a.0),
        column: at.map(|a| a.1),
        message,
    }
}

fn check_tool(tool: &Tool, cases: &[(PathBuf, Case)]) -> ToolReport {
    let mut reached_levels = BTreeSet::new();
    let mut reasons_reached = BTreeSet::new();
    let mut flags_reached = BTreeSet::new();
    let mut results = Vec::with_capacity(cases.len());
    for (file, case) in cases {
        let result = tool.evaluate(&case.input);
        if let Ok(outcome) = &result {
            reached_levels.insert(outcome.level.clone());
            reasons_reached.extend(outcome.reasons.iter().map(|r| r.code.clone()));
            flags_reached.extend(outcome.flags.iter().cloned());
        }
        results.push(CaseResult {
            name: case.name.clone(),
            file: file.clone(),
            failures: compare(&case.expect, &result),
        });
    }
    let reasons_unreached = reason_codes_in(&tool.rules_source)
        .into_iter()
        .filter(|code| !reasons_reached.contains(code))
        .collect();
    ToolReport {
        id: tool.id().to_owned(),
        source: tool.source.to_string(),
        version: tool.meta.version.clone(),
        digest: tool.digest.clone(),
        cases: results,
        levels: tool
            .levels()
            .iter()
            .map(|l| (l.clone(), reached_levels.contains(l)))
            .collect(),
        reasons_reached,
        flags_reached,
        reasons_unreached,
    }
}

/// Every difference between what a case expects and what the tool did.
fn compare(expect: &Expect, result: &Result<Outcome, EvalError>) -> Vec<String> {
    let mut failures = Vec::new();
    match (result, &expect.invalid) {
        (Err(EvalError::InvalidForm(violations)), Some(paths)) => {
            let got: BTreeSet<&str> = violations.iter().map(|v| v.path.as_str()).collect();
            let want: BTreeSet<&str> = paths.iter().map(String::as_str).collect();
            if got != want {
                let detail: Vec<String> = violations
                    .iter()
                    .map(|v| format!("{:?}: {}", v.path, v.message))
                    .collect();
                failures.push(format!(
                    "invalid: expected violations at {want:?}, got {}",
                    detail.join("; ")
                ));
            }
        }
        (Err(EvalError::InvalidForm(violations)), None) => {
            for v in violations {
                failures.push(format!(
                    "the form was rejected at {:?}: {}",
                    v.path, v.message
                ));
            }
        }
        (Err(e), _) => failures.push(e.to_string()),
        (Ok(outcome), Some(paths)) => failures.push(format!(
            "expected the form to be rejected at {paths:?}, but it was accepted and decided {:?}",
            outcome.level
        )),
        (Ok(outcome), None) => {
            if let Some(level) = &expect.level {
                if &outcome.level != level {
                    failures.push(format!(
                        "level: expected {level:?}, got {:?}",
                        outcome.level
                    ));
                }
            }
            if let Some(score) = &expect.score {
                let same = outcome
                    .score
                    .as_ref()
                    .is_some_and(|s| s.as_f64() == score.as_f64());
                if !same {
                    let got = outcome
                        .score
                        .as_ref()
                        .map_or("no score".to_owned(), ToString::to_string);
                    failures.push(format!("score: expected {score}, got {got}"));
                }
            }
            if let Some(flags) = &expect.flags {
                set_difference("flags", flags, outcome.flags.iter(), &mut failures);
            }
            if let Some(codes) = &expect.reasons {
                set_difference(
                    "reasons",
                    codes,
                    outcome.reasons.iter().map(|r| &r.code),
                    &mut failures,
                );
            }
            for problem in plain::problems(&outcome.explanation, &plain::Bar::default()) {
                failures.push(format!("explanation: {problem}"));
            }
        }
    }
    failures
}

fn set_difference<'a>(
    what: &str,
    want: &[String],
    got: impl Iterator<Item = &'a String>,
    failures: &mut Vec<String>,
) {
    let want: BTreeSet<&str> = want.iter().map(String::as_str).collect();
    let got: BTreeSet<&str> = got.map(String::as_str).collect();
    let missing: Vec<&str> = want.difference(&got).copied().collect();
    let extra: Vec<&str> = got.difference(&want).copied().collect();
    if !missing.is_empty() || !extra.is_empty() {
        failures.push(format!("{what}: missing {missing:?}, unexpected {extra:?}"));
    }
}

/// The reason codes a script writes literally (`code: "XX-YY"`): what coverage is measured
/// against. A code built at run time is not seen; that only makes coverage look lower.
fn reason_codes_in(source: &str) -> BTreeSet<String> {
    let mut codes = BTreeSet::new();
    let mut rest = source;
    while let Some(i) = rest.find("code") {
        rest = &rest[i + 4..];
        let after = rest.trim_start();
        let Some(after) = after.strip_prefix(':') else {
            continue;
        };
        let after = after.trim_start();
        if let Some(literal) = after.strip_prefix('"') {
            if let Some(end) = literal.find('"') {
                codes.insert(literal[..end].to_owned());
            }
        }
    }
    codes
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "safeguard check {}", self.root.display())?;
        if let Some((id, known)) = &self.unknown_tool {
            writeln!(
                f,
                "\nthere is no tool {id:?} in this catalog (its tools: {})",
                known.join(", ")
            )?;
        }
        if !self.load_errors.is_empty() {
            writeln!(
                f,
                "\nthe catalog does not load ({} problem(s)); it would not be served:",
                self.load_errors.len()
            )?;
            for e in &self.load_errors {
                writeln!(f, "  {e}")?;
            }
        }
        for e in &self.case_errors {
            writeln!(f, "  case file: {e}")?;
        }
        for t in &self.tools {
            let passed = t.cases.len() - t.failed();
            let digest_short = t.digest.get(..19).unwrap_or(&t.digest);
            writeln!(
                f,
                "\n{} {} {} [{}] ({digest_short}...)  {passed}/{} cases passed",
                if t.passed() { "ok  " } else { "FAIL" },
                t.id,
                t.version,
                t.source,
                t.cases.len()
            )?;
            let levels: Vec<String> = t
                .levels
                .iter()
                .map(|(l, reached)| {
                    if *reached {
                        l.clone()
                    } else {
                        format!("{l} (NOT REACHED)")
                    }
                })
                .collect();
            writeln!(f, "     levels:  {}", levels.join(", "))?;
            writeln!(
                f,
                "     reasons: {} reached{}",
                t.reasons_reached.len(),
                if t.reasons_unreached.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; in the rules but reached by no case: {}",
                        t.reasons_unreached
                            .iter()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            )?;
            if !t.flags_reached.is_empty() {
                let flags: Vec<&str> = t.flags_reached.iter().map(String::as_str).collect();
                writeln!(f, "     flags:   {}", flags.join(", "))?;
            }
            for c in t.cases.iter().filter(|c| !c.passed()) {
                writeln!(f, "     FAIL {:?} ({})", c.name, c.file.display())?;
                for failure in &c.failures {
                    writeln!(f, "          {failure}")?;
                }
            }
        }
        let cases: usize = self.tools.iter().map(|t| t.cases.len()).sum();
        let failed: usize = self.tools.iter().map(ToolReport::failed).sum();
        let unreached: usize = self.tools.iter().map(|t| t.levels_unreached().len()).sum();
        writeln!(
            f,
            "\n{} tool(s), {cases} case(s): {} passed, {failed} failed; {unreached} declared level(s) reached by no case; {} load problem(s); {} case file problem(s)",
            self.tools.len(),
            cases - failed,
            self.load_errors.len(),
            self.case_errors.len()
        )?;
        writeln!(f, "{}", if self.passed() { "PASSED" } else { "FAILED" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_are_read_from_the_rules_text() {
        let codes = reason_codes_in(
            r#"reasons.push(#{code: "HA-SEV", text: "x", points: 1}); #{ code :"B" }"#,
        );
        assert_eq!(codes.into_iter().collect::<Vec<_>>(), vec!["B", "HA-SEV"]);
    }

    #[test]
    fn a_wrong_level_is_reported_with_both_values() {
        let expect = Expect {
            level: Some("high".into()),
            ..Expect::default()
        };
        let outcome = Outcome {
            level: "low".into(),
            score: None,
            recommendation: "r".into(),
            explanation: "We will talk with you soon.".into(),
            reasons: vec![],
            flags: vec![],
        };
        let failures = compare(&expect, &Ok(outcome));
        assert_eq!(failures, vec![r#"level: expected "high", got "low""#]);
    }
}
