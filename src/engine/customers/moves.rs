//! Moving an account to another customer, with its usage.

use tallyman_actors::SubmitError;

use crate::domain::AccountId;
use crate::domain::FieldError;

use crate::engine::{
    CustomerAnswer, CustomerCommand, CustomerQuery, CustomerReply, EngineError, PartitionEngine,
};

impl PartitionEngine {
    /// Moves `account` to `customer` (or adds it, when no customer has it). The account's
    /// usage of the open period moves with it, so both customers are re-rated from the
    /// start of the period. Ingest pauses while the account changes hands.
    pub async fn move_account(&self, customer: &str, account: &str) -> Result<Option<String>, EngineError> {
        let to = self.customer_key(customer)?;
        let _routing = self.routing.write().await;
        let to_number = self.customers.number(&to);
        let owner = self.directory.get(account).map(|r| (r.key().clone(), *r.value()));
        let (account_id, from) = match owner {
            Some((_, from)) if from == to_number => return Ok(Some(customer.to_owned())),
            Some((id, from)) => (id, Some(self.customers.key(from))),
            None => {
                let name = account.trim();
                if name.is_empty() || name.len() > crate::domain::ids::MAX_ID_LEN {
                    return Err(EngineError::Invalid(FieldError::new(
                        "account",
                        "must be 1 to 128 bytes",
                    )));
                }
                (AccountId::from(name), None)
            }
        };
        let period = self.period();
        let mut batch = Vec::with_capacity(2);
        let mut usage = None;
        if let Some(from) = &from {
            // Everything journaled before reaches its segment first, so that the usage
            // read next is all the account has (ingest is paused meanwhile).
            self.wait_until_delivered(std::time::Duration::from_secs(5))
                .await
                .map_err(EngineError::Unavailable)?;
            let query = CustomerQuery::Leaving {
                account: account_id.clone(),
                period,
            };
            usage = match self.runtime.ask(from.clone(), query)?.await? {
                Some(CustomerAnswer::Leaving(Ok(u))) => u,
                Some(CustomerAnswer::Leaving(Err(why))) => return Err(EngineError::Conflict(why)),
                other => return Err(EngineError::Failed(format!("{other:?}"))),
            };
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
        // A half was applied when it answered, or when a restarted segment's recovery
        // applied it first (`Replayed`); a refused half is marked never to be applied.
        use tallyman_actors::Failure;
        let applied = |o: Option<&Result<CustomerReply, Failure>>| {
            matches!(
                o,
                None | Some(Ok(CustomerReply::Released(_) | CustomerReply::Adopted) | Err(Failure::Replayed))
            )
        };
        let adopted = applied(outcomes.last());
        let released = from.is_none() || applied(outcomes.first());
        if !(released && adopted) {
            // Undo the half that took effect, so that the account stays with one customer.
            let undo = match (&from, released, adopted) {
                (Some(from), true, false) => {
                    let handed = match outcomes.first() {
                        Some(Ok(CustomerReply::Released(u))) => u.clone(),
                        _ => usage,
                    };
                    Some((
                        from.clone(),
                        CustomerCommand::Adopt {
                            account: account_id.clone(),
                            usage: handed,
                            period,
                        },
                    ))
                }
                (Some(_), false, true) => Some((
                    to.clone(),
                    CustomerCommand::Release {
                        account: account_id.clone(),
                        period,
                    },
                )),
                _ => None,
            };
            if let Some((key, command)) = undo {
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
}
