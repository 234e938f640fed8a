//! The `safeguard` command line: one subcommand per job, each a thin call into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::auth::{self, Role};
use crate::config::{Config, LogFormat};
use crate::server::{shutdown_signal, Server};
use crate::store::{SledStore, Store};

#[derive(Debug, Parser)]
#[command(
    name = "safeguard",
    version,
    about = "Structured decision-making for child safeguarding"
)]
struct Cli {
    /// A TOML configuration file (default: ./safeguard.toml when it exists). SAFEGUARD_*
    /// environment variables override it.
    #[arg(long, global = true, env = crate::config::FILE_VARIABLE)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API (default: tools from this folder, data in ./data, 127.0.0.1:8080).
    Serve,
    /// Load every tool, compile every schema and script, run every case and report coverage.
    Check {
        /// The catalog root: the folder holding tool-schemas/, rules/ and tests/cases/ (default:
        /// the configured tools_dir, the working folder unless set).
        dir: Option<PathBuf>,
        /// Run only this tool's cases.
        #[arg(long)]
        tool: Option<String>,
    },
    /// Print a JSON Schema: `plugin` for plugins/<name>/plugin.toml.
    Schema {
        #[arg(value_parser = ["plugin"])]
        which: String,
    },
    /// Re-run stored decisions against the version that made them, another stored version, or
    /// candidate rules/params/schema patch, and show what would change.
    Replay(ReplayArgs),
    /// Write stored revisions as JSON Lines (stdout, or --out).
    Export {
        #[command(flatten)]
        filter: FilterArgs,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Walk the whole hash chain and report the first break; exits non-zero if there is one.
    Verify,
    /// Fill the store with generated decisions so people can try the product (run while the
    /// service is stopped).
    DemoData {
        /// How many decisions.
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// The generator's seed: the same seed and catalog give the same forms.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Only this tool's decisions (repeat for several; default: every tool served).
        #[arg(long = "tool", value_name = "TOOL")]
        tools: Vec<String>,
    },
    /// Manage API tokens (run while the service is stopped: the store is locked while it runs).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it once; only its hash is stored.
    Create {
        /// practitioner, supervisor, auditor or admin.
        #[arg(long)]
        role: Role,
        /// Who holds it: recorded as the actor of everything done with it.
        #[arg(long)]
        subject: String,
    },
    /// List every token: its id, role, subject, when it was created and revoked. Tokens
    /// themselves are never stored, so never shown.
    List,
    /// Revoke a token: from the next start it is refused. Its record is kept.
    Revoke {
        /// The token's id from `token list` (or a longer prefix of its hash).
        id: String,
    },
}

#[derive(Debug, clap::Args)]
struct FilterArgs {
    /// Only this tool's decisions.
    #[arg(long)]
    tool: Option<String>,
    /// Only decisions whose level in force is this.
    #[arg(long)]
    level: Option<String>,
    /// Only this case's decisions.
    #[arg(long)]
    case: Option<String>,
    /// Recorded at or after this time (RFC 3339).
    #[arg(long)]
    from: Option<String>,
    /// Recorded before this time (RFC 3339).
    #[arg(long)]
    to: Option<String>,
}

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("candidate").multiple(true).args(["rules", "params", "schema_patch"]))]
struct ReplayArgs {
    /// The tool whose decisions are replayed.
    #[arg(long)]
    tool: String,
    /// Only decisions whose level in force is this.
    #[arg(long)]
    level: Option<String>,
    /// Only this case's decisions.
    #[arg(long)]
    case: Option<String>,
    /// Recorded at or after this time (RFC 3339).
    #[arg(long)]
    from: Option<String>,
    /// Recorded before this time (RFC 3339).
    #[arg(long)]
    to: Option<String>,
    /// Replay against this stored version instead of each decision's own.
    #[arg(long, conflicts_with = "candidate")]
    version: Option<String>,
    /// Candidate rules script.
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Candidate params, a JSON file merged over the tool's params.
    #[arg(long)]
    params: Option<PathBuf>,
    /// Candidate schema merge patch, a JSON file.
    #[arg(long)]
    schema_patch: Option<PathBuf>,
    /// Apply the candidate (--rules, --params, --schema-patch) to this stored version rather
    /// than the one served now.
    #[arg(long, requires = "candidate")]
    base: Option<String>,
    /// Changed decisions to skip before the page shown.
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Changed decisions to show (at most 1000).
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

impl clap::builder::ValueParserFactory for Role {
    type Parser = clap::builder::ValueParser;
    fn value_parser() -> Self::Parser {
        clap::builder::ValueParser::new(|s: &str| s.parse::<Role>())
    }
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Every command ends here: an error is printed in one place, as one line of causes.
    let result = match cli.command {
        Command::Check { dir, tool } => check(cli.config, dir, tool.as_deref()),
        Command::Serve => serve(cli.config).map(|()| ExitCode::SUCCESS),
        Command::Schema { .. } => {
            let schema = crate::catalog::manifest_schema();
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).expect("a schema serialises")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay(args) => replay(cli.config, args).map(|()| ExitCode::SUCCESS),
        Command::Export { filter, out } => {
            export(cli.config, filter, out).map(|()| ExitCode::SUCCESS)
        }
        Command::Verify => verify(cli.config),
        Command::DemoData { count, seed, tools } => {
            demo_data(cli.config, count, seed, &tools).map(|()| ExitCode::SUCCESS)
        }
        Command::Token { command } => match command {
            TokenCommand::Create { role, subject } => {
                token_create(cli.config, role, &subject).map(|()| ExitCode::SUCCESS)
            }
            TokenCommand::List => token_list(cli.config).map(|()| ExitCode::SUCCESS),
            TokenCommand::Revoke { id } => {
                token_revoke(cli.config, &id).map(|()| ExitCode::SUCCESS)
            }
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(file: Option<PathBuf>) -> anyhow::Result<Config> {
    Config::load(file.as_deref()).map_err(|e| {
        anyhow::anyhow!(
            "the configuration is invalid: {}",
            crate::config::describe(&e)
        )
    })
}

fn serve(file: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load_config(file)?;
    init_tracing(config.log_format);
    #[cfg(unix)]
    match crate::server::raise_open_files_limit() {
        Ok(limit) if limit < config.max_connections as u64 + crate::server::RESERVED_FILES => {
            tracing::warn!(
                open_files = limit,
                max_connections = config.max_connections,
                "the open-file limit is below max_connections plus what the store needs: lower max_connections or raise the limit (ulimit -n, LimitNOFILE)"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
    #[cfg(unix)]
    crate::server::ignore_file_size_signal().context("cannot ignore SIGXFSZ")?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let stop = shutdown_signal().context("cannot listen for SIGTERM and Ctrl-C")?;
        let mut server = Server::build(&config).await?;
        if let Some(token) = server.first_admin_token() {
            // Shown before it is stored: a token that could not be shown is not made, so the
            // next start makes one again instead of leaving the store with an admin no one knows.
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            writeln!(out, "No tokens were configured, so an admin token was created. It is shown only this once:\n\n    {token}\n\nCreate tokens for people with it over the API (`POST /v1/admin/tokens`), or, while the service is stopped, with `safeguard token create --role ROLE --subject NAME`.")
                .and_then(|()| out.flush())
                .context("cannot show the first admin token on standard output, so none was made; start again with standard output open")?;
            server.keep_first_admin_token().context(
                "the admin token shown above could not be stored and does not work; start again",
            )?;
        }
        tracing::info!(address = %server.local_addr(), data = %config.data_dir.display(), tools = %config.tools_dir.display(), "serving");
        server.run_until_stopped(stop).await?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

/// The store, for a command that must run while the service is stopped.
fn open_stopped_store(file: Option<PathBuf>) -> anyhow::Result<SledStore> {
    open_store(&load_config(file)?)
}

/// As [`open_stopped_store`], for a command that only makes sense on a store that exists.
fn open_existing_stopped_store(file: Option<PathBuf>) -> anyhow::Result<SledStore> {
    open_existing_store(&load_config(file)?)
}

fn token_create(file: Option<PathBuf>, role: Role, subject: &str) -> anyhow::Result<()> {
    auth::check_subject(subject).map_err(anyhow::Error::msg)?;
    let store = open_stopped_store(file)?;
    if let Some(alike) = auth::look_alike(&store.tokens()?, subject) {
        anyhow::bail!(alike.why());
    }
    let (token, record) = auth::issue(role, subject);
    store.put_token(&record)?;
    println!("{token}");
    Ok(())
}

fn token_list(file: Option<PathBuf>) -> anyhow::Result<()> {
    let store = open_existing_stopped_store(file)?;
    let mut records = store.tokens()?;
    records.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.hash.cmp(&b.hash)));
    println!(
        "{:<w$}  {:<12}  {:<20}  {:<20}  REVOKED",
        "ID",
        "ROLE",
        "CREATED",
        "SUBJECT",
        w = auth::ID_LEN
    );
    for r in &records {
        println!(
            "{:<w$}  {:<12}  {:<20}  {:<20}  {}",
            r.id(),
            r.role.as_str(),
            r.created_at,
            r.subject,
            r.revoked_at.as_deref().unwrap_or("-"),
            w = auth::ID_LEN
        );
    }
    // A subject from before today's rules may look like another: say so, apart from the table.
    for (r, why) in auth::refused_subjects(&records) {
        eprintln!(
            "warning: the subject of token {} ({:?}) would be refused today: {why}",
            r.id(),
            r.subject
        );
    }
    Ok(())
}

fn token_revoke(file: Option<PathBuf>, id: &str) -> anyhow::Result<()> {
    let store = open_existing_stopped_store(file)?;
    let revoked = auth::revoke(&store.tokens()?, id)?;
    store.put_token(&revoked)?;
    println!(
        "revoked {} ({}, {}): refused from the next start",
        revoked.id(),
        revoked.role,
        revoked.subject
    );
    Ok(())
}

/// The catalog `config` names, or every problem it has.
fn load_catalog(config: &Config) -> anyhow::Result<crate::catalog::Catalog> {
    crate::catalog::Catalog::load(&config.tools_dir).map_err(|errors| {
        anyhow::anyhow!(
            "the catalog has problems:\n{}",
            errors
                .iter()
                .map(|e| format!("  {e}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

/// The store, for a command of its own (the service holds it while it runs).
fn open_store(config: &Config) -> anyhow::Result<SledStore> {
    SledStore::open(&config.data_dir, config.store_options())
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))
}

/// The store in the configured folder, which must exist: reading a mistyped folder would
/// otherwise create an empty store there and report on it (a whole chain of 0 revisions).
fn open_existing_store(config: &Config) -> anyhow::Result<SledStore> {
    Ok(SledStore::open_existing(
        &config.data_dir,
        config.store_options(),
    )?)
}

fn counter(message: &'static str, total: Option<u64>) -> indicatif::ProgressBar {
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n).with_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {bar:40} {pos}/{len} ({per_sec}, {eta} left)",
            )
            .expect("a valid template"),
        ),
        None => indicatif::ProgressBar::new_spinner().with_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} {pos} ({per_sec})")
                .expect("a valid template"),
        ),
    };
    bar.with_message(message)
}

fn replay(file: Option<PathBuf>, args: ReplayArgs) -> anyhow::Result<()> {
    use crate::audit::replay::{self, ReplayRequest, Target};
    let config = load_config(file)?;
    let catalog = load_catalog(&config)?;
    let store = open_existing_store(&config)?;
    let read_json = |path: &PathBuf| -> anyhow::Result<serde_json::Value> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
    };
    let against = if let Some(digest) = args.version {
        Target::Version { digest }
    } else if args.rules.is_some() || args.params.is_some() || args.schema_patch.is_some() {
        Target::Candidate {
            base: args.base,
            rules: args
                .rules
                .map(|p| {
                    std::fs::read_to_string(&p)
                        .with_context(|| format!("cannot read {}", p.display()))
                })
                .transpose()?,
            params: args.params.as_ref().map(read_json).transpose()?,
            schema_patch: args.schema_patch.as_ref().map(read_json).transpose()?,
        }
    } else {
        Target::Recorded {}
    };
    let request = ReplayRequest {
        tool: args.tool,
        level: args.level,
        case: args.case,
        from: args.from,
        to: args.to,
        against,
        offset: args.offset,
        limit: args.limit,
    };
    let bar = counter("replaying", None);
    let report = replay::replay(
        &store,
        &catalog,
        &request,
        crate::rules::Limits::default(),
        &|n| bar.set_position(n),
        &crate::audit::Cancel::never(),
    )
    .map_err(|e| match e {
        replay::ReplayError::CandidateInvalid(errors) => anyhow::anyhow!(
            "the candidate does not load:\n{}",
            errors
                .iter()
                .map(|e| format!("  {e}"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
        other => anyhow::anyhow!(other),
    })?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", crate::audit::replay::render(&report));
    }
    Ok(())
}

fn export(file: Option<PathBuf>, filter: FilterArgs, out: Option<PathBuf>) -> anyhow::Result<()> {
    use std::io::Write;
    let config = load_config(file)?;
    let store = open_existing_store(&config)?;
    let filter = crate::audit::export::Filter {
        tool: filter.tool,
        level: filter.level,
        case: filter.case,
        from: filter.from,
        to: filter.to,
    };
    crate::audit::export::check_filter(&store, &filter)?;
    let mut sink: Box<dyn Write> = match &out {
        Some(path) => Box::new(std::io::BufWriter::new(
            // Children's records: readable by the one who exported them only.
            std::os::unix::fs::OpenOptionsExt::custom_flags(
                std::os::unix::fs::OpenOptionsExt::mode(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true),
                    0o600,
                ),
                // Not through a link: in a shared folder, another user's link would have the
                // export overwrite (and make private) a file of the link's choosing.
                nix::fcntl::OFlag::O_NOFOLLOW.bits(),
            )
            .open(path)
            .and_then(|file| {
                // `mode` applies only to a file it creates; one that was there is made private too.
                file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
                Ok(file)
            })
            .map_err(|e| match e.raw_os_error() {
                Some(code) if code == nix::errno::Errno::ELOOP as i32 => anyhow::anyhow!(
                    "cannot write {}: it is a symbolic link, which an export does not follow; name the file itself",
                    path.display()
                ),
                _ => anyhow::Error::new(e).context(format!("cannot create {}", path.display())),
            })?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let bar = counter("exporting", None);
    for line in crate::audit::export::lines(&store, filter) {
        sink.write_all(&line?)?;
        bar.inc(1);
    }
    sink.flush()?;
    bar.finish_and_clear();
    eprintln!("exported {} revision(s)", bar.position());
    Ok(())
}

fn demo_data(file: Option<PathBuf>, count: u64, seed: u64, tools: &[String]) -> anyhow::Result<()> {
    let config = load_config(file)?;
    let catalog = load_catalog(&config)?;
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(open_store(&config)?);
    let decisions = std::sync::Arc::new(crate::decisions::Decisions::new(catalog, store)?);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let bar = counter("generating", Some(count));
    let progress_bar = bar.clone();
    let started = std::time::Instant::now();
    let filled = runtime.block_on(crate::demo::fill(
        decisions.clone(),
        count,
        seed,
        tools,
        move |n| progress_bar.set_position(n),
    ))?;
    bar.finish_and_clear();
    // Dropping the last handle closes the store: its writer commits what is queued and stops.
    drop(decisions);
    println!(
        "{} decision(s), {} override(s), {} approval(s) in {:.1}s; {} form(s) skipped",
        filled.decisions,
        filled.overrides,
        filled.approvals,
        started.elapsed().as_secs_f64(),
        filled.skipped
    );
    Ok(())
}

/// Checks the catalog in `dir`, or in the configured tools_dir; fails when any check does.
fn check(
    file: Option<PathBuf>,
    dir: Option<PathBuf>,
    tool: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let dir = match dir {
        Some(dir) => dir,
        None => load_config(file)?.tools_dir,
    };
    let report = crate::check::run(&dir, tool);
    print!("{report}");
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Walks the whole chain; fails when it is broken.
fn verify(file: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = load_config(file)?;
    let store = open_existing_store(&config)?;
    let bar = counter("verifying", Some(store.head()?.seq));
    let started = std::time::Instant::now();
    let report = crate::audit::verify::verify(&store, &|n| bar.set_position(n))?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    match &report.first_break {
        None => println!(
            "the chain is whole: {} revision(s) verified in {seconds:.2}s ({:.0}/s); head {} {}",
            report.revisions,
            report.revisions as f64 / seconds.max(1e-9),
            report.head.seq,
            report.head.hash
        ),
        Some(b) => println!("the chain is BROKEN at revision {}: {}", b.seq, b.reason),
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to standard error, keeping standard output for what a command prints (the first
    // admin token of `serve`); colours only where a person reads them.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
