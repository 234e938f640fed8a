//! Verifying the journal: walk every stored revision in sequence order, recompute its hash from
//! the bytes on disk, and check that it chains to the one before. The first break is reported by
//! sequence number; nothing after it can be trusted.
//!
//! Hashing is the expensive part, so it runs on every core: a reader thread hands out chunks of
//! raw entries, workers hash them, and the chain is then checked in order. Memory is bounded by
//! the chunks in flight.

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

const CHUNK: usize = 1024;

/// A numbered chunk of raw journal entries, `(seq, bytes)`.
type Chunk = (usize, Vec<(u64, Vec<u8>)>);

/// Verifies the whole journal; `progress` is called with the count checked so far.
pub fn verify(
    store: &dyn Store,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<VerifyReport, StoreError> {
    let head = store.head()?;
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut chunks_in: Vec<mpsc::SyncSender<Chunk>> = Vec::new();
    let (out_tx, out_rx) = mpsc::sync_channel::<(usize, Vec<Checked>)>(workers * 2);
    let mut report = VerifyReport {
        ok: true,
        revisions: 0,
        head: head.clone(),
        first_break: None,
    };
    let mut expected_seq = 1u64;
    let mut prev_hash = GENESIS_HASH.to_owned();
    std::thread::scope(|scope| -> Result<(), StoreError> {
        for _ in 0..workers {
            let (tx, rx) = mpsc::sync_channel::<Chunk>(2);
            chunks_in.push(tx);
            let out = out_tx.clone();
            scope.spawn(move || {
                for (index, chunk) in rx {
                    let checked = chunk
                        .into_iter()
                        .map(|(seq, bytes)| check_entry(seq, &bytes))
                        .collect();
                    if out.send((index, checked)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(out_tx);
        // The reader: deals chunks to workers round-robin, so chunk i comes back from worker
        // i % workers and the chain can be walked in order.
        let reader = scope.spawn(move || -> Result<(), StoreError> {
            let mut chunk = Vec::with_capacity(CHUNK);
            let mut index = 0usize;
            for entry in store.journal_raw(1) {
                chunk.push(entry?);
                if chunk.len() == CHUNK {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                    if chunks_in[index % chunks_in.len()]
                        .send((index, full))
                        .is_err()
                    {
                        return Ok(());
                    }
                    index += 1;
                }
            }
            if !chunk.is_empty() {
                let _ = chunks_in[index % chunks_in.len()].send((index, chunk));
            }
            Ok(())
        });

        let mut pending = std::collections::BTreeMap::new();
        let mut next = 0usize;
        for (index, checked) in out_rx {
            pending.insert(index, checked);
            while let Some(checked) = pending.remove(&next) {
                next += 1;
                if report.first_break.is_some() {
                    continue;
                }
                for c in checked {
                    report.revisions += 1;
                    let problem = if c.seq != expected_seq {
                        Some(format!("expected revision {expected_seq} next, found {} (a revision is missing or out of place)", c.seq))
                    } else {
                        match &c.result {
                            Err(why) => Some(why.clone()),
                            Ok((stored, _, recomputed)) if stored != recomputed => Some(format!(
                                "its content does not match its hash (stored {stored}, computed {recomputed}): it was changed after it was written"
                            )),
                            Ok((_, stored_prev, _)) if *stored_prev != prev_hash => Some(format!(
                                "its prev_hash {stored_prev} is not the hash of the revision before it ({prev_hash})"
                            )),
                            Ok((stored, _, _)) => {
                                prev_hash = stored.clone();
                                None
                            }
                        }
                    };
                    if let Some(reason) = problem {
                        report.first_break = Some(Break { seq: c.seq, reason });
                        break;
                    }
                    expected_seq += 1;
                }
                progress(report.revisions);
            }
        }
        reader.join().expect("the reader thread does not panic")?;
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
