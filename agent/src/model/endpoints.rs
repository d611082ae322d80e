//! EndpointSlices: joining them to Services, reading endpoint conditions, resolving ports.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};

use super::{
    Backend, BackendState, Protocol, TargetPort, Warning,
    fnv::FnvHashMap,
    services::{PortSpec, valid_port},
};
use crate::snapshot::{ObjectKey, Snapshot};

/// The label that ties an EndpointSlice to its Service (same namespace).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

pub(super) type SliceRef<'a> = (&'a ObjectKey, &'a EndpointSlice);

/// Slices grouped by the Service they belong to, each group in key order.
pub(super) struct SliceIndex<'a> {
    by_service: FnvHashMap<(&'a str, &'a str), Vec<SliceRef<'a>>>,
}

impl<'a> SliceIndex<'a> {
    pub(super) fn new(snapshot: &'a Snapshot) -> Self {
        let mut by_service: FnvHashMap<_, Vec<_>> = FnvHashMap::default();
        for (key, slice) in &snapshot.endpoint_slices {
            let service = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let Some(service) = service {
                by_service
                    .entry((&*key.namespace, service.as_str()))
                    .or_default()
                    .push((key, slice.as_ref()));
            }
        }
        Self { by_service }
    }

    pub(super) fn of(&self, service: &'a ObjectKey) -> &[SliceRef<'a>] {
        self.by_service
            .get(&(&*service.namespace, &*service.name))
            .map_or(&[], Vec::as_slice)
    }
}

/// What an endpoint's conditions allow. The API reads nil `ready` and `serving` as true and
/// nil `terminating` as false; a terminating endpoint never takes new flows, even when marked
/// ready (`publishNotReadyAddresses`), so a rollout drains instead of taking new work.
pub fn backend_state(conditions: Option<&EndpointConditions>) -> Option<BackendState> {
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let serving = conditions.and_then(|c| c.serving).unwrap_or(true);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    match (terminating, ready, serving) {
        (false, true, _) => Some(BackendState::Active),
        (true, _, true) => Some(BackendState::Draining),
        _ => None,
    }
}

/// Whether `slice` carries addresses of `vip`'s family (FQDN slices never do).
fn same_family(slice: &EndpointSlice, vip: IpAddr) -> bool {
    match slice.address_type.as_str() {
        "IPv4" => vip.is_ipv4(),
        "IPv6" => vip.is_ipv6(),
        _ => false,
    }
}

/// The endpoint's address: the first one, as kube-proxy uses (the rest are fungible).
fn address(endpoint: &Endpoint, ipv4: bool) -> Option<IpAddr> {
    let addr: IpAddr = endpoint.addresses.first()?.parse().ok()?;
    (addr.is_ipv4() == ipv4).then_some(addr)
}

/// Where a Service's active endpoints of one family are.
#[derive(Debug, Default)]
pub(super) struct FamilySummary<'a> {
    /// At least one active endpoint anywhere (with or without a node).
    pub any_active: bool,
    /// Nodes with at least one active endpoint, sorted, without duplicates.
    pub active_nodes: Vec<&'a str>,
}

#[derive(Debug, Default)]
pub(super) struct Summary<'a> {
    v4: FamilySummary<'a>,
    v6: FamilySummary<'a>,
}

impl<'a> Summary<'a> {
    pub(super) fn family(&self, vip: IpAddr) -> &FamilySummary<'a> {
        if vip.is_ipv4() { &self.v4 } else { &self.v6 }
    }
}

/// Summarizes a Service's slices; warns once about addresses that do not parse.
pub(super) fn summarize<'a>(slices: &[SliceRef<'a>], warnings: &mut Vec<Warning>) -> Summary<'a> {
    let mut summary = Summary::default();
    for &(key, slice) in slices {
        let (family, ipv4) = match slice.address_type.as_str() {
            "IPv4" => (&mut summary.v4, true),
            "IPv6" => (&mut summary.v6, false),
            _ => continue,
        };
        for (i, endpoint) in slice.endpoints.iter().enumerate() {
            if address(endpoint, ipv4).is_none() {
                warnings.push(Warning::InvalidField {
                    object: key.clone(),
                    field: format!("endpoints[{i}].addresses[0]"),
                    value: endpoint.addresses.first().cloned().unwrap_or_default(),
                    action: "endpoint ignored",
                });
                continue;
            }
            if backend_state(endpoint.conditions.as_ref()) != Some(BackendState::Active) {
                continue;
            }
            family.any_active = true;
            if let Some(node) = endpoint.node_name.as_deref() {
                family.active_nodes.push(node);
            }
        }
    }
    for family in [&mut summary.v4, &mut summary.v6] {
        family.active_nodes.sort_unstable();
        family.active_nodes.dedup();
    }
    summary
}

/// The backend port for `port` in `slice`: the slice port with the Service port's name and
/// protocol (what the EndpointSlice controller writes, named targetPorts included); without
/// one, a numeric targetPort as declared; a named one stays unresolved.
fn resolve(slice: &EndpointSlice, port: &PortSpec) -> Option<u16> {
    let name = port.name.as_deref().unwrap_or("");
    let from_slice = slice
        .ports
        .iter()
        .flatten()
        .find(|p| {
            p.name.as_deref().unwrap_or("") == name
                && Protocol::parse(p.protocol.as_deref()) == Some(port.protocol)
        })
        .and_then(|p| p.port)
        .and_then(valid_port);
    match (&port.target, from_slice) {
        (_, Some(resolved)) => Some(resolved),
        (TargetPort::Number(number), None) => Some(*number),
        (TargetPort::Named(_), None) => None,
    }
}

/// The local backends of one frontend, sorted, one per (address, port) with the best state
/// when slices overlap (as they briefly do while the controller moves endpoints).
pub(super) fn local_backends(
    service: &ObjectKey,
    slices: &[SliceRef<'_>],
    vip: IpAddr,
    port: &PortSpec,
    node: &str,
    warnings: &mut Vec<Warning>,
) -> Vec<Backend> {
    let mut best: BTreeMap<(IpAddr, u16), BackendState> = BTreeMap::new();
    for &(key, slice) in slices {
        if !same_family(slice, vip) || slice.endpoints.is_empty() {
            continue;
        }
        let Some(target) = resolve(slice, port) else {
            if let TargetPort::Named(target) = &port.target {
                warnings.push(Warning::UnresolvedNamedPort {
                    service: service.clone(),
                    port: port.name.clone().unwrap_or_default(),
                    target: target.clone(),
                    slice: key.clone(),
                });
            }
            continue;
        };
        for endpoint in &slice.endpoints {
            if endpoint.node_name.as_deref() != Some(node) {
                continue;
            }
            let Some(state) = backend_state(endpoint.conditions.as_ref()) else {
                continue;
            };
            let Some(addr) = address(endpoint, vip.is_ipv4()) else {
                continue;
            };
            best.entry((addr, target))
                .and_modify(|s| *s = (*s).min(state))
                .or_insert(state);
        }
    }
    best.into_iter()
        .map(|((addr, port), state)| Backend { addr, port, state })
        .collect()
}
