//! siteboot: a site-local network-boot agent.

pub mod boot;
pub mod config;
pub mod decision;
pub mod fsroot;
pub mod mac;
pub mod node;
pub mod store;
pub mod templates;
