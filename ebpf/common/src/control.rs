//! The agent's heartbeat and the contract version: the gate in front of every answer.

/// Version of the kernel/userspace contract as a whole (map layouts and their semantics).
/// The agent writes its own value into [`Control::contract_version`]; a program built for
/// another value stops answering and logs once. Bump it with any map name version.
pub const CONTRACT_VERSION: u32 = 2;

/// The single value (index 0) of `vipwire_control_v1`, an `ARRAY` of one entry.
///
/// The program answers only while `contract_version == CONTRACT_VERSION` and
/// `|now - heartbeat_ns| <= stale_after_ns`, where `now` is `bpf_ktime_get_coarse_ns()` (one tick
/// behind at most), i.e.
/// `CLOCK_MONOTONIC`. An entry that was never written (`heartbeat_ns == 0`) is stale, so a
/// freshly loaded program answers nothing until the agent writes its first heartbeat.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Control {
    /// `CLOCK_MONOTONIC` in nanoseconds when the agent last proved it is alive.
    pub heartbeat_ns: u64,
    /// How old the heartbeat may get before answering stops. Must be non-zero (zero means
    /// only a heartbeat written in the same nanosecond counts).
    pub stale_after_ns: u64,
    /// The agent writes [`CONTRACT_VERSION`].
    pub contract_version: u32,
    /// `REPORTED_*` bits. The PROGRAM sets a bit when it logs a rare event so that the event
    /// is logged once; the agent writes 0 with every heartbeat, re-arming the log.
    pub reported: u32,
}
const _: () = assert!(size_of::<Control>() == 24);

/// [`Control::reported`]: the program has logged that the heartbeat is stale.
pub const REPORTED_STALE: u32 = 1 << 0;
/// [`Control::reported`]: the program has logged a contract version mismatch.
pub const REPORTED_CONTRACT_MISMATCH: u32 = 1 << 1;

/// Index of the only entry of `vipwire_control_v1`.
pub const CONTROL_INDEX: u32 = 0;

#[cfg(feature = "user")]
// SAFETY: repr(C), integer fields only, no implicit padding (size assert).
unsafe impl aya::Pod for Control {}
