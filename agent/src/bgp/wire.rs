//! The BGP wire format, through netgauze-bgp-pkt: the rest of the speaker sees only the small
//! types of this module ([`Message`], [`Open`], [`Update`], [`Notification`]).
//!
//! We always speak four-octet AS (RFC 6793): the OPEN carries AS_TRANS in its two-octet field
//! and the real ASN in the capability, and AS_PATH is encoded with four-octet numbers.

use std::{
    io::Cursor,
    net::{IpAddr, Ipv4Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netgauze_bgp_pkt::{
    BgpMessage,
    capabilities::{
        BgpCapability, FourOctetAsCapability, GracefulRestartAddressFamily,
        GracefulRestartCapability, MultiProtocolExtensionsCapability,
    },
    community::{Community, LargeCommunity},
    iana::RouteRefreshSubcode,
    nlri::{Ipv4Unicast, Ipv4UnicastAddress, Ipv6Unicast, Ipv6UnicastAddress},
    notification::BgpNotificationMessage,
    open::{BgpOpenMessage, BgpOpenMessageParameter},
    path_attribute::{
        As4PathSegment, AsPath, AsPathSegmentType, Communities, LargeCommunities, LocalPreference,
        MpReach, MpUnreach, MultiExitDiscriminator, NextHop, Origin, PathAttribute,
        PathAttributeValue,
    },
    route_refresh::BgpRouteRefreshMessage,
    update::BgpUpdateMessage,
    wire::deserializer::{BgpMessageParsingError, BgpParsingContext},
};
use netgauze_iana::address_family::AddressType;
use netgauze_parse_utils::{
    WritablePdu,
    reader::SliceReader,
    traits::{ParseFrom, ParseFromWithOneInput},
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

/// Whether netgauze parses `buf` (used on UPDATEs rebuilt by [`rfc7606`]).
fn parses(buf: &[u8]) -> bool {
    let mut ctx = BgpParsingContext::default();
    BgpMessage::parse(&mut SliceReader::new(buf), &mut ctx).is_ok()
}

fn malformed(e: BgpMessageParsingError) -> WireError {
    let detail = e.to_string();
    let notification = notification_from_netgauze(&BgpNotificationMessage::from(e));
    WireError::Malformed {
        notification,
        detail,
    }
}

fn from_netgauze(msg: BgpMessage) -> Result<Message, WireError> {
    Ok(match msg {
        BgpMessage::Open(open) => Message::Open(open_from_netgauze(&open)),
        BgpMessage::Update(update) => {
            if let Some(family) = update.end_of_rib().and_then(Family::from_address_type) {
                return Ok(Message::EndOfRib(family));
            }
            Message::Update(update_from_netgauze(&update))
        }
        BgpMessage::KeepAlive => Message::Keepalive,
        BgpMessage::Notification(n) => Message::Notification(notification_from_netgauze(&n)),
        BgpMessage::RouteRefresh(rr) => match Family::from_address_type(rr.address_type()) {
            Some(family) => Message::RouteRefresh(family),
            None => {
                return Err(WireError::Malformed {
                    // RFC 2918: ignore a ROUTE-REFRESH for a family we did not negotiate; the
                    // caller may ignore this error too.
                    notification: Notification::new(code::FSM, 0, []),
                    detail: format!("route refresh for {:?}", rr.address_type()),
                });
            }
        },
    })
}

fn open_from_netgauze(open: &BgpOpenMessage) -> Open {
    let mut caps = Capabilities::default();
    for cap in open.capabilities() {
        match cap {
            BgpCapability::FourOctetAs(c) => caps.four_octet_as = Some(c.asn4()),
            BgpCapability::MultiProtocolExtensions(c) => {
                if let Some(f) = Family::from_address_type(c.address_type()) {
                    caps.families.push(f);
                }
            }
            BgpCapability::RouteRefresh => caps.route_refresh = true,
            BgpCapability::GracefulRestartCapability(c) => {
                let afs = c.address_families();
                caps.graceful_restart = Some(GracefulRestart {
                    restarting: c.restart(),
                    restart_time: c.time(),
                    families: afs
                        .iter()
                        .filter_map(|af| Family::from_address_type(af.address_type()))
                        .collect(),
                    forwarding: !afs.is_empty() && afs.iter().all(|af| af.forwarding_state()),
                });
            }
            _ => {}
        }
    }
    Open {
        version: open.version(),
        asn: open.my_asn4(),
        hold_time: open.hold_time(),
        router_id: open.bgp_id(),
        capabilities: caps,
    }
}

fn update_from_netgauze(update: &BgpUpdateMessage) -> Update {
    let mut out = Update {
        announce: update
            .nlri()
            .iter()
            .map(|n| IpNet::V4(n.network().address()))
            .collect(),
        withdraw: update
            .withdraw_routes()
            .iter()
            .map(|n| IpNet::V4(n.network().address()))
            .collect(),
        attributes: Attributes::default(),
    };
    let attrs = &mut out.attributes;
    for attr in update.path_attributes() {
        match attr.value() {
            PathAttributeValue::AsPath(path) => attrs.as_path = Vec::<u32>::from(path.clone()),
            PathAttributeValue::NextHop(nh) => attrs.next_hop = Some(IpAddr::V4(nh.next_hop())),
            PathAttributeValue::MultiExitDiscriminator(m) => attrs.med = Some(m.metric()),
            PathAttributeValue::LocalPreference(l) => attrs.local_pref = Some(l.metric()),
            PathAttributeValue::Communities(c) => {
                attrs.communities = c
                    .communities()
                    .iter()
                    .map(|c| (c.collection_asn(), c.collection_value()))
                    .collect();
            }
            PathAttributeValue::LargeCommunities(c) => {
                attrs.large_communities = c
                    .communities()
                    .iter()
                    .map(|c| (c.global_admin(), c.local_data1(), c.local_data2()))
                    .collect();
            }
            PathAttributeValue::MpReach(MpReach::Ipv6Unicast {
                next_hop_global,
                nlri,
                ..
            }) => {
                attrs.next_hop = Some(IpAddr::V6(*next_hop_global));
                out.announce
                    .extend(nlri.iter().map(|n| IpNet::V6(n.network().address())));
            }
            PathAttributeValue::MpReach(MpReach::Ipv4Unicast { next_hop, nlri, .. }) => {
                attrs.next_hop = Some(*next_hop);
                out.announce
                    .extend(nlri.iter().map(|n| IpNet::V4(n.network().address())));
            }
            PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast { nlri }) => out
                .withdraw
                .extend(nlri.iter().map(|n| IpNet::V6(n.network().address()))),
            PathAttributeValue::MpUnreach(MpUnreach::Ipv4Unicast { nlri }) => out
                .withdraw
                .extend(nlri.iter().map(|n| IpNet::V4(n.network().address()))),
            _ => {}
        }
    }
    out
}

/// Our NOTIFICATION from netgauze's, through its own encoder (code, subcode, data).
fn notification_from_netgauze(n: &BgpNotificationMessage) -> Notification {
    let mut body = Vec::new();
    match n.write(&mut Cursor::new(&mut body)) {
        Ok(()) if body.len() >= 2 => Notification::new(body[0], body[1], body[2..].to_vec()),
        _ => Notification::new(code::CEASE, 0, []),
    }
}

/// Netgauze's NOTIFICATION from ours, through its own parser.
fn notification_to_netgauze(n: &Notification) -> Result<BgpNotificationMessage, WireError> {
    let mut body = vec![n.code, n.subcode];
    body.extend_from_slice(&n.data);
    BgpNotificationMessage::parse(&mut SliceReader::new(&body)).map_err(|e| WireError::Encode {
        what: "NOTIFICATION",
        detail: e.to_string(),
    })
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

fn to_netgauze(msg: &Message) -> Result<BgpMessage, WireError> {
    Ok(match msg {
        Message::Open(open) => BgpMessage::Open(open_to_netgauze(open)),
        Message::Update(update) => BgpMessage::Update(update_to_netgauze(update)?),
        Message::EndOfRib(Family::Ipv4) => {
            BgpMessage::Update(BgpUpdateMessage::new(Vec::new(), Vec::new(), Vec::new()))
        }
        Message::EndOfRib(Family::Ipv6) => BgpMessage::Update(BgpUpdateMessage::new(
            Vec::new(),
            vec![attribute(PathAttributeValue::MpUnreach(
                MpUnreach::Ipv6Unicast { nlri: Box::new([]) },
            ))?],
            Vec::new(),
        )),
        Message::Keepalive => BgpMessage::KeepAlive,
        Message::Notification(n) => BgpMessage::Notification(notification_to_netgauze(n)?),
        Message::RouteRefresh(family) => BgpMessage::RouteRefresh(BgpRouteRefreshMessage::new(
            family.address_type(),
            RouteRefreshSubcode::NormalRequest,
        )),
    })
}

fn open_to_netgauze(open: &Open) -> BgpOpenMessage {
    let caps = &open.capabilities;
    let mut list = Vec::new();
    for family in &caps.families {
        list.push(BgpCapability::MultiProtocolExtensions(
            MultiProtocolExtensionsCapability::new(family.address_type()),
        ));
    }
    if caps.route_refresh {
        list.push(BgpCapability::RouteRefresh);
    }
    if let Some(gr) = &caps.graceful_restart {
        list.push(BgpCapability::GracefulRestartCapability(
            GracefulRestartCapability::new(
                gr.restarting,
                false,
                gr.restart_time,
                gr.families
                    .iter()
                    .map(|f| GracefulRestartAddressFamily::new(gr.forwarding, f.address_type()))
                    .collect::<Vec<_>>(),
            ),
        ));
    }
    if let Some(asn) = caps.four_octet_as {
        list.push(BgpCapability::FourOctetAs(FourOctetAsCapability::new(asn)));
    }
    let my_as = u16::try_from(open.asn).unwrap_or(AS_TRANS);
    // One capability per parameter, as FRR, BIRD and GoBGP do.
    let params: Vec<_> = list
        .into_iter()
        .map(|c| BgpOpenMessageParameter::new_capabilities([c]))
        .collect();
    BgpOpenMessage::new(my_as, open.hold_time, open.router_id, params)
}

fn attribute(value: PathAttributeValue) -> Result<PathAttribute, WireError> {
    let (optional, transitive) = match &value {
        PathAttributeValue::Origin(_)
        | PathAttributeValue::AsPath(_)
        | PathAttributeValue::NextHop(_)
        | PathAttributeValue::LocalPreference(_) => (false, true),
        PathAttributeValue::MultiExitDiscriminator(_)
        | PathAttributeValue::MpReach(_)
        | PathAttributeValue::MpUnreach(_) => (true, false),
        _ => (true, true),
    };
    let extended = matches!(
        value,
        PathAttributeValue::MpReach(_)
            | PathAttributeValue::MpUnreach(_)
            | PathAttributeValue::Communities(_)
            | PathAttributeValue::LargeCommunities(_)
    );
    PathAttribute::from(optional, transitive, false, extended, value).map_err(|(_, e)| {
        WireError::Encode {
            what: "path attribute",
            detail: format!("{e:?}"),
        }
    })
}

fn v4_nlri(nets: &[Ipv4Net]) -> Result<Vec<Ipv4UnicastAddress>, WireError> {
    nets.iter()
        .map(|n| {
            Ipv4Unicast::from_net(*n)
                .map(Ipv4UnicastAddress::new_no_path_id)
                .map_err(|e| WireError::Encode {
                    what: "IPv4 NLRI",
                    detail: format!("{n}: {e:?}"),
                })
        })
        .collect()
}

fn v6_nlri(nets: &[Ipv6Net]) -> Result<Vec<Ipv6UnicastAddress>, WireError> {
    nets.iter()
        .map(|n| {
            Ipv6Unicast::from_net(*n)
                .map(|u| Ipv6UnicastAddress::new(None, u))
                .map_err(|e| WireError::Encode {
                    what: "IPv6 NLRI",
                    detail: format!("{n}: {e:?}"),
                })
        })
        .collect()
}

fn split(nets: &[IpNet]) -> (Vec<Ipv4Net>, Vec<Ipv6Net>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for net in nets {
        match net {
            IpNet::V4(n) => v4.push(*n),
            IpNet::V6(n) => v6.push(*n),
        }
    }
    (v4, v6)
}

fn update_to_netgauze(update: &Update) -> Result<BgpUpdateMessage, WireError> {
    let (a4, a6) = split(&update.announce);
    let (w4, w6) = split(&update.withdraw);
    let mut attrs = Vec::new();
    if !update.announce.is_empty() {
        let a = &update.attributes;
        attrs.push(attribute(PathAttributeValue::Origin(Origin::IGP))?);
        let segments = if a.as_path.is_empty() {
            Vec::new()
        } else {
            vec![As4PathSegment::new(
                AsPathSegmentType::AsSequence,
                a.as_path.clone(),
            )]
        };
        attrs.push(attribute(PathAttributeValue::AsPath(
            AsPath::As4PathSegments(segments.into()),
        ))?);
        if !a4.is_empty() {
            let Some(IpAddr::V4(nh)) = a.next_hop else {
                return Err(WireError::Encode {
                    what: "UPDATE",
                    detail: "IPv4 NLRI need an IPv4 next hop".into(),
                });
            };
            attrs.push(attribute(PathAttributeValue::NextHop(NextHop::new(nh)))?);
        }
        if let Some(med) = a.med {
            attrs.push(attribute(PathAttributeValue::MultiExitDiscriminator(
                MultiExitDiscriminator::new(med),
            ))?);
        }
        if let Some(lp) = a.local_pref {
            attrs.push(attribute(PathAttributeValue::LocalPreference(
                LocalPreference::new(lp),
            ))?);
        }
        if !a.communities.is_empty() {
            let list: Vec<_> = a
                .communities
                .iter()
                .map(|&(hi, lo)| Community::new((u32::from(hi) << 16) | u32::from(lo)))
                .collect();
            attrs.push(attribute(PathAttributeValue::Communities(
                Communities::new(list),
            ))?);
        }
        if !a.large_communities.is_empty() {
            let list: Vec<_> = a
                .large_communities
                .iter()
                .map(|&(g, l1, l2)| LargeCommunity::new(g, l1, l2))
                .collect();
            attrs.push(attribute(PathAttributeValue::LargeCommunities(
                LargeCommunities::new(list),
            ))?);
        }
        if !a6.is_empty() {
            let Some(IpAddr::V6(nh)) = a.next_hop else {
                return Err(WireError::Encode {
                    what: "UPDATE",
                    detail: "IPv6 NLRI need an IPv6 next hop".into(),
                });
            };
            attrs.push(attribute(PathAttributeValue::MpReach(
                MpReach::Ipv6Unicast {
                    next_hop_global: nh,
                    next_hop_local: None,
                    nlri: v6_nlri(&a6)?.into(),
                },
            ))?);
        }
    }
    if !w6.is_empty() {
        attrs.push(attribute(PathAttributeValue::MpUnreach(
            MpUnreach::Ipv6Unicast {
                nlri: v6_nlri(&w6)?.into(),
            },
        ))?);
    }
    Ok(BgpUpdateMessage::new(v4_nlri(&w4)?, attrs, v4_nlri(&a4)?))
}

/// A host prefix (/32 or /128) for an address.
pub fn host_prefix(addr: IpAddr) -> IpNet {
    IpNet::from(addr)
}

mod rfc7606;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fuzz;
