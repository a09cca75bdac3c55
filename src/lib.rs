//! siteboot: a site-local network-boot agent.

pub mod agent;
pub mod boot;
pub mod bootfiles;
pub mod central;
pub mod config;
pub mod connectivity;
pub mod decision;
pub mod fsroot;
pub mod http;
pub mod mac;
pub mod node;
pub mod nodes;
pub mod outbox;
pub mod queue;
pub mod script_cache;
pub mod stats;
pub mod store;
pub mod templates;
pub mod tftp;
