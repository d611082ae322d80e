//! Encoding: the small types of [`super`] into netgauze's messages.

use std::net::IpAddr;

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
};
use netgauze_parse_utils::{reader::SliceReader, traits::ParseFrom};

use super::{AS_TRANS, Family, Message, Notification, Open, Update, WireError};

/// Netgauze's NOTIFICATION from ours, through its own parser.
fn notification_to_netgauze(n: &Notification) -> Result<BgpNotificationMessage, WireError> {
    let mut body = vec![n.code, n.subcode];
    body.extend_from_slice(&n.data);
    BgpNotificationMessage::parse(&mut SliceReader::new(&body)).map_err(|e| WireError::Encode {
        what: "NOTIFICATION",
        detail: e.to_string(),
    })
}

pub(super) fn to_netgauze(msg: &Message) -> Result<BgpMessage, WireError> {
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
