//! vipwire's embedded BGP speaker against real FRR, BIRD 2 and GoBGP in lab namespaces: it
//! reaches Established, its host routes appear in the peer's RIB with their attributes and next
//! hop, withdrawals remove them, TCP-MD5 works (and a wrong key never establishes), IPv6 /128s
//! travel over an IPv6 session, a frozen speaker loses its routes after the hold time (graceful
//! restart or not), and shutdown withdraws with a Cease. A raw-TCP peer checks what the daemons
//! never send: malformed UPDATEs (RFC 7606: attribute errors are ignored, NLRI errors reset),
//! collisions, and a restarting speaker's R bit and its table before End-of-RIB.
//!
//! The speaker runs in-process on a current-thread tokio runtime whose thread has entered the
//! node namespace, so its sockets live there.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use testkit::{
    NetLab, Netns,
    peer::{Community, LargeCommunity, Neighbor, Origin, Peer, PeerConfig, PeerKind},
    process::wait_for,
};
use vipwire::{
    bgp::{
        PeerStatus, Speaker, StartOptions, State,
        wire::{Family, Message},
    },
    config::{Advertisement, BgpConfig, PeerConfig as BgpPeer},
};

const UP: Duration = Duration::from_secs(30);
const ROUTE: Duration = Duration::from_secs(15);
const NODE_ASN: u32 = 65100;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an IP address")
}

/// Two namespaces joined by `eth0` veths: the ToR gets `<v4>.1/30` and `<v6>::1/64`, the node `.2`.
fn lab(tag: &str, v4: &str, v6: &str) -> (NetLab, Netns, Netns) {
    let mut lab = NetLab::new();
    let tor = lab.netns(&format!("{tag}-tor"));
    let node = lab.netns(&format!("{tag}-node"));
    lab.veth((&tor, "eth0"), (&node, "eth0"));
    tor.addr("eth0", &format!("{v4}.1/30"));
    node.addr("eth0", &format!("{v4}.2/30"));
    tor.addr("eth0", &format!("{v6}::1/64"));
    node.addr("eth0", &format!("{v6}::2/64"));
    (lab, tor, node)
}

fn peer(address: &str, asn: u32, hold_secs: u64) -> BgpPeer {
    BgpPeer {
        address: ip(address),
        asn,
        hold_time: Duration::from_secs(hold_secs),
        keepalive_time: Duration::from_secs(hold_secs / 3),
        password: None,
        port: 179,
    }
}

fn bgp(peers: Vec<BgpPeer>) -> BgpConfig {
    BgpConfig {
        asn: NODE_ASN,
        router_id: None,
        peers,
        advertisement: Advertisement {
            communities: vec![(65000, 100), (65100, 7)],
            large_communities: vec![(65100, 1, 1)],
            local_pref: Some(150),
            med: Some(42),
        },
        // Off unless a test turns it on: most tests watch routes leave when a session ends.
        graceful_restart_time: Duration::ZERO,
    }
}

/// The speaker on its own runtime thread inside the node namespace.
struct NsSpeaker {
    handle: tokio::runtime::Handle,
    speaker: Option<Speaker>,
    started: Instant,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl NsSpeaker {
    fn start(ns: &Netns, config: &BgpConfig, router_id: &str) -> Self {
        Self::start_with(ns, config, router_id, StartOptions::default())
    }

    fn start_with(ns: &Netns, config: &BgpConfig, router_id: &str, options: StartOptions) -> Self {
        let path = format!("/run/netns/{}", ns.name());
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
            // SAFETY: setns(2) on a valid namespace fd; it changes only this thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            handle_tx.send(rt.handle().clone()).expect("test alive");
            rt.block_on(async {
                let _ = stop_rx.await;
            });
        });
        let handle = handle_rx.recv().expect("runtime thread up");
        let router_id: Ipv4Addr = router_id.parse().expect("router id");
        let speaker = {
            let _guard = handle.enter();
            Speaker::start_with_options(config, router_id, options)
        };
        Self {
            handle,
            speaker: Some(speaker),
            started: Instant::now(),
            _stop: stop_tx,
        }
    }

    fn speaker(&self) -> &Speaker {
        self.speaker.as_ref().expect("running speaker")
    }

    fn status(&self, address: &str) -> PeerStatus {
        self.speaker()
            .status()
            .into_iter()
            .find(|s| s.address == ip(address))
            .expect("a configured peer")
    }

    /// Waits until the speaker's session to `address` is Established; returns the time since
    /// start.
    fn wait_established(&self, address: &str) -> Duration {
        wait_for(&format!("speaker session to {address}"), UP, || {
            (self.status(address).state == State::Established).then(|| self.started.elapsed())
        })
    }

    /// Blocks the runtime thread for `duration`: the sockets stay open but nothing answers,
    /// like a SIGSTOPped agent.
    fn freeze(&self, duration: Duration) {
        self.handle
            .spawn(async move { std::thread::sleep(duration) });
    }

    fn shutdown(&mut self) {
        let speaker = self.speaker.take().expect("running speaker");
        self.handle
            .block_on(speaker.shutdown(Duration::from_secs(5)));
    }
}

fn announce(speaker: &NsSpeaker, addrs: &[&str]) {
    speaker.speaker().announce(addrs.iter().map(|a| ip(a)));
}

#[test]
fn frr_ebgp_routes_with_communities_and_withdraw() {
    let (lab, tor, node) = lab("spk-frr", "10.0.31", "fd00:31");
    let frr = Peer::start(
        PeerKind::Frr,
        &tor,
        PeerConfig::new("10.0.31.1", 65001).neighbor(Neighbor::new("10.0.31.2", NODE_ASN)),
        lab.dir(),
    );
    let speaker = NsSpeaker::start(&node, &bgp(vec![peer("10.0.31.1", 65001, 9)]), "10.0.31.2");
    announce(&speaker, &["203.0.113.1", "203.0.113.2"]);
    let took = speaker.wait_established("10.0.31.1");
    frr.wait_established("10.0.31.2", UP);
    eprintln!("speaker -> frr Established {took:?} after start");

    for prefix in ["203.0.113.1/32", "203.0.113.2/32"] {
        let route = frr.wait_route(prefix, ROUTE);
        assert_eq!(route.next_hops, [ip("10.0.31.2")], "{prefix}");
        assert_eq!(route.as_path, [NODE_ASN]);
        assert_eq!(
            route.communities,
            [Community(65000, 100), Community(65100, 7)]
        );
        assert_eq!(route.large_communities, [LargeCommunity(65100, 1, 1)]);
        assert_eq!(route.origin, Some(Origin::Igp));
        assert_eq!(route.med, Some(42));
        assert_eq!(route.local_pref.filter(|&lp| lp != 100), None, "eBGP");
    }
    assert_eq!(speaker.status("10.0.31.1").routes_announced, 2);

    speaker.speaker().withdraw([ip("203.0.113.1")]);
    frr.wait_no_route("203.0.113.1/32", ROUTE);
    assert!(frr.route("203.0.113.2/32").is_some());
    // A later announcement reaches the peer on the live session.
    announce(&speaker, &["203.0.113.3"]);
    frr.wait_route("203.0.113.3/32", ROUTE);
    let status = speaker.status("10.0.31.1");
    assert_eq!(status.routes_announced, 2, "{status:?}");
    assert!(status.uptime.is_some());
}

#[test]
fn bird_ebgp_routes_and_set_announcements() {
    let (lab, tor, node) = lab("spk-bird", "10.0.32", "fd00:32");
    let bird = Peer::start(
        PeerKind::Bird,
        &tor,
        PeerConfig::new("10.0.32.1", 65002).neighbor(Neighbor::new("10.0.32.2", NODE_ASN)),
        lab.dir(),
    );
    let speaker = NsSpeaker::start(&node, &bgp(vec![peer("10.0.32.1", 65002, 9)]), "10.0.32.2");
    let took = speaker.wait_established("10.0.32.1");
    bird.wait_established("10.0.32.2", UP);
    eprintln!("speaker -> bird Established {took:?} after start");

    let many: BTreeSet<IpAddr> = (1..=200u8)
        .map(|i| IpAddr::V4(Ipv4Addr::new(198, 51, 100, i)))
        .collect();
    speaker.speaker().set_announcements(many);
    let route = bird.wait_route("198.51.100.200/32", ROUTE);
    assert_eq!(route.next_hops, [ip("10.0.32.2")]);
    assert_eq!(route.as_path, [NODE_ASN]);
    assert_eq!(route.large_communities, [LargeCommunity(65100, 1, 1)]);
    wait_for("200 routes at BIRD", ROUTE, || {
        (bird.rib().len() == 200).then_some(())
    });

    // Replace the set: the delta (199 withdrawals, one announcement) is all that is sent.
    speaker
        .speaker()
        .set_announcements(BTreeSet::from([ip("198.51.100.1"), ip("192.0.2.9")]));
    bird.wait_route("192.0.2.9/32", ROUTE);
    wait_for("2 routes at BIRD", ROUTE, || {
        (bird.rib().len() == 2).then_some(())
    });
    assert!(bird.route("198.51.100.1/32").is_some());
}

#[test]
fn gobgp_ibgp_carries_local_pref_and_an_empty_as_path() {
    let (lab, tor, node) = lab("spk-gobgp", "10.0.33", "fd00:33");
    let gobgp = Peer::start(
        PeerKind::Gobgp,
        &tor,
        PeerConfig::new("10.0.33.1", NODE_ASN).neighbor(Neighbor::new("10.0.33.2", NODE_ASN)),
        lab.dir(),
    );
    let speaker = NsSpeaker::start(
        &node,
        &bgp(vec![peer("10.0.33.1", NODE_ASN, 9)]),
        "10.0.33.2",
    );
    announce(&speaker, &["203.0.113.30"]);
    let took = speaker.wait_established("10.0.33.1");
    gobgp.wait_established("10.0.33.2", UP);
    eprintln!("speaker -> gobgp (iBGP) Established {took:?} after start");

    let route = gobgp.wait_route("203.0.113.30/32", ROUTE);
    assert_eq!(route.next_hops, [ip("10.0.33.2")]);
    assert!(route.as_path.is_empty(), "iBGP: {:?}", route.as_path);
    assert_eq!(route.local_pref, Some(150));
    assert_eq!(route.med, Some(42));
    assert_eq!(
        route.communities,
        [Community(65000, 100), Community(65100, 7)]
    );
    speaker.speaker().withdraw([ip("203.0.113.30")]);
    gobgp.wait_no_route("203.0.113.30/32", ROUTE);
}

#[test]
fn md5_right_password_establishes_and_wrong_one_never_does() {
    let (lab, tor, node) = lab("spk-md5", "10.0.34", "fd00:34");
    let frr = Peer::start(
        PeerKind::Frr,
        &tor,
        PeerConfig::new("10.0.34.1", 65001)
            .neighbor(Neighbor::new("10.0.34.2", NODE_ASN).password("s3cret")),
        lab.dir(),
    );

    let mut wrong = peer("10.0.34.1", 65001, 9);
    wrong.password = Some("wrong".into());
    let mut speaker = NsSpeaker::start(&node, &bgp(vec![wrong]), "10.0.34.2");
    // Both sides retry at least every few seconds: eight seconds is several attempts.
    std::thread::sleep(Duration::from_secs(8));
    let status = speaker.status("10.0.34.1");
    assert_ne!(status.state, State::Established, "{status:?}");
    assert!(!frr.session_state("10.0.34.2").established);
    speaker.shutdown();
    drop(speaker);

    let mut right = peer("10.0.34.1", 65001, 9);
    right.password = Some("s3cret".into());
    let speaker = NsSpeaker::start(&node, &bgp(vec![right]), "10.0.34.2");
    announce(&speaker, &["203.0.113.34"]);
    let took = speaker.wait_established("10.0.34.1");
    eprintln!("speaker -> frr (MD5) Established {took:?} after start");
    frr.wait_route("203.0.113.34/32", ROUTE);
}

#[test]
fn ipv6_host_routes_over_an_ipv6_session() {
    let (lab, tor, node) = lab("spk-v6", "10.0.35", "fd00:35");
    let frr = Peer::start(
        PeerKind::Frr,
        &tor,
        PeerConfig::new("10.0.35.1", 65001).neighbor(Neighbor::new("fd00:35::2", NODE_ASN)),
        lab.dir(),
    );
    let speaker = NsSpeaker::start(&node, &bgp(vec![peer("fd00:35::1", 65001, 9)]), "10.0.35.2");
    // An IPv4 address is not sent on an IPv6 session (no extended next hop).
    announce(&speaker, &["2001:db8::1", "2001:db8::2", "203.0.113.35"]);
    let took = speaker.wait_established("fd00:35::1");
    eprintln!("speaker -> frr (IPv6) Established {took:?} after start");
    let route = frr.wait_route("2001:db8::1/128", ROUTE);
    assert_eq!(route.next_hops, [ip("fd00:35::2")]);
    assert_eq!(route.as_path, [NODE_ASN]);
    assert_eq!(route.large_communities, [LargeCommunity(65100, 1, 1)]);
    frr.wait_route("2001:db8::2/128", ROUTE);
    assert_eq!(speaker.status("fd00:35::1").routes_announced, 2);
    assert!(frr.routes("203.0.113.35/32").is_empty());

    speaker.speaker().withdraw([ip("2001:db8::1")]);
    frr.wait_no_route("2001:db8::1/128", ROUTE);
    assert!(frr.route("2001:db8::2/128").is_some());
}

#[test]
fn frozen_speaker_loses_its_routes_after_the_hold_time() {
    let (lab, tor, node) = lab("spk-freeze", "10.0.36", "fd00:36");
    let bird = Peer::start(
        PeerKind::Bird,
        &tor,
        PeerConfig::new("10.0.36.1", 65002)
            .timers(6, 2)
            .neighbor(Neighbor::new("10.0.36.2", NODE_ASN)),
        lab.dir(),
    );
    let speaker = NsSpeaker::start(&node, &bgp(vec![peer("10.0.36.1", 65002, 6)]), "10.0.36.2");
    announce(&speaker, &["203.0.113.36"]);
    speaker.wait_established("10.0.36.1");
    bird.wait_route("203.0.113.36/32", ROUTE);

    let frozen_at = Instant::now();
    speaker.freeze(Duration::from_secs(30));
    bird.wait_no_route("203.0.113.36/32", Duration::from_secs(20));
    let gone = frozen_at.elapsed();
    eprintln!("frozen speaker: route gone at BIRD after {gone:?} (hold time 6 s)");
    // The last keepalive left at most 2 s before the freeze, so the hold timer runs >= 4 s.
    assert!(
        gone >= Duration::from_secs(3),
        "route left before the hold time could expire: {gone:?}"
    );
}

#[test]
fn shutdown_withdraws_and_sends_cease() {
    let (lab, tor, node) = lab("spk-stop", "10.0.37", "fd00:37");
    let bird = Peer::start(
        PeerKind::Bird,
        &tor,
        PeerConfig::new("10.0.37.1", 65002).neighbor(Neighbor::new("10.0.37.2", NODE_ASN)),
        lab.dir(),
    );
    let mut speaker =
        NsSpeaker::start(&node, &bgp(vec![peer("10.0.37.1", 65002, 90)]), "10.0.37.2");
    announce(&speaker, &["203.0.113.37"]);
    speaker.wait_established("10.0.37.1");
    bird.wait_route("203.0.113.37/32", ROUTE);
    speaker.shutdown();
    // Hold time 90 s: the route can only be gone this soon through the withdrawal/Cease.
    bird.wait_no_route("203.0.113.37/32", Duration::from_secs(10));
    wait_for("BIRD sees the session down", ROUTE, || {
        (!bird.session_state("10.0.37.2").established).then_some(())
    });
}

/// A hand-driven peer on a raw TCP socket, for what the daemons never send.
mod raw;
mod raw_peer;

#[test]
fn one_speaker_two_peers_frr_and_bird() {
    let mut lab = NetLab::new();
    let frr_ns = lab.netns("spk-two-frr");
    let bird_ns = lab.netns("spk-two-bird");
    let node = lab.netns("spk-two-node");
    lab.veth((&frr_ns, "eth0"), (&node, "eth0"));
    lab.veth((&bird_ns, "eth0"), (&node, "eth1"));
    frr_ns.addr("eth0", "10.0.40.1/30");
    node.addr("eth0", "10.0.40.2/30");
    bird_ns.addr("eth0", "10.0.41.1/30");
    node.addr("eth1", "10.0.41.2/30");
    let frr = Peer::start(
        PeerKind::Frr,
        &frr_ns,
        PeerConfig::new("10.0.40.1", 65001).neighbor(Neighbor::new("10.0.40.2", NODE_ASN)),
        lab.dir(),
    );
    let bird = Peer::start(
        PeerKind::Bird,
        &bird_ns,
        PeerConfig::new("10.0.41.1", 65002).neighbor(Neighbor::new("10.0.41.2", NODE_ASN)),
        lab.dir(),
    );
    let speaker = NsSpeaker::start(
        &node,
        &bgp(vec![
            peer("10.0.40.1", 65001, 9),
            peer("10.0.41.1", 65002, 9),
        ]),
        "10.0.40.2",
    );
    announce(&speaker, &["203.0.113.50"]);
    speaker.wait_established("10.0.40.1");
    speaker.wait_established("10.0.41.1");
    // Each peer sees the source address of its own link as the next hop.
    let at_frr = frr.wait_route("203.0.113.50/32", ROUTE);
    assert_eq!(at_frr.next_hops, [ip("10.0.40.2")]);
    let at_bird = bird.wait_route("203.0.113.50/32", ROUTE);
    assert_eq!(at_bird.next_hops, [ip("10.0.41.2")]);

    speaker.speaker().withdraw([ip("203.0.113.50")]);
    frr.wait_no_route("203.0.113.50/32", ROUTE);
    bird.wait_no_route("203.0.113.50/32", ROUTE);
    let status = speaker.speaker().status();
    assert_eq!(status.len(), 2);
    assert!(status.iter().all(|s| s.routes_announced == 0), "{status:?}");
}

impl NsSpeaker {
    /// A speaker that also accepts connections on port 179.
    fn start_listening(ns: &Netns, config: &BgpConfig, router_id: &str) -> Self {
        let mut this = Self::start(
            ns,
            &BgpConfig {
                peers: vec![],
                ..config.clone()
            },
            router_id,
        );
        let speaker = {
            let _guard = this.handle.enter();
            Speaker::start_with(config, router_id.parse().expect("router id"), Some(179))
        };
        this.speaker = Some(speaker);
        this.started = Instant::now();
        this
    }
}

#[test]
fn passive_open_with_md5_from_frr() {
    let (lab, tor, node) = lab("spk-pass", "10.0.42", "fd00:42");
    let frr = Peer::start(
        PeerKind::Frr,
        &tor,
        PeerConfig::new("10.0.42.1", 65001)
            .neighbor(Neighbor::new("10.0.42.2", NODE_ASN).password("p4ss")),
        lab.dir(),
    );
    // Our outgoing connections go to a port nobody listens on: only FRR's can succeed.
    let mut unreachable = peer("10.0.42.1", 65001, 9);
    unreachable.port = 1179;
    unreachable.password = Some("p4ss".into());
    let speaker = NsSpeaker::start_listening(&node, &bgp(vec![unreachable]), "10.0.42.2");
    announce(&speaker, &["203.0.113.42"]);
    let took = speaker.wait_established("10.0.42.1");
    eprintln!("frr -> speaker (passive, MD5) Established {took:?} after start");
    let route = frr.wait_route("203.0.113.42/32", ROUTE);
    assert_eq!(route.next_hops, [ip("10.0.42.2")]);
}

#[test]
fn listening_speaker_and_active_daemons_keep_one_stable_session() {
    let mut lab = NetLab::new();
    let frr_ns = lab.netns("spk-coll-frr");
    let gobgp_ns = lab.netns("spk-coll-gobgp");
    let node = lab.netns("spk-coll-node");
    lab.veth((&frr_ns, "eth0"), (&node, "eth0"));
    lab.veth((&gobgp_ns, "eth0"), (&node, "eth1"));
    frr_ns.addr("eth0", "10.0.43.1/30");
    node.addr("eth0", "10.0.43.2/30");
    gobgp_ns.addr("eth0", "10.0.44.1/30");
    node.addr("eth1", "10.0.44.2/30");
    let frr = Peer::start(
        PeerKind::Frr,
        &frr_ns,
        PeerConfig::new("10.0.43.1", 65001).neighbor(Neighbor::new("10.0.43.2", NODE_ASN)),
        lab.dir(),
    );
    // Whoever connects first wins; any later connection meets an Established session.
    let gobgp = Peer::start(
        PeerKind::Gobgp,
        &gobgp_ns,
        PeerConfig::new("10.255.0.1", 65003).neighbor(Neighbor::new("10.0.44.2", NODE_ASN)),
        lab.dir(),
    );
    let speaker = NsSpeaker::start_listening(
        &node,
        &bgp(vec![
            peer("10.0.43.1", 65001, 9),
            peer("10.0.44.1", 65003, 9),
        ]),
        "10.0.43.2",
    );
    announce(&speaker, &["203.0.113.43"]);
    speaker.wait_established("10.0.43.1");
    speaker.wait_established("10.0.44.1");
    frr.wait_route("203.0.113.43/32", ROUTE);
    gobgp.wait_route("203.0.113.43/32", ROUTE);
    // Settled: both sessions stay up (no flapping between the two connections).
    std::thread::sleep(Duration::from_secs(4));
    for peer in ["10.0.43.1", "10.0.44.1"] {
        let status = speaker.status(peer);
        assert_eq!(status.state, State::Established, "{status:?}");
        assert!(
            status.uptime.unwrap() >= Duration::from_secs(3),
            "{status:?}"
        );
    }
    assert!(frr.session_state("10.0.43.2").established);
    assert!(gobgp.session_state("10.0.44.2").established);
}

/// Both sides open a connection; the one opened by the side with the higher BGP Identifier

#[test]
fn frozen_speaker_with_graceful_restart_loses_its_routes_at_frr() {
    let (lab, tor, node) = lab("spk-grfrz", "10.0.49", "fd00:49");
    let frr = Peer::start(
        PeerKind::Frr,
        &tor,
        PeerConfig::new("10.0.49.1", 65001)
            .timers(6, 2)
            .neighbor(Neighbor::new("10.0.49.2", NODE_ASN)),
        lab.dir(),
    );
    let config = BgpConfig {
        graceful_restart_time: Duration::from_secs(5),
        ..bgp(vec![peer("10.0.49.1", 65001, 6)])
    };
    let speaker = NsSpeaker::start(&node, &config, "10.0.49.2");
    announce(&speaker, &["203.0.113.49"]);
    speaker.wait_established("10.0.49.1");
    frr.wait_route("203.0.113.49/32", ROUTE);

    // A node that dies silently: the hold timer ends the session with a NOTIFICATION, and
    // without the N bit (RFC 8538, not announced) that ends graceful restart too: FRR drops
    // the routes then, not a restart time later.
    let frozen_at = Instant::now();
    speaker.freeze(Duration::from_secs(40));
    frr.wait_no_route("203.0.113.49/32", Duration::from_secs(30));
    let gone = frozen_at.elapsed();
    eprintln!("frozen speaker (GR 5 s): route gone at FRR after {gone:?} (hold time 6 s)");
    assert!(
        gone >= Duration::from_secs(3),
        "route left before the hold time could expire: {gone:?}"
    );
    assert!(
        gone < Duration::from_secs(10),
        "kept past the hold time as if restarting: {gone:?}"
    );
}
