//! Settings: the embedded defaults, an optional file, and `TALLY_*` environment variables.
//!
//! Layers, later ones overriding earlier ones: `config/default.toml`,
//! `config/catalog.toml` and `config/customers.toml` (all three compiled into the
//! binary), then the file given with `--config`, then environment variables such as
//! `TALLY_SERVER__LISTEN=0.0.0.0:8080` (`__` separates nested keys). Tables merge key by
//! key; arrays, such as `partitions`, are replaced whole.
//!
//! [`Settings::load`] reads the layers; [`Settings::validate`] turns them into checked
//! domain objects or refuses them with an error that names the key and what is wrong.
//! This module reads files and the environment but starts nothing.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Serialize};

use crate::domain::{BillingProfile, CatalogVersionSpec, CustomerSpec, ProfileSpec};

mod auth;
mod partitions;
mod sections;

pub use auth::{AuthConfig, AuthSettings, Scope, Token, TokenSettings};
pub use partitions::{parse_time_zone, PartitionConfig, PartitionSettings, PartitionSpec};
pub use sections::{
    AlertSettings, JournalKind, JournalSettings, LimitSettings, RuntimeSettings, ServerSettings,
};

/// The embedded default settings.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");
/// The embedded sample catalogs.
pub const CATALOG_TOML: &str = include_str!("../config/catalog.toml");
/// The embedded sample customers.
pub const CUSTOMERS_TOML: &str = include_str!("../config/customers.toml");

/// Everything `tallyd` can be told, as read from the layers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub journal: JournalSettings,
    pub auth: AuthSettings,
    pub runtime: RuntimeSettings,
    pub limits: LimitSettings,
    pub alerts: AlertSettings,
    /// Billing profiles by name.
    #[serde(default)]
    pub profiles: BTreeMap<String, ProfileSpec>,
    /// Catalogs by name: each a list of versions.
    #[serde(default)]
    pub catalogs: BTreeMap<String, Vec<CatalogVersionSpec>>,
    /// Named sets of customers that partitions can load at start.
    #[serde(default)]
    pub customer_sets: BTreeMap<String, Vec<CustomerSpec>>,
    #[serde(default)]
    pub partitions: Vec<PartitionSettings>,
}

/// A setting refused: the key at fault and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Read(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

/// Checks that `section.key` is within `lo..=hi`; the error names the key and the range.
fn in_range<T: PartialOrd + std::fmt::Display>(
    section: &str,
    key: &str,
    value: T,
    lo: T,
    hi: T,
) -> Result<(), ConfigError> {
    if lo <= value && value <= hi {
        Ok(())
    } else {
        Err(invalid(
            format!("{section}.{key}"),
            format!("must be from {lo} to {hi} (got {value})"),
        ))
    }
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Checked settings.
#[derive(Clone, Debug)]
pub struct Validated {
    pub journal: JournalSettings,
    pub auth: AuthConfig,
    pub runtime: RuntimeSettings,
    pub limits: LimitSettings,
    pub alerts: AlertSettings,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub http_workers: usize,
    pub profiles: BTreeMap<String, BillingProfile>,
    pub partitions: Vec<PartitionConfig>,
}

impl Settings {
    /// Reads the embedded defaults, then `file` if given, then `TALLY_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_with_env(file, Environment::with_prefix("TALLY"))
    }

    fn load_with_env(file: Option<&Path>, env: Environment) -> Result<Settings, ConfigError> {
        let mut builder = Config::builder()
            .add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml))
            .add_source(File::from_str(CATALOG_TOML, FileFormat::Toml))
            .add_source(File::from_str(CUSTOMERS_TOML, FileFormat::Toml));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(invalid(
                    "--config",
                    format!("{} is not a readable file", path.display()),
                ));
            }
            builder = builder.add_source(File::from(path).format(FileFormat::Toml));
        }
        let env = env.prefix_separator("_").separator("__").try_parsing(true);
        let settings = builder.add_source(env).build()?.try_deserialize()?;
        Ok(settings)
    }

    /// Checks every setting and builds the domain objects they describe.
    pub fn validate(&self) -> Result<Validated, ConfigError> {
        let listen = self.listen()?;
        if self.server.data_dir.as_os_str().is_empty() {
            return Err(invalid("server.data_dir", "must not be empty"));
        }
        let profiles = self.profiles()?;
        let partitions = self.partitions(&profiles)?;
        let auth = self.validate_auth(&listen)?;
        Ok(Validated {
            journal: self.journal.validate()?,
            auth,
            runtime: self.runtime.validate()?,
            limits: self.limits.validate()?,
            alerts: self.alerts.validate()?,
            listen,
            data_dir: self.server.data_dir.clone(),
            http_workers: self.server.http_workers,
            profiles,
            partitions,
        })
    }

    fn listen(&self) -> Result<SocketAddr, ConfigError> {
        self.server.listen.parse().map_err(|e| {
            invalid(
                "server.listen",
                format!(
                    "{:?} is not an address such as 127.0.0.1:8080 ({e})",
                    self.server.listen
                ),
            )
        })
    }

    fn profiles(&self) -> Result<BTreeMap<String, BillingProfile>, ConfigError> {
        let mut profiles = BTreeMap::new();
        for (name, spec) in &self.profiles {
            let profile = BillingProfile::new(name, spec.clone())
                .map_err(|e| invalid(format!("profiles.{name}.{}", e.field), e.message))?;
            profiles.insert(name.clone(), profile);
        }
        Ok(profiles)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn no_env() -> Environment {
        Environment::with_prefix("TALLY_TEST_UNSET_PREFIX")
    }

    fn load(extra: &str) -> Result<Validated, ConfigError> {
        let mut f = tempfile();
        f.1.write_all(extra.as_bytes()).unwrap();
        Settings::load_with_env(Some(&f.0), no_env())?.validate()
    }

    fn tempfile() -> (PathBuf, std::fs::File) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "tallyman-config-test-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::File::create(&path).unwrap();
        (path, file)
    }

    fn message(r: Result<Validated, ConfigError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn embedded_defaults_are_valid() {
        let v = Settings::load_with_env(None, no_env())
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(v.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(v.partitions.len(), 2);
        let currencies: Vec<&str> = v.partitions.iter().map(|p| p.rounding.currency.code()).collect();
        assert_eq!(currencies, ["USD", "CNY"]);
        assert!(v.profiles.contains_key("standard") && v.profiles.contains_key("enterprise"));
        assert!(v.partitions.iter().all(|p| !p.customers.is_empty()));
        assert_eq!(v.runtime.memory_release_interval_secs, 5);
        assert!(!v.runtime.transparent_huge_pages);
    }

    #[test]
    fn a_file_overrides_the_defaults() {
        let v = load("[server]\nlisten = \"127.0.0.1:9999\"\n").unwrap();
        assert_eq!(v.listen.port(), 9999);
        assert_eq!(v.partitions.len(), 2, "untouched keys keep their defaults");
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = Environment::default().prefix("TALLY").source(Some(
            [("TALLY_SERVER__LISTEN".to_string(), "127.0.0.1:7000".to_string())].into(),
        ));
        let s = Settings::load_with_env(None, env).unwrap();
        assert_eq!(s.server.listen, "127.0.0.1:7000");
    }

    #[test]
    fn errors_name_the_key() {
        let m = message(load("[server]\nlisten = \"localhost\"\n"));
        assert!(m.contains("`server.listen`"), "{m}");
        let m = message(load(
            "[[partitions]]\nid = \"eu\"\ncurrency = \"EUX\"\ncatalog = \"cloud-usd\"\n",
        ));
        assert!(
            m.contains("`partitions[0].currency`") && m.contains("unknown currency"),
            "{m}"
        );
        let m = message(load(
            "[[partitions]]\nid = \"eu\"\ncurrency = \"EUR\"\ncatalog = \"nope\"\n",
        ));
        assert!(m.contains("`partitions[0].catalog`"), "{m}");
        let m = message(load("[profiles.broken]\nsteps = [\"tax\"]\n"));
        assert!(m.contains("`profiles.broken.steps`"), "{m}");
        let m = message(load(
            "[[catalogs.bad]]\neffective_from = \"2026-11-01\"\n[[catalogs.bad.meters]]\nname = \"x\"\naggregation = \"sum\"\nprice = { model = \"graduated\", tiers = [{ up_to = \"10\", unit_price = \"1\" }] }\n[[partitions]]\nid = \"p\"\ncurrency = \"USD\"\ncatalog = \"bad\"\n",
        ));
        assert!(
            m.contains("`catalogs.bad[0].meters[0].price.tiers[0].up_to`"),
            "{m}"
        );
        let m = message(load("[runtime]\nmemory_release_interval_secs = 100000\n"));
        assert!(
            m.contains("`runtime.memory_release_interval_secs`") && m.contains("86400"),
            "{m}"
        );
        let m = message(load("[servr]\nlisten = \"127.0.0.1:1\"\n"));
        assert!(m.contains("servr"), "{m}");
    }
}
