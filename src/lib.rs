//! # safeguard
//!
//! Structured decision-making for child safeguarding: assessment **tools** (a JSON Schema form
//! plus a Rhai scoring script) turn a completed form into a **decision** with a level, the reasons
//! that moved it, a recommendation for professionals and a plain explanation for the family.
//!
//! # Layout
//!
//! - [`catalog`]: loads tools (and, later, plugins) from disk into an immutable [`Catalog`],
//!   reporting every load problem with file, line and column; computes each tool's digest.
//! - [`forms`]: compiles a tool's JSON Schema once and validates submitted forms against it.
//! - [`rules`]: the Rhai sandbox: one bounded engine, precompiled scripts, the outcome contract.
//! - [`plain`]: the plain-language bar every family explanation must meet.
//! - [`check`]: `safeguard check`, which runs every tool's cases and reports coverage.
//! - [`cli`]: the `safeguard` command line.

pub mod api;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod check;
pub mod cli;
pub mod config;
pub mod decisions;
pub mod demo;
pub mod forms;
pub mod plain;
pub mod rules;
pub mod server;
pub mod store;
pub mod whole;

pub use catalog::{Catalog, LoadError, Tool, ToolMeta};
pub use rules::{EvalError, Outcome, Reason};
