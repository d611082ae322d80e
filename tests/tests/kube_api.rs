//! The `KubeApi` harness itself: a real apiserver that serves watches, survives restarts,
//! answers 410 Gone after compaction, enforces RBAC, and leaves nothing behind.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, TcpListener},
    path::Path,
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt};
use k8s_openapi::api::{
    core::v1::{ConfigMap, Service, ServicePort, ServiceSpec},
    discovery::v1::{Endpoint, EndpointSlice},
    rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
    runtime::watcher,
};
use testkit::{KubeApi, kube::LIMITED_USER};

const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

fn meta(name: &str, namespace: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        ..ObjectMeta::default()
    }
}

fn load_balancer(name: &str, namespace: &str) -> Service {
    Service {
        metadata: meta(name, namespace),
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".to_owned()),
            selector: Some(BTreeMap::from([("app".to_owned(), name.to_owned())])),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: 80,
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn ingress_ips(service: &Service) -> Vec<String> {
    service
        .status
        .iter()
        .flat_map(|status| &status.load_balancer)
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter_map(|ingress| ingress.ip.clone())
        .collect()
}

/// Waits for the first watcher event that `matches` accepts, or panics listing what came.
async fn next_matching<K, S>(
    stream: &mut S,
    what: &str,
    mut matches: impl FnMut(&watcher::Event<K>) -> bool,
) -> watcher::Event<K>
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Unpin,
    K: std::fmt::Debug,
{
    let mut seen = Vec::new();
    let found = tokio::time::timeout(EVENT_TIMEOUT, async {
        while let Some(event) = stream.next().await {
            let event =
                event.unwrap_or_else(|e| panic!("watch error while waiting for {what}: {e}"));
            if matches(&event) {
                return Some(event);
            }
            seen.push(format!("{event:?}"));
        }
        None
    })
    .await;
    match found {
        Ok(Some(event)) => event,
        Ok(None) => panic!("watch ended before {what}; saw {seen:#?}"),
        Err(_) => panic!("no {what} within {EVENT_TIMEOUT:?}; saw {seen:#?}"),
    }
}

#[tokio::test]
async fn watch_delivers_service_status_and_endpointslice_events() {
    let kube = KubeApi::start();
    let client = kube.client().await;
    let ns = kube.namespace().await;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client, &ns);

    let mut service_events = watcher(services.clone(), watcher::Config::default()).boxed();
    let mut slice_events = watcher(slices.clone(), watcher::Config::default()).boxed();
    // The initial (empty) list is done: everything after this is a live event.
    next_matching(&mut service_events, "services InitDone", |e| {
        matches!(e, watcher::Event::InitDone)
    })
    .await;
    next_matching(&mut slice_events, "slices InitDone", |e| {
        matches!(e, watcher::Event::InitDone)
    })
    .await;

    let created = services
        .create(&PostParams::default(), &load_balancer("web", &ns))
        .await
        .expect("creating Service web");
    let cluster_ip = created.spec.as_ref().and_then(|s| s.cluster_ip.clone());
    assert!(
        cluster_ip.is_some(),
        "the apiserver allocated no ClusterIP: {created:?}"
    );
    let event = next_matching(
        &mut service_events,
        "Apply of Service web",
        |e| matches!(e, watcher::Event::Apply(s) if s.name_any() == "web"),
    )
    .await;
    let watcher::Event::Apply(seen) = event else {
        unreachable!()
    };
    assert_eq!(seen.uid(), created.uid());
    assert!(
        ingress_ips(&seen).is_empty(),
        "no IP assigned yet: {seen:?}"
    );

    // What an IPAM controller does: write the VIP through the status subresource.
    let status = serde_json::json!({
        "status": { "loadBalancer": { "ingress": [{ "ip": "192.0.2.10" }] } }
    });
    let patched = services
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patching Service web's status");
    assert_eq!(ingress_ips(&patched), ["192.0.2.10"]);
    next_matching(
        &mut service_events,
        "Service web with ingress 192.0.2.10",
        |e| matches!(e, watcher::Event::Apply(s) if ingress_ips(s) == ["192.0.2.10"]),
    )
    .await;

    let slice = EndpointSlice {
        metadata: ObjectMeta {
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".to_owned(),
                "web".to_owned(),
            )])),
            ..meta("web-abc12", &ns)
        },
        address_type: "IPv4".to_owned(),
        endpoints: vec![Endpoint {
            addresses: vec!["10.244.1.7".to_owned()],
            node_name: Some("node-21".to_owned()),
            ..Endpoint::default()
        }],
        ports: None,
    };
    slices
        .create(&PostParams::default(), &slice)
        .await
        .expect("creating EndpointSlice");
    let event = next_matching(
        &mut slice_events,
        "Apply of EndpointSlice web-abc12",
        |e| matches!(e, watcher::Event::Apply(s) if s.name_any() == "web-abc12"),
    )
    .await;
    let watcher::Event::Apply(seen) = event else {
        unreachable!()
    };
    assert_eq!(
        seen.labels()
            .get("kubernetes.io/service-name")
            .map(String::as_str),
        Some("web")
    );
    assert_eq!(seen.endpoints[0].addresses, ["10.244.1.7"]);

    services
        .delete("web", &Default::default())
        .await
        .expect("deleting Service web");
    next_matching(
        &mut service_events,
        "Delete of Service web",
        |e| matches!(e, watcher::Event::Delete(s) if s.name_any() == "web"),
    )
    .await;
}

/// Whether a live (not zombie) process `pid` still runs something that mentions `dir`.
fn runs_in(pid: u32, dir: &Path) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy())
}

fn port_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

fn assert_torn_down(pids: [u32; 2], ports: [u16; 3], dir: &Path) {
    for pid in pids {
        assert!(!runs_in(pid, dir), "process {pid} survived the drop");
    }
    for port in ports {
        assert!(port_free(port), "port {port} still in use after the drop");
    }
    assert!(!dir.exists(), "{} survived the drop", dir.display());
}

#[test]
fn drop_kills_both_processes_frees_the_ports_and_removes_the_dir() {
    let kube = KubeApi::start();
    let (pids, ports, dir) = (kube.pids(), kube.ports(), kube.dir().to_owned());
    // The checks below can fail: while the harness lives they all see the opposite.
    for pid in pids {
        assert!(
            runs_in(pid, &dir),
            "process {pid} is not running before the drop"
        );
    }
    for port in ports {
        assert!(
            !port_free(port),
            "port {port} is not listening before the drop"
        );
    }
    assert!(dir.join("admin.kubeconfig").is_file());
    drop(kube);
    assert_torn_down(pids, ports, &dir);
}

#[test]
fn a_panicking_test_still_tears_everything_down() {
    let (sender, receiver) = std::sync::mpsc::channel();
    let outcome = std::panic::catch_unwind(move || {
        let kube = KubeApi::start();
        sender
            .send((kube.pids(), kube.ports(), kube.dir().to_owned()))
            .expect("sending");
        panic!("the test fails while the apiserver runs");
    });
    assert!(outcome.is_err(), "the closure panics");
    let (pids, ports, dir) = receiver.recv().expect("the harness started");
    assert_torn_down(pids, ports, &dir);
}

#[tokio::test]
async fn restarting_the_apiserver_keeps_data_ports_and_clients() {
    let mut kube = KubeApi::start();
    let client = kube.client().await;
    let ns = kube.namespace().await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let before = config_maps
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: meta("survivor", &ns),
                data: Some(BTreeMap::from([("k".to_owned(), "v".to_owned())])),
                ..ConfigMap::default()
            },
        )
        .await
        .expect("creating ConfigMap survivor");
    let [_, old_pid] = kube.pids();
    let url = kube.url();

    let started = Instant::now();
    kube.restart_apiserver();
    eprintln!("kube-apiserver restart took {:?}", started.elapsed());

    let [_, new_pid] = kube.pids();
    assert_ne!(old_pid, new_pid, "the apiserver process was not replaced");
    assert!(
        !runs_in(old_pid, kube.dir()),
        "the old apiserver {old_pid} still runs"
    );
    assert_eq!(kube.url(), url, "the apiserver moved");
    // The client made before the restart reconnects; a fresh one reads the same kubeconfig.
    for client in [client, kube.client().await] {
        let after = Api::<ConfigMap>::namespaced(client, &ns)
            .get("survivor")
            .await
            .expect("ConfigMap survivor after the restart");
        assert_eq!(after.uid(), before.uid());
        assert_eq!(after.data, before.data);
    }
}

/// The code of the first thing a watch from `version` yields: the error of the call itself or
/// the first `ERROR` event; `None` when it delivers a normal event instead.
async fn watch_error_code(api: &Api<ConfigMap>, version: &str) -> Option<u16> {
    let stream = match api
        .watch(&WatchParams::default().timeout(10), version)
        .await
    {
        Ok(stream) => stream,
        Err(kube::Error::Api(status)) => return Some(status.code),
        Err(e) => panic!("watch from {version}: {e}"),
    };
    let mut stream = std::pin::pin!(stream);
    let first = tokio::time::timeout(EVENT_TIMEOUT, stream.next())
        .await
        .expect("the watch says something")
        .expect("the watch is not empty");
    match first {
        Ok(WatchEvent::Error(status)) => Some(status.code),
        Err(kube::Error::Api(status)) => Some(status.code),
        Ok(_) => None,
        Err(e) => panic!("watch from {version}: {e}"),
    }
}

#[tokio::test]
async fn compaction_makes_a_watch_from_an_old_version_410_gone() {
    let kube = KubeApi::start();
    let ns = kube.namespace().await;
    let config_maps: Api<ConfigMap> = Api::namespaced(kube.client().await, &ns);
    let first = config_maps
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: meta("counter", &ns),
                ..ConfigMap::default()
            },
        )
        .await
        .expect("creating ConfigMap counter");
    let old_version = first.resource_version().expect("a resourceVersion");
    for n in 0..3 {
        let patch = serde_json::json!({ "data": { "n": n.to_string() } });
        config_maps
            .patch("counter", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("updating ConfigMap counter");
    }
    // Before compaction the old version is still watchable: it replays the updates.
    assert_eq!(watch_error_code(&config_maps, &old_version).await, None);

    let revision = kube.etcdctl_compact();
    assert!(
        revision
            > old_version
                .parse::<i64>()
                .expect("a numeric resourceVersion"),
        "compacted at {revision}, not past {old_version}"
    );
    assert_eq!(
        watch_error_code(&config_maps, &old_version).await,
        Some(410)
    );

    // A list followed by a watch from its version, what a watcher does after a 410, works.
    let list = config_maps
        .list(&ListParams::default())
        .await
        .expect("listing ConfigMaps");
    let fresh = list
        .metadata
        .resource_version
        .expect("a list resourceVersion");
    assert_eq!(list.items.len(), 1);
    let mut stream = std::pin::pin!(
        config_maps
            .watch(&WatchParams::default().timeout(10), &fresh)
            .await
            .expect("watch from the fresh version")
    );
    let patch = serde_json::json!({ "data": { "n": "after" } });
    config_maps
        .patch("counter", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("updating ConfigMap counter");
    let event = tokio::time::timeout(EVENT_TIMEOUT, stream.next())
        .await
        .expect("an event after the fresh watch")
        .expect("the watch is not empty")
        .expect("no watch error");
    assert!(matches!(event, WatchEvent::Modified(_)), "{event:?}");
}

async fn list_services_code(client: &Client, ns: &str) -> Option<u16> {
    match Api::<Service>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
    {
        Ok(_) => None,
        Err(kube::Error::Api(status)) => Some(status.code),
        Err(e) => panic!("listing services in {ns}: {e}"),
    }
}

#[tokio::test]
async fn the_limited_user_needs_an_rbac_grant() {
    let kube = KubeApi::start();
    let admin = kube.client().await;
    let limited = kube.limited_client().await;
    let (ns, other_ns) = (kube.namespace().await, kube.namespace().await);

    assert_eq!(list_services_code(&limited, &ns).await, Some(403));

    let role = Role {
        metadata: meta("service-reader", &ns),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["services".to_owned()]),
            verbs: ["get", "list", "watch"].map(str::to_owned).to_vec(),
            ..PolicyRule::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .expect("creating the Role");
    let binding = RoleBinding {
        metadata: meta("service-reader", &ns),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: "service-reader".to_owned(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "User".to_owned(),
            name: LIMITED_USER.to_owned(),
            namespace: None,
        }]),
    };
    Api::<RoleBinding>::namespaced(admin, &ns)
        .create(&PostParams::default(), &binding)
        .await
        .expect("creating the RoleBinding");

    // The authorizer reads RBAC objects through an informer: the grant lands shortly after.
    let deadline = Instant::now() + Duration::from_secs(10);
    while list_services_code(&limited, &ns).await == Some(403) {
        assert!(
            Instant::now() < deadline,
            "the RoleBinding never took effect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(list_services_code(&limited, &ns).await, None);
    // The grant is exactly that: not another namespace, not another resource.
    assert_eq!(list_services_code(&limited, &other_ns).await, Some(403));
    let slices = Api::<EndpointSlice>::namespaced(limited, &ns)
        .list(&ListParams::default())
        .await;
    assert!(
        matches!(&slices, Err(kube::Error::Api(status)) if status.code == 403),
        "{slices:?}"
    );
}
