//! Maps an earlier agent pinned are reused only when they are the maps this object defines.
//!
//! aya opens a pinned map as it is: one pinned by another build, with another type, key or
//! value size, size or flags, would be used as if it matched (keys read past their end,
//! inserts refused once its smaller table is full, a verifier error that names no map). Such
//! a pin is removed before loading, with a warning saying what differs, and the loader
//! creates the map anew; the program still attached keeps the old map until it is replaced.
//! What the old map held is lost: the agent rewrites its own tables at the first reconcile,
//! conntrack starts over (flows are picked again, by Maglev mostly as before), counters
//! restart from zero.
//!
//! The VIP filter needs two more steps, being a global variable of the program: its pin is
//! made from its definition with BTF ([`ensure_vip_filter_pin`]), and what the pin holds is read
//! before loading ([`pinned_vip_filter`]), because loading writes a global's initial value.

use aya::{
    EbpfLoader,
    maps::{Array, Map, MapData, MapType},
};
use vipwire_common::{l4::VipFilter, maps};

use super::paths::PinPaths;

/// What must match for a pinned map to be reused.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Shape {
    map_type: Option<MapType>,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PinsError {
    #[error("parsing the BPF object's map definitions")]
    Parse(#[source] aya_obj::ParseError),
    #[error("pinning the VIP filter at {path}")]
    PinFilter {
        path: String,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("reading the VIP filter pinned at {path}")]
    ReadFilter {
        path: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("removing {path}, pinned with another layout than this build's")]
    Remove {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Removes every contract map pin under `paths` whose map differs from `object`'s definition
/// of it.
pub fn drop_incompatible(object: &[u8], paths: &PinPaths) -> Result<(), PinsError> {
    let object = aya_obj::Object::parse(object).map_err(PinsError::Parse)?;
    for name in maps::ALL {
        let Some(def) = object.maps.get(name) else {
            continue;
        };
        let path = paths.map(name);
        // No pin (or not a map: the loader says so, naming the path).
        let Ok(pinned) = MapData::from_pin(&path) else {
            continue;
        };
        let Ok(info) = pinned.info() else {
            continue;
        };
        let expected = Shape {
            map_type: aya_obj::generated::bpf_map_type::try_from(def.map_type())
                .ok()
                .and_then(|t| MapType::try_from(t).ok()),
            key_size: def.key_size(),
            value_size: def.value_size(),
            max_entries: def.max_entries(),
            flags: def.map_flags(),
        };
        let found = Shape {
            map_type: info.map_type().ok(),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        };
        if found != expected {
            tracing::warn!(
                path = %path.display(),
                ?expected,
                ?found,
                "pinned map differs from this build's; replacing it (its entries are lost)"
            );
            std::fs::remove_file(&path).map_err(|source| PinsError::Remove {
                path: path.display().to_string(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Pins the VIP filter from its definition with BTF when nothing is pinned yet. The program
/// reads the filter as a global, whose map aya would create without BTF (a hex dump in
/// `bpftool`); pinned first, the map with BTF is the one the global is then loaded into. A
/// throwaway load of the object creates it, with every other map shrunk to one entry (none is
/// pinned, all are freed at once).
pub fn ensure_vip_filter_pin(object: &[u8], paths: &PinPaths) -> Result<(), PinsError> {
    let path = paths.map(maps::VIP_FILTER);
    if MapData::from_pin(&path).is_ok() {
        return Ok(());
    }
    let mut loader = EbpfLoader::new();
    loader.map_pin_path(maps::VIP_FILTER, &path);
    for name in maps::ALL.iter().filter(|&&name| name != maps::VIP_FILTER) {
        loader.map_max_entries(name, 1);
    }
    loader
        .load(object)
        .map(drop)
        .map_err(|source| PinsError::PinFilter {
            path: path.display().to_string(),
            source: Box::new(source),
        })
}

/// What the pinned VIP filter holds; `None` when none is pinned.
pub fn pinned_vip_filter(paths: &PinPaths) -> Result<Option<VipFilter>, PinsError> {
    let path = paths.map(maps::VIP_FILTER);
    let Ok(pinned) = MapData::from_pin(&path) else {
        return Ok(None);
    };
    let error = |source| PinsError::ReadFilter {
        path: path.display().to_string(),
        source,
    };
    let filter = Array::<_, VipFilter>::try_from(Map::Array(pinned)).map_err(error)?;
    filter.get(&0, 0).map(Some).map_err(error)
}
