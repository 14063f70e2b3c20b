//! How a customer is written: as the struct it was before its rare terms moved behind
//! a pointer, those fields in place, and its account budgets as the map from account to
//! budget they were kept in. Its account index is not written.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use thin_vec::ThinVec;

use crate::domain::customer::{Budget, Credit, Discount, Terms};
use crate::domain::{AccountId, Customer, ShortId};

/// [`Customer`] as it is written: the struct it was, its terms' fields in place.
#[derive(Serialize)]
#[serde(rename = "Customer")]
struct CustomerWritten<'a> {
    id: &'a ShortId,
    payer: &'a AccountId,
    accounts: &'a ThinVec<AccountId>,
    profile: &'a ShortId,
    tax_rate: &'a Decimal,
    commitment: &'a Option<Decimal>,
    budget: &'a Option<Budget>,
    #[serde(serialize_with = "budgets_by_account::serialize_ref")]
    account_budgets: &'a ThinVec<(AccountId, Budget)>,
    discounts: &'a ThinVec<Discount>,
    credits: &'a ThinVec<Credit>,
}

/// [`Customer`] as it is read.
#[derive(Deserialize)]
#[serde(rename = "Customer")]
struct CustomerRead {
    id: ShortId,
    payer: AccountId,
    accounts: ThinVec<AccountId>,
    profile: ShortId,
    tax_rate: Decimal,
    commitment: Option<Decimal>,
    budget: Option<Budget>,
    #[serde(default, with = "budgets_by_account")]
    account_budgets: ThinVec<(AccountId, Budget)>,
    discounts: ThinVec<Discount>,
    credits: ThinVec<Credit>,
}

impl Serialize for Customer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let terms = self.terms();
        CustomerWritten {
            id: &self.id,
            payer: &self.payer,
            accounts: &self.accounts,
            profile: &self.profile,
            tax_rate: &self.tax_rate,
            commitment: &terms.commitment,
            budget: &terms.budget,
            account_budgets: &terms.account_budgets,
            discounts: &terms.discounts,
            credits: &terms.credits,
        }
        .serialize(serializer)
    }
}

/// Read back with its index not built: the caller builds it
/// ([`Customer::ensure_indexed`]).
impl<'de> Deserialize<'de> for Customer {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let c = CustomerRead::deserialize(deserializer)?;
        Ok(Customer::restored(
            c.id,
            c.payer,
            c.accounts,
            c.profile,
            c.tax_rate,
            Terms {
                commitment: c.commitment,
                budget: c.budget,
                account_budgets: c.account_budgets,
                discounts: c.discounts,
                credits: c.credits,
            },
        ))
    }
}

/// A customer's account budgets, sorted by account, written as a map from account to
/// budget (as the `BTreeMap` they were kept in before: snapshots stay readable).
mod budgets_by_account {
    use super::{AccountId, Budget};
    use serde::{Deserialize, Deserializer, Serializer};
    use thin_vec::ThinVec;

    pub fn serialize<S: Serializer>(budgets: &ThinVec<(AccountId, Budget)>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(budgets.iter().map(|(a, b)| (a, b)))
    }

    pub fn serialize_ref<S: Serializer>(
        budgets: &&ThinVec<(AccountId, Budget)>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        serialize(budgets, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ThinVec<(AccountId, Budget)>, D::Error> {
        Ok(std::collections::BTreeMap::<AccountId, Budget>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Currency;

    fn usd() -> Currency {
        Currency::from_code("USD").unwrap()
    }

    #[test]
    fn terms_are_written_and_read_back() {
        // A customer whose terms were given after it was made (allocated on first use),
        // read back from a snapshot (MessagePack) as it was.
        let mut c = Customer::from_spec(
            serde_json::from_str(r#"{"id": "acme", "payer": "1", "accounts": ["1"]}"#).unwrap(),
            usd(),
        )
        .unwrap();
        c.terms_mut().commitment = Some(Decimal::TEN);
        let back: Customer = rmp_serde::from_slice(&rmp_serde::to_vec(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    /// The struct a customer was written as, before its terms moved behind a pointer.
    #[test]
    fn a_customer_is_written_as_the_struct_it_was() {
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        struct Before {
            id: ShortId,
            payer: AccountId,
            accounts: thin_vec::ThinVec<AccountId>,
            profile: ShortId,
            tax_rate: Decimal,
            commitment: Option<Box<Decimal>>,
            budget: Option<Box<Budget>>,
            #[serde(default, with = "budgets_by_account")]
            account_budgets: thin_vec::ThinVec<(AccountId, Budget)>,
            discounts: thin_vec::ThinVec<Discount>,
            credits: thin_vec::ThinVec<Credit>,
        }
        let c = Customer::from_spec(
            serde_json::from_str(
                r#"{"id": "acme", "payer": "1", "accounts": ["2", "1"], "commitment": "10.00", "tax_rate": "0.2",
                    "budget": {"amount": "50.00", "thresholds": [80]},
                    "account_budgets": {"2": {"amount": "5.00", "thresholds": [80]}},
                    "credits": [{"id": "c1", "amount": "3.00"}]}"#,
            )
            .unwrap(),
            usd(),
        )
        .unwrap();
        let before: Before = rmp_serde::from_slice(&rmp_serde::to_vec(&c).unwrap()).unwrap();
        assert_eq!(before.commitment.as_deref(), Some(&Decimal::new(1000, 2)));
        assert_eq!(before.credits.len(), 1);
        assert_eq!(before.account_budgets.len(), 1);
        let back: Customer = rmp_serde::from_slice(&rmp_serde::to_vec(&before).unwrap()).unwrap();
        assert_eq!(back, c);
        let json: Customer = serde_json::from_value(serde_json::to_value(&before).unwrap()).unwrap();
        assert_eq!(json, c);
    }

    #[test]
    fn account_budgets_are_written_as_the_map_they_were() {
        let c = Customer::from_spec(
            serde_json::from_str(
                r#"{"id": "acme", "payer": "1", "accounts": ["2", "1"], "commitment": "10.00",
                    "account_budgets": {"2": {"amount": "5.00", "thresholds": [80]},
                                        "1": {"amount": "7.00", "thresholds": [100]}}}"#,
            )
            .unwrap(),
            usd(),
        )
        .unwrap();
        let accounts: Vec<&str> = c
            .terms()
            .account_budgets
            .iter()
            .map(|(a, _)| a.as_str())
            .collect();
        assert_eq!(accounts, ["1", "2"], "sorted by account");
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["account_budgets"]["2"]["amount"], "5.00");
        assert_eq!(json["commitment"], "10.00");
        // As a snapshot holds it (MessagePack), and as the map it was.
        let back: Customer = rmp_serde::from_slice(&rmp_serde::to_vec(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        type Before = std::collections::BTreeMap<AccountId, Budget>;
        let before: Before = serde_json::from_value(json["account_budgets"].clone()).unwrap();
        assert_eq!(before.len(), 2);
    }
}
