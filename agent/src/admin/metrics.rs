//! `/metrics` in the Prometheus text format, every name prefixed `vipwire_`.

use std::fmt::Write;

use super::{AdminState, status::AgentStatus};

pub fn render(state: &AdminState) -> String {
    let status = AgentStatus::collect(state);
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP vipwire_{name} {help}");
        let _ = writeln!(out, "# TYPE vipwire_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "vipwire_{name}{labels} {value}");
        }
    };
    let one = |value: f64| vec![(String::new(), value)];
    gauge(
        "ready",
        "1 when /readyz answers 200.",
        "gauge",
        &one(f(status.ready)),
    );
    let input = &status.input;
    gauge(
        "source_ready",
        "1 when the source is synced and connected.",
        "gauge",
        &one(f(input.ready)),
    );
    gauge(
        "source_generation",
        "Snapshots the source has published.",
        "counter",
        &one(input.generation as f64),
    );
    gauge(
        "source_errors_total",
        "Watch or list errors (cluster), or 1 while the newest manifests are rejected.",
        "counter",
        &one(input.errors as f64),
    );
    gauge(
        "source_relists_total",
        "Lists after the first one (apiserver restarts, 410 Gone).",
        "counter",
        &one(input.relists as f64),
    );
    gauge(
        "reconciles_total",
        "Reconciles done (changes and periodic resyncs).",
        "counter",
        &one(status.reconciles as f64),
    );
    gauge(
        "owned_vips",
        "VIPs this node owns, by kind.",
        "gauge",
        &[
            (r#"{kind="l2"}"#.to_owned(), status.owned.l2.len() as f64),
            (r#"{kind="bgp"}"#.to_owned(), status.owned.bgp.len() as f64),
        ],
    );
    gauge(
        "frontends",
        "Frontends (VIP, port, protocol) of selected Services.",
        "gauge",
        &one(status.frontends.len() as f64),
    );
    gauge(
        "warnings",
        "Model warnings for the current snapshot.",
        "gauge",
        &one(status.warnings.len() as f64),
    );
    if let Some(bgp) = &status.bgp {
        for (name, help, kind, samples) in super::bgp::metrics(bgp) {
            gauge(name, help, kind, &samples);
        }
    }
    if let Some(dataplane) = &status.dataplane {
        let counters: Vec<_> = dataplane
            .counters
            .iter()
            .map(|(reason, value)| (format!(r#"{{reason="{reason}"}}"#), *value as f64))
            .collect();
        gauge(
            "xdp_packets_total",
            "Packets seen by the XDP program, by outcome.",
            "counter",
            &counters,
        );
        let answered: Vec<_> = dataplane
            .interfaces
            .iter()
            .flat_map(|i| {
                let interface = i.name.clone().unwrap_or_else(|| i.ifindex.to_string());
                i.vips.iter().map(move |v| {
                    (
                        format!(r#"{{vip="{}",interface="{interface}"}}"#, v.address),
                        v.answered as f64,
                    )
                })
            })
            .collect();
        gauge(
            "vip_answered_total",
            "ARP/NDP requests answered, per VIP and interface.",
            "counter",
            &answered,
        );
        if let Some(age) = dataplane.heartbeat.age_ms {
            gauge(
                "heartbeat_age_seconds",
                "Age of the agent heartbeat the XDP program sees.",
                "gauge",
                &one(age as f64 / 1000.0),
            );
        }
        gauge(
            "heartbeat_fresh",
            "1 while the XDP program answers (heartbeat fresh).",
            "gauge",
            &one(f(dataplane.heartbeat.fresh)),
        );
    }
    if !status.services.is_empty() {
        use crate::dataplane::l4::status::ServiceCounters;
        for (i, (field, help)) in ServiceCounters::FIELDS.iter().enumerate() {
            let samples: Vec<_> = status
                .services
                .iter()
                .filter_map(|svc| {
                    let value = svc.counters?.values()[i];
                    Some((format!(r#"{{frontend="{}"}}"#, svc.frontend), value as f64))
                })
                .collect();
            gauge(&format!("service_{field}_total"), help, "counter", &samples);
        }
        let backends: Vec<_> = status
            .services
            .iter()
            .flat_map(|svc| {
                ["active", "draining"].into_iter().map(move |state| {
                    let n = svc.backends.iter().filter(|b| b.state == state).count();
                    (
                        format!(r#"{{frontend="{}",state="{state}"}}"#, svc.frontend),
                        n as f64,
                    )
                })
            })
            .collect();
        gauge(
            "service_backends",
            "Local backends of each steered frontend, by state.",
            "gauge",
            &backends,
        );
    }
    gauge(
        "dataplane_readable",
        "1 when the pinned maps could be read.",
        "gauge",
        &one(f(status.dataplane.is_some())),
    );
    out
}

fn f(flag: bool) -> f64 {
    if flag { 1.0 } else { 0.0 }
}
