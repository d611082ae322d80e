//! Incremental Internet checksum updates (RFC 1624, eqn. 3): `HC' = ~(~HC + ~m + m')`,
//! summed over every word that changed. Words of 32 bits are summed where the field allows
//! (one's-complement sums fold the same modulo 0xffff), which halves the work and the
//! registers the BPF program needs for addresses.

/// An accumulated change to a one's-complement sum.
#[derive(Clone, Copy)]
pub struct Delta(u64);

impl Delta {
    #[inline(always)]
    pub const fn new() -> Self {
        Self(0)
    }

    /// Records that the `N` bytes `old` (at an even offset) became `new`.
    #[inline(always)]
    pub fn replace<const N: usize>(mut self, old: &[u8; N], new: &[u8; N]) -> Self {
        const { assert!(N.is_multiple_of(2)) };
        let mut i = 0;
        while i + 4 <= N {
            let o = u32::from_be_bytes([old[i], old[i + 1], old[i + 2], old[i + 3]]);
            let n = u32::from_be_bytes([new[i], new[i + 1], new[i + 2], new[i + 3]]);
            self.0 += u64::from(!o) + u64::from(n);
            i += 4;
        }
        if i < N {
            let o = u16::from_be_bytes([old[i], old[i + 1]]);
            let n = u16::from_be_bytes([new[i], new[i + 1]]);
            self.0 += u64::from(!o) + u64::from(n);
        }
        self
    }

    /// Like [`Delta::replace`], reading both sides in place (a packet field and a map value):
    /// each word is loaded and summed at once instead of copying both arrays first, which
    /// spills a 16-byte address to the BPF stack byte by byte.
    #[inline(always)]
    pub fn replace_in_place<const N: usize>(
        mut self,
        old: *const [u8; N],
        new: *const [u8; N],
    ) -> Self {
        const { assert!(N.is_multiple_of(2)) };
        let (old, new) = (old.cast::<u8>(), new.cast::<u8>());
        let mut i = 0;
        while i < N {
            // SAFETY: the caller passes pointers to whole N-byte arrays; i + 1 < N.
            // Volatile: otherwise LLVM hoists all the byte loads and spills them.
            let (o, n) = unsafe {
                (
                    u16::from_be_bytes(core::ptr::read_volatile(old.add(i).cast::<[u8; 2]>())),
                    u16::from_be_bytes(core::ptr::read_volatile(new.add(i).cast::<[u8; 2]>())),
                )
            };
            self.0 += u64::from(!o) + u64::from(n);
            i += 2;
        }
        self
    }

    /// Records that a 32-bit word became `new`, both as loaded from memory, for
    /// [`Delta::apply_native`]. A one's-complement sum of little-endian words is the byte swap
    /// of the same sum of big-endian ones (RFC 1071, 2.B), so whole words need no byte swaps.
    #[inline(always)]
    pub fn replace_native32(mut self, old: u64, new: u64) -> Self {
        self.0 += (!old & 0xffff_ffff) + new;
        self
    }

    /// Like [`Delta::replace_native32`], for a 16-bit field.
    #[inline(always)]
    pub fn replace_native16(mut self, old: u64, new: u64) -> Self {
        self.0 += (!old & 0xffff) + new;
        self
    }

    /// The checksum field `old`, as loaded from memory, after the changes recorded with the
    /// `*_native` methods; to be stored as it is.
    #[inline(always)]
    pub fn apply_native(self, old: u16) -> u16 {
        // One fold of the whole sum: carries may wait (RFC 1071, 2.C), and a few dozen
        // 32-bit terms cannot overflow the accumulator.
        !fold(u64::from(!old) + self.0)
    }

    /// Adds another delta (both describe changes to the same checksummed data).
    #[inline(always)]
    pub fn plus(self, other: Delta) -> Self {
        Self(self.0 + other.0)
    }

    /// The checksum field `old` (as on the wire) after the recorded changes.
    #[inline(always)]
    pub fn apply(self, old: [u8; 2]) -> [u8; 2] {
        self.apply_native(u16::from_be_bytes(old)).to_be_bytes()
    }

    /// Like [`Delta::apply`], for a UDP checksum: 0 means "no checksum" and stays 0, and a
    /// computed 0 is sent as 0xffff (RFC 768).
    #[inline(always)]
    pub fn apply_udp(self, old: [u8; 2]) -> [u8; 2] {
        if old == [0, 0] {
            return old;
        }
        let new = self.apply(old);
        if new == [0, 0] { [0xff, 0xff] } else { new }
    }
}

/// The one's-complement sum of a 64-bit accumulator, folded to 16 bits. For a sum below
/// 2^48 (a [`Delta`] holds a few dozen 32-bit terms): one 32-bit fold leaves less than 2^33,
/// and three 16-bit folds then less than 0x30000, at most 0x10001 and at most 0xffff.
#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}
