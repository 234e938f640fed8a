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
    #[arg(long, global = true, env = "SAFEGUARD_CONFIG")]
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
        /// The catalog root: the folder holding tool-schemas/, rules/ and tests/cases/.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Run only this tool's cases.
        #[arg(long)]
        tool: Option<String>,
    },
    /// Print a JSON Schema: `plugin` for plugins/<name>/plugin.toml.
    Schema {
        #[arg(value_parser = ["plugin"])]
        which: String,
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
    let result = match cli.command {
        Command::Check { dir, tool } => {
            let report = crate::check::run(&dir, tool.as_deref());
            print!("{report}");
            return if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Command::Serve => serve(cli.config),
        Command::Schema { .. } => {
            let schema = crate::catalog::manifest_schema();
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).expect("a schema serialises")
            );
            Ok(())
        }
        Command::Token {
            command: TokenCommand::Create { role, subject },
        } => token_create(cli.config, role, &subject),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(file: Option<PathBuf>) -> anyhow::Result<Config> {
    Config::load(file.as_deref()).context("the configuration is invalid")
}

fn serve(file: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load_config(file)?;
    init_tracing(config.log_format);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let server = Server::build(&config).await?;
        if let Some(token) = &server.first_admin_token {
            println!("No tokens were configured, so an admin token was created. It is shown only this once:\n\n    {token}\n\nCreate tokens for people with `safeguard token create --role ROLE --subject NAME`.");
        }
        tracing::info!(address = %server.local_addr(), data = %config.data_dir.display(), tools = %config.tools_dir.display(), "serving");
        server.run_until_stopped(shutdown_signal()).await?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

fn token_create(file: Option<PathBuf>, role: Role, subject: &str) -> anyhow::Result<()> {
    let config = load_config(file)?;
    let store = SledStore::open(&config.data_dir, config.store_options()).with_context(|| {
        format!(
            "cannot open the store in {} (is the service running?)",
            config.data_dir.display()
        )
    })?;
    let (token, record) = auth::issue(role, subject);
    store.put_token(&record)?;
    println!("{token}");
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
