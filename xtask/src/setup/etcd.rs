//! etcd >= 3.5.11 (current kube-apiserver refuses older ones; Debian 12 has 3.4). Debian 13's
//! etcd-server/etcd-client packages need only libc, so they are downloaded through a private apt
//! configuration with a trixie source and unpacked into the cache; the system's apt sources are
//! left alone.

use std::path::Path;

use anyhow::{Context as _, bail};

use crate::{cache, cmd::Cmd};

const MIN_VERSION: (u32, u32, u32) = (3, 5, 11);
const MIRROR_FALLBACK: &str = "http://deb.debian.org/debian";

pub fn install() -> anyhow::Result<()> {
    let bin = cache::bin_dir()?;
    if let Some(version) = installed_version(&bin.join("etcd"))
        && bin.join("etcdctl").is_file()
    {
        eprintln!("    etcd {version} already installed");
        return Ok(());
    }
    let apt_dir = cache::root()?.join("apt-trixie");
    let apt_options = private_apt_config(&apt_dir)?;
    Cmd::new("apt-get")
        .args(&apt_options)
        .args(["update", "-q"])
        .run()
        .context("apt-get update with the private trixie source")?;
    let debs = apt_dir.join("debs");
    let _ = std::fs::remove_dir_all(&debs);
    std::fs::create_dir_all(&debs)?;
    Cmd::new("apt-get")
        .args(&apt_options)
        .args(["download", "-q", "etcd-server", "etcd-client"])
        .current_dir(&debs)
        .run()?;

    let mut server_version = None;
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(&debs)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        // etcd-server_3.5.16-4_amd64.deb
        if let Some(rest) = name.strip_prefix("etcd-server_") {
            server_version = rest.split('_').next().map(str::to_owned);
        }
        paths.push(path);
    }
    let version = server_version.context("apt-get download produced no etcd-server package")?;
    let root = cache::versioned("etcd", &version)?.join("root");
    for deb in &paths {
        Cmd::new("dpkg-deb").arg("-x").arg(deb).arg(&root).run()?;
    }
    std::fs::create_dir_all(&bin)?;
    for tool in ["etcd", "etcdctl"] {
        let target = root.join("usr/bin").join(tool);
        link(&target, &bin.join(tool))?;
    }
    match installed_version(&bin.join("etcd")) {
        Some(v) => eprintln!("    etcd {v} installed"),
        None => bail!("etcd {version} from trixie is older than {MIN_VERSION:?} or does not run"),
    }
    Ok(())
}

/// `-o` options that make apt-get use only `dir` for sources, lists and downloads.
fn private_apt_config(dir: &Path) -> anyhow::Result<Vec<String>> {
    for sub in ["lists/partial", "archives/partial", "cache", "parts"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let sources = dir.join("sources.list");
    std::fs::write(
        &sources,
        format!(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {} trixie main\n",
            debian_mirror()
        ),
    )?;
    let d = |p: &str| dir.join(p).display().to_string();
    Ok(vec![
        format!("-oDir::Etc::SourceList={}", sources.display()),
        format!("-oDir::Etc::SourceParts={}", d("parts")),
        format!("-oDir::State::Lists={}", d("lists")),
        format!("-oDir::Cache={}", d("cache")),
        format!("-oDir::Cache::Archives={}", d("archives")),
        // The cache is root's; apt's sandbox user could not write there.
        "-oAPT::Sandbox::User=root".to_owned(),
    ])
}

/// The machine's own Debian mirror (from its apt sources), so the private config reaches the
/// same registry the machine already uses.
fn debian_mirror() -> String {
    let mut texts: Vec<String> = std::fs::read_to_string("/etc/apt/sources.list")
        .into_iter()
        .collect();
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        texts.extend(
            entries
                .flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok()),
        );
    }
    texts
        .iter()
        .flat_map(|t| t.lines())
        .filter_map(|line| {
            let line = line.trim();
            line.strip_prefix("URIs:").map(str::trim).or_else(|| {
                line.strip_prefix("deb ")
                    .and_then(|r| r.split_whitespace().find(|w| w.starts_with("http")))
            })
        })
        .flat_map(str::split_whitespace)
        .find(|uri| uri.trim_end_matches('/').ends_with("/debian"))
        .map(|uri| uri.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| MIRROR_FALLBACK.to_owned())
}

fn installed_version(etcd: &Path) -> Option<String> {
    let out = Cmd::new(etcd).arg("--version").output().ok()?;
    let version = out
        .lines()
        .find_map(|l| l.strip_prefix("etcd Version: "))?
        .trim()
        .to_owned();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let parsed = (parts.next()??, parts.next()??, parts.next()??);
    (parsed >= MIN_VERSION).then_some(version)
}

/// Replaces `link` with a symlink to `target`.
pub fn link(target: &Path, link: &Path) -> anyhow::Result<()> {
    if !target.is_file() {
        bail!("{} is missing", target.display());
    }
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))
}
