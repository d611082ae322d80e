//! A synthetic cluster of any size, for the agent benchmark and the tests that need a large
//! one: Service `i` is `svc-i` in `default`, LoadBalancer with one TCP port (80 → 8080),
//! VIP [`vip`]`(i)`, and one EndpointSlice of [`ENDPOINTS`] endpoints on one node.

use std::net::Ipv4Addr;

/// Endpoints per Service.
pub const ENDPOINTS: usize = 10;

/// Service `i`'s VIP: 198.18.0.0/15 (benchmarking), never .0 or .255.
pub fn vip(i: usize) -> Ipv4Addr {
    let (hi, lo) = (i / 250, i % 250 + 1);
    Ipv4Addr::new(198, 18 + (hi / 256) as u8, (hi % 256) as u8, lo as u8)
}

/// Service `i`'s name (its EndpointSlice is `<name>-1`).
pub fn name(i: usize) -> String {
    format!("svc-{i}")
}

/// Endpoint `e` of Service `i`: unique pod addresses in 10.128.0.0/9.
pub fn endpoint_ip(i: usize, e: usize) -> String {
    let n = i * ENDPOINTS + e;
    format!("10.{}.{}.{}", 128 + n / 65_536, (n / 256) % 256, n % 256)
}

/// Service `i` and its EndpointSlice as manifests (two YAML documents), its endpoints on
/// `node`, all `ready` or none.
pub fn service_manifests(i: usize, node: &str, ready: bool) -> String {
    let name = name(i);
    let vip = vip(i);
    let mut text = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  type: LoadBalancer\n  ports:\n  - name: http\n    port: 80\n    protocol: TCP\n    targetPort: 8080\nstatus:\n  loadBalancer:\n    ingress:\n    - ip: \"{vip}\"\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n- name: http\n  port: 8080\n  protocol: TCP\nendpoints:\n"
    );
    for e in 0..ENDPOINTS {
        text.push_str(&format!(
            "- addresses: [\"{}\"]\n  nodeName: {node}\n  conditions:\n    ready: {ready}\n    serving: {ready}\n    terminating: false\n",
            endpoint_ip(i, e)
        ));
    }
    text
}
