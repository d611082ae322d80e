//! vipwire: the agent library. `main.rs` is a thin shell around [`cli`].

pub mod admin;
pub mod bgp;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod l2;
pub mod model;
pub mod run;
pub mod snapshot;
pub mod source;
