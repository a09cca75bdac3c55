//! Where nodes reach this agent: the one place that works out the agent's
//! own URL, for every answer that names it (the bootstrap script, boot
//! scripts, the bootstrap over TFTP, the DHCP and HTTP Boot answers, and
//! the URL the controller is given at registration).

use std::net::{IpAddr, SocketAddr};

/// The agent's HTTP origin: `http.public_url` when set, else built from
/// the address a request reached and the HTTP port.
#[derive(Debug, Clone)]
pub struct AgentOrigin {
    public_url: Option<String>,
    http_port: u16,
}

impl AgentOrigin {
    pub fn new(public_url: Option<String>, http_port: u16) -> AgentOrigin {
        AgentOrigin {
            public_url,
            http_port,
        }
    }

    /// For a request that reached the agent at `local` (a TFTP request, a
    /// DHCP request on an interface): `http.public_url`, else that
    /// address with the HTTP port.
    pub fn url_at(&self, local: IpAddr) -> String {
        match &self.public_url {
            Some(url) => url.clone(),
            None => self.ip_url(local),
        }
    }

    /// Always an IP literal, whatever `http.public_url` says: for answers
    /// whose client may have no DNS server (a ProxyDHCP offer carries
    /// none, DESIGN §13).
    pub fn ip_url(&self, local: IpAddr) -> String {
        match local {
            IpAddr::V4(ip) => format!("http://{ip}:{}", self.http_port),
            IpAddr::V6(ip) => format!("http://[{ip}]:{}", self.http_port),
        }
    }

    /// For an HTTP request: `http.public_url`, else what the client called
    /// the agent by (its `Host` header), which must look like a host name.
    pub fn url_for_host(&self, host: Option<&str>) -> Result<String, String> {
        if let Some(url) = &self.public_url {
            return Ok(url.clone());
        }
        let host = host.unwrap_or("");
        let plausible = !host.is_empty()
            && host.len() <= 255
            && host.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
            });
        if plausible {
            // Built by hand: `format!` costs a boot answer more than the copy.
            let mut url = String::with_capacity("http://".len() + host.len());
            url.push_str("http://");
            url.push_str(host);
            Ok(url)
        } else {
            Err(format!(
                "missing or invalid Host header {host:?}; set http.public_url"
            ))
        }
    }

    /// The URL the controller is told to reach this agent at, the HTTP
    /// listener bound at `bound`: `http.public_url`, else the host name
    /// when bound to every address, else the bound address.
    pub fn advertised(&self, bound: SocketAddr) -> String {
        if let Some(url) = &self.public_url {
            return url.clone();
        }
        if bound.ip().is_unspecified() {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "localhost".into());
            format!("http://{host}:{}", bound.port())
        } else {
            self.ip_url(bound.ip())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_url_wins_except_where_an_ip_literal_is_needed() {
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let set = AgentOrigin::new(Some("http://boot.example".into()), 8080);
        assert_eq!(set.url_at(ip), "http://boot.example");
        assert_eq!(set.ip_url(ip), "http://10.0.0.5:8080");
        assert_eq!(set.url_for_host(None).unwrap(), "http://boot.example");
        let unset = AgentOrigin::new(None, 8080);
        assert_eq!(unset.url_at(ip), "http://10.0.0.5:8080");
        assert_eq!(
            unset.url_at("fd00::5".parse().unwrap()),
            "http://[fd00::5]:8080"
        );
        assert_eq!(
            unset.url_for_host(Some("agent:8080")).unwrap(),
            "http://agent:8080"
        );
        assert!(unset.url_for_host(Some("evil\r\nx")).is_err());
        assert!(unset.url_for_host(None).is_err());
        assert_eq!(
            unset.advertised("127.0.0.1:8080".parse().unwrap()),
            "http://127.0.0.1:8080"
        );
    }
}
