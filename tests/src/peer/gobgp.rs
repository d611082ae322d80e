//! GoBGP: `gobgpd -f <toml>` in the namespace with its gRPC API on the namespace's loopback
//! (`--api-hosts 127.0.0.1:<port>`), so every `gobgp -p <port> ... -j` query runs through
//! `ip netns exec`. GoBGP's config file cannot originate routes: they are added over the API
//! once it answers.
//!
//! After a session drops, gobgpd sits in Idle for a fixed 5 s (`HOLDTIME_IDLE`, not
//! configurable: `idle-hold-time-after-reset` only applies to admin resets) and closes incoming
//! connections meanwhile, so a restarted neighbor reaches Established again only after ~5 s.

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU16, Ordering},
};

use serde_json::Value;

use super::{
    Backend, Community, Family, LargeCommunity, Origin, PeerConfig, Prefix, RibRoute, SessionState,
    Started, query, wait_up, write_file,
};
use crate::{netlab::Netns, tools::require};

/// Each gobgpd has its own loopback, so ports only need to differ for readable logs.
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

struct Gobgp {
    gobgp: PathBuf,
    ns: Netns,
    port: String,
}

pub(super) fn start(ns: &Netns, config: &PeerConfig, dir: &Path) -> Started {
    let gobgpd = require("gobgpd");
    let gobgp = require("gobgp");
    let port = (50051 + NEXT_PORT.fetch_add(1, Ordering::Relaxed) % 1000).to_string();
    let conf = dir.join("gobgpd.toml");
    write_file(&conf, &gobgpd_toml(config));
    let mut daemon = ns.spawn(
        "gobgpd",
        &gobgpd,
        &[
            "-f",
            &conf.to_string_lossy(),
            "-t",
            "toml",
            "--api-hosts",
            &format!("127.0.0.1:{port}"),
            "--pprof-disable",
            "--log-plain",
            "--log-level",
            "debug",
        ],
        &dir.join("gobgpd.log"),
    );
    let backend = Gobgp {
        gobgp,
        ns: ns.clone(),
        port,
    };
    wait_up(&format!("gobgpd in {}", ns.name()), &mut daemon, || {
        backend.cli(&["global", "-j"])
    });
    for route in &config.routes {
        let family = afi(route.prefix.family());
        let prefix = route.prefix.to_string();
        let mut args = vec![
            "global", "rib", "-a", family, "add", &prefix, "origin", "igp",
        ];
        let med = route.med.map(|m| m.to_string());
        if let Some(med) = &med {
            args.extend(["med", med]);
        }
        let local_pref = route.local_pref.map(|l| l.to_string());
        if let Some(local_pref) = &local_pref {
            args.extend(["local-pref", local_pref]);
        }
        let communities = join(&route.communities);
        if !route.communities.is_empty() {
            args.extend(["community", &communities]);
        }
        let large = join(&route.large_communities);
        if !route.large_communities.is_empty() {
            args.extend(["large-community", &large]);
        }
        let output = backend.command(&args).output().expect("running gobgp");
        assert!(
            output.status.success(),
            "gobgp {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Started {
        daemons: vec![daemon],
        backend: Box::new(backend),
    }
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn afi(family: Family) -> &'static str {
    match family {
        Family::Ipv4Unicast => "ipv4",
        Family::Ipv6Unicast => "ipv6",
    }
}

fn gobgpd_toml(config: &PeerConfig) -> String {
    let mut c = String::new();
    let w = &mut c;
    let _ = writeln!(
        w,
        "[global.config]\n  as = {}\n  router-id = \"{}\"",
        config.asn, config.router_id
    );
    for n in &config.neighbors {
        let _ = writeln!(w, "[[neighbors]]\n  [neighbors.config]");
        let _ = writeln!(
            w,
            "    neighbor-address = \"{}\"\n    peer-as = {}",
            n.addr, n.asn
        );
        if let Some(password) = &n.password {
            let _ = writeln!(w, "    auth-password = \"{password}\"");
        }
        let _ = writeln!(
            w,
            "  [neighbors.timers.config]\n    hold-time = {}\n    keepalive-interval = {}\n    connect-retry = 1\n    idle-hold-time-after-reset = 1",
            config.hold_time, config.keepalive
        );
        let local = config.local_for(n.addr);
        if local.is_some() || n.passive {
            let _ = writeln!(w, "  [neighbors.transport.config]");
            if let Some(local) = local {
                let _ = writeln!(w, "    local-address = \"{local}\"");
            }
            if n.passive {
                let _ = writeln!(w, "    passive-mode = true");
            }
        }
        for family in Family::ALL.into_iter().filter(|&f| n.carries(f)) {
            let _ = writeln!(
                w,
                "  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"{}-unicast\"",
                afi(family)
            );
        }
    }
    c
}

impl Gobgp {
    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut command = self.ns.command(&self.gobgp);
        command.args(["-p", &self.port]).args(args);
        command
    }

    fn cli(&self, args: &[&str]) -> Option<String> {
        query(self.command(args))
    }

    fn json(&self, args: &[&str]) -> Option<Value> {
        serde_json::from_str(&self.cli(args)?).ok()
    }
}

impl Backend for Gobgp {
    fn session_state(&self, neighbor: IpAddr) -> SessionState {
        let Some(json) = self.json(&["neighbor", &neighbor.to_string(), "-j"]) else {
            return SessionState::from_raw("no such neighbor (or gobgpd not answering)");
        };
        let state = &json["state"]["session_state"];
        // Numbers in the API's JSON (the FSM enum); some versions print names.
        let raw = match state.as_u64() {
            Some(1) => "idle".to_owned(),
            Some(2) => "connect".to_owned(),
            Some(3) => "active".to_owned(),
            Some(4) => "opensent".to_owned(),
            Some(5) => "openconfirm".to_owned(),
            Some(6) => "established".to_owned(),
            Some(n) => format!("unknown ({n})"),
            None => state.as_str().unwrap_or("idle").to_ascii_lowercase(),
        };
        SessionState::from_raw(raw)
    }

    fn routes(&self, family: Family, prefix: Option<Prefix>) -> Vec<RibRoute> {
        let prefix = prefix.map(|p| p.to_string());
        let mut args = vec!["global", "rib", "-a", afi(family)];
        args.extend(prefix.as_deref());
        args.push("-j");
        let Some(json) = self.json(&args) else {
            return Vec::new();
        };
        let mut routes = Vec::new();
        for (prefix, paths) in json.as_object().into_iter().flatten() {
            let Ok(prefix) = prefix.parse::<Prefix>() else {
                continue;
            };
            for path in paths.as_array().into_iter().flatten() {
                routes.push(parse_path(prefix, path));
            }
        }
        routes
    }
}

/// One path of `gobgp global rib -j`: attributes by type code.
fn parse_path(prefix: Prefix, path: &Value) -> RibRoute {
    let mut route = RibRoute::new(prefix);
    route.best = path["best"].as_bool().unwrap_or(false);
    route.from = path["neighbor-ip"]
        .as_str()
        .and_then(|ip| ip.parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_unspecified());
    for attr in path["attrs"].as_array().into_iter().flatten() {
        match attr["type"].as_u64() {
            Some(1) => {
                route.origin = attr["value"]
                    .as_u64()
                    .and_then(|v| Origin::parse(&v.to_string()))
            }
            Some(2) => {
                for segment in attr["as_paths"].as_array().into_iter().flatten() {
                    route.as_path.extend(
                        segment["asns"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(as_u32),
                    );
                }
            }
            Some(3 | 14) => {
                for key in ["nexthop", "linklocal_nexthop"] {
                    if let Some(addr) = attr[key].as_str().and_then(|a| a.parse().ok()) {
                        route.push_next_hop(addr);
                    }
                }
            }
            Some(4) => route.med = as_u32(&attr["metric"]),
            Some(5) => route.local_pref = as_u32(&attr["value"]),
            Some(8) => {
                route.communities = attr["communities"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(as_u32)
                    .map(Community::from_u32)
                    .collect();
            }
            Some(32) => {
                route.large_communities = attr["value"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| {
                        Some(LargeCommunity(
                            as_u32(&c["ASN"])?,
                            as_u32(&c["LocalData1"])?,
                            as_u32(&c["LocalData2"])?,
                        ))
                    })
                    .collect();
            }
            _ => {}
        }
    }
    route
}

fn as_u32(value: &Value) -> Option<u32> {
    value.as_u64().and_then(|v| u32::try_from(v).ok())
}
