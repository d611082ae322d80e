//! Model tests: small builders for Services, EndpointSlices and Nodes, and one file per rule
//! area. Each table row names the rule it checks.

mod endpoints;
mod hash;
mod incremental;
mod ownership;
mod services;

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::{
    api::{
        core::v1::{
            ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Node, NodeCondition, NodeSpec,
            NodeStatus, Service, ServicePort, ServiceSpec, ServiceStatus, SessionAffinityConfig,
        },
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{
        apis::meta::v1::{ObjectMeta, Time},
        util::intstr::IntOrString,
    },
    jiff::Timestamp,
};

use super::{Desired, ModelConfig, desired};
use crate::snapshot::Snapshot;

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn meta(key: &str) -> ObjectMeta {
    let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
    ObjectMeta {
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        ..ObjectMeta::default()
    }
}

/// A `type: LoadBalancer` Service with the given ingress IPs (`"ns/name"` or `"name"`).
pub(super) fn svc(key: &str, vips: &[&str]) -> Svc {
    let ingress = vips
        .iter()
        .map(|ip| LoadBalancerIngress {
            ip: Some((*ip).into()),
            ..LoadBalancerIngress::default()
        })
        .collect();
    Svc(Service {
        metadata: meta(key),
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            ..ServiceSpec::default()
        }),
        status: Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(ingress),
            }),
            ..ServiceStatus::default()
        }),
    })
}

pub(super) struct Svc(pub Service);

impl Svc {
    fn spec(&mut self) -> &mut ServiceSpec {
        self.0.spec.as_mut().unwrap()
    }

    pub fn type_(mut self, type_: &str) -> Self {
        self.spec().type_ = Some(type_.into());
        self
    }

    pub fn class(mut self, class: &str) -> Self {
        self.spec().load_balancer_class = Some(class.into());
        self
    }

    /// A port: `name` may be empty; `protocol` `None` means unset (TCP).
    pub fn port(
        mut self,
        name: &str,
        port: i32,
        protocol: Option<&str>,
        target: Option<IntOrString>,
    ) -> Self {
        self.spec().ports.get_or_insert_default().push(ServicePort {
            name: (!name.is_empty()).then(|| name.into()),
            port,
            protocol: protocol.map(Into::into),
            target_port: target,
            ..ServicePort::default()
        });
        self
    }

    /// An unnamed TCP port with the same targetPort.
    pub fn tcp(self, port: i32) -> Self {
        self.port("", port, None, None)
    }

    pub fn local(mut self) -> Self {
        self.spec().external_traffic_policy = Some("Local".into());
        self
    }

    pub fn policy(mut self, policy: &str) -> Self {
        self.spec().external_traffic_policy = Some(policy.into());
        self
    }

    pub fn affinity(mut self, affinity: &str, timeout: Option<i32>) -> Self {
        let spec = self.spec();
        spec.session_affinity = Some(affinity.into());
        spec.session_affinity_config = timeout.map(|t| SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(t),
            }),
        });
        self
    }

    pub fn ranges(mut self, ranges: &[&str]) -> Self {
        self.spec().load_balancer_source_ranges =
            Some(ranges.iter().map(|r| (*r).into()).collect());
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(key.into(), value.into());
        self
    }

    /// `metadata.creationTimestamp`, in seconds since the epoch.
    pub fn created(mut self, secs: i64) -> Self {
        self.0.metadata.creation_timestamp = Some(Time(Timestamp::from_second(secs).unwrap()));
        self
    }

    pub fn deleting(mut self) -> Self {
        self.0.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(1).unwrap()));
        self
    }
}

/// Endpoint conditions as `(ready, serving, terminating)`; `None` is nil.
pub(super) type Cond = (Option<bool>, Option<bool>, Option<bool>);
pub(super) const READY: Cond = (Some(true), Some(true), Some(false));
pub(super) const NOT_READY: Cond = (Some(false), Some(false), Some(false));
pub(super) const DRAINING: Cond = (Some(false), Some(true), Some(true));
pub(super) const TERMINATED: Cond = (Some(false), Some(false), Some(true));

/// An EndpointSlice of `service` (`"ns/name"` or `"name"`) with the given address type.
pub(super) fn slice(service: &str, name: &str, address_type: &str) -> Slice {
    let (namespace, service) = service.split_once('/').unwrap_or(("default", service));
    let mut metadata = meta(&format!("{namespace}/{name}"));
    metadata.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".into(),
        service.into(),
    )]));
    Slice(EndpointSlice {
        address_type: address_type.into(),
        endpoints: Vec::new(),
        metadata,
        ports: None,
    })
}

pub(super) struct Slice(pub EndpointSlice);

impl Slice {
    pub fn port(mut self, name: &str, port: i32, protocol: Option<&str>) -> Self {
        self.0.ports.get_or_insert_default().push(EndpointPort {
            name: Some(name.into()),
            port: Some(port),
            protocol: protocol.map(Into::into),
            ..EndpointPort::default()
        });
        self
    }

    /// An endpoint at `addr` on `node` (empty: no nodeName).
    pub fn ep(mut self, addr: &str, node: &str, (ready, serving, terminating): Cond) -> Self {
        self.0.endpoints.push(Endpoint {
            addresses: vec![addr.into()],
            conditions: Some(EndpointConditions {
                ready,
                serving,
                terminating,
            }),
            node_name: (!node.is_empty()).then(|| node.into()),
            ..Endpoint::default()
        });
        self
    }

    pub fn unlabeled(mut self) -> Self {
        self.0.metadata.labels = None;
        self
    }
}

/// A Ready, schedulable Node.
pub(super) fn node(name: &str) -> NodeB {
    NodeB(Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..NodeCondition::default()
            }]),
            ..NodeStatus::default()
        }),
    })
}

pub(super) struct NodeB(pub Node);

impl NodeB {
    pub fn ready(mut self, status: &str) -> Self {
        let conditions = self.0.status.as_mut().unwrap().conditions.as_mut().unwrap();
        conditions[0].status = status.into();
        self
    }

    pub fn no_status(mut self) -> Self {
        self.0.status = None;
        self
    }

    pub fn cordoned(mut self) -> Self {
        self.0.spec.as_mut().unwrap().unschedulable = Some(true);
        self
    }

    pub fn label(mut self, key: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_default()
            .insert(key.into(), String::new());
        self
    }
}

/// The objects of one test case.
#[derive(Default)]
pub(super) struct World {
    pub snapshot: Snapshot,
}

impl World {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ready nodes with these names.
    pub fn nodes(mut self, names: &[&str]) -> Self {
        for name in names {
            self.snapshot.insert_node(node(name).0);
        }
        self
    }

    pub fn node(mut self, node: NodeB) -> Self {
        self.snapshot.insert_node(node.0);
        self
    }

    pub fn svc(mut self, service: Svc) -> Self {
        assert!(self.snapshot.insert_service(service.0));
        self
    }

    pub fn slice(mut self, slice: Slice) -> Self {
        assert!(self.snapshot.insert_endpoint_slice(slice.0));
        self
    }

    /// The desired state of `node` with L2 and BGP on and no class filter.
    pub fn on(&self, node: &str) -> Desired {
        desired(node, &self.snapshot, &cfg())
    }

    pub fn with(&self, node: &str, config: &ModelConfig) -> Desired {
        desired(node, &self.snapshot, config)
    }
}

pub(super) fn cfg() -> ModelConfig {
    ModelConfig {
        load_balancer_class: None,
        l2_enabled: true,
        bgp_enabled: true,
    }
}

/// The VIPs of a set, as strings, for compact assertions.
pub(super) fn ips<'a>(set: impl IntoIterator<Item = &'a IpAddr>) -> Vec<String> {
    set.into_iter().map(ToString::to_string).collect()
}
