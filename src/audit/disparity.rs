//! Disparity audit (`POST /v1/audit/disparity`): how one tool's outcomes and overrides fall
//! across the values of one form field (ethnicity, disability, sex, ...). Practice guidance asks
//! practitioners to be "mindful of negative stereotypes when making decisions which might lead to
//! false assumptions" (seed 004); this is how a quality team checks whether the tool's levels, or
//! the overrides people make of them, land more heavily on some groups than on others. Every
//! group is shown with its count and a 95% Wilson score interval, small groups are marked rather
//! than hidden, and each rate is set against the same rate over every decision, so a difference
//! can be weighed against the uncertainty of a small sample. The figures show association, not
//! cause: they say where to look, not what happened.
//!
//! The aggregation is one pass over the latest revision of each decision; memory grows with the
//! number of distinct field values and levels, never with the number of decisions.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::Revision;

/// The normal quantile for a two-sided 95% interval.
pub const Z_95: f64 = 1.96;

/// Groups with fewer decisions than this are marked `small`: shown, never hidden.
pub const SMALL_GROUP: u64 = 10;

/// What to compare: one tool's decisions, grouped by the value of one form field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisparityRequest {
    /// The tool whose decisions are compared.
    #[schema(pattern = r"\S")]
    pub tool: String,
    /// JSON Pointer into the form, e.g. "/ethnicity"
    #[schema(pattern = "^/")]
    pub field: String,
    /// RFC 3339; only decisions whose latest revision was recorded at or after this instant.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub from: Option<String>,
    /// RFC 3339; only decisions whose latest revision was recorded before this instant
    /// (exclusive, so consecutive periods do not overlap).
    #[serde(default)]
    #[schema(format = DateTime)]
    pub to: Option<String>,
}

impl DisparityRequest {
    /// Checks the field pointer and the time bounds, naming each problem by its JSON Pointer in
    /// the request (for a problem+json list of `{path, message}`). [`disparity`] itself never
    /// fails: a bound that does not parse matches no decision.
    pub fn validate(&self) -> Result<(), Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        if self.tool.trim().is_empty() {
            problems.push((
                "/tool",
                "name the tool whose decisions to compare".to_owned(),
            ));
        }
        if !self.field.starts_with('/') {
            problems.push((
                "/field",
                format!(
                    "{:?} is not a JSON Pointer to a form field: it must start with \"/\", e.g. \"/ethnicity\"",
                    self.field
                ),
            ));
        }
        let from = check_bound(&self.from, "/from", &mut problems);
        let to = check_bound(&self.to, "/to", &mut problems);
        if let (Some(from), Some(to)) = (from, to) {
            if from > to {
                problems.push(("/to", "`to` is before `from`".to_owned()));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

fn check_bound(
    bound: &Option<String>,
    path: &'static str,
    problems: &mut Vec<(&'static str, String)>,
) -> Option<DateTime<Utc>> {
    let text = bound.as_deref()?;
    match parse_time(text) {
        Some(t) => Some(t),
        None => {
            problems.push((
                path,
                format!("{text:?} is not an RFC 3339 time, e.g. \"2026-01-31T00:00:00Z\""),
            ));
            None
        }
    }
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The outcome and override rates of one tool across the values of one form field.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Disparity {
    pub tool: String,
    /// The JSON Pointer the decisions were grouped by.
    pub field: String,
    /// Decisions counted: those of `tool` whose latest revision falls in the time range.
    pub total: u64,
    /// Every counted decision together: the baseline each group is compared with. Its `value`
    /// is null and its ratios are absent.
    pub overall: GroupStats,
    /// One row per distinct value of the field, largest group first, then by value.
    pub groups: Vec<GroupStats>,
    /// The levels of every `levels` list below, in order: the tool's declared levels, least to
    /// most serious, then any level a stored decision has that the tool no longer declares
    /// (by name), so the level counts of a group always add up to its `n`.
    pub levels: Vec<String>,
}

/// The figures for the decisions whose form has one value of the field.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct GroupStats {
    /// The field's value (null when the form leaves it out or sets it to null). Arrays and
    /// objects are grouped by their canonical JSON (RFC 8785), so key order and number spelling
    /// do not split a group.
    #[schema(value_type = Value)]
    pub value: Value,
    /// Decisions in the group.
    pub n: u64,
    /// True when `n` is under 10: the rates are shown but too uncertain to read much into.
    pub small: bool,
    /// The share of the group's decisions at each level, one per entry of
    /// [`Disparity::levels`], in the same order. The level counted is the effective one: an
    /// approved override's level, else the tool's.
    pub levels: Vec<LevelStat>,
    /// The share of the group's decisions whose latest revision carries an override asked for:
    /// pending, approved or declined.
    pub override_rate: Rate,
}

/// The share of a group's decisions at one level.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LevelStat {
    pub level: String,
    pub rate: Rate,
}

/// A proportion with its uncertainty and its relation to the overall figure.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Rate {
    /// Decisions with the property.
    pub count: u64,
    /// Decisions in the group.
    pub n: u64,
    /// `count / n` (0 when `n` is 0).
    pub rate: f64,
    /// 95% Wilson score interval
    pub low: f64,
    /// Upper end of the 95% Wilson score interval.
    pub high: f64,
    /// rate / overall rate for the same measure (None for the overall row or when the overall rate is 0)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
}

/// The Wilson score interval for `count` successes in `n` trials at normal quantile `z`
/// (1.96 for 95%), clamped to `[0, 1]`. With no trials nothing is known: `(0, 1)`.
pub fn wilson(count: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let count = count.min(n);
    let nf = n as f64;
    let p = count as f64 / nf;
    let z2 = z * z;
    let denominator = 1.0 + z2 / nf;
    let centre = (p + z2 / (2.0 * nf)) / denominator;
    let margin = z * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt() / denominator;
    // At the ends the interval touches 0 or 1 exactly; say so rather than leave rounding noise.
    let low = if count == 0 {
        0.0
    } else {
        (centre - margin).max(0.0)
    };
    let high = if count == n {
        1.0
    } else {
        (centre + margin).min(1.0)
    };
    (low, high)
}

/// Aggregates the latest revision of each decision of `request.tool` whose recorded_at is in range. `levels` is the tool's declared levels in order.
///
/// Revisions of other tools are skipped, so the caller may pass every decision's latest
/// revision. The range is `[from, to)`; a bound that is not RFC 3339 matches nothing (see
/// [`DisparityRequest::validate`]). A decision counts at its effective level
/// ([`Revision::effective_level`]), and counts as overridden if its latest revision carries any
/// override, pending, approved or declined: an override asked for is already a practitioner's
/// judgement that the tool's level was wrong for this child, whatever became of it.
pub fn disparity(
    request: &DisparityRequest,
    levels: &[String],
    latest_revisions: impl Iterator<Item = Revision>,
) -> Disparity {
    let range = Range::new(request);
    let mut all_levels: Vec<String> = levels.to_vec();
    let mut level_index: HashMap<String, usize> = levels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), i))
        .collect();
    let mut overall = Tally::default();
    let mut groups: HashMap<String, (Value, Tally)> = HashMap::new();

    for revision in latest_revisions {
        if revision.tool.id != request.tool || !range.contains(&revision.recorded_at) {
            continue;
        }
        let level = revision.effective_level();
        let index = match level_index.get(level) {
            Some(i) => *i,
            None => {
                all_levels.push(level.to_owned());
                level_index.insert(level.to_owned(), all_levels.len() - 1);
                all_levels.len() - 1
            }
        };
        let overridden = revision.override_.is_some();
        overall.add(index, overridden);
        let value = revision
            .input
            .pointer(&request.field)
            .cloned()
            .unwrap_or(Value::Null);
        let key = canonical(&value);
        groups
            .entry(key)
            .or_insert_with_key(|key| {
                (serde_json::from_str(key).unwrap_or(value), Tally::default())
            })
            .1
            .add(index, overridden);
    }

    // Declared levels keep their order; levels no longer declared follow, by name.
    let mut order: Vec<usize> = (0..all_levels.len()).collect();
    order[levels.len()..].sort_by(|a, b| all_levels[*a].cmp(&all_levels[*b]));
    let level_names: Vec<String> = order.iter().map(|i| all_levels[*i].clone()).collect();

    let baseline = overall.clone();
    let overall_stats = overall.stats(Value::Null, &order, &level_names, None);
    let mut groups: Vec<(String, GroupStats)> = groups
        .into_iter()
        .map(|(key, (value, tally))| {
            let stats = tally.stats(value, &order, &level_names, Some(&baseline));
            (key, stats)
        })
        .collect();
    groups.sort_by(|(ka, a), (kb, b)| b.n.cmp(&a.n).then_with(|| ka.cmp(kb)));

    Disparity {
        tool: request.tool.clone(),
        field: request.field.clone(),
        total: overall_stats.n,
        overall: overall_stats,
        groups: groups.into_iter().map(|(_, g)| g).collect(),
        levels: level_names,
    }
}

/// RFC 8785 canonical JSON: the grouping key, equal for values that differ only in key order or
/// number spelling.
fn canonical(value: &Value) -> String {
    canon_json::CanonJsonSerialize::to_canon_json_string(value)
        .unwrap_or_else(|_| value.to_string())
}

/// The `[from, to)` filter on `recorded_at`.
struct Range {
    from: Option<Option<DateTime<Utc>>>,
    to: Option<Option<DateTime<Utc>>>,
}

impl Range {
    fn new(request: &DisparityRequest) -> Range {
        Range {
            from: request.from.as_deref().map(parse_time),
            to: request.to.as_deref().map(parse_time),
        }
    }

    fn contains(&self, recorded_at: &str) -> bool {
        if self.from.is_none() && self.to.is_none() {
            return true;
        }
        let Some(at) = parse_time(recorded_at) else {
            return false;
        };
        let after_from = match self.from {
            None => true,
            Some(Some(from)) => at >= from,
            Some(None) => false,
        };
        let before_to = match self.to {
            None => true,
            Some(Some(to)) => at < to,
            Some(None) => false,
        };
        after_from && before_to
    }
}

/// Counts for one group: decisions, decisions per level (by index into the level list as it
/// grows), overridden decisions.
#[derive(Debug, Clone, Default)]
struct Tally {
    n: u64,
    levels: Vec<u64>,
    overridden: u64,
}

impl Tally {
    fn add(&mut self, level: usize, overridden: bool) {
        self.n += 1;
        if self.levels.len() <= level {
            self.levels.resize(level + 1, 0);
        }
        self.levels[level] += 1;
        self.overridden += u64::from(overridden);
    }

    fn level(&self, index: usize) -> u64 {
        self.levels.get(index).copied().unwrap_or(0)
    }

    /// The group's figures, against `baseline` (None for the overall row itself).
    fn stats(
        &self,
        value: Value,
        order: &[usize],
        names: &[String],
        baseline: Option<&Tally>,
    ) -> GroupStats {
        let levels = order
            .iter()
            .zip(names)
            .map(|(index, name)| LevelStat {
                level: name.clone(),
                rate: rate(
                    self.level(*index),
                    self.n,
                    baseline.map(|b| (b.level(*index), b.n)),
                ),
            })
            .collect();
        GroupStats {
            value,
            n: self.n,
            small: self.n < SMALL_GROUP,
            levels,
            override_rate: rate(
                self.overridden,
                self.n,
                baseline.map(|b| (b.overridden, b.n)),
            ),
        }
    }
}

fn proportion(count: u64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        count as f64 / n as f64
    }
}

/// `count` of `n`, with its interval and, given the overall `(count, n)`, its ratio to that.
fn rate(count: u64, n: u64, overall: Option<(u64, u64)>) -> Rate {
    let value = proportion(count, n);
    let (low, high) = wilson(count, n, Z_95);
    let ratio = overall
        .map(|(c, n)| proportion(c, n))
        .filter(|overall| *overall > 0.0)
        .map(|overall| value / overall);
    Rate {
        count,
        n,
        rate: value,
        low,
        high,
        ratio,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use crate::rules::Outcome;
    use crate::store::{Actor, Override, OverrideStatus, RevisionKind, ToolRef};
    use serde_json::json;

    const TOOL: &str = "harm-analysis";

    fn levels() -> Vec<String> {
        ["low", "medium", "high"].map(String::from).to_vec()
    }

    fn actor(subject: &str) -> Actor {
        Actor {
            subject: subject.into(),
            role: Role::Practitioner,
        }
    }

    /// The latest revision of a decision of `tool` with `input`, at `level`, recorded at `at`.
    fn revision(tool: &str, input: Value, level: &str, at: &str) -> Revision {
        Revision {
            seq: 1,
            decision_id: "d".into(),
            revision: 1,
            kind: RevisionKind::Submitted,
            case_id: "c".into(),
            tool: ToolRef {
                id: tool.into(),
                version: "1.0.0".into(),
                digest: "sha256:00".into(),
            },
            input,
            outcome: Outcome {
                level: level.into(),
                score: None,
                recommendation: "r".into(),
                explanation: "e".into(),
                reasons: vec![],
                flags: vec![],
            },
            override_: None,
            actor: actor("pat"),
            recorded_at: at.into(),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    fn at(level: &str, input: Value) -> Revision {
        revision(TOOL, input, level, "2026-03-01T10:00:00.000Z")
    }

    fn overridden(mut r: Revision, level: &str, status: OverrideStatus) -> Revision {
        r.kind = match status {
            OverrideStatus::Pending => RevisionKind::Overridden,
            OverrideStatus::Approved => RevisionKind::Approved,
            OverrideStatus::Declined => RevisionKind::Declined,
        };
        r.override_ = Some(Override {
            level: level.into(),
            reason: "because".into(),
            by: actor("pat"),
            status,
            approved_by: None,
            declined: None,
            replaces: None,
        });
        r
    }

    fn request(field: &str) -> DisparityRequest {
        DisparityRequest {
            tool: TOOL.into(),
            field: field.into(),
            from: None,
            to: None,
        }
    }

    fn run(request: &DisparityRequest, revisions: Vec<Revision>) -> Disparity {
        disparity(request, &levels(), revisions.into_iter())
    }

    fn group<'a>(d: &'a Disparity, value: &Value) -> &'a GroupStats {
        d.groups
            .iter()
            .find(|g| g.value == *value)
            .unwrap_or_else(|| panic!("no group {value} in {:?}", d.groups))
    }

    fn level<'a>(g: &'a GroupStats, name: &str) -> &'a Rate {
        &g.levels.iter().find(|l| l.level == name).unwrap().rate
    }

    fn round4(x: f64) -> f64 {
        (x * 10_000.0).round() / 10_000.0
    }

    #[test]
    fn wilson_matches_known_intervals() {
        let (low, high) = wilson(5, 10, 1.96);
        assert_eq!((round4(low), round4(high)), (0.2366, 0.7634));
        let (low, high) = wilson(0, 10, 1.96);
        assert_eq!(low, 0.0);
        assert_eq!(round4(high), 0.2775);
        let (low, high) = wilson(10, 10, 1.96);
        assert_eq!((round4(low), high), (0.7225, 1.0));
        let (low, high) = wilson(1, 20, 1.96);
        assert_eq!((round4(low), round4(high)), (0.0089, 0.2361));
        assert_eq!(wilson(0, 0, 1.96), (0.0, 1.0));
    }

    #[test]
    fn small_groups_are_marked_and_still_shown() {
        let mut revisions: Vec<Revision> = (0..12)
            .map(|_| at("low", json!({"ethnicity": "white-british"})))
            .collect();
        revisions.extend((0..3).map(|_| at("high", json!({"ethnicity": "roma"}))));
        let d = run(&request("/ethnicity"), revisions);
        assert_eq!(d.total, 15);
        assert_eq!(d.groups.len(), 2);
        // Largest group first.
        assert_eq!(d.groups[0].value, json!("white-british"));
        assert_eq!(d.groups[0].n, 12);
        assert!(!d.groups[0].small);
        assert_eq!(d.groups[1].value, json!("roma"));
        assert_eq!(d.groups[1].n, 3);
        assert!(d.groups[1].small);
        assert_eq!(level(&d.groups[1], "high").count, 3);
        assert_eq!(d.overall.n, 15);
        assert!(!d.overall.small);
    }

    #[test]
    fn each_rate_is_set_against_the_overall_rate() {
        // 20 decisions, 4 high overall (0.2); group "a" has 3 high of 10 (0.3): ratio 1.5.
        let mut revisions = Vec::new();
        for i in 0..10 {
            let lvl = if i < 3 { "high" } else { "low" };
            revisions.push(at(lvl, json!({"g": "a"})));
        }
        for i in 0..10 {
            let lvl = if i < 1 { "high" } else { "low" };
            revisions.push(at(lvl, json!({"g": "b"})));
        }
        let d = run(&request("/g"), revisions);
        let overall_high = level(&d.overall, "high");
        assert_eq!((overall_high.count, overall_high.n), (4, 20));
        assert!((overall_high.rate - 0.2).abs() < 1e-12);
        assert_eq!(overall_high.ratio, None, "the overall row has no ratio");

        let a_high = level(group(&d, &json!("a")), "high");
        assert_eq!((a_high.count, a_high.n), (3, 10));
        assert!((a_high.ratio.unwrap() - 1.5).abs() < 1e-12);
        let b_high = level(group(&d, &json!("b")), "high");
        assert!((b_high.ratio.unwrap() - 0.5).abs() < 1e-12);
        let (low, high) = wilson(3, 10, Z_95);
        assert_eq!((a_high.low, a_high.high), (low, high));

        // Nobody is at "medium": the overall rate is 0, so no ratio.
        assert_eq!(level(group(&d, &json!("a")), "medium").ratio, None);
        // Nor is anyone overridden.
        assert_eq!(group(&d, &json!("a")).override_rate.ratio, None);
    }

    #[test]
    fn levels_are_effective_and_any_override_counts() {
        let revisions = vec![
            // Approved up: counts at "high", overridden.
            overridden(
                at("medium", json!({"g": "a"})),
                "high",
                OverrideStatus::Approved,
            ),
            // Pending: still at the tool's "low", but overridden.
            overridden(
                at("low", json!({"g": "a"})),
                "medium",
                OverrideStatus::Pending,
            ),
            at("low", json!({"g": "a"})),
            at("low", json!({"g": "b"})),
        ];
        let d = run(&request("/g"), revisions);
        let a = group(&d, &json!("a"));
        assert_eq!(a.n, 3);
        assert_eq!(level(a, "high").count, 1);
        assert_eq!(level(a, "medium").count, 0);
        assert_eq!(level(a, "low").count, 2);
        assert_eq!((a.override_rate.count, a.override_rate.n), (2, 3));
        // 2/3 against 2/4 overall.
        assert!((a.override_rate.ratio.unwrap() - (2.0 / 3.0) / 0.5).abs() < 1e-12);
        assert_eq!(d.overall.override_rate.count, 2);
    }

    #[test]
    fn an_absent_field_is_grouped_as_null() {
        let revisions = vec![
            at("low", json!({"other": 1})),
            at("low", json!({"disability": null})),
            at("high", json!({"disability": "yes"})),
        ];
        let d = run(&request("/disability"), revisions);
        assert_eq!(d.groups.len(), 2);
        let none = group(&d, &Value::Null);
        assert_eq!(none.n, 2);
        assert_eq!(group(&d, &json!("yes")).n, 1);
    }

    #[test]
    fn arrays_and_objects_are_grouped_by_canonical_json() {
        let revisions = vec![
            at("low", json!({"c": {"a": 1, "b": [1, 2]}})),
            at("low", json!({"c": {"b": [1, 2], "a": 1.0}})),
            at("low", json!({"c": {"b": [2, 1], "a": 1}})),
            at("low", json!({"c": [1, 2]})),
            at("low", json!({"c": "[1,2]"})),
        ];
        let d = run(&request("/c"), revisions);
        assert_eq!(d.groups.len(), 4, "{:?}", d.groups);
        assert_eq!(d.groups[0].n, 2);
        assert_eq!(canonical(&d.groups[0].value), r#"{"a":1,"b":[1,2]}"#);
        assert_eq!(group(&d, &json!([1, 2])).n, 1);
        assert_eq!(group(&d, &json!("[1,2]")).n, 1);
        // Equal-sized groups follow in canonical-text order.
        let rest: Vec<String> = d.groups[1..].iter().map(|g| canonical(&g.value)).collect();
        assert_eq!(rest, [r#""[1,2]""#, "[1,2]", r#"{"a":1,"b":[2,1]}"#]);
    }

    #[test]
    fn nested_pointers_reach_into_the_form() {
        let revisions = vec![
            at("low", json!({"child": {"ethnic/group": "x"}})),
            at("low", json!({"child": {}})),
        ];
        let d = run(&request("/child/ethnic~1group"), revisions);
        assert_eq!(group(&d, &json!("x")).n, 1);
        assert_eq!(group(&d, &Value::Null).n, 1);
    }

    #[test]
    fn the_time_range_is_from_inclusive_to_exclusive() {
        let revisions = vec![
            revision(TOOL, json!({"g": 1}), "low", "2026-01-31T23:59:59.999Z"),
            revision(TOOL, json!({"g": 2}), "low", "2026-02-01T00:00:00.000Z"),
            revision(TOOL, json!({"g": 3}), "low", "2026-02-15T12:00:00.000Z"),
            revision(TOOL, json!({"g": 4}), "low", "2026-03-01T00:00:00.000Z"),
            // Another tool, in range: not counted.
            revision(
                "five-cs",
                json!({"g": 5}),
                "low",
                "2026-02-10T00:00:00.000Z",
            ),
        ];
        let mut req = request("/g");
        req.from = Some("2026-02-01T00:00:00Z".into());
        // An offset is honoured: this is 2026-03-01T00:00:00Z.
        req.to = Some("2026-03-01T01:00:00+01:00".into());
        let d = run(&req, revisions.clone());
        let values: Vec<&Value> = d.groups.iter().map(|g| &g.value).collect();
        assert_eq!(values, [&json!(2), &json!(3)]);
        assert_eq!(d.total, 2);

        let mut open = request("/g");
        open.to = Some("2026-02-01T00:00:00Z".into());
        assert_eq!(run(&open, revisions.clone()).total, 1);
        let mut open = request("/g");
        open.from = Some("2026-02-15T12:00:00Z".into());
        assert_eq!(run(&open, revisions.clone()).total, 2);
        assert_eq!(run(&request("/g"), revisions.clone()).total, 4);

        // A bound that does not parse matches nothing rather than everything.
        let mut bad = request("/g");
        bad.from = Some("last tuesday".into());
        assert_eq!(run(&bad, revisions).total, 0);
        assert!(bad.validate().is_err());
    }

    #[test]
    fn levels_no_longer_declared_follow_the_declared_ones() {
        let revisions = vec![
            at("urgent", json!({"g": "a"})),
            at("critical", json!({"g": "a"})),
            at("low", json!({"g": "a"})),
        ];
        let d = run(&request("/g"), revisions);
        assert_eq!(d.levels, ["low", "medium", "high", "critical", "urgent"]);
        let a = group(&d, &json!("a"));
        let names: Vec<&str> = a.levels.iter().map(|l| l.level.as_str()).collect();
        assert_eq!(names, d.levels);
        assert_eq!(a.levels.iter().map(|l| l.rate.count).sum::<u64>(), a.n);
        assert_eq!(level(a, "urgent").count, 1);
    }

    #[test]
    fn no_decisions_gives_an_empty_report() {
        let d = run(&request("/g"), vec![]);
        assert_eq!(d.total, 0);
        assert!(d.groups.is_empty());
        assert_eq!(d.overall.levels.len(), 3);
        let low = level(&d.overall, "low");
        assert_eq!((low.rate, low.low, low.high), (0.0, 0.0, 1.0));
        // Serialises: no NaN anywhere.
        serde_json::to_string(&d).unwrap();
    }

    #[test]
    fn requests_are_strict_and_validated() {
        let err = serde_json::from_value::<DisparityRequest>(
            json!({"tool": TOOL, "field": "/g", "form": 1}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let ok: DisparityRequest =
            serde_json::from_value(json!({"tool": TOOL, "field": "/g"})).unwrap();
        assert!(ok.validate().is_ok());

        let bad = DisparityRequest {
            tool: TOOL.into(),
            field: "ethnicity".into(),
            from: Some("2026-03-01T00:00:00Z".into()),
            to: Some("2026-02-01T00:00:00Z".into()),
        };
        let problems = bad.validate().unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|(p, _)| *p).collect();
        assert_eq!(paths, ["/field", "/to"]);
    }
}
