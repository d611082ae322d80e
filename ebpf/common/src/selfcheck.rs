//! The attach-time self-check: after loading, the agent runs the uplink program once through
//! `BPF_PROG_RUN` with this frame as if it came in on `lo`. The program logs one line (aya-log,
//! level info) naming itself and its contract version and passes the frame; the agent checks
//! the verdict. Real traffic never matches: XDP is never attached to `lo`.

/// IEEE 802 Local Experimental EtherType 1: never used by real protocols on a wire.
pub const ETHERTYPE: u16 = 0x88b5;

/// Payload right after the Ethernet header.
pub const MAGIC: [u8; 8] = *b"vipwire!";

/// `lo`'s ifindex in every network namespace.
pub const INGRESS_IFINDEX: u32 = 1;

/// The complete self-check frame (Ethernet header with zero MACs, then [`MAGIC`]).
pub const FRAME: [u8; 22] = {
    let mut frame = [0u8; 22];
    let ethertype = ETHERTYPE.to_be_bytes();
    frame[12] = ethertype[0];
    frame[13] = ethertype[1];
    let mut i = 0;
    while i < MAGIC.len() {
        frame[14 + i] = MAGIC[i];
        i += 1;
    }
    frame
};
