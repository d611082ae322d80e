//! The L4 lab: a client, a node running vipwire and pod namespaces, wired the way a bare-metal
//! Kubernetes node is and made as hostile to VIP traffic as a real one can be.
//!
//! ```text
//!  client ns                         node ns (vipwire, --interface up0 --interface up1)
//!  lo   198.51.100.10, 2001:db8:200::10
//!  eth0 10.0.1.1/24 fd00:1::1/64 ─── up0 10.0.1.2/24 fd00:1::2/64   <- VIP traffic comes in here
//!  eth1 10.0.2.1/24 fd00:2::1/64 ─── up1 10.0.2.2/24 fd00:2::2/64   <- the route back leaves here
//!                                    vp<tag><i> ── pod<i> eth0 10.244.0.1<i>/32 fd00:244::1<i>/128
//! ```
//! - The client reaches the VIPs (203.0.113.10, 2001:db8:100::10) through up0 only; the node
//!   routes the client range (198.51.100.0/24, 2001:db8:200::/64) back through up1: a kernel
//!   path with `rp_filter=1` drops the requests, because the reverse route of their source
//!   leaves by another interface (the asymmetric BGP/ECMP case of DESIGN.md).
//! - Node: `rp_filter=1` on all/default/every interface, forwarding on, and optionally a
//!   netfilter FORWARD drop policy (iptables, ip6tables and an nft table of our own).
//! - Pods are Calico-style: a /32 (/128) route per pod on the node towards its host veth; the
//!   pod's default route goes via 169.254.1.1 (on the node's `lo`, so the node answers ARP for
//!   it on every veth without one address per veth) and fe80::1 (on every host veth, link-local
//!   so NDP needs it on the link). Nothing runs or is attached on the pod side of the veth.
//! - The client's ends carry a pass-all XDP program by default (they stand for a NIC's far
//!   end, see [`Netns::pass_all_xdp`]); [`Options::client_xdp`] turns that off.

mod manifests;
mod servers;
mod topology;

pub mod client;
pub mod stats;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

pub use manifests::{Endpoint, Manifests};
pub use servers::PodServers;
pub use topology::{ForwardPolicy, RpFilter};

use crate::{
    agent::{self, BpffsDir},
    netlab::{NetLab, Netns},
    process::Daemon,
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10);
/// The client's own address (on its `lo`): what the pod must see as the peer.
pub const CLIENT_SRC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const CLIENT_SRC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 0x10);
pub const NODE_NAME: &str = "node-l4";

/// A Service port: (name, protocol, port, targetPort).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: &'static str,
    pub protocol: &'static str,
    pub port: u16,
    pub target: u16,
}

/// TCP request/response: the pod answers every line with its name and the peer it saw.
pub const TCP: ServicePort = ServicePort {
    name: "tcp",
    protocol: "TCP",
    port: 80,
    target: 8080,
};
/// UDP request/response, same answer as [`TCP`].
pub const UDP: ServicePort = ServicePort {
    name: "udp",
    protocol: "UDP",
    port: 53,
    target: 5353,
};
/// UDP sink for floods: the pod has a socket bound there that nobody reads; deliveries are
/// counted from the pod's UDP statistics ([`stats::udp_delivered`]).
pub const SINK: ServicePort = ServicePort {
    name: "sink",
    protocol: "UDP",
    port: 9,
    target: 9009,
};
/// UDP with nothing listening behind it: the pod answers with ICMP port unreachable.
pub const CLOSED: ServicePort = ServicePort {
    name: "closed",
    protocol: "UDP",
    port: 7,
    target: 7007,
};
pub const PORTS: [ServicePort; 4] = [TCP, UDP, SINK, CLOSED];

/// The name, IPv4 and IPv6 address of pod `i` (`i < 10`: addresses 10.244.0.1<i>).
pub fn pod_name(i: usize) -> String {
    format!("pod-{i}")
}

pub fn pod_ip(i: usize) -> Ipv4Addr {
    assert!(i < 10, "the lab has room for 10 pods");
    Ipv4Addr::new(10, 244, 0, 10 + i as u8)
}

pub fn pod_ip6(i: usize) -> Ipv6Addr {
    assert!(i < 10, "the lab has room for 10 pods");
    Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 0x10 + i as u16)
}

/// How hostile the node is and what the client ends carry.
#[derive(Clone, Debug)]
pub struct Options {
    /// Pods created at once (more with [`L4Lab::add_pod`]).
    pub pods: usize,
    pub rp_filter: RpFilter,
    pub forward: ForwardPolicy,
    /// Pass-all XDP on the client's eth0/eth1 (a NIC's far end).
    pub client_xdp: bool,
    /// Short tag in the host veth names (`vp<tag><i>`).
    pub tag: String,
}

impl Default for Options {
    /// The hostile node of the issue: strict rp_filter, FORWARD DROP, 3 pods.
    fn default() -> Self {
        Self {
            pods: 3,
            rp_filter: RpFilter::Strict,
            forward: ForwardPolicy::Drop,
            client_xdp: true,
            tag: "l".to_owned(),
        }
    }
}

/// One lab: namespaces, pods with their servers, the manifests directory.
pub struct L4Lab {
    // Drop order: servers (threads in the pods) before the namespaces.
    pods: Vec<Pod>,
    pub client: Netns,
    pub node: Netns,
    pub manifests: Manifests,
    tag: String,
    bpffs: Option<BpffsDir>,
    pub lab: NetLab,
}

/// One pod namespace and the servers running in it.
pub struct Pod {
    pub index: usize,
    pub name: String,
    pub ns: Netns,
    pub host_veth: String,
    pub servers: PodServers,
}

impl L4Lab {
    /// Builds the lab; the manifests list every pod as a ready local endpoint.
    pub fn new(options: &Options) -> Self {
        let mut lab = NetLab::new();
        let (client, node) = topology::client_and_node(&mut lab, options);
        let dir = lab.path("manifests");
        let manifests = Manifests::new(dir);
        let mut this = Self {
            pods: Vec::new(),
            client,
            node,
            manifests,
            tag: options.tag.clone(),
            bpffs: None,
            lab,
        };
        for i in 0..options.pods {
            this.add_pod(i);
        }
        this.manifests.write();
        this
    }

    /// Creates pod `i` (namespace, veth, routes, servers) and lists it as a ready endpoint in
    /// the manifests (written by the next [`Manifests::write`]).
    pub fn add_pod(&mut self, i: usize) -> &Pod {
        let host_veth = format!("vp{}{i}", self.tag);
        assert!(host_veth.len() < 16, "interface name {host_veth} too long");
        let ns = topology::pod(&mut self.lab, &self.node, i, &host_veth);
        let name = pod_name(i);
        let servers = PodServers::start(&ns, &name);
        self.manifests.set(Endpoint {
            name: name.clone(),
            ipv4: pod_ip(i),
            ipv6: pod_ip6(i),
            ready: true,
            terminating: false,
        });
        self.pods.push(Pod {
            index: i,
            name,
            ns,
            host_veth,
            servers,
        });
        self.pods.last().expect("just pushed")
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    pub fn pod(&self, i: usize) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.index == i)
            .unwrap_or_else(|| panic!("no pod {i} in the lab"))
    }

    /// Sets rp_filter on the node (all, default and every interface).
    pub fn set_rp_filter(&self, mode: RpFilter) {
        topology::set_rp_filter(&self.node, mode);
    }

    /// Sets the node's netfilter FORWARD policy (iptables, ip6tables and our nft table).
    pub fn set_forward(&self, policy: ForwardPolicy) {
        topology::set_forward(&self.node, policy);
    }

    /// kube-proxy's data path on the node: DNAT of VIP:port to pod `i` for every port, with
    /// iptables (`nft == false`) or an nft table of our own.
    pub fn install_kernel_dnat(&self, i: usize, nft: bool) {
        topology::kernel_dnat(&self.node, (pod_ip(i), pod_ip6(i)), nft, true);
    }

    /// Removes what [`Self::install_kernel_dnat`] installed.
    pub fn remove_kernel_dnat(&self, i: usize, nft: bool) {
        topology::kernel_dnat(&self.node, (pod_ip(i), pod_ip6(i)), nft, false);
    }

    /// Starts `vipwire run` on the node for up0 and up1 with this lab's manifests, pinning under
    /// a bpffs directory of its own; `--cleanup-on-exit` so a stopped agent leaves nothing.
    pub fn start_agent(&mut self, log: &str) -> Daemon {
        self.start_agent_binary(&agent::binary(), log)
    }

    /// [`Self::start_agent`] with a given `vipwire` binary (the bench's lives elsewhere).
    pub fn start_agent_binary(&mut self, binary: &std::path::Path, log: &str) -> Daemon {
        let bpffs = self
            .bpffs
            .get_or_insert_with(|| BpffsDir::new(&format!("l4-{}", self.node.name())));
        let admin = agent::free_loopback_port().to_string();
        let manifests = self
            .manifests
            .dir()
            .to_str()
            .expect("UTF-8 path")
            .to_owned();
        let args = [
            "run",
            "--manifests",
            &manifests,
            "--node-name",
            NODE_NAME,
            "--interface",
            "up0",
            "--interface",
            "up1",
            "--bpffs-dir",
            bpffs.as_str(),
            "--admin",
            &admin,
            "--cleanup-on-exit",
        ];
        let mut command = self.node.enter(binary);
        command
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        Daemon::spawn(
            &format!("vipwire in {}", self.node.name()),
            command,
            &self.lab.path(log),
        )
    }

    /// The agent's log path by file name.
    pub fn path(&self, name: &str) -> PathBuf {
        self.lab.path(name)
    }

    /// Waits up to 30 s until a TCP request to the VIP of the family is answered; panics with
    /// the last error and `agent`'s log otherwise, or as soon as `agent` exits.
    pub fn wait_serving(&self, agent: &mut Daemon, v6: bool) {
        let to = vip(TCP, v6);
        let mut last = None;
        let served = crate::process::poll_until(Duration::from_secs(30), || {
            agent.assert_running();
            match client::tcp_request(&self.client, to, Duration::from_millis(300)) {
                Ok(reply) => Some(reply),
                Err(e) => {
                    last = Some(e);
                    None
                }
            }
        });
        assert!(
            served.is_some(),
            "no answer from {to} within 30 s (last error: {last:?}); agent log:\n{}",
            agent.log_tail()
        );
    }
}

/// VIP:port of a Service port, by family.
pub fn vip(port: ServicePort, v6: bool) -> SocketAddr {
    let ip = if v6 {
        IpAddr::V6(VIP6)
    } else {
        IpAddr::V4(VIP)
    };
    SocketAddr::new(ip, port.port)
}

/// How long a single request may take in the tests.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
