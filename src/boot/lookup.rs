//! Why the controller's record of a node could not be had: the
//! controller's error, or a local one (the store, the queue).

use crate::central::CentralError;
use crate::outbox::WriteError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    Central(#[from] CentralError),
    #[error("{0}")]
    Local(String),
}

impl From<crate::store::StoreError> for LookupError {
    fn from(e: crate::store::StoreError) -> Self {
        LookupError::Local(e.to_string())
    }
}

impl From<WriteError> for LookupError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::NotRegistered(e) => LookupError::Central(e),
            other => LookupError::Local(other.to_string()),
        }
    }
}
