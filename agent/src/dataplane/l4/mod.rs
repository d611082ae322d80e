//! The L4 writer: turns the model's services (`Desired::services`) into the L4 maps of
//! `vipwire_common::l4`, writing only what changed.
//!
//! - Ids: a service id per frontend (`1..SERVICE_IDS`), a backend id per (pod address, target
//!   port), both monotonic with wrap ([`ids`]) and read back from the pinned maps on start
//!   ([`L4Writer::recover`]), so flows in conntrack keep pointing at the same pods. New ids
//!   continue after the highest that conntrack, affinity and fragment entries name: a flow
//!   to a pod removed just before a restart never reaches another pod under its id.
//! - Delta: the writer keeps a mirror of what it wrote ([`Mirror`], Maglev chunks as
//!   fingerprints) and a digest of each frontend's desired state; an apply replans only the
//!   frontends the caller says may have changed and whose digest did change, and emits only
//!   the map operations whose entries differ from the mirror ([`plan`]). Backends, VIP filter
//!   bits and reply-program devices shared between frontends are reference-counted, so one
//!   change costs the size of the frontends it touches.
//! - Order: backends before the Maglev chunks that name them, chunks before the service that
//!   points at them; removal the other way round. The kernel never follows a dangling id.
//! - Conntrack, affinity and fragment maps are never touched: established flows survive.

mod counts;
pub mod ids;
mod kernel;
pub mod mirror;
pub mod plan;
pub mod status;
mod view;

#[cfg(test)]
mod tests;

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use aya::{Ebpf, maps::MapError};

pub use self::{
    kernel::{carry_ipv4_flows, forget_ipv4_flows},
    mirror::{MaglevInput, Mirror, Op},
    plan::Plan,
};
use super::route::{self, Delivery};
use crate::model::{Frontend, Services};

#[derive(Debug, thiserror::Error)]
pub enum L4Error {
    #[error("map {0} missing from the BPF object")]
    MissingMap(&'static str),
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("counting CPUs")]
    Cpus(#[source] std::io::Error),
    #[error("no free {kind} id left: map {map} is full")]
    IdsExhausted {
        kind: &'static str,
        map: &'static str,
    },
}

/// What one apply did, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct L4Delta {
    pub added: Vec<Frontend>,
    pub removed: Vec<Frontend>,
    /// Map writes and deletes issued.
    pub ops: usize,
}

/// One steered service as the writer last wrote it (for `/status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceView {
    pub frontend: Frontend,
    pub service_id: u32,
    pub maglev_size: u32,
    pub backends: Vec<BackendView>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendView {
    pub addr: SocketAddr,
    pub id: u32,
    pub active: bool,
    pub ifindex: u32,
    pub veth: bool,
}

pub struct L4Writer {
    planner: plan::Planner,
}

impl L4Writer {
    /// A writer that starts from what the pinned maps in `ebpf` hold (an earlier agent's
    /// state, or nothing), with `maglev_size` (one of `l4::MAGLEV_SIZES`) as the table floor.
    pub fn recover(ebpf: &mut Ebpf, maglev_size: u32) -> Result<Self, L4Error> {
        let mirror = kernel::read(ebpf)?;
        // After the mirror: flows started since name only backends it already holds.
        let referenced = kernel::referenced(ebpf)?;
        Ok(Self {
            planner: plan::Planner::new(maglev_size, mirror, referenced),
        })
    }

    /// Plans the operations that make the maps match `desired`. `changed` names every
    /// frontend whose desired state may differ from the one the last plan saw (`None`: compare
    /// them all). Route lookups for new or changed backends happen here, so the caller can
    /// attach the reply program to every device [`Plan::devices`] names before the backends
    /// become reachable.
    pub fn plan(
        &mut self,
        desired: &Services,
        changed: Option<&BTreeSet<Frontend>>,
    ) -> Result<Plan, L4Error> {
        self.plan_with(desired, changed, &mut |addr| match route::lookup(addr) {
            Ok(delivery) => delivery,
            Err(err) => {
                tracing::warn!(%addr, error = %err, "route lookup failed; delivery by FIB lookup");
                Delivery::default()
            }
        })
    }

    /// [`L4Writer::plan`] with another route lookup (tests).
    pub fn plan_with(
        &mut self,
        desired: &Services,
        changed: Option<&BTreeSet<Frontend>>,
        resolve: &mut dyn FnMut(IpAddr) -> Delivery,
    ) -> Result<Plan, L4Error> {
        let plan = self.planner.plan(desired, changed, resolve);
        if plan.is_err() {
            // Ids handed out to a plan that will not run go back.
            self.planner.abort();
        }
        plan
    }

    /// Issues the plan's operations in order. On error the mirror still matches the kernel
    /// (it follows every successful operation), and the next apply replans what is missing.
    pub fn execute(&mut self, ebpf: &mut Ebpf, mut plan: Plan) -> Result<L4Delta, L4Error> {
        let ops = plan.ops.len();
        let mut maps = kernel::Maps::open(ebpf)?;
        // Consumed as issued: a first plan's operations (and the Maglev inputs they share)
        // are ~10 MiB at 10,000 Services, freed while the mirror they turn into grows, and
        // gone before the commit builds the counts.
        for op in std::mem::take(&mut plan.ops) {
            if let Err(err) = maps.apply(&op) {
                self.planner.abort();
                return Err(err);
            }
            self.planner.record(&op);
        }
        let delta = L4Delta {
            added: std::mem::take(&mut plan.added),
            removed: std::mem::take(&mut plan.removed),
            ops,
        };
        self.planner.commit(plan);
        Ok(delta)
    }

    /// Plans (comparing every frontend) and executes in one step (no reply-program
    /// attachment in between).
    pub fn apply(&mut self, ebpf: &mut Ebpf, desired: &Services) -> Result<L4Delta, L4Error> {
        let plan = self.plan(desired, None)?;
        self.execute(ebpf, plan)
    }

    /// Re-reads the maps and diffs everything against them on the next apply, so entries
    /// changed or deleted behind the agent's back are repaired.
    pub fn resync(&mut self, ebpf: &mut Ebpf) -> Result<(), L4Error> {
        let mirror = kernel::read(ebpf)?;
        self.planner.reload(mirror);
        Ok(())
    }

    /// Host-side devices the written backends are delivered through (the reply program's
    /// attach points).
    pub fn devices(&self) -> BTreeSet<u32> {
        self.planner.devices()
    }

    pub fn mirror(&self) -> &Mirror {
        self.planner.mirror()
    }

    /// The steered services as written (a pointer per frontend: kept up to date by plans).
    pub fn view(&mut self) -> Vec<Arc<ServiceView>> {
        self.planner.view()
    }
}
