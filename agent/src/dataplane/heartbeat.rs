//! The agent's heartbeat: the XDP program answers only while it is fresh, so a dead agent stops
//! attracting traffic (see `vipwire_common::control`).

use std::time::Duration;

use aya::{
    Ebpf,
    maps::{Array, MapError},
};
use vipwire_common::{CONTRACT_VERSION, Control, control::CONTROL_INDEX, maps};

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns()`, which the program reads
/// at tick resolution (`bpf_ktime_get_coarse_ns()`, ebpf/programs/src/control.rs).
pub fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// How often to refresh a heartbeat that goes stale after `stale_after`: often enough that one
/// late tick (a busy node) does not stop answering.
pub fn interval(stale_after: Duration) -> Duration {
    (stale_after / 4).max(Duration::from_millis(100))
}

/// Writes a fresh heartbeat (and re-arms the program's once-only stale/mismatch logs).
pub fn beat(ebpf: &mut Ebpf, stale_after: Duration) -> Result<(), MapError> {
    let map = ebpf
        .map_mut(maps::CONTROL)
        .ok_or_else(|| MapError::InvalidName {
            name: maps::CONTROL.to_owned(),
        })?;
    let mut control = Array::<_, Control>::try_from(map)?;
    control.set(
        CONTROL_INDEX,
        Control {
            heartbeat_ns: monotonic_ns(),
            stale_after_ns: u64::try_from(stale_after.as_nanos()).unwrap_or(u64::MAX),
            contract_version: CONTRACT_VERSION,
            reported: 0,
        },
        0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_interval_is_a_quarter_of_the_timeout_with_a_floor() {
        assert_eq!(interval(Duration::from_secs(4)), Duration::from_secs(1));
        assert_eq!(
            interval(Duration::from_millis(200)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn monotonic_clock_advances() {
        let a = monotonic_ns();
        std::thread::sleep(Duration::from_millis(2));
        assert!(monotonic_ns() > a);
    }
}
