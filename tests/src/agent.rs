//! The real agent binary, run inside a lab namespace.

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use crate::{
    netlab::{NetLab, Netns},
    process::{Daemon, wait_for},
};

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

/// A node namespace with `eth0` (its peer in a `client` namespace) and a manifests directory
/// holding the ready Node `node-a`: what [`run_on_manifests`] needs, no cluster.
pub fn manifests_node(lab: &mut NetLab) -> (Netns, PathBuf) {
    let client = lab.netns("client");
    let node = lab.netns("node");
    lab.veth((&client, "eth0"), (&node, "eth0"));
    let manifests = lab.path("manifests");
    std::fs::create_dir(&manifests).expect("creating the manifests directory");
    std::fs::write(manifests.join("node.yaml"), ready_node_manifest("node-a"))
        .expect("writing the Node manifest");
    (node, manifests)
}

/// Runs the agent in `node` as node `node-a` on `eth0`, from `manifests`, with its pins
/// under `bpffs`; returns it once it logs "agent running", with its log so far.
pub fn run_on_manifests(
    node: &Netns,
    manifests: &Path,
    bpffs: &BpffsDir,
    log: &Path,
) -> (Daemon, String) {
    let manifests = manifests.to_str().expect("UTF-8 path");
    let args = [
        "run",
        "--manifests",
        manifests,
        "--node-name",
        "node-a",
        "--interface",
        "eth0",
        "--bpffs-dir",
        bpffs.as_str(),
    ];
    let mut agent = spawn(node, &args, log);
    let text = wait_for("the agent to run", Duration::from_secs(20), || {
        agent.assert_running();
        std::fs::read_to_string(agent.log_path())
            .ok()
            .filter(|log| log.contains("agent running"))
    });
    (agent, text)
}
