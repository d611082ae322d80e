//! Where snapshots come from: the cluster (kube-rs reflectors) or a directory of manifests
//! (`--manifests DIR`). Every source delivers whole [`Snapshot`](crate::snapshot::Snapshot)s
//! over a `tokio::sync::watch` channel, never a partial one, plus a [`SourceStatus`].

pub mod kube;
pub mod manifests;

pub use self::manifests::{ManifestSource, spawn_manifest_source};

/// How a source's newest input went; the admin endpoint's `/readyz` and `status` read it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceStatus {
    /// Snapshots published so far, the first one included.
    pub generation: u64,
    /// Why the newest input was rejected; the last good snapshot stays in force meanwhile.
    pub error: Option<String>,
    /// Remarks about the last accepted input (ignored kinds, unknown fields).
    pub warnings: Vec<String>,
}
