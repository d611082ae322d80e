//! `cargo xtask`: every developer and CI command (see README.md).

mod cache;
mod cmd;
mod setup;

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use crate::cmd::Cmd;

/// The nightly that builds the BPF crate; ebpf/programs/rust-toolchain.toml and
/// agent/build.rs name the same one.
pub const BPF_TOOLCHAIN: &str = "nightly-2026-05-20";

#[derive(Parser)]
#[command(about = "vipwire developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install everything the build and the tests need (idempotent; needs root for apt).
    Setup,
    /// cargo fmt --check and cargo clippy -D warnings, host and BPF crates.
    Check,
    /// Build the agent (which builds and embeds the BPF object) in release mode.
    Build,
    /// Run every test: unit, BPF_PROG_RUN, netns labs, BGP interop, kube-apiserver. Needs root.
    Test {
        /// Extra arguments passed to `cargo test` after `--` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run a benchmark area; writes target/bench/<area>.json. Needs root.
    Bench {
        /// The area to measure; `list` prints them.
        area: String,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Setup => setup::run(),
        Command::Check => check(),
        Command::Build => Cmd::new("cargo")
            .args(["build", "--release", "-p", "vipwire"])
            .run(),
        Command::Test { args } => test(&args),
        Command::Bench { area } => bench(&area),
    }
}

fn check() -> anyhow::Result<()> {
    Cmd::new("cargo")
        .arg(format!("+{BPF_TOOLCHAIN}"))
        .args(["fmt", "--all", "--check"])
        .run()
        .context("formatting differs: run `cargo +nightly-2026-05-20 fmt --all`")?;
    Cmd::new("cargo")
        .args(["clippy", "--all-targets", "--", "-D", "warnings"])
        .run()?;
    // The BPF crate is outside the default members; lint it with its own toolchain and target.
    Cmd::new("cargo")
        .arg(format!("+{BPF_TOOLCHAIN}"))
        .args([
            "clippy",
            "-p",
            "vipwire-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .current_dir(repo_root().join("ebpf/programs"))
        .run()
}

/// The repository root (xtask lives one level below it).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_owned()
}

fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "`cargo xtask {what}` needs root (BPF, XDP, network namespaces, BGP port 179): \
             run it as root, e.g. `sudo -E cargo xtask {what}`"
        );
    }
    Ok(())
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    require_root("test")?;
    setup::preflight()?;
    // The netns labs run the real agent binary (testkit::agent::binary), which `cargo test`
    // does not build for another package's tests.
    Cmd::new("cargo").args(["build", "-p", "vipwire"]).run()?;
    Cmd::new("cargo")
        .args([
            "test",
            "--workspace",
            "--exclude",
            "vipwire-ebpf",
            "--no-fail-fast",
        ])
        .env("VIPWIRE_TOOLS_DIR", cache::bin_dir()?)
        .arg("--")
        .args(extra)
        .run()
}

fn bench(area: &str) -> anyhow::Result<()> {
    require_root("bench")?;
    setup::preflight()?;
    // Labs run the real agent binary, built in the same profile as the bench.
    Cmd::new("cargo")
        .args(["build", "--release", "-p", "vipwire"])
        .run()?;
    Cmd::new("cargo")
        .args([
            "run",
            "--release",
            "-p",
            "vipwire-tests",
            "--bin",
            "vipwire-bench",
            "--",
        ])
        .arg(area)
        .env("VIPWIRE_TOOLS_DIR", cache::bin_dir()?)
        .run()
}
