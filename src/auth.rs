//! API tokens and roles. A token is 32 random bytes shown once, as hex; only its SHA-256 is
//! stored. A 256-bit random secret needs no salt or slow hash: nothing about it can be guessed,
//! and the hash alone does not let anyone present it.

use std::collections::{HashMap, HashSet};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token's holder may do.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Practitioner,
    Supervisor,
    Auditor,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Practitioner,
        Role::Supervisor,
        Role::Auditor,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Practitioner => "practitioner",
            Role::Supervisor => "supervisor",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role {s:?}: use practitioner, supervisor, auditor or admin")
            })
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored token: its hash, never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// `sha256:<hex>` of the token.
    pub hash: String,
    pub role: Role,
    pub subject: String,
    pub created_at: String,
    /// When the token was revoked; a revoked token is kept, so its holder stays on record, but
    /// never accepted again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

/// Whether `subject` may name a token's holder: it is recorded as the actor of everything done
/// with the token, and four eyes compare subjects, so it must be a short, printable, non-blank
/// name, and two subjects that look the same must be the same.
pub fn check_subject(subject: &str) -> Result<(), String> {
    // The API description states these rules as far as a pattern can (`subject_pattern`).
    if subject.chars().all(char::is_whitespace) {
        return Err("the subject must name who holds the token".into());
    }
    if subject.chars().count() > MAX_SUBJECT_CHARS {
        return Err(format!(
            "the subject is longer than {MAX_SUBJECT_CHARS} characters"
        ));
    }
    if subject.chars().any(char::is_control) {
        return Err("the subject may not contain control characters".into());
    }
    match hidden(subject) {
        Some(ZWJ | ZWNJ) => return Err("the subject may hold a zero-width joiner or non-joiner only where its script needs one: after a virama between two letters of its script, or a non-joiner between two letters that would otherwise join".into()),
        Some(_) => return Err("the subject may not contain invisible characters (such as a zero-width space, a right-to-left mark, a variation selector or a tag character)".into()),
        None => {}
    }
    if subject.starts_with(char::is_whitespace) || subject.ends_with(char::is_whitespace) {
        return Err("the subject may not begin or end with a space".into());
    }
    // A no-break space, an ideographic space or two spaces look like one space.
    if subject.chars().any(|c| c.is_whitespace() && c != ' ') || subject.contains("  ") {
        return Err("the subject may separate words only by single ordinary spaces".into());
    }
    // "ë" typed as one character and as "e" plus a combining diaeresis look the same, and so do
    // "fi" and its ligature, "I" and the Roman numeral one, "A" and a full-width "Ａ": only the
    // form Unicode's compatibility normalisation gives (NFKC), the one keyboards type, is taken.
    if !icu_normalizer::ComposingNormalizerBorrowed::new_nfkc().is_normalized(subject) {
        return Err("the subject must be in Unicode's normalisation form NFKC: an accented letter as one character, no ligatures, full-width, styled or Roman-numeral letters".into());
    }
    Ok(())
}

/// The longest subject, in characters.
pub const MAX_SUBJECT_CHARS: usize = 128;

/// Characters that change a text without showing: Unicode's format characters (general category
/// Cf: a zero-width space, joiners, direction marks and overrides, the soft hyphen, the byte
/// order mark, tag characters) and its default-ignorable code points (variation selectors, the
/// combining grapheme joiner, the Hangul fillers), plus the blank Braille pattern, which is drawn
/// as nothing.
pub fn is_invisible(c: char) -> bool {
    use icu_properties::props::{DefaultIgnorableCodePoint, GeneralCategory};
    use icu_properties::{CodePointMapData, CodePointSetData};
    c == '\u{2800}'
        || CodePointSetData::new::<DefaultIgnorableCodePoint>().contains(c)
        || CodePointMapData::<GeneralCategory>::new().get(c) == GeneralCategory::Format
}

/// The first invisible character of `subject` other than a joiner its script needs: the
/// zero-width joiner or non-joiner after a virama, between two letters of the virama's script
/// ("ශ්‍රී"), or the non-joiner between two letters that would otherwise join (Persian
/// "می‌دانم"). These are Unicode's contextual rules for joiners in names (IDNA, RFC 5892
/// appendix A.1 and A.2), narrowed to a virama between letters, where the joiner changes the
/// conjunct the letters make; elsewhere a joiner changes nothing that shows.
fn hidden(subject: &str) -> Option<char> {
    let chars: Vec<char> = subject.chars().collect();
    chars
        .iter()
        .enumerate()
        .find(|(i, &c)| is_invisible(c) && !joiner_in_context(&chars, *i))
        .map(|(_, &c)| c)
}

const ZWNJ: char = '\u{200c}';
const ZWJ: char = '\u{200d}';

/// Whether `chars[i]` is a joiner where its script needs one (RFC 5892 appendix A.1, A.2).
fn joiner_in_context(chars: &[char], i: usize) -> bool {
    use icu_properties::props::{CanonicalCombiningClass, JoiningType, Script};
    use icu_properties::CodePointMapData;
    let joiner = chars[i];
    if joiner != ZWNJ && joiner != ZWJ {
        return false;
    }
    let class = |c: char| CodePointMapData::<CanonicalCombiningClass>::new().get(c);
    let script = |c: char| CodePointMapData::<Script>::new().get(c);
    // A virama just before it, whose letter (past any other marks on it) and the letter just
    // after the joiner are of one script, the virama's own or one it is shared by.
    let after_virama = i.checked_sub(1).is_some_and(|v| {
        let virama = chars[v];
        let letter = chars[..v]
            .iter()
            .rev()
            .find(|c| class(**c) == CanonicalCombiningClass::NotReordered);
        let next = chars.get(i + 1);
        class(virama) == CanonicalCombiningClass::Virama
            && letter.zip(next).is_some_and(|(letter, next)| {
                let of = script(*letter);
                letter.is_alphabetic()
                    && next.is_alphabetic()
                    && script(*next) == of
                    && [of, Script::Inherited, Script::Common].contains(&script(virama))
            })
    });
    if after_virama || joiner == ZWJ {
        return after_virama;
    }
    // The non-joiner between a letter that joins to the right and one that joins to the left,
    // with only transparent marks between them and it.
    let joining = |c: &char| CodePointMapData::<JoiningType>::new().get(*c);
    let first = |side: &mut dyn Iterator<Item = &char>| {
        side.map(joining).find(|t| *t != JoiningType::Transparent)
    };
    let left = first(&mut chars[..i].iter().rev());
    let right = first(&mut chars[i + 1..].iter());
    matches!(
        left,
        Some(JoiningType::LeftJoining | JoiningType::DualJoining)
    ) && matches!(
        right,
        Some(JoiningType::RightJoining | JoiningType::DualJoining)
    )
}

/// The pattern the API description gives a subject: what [`check_subject`] refuses, as far as an
/// ECMA-262 pattern can say it. No control or invisible character of the Basic Multilingual
/// Plane, words separated by single ordinary spaces, none at either end. Such a pattern matches
/// UTF-16 units, so it cannot name the invisible characters beyond the BMP (tag characters,
/// musical format marks), nor say "in NFKC", nor where a joiner is needed: the service refuses
/// those subjects too, and the description says so in words.
pub fn subject_pattern() -> String {
    // The joiners are left to the service: their context is more than a pattern can say.
    let refused = |c: u32| {
        char::from_u32(c)
            .is_some_and(|c| c.is_control() || (is_invisible(c) && c != ZWJ && c != ZWNJ))
    };
    let mut class = String::new();
    let mut start = None;
    // 0x10000 ends the last range: the pattern names the BMP only.
    for c in 0..=0x1_0000u32 {
        match (c < 0x1_0000 && refused(c), start) {
            (true, None) => start = Some(c),
            (false, Some(first)) => {
                class.push_str(&format!("\\u{first:04x}"));
                if c - 1 > first {
                    class.push_str(&format!("-\\u{:04x}", c - 1));
                }
                start = None;
            }
            _ => {}
        }
    }
    format!("^[^\\s{class}]( ?[^\\s{class}])*$")
}

/// Whether a reason says anything: it holds a letter or a digit, of any script, that shows. A
/// reason of spaces, invisible characters, punctuation or symbols alone ("-", ".", "👍") does not
/// say why.
pub fn has_words(text: &str) -> bool {
    text.chars()
        .any(|c| c.is_alphanumeric() && !is_invisible(c))
}

/// What a subject looks like, whatever characters draw it and in whichever case: Unicode's
/// confusable skeleton (UTS #39 section 4) of its NFKC form, in which "pat" with a Cyrillic "а",
/// "Ⓟat", "Arnie" and "Amie" ("rn" and "m"), or "Bill" and "BiII" come out the same. Two forms,
/// since case and look-alikes cross: "I" reads as "l" (the skeleton, then lower case) and as
/// the capital of "i" (lower case, then the skeleton); two subjects look the same when either
/// form is the same. Only look-alikes that Unicode's confusables data lists are told: it does
/// not hold every pair a font may draw alike.
fn likeness(subject: &str) -> [String; 2] {
    use unicode_security::skeleton;
    let nfkc = icu_normalizer::ComposingNormalizerBorrowed::new_nfkc().normalize(subject);
    let seen: String = skeleton(&nfkc).collect();
    [
        skeleton(&seen.to_lowercase()).collect(),
        skeleton(&nfkc.to_lowercase()).collect(),
    ]
}

/// Whether two subjects could be read as one holder's: the same text, or texts that look the
/// same. Four eyes ask this of the override's author and its approver, so two tokens issued
/// before look-alikes were refused (below) still cannot approve each other's overrides.
pub fn same_holder(a: &str, b: &str) -> bool {
    a == b || likeness(a).iter().zip(&likeness(b)).any(|(a, b)| a == b)
}

/// The tokens on record as today's rules see them: each, oldest first, with why its subject
/// would be refused were it made now, after those before it ([`check_subject`], or
/// [`look_alike`]); and what a new subject is compared with.
struct Standing<'a> {
    by_age: Vec<(&'a TokenRecord, Option<String>)>,
    /// The subjects taken: a new token under one of them is its holder's next.
    taken: HashSet<&'a str>,
    /// For each of the two forms of [`likeness`], the subjects on record with it that
    /// [`check_subject`] takes, the first token of each.
    by_look: [HashMap<String, Vec<&'a TokenRecord>>; 2],
}

impl<'a> Standing<'a> {
    fn of(records: &'a [TokenRecord]) -> Self {
        let mut sorted: Vec<&TokenRecord> = records.iter().collect();
        sorted.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.hash.cmp(&b.hash)));
        let mut standing = Standing {
            by_age: Vec::with_capacity(sorted.len()),
            taken: HashSet::new(),
            by_look: [HashMap::new(), HashMap::new()],
        };
        for record in sorted {
            let why = check_subject(&record.subject).err().or_else(|| {
                let looks = likeness(&record.subject);
                let why = standing
                    .in_the_way(&looks, &record.subject)
                    .map(|alike| alike.why());
                for (by_look, look) in standing.by_look.iter_mut().zip(looks) {
                    let alike = by_look.entry(look).or_default();
                    if !alike.iter().any(|r| r.subject == record.subject) {
                        alike.push(record);
                    }
                }
                if why.is_none() {
                    standing.taken.insert(&record.subject);
                }
                why
            });
            standing.by_age.push((record, why));
        }
        standing
    }

    /// The token on record whose subject looks like `subject` (with its `looks`) without being
    /// it, unless `subject` is taken: the oldest with a subject taken, else the oldest.
    fn in_the_way(&self, looks: &[String; 2], subject: &str) -> Option<LookAlike<'a>> {
        if self.taken.contains(subject) {
            return None;
        }
        self.by_look
            .iter()
            .zip(looks)
            .filter_map(|(by_look, look)| by_look.get(look))
            .flatten()
            .copied()
            .filter(|r| r.subject != subject)
            .map(|record| LookAlike {
                record,
                taken: self.taken.contains(record.subject.as_str()),
            })
            .min_by(|a, b| {
                (!a.taken, &a.record.created_at, &a.record.hash).cmp(&(
                    !b.taken,
                    &b.record.created_at,
                    &b.record.hash,
                ))
            })
    }
}

/// A token on record whose subject looks the same as a new one's: see [`look_alike`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookAlike<'a> {
    pub record: &'a TokenRecord,
    /// Whether its subject is taken; if not, it is itself refused today (named at start) for
    /// looking like an older one.
    pub taken: bool,
}

impl LookAlike<'_> {
    /// Why the new subject is refused, and what to do instead.
    pub fn why(&self) -> String {
        let advice = if self.taken {
            "For another token of its holder, use exactly that subject; for anyone else, choose a subject that reads differently (with a surname or a staff number)"
        } else {
            "That subject is itself refused today, for looking like an older one: choose a subject that reads differently from both (with a surname or a staff number)"
        };
        format!(
            "the subject looks the same as {:?}, the subject of token {}: a record could not tell their holders apart. {advice}",
            self.record.subject,
            self.record.id()
        )
    }
}

/// The token on record, in use or revoked, whose subject looks the same as `subject` without
/// being it. A new token may not be issued under such a subject: the actor of every revision is
/// its subject, and a reader of the record could not tell the two holders apart. A subject
/// taken before is fine, whatever looks like it since: one holder may have several tokens. A
/// subject that [`check_subject`] refuses (one from before its rules) stands in no one's way:
/// its holder is reissued under the subject that looks the same and is taken, as `serve`
/// advises.
pub fn look_alike<'a>(records: &'a [TokenRecord], subject: &str) -> Option<LookAlike<'a>> {
    Standing::of(records).in_the_way(&likeness(subject), subject)
}

/// The tokens still in use whose subjects would be refused today, oldest first, each with why:
/// by [`check_subject`], or by [`look_alike`] against the tokens made before it. Made before
/// today's rules, they are kept (the subject is on record) and worth reissuing. `serve` logs
/// them at start and `token list` prints them.
pub fn refused_subjects(records: &[TokenRecord]) -> Vec<(&TokenRecord, String)> {
    Standing::of(records)
        .by_age
        .into_iter()
        .filter(|(record, _)| record.revoked_at.is_none())
        .filter_map(|(record, why)| why.map(|why| (record, why)))
        .collect()
}

/// How many hex digits of a token's hash name it in `safeguard token list` and `revoke`.
pub const ID_LEN: usize = 12;

impl TokenRecord {
    /// The name people use for the token: the first [`ID_LEN`] hex digits of its hash. It says
    /// nothing that helps anyone present the token.
    pub fn id(&self) -> &str {
        let hex = self.hash.strip_prefix("sha256:").unwrap_or(&self.hash);
        &hex[..ID_LEN.min(hex.len())]
    }
}

/// Why a token could not be revoked.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RevokeError {
    #[error("no token has the id {0} (see `safeguard token list`)")]
    Unknown(String),
    #[error("{count} tokens have an id starting {id}; give more of it")]
    Ambiguous { id: String, count: usize },
    #[error("the token {0} was already revoked at {1}")]
    AlreadyRevoked(String, String),
}

/// The record of the one token named by `id` (its id, a longer prefix of its hash's hex, or the
/// whole `sha256:` hash), marked revoked now; the caller stores it.
pub fn revoke(records: &[TokenRecord], id: &str) -> Result<TokenRecord, RevokeError> {
    let wanted = id.trim().strip_prefix("sha256:").unwrap_or(id.trim());
    if wanted.len() < 6 || !wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(RevokeError::Unknown(id.to_owned()));
    }
    let wanted = wanted.to_ascii_lowercase();
    let mut matching = records.iter().filter(|r| {
        r.hash
            .strip_prefix("sha256:")
            .is_some_and(|hex| hex.starts_with(&wanted))
    });
    let record = match (matching.next(), matching.count()) {
        (None, _) => return Err(RevokeError::Unknown(id.to_owned())),
        (Some(record), 0) => record,
        (Some(_), more) => {
            return Err(RevokeError::Ambiguous {
                id: id.to_owned(),
                count: more + 1,
            })
        }
    };
    if let Some(at) = &record.revoked_at {
        return Err(RevokeError::AlreadyRevoked(
            record.id().to_owned(),
            at.clone(),
        ));
    }
    Ok(TokenRecord {
        revoked_at: Some(now()),
        ..record.clone()
    })
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A new token and the record to store for it.
pub fn issue(role: Role, subject: &str) -> (String, TokenRecord) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!("sg_{}", hex::encode(bytes));
    let record = TokenRecord {
        hash: hash(&token),
        role,
        subject: subject.to_owned(),
        created_at: now(),
        revoked_at: None,
    };
    (token, record)
}

/// `sha256:<hex>` of a presented token.
pub fn hash(token: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(token.as_bytes())))
}

/// The tokens the service accepts, held in memory and compared in constant time.
#[derive(Debug, Default, Clone)]
pub struct Tokens {
    records: Vec<TokenRecord>,
}

impl Tokens {
    /// The tokens to accept out of every stored record: all but the revoked ones.
    pub fn new(records: Vec<TokenRecord>) -> Self {
        Tokens {
            records: records
                .into_iter()
                .filter(|r| r.revoked_at.is_none())
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn add(&mut self, record: TokenRecord) {
        self.records.push(record);
    }

    /// Stops accepting the token with this hash, at once.
    pub fn remove(&mut self, hash: &str) {
        self.records.retain(|r| r.hash != hash);
    }

    /// The record for `token`, comparing against every stored hash in constant time so the
    /// time taken says nothing about which hash (or how much of one) matched.
    pub fn authenticate(&self, token: &str) -> Option<&TokenRecord> {
        let presented = hash(token);
        let mut found = None;
        for record in &self.records {
            if bool::from(record.hash.as_bytes().ct_eq(presented.as_bytes())) {
                found = Some(record);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_token_authenticates_and_another_does_not() {
        let (token, record) = issue(Role::Supervisor, "sam");
        assert!(!record.hash.contains(&token[3..]));
        let tokens = Tokens::new(vec![record]);
        assert_eq!(tokens.authenticate(&token).unwrap().subject, "sam");
        assert!(tokens.authenticate("sg_0000").is_none());
    }

    #[test]
    fn a_revoked_token_is_not_accepted() {
        let (kept, kept_record) = issue(Role::Auditor, "ari");
        let (gone, gone_record) = issue(Role::Practitioner, "pat");
        let revoked = revoke(
            &[kept_record.clone(), gone_record.clone()],
            gone_record.id(),
        )
        .unwrap();
        assert_eq!(revoked.hash, gone_record.hash);
        assert!(revoked.revoked_at.is_some());

        let tokens = Tokens::new(vec![kept_record, revoked]);
        assert!(tokens.authenticate(&gone).is_none());
        assert_eq!(tokens.authenticate(&kept).unwrap().subject, "ari");
    }

    #[test]
    fn revoke_names_one_token_by_a_prefix_of_its_hash() {
        let record = |hex: &str| TokenRecord {
            hash: format!("sha256:{hex}"),
            role: Role::Practitioner,
            subject: "pat".into(),
            created_at: "2026-11-23T00:00:00Z".into(),
            revoked_at: None,
        };
        let records = [record("abcdef0123456789"), record("abcdef9999999999")];
        assert_eq!(records[0].id(), "abcdef012345");
        // The id, a longer prefix, the whole hash, upper case: all name the first token.
        for id in [
            "abcdef012345",
            "abcdef0123456789",
            "sha256:abcdef01",
            "ABCDEF01",
        ] {
            assert_eq!(revoke(&records, id).unwrap().hash, records[0].hash, "{id}");
        }
        assert_eq!(
            revoke(&records, "abcdef"),
            Err(RevokeError::Ambiguous {
                id: "abcdef".into(),
                count: 2
            })
        );
        // Too short to mean one token on purpose, not hex, or matching nothing.
        for id in ["abc", "", "zzzzzzzz", "123456789"] {
            assert!(
                matches!(revoke(&records, id), Err(RevokeError::Unknown(_))),
                "{id}"
            );
        }
        let mut revoked = records.clone();
        revoked[0] = revoke(&records, "abcdef01").unwrap();
        assert!(matches!(
            revoke(&revoked, "abcdef01"),
            Err(RevokeError::AlreadyRevoked(..))
        ));
    }

    #[test]
    fn a_subject_is_a_short_printable_name() {
        let good = [
            "pat.smith",
            "Pat Smith (duty team)",
            "p",
            "Zoë Ó Súilleabháin",
            "محمد",
            "李小龙",
        ];
        for subject in good {
            assert!(check_subject(subject).is_ok(), "{subject:?}");
        }
        let long = "x".repeat(129);
        let bad = [
            "",
            "   ",
            "a\nb",
            "tab\there",
            &long,
            "pat\u{200b}",
            "p\u{202e}at",
            "\u{feff}pat",
            "pat ",
            " pat",
            "pat\u{a0}",
        ];
        for subject in bad {
            assert!(check_subject(subject).is_err(), "{subject:?}");
        }
        // The API description says the same: its pattern matches each good subject and no bad
        // one of the Basic Multilingual Plane (the length is the schema's own bound).
        let pattern = described_subject_pattern();
        for subject in good {
            assert!(pattern.is_valid(&serde_json::json!(subject)), "{subject:?}");
        }
        assert!(!pattern.is_valid(&serde_json::json!("Pat  Smith")));
        for subject in bad
            .iter()
            .filter(|s| s.chars().count() <= MAX_SUBJECT_CHARS)
        {
            assert!(
                !pattern.is_valid(&serde_json::json!(subject)),
                "{subject:?}"
            );
        }
    }

    /// The validator of the pattern `/openapi.json` gives a new token's subject.
    fn described_subject_pattern() -> jsonschema::Validator {
        let description = serde_json::to_value(crate::api::openapi()).unwrap();
        let subject = &description["components"]["schemas"]["NewToken"]["properties"]["subject"];
        jsonschema::validator_for(&serde_json::json!({"pattern": subject["pattern"]}))
            .expect("the pattern compiles")
    }

    #[test]
    fn a_joiner_is_taken_only_where_its_script_needs_it() {
        // Sinhala "Sri": the joiner after the virama makes the form the name is written in.
        assert!(check_subject("\u{dc1}\u{dca}\u{200d}\u{dbb}\u{dd3}").is_ok());
        // Devanagari: a non-joiner after the virama keeps the half form of "k" before "ss".
        assert!(check_subject("\u{915}\u{94d}\u{200c}\u{937}").is_ok());
        // Refused for the joiner, and the answer says so.
        let why = check_subject("pat\u{200d}smith").unwrap_err();
        assert!(
            why.contains("joiner only where its script needs one"),
            "{why}"
        );
        // Persian "mi-danam": the non-joiner keeps two joining letters apart.
        assert!(check_subject("\u{645}\u{6cc}\u{200c}\u{62f}\u{627}\u{646}\u{645}").is_ok());
        // The same joiners where nothing joins change nothing that shows.
        for hidden in [
            "pat\u{200d}smith",
            "pat\u{200c}smith",
            "\u{62f}\u{200c}\u{627}", // after a letter that does not join to the left
            "\u{645}\u{200c}",        // with nothing after it
            "\u{dc1}\u{200d}\u{dbb}", // no virama before it
            "Pat\u{94d}\u{200d}Smith", // a Devanagari virama between Latin letters
            "\u{94d}\u{200d}\u{915}", // a virama with no letter before it
            "\u{915}\u{94d}\u{200c}", // nothing after it
            "\u{915}\u{94d}\u{200c} \u{937}", // a space after it
        ] {
            assert!(check_subject(hidden).is_err(), "{hidden:?}");
        }
    }

    #[test]
    fn a_subject_that_looks_like_another_on_record_is_found() {
        let (_, pat) = issue(Role::Practitioner, "pat");
        let (_, mut arnie) = issue(Role::Supervisor, "Arnie");
        arnie.revoked_at = Some("2026-01-01T00:00:00Z".into());
        let (_, bill) = issue(Role::Auditor, "Bill Smith");
        let records = [pat.clone(), arnie.clone(), bill.clone()];
        for (subject, like) in [
            ("p\u{430}t", &pat),               // a Cyrillic a
            ("\u{440}\u{430}t", &pat),         // a Cyrillic er and a
            ("Amie", &arnie),                  // "rn" for "m", and revoked: still on record
            ("BiII Smith", &bill),             // capital i for l
            ("Bi\u{4cf}\u{4cf} Smith", &bill), // Cyrillic palochkas, drawn as l
            ("Pat", &pat),                     // another case
            ("BILL SMITH", &bill),
            ("bi11 smith", &bill), // digits one for l
        ] {
            let alike = look_alike(&records, subject).map(|a| a.record);
            assert_eq!(alike, Some(like), "{subject:?}");
            assert!(same_holder(subject, &like.subject), "{subject:?}");
        }
        // The same subject is the same holder, and subjects that read differently are others.
        for other in ["pat", "pam", "Arne", "Bill Smyth", "Zo\u{eb}"] {
            assert!(look_alike(&records, other).is_none(), "{other:?}");
        }
        assert!(!same_holder("pat", "pam"));
        // Subjects from before NFKC was required are compared in it: a circled P is a P.
        assert!(same_holder("\u{24c5}at", "Pat"));
        // A subject from before today's rules ("Zoë" decomposed) keeps no one from the form that
        // passes: its holder is reissued under it.
        let (_, mut legacy) = issue(Role::Supervisor, "Zoe");
        legacy.subject = "Zoe\u{308}".into();
        assert!(look_alike(std::slice::from_ref(&legacy), "Zo\u{eb}").is_none());
        assert!(same_holder("Zo\u{eb}", &legacy.subject));
        let why = look_alike(&records, "p\u{430}t").unwrap().why();
        assert!(why.contains("\"pat\"") && why.contains(pat.id()), "{why}");
        assert!(why.contains("use exactly that subject"), "{why}");
    }

    #[test]
    fn of_two_look_alike_tokens_the_later_one_is_refused_today() {
        let made_at = |subject: &str, at: &str| TokenRecord {
            created_at: at.into(),
            ..issue(Role::Supervisor, subject).1
        };
        let first = made_at("sue", "2026-01-01T00:00:00Z");
        let later = made_at("s\u{1d1c}e", "2026-02-01T00:00:00Z"); // a small capital U
        let other = made_at("sam", "2026-03-01T00:00:00Z");
        let mut revoked = made_at("s\u{57d}e", "2026-04-01T00:00:00Z"); // an Armenian seh
        revoked.revoked_at = Some("2026-05-01T00:00:00Z".into());
        assert!(same_holder("sue", &later.subject));

        // "Zoë" decomposed, from before NFKC was required, then composed: only the first is
        // refused, for its own reason.
        let decomposed = made_at("Zoe\u{308}", "2026-01-01T00:00:00Z");
        let composed = made_at("Zo\u{eb}", "2026-06-01T00:00:00Z");

        // Whatever order the store lists them in.
        let records = [
            revoked.clone(),
            composed,
            other,
            later.clone(),
            first.clone(),
            decomposed.clone(),
        ];
        let refused = refused_subjects(&records);

        assert_eq!(refused.len(), 2, "{refused:?}");
        assert_eq!(refused[0].0, &decomposed);
        assert!(refused[0].1.contains("NFKC"), "{}", refused[0].1);
        assert_eq!(refused[1].0, &later);
        assert!(refused[1].1.contains(first.id()), "{}", refused[1].1);
        // A new token under the first subject of the pair is its holder's next; under either
        // look-alike it is refused, naming the first, whose subject is taken.
        let alike = |subject: &str| look_alike(&records, subject).map(|a| a.record);
        assert_eq!(alike("sue"), None);
        assert_eq!(alike(&later.subject), Some(&first));
        assert_eq!(alike(&revoked.subject), Some(&first));

        // Looks do not chain, so each token on record is compared: "KAI", made before the rule,
        // reads as "Kal" (I for l) and as "Kai" (case), which do not read as each other.
        let kal = made_at("Kal", "2026-01-01T00:00:00Z");
        let kai_upper = made_at("KAI", "2026-02-01T00:00:00Z");
        let records = [kal.clone(), kai_upper.clone()];
        assert_eq!(refused_subjects(&records).len(), 1);
        let kai = look_alike(&records, "Kai").unwrap();
        assert_eq!((kai.record, kai.taken), (&kai_upper, false));
        assert!(kai.why().contains("itself refused"), "{}", kai.why());
        assert!(look_alike(&records, "Kal").is_none());
    }

    #[test]
    fn subjects_that_look_the_same_are_the_same() {
        // Composed and decomposed, the same name: only the composed form is taken.
        assert!(check_subject("Zo\u{eb}").is_ok());
        for look_alike in [
            "Zoe\u{308}",       // e + combining diaeresis
            "pat\u{e0020}",     // a tag space
            "p\u{34f}at",       // the combining grapheme joiner
            "pat\u{fe0f}",      // a variation selector
            "pat\u{3164}smith", // a Hangul filler
            "pat\u{2800}",      // the blank Braille pattern
            "pat\u{1d173}",     // a musical format mark
            "\u{115f}pat",      // a Hangul choseong filler
            "Pat\u{a0}Smith",   // a no-break space
            "Pat\u{3000}Smith", // an ideographic space
            "Pat  Smith",       // two spaces, which a web page shows as one
            "\u{fb01}ona",      // the fi ligature
            "\u{2160}van",      // the Roman numeral one
            "\u{ff30}at",       // a full-width P
        ] {
            assert!(check_subject(look_alike).is_err(), "{look_alike:?}");
        }
    }

    #[test]
    fn the_described_pattern_is_the_rule_as_far_as_a_pattern_can_say_it() {
        // The pattern goes through the `jsonschema` crate's regex, which, like Rust, reads whole
        // characters; ECMA-262 and Python engines read it over UTF-16 units or with their own
        // `\s` and `$`, which only this test's BMP range keeps comparable.
        let pattern = described_subject_pattern();
        let nfkc = icu_normalizer::ComposingNormalizerBorrowed::new_nfkc();
        // Every character of the Basic Multilingual Plane, inside a subject and at its edge.
        for c in (0..0x1_0000).filter_map(char::from_u32) {
            for subject in [format!("a{c}b"), format!("{c}ab"), format!("a {c}b")] {
                let taken = check_subject(&subject).is_ok();
                let described = pattern.is_valid(&serde_json::json!(subject));
                // Spaces the pattern names itself: every one but the ordinary space is refused.
                if c.is_whitespace() && c != ' ' {
                    assert!(!described, "the description allows {subject:?}");
                }
                assert!(!taken || described, "the description refuses {subject:?}");
                let joiner = subject.contains(['\u{200c}', '\u{200d}']);
                assert!(
                    taken || !described || !nfkc.is_normalized(&subject) || joiner,
                    "the description allows {subject:?}, which is refused for more than NFKC or a joiner"
                );
            }
        }
    }

    #[test]
    fn a_reason_of_spaces_and_invisible_characters_says_nothing() {
        assert!(has_words("the school's account worries us"));
        assert!(has_words(" x "));
        assert!(has_words("\u{5b69}\u{5b50}\u{8aaa}"));
        assert!(has_words("7"));
        for empty in [
            "",
            "  ",
            "\u{200b}",
            "\u{200b} \u{feff}\t",
            "\u{202e}\n",
            "\u{3164}",
            "\u{2800}\u{2800}",
            "\u{e0020}\u{e0041}",
            ".",
            "- -",
            "\u{1f44d}",
            "?!",
        ] {
            assert!(!has_words(empty), "{empty:?}");
        }
    }

    #[test]
    fn roles_parse_from_their_names() {
        assert_eq!("auditor".parse::<Role>().unwrap(), Role::Auditor);
        assert!("boss".parse::<Role>().is_err());
    }
}
