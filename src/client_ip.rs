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
//! The header is read element by element from its right end (the lines from the last, each
//! line from its end), and each element is delimited and parsed by its own bytes only: a
//! `Forwarded` quoted string is matched from its closing quote back to its opening one, so a
//! client's unbalanced quote, stray comma or backslash to the left of a proxy's element cannot
//! change where that element starts or what it names.
//!
//! The walk stops at the first element it cannot read (not an address, `unknown`, an
//! obfuscated `_name`, a `Forwarded` element that breaks the grammar or has no `for`). The
//! client is then the trusted hop that handed that element on: the peer itself, or the trusted
//! address the next element to the right named. That is the last view a trusted proxy vouches
//! for; anything further left may have been written by the client, so an address it names is
//! never used. A misbehaving proxy thus puts its clients in one bucket (its own), which shows,
//! rather than letting them choose theirs, which would not. After 32 hops (the hop limit)
//! without meeting an untrusted address, the 32nd is the client.
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

use http::header::{HeaderMap, HeaderName, FORWARDED};
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

/// Not among `http`'s constants: it was never standardised.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

impl ClientIpConfig {
    /// The client's address group, as the bytes that identify it in a key: 4 bytes for IPv4, 16
    /// for IPv6, masked to the configured prefix.
    pub(crate) fn client_group(
        &self,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Result<GroupBytes, MissingPeerAddr> {
        Ok(self.group(self.client_addr(headers, extensions)?))
    }

    /// The client's address: [`client_ip`](Self::client_ip) of the request's peer.
    pub(crate) fn client_addr(
        &self,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Result<IpAddr, MissingPeerAddr> {
        let peer = peer_addr(extensions).ok_or(MissingPeerAddr)?;
        Ok(self.client_ip(peer, headers))
    }

    /// The client address: the peer, or, behind trusted proxies, the rightmost untrusted
    /// forwarded address.
    pub(crate) fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            return peer;
        }
        // Header lines are in order, the nearest proxy's last: walk the lines backwards, and
        // each line from its end, so what a trusted proxy appended is read before (and never
        // through) anything the client wrote.
        match self.header {
            ForwardedHeader::XForwardedFor => self.walk(
                peer,
                headers
                    .get_all(X_FORWARDED_FOR)
                    .iter()
                    .rev()
                    .flat_map(|line| line.as_bytes().rsplit(|&b| b == b','))
                    .map(parse_node),
            ),
            ForwardedHeader::Forwarded => self.walk(
                peer,
                headers
                    .get_all(FORWARDED)
                    .iter()
                    .rev()
                    .flat_map(|line| ForwardedRev::new(line.as_bytes()))
                    .map(|element| element.and_then(parse_node)),
            ),
        }
    }

    /// Walks forwarded hops from the nearest: each `Some` is the address a trusted hop says it
    /// received the request from, `None` a hop it handed on that cannot be read.
    fn walk(&self, peer: IpAddr, hops: impl Iterator<Item = Option<IpAddr>>) -> IpAddr {
        let mut client = peer;
        for (walked, hop) in hops.enumerate() {
            match hop {
                // That hop's peer is the client, unless it is a trusted proxy itself.
                Some(addr) => {
                    client = addr.to_canonical();
                    if !self.is_trusted(client) || walked + 1 >= MAX_HOPS {
                        break;
                    }
                }
                // Garbage, `unknown`, an obfuscated identifier or an element without `for`:
                // the trusted proxy that handed it on is as far as anyone vouches, so it is
                // the client. Never an address further left, which the client may have
                // written.
                None => break,
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

/// The elements of one `Forwarded` line (RFC 7239), parsed from the right, one at a time: each
/// item is the element's `for` value (unquoted), or `None` when the element is malformed or has
/// no `for`, after which the iterator ends.
///
/// Parsing from the right is what makes the header safe to read: an element is delimited by
/// its own bytes (a quoted string is matched to its opening quote from its closing one), so
/// nothing to the left of a proxy's element, such as a client's unbalanced quote, can change
/// where it starts or what it says. Empty list elements (`a, , b`) are skipped, as list syntax
/// allows; spaces and tabs are accepted around `,`, `;` and `=`.
struct ForwardedRev<'a> {
    rest: &'a [u8],
    done: bool,
}

impl<'a> ForwardedRev<'a> {
    fn new(line: &'a [u8]) -> Self {
        Self {
            rest: line,
            done: false,
        }
    }

    /// Parses the last element of `rest`, leaving what precedes its `,` in `rest`. `Ok(None)`
    /// for an empty element.
    fn last_element(&mut self) -> Result<Option<&'a [u8]>, Malformed> {
        let mut rest = self.rest;
        let mut pairs = 0;
        let mut node = None;
        loop {
            rest = trim_ows_end(rest);
            match rest.split_last() {
                None => break,
                Some((b',', before)) => {
                    rest = before;
                    break;
                }
                // An empty pair (`a=1;;b=2`).
                Some((b';', before)) => {
                    rest = before;
                    continue;
                }
                Some(_) => {}
            }
            let (before, value) = value_end(rest)?;
            let before = trim_ows_end(before);
            let before = before.strip_suffix(b"=").ok_or(Malformed)?;
            let before = trim_ows_end(before);
            let name_start = before
                .iter()
                .rposition(|&b| !is_tchar(b))
                .map_or(0, |i| i + 1);
            let (before, name) = before.split_at(name_start);
            if name.is_empty() {
                return Err(Malformed);
            }
            if name.eq_ignore_ascii_case(b"for") {
                // RFC 7239: a parameter occurs at most once per element.
                if node.replace(value).is_some() {
                    return Err(Malformed);
                }
            }
            pairs += 1;
            rest = trim_ows_end(before);
            match rest.split_last() {
                None => break,
                Some((b',', before)) => {
                    rest = before;
                    break;
                }
                Some((b';', before)) => rest = before,
                // Two pairs with nothing between them.
                Some(_) => return Err(Malformed),
            }
        }
        self.rest = rest;
        match (pairs, node) {
            (0, _) => Ok(None),
            (_, Some(node)) => Ok(Some(node)),
            // An element that does not say whom the proxy received the request from.
            (_, None) => Err(Malformed),
        }
    }
}

impl<'a> Iterator for ForwardedRev<'a> {
    type Item = Option<&'a [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            if trim_ows_end(self.rest).is_empty() {
                self.done = true;
                return None;
            }
            match self.last_element() {
                Ok(Some(node)) => return Some(Some(node)),
                Ok(None) => continue,
                Err(Malformed) => {
                    self.done = true;
                    return Some(None);
                }
            }
        }
        None
    }
}

/// A `Forwarded` element that does not follow the grammar.
struct Malformed;

/// Splits the value that ends `bytes` off it: a quoted string (returned without its quotes,
/// escapes left in, which no address contains) or a run of bytes other than delimiters and
/// spaces. `bytes` ends with neither a space nor a delimiter.
fn value_end(bytes: &[u8]) -> Result<(&[u8], &[u8]), Malformed> {
    let Some(close) = bytes.len().checked_sub(1) else {
        return Err(Malformed);
    };
    if bytes.get(close) == Some(&b'"') {
        // A closing quote after an odd run of backslashes is escaped: the string never ends.
        if escaped(bytes, close) {
            return Err(Malformed);
        }
        // The opening quote is the nearest unescaped quote to the left.
        let mut i = close;
        while let Some(open) = bytes
            .get(..i)
            .and_then(|b| b.iter().rposition(|&b| b == b'"'))
        {
            if !escaped(bytes, open) {
                let inner = bytes.get(open + 1..close).ok_or(Malformed)?;
                let before = bytes.get(..open).ok_or(Malformed)?;
                return Ok((before, inner));
            }
            i = open;
        }
        return Err(Malformed);
    }
    let start = bytes
        .iter()
        .rposition(|&b| matches!(b, b',' | b';' | b'=' | b'"' | b' ' | b'\t'))
        .map_or(0, |i| i + 1);
    let (before, value) = bytes.split_at(start);
    if value.is_empty() {
        return Err(Malformed);
    }
    Ok((before, value))
}

/// Whether the byte at `at` follows an odd number of backslashes.
fn escaped(bytes: &[u8], at: usize) -> bool {
    let before = bytes.get(..at).unwrap_or_default();
    before.iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1
}

/// RFC 9110 `tchar`: the bytes of a parameter name.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim_ows_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |i| i + 1);
    bytes.get(..end).unwrap_or_default()
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
    fn a_client_written_quote_cannot_swallow_the_proxys_element() {
        let cfg = config(&["10.0.0.0/8"], ForwardedHeader::Forwarded);
        // The client sent `Forwarded: for=9.9.9.9;x="`; the trusted proxy 10.0.0.1 appended
        // its own peer to the same line.
        let h = headers("forwarded", &[b"for=9.9.9.9;x=\", for=203.0.113.9"]);
        assert_eq!(cfg.client_ip(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        // The same behind two trusted proxies, the inner one appending a line of its own.
        let h = headers(
            "forwarded",
            &[b"for=9.9.9.9;x=\", for=203.0.113.9", b"for=10.0.0.2"],
        );
        assert_eq!(cfg.client_ip(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        // A stray backslash or bracket is no help either.
        for prefix in [&b"for=9.9.9.9;x=\"\\"[..], b"for=\"[9.9.9.9", b"x=\"a\\\""] {
            let mut line = prefix.to_vec();
            line.extend_from_slice(b", for=\"203.0.113.9:4711\"");
            let h = headers("forwarded", &[&line]);
            assert_eq!(
                cfg.client_ip(ip("10.0.0.1"), &h),
                ip("203.0.113.9"),
                "{line:?}"
            );
        }
    }

    #[test]
    fn a_trusted_proxys_element_without_for_stops_the_walk() {
        let cfg = config(&["10.0.0.0/8"], ForwardedHeader::Forwarded);
        // 10.0.0.1 vouched for nothing: what lies left of its element is the client's word.
        let h = headers("forwarded", &[b"for=9.9.9.9, proto=https;by=10.0.0.1"]);
        assert_eq!(cfg.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.1"));
        // Empty list elements are list syntax, not elements.
        let h = headers("forwarded", &[b"for=203.0.113.9, ,,"]);
        assert_eq!(cfg.client_ip(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        // Two `for` in one element (RFC 7239 forbids it) is malformed.
        let h = headers("forwarded", &[b"for=9.9.9.9;for=203.0.113.9"]);
        assert_eq!(cfg.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn x_forwarded_for_lines_are_one_list_read_from_the_right() {
        let cfg = config(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        let h = headers(
            "x-forwarded-for",
            &[
                b"9.9.9.9, \"",
                b"8.8.8.8, 203.0.113.9",
                b"10.0.0.3, 10.0.0.2",
            ],
        );
        assert_eq!(cfg.client_ip(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        // Garbage the nearest proxy handed on: that proxy is the client.
        let h = headers("x-forwarded-for", &[b"203.0.113.9, \xff", b"10.0.0.2"]);
        assert_eq!(cfg.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.2"));
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

/// Properties of everything here that reads request bytes. `fuzz_` in every name, so that
/// `PROPTEST_CASES=200000 cargo test -p tollgate --lib fuzz_` runs them all for long.
#[cfg(test)]
mod fuzz {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    const TRUSTED: [&str; 2] = ["10.0.0.0/8", "fd00::/8"];
    const PEER: &str = "10.0.0.1";

    fn config(header: ForwardedHeader) -> ClientIpConfig {
        ClientIpConfig {
            trusted: TRUSTED.iter().map(|c| c.parse().unwrap()).collect(),
            header,
            ..ClientIpConfig::default()
        }
    }

    /// Any byte a header value may hold, the forwarding syntax's own bytes most often.
    fn header_byte() -> impl Strategy<Value = u8> {
        prop_oneof![
            3 => prop::sample::select(b"\"\\,;=[]: \t".to_vec()),
            2 => 0x20u8..=0x7e,
            1 => 0x80u8..=0xff,
        ]
    }

    /// What a client may write: arbitrary bytes, salted with pieces of real headers.
    fn client_text() -> impl Strategy<Value = Vec<u8>> {
        let fragment = prop_oneof![
            prop::sample::select(vec![
                &b"for="[..],
                b"For=",
                b"\"",
                b"\\",
                b"\\\"",
                b", ",
                b";",
                b"=",
                b"[",
                b"]",
                b"9.9.9.9",
                b"[2001:db8::9]:1",
                b"10.0.0.7",
                b"unknown",
                b"_hidden",
            ])
            .prop_map(<[u8]>::to_vec),
            prop::collection::vec(header_byte(), 0..6),
        ];
        prop::collection::vec(fragment, 0..10).prop_map(|parts| parts.concat())
    }

    /// An address a proxy may append: trusted (an inner proxy) or not (the client).
    fn hop_addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 3]>().prop_map(|[a, b, c]| IpAddr::from([10, a, b, c])),
            any::<u16>().prop_map(|x| IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, x])),
            any::<[u8; 4]>()
                .prop_filter("untrusted", |o| o[0] != 10)
                .prop_map(IpAddr::from),
            any::<u16>().prop_map(|x| IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, x])),
        ]
    }

    fn untrusted_addr() -> impl Strategy<Value = IpAddr> {
        hop_addr().prop_filter("untrusted", |a| {
            !config(ForwardedHeader::Forwarded).is_trusted(*a)
        })
    }

    /// One element a trusted proxy appended: an address, or one it could not tell.
    #[derive(Debug, Clone)]
    enum Hop {
        Addr(IpAddr, u8),
        Unreadable(u8),
    }

    /// The chain the trusted proxies appended, leftmost first: the client's address, then each
    /// inner proxy's view; maybe one element replaced by something unreadable.
    fn chain() -> impl Strategy<Value = Vec<Hop>> {
        (
            untrusted_addr(),
            prop::collection::vec(hop_addr(), 0..5),
            any::<u8>(),
            prop::option::of(any::<prop::sample::Index>()),
            any::<u8>(),
        )
            .prop_map(|(client, inner, style, unreadable, garbage)| {
                let mut hops: Vec<Hop> = std::iter::once(client)
                    .chain(inner)
                    .enumerate()
                    .map(|(i, a)| Hop::Addr(a, style.wrapping_add(i as u8)))
                    .collect();
                if let Some(index) = unreadable {
                    let at = index.index(hops.len());
                    hops[at] = Hop::Unreadable(garbage);
                }
                hops
            })
    }

    /// What the walk must find, computed on the chain rather than on bytes.
    fn expected(hops: &[Hop]) -> IpAddr {
        let cfg = config(ForwardedHeader::Forwarded);
        let mut client: IpAddr = PEER.parse().unwrap();
        for hop in hops.iter().rev() {
            match hop {
                Hop::Addr(addr, _) => {
                    client = *addr;
                    if !cfg.is_trusted(client) {
                        break;
                    }
                }
                Hop::Unreadable(_) => break,
            }
        }
        client
    }

    fn xff_element(hop: &Hop) -> String {
        match *hop {
            Hop::Addr(IpAddr::V4(a), style) => match style % 3 {
                0 => a.to_string(),
                1 => format!("{a}:{}", 1000 + u16::from(style)),
                _ => format!("\"{a}\""),
            },
            Hop::Addr(IpAddr::V6(a), style) => match style % 2 {
                0 => a.to_string(),
                _ => format!("[{a}]:{}", 1000 + u16::from(style)),
            },
            Hop::Unreadable(g) => {
                ["unknown", "_hidden", "300.1.1.1", "", "[::1"][g as usize % 5].into()
            }
        }
    }

    fn forwarded_element(hop: &Hop) -> String {
        match *hop {
            Hop::Addr(addr, style) => {
                let node = match (addr, style % 3) {
                    (IpAddr::V4(a), 0) => a.to_string(),
                    (IpAddr::V4(a), 1) => format!("\"{a}:{}\"", 1000 + u16::from(style)),
                    (IpAddr::V6(a), 0) => format!("\"[{a}]\""),
                    (addr, _) => format!("\"{}\"", SocketAddr::new(addr, 4711)),
                };
                match style % 4 {
                    0 => format!("for={node}"),
                    1 => format!("For={node};proto=https"),
                    2 => format!("by=10.0.0.1;for={node};host=\"a,b;c\\\"d\""),
                    _ => format!("proto=http ; for = {node}"),
                }
            }
            Hop::Unreadable(g) => [
                "for=unknown",
                "for=_hidden",
                "proto=https",
                "for=\"[::1\"",
                "for=300.1.1.1",
            ][g as usize % 5]
                .into(),
        }
    }

    /// The header lines: the client's, then the proxies' elements, each appended to the last
    /// line (with `,` or `, `) or as a line of its own.
    fn lines(
        name: HeaderName,
        client: &[Vec<u8>],
        hops: &[Hop],
        joins: &[u8],
        element: fn(&Hop) -> String,
    ) -> HeaderMap {
        let mut lines: Vec<Vec<u8>> = client.to_vec();
        for (hop, join) in hops.iter().zip(joins.iter().cycle()) {
            let text = element(hop);
            match (join % 3, lines.last_mut()) {
                (0, Some(last)) => {
                    last.extend_from_slice(b",");
                    last.extend_from_slice(text.as_bytes());
                }
                (1, Some(last)) => {
                    last.extend_from_slice(b", ");
                    last.extend_from_slice(text.as_bytes());
                }
                _ => lines.push(text.into_bytes()),
            }
        }
        let mut map = HeaderMap::new();
        for line in lines {
            map.append(name.clone(), HeaderValue::from_bytes(&line).unwrap());
        }
        map
    }

    proptest! {
        #![proptest_config(ProptestConfig::default())]

        /// Whatever the client wrote before them, the trusted proxies' elements decide.
        #[test]
        fn fuzz_forwarded_client_prefix_cannot_steer(
            client in prop::collection::vec(client_text(), 0..3),
            hops in chain(),
            joins in prop::collection::vec(any::<u8>(), 1..4),
        ) {
            let h = lines(FORWARDED, &client, &hops, &joins, forwarded_element);
            let got = config(ForwardedHeader::Forwarded).client_ip(PEER.parse().unwrap(), &h);
            prop_assert_eq!(got, expected(&hops), "{:?}", h);
        }

        /// The same for `X-Forwarded-For`.
        #[test]
        fn fuzz_x_forwarded_for_client_prefix_cannot_steer(
            client in prop::collection::vec(client_text(), 0..3),
            hops in chain(),
            joins in prop::collection::vec(any::<u8>(), 1..4),
        ) {
            let h = lines(X_FORWARDED_FOR, &client, &hops, &joins, xff_element);
            let got = config(ForwardedHeader::XForwardedFor).client_ip(PEER.parse().unwrap(), &h);
            prop_assert_eq!(got, expected(&hops), "{:?}", h);
        }

        /// Arbitrary header lines never panic, and from an untrusted peer they are never read.
        #[test]
        fn fuzz_forwarding_headers_never_panic(
            lines in prop::collection::vec(prop::collection::vec(header_byte(), 0..80), 0..4),
            forwarded in any::<bool>(),
            untrusted in untrusted_addr(),
        ) {
            let header = if forwarded { ForwardedHeader::Forwarded } else { ForwardedHeader::XForwardedFor };
            let name = if forwarded { FORWARDED } else { X_FORWARDED_FOR };
            let mut h = HeaderMap::new();
            for line in &lines {
                h.append(name.clone(), HeaderValue::from_bytes(line).unwrap());
            }
            let cfg = config(header);
            prop_assert_eq!(cfg.client_ip(untrusted, &h), untrusted);
            let peer: IpAddr = PEER.parse().unwrap();
            let got = cfg.client_ip(peer, &h);
            prop_assert!(got == peer || !lines.is_empty());
        }

        /// `Cidr::from_str` never panics, and what it accepts prints back to itself.
        #[test]
        fn fuzz_cidr_from_str(text in "[0-9a-fA-F:./ ]{0,48}|\\PC{0,24}") {
            if let Ok(cidr) = text.parse::<Cidr>() {
                prop_assert_eq!(cidr.to_string().parse::<Cidr>(), Ok(cidr));
            }
        }

        /// Every address and prefix round-trips through its text.
        #[test]
        fn fuzz_cidr_round_trips(
            // A mapped address's prefix counts the 96 mapping bits in text, not in `new`: take
            // mapped addresses as the IPv4 addresses they are.
            addr in any::<IpAddr>().prop_map(|a| a.to_canonical()),
            prefix in 0u8..=128,
        ) {
            let parsed = format!("{addr}/{prefix}").parse::<Cidr>().ok();
            prop_assert_eq!(parsed, Cidr::new(addr, prefix));
            if let Some(cidr) = parsed {
                prop_assert!(cidr.contains(addr));
                prop_assert_eq!(cidr.to_string().parse::<Cidr>(), Ok(cidr));
            }
        }
    }
}
