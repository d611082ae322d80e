//! SCTP's CRC32c (RFC 9260, appendix A) after a port rewrite, without reading the payload.
//!
//! The CRC with its initial value and final complement is affine in the message, so for two
//! messages of equal length `crc(A) ^ crc(B) = raw(A ^ B)`, where `raw` starts from 0 and
//! does not complement. `A ^ B` is zero except the two port bytes, and leading zeros leave
//! `raw` at 0, so the change is `raw(old ^ new)` over two bytes, then carried through the
//! `n` zero bytes that follow them. Carrying a CRC register through zero bytes is linear, so
//! it is done with precomputed GF(2) matrices for 1, 2, 4, ... 32768 bytes: at most 16 × 32
//! conditional XORs, independent of the payload and with no packet reads.

use core::ffi::c_void;

use aya_ebpf::helpers::bpf_loop;

/// CRC32c's polynomial, bit-reflected.
const POLY: u32 = 0x82f6_3b78;

const fn byte_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

static TABLE: [u32; 256] = byte_table();

/// `ZEROS[k][j]`: the register after feeding 2^k zero bytes to a register holding `1 << j`.
static ZEROS: [[u32; 32]; 16] = zero_matrices();

const fn apply(matrix: &[u32; 32], mut v: u32) -> u32 {
    let mut out = 0;
    let mut j = 0;
    while v != 0 {
        if v & 1 != 0 {
            out ^= matrix[j];
        }
        v >>= 1;
        j += 1;
    }
    out
}

const fn zero_matrices() -> [[u32; 32]; 16] {
    let table = byte_table();
    let mut m = [[0u32; 32]; 16];
    let mut j = 0;
    while j < 32 {
        let s = 1u32 << j;
        m[0][j] = table[(s & 0xff) as usize] ^ (s >> 8);
        j += 1;
    }
    let mut k = 1;
    while k < 16 {
        let mut j = 0;
        while j < 32 {
            m[k][j] = apply(&m[k - 1], m[k - 1][j]);
            j += 1;
        }
        k += 1;
    }
    m
}

#[repr(C)]
struct Carry {
    reg: u32,
    zeros: u32,
}

/// Carries `reg` through 2^k zero bytes when bit k of `zeros` is set.
extern "C" fn carry_step(k: u64, ctx: *mut c_void) -> i64 {
    let carry = ctx.cast::<Carry>();
    let k = (k & 15) as usize;
    // SAFETY: bpf_loop passes the ctx given to it: a live Carry.
    let (reg, zeros) = unsafe { ((*carry).reg, (*carry).zeros) };
    if (zeros >> k) & 1 == 0 {
        return 0;
    }
    // SAFETY: k < 16.
    let matrix = unsafe { ZEROS.get_unchecked(k) };
    let mut out = 0;
    let mut j = 0;
    while j < 32 {
        // SAFETY: j < 32.
        out ^= unsafe { *matrix.get_unchecked(j) } & 0u32.wrapping_sub((reg >> j) & 1);
        j += 1;
    }
    // SAFETY: as above.
    unsafe { (*carry).reg = out };
    0
}

/// The checksum field (as on the wire: the CRC little-endian) after the 2 bytes at SCTP
/// offset 2 (the destination port) or 0 (the source port) changed from `old` to `new`, in a
/// packet of `len` bytes from the SCTP header on. `None` for an impossible length.
#[inline(always)]
pub fn port_changed(
    field: [u8; 4],
    old: [u8; 2],
    new: [u8; 2],
    offset: u32,
    len: u32,
) -> Option<[u8; 4]> {
    let crc = crc_delta(old, new, offset, len);
    if crc >> 32 == 0 {
        return None;
    }
    Some((u32::from_le_bytes(field) ^ crc as u32).to_le_bytes())
}

/// The change to the CRC in the low 32 bits, bit 32 set; 0 for an impossible length. (A
/// plain integer: an `Option` returned from a BPF function leaves undefined register bits
/// the verifier rejects.)
#[inline(never)]
fn crc_delta(old: [u8; 2], new: [u8; 2], offset: u32, len: u32) -> u64 {
    if len < offset + 2 || len > 0xffff {
        return 0;
    }
    port_delta_reg(old, new, offset, len)
}

#[inline(always)]
fn port_delta_reg(old: [u8; 2], new: [u8; 2], offset: u32, len: u32) -> u64 {
    let d0 = old[0] ^ new[0];
    let d1 = old[1] ^ new[1];
    // SAFETY (table reads): indexes are masked to 0..=255.
    let mut reg = unsafe { *TABLE.get_unchecked(usize::from(d0)) };
    reg = unsafe { *TABLE.get_unchecked(((reg ^ u32::from(d1)) & 0xff) as usize) } ^ (reg >> 8);
    // One bpf_loop step per matrix: the verifier checks the callback once. (An open-coded
    // loop over the read-only tables is walked with every value known, 16 × 32 times per
    // call path, which exhausts its budget.)
    let mut carry = Carry {
        reg,
        zeros: len - offset - 2,
    };
    // SAFETY: the callback is a BPF function taking (index, ctx); ctx points at `carry` on
    // this stack frame for the duration of the call.
    unsafe {
        bpf_loop(16, carry_step as *mut c_void, (&raw mut carry).cast(), 0);
    }
    (1 << 32) | u64::from(carry.reg)
}
