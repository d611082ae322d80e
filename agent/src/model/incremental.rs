//! [`Incremental`]: the same [`Desired`] as [`desired`](super::desired), updated at the cost of
//! what changed instead of recomputed from the whole snapshot.
//!
//! Why: at 10,000 Services a full [`desired`](super::desired) takes tens of milliseconds, so one
//! EndpointSlice change would cost O(number of Services). Here one change costs O(the objects
//! that changed and the VIPs they touch), plus a pointer walk over the snapshot's maps.
//!
//! How the work is split, by what each piece depends on:
//! - a **Service part** depends only on the Service, its EndpointSlices, this node's name and
//!   the config: its normalized spec, claim order, per-family endpoint summary, and every
//!   frontend it asks for with its local backends (and the warnings computing them raised);
//! - a **VIP result** depends on the parts of the Services that claim the VIP and on the node
//!   view: which Service keeps each frontend (conflicts), and whether this node announces or
//!   answers for the VIP;
//! - the **node view** (this node's state and the eligible node names) depends on the Nodes only;
//!   when it changes every VIP result is redone (rare, and a node change can move every VIP).
//!
//! Dirty tracking: sources hand out snapshots whose unchanged objects keep their `Arc`, so the
//! previous and the new snapshot are merge-walked and compared by pointer (by value only when
//! the pointers differ). A changed Service dirties its part; a changed EndpointSlice dirties the
//! parts of its old and new Service; a dirty part dirties the VIPs it claimed before and after.
//!
//! Warnings are kept as a multiset of contributions (per Service, per VIP, per node), so the
//! sorted, deduplicated `Desired::warnings` is rebuilt only when that set changes.
//!
//! The result is checked against [`desired`](super::desired) on random change sequences
//! (`model/tests/incremental.rs`): the pure function stays the specification.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, btree_map},
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{
    Desired, DesiredService, Frontend, ModelConfig, NodeState, Protocol, TrafficPolicy, Warning,
    endpoints::{self, SERVICE_NAME_LABEL, SliceRef},
    l2, nodes, services, sorted,
};
use crate::snapshot::{ObjectKey, Snapshot};

/// The order in which Services claim frontends: oldest first, unset timestamps last, then by key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ClaimOrder {
    unset: bool,
    created: Option<Time>,
    key: ObjectKey,
}

/// Where a Service's active endpoints of one family are (owned [`endpoints::FamilySummary`]).
#[derive(Clone, Debug, Default)]
struct Family {
    any_active: bool,
    active_nodes: Vec<String>,
}

/// One frontend a Service asks for, ready to be inserted if it keeps it.
struct FrontendPart {
    frontend: Frontend,
    service: Arc<DesiredService>,
    /// Raised while resolving its backends; reported only when the Service keeps the frontend.
    warnings: Vec<Warning>,
}

struct Selected {
    order: ClaimOrder,
    policy: TrafficPolicy,
    v4: Family,
    v6: Family,
    vips: Vec<IpAddr>,
    frontends: Vec<FrontendPart>,
}

impl Selected {
    fn family(&self, vip: IpAddr) -> &Family {
        if vip.is_ipv4() { &self.v4 } else { &self.v6 }
    }
}

/// What one Service contributes on its own.
#[derive(Default)]
struct Part {
    /// Spec, ingress and EndpointSlice warnings (independent of other Services).
    warnings: Vec<Warning>,
    /// `None` when the model does not serve the Service.
    selected: Option<Selected>,
}

/// The Nodes as far as ownership cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct NodeView {
    this: NodeState,
    /// Sorted.
    eligible: Vec<String>,
}

impl NodeView {
    fn of(snapshot: &Snapshot, node: &str) -> Self {
        let index = nodes::NodeIndex::new(snapshot);
        Self {
            this: index.state(node),
            eligible: index.eligible().map(str::to_owned).collect(),
        }
    }

    fn is_eligible(&self, name: &str) -> bool {
        self.eligible
            .binary_search_by(|n| n.as_str().cmp(name))
            .is_ok()
    }
}

/// The desired state of one node, kept up to date snapshot by snapshot.
pub struct Incremental {
    node: String,
    config: ModelConfig,
    previous: Arc<Snapshot>,
    /// EndpointSlice → the Service its label names (same namespace).
    slice_owner: HashMap<ObjectKey, ObjectKey>,
    /// Service → its EndpointSlices, in key order (as [`super::desired`] reads them); a
    /// [`sorted`] set.
    slices_of: HashMap<ObjectKey, Vec<ObjectKey>>,
    parts: HashMap<ObjectKey, Part>,
    /// VIP → the selected Services that ask for it, in claim order; a [`sorted`] set.
    claimants: BTreeMap<IpAddr, Vec<ClaimOrder>>,
    vip_warnings: HashMap<IpAddr, Vec<Warning>>,
    node_warning: Option<Warning>,
    warning_counts: BTreeMap<Warning, usize>,
    nodes: NodeView,
    desired: Arc<Desired>,
    /// Frontends whose entry in `desired.services` may have changed since the last
    /// [`Self::take_changes`]; `None` until the first one (everything is new).
    changes: Option<BTreeSet<Frontend>>,
    started: bool,
}

impl Incremental {
    pub fn new(node: impl Into<String>, config: ModelConfig) -> Self {
        Self {
            node: node.into(),
            config,
            previous: Arc::default(),
            slice_owner: HashMap::new(),
            slices_of: HashMap::new(),
            parts: HashMap::new(),
            claimants: BTreeMap::new(),
            vip_warnings: HashMap::new(),
            node_warning: None,
            warning_counts: BTreeMap::new(),
            nodes: NodeView::default(),
            desired: Arc::default(),
            changes: None,
            started: false,
        }
    }

    /// The frontends whose desired state may have changed (been added, removed or replaced)
    /// since the last call, a superset of those that did; `None` on the first call, when
    /// every frontend is to be compared. The caller takes them after every update (they
    /// accumulate otherwise).
    pub fn take_changes(&mut self) -> Option<BTreeSet<Frontend>> {
        self.changes.replace(BTreeSet::new())
    }

    /// What [`Self::take_changes`] would return, left in place. Every VIP whose `l2` or `bgp`
    /// membership changed has a frontend in it (a VIP is a member only while it keeps one, and
    /// redoing a VIP notes all its frontends before and after).
    pub fn changes(&self) -> Option<&BTreeSet<Frontend>> {
        self.changes.as_ref()
    }

    /// The desired state as of the last [`Self::update`].
    pub fn desired(&self) -> &Arc<Desired> {
        &self.desired
    }

    /// Brings the desired state to `snapshot` and returns it. Updates in place when nobody else
    /// holds the returned `Arc`; otherwise the first change copies it once.
    pub fn update(&mut self, snapshot: &Arc<Snapshot>) -> &Arc<Desired> {
        if self.started && Arc::ptr_eq(&self.previous, snapshot) {
            return &self.desired;
        }
        let previous = std::mem::replace(&mut self.previous, snapshot.clone());
        // The keys the source says changed, when it can: the cost of the change instead of a
        // walk over every object.
        let keys = snapshot.changed_since(&previous);
        let mut dirty_services = BTreeSet::new();
        diff_maps(
            &previous.services,
            &snapshot.services,
            keys.as_ref().map(|k| &k.services),
            |key, _, _| {
                dirty_services.insert(key.clone());
            },
        );
        diff_maps(
            &previous.endpoint_slices,
            &snapshot.endpoint_slices,
            keys.as_ref().map(|k| &k.endpoint_slices),
            |key, _, new| {
                if let Some(owner) = self.slice_owner.remove(key) {
                    if let Some(slices) = self.slices_of.get_mut(&owner) {
                        sorted::remove(slices, key);
                        if slices.is_empty() {
                            self.slices_of.remove(&owner);
                        }
                    }
                    dirty_services.insert(owner);
                }
                let owner = new.and_then(|slice| {
                    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
                    Some(ObjectKey::new(key.namespace.clone(), name.clone()))
                });
                if let Some(owner) = owner {
                    let slices = self.slices_of.entry(owner.clone()).or_default();
                    sorted::insert(slices, key.clone());
                    self.slice_owner.insert(key.clone(), owner.clone());
                    dirty_services.insert(owner);
                }
            },
        );
        let mut nodes_changed = !self.started;
        diff_maps(
            &previous.nodes,
            &snapshot.nodes,
            keys.as_ref().map(|k| &k.nodes),
            |_, _, _| {
                nodes_changed = true;
            },
        );
        self.started = true;
        drop(previous);

        let mut dirty_vips = BTreeSet::new();
        if nodes_changed {
            let view = NodeView::of(snapshot, &self.node);
            if view != self.nodes {
                self.nodes = view;
                dirty_vips.extend(self.claimants.keys().copied());
            }
            let warning = (self.nodes.this == NodeState::Missing).then(|| Warning::NodeNotFound {
                node: self.node.clone(),
            });
            let old = std::mem::replace(&mut self.node_warning, warning.clone());
            count(&mut self.warning_counts, old.as_slice(), warning.as_slice());
        }

        for key in dirty_services {
            let part = match snapshot.services.get(&key) {
                Some(service) => self.part(&key, service, snapshot),
                None => Part::default(),
            };
            let old = self.parts.remove(&key).unwrap_or_default();
            count(&mut self.warning_counts, &old.warnings, &part.warnings);
            if let Some(old) = &old.selected {
                for vip in &old.vips {
                    dirty_vips.insert(*vip);
                    if let btree_map::Entry::Occupied(mut entry) = self.claimants.entry(*vip) {
                        sorted::remove(entry.get_mut(), &old.order);
                        if entry.get().is_empty() {
                            entry.remove();
                        }
                    }
                }
            }
            if let Some(new) = &part.selected {
                for vip in &new.vips {
                    dirty_vips.insert(*vip);
                    sorted::insert(self.claimants.entry(*vip).or_default(), new.order.clone());
                }
            }
            if part.selected.is_some() || !part.warnings.is_empty() {
                self.parts.insert(key, part);
            }
        }

        let desired = Arc::make_mut(&mut self.desired);
        desired.node = self.nodes.this;
        for vip in dirty_vips {
            refresh_vip(
                vip,
                &self.node,
                &self.config,
                &self.nodes,
                &self.parts,
                self.claimants.get(&vip),
                &mut self.vip_warnings,
                &mut self.warning_counts,
                desired,
                self.changes.as_mut(),
            );
        }
        // The multiset's key set is the sorted, deduplicated warning list (usually short).
        if !desired.warnings.iter().eq(self.warning_counts.keys()) {
            desired.warnings = self.warning_counts.keys().cloned().collect();
        }
        &self.desired
    }

    fn part(
        &self,
        key: &ObjectKey,
        service: &k8s_openapi::api::core::v1::Service,
        snapshot: &Snapshot,
    ) -> Part {
        let mut warnings = Vec::new();
        if !services::is_ours(service, &self.config) {
            return Part::default();
        }
        let Some((created, selected)) = services::normalize(key, service, &mut warnings) else {
            return Part {
                warnings,
                selected: None,
            };
        };
        let slices: Vec<SliceRef<'_>> = self
            .slices_of
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| snapshot.endpoint_slices.get_key_value(k))
            .map(|(k, s)| (k, s.as_ref()))
            .collect();
        let summary = endpoints::summarize(&slices, &mut warnings);
        let family = |vip: IpAddr| {
            let f = summary.family(vip);
            Family {
                any_active: f.any_active,
                active_nodes: f.active_nodes.iter().map(|n| (*n).to_owned()).collect(),
            }
        };
        // Exactly sized: grown one at a time, a Service's single frontend had room for four.
        let mut frontends = Vec::with_capacity(selected.vips.len() * selected.ports.len());
        for &vip in &selected.vips {
            for port in &selected.ports {
                let mut frontend_warnings = Vec::new();
                let backends = endpoints::local_backends(
                    key,
                    &slices,
                    vip,
                    port,
                    &self.node,
                    &mut frontend_warnings,
                );
                frontends.push(FrontendPart {
                    frontend: Frontend {
                        vip,
                        port: port.port,
                        protocol: port.protocol,
                    },
                    service: Arc::new(selected.desired_service(port, vip, backends)),
                    warnings: frontend_warnings,
                });
            }
        }
        Part {
            warnings,
            selected: Some(Selected {
                order: ClaimOrder {
                    unset: created.is_none(),
                    created: created.cloned(),
                    key: key.clone(),
                },
                policy: selected.traffic_policy,
                v4: family(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                v6: family(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)),
                vips: selected.vips.clone(),
                frontends,
            }),
        }
    }
}

/// Redoes one VIP: who keeps its frontends, and whether this node announces or answers it.
#[allow(
    clippy::too_many_arguments,
    reason = "disjoint borrows of Incremental's fields"
)]
fn refresh_vip(
    vip: IpAddr,
    node: &str,
    config: &ModelConfig,
    nodes: &NodeView,
    parts: &HashMap<ObjectKey, Part>,
    claimants: Option<&Vec<ClaimOrder>>,
    vip_warnings: &mut HashMap<IpAddr, Vec<Warning>>,
    warning_counts: &mut BTreeMap<Warning, usize>,
    desired: &mut Desired,
    mut changes: Option<&mut BTreeSet<Frontend>>,
) {
    let range = Frontend {
        vip,
        port: 0,
        protocol: Protocol::Tcp,
    }..=Frontend {
        vip,
        port: u16::MAX,
        protocol: Protocol::Sctp,
    };
    let stale: Vec<Frontend> = desired.services.range(range).map(|(f, _)| *f).collect();
    for frontend in stale {
        desired.services.remove(&frontend);
        if let Some(changes) = changes.as_deref_mut() {
            changes.insert(frontend);
        }
    }

    let mut warnings = Vec::new();
    let mut claimed = Vec::new();
    for order in claimants.into_iter().flatten() {
        let Some(selected) = parts.get(&order.key).and_then(|p| p.selected.as_ref()) else {
            continue;
        };
        let mut kept_any = false;
        for part in selected.frontends.iter().filter(|f| f.frontend.vip == vip) {
            if let Some(kept) = desired.services.get(&part.frontend) {
                warnings.push(Warning::FrontendConflict {
                    frontend: part.frontend,
                    kept: kept.service.clone(),
                    dropped: order.key.clone(),
                });
                continue;
            }
            warnings.extend(part.warnings.iter().cloned());
            desired.services.insert(part.frontend, part.service.clone());
            if let Some(changes) = changes.as_deref_mut() {
                changes.insert(part.frontend);
            }
            kept_any = true;
        }
        if kept_any {
            claimed.push(selected);
        }
    }

    let (mut bgp, mut answer) = (false, false);
    if nodes.this == NodeState::Eligible && !claimed.is_empty() {
        let mut cluster_wide = false;
        let mut local_nodes: Vec<&str> = Vec::new();
        for selected in &claimed {
            let family = selected.family(vip);
            match selected.policy {
                TrafficPolicy::Cluster => cluster_wide |= family.any_active,
                TrafficPolicy::Local => {
                    local_nodes.extend(family.active_nodes.iter().map(String::as_str));
                }
            }
        }
        if cluster_wide || local_nodes.contains(&node) {
            bgp = config.bgp_enabled;
            answer = config.l2_enabled
                && if cluster_wide {
                    l2::is_owner(vip, node, nodes.eligible.iter().map(String::as_str))
                } else {
                    let eligible = local_nodes.into_iter().filter(|n| nodes.is_eligible(n));
                    l2::is_owner(vip, node, eligible)
                };
        }
    }
    set(&mut desired.bgp, vip, bgp);
    set(&mut desired.l2, vip, answer);

    let old = if warnings.is_empty() {
        vip_warnings.remove(&vip).unwrap_or_default()
    } else {
        vip_warnings
            .insert(vip, warnings.clone())
            .unwrap_or_default()
    };
    if old != warnings {
        count(warning_counts, &old, &warnings);
    }
}

fn set(set: &mut BTreeSet<IpAddr>, vip: IpAddr, member: bool) {
    if member {
        set.insert(vip);
    } else {
        set.remove(&vip);
    }
}

/// Replaces one contribution `old` with `new` in the warning multiset.
fn count(counts: &mut BTreeMap<Warning, usize>, old: &[Warning], new: &[Warning]) {
    for warning in new {
        *counts.entry(warning.clone()).or_default() += 1;
    }
    for warning in old {
        if let btree_map::Entry::Occupied(mut entry) = counts.entry(warning.clone()) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }
}

/// Calls `changed(key, old, new)` for every key whose object differs between the two maps
/// (added, removed, or replaced by a different value). Only `keys` are looked at when given
/// (a superset of the keys that changed); else both maps are walked. Unchanged objects share
/// their `Arc`, so the walk is pointer comparisons; values are compared only when the
/// pointers differ.
fn diff_maps<K: Ord, V: PartialEq>(
    old: &BTreeMap<K, Arc<V>>,
    new: &BTreeMap<K, Arc<V>>,
    keys: Option<&BTreeSet<K>>,
    mut changed: impl FnMut(&K, Option<&Arc<V>>, Option<&Arc<V>>),
) {
    if let Some(keys) = keys {
        for key in keys {
            let (was, is) = (old.get(key), new.get(key));
            let same = match (was, is) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                (a, b) => a.is_none() && b.is_none(),
            };
            if !same {
                changed(key, was, is);
            }
        }
        return;
    }
    let mut old_iter = old.iter().peekable();
    let mut new_iter = new.iter().peekable();
    loop {
        match (old_iter.peek(), new_iter.peek()) {
            (None, None) => return,
            (Some(&(key, value)), None) => {
                changed(key, Some(value), None);
                old_iter.next();
            }
            (None, Some(&(key, value))) => {
                changed(key, None, Some(value));
                new_iter.next();
            }
            (Some(&(old_key, old_value)), Some(&(new_key, new_value))) => {
                match old_key.cmp(new_key) {
                    std::cmp::Ordering::Less => {
                        changed(old_key, Some(old_value), None);
                        old_iter.next();
                    }
                    std::cmp::Ordering::Greater => {
                        changed(new_key, None, Some(new_value));
                        new_iter.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if !Arc::ptr_eq(old_value, new_value) && old_value != new_value {
                            changed(old_key, Some(old_value), Some(new_value));
                        }
                        old_iter.next();
                        new_iter.next();
                    }
                }
            }
        }
    }
}
