//! The heartbeat stays fresh while the agent works: with the shortest `--heartbeat-timeout`
//! (1 s), a first reconcile of a few thousand Services that runs longer than that must not
//! let the XDP program see a stale heartbeat (it would stop answering ARP/NDP for every VIP).
//!
//! The real agent binary, fed by a manifests directory, attached to the host end of a veth
//! pair; the test reads the pinned control map every few milliseconds, as the program would.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData};
use testkit::{
    agent::{self, BpffsDir},
    bpf::monotonic_ns,
    netlab::HostVeth,
    process::Daemon,
    synthetic,
};
use vipwire_common::{Control, control::CONTROL_INDEX, maps};

const NODE: &str = "node-hb";
const STALE_AFTER: Duration = Duration::from_secs(1);
/// Enough for a first reconcile well over [`STALE_AFTER`] in a debug build (~4 s here).
const SERVICES: usize = 10_000;
/// The scenario needs a reconcile at least this long; checked from the agent's log.
const LONG_RECONCILE: Duration = Duration::from_millis(1_500);
const PER_FILE: usize = 500;
const TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn a_long_reconcile_does_not_let_the_heartbeat_go_stale() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifests = dir.path().join("m");
    write_manifests(&manifests);
    let veth = HostVeth::new("vh", "h");
    let bpffs = BpffsDir::new("heartbeat");
    let mut agent = start_agent(&manifests, dir.path(), &veth, &bpffs);

    let control_pin = bpffs.path().join(maps::CONTROL);
    let started = Instant::now();
    let mut oldest = Duration::ZERO;
    let mut reconciled = None;
    // Sample until the first reconcile is logged, and one timeout beyond it.
    let mut until = None;
    while until.is_none_or(|until| Instant::now() < until) {
        agent.assert_running();
        assert!(
            started.elapsed() < TIMEOUT,
            "no reconcile within {TIMEOUT:?}\n{}",
            agent.log_tail()
        );
        if let Some(age) = heartbeat_age(&control_pin) {
            oldest = oldest.max(age);
        }
        if reconciled.is_none() {
            reconciled = first_reconcile(agent.log_path());
            if reconciled.is_some() {
                until = Some(Instant::now() + STALE_AFTER);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = reconciled.expect("the loop ends after the first reconcile");
    assert!(
        took >= LONG_RECONCILE,
        "the first reconcile took {took:?}, too short to show anything: raise SERVICES"
    );
    assert!(
        oldest < STALE_AFTER,
        "the heartbeat was {oldest:?} old during a {took:?} reconcile (timeout {STALE_AFTER:?})"
    );
    agent.stop(Duration::from_secs(10));
}

fn write_manifests(dir: &Path) {
    std::fs::create_dir(dir).expect("creating the manifests dir");
    std::fs::write(dir.join("node.yaml"), agent::ready_node_manifest(NODE)).unwrap();
    let services: Vec<usize> = (0..SERVICES).collect();
    for (n, chunk) in services.chunks(PER_FILE).enumerate() {
        let text: Vec<String> = chunk
            .iter()
            .map(|&i| synthetic::service_manifests(i, NODE, true))
            .collect();
        std::fs::write(dir.join(format!("services-{n}.yaml")), text.join("---\n")).unwrap();
    }
}

fn start_agent(manifests: &Path, dir: &Path, veth: &HostVeth, bpffs: &BpffsDir) -> Daemon {
    let mut command = Command::new(agent::binary());
    command
        .args(["run", "--manifests", manifests.to_str().unwrap()])
        .args(["--node-name", NODE, "--interface", veth.name()])
        .args(["--bpffs-dir", bpffs.as_str(), "--cleanup-on-exit"])
        .args(["--heartbeat-timeout", "1s"])
        .args(["--admin", &agent::free_loopback_port().to_string()])
        // The main loop logs each reconcile's duration at debug level.
        .env("RUST_LOG", "info,vipwire::run=debug");
    Daemon::spawn("vipwire (heartbeat)", command, &dir.join("agent.log"))
}

/// How old the pinned heartbeat is; `None` before the agent pinned and wrote it.
fn heartbeat_age(pin: &Path) -> Option<Duration> {
    let map = MapData::from_pin(pin).ok()?;
    let control = Array::<_, Control>::try_from(Map::Array(map)).expect("control is an array");
    let written = control.get(&CONTROL_INDEX, 0).ok()?.heartbeat_ns;
    (written != 0).then(|| Duration::from_nanos(monotonic_ns().saturating_sub(written)))
}

/// The duration of the first reconcile in the agent's log, once it is there.
fn first_reconcile(log: &Path) -> Option<Duration> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .find(|l| l.contains("reconciled") && l.contains("count=1 "))?;
    let micros = line.split("took_us=").nth(1)?.split_whitespace().next()?;
    Some(Duration::from_micros(micros.parse().ok()?))
}
