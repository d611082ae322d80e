//! What an agent must do to the pins an older build left: remove the maps this build no
//! longer defines ([`drop_retired`]), and carry the IPv4 flows an older program tracked in
//! `vipwire_conntrack_v1` over to `vipwire_conntrack4_v1`, their own map since
//! ([`carry_ipv4_flows`], in the L4 writer's IO half), so that established flows keep their backends across the upgrade.

use aya::maps::MapData;
use vipwire_common::maps;

pub use super::l4::carry_ipv4_flows;
use super::{paths::PinPaths, pins::PinsError};

/// Removes the pins of [`maps::RETIRED`] maps. A program still attached keeps its map until
/// this agent's program replaces it.
pub fn drop_retired(paths: &PinPaths) -> Result<(), PinsError> {
    for name in maps::RETIRED {
        let path = paths.map(name);
        if path.exists() {
            tracing::info!(path = %path.display(), "removing the pin of a map this build no longer uses");
            std::fs::remove_file(&path).map_err(|source| PinsError::Remove {
                path: path.display().to_string(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Whether IPv4 flows may sit in `vipwire_conntrack_v1`: it is pinned and
/// `vipwire_conntrack4_v1` is not (an upgrade from a build without it). Asked before loading.
pub fn ipv4_flows_pending(paths: &PinPaths) -> bool {
    MapData::from_pin(paths.map(maps::CONNTRACK)).is_ok()
        && MapData::from_pin(paths.map(maps::CONNTRACK4)).is_err()
}
