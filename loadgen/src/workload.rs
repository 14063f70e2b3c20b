//! The billing workload: customers with skewed family sizes, and a stream of usage
//! events with skewed per-account rates, all from one seed.
//!
//! The same seed and parameters give the same customers and the same events, byte for
//! byte, on any machine: the generator is ChaCha8 (portable and reproducible), and nothing
//! here reads a clock.

use chrono::{DateTime, Duration, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Zipf};
use serde::Serialize;

/// What a meter looks like to the workload: enough to make plausible events for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterShape {
    pub name: String,
    pub kind: MeterKind,
}

/// How plausible quantities are drawn for a meter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MeterKind {
    /// Additive usage: a decimal with 3 places.
    Sum,
    /// Each event counts once: quantity 1.
    Count,
    /// A level (storage, seats): a whole number, a function of the event's time.
    Level,
    /// Distinct values of a dimension (users): the dimension's name.
    Distinct { dimension: String },
}

/// The shape of a workload.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadSpec {
    pub accounts: usize,
    pub customers: usize,
    pub seed: u64,
    /// Zipf exponent of family sizes (0 gives even families; ~1 gives a few big ones).
    pub family_skew: f64,
    /// Zipf exponent of per-account event rates (a few hot accounts).
    pub traffic_skew: f64,
    /// Events fall in `[period_start, period_end)`.
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub profile: String,
}

/// A customer as the bulk API takes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CustomerRecord {
    pub id: String,
    pub payer: String,
    pub accounts: Vec<String>,
    pub profile: String,
    pub tax_rate: String,
}

/// A usage event as the ingest API takes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventRecord {
    pub id: String,
    pub account: String,
    pub meter: String,
    pub quantity: String,
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A seeded workload: its customers, and an endless, reproducible stream of events.
pub struct Workload {
    spec: WorkloadSpec,
    meters: Vec<MeterShape>,
    customers: Vec<CustomerRecord>,
    /// Account names by index, and the cumulative traffic weight up to each.
    accounts: Vec<String>,
    cumulative: Vec<f64>,
    rng: ChaCha8Rng,
    next_event: u64,
}

/// Largest family the workload makes (tallyd accepts up to 10,000 accounts per customer).
pub const MAX_FAMILY: usize = 1_000;

/// Name of account `i`: twelve digits, like a cloud account id.
pub fn account_name(i: usize) -> String {
    format!("{:012}", 100_000_000_000u64 + i as u64)
}

impl Workload {
    /// Lays out the customers and the traffic weights; draws no event yet.
    pub fn new(spec: WorkloadSpec, meters: Vec<MeterShape>) -> Result<Workload, String> {
        if spec.accounts > spec.customers.saturating_mul(MAX_FAMILY) {
            return Err(format!(
                "{} accounts do not fit in {} customers of at most {MAX_FAMILY} accounts",
                spec.accounts, spec.customers
            ));
        }
        if spec.customers == 0 || spec.accounts < spec.customers {
            return Err(format!(
                "need at least one customer and at least as many accounts as customers (got {} accounts, {} customers)",
                spec.accounts, spec.customers
            ));
        }
        if meters.is_empty() {
            return Err("the catalog has no meters to generate usage for".into());
        }
        if spec.period_end <= spec.period_start {
            return Err("the period is empty".into());
        }
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
        // Every customer has its payer; the other accounts join customers drawn from a
        // Zipf law over customer ranks, so a few families are large.
        let mut sizes = vec![1usize; spec.customers];
        if spec.accounts > spec.customers {
            if spec.family_skew > 0.0 {
                let zipf = Zipf::new(spec.customers as f64, spec.family_skew).map_err(|e| e.to_string())?;
                for _ in spec.customers..spec.accounts {
                    // A full family passes the account on to a random one.
                    let mut rank = zipf.sample(&mut rng) as usize - 1;
                    while sizes[rank] >= MAX_FAMILY {
                        rank = rng.random_range(0..spec.customers);
                    }
                    sizes[rank] += 1;
                }
            } else {
                for i in 0..spec.accounts - spec.customers {
                    sizes[i % spec.customers] += 1;
                }
            }
        }
        let mut customers = Vec::with_capacity(spec.customers);
        let mut accounts = Vec::with_capacity(spec.accounts);
        for (c, size) in sizes.iter().enumerate() {
            let members: Vec<String> = (accounts.len()..accounts.len() + size)
                .map(account_name)
                .collect();
            accounts.extend(members.iter().cloned());
            customers.push(CustomerRecord {
                id: format!("cust-{c:08}"),
                payer: members[0].clone(),
                accounts: members,
                profile: spec.profile.clone(),
                tax_rate: "0".into(),
            });
        }
        // Traffic: account at a random rank r gets weight 1 / r^s.
        let mut ranks: Vec<usize> = (1..=spec.accounts).collect();
        for i in (1..ranks.len()).rev() {
            ranks.swap(i, rng.random_range(0..=i));
        }
        let mut cumulative = Vec::with_capacity(spec.accounts);
        let mut sum = 0.0;
        for r in ranks {
            sum += 1.0 / (r as f64).powf(spec.traffic_skew);
            cumulative.push(sum);
        }
        Ok(Workload {
            spec,
            meters,
            customers,
            accounts,
            cumulative,
            rng,
            next_event: 0,
        })
    }

    pub fn customers(&self) -> &[CustomerRecord] {
        &self.customers
    }

    /// The next event of the stream.
    pub fn next_event(&mut self) -> EventRecord {
        let total = *self.cumulative.last().expect("at least one account");
        let x = self.rng.random_range(0.0..total);
        let account = self
            .cumulative
            .partition_point(|&c| c <= x)
            .min(self.accounts.len() - 1);
        let meter = &self.meters[self.rng.random_range(0..self.meters.len())];
        let span = (self.spec.period_end - self.spec.period_start)
            .num_seconds()
            .max(1);
        let time = self.spec.period_start + Duration::seconds(self.rng.random_range(0..span));
        let (quantity, dimensions) = match &meter.kind {
            MeterKind::Sum => {
                let thousandths: u64 = self.rng.random_range(1..=100_000);
                (format!("{}.{:03}", thousandths / 1000, thousandths % 1000), None)
            }
            MeterKind::Count => ("1".to_string(), None),
            MeterKind::Level => {
                // A level (1 to 2,000) is a function of the moment it is read at, so two
                // readings of one account at the same second agree: `latest` then has one
                // answer however the engine breaks ties of time, which --verify relies on.
                let secs = (time - self.spec.period_start).num_seconds();
                (((secs * 7_919).rem_euclid(2_000) + 1).to_string(), None)
            }
            MeterKind::Distinct { dimension } => {
                let user = self.rng.random_range(0..50_000u32);
                let mut d = serde_json::Map::new();
                d.insert(dimension.clone(), format!("user-{user}").into());
                ("1".to_string(), Some(d))
            }
        };
        self.next_event += 1;
        EventRecord {
            id: format!("evt-{}-{:012}", self.spec.seed, self.next_event),
            account: self.accounts[account].clone(),
            meter: meter.name.clone(),
            quantity,
            time: time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            dimensions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: u64) -> WorkloadSpec {
        WorkloadSpec {
            accounts: 1000,
            customers: 200,
            seed,
            family_skew: 1.1,
            traffic_skew: 1.0,
            period_start: "2026-11-01T00:00:00Z".parse().unwrap(),
            period_end: "2026-12-01T00:00:00Z".parse().unwrap(),
            profile: "standard".into(),
        }
    }

    fn meters() -> Vec<MeterShape> {
        vec![
            MeterShape {
                name: "ec2.instance_hours".into(),
                kind: MeterKind::Sum,
            },
            MeterShape {
                name: "cognito.active_users".into(),
                kind: MeterKind::Distinct {
                    dimension: "user".into(),
                },
            },
        ]
    }

    fn sample(seed: u64) -> (Vec<CustomerRecord>, Vec<EventRecord>) {
        let mut w = Workload::new(spec(seed), meters()).unwrap();
        let events = (0..500).map(|_| w.next_event()).collect();
        (w.customers().to_vec(), events)
    }

    #[test]
    fn deterministic_for_a_seed() {
        assert_eq!(sample(42), sample(42));
        assert_ne!(sample(42).1, sample(43).1);
    }

    #[test]
    fn families_cover_every_account_once_and_are_skewed() {
        let (customers, _) = sample(1);
        let mut all: Vec<&String> = customers.iter().flat_map(|c| &c.accounts).collect();
        assert_eq!(all.len(), 1000);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 1000, "no account is in two customers");
        let largest = customers.iter().map(|c| c.accounts.len()).max().unwrap();
        assert!(
            largest > 20,
            "Zipf makes a few large families (largest: {largest})"
        );
        assert!(customers.iter().all(|c| c.accounts[0] == c.payer));
    }

    #[test]
    fn a_level_is_a_function_of_its_time() {
        let mut w = Workload::new(
            spec(3),
            vec![MeterShape {
                name: "support.seats".into(),
                kind: MeterKind::Level,
            }],
        )
        .unwrap();
        let mut seen = std::collections::HashMap::new();
        let mut distinct = std::collections::HashSet::new();
        for _ in 0..20_000 {
            let e = w.next_event();
            let q: u32 = e.quantity.parse().unwrap();
            assert!((1..=2_000).contains(&q), "{q}");
            distinct.insert(q);
            // Readings at the same second agree, whatever the account.
            assert_eq!(*seen.entry(e.time.clone()).or_insert(q), q, "at {}", e.time);
        }
        // ... and the levels still spread over the range.
        assert!(distinct.len() > 1_500, "{} distinct levels", distinct.len());
    }

    #[test]
    fn events_are_unique_and_inside_the_period() {
        let (_, events) = sample(7);
        let mut ids: Vec<&String> = events.iter().map(|e| &e.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), events.len());
        for e in &events {
            let t: DateTime<Utc> = e.time.parse().unwrap();
            assert!(t >= spec(7).period_start && t < spec(7).period_end, "{}", e.time);
        }
        // A few hot accounts: the most frequent account has far more than the average 0.5.
        let mut counts = std::collections::HashMap::new();
        for e in &events {
            *counts.entry(&e.account).or_insert(0) += 1;
        }
        assert!(*counts.values().max().unwrap() >= 10);
    }
}
