//! The `safeguard` binary: parse the command line and hand over to the library.

/// mimalloc rather than the system allocator: the server allocates and frees many small
/// objects on every request (the rules engine's values, JSON), often on different threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    safeguard::cli::main()
}
