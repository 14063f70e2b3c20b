//! Delivering a partition's alerts to the webhook, in order, none lost: the loop, its
//! retries and its position. How an alert travels is not the engine's: it hands each
//! one to an [`AlertTransport`] (`tallyd` gives it one that POSTs JSON over HTTP,
//! `crate::webhook`), so the engine does no network I/O of its own.
//!
//! The position (the `seq` of the last alert the receiver took) is a document of the
//! partition's store, `webhook.cursor`, written after each success: a restart goes on
//! from it, and an alert whose success was not yet written is sent again (receivers
//! deduplicate by [`Alert::id`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::{Alert, AlertBook};

/// The document of the webhook's position: the `seq` of the last alert delivered.
const CURSOR: &str = "webhook.cursor";

/// The first wait after a failure (or the configured bound, if lower); each next one
/// doubles, up to the bound.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// What an alert is sent with: made once, shared by every partition.
pub trait AlertTransport: Send + Sync {
    /// A poster for one partition's delivery loop, made on the thread the loop runs
    /// on (an HTTP client need not be `Send`).
    fn poster(&self) -> Box<dyn AlertPoster>;
}

/// Sends one alert, answering once the receiver took it (`Ok`) or why it did not.
pub trait AlertPoster {
    fn post<'a>(&'a self, alert: &'a Alert) -> Pin<Box<dyn Future<Output = Result<(), String>> + 'a>>;
}

impl AlertBook {
    /// The webhook's position: the last alert delivered (0: none yet).
    fn cursor(&self) -> u64 {
        match self.documents.read_text(CURSOR) {
            Ok(text) => text.and_then(|s| s.trim().parse().ok()).unwrap_or(0),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the webhook position; delivering from the first alert");
                0
            }
        }
    }

    fn keep_cursor(&self, cursor: u64) {
        if let Err(e) = self.documents.write(CURSOR, cursor.to_string().as_bytes()) {
            tracing::warn!(error = %e, "cannot keep the webhook position; an alert may be sent twice");
        }
    }

    /// Delivers every alert through `transport`, in order, for as long as the book
    /// exists: each is retried (backing off up to `max_backoff`) until it is taken, and
    /// the position is kept so that a restart goes on from it.
    pub async fn deliver(self: Arc<Self>, transport: Arc<dyn AlertTransport>, max_backoff: Duration) {
        let first_backoff = FIRST_BACKOFF.min(max_backoff);
        let poster = transport.poster();
        let mut cursor = self.cursor();
        let mut watch = self.watch();
        let mut backoff = first_backoff;
        loop {
            let pending = self.after(cursor);
            let Some(alert) = pending.first() else {
                if watch.changed().await.is_err() {
                    return;
                }
                continue;
            };
            match poster.post(alert).await {
                Ok(()) => {
                    assert_eq!(alert.seq, cursor + 1, "alerts are delivered in order");
                    cursor = alert.seq;
                    self.keep_cursor(cursor);
                    backoff = first_backoff;
                }
                Err(why) => {
                    tracing::warn!(partition = %self.partition, alert = %alert.id, %why,
                        retry_in_ms = backoff.as_millis() as u64, "webhook failed; will retry");
                    actix_rt::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use rust_decimal::Decimal;

    use super::*;
    use crate::engine::account::AlertMark;

    /// A receiver that refuses its first `refuse` posts and records what it took.
    #[derive(Default)]
    struct Receiver {
        refuse: Mutex<u32>,
        took: Mutex<Vec<u64>>,
    }

    struct Poster(Arc<Receiver>);

    impl AlertTransport for Arc<Receiver> {
        fn poster(&self) -> Box<dyn AlertPoster> {
            Box::new(Poster(self.clone()))
        }
    }

    impl AlertPoster for Poster {
        fn post<'a>(&'a self, alert: &'a Alert) -> Pin<Box<dyn Future<Output = Result<(), String>> + 'a>> {
            Box::pin(async move {
                let mut refuse = self.0.refuse.lock().unwrap();
                if *refuse > 0 {
                    *refuse -= 1;
                    return Err("answered 503".into());
                }
                self.0.took.lock().unwrap().push(alert.seq);
                Ok(())
            })
        }
    }

    fn mark(threshold: u32) -> AlertMark {
        AlertMark {
            period: "2026-11".parse().unwrap(),
            account: None,
            threshold,
            budget: Decimal::from(100),
            spent: Decimal::from(threshold),
            at: "2026-11-02T12:00:00Z".parse().unwrap(),
        }
    }

    /// Waits (on the runtime's clock) until the receiver took `n` alerts.
    async fn until_taken(receiver: &Receiver, n: usize) -> Vec<u64> {
        for _ in 0..200 {
            let took = receiver.took.lock().unwrap().clone();
            if took.len() >= n {
                return took;
            }
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "the receiver took {:?}, not {n} alerts",
            receiver.took.lock().unwrap()
        );
    }

    #[test]
    fn every_alert_is_delivered_in_order_through_a_receiver_that_fails() {
        // The receiver refuses the first two posts: alert 1 is retried (after 50 and
        // 100 ms) and taken on the third try; 2 and 3 follow in order, once each.
        actix_rt::System::new().block_on(async {
            let book = Arc::new(AlertBook::open("aws", None).unwrap());
            let receiver = Arc::new(Receiver::default());
            *receiver.refuse.lock().unwrap() = 2;
            book.record("acme", &mark(50)).unwrap();
            let transport: Arc<dyn AlertTransport> = Arc::new(receiver.clone());
            actix_rt::spawn(book.clone().deliver(transport, Duration::from_millis(100)));
            book.record("acme", &mark(80)).unwrap();
            book.record("acme", &mark(100)).unwrap();
            assert_eq!(until_taken(&receiver, 3).await, vec![1, 2, 3]);
            assert_eq!(book.cursor(), 3, "the position is kept after each success");
        });
    }

    #[test]
    fn delivery_goes_on_from_the_position_kept() {
        // Alerts 1 and 2 were delivered before a restart (position 2): only 3 is sent.
        actix_rt::System::new().block_on(async {
            let book = Arc::new(AlertBook::open("aws", None).unwrap());
            for threshold in [50, 80, 100] {
                book.record("acme", &mark(threshold)).unwrap();
            }
            book.keep_cursor(2);
            let receiver = Arc::new(Receiver::default());
            let transport: Arc<dyn AlertTransport> = Arc::new(receiver.clone());
            actix_rt::spawn(book.clone().deliver(transport, Duration::from_millis(100)));
            assert_eq!(until_taken(&receiver, 1).await, vec![3]);
        });
    }
}
