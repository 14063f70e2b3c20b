//! A partition's customers, each given a number once (from 0, in the order first seen),
//! so that the directory keeps a 4-byte number per account for its owner instead of the
//! owner's 16-byte key: at a million accounts, 8 bytes an entry of a table about half
//! full, against a number table and a wider key map per customer.
//!
//! The keys are kept once, in a list by number; a key's number is found through a table
//! of numbers hashed by their key (5 bytes a slot with its control byte, where a map
//! holding the keys again took 21). The list grows by an eighth at a time, not by
//! doubling: at 4.2M customers (21M accounts), the two took 310 MiB as a map and a
//! doubled list, about 120 as they are.
//!
//! A number is never reused or taken back. A partition's customers are never deleted,
//! and a number given to a customer whose creation then failed costs only its entries.
//! It owns the numbering and nothing else: which accounts a customer has is the
//! directory's, what a customer is, its entity's.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;

use super::account::CustomerKey;

type Hashing = foldhash::fast::RandomState;

/// The numbered customers of a partition (see the module's documentation).
#[derive(Default)]
pub struct Customers {
    numbering: RwLock<Numbering>,
    /// How many have [`Customers::CREATED`] set.
    created: AtomicUsize,
    hashing: Hashing,
}

#[derive(Default)]
struct Numbering {
    /// Number → key.
    keys: Vec<CustomerKey>,
    /// Each key's number, with [`Customers::CREATED`] set once the customer exists,
    /// found by the hash of the key.
    index: HashTable<u32>,
}

impl Numbering {
    /// The entry (number and flag) of `key`, whose hash is `hash`.
    fn find(&self, hash: u64, key: &str) -> Option<u32> {
        self.index
            .find(hash, |&n| {
                self.keys[(n & !Customers::CREATED) as usize].as_str() == key
            })
            .copied()
    }

    /// The entry of `key`, to set its flag.
    fn find_mut(&mut self, hash: u64, key: &str) -> Option<&mut u32> {
        let keys = &self.keys;
        self.index.find_mut(hash, |&n| {
            keys[(n & !Customers::CREATED) as usize].as_str() == key
        })
    }
}

/// The keys by number, read-locked: derefs to the list (see [`Customers::keys`]).
pub struct Keys<'a>(RwLockReadGuard<'a, Numbering>);

impl std::ops::Deref for Keys<'_> {
    type Target = [CustomerKey];

    fn deref(&self) -> &[CustomerKey] {
        &self.0.keys
    }
}

impl Customers {
    /// The flag of a customer that exists (its upsert was applied); the numbers are
    /// the bits below it.
    const CREATED: u32 = 1 << 31;

    fn read(&self) -> RwLockReadGuard<'_, Numbering> {
        self.numbering.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Numbering> {
        self.numbering.write().unwrap_or_else(|p| p.into_inner())
    }

    fn hash(&self, key: &str) -> u64 {
        self.hashing.hash_one(key)
    }

    /// The number of `key`, given now if it has none.
    pub fn number(&self, key: &CustomerKey) -> u32 {
        let hash = self.hash(key.as_str());
        if let Some(n) = self.read().find(hash, key.as_str()) {
            return n & !Self::CREATED;
        }
        // Checked again under the write lock, so a key is numbered once.
        let mut numbering = self.write();
        if let Some(n) = numbering.find(hash, key.as_str()) {
            return n & !Self::CREATED;
        }
        let Numbering { keys, index } = &mut *numbering;
        let n = u32::try_from(keys.len())
            .ok()
            .filter(|&n| n < Self::CREATED)
            .expect("a partition has fewer than 2^31 customers");
        if keys.len() == keys.capacity() {
            keys.reserve_exact((keys.len() / 8).max(64));
        }
        keys.push(key.clone());
        index.insert_unique(hash, n, |&m| {
            self.hashing
                .hash_one(keys[(m & !Self::CREATED) as usize].as_str())
        });
        n
    }

    /// The number of `key`, if it has one (created or not).
    pub fn find(&self, key: &str) -> Option<u32> {
        self.read().find(self.hash(key), key).map(|n| n & !Self::CREATED)
    }

    /// Records that `key` exists (numbering it if need be).
    pub fn mark_created(&self, key: &CustomerKey) {
        self.number(key);
        let hash = self.hash(key.as_str());
        if let Some(n) = self.write().find_mut(hash, key.as_str()) {
            if *n & Self::CREATED == 0 {
                *n |= Self::CREATED;
                self.created.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The key of the existing customer `customer`.
    pub fn existing(&self, customer: &str) -> Option<CustomerKey> {
        let numbering = self.read();
        numbering
            .find(self.hash(customer), customer)
            .filter(|n| n & Self::CREATED != 0)
            .map(|n| numbering.keys[(n & !Self::CREATED) as usize].clone())
    }

    /// Whether `customer` exists.
    pub fn exists(&self, customer: &str) -> bool {
        self.read()
            .find(self.hash(customer), customer)
            .is_some_and(|n| n & Self::CREATED != 0)
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
        let numbering = self.read();
        numbering
            .index
            .iter()
            .filter(|&&n| n & Self::CREATED != 0)
            .map(|&n| numbering.keys[(n & !Self::CREATED) as usize].clone())
            .collect()
    }

    /// The keys by number: `keys()[n]` is the key of number `n`. Held briefly: a new
    /// customer's numbering waits for it.
    pub fn keys(&self) -> Keys<'_> {
        Keys(self.read())
    }

    /// The key of number `n` (given by [`Self::number`]).
    pub fn key(&self, n: u32) -> CustomerKey {
        self.read().keys[n as usize].clone()
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

    /// The list of keys grows by an eighth, not by doubling.
    #[test]
    fn the_list_of_keys_grows_by_an_eighth() {
        let c = Customers::default();
        for i in 0..100_000 {
            c.number(&format!("c{i}").as_str().into());
        }
        let numbering = c.read();
        assert_eq!((numbering.keys.len(), numbering.index.len()), (100_000, 100_000));
        assert!(
            numbering.keys.capacity() <= 100_000 + 100_000 / 8,
            "{}",
            numbering.keys.capacity()
        );
    }
}

mod directory;
mod moves;
mod upserts;
