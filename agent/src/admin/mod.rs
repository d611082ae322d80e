//! The admin endpoint (config `admin.listen`, default 127.0.0.1:9469): `/healthz`, `/readyz`,
//! `/metrics` (Prometheus text, `vipwire_` prefix) and `/status` (JSON). It only reads: the run
//! loop publishes what it did into an [`AdminState`], and the dataplane part comes from the
//! pinned maps, exactly as `vipwire status` reads them without an agent.

pub mod bgp;
pub mod client;
pub mod doctor;
mod http;
mod metrics;
pub mod status;

#[cfg(test)]
mod tests;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

pub use self::status::AgentStatus;
use crate::{
    bgp::PeerStatus,
    dataplane::l4::ServiceView,
    model::Desired,
    snapshot::Snapshot,
    source::{SourceStatus, kube::KubeHealth},
};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin.listen: cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Where the agent's input comes from, and how it is doing.
#[derive(Clone, Debug)]
pub enum SourceWatch {
    Manifests {
        dir: PathBuf,
        status: watch::Receiver<SourceStatus>,
    },
    Kubernetes {
        status: watch::Receiver<SourceStatus>,
        health: watch::Receiver<KubeHealth>,
    },
}

/// What the run loop did last; replaced as a whole after every reconcile.
#[derive(Clone, Debug, Default)]
pub struct Reconciled {
    pub desired: Arc<Desired>,
    pub snapshot: Arc<Snapshot>,
    /// Reconciles done so far (snapshot changes and periodic resyncs).
    pub count: u64,
}

/// Shared between the run loop (writer) and the admin endpoint (reader).
pub struct AdminState {
    pub node: String,
    pub bpffs_dir: PathBuf,
    pub source: SourceWatch,
    attached: Mutex<bool>,
    reconciled: Mutex<Option<Reconciled>>,
    /// `None` when BGP is not configured.
    bgp: Mutex<Option<bgp::BgpSnapshot>>,
    /// The L4 writer's services as last written (`None`: L4 not running).
    steering: Mutex<Option<Arc<Vec<Arc<ServiceView>>>>>,
}

impl AdminState {
    pub fn new(node: String, bpffs_dir: PathBuf, source: SourceWatch) -> Self {
        Self {
            node,
            bpffs_dir,
            source,
            attached: Mutex::new(false),
            reconciled: Mutex::new(None),
            bgp: Mutex::new(None),
            steering: Mutex::new(None),
        }
    }

    /// The steered services after an L4 apply.
    pub fn set_steering(&self, services: Vec<Arc<ServiceView>>) {
        *lock(&self.steering) = Some(Arc::new(services));
    }

    pub fn steering(&self) -> Option<Arc<Vec<Arc<ServiceView>>>> {
        lock(&self.steering).clone()
    }

    /// Every configured interface has its XDP program attached.
    pub fn set_attached(&self, attached: bool) {
        *lock(&self.attached) = attached;
    }

    pub fn set_reconciled(&self, reconciled: Reconciled) {
        *lock(&self.reconciled) = Some(reconciled);
    }

    /// The published result, locked: the run loop replaces it while readers wait (so it can
    /// update the desired state in place, without a copy that readers could still hold).
    pub fn lock_reconciled(&self) -> std::sync::MutexGuard<'_, Option<Reconciled>> {
        lock(&self.reconciled)
    }

    /// The BGP speaker's sessions as of now (the run loop calls this periodically).
    pub fn set_bgp(&self, peers: Vec<PeerStatus>) {
        *lock(&self.bgp) = Some(bgp::BgpSnapshot {
            peers,
            taken: std::time::Instant::now(),
        });
    }

    pub fn bgp(&self) -> Option<bgp::BgpView> {
        lock(&self.bgp).as_ref().map(bgp::BgpView::of)
    }

    pub fn reconciled(&self) -> Option<Reconciled> {
        lock(&self.reconciled).clone()
    }

    /// `/readyz`: the source is ready, the dataplane attached, and one reconcile done.
    pub fn ready(&self) -> bool {
        *lock(&self.attached) && self.source_view().ready && lock(&self.reconciled).is_some()
    }

    pub fn source_view(&self) -> status::SourceView {
        status::SourceView::of(&self.source)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind: still readable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Binds `addr` now (so a taken port is an error before anything is attached) and serves on
/// the current tokio runtime.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, AdminError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })
}

pub fn serve(listener: TcpListener, state: Arc<AdminState>) -> JoinHandle<()> {
    tokio::spawn(http::serve(listener, state))
}
