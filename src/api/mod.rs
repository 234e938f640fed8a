//! The HTTP API (v1): the only module that knows HTTP. Handlers are thin: extract, check the
//! caller's role, call one function of the decision service, shape the answer.
//!
//! Every error goes through [`ApiError`] (one table maps each to an RFC 9457 problem); every
//! route but health, readiness, metrics and the API description needs a bearer token.

mod admin;
mod audit;
mod auth;
mod cases;
mod decisions;
mod error;
mod form_json;
mod observe;
mod openapi;
mod ops;
mod problems;
mod tools;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{
    DefaultBodyLimit, FromRequest, FromRequestParts, OptionalFromRequest, Request,
};
use axum::http::request::Parts;
use axum::serve::Listener;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) use admin::reload;
pub use auth::Caller;
pub use error::{ApiError, BodyProblems, Problem, TokenProblems, WriteProblems, PROBLEM_JSON};
pub use observe::metrics_handle;
pub use problems::{ProblemDoc, ProblemType};

use crate::auth::Tokens;
use crate::decisions::Decisions;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub decisions: Arc<Decisions>,
    /// The accepted tokens; behind a lock so a token created at run time takes effect.
    pub tokens: Arc<RwLock<Tokens>>,
    /// False while starting and once shutdown has begun: `/readyz` says so to load balancers.
    pub ready: Arc<AtomicBool>,
    /// The largest request body accepted, in bytes.
    pub body_limit: usize,
    /// How long a client has to send a request body once its head has come.
    pub read_timeout: Duration,
    /// Where the catalog is reloaded from.
    pub tools_dir: std::path::PathBuf,
    /// Held while a token is created or revoked, so that two revocations cannot both see the
    /// other admin token and leave none.
    pub token_writes: Arc<tokio::sync::Mutex<()>>,
    /// Held while the catalog is reloaded, so that of two overlapping reloads the later one
    /// reads the files last and is the one left in force.
    pub reloads: Arc<tokio::sync::Mutex<()>>,
}

impl AppState {
    pub fn new(
        decisions: Arc<Decisions>,
        tokens: Tokens,
        body_limit: usize,
        read_timeout: Duration,
        tools_dir: std::path::PathBuf,
    ) -> Self {
        AppState {
            tools_dir,
            decisions,
            tokens: Arc::new(RwLock::new(tokens)),
            ready: Arc::new(AtomicBool::new(true)),
            body_limit,
            read_timeout,
            token_writes: Arc::default(),
            reloads: Arc::default(),
        }
    }
}

/// How the service treats connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// For a request's head (on a kept-alive connection, from the end of the last answer), and
    /// then again for its body.
    pub read_timeout: Duration,
    /// Once shutdown begins, how long requests in flight may take to finish.
    pub shutdown_grace: Duration,
    /// The most connections served at once; the rest wait to be accepted.
    pub max_connections: usize,
}

/// A JSON body whose rejection is an [`ApiError`], so a malformed body is a problem document
/// that names the field like every other error. The whole body must arrive within the read
/// timeout: one byte at a time would otherwise hold a connection for as long as the client likes.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T: serde::de::DeserializeOwned> FromRequest<AppState> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let read = <axum::Json<T> as FromRequest<AppState>>::from_request(request, state);
        Ok(Json(within_read_timeout(state, read).await?.0))
    }
}

/// `Option<Json<T>>`: no body (no `Content-Type`, or an empty body, as with `Content-Length: 0`
/// or a chunked body with no bytes, whatever its type) is `None`; a body is read as above.
impl<T: serde::de::DeserializeOwned> OptionalFromRequest<AppState> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Option<Self>, ApiError> {
        // A body known to be empty (`Content-Length: 0`, or none sent) says so in its size hint.
        // One of unknown length (chunked) is read first to see: the same empty body should not
        // be refused as malformed JSON only because it came without a length.
        let request = match axum::body::HttpBody::size_hint(request.body()).exact() {
            Some(0) => return Ok(None),
            Some(_) => request,
            None => {
                let (parts, body) = request.into_parts();
                let whole = Request::from_parts(parts.clone(), body);
                let bytes =
                    within_read_timeout(state, axum::body::Bytes::from_request(whole, state))
                        .await?;
                if bytes.is_empty() {
                    return Ok(None);
                }
                Request::from_parts(parts, axum::body::Body::from(bytes))
            }
        };
        let read = <axum::Json<T> as OptionalFromRequest<AppState>>::from_request(request, state);
        Ok(within_read_timeout(state, read)
            .await?
            .map(|body| Json(body.0)))
    }
}

/// Reads a body within the state's read timeout, mapping a rejection to its problem (a body's
/// own rejections, too large or cut short, are those of a JSON body).
async fn within_read_timeout<V, R: Into<axum::extract::rejection::JsonRejection>>(
    state: &AppState,
    read: impl Future<Output = Result<V, R>>,
) -> Result<V, ApiError> {
    match tokio::time::timeout(state.read_timeout, read).await {
        Ok(result) => result.map_err(|rejection| ApiError::from(rejection.into())),
        Err(_) => Err(ApiError::RequestTimeout(state.read_timeout)),
    }
}

/// A path's parameters whose rejection is an [`ApiError`] naming the parameter (`axum`'s own
/// answers a parameter that is not UTF-8, `/v1/cases/%FF`, in plain text).
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                let field = match e.kind() {
                    ErrorKind::InvalidUtf8InPathParam { key }
                    | ErrorKind::ParseErrorAtKey { key, .. }
                    | ErrorKind::DeserializeError { key, .. } => key.clone(),
                    _ => "path".to_owned(),
                };
                Err(ApiError::invalid(field, e.body_text()))
            }
            // A route whose handler names parameters its path does not have: our mistake.
            Err(other) => Err(ApiError::Internal(other.body_text())),
        }
    }
}

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "safeguard",
        description = "Structured decision-making for child safeguarding: transparent, replicable, testable decisions, stored immutably and hash-chained.",
    ),
    modifiers(&BearerAuth),
    components(schemas(Problem)),
    tags(
        (name = "operations", description = "Health, readiness, metrics and this description"),
        (name = "tools", description = "The catalog of assessment tools"),
        (name = "decisions", description = "Decisions, their revisions, overrides and approvals"),
        (name = "cases", description = "A case's decisions and journey"),
        (name = "admin", description = "Operating the service"),
        (name = "audit", description = "Versions, replay and impact analysis, export, verification"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The routes and the OpenAPI description generated from them.
fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut description) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(ops::health))
        .routes(routes!(ops::ready))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi))
        .routes(routes!(ops::problem_types))
        .routes(routes!(ops::problem_type))
        .routes(routes!(tools::tools_list))
        .routes(routes!(tools::tool_get))
        .routes(routes!(tools::tool_evaluate))
        .routes(routes!(
            decisions::decision_submit,
            decisions::case_decisions_list
        ))
        .routes(routes!(cases::case_journey))
        .routes(routes!(decisions::decision_get))
        .routes(routes!(
            decisions::revisions_list,
            decisions::decision_amend
        ))
        .routes(routes!(decisions::decision_override))
        .routes(routes!(decisions::decision_approve))
        .routes(routes!(decisions::decision_decline))
        .routes(routes!(admin::catalog_reload))
        .routes(routes!(admin::tokens_list, admin::token_create))
        .routes(routes!(admin::token_revoke))
        .routes(routes!(audit::versions_list))
        .routes(routes!(audit::version_get))
        .routes(routes!(audit::audit_replay))
        .routes(routes!(audit::audit_export))
        .routes(routes!(audit::audit_verify))
        .routes(routes!(audit::audit_disparity))
        .routes(routes!(audit::dashboard_get))
        .split_for_parts();
    // After the routes, whose parameters and schemas the constraints refine.
    utoipa::Modify::modify(&openapi::Constraints, &mut description);
    (router, description)
}

/// The OpenAPI 3.1 description of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().1
}

/// The whole application, ready to serve.
pub fn app(state: AppState) -> Router {
    // Install the recorder before the first request, or its metrics would go nowhere.
    metrics_handle();
    let (router, openapi) = routes();
    let openapi = Arc::new(
        openapi
            .to_pretty_json()
            .expect("the API description serialises"),
    );
    router
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::Extension(ops::OpenApiJson(openapi)))
        .layer(DefaultBodyLimit::max(state.body_limit))
        .layer(axum::middleware::from_fn(observe::observe))
        .with_state(state)
}

/// Serves `app(state)` over HTTP/1.1 on `listener` until `shutdown` resolves, then stops
/// accepting, lets the requests in flight finish (for at most `options.shutdown_grace`) and
/// returns; the store flushes when the last handle to the state is dropped. At most
/// `options.max_connections` are served at once: the next is accepted when one closes.
///
/// Not `axum::serve`: it gives hyper no timer, so hyper's header read timeout never runs and a
/// client that opens a connection and sends nothing (or half a head) holds it for ever.
/// One connection counted in `safeguard_connections_open` for as long as it lives, however its
/// task ends (finished, or aborted at the end of the shutdown grace).
struct OpenConnection;

impl OpenConnection {
    fn counted() -> Self {
        metrics::gauge!("safeguard_connections_open").increment(1.0);
        OpenConnection
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!("safeguard_connections_open").decrement(1.0);
    }
}

pub async fn serve(
    mut listener: TcpListener,
    state: AppState,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let ready = Arc::clone(&state.ready);
    let app = app(state);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.read_timeout);
    let slots = Arc::new(tokio::sync::Semaphore::new(options.max_connections));
    metrics::gauge!("safeguard_connections_max").set(options.max_connections as f64);
    // When every place was last said to be taken: said at most once a minute.
    let mut full_since: Option<std::time::Instant> = None;
    let graceful = GracefulShutdown::new();
    // Every connection's task, so that none outlives `serve`: each holds the state, and the
    // store is only closed (its queue written out) once the last handle to it is gone.
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            // Shutdown first, every turn: a steady stream of connections must not keep it
            // from being heard.
            biased;
            () = &mut shutdown => break,
            // `Listener::accept` retries by itself on errors (waiting a second when out of file
            // descriptors), as `axum::serve` does.
            (slot, (stream, _)) = async {
                // Every place taken: the next connection waits until one closes. Counted each
                // time it happens; said at most once a minute.
                if slots.available_permits() == 0 {
                    metrics::counter!("safeguard_connections_full_total").increment(1);
                    if full_since.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                        full_since = Some(std::time::Instant::now());
                        tracing::warn!(
                            max_connections = options.max_connections,
                            "every connection place is taken: new connections wait until one closes (an idle client holds its place for up to read_timeout_secs)"
                        );
                    }
                }
                let slot = Arc::clone(&slots).acquire_owned().await.expect("the semaphore is never closed");
                (slot, Listener::accept(&mut listener).await)
            } => {
                while connections.try_join_next().is_some() {}
                let open = OpenConnection::counted();
                let service = TowerToHyperService::new(app.clone());
                // A client that stops reading its answer is cut off like one that stops sending
                // its request: it would otherwise hold the connection, and the answer's memory.
                let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
                stream.set_write_timeout(Some(options.read_timeout));
                let io = TokioIo::new(Box::pin(stream));
                let connection = graceful.watch(http.serve_connection(io, service));
                connections.spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    drop(slot);
                    drop(open);
                });
            }
        }
    }
    drop(listener);
    ready.store(false, Ordering::SeqCst);
    tracing::info!(
        connections = graceful.count(),
        "shutting down: finishing requests in flight"
    );
    if tokio::time::timeout(options.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_secs = options.shutdown_grace.as_secs_f64(),
            "requests still in flight after the shutdown grace period: closing their connections"
        );
    }
    connections.shutdown().await;
    Ok(())
}
