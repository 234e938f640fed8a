//! A form as JSON with every object's names unique. serde_json keeps the last of two equal
//! names in an object without a word; in a form that is two answers to one question, of which
//! the decision would silently use one. I-JSON (RFC 7493), which the service already follows
//! for numbers, forbids duplicate names, so a form holding them is refused, naming the place.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

/// Deserialises a form (`#[serde(deserialize_with = "unique_names")]`), refusing an object that
/// names a field twice.
pub fn unique_names<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
    deserializer.deserialize_any(UniqueNames)
}

/// One value of the form, checked all the way down.
struct Unique(Value);

impl<'de> de::Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueNames).map(Unique)
    }
}

struct UniqueNames;

impl<'de> Visitor<'de> for UniqueNames {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Value, E> {
        Number::from_f64(n)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number must be finite"))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(UniqueNames)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(Unique(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let Unique(value) = map.next_value()?;
            match fields.entry(name) {
                // One lookup a field, as serde_json's own reading makes.
                Entry::Vacant(place) => {
                    place.insert(value);
                }
                Entry::Occupied(place) => {
                    return Err(de::Error::custom(format!(
                        "{:?} is given twice: a form answers each question once",
                        place.key()
                    )))
                }
            }
        }
        Ok(Value::Object(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(deserialize_with = "unique_names")]
        input: Value,
    }

    fn parse(text: &str) -> Result<Value, String> {
        serde_json::from_str::<Body>(text)
            .map(|b| b.input)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_form_reads_as_serde_json_reads_it() {
        let text = r#"{"b": [1, -2, 2.5, "é", null, true, {"c": {}}], "a": 18446744073709551615}"#;
        let plain: Value = serde_json::from_str::<Value>(text).unwrap();
        assert_eq!(parse(&format!(r#"{{"input": {text}}}"#)).unwrap(), plain);
        // Key order is kept, as serde_json keeps it.
        let keys: Vec<String> = parse(&format!(r#"{{"input": {text}}}"#))
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys, ["b", "a"]);
    }

    #[test]
    fn a_name_given_twice_at_any_depth_is_refused() {
        for text in [
            r#"{"input": {"a": 1, "a": 2}}"#,
            r#"{"input": {"x": [{"a": "unknown", "a": "known-safe"}]}}"#,
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains("\"a\" is given twice"), "{text}: {err}");
        }
    }
}
