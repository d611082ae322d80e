//! `vipwire run`: the agent's main loop. Loads (or takes over) the dataplane, then applies
//! every new snapshot as a delta, serves the admin endpoint and keeps the heartbeat fresh
//! until SIGINT/SIGTERM.
//!
//! Latency and cost of one change: a snapshot that arrives after a quiet period is reconciled
//! at once; only bursts are coalesced ([`Coalescer`]). The desired state is kept by
//! [`Incremental`] (cost of what changed, not of every Service), and the L2 maps are diffed
//! against what this agent wrote last instead of being read back from the kernel. The periodic
//! resync starts both from scratch: the model from the pure [`crate::model::desired`] rules and the
//! L2 writer from the kernel's contents (repairing maps edited behind our back).

use std::{collections::BTreeSet, net::IpAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
    time::Instant,
};

use crate::{
    admin::{self, AdminError, AdminState, Reconciled, SourceWatch},
    bgp::{Speaker, StartOptions},
    coalesce::{Coalescer, sleep_until_opt},
    config::Config,
    dataplane::{
        self,
        heartbeat::{self, Heartbeat},
        l2::{self, L2Entry},
        loader::{AttachMode, Attachment, Dataplane, LoaderError},
        logs,
        paths::PinPaths,
    },
    model::{Incremental, ModelConfig},
    snapshot::Snapshot,
    source::{kube, spawn_manifest_source},
};

pub struct RunOptions {
    /// `None`: watch the cluster (in-cluster config, else `KUBECONFIG`).
    pub manifests: Option<PathBuf>,
    pub cleanup_on_exit: bool,
    pub bpf_log_level: aya_log::Level,
}

/// A snapshot this long after the last reconcile is applied at once (the sources coalesce
/// their own bursts already; this guards against a source that publishes too eagerly).
const QUIET: Duration = Duration::from_millis(10);
/// Inside a burst: apply once snapshots stop for this long...
const DEBOUNCE: Duration = Duration::from_millis(20);
/// ...or at most this long after the first one.
const MAX_DELAY: Duration = Duration::from_millis(250);
/// Reconcile from scratch this often even without changes (repairs maps edited behind our back).
const RESYNC: Duration = Duration::from_secs(300);
/// L2 changes up to this many entries are logged one line each.
const LOG_EACH: usize = 16;
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
    release_large_blocks();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(agent(config, options, router_id))
}

/// glibc raises its mmap threshold each time a large block is freed; past that, big buffers
/// (a first plan's operations, a relist's pages, a map's table while it grows) come from the
/// heap and stay with the process once freed. At 10,000 Services that held ~14 MiB of peak
/// RSS. A fixed threshold (glibc's initial 128 KiB) returns every such block on free.
///
/// One arena: glibc gives threads that allocate at the same time arenas of their own, and
/// memory freed in one is reused by no other. The sources decode on runtime and blocking
/// threads while the reconcile loop builds the model and the first plan on the main thread,
/// so what decoding freed stayed resident beside it (~3.5 MiB of peak RSS with the cluster
/// source at 10,000 Services). The agent's few threads hardly contend for the lock.
fn release_large_blocks() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator; it takes no pointers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
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
    // From the start: a SIGTERM or SIGINT while loading and attaching must still end in the
    // orderly shutdown below (BGP Cease, --cleanup-on-exit), not kill the process mid-way.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
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
    let heart = Heartbeat::start(plane.ebpf_mut(), stale_after).map_err(RunError::Heartbeat)?;
    match logs::spawn_forwarder(plane.ebpf_mut()) {
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "BPF logs are not forwarded"),
    }
    // Before attaching: a program that fails it must not replace the one a previous agent
    // left attached.
    plane.self_check()?;
    for interface in &config.interfaces {
        plane.attach(interface)?;
    }
    plane.forget_other_interfaces()?;
    plane.enable_l4(config.l4.maglev_table_size)?;
    state.set_attached(true);

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
    tracing::info!(node = %config.node_name, interfaces = ?config.interfaces, "agent running");
    let mut source_alive = true;
    let mut coalescer = Coalescer::new(QUIET, DEBOUNCE, MAX_DELAY);
    let mut model = Incremental::new(config.node_name.clone(), model_config.clone());
    let mut l2_written: Option<BTreeSet<IpAddr>> = None;
    let announcer = crate::l2::Announcer::spawn();
    let mut reconciles = 0u64;
    loop {
        let mut due = false;
        tokio::select! {
            _ = ticker.tick() => {
                if let Some(err) = heart.failure() {
                    return Err(RunError::Heartbeat(err));
                }
                publish_bgp(speaker.as_ref(), &state);
                if let Some(view) = plane.take_l4_view(true) {
                    state.set_steering(view);
                }
            }
            changed = input.snapshots.changed(), if source_alive => {
                if changed.is_err() {
                    // Keep the last state: no mass withdraw because the input went away.
                    tracing::error!("the snapshot source stopped; keeping the last state");
                    source_alive = false;
                    continue;
                }
                due = coalescer.changed(Instant::now());
            }
            () = sleep_until_opt(coalescer.deadline()) => due = true,
            _ = resync.tick() => {
                tracing::debug!("periodic full resync");
                model = Incremental::new(config.node_name.clone(), model_config.clone());
                l2_written = None;
                due = true;
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
        heart.alive();
        if !due {
            continue;
        }
        let snapshot = input.snapshots.borrow_and_update().clone();
        if let Some(snapshot) = snapshot {
            reconciles += 1;
            let started = std::time::Instant::now();
            let mut target = Target {
                plane: &mut plane,
                speaker: speaker.as_ref(),
                model: &mut model,
                l2_written: &mut l2_written,
                announcer: &announcer,
                state: &state,
            };
            reconcile(&mut target, &config, &snapshot, reconciles)?;
            tracing::debug!(
                count = reconciles,
                took_us = started.elapsed().as_micros(),
                "reconciled"
            );
        }
        coalescer.acted(Instant::now());
    }
    // No beats from here on: without --cleanup-on-exit the program answers until the
    // heartbeat goes stale.
    drop(heart);
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

/// What a reconcile reads and writes besides its input.
struct Target<'a> {
    plane: &'a mut Dataplane,
    speaker: Option<&'a Speaker>,
    model: &'a mut Incremental,
    /// The L2 VIPs this agent wrote last; `None`: diff against the kernel's maps instead.
    l2_written: &'a mut Option<BTreeSet<IpAddr>>,
    announcer: &'a crate::l2::Announcer,
    state: &'a AdminState,
}

/// Applies what the model wants for this node to the dataplane, as a delta.
fn reconcile(
    target: &mut Target<'_>,
    config: &Config,
    snapshot: &Arc<Snapshot>,
    count: u64,
) -> Result<(), RunError> {
    // Readers of the admin endpoint wait while we hold this; letting go of the published
    // `Desired` first lets the model update it in place instead of copying every Service.
    let mut published = target.state.lock_reconciled();
    let mut warned = None;
    if let Some(previous) = published.as_mut() {
        warned = Some(previous.desired.warnings.clone());
        previous.desired = Arc::default();
    }
    let desired = target.model.update(snapshot).clone();
    // Said once, when they appear (the list is usually short; it is sorted).
    for warning in &desired.warnings {
        if warned
            .as_ref()
            .is_none_or(|w| w.binary_search(warning).is_err())
        {
            tracing::warn!(%warning, "model");
        }
    }
    let plane = &mut *target.plane;
    // Only the VIPs of frontends that may have changed can have changed L2 membership.
    let vips = target
        .model
        .changes()
        .map(|changes| changes.iter().map(|f| f.vip).collect::<BTreeSet<_>>());
    // A full map or a failed write must not stop the agent (that would only crash-loop it):
    // say so, announce what did go in, and diff against the maps' real content next time.
    let (delta, failed) = apply_l2(
        plane,
        target.l2_written,
        config.l2.enabled,
        &desired.l2,
        vips.as_ref(),
    );
    if let Some(err) = failed {
        tracing::error!(
            error = %crate::error_chain(&err),
            "L2 maps not fully written; retrying at the next reconcile"
        );
    }
    // One line per VIP for a few; a mass takeover (the first reconcile) is summed up.
    let each = delta.added.len() + delta.removed.len() <= LOG_EACH;
    if !each {
        tracing::info!(
            added = delta.added.len(),
            removed = delta.removed.len(),
            "L2 answering changed"
        );
    }
    for entry in &delta.removed {
        if each {
            tracing::info!(vip = %entry.addr, ifindex = entry.ifindex, "stopped answering");
        }
    }
    for entry in &delta.added {
        if each {
            tracing::info!(vip = %entry.addr, ifindex = entry.ifindex, "answering");
        }
        if let Some(a) = plane
            .attachments()
            .iter()
            .find(|a| a.ifindex == entry.ifindex)
        {
            target
                .announcer
                .announce(&a.interface, a.ifindex, a.mac, entry.addr);
        }
    }
    // Likewise for L4 (L2, BGP and the flows already steered go on). The
    // model's change list is taken here, next to its only user: an early return above must
    // not drop it (later plans would never revisit those frontends).
    let changes = target.model.take_changes();
    let l4 = plane
        .apply_l4_changed(&desired.services, changes.as_ref())
        .unwrap_or_else(|err| {
            tracing::error!(
                error = %crate::error_chain(&err),
                "L4 maps not fully written; retrying at the next reconcile"
            );
            None
        });
    if let Some(delta) = l4 {
        if delta.added.len() + delta.removed.len() <= LOG_EACH {
            for frontend in &delta.removed {
                tracing::info!(%frontend, "stopped steering");
            }
            for frontend in &delta.added {
                tracing::info!(%frontend, "steering");
            }
        } else {
            tracing::info!(
                added = delta.added.len(),
                removed = delta.removed.len(),
                "L4 steering changed"
            );
        }
        if let Some(view) = plane.take_l4_view(false) {
            target.state.set_steering(view);
        }
    }
    if let Some(speaker) = target.speaker {
        speaker.set_announcements(desired.bgp.clone());
    }
    publish_bgp(target.speaker, target.state);
    *published = Some(Reconciled {
        desired,
        snapshot: snapshot.clone(),
        count,
    });
    Ok(())
}

/// Brings the L2 maps to `vips` on every attachment. Diffs against `written` (what this agent
/// wrote last: no kernel reads, cost of the change) when known, else against the kernel;
/// against `written`, only the `changed` VIPs when given (the others are as written).
/// Returns what it wrote, and the error it stopped at, if any (`written` is then `None`: the
/// next reconcile diffs against the kernel).
fn apply_l2(
    plane: &mut Dataplane,
    written: &mut Option<BTreeSet<IpAddr>>,
    enabled: bool,
    vips: &BTreeSet<IpAddr>,
    changed: Option<&BTreeSet<IpAddr>>,
) -> (l2::L2Delta, Option<l2::L2Error>) {
    let none = BTreeSet::new();
    let vips = if enabled { vips } else { &none };
    let Some(known) = written.take() else {
        let entries = l2_entries(vips, plane.attachments());
        return match l2::apply(plane.ebpf_mut(), &entries) {
            Ok(delta) => {
                *written = Some(vips.clone());
                (delta, None)
            }
            Err(partial) => (partial.written, Some(partial.error)),
        };
    };
    let expand = |set: Vec<IpAddr>| {
        l2_entries(&set.into_iter().collect(), plane.attachments())
            .into_iter()
            .collect::<Vec<_>>()
    };
    let (added, removed) = match changed {
        // With L2 off, `vips` is empty and every written VIP goes: walk them all.
        Some(changed) if enabled => (
            changed
                .iter()
                .filter(|v| vips.contains(v) && !known.contains(v))
                .copied()
                .collect(),
            changed
                .iter()
                .filter(|v| known.contains(v) && !vips.contains(v))
                .copied()
                .collect(),
        ),
        _ => (
            vips.difference(&known).copied().collect(),
            known.difference(vips).copied().collect(),
        ),
    };
    let delta = l2::L2Delta {
        added: expand(added),
        removed: expand(removed),
    };
    if let Err(partial) = l2::write(plane.ebpf_mut(), &delta) {
        return (partial.written, Some(partial.error));
    }
    let mut known = known;
    for entry in &delta.removed {
        known.remove(&entry.addr);
    }
    for entry in &delta.added {
        known.insert(entry.addr);
    }
    *written = Some(known);
    (delta, None)
}

/// Every VIP on every attached interface (L2 answering is per interface).
fn l2_entries(vips: &BTreeSet<IpAddr>, attachments: &[Attachment]) -> BTreeSet<L2Entry> {
    vips.iter()
        .flat_map(|&addr| {
            attachments.iter().map(move |a| L2Entry {
                addr,
                ifindex: a.ifindex,
            })
        })
        .collect()
}
