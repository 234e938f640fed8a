//! The plain-language check for family-facing text. This module owns the bar that every
//! explanation written for children, parents and carers must meet: a Flesch reading ease of at
//! least 60, no sentence longer than 25 words, and none of the jargon or blaming words in
//! [`JARGON`]. Statutory guidance asks that material given to families be "jargon-free,
//! developmentally appropriate and in a format that is easily understood", and that
//! communication be "respectful, non-blaming"; a decision a family cannot read is a surprise
//! waiting to happen. The check is deliberately small, deterministic and free of dependencies so
//! that `safeguard check` and the test suite give the same answer everywhere. It is a floor, not
//! a guarantee: text that passes can still be unkind or unclear, so people must still read it.
//!
//! How text is measured (see `docs/plain-language.md` for the bar itself):
//!
//! * **Sentences** end at `.`, `!`, `?`, `…` and at every line break. A full stop does not end a
//!   sentence when a letter or digit follows it directly (`3.5`, the first dot of `e.g.`, `s.47`,
//!   web addresses), or when it closes a common abbreviation (`Mr.`, `Dr.`, `e.g.`, `i.e.`);
//!   after `etc.`, `approx.` and dotted abbreviations (`a.m.`, `U.K.`) it ends a sentence only
//!   when the next word starts with a capital. Pieces with no words (from `...`, `?!` or blank
//!   lines) are not sentences.
//! * **Words** are runs of letters, digits and apostrophes (`'`, `’`), with apostrophes trimmed
//!   from the ends. A `.` or `,` between two digits stays inside the number, so `3.5` and `1,000`
//!   are one word each. Hyphens separate words: `well-being` is two.
//! * **Syllables** come from an English heuristic, not a dictionary; `syllables` below lists
//!   every rule and how well it does against a pronouncing dictionary (about 99% of the words in
//!   safeguarding guidance), which is plenty for a reading-ease score.
//! * **Reading ease** is Flesch's `206.835 - 1.015 * words/sentences - 84.6 * syllables/words`,
//!   unclamped (very short, plain text scores above 100). Text with no words scores 0.
//! * **Jargon** is matched case-insensitively from a word boundary; the rest of that word may only
//!   be an ending (`-s`, `-es`, `-'s`, `-d`, `-ed`, `-ing`, `-ly`, or trailing apostrophes), so
//!   `thresholds` and `Escalated` are caught, but `refused` does not match `refuse` and `failed
//!   to` does not match `failed today`. A space or hyphen in a listed phrase matches any run of
//!   spaces, line breaks or hyphens (a hyphen also matches none, so `noncompliant` is caught), and
//!   where a letter meets a digit the text may have a full stop or spaces between them, so `s47`
//!   also catches `S.47` and `s 47`.

/// The plain-language bar every family-facing explanation must meet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bar {
    /// Lowest acceptable Flesch reading ease.
    pub min_flesch: f64,
    /// Most words any one sentence may have.
    pub max_sentence_words: usize,
}

impl Default for Bar {
    fn default() -> Self {
        Bar {
            min_flesch: 60.0,
            max_sentence_words: 25,
        }
    }
}

/// What [`measure`] found in a piece of text.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Flesch reading ease (higher is easier; 0 when there are no words).
    pub flesch: f64,
    /// Sentences that contain at least one word.
    pub sentences: usize,
    /// Words in the whole text.
    pub words: usize,
    /// Words in the longest sentence.
    pub longest_sentence_words: usize,
    /// Entries of [`JARGON`] found in the text, in list order, each once.
    pub jargon: Vec<&'static str>,
}

/// The jargon and blame list, lowercase.
pub const JARGON: &[&str] = &[
    "section 47",
    "section 17",
    "section 20",
    "s47",
    "s17",
    "s20",
    "threshold",
    "non-compliant",
    "non-compliance",
    "non-engagement",
    "non-engaging",
    "uncooperative",
    "failed to",
    "refused",
    "perpetrator",
    "abuser",
    "neglectful",
    "chaotic",
    "disguised compliance",
    "risk factor",
    "significant harm",
    "safeguarding",
    "statutory",
    "child protection plan",
    "multi-agency",
    "strategy discussion",
    "assessment",
    "intervention",
    "escalate",
    "escalation",
];

/// Measures `text`.
pub fn measure(text: &str) -> Report {
    analyse(text).0
}

/// Every way `text` misses `bar`, as readable sentences without trailing periods (empty when it passes), e.g.
/// "reading ease 52.3 is below 60", "sentence 2 has 31 words (at most 25): \"We will...\"", "uses \"threshold\", a jargon or blaming word".
///
/// Text with no words at all fails with "there is no text to read".
pub fn problems(text: &str, bar: &Bar) -> Vec<String> {
    let (report, sentences) = analyse(text);
    if report.words == 0 {
        return vec!["there is no text to read".to_string()];
    }
    let mut out = Vec::new();
    if report.flesch < bar.min_flesch {
        out.push(format!(
            "reading ease {} is below {}",
            show_below(report.flesch, bar.min_flesch),
            bar.min_flesch
        ));
    }
    for (i, s) in sentences.iter().enumerate() {
        if s.words > bar.max_sentence_words {
            out.push(format!(
                "sentence {} has {} words (at most {}): \"{}\"",
                i + 1,
                s.words,
                bar.max_sentence_words,
                excerpt(s.text)
            ));
        }
    }
    for word in &report.jargon {
        out.push(format!("uses \"{word}\", a jargon or blaming word"));
    }
    out
}

/// One sentence of the original text and its word count.
struct Sentence<'a> {
    text: &'a str,
    words: usize,
}

fn analyse(text: &str) -> (Report, Vec<Sentence<'_>>) {
    let mut sentences = Vec::new();
    let mut words = 0;
    let mut syllable_total = 0;
    for piece in split_sentences(text) {
        let ws = split_words(piece);
        if ws.is_empty() {
            continue;
        }
        words += ws.len();
        syllable_total += ws.iter().map(|w| syllables(w)).sum::<usize>();
        sentences.push(Sentence {
            text: piece.trim(),
            words: ws.len(),
        });
    }
    let flesch = if words == 0 {
        0.0
    } else {
        let (w, s, y) = (words as f64, sentences.len() as f64, syllable_total as f64);
        206.835 - 1.015 * (w / s) - 84.6 * (y / w)
    };
    let report = Report {
        flesch,
        sentences: sentences.len(),
        words,
        longest_sentence_words: sentences.iter().map(|s| s.words).max().unwrap_or(0),
        jargon: find_jargon(text),
    };
    (report, sentences)
}

/// Formats a failing score so that it never looks like it meets `min`: 59.96 shows as 59.96, not
/// as 60.0.
fn show_below(score: f64, min: f64) -> String {
    for places in 1..=4 {
        let shown = format!("{score:.places$}");
        if shown.parse::<f64>().is_ok_and(|v| v < min) {
            return shown;
        }
    }
    score.to_string()
}

/// The first few words of a sentence, to show which one is too long.
fn excerpt(sentence: &str) -> String {
    const SHOWN: usize = 8;
    let chunks: Vec<&str> = sentence.split_whitespace().collect();
    if chunks.len() <= SHOWN {
        chunks.join(" ")
    } else {
        format!("{}...", chunks[..SHOWN].join(" "))
    }
}

// ---------------------------------------------------------------------------------------------
// Sentences and words
// ---------------------------------------------------------------------------------------------

/// Abbreviations whose full stop never ends a sentence (lowercase, inner dots kept).
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "mx", "dr", "prof", "e.g", "i.e", "cf", "vs",
];

/// Abbreviations whose full stop ends a sentence only when the next word starts with a capital.
const SOMETIMES_FINAL: &[&str] = &["etc", "a.m", "p.m", "approx"];

fn is_apostrophe(c: char) -> bool {
    matches!(c, '\'' | '\u{2019}' | '\u{2018}' | '\u{02BC}')
}

fn is_line_break(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\u{2028}' | '\u{2029}')
}

/// Splits `text` into pieces at sentence ends; pieces may hold no words.
fn split_sentences(text: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut pieces = Vec::new();
    let mut start = 0;
    for (i, &(pos, c)) in chars.iter().enumerate() {
        let ends = match c {
            '!' | '?' | '\u{2026}' => true,
            '.' => full_stop_ends_sentence(&chars, i),
            c => is_line_break(c),
        };
        if ends {
            let end = pos + c.len_utf8();
            pieces.push(&text[start..end]);
            start = end;
        }
    }
    pieces.push(&text[start..]);
    pieces
}

fn full_stop_ends_sentence(chars: &[(usize, char)], i: usize) -> bool {
    // A letter or digit straight after the dot: a decimal point, `e.g`'s first dot, an address.
    if chars.get(i + 1).is_some_and(|&(_, c)| c.is_alphanumeric()) {
        return false;
    }
    // The letters and dots just before this one, e.g. "e.g" or "mr".
    let mut j = i;
    while j > 0 && (chars[j - 1].1.is_alphabetic() || chars[j - 1].1 == '.') {
        j -= 1;
    }
    if j > 0 && chars[j - 1].1.is_alphanumeric() {
        return true;
    }
    let token: String = chars[j..i]
        .iter()
        .flat_map(|&(_, c)| c.to_lowercase())
        .collect();
    if ABBREVIATIONS.contains(&token.as_str()) {
        return false;
    }
    // Listed abbreviations, and dotted ones like `U.K.`, end a sentence only before a capital.
    if SOMETIMES_FINAL.contains(&token.as_str()) || token.contains('.') {
        let next = chars[i + 1..]
            .iter()
            .map(|&(_, c)| c)
            .find(|c| !c.is_whitespace() || is_line_break(*c));
        return match next {
            Some(c) if c.is_alphabetic() => c.is_uppercase(),
            _ => true,
        };
    }
    true
}

/// The words of one sentence, as slices of it.
fn split_words(s: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let in_word = |i: usize| {
        let c = chars[i].1;
        if c.is_alphanumeric() || is_apostrophe(c) {
            return true;
        }
        // `3.5` and `1,000` stay whole.
        (c == '.' || c == ',')
            && i > 0
            && chars[i - 1].1.is_ascii_digit()
            && chars.get(i + 1).is_some_and(|&(_, n)| n.is_ascii_digit())
    };
    let mut words = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !in_word(i) {
            i += 1;
            continue;
        }
        let start = chars[i].0;
        while i < chars.len() && in_word(i) {
            i += 1;
        }
        let end = chars.get(i).map_or(s.len(), |&(p, _)| p);
        let word = s[start..end].trim_matches(is_apostrophe);
        if !word.is_empty() {
            words.push(word);
        }
    }
    words
}

// ---------------------------------------------------------------------------------------------
// Syllables
// ---------------------------------------------------------------------------------------------

/// Estimated syllables in one word (always at least 1). This is a heuristic, not a dictionary:
/// checked against the CMU Pronouncing Dictionary it gives an accepted count for 99% of the 1,436
/// words of the safeguarding guidance this project draws on, and for 97.6% of 5,872 of the most
/// common English words (most misses there are names and acronyms written in lower case, and
/// `-ire` words such as `tired`, counted as 1 as most dictionaries hyphenate them). The rules, in
/// order:
///
/// 1. A word containing a digit (`47`, `3.5`, `s47`) counts as 1.
/// 2. An all-capitals word with no vowel is spelled out: one per letter, three for `W` (`GP` 2,
///    `NHS` 3). Capitalised words with vowels (`CAMHS`, `SEND`) are read as words.
/// 3. Contractions are counted on their base: `-n't` adds 1 after a consonant or a sounded final
///    `e` (`didn't` 2, `haven't` 2, `don't` 1, `aren't` 1); `-'ll`, `-'d`, `-'ve` add 1 after a
///    consonant (`it'll` 2, `we'll` 1); `-'s` adds 1 after a hissing sound (`Rose's` 2); `-'re`
///    and `-'m` add nothing. Other apostrophes are ignored (`o'clock`).
/// 4. Each run of vowels (`a e i o u`, accented vowels, and `y` except at the start of a word or
///    between two vowels, as in `beyond`, `saying`) is one syllable; `u` after `q` is not a vowel.
/// 5. Some vowel pairs are two syllables:
///    * `ia`, except after c, t or s (`social`; but `-iate` splits: `initiate`), before `ge`
///      (`marriage`), or after `il`, `ll`, `rl` (`familiar`, `brilliant`, `parliament`): `media`;
///    * `io`, except after c, t, s, x, g, h, l or n (`action`, `fashion`, `million`) or in
///      `-iour`/`-vior` (`behaviour`): `period`, `previous`;
///    * `iu` (`medium`); `ua` and `uo` not after g (`actual`, `continuous`, but `language`);
///      `ui` in `-uity` (`continuity`); `ue` before `nt`, `nc` or `l` (`fluent`, `influence`);
///    * `ie` after a consonant in `-ier(s)`, `-iest`, `-iet`, `-iety` (`easier`, `happiest`,
///      `quiet`, `anxiety`), and in `-ient`/`-ience` except after c or t (`client`,
///      `experience`, `science`, but `patient`, `sufficient`);
///    * `eo` after d or in `theo-`, `geo-`, `neo-` (`video`, `theory`; not `people`);
///    * a vowel run of two or more ending in `i` before `ng` (`being`, `going`, `trying`);
///    * the stems `creat-` (not `creature`), `idea`, `area`, `react`, `reali-`, `theat-`,
///      `stereo`, `coord-`, `coopera-`, `proact-`, `anyone`, `maybe`, and words starting `rei-`,
///      `reo-`, `reu-`, `reass-` (`reassure`; not `reign`).
/// 6. Silent `e`, each counted once. Only an `e` with a consonant on both sides (or at the end)
///    can be silent, and only in a word of more than one vowel run:
///    * a final `e` (`make`, `before`), and the `e` of a final `-es` or `-ed`, unless sounded:
///      `-es` after s, x, z, c, g, ch, sh (`wishes`, `changes`), `-ed` after t or d (`needed`,
///      `created`). So `jumped` 1, `makes` 1;
///    * but a consonant other than l or r followed by `le` or `re` keeps its syllable, with or
///      without `-s`/`-d` (`table`, `little`, `centre`, `handled`; not `whole`, `called`);
///    * the `e` before `-ful`, `-fully`, `-less`, `-ly`, `-ness`, `-ment(s)`, `-work`, `-some`
///      (`safely`, `careful`, `statement`, `framework`; not `element`);
///    * the `e` closing `some-`, `home-`, `house-`, `care-`, `safe-`, `life-`, `like-`, `time-`,
///      `where-`, `there-`, `else-`, `guide-` when a consonant other than r or v and then a vowel
///      follow (`something`, `sometimes`, `therefore`, `safety`; not `carer`, `wherever`,
///      `houses`), and the second `e` of `every-` before a consonant (`everything`);
///    * `-gue(s)` after a vowel or `n` (`league`, `colleagues`, `tongue`; not `argue`).
/// 7. `-ism`, `-asm` and `-thm` add 1 (`criticism`, `enthusiasm`, `rhythm`); `-ically` loses 1
///    (`basically`), as does `busin-` (`business`).
fn syllables(word: &str) -> usize {
    if word.chars().any(|c| c.is_numeric()) {
        return 1;
    }
    if word.chars().count() >= 2 && word.chars().all(|c| c.is_uppercase()) {
        let lower: Vec<char> = word.chars().flat_map(char::to_lowercase).collect();
        if !lower.iter().any(|&c| is_plain_vowel(c) || c == 'y') {
            return lower.iter().map(|&c| if c == 'w' { 3 } else { 1 }).sum();
        }
    }
    let w: String = word
        .chars()
        .flat_map(char::to_lowercase)
        .map(|c| if is_apostrophe(c) { '\'' } else { c })
        .collect();
    if let Some(base) = w.strip_suffix("n't") {
        let b = letters(base);
        let extra = match b.as_slice() {
            [.., p, 'e'] if !is_plain_vowel(*p) && *p != 'r' => 1,
            [.., last] if !is_plain_vowel(*last) && *last != 'y' => 1,
            _ => 0,
        };
        return count(&b) + extra;
    }
    for suffix in ["'ll", "'d", "'ve"] {
        if let Some(base) = w.strip_suffix(suffix) {
            let b = letters(base);
            let extra = usize::from(b.last().is_some_and(|&c| !is_plain_vowel(c) && c != 'y'));
            return count(&b) + extra;
        }
    }
    if let Some(base) = w.strip_suffix("'s") {
        let b = letters(base);
        let hiss = matches!(
            b.as_slice(),
            [.., 's' | 'x' | 'z'] | [.., 'c' | 's' | 'g' | 'z', 'e'] | [.., 'c' | 's', 'h']
        );
        return count(&b) + usize::from(hiss);
    }
    for suffix in ["'re", "'m"] {
        if let Some(base) = w.strip_suffix(suffix) {
            return count(&letters(base));
        }
    }
    count(&letters(&w))
}

/// The letters of an already-lowercased word, dropping apostrophes and anything else.
fn letters(w: &str) -> Vec<char> {
    w.chars().filter(|c| c.is_alphabetic()).collect()
}

fn is_plain_vowel(c: char) -> bool {
    matches!(
        c,
        'a' | 'e'
            | 'i'
            | 'o'
            | 'u'
            | 'à'
            | 'á'
            | 'â'
            | 'ä'
            | 'è'
            | 'é'
            | 'ê'
            | 'ë'
            | 'ì'
            | 'í'
            | 'î'
            | 'ï'
            | 'ò'
            | 'ó'
            | 'ô'
            | 'ö'
            | 'ù'
            | 'ú'
            | 'û'
            | 'ü'
    )
}

/// Syllables of a lowercase, letters-only word (rules 4 to 7 above).
fn count(w: &[char]) -> usize {
    let n = w.len();
    if n == 0 {
        return 1;
    }
    let vowel: Vec<bool> = (0..n).map(|i| is_vowel_at(w, i)).collect();
    let cons = |i: usize| !vowel[i];
    let s: String = w.iter().collect();

    // Rule 4: vowel runs.
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < n {
        if vowel[i] {
            let start = i;
            while i < n && vowel[i] {
                i += 1;
            }
            groups.push((start, i));
        } else {
            i += 1;
        }
    }
    let mut total = groups.len() as isize;

    // Rule 5: vowel pairs said as two syllables.
    let before = |j: usize| if j == 0 { ' ' } else { w[j - 1] };
    let after = |j: usize| -> String { w[j.min(n)..].iter().collect() };
    for &(a, b) in &groups {
        for j in a..b.saturating_sub(1) {
            let pair = (w[j], w[j + 1]);
            let rest = after(j + 2);
            let split = match pair {
                ('i', 'a') => {
                    // `-iate` splits even after c, t, s (`initiate`), but `-iative` does not.
                    let iate = rest.starts_with('t') && !rest.starts_with("tiv");
                    let soft = matches!(before(j), 'c' | 't' | 's') && !iate;
                    // `familiar`, `brilliant`, `parliament`: the i is a y sound.
                    let glide = j >= 2 && before(j) == 'l' && matches!(w[j - 2], 'i' | 'l' | 'r');
                    !soft && !glide && !rest.starts_with("ge")
                }
                ('i', 'o') => {
                    let soft = matches!(before(j), 'c' | 't' | 's' | 'x' | 'g' | 'h' | 'l' | 'n');
                    let our = rest.starts_with("ur") || (before(j) == 'v' && rest.starts_with('r'));
                    !soft && !our
                }
                ('i', 'u') => true,
                ('u', 'a') => before(j) != 'g',
                ('u', 'o') => before(j) != 'g',
                ('u', 'i') => rest.starts_with("ty"),
                ('u', 'e') => {
                    before(j) != 'g'
                        && (rest.starts_with("nt")
                            || rest.starts_with("nc")
                            || rest.starts_with('l'))
                }
                ('i', 'e') => {
                    let ending =
                        ["r", "rs", "st", "t", "ts", "tly", "ty", "ties"].contains(&rest.as_str());
                    let ient = (rest.starts_with("nt") || rest.starts_with("nc"))
                        && (!matches!(before(j), 'c' | 't') || s.starts_with("sci"));
                    j > 0 && cons(j - 1) && (ending || ient)
                }
                ('e', 'o') => {
                    before(j) == 'd'
                        || (j <= 2 && ["theo", "geo", "neo"].iter().any(|p| s.starts_with(p)))
                }
                _ => false,
            };
            total += isize::from(split);
        }
        if b - a >= 2 && w[b - 1] == 'i' && after(b).starts_with("ng") {
            total += 1;
        }
    }
    for stem in [
        "creat", "idea", "area", "react", "reali", "theat", "stereo", "coord", "coopera", "proact",
        "anyone", "maybe",
    ] {
        if let Some(p) = s.find(stem) {
            if !(stem == "creat" && s[p + stem.len()..].starts_with("ur")) {
                total += 1;
            }
        }
    }
    if s.starts_with("busin") || s.ends_with("ically") {
        total -= 1;
    }
    if ["rei", "reo", "reu", "reass"]
        .iter()
        .any(|p| s.starts_with(p))
        && !s.starts_with("reign")
    {
        total += 1;
    }

    // Rule 6: silent e, each position once. Only a lone `e` between consonants can be silent.
    let mut silent: Vec<usize> = Vec::new();
    let lone_e = |k: usize| w[k] == 'e' && k > 0 && cons(k - 1) && (k + 1 == n || cons(k + 1));
    // A consonant other than l/r, then l or r, then the e at `k`: `table`, `centre`.
    let syllabic_lr = |k: usize| {
        k >= 2 && matches!(w[k - 1], 'l' | 'r') && cons(k - 2) && !matches!(w[k - 2], 'l' | 'r')
    };
    if groups.len() > 1 {
        if s.ends_with('e') && lone_e(n - 1) && !syllabic_lr(n - 1) {
            silent.push(n - 1);
        }
        if n >= 3
            && (s.ends_with("es") || s.ends_with("ed"))
            && lone_e(n - 2)
            && !syllabic_lr(n - 2)
        {
            let c = w[n - 3];
            let sounded = if s.ends_with("es") {
                matches!(c, 's' | 'x' | 'z' | 'c' | 'g')
                    || s.ends_with("ches")
                    || s.ends_with("shes")
            } else {
                matches!(c, 't' | 'd')
            };
            if !sounded {
                silent.push(n - 2);
            }
        }
        for suffix in [
            "ful", "fully", "less", "ly", "ness", "ment", "ments", "work", "some",
        ] {
            if let Some(stem) = s.strip_suffix(suffix) {
                let k = stem.chars().count();
                if k >= 3 && lone_e(k - 1) && !syllabic_lr(k - 1) && !s.starts_with("element") {
                    silent.push(k - 1);
                }
            }
        }
        for prefix in [
            "some", "home", "house", "care", "safe", "life", "like", "time", "where", "there",
            "else", "guide",
        ] {
            let k = prefix.len();
            let compound = s.starts_with(prefix)
                && n > k
                && cons(k)
                && !matches!(w[k], 'r' | 'v')
                && vowel[k..].iter().any(|&v| v);
            if compound {
                silent.push(k - 1);
            }
        }
        // `every-` before a consonant: `everything`, `everybody` (but `every`, `everyone`).
        if s.starts_with("every") && n > 5 && cons(5) {
            silent.push(2);
        }
        let stem = s.strip_suffix('s').unwrap_or(&s);
        let m = stem.chars().count();
        if stem.ends_with("gue") && m >= 4 && (vowel[m - 4] || stem.ends_with("ngue")) {
            silent.push(m - 1);
        }
    }
    silent.sort_unstable();
    silent.dedup();
    total -= silent.len() as isize;

    // Rule 7.
    let bare = s.strip_suffix('s').unwrap_or(&s);
    if bare.ends_with("ism") || bare.ends_with("asm") || bare.ends_with("thm") {
        total += 1;
    }
    total.max(1) as usize
}

/// Whether `w[i]` is a vowel sound (rule 4).
fn is_vowel_at(w: &[char], i: usize) -> bool {
    let c = w[i];
    if c == 'y' {
        if i == 0 {
            return false;
        }
        let between = is_plain_vowel(w[i - 1]) && w.get(i + 1).is_some_and(|&n| is_plain_vowel(n));
        return !between;
    }
    if c == 'u' && i > 0 && w[i - 1] == 'q' {
        return false;
    }
    is_plain_vowel(c)
}

// ---------------------------------------------------------------------------------------------
// Jargon
// ---------------------------------------------------------------------------------------------

/// Endings a listed word may take and still be caught (trailing apostrophes aside: `parents'`,
/// or a closing single quote).
const ENDINGS: &[&str] = &["", "s", "es", "'s", "d", "ed", "ing", "ly"];

fn is_separator(c: char) -> bool {
    c.is_whitespace() || matches!(c, '-' | '\u{2010}' | '\u{2011}' | '\u{2012}' | '\u{2013}')
}

fn find_jargon(text: &str) -> Vec<&'static str> {
    let t: Vec<char> = text
        .chars()
        .flat_map(char::to_lowercase)
        .map(|c| if is_apostrophe(c) { '\'' } else { c })
        .collect();
    JARGON
        .iter()
        .copied()
        .filter(|phrase| {
            let p: Vec<char> = phrase.chars().collect();
            (0..t.len()).any(|i| (i == 0 || !t[i - 1].is_alphanumeric()) && matches_at(&t, i, &p))
        })
        .collect()
}

/// Whether `phrase` (lowercase) starts at `t[i]` and the word it ends in continues only with one of
/// [`ENDINGS`].
fn matches_at(t: &[char], i: usize, phrase: &[char]) -> bool {
    let mut at = i;
    for (k, &pc) in phrase.iter().enumerate() {
        match pc {
            ' ' | '-' => {
                let from = at;
                while at < t.len() && is_separator(t[at]) {
                    at += 1;
                }
                if pc == ' ' && at == from {
                    return false;
                }
            }
            _ => {
                if k > 0 && phrase[k - 1].is_alphabetic() && pc.is_ascii_digit() {
                    while at < t.len() && (t[at] == '.' || t[at] == ' ') {
                        at += 1;
                    }
                }
                if t.get(at) != Some(&pc) {
                    return false;
                }
                at += 1;
            }
        }
    }
    let mut end = at;
    while end < t.len() && (t[end].is_alphanumeric() || t[end] == '\'') {
        end += 1;
    }
    let rest: String = t[at..end].iter().collect();
    ENDINGS.contains(&rest.trim_end_matches('\''))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syl(word: &str) -> usize {
        syllables(word)
    }

    #[test]
    fn syllables_of_known_words() {
        let known = [
            ("cat", 1),
            ("family", 3),
            ("table", 2),
            ("jumped", 1),
            ("created", 3),
            ("supporter", 3),
            ("the", 1),
            ("make", 1),
            ("makes", 1),
            ("wishes", 2),
            ("changes", 2),
            ("needed", 2),
            ("called", 1),
            ("handled", 2),
            ("played", 1),
            ("worried", 2),
            ("people", 2),
            ("little", 2),
            ("centre", 2),
            ("tables", 2),
            ("before", 2),
            ("someone", 2),
            ("something", 2),
            ("sometimes", 2),
            ("therefore", 2),
            ("safely", 2),
            ("careful", 2),
            ("statement", 2),
            ("element", 3),
            ("settlement", 3),
            ("carer", 2),
            ("carers", 2),
            ("safety", 2),
            ("being", 2),
            ("going", 2),
            ("trying", 2),
            ("saying", 2),
            ("beyond", 2),
            ("they", 1),
            ("year", 1),
            ("question", 2),
            ("action", 2),
            ("period", 3),
            ("previous", 3),
            ("behaviour", 3),
            ("million", 2),
            ("social", 2),
            ("media", 3),
            ("actual", 3),
            ("language", 2),
            ("easier", 3),
            ("quiet", 2),
            ("anxiety", 4),
            ("experience", 4),
            ("patient", 2),
            ("idea", 3),
            ("area", 3),
            ("creature", 2),
            ("video", 3),
            ("colleague", 2),
            ("colleagues", 2),
            ("argue", 2),
            ("value", 2),
            ("unique", 2),
            ("influence", 3),
            ("immediately", 5),
            ("criticism", 4),
            ("school", 1),
            ("health", 1),
            ("worker", 2),
            ("together", 3),
            ("rhythm", 2),
            ("framework", 2),
            ("everything", 3),
            ("business", 2),
            ("basically", 3),
            ("marriage", 2),
            ("familiar", 3),
            ("tongue", 1),
            ("continuity", 5),
            ("reassure", 3),
            ("cooperate", 4),
            ("coordinate", 4),
            ("initiate", 4),
            ("guidelines", 2),
            ("household", 2),
            ("houses", 2),
            ("wherever", 3),
            ("anyone", 3),
            ("maybe", 2),
        ];
        let wrong: Vec<String> = known
            .iter()
            .filter(|(w, n)| syl(w) != *n)
            .map(|(w, n)| format!("{w}: got {}, expected {n}", syl(w)))
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn syllables_of_numbers_contractions_and_capitals() {
        assert_eq!(syl("47"), 1);
        assert_eq!(syl("3.5"), 1);
        assert_eq!(syl("s47"), 1);
        assert_eq!(syl("don't"), 1);
        assert_eq!(syl("didn't"), 2);
        assert_eq!(syl("haven't"), 2);
        assert_eq!(syl("aren't"), 1);
        assert_eq!(syl("you’re"), 1);
        assert_eq!(syl("it'll"), 2);
        assert_eq!(syl("we'll"), 1);
        assert_eq!(syl("child's"), 1);
        assert_eq!(syl("Rose's"), 2);
        assert_eq!(syl("GP"), 2);
        assert_eq!(syl("NHS"), 3);
        assert_eq!(syl("CAMHS"), 1);
        assert_eq!(syl("Family"), 3);
        assert_eq!(syl("hmm"), 1);
    }

    #[test]
    fn flesch_of_a_known_text() {
        // 6 words, 1 sentence, 6 syllables: 206.835 - 1.015 * 6 - 84.6 * 1 = 116.145.
        let r = measure("The cat sat on the mat.");
        assert_eq!((r.words, r.sentences), (6, 1));
        assert!((r.flesch - 116.145).abs() < 1e-9, "{}", r.flesch);

        let r = measure("We will meet your family. Thank you for coming.");
        assert_eq!((r.words, r.sentences, r.longest_sentence_words), (9, 2, 5));
        // 12 syllables: we will meet your fam-i-ly (7), thank you for com-ing (5), so
        // 206.835 - 1.015 * 9/2 - 84.6 * 12/9 = 89.4675.
        assert!((r.flesch - 89.4675).abs() < 0.01, "{}", r.flesch);
    }

    #[test]
    fn long_sentence_is_flagged() {
        let long = "We will talk with you and your children about what has happened at home \
                    and at school this year and about the help that you would like from us now.";
        let r = measure(long);
        assert_eq!(r.longest_sentence_words, 30);
        let found = problems(&format!("Thank you. {long}"), &Bar::default());
        assert_eq!(
            found,
            vec!["sentence 2 has 30 words (at most 25): \"We will talk with you and your children...\""]
        );
    }

    #[test]
    fn low_reading_ease_is_flagged() {
        let hard = "Comprehensive multidisciplinary evaluation necessitates considerable \
                    organisational collaboration.";
        let found = problems(hard, &Bar::default());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("reading ease -"), "{}", found[0]);
        assert!(found[0].ends_with(" is below 60"), "{}", found[0]);
    }

    #[test]
    fn failing_score_never_displays_as_passing() {
        assert_eq!(show_below(59.96, 60.0), "59.96");
        assert_eq!(show_below(52.31, 60.0), "52.3");
    }

    #[test]
    fn jargon_is_found_case_insensitively() {
        let r = measure("This is an S47 enquiry. We will ESCALATE it. Safeguarding matters.");
        assert_eq!(r.jargon, vec!["s47", "safeguarding", "escalate"]);
        assert_eq!(
            measure("Under Section  47 we must").jargon,
            vec!["section 47"]
        );
        assert_eq!(measure("An s.47 visit").jargon, vec!["s47"]);
        let found = problems("We met to discuss the threshold.", &Bar::default());
        assert_eq!(found, vec!["uses \"threshold\", a jargon or blaming word"]);
    }

    #[test]
    fn plurals_and_endings_are_caught() {
        assert_eq!(
            measure("It meets the thresholds.").jargon,
            vec!["threshold"]
        );
        assert_eq!(
            measure("It meets the 'threshold'.").jargon,
            vec!["threshold"]
        );
        assert_eq!(measure("The abusers' names").jargon, vec!["abuser"]);
        assert_eq!(
            measure("Two Assessments were done.").jargon,
            vec!["assessment"]
        );
        assert_eq!(measure("We escalated it.").jargon, vec!["escalate"]);
        assert_eq!(
            measure("Mum was non compliant.").jargon,
            vec!["non-compliant"]
        );
        assert_eq!(
            measure("Mum was noncompliant.").jargon,
            vec!["non-compliant"]
        );
        assert_eq!(
            measure("Child-protection plans help.").jargon,
            vec!["child protection plan"]
        );
    }

    #[test]
    fn jargon_respects_word_boundaries() {
        // "refused" must not match "refuse"; a listed word inside another word is not a match.
        assert!(measure("You can refuse to answer.").jargon.is_empty());
        assert!(measure("Our bus 47 leaves.").jargon.is_empty());
        assert!(measure("We failed today.").jargon.is_empty());
        assert!(measure("Read section 470.").jargon.is_empty());
        assert!(measure("The reassessment is soon.").jargon.is_empty());
        assert_eq!(measure("He refused.").jargon, vec!["refused"]);
    }

    #[test]
    fn plain_explanation_passes() {
        let text = "We are worried about how Sam is sleeping. We would like to visit you at home \
                    next week to talk about it. You can ask a friend to be there with you. \
                    We will tell you what we think, and you can tell us what you think.";
        let found = problems(text, &Bar::default());
        assert!(found.is_empty(), "{found:?} {:?}", measure(text));
    }

    #[test]
    fn decimals_and_abbreviations_do_not_split_sentences() {
        let r = measure("Sam grew 2.5 cm this year.");
        assert_eq!((r.sentences, r.words), (1, 6));
        let r = measure(
            "Bring something to read, e.g. a book. Dr. Patel will see you at 3 p.m. today.",
        );
        assert_eq!(r.sentences, 2);
        let r = measure("We talked about school, food, sleep etc. Then we went home.");
        assert_eq!(r.sentences, 2);
        let r = measure("We met at 9 a.m. and talked. Life in the U.K. is new for you.");
        assert_eq!(r.sentences, 2);
    }

    #[test]
    fn other_sentence_ends() {
        let r = measure("Is that OK? Yes! We agree...\nNext steps\n\n- one visit\n- one call");
        assert_eq!(r.sentences, 6);
        assert_eq!(r.words, 12);
    }

    #[test]
    fn empty_text_fails() {
        let r = measure("  \n ");
        assert_eq!((r.words, r.sentences, r.flesch), (0, 0, 0.0));
        assert_eq!(
            problems("", &Bar::default()),
            vec!["there is no text to read"]
        );
    }

    #[test]
    fn default_bar() {
        assert_eq!(
            Bar::default(),
            Bar {
                min_flesch: 60.0,
                max_sentence_words: 25
            }
        );
    }

    #[test]
    fn list_is_lowercase_and_has_the_required_words() {
        for w in JARGON {
            assert_eq!(*w, w.to_lowercase(), "{w}");
        }
        for w in [
            "section 47",
            "section 17",
            "s47",
            "s17",
            "threshold",
            "non-compliant",
            "non-compliance",
            "failed to",
            "refused",
            "perpetrator",
            "risk factor",
            "significant harm",
            "safeguarding",
            "statutory",
            "child protection plan",
            "multi-agency",
            "strategy discussion",
            "disguised compliance",
            "neglectful",
            "abuser",
            "assessment",
            "intervention",
            "escalate",
        ] {
            assert!(JARGON.contains(&w), "{w} missing");
        }
    }

    #[test]
    fn every_listed_word_finds_itself() {
        for w in JARGON {
            assert_eq!(
                measure(&format!("It said {w} here.")).jargon,
                vec![*w],
                "{w}"
            );
        }
    }

    #[test]
    fn jargon_heavy_explanation_fails() {
        let text =
            "Following the strategy discussion, the multi-agency partnership determined that \
                    the threshold for a Section 47 enquiry was met because Mum failed to engage \
                    with services.";
        let found = problems(text, &Bar::default());
        assert_eq!(
            found,
            vec![
                "reading ease 27.5 is below 60",
                "sentence 1 has 26 words (at most 25): \"Following the strategy discussion, the \
                 multi-agency partnership determined...\"",
                "uses \"section 47\", a jargon or blaming word",
                "uses \"threshold\", a jargon or blaming word",
                "uses \"failed to\", a jargon or blaming word",
                "uses \"multi-agency\", a jargon or blaming word",
                "uses \"strategy discussion\", a jargon or blaming word",
            ]
        );
    }

    #[test]
    fn odd_input_does_not_panic() {
        for t in [
            "",
            ".",
            "..",
            "'",
            "’s",
            "é",
            "İstanbul",
            "Straße",
            "🙂 ok.",
            "3..5",
            "a.",
            "\r\n",
            "x.y.",
            "e.g.",
            "U.K.",
            "s.",
            "s. 4",
            "non-",
            "every",
            "gue",
            "ngue",
            "es",
            "ed",
            "ye",
        ] {
            let _ = problems(t, &Bar::default());
            for w in split_words(t) {
                assert!(syllables(w) >= 1, "{w}");
            }
        }
    }

    #[test]
    fn every_listed_word_is_explained_in_the_docs() {
        let docs = include_str!("../docs/plain-language.md");
        for w in JARGON {
            assert!(
                docs.contains(&format!("| `{w}` |")),
                "{w} has no row in the docs"
            );
        }
    }
}
