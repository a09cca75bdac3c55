//! The ProxyDHCP listener (DESIGN §13): on every interface it answers on,
//! one socket on the DHCP server port bound to that interface (so the
//! interface a broadcast came in on, and the agent's address there, are
//! known) and one on the PXE port at that address. Each packet is read,
//! answered or ignored at once, and counted; nothing waits on the
//! controller.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::answer::{self, Answering};
use super::packet::{self, BootRequest};
use crate::config::DhcpConfig;
use crate::model::client::{Fetch, UefiLoader};
use crate::ratelimit::{KeyedRate, LOG_INTERVAL, LogThrottle};
use crate::serve::listener::Listener;
use crate::serve::origin::AgentOrigin;
use crate::store::nodes::NodeCache;

/// Why ProxyDHCP could not start.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// `dhcp.interfaces` names no interface with an IPv4 address.
    #[error("dhcp.interfaces: {0}")]
    NoInterface(String),
    /// A socket could not be made or bound.
    #[error("{what}: {source}")]
    Socket {
        /// Which socket, where.
        what: String,
        /// The system's error.
        source: std::io::Error,
    },
}

/// One interface answered on.
struct Link {
    name: String,
    /// The agent's address on it.
    address: Ipv4Addr,
    /// The DHCP server port, bound to the interface (broadcasts).
    dhcp: UdpSocket,
    /// The PXE port, at the interface's address (unicast requests).
    pxe: UdpSocket,
}

/// What every answer shares.
struct Shared {
    config: DhcpConfig,
    origin: AgentOrigin,
    loader: UefiLoader,
    nodes: NodeCache,
    per_mac: KeyedRate<crate::model::mac::Mac>,
    /// Architectures with no boot file are logged once per MAC and interval.
    unanswered_log: LogThrottle<crate::model::mac::Mac>,
}

/// ProxyDHCP, bound.
pub struct DhcpListener {
    links: Vec<Link>,
    shared: Arc<Shared>,
    /// The first link's DHCP port and PXE port (the ready file's).
    addr: SocketAddr,
    pxe_addr: SocketAddr,
}

impl DhcpListener {
    /// Binds the sockets on `config.interfaces` (every interface with an
    /// IPv4 address but loopback when empty).
    pub fn bind(
        config: &DhcpConfig,
        origin: AgentOrigin,
        loader: UefiLoader,
        nodes: NodeCache,
    ) -> Result<DhcpListener, DhcpError> {
        let interfaces = interfaces(&config.interfaces)?;
        let mut links = Vec::new();
        let (mut port, mut pxe_port) = (config.port, config.pxe_port);
        for (name, address) in interfaces {
            let dhcp = udp_socket(&name, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))?;
            let pxe = udp_socket(&name, SocketAddrV4::new(address, pxe_port))?;
            // Port 0 (tests): every link takes the port the first was given.
            port = local_port(&dhcp, &name)?;
            pxe_port = local_port(&pxe, &name)?;
            links.push(Link {
                name,
                address,
                dhcp,
                pxe,
            });
        }
        let first = links
            .first()
            .map(|l| l.address)
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        Ok(DhcpListener {
            addr: SocketAddr::from((first, port)),
            pxe_addr: SocketAddr::from((first, pxe_port)),
            links,
            shared: Arc::new(Shared {
                per_mac: KeyedRate::per_second(config.rate_per_mac),
                config: config.clone(),
                origin,
                loader,
                nodes,
                unanswered_log: LogThrottle::new(LOG_INTERVAL),
            }),
        })
    }

    /// The PXE boot server port's address (the ready file's `dhcp_pxe`).
    pub fn pxe_addr(&self) -> SocketAddr {
        self.pxe_addr
    }
}

impl Listener for DhcpListener {
    fn protocol(&self) -> &'static str {
        "dhcp"
    }

    fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    fn serve(self: Box<Self>, stop: CancellationToken, _grace: Duration) -> BoxFuture<'static, ()> {
        let DhcpListener { links, shared, .. } = *self;
        for link in &links {
            tracing::info!(
                interface = %link.name,
                address = %link.address,
                "proxydhcp answering"
            );
        }
        let loops: Vec<_> = links
            .into_iter()
            .flat_map(|link| {
                let link = Arc::new(link);
                [false, true].map(|on_pxe_port| {
                    serve_socket(link.clone(), on_pxe_port, shared.clone(), stop.clone())
                })
            })
            .collect();
        // An answer is made and sent at once: nothing is in flight to wait
        // for at shutdown.
        Box::pin(async move {
            futures_util::future::join_all(loops).await;
        })
    }
}

async fn serve_socket(
    link: Arc<Link>,
    on_pxe_port: bool,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let socket = if on_pxe_port { &link.pxe } else { &link.dhcp };
    let mut buf = vec![0u8; 2048];
    loop {
        let received = tokio::select! {
            () = stop.cancelled() => return,
            received = socket.recv_from(&mut buf) => received,
        };
        let Ok((len, SocketAddr::V4(from))) = received else {
            continue;
        };
        let Some((reply, to)) = handle(&buf[..len], from, on_pxe_port, &link, &shared) else {
            continue;
        };
        if let Err(e) = socket.send_to(&reply, to).await {
            tracing::debug!(interface = %link.name, %to, error = %e, "proxydhcp answer not sent");
        }
    }
}

/// The answer to one datagram and where it goes, counted either way.
fn handle(
    bytes: &[u8],
    from: SocketAddrV4,
    on_pxe_port: bool,
    link: &Link,
    shared: &Shared,
) -> Option<(Vec<u8>, SocketAddrV4)> {
    let metrics = crate::metrics::metrics();
    let request = match packet::parse(bytes) {
        Ok(request) => request,
        Err(ignored) => {
            metrics.dhcp_request("unknown", "other", ignored.as_str());
            return None;
        }
    };
    let kind = request.kind.as_str();
    let class = class_label(&request);
    let node = shared.nodes.get(request.mac);
    if shared.config.known_only && node.is_none() {
        metrics.dhcp_request(kind, class, "unknown_mac");
        return None;
    }
    if !shared.per_mac.admit(request.mac) {
        metrics.dhcp_request(kind, class, "rate_limited");
        return None;
    }
    let at = Answering {
        server: shared.config.server_address.unwrap_or(link.address),
        origin: &shared.origin,
        // The node's tag, else `boot.uefi_loader` (DESIGN §14).
        loader: node
            .and_then(|node| UefiLoader::from_tags(&node.tags))
            .unwrap_or(shared.loader),
        on_pxe_port,
    };
    match answer::answer(&request, &at) {
        Ok(answer) => {
            metrics.dhcp_request(kind, class, "answered");
            tracing::debug!(mac = %request.mac, interface = %link.name,
                boot_file = %answer.boot_file, "proxydhcp answered");
            // A relay listens on the server port: the one bound (the
            // configured one, or the port the OS gave for `port = 0`).
            let server_port = link
                .dhcp
                .local_addr()
                .map_or(shared.config.port, |a| a.port());
            let to = answer::destination(&request, from, server_port, shared.config.client_port);
            Some((answer.bytes, to))
        }
        Err(none) => {
            metrics.dhcp_request(kind, class, none.as_str());
            if none == answer::NoAnswer::NoBootFile
                && let Some(suppressed) = shared.unanswered_log.admit(request.mac)
            {
                tracing::info!(mac = %request.mac, arch = request.arch, class = %request.class,
                    suppressed, "proxydhcp: no boot file for this architecture; not answered");
            }
            None
        }
    }
}

/// The `class` label: what kind of boot client asked.
fn class_label(request: &BootRequest) -> &'static str {
    let client = answer::client_of(request);
    match (client.ipxe, client.fetch) {
        (true, _) => "ipxe",
        (false, Fetch::Http) => "http_boot",
        (false, Fetch::Tftp) => "pxe",
    }
}

/// The interfaces to answer on, with their IPv4 addresses.
fn interfaces(wanted: &[String]) -> Result<Vec<(String, Ipv4Addr)>, DhcpError> {
    let all = if_addrs::get_if_addrs().map_err(|source| DhcpError::Socket {
        what: "listing the network interfaces".into(),
        source,
    })?;
    let mut found: Vec<(String, Ipv4Addr)> = Vec::new();
    for interface in all {
        let IpAddr::V4(address) = interface.ip() else {
            continue;
        };
        let chosen = if wanted.is_empty() {
            !address.is_loopback()
        } else {
            wanted.contains(&interface.name)
        };
        // One address per interface: the first it lists.
        if chosen && !found.iter().any(|(name, _)| *name == interface.name) {
            found.push((interface.name, address));
        }
    }
    if let Some(missing) = wanted
        .iter()
        .find(|name| !found.iter().any(|(n, _)| n == *name))
    {
        return Err(DhcpError::NoInterface(format!(
            "{missing:?} is not an interface with an IPv4 address here"
        )));
    }
    if found.is_empty() {
        return Err(DhcpError::NoInterface(
            "no interface with an IPv4 address to answer on".into(),
        ));
    }
    Ok(found)
}

/// A UDP socket bound to `interface` and `addr`, broadcasts allowed, its
/// port shared with the sockets of the other interfaces.
fn udp_socket(interface: &str, addr: SocketAddrV4) -> Result<UdpSocket, DhcpError> {
    let what = || format!("dhcp socket {addr} on {interface}");
    let fail = |source| DhcpError::Socket {
        what: what(),
        source,
    };
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    socket.set_broadcast(true).map_err(fail)?;
    socket
        .bind_device(Some(interface.as_bytes()))
        .map_err(fail)?;
    socket.bind(&SocketAddr::V4(addr).into()).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    UdpSocket::from_std(socket.into()).map_err(fail)
}

fn local_port(socket: &UdpSocket, interface: &str) -> Result<u16, DhcpError> {
    socket
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| DhcpError::Socket {
            what: format!("dhcp socket on {interface}"),
            source,
        })
}
