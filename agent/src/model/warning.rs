//! Problems the model works around; reported by `vipwire status`/`doctor` and logged.

use std::{fmt, net::IpAddr};

use super::Frontend;
use crate::snapshot::ObjectKey;

/// Something in the snapshot that the model skipped or worked around. Ordered, so a list of
/// them can be sorted and deduplicated deterministically.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Warning {
    /// This node has no Node object: it owns and announces nothing.
    NodeNotFound { node: String },
    /// An IPv4 VIP ending in `.0` or `.255`: some clients and routers treat it as a network or
    /// broadcast address and drop it (MetalLB's `avoidBuggyIPs`). The VIP is still served.
    BuggyVip { service: ObjectKey, vip: IpAddr },
    /// A `status.loadBalancer.ingress[].ip` that does not parse; that entry is skipped.
    MalformedIngressIp { service: ObjectKey, value: String },
    /// A field with a value the API would not accept; `action` says what the model did instead.
    InvalidField {
        object: ObjectKey,
        field: String,
        value: String,
        action: &'static str,
    },
    /// A named `targetPort` that an EndpointSlice with endpoints does not resolve (no slice
    /// port with the Service port's name and protocol); that slice's endpoints get no traffic.
    UnresolvedNamedPort {
        service: ObjectKey,
        port: String,
        target: String,
        slice: ObjectKey,
    },
    /// Two Services claim the same VIP, port and protocol; the older one keeps it.
    FrontendConflict {
        frontend: Frontend,
        kept: ObjectKey,
        dropped: ObjectKey,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NodeNotFound { node } => {
                write!(
                    f,
                    "node {node}: no Node object; owning and announcing nothing"
                )
            }
            Self::BuggyVip { service, vip } => write!(
                f,
                "service {service}: VIP {vip} ends in .0 or .255; some clients drop it"
            ),
            Self::MalformedIngressIp { service, value } => write!(
                f,
                "service {service}: status.loadBalancer.ingress ip {value:?} is not an IP address; skipped"
            ),
            Self::InvalidField {
                object,
                field,
                value,
                action,
            } => write!(f, "{object}: {field}: invalid value {value:?}; {action}"),
            Self::UnresolvedNamedPort {
                service,
                port,
                target,
                slice,
            } => write!(
                f,
                "service {service}: port {port:?} targetPort {target:?} not resolved by EndpointSlice {slice}; its endpoints get no traffic"
            ),
            Self::FrontendConflict {
                frontend,
                kept,
                dropped,
            } => write!(
                f,
                "VIP conflict on {frontend}: kept by service {kept}, ignored for service {dropped}"
            ),
        }
    }
}
