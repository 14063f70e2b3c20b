//! The price catalog of a partition: its meters and the versions of their prices.
//!
//! A catalog is a list of versions, each effective from a date; a version is in force
//! from its date until the next one's. Versions are only ever appended, in date order,
//! so a [`VersionIdx`] stored in an aggregate keeps its meaning. A meter keeps its
//! aggregation for ever: changing how usage folds would invalidate aggregates already
//! built, so a new version that tries is refused.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::error::FieldError;
use super::ids::{fingerprint64, MeterId, MAX_ID_LEN};
use super::meter::{Aggregation, Reading, VersionIdx};
use super::price::{PriceModel, PricePlan};
use super::usage::UsageEvent;

/// The aggregation names of the API (`"aggregation": "unique_count"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AggregationKind {
    Sum,
    Count,
    Max,
    Latest,
    UniqueCount,
}

/// A meter and its price as published (the JSON and TOML shape).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MeterDefinition {
    pub name: String,
    pub aggregation: AggregationKind,
    /// The counted dimension, for `unique_count` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimension: Option<String>,
    /// A unit for people (`GB`, `hours`); informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Decimal::is_zero")]
    pub free_allowance: Decimal,
    pub price: PriceModel,
}

/// A catalog version as published: `PUT /v1/partitions/{p}/catalog`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogVersionSpec {
    pub effective_from: NaiveDate,
    #[schemars(length(min = 1))]
    pub meters: Vec<MeterDefinition>,
}

/// A meter of the catalog: its name and how its usage aggregates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meter {
    pub name: Arc<str>,
    pub aggregation: Aggregation,
    pub unit: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Version {
    effective_from: NaiveDate,
    /// Indexed by meter id; `None` where the meter has no price in this version.
    plans: Vec<Option<PricePlan>>,
}

/// All versions of one partition's catalog.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    meters: Vec<Meter>,
    by_name: HashMap<String, MeterId, foldhash::fast::FixedState>,
    versions: Vec<Version>,
}

/// A catalog version refused, with the field at fault (`meters[2].price.tiers[0].up_to`).
pub type CatalogError = FieldError;

impl Catalog {
    /// An empty catalog: no meters, no versions.
    pub fn new() -> Catalog {
        Catalog::default()
    }

    /// Appends a version. It must take effect after every existing version, keep the
    /// aggregation of every meter it shares with them, and be valid in every field.
    /// On error the catalog is unchanged.
    pub fn publish(&mut self, spec: &CatalogVersionSpec) -> Result<VersionIdx, CatalogError> {
        self.check_appendable(spec)?;
        // Check everything before changing anything.
        let mut new_meters: Vec<Meter> = Vec::new();
        let mut ids = Vec::with_capacity(spec.meters.len());
        for (i, def) in spec.meters.iter().enumerate() {
            let at = |f: &str| format!("meters[{i}].{f}");
            check_meter_name(&spec.meters[..i], def).map_err(|why| FieldError::new(at("name"), why))?;
            let aggregation = aggregation_of(def).map_err(|why| FieldError::new(at("dimension"), why))?;
            let plan = PricePlan {
                free_allowance: def.free_allowance,
                model: def.price.clone(),
            };
            plan.validate()
                .map_err(|e| FieldError::new(at(&e.field), e.message))?;
            match self.by_name.get(&def.name) {
                Some(&id) => {
                    self.check_same_shape(id, def, &plan, &aggregation)
                        .map_err(|(field, why)| FieldError::new(at(field), why))?;
                    ids.push((id, plan));
                }
                None => {
                    let id = self.meters.len() + new_meters.len();
                    let id = u16::try_from(id)
                        .map_err(|_| FieldError::new(at("name"), "the catalog has too many meters"))?;
                    new_meters.push(Meter {
                        name: def.name.as_str().into(),
                        aggregation,
                        unit: def.unit.clone(),
                    });
                    ids.push((MeterId(id), plan));
                }
            }
        }
        for m in new_meters {
            let id = MeterId(self.meters.len() as u16);
            self.by_name.insert(m.name.to_string(), id);
            self.meters.push(m);
        }
        let mut plans = vec![None; self.meters.len()];
        for (id, plan) in ids {
            plans[usize::from(id.0)] = Some(plan);
        }
        self.versions.push(Version {
            effective_from: spec.effective_from,
            plans,
        });
        Ok((self.versions.len() - 1) as VersionIdx)
    }

    /// Whether `spec` may be appended at all: dated after the latest version, within
    /// the bound on versions, with a meter.
    fn check_appendable(&self, spec: &CatalogVersionSpec) -> Result<(), FieldError> {
        if let Some(last) = self.versions.last() {
            if spec.effective_from <= last.effective_from {
                return Err(FieldError::new(
                    "effective_from",
                    format!(
                        "must be after {}, the date of the latest version; versions are only appended",
                        last.effective_from
                    ),
                ));
            }
        }
        if self.versions.len() >= usize::from(VersionIdx::MAX) {
            return Err(FieldError::new(
                "effective_from",
                "the catalog has too many versions",
            ));
        }
        if spec.meters.is_empty() {
            return Err(FieldError::new(
                "meters",
                "a catalog version needs at least one meter",
            ));
        }
        Ok(())
    }

    /// A meter published before keeps its aggregation and the shape of its plan (the
    /// field at fault and why, if not).
    fn check_same_shape(
        &self,
        id: MeterId,
        def: &MeterDefinition,
        plan: &PricePlan,
        aggregation: &Aggregation,
    ) -> Result<(), (&'static str, String)> {
        let previous = self
            .versions
            .last()
            .and_then(|v| v.plans[usize::from(id.0)].as_ref());
        if let Some(why) = previous.and_then(|previous| structure_change(previous, plan)) {
            return Err((
                "price",
                format!(
                    "meter {:?}: {why}; a new version may change prices and fees, not the shape \
                     of the plan, because units already used keep their positions (publish a new meter instead)",
                    def.name
                ),
            ));
        }
        let existing = &self.meters[usize::from(id.0)].aggregation;
        if existing != aggregation {
            return Err((
                "aggregation",
                format!(
                    "meter {:?} aggregates by {}; a meter's aggregation cannot change (publish a new meter instead)",
                    def.name,
                    existing.name()
                ),
            ));
        }
        Ok(())
    }

    /// The version in force on `date`, if any version is.
    pub fn version_at(&self, date: NaiveDate) -> Option<VersionIdx> {
        let after = self.versions.partition_point(|v| v.effective_from <= date);
        after.checked_sub(1).map(|i| i as VersionIdx)
    }

    /// The date version `version` takes effect.
    pub fn effective_from(&self, version: VersionIdx) -> NaiveDate {
        self.versions[usize::from(version)].effective_from
    }

    /// Number of versions published.
    pub fn version_count(&self) -> usize {
        self.versions.len()
    }

    pub fn meter_id(&self, name: &str) -> Option<MeterId> {
        self.by_name.get(name).copied()
    }

    pub fn meter(&self, id: MeterId) -> &Meter {
        &self.meters[usize::from(id.0)]
    }

    /// Every meter ever published, by id.
    pub fn meters(&self) -> impl Iterator<Item = (MeterId, &Meter)> {
        self.meters
            .iter()
            .enumerate()
            .map(|(i, m)| (MeterId(i as u16), m))
    }

    /// The price of `meter` in `version`, if it has one there.
    pub fn plan(&self, version: VersionIdx, meter: MeterId) -> Option<&PricePlan> {
        self.versions
            .get(usize::from(version))?
            .plans
            .get(usize::from(meter.0))?
            .as_ref()
    }

    /// Version `version` in its published shape.
    pub fn spec(&self, version: VersionIdx) -> CatalogVersionSpec {
        let v = &self.versions[usize::from(version)];
        let meters = v
            .plans
            .iter()
            .enumerate()
            .filter_map(|(i, plan)| {
                let plan = plan.as_ref()?;
                let meter = &self.meters[i];
                let (aggregation, dimension) = match &meter.aggregation {
                    Aggregation::Sum => (AggregationKind::Sum, None),
                    Aggregation::Count => (AggregationKind::Count, None),
                    Aggregation::Max => (AggregationKind::Max, None),
                    Aggregation::Latest => (AggregationKind::Latest, None),
                    Aggregation::UniqueCount { dimension } => {
                        (AggregationKind::UniqueCount, Some(dimension.clone()))
                    }
                };
                Some(MeterDefinition {
                    name: meter.name.to_string(),
                    aggregation,
                    dimension,
                    unit: meter.unit.clone(),
                    free_allowance: plan.free_allowance,
                    price: plan.model.clone(),
                })
            })
            .collect();
        CatalogVersionSpec {
            effective_from: v.effective_from,
            meters,
        }
    }

    /// Reduces a checked event, whose time falls on local date `date`, to the meter it
    /// measures and the reading to fold into that meter's aggregate.
    pub fn resolve(&self, event: &UsageEvent, date: NaiveDate) -> Result<(MeterId, Reading), FieldError> {
        let meter = self.meter_id(&event.meter).ok_or_else(|| {
            FieldError::new(
                "meter",
                format!("unknown meter {:?}: it is not in the catalog", event.meter),
            )
        })?;
        let version = self
            .version_at(date)
            .filter(|&v| self.plan(v, meter).is_some())
            .ok_or_else(|| {
                FieldError::new(
                    "meter",
                    format!("meter {:?} has no price in force on {date}", event.meter),
                )
            })?;
        let aggregation = &self.meter(meter).aggregation;
        let dimension = match aggregation.dimension() {
            Some(d) => Some(fingerprint64(event.dimensions.get(d).ok_or_else(|| {
                FieldError::new(
                    format!("dimensions.{d}"),
                    format!(
                        "is required: meter {:?} counts distinct values of it",
                        event.meter
                    ),
                )
            })?)),
            None => None,
        };
        Ok((
            meter,
            Reading {
                fold: aggregation.fold(),
                quantity: event.quantity,
                time: event.time,
                version,
                tiebreak: fingerprint64(&event.id),
                dimension,
            },
        ))
    }
}

/// Why `next` cannot follow `previous` within a period, if it cannot: tiers keep their
/// bounds, packages their size, and the model its kind, so that every unit position is
/// in the same tier under both and fees and packages are counted once.
fn structure_change(previous: &PricePlan, next: &PricePlan) -> Option<String> {
    use PriceModel::*;
    let bounds = |tiers: &[crate::domain::price::Tier]| tiers.iter().map(|t| t.up_to).collect::<Vec<_>>();
    match (&previous.model, &next.model) {
        (PerUnit { .. }, PerUnit { .. }) => None,
        (Graduated { tiers: a }, Graduated { tiers: b }) | (Volume { tiers: a }, Volume { tiers: b }) => {
            (bounds(a) != bounds(b)).then(|| "the tier bounds change".to_owned())
        }
        (Package { package_size: a, .. }, Package { package_size: b, .. }) => {
            (a != b).then(|| "the package size changes".to_owned())
        }
        _ => Some("the price model changes".to_owned()),
    }
}

/// A meter's name: 1 to MAX_ID_LEN bytes without spaces, not defined `before` in the
/// same version.
fn check_meter_name(before: &[MeterDefinition], def: &MeterDefinition) -> Result<(), String> {
    if def.name.is_empty() || def.name.len() > MAX_ID_LEN || def.name.chars().any(char::is_whitespace) {
        return Err(format!(
            "must be 1 to {MAX_ID_LEN} bytes without spaces (got {:?})",
            def.name
        ));
    }
    if before.iter().any(|m| m.name == def.name) {
        return Err(format!("{:?} is defined twice", def.name));
    }
    Ok(())
}

/// A meter's aggregation: a dimension for `unique_count`, and for it only.
fn aggregation_of(def: &MeterDefinition) -> Result<Aggregation, &'static str> {
    Ok(match (def.aggregation, &def.dimension) {
        (AggregationKind::UniqueCount, Some(d)) if !d.is_empty() => {
            Aggregation::UniqueCount { dimension: d.clone() }
        }
        (AggregationKind::UniqueCount, _) => {
            return Err("unique_count needs the dimension whose values it counts")
        }
        (_, Some(_)) => return Err("only unique_count takes a dimension"),
        (AggregationKind::Sum, None) => Aggregation::Sum,
        (AggregationKind::Count, None) => Aggregation::Count,
        (AggregationKind::Max, None) => Aggregation::Max,
        (AggregationKind::Latest, None) => Aggregation::Latest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn version(date: &str, price: Decimal) -> CatalogVersionSpec {
        CatalogVersionSpec {
            effective_from: date.parse().unwrap(),
            meters: vec![MeterDefinition {
                name: "ec2.instance_hours".into(),
                aggregation: AggregationKind::Sum,
                dimension: None,
                unit: Some("hours".into()),
                free_allowance: dec!(0),
                price: PriceModel::PerUnit { unit_price: price },
            }],
        }
    }

    #[test]
    fn versions_apply_from_their_date() {
        let mut c = Catalog::new();
        assert_eq!(c.publish(&version("2026-11-01", dec!(0.0416))).unwrap(), 0);
        assert_eq!(c.publish(&version("2026-11-15", dec!(0.0400))).unwrap(), 1);
        let d = |s: &str| s.parse::<NaiveDate>().unwrap();
        assert_eq!(c.version_at(d("2026-10-31")), None);
        assert_eq!(c.version_at(d("2026-11-01")), Some(0));
        assert_eq!(c.version_at(d("2026-11-14")), Some(0));
        assert_eq!(c.version_at(d("2026-11-15")), Some(1));
        assert_eq!(c.version_at(d("2027-01-01")), Some(1));
        assert_eq!(c.spec(1), version("2026-11-15", dec!(0.0400)));
    }

    #[test]
    fn versions_are_only_appended() {
        let mut c = Catalog::new();
        c.publish(&version("2026-11-15", dec!(1))).unwrap();
        let err = c.publish(&version("2026-11-01", dec!(1))).unwrap_err();
        assert_eq!(err.field, "effective_from");
        assert_eq!(c.version_count(), 1, "a refused version changes nothing");
    }

    #[test]
    fn aggregation_cannot_change() {
        let mut c = Catalog::new();
        c.publish(&version("2026-11-01", dec!(1))).unwrap();
        let mut v = version("2026-12-01", dec!(1));
        v.meters[0].aggregation = AggregationKind::Max;
        let err = c.publish(&v).unwrap_err();
        assert_eq!(err.field, "meters[0].aggregation");
        assert_eq!(c.version_count(), 1);
    }

    #[test]
    fn prices_may_change_but_not_the_shape_of_a_plan() {
        let mut c = Catalog::new();
        c.publish(&version("2026-11-01", dec!(1))).unwrap();
        let mut v = version("2026-12-01", dec!(2));
        v.meters[0].price = PriceModel::Package {
            package_size: dec!(10),
            package_price: dec!(1),
        };
        let err = c.publish(&v).unwrap_err();
        assert_eq!(err.field, "meters[0].price");
        assert!(err.message.contains("the price model changes"));
        assert!(
            c.publish(&version("2026-12-01", dec!(2))).is_ok(),
            "a new price is fine"
        );
    }

    #[test]
    fn errors_name_the_meter_field() {
        let mut c = Catalog::new();
        let mut v = version("2026-11-01", dec!(1));
        v.meters[0].price = PriceModel::Graduated { tiers: vec![] };
        assert_eq!(c.publish(&v).unwrap_err().field, "meters[0].price.tiers");
        let mut v = version("2026-11-01", dec!(1));
        v.meters[0].aggregation = AggregationKind::UniqueCount;
        assert_eq!(c.publish(&v).unwrap_err().field, "meters[0].dimension");
        assert_eq!(c.meters().count(), 0, "refused versions add no meters");
    }

    #[test]
    fn resolve_checks_meter_date_and_dimension() {
        let mut c = Catalog::new();
        let mut v = version("2026-11-01", dec!(1));
        v.meters.push(MeterDefinition {
            name: "app.active_users".into(),
            aggregation: AggregationKind::UniqueCount,
            dimension: Some("user".into()),
            unit: None,
            free_allowance: dec!(0),
            price: PriceModel::PerUnit {
                unit_price: dec!(0.01),
            },
        });
        c.publish(&v).unwrap();
        let event = |meter: &str| UsageEvent {
            id: "e1".into(),
            account: "a".into(),
            meter: meter.into(),
            quantity: dec!(1),
            time: "2026-11-03T10:00:00Z".parse().unwrap(),
            dimensions: Default::default(),
        };
        let nov = "2026-11-03".parse().unwrap();
        assert!(c.resolve(&event("ec2.instance_hours"), nov).is_ok());
        assert_eq!(c.resolve(&event("nope"), nov).unwrap_err().field, "meter");
        let oct = "2026-10-03".parse().unwrap();
        assert!(c
            .resolve(&event("ec2.instance_hours"), oct)
            .unwrap_err()
            .message
            .contains("no price in force on 2026-10-03"));
        assert_eq!(
            c.resolve(&event("app.active_users"), nov).unwrap_err().field,
            "dimensions.user"
        );
    }
}
