//! Services for pods on node agents: upstream kube-proxy (nftables mode) on the host, which all
//! nodes share, and CoreDNS with its kubernetes plugin behind the `kube-dns` Service.

use crate::binaries::binary;
use crate::process::{Process, free_port};
use anyhow::{Context, Result};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

/// The `kube-dns` Service's ClusterIP, written into pods' resolv.conf.
pub const CLUSTER_DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The nftables tables the local control plane's host processes own: kube-proxy's (nftables
/// mode) and the NetworkPolicy enforcer's.
const HOST_TABLES: [&str; 3] = ["ip kube-proxy", "ip6 kube-proxy", "inet bulwark-netpol"];

fn nft(args: &[&str]) -> Option<String> {
    let output = Command::new("nft")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Host nftables tables and chaos partitions a previous run left.
pub fn leftover_rules() -> Vec<String> {
    let listed = nft(&["list", "tables"]).unwrap_or_default();
    listed
        .lines()
        .filter_map(|l| l.trim().strip_prefix("table "))
        .filter(|t| {
            HOST_TABLES.contains(t)
                || t.strip_prefix("inet ").is_some_and(|name| {
                    name.starts_with(bulwark_chaos::node_agent::PARTITION_TABLE_PREFIX)
                })
        })
        .map(str::to_string)
        .collect()
}

pub fn remove_rules() {
    for table in leftover_rules() {
        let mut args = vec!["delete", "table"];
        args.extend(table.split(' '));
        nft(&args);
    }
}

/// Starts kube-proxy for the whole host (every node agent shares the host's network stack).
pub fn start_kube_proxy(dir: &Path, kubeconfig: &Path, node: &str) -> Result<Process> {
    anyhow::ensure!(
        Command::new("nft")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        "kube-proxy's nftables mode needs the nft program (Debian package nftables)"
    );
    let args = vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        "--proxy-mode=nftables".into(),
        format!("--cluster-cidr={}", super::network::CLUSTER_CIDR),
        format!("--hostname-override={node}"),
        format!("--healthz-bind-address=127.0.0.1:{}", free_port()?),
        format!("--metrics-bind-address=127.0.0.1:{}", free_port()?),
        // Leave the host's conntrack table size alone.
        "--conntrack-max-per-core=0".into(),
        "--v=0".into(),
    ];
    Process::spawn(
        "kube-proxy",
        &binary("kube-proxy")?,
        &args,
        &[],
        &dir.join("logs/kube-proxy.log"),
    )
}

/// Starts CoreDNS on the pod gateway address, serving cluster.local from the API server.
pub fn start_coredns(dir: &Path, kubeconfig: &Path) -> Result<Process> {
    let corefile = dir.join("Corefile");
    std::fs::write(
        &corefile,
        format!(
            ".:53 {{\n  bind {gateway}\n  errors\n  kubernetes cluster.local in-addr.arpa ip6.arpa {{\n    kubeconfig {kubeconfig}\n    pods insecure\n    fallthrough in-addr.arpa ip6.arpa\n  }}\n  cache 5\n}}\n",
            gateway = super::network::GATEWAY,
            kubeconfig = kubeconfig.display()
        ),
    )
    .context("writing the Corefile")?;
    let args = vec![format!("-conf={}", corefile.display())];
    Process::spawn(
        "coredns",
        &binary("coredns")?,
        &args,
        &[],
        &dir.join("logs/coredns.log"),
    )
}

/// The `kube-dns` Service and its EndpointSlice (CoreDNS runs on the host, not as a pod).
pub async fn create_kube_dns_service(client: &kube::Client) -> Result<()> {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, PostParams};
    let ports = |protocol: &str| serde_json::json!({"name": format!("dns-{}", protocol.to_lowercase()), "port": 53, "protocol": protocol});
    let service: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
        "spec": {"clusterIP": CLUSTER_DNS.to_string(), "ports": [ports("UDP"), ports("TCP")]},
    }))?;
    Api::<Service>::namespaced(client.clone(), "kube-system")
        .create(&PostParams::default(), &service)
        .await
        .context("creating the kube-dns Service")?;
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kube-dns-host", "namespace": "kube-system",
                     "labels": {"kubernetes.io/service-name": "kube-dns", "endpointslice.kubernetes.io/managed-by": "bulwark-local"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [super::network::GATEWAY.to_string()], "conditions": {"ready": true}}],
        "ports": [ports("UDP"), ports("TCP")],
    }))?;
    Api::<EndpointSlice>::namespaced(client.clone(), "kube-system")
        .create(&PostParams::default(), &slice)
        .await
        .context("creating the kube-dns EndpointSlice")?;
    Ok(())
}
