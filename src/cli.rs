//! The `safeguard` command line: one subcommand per job, each a thin call into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "safeguard",
    version,
    about = "Structured decision-making for child safeguarding"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load every tool, compile every schema and script, run every case and report coverage.
    Check {
        /// The catalog root: the folder holding tool-schemas/, rules/ and tests/cases/.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Run only this tool's cases.
        #[arg(long)]
        tool: Option<String>,
    },
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { dir, tool } => {
            let report = crate::check::run(&dir, tool.as_deref());
            print!("{report}");
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
