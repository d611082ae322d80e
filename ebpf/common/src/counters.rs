//! Per-CPU counters: one `u64` slot per reason in `vipwire_counters_v1`.
//!
//! The XDP program bumps exactly one slot per packet; the TC programs bump one slot per
//! packet they act on. Readers sum the slots over all CPUs.
//! Reasons are append-only: a new reason takes the next index and grows the map, so the
//! agent must check a pinned map's `max_entries` against [`Reason::COUNT`] before reusing it.

/// Why the XDP program returned the verdict it did. The discriminant is the counter's index.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not a request vipwire answers (other traffic, ARP replies, gratuitous ARP, other
    /// ICMPv6, non-Ethernet/IPv4 ARP, VLAN-tagged frames): `XDP_PASS`, untouched.
    Passed = 0,
    /// ARP request for an owned (VIP, ingress ifindex): answered with `XDP_TX`.
    AnsweredArp = 1,
    /// Neighbor Solicitation for an owned (VIP6, ingress ifindex): answered with `XDP_TX`.
    AnsweredNdp = 2,
    /// A well-formed request that is not for an owned (VIP, ingress ifindex), arrived on an
    /// interface missing from `vipwire_ifaces_v1`, or was addressed to another MAC.
    NotOwned = 3,
    /// An owned request left to the kernel because the agent's heartbeat is stale or was
    /// never written.
    StaleHeartbeat = 4,
    /// Claims to be an ARP request or a Neighbor Solicitation but fails a length, field,
    /// option or checksum check.
    Malformed = 5,
    /// An owned request left to the kernel because the agent wrote a contract version this
    /// program was not built for.
    ContractMismatch = 6,
    /// A Neighbor Solicitation of a shape the program does not rewrite (more than
    /// [`crate::l2::NS_MAX_OPTIONS_LEN`] bytes of options). XDP: the first fragment of an
    /// SCTP datagram whose port the frontend rewrites (the CRC32c covers the whole
    /// datagram): passed, nothing recorded, so its later fragments go to the kernel too.
    Unsupported = 7,
    /// XDP: a packet for a frontend, DNATed to a local backend and handed to TC (XDP_PASS
    /// with an `XdpMeta`).
    Steered = 8,
    /// XDP: a packet for a frontend from a source outside its `loadBalancerSourceRanges`:
    /// `XDP_DROP`.
    SourceDenied = 9,
    /// XDP: a new flow for a frontend without an active local backend, or a non-first
    /// fragment of a datagram whose first fragment was not seen or not steered: left to the
    /// kernel.
    NoBackend = 10,
    /// TC (uplink): a steered packet redirected into its pod.
    Delivered = 11,
    /// TC (uplink): a steered packet whose backend or route is gone: left to the kernel.
    Undeliverable = 12,
    /// TC (pod veth): a reply rewritten to come from VIP:port and sent towards the client.
    ReplyNat = 13,
    /// XDP: an ICMP/ICMPv6 error about a steered flow, rewritten for its backend.
    IcmpError = 14,
}

impl Reason {
    /// Every reason, in index order (for readers that print all counters).
    pub const ALL: [Reason; 15] = [
        Reason::Passed,
        Reason::AnsweredArp,
        Reason::AnsweredNdp,
        Reason::NotOwned,
        Reason::StaleHeartbeat,
        Reason::Malformed,
        Reason::ContractMismatch,
        Reason::Unsupported,
        Reason::Steered,
        Reason::SourceDenied,
        Reason::NoBackend,
        Reason::Delivered,
        Reason::Undeliverable,
        Reason::ReplyNat,
        Reason::IcmpError,
    ];

    /// Number of counter slots; the map's `max_entries`.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Stable name used in `vipwire status --json` and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Passed => "passed",
            Reason::AnsweredArp => "answered_arp",
            Reason::AnsweredNdp => "answered_ndp",
            Reason::NotOwned => "not_owned",
            Reason::StaleHeartbeat => "stale_heartbeat",
            Reason::Malformed => "malformed",
            Reason::ContractMismatch => "contract_mismatch",
            Reason::Unsupported => "unsupported",
            Reason::Steered => "steered",
            Reason::SourceDenied => "source_denied",
            Reason::NoBackend => "no_backend",
            Reason::Delivered => "delivered",
            Reason::Undeliverable => "undeliverable",
            Reason::ReplyNat => "reply_nat",
            Reason::IcmpError => "icmp_error",
        }
    }

    /// The reason stored at counter index `index`, if any.
    pub const fn from_index(index: u32) -> Option<Reason> {
        if index < Self::COUNT {
            Some(Self::ALL[index as usize])
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Reason;

    #[test]
    fn discriminants_are_indexes() {
        for (index, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index, "{}", reason.name());
            assert_eq!(Reason::from_index(index as u32), Some(*reason));
        }
        assert_eq!(Reason::from_index(Reason::COUNT), None);
    }

    #[test]
    fn names_are_unique_snake_case() {
        for (i, a) in Reason::ALL.iter().enumerate() {
            let name = a.name();
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
            for b in &Reason::ALL[i + 1..] {
                assert_ne!(name, b.name());
            }
        }
    }
}
