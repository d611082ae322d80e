//! The kernel side as seen from userspace: the embedded BPF object, loading and attaching it.

pub mod heartbeat;
pub mod iface;
pub mod l2;
pub mod l4;
pub mod loader;
pub mod logs;
pub mod maglev;
pub mod paths;
mod pins;
pub mod route;
pub mod status;
pub mod tc;
mod upgrade;

/// The BPF object built by `build.rs` from `ebpf/programs`, embedded in the agent binary.
pub fn bpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vipwire"))
}
