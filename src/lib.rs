//! siteboot: a site-local network-boot agent.
//!
//! The modules are layers; each imports only from the layers below it
//! (`tests/architecture.rs` fails on an upward import or a cycle):
//!
//! | layer | modules |
//! |---|---|
//! | wiring and command line | [`agent`], [`cli`] |
//! | transports | [`serve`] (HTTP, TFTP) |
//! | controller upkeep | [`link`] (registration, probes, heartbeat, sync) |
//! | status and admin | [`status`], [`admin`] (the queue's, conflicts' and cache's operations) |
//! | services | [`boot`] (answering boots), [`outbox`] (writes, queue, replay), [`content`] (the content cache) |
//! | ports | [`central`] (the controller), [`store`] (redb) |
//! | configuration | [`config`] |
//! | model, flood limits, safe logging, counters, live events | [`model`], [`ratelimit`], [`logsafe`], [`metrics`], [`events`] |
//!
//! `docs/architecture.md` describes them and the paths through them.

pub mod admin;
pub mod agent;
pub mod boot;
pub mod central;
pub mod cli;
pub mod config;
pub mod content;
pub mod events;
pub mod link;
pub mod logsafe;
pub mod metrics;
pub mod model;
pub mod outbox;
pub mod ratelimit;
pub mod serve;
pub mod status;
pub mod store;
pub mod tasks;
