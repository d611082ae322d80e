//! `/status`: the agent's view as JSON (field names are stable), and its text form for
//! `vipwire status`.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::{AdminState, SourceWatch};
use crate::{
    dataplane::{
        l4::status::{self as l4_status, ServiceStatus},
        paths::PinPaths,
        status::{self as dp_status, DataplaneStatus, HeartbeatStatus, InterfaceStatus},
    },
    model::{BackendState, Warning},
};

/// How the agent's input is doing.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceView {
    /// `kubernetes` or `manifests`.
    pub kind: String,
    /// Synced (and, for the cluster, connected): snapshots can be trusted as current.
    pub ready: bool,
    /// The first full snapshot has arrived.
    pub synced: bool,
    /// The apiserver answers (always true for manifests).
    pub connected: bool,
    /// Snapshots published so far.
    pub generation: u64,
    /// Lists after the first one (apiserver restarts, 410 Gone); 0 for manifests.
    pub relists: u64,
    /// Watch/list errors so far (cluster); 0 or 1 (newest input rejected) for manifests.
    pub errors: u64,
    /// The newest error; the last good state stays in force meanwhile.
    pub error: Option<String>,
    pub warnings: Vec<String>,
}

impl SourceView {
    pub fn of(source: &SourceWatch) -> Self {
        match source {
            SourceWatch::Manifests { status, .. } => {
                let status = status.borrow();
                let synced = status.generation > 0;
                Self {
                    kind: "manifests".into(),
                    ready: synced,
                    synced,
                    connected: true,
                    generation: status.generation,
                    relists: 0,
                    errors: u64::from(status.error.is_some()),
                    error: status.error.clone(),
                    warnings: status.warnings.clone(),
                }
            }
            SourceWatch::Kubernetes { status, health } => {
                let (status, health) = (status.borrow().clone(), health.borrow().clone());
                Self {
                    kind: "kubernetes".into(),
                    ready: health.synced && health.connected,
                    synced: health.synced,
                    connected: health.connected,
                    generation: status.generation,
                    relists: health.relists,
                    errors: health.errors,
                    error: status.error,
                    warnings: status.warnings,
                }
            }
        }
    }
}

/// `GET /status`, and `vipwire status --json` while an agent answers: a superset of the
/// pinned-maps output (`bpffs_dir`, `heartbeat`, `interfaces`, `counters` at the top level),
/// so scripts reading those work whichever answered; `source` says which.
#[derive(Debug, Serialize)]
pub struct AgentStatus {
    /// Always `agent` (the pinned-maps fallback says `pinned-maps`).
    pub source: &'static str,
    pub node: String,
    /// `Eligible`, `Missing`, `NotReady`, `Cordoned` or `Excluded` (`null` before the first
    /// snapshot).
    pub node_state: Option<String>,
    pub ready: bool,
    pub input: SourceView,
    pub owned: Owned,
    pub objects: Objects,
    /// One entry per (VIP, port, protocol) of every selected Service.
    pub frontends: Vec<FrontendSummary>,
    /// IPv4 VIPs ending in .0 or .255 (served, but some clients drop them).
    pub buggy_vips: Vec<IpAddr>,
    /// Frontends claimed by two Services, as `frontend: kept over dropped`.
    pub conflicts: Vec<String>,
    pub warnings: Vec<String>,
    pub reconciles: u64,
    /// The BGP sessions, one per configured peer (`null` without a `bgp` config section).
    pub bgp: Option<super::bgp::BgpView>,
    /// Steered frontends (L4): the writer's view (with draining backends) and the pinned
    /// per-service counters; the same shape as the pinned-maps output's `services`.
    pub services: Vec<ServiceStatus>,
    /// The pinned maps as the agent reads them (absent when they cannot be read).
    #[serde(flatten)]
    pub dataplane: Option<DataplaneView>,
    pub dataplane_error: Option<String>,
}

/// [`DataplaneStatus`] without its `source` (the agent's status has its own).
#[derive(Debug, Serialize)]
pub struct DataplaneView {
    pub bpffs_dir: String,
    pub heartbeat: HeartbeatStatus,
    pub interfaces: Vec<InterfaceStatus>,
    pub counters: BTreeMap<&'static str, u64>,
}

impl From<DataplaneStatus> for DataplaneView {
    fn from(status: DataplaneStatus) -> Self {
        // `services` is the agent status's own field (it knows draining backends).
        Self {
            bpffs_dir: status.bpffs_dir,
            heartbeat: status.heartbeat,
            interfaces: status.interfaces,
            counters: status.counters,
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Owned {
    /// VIPs this node answers ARP/NDP for.
    pub l2: Vec<IpAddr>,
    /// VIPs this node announces over BGP.
    pub bgp: Vec<IpAddr>,
}

#[derive(Debug, Default, Serialize)]
pub struct Objects {
    pub services: usize,
    pub endpoint_slices: usize,
    pub nodes: usize,
}

#[derive(Debug, Serialize)]
pub struct FrontendSummary {
    pub frontend: String,
    pub service: String,
    pub active_backends: usize,
    pub draining_backends: usize,
}

impl AgentStatus {
    pub fn collect(state: &AdminState) -> Self {
        let reconciled = state.reconciled();
        let mut status = Self {
            source: "agent",
            node: state.node.clone(),
            node_state: None,
            ready: state.ready(),
            input: state.source_view(),
            owned: Owned::default(),
            objects: Objects::default(),
            frontends: Vec::new(),
            buggy_vips: Vec::new(),
            conflicts: Vec::new(),
            warnings: Vec::new(),
            reconciles: 0,
            bgp: state.bgp(),
            services: Vec::new(),
            dataplane: None,
            dataplane_error: None,
        };
        let paths = PinPaths::new(&state.bpffs_dir);
        match dp_status::read(&paths) {
            Ok(mut dataplane) => {
                status.services = std::mem::take(&mut dataplane.services);
                status.dataplane = Some(dataplane.into());
            }
            Err(err) => status.dataplane_error = Some(error_chain(&err)),
        }
        if let Some(view) = state.steering() {
            status.services = l4_status::from_view(&view, &paths);
        }
        let Some(reconciled) = reconciled else {
            return status;
        };
        let desired = &reconciled.desired;
        status.reconciles = reconciled.count;
        status.node_state = Some(format!("{:?}", desired.node));
        status.owned = Owned {
            l2: desired.l2.iter().copied().collect(),
            bgp: desired.bgp.iter().copied().collect(),
        };
        status.objects = Objects {
            services: reconciled.snapshot.services.len(),
            endpoint_slices: reconciled.snapshot.endpoint_slices.len(),
            nodes: reconciled.snapshot.nodes.len(),
        };
        status.frontends = desired
            .services
            .iter()
            .map(|(frontend, service)| FrontendSummary {
                frontend: frontend.to_string(),
                service: service.service.to_string(),
                active_backends: count(service, BackendState::Active),
                draining_backends: count(service, BackendState::Draining),
            })
            .collect();
        for warning in &desired.warnings {
            match warning {
                Warning::BuggyVip { vip, .. } => status.buggy_vips.push(*vip),
                Warning::FrontendConflict {
                    frontend,
                    kept,
                    dropped,
                } => status
                    .conflicts
                    .push(format!("{frontend}: {kept} kept over {dropped}")),
                _ => {}
            }
            status.warnings.push(warning.to_string());
        }
        status.buggy_vips.sort();
        status.buggy_vips.dedup();
        status
    }
}

fn count(service: &crate::model::DesiredService, state: BackendState) -> usize {
    service.backends.iter().filter(|b| b.state == state).count()
}

/// Why `/readyz` says no, in words.
pub fn not_ready_reason(state: &AdminState) -> String {
    let view = state.source_view();
    let mut reasons = Vec::new();
    if !view.synced {
        reasons.push(format!("{} source not synced", view.kind));
    }
    if !view.connected {
        reasons.push(format!("{} source not connected", view.kind));
    }
    if !*super::lock(&state.attached) {
        reasons.push("dataplane not attached".to_owned());
    }
    if state.reconciled().is_none() {
        reasons.push("no reconcile yet".to_owned());
    }
    reasons.join(", ")
}

/// The text form of an agent's `/status` JSON (parsed loosely: an older or newer agent still
/// prints what both know).
pub fn to_text(status: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    let list = |v: &serde_json::Value| {
        v.as_array()
            .map(|items| items.iter().map(s).collect::<Vec<_>>().join(", "))
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "none".to_owned())
    };
    let input = &status["input"];
    let mut out = format!(
        "agent on node {} ({}): {}\n",
        s(&status["node"]),
        s(&status["node_state"]),
        if status["ready"].as_bool() == Some(true) {
            "ready"
        } else {
            "NOT ready"
        }
    );
    out.push_str(&format!(
        "input: {} generation {}, synced {}, connected {}, relists {}, errors {}{}\n",
        s(&input["kind"]),
        s(&input["generation"]),
        s(&input["synced"]),
        s(&input["connected"]),
        s(&input["relists"]),
        s(&input["errors"]),
        input["error"]
            .as_str()
            .map(|e| format!(" (newest error: {e})"))
            .unwrap_or_default()
    ));
    let objects = &status["objects"];
    out.push_str(&format!(
        "objects: {} services, {} endpoint slices, {} nodes\n",
        s(&objects["services"]),
        s(&objects["endpoint_slices"]),
        s(&objects["nodes"])
    ));
    out.push_str(&format!("owned (L2): {}\n", list(&status["owned"]["l2"])));
    out.push_str(&format!("owned (BGP): {}\n", list(&status["owned"]["bgp"])));
    if let Some(frontends) = status["frontends"].as_array() {
        out.push_str("frontends:\n");
        for f in frontends {
            out.push_str(&format!(
                "  {:<32} {:<28} active {} draining {}\n",
                s(&f["frontend"]),
                s(&f["service"]),
                s(&f["active_backends"]),
                s(&f["draining_backends"])
            ));
        }
    }
    if let Some(warnings) = status["warnings"].as_array() {
        for w in warnings {
            out.push_str(&format!("warning: {}\n", s(w)));
        }
    }
    out.push_str(&super::bgp::to_text(status));
    if let Some(services) = status["services"].as_array()
        && !services.is_empty()
    {
        out.push_str("steered services:\n");
        for svc in services {
            let c = &svc["counters"];
            out.push_str(&format!(
                "  {:<32} id {:<5} maglev {:<5} packets {} new_flows {} replies {} denied {} no_backend {}\n",
                s(&svc["frontend"]),
                s(&svc["service_id"]),
                s(&svc["maglev_size"]),
                s(&c["packets"]),
                s(&c["new_flows"]),
                s(&c["replies"]),
                s(&c["source_denied"]),
                s(&c["no_backend"])
            ));
            for b in svc["backends"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "    {:<40} id {:<6} {:<8} ifindex {} ({})\n",
                    format!("{}:{}", s(&b["address"]), s(&b["port"])),
                    s(&b["id"]),
                    s(&b["state"]),
                    s(&b["ifindex"]),
                    s(&b["delivery"])
                ));
            }
        }
    }
    let dataplane = status;
    if dataplane["heartbeat"].is_object() {
        let heartbeat = &dataplane["heartbeat"];
        out.push_str(&format!(
            "heartbeat: {} ms ago -> {}\n",
            s(&heartbeat["age_ms"]),
            if heartbeat["fresh"].as_bool() == Some(true) {
                "answering"
            } else {
                "NOT answering"
            }
        ));
        if let Some(counters) = dataplane["counters"].as_object() {
            out.push_str("counters:\n");
            let sorted: BTreeMap<_, _> = counters.iter().collect();
            for (name, value) in sorted {
                out.push_str(&format!("  {name:<20} {}\n", s(value)));
            }
        }
    } else if let Some(error) = status["dataplane_error"].as_str() {
        out.push_str(&format!("dataplane: {error}\n"));
    }
    out
}

pub(super) use crate::error_chain;
