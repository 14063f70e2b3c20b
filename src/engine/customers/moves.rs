//! Moving an account to another customer, with its usage.

use tallyman_actors::{Failure, SubmitError};

use crate::domain::FieldError;
use crate::domain::{AccountId, AccountUsage, Period};

use crate::engine::{
    CustomerAnswer, CustomerCommand, CustomerKey, CustomerQuery, CustomerReply, EngineError, PartitionEngine,
};

/// Whether a half of a move took effect: it answered, or a restarted segment's
/// recovery applied it first (`Replayed`); a refused half is marked never to apply.
fn applied(outcome: Option<&Result<CustomerReply, Failure>>) -> bool {
    matches!(
        outcome,
        None | Some(Ok(CustomerReply::Released(_) | CustomerReply::Adopted) | Err(Failure::Replayed))
    )
}

/// The two halves of a move, to undo the one that took effect alone.
struct Half<'a> {
    from: Option<&'a CustomerKey>,
    to: &'a CustomerKey,
    account: &'a AccountId,
    period: Period,
}

impl Half<'_> {
    /// The command that undoes the half applied alone: the account given back to the
    /// customer it left (with the usage it took), or released by the one it joined.
    fn undo(
        &self,
        released: bool,
        adopted: bool,
        outcomes: &[Result<CustomerReply, Failure>],
        usage: Option<Box<AccountUsage>>,
    ) -> Option<(CustomerKey, CustomerCommand)> {
        let (account, period) = (self.account.clone(), self.period);
        match (self.from, released, adopted) {
            (Some(from), true, false) => {
                let handed = match outcomes.first() {
                    Some(Ok(CustomerReply::Released(u))) => u.clone(),
                    _ => usage,
                };
                let command = CustomerCommand::Adopt {
                    account,
                    usage: handed,
                    period,
                };
                Some((from.clone(), command))
            }
            (Some(_), false, true) => Some((self.to.clone(), CustomerCommand::Release { account, period })),
            _ => None,
        }
    }
}

impl PartitionEngine {
    /// Moves `account` to `customer` (or adds it, when no customer has it). The account's
    /// usage of the open period moves with it, so both customers are re-rated from the
    /// start of the period. Ingest pauses while the account changes hands.
    pub async fn move_account(&self, customer: &str, account: &str) -> Result<Option<String>, EngineError> {
        let to = self.customer_key(customer)?;
        let _routing = self.routing.write().await;
        let to_number = self.customers.number(&to);
        let Some((account_id, from)) = self.account_to_move(account, to_number)? else {
            return Ok(Some(customer.to_owned()));
        };
        let period = self.period();
        let mut batch = Vec::with_capacity(2);
        let mut usage = None;
        if let Some(from) = &from {
            usage = self.usage_leaving(from, &account_id, period).await?;
            batch.push((
                from.clone(),
                CustomerCommand::Release {
                    account: account_id.clone(),
                    period,
                },
            ));
        }
        batch.push((
            to.clone(),
            CustomerCommand::Adopt {
                account: account_id.clone(),
                usage: usage.clone(),
                period,
            },
        ));
        // One journal record: the account leaves one customer and joins the other with its
        // usage together, or (a crash before the record is durable) not at all.
        let outcomes = match self.submit_batch(batch).await {
            Ok(outcomes) => outcomes,
            // Journaled, and a restarted segment's recovery applies it: the move is done.
            Err(SubmitError::Interrupted) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let adopted = applied(outcomes.last());
        let released = from.is_none() || applied(outcomes.first());
        if !(released && adopted) {
            // Undo the half that took effect, so that the account stays with one customer.
            let half = Half {
                from: from.as_ref(),
                to: &to,
                account: &account_id,
                period,
            };
            if let Some((key, command)) = half.undo(released, adopted, &outcomes, usage) {
                self.undo(key, command, account).await;
            }
            return Err(EngineError::Unavailable(format!(
                "account {account:?} could not move to {customer:?} ({outcomes:?}); nothing changed, try again"
            )));
        }
        self.directory.insert(account_id, to_number);
        tracing::info!(partition = %self.id, account, from = ?from, to = %to, "account moved");
        Ok(from.map(|f| f.to_string()))
    }

    /// The account and the customer it is with (none: no customer has it, and its id
    /// is checked); `None` when it is with customer `to_number` already.
    fn account_to_move(
        &self,
        account: &str,
        to_number: u32,
    ) -> Result<Option<(AccountId, Option<CustomerKey>)>, EngineError> {
        let owner = self.directory.get(account).map(|r| (r.key().clone(), *r.value()));
        Ok(match owner {
            Some((_, from)) if from == to_number => None,
            Some((id, from)) => Some((id, Some(self.customers.key(from)))),
            None => {
                let name = account.trim();
                if name.is_empty() || name.len() > crate::domain::ids::MAX_ID_LEN {
                    return Err(EngineError::Invalid(FieldError::new(
                        "account",
                        "must be 1 to 128 bytes",
                    )));
                }
                Some((AccountId::from(name), None))
            }
        })
    }

    /// The usage of the open period `account` takes from customer `from`, once
    /// everything journaled before reached its segment (ingest is paused meanwhile, so
    /// it is all the account has).
    async fn usage_leaving(
        &self,
        from: &CustomerKey,
        account: &AccountId,
        period: Period,
    ) -> Result<Option<Box<AccountUsage>>, EngineError> {
        self.wait_until_delivered(std::time::Duration::from_secs(5))
            .await
            .map_err(EngineError::Unavailable)?;
        let query = CustomerQuery::Leaving {
            account: account.clone(),
            period,
        };
        match self.runtime.ask(from.clone(), query)?.await? {
            Some(CustomerAnswer::Leaving(Ok(u))) => Ok(u),
            Some(CustomerAnswer::Leaving(Err(why))) => Err(EngineError::Conflict(why)),
            other => Err(EngineError::Failed(format!("{other:?}"))),
        }
    }
}
