//! The hash chain: each revision's hash covers its whole content, including the previous
//! revision's hash, so changing, removing or reordering any stored revision breaks every hash
//! after it.

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Revision;

/// The `prev_hash` of the first revision.
pub const GENESIS_HASH: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// `sha256:<hex>` over the RFC 8785 canonical JSON of `revision` without its `hash` field.
///
/// The revision is canonicalised straight from its fields (its empty `hash` is left out), which
/// gives the same bytes as canonicalising its JSON without `hash`, as `verify` does, without
/// building that JSON first.
pub fn revision_hash(revision: &Revision) -> String {
    debug_assert!(
        revision.hash.is_empty(),
        "a revision is hashed before its hash is set"
    );
    let canonical =
        serde_json_canonicalizer::to_vec(revision).expect("a revision always serialises");
    format!("sha256:{}", hex::encode(Sha256::digest(&canonical)))
}

/// The same, over a revision already parsed as JSON (as `verify` reads it from disk).
pub fn hash_value_without_hash(value: &mut Value) -> String {
    if let Some(map) = value.as_object_mut() {
        map.remove("hash");
    }
    let canonical = serde_json_canonicalizer::to_vec(&*value)
        .expect("a serde_json::Value always serialises to canonical JSON");
    format!("sha256:{}", hex::encode(Sha256::digest(&canonical)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use crate::rules::{Outcome, Reason};
    use crate::store::{Actor, RevisionKind, ToolRef};
    use serde_json::json;

    #[test]
    fn the_writers_hash_is_the_hash_verify_recomputes_from_the_stored_json() {
        let mut revision = Revision {
            seq: 7,
            decision_id: "d".into(),
            revision: 1,
            kind: RevisionKind::Submitted,
            case_id: "c".into(),
            tool: ToolRef {
                id: "t".into(),
                version: "1".into(),
                digest: "sha256:x".into(),
            },
            input: json!({"b": [1, 2.5, "é"], "a": {"z": null, "y": true}}),
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
                flags: vec![],
            },
            override_: None,
            actor: Actor {
                subject: "s".into(),
                role: Role::Practitioner,
            },
            recorded_at: "2026-01-01T00:00:00.000Z".into(),
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        };
        revision.hash = revision_hash(&revision);
        let mut stored: Value =
            serde_json::from_slice(&serde_json::to_vec(&revision).unwrap()).unwrap();
        assert_eq!(hash_value_without_hash(&mut stored), revision.hash);
    }
}
