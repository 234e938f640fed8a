//! Supervisor dashboard figures (`GET /v1/dashboard`): the overrides waiting for approval, the
//! decisions made each ISO week by tool and level, how often each tool's level is overridden, how
//! many cases stand at each stage of the case journey, and which reviews are overdue. Stages and
//! reviews follow the same rules as the case journey (`GET /v1/cases/{case}`), so a supervisor
//! who opens a case from the dashboard finds it where the dashboard said it was.
//!
//! The figures are one pass over the latest revision of every decision (and, for one whose
//! latest revision is an override or its approval, a read back to its assessment); memory grows with the
//! number of cases, tools, levels, weeks and pending overrides, never with the number of
//! revisions.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Datelike, Utc};
use serde::Serialize;

use crate::catalog::Catalog;
use crate::decisions::{
    case_stage, holds, is_organisational, review_time, LastAssessment, Standing,
};
use crate::store::{Actor, OverrideStatus, Revision};

/// The last stage of the case journey (close); stages run from 0 (front door).
const LAST_STAGE: u8 = 7;

/// What a supervisor watches.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Dashboard {
    /// Overrides waiting for a supervisor's approval, oldest first.
    pub pending_overrides: Vec<PendingOverride>,
    /// Decisions by tool and level per ISO week, in week, tool and level order (levels least to
    /// most serious). A decision counts in the week of its first revision, at the level in force
    /// now.
    pub weekly: Vec<WeekCount>,
    /// How often each tool's level is overridden, by tool id.
    pub override_rate_by_tool: Vec<ToolRate>,
    /// Cases at each stage of the case journey, "0" (front door) to "7" (close), every stage
    /// present. A case's stage is the furthest case stage among the tools it has decisions of,
    /// 0 when it has none (only decisions of tools used at any stage). An agency's own
    /// assessments (organisational tools) are no child's case and are not counted.
    pub cases_per_stage: BTreeMap<String, u64>,
    /// Reviews past their `review_after_days` (the level's, else the tool's), most overdue
    /// first: one per case and tool, for the latest decision of that tool in the case, as the
    /// case journey lists them.
    pub reviews_overdue: Vec<OverdueReview>,
    /// Cases held at their stage, longest held first: a tool of the case's current stage has
    /// its latest decision at a level that holds the case there (`x-tool.holds`: a plan that
    /// fails its stress test, risk not reduced at review), as the case journey's `held` lists
    /// them. One entry per case and holding tool; closed cases and an agency's own assessments
    /// are not held.
    pub cases_held: Vec<HeldCase>,
}

/// A case held at its stage by one decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct HeldCase {
    pub case: String,
    /// The case's stage, which it does not leave while held.
    pub stage: u8,
    pub tool: String,
    pub decision_id: String,
    /// The level in force that holds it.
    pub level: String,
    /// When that assessment was made (RFC 3339).
    pub since: String,
}

/// An override waiting for a supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PendingOverride {
    pub decision_id: String,
    /// The decision's current revision: what an approval builds on (`expected_revision`).
    pub revision: u32,
    pub case: String,
    pub tool: String,
    /// The level the tool decided.
    pub tool_level: String,
    /// The level the practitioner asks for.
    pub override_level: String,
    pub reason: String,
    /// Who made the override.
    pub by: Actor,
    /// When the override was made (RFC 3339).
    pub since: String,
}

/// Decisions of one tool at one level first made in one ISO week.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct WeekCount {
    /// ISO 8601 week, e.g. "2026-W47".
    pub week: String,
    pub tool: String,
    /// The level in force: an approved override's, else the tool's.
    pub level: String,
    pub decisions: u64,
    /// Of those, decisions carrying an override asked for: pending, approved or declined.
    pub overridden: u64,
}

/// How often one tool's level is overridden.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ToolRate {
    pub tool: String,
    pub decisions: u64,
    /// Decisions whose latest revision carries an override asked for: pending, approved or
    /// declined (a declined override was still a practitioner's judgement against the tool's).
    pub overridden: u64,
    /// Of those, overrides still waiting for a supervisor.
    pub pending: u64,
    /// Of those, overrides declined: refused by a supervisor, or withdrawn by the practitioner
    /// who asked for them (`override.declined.by` says which).
    pub declined: u64,
    /// `overridden / decisions`.
    pub rate: f64,
}

/// A decision whose review is overdue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OverdueReview {
    pub case: String,
    pub tool: String,
    pub decision_id: String,
    /// When the review fell due (RFC 3339): the decision's assessment (its latest submitted or
    /// amended revision) plus the `review_after_days` of its level in force, else of its tool,
    /// as in the case journey's `review_due`.
    pub due: String,
}

/// The dashboard over every decision as it stands (its latest revision and when it was
/// assessed), as at `now`.
///
/// Stages and review dates come from the tools as `catalog` serves them now, as in the case
/// journey; decisions of tools the catalog no longer has still count in the weekly and override
/// figures but give their case no stage and no review.
pub fn dashboard(
    catalog: &Catalog,
    decisions: impl Iterator<Item = Standing>,
    now: DateTime<Utc>,
) -> Dashboard {
    let mut pending: Vec<(u64, PendingOverride)> = Vec::new();
    let mut weekly: BTreeMap<(String, String, String), (u64, u64)> = BTreeMap::new();
    let mut tools: HashMap<String, ToolTally> = HashMap::new();
    let mut cases: HashMap<String, CaseTally> = HashMap::new();

    for standing in decisions {
        let due = standing.review_due(catalog);
        let case = entry(&mut cases, &standing.latest.case_id);
        case.last.see(catalog, &standing);
        // Whether it is the latest of its tool in its case, for its review and its hold, as in
        // the journey: whether or not it has a review date or a level that holds.
        let latest_of_tool = case
            .latest
            .get(&standing.latest.tool.id)
            .is_none_or(|current| standing.supersedes(current.assessed_seq));
        let revision = standing.latest;
        let level = revision.effective_level().to_owned();
        let overridden = revision.override_.is_some();
        let status = revision.override_.as_ref().map(|o| o.status);
        let is_pending = status == Some(OverrideStatus::Pending);

        if let Some(first) = first_recorded(&revision) {
            let counts = weekly
                .entry((iso_week(first), revision.tool.id.clone(), level))
                .or_default();
            counts.0 += 1;
            counts.1 += u64::from(overridden);
        }

        let tally = entry(&mut tools, &revision.tool.id);
        tally.decisions += 1;
        tally.overridden += u64::from(overridden);
        tally.pending += u64::from(is_pending);
        tally.declined += u64::from(status == Some(OverrideStatus::Declined));

        case.child |= !is_organisational(catalog, &revision.tool.id);
        if let Some(stage) = case_stage(catalog, &revision.tool.id) {
            case.stage = case.stage.max(stage);
        }
        if latest_of_tool {
            // Only a tool that may hold a case needs its level in force and when it was assessed.
            let may_hold = catalog
                .get(&revision.tool.id)
                .is_some_and(|t| !t.meta.holds.is_empty());
            let latest = LatestOfTool {
                assessed_seq: standing.assessed.seq,
                decision_id: revision.decision_id.clone(),
                due,
                holding: may_hold
                    .then(|| (revision.effective_level().to_owned(), standing.assessed.at)),
            };
            match case.latest.get_mut(&revision.tool.id) {
                Some(slot) => *slot = latest,
                None => {
                    case.latest.insert(revision.tool.id.clone(), latest);
                }
            }
        }

        // Last, so the revision's strings can move rather than be copied.
        if is_pending {
            let seq = revision.seq;
            let o = revision.override_.expect("a pending override");
            pending.push((
                seq,
                PendingOverride {
                    decision_id: revision.decision_id,
                    revision: revision.revision,
                    case: revision.case_id,
                    tool: revision.tool.id,
                    tool_level: revision.outcome.level,
                    override_level: o.level,
                    reason: o.reason,
                    by: o.by,
                    since: revision.recorded_at,
                },
            ));
        }
    }

    pending.sort_by(|(sa, a), (sb, b)| a.since.cmp(&b.since).then(sa.cmp(sb)));

    let mut weekly: Vec<WeekCount> = weekly
        .into_iter()
        .map(|((week, tool, level), (decisions, overridden))| WeekCount {
            week,
            tool,
            level,
            decisions,
            overridden,
        })
        .collect();
    weekly.sort_by(|a, b| {
        (&a.week, &a.tool)
            .cmp(&(&b.week, &b.tool))
            .then_with(|| level_order(catalog, &a.tool, &a.level, &b.level))
    });

    let mut tools: Vec<(String, ToolTally)> = tools.into_iter().collect();
    tools.sort_by(|(a, _), (b, _)| a.cmp(b));
    let override_rate_by_tool = tools
        .into_iter()
        .map(|(tool, t)| ToolRate {
            tool,
            decisions: t.decisions,
            overridden: t.overridden,
            pending: t.pending,
            declined: t.declined,
            rate: if t.decisions == 0 {
                0.0
            } else {
                t.overridden as f64 / t.decisions as f64
            },
        })
        .collect();

    let mut cases_per_stage: BTreeMap<String, u64> =
        (0..=LAST_STAGE).map(|s| (s.to_string(), 0)).collect();
    let mut reviews_overdue: Vec<(DateTime<Utc>, OverdueReview)> = Vec::new();
    let mut cases_held: Vec<(u64, HeldCase)> = Vec::new();
    for (case_id, case) in cases {
        if case.child {
            *cases_per_stage.entry(case.stage.to_string()).or_default() += 1;
        }
        // A closed case has no reviews due and is not held, as its journey says.
        if case.last.closed().is_some() {
            continue;
        }
        for (tool, latest) in case.latest {
            if let Some(due) = latest.due.filter(|due| *due <= now) {
                reviews_overdue.push((
                    due,
                    OverdueReview {
                        case: case_id.clone(),
                        tool: tool.clone(),
                        decision_id: latest.decision_id.clone(),
                        due: review_time(due),
                    },
                ));
            }
            if let Some((level, since)) = latest.holding {
                if case.child && holds(catalog, &tool, &level, case.stage) {
                    cases_held.push((
                        latest.assessed_seq,
                        HeldCase {
                            case: case_id.clone(),
                            stage: case.stage,
                            tool,
                            decision_id: latest.decision_id,
                            level,
                            since,
                        },
                    ));
                }
            }
        }
    }
    cases_held.sort_by_key(|(seq, _)| *seq);
    reviews_overdue.sort_by(|(da, a), (db, b)| {
        da.cmp(db)
            .then_with(|| (&a.case, &a.tool).cmp(&(&b.case, &b.tool)))
    });

    Dashboard {
        pending_overrides: pending.into_iter().map(|(_, p)| p).collect(),
        weekly,
        override_rate_by_tool,
        cases_per_stage,
        reviews_overdue: reviews_overdue.into_iter().map(|(_, r)| r).collect(),
        cases_held: cases_held.into_iter().map(|(_, h)| h).collect(),
    }
}

/// The entry for `key`, created empty the first time: the key is copied once per tool or case,
/// not once per revision.
fn entry<'a, V: Default>(map: &'a mut HashMap<String, V>, key: &str) -> &'a mut V {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), V::default());
    }
    map.get_mut(key).expect("just inserted")
}

#[derive(Debug, Default)]
struct ToolTally {
    decisions: u64,
    overridden: u64,
    pending: u64,
    declined: u64,
}

/// What the dashboard keeps per case: its journey stage, and the latest decision of each tool.
#[derive(Debug, Default)]
struct CaseTally {
    /// Whether any of its decisions is about a child (not only an agency's own assessments).
    child: bool,
    /// Its latest assessment, and whether that closes it.
    last: LastAssessment,
    stage: u8,
    /// The latest decision of each tool in the case, by tool.
    latest: HashMap<String, LatestOfTool>,
}

/// The latest decision of a tool in a case: what its review and its hold need.
#[derive(Debug)]
struct LatestOfTool {
    /// The journal place of its assessment.
    assessed_seq: u64,
    decision_id: String,
    /// When its review falls due, if it has one.
    due: Option<DateTime<Utc>>,
    /// For a tool that may hold a case: its level in force, and when it was assessed.
    holding: Option<(String, String)>,
}

/// When a decision's first revision was recorded, as far as its latest revision tells: exactly
/// when the latest revision is the first; otherwise the submission time in the decision's
/// UUIDv7 id, taken as the decision was submitted, milliseconds before its first revision was
/// recorded; for an id that carries no time, the latest revision's own time.
fn first_recorded(revision: &Revision) -> Option<DateTime<Utc>> {
    let recorded = || {
        DateTime::parse_from_rfc3339(&revision.recorded_at)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    };
    if revision.revision <= 1 {
        return recorded();
    }
    uuid::Uuid::parse_str(&revision.decision_id)
        .ok()
        .and_then(|id| id.get_timestamp())
        .and_then(|ts| {
            let (secs, nanos) = ts.to_unix();
            DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
        })
        .or_else(recorded)
}

/// ISO 8601 week of `at`, e.g. "2026-W47" (the ISO year, which differs from the calendar year
/// in the first and last days of some years).
fn iso_week(at: DateTime<Utc>) -> String {
    let week = at.iso_week();
    format!("{:04}-W{:02}", week.year(), week.week())
}

/// Levels of `tool` least to most serious, as the tool declares them; levels it does not declare
/// (or a tool the catalog no longer has) follow, by name.
fn level_order(catalog: &Catalog, tool: &str, a: &str, b: &str) -> std::cmp::Ordering {
    let rank = |level: &str| {
        catalog
            .get(tool)
            .and_then(|t| t.level_rank(level))
            .unwrap_or(usize::MAX)
    };
    rank(a).cmp(&rank(b)).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;
    use std::sync::Arc;

    use chrono::TimeZone;
    use serde_json::{json, Value};

    use super::*;
    use crate::auth::Role;
    use crate::rules::Outcome;
    use crate::store::{Assessment, Declined, Override, RevisionKind, ToolRef};

    /// `(id, stage, review_after_days)` of the test catalog; every tool has levels low, medium,
    /// high and decides the form's `level` (low when absent). `plan` at `medium` is reviewed
    /// after 5 days, not 60, and `door` at `medium` after 10, where its other levels never are.
    fn tools() -> Vec<(&'static str, Value, Option<u32>)> {
        vec![
            ("door", json!(0), None),
            ("assess", json!(1), Some(30)),
            ("plan", json!(3), Some(60)),
            ("check", json!("any"), Some(7)),
            ("org", json!("org"), None),
            // Closes a case at `low` (`x-tool.closes`).
            ("close", json!(7), None),
        ]
    }

    fn write_catalog(root: &Path) -> Catalog {
        fs::create_dir_all(root.join("tool-schemas")).unwrap();
        fs::create_dir_all(root.join("rules")).unwrap();
        for (id, stage, review) in tools() {
            let mut outcomes: Vec<Value> = ["low", "medium", "high"]
                .iter()
                .map(|l| json!({"level": l, "label": l, "response": l}))
                .collect();
            // A level with its own review interval, with and without the tool's.
            match id {
                "plan" => outcomes[1]["review_after_days"] = json!(5),
                "door" => outcomes[1]["review_after_days"] = json!(10),
                _ => {}
            }
            let mut x_tool = json!({
                "id": id,
                "version": "1.0.0",
                "stage": stage,
                "outcomes": outcomes,
                "params": {},
            });
            if let Some(days) = review {
                x_tool["review_after_days"] = json!(days);
            }
            if id == "close" {
                x_tool["closes"] = json!(["low"]);
            }
            // Holds a case at stage 1 at `low` (`x-tool.holds`).
            if id == "assess" {
                x_tool["holds"] = json!(["low"]);
            }
            let schema = json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": id,
                "type": "object",
                "properties": {"level": {"enum": ["low", "medium", "high"]}},
                "x-tool": x_tool,
            });
            fs::write(
                root.join("tool-schemas").join(format!("{id}.json")),
                serde_json::to_string_pretty(&schema).unwrap(),
            )
            .unwrap();
            fs::write(
                root.join("rules").join(format!("{id}.rhai")),
                r#"fn decide(form, params) {
                    let level = if "level" in form { form.level } else { "low" };
                    #{level: level, recommendation: "Carry on.", explanation: "Things are going well.", reasons: []}
                }"#,
            )
            .unwrap();
        }
        Catalog::load(root).unwrap_or_else(|e| panic!("the test catalog loads: {e:?}"))
    }

    fn catalog() -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().unwrap();
        let catalog = write_catalog(dir.path());
        (dir, catalog)
    }

    fn actor(subject: &str, role: Role) -> Actor {
        Actor {
            subject: subject.into(),
            role,
        }
    }

    /// Decision `id` of `tool` for `case` as submitted at `at` (revision 1), at the tool's
    /// `level`.
    fn rev(id: &str, case: &str, tool: &str, level: &str, at: &str) -> Standing {
        let latest = Revision {
            seq: 0,
            decision_id: id.into(),
            revision: 1,
            kind: RevisionKind::Submitted,
            case_id: case.into(),
            tool: ToolRef {
                id: tool.into(),
                version: "1.0.0".into(),
                digest: "sha256:00".into(),
            },
            input: json!({}),
            outcome: Outcome {
                level: level.into(),
                score: None,
                recommendation: "r".into(),
                explanation: "e".into(),
                reasons: vec![],
                flags: vec![],
            },
            override_: None,
            actor: actor("pat", Role::Practitioner),
            recorded_at: at.into(),
            prev_hash: String::new(),
            hash: String::new(),
        };
        // The store's journal order agrees with time order: the fixture's place in the journal
        // is its time.
        let seq = DateTime::parse_from_rfc3339(at).unwrap().timestamp_millis() as u64;
        Standing {
            latest,
            assessed: Assessment { seq, at: at.into() },
        }
    }

    /// `d` with the revision that overrode it to `level` (pending) or approved that override,
    /// recorded at `at`: still assessed when it was.
    fn with_override(mut d: Standing, level: &str, status: OverrideStatus, at: &str) -> Standing {
        let r = &mut d.latest;
        r.revision += 1;
        r.kind = match status {
            OverrideStatus::Pending => RevisionKind::Overridden,
            OverrideStatus::Approved => RevisionKind::Approved,
            OverrideStatus::Declined => RevisionKind::Declined,
        };
        r.override_ = Some(Override {
            level: level.into(),
            reason: format!("raised to {level}"),
            by: actor("pat", Role::Practitioner),
            status,
            approved_by: (status == OverrideStatus::Approved)
                .then(|| actor("sue", Role::Supervisor)),
            declined: (status == OverrideStatus::Declined).then(|| Declined {
                by: actor("sue", Role::Supervisor),
                reason: "not borne out".into(),
            }),
            replaces: None,
        });
        r.recorded_at = at.into();
        d
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap()
    }

    fn run(catalog: &Catalog, decisions: Vec<Standing>) -> Dashboard {
        dashboard(catalog, decisions.into_iter(), now())
    }

    #[test]
    fn pending_overrides_are_listed_oldest_first() {
        let (_dir, catalog) = catalog();
        let mut late = with_override(
            rev("d1", "c1", "assess", "low", "2026-11-20T09:00:00.000Z"),
            "medium",
            OverrideStatus::Pending,
            "2026-11-25T09:00:00.000Z",
        );
        late.latest.seq = 9;
        let mut early = with_override(
            rev("d2", "c2", "door", "medium", "2026-11-18T09:00:00.000Z"),
            "high",
            OverrideStatus::Pending,
            "2026-11-19T09:00:00.000Z",
        );
        early.latest.seq = 4;
        let approved = with_override(
            rev("d3", "c3", "assess", "low", "2026-11-10T09:00:00.000Z"),
            "high",
            OverrideStatus::Approved,
            "2026-11-11T09:00:00.000Z",
        );
        let plain = rev("d4", "c4", "assess", "low", "2026-11-01T09:00:00.000Z");
        let d = run(&catalog, vec![late, approved, plain, early]);

        assert_eq!(d.pending_overrides.len(), 2);
        let first = &d.pending_overrides[0];
        assert_eq!(
            first,
            &PendingOverride {
                decision_id: "d2".into(),
                revision: 2,
                case: "c2".into(),
                tool: "door".into(),
                tool_level: "medium".into(),
                override_level: "high".into(),
                reason: "raised to high".into(),
                by: actor("pat", Role::Practitioner),
                since: "2026-11-19T09:00:00.000Z".into(),
            }
        );
        assert_eq!(d.pending_overrides[1].decision_id, "d1");
        assert_eq!(d.pending_overrides[1].since, "2026-11-25T09:00:00.000Z");
    }

    #[test]
    fn weekly_counts_go_by_the_week_of_the_first_revision_at_the_level_in_force() {
        let (_dir, catalog) = catalog();
        // Submitted on Monday 16 November 2026 (W47), overridden and approved the week after:
        // counted in W47 at the approved level. Its id is a UUIDv7 of the submission time.
        let submitted = Utc.with_ymd_and_hms(2026, 11, 16, 8, 0, 0).unwrap();
        let id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            submitted.timestamp() as u64,
            0,
        ))
        .to_string();
        let moved = with_override(
            rev(&id, "c1", "assess", "low", "2026-11-16T08:00:00.010Z"),
            "high",
            OverrideStatus::Approved,
            "2026-11-24T10:00:00.000Z",
        );
        let revisions = vec![
            moved,
            // Sunday 22 November 23:59: still W47.
            rev("d2", "c2", "assess", "low", "2026-11-22T23:59:59.999Z"),
            // Monday 23 November: W48.
            rev("d3", "c3", "assess", "low", "2026-11-23T00:00:00.000Z"),
            // A pending override counts at the tool's level, as overridden.
            with_override(
                rev("d4", "c4", "assess", "low", "2026-11-17T09:00:00.000Z"),
                "medium",
                OverrideStatus::Pending,
                "2026-11-17T09:00:00.000Z",
            ),
            // New Year's Day 2027 is a Friday: ISO week 53 of 2026.
            rev("d5", "c5", "door", "medium", "2027-01-01T12:00:00.000Z"),
            // An id with no time and a later revision: its latest revision's week.
            with_override(
                rev("d6", "c6", "door", "low", "2026-11-16T09:00:00.000Z"),
                "medium",
                OverrideStatus::Pending,
                "2026-11-30T09:00:00.000Z",
            ),
        ];
        let d = run(&catalog, revisions);
        let rows: Vec<(&str, &str, &str, u64, u64)> = d
            .weekly
            .iter()
            .map(|w| {
                (
                    w.week.as_str(),
                    w.tool.as_str(),
                    w.level.as_str(),
                    w.decisions,
                    w.overridden,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("2026-W47", "assess", "low", 2, 1),
                ("2026-W47", "assess", "high", 1, 1),
                ("2026-W48", "assess", "low", 1, 0),
                ("2026-W49", "door", "low", 1, 1),
                ("2026-W53", "door", "medium", 1, 0),
            ]
        );
    }

    #[test]
    fn override_rates_count_pending_approved_and_declined_overrides() {
        let (_dir, catalog) = catalog();
        let at = "2026-11-20T09:00:00.000Z";
        let revisions = vec![
            rev("d1", "c1", "assess", "low", at),
            with_override(
                rev("d2", "c1", "assess", "low", at),
                "high",
                OverrideStatus::Declined,
                at,
            ),
            with_override(
                rev("d3", "c2", "assess", "low", at),
                "medium",
                OverrideStatus::Pending,
                at,
            ),
            with_override(
                rev("d4", "c3", "assess", "low", at),
                "medium",
                OverrideStatus::Approved,
                at,
            ),
            rev("d5", "c3", "door", "low", at),
            // A tool the catalog no longer has still counts.
            rev("d6", "c3", "retired", "low", at),
        ];
        let d = run(&catalog, revisions);
        let rates: Vec<(&str, u64, u64, u64, u64, f64)> = d
            .override_rate_by_tool
            .iter()
            .map(|t| {
                (
                    t.tool.as_str(),
                    t.decisions,
                    t.overridden,
                    t.pending,
                    t.declined,
                    t.rate,
                )
            })
            .collect();
        assert_eq!(
            rates,
            [
                ("assess", 4, 3, 1, 1, 0.75),
                ("door", 1, 0, 0, 0, 0.0),
                ("retired", 1, 0, 0, 0, 0.0),
            ]
        );
        // Declined: not waiting, and the tool's level stays in force.
        assert_eq!(d.pending_overrides.len(), 1);
        assert_eq!(d.pending_overrides[0].decision_id, "d3");
        let low_assessments: u64 = d
            .weekly
            .iter()
            .filter(|w| w.tool == "assess" && w.level == "low")
            .map(|w| w.decisions)
            .sum();
        assert_eq!(low_assessments, 3, "{:?}", d.weekly);
    }

    #[test]
    fn cases_stand_at_their_furthest_case_stage() {
        let (_dir, catalog) = catalog();
        let at = "2026-11-30T09:00:00.000Z";
        let revisions = vec![
            // Front door then assessment: stage 1.
            rev("d1", "c1", "door", "low", at),
            rev("d2", "c1", "assess", "low", at),
            // Planning reached: stage 3, whatever came before.
            rev("d3", "c2", "plan", "low", at),
            rev("d4", "c2", "door", "low", at),
            // Only the any-stage supervision check: stage 0, as the journey says.
            rev("d5", "c3", "check", "low", at),
            // Only the front door: stage 0.
            rev("d6", "c4", "door", "low", at),
            // A tool the catalog no longer has gives no stage.
            rev("d7", "c5", "retired", "low", at),
            // An agency's own assessment is no child's case: not counted.
            rev("d8", "c6", "org", "low", at),
            // Beside a child's decisions, it gives no stage either.
            rev("d9", "c2", "org", "low", at),
        ];
        let d = run(&catalog, revisions);
        let expected: BTreeMap<String, u64> = [
            ("0", 3),
            ("1", 1),
            ("2", 0),
            ("3", 1),
            ("4", 0),
            ("5", 0),
            ("6", 0),
            ("7", 0),
        ]
        .into_iter()
        .map(|(s, n)| (s.to_owned(), n))
        .collect();
        assert_eq!(d.cases_per_stage, expected);
    }

    #[test]
    fn reviews_are_overdue_for_the_latest_decision_of_each_tool() {
        let (_dir, catalog) = catalog();
        // now is 2026-12-01T12:00:00Z; assess reviews after 30 days, plan 60, check 7.
        let revisions = vec![
            // Due 2026-11-01: overdue.
            rev("d1", "c1", "assess", "low", "2026-10-02T08:00:00.000Z"),
            // Superseded by a later assessment of the same case, not yet due.
            rev("d2", "c2", "assess", "low", "2026-09-01T08:00:00.000Z"),
            rev("d3", "c2", "assess", "low", "2026-11-20T08:00:00.000Z"),
            // Due exactly now: overdue, as in the journey.
            rev("d4", "c3", "check", "low", "2026-11-24T12:00:00.000Z"),
            // Due a second after now: not yet.
            rev("d5", "c4", "check", "low", "2026-11-24T12:00:01.000Z"),
            // Due 2026-10-31.
            rev("d6", "c5", "plan", "low", "2026-09-01T08:00:00.000Z"),
            // Due 2026-09-30 and the most overdue: an override approved since changes the level
            // in force, not when the family was assessed, so the review clock runs on.
            with_override(
                rev("d7", "c6", "plan", "low", "2026-08-01T08:00:00.000Z"),
                "high",
                OverrideStatus::Approved,
                "2026-11-01T08:00:00.000Z",
            ),
            // An old decision's override approved after a newer assessment of the same tool
            // leaves the newer one the latest: d10's review (due 2026-11-19) is overdue, d11's
            // (due 2026-12-10) is not.
            rev("d11", "c8", "assess", "low", "2026-11-10T08:00:00.000Z"),
            with_override(
                rev("d10", "c8", "assess", "low", "2026-10-20T08:00:00.000Z"),
                "high",
                OverrideStatus::Approved,
                "2026-11-30T08:00:00.000Z",
            ),
            // A case closed since its assessment fell due: nothing is due.
            rev("d12", "c9", "assess", "low", "2026-10-02T08:00:00.000Z"),
            rev("d13", "c9", "close", "low", "2026-11-15T08:00:00.000Z"),
            // A closure check at a level that does not close it leaves the review due.
            rev("d14", "c10", "assess", "low", "2026-10-02T08:00:00.000Z"),
            rev("d15", "c10", "close", "medium", "2026-11-15T08:00:00.000Z"),
            // A level's own interval: plan at medium is due after 5 days (2026-11-25), door at
            // medium after 10 (2026-11-21 is due 2026-12-01T08:00, overdue; 2026-11-25 not).
            rev("d16", "c11", "plan", "medium", "2026-11-20T08:00:00.000Z"),
            rev("d17", "c12", "door", "medium", "2026-11-21T08:00:00.000Z"),
            rev("d18", "c13", "door", "medium", "2026-11-25T08:00:00.000Z"),
            // An approved override to medium brings plan's interval to 5 days, counted from the
            // assessment (2026-11-20), not from the approval.
            with_override(
                rev("d19", "c14", "plan", "low", "2026-11-20T09:00:00.000Z"),
                "medium",
                OverrideStatus::Approved,
                "2026-11-29T08:00:00.000Z",
            ),
            // No review period.
            rev("d8", "c7", "door", "low", "2020-01-01T00:00:00.000Z"),
            rev("d9", "c7", "retired", "low", "2020-01-01T00:00:00.000Z"),
        ];
        let d = run(&catalog, revisions);
        let overdue: Vec<(&str, &str, &str, &str)> = d
            .reviews_overdue
            .iter()
            .map(|r| {
                (
                    r.case.as_str(),
                    r.tool.as_str(),
                    r.decision_id.as_str(),
                    r.due.as_str(),
                )
            })
            .collect();
        assert_eq!(
            overdue,
            [
                ("c6", "plan", "d7", "2026-09-30T08:00:00Z"),
                ("c5", "plan", "d6", "2026-10-31T08:00:00Z"),
                ("c1", "assess", "d1", "2026-11-01T08:00:00Z"),
                ("c10", "assess", "d14", "2026-11-01T08:00:00Z"),
                ("c11", "plan", "d16", "2026-11-25T08:00:00Z"),
                ("c14", "plan", "d19", "2026-11-25T09:00:00Z"),
                ("c12", "door", "d17", "2026-12-01T08:00:00Z"),
                ("c3", "check", "d4", "2026-12-01T12:00:00Z"),
            ]
        );
    }

    #[test]
    fn the_latest_decision_does_not_depend_on_arrival_order_or_the_clock() {
        let (_dir, catalog) = catalog();
        // Two assessments in the same millisecond: a new decision, then an amendment of an
        // older one (the smaller id) recorded after it in the journal. The journal decides.
        let at = "2026-10-01T08:00:00.000Z";
        let mut first = rev(
            "0190a000-0000-7000-8000-000000000002",
            "c",
            "assess",
            "low",
            at,
        );
        first.assessed.seq = 10;
        let mut amended = rev(
            "0190a000-0000-7000-8000-000000000001",
            "c",
            "assess",
            "low",
            at,
        );
        amended.assessed.seq = 11;
        for order in [vec![first.clone(), amended.clone()], vec![amended, first]] {
            let journey = crate::decisions::journey("c", &order, &catalog, Utc::now());
            assert_eq!(
                journey.latest["assess"].decision_id,
                "0190a000-0000-7000-8000-000000000001"
            );
            let d = run(&catalog, order);
            assert_eq!(d.reviews_overdue.len(), 1);
            assert_eq!(
                d.reviews_overdue[0].decision_id,
                "0190a000-0000-7000-8000-000000000001"
            );
        }
    }

    #[test]
    fn an_empty_store_gives_zeroes() {
        let (_dir, catalog) = catalog();
        let d = run(&catalog, vec![]);
        assert!(d.pending_overrides.is_empty());
        assert!(d.weekly.is_empty());
        assert!(d.override_rate_by_tool.is_empty());
        assert!(d.reviews_overdue.is_empty());
        assert_eq!(d.cases_per_stage.len(), 8);
        assert!(d.cases_per_stage.values().all(|n| *n == 0));
        serde_json::to_string(&d).unwrap();
    }

    /// The dashboard and the case journey, over the same stored decisions, agree on every case's
    /// stage and every overdue review.
    #[tokio::test]
    async fn stages_overdue_reviews_and_holds_agree_with_the_case_journey() {
        use crate::decisions::Decisions;
        use crate::store::{SledStore, Store, StoreOptions};

        let tools = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            cache_bytes: 1 << 20,
            ..StoreOptions::default()
        };
        let store: Arc<dyn Store> = Arc::new(SledStore::open(data.path(), options).unwrap());
        let service = Decisions::new(write_catalog(tools.path()), Arc::clone(&store)).unwrap();
        let pat = || actor("pat", Role::Practitioner);
        let submit = |case: &'static str, tool: &'static str| {
            let service = &service;
            async move {
                service
                    .submit(case, tool, json!({}), pat(), None)
                    .await
                    .unwrap()
                    .revision
            }
        };
        submit("c1", "door").await;
        submit("c1", "assess").await;
        let older = submit("c2", "assess").await;
        submit("c2", "assess").await;
        submit("c2", "plan").await;
        submit("c3", "check").await;
        submit("c4", "org").await;
        // Closed: nothing due, whatever a tool of any stage records after. Reopened by a
        // front-door decision after its closure.
        submit("c6", "assess").await;
        submit("c6", "close").await;
        submit("c6", "check").await;
        submit("c7", "plan").await;
        submit("c7", "close").await;
        submit("c7", "door").await;
        // Held at `low`, then assessed again at `medium`: the newer assessment releases it.
        submit("c8", "assess").await;
        service
            .submit("c8", "assess", json!({"level": "medium"}), pat(), None)
            .await
            .unwrap();
        // A front door at `medium` (reviewed after 10 days), then at `low` (never reviewed): the
        // newer decision has no review, and the older one is not the tool's latest.
        for level in ["medium", "low"] {
            service
                .submit("c9", "door", json!({"level": level}), pat(), None)
                .await
                .unwrap();
        }
        submit("c5", "door").await;
        let d = submit("c5", "assess").await;
        service
            .override_level(&d.decision_id, "medium", "new concerns", 1, pat())
            .await
            .unwrap();
        // The older of c2's assessments overridden and approved after the newer one was made.
        service
            .override_level(&older.decision_id, "high", "new concerns", 1, pat())
            .await
            .unwrap();
        service
            .approve(&older.decision_id, 2, actor("sue", Role::Supervisor))
            .await
            .unwrap();

        // A month on: assessments (30 days) and checks (7) are overdue, plans (60) are not.
        let now = Utc::now() + chrono::Duration::days(31);
        let cases = ["c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9"];
        let latest: Vec<Standing> = cases
            .iter()
            .flat_map(|c| store.case_decisions(c).unwrap())
            .map(|r| Standing::of(store.as_ref(), r).unwrap())
            .collect();
        let board = dashboard(&service.catalog(), latest.into_iter(), now);

        let mut stages: BTreeMap<String, u64> =
            (0..=LAST_STAGE).map(|s| (s.to_string(), 0)).collect();
        let mut overdue = Vec::new();
        let mut held = Vec::new();
        for case in cases {
            let journey = service.journey(case, now).unwrap();
            held.extend(journey.held.iter().map(|h| HeldCase {
                case: case.to_owned(),
                stage: journey.stage,
                tool: h.tool.clone(),
                decision_id: h.decision_id.clone(),
                level: h.level.clone(),
                since: h.since.clone(),
            }));
            if case == "c4" {
                // Only an agency's own assessment: no child's case, so nothing of the journey is
                // due, and the dashboard does not count it at a stage.
                assert!(
                    journey.due.iter().all(|d| d.why != "not-done"),
                    "{journey:?}"
                );
            } else {
                *stages.get_mut(&journey.stage.to_string()).unwrap() += 1;
            }
            for due in journey.due.iter().filter(|d| d.why == "review-overdue") {
                overdue.push((
                    case.to_owned(),
                    due.tool.clone(),
                    journey.latest[&due.tool].decision_id.clone(),
                    due.since.clone().unwrap(),
                ));
            }
        }
        overdue.sort();
        let mut from_board: Vec<(String, String, String, String)> = board
            .reviews_overdue
            .iter()
            .map(|r| {
                (
                    r.case.clone(),
                    r.tool.clone(),
                    r.decision_id.clone(),
                    r.due.clone(),
                )
            })
            .collect();
        from_board.sort();

        assert_eq!(board.cases_per_stage, stages);
        // Held: c1 and c5 (its override up still pending) at stage 1 by `assess` at `low`; not
        // c2, which has gone on to stage 3, nor c6, closed, nor c8, assessed again at `medium`.
        let held_cases: Vec<(&str, &str)> = board
            .cases_held
            .iter()
            .map(|h| (h.case.as_str(), h.tool.as_str()))
            .collect();
        assert_eq!(held_cases, [("c1", "assess"), ("c5", "assess")]);
        held.sort_by(|a, b| (&a.since, &a.case).cmp(&(&b.since, &b.case)));
        assert_eq!(board.cases_held, held);
        assert_eq!(stages["0"], 2, "c3 and c9 are at stage 0: {stages:?}");
        assert_eq!(stages["1"], 3, "c1, c5 and c8: {stages:?}");
        assert_eq!(stages["3"], 1);
        assert_eq!(stages["7"], 2, "c6 closed and c7 reopened: {stages:?}");
        assert!(service.journey("c6", now).unwrap().closed.is_some());
        assert!(service.journey("c7", now).unwrap().closed.is_none());
        assert_eq!(from_board, overdue);
        let tools: Vec<(&str, &str)> = overdue
            .iter()
            .map(|(c, t, _, _)| (c.as_str(), t.as_str()))
            .collect();
        assert_eq!(
            tools,
            [
                ("c1", "assess"),
                ("c2", "assess"),
                ("c3", "check"),
                ("c5", "assess"),
                ("c8", "assess")
            ]
        );
        assert_ne!(
            overdue[1].2, older.decision_id,
            "the newer assessment stays c2's latest"
        );
        assert_eq!(board.pending_overrides.len(), 1);
        assert_eq!(board.pending_overrides[0].decision_id, d.decision_id);
    }
}
