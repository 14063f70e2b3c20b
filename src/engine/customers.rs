//! A partition's customers, each given a number once (from 0, in the order first seen),
//! so that the directory keeps a 4-byte number per account for its owner instead of the
//! owner's 16-byte key: at a million accounts, 8 bytes an entry of a table about half
//! full, against a number table and a wider key map per customer.
//!
//! A number is never reused or taken back. A partition's customers are never deleted,
//! and a number given to a customer whose creation then failed costs only its entries.
//! It owns the numbering and nothing else: which accounts a customer has is the
//! directory's, what a customer is, its entity's.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use dashmap::DashMap;

use super::account::CustomerKey;

type Hashing = foldhash::fast::RandomState;

/// The numbered customers of a partition (see the module's documentation).
#[derive(Default)]
pub struct Customers {
    /// Key → number, with [`Customers::CREATED`] set once the customer exists.
    by_key: DashMap<CustomerKey, u32, Hashing>,
    /// Number → key.
    keys: RwLock<Vec<CustomerKey>>,
    /// How many have [`Customers::CREATED`] set.
    created: AtomicUsize,
}

impl Customers {
    /// The flag of a customer that exists (its upsert was applied); the numbers are
    /// the bits below it.
    const CREATED: u32 = 1 << 31;

    /// The number of `key`, given now if it has none.
    pub fn number(&self, key: &CustomerKey) -> u32 {
        if let Some(n) = self.by_key.get(key) {
            return *n & !Self::CREATED;
        }
        // The shard's lock is held from the check to the insert, so a key is numbered
        // once; the list's lock is only ever taken inside it, never the other way round.
        *self.by_key.entry(key.clone()).or_insert_with(|| {
            let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
            let n = u32::try_from(keys.len())
                .ok()
                .filter(|&n| n < Self::CREATED)
                .expect("a partition has fewer than 2^31 customers");
            keys.push(key.clone());
            n
        }) & !Self::CREATED
    }

    /// The number of `key`, if it has one (created or not).
    pub fn find(&self, key: &str) -> Option<u32> {
        self.by_key.get(key).map(|n| *n & !Self::CREATED)
    }

    /// Records that `key` exists (numbering it if need be).
    pub fn mark_created(&self, key: &CustomerKey) {
        self.number(key);
        if let Some(mut n) = self.by_key.get_mut(key) {
            if *n & Self::CREATED == 0 {
                *n |= Self::CREATED;
                self.created.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The key of the existing customer `customer`.
    pub fn existing(&self, customer: &str) -> Option<CustomerKey> {
        self.by_key
            .get(customer)
            .filter(|n| **n & Self::CREATED != 0)
            .map(|r| r.key().clone())
    }

    /// Whether `customer` exists.
    pub fn exists(&self, customer: &str) -> bool {
        self.by_key.get(customer).is_some_and(|n| *n & Self::CREATED != 0)
    }

    /// How many customers exist.
    pub fn len(&self) -> usize {
        self.created.load(Ordering::Relaxed)
    }

    /// Whether none exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every existing customer's key, in no particular order.
    pub fn all(&self) -> Vec<CustomerKey> {
        self.by_key
            .iter()
            .filter(|r| *r.value() & Self::CREATED != 0)
            .map(|r| r.key().clone())
            .collect()
    }

    /// The keys by number: `keys()[n]` is the key of number `n`. Held briefly: a new
    /// customer's numbering waits for it.
    pub fn keys(&self) -> RwLockReadGuard<'_, Vec<CustomerKey>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The key of number `n` (given by [`Self::number`]).
    pub fn key(&self, n: u32) -> CustomerKey {
        self.keys()[n as usize].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_given_once_in_order_and_existence_is_apart() {
        let c = Customers::default();
        let (acme, zeta): (CustomerKey, CustomerKey) = ("acme".into(), "zeta".into());
        assert_eq!(c.number(&zeta), 0);
        assert_eq!(c.number(&acme), 1);
        assert_eq!(c.number(&zeta), 0);
        assert_eq!((c.find("acme"), c.find("nobody")), (Some(1), None));
        assert_eq!((c.key(0), c.key(1)), (zeta.clone(), acme.clone()));
        // Numbered is not created: a customer exists once its upsert applied.
        assert!(!c.exists("acme") && c.existing("acme").is_none());
        assert_eq!(c.len(), 0);
        c.mark_created(&acme);
        c.mark_created(&acme);
        assert!(c.exists("acme") && !c.exists("zeta"));
        assert_eq!(c.existing("acme"), Some(acme.clone()));
        assert_eq!((c.len(), c.all()), (1, vec![acme.clone()]));
        // Creating a customer never numbered numbers it.
        let new: CustomerKey = "new".into();
        c.mark_created(&new);
        assert_eq!((c.find("new"), c.len()), (Some(2), 2));
        assert_eq!(c.number(&acme), 1, "the flag is not part of the number");
    }

    #[test]
    fn racing_threads_number_each_key_once() {
        let c = std::sync::Arc::new(Customers::default());
        let keys: Vec<CustomerKey> = (0..500).map(|i| format!("c{i}").as_str().into()).collect();
        let numbered: Vec<Vec<u32>> = std::thread::scope(|s| {
            let runs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| keys.iter().map(|k| c.number(k)).collect::<Vec<u32>>()))
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        assert!(numbered.windows(2).all(|w| w[0] == w[1]));
        let mut all = numbered[0].clone();
        all.sort_unstable();
        assert_eq!(all, (0..500).collect::<Vec<u32>>());
        assert!(keys.iter().all(|k| c.key(c.number(k)) == *k));
    }
}
