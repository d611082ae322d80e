//! The Ethernet addresses of frames vipwire delivers into a pod (issue 4, testkit::l4lab):
//! `vipwire_tc_deliver` redirects them into the pod through its veth peer, from the host
//! veth's address to the pod's, as the node's own routing would send them. The first packet
//! of a flow takes them from a FIB lookup, the next ones from a per-CPU cache
//! (ebpf/programs/src/peer_macs.rs): a capture inside the pod checks every one.

use std::{
    io::Read as _,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use testkit::{
    l4lab::{self, L4Lab, Options, REQUEST_TIMEOUT, TCP, UDP, client},
    process::poll_until,
    tools,
};

/// UDP requests sent per family; every one must be captured in the pod.
const REQUESTS: usize = 20;
const CAPTURE_LIMIT: Duration = Duration::from_secs(20);

#[test]
fn frames_delivered_into_a_pod_go_from_the_host_veth_to_the_pod_mac() {
    let tcpdump = tools::require("tcpdump");
    let mut lab = L4Lab::new(&Options {
        pods: 1,
        tag: "m".to_owned(),
        ..Options::default()
    });
    let mut agent = lab.start_agent("agent.log");
    let pod = lab.pod(0);
    let host_veth_mac = lab.node.mac(&pod.host_veth);
    let pod_mac = pod.ns.mac("eth0");
    for v6 in [false, true] {
        let served = poll_until(Duration::from_secs(30), || {
            agent.assert_running();
            client::tcp_request(&lab.client, l4lab::vip(TCP, v6), Duration::from_millis(300)).ok()
        });
        assert!(
            served.is_some(),
            "the VIP (v6: {v6}) did not answer; agent log:\n{}",
            agent.log_tail()
        );

        let mut capture = Capture::start(&lab, &tcpdump, v6);
        let socket = client::udp_socket(&lab.client, v6);
        let to = l4lab::vip(UDP, v6);
        for _ in 0..REQUESTS {
            client::udp_request(&socket, to, REQUEST_TIMEOUT)
                .unwrap_or_else(|e| panic!("UDP to {to}: {e}"));
        }
        let frames = capture.finish();
        assert_eq!(
            frames.len(),
            REQUESTS,
            "frames captured in the pod: {frames:?}"
        );
        for (src, dst) in &frames {
            assert_eq!(
                (src.as_str(), dst.as_str()),
                (mac(host_veth_mac).as_str(), mac(pod_mac).as_str()),
                "v6: {v6}: (source, destination) MAC of a delivered frame"
            );
        }
    }
    agent.assert_running();
}

/// tcpdump in the pod, on eth0, inbound UDP of the family only, link-level headers printed.
struct Capture {
    child: Child,
    stdout: std::fs::File,
}

impl Capture {
    fn start(lab: &L4Lab, tcpdump: &std::path::Path, v6: bool) -> Self {
        let out = lab.path(&format!("tcpdump-v6-{v6}.out"));
        let err = lab.path(&format!("tcpdump-v6-{v6}.err"));
        let stdout = std::fs::File::create(&out).expect("creating the capture file");
        let stderr = std::fs::File::create(&err).expect("creating the capture log");
        let filter = if v6 { "ip6 and udp" } else { "ip and udp" };
        let child = lab
            .pod(0)
            .ns
            .command("timeout")
            .arg(CAPTURE_LIMIT.as_secs().to_string())
            .arg(tcpdump)
            .args(["-i", "eth0", "-Q", "in", "-e", "-n", "-l", "-U"])
            .args(["-c", &REQUESTS.to_string(), filter])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("starting tcpdump");
        let listening = poll_until(Duration::from_secs(10), || {
            let log = std::fs::read_to_string(&err).unwrap_or_default();
            log.contains("listening on").then_some(())
        });
        assert!(
            listening.is_some(),
            "tcpdump did not start: {}",
            std::fs::read_to_string(&err).unwrap_or_default()
        );
        Self {
            child,
            stdout: std::fs::File::open(&out).expect("opening the capture file"),
        }
    }

    /// Waits for tcpdump (it stops after its count, `timeout` kills it at the limit) and
    /// returns each captured frame's (source, destination) MAC.
    fn finish(&mut self) -> Vec<(String, String)> {
        let deadline = Instant::now() + CAPTURE_LIMIT + Duration::from_secs(5);
        while self.child.try_wait().expect("polling tcpdump").is_none() {
            assert!(Instant::now() < deadline, "tcpdump outlived its timeout");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut text = String::new();
        self.stdout
            .read_to_string(&mut text)
            .expect("reading the capture");
        // "<src mac> > <dst mac>, ethertype IPv4 (0x0800), length ...: ..."
        text.lines()
            .filter_map(|line| {
                let (src, rest) = line.split_once(" > ")?;
                let (dst, _) = rest.split_once(',')?;
                let src = src.rsplit(' ').next()?;
                Some((src.to_owned(), dst.to_owned()))
            })
            .collect()
    }
}

fn mac(bytes: [u8; 6]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
