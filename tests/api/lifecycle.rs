//! The service's life as an operator sees it, on the real binary: how it stops (SIGTERM or
//! Ctrl-C: stop accepting, finish what is in flight, write it out, exit 0) and what it logs (one
//! line per request, with the request id the response also carries).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::binary::{Server, Site, REQUEST_TIMEOUT, START_TIMEOUT};
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

/// A submit sent by hand over one TCP connection, so the test decides when its body goes.
/// `Expect: 100-continue` makes the server say when the handler has begun reading the body:
/// from then on the request is in flight.
struct SlowSubmit {
    stream: TcpStream,
    body: Vec<u8>,
}

impl SlowSubmit {
    /// Sends the head of a submit to `case` and waits for the server's `100 Continue`.
    async fn begin(server: &Server, token: &str, case: &str, request_id: &str) -> SlowSubmit {
        let body = serde_json::to_vec(&json!({"tool": TOOL, "input": valid_input(TOOL)}))
            .expect("a JSON body");
        let mut stream = TcpStream::connect(server.socket_address())
            .await
            .expect("connect to the server");
        let head = format!(
            "POST /v1/cases/{case}/decisions HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nX-Request-Id: {request_id}\r\n\r\n",
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
            "expected 100 Continue, got {interim:?}"
        );
        SlowSubmit { stream, body }
    }

    /// Sends the body and reads the whole response until the server closes the connection:
    /// the status, the headers (lower-cased names) and the body as JSON.
    async fn finish(mut self) -> (u16, Vec<(String, String)>, Value) {
        self.stream
            .write_all(&self.body)
            .await
            .expect("send the body");
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
        (status, headers, body)
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

/// The position and the line of the first log line whose message is `message` and whose
/// fields include every one of `fields`.
fn find(lines: &[Value], message: &str, fields: &[(&str, Value)]) -> Option<(usize, Value)> {
    lines
        .iter()
        .position(|l| {
            l["fields"]["message"] == message
                && fields
                    .iter()
                    .all(|(name, value)| l["fields"][name] == *value)
        })
        .map(|i| (i, lines[i].clone()))
}

/// Signals a server holding a submit in flight, and checks each step of a graceful stop.
async fn stops_gracefully_on(signal: Signal) {
    let client = client();
    let site = Site::new();
    let mut server = Server::start_logging(&site, 0, &client, WITH_REQUESTS).await;
    let request_id = format!("in-flight-{signal}");
    let submit = SlowSubmit::begin(&server, &site.practitioner, "lifecycle-1", &request_id).await;

    server.signal(signal);
    // Stop accepting: new connections are refused while the submit is still open.
    until_refused(&server).await;
    // Finish what is in flight: the submit completes, and the connection then closes.
    let (status, headers, decision) = submit.finish().await;
    assert_eq!(status, 201, "{decision}");
    assert!(
        headers.contains(&("x-request-id".to_owned(), request_id.clone())),
        "{headers:?}"
    );
    assert!(
        headers.contains(&("connection".to_owned(), "close".to_owned())),
        "a server that is stopping closes the connection after the answer: {headers:?}"
    );
    // Exit 0.
    let exit = server.exited().await;
    assert!(exit.success(), "{signal}: exited {exit}:\n{}", server.log());

    let lines = server.log_lines();
    let (stopping, _) = find(&lines, SHUTTING_DOWN, &[]).expect("the shutdown is logged");
    let (answered, _) = find(
        &lines,
        "request",
        &[("request_id", json!(request_id)), ("status", json!(201))],
    )
    .expect("the submit is logged");
    let (stopped, _) = find(&lines, "stopped", &[]).expect("the stop is logged");
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
    let verified: Value = client
        .get(format!("{}/v1/audit/verify", server.address))
        .bearer_auth(&site.auditor)
        .send()
        .await
        .expect("the restarted server answers")
        .json()
        .await
        .expect("a verify report");
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(verified["revisions"], 1, "{verified}");
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
    let mut server = Server::start_logging(&site, 0, &client, WITH_REQUESTS).await;
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
    }
    // Tokens are never logged.
    assert!(!server.log().contains(&site.practitioner));
}
