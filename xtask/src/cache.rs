//! Where setup keeps what it builds or downloads: outside the repository, keyed by version, so a
//! second `cargo xtask setup` (or a fresh clone) reuses it.

use std::path::PathBuf;

use anyhow::{Context as _, bail};

/// `$VIPWIRE_CACHE_DIR`, else `$XDG_CACHE_HOME/vipwire`, else `~/.cache/vipwire`.
pub fn root() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("VIPWIRE_CACHE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("vipwire"));
    }
    let Some(home) = std::env::var_os("HOME") else {
        bail!(
            "neither VIPWIRE_CACHE_DIR, XDG_CACHE_HOME nor HOME is set: no place for the tool cache"
        );
    };
    Ok(PathBuf::from(home).join(".cache/vipwire"))
}

/// The directory of links to the tools the tests use (etcd, etcdctl, kube-apiserver, helm);
/// tests find it through `VIPWIRE_TOOLS_DIR`.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    Ok(root()?.join("bin"))
}

/// A versioned directory under the cache root, created if missing.
pub fn versioned(name: &str, version: &str) -> anyhow::Result<PathBuf> {
    let dir = root()?.join(format!("{name}-{version}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
