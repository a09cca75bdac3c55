//! siteboot: a site-local network-boot agent.

pub mod agent;
pub mod boot;
pub mod bootfiles;
pub mod config;
pub mod decision;
pub mod fsroot;
pub mod http;
pub mod mac;
pub mod node;
pub mod nodes;
pub mod script_cache;
pub mod store;
pub mod templates;
pub mod tftp;
