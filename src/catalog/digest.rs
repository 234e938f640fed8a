//! A tool's effective version: SHA-256 over the RFC 8785 canonical JSON of its snapshot (schema,
//! rules source, params and plugin chain). Canonical JSON makes the digest a property of the
//! content, not of the file's whitespace or key order.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The content a digest covers, and what is stored so the version can be re-run.
pub(crate) fn snapshot(schema: &Value, rules: &str, params: &Value, plugins: &[Value]) -> Value {
    json!({"schema": schema, "rules": rules, "params": params, "plugins": plugins})
}

/// `sha256:<hex>` of the canonical form of `value`.
pub fn digest(value: &Value) -> String {
    let canonical = canon_json::CanonJsonSerialize::to_canon_json_vec(value)
        .expect("a serde_json::Value always serialises to canonical JSON");
    format!("sha256:{}", hex::encode(Sha256::digest(&canonical)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_and_whitespace_do_not_change_the_digest() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": [1, 2.0, "x"]}"#).unwrap();
        let b: Value = serde_json::from_str("{\n  \"a\":[1,2,\"x\"],\"b\":1}").unwrap();
        assert_eq!(digest(&a), digest(&b));
    }

    #[test]
    fn any_change_of_content_changes_the_digest() {
        let s = json!({"title": "t"});
        let base = digest(&snapshot(&s, "fn decide(f, p) {}", &json!({"w": 1}), &[]));
        assert_ne!(
            base,
            digest(&snapshot(&s, "fn decide(f, p) { }", &json!({"w": 1}), &[]))
        );
        assert_ne!(
            base,
            digest(&snapshot(&s, "fn decide(f, p) {}", &json!({"w": 2}), &[]))
        );
        assert_ne!(
            base,
            digest(&snapshot(
                &s,
                "fn decide(f, p) {}",
                &json!({"w": 1}),
                &[json!("plugin:a")]
            ))
        );
        assert!(base.starts_with("sha256:") && base.len() == 7 + 64);
    }
}
