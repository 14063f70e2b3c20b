//! The billing engine: joins the domain to the actor runtime.
//!
//! It owns the running partitions — their catalogs, customers and profiles — and is the
//! only layer that sees both `domain` and `tallyman-actors`. The HTTP API talks to it and
//! never to the domain's state directly.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{PartitionConfig, Validated};
use crate::domain::BillingProfile;

/// A partition as loaded.
#[derive(Debug)]
pub struct Partition {
    pub config: PartitionConfig,
}

/// What the engine serves.
#[derive(Debug)]
pub struct Engine {
    profiles: BTreeMap<String, BillingProfile>,
    partitions: Vec<Partition>,
}

/// A partition in a few numbers, for logs, `check-config` and `GET /v1/partitions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PartitionSummary {
    pub id: String,
    pub currency: String,
    pub rounding: String,
    pub catalog: String,
    pub catalog_versions: usize,
    pub meters: Vec<String>,
    pub customers: usize,
    pub accounts: usize,
}

impl Engine {
    /// Loads the partitions of checked settings.
    pub fn new(settings: &Validated) -> Engine {
        Engine {
            profiles: settings.profiles.clone(),
            partitions: settings
                .partitions
                .iter()
                .map(|p| Partition { config: p.clone() })
                .collect(),
        }
    }

    pub fn profiles(&self) -> impl Iterator<Item = &BillingProfile> {
        self.profiles.values()
    }

    pub fn partition_summaries(&self) -> Vec<PartitionSummary> {
        self.partitions
            .iter()
            .map(|p| {
                let c = &p.config;
                PartitionSummary {
                    id: c.id.clone(),
                    currency: c.rounding.currency.code().to_owned(),
                    rounding: c.rounding.mode.name().to_owned(),
                    catalog: c.catalog_name.clone(),
                    catalog_versions: c.catalog.version_count(),
                    meters: c.catalog.meters().map(|(_, m)| m.name.to_string()).collect(),
                    customers: c.customers.len(),
                    accounts: c.customers.iter().map(|c| c.accounts.len()).sum(),
                }
            })
            .collect()
    }
}
