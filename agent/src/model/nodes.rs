//! Which nodes may own VIPs.

use k8s_openapi::api::core::v1::Node;

use super::fnv::FnvHashMap;
use crate::snapshot::Snapshot;

/// The upstream well-known label that takes a node out of every load balancer's pool.
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// Whether a node may own VIPs, and if not, the first reason found (in this order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeState {
    /// Ready, schedulable, not excluded.
    Eligible,
    /// No Node object of that name in the snapshot.
    #[default]
    Missing,
    /// The `Ready` condition is not `True` (or the node reports no conditions).
    NotReady,
    /// `spec.unschedulable` (`kubectl cordon`/`drain`): withdraw before the pods go.
    Cordoned,
    /// Carries the label [`EXCLUDE_LABEL`].
    Excluded,
}

impl NodeState {
    pub fn of(node: &Node) -> Self {
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let cordoned = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
        let excluded = node
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(EXCLUDE_LABEL));
        if !ready {
            Self::NotReady
        } else if cordoned {
            Self::Cordoned
        } else if excluded {
            Self::Excluded
        } else {
            Self::Eligible
        }
    }
}

/// Every node's state, looked up by name.
pub(super) struct NodeIndex<'a> {
    states: FnvHashMap<&'a str, NodeState>,
    /// In name order.
    eligible: Vec<&'a str>,
}

impl<'a> NodeIndex<'a> {
    pub(super) fn new(snapshot: &'a Snapshot) -> Self {
        let states: FnvHashMap<_, _> = snapshot
            .nodes
            .iter()
            .map(|(name, node)| (name.as_str(), NodeState::of(node)))
            .collect();
        // The snapshot's map is ordered by name, so this is too.
        let eligible = snapshot
            .nodes
            .keys()
            .map(String::as_str)
            .filter(|name| states[name] == NodeState::Eligible)
            .collect();
        Self { states, eligible }
    }

    pub(super) fn state(&self, name: &str) -> NodeState {
        self.states.get(name).copied().unwrap_or(NodeState::Missing)
    }

    pub(super) fn is_eligible(&self, name: &str) -> bool {
        self.state(name) == NodeState::Eligible
    }

    /// Names of the eligible nodes, in name order.
    pub(super) fn eligible(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.eligible.iter().copied()
    }
}
