//! Tests of customers (customer.rs): checks, terms, the account index.

use super::*;
use rust_decimal_macros::dec;

fn spec() -> CustomerSpec {
    serde_json::from_str(
        r#"{"id": "acme", "payer": "111111111111", "accounts": ["222222222222", "111111111111"],
                "profile": "standard", "tax_rate": "0.0",
                "budget": {"amount": "5000.00", "thresholds": [50, 80, 100]}}"#,
    )
    .unwrap()
}

fn usd() -> Currency {
    Currency::from_code("USD").unwrap()
}

#[test]
fn a_customers_record_stays_within_its_allocator_size_class() {
    // Every customer has one, boxed: 96 bytes is a size class of mimalloc (at 21M
    // accounts, 4.2M customers, each step of 32 bytes costs 128 MiB). The index
    // takes 16 of them, the terms' pointer 8.
    assert_eq!(std::mem::size_of::<AccountIndex>(), 16);
    let size = std::mem::size_of::<Customer>();
    assert!(size <= 96, "{size}");
}

/// `c` as it is read back: its fields, and no index.
fn restored(c: &Customer) -> Customer {
    Customer::restored(
        c.id.clone(),
        c.payer.clone(),
        c.accounts.clone(),
        c.profile.clone(),
        c.tax_rate,
        c.terms().clone(),
    )
}

#[test]
fn terms_take_memory_only_when_there_are_some() {
    let mut c = Customer::from_spec(
        serde_json::from_str(r#"{"id": "acme", "payer": "1", "accounts": ["1"]}"#).unwrap(),
        usd(),
    )
    .unwrap();
    assert!(c.terms.0.is_none());
    c.terms_mut().commitment = Some(Decimal::TEN);
    assert_eq!(c.terms().commitment, Some(Decimal::TEN));
    let back = restored(&c);
    assert_eq!(back, c);
    assert!(back.terms.0.is_some());
    c.terms_mut().commitment = None;
    c.tidy_terms();
    assert!(c.terms.0.is_none());
    // Equal by content: empty terms allocated or not. Restored, empty terms take none.
    let mut d = c.clone();
    d.terms_mut();
    assert_eq!(c, d);
    assert!(restored(&d).terms.0.is_none());
}

#[test]
fn account_ids_compare_as_strings_do() {
    let ids = [
        "",
        "\0",
        "a",
        "a\0",
        "a\0\0",
        "ab",
        "b",
        "111111111111",
        "111111111112",
        "11111111111",
        "1111111111111111",
        "11111111111111111",
        "1111111111111112",
        "zzzzzzzzzzzzzzzzzz",
        "é",
    ];
    for a in ids {
        for b in ids {
            assert_eq!(cmp_as_str(a, b), a.cmp(b), "{a:?} vs {b:?}");
        }
    }
}

#[test]
fn customers_find_accounts_through_their_index_and_never_wrongly() {
    // 10 accounts: one tag byte each; 100: the table of positions.
    for n in [10, 100] {
        let mut s = spec();
        s.accounts = (0..n).map(|i| format!("{:012}", 500_000 + i * 7)).collect();
        let mut c = Customer::from_spec(s, usd()).unwrap();
        assert!(c.accounts.len() > AccountIndex::FROM);
        assert_eq!(c.accounts.len() > AccountIndex::TAGS, n == 100);
        for (i, a) in c.accounts.iter().enumerate() {
            assert_eq!(c.position(a), Some(i));
        }
        assert_eq!(c.position("000000500001"), None);
        // Through the methods, the index follows the list.
        let (added, _) = c.add_account("000000500001".into());
        assert_eq!(c.position("000000500001"), Some(added));
        let removed = c.remove_account("000000500007").unwrap();
        assert_eq!(c.position("000000500007"), None);
        assert_eq!(c.accounts[removed].as_str(), "000000500014");
        // Changed behind its back, the index is out of date; answers stay right.
        c.position("000000500014");
        c.accounts.remove(0);
        c.accounts.push("999999999999".into());
        for (i, a) in c.accounts.iter().enumerate() {
            assert_eq!(c.position(a), Some(i), "{a}");
        }
        assert_eq!(c.position("000000500000"), None);
    }
}

#[test]
fn prefetching_guesses_where_an_account_is_and_position_near_always_answers_right() {
    // 2 accounts: no index; 10: one tag byte each; 100: the table of positions.
    for n in [2, 10, 100] {
        let mut s = spec();
        s.accounts = (0..n).map(|i| format!("{:012}", 500_000 + i * 7)).collect();
        let built = Customer::from_spec(s, usd()).unwrap();
        // Read back, the index is not built: no guess, where there would be one, and
        // lookups still answer (by binary search).
        let mut c = restored(&built);
        if n > AccountIndex::FROM {
            assert_eq!(c.prefetch_position(&c.accounts[0], 1), None);
        }
        assert_eq!(c.position(&c.accounts[n / 2]), Some(n / 2));
        c.ensure_indexed();
        let mut right = 0;
        for (i, a) in c.accounts.iter().enumerate() {
            // A table needs a second round (its slot); the other forms answer in one.
            let first = c.prefetch_position(a, 0);
            assert_eq!(first.is_none(), n == 100, "{a}");
            // A guess, usually right: another account may share the tag, or hold
            // the slot where the account's probe starts.
            let likely = c.prefetch_position(a, 1).unwrap_or(0..0);
            right += usize::from(likely.contains(&i));
            assert_eq!(c.position_near(a, likely), Some(i));
            // However wrong the guess, the answer is the position.
            for guess in [0..0, 0..1, i..i + 1, n - 1..n, 0..n] {
                assert_eq!(c.position_near(a, guess), Some(i));
            }
        }
        assert!(
            right * 4 >= c.accounts.len() * 3,
            "{right} of {}",
            c.accounts.len()
        );
        assert_eq!(c.position_near("000000500001", 0..n), None);
        assert_eq!(c.position_near("000000500001", 0..1), None);
    }
}

#[test]
fn payer_is_an_account_and_accounts_are_sorted() {
    let mut s = spec();
    s.accounts = vec!["333".into(), "222".into()];
    let c = Customer::from_spec(s, usd()).unwrap();
    let ids: Vec<&str> = c.accounts.iter().map(|a| &**a).collect();
    assert_eq!(ids, ["111111111111", "222", "333"]);
}

#[test]
fn bad_fields_are_named() {
    let mut s = spec();
    s.tax_rate = dec!(20);
    assert_eq!(Customer::from_spec(s, usd()).unwrap_err().field, "tax_rate");
    let mut s = spec();
    s.credits.push(Credit {
        id: "promo".into(),
        amount: dec!(10.005),
        expires: None,
        meters: None,
        granted: 0,
    });
    let e = Customer::from_spec(s, usd()).unwrap_err();
    assert_eq!(e.field, "credits[0].amount");
    assert!(e.message.contains("minor units"));
    let mut s = spec();
    s.discounts.push(Discount {
        id: "edp".into(),
        percent: dec!(0),
        meters: None,
    });
    assert_eq!(
        Customer::from_spec(s, usd()).unwrap_err().field,
        "discounts[0].percent"
    );
    let mut s = spec();
    s.budget.as_mut().unwrap().thresholds = vec![80, 50];
    assert_eq!(
        Customer::from_spec(s, usd()).unwrap_err().field,
        "budget.thresholds"
    );
}

#[test]
fn credit_usable_until_its_expiry() {
    let c = Credit {
        id: "promo".into(),
        amount: dec!(10),
        expires: Some("2026-11-30".parse().unwrap()),
        meters: None,
        granted: 0,
    };
    assert!(c.usable_from("2026-11-01".parse().unwrap()));
    assert!(!c.usable_from("2026-12-01".parse().unwrap()));
}
