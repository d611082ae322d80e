//! EndpointSlices: conditions, locality, the Service join, address families, port resolution.

use k8s_openapi::{
    api::discovery::v1::EndpointConditions, apimachinery::pkg::util::intstr::IntOrString,
};

use super::*;
use crate::{
    model::{
        Backend, BackendState, Desired, Frontend, Protocol, Warning, endpoints::backend_state,
    },
    snapshot::ObjectKey,
};

const VIP: &str = "192.0.2.10";
const VIP6: &str = "2001:db8::10";

fn frontend(vip: &str, port: u16) -> Frontend {
    Frontend {
        vip: ip(vip),
        port,
        protocol: Protocol::Tcp,
    }
}

/// `(address, port, state)` of the backends of `vip:port/TCP`.
fn backends(d: &Desired, vip: &str, port: u16) -> Vec<(String, u16, BackendState)> {
    d.services[&frontend(vip, port)]
        .backends
        .iter()
        .map(|b| (b.addr.to_string(), b.port, b.state))
        .collect()
}

#[test]
fn endpoint_conditions() {
    use BackendState::{Active, Draining};
    let t = Some(true);
    let f = Some(false);
    #[rustfmt::skip]
    let cases: &[(&str, Cond, Option<BackendState>)] = &[
        // (name, (ready, serving, terminating), state)
        ("all nil: ready", (None, None, None), Some(Active)),
        ("ready", READY, Some(Active)),
        ("ready, serving unset", (t, None, f), Some(Active)),
        ("ready wins over serving=false", (t, f, f), Some(Active)),
        ("not ready", NOT_READY, None),
        ("not ready but serving, not terminating", (f, t, f), None),
        ("terminating and serving: drain", DRAINING, Some(Draining)),
        ("terminating, serving nil: drain", (f, None, t), Some(Draining)),
        ("terminating though ready: drain", (t, t, t), Some(Draining)),
        ("terminating, not serving: gone", TERMINATED, None),
    ];
    for (name, cond, expected) in cases {
        let (ready, serving, terminating) = *cond;
        let conditions = EndpointConditions {
            ready,
            serving,
            terminating,
        };
        assert_eq!(backend_state(Some(&conditions)), *expected, "{name}");

        let world = World::new()
            .nodes(&["n1"])
            .svc(svc("web", &[VIP]).tcp(80).local())
            .slice(slice("web", "web-1", "IPv4").ep("10.1.0.1", "n1", *cond));
        let d = world.on("n1");
        let got: Vec<BackendState> = backends(&d, VIP, 80).into_iter().map(|b| b.2).collect();
        assert_eq!(
            got,
            expected.iter().copied().collect::<Vec<_>>(),
            "{name}: backends"
        );
        // Only an active endpoint keeps the VIP announced (withdraw when only terminating remain).
        let announced = *expected == Some(Active);
        assert_eq!(!d.bgp.is_empty(), announced, "{name}: bgp");
        assert_eq!(!d.l2.is_empty(), announced, "{name}: l2");
    }
    assert_eq!(backend_state(None), Some(Active), "no conditions at all");
}

#[test]
fn only_local_endpoints_are_backends() {
    let world = World::new()
        .nodes(&["n1", "n2"])
        .svc(svc("web", &[VIP]).tcp(80))
        .slice(
            slice("web", "web-1", "IPv4")
                .ep("10.1.0.1", "n1", READY)
                .ep("10.2.0.1", "n2", READY)
                .ep("10.3.0.1", "", READY),
        );
    assert_eq!(
        backends(&world.on("n1"), VIP, 80),
        [("10.1.0.1".into(), 80, BackendState::Active)]
    );
    assert_eq!(
        backends(&world.on("n2"), VIP, 80),
        [("10.2.0.1".into(), 80, BackendState::Active)]
    );
}

#[test]
fn slices_join_by_label_in_the_same_namespace() {
    #[rustfmt::skip]
    let cases: Vec<(&str, Slice, bool)> = vec![
        ("label names the service", slice("prod/web", "s", "IPv4"), true),
        ("other service", slice("prod/api", "s", "IPv4"), false),
        ("other namespace", slice("dev/web", "s", "IPv4"), false),
        ("no label", slice("prod/web", "s", "IPv4").unlabeled(), false),
    ];
    for (name, slice, joined) in cases {
        let d = World::new()
            .nodes(&["n1"])
            .svc(svc("prod/web", &[VIP]).tcp(80))
            .slice(slice.ep("10.1.0.1", "n1", READY))
            .on("n1");
        assert_eq!(backends(&d, VIP, 80).len(), usize::from(joined), "{name}");
        assert_eq!(d.bgp.len(), usize::from(joined), "{name}: bgp");
    }
}

#[test]
fn address_families_do_not_mix() {
    let world = World::new()
        .nodes(&["n1"])
        .svc(svc("web", &[VIP, VIP6]).tcp(80).local())
        .slice(slice("web", "v4", "IPv4").ep("10.1.0.1", "n1", READY))
        .slice(slice("web", "v6", "IPv6").ep("fd00::1", "n1", NOT_READY))
        .slice(slice("web", "fqdn", "FQDN").ep("pod.example.com", "n1", READY));
    let d = world.on("n1");
    assert_eq!(
        backends(&d, VIP, 80),
        [("10.1.0.1".into(), 80, BackendState::Active)]
    );
    assert_eq!(backends(&d, VIP6, 80), []);
    // The IPv6 VIP has no ready IPv6 endpoint: only the IPv4 VIP is announced.
    assert_eq!(ips(&d.bgp), [VIP]);
}

#[test]
fn malformed_or_wrong_family_addresses_are_ignored() {
    let d = World::new()
        .nodes(&["n1"])
        .svc(svc("web", &[VIP]).tcp(80).local())
        .slice(
            slice("web", "web-1", "IPv4")
                .ep("10.1.0.300", "n1", READY)
                .ep("fd00::1", "n1", READY),
        )
        .on("n1");
    assert_eq!(backends(&d, VIP, 80), []);
    assert!(d.bgp.is_empty());
    assert_eq!(d.warnings.len(), 2, "{:?}", d.warnings);
    assert!(d.warnings.iter().all(|w| matches!(
        w,
        Warning::InvalidField {
            action: "endpoint ignored",
            ..
        }
    )));
}

#[test]
fn target_port_resolution() {
    use IntOrString::{Int, String as Name};
    #[rustfmt::skip]
    let cases: Vec<(&str, Option<IntOrString>, Slice, Option<u16>)> = vec![
        // (name, targetPort of Service port "http" 80/TCP, slice, resolved backend port)
        ("named, via slice port of the same name", Some(Name("web".into())),
            slice("web", "s", "IPv4").port("http", 8080, None), Some(8080)),
        ("named, slice port of another name", Some(Name("web".into())),
            slice("web", "s", "IPv4").port("metrics", 9090, None), None),
        ("named, slice port of another protocol", Some(Name("web".into())),
            slice("web", "s", "IPv4").port("http", 8080, Some("UDP")), None),
        ("named, slice without ports", Some(Name("web".into())),
            slice("web", "s", "IPv4"), None),
        ("numeric, slice without ports", Some(Int(8080)),
            slice("web", "s", "IPv4"), Some(8080)),
        ("numeric, the slice port wins", Some(Int(8080)),
            slice("web", "s", "IPv4").port("http", 8081, Some("TCP")), Some(8081)),
        ("unset: the port itself", None,
            slice("web", "s", "IPv4"), Some(80)),
    ];
    for (name, target, slice, resolved) in cases {
        let d = World::new()
            .nodes(&["n1"])
            .svc(svc("web", &[VIP]).port("http", 80, None, target.clone()))
            .slice(slice.ep("10.1.0.1", "n1", READY))
            .on("n1");
        let expected: Vec<_> = resolved
            .map(|port| ("10.1.0.1".to_owned(), port, BackendState::Active))
            .into_iter()
            .collect();
        assert_eq!(backends(&d, VIP, 80), expected, "{name}");
        let unresolved = d
            .warnings
            .iter()
            .any(|w| matches!(w, Warning::UnresolvedNamedPort { .. }));
        assert_eq!(unresolved, resolved.is_none(), "{name}: {:?}", d.warnings);
    }
}

#[test]
fn unresolved_named_port_warning_names_everything() {
    let d = World::new()
        .nodes(&["n1"])
        .svc(svc("web", &[VIP]).port("http", 80, None, Some(IntOrString::String("web".into()))))
        .slice(slice("web", "web-abc", "IPv4").ep("10.1.0.1", "n2", READY))
        .on("n1");
    assert_eq!(
        d.warnings,
        [Warning::UnresolvedNamedPort {
            service: ObjectKey::new("default", "web"),
            port: "http".into(),
            target: "web".into(),
            slice: ObjectKey::new("default", "web-abc"),
        }]
    );
}

#[test]
fn multi_port_service_resolves_each_port_and_each_slice() {
    // Pods of two versions expose the named port on different numbers: one slice each.
    let named = |n: &str| Some(IntOrString::String(n.into()));
    let d = World::new()
        .nodes(&["n1"])
        .svc(
            svc("web", &[VIP])
                .port("http", 80, None, named("web"))
                .port("https", 443, None, named("tls")),
        )
        .slice(
            slice("web", "v1", "IPv4")
                .port("http", 8080, None)
                .port("https", 8443, None)
                .ep("10.1.0.1", "n1", READY),
        )
        .slice(
            slice("web", "v2", "IPv4")
                .port("http", 9080, None)
                .port("https", 9443, None)
                .ep("10.1.0.2", "n1", DRAINING),
        )
        .on("n1");
    assert_eq!(
        backends(&d, VIP, 80),
        [
            ("10.1.0.1".into(), 8080, BackendState::Active),
            ("10.1.0.2".into(), 9080, BackendState::Draining)
        ]
    );
    assert_eq!(
        backends(&d, VIP, 443),
        [
            ("10.1.0.1".into(), 8443, BackendState::Active),
            ("10.1.0.2".into(), 9443, BackendState::Draining)
        ]
    );
}

#[test]
fn an_endpoint_in_two_slices_appears_once_with_its_best_state() {
    let d = World::new()
        .nodes(&["n1"])
        .svc(svc("web", &[VIP]).tcp(80))
        .slice(slice("web", "a", "IPv4").ep("10.1.0.1", "n1", DRAINING))
        .slice(slice("web", "b", "IPv4").ep("10.1.0.1", "n1", READY))
        .on("n1");
    let service = &d.services[&frontend(VIP, 80)];
    assert_eq!(
        service.backends,
        [Backend {
            addr: ip("10.1.0.1"),
            port: 80,
            state: BackendState::Active
        }]
    );
    assert!(service.has_active_backend());
}

#[test]
fn backends_are_sorted() {
    let d = World::new()
        .nodes(&["n1"])
        .svc(svc("web", &[VIP]).tcp(80))
        .slice(
            slice("web", "a", "IPv4")
                .ep("10.1.0.9", "n1", READY)
                .ep("10.1.0.10", "n1", DRAINING)
                .ep("10.1.0.2", "n1", READY),
        )
        .on("n1");
    let addrs: Vec<String> = backends(&d, VIP, 80).into_iter().map(|b| b.0).collect();
    assert_eq!(addrs, ["10.1.0.2", "10.1.0.9", "10.1.0.10"]);
}
