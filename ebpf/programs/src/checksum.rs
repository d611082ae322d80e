//! The Internet checksum (RFC 1071) over fixed-size pieces, for ICMPv6.
//!
//! Sums are kept in a `u32`: an NS or NA is at most a few dozen 16-bit words, far from
//! overflowing before the final fold.

/// Adds the big-endian 16-bit words of `bytes` (an even number of them) to `sum`.
#[inline(always)]
pub fn add<const N: usize>(mut sum: u32, bytes: &[u8; N]) -> u32 {
    const { assert!(N.is_multiple_of(2)) };
    let mut i = 0;
    while i < N {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

/// Adds one 16-bit word.
#[inline(always)]
pub fn add_word(sum: u32, word: u16) -> u32 {
    sum + u32::from(word)
}

/// Folds the carries back in: the one's-complement sum of everything added.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    // Two folds bring any u32 below 0x1ffff and then to at most 0xffff; no loop for the
    // verifier to bound.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The IPv6 pseudo-header (RFC 8200 8.1) for an upper-layer packet of `len` bytes.
#[inline(always)]
pub fn pseudo_header(src: &[u8; 16], dst: &[u8; 16], len: u16, next_header: u8) -> u32 {
    let sum = add(add(0, src), dst);
    add_word(add_word(sum, len), u16::from(next_header))
}
