//! What the engine answers when it refuses something: the error of a request, and
//! of one event of a batch.

use serde::Serialize;
use tallyman_actors::SubmitError;

use crate::domain::FieldError;

use crate::engine::IngestSummary;

/// One problem with one event of a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct EventError {
    pub index: usize,
    pub field: String,
    pub message: String,
}

/// Why the engine refused or could not finish a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("unknown partition {0:?}")]
    UnknownPartition(String),
    #[error("unknown customer {0:?}")]
    UnknownCustomer(String),
    #[error("unknown account {0:?}")]
    UnknownAccount(String),
    /// The batch has invalid events; nothing of it was applied.
    #[error("{} invalid event(s); nothing was applied", .0.len())]
    InvalidEvents(Vec<EventError>),
    /// A request field is invalid; nothing was changed.
    #[error("{0}")]
    Invalid(FieldError),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    UnknownDeadLetter(String),
    #[error("{0}")]
    UnknownCatalogVersion(String),
    /// Well-formed but impossible to apply; resending will not help.
    #[error("{0}")]
    Unprocessable(String),
    /// The batch was journaled and its other events applied, but these were refused
    /// when applied (past the account's event limit, or an aggregate's overflow);
    /// resending them will not help.
    #[error(
        "{} event(s) applied, {} duplicate(s); {} event(s) were not applied",
        summary.accepted,
        summary.duplicates,
        errors.len()
    )]
    NotApplied {
        summary: IngestSummary,
        errors: Vec<EventError>,
    },
    /// Backpressure: retry later. Nothing was journaled.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Unavailable(String),
    /// Some commands were journaled but not applied (dead-lettered).
    #[error("{0}")]
    Failed(String),
}

impl From<SubmitError> for EngineError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Busy { .. } => EngineError::Busy(e.to_string()),
            _ => EngineError::Unavailable(e.to_string()),
        }
    }
}

impl From<crate::store::StoreError> for EngineError {
    fn from(e: crate::store::StoreError) -> Self {
        EngineError::Unavailable(e.to_string())
    }
}
