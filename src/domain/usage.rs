//! Usage events, their validation, and an account's usage for the open period.
//!
//! [`UsageEvent::validate`] turns what a client sent into a checked event or a list of
//! errors that each name the field and the problem. [`AccountUsage`] folds checked
//! events into per-meter aggregates, applying each event id at most once.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::error::FieldError;
use super::ids::{MeterId, MAX_ID_LEN};
use super::meter::{MeterAggregate, Overflow, Reading};
use crate::compact::id_table::{Fp96, IdTable};
use crate::compact::thin_block::{Tail, TailMut, ThinBlock};

/// Most dimensions on one event.
pub const MAX_DIMENSIONS: usize = 16;
/// Longest dimension name or value, in bytes.
pub const MAX_DIMENSION_LEN: usize = 256;
/// Largest accepted quantity: 10^15 units in one event.
pub const MAX_QUANTITY: Decimal = Decimal::from_parts(0xA4C6_8000, 0x3_8D7E, 0, false, 0);
/// Most digits after the decimal point in a quantity.
pub const MAX_QUANTITY_SCALE: u32 = 12;

/// A checked usage event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UsageEvent {
    pub id: String,
    pub account: String,
    pub meter: String,
    pub quantity: Decimal,
    pub time: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dimensions: BTreeMap<String, String>,
}

/// A quantity as the client wrote it: a JSON number's literal text, or a string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawQuantity {
    Number(String),
    Text(String),
    /// Anything else (`true`, an object, …), named for the error message.
    Other(&'static str),
}

/// A usage event as received, before validation. Every field is optional so that a
/// missing one is reported by name rather than as a parse failure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawUsageEvent {
    pub id: Option<String>,
    pub account: Option<String>,
    pub meter: Option<String>,
    pub quantity: Option<RawQuantity>,
    pub time: Option<String>,
    pub dimensions: Option<BTreeMap<String, String>>,
}

/// Parses a quantity exactly (`0.1` is one tenth) and checks it is finite, non-negative,
/// at most [`MAX_QUANTITY`] and has at most [`MAX_QUANTITY_SCALE`] decimal places.
pub fn parse_quantity(raw: &RawQuantity) -> Result<Decimal, String> {
    let text = match raw {
        RawQuantity::Number(t) | RawQuantity::Text(t) => t.trim(),
        RawQuantity::Other(kind) => {
            return Err(format!("must be a number or a string of digits, not {kind}"))
        }
    };
    let lower = text.to_ascii_lowercase();
    if ["nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"].contains(&lower.as_str()) {
        return Err(format!("must be a finite number (got {text:?})"));
    }
    let value = text
        .parse::<Decimal>()
        .or_else(|_| Decimal::from_scientific(text))
        .map_err(|_| format!("{text:?} is not a decimal number"))?;
    if value.is_sign_negative() && !value.is_zero() {
        return Err(format!("must not be negative (got {text})"));
    }
    if value > MAX_QUANTITY {
        return Err(format!("must be at most {MAX_QUANTITY} (got {text})"));
    }
    let value = value.normalize();
    if value.scale() > MAX_QUANTITY_SCALE {
        return Err(format!(
            "has more than {MAX_QUANTITY_SCALE} decimal places (got {text})"
        ));
    }
    Ok(value)
}

fn check_id(field: &str, value: Option<String>, errors: &mut Vec<FieldError>) -> String {
    match value {
        None => errors.push(FieldError::new(field, "is required")),
        Some(v) if v.is_empty() => errors.push(FieldError::new(field, "must not be empty")),
        Some(v) if v.len() > MAX_ID_LEN => errors.push(FieldError::new(
            field,
            format!("is {} bytes long; the limit is {MAX_ID_LEN}", v.len()),
        )),
        Some(v) if v.chars().any(char::is_control) => {
            errors.push(FieldError::new(field, "must not contain control characters"))
        }
        Some(v) => return v,
    }
    String::new()
}

impl UsageEvent {
    /// Checks every field of `raw`; on failure returns all the problems found.
    pub fn validate(raw: RawUsageEvent) -> Result<UsageEvent, Vec<FieldError>> {
        let mut errors = Vec::new();
        let id = check_id("id", raw.id, &mut errors);
        let account = check_id("account", raw.account, &mut errors);
        let meter = check_id("meter", raw.meter, &mut errors);
        let quantity = match raw.quantity {
            None => {
                errors.push(FieldError::new("quantity", "is required"));
                Decimal::ZERO
            }
            Some(q) => parse_quantity(&q).unwrap_or_else(|m| {
                errors.push(FieldError::new("quantity", m));
                Decimal::ZERO
            }),
        };
        let time = match raw.time {
            None => {
                errors.push(FieldError::new("time", "is required"));
                DateTime::<Utc>::UNIX_EPOCH
            }
            Some(t) => DateTime::parse_from_rfc3339(&t)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(|e| {
                    errors.push(FieldError::new(
                        "time",
                        format!("{t:?} is not an RFC 3339 time such as 2026-11-03T10:00:00Z ({e})"),
                    ));
                    DateTime::<Utc>::UNIX_EPOCH
                }),
        };
        let dimensions = raw.dimensions.unwrap_or_default();
        if dimensions.len() > MAX_DIMENSIONS {
            errors.push(FieldError::new(
                "dimensions",
                format!("has {} entries; the limit is {MAX_DIMENSIONS}", dimensions.len()),
            ));
        }
        for (k, v) in &dimensions {
            if k.is_empty() || k.len() > MAX_DIMENSION_LEN || v.len() > MAX_DIMENSION_LEN {
                errors.push(FieldError::new(
                    format!("dimensions.{k}"),
                    format!("names and values must be 1 to {MAX_DIMENSION_LEN} bytes long"),
                ));
            }
        }
        if errors.is_empty() {
            Ok(UsageEvent {
                id,
                account,
                meter,
                quantity,
                time,
                dimensions,
            })
        } else {
            Err(errors)
        }
    }
}

/// A stable fingerprint of an event id, the key of deduplication: the low 96 bits of
/// its 128-bit xxh3, the bits an account keeps ([`Fp96`]; the top 32 are zero).
pub fn event_fingerprint(id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(id.as_bytes()) & Fp96::MASK
}

/// What applying an event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The event changed the aggregate.
    New,
    /// An event with this id was already applied this period; nothing changed.
    Duplicate,
    /// The account has applied as many distinct events this period as it may (the
    /// bound of its deduplication state); this new one was not applied.
    Full,
}

/// One account's usage in the open period: an aggregate per meter, and the fingerprints
/// of the event ids already applied.
///
/// Memory is what bounds how many accounts one process holds, so it is one word in
/// place, and everything else is one allocation ([`ThinBlock`]): an 8-byte header, the
/// aggregates (32 bytes each, ascending by meter id), then the ids. An account without
/// usage this period allocates nothing. Both parts grow exactly: the meters one at a
/// time (an account uses a few), the ids by a quarter at a time while they are few.
///
/// Few ids (up to [`AccountUsage::SORTED_MAX`]) are kept sorted in the block, 12 bytes
/// each, and found from a guess; more become one [`LargeIds`] set in their place.
#[derive(Clone, Default)]
pub struct AccountUsage {
    block: ThinBlock<MeterAggregate, Fp96, LargeIds>,
}

/// A large set of an account's event ids, past [`AccountUsage::SORTED_MAX`] of them,
/// where inserting into a sorted list would move too much: a hash set; past
/// [`LargeIds::HASHED_MAX`], [`LargeIds::SHARDS`] hash sets chosen by the id's top bits,
/// so that a hot account's set never stalls its segment to rehash millions of ids at
/// once (one shard, a sixty-fourth of them, grows at a time).
///
/// Ids are taken in as 128-bit numbers of which only the low 96 bits count ([`Fp96`]).
#[derive(Clone, Debug)]
pub enum LargeIds {
    Hashed(IdTable),
    Sharded(Box<ShardedIds>),
}

/// A large set of ids spread over [`LargeIds::SHARDS`] hash sets, with its count (so
/// that the per-account bound is checked without visiting every shard).
#[derive(Clone, Debug)]
pub struct ShardedIds {
    len: usize,
    sets: Box<[IdTable]>,
}

impl LargeIds {
    /// The most ids kept in one hash set.
    pub const HASHED_MAX: usize = 16_384;
    /// How many hash sets a large set is spread over.
    pub const SHARDS: usize = 64;

    fn shard(id: u128) -> usize {
        // The top bits kept: the sets hash by the low ones.
        (id >> 90) as usize % Self::SHARDS
    }

    /// The set of `ids` (distinct, low 96 bits), in the form their number calls for.
    fn of(ids: Vec<u128>) -> LargeIds {
        if ids.len() <= Self::HASHED_MAX {
            return LargeIds::Hashed(ids.into_iter().collect());
        }
        let each = ids.len() / Self::SHARDS + 1;
        Self::sharded(ids.into_iter(), each)
    }

    fn sharded(ids: impl Iterator<Item = u128>, each: usize) -> Self {
        let mut sets: Vec<IdTable> = (0..Self::SHARDS).map(|_| IdTable::with_capacity(each)).collect();
        let mut len = 0;
        for id in ids {
            len += usize::from(sets[Self::shard(id)].insert(id));
        }
        LargeIds::Sharded(Box::new(ShardedIds {
            len,
            sets: sets.into_boxed_slice(),
        }))
    }

    /// Starts fetching the line where a lookup of `id` begins.
    pub fn prefetch(&self, id: u128) {
        match self {
            LargeIds::Hashed(ids) => ids.prefetch(id),
            LargeIds::Sharded(shards) => {
                if let Some(set) = shards.sets.get(Self::shard(id)) {
                    set.prefetch(id);
                }
            }
        }
    }

    pub fn contains(&self, id: u128) -> bool {
        match self {
            LargeIds::Hashed(ids) => ids.contains(id),
            LargeIds::Sharded(shards) => shards.sets[Self::shard(id)].contains(id),
        }
    }

    /// Takes `id` out again (an event found to be refused after its id went in).
    pub fn remove(&mut self, id: u128) {
        match self {
            LargeIds::Hashed(ids) => {
                ids.remove(id);
            }
            LargeIds::Sharded(shards) => {
                if shards.sets[Self::shard(id)].remove(id) {
                    shards.len -= 1;
                }
            }
        }
    }

    /// Adds `id`; `false` if it was there already.
    pub fn insert(&mut self, id: u128) -> bool {
        match self {
            LargeIds::Hashed(ids) if ids.len() >= Self::HASHED_MAX && !ids.contains(id) => {
                let all = ids.iter().chain(std::iter::once(id));
                *self = Self::sharded(all, 2 * Self::HASHED_MAX / Self::SHARDS);
                true
            }
            LargeIds::Hashed(ids) => ids.insert(id),
            LargeIds::Sharded(shards) => {
                let added = shards.sets[Self::shard(id)].insert(id);
                shards.len += usize::from(added);
                added
            }
        }
    }

    pub fn len(&self) -> usize {
        match self {
            LargeIds::Hashed(ids) => ids.len(),
            LargeIds::Sharded(shards) => shards.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every id, in no particular order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = u128> + '_> {
        match self {
            LargeIds::Hashed(ids) => Box::new(ids.iter()),
            LargeIds::Sharded(shards) => Box::new(shards.sets.iter().flat_map(IdTable::iter)),
        }
    }
}

/// Where a fingerprint likely is among `len` sorted ones: its top 64 bits (of 96)
/// scaled to `len`.
fn guess_sorted(len: usize, id: Fp96) -> usize {
    ((u128::from((id.get() >> 32) as u64) * len as u128) >> 64) as usize
}

/// Where `id` is in the sorted `ids`, or where it would go (as `binary_search` answers).
///
/// Fingerprints are spread evenly over all 96-bit values, so the place is guessed from
/// the id's top 64 bits and found by stepping from the guess: a few neighbours, nearly
/// always in the cache line of the guess. A binary search over 64 ids reads six lines
/// one after another, each a memory miss for an account not touched lately. Any ids
/// give the right answer; uneven ones only take more steps.
fn find_sorted(ids: &[Fp96], id: Fp96) -> Result<usize, usize> {
    if ids.is_empty() {
        return Err(0);
    }
    let guess = guess_sorted(ids.len(), id);
    // The first place whose id is not below `id`.
    let mut i = guess;
    if ids[i] < id {
        i += 1;
        while i < ids.len() && ids[i] < id {
            i += 1;
        }
    } else {
        while i > 0 && ids[i - 1] >= id {
            i -= 1;
        }
    }
    if ids.get(i) == Some(&id) {
        Ok(i)
    } else {
        Err(i)
    }
}

/// Two aggregates of one meter, given as one account's usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the aggregate of meter {} appears twice in one account's usage", .0.0)]
pub struct MeterTwice(pub MeterId);

/// The same aggregates and the same set of ids, however the ids are kept.
impl PartialEq for AccountUsage {
    fn eq(&self, other: &Self) -> bool {
        self.meters() == other.meters()
            && match (self.block.tail(), other.block.tail()) {
                (Tail::Items(a), Tail::Items(b)) => a == b,
                _ => self.ids_len() == other.ids_len() && self.ids().all(|id| other.has_seen(id)),
            }
    }
}

impl Eq for AccountUsage {}

impl std::fmt::Debug for AccountUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountUsage")
            .field("meters", &self.meters())
            .field("ids", &self.ids_len())
            .finish()
    }
}

impl AccountUsage {
    /// The most ids kept sorted in the account's block.
    pub const SORTED_MAX: usize = 64;

    /// The usage of an account as it was kept (read back from a snapshot or a journaled
    /// hand-over): the aggregates `meters`, in any order, one a meter, and the events of
    /// fingerprints `ids` applied (only their low 96 bits count; an id listed twice is
    /// one). One allocation of the right size, the ids in the form their number calls
    /// for (a cold start reads millions of these).
    pub fn restored(mut meters: Vec<MeterAggregate>, ids: Vec<u128>) -> Result<AccountUsage, MeterTwice> {
        meters.sort_by_key(MeterAggregate::meter);
        if let Some(twice) = meters.windows(2).find(|w| w[0].meter() == w[1].meter()) {
            return Err(MeterTwice(twice[0].meter()));
        }
        Ok(AccountUsage {
            block: match Self::kept_ids(ids) {
                Ok(sorted) => ThinBlock::from_parts(meters, &sorted),
                Err(large) => {
                    let mut block = ThinBlock::from_parts(meters, &[]);
                    block.set_large(large);
                    block
                }
            },
        })
    }

    /// Applies `reading` of `meter` for the event with fingerprint `event`, unless that
    /// event was applied before. The id is marked seen only if the aggregate changed,
    /// so "seen" and "applied" never disagree.
    pub fn apply(&mut self, event: u128, meter: MeterId, reading: &Reading) -> Result<Applied, Overflow> {
        self.apply_within(u32::MAX, event, meter, reading)
    }

    /// [`Self::apply`], unless the account has applied `limit` distinct events already:
    /// then a new event is [`Applied::Full`] and changes nothing (a duplicate is still a
    /// duplicate).
    pub fn apply_within(
        &mut self,
        limit: u32,
        event: u128,
        meter: MeterId,
        reading: &Reading,
    ) -> Result<Applied, Overflow> {
        // At the bound, nothing goes in: a duplicate is still a duplicate.
        if self.ids_len() >= limit as usize {
            return Ok(if self.has_seen(event) {
                Applied::Duplicate
            } else {
                Applied::Full
            });
        }
        // Otherwise one lookup of the id: it goes in first, and comes out again if the
        // aggregate refuses the event (an overflow, rare), so that "seen" never outlives
        // a refusal.
        if !self.insert_id(event) {
            return Ok(Applied::Duplicate);
        }
        let applied = match self.meters().binary_search_by_key(&meter, MeterAggregate::meter) {
            Ok(i) => self.block.heads_mut()[i].apply(reading),
            Err(i) => {
                self.block.insert_head(i, MeterAggregate::new(meter, reading));
                Ok(())
            }
        };
        if let Err(overflow) = applied {
            self.remove_id(event);
            return Err(overflow);
        }
        Ok(Applied::New)
    }

    /// Folds another account usage in (the same account's usage kept elsewhere): the
    /// aggregates merge and the seen ids unite. An event id present in both was applied
    /// twice, so both must come from disjoint streams; the engine guarantees it by
    /// pausing the account's traffic while its usage moves.
    pub fn merge(&mut self, other: &AccountUsage) -> Result<(), Overflow> {
        for aggregate in other.meters() {
            match self
                .meters()
                .binary_search_by_key(&aggregate.meter(), MeterAggregate::meter)
            {
                Ok(i) => self.block.heads_mut()[i].merge(aggregate)?,
                Err(i) => self.block.insert_head(i, aggregate.clone()),
            }
        }
        if other.ids_len() > Self::SORTED_MAX {
            // Built at its final size. Inserted one by one, a large set's ids come in the
            // order of its slots (by their low bits, which also pick their slots here) and
            // would pile up in one end of a table sized for fewer, until it grew.
            let all = self.ids().chain(other.ids()).collect();
            self.set_ids(all);
        } else {
            for id in other.ids() {
                self.insert_id(id);
            }
        }
        Ok(())
    }

    /// Starts fetching what applying an event will read first: the block's start (its
    /// header, the aggregates, and for most accounts the ids too: a block of a few
    /// meters and ids spans two or three lines). [`Self::prefetch_ids`] follows, once
    /// the header is in.
    pub fn prefetch(&self) {
        let block = self.block.as_ptr();
        if !block.is_null() {
            crate::compact::prefetch(block);
            crate::compact::prefetch(block.wrapping_add(64));
        }
    }

    /// Starts fetching the line where the lookup of `event` among the ids begins (reads
    /// the block's header: best after [`Self::prefetch`] had it fetched).
    pub fn prefetch_ids(&self, event: u128) {
        match self.block.tail() {
            Tail::Items([]) => {}
            Tail::Items(ids) => crate::compact::prefetch(
                ids.as_ptr()
                    .wrapping_add(guess_sorted(ids.len(), Fp96::new(event))),
            ),
            Tail::Large(ids) => ids.prefetch(event),
        }
    }

    /// Whether the event with fingerprint `event` was applied.
    pub fn has_seen(&self, event: u128) -> bool {
        match self.block.tail() {
            Tail::Items(ids) => find_sorted(ids, Fp96::new(event)).is_ok(),
            Tail::Large(ids) => ids.contains(event),
        }
    }

    /// Marks `event` seen; `false` if it was already.
    fn insert_id(&mut self, event: u128) -> bool {
        let id = Fp96::new(event);
        let (at, full) = match self.block.tail_mut() {
            TailMut::Large(ids) => return ids.insert(event),
            TailMut::Items(ids) => match find_sorted(ids, id) {
                Ok(_) => return false,
                Err(at) => (at, ids.len() >= Self::SORTED_MAX),
            },
        };
        if full {
            let all = self.ids().chain(std::iter::once(event)).collect();
            self.set_ids(all);
        } else {
            self.block.insert_item(at, id);
        }
        true
    }

    /// Takes `event` out of the ids seen again (an event refused after its id went in).
    fn remove_id(&mut self, event: u128) {
        let at = match self.block.tail_mut() {
            TailMut::Large(ids) => return ids.remove(event),
            TailMut::Items(ids) => find_sorted(ids, Fp96::new(event)),
        };
        if let Ok(at) = at {
            self.block.remove_item(at);
        }
    }

    /// Makes the ids seen exactly `ids` (only their low 96 bits count), each kept in the
    /// form their number calls for: sorted in the block, or one large set.
    fn set_ids(&mut self, ids: Vec<u128>) {
        match Self::kept_ids(ids) {
            Ok(sorted) => self.block.set_items(&sorted),
            Err(large) => self.block.set_large(large),
        }
    }

    /// `ids` (only their low 96 bits count) as they are kept: sorted fingerprints while
    /// [`Self::SORTED_MAX`] or fewer, else one large set.
    fn kept_ids(ids: Vec<u128>) -> Result<Vec<Fp96>, LargeIds> {
        let mut ids: Vec<u128> = ids.into_iter().map(|id| id & Fp96::MASK).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() > Self::SORTED_MAX {
            Err(LargeIds::of(ids))
        } else {
            Ok(ids.into_iter().map(Fp96::new).collect())
        }
    }

    /// How many distinct events were applied.
    pub fn ids_len(&self) -> usize {
        match self.block.tail() {
            Tail::Items(ids) => ids.len(),
            Tail::Large(ids) => ids.len(),
        }
    }

    /// Every applied event's fingerprint, in no particular order.
    pub fn ids(&self) -> Box<dyn Iterator<Item = u128> + '_> {
        match self.block.tail() {
            Tail::Items(ids) => Box::new(ids.iter().map(|id| id.get())),
            Tail::Large(ids) => ids.iter(),
        }
    }

    /// Lets go of the applied events' fingerprints, keeping the aggregates: once no
    /// retry can come any more.
    pub fn forget_ids(&mut self) {
        self.block.clear_tail();
    }

    /// The aggregates, ascending by meter id.
    pub fn meters(&self) -> &[MeterAggregate] {
        self.block.heads()
    }

    pub fn is_empty(&self) -> bool {
        self.meters().is_empty()
    }
}

#[cfg(test)]
#[path = "usage_tests.rs"]
mod tests;
