//! JSON to Rhai values. A direct walk over `serde_json::Value` rather than Rhai's serde bridge:
//! it is on every request's path, and a match on six variants needs no serializer machinery.

use rhai::{Array, Dynamic, Map, INT};
use serde_json::Value;

/// Integers stay `INT` (so `points` add up exactly); other numbers become `FLOAT`.
pub(crate) fn to_dynamic(value: &Value) -> Dynamic {
    match value {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i as INT),
            None => Dynamic::from_float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Dynamic::from(rhai::ImmutableString::from(s.as_str())),
        Value::Array(items) => Dynamic::from_array(items.iter().map(to_dynamic).collect::<Array>()),
        Value::Object(fields) => Dynamic::from_map(
            fields
                .iter()
                .map(|(k, v)| (k.as_str().into(), to_dynamic(v)))
                .collect::<Map>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_json_kind_converts() {
        let d = to_dynamic(&json!({"i": 3, "f": 1.5, "s": "x", "b": true, "n": null, "a": [1]}));
        let m = d.cast::<Map>();
        assert_eq!(m["i"].as_int().unwrap(), 3);
        assert_eq!(m["f"].as_float().unwrap(), 1.5);
        assert_eq!(m["s"].clone().into_string().unwrap(), "x");
        assert!(m["b"].as_bool().unwrap());
        assert!(m["n"].is_unit());
        assert_eq!(m["a"].clone().into_array().unwrap().len(), 1);
    }
}
