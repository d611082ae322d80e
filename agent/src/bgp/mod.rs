//! The embedded BGP speaker: announces a host route per owned VIP to the configured peers.
//!
//! Layers, each using only those below it: [`speaker`] (one task per peer, the API the agent
//! uses) -> [`session`] (connection, timers, Adj-RIB-Out; sockets and TCP-MD5 in `socket`) -> [`fsm`] (RFC 4271, no IO) -> [`wire`]
//! (netgauze-bgp-pkt behind our own small types).

pub mod fsm;
pub mod session;
mod socket;
pub mod speaker;
pub mod wire;

pub use self::{
    fsm::State,
    session::PeerStatus,
    speaker::{Speaker, StartOptions},
};
