//! Loads and stores of whole little-endian words at any byte offset into the packet or a map
//! value.
//!
//! Header fields sit at offsets that no alignment rule covers (an ARP frame's addresses at 22,
//! 28, 32, 38), and Rust's `read_unaligned` on the BPF target becomes one single-byte load per
//! byte. The verifier accepts misaligned packet access wherever the CPU handles it (x86-64,
//! arm64; elsewhere it rejects the program at load time), so these emit the one instruction
//! each. Linking everything with LLVM's `allows-misaligned-mem-access` instead is not an
//! option: LLVM then also merges stack stores into misaligned ones, which the verifier always
//! rejects.
//!
//! Callers guarantee that `OFF + size` bytes from `frame` lie inside the packet (as checked by
//! [`crate::parse::ptr_at`] on the same pointer) or inside a map value.
//!
//! The same loads and stores copy 16-byte addresses between the packet and map values (the
//! per-CPU scratch slot, conntrack and backend entries): an `[u8; 16]` assignment there
//! becomes sixteen byte copies, or a call to a byte-wise `memmove` when LLVM cannot tell the
//! two apart. Never on the BPF stack: the verifier checks stack alignment on every CPU.

use core::arch::asm;

use vipwire_common::l4::v4_mapped;

/// The 8 bytes at `frame + OFF` as a little-endian word (the first byte lowest).
///
/// # Safety
/// `frame + OFF .. frame + OFF + 8` must lie in the packet or a map value (not the stack).
#[inline(always)]
pub unsafe fn load64<const OFF: usize>(frame: *const u8) -> u64 {
    let value: u64;
    // SAFETY: the caller keeps the access inside its memory; the load only reads it.
    unsafe {
        asm!(
            "{value} = *(u64 *)({frame} + {off})",
            value = out(reg) value,
            frame = in(reg) frame,
            off = const OFF,
            options(nostack, readonly, preserves_flags),
        );
    }
    value
}

/// The 4 bytes at `frame + OFF` as a little-endian word.
///
/// # Safety
/// `frame + OFF .. frame + OFF + 4` must lie in the packet or a map value (not the stack).
#[inline(always)]
pub unsafe fn load32<const OFF: usize>(frame: *const u8) -> u32 {
    // SAFETY: the caller's range.
    unsafe { load32_wide::<OFF>(frame) as u32 }
}

/// The 2 bytes at `frame + OFF` as a little-endian word, zero-extended (the load does it: no
/// mask instruction as for a `u16`).
///
/// # Safety
/// `frame + OFF .. frame + OFF + 2` must lie in the packet or a map value (not the stack).
#[inline(always)]
pub unsafe fn load16_wide<const OFF: usize>(frame: *const u8) -> u64 {
    let value: u64;
    // SAFETY: as in `load64`.
    unsafe {
        asm!(
            "{value} = *(u16 *)({frame} + {off})",
            value = out(reg) value,
            frame = in(reg) frame,
            off = const OFF,
            options(nostack, readonly, preserves_flags),
        );
    }
    value
}

/// Like [`load32`], zero-extended (no mask instruction for the `u32`).
///
/// # Safety
/// As for [`load32`].
#[inline(always)]
pub unsafe fn load32_wide<const OFF: usize>(frame: *const u8) -> u64 {
    let value: u64;
    // SAFETY: as in `load64`.
    unsafe {
        asm!(
            "{value} = *(u32 *)({frame} + {off})",
            value = out(reg) value,
            frame = in(reg) frame,
            off = const OFF,
            options(nostack, readonly, preserves_flags),
        );
    }
    value
}

/// Writes `value` as 8 little-endian bytes at `frame + OFF`.
///
/// # Safety
/// `frame + OFF .. frame + OFF + 8` must lie in the packet or a map value (not the stack).
#[inline(always)]
pub unsafe fn store64<const OFF: usize>(frame: *mut u8, value: u64) {
    // SAFETY: the caller keeps the access inside its memory.
    unsafe {
        asm!(
            "*(u64 *)({frame} + {off}) = {value}",
            value = in(reg) value,
            frame = in(reg) frame,
            off = const OFF,
            options(nostack, preserves_flags),
        );
    }
}

/// Writes `value` as 4 little-endian bytes at `frame + OFF`.
///
/// # Safety
/// `frame + OFF .. frame + OFF + 4` must lie in the packet or a map value (not the stack).
#[inline(always)]
pub unsafe fn store32<const OFF: usize>(frame: *mut u8, value: u32) {
    // SAFETY: the caller keeps the access inside its memory.
    unsafe {
        asm!(
            "*(u32 *)({frame} + {off}) = {value}",
            value = in(reg) u64::from(value),
            frame = in(reg) frame,
            off = const OFF,
            options(nostack, preserves_flags),
        );
    }
}

/// Copies the 16 bytes at `src` to `dst` as two words.
///
/// # Safety
/// Both ranges must lie inside the packet or a map value (not the BPF stack).
#[inline(always)]
pub unsafe fn copy16(dst: *mut [u8; 16], src: *const [u8; 16]) {
    let (dst, src) = (dst.cast::<u8>(), src.cast::<u8>());
    // SAFETY: the caller's ranges.
    unsafe {
        let (low, high) = (load64::<0>(src), load64::<8>(src));
        store64::<0>(dst, low);
        store64::<8>(dst, high);
    }
}

/// Writes the IPv4-mapped address (`::ffff:a.b.c.d`) of `v4`, the IPv4 address as
/// [`load32`] returns it, to `dst`.
///
/// # Safety
/// As for [`copy16`]'s `dst`.
#[inline(always)]
pub unsafe fn store_v4_mapped(dst: *mut [u8; 16], v4: u32) {
    // Bytes 8..12 of the mapped form (`::ffff`), the only non-zero ones besides the address.
    const PREFIX: [u8; 16] = v4_mapped([0; 4]);
    let dst = dst.cast::<u8>();
    let mapped = u64::from(u32::from_le_bytes([
        PREFIX[8], PREFIX[9], PREFIX[10], PREFIX[11],
    ])) | u64::from(v4) << 32;
    // SAFETY: the caller's range.
    unsafe {
        store64::<0>(dst, 0);
        store64::<8>(dst, mapped);
    }
}
