//! Go programs no registry ships as binaries, built with Go's own client from the wrapper
//! modules committed under xtask/gotools/ (go.mod + go.sum pin every dependency) and cached
//! outside the repository, keyed by version.

use anyhow::{Context as _, bail};

use crate::{cache, cmd::Cmd, repo_root};

pub struct GoTool {
    /// The program's name, its cache directory and its link in the tools dir.
    pub name: &'static str,
    /// Wrapper module directory, relative to the repository root.
    pub module_dir: &'static str,
    /// The module whose version (from the wrapper's go.mod) keys the cache.
    pub versioned_module: &'static str,
    /// The package to build.
    pub package: &'static str,
    /// `-X` flags so the binary reports its real version (`{v}` is replaced by it).
    pub version_ldflags: &'static [&'static str],
}

pub const KUBE_APISERVER: GoTool = GoTool {
    name: "kube-apiserver",
    module_dir: "xtask/gotools/kube-apiserver",
    versioned_module: "k8s.io/kubernetes",
    package: "k8s.io/kubernetes/cmd/kube-apiserver",
    version_ldflags: &[
        "k8s.io/component-base/version.gitVersion={v}",
        "k8s.io/component-base/version.gitMajor={major}",
        "k8s.io/component-base/version.gitMinor={minor}",
        "k8s.io/component-base/version.gitTreeState=clean",
    ],
};

pub const HELM: GoTool = GoTool {
    name: "helm",
    module_dir: "xtask/gotools/helm",
    versioned_module: "helm.sh/helm/v3",
    package: "helm.sh/helm/v3/cmd/helm",
    version_ldflags: &["helm.sh/helm/v3/internal/version.version={v}"],
};

pub fn install(tool: GoTool) -> anyhow::Result<()> {
    let module_dir = repo_root().join(tool.module_dir);
    let go_mod = std::fs::read_to_string(module_dir.join("go.mod"))
        .with_context(|| format!("reading {}/go.mod", module_dir.display()))?;
    let version = required_version(&go_mod, tool.versioned_module).with_context(|| {
        format!(
            "no `require {} vX` in {}/go.mod",
            tool.versioned_module, tool.module_dir
        )
    })?;
    let dir = cache::versioned(tool.name, &version)?;
    let binary = dir.join(tool.name);
    let link = cache::bin_dir()?.join(tool.name);
    std::fs::create_dir_all(cache::bin_dir()?)?;
    if binary.is_file() {
        eprintln!("    {} {version} cached in {}", tool.name, dir.display());
        return super::etcd::link(&binary, &link);
    }
    require_go(&go_mod)?;
    eprintln!(
        "    building {} {version} (cold: several minutes and ~1 GB of Go module cache)",
        tool.name
    );
    let ldflags = ldflags(&tool, &version);
    let partial = dir.join(format!("{}.partial", tool.name));
    Cmd::new("go")
        .args(["build", "-trimpath", "-ldflags"])
        .arg(ldflags)
        .arg("-o")
        .arg(&partial)
        .arg(tool.package)
        .current_dir(&module_dir)
        // Never let the build rewrite the committed go.mod/go.sum.
        .env("GOFLAGS", "-mod=readonly")
        .run()?;
    std::fs::rename(&partial, &binary)?;
    super::etcd::link(&binary, &link)
}

fn ldflags(tool: &GoTool, version: &str) -> String {
    let mut numbers = version.trim_start_matches('v').split('.');
    let major = numbers.next().unwrap_or("0");
    let minor = numbers.next().unwrap_or("0");
    let mut flags = vec!["-s".to_owned(), "-w".to_owned()];
    for x in tool.version_ldflags {
        let value = x
            .replace("{v}", version)
            .replace("{major}", major)
            .replace("{minor}", minor);
        flags.push(format!("-X {value}"));
    }
    flags.join(" ")
}

/// The version in `require <module> <version>` (single-line or inside a block).
fn required_version(go_mod: &str, module: &str) -> Option<String> {
    go_mod.lines().find_map(|line| {
        let line = line.trim().trim_start_matches("require").trim();
        let mut words = line.split_whitespace();
        (words.next() == Some(module))
            .then(|| words.next().map(str::to_owned))
            .flatten()
    })
}

fn require_go(go_mod: &str) -> anyhow::Result<()> {
    let wanted = go_mod
        .lines()
        .find_map(|l| l.strip_prefix("go "))
        .unwrap_or("1.24")
        .trim()
        .to_owned();
    let Ok(go) = which::which("go") else {
        bail!(
            "the Go toolchain (go >= {wanted}) is not on PATH: install Go to build kube-apiserver and helm"
        );
    };
    let version = Cmd::new(&go).arg("version").output()?;
    let found = found_go_version(&version);
    match (found, parse_go_version(&wanted)) {
        (Some(found), Some(wanted_v)) if found >= wanted_v => Ok(()),
        _ => bail!(
            "Go >= {wanted} is needed to build kube-apiserver and helm; found: {}",
            version.trim()
        ),
    }
}

/// `go version go1.26.8 linux/amd64` -> (1, 26)
fn found_go_version(output: &str) -> Option<(u32, u32)> {
    output
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("go"))
        .find_map(parse_go_version)
}

fn parse_go_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_required_versions_from_go_mod() {
        let go_mod = "module x\n\ngo 1.24.0\n\nrequire k8s.io/kubernetes v1.34.4\n\nrequire (\n\thelm.sh/helm/v3 v3.19.5\n\tother v1\n)\n";
        assert_eq!(
            required_version(go_mod, "k8s.io/kubernetes").as_deref(),
            Some("v1.34.4")
        );
        assert_eq!(
            required_version(go_mod, "helm.sh/helm/v3").as_deref(),
            Some("v3.19.5")
        );
        assert_eq!(required_version(go_mod, "absent"), None);
    }

    #[test]
    fn version_ldflags_carry_major_and_minor() {
        let flags = ldflags(&KUBE_APISERVER, "v1.34.4");
        assert!(flags.contains("-X k8s.io/component-base/version.gitVersion=v1.34.4"));
        assert!(flags.contains("gitMajor=1 "));
        assert!(flags.contains("gitMinor=34 "));
    }

    #[test]
    fn go_versions_compare_numerically() {
        assert!(parse_go_version("1.26.8") >= parse_go_version("1.24.0"));
        assert!(parse_go_version("1.9") < parse_go_version("1.24"));
        assert_eq!(
            found_go_version("go version go1.26.8 linux/amd64"),
            Some((1, 26))
        );
    }
}
