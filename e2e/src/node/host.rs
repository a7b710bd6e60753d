//! The host side of the pod network, which is one per machine: a lock so that two local control
//! planes never share it, a sweep of what a killed run left behind, and teardown.

use super::network;
use anyhow::{Context, Result, bail};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

/// Held while a control plane with node agents runs; dropping it removes the host links.
pub struct PodNetwork {
    _lock: std::fs::File,
}

impl PodNetwork {
    /// Takes the machine's pod network: fails, naming the holder, if another run has it;
    /// otherwise sweeps what a dead run left and creates the gateway.
    pub fn take(runs_root: &Path) -> Result<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!(
                "the local control plane's node agents need root (network and mount namespaces); \
                 run as root, or point BULWARK_E2E_KUBECONFIG at another cluster (README: kind)"
            );
        }
        std::fs::create_dir_all(runs_root)?;
        let path = runs_root.join("pod-network.lock");
        let mut lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own; released when it closes (also on SIGKILL).
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut holder = String::new();
            let _ = lock.read_to_string(&mut holder);
            bail!(
                "another local control plane (pid {}) has this machine's pod network; stop it first",
                holder.trim()
            );
        }
        lock.set_len(0)?;
        lock.rewind()?;
        write!(lock, "{}", std::process::id())?;
        sweep();
        network::create_gateway()?;
        Ok(Self { _lock: lock })
    }
}

/// Removes host links of a previous run. Pod veths die with their sandbox, and mounts with the
/// mount namespaces of their processes, so after a SIGKILLed harness only the gateway and
/// kube-proxy's rules can remain; all are removed here.
pub fn sweep() {
    for link in network::leftover_links() {
        network::remove_link(&link);
    }
    super::services::remove_rules();
}

/// What a previous run left on this host (for the test that SIGKILLs a harness).
pub fn leftovers() -> Vec<String> {
    let mut found: Vec<String> = network::leftover_links()
        .into_iter()
        .map(|l| format!("link {l}"))
        .collect();
    found.extend(
        super::services::leftover_rules()
            .into_iter()
            .map(|t| format!("nftables table {t}")),
    );
    found
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        sweep();
    }
}
