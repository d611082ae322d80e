//! The planner told only which frontends changed must leave the maps exactly as one that
//! compares everything: on random change sequences (with cut-short applies and re-reads of
//! the maps in between), after every step a planner restarted over the same maps finds
//! nothing to do, and the planner's mirror, devices and steering view match the maps.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use super::fake::{Fake, Maps};
use crate::{
    model::{
        Backend, BackendState, DesiredService, Frontend, Protocol, Services, TargetPort,
        TrafficPolicy,
    },
    snapshot::ObjectKey,
    test_rng::Rng,
};

const SIZE: u32 = 251;
const VIPS: [&str; 4] = ["192.0.2.1", "192.0.2.2", "198.51.100.7", "2001:db8::1"];
const PORTS: [u16; 3] = [80, 443, 8080];
const ADDRS: [&str; 8] = [
    "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.1.2", "10.0.1.5", "fd00::2", "fd00::3", "fd00::4",
];
const RANGES: [&str; 3] = ["10.0.0.0/8", "192.168.1.7/24", "fd00::/8"];

fn random_frontend(rng: &mut Rng) -> Frontend {
    Frontend {
        vip: rng.pick(&VIPS).parse().unwrap(),
        port: *rng.pick(&PORTS),
        protocol: *rng.pick(&[Protocol::Tcp, Protocol::Udp]),
    }
}

fn random_service(rng: &mut Rng) -> Arc<DesiredService> {
    // Up to 16 backends: tables of 251 and of 2039 slots (two chunks).
    let mut backends: Vec<Backend> = (0..rng.below(17))
        .map(|_| Backend {
            addr: rng.pick(&ADDRS).parse().unwrap(),
            port: *rng.pick(&[8080, 9090]),
            state: if rng.chance(75) {
                BackendState::Active
            } else {
                BackendState::Draining
            },
        })
        .collect();
    // As the model gives them: sorted, one per (address, port).
    backends.sort_by_key(|b| (b.addr, b.port));
    backends.dedup_by_key(|b| (b.addr, b.port));
    Arc::new(DesiredService {
        service: ObjectKey::new("default", "web"),
        port_name: None,
        target_port: TargetPort::Number(8080),
        traffic_policy: TrafficPolicy::Local,
        session_affinity: rng.chance(20).then_some(Duration::from_secs(60)),
        source_ranges: rng.chance(20).then(|| {
            (0..rng.below(3))
                .map(|_| rng.pick(&RANGES).parse().unwrap())
                .collect()
        }),
        backends,
    })
}

/// Whether the step wrote what it should have, as far as the maps show, and whether the
/// steering view kept across plans is the one built from scratch.
fn check(fake: &mut Fake, desired: &Services, what: &str) {
    let kept = fake.planner.view();
    assert_eq!(kept, fake.planner.fresh_view(), "{what}: steering view");
    let read = fake.maps.read();
    assert_eq!(fake.mirror(), &read, "{what}: mirror differs from the maps");
    let devices: BTreeSet<u32> = read
        .backends
        .values()
        .map(|b| b.ifindex)
        .filter(|&i| i != 0)
        .collect();
    assert_eq!(fake.planner.devices(), devices, "{what}: devices");
    let mut restarted = Fake::over(SIZE, read, fake.maps.clone());
    let plan = restarted.plan(desired, None);
    assert!(
        plan.ops.is_empty(),
        "{what}: a planner comparing everything still wants {:?}",
        plan.ops
    );
    assert_eq!(
        fake.maps.services.keys().collect::<Vec<_>>(),
        desired.keys().collect::<Vec<_>>(),
        "{what}: services"
    );
}

fn run(seed: u64, steps: usize, seen: &mut [usize; 4]) {
    let mut rng = Rng(seed);
    let mut fake = Fake::new(SIZE, Maps::default().read());
    let mut desired = Services::new();
    // After a failed apply the loader re-reads the maps before the next plan.
    let mut stale = false;
    for step in 0..steps {
        let what = format!("seed {seed}, step {step}");
        let mut changed = BTreeSet::new();
        for _ in 0..1 + rng.below(3) {
            let frontend = random_frontend(&mut rng);
            changed.insert(frontend);
            match rng.below(10) {
                0..=2 => {
                    desired.remove(&frontend);
                }
                3 => {} // named but unchanged
                _ => {
                    desired.insert(frontend, random_service(&mut rng));
                }
            }
        }
        if stale || rng.chance(2) {
            fake.planner.reload(fake.maps.read());
            seen[0] += 1;
            stale = false;
        }
        let hint = if rng.chance(5) { None } else { Some(&changed) };
        let plan = fake.plan(&desired, hint);
        let limit = if !plan.ops.is_empty() && rng.chance(5) {
            seen[1] += 1;
            rng.below(plan.ops.len())
        } else {
            usize::MAX
        };
        seen[2] += plan.ops.len();
        if fake.execute(plan, limit).is_none() {
            stale = true;
            continue;
        }
        seen[3] += fake.maps.services.len();
        check(&mut fake, &desired, &what);
    }
}

#[test]
fn incremental_plans_leave_the_maps_as_full_ones_would() {
    // Re-reads, cut-short applies, operations, services present.
    let mut seen = [0; 4];
    for seed in 1..=8u64 {
        run(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), 250, &mut seen);
    }
    assert!(seen[0] > 50 && seen[1] > 50, "{seen:?}");
    assert!(seen[2] > 5_000 && seen[3] > 20_000, "{seen:?}");
}
