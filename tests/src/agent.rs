//! The real agent binary, run inside a lab namespace.

use std::{
    path::{Path, PathBuf},
    process::Output,
};

use crate::{netlab::Netns, process::Daemon};

/// The `vipwire` binary of this build (`target/<profile>/vipwire`, beside the test binaries'
/// `deps/` directory). `cargo xtask test` builds it first.
///
/// # Panics
/// When it has not been built, naming the command that builds it.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    let binary = profile_dir.join("vipwire");
    assert!(
        binary.is_file(),
        "prerequisite {} not found: run `cargo build -p vipwire` (cargo xtask test does)",
        binary.display()
    );
    binary
}

/// Starts `vipwire <args>` in `ns` (network namespace only, see [`Netns::enter`]).
pub fn spawn(ns: &Netns, args: &[&str], log: &Path) -> Daemon {
    let mut command = ns.enter(binary());
    command.args(args).env("RUST_LOG", "info");
    Daemon::spawn(&format!("vipwire in {}", ns.name()), command, log)
}

/// Runs `vipwire <args>` in `ns` to completion.
pub fn run(ns: &Netns, args: &[&str]) -> Output {
    ns.enter(binary())
        .args(args)
        .output()
        .expect("running vipwire")
}

/// A Node manifest for `name`, Ready: what makes the agent's node eligible in manifests mode.
pub fn ready_node_manifest(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nstatus:\n  conditions:\n  - type: Ready\n    status: \"True\"\n"
    )
}

/// A loopback address:port free right now, for the agent's `--admin` (it binds it a moment
/// later).
pub fn free_loopback_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// A bpffs directory unique to this test, under the host's bpffs (mounted if missing).
pub struct BpffsDir {
    path: PathBuf,
}

impl BpffsDir {
    pub fn new(name: &str) -> Self {
        let root = Path::new("/sys/fs/bpf");
        let mounted = std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "));
        if !mounted {
            let status = std::process::Command::new("mount")
                .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
                .status()
                .expect("running mount");
            assert!(status.success(), "mounting bpffs on /sys/fs/bpf failed");
        }
        let path = root.join(format!("vwt{}-{name}", std::process::id()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn as_str(&self) -> &str {
        self.path.to_str().expect("UTF-8 path")
    }
}

impl Drop for BpffsDir {
    fn drop(&mut self) {
        // Unpinning a link detaches it; removing a map pin frees the map once unused.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
