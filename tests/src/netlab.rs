//! Network namespace labs: uniquely named namespaces, veth pairs, addresses, routes and
//! processes inside them; everything is removed on drop, also after a panic.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::process::Daemon;

/// Every lab namespace starts with this, followed by the owning test process's PID, so a later
/// run can remove what a killed run left behind.
const PREFIX: &str = "vwt";

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// A set of namespaces owned by one test.
pub struct NetLab {
    id: String,
    namespaces: Vec<Netns>,
    dir: tempfile::TempDir,
}

/// A handle to one namespace of a [`NetLab`] (cheap to clone; the lab owns its lifetime).
#[derive(Clone, Debug)]
pub struct Netns {
    name: String,
}

impl NetLab {
    /// A new, empty lab. Also removes namespaces left by test processes that no longer exist.
    pub fn new() -> Self {
        crate::tools::require_root();
        sweep_stale();
        let id = format!(
            "{PREFIX}{}x{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("{id}-"))
            .tempdir()
            .expect("creating the lab's temp dir");
        Self {
            id,
            namespaces: Vec::new(),
            dir,
        }
    }

    /// A scratch directory for configs, logs and sockets; removed with the lab.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Creates a namespace whose name ends in `-<role>`, with `lo` up.
    pub fn netns(&mut self, role: &str) -> Netns {
        let ns = Netns {
            name: format!("{}-{role}", self.id),
        };
        run_ip(&["netns", "add", &ns.name]);
        self.namespaces.push(ns.clone());
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Creates a veth pair with one end in each namespace, both up.
    pub fn veth(&self, (ns_a, if_a): (&Netns, &str), (ns_b, if_b): (&Netns, &str)) {
        run_ip(&[
            "link", "add", if_a, "netns", &ns_a.name, "type", "veth", "peer", "name", if_b,
            "netns", &ns_b.name,
        ]);
        ns_a.ip(&["link", "set", if_a, "up"]);
        ns_b.ip(&["link", "set", if_b, "up"]);
    }

    /// A path inside the lab's scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Default for NetLab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for ns in self.namespaces.drain(..).rev() {
            delete_netns(&ns.name);
        }
    }
}

impl Netns {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`; panics with stderr on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_ip(&full)
    }

    /// Adds `cidr` (e.g. `10.0.0.1/24` or `fd00::1/64`) to `ifname`.
    pub fn addr(&self, ifname: &str, cidr: &str) {
        let mut args = vec!["addr", "add", cidr, "dev", ifname];
        if cidr.contains(':') {
            // No duplicate address detection: the address is usable at once.
            args.push("nodad");
        }
        self.ip(&args);
    }

    /// Sets a sysctl inside the namespace (e.g. `net.ipv4.conf.all.rp_filter`, `1`).
    pub fn sysctl(&self, key: &str, value: &str) {
        self.run_ok("sysctl", &["-qw", &format!("{key}={value}")]);
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// A command that runs `program` in the namespace's network namespace only, keeping the
    /// host's mount namespace: unlike `ip netns exec`, which remounts /sys, the host's bpffs
    /// (and pins made there) stay visible, so pins outlive the process that made them.
    pub fn enter(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        command
    }

    /// Runs `program args` inside the namespace and returns its output, whatever the status.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {program} in {}: {e}", self.name))
    }

    /// Runs `program args` inside the namespace; panics with its stderr unless it succeeds.
    pub fn run_ok(&self, program: &str, args: &[&str]) -> String {
        let output = self.exec(program, args);
        assert!(
            output.status.success(),
            "`{program} {}` in {} failed ({}): {}{}",
            args.join(" "),
            self.name,
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Starts a background process inside the namespace, logging to `log`.
    pub fn spawn(
        &self,
        name: &str,
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
        log: &Path,
    ) -> Daemon {
        let mut command = self.command(program);
        command.args(args);
        Daemon::spawn(&format!("{name} in {}", self.name), command, log)
    }

    /// Attaches a pass-all XDP program (xdp-tools' `xdp-filter`, native mode) to `ifname`: a
    /// veth that stands for a NIC's far end (a client, a ToR) needs one so XDP_TX / redirected
    /// frames from its peer are delivered (TOOLCHAIN.md). Never use it on a veth that stands for
    /// a pod. xdp-filter keeps a lock file in the shared /run, so parallel tests take turns.
    pub fn pass_all_xdp(&self, ifname: &str) {
        static XDP_FILTER: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _turn = XDP_FILTER
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        crate::tools::require("xdp-filter");
        self.run_ok(
            "sh",
            &[
                "-c",
                &format!("mount -t bpf bpf /sys/fs/bpf && xdp-filter load -m native {ifname}"),
            ],
        );
    }

    /// Whether `ping -c1` to `addr` succeeds within one second.
    pub fn ping(&self, addr: &str) -> bool {
        self.exec("ping", &["-c", "1", "-W", "1", addr])
            .status
            .success()
    }

    /// The interface's index inside the namespace.
    pub fn ifindex(&self, ifname: &str) -> u32 {
        let out = self.run_ok("cat", &[&format!("/sys/class/net/{ifname}/ifindex")]);
        out.trim()
            .parse()
            .unwrap_or_else(|e| panic!("ifindex of {ifname} in {}: {e}", self.name))
    }

    /// The interface's MAC address (six bytes).
    pub fn mac(&self, ifname: &str) -> [u8; 6] {
        let out = self.run_ok("cat", &[&format!("/sys/class/net/{ifname}/address")]);
        let mut mac = [0u8; 6];
        let parts: Vec<&str> = out.trim().split(':').collect();
        assert_eq!(parts.len(), 6, "MAC of {ifname}: {out}");
        for (byte, part) in mac.iter_mut().zip(parts) {
            *byte = u8::from_str_radix(part, 16).expect("hex MAC byte");
        }
        mac
    }
}

/// A veth pair in the ROOT network namespace, `<prefix><pid><tag>` and its peer `...p`, both
/// up; deleted on drop. For an agent that must run in the root namespace (to reach the test
/// apiserver on 127.0.0.1) without touching a real interface.
pub struct HostVeth {
    name: String,
}

impl HostVeth {
    pub fn new(prefix: &str, tag: &str) -> Self {
        let name = format!("{prefix}{}{tag}", std::process::id() % 1_000_000);
        let peer = format!("{name}p");
        assert!(name.len() < 15, "interface name {name} too long");
        // A leftover of a killed run with the same PID would make `add` fail.
        let _ = Command::new("ip")
            .args(["link", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        run_ip(&["link", "add", &name, "type", "veth", "peer", "name", &peer]);
        run_ip(&["link", "set", &name, "up"]);
        run_ip(&["link", "set", &peer, "up"]);
        Self { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for HostVeth {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .status();
    }
}

/// Whether a namespace of that name exists.
pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn run_ip(args: &[&str]) -> String {
    let output = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip (iproute2; run `cargo xtask setup`): {e}"));
    assert!(
        output.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Kills what still runs in the namespace (by PID) and deletes it. Never panics: it runs in
/// `Drop`, possibly while unwinding.
fn delete_netns(name: &str) {
    if let Ok(output) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill(2) by PID of a process that `ip netns pids` just listed in our own
            // lab namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let deleted = Command::new("ip")
        .args(["netns", "del", name])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !deleted && netns_exists(name) {
        eprintln!("warning: could not delete network namespace {name}");
    }
}

/// Removes lab namespaces whose owning test process is gone (a run killed with SIGKILL).
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if owner_is_gone(&name) {
            delete_netns(&name);
        }
    }
}

/// Whether `name` is a lab name (`vwt<pid>x<n>-...`, also a namespace's name used as a prefix
/// for other per-lab objects) whose owning test process no longer exists.
pub(crate) fn owner_is_gone(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return false;
    };
    let Some(pid) = rest.split('x').next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    !Path::new(&format!("/proc/{pid}")).exists()
}
