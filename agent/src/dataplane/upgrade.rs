//! What an agent does with the maps an older build pinned, so that an upgrade keeps every
//! flow on its backend:
//! - `vipwire_backends_v1` (a `HASH` by id) is copied into `vipwire_backends_v2` (an array by
//!   [`backend_slot`]) with the same ids, which the Maglev tables, conntrack and affinity
//!   name ([`carry_backends`]), and its pin removed once this build's programs have replaced
//!   the older ones ([`drop_backends_v1`]);
//! - the IPv4 flows in `vipwire_conntrack_v1` are copied into `vipwire_conntrack4_v1`
//!   ([`carry_ipv4_flows`], in the L4 writer's IO half), and deleted from the old map once
//!   this build's programs have replaced the older ones ([`forget_ipv4_flows`]).
//!
//! Both copies run between loading and attaching: the older programs keep working on the old
//! maps until this agent's replace them. An agent that fails in between leaves the old pins
//! as they were, and the next one copies again (never over what the new maps hold).

use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, Map, MapData},
};
use vipwire_common::{
    l4::{BackendValue, CtKey, backend_slot},
    maps,
};

use super::{
    l4::{L4Error, carry_ipv4_flows, forget_ipv4_flows},
    paths::PinPaths,
};

/// The name of the backends map before `vipwire_backends_v2`.
pub const BACKENDS_V1: &str = "vipwire_backends_v1";

/// A `vipwire_backends_v1` value: `BackendValue` without its `id` (the hash key was the id).
#[repr(C)]
#[derive(Clone, Copy)]
struct BackendValueV1 {
    addr_be: [u8; 16],
    port_be: [u8; 2],
    _pad: [u8; 2],
    flags: u32,
    ifindex: u32,
}
const _: () = assert!(size_of::<BackendValueV1>() == 28);
// SAFETY: repr(C), integers and byte arrays, no padding (size asserted above).
unsafe impl Pod for BackendValueV1 {}

/// What [`carry_backends`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CarriedBackends {
    pub carried: usize,
    /// Backends whose slot another one already held: their flows are picked again.
    pub collided: usize,
}

/// Copies the backends an older build pinned in `vipwire_backends_v1` into this build's
/// `vipwire_backends_v2` of the loaded (not yet attached) object, each into its id's slot,
/// unless that slot holds one already. `None` without an old pin.
pub fn carry_backends(
    ebpf: &mut Ebpf,
    paths: &PinPaths,
) -> Result<Option<CarriedBackends>, L4Error> {
    let path = paths.map(BACKENDS_V1);
    let Ok(old) = MapData::from_pin(&path) else {
        return Ok(None);
    };
    let map_error = |name| move |source| L4Error::Map { name, source };
    let old = HashMap::<_, u32, BackendValueV1>::try_from(Map::HashMap(old))
        .map_err(map_error(BACKENDS_V1))?;
    let new = ebpf
        .map_mut(maps::BACKENDS)
        .ok_or(L4Error::MissingMap(maps::BACKENDS))?;
    let mut new = Array::<_, BackendValue>::try_from(new).map_err(map_error(maps::BACKENDS))?;
    let mut done = CarriedBackends::default();
    for entry in old.iter() {
        let (id, v) = entry.map_err(map_error(BACKENDS_V1))?;
        let slot = backend_slot(id);
        if id == 0 || new.get(&slot, 0).map_err(map_error(maps::BACKENDS))?.id != 0 {
            done.collided += 1;
            continue;
        }
        let value = BackendValue {
            addr_be: v.addr_be,
            port_be: v.port_be,
            _pad: [0; 2],
            flags: v.flags,
            ifindex: v.ifindex,
            id,
        };
        new.set(slot, value, 0).map_err(map_error(maps::BACKENDS))?;
        done.carried += 1;
    }
    Ok(Some(done))
}

/// Removes the pin of `vipwire_backends_v1`, once no older program uses it (the map is freed
/// with its last user); whether there was one.
pub fn drop_backends_v1(paths: &PinPaths) -> std::io::Result<bool> {
    let path = paths.map(BACKENDS_V1);
    if !path.exists() {
        return Ok(false);
    }
    std::fs::remove_file(&path)?;
    Ok(true)
}

/// Everything that carries an older build's state over, between loading and attaching
/// (failures are logged: they cost only flows picked again). Returns the IPv4 flows copied
/// out of `vipwire_conntrack_v1`, for [`finish`].
pub fn carry_all(ebpf: &mut Ebpf, paths: &PinPaths) -> Vec<CtKey> {
    match carry_backends(ebpf, paths) {
        Ok(None) => {}
        Ok(Some(done)) => tracing::info!(
            carried = done.carried,
            collided = done.collided,
            "backends carried over from vipwire_backends_v1"
        ),
        Err(err) => tracing::warn!(
            error = %crate::error_chain(&err),
            "backends not carried over from vipwire_backends_v1: their flows are picked again"
        ),
    }
    match carry_ipv4_flows(ebpf) {
        Ok((keys, copied)) => {
            if copied > 0 {
                tracing::info!(
                    flows = copied,
                    "IPv4 flows carried over to their own conntrack map"
                );
            }
            keys
        }
        Err(err) => {
            tracing::warn!(
                error = %crate::error_chain(&err),
                "IPv4 flows not carried over to their own conntrack map: they are picked again"
            );
            Vec::new()
        }
    }
}

/// Once this build's programs have replaced an older build's everywhere: removes what that
/// build pinned and no longer serves, and the IPv4 flows `keys` from `vipwire_conntrack_v1`.
/// Failures are logged: the leftovers only take room.
pub fn finish(ebpf: &mut Ebpf, paths: &PinPaths, keys: &[CtKey]) {
    match drop_backends_v1(paths) {
        Ok(true) => tracing::info!("the pin of vipwire_backends_v1 removed"),
        Ok(false) => {}
        Err(err) => {
            tracing::warn!(error = %crate::error_chain(&err), "vipwire_backends_v1 stays pinned");
        }
    }
    if keys.is_empty() {
        return;
    }
    match forget_ipv4_flows(ebpf, keys) {
        Ok(flows) => tracing::info!(flows, "IPv4 flows removed from vipwire_conntrack_v1"),
        Err(err) => tracing::warn!(
            error = %crate::error_chain(&err),
            "IPv4 flows left in vipwire_conntrack_v1 (they age out)"
        ),
    }
}
