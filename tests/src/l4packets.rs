//! L4 frames for the steering fixtures and fuzz: IPv4/IPv6 with TCP, UDP or SCTP, fragments,
//! IPv6 extension headers and ICMP errors, written field by field with checksums computed
//! here from scratch (RFC 1071 sums, a bitwise CRC32c), plus [`verify`], which recomputes
//! every checksum of a frame the program produced. Field checks use etherparse as an
//! independent parser.

use std::net::IpAddr;

use crate::packets::{ETH_P_IPV4, ETH_P_IPV6, Mac, ethernet};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;
/// TCP flags: a connection request, and a segment of an established connection.
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
const IPV6_DSTOPTS: u8 = 60;
const IPV6_FRAGMENT: u8 = 44;

/// One packet's addresses and ports.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// Where a packet sits in a fragmented datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frag {
    Whole,
    /// Offset 0, more fragments follow.
    First(u32),
    /// Offset `1` (8 bytes), no L4 header.
    Later(u32),
}

/// Knobs for [`Flow::frame_with`].
#[derive(Clone, Copy, Debug)]
pub struct Shape<'a> {
    pub payload: &'a [u8],
    pub frag: Frag,
    /// IPv6 only: a destination options header before the upper layer.
    pub dest_opts: bool,
    /// IPv6 fragments only: a destination options header in the fragmentable part (after the
    /// Fragment header). The first fragment carries it; a later fragment only names it, as
    /// its Fragment header's next header.
    pub frag_dest_opts: bool,
    /// UDP only: send checksum 0 (IPv4: "no checksum").
    pub udp_zero_checksum: bool,
    /// TCP only: the flags byte.
    pub tcp_flags: u8,
    /// IPv4 only: Don't Fragment set (what Linux sends for TCP and path-MTU-discovering UDP).
    pub dont_fragment: bool,
}

impl Default for Shape<'_> {
    fn default() -> Self {
        Self {
            payload: b"hello vipwire",
            frag: Frag::Whole,
            dest_opts: false,
            frag_dest_opts: false,
            udp_zero_checksum: false,
            tcp_flags: TCP_SYN,
            dont_fragment: false,
        }
    }
}

pub const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0, 0x0c];
pub const NODE_MAC: Mac = [0x02, 0, 0, 0, 0, 0x0d];

/// An address literal.
pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

/// A flow between two address literals.
pub fn flow(src: &str, dst: &str, sport: u16, dport: u16, proto: u8) -> Flow {
    Flow {
        src: ip(src),
        dst: ip(dst),
        sport,
        dport,
        proto,
    }
}

impl Flow {
    /// The flow's first packet (for TCP a SYN).
    pub fn frame(&self) -> Vec<u8> {
        self.frame_with(Shape::default())
    }

    /// A later packet of the flow (for TCP an ACK; other protocols as [`Flow::frame`]).
    pub fn later_frame(&self) -> Vec<u8> {
        self.frame_with(Shape {
            tcp_flags: TCP_ACK,
            ..Shape::default()
        })
    }

    pub fn frame_with(&self, shape: Shape<'_>) -> Vec<u8> {
        let segment = match shape.frag {
            Frag::Later(_) => shape.payload.to_vec(),
            _ => self.segment(&shape),
        };
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let (id, frag) = match shape.frag {
                    Frag::Whole => (0x1234, if shape.dont_fragment { 0x4000 } else { 0 }),
                    Frag::First(id) => (id as u16, 0x2000),
                    Frag::Later(id) => (id as u16, 1),
                };
                let ip = ipv4_header(src.octets(), dst.octets(), self.proto, id, frag, &segment);
                ethernet(NODE_MAC, CLIENT_MAC, ETH_P_IPV4, &[ip, segment].concat())
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let mut ext = Vec::new();
                let mut next = self.proto;
                if shape.frag_dest_opts && shape.frag != Frag::Whole {
                    if let Frag::First(_) = shape.frag {
                        ext = vec![next, 0, 1, 4, 0, 0, 0, 0];
                    }
                    next = IPV6_DSTOPTS;
                }
                if let Frag::First(id) | Frag::Later(id) = shape.frag {
                    let off_flags: u16 = if matches!(shape.frag, Frag::First(_)) {
                        1
                    } else {
                        1 << 3
                    };
                    let mut frag = vec![next, 0];
                    frag.extend_from_slice(&off_flags.to_be_bytes());
                    frag.extend_from_slice(&id.to_be_bytes());
                    ext = [frag, ext].concat();
                    next = IPV6_FRAGMENT;
                }
                if shape.dest_opts {
                    // PadN filling 8 bytes.
                    let opts = vec![next, 0, 1, 4, 0, 0, 0, 0];
                    ext = [opts, ext].concat();
                    next = IPV6_DSTOPTS;
                }
                let payload = [ext, segment].concat();
                let mut ip = vec![0x60, 0, 0, 0];
                ip.extend_from_slice(&(payload.len() as u16).to_be_bytes());
                ip.push(next);
                ip.push(64);
                ip.extend_from_slice(&src.octets());
                ip.extend_from_slice(&dst.octets());
                ethernet(NODE_MAC, CLIENT_MAC, ETH_P_IPV6, &[ip, payload].concat())
            }
            _ => panic!("mixed address families in {self:?}"),
        }
    }

    /// The upper-layer segment with a correct checksum.
    pub fn segment(&self, shape: &Shape<'_>) -> Vec<u8> {
        let (payload, udp_zero_checksum) = (shape.payload, shape.udp_zero_checksum);
        let mut seg = Vec::new();
        seg.extend_from_slice(&self.sport.to_be_bytes());
        seg.extend_from_slice(&self.dport.to_be_bytes());
        match self.proto {
            TCP => {
                seg.extend_from_slice(&1u32.to_be_bytes()); // seq
                seg.extend_from_slice(&0u32.to_be_bytes()); // ack
                seg.extend_from_slice(&[0x50, shape.tcp_flags, 0xfa, 0xf0, 0, 0, 0, 0]);
                seg.extend_from_slice(payload);
                let sum = l4_checksum(self.src, self.dst, TCP, &seg);
                seg[16..18].copy_from_slice(&sum.to_be_bytes());
            }
            UDP => {
                seg.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                seg.extend_from_slice(&[0, 0]);
                seg.extend_from_slice(payload);
                if !udp_zero_checksum {
                    let mut sum = l4_checksum(self.src, self.dst, UDP, &seg);
                    if sum == 0 {
                        sum = 0xffff;
                    }
                    seg[6..8].copy_from_slice(&sum.to_be_bytes());
                }
            }
            SCTP => {
                seg.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // verification tag
                seg.extend_from_slice(&[0; 4]); // checksum, below
                // One DATA chunk padded to 4 bytes.
                let mut chunk = vec![0, 0x03];
                let len = 16 + payload.len();
                chunk.extend_from_slice(&(len as u16).to_be_bytes());
                chunk.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
                chunk.extend_from_slice(payload);
                while chunk.len() % 4 != 0 {
                    chunk.push(0);
                }
                seg.extend_from_slice(&chunk);
                let crc = crc32c(&seg);
                seg[8..12].copy_from_slice(&crc.to_le_bytes());
            }
            other => panic!("no segment builder for protocol {other}"),
        }
        seg
    }
}

fn ipv4_header(src: [u8; 4], dst: [u8; 4], proto: u8, id: u16, frag: u16, seg: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + seg.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&id.to_be_bytes());
    ip.extend_from_slice(&frag.to_be_bytes());
    ip.extend_from_slice(&[64, proto, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let sum = !fold(sum16(&ip));
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip
}

/// An ICMP (IPv4) or ICMPv6 error from `router` to `quoted.src`, quoting `quoted` (our
/// reply: VIP:port → client) as routers do: the IP header and the first `quote_l4` bytes of
/// its segment.
pub fn icmp_error(
    router: IpAddr,
    quoted: &Flow,
    icmp_type: u8,
    code: u8,
    quote_l4: usize,
) -> Vec<u8> {
    let inner = quoted.frame();
    let inner_ip = &inner[14..];
    let ip_len = if quoted.src.is_ipv4() { 20 } else { 40 };
    let quote = &inner_ip[..(ip_len + quote_l4).min(inner_ip.len())];
    let mut icmp = vec![icmp_type, code, 0, 0, 0, 0, 0x05, 0xdc]; // MTU 1500 for frag-needed / PTB
    icmp.extend_from_slice(quote);
    match (router, quoted.src) {
        (IpAddr::V4(r), IpAddr::V4(to)) => {
            let sum = !fold(sum16(&icmp));
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            let ip = ipv4_header(r.octets(), to.octets(), ICMP, 7, 0, &icmp);
            ethernet(NODE_MAC, CLIENT_MAC, ETH_P_IPV4, &[ip, icmp].concat())
        }
        (IpAddr::V6(r), IpAddr::V6(to)) => {
            let sum = l4_checksum(router, quoted.src, ICMPV6, &icmp);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
            ip.extend_from_slice(&[ICMPV6, 64]);
            ip.extend_from_slice(&r.octets());
            ip.extend_from_slice(&to.octets());
            ethernet(NODE_MAC, CLIENT_MAC, ETH_P_IPV6, &[ip, icmp].concat())
        }
        _ => panic!("mixed families"),
    }
}

/// Sum of big-endian 16-bit words (odd tail padded with zero), unfolded.
pub fn sum16(bytes: &[u8]) -> u64 {
    bytes
        .chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u64 {
    let addrs = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => [s.octets().to_vec(), d.octets().to_vec()].concat(),
        (IpAddr::V6(s), IpAddr::V6(d)) => [s.octets().to_vec(), d.octets().to_vec()].concat(),
        _ => panic!("mixed families"),
    };
    sum16(&addrs) + u64::from(proto) + len as u64
}

/// The Internet checksum of `segment` (its checksum field zero) under the pseudo-header.
pub fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, segment: &[u8]) -> u16 {
    !fold(pseudo(src, dst, proto, segment.len()) + sum16(segment))
}

/// True when `segment` (checksum field included) sums to all ones under its pseudo-header.
pub fn l4_checksum_ok(src: IpAddr, dst: IpAddr, proto: u8, segment: &[u8]) -> bool {
    fold(pseudo(src, dst, proto, segment.len()) + sum16(segment)) == 0xffff
}

/// CRC32c (Castagnoli, reflected, init and xorout all ones), bit by bit: independent of the
/// BPF program's table-and-matrix version.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The parts of a steered frame a fixture checks.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// Offset of the upper layer in the frame (after extension headers).
    pub l4: usize,
}

/// Parses `frame` with etherparse (addresses, protocol, where the upper layer starts) and
/// recomputes every checksum: the IPv4 header's, TCP/UDP over the pseudo-header (UDP/IPv4 0
/// allowed), SCTP's CRC32c, ICMP/ICMPv6. Panics, naming the field, when one is wrong.
/// Fragments: only the IP header is checked (the segment is incomplete).
pub fn verify(frame: &[u8]) -> Parsed {
    check(frame).unwrap_or_else(|err| panic!("{err}"))
}

/// [`verify`] without panicking: the first problem found.
pub fn check(frame: &[u8]) -> Result<Parsed, String> {
    let sliced = etherparse::SlicedPacket::from_ethernet(frame)
        .map_err(|err| format!("etherparse rejects the frame: {err}"))?;
    let (src, dst, proto, fragmented, payload_len) = match &sliced.net {
        Some(etherparse::NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            if fold(sum16(h.slice())) != 0xffff {
                return Err("IPv4 header checksum".into());
            }
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                ip.payload().ip_number.0,
                h.is_fragmenting_payload(),
                ip.payload().payload.len(),
            )
        }
        Some(etherparse::NetSlice::Ipv6(ip)) => {
            let h = ip.header();
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                ip.payload().ip_number.0,
                ip.is_payload_fragmented(),
                ip.payload().payload.len(),
            )
        }
        other => return Err(format!("not IP: {other:?}")),
    };
    let l4 = frame.len() - payload_len;
    let segment = &frame[l4..];
    let ok = fragmented
        || match proto {
            TCP => segment.len() >= 20 && l4_checksum_ok(src, dst, TCP, segment),
            UDP => {
                segment.len() >= 8
                    && ((segment[6..8] == [0, 0] && src.is_ipv4())
                        || l4_checksum_ok(src, dst, UDP, segment))
            }
            SCTP => {
                segment.len() >= 12 && {
                    let mut zeroed = segment.to_vec();
                    zeroed[8..12].fill(0);
                    u32::from_le_bytes([segment[8], segment[9], segment[10], segment[11]])
                        == crc32c(&zeroed)
                }
            }
            ICMP => fold(sum16(segment)) == 0xffff,
            ICMPV6 => l4_checksum_ok(src, dst, ICMPV6, segment),
            _ => true,
        };
    if !ok {
        return Err(format!("protocol {proto} checksum (or a short header)"));
    }
    Ok(Parsed {
        src,
        dst,
        proto,
        l4,
    })
}

/// The (source, destination) ports at the start of an upper-layer segment.
pub fn ports(frame: &[u8], l4: usize) -> (u16, u16) {
    (
        u16::from_be_bytes([frame[l4], frame[l4 + 1]]),
        u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // RFC 3720 B.4 / the CRC catalogue's check value for "123456789".
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn built_frames_verify() {
        for (src, dst) in [
            ("198.51.100.7", "203.0.113.10"),
            ("2001:db8:200::7", "2001:db8:100::10"),
        ] {
            for proto in [TCP, UDP, SCTP] {
                let flow = Flow {
                    src: src.parse().unwrap(),
                    dst: dst.parse().unwrap(),
                    sport: 40000,
                    dport: 80,
                    proto,
                };
                let parsed = verify(&flow.frame());
                assert_eq!(parsed.proto, proto);
                assert_eq!(ports(&flow.frame(), parsed.l4), (40000, 80));
            }
        }
    }
}
