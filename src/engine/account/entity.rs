//! The account actor as an entity of the runtime: applying commands (after the
//! prefetch rounds that follow a usage event's chain of reads), answering queries,
//! snapshots.

use tallyman_actors::Entity;

use super::{
    likely_positions, note_of, rare, CustomerAnswer, CustomerCommand, CustomerEntity, CustomerKey,
    CustomerQuery, CustomerReply, IDS_ASKED, USAGE_ASKED,
};

impl Entity for CustomerEntity {
    type Key = CustomerKey;
    type Command = CustomerCommand;
    type Reply = CustomerReply;
    type Query = CustomerQuery;
    type Answer = CustomerAnswer;
    type Snapshot = CustomerEntity;

    const PREFETCH_ROUNDS: usize = 5;

    /// For a usage event, the chain of reads applying it makes, one link a round: the
    /// customer's record, then the account's id and usage slot, then its usage block
    /// (header and aggregates), then the place of the event's id among the ids seen (for
    /// a customer with an index table, one round later: its slot comes first). `note`
    /// keeps the likely positions once asked for (`1 << 32 | end << 16 | start`; 0: not
    /// yet) and which of the last two links were asked for ([`USAGE_ASKED`],
    /// [`IDS_ASKED`]).
    fn prefetch(&self, command: &CustomerCommand, round: usize, note: &mut u64) {
        let (CustomerCommand::Usage(event), Some(customer)) = (command, self.customer.as_deref()) else {
            return;
        };
        let usage_at = |i: usize| crate::compact::prefetch(self.usage.as_ptr().wrapping_add(i));
        if round == 0 {
            customer.prefetch_terms();
            usage_at(0);
            return;
        }
        if *note == 0 {
            if let Some(likely) = customer.prefetch_position(&event.account, round - 1) {
                // The likely accounts' ids are on their way: their usage slots too.
                usage_at(likely.start);
                usage_at(likely.end.saturating_sub(1));
                *note = note_of(likely);
            }
            return;
        }
        if *note & IDS_ASKED != 0 {
            return;
        }
        let likely = likely_positions(*note);
        // Only where the guess says: a wrong guess is not worth a search here.
        if let Some(usage) = customer
            .position_among(&event.account, likely)
            .and_then(|i| self.usage.get(i))
        {
            if *note & USAGE_ASKED == 0 {
                usage.prefetch();
                *note |= USAGE_ASKED;
            } else {
                usage.prefetch_ids(event.id);
                *note |= IDS_ASKED;
            }
        }
    }

    fn shard(key: &CustomerKey) -> u64 {
        xxhash_rust::xxh3::xxh3_64(key.as_bytes())
    }

    fn create(_: &CustomerKey) -> Self {
        CustomerEntity::default()
    }

    fn apply(&mut self, command: &CustomerCommand) -> CustomerReply {
        match command {
            CustomerCommand::Upsert(customer) => CustomerReply::Upserted {
                left: self.upsert(customer),
            },
            CustomerCommand::AddCredit(credit) => match self.customer.as_deref_mut() {
                None => CustomerReply::NoSuchCustomer,
                Some(c) if c.terms().credits.iter().any(|x| x.id == credit.id) => {
                    CustomerReply::AlreadyGranted
                }
                Some(c) => {
                    let mut credit = credit.clone();
                    // Grant order: later than every credit the customer has.
                    credit.granted = c.terms().credits.iter().map(|x| x.granted + 1).max().unwrap_or(0);
                    c.terms_mut().credits.push(credit);
                    CustomerReply::Granted
                }
            },
            CustomerCommand::AddDiscount(discount) => match self.customer.as_deref_mut() {
                None => CustomerReply::NoSuchCustomer,
                Some(c) if c.terms().discounts.iter().any(|x| x.id == discount.id) => {
                    CustomerReply::AlreadyGranted
                }
                Some(c) => {
                    c.terms_mut().discounts.push(discount.clone());
                    CustomerReply::Granted
                }
            },
            CustomerCommand::Release { account, period } => self.release(account, *period),
            CustomerCommand::Adopt {
                account,
                usage,
                period,
            } => self.adopt(account, usage.as_deref(), *period),
            CustomerCommand::Close(close) => self.close(close),
            CustomerCommand::Late(event) => self.apply_late(event),
            CustomerCommand::RaiseAlert(mark) => self.raise(mark),
            CustomerCommand::Usage(event) => self.apply_usage(event, 0..0),
        }
    }

    fn apply_noted(&mut self, command: &CustomerCommand, note: u64) -> CustomerReply {
        match command {
            CustomerCommand::Usage(event) => self.apply_usage(event, likely_positions(note)),
            _ => self.apply(command),
        }
    }

    fn query(&self, query: &CustomerQuery) -> CustomerAnswer {
        match query {
            CustomerQuery::Bill(view) => CustomerAnswer::Bill(self.bill(view).map(Box::new)),
            CustomerQuery::PeriodBill(view) => CustomerAnswer::Bill(self.bill_of_period(view).map(Box::new)),
            CustomerQuery::Budgets(view) => CustomerAnswer::Budgets(self.budgets(view).map(|c| {
                let raised = rare(&self.rare)
                    .alerts
                    .iter()
                    .filter(|a| a.period == view.period)
                    .cloned()
                    .collect();
                (c, raised)
            })),
            CustomerQuery::Terms => CustomerAnswer::Terms(self.customer.clone()),
            CustomerQuery::Leaving { account, period } => {
                CustomerAnswer::Leaving(self.leaving(account, *period))
            }
        }
    }

    fn snapshot(&self) -> CustomerEntity {
        self.clone()
    }

    fn restore(snapshot: &CustomerEntity) -> Self {
        snapshot.clone()
    }

    fn restore_owned(snapshot: CustomerEntity) -> Self {
        snapshot
    }
}
