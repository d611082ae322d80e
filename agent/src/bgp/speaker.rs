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
    session::{self, PeerStatus, SessionConfig, Shared},
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

/// The embedded BGP speaker. Dropping it aborts the sessions without a NOTIFICATION; call
/// [`Speaker::shutdown`] to withdraw and say goodbye.
pub struct Speaker {
    desired: watch::Sender<BTreeSet<IpAddr>>,
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
        let router_id = config.router_id.unwrap_or(router_id);
        let (desired, _) = watch::channel(BTreeSet::new());
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
        self.desired.send_if_modified(|set| {
            let before = set.len();
            set.extend(addrs);
            set.len() != before
        });
    }

    /// Removes the host routes for `addrs`.
    pub fn withdraw(&self, addrs: impl IntoIterator<Item = IpAddr>) {
        let addrs: Vec<IpAddr> = addrs.into_iter().collect();
        self.desired.send_if_modified(|set| {
            let before = set.len();
            for addr in &addrs {
                set.remove(addr);
            }
            set.len() != before
        });
    }

    /// Replaces the announced set; every session sends only the difference.
    pub fn set_announcements(&self, addrs: BTreeSet<IpAddr>) {
        self.desired.send_if_modified(|set| {
            let changed = *set != addrs;
            *set = addrs;
            changed
        });
    }

    /// What the speaker wants announced.
    pub fn announcements(&self) -> BTreeSet<IpAddr> {
        self.desired.borrow().clone()
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
