//! Observability for every request: one log line with a request id and who made it, and
//! Prometheus metrics by route and status with a latency histogram.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The process-wide metrics recorder, installed on first use. Metrics are global in the
/// `metrics` crate, so several servers in one process (as in the tests) share one.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let latency = [
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets(&latency)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        "safeguard_commit_batch_size".into(),
                    ),
                    &[
                        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                    ],
                )
            })
            .expect("the bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a test harness); then ours only renders.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Whether a client's `x-request-id` is kept: 1-128 letters, digits and `.`, `_`, `:`, `-` (a
/// UUID, a ULID, a case system's own reference). Anything else (a space, a quote, `=`) could
/// forge fields in a text log line, so it is replaced by an id of the service's own.
fn acceptable_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Who made a request, as its token says: set by the `Caller` extractor, read for the request's
/// log line. Empty for a request with no accepted token.
#[derive(Debug, Clone, Default)]
pub struct ActorSlot(Arc<OnceLock<String>>);

impl ActorSlot {
    pub fn set(&self, subject: &str) {
        let _ = self.0.set(subject.to_owned());
    }
}

/// The routes probes and scrapers call every few seconds: their lines are logged at debug, so
/// the request log is the requests people and case systems make.
const PROBES: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

pub async fn observe(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        request.headers_mut().insert("x-request-id", value);
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let actor = ActorSlot::default();
    request.extensions_mut().insert(actor.clone());
    let mut response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let labels = [
        ("route", route),
        ("method", method_label(&method).to_owned()),
        ("status", status.to_string()),
    ];
    metrics::counter!("safeguard_http_requests_total", &labels).increment(1);
    metrics::histogram!("safeguard_http_request_duration_seconds", &labels[..2])
        .record(elapsed.as_secs_f64());
    let actor = actor.0.get().map_or("-", String::as_str);
    let micros = elapsed.as_micros() as u64;
    if PROBES.contains(&path.as_str()) {
        tracing::debug!(request_id = %request_id, %method, %path, status, micros, actor, "request");
    } else {
        tracing::info!(request_id = %request_id, %method, %path, status, micros, actor, "request");
    }
    response
}

/// A request's method as a metrics label: one of HTTP's own, or `other`. hyper accepts any
/// token as a method, and a label a client chooses freely would make a new series for each,
/// growing the metrics (and every scrape) without bound.
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT",
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == method.as_str())
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::{acceptable_request_id, method_label};
    use axum::http::Method;

    #[test]
    fn a_method_is_labelled_as_itself_only_when_http_defines_it() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::OPTIONS), "OPTIONS");
        let invented = Method::from_bytes(b"ZZMETHOD1").unwrap();
        assert_eq!(method_label(&invented), "other");
    }

    #[test]
    fn a_request_id_is_kept_only_when_it_cannot_forge_a_log_field() {
        for kept in [
            "case-system-42",
            "01J9Z3K4M5N6P7Q8R9S0T1V2W3",
            "a.b_c:d-e",
            &"x".repeat(128),
        ] {
            assert!(acceptable_request_id(kept), "{kept:?}");
        }
        for replaced in [
            "",
            "abc status=500",
            "a\"b",
            "tab\there",
            "caf\u{e9}",
            &"x".repeat(129),
        ] {
            assert!(!acceptable_request_id(replaced), "{replaced:?}");
        }
    }
}
