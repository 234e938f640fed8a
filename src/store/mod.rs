//! The decision store: one global, hash-chained journal of revisions, with indexes by decision,
//! case, tool and time, tool-version snapshots, idempotency records and API tokens.
//!
//! [`Store`] is what the rest of the service sees; nothing outside this module knows which
//! database sits behind it. The embedded default is [`SledStore`]. Writes go through
//! [`Store::append`], which resolves only once the revision is durable on disk.

mod chain;
mod sled_store;

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use chain::{hash_value_without_hash, sha256, Entry, Link, GENESIS_HASH};
pub use sled_store::{Durability, SledStore, StoreOptions};

use crate::auth::{Role, TokenRecord};
use crate::rules::Outcome;

/// Who did something: the subject of the token used, and the role it carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Actor {
    pub subject: String,
    pub role: Role,
}

/// The tool version that made (or re-made) a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ToolRef {
    pub id: String,
    /// The human label from `x-tool.version`.
    pub version: String,
    /// `sha256:<hex>`: the real version, whose snapshot is stored.
    pub digest: String,
}

/// What kind of change a revision records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RevisionKind {
    Submitted,
    Amended,
    Overridden,
    Approved,
    /// The pending override was declined by a supervisor, or withdrawn by its author.
    Declined,
}

/// An override's place in the four-eyes process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OverrideStatus {
    Pending,
    Approved,
    /// Declined by a supervisor (or withdrawn by its author), with a reason: it never took
    /// effect.
    Declined,
}

/// Who declined an override, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Declined {
    pub by: Actor,
    pub reason: String,
}

/// A practitioner's override of the tool's level, with the reason, and its approval (or a
/// supervisor's refusal of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Override {
    pub level: String,
    pub reason: String,
    pub by: Actor,
    pub status: OverrideStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<Actor>,
    /// Set when a supervisor declined this override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declined: Option<Declined>,
    /// While this override waits for approval (or once it is declined): the approved override
    /// it would have replaced, which stays in force (one person alone cannot undo what two
    /// agreed). Cleared when this one is approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(no_recursion)]
    pub replaces: Option<Box<Override>>,
}

/// One immutable entry of the journal: the whole state of a decision after one change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Revision {
    /// Position in the global journal, from 1.
    pub seq: u64,
    pub decision_id: String,
    /// Position in this decision's history, from 1.
    pub revision: u32,
    pub kind: RevisionKind,
    pub case_id: String,
    pub tool: ToolRef,
    #[schema(value_type = Object)]
    pub input: Value,
    /// What the tool decided for `input`.
    pub outcome: Outcome,
    #[serde(rename = "override", default, skip_serializing_if = "Option::is_none")]
    pub override_: Option<Override>,
    pub actor: Actor,
    /// RFC 3339, UTC, set by the writer so journal order and time order agree.
    pub recorded_at: String,
    pub prev_hash: String,
    /// SHA-256 over the canonical JSON of every other field. Empty (and left out of the JSON)
    /// only while the writer computes it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

impl Revision {
    /// Whether this revision records an assessment (a form evaluated by the tool), rather than
    /// an override or an approval of one.
    pub fn is_assessment(&self) -> bool {
        matches!(self.kind, RevisionKind::Submitted | RevisionKind::Amended)
    }

    /// The level in force: an approved override's, else the tool's. A pending override changes
    /// nothing until it is approved, and a declined one nothing at all, so while one waits (or
    /// once it is declined) that would replace an approved override, the approved one is still
    /// in force.
    pub fn effective_level(&self) -> &str {
        self.override_in_force()
            .map_or(&self.outcome.level, |o| &o.level)
    }

    /// The approved override in force, if any (see [`Revision::effective_level`]).
    pub fn override_in_force(&self) -> Option<&Override> {
        match &self.override_ {
            Some(o) if o.status == OverrideStatus::Approved => Some(o),
            Some(o) => o.replaces.as_deref(),
            None => None,
        }
    }
}

/// A revision as the service proposes it; the writer adds sequence, revision number, time and
/// hashes.
#[derive(Debug, Clone)]
pub struct Draft {
    pub decision_id: String,
    pub kind: RevisionKind,
    pub case_id: String,
    pub tool: ToolRef,
    pub input: Value,
    pub outcome: Outcome,
    pub override_: Option<Override>,
    pub actor: Actor,
    /// The tool version's snapshot, stored under its digest if this is its first decision.
    /// Shared: the tool built it once.
    pub snapshot: std::sync::Arc<Value>,
}

/// How an append relates to what is already stored.
#[derive(Debug, Clone)]
pub enum Precondition {
    /// A new decision; with a key, a retry of the same request returns the first decision.
    New { idempotency: Option<IdempotencyKey> },
    /// The next revision of an existing decision, built on `expected_revision`.
    Next { expected_revision: u32 },
}

/// An `Idempotency-Key`, scoped to the subject that sent it, with a digest of the request body so
/// a reused key with a different body is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub subject: String,
    pub key: String,
    pub request_digest: String,
}

/// A durable append.
#[derive(Debug, Clone)]
pub struct Appended {
    pub revision: Revision,
    /// True when an idempotent retry returned the revision stored by the first request.
    pub replayed: bool,
}

/// What went wrong in the store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("decision {0} does not exist")]
    UnknownDecision(String),
    #[error("decision {decision_id} is at revision {current}, not {expected}")]
    Conflict {
        decision_id: String,
        expected: u32,
        current: u32,
    },
    #[error("the Idempotency-Key was already used with a different request")]
    IdempotencyMismatch,
    #[error("the store is shutting down")]
    Closed,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("storage failed: {0}")]
    Io(String),
    /// A command that reads a store was pointed at a folder that holds none.
    #[error("there is no store in {0}: is data_dir (SAFEGUARD_DATA_DIR) right?")]
    NotFound(String),
    /// Another process has the store open (sled locks its files): most often the service itself.
    #[error("another process has this data folder open ({0}): is the service running? While it runs, use its API")]
    Locked(String),
    /// A write could not be made durable earlier, so none is accepted until a restart (which
    /// recovers what is on disk). Reads still work.
    #[error("the store could not make a write durable ({0}); nothing more is stored until the service is restarted")]
    Unwritable(String),
    /// The journal ends before a revision the anchor file says was made durable, or holds a
    /// different revision there: revisions were lost or the files replaced. Nothing is written
    /// to such a store (a write would put new revisions where the lost ones were, and move the
    /// anchor past the evidence); it can still be read, verified and exported.
    #[error("{0}")]
    LostRevisions(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            // Damage below the journal (sled's own files changed outside it): no revision can be
            // named, only the remedy.
            sled::Error::Corruption { .. } => StoreError::Corrupt(format!(
                "the store's files are damaged ({e}); restore the data folder from a backup (docs/operations.md, \"Backups and restoring\")"
            )),
            e => StoreError::Io(e.to_string()),
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A future that resolves when an append is durable (or refused).
pub type AppendFuture = Pin<Box<dyn Future<Output = StoreResult<Appended>> + Send>>;

/// The head of the journal: the last sequence number and its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

/// A tool version: when it was first served, when it was used and how many decisions it made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionInfo {
    pub tool: String,
    /// The human label.
    pub version: String,
    pub digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_served_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_used_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<String>,
    /// Decisions this version made: submissions and amendments evaluated with it.
    pub decisions: u64,
}

/// Decodes a stored journal entry (see [`Entry`]) into its revision.
pub fn decode_revision(bytes: &[u8]) -> StoreResult<Revision> {
    Entry::split(bytes)?.decode()
}

/// Where and when an assessment was recorded. Journal order and time order agree (a revision's
/// `recorded_at` is never before an earlier one's), so `seq` orders assessments, ties in time
/// included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    pub seq: u64,
    /// RFC 3339, as `recorded_at`.
    pub at: String,
}

/// The decision store.
pub trait Store: Send + Sync + 'static {
    /// Appends `draft` under `precondition`; resolves once the revision is durable on disk.
    fn append(&self, draft: Draft, precondition: Precondition) -> AppendFuture;
    /// The latest revision of a decision.
    fn latest(&self, decision_id: &str) -> StoreResult<Option<Revision>>;
    /// Every revision of a decision, oldest first.
    fn history(&self, decision_id: &str) -> StoreResult<Vec<Revision>>;
    /// The assessment behind `revision`: the decision's latest submitted or amended revision up
    /// to `revision` (an override or an approval changes the level in force, not the
    /// assessment); `revision` itself when it is one.
    fn assessment(&self, revision: &Revision) -> StoreResult<Assessment>;
    /// The latest revision of every decision of a case, oldest decision first.
    fn case_decisions(&self, case_id: &str) -> StoreResult<Vec<Revision>>;
    /// A tool version's snapshot, by digest.
    fn snapshot(&self, digest: &str) -> StoreResult<Option<Value>>;
    /// The head of the journal.
    fn head(&self) -> StoreResult<Head>;
    /// The seq of the first revision recorded at or after `millis` (Unix time in milliseconds),
    /// from the time index; `None` when every revision is older. Revisions are recorded in
    /// journal order, so those of `[from, to)` are the seqs from `first_seq_since(from)` up to,
    /// not including, `first_seq_since(to)`.
    fn first_seq_since(&self, millis: i64) -> StoreResult<Option<u64>>;
    /// Every revision with `seq >= from`, in journal order, read lazily.
    fn journal(&self, from: u64) -> Box<dyn Iterator<Item = StoreResult<Revision>> + Send>;
    /// The stored entries of every revision with `seq >= from`, in journal order: what `verify`
    /// hashes, so nothing is lost to a round trip through the revision type. Read them with
    /// [`Entry::split`].
    fn journal_raw(
        &self,
        from: u64,
    ) -> Box<dyn Iterator<Item = StoreResult<(u64, Vec<u8>)>> + Send>;
    /// The stored bytes of the latest revision of every decision made with `tool` (every
    /// decision when `None`), read lazily. Decode with [`decode_revision`].
    fn latest_raw(
        &self,
        tool: Option<&str>,
    ) -> Box<dyn Iterator<Item = StoreResult<Vec<u8>>> + Send>;
    /// Records that a tool version is being served, and stores its snapshot, if new.
    fn register_version(&self, tool: &ToolRef, snapshot: &Value) -> StoreResult<()>;
    /// Every version of a tool ever served or used, oldest first.
    fn versions(&self, tool_id: &str) -> StoreResult<Vec<VersionInfo>>;
    /// The first decision stored under an idempotency key, read without the writer: `None`
    /// when the key is unused (an append under it checks again, as one of two racing first
    /// requests may have stored it since), `IdempotencyMismatch` when it was used for another
    /// request.
    fn idempotent(&self, key: &IdempotencyKey) -> StoreResult<Option<Revision>>;
    /// Every stored API token.
    fn tokens(&self) -> StoreResult<Vec<TokenRecord>>;
    /// Stores a token record durably.
    fn put_token(&self, token: &TokenRecord) -> StoreResult<()>;
    /// The refusal every write gets once a write could not be made durable (a
    /// [`StoreError::Unwritable`] saying why); `None` while the store is writable.
    fn write_failure(&self) -> Option<StoreError>;
    /// The head as the writer last recorded it outside the store's own files, after a durable
    /// batch: the journal must reach it. `None` when there is none yet, or it is unreadable.
    fn anchor(&self) -> StoreResult<Option<Head>>;
}
