//! How fast the audit walks the store: `verify` over the whole journal, and `replay` of every
//! stored `harm-analysis` decision against the version that made it (reproducibility) and against
//! candidate params (a changed cut-point, as the example agency's plugin makes). Each is timed
//! next to a baseline in the same run, so its figure can be read as a ratio to "just reading the
//! store": the raw journal scan for `verify`, reading and decoding the latest revisions for
//! `replay`.
//!
//! The store is filled once per run, in a temp folder, by the library's own demo generator through
//! the real decision service and `SledStore`, as `safeguard demo-data` fills one; the core tools
//! are used as shipped, without plugins. `SAFEGUARD_BENCH_DECISIONS` sets how many decisions
//! (default 5,000, which fills in a few seconds); about one in fourteen is a `harm-analysis`
//! decision, and about one in twenty is overridden, which adds revisions.
//!
//! Run with `cargo bench --bench audit`, for example
//! `SAFEGUARD_BENCH_DECISIONS=50000 cargo bench --bench audit`. Throughput is in revisions for
//! `verify` and in decisions for `replay`. Measurement is kept short so the whole run takes about
//! a minute at the default size; the numbers are for spotting a regression of an order of
//! magnitude, not for splitting hairs. `verify` and `replay` use every core, while the baselines
//! read on one thread.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use safeguard::audit::replay::{self, ReplayRequest, Target};
use safeguard::audit::verify;
use safeguard::decisions::Decisions;
use safeguard::rules::Limits;
use safeguard::store::{decode_revision, SledStore, Store, StoreOptions};
use safeguard::Catalog;
use serde_json::json;

const TOOL: &str = "harm-analysis";
const DEFAULT_DECISIONS: u64 = 5_000;
const SEED: u64 = 1;

/// A filled store and the catalog that filled it. Fields drop in order: the service (and with it
/// the store, whose writer finishes) before the folder it lives in.
struct Filled {
    decisions: Arc<Decisions>,
    catalog: Arc<Catalog>,
    _dir: tempfile::TempDir,
}

impl Filled {
    fn store(&self) -> &dyn Store {
        self.decisions.store().as_ref()
    }
}

fn fill() -> Filled {
    let count = match std::env::var("SAFEGUARD_BENCH_DECISIONS") {
        Ok(n) => n
            .parse()
            .unwrap_or_else(|e| panic!("SAFEGUARD_BENCH_DECISIONS={n:?}: {e}")),
        Err(_) => DEFAULT_DECISIONS,
    };
    // Partial, as in the evaluate bench: a tool elsewhere in the catalog that does not load
    // should not stop this benchmark. Nothing here is ever served.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (served, errors) = Catalog::load_partial(root, Limits::default());
    let catalog = served.core_only();
    if catalog.get(TOOL).is_none() {
        panic!("{TOOL} did not load: {errors:#?}");
    }
    let dir = tempfile::tempdir().expect("a temp folder");
    let store: Arc<dyn Store> =
        Arc::new(SledStore::open(dir.path(), StoreOptions::default()).expect("the store opens"));
    let decisions = Arc::new(Decisions::new(catalog, store).expect("versions are recorded"));
    let runtime = tokio::runtime::Runtime::new().expect("an async runtime");
    let started = Instant::now();
    let filled = runtime
        .block_on(safeguard::demo::fill(
            Arc::clone(&decisions),
            count,
            SEED,
            &[],
            |_| {},
        ))
        .expect("the demo data is stored");
    println!(
        "filled: {} decision(s), {} override(s), {} approval(s), {} form(s) skipped, in {:.1}s",
        filled.decisions,
        filled.overrides,
        filled.approvals,
        filled.skipped,
        started.elapsed().as_secs_f64()
    );
    let catalog = decisions.catalog();
    Filled {
        decisions,
        catalog,
        _dir: dir,
    }
}

fn verify_benches(c: &mut Criterion, filled: &Filled) {
    let store = filled.store();
    let report = verify::verify(store, &|_| {}).expect("the store reads");
    assert!(report.ok, "the filled journal must verify: {report:?}");
    let bytes: usize = store
        .journal_raw(1)
        .map(|entry| entry.expect("the store reads").1.len())
        .sum();
    println!(
        "journal: {} revision(s), {:.1} MiB",
        report.revisions,
        bytes as f64 / (1024.0 * 1024.0)
    );

    let mut group = c.benchmark_group("verify");
    group.throughput(Throughput::Elements(report.revisions));
    group.sampling_mode(SamplingMode::Flat);
    // Just reading the store: every entry copied out of sled (which reads each byte), on one
    // thread, with no hashing and no chain to check.
    group.bench_function("journal_scan", |b| {
        b.iter(|| {
            store
                .journal_raw(1)
                .map(|entry| black_box(entry.expect("the store reads")).1.len())
                .sum::<usize>()
        })
    });
    group.bench_function("verify", |b| b.iter(|| verify::verify(store, &|_| {})));
    group.finish();
}

fn replay_benches(c: &mut Criterion, filled: &Filled) {
    let store = filled.store();
    let catalog = filled.catalog.as_ref();
    let request = |against: Target| ReplayRequest {
        tool: TOOL.to_owned(),
        level: None,
        case: None,
        from: None,
        to: None,
        against,
        offset: 0,
        limit: 100,
    };
    let recorded = request(Target::Recorded {});
    // The example agency's recalibration: medium raised from 6 to 7, nothing else changed.
    let candidate = request(Target::Candidate {
        base: None,
        rules: None,
        params: Some(json!({"cut_points": {"medium": 7}})),
        schema_patch: None,
    });
    let run = |request: &ReplayRequest| {
        replay::replay(
            store,
            catalog,
            request,
            Limits::default(),
            &|_| {},
            &safeguard::audit::Cancel::never(),
        )
        .unwrap_or_else(|e| panic!("the replay runs: {e:?}"))
    };

    let reproduced = run(&recorded);
    assert_eq!(
        reproduced.irreproducible,
        Some(0),
        "every stored outcome must be reproduced: {reproduced:?}"
    );
    let moved = run(&candidate);
    println!(
        "replay: {} {TOOL} decision(s); recorded {} ms, all reproduced; candidate {} ms, {} changed, {} rejected",
        reproduced.considered,
        reproduced.elapsed_ms,
        moved.elapsed_ms,
        moved.changed,
        moved.rejected_count
    );

    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(reproduced.considered));
    group.sampling_mode(SamplingMode::Flat);
    // Just reading the store: the latest revision of every decision of the tool, read and
    // decoded on one thread, evaluated against nothing.
    group.bench_function("decode_only", |b| {
        b.iter(|| {
            store
                .latest_raw(Some(TOOL))
                .map(|bytes| {
                    let bytes = bytes.expect("the store reads");
                    black_box(decode_revision(&bytes).expect("the revision decodes"))
                })
                .count()
        })
    });
    group.bench_function("recorded", |b| b.iter(|| run(black_box(&recorded))));
    group.bench_function("candidate", |b| b.iter(|| run(black_box(&candidate))));
    group.finish();
}

/// One target, so the store is filled once and both groups read the same journal.
fn audit(c: &mut Criterion) {
    let filled = fill();
    verify_benches(c, &filled);
    replay_benches(c, &filled);
}

// Flat sampling (in each group): one walk of the store takes tens of milliseconds or more, so
// criterion's default of ever longer samples would not fit ten of them in the measurement time.
criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10);
    targets = audit
}
criterion_main!(benches);
