//! The one input of the desired-state model: every Service, EndpointSlice and Node a source
//! (the kube-rs reflectors or the manifests directory) currently knows, keyed deterministically.
//!
//! Objects are held in `Arc`s because the reflector stores hand them out that way, so building a
//! snapshot from the stores copies pointers, not objects.
//!
//! Sources publish through a [`Publisher`]: each new snapshot costs the objects that changed
//! (not a copy of every map), and says which keys changed ([`Snapshot::changed_since`]).

mod lineage;
mod publish;

use std::{collections::BTreeMap, fmt, sync::Arc};

use k8s_openapi::{
    api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::Serialize;

pub use self::{
    lineage::{Keys, Lineage},
    publish::{Draft, Publisher, Tracked},
};

/// The namespace an object without `metadata.namespace` lands in, as with `kubectl apply`.
pub const DEFAULT_NAMESPACE: &str = "default";

/// `namespace/name` of a namespaced object; orders by namespace, then name. Shared strings:
/// sources hand out a copy of their whole snapshot per change, so a key copy must not allocate.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of an object's metadata; `None` without a name. A missing namespace means
    /// [`DEFAULT_NAMESPACE`].
    pub fn of(meta: &ObjectMeta) -> Option<Self> {
        let name = meta.name.as_deref().filter(|n| !n.is_empty())?;
        let namespace = meta
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE);
        Some(Self::new(namespace, name))
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Serialized as `"namespace/name"`, the way `kubectl` names objects.
impl Serialize for ObjectKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Everything the model reads. Sources replace whole snapshots; the model never sees a partial one.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub services: BTreeMap<ObjectKey, Arc<Service>>,
    pub endpoint_slices: BTreeMap<ObjectKey, Arc<EndpointSlice>>,
    /// Nodes are cluster-scoped: keyed by name.
    pub nodes: BTreeMap<String, Arc<Node>>,
    /// Where it comes from (set by a [`Publisher`]); not part of the content.
    pub lineage: Lineage,
}

/// The content; the copy has no [`Lineage`]: it may be edited, so what changed since an
/// earlier snapshot is no longer known.
impl Clone for Snapshot {
    fn clone(&self) -> Self {
        Self {
            services: self.services.clone(),
            endpoint_slices: self.endpoint_slices.clone(),
            nodes: self.nodes.clone(),
            lineage: Lineage::default(),
        }
    }
}

/// Equal content; the [`Lineage`] is not compared.
impl PartialEq for Snapshot {
    fn eq(&self, other: &Self) -> bool {
        self.services == other.services
            && self.endpoint_slices == other.endpoint_slices
            && self.nodes == other.nodes
    }
}

impl Snapshot {
    /// Adds or replaces a Service; returns `false` (and ignores it) when it has no name.
    pub fn insert_service(&mut self, service: impl Into<Arc<Service>>) -> bool {
        let service = service.into();
        match ObjectKey::of(&service.metadata) {
            Some(key) => {
                self.services.insert(key, service);
                true
            }
            None => false,
        }
    }

    /// Adds or replaces an EndpointSlice; returns `false` (and ignores it) when it has no name.
    pub fn insert_endpoint_slice(&mut self, slice: impl Into<Arc<EndpointSlice>>) -> bool {
        let slice = slice.into();
        match ObjectKey::of(&slice.metadata) {
            Some(key) => {
                self.endpoint_slices.insert(key, slice);
                true
            }
            None => false,
        }
    }

    /// Adds or replaces a Node; returns `false` (and ignores it) when it has no name.
    pub fn insert_node(&mut self, node: impl Into<Arc<Node>>) -> bool {
        let node = node.into();
        match node.metadata.name.clone().filter(|n| !n.is_empty()) {
            Some(name) => {
                self.nodes.insert(name, node);
                true
            }
            None => false,
        }
    }

    /// Builds a snapshot from whole object lists (e.g. reflector stores' `state()`); objects
    /// without a name are skipped.
    pub fn from_objects(
        services: impl IntoIterator<Item = Arc<Service>>,
        endpoint_slices: impl IntoIterator<Item = Arc<EndpointSlice>>,
        nodes: impl IntoIterator<Item = Arc<Node>>,
    ) -> Self {
        // Collected, not inserted one by one: `BTreeMap::from_iter` sorts once (stably, so the
        // last of two objects with one key wins, as with inserts) and builds in bulk.
        Self {
            services: services
                .into_iter()
                .filter_map(|s| Some((ObjectKey::of(&s.metadata)?, s)))
                .collect(),
            endpoint_slices: endpoint_slices
                .into_iter()
                .filter_map(|s| Some((ObjectKey::of(&s.metadata)?, s)))
                .collect(),
            nodes: nodes
                .into_iter()
                .filter_map(|n| Some((n.metadata.name.clone().filter(|n| !n.is_empty())?, n)))
                .collect(),
            lineage: Lineage::default(),
        }
    }

    /// `self == other`, cheaply: objects behind the same `Arc` are equal without a look inside
    /// (sources keep the `Arc` of an unchanged object), so this is a pointer walk.
    pub fn same_as(&self, other: &Self) -> bool {
        fn same<K: Eq, V: PartialEq>(a: &BTreeMap<K, Arc<V>>, b: &BTreeMap<K, Arc<V>>) -> bool {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|((ka, va), (kb, vb))| ka == kb && (Arc::ptr_eq(va, vb) || va == vb))
        }
        same(&self.services, &other.services)
            && same(&self.endpoint_slices, &other.endpoint_slices)
            && same(&self.nodes, &other.nodes)
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.endpoint_slices.is_empty() && self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(namespace: Option<&str>, name: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            namespace: namespace.map(str::to_owned),
            name: name.map(str::to_owned),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn key_defaults_namespace_and_needs_name() {
        assert_eq!(
            ObjectKey::of(&meta(None, Some("web"))),
            Some(ObjectKey::new("default", "web"))
        );
        assert_eq!(
            ObjectKey::of(&meta(Some("prod"), Some("web")))
                .unwrap()
                .to_string(),
            "prod/web"
        );
        assert_eq!(ObjectKey::of(&meta(Some("prod"), None)), None);
        assert_eq!(ObjectKey::of(&meta(Some("prod"), Some(""))), None);
    }

    #[test]
    fn from_objects_keys_and_skips_nameless() {
        let service = |ns: &str, name: Option<&str>| {
            Arc::new(Service {
                metadata: meta(Some(ns), name),
                ..Service::default()
            })
        };
        let node = Arc::new(Node {
            metadata: meta(None, Some("n1")),
            ..Node::default()
        });
        let snapshot = Snapshot::from_objects(
            [
                service("b", Some("x")),
                service("a", Some("y")),
                service("a", None),
            ],
            [],
            [node],
        );
        let keys: Vec<String> = snapshot.services.keys().map(ToString::to_string).collect();
        assert_eq!(keys, ["a/y", "b/x"]);
        assert!(snapshot.nodes.contains_key("n1"));
        assert!(!snapshot.is_empty());
        assert!(Snapshot::default().is_empty());
    }
}
