//! The account actor: one customer's accounts and their usage for the open period, as
//! an entity of the actor runtime.
//!
//! It is keyed by customer, so a customer's accounts always live in one segment and a
//! customer's bill (with tiers pooled across its family) is computed in one place. It
//! applies pre-resolved usage (the engine resolves meters and catalog versions before
//! journaling, so applying is a pure function of the command) and prices its bills with
//! the domain's functions, the same ones that produce invoices.

mod budgets;
mod commands;
mod entity;
mod membership;
mod periods;
mod persisted;
mod prefetch;
mod pricing;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use thin_vec::ThinVec;

use crate::domain::{AccountId, AccountUsage, Customer, Period};

pub use commands::{
    AlertMark, Crossing, CustomerAnswer, CustomerCommand, CustomerQuery, CustomerReply, MeteredEvent,
    PeriodClose, PricingView,
};
use prefetch::likely_positions;
use prefetch::note_of;
use prefetch::IDS_ASKED;
use prefetch::USAGE_ASKED;

/// A customer's key in its partition (inline up to 15 bytes, as [`AccountId`]).
pub type CustomerKey = crate::domain::ShortId;

/// The state of one customer.
///
/// One is kept per customer, millions of them, in a hash table whose slack multiplies
/// its size: lists are `ThinVec`s (one word inline; the rarely used ones, empty, take
/// nothing more).
///
/// Usage belongs to one period: `usage` and `departed` to `period`, and, while a bill run
/// closes the period before it, that period's usage waits in `closing` until its `Close`
/// command. Usage of the next period can thus stream in while the last one is billed.
#[derive(Clone, Debug, Default)]
pub struct CustomerEntity {
    customer: Option<Box<Customer>>,
    /// The period of `usage` and `departed` (`None`: no usage yet).
    period: Option<Period>,
    /// Usage of `customer.accounts[i]` at `usage[i]`.
    usage: ThinVec<AccountUsage>,
    /// The usage of the period before `period`, until it is closed.
    closing: Option<Box<ClosingUsage>>,
    /// The latest period closed for this customer.
    closed_through: Option<Period>,
    /// The usage of the last closed period: what late usage is deduplicated against
    /// and re-rated with.
    recent: Option<Box<RecentPeriod>>,
    /// The latest day of any usage event applied (or refused as a duplicate).
    last_usage: Option<NaiveDate>,
    /// What few customers have, behind one pointer (`None`: all of it empty).
    rare: Option<Box<Rare>>,
}

/// The lists of a customer that are nearly always empty, kept apart so that an entity
/// takes 64 bytes (80 with the lists in place).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Rare {
    /// Usage of accounts that left the customer during the period: still billed here.
    departed: ThinVec<(AccountId, AccountUsage)>,
    /// Late usage per closed period, until the invoice that bills it.
    late: ThinVec<ClosingUsage>,
    /// Budget thresholds crossed in the open period (and the one being closed).
    alerts: ThinVec<AlertMark>,
}

static NO_RARE: Rare = Rare {
    departed: ThinVec::new(),
    late: ThinVec::new(),
    alerts: ThinVec::new(),
};

/// The rare lists, empty ones when there are none.
fn rare(rare: &Option<Box<Rare>>) -> &Rare {
    rare.as_deref().unwrap_or(&NO_RARE)
}

/// The rare lists, to change (made at the first need).
fn rare_mut(rare: &mut Option<Box<Rare>>) -> &mut Rare {
    rare.get_or_insert_with(Default::default)
}

/// Lets the rare lists go once they are all empty.
fn tidy(rare: &mut Option<Box<Rare>>) {
    if rare
        .as_deref()
        .is_some_and(|r| r.departed.is_empty() && r.late.is_empty() && r.alerts.is_empty())
    {
        *rare = None;
    }
}

/// Equal state, however the rare lists are held (none, or empty ones).
impl PartialEq for CustomerEntity {
    fn eq(&self, other: &Self) -> bool {
        self.customer == other.customer
            && self.period == other.period
            && self.usage == other.usage
            && self.closing == other.closing
            && self.closed_through == other.closed_through
            && self.recent == other.recent
            && self.last_usage == other.last_usage
            && rare(&self.rare) == rare(&other.rare)
    }
}

impl Eq for CustomerEntity {}

/// The last closed period's usage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentPeriod {
    usage: ClosingUsage,
    /// The first day no late usage is accepted; once usage of that day arrives, the
    /// event ids are let go (the aggregates stay, to re-rate late usage with).
    late_until: NaiveDate,
    ids_forgotten: bool,
}

/// A period's usage, per account, kept until its invoice is written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosingUsage {
    period: Period,
    accounts: Vec<(AccountId, AccountUsage)>,
}

#[cfg(test)]
mod memory {
    #[test]
    fn a_customer_record_stays_within_its_memory_budget() {
        // One per customer, in a hash table with up to 2× slack: the rarely used lists
        // are one pointer for all three (BENCHMARKS.md, the 21M-account run, counts on it).
        let size = std::mem::size_of::<super::CustomerEntity>();
        assert!(size <= 64, "{size}");
    }

    #[test]
    fn an_entity_is_written_as_the_struct_it_was_and_its_rare_lists_come_and_go() {
        use super::*;
        // The struct before the rare lists moved behind a pointer, field for field.
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Before {
            customer: Option<Box<Customer>>,
            period: Option<Period>,
            usage: ThinVec<AccountUsage>,
            departed: ThinVec<(AccountId, AccountUsage)>,
            closing: Option<Box<ClosingUsage>>,
            closed_through: Option<Period>,
            recent: Option<Box<RecentPeriod>>,
            late: ThinVec<ClosingUsage>,
            alerts: ThinVec<AlertMark>,
            last_usage: Option<NaiveDate>,
        }
        let period = Period::new(2026, 11).unwrap();
        let mark = AlertMark {
            period,
            account: None,
            threshold: 80,
            budget: rust_decimal::Decimal::ONE_HUNDRED,
            spent: rust_decimal::Decimal::from(81),
            at: "2026-11-20T10:00:00Z".parse().unwrap(),
        };
        let before = Before {
            customer: None,
            period: Some(period),
            usage: ThinVec::new(),
            departed: ThinVec::new(),
            closing: None,
            closed_through: None,
            recent: None,
            late: ThinVec::new(),
            alerts: thin_vec::thin_vec![mark.clone()],
            last_usage: NaiveDate::from_ymd_opt(2026, 11, 20),
        };
        let mut entity = CustomerEntity {
            period: Some(period),
            last_usage: NaiveDate::from_ymd_opt(2026, 11, 20),
            ..CustomerEntity::default()
        };
        assert!(entity.rare.is_none());
        rare_mut(&mut entity.rare).alerts.push(mark);
        for (name, bytes) in [
            ("MessagePack", rmp_serde::to_vec(&entity).unwrap()),
            ("JSON", serde_json::to_vec(&entity).unwrap()),
        ] {
            let same = if name == "JSON" {
                serde_json::to_vec(&before).unwrap()
            } else {
                rmp_serde::to_vec(&before).unwrap()
            };
            assert_eq!(bytes, same, "{name}");
        }
        let read: CustomerEntity = rmp_serde::from_slice(&rmp_serde::to_vec(&before).unwrap()).unwrap();
        assert_eq!(read, entity);
        // Once its lists are empty again, the pointer goes; equal either way.
        let mut emptied = entity.clone();
        rare_mut(&mut emptied.rare).alerts.clear();
        let held = emptied.clone();
        tidy(&mut emptied.rare);
        assert!(emptied.rare.is_none() && held.rare.is_some());
        assert_eq!(emptied, held);
        let read: CustomerEntity = rmp_serde::from_slice(&rmp_serde::to_vec(&held).unwrap()).unwrap();
        assert!(read.rare.is_none());
    }
}

#[cfg(test)]
mod notes {
    use super::*;
    use crate::domain::meter::{Fold, Reading};
    use crate::domain::{Currency, CustomerSpec, MeterId};
    use rust_decimal::Decimal;
    use tallyman_actors::Entity;

    fn id(account: u64) -> AccountId {
        format!("{account:012}").into()
    }

    /// A customer of `accounts`, the first its payer.
    fn customer(accounts: &[u64]) -> Customer {
        let ids: Vec<String> = accounts.iter().map(|&a| id(a).to_string()).collect();
        let spec = CustomerSpec::new("acme", ids[0].clone(), ids, "standard");
        Customer::from_spec(spec, Currency::from_code("USD").unwrap()).unwrap()
    }

    /// An event of 1 unit on `account`, with event id fingerprint `id`.
    fn event(account: u64, id: u128) -> MeteredEvent {
        MeteredEvent {
            day: "2026-11-04".parse().unwrap(),
            account: self::id(account),
            meter: MeterId(0),
            reading: Reading {
                fold: Fold::Sum,
                quantity: Decimal::ONE,
                time: "2026-11-04T10:00:00Z".parse().unwrap(),
                version: 0,
                tiebreak: id as u64,
                dimension: None,
            },
            id,
            limit: 1_000,
        }
    }

    /// A customer of `n` accounts (numbered 1 to `n`) and events of 1 unit: one on
    /// every third account from account 2, the first one again, and one of an account
    /// the customer does not have (it left).
    fn events(n: u64) -> (Customer, Vec<MeteredEvent>) {
        let accounts: Vec<u64> = (1..=n).collect();
        let mut events: Vec<MeteredEvent> = (2..=n).step_by(3).map(|a| event(a, u128::from(a))).collect();
        events.push(event(2, 2));
        events.push(event(n + 1, 1 << 90));
        (customer(&accounts), events)
    }

    #[test]
    fn notes_gone_stale_within_a_group_never_misdirect_usage() {
        // A segment runs the prefetch rounds over a group of commands, then applies
        // them: a note taken before an earlier command of the group moved accounts
        // (an account adopted before the target shifts its position, the target
        // released, new terms, the target adopted again) still lands every event on
        // its account, as applying without notes does. 3 accounts: no index; 10: tags;
        // 40: a table.
        let period = Period::containing("2026-11-04".parse().unwrap());
        for n in [3u64, 10, 40] {
            let accounts: Vec<u64> = (1..=n).map(|i| i * 10).collect();
            let mut entity = CustomerEntity::default();
            entity.apply(&CustomerCommand::Upsert(Box::new(customer(&accounts))));
            for &a in &accounts {
                // Earlier usage: the index is built, so the rounds have guesses.
                entity.apply(&CustomerCommand::Usage(event(a, u128::from(a) << 64 | 1)));
            }
            let target = accounts[accounts.len() / 2];
            let usage = |a: u64, id: u128| CustomerCommand::Usage(event(a, id << 64 | 3));
            let group = [
                CustomerCommand::Adopt {
                    account: id(1),
                    usage: None,
                    period,
                },
                usage(target, 7),
                CustomerCommand::Release {
                    account: id(target),
                    period,
                },
                usage(target, 8),
                CustomerCommand::Upsert(Box::new(customer(&[
                    target + 1,
                    target + 2,
                    target + 3,
                    target + 5,
                ]))),
                usage(target + 2, 9),
                usage(target, 10),
                CustomerCommand::Adopt {
                    account: id(target),
                    usage: None,
                    period,
                },
                usage(target, 11),
            ];
            let mut plain = entity.clone();
            let expected: Vec<CustomerReply> = group.iter().map(|c| plain.apply(c)).collect();
            let mut notes = [0u64; 9];
            for round in 0..CustomerEntity::PREFETCH_ROUNDS {
                for (command, note) in group.iter().zip(&mut notes) {
                    entity.prefetch(command, round, note);
                }
            }
            // The target's note points where it was before the group.
            let before = entity.customer().unwrap().position(&id(target)).unwrap();
            assert!(
                likely_positions(notes[1]).contains(&before),
                "{n}: {:x}",
                notes[1]
            );
            let replies: Vec<CustomerReply> = group
                .iter()
                .zip(notes)
                .map(|(c, note)| entity.apply_noted(c, note))
                .collect();
            assert_eq!(replies, expected, "{n} accounts");
            assert_eq!(entity, plain, "{n} accounts");
        }
    }

    #[test]
    fn applying_with_any_note_gives_what_applying_without_one_gives() {
        // 2 accounts: no index; 10: an index by tag; 100: an index table. The notes
        // are right, wrong, out of range, or none: each is only a hint.
        for n in [2u64, 10, 100] {
            let (customer, events) = events(n);
            let upsert = CustomerCommand::Upsert(Box::new(customer));
            let mut plain = CustomerEntity::default();
            plain.apply(&upsert);
            let expected: Vec<CustomerReply> = events
                .iter()
                .map(|e| plain.apply(&CustomerCommand::Usage(e.clone())))
                .collect();
            assert!(expected.contains(&CustomerReply::Duplicate));
            let notes = |i: u64| {
                [
                    0,
                    1 << 32 | (i + 1) << 16 | i,
                    1 << 32 | 3 << 16,
                    1 << 32 | 0xffff << 16 | 0xfff0,
                ]
            };
            for which in 0..4 {
                let mut noted = CustomerEntity::default();
                noted.apply_noted(&upsert, 0);
                for (i, (e, want)) in events.iter().zip(&expected).enumerate() {
                    let note = notes(i as u64 % n)[which];
                    assert_eq!(noted.apply_noted(&CustomerCommand::Usage(e.clone()), note), *want);
                }
                assert_eq!(noted, plain, "{n} accounts, notes of kind {which}");
            }
        }
    }
}
