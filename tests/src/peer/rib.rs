//! What the peers' RIB queries return, in one shape for the three daemons, and the small value
//! types (prefixes, communities) both the configs and the queries use.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// An IP prefix such as `203.0.113.7/32` or `fd00:1::/64` (host bits are kept as written).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// # Panics
    /// When `len` is longer than the address.
    pub fn new(addr: IpAddr, len: u8) -> Self {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        assert!(len <= max, "prefix length {len} is too long for {addr}");
        Self { addr, len }
    }

    /// The /32 or /128 of `addr`.
    pub fn host(addr: IpAddr) -> Self {
        Self::new(addr, if addr.is_ipv4() { 32 } else { 128 })
    }

    pub fn family(&self) -> Family {
        Family::of(self.addr)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = String;

    /// `addr/len`, or a bare address for a host prefix.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("not an IP prefix: {s:?}");
        let (addr, len) = match s.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(len) => len.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if len > max {
            return Err(bad());
        }
        Ok(Self { addr, len })
    }
}

/// Test convenience: `"203.0.113.7/32".into()`.
///
/// # Panics
/// On a malformed prefix (a typo in a test).
impl From<&str> for Prefix {
    fn from(s: &str) -> Self {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }
}

impl From<IpAddr> for Prefix {
    fn from(addr: IpAddr) -> Self {
        Self::host(addr)
    }
}

impl From<Ipv4Addr> for Prefix {
    fn from(addr: Ipv4Addr) -> Self {
        Self::host(addr.into())
    }
}

impl From<Ipv6Addr> for Prefix {
    fn from(addr: Ipv6Addr) -> Self {
        Self::host(addr.into())
    }
}

/// Anything a test names an address with: `"10.0.0.1"`, an `IpAddr`, an `Ipv4Addr`...
pub trait IntoIpAddr {
    /// # Panics
    /// On a malformed address string.
    fn into_ip(self) -> IpAddr;
}

impl IntoIpAddr for &str {
    fn into_ip(self) -> IpAddr {
        self.parse()
            .unwrap_or_else(|_| panic!("not an IP address: {self:?}"))
    }
}

impl IntoIpAddr for &String {
    fn into_ip(self) -> IpAddr {
        self.as_str().into_ip()
    }
}

impl IntoIpAddr for IpAddr {
    fn into_ip(self) -> IpAddr {
        self
    }
}

impl IntoIpAddr for Ipv4Addr {
    fn into_ip(self) -> IpAddr {
        self.into()
    }
}

impl IntoIpAddr for Ipv6Addr {
    fn into_ip(self) -> IpAddr {
        self.into()
    }
}

/// A BGP address family (AFI/SAFI); unicast only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Ipv4Unicast,
    Ipv6Unicast,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Ipv4Unicast, Family::Ipv6Unicast];

    pub fn of(addr: IpAddr) -> Self {
        if addr.is_ipv4() {
            Self::Ipv4Unicast
        } else {
            Self::Ipv6Unicast
        }
    }
}

/// A standard community (RFC 1997), `asn:value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Community(pub u16, pub u16);

impl Community {
    pub fn from_u32(value: u32) -> Self {
        // Truncation intended: the two halves of the 32-bit value.
        Self((value >> 16) as u16, value as u16)
    }
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.0, self.1)
    }
}

impl FromStr for Community {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("not a community: {s:?}");
        let (a, b) = s.trim().split_once(':').ok_or_else(bad)?;
        Ok(Self(
            a.parse().map_err(|_| bad())?,
            b.parse().map_err(|_| bad())?,
        ))
    }
}

/// A large community (RFC 8092), `global:local1:local2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LargeCommunity(pub u32, pub u32, pub u32);

impl fmt::Display for LargeCommunity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.0, self.1, self.2)
    }
}

impl FromStr for LargeCommunity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("not a large community: {s:?}");
        let parts: Vec<u32> = s
            .trim()
            .split(':')
            .map(|p| p.trim().parse().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        match parts[..] {
            [a, b, c] => Ok(Self(a, b, c)),
            _ => Err(bad()),
        }
    }
}

/// The ORIGIN attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    Igp,
    Egp,
    Incomplete,
}

impl Origin {
    /// From the daemons' spellings: `IGP`, `EGP`, `incomplete`/`Incomplete`, `?`, `0..=2`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "igp" | "i" | "0" => Some(Self::Igp),
            "egp" | "e" | "1" => Some(Self::Egp),
            "incomplete" | "?" | "2" => Some(Self::Incomplete),
            _ => None,
        }
    }
}

/// One path to a prefix in a peer's BGP RIB, as the daemon reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RibRoute {
    pub prefix: Prefix,
    /// The path's next hops: global addresses only (IPv6 link-local next hops are left out);
    /// empty for a route the peer originates itself.
    pub next_hops: Vec<IpAddr>,
    /// AS_PATH flattened (sets included in order), first AS first.
    pub as_path: Vec<u32>,
    pub origin: Option<Origin>,
    pub med: Option<u32>,
    /// LOCAL_PREF: received over iBGP or set locally; `None` for eBGP-learned paths (BIRD's
    /// implicit 100 on eBGP import is dropped so the three daemons agree).
    pub local_pref: Option<u32>,
    pub communities: Vec<Community>,
    pub large_communities: Vec<LargeCommunity>,
    /// The neighbor the path came from; `None` when the peer originated it.
    pub from: Option<IpAddr>,
    /// Whether the daemon selected this path as best.
    pub best: bool,
}

impl RibRoute {
    pub(crate) fn new(prefix: Prefix) -> Self {
        Self {
            prefix,
            next_hops: Vec::new(),
            as_path: Vec::new(),
            origin: None,
            med: None,
            local_pref: None,
            communities: Vec::new(),
            large_communities: Vec::new(),
            from: None,
            best: false,
        }
    }

    /// Adds a next hop reported by a daemon, leaving out link-local and unspecified ones.
    pub(crate) fn push_next_hop(&mut self, addr: IpAddr) {
        let skip = match addr {
            IpAddr::V4(a) => a.is_unspecified(),
            IpAddr::V6(a) => a.is_unspecified() || a.is_unicast_link_local(),
        };
        if !skip && !self.next_hops.contains(&addr) {
            self.next_hops.push(addr);
        }
    }
}

/// A BGP session's state as one daemon reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionState {
    pub established: bool,
    /// The daemon's own words (`Established`, `Active`, `Connect`, `OpenSent`, BIRD's
    /// `Active  Socket: Connection refused`, `no such neighbor`...).
    pub raw: String,
}

impl SessionState {
    pub(crate) fn from_raw(raw: impl Into<String>) -> Self {
        let raw = raw.into();
        Self {
            established: raw.trim().to_ascii_lowercase().starts_with("established"),
            raw,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_print() {
        let p: Prefix = "203.0.113.7/32".into();
        assert_eq!(p.to_string(), "203.0.113.7/32");
        assert_eq!(Prefix::from("fd00::1"), Prefix::host("fd00::1".into_ip()));
        assert!("10.0.0.0/33".parse::<Prefix>().is_err());
        assert!("nonsense".parse::<Prefix>().is_err());
    }

    #[test]
    fn communities_parse_and_print() {
        assert_eq!("65002:200".parse::<Community>(), Ok(Community(65002, 200)));
        assert_eq!(Community::from_u32(4_259_971_272), Community(65002, 200));
        assert_eq!(
            "65002:3:4".parse::<LargeCommunity>(),
            Ok(LargeCommunity(65002, 3, 4))
        );
        assert_eq!(LargeCommunity(1, 2, 3).to_string(), "1:2:3");
    }
}
