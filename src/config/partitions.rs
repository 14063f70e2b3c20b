//! Partitions: as configured, as created through the API, and checked, with the
//! catalog and the customers each starts with.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError, Settings};
use crate::domain::{
    BillingProfile, Catalog, CatalogVersionSpec, Currency, Customer, CustomerSpec, Period, Rounding,
    RoundingMode,
};

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

/// Longest partition id, in bytes.
const MAX_PARTITION_ID: usize = 64;

impl Settings {
    /// Checks every partition and builds it: its catalog and its customers.
    pub(super) fn partitions(
        &self,
        profiles: &BTreeMap<String, BillingProfile>,
    ) -> Result<Vec<PartitionConfig>, ConfigError> {
        if self.partitions.is_empty() {
            return Err(invalid("partitions", "at least one partition is needed"));
        }
        let mut partitions: Vec<PartitionConfig> = Vec::new();
        for (i, p) in self.partitions.iter().enumerate() {
            let partition = self.partition(i, p, &partitions, profiles)?;
            partitions.push(partition);
        }
        Ok(partitions)
    }

    /// Checks `partitions[i]` (`defined`: the partitions before it) and builds it.
    fn partition(
        &self,
        i: usize,
        p: &PartitionSettings,
        defined: &[PartitionConfig],
        profiles: &BTreeMap<String, BillingProfile>,
    ) -> Result<PartitionConfig, ConfigError> {
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
        if defined.iter().any(|q| q.id == p.id) {
            return Err(invalid(
                key("id"),
                format!("partition {:?} is defined twice", p.id),
            ));
        }
        let currency: Currency = p
            .currency
            .parse()
            .map_err(|e: String| invalid(key("currency"), e))?;
        let catalog = self.catalog(p, key("catalog"))?;
        let mut customers = Vec::new();
        if let Some(set) = &p.customers {
            let specs = self
                .customer_sets
                .get(set)
                .ok_or_else(|| invalid(key("customers"), format!("no customer set named {set:?}")))?;
            customers = self.customers(set, specs, currency, &catalog, profiles)?;
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
        Ok(PartitionConfig {
            id: p.id.clone(),
            rounding: Rounding::new(currency, p.rounding),
            open_period,
            late_grace_days: p.late_grace_days,
            time_zone,
            catalog_name: p.catalog.clone(),
            catalog,
            customers,
        })
    }

    /// The catalog partition `p` names (`key`: where it is named), every version published.
    fn catalog(&self, p: &PartitionSettings, key: String) -> Result<Catalog, ConfigError> {
        let versions = self.catalogs.get(&p.catalog).ok_or_else(|| {
            let known: Vec<&str> = self.catalogs.keys().map(String::as_str).collect();
            invalid(
                key,
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
        Ok(catalog)
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
