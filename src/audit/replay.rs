//! Replay and impact analysis: re-run stored decisions' inputs against (a) the version that made
//! each of them, which must reproduce every stored outcome exactly, (b) another stored version,
//! or (c) candidate rules, params and/or schema patch, and report what would change.
//!
//! It streams: a reader thread walks the tool's decisions in the store and deals raw revisions in
//! batches to one worker per core; each worker decodes, filters, evaluates and keeps a partial
//! report whose size is bounded by the number of levels and the page asked for, never by the
//! number of decisions. The partial reports are merged at the end.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::export::{Filter, FilterError};
use super::Cancel;
use crate::catalog::{self, Catalog, Change, LoadError, Tool};
use crate::rules::{EvalError, Limits, Outcome};
use crate::store::{decode_revision, Store, StoreError};

/// What to replay, and against what.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// The tool whose decisions are replayed.
    pub tool: String,
    /// Only decisions whose level in force is this.
    #[serde(default)]
    pub level: Option<String>,
    /// Only this case's decisions.
    #[serde(default)]
    pub case: Option<String>,
    /// Only decisions whose latest revision was recorded at or after this time (RFC 3339).
    #[serde(default)]
    #[schema(format = DateTime)]
    pub from: Option<String>,
    /// ... and before this time.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub to: Option<String>,
    pub against: Target,
    /// The page of changed decisions to return: skip this many (in journal order)...
    #[serde(default, deserialize_with = "crate::whole::required")]
    pub offset: usize,
    /// ... and return at most this many (at most 1000).
    #[serde(default = "default_limit", deserialize_with = "crate::whole::required")]
    #[schema(maximum = 1000)]
    pub limit: usize,
}

fn default_limit() -> usize {
    100
}

/// The most changed decisions one page may hold.
pub const MAX_LIMIT: usize = 1000;
/// The most rejected inputs listed (all are counted).
pub const MAX_REJECTED: usize = 100;

/// What the decisions are re-run against.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Target {
    /// Each decision against the version that made it: every outcome must be reproduced exactly.
    /// (An empty struct variant, not a unit one, so that serde refuses fields beside the kind.)
    Recorded {},
    /// Another stored version of the tool, by digest.
    Version { digest: String },
    /// The version served now (or the stored version `base`), changed as a plugin would change
    /// it: replacement rules, params merged over its own, and/or a schema merge patch.
    Candidate {
        #[serde(default)]
        base: Option<String>,
        #[serde(default)]
        rules: Option<String>,
        #[serde(default)]
        #[schema(value_type = Option<Object>)]
        params: Option<Value>,
        #[serde(default)]
        #[schema(value_type = Option<Object>)]
        schema_patch: Option<Value>,
    },
}

/// Why a replay could not run at all (a rejected input is not one of these: it is reported).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("there is no tool {0:?}")]
    UnknownTool(String),
    #[error("no version {0} of this tool is stored")]
    UnknownVersion(String),
    #[error("the candidate does not load")]
    CandidateInvalid(Vec<LoadError>),
    #[error("{1}")]
    InvalidRequest(String, String),
    /// A well-formed filter that could only be a mistake (see `export::check_filter`).
    #[error("{1}")]
    InvalidFilter(String, String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the replay was cancelled: nobody waits for it any more")]
    Cancelled,
}

/// What the replay found.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReplayReport {
    pub tool: String,
    /// `recorded`, `version <digest>` or `candidate`.
    pub against: String,
    /// The digest of the version replayed against, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_digest: Option<String>,
    /// Decisions that matched the filter.
    pub considered: u64,
    /// Decisions the target decided (the rest were rejected or failed).
    pub replayed: u64,
    pub unchanged: u64,
    /// Decisions the target decides differently: another level, score or flags, or other
    /// reasons (codes or points).
    pub changed: u64,
    /// Decisions the target makes the same but words differently (its recommendation,
    /// explanation or a reason's text), as when a cut-point a reason names moves but no level
    /// does. Listed in `changes` only when replaying against `recorded`, where any difference
    /// is a failure to reproduce.
    pub reworded: u64,
    /// For `recorded`: decisions whose stored outcome was not reproduced exactly (changed,
    /// reworded or rejected). Any is a reproducibility failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub irreproducible: Option<u64>,
    /// The order of the matrix's rows and columns: the tool's levels, least to most serious.
    pub levels: Vec<String>,
    /// `matrix[i][j]`: decisions stored at `levels[i]` that the target decides at `levels[j]`.
    pub matrix: Vec<Vec<u64>>,
    /// How many decisions' scores moved by how much (target minus stored), where both score.
    pub score_shift: Vec<Shift>,
    /// The page of changed decisions (against `recorded`, reworded ones too), in journal order.
    pub changes: Vec<Changed>,
    pub offset: usize,
    pub limit: usize,
    /// Inputs the target rejects or fails on: all counted, the first listed.
    pub rejected_count: u64,
    pub rejected: Vec<Rejected>,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Shift {
    pub shift: f64,
    pub count: u64,
}

/// One decision the target decides differently.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Changed {
    pub decision_id: String,
    pub case: String,
    pub seq: u64,
    pub old_level: String,
    pub new_level: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f64>)]
    pub old_score: Option<serde_json::Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f64>)]
    pub new_score: Option<serde_json::Number>,
    /// Reason codes the target gives that the stored outcome did not.
    pub reasons_added: Vec<String>,
    /// Reason codes the stored outcome had that the target does not give.
    pub reasons_removed: Vec<String>,
    /// Reason codes in both, with different points or text.
    pub reasons_changed: Vec<String>,
    /// The same decision in other words (see `reworded` in the report).
    pub reworded: bool,
}

/// An input the target rejects (invalid under its schema) or fails on.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Rejected {
    pub decision_id: String,
    pub seq: u64,
    pub error: String,
}

/// Runs a replay; `progress` is called with the number of decisions considered so far. Stops
/// with [`ReplayError::Cancelled`] soon after `cancel` is set.
pub fn replay(
    store: &dyn Store,
    catalog: &Catalog,
    request: &ReplayRequest,
    limits: Limits,
    progress: &(dyn Fn(u64) + Sync),
    cancel: &Cancel,
) -> Result<ReplayReport, ReplayError> {
    let started = Instant::now();
    let filter = Filter {
        tool: Some(request.tool.clone()),
        level: request.level.clone(),
        case: request.case.clone(),
        from: request.from.clone(),
        to: request.to.clone(),
    };
    if request.limit > MAX_LIMIT {
        return Err(ReplayError::InvalidRequest(
            "/limit".into(),
            format!("limit is at most {MAX_LIMIT}"),
        ));
    }
    // The tool and version first: one that does not exist is a 404, not a filter's typo.
    let (target, against) = target_tool(store, catalog, request, limits)?;
    super::export::check_filter(store, &filter).map_err(|e| match e {
        FilterError::UnknownTool(tool) => ReplayError::UnknownTool(tool),
        FilterError::Malformed { field, message } => {
            ReplayError::InvalidRequest(format!("/{field}"), message)
        }
        FilterError::Invalid { field, message } => {
            ReplayError::InvalidFilter(format!("/{field}"), message)
        }
        FilterError::Store(e) => ReplayError::Store(e),
    })?;
    let levels: Vec<String> = match (&target, catalog.get(&request.tool)) {
        (Some(tool), _) => tool.levels().to_vec(),
        (None, Some(tool)) => tool.levels().to_vec(),
        (None, None) => Vec::new(),
    };
    let keep = request.offset.saturating_add(request.limit);
    let list_reworded = matches!(request.against, Target::Recorded {});
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let considered = std::sync::atomic::AtomicU64::new(0);

    let partials = std::thread::scope(|scope| -> Result<Vec<Partial>, ReplayError> {
        let (batch_tx, batch_rx) = mpsc::sync_channel::<Vec<Vec<u8>>>(workers * 2);
        let batch_rx = Arc::new(std::sync::Mutex::new(batch_rx));
        let mut handles = Vec::new();
        for _ in 0..workers {
            let batch_rx = Arc::clone(&batch_rx);
            let target = target.clone();
            let filter = &filter;
            let considered = &considered;
            handles.push(scope.spawn(move || -> Result<Partial, StoreError> {
                let mut partial = Partial {
                    list_reworded,
                    ..Partial::default()
                };
                let mut versions: HashMap<String, Option<Arc<Tool>>> = HashMap::new();
                loop {
                    let batch = match batch_rx.lock().expect("batch lock poisoned").recv() {
                        Ok(batch) => batch,
                        Err(_) => break,
                    };
                    for bytes in batch {
                        // Checked before each decision, whose script may run for up to its time
                        // limit: work nobody waits for stops within one decision per worker,
                        // not after every batch already dealt. What was done is thrown away.
                        if cancel.is_cancelled() {
                            return Ok(partial);
                        }
                        let revision = decode_revision(&bytes)?;
                        if !filter.matches(&revision) {
                            continue;
                        }
                        let n = considered.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        if n % 10_000 == 0 {
                            progress(n);
                        }
                        let tool = match &target {
                            Some(tool) => Some(Arc::clone(tool)),
                            None => versions
                                .entry(revision.tool.digest.clone())
                                .or_insert_with(|| {
                                    recorded_version(store, catalog, &revision.tool.digest, limits)
                                })
                                .clone(),
                        };
                        let result = match &tool {
                            Some(tool) => tool.evaluate(&revision.input).map_err(|e| describe(&e)),
                            None => Err(format!(
                                "the version {} that made it is not stored",
                                revision.tool.digest
                            )),
                        };
                        partial.add(&revision, result, keep);
                    }
                }
                Ok(partial)
            }));
        }
        // Only the workers hold the receiving end: when they have all stopped (cancelled), the
        // reader's next send fails instead of waiting for ever on a full channel.
        drop(batch_rx);
        // The reader: this thread walks the store and deals batches.
        let mut batch = Vec::with_capacity(256);
        for bytes in store.latest_raw(Some(&request.tool)) {
            batch.push(bytes?);
            if batch.len() == 256 {
                if cancel.is_cancelled() {
                    // Dropping the sender ends the workers, which stop at their next decision.
                    return Err(ReplayError::Cancelled);
                }
                let full = std::mem::replace(&mut batch, Vec::with_capacity(256));
                if batch_tx.send(full).is_err() {
                    break;
                }
            }
        }
        if !batch.is_empty() {
            let _ = batch_tx.send(batch);
        }
        drop(batch_tx);
        let mut partials = Vec::new();
        for handle in handles {
            partials.push(handle.join().expect("replay workers do not panic")?);
        }
        // Cancelled after every batch was dealt (a small store's are, at once): the workers
        // stopped early, and their partial counts must not pass for a report.
        if cancel.is_cancelled() {
            return Err(ReplayError::Cancelled);
        }
        Ok(partials)
    })?;

    let mut total = Partial::default();
    for p in partials {
        total.merge(p, keep);
    }
    progress(total.considered);
    Ok(total.report(
        request,
        against,
        target.map(|t| t.digest.clone()),
        levels,
        started,
    ))
}

/// The single tool a replay runs against, or `None` for `recorded` (each decision's own).
fn target_tool(
    store: &dyn Store,
    catalog: &Catalog,
    request: &ReplayRequest,
    limits: Limits,
) -> Result<(Option<Arc<Tool>>, String), ReplayError> {
    let stored = |digest: &str| -> Result<Arc<Tool>, ReplayError> {
        if let Some(tool) = catalog.get(&request.tool).filter(|t| t.digest == digest) {
            return Ok(Arc::clone(tool));
        }
        let snapshot = store
            .snapshot(digest)?
            .ok_or_else(|| ReplayError::UnknownVersion(digest.to_owned()))?;
        let tool = catalog::rebuild(&snapshot, limits).map_err(ReplayError::CandidateInvalid)?;
        if tool.id() != request.tool {
            return Err(ReplayError::UnknownVersion(digest.to_owned()));
        }
        Ok(Arc::new(tool))
    };
    match &request.against {
        Target::Recorded {} => {
            if catalog.get(&request.tool).is_none() && store.versions(&request.tool)?.is_empty() {
                return Err(ReplayError::UnknownTool(request.tool.clone()));
            }
            Ok((None, "recorded".into()))
        }
        Target::Version { digest } => Ok((Some(stored(digest)?), format!("version {digest}"))),
        Target::Candidate {
            base,
            rules,
            params,
            schema_patch,
        } => {
            let base = match base {
                Some(digest) => stored(digest)?,
                None => Arc::clone(
                    catalog
                        .get(&request.tool)
                        .ok_or_else(|| ReplayError::UnknownTool(request.tool.clone()))?,
                ),
            };
            let change = Change {
                params: params.clone(),
                schema_patch: schema_patch.clone(),
                rules: rules.clone(),
            };
            let tool = catalog::candidate(&base, &change, catalog.core_sources(), limits)
                .map_err(ReplayError::CandidateInvalid)?;
            Ok((Some(Arc::new(tool)), "candidate".into()))
        }
    }
}

/// The version that made a decision: the catalog's when it still serves it, else rebuilt from
/// its snapshot.
fn recorded_version(
    store: &dyn Store,
    catalog: &Catalog,
    digest: &str,
    limits: Limits,
) -> Option<Arc<Tool>> {
    if let Some(tool) = catalog.tools().find(|t| t.digest == digest) {
        return Some(Arc::clone(tool));
    }
    let snapshot = store.snapshot(digest).ok()??;
    catalog::rebuild(&snapshot, limits).ok().map(Arc::new)
}

fn describe(e: &EvalError) -> String {
    match e {
        EvalError::InvalidForm(violations) => {
            let parts: Vec<String> = violations
                .iter()
                .map(|v| format!("{:?}: {}", v.path, v.message))
                .collect();
            format!("invalid under the target's schema: {}", parts.join("; "))
        }
        other => other.to_string(),
    }
}

/// One worker's share of the report.
#[derive(Default)]
struct Partial {
    /// Whether reworded decisions are listed with the changed ones (a replay against
    /// `recorded`, where they fail to reproduce).
    list_reworded: bool,
    considered: u64,
    replayed: u64,
    unchanged: u64,
    changed: u64,
    reworded: u64,
    matrix: HashMap<(String, String), u64>,
    /// Shift in millionths, so equal shifts group exactly.
    shifts: BTreeMap<i64, u64>,
    changes: BTreeMap<u64, Changed>,
    rejected_count: u64,
    rejected: BTreeMap<u64, Rejected>,
}

impl Partial {
    fn add(
        &mut self,
        revision: &crate::store::Revision,
        result: Result<Outcome, String>,
        keep: usize,
    ) {
        self.considered += 1;
        let old = &revision.outcome;
        let new = match result {
            Ok(new) => new,
            Err(error) => {
                self.rejected_count += 1;
                self.rejected.insert(
                    revision.seq,
                    Rejected {
                        decision_id: revision.decision_id.clone(),
                        seq: revision.seq,
                        error,
                    },
                );
                trim(&mut self.rejected, MAX_REJECTED);
                return;
            }
        };
        self.replayed += 1;
        *self
            .matrix
            .entry((old.level.clone(), new.level.clone()))
            .or_default() += 1;
        if let (Some(a), Some(b)) = (&old.score, &new.score) {
            if let (Some(a), Some(b)) = (a.as_f64(), b.as_f64()) {
                *self
                    .shifts
                    .entry(((b - a) * 1e6).round() as i64)
                    .or_default() += 1;
            }
        }
        if *old == new {
            self.unchanged += 1;
            return;
        }
        let reworded = old.same_decision(&new);
        if reworded {
            self.reworded += 1;
            if !self.list_reworded {
                return;
            }
        } else {
            self.changed += 1;
        }
        let codes = |o: &Outcome| -> BTreeMap<String, (String, String)> {
            o.reasons
                .iter()
                .map(|r| (r.code.clone(), (r.points.to_string(), r.text.clone())))
                .collect()
        };
        let (before, after) = (codes(old), codes(&new));
        let keys = |m: &BTreeMap<String, _>| m.keys().cloned().collect::<BTreeSet<String>>();
        let (kb, ka) = (keys(&before), keys(&after));
        self.changes.insert(
            revision.seq,
            Changed {
                decision_id: revision.decision_id.clone(),
                case: revision.case_id.clone(),
                seq: revision.seq,
                old_level: old.level.clone(),
                new_level: new.level.clone(),
                old_score: old.score.clone(),
                new_score: new.score.clone(),
                reasons_added: ka.difference(&kb).cloned().collect(),
                reasons_removed: kb.difference(&ka).cloned().collect(),
                reasons_changed: kb
                    .intersection(&ka)
                    .filter(|code| before[*code] != after[*code])
                    .cloned()
                    .collect(),
                reworded,
            },
        );
        trim(&mut self.changes, keep);
    }

    fn merge(&mut self, other: Partial, keep: usize) {
        self.considered += other.considered;
        self.replayed += other.replayed;
        self.unchanged += other.unchanged;
        self.changed += other.changed;
        self.reworded += other.reworded;
        for (k, v) in other.matrix {
            *self.matrix.entry(k).or_default() += v;
        }
        for (k, v) in other.shifts {
            *self.shifts.entry(k).or_default() += v;
        }
        self.changes.extend(other.changes);
        trim(&mut self.changes, keep);
        self.rejected_count += other.rejected_count;
        self.rejected.extend(other.rejected);
        trim(&mut self.rejected, MAX_REJECTED);
    }

    fn report(
        self,
        request: &ReplayRequest,
        against: String,
        target_digest: Option<String>,
        mut levels: Vec<String>,
        started: Instant,
    ) -> ReplayReport {
        for (from, to) in self.matrix.keys() {
            for level in [from, to] {
                if !levels.contains(level) {
                    levels.push(level.clone());
                }
            }
        }
        let index = |l: &str| {
            levels
                .iter()
                .position(|x| x == l)
                .expect("every level was added")
        };
        let mut matrix = vec![vec![0u64; levels.len()]; levels.len()];
        for ((from, to), count) in &self.matrix {
            matrix[index(from)][index(to)] += count;
        }
        let recorded = matches!(request.against, Target::Recorded {});
        ReplayReport {
            tool: request.tool.clone(),
            against,
            target_digest,
            considered: self.considered,
            replayed: self.replayed,
            unchanged: self.unchanged,
            changed: self.changed,
            reworded: self.reworded,
            irreproducible: recorded.then_some(self.changed + self.reworded + self.rejected_count),
            levels,
            matrix,
            score_shift: self
                .shifts
                .into_iter()
                .map(|(shift, count)| Shift {
                    shift: shift as f64 / 1e6,
                    count,
                })
                .collect(),
            changes: self
                .changes
                .into_values()
                .skip(request.offset)
                .take(request.limit)
                .collect(),
            offset: request.offset,
            limit: request.limit,
            rejected_count: self.rejected_count,
            rejected: self.rejected.into_values().collect(),
            elapsed_ms: started.elapsed().as_millis() as u64,
        }
    }
}

/// Keeps the `n` entries with the smallest keys.
fn trim<V>(map: &mut BTreeMap<u64, V>, n: usize) {
    while map.len() > n {
        map.pop_last();
    }
}

/// The report as text for a terminal: the matrix, the shifts, the page of changes.
pub fn render(report: &ReplayReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "replay of {} against {}{}",
        report.tool,
        report.against,
        // `version <digest>` names it already.
        report
            .target_digest
            .as_deref()
            .filter(|d| !report.against.contains(d))
            .map(|d| format!(" ({d})"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "{} decision(s) considered, {} replayed, {} unchanged, {} changed, {} reworded, {} rejected, in {} ms",
        report.considered,
        report.replayed,
        report.unchanged,
        report.changed,
        report.reworded,
        report.rejected_count,
        report.elapsed_ms
    );
    if let Some(n) = report.irreproducible {
        let _ = writeln!(
            out,
            "{}",
            if n == 0 {
                "every stored outcome was reproduced exactly".to_owned()
            } else {
                format!("REPRODUCIBILITY FAILURE: {n} stored outcome(s) were not reproduced")
            }
        );
    }
    let width = report
        .levels
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(4)
        .max(8);
    let _ = writeln!(out, "\nlevel change (rows: stored, columns: replayed)");
    let _ = write!(out, "{:>width$}", "");
    for l in &report.levels {
        let _ = write!(out, " {l:>width$}");
    }
    let _ = writeln!(out);
    for (i, row) in report.matrix.iter().enumerate() {
        let _ = write!(out, "{:>width$}", report.levels[i]);
        for n in row {
            let _ = write!(out, " {n:>width$}");
        }
        let _ = writeln!(out);
    }
    if !report.score_shift.is_empty() {
        let shifts: Vec<String> = report
            .score_shift
            .iter()
            .map(|s| format!("{:+}: {}", s.shift, s.count))
            .collect();
        let _ = writeln!(out, "\nscore shift: {}", shifts.join(", "));
    }
    for c in &report.changes {
        let _ = writeln!(
            out,
            "  {} (case {}): {} -> {}{}{}{}",
            c.decision_id,
            c.case,
            c.old_level,
            c.new_level,
            if c.reworded { " (reworded only)" } else { "" },
            if c.reasons_added.is_empty() {
                String::new()
            } else {
                format!("; added {}", c.reasons_added.join(", "))
            },
            if c.reasons_removed.is_empty() {
                String::new()
            } else {
                format!("; removed {}", c.reasons_removed.join(", "))
            },
        );
    }
    for r in &report.rejected {
        let _ = writeln!(out, "  rejected {}: {}", r.decision_id, r.error);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use crate::decisions::Decisions;
    use crate::store::{Actor, SledStore, StoreOptions};
    use serde_json::json;

    /// A store of `n` threshold decisions (cases `c0`..), with the service over it.
    async fn threshold_decisions(n: usize) -> (tempfile::TempDir, Arc<dyn Store>, Arc<Decisions>) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let case: Value = serde_json::from_str(
            &std::fs::read_to_string(
                root.join("tests/cases/threshold/all-needs-met-is-universal.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let data = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            cache_bytes: 1 << 20,
            ..StoreOptions::default()
        };
        let store: Arc<dyn Store> = Arc::new(SledStore::open(data.path(), options).unwrap());
        let catalog = Catalog::load(root).unwrap();
        let decisions = Arc::new(Decisions::new(catalog, Arc::clone(&store)).unwrap());
        let actor = Actor {
            subject: "pat".into(),
            role: Role::Practitioner,
        };
        // 64 at a time, so that one flush serves many.
        let mut submits = tokio::task::JoinSet::new();
        for n in 0..n {
            if submits.len() == 64 {
                submits.join_next().await.unwrap().unwrap();
            }
            let (decisions, input, actor) =
                (Arc::clone(&decisions), case["input"].clone(), actor.clone());
            submits.spawn(async move {
                decisions
                    .submit(&format!("c{n}"), "threshold", input, actor, None)
                    .await
                    .unwrap();
            });
        }
        while let Some(done) = submits.join_next().await {
            done.unwrap();
        }
        (data, store, decisions)
    }

    /// Replays every threshold decision against what was recorded.
    fn run(
        store: &dyn Store,
        decisions: &Decisions,
        cancel: &Cancel,
    ) -> Result<ReplayReport, ReplayError> {
        let request: ReplayRequest =
            serde_json::from_value(json!({"tool": "threshold", "against": {"kind": "recorded"}}))
                .unwrap();
        replay(
            store,
            &decisions.catalog(),
            &request,
            Limits::default(),
            &|_| {},
            cancel,
        )
    }

    #[tokio::test]
    async fn a_cancelled_replay_stops_with_no_report() {
        // 300 decisions: the reader sees the cancel at its first full batch. 20: it deals them
        // all before it would look, so the end of the replay must look again, or the workers'
        // partial counts pass for a report.
        for n in [300, 20] {
            let (_data, store, decisions) = threshold_decisions(n).await;

            let cancel = Cancel::default();
            drop(cancel.when_dropped());
            let cancelled = run(store.as_ref(), &decisions, &cancel);

            assert!(matches!(cancelled, Err(ReplayError::Cancelled)), "{n}");
            let report = run(store.as_ref(), &decisions, &Cancel::never()).unwrap();
            assert_eq!(report.considered, n as u64);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replay_of_slow_rules_cancelled_midway_stops_within_a_decision_per_worker() {
        // More decisions than the channel and the workers hold, so the reader waits on a full
        // channel when the cancel comes; each decision of the candidate takes tens of
        // milliseconds, so finishing the batches already dealt would take tens of seconds.
        let (_data, store, decisions) = threshold_decisions(2_400).await;
        let request: ReplayRequest = serde_json::from_value(json!({
            "tool": "threshold",
            "against": {"kind": "candidate", "rules": "fn decide(form, params) {\n    import \"threshold\" as core;\n    let x = 0;\n    for i in 0..20000 { x += 1; }\n    core::decide(form, params)\n}\n"}
        }))
        .unwrap();
        let cancel = Cancel::default();
        let guard = cancel.when_dropped();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let catalog = decisions.catalog();
        std::thread::spawn(move || {
            let result = replay(
                store.as_ref(),
                &catalog,
                &request,
                Limits::default(),
                &|_| {},
                &cancel,
            );
            let _ = done_tx.send(result.map(|r| r.considered));
        });
        std::thread::sleep(std::time::Duration::from_secs(1));
        assert!(
            done_rx.try_recv().is_err(),
            "the replay must still be running"
        );

        drop(guard);
        let ended = done_rx.recv_timeout(std::time::Duration::from_secs(20));

        assert!(
            matches!(ended, Ok(Err(ReplayError::Cancelled))),
            "a cancelled replay must end Cancelled within seconds, not finish its batches or hang: {ended:?}"
        );
    }
}
