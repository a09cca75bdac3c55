//! siteboot: a site-local network-boot agent.
//!
//! The modules are layers; each imports only from the layers below it
//! (`tests/architecture.rs` fails on an upward import or a cycle):
//!
//! | layer | modules |
//! |---|---|
//! | command line | [`cli`] (the binary's `main` is [`cli::main`]) |
//! | wiring | [`agent`] |
//! | transports | [`serve`] (HTTP, TFTP) |
//! | controller upkeep | [`link`] (registration, probes, heartbeat, sync) |
//! | status and admin | [`status`], [`admin`] (the queue's, conflicts' and cache's operations) |
//! | services | [`boot`] (answering boots), [`outbox`] (writes, queue, replay), [`content`] (the content cache) |
//! | ports | [`central`] (the controller), [`store`] (redb) |
//! | configuration | [`config`] |
//! | model, flood limits, safe logging, counters, live events | [`model`], [`ratelimit`], [`logsafe`], [`metrics`], [`events`] |
//!
//! `docs/architecture.md` describes them and the paths through them.
//!
//! The library is the binary's body, not an API: only [`cli`], [`model`]
//! and [`store`] are public (the benches drive the store and its queue
//! directly), every public item is documented (`missing_docs`), and the
//! rest is `pub(crate)`, so code nothing uses is reported as dead.

pub(crate) mod admin;
pub(crate) mod agent;
pub(crate) mod boot;
pub(crate) mod central;
pub mod cli;
pub(crate) mod config;
pub(crate) mod content;
pub(crate) mod events;
pub(crate) mod link;
pub(crate) mod logsafe;
pub(crate) mod metrics;
pub mod model;
pub(crate) mod outbox;
pub(crate) mod policy;
pub(crate) mod ratelimit;
pub(crate) mod serve;
pub(crate) mod status;
pub mod store;
pub(crate) mod tasks;

#[cfg(test)]
mod tests;
