//! `vipwire doctor`: host checks, one line each, `OK`/`WARN`/`FAIL`.

use std::{fmt, net::SocketAddr, path::PathBuf, process::Command};

use super::client;
use crate::dataplane::{paths::PinPaths, status as dp_status};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Ok => "OK",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub level: Level,
    pub what: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<4} {}", self.level, self.what)
    }
}

fn check(level: Level, what: impl Into<String>) -> Check {
    Check {
        level,
        what: what.into(),
    }
}

/// Where to look: the agent's admin address, its bpffs dir and the interfaces from the config
/// (empty: the interfaces the agent or the pinned maps report).
pub struct DoctorInput {
    pub admin: SocketAddr,
    pub bpffs_dir: PathBuf,
    pub interfaces: Vec<String>,
}

pub fn run(input: &DoctorInput) -> Vec<Check> {
    let mut checks = vec![bpffs_mounted()];
    let mut interfaces = input.interfaces.clone();
    match dp_status::read(&PinPaths::new(&input.bpffs_dir)) {
        Ok(dataplane) => {
            checks.push(if dataplane.heartbeat.fresh {
                check(
                    Level::Ok,
                    format!(
                        "pinned maps in {}: heartbeat fresh",
                        input.bpffs_dir.display()
                    ),
                )
            } else {
                check(
                    Level::Fail,
                    format!(
                        "pinned maps in {}: heartbeat stale, ARP/NDP not answered",
                        input.bpffs_dir.display()
                    ),
                )
            });
            if interfaces.is_empty() {
                interfaces = dataplane
                    .interfaces
                    .iter()
                    .filter_map(|i| i.name.clone())
                    .collect();
            }
        }
        Err(err) => checks.push(check(
            Level::Fail,
            format!("pinned maps: {}", super::status::error_chain(&err)),
        )),
    }
    checks.extend(agent_checks(input.admin));
    for interface in &interfaces {
        checks.push(xdp_mode(interface));
    }
    checks.extend(rp_filter(&interfaces, |name| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{name}/rp_filter"))
            .ok()
            .and_then(|v| v.trim().parse().ok())
    }));
    checks
}

fn bpffs_mounted() -> Check {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let bpffs: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let (point, kind) = (fields.nth(1)?, fields.next()?);
            (kind == "bpf").then_some(point)
        })
        .collect();
    if bpffs.is_empty() {
        check(
            Level::Fail,
            "bpffs is not mounted (mount -t bpf bpf /sys/fs/bpf)",
        )
    } else {
        check(Level::Ok, format!("bpffs mounted on {}", bpffs.join(", ")))
    }
}

fn agent_checks(addr: SocketAddr) -> Vec<Check> {
    let status = match client::get(addr, "/status") {
        Ok((200, body)) => body,
        Ok((code, _)) => {
            return vec![check(
                Level::Fail,
                format!("agent on {addr} answered /status with {code}"),
            )];
        }
        Err(err) => {
            return vec![check(
                Level::Fail,
                format!("agent: {}", super::status::error_chain(&err)),
            )];
        }
    };
    let Ok(status) = serde_json::from_str::<serde_json::Value>(&status) else {
        return vec![check(
            Level::Fail,
            format!("agent on {addr}: /status is not JSON"),
        )];
    };
    let mut checks = Vec::new();
    if status["ready"].as_bool() == Some(true) {
        checks.push(check(Level::Ok, format!("agent on {addr} is ready")));
    } else {
        let error = status["input"]["error"]
            .as_str()
            .unwrap_or("see vipwire status");
        checks.push(check(
            Level::Warn,
            format!("agent on {addr} answers but is not ready ({error})"),
        ));
    }
    for vip in status["buggy_vips"].as_array().into_iter().flatten() {
        checks.push(check(
            Level::Warn,
            format!(
                "VIP {} ends in .0 or .255: some clients and routers drop it",
                vip.as_str().unwrap_or("?")
            ),
        ));
    }
    checks.extend(super::bgp::doctor_checks(&status));
    for conflict in status["conflicts"].as_array().into_iter().flatten() {
        checks.push(check(
            Level::Warn,
            format!("VIP conflict: {}", conflict.as_str().unwrap_or("?")),
        ));
    }
    checks
}

/// The XDP mode `ip -d link` reports: `xdp` (native), `xdpgeneric`, `xdpoffload`, or none.
fn xdp_mode(interface: &str) -> Check {
    let output = Command::new("ip")
        .args(["-d", "link", "show", "dev", interface])
        .output();
    let text = match output {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => {
            return check(
                Level::Fail,
                format!(
                    "interface {interface}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            );
        }
        Err(err) => {
            return check(
                Level::Warn,
                format!("interface {interface}: running ip: {err}"),
            );
        }
    };
    match parse_xdp_mode(&text) {
        Some("xdp" | "xdpdrv") => check(Level::Ok, format!("interface {interface}: XDP native")),
        Some("xdpoffload") => check(Level::Ok, format!("interface {interface}: XDP offloaded")),
        Some(mode) => check(
            Level::Warn,
            format!("interface {interface}: XDP {mode} (generic/skb mode: slower than native)"),
        ),
        None => check(
            Level::Fail,
            format!("interface {interface}: no XDP program attached"),
        ),
    }
}

/// The mode word after `mtu N` in the first line of `ip -d link show`.
fn parse_xdp_mode(text: &str) -> Option<&str> {
    let first = text.lines().next()?;
    first.split_whitespace().find(|w| w.starts_with("xdp"))
}

/// rp_filter: the effective value is the max of `all` and the interface's. Strict (1) on an
/// uplink drops VIP traffic whose return route points elsewhere.
fn rp_filter(interfaces: &[String], read: impl Fn(&str) -> Option<u8>) -> Vec<Check> {
    let all = read("all");
    let default = read("default");
    let mut checks = vec![check(
        Level::Ok,
        format!("rp_filter: all={} default={}", show(all), show(default)),
    )];
    for interface in interfaces {
        let own = read(interface);
        let effective = own.max(all);
        let level = if effective == Some(1) {
            Level::Warn
        } else {
            Level::Ok
        };
        let hint = if level == Level::Warn {
            " (strict: asymmetric VIP traffic may be dropped; 0 or 2 is safer on uplinks)"
        } else {
            ""
        };
        checks.push(check(
            level,
            format!(
                "rp_filter on {interface}: {} (effective {}){hint}",
                show(own),
                show(effective)
            ),
        ));
    }
    checks
}

fn show(value: Option<u8>) -> String {
    value.map_or("?".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_mode_is_the_word_after_mtu() {
        let native = "2: eth0: <BROADCAST,MULTICAST,UP> mtu 1500 xdp qdisc noqueue state UP\n    prog/xdp id 12";
        let generic = "2: eth0: <BROADCAST> mtu 1500 xdpgeneric qdisc noqueue\n";
        let none = "2: eth0: <BROADCAST> mtu 1500 qdisc noqueue\n    link/ether";
        assert_eq!(parse_xdp_mode(native), Some("xdp"));
        assert_eq!(parse_xdp_mode(generic), Some("xdpgeneric"));
        assert_eq!(parse_xdp_mode(none), None);
    }

    #[test]
    fn strict_rp_filter_warns_per_interface_and_all_counts() {
        let values = |all: u8, eth0: u8| {
            move |name: &str| match name {
                "all" => Some(all),
                "default" => Some(0),
                "eth0" => Some(eth0),
                _ => None,
            }
        };
        let ifs = vec!["eth0".to_owned()];
        assert_eq!(rp_filter(&ifs, values(0, 1))[1].level, Level::Warn);
        assert_eq!(rp_filter(&ifs, values(1, 0))[1].level, Level::Warn);
        assert_eq!(rp_filter(&ifs, values(0, 2))[1].level, Level::Ok);
        // Loose (2) wins over strict (1): the kernel takes the max.
        assert_eq!(rp_filter(&ifs, values(1, 2))[1].level, Level::Ok);
        assert_eq!(rp_filter(&ifs, values(0, 0))[1].level, Level::Ok);
    }
}
