//! `cargo xtask setup`: everything the build and the tests need, on a fresh machine of this
//! project's kind. Every step checks first and does nothing when its result is already there,
//! so a second run takes seconds.

mod apt;
mod etcd;
mod gotools;
mod rust;

use anyhow::bail;

use crate::cache;

/// Runs every step in order, printing progress.
pub fn run() -> anyhow::Result<()> {
    step(
        "Rust toolchains (stable components, pinned nightly + rust-src)",
        rust::toolchains,
    )?;
    step(
        "bpf-linker (linked to the nightly's own LLVM)",
        rust::bpf_linker,
    )?;
    step("Debian packages for the labs", apt::packages)?;
    step("etcd >= 3.5 (from Debian trixie)", etcd::install)?;
    step("kube-apiserver (built from Go modules)", || {
        gotools::install(gotools::KUBE_APISERVER)
    })?;
    step("helm (built from Go modules)", || {
        gotools::install(gotools::HELM)
    })?;
    eprintln!(
        "==> setup complete; tools linked in {}",
        cache::bin_dir()?.display()
    );
    Ok(())
}

/// A quick check, without network or installs, that setup has run: what `cargo xtask test`
/// and `bench` do first so a missing tool is named up front.
pub fn preflight() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for tool in ["etcd", "etcdctl", "kube-apiserver", "helm"] {
        if !cache::bin_dir()?.join(tool).is_file() {
            missing.push(tool.to_owned());
        }
    }
    if which::which("bpf-linker").is_err() {
        missing.push("bpf-linker".to_owned());
    }
    missing.extend(apt::missing_commands());
    if !missing.is_empty() {
        bail!(
            "missing prerequisites: {}; run `cargo xtask setup`",
            missing.join(", ")
        );
    }
    Ok(())
}

fn step(what: &str, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    eprintln!("==> {what}");
    let started = std::time::Instant::now();
    f().map_err(|err| err.context(format!("setup step failed: {what}")))?;
    eprintln!("    ok ({:.1?})", started.elapsed());
    Ok(())
}
