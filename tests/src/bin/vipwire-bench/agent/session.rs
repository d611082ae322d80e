//! One agent run: start it, wait until everything is programmed, time the changes.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData, PerCpuHashMap};
use testkit::{agent::BpffsDir, netlab::HostVeth, process::Daemon, synthetic::vip};
use vipwire::dataplane::paths::PinPaths;
use vipwire_common::{L2Vip4Key, L2VipStats, maps};

use super::{
    ANNOUNCE_WAIT, CHANGE_TIMEOUT, CHANGES, NODE, POLL, Run, SPACING, START_TIMEOUT,
    cluster::changed_service,
};

// ---------------------------------------------------------------------------------------------
// One agent run.

/// Starts `vipwire run` (`command` carries the source's environment, `extra_args` its flags),
/// waits until all `services` VIPs are in the map, then makes [`CHANGES`] changes with
/// `change(n)` and times each.
pub(super) fn run_agent(
    mut command: Command,
    extra_args: &[String],
    services: usize,
    veth: &HostVeth,
    source: &str,
    mut change: impl FnMut(usize) -> Write,
) -> Run {
    let bpffs = BpffsDir::new(&format!("bench-agent-{services}"));
    let admin = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let ifindex = vipwire::dataplane::iface::lookup(veth.name())
        .expect("the bench veth")
        .ifindex;
    command
        .args(["run", "--node-name", NODE, "--interface", veth.name()])
        .args(["--bpffs-dir", bpffs.as_str(), "--admin", &admin.to_string()])
        .arg("--cleanup-on-exit")
        .args(extra_args);
    // Kept after the run (beside the JSON report) for a look at what the agent did.
    let log_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench/agent-logs");
    std::fs::create_dir_all(&log_dir).expect("creating the agent log dir");
    let log = log_dir.join(format!("{source}-{services}.log"));
    let started = Instant::now();
    let mut agent = Daemon::spawn("vipwire (bench)", command, &log);
    let map = wait_programmed(&mut agent, bpffs.path(), services, ifindex);
    let startup = started.elapsed();
    let rss_kib = proc_status_kib(agent.pid(), "VmRSS:");
    eprintln!(
        "agent bench: {services} VIPs programmed {startup:?} after start (log {})",
        log.display()
    );

    let announced = wait_announced(&log, services, started);

    let mut changes = Vec::with_capacity(CHANGES);
    let mut writes = Vec::with_capacity(CHANGES);
    for n in 0..CHANGES {
        let (i, ready) = changed_service(n);
        let key = L2Vip4Key {
            addr_be: vip(i).octets(),
            ifindex,
        };
        let begin = Instant::now();
        let write = change(n);
        let seen = loop {
            if map.get(&key, 0).is_ok() == ready {
                break Some(begin.elapsed());
            }
            if begin.elapsed() > CHANGE_TIMEOUT {
                break None;
            }
            std::thread::sleep(POLL);
        };
        let finished = write.finished();
        let Some(seen) = seen else {
            // Later changes would only queue behind this one: stop, and say so.
            eprintln!(
                "agent bench: change {n} (service {i} ready={ready}) not in the map after \
                 {CHANGE_TIMEOUT:?} (write finished: {finished}); {} of {CHANGES} changes \
                 measured; agent log {}",
                changes.len(),
                log.display()
            );
            break;
        };
        changes.push(seen);
        writes.push(write.done_at() - begin);
        // A lone change each time: the agent coalesces only changes that come close together.
        std::thread::sleep(SPACING);
    }
    let hwm_kib = proc_status_kib(agent.pid(), "VmHWM:");
    agent.assert_running();
    let _ = agent.stop(Duration::from_secs(10));
    changes.sort();
    writes.sort();
    Run {
        services,
        startup,
        rss_kib,
        hwm_kib,
        announced,
        changes,
        writes,
    }
}

/// A change's write: finished when the closure returns (files), or a task on the runtime
/// (kube) that reports when its request was answered.
pub(super) enum Write {
    Done(Instant),
    Task(tokio::task::JoinHandle<Instant>),
}

impl Write {
    fn finished(&self) -> bool {
        match self {
            Write::Done(_) => true,
            Write::Task(task) => task.is_finished(),
        }
    }

    fn done_at(self) -> Instant {
        match self {
            Write::Done(at) => at,
            // Called on the thread inside `block_on`, not a runtime worker: blocking is fine.
            Write::Task(task) => futures::executor::block_on(task).expect("the write task"),
        }
    }
}

type L2Map = PerCpuHashMap<MapData, L2Vip4Key, L2VipStats>;

/// Probes the highest VIP (written last: the writer goes in address order) every 2 ms, then
/// confirms with a full count.
fn wait_programmed(agent: &mut Daemon, bpffs: &Path, services: usize, ifindex: u32) -> L2Map {
    let path = PinPaths::new(bpffs).map(maps::L2_VIP4);
    let last = L2Vip4Key {
        addr_be: vip(services - 1).octets(),
        ifindex,
    };
    let started = Instant::now();
    let mut map: Option<L2Map> = None;
    loop {
        assert!(
            started.elapsed() < START_TIMEOUT,
            "{services} VIPs not programmed after {START_TIMEOUT:?}; log:\n{}",
            agent.log_tail()
        );
        agent.assert_running();
        if map.is_none() {
            map = MapData::from_pin(&path)
                .ok()
                .and_then(|data| L2Map::try_from(Map::PerCpuHashMap(data)).ok());
        }
        if let Some(m) = &map
            && m.get(&last, 0).is_ok()
            && m.keys().filter(Result::is_ok).count() == services
        {
            return map.expect("checked");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits (up to [`ANNOUNCE_WAIT`]) until the agent logged a takeover announcement (or its
/// failure) for every VIP.
fn wait_announced(log: &Path, services: usize, started: Instant) -> Option<Duration> {
    let deadline = Instant::now() + ANNOUNCE_WAIT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let done = text
            .lines()
            .filter(|l| {
                l.contains("announced VIP takeover") || l.contains("L2 announcement failed")
            })
            .count();
        if done >= services {
            return Some(started.elapsed());
        }
        if Instant::now() > deadline {
            eprintln!(
                "agent bench: {done} of {services} takeover announcements done after {:?}",
                started.elapsed()
            );
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/{pid}/status"))
}

/// The release `vipwire` beside this binary (`cargo xtask bench` builds it first).
pub(super) fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    let binary = exe.with_file_name("vipwire");
    assert!(
        binary.is_file(),
        "{} not found: run `cargo build --release -p vipwire` (cargo xtask bench does)",
        binary.display()
    );
    binary
}
