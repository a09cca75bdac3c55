//! Why an admin operation was refused, and the HTTP status that says it:
//! the one place where the queue's, the conflicts' and the cache's errors
//! become answers.

use crate::content::CacheError;
use crate::outbox::WriteError;
use crate::outbox::resolve::ResolveError;
use crate::store::StoreError;
use crate::store::queue::QueueError;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdminError {
    /// The request itself is wrong (a bad status, limit, id or body).
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts what is there (a pinned file, a conflict
    /// resolved already).
    #[error("{0}")]
    Conflict(String),
    /// It may work later: the disk cannot write now, the controller's
    /// record could not be read, the agent does not answer.
    #[error("{0}")]
    Unavailable(String),
    /// It needs the running agent (it asks the controller, or the agent's
    /// counters), and the agent is stopped.
    #[error("{0}")]
    NeedsAgent(String),
    #[error("{0}")]
    Internal(String),
}

impl AdminError {
    /// The HTTP status the agent's API answers it with.
    pub fn http_status(&self) -> u16 {
        match self {
            AdminError::BadRequest(_) => 400,
            AdminError::NotFound(_) => 404,
            AdminError::Conflict(_) => 409,
            AdminError::Unavailable(_) | AdminError::NeedsAgent(_) => 503,
            AdminError::Internal(_) => 500,
        }
    }

    /// The error an API answer carried back (the command line's client of
    /// a running agent), so that it reads as if asked in-process.
    pub fn from_http(status: u16, message: String) -> AdminError {
        match status {
            400 => AdminError::BadRequest(message),
            404 => AdminError::NotFound(message),
            409 => AdminError::Conflict(message),
            503 => AdminError::Unavailable(message),
            _ => AdminError::Internal(message),
        }
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> AdminError {
        if e.is_io() {
            AdminError::Unavailable(e.to_string())
        } else {
            AdminError::Internal(e.to_string())
        }
    }
}

impl From<QueueError> for AdminError {
    fn from(e: QueueError) -> AdminError {
        match e {
            QueueError::NotFound(_) => AdminError::NotFound(e.to_string()),
            QueueError::Settled(_) => AdminError::Conflict(e.to_string()),
            QueueError::Store(store) => store.into(),
            QueueError::Full(_) | QueueError::Shed(_) => AdminError::Unavailable(e.to_string()),
        }
    }
}

impl From<ResolveError> for AdminError {
    fn from(e: ResolveError) -> AdminError {
        match e {
            ResolveError::NotFound(_) => AdminError::NotFound(e.to_string()),
            ResolveError::AlreadyResolved(_) => AdminError::Conflict(e.to_string()),
            ResolveError::NotApplicable(_) => AdminError::BadRequest(e.to_string()),
            ResolveError::Central(_) => AdminError::Unavailable(e.to_string()),
            ResolveError::Queue(queue) => queue.into(),
        }
    }
}

impl From<CacheError> for AdminError {
    fn from(e: CacheError) -> AdminError {
        match e {
            CacheError::NotCached(_) => AdminError::NotFound(e.to_string()),
            CacheError::Pinned(_) => AdminError::Conflict(e.to_string()),
            CacheError::Store(store) => store.into(),
            other => AdminError::Internal(other.to_string()),
        }
    }
}

impl From<WriteError> for AdminError {
    fn from(e: WriteError) -> AdminError {
        match e {
            WriteError::Unwritable(_) => AdminError::Unavailable(e.to_string()),
            WriteError::Refused(_) => AdminError::Conflict(e.to_string()),
            WriteError::Store(store) => store.into(),
            WriteError::Queue(queue) => queue.into(),
            other => AdminError::Internal(other.to_string()),
        }
    }
}
