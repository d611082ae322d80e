//! The cached re-read against the plain one on random edit sequences: writes in place and by
//! rename, removals, files moved in and out, objects moving between files or defined twice,
//! broken files. Each good re-read must also name every key that changed since the last one.

use std::{collections::BTreeSet, path::Path, sync::Arc, time::Duration};

use super::{DirCache, load_dir};
use crate::{
    snapshot::{ObjectKey, Snapshot},
    test_rng::Rng,
};

const FILES: [&str; 5] = ["a.yaml", "b.yaml", "c.yml", "d.yaml", "e.yaml"];

fn service(i: usize, version: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: s{i}\n  namespace: default\nspec:\n  ports:\n  - port: {}\n",
        80 + version
    )
}

fn slice(i: usize, version: usize) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s{i}-x\n  \
         labels:\n    kubernetes.io/service-name: s{i}\naddressType: IPv4\nendpoints:\n- addresses: [\"10.0.0.{}\"]\n",
        1 + version
    )
}

/// A file of a few random documents; now and then a broken one.
fn text(rng: &mut Rng) -> String {
    if rng.chance(5) {
        return "kind: [".into();
    }
    if rng.chance(3) {
        // Invalid: the API server would reject the port.
        return service(9, 70_000);
    }
    let mut documents = Vec::new();
    for _ in 0..rng.below(3) {
        documents.push(match rng.below(5) {
            0..=1 => service(rng.below(20), rng.below(2)),
            2..=3 => slice(rng.below(20), rng.below(2)),
            _ => format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: n{}\n",
                rng.below(20)
            ),
        });
    }
    documents.join("---\n")
}

/// Every key whose object differs is in `now`'s change set since `before`, when it has one.
fn covered(before: &Snapshot, now: &Snapshot) -> bool {
    let Some(keys) = now.changed_since(before) else {
        return false;
    };
    let services: BTreeSet<&ObjectKey> =
        before.services.keys().chain(now.services.keys()).collect();
    for key in services {
        if before.services.get(key) != now.services.get(key) {
            assert!(keys.services.contains(key), "{key} changed unnamed");
        }
    }
    let slices: BTreeSet<&ObjectKey> = before
        .endpoint_slices
        .keys()
        .chain(now.endpoint_slices.keys())
        .collect();
    for key in slices {
        if before.endpoint_slices.get(key) != now.endpoint_slices.get(key) {
            assert!(keys.endpoint_slices.contains(key), "{key} changed unnamed");
        }
    }
    true
}

#[test]
fn random_edits_reread_as_the_plain_load_and_name_their_changes() {
    let (mut good, mut bad, mut keyed) = (0, 0, 0);
    for seed in 1..=8u64 {
        let mut rng = Rng(seed * 0x9e37_79b9);
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("m");
        let outside = root.path().join("out");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let mut cache = DirCache::default();
        let mut last: Option<Arc<Snapshot>> = None;
        for step in 0..60 {
            let what = format!("seed {seed}, step {step}");
            for _ in 0..1 + rng.below(3) {
                edit(&mut rng, &dir, &outside);
            }
            // Now and then long enough for the stamps to count: those files are not read again.
            if rng.chance(15) {
                std::thread::sleep(Duration::from_millis(120));
            }
            let cached = cache.reload(&dir);
            let plain = load_dir(&dir);
            match (cached, plain) {
                (Ok(cached), Ok(plain)) => {
                    good += 1;
                    assert_eq!(*cached.snapshot, plain.snapshot, "{what}");
                    assert_eq!(cached.warnings, plain.warnings, "{what}");
                    if let Some(before) = &last {
                        assert_eq!(cached.changed, !before.same_as(&cached.snapshot), "{what}");
                        keyed += usize::from(covered(before, &cached.snapshot));
                    }
                    last = Some(cached.snapshot);
                }
                (Err(cached), Err(plain)) => {
                    bad += 1;
                    assert_eq!(cached.to_string(), plain.to_string(), "{what}");
                }
                (cached, plain) => panic!(
                    "{what}: cached {:?}, plain {:?}",
                    cached.map(|_| ()).map_err(|e| e.to_string()),
                    plain.map(|_| ()).map_err(|e| e.to_string())
                ),
            }
        }
    }
    assert!(good > 100 && bad > 30 && keyed > 50, "{good} {bad} {keyed}");
}

fn edit(rng: &mut Rng, dir: &Path, outside: &Path) {
    let name = *rng.pick(&FILES);
    let path = dir.join(name);
    match rng.below(10) {
        0..=3 => std::fs::write(&path, text(rng)).unwrap(),
        4..=5 => {
            let temp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&temp, text(rng)).unwrap();
            std::fs::rename(&temp, &path).unwrap();
        }
        6 => {
            let _ = std::fs::remove_file(&path);
        }
        7 => {
            let _ = std::fs::rename(&path, dir.join(rng.pick(&FILES)));
        }
        8 => {
            let _ = std::fs::rename(&path, outside.join(name));
        }
        _ => {
            let _ = std::fs::rename(outside.join(name), &path);
        }
    }
}
