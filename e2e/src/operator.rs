//! The `bulwark` operator binary, run as a real process against the test cluster.

use crate::process::{Process, free_port};
use anyhow::{Result, anyhow};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Path of the `bulwark` binary: `BULWARK_BIN`, else the workspace's own (see [`workspace_binary`]).
pub fn bulwark_binary() -> Result<PathBuf> {
    match std::env::var_os("BULWARK_BIN") {
        Some(path) => Ok(path.into()),
        None => workspace_binary("bulwark", "bulwark"),
    }
}

/// A binary of this workspace, rebuilt once per test process with cargo (a no-op when fresh) so
/// a test never runs a stale one. Test and harness binaries live in target/<profile>[/deps];
/// binaries in target/<profile>. This package's own binaries are built by cargo before its tests
/// and harness binaries run, so they are used as they are. Others are built with the feature
/// set of `cargo test --workspace` (every package, tests included): with any other set, cargo
/// would rebuild the shared dependencies here and again at the next test build.
pub fn workspace_binary(package: &str, bin: &str) -> Result<PathBuf> {
    static BUILT: Mutex<BTreeMap<String, Result<PathBuf, String>>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(result) = built.get(bin) {
        return result.clone().map_err(|e| anyhow!(e));
    }
    let result = (|| {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let profile_dir = exe.parent().map(|d| {
            if d.ends_with("deps") {
                d.parent().unwrap()
            } else {
                d
            }
        });
        let path = profile_dir.ok_or("no target directory")?.join(bin);
        if package == env!("CARGO_PKG_NAME") && path.is_file() {
            return Ok(path);
        }
        let release = profile_dir.is_some_and(|d| d.ends_with("release"));
        let mut cargo =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo.args(["build", "--quiet", "--workspace", "--bins", "--tests"]);
        // Variables cargo set for this test process describe its package, not the build; build
        // scripts that watch them (ring's: CARGO_MANIFEST_DIR) would rerun and rebuild everything
        // above them, here and again at the next `cargo test`.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if [
                "CARGO_MANIFEST_",
                "CARGO_PKG_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_",
            ]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            {
                cargo.env_remove(&*name);
            }
        }
        if release {
            cargo.arg("--release");
        }
        let status = cargo
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status();
        match status {
            Ok(s) if s.success() && path.is_file() => Ok(path),
            other => Err(format!("could not build {bin} with cargo ({other:?})")),
        }
    })();
    built.insert(bin.to_string(), result.clone());
    result.map_err(|e| anyhow!(e))
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

/// One operator replica watching only `ns`, with a short leader Lease there.
pub fn start_operator(
    kubeconfig: &Path,
    ns: &str,
    identity: &str,
    extra_args: &[&str],
    log_dir: &Path,
) -> Result<Operator> {
    let mut args = vec![
        format!("--watch-namespace={ns}"),
        format!("--lease-namespace={ns}"),
        "--lease-duration=6s".into(),
        "--renew-deadline=3s".into(),
        "--retry-period=1s".into(),
    ];
    args.extend(extra_args.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Operator::start(kubeconfig, identity, &args, log_dir)
}
