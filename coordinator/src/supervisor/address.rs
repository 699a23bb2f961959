//! The coordinator's own address: what `--listen` accepts, and the URL its local workers
//! dial once it listens.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// `HOST:PORT` with an IP address, or a bare `PORT` on every interface; `None` otherwise
/// (host names are not resolved: the address to bind must be unambiguous).
pub fn parse_listen(text: &str) -> Option<SocketAddr> {
    if let Ok(port) = text.parse::<u16>() {
        return Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    text.parse().ok()
}

/// The URL local workers dial: loopback when listening on all interfaces.
pub fn coordinator_url(addr: SocketAddr, tls: bool) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}", SocketAddr::new(ip, addr.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        let listen = |text| parse_listen(text).map(|a| a.to_string());
        assert_eq!(listen("50051").as_deref(), Some("0.0.0.0:50051"));
        assert_eq!(listen("127.0.0.1:0").as_deref(), Some("127.0.0.1:0"));
        assert_eq!(listen("[::1]:7000").as_deref(), Some("[::1]:7000"));
        for bad in [
            "localhost:1",
            "",
            "70000",
            "127.0.0.1",
            "127.0.0.1:70000",
            ":80",
        ] {
            assert_eq!(parse_listen(bad), None, "{bad}");
        }
    }

    #[test]
    fn local_workers_dial_loopback_for_a_wildcard_address() {
        let url = |addr: &str, tls| coordinator_url(addr.parse().unwrap(), tls);
        assert_eq!(url("0.0.0.0:7000", false), "http://127.0.0.1:7000");
        assert_eq!(url("[::]:7000", false), "http://127.0.0.1:7000");
        assert_eq!(url("10.0.0.5:7000", true), "https://10.0.0.5:7000");
        assert_eq!(url("[fd00::5]:7000", true), "https://[fd00::5]:7000");
    }
}
