use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::{
    api::core::v1::{Node, Service},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::Publisher;
use crate::{
    snapshot::{ObjectKey, Snapshot},
    test_rng::Rng,
};

fn service(name: &str, version: usize) -> Arc<Service> {
    Arc::new(Service {
        metadata: ObjectMeta {
            namespace: Some("a".into()),
            name: Some(name.into()),
            resource_version: Some(version.to_string()),
            ..ObjectMeta::default()
        },
        ..Service::default()
    })
}

fn node(name: &str, version: usize) -> Arc<Node> {
    Arc::new(Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            resource_version: Some(version.to_string()),
            ..ObjectMeta::default()
        },
        ..Node::default()
    })
}

/// Every key whose object differs between the two snapshots is in the change set (when one
/// is given), and the change set is given across at least one commit.
fn check_changes(held: &Snapshot, now: &Snapshot, what: &str) -> bool {
    let Some(keys) = now.changed_since(held) else {
        return false;
    };
    let all: std::collections::BTreeSet<&ObjectKey> =
        held.services.keys().chain(now.services.keys()).collect();
    for key in all {
        if held.services.get(key) != now.services.get(key) {
            assert!(
                keys.services.contains(key),
                "{what}: {key} not in the change set"
            );
        }
    }
    for name in held.nodes.keys().chain(now.nodes.keys()) {
        if held.nodes.get(name) != now.nodes.get(name) {
            assert!(
                keys.nodes.contains(name),
                "{what}: node {name} not in the change set"
            );
        }
    }
    true
}

/// Random edits, commits, discards and relists, with consumers holding random snapshots: the
/// published content is always the edits', and every change set covers what changed.
#[test]
fn published_snapshots_follow_the_edits_and_name_what_changed() {
    let (mut reused, mut keyed, mut whole) = (0, 0, 0);
    for seed in 1..=30u64 {
        let mut rng = Rng(seed * 0x9e37_79b9);
        let mut publisher = Publisher::new();
        // What the published snapshot must be, edited alongside the draft.
        let mut want = Snapshot::default();
        let mut draft_want = Snapshot::default();
        let mut held: Vec<Arc<Snapshot>> = Vec::new();
        for step in 0..400 {
            let what = format!("seed {seed}, step {step}");
            let name = format!("s{}", rng.below(12));
            let key = ObjectKey::new("a", name.as_str());
            match rng.below(20) {
                0..=8 => {
                    // Few versions: an edit often puts back an equal object.
                    let object = service(&name, rng.below(3));
                    publisher
                        .draft()
                        .services()
                        .insert(key.clone(), object.clone());
                    draft_want.services.insert(key, object);
                }
                9..=11 => {
                    let removed = publisher.draft().services().remove(&key);
                    assert_eq!(
                        removed.is_some(),
                        draft_want.services.remove(&key).is_some(),
                        "{what}"
                    );
                }
                12 => {
                    let name = format!("n{}", rng.below(3));
                    let object = node(&name, rng.below(2));
                    publisher
                        .draft()
                        .nodes()
                        .insert(name.clone(), object.clone());
                    draft_want.nodes.insert(name, object);
                }
                13 => {
                    // A relist: every object behind a new pointer, a few changed.
                    let map: BTreeMap<ObjectKey, Arc<Service>> = (0..rng.below(12))
                        .map(|i| {
                            let name = format!("s{i}");
                            (
                                ObjectKey::new("a", name.as_str()),
                                service(&name, rng.below(2)),
                            )
                        })
                        .collect();
                    publisher.draft().services().replace(map.clone());
                    draft_want.services = map;
                }
                14 => {
                    publisher.discard();
                    draft_want = want.clone();
                }
                _ => {
                    let before = publisher.current().clone();
                    match publisher.commit() {
                        Some(now) => {
                            assert!(
                                !now.same_as(&before),
                                "{what}: a commit that changed nothing"
                            );
                            if now.changed_since(&before).is_some() {
                                keyed += 1;
                            } else {
                                whole += 1;
                            }
                        }
                        None => assert!(publisher.current().same_as(&before), "{what}"),
                    }
                    want = draft_want.clone();
                    assert_eq!(**publisher.current(), want, "{what}");
                    // The draft starts from what was published.
                    assert_eq!(*publisher.draft().snapshot(), want, "{what}");
                    for old in &held {
                        check_changes(old, publisher.current(), &what);
                    }
                    if rng.chance(30) {
                        held.push(publisher.current().clone());
                    }
                    if rng.chance(40) && !held.is_empty() {
                        held.remove(rng.below(held.len()));
                    }
                }
            }
        }
        reused += publisher.reused;
    }
    // Every path was taken: spares reused, change sets given, whole compares needed.
    assert!(
        reused > 1000 && keyed > 500 && whole > 20,
        "{reused} {keyed} {whole}"
    );
}

#[test]
fn a_snapshot_without_lineage_or_of_another_publisher_has_no_change_set() {
    let mut one = Publisher::new();
    one.draft()
        .services()
        .insert(ObjectKey::new("a", "s"), service("s", 1));
    let first = one.commit().unwrap();
    one.draft().services().remove(&ObjectKey::new("a", "s"));
    let second = one.commit().unwrap();
    let keys = second.changed_since(&first).unwrap();
    assert_eq!(keys.services.len(), 1);
    assert!(second.changed_since(&second).unwrap().is_empty());
    // Newer than the one asking: unknown.
    assert!(first.changed_since(&second).is_none());
    // A copy may have been edited; another publisher counts its own generations.
    assert!(second.changed_since(&(*first).clone()).is_none());
    let mut other = Publisher::new();
    other
        .draft()
        .services()
        .insert(ObjectKey::new("a", "s"), service("s", 1));
    let foreign = other.commit().unwrap();
    assert!(second.changed_since(&foreign).is_none());
}
