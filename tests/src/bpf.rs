//! The real BPF object in the real kernel, run with `BPF_PROG_RUN` (aya `TestRun`).
//!
//! [`XdpHarness::load`] loads the object the agent embeds, with fresh (unpinned) maps, and
//! offers typed access to every contract map. [`XdpHarness::run`] runs one frame as if it
//! had arrived on `ingress_ifindex`; the kernel resolves that index in the calling thread's
//! network namespace and needs a device with registered RX queues there (`lo`, index 1,
//! always qualifies). Map entries are keyed by ifindex and need no device, so "owned on
//! another interface" is tested with an index that does not exist.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp},
    util::nr_cpus,
};
use aya_log::EbpfLogger;
use vipwire_common::{
    CONTRACT_VERSION, Control, Iface, L2Vip4Key, L2Vip6Key, L2VipStats, Reason,
    control::CONTROL_INDEX, maps, programs,
};

/// `lo`: exists in every network namespace, so BPF_PROG_RUN accepts it as ingress.
pub const LO_IFINDEX: u32 = 1;

/// Heartbeat age limit the harness writes by default: long enough for any test run.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(3600);

/// Room after the frame for programs that grow it (`bpf_xdp_adjust_tail`).
const OUTPUT_SLACK: usize = 256;

/// An XDP verdict, named for readable assertion failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Aborted,
    Drop,
    Pass,
    Tx,
    Redirect,
    Other(u32),
}

impl From<u32> for Verdict {
    fn from(action: u32) -> Self {
        match action {
            0 => Verdict::Aborted,
            1 => Verdict::Drop,
            2 => Verdict::Pass,
            3 => Verdict::Tx,
            4 => Verdict::Redirect,
            other => Verdict::Other(other),
        }
    }
}

/// What one run returned: the verdict and the frame as the program left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOutput {
    pub verdict: Verdict,
    pub frame: Vec<u8>,
}

/// One aya-log record forwarded from the program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    pub level: log::Level,
    pub message: String,
}

#[derive(Clone, Default)]
struct CaptureLogger(Arc<Mutex<Vec<LogRecord>>>);

impl log::Log for CaptureLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        self.0.lock().expect("log capture lock").push(LogRecord {
            level: record.level(),
            message: record.args().to_string(),
        });
    }

    fn flush(&self) {}
}

/// The loaded XDP program with its own maps and a capture of its aya-log output.
pub struct XdpHarness {
    ebpf: Ebpf,
    logger: EbpfLogger<CaptureLogger>,
    captured: CaptureLogger,
}

impl XdpHarness {
    /// Loads the embedded object with the agent's default BPF log level (warn).
    pub fn load() -> Self {
        Self::load_with_log_level(aya_log::Level::Warn)
    }

    /// Loads the embedded object; `level` is patched into aya-log's `AYA_LOG_LEVEL` global,
    /// the mechanism the agent's `--bpf-log-level` uses.
    pub fn load_with_log_level(level: aya_log::Level) -> Self {
        crate::tools::require_root();
        let level = level as u8;
        let mut ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &level, true)
            .load(vipwire::dataplane::bpf_object())
            .expect("loading the embedded BPF object");
        let program: &mut Xdp = ebpf
            .program_mut(programs::XDP_UPLINK)
            .expect("the object has the uplink program")
            .try_into()
            .expect("the uplink program is XDP");
        program
            .load()
            .expect("the verifier accepts the uplink program");
        let captured = CaptureLogger::default();
        let logger = EbpfLogger::init_with_logger(&mut ebpf, captured.clone())
            .expect("the object has aya-log's ring buffer");
        Self {
            ebpf,
            logger,
            captured,
        }
    }

    /// The loaded program, for measurements that drive `TestRun` themselves.
    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(programs::XDP_UPLINK)
            .expect("the uplink program")
            .try_into()
            .expect("XDP")
    }

    /// Runs `frame` once as if received on `ingress_ifindex`; panics if the kernel refuses
    /// the run (see [`Self::try_run`]).
    pub fn run(&self, frame: &[u8], ingress_ifindex: u32) -> RunOutput {
        self.try_run(frame, ingress_ifindex)
            .unwrap_or_else(|e| panic!("BPF_PROG_RUN (ifindex {ingress_ifindex}): {e:?}"))
    }

    /// Runs `frame` once. The kernel refuses frames shorter than an Ethernet header
    /// (EINVAL) and an `ingress_ifindex` with no device in this namespace (ENODEV).
    pub fn try_run(&self, frame: &[u8], ingress_ifindex: u32) -> Result<RunOutput, ProgramError> {
        run_once(self.program(), frame, ingress_ifindex)
    }

    /// Loads another XDP program of the object (the benchmark's lab programs), sharing the
    /// object's maps, for [`Self::run_program`].
    pub fn load_program(&mut self, name: &str) {
        load_xdp(&mut self.ebpf, name);
    }

    /// [`Self::run`] for a program loaded with [`Self::load_program`].
    pub fn run_program(&self, name: &str, frame: &[u8], ingress_ifindex: u32) -> RunOutput {
        let program: &Xdp = self
            .ebpf
            .program(name)
            .and_then(|p| p.try_into().ok())
            .unwrap_or_else(|| panic!("{name} is not a loaded XDP program"));
        run_once(program, frame, ingress_ifindex)
            .unwrap_or_else(|e| panic!("BPF_PROG_RUN {name} (ifindex {ingress_ifindex}): {e:?}"))
    }

    /// Runs `frame` once through the TC program `name` (loaded on first use, sharing this
    /// object's maps): its return code (`TC_ACT_*`) and the frame as it left.
    pub fn run_tc(&mut self, name: &str, frame: &[u8]) -> (i32, Vec<u8>) {
        self.run_tc_with(name, frame, None)
    }

    /// [`Self::run_tc`] with a `struct __sk_buff` as context (see [`sk_buff`]).
    pub fn run_tc_with(
        &mut self,
        name: &str,
        frame: &[u8],
        sk_buff: Option<&[u8]>,
    ) -> (i32, Vec<u8>) {
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .unwrap_or_else(|| panic!("the object has TC program {name}"))
            .try_into()
            .expect("a TC program");
        if program.fd().is_err() {
            program
                .load()
                .unwrap_or_else(|e| panic!("the verifier accepts {name}: {e:?}"));
        }
        let mut out = vec![0u8; frame.len() + OUTPUT_SLACK];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: sk_buff,
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_RUN of {name}: {e:?}"));
        out.truncate(result.data_size_out as usize);
        (result.return_value as i32, out)
    }

    /// Runs `frame` `repeat` times in one syscall; the kernel reports the mean time per run.
    /// Every iteration sees the previous one's output (see TOOLCHAIN.md): check the verdict.
    pub fn run_repeat(
        &self,
        frame: &[u8],
        ingress_ifindex: u32,
        repeat: u32,
    ) -> (Verdict, Duration) {
        let ctx = xdp_md(frame.len(), ingress_ifindex);
        let result = self
            .program()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                repeat,
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_RUN x{repeat}: {e:?}"));
        (result.return_value.into(), result.duration)
    }

    /// Answers on `ifindex` with `mac` as the source of replies.
    pub fn set_iface(&mut self, ifindex: u32, mac: [u8; 6]) {
        let mut ifaces = HashMap::<_, u32, Iface>::try_from(self.map_mut(maps::IFACES))
            .expect("contract map type");
        ifaces
            .insert(ifindex, Iface::new(mac), 0)
            .expect("writing an iface");
    }

    pub fn remove_iface(&mut self, ifindex: u32) {
        let mut ifaces = HashMap::<_, u32, Iface>::try_from(self.map_mut(maps::IFACES))
            .expect("contract map type");
        ifaces.remove(&ifindex).expect("removing an iface");
    }

    /// Owns `addr` on `ifindex` (all-zero stats, as the agent's writer inserts it).
    pub fn add_vip4(&mut self, addr: std::net::Ipv4Addr, ifindex: u32) {
        let key = L2Vip4Key {
            addr_be: addr.octets(),
            ifindex,
        };
        let mut vips =
            PerCpuHashMap::<_, L2Vip4Key, L2VipStats>::try_from(self.map_mut(maps::L2_VIP4))
                .expect("contract map type");
        vips.insert(key, zeroed_per_cpu(), 0)
            .expect("writing a VIP4");
    }

    pub fn add_vip6(&mut self, addr: std::net::Ipv6Addr, ifindex: u32) {
        let key = L2Vip6Key {
            addr_be: addr.octets(),
            ifindex,
        };
        let mut vips =
            PerCpuHashMap::<_, L2Vip6Key, L2VipStats>::try_from(self.map_mut(maps::L2_VIP6))
                .expect("contract map type");
        vips.insert(key, zeroed_per_cpu(), 0)
            .expect("writing a VIP6");
    }

    /// Answers counted for an owned IPv4 (VIP, ifindex), summed over CPUs.
    pub fn vip4_answered(&mut self, addr: std::net::Ipv4Addr, ifindex: u32) -> u64 {
        let key = L2Vip4Key {
            addr_be: addr.octets(),
            ifindex,
        };
        let vips = PerCpuHashMap::<_, L2Vip4Key, L2VipStats>::try_from(self.map_mut(maps::L2_VIP4))
            .expect("contract map type");
        let values = vips.get(&key, 0).expect("reading a VIP4");
        values.iter().map(|stats| stats.answered).sum()
    }

    pub fn vip6_answered(&mut self, addr: std::net::Ipv6Addr, ifindex: u32) -> u64 {
        let key = L2Vip6Key {
            addr_be: addr.octets(),
            ifindex,
        };
        let vips = PerCpuHashMap::<_, L2Vip6Key, L2VipStats>::try_from(self.map_mut(maps::L2_VIP6))
            .expect("contract map type");
        let values = vips.get(&key, 0).expect("reading a VIP6");
        values.iter().map(|stats| stats.answered).sum()
    }

    /// A fresh heartbeat (`CLOCK_MONOTONIC` now), [`DEFAULT_STALE_AFTER`], our contract
    /// version and the `reported` bits cleared: what the agent writes every tick.
    pub fn heartbeat(&mut self) {
        self.set_control(Control {
            heartbeat_ns: monotonic_ns(),
            stale_after_ns: DEFAULT_STALE_AFTER.as_nanos() as u64,
            contract_version: CONTRACT_VERSION,
            reported: 0,
        });
    }

    pub fn set_control(&mut self, control: Control) {
        let mut array =
            Array::<_, Control>::try_from(self.map_mut(maps::CONTROL)).expect("contract map type");
        array
            .set(CONTROL_INDEX, control, 0)
            .expect("writing control");
    }

    pub fn control(&mut self) -> Control {
        let array =
            Array::<_, Control>::try_from(self.map_mut(maps::CONTROL)).expect("contract map type");
        array.get(&CONTROL_INDEX, 0).expect("reading control")
    }

    /// Every reason counter, summed over CPUs, in [`Reason::ALL`] order.
    pub fn counters(&mut self) -> [u64; Reason::COUNT as usize] {
        let array = PerCpuArray::<_, u64>::try_from(self.map_mut(maps::COUNTERS))
            .expect("contract map type");
        let mut totals = [0; Reason::COUNT as usize];
        for reason in Reason::ALL {
            let values = array.get(&(reason as u32), 0).expect("reading a counter");
            totals[reason as usize] = values.iter().sum();
        }
        totals
    }

    /// Log records the program wrote since the last call.
    pub fn take_logs(&mut self) -> Vec<LogRecord> {
        self.logger.flush();
        std::mem::take(&mut *self.captured.0.lock().expect("log capture lock"))
    }

    /// A contract map by name; panics if the object lacks it. Converting it to a typed map
    /// (`HashMap::<_, K, V>::try_from`) checks the key and value sizes against the contract.
    pub fn map_mut(&mut self, name: &str) -> &mut Map {
        self.ebpf
            .map_mut(name)
            .unwrap_or_else(|| panic!("map {name} missing from the BPF object"))
    }

    /// Names of every map in the loaded object.
    pub fn map_names(&self) -> Vec<String> {
        self.ebpf.maps().map(|(name, _)| name.to_owned()).collect()
    }
}

fn zeroed_per_cpu() -> PerCpuValues<L2VipStats> {
    let cpus = nr_cpus().expect("counting possible CPUs");
    PerCpuValues::try_from(vec![L2VipStats::default(); cpus]).expect("one value per CPU")
}

/// One BPF_PROG_RUN of `program` on `frame`, with the output frame.
fn run_once(program: &Xdp, frame: &[u8], ingress_ifindex: u32) -> Result<RunOutput, ProgramError> {
    let mut out = vec![0u8; frame.len() + OUTPUT_SLACK];
    let ctx = xdp_md(frame.len(), ingress_ifindex);
    let result = program.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        ..TestRunOptions::default()
    })?;
    out.truncate(result.data_size_out as usize);
    Ok(RunOutput {
        verdict: result.return_value.into(),
        frame: out,
    })
}

/// A `struct __sk_buff` for BPF_PROG_RUN of a TC program whose packet arrived on
/// `ingress_ifindex`; every other field 0. Offset and size from the kernel's BTF (`bpftool btf
/// dump file /sys/kernel/btf/vmlinux`, `__sk_buff`).
pub fn sk_buff(ingress_ifindex: u32) -> Vec<u8> {
    const SIZE: usize = 192;
    const INGRESS_IFINDEX: usize = 36;
    let mut ctx = vec![0u8; SIZE];
    ctx[INGRESS_IFINDEX..INGRESS_IFINDEX + 4].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    ctx
}

/// The `struct xdp_md` BPF_PROG_RUN takes as context: data 0, data_end = frame length,
/// data_meta 0, ingress_ifindex, rx_queue_index 0, egress_ifindex 0.
pub fn xdp_md(frame_len: usize, ingress_ifindex: u32) -> Vec<u8> {
    [0, frame_len as u32, 0, ingress_ifindex, 0, 0]
        .iter()
        .flat_map(|field: &u32| field.to_ne_bytes())
        .collect()
}

/// Loads the XDP program `name` of `ebpf` into the kernel (panics naming what failed).
pub fn load_xdp(ebpf: &mut Ebpf, name: &str) {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .unwrap_or_else(|| panic!("the object has {name}"))
        .try_into()
        .unwrap_or_else(|e| panic!("{name} is XDP: {e}"));
    program
        .load()
        .unwrap_or_else(|e| panic!("the verifier accepts {name}: {e:?}"));
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
