//! The `bulwark` operator binary, run as a real process against the test cluster.

use crate::process::{Process, free_port};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Path of the `bulwark` binary: `BULWARK_BIN`, else the one cargo built next to this test
/// binary (target/<profile>/bulwark), else built now with cargo.
pub fn bulwark_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("BULWARK_BIN") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe()?;
    // Test binaries live in target/<profile>/deps; binaries in target/<profile>.
    let profile_dir = exe
        .ancestors()
        .find(|p| p.join("bulwark").is_file() || p.ends_with("deps"))
        .map(|p| {
            if p.ends_with("deps") {
                p.parent().unwrap().to_path_buf()
            } else {
                p.to_path_buf()
            }
        });
    let candidate = profile_dir.map(|d| d.join("bulwark"));
    if let Some(path) = candidate.as_ref().filter(|p| p.is_file()) {
        return Ok(path.clone());
    }
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "-p", "bulwark", "--bin", "bulwark"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .status()
        .context("cargo build -p bulwark")?;
    match candidate {
        Some(path) if status.success() && path.is_file() => Ok(path),
        _ => bail!("could not find or build the bulwark binary; set BULWARK_BIN"),
    }
}

/// A running `bulwark run` process with its own metrics port.
pub struct Operator {
    pub process: Process,
    pub metrics_addr: String,
    pub identity: String,
}

impl Operator {
    /// Starts `bulwark run` as `identity` with extra `args`, logging to `log_dir/<identity>.log`.
    pub fn start(kubeconfig: &Path, identity: &str, args: &[&str], log_dir: &Path) -> Result<Self> {
        let metrics_addr = format!("127.0.0.1:{}", free_port()?);
        let mut all_args = vec![
            "run".to_string(),
            format!("--metrics-addr={metrics_addr}"),
            format!("--identity={identity}"),
            "--log-format=json".to_string(),
        ];
        all_args.extend(args.iter().map(|a| a.to_string()));
        std::fs::create_dir_all(log_dir)?;
        let log = log_dir.join(format!("{identity}.log"));
        let process = Process::spawn(
            identity,
            &bulwark_binary()?,
            &all_args,
            &[("KUBECONFIG", kubeconfig)],
            &log,
        )?;
        Ok(Self {
            process,
            metrics_addr,
            identity: identity.into(),
        })
    }

    /// GET `path` on the operator's HTTP port: (status, body), or an error if not listening.
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        let response = reqwest::Client::new()
            .get(format!("http://{}{path}", self.metrics_addr))
            .timeout(Duration::from_secs(5))
            .send()
            .await?;
        Ok((response.status().as_u16(), response.text().await?))
    }
}
