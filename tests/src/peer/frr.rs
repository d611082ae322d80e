//! FRR: zebra + bgpd in the namespace, each with `-N <namespace name>` so their sockets, PID
//! files and configs live in their own `/var/run/frr/<name>/`; queried with
//! `vtysh -N <name> -c '... json'` from the root namespace.

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use super::{
    Backend, Community, Family, LargeCommunity, Origin, PeerConfig, Prefix, RibRoute, SessionState,
    Started, query, wait_up, write_file,
};
use crate::{netlab::Netns, tools::require};

/// FRR's state directory; `-N name` makes the daemons use `<FRR_RUN>/<name>/`.
const FRR_RUN: &str = "/var/run/frr";

struct Frr {
    vtysh: PathBuf,
    pathspace: String,
    run_dir: PathBuf,
}

pub(super) fn start(ns: &Netns, config: &PeerConfig, dir: &Path) -> Started {
    let zebra = require("zebra");
    let bgpd = require("bgpd");
    let vtysh = require("vtysh");
    sweep_stale_run_dirs();

    let pathspace = ns.name().to_owned();
    let run_dir = Path::new(FRR_RUN).join(&pathspace);
    // The daemons drop root for the `frr` user before they read their configs, and the lab's
    // scratch dir is root-only: the configs go into the frr-owned run dir, logs to stdout.
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir)
        .unwrap_or_else(|e| panic!("creating {}: {e}", run_dir.display()));
    let (uid, gid) = frr_ids();
    std::os::unix::fs::chown(&run_dir, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown frr {}: {e}", run_dir.display()));
    let backend = Frr {
        vtysh,
        pathspace: pathspace.clone(),
        run_dir: run_dir.clone(),
    };

    let zebra_conf = run_dir.join("zebra.conf");
    let bgpd_conf = run_dir.join("bgpd.conf");
    let bgpd_text = bgpd_conf_text(config, ns.name());
    write_file(&zebra_conf, &format!("hostname {}\n", ns.name()));
    write_file(&bgpd_conf, &bgpd_text);
    // A copy beside the logs, for whoever debugs a failure after the run dir is gone.
    write_file(&dir.join("bgpd.conf"), &bgpd_text);

    let common = |conf: &Path| -> Vec<String> {
        [
            "-N",
            &pathspace,
            "-f",
            &conf.to_string_lossy(),
            "--log",
            "stdout",
            // No TCP vty: vtysh talks over the unix sockets in the run dir.
            "-P",
            "0",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let args = common(&zebra_conf);
    let mut zebra = ns.spawn(
        "zebra",
        &zebra,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &dir.join("zebra.log"),
    );
    let zserv = run_dir.join("zserv.api");
    wait_up(&format!("zebra in {}", ns.name()), &mut zebra, || {
        zserv.exists().then_some(())
    });

    let args = common(&bgpd_conf);
    let mut bgpd = ns.spawn(
        "bgpd",
        &bgpd,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &dir.join("bgpd.log"),
    );
    wait_up(&format!("bgpd in {}", ns.name()), &mut bgpd, || {
        // `{"warning":"Default BGP instance not found"}` until the config is in.
        let table = backend.vtysh_json("show bgp vrf default json")?;
        table.get("routerId").map(|_| ())
    });
    let log = std::fs::read_to_string(bgpd.log_path()).unwrap_or_default();
    assert!(
        !log.contains("Config Failed"),
        "bgpd in {} rejected part of its config:\n{log}\nconfig:\n{bgpd_text}",
        ns.name()
    );
    Started {
        daemons: vec![bgpd, zebra],
        backend: Box::new(backend),
    }
}

fn bgpd_conf_text(config: &PeerConfig, hostname: &str) -> String {
    let mut c = String::new();
    let w = &mut c;
    let _ = writeln!(w, "hostname {hostname}\nlog timestamp precision 6\n!");
    let _ = writeln!(w, "debug bgp neighbor-events\n!");
    for (i, route) in config.routes.iter().enumerate() {
        let _ = writeln!(w, "route-map ORIGINATE-{i} permit 10");
        if let Some(med) = route.med {
            let _ = writeln!(w, " set metric {med}");
        }
        if let Some(local_pref) = route.local_pref {
            let _ = writeln!(w, " set local-preference {local_pref}");
        }
        if !route.communities.is_empty() {
            let list: Vec<String> = route.communities.iter().map(|c| c.to_string()).collect();
            let _ = writeln!(w, " set community {}", list.join(" "));
        }
        if !route.large_communities.is_empty() {
            let list: Vec<String> = route
                .large_communities
                .iter()
                .map(|c| c.to_string())
                .collect();
            let _ = writeln!(w, " set large-community {}", list.join(" "));
        }
        let _ = writeln!(w, "!");
    }
    let _ = writeln!(w, "router bgp {}", config.asn);
    let _ = writeln!(w, " bgp router-id {}", config.router_id);
    // RFC 8212 default: without it FRR neither accepts nor sends anything over eBGP.
    let _ = writeln!(w, " no bgp ebgp-requires-policy");
    let _ = writeln!(w, " no bgp default ipv4-unicast");
    // Originated prefixes need no matching route in the namespace's RIB.
    let _ = writeln!(w, " no bgp network import-check");
    let _ = writeln!(w, " bgp bestpath as-path multipath-relax");
    for n in &config.neighbors {
        let a = n.addr;
        let _ = writeln!(w, " neighbor {a} remote-as {}", n.asn);
        let _ = writeln!(
            w,
            " neighbor {a} timers {} {}",
            config.keepalive, config.hold_time
        );
        let _ = writeln!(w, " neighbor {a} timers connect 1");
        let _ = writeln!(w, " neighbor {a} advertisement-interval 0");
        if let Some(password) = &n.password {
            let _ = writeln!(w, " neighbor {a} password {password}");
        }
        if n.passive {
            let _ = writeln!(w, " neighbor {a} passive");
        }
        if let Some(local) = config.local_for(a) {
            let _ = writeln!(w, " neighbor {a} update-source {local}");
        }
    }
    for family in Family::ALL {
        let _ = writeln!(w, " !\n address-family {} unicast", afi(family));
        let _ = writeln!(w, "  maximum-paths 16\n  maximum-paths ibgp 16");
        for (i, route) in config.routes.iter().enumerate() {
            if route.prefix.family() == family {
                let _ = writeln!(w, "  network {} route-map ORIGINATE-{i}", route.prefix);
            }
        }
        for n in config.neighbors.iter().filter(|n| n.carries(family)) {
            let _ = writeln!(w, "  neighbor {} activate", n.addr);
        }
        let _ = writeln!(w, " exit-address-family");
    }
    let _ = writeln!(w, "!");
    c
}

fn afi(family: Family) -> &'static str {
    match family {
        Family::Ipv4Unicast => "ipv4",
        Family::Ipv6Unicast => "ipv6",
    }
}

impl Frr {
    fn vtysh_json(&self, command: &str) -> Option<Value> {
        let mut vtysh = Command::new(&self.vtysh);
        vtysh.args(["-N", &self.pathspace, "-c", command]);
        // stderr only complains about the missing per-pathspace vtysh.conf.
        serde_json::from_str(&query(vtysh)?).ok()
    }
}

impl Backend for Frr {
    fn session_state(&self, neighbor: IpAddr) -> SessionState {
        let Some(json) = self.vtysh_json(&format!("show bgp neighbors {neighbor} json")) else {
            return SessionState::from_raw("bgpd not answering");
        };
        match json
            .get(neighbor.to_string())
            .and_then(|n| n["bgpState"].as_str())
        {
            Some(state) => SessionState::from_raw(state),
            None => SessionState::from_raw(format!("no such neighbor ({json})")),
        }
    }

    fn routes(&self, family: Family, prefix: Option<Prefix>) -> Vec<RibRoute> {
        let afi = afi(family);
        match prefix {
            Some(prefix) => {
                let Some(json) = self.vtysh_json(&format!("show bgp {afi} unicast {prefix} json"))
                else {
                    return Vec::new();
                };
                json["paths"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|path| parse_path(prefix, path))
                    .collect()
            }
            None => {
                let Some(json) = self.vtysh_json(&format!("show bgp {afi} unicast json detail"))
                else {
                    return Vec::new();
                };
                let mut routes = Vec::new();
                for (prefix, entries) in json["routes"].as_object().into_iter().flatten() {
                    let Ok(prefix) = prefix.parse::<Prefix>() else {
                        continue;
                    };
                    // The first element of each array is a per-prefix header, not a path.
                    for path in entries.as_array().into_iter().flatten() {
                        if path.get("origin").is_some() {
                            routes.push(parse_path(prefix, path));
                        }
                    }
                }
                routes
            }
        }
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        // The daemons are dead by now (Peer drops them first); SIGKILL left their sockets.
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// One element of FRR's `paths` (detail JSON).
fn parse_path(prefix: Prefix, path: &Value) -> RibRoute {
    let mut route = RibRoute::new(prefix);
    for segment in path["aspath"]["segments"].as_array().into_iter().flatten() {
        route.as_path.extend(
            segment["list"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|asn| asn.as_u64().and_then(|a| u32::try_from(a).ok())),
        );
    }
    route.origin = path["origin"].as_str().and_then(Origin::parse);
    route.med = as_u32(&path["metric"]);
    route.local_pref = as_u32(&path["locPrf"]);
    route.communities = strings(&path["community"]["list"])
        .filter_map(|c| well_known_community(c).or_else(|| c.parse().ok()))
        .collect();
    route.large_communities = strings(&path["largeCommunity"]["list"])
        .filter_map(|c| c.parse::<LargeCommunity>().ok())
        .collect();
    for hop in path["nexthops"].as_array().into_iter().flatten() {
        if let Some(addr) = hop["ip"].as_str().and_then(|ip| ip.parse().ok()) {
            route.push_next_hop(addr);
        }
    }
    route.from = path["peer"]["peerId"]
        .as_str()
        .and_then(|id| id.parse::<IpAddr>().ok())
        .filter(|id| !id.is_unspecified());
    route.best = path["bestpath"]["overall"].as_bool().unwrap_or(false);
    route
}

fn as_u32(value: &Value) -> Option<u32> {
    value.as_u64().and_then(|v| u32::try_from(v).ok())
}

fn strings(value: &Value) -> impl Iterator<Item = &str> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// FRR prints well-known communities by name.
fn well_known_community(name: &str) -> Option<Community> {
    let value = match name {
        "graceful-shutdown" => 0,
        "accept-own" => 1,
        "blackhole" => 666,
        "no-export" => 65281,
        "no-advertise" => 65282,
        "local-AS" => 65283,
        "no-peer" => 65284,
        _ => return None,
    };
    Some(Community(65535, value))
}

/// The `frr` user's uid and gid, from /etc/passwd.
fn frr_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&"frr") && fields.len() > 3)
        .and_then(|fields| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
        .unwrap_or_else(|| {
            panic!("no `frr` user in /etc/passwd: install FRR (apt-get install frr)")
        })
}

/// Removes run dirs left by killed test runs (named after their lab namespaces).
fn sweep_stale_run_dirs() {
    let Ok(entries) = std::fs::read_dir(FRR_RUN) else {
        return;
    };
    for entry in entries.flatten() {
        if crate::netlab::owner_is_gone(&entry.file_name().to_string_lossy()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
