//! Whole numbers as JSON sends them. JSON Schema, and so the API description, counts `5.0` as
//! the integer 5, and clients that hold every number as a float send it that way; serde's own
//! integer types refuse it. Fields that take a count or a revision read it through here, so a
//! whole number is accepted however it is spelt and anything else is refused with a message
//! naming the range.

use serde::{Deserialize, Deserializer};

/// `number` as an unsigned integer of type `T`, when it is whole and in `T`'s range.
fn whole<T: TryFrom<u64>>(number: &serde_json::Number) -> Option<T> {
    let n = match number.as_u64() {
        Some(n) => n,
        // Below 2^64 every whole f64 converts exactly; `as` would saturate anything larger.
        None => number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(f))
            .map(|f| f as u64)?,
    };
    T::try_from(n).ok()
}

fn refuse<E: serde::de::Error>(number: &serde_json::Number, max: impl std::fmt::Display) -> E {
    E::custom(format!(
        "invalid value: {number}, expected a whole number from 0 to {max}"
    ))
}

/// For `#[serde(deserialize_with = "crate::whole::optional")]` on an `Option<u32>`-like field.
pub fn optional<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64> + Bounded,
{
    match Option::<serde_json::Number>::deserialize(deserializer)? {
        None => Ok(None),
        Some(number) => whole(&number)
            .map(Some)
            .ok_or_else(|| refuse(&number, T::MAX_TEXT)),
    }
}

/// For `#[serde(deserialize_with = "crate::whole::required")]` on a `usize`-like field.
pub fn required<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64> + Bounded,
{
    let number = serde_json::Number::deserialize(deserializer)?;
    whole(&number).ok_or_else(|| refuse(&number, T::MAX_TEXT))
}

/// The largest value of an integer type, for the message that refuses a number.
pub trait Bounded {
    const MAX_TEXT: &'static str;
}

impl Bounded for u32 {
    const MAX_TEXT: &'static str = "4294967295";
}

impl Bounded for usize {
    #[cfg(target_pointer_width = "64")]
    const MAX_TEXT: &'static str = "18446744073709551615";
    #[cfg(not(target_pointer_width = "64"))]
    const MAX_TEXT: &'static str = "4294967295";
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    struct Counts {
        #[serde(default, deserialize_with = "optional")]
        revision: Option<u32>,
        #[serde(default, deserialize_with = "required")]
        limit: usize,
    }

    fn read(value: serde_json::Value) -> Result<Counts, String> {
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    #[test]
    fn a_whole_number_is_read_however_it_is_spelt() {
        let counts = read(json!({"revision": 2.0, "limit": 5.0})).unwrap();
        assert_eq!((counts.revision, counts.limit), (Some(2), 5));
        let counts = read(json!({"revision": 2, "limit": 1e3})).unwrap();
        assert_eq!((counts.revision, counts.limit), (Some(2), 1000));
        let counts = read(json!({})).unwrap();
        assert_eq!((counts.revision, counts.limit), (None, 0));
        assert_eq!(read(json!({"revision": null})).unwrap().revision, None);
    }

    #[test]
    fn fractions_negatives_and_numbers_out_of_range_are_refused_with_the_range() {
        for (body, max) in [
            (json!({"revision": 2.5}), "4294967295"),
            (json!({"revision": -1}), "4294967295"),
            (json!({"revision": 4294967296u64}), "4294967295"),
            (json!({"limit": -0.5}), "18446744073709551615"),
            (json!({"limit": 1e20}), "18446744073709551615"),
        ] {
            let error = read(body.clone()).unwrap_err();
            assert!(
                error.contains(&format!("expected a whole number from 0 to {max}")),
                "{body}: {error}"
            );
        }
        assert!(read(json!({"limit": "5"})).is_err());
    }
}
