//! Configuration: built-in defaults, then a TOML file, then `SAFEGUARD_*` environment
//! variables, each overriding the one before. Unknown keys are errors, so a misspelt setting is
//! caught rather than silently ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::api::ServeOptions;
use crate::store::{Durability, StoreOptions};

/// Every setting of the service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where to listen. Loopback by default: exposing the service is a deliberate act.
    pub listen: SocketAddr,
    /// The store folder.
    pub data_dir: PathBuf,
    /// The catalog root: the folder holding tool-schemas/, rules/ and plugins/.
    pub tools_dir: PathBuf,
    /// The largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    /// `group` (concurrent requests share a flush) or `sync-per-request` (the baseline).
    pub durability: Durability,
    /// The most appends one flush may serve.
    pub max_batch: usize,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
    /// `text` for people, `json` for log collectors.
    pub log_format: LogFormat,
    /// How long a client has to send a request's head (and, on a kept-alive connection, to start
    /// its next request), and then again its body; and how long a write of its answer may wait
    /// for it to read. A client that takes longer is cut off, so slow or idle clients cannot hold
    /// the service's connections. At least 1.
    pub read_timeout_secs: u64,
    /// Once asked to stop, how long the requests in flight may take to finish before their
    /// connections are closed; what they already queued is written out either way.
    pub shutdown_grace_secs: u64,
    /// The most connections served at once; more wait in the listen queue until one closes,
    /// so many clients (or one that opens many connections) cannot exhaust the process's file
    /// descriptors, which the store needs too. At least 1.
    pub max_connections: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            tools_dir: PathBuf::from("."),
            body_limit_bytes: 1024 * 1024,
            durability: Durability::Group,
            max_batch: 1024,
            cache_bytes: 256 * 1024 * 1024,
            log_format: LogFormat::Text,
            read_timeout_secs: 30,
            shutdown_grace_secs: 30,
            max_connections: 1024,
        }
    }
}

/// The file read when no other is named, if it exists.
pub const DEFAULT_FILE: &str = "safeguard.toml";

/// The variable naming the configuration file (as `--config` does). It shares the settings'
/// `SAFEGUARD_` prefix but is not a setting, so the settings do not read it.
pub const FILE_VARIABLE: &str = "SAFEGUARD_CONFIG";

/// The smallest page cache sled opens a store with.
const MIN_CACHE_BYTES: u64 = 256;

/// The prefix of the variables that override settings: `SAFEGUARD_DATA_DIR` sets `data_dir`.
const PREFIX: &str = "SAFEGUARD_";

impl Config {
    /// Defaults, then `file` (or `safeguard.toml` if present), then `SAFEGUARD_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Config, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None => figment = figment.merge(Toml::file(DEFAULT_FILE)),
        }
        let config: Config = figment
            .merge(Env::prefixed(PREFIX).ignore(&[&FILE_VARIABLE[PREFIX.len()..]]))
            .extract()
            .map_err(Box::new)?;
        if config.read_timeout_secs == 0 {
            return Err(Box::new(figment::Error::from(
                "read_timeout_secs must be at least 1: with 0 every connection would be cut at once"
                    .to_owned(),
            )));
        }
        if config.data_dir.as_os_str().is_empty() {
            return Err(Box::new(figment::Error::from(
                "data_dir must name a folder: empty, the store would be made in the working folder"
                    .to_owned(),
            )));
        }
        if config.cache_bytes < MIN_CACHE_BYTES {
            return Err(Box::new(figment::Error::from(format!(
                "cache_bytes must be at least {MIN_CACHE_BYTES} (sled's least); the default is 268435456 (256 MiB)"
            ))));
        }
        if config.max_connections == 0 {
            return Err(Box::new(figment::Error::from(
                "max_connections must be at least 1: with 0 no request would ever be served"
                    .to_owned(),
            )));
        }
        Ok(config)
    }

    /// How the service treats connections: how long it waits on clients, and on itself when
    /// stopping, and how many it serves at once.
    pub fn serve_options(&self) -> ServeOptions {
        ServeOptions {
            read_timeout: Duration::from_secs(self.read_timeout_secs),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            max_connections: self.max_connections,
        }
    }

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            durability: self.durability,
            max_batch: self.max_batch,
            cache_bytes: self.cache_bytes,
        }
    }
}

/// A configuration error as one line per problem: the setting, what is wrong with it, and where
/// the value came from (figment's own text splits lines and nests its quotes).
pub fn describe(error: &figment::Error) -> String {
    error
        .clone()
        .into_iter()
        .map(|e| {
            let what = match &e.kind {
                figment::error::Kind::UnknownField(field, settings) => {
                    format!(
                        "unknown setting `{field}` (the settings are {})",
                        settings.join(", ")
                    )
                }
                kind => kind.to_string().trim().to_owned(),
            };
            let key = match (&e.kind, e.path.as_slice()) {
                (figment::error::Kind::UnknownField(..), _) | (_, []) => String::new(),
                (_, path) => format!("{}: ", path.join(".")),
            };
            let from = match &e.metadata {
                Some(m) => match &m.source {
                    Some(source) => format!(" (in {} {source})", m.name),
                    None => format!(" (in {})", m.name),
                },
                None => String::new(),
            };
            format!("{key}{what}{from}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
// figment's test jail returns its own (large) error type; that is its API, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_the_file_and_the_file_overrides_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("s.toml", "listen = \"127.0.0.1:9000\"\nmax_batch = 8\n")?;
            jail.set_env("SAFEGUARD_MAX_BATCH", "16");
            jail.set_env("SAFEGUARD_DURABILITY", "sync-per-request");
            let config = Config::load(Some(Path::new("s.toml"))).map_err(|e| *e)?;
            assert_eq!(config.listen.port(), 9000);
            assert_eq!(config.max_batch, 16);
            assert_eq!(config.durability, Durability::SyncPerRequest);
            assert_eq!(config.data_dir, PathBuf::from("./data"));
            Ok(())
        });
    }

    #[test]
    fn a_read_timeout_or_connection_limit_of_zero_is_refused() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SAFEGUARD_READ_TIMEOUT_SECS", "0");
            let err = Config::load(None).unwrap_err();
            assert!(err.to_string().contains("read_timeout_secs"), "{err}");
            jail.set_env("SAFEGUARD_READ_TIMEOUT_SECS", "1");
            jail.set_env("SAFEGUARD_MAX_CONNECTIONS", "0");
            let err = Config::load(None).unwrap_err();
            assert!(err.to_string().contains("max_connections"), "{err}");
            jail.set_env("SAFEGUARD_MAX_CONNECTIONS", "2");
            jail.set_env("SAFEGUARD_SHUTDOWN_GRACE_SECS", "0");
            let options = Config::load(None).map_err(|e| *e)?.serve_options();
            assert_eq!(options.read_timeout, Duration::from_secs(1));
            assert_eq!(options.shutdown_grace, Duration::ZERO);
            assert_eq!(options.max_connections, 2);
            Ok(())
        });
    }

    #[test]
    fn an_empty_data_folder_or_a_cache_sled_cannot_open_with_is_refused_as_a_setting() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SAFEGUARD_DATA_DIR", "");
            let err = Config::load(None).unwrap_err();
            assert!(
                err.to_string().contains("data_dir must name a folder"),
                "{err}"
            );
            jail.set_env("SAFEGUARD_DATA_DIR", "d");
            jail.set_env("SAFEGUARD_CACHE_BYTES", "0");
            let err = Config::load(None).unwrap_err();
            assert!(
                err.to_string().contains("cache_bytes must be at least 256"),
                "{err}"
            );
            jail.set_env("SAFEGUARD_CACHE_BYTES", "256");
            assert_eq!(Config::load(None).map_err(|e| *e)?.cache_bytes, 256);
            Ok(())
        });
    }

    #[test]
    fn the_variable_naming_the_file_is_not_read_as_a_setting() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("s.toml", "max_batch = 8\n")?;
            jail.set_env(FILE_VARIABLE, "s.toml");
            let config = Config::load(Some(Path::new("s.toml"))).map_err(|e| *e)?;
            assert_eq!(config.max_batch, 8);
            // Any other variable with the prefix is a setting, and an unknown one is refused.
            jail.set_env("SAFEGUARD_CONFIGURATION", "s.toml");
            let err = Config::load(None).unwrap_err();
            assert!(err.to_string().contains("configuration"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn an_unknown_key_is_an_error() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("s.toml", "listn = \"127.0.0.1:9000\"\n")?;
            let err = Config::load(Some(Path::new("s.toml"))).unwrap_err();
            assert!(err.to_string().contains("listn"), "{err}");
            let said = describe(&err);
            assert!(
                said.starts_with("unknown setting `listn` (the settings are listen, data_dir,"),
                "{said}"
            );
            assert!(said.ends_with("(in TOML file s.toml)"), "{said}");
            Ok(())
        });
    }

    #[test]
    fn a_problem_is_described_on_one_line_with_its_setting_and_source() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SAFEGUARD_MAX_BATCH", "many");
            let said = describe(&Config::load(None).unwrap_err());
            assert!(!said.contains('\n'), "{said}");
            assert!(said.starts_with("max_batch: invalid type"), "{said}");
            assert!(said.contains("environment variable"), "{said}");
            let said = describe(&Config::load(Some(Path::new("missing.toml"))).unwrap_err());
            assert!(!said.contains('\n'), "{said}");
            assert!(said.contains("missing.toml"), "{said}");
            Ok(())
        });
    }
}
