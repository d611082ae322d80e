//! Pinned maps across builds: a contract map pinned with another layout than this build's (an
//! older agent's backends map with fewer entries, say) is replaced, with a warning naming it,
//! not reused as if it matched.

use std::time::Duration;

use testkit::{
    NetLab,
    agent::{self, BpffsDir},
    tools,
};
use vipwire_common::{
    l4::{BACKENDS_MAX_ENTRIES, BackendValue},
    maps,
};

#[test]
fn a_pinned_map_with_another_layout_is_replaced() {
    let mut lab = NetLab::new();
    let (node, manifests) = agent::manifests_node(&mut lab);

    let bpffs = BpffsDir::new("pins");
    std::fs::create_dir_all(bpffs.path()).unwrap();
    let pin = bpffs.path().join(maps::BACKENDS);
    let pin = pin.to_str().unwrap();
    let bpftool = tools::require("bpftool");
    let made = std::process::Command::new(&bpftool)
        .args([
            "map", "create", pin, "type", "hash", "key", "4", "value", "8",
        ])
        .args(["entries", "16", "name", "old_backends"])
        .output()
        .expect("running bpftool");
    assert!(made.status.success(), "bpftool map create: {made:?}");

    let start = |log: &str| agent::run_on_manifests(&node, &manifests, &bpffs, &lab.path(log));
    let (mut agent, log) = start("agent.log");
    assert!(
        log.lines()
            .any(|l| l.contains("pinned map differs") && l.contains(maps::BACKENDS)),
        "a warning names the replaced map; log:\n{log}"
    );
    let shown = std::process::Command::new(&bpftool)
        .args(["-j", "map", "show", "pinned", pin])
        .output()
        .expect("running bpftool");
    let info: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("bpftool JSON");
    assert_eq!(info["type"], "array");
    assert_eq!(info["bytes_value"], size_of::<BackendValue>());
    assert_eq!(info["max_entries"], BACKENDS_MAX_ENTRIES);
    let status = agent.stop(Duration::from_secs(5)).expect("exit status");
    assert!(status.success(), "clean exit: {status}");

    // The next agent finds every map as this build makes it, and reuses them all.
    let (mut agent, log) = start("agent2.log");
    assert!(
        !log.contains("pinned map differs"),
        "a map this build pinned was not reused; log:\n{log}"
    );
    agent.stop(Duration::from_secs(5));
}
