//! Where the upstream binaries come from, in order: a directory named by `KUBEBUILDER_ASSETS`
//! (the envtest convention) or `BULWARK_K8S_BIN`; the version-keyed cache that
//! `e2e/build-binaries.sh` fills; else that script is run to build them from their Go modules.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

const VERSIONS: &str = include_str!("../versions.env");
const BUILD_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/build-binaries.sh");

/// The pinned version of a `KEY=value` line in `e2e/versions.env`.
pub fn pinned(key: &str) -> &'static str {
    VERSIONS
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("{key} missing from e2e/versions.env"))
}

fn version_of(binary: &str) -> &'static str {
    match binary {
        "etcd" => pinned("ETCD_VERSION"),
        "kwok" => pinned("KWOK_VERSION"),
        "helm" => pinned("HELM_VERSION"),
        "coredns" => pinned("COREDNS_VERSION"),
        "external-dns" => pinned("EXTERNAL_DNS_VERSION"),
        "sloth" => pinned("SLOTH_VERSION"),
        _ => pinned("KUBERNETES_VERSION"),
    }
}

/// The cache directory `build-binaries.sh` writes to (it owns the rule, so ask it).
fn cache_dir() -> anyhow::Result<PathBuf> {
    let out = Command::new("bash")
        .arg(BUILD_SCRIPT)
        .arg("--print")
        .output()
        .context("running build-binaries.sh")?;
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

static BUILD: Mutex<()> = Mutex::new(());

const PEERS: [&str; 2] = ["external-dns", "sloth"];

/// Absolute path of an upstream binary (`etcd`, `kube-apiserver`, `kwok`, `helm`, …), building
/// the pinned versions first if nothing provides it.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    for var in ["KUBEBUILDER_ASSETS", "BULWARK_K8S_BIN"] {
        if let Some(dir) = std::env::var_os(var) {
            let path = Path::new(&dir).join(name);
            if path.is_file() {
                return Ok(path);
            }
        }
    }
    let cached = cache_dir()?.join(format!("{name}-{}", version_of(name)));
    if cached.is_file() {
        return Ok(cached);
    }
    let _one_build_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !cached.is_file() {
        eprintln!(
            "{name} not found in KUBEBUILDER_ASSETS, BULWARK_K8S_BIN or the cache; building the pinned binaries"
        );
        // Peers only benchmarks compare with are built on request.
        let peers = PEERS.contains(&name).then_some("--peers");
        let status = Command::new("bash")
            .arg(BUILD_SCRIPT)
            .args(peers)
            .status()
            .context("running build-binaries.sh")?;
        if !status.success() || !cached.is_file() {
            bail!(
                "could not build {name}: e2e/build-binaries.sh exited with {status}; see its output above"
            );
        }
    }
    Ok(cached)
}
