//! siteboot: a site-local network-boot agent.

pub mod config;
pub mod decision;
pub mod mac;
pub mod node;
pub mod store;
pub mod templates;
