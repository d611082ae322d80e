//! The real agent binary watching the real kube-apiserver from the harness, as the RBAC-limited
//! user with only get/list/watch on services, endpointslices and nodes: every Service and
//! EndpointSlice change reaches `/status`; an apiserver outage and a 410 Gone relist keep the
//! state (never an emptied snapshot in between) and then converge.
//!
//! The apiserver listens on 127.0.0.1 in the root network namespace, so the agent runs there
//! too, attached to the host end of a veth pair with a per-test name (deleted on drop). Nothing
//! on the host's real interfaces is touched, and no port forwarding into a netns is needed.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::{
    core::v1::{Service, ServicePort, ServiceSpec},
    discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use testkit::{
    KubeApi,
    agent::{self, BpffsDir},
    kube::LIMITED_USER,
    netlab::HostVeth,
    process::{Daemon, wait_for},
};

const NODE: &str = "node-k";
/// Generous: after an outage the watchers retry on the default backoff (up to 30 s).
const CONVERGE: Duration = Duration::from_secs(60);

fn get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    vipwire::admin::client::get(admin, path).ok()
}

fn status(admin: SocketAddr) -> Option<Value> {
    let (code, body) = get(admin, "/status")?;
    (code == 200).then(|| serde_json::from_str(&body).expect("/status is JSON"))
}

fn owned_l2(status: &Value) -> Vec<String> {
    status["owned"]["l2"]
        .as_array()
        .expect("owned.l2")
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// Waits until `/status` satisfies `check`; on timeout, panics with the agent log and status.
fn wait_status(agent: &mut Daemon, admin: SocketAddr, what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = std::time::Instant::now() + CONVERGE;
    loop {
        agent.assert_running();
        let current = status(admin);
        if current.as_ref().is_some_and(&check) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; status: {current:#?}\nagent log:\n{}",
            agent.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn readyz(admin: SocketAddr) -> Option<u16> {
    get(admin, "/readyz").map(|(code, _)| code)
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        ..ObjectMeta::default()
    }
}

/// Exactly the RBAC the agent needs: get/list/watch on services, endpointslices and nodes.
async fn grant_agent_rbac(admin: &Client) {
    let rule = |group: &str, resource: &str| PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(vec![resource.to_owned()]),
        verbs: ["get", "list", "watch"].map(str::to_owned).to_vec(),
        ..PolicyRule::default()
    };
    let role = ClusterRole {
        metadata: meta("vipwire-agent", None),
        rules: Some(vec![
            rule("", "services"),
            rule("discovery.k8s.io", "endpointslices"),
            rule("", "nodes"),
        ]),
        ..ClusterRole::default()
    };
    Api::<ClusterRole>::all(admin.clone())
        .create(&PostParams::default(), &role)
        .await
        .expect("creating the ClusterRole");
    let binding = ClusterRoleBinding {
        metadata: meta("vipwire-agent", None),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "ClusterRole".to_owned(),
            name: "vipwire-agent".to_owned(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "User".to_owned(),
            name: LIMITED_USER.to_owned(),
            namespace: None,
        }]),
    };
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("creating the ClusterRoleBinding");
}

/// A LoadBalancer Service with `vip` in its status, plus a slice with one endpoint on [`NODE`].
async fn create_service(admin: &Client, ns: &str, name: &str, vip: &str) {
    let service = Service {
        metadata: meta(name, Some(ns)),
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".to_owned()),
            external_traffic_policy: Some("Cluster".to_owned()),
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
    };
    Api::<Service>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &service)
        .await
        .expect("creating the Service");
    set_ingress(admin, ns, name, vip).await;
    Api::<EndpointSlice>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &slice(ns, name, true))
        .await
        .expect("creating the EndpointSlice");
}

fn slice(ns: &str, service: &str, ready: bool) -> EndpointSlice {
    let mut metadata = meta(&format!("{service}-1"), Some(ns));
    metadata.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".to_owned(),
        service.to_owned(),
    )]));
    EndpointSlice {
        metadata,
        address_type: "IPv4".to_owned(),
        endpoints: vec![Endpoint {
            addresses: vec!["10.244.0.10".to_owned()],
            node_name: Some(NODE.to_owned()),
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(ready),
                terminating: Some(false),
            }),
            ..Endpoint::default()
        }],
        ports: Some(vec![EndpointPort {
            name: Some("http".to_owned()),
            port: Some(8080),
            protocol: Some("TCP".to_owned()),
            ..EndpointPort::default()
        }]),
    }
}

async fn set_ingress(admin: &Client, ns: &str, name: &str, vip: &str) {
    Api::<Service>::namespaced(admin.clone(), ns)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "loadBalancer": { "ingress": [{ "ip": vip }] } } })),
        )
        .await
        .expect("setting the Service's ingress");
}

struct Lab {
    kube: KubeApi,
    admin_client: Client,
    ns: String,
    admin: SocketAddr,
    agent: Daemon,
    _veth: HostVeth,
    _bpffs: BpffsDir,
}

async fn lab(tag: &str) -> Lab {
    let kube = KubeApi::start();
    let admin_client = kube.client().await;
    let ns = kube.namespace().await;
    grant_agent_rbac(&admin_client).await;
    testkit::kube::create_ready_node(&admin_client, NODE).await;
    let veth = HostVeth::new("vk", tag);
    let bpffs = BpffsDir::new(&format!("kube-{tag}"));
    let admin = agent::free_loopback_port();
    let log = kube.dir().join(format!("agent-{tag}.log"));
    let mut command = Command::new(agent::binary());
    command
        .args(["run", "--node-name", NODE, "--interface", veth.name()])
        .args(["--bpffs-dir", bpffs.as_str(), "--admin", &admin.to_string()])
        .args(["--heartbeat-timeout", "2s", "--cleanup-on-exit"])
        .env("KUBECONFIG", kube.limited_kubeconfig())
        .env("RUST_LOG", "info");
    let mut agent = Daemon::spawn("vipwire (kube)", command, &log);
    wait_status(&mut agent, admin, "the first snapshot", |s| {
        s["ready"] == json!(true)
    });
    Lab {
        kube,
        admin_client,
        ns,
        admin,
        agent,
        _veth: veth,
        _bpffs: bpffs,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn service_and_endpointslice_changes_reach_status() {
    let mut lab = lab("a").await;
    let (client, ns, admin) = (lab.admin_client.clone(), lab.ns.clone(), lab.admin);
    assert_eq!(readyz(admin), Some(200));

    create_service(&client, &ns, "web", "203.0.113.10").await;
    wait_status(&mut lab.agent, admin, "the VIP owned", |s| {
        owned_l2(s) == ["203.0.113.10"] && s["frontends"].as_array().unwrap().len() == 1
    });

    // Service update: the VIP moves.
    set_ingress(&client, &ns, "web", "203.0.113.11").await;
    wait_status(&mut lab.agent, admin, "the VIP moved", |s| {
        owned_l2(s) == ["203.0.113.11"]
    });

    // EndpointSlice update: no ready endpoint anywhere → withdrawn; ready again → owned.
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), &ns);
    slices
        .replace(
            "web-1",
            &PostParams::default(),
            &with_version(&slices, "web", false).await,
        )
        .await
        .expect("replacing the slice");
    wait_status(&mut lab.agent, admin, "the VIP withdrawn", |s| {
        owned_l2(s).is_empty() && s["frontends"][0]["active_backends"] == json!(0)
    });
    slices
        .replace(
            "web-1",
            &PostParams::default(),
            &with_version(&slices, "web", true).await,
        )
        .await
        .expect("replacing the slice");
    wait_status(&mut lab.agent, admin, "the VIP owned again", |s| {
        owned_l2(s) == ["203.0.113.11"] && s["frontends"][0]["active_backends"] == json!(1)
    });

    // EndpointSlice delete, then Service delete.
    slices
        .delete("web-1", &DeleteParams::default())
        .await
        .expect("deleting the slice");
    wait_status(&mut lab.agent, admin, "the slice gone", |s| {
        owned_l2(s).is_empty() && s["objects"]["endpoint_slices"] == json!(0)
    });
    Api::<Service>::namespaced(client.clone(), &ns)
        .delete("web", &DeleteParams::default())
        .await
        .expect("deleting the Service");
    wait_status(&mut lab.agent, admin, "the Service gone", |s| {
        // Only default/kubernetes (ClusterIP) remains.
        s["frontends"].as_array().unwrap().is_empty() && s["objects"]["services"] == json!(1)
    });
    lab.agent.assert_running();
}

async fn with_version(api: &Api<EndpointSlice>, service: &str, ready: bool) -> EndpointSlice {
    let current = api
        .get(&format!("{service}-1"))
        .await
        .expect("reading the slice");
    let mut next = slice(
        current.metadata.namespace.as_deref().unwrap(),
        service,
        ready,
    );
    next.metadata.resource_version = current.metadata.resource_version;
    next
}

/// Samples `/status` in the background and records any answer that lacks `vip` (an emptied
/// or partial snapshot would show up here).
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, Vec<Value>)>>,
}

impl Sampler {
    fn start(admin: SocketAddr, vip: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut samples, mut bad) = (0, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                if let Some(s) = status(admin) {
                    samples += 1;
                    if !owned_l2(&s).iter().any(|v| v == vip) {
                        bad.push(s);
                    }
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            (samples, bad)
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (usize, Vec<Value>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("sampler")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn apiserver_outage_and_410_relist_keep_state_then_converge() {
    let mut lab = lab("b").await;
    let (client, ns, admin) = (lab.admin_client.clone(), lab.ns.clone(), lab.admin);
    create_service(&client, &ns, "web", "203.0.113.10").await;
    wait_status(&mut lab.agent, admin, "the VIP owned", |s| {
        owned_l2(s) == ["203.0.113.10"]
    });

    // Outage: not ready, state kept.
    let sampler = Sampler::start(admin, "203.0.113.10");
    lab.kube.stop_apiserver();
    wait_for("/readyz to say 503", CONVERGE, || {
        (readyz(admin) == Some(503)).then_some(())
    });
    wait_status(&mut lab.agent, admin, "the outage reported", |s| {
        s["input"]["connected"] == json!(false) && s["input"]["error"].is_string()
    });
    lab.kube.start_apiserver();
    wait_for("/readyz to say 200 again", CONVERGE, || {
        (readyz(admin) == Some(200)).then_some(())
    });
    // Converges: a change made after the outage arrives.
    create_service(&client, &ns, "api", "203.0.113.20").await;
    wait_status(&mut lab.agent, admin, "the new VIP after the outage", |s| {
        owned_l2(s) == ["203.0.113.10", "203.0.113.20"]
    });
    let relists_before = status(admin).unwrap()["input"]["relists"].as_u64().unwrap();

    // Compaction, then a restart: every watcher resumes from a compacted version, gets
    // 410 Gone and relists; the stores keep their contents until the new lists are complete.
    lab.kube.etcdctl_compact();
    lab.kube.restart_apiserver();
    wait_status(&mut lab.agent, admin, "a relist after 410 Gone", |s| {
        s["input"]["relists"].as_u64().unwrap() > relists_before && s["ready"] == json!(true)
    });
    create_service(&client, &ns, "db", "203.0.113.30").await;
    wait_status(&mut lab.agent, admin, "the new VIP after the relist", |s| {
        owned_l2(s) == ["203.0.113.10", "203.0.113.20", "203.0.113.30"]
    });
    let (samples, bad) = sampler.finish();
    assert!(samples > 20, "too few /status samples ({samples})");
    assert!(
        bad.is_empty(),
        "{} of {samples} samples lost the VIP, first: {:#?}",
        bad.len(),
        bad[0]
    );
    lab.agent.assert_running();
}
