//! Decoding: netgauze's messages into the small types of [`super`].

use std::{io::Cursor, net::IpAddr};

use ipnet::IpNet;
use netgauze_bgp_pkt::{
    BgpMessage,
    capabilities::BgpCapability,
    notification::BgpNotificationMessage,
    open::BgpOpenMessage,
    path_attribute::{MpReach, MpUnreach, PathAttributeValue},
    update::BgpUpdateMessage,
    wire::deserializer::{BgpMessageParsingError, BgpParsingContext},
};
use netgauze_parse_utils::{WritablePdu, reader::SliceReader, traits::ParseFromWithOneInput};

use super::{
    Attributes, Capabilities, Family, GracefulRestart, Message, Notification, Open, Update,
    WireError, code,
};

/// Whether netgauze parses `buf` (used on UPDATEs rebuilt by [`rfc7606`]).
pub(super) fn parses(buf: &[u8]) -> bool {
    let mut ctx = BgpParsingContext::default();
    BgpMessage::parse(&mut SliceReader::new(buf), &mut ctx).is_ok()
}

pub(super) fn malformed(e: BgpMessageParsingError) -> WireError {
    let detail = e.to_string();
    let notification = notification_from_netgauze(&BgpNotificationMessage::from(e));
    WireError::Malformed {
        notification,
        detail,
    }
}

pub(super) fn from_netgauze(msg: BgpMessage) -> Result<Message, WireError> {
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
