//! The speaker the agent uses: one session task per configured peer, one desired set of host
//! routes shared by all of them. Each session diffs the set against its own Adj-RIB-Out.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use super::{
    session::{self, Desired, PeerStatus, SessionConfig, Shared},
    wire::Family,
};
use crate::config::BgpConfig;

struct PeerSlot {
    address: IpAddr,
    asn: u32,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
    listener: bool,
}

/// How [`Speaker::start_with_options`] starts.
#[derive(Clone, Copy, Debug, Default)]
pub struct StartOptions {
    /// Also accept the peers' connections on this port.
    pub listen_port: Option<u16>,
    /// The agent restarted and took over a dataplane that kept forwarding (pinned XDP links):
    /// the first OPEN to each peer sets the graceful-restart R bit and the F bit, so helpers
    /// keep our routes as stale until our End-of-RIB.
    pub restarting: bool,
}

/// The embedded BGP speaker. Dropping it aborts the sessions without a NOTIFICATION; call
/// [`Speaker::shutdown`] to withdraw and say goodbye.
pub struct Speaker {
    desired: watch::Sender<Desired>,
    stop: watch::Sender<bool>,
    peers: Vec<PeerSlot>,
}

impl Speaker {
    /// Starts one session per peer of `config` (active open, reconnecting with back-off).
    /// `router_id` is used when the config names none.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(config: &BgpConfig, router_id: Ipv4Addr) -> Self {
        Self::start_with(config, router_id, None)
    }

    /// Like [`Speaker::start`], and also accepts the peers' connections on `listen_port` (for
    /// each family of the configured peers, with their TCP-MD5 keys). Colliding connections
    /// are resolved by BGP Identifier.
    pub fn start_with(config: &BgpConfig, router_id: Ipv4Addr, listen_port: Option<u16>) -> Self {
        Self::start_with_options(
            config,
            router_id,
            StartOptions {
                listen_port,
                restarting: false,
            },
        )
    }

    /// The general form of [`Speaker::start`].
    pub fn start_with_options(
        config: &BgpConfig,
        router_id: Ipv4Addr,
        options: StartOptions,
    ) -> Self {
        let StartOptions {
            listen_port,
            restarting,
        } = options;
        let router_id = config.router_id.unwrap_or(router_id);
        // RFC 4724 carries the restart time in 12 bits; config validation keeps it there.
        let graceful_restart = u16::try_from(config.graceful_restart_time.as_secs())
            .ok()
            .filter(|&secs| secs > 0)
            .map(|secs| secs.min(4095));
        let (desired, _) = watch::channel(Desired::default());
        let (stop, _) = watch::channel(false);
        let mut listeners: Vec<(IpAddr, Option<String>, mpsc::Sender<session::Input>)> = Vec::new();
        let mut peers: Vec<PeerSlot> = config
            .peers
            .iter()
            .map(|peer| {
                let (tx, rx) = mpsc::channel(64);
                listeners.push((peer.address, peer.password.clone(), tx.clone()));
                let shared = Arc::new(Mutex::new(Shared::new()));
                let session = SessionConfig {
                    local_asn: config.asn,
                    router_id,
                    peer: peer.clone(),
                    advertisement: config.advertisement.clone(),
                    graceful_restart,
                    restarting,
                };
                let task = tokio::spawn(session::run(
                    session,
                    (tx, rx),
                    desired.subscribe(),
                    stop.subscribe(),
                    Arc::clone(&shared),
                ));
                PeerSlot {
                    address: peer.address,
                    asn: peer.asn,
                    shared,
                    task,
                    listener: false,
                }
            })
            .collect();
        if let Some(port) = listen_port {
            for family in [Family::Ipv4, Family::Ipv6] {
                let of_family: Vec<_> = listeners
                    .iter()
                    .filter(|(addr, _, _)| Family::of(*addr) == family)
                    .cloned()
                    .collect();
                if of_family.is_empty() {
                    continue;
                }
                let task = tokio::spawn(session::listen(family, port, of_family));
                // Listeners ride along with the peers so drop and shutdown end them too.
                peers.push(PeerSlot {
                    address: IpAddr::from(Ipv4Addr::UNSPECIFIED),
                    asn: 0,
                    shared: Arc::new(Mutex::new(Shared::new())),
                    task,
                    listener: true,
                });
            }
        }
        Self {
            desired,
            stop,
            peers,
        }
    }

    /// Adds host routes (/32, /128) for `addrs`.
    pub fn announce(&self, addrs: impl IntoIterator<Item = IpAddr>) {
        let addrs: Vec<IpAddr> = addrs.into_iter().collect();
        self.update(|set| set.extend(addrs));
    }

    /// Removes the host routes for `addrs`.
    pub fn withdraw(&self, addrs: impl IntoIterator<Item = IpAddr>) {
        let addrs: Vec<IpAddr> = addrs.into_iter().collect();
        self.update(|set| {
            for addr in &addrs {
                set.remove(addr);
            }
        });
    }

    /// Replaces the announced set; every session sends only the difference. The first call
    /// (even with an empty set) also releases the initial table and End-of-RIB that sessions
    /// hold back after a restart.
    pub fn set_announcements(&self, addrs: BTreeSet<IpAddr>) {
        self.update(|set| *set = addrs);
    }

    /// Applies `change`; notifies the sessions when the set changed or was not ready yet.
    fn update(&self, change: impl FnOnce(&mut BTreeSet<IpAddr>)) {
        self.desired.send_if_modified(|desired| {
            let before = desired.addrs.clone();
            change(&mut desired.addrs);
            let changed = desired.addrs != before || !desired.ready;
            desired.ready = true;
            changed
        });
    }

    /// What the speaker wants announced.
    pub fn announcements(&self) -> BTreeSet<IpAddr> {
        self.desired.borrow().addrs.clone()
    }

    /// Every peer's session, in config order.
    pub fn status(&self) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .filter(|p| !p.listener)
            .map(|p| {
                p.shared
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .status(p.address, p.asn)
            })
            .collect()
    }

    /// Withdraws every route, sends Cease/Administrative Shutdown to every Established peer and
    /// waits (up to `timeout`) for the sessions to finish.
    pub async fn shutdown(mut self, timeout: Duration) {
        let _ = self.stop.send(true);
        for peer in std::mem::take(&mut self.peers) {
            if peer.listener {
                peer.task.abort();
                continue;
            }
            let abort = peer.task.abort_handle();
            if tokio::time::timeout(timeout, peer.task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        for peer in &self.peers {
            peer.task.abort();
        }
    }
}
