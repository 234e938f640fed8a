//! Putting the service together: load the catalog, open the store, load the tokens, bind, and
//! serve until told to stop. `main` and the tests both start the service through [`Server`].

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::api::{self, AppState, ServeOptions};
use crate::auth::{self, Role, TokenRecord, Tokens};
use crate::catalog::{Catalog, LoadError};
use crate::config::Config;
use crate::decisions::Decisions;
use crate::store::{SledStore, Store, StoreError};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the catalog has {} problem(s); nothing is served until they are fixed:\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Catalog(Vec<LoadError>),
    /// The tool cases that pin what the catalog decides do not pass: it would decide otherwise
    /// than its owners tested, so it is not served (a reload refuses the same catalog).
    #[error("{} tool case(s) fail; nothing is served until they pass (`safeguard check` shows the report):\n{}", .0.len(), .0.iter().map(|(at, what)| format!("  {at}: {what}")).collect::<Vec<_>>().join("\n"))]
    Cases(Vec<(String, String)>),
    // Not `#[from]`: that would also make the store error this one's source, and the chain
    // printed at exit would say it twice.
    #[error("cannot open the store: {0}")]
    Store(StoreError),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("cannot catch SIGHUP: {0}")]
    Signal(std::io::Error),
}

impl From<StoreError> for StartError {
    fn from(e: StoreError) -> Self {
        StartError::Store(e)
    }
}

/// Why a service that started did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("serving failed: {0}")]
    Serve(#[from] std::io::Error),
    /// The store stopped taking writes while the service ran (every write after it was refused
    /// with a 503). It stopped in order, but a supervisor must hear that it did not run well.
    #[error("stopped after the store failed: {0}")]
    StoreFailed(StoreError),
}

/// A built service, bound and ready to run.
pub struct Server {
    state: AppState,
    store: Arc<SledStore>,
    listener: TcpListener,
    options: ServeOptions,
    /// On a first run with no tokens: the admin token to show once, and its record, stored by
    /// [`Server::keep_first_admin_token`] once it has been shown.
    first_admin: Option<(String, TokenRecord)>,
    /// SIGHUP, caught from the start of [`Server::build`]: one that comes while the service is
    /// starting reloads the catalog once it serves, instead of ending the process.
    #[cfg(unix)]
    hangups: tokio::signal::unix::Signal,
}

impl Server {
    /// Loads everything `config` names and binds its address (port 0 picks a free one).
    pub async fn build(config: &Config) -> Result<Server, StartError> {
        #[cfg(unix)]
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(StartError::Signal)?;
        // The catalog goes live at start only as a reload would put it in force: loaded whole,
        // its cases passing. Compiling and running them is CPU work, off the async threads.
        let root = config.tools_dir.clone();
        let (catalog, gate) = tokio::task::spawn_blocking(move || {
            let catalog = Catalog::load(&root).map_err(StartError::Catalog)?;
            let gate = crate::check::gate(&root, &catalog);
            Ok::<_, StartError>((catalog, gate))
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        if !gate.broken.is_empty() {
            return Err(StartError::Cases(gate.broken));
        }
        tracing::info!(
            tools = catalog.tools().count(),
            cases_run = gate.cases_run,
            "catalog loaded"
        );
        gate.warn_untested();
        let store = Arc::new(SledStore::open(&config.data_dir, config.store_options())?);
        // A store that has lost revisions is served by no one: it would refuse every write, and
        // an operator must choose what to restore.
        if let Some(lost @ StoreError::LostRevisions(_)) = store.write_failure() {
            return Err(lost.into());
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| StartError::Bind(config.listen, e))?;
        let decisions = Arc::new(Decisions::new(catalog, store.clone() as Arc<dyn Store>)?);
        // A store that has never had a token gets an admin token, stored only once it has been
        // shown (`keep_first_admin_token`): a token nobody saw would lock the store for good.
        // One whose tokens were all revoked stays locked until someone with access to it
        // creates another.
        let records = store.tokens()?;
        // Subjects are checked when a token is made; one made before today's rules is kept (its
        // subject is on record), and said here so an admin can reissue it.
        for (record, why) in auth::refused_subjects(&records) {
            tracing::warn!(
                token = record.id(),
                subject = ?record.subject,
                "a token's subject would be refused today ({why}): decide the overrides pending under this subject, then issue its holder a new token and revoke this one (four eyes compare subjects, so under a new subject its holder could approve an override made under this one)"
            );
        }
        let first_admin = records
            .is_empty()
            .then(|| auth::issue(Role::Admin, "admin"));
        let tokens = Tokens::new(records);
        let options = config.serve_options();
        let state = AppState::new(
            decisions,
            tokens,
            config.body_limit_bytes,
            options.read_timeout,
            config.tools_dir.clone(),
        );
        Ok(Server {
            state,
            store,
            listener,
            options,
            first_admin,
            #[cfg(unix)]
            hangups,
        })
    }

    /// The admin token of a first run with no tokens, to be shown once before
    /// [`Server::keep_first_admin_token`] stores it.
    pub fn first_admin_token(&self) -> Option<&str> {
        self.first_admin.as_ref().map(|(token, _)| token.as_str())
    }

    /// Stores the first admin token, once shown, and accepts it at once.
    pub fn keep_first_admin_token(&mut self) -> Result<(), StoreError> {
        match self.first_admin.take() {
            Some((_, record)) => self.keep_token(record),
            None => Ok(()),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Creates a token, stores its hash durably and accepts it at once; returns the token. The
    /// subject is not checked (`auth::check_subject`, `auth::look_alike`): for tests and other
    /// callers that choose it themselves.
    pub fn add_token(&self, role: Role, subject: &str) -> Result<String, StoreError> {
        let (token, record) = auth::issue(role, subject);
        self.keep_token(record)?;
        Ok(token)
    }

    /// Stores a token's record durably and accepts the token at once.
    fn keep_token(&self, record: TokenRecord) -> Result<(), StoreError> {
        self.store.put_token(&record)?;
        self.state
            .tokens
            .write()
            .expect("token lock poisoned")
            .add(record);
        Ok(())
    }

    /// Serves until `shutdown` resolves, then finishes the requests in flight and closes the
    /// store, which writes out every queued append before this returns. Stopping after the store
    /// failed is an error, so the exit status of `serve` says the service did not run well.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), RunError> {
        let Server {
            state,
            store,
            listener,
            options,
            #[cfg(unix)]
            hangups,
            ..
        } = self;
        #[cfg(unix)]
        let hangups = reload_on_hangup(hangups, state.clone());
        api::serve(listener, state, options, shutdown).await?;
        // Ended, and gone with its handle on the state, before the store is closed below.
        #[cfg(unix)]
        {
            hangups.abort();
            let _ = hangups.await;
        }
        // The last handle to the store closes it on a blocking thread: the writer is joined, so
        // a failure of the last appends it wrote is seen too.
        let failure = match Arc::try_unwrap(store) {
            Ok(store) => tokio::task::spawn_blocking(move || store.close()).await,
            // Someone still holds it (nothing does once serving has ended): it closes with them.
            Err(shared) => Ok(shared.write_failure()),
        }
        .map_err(std::io::Error::other)?;
        match failure {
            Some(e) => Err(RunError::StoreFailed(e)),
            None => Ok(()),
        }
    }
}

/// File descriptors kept for the store, the log and the rest, beside one per connection.
pub const RESERVED_FILES: u64 = 64;

/// Raises this process's soft limit on open files to its hard limit and returns the soft limit
/// now in force. Every connection is a file descriptor, and the store needs some too (it opens
/// files to `fdatasync` them): a soft limit of 1,024, common by default, is below what
/// `max_connections` allows, and running out would fail commits, not only new connections.
#[cfg(unix)]
pub fn raise_open_files_limit() -> Result<u64, nix::Error> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?.0)
}

/// Has a write past the file-size limit (`ulimit -f`) fail with `EFBIG` instead of ending the
/// process (SIGXFSZ's default action): the store then refuses writes with a clear answer and
/// keeps serving reads, as it does when the disk is full. Only the disposition of that one
/// signal changes.
#[cfg(unix)]
pub fn ignore_file_size_signal() -> Result<(), nix::Error> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: installing SIG_IGN runs no code of ours in a signal handler.
    unsafe { signal(Signal::SIGXFSZ, SigHandler::SigIgn) }.map(drop)
}

/// Listens for Ctrl-C (SIGINT) and SIGTERM from the moment it is called, not from the moment it
/// is first awaited: a signal that comes while the service is still starting stops it cleanly
/// too, instead of ending the process before its handler exists. Must be called within the
/// runtime. The future resolves on the first of the two.
#[cfg(unix)]
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
    })
}

/// Reloads the catalog on each SIGHUP, as `POST /v1/admin/reload` does, the outcome logged (a
/// daemon's usual answer to it; the default would end the process at once, cutting every
/// request in flight).
#[cfg(unix)]
fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    state: AppState,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the catalog");
            // The outcome is logged either way, as for a reload asked for over the API.
            let _ = api::reload(&state).await;
        }
    })
}

/// Ctrl-C, where there is no SIGTERM.
#[cfg(not(unix))]
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

#[cfg(all(test, unix))]
mod tests {
    use nix::sys::resource::{getrlimit, Resource};

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("the limit can be read");
        let now = super::raise_open_files_limit().expect("raising the soft limit is allowed");
        assert_eq!(now, hard);
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).expect("read").0, hard);
    }
}
