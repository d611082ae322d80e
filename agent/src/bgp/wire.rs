//! The BGP wire format, through netgauze-bgp-pkt: the rest of the speaker sees only the small
//! types of this module ([`Message`], [`Open`], [`Update`], [`Notification`]).
//!
//! We always speak four-octet AS (RFC 6793): the OPEN carries AS_TRANS in its two-octet field
//! and the real ASN in the capability, and AS_PATH is encoded with four-octet numbers.
//!
//! [`decode`] and [`encode`] translate from and to netgauze's types; [`rfc7606`] decides which
//! malformed UPDATEs a session survives.

use std::{
    io::Cursor,
    net::{IpAddr, Ipv4Addr},
};

use ipnet::IpNet;
use netgauze_bgp_pkt::{BgpMessage, wire::deserializer::BgpParsingContext};
use netgauze_iana::address_family::AddressType;
use netgauze_parse_utils::{WritablePdu, reader::SliceReader, traits::ParseFromWithOneInput};

use self::{
    decode::{from_netgauze, malformed, parses},
    encode::to_netgauze,
};

/// The two-octet AS number a four-octet speaker puts in OPEN (RFC 6793).
pub const AS_TRANS: u16 = 23456;
/// Length of the fixed header: marker, length, type.
pub const HEADER_LEN: usize = 19;
/// Largest message without the extended-message capability (RFC 4271).
pub const MAX_MESSAGE_LEN: usize = 4096;

/// NOTIFICATION error codes (RFC 4271 section 4.5).
pub mod code {
    pub const MESSAGE_HEADER: u8 = 1;
    pub const OPEN_MESSAGE: u8 = 2;
    pub const UPDATE_MESSAGE: u8 = 3;
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    pub const FSM: u8 = 5;
    pub const CEASE: u8 = 6;
}

/// A unicast address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(addr: IpAddr) -> Self {
        if addr.is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        }
    }

    fn address_type(self) -> AddressType {
        match self {
            Family::Ipv4 => AddressType::Ipv4Unicast,
            Family::Ipv6 => AddressType::Ipv6Unicast,
        }
    }

    fn from_address_type(t: AddressType) -> Option<Self> {
        match t {
            AddressType::Ipv4Unicast => Some(Family::Ipv4),
            AddressType::Ipv6Unicast => Some(Family::Ipv6),
            _ => None,
        }
    }
}

/// Graceful restart capability (RFC 4724) as we announce and read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GracefulRestart {
    /// The R bit: we are restarting and the peer should keep our stale routes.
    pub restarting: bool,
    /// Seconds the peer should wait for us to come back.
    pub restart_time: u16,
    /// Families the graceful restart applies to.
    pub families: Vec<Family>,
    /// The F bit of every listed family: its forwarding state survived the restart.
    pub forwarding: bool,
}

/// The capabilities we understand.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// RFC 6793: the sender's four-octet AS number.
    pub four_octet_as: Option<u32>,
    /// RFC 4760 multiprotocol families.
    pub families: Vec<Family>,
    pub route_refresh: bool,
    pub graceful_restart: Option<GracefulRestart>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    pub version: u8,
    /// The sender's AS: the four-octet capability's value when present, else the OPEN field.
    pub asn: u32,
    pub hold_time: u16,
    pub router_id: Ipv4Addr,
    pub capabilities: Capabilities,
}

/// Attributes of the routes an UPDATE announces. ORIGIN is always IGP when we send.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes {
    /// AS_PATH as one AS_SEQUENCE (empty for iBGP).
    pub as_path: Vec<u32>,
    /// NEXT_HOP for IPv4 NLRI, or the global next hop of MP_REACH_NLRI for IPv6.
    pub next_hop: Option<IpAddr>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub communities: Vec<(u16, u16)>,
    pub large_communities: Vec<(u32, u32, u32)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Update {
    /// IPv4 prefixes go in the NLRI field, IPv6 ones in MP_REACH_NLRI.
    pub announce: Vec<IpNet>,
    /// IPv4 prefixes go in Withdrawn Routes, IPv6 ones in MP_UNREACH_NLRI.
    pub withdraw: Vec<IpNet>,
    /// Ignored when `announce` is empty.
    pub attributes: Attributes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl Notification {
    pub fn new(code: u8, subcode: u8, data: impl Into<Vec<u8>>) -> Self {
        Self {
            code,
            subcode,
            data: data.into(),
        }
    }
}

impl std::fmt::Display for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NOTIFICATION {}/{}", self.code, self.subcode)?;
        if !self.data.is_empty() {
            write!(f, " data {:02x?}", self.data)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    /// An UPDATE that carries nothing but End-of-RIB for a family.
    EndOfRib(Family),
    Keepalive,
    Notification(Notification),
    RouteRefresh(Family),
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The peer sent something we cannot parse; send it this NOTIFICATION.
    #[error("malformed message: {detail} (answer: {notification})")]
    Malformed {
        notification: Notification,
        detail: String,
    },
    /// An UPDATE whose error RFC 7606 handles with treat-as-withdraw or attribute-discard:
    /// the session stays up (we ignore received routes anyway).
    #[error("malformed UPDATE ignored per RFC 7606: {detail}")]
    IgnorableUpdate { detail: String },
    #[error("cannot encode {what}: {detail}")]
    Encode { what: &'static str, detail: String },
}

impl WireError {
    /// The NOTIFICATION that answers a decode error.
    pub fn notification(&self) -> Option<&Notification> {
        match self {
            WireError::Malformed { notification, .. } => Some(notification),
            WireError::IgnorableUpdate { .. } | WireError::Encode { .. } => None,
        }
    }
}

/// The total length of the message whose header is `header`, checked against RFC 4271's bounds
/// (`Err` carries the NOTIFICATION to send).
pub fn message_len(header: &[u8; HEADER_LEN]) -> Result<usize, Notification> {
    if header[..16].iter().any(|&b| b != 0xff) {
        return Err(Notification::new(code::MESSAGE_HEADER, 1, []));
    }
    let len = usize::from(u16::from_be_bytes([header[16], header[17]]));
    if !(HEADER_LEN..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(Notification::new(
            code::MESSAGE_HEADER,
            2,
            header[16..18].to_vec(),
        ));
    }
    Ok(len)
}

/// Decodes one whole message (header included). A malformed UPDATE whose error RFC 7606
/// lets a session survive comes back as [`WireError::IgnorableUpdate`] (see [`rfc7606`]).
pub fn decode(buf: &[u8]) -> Result<Message, WireError> {
    let mut ctx = BgpParsingContext::default();
    match BgpMessage::parse(&mut SliceReader::new(buf), &mut ctx) {
        Ok(msg) => from_netgauze(msg),
        Err(e) => {
            let err = malformed(e);
            match rfc7606::ignorable(buf) {
                Some(reason) => Err(WireError::IgnorableUpdate {
                    detail: format!("{reason} ({err})"),
                }),
                None => Err(err),
            }
        }
    }
}

/// Encodes one message. UPDATEs must fit in [`MAX_MESSAGE_LEN`]: see [`encode_updates`].
pub fn encode(msg: &Message) -> Result<Vec<u8>, WireError> {
    let ng = to_netgauze(msg)?;
    let mut buf = Vec::with_capacity(ng.len());
    ng.write(&mut Cursor::new(&mut buf))
        .map_err(|e| WireError::Encode {
            what: "message",
            detail: format!("{e:?}"),
        })?;
    if buf.len() > MAX_MESSAGE_LEN {
        return Err(WireError::Encode {
            what: "message",
            detail: format!("{} bytes, more than {MAX_MESSAGE_LEN}", buf.len()),
        });
    }
    Ok(buf)
}

/// Encodes `update` as as many UPDATEs as it takes to stay under [`MAX_MESSAGE_LEN`], many NLRI
/// per message.
pub fn encode_updates(update: &Update) -> Result<Vec<Vec<u8>>, WireError> {
    let mut out = Vec::new();
    encode_split(update, &mut out)?;
    Ok(out)
}

fn encode_split(update: &Update, out: &mut Vec<Vec<u8>>) -> Result<(), WireError> {
    let msg = Message::Update(update.clone());
    match encode(&msg) {
        Ok(buf) => {
            out.push(buf);
            Ok(())
        }
        Err(e) if update.announce.len() + update.withdraw.len() > 1 => {
            let _ = e;
            let (a1, a2) = update.announce.split_at(update.announce.len() / 2);
            let (w1, w2) = update.withdraw.split_at(update.withdraw.len() / 2);
            for (a, w) in [(a1, w1), (a2, w2)] {
                if a.is_empty() && w.is_empty() {
                    continue;
                }
                encode_split(
                    &Update {
                        announce: a.to_vec(),
                        withdraw: w.to_vec(),
                        attributes: update.attributes.clone(),
                    },
                    out,
                )?;
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// A host prefix (/32 or /128) for an address.
pub fn host_prefix(addr: IpAddr) -> IpNet {
    IpNet::from(addr)
}

mod decode;
mod encode;
mod rfc7606;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fuzz;
