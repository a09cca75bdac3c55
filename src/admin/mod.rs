//! The admin operations on the queue, conflicts and the content cache
//! (DESIGN §5, §8, §12), each written once. A [`Request`] says what is
//! wanted; an [`AdminService`] carries it out and answers the JSON body
//! the agent's API gives, or an [`AdminError`] that knows its HTTP status.
//!
//! Three services answer the same requests: [`LiveAdmin`] inside the
//! running agent (behind its HTTP API), [`StoppedAdmin`] on the database
//! while the agent is stopped (the command line), and the command line's
//! client of the running agent's API (`cli::admin`), so the command line
//! and the API can never drift apart.

mod error;
mod live;
mod request;
mod rows;
mod service;
mod stopped;

pub use error::AdminError;
pub use live::LiveAdmin;
pub use request::{Evict, Page, PolicyChange, Request, id};
pub use service::{AdminService, Answer};
pub use stopped::StoppedAdmin;
