//! The catalog: every tool the service can decide with, loaded from disk, compiled once and held
//! immutably behind an `Arc` so every request shares it and a reload swaps it whole.
//!
//! Loading never stops at the first problem: it reports every one, each with file, line and
//! column where the format gives them, and a catalog with any problem is not built at all.

mod digest;
mod plugin;
mod tool;

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

pub use digest::digest;
pub use plugin::{manifest_schema, Change, Manifest, ToolOverride, PLUGINS_DIR};
pub use tool::{
    Direction, NamedStage, OutcomeDecl, OverridePolicy, ReviewAfter, Stage, Tool, ToolMeta,
    ToolSource,
};

use crate::forms::Form;
use crate::rules::{Limits, Sandbox};

/// Folder of tool schemas under a catalog root.
pub const SCHEMA_DIR: &str = "tool-schemas";
/// Folder of rules scripts under a catalog root.
pub const RULES_DIR: &str = "rules";

/// One problem found while loading, located as precisely as the format allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl LoadError {
    fn new(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        LoadError {
            file: file.into(),
            line: None,
            column: None,
            message: message.into(),
        }
    }

    fn at(mut self, line: Option<usize>, column: Option<usize>) -> Self {
        self.line = line.filter(|l| *l > 0);
        self.column = column.filter(|c| *c > 0);
        self
    }
}

impl LoadError {
    /// `file[:line[:column]]`.
    pub fn location(&self) -> String {
        let mut at = self.file.display().to_string();
        if let Some(line) = self.line {
            at.push_str(&format!(":{line}"));
            if let Some(column) = self.column {
                at.push_str(&format!(":{column}"));
            }
        }
        at
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location(), self.message)
    }
}

/// Every tool, by id.
#[derive(Debug)]
pub struct Catalog {
    tools: BTreeMap<String, Arc<Tool>>,
    /// The core tools' scripts, by id: what plugin and candidate scripts may import.
    core_sources: BTreeMap<String, String>,
    /// Ids whose files exist but did not load (only ever non-empty from `load_partial`).
    broken: BTreeSet<String>,
    root: PathBuf,
    /// Each plugin's folder as it was resolved to read the plugin, in name order: `check` reads
    /// the plugin's cases from the same place, not from wherever its path leads later.
    plugin_folders: Vec<Folder>,
    /// The core tools as shipped, by id (the served tool itself where no plugin changed it).
    core: BTreeMap<String, Arc<Tool>>,
    /// Core ids whose files exist but did not load as shipped.
    core_broken: BTreeSet<String>,
}

impl Catalog {
    /// Loads `root/tool-schemas` and `root/rules` with the default sandbox limits.
    pub fn load(root: &Path) -> Result<Catalog, Vec<LoadError>> {
        Self::load_with(root, Limits::default())
    }

    /// Loads the catalog under `root`, reporting every problem found. A catalog with any problem
    /// is not built: serving some tools while others are silently missing would be wrong.
    pub fn load_with(root: &Path, limits: Limits) -> Result<Catalog, Vec<LoadError>> {
        let (catalog, errors) = Self::load_partial(root, limits);
        if errors.is_empty() {
            Ok(catalog)
        } else {
            Err(errors)
        }
    }

    /// Loads every tool that loads cleanly and reports every problem with the rest: for `check`,
    /// which should still run the cases of the tools that are fine. Never serve such a catalog.
    ///
    /// Core tools load first; plugins then apply in name order, each whole or not at all. The
    /// core tools as shipped are kept beside what is served ([`Catalog::core_only`]), built
    /// from the same reading of the files.
    pub fn load_partial(root: &Path, limits: Limits) -> (Catalog, Vec<LoadError>) {
        let mut errors = Vec::new();
        let schema_dir = root.join(SCHEMA_DIR);
        let rules_dir = root.join(RULES_DIR);
        let mut broken = BTreeSet::new();
        let mut working = read_tool_dir(
            &schema_dir,
            &rules_dir,
            &ToolSource::Core,
            None,
            &BTreeSet::new(),
            &mut broken,
            &mut errors,
        );

        // Core scripts are what plugin scripts may import, by tool id.
        let core_sources: BTreeMap<String, String> = working
            .iter()
            .map(|(id, parts)| (id.clone(), parts.rules_source.clone()))
            .collect();
        let core_parts = working.clone();
        let mut core_broken = broken.clone();
        let plugin_folders =
            plugin::apply_all(root, &mut working, &core_sources, &mut broken, &mut errors);
        // The core tools a plugin changed, or left unbuilt: their core versions are built too.
        let changed: BTreeSet<String> = core_parts
            .keys()
            .filter(|id| working.get(*id).is_none_or(|p| !p.plugin_chain.is_empty()))
            .cloned()
            .collect();

        let plain = Arc::new(Sandbox::new(limits));
        let with_core = OnceCell::new();
        let mut tools = BTreeMap::new();
        for (id, parts) in working {
            let sandbox = if parts.imports.is_empty() {
                Arc::clone(&plain)
            } else {
                Arc::clone(
                    with_core
                        .get_or_init(|| Arc::new(Sandbox::with_modules(limits, &core_sources))),
                )
            };
            match build(parts, &sandbox) {
                Ok(tool) => {
                    tools.insert(id, Arc::new(tool));
                }
                Err(mut e) => {
                    broken.insert(id);
                    errors.append(&mut e);
                }
            }
        }
        let mut core = BTreeMap::new();
        for (id, parts) in core_parts {
            if !changed.contains(&id) {
                // Unchanged: the served tool is the core one; one that did not build is broken
                // as shipped.
                if let Some(tool) = tools.get(&id) {
                    core.insert(id, Arc::clone(tool));
                } else {
                    core_broken.insert(id);
                }
                continue;
            }
            // Its problems, if any, are the core files' own: reported above when read, or
            // reached by the core cases as a tool that did not load.
            match build(parts, &plain) {
                Ok(tool) => {
                    core.insert(id, Arc::new(tool));
                }
                Err(_) => {
                    core_broken.insert(id);
                }
            }
        }
        if tools.is_empty() && broken.is_empty() && errors.is_empty() {
            // Most often the wrong folder (a mistyped tools_dir, or a command run elsewhere):
            // serving, or passing `check`, with no tool at all is never what was meant.
            errors.push(LoadError::new(
                &schema_dir,
                "no tool here: a catalog holds at least one tool schema in tool-schemas/ (is this the catalog's folder, tools_dir, right?)",
            ));
        }
        let catalog = Catalog {
            tools,
            core_sources,
            broken,
            root: root.to_owned(),
            plugin_folders,
            core,
            core_broken,
        };
        (catalog, errors)
    }

    /// The core tools as shipped, from the same reading of the files as what is served: what
    /// `check` runs the core cases against.
    pub fn core_only(&self) -> Catalog {
        Catalog {
            tools: self.core.clone(),
            core_sources: self.core_sources.clone(),
            broken: self.core_broken.clone(),
            root: self.root.clone(),
            plugin_folders: Vec::new(),
            core: self.core.clone(),
            core_broken: self.core_broken.clone(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Tool>> {
        self.tools.get(id)
    }

    /// Every tool, in id order.
    pub fn tools(&self) -> impl Iterator<Item = &Arc<Tool>> {
        self.tools.values()
    }

    pub fn len(&self) -> usize {
        self.tools.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// The core tools' scripts, by id.
    pub fn core_sources(&self) -> &BTreeMap<String, String> {
        &self.core_sources
    }

    /// Whether `id` has files that did not load.
    pub fn failed_to_load(&self, id: &str) -> bool {
        self.broken.contains(id)
    }

    /// The folder the catalog was loaded from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Each plugin's folder, as resolved when the catalog read it.
    pub(crate) fn plugin_folders(&self) -> &[Folder] {
        &self.plugin_folders
    }
}

/// The files of `dir` with `extension`, by stem; a missing folder is an empty one.
/// With `confine` (a plugin's folder), the folder is listed through the folder held
/// ([`Folder::reach`]); the paths returned are named as `dir` names them.
fn stems(
    dir: &Path,
    extension: &str,
    confine: Option<&Folder>,
    errors: &mut Vec<LoadError>,
) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let listed = confine.map_or_else(|| dir.to_owned(), |folder| folder.reach(dir));
    let entries = match std::fs::read_dir(listed) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Not there, or gone with the whole folder: only the second is an error.
            errors.extend(confine.and_then(|folder| folder.gone_error(dir)));
            return out;
        }
        Err(e) => {
            errors.push(LoadError::new(dir, format!("cannot read the folder: {e}")));
            return out;
        }
    };
    for entry in entries.flatten() {
        let path = dir.join(entry.file_name());
        if path.extension().and_then(|e| e.to_str()) == Some(extension) {
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                out.insert(stem.to_owned(), path);
            }
        }
    }
    out
}

/// Only the `x-tool` block, parsed from the file's text so serde reports line and column.
#[derive(Deserialize)]
struct Head {
    #[serde(rename = "x-tool")]
    x_tool: Option<ToolMeta>,
}

/// A tool's content before it is compiled: what its digest covers, and where each piece came
/// from so errors can point there.
#[derive(Debug, Clone)]
pub(crate) struct Parts {
    /// The effective schema; its `x-tool.params` are the effective params.
    pub schema: Value,
    pub meta: ToolMeta,
    pub rules_source: String,
    pub plugin_chain: Vec<Value>,
    /// Sources of the modules the rules import, by import path (a core tool id).
    pub imports: BTreeMap<String, String>,
    pub source: ToolSource,
    pub schema_path: PathBuf,
    pub rules_path: PathBuf,
    /// The schema's own text, while it is unchanged, to locate schema errors by line.
    pub schema_text: Option<String>,
}

/// Every tool in a schema folder and its rules folder, by id.
pub(crate) fn read_tool_dir(
    schema_dir: &Path,
    rules_dir: &Path,
    source: &ToolSource,
    confine: Option<&Folder>,
    replacements: &BTreeSet<PathBuf>,
    broken: &mut BTreeSet<String>,
    errors: &mut Vec<LoadError>,
) -> BTreeMap<String, Parts> {
    let schemas = stems(schema_dir, "json", confine, errors);
    let rules = stems(rules_dir, "rhai", confine, errors);
    let mut out = BTreeMap::new();
    for (stem, schema_path) in &schemas {
        let Some(rules_path) = rules.get(stem) else {
            errors.push(LoadError::new(
                schema_path,
                format!(
                    "the tool has no rules: expected {}",
                    rules_dir.join(format!("{stem}.rhai")).display()
                ),
            ));
            broken.insert(stem.clone());
            continue;
        };
        match read_parts(stem, schema_path, rules_path, source.clone(), confine) {
            Ok(parts) => {
                out.insert(stem.clone(), parts);
            }
            Err(mut e) => {
                broken.insert(stem.clone());
                errors.append(&mut e);
            }
        }
    }
    for (stem, rules_path) in &rules {
        // A plugin's replacement script for an existing tool has no schema of its own.
        if !schemas.contains_key(stem) && !replacements.contains(rules_path) {
            errors.push(LoadError::new(
                rules_path,
                format!(
                    "the rules have no tool schema: expected {}",
                    schema_dir.join(format!("{stem}.json")).display()
                ),
            ));
        }
    }
    out
}

/// Reads and checks one tool's files, without compiling anything.
fn read_parts(
    stem: &str,
    schema_path: &Path,
    rules_path: &Path,
    source: ToolSource,
    confine: Option<&Folder>,
) -> Result<Parts, Vec<LoadError>> {
    let mut errors = Vec::new();
    let schema_text = read(schema_path, confine, &mut errors);
    let rules_source = read(rules_path, confine, &mut errors);
    let (Some(schema_text), Some(rules_source)) = (schema_text, rules_source) else {
        return Err(errors);
    };
    let schema: Option<Value> = match serde_json::from_str(&schema_text) {
        Ok(v) => Some(v),
        Err(e) => {
            errors.push(
                LoadError::new(
                    schema_path,
                    format!("not valid JSON: {}", serde_message(&e)),
                )
                .at(Some(e.line()), Some(e.column())),
            );
            None
        }
    };
    let meta = match schema
        .as_ref()
        .map(|_| serde_json::from_str::<Head>(&schema_text))
    {
        Some(Ok(Head { x_tool: Some(meta) })) => Some(meta),
        Some(Ok(Head { x_tool: None })) => {
            errors.push(LoadError::new(
                schema_path,
                "the schema has no `x-tool` block (id, version, stage, outcomes, params)",
            ));
            None
        }
        Some(Err(e)) => {
            errors.push(
                LoadError::new(schema_path, format!("in `x-tool`: {}", serde_message(&e)))
                    .at(Some(e.line()), Some(e.column())),
            );
            None
        }
        None => None,
    };
    if let Some(meta) = &meta {
        check_meta(meta, stem, schema_path, &mut errors);
    }
    match (schema, meta) {
        (Some(schema), Some(meta)) if errors.is_empty() => Ok(Parts {
            schema,
            meta,
            imports: BTreeMap::new(),
            rules_source,
            plugin_chain: Vec::new(),
            source,
            schema_path: schema_path.to_owned(),
            rules_path: rules_path.to_owned(),
            schema_text: Some(schema_text),
        }),
        _ => Err(errors),
    }
}

/// Compiles a tool's schema and script.
pub(crate) fn build(parts: Parts, sandbox: &Arc<Sandbox>) -> Result<Tool, Vec<LoadError>> {
    let mut errors = Vec::new();
    let form = match Form::compile(&parts.schema) {
        Ok(form) => Some(form.within(sandbox.form_bounds())),
        Err(problems) => {
            errors.extend(problems.into_iter().map(|p| {
                let (line, column) = match (parts.schema_text.as_deref(), &p.needle) {
                    (Some(text), Some(needle)) => match text.find(needle.as_str()) {
                        Some(offset) => line_column(text, offset),
                        None => locate_pointer(text, &p.schema_path),
                    },
                    (Some(text), None) => locate_pointer(text, &p.schema_path),
                    (None, _) => (None, None),
                };
                LoadError::new(
                    &parts.schema_path,
                    format!("the form schema is invalid: {p}"),
                )
                .at(line, column)
            }));
            None
        }
    };
    let script = match sandbox.compile(&parts.rules_source) {
        Ok(script) => Some(script),
        Err(e) => {
            errors.push(LoadError::new(&parts.rules_path, e.message).at(e.line, e.column));
            None
        }
    };
    let (Some(form), Some(script)) = (form, script) else {
        return Err(errors);
    };
    let Parts {
        schema,
        meta,
        rules_source,
        plugin_chain,
        source,
        schema_path,
        rules_path,
        imports,
        ..
    } = parts;
    let title = schema
        .get("title")
        .and_then(Value::as_str)
        .unwrap_or(&meta.id)
        .to_owned();
    let snapshot = Arc::new(digest::snapshot(
        &schema,
        &rules_source,
        &meta.params,
        &plugin_chain,
    ));
    let digest = digest(&snapshot);
    Ok(Tool {
        params: Sandbox::to_dynamic(&meta.params),
        levels: meta.outcomes.iter().map(|o| o.level.clone()).collect(),
        title,
        schema,
        rules_source,
        plugin_chain,
        source,
        digest,
        schema_path,
        rules_path,
        form,
        script,
        sandbox: Arc::clone(sandbox),
        snapshot,
        imports,
        meta,
        slow: Default::default(),
    })
}

/// The `x-tool` of a stored version, from its snapshot, without compiling the tool.
pub fn snapshot_meta(snapshot: &Value) -> Result<ToolMeta, serde_json::Error> {
    ToolMeta::deserialize(&snapshot["schema"]["x-tool"])
}

/// Rebuilds the exact tool version a stored snapshot describes: what replay runs when it
/// re-runs a decision with the version that made it.
pub fn rebuild(snapshot: &Value, limits: Limits) -> Result<Tool, Vec<LoadError>> {
    let digest = digest(snapshot);
    let label = PathBuf::from(format!("snapshot {digest}"));
    let broken = |message: &str| vec![LoadError::new(&label, message.to_owned())];
    let schema = snapshot
        .get("schema")
        .cloned()
        .ok_or_else(|| broken("the snapshot has no schema"))?;
    let rules_source = snapshot
        .get("rules")
        .and_then(Value::as_str)
        .ok_or_else(|| broken("the snapshot has no rules"))?
        .to_owned();
    let plugin_chain: Vec<Value> = snapshot
        .get("plugins")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let meta: ToolMeta =
        serde_json::from_value(schema.get("x-tool").cloned().unwrap_or(Value::Null))
            .map_err(|e| broken(&format!("the snapshot's x-tool does not parse: {e}")))?;
    let mut imports = BTreeMap::new();
    for entry in &plugin_chain {
        if let Some(map) = entry.get("imports").and_then(Value::as_object) {
            for (path, source) in map {
                if let Some(source) = source.as_str() {
                    imports.insert(path.clone(), source.to_owned());
                }
            }
        }
    }
    let source = plugin_chain
        .last()
        .and_then(|e| e.get("plugin"))
        .and_then(Value::as_str)
        .map_or(ToolSource::Core, |name| ToolSource::Plugin(name.to_owned()));
    let sandbox = Arc::new(Sandbox::with_modules(limits, &imports));
    let parts = Parts {
        schema,
        meta,
        rules_source,
        plugin_chain,
        imports,
        source,
        schema_path: label.clone(),
        rules_path: label,
        schema_text: None,
    };
    build(parts, &sandbox)
}

/// `base` changed as a plugin override would change it: a candidate for replay's impact
/// analysis. `core_sources` are the scripts the candidate's rules may import.
pub fn candidate(
    base: &Tool,
    change: &Change,
    core_sources: &BTreeMap<String, String>,
    limits: Limits,
) -> Result<Tool, Vec<LoadError>> {
    let mut parts = base.parts();
    let manifest = Manifest {
        name: "candidate".into(),
        version: "candidate".into(),
        description: String::new(),
        tools: Vec::new(),
        overrides: BTreeMap::new(),
    };
    let files = plugin::ChangeFiles {
        manifest: PathBuf::from("candidate"),
        ..Default::default()
    };
    let mut errors = Vec::new();
    plugin::apply_change(
        &mut parts,
        &manifest,
        change,
        &files,
        core_sources,
        &mut errors,
    );
    if !errors.is_empty() {
        return Err(errors);
    }
    let sandbox = Arc::new(Sandbox::with_modules(limits, &parts.imports));
    build(parts, &sandbox)
}

/// The text of a tool's file, or the error that says why it has none. With `confine` (a
/// plugin's folder), see [`read_text`].
pub(crate) fn read(
    path: &Path,
    confine: Option<&Folder>,
    errors: &mut Vec<LoadError>,
) -> Option<String> {
    read_text(path, confine)
        .map_err(|message| errors.push(LoadError::new(path, message)))
        .ok()
}

/// The text of a file, or why it cannot be had. With `confine` (a plugin's folder), only a
/// regular file that is inside that folder once every link is resolved: a plugin must not make
/// the service read, and then serve and snapshot as part of a tool, a file elsewhere through a
/// symbolic link, nor wait forever on a pipe. The path is resolved once, into a handle that
/// opens nothing (`O_PATH`); where that handle leads is checked, and the text is read through
/// that same handle, so a link swapped in between a check and the read changes nothing.
pub(crate) fn read_text(path: &Path, confine: Option<&Folder>) -> Result<String, String> {
    let cannot = |e: std::io::Error| format!("cannot read the file: {e}");
    let Some(folder) = confine else {
        return std::fs::read_to_string(path).map_err(cannot);
    };
    let handle = confined::Handle::resolve(&folder.reach(path)).map_err(|e| {
        folder
            .gone_error(path)
            .map_or_else(|| cannot(e), |gone| gone.message)
    })?;
    let inside = folder
        .handle
        .place()
        .map_err(|e| format!("cannot tell where the plugin folder is now: {e}"))?;
    match handle.place() {
        Ok(place) if place.starts_with(&inside) => {}
        Ok(_) => {
            return Err(format!(
                "is a link to a file outside the plugin folder {} (or the folder was moved while it was read): a plugin's files must be inside its folder",
                folder.shown.display()
            ))
        }
        Err(e) => return Err(format!("cannot tell where the file is: {e}")),
    }
    if !handle.is_file().map_err(cannot)? {
        return Err("is not a regular file: a plugin's files must be files".into());
    }
    handle.read_to_string().map_err(cannot)
}

/// A plugin's folder, resolved once for all of the plugin's files and held: its files are
/// listed and read through the folder held ([`Folder::reach`]), whatever its path names later
/// (a link to it moved, the folder itself renamed or replaced), and each file's place is
/// compared with the place of the folder held, both named by the kernel (`/proc/self/fd`), not
/// with another spelling of them.
#[derive(Debug, Clone)]
pub(crate) struct Folder {
    /// As the catalog names it, for messages.
    shown: PathBuf,
    /// The folder itself, opened for nothing (`O_PATH`).
    handle: Arc<confined::Handle>,
}

impl Folder {
    /// The folder as the catalog names it (`plugins/<name>`).
    pub(crate) fn shown(&self) -> &Path {
        &self.shown
    }

    /// Where `path`, named under the folder as the catalog names it, is found in the folder
    /// held: through `/proc/self/fd/N`, so as it is in that folder, wherever the folder is now
    /// and wherever its name leads since. A path not under the folder is left as it is.
    pub(crate) fn reach(&self, path: &Path) -> PathBuf {
        match path.strip_prefix(&self.shown) {
            Ok(rest) => self.handle.proc_path().join(rest),
            // Not built on the folder's name (every path the loader reads is): found by that
            // path, and still judged by where it is (`read_text`).
            Err(_) => path.to_owned(),
        }
    }

    /// The error for a file or folder of the plugin not found because the folder held was
    /// removed (or replaced) while the catalog was read, if that is why.
    pub(crate) fn gone_error(&self, path: &Path) -> Option<LoadError> {
        self.is_gone().then(|| {
            LoadError::new(
                path,
                format!(
                    "the plugin folder {} was removed or replaced while the catalog was read; read it again",
                    self.shown.display()
                ),
            )
        })
    }

    /// Whether the folder held has been removed since it was resolved: no name leads to it.
    fn is_gone(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.handle.metadata().map_or(true, |m| m.nlink() == 0)
    }

    pub(crate) fn resolve(folder: &Path) -> Result<Folder, LoadError> {
        confined::Handle::resolve(folder)
            .and_then(|handle| handle.place().map(|_| handle))
            .map(|handle| Folder {
                shown: folder.to_owned(),
                handle: Arc::new(handle),
            })
            .map_err(|e| {
                LoadError::new(
                    folder,
                    format!("cannot tell where the plugin folder is: {e}"),
                )
            })
    }
}

/// A path resolved once, every link followed, into a handle that opens nothing yet.
mod confined {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::{Path, PathBuf};

    #[derive(Debug)]
    pub(super) struct Handle(std::fs::File);

    impl Handle {
        /// `O_PATH`: the file is found, and not opened for reading, so a pipe or a device does
        /// not block or stir.
        pub(super) fn resolve(path: &Path) -> std::io::Result<Self> {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_PATH)
                .open(path)
                .map(Handle)
        }

        pub(super) fn proc_path(&self) -> PathBuf {
            PathBuf::from(format!("/proc/self/fd/{}", self.0.as_raw_fd()))
        }

        /// Where the file is, as the kernel names what the handle holds.
        pub(super) fn place(&self) -> std::io::Result<PathBuf> {
            std::fs::read_link(self.proc_path())
        }

        pub(super) fn is_file(&self) -> std::io::Result<bool> {
            Ok(self.metadata()?.is_file())
        }

        /// What the handle holds, as `fstat` sees it (an `O_PATH` handle allows that).
        pub(super) fn metadata(&self) -> std::io::Result<std::fs::Metadata> {
            self.0.metadata()
        }

        /// Opens the file the handle holds (not what its path names now) and reads it.
        pub(super) fn read_to_string(&self) -> std::io::Result<String> {
            let mut text = String::new();
            std::fs::File::open(self.proc_path())?.read_to_string(&mut text)?;
            Ok(text)
        }
    }
}

/// serde_json's message without its own " at line L column C" suffix, which we report apart.
pub(crate) fn serde_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// The rules of `x-tool` that its types alone cannot say.
fn check_meta(meta: &ToolMeta, stem: &str, path: &Path, errors: &mut Vec<LoadError>) {
    let mut problem = |message: String| errors.push(LoadError::new(path, message));
    if meta.id != stem {
        problem(format!(
            "`x-tool.id` is {:?} but the file is named {stem:?}: the id, the schema's stem and the rules' stem must be the same",
            meta.id
        ));
    }
    if meta.version.trim().is_empty() {
        problem("`x-tool.version` is empty".into());
    }
    if let Stage::Case(n) = meta.stage {
        if n > 7 {
            problem(format!(
                "`x-tool.stage` is {n}: case stages run from 0 (front door) to 7 (close), or use \"any\" or \"org\""
            ));
        }
    }
    if meta.outcomes.is_empty() {
        problem("`x-tool.outcomes` is empty: declare at least one level".into());
    }
    let mut seen = std::collections::BTreeSet::new();
    for o in &meta.outcomes {
        if o.level.trim().is_empty() {
            problem("an outcome has an empty `level`".into());
        } else if !seen.insert(o.level.as_str()) {
            problem(format!("the level {:?} is declared twice", o.level));
        }
    }
    if !meta.params.is_object() {
        problem("`x-tool.params` must be an object of named weights and cut-points".into());
    }
    for (key, levels) in [("closes", &meta.closes), ("holds", &meta.holds)] {
        for level in levels.iter().filter(|l| !seen.contains(l.as_str())) {
            problem(format!(
                "`x-tool.{key}` names {level:?}, which is not one of its levels ({})",
                meta.outcomes
                    .iter()
                    .map(|o| o.level.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    // Only a tool of a numbered stage moves a case, so only one closes or holds it; nothing
    // follows the last stage.
    let moves_a_case = matches!(meta.stage, Stage::Case(_));
    let closes_or_holds = !meta.closes.is_empty() || !meta.holds.is_empty();
    if closes_or_holds && !moves_a_case {
        problem("`x-tool.closes` and `x-tool.holds` need a tool of a numbered stage (0-7): a tool of \"any\" stage or \"org\" neither closes nor holds a case".into());
    }
    if meta.stage == Stage::Case(7) && !meta.holds.is_empty() {
        problem("`x-tool.holds` on a tool of stage 7: no stage follows the last, so there is nothing to hold a case from".into());
    }
    if let Some(level) = meta.holds.iter().find(|l| meta.closes.contains(l)) {
        problem(format!(
            "`x-tool` both closes and holds a case at {level:?}: a level does one or the other"
        ));
    }
    for message in review_interval_problems(meta) {
        problem(message);
    }
    if let Some(policy) = meta.override_policy {
        if policy.max_steps == Some(0) {
            problem("`x-tool.override.max_steps` is 0, which forbids every override; an override with a reason must always be possible".into());
        }
    }
}

/// The longest review interval a tool may set: a hundred years. Dates past chrono's range
/// (hundreds of millennia) would panic when a review date is computed.
pub const MAX_REVIEW_DAYS: u32 = 36_500;

/// Every review interval of `meta` that names a param its params do not hold as a whole number
/// of days, or that is longer than [`MAX_REVIEW_DAYS`]. Checked on the core's params and again
/// on a plugin's, which may change them.
pub(crate) fn review_interval_problems(meta: &ToolMeta) -> Vec<String> {
    let tool = meta
        .review_after_days
        .as_ref()
        .map(|r| ("`x-tool.review_after_days`".to_owned(), r));
    let levels = meta.outcomes.iter().filter_map(|o| {
        let at = format!("the `review_after_days` of level {:?}", o.level);
        o.review_after_days.as_ref().map(|r| (at, r))
    });
    tool.into_iter()
        .chain(levels)
        .filter_map(|(at, interval)| match (interval, interval.days(&meta.params)) {
            (ReviewAfter::Param(path), None) => Some(format!(
                "{at} names the param {path:?}, which params does not hold as a whole number of days (e.g. 28)"
            )),
            (_, Some(days)) if days > MAX_REVIEW_DAYS => Some(format!(
                "{at} is {days} days; a review interval is at most {MAX_REVIEW_DAYS} days (a hundred years)"
            )),
            _ => None,
        })
        .collect()
}

/// Line and column of the value at JSON Pointer `pointer` in `text`, found by walking the
/// document's tokens; `(None, None)` when it cannot be found. Only used for load reports.
fn locate_pointer(text: &str, pointer: &str) -> (Option<usize>, Option<usize>) {
    if pointer.is_empty() {
        return (Some(1), Some(1));
    }
    let segments: Vec<String> = pointer
        .trim_start_matches('/')
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    let mut offset = 0usize;
    let bytes = text.as_bytes();
    for segment in &segments {
        // Find `"segment"` followed by optional whitespace and a colon, after `offset`. Arrays
        // are rare in schema paths; an index segment stops the search at its array.
        let needle = format!("\"{segment}\"");
        let mut from = offset;
        loop {
            let Some(found) = text[from..].find(&needle) else {
                return line_column(text, offset);
            };
            let after = from + found + needle.len();
            let rest = text[after..].trim_start();
            if rest.starts_with(':') {
                offset = after;
                break;
            }
            from = after;
            if from >= bytes.len() {
                return line_column(text, offset);
            }
        }
    }
    line_column(text, offset)
}

fn line_column(text: &str, offset: usize) -> (Option<usize>, Option<usize>) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (Some(line), Some(column))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pointer_is_located_in_the_text() {
        let text = "{\n  \"properties\": {\n    \"a\": {\"type\": \"integr\"}\n  }\n}";
        let (line, _) = locate_pointer(text, "/properties/a/type");
        assert_eq!(line, Some(3));
    }

    #[test]
    fn load_errors_read_as_file_line_column_message() {
        let e = LoadError::new("rules/x.rhai", "boom").at(Some(3), Some(7));
        assert_eq!(e.to_string(), "rules/x.rhai:3:7: boom");
    }

    #[test]
    fn confinement_judges_and_reads_the_file_resolved_not_what_its_path_names_later() {
        let root = tempfile::tempdir().unwrap();
        let folder = root.path().join("plugin");
        std::fs::create_dir(&folder).unwrap();
        let folder = folder.canonicalize().unwrap();
        let secret = root.path().canonicalize().unwrap().join("secret.json");
        std::fs::write(&secret, "secret").unwrap();
        let path = folder.join("patch.json");

        // Resolved while a link out: outside, and read as the file outside, though the path
        // then names a file inside.
        std::os::unix::fs::symlink(&secret, &path).unwrap();
        let linked = confined::Handle::resolve(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "own").unwrap();
        assert_eq!(linked.place().unwrap(), secret);
        assert_eq!(linked.read_to_string().unwrap(), "secret");

        // Resolved while inside: inside, and read as that file, though the path then links out.
        let own = confined::Handle::resolve(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&secret, &path).unwrap();
        assert!(own.place().unwrap().starts_with(&folder));
        assert_eq!(own.read_to_string().unwrap(), "own");

        // As a whole: the link out the path names now is refused.
        let inside = Folder::resolve(&folder).unwrap();
        let refused = read_text(&path, Some(&inside)).unwrap_err();
        assert!(refused.contains("outside the plugin folder"), "{refused}");
    }

    #[test]
    fn a_plugin_folder_is_the_one_resolved_first_though_a_link_to_it_moves() {
        let root = tempfile::tempdir().unwrap();
        let (real, other) = (root.path().join("real"), root.path().join("other"));
        for dir in [&real, &other] {
            std::fs::create_dir(dir).unwrap();
            std::fs::write(dir.join("plugin.toml"), "name = \"x\"").unwrap();
        }
        let link = root.path().join("plugin");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let inside = Folder::resolve(&link).unwrap();

        // The link now leads elsewhere: its files are still read and listed from the folder
        // resolved, under the names the catalog gives them.
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&other, &link).unwrap();
        std::fs::write(other.join("plugin.toml"), "name = \"other\"").unwrap();
        std::fs::create_dir(real.join("rules")).unwrap();
        std::fs::write(real.join("rules/own.rhai"), "").unwrap();
        std::fs::create_dir(other.join("rules")).unwrap();
        std::fs::write(other.join("rules/theirs.rhai"), "").unwrap();

        assert_eq!(
            read_text(&link.join("plugin.toml"), Some(&inside)).unwrap(),
            "name = \"x\""
        );
        let mut errors = Vec::new();
        let listed = stems(&link.join("rules"), "rhai", Some(&inside), &mut errors);
        assert_eq!(listed.keys().collect::<Vec<_>>(), ["own"], "{errors:?}");
        assert_eq!(listed["own"], link.join("rules/own.rhai"));
        // A file reached by another name than the folder's is judged where it is.
        let elsewhere = read_text(&other.join("plugin.toml"), Some(&inside)).unwrap_err();
        assert!(
            elsewhere.contains("outside the plugin folder"),
            "{elsewhere}"
        );

        // The folder resolved, removed: reading or listing it says so.
        std::fs::remove_dir_all(&real).unwrap();
        let gone = read_text(&link.join("plugin.toml"), Some(&inside)).unwrap_err();
        assert!(gone.contains("removed or replaced"), "{gone}");
        let mut errors = Vec::new();
        assert!(stems(&link.join("rules"), "rhai", Some(&inside), &mut errors).is_empty());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].message.contains("removed or replaced"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_plugin_pipe_is_refused_without_waiting_for_a_writer() {
        let root = tempfile::tempdir().unwrap();
        let folder = root.path().join("plugin");
        std::fs::create_dir(&folder).unwrap();
        let pipe = folder.join("patch.json");
        nix::unistd::mkfifo(&pipe, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let outside = root.path().join("outside.fifo");
        nix::unistd::mkfifo(&outside, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let link = folder.join("rules.rhai");
        std::os::unix::fs::symlink(&outside, &link).unwrap();

        // Each returns at once (an open for reading would wait for a writer for ever).
        let folder = Folder::resolve(&folder).unwrap();
        let inside = read_text(&pipe, Some(&folder)).unwrap_err();
        assert!(inside.contains("is not a regular file"), "{inside}");
        let out = read_text(&link, Some(&folder)).unwrap_err();
        assert!(out.contains("outside the plugin folder"), "{out}");
    }

    /// The problems `check_meta` finds in an `x-tool` block of levels low and high.
    fn meta_problems(extra: serde_json::Value) -> Vec<String> {
        let mut block = serde_json::json!({
            "id": "t", "version": "1.0.0", "stage": 4,
            "outcomes": [
                {"level": "low", "label": "Low", "response": "Go on"},
                {"level": "high", "label": "High", "response": "Do it again"}
            ]
        });
        block
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let meta: ToolMeta = serde_json::from_value(block).unwrap();
        let mut errors = Vec::new();
        check_meta(&meta, "t", Path::new("tool-schemas/t.json"), &mut errors);
        errors.into_iter().map(|e| e.message).collect()
    }

    #[test]
    fn a_holding_level_must_be_declared_may_not_also_close_and_needs_a_stage_to_hold_from() {
        assert_eq!(
            meta_problems(serde_json::json!({"holds": ["high"]})),
            Vec::<String>::new()
        );
        assert_eq!(
            meta_problems(serde_json::json!({"holds": ["fails"]})),
            ["`x-tool.holds` names \"fails\", which is not one of its levels (low, high)"]
        );
        assert_eq!(
            meta_problems(serde_json::json!({"holds": ["high"], "stage": "any"})),
            ["`x-tool.closes` and `x-tool.holds` need a tool of a numbered stage (0-7): a tool of \"any\" stage or \"org\" neither closes nor holds a case"]
        );
        assert_eq!(
            meta_problems(serde_json::json!({"holds": ["high"], "stage": 7})),
            ["`x-tool.holds` on a tool of stage 7: no stage follows the last, so there is nothing to hold a case from"]
        );
        assert_eq!(
            meta_problems(serde_json::json!({"holds": ["high"], "closes": ["high"]})),
            ["`x-tool` both closes and holds a case at \"high\": a level does one or the other"]
        );
    }
}
