//! Finding the external programs the tests drive. A missing one is a failure that names it and
//! says how to get it, never a skip.

use std::path::PathBuf;

/// Where `cargo xtask setup` links the tools it builds (etcd, etcdctl, kube-apiserver, helm).
/// `cargo xtask test` exports `VIPWIRE_TOOLS_DIR`; plain `cargo test` falls back to the same
/// default the setup uses.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VIPWIRE_TOOLS_DIR") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("VIPWIRE_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("vipwire")))
        .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/vipwire")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache/vipwire"));
    cache.join("bin")
}

/// Extra places Debian installs daemons that are not on PATH.
const SBIN_DIRS: &[&str] = &["/usr/lib/frr", "/usr/sbin", "/sbin"];

/// The path of `name`: the tools dir first, then PATH, then the daemon dirs.
///
/// # Panics
/// When the program is nowhere: the message names it and the command that installs it.
pub fn require(name: &str) -> PathBuf {
    let in_tools = tools_dir().join(name);
    if in_tools.is_file() {
        return in_tools;
    }
    if let Some(path) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
    {
        return path;
    }
    panic!(
        "prerequisite `{name}` not found (looked in {} , PATH and {SBIN_DIRS:?}): run `cargo xtask setup`",
        tools_dir().display()
    );
}

/// Fails the test unless it runs as root (BPF, namespaces and BGP's port 179 need it).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (BPF, network namespaces): run it through `sudo -E cargo xtask test`"
    );
}
