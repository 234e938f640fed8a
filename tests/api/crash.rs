//! Crash safety, measured on the real binary: `safeguard serve` runs as a child process over one
//! store, takes concurrent submits, is killed with SIGKILL at a random moment and is started
//! again, cycle after cycle. Every decision it acknowledged (201) must read back unchanged, what
//! it stored without acknowledging can only come from requests cut off by the kill, and the hash
//! chain must verify, over HTTP after every restart and with `safeguard verify` at the end.
//!
//! `SAFEGUARD_CRASH_CYCLES` sets the number of cycles (default 3; `benches/crash.sh` runs 20 in
//! release). The kill moments come from a seeded generator: the seed is printed, and
//! `SAFEGUARD_CRASH_SEED` replays the same moments (the machine's timing still varies).
//!
//! SIGKILL ends the process, not the machine: what the kernel already holds still reaches the
//! disk. So this proves that an acknowledgement is never ahead of what sled wrote and that sled
//! recovers a whole, chained journal from a process that died mid-batch; it says nothing about
//! losing power.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::common::binary::{Server, Site, REQUEST_TIMEOUT};
use crate::common::{valid_input, TOOL};

/// Concurrent submitters, each with one request in flight at a time.
const CLIENTS: usize = 16;

/// The tools the submitters decide with, in turn.
const TOOLS: [&str; 3] = [TOOL, "threshold", "safety-scaling"];

/// The cases of a cycle, each a mix of every tool.
const CASES_PER_CYCLE: usize = 4;

/// When the kill comes, in milliseconds after the submitters start.
const KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 50..=800;

/// What the submitters of one cycle saw.
#[derive(Default)]
struct Load {
    /// Every decision answered 201, as answered.
    acknowledged: Vec<Value>,
    /// When the first 201 arrived, if one did.
    first_acknowledged: Option<Instant>,
    /// Requests that got no complete answer once the kill was under way: cut off in flight (or
    /// refused by the dead port). Each may or may not have been stored.
    cut_off: usize,
    /// Anything else, which is a failure: an error before the kill, or a status other than 201.
    unexpected: Vec<String>,
}

impl Load {
    fn merge(&mut self, other: Load) {
        self.acknowledged.extend(other.acknowledged);
        self.first_acknowledged = match (self.first_acknowledged, other.first_acknowledged) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.cut_off += other.cut_off;
        self.unexpected.extend(other.unexpected);
    }
}

/// Submits valid forms from [`CLIENTS`] concurrent clients until `stop` is set. `stop` is set
/// before the kill, so an error seen while it is still clear did not come from the kill.
async fn submit_until_stopped(
    client: &reqwest::Client,
    address: &str,
    token: &str,
    cycle: usize,
    stop: Arc<AtomicBool>,
) -> JoinSet<Load> {
    let bodies: Arc<Vec<Value>> = Arc::new(
        TOOLS
            .iter()
            .map(|tool| json!({"tool": tool, "input": valid_input(tool)}))
            .collect(),
    );
    let mut tasks = JoinSet::new();
    for task in 0..CLIENTS {
        let (client, address, token, bodies, stop) = (
            client.clone(),
            address.to_owned(),
            token.to_owned(),
            bodies.clone(),
            stop.clone(),
        );
        tasks.spawn(async move {
            let mut load = Load::default();
            let mut n = task;
            while !stop.load(Ordering::SeqCst) {
                let case = format!("crash-{cycle}-{}", n % CASES_PER_CYCLE);
                let body = &bodies[n % bodies.len()];
                n += CLIENTS;
                let answer = async {
                    let response = client
                        .post(format!("{address}/v1/cases/{case}/decisions"))
                        .bearer_auth(&token)
                        .json(body)
                        .send()
                        .await?;
                    let status = response.status();
                    Ok::<_, reqwest::Error>((status, response.text().await?))
                }
                .await;
                match answer {
                    Ok((StatusCode::CREATED, text)) => match serde_json::from_str(&text) {
                        Ok(decision) => {
                            load.first_acknowledged.get_or_insert_with(Instant::now);
                            load.acknowledged.push(decision);
                        }
                        Err(e) => load.unexpected.push(format!("a 201 body is not JSON: {e}")),
                    },
                    Ok((status, text)) => load.unexpected.push(format!("{status}: {text}")),
                    Err(_) if stop.load(Ordering::SeqCst) => load.cut_off += 1,
                    Err(e) => load.unexpected.push(format!("before the kill: {e}")),
                }
            }
            load
        });
    }
    tasks
}

/// Reads back every decision in `acknowledged` as the auditor, concurrently; returns the id and
/// what was found instead of every one that did not come back exactly as it was acknowledged.
async fn missing(
    client: &reqwest::Client,
    address: &str,
    token: &str,
    acknowledged: &[Value],
) -> Vec<(String, String)> {
    let mut tasks = JoinSet::new();
    for chunk in acknowledged.chunks(acknowledged.len().div_ceil(CLIENTS).max(1)) {
        let (client, address, token, chunk) = (
            client.clone(),
            address.to_owned(),
            token.to_owned(),
            chunk.to_vec(),
        );
        tasks.spawn(async move {
            let mut missing = Vec::new();
            for decision in chunk {
                let id = decision["id"].as_str().expect("a decision id");
                let response = client
                    .get(format!("{address}/v1/decisions/{id}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .expect("the server answers");
                let status = response.status();
                let text = response.text().await.expect("a body");
                let found: Option<Value> = serde_json::from_str(&text).ok();
                if status != StatusCode::OK || found.as_ref() != Some(&decision) {
                    missing.push((
                        id.to_owned(),
                        format!(
                            "{id} (seq {}, level {}, hash {}): {status} {text}",
                            decision["seq"], decision["level"], decision["hash"]
                        ),
                    ));
                }
            }
            missing
        });
    }
    tasks.join_all().await.into_iter().flatten().collect()
}

/// `GET /v1/audit/verify` as the auditor: whether the chain is whole, and the journal's length.
async fn verify_over_http(client: &reqwest::Client, address: &str, token: &str) -> (bool, u64) {
    let response = client
        .get(format!("{address}/v1/audit/verify"))
        .bearer_auth(token)
        .send()
        .await
        .expect("the server answers");
    assert_eq!(response.status(), StatusCode::OK);
    let report: Value = response.json().await.expect("a verify report");
    let whole = report["ok"] == true && report["revisions"] == report["head"]["seq"];
    if !whole {
        println!("crash: verify reports a broken chain: {report}");
    }
    (whole, report["head"]["seq"].as_u64().expect("a head seq"))
}

fn cycles() -> usize {
    std::env::var("SAFEGUARD_CRASH_CYCLES").map_or(3, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("SAFEGUARD_CRASH_CYCLES={v:?} is not a number"))
    })
}

fn seed() -> u64 {
    std::env::var("SAFEGUARD_CRASH_SEED").map_or_else(
        |_| rand::random(),
        |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("SAFEGUARD_CRASH_SEED={v:?} is not a number"))
        },
    )
}

#[tokio::test]
async fn sigkill_under_concurrent_submits_loses_no_acknowledged_decision_and_keeps_the_chain() {
    let (cycles, seed) = (cycles(), seed());
    println!("crash: {cycles} cycle(s), seed {seed} (SAFEGUARD_CRASH_SEED={seed} replays the kill moments)");
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("an HTTP client");
    let site = Site::new();
    let mut server = Server::start(&site, 0, &client).await;
    let mut problems: Vec<String> = Vec::new();
    let mut acknowledged: Vec<Value> = Vec::new();
    let mut lost_ids: HashSet<String> = HashSet::new();
    let (mut cut_off, mut stored_unacknowledged, mut chain_whole) = (0, 0, true);
    let mut head = 0u64;

    for cycle in 1..=cycles {
        let kill_after = Duration::from_millis(rng.random_range(KILL_AFTER_MS));
        let stop = Arc::new(AtomicBool::new(false));
        let load_began = Instant::now();
        let tasks = submit_until_stopped(
            &client,
            &server.address,
            &site.practitioner,
            cycle,
            stop.clone(),
        )
        .await;
        tokio::time::sleep(kill_after).await;
        stop.store(true, Ordering::SeqCst);
        server.kill();
        let load = tasks
            .join_all()
            .await
            .into_iter()
            .fold(Load::default(), |mut all, load| {
                all.merge(load);
                all
            });
        server = Server::start(&site, cycle, &client).await;

        let lost = missing(&client, &server.address, &site.auditor, &load.acknowledged).await;
        let (whole, new_head) = verify_over_http(&client, &server.address, &site.auditor).await;
        // Every revision stored this cycle is an acknowledged decision or a request the kill cut
        // off; nothing else writes.
        let stored = new_head.saturating_sub(head);
        let unacknowledged = stored.saturating_sub(load.acknowledged.len() as u64);
        println!(
            "crash: cycle {cycle}/{cycles}: killed after {} ms ({}); {} acknowledged, {} lost; {} cut off, {unacknowledged} of them stored; journal {new_head}, chain {}",
            kill_after.as_millis(),
            load.first_acknowledged.map_or("no 201".to_owned(), |t| format!(
                "first 201 after {} ms",
                t.duration_since(load_began).as_millis()
            )),
            load.acknowledged.len(),
            lost.len(),
            load.cut_off,
            if whole { "whole" } else { "BROKEN" },
        );
        let context = format!("cycle {cycle} (seed {seed}, killed after {kill_after:?})");
        problems.extend(lost.iter().map(|(_, l)| format!("{context}: lost {l}")));
        lost_ids.extend(lost.into_iter().map(|(id, _)| id));
        problems.extend(load.unexpected.iter().map(|u| format!("{context}: {u}")));
        if !whole {
            problems.push(format!(
                "{context}: GET /v1/audit/verify finds the chain broken"
            ));
        }
        if stored < load.acknowledged.len() as u64 || unacknowledged > load.cut_off as u64 {
            problems.push(format!(
                "{context}: the journal grew by {stored} revision(s), but {} were acknowledged and {} cut off",
                load.acknowledged.len(),
                load.cut_off
            ));
        }
        chain_whole &= whole;
        cut_off += load.cut_off;
        stored_unacknowledged += unacknowledged;
        head = new_head;
        acknowledged.extend(load.acknowledged);
    }

    // A later crash must not take back what an earlier cycle acknowledged.
    let lost = missing(&client, &server.address, &site.auditor, &acknowledged).await;
    problems.extend(
        lost.iter()
            .map(|(_, l)| format!("after every cycle (seed {seed}): lost {l}")),
    );
    lost_ids.extend(lost.into_iter().map(|(id, _)| id));
    server.kill();
    let (passed, report) = site.verify();
    let cli_whole = passed && report.contains(&format!("the chain is whole: {head} revision(s)"));
    if !cli_whole {
        problems.push(format!(
            "safeguard verify on the stopped store (seed {seed}): {report}"
        ));
    }
    chain_whole &= cli_whole;

    println!(
        "crash summary: cycles={cycles} acknowledged={} found={} lost={} cut_off={cut_off} stored_unacknowledged={stored_unacknowledged} revisions={head} verify={} seed={seed} secs={:.1}",
        acknowledged.len(),
        acknowledged.len() - lost_ids.len(),
        lost_ids.len(),
        if chain_whole { "ok" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
