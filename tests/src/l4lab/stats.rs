//! Counters a load test reads: interface packets and UDP deliveries per namespace (read by a
//! thread that joined it) and the machine's softirq CPU time.

use std::time::Duration;

use crate::{netlab::Netns, probe::in_netns};

/// (rx packets, tx packets) of `ifname` in `ns`, from /proc/thread-self/net/dev.
pub fn netdev_packets(ns: &Netns, ifname: &str) -> (u64, u64) {
    let dev = in_netns(ns, || {
        std::fs::read_to_string("/proc/thread-self/net/dev").expect("reading net/dev")
    });
    let prefix = format!("{ifname}:");
    let line = dev
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {ifname} in {}'s net/dev:\n{dev}", ns.name()));
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().expect("a numeric net/dev field"))
        .collect();
    (fields[1], fields[9])
}

/// IPv4 UDP datagrams that reached a socket in `ns`, read or not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpDelivered {
    /// InDatagrams + RcvbufErrors: delivered to a socket, queued or dropped for a full buffer.
    pub delivered: u64,
    /// Datagrams for a port nobody listens on (a wrong DNAT port shows here).
    pub no_ports: u64,
    /// Bad UDP checksums (a broken checksum update shows here).
    pub csum_errors: u64,
}

/// The `Udp:` counters of /proc/thread-self/net/snmp in `ns`.
pub fn udp_delivered(ns: &Netns) -> UdpDelivered {
    let snmp = in_netns(ns, || {
        std::fs::read_to_string("/proc/thread-self/net/snmp").expect("reading net/snmp")
    });
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        panic!("no Udp lines in {}'s net/snmp:\n{snmp}", ns.name());
    };
    let field = |name: &str| -> u64 {
        let i = names
            .split_whitespace()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no Udp {name} in net/snmp"));
        values
            .split_whitespace()
            .nth(i)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("bad Udp {name} value in net/snmp"))
    };
    UdpDelivered {
        delivered: field("InDatagrams") + field("RcvbufErrors"),
        no_ports: field("NoPorts"),
        csum_errors: field("InCsumErrors"),
    }
}

/// Softirq time of all CPUs since boot (`/proc/stat`, in USER_HZ ticks): where veth NAPI, XDP,
/// TC and the kernel's forwarding path run.
pub fn softirq_time() -> Duration {
    cpu_field(7)
}

/// Field `n` of the `cpu` line of /proc/stat (1 = user, 7 = softirq), as time.
fn cpu_field(n: usize) -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").expect("reading /proc/stat");
    let cpu = stat.lines().next().expect("the cpu line");
    // cpu user nice system idle iowait irq softirq steal ...
    let ticks: u64 = cpu
        .split_whitespace()
        .nth(n)
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("no field {n} in {cpu:?}"));
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(hz > 0, "sysconf(_SC_CLK_TCK)");
    Duration::from_nanos(ticks * 1_000_000_000 / hz as u64)
}

/// Field `name` of the `group` lines (e.g. `TcpExt`, `IPReversePathFilter`) of
/// /proc/thread-self/net/netstat in `ns`.
pub fn netstat_field(ns: &Netns, group: &str, name: &str) -> u64 {
    let netstat = in_netns(ns, || {
        std::fs::read_to_string("/proc/thread-self/net/netstat").expect("reading net/netstat")
    });
    let prefix = format!("{group}: ");
    let mut lines = netstat.lines().filter(|l| l.starts_with(&prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        panic!("no {group} lines in {}'s net/netstat", ns.name());
    };
    let i = names
        .split_whitespace()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("no {group} {name} in net/netstat"));
    values
        .split_whitespace()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad {group} {name} value in net/netstat"))
}

/// Packets the node's kernel dropped on the paths vipwire must bypass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelDrops {
    /// Dropped by a FORWARD chain's policy (iptables, ip6tables and the lab's nft table).
    pub forward_policy: u64,
    /// Dropped by the IPv4 reverse-path filter.
    pub rp_filter: u64,
}

/// The node's [`KernelDrops`] so far.
pub fn kernel_drops(node: &Netns) -> KernelDrops {
    let policy_packets = |program: &str| -> u64 {
        let out = node.run_ok(program, &["-w", "-L", "FORWARD", "-v", "-n", "-x"]);
        // "Chain FORWARD (policy DROP 12 packets, 720 bytes)"
        let first = out.lines().next().unwrap_or_default();
        first
            .split_once("policy ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no policy counter in `{program} -L FORWARD`: {first:?}"))
    };
    KernelDrops {
        forward_policy: policy_packets("iptables")
            + policy_packets("ip6tables")
            + super::topology::nft_forward_drops(node),
        rp_filter: netstat_field(node, "TcpExt", "IPReversePathFilter"),
    }
}
