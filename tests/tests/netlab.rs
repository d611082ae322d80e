//! The lab harness itself: namespaces talk over veths, and nothing outlives the lab (drop,
//! panic, or a test process that was killed outright).

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    path::Path,
    process::Command,
    sync::Mutex,
    time::Duration,
};

use testkit::{
    NetLab,
    netlab::netns_exists,
    process::{poll_until, wait_for},
};

#[test]
fn veth_pair_carries_ipv4_and_ipv6() {
    let mut lab = NetLab::new();
    let a = lab.netns("ping-a");
    let b = lab.netns("ping-b");
    lab.veth((&a, "eth0"), (&b, "eth0"));
    a.addr("eth0", "10.77.0.1/30");
    b.addr("eth0", "10.77.0.2/30");
    a.addr("eth0", "fd00:77::1/64");
    b.addr("eth0", "fd00:77::2/64");

    assert!(a.ping("10.77.0.2"), "IPv4 a -> b");
    assert!(b.ping("10.77.0.1"), "IPv4 b -> a");
    assert!(a.ping("fd00:77::2"), "IPv6 a -> b");
    assert!(b.ping("fd00:77::1"), "IPv6 b -> a");
    assert_ne!(a.mac("eth0"), b.mac("eth0"));
    assert!(a.ifindex("eth0") > 1, "eth0 is not lo");
}

#[test]
fn drop_removes_namespaces_and_kills_their_processes() {
    let mut lab = NetLab::new();
    let ns = lab.netns("drop");
    let other = lab.netns("drop-other");
    lab.veth((&ns, "eth0"), (&other, "eth0"));
    let names = [ns.name().to_owned(), other.name().to_owned()];
    assert!(names.iter().all(|n| netns_exists(n)));

    // Our own child, and a daemonized grandchild that only the namespace still ties to us.
    let mut child = ns
        .command("sleep")
        .arg("600")
        .spawn()
        .expect("spawning sleep in the namespace");
    let out = ns.run_ok("sh", &["-c", "sleep 600 >/dev/null 2>&1 & echo $!"]);
    let orphan: u32 = out.trim().parse().expect("pid of the background sleep");
    assert!(Path::new(&format!("/proc/{orphan}")).exists());

    drop(lab);

    for name in &names {
        assert!(!netns_exists(name), "{name} survived the lab");
    }
    let status = wait_for("the child to die", Duration::from_secs(5), || {
        child.try_wait().ok().flatten()
    });
    assert!(!status.success(), "killed, not exited: {status}");
    // The orphan is reaped by init once killed.
    wait_for("the orphan to die", Duration::from_secs(5), || {
        (!is_alive(orphan)).then_some(())
    });
}

#[test]
fn panic_inside_a_test_still_removes_namespaces() {
    let names = Mutex::new(Vec::new());
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut lab = NetLab::new();
        let a = lab.netns("panic-a");
        let b = lab.netns("panic-b");
        lab.veth((&a, "eth0"), (&b, "eth0"));
        names
            .lock()
            .unwrap()
            .extend([a.name().to_owned(), b.name().to_owned()]);
        panic!("deliberate panic inside a lab (expected in this test's output)");
    }));
    assert!(result.is_err(), "the closure panicked");
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 2);
    for name in &names {
        assert!(!netns_exists(name), "{name} survived the panic");
    }
}

#[test]
fn new_lab_sweeps_namespaces_of_dead_test_processes() {
    // A PID that surely belongs to no live process: one we just reaped.
    let mut dead = Command::new("true").spawn().expect("spawning true");
    let dead_pid = dead.id();
    dead.wait().expect("reaping true");
    assert!(!Path::new(&format!("/proc/{dead_pid}")).exists());

    let stale = format!("vwt{dead_pid}x0-stale{}", std::process::id());
    // A process in its own network namespace, named only afterwards (`ip netns attach`): as a
    // killed run leaves its daemons behind. Naming it last matters: a NetLab::new() in a
    // parallel test may sweep the name at any moment, and must find the process inside.
    let mut sleeper = Command::new("unshare")
        .args(["--net", "sleep", "600"])
        .spawn()
        .expect("starting sleep in a new network namespace (unshare)");
    let pid = sleeper.id().to_string();
    wait_for("unshare to exec sleep", Duration::from_secs(5), || {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == "sleep").then_some(())
    });
    let status = Command::new("ip")
        .args(["netns", "attach", &stale, &pid])
        .status()
        .expect("running ip netns attach");
    assert!(status.success(), "naming the sleeper's namespace {stale}");

    let _lab = NetLab::new();

    let swept = poll_until(Duration::from_secs(5), || {
        (!netns_exists(&stale)).then_some(())
    });
    if swept.is_none() {
        let _ = sleeper.kill();
        let _ = Command::new("ip").args(["netns", "del", &stale]).status();
        panic!("NetLab::new() left the stale namespace {stale}");
    }
    let status = wait_for(
        "the stale namespace's process to die",
        Duration::from_secs(5),
        || sleeper.try_wait().ok().flatten(),
    );
    assert!(!status.success(), "killed, not exited: {status}");
}

/// Alive and not a zombie.
fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // "pid (comm) S ...": the state follows the last ')'.
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_owned();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}
