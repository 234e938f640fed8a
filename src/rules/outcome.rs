//! The outcome contract: what `decide` must return, checked field by field so that a tool owner
//! hears every breach at once, in words, and no breach ever becomes a decision.

use rhai::{Dynamic, Map};
use serde::{Deserialize, Serialize};
use serde_json::Number;

/// What a tool decided, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Outcome {
    /// One of the tool's declared levels.
    pub level: String,
    /// The scored total, where the tool scores; always the sum of the reasons' points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f64>)]
    pub score: Option<Number>,
    /// What should happen next, for professionals.
    pub recommendation: String,
    /// The same for the family, in plain words.
    pub explanation: String,
    /// Every item that moved the result.
    pub reasons: Vec<Reason>,
    /// What a supervisor must see.
    #[serde(default)]
    pub flags: Vec<String>,
}

/// One item that moved a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reason {
    /// A stable code, e.g. `HA-SEV`, so reasons can be counted across decisions.
    pub code: String,
    pub text: String,
    #[schema(value_type = f64)]
    pub points: Number,
}

const KEYS: &[&str] = &[
    "level",
    "score",
    "recommendation",
    "explanation",
    "reasons",
    "flags",
];

impl Outcome {
    /// Whether `other` is the same decision, whatever its words: the same level, score and
    /// flags, and the same reasons (codes and points, in order). Two outcomes that differ only
    /// in their recommendation, explanation or a reason's text say the same thing differently.
    pub fn same_decision(&self, other: &Outcome) -> bool {
        self.level == other.level
            && self.score == other.score
            && self.flags == other.flags
            && self.reasons.len() == other.reasons.len()
            && self
                .reasons
                .iter()
                .zip(&other.reasons)
                .all(|(a, b)| a.code == b.code && a.points == b.points)
    }

    /// Checks `raw` against the contract, collecting every breach.
    pub(crate) fn from_dynamic(
        raw: Dynamic,
        levels: &[impl AsRef<str>],
    ) -> Result<Outcome, Vec<String>> {
        let type_name = raw.type_name();
        let Some(mut map) = raw.try_cast::<Map>() else {
            return Err(vec![format!(
                "`decide` must return a map (#{{level: ..., ...}}), not {type_name}"
            )]);
        };
        let mut breaches = Vec::new();
        for key in map.keys() {
            if !KEYS.contains(&key.as_str()) {
                breaches.push(format!(
                    "unknown key `{key}` (the keys are {})",
                    KEYS.join(", ")
                ));
            }
        }

        let level = required_string(&mut map, "level", &mut breaches);
        if let Some(level) = &level {
            if !levels.iter().any(|l| l.as_ref() == level) {
                let declared: Vec<&str> = levels.iter().map(AsRef::as_ref).collect();
                breaches.push(format!(
                    "level {level:?} is not one of the tool's declared outcomes ({})",
                    declared.join(", ")
                ));
            }
        }
        let recommendation = required_string(&mut map, "recommendation", &mut breaches);
        let explanation = required_string(&mut map, "explanation", &mut breaches);
        let reasons = reasons(map.remove("reasons"), &mut breaches);
        let flags = flags(map.remove("flags"), &mut breaches);
        let score = match map.remove("score") {
            None => None,
            Some(d) if d.is_unit() => None,
            Some(d) => match number(&d) {
                Some(n) => Some(n),
                None => {
                    breaches.push(format!("`score` must be a number, not {}", d.type_name()));
                    None
                }
            },
        };
        if let (Some(score), Some(reasons)) = (&score, &reasons) {
            if !adds_up(score, reasons) {
                let sum = reasons
                    .iter()
                    .map(|r| r.points.as_f64().unwrap_or(f64::NAN))
                    .fold(0.0, |a, b| a + b);
                breaches.push(format!(
                    "`score` is {score} but the reasons' points add up to {sum}: a reader must be able to add it up"
                ));
            }
        }

        match (level, recommendation, explanation, reasons) {
            (Some(level), Some(recommendation), Some(explanation), Some(reasons))
                if breaches.is_empty() =>
            {
                Ok(Outcome {
                    level,
                    score,
                    recommendation,
                    explanation,
                    reasons,
                    flags: flags.unwrap_or_default(),
                })
            }
            _ => Err(breaches),
        }
    }
}

fn required_string(map: &mut Map, key: &str, breaches: &mut Vec<String>) -> Option<String> {
    match map.remove(key) {
        None => {
            breaches.push(format!("`{key}` is missing"));
            None
        }
        Some(d) => match owned_string(d) {
            Ok(s) if s.trim().is_empty() => {
                breaches.push(format!("`{key}` is empty"));
                None
            }
            Ok(s) => Some(s),
            Err(type_name) => {
                breaches.push(format!("`{key}` must be a string, not {type_name}"));
                None
            }
        },
    }
}

/// A script's string as a `String`, copied once. `Dynamic::into_string` would first make a shared
/// string unique (a new shared allocation and a copy) and then convert that, and most of an
/// outcome's strings are shared: they are literals of the script (codes, levels, flags).
fn owned_string(d: Dynamic) -> Result<String, &'static str> {
    d.into_immutable_string().map(|s| s.as_str().to_owned())
}

/// A script's number as JSON: whole numbers as integers whether the script made an `INT` or a
/// `FLOAT`, so an outcome compares equal to itself read back from the store's canonical JSON.
fn number(d: &Dynamic) -> Option<Number> {
    if let Ok(i) = d.as_int() {
        return Some(Number::from(i));
    }
    let f = d.as_float().ok()?;
    match super::convert::whole(f) {
        Some(i) => Some(Number::from(i)),
        None => Number::from_f64(f),
    }
}

/// Integers add exactly; once a float is involved, to within rounding.
fn adds_up(score: &Number, reasons: &[Reason]) -> bool {
    if let Some(score) = score.as_i64() {
        let ints: Option<i64> = reasons.iter().try_fold(0i64, |acc, r| {
            r.points.as_i64().and_then(|p| acc.checked_add(p))
        });
        if let Some(sum) = ints {
            return sum == score;
        }
    }
    let sum: f64 = reasons.iter().filter_map(|r| r.points.as_f64()).sum();
    let score = score.as_f64().unwrap_or(f64::NAN);
    (sum - score).abs() <= 1e-9 * score.abs().max(1.0)
}

fn reasons(raw: Option<Dynamic>, breaches: &mut Vec<String>) -> Option<Vec<Reason>> {
    let Some(raw) = raw else {
        breaches
            .push("`reasons` is missing (an empty list `[]` says nothing moved the result)".into());
        return None;
    };
    let type_name = raw.type_name();
    let Ok(items) = raw.into_array() else {
        breaches.push(format!("`reasons` must be an array, not {type_name}"));
        return None;
    };
    let before = breaches.len();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let type_name = item.type_name();
        let Some(mut m) = item.try_cast::<Map>() else {
            breaches.push(format!(
                "reasons[{i}] must be a map #{{code, text, points}}, not {type_name}"
            ));
            continue;
        };
        let mut local = Vec::new();
        let code = required_string(&mut m, "code", &mut local);
        let text = required_string(&mut m, "text", &mut local);
        let points = match m.remove("points") {
            None => {
                local.push("`points` is missing".to_owned());
                None
            }
            Some(p) => {
                let n = number(&p);
                if n.is_none() {
                    local.push(format!("`points` must be a number, not {}", p.type_name()));
                }
                n
            }
        };
        for key in m.keys() {
            local.push(format!(
                "unknown key `{key}` (the keys are code, text, points)"
            ));
        }
        breaches.extend(local.into_iter().map(|b| format!("reasons[{i}]: {b}")));
        if let (Some(code), Some(text), Some(points)) = (code, text, points) {
            out.push(Reason { code, text, points });
        }
    }
    (breaches.len() == before).then_some(out)
}

fn flags(raw: Option<Dynamic>, breaches: &mut Vec<String>) -> Option<Vec<String>> {
    let raw = raw?;
    if raw.is_unit() {
        return None;
    }
    let type_name = raw.type_name();
    let Ok(items) = raw.into_array() else {
        breaches.push(format!(
            "`flags` must be an array of strings, not {type_name}"
        ));
        return None;
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        match owned_string(item) {
            Ok(s) => out.push(s),
            Err(t) => breaches.push(format!("flags[{i}] must be a string, not {t}")),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::convert::to_dynamic;
    use serde_json::json;

    const LEVELS: &[&str] = &["low", "high"];

    fn check(raw: serde_json::Value) -> Result<Outcome, Vec<String>> {
        Outcome::from_dynamic(to_dynamic(&raw), LEVELS)
    }

    fn good() -> serde_json::Value {
        json!({"level": "low", "score": 3, "recommendation": "r", "explanation": "e",
               "reasons": [{"code": "A", "text": "a", "points": 1}, {"code": "B", "text": "b", "points": 2}]})
    }

    #[test]
    fn a_complete_outcome_passes() {
        let out = check(good()).unwrap();
        assert_eq!(out.score, Some(Number::from(3)));
        assert_eq!(out.reasons.len(), 2);
        assert!(out.flags.is_empty());
    }

    #[test]
    fn the_same_decision_in_other_words_is_told_from_another_decision() {
        let base = check(good()).unwrap();
        let reworded = {
            let mut raw = good();
            raw["recommendation"] = json!("other words");
            raw["reasons"][1]["text"] = json!("b, said otherwise");
            check(raw).unwrap()
        };
        assert_ne!(base, reworded);
        assert!(base.same_decision(&reworded));
        let other = |change: &dyn Fn(&mut serde_json::Value)| {
            let mut raw = good();
            change(&mut raw);
            check(raw).unwrap()
        };
        for decision in [
            other(&|r| r["level"] = json!("high")),
            other(&|r| r["flags"] = json!(["x"])),
            other(&|r| {
                r["reasons"][1]["points"] = json!(1);
                r["score"] = json!(2);
            }),
            other(&|r| r["reasons"][1]["code"] = json!("C")),
        ] {
            assert!(!base.same_decision(&decision), "{decision:?}");
        }
    }

    #[test]
    fn an_undeclared_level_is_a_breach() {
        let mut raw = good();
        raw["level"] = json!("urgent");
        let err = check(raw).unwrap_err();
        assert!(err[0].contains("\"urgent\" is not one of"), "{err:?}");
    }

    #[test]
    fn a_score_that_does_not_add_up_is_a_breach() {
        let mut raw = good();
        raw["score"] = json!(4);
        let err = check(raw).unwrap_err();
        assert!(err[0].contains("add up to 3"), "{err:?}");
    }

    #[test]
    fn float_points_add_up_within_rounding() {
        let mut raw = good();
        raw["reasons"] = json!([{"code": "A", "text": "a", "points": 0.1}, {"code": "B", "text": "b", "points": 0.2}]);
        raw["score"] = json!(0.3);
        assert!(check(raw).is_ok());
    }

    #[test]
    fn every_breach_is_reported_at_once() {
        let err = check(json!({"level": 1, "explanation": "", "reasons": [{"code": "A"}], "flags": [2], "sugar": 1}))
            .unwrap_err();
        let all = err.join("\n");
        for expected in [
            "unknown key `sugar`",
            "`level` must be a string",
            "`recommendation` is missing",
            "`explanation` is empty",
            "reasons[0]: `text` is missing",
            "reasons[0]: `points` is missing",
            "flags[0] must be a string",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in {all}");
        }
    }

    #[test]
    fn a_non_map_result_is_a_breach() {
        let err = check(json!(5)).unwrap_err();
        assert!(err[0].contains("must return a map"));
    }

    #[test]
    fn a_whole_float_is_an_integer_and_compares_equal_after_a_canonical_round_trip() {
        let n = number(&Dynamic::from_float(3.0)).unwrap();
        assert_eq!(n, Number::from(3));
        let back: Number =
            serde_json::from_slice(&canon_json::CanonJsonSerialize::to_canon_json_vec(&n).unwrap())
                .unwrap();
        assert_eq!(back, n);
        assert_eq!(number(&Dynamic::from_float(2.5)), Number::from_f64(2.5));
    }
}
