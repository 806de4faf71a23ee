//! Who the client is, network-wise: the peer address, trusted proxies, and address grouping.
//!
//! The client IP is the peer address of the connection, read from axum's
//! `ConnectInfo<SocketAddr>` or from a plain [`SocketAddr`] request extension (which a hyper
//! server inserts per connection). Forwarding headers are believed only when the peer is one of
//! the configured trusted proxies, and then only as far as the proxies themselves vouch for
//! them: the header is read from the right, skipping addresses inside the trusted ranges, and the
//! first address outside them is the client. Everything to the left of it was written by the
//! client and can be anything, so it is never read (trusting the leftmost entry is the classic
//! spoofing hole).
//!
//! Exactly one forwarding header is read, chosen by [`ForwardedHeader`]: a proxy that appends to
//! `X-Forwarded-For` leaves a client-written `Forwarded` header untouched, so reading both would
//! let a client pick its own bucket.
//!
//! IPv6 clients usually own a whole /64, so by default an IPv6 address is grouped by its /64
//! prefix ([`RateLimitBuilder::ipv6_prefix`](crate::RateLimitBuilder::ipv6_prefix)); IPv4 addresses
//! stand alone (/32). IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) count as IPv4.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use http::header::{HeaderMap, FORWARDED};
use http::Extensions;

/// Which forwarding header a trusted proxy writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (default): what nginx, HAProxy and most load
    /// balancers append to.
    #[default]
    XForwardedFor,
    /// The standard `Forwarded: for=client, for="[2001:db8::1]:4711"` header (RFC 7239).
    Forwarded,
}

/// A range of addresses in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, or a bare address).
///
/// ```
/// use tollgate::Cidr;
///
/// let lan: Cidr = "10.0.0.0/8".parse()?;
/// assert!(lan.contains("10.1.2.3".parse()?));
/// assert!(!lan.contains("192.0.2.1".parse()?));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// A CIDR range that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR range {input:?}: write an address with an optional prefix length, like \"10.0.0.0/8\" or \"2001:db8::/32\"")]
pub struct CidrError {
    input: String,
}

impl Cidr {
    /// The range of `prefix` leading bits of `addr`. `None` when the prefix is longer than the
    /// address (32 bits for IPv4, 128 for IPv6).
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then(|| Self {
            network: mask(addr, prefix),
            prefix,
        })
    }

    /// Whether `addr` is inside the range.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        addr.is_ipv4() == self.network.is_ipv4() && mask(addr, self.prefix) == self.network
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = || CidrError {
            input: s.to_owned(),
        };
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| error())?;
        let full = if addr.to_canonical().is_ipv4() {
            32
        } else {
            128
        };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| error())?,
            None => full,
        };
        // A mapped address (`::ffff:10.0.0.0/104`) is an IPv4 range: drop the 96-bit prefix.
        let prefix = match addr {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
                prefix.checked_sub(96).ok_or_else(error)?
            }
            _ => prefix,
        };
        Self::new(addr, prefix).ok_or_else(error)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Keeps the `prefix` leading bits of `addr`, zeroing the rest.
fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let prefix = u32::from(prefix.min(32));
            let keep = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & keep))
        }
        IpAddr::V6(v6) => {
            let prefix = u32::from(prefix.min(128));
            let keep = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & keep))
        }
    }
}

/// How the client address is found and grouped; built by
/// [`RateLimitBuilder`](crate::RateLimitBuilder).
#[derive(Debug, Clone)]
pub(crate) struct ClientIpConfig {
    pub(crate) trusted: Vec<Cidr>,
    pub(crate) header: ForwardedHeader,
    pub(crate) ipv4_prefix: u8,
    pub(crate) ipv6_prefix: u8,
}

impl Default for ClientIpConfig {
    fn default() -> Self {
        Self {
            trusted: Vec::new(),
            header: ForwardedHeader::default(),
            ipv4_prefix: 32,
            ipv6_prefix: 64,
        }
    }
}

/// The request carried no peer address: the server was not set up to provide one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MissingPeerAddr;

/// Most forwarding hops walked through, from the right, before giving up on finding an
/// untrusted one (the last trusted hop is then the client).
const MAX_HOPS: usize = 32;

impl ClientIpConfig {
    /// The client's address group, as the bytes that identify it in a key: 4 bytes for IPv4, 16
    /// for IPv6, masked to the configured prefix.
    pub(crate) fn client_group(
        &self,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Result<GroupBytes, MissingPeerAddr> {
        let peer = peer_addr(extensions).ok_or(MissingPeerAddr)?;
        let client = self.client_ip(peer, headers);
        Ok(self.group(client))
    }

    /// The client address: the peer, or, behind trusted proxies, the rightmost untrusted
    /// forwarded address.
    pub(crate) fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut client = peer;
        let mut hops = 0;
        // Header lines are in order; within a line, entries are in order. Walk both backwards.
        let mut walk = |entry: Option<IpAddr>| -> bool {
            hops += 1;
            match entry {
                // A trusted proxy wrote an address: that hop's peer is the client, unless it is
                // a trusted proxy itself.
                Some(addr) => {
                    client = addr.to_canonical();
                    !self.is_trusted(client) || hops >= MAX_HOPS
                }
                // Garbage, `unknown` or an obfuscated identifier: nothing further left is
                // vouched for, so the nearest trusted hop is as far as we can see.
                None => true,
            }
        };
        match self.header {
            ForwardedHeader::XForwardedFor => {
                'lines: for line in headers.get_all("x-forwarded-for").iter().rev() {
                    for entry in line.as_bytes().rsplit(|&b| b == b',') {
                        if walk(parse_node(entry)) {
                            break 'lines;
                        }
                    }
                }
            }
            ForwardedHeader::Forwarded => {
                'lines: for line in headers.get_all(FORWARDED).iter().rev() {
                    for element in split_unquoted(line.as_bytes(), b',').rev() {
                        let node = forwarded_for(element);
                        // An element without `for=` says nothing about the client.
                        if let Some(node) = node {
                            if walk(parse_node(node)) {
                                break 'lines;
                            }
                        }
                    }
                }
            }
        }
        client
    }

    fn is_trusted(&self, addr: IpAddr) -> bool {
        self.trusted.iter().any(|cidr| cidr.contains(addr))
    }

    fn group(&self, addr: IpAddr) -> GroupBytes {
        match addr.to_canonical() {
            IpAddr::V4(v4) => match mask(IpAddr::V4(v4), self.ipv4_prefix) {
                IpAddr::V4(m) => GroupBytes::V4(m.octets()),
                IpAddr::V6(m) => GroupBytes::V6(m.octets()),
            },
            IpAddr::V6(v6) => match mask(IpAddr::V6(v6), self.ipv6_prefix) {
                IpAddr::V6(m) => GroupBytes::V6(m.octets()),
                IpAddr::V4(m) => GroupBytes::V4(m.octets()),
            },
        }
    }
}

/// A client's address group as key bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupBytes {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl GroupBytes {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            GroupBytes::V4(b) => b,
            GroupBytes::V6(b) => b,
        }
    }
}

/// The connection's peer address: axum's `ConnectInfo<SocketAddr>`, or a `SocketAddr`
/// extension.
fn peer_addr(extensions: &Extensions) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0.ip());
    }
    extensions.get::<SocketAddr>().map(SocketAddr::ip)
}

/// Parses one forwarded node: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]:4711`, optionally quoted and padded with spaces. `None` for anything else.
fn parse_node(raw: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(raw)
        .ok()?
        .trim_matches(|c: char| c == ' ' || c == '\t');
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Some(addr);
    }
    if let Ok(sock) = text.parse::<SocketAddr>() {
        return Some(sock.ip());
    }
    // `[2001:db8::1]` without a port.
    text.strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .and_then(|t| t.parse::<Ipv6Addr>().ok())
        .map(IpAddr::V6)
}

/// The value of the `for` parameter of one `Forwarded` element (`for=...;proto=...`).
fn forwarded_for(element: &[u8]) -> Option<&[u8]> {
    split_unquoted(element, b';').find_map(|pair| {
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (name, value) = pair.split_at(eq);
        let value = value.get(1..).unwrap_or_default();
        name.trim_ascii()
            .eq_ignore_ascii_case(b"for")
            .then_some(value.trim_ascii())
    })
}

/// Splits on `sep` outside double-quoted strings (RFC 7239 values may quote commas).
fn split_unquoted(bytes: &[u8], sep: u8) -> impl DoubleEndedIterator<Item = &[u8]> {
    let mut in_quotes = false;
    let mut escaped = false;
    let mut bounds: smallvec::SmallVec<[usize; 8]> = smallvec::SmallVec::new();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if in_quotes => escaped = true,
            b'"' => in_quotes = !in_quotes,
            _ if b == sep && !in_quotes => bounds.push(i),
            _ => {}
        }
    }
    let count = bounds.len() + 1;
    (0..count).map(move |i| {
        let start = match i.checked_sub(1) {
            Some(prev) => bounds.get(prev).map_or(bytes.len(), |b| b + 1),
            None => 0,
        };
        let end = bounds.get(i).copied().unwrap_or(bytes.len());
        bytes.get(start..end).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn config(trusted: &[&str], header: ForwardedHeader) -> ClientIpConfig {
        ClientIpConfig {
            trusted: trusted.iter().map(|c| c.parse().unwrap()).collect(),
            header,
            ..ClientIpConfig::default()
        }
    }

    fn headers(name: &str, values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.255.0.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.0.0.1")));
        let c: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(c.contains(ip("2001:db8:1::1")));
        assert!(!c.contains(ip("2001:db9::1")));
        let single: Cidr = "192.0.2.7".parse().unwrap();
        assert!(single.contains(ip("192.0.2.7")));
        assert!(!single.contains(ip("192.0.2.8")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        assert!(!all.contains(ip("::1")));
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert!(mapped.contains(ip("10.9.9.9")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "nope",
            "10.0.0.0/x",
            "::ffff:1.2.3.4/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn untrusted_peer_ignores_forwarding_headers() {
        let cfg = config(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        let h = headers("x-forwarded-for", &[b"203.0.113.9"]);
        assert_eq!(cfg.client_ip(ip("198.51.100.1"), &h), ip("198.51.100.1"));
    }

    #[test]
    fn rightmost_untrusted_address_wins() {
        let cfg = config(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        // The client wrote "1.1.1.1"; the proxy appended the real peer 203.0.113.9; an inner
        // proxy 10.0.0.2 appended too.
        let h = headers("x-forwarded-for", &[b"1.1.1.1, 203.0.113.9", b"10.0.0.2"]);
        assert_eq!(cfg.client_ip(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        // Without the header the proxy itself is the client.
        assert_eq!(
            cfg.client_ip(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
        // Every hop trusted: the leftmost is as far as we can see.
        let h = headers("x-forwarded-for", &[b"10.0.0.5, 10.0.0.6"]);
        assert_eq!(cfg.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.5"));
    }

    #[test]
    fn garbage_stops_at_the_nearest_trusted_hop() {
        let cfg = config(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        for raw in [
            &b"1.2.3.4, garbage"[..],
            b",,,",
            b"",
            b"unknown",
            b"\xff\xfe",
            b"300.1.1.1",
            b"[::1",
        ] {
            let h = headers("x-forwarded-for", &[raw]);
            assert_eq!(cfg.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.1"), "{raw:?}");
        }
        let h = headers("x-forwarded-for", &[b"garbage, 10.0.0.3"]);
        assert_eq!(cfg.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.3"));
    }

    #[test]
    fn forwarded_header_is_parsed_per_rfc_7239() {
        let cfg = config(&["10.0.0.0/8"], ForwardedHeader::Forwarded);
        let h = headers(
            "forwarded",
            &[b"for=1.1.1.1, for=\"[2001:db8:cafe::17]:4711\";proto=https, For=10.0.0.9;by=10.0.0.1"],
        );
        assert_eq!(cfg.client_ip(ip("10.0.0.1"), &h), ip("2001:db8:cafe::17"));
        let h = headers("forwarded", &[b"proto=http;for=\"192.0.2.60:8080\""]);
        assert_eq!(cfg.client_ip(ip("10.0.0.1"), &h), ip("192.0.2.60"));
        // Quoted commas and semicolons do not split.
        let h = headers("forwarded", &[b"for=192.0.2.1;ext=\"a,b;c\""]);
        assert_eq!(cfg.client_ip(ip("10.0.0.1"), &h), ip("192.0.2.1"));
        for raw in [
            &b"for=unknown"[..],
            b"for=_hidden",
            b"for=\"",
            b"for",
            b";;;,,,",
            b"for=\"[::1\"",
        ] {
            let h = headers("forwarded", &[raw]);
            assert_eq!(cfg.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.1"), "{raw:?}");
        }
        // The other header is ignored in this mode.
        let h = headers("x-forwarded-for", &[b"203.0.113.1"]);
        assert_eq!(cfg.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn ipv6_is_grouped_by_prefix() {
        let cfg = ClientIpConfig::default();
        let a = cfg.group(ip("2001:db8:1:2:aaaa::1"));
        let b = cfg.group(ip("2001:db8:1:2:bbbb::2"));
        let c = cfg.group(ip("2001:db8:1:3::1"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            cfg.group(ip("::ffff:192.0.2.1")),
            cfg.group(ip("192.0.2.1"))
        );
        assert_ne!(cfg.group(ip("192.0.2.1")), cfg.group(ip("192.0.2.2")));
    }

    #[test]
    fn masks() {
        assert_eq!(mask(ip("10.1.2.3"), 8), ip("10.0.0.0"));
        assert_eq!(mask(ip("10.1.2.3"), 0), ip("0.0.0.0"));
        assert_eq!(mask(ip("10.1.2.3"), 32), ip("10.1.2.3"));
        assert_eq!(mask(ip("2001:db8::1"), 0), ip("::"));
        assert_eq!(mask(ip("2001:db8::1"), 128), ip("2001:db8::1"));
    }
}
