//! Demo data: forms drawn at random, yet valid, from a tool's own JSON Schema.
//!
//! `safeguard demo-data` fills a store with realistic decisions so people can try the product
//! without typing cases in by hand, and so benchmarks have a journal of a realistic size and
//! shape. This module owns only the forms: [`FormGenerator`] reads one tool schema and draws forms
//! from it with a caller-supplied RNG, and [`valid_form`] keeps drawing until the tool's real
//! validator accepts one. Evaluating and storing the decisions is the caller's business, done
//! through the decision service like any other form.
//!
//! # What it understands
//!
//! The draft 2020-12 vocabulary the tools use, and the rest of the common core: `type` (one or
//! several), `properties`, `required`, `additionalProperties`, `enum`, `const`, labelled choices
//! (`oneOf` of `{const, title}`, drawn as a list of options), other `oneOf`/`anyOf` (one branch is
//! picked), `allOf`, `$ref` into the same document, `if`/`then`/`else`, `dependentRequired`,
//! `dependentSchemas`, `min`/`maxProperties`, `minimum`/`maximum`/`exclusive*`/`multipleOf`,
//! `minLength`/`maxLength`, `pattern`, `format` (dates, times, e-mail, URI, UUID...),
//! `items`/`prefixItems`, `min`/`maxItems`, `uniqueItems`, `contains`/`min`/`maxContains`,
//! `not` and `default`. Other keywords are ignored while drawing.
//!
//! # How
//!
//! Drawing is driven by the schema itself rather than by a compiled tree: at each value the
//! generator gathers every subschema that applies (following `$ref` and `allOf`), picks a branch
//! for each `oneOf`/`anyOf`, and draws a value that meets them all. Cross-field rules are met by
//! drawing first and fixing after: an object is drawn, each `if` is evaluated against it, and the
//! fields its `then` or `else` now requires or constrains are drawn again until no condition
//! changes. A small built-in checker for the same vocabulary decides when a value must be drawn
//! again; `pattern` is checked with the `jsonschema` crate's own regex engine (each pattern of the
//! schema is compiled once, in [`FormGenerator::new`]), so a string is only offered when the real
//! validator would accept it.
//!
//! # Realistic, not just valid
//!
//! - Strings come from short lists of plausible safeguarding text picked by the field's name (a
//!   person for `led_by`, an event for a disruption, a note for `notes`), cut to fit the length
//!   limits; `format`s get plausible values (dates in 2023-2025, office hours).
//! - Optional fields are filled about half the time; a valid `default` is used half the time.
//! - Each form has a *lean* that most of its labelled choices follow (see `Leaning`), so a form
//!   is consistently reassuring or consistently worrying, and the decisions spread over the
//!   levels instead of piling up at the most serious one.
//! - Wide integer ranges (weeks, counts of people) are drawn mostly from their first 20 steps,
//!   where the tools' cut-points are.
//!
//! Same seed, same forms: maps are walked in document order (`serde_json` is built with
//! `preserve_order`) and every random choice comes from the caller's RNG.

use std::collections::HashMap;

use rand::Rng;
use serde_json::{Map, Value};

/// Beyond this nesting depth optional properties are left out and arrays take their minimum
/// length, so a recursive schema still ends.
const MAX_DEPTH: usize = 6;
/// How often one value is drawn again when the generator's own check finds it invalid.
const TRIES: usize = 4;
/// How often an array element is drawn again to keep `uniqueItems`.
const UNIQUE_TRIES: usize = 12;
/// How likely an optional property is to be filled in.
const OPTIONAL_PRESENT: f64 = 0.5;
/// An integer range wider than this is drawn from its first `WIDE` steps four times in five.
const WIDE: i64 = 20;
/// How often a choice follows the form's lean rather than falling anywhere (see [`Leaning`]).
const LEANING: f64 = 0.7;
/// Keywords that only label a choice: a `oneOf` branch with nothing else but `const` or `enum`
/// is a plain option.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "$comment",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
];
const TYPES: [&str; 7] = [
    "object", "array", "string", "integer", "number", "boolean", "null",
];

/// Draws forms from one tool schema. Build it once per tool; drawing borrows it immutably.
pub struct FormGenerator {
    root: Value,
    /// Every `pattern` (and `patternProperties` key) of the schema, compiled once by the
    /// `jsonschema` crate so strings are checked by the same regex engine as real forms.
    /// `None` when a pattern does not compile (the catalog refuses such a schema anyway).
    patterns: HashMap<String, Option<jsonschema::Validator>>,
}

impl std::fmt::Debug for FormGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FormGenerator")
            .field("title", &self.root.get("title"))
            .field("patterns", &self.patterns.len())
            .finish_non_exhaustive()
    }
}

/// Draws up to `attempts` forms and returns the first that `is_valid` accepts (the generator may
/// not satisfy every cross-field rule such as if/then on its own): the caller passes the tool's
/// real validator. The predicate may ask for more, for example a form that the tool's rules
/// take to a given level.
pub fn valid_form(
    gen: &FormGenerator,
    rng: &mut impl Rng,
    is_valid: impl Fn(&Value) -> bool,
    attempts: usize,
) -> Option<Value> {
    (0..attempts)
        .map(|_| gen.generate(rng))
        .find(|form| is_valid(form))
}

impl FormGenerator {
    /// Reads `schema` (a whole tool schema, `x-tool` and all; unknown keywords are ignored).
    /// A `$ref` that does not resolve inside the document is treated as "anything".
    pub fn new(schema: &Value) -> Self {
        let mut patterns = HashMap::new();
        collect_patterns(schema, &mut patterns);
        FormGenerator {
            root: schema.clone(),
            patterns,
        }
    }

    /// A form drawn with `rng`; optional fields are present about half the time.
    pub fn generate(&self, rng: &mut impl Rng) -> Value {
        let lean = rng.random::<f64>();
        self.draw(&[&self.root], "", 0, &mut Leaning { rng, lean })
    }

    // ----- drawing -------------------------------------------------------------------------

    /// A value that meets every schema in `schemas`. `hint` is the field's path of property
    /// names (`"disruptions/led_by"`), used to pick plausible text.
    fn draw<'s, R: Draws>(
        &'s self,
        schemas: &[&'s Value],
        hint: &str,
        depth: usize,
        rng: &mut R,
    ) -> Value {
        let mut base = Vec::new();
        for schema in schemas {
            self.expand(schema, &mut base);
        }
        let mut value = Value::Null;
        for _ in 0..TRIES {
            let mut atoms = base.clone();
            self.choose_branches(&mut atoms, rng);
            value = self.draw_once(&atoms, hint, depth, true, rng);
            if self.matches_all(&base, &value) {
                break;
            }
        }
        value
    }

    /// Adds `schema` to `out`, followed by everything it pulls in through `$ref` and `allOf`, so
    /// each schema the value must meet at this level is one entry ("atom").
    fn expand<'s>(&'s self, schema: &'s Value, out: &mut Vec<&'s Value>) {
        if out.iter().any(|seen| std::ptr::eq(*seen, schema)) {
            return;
        }
        out.push(schema);
        let Some(obj) = schema.as_object() else {
            return;
        };
        if let Some(target) = obj
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| self.resolve(r))
        {
            self.expand(target, out);
        }
        if let Some(Value::Array(all)) = obj.get("allOf") {
            for s in all {
                self.expand(s, out);
            }
        }
    }

    /// For each `oneOf`/`anyOf` that is not a plain list of options, adds one branch at random.
    fn choose_branches<'s, R: Draws>(&'s self, atoms: &mut Vec<&'s Value>, rng: &mut R) {
        let mut i = 0;
        while i < atoms.len() {
            let atom = atoms[i];
            for key in ["oneOf", "anyOf"] {
                if let Some(Value::Array(branches)) = atom.get(key) {
                    if !branches.is_empty() && literal_branches(branches).is_none() {
                        let pick = &branches[rng.random_range(0..branches.len())];
                        self.expand(pick, atoms);
                    }
                }
            }
            i += 1;
        }
    }

    fn draw_once<'s, R: Draws>(
        &'s self,
        atoms: &[&'s Value],
        hint: &str,
        depth: usize,
        conditionals: bool,
        rng: &mut R,
    ) -> Value {
        if atoms.iter().any(|a| **a == Value::Bool(false)) {
            return Value::Null;
        }
        // A valid default is what a practitioner who leaves the field alone submits.
        if let Some(default) = atoms.iter().find_map(|a| a.get("default")) {
            if rng.random_bool(0.5) && self.matches_all(atoms, default) {
                return default.clone();
            }
        }
        if let Some(options) = literal_candidates(atoms) {
            let fitting: Vec<&Value> = options
                .iter()
                .copied()
                .filter(|v| self.matches_all(atoms, v))
                .collect();
            let pool = if fitting.is_empty() {
                &options
            } else {
                &fitting
            };
            return match pool.len() {
                0 => Value::Null,
                n => pool[pick_leaning(n, rng)].clone(),
            };
        }
        let value = match pick_type(atoms, rng) {
            "object" => return self.draw_object(atoms, hint, depth, rng),
            "array" => self.draw_array(atoms, hint, depth, rng),
            "string" => Value::String(self.draw_string(atoms, hint, rng)),
            "integer" => draw_integer(atoms, rng),
            "number" => draw_number(atoms, rng),
            "boolean" => Value::Bool(rng.random_bool(0.5)),
            _ => Value::Null,
        };
        if !conditionals {
            return value;
        }
        // `if`/`then`/`else` on a value that is not an object: add the branch and draw again.
        let mut with_branches = atoms.to_vec();
        for atom in atoms {
            if let Some(condition) = atom.get("if") {
                let key = if self.matches(condition, &value) {
                    "then"
                } else {
                    "else"
                };
                if let Some(branch) = atom.get(key) {
                    if !self.matches(branch, &value) {
                        self.expand(branch, &mut with_branches);
                    }
                }
            }
        }
        if with_branches.len() == atoms.len() {
            value
        } else {
            self.draw_once(&with_branches, hint, depth, false, rng)
        }
    }

    fn draw_object<'s, R: Draws>(
        &'s self,
        atoms: &[&'s Value],
        hint: &str,
        depth: usize,
        rng: &mut R,
    ) -> Value {
        let conditionals = conditionals(atoms);
        let base = self.shape(atoms, &conditionals, &[]);

        // Which fields the form fills in: every required one, about half the optional ones.
        let mut wanted: Vec<&str> = Vec::new();
        let mut skipped: Vec<&str> = Vec::new();
        for (name, _) in &base.properties {
            let required = base.required.contains(name);
            if required || self.allows(&base, name) {
                let fill = required || (depth < MAX_DEPTH && rng.random_bool(OPTIONAL_PRESENT));
                if fill {
                    wanted.push(name);
                } else {
                    skipped.push(name);
                }
            }
        }
        let required_elsewhere = base
            .required
            .iter()
            .filter(|r| !base.properties.iter().any(|(n, _)| n == *r))
            .count();
        let mut skipped = skipped.into_iter();
        while wanted.len() + required_elsewhere < base.min_properties {
            match skipped.next() {
                Some(name) => wanted.push(name),
                None => break,
            }
        }
        if let Some(max) = base.max_properties {
            while wanted.len() + required_elsewhere > max {
                match wanted.iter().rposition(|n| !base.required.contains(n)) {
                    Some(i) => {
                        wanted.remove(i);
                    }
                    None => break,
                }
            }
        }

        // Draw, then evaluate each condition and apply its branch, until no condition changes.
        let mut form = Map::new();
        let mut chosen: Vec<Option<bool>> = vec![None; conditionals.len()];
        let mut shape = base;
        for _ in 0..conditionals.len() + 2 {
            shape = self.shape(atoms, &conditionals, &chosen);
            let mut names = wanted.clone();
            for r in &shape.required {
                if !names.contains(r) {
                    names.push(r);
                }
            }
            loop {
                let mut grew = false;
                for (key, deps) in &shape.dependent {
                    if names.contains(key) {
                        for dep in deps.iter().filter_map(Value::as_str) {
                            if !names.contains(&dep) {
                                names.push(dep);
                                grew = true;
                            }
                        }
                    }
                }
                if !grew {
                    break;
                }
            }
            names.retain(|n| shape.required.contains(n) || !shape.forbids(n));
            form.retain(|k, _| names.contains(&k.as_str()));
            for name in &names {
                let schemas = shape.schemas_for(name);
                let fits = form
                    .get(*name)
                    .is_some_and(|v| self.matches_all(&schemas, v));
                if !fits {
                    let path = if hint.is_empty() {
                        (*name).to_owned()
                    } else {
                        format!("{hint}/{name}")
                    };
                    let value = self.draw(&schemas, &path, depth + 1, rng);
                    form.insert((*name).to_owned(), value);
                }
            }
            if conditionals.is_empty() {
                break;
            }
            let as_value = Value::Object(form.clone());
            let now: Vec<Option<bool>> = conditionals
                .iter()
                .map(|c| Some(self.holds(&c.when, &as_value)))
                .collect();
            if now == chosen {
                break;
            }
            chosen = now;
        }

        // Document order: declared properties first, then anything else.
        let mut ordered = Map::new();
        for (name, _) in &shape.properties {
            if let Some(v) = form.remove(*name) {
                ordered.insert((*name).to_owned(), v);
            }
        }
        ordered.extend(form);
        Value::Object(ordered)
    }

    /// The object-level view of `atoms`, with the branch of each conditional named in `chosen`.
    fn shape<'s>(
        &'s self,
        atoms: &[&'s Value],
        conditionals: &[Conditional<'s>],
        chosen: &[Option<bool>],
    ) -> Shape<'s> {
        let mut shape = Shape::default();
        for atom in atoms {
            shape.add(atom);
        }
        for (c, choice) in conditionals.iter().zip(chosen) {
            let branch = match choice {
                Some(true) => c.then,
                Some(false) => c.otherwise,
                None => None,
            };
            if let Some(branch) = branch {
                let mut extra = Vec::new();
                self.expand(branch, &mut extra);
                for atom in extra {
                    shape.add(atom);
                }
            }
        }
        shape
    }

    /// Whether `additionalProperties: false` anywhere at this level leaves room for `name`.
    fn allows(&self, shape: &Shape<'_>, name: &str) -> bool {
        shape.closed.iter().all(|obj| {
            obj.get("properties")
                .and_then(Value::as_object)
                .is_some_and(|p| p.contains_key(name))
                || obj
                    .get("patternProperties")
                    .and_then(Value::as_object)
                    .is_some_and(|p| p.keys().any(|pat| self.pattern_matches(pat, name)))
        })
    }

    fn holds(&self, when: &When<'_>, form: &Value) -> bool {
        match when {
            When::Schema(s) => self.matches(s, form),
            When::Present(name) => form.get(*name).is_some(),
        }
    }

    fn draw_array<'s, R: Draws>(
        &'s self,
        atoms: &[&'s Value],
        hint: &str,
        depth: usize,
        rng: &mut R,
    ) -> Value {
        let mut min = 0;
        let mut max = usize::MAX;
        let mut unique = false;
        let mut prefix: Vec<Vec<&Value>> = Vec::new();
        // Each `items` applies after its own atom's `prefixItems`.
        let mut items: Vec<(usize, &Value)> = Vec::new();
        let mut contains: Vec<Contains<'_>> = Vec::new();
        for atom in atoms {
            let Some(o) = atom.as_object() else {
                continue;
            };
            if let Some(n) = o.get("minItems").and_then(as_usize) {
                min = min.max(n);
            }
            if let Some(n) = o.get("maxItems").and_then(as_usize) {
                max = max.min(n);
            }
            unique |= o.get("uniqueItems") == Some(&Value::Bool(true));
            let mut prefix_len = 0;
            if let Some(Value::Array(p)) = o.get("prefixItems") {
                for (i, s) in p.iter().enumerate() {
                    if prefix.len() <= i {
                        prefix.push(Vec::new());
                    }
                    prefix[i].push(s);
                }
                prefix_len = p.len();
            }
            if let Some(s) = o.get("items") {
                items.push((prefix_len, s));
            }
            if let Some(schema) = o.get("contains") {
                contains.push(Contains {
                    schema,
                    min: o.get("minContains").and_then(as_usize).unwrap_or(1),
                    max: o.get("maxContains").and_then(as_usize),
                });
            }
        }
        let schemas_at = |i: usize| -> Vec<&Value> {
            let mut out: Vec<&Value> = prefix.get(i).cloned().unwrap_or_default();
            out.extend(items.iter().filter(|(p, _)| i >= *p).map(|(_, s)| *s));
            out
        };

        // Distinct picks from a fixed list of options are drawn without replacement.
        let options = if unique && prefix.is_empty() {
            let mut expanded = Vec::new();
            for s in schemas_at(0) {
                self.expand(s, &mut expanded);
            }
            literal_candidates(&expanded).map(|all| {
                all.into_iter()
                    .filter(|v| self.matches_all(&expanded, v))
                    .collect::<Vec<_>>()
            })
        } else {
            None
        };
        if let Some(options) = &options {
            max = max.min(options.len());
        }
        let lo = min.min(max);
        let hi = if depth >= MAX_DEPTH {
            lo
        } else {
            max.min(lo.max(1) + 3)
        };
        let len = rng.random_range(lo..=hi);

        let mut out: Vec<Value> = Vec::with_capacity(len);
        if let Some(options) = &options {
            let mut idx: Vec<usize> = (0..options.len()).collect();
            for i in 0..len {
                let j = rng.random_range(i..idx.len());
                idx.swap(i, j);
            }
            let mut picked = idx[..len].to_vec();
            picked.sort_unstable();
            out.extend(picked.into_iter().map(|i| options[i].clone()));
        } else {
            for i in 0..len {
                let v = self.draw_element(&schemas_at(i), &out, None, unique, hint, depth, rng);
                out.push(v);
            }
        }

        for c in &contains {
            let matching = out.iter().filter(|v| self.matches(c.schema, v)).count();
            if matching < c.min {
                let mut free: Vec<usize> = (0..out.len())
                    .filter(|&i| !self.matches(c.schema, &out[i]))
                    .collect();
                for _ in matching..c.min {
                    let at = if !free.is_empty() {
                        free.swap_remove(rng.random_range(0..free.len()))
                    } else if out.len() < max {
                        out.push(Value::Null);
                        out.len() - 1
                    } else {
                        break;
                    };
                    let mut schemas = schemas_at(at);
                    schemas.push(c.schema);
                    out[at] = self.draw_element(&schemas, &out, Some(at), unique, hint, depth, rng);
                }
            }
            if let Some(cmax) = c.max {
                let mut matching: Vec<usize> = (0..out.len())
                    .filter(|&i| self.matches(c.schema, &out[i]))
                    .collect();
                while matching.len() > cmax {
                    let at = matching.swap_remove(rng.random_range(0..matching.len()));
                    for _ in 0..UNIQUE_TRIES {
                        let v = self.draw_element(
                            &schemas_at(at),
                            &out,
                            Some(at),
                            unique,
                            hint,
                            depth,
                            rng,
                        );
                        let done = !self.matches(c.schema, &v);
                        out[at] = v;
                        if done {
                            break;
                        }
                    }
                }
            }
        }
        Value::Array(out)
    }

    /// One array element; with `unique`, drawn again while it equals another element.
    #[allow(clippy::too_many_arguments)]
    fn draw_element<'s, R: Draws>(
        &'s self,
        schemas: &[&'s Value],
        others: &[Value],
        skip: Option<usize>,
        unique: bool,
        hint: &str,
        depth: usize,
        rng: &mut R,
    ) -> Value {
        let mut value = Value::Null;
        for _ in 0..UNIQUE_TRIES {
            value = self.draw(schemas, hint, depth + 1, rng);
            let clash = unique
                && others
                    .iter()
                    .enumerate()
                    .any(|(i, o)| Some(i) != skip && json_eq(o, &value));
            if !clash {
                break;
            }
        }
        value
    }

    fn draw_string<R: Draws>(&self, atoms: &[&Value], hint: &str, rng: &mut R) -> String {
        let mut min = 0;
        let mut max = usize::MAX;
        let mut patterns: Vec<&str> = Vec::new();
        let mut format = None;
        for atom in atoms {
            if let Some(n) = atom.get("minLength").and_then(as_usize) {
                min = min.max(n);
            }
            if let Some(n) = atom.get("maxLength").and_then(as_usize) {
                max = max.min(n);
            }
            if let Some(p) = atom.get("pattern").and_then(Value::as_str) {
                patterns.push(p);
            }
            if format.is_none() {
                format = atom.get("format").and_then(Value::as_str);
            }
        }
        let fits = |s: &str| {
            let n = s.chars().count();
            n >= min && n <= max && patterns.iter().all(|p| self.pattern_matches(p, s))
        };
        if let Some(s) = format.and_then(|f| draw_format(f, rng)) {
            if fits(&s) {
                return s;
            }
        }
        for pool in [text_for(hint), FALLBACK] {
            let fitting: Vec<&str> = pool.iter().copied().filter(|s| fits(s)).collect();
            if !fitting.is_empty() {
                return fitting[rng.random_range(0..fitting.len())].to_owned();
            }
        }
        // Nothing fits as it is: cut or pad a candidate (it may still miss a pattern).
        let pool = text_for(hint);
        let mut s: String = pool[rng.random_range(0..pool.len())]
            .chars()
            .take(max)
            .collect();
        while s.chars().count() < min {
            s.push_str(" and more");
        }
        s.chars().take(max.max(min)).collect()
    }

    // ----- checking ------------------------------------------------------------------------

    fn resolve(&self, reference: &str) -> Option<&Value> {
        let fragment = reference.strip_prefix('#')?;
        self.root.pointer(&percent_decode(fragment))
    }

    fn pattern_matches(&self, pattern: &str, s: &str) -> bool {
        match self.patterns.get(pattern) {
            Some(Some(validator)) => validator.is_valid(&Value::String(s.to_owned())),
            _ => true,
        }
    }

    fn matches_all(&self, schemas: &[&Value], v: &Value) -> bool {
        schemas.iter().all(|s| self.matches(s, v))
    }

    /// Whether `v` meets `schema`, for the vocabulary this module draws from (other keywords
    /// pass). Used to pick options, evaluate `if` and `contains`, and decide what to redraw; the
    /// final word is the caller's validator.
    fn matches(&self, schema: &Value, v: &Value) -> bool {
        self.check(schema, v, 0)
    }

    fn check(&self, schema: &Value, v: &Value, depth: usize) -> bool {
        let o = match schema {
            Value::Bool(b) => return *b,
            Value::Object(o) => o,
            _ => return true,
        };
        if depth > 64 {
            return true;
        }
        let d = depth + 1;
        o.iter().all(|(k, s)| match k.as_str() {
            "$ref" => s
                .as_str()
                .and_then(|r| self.resolve(r))
                .is_none_or(|t| self.check(t, v, d)),
            "type" => type_matches(s, v),
            "const" => json_eq(s, v),
            "enum" => each(s).iter().any(|x| json_eq(x, v)),
            "allOf" => each(s).iter().all(|x| self.check(x, v, d)),
            "anyOf" => each(s).iter().any(|x| self.check(x, v, d)),
            "oneOf" => each(s).iter().filter(|x| self.check(x, v, d)).count() == 1,
            "not" => !self.check(s, v, d),
            "if" => {
                let branch = if self.check(s, v, d) {
                    o.get("then")
                } else {
                    o.get("else")
                };
                branch.is_none_or(|b| self.check(b, v, d))
            }
            _ => match v {
                Value::Object(form) => self.check_object(o, k, s, form, d),
                Value::Array(list) => self.check_array(o, k, s, list, d),
                Value::String(text) => self.check_string(k, s, text),
                Value::Number(n) => n.as_f64().is_none_or(|x| check_number(k, s, x)),
                _ => true,
            },
        })
    }

    fn check_object(
        &self,
        o: &Map<String, Value>,
        k: &str,
        s: &Value,
        form: &Map<String, Value>,
        d: usize,
    ) -> bool {
        let declared = |name: &str| {
            o.get("properties")
                .and_then(Value::as_object)
                .is_some_and(|p| p.contains_key(name))
                || o.get("patternProperties")
                    .and_then(Value::as_object)
                    .is_some_and(|p| p.keys().any(|pat| self.pattern_matches(pat, name)))
        };
        match (k, s) {
            ("properties", Value::Object(props)) => props
                .iter()
                .all(|(name, ps)| form.get(name).is_none_or(|x| self.check(ps, x, d))),
            ("patternProperties", Value::Object(pats)) => pats.iter().all(|(pat, ps)| {
                form.iter()
                    .filter(|(name, _)| self.pattern_matches(pat, name))
                    .all(|(_, x)| self.check(ps, x, d))
            }),
            ("additionalProperties", _) => form
                .iter()
                .filter(|(name, _)| !declared(name))
                .all(|(_, x)| self.check(s, x, d)),
            ("required", Value::Array(names)) => names
                .iter()
                .filter_map(Value::as_str)
                .all(|n| form.contains_key(n)),
            ("dependentRequired", Value::Object(deps)) => deps.iter().all(|(key, names)| {
                !form.contains_key(key)
                    || names
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .all(|n| form.contains_key(n))
            }),
            ("dependentSchemas", Value::Object(deps)) => deps.iter().all(|(key, ds)| {
                !form.contains_key(key) || self.check(ds, &Value::Object(form.clone()), d)
            }),
            ("propertyNames", _) => form
                .keys()
                .all(|name| self.check(s, &Value::String(name.clone()), d)),
            ("minProperties", _) => as_usize(s).is_none_or(|n| form.len() >= n),
            ("maxProperties", _) => as_usize(s).is_none_or(|n| form.len() <= n),
            _ => true,
        }
    }

    fn check_array(
        &self,
        o: &Map<String, Value>,
        k: &str,
        s: &Value,
        list: &[Value],
        d: usize,
    ) -> bool {
        match k {
            "prefixItems" => s
                .as_array()
                .into_iter()
                .flatten()
                .zip(list)
                .all(|(ps, x)| self.check(ps, x, d)),
            "items" => {
                let skip = o
                    .get("prefixItems")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                list.iter().skip(skip).all(|x| self.check(s, x, d))
            }
            "minItems" => as_usize(s).is_none_or(|n| list.len() >= n),
            "maxItems" => as_usize(s).is_none_or(|n| list.len() <= n),
            "uniqueItems" => {
                *s != Value::Bool(true)
                    || list
                        .iter()
                        .enumerate()
                        .all(|(i, a)| list[i + 1..].iter().all(|b| !json_eq(a, b)))
            }
            "contains" => {
                let count = list.iter().filter(|x| self.check(s, x, d)).count();
                let min = o.get("minContains").and_then(as_usize).unwrap_or(1);
                let max = o.get("maxContains").and_then(as_usize);
                count >= min && max.is_none_or(|m| count <= m)
            }
            _ => true,
        }
    }

    fn check_string(&self, k: &str, s: &Value, text: &str) -> bool {
        match k {
            "minLength" => as_usize(s).is_none_or(|n| text.chars().count() >= n),
            "maxLength" => as_usize(s).is_none_or(|n| text.chars().count() <= n),
            "pattern" => s.as_str().is_none_or(|p| self.pattern_matches(p, text)),
            _ => true,
        }
    }
}

/// The caller's RNG plus the form's lean: where in each list of options this form tends to
/// fall. Tools list options from the least to the most worrying, and real cases are consistent
/// (a family doing well tends to do well on most questions), so one lean per form, shared by
/// every choice, gives decisions across every level rather than nearly all at the most serious
/// one, as independent choices would. The lean is uniform, so each option is still drawn equally
/// often overall.
struct Leaning<'a, R> {
    rng: &'a mut R,
    lean: f64,
}

impl<R: rand::RngCore> rand::RngCore for Leaning<'_, R> {
    fn next_u32(&mut self) -> u32 {
        self.rng.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.rng.fill_bytes(dst)
    }
}

/// An RNG that also carries the form's lean (see [`Leaning`]).
trait Draws: Rng {
    fn lean(&self) -> f64;
}

impl<R: rand::RngCore> Draws for Leaning<'_, R> {
    fn lean(&self) -> f64 {
        self.lean
    }
}

/// An index into `n` options: most often where the form leans, otherwise anywhere.
fn pick_leaning<R: Draws>(n: usize, rng: &mut R) -> usize {
    if rng.random_bool(LEANING) {
        ((rng.lean() * n as f64) as usize).min(n - 1)
    } else {
        rng.random_range(0..n)
    }
}

/// An `if` (or a `dependentSchemas` entry, which is "if this key is present") and its branches.
struct Conditional<'s> {
    when: When<'s>,
    then: Option<&'s Value>,
    otherwise: Option<&'s Value>,
}

enum When<'s> {
    Schema(&'s Value),
    Present(&'s str),
}

fn conditionals<'s>(atoms: &[&'s Value]) -> Vec<Conditional<'s>> {
    let mut out = Vec::new();
    for atom in atoms {
        if let Some(condition) = atom.get("if") {
            let (then, otherwise) = (atom.get("then"), atom.get("else"));
            if then.is_some() || otherwise.is_some() {
                out.push(Conditional {
                    when: When::Schema(condition),
                    then,
                    otherwise,
                });
            }
        }
        if let Some(Value::Object(deps)) = atom.get("dependentSchemas") {
            for (key, schema) in deps {
                out.push(Conditional {
                    when: When::Present(key),
                    then: Some(schema),
                    otherwise: None,
                });
            }
        }
    }
    out
}

/// What a set of atoms says about an object's fields.
#[derive(Default)]
struct Shape<'s> {
    /// Each declared property (document order) and every schema it must meet.
    properties: Vec<(&'s str, Vec<&'s Value>)>,
    required: Vec<&'s str>,
    /// `additionalProperties` schemas, for required fields declared nowhere.
    additional: Vec<&'s Value>,
    /// Atoms with `additionalProperties: false`.
    closed: Vec<&'s Map<String, Value>>,
    dependent: Vec<(&'s str, &'s [Value])>,
    min_properties: usize,
    max_properties: Option<usize>,
}

impl<'s> Shape<'s> {
    fn add(&mut self, atom: &'s Value) {
        let Some(o) = atom.as_object() else {
            return;
        };
        if let Some(Value::Object(props)) = o.get("properties") {
            for (name, schema) in props {
                match self.properties.iter_mut().find(|(n, _)| n == name) {
                    Some((_, schemas)) => schemas.push(schema),
                    None => self.properties.push((name, vec![schema])),
                }
            }
        }
        if let Some(Value::Array(names)) = o.get("required") {
            for name in names.iter().filter_map(Value::as_str) {
                if !self.required.contains(&name) {
                    self.required.push(name);
                }
            }
        }
        match o.get("additionalProperties") {
            Some(Value::Bool(false)) => self.closed.push(o),
            Some(schema) => self.additional.push(schema),
            None => {}
        }
        if let Some(Value::Object(deps)) = o.get("dependentRequired") {
            for (key, names) in deps {
                if let Value::Array(names) = names {
                    self.dependent.push((key, names));
                }
            }
        }
        if let Some(n) = o.get("minProperties").and_then(as_usize) {
            self.min_properties = self.min_properties.max(n);
        }
        if let Some(n) = o.get("maxProperties").and_then(as_usize) {
            self.max_properties = Some(self.max_properties.map_or(n, |m| m.min(n)));
        }
    }

    fn schemas_for(&self, name: &str) -> Vec<&'s Value> {
        match self.properties.iter().find(|(n, _)| *n == name) {
            Some((_, schemas)) => schemas.clone(),
            None => self.additional.clone(),
        }
    }

    /// A branch may forbid a field with a `false` schema.
    fn forbids(&self, name: &str) -> bool {
        self.properties
            .iter()
            .any(|(n, schemas)| *n == name && schemas.iter().any(|s| **s == Value::Bool(false)))
    }
}

struct Contains<'s> {
    schema: &'s Value,
    min: usize,
    max: Option<usize>,
}

/// The values of a `oneOf`/`anyOf` whose every branch is only a `const` or `enum` (plus labels).
fn literal_branches(branches: &[Value]) -> Option<Vec<&Value>> {
    let mut out = Vec::new();
    for branch in branches {
        let o = branch.as_object()?;
        if o.keys()
            .any(|k| k != "const" && k != "enum" && !ANNOTATIONS.contains(&k.as_str()))
        {
            return None;
        }
        match (o.get("const"), o.get("enum")) {
            (Some(c), _) => out.push(c),
            (None, Some(Value::Array(e))) => out.extend(e),
            _ => return None,
        }
    }
    Some(out)
}

/// The options left by every `const`, `enum` and list of labelled choices among `atoms`, or
/// `None` when no atom restricts the value to a list.
fn literal_candidates<'s>(atoms: &[&'s Value]) -> Option<Vec<&'s Value>> {
    let mut result: Option<Vec<&Value>> = None;
    for atom in atoms {
        let Some(o) = atom.as_object() else {
            continue;
        };
        let mut sets: Vec<Vec<&Value>> = Vec::new();
        if let Some(c) = o.get("const") {
            sets.push(vec![c]);
        }
        if let Some(Value::Array(e)) = o.get("enum") {
            sets.push(e.iter().collect());
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(values) = o
                .get(key)
                .and_then(Value::as_array)
                .and_then(|b| literal_branches(b))
            {
                sets.push(values);
            }
        }
        for set in sets {
            result = Some(match result {
                None => set,
                Some(prev) => prev
                    .into_iter()
                    .filter(|v| set.iter().any(|w| json_eq(v, w)))
                    .collect(),
            });
        }
    }
    result
}

fn pick_type<R: Rng>(atoms: &[&Value], rng: &mut R) -> &'static str {
    let mut allowed: Vec<&'static str> = TYPES.to_vec();
    let mut declared = false;
    for atom in atoms {
        let names: Vec<&str> = match atom.get("type") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => continue,
        };
        declared = true;
        allowed.retain(|t| names.contains(t) || (*t == "integer" && names.contains(&"number")));
    }
    if !declared {
        // No `type`: go by the keywords that only make sense for one type.
        let has = |keys: &[&str]| {
            atoms
                .iter()
                .any(|a| keys.iter().any(|k| a.get(k).is_some()))
        };
        allowed.clear();
        for (t, keys) in [
            (
                "object",
                &[
                    "properties",
                    "required",
                    "additionalProperties",
                    "patternProperties",
                    "minProperties",
                    "dependentRequired",
                ][..],
            ),
            (
                "array",
                &["items", "prefixItems", "contains", "minItems", "maxItems"][..],
            ),
            (
                "string",
                &["minLength", "maxLength", "pattern", "format"][..],
            ),
            (
                "number",
                &[
                    "minimum",
                    "maximum",
                    "exclusiveMinimum",
                    "exclusiveMaximum",
                    "multipleOf",
                ][..],
            ),
        ] {
            if has(keys) {
                allowed.push(t);
            }
        }
        if allowed.is_empty() {
            allowed.push("string");
        }
    }
    // `number` covers `integer`; draw it as a number.
    if allowed.contains(&"number") {
        allowed.retain(|t| *t != "integer");
    }
    match allowed.len() {
        0 => "none",
        n => allowed[rng.random_range(0..n)],
    }
}

/// Bounds from `minimum`, `maximum`, `exclusive*`: (low, low is exclusive, high, high is
/// exclusive), tightest of all atoms.
fn bounds(atoms: &[&Value]) -> (Option<f64>, bool, Option<f64>, bool) {
    let (mut lo, mut lo_ex, mut hi, mut hi_ex) = (None::<f64>, false, None::<f64>, false);
    for atom in atoms {
        for (key, exclusive) in [("minimum", false), ("exclusiveMinimum", true)] {
            if let Some(x) = atom.get(key).and_then(Value::as_f64) {
                if lo.is_none_or(|l| x > l || (x == l && exclusive)) {
                    (lo, lo_ex) = (Some(x), exclusive);
                }
            }
        }
        for (key, exclusive) in [("maximum", false), ("exclusiveMaximum", true)] {
            if let Some(x) = atom.get(key).and_then(Value::as_f64) {
                if hi.is_none_or(|h| x < h || (x == h && exclusive)) {
                    (hi, hi_ex) = (Some(x), exclusive);
                }
            }
        }
    }
    (lo, lo_ex, hi, hi_ex)
}

fn multiple_of(atoms: &[&Value]) -> Option<f64> {
    atoms
        .iter()
        .find_map(|a| a.get("multipleOf").and_then(Value::as_f64))
        .filter(|m| *m > 0.0)
}

fn draw_integer<R: Rng>(atoms: &[&Value], rng: &mut R) -> Value {
    let (lo, lo_ex, hi, hi_ex) = bounds(atoms);
    let lo = lo.map(|l| {
        if lo_ex {
            l.floor() as i64 + 1
        } else {
            l.ceil() as i64
        }
    });
    let hi = hi.map(|h| {
        if hi_ex {
            h.ceil() as i64 - 1
        } else {
            h.floor() as i64
        }
    });
    let (lo, hi) = match (lo, hi) {
        (Some(l), Some(h)) => (l, h),
        (Some(l), None) => (l, l.saturating_add(10)),
        (None, Some(h)) => (h.saturating_sub(10), h),
        (None, None) => (0, 10),
    };
    if lo > hi {
        return Value::from(lo);
    }
    if let Some(m) = multiple_of(atoms).filter(|m| m.fract() == 0.0) {
        let m = m as i64;
        let (k_lo, k_hi) = (
            lo.div_euclid(m) + i64::from(lo.rem_euclid(m) != 0),
            hi.div_euclid(m),
        );
        if k_lo <= k_hi {
            return Value::from(rng.random_range(k_lo..=k_hi) * m);
        }
    }
    // Counts and weeks are small in practice: a wide range is drawn mostly from its start.
    let hi = if hi - lo > WIDE && rng.random_bool(0.8) {
        lo + WIDE
    } else {
        hi
    };
    Value::from(rng.random_range(lo..=hi))
}

fn draw_number<R: Rng>(atoms: &[&Value], rng: &mut R) -> Value {
    let (lo_b, lo_ex, hi_b, hi_ex) = bounds(atoms);
    let (lo, hi) = match (lo_b, hi_b) {
        (Some(l), Some(h)) => (l, h),
        (Some(l), None) => (l, l + 10.0),
        (None, Some(h)) => (h - 10.0, h),
        (None, None) => (0.0, 10.0),
    };
    let inside =
        |x: f64| (if lo_ex { x > lo } else { x >= lo }) && (if hi_ex { x < hi } else { x <= hi });
    let mut x = if let Some(m) = multiple_of(atoms) {
        let k_lo = (lo / m).ceil() as i64;
        let k_hi = ((hi / m).floor() as i64).max(k_lo);
        rng.random_range(k_lo..=k_hi) as f64 * m
    } else {
        ((lo + rng.random::<f64>() * (hi - lo)) * 10.0).round() / 10.0
    };
    if !inside(x) {
        x = (lo + hi) / 2.0;
    }
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

fn draw_format<R: Rng>(format: &str, rng: &mut R) -> Option<String> {
    let date = format!(
        "{:04}-{:02}-{:02}",
        rng.random_range(2023..=2025),
        rng.random_range(1..=12),
        rng.random_range(1..=28)
    );
    let time = format!(
        "{:02}:{:02}:00Z",
        rng.random_range(8..=18),
        [0, 15, 30, 45][rng.random_range(0..4)]
    );
    Some(match format {
        "date" => date,
        "date-time" => format!("{date}T{time}"),
        "time" => time,
        "email" | "idn-email" => {
            let names = [
                "sam.jones",
                "a.patel",
                "chris.okafor",
                "duty.team",
                "r.mensah",
            ];
            format!("{}@example.org", names[rng.random_range(0..names.len())])
        }
        "uri" | "iri" | "uri-reference" | "iri-reference" => {
            format!(
                "https://example.org/cases/{}",
                rng.random_range(1000..=9999)
            )
        }
        "uuid" => format!(
            "{:08x}-{:04x}-4{:03x}-{:x}{:03x}-{:012x}",
            rng.random::<u32>(),
            rng.random::<u16>(),
            rng.random_range(0..0x1000u32),
            rng.random_range(8..12u32),
            rng.random_range(0..0x1000u32),
            rng.random::<u64>() & 0xffff_ffff_ffff
        ),
        "hostname" | "idn-hostname" => "example.org".to_owned(),
        "ipv4" => format!("192.0.2.{}", rng.random_range(1..=254)),
        "ipv6" => format!("2001:db8::{:x}", rng.random_range(1..=0xffffu32)),
        "duration" => format!("P{}D", rng.random_range(1..=90)),
        _ => return None,
    })
}

const PEOPLE: &[&str] = &[
    "Mum",
    "Dad",
    "Gran (Mum's mother)",
    "Grandad Joe",
    "Aunt Sarah",
    "Uncle Dev",
    "Mrs Okafor, next-door neighbour",
    "Priya, family friend",
    "Tom, Dad's partner",
    "Class teacher, Oakfield Primary",
    "Health visitor",
    "Allocated social worker",
    "Youth worker, Northside Youth Club",
    "Pastor Mensah",
];

const ORGANISATIONS: &[&str] = &[
    "Riverside Children's Services",
    "Oakfield Primary School",
    "Northgate Family Hub",
    "Westbrook Academy",
    "Harbour Lane Health Centre",
    "Eastfield Early Help Team",
    "St Anne's Nursery",
];

const EVENTS: &[&str] = &[
    "Gran goes into hospital",
    "Mum starts a new relationship",
    "Dad loses his job",
    "The family moves house",
    "The children change school",
    "Aunt Sarah moves away",
    "The social worker closes the case",
    "Mum's mental health gets worse",
    "Dad starts drinking again",
    "The school holidays begin",
    "Mum goes back to night shifts",
];

const ACTIONS: &[&str] = &[
    "Aunt Sarah checks in every evening and the children know to call her.",
    "Gran collects the children from school on weekdays.",
    "Dad comes to every contact session sober.",
    "Mum calls Gran when she feels overwhelmed.",
    "The children sleep at Gran's on the nights Mum works.",
    "Uncle Dev visits on Saturdays and takes the children out.",
    "Mum and Dad use the agreed plan when they argue.",
    "The neighbour keeps a spare key and is the first to call.",
    "Tom is never alone with the baby.",
    "The network meets every two weeks to go over the plan.",
];

const NOTES: &[&str] = &[
    "Talked through in supervision; the family are taking part well.",
    "Mum says home feels calmer since the network started meeting.",
    "The school reports better attendance this term.",
    "Dad was open about his worries and named people who can help.",
    "The child drew a picture of the people who keep them safe.",
    "Follow up with the health visitor about the baby's weight.",
    "Gran is willing to help but worried about her own health.",
    "The child said: 'I like it when Aunt Sarah picks me up.'",
    "Interpreter booked for the next meeting.",
    "No new worries reported since the last review.",
];

/// Short strings tried when no text fits a field's limits or pattern.
const FALLBACK: &[&str] = &[
    "A", "a", "1", "Yes", "No", "N/A", "ok", "AB-12", "X1", "2024-001", "abc", "ABC",
];

/// Plausible text for the field at `path` (property names joined by `/`).
fn text_for(path: &str) -> &'static [&'static str] {
    let path = path.to_ascii_lowercase();
    let leaf = path.rsplit('/').next().unwrap_or("");
    let any = |s: &str, words: &[&str]| words.iter().any(|w| s.contains(w));
    if any(leaf, &["organisation", "organization", "school", "agency"]) {
        ORGANISATIONS
    } else if any(
        leaf,
        &[
            "name",
            "who",
            "led_by",
            "backup",
            "recipient",
            "person",
            "member",
        ],
    ) {
        PEOPLE
    } else if any(leaf, &["disruption", "event"]) {
        EVENTS
    } else if any(
        leaf,
        &[
            "goal",
            "response",
            "description",
            "action",
            "offers",
            "criteri",
        ],
    ) {
        ACTIONS
    } else if any(leaf, &["what", "title"]) {
        if any(&path, &["incident", "disruption", "scenario", "event"]) {
            EVENTS
        } else {
            ACTIONS
        }
    } else {
        NOTES
    }
}

fn collect_patterns(schema: &Value, out: &mut HashMap<String, Option<jsonschema::Validator>>) {
    let mut add = |p: &str| {
        out.entry(p.to_owned()).or_insert_with(|| {
            jsonschema::draft202012::new(&serde_json::json!({"type": "string", "pattern": p})).ok()
        });
    };
    match schema {
        Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("pattern", Value::String(p)) => add(p),
                    ("patternProperties", Value::Object(pats)) => {
                        pats.keys().for_each(|p| add(p));
                    }
                    _ => {}
                }
            }
            for v in o.values() {
                collect_patterns(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_patterns(v, out)),
        _ => {}
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The elements of an array keyword (none when it is not an array).
fn each(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn as_usize(v: &Value) -> Option<usize> {
    v.as_u64()
        .or_else(|| {
            v.as_f64()
                .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                .map(|f| f as u64)
        })
        .and_then(|n| usize::try_from(n).ok())
}

fn type_matches(types: &Value, v: &Value) -> bool {
    let one = |t: &str| match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => true,
    };
    match types {
        Value::String(t) => one(t),
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).any(one),
        _ => true,
    }
}

fn check_number(k: &str, s: &Value, x: f64) -> bool {
    let Some(limit) = s.as_f64() else {
        return true;
    };
    match k {
        "minimum" => x >= limit,
        "maximum" => x <= limit,
        "exclusiveMinimum" => x > limit,
        "exclusiveMaximum" => x < limit,
        "multipleOf" => {
            let q = x / limit;
            limit <= 0.0 || (q - q.round()).abs() < 1e-9
        }
        _ => true,
    }
}

/// JSON equality as JSON Schema means it: `1` equals `1.0`, key order does not matter.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use serde_json::json;
    use std::path::Path;

    const DRAWS: usize = 200;

    /// Every tool schema in the repository, by tool id.
    fn tool_schemas() -> Vec<(String, Value)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tool-schemas");
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        assert!(!paths.is_empty(), "no tool schemas in {}", dir.display());
        paths
            .into_iter()
            .map(|p| {
                let id = p.file_stem().unwrap().to_string_lossy().into_owned();
                let text = std::fs::read_to_string(&p).unwrap();
                (id, serde_json::from_str(&text).unwrap())
            })
            .collect()
    }

    fn draws(schema: &Value, seed: u64, n: usize) -> Vec<Value> {
        let gen = FormGenerator::new(schema);
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| gen.generate(&mut rng)).collect()
    }

    /// The values of a labelled-choice schema (`oneOf` of consts, maybe behind a `$ref`).
    fn options(root: &Value, schema: &Value) -> Option<Vec<Value>> {
        let schema = match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => root.pointer(r.strip_prefix('#').unwrap()).unwrap(),
            None => schema,
        };
        if schema.get("type") == Some(&json!("boolean")) {
            return Some(vec![json!(false), json!(true)]);
        }
        let branches = schema.get("oneOf")?.as_array()?;
        branches.iter().map(|b| b.get("const").cloned()).collect()
    }

    #[test]
    fn every_tool_schema_yields_valid_forms() {
        for (id, schema) in tool_schemas() {
            let validator = jsonschema::draft202012::new(&schema).unwrap();
            let gen = FormGenerator::new(&schema);
            let mut rng = StdRng::seed_from_u64(2024);
            let mut invalid = Vec::new();
            for _ in 0..DRAWS {
                let form = gen.generate(&mut rng);
                if !validator.is_valid(&form) {
                    invalid.push(form);
                }
            }
            let valid = DRAWS - invalid.len();
            eprintln!("{id}: {valid}/{DRAWS} raw forms valid");
            assert!(
                valid * 100 >= DRAWS * 95,
                "{id}: only {valid}/{DRAWS} raw forms valid; first invalid: {:#}\n{:?}",
                invalid[0],
                validator
                    .iter_errors(&invalid[0])
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
            );
            for i in 0..DRAWS {
                let form = valid_form(&gen, &mut rng, |f| validator.is_valid(f), 20);
                assert!(
                    form.is_some(),
                    "{id}: draw {i} found no valid form in 20 attempts"
                );
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_forms() {
        for (id, schema) in tool_schemas() {
            let a = draws(&schema, 7, 50);
            let b = draws(&schema, 7, 50);
            // Compare the text too: the same fields in the same order.
            assert_eq!(
                serde_json::to_string(&a).unwrap(),
                serde_json::to_string(&b).unwrap(),
                "{id}"
            );
        }
    }

    #[test]
    fn different_seeds_give_different_forms() {
        for (id, schema) in tool_schemas() {
            assert_ne!(draws(&schema, 1, 10), draws(&schema, 2, 10), "{id}");
        }
    }

    #[test]
    fn every_severity_option_appears() {
        let schema = tool_schemas()
            .into_iter()
            .find(|(id, _)| id == "harm-analysis")
            .unwrap()
            .1;
        let declared = options(&schema, &schema["properties"]["severity"]).unwrap();
        assert_eq!(declared.len(), 5);
        let seen: Vec<Value> = draws(&schema, 11, DRAWS)
            .into_iter()
            .map(|f| f["severity"].clone())
            .collect();
        // Each of five options is expected 40 times in 200; the form's lean must not starve any.
        for option in &declared {
            let n = seen.iter().filter(|s| *s == option).count();
            assert!(n >= 15, "severity {option} drawn {n} times in {DRAWS}");
        }
        assert!(seen.iter().all(|s| declared.contains(s)));
    }

    #[test]
    fn every_top_level_choice_of_every_tool_is_drawn() {
        for (id, schema) in tool_schemas() {
            let forms = draws(&schema, 5, DRAWS);
            for (name, field) in schema["properties"].as_object().unwrap() {
                let Some(declared) = options(&schema, field) else {
                    continue;
                };
                for option in &declared {
                    assert!(
                        forms.iter().any(|f| f.get(name) == Some(option)),
                        "{id}.{name}: {option} never drawn"
                    );
                }
            }
        }
    }

    #[test]
    fn choices_in_one_form_lean_together() {
        let schema = tool_schemas()
            .into_iter()
            .find(|(id, _)| id == "harm-analysis")
            .unwrap()
            .1;
        let index = |field: &str, value: &Value| {
            let declared = options(&schema, &schema["properties"][field]).unwrap();
            let i = declared.iter().position(|o| o == value).unwrap();
            i as f64 / (declared.len() - 1) as f64
        };
        let pairs: Vec<(f64, f64)> = draws(&schema, 21, DRAWS)
            .iter()
            .map(|f| {
                (
                    index("severity", &f["severity"]),
                    index("impact_safety", &f["impact_safety"]),
                )
            })
            .collect();
        let n = pairs.len() as f64;
        let (mx, my) = (
            pairs.iter().map(|p| p.0).sum::<f64>() / n,
            pairs.iter().map(|p| p.1).sum::<f64>() / n,
        );
        let cov: f64 = pairs.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
        let vx: f64 = pairs.iter().map(|(x, _)| (x - mx).powi(2)).sum();
        let vy: f64 = pairs.iter().map(|(_, y)| (y - my).powi(2)).sum();
        let r = cov / (vx * vy).sqrt();
        assert!(
            r > 0.2,
            "severity and impact on safety barely correlate: r = {r:.2}"
        );
    }

    #[test]
    fn optional_fields_are_filled_about_half_the_time() {
        let schema = tool_schemas()
            .into_iter()
            .find(|(id, _)| id == "harm-analysis")
            .unwrap()
            .1;
        let forms = draws(&schema, 3, DRAWS);
        let filled = forms
            .iter()
            .filter(|f| f.get("child_view").is_some())
            .count();
        assert!(
            (70..=130).contains(&filled),
            "child_view filled {filled}/{DRAWS}"
        );
        // Required fields always are.
        assert!(forms.iter().all(|f| f.get("severity").is_some()));
    }

    #[test]
    fn conditional_requirements_are_met() {
        // harm-analysis: any harm other than "none" needs its types, frequency and recency.
        let schema = tool_schemas()
            .into_iter()
            .find(|(id, _)| id == "harm-analysis")
            .unwrap()
            .1;
        let forms = draws(&schema, 9, DRAWS);
        let harmed: Vec<_> = forms.iter().filter(|f| f["severity"] != "none").collect();
        assert!(!harmed.is_empty());
        for f in harmed {
            assert!(
                f["harm_types"].as_array().is_some_and(|a| !a.is_empty()),
                "{f}"
            );
            assert!(
                f.get("frequency").is_some() && f.get("recency").is_some(),
                "{f}"
            );
        }
    }

    #[test]
    fn text_fits_the_field() {
        let schema = tool_schemas()
            .into_iter()
            .find(|(id, _)| id == "sustainability-plan")
            .unwrap()
            .1;
        for form in draws(&schema, 4, 50) {
            for d in form["disruptions"].as_array().unwrap() {
                assert!(EVENTS.contains(&d["disruption"].as_str().unwrap()), "{d}");
                if let Some(who) = d.get("led_by") {
                    assert!(PEOPLE.contains(&who.as_str().unwrap()), "{d}");
                }
            }
        }
    }

    /// The keywords the tools do not use yet, in one schema, checked by the real validator with
    /// formats asserted.
    #[test]
    fn keywords_beyond_the_tools_are_met() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "additionalProperties": false,
            "required": ["when", "at", "id", "score", "ratio", "code", "tags", "people", "kind", "contact", "mode"],
            "properties": {
                "when": {"type": "string", "format": "date"},
                "at": {"type": "string", "format": "date-time"},
                "id": {"type": "string", "format": "uuid"},
                "score": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 11, "multipleOf": 2},
                "ratio": {"type": "number", "minimum": 0, "maximum": 1},
                "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]+$"},
                "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "uniqueItems": true, "minItems": 2},
                "people": {
                    "type": "array", "minItems": 1, "maxItems": 4,
                    "items": {"$ref": "#/$defs/person"},
                    "contains": {"required": ["role"], "properties": {"role": {"const": "lead"}}},
                    "maxContains": 1
                },
                "kind": {"anyOf": [{"type": "string", "minLength": 3, "maxLength": 12}, {"type": "integer", "minimum": 100}]},
                "contact": {"allOf": [{"$ref": "#/$defs/contact"}, {"required": ["phone"]}]},
                "mode": {"oneOf": [{"const": "post", "title": "By post"}, {"const": "email", "title": "By e-mail"}]},
                "email": {"type": "string", "format": "email"},
                "consent": {"type": "boolean", "default": false},
                "address": {"type": "string", "minLength": 1, "maxLength": 5},
                "postcode": {"type": "string", "maxLength": 8},
                "note": {"type": ["string", "null"], "not": {"const": "N/A"}}
            },
            "dependentRequired": {"address": ["postcode"]},
            "if": {"properties": {"mode": {"const": "email"}}},
            "then": {"required": ["email"]},
            "else": {"required": ["address"]},
            "$defs": {
                "person": {
                    "type": "object", "additionalProperties": false, "required": ["name", "role"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "role": {"enum": ["lead", "helper", "observer"]}
                    }
                },
                "contact": {
                    "type": "object",
                    "properties": {"phone": {"type": "string", "minLength": 5}, "best_time": {"type": "string", "format": "time"}}
                }
            }
        });
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap();
        let forms = draws(&schema, 13, DRAWS);
        let invalid: Vec<_> = forms.iter().filter(|f| !validator.is_valid(f)).collect();
        eprintln!("{} of {DRAWS} invalid", invalid.len());
        assert!(
            invalid.len() * 100 <= DRAWS * 5,
            "{} invalid, first: {:#}",
            invalid.len(),
            invalid[0]
        );
        assert!(forms.iter().any(|f| f["mode"] == "email"));
        assert!(forms.iter().any(|f| f["mode"] == "post"));
        assert!(forms.iter().any(|f| f["consent"] == false));
        assert!(forms.iter().any(|f| f["consent"] == true));
        assert!(forms.iter().any(|f| f["kind"].is_string()));
        assert!(forms.iter().any(|f| f["kind"].is_number()));
    }

    #[test]
    fn a_recursive_schema_ends() {
        let schema = json!({
            "$ref": "#/$defs/node",
            "$defs": {"node": {
                "type": "object", "required": ["children"],
                "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}
            }}
        });
        let validator = jsonschema::draft202012::new(&schema).unwrap();
        for form in draws(&schema, 1, 50) {
            assert!(validator.is_valid(&form));
        }
    }
}

/// What `safeguard demo-data` made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filled {
    pub decisions: u64,
    pub overrides: u64,
    pub approvals: u64,
    /// Forms the generator could not make valid within its attempts (skipped).
    pub skipped: u64,
}

impl Filled {
    /// Counts what one generated decision made: `(decisions, overrides, approvals)`.
    fn tally(&mut self, (decisions, overrides, approvals): (u64, u64, u64)) {
        self.decisions += decisions;
        self.overrides += overrides;
        self.approvals += approvals;
    }
}

/// Fills the store behind `decisions` with `count` decisions drawn with a seeded generator from
/// the tools named in `only` (every tool the catalog serves when it is empty): four decisions a case, about one in twenty overridden by a
/// practitioner with a reason, and half of those approved by a supervisor, so the dashboard,
/// replay and disparity have something real to show. The same seed and catalog give the same
/// forms. Submits run concurrently, so they share flushes like real traffic.
pub async fn fill(
    decisions: std::sync::Arc<crate::decisions::Decisions>,
    count: u64,
    seed: u64,
    only: &[String],
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> Result<Filled, crate::decisions::DecisionError> {
    use crate::auth::Role;
    use crate::store::Actor;
    use rand::{Rng, SeedableRng};

    let catalog = decisions.catalog();
    if let Some(unknown) = only.iter().find(|id| catalog.get(id).is_none()) {
        return Err(crate::decisions::DecisionError::UnknownTool(
            unknown.clone(),
        ));
    }
    let tools: Vec<_> = catalog
        .tools()
        .filter(|t| only.is_empty() || only.iter().any(|id| id == t.id()))
        .cloned()
        .collect();
    let generators: Vec<FormGenerator> = tools
        .iter()
        .map(|t| FormGenerator::new(&t.schema))
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let practitioner = Actor {
        subject: "demo-practitioner".into(),
        role: Role::Practitioner,
    };
    let supervisor = Actor {
        subject: "demo-supervisor".into(),
        role: Role::Supervisor,
    };
    let progress = std::sync::Arc::new(progress);
    let mut tasks = tokio::task::JoinSet::new();
    let mut filled = Filled::default();
    let mut done = 0u64;
    for i in 0..count {
        let which = rng.random_range(0..tools.len());
        let tool = &tools[which];
        let Some(form) = valid_form(&generators[which], &mut rng, |v| tool.is_valid(v), 20) else {
            filled.skipped += 1;
            continue;
        };
        let case = format!("demo-{:07}", i / 4);
        let override_to = if rng.random_bool(0.05) {
            Some(rng.random_bool(0.5))
        } else {
            None
        };
        let approve = rng.random_bool(0.5);
        let (decisions, tool_id) = (decisions.clone(), tool.id().to_owned());
        let (practitioner, supervisor) = (practitioner.clone(), supervisor.clone());
        tasks.spawn(async move {
            let appended = decisions
                .submit(&case, &tool_id, form, practitioner.clone(), None)
                .await?;
            let mut made = (1u64, 0u64, 0u64);
            let Some(up) = override_to else {
                return Ok(made);
            };
            let levels = decisions
                .catalog()
                .get(&tool_id)
                .map(|t| t.levels().to_vec())
                .unwrap_or_default();
            let at = levels
                .iter()
                .position(|l| *l == appended.revision.outcome.level)
                .unwrap_or(0);
            let to = if (up && at + 1 < levels.len()) || at == 0 {
                at + 1
            } else {
                at - 1
            };
            let Some(level) = levels.get(to) else {
                return Ok(made);
            };
            let id = appended.revision.decision_id.clone();
            match decisions
                .override_level(
                    &id,
                    level,
                    "Demo data: the practitioner's judgement differs",
                    1,
                    practitioner,
                )
                .await
            {
                Ok(_) => made.1 = 1,
                Err(crate::decisions::DecisionError::InvalidOverride { .. }) => return Ok(made),
                Err(e) => return Err(e),
            }
            if approve {
                decisions.approve(&id, 2, supervisor).await?;
                made.2 = 1;
            }
            Ok::<_, crate::decisions::DecisionError>(made)
        });
        // At most 512 in flight: enough to fill every batch, bounded in memory.
        while tasks.len() >= 512 {
            if let Some(result) = tasks.join_next().await {
                filled.tally(result.expect("demo tasks do not panic")?);
                done += 1;
                if done % 1000 == 0 {
                    progress(done);
                }
            }
        }
    }
    while let Some(result) = tasks.join_next().await {
        filled.tally(result.expect("demo tasks do not panic")?);
        done += 1;
    }
    progress(done);
    Ok(filled)
}
