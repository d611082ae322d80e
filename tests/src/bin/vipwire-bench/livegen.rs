//! The flood generator of the dataplane benchmarks: an XDP program that returns `XDP_TX`, run
//! through BPF_PROG_RUN with `BPF_F_TEST_XDP_LIVE_FRAMES` on a lab veth, as xdp-trafficgen
//! does. Each run's `XDP_TX` becomes a redirect out of that veth, straight into its peer's XDP
//! program, for a fraction of what a socket send costs (trafgen's `sendto` per frame topped
//! out at ~250k ARP frames/s and ~960k UDP frames/s here: it, not the path, was measured).
//!
//! The generator thread is pinned to one CPU. The kernel runs the live frames' redirects and,
//! in softirq right after each batch, the NAPI polls they schedule, on that CPU.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode, xdp::XdpLinkId},
};
use testkit::Netns;

/// Frames per BPF_PROG_RUN call of the generator, and frames per live-frame batch (after each
/// batch the kernel flushes the redirects and runs the pending softirqs). Each call also
/// spends a fixed ~30 ms off the CPU, whatever its size (measured here: at 64 Ki frames per
/// call the generator's CPU sat idle 70% of the ARP flood's XDP arm, which then showed 1.7M
/// replies/s instead of 8.5M): calls are made long enough for that to stay a few percent.
const FRAMES_PER_CALL: u32 = 1 << 22;
const BATCH: u32 = 64;
/// At most this many calls per flood (the time limit comes first).
const MAX_CALLS: u32 = 4_000;

/// The running generator, as the code measuring beside it sees it.
pub struct Sender {
    /// The CPU the generator thread is pinned to.
    pub cpu: u32,
    thread: libc::pthread_t,
}

impl Sender {
    /// CPU time of the generator thread so far: its BPF_PROG_RUN calls and the softirq work
    /// the kernel runs on its CPU right after each batch.
    pub fn thread_cpu(&self) -> Duration {
        clock_time(thread_cpu_clock(self.thread))
    }
}

/// Sends `frame` out of `ifname` in `ns` with `program` until `measure` returns, for
/// `flood_for` at most (checked between calls: the last one may run a few seconds longer),
/// and returns what `measure` returned. Panics if the generator stopped before `measure`
/// was done (its counts would not be under load).
pub fn flood<T>(
    program: &Xdp,
    ns: &Netns,
    ifname: &str,
    frame: &[u8],
    flood_for: Duration,
    label: &str,
    measure: impl FnOnce(&Sender) -> T,
) -> T {
    let ctx = testkit::bpf::xdp_md(frame.len(), ns.ifindex(ifname));
    let stop = AtomicBool::new(false);
    let sender_thread = AtomicU64::new(0);
    let sender_cpu = AtomicU64::new(u64::MAX);
    std::thread::scope(|scope| {
        let generator = scope.spawn(|| {
            in_netns_scoped(ns, || {
                sender_cpu.store(u64::from(pin_to_generator_cpu()), Ordering::Release);
                // SAFETY: pthread_self has no preconditions.
                sender_thread.store(unsafe { libc::pthread_self() }, Ordering::Release);
                let deadline = Instant::now() + flood_for;
                let mut calls = 0;
                while calls < MAX_CALLS
                    && Instant::now() < deadline
                    && !stop.load(Ordering::Relaxed)
                {
                    program
                        .test_run(TestRunOptions {
                            data_in: Some(frame),
                            ctx_in: Some(&ctx),
                            repeat: FRAMES_PER_CALL,
                            attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                            ..TestRunOptions::default()
                        })
                        .unwrap_or_else(|e| panic!("live-frame generator ({label}): {e:?}"));
                    calls += 1;
                }
                calls
            })
        });
        while sender_thread.load(Ordering::Acquire) == 0 {
            if generator.is_finished() {
                let calls = generator.join().expect("the generator thread");
                panic!("the generator ({label}) ended before it started, after {calls} calls");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let sender = Sender {
            cpu: u32::try_from(sender_cpu.load(Ordering::Acquire))
                .expect("the generator thread pinned itself"),
            thread: sender_thread.load(Ordering::Acquire),
        };
        let measured = measure(&sender);
        let ended_early = generator.is_finished();
        stop.store(true, Ordering::Relaxed);
        let calls = generator.join().expect("the generator thread");
        assert!(
            !ended_early,
            "the generator ({label}) stopped before the measurement was done, after {calls} calls"
        );
        measured
    })
}

/// The embedded BPF object as `loader` loads it (with its own, unused copies of the contract
/// maps), with the XDP programs `names` loaded into the kernel.
pub fn load_programs(loader: &mut EbpfLoader<'_>, names: &[&str]) -> Ebpf {
    let mut ebpf = loader
        .load(vipwire::dataplane::bpf_object())
        .expect("loading the embedded BPF object");
    for name in names {
        testkit::bpf::load_xdp(&mut ebpf, name);
    }
    ebpf
}

/// A loaded XDP program of `ebpf`.
pub fn program<'a>(ebpf: &'a Ebpf, name: &str) -> &'a Xdp {
    ebpf.program(name)
        .and_then(|p| p.try_into().ok())
        .unwrap_or_else(|| panic!("{name} is loaded"))
}

/// Attaches the loaded XDP program `name` of `ebpf` to `ifname` in `ns`, natively (a veth
/// takes XDP_TX or redirected frames from its peer only if it has an XDP program of its own:
/// TOOLCHAIN.md). It stays attached until `ebpf` is dropped.
pub fn attach_native(ebpf: &mut Ebpf, name: &str, ns: &Netns, ifname: &str) -> XdpLinkId {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .and_then(|p| p.try_into().ok())
        .unwrap_or_else(|| panic!("{name} is loaded"));
    in_netns_scoped(ns, || {
        program
            .attach(ifname, XdpMode::Driver)
            .unwrap_or_else(|e| panic!("attaching {name} to {ifname}: {e:?}"))
    })
}

/// Detaches what [`attach_native`] attached.
pub fn detach(ebpf: &mut Ebpf, name: &str, link: XdpLinkId) {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .and_then(|p| p.try_into().ok())
        .unwrap_or_else(|| panic!("{name} is loaded"));
    program
        .detach(link)
        .unwrap_or_else(|e| panic!("detaching {name}: {e:?}"));
}

/// Runs `f` in a scoped thread that has joined `ns`'s network namespace, where BPF_PROG_RUN and
/// XDP attachment resolve interface indexes and names.
pub fn in_netns_scoped<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{}", ns.name());
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                use std::os::fd::AsRawFd as _;
                let file =
                    std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
                // SAFETY: setns(2) on a valid namespace fd; it changes this thread only.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("netns thread panicked")
    })
}

/// Pins the calling thread to the last CPU it may run on and returns that CPU. Every flood
/// runs there, so that the arms one run compares share a CPU: left where it started, the
/// generator landed on either vCPU of this VM, and one ran all three arms 3-8% slower than the
/// other in one run (vipwire's arm on the slower one twice and the kernel's on the faster
/// one moved the ratio by as much). The kernel runs a NAPI poll on the CPU that scheduled it,
/// and keeps it there while it has work: the polls the generator schedules stay on its CPU,
/// in its thread or in that CPU's ksoftirqd.
fn pin_to_generator_cpu() -> u32 {
    // SAFETY: a zeroed cpu_set_t is the empty set; sched_getaffinity and sched_setaffinity
    // (0: this thread) get valid pointers and sizes; CPU_ISSET/CPU_SET index inside the set.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        let rc = libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut allowed);
        assert_eq!(
            rc,
            0,
            "sched_getaffinity: {}",
            std::io::Error::last_os_error()
        );
        let cpu = (0..libc::CPU_SETSIZE as usize)
            .rev()
            .find(|&cpu| libc::CPU_ISSET(cpu, &allowed))
            .expect("a thread may run on some CPU");
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
        cpu as u32
    }
}

/// The CPU-time clock of a running thread of this process.
fn thread_cpu_clock(thread: libc::pthread_t) -> libc::clockid_t {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `thread` is a live thread of this process (`flood` joins it after `measure`);
    // `clock` is a valid out-pointer.
    let rc = unsafe { libc::pthread_getcpuclockid(thread, &mut clock) };
    assert_eq!(rc, 0, "pthread_getcpuclockid: error {rc}");
    clock
}

fn clock_time(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime: {}", std::io::Error::last_os_error());
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
