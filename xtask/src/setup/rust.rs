//! The Rust side: clippy/rustfmt on the default toolchain, the pinned nightly with rust-src
//! (plus rustfmt, whose import options the house style uses, and clippy for the BPF crate), and
//! bpf-linker.

use anyhow::{Context as _, bail};

use crate::{BPF_TOOLCHAIN, cache, cmd::Cmd};

const NIGHTLY_COMPONENTS: [&str; 3] = ["rust-src", "rustfmt", "clippy"];

/// bpf-linker version; its LLVM feature is derived from the nightly, never hard-coded.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn toolchains() -> anyhow::Result<()> {
    if which::which("rustup").is_err() {
        bail!("rustup not found on PATH: install Rust with rustup first (https://rustup.rs)");
    }
    Cmd::new("rustup")
        .args(["component", "add", "clippy", "rustfmt"])
        .run()?;
    let installed = Cmd::new("rustup").args(["toolchain", "list"]).output()?;
    let has_components = || -> anyhow::Result<bool> {
        let list = Cmd::new("rustup")
            .args([
                "component",
                "list",
                "--installed",
                "--toolchain",
                BPF_TOOLCHAIN,
            ])
            .output()?;
        Ok(NIGHTLY_COMPONENTS
            .iter()
            .all(|c| list.lines().any(|l| l.starts_with(c))))
    };
    if installed.lines().any(|l| l.starts_with(BPF_TOOLCHAIN)) && has_components()? {
        eprintln!("    {BPF_TOOLCHAIN} with {NIGHTLY_COMPONENTS:?} already installed");
        return Ok(());
    }
    Cmd::new("rustup")
        .args([
            "toolchain",
            "install",
            BPF_TOOLCHAIN,
            "--profile",
            "minimal",
        ])
        .args(NIGHTLY_COMPONENTS.iter().flat_map(|c| ["--component", c]))
        .run()
}

pub fn bpf_linker() -> anyhow::Result<()> {
    let sysroot = Cmd::new("rustc")
        .arg(format!("+{BPF_TOOLCHAIN}"))
        .args(["--print", "sysroot"])
        .output()?;
    let nightly_lib = std::path::PathBuf::from(sysroot.trim()).join("lib");
    let verbose = Cmd::new("rustc")
        .arg(format!("+{BPF_TOOLCHAIN}"))
        .arg("-vV")
        .output()?;
    let llvm_major = llvm_major(&verbose)
        .with_context(|| format!("no `LLVM version:` line in `rustc +{BPF_TOOLCHAIN} -vV`"))?;
    let stamp_text = format!("bpf-linker {BPF_LINKER_VERSION} llvm-{llvm_major} {BPF_TOOLCHAIN}\n");
    let stamp = cache::root()?.join("bpf-linker.stamp");
    if which::which("bpf-linker").is_ok()
        && std::fs::read_to_string(&stamp).is_ok_and(|s| s == stamp_text)
    {
        eprintln!("    {}", stamp_text.trim());
        return Ok(());
    }

    // bpf-linker links against an LLVM of the same major as the rustc that emits the bitcode.
    // Debian has no LLVM of the nightly's major, but the nightly ships its own shared libLLVM:
    // point LLVM_PREFIX at a directory that exposes it as lib/libLLVM.so.
    let libllvm = std::fs::read_dir(&nightly_lib)
        .with_context(|| format!("reading {}", nightly_lib.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("libLLVM.so.") && name.ends_with("-nightly")
        })
        .with_context(|| format!("no libLLVM.so.*-nightly in {}", nightly_lib.display()))?;
    let prefix = cache::versioned("llvm", BPF_TOOLCHAIN)?;
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    for link in [
        lib.join(libllvm.file_name().context("libLLVM file name")?),
        lib.join("libLLVM.so"),
    ] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    Cmd::new("cargo")
        .args(["install", "--locked", "--force"])
        .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{llvm_major}"))
        .env("LLVM_PREFIX", &prefix)
        .run()?;
    std::fs::write(&stamp, stamp_text)?;
    if which::which("bpf-linker").is_err() {
        bail!("bpf-linker was installed but is not on PATH: add ~/.cargo/bin to PATH");
    }
    Ok(())
}

fn llvm_major(rustc_verbose: &str) -> Option<u32> {
    rustc_verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|major| major.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn llvm_major_is_read_from_rustc_verbose_version() {
        let text = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(super::llvm_major(text), Some(22));
        assert_eq!(super::llvm_major("rustc 1.0\n"), None);
    }
}
