//! ProxyDHCP (DESIGN §13): the boot question answered beside the site's
//! own DHCP server, never an address. `packet.rs` reads a request and
//! drops what is malformed; `answer.rs` makes the answer from the request,
//! the agent's address and the configuration alone.

pub mod answer;
pub mod packet;
pub mod server;

#[cfg(test)]
mod tests;
