//! Every pin path in one place, and the bpffs they live on.
//!
//! Layout under `--bpffs-dir` (default /sys/fs/bpf/vipwire):
//! - `<map name>`: each contract map (`vipwire_*_v<N>`), reused by the next agent;
//! - `links/xdp_<ifname>`: the XDP link of each interface, so the program stays attached
//!   while the agent restarts;
//! - `links/tc_deliver_<ifname>`: the TCX ingress link of the delivery program on each
//!   interface;
//! - `links/tc_reply_if<ifindex>`: the TCX ingress link of the reply program on the host side
//!   of each local backend's device (named by index: pod veth names are reused, indexes are
//!   not, and a pod's veth may be renamed).

use std::{
    io,
    path::{Path, PathBuf},
};

/// Where pinned objects live unless `--bpffs-dir` says otherwise.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/vipwire";

/// File name prefixes under `links/` (see the module docs).
pub const XDP_PREFIX: &str = "xdp_";
pub const TC_DELIVER_PREFIX: &str = "tc_deliver_";
pub const TC_REPLY_PREFIX: &str = "tc_reply_if";

/// `statfs(2)` magic of the BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Clone, Debug)]
pub struct PinPaths {
    dir: PathBuf,
}

impl PinPaths {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.dir.join("links")
    }

    pub fn xdp_link(&self, ifname: &str) -> PathBuf {
        self.links_dir().join(format!("{XDP_PREFIX}{ifname}"))
    }

    pub fn tc_deliver_link(&self, ifname: &str) -> PathBuf {
        self.links_dir()
            .join(format!("{TC_DELIVER_PREFIX}{ifname}"))
    }

    pub fn tc_reply_link(&self, ifindex: u32) -> PathBuf {
        self.links_dir().join(format!("{TC_REPLY_PREFIX}{ifindex}"))
    }

    /// Makes sure the directory exists on a bpffs: when no ancestor is one, mounts a bpffs
    /// where [`bpffs_mount_point`] says (bpffs is not mounted at boot on every distribution,
    /// and `ip netns exec` hides the host's).
    pub fn ensure(&self) -> io::Result<()> {
        if !on_bpffs(&self.dir)? {
            let mount_point = bpffs_mount_point(&self.dir);
            std::fs::create_dir_all(mount_point)?;
            mount_bpffs(mount_point)?;
            tracing::info!(dir = %mount_point.display(), "mounted bpffs");
        }
        std::fs::create_dir_all(self.links_dir())
    }
}

/// Where bpffs is mounted by convention.
const SYS_FS_BPF: &str = "/sys/fs/bpf";

/// Where to mount a bpffs for `dir`: /sys/fs/bpf itself when `dir` lies under it (that is
/// where everyone expects it, and sysfs refuses to create `dir` before the mount), else `dir`.
fn bpffs_mount_point(dir: &Path) -> &Path {
    if dir.starts_with(SYS_FS_BPF) {
        Path::new(SYS_FS_BPF)
    } else {
        dir
    }
}

/// Whether `path` (or, if it does not exist yet, its nearest existing ancestor) is on bpffs.
fn on_bpffs(path: &Path) -> io::Result<bool> {
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or_else(|| Path::new("/"));
    let stat = nix::sys::statfs::statfs(existing).map_err(io::Error::from)?;
    Ok(stat.filesystem_type().0 as i64 == BPF_FS_MAGIC)
}

fn mount_bpffs(dir: &Path) -> io::Result<()> {
    nix::mount::mount(
        Some("bpf"),
        dir,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpffs_is_mounted_on_sys_fs_bpf_for_a_directory_under_it() {
        assert_eq!(
            bpffs_mount_point(Path::new(DEFAULT_BPFFS_DIR)),
            Path::new("/sys/fs/bpf")
        );
        assert_eq!(
            bpffs_mount_point(Path::new("/sys/fs/bpf/a/b")),
            Path::new("/sys/fs/bpf")
        );
        // Not a path prefix: /sys/fs/bpfx is not under /sys/fs/bpf.
        assert_eq!(
            bpffs_mount_point(Path::new("/sys/fs/bpfx/vipwire")),
            Path::new("/sys/fs/bpfx/vipwire")
        );
        assert_eq!(
            bpffs_mount_point(Path::new("/run/vipwire/bpf")),
            Path::new("/run/vipwire/bpf")
        );
    }

    #[test]
    fn pin_paths_follow_the_documented_layout() {
        let paths = PinPaths::new("/sys/fs/bpf/vipwire");
        assert_eq!(
            paths.map("vipwire_counters_v1"),
            Path::new("/sys/fs/bpf/vipwire/vipwire_counters_v1")
        );
        assert_eq!(
            paths.xdp_link("eth0"),
            Path::new("/sys/fs/bpf/vipwire/links/xdp_eth0")
        );
        assert_eq!(
            paths.tc_deliver_link("eth0"),
            Path::new("/sys/fs/bpf/vipwire/links/tc_deliver_eth0")
        );
        assert_eq!(
            paths.tc_reply_link(17),
            Path::new("/sys/fs/bpf/vipwire/links/tc_reply_if17")
        );
    }
}
