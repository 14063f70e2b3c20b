//! The engine on the actor runtime, against a plain sequential fold through the domain.
//!
//! Random usage (with retried events) for many customers, while segments move between
//! arbiters and commands panic on purpose (the test-only fault hook), must produce
//! exactly the bills that folding the same events one by one through the domain gives.
//! Deterministic: seeded randomness, and no sleeps.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use tallyman::config::{Settings, Validated};
use tallyman::domain::customer::{Credit, Discount};
use tallyman::domain::usage::event_fingerprint;
use tallyman::domain::*;
use tallyman::engine::{CustomerKey, Engine, EngineError, EngineOptions};
use tallyman_actors::FaultHook;

fn settings() -> Validated {
    let mut s = Settings::load(None).unwrap();
    s.runtime.arbiters = 2;
    s.runtime.segments = 8;
    s.runtime.rebalance_interval_secs = 0;
    s.partitions.truncate(1);
    s.partitions[0].open_period = Some("2026-11".into());
    s.partitions[0].customers = None;
    s.validate().unwrap()
}

struct Family {
    customer: Customer,
}

fn families(rng: &mut ChaCha8Rng, count: usize) -> Vec<Family> {
    let usd = Currency::from_code("USD").unwrap();
    (0..count)
        .map(|c| {
            let size = rng.random_range(1..=6);
            let accounts: Vec<String> = (0..size).map(|a| format!("{c:04}{a:08}")).collect();
            let enterprise = c % 5 == 0;
            let payer = accounts[0].clone();
            let profile = if enterprise { "enterprise" } else { "standard" };
            let spec = CustomerSpec {
                tax_rate: Decimal::new(rng.random_range(0..25), 2),
                discounts: if c % 3 == 0 {
                    vec![Discount {
                        id: "edp".into(),
                        percent: Decimal::from(7),
                        meters: None,
                    }]
                } else {
                    vec![]
                },
                credits: if c % 4 == 0 {
                    vec![Credit {
                        id: "promo".into(),
                        amount: Decimal::new(5000, 2),
                        expires: Some("2026-12-31".parse().unwrap()),
                        meters: Some(vec!["ec2.instance_hours".into()]),
                        granted: 0,
                    }]
                } else {
                    vec![]
                },
                ..CustomerSpec::new(format!("cust-{c}"), payer, accounts, profile)
            };
            Family {
                customer: Customer::from_spec(spec, usd).unwrap(),
            }
        })
        .collect()
}

fn event(
    rng: &mut ChaCha8Rng,
    n: u64,
    families: &[Family],
    meters: &[(String, Option<String>)],
) -> UsageEvent {
    let f = &families[rng.random_range(0..families.len())];
    let account = f.customer.accounts[rng.random_range(0..f.customer.accounts.len())].to_string();
    let (meter, dimension) = &meters[rng.random_range(0..meters.len())];
    UsageEvent {
        id: format!("evt-{n}"),
        account,
        meter: meter.clone(),
        quantity: Decimal::new(rng.random_range(1..5_000_000), 3),
        time: format!(
            "2026-11-{:02}T{:02}:00:00Z",
            rng.random_range(1..=30),
            rng.random_range(0..24)
        )
        .parse()
        .unwrap(),
        dimensions: dimension
            .iter()
            .map(|d| (d.clone(), format!("user-{}", rng.random_range(0..40))))
            .collect(),
    }
}

/// The bill the domain gives for `events`, folded one by one.
fn expected_bill(settings: &Validated, family: &Family, events: &[UsageEvent]) -> Bill {
    let p = &settings.partitions[0];
    let mut usage: HashMap<AccountId, AccountUsage> = HashMap::new();
    for e in events {
        if !family.customer.accounts.iter().any(|a| **a == *e.account) {
            continue;
        }
        let (meter, reading) = p.catalog.resolve(e, e.time.date_naive()).unwrap();
        usage
            .entry(e.account.as_str().into())
            .or_default()
            .apply(event_fingerprint(&e.id), meter, &reading)
            .unwrap();
    }
    let ctx = BillingContext {
        catalog: &p.catalog,
        rounding: p.rounding,
        period: "2026-11".parse().unwrap(),
    };
    let profile = &settings.profiles[family.customer.profile.as_str()];
    bill_customer(&ctx, &family.customer, profile, usage.iter())
}

#[test]
fn bills_equal_a_sequential_fold_despite_moves_and_panics() {
    for seed in [11u64, 12] {
        actix_rt::System::new().block_on(async move {
            let settings = settings();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let faulty: Arc<Mutex<HashSet<u64>>> = Default::default();
            let f = faulty.clone();
            let injected = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let i = injected.clone();
            let hook: FaultHook<CustomerKey> = Arc::new(move |_, lsn| {
                let hit = f.lock().unwrap().contains(&lsn);
                if hit {
                    i.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                hit
            });
            let engine = Engine::start(
                &settings,
                EngineOptions {
                    fault_hook: Some(hook),
                    ..EngineOptions::default()
                },
            )
            .await
            .unwrap();
            let p = engine.partition("aws").unwrap();
            let families = families(&mut rng, 60);
            for f in &families {
                p.upsert_customer(f.customer.clone()).await.unwrap();
            }
            let catalog = p.catalog();
            let meters: Vec<(String, Option<String>)> = catalog
                .meters()
                .map(|(_, m)| (m.name.to_string(), m.aggregation.dimension().map(str::to_owned)))
                .collect();
            // From here on, about one command in eight panics on its first try.
            let first = p.runtime().journal().last_lsn() + 1;
            for lsn in first..first + 2_000 {
                if rng.random_range(0..8) == 0 {
                    faulty.lock().unwrap().insert(lsn);
                }
            }
            let mut sent: Vec<UsageEvent> = Vec::new();
            let mut moves = Vec::new();
            let mut accepted = 0;
            let mut duplicates = 0;
            for round in 0..150u64 {
                let mut batch: Vec<UsageEvent> = (0..rng.random_range(1..40))
                    .map(|i| event(&mut rng, round * 100 + i, &families, &meters))
                    .collect();
                // Retry some earlier events, as a client does after a lost acknowledgement.
                for _ in 0..rng.random_range(0..3) {
                    if !sent.is_empty() {
                        batch.push(sent[rng.random_range(0..sent.len())].clone());
                    }
                }
                if rng.random_range(0..6) == 0 {
                    let segment = rng.random_range(0..8u32);
                    let to = rng.random_range(0..2usize);
                    moves.push(actix_rt::spawn(p.runtime().clone().move_segment(segment, to)));
                }
                let summary = p.ingest(batch.clone()).await.unwrap();
                accepted += summary.accepted;
                duplicates += summary.duplicates;
                sent.extend(batch);
            }
            for m in moves {
                m.await.unwrap().unwrap();
            }
            let distinct: HashSet<&str> = sent.iter().map(|e| e.id.as_str()).collect();
            assert_eq!(
                accepted as usize,
                distinct.len(),
                "every distinct event applied once"
            );
            assert_eq!((accepted + duplicates) as usize, sent.len());
            assert!(p.runtime().moves() > 0);
            assert!(
                injected.load(std::sync::atomic::Ordering::Relaxed) > 10,
                "faults were injected"
            );
            assert!(p.runtime().dead_letters().is_empty());
            for f in &families {
                let got = p.customer_bill(&f.customer.id).await.unwrap();
                assert_eq!(
                    got,
                    expected_bill(&settings, f, &sent),
                    "seed {seed}, {}",
                    f.customer.id
                );
            }
            // An account's bill is its share of its customer's.
            let f = &families[1];
            let statement = p.account_bill(&f.customer.payer).await.unwrap();
            let bill = p.customer_bill(&f.customer.id).await.unwrap();
            match bill.accounts.iter().find(|a| a.account == f.customer.payer) {
                Some(share) => assert_eq!(&statement.bill, share),
                None => assert!(statement.bill.lines.is_empty() && statement.bill.total.is_zero()),
            }
            engine.stop();
        });
    }
}

#[test]
fn an_invalid_event_rejects_the_whole_batch_and_changes_nothing() {
    actix_rt::System::new().block_on(async {
        let settings = settings();
        let engine = Engine::start(&settings, EngineOptions::default()).await.unwrap();
        let p = engine.partition("aws").unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let families = families(&mut rng, 3);
        for f in &families {
            p.upsert_customer(f.customer.clone()).await.unwrap();
        }
        let account = families[0].customer.payer.to_string();
        let good = UsageEvent {
            id: "e1".into(),
            account: account.clone(),
            meter: "ec2.instance_hours".into(),
            quantity: Decimal::from(10),
            time: "2026-11-03T10:00:00Z".parse().unwrap(),
            dimensions: Default::default(),
        };
        let mut unknown_meter = good.clone();
        unknown_meter.id = "e2".into();
        unknown_meter.meter = "ec2.nope".into();
        let mut unknown_account = good.clone();
        unknown_account.id = "e3".into();
        unknown_account.account = "999".into();
        let mut outside = good.clone();
        outside.id = "e4".into();
        outside.time = "2026-10-31T23:59:59Z".parse().unwrap();
        let journaled = p.runtime().journal().last_lsn();
        let err = p
            .ingest(vec![good.clone(), unknown_meter, unknown_account, outside])
            .await
            .unwrap_err();
        let EngineError::InvalidEvents(errors) = err else {
            panic!("{err:?}")
        };
        let fields: Vec<(usize, &str)> = errors.iter().map(|e| (e.index, e.field.as_str())).collect();
        assert_eq!(fields, [(1, "meter"), (2, "account"), (3, "time")]);
        assert!(
            errors[2]
                .message
                .contains("falls in period 2026-10, before the first open one"),
            "{}",
            errors[2].message
        );
        assert_eq!(p.runtime().journal().last_lsn(), journaled, "nothing journaled");
        let bill = p.customer_bill(&families[0].customer.id).await.unwrap();
        assert!(bill.lines.is_empty(), "nothing applied");
        // The good event alone goes through; sent again it is a duplicate.
        let s = p.ingest(vec![good.clone()]).await.unwrap();
        assert_eq!((s.accepted, s.duplicates), (1, 0));
        let s = p.ingest(vec![good]).await.unwrap();
        assert_eq!((s.accepted, s.duplicates), (0, 1));
        engine.stop();
    });
}

/// One small partition (November 2026 open, no sample customers) in `zone`.
fn zoned(zone: &str) -> Validated {
    let mut s = Settings::load(None).unwrap();
    s.runtime.arbiters = 1;
    s.runtime.segments = 2;
    s.runtime.rebalance_interval_secs = 0;
    s.partitions.truncate(1);
    s.partitions[0].open_period = Some("2026-11".into());
    s.partitions[0].customers = None;
    s.partitions[0].time_zone = zone.into();
    s.validate().unwrap()
}

#[test]
fn periods_are_calendar_months_in_the_partitions_time_zone() {
    actix_rt::System::new().block_on(async {
        let settings = zoned("America/New_York");
        let engine = Engine::start(&settings, EngineOptions::default()).await.unwrap();
        let p = engine.partition("aws").unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let families = families(&mut rng, 1);
        p.upsert_customer(families[0].customer.clone()).await.unwrap();
        let at = |id: &str, time: &str| UsageEvent {
            id: id.into(),
            account: families[0].customer.payer.to_string(),
            meter: "ec2.instance_hours".into(),
            quantity: Decimal::from(10),
            time: time.parse().unwrap(),
            dimensions: Default::default(),
        };
        // 2026-12-01T03:00Z is 22:00 on 30 November in New York (EST, UTC-5): November's.
        let s = p
            .ingest(vec![at("late-evening", "2026-12-01T03:00:00Z")])
            .await
            .unwrap();
        assert_eq!(s.accepted, 1);
        // 2026-11-01T02:00Z is 22:00 on 31 October in New York (EDT, UTC-4): October's,
        // so it is refused, and the message names the local period.
        let err = p
            .ingest(vec![at("halloween", "2026-11-01T02:00:00Z")])
            .await
            .unwrap_err();
        let EngineError::InvalidEvents(errors) = err else {
            panic!("{err:?}")
        };
        assert!(
            errors[0].message.contains("falls in period 2026-10"),
            "{}",
            errors[0].message
        );
        // An hour and a half later it is 1 November there, 23:30 the day before in UTC.
        let s = p
            .ingest(vec![at("midnight", "2026-11-01T05:30:00Z")])
            .await
            .unwrap();
        assert_eq!(s.accepted, 1);
        let bill = p.customer_bill(&families[0].customer.id).await.unwrap();
        assert_eq!(bill.period.to_string(), "2026-11");
        let hours: Decimal = bill
            .lines
            .iter()
            .filter(|l| &*l.meter == "ec2.instance_hours")
            .map(|l| l.quantity)
            .sum();
        assert_eq!(hours, Decimal::from(20), "both November events, and only they");
        engine.stop();
    });
}

#[test]
fn an_unknown_time_zone_is_refused_by_name() {
    let mut s = Settings::load(None).unwrap();
    s.partitions[0].time_zone = "Mars/Olympus_Mons".into();
    let err = s.validate().unwrap_err().to_string();
    assert!(
        err.contains("partitions[0].time_zone") || err.contains("time_zone"),
        "{err}"
    );
    assert!(err.contains("Mars/Olympus_Mons"), "{err}");
}

#[test]
fn an_account_move_is_one_journal_record_that_carries_its_usage() {
    use tallyman::engine::CustomerCommand;
    actix_rt::System::new().block_on(async {
        let settings = settings();
        let engine = Engine::start(&settings, EngineOptions::default()).await.unwrap();
        let p = engine.partition("aws").unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let families: Vec<Family> = families(&mut rng, 8)
            .into_iter()
            .filter(|f| f.customer.accounts.len() >= 2)
            .take(2)
            .collect();
        for f in &families {
            p.upsert_customer(f.customer.clone()).await.unwrap();
        }
        let (from, to) = (&families[0].customer, &families[1].customer);
        let moving = from.accounts.iter().find(|a| **a != from.payer).unwrap().to_string();
        let s = p
            .ingest(vec![UsageEvent {
                id: "m1".into(),
                account: moving.clone(),
                meter: "ec2.instance_hours".into(),
                quantity: Decimal::from(7),
                time: "2026-11-03T10:00:00Z".parse().unwrap(),
                dimensions: Default::default(),
            }])
            .await
            .unwrap();
        assert_eq!(s.accepted, 1);
        let before = p.runtime().journal().last_lsn();
        p.move_account(&to.id, &moving).await.unwrap();
        let journal = p.runtime().journal();
        assert_eq!(journal.last_lsn(), before + 1, "the move is one record");
        let mut record = None;
        journal
            .replay(before, &mut |_, r| {
                record = Some(r.clone());
                false
            })
            .unwrap();
        let record = record.unwrap();
        assert_eq!(record.len(), 2, "{record:?}");
        assert!(
            matches!(&record[0], (k, CustomerCommand::Release { account, .. }) if **k == *from.id && **account == *moving)
        );
        match &record[1] {
            (k, CustomerCommand::Adopt { account, usage, .. }) => {
                assert_eq!(**k, *to.id);
                assert_eq!(**account, *moving);
                assert!(usage.is_some(), "the usage travels inside the record");
            }
            other => panic!("{other:?}"),
        }
        // The hours moved with the account: the new customer's bill has them.
        let bill = p.customer_bill(&to.id).await.unwrap();
        let hours: Decimal = bill
            .lines
            .iter()
            .filter(|l| &*l.meter == "ec2.instance_hours")
            .map(|l| l.quantity)
            .sum();
        assert_eq!(hours, Decimal::from(7));
        // The payer cannot leave, and nothing is journaled for the refusal.
        let last = journal.last_lsn();
        let err = p.move_account(&to.id, &from.payer).await.unwrap_err();
        assert!(matches!(err, EngineError::Conflict(_)), "{err:?}");
        assert_eq!(journal.last_lsn(), last);
        engine.stop();
    });
}

#[test]
fn a_partitions_time_zone_cannot_change_once_it_has_data() {
    use tallyman::engine::JournalMode;
    let dir = std::env::temp_dir().join(format!("tallyman-tz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let options = || EngineOptions {
        journal: JournalMode::File {
            dir: dir.clone(),
            fsync: false,
            file_bytes: 1 << 20,
        },
        ..EngineOptions::default()
    };
    actix_rt::System::new().block_on(async {
        let engine = Engine::start(&zoned("America/New_York"), options())
            .await
            .unwrap();
        engine.stop();
    });
    actix_rt::System::new().block_on(async {
        let err = Engine::start(&zoned("UTC"), options()).await.err().unwrap();
        let text = format!("{err}");
        assert!(
            text.contains("America/New_York") && text.contains("cannot change"),
            "{text}"
        );
        // The zone it was opened in still opens.
        let engine = Engine::start(&zoned("America/New_York"), options())
            .await
            .unwrap();
        engine.stop();
    });
    let _ = std::fs::remove_dir_all(&dir);
}
