//! Verifying the journal: walk every stored revision in sequence order, recompute its hash from
//! the bytes on disk, and check that it chains to the one before. The first break is reported by
//! sequence number; nothing after it can be trusted.
//!
//! Reading and hashing run on every core: the journal is cut into chunks of consecutive
//! sequence numbers, each worker reads its own chunks from the store and hashes them, and the
//! chain is then checked in order. Memory is bounded by the chunks in flight.

use std::sync::mpsc;

use super::Cancel;
use crate::store::{sha256, Entry, Head, Link, Store, StoreError, GENESIS_HASH};
use serde::Serialize;

/// The result of a verification.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VerifyReport {
    /// True when every revision hashes correctly and chains to the one before.
    pub ok: bool,
    /// Revisions checked.
    pub revisions: u64,
    /// The head the store records.
    #[schema(value_type = Object)]
    pub head: Head,
    /// The first problem, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_break: Option<Break>,
}

/// Where the chain breaks, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Break {
    pub seq: u64,
    pub reason: String,
}

/// What a worker learns about one entry.
struct Checked {
    seq: u64,
    /// `(stored hash, stored prev_hash, recomputed hash)`, or why the entry is unreadable.
    result: Result<(String, String, String), String>,
}

/// Revisions per chunk of work.
const CHUNK: u64 = 4096;

/// Verifies the whole journal; `progress` is called with the count checked so far.
pub fn verify(
    store: &dyn Store,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<VerifyReport, StoreError> {
    verify_until(store, progress, &Cancel::never()).map(|r| r.expect("never cancelled"))
}

/// [`verify`], stopping soon after `cancel` is set, with `Ok(None)`.
pub fn verify_until(
    store: &dyn Store,
    progress: &(dyn Fn(u64) + Sync),
    cancel: &Cancel,
) -> Result<Option<VerifyReport>, StoreError> {
    verify_in_chunks(store, progress, CHUNK, cancel)
}

fn verify_in_chunks(
    store: &dyn Store,
    progress: &(dyn Fn(u64) + Sync),
    chunk_size: u64,
    cancel: &Cancel,
) -> Result<Option<VerifyReport>, StoreError> {
    // The anchor before the head: a batch made durable in between moves the head, never the
    // anchor past it.
    let anchor = store.anchor()?;
    let mut anchored_hash = None;
    let head = store.head()?;
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    // Chunk i holds seqs i*chunk_size+1 ..= (i+1)*chunk_size, up to the head read above: the
    // chain as it stood when verify began. Revisions the running service adds meanwhile are
    // left for the next run; entries past the head that no head accounts for are looked for
    // after the walk.
    let last_chunk = head.seq / chunk_size;
    let mut report = VerifyReport {
        ok: true,
        revisions: 0,
        head: head.clone(),
        first_break: None,
    };
    let mut expected_seq = 1u64;
    let mut prev_hash = GENESIS_HASH.to_owned();
    std::thread::scope(|scope| -> Result<(), StoreError> {
        // Each worker reads and hashes its own chunks (w, w + workers, ...) straight from the
        // store, so reading is spread over the cores too; chunk i comes back from worker
        // i % workers, in order, and the chain is walked in order from those answers. Two chunks
        // in flight per worker bound the memory.
        let mut answers = Vec::new();
        for w in 0..workers {
            let (tx, rx) = mpsc::sync_channel::<Result<Vec<Checked>, StoreError>>(2);
            answers.push(rx);
            scope.spawn(move || {
                for chunk in (w..=last_chunk).step_by(workers as usize) {
                    if cancel.is_cancelled() {
                        break;
                    }
                    let first = chunk * chunk_size + 1;
                    let last = (first + chunk_size - 1).min(head.seq);
                    let checked = store
                        .journal_raw(first)
                        .take_while(|entry| match entry {
                            Ok((seq, _)) => *seq <= last,
                            Err(_) => true,
                        })
                        .map(|entry| entry.map(|(seq, bytes)| check_entry(seq, &bytes)))
                        .collect();
                    if tx.send(checked).is_err() {
                        break;
                    }
                }
            });
        }

        'chain: for chunk in 0..=last_chunk {
            if cancel.is_cancelled() {
                // Dropping the answers ends the workers at their next chunk.
                break 'chain;
            }
            let checked = answers[(chunk % workers) as usize]
                .recv()
                .expect("a verify worker answers every chunk it owns")?;
            {
                for c in checked {
                    report.revisions += 1;
                    // A revision missing or out of place breaks the chain where it should be.
                    let (at, problem) = if c.seq != expected_seq {
                        (expected_seq, Some(format!("expected revision {expected_seq} next, found {} (a revision is missing or out of place)", c.seq)))
                    } else {
                        (c.seq,
                        match &c.result {
                            Err(why) => Some(why.clone()),
                            Ok((stored, _, recomputed)) if stored != recomputed => Some(format!(
                                "its content does not match its hash (stored {stored}, computed {recomputed}): it was changed after it was written"
                            )),
                            Ok((_, stored_prev, _)) if *stored_prev != prev_hash => Some(format!(
                                "its prev_hash {stored_prev} is not the hash of the revision before it ({prev_hash})"
                            )),
                            Ok((stored, _, _)) => {
                                if anchor.as_ref().is_some_and(|a| a.seq == c.seq) {
                                    anchored_hash = Some(stored.clone());
                                }
                                prev_hash = stored.clone();
                                None
                            }
                        })
                    };
                    if let Some(reason) = problem {
                        report.first_break = Some(Break { seq: at, reason });
                        break 'chain;
                    }
                    expected_seq += 1;
                }
                progress(report.revisions);
            }
        }
        Ok(())
    })?;
    if report.first_break.is_none() && (head.seq != expected_seq - 1 || head.hash != prev_hash) {
        {
            report.first_break = Some(Break {
                seq: expected_seq,
                reason: format!(
                    "the store's head says revision {} with hash {}, but the journal ends at {} with {prev_hash}: revisions are missing from the end",
                    head.seq,
                    head.hash,
                    expected_seq - 1
                ),
            });
        }
    }
    if report.first_break.is_none() {
        report.first_break = past_the_head(store)?;
    }
    if let (None, Some(anchor)) = (&report.first_break, &anchor) {
        let end = expected_seq - 1;
        if anchor.seq > end {
            report.first_break = Some(Break {
                seq: expected_seq,
                reason: format!(
                    "the journal ends at revision {end}, but revisions up to {} were made durable (the store's anchor file says so): revisions are missing from the end, as when the store's files were damaged",
                    anchor.seq
                ),
            });
        } else if anchored_hash.as_ref() != Some(&anchor.hash) {
            report.first_break = Some(Break {
                seq: anchor.seq,
                reason: format!(
                    "the store's anchor file says revision {} has hash {}, but the journal's has {}",
                    anchor.seq,
                    anchor.hash,
                    anchored_hash.as_deref().unwrap_or("none")
                ),
            });
        }
    }
    if cancel.is_cancelled() {
        return Ok(None);
    }
    report.ok = report.first_break.is_none();
    Ok(Some(report))
}

/// A journal entry past the head, which no write accounts for: a write stores its revisions and
/// moves the head in one atomic batch, so every entry the journal holds is within the head
/// read after it. The journal's end is read first, then the head, so a revision the service
/// adds in between is within that head, never taken for damage.
fn past_the_head(store: &dyn Store) -> Result<Option<Break>, StoreError> {
    let end = store.head()?.seq;
    let Some(last) = store.journal_raw(end + 1).last().transpose()? else {
        return Ok(None);
    };
    let (beyond, _) = last;
    let head = store.head()?;
    Ok((beyond > head.seq).then(|| Break {
        seq: head.seq + 1,
        reason: format!(
            "the journal holds revision {beyond}, past the store's head ({}): revisions were written outside the service",
            head.seq
        ),
    }))
}

fn check_entry(seq: u64, bytes: &[u8]) -> Checked {
    let result = (|| {
        let entry = Entry::split(bytes).map_err(|e| e.to_string())?;
        let link = Link::read(entry.canonical)?;
        if link.seq != seq {
            return Err(format!(
                "the revision stored at {seq} says it is revision {}",
                link.seq
            ));
        }
        Ok((
            entry.hash.to_owned(),
            link.prev_hash,
            sha256(entry.canonical),
        ))
    })();
    Checked { seq, result }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use crate::rules::Outcome;
    use crate::store::{
        Actor, Draft, Precondition, RevisionKind, SledStore, StoreOptions, ToolRef,
    };
    use serde_json::json;

    fn options() -> StoreOptions {
        StoreOptions {
            cache_bytes: 1 << 20,
            ..StoreOptions::default()
        }
    }

    /// The store in `dir`, once sled's background threads of the last handle on it (a raw
    /// `sled::Db` the test changed it through) have let go of its lock.
    fn reopen(dir: &std::path::Path) -> SledStore {
        for _ in 0..100 {
            match SledStore::open(dir, options()) {
                Err(StoreError::Locked(_)) => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                opened => return opened.unwrap(),
            }
        }
        panic!("the store in {} stays locked", dir.display());
    }

    /// A store holding `n` revisions, appended concurrently so they share batches.
    async fn store_with(dir: &std::path::Path, n: usize) -> SledStore {
        let store = SledStore::open(dir, options()).unwrap();
        append(&store, 0..n).await;
        store
    }

    /// Appends one new decision for each of `ids`, concurrently.
    async fn append(store: &SledStore, ids: std::ops::Range<usize>) {
        let appends: Vec<_> = ids
            .map(|i| {
                tokio::spawn(store.append(
                    Draft {
                        decision_id: format!("d{i}"),
                        kind: RevisionKind::Submitted,
                        case_id: format!("c{}", i % 3),
                        tool: ToolRef {
                            id: "t".into(),
                            version: "1".into(),
                            digest: "sha256:t".into(),
                        },
                        input: json!({"i": i}),
                        outcome: Outcome {
                            level: "low".into(),
                            score: None,
                            recommendation: "r".into(),
                            explanation: "e".into(),
                            reasons: vec![],
                            flags: vec![],
                        },
                        override_: None,
                        actor: Actor {
                            subject: "s".into(),
                            role: Role::Practitioner,
                        },
                        snapshot: Default::default(),
                    },
                    Precondition::New { idempotency: None },
                ))
            })
            .collect();
        for appended in appends {
            appended.await.unwrap().unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chain_written_to_while_it_is_verified_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(store_with(dir.path(), 50).await);
        let writer = {
            let store = std::sync::Arc::clone(&store);
            tokio::spawn(async move {
                for round in 0..40 {
                    append(&store, 1000 + round * 16..1000 + (round + 1) * 16).await;
                }
            })
        };
        let mut runs = 0;
        while !writer.is_finished() {
            let store = std::sync::Arc::clone(&store);
            let report = tokio::task::spawn_blocking(move || {
                verify_in_chunks(store.as_ref(), &|_| {}, 8, &Cancel::never()).map(Option::unwrap)
            })
            .await
            .unwrap()
            .unwrap();
            assert!(report.ok, "run {runs}: {report:?}");
            runs += 1;
        }
        writer.await.unwrap();
        assert!(
            runs > 1,
            "verify ran only {runs} time(s) while the writes landed"
        );
        assert!(verify(store.as_ref(), &|_| {}).unwrap().ok);
    }

    #[tokio::test]
    async fn a_cancelled_verify_stops_without_a_report() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), 30).await;
        let cancel = Cancel::default();
        drop(cancel.when_dropped());

        let report = verify_in_chunks(&store, &|_| {}, 4, &cancel).unwrap();

        assert!(report.is_none(), "{report:?}");
        assert!(verify_in_chunks(&store, &|_| {}, 4, &Cancel::never())
            .unwrap()
            .is_some_and(|r| r.ok));
    }

    #[tokio::test]
    async fn an_entry_past_the_head_is_a_break() {
        let dir = tempfile::tempdir().unwrap();
        drop(store_with(dir.path(), 5).await);
        {
            let db = sled::open(dir.path()).unwrap();
            let last = db.get(*b"j\0\0\0\0\0\0\0\x05").unwrap().unwrap();
            db.insert(*b"j\0\0\0\0\0\0\0\x07", last).unwrap();
            db.flush().unwrap();
        }
        let store = reopen(dir.path());

        let report = verify(&store, &|_| {}).unwrap();

        let first_break = report.first_break.expect("the stray entry is found");
        assert_eq!(first_break.seq, 6);
        assert!(
            first_break.reason.contains("past the store's head"),
            "{}",
            first_break.reason
        );
    }

    #[tokio::test]
    async fn every_chunk_is_read_and_checked_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), 23).await;

        for chunk_size in [1, 4, 22, 23, 24, 4096] {
            let report = verify_in_chunks(&store, &|_| {}, chunk_size, &Cancel::never())
                .unwrap()
                .unwrap();
            assert!(report.ok, "chunks of {chunk_size}: {report:?}");
            assert_eq!(report.revisions, 23, "chunks of {chunk_size}");
        }
    }

    #[tokio::test]
    async fn a_break_in_a_later_chunk_is_found_at_its_seq() {
        let dir = tempfile::tempdir().unwrap();
        drop(store_with(dir.path(), 23).await);
        {
            let db = sled::open(dir.path()).unwrap();
            db.remove(*b"j\0\0\0\0\0\0\0\x11")
                .unwrap()
                .expect("seq 17 is stored");
            db.flush().unwrap();
        }
        let store = reopen(dir.path());

        for chunk_size in [4, 16, 17, 4096] {
            let report = verify_in_chunks(&store, &|_| {}, chunk_size, &Cancel::never())
                .unwrap()
                .unwrap();
            let first_break = report.first_break.clone().expect("the gap is found");
            assert_eq!(first_break.seq, 17, "chunks of {chunk_size}");
            assert!(
                first_break.reason.contains("missing"),
                "{}",
                first_break.reason
            );
            assert_eq!(report.revisions, 17, "chunks of {chunk_size}: {report:?}");
        }
    }
}
