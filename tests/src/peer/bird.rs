//! BIRD 2: `bird -f -c <conf> -s <socket>` in the namespace, queried with
//! `birdc -s <socket>` (from the root namespace: the socket is a file). BIRD has no JSON
//! output, so `show route all` text is parsed.

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use super::{
    Backend, Family, Neighbor, OriginatedRoute, PeerConfig, Prefix, RibRoute, SessionState,
    Started, query, wait_up, write_file,
};
use crate::{netlab::Netns, tools::require};

struct Bird {
    birdc: PathBuf,
    socket: PathBuf,
    config: PeerConfig,
}

pub(super) fn start(ns: &Netns, config: &PeerConfig, dir: &Path) -> Started {
    let bird = require("bird");
    let birdc = require("birdc");
    let conf = dir.join("bird.conf");
    let socket = dir.join("bird.ctl");
    write_file(&conf, &bird_conf_text(config));
    let mut daemon = ns.spawn(
        "bird",
        &bird,
        &[
            "-f",
            "-c",
            &conf.to_string_lossy(),
            "-s",
            &socket.to_string_lossy(),
        ],
        &dir.join("bird.log"),
    );
    let backend = Bird {
        birdc,
        socket,
        config: config.clone(),
    };
    wait_up(&format!("bird in {}", ns.name()), &mut daemon, || {
        backend
            .birdc(&["show", "status"])
            .filter(|out| out.contains("up and running"))
    });
    Started {
        daemons: vec![daemon],
        backend: Box::new(backend),
    }
}

/// The BGP protocol's name for a neighbor: `n_10_0_0_1`, `n_fd00__1`.
fn protocol_name(addr: IpAddr) -> String {
    format!("n_{}", addr.to_string().replace(['.', ':'], "_"))
}

fn channel(family: Family) -> &'static str {
    match family {
        Family::Ipv4Unicast => "ipv4",
        Family::Ipv6Unicast => "ipv6",
    }
}

fn bird_conf_text(config: &PeerConfig) -> String {
    let mut c = String::new();
    let w = &mut c;
    let _ = writeln!(w, "log stderr all;\nrouter id {};", config.router_id);
    let _ = writeln!(w, "protocol device {{ scan time 10; }}");
    // Connected routes resolve iBGP next hops (BIRD's iBGP default is `gateway recursive`).
    let _ = writeln!(w, "protocol direct {{ ipv4; ipv6; }}");
    for family in Family::ALL {
        let ch = channel(family);
        // Learned routes go into the namespace's FIB (ECMP merged), like a real ToR.
        let _ = writeln!(
            w,
            "protocol kernel {{ {ch} {{ import none; export where source = RTS_BGP; }}; merge paths on; }}"
        );
        let routes: Vec<&OriginatedRoute> = config.routes_of(family).collect();
        if !routes.is_empty() {
            let _ = writeln!(w, "protocol static originate_{ch} {{\n  {ch};");
            for route in &routes {
                let _ = writeln!(
                    w,
                    "  route {} blackhole {{ {} }};",
                    route.prefix,
                    attribute_statements(route)
                );
            }
            let _ = writeln!(w, "}}");
        }
        // Only originated routes leave; MED and LOCAL_PREF must be set again here because BIRD
        // sends them only when the export filter sets them.
        let _ = writeln!(
            w,
            "filter export_{ch} {{\n  if source != RTS_STATIC then reject;"
        );
        for route in &routes {
            let mut scalars = String::new();
            if let Some(med) = route.med {
                let _ = write!(scalars, "bgp_med = {med}; ");
            }
            if let Some(local_pref) = route.local_pref {
                let _ = write!(scalars, "bgp_local_pref = {local_pref}; ");
            }
            if !scalars.is_empty() {
                let _ = writeln!(w, "  if net = {} then {{ {scalars}}}", route.prefix);
            }
        }
        let _ = writeln!(w, "  accept;\n}}");
    }
    for n in &config.neighbors {
        neighbor_block(w, config, n);
    }
    c
}

/// The attributes of an originated route, as BIRD filter statements.
fn attribute_statements(route: &OriginatedRoute) -> String {
    let mut s = String::from("bgp_origin = ORIGIN_IGP; ");
    if let Some(med) = route.med {
        let _ = write!(s, "bgp_med = {med}; ");
    }
    if let Some(local_pref) = route.local_pref {
        let _ = write!(s, "bgp_local_pref = {local_pref}; ");
    }
    for c in &route.communities {
        let _ = write!(s, "bgp_community.add(({},{})); ", c.0, c.1);
    }
    for c in &route.large_communities {
        let _ = write!(s, "bgp_large_community.add(({},{},{})); ", c.0, c.1, c.2);
    }
    s
}

fn neighbor_block(w: &mut String, config: &PeerConfig, n: &Neighbor) {
    let _ = writeln!(w, "protocol bgp {} {{", protocol_name(n.addr));
    match config.local_for(n.addr) {
        Some(local) => {
            let _ = writeln!(w, "  local {local} as {};", config.asn);
        }
        None => {
            let _ = writeln!(w, "  local as {};", config.asn);
        }
    }
    let _ = writeln!(w, "  neighbor {} as {};", n.addr, n.asn);
    let _ = writeln!(w, "  hold time {};", config.hold_time);
    let _ = writeln!(w, "  keepalive time {};", config.keepalive);
    // Defaults are 5 s before the first connect and 60 s idle after any error.
    let _ = writeln!(
        w,
        "  start delay time 1;\n  connect retry time 1;\n  error wait time 1, 5;"
    );
    let _ = writeln!(w, "  debug {{ states, events }};");
    if let Some(password) = &n.password {
        let _ = writeln!(w, "  password \"{password}\";");
    }
    if n.passive {
        let _ = writeln!(w, "  passive on;");
    }
    for family in Family::ALL.into_iter().filter(|&f| n.carries(f)) {
        let ch = channel(family);
        // eBGP needs explicit filters (RFC 8212).
        let _ = writeln!(w, "  {ch} {{ import all; export filter export_{ch}; }};");
    }
    let _ = writeln!(w, "}}");
}

impl Bird {
    fn birdc(&self, args: &[&str]) -> Option<String> {
        let mut birdc = Command::new(&self.birdc);
        birdc.arg("-s").arg(&self.socket).args(args);
        query(birdc)
    }

    /// Which neighbor a protocol is, `None` for the static (originating) ones.
    fn neighbor_of(&self, protocol: &str) -> Option<&Neighbor> {
        self.config
            .neighbors
            .iter()
            .find(|n| protocol_name(n.addr) == protocol)
    }
}

impl Backend for Bird {
    fn session_state(&self, neighbor: IpAddr) -> SessionState {
        let name = protocol_name(neighbor);
        let Some(out) = self.birdc(&["show", "protocols", &name]) else {
            return SessionState::from_raw("bird not answering");
        };
        // Name Proto Table State Since Info...: the BGP state is the Info column.
        let Some(line) = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        else {
            return SessionState::from_raw(format!("no such neighbor ({})", out.trim()));
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let info = fields.get(5..).map(|f| f.join(" ")).unwrap_or_default();
        SessionState::from_raw(if info.is_empty() {
            fields.get(3).copied().unwrap_or("?").to_owned()
        } else {
            info
        })
    }

    fn routes(&self, family: Family, prefix: Option<Prefix>) -> Vec<RibRoute> {
        let table = format!(
            "master{}",
            if family == Family::Ipv4Unicast { 4 } else { 6 }
        );
        let prefix = prefix.map(|p| p.to_string());
        let mut args = vec!["show", "route", "all", "table", &table];
        args.extend(prefix.as_deref());
        let Some(out) = self.birdc(&args) else {
            return Vec::new();
        };
        parse_routes(&out)
            .into_iter()
            .filter_map(|(protocol, mut route)| {
                if let Some(neighbor) = self.neighbor_of(&protocol) {
                    route.from = Some(neighbor.addr);
                    if self.config.is_ebgp(neighbor) {
                        // BIRD's default on eBGP import, which the wire never carried.
                        route.local_pref = None;
                    }
                    Some(route)
                } else {
                    // Keep our originated routes; skip direct/kernel ones.
                    protocol.starts_with("originate_").then_some(route)
                }
            })
            .collect()
    }
}

/// Parses `show route all`: a header line per path (the prefix is omitted on the second and
/// later paths of a prefix), then tab-indented attribute lines. Returns (protocol, path).
fn parse_routes(out: &str) -> Vec<(String, RibRoute)> {
    let mut routes: Vec<(String, RibRoute)> = Vec::new();
    let mut prefix: Option<Prefix> = None;
    for line in out.lines() {
        if line.starts_with('\t') {
            if let Some((_, route)) = routes.last_mut() {
                parse_attribute(route, line.trim());
            }
            continue;
        }
        let Some((head, rest)) = line.split_once('[') else {
            continue; // "BIRD 2.0.12 ready.", "Table master4:", blank lines
        };
        if !line.starts_with(' ') {
            match head.split_whitespace().next().and_then(|p| p.parse().ok()) {
                Some(p) => prefix = Some(p),
                None => continue,
            }
        }
        let Some(prefix) = prefix else {
            continue;
        };
        let protocol = rest
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        let mut route = RibRoute::new(prefix);
        // "[proto time] * (pref) [AS65001i]": the star marks the best path.
        route.best = rest
            .split_once(']')
            .is_some_and(|(_, tail)| tail.trim_start().starts_with('*'));
        routes.push((protocol, route));
    }
    routes
}

fn parse_attribute(route: &mut RibRoute, line: &str) {
    let Some((name, value)) = line.split_once(':') else {
        return;
    };
    let value = value.trim();
    match name {
        "BGP.origin" => route.origin = super::Origin::parse(value),
        "BGP.as_path" => {
            route.as_path = value
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|asn| asn.parse().ok())
                .collect();
        }
        "BGP.next_hop" => {
            for hop in value.split_whitespace() {
                if let Ok(addr) = hop.parse() {
                    route.push_next_hop(addr);
                }
            }
        }
        "BGP.med" => route.med = value.parse().ok(),
        "BGP.local_pref" => route.local_pref = value.parse().ok(),
        "BGP.community" => route.communities = tuples(value).collect(),
        "BGP.large_community" => route.large_communities = tuples(value).collect(),
        _ => {}
    }
}

/// `(65002,200) (65002,300)` or `(65002, 3, 4)`, each tuple parsed as `a:b[:c]`.
fn tuples<T: std::str::FromStr>(value: &str) -> impl Iterator<Item = T> + '_ {
    value
        .split(')')
        .filter_map(|t| t.trim().strip_prefix('('))
        .filter_map(|t| t.replace(' ', "").replace(',', ":").parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::{Community, LargeCommunity, Origin};

    #[test]
    fn parses_show_route_all() {
        let out = [
            "BIRD 2.0.12 ready.",
            "Table master4:",
            "203.0.113.1/32       unicast [n_10_9_0_1 22:35:50.905] * (100) [AS65001i]",
            "\tvia 10.9.0.1 on eth0",
            "\tType: BGP univ",
            "\tBGP.origin: IGP",
            "\tBGP.as_path: 65001 {65003 65004}",
            "\tBGP.next_hop: 10.9.0.1",
            "\tBGP.med: 50",
            "\tBGP.local_pref: 100",
            "\tBGP.community: (65001,100) (65001,101)",
            "\tBGP.large_community: (65001, 1, 2)",
            "                     unicast [n_10_9_0_5 22:35:51.000] (100) [AS65005?]",
            "\tvia 10.9.0.5 on eth0",
            "\tBGP.origin: Incomplete",
            "\tBGP.as_path: 65005",
            "\tBGP.next_hop: 10.9.0.5 fe80::1",
            "",
        ]
        .join("\n");
        let routes = parse_routes(&out);
        assert_eq!(routes.len(), 2);
        let (proto, best) = &routes[0];
        assert_eq!(proto, "n_10_9_0_1");
        assert!(best.best);
        assert_eq!(best.as_path, [65001, 65003, 65004]);
        assert_eq!(best.origin, Some(Origin::Igp));
        assert_eq!(best.med, Some(50));
        assert_eq!(
            best.communities,
            [Community(65001, 100), Community(65001, 101)]
        );
        assert_eq!(best.large_communities, [LargeCommunity(65001, 1, 2)]);
        let (proto, other) = &routes[1];
        assert_eq!(proto, "n_10_9_0_5");
        assert!(!other.best);
        assert_eq!(other.prefix, best.prefix);
        assert_eq!(other.next_hops, ["10.9.0.5".parse::<IpAddr>().unwrap()]);
        assert_eq!(other.origin, Some(Origin::Incomplete));
    }
}
