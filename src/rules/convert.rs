//! JSON to Rhai values. A direct walk over `serde_json::Value` rather than Rhai's serde bridge:
//! it is on every request's path, and a match on six variants needs no serializer machinery.

use rhai::{Array, Dynamic, Map, INT};
use serde_json::Value;

/// Whole numbers become `INT` (so `points` add up exactly), however they were written: `2`,
/// `2.0` and `-0.0` convert alike, so a form evaluates the same from the canonical JSON the store
/// keeps as from the request's own text. Other numbers become `FLOAT`.
pub(crate) fn to_dynamic(value: &Value) -> Dynamic {
    match value {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i as INT),
            None => {
                let f = n.as_f64().unwrap_or(f64::NAN);
                match whole(f) {
                    Some(i) => Dynamic::from_int(i as INT),
                    None => Dynamic::from_float(f),
                }
            }
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

/// `f` as an integer when it is a whole number in `i64`'s range. Numbers are stored as RFC 8785
/// canonical JSON, which writes `2.0` as `2`; treating whole numbers alike on the way into and
/// out of scripts is what makes a stored decision replay exactly.
pub(crate) fn whole(f: f64) -> Option<i64> {
    // The bounds are exact powers of two, so the range check itself is exact.
    (f.fract() == 0.0 && f >= -(2f64.powi(63)) && f < 2f64.powi(63)).then_some(f as i64)
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

    #[test]
    fn a_whole_number_is_an_int_however_it_is_written() {
        for text in ["2", "2.0", "2e0", "20e-1"] {
            let value: Value = serde_json::from_str(text).unwrap();
            assert_eq!(to_dynamic(&value).as_int(), Ok(2), "{text}");
        }
        assert_eq!(to_dynamic(&json!(-0.0)).as_int(), Ok(0));
        assert_eq!(to_dynamic(&json!(1e300)).as_float(), Ok(1e300));
        assert_eq!(to_dynamic(&json!(2.5)).as_float(), Ok(2.5));
    }
}
