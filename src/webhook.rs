//! The webhook over HTTP: the [`AlertTransport`] `tallyd` gives the engine, which POSTs
//! each alert as JSON to the configured URL and counts any 2xx answer as taken. The
//! engine's delivery loop (order, retries, position) is `engine::alerts::delivery`.

#![forbid(unsafe_code)]

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::engine::alerts::{Alert, AlertPoster, AlertTransport};

/// POSTs alerts to one URL, each try bounded by a timeout.
pub struct HttpWebhook {
    url: String,
    timeout: Duration,
}

impl HttpWebhook {
    /// `url` is `alerts.webhook_url` (validated: `http://…`), `timeout` its
    /// `webhook_timeout_ms`.
    pub fn new(url: String, timeout: Duration) -> HttpWebhook {
        assert!(!url.is_empty(), "a webhook without a URL");
        HttpWebhook { url, timeout }
    }
}

impl AlertTransport for HttpWebhook {
    fn poster(&self) -> Box<dyn AlertPoster> {
        Box::new(HttpPoster {
            url: self.url.clone(),
            client: awc::Client::builder().timeout(self.timeout).finish(),
        })
    }
}

/// One partition's client (awc's is bound to its thread).
struct HttpPoster {
    url: String,
    client: awc::Client,
}

impl AlertPoster for HttpPoster {
    fn post<'a>(&'a self, alert: &'a Alert) -> Pin<Box<dyn Future<Output = Result<(), String>> + 'a>> {
        Box::pin(async move {
            match self.client.post(self.url.as_str()).send_json(alert).await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(format!("{} answered {}", self.url, response.status())),
                Err(e) => Err(format!("{}: {e}", self.url)),
            }
        })
    }
}
