//! The config file (DESIGN.md, "Config file") and how flags override it. Parsed once, at the
//! edge; everything after works with the validated [`Config`].

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::dataplane::paths::DEFAULT_BPFFS_DIR;

/// A config problem, named by its field path (`bgp.peers[0].asn`), for a one-line error.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The validated configuration the agent runs with.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub node_name: String,
    pub interfaces: Vec<String>,
    pub load_balancer_class: Option<String>,
    pub bgp: Option<BgpConfig>,
    pub l2: L2Config,
    pub admin_listen: SocketAddr,
    pub bpffs_dir: PathBuf,
    pub l4: L4Config,
}

#[derive(Clone, Debug, PartialEq)]
pub struct L4Config {
    /// The smallest Maglev table a service gets (one of `vipwire_common::l4::MAGLEV_SIZES`);
    /// a service with more than `size / 100` active local backends gets a bigger one.
    pub maglev_table_size: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct L2Config {
    pub enabled: bool,
    /// The XDP program stops answering when the agent's heartbeat is older than this.
    pub heartbeat_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BgpConfig {
    pub asn: u32,
    pub router_id: Option<Ipv4Addr>,
    pub peers: Vec<PeerConfig>,
    pub advertisement: Advertisement,
    /// Graceful restart (RFC 4724) restart time; zero: no graceful restart. When the agent's
    /// connection closes without a NOTIFICATION (the process crashed or was killed, the node
    /// is alive and its pinned XDP program keeps forwarding), peers keep its routes as stale
    /// this long while it restarts; it is also how long the routes of an agent that does not
    /// come back linger. A node that dies outright is unaffected: its hold timer expires with
    /// a NOTIFICATION, which ends graceful restart (no N bit, RFC 8538), and a SIGTERM
    /// withdraws and sends Cease first.
    pub graceful_restart_time: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PeerConfig {
    pub address: IpAddr,
    pub asn: u32,
    pub hold_time: Duration,
    pub keepalive_time: Duration,
    pub password: Option<String>,
    pub port: u16,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Advertisement {
    pub communities: Vec<(u16, u16)>,
    pub large_communities: Vec<(u32, u32, u32)>,
    pub local_pref: Option<u32>,
    /// MULTI_EXIT_DISC on every route.
    pub med: Option<u32>,
}

/// What the command line says; every `Some` overrides the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub node_name: Option<String>,
    pub interfaces: Vec<String>,
    pub bpffs_dir: Option<PathBuf>,
    pub heartbeat_timeout: Option<Duration>,
    pub admin_listen: Option<SocketAddr>,
}

/// Loads `file` (if any), applies the flag overrides and validates the result. `default_node`
/// is `$NODE_NAME`, else the hostname.
pub fn load(
    file: Option<&Path>,
    overrides: Overrides,
    default_node: Option<String>,
) -> Result<Config, ConfigError> {
    let raw = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            parse(&text).map_err(|message| ConfigError::Parse {
                path: path.to_owned(),
                message,
            })?
        }
        None => RawConfig::default(),
    };
    validate(raw, overrides, default_node)
}

/// Only the bpffs directory of a config file (for `status`, which needs nothing else).
pub fn load_bpffs_dir(file: &Path) -> Result<PathBuf, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        path: file.to_owned(),
        source,
    })?;
    let raw = parse(&text).map_err(|message| ConfigError::Parse {
        path: file.to_owned(),
        message,
    })?;
    Ok(raw
        .bpffs_dir
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BPFFS_DIR)))
}

/// Parses the YAML text; the message names the offending field and position.
pub fn parse(text: &str) -> Result<RawConfig, String> {
    if text.trim().is_empty() {
        return Ok(RawConfig::default());
    }
    serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
}

/// The file as written (camelCase keys; unknown keys are errors, so typos do not pass).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawConfig {
    node_name: Option<String>,
    #[serde(default)]
    interfaces: Vec<String>,
    load_balancer_class: Option<String>,
    bgp: Option<RawBgp>,
    l2: Option<RawL2>,
    admin: Option<RawAdmin>,
    bpffs_dir: Option<PathBuf>,
    l4: Option<RawL4>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawL4 {
    maglev_table_size: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawBgp {
    asn: u32,
    router_id: Option<String>,
    #[serde(default)]
    peers: Vec<RawPeer>,
    advertisement: Option<RawAdvertisement>,
    graceful_restart: Option<RawGracefulRestart>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawGracefulRestart {
    restart_time: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPeer {
    address: String,
    asn: u32,
    hold_time: Option<String>,
    keepalive_time: Option<String>,
    password: Option<String>,
    port: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawAdvertisement {
    #[serde(default)]
    communities: Vec<String>,
    #[serde(default)]
    large_communities: Vec<String>,
    local_pref: Option<u32>,
    med: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawL2 {
    enabled: Option<bool>,
    heartbeat_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
}

const DEFAULT_ADMIN: &str = "127.0.0.1:9469";
/// Per-node tables hold only this node's endpoints (a handful per service, not the cluster's
/// hundreds, which is what Cilium's 16381 is sized for): 1021 slots is ≥ 100 × up to 10 local
/// backends, fits one 4 KiB chunk (one map update per table change) and costs 4 KiB per
/// service instead of 64 KiB. Services with more local backends grow automatically.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 1021;
const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_HOLD: Duration = Duration::from_secs(90);
/// Short on purpose: long enough for an agent restart (a pod restart, an upgrade), short
/// enough that a node whose agent crashed for good stops attracting traffic soon.
const DEFAULT_RESTART_TIME: Duration = Duration::from_secs(30);
/// RFC 4724: the restart time is a 12-bit number of seconds.
const MAX_RESTART_TIME: u64 = 4095;

fn validate(
    raw: RawConfig,
    overrides: Overrides,
    default_node: Option<String>,
) -> Result<Config, ConfigError> {
    let node_name = overrides
        .node_name
        .or(raw.node_name)
        .or(default_node)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            invalid(
                "nodeName",
                "not set (flag --node-name, $NODE_NAME or hostname)",
            )
        })?;
    let interfaces = if overrides.interfaces.is_empty() {
        raw.interfaces
    } else {
        overrides.interfaces
    };
    if interfaces.is_empty() {
        return Err(invalid(
            "interfaces",
            "at least one interface is required (--interface IF)",
        ));
    }
    for (i, name) in interfaces.iter().enumerate() {
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
            return Err(invalid(
                format!("interfaces[{i}]"),
                format!("{name:?} is not an interface name"),
            ));
        }
        // Twice would attach twice: the second finds the first's link and reports a restart.
        if interfaces[..i].contains(name) {
            return Err(invalid(
                format!("interfaces[{i}]"),
                format!("{name:?} is listed twice"),
            ));
        }
    }
    let l2 = raw.l2.unwrap_or(RawL2 {
        enabled: None,
        heartbeat_timeout: None,
    });
    let heartbeat_timeout = match (overrides.heartbeat_timeout, l2.heartbeat_timeout) {
        (Some(d), _) => d,
        (None, Some(text)) => duration("l2.heartbeatTimeout", &text)?,
        (None, None) => DEFAULT_HEARTBEAT_TIMEOUT,
    };
    if heartbeat_timeout < Duration::from_secs(1) {
        return Err(invalid("l2.heartbeatTimeout", "must be at least 1s"));
    }
    let admin_listen = match overrides.admin_listen {
        Some(addr) => addr,
        None => {
            let text = raw
                .admin
                .and_then(|a| a.listen)
                .unwrap_or_else(|| DEFAULT_ADMIN.to_owned());
            text.parse()
                .map_err(|_| invalid("admin.listen", format!("{text:?} is not an address:port")))?
        }
    };
    let maglev_table_size = raw
        .l4
        .and_then(|l4| l4.maglev_table_size)
        .unwrap_or(DEFAULT_MAGLEV_TABLE_SIZE);
    if !crate::dataplane::maglev::is_valid_size(maglev_table_size) {
        return Err(invalid(
            "l4.maglevTableSize",
            format!(
                "{maglev_table_size} is not one of {:?}",
                vipwire_common::l4::MAGLEV_SIZES
            ),
        ));
    }
    Ok(Config {
        node_name,
        interfaces,
        load_balancer_class: raw.load_balancer_class,
        bgp: raw.bgp.map(validate_bgp).transpose()?,
        l2: L2Config {
            enabled: l2.enabled.unwrap_or(true),
            heartbeat_timeout,
        },
        admin_listen,
        bpffs_dir: overrides
            .bpffs_dir
            .or(raw.bpffs_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BPFFS_DIR)),
        l4: L4Config { maglev_table_size },
    })
}

fn validate_bgp(raw: RawBgp) -> Result<BgpConfig, ConfigError> {
    if raw.asn == 0 {
        return Err(invalid("bgp.asn", "0 is not a valid AS number"));
    }
    let router_id = raw
        .router_id
        .map(|text| {
            text.parse::<Ipv4Addr>()
                .map_err(|_| invalid("bgp.routerId", format!("{text:?} is not an IPv4 address")))
        })
        .transpose()?;
    let peers = raw
        .peers
        .into_iter()
        .enumerate()
        .map(|(i, p)| validate_peer(i, p))
        .collect::<Result<Vec<_>, _>>()?;
    let adv = raw.advertisement.unwrap_or_default();
    let communities = adv
        .communities
        .iter()
        .enumerate()
        .map(|(i, c)| {
            parse_community(c).ok_or_else(|| {
                invalid(
                    format!("bgp.advertisement.communities[{i}]"),
                    format!("{c:?} is not ASN:VALUE (two 16-bit numbers)"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let large_communities = adv
        .large_communities
        .iter()
        .enumerate()
        .map(|(i, c)| {
            parse_large_community(c).ok_or_else(|| {
                invalid(
                    format!("bgp.advertisement.largeCommunities[{i}]"),
                    format!("{c:?} is not A:B:C (three 32-bit numbers)"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let graceful_restart_time = match raw.graceful_restart.and_then(|gr| gr.restart_time) {
        Some(text) => duration("bgp.gracefulRestart.restartTime", &text)?,
        None => DEFAULT_RESTART_TIME,
    };
    if graceful_restart_time.subsec_nanos() != 0
        || graceful_restart_time.as_secs() > MAX_RESTART_TIME
    {
        return Err(invalid(
            "bgp.gracefulRestart.restartTime",
            format!("must be whole seconds, at most {MAX_RESTART_TIME}s (0s disables)"),
        ));
    }
    Ok(BgpConfig {
        asn: raw.asn,
        router_id,
        peers,
        advertisement: Advertisement {
            communities,
            large_communities,
            local_pref: adv.local_pref,
            med: adv.med,
        },
        graceful_restart_time,
    })
}

fn validate_peer(i: usize, raw: RawPeer) -> Result<PeerConfig, ConfigError> {
    let field = |name: &str| format!("bgp.peers[{i}].{name}");
    let address = raw.address.parse().map_err(|_| {
        invalid(
            field("address"),
            format!("{:?} is not an IP address", raw.address),
        )
    })?;
    if raw.asn == 0 {
        return Err(invalid(field("asn"), "0 is not a valid AS number"));
    }
    let hold_time = match &raw.hold_time {
        Some(text) => duration(&field("holdTime"), text)?,
        None => DEFAULT_HOLD,
    };
    // RFC 4271 4.2: zero (no keepalives) or at least three seconds.
    if hold_time != Duration::ZERO && hold_time < Duration::from_secs(3) {
        return Err(invalid(field("holdTime"), "must be 0 or at least 3s"));
    }
    if hold_time.subsec_nanos() != 0 || hold_time.as_secs() > u64::from(u16::MAX) {
        return Err(invalid(
            field("holdTime"),
            "must be whole seconds, at most 65535s",
        ));
    }
    let keepalive_time = match &raw.keepalive_time {
        Some(text) => duration(&field("keepaliveTime"), text)?,
        None => hold_time / 3,
    };
    if hold_time != Duration::ZERO && keepalive_time >= hold_time {
        return Err(invalid(
            field("keepaliveTime"),
            "must be shorter than holdTime",
        ));
    }
    if let Some(password) = &raw.password
        && (password.is_empty() || password.len() > 80)
    {
        // TCP_MD5SIG_MAXKEYLEN
        return Err(invalid(field("password"), "must be 1 to 80 bytes"));
    }
    Ok(PeerConfig {
        address,
        asn: raw.asn,
        hold_time,
        keepalive_time,
        password: raw.password,
        port: raw.port.unwrap_or(179),
    })
}

/// `9s`, `500ms`, `1m30s`.
fn duration(field: &str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text).map_err(|_| {
        invalid(
            field,
            format!("{text:?} is not a duration (e.g. 9s, 500ms)"),
        )
    })
}

fn parse_community(text: &str) -> Option<(u16, u16)> {
    let (a, b) = text.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn parse_large_community(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.split(':');
    let parsed = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    parts.next().is_none().then_some(parsed)
}

#[cfg(test)]
mod tests;
