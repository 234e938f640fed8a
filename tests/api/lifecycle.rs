//! The service's life as an operator sees it, on the real binary: how it stops (SIGTERM or
//! Ctrl-C: stop accepting, finish what is in flight, write it out, exit 0) and what it logs (one
//! line per request, with the request id the response also carries).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::binary::{Server, Site, QUIET, REQUEST_TIMEOUT, START_TIMEOUT};
use crate::common::{valid_input, TOOL};

/// Request lines and the shutdown line, besides the CLI's own.
const WITH_REQUESTS: &str = "warn,safeguard::cli=info,safeguard::api=info";

const SHUTTING_DOWN: &str = "shutting down: finishing requests in flight";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("an HTTP client")
}

/// A client that opens a new connection for every request: where the server's read timeout is
/// a second, it closes idle connections that often, and a pooled one could be reused at the
/// very moment the server closes it (any HTTP client can meet that race with any server that
/// closes idle connections; real clients retry).
fn unpooled_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(0)
        .build()
        .expect("an HTTP client")
}

/// A POST sent by hand over one TCP connection, so the test decides when its body goes.
/// `Expect: 100-continue` makes the server say when the handler has begun reading the body:
/// from then on the request is in flight.
struct SlowPost {
    stream: TcpStream,
    body: Vec<u8>,
}

impl SlowPost {
    /// Sends the head of a submit of a valid form to `case`, and waits for `100 Continue`.
    async fn submit(server: &Server, token: &str, case: &str, request_id: &str) -> SlowPost {
        let body = json!({"tool": TOOL, "input": valid_input(TOOL)});
        Self::begin(
            server,
            token,
            &format!("/v1/cases/{case}/decisions"),
            request_id,
            &body,
        )
        .await
    }

    /// Sends the head of a POST of `body` to `path`, and waits for `100 Continue`.
    async fn begin(
        server: &Server,
        token: &str,
        path: &str,
        request_id: &str,
        body: &Value,
    ) -> SlowPost {
        let body = serde_json::to_vec(body).expect("a JSON body");
        let mut stream = TcpStream::connect(server.socket_address())
            .await
            .expect("connect to the server");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nX-Request-Id: {request_id}\r\n\r\n",
            server.socket_address(),
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .await
            .expect("send the head");
        let interim = read_head(&mut stream).await;
        assert!(
            interim.starts_with("HTTP/1.1 100 Continue"),
            "POST {path}: expected 100 Continue, got {interim:?}"
        );
        SlowPost { stream, body }
    }

    /// Sends the body and reads the answer.
    async fn finish(mut self) -> Answer {
        self.stream
            .write_all(&self.body)
            .await
            .expect("send the body");
        self.answer().await
    }

    /// Reads the whole response until the server closes the connection, without sending the
    /// body (if it was not sent yet).
    async fn answer(mut self) -> Answer {
        let mut raw = Vec::new();
        tokio::time::timeout(REQUEST_TIMEOUT, self.stream.read_to_end(&mut raw))
            .await
            .expect("the response ends within the timeout")
            .expect("read the response");
        let text = String::from_utf8(raw).expect("a UTF-8 response");
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| {
            panic!("the connection closed before a whole response came: {text:?}")
        });
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a status line in {head:?}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
        Answer {
            status,
            headers,
            body,
        }
    }
}

/// A response read off a raw connection.
struct Answer {
    status: u16,
    /// Names lower-cased.
    headers: Vec<(String, String)>,
    body: Value,
}

impl Answer {
    fn has_header(&self, name: &str, value: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, v)| n == name && v.eq_ignore_ascii_case(value))
    }
}

/// Reads one response head (up to the blank line) from `stream`.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(REQUEST_TIMEOUT, stream.read(&mut byte))
            .await
            .expect("the server answers within the timeout")
            .expect("read from the server");
        assert!(n == 1, "the connection closed after {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8(head).expect("a UTF-8 head")
}

/// Waits until the server refuses new connections.
async fn until_refused(server: &Server) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match TcpStream::connect(server.socket_address()).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "the server still accepts connections {START_TIMEOUT:?} after the signal"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The position of the first log line whose message is `message` and whose fields include
/// every one of `fields`.
fn find(lines: &[Value], message: &str, fields: &[(&str, Value)]) -> Option<usize> {
    lines.iter().position(|l| {
        l["fields"]["message"] == message
            && fields
                .iter()
                .all(|(name, value)| l["fields"][name] == *value)
    })
}

/// The lines `server` logged at `level` whose message contains `text`.
fn logged(server: &Server, level: &str, text: &str) -> Vec<Value> {
    server
        .log_lines()
        .into_iter()
        .filter(|l| {
            l["level"] == level
                && l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(text))
        })
        .collect()
}

/// Signals a server holding a submit in flight, and checks each step of a graceful stop.
async fn stops_gracefully_on(signal: Signal) {
    let client = client();
    let site = Site::new();
    let mut server = Server::start_with(&site, 0, &client, WITH_REQUESTS, &[]).await;
    let request_id = format!("in-flight-{signal}");
    let submit = SlowPost::submit(&server, &site.practitioner, "lifecycle-1", &request_id).await;

    server.signal(signal);
    // Stop accepting: new connections are refused while the submit is still open.
    until_refused(&server).await;
    // Finish what is in flight: the submit completes, and the connection then closes.
    let answer = submit.finish().await;
    let decision = answer.body.clone();
    assert_eq!(answer.status, 201, "{decision}");
    assert!(
        answer.has_header("x-request-id", &request_id),
        "{:?}",
        answer.headers
    );
    assert!(
        answer.has_header("connection", "close"),
        "a server that is stopping closes the connection after the answer: {:?}",
        answer.headers
    );
    // Exit 0.
    let exit = server.exited().await;
    assert!(exit.success(), "{signal}: exited {exit}:\n{}", server.log());

    let lines = server.log_lines();
    let stopping = find(&lines, SHUTTING_DOWN, &[]).expect("the shutdown is logged");
    let answered = find(
        &lines,
        "request",
        &[("request_id", json!(request_id)), ("status", json!(201))],
    )
    .expect("the submit is logged");
    let stopped = find(&lines, "stopped", &[]).expect("the stop is logged");
    assert!(
        stopping < answered && answered < stopped,
        "the submit was answered after the shutdown began and before the process stopped:\n{}",
        server.log()
    );

    // Write it out: after a restart the acknowledged decision reads back exactly, chained.
    let server = Server::start(&site, 1, &client).await;
    let id = decision["id"].as_str().expect("a decision id");
    let read = client
        .get(format!("{}/v1/decisions/{id}", server.address))
        .bearer_auth(&site.auditor)
        .send()
        .await
        .expect("the restarted server answers");
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.json::<Value>().await.expect("a decision"), decision);
    assert_eq!(journal_length(&client, &server, &site).await, 1);
}

/// How many revisions the journal holds, once `GET /v1/audit/verify` has found it whole.
async fn journal_length(client: &reqwest::Client, server: &Server, site: &Site) -> u64 {
    let verified: Value = client
        .get(format!("{}/v1/audit/verify", server.address))
        .bearer_auth(&site.auditor)
        .send()
        .await
        .expect("the server answers")
        .json()
        .await
        .expect("a verify report");
    assert_eq!(verified["ok"], true, "{verified}");
    verified["revisions"]
        .as_u64()
        .unwrap_or_else(|| panic!("a revision count in {verified}"))
}

#[tokio::test]
async fn sigterm_stops_accepting_finishes_the_submit_in_flight_keeps_it_and_exits_0() {
    stops_gracefully_on(Signal::SIGTERM).await;
}

#[tokio::test]
async fn ctrl_c_stops_accepting_finishes_the_submit_in_flight_keeps_it_and_exits_0() {
    stops_gracefully_on(Signal::SIGINT).await;
}

#[tokio::test]
async fn every_request_has_one_log_line_with_the_request_id_its_response_carries() {
    let client = client();
    let site = Site::new();
    let mut server = Server::start_with(&site, 0, &client, WITH_REQUESTS, &[]).await;
    let send = |path: &str, token: Option<&str>, request_id: Option<&str>| {
        let mut request = client.get(format!("{}{path}", server.address));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(id) = request_id {
            request = request.header("x-request-id", id);
        }
        request.send()
    };
    let id_of = |response: &reqwest::Response| {
        response
            .headers()
            .get("x-request-id")
            .expect("every response carries a request id")
            .to_str()
            .expect("a visible-ASCII request id")
            .to_owned()
    };

    // The case system's own id is kept, on success and on refusal alike.
    let given = send(
        "/v1/tools",
        Some(&site.practitioner),
        Some("case-system-42"),
    )
    .await
    .expect("an answer");
    assert_eq!(given.status(), StatusCode::OK);
    assert_eq!(id_of(&given), "case-system-42");
    let refused = send("/v1/tools", None, Some("case-system-43"))
        .await
        .expect("an answer");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(id_of(&refused), "case-system-43");
    // One that could forge a field in a text log line is replaced by the service's own.
    let forged = send("/v1/tools", Some(&site.practitioner), Some("x status=500"))
        .await
        .expect("an answer");
    assert_eq!(forged.status(), StatusCode::OK);
    let replaced = id_of(&forged);
    uuid::Uuid::parse_str(&replaced).unwrap_or_else(|e| panic!("{replaced:?} is not a UUID: {e}"));
    // Without one, the service makes a fresh one for each request.
    let mut made = Vec::new();
    for _ in 0..2 {
        let response = send("/v1/tools", Some(&site.practitioner), None)
            .await
            .expect("an answer");
        assert_eq!(response.status(), StatusCode::OK);
        let id = id_of(&response);
        uuid::Uuid::parse_str(&id).unwrap_or_else(|e| panic!("{id:?} is not a UUID: {e}"));
        made.push(id);
    }
    assert_ne!(made[0], made[1], "each request gets its own id");

    server.signal(Signal::SIGTERM);
    assert!(server.exited().await.success(), "{}", server.log());
    let lines = server.log_lines();
    for (id, status) in [
        ("case-system-42", 200),
        ("case-system-43", 401),
        (replaced.as_str(), 200),
        (made[0].as_str(), 200),
        (made[1].as_str(), 200),
    ] {
        let of_this: Vec<&Value> = lines
            .iter()
            .filter(|l| l["fields"]["request_id"] == id)
            .collect();
        assert_eq!(
            of_this.len(),
            1,
            "one line for request {id}:\n{}",
            server.log()
        );
        let fields = &of_this[0]["fields"];
        assert_eq!(fields["message"], "request", "{fields}");
        assert_eq!(fields["method"], "GET", "{fields}");
        assert_eq!(fields["path"], "/v1/tools", "{fields}");
        assert_eq!(fields["status"], status, "{fields}");
        assert!(fields["micros"].is_u64(), "{fields}");
        // Who made it, as the token says; no one for a request whose token was refused.
        let actor = if status == 401 { "-" } else { "site" };
        assert_eq!(fields["actor"], actor, "{fields}");
    }
    // Probes are not logged at info: the server waited for /healthz as it started.
    assert!(
        lines.iter().all(|l| l["fields"]["path"] != "/healthz"),
        "{}",
        server.log()
    );
    // Tokens are never logged, nor the forged id.
    assert!(!server.log().contains(&site.practitioner));
    assert!(!server.log().contains("x status=500"));
}

/// Settings for the timeout tests: a one-second read timeout.
const QUICK_READS: [(&str, &str); 1] = [("SAFEGUARD_READ_TIMEOUT_SECS", "1")];

#[tokio::test]
async fn a_client_that_sends_half_a_head_or_nothing_is_let_go_after_the_read_timeout() {
    let client = unpooled_client();
    let site = Site::new();
    let server = Server::start_with(&site, 0, &client, WITH_REQUESTS, &QUICK_READS).await;
    // Half a head, and a connection that never sends a byte (an idle keep-alive looks the same).
    let mut half = TcpStream::connect(server.socket_address())
        .await
        .expect("connect");
    half.write_all(b"POST /v1/cases/lifecycle-1/decisions HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("send half a head");
    let mut silent = TcpStream::connect(server.socket_address())
        .await
        .expect("connect");
    for (what, stream) in [("half a head", &mut half), ("nothing", &mut silent)] {
        let began = Instant::now();
        let mut rest = Vec::new();
        // The server closes the connection (a reset is a close too); it has nothing to answer.
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, stream.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| {
                panic!("a client that sent {what} was still connected after {REQUEST_TIMEOUT:?}")
            });
        let text = String::from_utf8_lossy(&rest);
        assert!(
            rest.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{what}: {text:?}"
        );
        println!("{what}: let go after {:?}", began.elapsed());
    }
    // The service itself carries on.
    let health = client
        .get(format!("{}/healthz", server.address))
        .send()
        .await
        .expect("the server answers");
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_body_that_does_not_come_within_the_read_timeout_is_a_408_and_nothing_is_stored() {
    let client = unpooled_client();
    let site = Site::new();
    let server = Server::start_with(&site, 0, &client, WITH_REQUESTS, &QUICK_READS).await;
    let submit = SlowPost::submit(
        &server,
        &site.practitioner,
        "lifecycle-1",
        "body-never-sent",
    )
    .await;
    let answer = submit.answer().await;
    assert_eq!(answer.status, 408, "{}", answer.body);
    assert!(answer.has_header("content-type", "application/problem+json"));
    assert_eq!(answer.body["type"], "/problems/request-timeout");
    assert_eq!(answer.body["status"], 408);
    assert!(
        answer.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("read_timeout_secs")),
        "the problem names the setting: {}",
        answer.body
    );
    assert_eq!(journal_length(&client, &server, &site).await, 0);
}

#[tokio::test]
async fn every_route_that_reads_a_body_answers_408_when_the_body_does_not_come() {
    let client = unpooled_client();
    let site = Site::new();
    let supervisor = site.token_create("supervisor");
    let admin = site.token_create("admin");
    let server = Server::start_with(&site, 0, &client, WITH_REQUESTS, &QUICK_READS).await;
    // Any well-formed id: the body is read before the decision is looked up.
    let decision = "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b";
    let routes = [
        (format!("/v1/tools/{TOOL}/evaluate"), &site.practitioner),
        (
            "/v1/cases/lifecycle-1/decisions".to_owned(),
            &site.practitioner,
        ),
        (
            format!("/v1/decisions/{decision}/revisions"),
            &site.practitioner,
        ),
        (
            format!("/v1/decisions/{decision}/override"),
            &site.practitioner,
        ),
        (format!("/v1/decisions/{decision}/approve"), &supervisor),
        ("/v1/audit/replay".to_owned(), &site.auditor),
        ("/v1/audit/disparity".to_owned(), &site.auditor),
        ("/v1/admin/tokens".to_owned(), &admin),
    ];
    // Every head first, so the read timeouts run side by side.
    let mut posts = Vec::new();
    for (path, token) in &routes {
        posts.push((
            path,
            SlowPost::begin(&server, token, path, "slow", &json!({})).await,
        ));
    }
    for (path, post) in posts {
        let answer = post.answer().await;
        assert_eq!(answer.status, 408, "POST {path}: {}", answer.body);
        assert_eq!(
            answer.body["type"], "/problems/request-timeout",
            "POST {path}"
        );
    }
    assert_eq!(journal_length(&client, &server, &site).await, 0);
}

#[tokio::test]
async fn a_request_stuck_in_flight_holds_the_shutdown_only_for_the_grace_period() {
    let client = client();
    let site = Site::new();
    // The read timeout is long, so only the grace period can end the stuck submit.
    let settings = [
        ("SAFEGUARD_READ_TIMEOUT_SECS", "600"),
        ("SAFEGUARD_SHUTDOWN_GRACE_SECS", "1"),
    ];
    let mut server = Server::start_with(&site, 0, &client, WITH_REQUESTS, &settings).await;
    let stuck = SlowPost::submit(&server, &site.practitioner, "lifecycle-1", "stuck").await;

    let signalled = Instant::now();
    server.signal(Signal::SIGTERM);
    let exit = server.exited().await;
    assert!(exit.success(), "exited {exit}:\n{}", server.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(300),
        "the shutdown waited for the read timeout instead of the grace period"
    );
    assert!(
        !logged(&server, "WARN", "shutdown grace period").is_empty(),
        "the cut-off is logged as a warning:\n{}",
        server.log()
    );
    drop(stuck);

    let server = Server::start(&site, 1, &client).await;
    assert_eq!(journal_length(&client, &server, &site).await, 0);
}

/// Sends `GET /healthz` on `stream`, kept alive.
async fn ask_health(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send a request");
}

/// Reads one answer off `stream` (head and body) and returns its head.
async fn answer_head(stream: &mut TcpStream) -> String {
    let head = read_head(stream).await;
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().expect("a length"))
        })
        .expect("a content length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.expect("read the body");
    head
}

#[tokio::test]
async fn past_max_connections_a_new_connection_waits_until_one_closes() {
    let site = Site::new();
    let settings = [("SAFEGUARD_MAX_CONNECTIONS", "2")];
    let server = {
        // Dropped at once: its pooled connection would hold one of the two places.
        let startup = client();
        Server::start_with(&site, 0, &startup, WITH_REQUESTS, &settings).await
    };
    let connect = || async {
        TcpStream::connect(server.socket_address())
            .await
            .expect("the listen queue takes the connection")
    };
    let (mut first, mut second) = (connect().await, connect().await);
    for stream in [&mut first, &mut second] {
        ask_health(stream).await;
        let head = answer_head(stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head:?}");
    }
    // Both places are held by idle kept-alive connections: a third is not served...
    let mut third = connect().await;
    ask_health(&mut third).await;
    let mut byte = [0u8; 1];
    let waiting = tokio::time::timeout(Duration::from_millis(500), third.peek(&mut byte)).await;
    assert!(
        waiting.is_err(),
        "a third connection was answered beside two open ones: {waiting:?}"
    );
    // ...until one of them closes.
    drop(first);
    let head = tokio::time::timeout(REQUEST_TIMEOUT, answer_head(&mut third))
        .await
        .expect("the third connection is served once the first closes");
    assert!(head.starts_with("HTTP/1.1 200"), "{head:?}");
    // The second is still served on its own connection.
    ask_health(&mut second).await;
    assert!(answer_head(&mut second).await.starts_with("HTTP/1.1 200"));

    // The operator is told, once, and can watch it: places in use against the most, and how
    // often a connection had to wait.
    let warnings = logged(&server, "WARN", "every connection place is taken");
    assert_eq!(warnings.len(), 1, "{}", server.log());
    drop((second, third));
    // Once the server has seen them close, the one open connection is the scrape's own.
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let metrics = loop {
        let metrics = client()
            .get(format!("http://{}/metrics", server.socket_address()))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap();
        if metrics.contains("safeguard_connections_open 1\n") || Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(metrics.contains("safeguard_connections_max 2"), "{metrics}");
    assert!(
        metrics.contains("safeguard_connections_open 1\n"),
        "{metrics}"
    );
    let waited = metrics
        .lines()
        .find_map(|l| l.strip_prefix("safeguard_connections_full_total "))
        .and_then(|n| n.parse::<f64>().ok());
    assert!(waited >= Some(1.0), "{metrics}");
}

#[tokio::test]
async fn a_client_that_stops_taking_its_answers_is_let_go_after_the_read_timeout() {
    let site = Site::new();
    let settings = [
        ("SAFEGUARD_MAX_CONNECTIONS", "1"),
        ("SAFEGUARD_READ_TIMEOUT_SECS", "1"),
    ];
    let server = {
        let startup = client();
        Server::start_with(&site, 0, &startup, WITH_REQUESTS, &settings).await
    };
    // The one place is taken by a client that asks for far more than the sockets' buffers hold
    // (~80 KB an answer) with a small receive buffer, and never reads.
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4096).expect("a small buffer");
    let address = server.socket_address().parse().expect("an address");
    let mut stalled = socket.connect(address).await.expect("connected");
    let ask = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(200);
    stalled
        .write_all(&ask)
        .await
        .expect("the requests are sent");

    // Its answer stops being written, and after the timeout the place is given up: another
    // client is served.
    let started = Instant::now();
    let mut next = TcpStream::connect(server.socket_address())
        .await
        .expect("the listen queue takes the connection");
    ask_health(&mut next).await;
    let head = tokio::time::timeout(REQUEST_TIMEOUT, answer_head(&mut next))
        .await
        .expect("a client that takes no answers is let go");
    assert!(head.starts_with("HTTP/1.1 200"), "{head:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "served at once: the stalled client's answers all fit in the buffers ({:?})",
        started.elapsed()
    );
    drop(stalled);
}

/// `safeguard serve` run by `prlimit` with the soft limit on open files at `soft` and the hard
/// limit at `hard`: the service may raise the one to the other, and no further.
async fn serve_with_open_files(site: &Site, soft: u32, hard: u32, env: &[(&str, &str)]) -> Server {
    let nofile = format!("--nofile={soft}:{hard}");
    let command = site.command(
        "prlimit",
        [nofile.as_str(), env!("CARGO_BIN_EXE_safeguard"), "serve"],
    );
    Server::launch(command, site, 0, &client(), WITH_REQUESTS, env).await
}

/// The service's warnings about the open-file limit, from its log.
fn open_file_warnings(server: &Server) -> Vec<Value> {
    logged(server, "WARN", "open-file limit")
}

#[tokio::test]
async fn an_open_file_limit_below_max_connections_is_warned_about_and_the_service_still_serves() {
    let site = Site::new();
    // Started with a soft limit of 200 under a hard limit of 400: the service raises it to 400,
    // which still cannot hold 1,024 connections and the store.
    let server = serve_with_open_files(&site, 200, 400, &[]).await;
    let warnings = open_file_warnings(&server);
    assert_eq!(warnings.len(), 1, "{}", server.log());
    assert_eq!(warnings[0]["fields"]["open_files"], 400, "{}", warnings[0]);
    assert_eq!(
        warnings[0]["fields"]["max_connections"], 1024,
        "{}",
        warnings[0]
    );
    drop(server);
    // With max_connections lowered to fit the raised limit (300 + 64 <= 400, though not 200),
    // nothing to warn about.
    let server =
        serve_with_open_files(&site, 200, 400, &[("SAFEGUARD_MAX_CONNECTIONS", "300")]).await;
    assert!(open_file_warnings(&server).is_empty(), "{}", server.log());
}

/// Submits a decision for `case` and returns the answer's status and body.
async fn submit(
    client: &reqwest::Client,
    server: &Server,
    token: &str,
    case: &str,
) -> (u16, Value) {
    let response = client
        .post(format!("{}/v1/cases/{case}/decisions", server.address))
        .bearer_auth(token)
        // Each case's own key: a test may retry a submit exactly as a case system would.
        .header("Idempotency-Key", case)
        .json(&json!({"tool": TOOL, "input": valid_input(TOOL)}))
        .send()
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

#[tokio::test]
async fn a_store_that_cannot_make_a_write_durable_refuses_writes_with_503_keeps_serving_reads_and_recovers_on_restart(
) {
    let client = client();
    let site = Site::new();
    // sled's data file may not grow past ~1.5 MB: a flush past it fails (EFBIG), as one fails on
    // a full disk (ENOSPC). The service ignores SIGXFSZ, whose default action would end it.
    let command = site.command(
        "prlimit",
        ["--fsize=1500000", env!("CARGO_BIN_EXE_safeguard"), "serve"],
    );
    let server = Server::launch(command, &site, 0, &client, WITH_REQUESTS, &[]).await;

    let mut acknowledged = Vec::new();
    let refused = loop {
        assert!(
            acknowledged.len() < 5_000,
            "the file-size limit never stopped a write"
        );
        let case = format!("full-{}", acknowledged.len());
        match submit(&client, &server, &site.practitioner, &case).await {
            (201, decision) => acknowledged.push(decision),
            (_, problem) => break problem,
        }
    };
    assert!(!acknowledged.is_empty(), "the limit left no room to start");
    assert_eq!(refused["status"], 503, "{refused}");
    assert_eq!(refused["type"], "/problems/store-unavailable", "{refused}");
    let detail = refused["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("nothing was stored") && detail.contains("restarted"),
        "the problem says what happened and what to do: {detail}"
    );
    // What the disk said is for the operator's log, not for the case system.
    assert!(
        !detail.contains("os error") && !detail.contains("Os {"),
        "{detail}"
    );
    // The refused submit's retry is refused too: its batch may be in sled's memory, idempotency
    // record and all, but it is not durable, and the retry must not be told it was stored.
    let refused_case = format!("full-{}", acknowledged.len());
    let (status, retried) = submit(&client, &server, &site.practitioner, &refused_case).await;
    assert_eq!(status, 503, "{retried}");
    // Every later write is refused the same way, without trying the disk again.
    let (status, again) = submit(&client, &server, &site.practitioner, "full-after").await;
    assert_eq!(
        (status, &again["type"]),
        (503, &json!("/problems/store-unavailable"))
    );
    // Readiness says the instance should take no more decisions.
    let ready = client
        .get(format!("{}/readyz", server.address))
        .send()
        .await
        .expect("the server answers");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready: Value = ready.json().await.expect("a problem");
    assert_eq!(ready["type"], "/problems/store-unavailable", "{ready}");
    let metrics = metrics_text(&client, &server).await;
    assert!(
        metrics.contains("safeguard_store_writable 0"),
        "the metrics say the store takes no writes:\n{metrics}"
    );
    assert!(
        !logged(&server, "ERROR", "could not be made durable").is_empty(),
        "the failure is logged as an error:\n{}",
        server.log()
    );
    // Told to stop, it stops in order but exits with a failure saying why: a supervisor that
    // only sees the exit status must still hear that the service did not run well.
    let mut server = server;
    server.signal(Signal::SIGTERM);
    let status = server.exited().await;
    assert!(!status.success(), "exited {status} after the store failed");
    assert!(
        server.log().contains(
            "error: stopped after the store failed: the store could not make a write durable"
        ),
        "the exit says why:\n{}",
        server.log()
    );

    // Restarted without the limit, the store recovers: every acknowledged decision reads back as
    // it was acknowledged, the chain is whole, and writes are taken again.
    let server = Server::start(&site, 1, &client).await;
    for decision in &acknowledged {
        let id = decision["id"].as_str().unwrap();
        let read: Value = client
            .get(format!("{}/v1/decisions/{id}", server.address))
            .bearer_auth(&site.practitioner)
            .send()
            .await
            .expect("the restarted server answers")
            .json()
            .await
            .expect("a decision");
        assert_eq!(&read, decision);
    }
    let stored = journal_length(&client, &server, &site).await;
    assert!(
        stored == acknowledged.len() as u64 || stored == acknowledged.len() as u64 + 1,
        "{stored} revisions for {} acknowledged (the refused one may have reached the disk)",
        acknowledged.len()
    );
    let (status, _) = submit(&client, &server, &site.practitioner, "after-restart").await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn a_second_service_on_the_same_data_folder_is_refused_with_a_clear_reason() {
    let client = client();
    let site = Site::new();
    let server = Server::start(&site, 0, &client).await;

    let mut second = site.safeguard(["serve"]);
    second.env("SAFEGUARD_LISTEN", "127.0.0.1:0");
    let output = second.output().expect("the binary runs");

    assert!(!output.status.success(), "a second service started");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is the service running?"),
        "the reason names the likely cause: {stderr}"
    );
    assert_eq!(
        stderr.matches("could not acquire lock").count(),
        1,
        "the cause is said once: {stderr}"
    );
    // The first service is untouched.
    let health = client
        .get(format!("{}/healthz", server.address))
        .send()
        .await
        .expect("the first server answers");
    assert_eq!(health.status(), StatusCode::OK);
}

/// An anchor line as the writer writes it: `<seq> <hash> <sha256 of "<seq> <hash>">`.
fn anchor_line(seq: u64, hash: &str) -> String {
    let fields = format!("{seq} {hash}");
    format!("{fields} {}\n", safeguard::store::sha256(fields.as_bytes()))
}

#[tokio::test]
async fn verify_finds_revisions_missing_from_the_end_by_the_anchor_the_writer_keeps() {
    let client = client();
    let site = Site::new();
    let server = Server::start(&site, 0, &client).await;
    let mut last = Value::Null;
    for n in 0..3 {
        let (status, decision) =
            submit(&client, &server, &site.practitioner, &format!("a-{n}")).await;
        assert_eq!(status, 201, "{decision}");
        last = decision;
    }
    drop(server);

    // After each durable batch the writer records the head beside sled's files.
    let anchor = site.data_dir().join("anchor");
    let written = std::fs::read_to_string(&anchor).expect("the writer keeps an anchor");
    let hash = last["hash"].as_str().unwrap();
    assert_eq!(written, anchor_line(3, hash));
    let (ok, printed) = site.verify();
    assert!(ok, "{printed}");

    // A journal that ends before the anchor (as when sled's recovery stops at damage in its
    // files) is reported, though its chain is whole as far as it goes.
    std::fs::write(&anchor, anchor_line(5, "sha256:0000")).unwrap();
    let (ok, printed) = site.verify();
    assert!(!ok, "{printed}");
    assert!(printed.contains("missing from the end"), "{printed}");

    // So is a revision whose hash is not the one the anchor recorded for it.
    std::fs::write(&anchor, anchor_line(3, "sha256:0000")).unwrap();
    let (ok, printed) = site.verify();
    assert!(!ok, "{printed}");
    assert!(printed.contains("anchor file says revision 3"), "{printed}");

    // A torn line (its check does not match) is no anchor: nothing to compare with.
    std::fs::write(&anchor, "5 sha256:0000 sha256:1111\n").unwrap();
    let (ok, printed) = site.verify();
    assert!(ok, "{printed}");
}

/// The server's `/metrics`, as text.
async fn metrics_text(client: &reqwest::Client, server: &Server) -> String {
    client
        .get(format!("{}/metrics", server.address))
        .send()
        .await
        .expect("the server answers")
        .text()
        .await
        .expect("metrics")
}

/// `(count, sum)` of the histogram `name` in a Prometheus text exposition.
fn histogram_count_and_sum(text: &str, name: &str) -> (f64, f64) {
    let value = |suffix: &str| -> f64 {
        let prefix = format!("{name}_{suffix} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix}in:\n{text}"))
            .trim()
            .parse()
            .expect("a number")
    };
    (value("count"), value("sum"))
}

/// Submits `n` decisions at once to a fresh server in `durability` mode and returns how many
/// commits its writer made for them.
async fn commits_for_concurrent_submits(durability: &str, n: usize) -> f64 {
    let client = client();
    let site = Site::new();
    let settings = [("SAFEGUARD_DURABILITY", durability)];
    let server = Server::start_with(&site, 0, &client, QUIET, &settings).await;
    let mut submits = tokio::task::JoinSet::new();
    for i in 0..n {
        let (client, address, token) = (
            client.clone(),
            server.address.clone(),
            site.practitioner.clone(),
        );
        submits.spawn(async move {
            client
                .post(format!("{address}/v1/cases/burst-{i}/decisions"))
                .bearer_auth(token)
                .json(&json!({"tool": TOOL, "input": valid_input(TOOL)}))
                .send()
                .await
                .expect("the server answers")
                .status()
        });
    }
    while let Some(status) = submits.join_next().await {
        assert_eq!(status.expect("the submit ran"), StatusCode::CREATED);
    }
    let text = metrics_text(&client, &server).await;
    let (commits, appends) = histogram_count_and_sum(&text, "safeguard_commit_batch_size");
    assert_eq!(
        appends, n as f64,
        "every acknowledged append was committed once:\n{text}"
    );
    commits
}

#[tokio::test]
async fn concurrent_submits_share_commits_and_the_baseline_commits_each_alone() {
    let n = 64;
    let grouped = commits_for_concurrent_submits("group", n).await;
    let alone = commits_for_concurrent_submits("sync-per-request", n).await;

    assert_eq!(
        alone, n as f64,
        "sync-per-request makes one commit per submit"
    );
    assert!(
        grouped < n as f64,
        "{n} concurrent submits took {grouped} commits: none was shared"
    );
}

#[tokio::test]
async fn a_first_start_that_fails_leaves_no_unseen_admin_token_and_the_next_start_shows_one() {
    let site = Site::new();
    let fresh = tempfile::tempdir().expect("a temporary folder");
    let data = fresh.path().join("data");
    let data = data.to_str().expect("a UTF-8 path");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let address = taken.local_addr().expect("an address").to_string();

    let failed = site
        .safeguard(["serve"])
        .env("SAFEGUARD_DATA_DIR", data)
        .env("SAFEGUARD_LISTEN", &address)
        .output()
        .expect("the binary runs");

    assert!(!failed.status.success(), "{failed:?}");
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("cannot listen on"),
        "{failed:?}"
    );
    let listed = site
        .safeguard(["token", "list"])
        .env("SAFEGUARD_DATA_DIR", data)
        .output()
        .expect("the binary runs");
    assert!(listed.status.success(), "{listed:?}");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(listed.lines().count(), 1, "only the heading: {listed}");
    // So the first start that does serve still makes the admin token, and shows it.
    let command = site.safeguard(["serve"]);
    let server = Server::launch(
        command,
        &site,
        0,
        &client(),
        QUIET,
        &[("SAFEGUARD_DATA_DIR", data)],
    )
    .await;
    assert!(
        server.log().contains("an admin token was created"),
        "{}",
        server.log()
    );
}

#[tokio::test]
async fn the_first_admin_token_is_printed_alone_on_standard_output_and_logs_go_to_standard_error() {
    let site = Site::new();
    let fresh = tempfile::tempdir().expect("a temporary folder");
    let (out_path, err_path) = (fresh.path().join("out"), fresh.path().join("err"));
    let mut command = site.safeguard(["serve"]);
    command
        .env("SAFEGUARD_DATA_DIR", fresh.path().join("data"))
        .env("SAFEGUARD_LISTEN", "127.0.0.1:0")
        .env("SAFEGUARD_LOG_FORMAT", "text")
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(&out_path).expect("a file"))
        .stderr(std::fs::File::create(&err_path).expect("a file"));
    let mut child = Reaped(command.spawn().expect("the binary starts"));
    let deadline = Instant::now() + START_TIMEOUT;
    while !std::fs::read_to_string(&err_path)
        .unwrap_or_default()
        .contains("serving")
    {
        assert!(Instant::now() < deadline, "not serving in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.0.id()).expect("a pid"));
    nix::sys::signal::kill(pid, Signal::SIGTERM).expect("signalled");
    assert!(child.0.wait().expect("it exits").success());

    let out = std::fs::read_to_string(&out_path).expect("read");
    let err = std::fs::read_to_string(&err_path).expect("read");
    assert!(out.contains("an admin token was created"), "{out}");
    assert!(
        !out.contains("INFO"),
        "no log line on standard output:\n{out}"
    );
    assert!(err.contains("INFO") && err.contains("stopped"), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "no colour codes in a log that is not a terminal:\n{err}"
    );
}

/// Run as its own process: sled's concurrency control is one lock for every store in a process,
/// and a store whose folder went from under it should not hold up the test process's others.
#[tokio::test]
async fn a_data_folder_replaced_under_the_running_service_takes_no_more_writes() {
    let site = Site::new();
    let client = client();
    let mut server = Server::start(&site, 0, &client).await;
    let (status, _) = submit(&client, &server, &site.practitioner, "before").await;
    assert_eq!(status, 201);

    // An operator "restores" a copy over the folder while the service runs: the files the
    // service has open are no longer the folder's.
    let data = site.data_dir();
    let aside = data.with_extension("aside");
    std::fs::rename(&data, &aside).unwrap();
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(&aside)
        .arg(&data)
        .status()
        .unwrap();
    assert!(copied.success());

    // A write is not acknowledged: it would be lost at the next start; nor is its retry under
    // the same Idempotency-Key told that it was.
    for attempt in ["first", "retry"] {
        let response = client
            .post(format!("{}/v1/cases/after/decisions", server.address))
            .bearer_auth(&site.practitioner)
            .header("Idempotency-Key", "after-1")
            .json(&json!({"tool": TOOL, "input": valid_input(TOOL)}))
            .send()
            .await
            .expect("the server answers");
        let status = response.status();
        let problem: Value = response.json().await.unwrap();
        assert_eq!(status, 503, "{attempt}: {problem}");
        assert_eq!(problem["type"], "/problems/store-unavailable", "{problem}");
    }
    let ready = client
        .get(format!("{}/readyz", server.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        server
            .log()
            .contains("no longer the data file the service opened"),
        "{}",
        server.log()
    );

    // It stops when asked, saying the store failed.
    server.signal(Signal::SIGTERM);
    let status = server.exited().await;
    assert_eq!(status.code(), Some(1), "{}", server.log());
}

#[tokio::test]
async fn sighup_reloads_the_catalog_and_the_service_goes_on() {
    let site = Site::new();
    let client = client();
    let filter = "warn,safeguard=info";
    let mut server = Server::start_with(&site, 0, &client, filter, &[]).await;

    server.signal(Signal::SIGHUP);
    let deadline = Instant::now() + START_TIMEOUT;
    while !server.log().contains("catalog reloaded") {
        assert!(Instant::now() < deadline, "not reloaded:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let health = client
        .get(format!("http://{}/healthz", server.socket_address()))
        .send()
        .await
        .expect("still serving");
    assert_eq!(health.status(), StatusCode::OK);
    // It ran the site's cases, as a reload over the API does.
    let [reloaded] = &logged(&server, "INFO", "catalog reloaded")[..] else {
        panic!("one reload line:\n{}", server.log());
    };
    assert!(
        reloaded["fields"]["cases_run"].as_u64() > Some(0),
        "{reloaded}"
    );
    // And so did the start.
    let [loaded] = &logged(&server, "INFO", "catalog loaded")[..] else {
        panic!("one start line:\n{}", server.log());
    };
    assert_eq!(
        loaded["fields"]["cases_run"],
        reloaded["fields"]["cases_run"]
    );

    server.signal(Signal::SIGTERM);
    assert!(server.exited().await.success(), "{}", server.log());
}

#[tokio::test]
async fn a_sighup_while_the_service_starts_reloads_once_it_serves_and_does_not_end_it() {
    let site = Site::new();
    let client = client();
    let mut server = Server::spawn(
        site.safeguard(["serve"]),
        &site,
        0,
        "warn,safeguard=info",
        &[],
    );
    // It has begun to start (it catches SIGTERM before it loads anything) and is well into
    // loading the catalog and running its cases, a second or so in a debug build.
    let deadline = Instant::now() + START_TIMEOUT;
    while !server.catches(Signal::SIGTERM) {
        assert!(
            Instant::now() < deadline,
            "never caught SIGTERM:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !server.log().contains("\"serving\""),
        "the test needs a start still under way:\n{}",
        server.log()
    );

    server.signal(Signal::SIGHUP);

    server.until_healthy(&client).await;
    let deadline = Instant::now() + START_TIMEOUT;
    while !server.log().contains("catalog reloaded") {
        assert!(Instant::now() < deadline, "not reloaded:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.signal(Signal::SIGTERM);
    assert!(server.exited().await.success(), "{}", server.log());
}

#[tokio::test]
async fn a_first_admin_token_that_cannot_be_shown_is_not_made() {
    let site = Site::new();
    let fresh = tempfile::tempdir().expect("a temporary folder");
    let data = fresh.path().join("data");
    let err_path = fresh.path().join("err");
    let mut command = site.safeguard(["serve"]);
    command
        .env("SAFEGUARD_DATA_DIR", &data)
        .env("SAFEGUARD_LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&err_path).expect("a file"));
    let mut child = Reaped(command.spawn().expect("the binary starts"));
    // Whoever was to read it has gone (`serve | head -0`, a collector that died).
    drop(child.0.stdout.take());

    let status = child.0.wait().expect("it exits");
    let err = std::fs::read_to_string(&err_path).expect("read");
    assert!(!status.success(), "{err}");
    assert!(err.contains("cannot show the first admin token"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // No token was kept, so the next start makes one again.
    let listed = site
        .safeguard(["token", "list"])
        .env("SAFEGUARD_DATA_DIR", &data)
        .output()
        .expect("the binary runs");
    let listing = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.status.success(), "{listed:?}");
    assert_eq!(listing.lines().count(), 1, "only the heading:\n{listing}");
}

/// A child process that is killed and reaped when the test ends, however it ends: a failed
/// assertion must not leave a server running.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_token_whose_subject_todays_rules_refuse_is_kept_and_named_at_start() {
    use safeguard::store::Store;
    let site = Site::new();
    // A token issued before subjects had to be in NFKC: "Zoë" written decomposed.
    let (_, mut record) = safeguard::auth::issue(safeguard::auth::Role::Supervisor, "Zoe");
    record.subject = "Zoe\u{308}".into();
    {
        let store =
            safeguard::store::SledStore::open_existing(&site.data_dir(), Default::default())
                .unwrap();
        store.put_token(&record).unwrap();
    }
    let client = client();
    let mut server = Server::start(&site, 0, &client).await;

    let warned = logged(&server, "WARN", "would be refused today");

    assert_eq!(warned.len(), 1, "{}", server.log());
    assert_eq!(warned[0]["fields"]["token"], record.id(), "{}", warned[0]);
    server.signal(Signal::SIGTERM);
    assert!(server.exited().await.success(), "{}", server.log());
}
