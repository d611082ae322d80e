//! `--manifests DIR`: Services, EndpointSlices and Nodes from a directory of Kubernetes YAML.
//!
//! Every `*.yaml`/`*.yml` file directly in the directory (not hidden, symlinks followed, as in
//! a mounted ConfigMap) is read in name order; a file may hold several documents (`---`) and
//! `kind: List`s. The fields the model uses are validated the way the API server would, and a
//! problem anywhere rejects the whole load: the caller keeps its last good snapshot. Other
//! kinds and unknown fields are warnings.

mod cache;
mod validate;
mod watch;

#[cfg(test)]
mod reread_tests;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    error::Error as _,
    fmt, io,
    path::{Path, PathBuf},
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

pub use self::{
    cache::{DirCache, Reloaded, load_dir_cached},
    watch::{DEBOUNCE, ManifestSource, POLL_INTERVAL, spawn, spawn_manifest_source},
};
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
