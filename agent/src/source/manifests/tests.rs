//! Parsing and validation from small YAML strings; the directory watcher in a tempdir.

use std::{path::Path, sync::Arc, time::Duration};

use super::*;
use crate::{
    model::{self, ModelConfig},
    snapshot::ObjectKey,
};

const SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: prod
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  ports:
    - name: http
      port: 80
      targetPort: http
status:
  loadBalancer:
    ingress:
      - ip: 192.0.2.10
";

const SLICE: &str = "\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: prod
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
  - name: http
    port: 8080
    protocol: TCP
endpoints:
  - addresses: [10.1.0.1]
    nodeName: node-1
    conditions: {ready: true}
";

const NODE: &str = "\
apiVersion: v1
kind: Node
metadata:
  name: node-1
status:
  conditions:
    - type: Ready
      status: \"True\"
";

fn load(text: &str) -> Result<Loaded, ManifestErrors> {
    load_str(Path::new("m.yaml"), text)
}

fn error_of(text: &str) -> String {
    match load(text) {
        Ok(loaded) => panic!("accepted: {:?}", loaded.snapshot),
        Err(errors) => errors.to_string(),
    }
}

#[test]
fn multi_document_file_with_all_kinds() {
    let text = format!("---\n{SERVICE}---\n{SLICE}---\n{NODE}---\n");
    let loaded = load(&text).unwrap();
    let s = &loaded.snapshot;
    assert!(s.services.contains_key(&ObjectKey::new("prod", "web")));
    assert!(
        s.endpoint_slices
            .contains_key(&ObjectKey::new("prod", "web-abc"))
    );
    assert!(s.nodes.contains_key("node-1"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);

    // And the model makes sense of it: the VIP is announced from node-1 on the named port.
    let config = ModelConfig {
        l2_enabled: true,
        bgp_enabled: true,
        ..ModelConfig::default()
    };
    let d = model::desired("node-1", s, &config);
    assert_eq!(
        d.bgp.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["192.0.2.10"]
    );
    let backend = d.services.values().next().unwrap().backends[0];
    assert_eq!(
        (backend.addr.to_string(), backend.port),
        ("10.1.0.1".into(), 8080)
    );
}

#[test]
fn namespace_defaults_and_empty_files() {
    let text = SERVICE.replace("  namespace: prod\n", "");
    let loaded = load(&text).unwrap();
    assert!(
        loaded
            .snapshot
            .services
            .contains_key(&ObjectKey::new("default", "web"))
    );
    assert!(load("").unwrap().snapshot.is_empty());
    assert!(
        load("---\n# only a comment\n---\n")
            .unwrap()
            .snapshot
            .is_empty()
    );
}

#[test]
fn other_kinds_are_ignored_with_a_warning() {
    let text =
        format!("{SERVICE}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: x}}\n");
    let loaded = load(&text).unwrap();
    assert_eq!(loaded.snapshot.services.len(), 1);
    assert_eq!(
        loaded.warnings,
        [
            "m.yaml: document 2: kind Deployment (apps/v1) ignored: only Service, EndpointSlice and Node are read"
        ]
    );
}

#[test]
fn lists_are_flattened() {
    let indent = |s: &str| s.replace('\n', "\n    ");
    let text = format!(
        "apiVersion: v1\nkind: List\nitems:\n  - {}\n  - {}\n",
        indent(NODE).trim_end(),
        indent(&NODE.replace("node-1", "node-2")).trim_end()
    );
    let loaded = load(&text).unwrap();
    assert_eq!(loaded.snapshot.nodes.len(), 2);
    let bad = text.replace("name: node-2", "name: Node_2");
    assert!(
        error_of(&bad).starts_with("m.yaml: document 1, items[1]: Node Node_2: metadata.name:")
    );
}

#[test]
fn unknown_fields_are_warnings() {
    let text = SERVICE.replace(
        "  type: LoadBalancer\n",
        "  type: LoadBalancer\n  extrnalTrafficPolicy: Local\n",
    );
    let loaded = load(&text).unwrap();
    assert_eq!(
        loaded.warnings,
        ["m.yaml: document 1: Service prod/web: unknown field spec.extrnalTrafficPolicy ignored"]
    );
}

#[test]
fn slice_without_service_label_is_a_warning() {
    let text = SLICE.replace("  labels:\n    kubernetes.io/service-name: web\n", "");
    let loaded = load(&text).unwrap();
    assert_eq!(loaded.snapshot.endpoint_slices.len(), 1);
    assert!(
        loaded.warnings[0].contains("belongs to no Service"),
        "{:?}",
        loaded.warnings
    );
}

#[test]
fn api_defaults_are_accepted() {
    #[rustfmt::skip]
    let cases = [
        ("targetPort 0", SERVICE.replace("targetPort: http", "targetPort: 0")),
        ("empty targetPort", SERVICE.replace("targetPort: http", "targetPort: \"\"")),
        ("no protocol", SERVICE.to_owned()),
        ("SCTP", SERVICE.replace("targetPort: http", "protocol: SCTP")),
        ("IPv6 ingress", SERVICE.replace("192.0.2.10", "2001:db8::10")),
        ("hostname ingress", SERVICE.replace("ip: 192.0.2.10", "hostname: lb.example.com")),
        ("class", SERVICE.replace("  type: LoadBalancer\n", "  type: LoadBalancer\n  loadBalancerClass: example.com/vipwire\n")),
        ("affinity", SERVICE.replace("  type: LoadBalancer\n", "  type: LoadBalancer\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n")),
        ("ranges", SERVICE.replace("  type: LoadBalancer\n", "  type: LoadBalancer\n  loadBalancerSourceRanges: [10.0.0.0/8, \"2001:db8::/32\"]\n")),
        ("FQDN slice", SLICE.replace("IPv4", "FQDN").replace("10.1.0.1", "pod.example.com")),
        ("IPv6 slice", SLICE.replace("IPv4", "IPv6").replace("10.1.0.1", "fd00::1")),
        ("slice port without number", SLICE.replace("    port: 8080\n", "")),
    ];
    for (name, text) in cases {
        if let Err(e) = load(&text) {
            panic!("{name}: {e}");
        }
    }
}

#[test]
fn validation_names_file_document_object_and_field() {
    let svc = |from: &str, to: &str| format!("{NODE}---\n{}", SERVICE.replace(from, to));
    let slice = |from: &str, to: &str| format!("{NODE}---\n{}", SLICE.replace(from, to));
    let two_ports = "    - name: http\n      port: 80\n      targetPort: http\n    - port: 81\n";
    let port_block = "    - name: http\n      port: 80\n      targetPort: http\n";
    #[rustfmt::skip]
    let cases: Vec<(&str, String, &str)> = vec![
        // (name, file text, expected error prefix after "m.yaml: document 2: ")
        ("port 0", svc("port: 80", "port: 0"), "Service prod/web: spec.ports[0].port: Invalid value: 0"),
        ("port 65536", svc("port: 80", "port: 65536"), "Service prod/web: spec.ports[0].port: Invalid value: 65536"),
        ("protocol", svc("targetPort: http", "protocol: ICMP"), "Service prod/web: spec.ports[0].protocol: Unsupported value: \"ICMP\""),
        ("second port unnamed", svc(port_block, two_ports), "Service prod/web: spec.ports[1].name: Required value"),
        ("duplicate port", svc(port_block, &format!("{port_block}    - name: alt\n      port: 80\n")), "Service prod/web: spec.ports[1]: Duplicate value: 80/TCP"),
        ("port name", svc("name: http", "name: HTTP"), "Service prod/web: spec.ports[0].name: Invalid value"),
        ("targetPort name", svc("targetPort: http", "targetPort: a-very-long-port-name"), "Service prod/web: spec.ports[0].targetPort: Invalid value"),
        ("targetPort number", svc("targetPort: http", "targetPort: 70000"), "Service prod/web: spec.ports[0].targetPort: Invalid value: 70000"),
        ("no ports", svc(port_block, "").replace("  ports:\n", ""), "Service prod/web: spec.ports: Required value"),
        ("ingress ip", svc("192.0.2.10", "192.0.2.300"), "Service prod/web: status.loadBalancer.ingress[0].ip: Invalid value: \"192.0.2.300\""),
        ("policy", svc("Local", "local"), "Service prod/web: spec.externalTrafficPolicy: Unsupported value: \"local\""),
        ("policy on ClusterIP", svc("type: LoadBalancer", "type: ClusterIP"), "Service prod/web: spec.externalTrafficPolicy: Invalid value: may only be set"),
        ("type", svc("type: LoadBalancer", "type: Balanced"), "Service prod/web: spec.type: Unsupported value: \"Balanced\""),
        ("affinity", svc("  type: LoadBalancer\n", "  type: LoadBalancer\n  sessionAffinity: Cookie\n"), "Service prod/web: spec.sessionAffinity: Unsupported value"),
        ("affinity timeout", svc("  type: LoadBalancer\n", "  type: LoadBalancer\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}\n"), "Service prod/web: spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 0"),
        ("range", svc("  type: LoadBalancer\n", "  type: LoadBalancer\n  loadBalancerSourceRanges: [10.0.0.0/33]\n"), "Service prod/web: spec.loadBalancerSourceRanges[0]: Invalid value"),
        ("class", svc("  type: LoadBalancer\n", "  type: LoadBalancer\n  loadBalancerClass: -bad\n"), "Service prod/web: spec.loadBalancerClass: Invalid value"),
        ("service name", svc("name: web\n", "name: 1web\n"), "Service prod/1web: metadata.name: Invalid value"),
        ("no name", svc("  name: web\n", ""), "Service: metadata.name: Required value"),
        ("namespace", svc("namespace: prod", "namespace: Prod"), "Service Prod/web: metadata.namespace: Invalid value"),
        ("wrong type of value", svc("port: 80", "port: eighty"), "spec.ports[0].port: invalid type: string \"eighty\", expected i32"),
        ("apiVersion", svc("apiVersion: v1", "apiVersion: apps/v1"), "Service: apiVersion: Unsupported value \"apps/v1\""),
        ("addressType missing", slice("addressType: IPv4\n", ""), "EndpointSlice prod/web-abc: addressType: Required value"),
        ("addressType", slice("addressType: IPv4", "addressType: IPv5"), "EndpointSlice prod/web-abc: addressType: Unsupported value: \"IPv5\""),
        ("IPv6 address in IPv4 slice", slice("10.1.0.1", "fd00::1"), "EndpointSlice prod/web-abc: endpoints[0].addresses[0]: Invalid value: \"fd00::1\": must be a valid IPv4 address"),
        ("IPv4 address in IPv6 slice", slice("IPv4", "IPv6"), "EndpointSlice prod/web-abc: endpoints[0].addresses[0]: Invalid value: \"10.1.0.1\": must be a valid IPv6 address"),
        ("FQDN", slice("IPv4", "FQDN").replace("10.1.0.1", "Pod_1"), "EndpointSlice prod/web-abc: endpoints[0].addresses[0]: Invalid value"),
        ("no addresses", slice("[10.1.0.1]", "[]"), "EndpointSlice prod/web-abc: endpoints[0].addresses: Required value"),
        ("nodeName", slice("node-1", "Node_1"), "EndpointSlice prod/web-abc: endpoints[0].nodeName: Invalid value"),
        ("slice port", slice("port: 8080", "port: 0"), "EndpointSlice prod/web-abc: ports[0].port: Invalid value: 0"),
        ("slice protocol", slice("protocol: TCP", "protocol: tcp"), "EndpointSlice prod/web-abc: ports[0].protocol: Unsupported value"),
        ("slice apiVersion", slice("discovery.k8s.io/v1", "discovery.k8s.io/v1beta1"), "EndpointSlice: apiVersion: Unsupported value"),
        ("node namespace", format!("{NODE}---\n{}", NODE.replace("  name: node-1\n", "  name: node-2\n  namespace: x\n")), "Node node-2: metadata.namespace: Forbidden"),
        ("no kind", format!("{NODE}---\napiVersion: v1\nmetadata: {{name: x}}\n"), "object: kind: Required value"),
        ("duplicate", format!("{NODE}---\n{NODE}"), "Node node-1 is already defined at m.yaml: document 1"),
    ];
    for (name, text, expected) in cases {
        let error = error_of(&text);
        let expected = format!("m.yaml: document 2: {expected}");
        assert!(
            error.starts_with(&expected),
            "{name}:\n  got      {error}\n  expected {expected}"
        );
    }
}

#[test]
fn syntax_errors_name_the_document_and_line() {
    let error = error_of(&format!("{NODE}---\nkind: Service\nmetadata: [unclosed\n"));
    assert!(error.starts_with("m.yaml: document 2: "), "{error}");
    assert!(error.contains("line"), "{error}");
}

#[test]
fn every_problem_is_reported_once() {
    let text = SERVICE
        .replace("port: 80", "port: 0")
        .replace("192.0.2.10", "nope");
    let errors = load(&text).unwrap_err();
    assert_eq!(errors.0.len(), 2, "{errors}");
    assert!(errors.to_string().contains("; "), "one line: {errors}");
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// Writes `name` the way many editors save: a temporary file renamed over the old one.
fn replace(dir: &Path, name: &str, text: &str) {
    let temp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, dir.join(name)).unwrap();
}

/// The cached load is the plain load, whatever happens in between: edits in place (same size,
/// within one timestamp tick), renames, removals, duplicates across files, broken files.
#[test]
fn the_cached_load_equals_the_plain_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut cache = DirCache::default();
    let same = |cache: &mut DirCache| {
        let cached = load_dir_cached(d, cache).map_err(|e| e.to_string());
        let plain = load_dir(d).map_err(|e| e.to_string());
        assert_eq!(cached, plain);
        cached
    };
    write(d, "a.yaml", SERVICE);
    write(d, "b.yaml", SLICE);
    write(d, "n.yaml", NODE);
    let first = same(&mut cache).unwrap();
    // (Files younger than RACY_FINE, as all of these are, are parsed again on every load.)
    assert_eq!(same(&mut cache).unwrap(), first);
    let key = ObjectKey::new("prod", "web");
    // Same length, same tick: still seen.
    write(d, "a.yaml", &SERVICE.replace("192.0.2.10", "192.0.2.11"));
    let edited = same(&mut cache).unwrap();
    assert_ne!(
        edited.snapshot.services[&key],
        first.snapshot.services[&key]
    );
    replace(d, "b.yaml", &SLICE.replace("web-abc", "web-xyz"));
    same(&mut cache).unwrap();
    write(d, "c.yaml", SERVICE);
    assert!(same(&mut cache).is_err(), "a duplicate across files");
    write(d, "c.yaml", "garbage: [");
    assert!(same(&mut cache).is_err());
    std::fs::remove_file(d.join("c.yaml")).unwrap();
    assert_eq!(same(&mut cache).unwrap().snapshot.services.len(), 1);
    // From here each load patches the last good merge: a file renamed, one removed, one
    // added, one whose object moves to another file in the same step.
    std::fs::rename(d.join("a.yaml"), d.join("d.yaml")).unwrap();
    assert_eq!(same(&mut cache).unwrap().snapshot.services.len(), 1);
    std::fs::remove_file(d.join("b.yaml")).unwrap();
    assert!(
        same(&mut cache)
            .unwrap()
            .snapshot
            .endpoint_slices
            .is_empty()
    );
    write(d, "b.yaml", SLICE);
    assert_eq!(same(&mut cache).unwrap().snapshot.endpoint_slices.len(), 1);
    write(d, "d.yaml", NODE);
    write(d, "e.yaml", SERVICE);
    std::fs::remove_file(d.join("n.yaml")).unwrap();
    let moved = same(&mut cache).unwrap();
    assert_eq!(moved.snapshot.services.len(), 1);
    assert_eq!(moved.snapshot.nodes.len(), 1);
}

#[test]
fn directories_read_yaml_files_in_order_and_reject_whole() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "b.yml", NODE);
    write(d, "a.yaml", SERVICE);
    write(d, "c.yaml.bak", "garbage: [");
    write(d, ".hidden.yaml", "garbage: [");
    write(d, "notes.txt", "garbage: [");
    std::fs::create_dir(d.join("sub.yaml")).unwrap();
    let names: Vec<_> = manifest_files(d)
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["a.yaml", "b.yml"]);
    let loaded = load_dir(d).unwrap();
    assert_eq!(
        (loaded.snapshot.services.len(), loaded.snapshot.nodes.len()),
        (1, 1)
    );

    write(d, "c.yaml", &NODE.replace("node-1", "NODE"));
    let error = load_dir(d).unwrap_err().to_string();
    assert!(
        error.contains("c.yaml: document 1: Node NODE: metadata.name"),
        "{error}"
    );
    assert!(load_dir(&d.join("missing")).is_err());
}

/// Waits (bounded) until the published snapshot satisfies `check`.
async fn until(
    rx: &mut tokio::sync::watch::Receiver<Option<Arc<Snapshot>>>,
    what: &str,
    check: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(snapshot) = rx.borrow_and_update().clone()
            && check(&snapshot)
        {
            return snapshot;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("{what}: the source stopped"),
            Err(_) => panic!("{what}: not seen within 10 s"),
        }
    }
}

fn web_port(snapshot: &Snapshot) -> Option<i32> {
    let web = snapshot.services.get(&ObjectKey::new("prod", "web"))?;
    Some(web.spec.as_ref()?.ports.as_ref()?[0].port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_follows_edits_keeps_last_good_and_sees_renames() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    write(&d, "web.yaml", SERVICE);
    let mut source = spawn_manifest_source(d.clone());
    let rx = &mut source.snapshots;

    until(rx, "first load", |s| web_port(s) == Some(80)).await;

    write(&d, "web.yaml", &SERVICE.replace("port: 80", "port: 81"));
    until(rx, "in-place edit", |s| web_port(s) == Some(81)).await;

    // A broken file: the error is reported and the last good snapshot stays.
    write(&d, "bad.yaml", &NODE.replace("node-1", "Bad_Node"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let error = loop {
        if let Some(error) = source.status.borrow_and_update().error.clone() {
            break error;
        }
        tokio::time::timeout_at(deadline, source.status.changed())
            .await
            .expect("the error is reported")
            .unwrap();
    };
    assert!(
        error.contains("bad.yaml: document 1: Node Bad_Node: metadata.name"),
        "{error}"
    );
    let kept = rx.borrow().clone().unwrap();
    assert_eq!(web_port(&kept), Some(81));
    assert!(kept.nodes.is_empty());

    // Fixed: the new file and the old one arrive together, and the error clears.
    write(&d, "bad.yaml", NODE);
    until(rx, "fixed file", |s| {
        s.nodes.contains_key("node-1") && web_port(s) == Some(81)
    })
    .await;
    assert_eq!(source.status.borrow().error, None);

    // Saved through a rename over the old file.
    replace(&d, "web.yaml", &SERVICE.replace("port: 80", "port: 82"));
    until(rx, "rename over", |s| web_port(s) == Some(82)).await;

    // Removed.
    std::fs::remove_file(d.join("bad.yaml")).unwrap();
    until(rx, "file removed", |s| s.nodes.is_empty()).await;

    let generation = source.status.borrow().generation;
    assert!(generation >= 5, "{generation}");

    // The task ends once nobody listens.
    drop(source.snapshots);
    tokio::time::timeout(Duration::from_secs(10), source.task)
        .await
        .expect("task ends")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_directory_is_polled_until_it_appears() {
    let parent = tempfile::tempdir().unwrap();
    let d = parent.path().join("later");
    let mut source = spawn_manifest_source(d.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(source.snapshots.borrow().is_none());
    assert!(source.status.borrow().error.is_some());

    std::fs::create_dir(&d).unwrap();
    write(&d, "node.yaml", NODE);
    until(&mut source.snapshots, "directory created", |s| {
        s.nodes.len() == 1
    })
    .await;

    // Now watched, not polled: an edit arrives well before the poll interval.
    write(&d, "node2.yaml", &NODE.replace("node-1", "node-2"));
    let started = tokio::time::Instant::now();
    until(&mut source.snapshots, "edit", |s| s.nodes.len() == 2).await;
    assert!(started.elapsed() < POLL_INTERVAL, "{:?}", started.elapsed());
}
