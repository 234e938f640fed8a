//! The `safeguard` binary: parse the command line and hand over to the library.

fn main() -> std::process::ExitCode {
    safeguard::cli::main()
}
