//! The `agent` area (issue 5): the real `vipwire` release binary with N synthetic LoadBalancer
//! Services × 10 endpoints, fed through the real kube-apiserver (testkit::KubeApi) and through
//! a manifests directory, at 1,000 and at 10,000 Services. Per run:
//! - startup: agent spawned → every VIP in the pinned `vipwire_l2_vip4_v1` map (the newest
//!   VIP probed every 2 ms, then a full count confirms);
//! - memory: the agent's RSS once everything is programmed, and its peak (`VmHWM`) after
//!   startup and all changes;
//! - change latency: one EndpointSlice change (all endpoints of one Service not ready → its VIP
//!   leaves the map; ready again → it comes back), from just before the write (apiserver PATCH
//!   sent, or manifest file renamed into place) until a pinned-map lookup sees it, polled every
//!   [`POLL`]. Changes are [`SPACING`] apart, so each is a lone change (the agent coalesces only
//!   bursts); the 1k→10k ratio shows whether a change's cost grows with the number of Services.
//!
//! The agent runs in the root network namespace (the apiserver listens on 127.0.0.1 there),
//! attached to one end of a veth pair made for the run and deleted afterwards.

mod cluster;
mod session;

use std::time::Duration;

use testkit::{
    bench::{Measurement, Report, Target},
    netlab::HostVeth,
};

const SIZES: [usize; 2] = [1_000, 10_000];
/// EndpointSlice changes measured per run (half withdraw a VIP, half bring it back).
const CHANGES: usize = 100;
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
/// Pause after a change is seen before the next one: longer than the agent's quiet windows
/// (10 ms in the sources and the run loop), so every change is measured as a lone one.
const SPACING: Duration = Duration::from_millis(50);

pub fn measure() -> Report {
    let binary = session::agent_binary();
    let veth = HostVeth::new("vwb", "");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    // For working on one source: VIPWIRE_BENCH_AGENT_ONLY=kube|manifests (the other is skipped).
    let only = std::env::var("VIPWIRE_BENCH_AGENT_ONLY").unwrap_or_default();
    let kube = if only.is_empty() || only == "kube" {
        runtime.block_on(cluster::kube_runs(&binary, &veth))
    } else {
        Vec::new()
    };
    let manifests = if only.is_empty() || only == "manifests" {
        cluster::manifests_runs(&binary, &veth)
    } else {
        Vec::new()
    };
    let mut report = Report::new("agent");
    push(&mut report, "kube", &kube);
    push(&mut report, "manifests", &manifests);
    report
}

/// What one agent run measured.
struct Run {
    services: usize,
    startup: Duration,
    /// RSS once everything is programmed.
    rss_kib: u64,
    hwm_kib: u64,
    /// Agent start → every takeover announcement logged (`None`: not within the wait).
    announced: Option<Duration>,
    /// Write → pinned map, one per change that got there in time, sorted.
    changes: Vec<Duration>,
    /// How long the write itself took (PATCH round trip, file write + rename), sorted.
    writes: Vec<Duration>,
}

fn push(report: &mut Report, source: &str, runs: &[Run]) {
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
        report.push(Measurement::new(
            format!("{source}: agent RSS when programmed @{size}"),
            run.rss_kib as f64 / 1024.0,
            "MiB",
        ));
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
}

fn label(services: usize) -> String {
    format!("{}k", services / 1000)
}

/// Nearest rank; `None` without samples.
fn percentile(sorted: &[Duration], p: usize) -> Option<Duration> {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use testkit::synthetic::vip;

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
