//! The synthetic cluster, and the two ways it reaches the agent: the apiserver and a
//! manifests directory.

use std::{collections::BTreeMap, path::Path, process::Command, time::Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::{
    core::v1::{Service, ServicePort, ServiceSpec},
    discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::json;
use testkit::{
    KubeApi,
    netlab::HostVeth,
    synthetic::{self, ENDPOINTS, endpoint_ip, name, vip},
};

use super::{
    CHANGES, CREATE_CONCURRENCY, NODE, PER_FILE, Run, SIZES,
    session::{Write, run_agent},
};

// ---------------------------------------------------------------------------------------------
// The synthetic cluster.

/// Services 0..CHANGES/2 are the ones whose slices change.
pub(super) fn changed_service(change: usize) -> (usize, bool) {
    (change / 2, change % 2 == 1)
}

// ---------------------------------------------------------------------------------------------
// Through the apiserver.

pub(super) async fn kube_runs(binary: &Path, veth: &HostVeth) -> Vec<Run> {
    let kube = KubeApi::start();
    let client = kube.client().await;
    let ns = kube.namespace().await;
    testkit::kube::create_ready_node(&client, NODE).await;
    let mut runs = Vec::new();
    let mut created = 0;
    for services in SIZES {
        let started = Instant::now();
        stream::iter(created..services)
            .map(|i| create_service(&client, &ns, i))
            .buffer_unordered(CREATE_CONCURRENCY)
            .collect::<Vec<()>>()
            .await;
        eprintln!(
            "agent bench: {} Services created in the apiserver in {:?}",
            services - created,
            started.elapsed()
        );
        created = services;
        let mut command = Command::new(binary);
        command.env("KUBECONFIG", kube.kubeconfig());
        let slices = Api::<EndpointSlice>::namespaced(client.clone(), &ns);
        let run = run_agent(command, &[], services, veth, "kube", |change| {
            let (i, ready) = changed_service(change);
            let slices = slices.clone();
            Write::Task(tokio::spawn(async move {
                let patch = json!({ "endpoints": endpoints(i, ready) });
                slices
                    .patch(
                        &format!("{}-1", name(i)),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await
                    .expect("patching the EndpointSlice");
                Instant::now()
            }))
        });
        runs.push(run);
    }
    runs
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        ..ObjectMeta::default()
    }
}

async fn create_service(client: &Client, ns: &str, i: usize) {
    let service = Service {
        metadata: meta(&name(i), Some(ns)),
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".to_owned()),
            external_traffic_policy: Some("Cluster".to_owned()),
            // 10,000 LoadBalancer Services do not fit the NodePort range.
            allocate_load_balancer_node_ports: Some(false),
            selector: Some(BTreeMap::from([("app".to_owned(), name(i))])),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: 80,
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let services = Api::<Service>::namespaced(client.clone(), ns);
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap_or_else(|e| panic!("creating Service {}: {e}", name(i)));
    services
        .patch_status(
            &name(i),
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "status": { "loadBalancer": { "ingress": [{ "ip": vip(i) }] } } }),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("setting the ingress of {}: {e}", name(i)));
    let mut metadata = meta(&format!("{}-1", name(i)), Some(ns));
    metadata.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".to_owned(),
        name(i),
    )]));
    let slice = EndpointSlice {
        metadata,
        address_type: "IPv4".to_owned(),
        endpoints: endpoints(i, true),
        ports: Some(vec![EndpointPort {
            name: Some("http".to_owned()),
            port: Some(8080),
            protocol: Some("TCP".to_owned()),
            ..EndpointPort::default()
        }]),
    };
    Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &slice)
        .await
        .unwrap_or_else(|e| panic!("creating the slice of {}: {e}", name(i)));
}

fn endpoints(i: usize, ready: bool) -> Vec<Endpoint> {
    (0..ENDPOINTS)
        .map(|e| Endpoint {
            addresses: vec![endpoint_ip(i, e)],
            node_name: Some(NODE.to_owned()),
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(ready),
                terminating: Some(false),
            }),
            ..Endpoint::default()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Through a manifests directory.

pub(super) fn manifests_runs(binary: &Path, veth: &HostVeth) -> Vec<Run> {
    let dir = tempfile::tempdir().expect("temp dir");
    SIZES
        .iter()
        .map(|&services| {
            let manifests = dir.path().join(format!("manifests-{services}"));
            write_manifests(&manifests, services);
            let command = Command::new(binary);
            let extra = ["--manifests".to_owned(), manifests.display().to_string()];
            run_agent(command, &extra, services, veth, "manifests", |change| {
                let (i, ready) = changed_service(change);
                write_atomically(
                    &manifests,
                    &format!("churn-{i}.yaml"),
                    &service_yaml(i, ready),
                );
                Write::Done(Instant::now())
            })
        })
        .collect()
}

fn write_manifests(dir: &Path, services: usize) {
    std::fs::create_dir_all(dir).expect("creating the manifests dir");
    let node = testkit::agent::ready_node_manifest(NODE);
    std::fs::write(dir.join("node.yaml"), node).expect("writing node.yaml");
    let churned = CHANGES / 2;
    for i in 0..churned.min(services) {
        write_atomically(dir, &format!("churn-{i}.yaml"), &service_yaml(i, true));
    }
    let rest: Vec<usize> = (churned..services).collect();
    for (n, chunk) in rest.chunks(PER_FILE).enumerate() {
        let text: Vec<String> = chunk.iter().map(|&i| service_yaml(i, true)).collect();
        std::fs::write(dir.join(format!("services-{n}.yaml")), text.join("---\n"))
            .expect("writing manifests");
    }
}

fn service_yaml(i: usize, ready: bool) -> String {
    synthetic::service_manifests(i, NODE, ready)
}

/// Write then rename: the agent never reads a half-written file.
fn write_atomically(dir: &Path, file: &str, text: &str) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).expect("writing a manifest");
    std::fs::rename(&tmp, dir.join(file)).expect("renaming a manifest");
}
