//! Configuration: built-in defaults, then a TOML file, then `SAFEGUARD_*` environment
//! variables, each overriding the one before. Unknown keys are errors, so a misspelt setting is
//! caught rather than silently ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

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
        }
    }
}

/// The file read when no other is named, if it exists.
pub const DEFAULT_FILE: &str = "safeguard.toml";

impl Config {
    /// Defaults, then `file` (or `safeguard.toml` if present), then `SAFEGUARD_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Config, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None => figment = figment.merge(Toml::file(DEFAULT_FILE)),
        }
        figment
            .merge(Env::prefixed("SAFEGUARD_"))
            .extract()
            .map_err(Box::new)
    }

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            durability: self.durability,
            max_batch: self.max_batch,
            cache_bytes: self.cache_bytes,
        }
    }
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
    fn an_unknown_key_is_an_error() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("s.toml", "listn = \"127.0.0.1:9000\"\n")?;
            let err = Config::load(Some(Path::new("s.toml"))).unwrap_err();
            assert!(err.to_string().contains("listn"), "{err}");
            Ok(())
        });
    }
}
