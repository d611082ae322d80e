//! Watching the cluster: kube-rs reflectors for Service, EndpointSlice and Node.
//!
//! Each resource has a reflector store fed by a watcher with the default backoff. The publisher
//! folds every change into one [`Snapshot`] (an object in O(log n), a finished list by
//! rebuilding that kind from its store) and publishes a copy once every store has finished its
//! first list. A store being relisted (after an apiserver restart or a 410 Gone) keeps serving its
//! old contents until the new list is complete (the reflector swaps the buffer in at `InitDone`),
//! so a relist never looks like "everything was deleted". While the apiserver is unreachable the
//! last snapshot stays in force and the source reports itself not ready.

use std::{fmt::Debug, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Node, Service, ServiceSpec},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Resource,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use crate::{
    coalesce::{Coalescer, sleep_until_opt},
    snapshot::{DEFAULT_NAMESPACE, Draft, ObjectKey, Publisher, Snapshot, Tracked},
    source::SourceStatus,
};

/// An event this long after the last snapshot was built is published at once: the reflector
/// has already applied it to its store, so there is nothing to wait for.
const QUIET: Duration = Duration::from_millis(10);
/// Inside a burst (a rollout, a relist's tail), build once events stop for this long...
pub const DEBOUNCE: Duration = Duration::from_millis(20);
/// ...or at most this long after the first one.
const MAX_DELAY: Duration = Duration::from_millis(250);
/// How often the apiserver is probed, so "connected" recovers even when no object changes.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("no cluster config (in-cluster service account or KUBECONFIG)")]
    Config(#[source] kube::config::InferConfigError),
    #[error("building the Kubernetes client")]
    Client(#[source] kube::Error),
}

/// Readiness of the cluster source, beyond [`SourceStatus`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeHealth {
    /// Every store has finished its first list.
    pub synced: bool,
    /// The apiserver answered the newest probe or watch request.
    pub connected: bool,
    /// Lists started after the first one (apiserver restarts, 410 Gone).
    pub relists: u64,
    /// Watch, list and probe errors seen so far (the probe fails every 2 s during an outage).
    pub errors: u64,
}

/// A running cluster source.
pub struct KubeSource {
    /// `None` until all three stores are synced; then whole snapshots, each different from
    /// the one before.
    pub snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    /// Generation and the newest watch error (cleared once the apiserver answers again).
    pub status: watch::Receiver<SourceStatus>,
    pub health: watch::Receiver<KubeHealth>,
    pub task: JoinHandle<()>,
}

/// A client from the in-cluster config, else `KUBECONFIG` / `~/.kube/config`.
pub async fn client() -> Result<Client, KubeError> {
    let config = kube::Config::infer().await.map_err(KubeError::Config)?;
    Client::try_from(config).map_err(KubeError::Client)
}

/// What a watcher task tells the publisher.
#[derive(Debug)]
enum Signal {
    /// A store changed (or finished a list).
    Changed(Kind, Change),
    /// A list started after the first one.
    Relist,
    /// The apiserver answered.
    Connected,
    Error(String),
}

/// Which store a [`Change`] is about.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Service,
    Slice,
    Node,
}

/// One change to a store, as the publisher folds it into its snapshot.
#[derive(Debug)]
enum Change {
    /// An object was created or modified: its newest state is read back from the store.
    Applied(Ref),
    Deleted(Ref),
    /// A list finished: the store's whole content was replaced.
    Listed,
}

/// An object's namespace (`None`: cluster-scoped) and name.
#[derive(Debug)]
struct Ref {
    namespace: Option<String>,
    name: String,
}

impl Ref {
    fn of<K: Resource>(object: &K) -> Self {
        let meta = object.meta();
        Self {
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    fn object_ref<K: Resource<DynamicType = ()>>(&self) -> ObjectRef<K> {
        let object = ObjectRef::new(&self.name);
        match &self.namespace {
            Some(namespace) => object.within(namespace),
            None => object,
        }
    }

    fn key(&self) -> ObjectKey {
        ObjectKey::new(
            self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE),
            self.name.as_str(),
        )
    }
}

/// Starts the three reflectors and the publisher on the current tokio runtime.
pub fn spawn_kube_source(client: Client) -> KubeSource {
    let (snapshots_tx, snapshots) = watch::channel(None);
    let (status_tx, status) = watch::channel(SourceStatus::default());
    let (health_tx, health) = watch::channel(KubeHealth::default());
    let (tx, rx) = mpsc::unbounded_channel();

    let (services, services_w) = reflector::store::<Service>();
    let (slices, slices_w) = reflector::store::<EndpointSlice>();
    let (nodes, nodes_w) = reflector::store::<Node>();
    let watchers = vec![
        tokio::spawn(reflect(
            Api::all(client.clone()),
            services_w,
            tx.clone(),
            (Kind::Service, trim_service),
        )),
        tokio::spawn(reflect(
            Api::all(client.clone()),
            slices_w,
            tx.clone(),
            (Kind::Slice, trim_slice),
        )),
        tokio::spawn(reflect(
            Api::all(client.clone()),
            nodes_w,
            tx.clone(),
            (Kind::Node, trim_node),
        )),
        tokio::spawn(probe(client, tx)),
    ];
    let stores = Stores {
        services,
        slices,
        nodes,
    };
    let task = tokio::spawn(async move {
        publish(stores, rx, snapshots_tx, status_tx, health_tx).await;
        for watcher in watchers {
            watcher.abort();
        }
    });
    KubeSource {
        snapshots,
        status,
        health,
        task,
    }
}

struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
}

impl Stores {
    fn synced(&self) -> bool {
        // A reader's `wait_until_ready` resolves after the first `InitDone`; until then the
        // store is empty, and an empty store is indistinguishable from an empty cluster.
        [
            self.services.wait_until_ready().now_or_never_ready(),
            self.slices.wait_until_ready().now_or_never_ready(),
            self.nodes.wait_until_ready().now_or_never_ready(),
        ]
        .into_iter()
        .all(|ready| ready)
    }

    /// Folds one change into `snapshot`: O(log n) for an object, a rebuild of one kind after
    /// a list. Rebuilding the whole snapshot from the stores on every change (sorting every
    /// object's key again) cost ~12 ms of CPU per change at 10,000 Services.
    fn fold(&self, draft: &mut Draft, kind: Kind, change: Change) {
        match kind {
            Kind::Service => fold(draft.services(), &self.services, change, |s| {
                ObjectKey::of(&s.metadata)
            }),
            Kind::Slice => fold(draft.endpoint_slices(), &self.slices, change, |s| {
                ObjectKey::of(&s.metadata)
            }),
            Kind::Node => fold(draft.nodes(), &self.nodes, change, |n| {
                n.metadata.name.clone().filter(|n| !n.is_empty())
            }),
        }
    }
}

/// Node keys are plain names; namespaced objects' are [`ObjectKey`]s.
trait FromRef {
    fn from_ref(r: &Ref) -> Self;
}

impl FromRef for ObjectKey {
    fn from_ref(r: &Ref) -> Self {
        r.key()
    }
}

impl FromRef for String {
    fn from_ref(r: &Ref) -> Self {
        r.name.clone()
    }
}

/// [`Stores::fold`] for one kind; `key` as in [`Snapshot::from_objects`] (objects without a
/// name are left out).
fn fold<K, Key>(
    mut map: Tracked<'_, Key, K>,
    store: &Store<K>,
    change: Change,
    key: impl Fn(&K) -> Option<Key>,
) where
    K: Resource<DynamicType = ()> + Clone + 'static,
    Key: Ord + Clone + FromRef,
{
    match change {
        Change::Listed => {
            map.replace(
                store
                    .state()
                    .into_iter()
                    .filter_map(|o| Some((key(&o)?, o)))
                    .collect(),
            );
        }
        // The store may already hold a newer state, or none (deleted since): take what it has.
        Change::Applied(r) => match store.get(&r.object_ref()) {
            Some(object) => {
                if let Some(k) = key(&object) {
                    map.insert(k, object);
                }
            }
            None => {
                map.remove(&Key::from_ref(&r));
            }
        },
        Change::Deleted(r) => {
            map.remove(&Key::from_ref(&r));
        }
    }
}

/// Polls a future once: `true` when it is already complete with `Ok`.
trait NowOrNever {
    fn now_or_never_ready(self) -> bool;
}

impl<F, E> NowOrNever for F
where
    F: std::future::Future<Output = Result<(), E>>,
{
    fn now_or_never_ready(self) -> bool {
        matches!(futures::FutureExt::now_or_never(self), Some(Ok(())))
    }
}

/// The apiserver's last-applied copy of an object (`kubectl apply`), never read here.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops, before an object enters a store, what the model never reads but every object
/// carries: `managedFields` (often larger than the object itself: at 10,000 Services and
/// EndpointSlices most of the agent's memory) and kubectl's last-applied copy.
fn trim<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// [`trim`], plus what the model never reads of an endpoint (it reads the first address, the
/// conditions and the node name; a real cluster's `targetRef` alone is four strings per
/// endpoint), and the room JSON decoding leaves in lists (it cannot know their length: 10
/// endpoints are decoded into room for 16, 352 bytes each, 20 MiB at 10,000 slices).
fn trim_slice(slice: &mut EndpointSlice) {
    trim(slice);
    slice.metadata.owner_references = None;
    slice.endpoints.shrink_to_fit();
    for endpoint in &mut slice.endpoints {
        endpoint.target_ref = None;
        endpoint.hints = None;
        endpoint.deprecated_topology = None;
        endpoint.hostname = None;
        endpoint.zone = None;
        endpoint.addresses.shrink_to_fit();
    }
}

/// [`trim`], plus what the model never reads of a Service: its labels, its annotations but the
/// source-ranges one, and its spec but the fields listed here. The selector alone is a map
/// node with room for eleven labels (5 MiB at 10,000 Services); cluster IPs and IP families
/// are four more strings per Service.
fn trim_service(service: &mut Service) {
    trim(service);
    service.metadata.labels = None;
    if let Some(annotations) = service.metadata.annotations.as_mut() {
        annotations.retain(|k, _| k == crate::model::SOURCE_RANGES_ANNOTATION);
    }
    if service
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.is_empty())
    {
        service.metadata.annotations = None;
    }
    if let Some(spec) = service.spec.take() {
        service.spec = Some(ServiceSpec {
            type_: spec.type_,
            load_balancer_class: spec.load_balancer_class,
            ports: spec.ports,
            external_traffic_policy: spec.external_traffic_policy,
            session_affinity: spec.session_affinity,
            session_affinity_config: spec.session_affinity_config,
            load_balancer_source_ranges: spec.load_balancer_source_ranges,
            ..ServiceSpec::default()
        });
    }
}

/// [`trim`], plus the parts of a Node's status that only the kubelet and scheduler use (the
/// image list alone is kilobytes per node).
fn trim_node(node: &mut Node) {
    trim(node);
    if let Some(status) = node.status.as_mut() {
        status.images = None;
        status.volumes_attached = None;
        status.volumes_in_use = None;
    }
}

/// One reflector: watcher (default backoff) into `writer`, reporting to the publisher.
async fn reflect<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    tx: mpsc::UnboundedSender<Signal>,
    (tag, trim): (Kind, fn(&mut K)),
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let kind = K::kind(&());
    let mut lists = 0u64;
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(trim)
        .reflect(writer);
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        let signal = match event {
            Ok(watcher::Event::Init) => {
                lists += 1;
                if lists > 1 {
                    tracing::info!(%kind, "relisting");
                    let _ = tx.send(Signal::Relist);
                }
                Signal::Connected
            }
            Ok(watcher::Event::InitApply(_)) => continue,
            Ok(watcher::Event::InitDone) => Signal::Changed(tag, Change::Listed),
            Ok(watcher::Event::Apply(object)) => {
                Signal::Changed(tag, Change::Applied(Ref::of(&object)))
            }
            Ok(watcher::Event::Delete(object)) => {
                Signal::Changed(tag, Change::Deleted(Ref::of(&object)))
            }
            Err(error) => {
                tracing::warn!(%kind, %error, "watch failed; keeping the last state");
                Signal::Error(format!("{kind}: {error}"))
            }
        };
        if tx.send(signal).is_err() {
            return;
        }
    }
}

/// Asks the apiserver for its version every [`PROBE_INTERVAL`]: a healthy but idle cluster
/// sends no watch events, and "connected" must recover without them.
async fn probe(client: Client, tx: mpsc::UnboundedSender<Signal>) {
    loop {
        let signal = match client.apiserver_version().await {
            Ok(_) => Signal::Connected,
            Err(error) => Signal::Error(format!("apiserver: {error}")),
        };
        if tx.send(signal).is_err() {
            return;
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

async fn publish(
    stores: Stores,
    mut rx: mpsc::UnboundedReceiver<Signal>,
    snapshots: watch::Sender<Option<Arc<Snapshot>>>,
    status: watch::Sender<SourceStatus>,
    health: watch::Sender<KubeHealth>,
) {
    let mut coalescer = Coalescer::new(QUIET, DEBOUNCE, MAX_DELAY);
    // The stores' content as a snapshot, kept up to date change by change: the draft of the
    // next one, published at the cost of what changed.
    let mut publisher = Publisher::new();
    loop {
        let signal = tokio::select! {
            signal = rx.recv() => match signal {
                Some(signal) => Some(signal),
                None => return,
            },
            () = sleep_until_opt(coalescer.deadline()) => None,
            () = snapshots.closed() => return,
        };
        let due = match signal {
            Some(Signal::Changed(kind, change)) => {
                stores.fold(publisher.draft(), kind, change);
                mark_connected(&status, &health);
                coalescer.changed(tokio::time::Instant::now())
            }
            Some(Signal::Relist) => {
                health.send_modify(|h| h.relists += 1);
                false
            }
            Some(Signal::Connected) => {
                mark_connected(&status, &health);
                false
            }
            Some(Signal::Error(error)) => {
                health.send_modify(|h| {
                    h.connected = false;
                    h.errors += 1;
                });
                status.send_modify(|s| s.error = Some(error));
                false
            }
            None => true,
        };
        if !due {
            continue;
        }
        coalescer.acted(tokio::time::Instant::now());
        if !stores.synced() {
            continue;
        }
        health.send_if_modified(|h| !std::mem::replace(&mut h.synced, true));
        let started = std::time::Instant::now();
        let committed = publisher.commit();
        tracing::debug!(took_us = started.elapsed().as_micros(), "snapshot built");
        // The first synced state is published even when empty.
        let snapshot = match committed {
            Some(snapshot) => snapshot,
            None if snapshots.borrow().is_none() => publisher.current().clone(),
            None => continue,
        };
        tracing::info!(
            services = snapshot.services.len(),
            slices = snapshot.endpoint_slices.len(),
            nodes = snapshot.nodes.len(),
            "cluster snapshot"
        );
        // Status first, so a consumer woken by the snapshot reads the matching status.
        status.send_modify(|s| s.generation += 1);
        snapshots.send_replace(Some(snapshot));
    }
}

fn mark_connected(status: &watch::Sender<SourceStatus>, health: &watch::Sender<KubeHealth>) {
    health.send_if_modified(|h| !std::mem::replace(&mut h.connected, true));
    status.send_if_modified(|s| s.error.take().is_some());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimmed_slices_keep_what_the_model_reads_and_no_spare_room() {
        let endpoints: Vec<serde_json::Value> = (1..=10)
            .map(|i| {
                serde_json::json!({
                    "addresses": [format!("10.0.0.{i}")],
                    "nodeName": "n1",
                    "zone": "z",
                    "targetRef": {"kind": "Pod", "name": format!("p{i}")},
                })
            })
            .collect();
        let json = serde_json::json!({
            "metadata": {"name": "s", "managedFields": [{"manager": "m"}]},
            "addressType": "IPv4",
            "endpoints": endpoints,
        })
        .to_string();
        let mut slice: EndpointSlice = serde_json::from_str(&json).unwrap();
        trim_slice(&mut slice);
        assert_eq!(slice.metadata.managed_fields, None);
        assert_eq!(slice.endpoints.len(), 10);
        assert_eq!(slice.endpoints.capacity(), 10);
        assert!(slice.endpoints.iter().all(|e| e.addresses.capacity() == 1
            && e.node_name.is_some()
            && e.target_ref.is_none()
            && e.zone.is_none()));
    }

    #[test]
    fn trimmed_services_keep_the_source_ranges_annotation_and_no_selector() {
        let mut service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web",
                "labels": {"app": "web"},
                "annotations": {
                    "example.com/owner": "team",
                    crate::model::SOURCE_RANGES_ANNOTATION: "10.0.0.0/8",
                },
            },
            "spec": {
                "type": "LoadBalancer",
                "selector": {"app": "web"},
                "clusterIPs": ["10.96.0.10"],
                "ports": [{"port": 80}],
                "externalTrafficPolicy": "Local",
            },
        }))
        .unwrap();
        trim_service(&mut service);
        assert_eq!(service.metadata.labels, None);
        let annotations = service.metadata.annotations.as_ref().unwrap();
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            [crate::model::SOURCE_RANGES_ANNOTATION]
        );
        let spec = service.spec.as_ref().unwrap();
        assert_eq!(
            (spec.type_.as_deref(), &spec.selector),
            (Some("LoadBalancer"), &None)
        );
        assert_eq!(spec.cluster_ips, None);
        assert_eq!(spec.ports.as_ref().map(|p| p[0].port), Some(80));
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));

        service.metadata.annotations = Some([("a".to_owned(), "b".to_owned())].into());
        trim_service(&mut service);
        assert_eq!(service.metadata.annotations, None);
    }
}
