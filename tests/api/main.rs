//! The one integration test binary: a single link for every integration test, with the helpers
//! they share. `engine` drives the library on the repository's catalog and on the fixture
//! catalogs under `tests/fixtures/`; `cli` runs the real `safeguard` binary; `crash` runs it as a
//! server and kills it with SIGKILL under load; `lifecycle` signals it to stop and reads its log; the rest start the real server on 127.0.0.1:0
//! over a fresh sled directory (`common::spawn_app`) and talk HTTP.

mod audit;
mod auth;
mod canonical;
mod cases;
mod cli;
mod common;
mod crash;
mod decisions;
mod durability;
mod engine;
mod http;
mod lifecycle;
mod openapi;
mod plugins;

use std::fs;
use std::path::{Path, PathBuf};

use safeguard::catalog::{RULES_DIR, SCHEMA_DIR};

/// The repository root, which is also the catalog root of the tools the service ships.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The catalog root of the hostile fixture tools: scripts that attack the sandbox, plus
/// `well-behaved`, which keeps the contract.
pub fn hostile_root() -> PathBuf {
    repo_root().join("tests/fixtures/hostile")
}

/// The catalog root of the broken fixture `name`, which has exactly one problem.
pub fn broken_root(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/broken").join(name)
}

/// A fresh catalog root holding only the tool `id` copied from the catalog at `from`, so a test
/// can rewrite its files or add cases without touching the fixtures.
pub fn copy_tool(from: &Path, id: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (folder, extension) in [(SCHEMA_DIR, "json"), (RULES_DIR, "rhai")] {
        let file = format!("{id}.{extension}");
        fs::create_dir_all(dir.path().join(folder)).expect("create the tool folder");
        fs::copy(
            from.join(folder).join(&file),
            dir.path().join(folder).join(&file),
        )
        .unwrap_or_else(|e| panic!("copy {folder}/{file}: {e}"));
    }
    dir
}
