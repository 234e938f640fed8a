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
use std::ffi::OsStr;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::common::{valid_input, TOOL};
use crate::repo_root;

/// Concurrent submitters, each with one request in flight at a time.
const CLIENTS: usize = 16;

/// The tools the submitters decide with, in turn.
const TOOLS: [&str; 3] = [TOOL, "threshold", "safety-scaling"];

/// The cases of a cycle, each a mix of every tool.
const CASES_PER_CYCLE: usize = 4;

/// When the kill comes, in milliseconds after the submitters start.
const KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 50..=800;

/// How long a server may take to start, and a request to be answered. Generous, because a debug
/// build on a busy CI machine is slow; a healthy run never comes near either.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A store folder with the tokens the test uses, and the logs of every server run on it.
struct Site {
    /// Holds `data/` (the store) and `logs/`; removed when the test ends.
    root: tempfile::TempDir,
    practitioner: String,
    auditor: String,
}

impl Site {
    /// A fresh store holding a practitioner and an auditor token, created with the CLI while no
    /// server runs, as an operator would (the store is locked while one does).
    fn new() -> Site {
        let root = tempfile::tempdir().expect("a temporary folder");
        fs::create_dir(root.path().join("logs")).expect("create the log folder");
        let mut site = Site {
            root,
            practitioner: String::new(),
            auditor: String::new(),
        };
        site.practitioner = site.token_create("practitioner");
        site.auditor = site.token_create("auditor");
        site
    }

    fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// The `safeguard` binary with `args`, configured only by this site: no `SAFEGUARD_*`
    /// variable of the test's own environment (this test's knobs among them, which the server
    /// would refuse as unknown settings) and no `safeguard.toml` from the working folder.
    fn safeguard<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(env!("CARGO_BIN_EXE_safeguard"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SAFEGUARD_") {
                command.env_remove(name);
            }
        }
        command
            .args(args)
            .current_dir(self.root.path())
            .env("SAFEGUARD_DATA_DIR", self.data_dir())
            .env("SAFEGUARD_TOOLS_DIR", repo_root())
            .stdin(Stdio::null());
        command
    }

    fn token_create(&self, role: &str) -> String {
        let output = run(self.safeguard(["token", "create", "--role", role, "--subject", "crash"]));
        String::from_utf8(output.stdout)
            .expect("the token is UTF-8")
            .trim()
            .to_owned()
    }
}

/// Runs `command` to completion and asserts that it succeeded.
fn run(mut command: Command) -> Output {
    let output = command.output().expect("the safeguard binary runs");
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A running `safeguard serve`. Dropping it kills the process, so a failed assertion never
/// leaves a server behind.
struct Server {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    address: String,
}

impl Server {
    /// Starts a server on `site` on a port the system picks, and waits until it is healthy. The
    /// address comes from the server's own `serving` log line (JSON), so no port is guessed and
    /// none can be taken by someone else in between.
    async fn start(site: &Site, run_number: usize, client: &reqwest::Client) -> Server {
        let log_path = site
            .root
            .path()
            .join(format!("logs/serve-{run_number}.log"));
        let log = File::create(&log_path).expect("create the server log");
        let child = site
            .safeguard(["serve"])
            .env("SAFEGUARD_LISTEN", "127.0.0.1:0")
            .env("SAFEGUARD_LOG_FORMAT", "json")
            .env("RUST_LOG", "warn,safeguard::cli=info")
            .stdout(log.try_clone().expect("share the log file"))
            .stderr(log)
            .spawn()
            .expect("the safeguard binary starts");
        let mut server = Server {
            child,
            address: String::new(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(address) = serving_address(&log_path) {
                server.address = format!("http://{address}");
                break;
            }
            server.assert_alive(&log_path);
            assert!(
                Instant::now() < deadline,
                "the server did not start within {START_TIMEOUT:?}:\n{}",
                read_log(&log_path)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        loop {
            let health = client
                .get(format!("{}/healthz", server.address))
                .send()
                .await;
            if health.is_ok_and(|r| r.status() == StatusCode::OK) {
                return server;
            }
            server.assert_alive(&log_path);
            assert!(
                Instant::now() < deadline,
                "the server was not healthy within {START_TIMEOUT:?}:\n{}",
                read_log(&log_path)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn assert_alive(&mut self, log_path: &Path) {
        if let Some(status) = self.child.try_wait().expect("the server's status") {
            panic!(
                "the server exited ({status}) while starting:\n{}",
                read_log(log_path)
            );
        }
    }

    /// SIGKILL (what `Child::kill` sends on Unix): no shutdown code runs, nothing is flushed.
    fn kill(mut self) {
        self.child.kill().expect("the server is killed");
        self.child.wait().expect("the killed server is reaped");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_log(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}

/// The address in the `serving` line of a JSON server log, once it is there.
fn serving_address(log_path: &Path) -> Option<String> {
    read_log(log_path)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["fields"]["message"] == "serving")
        .and_then(|line| line["fields"]["address"].as_str().map(str::to_owned))
}

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
    let verified = site
        .safeguard(["verify"])
        .output()
        .expect("safeguard verify runs");
    let report = String::from_utf8_lossy(&verified.stdout).into_owned();
    let cli_whole = verified.status.success()
        && report.contains(&format!("the chain is whole: {head} revision(s)"));
    if !cli_whole {
        problems.push(format!(
            "safeguard verify on the stopped store (seed {seed}): {}{report}{}",
            verified.status,
            String::from_utf8_lossy(&verified.stderr)
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
