//! Which Services count, their VIPs, ports, policies, affinity, source ranges and conflicts.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
use crate::{
    model::{Frontend, ModelConfig, Protocol, TargetPort, TrafficPolicy, Warning},
    snapshot::ObjectKey,
};

const VIP: &str = "192.0.2.10";

fn fe(vip: &str, port: u16, protocol: Protocol) -> Frontend {
    Frontend {
        vip: ip(vip),
        port,
        protocol,
    }
}

/// A world with one Ready node `n1`, the Service, and one ready endpoint on `n1`.
fn one(service: Svc) -> World {
    World::new()
        .nodes(&["n1"])
        .svc(service)
        .slice(slice("web", "web-1", "IPv4").ep("10.1.0.1", "n1", READY))
        .slice(slice("web", "web-2", "IPv6").ep("fd00::1", "n1", READY))
}

#[test]
fn selection_by_type_class_and_deletion() {
    let class = |c: Option<&str>| ModelConfig {
        load_balancer_class: c.map(Into::into),
        ..cfg()
    };
    #[rustfmt::skip]
    let cases: &[(&str, Svc, ModelConfig, bool)] = &[
        ("LoadBalancer, no class, no filter", svc("web", &[VIP]).tcp(80), class(None), true),
        ("ClusterIP is ignored", svc("web", &[VIP]).tcp(80).type_("ClusterIP"), class(None), false),
        ("NodePort is ignored", svc("web", &[VIP]).tcp(80).type_("NodePort"), class(None), false),
        ("class set, no filter: not ours", svc("web", &[VIP]).tcp(80).class("x"), class(None), false),
        ("no class, filter x: not ours", svc("web", &[VIP]).tcp(80), class(Some("x")), false),
        ("class x, filter x", svc("web", &[VIP]).tcp(80).class("x"), class(Some("x")), true),
        ("class y, filter x", svc("web", &[VIP]).tcp(80).class("y"), class(Some("x")), false),
        ("being deleted", svc("web", &[VIP]).tcp(80).deleting(), class(None), false),
        ("no ingress IP yet", svc("web", &[]).tcp(80), class(None), false),
    ];
    for (name, service, config, selected) in cases {
        let world = one(Svc(service.0.clone()));
        let d = world.with("n1", config);
        assert_eq!(!d.services.is_empty(), *selected, "{name}: services");
        assert_eq!(d.bgp.contains(&ip(VIP)), *selected, "{name}: bgp");
        assert_eq!(d.l2.contains(&ip(VIP)), *selected, "{name}: l2");
    }
}

#[test]
fn ingress_ips() {
    #[rustfmt::skip]
    let cases: &[(&str, &[&str], &[&str], usize)] = &[
        // (name, ingress ips, expected VIPs, expected warnings)
        ("one IPv4", &["192.0.2.10"], &["192.0.2.10"], 0),
        ("dual-stack", &["192.0.2.10", "2001:db8::10"], &["192.0.2.10", "2001:db8::10"], 0),
        ("duplicates collapse", &["192.0.2.10", "192.0.2.10"], &["192.0.2.10"], 0),
        ("malformed skipped, rest kept", &["192.0.2.10", "192.0.2.300"], &["192.0.2.10"], 1),
        ("hostname-like value is malformed", &["lb.example.com"], &[], 1),
        (".0 served with a warning", &["192.0.2.0"], &["192.0.2.0"], 1),
        (".255 served with a warning", &["192.0.2.255"], &["192.0.2.255"], 1),
        ("IPv6 ending in ff is fine", &["2001:db8::ff"], &["2001:db8::ff"], 0),
    ];
    for (name, ingress, vips, warnings) in cases {
        let d = one(svc("web", ingress).tcp(80)).on("n1");
        let got: Vec<String> = d.services.keys().map(|f| f.vip.to_string()).collect();
        assert_eq!(got, *vips, "{name}: VIPs");
        assert_eq!(ips(&d.bgp), *vips, "{name}: announced");
        assert_eq!(d.warnings.len(), *warnings, "{name}: {:?}", d.warnings);
    }
}

#[test]
fn warning_kinds_for_ingress() {
    let d = one(svc("web", &["192.0.2.255", "nope"]).tcp(80)).on("n1");
    let web = ObjectKey::new("default", "web");
    assert_eq!(
        d.warnings,
        [
            Warning::BuggyVip {
                service: web.clone(),
                vip: ip("192.0.2.255")
            },
            Warning::MalformedIngressIp {
                service: web,
                value: "nope".into()
            },
        ]
    );
    assert!(d.warnings[0].to_string().contains(".0 or .255"));
}

#[test]
fn hostname_only_ingress_is_skipped_quietly() {
    let mut service = svc("web", &[]).tcp(80);
    let status = service.0.status.as_mut().unwrap();
    status.load_balancer.as_mut().unwrap().ingress =
        Some(vec![k8s_openapi::api::core::v1::LoadBalancerIngress {
            hostname: Some("lb.example.com".into()),
            ..Default::default()
        }]);
    let d = one(service).on("n1");
    assert!(d.services.is_empty() && d.warnings.is_empty());
}

/// (name, protocol, port, targetPort, expected protocol and target or rejected)
type PortCase = (
    &'static str,
    Option<&'static str>,
    i32,
    Option<IntOrString>,
    Option<(Protocol, TargetPort)>,
);

#[test]
fn ports_protocols_and_target_ports() {
    use IntOrString::{Int, String as Name};
    #[rustfmt::skip]
    let cases: Vec<PortCase> = vec![
        ("unset protocol is TCP", None, 80, None, Some((Protocol::Tcp, TargetPort::Number(80)))),
        ("UDP", Some("UDP"), 53, None, Some((Protocol::Udp, TargetPort::Number(53)))),
        ("SCTP", Some("SCTP"), 9, None, Some((Protocol::Sctp, TargetPort::Number(9)))),
        ("lowercase protocol rejected", Some("tcp"), 80, None, None),
        ("unknown protocol rejected", Some("ICMP"), 80, None, None),
        ("port 0 rejected", None, 0, None, None),
        ("port 65536 rejected", None, 65_536, None, None),
        ("port 65535 accepted", None, 65_535, None, Some((Protocol::Tcp, TargetPort::Number(65_535)))),
        ("numeric targetPort", None, 80, Some(Int(8080)), Some((Protocol::Tcp, TargetPort::Number(8080)))),
        ("targetPort 0 defaults to port", None, 80, Some(Int(0)), Some((Protocol::Tcp, TargetPort::Number(80)))),
        ("empty targetPort defaults to port", None, 80, Some(Name(String::new())), Some((Protocol::Tcp, TargetPort::Number(80)))),
        ("named targetPort", None, 80, Some(Name("http".into())), Some((Protocol::Tcp, TargetPort::Named("http".into())))),
        ("targetPort out of range", None, 80, Some(Int(70_000)), None),
    ];
    for (name, protocol, port, target, expected) in cases {
        let d = one(svc("web", &[VIP]).port("p", port, protocol, target)).on("n1");
        match expected {
            Some((protocol, target)) => {
                let frontend = fe(VIP, u16::try_from(port).unwrap(), protocol);
                let service = d
                    .services
                    .get(&frontend)
                    .unwrap_or_else(|| panic!("{name}"));
                assert_eq!(service.target_port, target, "{name}");
                assert_eq!(service.port_name.as_deref(), Some("p"), "{name}");
                // `one()`'s slices carry no ports, so a named targetPort stays unresolved.
                let unresolved = |w: &Warning| matches!(w, Warning::UnresolvedNamedPort { .. });
                assert!(
                    d.warnings.iter().all(unresolved),
                    "{name}: {:?}",
                    d.warnings
                );
            }
            None => {
                assert!(d.services.is_empty(), "{name}: {:?}", d.services);
                assert!(
                    matches!(&d.warnings[..], [Warning::InvalidField { field, .. }] if field.starts_with("spec.ports[0].")),
                    "{name}: {:?}",
                    d.warnings
                );
                // A Service without a usable port claims nothing, so it is not announced.
                assert!(d.bgp.is_empty() && d.l2.is_empty(), "{name}");
            }
        }
    }
}

#[test]
fn same_port_twice_in_one_service_keeps_the_first() {
    let service = svc("web", &[VIP])
        .port("a", 80, None, Some(IntOrString::Int(8080)))
        .port("b", 80, None, Some(IntOrString::Int(9090)))
        .port("c", 80, Some("UDP"), None);
    let d = one(service).on("n1");
    assert_eq!(d.services.len(), 2);
    assert_eq!(
        d.services[&fe(VIP, 80, Protocol::Tcp)].target_port,
        TargetPort::Number(8080)
    );
    assert!(
        matches!(&d.warnings[..], [Warning::InvalidField { field, .. }] if field == "spec.ports[1]")
    );
}

#[test]
fn traffic_policy() {
    #[rustfmt::skip]
    let cases = [
        ("unset is Cluster", None, TrafficPolicy::Cluster, 0),
        ("Cluster", Some("Cluster"), TrafficPolicy::Cluster, 0),
        ("Local", Some("Local"), TrafficPolicy::Local, 0),
        ("unknown treated as Cluster", Some("local"), TrafficPolicy::Cluster, 1),
    ];
    for (name, policy, expected, warnings) in cases {
        let mut service = svc("web", &[VIP]).tcp(80);
        if let Some(policy) = policy {
            service = service.policy(policy);
        }
        let d = one(service).on("n1");
        let got = d.services[&fe(VIP, 80, Protocol::Tcp)].traffic_policy;
        assert_eq!(got, expected, "{name}");
        assert_eq!(d.warnings.len(), warnings, "{name}");
    }
}

#[test]
fn session_affinity() {
    let secs = |s| Some(Duration::from_secs(s));
    #[rustfmt::skip]
    let cases = [
        ("unset", None, None, None, 0),
        ("None", Some("None"), None, None, 0),
        ("ClientIP default timeout is 3h", Some("ClientIP"), None, secs(10_800), 0),
        ("ClientIP 60s", Some("ClientIP"), Some(60), secs(60), 0),
        ("ClientIP max 1 day", Some("ClientIP"), Some(86_400), secs(86_400), 0),
        ("timeout 0 invalid: default", Some("ClientIP"), Some(0), secs(10_800), 1),
        ("timeout over 1 day invalid: default", Some("ClientIP"), Some(86_401), secs(10_800), 1),
        ("unknown affinity: none", Some("Cookie"), None, None, 1),
    ];
    for (name, affinity, timeout, expected, warnings) in cases {
        let mut service = svc("web", &[VIP]).tcp(80);
        if let Some(affinity) = affinity {
            service = service.affinity(affinity, timeout);
        }
        let d = one(service).on("n1");
        let got = d.services[&fe(VIP, 80, Protocol::Tcp)].session_affinity;
        assert_eq!(got, expected, "{name}");
        assert_eq!(d.warnings.len(), warnings, "{name}: {:?}", d.warnings);
    }
}

/// (name, service, VIP, expected ranges, warnings)
type RangeCase = (
    &'static str,
    Svc,
    &'static str,
    Option<&'static [&'static str]>,
    usize,
);

#[test]
fn source_ranges() {
    const V6: &str = "2001:db8::10";
    const ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";
    #[rustfmt::skip]
    let cases: &[RangeCase] = &[
        ("none: any client", svc("web", &[VIP, V6]), VIP, None, 0),
        ("one range", svc("web", &[VIP, V6]).ranges(&["10.0.0.0/8"]), VIP, Some(&["10.0.0.0/8"]), 0),
        ("host bits cleared", svc("web", &[VIP, V6]).ranges(&["10.1.2.3/8"]), VIP, Some(&["10.0.0.0/8"]), 0),
        ("spaces trimmed", svc("web", &[VIP, V6]).ranges(&[" 10.0.0.0/8 "]), VIP, Some(&["10.0.0.0/8"]), 0),
        ("IPv4 VIP keeps IPv4 ranges", svc("web", &[VIP, V6]).ranges(&["2001:db8::/32", "10.0.0.0/8"]), VIP, Some(&["10.0.0.0/8"]), 0),
        ("IPv6 VIP keeps IPv6 ranges", svc("web", &[VIP, V6]).ranges(&["2001:db8::/32", "10.0.0.0/8"]), V6, Some(&["2001:db8::/32"]), 0),
        ("only other family: nobody", svc("web", &[VIP, V6]).ranges(&["2001:db8::/32"]), VIP, Some(&[]), 0),
        ("malformed dropped, rest kept", svc("web", &[VIP, V6]).ranges(&["10.0.0.0/33", "10.0.0.0/8"]), VIP, Some(&["10.0.0.0/8"]), 1),
        ("bare IP is not a CIDR", svc("web", &[VIP, V6]).ranges(&["10.0.0.1"]), VIP, Some(&[]), 1),
        ("annotation when spec empty", svc("web", &[VIP, V6]).annotation(ANNOTATION, "10.0.0.0/8, 192.168.0.0/16"), VIP, Some(&["10.0.0.0/8", "192.168.0.0/16"]), 0),
        ("spec wins over annotation", svc("web", &[VIP, V6]).ranges(&["10.0.0.0/8"]).annotation(ANNOTATION, "192.168.0.0/16"), VIP, Some(&["10.0.0.0/8"]), 0),
    ];
    for (name, service, vip, expected, warnings) in cases {
        let d = one(Svc(service.0.clone()).tcp(80)).on("n1");
        let got = d.services[&fe(vip, 80, Protocol::Tcp)]
            .source_ranges
            .as_ref()
            .map(|r| r.iter().map(ToString::to_string).collect::<Vec<_>>());
        let expected = expected.map(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>());
        assert_eq!(got, expected, "{name}");
        assert_eq!(d.warnings.len(), *warnings, "{name}: {:?}", d.warnings);
    }
}

/// (name, service a, service b, frontends and their owners, conflict warning)
type ConflictCase = (
    &'static str,
    Svc,
    Svc,
    &'static [(u16, Protocol, &'static str)],
    bool,
);

#[test]
fn frontend_conflicts() {
    #[rustfmt::skip]
    let cases: Vec<ConflictCase> = vec![
        // (name, service a, service b, frontends and their owners, conflict warning)
        ("same port: older wins", svc("a", &[VIP]).tcp(80).created(200), svc("b", &[VIP]).tcp(80).created(100),
            &[(80, Protocol::Tcp, "b")], true),
        ("same port, no timestamps: smaller name wins", svc("a", &[VIP]).tcp(80), svc("b", &[VIP]).tcp(80),
            &[(80, Protocol::Tcp, "a")], true),
        ("timestamp beats none", svc("a", &[VIP]).tcp(80), svc("b", &[VIP]).tcp(80).created(100),
            &[(80, Protocol::Tcp, "b")], true),
        ("different ports share the VIP", svc("a", &[VIP]).tcp(80), svc("b", &[VIP]).tcp(443),
            &[(80, Protocol::Tcp, "a"), (443, Protocol::Tcp, "b")], false),
        ("same port, other protocol", svc("a", &[VIP]).tcp(53), svc("b", &[VIP]).port("", 53, Some("UDP"), None),
            &[(53, Protocol::Tcp, "a"), (53, Protocol::Udp, "b")], false),
    ];
    for (name, first, second, owners, conflict) in cases {
        let d = World::new()
            .nodes(&["n1"])
            .svc(first)
            .svc(second)
            .slice(slice("a", "a-1", "IPv4").ep("10.1.0.1", "n1", READY))
            .slice(slice("b", "b-1", "IPv4").ep("10.1.0.2", "n1", READY))
            .on("n1");
        let got: Vec<(u16, Protocol, &str)> = d
            .services
            .iter()
            .map(|(f, s)| (f.port, f.protocol, &*s.service.name))
            .collect();
        assert_eq!(got, *owners, "{name}");
        let warned = d
            .warnings
            .iter()
            .any(|w| matches!(w, Warning::FrontendConflict { .. }));
        assert_eq!(warned, conflict, "{name}: {:?}", d.warnings);
        assert_eq!(ips(&d.bgp), [VIP], "{name}");
    }
}

#[test]
fn conflict_loser_does_not_attract_traffic() {
    // `b` (Local, endpoint on n2) loses its only frontend to `a` (Local, endpoint on n1): n2
    // must not announce a VIP whose traffic it would not get.
    let world = World::new()
        .nodes(&["n1", "n2"])
        .svc(svc("a", &[VIP]).tcp(80).local().created(1))
        .svc(svc("b", &[VIP]).tcp(80).local().created(2))
        .slice(slice("a", "a-1", "IPv4").ep("10.1.0.1", "n1", READY))
        .slice(slice("b", "b-1", "IPv4").ep("10.2.0.1", "n2", READY));
    assert_eq!(ips(&world.on("n1").bgp), [VIP]);
    assert!(world.on("n2").bgp.is_empty());
    let warning = &world.on("n2").warnings[0];
    assert_eq!(
        warning.to_string(),
        "VIP conflict on 192.0.2.10:80/TCP: kept by service default/a, ignored for service default/b"
    );
}
