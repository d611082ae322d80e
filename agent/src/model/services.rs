//! Which Services count, and what their specs say, normalized the way the API server defaults.

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;
use k8s_openapi::{
    api::core::v1::{Service, ServicePort},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{Backend, DesiredService, ModelConfig, Protocol, TargetPort, TrafficPolicy, Warning};
use crate::snapshot::{ObjectKey, Snapshot};

/// Read when `spec.loadBalancerSourceRanges` is empty, as the upstream service helpers do.
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset (3 hours), and its maximum (1 day).
pub const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10_800);
const MAX_AFFINITY_TIMEOUT_SECS: i32 = 86_400;

/// A Service port, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PortSpec {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
    pub target: TargetPort,
}

/// A Service the model serves, with its spec normalized.
pub(super) struct Selected<'a> {
    pub key: &'a ObjectKey,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<PortSpec>,
    pub traffic_policy: TrafficPolicy,
    pub session_affinity: Option<Duration>,
    /// Both families; filtered per VIP in [`Selected::desired_service`].
    pub source_ranges: Option<Vec<IpNet>>,
}

impl Selected<'_> {
    pub(super) fn desired_service(
        &self,
        port: &PortSpec,
        vip: IpAddr,
        backends: Vec<Backend>,
    ) -> DesiredService {
        let source_ranges = self.source_ranges.as_ref().map(|ranges| {
            ranges
                .iter()
                .filter(|range| range.addr().is_ipv4() == vip.is_ipv4())
                .copied()
                .collect()
        });
        DesiredService {
            service: self.key.clone(),
            port_name: port.name.clone(),
            target_port: port.target.clone(),
            traffic_policy: self.traffic_policy,
            session_affinity: self.session_affinity,
            source_ranges,
            backends,
        }
    }
}

/// The LoadBalancer Services of our class that have at least one VIP, oldest first (then by
/// key): the order in which they claim frontends.
pub(super) fn select<'a>(
    snapshot: &'a Snapshot,
    config: &ModelConfig,
    warnings: &mut Vec<Warning>,
) -> Vec<Selected<'a>> {
    let mut selected: Vec<_> = snapshot
        .services
        .iter()
        .filter(|(_, service)| is_ours(service, config))
        .filter_map(|(key, service)| normalize(key, service, warnings))
        .collect();
    selected.sort_by(|(a_created, a), (b_created, b)| {
        (a_created.is_none(), a_created, a.key).cmp(&(b_created.is_none(), b_created, b.key))
    });
    selected.into_iter().map(|(_, s)| s).collect()
}

pub(super) fn is_ours(service: &Service, config: &ModelConfig) -> bool {
    let Some(spec) = &service.spec else {
        return false;
    };
    spec.type_.as_deref() == Some("LoadBalancer")
        && service.metadata.deletion_timestamp.is_none()
        && spec.load_balancer_class.as_deref() == config.load_balancer_class.as_deref()
}

pub(super) type CreatedAt<'a> = Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>;

pub(super) fn normalize<'a>(
    key: &'a ObjectKey,
    service: &'a Service,
    warnings: &mut Vec<Warning>,
) -> Option<(CreatedAt<'a>, Selected<'a>)> {
    let vips = vips(key, service, warnings);
    if vips.is_empty() {
        return None;
    }
    let spec = service.spec.as_ref()?;
    let mut invalid = |field: String, value: String, action: &'static str| {
        warnings.push(Warning::InvalidField {
            object: key.clone(),
            field,
            value,
            action,
        });
    };

    let mut ports: Vec<PortSpec> = Vec::new();
    for (i, port) in spec.ports.iter().flatten().enumerate() {
        match port_spec(port) {
            Ok(spec)
                if ports
                    .iter()
                    .any(|p| (p.port, p.protocol) == (spec.port, spec.protocol)) =>
            {
                invalid(
                    format!("spec.ports[{i}]"),
                    format!("{}/{}", spec.port, spec.protocol),
                    "duplicate port skipped",
                );
            }
            Ok(spec) => ports.push(spec),
            Err((field, value)) => {
                invalid(format!("spec.ports[{i}].{field}"), value, "port skipped")
            }
        }
    }

    let traffic_policy = match spec.external_traffic_policy.as_deref() {
        None | Some("Cluster") => TrafficPolicy::Cluster,
        Some("Local") => TrafficPolicy::Local,
        Some(other) => {
            invalid(
                "spec.externalTrafficPolicy".into(),
                other.into(),
                "treated as Cluster",
            );
            TrafficPolicy::Cluster
        }
    };

    let session_affinity = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout {
                None => Some(DEFAULT_AFFINITY_TIMEOUT),
                Some(secs @ 1..=MAX_AFFINITY_TIMEOUT_SECS) => {
                    Some(Duration::from_secs(secs.unsigned_abs().into()))
                }
                Some(secs) => {
                    invalid(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds".into(),
                        secs.to_string(),
                        "default 10800 used",
                    );
                    Some(DEFAULT_AFFINITY_TIMEOUT)
                }
            }
        }
        Some(other) => {
            invalid("spec.sessionAffinity".into(), other.into(), "no affinity");
            None
        }
    };

    let source_ranges = source_ranges(service, &mut invalid);
    let selected = Selected {
        key,
        vips,
        ports,
        traffic_policy,
        session_affinity,
        source_ranges,
    };
    Some((service.metadata.creation_timestamp.as_ref(), selected))
}

/// The ingress IPs, sorted and deduplicated.
fn vips(key: &ObjectKey, service: &Service, warnings: &mut Vec<Warning>) -> Vec<IpAddr> {
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let mut vips = Vec::new();
    for value in ingress
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref())
    {
        match value.parse::<IpAddr>() {
            Ok(vip) => {
                if let IpAddr::V4(v4) = vip
                    && matches!(v4.octets()[3], 0 | 255)
                {
                    warnings.push(Warning::BuggyVip {
                        service: key.clone(),
                        vip,
                    });
                }
                vips.push(vip);
            }
            Err(_) => warnings.push(Warning::MalformedIngressIp {
                service: key.clone(),
                value: value.to_owned(),
            }),
        }
    }
    vips.sort_unstable();
    vips.dedup();
    vips
}

/// Validates one Service port; the error names the field (relative to the port) and value.
pub(super) fn port_spec(port: &ServicePort) -> Result<PortSpec, (&'static str, String)> {
    let number = valid_port(port.port).ok_or(("port", port.port.to_string()))?;
    let protocol = Protocol::parse(port.protocol.as_deref())
        .ok_or_else(|| ("protocol", port.protocol.clone().unwrap_or_default()))?;
    // The API server defaults an unset, zero or empty targetPort to the port.
    let target = match &port.target_port {
        None => TargetPort::Number(number),
        Some(IntOrString::Int(0)) => TargetPort::Number(number),
        Some(IntOrString::String(name)) if name.is_empty() => TargetPort::Number(number),
        Some(IntOrString::Int(n)) => {
            TargetPort::Number(valid_port(*n).ok_or(("targetPort", n.to_string()))?)
        }
        Some(IntOrString::String(name)) => TargetPort::Named(name.clone()),
    };
    Ok(PortSpec {
        name: port.name.clone().filter(|n| !n.is_empty()),
        port: number,
        protocol,
        target,
    })
}

/// `1..=65535` as a `u16`.
pub(super) fn valid_port(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|&p| p != 0)
}

/// `None` when no range is set (any client); malformed entries are dropped with a warning,
/// but still make the Service restricted (fail closed).
fn source_ranges(
    service: &Service,
    invalid: &mut impl FnMut(String, String, &'static str),
) -> Option<Vec<IpNet>> {
    let from_spec = service
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_source_ranges.as_ref())
        .filter(|r| !r.is_empty());
    let (field, raw): (String, Vec<&str>) = match from_spec {
        Some(ranges) => (
            "spec.loadBalancerSourceRanges".into(),
            ranges.iter().map(String::as_str).collect(),
        ),
        None => {
            let annotation = service
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(SOURCE_RANGES_ANNOTATION))
                .filter(|v| !v.trim().is_empty())?;
            (
                format!("metadata.annotations[{SOURCE_RANGES_ANNOTATION}]"),
                annotation.split(',').collect(),
            )
        }
    };
    let mut ranges = Vec::new();
    for value in raw {
        match value.trim().parse::<IpNet>() {
            Ok(range) => ranges.push(range.trunc()),
            Err(_) => invalid(field.clone(), value.to_owned(), "range ignored"),
        }
    }
    ranges.sort_unstable();
    ranges.dedup();
    Some(ranges)
}
