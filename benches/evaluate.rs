//! How long one decision takes, and where the time goes: the core `harm-analysis` tool on a
//! realistic, fully filled-in form, timed end to end and then step by step (schema validation, JSON-to-Rhai
//! conversion, the script alone).
//!
//! Run with `cargo bench --bench evaluate`. Measurement is kept short so the whole run takes
//! well under a minute; the numbers are for spotting a regression of an order of magnitude, not
//! for splitting hairs.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use safeguard::rules::{Limits, Sandbox};
use safeguard::Catalog;
use serde_json::{json, Value};

const TOOL: &str = "harm-analysis";

/// A case a practitioner might really record: two kinds of repeated, fairly recent harm with
/// effects on the child, risk reduced but not gone, two emerging risks, partial understanding
/// and a child who feels safe only some of the time. Every optional field is filled in, so the
/// form is as large as the schema allows in ordinary use.
fn form() -> Value {
    json!({
        "harm_types": ["physical", "emotional"],
        "severity": "serious",
        "frequency": "repeated",
        "recency": "1-6-months",
        "impact_development": "some",
        "impact_emotional_security": "significant",
        "impact_safety": "some",
        "current_risks": "reduced",
        "emerging_risks": ["substance-use", "loss-of-support"],
        "caregiver_understanding": "partial",
        "child_sense_of_safety": "mixed",
        "child_view": "I like it when Nan picks me up from school. I don't like it when Dad shouts and I hide in my room with my headphones on.",
        "information_from": ["child", "caregivers", "professionals", "network"],
        "what_needs_to_change": "Dad will stop drinking on the days he looks after the children, and Nan will be there every evening until the family and the network agree the children are safe."
    })
}

fn evaluate(c: &mut Criterion) {
    // The core tool as shipped, without plugins: the form is built from its schema alone.
    // Partial: a tool elsewhere in the catalog that does not load (one being written, say)
    // should not stop the benchmark of this one. Nothing here is ever served.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (served, errors) = Catalog::load_partial(root, Limits::default());
    let catalog = served.core_only();
    let Some(tool) = catalog.get(TOOL) else {
        panic!("{TOOL} did not load: {errors:#?}");
    };
    let form = form();
    // Time the path a real request takes, not the error path: the form must be valid and decide.
    let outcome = tool
        .evaluate(&form)
        .unwrap_or_else(|e| panic!("the benchmark form must decide: {e:?}"));
    println!(
        "{TOOL}: level {:?}, score {:?}, {} reasons",
        outcome.level,
        outcome.score,
        outcome.reasons.len()
    );

    let (schema, script, params, sandbox) = tool.bench_parts();
    let converted = Sandbox::convert_form(&form);

    let mut group = c.benchmark_group(TOOL);
    group.bench_function("evaluate", |b| b.iter(|| tool.evaluate(black_box(&form))));
    group.bench_function("validate", |b| b.iter(|| schema.is_valid(black_box(&form))));
    group.bench_function("convert_form", |b| {
        b.iter(|| Sandbox::convert_form(black_box(&form)))
    });
    // The converted form is moved into each call, so each iteration gets its own copy, made
    // outside the timing.
    group.bench_function("script", |b| {
        b.iter_batched(
            || converted.clone(),
            |converted| sandbox.call(script, converted, params.clone()),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// Every core tool on the first of its cases that decides: `evaluate` end to end.
fn every_tool(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let catalog = Catalog::load_partial(root, Limits::default()).0.core_only();
    let mut group = c.benchmark_group("tools");
    for tool in catalog.tools() {
        let dir = root.join("tests/cases").join(tool.id());
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        let input = files
            .iter()
            .map(|p| serde_json::from_str::<Value>(&std::fs::read_to_string(p).unwrap()).unwrap())
            .find(|case| case["expect"].get("level").is_some())
            .map(|case| case["input"].clone())
            .unwrap_or_else(|| panic!("{} has no case that decides", tool.id()));
        tool.evaluate(&input)
            .unwrap_or_else(|e| panic!("{}: the case must decide: {e:?}", tool.id()));
        group.bench_function(tool.id(), |b| b.iter(|| tool.evaluate(black_box(&input))));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = evaluate, every_tool
}
criterion_main!(benches);
