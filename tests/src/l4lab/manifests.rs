//! The agent's manifests for the L4 lab: the Node, a LoadBalancer Service with both VIPs and
//! `externalTrafficPolicy: Local`, and one EndpointSlice per family listing the pods as local
//! endpoints. Rewritten whole (a temporary file renamed over the old one, as editors save) when
//! an endpoint comes or goes; the agent re-reads the directory on inotify.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use super::{NODE_NAME, PORTS, VIP, VIP6};

pub const SERVICE: &str = "web";

/// One endpoint (a pod on this node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub name: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub ready: bool,
    /// Terminating but still serving (a pod being deleted): not ready, serving, terminating.
    pub terminating: bool,
}

/// The manifests directory and the endpoints it lists.
pub struct Manifests {
    dir: PathBuf,
    endpoints: BTreeMap<String, Endpoint>,
}

impl Manifests {
    pub fn new(dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        write_atomically(
            &dir.join("node.yaml"),
            &crate::agent::ready_node_manifest(NODE_NAME),
        );
        Self {
            dir,
            endpoints: BTreeMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds or replaces an endpoint (by pod name); call [`Self::write`] to publish.
    pub fn set(&mut self, endpoint: Endpoint) {
        self.endpoints.insert(endpoint.name.clone(), endpoint);
    }

    /// Marks an endpoint terminating (still serving); call [`Self::write`] to publish.
    pub fn terminate(&mut self, name: &str) {
        let endpoint = self
            .endpoints
            .get_mut(name)
            .unwrap_or_else(|| panic!("no endpoint {name} in the manifests"));
        endpoint.ready = false;
        endpoint.terminating = true;
    }

    /// Removes an endpoint (by pod name); call [`Self::write`] to publish.
    pub fn remove(&mut self, name: &str) {
        assert!(
            self.endpoints.remove(name).is_some(),
            "no endpoint {name} in the manifests"
        );
    }

    /// Writes the Service and its EndpointSlices.
    pub fn write(&self) {
        let endpoints: Vec<&Endpoint> = self.endpoints.values().collect();
        write_atomically(&self.dir.join("web.yaml"), &service(&endpoints));
    }
}

fn write_atomically(path: &Path, text: &str) {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a file name");
    // A dot file: the agent ignores it while it is being written.
    let temp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&temp, text).unwrap_or_else(|e| panic!("writing {}: {e}", temp.display()));
    std::fs::rename(&temp, path).unwrap_or_else(|e| panic!("renaming to {}: {e}", path.display()));
}

/// The Service (named ports, both VIPs, Local policy) and one EndpointSlice per family.
pub fn service(endpoints: &[&Endpoint]) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {SERVICE}\n  namespace: default\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  ipFamilyPolicy: PreferDualStack\n  ports:\n"
    );
    for port in PORTS {
        let _ = write!(
            out,
            "  - name: {}\n    protocol: {}\n    port: {}\n    targetPort: {}\n",
            port.name, port.protocol, port.port, port.target
        );
    }
    let _ = write!(
        out,
        "status:\n  loadBalancer:\n    ingress:\n    - ip: \"{VIP}\"\n    - ip: \"{VIP6}\"\n"
    );
    for (family, suffix) in [("IPv4", "v4"), ("IPv6", "v6")] {
        let _ = write!(
            out,
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {SERVICE}-{suffix}\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {SERVICE}\naddressType: {family}\nports:\n"
        );
        for port in PORTS {
            let _ = write!(
                out,
                "- name: {}\n  protocol: {}\n  port: {}\n",
                port.name, port.protocol, port.target
            );
        }
        if endpoints.is_empty() {
            out.push_str("endpoints: []\n");
            continue;
        }
        out.push_str("endpoints:\n");
        for endpoint in endpoints {
            let address = if family == "IPv4" {
                endpoint.ipv4.to_string()
            } else {
                endpoint.ipv6.to_string()
            };
            let _ = write!(
                out,
                "- addresses: [\"{address}\"]\n  nodeName: {NODE_NAME}\n  targetRef:\n    kind: Pod\n    name: {}\n    namespace: default\n  conditions:\n    ready: {}\n    serving: {}\n    terminating: {}\n",
                endpoint.name,
                endpoint.ready,
                endpoint.ready || endpoint.terminating,
                endpoint.terminating
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifests_parse_as_the_agent_reads_them() {
        let a = Endpoint {
            name: "pod-0".into(),
            ipv4: Ipv4Addr::new(10, 244, 0, 10),
            ipv6: "fd00:244::10".parse().unwrap(),
            ready: true,
            terminating: false,
        };
        let text = format!(
            "{}---\n{}",
            crate::agent::ready_node_manifest(NODE_NAME),
            service(&[&a])
        );
        let loaded = vipwire::source::manifests::load_str(Path::new("web.yaml"), &text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let empty = service(&[]);
        vipwire::source::manifests::load_str(Path::new("web.yaml"), &empty)
            .unwrap_or_else(|e| panic!("{e}\n{empty}"));
    }
}
