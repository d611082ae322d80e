//! The BGP peer harness against itself: FRR, BIRD and GoBGP reach Established with each other in
//! lab namespaces, exchange routes with their attributes, honour TCP-MD5, and carry IPv6.

use std::{net::IpAddr, time::Duration};

use testkit::{
    NetLab, Netns,
    peer::{
        Community, LargeCommunity, Neighbor, Origin, OriginatedRoute, Peer, PeerConfig, PeerKind,
    },
    process::wait_for,
};

const UP: Duration = Duration::from_secs(20);
const ROUTE: Duration = Duration::from_secs(10);

/// Two namespaces joined by `eth<n>` veths: `a` gets `<v4>.1/30` and `<v6>::1/64`, `b` `.2`.
fn link(lab: &NetLab, (a, if_a): (&Netns, &str), (b, if_b): (&Netns, &str), v4: &str, v6: &str) {
    lab.veth((a, if_a), (b, if_b));
    a.addr(if_a, &format!("{v4}.1/30"));
    b.addr(if_b, &format!("{v4}.2/30"));
    a.addr(if_a, &format!("{v6}::1/64"));
    b.addr(if_b, &format!("{v6}::2/64"));
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an IP address")
}

#[test]
fn frr_and_bird_exchange_routes_over_ebgp() {
    let mut lab = NetLab::new();
    let frr_ns = lab.netns("ebgp-frr");
    let bird_ns = lab.netns("ebgp-bird");
    link(
        &lab,
        (&frr_ns, "eth0"),
        (&bird_ns, "eth0"),
        "10.0.12",
        "fd00:12",
    );

    let frr = Peer::start(
        PeerKind::Frr,
        &frr_ns,
        PeerConfig::new("10.0.12.1", 65001)
            .local("10.0.12.1")
            .neighbor(Neighbor::new("10.0.12.2", 65002))
            .originate(
                OriginatedRoute::new("203.0.113.1/32")
                    .med(50)
                    .community("65001:100")
                    .large_community("65001:1:2"),
            ),
        lab.dir(),
    );
    let bird = Peer::start(
        PeerKind::Bird,
        &bird_ns,
        PeerConfig::new("10.0.12.2", 65002)
            .local("10.0.12.2")
            .neighbor(Neighbor::new("10.0.12.1", 65001))
            .originate(
                OriginatedRoute::new("203.0.113.2/32")
                    .med(70)
                    .community("65002:200")
                    .community("65002:201")
                    .large_community("65002:3:4"),
            ),
        lab.dir(),
    );

    let took = bird.wait_established("10.0.12.1", UP);
    eprintln!(
        "bird -> frr Established after {took:?} ({:?} after BIRD started)",
        bird.uptime()
    );
    let took = frr.wait_established("10.0.12.2", UP);
    eprintln!("frr -> bird Established after {took:?}");
    assert!(frr.session_state("10.0.12.2").raw.contains("Established"));

    let at_frr = frr.wait_route("203.0.113.2/32", ROUTE);
    assert_eq!(at_frr.next_hops, [ip("10.0.12.2")]);
    assert_eq!(at_frr.from, Some(ip("10.0.12.2")));
    assert_eq!(at_frr.as_path, [65002]);
    assert_eq!(at_frr.med, Some(70));
    assert_eq!(at_frr.local_pref, None, "eBGP carries no LOCAL_PREF");
    assert_eq!(
        at_frr.communities,
        [Community(65002, 200), Community(65002, 201)]
    );
    assert_eq!(at_frr.large_communities, [LargeCommunity(65002, 3, 4)]);
    assert_eq!(at_frr.origin, Some(Origin::Igp));
    assert!(at_frr.best);

    let at_bird = bird.wait_route("203.0.113.1/32", ROUTE);
    assert_eq!(at_bird.next_hops, [ip("10.0.12.1")]);
    assert_eq!(at_bird.from, Some(ip("10.0.12.1")));
    assert_eq!(at_bird.as_path, [65001]);
    assert_eq!(at_bird.med, Some(50));
    assert_eq!(at_bird.local_pref, None);
    assert_eq!(at_bird.communities, [Community(65001, 100)]);
    assert_eq!(at_bird.large_communities, [LargeCommunity(65001, 1, 2)]);
    assert_eq!(at_bird.origin, Some(Origin::Igp));

    // Each RIB also lists the peer's own route, with no neighbor and no next hop.
    let own = frr.route("203.0.113.1/32").expect("FRR's own route");
    assert_eq!(
        (own.from, own.next_hops.len(), own.med),
        (None, 0, Some(50))
    );
    let own = bird.route("203.0.113.2/32").expect("BIRD's own route");
    assert_eq!(
        (own.from, own.next_hops.len(), own.med),
        (None, 0, Some(70))
    );
    assert_eq!(bird.rib().len(), 2, "{:#?}", bird.rib());
    assert_eq!(frr.routes("203.0.113.99/32"), []);

    // Both install what they learned into their namespace's FIB.
    let fib = bird_ns.ip(&["route", "show", "203.0.113.1/32"]);
    assert!(fib.contains("via 10.0.12.1"), "BIRD's FIB: {fib}");
    let fib = frr_ns.ip(&["route", "show", "203.0.113.2/32"]);
    assert!(fib.contains("via 10.0.12.2"), "FRR's FIB: {fib}");

    // When BIRD goes away, FRR withdraws its route.
    drop(bird);
    frr.wait_no_route("203.0.113.2/32", ROUTE);
    assert!(!frr.session_state("10.0.12.2").established);
}

#[test]
fn gobgp_and_bird_exchange_routes_over_ibgp() {
    let mut lab = NetLab::new();
    let bird_ns = lab.netns("ibgp-bird");
    let gobgp_ns = lab.netns("ibgp-gobgp");
    link(
        &lab,
        (&bird_ns, "eth0"),
        (&gobgp_ns, "eth0"),
        "10.0.13",
        "fd00:13",
    );

    let bird = Peer::start(
        PeerKind::Bird,
        &bird_ns,
        PeerConfig::new("10.0.13.1", 65100)
            .local("10.0.13.1")
            .neighbor(Neighbor::new("10.0.13.2", 65100))
            .originate(
                OriginatedRoute::new("203.0.113.10/32")
                    .med(30)
                    .local_pref(150)
                    .community("65100:10")
                    .large_community("65100:1:10"),
            ),
        lab.dir(),
    );
    let gobgp = Peer::start(
        PeerKind::Gobgp,
        &gobgp_ns,
        PeerConfig::new("10.0.13.2", 65100)
            .local("10.0.13.2")
            .neighbor(Neighbor::new("10.0.13.1", 65100))
            .originate(
                OriginatedRoute::new("203.0.113.11/32")
                    .med(40)
                    .local_pref(120)
                    .community("65100:11")
                    .large_community("65100:1:11"),
            ),
        lab.dir(),
    );

    let took = gobgp.wait_established("10.0.13.1", UP);
    eprintln!(
        "gobgp -> bird (iBGP) Established after {took:?} ({:?} after GoBGP started)",
        gobgp.uptime()
    );
    let took = bird.wait_established("10.0.13.2", UP);
    eprintln!("bird -> gobgp (iBGP) Established after {took:?}");

    let at_gobgp = gobgp.wait_route("203.0.113.10/32", ROUTE);
    assert_eq!(at_gobgp.next_hops, [ip("10.0.13.1")]);
    assert_eq!(at_gobgp.from, Some(ip("10.0.13.1")));
    assert!(at_gobgp.as_path.is_empty(), "iBGP: {:?}", at_gobgp.as_path);
    assert_eq!(at_gobgp.local_pref, Some(150));
    assert_eq!(at_gobgp.med, Some(30));
    assert_eq!(at_gobgp.communities, [Community(65100, 10)]);
    assert_eq!(at_gobgp.large_communities, [LargeCommunity(65100, 1, 10)]);
    assert_eq!(at_gobgp.origin, Some(Origin::Igp));
    assert!(at_gobgp.best);

    let at_bird = bird.wait_route("203.0.113.11/32", ROUTE);
    assert_eq!(at_bird.next_hops, [ip("10.0.13.2")]);
    assert_eq!(at_bird.local_pref, Some(120));
    assert_eq!(at_bird.med, Some(40));
    assert_eq!(at_bird.communities, [Community(65100, 11)]);
    assert_eq!(at_bird.large_communities, [LargeCommunity(65100, 1, 11)]);

    let own = gobgp.route("203.0.113.11/32").expect("GoBGP's own route");
    assert_eq!((own.from, own.local_pref), (None, Some(120)));
    assert_eq!(gobgp.rib().len(), 2, "{:#?}", gobgp.rib());

    drop(bird);
    gobgp.wait_no_route("203.0.113.10/32", ROUTE);
}

#[test]
fn md5_passwords_that_match_establish() {
    // FRR in the middle, with a password on each of its two sessions.
    let mut lab = NetLab::new();
    let frr_ns = lab.netns("md5-frr");
    let bird_ns = lab.netns("md5-bird");
    let gobgp_ns = lab.netns("md5-gobgp");
    link(
        &lab,
        (&frr_ns, "eth0"),
        (&bird_ns, "eth0"),
        "10.0.14",
        "fd00:14",
    );
    link(
        &lab,
        (&frr_ns, "eth1"),
        (&gobgp_ns, "eth0"),
        "10.0.15",
        "fd00:15",
    );

    let frr = Peer::start(
        PeerKind::Frr,
        &frr_ns,
        PeerConfig::new("10.0.14.1", 65001)
            .neighbor(Neighbor::new("10.0.14.2", 65002).password("bird-s3cret"))
            .neighbor(Neighbor::new("10.0.15.2", 65003).password("gobgp-s3cret"))
            .originate(OriginatedRoute::new("203.0.113.20/32")),
        lab.dir(),
    );
    let bird = Peer::start(
        PeerKind::Bird,
        &bird_ns,
        PeerConfig::new("10.0.14.2", 65002)
            .neighbor(Neighbor::new("10.0.14.1", 65001).password("bird-s3cret")),
        lab.dir(),
    );
    let gobgp = Peer::start(
        PeerKind::Gobgp,
        &gobgp_ns,
        PeerConfig::new("10.0.15.2", 65003).neighbor(
            Neighbor::new("10.0.15.1", 65001)
                .password("gobgp-s3cret")
                .passive(),
        ),
        lab.dir(),
    );

    let took = bird.wait_established("10.0.14.1", UP);
    eprintln!(
        "bird -> frr (MD5) Established after {took:?} ({:?} after BIRD started)",
        bird.uptime()
    );
    let took = gobgp.wait_established("10.0.15.1", UP);
    eprintln!(
        "gobgp (passive) -> frr (MD5) Established after {took:?} ({:?} after GoBGP started)",
        gobgp.uptime()
    );
    frr.wait_established("10.0.14.2", UP);
    frr.wait_established("10.0.15.2", UP);
    // Routes flow over both authenticated sessions, and FRR passes BIRD's view on to GoBGP.
    let at_gobgp = gobgp.wait_route("203.0.113.20/32", ROUTE);
    assert_eq!(at_gobgp.as_path, [65001]);
    bird.wait_route("203.0.113.20/32", ROUTE);
}

#[test]
fn md5_wrong_password_never_establishes() {
    let mut lab = NetLab::new();
    let frr_ns = lab.netns("md5bad-frr");
    let bird_ns = lab.netns("md5bad-bird");
    link(
        &lab,
        (&frr_ns, "eth0"),
        (&bird_ns, "eth0"),
        "10.0.16",
        "fd00:16",
    );

    let frr = Peer::start(
        PeerKind::Frr,
        &frr_ns,
        PeerConfig::new("10.0.16.1", 65001)
            .neighbor(Neighbor::new("10.0.16.2", 65002).password("right")),
        lab.dir(),
    );
    let bird = Peer::start(
        PeerKind::Bird,
        &bird_ns,
        PeerConfig::new("10.0.16.2", 65002)
            .neighbor(Neighbor::new("10.0.16.1", 65001).password("wrong")),
        lab.dir(),
    );

    // Both sides retry every second, so five seconds is several attempts each.
    let established = bird.established_within("10.0.16.1", Duration::from_secs(5));
    assert_eq!(
        established, None,
        "BIRD Established despite the wrong password"
    );
    let frr_state = frr.session_state("10.0.16.2");
    let bird_state = bird.session_state("10.0.16.1");
    assert!(!frr_state.established, "FRR: {frr_state:?}");
    assert!(!bird_state.established, "BIRD: {bird_state:?}");
    eprintln!(
        "wrong MD5 password: FRR {:?}, BIRD {:?}",
        frr_state.raw, bird_state.raw
    );
    frr.assert_running();
    bird.assert_running();
}

#[test]
fn ipv6_unicast_between_frr_bird_and_gobgp() {
    // GoBGP - FRR - BIRD, eBGP over IPv6 sessions; each originates one /128.
    let mut lab = NetLab::new();
    let frr_ns = lab.netns("v6-frr");
    let bird_ns = lab.netns("v6-bird");
    let gobgp_ns = lab.netns("v6-gobgp");
    link(
        &lab,
        (&frr_ns, "eth0"),
        (&bird_ns, "eth0"),
        "10.0.17",
        "fd00:17",
    );
    link(
        &lab,
        (&frr_ns, "eth1"),
        (&gobgp_ns, "eth0"),
        "10.0.18",
        "fd00:18",
    );

    let frr = Peer::start(
        PeerKind::Frr,
        &frr_ns,
        PeerConfig::new("10.0.17.1", 65001)
            .neighbor(Neighbor::new("fd00:17::2", 65002))
            .neighbor(Neighbor::new("fd00:18::2", 65003))
            .originate(
                OriginatedRoute::new("fd00:ffff::1/128")
                    .med(11)
                    .community("65001:6"),
            ),
        lab.dir(),
    );
    let bird = Peer::start(
        PeerKind::Bird,
        &bird_ns,
        PeerConfig::new("10.0.17.2", 65002)
            .local("fd00:17::2")
            .neighbor(Neighbor::new("fd00:17::1", 65001))
            .originate(
                OriginatedRoute::new("fd00:ffff::2/128")
                    .med(22)
                    .community("65002:6"),
            ),
        lab.dir(),
    );
    let gobgp = Peer::start(
        PeerKind::Gobgp,
        &gobgp_ns,
        PeerConfig::new("10.0.18.2", 65003)
            .local("fd00:18::2")
            .neighbor(Neighbor::new("fd00:18::1", 65001))
            .originate(
                OriginatedRoute::new("fd00:ffff::3/128")
                    .med(33)
                    .large_community("65003:6:6"),
            ),
        lab.dir(),
    );
    let took = bird.wait_established("fd00:17::1", UP);
    eprintln!(
        "bird -> frr (IPv6) Established after {took:?} ({:?} after BIRD started)",
        bird.uptime()
    );
    let took = gobgp.wait_established("fd00:18::1", UP);
    eprintln!(
        "gobgp -> frr (IPv6) Established after {took:?} ({:?} after GoBGP started)",
        gobgp.uptime()
    );

    let at_frr = frr.wait_route("fd00:ffff::2/128", ROUTE);
    assert_eq!(
        at_frr.next_hops,
        [ip("fd00:17::2")],
        "link-local next hop left out"
    );
    assert_eq!(
        (at_frr.med, at_frr.as_path.as_slice()),
        (Some(22), &[65002][..])
    );
    assert_eq!(at_frr.communities, [Community(65002, 6)]);
    let at_frr = frr.wait_route("fd00:ffff::3/128", ROUTE);
    assert_eq!(at_frr.next_hops, [ip("fd00:18::2")]);
    assert_eq!(at_frr.large_communities, [LargeCommunity(65003, 6, 6)]);

    let at_bird = bird.wait_route("fd00:ffff::1/128", ROUTE);
    assert_eq!(at_bird.next_hops, [ip("fd00:17::1")]);
    assert_eq!(
        (at_bird.med, at_bird.as_path.as_slice()),
        (Some(11), &[65001][..])
    );
    // GoBGP's route reaches BIRD through FRR: two ASes, FRR's next hop.
    let via_frr = bird.wait_route("fd00:ffff::3/128", ROUTE);
    assert_eq!(via_frr.as_path, [65001, 65003]);
    assert_eq!(via_frr.next_hops, [ip("fd00:17::1")]);

    let at_gobgp = gobgp.wait_route("fd00:ffff::1/128", ROUTE);
    assert_eq!(at_gobgp.next_hops, [ip("fd00:18::1")]);
    assert_eq!(
        (at_gobgp.med, at_gobgp.communities.as_slice()),
        (Some(11), &[Community(65001, 6)][..])
    );
    let via_frr = gobgp.wait_route("fd00:ffff::2/128", ROUTE);
    assert_eq!(via_frr.as_path, [65001, 65002]);
    assert!(gobgp.routes("203.0.113.1/32").is_empty());
}

/// A hub (a ToR) whose two spokes announce the same /32: the hub's RIB holds both paths, one
/// best, and (FRR, BIRD) its FIB an ECMP route over both.
fn hub_sees_a_prefix_from_two_spokes(hub_kind: PeerKind, tag: &str) {
    let mut lab = NetLab::new();
    let hub_ns = lab.netns(&format!("{tag}-hub"));
    let spoke_ns = [
        lab.netns(&format!("{tag}-spoke1")),
        lab.netns(&format!("{tag}-spoke2")),
    ];
    link(
        &lab,
        (&hub_ns, "eth1"),
        (&spoke_ns[0], "eth0"),
        "10.0.21",
        "fd00:21",
    );
    link(
        &lab,
        (&hub_ns, "eth2"),
        (&spoke_ns[1], "eth0"),
        "10.0.22",
        "fd00:22",
    );

    let hub = Peer::start(
        hub_kind,
        &hub_ns,
        PeerConfig::new("10.0.21.1", 65010)
            .neighbor(Neighbor::new("10.0.21.2", 65011))
            .neighbor(Neighbor::new("10.0.22.2", 65012)),
        lab.dir(),
    );
    let mut spokes: Vec<Peer> = spoke_ns
        .iter()
        .zip(["10.0.21", "10.0.22"])
        .zip([65011, 65012])
        .map(|((ns, net), asn)| {
            let config = PeerConfig::new(format!("{net}.2").as_str(), asn)
                .neighbor(Neighbor::new(format!("{net}.1").as_str(), 65010))
                .originate(OriginatedRoute::new("203.0.113.40/32").community("65010:40"));
            Peer::start(PeerKind::Bird, ns, config, lab.dir())
        })
        .collect();
    for spoke in &spokes {
        let neighbor = spoke.config().neighbors[0].addr;
        spoke.wait_established(neighbor, UP);
    }

    let paths = both_paths(&hub, "203.0.113.40/32");
    assert_eq!(paths.iter().filter(|p| p.best).count(), 1, "{paths:#?}");
    assert!(paths[0].best, "best path first: {paths:#?}");
    let mut from: Vec<IpAddr> = paths.iter().filter_map(|p| p.from).collect();
    from.sort();
    assert_eq!(from, [ip("10.0.21.2"), ip("10.0.22.2")]);
    for path in &paths {
        assert_eq!(path.next_hops, [path.from.unwrap()]);
        assert_eq!(path.communities, [Community(65010, 40)]);
    }
    if hub_kind != PeerKind::Gobgp {
        let fib = poll_fib(&hub_ns, "203.0.113.40/32", 2);
        assert!(
            fib.contains("via 10.0.21.2") && fib.contains("via 10.0.22.2"),
            "{fib}"
        );
    }

    // One spoke leaves: one path remains.
    drop(spokes.remove(0));
    wait_for("one path", ROUTE, || {
        (hub.routes("203.0.113.40/32").len() == 1).then_some(())
    });
    assert_eq!(
        hub.route("203.0.113.40/32").unwrap().from,
        Some(ip("10.0.22.2"))
    );
}

/// Waits for both paths at the hub.
fn both_paths(hub: &Peer, prefix: &str) -> Vec<testkit::peer::RibRoute> {
    hub.wait_route(prefix, ROUTE);
    // Settled: the daemon runs best-path selection after the second path arrives (FRR queues
    // it), so for a moment both paths can be listed and neither marked best.
    wait_for("two paths, one of them best", ROUTE, || {
        let paths = hub.routes(prefix);
        (paths.len() == 2 && paths.iter().any(|p| p.best)).then_some(paths)
    })
}

/// Waits until the namespace's FIB route to `prefix` has `hops` next hops; returns it.
fn poll_fib(ns: &Netns, prefix: &str, hops: usize) -> String {
    let mut last = String::new();
    let found = testkit::process::poll_until(ROUTE, || {
        last = ns.ip(&["route", "show", prefix]);
        (last.matches("via ").count() == hops).then(|| last.clone())
    });
    found.unwrap_or_else(|| panic!("FIB route to {prefix} in {}: {last:?}", ns.name()))
}

#[test]
fn bird_hub_sees_a_prefix_from_two_spokes() {
    hub_sees_a_prefix_from_two_spokes(PeerKind::Bird, "hubbird");
}

#[test]
fn frr_hub_sees_a_prefix_from_two_spokes() {
    hub_sees_a_prefix_from_two_spokes(PeerKind::Frr, "hubfrr");
}

#[test]
fn gobgp_hub_sees_a_prefix_from_two_spokes() {
    hub_sees_a_prefix_from_two_spokes(PeerKind::Gobgp, "hubgobgp");
}
