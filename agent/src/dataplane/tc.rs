//! The two TC programs of the L4 dataplane, attached as TCX ingress links pinned under the
//! bpffs directory (as the XDP links are), so delivery and reverse NAT keep running while the
//! agent restarts and a restarted agent takes them over with `bpf_link_update`:
//! - `vipwire_tc_deliver` on every configured interface (frames XDP steered, into their pod);
//! - `vipwire_tc_reply` on the host-side device of every local backend (replies back to
//!   VIP:port), attached when the first backend needs the device and detached with the last.

use std::{
    collections::BTreeSet,
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
    },
};
use vipwire_common::programs;

use super::{
    iface,
    paths::{PinPaths, TC_REPLY_PREFIX},
};

#[derive(Debug, thiserror::Error)]
pub enum TcError {
    #[error("program {0} missing from the BPF object")]
    MissingProgram(&'static str),
    #[error("program {name} has the wrong type")]
    ProgramType {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("verifying program {name}")]
    Verify {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching {name} to interface {interface}")]
    Attach {
        name: &'static str,
        interface: String,
        #[source]
        source: ProgramError,
    },
    #[error("pinned TC link {path}")]
    Link {
        path: String,
        #[source]
        source: LinkError,
    },
    #[error("pinning TC link {path}")]
    Pin {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Loads (verifies) both TC programs. `Ok(false)`: the object has no L4 programs (an object
/// built before the L4 dataplane): the agent then runs without steering.
pub fn load(ebpf: &mut Ebpf) -> Result<bool, TcError> {
    for name in [programs::TC_DELIVER, programs::TC_REPLY] {
        if ebpf.program(name).is_none() {
            return Ok(false);
        }
        program(ebpf, name)?
            .load()
            .map_err(|source| TcError::Verify { name, source })?;
    }
    Ok(true)
}

/// Whether a link was taken over or created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcAttach {
    Reused,
    New,
}

/// Attaches the delivery program to `interface` through its pinned link.
pub fn attach_deliver(
    ebpf: &mut Ebpf,
    paths: &PinPaths,
    interface: &str,
) -> Result<TcAttach, TcError> {
    attach(
        ebpf,
        programs::TC_DELIVER,
        interface,
        &paths.tc_deliver_link(interface),
    )
}

/// What [`sync_reply`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplyDelta {
    pub attached: Vec<u32>,
    pub detached: Vec<u32>,
    /// Wanted devices the program could not be attached to (gone, or refused); retried on
    /// the next call.
    pub failed: Vec<u32>,
}

/// Makes the reply program's links match `wanted` (ifindexes): takes over pinned links not
/// yet taken over by this process (`taken`), attaches new ones, and unpins links of devices
/// no backend uses or that no longer exist.
pub fn sync_reply(
    ebpf: &mut Ebpf,
    paths: &PinPaths,
    wanted: &BTreeSet<u32>,
    taken: &mut BTreeSet<u32>,
) -> Result<ReplyDelta, TcError> {
    let mut delta = ReplyDelta::default();
    for (ifindex, path) in pinned_reply_links(paths) {
        let exists = iface::name_of(ifindex).is_some();
        if wanted.contains(&ifindex) && exists {
            continue;
        }
        unpin(&path)?;
        taken.remove(&ifindex);
        delta.detached.push(ifindex);
    }
    for &ifindex in wanted {
        let path = paths.tc_reply_link(ifindex);
        if taken.contains(&ifindex) && path.exists() {
            continue;
        }
        let Some(name) = iface::name_of(ifindex) else {
            delta.failed.push(ifindex);
            continue;
        };
        match attach(ebpf, programs::TC_REPLY, &name, &path) {
            Ok(how) => {
                taken.insert(ifindex);
                if how == TcAttach::New {
                    delta.attached.push(ifindex);
                }
            }
            Err(err) => {
                // A pod deleted between the route lookup and now: not worth failing the
                // reconcile, the next one retries or drops the device.
                tracing::warn!(ifindex, interface = name, error = %err, "attaching the reply program failed");
                delta.failed.push(ifindex);
            }
        }
    }
    Ok(delta)
}

/// Unpins the delivery links of interfaces not in `keep`.
pub fn forget_deliver_except(paths: &PinPaths, keep: &BTreeSet<&str>) -> Result<(), TcError> {
    let Ok(entries) = std::fs::read_dir(paths.links_dir()) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(interface) = name.strip_prefix(super::paths::TC_DELIVER_PREFIX)
            && !keep.contains(interface)
        {
            tracing::info!(
                interface,
                "detaching TC delivery from an interface no longer configured"
            );
            unpin(&entry.path())?;
        }
    }
    Ok(())
}

/// Reply links pinned now, by ifindex.
pub fn pinned_reply_links(paths: &PinPaths) -> Vec<(u32, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(paths.links_dir()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ifindex = name.strip_prefix(TC_REPLY_PREFIX)?.parse().ok()?;
            Some((ifindex, entry.path()))
        })
        .collect()
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier, TcError> {
    ebpf.program_mut(name)
        .ok_or(TcError::MissingProgram(name))?
        .try_into()
        .map_err(|source| TcError::ProgramType { name, source })
}

fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    interface: &str,
    path: &Path,
) -> Result<TcAttach, TcError> {
    let program = program(ebpf, name)?;
    let attach_error = |source| TcError::Attach {
        name,
        interface: interface.to_owned(),
        source,
    };
    let link_error = |source| TcError::Link {
        path: path.display().to_string(),
        source,
    };
    if path.exists() {
        let reused = PinnedLink::from_pin(path)
            .map(FdLink::from)
            .and_then(SchedClassifierLink::try_from)
            .map_err(link_error)
            .and_then(|link| program.attach_to_link(link).map_err(attach_error));
        match reused {
            Ok(id) => {
                // Close our fd: the pin alone keeps the link, so unpinning detaches it.
                drop(program.take_link(id).map_err(attach_error)?);
                return Ok(TcAttach::Reused);
            }
            Err(err) => {
                // A link whose device went away cannot take a program: start over.
                tracing::warn!(interface, program = name, error = %err, "pinned TC link unusable; attaching anew");
                let _ = std::fs::remove_file(path);
            }
        }
    }
    let id = program
        .attach_with_options(
            interface,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(attach_error)?;
    let link = program.take_link(id).map_err(attach_error)?;
    let fd_link = FdLink::try_from(link).map_err(link_error)?;
    fd_link.pin(path).map_err(|source| TcError::Pin {
        path: path.display().to_string(),
        source: io::Error::other(source),
    })?;
    Ok(TcAttach::New)
}

/// Unpins a link; the kernel detaches it once the last reference (the pin) goes.
fn unpin(path: &Path) -> Result<(), TcError> {
    match PinnedLink::from_pin(path) {
        Ok(pinned) => pinned.unpin().map(drop).map_err(|source| TcError::Pin {
            path: path.display().to_string(),
            source,
        }),
        // Not a link any more (or unreadable): remove the file so it does not linger.
        Err(_) => std::fs::remove_file(path).map_err(|source| TcError::Pin {
            path: path.display().to_string(),
            source,
        }),
    }
}
