//! One shape for every server the agent runs: HTTP and TFTP today,
//! ProxyDHCP next (DESIGN §13). A listener is bound before the agent
//! reports itself ready (so its address is known and a port in use fails
//! the start), serves until the agent's stop token is cancelled, then
//! finishes what is in flight within the grace period and cuts the rest.
//! `agent::serve_until` runs them all the same way: any of them ending on
//! its own stops the others.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

/// A bound server.
pub trait Listener: Send {
    /// `http`, `tftp`, `dhcp`: how logs name it.
    fn protocol(&self) -> &'static str;

    /// The address it is bound to.
    fn local_addr(&self) -> SocketAddr;

    /// Serves until `stop` is cancelled; then takes nothing new, lets
    /// what is in flight finish for up to `grace`, ends the rest, and
    /// returns.
    fn serve(self: Box<Self>, stop: CancellationToken, grace: Duration) -> BoxFuture<'static, ()>;
}
