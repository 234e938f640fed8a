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
pub fn revision_hash(revision: &Revision) -> String {
    let mut value = serde_json::to_value(revision).expect("a revision always serialises");
    hash_value_without_hash(&mut value)
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
