//! Plugins: how an agency adapts the catalog without touching core files.
//!
//! `plugins/<name>/plugin.toml` ([`Manifest`]) says what a plugin does: add tools of its own,
//! and per existing tool override `params` (merged over the defaults, every key must exist),
//! patch the schema (RFC 7396 JSON merge patch) and/or replace the rules with a script that may
//! `import` the core tool's script and adjust its result.
//!
//! Plugins apply in name order. A plugin with any problem applies nothing (never half of
//! itself), and its problems are reported with file, line and column.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{
    read, read_tool_dir, serde_message, Folder, LoadError, Parts, ToolSource, RULES_DIR, SCHEMA_DIR,
};
use crate::rules::imports;

/// Folder of plugins under a catalog root.
pub const PLUGINS_DIR: &str = "plugins";
/// A plugin's manifest file.
pub const MANIFEST: &str = "plugin.toml";

/// `plugins/<name>/plugin.toml`: what a plugin does to the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "safeguard plugin manifest")]
pub struct Manifest {
    /// The plugin's name; must equal its folder's name.
    pub name: String,
    /// The plugin's own version label, recorded in the digest of every tool it adds or changes.
    pub version: String,
    /// What the plugin is for, in a sentence or two.
    pub description: String,
    /// Tools the plugin adds: each id has `tool-schemas/<id>.json` and `rules/<id>.rhai` in the
    /// plugin's folder, in the same format as core tools.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Changes to existing tools, by tool id.
    #[serde(default)]
    pub overrides: BTreeMap<String, ToolOverride>,
}

/// How a plugin changes one existing tool. Each part is optional; they apply in this order:
/// schema patch, params, rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolOverride {
    /// Values merged over the tool's `params`. Every key must already exist in the tool's params
    /// (a misspelt key is an error, never a silent fall-back to the core value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Map<String, Value>>")]
    pub params: Option<Value>,
    /// Path inside the plugin folder, relative to it (no `..`, not absolute), of an RFC 7396 JSON merge patch of the tool's schema:
    /// add local fields, tighten `required`, relabel. It may not change `x-tool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_patch: Option<String>,
    /// Path inside the plugin folder, relative to it (no `..`, not absolute), of a replacement rules script. It may import the
    /// core tool's script inside `decide`: `import "<tool-id>" as core;`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<String>,
}

/// A change to one tool, with content rather than paths: what a plugin override applies, and
/// what a replay candidate is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Change {
    pub params: Option<Value>,
    pub schema_patch: Option<Value>,
    pub rules: Option<String>,
}

/// Where each part of a [`Change`] came from, for error locations.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChangeFiles {
    pub manifest: PathBuf,
    pub schema_patch: Option<PathBuf>,
    pub rules: Option<PathBuf>,
}

/// Applies every plugin under `root/plugins`, in name order. Returns each plugin's folder as
/// resolved for reading its files, applied or not, so its cases are read from the same place.
pub(crate) fn apply_all(
    root: &Path,
    working: &mut BTreeMap<String, Parts>,
    core_sources: &BTreeMap<String, String>,
    broken: &mut BTreeSet<String>,
    errors: &mut Vec<LoadError>,
) -> Vec<Folder> {
    let dir = root.join(PLUGINS_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut folders: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        // Hidden folders (`.git`, an editor's) are not plugins.
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    folders.sort();
    // A folder without its manifest (misnamed, say `Plugin.toml`) would otherwise be skipped in
    // silence, and the core values served where local ones were meant.
    folders.retain(|folder| {
        let has_manifest = folder.join(MANIFEST).is_file();
        if !has_manifest {
            errors.push(LoadError::new(
                folder,
                format!("a plugin folder without its {MANIFEST}: add it, or move the folder out of {PLUGINS_DIR}/"),
            ));
        }
        has_manifest
    });
    let mut resolved = Vec::new();
    for folder in folders {
        // Every file of the plugin is read from inside the folder as resolved now.
        let inside = match Folder::resolve(&folder) {
            Ok(inside) => inside,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let mut staged = working.clone();
        let mut plugin_broken = BTreeSet::new();
        let before = errors.len();
        apply_one(
            &folder,
            &inside,
            &mut staged,
            core_sources,
            &mut plugin_broken,
            errors,
        );
        if errors.len() == before {
            *working = staged;
        } else {
            // Never half-applied: the tools this plugin touched are not served at all, rather
            // than served with core values where local ones were meant.
            broken.extend(plugin_broken);
        }
        resolved.push(inside);
    }
    resolved
}

fn apply_one(
    folder: &Path,
    inside: &Folder,
    working: &mut BTreeMap<String, Parts>,
    core_sources: &BTreeMap<String, String>,
    broken: &mut BTreeSet<String>,
    errors: &mut Vec<LoadError>,
) {
    let manifest_path = folder.join(MANIFEST);
    let Some(text) = read(&manifest_path, Some(inside), errors) else {
        return;
    };
    let manifest: Manifest = match toml::from_str(&text) {
        Ok(m) => m,
        Err(e) => {
            let (line, column) = e
                .span()
                .map_or((None, None), |span| super::line_column(&text, span.start));
            errors.push(LoadError::new(&manifest_path, e.message().to_owned()).at(line, column));
            return;
        }
    };
    let folder_name = folder
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if manifest.name != folder_name {
        errors.push(LoadError::new(
            &manifest_path,
            format!(
                "`name` is {:?} but the folder is {folder_name:?}: they must be the same",
                manifest.name
            ),
        ));
        return;
    }
    let source = ToolSource::Plugin(manifest.name.clone());

    // New tools.
    let replacements: BTreeSet<PathBuf> = manifest
        .overrides
        .values()
        .filter_map(|o| o.rules.as_ref().map(|r| folder.join(r)))
        .collect();
    let mut own = read_tool_dir(
        &folder.join(SCHEMA_DIR),
        &folder.join(RULES_DIR),
        &source,
        Some(inside),
        &replacements,
        broken,
        errors,
    );
    for id in &manifest.tools {
        match own.remove(id) {
            None if !broken.contains(id) => errors.push(LoadError::new(
                &manifest_path,
                format!(
                    "`tools` lists {id:?} but {} is missing",
                    folder.join(SCHEMA_DIR).join(format!("{id}.json")).display()
                ),
            )),
            None => {}
            Some(_) if working.contains_key(id) => errors.push(LoadError::new(
                &manifest_path,
                format!("`tools` lists {id:?}, which is already a tool; change an existing tool under [overrides.{id}]"),
            )),
            Some(mut parts) => {
                // A local tool's digest covers the plugin that adds it, and it may import core
                // scripts like a replacement script can.
                let mut entry = Map::new();
                entry.insert("plugin".into(), json!(manifest.name));
                entry.insert("version".into(), json!(manifest.version));
                entry.insert("adds".into(), json!(id));
                let needed = needed_imports(&parts.rules_source, &parts.rules_path, core_sources, errors);
                if !needed.is_empty() {
                    entry.insert("imports".into(), json!(needed));
                }
                parts.imports = needed;
                parts.plugin_chain.push(Value::Object(entry));
                working.insert(id.clone(), parts);
            }
        }
    }
    for id in own.keys() {
        errors.push(LoadError::new(
            &manifest_path,
            format!("{SCHEMA_DIR}/{id}.json is in the plugin but not listed in `tools`"),
        ));
    }

    // Overrides.
    for (id, over) in &manifest.overrides {
        let Some(parts) = working.get_mut(id) else {
            errors.push(LoadError::new(
                &manifest_path,
                format!("[overrides.{id}] names no tool in the catalog"),
            ));
            continue;
        };
        let mut files = ChangeFiles {
            manifest: manifest_path.clone(),
            ..ChangeFiles::default()
        };
        let mut change = Change {
            params: over.params.clone(),
            ..Change::default()
        };
        let place = |field: &str, rel: &Option<String>, errors: &mut Vec<LoadError>| {
            let rel = rel.as_deref()?;
            let Some(path) = within(folder, rel) else {
                errors.push(LoadError::new(
                    &manifest_path,
                    format!("[overrides.{id}] {field} = {rel:?} must be a path inside the plugin folder, relative to it (no `..`, not absolute)"),
                ));
                return None;
            };
            Some(path)
        };
        if let Some(path) = place("schema_patch", &over.schema_patch, errors) {
            if let Some(text) = read(&path, Some(inside), errors) {
                match serde_json::from_str(&text) {
                    Ok(patch) => change.schema_patch = Some(patch),
                    Err(e) => errors.push(
                        LoadError::new(&path, format!("not valid JSON: {}", serde_message(&e)))
                            .at(Some(e.line()), Some(e.column())),
                    ),
                }
            }
            files.schema_patch = Some(path);
        }
        if let Some(path) = place("rules", &over.rules, errors) {
            change.rules = read(&path, Some(inside), errors);
            files.rules = Some(path);
        }
        let before = errors.len();
        apply_change(parts, &manifest, &change, &files, core_sources, errors);
        if errors.len() != before {
            broken.insert(id.clone());
        }
    }
}

/// `folder` joined with `rel` when `rel` is a relative path that stays inside it: a manifest must
/// not make the service read (and then serve, as part of a tool) a file elsewhere.
fn within(folder: &Path, rel: &str) -> Option<PathBuf> {
    let rel = Path::new(rel);
    let plain = rel
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    (plain && rel.components().any(|c| matches!(c, Component::Normal(_)))).then(|| folder.join(rel))
}

/// Applies `change` to `parts` as `plugin` would, recording it in the plugin chain.
pub(crate) fn apply_change(
    parts: &mut Parts,
    plugin: &Manifest,
    change: &Change,
    files: &ChangeFiles,
    core_sources: &BTreeMap<String, String>,
    errors: &mut Vec<LoadError>,
) {
    let id = parts.meta.id.clone();
    let mut entry = Map::new();
    entry.insert("plugin".into(), json!(plugin.name));
    entry.insert("version".into(), json!(plugin.version));

    if let Some(patch) = &change.schema_patch {
        let file = files.schema_patch.as_ref().unwrap_or(&files.manifest);
        if patch.get("x-tool").is_some() {
            errors.push(LoadError::new(
                file,
                "the schema patch changes `x-tool`; change params under `params`, and keep the tool's id, levels and stage",
            ));
        } else if !patch.is_object() {
            errors.push(LoadError::new(
                file,
                "a schema patch must be a JSON object (RFC 7396)",
            ));
        } else {
            json_patch::merge(&mut parts.schema, patch);
            parts.schema_text = None;
            parts.schema_path = file.clone();
            entry.insert("schema_patch".into(), patch.clone());
        }
    }

    if let Some(over) = &change.params {
        let mut merged = parts.meta.params.clone();
        let before = errors.len();
        merge_params(&mut merged, over, "params", &files.manifest, &id, errors);
        if errors.len() == before {
            parts.meta.params = merged.clone();
            // A review interval that names a param must still find whole days there.
            for message in super::review_interval_problems(&parts.meta) {
                errors.push(LoadError::new(&files.manifest, format!("{id}: {message}")));
            }
            if let Some(x_tool) = parts.schema.get_mut("x-tool") {
                x_tool["params"] = merged;
            }
            entry.insert("params".into(), over.clone());
        }
    }

    if let Some(source) = &change.rules {
        let file = files.rules.as_ref().unwrap_or(&files.manifest);
        let needed = needed_imports(source, file, core_sources, errors);
        parts.rules_source = source.clone();
        parts.rules_path = file.clone();
        parts.imports = needed.clone();
        entry.insert("rules".into(), json!(source));
        if !needed.is_empty() {
            entry.insert("imports".into(), json!(needed));
        }
    }

    parts.plugin_chain.push(Value::Object(entry));
    parts.source = ToolSource::Plugin(plugin.name.clone());
}

/// The core scripts `source` imports, by import path; an import of anything else is an error.
fn needed_imports(
    source: &str,
    file: &Path,
    core_sources: &BTreeMap<String, String>,
    errors: &mut Vec<LoadError>,
) -> BTreeMap<String, String> {
    let mut needed = BTreeMap::new();
    // An import of a computed name is refused where the script compiles, with its place.
    for import in imports(source).into_iter().filter(|i| i.literal) {
        match core_sources.get(&import.path) {
            Some(core) => {
                needed.insert(import.path.clone(), core.clone());
            }
            None => errors.push(
                LoadError::new(
                    file,
                    format!(
                        "imports {:?}, which is not a core tool; only core tools' scripts can be imported",
                        import.path
                    ),
                )
                .at(Some(import.line), Some(import.column)),
            ),
        }
    }
    needed
}

/// Merges `over` into `base`; every key of `over` must exist in `base`, and an object may only
/// replace an object.
fn merge_params(
    base: &mut Value,
    over: &Value,
    at: &str,
    file: &Path,
    tool: &str,
    errors: &mut Vec<LoadError>,
) {
    let (Some(base_map), Some(over_map)) = (base.as_object_mut(), over.as_object()) else {
        errors.push(LoadError::new(
            file,
            format!("`{at}` of {tool} must be a table of named values"),
        ));
        return;
    };
    for (key, value) in over_map {
        let path = format!("{at}.{key}");
        match base_map.get_mut(key) {
            None => {
                let known: Vec<&str> = base_map.keys().map(String::as_str).collect();
                errors.push(LoadError::new(
                    file,
                    format!(
                        "`{path}`: {tool} has no param {key:?} (its params here are: {})",
                        known.join(", ")
                    ),
                ));
            }
            Some(existing) if existing.is_object() => {
                merge_params(existing, value, &path, file, tool, errors)
            }
            Some(existing) if value.is_object() => errors.push(LoadError::new(
                file,
                format!("`{path}` of {tool} is a single value ({existing}), not a table"),
            )),
            Some(existing) if kind(existing) != kind(value) => errors.push(LoadError::new(
                file,
                format!(
                    "`{path}` of {tool} is {} ({existing}), not {} ({value}): a local value replaces the core one only with one of the same kind",
                    kind(existing),
                    kind(value)
                ),
            )),
            Some(existing) => *existing = value.clone(),
        }
    }
}

/// What kind of JSON value `v` is, in words: a param keeps its kind when a plugin changes it, or
/// the script that reads it decides differently without a word (a list where a number was
/// compares as neither greater nor smaller).
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a true/false value",
        Value::Number(_) => "a number",
        Value::String(_) => "a text",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

/// The JSON Schema of [`Manifest`], as committed at `plugins/plugin.schema.json`.
pub fn manifest_schema() -> Value {
    serde_json::to_value(schemars::schema_for!(Manifest)).expect("a schema serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_manifest_schema_is_up_to_date() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/plugin.schema.json");
        let committed: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            committed,
            manifest_schema(),
            "plugins/plugin.schema.json is stale: run `safeguard schema plugin > plugins/plugin.schema.json`"
        );
    }

    #[test]
    fn params_merge_over_the_defaults_and_unknown_keys_are_named() {
        let mut base = json!({"cut_points": {"medium": 6, "high": 12}, "weights": {"a": 1}});
        let mut errors = Vec::new();
        merge_params(
            &mut base,
            &json!({"cut_points": {"medium": 7}}),
            "params",
            Path::new("p.toml"),
            "t",
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(base["cut_points"], json!({"medium": 7, "high": 12}));

        merge_params(
            &mut base,
            &json!({"cut_points": {"mediun": 7}}),
            "params",
            Path::new("p.toml"),
            "t",
            &mut errors,
        );
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].message.contains("`params.cut_points.mediun`"),
            "{}",
            errors[0]
        );
    }
}
