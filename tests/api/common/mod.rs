//! The running service every HTTP test drives: [`spawn_app`] starts the real server on
//! `127.0.0.1:0` with a fresh sled folder and one token per role, and [`TestApp`] speaks to it
//! through typed helpers, so a test reads as what a client does rather than how HTTP is spelt.

pub mod binary;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, IF_MATCH};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use safeguard::auth::Role;
use safeguard::config::Config;
use safeguard::server::{RunError, Server};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The tool most tests decide with: it scores, has four levels and an override policy of
/// `{direction: any, max_steps: 1}`.
pub const TOOL: &str = "harm-analysis";

/// The subject of the second supervisor's token, for four-eyes approvals.
pub const SECOND_SUPERVISOR: &str = "sam-supervisor";

/// A service running on its own port and its own store.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub address: String,
    pub client: reqwest::Client,
    /// One token per role; each subject is `<name>-<role>`, e.g. `pat-practitioner`.
    pub tokens: HashMap<Role, String>,
    /// A second supervisor's token (subject [`SECOND_SUPERVISOR`]): an override made by the
    /// first supervisor needs someone else to approve it.
    pub second_supervisor: String,
    /// Held so the folder outlives every server started on it, across restarts.
    data_dir: tempfile::TempDir,
    /// The catalog root the service serves, and serves again after a restart.
    tools_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), RunError>>>,
}

/// The subject the token of `role` carries.
pub fn subject(role: Role) -> &'static str {
    match role {
        Role::Practitioner => "pat-practitioner",
        Role::Supervisor => "sue-supervisor",
        Role::Auditor => "ari-auditor",
        Role::Admin => "ada-admin",
    }
}

/// The configuration of a test service: a free loopback port, the store in `data_dir` and the
/// catalog under `tools_dir`.
pub fn config(data_dir: &Path, tools_dir: &Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("a socket address"),
        data_dir: data_dir.to_owned(),
        tools_dir: tools_dir.to_owned(),
        ..Config::default()
    }
}

async fn build(data_dir: &Path, tools_dir: &Path) -> Server {
    Server::build(&config(data_dir, tools_dir))
        .await
        .unwrap_or_else(|e| panic!("the service starts: {e}"))
}

type Running = (
    String,
    oneshot::Sender<()>,
    JoinHandle<Result<(), RunError>>,
);

/// Runs `server` on a task until its shutdown sender fires.
fn launch(server: Server) -> Running {
    let address = format!("http://{}", server.local_addr());
    let (shutdown, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(server.run_until_stopped(async {
        // A dropped sender stops the server too.
        let _ = stopped.await;
    }));
    (address, shutdown, handle)
}

/// Starts the service on a free port with an empty store and a token for every role.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(Path::new(env!("CARGO_MANIFEST_DIR"))).await
}

/// As [`spawn_app`], serving the catalog under `tools_dir` (e.g. a [`catalog_copy`] a test
/// changes, then reloads).
pub async fn spawn_app_with(tools_dir: &Path) -> TestApp {
    let data_dir = tempfile::tempdir().expect("a temporary data folder");
    let server = build(data_dir.path(), tools_dir).await;
    let tokens = Role::ALL
        .into_iter()
        .map(|role| {
            let token = server
                .add_token(role, subject(role))
                .expect("the token is stored");
            (role, token)
        })
        .collect();
    let second_supervisor = server
        .add_token(Role::Supervisor, SECOND_SUPERVISOR)
        .expect("the token is stored");
    let (address, shutdown, handle) = launch(server);
    TestApp {
        address,
        client: reqwest::Client::new(),
        tokens,
        second_supervisor,
        data_dir,
        tools_dir: tools_dir.to_owned(),
        shutdown: Some(shutdown),
        handle: Some(handle),
    }
}

impl TestApp {
    /// Stops the server gracefully (in-flight requests finish, the store closes) and starts a
    /// new one on the same data folder. Tokens live in the store, so every token still works.
    pub async fn restart(mut self) -> TestApp {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle
                .await
                .expect("the server task does not panic")
                .expect("the server stops cleanly");
        }
        let (address, shutdown, handle) =
            launch(build(self.data_dir.path(), &self.tools_dir).await);
        TestApp {
            address,
            shutdown: Some(shutdown),
            handle: Some(handle),
            ..self
        }
    }

    /// Stops the server gracefully and leaves it stopped, so a test can reach under the
    /// service into its data folder; [`TestApp::restart`] starts it again.
    pub async fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle
                .await
                .expect("the server task does not panic")
                .expect("the server stops cleanly");
        }
    }

    /// The store's folder.
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The configuration the service runs with.
    pub fn config(&self) -> Config {
        config(self.data_dir.path(), &self.tools_dir)
    }

    /// Asks the service to reload its catalog from disk, as the admin.
    pub async fn reload(&self) -> Response {
        self.post_json("/v1/admin/reload", Role::Admin, &json!({}))
            .await
    }

    /// Dry-runs `input` through `tool` as the practitioner.
    pub async fn evaluate(&self, tool: &str, input: &Value) -> Response {
        let body = json!({"input": input});
        self.post_json(
            &format!("/v1/tools/{tool}/evaluate"),
            Role::Practitioner,
            &body,
        )
        .await
    }

    /// The summary of `tool` in `GET /v1/tools`.
    pub async fn listed(&self, tool: &str) -> Value {
        let response = self.get("/v1/tools", Role::Auditor).await;
        array_of(response)
            .await
            .into_iter()
            .find(|t| t["id"] == tool)
            .unwrap_or_else(|| panic!("GET /v1/tools does not list {tool}"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub fn token(&self, role: Role) -> &str {
        &self.tokens[&role]
    }

    /// A request to `path`, with `token` as its bearer token if there is one; the caller adds
    /// the rest and sends it.
    pub fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let request = self.client.request(method, self.url(path));
        match token {
            Some(token) => request.header(AUTHORIZATION, format!("Bearer {token}")),
            None => request,
        }
    }

    pub async fn get(&self, path: &str, role: Role) -> Response {
        self.request(Method::GET, path, Some(self.token(role)))
            .send()
            .await
            .expect("the request is sent")
    }

    pub async fn post_json(&self, path: &str, role: Role, body: &Value) -> Response {
        self.post_json_as(path, self.token(role), None, body).await
    }

    /// POSTs `body` with `token`, and `If-Match` set to the ETag of revision `if_match`.
    pub async fn post_json_as(
        &self,
        path: &str,
        token: &str,
        if_match: Option<u32>,
        body: &Value,
    ) -> Response {
        let mut request = self.request(Method::POST, path, Some(token)).json(body);
        if let Some(revision) = if_match {
            request = request.header(IF_MATCH, format!("\"{revision}\""));
        }
        request.send().await.expect("the request is sent")
    }

    /// POSTs `body` to `/v1/decisions/{id}/{action}` building on revision `if_match`.
    pub async fn change(
        &self,
        id: &str,
        action: &str,
        role: Role,
        if_match: u32,
        body: &Value,
    ) -> Response {
        let path = format!("/v1/decisions/{id}/{action}");
        self.post_json_as(&path, self.token(role), Some(if_match), body)
            .await
    }

    /// Amends decision `id` at revision `if_match` with the valid form of [`TOOL`] as `role`;
    /// returns the new revision.
    pub async fn amend(&self, id: &str, role: Role, if_match: u32) -> Value {
        self.amend_with(id, role, if_match, &valid_input(TOOL))
            .await
    }

    /// Amends decision `id` at revision `if_match` with `input` as `role`; returns the new
    /// revision.
    pub async fn amend_with(&self, id: &str, role: Role, if_match: u32, input: &Value) -> Value {
        let body = json!({ "input": input });
        json_of(
            self.change(id, "revisions", role, if_match, &body).await,
            StatusCode::CREATED,
        )
        .await
    }

    /// Submits `input` to `tool` for `case`.
    pub async fn submit(&self, case: &str, tool: &str, input: &Value, role: Role) -> Response {
        let body = json!({"tool": tool, "input": input});
        self.post_json(&format!("/v1/cases/{case}/decisions"), role, &body)
            .await
    }

    /// Submits a valid form of `tool` for `case` as the practitioner; returns the decision.
    pub async fn decide(&self, case: &str, tool: &str) -> Value {
        let response = self
            .submit(case, tool, &valid_input(tool), Role::Practitioner)
            .await;
        json_of(response, StatusCode::CREATED).await
    }

    /// Submits, for `case` as the practitioner, the form of `tool`'s first case that expects
    /// `level` (`input_at`); returns the decision.
    pub async fn decide_at(&self, case: &str, tool: &str, level: &str) -> Value {
        let response = self
            .submit(case, tool, &input_at(tool, level), Role::Practitioner)
            .await;
        json_of(response, StatusCode::CREATED).await
    }

    /// Overrides decision `id` (at revision `if_match`) to `level` as `role`; returns the new
    /// revision.
    pub async fn override_level(&self, id: &str, role: Role, if_match: u32, level: &str) -> Value {
        let body = json!({"level": level, "reason": "the child told us more at the visit"});
        let response = self.change(id, "override", role, if_match, &body).await;
        json_of(response, StatusCode::CREATED).await
    }

    /// Approves the pending override of decision `id` (at `revision`) as the supervisor.
    pub async fn approve(&self, id: &str, revision: u32) -> Value {
        let response = self
            .change(id, "approve", Role::Supervisor, revision, &json!({}))
            .await;
        json_of(response, StatusCode::CREATED).await
    }

    /// The latest revision of every decision of `case`.
    pub async fn case_decisions(&self, case: &str) -> Vec<Value> {
        let response = self
            .get(&format!("/v1/cases/{case}/decisions"), Role::Auditor)
            .await;
        array_of(response).await
    }

    /// Every revision of decision `id`, oldest first.
    pub async fn revisions(&self, id: &str) -> Vec<Value> {
        let response = self
            .get(&format!("/v1/decisions/{id}/revisions"), Role::Auditor)
            .await;
        array_of(response).await
    }

    /// The levels `tool` declares, least serious first.
    pub async fn levels(&self, tool: &str) -> Vec<String> {
        let response = self.get(&format!("/v1/tools/{tool}"), Role::Auditor).await;
        let detail = json_of(response, StatusCode::OK).await;
        detail["outcomes"]
            .as_array()
            .expect("a tool lists its outcomes")
            .iter()
            .map(|o| o["level"].as_str().expect("a level").to_owned())
            .collect()
    }

    /// Asserts that the journal holds no revision at all (`verify` counts none). Proves that a
    /// refused request wrote nothing anywhere, not only nothing under the case it named.
    pub async fn assert_journal_empty(&self) {
        let report = json_of(
            self.get("/v1/audit/verify", Role::Auditor).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(
            report["revisions"], 0,
            "the journal holds a revision: {report}"
        );
    }
}

/// A fresh catalog root holding a copy of the repository's core catalog (`tool-schemas/`,
/// `rules/`, and `tests/cases/` for `check`), and its `plugins/` too when `with_plugins`, so a
/// test can add, change or break plugins and reload without touching the repository.
pub fn catalog_copy(with_plugins: bool) -> tempfile::TempDir {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("a temporary catalog folder");
    let mut folders = vec!["tool-schemas", "rules", "tests/cases"];
    if with_plugins {
        folders.push("plugins");
    }
    for folder in folders {
        copy_dir(&root.join(folder), &dir.path().join(folder));
    }
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())) {
        let path = entry.expect("a directory entry").path();
        let target = to.join(path.file_name().expect("a file name"));
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            fs::copy(&path, &target).unwrap_or_else(|e| panic!("copy {}: {e}", path.display()));
        }
    }
}

/// Writes the plugin `name` under `root/plugins/`: its manifest and `files` (paths relative to
/// the plugin folder), replacing whatever was there.
pub fn write_plugin(root: &Path, name: &str, manifest: &str, files: &[(&str, &str)]) -> PathBuf {
    let folder = root.join("plugins").join(name);
    if folder.exists() {
        fs::remove_dir_all(&folder).expect("remove the old plugin");
    }
    fs::create_dir_all(&folder).expect("create the plugin folder");
    fs::write(folder.join("plugin.toml"), manifest).expect("write the manifest");
    for (path, text) in files {
        let path = folder.join(path);
        fs::create_dir_all(path.parent().expect("a parent folder")).expect("create a folder");
        fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
    folder
}

/// The core cases of `tool` (`tests/cases/<tool>/`) that expect a level: forms the core tool
/// accepts, with the level and score it gives them.
pub fn core_cases(tool: &str) -> Vec<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    json_files(&root.join("tests/cases").join(tool))
        .iter()
        .map(|path| {
            let text =
                fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            serde_json::from_str::<Value>(&text)
                .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
        })
        .filter(|case| case["expect"].get("level").is_some())
        .collect()
}

/// The core case of `tool` that scores exactly `score`.
pub fn core_case_scoring(tool: &str, score: u64) -> Value {
    core_cases(tool)
        .into_iter()
        .find(|case| case["expect"]["score"] == score)
        .unwrap_or_else(|| panic!("no core case of {tool} scores {score}"))
}

/// The `*.json` files in `dir`, in name order; none if it does not exist.
fn json_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

/// The tool cases that pin `tool` as the service serves it. The service loads the plugins under
/// the repository, so, as `safeguard check` does, a tool some plugin changes is pinned by the
/// plugins' cases (every plugin's, in name order) and any other tool by its core cases.
fn tool_cases(tool: &str) -> Vec<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut plugins: Vec<PathBuf> = fs::read_dir(root.join("plugins"))
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    plugins.sort();
    let mut files: Vec<PathBuf> = plugins
        .iter()
        .flat_map(|plugin| json_files(&plugin.join("cases").join(tool)))
        .collect();
    if files.is_empty() {
        files = json_files(&root.join("tests/cases").join(tool));
    }
    files
        .iter()
        .map(|path| {
            let text =
                fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
        })
        .collect()
}

/// The first case of `tool` that expects a level, i.e. one whose form the tool accepts.
pub fn valid_case(tool: &str) -> Value {
    tool_cases(tool)
        .into_iter()
        .find(|case| case["expect"].get("level").is_some())
        .unwrap_or_else(|| panic!("no case of {tool} expects a level"))
}

/// The input of [`valid_case`]: a form `tool` accepts.
pub fn valid_input(tool: &str) -> Value {
    valid_case(tool)["input"].clone()
}

/// The input of the first case of `tool` that expects `level`.
pub fn input_at(tool: &str, level: &str) -> Value {
    tool_cases(tool)
        .into_iter()
        .find(|case| case["expect"]["level"] == level)
        .map(|case| case["input"].clone())
        .unwrap_or_else(|| panic!("no case of {tool} expects {level}"))
}

/// The first case of `tool` that expects a level other than `level`: its input and expectation.
pub fn case_not_at(tool: &str, level: &str) -> (Value, Value) {
    tool_cases(tool)
        .into_iter()
        .find(|case| case["expect"]["level"].as_str().is_some_and(|l| l != level))
        .map(|case| (case["input"].clone(), case["expect"].clone()))
        .unwrap_or_else(|| panic!("no case of {tool} expects a level other than {level}"))
}

/// The JSON body of a response that must have `status`.
pub async fn json_of(response: Response, status: StatusCode) -> Value {
    let actual = response.status();
    let text = response.text().await.expect("a body");
    assert_eq!(actual, status, "unexpected status; body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("the body is not JSON ({e}): {text}"))
}

/// The JSON array body of a 200 response.
pub async fn array_of(response: Response) -> Vec<Value> {
    match json_of(response, StatusCode::OK).await {
        Value::Array(items) => items,
        other => panic!("expected a JSON array, got {other}"),
    }
}

/// Asserts that `response` is an RFC 9457 problem with `status` and problem type `type_`
/// (e.g. `/problems/conflict`); returns the problem document.
pub async fn problem(response: Response, status: StatusCode, type_: &str) -> Value {
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = json_of(response, status).await;
    assert_eq!(content_type, "application/problem+json", "{body}");
    assert_eq!(body["type"], type_, "{body}");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    // Its type is one the service documents at that address, with that title and status.
    let kind = type_
        .strip_prefix("/problems/")
        .and_then(safeguard::api::ProblemType::from_slug)
        .unwrap_or_else(|| panic!("{type_} is no documented problem type"));
    assert_eq!(body["title"], kind.doc().title, "{body}");
    assert_eq!(kind.doc().status, status, "{body}");
    body
}

/// The `path` of every error a problem lists.
pub fn error_paths(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("the problem lists no errors: {problem}"))
        .iter()
        .map(|e| {
            e["path"]
                .as_str()
                .expect("an error names a path")
                .to_owned()
        })
        .collect()
}
