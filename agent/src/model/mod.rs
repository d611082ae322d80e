//! The desired state of one node: a pure function of a [`Snapshot`] and a little config.
//!
//! [`desired`] does no IO and reads no clock; the reconciler diffs two [`Desired`] values and
//! applies the difference to the BPF maps, the BGP speaker and the L2 announcer.
//!
//! The rules (DESIGN.md, "Ownership rules"), and the choices made where the API is silent:
//! - A Service counts when it is `type: LoadBalancer`, is not being deleted, and matches the
//!   class filter (config `None`: only Services without `spec.loadBalancerClass`; `Some(c)`: only
//!   class `c`). Its VIPs are the `ip`s of `status.loadBalancer.ingress` (IPv4 and IPv6;
//!   hostname-only entries are skipped; unparsable ones are a [`Warning`]).
//! - Every (VIP, port, protocol) is a [`Frontend`]. When two Services claim the same frontend,
//!   the one created first keeps it (then the smaller `namespace/name`); the other gets a
//!   warning. Two Services may share a VIP on different ports.
//! - EndpointSlices join a Service through the label `kubernetes.io/service-name` in the same
//!   namespace; a VIP uses only slices of its own address family (no 4-to-6 translation).
//!   Endpoints whose `nodeName` is this node are local; only local ones become [`Backend`]s.
//! - Endpoint conditions (nil `ready`/`serving` mean true, nil `terminating` false): not
//!   terminating and ready → [`BackendState::Active`] (new flows); terminating and serving →
//!   [`BackendState::Draining`] (established flows only); anything else is dropped.
//! - A node is eligible when its Node object exists, is Ready, is not cordoned
//!   (`spec.unschedulable`) and lacks the label `node.kubernetes.io/exclude-from-external-load-balancers`.
//!   A node without a Node object is not eligible: the cluster has not admitted it (or the
//!   source has not seen it yet), and announcing from an unknown node could blackhole traffic.
//! - BGP (per VIP, ECMP): `Local` → eligible nodes with ≥1 active endpoint of the Service;
//!   `Cluster` → every eligible node, provided the Service has ≥1 active endpoint anywhere (as
//!   MetalLB does: a VIP with no endpoint at all is withdrawn). A VIP shared by several
//!   Services is announced when any of them makes the node eligible.
//! - L2: among the nodes eligible for a VIP, the winner of [`l2::owner`] answers ARP/NDP.

mod endpoints;
mod fnv;
mod incremental;
pub mod l2;
mod nodes;
mod services;
mod sorted;
mod warning;

#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use ipnet::IpNet;

pub use self::{
    incremental::Incremental, nodes::NodeState, services::SOURCE_RANGES_ANNOTATION,
    warning::Warning,
};
use crate::{
    config::Config,
    snapshot::{ObjectKey, Snapshot},
};

/// What the model needs from [`Config`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelConfig {
    /// `None`: only Services without `spec.loadBalancerClass`; `Some(c)`: only class `c`.
    pub load_balancer_class: Option<String>,
    /// Answer ARP/NDP for the VIPs this node wins; when false, [`Desired::l2`] is empty.
    pub l2_enabled: bool,
    /// A BGP speaker is configured; when false, [`Desired::bgp`] is empty.
    pub bgp_enabled: bool,
}

impl From<&Config> for ModelConfig {
    fn from(config: &Config) -> Self {
        Self {
            load_balancer_class: config.load_balancer_class.clone(),
            l2_enabled: config.l2.enabled,
            bgp_enabled: config.bgp.is_some(),
        }
    }
}

/// Transport protocol of a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The API spelling; `None` (unset) means TCP, as the API server defaults it.
    pub fn parse(value: Option<&str>) -> Option<Self> {
        match value {
            None | Some("TCP") => Some(Self::Tcp),
            Some("UDP") => Some(Self::Udp),
            Some("SCTP") => Some(Self::Sctp),
            Some(_) => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }

    /// The IP protocol number (IANA), as the dataplane matches it.
    pub fn ip_protocol(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `spec.externalTrafficPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// What a client connects to: one VIP, port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.vip {
            IpAddr::V4(vip) => write!(f, "{vip}:{}/{}", self.port, self.protocol),
            IpAddr::V6(vip) => write!(f, "[{vip}]:{}/{}", self.port, self.protocol),
        }
    }
}

/// A Service port's `targetPort` as declared (unset means the port itself).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetPort {
    Number(u16),
    /// A container port name, resolved per EndpointSlice into [`Backend::port`].
    Named(String),
}

/// Which flows a backend may take. Ordered best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendState {
    /// Ready and not terminating: new flows are spread over these.
    Active,
    /// Terminating but still serving: keeps its established flows, gets no new ones.
    Draining,
}

/// A local endpoint of a frontend, with the target port resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub addr: IpAddr,
    pub port: u16,
    pub state: BackendState,
}

/// What the L4 dataplane needs for one [`Frontend`].
///
/// Every frontend of every selected Service is listed, whether or not this node announces the
/// VIP, so flows that still arrive (ECMP convergence, established connections) are steered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DesiredService {
    pub service: ObjectKey,
    /// The Service port's name (`None` when unnamed).
    pub port_name: Option<String>,
    pub target_port: TargetPort,
    pub traffic_policy: TrafficPolicy,
    /// `sessionAffinity: ClientIP` and its timeout (default 3h); `None` without affinity.
    pub session_affinity: Option<Duration>,
    /// `loadBalancerSourceRanges` of the VIP's family. `None`: any client; `Some(ranges)`: only
    /// these (possibly none, when every range is of the other family or malformed: fail closed).
    pub source_ranges: Option<Vec<IpNet>>,
    /// Local backends, sorted, one per (address, port).
    pub backends: Vec<Backend>,
}

impl DesiredService {
    /// True when new flows have somewhere to go on this node.
    pub fn has_active_backend(&self) -> bool {
        self.backends
            .iter()
            .any(|b| b.state == BackendState::Active)
    }
}

/// Every steered frontend's desired state. Shared (`Arc`): [`Incremental`] keeps each
/// Service's frontends to re-resolve conflicts, and the same values are the desired state;
/// copies would hold every frontend (and its backends) twice.
pub type Services = BTreeMap<Frontend, Arc<DesiredService>>;

/// Everything this node should be doing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Whether this node may own VIPs at all, and if not, why.
    pub node: NodeState,
    /// VIPs this node answers ARP (IPv4) or NDP (IPv6) for.
    pub l2: BTreeSet<IpAddr>,
    /// VIPs this node announces over BGP, each as a /32 or /128.
    pub bgp: BTreeSet<IpAddr>,
    pub services: Services,
    /// Sorted and without duplicates, so two equal inputs give equal outputs.
    pub warnings: Vec<Warning>,
}

/// Computes what `node` should do, given everything in `snapshot`. Pure and deterministic.
pub fn desired(node: &str, snapshot: &Snapshot, config: &ModelConfig) -> Desired {
    let mut warnings = Vec::new();
    let nodes = nodes::NodeIndex::new(snapshot);
    let this_node = nodes.state(node);
    if this_node == NodeState::Missing {
        warnings.push(Warning::NodeNotFound {
            node: node.to_owned(),
        });
    }
    let slices = endpoints::SliceIndex::new(snapshot);

    // Services in claim order: a frontend goes to the first Service that asks for it.
    let selected = services::select(snapshot, config, &mut warnings);
    let mut frontends = BTreeMap::new();
    let mut claimants: BTreeMap<IpAddr, Vec<usize>> = BTreeMap::new();
    let mut summaries = Vec::with_capacity(selected.len());
    for (index, service) in selected.iter().enumerate() {
        let service_slices = slices.of(service.key);
        summaries.push(endpoints::summarize(service_slices, &mut warnings));
        for &vip in &service.vips {
            let mut claimed = false;
            for port in &service.ports {
                let frontend = Frontend {
                    vip,
                    port: port.port,
                    protocol: port.protocol,
                };
                if let Some(kept) = frontends
                    .get(&frontend)
                    .map(|s: &Arc<DesiredService>| &s.service)
                {
                    warnings.push(Warning::FrontendConflict {
                        frontend,
                        kept: kept.clone(),
                        dropped: service.key.clone(),
                    });
                    continue;
                }
                let backends = endpoints::local_backends(
                    service.key,
                    service_slices,
                    vip,
                    port,
                    node,
                    &mut warnings,
                );
                let service = service.desired_service(port, vip, backends);
                frontends.insert(frontend, Arc::new(service));
                claimed = true;
            }
            if claimed {
                claimants.entry(vip).or_default().push(index);
            }
        }
    }

    let mut l2 = BTreeSet::new();
    let mut bgp = BTreeSet::new();
    // An ineligible node owns nothing.
    let candidates = if this_node == NodeState::Eligible {
        &claimants
    } else {
        &BTreeMap::new()
    };
    for (&vip, indexes) in candidates {
        // Nodes that may attract this VIP's traffic: every eligible node when a `Cluster`
        // Service with live endpoints uses it, else the nodes with active local endpoints.
        let mut cluster_wide = false;
        let mut local_nodes = Vec::new();
        for &i in indexes {
            let summary = summaries[i].family(vip);
            match selected[i].traffic_policy {
                TrafficPolicy::Cluster => cluster_wide |= summary.any_active,
                TrafficPolicy::Local => local_nodes.extend_from_slice(&summary.active_nodes),
            }
        }
        if !cluster_wide && !local_nodes.contains(&node) {
            continue;
        }
        if config.bgp_enabled {
            bgp.insert(vip);
        }
        if !config.l2_enabled {
            continue;
        }
        let owner = if cluster_wide {
            l2::is_owner(vip, node, nodes.eligible())
        } else {
            let eligible = local_nodes.into_iter().filter(|n| nodes.is_eligible(n));
            l2::is_owner(vip, node, eligible)
        };
        if owner {
            l2.insert(vip);
        }
    }

    warnings.sort();
    warnings.dedup();
    Desired {
        node: this_node,
        l2,
        bgp,
        services: frontends,
        warnings,
    }
}
