//! The rules sandbox: the only module that touches `rhai::Engine`.
//!
//! One engine is configured once per catalog with every bound set (Rhai's defaults for
//! operations and sizes are unlimited), `eval` disabled, `print`/`debug` silenced and module
//! imports served only from the catalog's own static resolver, never the file system. Each tool's
//! script is compiled once into a self-contained AST; `decide(form, params)` is then called on that
//! AST without re-running the script's top level, so a request pays only for the decision itself.
//!
//! What `decide` returns is checked against the outcome contract ([`outcome`]) before anyone
//! sees it: a breach is an error of the tool, never a decision.

mod convert;
mod imports;
mod outcome;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::module_resolvers::StaticModuleResolver;
use rhai::{CallFnOptions, Dynamic, Engine, EvalAltResult, Module, Position, Scope, AST};
use serde_json::Value;

pub use imports::{imports, Import};
pub use outcome::{Outcome, Reason};

use crate::forms::Violation;

/// The name of the function every rules script defines.
pub const ENTRY_POINT: &str = "decide";

/// The bounds every script runs within. The defaults leave a realistic tool two orders of
/// magnitude of headroom while stopping a runaway script within a few milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Rhai operations per call of `decide`; the real guard against infinite loops.
    pub max_operations: u64,
    /// Nested function calls, so unbounded recursion ends in an error, not a stack overflow.
    pub max_call_levels: usize,
    /// Expression nesting at top level and inside functions, checked when a script compiles.
    pub max_expr_depth: usize,
    pub max_function_expr_depth: usize,
    /// Largest string, array and map a script may build (bytes / elements).
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    /// Variables alive at once, and functions a script may define.
    pub max_variables: usize,
    pub max_functions: usize,
    /// Time for one call of `decide`. The operation count does not bound it alone: one built-in
    /// call (`"".pad(60000, "x")`) is one operation whatever it does.
    pub max_duration: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 200_000,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_function_expr_depth: 32,
            max_string_size: 64 * 1024,
            max_array_size: 10_000,
            max_map_size: 10_000,
            max_variables: 1_000,
            max_functions: 256,
            // A real decision takes tens of microseconds; a bound four orders of magnitude above
            // that never cuts one short, and stops a script that builds large values in a loop
            // within a second instead of the minutes its operation budget would allow.
            max_duration: Duration::from_secs(1),
        }
    }
}

/// Why a decision could not be made. Each variant is a different kind of problem for a different
/// person: the practitioner (an invalid form) or the tool owner (everything else).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// The form breaks the tool's schema; nothing was decided.
    #[error("the form is invalid ({} problem(s))", .0.len())]
    InvalidForm(Vec<Violation>),
    /// The script hit one of the sandbox's bounds.
    #[error("the rules hit a sandbox limit: {what}{}", at(*.line, *.column))]
    Limit {
        what: String,
        line: Option<usize>,
        column: Option<usize>,
    },
    /// The script raised an error (a type mismatch, a missing function, `throw`, ...).
    #[error("the rules failed: {message}{}", at(*.line, *.column))]
    Script {
        message: String,
        line: Option<usize>,
        column: Option<usize>,
    },
    /// The script returned something that breaks the outcome contract.
    #[error("the rules broke the outcome contract: {}", .0.join("; "))]
    Contract(Vec<String>),
}

fn at(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" (line {l}, column {c})"),
        (Some(l), None) => format!(" (line {l})"),
        _ => String::new(),
    }
}

/// A script that failed to compile, with where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    pub message: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

/// The configured engine plus the modules scripts may import.
pub struct Sandbox {
    engine: Engine,
    limits: Limits,
}

/// How many operations pass between two looks at the clock.
const CLOCK_EVERY: u64 = 256;

/// What the progress callback ends a call with when its time is up.
const OUT_OF_TIME: &str = "out of time";

thread_local! {
    /// When the call of `decide` running on this thread must end.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// What [`SlowWatch`] watches on this thread.
    static SLOW_WATCH: std::cell::RefCell<Option<Watch>> = const { std::cell::RefCell::new(None) };
}

/// A running call's watch for slowness: first the wall clock, read at every look anyway; once
/// that has passed `after`, this thread's CPU time, which must then grow by `after` again.
struct Watch {
    wall_at: Instant,
    after: Duration,
    cpu_at: Option<Duration>,
    flag: Arc<AtomicBool>,
}

/// The CPU time this thread has used. Not the wall clock: on a loaded machine a thread waits
/// for a core for tens of milliseconds at times, and a quick script must not count as slow
/// because its thread was kept waiting.
fn thread_cpu_time() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(Duration::ZERO, Duration::from)
}

/// Sets a flag once the script this thread runs while it is held has run longer than `after`
/// and then used `after` of CPU time more, seen from inside the run (at the same looks at the
/// clock as the time limit), so other threads can act on it before the script ends. A quick
/// script never reads its CPU time (a system call); a thread kept waiting for a core is not
/// taken for a slow script.
pub struct SlowWatch(());

impl SlowWatch {
    pub fn start(flag: &Arc<AtomicBool>, after: Duration) -> SlowWatch {
        SLOW_WATCH.set(Some(Watch {
            wall_at: Instant::now() + after,
            after,
            cpu_at: None,
            flag: Arc::clone(flag),
        }));
        SlowWatch(())
    }
}

impl Drop for SlowWatch {
    fn drop(&mut self) {
        SLOW_WATCH.set(None);
    }
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sandbox")
    }
}

/// A compiled rules script.
#[derive(Debug, Clone)]
pub struct Script {
    ast: Arc<AST>,
}

impl Sandbox {
    /// An engine with every bound of `limits` set and nothing importable.
    pub fn new(limits: Limits) -> Self {
        Self::with_resolver(limits, StaticModuleResolver::new())
    }

    /// An engine whose scripts may `import` each of `sources` by its key (a core tool id).
    /// A source that does not compile is left out: it is reported where its own tool loads, and
    /// an import of it then fails with "module not found".
    pub fn with_modules(limits: Limits, sources: &BTreeMap<String, String>) -> Self {
        let plain = Self::new(limits);
        let mut resolver = StaticModuleResolver::new();
        for (path, source) in sources {
            let Ok(ast) = plain.engine.compile(source) else {
                continue;
            };
            if let Ok(module) = Module::eval_ast_as_new(Scope::new(), &ast, &plain.engine) {
                resolver.insert(path.as_str(), module);
            }
        }
        Self::with_resolver(limits, resolver)
    }

    fn with_resolver(limits: Limits, modules: StaticModuleResolver) -> Self {
        let mut engine = Engine::new();
        engine
            .set_max_operations(limits.max_operations)
            .set_max_call_levels(limits.max_call_levels)
            .set_max_expr_depths(limits.max_expr_depth, limits.max_function_expr_depth)
            .set_max_string_size(limits.max_string_size)
            .set_max_array_size(limits.max_array_size)
            .set_max_map_size(limits.max_map_size)
            .set_max_variables(limits.max_variables)
            .set_max_functions(limits.max_functions)
            .set_max_modules(16)
            // Undeclared variables are compile errors: a typo is caught by `check`, not by a
            // practitioner's request.
            .set_strict_variables(true)
            .set_module_resolver(modules)
            // No string interning. Rhai interns every interpolated string, every string stored in
            // a variable and every `type_of` result in one cache per engine behind a write lock
            // that every request thread takes; once the cache is full (256 strings, soon reached
            // by the many short texts a decision builds) each new string evicts by scanning the
            // whole cache. Interning only saves memory, and a decision's strings die with it.
            .set_max_strings_interned(0)
            .on_print(|_| {})
            .on_debug(|_, _, _| {});
        // The clock is read once every `CLOCK_EVERY` operations, against the deadline the calling
        // thread set when it called `decide`.
        engine.on_progress(|operations| {
            if operations % CLOCK_EVERY != 0 {
                return None;
            }
            let now = Instant::now();
            SLOW_WATCH.with_borrow_mut(|watch| {
                let Some(watch) = watch.as_mut().filter(|w| now > w.wall_at) else {
                    return;
                };
                if watch.flag.load(Ordering::Relaxed) {
                    return;
                }
                match watch.cpu_at {
                    None => watch.cpu_at = Some(thread_cpu_time() + watch.after),
                    Some(at) if thread_cpu_time() > at => watch.flag.store(true, Ordering::Relaxed),
                    Some(_) => {}
                }
            });
            let out_of_time = DEADLINE.get().is_some_and(|deadline| now > deadline);
            if out_of_time {
                // Whatever its CPU time said so far: it ran to the time limit.
                SLOW_WATCH.with_borrow(|watch| {
                    if let Some(watch) = watch {
                        watch.flag.store(true, Ordering::Relaxed);
                    }
                });
            }
            out_of_time.then(|| Dynamic::from(OUT_OF_TIME))
        });
        // `eval` would run code that was never compiled, checked or digested.
        engine.disable_symbol("eval");
        Sandbox { engine, limits }
    }

    /// The largest form values its scripts can hold: what a form must stay within.
    pub fn form_bounds(&self) -> crate::forms::Bounds {
        crate::forms::Bounds {
            text_bytes: self.limits.max_string_size,
            items: self.limits.max_array_size,
            fields: self.limits.max_map_size,
        }
    }

    /// A sandbox with default limits and nothing importable.
    pub fn with_defaults() -> Self {
        Self::new(Limits::default())
    }

    /// Compiles `source`, resolving its imports now so the AST carries the exact modules it was
    /// built with, and checks that it defines `decide(form, params)`.
    pub fn compile(&self, source: &str) -> Result<Script, CompileError> {
        let found = imports(source);
        if let Some(import) = found.iter().find(|i| !i.literal) {
            return Err(CompileError {
                message: "an import must name its module as a string literal (`import \"<tool-id>\" as core;`): a version records what its script imports, and an import computed while it runs could load what no version recorded".to_owned(),
                line: Some(import.line),
                column: Some(import.column),
            });
        }
        if let Some(import) = found.iter().find(|i| i.top_level) {
            return Err(CompileError {
                message: format!(
                    "`import \"{}\"` is at the top level, where it never runs: `decide` is called without re-running the script's top level; put the import inside `fn decide`",
                    import.path
                ),
                line: Some(import.line),
                column: Some(import.column),
            });
        }
        let ast = self
            .engine
            .compile_into_self_contained(&Scope::new(), source)
            .map_err(|e| {
                let (line, column) = position(e.position());
                CompileError {
                    message: describe(&e),
                    line,
                    column,
                }
            })?;
        if !ast
            .iter_functions()
            .any(|f| f.name == ENTRY_POINT && f.params.len() == 2)
        {
            return Err(CompileError {
                message: format!("the script does not define `fn {ENTRY_POINT}(form, params)`"),
                line: None,
                column: None,
            });
        }
        Ok(Script { ast: Arc::new(ast) })
    }

    /// Converts a JSON value (a tool's params) into the script's value type, once, at load time.
    pub fn to_dynamic(value: &Value) -> Dynamic {
        convert::to_dynamic(value)
    }

    /// Calls `decide(form, params)` and checks what it returns against the contract.
    pub fn decide(
        &self,
        script: &Script,
        form: &Value,
        params: &Dynamic,
        levels: &[impl AsRef<str>],
    ) -> Result<Outcome, EvalError> {
        let raw = self.call(script, convert::to_dynamic(form), params.clone())?;
        Outcome::from_dynamic(raw, levels).map_err(EvalError::Contract)
    }

    /// Calls `decide` and returns its raw result: split out so benchmarks can time the script
    /// alone.
    pub fn call(
        &self,
        script: &Script,
        form: Dynamic,
        params: Dynamic,
    ) -> Result<Dynamic, EvalError> {
        // `eval_ast(false)`: the top level ran once when the script was compiled into a
        // self-contained AST; re-running it per request would only cost time.
        let options = CallFnOptions::new().eval_ast(false).rewind_scope(true);
        DEADLINE.set(Some(Instant::now() + self.limits.max_duration));
        let result = self.engine.call_fn_with_options::<Dynamic>(
            options,
            &mut Scope::new(),
            &script.ast,
            ENTRY_POINT,
            (form, params),
        );
        DEADLINE.set(None);
        result.map_err(|e| runtime_error(&e, self.limits.max_duration))
    }

    /// The JSON-to-Rhai conversion, exposed for the benchmark that splits evaluation time.
    pub fn convert_form(form: &Value) -> Dynamic {
        convert::to_dynamic(form)
    }
}

fn position(p: Position) -> (Option<usize>, Option<usize>) {
    (p.line(), p.position())
}

/// The message of an error without Rhai's trailing position, which is reported separately.
fn describe(e: &EvalAltResult) -> String {
    let text = e.to_string();
    match text.rfind(" (line ") {
        Some(i) if text.ends_with(')') => text[..i].to_owned(),
        _ => text,
    }
}

fn runtime_error(e: &EvalAltResult, max_duration: Duration) -> EvalError {
    let inner = e.unwrap_inner();
    let (line, column) = position(inner.position());
    let limit = match inner {
        EvalAltResult::ErrorTerminated(..) => Some(format!(
            "it ran for longer than {} ms (does it build large values in a loop?)",
            max_duration.as_millis()
        )),
        EvalAltResult::ErrorTooManyOperations(..) => {
            Some("too many operations (is there a loop that never ends?)".to_owned())
        }
        EvalAltResult::ErrorStackOverflow(..) => Some(
            "functions call each other too deeply (is there recursion that never ends?)".to_owned(),
        ),
        EvalAltResult::ErrorDataTooLarge(what, ..) => Some(format!("{what} grew too large")),
        EvalAltResult::ErrorTooManyVariables(..) => Some("too many variables".to_owned()),
        EvalAltResult::ErrorTooManyModules(..) => Some("too many modules imported".to_owned()),
        _ => None,
    };
    match limit {
        Some(what) => EvalError::Limit { what, line, column },
        None => EvalError::Script {
            message: describe(inner),
            line,
            column,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LEVELS: &[&str] = &["low", "high"];

    fn run(source: &str) -> Result<Outcome, EvalError> {
        let sandbox = Sandbox::with_defaults();
        let script = sandbox.compile(source).expect("compiles");
        sandbox.decide(&script, &json!({"n": 3}), &Dynamic::UNIT, LEVELS)
    }

    #[test]
    fn a_well_formed_decision_is_returned() {
        let out = run(r#"fn decide(form, params) {
            #{level: "high", score: form.n, recommendation: "Act", explanation: "We will help.",
              reasons: [#{code: "A", text: "n", points: form.n}], flags: ["x"]}
        }"#)
        .unwrap();
        assert_eq!(out.level, "high");
        assert_eq!(out.flags, vec!["x"]);
    }

    #[test]
    fn an_endless_loop_hits_the_operation_limit() {
        let err = run("fn decide(form, params) { loop {} }").unwrap_err();
        assert!(matches!(err, EvalError::Limit { .. }), "{err:?}");
    }

    #[test]
    fn a_script_that_does_much_in_few_operations_hits_the_time_limit() {
        let limits = Limits {
            max_duration: Duration::from_millis(50),
            ..Limits::default()
        };
        let sandbox = Sandbox::new(limits);
        // Each turn is a few operations but a 60 KB string: far within the operation budget,
        // far beyond 50 ms.
        let script = sandbox
            .compile(r#"fn decide(form, params) { loop { let s = "".pad(60000, "x"); } }"#)
            .unwrap();
        let started = Instant::now();
        let err = sandbox
            .decide(&script, &json!({}), &Dynamic::UNIT, LEVELS)
            .unwrap_err();
        match err {
            EvalError::Limit { what, .. } => assert!(what.contains("longer than 50 ms"), "{what}"),
            other => panic!("{other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        // The next call on this thread gets its own time.
        let quick = sandbox
            .compile(r#"fn decide(form, params) { #{level: "low", recommendation: "r", explanation: "e", reasons: []} }"#)
            .unwrap();
        assert!(sandbox
            .decide(&quick, &json!({}), &Dynamic::UNIT, LEVELS)
            .is_ok());
    }

    #[test]
    fn eval_is_disabled() {
        let err = Sandbox::with_defaults()
            .compile(r#"fn decide(form, params) { eval("1") }"#)
            .unwrap_err();
        assert!(err.message.contains("eval"), "{err:?}");
    }

    #[test]
    fn imports_from_the_file_system_are_refused() {
        let err = Sandbox::with_defaults()
            .compile(r#"fn decide(form, params) { import "/etc/passwd" as p; 1 }"#)
            .unwrap_err();
        assert!(err.message.to_lowercase().contains("module"), "{err:?}");
    }

    #[test]
    fn a_top_level_import_is_refused_with_its_place() {
        let err = Sandbox::with_defaults()
            .compile("\nimport \"x\" as x;\nfn decide(form, params) { 1 }")
            .unwrap_err();
        assert!(err.message.contains("inside `fn decide`"), "{err:?}");
        assert_eq!(err.line, Some(2));
    }

    #[test]
    fn an_import_of_a_computed_name_is_refused_with_its_place() {
        let err = Sandbox::with_defaults()
            .compile("fn decide(form, params) {\n  let m = \"core\";\n  import m as core;\n  1\n}")
            .unwrap_err();
        assert!(err.message.contains("string literal"), "{err:?}");
        assert_eq!((err.line, err.column), (Some(3), Some(3)));
    }

    #[test]
    fn a_catalog_module_is_importable_inside_decide() {
        let sources = BTreeMap::from([(
            "core".to_owned(),
            r#"fn decide(form, params) { #{level: "low", recommendation: "r", explanation: "e", reasons: [], score: 0} }"#.to_owned(),
        )]);
        let sandbox = Sandbox::with_modules(Limits::default(), &sources);
        let script = sandbox
            .compile(r#"fn decide(form, params) { import "core" as core; let r = core::decide(form, params); r.level = "high"; r }"#)
            .unwrap();
        // Evaluated by a sandbox with nothing importable: the AST carries its module.
        let out = Sandbox::with_defaults()
            .decide(&script, &json!({}), &Dynamic::UNIT, LEVELS)
            .unwrap();
        assert_eq!(out.level, "high");
    }

    #[test]
    fn a_script_without_decide_is_refused() {
        let err = Sandbox::with_defaults()
            .compile("fn other(a) { a }")
            .unwrap_err();
        assert!(err.message.contains("decide"));
    }

    #[test]
    fn a_syntax_error_has_a_position() {
        let err = Sandbox::with_defaults()
            .compile("fn decide(form, params) {\n  let x = ;\n}")
            .unwrap_err();
        assert_eq!(err.line, Some(2), "{err:?}");
        assert!(err.column.is_some());
    }

    #[test]
    fn an_undeclared_variable_is_a_compile_error() {
        let err = Sandbox::with_defaults()
            .compile("fn decide(form, params) { levle }")
            .unwrap_err();
        assert!(err.message.contains("levle"), "{err:?}");
    }

    #[test]
    fn an_anonymous_function_that_captures_a_variable_is_a_compile_error() {
        let err = Sandbox::with_defaults()
            .compile(
                "fn decide(form, params) {
    let bonus = 1;
    let f = |x| x + bonus;
    f.call(1)
}",
            )
            .unwrap_err();
        assert!(err.message.contains("bonus"), "{err:?}");
        assert_eq!(err.line, Some(3), "{err:?}");
    }

    #[test]
    fn an_anonymous_function_that_captures_nothing_runs() {
        let out = run(r#"fn decide(form, params) {
            let double = |x| x * 2;
            #{level: "low", score: double.call(form.n), recommendation: "r", explanation: "e",
              reasons: [#{code: "A", text: "a", points: 6}]}
        }"#)
        .unwrap();
        assert_eq!(out.score, Some(serde_json::Number::from(6)));
    }

    #[test]
    fn a_script_cannot_read_the_clock() {
        // A decision that depended on the time could not be replayed.
        let err = run(r#"fn decide(form, params) {
            let now = timestamp();
            #{level: "low", score: 0, recommendation: "r", explanation: "e", reasons: []}
        }"#)
        .unwrap_err();
        match err {
            EvalError::Script { message, line, .. } => {
                assert!(message.contains("timestamp"), "{message}");
                assert_eq!(line, Some(2));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_thrown_error_is_a_script_error_with_its_line() {
        let err = run("fn decide(form, params) {\n  throw \"no\";\n}").unwrap_err();
        match err {
            EvalError::Script { message, line, .. } => {
                assert!(message.contains("no"));
                assert_eq!(line, Some(2));
            }
            other => panic!("{other:?}"),
        }
    }
}
