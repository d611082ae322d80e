//! The admin state without IO: readiness rules, the status summary and the metrics text.

use std::{collections::BTreeSet, net::IpAddr, sync::Arc};

use tokio::sync::watch;

use super::{AdminState, Reconciled, SourceWatch, metrics, status::AgentStatus};
use crate::{
    model::{Desired, NodeState, Warning},
    snapshot::ObjectKey,
    source::{SourceStatus, kube::KubeHealth},
};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn reconciled() -> Reconciled {
    let desired = Desired {
        node: NodeState::Eligible,
        l2: BTreeSet::from([ip("203.0.113.10"), ip("203.0.113.255")]),
        bgp: BTreeSet::new(),
        services: Default::default(),
        warnings: vec![Warning::BuggyVip {
            service: ObjectKey::new("default", "edge"),
            vip: ip("203.0.113.255"),
        }],
    };
    Reconciled {
        desired: Arc::new(desired),
        snapshot: Arc::default(),
        count: 3,
    }
}

fn kube_state() -> (
    AdminState,
    watch::Sender<SourceStatus>,
    watch::Sender<KubeHealth>,
) {
    let (status_tx, status) = watch::channel(SourceStatus::default());
    let (health_tx, health) = watch::channel(KubeHealth::default());
    let state = AdminState::new(
        "node-a".into(),
        "/nonexistent/vipwire".into(),
        SourceWatch::Kubernetes { status, health },
    );
    (state, status_tx, health_tx)
}

#[test]
fn ready_needs_synced_connected_attached_and_a_reconcile() {
    let (state, _status, health) = kube_state();
    assert!(!state.ready());
    state.set_attached(true);
    state.set_reconciled(reconciled());
    assert!(!state.ready(), "not synced yet");
    health.send_modify(|h| h.synced = true);
    assert!(!state.ready(), "synced but not connected");
    health.send_modify(|h| h.connected = true);
    assert!(state.ready());
    // An outage: the state stays, readiness goes.
    health.send_modify(|h| h.connected = false);
    assert!(!state.ready());
    assert_eq!(state.reconciled().unwrap().count, 3);
}

#[test]
fn manifests_are_ready_after_the_first_good_load_even_while_rejecting() {
    let (status_tx, status) = watch::channel(SourceStatus::default());
    let state = AdminState::new(
        "node-a".into(),
        "/nonexistent".into(),
        SourceWatch::Manifests {
            dir: "/m".into(),
            status,
        },
    );
    state.set_attached(true);
    state.set_reconciled(reconciled());
    assert!(!state.ready());
    status_tx.send_modify(|s| s.generation = 1);
    assert!(state.ready());
    // A broken edit keeps the last good state in force: still ready, error reported.
    status_tx.send_modify(|s| s.error = Some("bad.yaml: oops".into()));
    assert!(state.ready());
    assert_eq!(state.source_view().error.as_deref(), Some("bad.yaml: oops"));
}

#[test]
fn status_lists_owned_and_buggy_vips_and_the_unreadable_dataplane() {
    let (state, _status, health) = kube_state();
    health.send_modify(|h| {
        h.synced = true;
        h.connected = true;
        h.relists = 2;
    });
    state.set_attached(true);
    state.set_reconciled(reconciled());
    let status = AgentStatus::collect(&state);
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["source"], "agent");
    assert_eq!(json["node_state"], "Eligible");
    assert_eq!(
        json["owned"]["l2"],
        serde_json::json!(["203.0.113.10", "203.0.113.255"])
    );
    assert_eq!(json["buggy_vips"], serde_json::json!(["203.0.113.255"]));
    assert_eq!(json["input"]["relists"], 2);
    // No pinned maps: no dataplane fields, an error instead.
    assert!(json.get("interfaces").is_none());
    assert!(json["dataplane_error"].is_string());
    let text = super::status::to_text(&json);
    assert!(
        text.contains("owned (L2): 203.0.113.10, 203.0.113.255"),
        "{text}"
    );
}

#[test]
fn metrics_are_prefixed_and_typed() {
    let (state, _status, _health) = kube_state();
    state.set_reconciled(reconciled());
    let text = metrics::render(&state);
    assert!(
        text.contains("vipwire_owned_vips{kind=\"l2\"} 2\n"),
        "{text}"
    );
    assert!(text.contains("vipwire_ready 0\n"), "{text}");
    assert!(text.contains("vipwire_dataplane_readable 0\n"), "{text}");
    for line in text.lines() {
        assert!(
            line.starts_with("vipwire_")
                || line.starts_with("# HELP vipwire_")
                || line.starts_with("# TYPE vipwire_"),
            "{line}"
        );
    }
}

fn peer(address: &str, state: crate::bgp::State, error: Option<&str>) -> crate::bgp::PeerStatus {
    let established = state == crate::bgp::State::Established;
    crate::bgp::PeerStatus {
        address: ip(address),
        asn: 65001,
        state,
        uptime: established.then(|| std::time::Duration::from_secs(42)),
        routes_announced: if established { 3 } else { 0 },
        updates_received: 7,
        last_error: error.map(str::to_owned),
    }
}

#[test]
fn bgp_sessions_reach_status_metrics_text_and_doctor() {
    use super::doctor::Level;
    use crate::bgp::State;

    let (state, _status, _health) = kube_state();
    let json = serde_json::to_value(AgentStatus::collect(&state)).unwrap();
    assert!(json["bgp"].is_null(), "no BGP configured: {json}");
    assert!(!metrics::render(&state).contains("vipwire_bgp_"));

    state.set_bgp(vec![
        peer("10.0.5.1", State::Established, None),
        peer(
            "10.0.6.1",
            State::Active,
            Some("connect: connection refused"),
        ),
        peer("2001:db8::1", State::OpenSent, None),
    ]);
    let json = serde_json::to_value(AgentStatus::collect(&state)).unwrap();
    let peers = json["bgp"]["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 3);
    assert_eq!(peers[0]["address"], "10.0.5.1");
    assert_eq!(peers[0]["asn"], 65001);
    assert_eq!(peers[0]["state"], "Established");
    assert_eq!(peers[0]["established"], true);
    assert!(peers[0]["uptime_seconds"].as_u64().unwrap() >= 42);
    assert_eq!(peers[0]["routes_announced"], 3);
    assert_eq!(peers[0]["updates_received"], 7);
    assert!(peers[0]["last_error"].is_null());
    assert_eq!(peers[1]["state"], "Active");
    assert!(peers[1]["uptime_seconds"].is_null());
    assert_eq!(peers[1]["last_error"], "connect: connection refused");

    let text = metrics::render(&state);
    for line in [
        "vipwire_bgp_session_established{peer=\"10.0.5.1\"} 1\n",
        "vipwire_bgp_session_established{peer=\"10.0.6.1\"} 0\n",
        "vipwire_bgp_routes_announced{peer=\"10.0.5.1\"} 3\n",
        "vipwire_bgp_updates_received_total{peer=\"2001:db8::1\"} 7\n",
        "# TYPE vipwire_bgp_updates_received_total counter\n",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }

    let checks = super::bgp::doctor_checks(&json);
    let levels: Vec<Level> = checks.iter().map(|c| c.level).collect();
    assert_eq!(levels, [Level::Ok, Level::Fail, Level::Warn], "{checks:?}");
    assert!(checks[1].what.contains("connection refused"), "{checks:?}");

    let text = super::status::to_text(&json);
    assert!(text.contains("bgp peers:"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("10.0.5.1") && l.contains("Established") && l.contains("routes 3")),
        "{text}"
    );
}
