//! Building the L4 lab's namespaces and setting the node's hostility (see the module docs of
//! [`super`]).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{CLIENT_SRC, CLIENT_SRC6, Options, PORTS, VIP, VIP6, pod_ip, pod_ip6};
use crate::{
    netlab::{NetLab, Netns},
    tools,
};

/// The pods' IPv4 gateway: on the node's `lo`, so the node answers ARP for it on every veth.
pub const POD_GATEWAY: &str = "169.254.1.1";
/// The pods' IPv6 gateway: on every host veth (link-local, NDP needs it on the link).
pub const POD_GATEWAY6: &str = "fe80::1";

/// `net.ipv4.conf.*.rp_filter` on the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RpFilter {
    Off,
    /// 1: the reverse route of the source must leave by the ingress interface.
    Strict,
    /// 2: any route back will do (what kube-proxy setups need with asymmetric routes).
    Loose,
}

impl RpFilter {
    fn value(self) -> &'static str {
        match self {
            RpFilter::Off => "0",
            RpFilter::Strict => "1",
            RpFilter::Loose => "2",
        }
    }
}

/// The node's netfilter FORWARD policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardPolicy {
    Accept,
    /// `iptables -P FORWARD DROP`, `ip6tables -P FORWARD DROP` and an nft `inet` table with a
    /// forward chain of policy drop: nothing the kernel forwards gets through.
    Drop,
}

/// Our own nft tables on the node (deleted by name inside the lab's own namespace only).
const NFT_FILTER: &str = "vwlab_filter";
const NFT_NAT: &str = "vwlab_nat";

/// The client and node namespaces, their links, addresses, routes and sysctls.
pub fn client_and_node(lab: &mut NetLab, options: &Options) -> (Netns, Netns) {
    let client = lab.netns("client");
    let node = lab.netns("node");
    lab.veth((&client, "eth0"), (&node, "up0"));
    lab.veth((&client, "eth1"), (&node, "up1"));
    for (ifname, v4, v6) in [
        ("eth0", "10.0.1.1/24", "fd00:1::1/64"),
        ("eth1", "10.0.2.1/24", "fd00:2::1/64"),
    ] {
        client.addr(ifname, v4);
        client.addr(ifname, v6);
    }
    for (ifname, v4, v6) in [
        ("up0", "10.0.1.2/24", "fd00:1::2/64"),
        ("up1", "10.0.2.2/24", "fd00:2::2/64"),
    ] {
        node.addr(ifname, v4);
        node.addr(ifname, v6);
    }
    client.addr("lo", &format!("{CLIENT_SRC}/32"));
    client.addr("lo", &format!("{CLIENT_SRC6}/128"));
    // The client's replies arrive on eth1, requests leave by eth0: no reverse-path check there.
    for key in ["all", "default", "eth0", "eth1", "lo"] {
        client.sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0");
        // ARP requests name the interface's own address (as a router's do), not the
        // 198.51.100.10 of the packet that needs them: the node's strict rp_filter checks
        // the sender of an ARP request too and would ignore a request from that address.
        client.sysctl(&format!("net.ipv4.conf.{key}.arp_announce"), "2");
    }
    // VIPs through up0 only, from the client's own address.
    client.ip(&[
        "route",
        "add",
        &format!("{VIP}/32"),
        "via",
        "10.0.1.2",
        "dev",
        "eth0",
        "src",
        &CLIENT_SRC.to_string(),
    ]);
    client.ip(&[
        "-6",
        "route",
        "add",
        &format!("{VIP6}/128"),
        "via",
        "fd00:1::2",
        "dev",
        "eth0",
        "src",
        &CLIENT_SRC6.to_string(),
    ]);
    if options.client_xdp {
        client.pass_all_xdp("eth0");
        client.pass_all_xdp("eth1");
    }

    // The node: a router (as every k8s node is), the client range behind up1.
    node.sysctl("net.ipv4.ip_forward", "1");
    node.sysctl("net.ipv6.conf.all.forwarding", "1");
    node.ip(&[
        "route",
        "add",
        "198.51.100.0/24",
        "via",
        "10.0.2.1",
        "dev",
        "up1",
    ]);
    node.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:200::/64",
        "via",
        "fd00:2::1",
        "dev",
        "up1",
    ]);
    node.addr("lo", &format!("{POD_GATEWAY}/32"));
    set_rp_filter(&node, options.rp_filter);
    set_forward(&node, options.forward);
    (client, node)
}

/// Pod `i`: its namespace, a veth to the node (`host_veth` on the node side), addresses, the
/// node's /32 and /128 routes to it and its default routes. Nothing is attached in the pod.
pub fn pod(lab: &mut NetLab, node: &Netns, i: usize, host_veth: &str) -> Netns {
    let ns = lab.netns(&format!("pod{i}"));
    lab.veth((&ns, "eth0"), (node, host_veth));
    let (v4, v6) = (pod_ip(i), pod_ip6(i));
    ns.addr("eth0", &format!("{v4}/32"));
    ns.addr("eth0", &format!("{v6}/128"));
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        POD_GATEWAY,
        "dev",
        "eth0",
        "onlink",
    ]);
    node.addr(host_veth, &format!("{POD_GATEWAY6}/64"));
    ns.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        POD_GATEWAY6,
        "dev",
        "eth0",
    ]);
    node.ip(&["route", "add", &format!("{v4}/32"), "dev", host_veth]);
    node.ip(&["-6", "route", "add", &format!("{v6}/128"), "dev", host_veth]);
    // A veth made after `set_rp_filter` takes `default`; set it anyway, as a CNI would not.
    let strict = node.run_ok("sysctl", &["-n", "net.ipv4.conf.all.rp_filter"]);
    node.sysctl(
        &format!("net.ipv4.conf.{host_veth}.rp_filter"),
        strict.trim(),
    );
    ns
}

/// rp_filter on all, default and every interface of the node (the kernel uses the maximum of
/// `all` and the interface's value).
pub fn set_rp_filter(node: &Netns, mode: RpFilter) {
    let mut keys = vec!["all".to_owned(), "default".to_owned()];
    keys.extend(interfaces(node));
    for key in keys {
        node.sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), mode.value());
    }
}

/// The node's FORWARD policy, in iptables, ip6tables and our own nft table.
pub fn set_forward(node: &Netns, policy: ForwardPolicy) {
    tools::require("iptables");
    tools::require("ip6tables");
    tools::require("nft");
    let target = match policy {
        ForwardPolicy::Accept => "ACCEPT",
        ForwardPolicy::Drop => "DROP",
    };
    node.run_ok("iptables", &["-w", "-P", "FORWARD", target]);
    node.run_ok("ip6tables", &["-w", "-P", "FORWARD", target]);
    let _ = node.exec("nft", &["delete", "table", "inet", NFT_FILTER]);
    if policy == ForwardPolicy::Drop {
        node.run_ok(
            "nft",
            &[&format!(
                "add table inet {NFT_FILTER}; add chain inet {NFT_FILTER} forward \
                 {{ type filter hook forward priority filter; policy drop; }}; \
                 add rule inet {NFT_FILTER} forward counter"
            )],
        );
    }
}

/// Packets our nft FORWARD chain saw (and its policy dropped); 0 without the table.
pub fn nft_forward_drops(node: &Netns) -> u64 {
    let out = node.exec("nft", &["list", "chain", "inet", NFT_FILTER, "forward"]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_once("counter packets ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Installs (`add`) or removes kube-proxy-style DNAT of VIP:port → pod:targetPort for every
/// Service port, IPv4 and IPv6: iptables/ip6tables nat PREROUTING, or one nft table.
pub fn kernel_dnat(node: &Netns, (pod4, pod6): (Ipv4Addr, Ipv6Addr), nft: bool, add: bool) {
    if nft {
        tools::require("nft");
        let _ = node.exec("nft", &["delete", "table", "inet", NFT_NAT]);
        if !add {
            return;
        }
        let mut script = format!(
            "add table inet {NFT_NAT}\nadd chain inet {NFT_NAT} prerouting \
             {{ type nat hook prerouting priority dstnat; policy accept; }}\n"
        );
        for port in PORTS {
            let proto = port.protocol.to_lowercase();
            script.push_str(&format!(
                "add rule inet {NFT_NAT} prerouting ip daddr {VIP} {proto} dport {} dnat ip to {pod4}:{}\n",
                port.port, port.target
            ));
            script.push_str(&format!(
                "add rule inet {NFT_NAT} prerouting ip6 daddr {VIP6} {proto} dport {} dnat ip6 to [{pod6}]:{}\n",
                port.port, port.target
            ));
        }
        let path = std::env::temp_dir().join(format!("{}-nat.nft", node.name()));
        std::fs::write(&path, script).expect("writing the nft script");
        node.run_ok("nft", &["-f", path.to_str().expect("UTF-8 path")]);
        let _ = std::fs::remove_file(path);
        return;
    }
    tools::require("iptables");
    tools::require("ip6tables");
    let action = if add { "-A" } else { "-D" };
    for port in PORTS {
        let proto = port.protocol.to_lowercase();
        let dport = port.port.to_string();
        for (program, vip, to) in [
            (
                "iptables",
                VIP.to_string(),
                format!("{pod4}:{}", port.target),
            ),
            (
                "ip6tables",
                VIP6.to_string(),
                format!("[{pod6}]:{}", port.target),
            ),
        ] {
            let args = [
                "-w",
                "-t",
                "nat",
                action,
                "PREROUTING",
                "-d",
                &vip,
                "-p",
                &proto,
                "--dport",
                &dport,
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ];
            if add {
                node.run_ok(program, &args);
            } else {
                let _ = node.exec(program, &args);
            }
        }
    }
}

/// The node's interface names (from /sys/class/net inside the namespace).
fn interfaces(ns: &Netns) -> Vec<String> {
    ns.run_ok("ls", &["/sys/class/net"])
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}
