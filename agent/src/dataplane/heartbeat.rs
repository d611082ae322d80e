//! The agent's heartbeat: the XDP program answers only while it is fresh, so a dead agent stops
//! attracting traffic (see `vipwire_common::control`).
//!
//! It is written from a thread of its own ([`Heartbeat`]), not between reconciles: a full plan
//! at 10k Services runs for over a second, longer than the shortest `--heartbeat-timeout`,
//! and answering must not pause while a live agent works. The thread still follows the main
//! loop: a loop that shows no progress for [`WEDGED_AFTER`] gets no more beats, so a wedged
//! agent stops attracting traffic as a dead one does.

use std::{
    os::fd::AsFd,
    sync::{
        Arc, Condvar, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{Array, Map, MapData, MapError},
};
use vipwire_common::{CONTRACT_VERSION, Control, control::CONTROL_INDEX, maps};

/// How long the main loop may show no progress before the heartbeat stops: far longer than any
/// reconcile (a full plan at 10k Services takes ~1 s), far shorter than an operator's patience.
pub const WEDGED_AFTER: Duration = Duration::from_secs(30);

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

/// The thread that writes the heartbeat every [`interval`] while the main loop shows progress
/// ([`Heartbeat::alive`]). Dropping it stops the beats.
pub struct Heartbeat {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    /// [`monotonic_ns`] when the main loop last showed progress.
    alive_ns: AtomicU64,
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    stop: bool,
    /// Why the thread stopped beating, for the main loop to report.
    failure: Option<MapError>,
}

impl Heartbeat {
    /// Writes the first heartbeat, then starts the thread with its own handle on the control
    /// map, so that it never waits for the main loop's `&mut Ebpf`.
    pub fn start(ebpf: &Ebpf, stale_after: Duration) -> Result<Self, MapError> {
        let mut control = own_control_map(ebpf)?;
        beat(&mut control, stale_after)?;
        Self::spawn(interval(stale_after), WEDGED_AFTER, move || {
            beat(&mut control, stale_after)
        })
    }

    /// Calls `beat` every `every` while the main loop showed progress within `wedged_after`,
    /// or within three `every`s if that is longer: an idle main loop shows progress only when
    /// its own ticker (also every `every`) wakes it, which with a long heartbeat timeout is
    /// rarer than `WEDGED_AFTER`.
    fn spawn(
        every: Duration,
        wedged_after: Duration,
        beat: impl FnMut() -> Result<(), MapError> + Send + 'static,
    ) -> Result<Self, MapError> {
        let wedged_after = wedged_after.max(every * 3);
        let shared = Arc::new(Shared {
            alive_ns: AtomicU64::new(monotonic_ns()),
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let thread = std::thread::Builder::new()
            .name("heartbeat".to_owned())
            .spawn({
                let shared = shared.clone();
                move || run(&shared, every, wedged_after, beat)
            })
            .map_err(|io_error| {
                MapError::SyscallError(aya::sys::SyscallError {
                    call: "spawning the heartbeat thread",
                    io_error,
                })
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// The main loop made progress: keep beating.
    pub fn alive(&self) {
        self.shared
            .alive_ns
            .store(monotonic_ns(), Ordering::Relaxed);
    }

    /// The error that stopped the thread, once.
    pub fn failure(&self) -> Option<MapError> {
        self.lock().failure.take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            // A panicked thread has nothing left to stop.
            let _ = thread.join();
        }
    }
}

fn run(
    shared: &Shared,
    every: Duration,
    wedged_after: Duration,
    mut beat: impl FnMut() -> Result<(), MapError>,
) {
    let wedged_after_ns = u64::try_from(wedged_after.as_nanos()).unwrap_or(u64::MAX);
    let mut wedged = false;
    let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        state = shared
            .wake
            .wait_timeout_while(state, every, |s| !s.stop)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        if state.stop {
            return;
        }
        let idle_ns = monotonic_ns().saturating_sub(shared.alive_ns.load(Ordering::Relaxed));
        if idle_ns > wedged_after_ns {
            if !wedged {
                tracing::error!(
                    idle_s = idle_ns / 1_000_000_000,
                    "the agent's main loop is stuck: no more heartbeats, ARP/NDP answers stop"
                );
                wedged = true;
            }
            continue;
        }
        if wedged {
            tracing::warn!("the agent's main loop made progress again: heartbeats resume");
            wedged = false;
        }
        if let Err(err) = beat() {
            state.failure = Some(err);
            return;
        }
    }
}

/// A handle on the control map of its own (a duplicate of the loaded map's descriptor).
fn own_control_map(ebpf: &Ebpf) -> Result<Array<MapData, Control>, MapError> {
    let map = ebpf
        .map(maps::CONTROL)
        .ok_or_else(|| MapError::InvalidName {
            name: maps::CONTROL.to_owned(),
        })?;
    let Map::Array(data) = map else {
        return Err(MapError::InvalidName {
            name: maps::CONTROL.to_owned(),
        });
    };
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|io_error| aya::sys::SyscallError {
            call: "dup",
            io_error,
        })?;
    Array::try_from(Map::Array(MapData::from_fd(fd)?))
}

/// Writes a fresh heartbeat (and re-arms the program's once-only stale/mismatch logs).
fn beat(control: &mut Array<MapData, Control>, stale_after: Duration) -> Result<(), MapError> {
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

    /// A heartbeat whose beats count into the returned counter; `fail` makes them fail.
    fn counting(wedged_after: Duration, fail: bool) -> (Heartbeat, Arc<AtomicU64>) {
        let beats = Arc::new(AtomicU64::new(0));
        let counter = beats.clone();
        let heart = Heartbeat::spawn(Duration::from_millis(5), wedged_after, move || {
            counter.fetch_add(1, Ordering::Relaxed);
            if fail {
                Err(MapError::InvalidName {
                    name: "broken".to_owned(),
                })
            } else {
                Ok(())
            }
        })
        .unwrap();
        (heart, beats)
    }

    fn beats_within(beats: &AtomicU64, wait: Duration) -> u64 {
        let before = beats.load(Ordering::Relaxed);
        std::thread::sleep(wait);
        beats.load(Ordering::Relaxed) - before
    }

    #[test]
    fn beats_while_the_main_loop_is_alive_and_not_after_drop() {
        let (heart, beats) = counting(Duration::from_secs(60), false);
        assert!(beats_within(&beats, Duration::from_millis(200)) >= 5);
        drop(heart);
        assert_eq!(beats_within(&beats, Duration::from_millis(50)), 0);
    }

    #[test]
    fn a_stuck_main_loop_gets_no_beats_until_it_moves_again() {
        let (heart, beats) = counting(Duration::from_millis(100), false);
        // Never alive() since the start: the beats stop once 100 ms have passed.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(beats_within(&beats, Duration::from_millis(200)), 0);
        heart.alive();
        assert!(beats_within(&beats, Duration::from_millis(80)) >= 2);
    }

    #[test]
    fn a_main_loop_that_wakes_only_with_its_ticker_is_alive() {
        // The threshold (5 ms) is shorter than the ticks (20 ms), as WEDGED_AFTER is with a
        // heartbeat timeout of minutes.
        let beats = Arc::new(AtomicU64::new(0));
        let counter = beats.clone();
        let every = Duration::from_millis(20);
        let heart = Heartbeat::spawn(every, Duration::from_millis(5), move || {
            counter.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
        // Half a tick out of phase with the beats: each beat finds the loop 10 ms idle.
        std::thread::sleep(every / 2);
        for _ in 0..15 {
            heart.alive();
            std::thread::sleep(every);
        }
        assert!(beats.load(Ordering::Relaxed) >= 10, "{beats:?}");
    }

    #[test]
    fn a_failed_beat_stops_the_thread_and_is_reported_once() {
        let (heart, beats) = counting(Duration::from_secs(60), true);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(beats.load(Ordering::Relaxed), 1);
        assert!(matches!(
            heart.failure(),
            Some(MapError::InvalidName { name }) if name == "broken"
        ));
        assert!(heart.failure().is_none());
    }

    #[test]
    fn monotonic_clock_advances() {
        let a = monotonic_ns();
        std::thread::sleep(Duration::from_millis(2));
        assert!(monotonic_ns() > a);
    }
}
