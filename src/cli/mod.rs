//! Subcommands of the `siteboot` binary that are more than a few lines.

pub mod check;
pub mod queue;
