//! `--manifests DIR`: Services, EndpointSlices and Nodes from a directory of Kubernetes YAML.
//!
//! Every `*.yaml`/`*.yml` file directly in the directory (not hidden, symlinks followed, as in
//! a mounted ConfigMap) is read in name order; a file may hold several documents (`---`) and
//! `kind: List`s. The fields the model uses are validated the way the API server would, and a
//! problem anywhere rejects the whole load: the caller keeps its last good snapshot. Other
//! kinds and unknown fields are warnings.

mod validate;
mod watch;

#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    error::Error as _,
    fmt, io,
    path::{Path, PathBuf},
    sync::Arc,
};

use k8s_openapi::{
    Metadata,
    api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::{Deserialize, de::DeserializeOwned};
use serde_yaml_ng::Value;

pub use self::watch::{DEBOUNCE, ManifestSource, POLL_INTERVAL, spawn, spawn_manifest_source};
use crate::snapshot::{ObjectKey, Snapshot};

/// Where in the manifests a document is: file, 1-based document number, and the item of a
/// `kind: List`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    pub document: usize,
    pub item: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.path.display(), self.document)?;
        if let Some(item) = self.item {
            write!(f, ", items[{item}]")?;
        }
        Ok(())
    }
}

/// One problem that rejects a load.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// YAML syntax, or a value of the wrong type; `message` names the field when it can.
    #[error("{at}: {message}")]
    Yaml { at: Location, message: String },
    /// A value the API server would reject; `object` is e.g. `Service default/web`.
    #[error("{at}: {object}: {field}: {message}")]
    Invalid {
        at: Location,
        object: String,
        field: String,
        message: String,
    },
    #[error("{at}: {object} is already defined at {first}")]
    Duplicate {
        at: Location,
        object: String,
        first: Location,
    },
}

/// Every problem of a rejected load, in file order; displayed on one line.
#[derive(Debug)]
pub struct ManifestErrors(pub Vec<ManifestError>);

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
            let mut cause = error.source();
            while let Some(inner) = cause {
                write!(f, ": {inner}")?;
                cause = inner.source();
            }
        }
        Ok(())
    }
}

impl std::error::Error for ManifestErrors {}

/// A good load: the snapshot and the remarks about it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Loaded {
    pub snapshot: Snapshot,
    /// Ignored kinds, unknown fields, slices tied to no Service; each names its location.
    pub warnings: Vec<String>,
}

/// Reads every manifest file in `dir` into one snapshot, or says everything that is wrong.
pub fn load_dir(dir: &Path) -> Result<Loaded, ManifestErrors> {
    let files = manifest_files(dir).map_err(|source| {
        ManifestErrors(vec![ManifestError::Io {
            path: dir.to_owned(),
            source,
        }])
    })?;
    let mut collector = Collector::default();
    for path in files {
        match std::fs::read_to_string(&path) {
            Ok(text) => collector.file(&path, &text),
            // Removed between listing and reading (an editor's rename dance): as if never listed.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => collector.errors.push(ManifestError::Io { path, source }),
        }
    }
    collector.finish()
}

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
    /// The last good merge of every file's objects: the next load patches it with the files
    /// that changed instead of merging (sorting) every object again.
    merged: Option<Snapshot>,
}

/// One file's objects, remarks and problems, as a [`Collector`] of its own found them.
struct FileLoad {
    snapshot: Snapshot,
    warnings: Vec<String>,
    failed: bool,
}

/// [`load_dir`], parsing only the files whose [`Stamp`] changed since the last call with the
/// same `cache`. The result is the same as [`load_dir`]'s: any problem (a bad file, an object
/// defined in two files) falls back to [`load_dir`] itself for the exact error list.
pub fn load_dir_cached(dir: &Path, cache: &mut DirCache) -> Result<Loaded, ManifestErrors> {
    let merged = cache.merged.take();
    let Ok(files) = manifest_files(dir) else {
        cache.files.clear();
        return load_dir(dir);
    };
    let previous: HashMap<PathBuf, Arc<FileLoad>> = match merged {
        Some(_) => cache
            .files
            .iter()
            .map(|(path, (_, load))| (path.clone(), Arc::clone(load)))
            .collect(),
        None => HashMap::new(),
    };
    let mut fresh = HashMap::with_capacity(files.len());
    let mut loads = Vec::with_capacity(files.len());
    for path in files {
        let Ok(stamp) = Stamp::of(&path) else {
            // Gone between listing and reading, or unreadable: let the plain path decide.
            continue;
        };
        let load = match cache.files.remove(&path) {
            Some((old, load)) if old.still(&stamp) => load,
            _ => match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let mut collector = Collector::default();
                    collector.file(&path, &text);
                    Arc::new(FileLoad {
                        failed: !collector.errors.is_empty(),
                        snapshot: collector.snapshot,
                        warnings: collector.warnings,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(_) => {
                    cache.files.clear();
                    return load_dir(dir);
                }
            },
        };
        loads.push(load.clone());
        fresh.insert(path, (stamp, load));
    }
    let mut loaded = Loaded::default();
    for load in &loads {
        if load.failed {
            cache.files = fresh;
            return load_dir(dir);
        }
        loaded.warnings.extend(load.warnings.iter().cloned());
    }
    let snapshot = match merged {
        Some(merged) => patch(merged, &previous, &fresh),
        None => merge(&loads),
    };
    cache.files = fresh;
    // None: an object defined in two files; the plain load names both places.
    let Some(snapshot) = snapshot else {
        return load_dir(dir);
    };
    cache.merged = Some(snapshot.clone());
    loaded.snapshot = snapshot;
    Ok(loaded)
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
    };
    // Each file's objects are unique (its collector checked); fewer after the merge means an
    // object defined in two files.
    let merged = snapshot.services.len() + snapshot.endpoint_slices.len() + snapshot.nodes.len();
    (merged == objects).then_some(snapshot)
}

/// `merged` (the merge of the `previous` files) turned into the merge of the `fresh` ones by
/// taking out the objects of files that changed or went and putting in those of files that
/// changed or came: the cost of the changed files, not of the directory. `None` when an
/// object put in is already there (defined in two files).
fn patch(
    mut merged: Snapshot,
    previous: &HashMap<PathBuf, Arc<FileLoad>>,
    fresh: &HashMap<PathBuf, (Stamp, Arc<FileLoad>)>,
) -> Option<Snapshot> {
    let unchanged = |path: &PathBuf, load: &Arc<FileLoad>| {
        fresh
            .get(path)
            .is_some_and(|(_, now)| Arc::ptr_eq(now, load))
    };
    for (path, old) in previous {
        if unchanged(path, old) {
            continue;
        }
        let old = &old.snapshot;
        for key in old.services.keys() {
            merged.services.remove(key);
        }
        for key in old.endpoint_slices.keys() {
            merged.endpoint_slices.remove(key);
        }
        for key in old.nodes.keys() {
            merged.nodes.remove(key);
        }
    }
    for (path, (_, new)) in fresh {
        if previous.get(path).is_some_and(|old| Arc::ptr_eq(old, new)) {
            continue;
        }
        let new = &new.snapshot;
        for (key, object) in &new.services {
            if merged
                .services
                .insert(key.clone(), Arc::clone(object))
                .is_some()
            {
                return None;
            }
        }
        for (key, object) in &new.endpoint_slices {
            if merged
                .endpoint_slices
                .insert(key.clone(), Arc::clone(object))
                .is_some()
            {
                return None;
            }
        }
        for (key, object) in &new.nodes {
            if merged
                .nodes
                .insert(key.clone(), Arc::clone(object))
                .is_some()
            {
                return None;
            }
        }
    }
    Some(merged)
}

fn pairs<K: Clone, V>(map: &std::collections::BTreeMap<K, Arc<V>>) -> Vec<(K, Arc<V>)> {
    map.iter()
        .map(|(k, v)| (k.clone(), Arc::clone(v)))
        .collect()
}

/// Parses the text of one file (named `path` in messages) into a snapshot of its own.
pub fn load_str(path: &Path, text: &str) -> Result<Loaded, ManifestErrors> {
    let mut collector = Collector::default();
    collector.file(path, text);
    collector.finish()
}

/// The manifest files of `dir`, sorted: `*.yaml`/`*.yml` regular files (after following
/// symlinks) whose names do not start with `.` (editor swap and lock files, ConfigMap
/// `..data` links).
pub fn manifest_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if is_manifest_name(name) && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// `*.yaml`/`*.yml`, not hidden.
pub fn is_manifest_name(name: &str) -> bool {
    let yaml = Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
    yaml && !name.starts_with('.')
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    fn api_version(self) -> &'static str {
        match self {
            Self::Service | Self::Node => "v1",
            Self::EndpointSlice => "discovery.k8s.io/v1",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::Node => "Node",
        }
    }
}

/// Accumulates one load.
#[derive(Default)]
struct Collector {
    snapshot: Snapshot,
    warnings: Vec<String>,
    errors: Vec<ManifestError>,
    seen: HashMap<(Kind, String), Location>,
}

impl Collector {
    fn file(&mut self, path: &Path, text: &str) {
        for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let at = Location {
                path: path.to_owned(),
                document: i + 1,
                item: None,
            };
            match Value::deserialize(document) {
                // An empty document (`---` at the start or end) is nothing.
                Ok(Value::Null) => {}
                Ok(value) => self.document(at, value),
                Err(e) => {
                    // The rest of a file with a syntax error cannot be trusted: stop here.
                    self.errors.push(ManifestError::Yaml {
                        at,
                        message: e.to_string(),
                    });
                    return;
                }
            }
        }
    }

    fn document(&mut self, at: Location, value: Value) {
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
        let (api_version, kind) = (text("apiVersion"), text("kind"));
        let kind = match kind.as_deref() {
            Some("Service") => Kind::Service,
            Some("EndpointSlice") => Kind::EndpointSlice,
            Some("Node") => Kind::Node,
            Some("List") if api_version.as_deref() == Some("v1") => {
                return self.list(at, value);
            }
            Some(other) => {
                let api = api_version.unwrap_or_default();
                self.warnings.push(format!(
                    "{at}: kind {other} ({api}) ignored: only Service, EndpointSlice and Node are read"
                ));
                return;
            }
            None => return self.invalid(at, "object".into(), "kind", "Required value".into()),
        };
        if api_version.as_deref() != Some(kind.api_version()) {
            let message = format!(
                "Unsupported value {:?}: must be {:?} for {}",
                api_version.unwrap_or_default(),
                kind.api_version(),
                kind.name()
            );
            return self.invalid(at, kind.name().into(), "apiVersion", message);
        }
        match kind {
            Kind::Service => self.object(at, kind, value, validate::service, |s, o: Service| {
                s.insert_service(o);
            }),
            Kind::EndpointSlice => self.object(
                at,
                kind,
                value,
                validate::endpoint_slice,
                |s, o: EndpointSlice| {
                    s.insert_endpoint_slice(o);
                },
            ),
            Kind::Node => self.object(at, kind, value, validate::node, |s, o: Node| {
                s.insert_node(o);
            }),
        }
    }

    fn list(&mut self, at: Location, value: Value) {
        let Value::Mapping(mut map) = value else {
            return;
        };
        let items = match map.remove("items") {
            Some(Value::Sequence(items)) => items,
            None | Some(Value::Null) => Vec::new(),
            Some(_) => {
                let message = "Invalid type: must be a list".into();
                return self.invalid(at, "List".into(), "items", message);
            }
        };
        for (i, item) in items.into_iter().enumerate() {
            let at = Location {
                item: Some(i),
                ..at.clone()
            };
            self.document(at, item);
        }
    }

    /// Decodes, validates, checks for a duplicate, and stores one object.
    fn object<T: DeserializeOwned + Metadata<Ty = ObjectMeta>>(
        &mut self,
        at: Location,
        kind: Kind,
        value: Value,
        validate: fn(&T) -> Vec<validate::Problem>,
        store: impl FnOnce(&mut Snapshot, T),
    ) {
        let mut unknown = Vec::new();
        let object: T = match decode(value, &mut unknown) {
            Ok(object) => object,
            Err(message) => {
                self.errors.push(ManifestError::Yaml { at, message });
                return;
            }
        };
        let meta = object.metadata();
        let name = match kind {
            Kind::Node => meta.name.clone().unwrap_or_default(),
            _ => ObjectKey::of(meta)
                .map(|k| k.to_string())
                .unwrap_or_default(),
        };
        let described = format!("{} {}", kind.name(), name).trim_end().to_owned();
        for field in unknown {
            self.warnings
                .push(format!("{at}: {described}: unknown field {field} ignored"));
        }
        let problems = validate(&object);
        if !problems.is_empty() {
            for problem in problems {
                self.invalid(
                    at.clone(),
                    described.clone(),
                    &problem.field,
                    problem.message,
                );
            }
            return;
        }
        if kind == Kind::EndpointSlice && !validate::has_service_label(meta) {
            self.warnings.push(format!(
                "{at}: {described}: no label kubernetes.io/service-name: belongs to no Service"
            ));
        }
        if let Some(first) = self.seen.get(&(kind, name.clone())) {
            self.errors.push(ManifestError::Duplicate {
                at,
                object: described,
                first: first.clone(),
            });
            return;
        }
        self.seen.insert((kind, name), at);
        store(&mut self.snapshot, object);
    }

    fn invalid(&mut self, at: Location, object: String, field: &str, message: String) {
        self.errors.push(ManifestError::Invalid {
            at,
            object,
            field: field.to_owned(),
            message,
        });
    }

    fn finish(self) -> Result<Loaded, ManifestErrors> {
        if self.errors.is_empty() {
            Ok(Loaded {
                snapshot: self.snapshot,
                warnings: self.warnings,
            })
        } else {
            Err(ManifestErrors(self.errors))
        }
    }
}

/// Deserializes `value`, naming the failing field (`spec.ports[0].port: invalid type ...`)
/// and collecting the paths of fields the type does not know.
fn decode<T: DeserializeOwned>(value: Value, unknown: &mut Vec<String>) -> Result<T, String> {
    let mut record = |path: serde_ignored::Path<'_>| unknown.push(field_path(&path));
    let ignored = serde_ignored::Deserializer::new(value, &mut record);
    serde_path_to_error::deserialize(ignored).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}

/// `spec.ports[0].name`, without serde_ignored's `?` for every `Option` on the way.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => match field_path(parent) {
            parent if parent.is_empty() => key.clone(),
            parent => format!("{parent}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}
