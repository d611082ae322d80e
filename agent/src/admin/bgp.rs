//! The BGP part of the admin endpoint: one entry per configured peer in `/status`, the
//! `vipwire_bgp_*` series in `/metrics`, and one `vipwire doctor` line per session.
//!
//! The run loop owns the speaker; it publishes the sessions' status into the admin state after
//! every reconcile and on every heartbeat tick, so a state change shows within one tick.

use std::{net::IpAddr, time::Instant};

use serde::Serialize;

use super::doctor::{Check, Level};
use crate::bgp::{PeerStatus, State};

/// What the speaker reported, and when (uptimes are advanced to the time of the request).
#[derive(Clone, Debug)]
pub struct BgpSnapshot {
    pub peers: Vec<PeerStatus>,
    pub taken: Instant,
}

/// `bgp` in `/status`; absent (`null`) when the config has no `bgp` section.
#[derive(Debug, Serialize)]
pub struct BgpView {
    pub peers: Vec<PeerView>,
}

#[derive(Debug, Serialize)]
pub struct PeerView {
    pub address: IpAddr,
    pub asn: u32,
    /// RFC 4271 state: `Idle`, `Connect`, `Active`, `OpenSent`, `OpenConfirm`, `Established`.
    pub state: &'static str,
    pub established: bool,
    /// Seconds since the session became Established (`null` while it is not).
    pub uptime_seconds: Option<u64>,
    /// Host routes in the peer's Adj-RIB-Out.
    pub routes_announced: usize,
    pub updates_received: u64,
    /// Why the session last went down or failed to come up.
    pub last_error: Option<String>,
}

impl BgpView {
    pub fn of(snapshot: &BgpSnapshot) -> Self {
        let age = snapshot.taken.elapsed();
        Self {
            peers: snapshot
                .peers
                .iter()
                .map(|p| PeerView {
                    address: p.address,
                    asn: p.asn,
                    state: p.state.as_str(),
                    established: p.state == State::Established,
                    uptime_seconds: p.uptime.map(|u| (u + age).as_secs()),
                    routes_announced: p.routes_announced,
                    updates_received: p.updates_received,
                    last_error: p.last_error.clone(),
                })
                .collect(),
        }
    }
}

/// `(metric name, help, type, samples)` for every `vipwire_bgp_*` series, labelled by peer.
pub type Series = (&'static str, &'static str, &'static str, Vec<(String, f64)>);

pub fn metrics(view: &BgpView) -> Vec<Series> {
    let per_peer = |value: &dyn Fn(&PeerView) -> f64| -> Vec<(String, f64)> {
        view.peers
            .iter()
            .map(|p| (format!(r#"{{peer="{}"}}"#, p.address), value(p)))
            .collect()
    };
    vec![
        (
            "bgp_session_established",
            "1 while the session with the peer is Established.",
            "gauge",
            per_peer(&|p| if p.established { 1.0 } else { 0.0 }),
        ),
        (
            "bgp_session_uptime_seconds",
            "Seconds since the session became Established (0 while it is not).",
            "gauge",
            per_peer(&|p| p.uptime_seconds.unwrap_or(0) as f64),
        ),
        (
            "bgp_routes_announced",
            "Host routes announced to the peer (its Adj-RIB-Out).",
            "gauge",
            per_peer(&|p| p.routes_announced as f64),
        ),
        (
            "bgp_updates_received_total",
            "UPDATE messages received from the peer.",
            "counter",
            per_peer(&|p| p.updates_received as f64),
        ),
    ]
}

/// One line per peer of an agent's `/status` JSON (parsed loosely, like the rest of it):
/// Established is OK, a session on its way up (OpenSent/OpenConfirm) a warning, anything else
/// a failure naming the last error.
pub fn doctor_checks(status: &serde_json::Value) -> Vec<Check> {
    let Some(peers) = status["bgp"]["peers"].as_array() else {
        return Vec::new();
    };
    peers
        .iter()
        .map(|p| {
            let address = p["address"].as_str().unwrap_or("?");
            let asn = p["asn"].as_u64().unwrap_or(0);
            let state = p["state"].as_str().unwrap_or("?");
            let error = p["last_error"]
                .as_str()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default();
            let (level, what) = match state {
                "Established" => (
                    Level::Ok,
                    format!(
                        "BGP peer {address} (AS {asn}): Established for {}s, {} routes announced",
                        p["uptime_seconds"].as_u64().unwrap_or(0),
                        p["routes_announced"].as_u64().unwrap_or(0)
                    ),
                ),
                "OpenSent" | "OpenConfirm" => (
                    Level::Warn,
                    format!("BGP peer {address} (AS {asn}): {state}, not yet Established{error}"),
                ),
                _ => (
                    Level::Fail,
                    format!("BGP peer {address} (AS {asn}): {state}, not Established{error}"),
                ),
            };
            Check { level, what }
        })
        .collect()
}

/// The `vipwire status` lines for the `bgp` section (none without one).
pub fn to_text(status: &serde_json::Value) -> String {
    let Some(peers) = status["bgp"]["peers"].as_array() else {
        return String::new();
    };
    let mut out = String::from("bgp peers:\n");
    if peers.is_empty() {
        out.push_str("  none configured\n");
    }
    for p in peers {
        let uptime = p["uptime_seconds"]
            .as_u64()
            .map(|s| format!(" up {s}s"))
            .unwrap_or_default();
        let error = p["last_error"]
            .as_str()
            .map(|e| format!(" (last error: {e})"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  {:<28} AS {:<10} {:<12}{uptime} routes {} updates received {}{error}\n",
            p["address"].as_str().unwrap_or("?"),
            p["asn"].as_u64().unwrap_or(0),
            p["state"].as_str().unwrap_or("?"),
            p["routes_announced"].as_u64().unwrap_or(0),
            p["updates_received"].as_u64().unwrap_or(0),
        ));
    }
    out
}
