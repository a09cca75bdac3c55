//! Subcommands of the `siteboot` binary that are more than a few lines.

pub mod admin;
pub mod agent_api;
pub mod cache;
pub mod check;
pub mod conflicts;
pub mod queue;
pub mod status;
