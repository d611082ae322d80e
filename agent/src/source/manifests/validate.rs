//! The API server's validation of the fields vipwire reads (pkg/apis/core/validation and
//! pkg/apis/discovery/validation), with its wording, so a manifest that loads here would also
//! be accepted by a cluster.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use k8s_openapi::{
    api::{
        core::v1::{Node, Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

/// One rejected field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Problem {
    pub field: String,
    pub message: String,
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }

    fn required(&mut self, field: impl Into<String>) {
        self.add(field, "Required value");
    }

    fn invalid(&mut self, field: impl Into<String>, value: impl std::fmt::Debug, why: &str) {
        self.add(field, format!("Invalid value: {value:?}: {why}"));
    }

    fn unsupported(&mut self, field: impl Into<String>, value: &str, supported: &[&str]) {
        let supported: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        self.add(
            field,
            format!(
                "Unsupported value: {value:?}: supported values: {}",
                supported.join(", ")
            ),
        );
    }
}

const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const MAX_ENDPOINTS: usize = 1000;
const MAX_ADDRESSES: usize = 100;

pub(super) fn service(service: &Service) -> Vec<Problem> {
    let mut p = Problems::default();
    metadata(&mut p, &service.metadata, true, dns1035_label);
    let default_spec = ServiceSpec::default();
    let spec = service.spec.as_ref().unwrap_or(&default_spec);
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    let types = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
    if !types.contains(&type_) {
        p.unsupported("spec.type", type_, &types);
    }
    let load_balancer = type_ == "LoadBalancer";
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() && load_balancer {
        p.required("spec.ports");
    }
    let mut names = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        service_port(&mut p, i, port, ports.len() > 1, &mut names);
        let key = (port.port, port.protocol.as_deref().unwrap_or("TCP"));
        if !seen.insert(key) {
            p.add(
                format!("spec.ports[{i}]"),
                format!("Duplicate value: {}/{}", key.0, key.1),
            );
        }
    }

    let external = matches!(type_, "LoadBalancer" | "NodePort");
    if let Some(policy) = spec.external_traffic_policy.as_deref() {
        if !external {
            p.add(
                "spec.externalTrafficPolicy",
                "Invalid value: may only be set when `type` is 'NodePort' or 'LoadBalancer'",
            );
        } else if !matches!(policy, "Cluster" | "Local") {
            p.unsupported("spec.externalTrafficPolicy", policy, &["Cluster", "Local"]);
        }
    }

    let affinity = spec.session_affinity.as_deref().unwrap_or("None");
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    match affinity {
        "None" if spec.session_affinity_config.is_some() => p.add(
            "spec.sessionAffinityConfig",
            "Invalid value: must not be set when sessionAffinity is None",
        ),
        "None" => {}
        "ClientIP" => {
            if let Some(t) = timeout.filter(|t| !(1..=86_400).contains(t)) {
                p.invalid(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    t,
                    "must be greater than 0 and less than 86400",
                );
            }
        }
        other => p.unsupported("spec.sessionAffinity", other, &["ClientIP", "None"]),
    }

    let ranges = spec
        .load_balancer_source_ranges
        .as_deref()
        .unwrap_or_default();
    if !ranges.is_empty() && !load_balancer {
        p.add(
            "spec.loadBalancerSourceRanges",
            "Forbidden: may only be used when `type` is 'LoadBalancer'",
        );
    }
    for (i, range) in ranges.iter().enumerate() {
        if range.trim().parse::<IpNet>().is_err() {
            p.invalid(
                format!("spec.loadBalancerSourceRanges[{i}]"),
                range,
                "must be a list of IP ranges. For example, 10.240.0.0/24,10.250.0.0/24",
            );
        }
    }

    if let Some(class) = spec.load_balancer_class.as_deref() {
        if !load_balancer {
            p.add(
                "spec.loadBalancerClass",
                "Forbidden: may only be used when `type` is 'LoadBalancer'",
            );
        } else if !qualified_name(class) {
            p.invalid(
                "spec.loadBalancerClass",
                class,
                "must be a qualified name like 'example.com/my-lb'",
            );
        }
    }

    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    for (i, entry) in ingress.iter().enumerate() {
        if let Some(ip) = entry.ip.as_deref()
            && ip.parse::<IpAddr>().is_err()
        {
            p.invalid(
                format!("status.loadBalancer.ingress[{i}].ip"),
                ip,
                "must be a valid IP address",
            );
        }
        if let Some(hostname) = entry.hostname.as_deref()
            && (!dns1123_subdomain(hostname) || hostname.parse::<IpAddr>().is_ok())
        {
            p.invalid(
                format!("status.loadBalancer.ingress[{i}].hostname"),
                hostname,
                "must be a DNS name, not an IP address",
            );
        }
    }
    p.0
}

fn service_port(
    p: &mut Problems,
    i: usize,
    port: &ServicePort,
    several: bool,
    names: &mut BTreeSet<String>,
) {
    let field = |name: &str| format!("spec.ports[{i}].{name}");
    match port.name.as_deref().filter(|n| !n.is_empty()) {
        None if several => p.required(field("name")),
        None => {}
        Some(name) => {
            if !dns1123_label(name) {
                p.invalid(field("name"), name, "must be a DNS-1123 label");
            }
            if !names.insert(name.to_owned()) {
                p.add(field("name"), format!("Duplicate value: {name:?}"));
            }
        }
    }
    if !(1..=65_535).contains(&port.port) {
        p.invalid(
            field("port"),
            port.port,
            "must be between 1 and 65535, inclusive",
        );
    }
    if let Some(protocol) = port.protocol.as_deref()
        && !PROTOCOLS.contains(&protocol)
    {
        p.unsupported(field("protocol"), protocol, PROTOCOLS);
    }
    match &port.target_port {
        // 0 and "" are defaulted to the port by the API server.
        Some(IntOrString::Int(n)) if !(0..=65_535).contains(n) => {
            p.invalid(
                field("targetPort"),
                n,
                "must be between 1 and 65535, inclusive",
            );
        }
        Some(IntOrString::String(name)) if !name.is_empty() && !iana_svc_name(name) => {
            p.invalid(
                field("targetPort"),
                name,
                "must be a port number or an IANA_SVC_NAME (at most 15 characters, a-z0-9 and '-', at least one letter)",
            );
        }
        _ => {}
    }
}

pub(super) fn endpoint_slice(slice: &EndpointSlice) -> Vec<Problem> {
    let mut p = Problems::default();
    metadata(&mut p, &slice.metadata, true, dns1123_subdomain);
    let address_type = slice.address_type.as_str();
    let parses: fn(&str) -> bool = match address_type {
        "IPv4" => |a| a.parse::<Ipv4Addr>().is_ok(),
        "IPv6" => |a| a.parse::<Ipv6Addr>().is_ok(),
        "FQDN" => dns1123_subdomain,
        "" => {
            p.required("addressType");
            |_| true
        }
        other => {
            p.unsupported("addressType", other, &["FQDN", "IPv4", "IPv6"]);
            |_| true
        }
    };
    if slice.endpoints.len() > MAX_ENDPOINTS {
        p.add(
            "endpoints",
            format!(
                "Too many: {}: must have at most {MAX_ENDPOINTS} items",
                slice.endpoints.len()
            ),
        );
    }
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        endpoint_fields(&mut p, i, endpoint, address_type, parses);
    }
    let mut names = BTreeSet::new();
    for (i, port) in slice.ports.iter().flatten().enumerate() {
        let field = |name: &str| format!("ports[{i}].{name}");
        let name = port.name.as_deref().unwrap_or("");
        if !name.is_empty() && !dns1123_label(name) {
            p.invalid(field("name"), name, "must be a DNS-1123 label");
        }
        if !names.insert(name) {
            p.add(field("name"), format!("Duplicate value: {name:?}"));
        }
        if let Some(number) = port.port.filter(|n| !(1..=65_535).contains(n)) {
            p.invalid(
                field("port"),
                number,
                "must be between 1 and 65535, inclusive",
            );
        }
        if let Some(protocol) = port.protocol.as_deref()
            && !PROTOCOLS.contains(&protocol)
        {
            p.unsupported(field("protocol"), protocol, PROTOCOLS);
        }
    }
    p.0
}

fn endpoint_fields(
    p: &mut Problems,
    i: usize,
    endpoint: &Endpoint,
    address_type: &str,
    parses: fn(&str) -> bool,
) {
    let count = endpoint.addresses.len();
    if count == 0 {
        p.required(format!("endpoints[{i}].addresses"));
    } else if count > MAX_ADDRESSES {
        p.add(
            format!("endpoints[{i}].addresses"),
            format!("Too many: {count}: must have at most {MAX_ADDRESSES} items"),
        );
    }
    for (j, address) in endpoint.addresses.iter().enumerate() {
        if !parses(address) {
            p.invalid(
                format!("endpoints[{i}].addresses[{j}]"),
                address,
                &format!("must be a valid {address_type} address"),
            );
        }
    }
    if let Some(node) = endpoint.node_name.as_deref()
        && !dns1123_subdomain(node)
    {
        p.invalid(
            format!("endpoints[{i}].nodeName"),
            node,
            "must be a DNS-1123 subdomain",
        );
    }
}

pub(super) fn node(node: &Node) -> Vec<Problem> {
    let mut p = Problems::default();
    metadata(&mut p, &node.metadata, false, dns1123_subdomain);
    p.0
}

pub(super) fn has_service_label(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .is_some_and(|l| l.contains_key("kubernetes.io/service-name"))
}

fn metadata(p: &mut Problems, meta: &ObjectMeta, namespaced: bool, name_ok: fn(&str) -> bool) {
    match meta.name.as_deref() {
        None | Some("") => p.add(
            "metadata.name",
            "Required value: name is required (generateName needs an API server)",
        ),
        Some(name) if !name_ok(name) => {
            p.invalid("metadata.name", name, "must be a valid DNS name");
        }
        Some(_) => {}
    }
    match meta.namespace.as_deref() {
        Some(ns) if !namespaced && !ns.is_empty() => {
            p.add("metadata.namespace", "Forbidden: not allowed on this type");
        }
        Some(ns) if namespaced && !ns.is_empty() && !dns1123_label(ns) => {
            p.invalid("metadata.namespace", ns, "must be a DNS-1123 label");
        }
        _ => {}
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub(super) fn dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// DNS-1123 labels joined by dots, at most 253 characters.
pub(super) fn dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns1123_label)
}

/// A DNS-1123 label that starts with a letter (Service names).
pub(super) fn dns1035_label(s: &str) -> bool {
    dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// At most 15 of `a-z0-9-`, at least one letter, no leading, trailing or double `-`.
pub(super) fn iana_svc_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && s.bytes().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// `[prefix/]name`: an optional DNS-1123 subdomain prefix and a name of at most 63 of
/// `[A-Za-z0-9_.-]` that starts and ends alphanumeric (label keys, loadBalancerClass).
pub(super) fn qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, s),
    };
    let b = name.as_bytes();
    let name_ok = (1..=63).contains(&b.len())
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric();
    name_ok && prefix.is_none_or(|p| !p.is_empty() && dns1123_subdomain(p))
}
