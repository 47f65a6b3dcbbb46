//! Who the client is: the socket peer, unless that peer is a trusted proxy, in which case the
//! right-most `X-Forwarded-For` entry that is not itself a trusted proxy. Entries left of that
//! one were written by whoever the untrusted hop was, so they are never believed.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// An IPv4 client seen on an IPv6 socket (`::ffff:10.0.0.1`) is the IPv4 client, so one CIDR
/// rule covers both listeners.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|n| n.contains(&ip))
}

pub fn client_ip(peer: IpAddr, headers: &HeaderMap, proxies: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if proxies.is_empty() || !trusted(peer, proxies) {
        return peer;
    }
    let mut client = peer;
    // Several X-Forwarded-For lines are one list in order (RFC 9110 §5.3); walk it from the
    // right, i.e. the last line's last entry first.
    let lines: Vec<&[u8]> = headers.get_all("x-forwarded-for").iter().map(|v| v.as_bytes()).collect();
    for line in lines.iter().rev() {
        for entry in line.rsplit(|b| *b == b',') {
            let Some(ip) = std::str::from_utf8(entry).ok().and_then(parse_entry) else {
                // A garbled hop: stop at the last address we could trust.
                return client;
            };
            let ip = canonical(ip);
            client = ip;
            if !trusted(ip, proxies) {
                return ip;
            }
        }
    }
    client
}

/// An entry is an address, maybe with a port (`1.2.3.4:5678`, `[2001:db8::1]:443`).
fn parse_entry(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok());
    }
    s.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().expect("test value"));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("cidr")];
        assert_eq!(client_ip(ip("203.0.113.9"), &headers(&["1.1.1.1"]), &proxies), ip("203.0.113.9"));
        assert_eq!(client_ip(ip("203.0.113.9"), &headers(&["1.1.1.1"]), &[]), ip("203.0.113.9"));
    }

    #[test]
    fn a_trusted_peer_names_the_rightmost_untrusted_hop() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("cidr")];
        let h = headers(&["6.6.6.6, 198.51.100.7", "10.1.1.1"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &proxies), ip("198.51.100.7"));
        // Only proxies in the list: the left-most is as far as the chain goes.
        assert_eq!(client_ip(ip("10.0.0.2"), &headers(&["10.9.9.9"]), &proxies), ip("10.9.9.9"));
        assert_eq!(client_ip(ip("10.0.0.2"), &headers(&[]), &proxies), ip("10.0.0.2"));
        assert_eq!(client_ip(ip("10.0.0.2"), &headers(&["[2001:db8::1]:443"]), &proxies), ip("2001:db8::1"));
        assert_eq!(client_ip(ip("10.0.0.2"), &headers(&["garbage, 10.3.3.3"]), &proxies), ip("10.3.3.3"));
    }

    #[test]
    fn ipv4_mapped_peers_are_ipv4() {
        assert_eq!(client_ip(ip("::ffff:10.0.0.1"), &HeaderMap::new(), &[]), ip("10.0.0.1"));
    }
}
