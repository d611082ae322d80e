//! `vipwire run`: the agent's main loop. Loads (or takes over) the dataplane, then applies
//! every new snapshot (debounced, plus a periodic full resync) as a delta, serves the admin
//! endpoint and keeps the heartbeat fresh until SIGINT/SIGTERM.

use std::{collections::BTreeSet, path::PathBuf, sync::Arc, time::Duration};

use tokio::{sync::watch, time::Instant};

use crate::{
    admin::{self, AdminError, AdminState, Reconciled, SourceWatch},
    bgp::{Speaker, StartOptions},
    config::Config,
    dataplane::{
        self, heartbeat,
        l2::{self, L2Entry},
        loader::{AttachMode, Attachment, Dataplane, LoaderError},
        logs,
        paths::PinPaths,
    },
    model::{self, ModelConfig},
    snapshot::Snapshot,
    source::{kube, spawn_manifest_source},
};

pub struct RunOptions {
    /// `None`: watch the cluster (in-cluster config, else `KUBECONFIG`).
    pub manifests: Option<PathBuf>,
    pub cleanup_on_exit: bool,
    pub bpf_log_level: aya_log::Level,
}

/// Quiet time after a snapshot before it is applied: a burst of changes costs one reconcile.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// A steady stream of snapshots delays a reconcile by at most this much.
const MAX_DELAY: Duration = Duration::from_millis(500);
/// Reconcile from scratch this often even without changes (repairs maps edited behind our back).
const RESYNC: Duration = Duration::from_secs(300);
/// How long shutdown waits for the withdrawals and NOTIFICATIONs to go out.
const BGP_SHUTDOWN: Duration = Duration::from_secs(2);

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
    #[error(transparent)]
    Admin(#[from] AdminError),
}

pub fn run(config: Config, options: RunOptions) -> Result<(), RunError> {
    // Everything that can be wrong with the input is checked before the first attach.
    if let Some(dir) = &options.manifests
        && !dir.is_dir()
    {
        return Err(RunError::Usage(format!(
            "--manifests: {} is not a directory",
            dir.display()
        )));
    }
    for (i, name) in config.interfaces.iter().enumerate() {
        if let Err(err) = dataplane::iface::lookup(name) {
            return Err(RunError::Usage(format!("interfaces[{i}]: {err}")));
        }
    }
    let router_id = match &config.bgp {
        Some(bgp) => Some(match bgp.router_id {
            Some(id) => id,
            None => dataplane::iface::first_ipv4(&config.interfaces[0]).ok_or_else(|| {
                RunError::Usage(format!(
                    "bgp.routerId: not set and interface {} has no IPv4 address to default to",
                    config.interfaces[0]
                ))
            })?,
        }),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(agent(config, options, router_id))
}

/// The running input: snapshots plus what the admin endpoint reports about it.
struct Input {
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    watch: SourceWatch,
}

async fn open_source(manifests: Option<PathBuf>) -> Result<Input, RunError> {
    match manifests {
        Some(dir) => {
            let source = spawn_manifest_source(dir.clone());
            Ok(Input {
                snapshots: source.snapshots,
                watch: SourceWatch::Manifests {
                    dir,
                    status: source.status,
                },
            })
        }
        None => {
            // Building the client reads the config only; nothing talks to the apiserver yet.
            let client = kube::client().await.map_err(|err| {
                // No cluster to watch is a configuration problem: exit 2, nothing attached.
                RunError::Usage(format!(
                    "{err}: {} (or pass --manifests DIR)",
                    std::error::Error::source(&err).map_or(String::new(), ToString::to_string)
                ))
            })?;
            let source = kube::spawn_kube_source(client);
            Ok(Input {
                snapshots: source.snapshots,
                watch: SourceWatch::Kubernetes {
                    status: source.status,
                    health: source.health,
                },
            })
        }
    }
}

async fn agent(
    config: Config,
    options: RunOptions,
    router_id: Option<std::net::Ipv4Addr>,
) -> Result<(), RunError> {
    let listener = admin::bind(config.admin_listen).await?;
    let mut input = open_source(options.manifests.clone()).await?;
    let state = Arc::new(AdminState::new(
        config.node_name.clone(),
        config.bpffs_dir.clone(),
        input.watch.clone(),
    ));
    admin::serve(listener, state.clone());

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
    plane.enable_l4(config.l4.maglev_table_size)?;
    state.set_attached(true);
    match logs::spawn_forwarder(plane.ebpf_mut()) {
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "BPF logs are not forwarded"),
    }
    plane.self_check()?;

    // Announces nothing until the first reconcile says what this node owns. A pinned XDP link
    // taken over from an earlier agent means the dataplane kept forwarding through our
    // restart: tell the peers (graceful restart R and F bits), which kept our routes as stale.
    let restarting = plane
        .attachments()
        .iter()
        .any(|a| a.mode == AttachMode::Reused);
    let speaker = config.bgp.as_ref().zip(router_id).map(|(bgp, id)| {
        Speaker::start_with_options(
            bgp,
            id,
            StartOptions {
                listen_port: None,
                restarting,
            },
        )
    });
    publish_bgp(speaker.as_ref(), &state);

    let model_config = ModelConfig::from(&config);
    let mut ticker = tokio::time::interval(heartbeat::interval(stale_after));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + RESYNC, RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tracing::info!(node = %config.node_name, interfaces = ?config.interfaces, "agent running");
    let mut source_alive = true;
    // Set while a new snapshot waits out the debounce: (first seen, deadline).
    let mut pending: Option<(Instant, Instant)> = None;
    let mut reconciles = 0u64;
    loop {
        let apply_at = pending.map(|(first, last)| (last + DEBOUNCE).min(first + MAX_DELAY));
        tokio::select! {
            _ = ticker.tick() => {
                heartbeat::beat(plane.ebpf_mut(), stale_after).map_err(RunError::Heartbeat)?;
                publish_bgp(speaker.as_ref(), &state);
            }
            changed = input.snapshots.changed(), if source_alive => {
                if changed.is_err() {
                    // Keep the last state: no mass withdraw because the input went away.
                    tracing::error!("the snapshot source stopped; keeping the last state");
                    source_alive = false;
                    continue;
                }
                let now = Instant::now();
                pending = Some((pending.map_or(now, |(first, _)| first), now));
            }
            () = sleep_until_opt(apply_at) => {
                pending = None;
                let snapshot = input.snapshots.borrow_and_update().clone();
                if let Some(snapshot) = snapshot {
                    reconciles += 1;
                    reconcile(&mut plane, speaker.as_ref(), &config, &model_config, &snapshot, &state, reconciles)?;
                }
            }
            _ = resync.tick() => {
                let snapshot = input.snapshots.borrow().clone();
                if let Some(snapshot) = snapshot {
                    tracing::debug!("periodic full resync");
                    reconciles += 1;
                    reconcile(&mut plane, speaker.as_ref(), &config, &model_config, &snapshot, &state, reconciles)?;
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    if let Some(speaker) = speaker {
        // Withdraw, then Cease/Administrative Shutdown: peers move traffic away at once
        // instead of waiting out the hold time.
        tracing::info!("shutting down: withdrawing BGP routes");
        speaker.shutdown(BGP_SHUTDOWN).await;
    }
    if options.cleanup_on_exit {
        tracing::info!("shutting down: detaching and unpinning (--cleanup-on-exit)");
        state.set_attached(false);
        plane.cleanup()?;
    } else {
        tracing::info!(
            "shutting down: the dataplane stays pinned and answers until the heartbeat goes stale"
        );
    }
    Ok(())
}

/// The admin endpoint shows the sessions as of the last call (at most one heartbeat old).
fn publish_bgp(speaker: Option<&Speaker>, state: &AdminState) {
    if let Some(speaker) = speaker {
        state.set_bgp(speaker.status());
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Applies what the model wants for this node to the dataplane, as a delta.
fn reconcile(
    plane: &mut Dataplane,
    speaker: Option<&Speaker>,
    config: &Config,
    model_config: &ModelConfig,
    snapshot: &Arc<Snapshot>,
    state: &AdminState,
    count: u64,
) -> Result<(), RunError> {
    // From scratch: the model sees the whole snapshot and the writer diffs against the kernel.
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
        if let Some(a) = plane
            .attachments()
            .iter()
            .find(|a| a.ifindex == entry.ifindex)
        {
            crate::l2::spawn_announcements(a.interface.clone(), a.ifindex, a.mac, entry.addr);
        }
    }
    if let Some(delta) = plane.apply_l4(&desired.services)? {
        for frontend in &delta.removed {
            tracing::info!(%frontend, "stopped steering");
        }
        for frontend in &delta.added {
            tracing::info!(%frontend, "steering");
        }
        state.set_steering(plane.l4_view());
    }
    if let Some(speaker) = speaker {
        speaker.set_announcements(desired.bgp.clone());
    }
    publish_bgp(speaker, state);
    state.set_reconciled(Reconciled {
        desired: Arc::new(desired),
        snapshot: snapshot.clone(),
        count,
    });
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
        .flat_map(|&addr| {
            attachments.iter().map(move |a| L2Entry {
                addr,
                ifindex: a.ifindex,
            })
        })
        .collect()
}
