//! Debian packages the labs use: real BGP daemons, BPF/XDP tools, packet tools.

use std::path::Path;

use anyhow::bail;

use crate::cmd::Cmd;

/// (package, a program it installs): the program is what `preflight` checks for.
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "/usr/sbin/ip"),
    ("iputils-ping", "/usr/bin/ping"),
    ("iputils-arping", "/usr/bin/arping"),
    ("ndisc6", "/usr/bin/ndisc6"),
    ("frr", "/usr/lib/frr/bgpd"),
    ("bird2", "/usr/sbin/bird"),
    ("gobgpd", "/usr/bin/gobgpd"),
    ("bpftool", "/usr/sbin/bpftool"),
    ("xdp-tools", "/usr/sbin/xdp-filter"),
    ("tcpdump", "/usr/bin/tcpdump"),
    ("iptables", "/usr/sbin/iptables"),
    ("nftables", "/usr/sbin/nft"),
    ("conntrack", "/usr/sbin/conntrack"),
    ("socat", "/usr/bin/socat"),
    ("netcat-openbsd", "/usr/bin/nc.openbsd"),
    ("ethtool", "/usr/sbin/ethtool"),
    ("openssl", "/usr/bin/openssl"),
    ("procps", "/usr/sbin/sysctl"),
];

pub fn packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .map(|(package, _)| *package)
        .filter(|package| !installed(package))
        .collect();
    if missing.is_empty() {
        eprintln!("    all {} packages installed", PACKAGES.len());
        return Ok(());
    }
    eprintln!("    installing: {}", missing.join(" "));
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "installing Debian packages needs root; missing: {}",
            missing.join(" ")
        );
    }
    if which::which("apt-get").is_err() {
        bail!(
            "apt-get not found: this setup supports Debian-based machines; install by hand: {}",
            missing.join(" ")
        );
    }
    Cmd::new("apt-get")
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()?;
    Cmd::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()?;
    let still: Vec<&str> = missing.into_iter().filter(|p| !installed(p)).collect();
    if !still.is_empty() {
        bail!("apt-get did not install: {}", still.join(" "));
    }
    Ok(())
}

/// Programs of the lab packages that are not on this machine, by package name.
pub fn missing_commands() -> Vec<String> {
    PACKAGES
        .iter()
        .filter(|(_, program)| !Path::new(program).exists())
        .map(|(package, program)| format!("{program} (package {package})"))
        .collect()
}

fn installed(package: &str) -> bool {
    Cmd::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", package])
        .output()
        .is_ok_and(|status| status.starts_with("ii"))
}
