//! Verifying the journal: walk every stored revision in sequence order, recompute its hash from
//! the bytes on disk, and check that it chains to the one before. The first break is reported by
//! sequence number; nothing after it can be trusted.
//!
//! Reading and hashing run on every core: the journal is cut into chunks of consecutive
//! sequence numbers, each worker reads its own chunks from the store and hashes them, and the
//! chain is then checked in order. Memory is bounded by the chunks in flight.

use std::sync::mpsc;

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
    verify_in_chunks(store, progress, CHUNK)
}

fn verify_in_chunks(
    store: &dyn Store,
    progress: &(dyn Fn(u64) + Sync),
    chunk_size: u64,
) -> Result<VerifyReport, StoreError> {
    // The anchor before the head: a batch made durable in between moves the head, never the
    // anchor past it.
    let anchor = store.anchor()?;
    let mut anchored_hash = None;
    let head = store.head()?;
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    // Chunk i holds seqs i*chunk_size+1 ..= (i+1)*chunk_size; the last one also takes whatever lies past
    // the head, so entries the head does not account for are still read (and reported).
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
                    let first = chunk * chunk_size + 1;
                    let last = (chunk < last_chunk).then_some(first + chunk_size - 1);
                    let checked = store
                        .journal_raw(first)
                        .take_while(|entry| match (entry, last) {
                            (Ok((seq, _)), Some(last)) => *seq <= last,
                            _ => true,
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
    report.ok = report.first_break.is_none();
    Ok(report)
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

    /// A store holding `n` revisions, appended concurrently so they share batches.
    async fn store_with(dir: &std::path::Path, n: usize) -> SledStore {
        let store = SledStore::open(dir, options()).unwrap();
        let appends: Vec<_> = (0..n)
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
        store
    }

    #[tokio::test]
    async fn every_chunk_is_read_and_checked_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), 23).await;

        for chunk_size in [1, 4, 22, 23, 24, 4096] {
            let report = verify_in_chunks(&store, &|_| {}, chunk_size).unwrap();
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
        let store = SledStore::open(dir.path(), options()).unwrap();

        for chunk_size in [4, 16, 17, 4096] {
            let report = verify_in_chunks(&store, &|_| {}, chunk_size).unwrap();
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
