//! The decision service: what the API's write routes do, without HTTP. Submitting, amending,
//! overriding and approving each evaluate or check what they must, then append one revision to
//! the store and return it once it is durable.
//!
//! The catalog is held behind a lock only long enough to clone its `Arc`, so a reload swaps it
//! whole and a request in flight finishes on the catalog it started with.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use serde_json::{json, Value};

use crate::auth::Role;
use crate::catalog::{digest, Catalog, Direction, NamedStage, OutcomeDecl, Stage, Tool, ToolMeta};
use crate::rules::EvalError;
use crate::store::{
    Actor, Appended, Assessment, Declined, Draft, IdempotencyKey, Override, OverrideStatus,
    Precondition, Revision, RevisionKind, Store, StoreError, ToolRef,
};

/// Why a decision operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    #[error("there is no tool {0:?}")]
    UnknownTool(String),
    #[error("there is no decision {0:?}")]
    UnknownDecision(String),
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error("{message}")]
    InvalidOverride {
        field: &'static str,
        message: String,
    },
    #[error("decision {0} has no override waiting for a supervisor (to approve or decline)")]
    NoPendingOverride(String),
    #[error("an override must be approved by someone other than the person who made it")]
    FourEyes,
    #[error("only a supervisor, or the practitioner who asked for it, may decline an override")]
    NotTheAuthor,
    #[error(
        "decision {decision_id} is at revision {current}, not {expected}: reload it and try again"
    )]
    Conflict {
        decision_id: String,
        expected: u32,
        current: u32,
    },
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyMismatch,
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for DecisionError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownDecision(id) => DecisionError::UnknownDecision(id),
            StoreError::Conflict {
                decision_id,
                expected,
                current,
            } => DecisionError::Conflict {
                decision_id,
                expected,
                current,
            },
            StoreError::IdempotencyMismatch => DecisionError::IdempotencyMismatch,
            other => DecisionError::Store(other),
        }
    }
}

pub type DecisionResult<T> = Result<T, DecisionError>;

/// The decision service, shared by every request.
pub struct Decisions {
    catalog: RwLock<Arc<Catalog>>,
    store: Arc<dyn Store>,
    /// `x-tool` of stored tool versions by digest, so override rules follow the version that
    /// made the decision even after the files have changed.
    metas: Mutex<HashMap<String, Arc<ToolMeta>>>,
}

impl Decisions {
    /// The service over `store`, serving `catalog`, whose versions it records first.
    pub fn new(catalog: Catalog, store: Arc<dyn Store>) -> Result<Self, StoreError> {
        register_versions(store.as_ref(), &catalog)?;
        Ok(Decisions {
            catalog: RwLock::new(Arc::new(catalog)),
            store,
            metas: Mutex::new(HashMap::new()),
        })
    }

    /// The catalog in force now.
    pub fn catalog(&self) -> Arc<Catalog> {
        Arc::clone(&self.catalog.read().expect("catalog lock poisoned"))
    }

    /// Puts `catalog` in force for every request that starts from now on, after recording every
    /// version it serves (so `versions` lists a version from the moment it is served).
    pub fn replace_catalog(&self, catalog: Catalog) -> Result<(), StoreError> {
        register_versions(self.store.as_ref(), &catalog)?;
        *self.catalog.write().expect("catalog lock poisoned") = Arc::new(catalog);
        Ok(())
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn tool(&self, id: &str) -> DecisionResult<Arc<Tool>> {
        self.catalog()
            .get(id)
            .cloned()
            .ok_or_else(|| DecisionError::UnknownTool(id.to_owned()))
    }

    /// A dry run: validate and decide, store nothing.
    pub async fn evaluate(
        &self,
        tool_id: &str,
        input: Value,
    ) -> DecisionResult<(Arc<Tool>, crate::rules::Outcome)> {
        let tool = self.tool(tool_id)?;
        let (_, outcome) = decide(&tool, input).await;
        Ok((tool, outcome?))
    }

    /// Decides `input` with `tool_id` for `case_id` and stores the decision.
    pub async fn submit(
        &self,
        case_id: &str,
        tool_id: &str,
        input: Value,
        actor: Actor,
        idempotency_key: Option<String>,
    ) -> DecisionResult<Appended> {
        let idempotency = idempotency_key.map(|key| IdempotencyKey {
            subject: actor.subject.clone(),
            key,
            request_digest: digest(&json!({"case": case_id, "tool": tool_id, "input": input})),
        });
        // A retry is answered with the first decision before anything is evaluated: the tool
        // may have been changed or withdrawn since, and a retry must never fail or decide anew.
        if let Some(key) = &idempotency {
            if let Some(first) = self.store.idempotent(key)? {
                return Ok(Appended {
                    revision: first,
                    replayed: true,
                });
            }
        }
        let tool = self.tool(tool_id)?;
        let (input, outcome) = decide(&tool, input).await;
        let outcome = outcome?;
        let draft = Draft {
            decision_id: uuid::Uuid::now_v7().to_string(),
            kind: RevisionKind::Submitted,
            case_id: case_id.to_owned(),
            tool: tool_ref(&tool),
            snapshot: tool.snapshot(),
            input,
            outcome,
            override_: None,
            actor,
        };
        let appended = self
            .store
            .append(draft, Precondition::New { idempotency })
            .await?;
        if !appended.replayed {
            metrics::counter!("safeguard_decisions_total", "tool" => tool.id().to_owned(), "level" => appended.revision.outcome.level.clone()).increment(1);
        }
        Ok(appended)
    }

    /// Re-evaluates a decision with new input, using the tool version served now. A new
    /// assessment stands alone, with one exception: the level two people last agreed (an
    /// approved override, in force or put aside by a more serious assessment) is in force while
    /// the new assessment is not more serious ([`carried_override`]), so no amendment, nor any
    /// run of them, by one person lowers a level two people agreed. A pending override is
    /// dropped: it was asked for against a different outcome.
    pub async fn amend(
        &self,
        decision_id: &str,
        input: Value,
        expected_revision: u32,
        actor: Actor,
    ) -> DecisionResult<Revision> {
        let latest = self.current(decision_id, expected_revision)?;
        let tool = self.tool(&latest.tool.id)?;
        let (input, outcome) = decide(&tool, input).await;
        let outcome = outcome?;
        let agreed = match latest.override_in_force() {
            Some(agreed) => Some(agreed.clone()),
            // A more serious assessment may have put the agreed level aside: it still binds.
            None => last_agreed(&self.store.history(decision_id)?),
        };
        let override_ = carried_override(&tool.meta, agreed, &outcome.level);
        let draft = Draft {
            decision_id: latest.decision_id,
            kind: RevisionKind::Amended,
            case_id: latest.case_id,
            tool: tool_ref(&tool),
            snapshot: tool.snapshot(),
            input,
            outcome,
            override_,
            actor,
        };
        self.next(draft, expected_revision).await
    }

    /// Overrides the tool's level with a reason; the override waits for a supervisor.
    pub async fn override_level(
        &self,
        decision_id: &str,
        level: &str,
        reason: &str,
        expected_revision: u32,
        actor: Actor,
    ) -> DecisionResult<Revision> {
        let latest = self.current(decision_id, expected_revision)?;
        let meta = self.meta_of(&latest.tool)?;
        check_override(
            &meta,
            &latest.outcome.level,
            latest.effective_level(),
            level,
            reason,
        )?;
        // An approved override stays in force until this one is approved in turn.
        let replaces = latest.override_in_force().cloned().map(Box::new);
        let draft = Draft {
            override_: Some(Override {
                level: level.to_owned(),
                reason: reason.trim().to_owned(),
                by: actor.clone(),
                status: OverrideStatus::Pending,
                approved_by: None,
                declined: None,
                replaces,
            }),
            kind: RevisionKind::Overridden,
            ..carry_over(latest)
        };
        self.next(Draft { actor, ..draft }, expected_revision).await
    }

    /// Approves the pending override, by someone other than the person who made it.
    pub async fn approve(
        &self,
        decision_id: &str,
        expected_revision: u32,
        actor: Actor,
    ) -> DecisionResult<Revision> {
        let latest = self.current(decision_id, expected_revision)?;
        let pending = pending_override(&latest)?;
        // Two subjects that look the same count as one person (`auth::same_holder`).
        if crate::auth::same_holder(&pending.by.subject, &actor.subject) {
            return Err(DecisionError::FourEyes);
        }
        let draft = Draft {
            override_: Some(Override {
                status: OverrideStatus::Approved,
                approved_by: Some(actor.clone()),
                replaces: None,
                ..pending
            }),
            kind: RevisionKind::Approved,
            ..carry_over(latest)
        };
        self.next(Draft { actor, ..draft }, expected_revision).await
    }

    /// Declines the pending override, with a reason: a supervisor's refusal, or its author
    /// withdrawing it. The level in force stays what it was (the tool's, or an override approved
    /// before), and the override is kept on record as declined. Declining changes no level, so
    /// no second person is needed.
    pub async fn decline(
        &self,
        decision_id: &str,
        reason: &str,
        expected_revision: u32,
        actor: Actor,
    ) -> DecisionResult<Revision> {
        let latest = self.current(decision_id, expected_revision)?;
        let pending = pending_override(&latest)?;
        if actor.role != Role::Supervisor && pending.by.subject != actor.subject {
            return Err(DecisionError::NotTheAuthor);
        }
        if !crate::auth::has_words(reason) {
            return Err(DecisionError::InvalidOverride {
                field: "/reason",
                message: "declining an override needs a reason".into(),
            });
        }
        let draft = Draft {
            override_: Some(Override {
                status: OverrideStatus::Declined,
                declined: Some(Declined {
                    by: actor.clone(),
                    reason: reason.trim().to_owned(),
                }),
                ..pending
            }),
            kind: RevisionKind::Declined,
            ..carry_over(latest)
        };
        self.next(Draft { actor, ..draft }, expected_revision).await
    }

    pub fn latest(&self, decision_id: &str) -> DecisionResult<Revision> {
        self.store
            .latest(decision_id)?
            .ok_or_else(|| DecisionError::UnknownDecision(decision_id.to_owned()))
    }

    /// The latest revision, when it is the one a change builds on. A change built on an older
    /// one is a conflict before anything else is checked: its author saw a decision that has
    /// moved on, so what they asked for may no longer make sense (the store checks again, in
    /// the writer, against a change that lands in between).
    fn current(&self, decision_id: &str, expected_revision: u32) -> DecisionResult<Revision> {
        let latest = self.latest(decision_id)?;
        if latest.revision != expected_revision {
            return Err(DecisionError::Conflict {
                decision_id: decision_id.to_owned(),
                expected: expected_revision,
                current: latest.revision,
            });
        }
        Ok(latest)
    }

    pub fn history(&self, decision_id: &str) -> DecisionResult<Vec<Revision>> {
        let history = self.store.history(decision_id)?;
        if history.is_empty() {
            return Err(DecisionError::UnknownDecision(decision_id.to_owned()));
        }
        Ok(history)
    }

    pub fn case_decisions(&self, case_id: &str) -> DecisionResult<Vec<Revision>> {
        Ok(self.store.case_decisions(case_id)?)
    }

    /// Where a case stands: see [`Journey`].
    pub fn journey(
        &self,
        case_id: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> DecisionResult<Journey> {
        let standings = self
            .store
            .case_decisions(case_id)?
            .into_iter()
            .map(|latest| Standing::of(self.store.as_ref(), latest))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(journey(case_id, &standings, &self.catalog(), now))
    }

    async fn next(&self, draft: Draft, expected_revision: u32) -> DecisionResult<Revision> {
        let appended = self
            .store
            .append(draft, Precondition::Next { expected_revision })
            .await?;
        Ok(appended.revision)
    }

    /// A tool's levels, least to most serious: as served, or, for a tool no longer served, as its
    /// latest stored version declared them (its decisions stay on record and can be studied).
    pub fn levels_of(&self, tool_id: &str) -> DecisionResult<Vec<String>> {
        if let Some(tool) = self.catalog().get(tool_id) {
            return Ok(tool.levels().to_vec());
        }
        let latest = self
            .store
            .versions(tool_id)?
            .pop()
            .ok_or_else(|| DecisionError::UnknownTool(tool_id.to_owned()))?;
        let meta = self.meta_of(&ToolRef {
            id: latest.tool,
            version: latest.version,
            digest: latest.digest,
        })?;
        Ok(meta.outcomes.iter().map(|o| o.level.clone()).collect())
    }

    /// The level in force of `revision` as its tool version declares it (label and response),
    /// when an approved override has put it there; `None` when the tool's own level is in force
    /// (its recommendation and explanation say what it asks for).
    pub fn overridden_outcome(&self, revision: &Revision) -> DecisionResult<Option<OutcomeDecl>> {
        let Some(o) = revision.override_in_force() else {
            return Ok(None);
        };
        let meta = self.meta_of(&revision.tool)?;
        Ok(meta.outcomes.iter().find(|d| d.level == o.level).cloned())
    }

    /// The `x-tool` of the version that made a decision: from the catalog when it still serves
    /// that digest, else from the stored snapshot. Cached by digest (a digest names one content for
    /// ever): a decision read under an override asks for it every time.
    fn meta_of(&self, tool: &ToolRef) -> DecisionResult<Arc<ToolMeta>> {
        if let Some(meta) = self
            .metas
            .lock()
            .expect("meta cache poisoned")
            .get(&tool.digest)
        {
            return Ok(Arc::clone(meta));
        }
        let served = self.catalog().get(&tool.id).cloned();
        let meta = match served.filter(|current| current.digest == tool.digest) {
            Some(current) => current.meta.clone(),
            None => {
                let snapshot = self.store.snapshot(&tool.digest)?.ok_or_else(|| {
                    DecisionError::Store(StoreError::Corrupt(format!(
                        "no snapshot stored for {}",
                        tool.digest
                    )))
                })?;
                crate::catalog::snapshot_meta(&snapshot)
                    .map_err(|e| DecisionError::Store(StoreError::Corrupt(e.to_string())))?
            }
        };
        let meta = Arc::new(meta);
        self.metas
            .lock()
            .expect("meta cache poisoned")
            .insert(tool.digest.clone(), Arc::clone(&meta));
        Ok(meta)
    }
}

fn register_versions(store: &dyn Store, catalog: &Catalog) -> Result<(), StoreError> {
    for tool in catalog.tools() {
        store.register_version(&tool_ref(tool), &tool.snapshot())?;
    }
    Ok(())
}

/// Validates `input` and runs `tool`'s rules, and hands the input back. A decision is CPU work of
/// up to the script's time limit (a second), which on an async worker would hold up every other
/// request that worker serves, health checks included; but handing each one to a blocking thread
/// costs more than a typical decision (evaluate requests 0.87-0.89x, BENCHMARKS.md). So a tool
/// runs inline until one of its decisions has been slow ([`Tool::is_slow`]), and on a blocking
/// thread from then on. The tool is seen slow while that script still runs (20 ms into it), so
/// only the decisions of it already running inline by then hold their workers, each at most
/// once per tool version.
async fn decide(
    tool: &Arc<Tool>,
    input: Value,
) -> (Value, Result<crate::rules::Outcome, EvalError>) {
    if !tool.is_slow() {
        let outcome = tool.evaluate(&input);
        return (input, outcome);
    }
    let tool = Arc::clone(tool);
    tokio::task::spawn_blocking(move || {
        let outcome = tool.evaluate(&input);
        (input, outcome)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// The reference a decision keeps to the tool version that made it.
pub fn tool_ref(tool: &Tool) -> ToolRef {
    ToolRef {
        id: tool.id().to_owned(),
        version: tool.meta.version.clone(),
        digest: tool.digest.clone(),
    }
}

/// A draft that repeats `latest` (for revisions that change only the override).
fn carry_over(latest: Revision) -> Draft {
    Draft {
        decision_id: latest.decision_id,
        kind: latest.kind,
        case_id: latest.case_id,
        tool: latest.tool,
        input: latest.input,
        outcome: latest.outcome,
        override_: latest.override_,
        actor: latest.actor,
        // The version is already stored: its first decision stored it.
        snapshot: Arc::new(Value::Null),
    }
}

/// The override an amendment keeps: `agreed`, the last override two people agreed, when the
/// amended assessment's level `assessed` is not more serious than it (lowering the level needs a
/// second person, as any change of level does; kept at an equal level too, or a second
/// amendment could lower it). When the new assessment is more serious it stands alone, and the
/// agreed level still binds a later amendment ([`last_agreed`]); an override at a level the tool
/// no longer declares is dropped.
fn carried_override(meta: &ToolMeta, agreed: Option<Override>, assessed: &str) -> Option<Override> {
    let agreed = agreed?;
    let rank = |level: &str| meta.outcomes.iter().position(|o| o.level == level);
    (rank(&agreed.level)? >= rank(assessed)?).then_some(Override {
        replaces: None,
        ..agreed
    })
}

/// The override last in force in a decision's `history` (oldest first): the level two people
/// last agreed, which a more serious assessment puts aside but does not undo. Only another
/// approved override changes it.
fn last_agreed(history: &[Revision]) -> Option<Override> {
    history
        .iter()
        .rev()
        .find_map(Revision::override_in_force)
        .cloned()
}

/// The override of `latest` that waits for a supervisor, for an approval or a refusal.
fn pending_override(latest: &Revision) -> DecisionResult<Override> {
    latest
        .override_
        .clone()
        .filter(|o| o.status == OverrideStatus::Pending)
        .ok_or_else(|| DecisionError::NoPendingOverride(latest.decision_id.clone()))
}

/// The override policy of `x-tool.override`, checked against the tool's own level.
/// Whether an override from the tool's level `from` to `to` may be asked for, with the level
/// `in_force` now (the tool's, or an approved override's). The policy bounds the distance from
/// the tool's own decision; going back to it is how an approved override is withdrawn.
fn check_override(
    meta: &ToolMeta,
    from: &str,
    in_force: &str,
    to: &str,
    reason: &str,
) -> DecisionResult<()> {
    let invalid = |field, message: String| Err(DecisionError::InvalidOverride { field, message });
    if !crate::auth::has_words(reason) {
        return invalid("/reason", "an override needs a reason".into());
    }
    let levels: Vec<&str> = meta.outcomes.iter().map(|o| o.level.as_str()).collect();
    let Some(to_rank) = levels.iter().position(|l| *l == to) else {
        return invalid(
            "/level",
            format!(
                "{to:?} is not a level of {} ({})",
                meta.id,
                levels.join(", ")
            ),
        );
    };
    let from_rank = levels.iter().position(|l| *l == from).unwrap_or(to_rank);
    if to == in_force {
        return invalid(
            "/level",
            if in_force == from {
                format!("the tool already decided {to:?}")
            } else {
                format!("{to:?} is already the level in force (an approved override)")
            },
        );
    }
    let Some(policy) = meta.override_policy else {
        return Ok(());
    };
    // Back towards the tool's level from an approved override (an amendment may have carried one
    // further from the new assessment than the policy would allow now): always allowed, as
    // going all the way back is.
    if let Some(in_force_rank) = levels.iter().position(|l| *l == in_force) {
        let (low, high) = (from_rank.min(in_force_rank), from_rank.max(in_force_rank));
        if (low..=high).contains(&to_rank) {
            return Ok(());
        }
    }
    match policy.direction {
        Direction::Up if to_rank < from_rank => {
            return invalid(
                "/level",
                format!("{}'s override policy allows only overrides up (to a more serious level than {from:?})", meta.id),
            )
        }
        Direction::Down if to_rank > from_rank => {
            return invalid(
                "/level",
                format!("{}'s override policy allows only overrides down (to a less serious level than {from:?})", meta.id),
            )
        }
        _ => {}
    }
    if let Some(max) = policy.max_steps {
        let steps = to_rank.abs_diff(from_rank);
        if steps > max as usize {
            return invalid(
                "/level",
                format!("{}'s override policy allows at most {max} level(s) away from {from:?}; {to:?} is {steps}", meta.id),
            );
        }
    }
    Ok(())
}

/// Whether a tool is organisational (`x-tool.stage` `org`): its decisions are about an agency,
/// recorded under the agency's id, not about a child's case.
pub(crate) fn is_organisational(catalog: &Catalog, tool_id: &str) -> bool {
    catalog
        .get(tool_id)
        .is_some_and(|t| t.meta.stage == Stage::Named(NamedStage::Org))
}

/// The case stage a tool counts for: its `x-tool.stage` when that is a case stage (0 to 7);
/// none for tools used at any stage, organisational tools and tools the catalog no longer has.
/// A case's stage is the furthest of these over its decisions, or 0.
pub(crate) fn case_stage(catalog: &Catalog, tool_id: &str) -> Option<u8> {
    match catalog.get(tool_id).map(|t| t.meta.stage) {
        Some(Stage::Case(n)) => Some(n),
        _ => None,
    }
}

/// Whether a decision of `tool_id` at `level` (in force) holds a case whose stage is `stage`
/// there: its tool is of that stage and lists the level in `x-tool.holds`, as the
/// tool is served now. The case journey and the dashboard both ask it.
pub(crate) fn holds(catalog: &Catalog, tool_id: &str, level: &str, stage: u8) -> bool {
    catalog
        .get(tool_id)
        .is_some_and(|t| t.meta.stage == Stage::Case(stage) && t.meta.holds_at(level))
}

/// A decision as it stands: its latest revision, and when the assessment behind it was made.
///
/// Which decision of a tool is a case's current one, and when it is due for review, follow the
/// assessment (the latest submitted or amended revision): an override or its approval changes
/// the level in force, not when the family was last assessed. Approving an override of an old
/// decision therefore does not put it before a newer assessment, and does not restart the
/// review clock.
#[derive(Debug, Clone)]
pub struct Standing {
    pub latest: Revision,
    /// The assessment behind it: its time, and its place in the journal, which orders two
    /// assessments recorded in the same millisecond.
    pub assessed: Assessment,
}

impl Standing {
    pub fn of(store: &dyn Store, latest: Revision) -> Result<Self, StoreError> {
        Ok(Standing {
            assessed: store.assessment(&latest)?,
            latest,
        })
    }

    /// Whether it replaces `current` as the latest decision of its tool in its case (or as the
    /// case's latest assessment): the later assessment wins. Assessments are ordered by their
    /// place in the journal, which agrees with their times and also orders two recorded in the
    /// same millisecond, so the answer depends neither on the order decisions are read in nor
    /// on the clock's resolution.
    pub(crate) fn supersedes(&self, current_seq: u64) -> bool {
        self.assessed.seq >= current_seq
    }

    /// The decision and its level in force, as of its assessment.
    fn at_level(&self) -> AtLevel {
        AtLevel {
            decision_id: self.latest.decision_id.clone(),
            tool: self.latest.tool.id.clone(),
            level: self.latest.effective_level().to_owned(),
            since: self.assessed.at.clone(),
        }
    }

    /// When the decision is due for review: its assessment's time plus the `review_after_days`
    /// of its level in force, or else of its tool, as the tool is served now; overdue once this
    /// is at or before now.
    pub(crate) fn review_due(&self, catalog: &Catalog) -> Option<chrono::DateTime<chrono::Utc>> {
        let days = catalog
            .get(&self.latest.tool.id)?
            .meta
            .review_after_days(self.latest.effective_level())?;
        let at = chrono::DateTime::parse_from_rfc3339(&self.assessed.at).ok()?;
        Some(at.with_timezone(&chrono::Utc) + chrono::Duration::days(days.into()))
    }
}

/// A case's latest assessment with a tool of the case journey (a numbered stage), whatever
/// order its decisions are seen in, and the closure it makes when its tool says its level in
/// force closes a case (`x-tool.closes`, as the tool is served now). Tools used at any stage and
/// an agency's own assessments neither close nor reopen a case. The case journey and the
/// dashboard both read closure from here.
#[derive(Debug, Default)]
pub(crate) struct LastAssessment {
    /// The journal place of the latest, and its closure.
    last: Option<(u64, Option<AtLevel>)>,
}

impl LastAssessment {
    pub(crate) fn see(&mut self, catalog: &Catalog, standing: &Standing) {
        let d = &standing.latest;
        let Some(tool) = catalog.get(&d.tool.id) else {
            return;
        };
        if !matches!(tool.meta.stage, Stage::Case(_)) {
            return;
        }
        let later = self
            .last
            .as_ref()
            .is_none_or(|(seq, _)| standing.supersedes(*seq));
        if !later {
            return;
        }
        let level = d.effective_level();
        let closure = tool.meta.closes_at(level).then(|| standing.at_level());
        self.last = Some((standing.assessed.seq, closure));
    }

    /// The closure in force: the latest assessment closes the case.
    pub(crate) fn closed(&self) -> Option<&AtLevel> {
        self.last.as_ref().and_then(|(_, closure)| closure.as_ref())
    }
}

/// Where a case stands in the journey.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Journey {
    pub case: String,
    /// The furthest case stage with a decision (0 when the case has none yet).
    pub stage: u8,
    /// The latest decision per tool, by tool id.
    #[schema(value_type = Object)]
    pub latest: BTreeMap<String, JourneyDecision>,
    /// What is due next.
    pub due: Vec<Due>,
    /// Set while the case is closed: its latest assessment with a tool of the case journey is a
    /// decision at a level that closes a case (`x-tool.closes`). Nothing is due while it is; a
    /// later assessment with such a tool reopens it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed: Option<AtLevel>,
    /// Set while the case may not move on: a tool of its current stage has its latest decision
    /// at a level that holds a case there (`x-tool.holds`, a plan that failed its stress test,
    /// say), so the next stage's tools are not due until that tool is done again (or its level
    /// is overridden and approved) at a level that does not hold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<AtLevel>,
    /// Set when every decision of the case is an agency's own assessment (a tool of stage
    /// `org`, recorded under the agency's id): it is no child's case, so nothing of the journey
    /// is due or held, and its `stage` of 0 says only that no case stage was reached.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub organisational: bool,
}

/// A decision whose level in force closes a case, or holds it at its stage.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AtLevel {
    pub decision_id: String,
    pub tool: String,
    pub level: String,
    /// When that assessment was made (RFC 3339).
    pub since: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JourneyDecision {
    pub decision_id: String,
    pub revision: u32,
    pub level: String,
    /// When its latest revision was recorded (an override or approval included).
    pub recorded_at: String,
    /// When the assessment behind it was made (its latest submitted or amended revision): which
    /// decision of a tool is the latest, and its review date, count from here.
    pub assessed_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review_due: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Due {
    pub tool: String,
    /// `not-done` (a tool of the current stage with no decision yet) or `review-overdue`.
    pub why: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// A review date as the journey and the dashboard give it: RFC 3339, to the second.
pub(crate) fn review_time(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The journey of a case: the current stage is the furthest stage with a decision; due are the
/// current stage's tools without one (or, when they are all done and none holds the case at its
/// stage, the next stage's), and every decision past its `review_after_days` (its level's, else
/// its tool's).
pub(crate) fn journey(
    case_id: &str,
    decisions: &[Standing],
    catalog: &Catalog,
    now: chrono::DateTime<chrono::Utc>,
) -> Journey {
    // By tool: its latest assessment.
    let mut latest: BTreeMap<&str, &Standing> = BTreeMap::new();
    for standing in decisions {
        let tool = standing.latest.tool.id.as_str();
        if latest
            .get(tool)
            .is_none_or(|current| standing.supersedes(current.assessed.seq))
        {
            latest.insert(tool, standing);
        }
    }
    let mut last = LastAssessment::default();
    for standing in decisions {
        last.see(catalog, standing);
    }
    let closed = last.closed().cloned();
    let stage = latest
        .keys()
        .filter_map(|id| case_stage(catalog, id))
        .max()
        .unwrap_or(0);
    // An agency's own assessments, recorded under its id, are no child's case: no tool of the
    // case journey is due for them, and nothing holds them. Nor for a closed case.
    let organisational = !decisions.is_empty()
        && decisions
            .iter()
            .all(|d| is_organisational(catalog, &d.latest.tool.id));
    let open = !organisational && closed.is_none();
    let mut held: Vec<AtLevel> = Vec::new();
    if open {
        held = latest
            .iter()
            .filter(|(id, standing)| holds(catalog, id, standing.latest.effective_level(), stage))
            .map(|(_, standing)| standing.at_level())
            .collect();
    }
    let not_done = |stage: u8| -> Vec<String> {
        catalog
            .tools()
            .filter(|t| t.meta.stage == Stage::Case(stage) && !latest.contains_key(t.id()))
            .map(|t| t.id().to_owned())
            .collect()
    };
    let mut missing = Vec::new();
    if open {
        missing = not_done(stage);
        if missing.is_empty() && stage < 7 && held.is_empty() {
            missing = not_done(stage + 1);
        }
    }
    let mut due: Vec<Due> = missing
        .into_iter()
        .map(|tool| Due {
            tool,
            why: "not-done".into(),
            since: None,
        })
        .collect();
    // A closed case has no reviews due.
    let mut entries = BTreeMap::new();
    for (tool, standing) in latest {
        let review_due = standing.review_due(catalog);
        if let Some(at) = review_due.filter(|at| closed.is_none() && *at <= now) {
            due.push(Due {
                tool: tool.to_owned(),
                why: "review-overdue".into(),
                since: Some(review_time(at)),
            });
        }
        let d = &standing.latest;
        entries.insert(
            tool.to_owned(),
            JourneyDecision {
                decision_id: d.decision_id.clone(),
                revision: d.revision,
                level: d.effective_level().to_owned(),
                recorded_at: d.recorded_at.clone(),
                assessed_at: standing.assessed.at.clone(),
                review_due: review_due.map(review_time),
            },
        );
    }
    Journey {
        case: case_id.to_owned(),
        stage,
        latest: entries,
        due,
        closed,
        held,
        organisational,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{OutcomeDecl, OverridePolicy};

    fn meta(policy: Option<OverridePolicy>) -> ToolMeta {
        ToolMeta {
            id: "t".into(),
            version: "1".into(),
            stage: Stage::Case(1),
            outcomes: ["low", "medium", "high"]
                .iter()
                .map(|l| OutcomeDecl {
                    level: (*l).into(),
                    label: (*l).into(),
                    response: (*l).into(),
                    review_after_days: None,
                })
                .collect(),
            params: json!({}),
            override_policy: policy,
            review_after_days: None,
            closes: Vec::new(),
            holds: Vec::new(),
        }
    }

    #[test]
    fn an_override_needs_a_reason_and_a_declared_level() {
        assert!(matches!(
            check_override(&meta(None), "low", "low", "high", " "),
            Err(DecisionError::InvalidOverride {
                field: "/reason",
                ..
            })
        ));
        assert!(matches!(
            check_override(&meta(None), "low", "low", "urgent", "r"),
            Err(DecisionError::InvalidOverride {
                field: "/level",
                ..
            })
        ));
        assert!(check_override(&meta(None), "low", "low", "high", "r").is_ok());
    }

    #[test]
    fn the_override_policy_bounds_direction_and_steps() {
        let up_one = meta(Some(OverridePolicy {
            direction: Direction::Up,
            max_steps: Some(1),
        }));
        assert!(check_override(&up_one, "low", "low", "medium", "r").is_ok());
        let err = check_override(&up_one, "low", "low", "high", "r").unwrap_err();
        assert!(err.to_string().contains("at most 1"), "{err}");
        let err = check_override(&up_one, "medium", "medium", "low", "r").unwrap_err();
        assert!(err.to_string().contains("only overrides up"), "{err}");
    }

    #[test]
    fn back_towards_the_tools_level_from_a_carried_override_is_always_allowed() {
        // An amendment assessed low and carried an approved high: two steps, past the policy.
        let down_one = meta(Some(OverridePolicy {
            direction: Direction::Down,
            max_steps: Some(1),
        }));
        assert!(check_override(&down_one, "low", "high", "medium", "r").is_ok());
        assert!(check_override(&down_one, "low", "high", "low", "r").is_ok());
        // Past the level in force is still bounded.
        let up_one = meta(Some(OverridePolicy {
            direction: Direction::Up,
            max_steps: Some(1),
        }));
        assert!(check_override(&up_one, "low", "medium", "high", "r").is_err());
    }

    #[test]
    fn an_approved_override_can_be_withdrawn_but_not_asked_for_again() {
        // The tool said low; an approved override made it medium.
        let up_one = meta(Some(OverridePolicy {
            direction: Direction::Up,
            max_steps: Some(1),
        }));
        assert!(check_override(&up_one, "low", "medium", "low", "r").is_ok());
        let err = check_override(&up_one, "low", "medium", "medium", "r").unwrap_err();
        assert!(
            err.to_string().contains("already the level in force"),
            "{err}"
        );
    }
}
