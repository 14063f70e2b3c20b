//! The account actor's snapshot format: the entity written as the struct it was, its
//! rare lists in place, and read back (indexes rebuilt).

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use thin_vec::ThinVec;

use crate::domain::{AccountId, AccountUsage, Customer, Period};

use super::{rare, tidy, AlertMark, ClosingUsage, CustomerEntity, Rare, RecentPeriod};

/// An entity as it is written (snapshots): the struct it was before its rare lists
/// moved behind a pointer, field for field.
#[derive(Serialize)]
#[serde(rename = "CustomerEntity")]
pub(super) struct EntityWritten<'a> {
    pub(super) customer: &'a Option<Box<Customer>>,
    pub(super) period: &'a Option<Period>,
    pub(super) usage: &'a ThinVec<AccountUsage>,
    pub(super) departed: &'a ThinVec<(AccountId, AccountUsage)>,
    pub(super) closing: &'a Option<Box<ClosingUsage>>,
    pub(super) closed_through: &'a Option<Period>,
    pub(super) recent: &'a Option<Box<RecentPeriod>>,
    pub(super) late: &'a ThinVec<ClosingUsage>,
    pub(super) alerts: &'a ThinVec<AlertMark>,
    pub(super) last_usage: &'a Option<NaiveDate>,
}

#[derive(Deserialize)]
#[serde(rename = "CustomerEntity")]
pub(super) struct EntityRead {
    pub(super) customer: Option<Box<Customer>>,
    pub(super) period: Option<Period>,
    pub(super) usage: ThinVec<AccountUsage>,
    pub(super) departed: ThinVec<(AccountId, AccountUsage)>,
    pub(super) closing: Option<Box<ClosingUsage>>,
    pub(super) closed_through: Option<Period>,
    pub(super) recent: Option<Box<RecentPeriod>>,
    pub(super) late: ThinVec<ClosingUsage>,
    pub(super) alerts: ThinVec<AlertMark>,
    pub(super) last_usage: Option<NaiveDate>,
}

impl Serialize for CustomerEntity {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let r = rare(&self.rare);
        EntityWritten {
            customer: &self.customer,
            period: &self.period,
            usage: &self.usage,
            departed: &r.departed,
            closing: &self.closing,
            closed_through: &self.closed_through,
            recent: &self.recent,
            late: &r.late,
            alerts: &r.alerts,
            last_usage: &self.last_usage,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for CustomerEntity {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let read = EntityRead::deserialize(deserializer)?;
        let mut rare = Some(Box::new(Rare {
            departed: read.departed,
            late: read.late,
            alerts: read.alerts,
        }));
        tidy(&mut rare);
        Ok(CustomerEntity {
            customer: read.customer,
            period: read.period,
            usage: read.usage,
            closing: read.closing,
            closed_through: read.closed_through,
            recent: read.recent,
            last_usage: read.last_usage,
            rare,
        })
    }
}
