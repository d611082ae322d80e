//! The `bgp` area (issue 6): vipwire's embedded speaker against BIRD 2 in lab namespaces, with
//! GoBGP peering with the same BIRD as the baseline.
//!
//! Topology: `tor` runs BIRD with two eBGP protocols, `vipwire` (to the speaker in `node`,
//! running in this process on a runtime thread that entered `node`) and `gobgp` (to gobgpd in
//! `gobgp`). BIRD's kernel protocol exports what it learns into `tor`'s FIB and [`fib`] watches
//! that with a netlink subscription, so "in BIRD's RIB" is timed by an event, not by polling.
//! Each measurement is cross-checked with `birdc show route count`.
//!
//! (1) 10,000 /32s, two ways, for both originators alike:
//! - cold session: the originator holds the 10,000 routes before any session exists (speaker:
//!   `set_announcements` before the peer is reachable; gobgpd: `gobgp mrt inject` and the RIB
//!   checked to hold all of them). BIRD's protocol is `disabled` until `birdc enable`; BIRD then
//!   connects to the passive originator. t0 is the session's TCP SYN (see [`syn`]: BIRD waits a
//!   random 0.75-1 s before connecting, which would otherwise swamp the comparison; the time
//!   from `birdc enable` is reported too). The time runs to the last of the 10,000 routes in
//!   the FIB, so it includes the TCP and OPEN exchange.
//! - live session: the session is Established and empty; t0 is just before
//!   `set_announcements(10,000)` or before spawning `gobgp mrt inject` (so GoBGP's time also
//!   carries the CLI's start and the file's parse: informational only).
//!
//! Rounds alternate which originator goes first; each trial starts from an empty FIB and a fresh
//! speaker or gobgpd. Values are medians over the rounds.
//!
//! (2) announce()/withdraw() latency: on the speaker's session carrying the 10,000 routes, one
//! /32 at a time is announced, waited for, withdrawn, waited for (1,000 changes); each latency
//! runs from just before the call to the netlink event of BIRD's kernel export.

mod fib;
mod mrt;
mod syn;

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use testkit::{
    NetLab, Netns,
    bench::{Measurement, Report, Target},
    process::{Daemon, poll_until, wait_for},
    tools::require,
};
use vipwire::{
    bgp::Speaker,
    config::{Advertisement, BgpConfig, PeerConfig},
};

use self::{fib::FibWatch, syn::SynWatch};

/// Host routes in the bulk measurement.
const ROUTES: usize = 10_000;
/// Trials per originator and start mode.
const ROUNDS: usize = 3;
/// announce()+withdraw() changes in the latency measurement.
const CHANGES: usize = 1_000;

const TOR_ASN: u32 = 65001;
const NODE_ASN: u32 = 65100;
const GOBGP_ASN: u32 = 65200;
const TOR_TO_NODE: Ipv4Addr = Ipv4Addr::new(10, 201, 1, 1);
const NODE: Ipv4Addr = Ipv4Addr::new(10, 201, 1, 2);
const TOR_TO_GOBGP: Ipv4Addr = Ipv4Addr::new(10, 201, 2, 1);
const GOBGP: Ipv4Addr = Ipv4Addr::new(10, 201, 2, 2);
const GOBGP_API: &str = "50199";

const UP: Duration = Duration::from_secs(30);
const TABLE: Duration = Duration::from_secs(120);
const CHANGE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Originator {
    Vipwire,
    Gobgp,
}

impl Originator {
    /// BIRD's protocol name for the session.
    fn protocol(self) -> &'static str {
        match self {
            Originator::Vipwire => "vipwire",
            Originator::Gobgp => "gobgp",
        }
    }
}

/// One bulk trial: from t0 (command or load call) and, on a cold session, from the SYN.
#[derive(Clone, Copy, Debug)]
struct Trial {
    from_t0: Duration,
    from_syn: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    Cold,
    Live,
}

pub fn measure() -> Report {
    let mut lab = NetLab::new();
    let tor = lab.netns("bgpb-tor");
    let node = lab.netns("bgpb-node");
    let gobgp = lab.netns("bgpb-gobgp");
    lab.veth((&tor, "eth0"), (&node, "eth0"));
    lab.veth((&tor, "eth1"), (&gobgp, "eth0"));
    tor.addr("eth0", &format!("{TOR_TO_NODE}/30"));
    node.addr("eth0", &format!("{NODE}/30"));
    tor.addr("eth1", &format!("{TOR_TO_GOBGP}/30"));
    gobgp.addr("eth0", &format!("{GOBGP}/30"));

    let routes: Vec<Ipv4Addr> = (0..ROUTES)
        .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i as u32))
        .collect();
    let mrt = lab.path("routes.mrt");
    std::fs::write(&mrt, mrt::host_routes(GOBGP, GOBGP_ASN, GOBGP, &routes))
        .unwrap_or_else(|e| panic!("writing {}: {e}", mrt.display()));
    let mut bench = Bench {
        fib: FibWatch::start(&tor),
        syn: SynWatch::start(&tor),
        bird: Bird::start(&tor, lab.dir()),
        node: NsRuntime::start(&node),
        gobgp,
        dir: lab.dir().to_owned(),
        mrt,
        routes: routes.into_iter().map(IpAddr::V4).collect(),
        cli_start: Vec::new(),
    };

    let mut report = Report::new("bgp");
    for start in [Start::Cold, Start::Live] {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let order = if round % 2 == 0 {
                [Originator::Vipwire, Originator::Gobgp]
            } else {
                [Originator::Gobgp, Originator::Vipwire]
            };
            for who in order {
                let trial = bench.table(who, start);
                eprintln!("bgp: {start:?} round {round}: {who:?} {trial:?}");
                match who {
                    Originator::Vipwire => ours.push(trial),
                    Originator::Gobgp => theirs.push(trial),
                }
            }
        }
        let from_t0 =
            |trials: &[Trial]| median_ms(&trials.iter().map(|t| t.from_t0).collect::<Vec<_>>());
        let from_syn = |trials: &[Trial]| {
            median_ms(&trials.iter().filter_map(|t| t.from_syn).collect::<Vec<_>>())
        };
        match start {
            Start::Cold => {
                report.push(
                    Measurement::new(
                        "10k /32 cold, SYN -> all in BIRD (vipwire)",
                        from_syn(&ours),
                        "ms",
                    )
                    .against("gobgp, same run", from_syn(&theirs))
                    .target(Target::RatioAtMost(1.0)),
                );
                report.push(
                    Measurement::new(
                        "10k /32 cold, enable -> all (vipwire)",
                        from_t0(&ours),
                        "ms",
                    )
                    .against("gobgp, same run", from_t0(&theirs)),
                );
            }
            Start::Live => report.push(
                Measurement::new(
                    "10k /32 live session -> all (vipwire)",
                    from_t0(&ours),
                    "ms",
                )
                .against("gobgp incl. CLI start", from_t0(&theirs)),
            ),
        }
        if start == Start::Live {
            report.push(Measurement::new(
                "gobgp CLI start (ip netns exec gobgp global)",
                median_ms(&bench.cli_start),
                "ms",
            ));
        }
    }

    let (announce, withdraw) = bench.changes();
    let all: Vec<Duration> = announce.iter().chain(&withdraw).copied().collect();
    report.push(Measurement::new(
        format!("announce/withdraw -> BIRD p50 (n={})", all.len()),
        percentile_ms(&all, 50.0),
        "ms",
    ));
    report.push(
        Measurement::new(
            format!("announce/withdraw -> BIRD p99 (n={})", all.len()),
            percentile_ms(&all, 99.0),
            "ms",
        )
        .target(Target::ValueAtMost(10.0)),
    );
    for (kind, samples) in [("announce", &announce), ("withdraw", &withdraw)] {
        for p in [50.0, 99.0] {
            report.push(Measurement::new(
                format!("{kind} -> BIRD p{p}"),
                percentile_ms(samples, p),
                "ms",
            ));
        }
    }
    report.push(Measurement::new(
        "announce/withdraw -> BIRD max",
        percentile_ms(&all, 100.0),
        "ms",
    ));
    drop(bench);
    drop(lab);
    report
}

struct Bench {
    fib: FibWatch,
    syn: SynWatch,
    bird: Bird,
    node: NsRuntime,
    gobgp: Netns,
    dir: PathBuf,
    mrt: PathBuf,
    routes: BTreeSet<IpAddr>,
    /// `ip netns exec gobgp global` round trips, one per live GoBGP trial.
    cli_start: Vec<Duration>,
}

impl Bench {
    /// One trial of (1): the time until all of the routes from `who` are in BIRD's FIB.
    fn table(&mut self, who: Originator, start: Start) -> Trial {
        assert_eq!(self.fib.count(), 0, "a trial starts from an empty FIB");
        let took = match who {
            Originator::Vipwire => {
                let speaker = self.node.speaker();
                if start == Start::Cold {
                    speaker.set_announcements(self.routes.clone());
                }
                let routes = self.routes.clone();
                let took = self.load(who, start, || speaker.set_announcements(routes));
                self.node.stop(speaker);
                took
            }
            Originator::Gobgp => {
                let gobgpd = Gobgpd::start(&self.gobgp, &self.dir);
                if start == Start::Cold {
                    gobgpd.inject(&self.mrt);
                    gobgpd.wait_rib(&self.mrt);
                } else {
                    // What the CLI's start costs, for reading the live GoBGP time.
                    let t0 = Instant::now();
                    gobgpd.cli(&["global"]);
                    self.cli_start.push(t0.elapsed());
                }
                let mrt = self.mrt.clone();
                // Only the CLI call: polling gobgpd's RIB meanwhile would load the CPU.
                self.load(who, start, || gobgpd.inject(&mrt))
            }
        };
        self.bird.disable(who.protocol());
        self.fib
            .wait_count(0, TABLE)
            .unwrap_or_else(|| panic!("{who:?}: routes still in the FIB after {TABLE:?}"));
        took
    }

    /// Brings BIRD's session to `who` up and has `who` announce the table (`load`, on a live
    /// session only); times the last route's FIB event.
    fn load(&mut self, who: Originator, start: Start, load: impl FnOnce()) -> Trial {
        let protocol = who.protocol();
        let t0 = match start {
            Start::Cold => {
                let t0 = Instant::now();
                self.bird.enable(protocol);
                t0
            }
            Start::Live => {
                self.bird.enable(protocol);
                wait_for(&format!("BIRD's {protocol} session"), UP, || {
                    self.bird.established(protocol).then_some(())
                });
                // Past the session's first exchange (End-of-RIB, KEEPALIVEs).
                std::thread::sleep(Duration::from_millis(200));
                assert_eq!(self.fib.count(), 0, "{who:?}: routes before the load");
                let t0 = Instant::now();
                load();
                t0
            }
        };
        let end = self.fib.wait_count(ROUTES, TABLE).unwrap_or_else(|| {
            panic!(
                "{who:?} {start:?}: {} of {ROUTES} routes in the FIB after {TABLE:?}\n{}",
                self.fib.count(),
                self.bird.daemon.log_tail()
            )
        });
        let in_rib = self.bird.route_count();
        assert_eq!(in_rib, ROUTES, "{who:?}: BIRD's RIB disagrees with its FIB");
        let syn = match start {
            Start::Cold => self
                .fib
                .first_added()
                .and_then(|first| self.syn.last_before(first)),
            Start::Live => None,
        };
        Trial {
            from_t0: end.saturating_duration_since(t0),
            from_syn: syn.map(|syn| end.saturating_duration_since(syn)),
        }
    }

    /// (2): announce()/withdraw() latencies to BIRD, on a session carrying the full table.
    fn changes(&mut self) -> (Vec<Duration>, Vec<Duration>) {
        let speaker = self.node.speaker();
        speaker.set_announcements(self.routes.clone());
        self.bird.enable(Originator::Vipwire.protocol());
        self.fib
            .wait_count(ROUTES, TABLE)
            .expect("the full table before the latency run");
        let (mut announce, mut withdraw) = (Vec::new(), Vec::new());
        for i in 0..CHANGES / 2 {
            let addr = Ipv4Addr::new(203, 0, 113, 1 + (i % 250) as u8);
            let t0 = Instant::now();
            speaker.announce([IpAddr::V4(addr)]);
            let at = self.fib.wait_route(addr, true, CHANGE);
            announce.push(
                at.expect("an announced route in BIRD")
                    .saturating_duration_since(t0),
            );
            let t0 = Instant::now();
            speaker.withdraw([IpAddr::V4(addr)]);
            let at = self.fib.wait_route(addr, false, CHANGE);
            withdraw.push(
                at.expect("a withdrawn route gone from BIRD")
                    .saturating_duration_since(t0),
            );
        }
        self.bird.disable(Originator::Vipwire.protocol());
        self.fib
            .wait_count(0, TABLE)
            .expect("routes gone after the session ends");
        self.node.stop(speaker);
        (announce, withdraw)
    }
}

/// BIRD 2 in the ToR namespace with both sessions configured `disabled`.
struct Bird {
    daemon: Daemon,
    birdc: PathBuf,
    socket: PathBuf,
}

impl Bird {
    fn start(ns: &Netns, dir: &Path) -> Self {
        let conf = dir.join("bird.conf");
        let socket = dir.join("bird.ctl");
        std::fs::write(&conf, bird_conf())
            .unwrap_or_else(|e| panic!("writing {}: {e}", conf.display()));
        let daemon = ns.spawn(
            "bird",
            require("bird"),
            &[
                "-f",
                "-c",
                &conf.to_string_lossy(),
                "-s",
                &socket.to_string_lossy(),
            ],
            &dir.join("bird.log"),
        );
        let mut bird = Self {
            daemon,
            birdc: require("birdc"),
            socket,
        };
        let up = poll_until(UP, || {
            bird.daemon.assert_running();
            bird.birdc(&["show", "status"])
                .filter(|out| out.contains("up and running"))
        });
        assert!(up.is_some(), "BIRD not up\n{}", bird.daemon.log_tail());
        bird
    }

    fn birdc(&self, args: &[&str]) -> Option<String> {
        let out = Command::new(&self.birdc)
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn enable(&self, protocol: &str) {
        self.birdc(&["enable", protocol])
            .unwrap_or_else(|| panic!("birdc enable {protocol}"));
    }

    fn disable(&self, protocol: &str) {
        self.birdc(&["disable", protocol])
            .unwrap_or_else(|| panic!("birdc disable {protocol}"));
    }

    fn established(&self, protocol: &str) -> bool {
        self.birdc(&["show", "protocols", protocol])
            .is_some_and(|out| out.contains("Established"))
    }

    /// `show route count`: "10000 of 10000 routes for 10000 networks in table master4".
    fn route_count(&self) -> usize {
        let out = self.birdc(&["show", "route", "count"]).unwrap_or_default();
        out.lines()
            .find(|l| l.contains("routes for"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("unexpected `show route count`: {out}"))
    }
}

fn bird_conf() -> String {
    let mut c = format!(
        "log stderr all;\nrouter id {TOR_TO_NODE};\nprotocol device {{ scan time 10; }}\n\
         protocol kernel {{ ipv4 {{ import none; export where source = RTS_BGP; }}; }}\n"
    );
    for (name, local, neighbor, asn) in [
        ("vipwire", TOR_TO_NODE, NODE, NODE_ASN),
        ("gobgp", TOR_TO_GOBGP, GOBGP, GOBGP_ASN),
    ] {
        let _ = writeln!(
            c,
            "protocol bgp {name} {{ disabled; local {local} as {TOR_ASN}; neighbor {neighbor} as {asn};\n  \
             connect delay time 0; connect retry time 1; error wait time 1, 5;\n  \
             ipv4 {{ import all; export none; }}; }}"
        );
    }
    c
}

/// gobgpd in its namespace, passive towards BIRD, API on the namespace's loopback.
struct Gobgpd {
    daemon: Daemon,
    ns: Netns,
    gobgp: PathBuf,
}

impl Gobgpd {
    fn start(ns: &Netns, dir: &Path) -> Self {
        let conf = dir.join("gobgpd.toml");
        let toml = format!(
            "[global.config]\n  as = {GOBGP_ASN}\n  router-id = \"{GOBGP}\"\n\
             [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{TOR_TO_GOBGP}\"\n    peer-as = {TOR_ASN}\n\
             \x20 [neighbors.transport.config]\n    passive-mode = true\n    local-address = \"{GOBGP}\"\n\
             \x20 [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\"\n"
        );
        std::fs::write(&conf, toml).unwrap_or_else(|e| panic!("writing {}: {e}", conf.display()));
        let mut daemon = ns.spawn(
            "gobgpd",
            require("gobgpd"),
            &[
                "-f",
                &conf.to_string_lossy(),
                "-t",
                "toml",
                "--api-hosts",
                &format!("127.0.0.1:{GOBGP_API}"),
                "--pprof-disable",
                "--log-plain",
            ],
            &dir.join("gobgpd.log"),
        );
        let gobgp = require("gobgp");
        let up = poll_until(UP, || {
            daemon.assert_running();
            let mut cli = ns.command(&gobgp);
            cli.args(["-p", GOBGP_API, "global"]);
            cli.output().ok()?.status.success().then_some(())
        });
        assert!(up.is_some(), "gobgpd API not up\n{}", daemon.log_tail());
        Self {
            daemon,
            ns: ns.clone(),
            gobgp,
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = self
            .ns
            .command(&self.gobgp)
            .args(["-p", GOBGP_API])
            .args(args)
            .output()
            .expect("running gobgp");
        assert!(
            out.status.success(),
            "gobgp {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Streams the MRT file's routes to gobgpd (which may still be adding them).
    fn inject(&self, mrt: &Path) {
        self.cli(&["mrt", "inject", "global", &mrt.to_string_lossy()]);
    }

    /// Waits until all routes are in gobgpd's RIB, injecting again (up to 3 times) what the
    /// CLI lost (see [`mrt`]).
    fn wait_rib(&self, mrt: &Path) {
        // "Destination: 10000, Path: 10000"
        let want = format!("Destination: {ROUTES},");
        for _ in 0..3 {
            let all = poll_until(Duration::from_secs(3), || {
                self.cli(&["global", "rib", "summary", "-a", "ipv4"])
                    .contains(&want)
                    .then_some(())
            });
            if all.is_some() {
                return;
            }
            self.inject(mrt);
        }
        panic!(
            "gobgpd: not all routes injected\n{}",
            self.daemon.log_tail()
        );
    }
}

/// A current-thread tokio runtime on a thread that entered the node namespace, so the
/// speaker's sockets live there (as in tests/tests/bgp_speaker.rs).
struct NsRuntime {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl NsRuntime {
    fn start(ns: &Netns) -> Self {
        let path = format!("/run/netns/{}", ns.name());
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            enter_netns(&path);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            handle_tx.send(rt.handle().clone()).expect("bench alive");
            rt.block_on(async {
                let _ = stop_rx.await;
            });
        });
        Self {
            handle: handle_rx.recv().expect("runtime thread up"),
            _stop: stop_tx,
        }
    }

    /// A fresh speaker with one peer (BIRD), also listening on 179: BIRD connects to it.
    fn speaker(&self) -> Speaker {
        let config = BgpConfig {
            asn: NODE_ASN,
            router_id: None,
            peers: vec![PeerConfig {
                address: IpAddr::V4(TOR_TO_NODE),
                asn: TOR_ASN,
                hold_time: Duration::from_secs(90),
                keepalive_time: Duration::from_secs(30),
                password: None,
                port: 179,
            }],
            advertisement: Advertisement::default(),
            // No graceful restart: BIRD flushes our routes as soon as a trial's session ends.
            graceful_restart_time: Duration::ZERO,
        };
        let _guard = self.handle.enter();
        Speaker::start_with(&config, NODE, Some(179))
    }

    fn stop(&self, speaker: Speaker) {
        self.handle
            .block_on(speaker.shutdown(Duration::from_secs(2)));
    }
}

/// Moves the calling thread into the network namespace at `path`.
fn enter_netns(path: &str) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    // SAFETY: setns(2) on a valid namespace fd; it changes only this thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

fn median_ms(samples: &[Duration]) -> f64 {
    percentile_ms(samples, 50.0)
}

/// The nearest-rank percentile `p` (0 < p <= 100) of `samples`, in milliseconds.
fn percentile_ms(samples: &[Duration], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.clamp(1, sorted.len().max(1)) - 1)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}
