//! Real BGP peers (FRR, BIRD 2, GoBGP) running inside a lab namespace, configured from one
//! [`PeerConfig`], with one query API over their RIBs and sessions.
//!
//! ```no_run
//! use std::time::Duration;
//! use testkit::{NetLab, peer::{Neighbor, OriginatedRoute, Peer, PeerConfig, PeerKind}};
//!
//! let mut lab = NetLab::new();
//! let tor = lab.netns("tor");
//! let node = lab.netns("node");
//! lab.veth((&tor, "eth0"), (&node, "eth0"));
//! tor.addr("eth0", "10.0.1.1/30");
//! node.addr("eth0", "10.0.1.2/30");
//! let config = PeerConfig::new("10.0.1.1", 65001)
//!     .local("10.0.1.1")
//!     .neighbor(Neighbor::new("10.0.1.2", 65100).password("s3cret"))
//!     .originate(OriginatedRoute::new("203.0.113.1/32").med(10));
//! let tor_bgp = Peer::start(PeerKind::Frr, &tor, config, lab.dir());
//! tor_bgp.wait_established("10.0.1.2", Duration::from_secs(10));
//! ```
//!
//! Each daemon is killed by PID when its [`Peer`] is dropped. Where the daemons differ:
//! - BIRD announces only the routes it originates (static routes plus an export filter that
//!   sets their attributes); FRR and GoBGP announce their whole best-path table.
//! - FRR (zebra) and BIRD (kernel protocol) install learned routes into the namespace's FIB;
//!   GoBGP has no FIB.
//! - A neighbor carries the families listed in [`Neighbor::families`] (by default the family of
//!   its address), so IPv6 routes travel over an IPv6 session.

mod bird;
mod frr;
mod gobgp;
mod rib;

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

pub use self::rib::{
    Community, Family, IntoIpAddr, LargeCommunity, Origin, Prefix, RibRoute, SessionState,
};
use crate::{
    netlab::Netns,
    process::{Daemon, poll_until},
};

/// Which BGP implementation runs the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerKind {
    Frr,
    Bird,
    Gobgp,
}

impl fmt::Display for PeerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeerKind::Frr => "frr",
            PeerKind::Bird => "bird",
            PeerKind::Gobgp => "gobgp",
        })
    }
}

/// What a peer is: its identity, its neighbors, the routes it originates.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    pub router_id: Ipv4Addr,
    pub asn: u32,
    /// Source addresses: a neighbor uses the first one of its own family (none: the kernel's
    /// choice).
    pub local_addrs: Vec<IpAddr>,
    pub neighbors: Vec<Neighbor>,
    /// Seconds; applied to every neighbor (default 9).
    pub hold_time: u16,
    /// Seconds (default 3).
    pub keepalive: u16,
    pub routes: Vec<OriginatedRoute>,
}

impl PeerConfig {
    /// A peer with router id `router_id` in AS `asn`, no neighbors yet, timers 9/3.
    pub fn new(router_id: impl IntoIpAddr, asn: u32) -> Self {
        let router_id = match router_id.into_ip() {
            IpAddr::V4(id) => id,
            IpAddr::V6(id) => panic!("a router id is an IPv4 address, not {id}"),
        };
        Self {
            router_id,
            asn,
            local_addrs: Vec::new(),
            neighbors: Vec::new(),
            hold_time: 9,
            keepalive: 3,
            routes: Vec::new(),
        }
    }

    /// Adds a source address (call once per family).
    pub fn local(mut self, addr: impl IntoIpAddr) -> Self {
        self.local_addrs.push(addr.into_ip());
        self
    }

    pub fn neighbor(mut self, neighbor: Neighbor) -> Self {
        self.neighbors.push(neighbor);
        self
    }

    /// Hold time and keepalive interval, in seconds.
    pub fn timers(mut self, hold_time: u16, keepalive: u16) -> Self {
        self.hold_time = hold_time;
        self.keepalive = keepalive;
        self
    }

    pub fn originate(mut self, route: OriginatedRoute) -> Self {
        self.routes.push(route);
        self
    }

    /// The source address for sessions to `neighbor`, if one of its family was given.
    pub fn local_for(&self, neighbor: IpAddr) -> Option<IpAddr> {
        self.local_addrs
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == neighbor.is_ipv4())
    }

    pub(crate) fn is_ebgp(&self, neighbor: &Neighbor) -> bool {
        neighbor.asn != self.asn
    }

    fn routes_of(&self, family: Family) -> impl Iterator<Item = &OriginatedRoute> {
        self.routes
            .iter()
            .filter(move |r| r.prefix.family() == family)
    }
}

/// One BGP neighbor of a peer.
#[derive(Clone, Debug)]
pub struct Neighbor {
    pub addr: IpAddr,
    pub asn: u32,
    /// TCP-MD5 (RFC 2385) password.
    pub password: Option<String>,
    /// Wait for the neighbor to connect; never connect out.
    pub passive: bool,
    /// Families carried on the session (default: the family of `addr`).
    pub families: Vec<Family>,
}

impl Neighbor {
    pub fn new(addr: impl IntoIpAddr, asn: u32) -> Self {
        let addr = addr.into_ip();
        Self {
            addr,
            asn,
            password: None,
            passive: false,
            families: vec![Family::of(addr)],
        }
    }

    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_owned());
        self
    }

    pub fn passive(mut self) -> Self {
        self.passive = true;
        self
    }

    pub fn families(mut self, families: &[Family]) -> Self {
        self.families = families.to_vec();
        self
    }

    fn carries(&self, family: Family) -> bool {
        self.families.contains(&family)
    }
}

/// A route the peer announces itself, with the attributes it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginatedRoute {
    pub prefix: Prefix,
    pub med: Option<u32>,
    /// Sent to iBGP neighbors only.
    pub local_pref: Option<u32>,
    pub communities: Vec<Community>,
    pub large_communities: Vec<LargeCommunity>,
}

impl OriginatedRoute {
    pub fn new(prefix: impl Into<Prefix>) -> Self {
        Self {
            prefix: prefix.into(),
            med: None,
            local_pref: None,
            communities: Vec::new(),
            large_communities: Vec::new(),
        }
    }

    pub fn med(mut self, med: u32) -> Self {
        self.med = Some(med);
        self
    }

    pub fn local_pref(mut self, local_pref: u32) -> Self {
        self.local_pref = Some(local_pref);
        self
    }

    /// Adds a community, `"65000:100"`.
    pub fn community(mut self, community: &str) -> Self {
        self.communities
            .push(community.parse().unwrap_or_else(|e| panic!("{e}")));
        self
    }

    /// Adds a large community, `"65000:1:2"`.
    pub fn large_community(mut self, community: &str) -> Self {
        self.large_communities
            .push(community.parse().unwrap_or_else(|e| panic!("{e}")));
        self
    }
}

/// What each implementation does behind [`Peer`]'s uniform API.
trait Backend: Send + Sync {
    fn session_state(&self, neighbor: IpAddr) -> SessionState;
    /// Every path of `family`, or only those of `prefix` (exact match).
    fn routes(&self, family: Family, prefix: Option<Prefix>) -> Vec<RibRoute>;
}

/// A running BGP daemon in a namespace. Dropping it kills the daemon(s) by PID.
pub struct Peer {
    kind: PeerKind,
    ns: Netns,
    config: PeerConfig,
    dir: PathBuf,
    up_since: Instant,
    // Declared before `backend`: the daemons die before the backend removes its files.
    daemons: Mutex<Vec<Daemon>>,
    backend: Box<dyn Backend>,
}

/// What a backend's start hands back.
struct Started {
    daemons: Vec<Daemon>,
    backend: Box<dyn Backend>,
}

impl Peer {
    /// Writes `kind`'s configuration for `config` under `scratch`, starts the daemon(s) in `ns`
    /// and returns once they answer queries (sessions may still be coming up).
    ///
    /// # Panics
    /// When the daemon is missing, rejects its configuration or does not come up in 10 s.
    pub fn start(kind: PeerKind, ns: &Netns, config: PeerConfig, scratch: &Path) -> Self {
        crate::tools::require_root();
        let dir = scratch.join(format!("{kind}-{}", ns.name()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let started = match kind {
            PeerKind::Frr => frr::start(ns, &config, &dir),
            PeerKind::Bird => bird::start(ns, &config, &dir),
            PeerKind::Gobgp => gobgp::start(ns, &config, &dir),
        };
        Self {
            kind,
            ns: ns.clone(),
            config,
            dir,
            up_since: Instant::now(),
            daemons: Mutex::new(started.daemons),
            backend: started.backend,
        }
    }

    pub fn kind(&self) -> PeerKind {
        self.kind
    }

    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    pub fn config(&self) -> &PeerConfig {
        &self.config
    }

    /// How long ago [`Peer::start`] returned (the daemon answering queries).
    pub fn uptime(&self) -> Duration {
        self.up_since.elapsed()
    }

    /// Where the peer's configs and logs are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The session to `neighbor` as the daemon sees it now.
    pub fn session_state(&self, neighbor: impl IntoIpAddr) -> SessionState {
        self.backend.session_state(neighbor.into_ip())
    }

    /// How long the session to `neighbor` took to reach Established, or `None` if it did not
    /// within `timeout`.
    pub fn established_within(
        &self,
        neighbor: impl IntoIpAddr,
        timeout: Duration,
    ) -> Option<Duration> {
        let neighbor = neighbor.into_ip();
        let start = Instant::now();
        poll_until(timeout, || {
            self.assert_running();
            self.backend
                .session_state(neighbor)
                .established
                .then(|| start.elapsed())
        })
    }

    /// Waits for the session to `neighbor` to reach Established; returns how long it took.
    ///
    /// # Panics
    /// After `timeout`, with the last state and the daemon's log.
    pub fn wait_established(&self, neighbor: impl IntoIpAddr, timeout: Duration) -> Duration {
        let neighbor = neighbor.into_ip();
        self.established_within(neighbor, timeout).unwrap_or_else(|| {
            panic!(
                "{} in {}: session to {neighbor} not Established after {timeout:?} (state: {:?})\n{}",
                self.kind,
                self.ns.name(),
                self.backend.session_state(neighbor).raw,
                self.log_tail()
            )
        })
    }

    /// Every path in the peer's BGP RIB, IPv4 then IPv6.
    pub fn rib(&self) -> Vec<RibRoute> {
        Family::ALL
            .iter()
            .flat_map(|&family| self.backend.routes(family, None))
            .collect()
    }

    /// Every path to exactly `prefix`, the best one first.
    pub fn routes(&self, prefix: impl Into<Prefix>) -> Vec<RibRoute> {
        let prefix = prefix.into();
        let mut routes = self.backend.routes(prefix.family(), Some(prefix));
        routes.retain(|r| r.prefix == prefix);
        routes.sort_by_key(|r| !r.best);
        routes
    }

    /// The best path to exactly `prefix`, if the peer has selected one. A path the daemon has
    /// received but not yet run best-path selection on (FRR queues it) is not returned.
    pub fn route(&self, prefix: impl Into<Prefix>) -> Option<RibRoute> {
        self.routes(prefix).into_iter().find(|r| r.best)
    }

    /// Waits for the peer to select a path to `prefix`; returns it.
    ///
    /// # Panics
    /// After `timeout`, with the RIB and the daemon's log.
    pub fn wait_route(&self, prefix: impl Into<Prefix>, timeout: Duration) -> RibRoute {
        let prefix = prefix.into();
        poll_until(timeout, || {
            self.assert_running();
            self.route(prefix)
        })
        .unwrap_or_else(|| {
            panic!(
                "{} in {}: no route to {prefix} after {timeout:?}; RIB: {:#?}\n{}",
                self.kind,
                self.ns.name(),
                self.rib(),
                self.log_tail()
            )
        })
    }

    /// Waits until the peer has no path to `prefix`.
    ///
    /// # Panics
    /// After `timeout`, with the remaining paths and the daemon's log.
    pub fn wait_no_route(&self, prefix: impl Into<Prefix>, timeout: Duration) {
        let prefix = prefix.into();
        if poll_until(timeout, || {
            self.assert_running();
            self.routes(prefix).is_empty().then_some(())
        })
        .is_none()
        {
            panic!(
                "{} in {}: still a route to {prefix} after {timeout:?}: {:#?}\n{}",
                self.kind,
                self.ns.name(),
                self.routes(prefix),
                self.log_tail()
            );
        }
    }

    /// Sends `signal` to the daemon(s), e.g. `SIGSTOP` for a peer that dies silently.
    pub fn signal(&self, signal: i32) {
        for daemon in self.daemons().iter() {
            daemon.signal(signal);
        }
    }

    /// The PIDs of the daemon(s).
    pub fn pids(&self) -> Vec<u32> {
        self.daemons().iter().map(Daemon::pid).collect()
    }

    /// Panics, with the log, if a daemon has exited.
    pub fn assert_running(&self) {
        for daemon in self.daemons().iter_mut() {
            daemon.assert_running();
        }
    }

    /// The end of each daemon's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.daemons()
            .iter()
            .map(|d| format!("--- {} ---\n{}", d.log_path().display(), d.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn daemons(&self) -> MutexGuard<'_, Vec<Daemon>> {
        // A panic while the lock was held (assert_running's) leaves the daemons usable.
        self.daemons.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Polls `check` until it returns `Some`, panicking with `what` and `log()` after 10 s: for
/// "the daemon is up" waits inside the backends.
fn wait_up<T>(what: &str, daemon: &mut Daemon, mut check: impl FnMut() -> Option<T>) -> T {
    let timeout = Duration::from_secs(10);
    poll_until(timeout, || {
        daemon.assert_running();
        check()
    })
    .unwrap_or_else(|| panic!("{what}: not up after {timeout:?}\n{}", daemon.log_tail()))
}

/// Runs a query command; its stdout when it succeeds within 5 s. The CLIs block while their
/// daemon is stopped (a test's SIGSTOP), so a query that hangs is killed and counts as failed.
fn query(mut command: std::process::Command) -> Option<String> {
    use std::{io::Read, process::Stdio};

    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take()?;
    // Read on the side: a large RIB does not fit in the pipe while we wait.
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    let out = reader.join().ok()?;
    status
        .success()
        .then(|| String::from_utf8_lossy(&out).into_owned())
}

/// Writes a config file, panicking with the path on failure.
fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
