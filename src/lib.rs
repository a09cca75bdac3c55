//! siteboot: a site-local network-boot agent.

pub mod config;
pub mod mac;
pub mod node;
