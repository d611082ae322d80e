//! The `agent` area (issue 5): the real `vipwire` release binary with N synthetic LoadBalancer
//! Services × 10 endpoints, fed through the real kube-apiserver (testkit::KubeApi) and through
//! a manifests directory, at 1,000 and at 10,000 Services. Per run:
//! - startup: agent spawned → every VIP in the pinned `vipwire_l2_vip4_v1` map (the newest
//!   VIP probed every 2 ms, then a full count confirms);
//! - memory: the agent's peak RSS (`VmHWM`) after startup and all changes;
//! - change latency: one EndpointSlice change (all endpoints of one Service not ready → its VIP
//!   leaves the map; ready again → it comes back), from just before the write (apiserver PATCH
//!   sent, or manifest file renamed into place) until a pinned-map lookup sees it, polled every
//!   1 ms. The floor is that poll plus the debounces on the way (run loop 50 ms, plus the kube
//!   source's 100 ms or the manifests watcher's 150 ms), so a p99 under 20 ms is out of reach
//!   by design; the 1k→10k ratio shows whether a change's cost grows with the number of
//!   Services.
//!
//! The agent runs in the root network namespace (the apiserver listens on 127.0.0.1 there),
//! attached to one end of a veth pair made for the run and deleted afterwards.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData, PerCpuHashMap};
use futures::{StreamExt, stream};
use k8s_openapi::api::{
    core::v1::{Service, ServicePort, ServiceSpec},
    discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::json;
use testkit::{
    KubeApi,
    agent::BpffsDir,
    bench::{Measurement, Report, Target},
    netlab::HostVeth,
    process::Daemon,
};
use vipwire::dataplane::paths::PinPaths;
use vipwire_common::{L2Vip4Key, L2VipStats, maps};

const SIZES: [usize; 2] = [1_000, 10_000];
const ENDPOINTS: usize = 10;
/// EndpointSlice changes measured per run (half withdraw a VIP, half bring it back).
const CHANGES: usize = 60;
/// Requests in flight while filling the apiserver.
const CREATE_CONCURRENCY: usize = 32;
/// Manifests per file (the Services whose slices change live in files of their own).
const PER_FILE: usize = 500;
const NODE: &str = "bench-node";
const START_TIMEOUT: Duration = Duration::from_secs(120);
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to let the agent's takeover announcements (3 gratuitous ARPs per new VIP) run
/// before changes are measured: they share the agent's runtime with the reconcile loop.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(1);
/// The agent's reconcile debounce (agent/src/run.rs): no change reaches the maps sooner.
const AGENT_DEBOUNCE_MS: f64 = 50.0;
/// The sources' own debounce on top of it (agent/src/source/kube.rs, manifests/watch.rs).
const KUBE_DEBOUNCE_MS: f64 = 100.0;
const MANIFESTS_DEBOUNCE_MS: f64 = 150.0;

pub fn measure() -> Report {
    let binary = agent_binary();
    let veth = HostVeth::new("vwb", "");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let kube = runtime.block_on(kube_runs(&binary, &veth));
    let manifests = manifests_runs(&binary, &veth);
    let mut report = Report::new("agent");
    push(
        &mut report,
        "kube",
        &kube,
        AGENT_DEBOUNCE_MS + KUBE_DEBOUNCE_MS,
    );
    push(
        &mut report,
        "manifests",
        &manifests,
        AGENT_DEBOUNCE_MS + MANIFESTS_DEBOUNCE_MS,
    );
    report
}

/// What one agent run measured.
struct Run {
    services: usize,
    startup: Duration,
    hwm_kib: u64,
    /// Agent start → every takeover announcement logged (`None`: not within the wait).
    announced: Option<Duration>,
    /// Write → pinned map, one per change that got there in time, sorted.
    changes: Vec<Duration>,
    /// How long the write itself took (PATCH round trip, file write + rename), sorted.
    writes: Vec<Duration>,
}

fn push(report: &mut Report, source: &str, runs: &[Run], floor_ms: f64) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    // No samples (every change timed out): NaN in the table, null in the JSON.
    let pms = |d: Option<Duration>| d.map_or(f64::NAN, ms);
    for run in runs {
        let size = label(run.services);
        let target = |t| {
            if run.services == SIZES[1] {
                t
            } else {
                Target::Informational
            }
        };
        report.push(
            Measurement::new(
                format!("{source}: start -> all programmed @{size}"),
                ms(run.startup),
                "ms",
            )
            .target(target(Target::ValueAtMost(5000.0))),
        );
        report.push(
            Measurement::new(
                format!("{source}: agent peak RSS @{size}"),
                run.hwm_kib as f64 / 1024.0,
                "MiB",
            )
            .target(target(Target::ValueAtMost(150.0))),
        );
        report.push(Measurement::new(
            format!("{source}: start -> L2 announcements done @{size}"),
            run.announced.map_or(f64::NAN, ms),
            "ms",
        ));
        report.push(Measurement::new(
            format!("{source}: changes measured @{size}"),
            run.changes.len() as f64,
            "count",
        ));
        report.push(Measurement::new(
            format!("{source}: change -> map p50 @{size}"),
            pms(percentile(&run.changes, 50)),
            "ms",
        ));
        report.push(
            Measurement::new(
                format!("{source}: change -> map p99 @{size}"),
                pms(percentile(&run.changes, 99)),
                "ms",
            )
            .target(Target::ValueAtMost(20.0)),
        );
        report.push(Measurement::new(
            format!("{source}: write itself p50 @{size}"),
            pms(percentile(&run.writes, 50)),
            "ms",
        ));
    }
    if let [small, large] = runs {
        for p in [50, 99] {
            report.push(
                Measurement::new(
                    format!(
                        "{source}: change p{p} @{} vs @{}",
                        label(large.services),
                        label(small.services)
                    ),
                    pms(percentile(&large.changes, p)),
                    "ms",
                )
                .against(
                    format!("p{p} @{}", label(small.services)),
                    pms(percentile(&small.changes, p)),
                )
                .target(Target::RatioAtMost(1.5)),
            );
        }
    }
    report.push(Measurement::new(
        format!("{source}: change floor (debounce + 1 ms poll)"),
        floor_ms + ms(POLL),
        "ms",
    ));
}

fn label(services: usize) -> String {
    format!("{}k", services / 1000)
}

/// Nearest rank; `None` without samples.
fn percentile(sorted: &[Duration], p: usize) -> Option<Duration> {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

// ---------------------------------------------------------------------------------------------
// The synthetic cluster.

/// Service `i`'s VIP: 198.18.0.0/15 (benchmarking), never .0 or .255.
fn vip(i: usize) -> Ipv4Addr {
    let (hi, lo) = (i / 250, i % 250 + 1);
    Ipv4Addr::new(198, 18 + (hi / 256) as u8, (hi % 256) as u8, lo as u8)
}

fn name(i: usize) -> String {
    format!("svc-{i}")
}

/// Endpoint `e` of Service `i`: unique pod addresses in 10.128.0.0/9.
fn endpoint_ip(i: usize, e: usize) -> String {
    let n = i * ENDPOINTS + e;
    format!("10.{}.{}.{}", 128 + n / 65_536, (n / 256) % 256, n % 256)
}

/// Services 0..CHANGES/2 are the ones whose slices change.
fn changed_service(change: usize) -> (usize, bool) {
    (change / 2, change % 2 == 1)
}

// ---------------------------------------------------------------------------------------------
// Through the apiserver.

async fn kube_runs(binary: &Path, veth: &HostVeth) -> Vec<Run> {
    let kube = KubeApi::start();
    let client = kube.client().await;
    let ns = kube.namespace().await;
    testkit::kube::create_ready_node(&client, NODE).await;
    let mut runs = Vec::new();
    let mut created = 0;
    for services in SIZES {
        let started = Instant::now();
        stream::iter(created..services)
            .map(|i| create_service(&client, &ns, i))
            .buffer_unordered(CREATE_CONCURRENCY)
            .collect::<Vec<()>>()
            .await;
        eprintln!(
            "agent bench: {} Services created in the apiserver in {:?}",
            services - created,
            started.elapsed()
        );
        created = services;
        let mut command = Command::new(binary);
        command.env("KUBECONFIG", kube.kubeconfig());
        let slices = Api::<EndpointSlice>::namespaced(client.clone(), &ns);
        let run = run_agent(command, &[], services, veth, "kube", |change| {
            let (i, ready) = changed_service(change);
            let slices = slices.clone();
            Write::Task(tokio::spawn(async move {
                let patch = json!({ "endpoints": endpoints(i, ready) });
                slices
                    .patch(
                        &format!("{}-1", name(i)),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await
                    .expect("patching the EndpointSlice");
                Instant::now()
            }))
        });
        runs.push(run);
    }
    runs
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        ..ObjectMeta::default()
    }
}

async fn create_service(client: &Client, ns: &str, i: usize) {
    let service = Service {
        metadata: meta(&name(i), Some(ns)),
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".to_owned()),
            external_traffic_policy: Some("Cluster".to_owned()),
            // 10,000 LoadBalancer Services do not fit the NodePort range.
            allocate_load_balancer_node_ports: Some(false),
            selector: Some(BTreeMap::from([("app".to_owned(), name(i))])),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: 80,
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let services = Api::<Service>::namespaced(client.clone(), ns);
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap_or_else(|e| panic!("creating Service {}: {e}", name(i)));
    services
        .patch_status(
            &name(i),
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "status": { "loadBalancer": { "ingress": [{ "ip": vip(i) }] } } }),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("setting the ingress of {}: {e}", name(i)));
    let mut metadata = meta(&format!("{}-1", name(i)), Some(ns));
    metadata.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".to_owned(),
        name(i),
    )]));
    let slice = EndpointSlice {
        metadata,
        address_type: "IPv4".to_owned(),
        endpoints: endpoints(i, true),
        ports: Some(vec![EndpointPort {
            name: Some("http".to_owned()),
            port: Some(8080),
            protocol: Some("TCP".to_owned()),
            ..EndpointPort::default()
        }]),
    };
    Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &slice)
        .await
        .unwrap_or_else(|e| panic!("creating the slice of {}: {e}", name(i)));
}

fn endpoints(i: usize, ready: bool) -> Vec<Endpoint> {
    (0..ENDPOINTS)
        .map(|e| Endpoint {
            addresses: vec![endpoint_ip(i, e)],
            node_name: Some(NODE.to_owned()),
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(ready),
                terminating: Some(false),
            }),
            ..Endpoint::default()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Through a manifests directory.

fn manifests_runs(binary: &Path, veth: &HostVeth) -> Vec<Run> {
    let dir = tempfile::tempdir().expect("temp dir");
    SIZES
        .iter()
        .map(|&services| {
            let manifests = dir.path().join(format!("manifests-{services}"));
            write_manifests(&manifests, services);
            let command = Command::new(binary);
            let extra = ["--manifests".to_owned(), manifests.display().to_string()];
            run_agent(command, &extra, services, veth, "manifests", |change| {
                let (i, ready) = changed_service(change);
                write_atomically(
                    &manifests,
                    &format!("churn-{i}.yaml"),
                    &service_yaml(i, ready),
                );
                Write::Done(Instant::now())
            })
        })
        .collect()
}

fn write_manifests(dir: &Path, services: usize) {
    std::fs::create_dir_all(dir).expect("creating the manifests dir");
    let node = format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {NODE}\nstatus:\n  conditions:\n  - type: Ready\n    status: \"True\"\n"
    );
    std::fs::write(dir.join("node.yaml"), node).expect("writing node.yaml");
    let churned = CHANGES / 2;
    for i in 0..churned.min(services) {
        write_atomically(dir, &format!("churn-{i}.yaml"), &service_yaml(i, true));
    }
    let rest: Vec<usize> = (churned..services).collect();
    for (n, chunk) in rest.chunks(PER_FILE).enumerate() {
        let text: Vec<String> = chunk.iter().map(|&i| service_yaml(i, true)).collect();
        std::fs::write(dir.join(format!("services-{n}.yaml")), text.join("---\n"))
            .expect("writing manifests");
    }
}

fn service_yaml(i: usize, ready: bool) -> String {
    let name = name(i);
    let vip = vip(i);
    let mut text = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  type: LoadBalancer\n  ports:\n  - name: http\n    port: 80\n    protocol: TCP\n    targetPort: 8080\nstatus:\n  loadBalancer:\n    ingress:\n    - ip: \"{vip}\"\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n- name: http\n  port: 8080\n  protocol: TCP\nendpoints:\n"
    );
    for e in 0..ENDPOINTS {
        text.push_str(&format!(
            "- addresses: [\"{}\"]\n  nodeName: {NODE}\n  conditions:\n    ready: {ready}\n    serving: {ready}\n    terminating: false\n",
            endpoint_ip(i, e)
        ));
    }
    text
}

/// Write then rename: the agent never reads a half-written file.
fn write_atomically(dir: &Path, file: &str, text: &str) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).expect("writing a manifest");
    std::fs::rename(&tmp, dir.join(file)).expect("renaming a manifest");
}

// ---------------------------------------------------------------------------------------------
// One agent run.

/// Starts `vipwire run` (`command` carries the source's environment, `extra_args` its flags),
/// waits until all `services` VIPs are in the map, then makes [`CHANGES`] changes with
/// `change(n)` and times each.
fn run_agent(
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
        // Let the agent settle so consecutive changes are not debounced into one.
        std::thread::sleep(Duration::from_millis(20));
    }
    let hwm_kib = proc_status_kib(agent.pid(), "VmHWM:");
    agent.assert_running();
    let _ = agent.stop(Duration::from_secs(10));
    changes.sort();
    writes.sort();
    Run {
        services,
        startup,
        hwm_kib,
        announced,
        changes,
        writes,
    }
}

/// A change's write: finished when the closure returns (files), or a task on the runtime
/// (kube) that reports when its request was answered.
enum Write {
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
fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    let binary = exe.with_file_name("vipwire");
    assert!(
        binary.is_file(),
        "{} not found: run `cargo build --release -p vipwire` (cargo xtask bench does)",
        binary.display()
    );
    binary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vips_are_unique_and_never_end_in_0_or_255() {
        let vips: std::collections::BTreeSet<_> = (0..SIZES[1]).map(vip).collect();
        assert_eq!(vips.len(), SIZES[1]);
        assert!(vips.iter().all(|v| !matches!(v.octets()[3], 0 | 255)));
        // The writer goes in address order: the last Service has the highest VIP.
        assert_eq!(vips.last(), Some(&vip(SIZES[1] - 1)));
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 50), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&samples, 99), Some(Duration::from_millis(99)));
        assert_eq!(
            percentile(&samples[..1], 99),
            Some(Duration::from_millis(1))
        );
        assert_eq!(percentile(&[], 50), None);
    }
}
