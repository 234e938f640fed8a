//! The embedded store on sled 0.34, with group commit.
//!
//! # Layout
//!
//! Everything lives in sled's default tree under one-letter key prefixes, so that a revision,
//! its indexes, its tool snapshot and its idempotency record go to disk in **one atomic batch**
//! (`apply_batch` is atomic within a tree; a multi-tree transaction would be slower and gain
//! nothing):
//!
//! | key | value |
//! |---|---|
//! | `j` seq | the revision: its hash, a newline, its canonical JSON (see `chain`) |
//! | `d` decision 0 revision | seq |
//! | `c` case 0 first-seq | decision id |
//! | `t` tool 0 seq | decision id |
//! | `w` millis seq | (empty): the time index, one entry for the first revision of each millisecond |
//! | `s` digest | the tool version's snapshot (JSON) |
//! | `i` subject 0 key | the idempotency record (JSON) |
//! | `k` token hash | the token record (JSON) |
//! | `h` | the journal head (JSON) |
//!
//! Numbers are big-endian so byte order is numeric order. Ids never contain a NUL byte (the API
//! checks them at the edge), so `0` separates an id from what follows.
//!
//! # Group commit
//!
//! One writer thread owns every write. It takes the first waiting append, drains whatever else
//! is queued (up to `max_batch`), checks each against the journal and the earlier appends of the
//! same batch, applies the batch atomically, makes it durable once, and only then answers every
//! request in it. Requests that arrive during a flush wait for the next batch, which is how
//! concurrent requests come to share one flush. `Durability::SyncPerRequest` takes one append
//! per batch: the baseline the benchmarks compare against.
//!
//! # Durable means on disk
//!
//! sled 0.34's `flush()` on Linux ends in `sync_file_range`, which neither flushes the disk's
//! write cache nor file metadata (sled issues #1452, #1351). After every flush the writer
//! therefore `fdatasync`s sled's data file, and any blob file written since the batch began
//! (sled writes large values to `blobs/` without syncing them). It is a blocking call, which is
//! why the writer is an OS thread and never an async task.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::chain::{encode_entry, Placement, Prepared, GENESIS_HASH};
use super::{
    decode_revision, AppendFuture, Appended, Assessment, Draft, Head, Precondition, Revision,
    Store, StoreError, StoreResult,
};
use crate::auth::TokenRecord;

/// When an append is acknowledged relative to other appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Concurrent appends share one flush (the default).
    Group,
    /// Every append is flushed on its own: the benchmark baseline.
    SyncPerRequest,
}

/// How the store is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub durability: Durability,
    /// The most appends one flush may serve.
    pub max_batch: usize,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durability: Durability::Group,
            max_batch: 1024,
            cache_bytes: 256 * 1024 * 1024,
        }
    }
}

/// The sled-backed [`Store`].
pub struct SledStore {
    db: sled::Db,
    /// sled's data file, for `fdatasync` after writes outside the writer.
    data_file: DataFile,
    tx: mpsc::Sender<Command>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Why writes are refused, once one could not be made durable (shared with the writer).
    failure: Failure,
    /// Where the writer records the head after each durable batch ([`Store::anchor`]).
    anchor_path: PathBuf,
}

struct Command {
    draft: Draft,
    /// The draft's canonical bytes, made by the request's task so the writer only splices.
    prepared: Prepared,
    precondition: Precondition,
    reply: oneshot::Sender<StoreResult<Appended>>,
}

#[derive(Serialize, Deserialize)]
struct IdempotencyRecord {
    request_digest: String,
    decision_id: String,
}

impl SledStore {
    /// Opens the store in `dir`, which must already hold one: for commands that read or change
    /// what is stored, where a mistyped folder must not look like an empty, whole store.
    pub fn open_existing(dir: &Path, options: StoreOptions) -> StoreResult<SledStore> {
        if !dir.join("db").is_file() {
            return Err(StoreError::NotFound(dir.display().to_string()));
        }
        Self::open(dir, options)
    }

    /// Opens (or creates) the store in `dir` and starts its writer.
    pub fn open(dir: &Path, options: StoreOptions) -> StoreResult<SledStore> {
        private_folder(dir).map_err(|e| {
            StoreError::Io(format!(
                "cannot make the data folder {}: {e}",
                dir.display()
            ))
        })?;
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_bytes)
            // The writer flushes every batch itself; a background flusher would only add I/O.
            .flush_every_ms(None);
        let db = open_or_explain(&config).map_err(|e| match e {
            StoreError::Io(reason) => {
                StoreError::Io(format!("{reason} (in the data folder {})", dir.display()))
            }
            other => other,
        })?;
        // The directory entries of a new store must be durable too.
        File::open(dir)?.sync_all()?;
        let data_file = DataFile::open(dir.join("db"))?;
        let store_file = data_file.try_clone()?;
        let anchor_path = dir.join(ANCHOR_FILE);
        let anchor = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&anchor_path)?;
        let head = read_head(&db)?;
        let failure = Failure::default();
        if let Some(lost) = lost_revisions(&db, &head, &anchor_path)? {
            tracing::error!(error = %lost, "the store has lost revisions; it takes no writes");
            failure.0.set(lost).expect("a new store has not failed");
        }
        let known_snapshots = db
            .scan_prefix(b"s")
            .keys()
            .map(|k| k.map(|k| String::from_utf8_lossy(&k[1..]).into_owned()))
            .collect::<Result<HashSet<_>, _>>()?;
        let (tx, rx) = mpsc::channel(8192);
        let writer = Writer {
            db: db.clone(),
            dir: dir.to_owned(),
            data_file,
            head,
            last_millis: last_indexed_millis(&db)?,
            clock: ClockWatch::default(),
            known_snapshots,
            usage: HashMap::new(),
            failure: failure.clone(),
            anchor,
            max_batch: match options.durability {
                Durability::Group => options.max_batch.max(1),
                Durability::SyncPerRequest => 1,
            },
        };
        let writer = std::thread::Builder::new()
            .name("safeguard-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(SledStore {
            db,
            data_file: store_file,
            tx,
            writer: Some(writer),
            failure,
            anchor_path,
        })
    }

    /// Flushes sled and `fdatasync`s its data file: a write outside the writer made durable,
    /// in the data folder a later start will read (see [`DataFile::still_in_place`]).
    fn make_durable(&self) -> StoreResult<()> {
        self.data_file.still_in_place()?;
        self.db.flush()?;
        self.data_file.sync()
    }

    fn revision_at(&self, seq: &[u8]) -> StoreResult<Revision> {
        let key = [b"j".as_slice(), seq].concat();
        let bytes = self.db.get(&key)?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "index names journal entry {seq:?}, which is missing"
            ))
        })?;
        decode_revision(&bytes)
    }
}

impl SledStore {
    /// Closes the store (as dropping it does) and returns the refusal its writes got, if a write
    /// could not be made durable while it was open, or while the last queued appends were
    /// written.
    pub fn close(mut self) -> Option<StoreError> {
        self.stop_writer();
        self.failure.refusal()
    }

    /// Closing the channel lets the writer finish every queued append, flush and stop; waiting
    /// for it means nothing acknowledged is ever left behind.
    fn stop_writer(&mut self) {
        let (tx, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.stop_writer();
    }
}

impl Store for SledStore {
    fn append(&self, draft: Draft, precondition: Precondition) -> AppendFuture {
        let tx = self.tx.clone();
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            let prepared = Prepared::of(&draft);
            tx.send(Command {
                draft,
                prepared,
                precondition,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
            answer.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn latest(&self, decision_id: &str) -> StoreResult<Option<Revision>> {
        match self
            .db
            .scan_prefix(decision_prefix(decision_id))
            .values()
            .next_back()
        {
            None => Ok(None),
            Some(seq) => self.revision_at(&seq?).map(Some),
        }
    }

    fn history(&self, decision_id: &str) -> StoreResult<Vec<Revision>> {
        self.db
            .scan_prefix(decision_prefix(decision_id))
            .values()
            .map(|seq| self.revision_at(&seq?))
            .collect()
    }

    fn assessment(&self, revision: &Revision) -> StoreResult<Assessment> {
        if revision.is_assessment() {
            return Ok(Assessment {
                seq: revision.seq,
                at: revision.recorded_at.clone(),
            });
        }
        // Back from `revision` through the decision index (keyed by revision number) to the
        // nearest assessment; a decision's first revision always is one.
        let prefix = decision_prefix(&revision.decision_id);
        let end = [prefix.as_slice(), &revision.revision.to_be_bytes()].concat();
        for seq in self.db.range(prefix..end).values().rev() {
            let earlier = self.revision_at(&seq?)?;
            if earlier.is_assessment() {
                return Ok(Assessment {
                    seq: earlier.seq,
                    at: earlier.recorded_at,
                });
            }
        }
        Err(StoreError::Corrupt(format!(
            "decision {} has no submitted revision before revision {}",
            revision.decision_id, revision.revision
        )))
    }

    fn case_decisions(&self, case_id: &str) -> StoreResult<Vec<Revision>> {
        let prefix = [b"c".as_slice(), case_id.as_bytes(), &[0]].concat();
        let mut out = Vec::new();
        for id in self.db.scan_prefix(prefix).values() {
            let id = id?;
            let id = std::str::from_utf8(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if let Some(latest) = self.latest(id)? {
                out.push(latest);
            }
        }
        Ok(out)
    }

    fn snapshot(&self, digest: &str) -> StoreResult<Option<Value>> {
        let key = [b"s".as_slice(), digest.as_bytes()].concat();
        self.db.get(key)?.map(|b| decode(&b)).transpose()
    }

    fn head(&self) -> StoreResult<Head> {
        read_head(&self.db)
    }

    fn journal(&self, from: u64) -> Box<dyn Iterator<Item = StoreResult<Revision>> + Send> {
        let start = journal_key(from);
        let iter = self
            .db
            .range(start.to_vec()..b"k".to_vec())
            .values()
            .map(|v| decode_revision(&v?));
        Box::new(iter)
    }

    fn first_seq_since(&self, millis: i64) -> StoreResult<Option<u64>> {
        let start = [b"w".as_slice(), &(millis.max(0) as u64).to_be_bytes()].concat();
        match self
            .db
            .range(start..b"x".to_vec())
            .keys()
            .next()
            .transpose()?
        {
            None => Ok(None),
            Some(key) => time_key_part(&key, 9..17).map(Some),
        }
    }

    fn journal_raw(
        &self,
        from: u64,
    ) -> Box<dyn Iterator<Item = StoreResult<(u64, Vec<u8>)>> + Send> {
        let iter = self
            .db
            .range(journal_key(from).to_vec()..b"k".to_vec())
            .map(|entry| {
                let (key, value) = entry?;
                let seq: [u8; 8] = key[1..].try_into().map_err(|_| {
                    StoreError::Corrupt(format!("journal key {key:?} is not 9 bytes"))
                })?;
                Ok((u64::from_be_bytes(seq), value.to_vec()))
            });
        Box::new(iter)
    }

    fn latest_raw(
        &self,
        tool: Option<&str>,
    ) -> Box<dyn Iterator<Item = StoreResult<Vec<u8>>> + Send> {
        let db = self.db.clone();
        match tool {
            // Every decision: walk the decision index, which is sorted by decision then
            // revision, and keep the last revision of each decision.
            None => Box::new(LatestOfEach {
                db: db.clone(),
                keys: db.scan_prefix(b"d"),
                pending: None,
            }),
            // One tool: walk its index and keep the revisions that are their decision's latest.
            Some(tool) => {
                let prefix = [b"t".as_slice(), tool.as_bytes(), &[0]].concat();
                Box::new(db.clone().scan_prefix(prefix).filter_map(move |entry| {
                    let result = (|| {
                        let (key, decision) = entry?;
                        let seq = &key[key.len() - 8..];
                        let latest = db
                            .scan_prefix(decision_prefix(
                                std::str::from_utf8(&decision).unwrap_or_default(),
                            ))
                            .values()
                            .next_back()
                            .transpose()?;
                        if latest.as_deref() != Some(seq) {
                            return Ok(None);
                        }
                        let bytes = db.get([b"j".as_slice(), seq].concat())?.ok_or_else(|| {
                            StoreError::Corrupt("tool index names a missing revision".into())
                        })?;
                        Ok(Some(bytes.to_vec()))
                    })();
                    result.transpose()
                }))
            }
        }
    }

    fn register_version(&self, tool: &super::ToolRef, snapshot: &Value) -> StoreResult<()> {
        let key = version_key(b'v', &tool.id, &tool.digest);
        if self.db.contains_key(&key)? {
            return Ok(());
        }
        let record = super::VersionInfo {
            tool: tool.id.clone(),
            version: tool.version.clone(),
            digest: tool.digest.clone(),
            first_served_at: Some(now_rfc3339()),
            first_used_at: None,
            last_used_at: None,
            decisions: 0,
        };
        let snapshot_key = [b"s".as_slice(), tool.digest.as_bytes()].concat();
        let mut batch = sled::Batch::default();
        if !self.db.contains_key(&snapshot_key)? {
            batch.insert(snapshot_key, encode(snapshot));
        }
        batch.insert(key, encode(&record));
        self.failure.guard(|| {
            self.db.apply_batch(batch)?;
            self.make_durable()
        })
    }

    fn versions(&self, tool_id: &str) -> StoreResult<Vec<super::VersionInfo>> {
        let mut by_digest: std::collections::BTreeMap<String, super::VersionInfo> =
            Default::default();
        let prefix = |tag: u8| [&[tag][..], tool_id.as_bytes(), &[0]].concat();
        for value in self.db.scan_prefix(prefix(b'v')).values() {
            let record: super::VersionInfo = decode(&value?)?;
            by_digest.insert(record.digest.clone(), record);
        }
        for value in self.db.scan_prefix(prefix(b'u')).values() {
            let usage: super::VersionInfo = decode(&value?)?;
            let entry = by_digest
                .entry(usage.digest.clone())
                .or_insert_with(|| usage.clone());
            entry.first_used_at = usage.first_used_at;
            entry.last_used_at = usage.last_used_at;
            entry.decisions = usage.decisions;
        }
        let mut versions: Vec<_> = by_digest.into_values().collect();
        versions.sort_by(|a, b| {
            let key =
                |v: &super::VersionInfo| v.first_served_at.clone().or(v.first_used_at.clone());
            key(a).cmp(&key(b))
        });
        Ok(versions)
    }

    fn tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        self.db
            .scan_prefix(b"k")
            .values()
            .map(|v| decode(&v?))
            .collect()
    }

    fn put_token(&self, token: &TokenRecord) -> StoreResult<()> {
        let key = [b"k".as_slice(), token.hash.as_bytes()].concat();
        self.failure.guard(|| {
            self.db.insert(key, encode(token))?;
            self.make_durable()
        })
    }

    fn idempotent(&self, key: &super::IdempotencyKey) -> StoreResult<Option<Revision>> {
        // A batch that could not be made durable may still be in sled's memory, its
        // idempotency record with it: a retry must not be told the refused write succeeded.
        if let Some(refusal) = self.failure.refusal() {
            return Err(refusal);
        }
        stored_replay(&self.db, key)
    }

    fn write_failure(&self) -> Option<StoreError> {
        self.failure.refusal()
    }

    fn anchor(&self) -> StoreResult<Option<Head>> {
        match std::fs::read_to_string(&self.anchor_path) {
            Ok(text) => Ok(parse_anchor(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// sled's data file (`<dir>/db`) as the store opened it, and what it is on the file system
/// (device and inode), taken once.
struct DataFile {
    file: File,
    path: PathBuf,
    identity: (u64, u64),
}

impl DataFile {
    fn open(path: PathBuf) -> std::io::Result<DataFile> {
        use std::os::unix::fs::MetadataExt;
        let file = File::open(&path)?;
        let opened = file.metadata()?;
        Ok(DataFile {
            identity: (opened.dev(), opened.ino()),
            file,
            path,
        })
    }

    fn try_clone(&self) -> std::io::Result<DataFile> {
        Ok(DataFile {
            file: self.file.try_clone()?,
            path: self.path.clone(),
            identity: self.identity,
        })
    }

    /// `fdatasync`s it, then checks it is still in place: a write is durable only in the file a
    /// later start will read.
    fn sync(&self) -> StoreResult<()> {
        self.file.sync_data()?;
        self.still_in_place()
    }

    /// Whether it is still the file at its path. A data folder moved, deleted or replaced by
    /// new files (a backup copied or renamed into its place) while the service runs leaves it
    /// writing to a file no later start will read: every write from then on would be lost, so
    /// none is acknowledged and the store takes no more. (Files copied over the old ones in
    /// place keep their identity, and are not seen here.)
    fn still_in_place(&self) -> StoreResult<()> {
        use std::os::unix::fs::MetadataExt;
        let same =
            std::fs::metadata(&self.path).is_ok_and(|now| (now.dev(), now.ino()) == self.identity);
        if same {
            return Ok(());
        }
        Err(StoreError::Io(format!(
            "{} is no longer the data file the service opened: the data folder was moved, deleted or replaced while the service ran, so what it writes would be lost at the next start (stop the service before restoring a backup; docs/operations.md)",
            self.path.display()
        )))
    }
}

/// Makes the store's folder, readable by the service's user only (what it holds is children's
/// records), or, when it exists, says if others may read it.
fn private_folder(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if dir.is_dir() {
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                folder = %dir.display(),
                mode = format!("{mode:o}"),
                "the data folder may be read by other users: it holds children's records; `chmod 700` it"
            );
        }
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// What is wrong when the journal does not reach the anchor (`anchor_path`), the head the writer
/// recorded after its last durable batch: it ends before it (sled's recovery stopped at damage,
/// or the files were copied while the service wrote), or holds a different revision there (the
/// files were replaced by another store's). `None` when it reaches it, or there is no anchor.
fn lost_revisions(
    db: &sled::Db,
    head: &Head,
    anchor_path: &Path,
) -> StoreResult<Option<StoreError>> {
    let text = match std::fs::read_to_string(anchor_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            tracing::warn!(anchor = %anchor_path.display(), error = %e, "the anchor file cannot be read: whether revisions were lost is not checked");
            return Ok(None);
        }
    };
    let Some(anchor) = parse_anchor(&text) else {
        // A new store's is empty; a torn write (it is not synced) reads as no anchor.
        if !text.is_empty() {
            tracing::warn!(anchor = %anchor_path.display(), "the anchor file is not whole: whether revisions were lost is not checked");
        }
        return Ok(None);
    };
    let remedy = format!(
        "Restore the data folder from a backup taken with the service stopped (docs/operations.md; `safeguard verify` shows what this one holds). If there is no better copy and the loss is accepted, move {} aside, keeping it as the record of what was lost, and start again",
        anchor_path.display()
    );
    if anchor.seq > head.seq {
        return Ok(Some(StoreError::LostRevisions(format!(
            "the journal ends at revision {}, but revisions up to {} were made durable (the store's anchor file says so): revisions {}-{} are lost, as when the store's files are damaged or were copied while the service was writing. {remedy}",
            head.seq,
            anchor.seq,
            head.seq + 1,
            anchor.seq
        ))));
    }
    if anchor.seq == 0 {
        return Ok(None);
    }
    let key = journal_key(anchor.seq);
    // The stored hash alone: an entry too damaged to read is a mismatch, for `verify` to name,
    // not a store that cannot be opened to verify it.
    let stored = db.get(key)?;
    let stored_hash = stored
        .as_deref()
        .and_then(|bytes| super::Entry::split(bytes).ok())
        .map(|entry| entry.hash.to_owned());
    if stored_hash.as_deref() == Some(anchor.hash.as_str()) {
        return Ok(None);
    }
    Ok(Some(StoreError::LostRevisions(format!(
        "the store's anchor file says revision {} has hash {}, but the journal's has {}: these are not the files the service last wrote. {remedy}",
        anchor.seq,
        anchor.hash,
        stored_hash.as_deref().unwrap_or("none")
    ))))
}

/// The file, in the store's folder, where the writer records the head after each durable batch.
/// sled rewrites its own files as it likes and, when its recovery meets damage, can end the
/// journal early without an error; this small file is how `verify` notices.
const ANCHOR_FILE: &str = "anchor";

/// `<seq> <hash> <check>`, where the check is the SHA-256 of `<seq> <hash>`, so a torn write of
/// the line is read as no anchor, never as a wrong one.
fn anchor_line(head: &Head) -> String {
    let fields = format!("{} {}", head.seq, head.hash);
    format!("{fields} {}\n", super::sha256(fields.as_bytes()))
}

fn parse_anchor(text: &str) -> Option<Head> {
    let mut parts = text.lines().next()?.split(' ');
    let (seq, hash, check) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || super::sha256(format!("{seq} {hash}").as_bytes()) != check {
        return None;
    }
    Some(Head {
        seq: seq.parse().ok()?,
        hash: hash.to_owned(),
    })
}

/// Opens sled's store. Its lock held by another process is [`StoreError::Locked`]; and sled 0.34
/// panics, rather than returning an error, when its recovery meets some kinds of damage in the
/// data file (bytes overwritten inside its log), which becomes [`StoreError::Corrupt`].
fn open_or_explain(config: &sled::Config) -> StoreResult<sled::Db> {
    // Without its own message and backtrace: the error below says what happened and what to do.
    // (The hook is the process's; a panic elsewhere in this moment would lose its message only.)
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()));
    std::panic::set_hook(hook);
    match opened {
        Ok(Err(e)) if e.to_string().contains("could not acquire lock") => {
            Err(StoreError::Locked(e.to_string()))
        }
        Ok(opened) => Ok(opened?),
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no reason given".into());
            Err(StoreError::Corrupt(format!(
                "sled could not recover it ({why}); restore the data folder from a backup (docs/operations.md, \"Backups and restoring\")"
            )))
        }
    }
}

/// Why the store refuses writes: set once, by the first write that could not be made durable.
/// After a failed flush or `fdatasync` what is on disk is unknown (the kernel may have dropped
/// the dirty pages it could not write), so nothing more may be acknowledged; a restart recovers
/// the store from what did reach the disk.
#[derive(Debug, Clone, Default)]
struct Failure(Arc<OnceLock<StoreError>>);

impl Failure {
    /// The error every write gets once the store has failed.
    fn refusal(&self) -> Option<StoreError> {
        self.0.get().cloned()
    }

    /// Runs `write` unless the store has failed; an error from it fails the store.
    fn guard<T>(&self, write: impl FnOnce() -> StoreResult<T>) -> StoreResult<T> {
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        write().map_err(|e| self.fail(e))
    }

    /// Records `e`, an error met while making a write durable, as the reason writes are refused
    /// from now on, and returns the error to answer with.
    fn fail(&self, e: StoreError) -> StoreError {
        let reason = match e {
            StoreError::Io(reason) => reason,
            other => other.to_string(),
        };
        if self.0.set(StoreError::Unwritable(reason.clone())).is_ok() {
            tracing::error!(error = %reason, "a write could not be made durable; the store refuses writes until the service is restarted");
        }
        self.refusal().unwrap_or(StoreError::Unwritable(reason))
    }
}

/// Walks the decision index and yields the latest revision of each decision.
struct LatestOfEach {
    db: sled::Db,
    keys: sled::Iter,
    /// The decision being walked (its index prefix) and its latest sequence key so far.
    pending: Option<(Vec<u8>, sled::IVec)>,
}

impl LatestOfEach {
    fn fetch(&self, seq: &[u8]) -> StoreResult<Vec<u8>> {
        self.db
            .get([b"j".as_slice(), seq].concat())?
            .map(|v| v.to_vec())
            .ok_or_else(|| StoreError::Corrupt("decision index names a missing revision".into()))
    }
}

impl Iterator for LatestOfEach {
    type Item = StoreResult<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.keys.next() {
                Some(Ok((key, seq))) => {
                    let decision = key[..key.len() - 4].to_vec();
                    match self.pending.take() {
                        Some((current, latest)) if current != decision => {
                            self.pending = Some((decision, seq));
                            return Some(self.fetch(&latest));
                        }
                        _ => self.pending = Some((decision, seq)),
                    }
                }
                Some(Err(e)) => return Some(Err(e.into())),
                None => {
                    let (_, latest) = self.pending.take()?;
                    return Some(self.fetch(&latest));
                }
            }
        }
    }
}

fn version_key(tag: u8, tool: &str, digest: &str) -> Vec<u8> {
    [&[tag][..], tool.as_bytes(), &[0], digest.as_bytes()].concat()
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn decision_prefix(decision_id: &str) -> Vec<u8> {
    [b"d".as_slice(), decision_id.as_bytes(), &[0]].concat()
}

fn journal_key(seq: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = b'j';
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("stored records always serialise")
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The big-endian number at `part` of a time index key (`w`, millis, seq).
fn time_key_part(key: &[u8], part: std::ops::Range<usize>) -> StoreResult<u64> {
    key.get(part)
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt(format!("time index key {key:?} is not 17 bytes")))
}

/// The time of the newest entry of the time index: the newest revision's `recorded_at`, which
/// no later revision may precede, even if the clock has stepped back since.
fn last_indexed_millis(db: &sled::Db) -> StoreResult<i64> {
    match db.scan_prefix(b"w").keys().next_back().transpose()? {
        None => Ok(0),
        Some(key) => time_key_part(&key, 1..9).map(|millis| millis as i64),
    }
}

fn read_head(db: &sled::Db) -> StoreResult<Head> {
    match db.get(b"h")? {
        Some(bytes) => decode(&bytes),
        None => Ok(Head {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
        }),
    }
}

/// Records how long one phase of a commit took, from `began` to now; returns now. The phases:
/// `prepare` (checking, hashing and indexing every append of the batch), `apply` (sled's
/// `apply_batch`), `flush` (sled's `flush`) and `sync` (the `fdatasync`s).
fn phase_done(phase: &'static str, began: Instant) -> Instant {
    let now = Instant::now();
    metrics::histogram!("safeguard_commit_phase_seconds", "phase" => phase)
        .record(now.duration_since(began).as_secs_f64());
    now
}

/// How far the clock may read before the last revision's time before it is said (see
/// `Writer::watch_clock`): more than any two revisions of one batch are apart.
const CLOCK_SLACK_MILLIS: i64 = 1_000;

/// Whether the clock reads well before the last revision's time, so that is said once when it
/// starts and once when it ends, not at every revision.
#[derive(Debug, Default)]
struct ClockWatch {
    behind: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum ClockNews {
    /// The clock now reads more than [`CLOCK_SLACK_MILLIS`] before the last revision's time.
    Behind,
    /// It has passed that time again.
    CaughtUp,
}

impl ClockWatch {
    /// What changed, now that the clock reads `behind_millis` before the last revision's time
    /// (negative: after it).
    fn see(&mut self, behind_millis: i64) -> Option<ClockNews> {
        if !self.behind && behind_millis > CLOCK_SLACK_MILLIS {
            self.behind = true;
            Some(ClockNews::Behind)
        } else if self.behind && behind_millis <= 0 {
            self.behind = false;
            Some(ClockNews::CaughtUp)
        } else {
            None
        }
    }
}

/// The writer thread's state: the only code that writes revisions.
struct Writer {
    db: sled::Db,
    dir: PathBuf,
    data_file: DataFile,
    head: Head,
    last_millis: i64,
    clock: ClockWatch,
    known_snapshots: HashSet<String>,
    /// Usage of each tool version, as last written, keyed like the store's `u` records.
    usage: HashMap<Vec<u8>, super::VersionInfo>,
    /// Set when a batch could not be made durable: from then on nothing is acknowledged.
    failure: Failure,
    /// The anchor file ([`ANCHOR_FILE`]), rewritten in place after each durable batch.
    anchor: File,
    max_batch: usize,
}

/// What one batch has decided so far, layered over what is on disk.
#[derive(Default)]
struct Overlay {
    revisions: HashMap<String, u32>,
    idempotency: HashMap<(String, String), (String, Revision)>,
    snapshots: HashSet<String>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.blocking_recv() {
            let mut commands = vec![first];
            while commands.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(c) => commands.push(c),
                    Err(_) => break,
                }
            }
            self.commit(commands);
        }
    }

    fn commit(&mut self, commands: Vec<Command>) {
        let started = Instant::now();
        let batch_began = SystemTime::now();
        if let Some(refusal) = self.failure.refusal() {
            for c in commands {
                let _ = c.reply.send(Err(refusal.clone()));
            }
            return;
        }
        let head_before = self.head.clone();
        let mut batch = sled::Batch::default();
        let mut overlay = Overlay::default();
        let mut answers = Vec::with_capacity(commands.len());
        let mut wrote = 0usize;
        let preparing = Instant::now();
        for c in commands {
            let result = self.prepare(
                c.draft,
                &c.prepared,
                c.precondition,
                &mut batch,
                &mut overlay,
            );
            if matches!(&result, Ok(a) if !a.replayed) {
                wrote += 1;
            }
            answers.push((c.reply, result));
        }
        if wrote > 0 {
            batch.insert(b"h".as_slice(), encode(&self.head));
            phase_done("prepare", preparing);
            if let Err(e) = self.make_durable(batch, batch_began) {
                let refusal = self.failure.fail(e);
                self.head = head_before;
                for (reply, _) in answers {
                    let _ = reply.send(Err(refusal.clone()));
                }
                return;
            }
            // After the batch is on disk, never before: the anchor may lag the journal (a crash
            // between the two), never lead it. No fdatasync: it only has to outlive damage to
            // sled's files, and the line only grows, so writing it over the last one in place
            // leaves nothing of the old one behind.
            if let Err(e) = self
                .anchor
                .write_all_at(anchor_line(&self.head).as_bytes(), 0)
            {
                tracing::warn!(error = %e, "the anchor file could not be written");
            }
            self.known_snapshots.extend(overlay.snapshots);
            metrics::histogram!("safeguard_commit_batch_size").record(wrote as f64);
            metrics::histogram!("safeguard_commit_seconds").record(started.elapsed().as_secs_f64());
        }
        for (reply, result) in answers {
            let _ = reply.send(result);
        }
    }

    fn make_durable(&self, batch: sled::Batch, batch_began: SystemTime) -> StoreResult<()> {
        // Before the batch reaches sled, so nothing of it is kept when the folder is gone; and
        // again once it is on disk, for a folder replaced while it was written.
        self.data_file.still_in_place()?;
        let phase = Instant::now();
        self.db.apply_batch(batch)?;
        let phase = phase_done("apply", phase);
        self.db.flush()?;
        let phase = phase_done("flush", phase);
        sync_new_blobs(&self.dir.join("blobs"), batch_began)?;
        self.data_file.sync()?;
        phase_done("sync", phase);
        Ok(())
    }

    fn prepare(
        &mut self,
        draft: Draft,
        prepared: &Prepared,
        precondition: Precondition,
        batch: &mut sled::Batch,
        overlay: &mut Overlay,
    ) -> StoreResult<Appended> {
        let revision_number = match &precondition {
            Precondition::New { idempotency } => {
                if let Some(key) = idempotency {
                    if let Some(first) = self.idempotent_replay(key, overlay)? {
                        return Ok(Appended {
                            revision: first,
                            replayed: true,
                        });
                    }
                }
                1
            }
            Precondition::Next { expected_revision } => {
                let current = match overlay.revisions.get(&draft.decision_id) {
                    Some(n) => *n,
                    None => self.current_revision(&draft.decision_id)?,
                };
                if current == 0 {
                    return Err(StoreError::UnknownDecision(draft.decision_id));
                }
                if current != *expected_revision {
                    return Err(StoreError::Conflict {
                        decision_id: draft.decision_id,
                        expected: *expected_revision,
                        current,
                    });
                }
                current + 1
            }
        };

        let seq = self.head.seq + 1;
        let now = chrono::Utc::now();
        self.watch_clock(now.timestamp_millis());
        // Journal order and time order must agree even if the clock steps back.
        let millis = now.timestamp_millis().max(self.last_millis);
        let recorded_at = chrono::DateTime::from_timestamp_millis(millis)
            .unwrap_or(now)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let (canonical, hash) = prepared.seal(Placement {
            prev_hash: &self.head.hash,
            recorded_at: &recorded_at,
            revision: revision_number,
            seq,
        });
        let revision = Revision {
            seq,
            decision_id: draft.decision_id,
            revision: revision_number,
            kind: draft.kind,
            case_id: draft.case_id,
            tool: draft.tool,
            input: draft.input,
            outcome: draft.outcome,
            override_: draft.override_,
            actor: draft.actor,
            recorded_at,
            prev_hash: self.head.hash.clone(),
            hash,
        };

        let seq_bytes = seq.to_be_bytes();
        batch.insert(
            journal_key(seq).as_slice(),
            encode_entry(&revision.hash, &canonical),
        );
        let mut d_key = decision_prefix(&revision.decision_id);
        d_key.extend_from_slice(&revision_number.to_be_bytes());
        batch.insert(d_key, seq_bytes.as_slice());
        if revision_number == 1 {
            let c_key = [
                b"c".as_slice(),
                revision.case_id.as_bytes(),
                &[0],
                &seq_bytes,
            ]
            .concat();
            batch.insert(c_key, revision.decision_id.as_bytes());
        }
        let t_key = [
            b"t".as_slice(),
            revision.tool.id.as_bytes(),
            &[0],
            &seq_bytes,
        ]
        .concat();
        batch.insert(t_key, revision.decision_id.as_bytes());
        // The time index names the first revision of each millisecond. `recorded_at` never
        // goes back along the journal, so the revisions of a time range are the seqs from the
        // first at or after its start to the first at or after its end.
        if millis != self.last_millis {
            let w_key = [b"w".as_slice(), &(millis as u64).to_be_bytes(), &seq_bytes].concat();
            batch.insert(w_key, b"".as_slice());
        }
        if revision.is_assessment() {
            self.count_use(&revision, batch)?;
        }
        let digest = &revision.tool.digest;
        if !self.known_snapshots.contains(digest) && overlay.snapshots.insert(digest.clone()) {
            batch.insert(
                [b"s".as_slice(), digest.as_bytes()].concat(),
                encode(&*draft.snapshot),
            );
        }
        if let Precondition::New {
            idempotency: Some(key),
        } = &precondition
        {
            let record = IdempotencyRecord {
                request_digest: key.request_digest.clone(),
                decision_id: revision.decision_id.clone(),
            };
            batch.insert(idempotency_key(&key.subject, &key.key), encode(&record));
            overlay.idempotency.insert(
                (key.subject.clone(), key.key.clone()),
                (key.request_digest.clone(), revision.clone()),
            );
        }

        overlay
            .revisions
            .insert(revision.decision_id.clone(), revision_number);
        self.head = Head {
            seq,
            hash: revision.hash.clone(),
        };
        self.last_millis = millis;
        Ok(Appended {
            revision,
            replayed: false,
        })
    }

    /// Says when the clock reads well before the last revision's time: from then until real
    /// time catches up, every revision is stamped with that last time (journal order and time
    /// order must agree), so an operator needs to know the times are held. A clock set back, or
    /// one that had jumped forward and was corrected, both look like this.
    fn watch_clock(&mut self, now_millis: i64) {
        let behind = self.last_millis - now_millis;
        match self.clock.see(behind) {
            Some(ClockNews::Behind) => tracing::warn!(
                behind_ms = behind,
                last_recorded_ms = self.last_millis,
                "the clock reads before the last revision's time: revisions are recorded at that time until the clock passes it"
            ),
            Some(ClockNews::CaughtUp) => {
                metrics::gauge!("safeguard_clock_behind_seconds").set(0.0);
                tracing::info!("the clock has passed the last revision's time again");
            }
            None => {}
        }
        if self.clock.behind {
            metrics::gauge!("safeguard_clock_behind_seconds").set(behind.max(0) as f64 / 1000.0);
        }
    }

    /// Counts a decision made by a tool version, for `versions`.
    fn count_use(&mut self, revision: &Revision, batch: &mut sled::Batch) -> StoreResult<()> {
        let key = version_key(b'u', &revision.tool.id, &revision.tool.digest);
        let usage = match self.usage.get_mut(&key) {
            Some(usage) => usage,
            None => {
                let loaded = match self.db.get(&key)? {
                    Some(bytes) => decode(&bytes)?,
                    None => super::VersionInfo {
                        tool: revision.tool.id.clone(),
                        version: revision.tool.version.clone(),
                        digest: revision.tool.digest.clone(),
                        first_served_at: None,
                        first_used_at: Some(revision.recorded_at.clone()),
                        last_used_at: None,
                        decisions: 0,
                    },
                };
                self.usage.entry(key.clone()).or_insert(loaded)
            }
        };
        usage.decisions += 1;
        usage.last_used_at = Some(revision.recorded_at.clone());
        batch.insert(key, encode(usage));
        Ok(())
    }

    /// The first decision made under `key`, if the key was used before with the same request.
    fn idempotent_replay(
        &self,
        key: &super::IdempotencyKey,
        overlay: &Overlay,
    ) -> StoreResult<Option<Revision>> {
        if let Some((digest, revision)) = overlay
            .idempotency
            .get(&(key.subject.clone(), key.key.clone()))
        {
            return if *digest == key.request_digest {
                Ok(Some(revision.clone()))
            } else {
                Err(StoreError::IdempotencyMismatch)
            };
        }
        stored_replay(&self.db, key)
    }

    fn current_revision(&self, decision_id: &str) -> StoreResult<u32> {
        match self
            .db
            .scan_prefix(decision_prefix(decision_id))
            .keys()
            .next_back()
        {
            None => Ok(0),
            Some(key) => {
                let key = key?;
                let tail: [u8; 4] = key[key.len() - 4..]
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("short decision index key".into()))?;
                Ok(u32::from_be_bytes(tail))
            }
        }
    }
}

/// The first decision made under `key`, as stored: `None` when the key was never used, a
/// mismatch when it was used with another request.
fn stored_replay(db: &sled::Db, key: &super::IdempotencyKey) -> StoreResult<Option<Revision>> {
    let Some(bytes) = db.get(idempotency_key(&key.subject, &key.key))? else {
        return Ok(None);
    };
    let record: IdempotencyRecord = decode(&bytes)?;
    if record.request_digest != key.request_digest {
        return Err(StoreError::IdempotencyMismatch);
    }
    let mut first = decision_prefix(&record.decision_id);
    first.extend_from_slice(&1u32.to_be_bytes());
    let seq = db
        .get(first)?
        .ok_or_else(|| StoreError::Corrupt("idempotency record without its decision".into()))?;
    let bytes = db
        .get([b"j".as_slice(), &seq].concat())?
        .ok_or_else(|| StoreError::Corrupt("decision index without its revision".into()))?;
    decode_revision(&bytes).map(Some)
}

fn idempotency_key(subject: &str, key: &str) -> Vec<u8> {
    [b"i".as_slice(), subject.as_bytes(), &[0], key.as_bytes()].concat()
}

/// `fdatasync`s every blob file written since `since`, and the blob folder itself.
fn sync_new_blobs(blobs: &Path, since: SystemTime) -> StoreResult<()> {
    let entries = match std::fs::read_dir(blobs) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let since = since - Duration::from_secs(1);
    let mut any = false;
    for entry in entries.flatten() {
        let modified = entry.metadata().and_then(|m| m.modified());
        if modified.map_or(true, |m| m >= since) {
            // sled deletes blobs it no longer needs from its own threads; one that is gone
            // between the listing and the open holds nothing this batch needs.
            match File::open(entry.path()).and_then(|f| f.sync_data()) {
                Ok(()) => any = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    if any {
        File::open(blobs)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_behind_the_journal_is_said_once_when_it_starts_and_once_when_it_ends() {
        let mut clock = ClockWatch::default();
        // Within a second is how revisions of one batch fall: nothing to say.
        assert_eq!(clock.see(-5), None);
        assert_eq!(clock.see(CLOCK_SLACK_MILLIS), None);
        assert_eq!(clock.see(CLOCK_SLACK_MILLIS + 1), Some(ClockNews::Behind));
        assert_eq!(clock.see(3_600_000), None);
        // Still behind, if by little: revisions still carry the held time.
        assert_eq!(clock.see(1), None);
        assert_eq!(clock.see(0), Some(ClockNews::CaughtUp));
        assert_eq!(clock.see(-1), None);
        assert_eq!(clock.see(CLOCK_SLACK_MILLIS + 1), Some(ClockNews::Behind));
    }
}
