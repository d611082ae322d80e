//! `vipwire run`: the agent's main loop. Loads (or takes over) the dataplane, then applies
//! every new snapshot as a delta and keeps the heartbeat fresh until SIGINT/SIGTERM.

use std::{collections::BTreeSet, path::PathBuf, sync::Arc};

use crate::{
    config::Config,
    dataplane::{
        self, heartbeat,
        l2::{self, L2Entry},
        loader::{Attachment, Dataplane, LoaderError},
        logs,
        paths::PinPaths,
    },
    model::{self, ModelConfig},
    snapshot::Snapshot,
    source::manifests,
};

pub struct RunOptions {
    pub manifests: Option<PathBuf>,
    pub cleanup_on_exit: bool,
    pub bpf_log_level: aya_log::Level,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad input found before anything was attached: exit code 2.
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error("writing the L2 maps")]
    L2(#[from] l2::L2Error),
    #[error("writing the heartbeat")]
    Heartbeat(#[source] aya::maps::MapError),
    #[error("starting the runtime or a signal handler")]
    Io(#[from] std::io::Error),
}

pub fn run(config: Config, options: RunOptions) -> Result<(), RunError> {
    // Everything that can be wrong with the input is checked before the first attach.
    let Some(manifest_dir) = options.manifests.clone() else {
        return Err(RunError::Usage(
            "watching the cluster is not available in this build yet: pass --manifests DIR".into(),
        ));
    };
    if !manifest_dir.is_dir() {
        return Err(RunError::Usage(format!("--manifests: {} is not a directory", manifest_dir.display())));
    }
    for (i, name) in config.interfaces.iter().enumerate() {
        if let Err(err) = dataplane::iface::lookup(name) {
            return Err(RunError::Usage(format!("interfaces[{i}]: {err}")));
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(agent(config, options, manifest_dir))
}

async fn agent(config: Config, options: RunOptions, manifest_dir: PathBuf) -> Result<(), RunError> {
    let mut plane = Dataplane::open(
        dataplane::bpf_object(),
        PinPaths::new(&config.bpffs_dir),
        options.bpf_log_level,
    )?;
    let stale_after = config.l2.heartbeat_timeout;
    // Keep answering from the first moment: a restarted agent inherits the old entries.
    heartbeat::beat(plane.ebpf_mut(), stale_after).map_err(RunError::Heartbeat)?;
    for interface in &config.interfaces {
        plane.attach(interface)?;
    }
    plane.forget_other_interfaces()?;
    match logs::spawn_forwarder(plane.ebpf_mut()) {
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "BPF logs are not forwarded"),
    }

    let mut snapshots = manifests::spawn(manifest_dir);
    let model_config = ModelConfig::from(&config);
    let mut ticker = tokio::time::interval(heartbeat::interval(stale_after));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tracing::info!(node = %config.node_name, interfaces = ?config.interfaces, "agent running");
    let mut source_alive = true;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                heartbeat::beat(plane.ebpf_mut(), stale_after).map_err(RunError::Heartbeat)?;
            }
            changed = snapshots.changed(), if source_alive => {
                if changed.is_err() {
                    tracing::error!("the manifest source stopped; keeping the last state");
                    source_alive = false;
                    continue;
                }
                let snapshot = snapshots.borrow_and_update().clone();
                if let Some(snapshot) = snapshot {
                    reconcile(&mut plane, &config, &model_config, &snapshot)?;
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    if options.cleanup_on_exit {
        tracing::info!("shutting down: detaching and unpinning (--cleanup-on-exit)");
        plane.cleanup()?;
    } else {
        tracing::info!(
            "shutting down: the dataplane stays pinned and answers until the heartbeat goes stale"
        );
    }
    Ok(())
}

/// Applies what the model wants for this node to the dataplane, as a delta.
fn reconcile(
    plane: &mut Dataplane,
    config: &Config,
    model_config: &ModelConfig,
    snapshot: &Arc<Snapshot>,
) -> Result<(), RunError> {
    let desired = model::desired(&config.node_name, snapshot, model_config);
    for warning in &desired.warnings {
        tracing::warn!(%warning, "model");
    }
    let entries = l2_entries(config.l2.enabled, &desired.l2, plane.attachments());
    let delta = l2::apply(plane.ebpf_mut(), &entries)?;
    for entry in &delta.removed {
        tracing::info!(vip = %entry.addr, ifindex = entry.ifindex, "stopped answering");
    }
    for entry in &delta.added {
        tracing::info!(vip = %entry.addr, ifindex = entry.ifindex, "answering");
        if let Some(a) = plane.attachments().iter().find(|a| a.ifindex == entry.ifindex) {
            crate::l2::spawn_announcements(a.interface.clone(), a.ifindex, a.mac, entry.addr);
        }
    }
    Ok(())
}

/// Every owned VIP on every attached interface (L2 answering is per interface).
fn l2_entries(
    enabled: bool,
    vips: &BTreeSet<std::net::IpAddr>,
    attachments: &[Attachment],
) -> BTreeSet<L2Entry> {
    if !enabled {
        return BTreeSet::new();
    }
    vips.iter()
        .flat_map(|&addr| attachments.iter().map(move |a| L2Entry { addr, ifindex: a.ifindex }))
        .collect()
}
