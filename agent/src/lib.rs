//! vipwire: the agent library. `main.rs` is a thin shell around [`cli`].

pub mod admin;
pub mod bgp;
pub mod cli;
pub mod coalesce;
pub mod config;
pub mod dataplane;
pub mod l2;
pub mod model;
pub mod run;
pub mod snapshot;
pub mod source;
#[cfg(test)]
mod test_rng;

/// `outer: inner: innermost` on one line: every error the agent prints is one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
