//! Export: every revision that matches a filter, as JSON Lines, in journal order, each line the
//! revision as stored with its hash, so an export can be verified on its own (the hash is over
//! the revision's RFC 8785 canonical JSON without `hash`).
//! Streams: memory does not grow with the store.

use serde::Deserialize;

use crate::store::{Entry, Store, StoreError, StoreResult};

/// Which revisions to export. Every field is optional; times are RFC 3339 and compare with
/// `recorded_at` (`from` inclusive, `to` exclusive).
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Filter {
    /// Only this tool's decisions.
    pub tool: Option<String>,
    /// Only revisions whose level in force is this.
    pub level: Option<String>,
    /// Only this case's decisions.
    pub case: Option<String>,
    /// Recorded at or after this time.
    pub from: Option<String>,
    /// Recorded before this time.
    pub to: Option<String>,
}

impl Filter {
    /// Whether a revision passes, read from its stored form.
    pub fn matches(&self, revision: &crate::store::Revision) -> bool {
        self.tool.as_ref().is_none_or(|t| *t == revision.tool.id)
            && self.case.as_ref().is_none_or(|c| *c == revision.case_id)
            && self
                .level
                .as_ref()
                .is_none_or(|l| l == revision.effective_level())
            && self.in_time(&revision.recorded_at)
    }

    /// Whether `recorded_at` is in `[from, to)`. Stored times are all UTC with milliseconds,
    /// so a filter time in the same form compares as text; others are normalised first.
    pub fn in_time(&self, recorded_at: &str) -> bool {
        let after = self
            .from
            .as_deref()
            .is_none_or(|from| recorded_at >= normalise(from).as_str());
        let before = self
            .to
            .as_deref()
            .is_none_or(|to| recorded_at < normalise(to).as_str());
        after && before
    }
}

fn normalise(time: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(time)
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        })
        .unwrap_or_else(|_| time.to_owned())
}

/// A filter that would match nothing for a reason the caller should hear (a typo looks like an
/// empty store otherwise), or the store failing while it is checked.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The filter names a tool that was never served or used here.
    #[error("there is no tool {0:?}: no version of it was ever served or used here")]
    UnknownTool(String),
    /// A value that is not what the parameter takes (a time that is not RFC 3339).
    #[error("{message}")]
    Malformed { field: String, message: String },
    /// A well-formed filter that could only be a mistake.
    #[error("{message}")]
    Invalid { field: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(field: &str, message: String) -> Result<(), FilterError> {
    Err(FilterError::Invalid {
        field: field.to_owned(),
        message,
    })
}

/// Checks a filter before any work is done: its times are RFC 3339 and in order, its tool is one
/// the store has a version of, and its level one that some version of that tool declares.
pub fn check_filter(store: &dyn Store, filter: &Filter) -> Result<(), FilterError> {
    let mut times = [None, None];
    for (at, (name, value)) in [("from", &filter.from), ("to", &filter.to)]
        .into_iter()
        .enumerate()
    {
        if let Some(v) = value {
            match chrono::DateTime::parse_from_rfc3339(v) {
                Ok(t) => times[at] = Some(t),
                Err(_) => {
                    return Err(FilterError::Malformed {
                        field: name.to_owned(),
                        message: format!("{name} must be an RFC 3339 time, e.g. 2026-01-31T00:00:00Z (in a URL, write + as %2B)"),
                    })
                }
            }
        }
    }
    if let [Some(from), Some(to)] = times {
        if to < from {
            return invalid(
                "to",
                format!(
                    "to ({}) is before from ({}): the window holds nothing",
                    to.to_rfc3339(),
                    from.to_rfc3339()
                ),
            );
        }
    }
    let Some(tool) = &filter.tool else {
        return Ok(());
    };
    let versions = store.versions(tool)?;
    if versions.is_empty() {
        return Err(FilterError::UnknownTool(tool.clone()));
    }
    let Some(level) = &filter.level else {
        return Ok(());
    };
    let mut declared: Vec<String> = Vec::new();
    for version in &versions {
        let Some(snapshot) = store.snapshot(&version.digest)? else {
            continue;
        };
        let meta = crate::catalog::snapshot_meta(&snapshot)
            .map_err(|e| StoreError::Corrupt(format!("version {}: {e}", version.digest)))?;
        for outcome in meta.outcomes {
            if !declared.contains(&outcome.level) {
                declared.push(outcome.level);
            }
        }
    }
    if declared.iter().any(|d| d == level) {
        return Ok(());
    }
    invalid(
        "level",
        format!(
            "{tool} has no level {level:?} (its levels: {})",
            declared.join(", ")
        ),
    )
}

/// Unix milliseconds of a filter time the way [`Filter::in_time`] compares it: truncated to
/// the millisecond, as `recorded_at` is written.
fn millis(time: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(time)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The journal's seqs a filter's times allow, `[first, end)`, from the time index; `None`
/// when no revision is recent enough.
fn seq_range(store: &dyn Store, filter: &Filter) -> StoreResult<Option<(u64, Option<u64>)>> {
    let first = match filter.from.as_deref().and_then(millis) {
        None => 1,
        Some(from) => match store.first_seq_since(from)? {
            Some(seq) => seq,
            None => return Ok(None),
        },
    };
    let end = match filter.to.as_deref().and_then(millis) {
        None => None,
        Some(to) => store.first_seq_since(to)?,
    };
    Ok(Some((first, end)))
}

/// Every matching revision as one JSON line (with its newline), lazily, in journal order.
/// A time filter is a seek: only the revisions recorded in it are read.
pub fn lines<'a>(
    store: &'a dyn Store,
    filter: Filter,
) -> Box<dyn Iterator<Item = StoreResult<Vec<u8>>> + 'a> {
    let (first, end) = match seq_range(store, &filter) {
        Err(e) => return Box::new(std::iter::once(Err(e))),
        Ok(None) => return Box::new(std::iter::empty()),
        Ok(Some(range)) => range,
    };
    // The range is the time filter (a time that does not parse bounds nothing, so it is
    // compared as text like every other filter); the rest needs each revision decoded.
    let unparsed = |time: &Option<String>| time.as_deref().is_some_and(|t| millis(t).is_none());
    let by_content = filter.tool.is_some()
        || filter.level.is_some()
        || filter.case.is_some()
        || unparsed(&filter.from)
        || unparsed(&filter.to);
    let entries = store
        .journal_raw(first)
        .take_while(move |entry| match (entry, end) {
            (Ok((seq, _)), Some(end)) => *seq < end,
            _ => true,
        });
    Box::new(entries.filter_map(move |entry| {
        let result = (|| {
            let (_, bytes) = entry?;
            let entry = Entry::split(&bytes)?;
            if by_content && !filter.matches(&entry.decode()?) {
                return Ok(None);
            }
            let mut line = entry.to_json_with_hash();
            line.push(b'\n');
            Ok(Some(line))
        })();
        result.transpose()
    }))
}
