//! Customers: a payer account and its linked accounts, with what is agreed per customer
//! (billing profile, tax rate, commitment, discounts, credits, budget).

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::error::FieldError;
use super::ids::MAX_ID_LEN;
use super::money::Currency;
use crate::compact::short_id::cmp_as_str;

/// An account id: a [`super::ShortId`], 16 bytes in place. Ids of up to 15 bytes (every
/// AWS-style 12-digit id) are kept inline, so a lookup compares bytes in place instead
/// of following a pointer, and a copy is a copy; longer ones share one allocation.
pub type AccountId = super::ShortId;

/// Most accounts in one customer.
pub const MAX_ACCOUNTS_PER_CUSTOMER: usize = 10_000;

/// A customer as created through the API or configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerSpec {
    pub id: String,
    pub payer: String,
    #[serde(default)]
    pub accounts: Vec<String>,
    #[serde(default = "default_profile")]
    pub profile: String,
    #[serde(default)]
    pub tax_rate: Decimal,
    /// Overrides the profile's minimum commitment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commitment: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Budgets of single accounts of the customer, by account.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub account_budgets: std::collections::BTreeMap<String, Budget>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discounts: Vec<Discount>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credits: Vec<Credit>,
}

fn default_profile() -> String {
    "standard".into()
}

impl CustomerSpec {
    /// A customer of `accounts` paid by `payer`, on `profile`, with what the API's
    /// defaults give the rest: no tax, commitment, budgets, discounts or credits.
    pub fn new(
        id: impl Into<String>,
        payer: impl Into<String>,
        accounts: Vec<String>,
        profile: impl Into<String>,
    ) -> Self {
        CustomerSpec {
            id: id.into(),
            payer: payer.into(),
            accounts,
            profile: profile.into(),
            tax_rate: Decimal::ZERO,
            commitment: None,
            budget: None,
            account_budgets: Default::default(),
            discounts: Vec::new(),
            credits: Vec::new(),
        }
    }
}

/// A monthly budget with alert thresholds in percent of the amount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub amount: Decimal,
    pub thresholds: Vec<u32>,
}

impl Budget {
    fn validate(&self, field: &str, currency: Currency) -> Result<(), FieldError> {
        check_money(&format!("{field}.amount"), self.amount, currency)?;
        if self.amount.is_zero() {
            return Err(FieldError::new(format!("{field}.amount"), "must be positive"));
        }
        if self.thresholds.is_empty() || self.thresholds.iter().any(|&t| t == 0 || t > 1000) {
            return Err(FieldError::new(
                format!("{field}.thresholds"),
                "must list percentages from 1 to 1000, e.g. [50, 80, 100]",
            ));
        }
        if self.thresholds.windows(2).any(|w| w[0] >= w[1]) {
            return Err(FieldError::new(
                format!("{field}.thresholds"),
                "must be strictly increasing",
            ));
        }
        Ok(())
    }

    /// The thresholds that `spent` has reached: `spent ≥ amount × threshold / 100`.
    pub fn reached(&self, spent: Decimal) -> impl Iterator<Item = u32> + '_ {
        self.thresholds
            .iter()
            .copied()
            .filter(move |&t| spent * Decimal::ONE_HUNDRED >= self.amount * Decimal::from(t))
    }
}

/// A percentage discount on some meters (`meters` absent: on the whole bill).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Discount {
    pub id: String,
    pub percent: Decimal,
    #[serde(default)]
    pub meters: Option<Vec<String>>,
}

/// A prepaid credit: a balance that pays for charges until it runs out or expires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Credit {
    pub id: String,
    /// The balance left, in the partition's currency.
    pub amount: Decimal,
    /// The last day the credit may be used: it applies to periods that begin on or before it.
    #[serde(default)]
    pub expires: Option<NaiveDate>,
    /// Meters it pays for (absent: any charge).
    #[serde(default)]
    pub meters: Option<Vec<String>>,
    /// Order of granting within the customer: lower is older.
    #[serde(default)]
    pub granted: u64,
}

/// A checked customer.
///
/// Every customer has one, boxed in its entity, so it takes 96 bytes (an allocator size
/// class): what few customers have — a commitment, budgets, discounts, credits — is in
/// its [`Terms`], behind one pointer. It is written as the struct it was, those fields
/// in place (taken from [`Customer::terms`], given back to [`Customer::restored`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Customer {
    /// Inline up to 15 bytes, as account ids (no allocation of its own).
    pub id: super::ShortId,
    pub payer: AccountId,
    /// Every account of the customer, the payer included, sorted and unique. A
    /// `ThinVec` (one word).
    pub accounts: thin_vec::ThinVec<AccountId>,
    pub profile: super::ShortId,
    pub tax_rate: Decimal,
    terms: RareTerms,
    /// A hash index over `accounts` (16 bytes), built with the customer; one read back
    /// is built by [`Customer::ensure_indexed`].
    pub index: AccountIndex,
}

/// What few customers have: read through [`Customer::terms`], changed through
/// [`Customer::terms_mut`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Terms {
    /// Overrides the profile's minimum commitment.
    pub commitment: Option<Decimal>,
    pub budget: Option<Budget>,
    /// Sorted by account.
    pub account_budgets: thin_vec::ThinVec<(AccountId, Budget)>,
    pub discounts: thin_vec::ThinVec<Discount>,
    pub credits: thin_vec::ThinVec<Credit>,
}

static NO_TERMS: Terms = Terms {
    commitment: None,
    budget: None,
    account_budgets: thin_vec::ThinVec::new(),
    discounts: thin_vec::ThinVec::new(),
    credits: thin_vec::ThinVec::new(),
};

/// A customer's [`Terms`] behind one pointer, `None` while they are all empty; equal
/// by what they hold.
#[derive(Clone, Debug, Default)]
struct RareTerms(Option<Box<Terms>>);

impl PartialEq for RareTerms {
    fn eq(&self, other: &RareTerms) -> bool {
        self.get() == other.get()
    }
}

impl Eq for RareTerms {}

impl RareTerms {
    fn new(terms: Terms) -> RareTerms {
        RareTerms((terms != NO_TERMS).then(|| Box::new(terms)))
    }

    fn get(&self) -> &Terms {
        self.0.as_deref().unwrap_or(&NO_TERMS)
    }
}

/// Where each account of a customer is in its sorted list, found from the account id's
/// hash instead of by binary search, which reads a new cache line at nearly every step
/// (for a thousand ids, ten; for sixteen, three or four, each a memory miss when the
/// customer was not touched lately).
///
/// - Up to [`AccountIndex::TAGS`] accounts: one byte of each account's hash, in list
///   order, kept in the customer's own record. A lookup reads the record, which it
///   reads anyway, and then only the one account whose byte matches.
/// - More: an open-addressing table of 16-bit positions, at least twice as large as
///   the list. A lookup reads one slot and one account.
///
/// It is only ever a hint: every position it gives is checked against the list, and
/// a search that finds nothing falls back to the binary search. So an index that is out
/// of date (the list changed other than through [`Customer::add_account`] and
/// [`Customer::remove_account`]) costs time, never a wrong answer; so does one not
/// built (a customer read back and not yet [`Customer::ensure_indexed`]). It is neither
/// compared nor written.
///
/// Built with the list, not at its first use: a lazy cell would take 8 bytes more, and
/// the record would no longer fit its allocator size class of 96 bytes.
#[derive(Clone, Default)]
pub struct AccountIndex(Positions);

/// The forms of an [`AccountIndex`].
#[derive(Clone, Default)]
enum Positions {
    /// None: too few accounts to need one, or not built.
    #[default]
    None,
    Tags([u8; AccountIndex::TAGS]),
    /// Position + 1 per slot; 0 marks an empty slot.
    Table(thin_vec::ThinVec<u16>),
}

impl AccountIndex {
    /// Customers with more accounts than this get an index (for fewer, a binary search
    /// reads one or two lines).
    pub const FROM: usize = 3;
    /// Customers with at most this many accounts are indexed by one byte each (15: the
    /// bytes and the form's tag take 16).
    pub const TAGS: usize = 15;

    fn hash(account: &str) -> u64 {
        xxhash_rust::xxh3::xxh3_64(account.as_bytes())
    }

    /// The tag byte: the hash's top bits (the table's slots take its low ones).
    fn tag(hash: u64) -> u8 {
        (hash >> 56) as u8
    }

    /// The index of `accounts`.
    fn build(accounts: &[AccountId]) -> AccountIndex {
        AccountIndex(Self::positions(accounts))
    }

    fn positions(accounts: &[AccountId]) -> Positions {
        if accounts.len() <= Self::FROM || accounts.len() >= usize::from(u16::MAX) {
            return Positions::None;
        }
        if accounts.len() <= Self::TAGS {
            let mut tags = [0u8; Self::TAGS];
            for (tag, account) in tags.iter_mut().zip(accounts) {
                *tag = Self::tag(Self::hash(account));
            }
            return Positions::Tags(tags);
        }
        let size = (2 * accounts.len()).next_power_of_two();
        let mut table: thin_vec::ThinVec<u16> = std::iter::repeat_n(0, size).collect();
        for (i, account) in accounts.iter().enumerate() {
            let mut slot = Self::hash(account) as usize & (size - 1);
            while table[slot] != 0 {
                slot = (slot + 1) & (size - 1);
            }
            // Position + 1 (at most MAX_ACCOUNTS_PER_CUSTOMER): 0 marks an empty slot.
            table[slot] = i as u16 + 1;
        }
        Positions::Table(table)
    }

    /// `account`'s position in `accounts`, if the index finds it there.
    fn find(&self, accounts: &[AccountId], account: &str) -> Option<usize> {
        let hash = Self::hash(account);
        let is_at = |i: usize| accounts.get(i).is_some_and(|a| a == account);
        match &self.0 {
            Positions::None => None,
            Positions::Tags(tags) => {
                let tag = Self::tag(hash);
                (0..accounts.len().min(Self::TAGS)).find(|&i| tags[i] == tag && is_at(i))
            }
            Positions::Table(table) => {
                let mask = table.len() - 1;
                let mut slot = hash as usize & mask;
                // The table is at most half full, so an empty slot ends every probe.
                loop {
                    let i = (table[slot] as usize).checked_sub(1)?;
                    if is_at(i) {
                        return Some(i);
                    }
                    slot = (slot + 1) & mask;
                }
            }
        }
    }
}

impl PartialEq for AccountIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for AccountIndex {}

impl std::fmt::Debug for AccountIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccountIndex")
    }
}

fn check_name(field: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() || value.len() > MAX_ID_LEN || value.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            format!("must be 1 to {MAX_ID_LEN} bytes without control characters (got {value:?})"),
        ));
    }
    Ok(())
}

fn check_money(field: &str, amount: Decimal, currency: Currency) -> Result<(), FieldError> {
    if amount.is_sign_negative() && !amount.is_zero() {
        return Err(FieldError::new(
            field,
            format!("must not be negative (got {amount})"),
        ));
    }
    if !currency.is_whole_minor_units(amount) {
        return Err(FieldError::new(
            field,
            format!(
                "{amount} is not a whole number of {currency} minor units ({} decimal places)",
                currency.minor_units()
            ),
        ));
    }
    Ok(())
}

impl Discount {
    pub fn validate(&self) -> Result<(), FieldError> {
        check_name("id", &self.id)?;
        if self.percent <= Decimal::ZERO || self.percent > Decimal::ONE_HUNDRED {
            return Err(FieldError::new(
                "percent",
                format!("must be more than 0 and at most 100 (got {})", self.percent),
            ));
        }
        check_scope(&self.meters)
    }
}

impl Credit {
    pub fn validate(&self, currency: Currency) -> Result<(), FieldError> {
        check_name("id", &self.id)?;
        check_money("amount", self.amount, currency)?;
        if self.amount.is_zero() {
            return Err(FieldError::new("amount", "must be positive"));
        }
        check_scope(&self.meters)
    }

    /// Whether the credit may pay for the period starting `first_day`.
    pub fn usable_from(&self, first_day: NaiveDate) -> bool {
        self.expires.is_none_or(|e| e >= first_day)
    }

    /// Number of meters in scope; `usize::MAX` for any meter.
    pub fn scope_width(&self) -> usize {
        self.meters.as_ref().map_or(usize::MAX, Vec::len)
    }
}

fn check_scope(meters: &Option<Vec<String>>) -> Result<(), FieldError> {
    if let Some(m) = meters {
        if m.is_empty() {
            return Err(FieldError::new(
                "meters",
                "must name at least one meter (leave it out to cover every meter)",
            ));
        }
        for (i, name) in m.iter().enumerate() {
            check_name(&format!("meters[{i}]"), name)?;
        }
    }
    Ok(())
}

impl Customer {
    /// A customer as it was kept (read back from a snapshot or the journal): its fields
    /// as they were checked when it was made, its accounts sorted and unique, the payer
    /// among them. Its terms take memory only if they hold something. Its index is not
    /// built (it is not written): [`Customer::ensure_indexed`] builds it, and lookups
    /// take the binary search until then.
    pub fn restored(
        id: super::ShortId,
        payer: AccountId,
        accounts: thin_vec::ThinVec<AccountId>,
        profile: super::ShortId,
        tax_rate: Decimal,
        terms: Terms,
    ) -> Customer {
        Customer {
            id,
            payer,
            accounts,
            profile,
            tax_rate,
            terms: RareTerms::new(terms),
            index: AccountIndex::default(),
        }
    }

    /// Its commitment, budgets, discounts and credits (empty ones when it has none).
    pub fn terms(&self) -> &Terms {
        self.terms.get()
    }

    /// Its terms, to change them (allocated on first use; [`Customer::tidy_terms`]
    /// lets them go when they are empty again).
    pub fn terms_mut(&mut self) -> &mut Terms {
        self.terms.0.get_or_insert_with(Default::default)
    }

    /// Takes its terms out, leaving none.
    pub fn take_terms(&mut self) -> Terms {
        self.terms.0.take().map(|t| *t).unwrap_or_default()
    }

    /// Lets the terms' allocation go if they are all empty.
    pub fn tidy_terms(&mut self) {
        if self.terms.0.as_deref() == Some(&NO_TERMS) {
            self.terms.0 = None;
        }
    }

    /// Where `account` is among the customer's accounts.
    pub fn position(&self, account: &str) -> Option<usize> {
        if (AccountIndex::FROM + 1..usize::from(u16::MAX)).contains(&self.accounts.len()) {
            if let Some(i) = self.index.find(&self.accounts, account) {
                return Some(i);
            }
        }
        self.search(account).ok()
    }

    /// Starts fetching the customer's record: its list of accounts and their index.
    pub fn prefetch_terms(&self) {
        crate::compact::prefetch(&self.accounts);
        crate::compact::prefetch(&self.index);
    }

    /// Starts fetching what [`Self::position`] will read for `account`, going at most
    /// `depth` reads deep into memory fetched before (0: only the customer's record).
    /// `Some`: the positions where `account` likely is, their ids on their way; `None`:
    /// a deeper round would tell (an index table's slot is on its way), or no guess.
    ///
    /// Only a hint, like every prefetch: [`Self::position`] decides.
    pub fn prefetch_position(&self, account: &str, depth: usize) -> Option<std::ops::Range<usize>> {
        let n = self.accounts.len();
        let fetch = |i: usize| {
            crate::compact::prefetch(self.accounts.as_ptr().wrapping_add(i));
            Some(i..i + 1)
        };
        if n <= AccountIndex::FROM {
            // A binary search over a few ids reads them all.
            crate::compact::prefetch(self.accounts.as_ptr());
            crate::compact::prefetch(self.accounts.as_ptr().wrapping_add(n.saturating_sub(1)));
            return Some(0..n);
        }
        match &self.index.0 {
            Positions::None => None,
            Positions::Tags(tags) => {
                let tag = AccountIndex::tag(AccountIndex::hash(account));
                fetch((0..n.min(AccountIndex::TAGS)).find(|&i| tags[i] == tag)?)
            }
            Positions::Table(table) => {
                // The table's size from the list's, as it was built: its own length is in
                // its header, one more miss. (Out of date, the slot is only a worse guess.)
                let size = (2 * n).next_power_of_two();
                let slot = AccountIndex::hash(account) as usize & (size - 1);
                if depth == 0 {
                    crate::compact::prefetch(table.as_ptr());
                    crate::compact::prefetch(table.as_ptr().wrapping_add(slot));
                    return None;
                }
                fetch((*table.get(slot)? as usize).checked_sub(1)?)
            }
        }
    }

    /// [`Self::position`], trying the `likely` positions first (as
    /// [`Self::prefetch_position`] answered them).
    pub fn position_near(&self, account: &str, likely: std::ops::Range<usize>) -> Option<usize> {
        self.position_among(account, likely)
            .or_else(|| self.position(account))
    }

    /// Where `account` is, if it is at one of (at most a few of) the `likely` positions;
    /// no search beyond them.
    pub fn position_among(&self, account: &str, likely: std::ops::Range<usize>) -> Option<usize> {
        if likely.len() > AccountIndex::FROM {
            return None;
        }
        likely
            .into_iter()
            .find(|&i| self.accounts.get(i).is_some_and(|a| a == account))
    }

    /// The binary search of the sorted accounts: where `account` is, or would sort.
    fn search(&self, account: &str) -> Result<usize, usize> {
        self.accounts.binary_search_by(|a| cmp_as_str(a, account))
    }

    /// Adds `account` to the accounts (where it sorts): its position, and whether it
    /// is new (`false`: it was there already).
    pub fn add_account(&mut self, account: AccountId) -> (usize, bool) {
        match self.search(&account) {
            Ok(i) => (i, false),
            Err(i) => {
                self.accounts.insert(i, account);
                self.reindex();
                (i, true)
            }
        }
    }

    /// Takes `account` out of the accounts; where it was.
    pub fn remove_account(&mut self, account: &str) -> Option<usize> {
        let i = self.position(account)?;
        self.accounts.remove(i);
        self.reindex();
        Some(i)
    }

    fn indexed(mut self) -> Customer {
        self.reindex();
        self
    }

    /// Builds the index of the accounts anew (after the list changed).
    fn reindex(&mut self) {
        self.index = AccountIndex::build(&self.accounts);
    }

    /// Builds the index of the accounts unless it is built: for a customer read back
    /// (snapshots, the journal), whose index is not written. Without it, lookups take
    /// the binary search.
    pub fn ensure_indexed(&mut self) {
        if matches!(self.index.0, Positions::None) {
            self.reindex();
        }
    }

    /// Checks a customer's fields. Accounts are sorted and deduplicated, and the payer
    /// is added to them if it is not listed (a payer is an account of its own customer).
    /// Whether the profile and meters exist is for the caller, who knows them.
    pub fn from_spec(spec: CustomerSpec, currency: Currency) -> Result<Customer, FieldError> {
        check_name("id", &spec.id)?;
        check_name("payer", &spec.payer)?;
        check_name("profile", &spec.profile)?;
        let mut accounts = spec.accounts;
        for (i, a) in accounts.iter().enumerate() {
            check_name(&format!("accounts[{i}]"), a)?;
        }
        accounts.push(spec.payer.clone());
        accounts.sort_unstable();
        accounts.dedup();
        if accounts.len() > MAX_ACCOUNTS_PER_CUSTOMER {
            return Err(FieldError::new(
                "accounts",
                format!(
                    "has {} accounts; the limit is {MAX_ACCOUNTS_PER_CUSTOMER}",
                    accounts.len()
                ),
            ));
        }
        if spec.tax_rate.is_sign_negative() && !spec.tax_rate.is_zero() || spec.tax_rate > Decimal::ONE {
            return Err(FieldError::new(
                "tax_rate",
                format!(
                    "must be a fraction from 0 to 1, e.g. 0.2 for 20% (got {})",
                    spec.tax_rate
                ),
            ));
        }
        if let Some(c) = spec.commitment {
            check_money("commitment", c, currency)?;
        }
        if let Some(b) = &spec.budget {
            b.validate("budget", currency)?;
        }
        for (account, b) in &spec.account_budgets {
            let field = format!("account_budgets.{account}");
            if accounts.binary_search(account).is_err() {
                return Err(FieldError::new(field, "is not an account of this customer"));
            }
            b.validate(&field, currency)?;
        }
        for (i, d) in spec.discounts.iter().enumerate() {
            d.validate()
                .map_err(|e| FieldError::new(format!("discounts[{i}].{}", e.field), e.message))?;
        }
        for (i, c) in spec.credits.iter().enumerate() {
            c.validate(currency)
                .map_err(|e| FieldError::new(format!("credits[{i}].{}", e.field), e.message))?;
        }
        let payer: AccountId = spec.payer.into();
        Ok(Customer {
            id: spec.id.into(),
            accounts: accounts
                .into_iter()
                .map(|a| if *a == *payer { payer.clone() } else { a.into() })
                .collect(),
            payer,
            profile: spec.profile.into(),
            tax_rate: spec.tax_rate,
            terms: RareTerms::new(Terms {
                commitment: spec.commitment,
                budget: spec.budget,
                account_budgets: spec
                    .account_budgets
                    .into_iter()
                    .map(|(a, b)| (AccountId::from(a.as_str()), b))
                    .collect(),
                discounts: spec.discounts.into(),
                credits: spec.credits.into(),
            }),
            index: AccountIndex::default(),
        }
        .indexed())
    }
}

#[cfg(test)]
#[path = "customer_tests.rs"]
mod tests;
