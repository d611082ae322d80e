//! Re-reading the manifests directory when it changes.
//!
//! The directory itself is watched (inotify, through `notify`), not the files, so editors that
//! save by writing a temporary file and renaming it over the old one, and ConfigMap volumes
//! that swap a `..data` symlink, are seen like plain writes. Only a good, different snapshot is
//! published. When the directory cannot be watched (missing, inotify limits), it is polled.
//!
//! When to re-read ([`Coalescer`]): an event that says a manifest file is complete (closed
//! after writing, renamed into place, removed) triggers a re-read at once when the directory
//! has been quiet; any other event (a create, a write in progress, a temporary or hidden file,
//! a `..data` swap) is debounced ([`DEBOUNCE`]), so an editor's save dance or a half-written
//! file is not read mid-way. Re-reads parse only the files that changed ([`DirCache`]).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify::{
    EventKind, RecommendedWatcher, RecursiveMode, Watcher,
    event::{AccessKind, AccessMode, ModifyKind, RenameMode},
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::{Instant, sleep},
};

use super::{DirCache, ManifestErrors, Reloaded, is_manifest_name};
use crate::{
    coalesce::{Coalescer, sleep_until_opt},
    snapshot::Snapshot,
    source::SourceStatus,
};

/// A completed write this long after the last re-read is read at once.
const QUIET: Duration = Duration::from_millis(10);
/// Quiet time after the last other event before the directory is re-read.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// A steady stream of events delays a re-read by at most this much.
const MAX_DELAY: Duration = Duration::from_secs(1);
/// How often the directory is re-read while it cannot be watched.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// A running manifests source.
pub struct ManifestSource {
    /// `None` until the first good load; then the last good snapshot, replaced only by a good
    /// and different one. `changed()` fires for the first snapshot too.
    pub snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    /// The outcome of the newest load (error while rejected, warnings of the last good one).
    pub status: watch::Receiver<SourceStatus>,
    /// Ends when every receiver of `snapshots` is gone.
    pub task: JoinHandle<()>,
}

/// Starts watching `dir` on the current tokio runtime and loads it once right away.
pub fn spawn_manifest_source(dir: PathBuf) -> ManifestSource {
    let (snapshots_tx, snapshots) = watch::channel(None);
    let (status_tx, status) = watch::channel(SourceStatus::default());
    let task = tokio::spawn(run(dir, snapshots_tx, status_tx));
    ManifestSource {
        snapshots,
        status,
        task,
    }
}

/// [`spawn_manifest_source`] for callers that only want the snapshots (the task is detached).
pub fn spawn(dir: PathBuf) -> watch::Receiver<Option<Arc<Snapshot>>> {
    spawn_manifest_source(dir).snapshots
}

/// What the watcher tells the task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signal {
    /// A manifest file is complete: written and closed, renamed into place, or removed.
    Settled,
    Changed,
    /// The watch itself is in doubt (directory moved or removed, queue overflow): set it up again.
    Rewatch,
}

fn watch_dir(dir: &Path, tx: mpsc::UnboundedSender<Signal>) -> notify::Result<RecommendedWatcher> {
    let root = dir.to_owned();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let signal = match event {
            Err(_) => Signal::Rewatch,
            Ok(event) if event.need_rescan() => Signal::Rewatch,
            // Opens and plain closes (our own reads among them) change nothing.
            Ok(event)
                if matches!(event.kind, EventKind::Access(kind)
                    if kind != AccessKind::Close(AccessMode::Write)) =>
            {
                return;
            }
            Ok(event) if event.paths.iter().any(|p| p == &root) => Signal::Rewatch,
            Ok(event) if is_settled(&event) => Signal::Settled,
            Ok(_) => Signal::Changed,
        };
        // The task is gone only when nobody wants snapshots any more.
        let _ = tx.send(signal);
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Whether `event` says a manifest file is complete (see the module docs).
fn is_settled(event: &notify::Event) -> bool {
    let complete = matches!(
        event.kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
            | EventKind::Remove(_)
    );
    let manifest = |path: &std::path::PathBuf| {
        path.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(is_manifest_name)
    };
    complete && event.paths.last().is_some_and(manifest)
}

async fn run(
    dir: PathBuf,
    snapshots: watch::Sender<Option<Arc<Snapshot>>>,
    status: watch::Sender<SourceStatus>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = None;
    let mut watch_error = None;
    let mut cache = DirCache::default();
    let mut coalescer = Coalescer::new(QUIET, DEBOUNCE, MAX_DELAY);
    loop {
        // Watch first, then read: a change in between is seen by the next round.
        if watcher.is_none() {
            match watch_dir(&dir, tx.clone()) {
                Ok(w) => {
                    watcher = Some(w);
                    watch_error = None;
                }
                Err(error) => {
                    let error = error.to_string();
                    if watch_error.as_ref() != Some(&error) {
                        tracing::warn!(dir = %dir.display(), %error, "cannot watch the manifests directory; polling it");
                        watch_error = Some(error);
                    }
                }
            }
        }
        cache = reload(&dir, cache, &snapshots, &status).await;
        coalescer.acted(Instant::now());

        let mut rewatch = false;
        loop {
            tokio::select! {
                signal = rx.recv() => match signal.unwrap_or(Signal::Rewatch) {
                    Signal::Settled => {
                        if coalescer.settled(Instant::now()) {
                            break;
                        }
                    }
                    Signal::Changed => coalescer.hold(Instant::now()),
                    Signal::Rewatch => {
                        rewatch = true;
                        coalescer.hold(Instant::now());
                    }
                },
                () = sleep_until_opt(coalescer.deadline()) => break,
                () = sleep(POLL_INTERVAL), if watcher.is_none() => break,
                () = snapshots.closed() => return,
            }
        }
        if rewatch {
            watcher = None;
        }
    }
}

/// Reads the directory; publishes a good snapshot when it differs, else keeps the last one.
async fn reload(
    dir: &Path,
    mut cache: DirCache,
    snapshots: &watch::Sender<Option<Arc<Snapshot>>>,
    status: &watch::Sender<SourceStatus>,
) -> DirCache {
    let path = dir.to_owned();
    let started = std::time::Instant::now();
    let read = tokio::task::spawn_blocking(move || {
        let result = cache.reload(&path);
        (result, cache)
    });
    let (result, cache) = match read.await {
        Ok(done) => done,
        Err(join) => {
            tracing::error!(error = %join, "reading the manifests panicked; keeping the last good snapshot");
            return DirCache::default();
        }
    };
    let read_us = started.elapsed().as_micros();
    match result {
        Ok(loaded) => accept(dir, loaded, snapshots, status),
        Err(errors) => reject(dir, &errors, status),
    }
    tracing::debug!(
        read_us,
        took_us = started.elapsed().as_micros(),
        "manifests re-read"
    );
    cache
}

fn accept(
    dir: &Path,
    reloaded: Reloaded,
    snapshots: &watch::Sender<Option<Arc<Snapshot>>>,
    status: &watch::Sender<SourceStatus>,
) {
    let Reloaded {
        snapshot,
        changed,
        warnings,
    } = reloaded;
    let (services, slices, nodes) = (
        snapshot.services.len(),
        snapshot.endpoint_slices.len(),
        snapshot.nodes.len(),
    );
    // This task is the only sender: update the status before publishing, so a consumer woken
    // by the snapshot reads the matching status. The first load is published even if empty.
    let changed = changed || snapshots.borrow().is_none();
    let recovered = status.borrow().error.is_some();
    if changed || recovered {
        for warning in &warnings {
            tracing::warn!(%warning, "manifests");
        }
        tracing::info!(dir = %dir.display(), services, slices, nodes, "manifests loaded");
    }
    status.send_modify(|s| {
        s.generation += u64::from(changed);
        s.error = None;
        s.warnings = warnings;
    });
    if changed {
        snapshots.send_replace(Some(snapshot));
    }
}

fn reject(dir: &Path, errors: &ManifestErrors, status: &watch::Sender<SourceStatus>) {
    let error = errors.to_string();
    // Polling re-reads the same broken file every few seconds: say it once.
    if status.borrow().error.as_ref() != Some(&error) {
        tracing::error!(dir = %dir.display(), %error, "manifests rejected; keeping the last good snapshot");
    }
    status.send_modify(|s| s.error = Some(error));
}
