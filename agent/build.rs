//! Builds the BPF crate (nightly, bpfel-unknown-none, bpf-linker, BTF) and leaves the object in
//! OUT_DIR, so `cargo build -p vipwire` yields one binary that embeds it.

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Must match ebpf/programs/rust-toolchain.toml and the nightly `cargo xtask setup` installs.
const BPF_TOOLCHAIN: &str = "nightly-2026-05-20";

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root_dir = std::path::Path::new(&manifest_dir)
        .join("../ebpf/programs")
        .canonicalize()
        .context("locating ebpf/programs")?;
    let root_dir = root_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root_dir.display()))?;
    // aya-build re-runs on changes under ebpf/programs; the contract crate is compiled into the
    // object too.
    println!("cargo:rerun-if-changed=../ebpf/common");
    aya_build::build_ebpf(
        [Package {
            name: "vipwire-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(BPF_TOOLCHAIN),
    )
    .context("building the BPF programs (run `cargo xtask setup` if a tool is missing)")
}
