//! The hash chain: each revision's hash covers its whole content, including the previous
//! revision's hash, so changing, removing or reordering any stored revision breaks every hash
//! after it.
//!
//! # What is hashed, and what is stored
//!
//! A revision's hash is `sha256:<hex>` over the RFC 8785 canonical JSON of the revision without
//! its `hash` field. Those canonical bytes are exactly what the store keeps, behind a one-line
//! header holding the hash ([`encode_entry`]), so that verifying the chain hashes the bytes on
//! disk as they are: nothing is parsed or re-serialised to check a hash.
//!
//! The canonical bytes are built in two steps so the single writer thread does as little as
//! possible. Canonical JSON orders keys, and every field the writer decides (`prev_hash`,
//! `recorded_at`, `revision`, `seq`) sorts after every field the request knows (`actor`,
//! `case_id`, `decision_id`, `input`, `kind`, `outcome`, `override`) and before `tool`. So the
//! request's own task canonicalises its part ([`Prepared::of`], the expensive step, done in
//! parallel), and the writer only splices in its four small fields ([`Prepared::seal`]) and
//! hashes. A unit test holds the spliced bytes equal to canonicalising the whole revision.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Actor, Draft, Override, Revision, RevisionKind, StoreError};
use crate::rules::Outcome;

/// The `prev_hash` of the first revision.
pub const GENESIS_HASH: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// `sha256:<hex>` over some bytes.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The fields a request knows, in canonical key order (every one sorts before `prev_hash`).
#[derive(Serialize)]
struct Known<'a> {
    actor: &'a Actor,
    case_id: &'a str,
    decision_id: &'a str,
    input: &'a Value,
    kind: RevisionKind,
    outcome: &'a Outcome,
    #[serde(rename = "override", skip_serializing_if = "Option::is_none")]
    override_: &'a Option<Override>,
}

/// A draft's canonical bytes, but for the fields only the writer can set.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// `{"actor":…,"override":…` : the canonical object up to, not including, `prev_hash`.
    known: Vec<u8>,
    /// `,"tool":{…}}` : the last field and the closing brace.
    tail: Vec<u8>,
}

/// Where the writer's fields go.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    pub prev_hash: &'a str,
    pub recorded_at: &'a str,
    pub revision: u32,
    pub seq: u64,
}

impl Prepared {
    /// Canonicalises what the request knows; the costly part of hashing, off the writer.
    pub fn of(draft: &Draft) -> Prepared {
        let known = Known {
            actor: &draft.actor,
            case_id: &draft.case_id,
            decision_id: &draft.decision_id,
            input: &draft.input,
            kind: draft.kind,
            outcome: &draft.outcome,
            override_: &draft.override_,
        };
        let mut known = canonical(&known);
        let closing = known.pop();
        debug_assert_eq!(closing, Some(b'}'));
        let mut tail = b",\"tool\":".to_vec();
        tail.extend_from_slice(&canonical(&draft.tool));
        tail.push(b'}');
        Prepared { known, tail }
    }

    /// The revision's complete canonical bytes (without `hash`) and its hash.
    pub fn seal(&self, at: Placement<'_>) -> (Vec<u8>, String) {
        let mut bytes = Vec::with_capacity(self.known.len() + self.tail.len() + 160);
        bytes.extend_from_slice(&self.known);
        for (key, value) in [
            ("prev_hash", canonical(&at.prev_hash)),
            ("recorded_at", canonical(&at.recorded_at)),
            ("revision", canonical(&at.revision)),
            ("seq", canonical(&at.seq)),
        ] {
            bytes.extend_from_slice(b",\"");
            bytes.extend_from_slice(key.as_bytes());
            bytes.extend_from_slice(b"\":");
            bytes.extend_from_slice(&value);
        }
        bytes.extend_from_slice(&self.tail);
        let hash = sha256(&bytes);
        (bytes, hash)
    }
}

/// RFC 8785 canonical JSON (`canon-json`; `tests/api/engine.rs` checks it against a second,
/// independent implementation).
fn canonical<T: Serialize>(value: &T) -> Vec<u8> {
    canon_json::CanonJsonSerialize::to_canon_json_vec(value)
        .expect("revision fields always serialise")
}

/// A stored journal entry: the hash on the first line, then the canonical bytes it covers.
pub fn encode_entry(hash: &str, canonical: &[u8]) -> Vec<u8> {
    let mut entry = Vec::with_capacity(hash.len() + 1 + canonical.len());
    entry.extend_from_slice(hash.as_bytes());
    entry.push(b'\n');
    entry.extend_from_slice(canonical);
    entry
}

/// A journal entry split into its stored hash and the canonical bytes that hash covers.
pub struct Entry<'a> {
    pub hash: &'a str,
    pub canonical: &'a [u8],
}

impl<'a> Entry<'a> {
    pub fn split(bytes: &'a [u8]) -> Result<Entry<'a>, StoreError> {
        let corrupt = || StoreError::Corrupt("a journal entry has no hash line".into());
        let newline = bytes.iter().position(|&b| b == b'\n').ok_or_else(corrupt)?;
        let hash = std::str::from_utf8(&bytes[..newline]).map_err(|_| corrupt())?;
        Ok(Entry {
            hash,
            canonical: &bytes[newline + 1..],
        })
    }

    /// The revision, with its hash.
    pub fn decode(&self) -> Result<Revision, StoreError> {
        let mut revision: Revision = serde_json::from_slice(self.canonical)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        revision.hash = self.hash.to_owned();
        Ok(revision)
    }

    /// The revision as one JSON object with its hash: the canonical bytes with `"hash"` spliced
    /// in first (the other keys keep their canonical order).
    pub fn to_json_with_hash(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.canonical.len() + self.hash.len() + 12);
        out.extend_from_slice(b"{\"hash\":\"");
        out.extend_from_slice(self.hash.as_bytes());
        out.push(b'"');
        if self.canonical.len() > 2 {
            out.push(b',');
        }
        out.extend_from_slice(self.canonical.get(1..).unwrap_or_default());
        out
    }
}

/// The hash of a revision given as JSON (as an export line carries it): its canonical form
/// without `hash`. This is how anyone can check an exported revision without the store.
pub fn hash_value_without_hash(value: &mut Value) -> String {
    if let Some(map) = value.as_object_mut() {
        map.remove("hash");
    }
    sha256(&canonical(&*value))
}

/// The chain fields of a stored revision, read without parsing the whole revision.
#[derive(Debug)]
pub struct Link {
    pub prev_hash: String,
    pub seq: u64,
}

/// The last fields of a canonical revision, exactly.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Tail {
    prev_hash: String,
    #[serde(rename = "recorded_at")]
    _recorded_at: serde::de::IgnoredAny,
    #[serde(rename = "revision")]
    _revision: serde::de::IgnoredAny,
    seq: u64,
    #[serde(rename = "tool")]
    _tool: ToolRefExactly,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolRefExactly {
    #[serde(rename = "digest")]
    _digest: serde::de::IgnoredAny,
    #[serde(rename = "id")]
    _id: serde::de::IgnoredAny,
    #[serde(rename = "version")]
    _version: serde::de::IgnoredAny,
}

impl Link {
    /// Reads `prev_hash` and `seq` from a revision's canonical bytes, looking only at its tail.
    ///
    /// In canonical JSON the writer's fields and `tool` come last, in this order. The last
    /// `,"prev_hash":"` is found from the end (a quote inside a string is always escaped, so the
    /// pattern can only be a key), and what follows it must parse as exactly
    /// `{prev_hash, recorded_at, revision, seq, tool}` up to the last byte. Had the match been a
    /// key nested deeper, the tail would close more braces than it opens and fail to parse, so a
    /// successful read is the top-level field.
    pub fn read(canonical: &[u8]) -> Result<Link, String> {
        const KEY: &[u8] = b",\"prev_hash\":\"";
        let unreadable =
            |why: String| format!("the stored revision is not a readable revision ({why})");
        let at = canonical
            .windows(KEY.len())
            .rposition(|w| w == KEY)
            .ok_or_else(|| unreadable("no prev_hash".into()))?;
        // `{` in place of the comma makes the tail an object of its own.
        let mut tail = Vec::with_capacity(canonical.len() - at);
        tail.push(b'{');
        tail.extend_from_slice(&canonical[at + 1..]);
        let tail: Tail = serde_json::from_slice(&tail).map_err(|e| unreadable(e.to_string()))?;
        Ok(Link {
            prev_hash: tail.prev_hash,
            seq: tail.seq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use crate::rules::Reason;
    use crate::store::{Declined, OverrideStatus, ToolRef};
    use serde_json::json;

    fn draft(override_: Option<Override>) -> Draft {
        Draft {
            decision_id: "d-\u{e9}\"quoted\"".into(),
            kind: RevisionKind::Overridden,
            case_id: "c\n1".into(),
            tool: ToolRef {
                id: "t".into(),
                version: "1.0 \u{1F600}".into(),
                digest: "sha256:x".into(),
            },
            input: json!({"b": [1, 2.5, 1e21, -0.0, "é\u{1}"], "a": {"z": null, "y": true}, "\u{20ac}": 1, "\u{1F600}": 2}),
            outcome: Outcome {
                level: "low".into(),
                score: Some(1.into()),
                recommendation: "r".into(),
                explanation: "e".into(),
                reasons: vec![Reason {
                    code: "A".into(),
                    text: "a".into(),
                    points: 1.into(),
                }],
                flags: vec!["f".into()],
            },
            override_,
            actor: Actor {
                subject: "s".into(),
                role: Role::Practitioner,
            },
            snapshot: Default::default(),
        }
    }

    fn revision_of(draft: &Draft, at: Placement<'_>) -> Revision {
        Revision {
            seq: at.seq,
            decision_id: draft.decision_id.clone(),
            revision: at.revision,
            kind: draft.kind,
            case_id: draft.case_id.clone(),
            tool: draft.tool.clone(),
            input: draft.input.clone(),
            outcome: draft.outcome.clone(),
            override_: draft.override_.clone(),
            actor: draft.actor.clone(),
            recorded_at: at.recorded_at.into(),
            prev_hash: at.prev_hash.into(),
            hash: String::new(),
        }
    }

    /// The hash of a whole revision struct, canonicalised in one go (its `hash` is ignored).
    fn revision_hash(revision: &Revision) -> String {
        let without = Revision {
            hash: String::new(),
            ..revision.clone()
        };
        sha256(&canonical(&without))
    }

    const AT: Placement<'static> = Placement {
        prev_hash: GENESIS_HASH,
        recorded_at: "2026-01-01T00:00:00.000Z",
        revision: 3,
        seq: 9_007_199_254_740_000,
    };

    #[test]
    fn the_spliced_bytes_are_the_canonical_json_of_the_whole_revision() {
        for override_ in [
            None,
            Some(Override {
                level: "high".into(),
                reason: "r".into(),
                by: Actor {
                    subject: "p".into(),
                    role: Role::Supervisor,
                },
                status: OverrideStatus::Approved,
                approved_by: None,
                declined: None,
                replaces: None,
            }),
            Some(Override {
                level: "low".into(),
                reason: "withdrawn".into(),
                by: Actor {
                    subject: "p".into(),
                    role: Role::Practitioner,
                },
                status: OverrideStatus::Declined,
                approved_by: None,
                declined: Some(Declined {
                    by: Actor {
                        subject: "s".into(),
                        role: Role::Supervisor,
                    },
                    reason: "not borne out".into(),
                }),
                replaces: Some(Box::new(Override {
                    level: "high".into(),
                    reason: "r".into(),
                    by: Actor {
                        subject: "q".into(),
                        role: Role::Practitioner,
                    },
                    status: OverrideStatus::Approved,
                    approved_by: None,
                    declined: None,
                    replaces: None,
                })),
            }),
        ] {
            let draft = draft(override_);
            let (bytes, hash) = Prepared::of(&draft).seal(AT);
            let revision = revision_of(&draft, AT);
            assert_eq!(
                String::from_utf8(bytes).unwrap(),
                String::from_utf8(canonical(&revision)).unwrap()
            );
            assert_eq!(hash, revision_hash(&revision));
        }
    }

    #[test]
    fn a_stored_entry_decodes_to_the_revision_and_exports_a_line_anyone_can_check() {
        let draft = draft(None);
        let (bytes, hash) = Prepared::of(&draft).seal(AT);
        let stored = encode_entry(&hash, &bytes);

        let entry = Entry::split(&stored).unwrap();
        let mut expected = revision_of(&draft, AT);
        expected.hash = hash.clone();
        // Numbers come back in their canonical form (-0.0 is 0); nothing else changes.
        expected.input["b"][3] = json!(0);
        assert_eq!(entry.decode().unwrap(), expected);
        let link = Link::read(entry.canonical).unwrap();
        assert_eq!((link.seq, link.prev_hash.as_str()), (AT.seq, GENESIS_HASH));

        let mut line: Value = serde_json::from_slice(&entry.to_json_with_hash()).unwrap();
        assert_eq!(line["hash"], hash.as_str());
        assert_eq!(hash_value_without_hash(&mut line), hash);
    }

    #[test]
    fn the_chain_fields_are_read_from_the_top_level_only() {
        let draft = draft(None);
        let (bytes, _) = Prepared::of(&draft).seal(AT);
        let text = String::from_utf8(bytes).unwrap();
        // A nested key of the same name after the real one: not the top level, so unreadable.
        let nested = text.replace(
            "\"version\":",
            "\"x\":{\"a\":1,\"prev_hash\":\"sha256:f\",\"recorded_at\":1,\"revision\":1,\"seq\":2,\"tool\":{\"digest\":1,\"id\":1,\"version\":1}},\"version\":",
        );
        assert!(Link::read(nested.as_bytes()).is_err(), "{nested}");
        // A form field named prev_hash, before the real one: ignored.
        let in_input = text.replace(
            "\"input\":{",
            "\"input\":{\"q\":1,\"prev_hash\":\"sha256:f\",",
        );
        let link = Link::read(in_input.as_bytes()).unwrap();
        assert_eq!((link.seq, link.prev_hash.as_str()), (AT.seq, GENESIS_HASH));
        assert!(Link::read(b"{\"seq\":1}").is_err());
    }

    #[test]
    fn an_entry_without_a_hash_line_is_corrupt() {
        assert!(Entry::split(b"{\"seq\":1}").is_err());
    }
}
