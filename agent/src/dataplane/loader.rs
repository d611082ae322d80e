//! Loads the embedded BPF object with its maps pinned under the bpffs directory, and attaches
//! the uplink XDP program through pinned links, so a restarted agent takes over the running
//! dataplane instead of replacing it: answering never stops while the agent restarts.

use std::{collections::BTreeSet, io, sync::Arc};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{HashMap, MapData, MapError},
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        xdp::XdpLink,
    },
};
use vipwire_common::{Iface, l4::CtKey, maps, programs};

use super::{
    iface,
    l4::{L4Delta, L4Error, L4Writer, ServiceView},
    paths::PinPaths,
    pins, tc, upgrade,
};
use crate::model::{Frontend, Services};

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("preparing bpffs directory {dir}")]
    Bpffs {
        dir: String,
        #[source]
        source: io::Error,
    },
    #[error("loading the BPF object")]
    Load(#[source] EbpfError),
    #[error("checking the pinned maps against the BPF object")]
    Pins(#[from] pins::PinsError),
    #[error("program {0} missing from the BPF object")]
    MissingProgram(&'static str),
    #[error("map {0} missing from the BPF object")]
    MissingMap(&'static str),
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
    #[error("interface {interface}")]
    Interface {
        interface: String,
        #[source]
        source: io::Error,
    },
    #[error("attaching XDP to interface {interface}")]
    Attach {
        interface: String,
        #[source]
        source: ProgramError,
    },
    #[error("pinned XDP link {path}")]
    Link {
        path: String,
        #[source]
        source: LinkError,
    },
    #[error("pinning the XDP link of {interface}")]
    Pin {
        interface: String,
        #[source]
        source: io::Error,
    },
    #[error("self-check of program {name}: {detail}")]
    SelfCheck { name: &'static str, detail: String },
    #[error(transparent)]
    Tc(#[from] tc::TcError),
    #[error("writing the L4 maps")]
    L4(#[from] L4Error),
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
}

/// How the XDP program got onto an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Driver mode, attached by this agent.
    Native,
    /// Generic (skb) mode: the driver has no XDP support.
    Generic,
    /// A link pinned by an earlier agent, its program replaced atomically (mode unchanged).
    Reused,
}

impl AttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
            AttachMode::Reused => "reused",
        }
    }
}

/// An interface the program is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub interface: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub mode: AttachMode,
}

/// The loaded object. Dropping it leaves the pinned links and maps in place (the program keeps
/// running); [`Dataplane::cleanup`] removes them.
pub struct Dataplane {
    ebpf: Ebpf,
    paths: PinPaths,
    attached: Vec<Attachment>,
    /// The object has the L4 (TC) programs; without them the agent only answers ARP/NDP.
    l4: bool,
    /// Reply links taken over or created by this process, by ifindex.
    reply_links: BTreeSet<u32>,
    /// IPv4 flows an older build tracked in `vipwire_conntrack_v1`, copied to their own map
    /// at load: deleted from the old one once this build's programs have taken over.
    ipv4_flows_in_v1: Vec<CtKey>,
    /// Set by [`Dataplane::enable_l4`].
    writer: Option<L4Writer>,
    /// When the L4 writer last re-read the maps.
    l4_read_at: std::time::Instant,
    /// An L4 apply failed part way: the next one re-reads the maps before planning.
    l4_stale: bool,
    /// The steering view changed since the admin endpoint last got it, at `l4_view_at`.
    l4_view_dirty: bool,
    l4_view_at: std::time::Instant,
}

/// The admin endpoint's steering view is rebuilt at most this often on the change path.
const L4_VIEW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// How often the L4 writer re-reads the maps instead of trusting its mirror, repairing
/// entries edited behind its back (the run loop's periodic resync interval).
const L4_REREAD: std::time::Duration = std::time::Duration::from_secs(300);

impl Dataplane {
    /// Loads `object` with every contract map pinned under `paths` (reusing maps an earlier
    /// agent pinned), the BPF log level set to `log_level`, and verifies the program.
    pub fn open(
        object: &[u8],
        paths: PinPaths,
        log_level: aya_log::Level,
    ) -> Result<Self, LoaderError> {
        paths.ensure().map_err(|source| LoaderError::Bpffs {
            dir: paths.dir().display().to_string(),
            source,
        })?;
        pins::drop_incompatible(object, &paths)?;
        pins::ensure_vip_filter_pin(object, &paths)?;
        // The loader writes a global's initial value into its map, a reused pin included: the
        // VIP filter starts as the pinned one holds it, or the program still attached would
        // pass VIP traffic to the kernel until the first reconcile.
        let vip_filter = pins::pinned_vip_filter(&paths)?;
        let level = log_level as u8;
        let pin_paths: Vec<_> = maps::ALL
            .iter()
            .map(|name| (*name, paths.map(name)))
            // The filter's global shares the pin of its definition with BTF.
            .chain([(maps::VIP_FILTER_SECTION, paths.map(maps::VIP_FILTER))])
            .collect();
        let mut loader = EbpfLoader::new();
        loader.override_global(aya_log::LEVEL, &level, true);
        if let Some(filter) = &vip_filter {
            loader.override_global(maps::VIP_FILTER_GLOBAL, filter, true);
        }
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object).map_err(LoaderError::Load)?;
        let ipv4_flows_in_v1 = upgrade::carry_all(&mut ebpf, &paths);
        uplink_program(&mut ebpf)?
            .load()
            .map_err(|source| LoaderError::Verify {
                name: programs::XDP_UPLINK,
                source,
            })?;
        let l4 = tc::load(&mut ebpf)?;
        if !l4 {
            tracing::warn!("the BPF object has no L4 programs: VIP traffic is not steered");
        }
        Ok(Self {
            ebpf,
            paths,
            attached: Vec::new(),
            l4,
            reply_links: BTreeSet::new(),
            ipv4_flows_in_v1,
            writer: None,
            l4_read_at: std::time::Instant::now(),
            l4_stale: false,
            l4_view_dirty: false,
            l4_view_at: std::time::Instant::now(),
        })
    }

    /// Attaches the uplink program to `interface` and answers on it: takes over the link an
    /// earlier agent pinned (atomic program replacement), else attaches in native mode with
    /// a logged fallback to generic mode, and pins the new link.
    pub fn attach(&mut self, interface: &str) -> Result<Attachment, LoaderError> {
        let info = iface::lookup(interface).map_err(|source| LoaderError::Interface {
            interface: interface.to_owned(),
            source,
        })?;
        let link_path = self.paths.xdp_link(interface);
        let program = uplink_program(&mut self.ebpf)?;
        let mut mode = None;
        if link_path.exists() {
            match reuse_link(program, &link_path) {
                Ok(()) => mode = Some(AttachMode::Reused),
                Err(err) => {
                    // A link whose device went away cannot take a program: start over.
                    tracing::warn!(interface, error = %err, "pinned XDP link unusable; attaching anew");
                    let _ = std::fs::remove_file(&link_path);
                }
            }
        }
        let mode = match mode {
            Some(mode) => mode,
            None => attach_new(program, interface, &link_path)?,
        };
        if self.l4 {
            // Before the interface answers: XDP may steer as soon as services are written,
            // and steered frames need the delivery program behind it.
            let how = tc::attach_deliver(&mut self.ebpf, &self.paths, interface)?;
            tracing::info!(interface, how = ?how, "TC delivery program attached");
        }
        let mut ifaces = self.ifaces_map()?;
        ifaces
            .insert(info.ifindex, Iface::new(info.mac), 0)
            .map_err(|source| LoaderError::Map {
                name: maps::IFACES,
                source,
            })?;
        tracing::info!(
            interface,
            ifindex = info.ifindex,
            mode = mode.as_str(),
            "XDP program attached"
        );
        let attachment = Attachment {
            interface: interface.to_owned(),
            ifindex: info.ifindex,
            mac: info.mac,
            mode,
        };
        self.attached.push(attachment.clone());
        Ok(attachment)
    }

    /// Runs the uplink program once through `BPF_PROG_RUN` with the self-check frame
    /// (`vipwire_common::selfcheck`): proves the loaded program runs and passes what is not
    /// ours; the program logs one info line through aya-log (visible with
    /// `--bpf-log-level info`).
    pub fn self_check(&mut self) -> Result<(), LoaderError> {
        use aya::programs::{TestRun, TestRunOptions};
        use vipwire_common::selfcheck;

        let frame = selfcheck::FRAME;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex (u32 each).
        let fields = [0, frame.len() as u32, 0, selfcheck::INGRESS_IFINDEX, 0, 0];
        let ctx: Vec<u8> = fields.iter().flat_map(|f| f.to_ne_bytes()).collect();
        let mut out = [0u8; selfcheck::FRAME.len()];
        let name = programs::XDP_UPLINK;
        let result = uplink_program(&mut self.ebpf)?
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .map_err(|source| LoaderError::SelfCheck {
                name,
                detail: source.to_string(),
            })?;
        const XDP_PASS: u32 = 2;
        if result.return_value != XDP_PASS || out != frame {
            return Err(LoaderError::SelfCheck {
                name,
                detail: format!(
                    "expected XDP_PASS with the frame untouched, got verdict {}",
                    result.return_value
                ),
            });
        }
        tracing::info!(program = name, "self-check passed");
        Ok(())
    }

    /// Detaches interfaces an earlier agent attached that are no longer configured, and stops
    /// answering on them.
    pub fn forget_other_interfaces(&mut self) -> Result<(), LoaderError> {
        let keep: BTreeSet<&str> = self.attached.iter().map(|a| a.interface.as_str()).collect();
        if let Ok(entries) = std::fs::read_dir(self.paths.links_dir()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(interface) = name.strip_prefix(super::paths::XDP_PREFIX)
                    && !keep.contains(interface)
                {
                    tracing::info!(
                        interface,
                        "detaching XDP from an interface no longer configured"
                    );
                    unpin_link(&entry.path())?;
                }
            }
        }
        tc::forget_deliver_except(&self.paths, &keep)?;
        let keep: BTreeSet<u32> = self.attached.iter().map(|a| a.ifindex).collect();
        let mut ifaces = self.ifaces_map()?;
        let stale: Vec<u32> = ifaces
            .keys()
            .filter_map(Result::ok)
            .filter(|i| !keep.contains(i))
            .collect();
        for ifindex in stale {
            let _ = ifaces.remove(&ifindex);
        }
        Ok(())
    }

    /// Whether the object has the L4 programs (and the agent steers VIP traffic).
    pub fn has_l4(&self) -> bool {
        self.l4
    }

    /// Starts the L4 writer from what the pinned maps hold (ids survive the restart), with
    /// `maglev_size` as the table floor. A no-op without the L4 programs.
    pub fn enable_l4(&mut self, maglev_size: u32) -> Result<(), LoaderError> {
        if self.l4 {
            let writer = L4Writer::recover(&mut self.ebpf, maglev_size)?;
            tracing::info!(
                services = writer.mirror().services.len(),
                backends = writer.mirror().backends.len(),
                "L4 state recovered from the pinned maps"
            );
            self.writer = Some(writer);
            // The reply programs an earlier agent left are replaced now, not at the first
            // reconcile: after an upgrade they would look for this build's flows in the
            // older build's maps.
            let pinned: BTreeSet<u32> = tc::pinned_reply_links(&self.paths)
                .into_iter()
                .map(|(ifindex, _)| ifindex)
                .collect();
            // Not fatal: the first reconcile syncs the reply links again.
            if let Err(err) =
                tc::sync_reply(&mut self.ebpf, &self.paths, &pinned, &mut self.reply_links)
            {
                tracing::warn!(error = %crate::error_chain(&err), "reply programs not taken over at start");
            }
        }
        let keys = std::mem::take(&mut self.ipv4_flows_in_v1);
        upgrade::finish(&mut self.ebpf, &self.paths, &keys);
        Ok(())
    }

    /// Writes the L4 delta for `desired` (`None` when L4 is not enabled). The reply program
    /// goes onto new backend devices before the backends are written, so the first reply of
    /// the first flow is already reverse-NATed; devices no backend uses lose it afterwards.
    pub fn apply_l4(&mut self, desired: &Services) -> Result<Option<L4Delta>, LoaderError> {
        self.apply_l4_changed(desired, None)
    }

    /// [`Self::apply_l4`] comparing only the frontends in `changed` (every frontend whose
    /// desired state may differ from the last call's; `None`: all of them). After a failed
    /// apply the next one re-reads the maps and compares everything anyway.
    pub fn apply_l4_changed(
        &mut self,
        desired: &Services,
        changed: Option<&BTreeSet<Frontend>>,
    ) -> Result<Option<L4Delta>, LoaderError> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(None);
        };
        // After a failed apply the kernel may hold part of a plan: read it back first.
        if self.l4_stale || self.l4_read_at.elapsed() >= L4_REREAD {
            self.l4_stale = true;
            writer.resync(&mut self.ebpf)?;
            self.l4_read_at = std::time::Instant::now();
            self.l4_stale = false;
        }
        self.l4_stale = true;
        let plan = writer.plan(desired, changed)?;
        let mut before: BTreeSet<u32> = writer.devices();
        before.extend(plan.devices.iter().copied());
        let reply = tc::sync_reply(&mut self.ebpf, &self.paths, &before, &mut self.reply_links)?;
        for ifindex in &reply.attached {
            tracing::info!(ifindex, "reply program attached");
        }
        let delta = writer.execute(&mut self.ebpf, plan)?;
        let after = writer.devices();
        let reply = tc::sync_reply(&mut self.ebpf, &self.paths, &after, &mut self.reply_links)?;
        for ifindex in &reply.detached {
            tracing::info!(ifindex, "reply program detached");
        }
        self.l4_stale = false;
        self.l4_view_dirty = true;
        Ok(Some(delta))
    }

    /// The steered services as last written (empty without L4).
    pub fn l4_view(&mut self) -> Vec<Arc<ServiceView>> {
        self.writer.as_mut().map(L4Writer::view).unwrap_or_default()
    }

    /// The steering view for the admin endpoint, if it changed since the last one taken and
    /// (unless `force`) that was at least [`L4_VIEW_EVERY`] ago. Taking it copies a pointer
    /// per frontend (the writer keeps each frontend's view), which a stream of single changes
    /// need not pay each time: the heartbeat tick publishes what is left (`force`).
    pub fn take_l4_view(&mut self, force: bool) -> Option<Vec<Arc<ServiceView>>> {
        if !self.l4_view_dirty || (!force && self.l4_view_at.elapsed() < L4_VIEW_EVERY) {
            return None;
        }
        self.l4_view_dirty = false;
        self.l4_view_at = std::time::Instant::now();
        Some(self.l4_view())
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attached
    }

    pub fn paths(&self) -> &PinPaths {
        &self.paths
    }

    /// The loaded object, for the map writers and the log forwarder.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Detaches the program from every interface and removes every pin (`--cleanup-on-exit`).
    pub fn cleanup(self) -> Result<(), LoaderError> {
        let Self { ebpf, paths, .. } = self;
        if let Ok(entries) = std::fs::read_dir(paths.links_dir()) {
            for entry in entries.flatten() {
                let path = entry.path();
                if let Err(err) = unpin_link(&path) {
                    // Not a link (a directory, say): remove it all the same, and go on.
                    tracing::warn!(
                        path = %path.display(),
                        error = %crate::error_chain(&err),
                        "not a pinned link; removing it"
                    );
                    let _ = std::fs::remove_file(&path).or_else(|_| std::fs::remove_dir_all(&path));
                }
            }
        }
        drop(ebpf);
        for name in maps::ALL {
            let _ = std::fs::remove_file(paths.map(name));
        }
        let _ = std::fs::remove_dir(paths.links_dir());
        let _ = std::fs::remove_dir(paths.dir());
        tracing::info!(dir = %paths.dir().display(), "detached and unpinned");
        Ok(())
    }

    fn ifaces_map(&mut self) -> Result<HashMap<&mut MapData, u32, Iface>, LoaderError> {
        let map = self
            .ebpf
            .map_mut(maps::IFACES)
            .ok_or(LoaderError::MissingMap(maps::IFACES))?;
        HashMap::try_from(map).map_err(|source| LoaderError::Map {
            name: maps::IFACES,
            source,
        })
    }
}

fn uplink_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, LoaderError> {
    let name = programs::XDP_UPLINK;
    ebpf.program_mut(name)
        .ok_or(LoaderError::MissingProgram(name))?
        .try_into()
        .map_err(|source| LoaderError::ProgramType { name, source })
}

fn reuse_link(program: &mut Xdp, path: &std::path::Path) -> Result<(), LoaderError> {
    let pinned = PinnedLink::from_pin(path).map_err(|source| LoaderError::Link {
        path: path.display().to_string(),
        source,
    })?;
    let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|source| LoaderError::Link {
        path: path.display().to_string(),
        source,
    })?;
    program
        .attach_to_link(link)
        .map(drop)
        .map_err(|source| LoaderError::Attach {
            interface: path.display().to_string(),
            source,
        })
}

fn attach_new(
    program: &mut Xdp,
    interface: &str,
    link_path: &std::path::Path,
) -> Result<AttachMode, LoaderError> {
    let attach_error = |source| LoaderError::Attach {
        interface: interface.to_owned(),
        source,
    };
    let (mode, id) = match program.attach(interface, XdpMode::Driver) {
        Ok(id) => (AttachMode::Native, id),
        Err(native_error) => {
            tracing::warn!(interface, error = %native_error, "native XDP attach failed; falling back to generic mode");
            (
                AttachMode::Generic,
                program
                    .attach(interface, XdpMode::Skb)
                    .map_err(attach_error)?,
            )
        }
    };
    let link = program.take_link(id).map_err(attach_error)?;
    let fd_link = FdLink::try_from(link).map_err(|source| LoaderError::Link {
        path: link_path.display().to_string(),
        source,
    })?;
    fd_link.pin(link_path).map_err(|source| LoaderError::Pin {
        interface: interface.to_owned(),
        source: io::Error::other(source),
    })?;
    Ok(mode)
}

/// Unpins a link; the kernel detaches it once the last reference (ours) goes.
fn unpin_link(path: &std::path::Path) -> Result<(), LoaderError> {
    let pinned = PinnedLink::from_pin(path).map_err(|source| LoaderError::Link {
        path: path.display().to_string(),
        source,
    })?;
    pinned.unpin().map(drop).map_err(|source| LoaderError::Pin {
        interface: path.display().to_string(),
        source,
    })
}
