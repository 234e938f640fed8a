//! One loaded tool: its metadata (`x-tool`), compiled form, compiled rules and digest.

use std::path::PathBuf;
use std::sync::Arc;

use rhai::Dynamic;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::forms::Form;
use crate::rules::{EvalError, Outcome, Sandbox, Script};

/// The `x-tool` block of a tool schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolMeta {
    /// The tool id; equal to both file stems.
    pub id: String,
    /// The human version label; the digest is the real version.
    pub version: String,
    /// Where the tool sits in the case journey.
    pub stage: Stage,
    /// The levels the tool may return, least to most serious.
    pub outcomes: Vec<OutcomeDecl>,
    /// Every weight and cut-point the rules use, so an agency can recalibrate without a rewrite.
    #[serde(default = "empty_object")]
    pub params: Value,
    /// Which overrides of the level are allowed.
    #[serde(default, rename = "override", skip_serializing_if = "Option::is_none")]
    pub override_policy: Option<OverridePolicy>,
    /// When a decision made with this tool is due for review, at a level that does not say
    /// otherwise (`OutcomeDecl::review_after_days`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_after_days: Option<ReviewAfter>,
    /// The levels that close a case: while the case's latest assessment is a decision of this
    /// tool at one of them, nothing of the journey is due (no tools, no reviews).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub closes: Vec<String>,
    /// The levels that hold a case at its stage: while a tool of the case's current stage has
    /// its latest decision at one of them (at its level in force), the next stage's tools are
    /// not due. For a level whose response says to put something right and do the tool again
    /// before the case moves on (a plan that failed its stress test is not launched).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holds: Vec<String>,
}

impl ToolMeta {
    /// Whether a decision of this tool at `level` (in force) closes its case.
    pub fn closes_at(&self, level: &str) -> bool {
        self.closes.iter().any(|l| l == level)
    }

    /// Whether a decision of this tool at `level` (in force) holds its case at its stage.
    pub fn holds_at(&self, level: &str) -> bool {
        self.holds.iter().any(|l| l == level)
    }

    /// How many days after its assessment a decision at `level` is due for review: the level's
    /// own interval, else the tool's; `None` when neither sets one.
    pub fn review_after_days(&self, level: &str) -> Option<u32> {
        self.outcomes
            .iter()
            .find(|o| o.level == level)
            .and_then(|o| o.review_after_days.as_ref())
            .or(self.review_after_days.as_ref())
            .and_then(|r| r.days(&self.params))
    }
}

/// A review interval: a number of days, or the name of the param that holds it (a dotted path
/// into `params`, e.g. `"timescales_days.gaps"`), so the interval moves with the timescale the
/// tool's texts give when an agency's plugin recalibrates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ReviewAfter {
    Days(u32),
    Param(String),
}

impl<'de> Deserialize<'de> for ReviewAfter {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Interval;
        impl serde::de::Visitor<'_> for Interval {
            type Value = ReviewAfter;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a whole number of days (e.g. 28) or the name of the param that holds one (e.g. \"timescales_days.review\")",
                )
            }
            fn visit_u64<E: serde::de::Error>(self, days: u64) -> Result<ReviewAfter, E> {
                u32::try_from(days)
                    .map(ReviewAfter::Days)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(days), &self))
            }
            fn visit_str<E: serde::de::Error>(self, path: &str) -> Result<ReviewAfter, E> {
                Ok(ReviewAfter::Param(path.to_owned()))
            }
        }
        deserializer.deserialize_any(Interval)
    }
}

impl ReviewAfter {
    /// The days it stands for under `params`; `None` for a param that is not a whole number of
    /// days from 0 to 4,294,967,295 (a load error, so never for a tool that loaded).
    pub fn days(&self, params: &Value) -> Option<u32> {
        match self {
            ReviewAfter::Days(days) => Some(*days),
            ReviewAfter::Param(path) => path
                .split('.')
                .try_fold(params, |at, key| at.get(key))?
                .as_u64()
                .and_then(|days| u32::try_from(days).ok()),
        }
    }
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// A stage of the case journey: 0 (front door) to 7 (close), or a tool usable at any stage, or
/// one about the organisation rather than a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stage {
    Case(u8),
    Named(NamedStage),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamedStage {
    Any,
    Org,
}

/// A level a tool may return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeDecl {
    pub level: String,
    /// A short human name for the level.
    pub label: String,
    /// What the service response at this level is.
    pub response: String,
    /// When a decision at this level is due for review, in place of the tool's
    /// `review_after_days`: a level whose response asks for the tool to be done again soon (a
    /// plan that failed its stress test is re-tested) says how soon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_after_days: Option<ReviewAfter>,
}

/// Which way, and how far, a practitioner may override a tool's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverridePolicy {
    #[serde(default)]
    pub direction: Direction,
    /// At most this many levels away from the tool's level; unbounded when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Only towards more serious levels.
    Up,
    /// Only towards less serious levels.
    Down,
    #[default]
    Any,
}

/// Where a tool comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolSource {
    Core,
    /// Defined or last changed by this plugin.
    Plugin(String),
}

impl std::fmt::Display for ToolSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ToolSource::Core => f.write_str("core"),
            ToolSource::Plugin(name) => write!(f, "plugin:{name}"),
        }
    }
}

/// A loaded, compiled tool. Immutable: a changed tool is a new `Tool` with a new digest.
#[derive(Debug)]
pub struct Tool {
    pub meta: ToolMeta,
    /// The schema's `title`, or the id when it has none.
    pub title: String,
    /// The effective schema, `x-tool` included.
    pub schema: Value,
    /// The effective rules source.
    pub rules_source: String,
    /// The plugins that changed this tool, in the order they applied (empty for a core tool).
    pub plugin_chain: Vec<Value>,
    pub source: ToolSource,
    /// `sha256:<hex>` of the canonical snapshot: the tool's real version.
    pub digest: String,
    /// Where the schema and rules were read from, for reports.
    pub schema_path: PathBuf,
    pub rules_path: PathBuf,
    pub(crate) form: Form,
    pub(crate) script: Script,
    /// `params` converted once, at load time, rather than on every request.
    pub(crate) params: Dynamic,
    pub(crate) levels: Vec<String>,
    pub(crate) sandbox: Arc<Sandbox>,
    /// See [`Tool::snapshot`].
    pub(crate) snapshot: Arc<Value>,
    /// Sources of the core scripts the rules import, by import path.
    pub(crate) imports: std::collections::BTreeMap<String, String>,
    /// Set once a decision of this tool has run longer than [`SLOW_DECISION`]: see
    /// [`Tool::is_slow`].
    pub(crate) slow: Arc<std::sync::atomic::AtomicBool>,
}

/// How long a decision's script may run before its tool counts as slow (and then use as much
/// CPU time again: a thread kept waiting for a core on a loaded machine is not a slow script):
/// well above what any shipped tool takes (tens of microseconds in a release build, a
/// millisecond or two in a debug one), well below the script time limit (a second).
pub const SLOW_DECISION: std::time::Duration = std::time::Duration::from_millis(20);

impl Tool {
    pub fn id(&self) -> &str {
        &self.meta.id
    }

    /// The declared levels, least to most serious.
    pub fn levels(&self) -> &[String] {
        &self.levels
    }

    /// The position of `level` in the declared order, if it is declared.
    pub fn level_rank(&self, level: &str) -> Option<usize> {
        self.levels.iter().position(|l| l == level)
    }

    /// Whether `input` is a valid form for this tool.
    pub fn is_valid(&self, input: &Value) -> bool {
        self.form.is_valid(input)
    }

    /// Validates `input` against the form and, if it is valid, decides.
    pub fn evaluate(&self, input: &Value) -> Result<Outcome, EvalError> {
        // The boolean check allocates nothing; the full list is built only for an invalid form.
        if !self.form.is_valid(input) {
            return Err(EvalError::InvalidForm(self.form.violations(input)));
        }
        // The script's time alone: a form's validation is bounded by its size, and a large
        // invalid form must not make its tool count as slow.
        let _watch = crate::rules::SlowWatch::start(&self.slow, SLOW_DECISION);
        self.sandbox
            .decide(&self.script, input, &self.params, &self.levels)
    }

    /// Whether a decision of this tool has run longer than [`SLOW_DECISION`] (for some form, a
    /// script can run up to its time limit): set while that script still runs, so requests
    /// that come after it see it at once. A service evaluates a slow tool on a blocking thread,
    /// and any other inline, where handing it to another thread would cost more than the
    /// decision itself (about an eighth of the evaluate requests a second).
    pub fn is_slow(&self) -> bool {
        self.slow.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Everything needed to re-run this exact version later: what the digest is computed over.
    /// Built once, when the tool is built, and shared by every decision that stores it.
    pub fn snapshot(&self) -> Arc<Value> {
        Arc::clone(&self.snapshot)
    }

    /// The content this tool was built from, to build a changed version of it.
    pub(crate) fn parts(&self) -> super::Parts {
        super::Parts {
            schema: self.schema.clone(),
            meta: self.meta.clone(),
            rules_source: self.rules_source.clone(),
            plugin_chain: self.plugin_chain.clone(),
            imports: self.imports.clone(),
            source: self.source.clone(),
            schema_path: self.schema_path.clone(),
            rules_path: self.rules_path.clone(),
            schema_text: None,
        }
    }

    /// The split-out steps of [`Tool::evaluate`], for the benchmark that times each.
    #[doc(hidden)]
    pub fn bench_parts(&self) -> (&Form, &Script, &Dynamic, &Sandbox) {
        (&self.form, &self.script, &self.params, &self.sandbox)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn meta(x_tool: Value) -> Result<ToolMeta, serde_json::Error> {
        serde_json::from_value(x_tool)
    }

    fn x_tool(review: Value, high_review: Value) -> Value {
        json!({
            "id": "t", "version": "1", "stage": 1,
            "review_after_days": review,
            "outcomes": [
                {"level": "low", "label": "Low", "response": "r"},
                {"level": "high", "label": "High", "response": "r", "review_after_days": high_review},
            ],
            "params": {"timescales": {"review": 28, "high": 7}},
        })
    }

    #[test]
    fn a_level_s_interval_replaces_the_tool_s_and_a_param_is_read_from_params() {
        let by_param = meta(x_tool(json!("timescales.review"), json!("timescales.high"))).unwrap();
        assert_eq!(by_param.review_after_days("low"), Some(28));
        assert_eq!(by_param.review_after_days("high"), Some(7));
        let by_number = meta(x_tool(json!(90), json!(3))).unwrap();
        assert_eq!(by_number.review_after_days("low"), Some(90));
        assert_eq!(by_number.review_after_days("high"), Some(3));
        // A level not declared falls back to the tool's.
        assert_eq!(by_number.review_after_days("unknown"), Some(90));
    }

    #[test]
    fn an_interval_that_is_neither_days_nor_a_param_name_is_refused_saying_what_it_takes() {
        for bad in [json!(-3), json!(2.5), json!(true), json!(4_294_967_296u64)] {
            let e = meta(x_tool(bad.clone(), json!(1))).expect_err("refused");
            assert!(
                e.to_string()
                    .contains("a whole number of days (e.g. 28) or the name of the param"),
                "{bad}: {e}"
            );
        }
    }
}
