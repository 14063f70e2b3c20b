//! Errors as RFC 9457 problem details (`application/problem+json`).
//!
//! Every error the API returns is a [`Problem`]: a `type`, a `title`, the HTTP `status`,
//! a `detail` a person can act on, and for batches the per-item `errors` with the index
//! and field of each bad item.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::engine::{EngineError, EventError};

/// The `errors` entry of a batch problem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct ItemError {
    pub index: usize,
    pub field: String,
    pub message: String,
}

/// An RFC 9457 problem.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Of a batch or body refused item by item: each bad item's index, field and what
    /// is wrong with it. Absent from other problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ItemError>,
    /// Of a batch partly applied: the events applied and the duplicates.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub applied: Option<Box<crate::engine::IngestSummary>>,
    /// Seconds to wait before retrying, sent as `Retry-After` too.
    #[serde(skip)]
    pub retry_after: Option<u32>,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &str, title: &str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: format!("https://tallyman.dev/problems/{kind}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            applied: None,
            retry_after: None,
        }
    }

    pub fn bad_request(kind: &str, title: &str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, kind, title, detail)
    }

    pub fn with_errors(mut self, errors: Vec<ItemError>) -> Problem {
        self.errors = errors;
        self
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.title, self.status, self.detail)
    }
}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        ));
        if self.status == 401 {
            response.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        if let Some(seconds) = self.retry_after {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        response.body(serde_json::to_string(self).unwrap_or_default())
    }
}

fn item_errors(errors: Vec<EventError>) -> Vec<ItemError> {
    errors
        .into_iter()
        .map(|e| ItemError {
            index: e.index,
            field: e.field,
            message: e.message,
        })
        .collect()
}

impl From<EngineError> for Problem {
    fn from(e: EngineError) -> Problem {
        let detail = e.to_string();
        match e {
            EngineError::UnknownPartition(_) => Problem::not_found(detail),
            EngineError::UnknownCustomer(_) | EngineError::UnknownAccount(_) => Problem::not_found(detail),
            EngineError::UnknownDeadLetter(_) | EngineError::UnknownCatalogVersion(_) => {
                Problem::not_found(detail)
            }
            EngineError::InvalidEvents(errors) => Problem::bad_request(
                "invalid-events",
                "Invalid events",
                format!("{detail}; fix the events listed in `errors` and send the batch again"),
            )
            .with_errors(item_errors(errors)),
            EngineError::Invalid(field) => Problem::bad_request(
                "invalid-field",
                "Invalid field",
                format!("{}: {}", field.field, field.message),
            ),
            EngineError::Conflict(_) => Problem::new(StatusCode::CONFLICT, "conflict", "Conflict", detail),
            EngineError::Busy(_) => {
                let mut p = Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "busy",
                    "Too many requests",
                    format!("{detail}; nothing of this request was applied"),
                );
                p.retry_after = Some(1);
                p
            }
            EngineError::Unavailable(_) => {
                let mut p = Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Unavailable",
                    detail,
                );
                p.retry_after = Some(1);
                p
            }
            EngineError::NotApplied { summary, errors } => {
                let mut p = Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "events-not-applied",
                    "Events not applied",
                    format!(
                        "{detail}: they are listed in `errors`, and sending them again will not help; \
                         the others are applied (sending them again counts them as duplicates)"
                    ),
                )
                .with_errors(item_errors(errors));
                p.applied = Some(Box::new(summary));
                p
            }
            EngineError::Unprocessable(_) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable",
                "Unprocessable",
                detail,
            ),
            EngineError::Failed(_) => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "failed",
                "Partly failed",
                format!(
                    "{detail}; the failed commands are in the dead-letter queue (GET /v1/admin/dead-letters)"
                ),
            ),
        }
    }
}
