//! `bulwark-node`: a node agent of the local control plane, plus the short-lived helper modes it
//! runs its pods with (see e2e/src/node). Not a user-facing tool; the harness starts it.
//!
//!   bulwark-node agent --node N --zone Z --pod-cidr CIDR --dir DIR [--image REPO=PATH]... (KUBECONFIG)
//!   bulwark-node network-policies (KUBECONFIG)
//!   bulwark-node sandbox HOSTNAME
//!   bulwark-node container SPEC.json
//!   bulwark-node enter PID UID GID -- COMMAND...

use anyhow::{Context, Result, bail};
use bulwark_e2e::node::{agent, images::ImageTable, launch, logs, netpol};
use std::path::PathBuf;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The helper modes must stay single-threaded (setns, unshare): no runtime before them.
    match args.first().map(String::as_str) {
        Some("sandbox") => launch::sandbox(args.get(1).context("sandbox HOSTNAME")?),
        Some("container") => {
            launch::container(&PathBuf::from(args.get(1).context("container SPEC")?))
        }
        Some("enter") => {
            let number = |i: usize| -> Result<u32> {
                Ok(args
                    .get(i)
                    .context("enter PID UID GID -- COMMAND")?
                    .parse()?)
            };
            let command: Vec<String> = args
                .iter()
                .skip_while(|a| *a != "--")
                .skip(1)
                .cloned()
                .collect();
            launch::enter(number(1)? as i32, number(2)?, number(3)?, &command)
        }
        Some("agent") => run_agent(&args[1..]),
        Some("network-policies") => runtime()?.block_on(async {
            let client = kube::Client::try_default()
                .await
                .context("KUBECONFIG for the enforcer")?;
            netpol::enforce(client).await
        }),
        _ => bail!("usage: bulwark-node agent|network-policies|sandbox|container|enter ..."),
    }
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("--{name}=")).map(str::to_string))
}

fn run_agent(args: &[String]) -> Result<()> {
    let required = |name: &str| flag(args, name).with_context(|| format!("--{name}= is required"));
    let images: Vec<String> = args
        .iter()
        .filter_map(|a| a.strip_prefix("--image=").map(str::to_string))
        .collect();
    let (service_host, service_port) = flag(args, "kubernetes-service")
        .unwrap_or_else(|| "10.96.0.1:443".into())
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.parse().unwrap_or(443)))
        .context("--kubernetes-service=HOST:PORT")?;
    let config = agent::AgentConfig {
        node: required("node")?,
        zone: required("zone")?,
        pod_cidr: required("pod-cidr")?,
        dir: PathBuf::from(required("dir")?),
        images: ImageTable::parse(&images)?,
        cluster_dns: flag(args, "cluster-dns").map(|ip| ip.parse()).transpose()?,
        kubernetes_service: (service_host, service_port),
        kubelet_port: flag(args, "kubelet-port")
            .map(|p| p.parse())
            .transpose()?
            .unwrap_or(0),
        tls: logs::TlsFiles {
            cert: required("tls-cert")?.into(),
            key: required("tls-key")?.into(),
            client_ca: required("client-ca")?.into(),
        },
    };
    runtime()?.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("KUBECONFIG for the node agent")?;
        agent::run(config, client).await
    })
}

/// Logging and a small runtime for the long-running modes.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    bulwark_controllers::runtime::ensure_crypto_provider();
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}
