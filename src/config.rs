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

use crate::domain::{
    BillingProfile, Catalog, CatalogVersionSpec, Currency, Customer, CustomerSpec, Period, ProfileSpec,
    Rounding, RoundingMode,
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

/// Budget alerts: how often running bills are checked, and where alerts are POSTed.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    /// Milliseconds between checks of the running bills of customers with a budget
    /// that had usage since the last check.
    pub check_interval_ms: u64,
    /// Every alert is POSTed here as JSON (empty: no webhook), in order, retried until
    /// it is answered 2xx.
    pub webhook_url: String,
    pub webhook_timeout_ms: u64,
    /// The longest wait between two tries of a webhook that is down.
    pub webhook_max_backoff_ms: u64,
}

impl AlertSettings {
    fn validate(&self) -> Result<AlertSettings, ConfigError> {
        let range = |key: &str, value: u64, lo: u64, hi: u64| in_range("alerts", key, value, lo, hi);
        range("check_interval_ms", self.check_interval_ms, 1, 60_000)?;
        range("webhook_timeout_ms", self.webhook_timeout_ms, 1, 600_000)?;
        range(
            "webhook_max_backoff_ms",
            self.webhook_max_backoff_ms,
            1,
            3_600_000,
        )?;
        if !self.webhook_url.is_empty() && !self.webhook_url.starts_with("http://") {
            return Err(invalid(
                "alerts.webhook_url",
                format!(
                    "must be an http:// URL (got {:?}); put a TLS-terminating proxy in front of an https endpoint",
                    self.webhook_url
                ),
            ));
        }
        Ok(self.clone())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address the HTTP API listens on.
    pub listen: String,
    /// Folder for journals, snapshots and invoices.
    pub data_dir: PathBuf,
    /// HTTP worker threads; 0 means one per core.
    #[serde(default)]
    pub http_workers: usize,
}

/// Where acknowledged usage is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalSettings {
    /// `file`: durable, in `<data_dir>/<partition>/journal`; `memory`: nothing survives
    /// a restart.
    pub mode: JournalKind,
    /// Sync every batch before acknowledging it. Turning it off risks losing acknowledged
    /// usage on a power cut; for tests and benchmarks only.
    pub fsync: bool,
    /// A journal file is closed and a new one started past this size; whole files are
    /// deleted once every segment's snapshot has moved past them.
    pub file_bytes: u64,
}

impl JournalSettings {
    fn validate(&self) -> Result<JournalSettings, ConfigError> {
        const LO: u64 = 4 << 10;
        const HI: u64 = 4 << 30;
        if !(LO..=HI).contains(&self.file_bytes) {
            return Err(invalid(
                "journal.file_bytes",
                format!("must be from {LO} to {HI} (got {})", self.file_bytes),
            ));
        }
        Ok(self.clone())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalKind {
    File,
    Memory,
}

/// What a bearer token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Send usage.
    Ingest,
    /// Read partitions, catalogs, customers, bills, metrics.
    Read,
    /// Change catalogs and customers; the admin routes.
    Admin,
}

/// API authentication: bearer tokens, configured by the SHA-256 of the token.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// With auth off every request is allowed; tallyd then refuses a non-loopback address.
    pub enabled: bool,
    #[serde(default)]
    pub tokens: Vec<TokenSettings>,
}

/// One token: never the token itself, only its SHA-256 (hex), what it may do and where.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    /// A name for logs (the token itself is never logged).
    pub name: String,
    /// `sha256sum` of the token, 64 hex digits: `printf %s "$TOKEN" | sha256sum`.
    pub sha256: String,
    pub scopes: Vec<Scope>,
    /// Partitions it may touch; `["*"]` for all.
    pub partitions: Vec<String>,
}

/// A checked token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub name: String,
    pub hash: [u8; 32],
    pub scopes: Vec<Scope>,
    /// `None`: every partition.
    pub partitions: Option<Vec<String>>,
}

/// Checked authentication settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthConfig {
    pub enabled: bool,
    pub tokens: Vec<Token>,
}

/// Bounds on what one request may carry.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest request body, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// Most usage events in one ingest request; more get 413.
    pub max_events_per_request: usize,
    /// Most customers in one bulk request.
    pub max_customers_per_request: usize,
    /// Most open connections per HTTP worker; past it, new connections wait in the backlog.
    pub max_connections_per_worker: usize,
    /// Most responses streaming at once (invoice streams, alert subscriptions); past it,
    /// a new stream gets 429 with Retry-After.
    pub max_streams: usize,
    /// Most distinct usage events one account may have applied in one period: the bound
    /// of its deduplication state (16 bytes an event id). Past it, its new events are
    /// refused (422) and nothing of them is applied; duplicates are still recognised.
    pub max_events_per_account: usize,
}

impl LimitSettings {
    fn validate(&self) -> Result<LimitSettings, ConfigError> {
        let check = |key: &str, value: usize, lo: usize, hi: usize| in_range("limits", key, value, lo, hi);
        check("max_body_bytes", self.max_body_bytes, 1024, 1 << 30)?;
        check(
            "max_events_per_request",
            self.max_events_per_request,
            1,
            1_000_000,
        )?;
        check(
            "max_customers_per_request",
            self.max_customers_per_request,
            1,
            1_000_000,
        )?;
        check(
            "max_connections_per_worker",
            self.max_connections_per_worker,
            1,
            1_000_000,
        )?;
        // An account's event ids travel in one journal record when it moves (about 40
        // bytes each): the bound keeps that record well within the journal's limit.
        check(
            "max_events_per_account",
            self.max_events_per_account,
            1,
            4_000_000,
        )?;
        check("max_streams", self.max_streams, 1, 100_000)?;
        Ok(self.clone())
    }
}

/// The actor runtime: how state is spread over cores, bounded and supervised.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSettings {
    /// Arbiter threads that run segment actors; 0 means one per core.
    pub arbiters: usize,
    /// Segments per partition (fixed for the partition's life).
    pub segments: u32,
    /// Messages admitted per segment and not yet handled; past it, ingest answers 429.
    pub mailbox_capacity: usize,
    /// Retries of a command that panicked before it is dead-lettered.
    pub max_retries: u32,
    /// At most `max_restarts` restarts of a segment within `restart_window_secs`.
    pub max_restarts: usize,
    pub restart_window_secs: u64,
    /// Dead letters kept per partition.
    pub dead_letter_capacity: usize,
    /// Seconds between snapshots of every segment, after which the journal forgets
    /// what they cover; 0 never snapshots.
    pub snapshot_interval_secs: u64,
    /// A snapshot round also starts once this many events were ingested since the last
    /// one; 0 snapshots by time only.
    pub snapshot_every_events: u64,
    /// Seconds between rebalancing rounds; 0 turns automatic rebalancing off.
    pub rebalance_interval_secs: u64,
    /// Rebalance when the busiest arbiter is busier than this factor × the least busy one.
    pub rebalance_factor: f64,
    /// Segment moves per round, at most.
    pub rebalance_max_moves: usize,
    /// Busy fraction (0–1) under which an arbiter is not worth unloading.
    pub rebalance_min_busy: f64,
    /// Seconds between handing the memory the allocator holds free back to the system
    /// (what a burst, a grown table or a bill run left behind); 0 never does.
    pub memory_release_interval_secs: u64,
    /// Whether the process's memory may be backed by transparent huge pages: fewer
    /// address-translation misses, more resident memory.
    pub transparent_huge_pages: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSettings {
    pub id: String,
    /// ISO 4217 code, e.g. `USD`.
    pub currency: String,
    #[serde(default)]
    pub rounding: RoundingMode,
    /// Name of an entry of `catalogs`.
    pub catalog: String,
    /// Name of an entry of `customer_sets` to load at start, if any.
    #[serde(default)]
    pub customers: Option<String>,
    /// The open billing period (YYYY-MM); absent: the current month (in `time_zone`).
    #[serde(default)]
    pub open_period: Option<String>,
    /// Days after a closed period's end during which its late usage is still accepted
    /// (as an adjustment on the next invoice); later, it is refused.
    #[serde(default = "default_late_grace_days")]
    pub late_grace_days: u32,
    /// The IANA time zone periods are calendar months of (e.g. `America/New_York`): an
    /// event belongs to the month of its local date there.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
}

fn default_late_grace_days() -> u32 {
    3
}

fn default_time_zone() -> String {
    "UTC".to_owned()
}

/// Reads an IANA time zone name.
pub fn parse_time_zone(name: &str) -> Result<chrono_tz::Tz, String> {
    name.parse::<chrono_tz::Tz>().map_err(|_| {
        format!("{name:?} is not an IANA time zone name (such as \"UTC\" or \"America/New_York\")")
    })
}

/// A partition created through the API (`POST /v1/partitions`): a new client realm with
/// its own currency and catalog, opened while the others run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PartitionSpec {
    /// 1 to 64 of `A–Z a–z 0–9 _ -` (it names the partition's data folder).
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    pub id: String,
    /// ISO 4217 code, e.g. `EUR`.
    #[schemars(with = "crate::domain::Currency")]
    pub currency: String,
    #[serde(default)]
    pub rounding: RoundingMode,
    /// The partition's catalog: its versions, oldest first.
    #[schemars(length(min = 1))]
    pub catalog: Vec<CatalogVersionSpec>,
    /// The first open period (YYYY-MM); absent: the current month.
    #[serde(default)]
    #[schemars(with = "Option<Period>")]
    pub open_period: Option<String>,
    #[serde(default = "default_late_grace_days")]
    #[schemars(range(max = 28))]
    pub late_grace_days: u32,
    /// The IANA time zone of the partition's calendar months (default `UTC`).
    #[serde(default = "default_time_zone")]
    #[schemars(schema_with = "time_zone_schema")]
    pub time_zone: String,
}

/// The schema of a time zone: one of the IANA names this build knows.
fn time_zone_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let names: Vec<&str> = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()).collect();
    schemars::json_schema!({"type": "string", "enum": names, "description": "an IANA time zone name"})
}

impl PartitionSpec {
    /// Checks the spec; the error names the field.
    pub fn to_config(&self) -> Result<PartitionConfig, crate::domain::FieldError> {
        use crate::domain::FieldError;
        let id_ok = (1..=64).contains(&self.id.len())
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !id_ok {
            return Err(FieldError::new(
                "id",
                format!("must be 1 to 64 of A-Z a-z 0-9 _ - (got {:?})", self.id),
            ));
        }
        let currency: Currency = self
            .currency
            .parse()
            .map_err(|e: String| FieldError::new("currency", e))?;
        let mut catalog = Catalog::new();
        for (v, spec) in self.catalog.iter().enumerate() {
            catalog
                .publish(spec)
                .map_err(|e| FieldError::new(format!("catalog[{v}].{}", e.field), e.message))?;
        }
        if catalog.version_count() == 0 {
            return Err(FieldError::new("catalog", "needs at least one version"));
        }
        let open_period = match &self.open_period {
            Some(text) => Some(
                text.parse::<Period>()
                    .map_err(|e| FieldError::new("open_period", e))?,
            ),
            None => None,
        };
        if self.late_grace_days > 28 {
            return Err(FieldError::new(
                "late_grace_days",
                format!("must be from 0 to 28 (got {})", self.late_grace_days),
            ));
        }
        let time_zone = parse_time_zone(&self.time_zone).map_err(|e| FieldError::new("time_zone", e))?;
        Ok(PartitionConfig {
            id: self.id.clone(),
            rounding: Rounding::new(currency, self.rounding),
            open_period,
            late_grace_days: self.late_grace_days,
            time_zone,
            catalog_name: format!("{}-catalog", self.id),
            catalog,
            customers: Vec::new(),
        })
    }
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

/// A partition ready to run: its currency, rounding, catalog and initial customers.
#[derive(Clone, Debug)]
pub struct PartitionConfig {
    pub id: String,
    pub rounding: Rounding,
    /// The open period, when configured; otherwise the engine takes the current month.
    pub open_period: Option<Period>,
    /// See [`PartitionSettings::late_grace_days`].
    pub late_grace_days: u32,
    /// See [`PartitionSettings::time_zone`].
    pub time_zone: chrono_tz::Tz,
    pub catalog_name: String,
    pub catalog: Catalog,
    pub customers: Vec<Customer>,
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

impl RuntimeSettings {
    fn validate(&self) -> Result<RuntimeSettings, ConfigError> {
        let range = |key: &str, value: u64, lo: u64, hi: u64| in_range("runtime", key, value, lo, hi);
        range("arbiters", self.arbiters as u64, 0, 1024)?;
        range("segments", u64::from(self.segments), 1, 65_536)?;
        range("mailbox_capacity", self.mailbox_capacity as u64, 1, 1_000_000)?;
        range("max_retries", u64::from(self.max_retries), 0, 100)?;
        range("max_restarts", self.max_restarts as u64, 1, 1_000)?;
        range("restart_window_secs", self.restart_window_secs, 1, 86_400)?;
        range(
            "dead_letter_capacity",
            self.dead_letter_capacity as u64,
            1,
            10_000_000,
        )?;
        range("rebalance_interval_secs", self.rebalance_interval_secs, 0, 86_400)?;
        range("snapshot_interval_secs", self.snapshot_interval_secs, 0, 86_400)?;
        range(
            "memory_release_interval_secs",
            self.memory_release_interval_secs,
            0,
            86_400,
        )?;
        range(
            "snapshot_every_events",
            self.snapshot_every_events,
            0,
            10_000_000_000,
        )?;
        range("rebalance_max_moves", self.rebalance_max_moves as u64, 0, 1_000)?;
        if !(self.rebalance_factor > 1.0 && self.rebalance_factor.is_finite()) {
            return Err(invalid(
                "runtime.rebalance_factor",
                format!(
                    "must be a number above 1, e.g. 1.5 (got {})",
                    self.rebalance_factor
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.rebalance_min_busy) {
            return Err(invalid(
                "runtime.rebalance_min_busy",
                format!("must be a fraction from 0 to 1 (got {})", self.rebalance_min_busy),
            ));
        }
        Ok(self.clone())
    }
}

/// Longest partition id, in bytes.
const MAX_PARTITION_ID: usize = 64;

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
        let listen: SocketAddr = self.server.listen.parse().map_err(|e| {
            invalid(
                "server.listen",
                format!(
                    "{:?} is not an address such as 127.0.0.1:8080 ({e})",
                    self.server.listen
                ),
            )
        })?;
        if self.server.data_dir.as_os_str().is_empty() {
            return Err(invalid("server.data_dir", "must not be empty"));
        }
        let mut profiles = BTreeMap::new();
        for (name, spec) in &self.profiles {
            let profile = BillingProfile::new(name, spec.clone())
                .map_err(|e| invalid(format!("profiles.{name}.{}", e.field), e.message))?;
            profiles.insert(name.clone(), profile);
        }
        if self.partitions.is_empty() {
            return Err(invalid("partitions", "at least one partition is needed"));
        }
        let mut partitions: Vec<PartitionConfig> = Vec::new();
        for (i, p) in self.partitions.iter().enumerate() {
            let key = |field: &str| format!("partitions[{i}].{field}");
            if p.id.is_empty()
                || p.id.len() > MAX_PARTITION_ID
                || !p
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(invalid(
                    key("id"),
                    format!(
                        "{:?} must be 1 to {MAX_PARTITION_ID} letters, digits, '-' or '_'",
                        p.id
                    ),
                ));
            }
            if partitions.iter().any(|q| q.id == p.id) {
                return Err(invalid(
                    key("id"),
                    format!("partition {:?} is defined twice", p.id),
                ));
            }
            let currency: Currency = p
                .currency
                .parse()
                .map_err(|e: String| invalid(key("currency"), e))?;
            let versions = self.catalogs.get(&p.catalog).ok_or_else(|| {
                let known: Vec<&str> = self.catalogs.keys().map(String::as_str).collect();
                invalid(
                    key("catalog"),
                    format!("no catalog named {:?}; defined: {}", p.catalog, known.join(", ")),
                )
            })?;
            let mut catalog = Catalog::new();
            for (v, spec) in versions.iter().enumerate() {
                catalog
                    .publish(spec)
                    .map_err(|e| invalid(format!("catalogs.{}[{v}].{}", p.catalog, e.field), e.message))?;
            }
            if catalog.version_count() == 0 {
                return Err(invalid(format!("catalogs.{}", p.catalog), "has no version"));
            }
            let mut customers = Vec::new();
            if let Some(set) = &p.customers {
                let specs = self
                    .customer_sets
                    .get(set)
                    .ok_or_else(|| invalid(key("customers"), format!("no customer set named {set:?}")))?;
                customers = self.customers(set, specs, currency, &catalog, &profiles)?;
            }
            let open_period = match &p.open_period {
                Some(text) => Some(
                    text.parse::<Period>()
                        .map_err(|e| invalid(key("open_period"), e))?,
                ),
                None => None,
            };
            if p.late_grace_days > 28 {
                return Err(invalid(
                    key("late_grace_days"),
                    format!(
                        "must be from 0 to 28, less than a period (got {})",
                        p.late_grace_days
                    ),
                ));
            }
            let time_zone = parse_time_zone(&p.time_zone).map_err(|e| invalid(key("time_zone"), e))?;
            partitions.push(PartitionConfig {
                id: p.id.clone(),
                rounding: Rounding::new(currency, p.rounding),
                open_period,
                late_grace_days: p.late_grace_days,
                time_zone,
                catalog_name: p.catalog.clone(),
                catalog,
                customers,
            });
        }
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

    fn validate_auth(&self, listen: &SocketAddr) -> Result<AuthConfig, ConfigError> {
        let a = &self.auth;
        if !a.enabled && !listen.ip().is_loopback() {
            return Err(invalid(
                "auth.enabled",
                format!(
                    "is false, but server.listen {listen} is not a loopback address: refusing to serve \
                     an unauthenticated API to the network; enable auth and configure tokens"
                ),
            ));
        }
        if a.enabled && a.tokens.is_empty() {
            return Err(invalid(
                "auth.tokens",
                "auth is enabled but no token is configured",
            ));
        }
        let known: Vec<&str> = self.partitions.iter().map(|p| p.id.as_str()).collect();
        let mut tokens = Vec::with_capacity(a.tokens.len());
        for (i, t) in a.tokens.iter().enumerate() {
            let key = |f: &str| format!("auth.tokens[{i}].{f}");
            let hex = t.sha256.trim();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    key("sha256"),
                    "must be the 64 hex digits of the token's SHA-256 (printf %s \"$TOKEN\" | sha256sum), never the token itself",
                ));
            }
            let mut hash = [0u8; 32];
            for (j, byte) in hash.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * j..2 * j + 2], 16).expect("checked hex");
            }
            if tokens.iter().any(|o: &Token| o.hash == hash) {
                return Err(invalid(key("sha256"), "the same token is configured twice"));
            }
            if t.scopes.is_empty() {
                return Err(invalid(
                    key("scopes"),
                    "must list at least one of ingest, read, admin",
                ));
            }
            let partitions = if t.partitions.iter().any(|p| p == "*") {
                None
            } else {
                for p in &t.partitions {
                    if !known.contains(&p.as_str()) {
                        return Err(invalid(key("partitions"), format!("unknown partition {p:?}")));
                    }
                }
                if t.partitions.is_empty() {
                    return Err(invalid(
                        key("partitions"),
                        "must list partitions, or [\"*\"] for all",
                    ));
                }
                Some(t.partitions.clone())
            };
            tokens.push(Token {
                name: t.name.clone(),
                hash,
                scopes: t.scopes.clone(),
                partitions,
            });
        }
        Ok(AuthConfig {
            enabled: a.enabled,
            tokens,
        })
    }

    fn customers(
        &self,
        set: &str,
        specs: &[CustomerSpec],
        currency: Currency,
        catalog: &Catalog,
        profiles: &BTreeMap<String, BillingProfile>,
    ) -> Result<Vec<Customer>, ConfigError> {
        let mut customers: Vec<Customer> = Vec::with_capacity(specs.len());
        let mut owner: BTreeMap<String, String> = BTreeMap::new();
        for (c, spec) in specs.iter().enumerate() {
            let key = |field: &str| format!("customer_sets.{set}[{c}].{field}");
            let customer =
                Customer::from_spec(spec.clone(), currency).map_err(|e| invalid(key(&e.field), e.message))?;
            if !profiles.contains_key(customer.profile.as_str()) {
                let known: Vec<&str> = profiles.keys().map(String::as_str).collect();
                return Err(invalid(
                    key("profile"),
                    format!(
                        "no profile named {:?}; defined: {}",
                        customer.profile,
                        known.join(", ")
                    ),
                ));
            }
            if customers.iter().any(|o| o.id == customer.id) {
                return Err(invalid(
                    key("id"),
                    format!("customer {:?} is defined twice", customer.id),
                ));
            }
            for account in &customer.accounts {
                if let Some(other) = owner.insert(account.to_string(), customer.id.to_string()) {
                    return Err(invalid(
                        key("accounts"),
                        format!("account {account:?} already belongs to customer {other:?}"),
                    ));
                }
            }
            let scopes = customer
                .terms()
                .discounts
                .iter()
                .map(|d| ("discounts", &d.meters))
                .chain(customer.terms().credits.iter().map(|c| ("credits", &c.meters)));
            for (what, scope) in scopes {
                for meter in scope.iter().flatten() {
                    if catalog.meter_id(meter).is_none() {
                        return Err(invalid(key(what), format!("unknown meter {meter:?}")));
                    }
                }
            }
            customers.push(customer);
        }
        Ok(customers)
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
