//! The error of a refused input: the field at fault and what is wrong with it. Shared by
//! every module that checks something a user sent (events, catalogs, customers).

use serde::{Deserialize, Serialize};

/// One problem with one field of an input (an event, a catalog version, a customer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}
