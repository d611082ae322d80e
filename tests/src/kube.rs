//! A real etcd + kube-apiserver per test, envtest-style: random loopback ports, one temp dir,
//! token authentication, RBAC authorization. There is no controller-manager and no scheduler:
//! tests create EndpointSlices themselves. Both processes are killed by PID and the directory
//! is removed on drop, also when the test panics; a later run sweeps what a killed run left.
//!
//! ```no_run
//! # async fn demo() {
//! let kube = testkit::KubeApi::start(); // blocks until /readyz answers
//! let client = kube.client().await; // system:masters
//! let namespace = kube.namespace().await; // fresh, uniquely named
//! // the agent under test: `KUBECONFIG=kube.kubeconfig()`
//! # }
//! ```

use std::{
    collections::BTreeSet,
    future::Future,
    hash::{BuildHasher, RandomState},
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Namespace, Node, NodeCondition, NodeStatus};
use kube::{
    Api, Client, Config,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

use crate::{process::Daemon, tools::require};

/// The user behind [`KubeApi::limited_client`]: authenticated, in no group, so it may do only
/// what the RBAC objects a test creates grant it.
pub const LIMITED_USER: &str = "vipwire-test-limited";
/// The user behind [`KubeApi::client`], in `system:masters`.
pub const ADMIN_USER: &str = "vipwire-test-admin";

/// Temp dirs are `<tmp>/vipwire-kube-<test process PID>-<random>`, so a later run can tell
/// which ones a dead run left behind.
const DIR_PREFIX: &str = "vipwire-kube-";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const PORT_ATTEMPTS: u32 = 3;

/// One etcd + kube-apiserver pair owned by one test.
pub struct KubeApi {
    // Fields drop in declaration order: the apiserver before its etcd, the directory last.
    apiserver: Daemon,
    etcd: Daemon,
    etcd_port: u16,
    peer_port: u16,
    api_port: u16,
    admin_kubeconfig: PathBuf,
    limited_kubeconfig: PathBuf,
    apiserver_starts: u32,
    namespaces: AtomicU32,
    dir: tempfile::TempDir,
}

impl KubeApi {
    /// Starts etcd and kube-apiserver and waits (up to 60 s) until `/readyz` answers 200.
    /// Synchronous, so it works inside and outside a tokio runtime.
    ///
    /// # Panics
    /// When `etcd`, `etcdctl`, `kube-apiserver` or `openssl` is missing, or a process exits or
    /// does not get ready in time (the message carries both logs' tails).
    pub fn start() -> Self {
        require("etcdctl"); // used later by `etcdctl_compact`: fail now, not mid-test
        sweep_stale();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .expect("creating the kube temp dir");
        let (admin_token, limited_token) = (random_token(), random_token());
        std::fs::write(
            dir.path().join("tokens.csv"),
            format!(
                "{admin_token},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n\
                 {limited_token},{LIMITED_USER},{LIMITED_USER}\n"
            ),
        )
        .expect("writing tokens.csv");
        make_service_account_keys(dir.path());

        let started = Instant::now();
        let (mut etcd, etcd_port, peer_port) = start_etcd(dir.path());
        let etcd_ready = started.elapsed();

        let admin_kubeconfig = dir.path().join("admin.kubeconfig");
        let limited_kubeconfig = dir.path().join("limited.kubeconfig");
        for attempt in 1..=PORT_ATTEMPTS {
            let api_port = free_port();
            write_kubeconfig(&admin_kubeconfig, api_port, ADMIN_USER, &admin_token);
            write_kubeconfig(&limited_kubeconfig, api_port, LIMITED_USER, &limited_token);
            let mut apiserver = spawn_apiserver(dir.path(), etcd_port, api_port, attempt);
            match wait_ready(&admin_kubeconfig, &mut apiserver, &mut etcd) {
                Ok(()) => {
                    eprintln!(
                        "kube: etcd ready after {etcd_ready:?}, kube-apiserver after {:?} ({})",
                        started.elapsed(),
                        dir.path().display()
                    );
                    return Self {
                        apiserver,
                        etcd,
                        etcd_port,
                        peer_port,
                        api_port,
                        admin_kubeconfig,
                        limited_kubeconfig,
                        apiserver_starts: attempt,
                        namespaces: AtomicU32::new(0),
                        dir,
                    };
                }
                Err(log) if attempt < PORT_ATTEMPTS && log.contains("address already in use") => {}
                Err(log) => panic!("kube-apiserver exited before it was ready; log:\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// The kubeconfig of the admin user (token auth, `insecure-skip-tls-verify`), for programs
    /// under test (`KUBECONFIG=...`).
    pub fn kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// The kubeconfig of [`LIMITED_USER`].
    pub fn limited_kubeconfig(&self) -> &Path {
        &self.limited_kubeconfig
    }

    /// A client for the admin user, built from [`Self::kubeconfig`] (so the file is proven
    /// too). Call it inside a tokio runtime: the client lives on it.
    pub async fn client(&self) -> Client {
        client_from(&self.admin_kubeconfig).await
    }

    /// A client for [`LIMITED_USER`], who can do nothing until RBAC grants it something.
    pub async fn limited_client(&self) -> Client {
        client_from(&self.limited_kubeconfig).await
    }

    /// Creates a fresh, uniquely named namespace and returns its name.
    pub async fn namespace(&self) -> String {
        let name = format!("vwt-{}", self.namespaces.fetch_add(1, Ordering::Relaxed));
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(self.client().await)
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        name
    }

    /// `https://127.0.0.1:<port>`, the same across apiserver restarts.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    /// `[etcd, kube-apiserver]` (0 for an apiserver stopped by [`Self::stop_apiserver`]).
    pub fn pids(&self) -> [u32; 2] {
        [self.etcd.pid(), self.apiserver.pid()]
    }

    /// `[etcd client, etcd peer, kube-apiserver]` listening ports, all on 127.0.0.1.
    pub fn ports(&self) -> [u16; 3] {
        [self.etcd_port, self.peer_port, self.api_port]
    }

    /// The temp dir holding the etcd data, certificates, kubeconfigs and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the apiserver (SIGTERM, SIGKILL after 15 s); etcd and its data stay. Blocks the
    /// calling thread.
    pub fn stop_apiserver(&mut self) {
        self.apiserver.stop(Duration::from_secs(15));
    }

    /// Starts the apiserver again (stopping it first if it runs) on the same port, etcd,
    /// certificates and tokens, and waits until it is ready, so existing clients and
    /// kubeconfigs keep working. Blocks the calling thread: an agent running in the same
    /// process needs a multi-thread runtime to notice.
    ///
    /// # Panics
    /// When the apiserver does not get ready (with both logs' tails).
    pub fn start_apiserver(&mut self) {
        self.stop_apiserver();
        self.apiserver_starts += 1;
        self.apiserver = spawn_apiserver(
            self.dir.path(),
            self.etcd_port,
            self.api_port,
            self.apiserver_starts,
        );
        if let Err(log) = wait_ready(&self.admin_kubeconfig, &mut self.apiserver, &mut self.etcd) {
            panic!("restarted kube-apiserver exited before it was ready; log:\n{log}");
        }
    }

    /// [`Self::stop_apiserver`] then [`Self::start_apiserver`].
    pub fn restart_apiserver(&mut self) {
        self.stop_apiserver();
        self.start_apiserver();
    }

    /// Compacts etcd at its current revision (`etcdctl compact --physical`) and returns that
    /// revision: a watch from any older resourceVersion then fails with 410 Gone. The apiserver
    /// runs without a watch cache (which would otherwise keep serving old versions) and without
    /// its own periodic compaction, so this is the only compaction there is.
    pub fn etcdctl_compact(&self) -> i64 {
        let endpoints = format!("--endpoints=http://127.0.0.1:{}", self.etcd_port);
        let status = run(Command::new(require("etcdctl")).args([
            &endpoints,
            "endpoint",
            "status",
            "--write-out=json",
        ]));
        let status: serde_json::Value =
            serde_json::from_slice(&status).expect("etcdctl endpoint status: JSON");
        let revision = status[0]["Status"]["header"]["revision"]
            .as_i64()
            .unwrap_or_else(|| panic!("no revision in etcdctl endpoint status: {status}"));
        run(Command::new(require("etcdctl")).args([
            &endpoints,
            "compact",
            &revision.to_string(),
            "--physical",
        ]));
        revision
    }
}

fn start_etcd(dir: &Path) -> (Daemon, u16, u16) {
    for attempt in 1..=PORT_ATTEMPTS {
        let (client, peer) = (free_port(), free_port());
        let (client_url, peer_url) = (
            format!("http://127.0.0.1:{client}"),
            format!("http://127.0.0.1:{peer}"),
        );
        let mut command = Command::new(require("etcd"));
        command
            .arg("--name=vipwire-test")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg("--unsafe-no-fsync")
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=vipwire-test={peer_url}"));
        let mut etcd = Daemon::spawn("etcd", command, &dir.join(format!("etcd.{attempt}.log")));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if etcd_healthy(client) {
                return (etcd, client, peer);
            }
            if let Some(status) = etcd.try_wait() {
                let log = etcd.log_tail();
                assert!(
                    attempt < PORT_ATTEMPTS && log.contains("address already in use"),
                    "etcd exited ({status}); log:\n{log}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "etcd not healthy after {READY_TIMEOUT:?}; log:\n{}",
                etcd.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    unreachable!("the last attempt returns or panics")
}

/// etcd's `/health` over plain HTTP, without a client library.
fn etcd_healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut response = String::new();
    stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .and_then(|()| stream.read_to_string(&mut response))
        .is_ok()
        && response.contains("\"health\":\"true\"")
}

fn spawn_apiserver(dir: &Path, etcd_port: u16, api_port: u16, start: u32) -> Daemon {
    let path = |name: &str| dir.join(name).display().to_string();
    let mut command = Command::new(require("kube-apiserver"));
    command
        .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
        .arg("--bind-address=127.0.0.1")
        .arg("--advertise-address=127.0.0.1")
        .arg(format!("--secure-port={api_port}"))
        .arg(format!("--cert-dir={}", path("certs")))
        .arg(format!("--service-account-key-file={}", path("sa.pub")))
        .arg(format!(
            "--service-account-signing-key-file={}",
            path("sa.key")
        ))
        .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
        .arg(format!("--token-auth-file={}", path("tokens.csv")))
        .arg("--authorization-mode=RBAC")
        .arg("--service-cluster-ip-range=10.96.0.0/16")
        // The `kubernetes` Service's endpoint would be 127.0.0.1, which validation rejects
        // (an error every 10 s in the log); nothing here needs that endpoint.
        .arg("--endpoint-reconciler-type=none")
        // No controller-manager creates the `default` ServiceAccount this plugin insists on.
        .arg("--disable-admission-plugins=ServiceAccount")
        // Watches go to etcd, so `etcdctl_compact` really makes old resourceVersions 410 Gone.
        .arg("--watch-cache=false")
        // Compaction happens when a test asks for it, not every 5 minutes.
        .arg("--etcd-compaction-interval=0");
    Daemon::spawn(
        "kube-apiserver",
        command,
        &dir.join(format!("kube-apiserver.{start}.log")),
    )
}

/// Polls `/readyz` as the admin until it answers 200. `Err(log tail)` when the apiserver
/// exits first; panics with both logs on timeout or when etcd dies.
fn wait_ready(kubeconfig: &Path, apiserver: &mut Daemon, etcd: &mut Daemon) -> Result<(), String> {
    block_on(async move {
        let client = client_from(kubeconfig).await;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = apiserver.try_wait() {
                return Err(format!("({status})\n{}", apiserver.log_tail()));
            }
            etcd.assert_running();
            let request = http::Request::get("/readyz?verbose")
                .body(Vec::new())
                .expect("a GET request");
            let last =
                match tokio::time::timeout(Duration::from_secs(5), client.request_text(request))
                    .await
                {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "no answer within 5 s".to_owned(),
                };
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready after {READY_TIMEOUT:?}: {last}\n\
                 kube-apiserver log:\n{}\netcd log:\n{}",
                apiserver.log_tail(),
                etcd.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

async fn client_from(kubeconfig: &Path) -> Client {
    let parsed = Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("reading {}: {e}", kubeconfig.display()));
    let config = Config::from_custom_kubeconfig(parsed, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kube config from {}: {e}", kubeconfig.display()));
    Client::try_from(config).unwrap_or_else(|e| panic!("kube client: {e}"))
}

fn write_kubeconfig(path: &Path, api_port: u16, user: &str, token: &str) {
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: vipwire-test
  cluster:
    server: https://127.0.0.1:{api_port}
    insecure-skip-tls-verify: true
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: vipwire-test
  context:
    cluster: vipwire-test
    user: {user}
    namespace: default
current-context: vipwire-test
"
    );
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// The key pair the apiserver signs (and checks) service-account tokens with.
fn make_service_account_keys(dir: &Path) {
    for args in [
        "genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out sa.key",
        "pkey -in sa.key -pubout -out sa.pub",
    ] {
        run(Command::new(require("openssl"))
            .current_dir(dir)
            .args(args.split(' ')));
    }
}

/// Runs `future` to completion on a fresh runtime in its own thread, so the synchronous API
/// works both inside a tokio runtime and outside one. A panic in `future` is passed on as is.
fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime")
                    .block_on(future)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn run(command: &mut Command) -> Vec<u8> {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// A port that is free now, below the kernel's ephemeral range (32768 and up) so that no
/// outgoing connection takes it before the daemon binds it, and never handed out twice in
/// this process. Another process can still race us: the callers retry on "address in use".
fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = 20_000 + (random_u64() % 10_000) as u16;
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !given.contains(&port) && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
}

fn random_u64() -> u64 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    RandomState::new().hash_one((COUNTER.fetch_add(1, Ordering::Relaxed), Instant::now()))
}

fn random_token() -> String {
    format!("{:016x}{:016x}", random_u64(), random_u64())
}

/// Kills (by PID) the etcd and apiserver processes of test processes that no longer exist,
/// and removes their temp dirs.
fn sweep_stale() {
    let owner_dead = |name: &str| {
        name.strip_prefix(DIR_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    let stale: Vec<PathBuf> = entries
        .flatten()
        .filter(|entry| owner_dead(&entry.file_name().to_string_lossy()))
        .map(|entry| entry.path())
        .collect();
    if stale.is_empty() {
        return;
    }
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if stale
            .iter()
            .any(|dir| cmdline.contains(&*dir.to_string_lossy()))
        {
            // SAFETY: kill(2) has no memory-safety preconditions; the process is one of ours
            // (its command line names our temp dir) whose test process is gone.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    for dir in stale {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Creates Node `name` and marks it Ready through the status subresource (no kubelet here).
pub async fn create_ready_node(client: &kube::Client, name: &str) {
    let nodes = kube::Api::<Node>::all(client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..Node::default()
    };
    nodes
        .create(&PostParams::default(), &node)
        .await
        .unwrap_or_else(|e| panic!("creating Node {name}: {e}"));
    let status = NodeStatus {
        conditions: Some(vec![NodeCondition {
            type_: "Ready".to_owned(),
            status: "True".to_owned(),
            ..NodeCondition::default()
        }]),
        ..NodeStatus::default()
    };
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await
        .unwrap_or_else(|e| panic!("marking Node {name} Ready: {e}"));
}
