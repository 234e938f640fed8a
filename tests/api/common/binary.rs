//! The real `safeguard` binary as an operator runs it: a store folder of its own ([`Site`], with
//! tokens made by `safeguard token create`) and `safeguard serve` as a child process on it
//! ([`Server`]), logging JSON lines to a file the test reads. Used where only the process will
//! do: killing it (`crash`), signalling it and reading its log (`lifecycle`).

use std::ffi::OsStr;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::Value;

use crate::repo_root;

/// How long a server may take to start, and a request to be answered. Generous, because a debug
/// build on a busy CI machine is slow; a healthy run never comes near either.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a signalled server may take to finish and exit.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// What a server logs unless a test asks for more: warnings, and the CLI's `serving` line that
/// [`Server::start`] reads the address from.
pub const QUIET: &str = "warn,safeguard::cli=info";

/// A store folder with the tokens the test uses, and the logs of every server run on it.
pub struct Site {
    /// Holds `data/` (the store) and `logs/`; removed when the test ends.
    root: tempfile::TempDir,
    pub practitioner: String,
    pub auditor: String,
}

impl Site {
    /// A fresh store holding a practitioner and an auditor token, created with the CLI while no
    /// server runs, as an operator would (the store is locked while one does).
    pub fn new() -> Site {
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

    /// The store's folder.
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// The `safeguard` binary with `args`, configured only by this site: no `SAFEGUARD_*`
    /// variable of the test's own environment (a test's knobs among them, which the server
    /// would refuse as unknown settings) and no `safeguard.toml` from the working folder.
    pub fn safeguard<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(env!("CARGO_BIN_EXE_safeguard"), args)
    }

    /// `program` with `args`, configured as [`Site::safeguard`] configures the binary: for a
    /// program that runs it, such as `prlimit`.
    pub fn command<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(program);
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

    /// `safeguard verify` on this site's stopped store: whether it passed, and what it printed
    /// (standard output, then standard error).
    pub fn verify(&self) -> (bool, String) {
        let output = self
            .safeguard(["verify"])
            .output()
            .expect("safeguard verify runs");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), printed)
    }

    /// A new token of `role`, made with the CLI; only while no server runs on this site.
    pub fn token_create(&self, role: &str) -> String {
        let output = run(self.safeguard(["token", "create", "--role", role, "--subject", "site"]));
        String::from_utf8(output.stdout)
            .expect("the token is UTF-8")
            .trim()
            .to_owned()
    }
}

/// Runs `command` to completion and asserts that it succeeded.
pub fn run(mut command: Command) -> Output {
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
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    log_path: PathBuf,
}

impl Server {
    /// Starts a server on `site` on a port the system picks, logging only warnings, and waits
    /// until it is healthy. `run_number` names its log file (`logs/serve-<n>.log`).
    pub async fn start(site: &Site, run_number: usize, client: &reqwest::Client) -> Server {
        Self::start_with(site, run_number, client, QUIET, &[]).await
    }

    /// [`Server::start`] with the log filter `filter` (`RUST_LOG` syntax; it must keep the
    /// CLI's `info` lines) and the settings `env` (`SAFEGUARD_*` variables). The address comes
    /// from the server's own `serving` log line (JSON), so no port is guessed and none can be
    /// taken by someone else in between.
    pub async fn start_with(
        site: &Site,
        run_number: usize,
        client: &reqwest::Client,
        filter: &str,
        env: &[(&str, &str)],
    ) -> Server {
        Self::launch(
            site.safeguard(["serve"]),
            site,
            run_number,
            client,
            filter,
            env,
        )
        .await
    }

    /// [`Server::start_with`] for a `command` that runs `safeguard serve` (from
    /// [`Site::safeguard`], or [`Site::command`] for a program that runs it).
    pub async fn launch(
        command: Command,
        site: &Site,
        run_number: usize,
        client: &reqwest::Client,
        filter: &str,
        env: &[(&str, &str)],
    ) -> Server {
        let mut server = Self::spawn(command, site, run_number, filter, env);
        server.until_healthy(client).await;
        server
    }

    /// [`Server::launch`] without waiting: the process has been started, and may still be
    /// starting. [`Server::until_healthy`] waits for it.
    pub fn spawn(
        mut command: Command,
        site: &Site,
        run_number: usize,
        filter: &str,
        env: &[(&str, &str)],
    ) -> Server {
        let log_path = site
            .root
            .path()
            .join(format!("logs/serve-{run_number}.log"));
        let log = File::create(&log_path).expect("create the server log");
        let child = command
            .env("SAFEGUARD_LISTEN", "127.0.0.1:0")
            .env("SAFEGUARD_LOG_FORMAT", "json")
            .env("RUST_LOG", filter)
            .envs(env.iter().copied())
            .stdout(log.try_clone().expect("share the log file"))
            .stderr(log)
            .spawn()
            .expect("the safeguard binary starts");
        Server {
            child,
            address: String::new(),
            log_path,
        }
    }

    /// Waits until the server says where it serves and answers its health check there.
    pub async fn until_healthy(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.address.is_empty() {
                if let Some(address) = serving_address(&self.log()) {
                    self.address = format!("http://{address}");
                    continue;
                }
            } else if client
                .get(format!("{}/healthz", self.address))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
            {
                return;
            }
            self.assert_alive();
            assert!(
                Instant::now() < deadline,
                "the server was not {} within {START_TIMEOUT:?}:\n{}",
                if self.address.is_empty() {
                    "serving"
                } else {
                    "healthy"
                },
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("the server's status") {
            panic!(
                "the server exited ({status}) while starting:\n{}",
                self.log()
            );
        }
    }

    /// `127.0.0.1:<port>`, for a raw TCP connection.
    pub fn socket_address(&self) -> &str {
        self.address.trim_start_matches("http://")
    }

    /// SIGKILL (what `Child::kill` sends on Unix): no shutdown code runs, nothing is flushed.
    pub fn kill(mut self) {
        self.child.kill().expect("the server is killed");
        self.child.wait().expect("the killed server is reaped");
    }

    /// Sends `signal` to the server, as an operator's `kill -TERM` or Ctrl-C in its terminal.
    pub fn signal(&self, signal: Signal) {
        let pid = i32::try_from(self.child.id()).expect("a process id fits in an i32");
        signal::kill(Pid::from_raw(pid), signal).expect("the server can be signalled");
    }

    /// Whether the process has a handler for `signal` now (Linux's `SigCgt` in
    /// `/proc/<pid>/status`): a signal it does not catch has its default action.
    pub fn catches(&self, signal: Signal) -> bool {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server's /proc status");
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .expect("a SigCgt line");
        let mask = u64::from_str_radix(caught.trim(), 16).expect("a hex mask");
        mask & (1 << (signal as i32 - 1)) != 0
    }

    /// Waits for the server to exit by itself (after [`Server::signal`]) and returns how it
    /// exited; fails the test if it is still running after [`EXIT_TIMEOUT`].
    pub async fn exited(&mut self) -> ExitStatus {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("the server's status") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit within {EXIT_TIMEOUT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything the server has logged so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// The JSON lines of the server's log, in order.
    pub fn log_lines(&self) -> Vec<Value> {
        json_lines(&self.log())
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

fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .collect()
}

/// The address in the `serving` line of a JSON server log, once it is there.
fn serving_address(log: &str) -> Option<String> {
    json_lines(log)
        .into_iter()
        .find(|line| line["fields"]["message"] == "serving")
        .and_then(|line| line["fields"]["address"].as_str().map(str::to_owned))
}
