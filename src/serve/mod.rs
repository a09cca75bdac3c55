//! The transports nodes and operators reach: HTTP (boot scripts, assets,
//! installer reports, the admin API) and TFTP (bootloaders).

pub mod bootfiles;
pub mod dhcp;
pub mod fsroot;
pub mod http;
pub mod listener;
pub mod origin;
pub mod script;
pub mod tftp;
