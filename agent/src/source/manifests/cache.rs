//! Re-reads that parse only the files that changed ([`DirCache`]): with thousands of
//! Services, parsing and merging every object is what a re-read costs.

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{Collector, Loaded, ManifestErrors, load_dir, manifest_files};
use crate::snapshot::{Draft, Publisher, Snapshot, Tracked};

/// What a file looked like when it was parsed: any write, rename over it or replacement
/// changes one of these (ctime moves on every write). File timestamps are coarse (a kernel
/// tick), so two same-size writes within one tick look alike: a stamp counts only once it is
/// older than the filesystem's timestamp step (git's "racy clean" rule); younger files are
/// parsed again. A write after that gets a later ctime, so a stamp that counts cannot hide one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// See [`Stamp`]: a filesystem with sub-second timestamps (ext4, xfs, tmpfs: a ctime with
/// nanoseconds) steps them by a kernel tick (1-10 ms), so a few ticks do; one with whole
/// seconds may step by two (FAT). With 2 s for everything, every re-read in the 2 s after a
/// large write parsed the written files again (~100 ms for 1,000 Services).
const RACY_FINE: std::time::Duration = std::time::Duration::from_millis(100);
const RACY: std::time::Duration = std::time::Duration::from_secs(2);

impl Stamp {
    /// Whether the file has not changed since `self` was taken, as far as stamps can tell.
    fn still(&self, now: &Self) -> bool {
        self == now && self.settled(std::time::SystemTime::now())
    }

    /// Whether the stamp is old enough at `now` to count (see [`Stamp`]).
    fn settled(&self, now: std::time::SystemTime) -> bool {
        let (secs, nanos) = self.ctime;
        let racy = if nanos != 0 { RACY_FINE } else { RACY };
        let Ok(secs) = u64::try_from(secs) else {
            return false;
        };
        let ctime = std::time::Duration::new(secs, nanos.clamp(0, 999_999_999) as u32);
        now.duration_since(std::time::UNIX_EPOCH)
            .is_ok_and(|t| t > ctime + racy)
    }

    fn of(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// Parsed files of a directory, so a re-read parses only the files that changed: with
/// thousands of Services, parsing is what a re-read costs, and unchanged objects keep their
/// `Arc`s (the model then sees them as unchanged).
#[derive(Default)]
pub struct DirCache {
    files: HashMap<PathBuf, (Stamp, Arc<FileLoad>)>,
    /// Whether the publisher's current snapshot is the merge of `files`: then the next load
    /// patches it with the files that changed instead of merging (sorting) every object again.
    /// False at the start and after a rejected load (`files` holds the rejected files then).
    merged: bool,
    publisher: Publisher,
}

/// One file's objects, remarks and problems, as a [`Collector`] of its own found them.
struct FileLoad {
    snapshot: Snapshot,
    warnings: Vec<String>,
    failed: bool,
}

/// A good re-read.
pub struct Reloaded {
    /// The directory's content: a new snapshot when it changed, else the last one.
    pub snapshot: Arc<Snapshot>,
    pub changed: bool,
    pub warnings: Vec<String>,
}

/// [`load_dir`], parsing only the files whose [`Stamp`] changed since the last call with the
/// same `cache`. The result is the same as [`load_dir`]'s: any problem (a bad file, an object
/// defined in two files) falls back to [`load_dir`] itself for the exact error list.
pub fn load_dir_cached(dir: &Path, cache: &mut DirCache) -> Result<Loaded, ManifestErrors> {
    cache.reload(dir).map(|r| Loaded {
        snapshot: (*r.snapshot).clone(),
        warnings: r.warnings,
    })
}

impl DirCache {
    /// [`load_dir_cached`] without the copy: a changed directory costs the objects of the
    /// files that changed, published as a new snapshot of the cache's [`Publisher`].
    pub fn reload(&mut self, dir: &Path) -> Result<Reloaded, ManifestErrors> {
        match self.read(dir) {
            Ok(warnings) => {
                let published = self.publisher.commit();
                Ok(Reloaded {
                    changed: published.is_some(),
                    snapshot: self.publisher.current().clone(),
                    warnings,
                })
            }
            Err(errors) => {
                self.merged = false;
                self.publisher.discard();
                Err(errors)
            }
        }
    }

    /// Brings the publisher's draft to the directory's content; its warnings.
    fn read(&mut self, dir: &Path) -> Result<Vec<String>, ManifestErrors> {
        let Ok(files) = manifest_files(dir) else {
            self.files.clear();
            return self.plain(dir);
        };
        let mut fresh = HashMap::with_capacity(files.len());
        let mut loads = Vec::with_capacity(files.len());
        // What the last merge must lose and gain: the old and new loads of files parsed again.
        let (mut gone, mut came) = (Vec::new(), Vec::new());
        for path in files {
            let Ok(stamp) = Stamp::of(&path) else {
                // Gone between listing and reading, or unreadable: let the plain path decide.
                continue;
            };
            let old = match self.files.remove(&path) {
                Some((old, load)) if old.still(&stamp) => {
                    loads.push(load.clone());
                    fresh.insert(path, (stamp, load));
                    continue;
                }
                old => old.map(|(_, load)| load),
            };
            let load = match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let mut collector = Collector::default();
                    collector.file(&path, &text);
                    Arc::new(FileLoad {
                        failed: !collector.errors.is_empty(),
                        snapshot: collector.snapshot,
                        warnings: collector.warnings,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    gone.extend(old);
                    continue;
                }
                Err(_) => {
                    self.files.clear();
                    return self.plain(dir);
                }
            };
            gone.extend(old);
            came.push(load.clone());
            loads.push(load.clone());
            fresh.insert(path, (stamp, load));
        }
        // Files no longer listed.
        gone.extend(self.files.drain().map(|(_, (_, load))| load));
        self.files = fresh;
        let mut warnings = Vec::new();
        for load in &loads {
            if load.failed {
                return self.plain(dir);
            }
            warnings.extend(load.warnings.iter().cloned());
        }
        let draft = self.publisher.draft();
        let merged = if self.merged {
            patch(draft, &gone, &came)
        } else {
            merge(&loads)
                .map(|snapshot| draft.replace(snapshot))
                .is_some()
        };
        // False: an object defined in two files; the plain load names both places.
        if !merged {
            return self.plain(dir);
        }
        self.merged = true;
        Ok(warnings)
    }

    /// The plain [`load_dir`], into the draft when good; the cached files are not its merge.
    fn plain(&mut self, dir: &Path) -> Result<Vec<String>, ManifestErrors> {
        self.merged = false;
        let loaded = load_dir(dir)?;
        self.publisher.draft().replace(loaded.snapshot);
        Ok(loaded.warnings)
    }
}

/// Every file's objects in one snapshot; `None` when two files define the same object.
fn merge(loads: &[Arc<FileLoad>]) -> Option<Snapshot> {
    let (mut services, mut slices, mut nodes) = (Vec::new(), Vec::new(), Vec::new());
    for load in loads {
        services.extend(pairs(&load.snapshot.services));
        slices.extend(pairs(&load.snapshot.endpoint_slices));
        nodes.extend(pairs(&load.snapshot.nodes));
    }
    // Collected, not inserted one by one: `BTreeMap::from_iter` sorts once and builds the
    // tree in bulk, several times faster than 20,000 inserts in file order.
    let objects = services.len() + slices.len() + nodes.len();
    let snapshot = Snapshot {
        services: services.into_iter().collect(),
        endpoint_slices: slices.into_iter().collect(),
        nodes: nodes.into_iter().collect(),
        ..Snapshot::default()
    };
    // Each file's objects are unique (its collector checked); fewer after the merge means an
    // object defined in two files.
    let merged = snapshot.services.len() + snapshot.endpoint_slices.len() + snapshot.nodes.len();
    (merged == objects).then_some(snapshot)
}

/// The draft (the last good merge) without the objects of the `gone` loads and with those of
/// the `came` ones: the cost of the files that changed, not of the directory. False when an
/// object put in is already there (defined in two files).
fn patch(draft: &mut Draft, gone: &[Arc<FileLoad>], came: &[Arc<FileLoad>]) -> bool {
    for old in gone {
        let old = &old.snapshot;
        for key in old.services.keys() {
            draft.services().remove(key);
        }
        for key in old.endpoint_slices.keys() {
            draft.endpoint_slices().remove(key);
        }
        for key in old.nodes.keys() {
            draft.nodes().remove(key);
        }
    }
    came.iter().all(|new| {
        let new = &new.snapshot;
        put(draft.services(), &new.services)
            && put(draft.endpoint_slices(), &new.endpoint_slices)
            && put(draft.nodes(), &new.nodes)
    })
}

/// Inserts every entry of `from`; false when one was already there.
fn put<K: Ord + Clone, V>(
    mut into: Tracked<'_, K, V>,
    from: &std::collections::BTreeMap<K, Arc<V>>,
) -> bool {
    from.iter()
        .all(|(key, object)| into.insert(key.clone(), Arc::clone(object)).is_none())
}

fn pairs<K: Clone, V>(map: &std::collections::BTreeMap<K, Arc<V>>) -> Vec<(K, Arc<V>)> {
    map.iter()
        .map(|(k, v)| (k.clone(), Arc::clone(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Stamp;

    #[test]
    fn a_stamp_counts_after_its_filesystems_timestamp_step() {
        let at = |secs: i64, nanos: i64| Stamp {
            dev: 1,
            ino: 2,
            len: 3,
            mtime: (secs, nanos),
            ctime: (secs, nanos),
        };
        let epoch = |secs: u64, millis: u64| {
            std::time::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
        };
        // Sub-second timestamps: a few kernel ticks are enough.
        let fine = at(1_000, 500_000_000);
        assert!(!fine.settled(epoch(1_000, 550)));
        assert!(fine.settled(epoch(1_000, 650)));
        // Whole seconds (FAT-like): two seconds.
        let coarse = at(1_000, 0);
        assert!(!coarse.settled(epoch(1_001, 900)));
        assert!(coarse.settled(epoch(1_002, 100)));
        // A ctime before the epoch never counts.
        assert!(!at(-5, 1).settled(epoch(1_000, 0)));
    }
}
