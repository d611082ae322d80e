//! The one packet builder of the test suite: ARP, IPv6 Neighbor Discovery, IPv4 TCP and
//! VLAN-tagged Ethernet frames, as bytes. BPF fixtures, the fuzz test and the netns labs all
//! build their frames here.
//!
//! ARP and NDP are written field by field from the RFCs (not with etherparse), so that tests
//! can check the BPF program's output against etherparse as an independent parser.

use std::net::{Ipv4Addr, Ipv6Addr};

pub type Mac = [u8; 6];

pub const BROADCAST: Mac = [0xff; 6];
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;

pub const IPPROTO_ICMPV6: u8 = 58;
pub const ICMPV6_NS: u8 = 135;
pub const ICMPV6_NA: u8 = 136;
pub const ND_OPT_SOURCE_LL: u8 = 1;
pub const ND_OPT_TARGET_LL: u8 = 2;
pub const ND_OPT_NONCE: u8 = 14;
pub const NA_FLAG_ROUTER: u8 = 0x80;
pub const NA_FLAG_SOLICITED: u8 = 0x40;
pub const NA_FLAG_OVERRIDE: u8 = 0x20;

/// Smallest Ethernet frame without FCS; shorter frames are padded on the wire.
pub const ETH_MIN_LEN: usize = 60;

/// An Ethernet II header followed by `payload`.
pub fn ethernet(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// `frame` with an 802.1Q (or 802.1ad, by `tpid`) tag for `vid` after the MAC addresses.
pub fn vlan_tagged(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut tagged = frame[..12].to_vec();
    tagged.extend_from_slice(&tpid.to_be_bytes());
    tagged.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    tagged.extend_from_slice(&frame[12..]);
    tagged
}

/// `frame` zero-padded to the Ethernet minimum, as it arrives from a real NIC.
pub fn padded(frame: &[u8]) -> Vec<u8> {
    let mut frame = frame.to_vec();
    if frame.len() < ETH_MIN_LEN {
        frame.resize(ETH_MIN_LEN, 0);
    }
    frame
}

/// An ARP packet in its Ethernet frame (RFC 826). Every field is public so that tests can
/// build the odd ones (wrong hardware type, lengths, operations).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arp {
    pub eth_dst: Mac,
    pub eth_src: Mac,
    pub htype: u16,
    pub ptype: u16,
    pub hlen: u8,
    pub plen: u8,
    pub op: u16,
    pub sha: Mac,
    pub spa: Ipv4Addr,
    pub tha: Mac,
    pub tpa: Ipv4Addr,
}

impl Arp {
    /// Who has `tpa`? Tell `spa` (broadcast).
    pub fn request(sha: Mac, spa: Ipv4Addr, tpa: Ipv4Addr) -> Self {
        Self {
            eth_dst: BROADCAST,
            eth_src: sha,
            htype: 1,
            ptype: ETH_P_IPV4,
            hlen: 6,
            plen: 4,
            op: ARP_REQUEST,
            sha,
            spa,
            tha: [0; 6],
            tpa,
        }
    }

    /// `spa` is at `sha`, sent to `tha`.
    pub fn reply(sha: Mac, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr) -> Self {
        Self {
            eth_dst: tha,
            op: ARP_REPLY,
            tha,
            ..Self::request(sha, spa, tpa)
        }
    }

    /// A gratuitous ARP request announcing `ip` at `sha` (spa == tpa).
    pub fn gratuitous(sha: Mac, ip: Ipv4Addr) -> Self {
        Self::request(sha, ip, ip)
    }

    /// An RFC 5227 probe for `tpa`: sender address 0.0.0.0.
    pub fn probe(sha: Mac, tpa: Ipv4Addr) -> Self {
        Self::request(sha, Ipv4Addr::UNSPECIFIED, tpa)
    }

    /// The reply a host owning `self.tpa` at `mac` sends to this request.
    pub fn answered_by(&self, mac: Mac) -> Self {
        Self {
            eth_dst: self.sha,
            eth_src: mac,
            op: ARP_REPLY,
            sha: mac,
            spa: self.tpa,
            tha: self.sha,
            tpa: self.spa,
            ..self.clone()
        }
    }

    /// The 42-byte frame (pad it with [`padded`] for the wire shape).
    pub fn build(&self) -> Vec<u8> {
        let mut arp = Vec::with_capacity(28);
        arp.extend_from_slice(&self.htype.to_be_bytes());
        arp.extend_from_slice(&self.ptype.to_be_bytes());
        arp.push(self.hlen);
        arp.push(self.plen);
        arp.extend_from_slice(&self.op.to_be_bytes());
        arp.extend_from_slice(&self.sha);
        arp.extend_from_slice(&self.spa.octets());
        arp.extend_from_slice(&self.tha);
        arp.extend_from_slice(&self.tpa.octets());
        ethernet(self.eth_dst, self.eth_src, ETH_P_ARP, &arp)
    }
}

/// A Neighbor Discovery option: type, length in units of 8 bytes, body (zero-padded to the
/// length on build).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NdOption {
    pub kind: u8,
    /// Length in 8-byte units; `None` derives it from the body.
    pub units: Option<u8>,
    pub body: Vec<u8>,
}

impl NdOption {
    pub fn source_ll(mac: Mac) -> Self {
        Self::new(ND_OPT_SOURCE_LL, &mac)
    }

    pub fn target_ll(mac: Mac) -> Self {
        Self::new(ND_OPT_TARGET_LL, &mac)
    }

    /// RFC 7527 nonce option (enhanced DAD), six nonce bytes.
    pub fn nonce(nonce: [u8; 6]) -> Self {
        Self::new(ND_OPT_NONCE, &nonce)
    }

    pub fn new(kind: u8, body: &[u8]) -> Self {
        Self {
            kind,
            units: None,
            body: body.to_vec(),
        }
    }

    fn build(&self, out: &mut Vec<u8>) {
        let units = self
            .units
            .unwrap_or(((self.body.len() + 2).div_ceil(8)) as u8);
        let start = out.len();
        out.push(self.kind);
        out.push(units);
        out.extend_from_slice(&self.body);
        let len = (usize::from(units) * 8).max(out.len() - start);
        out.resize(start + len.next_multiple_of(8), 0);
    }
}

/// An ICMPv6 Neighbor Solicitation or Advertisement in IPv6 in Ethernet (RFC 4861).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ndp {
    pub eth_dst: Mac,
    pub eth_src: Mac,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    pub icmp_type: u8,
    pub code: u8,
    /// NA: R/S/O flags; NS: 0 (the first reserved byte).
    pub flags: u8,
    pub target: Ipv6Addr,
    pub options: Vec<NdOption>,
    /// `None`: the correct checksum.
    pub checksum: Option<u16>,
}

impl Ndp {
    /// Address resolution: an NS for `target` to its solicited-node multicast address, with a
    /// source link-layer address option.
    pub fn solicitation(eth_src: Mac, src: Ipv6Addr, target: Ipv6Addr) -> Self {
        let dst = solicited_node(target);
        Self {
            eth_dst: multicast_mac(dst),
            eth_src,
            src,
            dst,
            hop_limit: 255,
            icmp_type: ICMPV6_NS,
            code: 0,
            flags: 0,
            target,
            options: vec![NdOption::source_ll(eth_src)],
            checksum: None,
        }
    }

    /// Reachability confirmation: an NS unicast to `target` at `eth_dst`, no options.
    pub fn unicast_solicitation(
        eth_src: Mac,
        eth_dst: Mac,
        src: Ipv6Addr,
        target: Ipv6Addr,
    ) -> Self {
        Self {
            eth_dst,
            dst: target,
            options: Vec::new(),
            ..Self::solicitation(eth_src, src, target)
        }
    }

    /// Duplicate address detection: an NS from :: with no options.
    pub fn dad_probe(eth_src: Mac, target: Ipv6Addr) -> Self {
        Self {
            options: Vec::new(),
            ..Self::solicitation(eth_src, Ipv6Addr::UNSPECIFIED, target)
        }
    }

    /// An NA for `target` with the given flags and a target link-layer address option.
    pub fn advertisement(
        (eth_src, eth_dst): (Mac, Mac),
        (src, dst): (Ipv6Addr, Ipv6Addr),
        flags: u8,
        target: Ipv6Addr,
        target_mac: Mac,
    ) -> Self {
        Self {
            eth_dst,
            eth_src,
            src,
            dst,
            hop_limit: 255,
            icmp_type: ICMPV6_NA,
            code: 0,
            flags,
            target,
            options: vec![NdOption::target_ll(target_mac)],
            checksum: None,
        }
    }

    /// The NA a host owning `self.target` at `mac` answers this NS with: to the sender, or
    /// to all nodes with S=0 when the sender is :: (RFC 4861 7.2.4).
    pub fn answered_by(&self, mac: Mac) -> Self {
        let (eth_dst, dst, flags) = if self.src.is_unspecified() {
            (
                multicast_mac(Ipv6Addr::from([0xff02, 0, 0, 0, 0, 0, 0, 1])),
                Ipv6Addr::from([0xff02, 0, 0, 0, 0, 0, 0, 1]),
                NA_FLAG_OVERRIDE,
            )
        } else {
            (self.eth_src, self.src, NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE)
        };
        Self::advertisement((mac, eth_dst), (self.target, dst), flags, self.target, mac)
    }

    /// The ICMPv6 message (checksum included).
    pub fn icmp(&self) -> Vec<u8> {
        let mut icmp = vec![self.icmp_type, self.code, 0, 0, self.flags, 0, 0, 0];
        icmp.extend_from_slice(&self.target.octets());
        for option in &self.options {
            option.build(&mut icmp);
        }
        let checksum = self
            .checksum
            .unwrap_or_else(|| icmpv6_checksum(self.src, self.dst, &icmp));
        icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
        icmp
    }

    pub fn build(&self) -> Vec<u8> {
        let ip = ipv6(
            self.src,
            self.dst,
            IPPROTO_ICMPV6,
            self.hop_limit,
            &self.icmp(),
        );
        ethernet(self.eth_dst, self.eth_src, ETH_P_IPV6, &ip)
    }
}

/// An IPv6 header (no extension headers) followed by `payload`.
pub fn ipv6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    hop_limit: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut ip = Vec::with_capacity(40 + payload.len());
    ip.extend_from_slice(&[0x60, 0, 0, 0]);
    ip.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    ip.push(next_header);
    ip.push(hop_limit);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    ip.extend_from_slice(payload);
    ip
}

/// The ICMPv6 checksum of `icmp` (its checksum field taken as zero), RFC 4443 2.3.
pub fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40 + icmp.len() + 1);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, IPPROTO_ICMPV6]);
    pseudo.extend_from_slice(&icmp[..2]);
    pseudo.extend_from_slice(&[0, 0]);
    pseudo.extend_from_slice(&icmp[4..]);
    if pseudo.len() % 2 == 1 {
        pseudo.push(0);
    }
    let mut sum: u32 = pseudo
        .chunks_exact(2)
        .map(|word| u32::from(u16::from_be_bytes([word[0], word[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Rewrites the ICMPv6 checksum of an Ethernet/IPv6/ICMPv6 frame (no extension headers) in
/// place, after a test mutated other bytes. Frames too short for it are left alone.
pub fn fix_icmpv6_checksum(frame: &mut [u8]) {
    if frame.len() < 58 {
        return;
    }
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&frame[22..38]).expect("16 bytes"));
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&frame[38..54]).expect("16 bytes"));
    let checksum = icmpv6_checksum(src, dst, &frame[54..]);
    frame[56..58].copy_from_slice(&checksum.to_be_bytes());
}

/// ff02::1:ffXX:XXXX for the low 24 bits of `addr` (RFC 4291 2.7.1).
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ])
}

/// 33:33 + the low 32 bits of a multicast IPv6 address (RFC 2464 7).
pub fn multicast_mac(addr: Ipv6Addr) -> Mac {
    let o = addr.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// An IPv4 TCP SYN with `payload` in an Ethernet frame (built with etherparse: only used as
/// traffic the program must pass untouched).
pub fn ipv4_tcp(
    (eth_src, eth_dst): (Mac, Mac),
    (src, dst): (Ipv4Addr, Ipv4Addr),
    (sport, dport): (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2(eth_src, eth_dst)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1, 64240)
        .syn();
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut frame, payload)
        .expect("writing a TCP frame to a Vec");
    frame
}

/// Lowercase hex of `bytes`, no separators: frames compared in assertion messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [0x02, 0, 0, 0, 0, 1];

    #[test]
    fn arp_request_parses_with_etherparse() {
        let frame = Arp::request(MAC, [10, 0, 0, 1].into(), [10, 0, 0, 2].into()).build();
        assert_eq!(frame.len(), 42);
        let packet = etherparse::SlicedPacket::from_ethernet(&frame).expect("parses");
        let Some(etherparse::NetSlice::Arp(arp)) = packet.net else {
            panic!("not ARP: {packet:?}");
        };
        let arp = arp.to_packet().try_eth_ipv4().expect("Ethernet/IPv4 ARP");
        assert_eq!(arp.sender_mac, MAC);
        assert_eq!(arp.target_ipv4, [10, 0, 0, 2]);
    }

    #[test]
    fn ns_checksum_agrees_with_etherparse() {
        let target: Ipv6Addr = "2001:db8::10".parse().expect("address");
        for ns in [
            Ndp::solicitation(MAC, "2001:db8::1".parse().expect("address"), target),
            Ndp::dad_probe(MAC, target),
        ] {
            let frame = ns.build();
            let packet = etherparse::SlicedPacket::from_ethernet(&frame).expect("parses");
            let Some(etherparse::TransportSlice::Icmpv6(icmp)) = packet.transport else {
                panic!("not ICMPv6: {packet:?}");
            };
            assert!(icmp.is_checksum_valid(ns.src.octets(), ns.dst.octets()));
        }
    }

    #[test]
    fn nd_option_lengths() {
        let mut out = Vec::new();
        NdOption::source_ll(MAC).build(&mut out);
        assert_eq!(out, [1, 1, 2, 0, 0, 0, 0, 1]);
        out.clear();
        NdOption {
            units: Some(2),
            ..NdOption::nonce([9; 6])
        }
        .build(&mut out);
        assert_eq!(out.len(), 16);
        assert_eq!(out[1], 2);
    }

    #[test]
    fn vlan_tag_goes_after_the_macs() {
        let frame = ethernet(BROADCAST, MAC, ETH_P_ARP, &[1, 2]);
        let tagged = vlan_tagged(&frame, ETH_P_8021Q, 7);
        assert_eq!(&tagged[12..18], &[0x81, 0x00, 0, 7, 0x08, 0x06]);
        assert_eq!(&tagged[18..], &[1, 2]);
    }
}
