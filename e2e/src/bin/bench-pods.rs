//! Test-bed benchmark: how long the local control plane with its node agents takes to start, and
//! how long a pod takes from create to Ready (30 test pods with a readiness probe, created in one
//! burst, spread over the three nodes). Prints a table. Run: `./dev bench pods`.

use anyhow::{Context, Result};
use bulwark_e2e::control_plane::ControlPlane;
use bulwark_e2e::node::images::TESTPOD_IMAGE;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

const PODS: usize = 30;

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn main() -> Result<()> {
    eprintln!("[bench-pods] starting the local control plane");
    let plane = ControlPlane::start()?;
    let start = plane.started_in;
    let kubeconfig = plane.kubeconfig.clone();
    let (times, nodes) = bulwark_e2e::block_on(async move {
        let client = bulwark_e2e::client_for(&kubeconfig).await?;
        let pods: Api<Pod> = Api::namespaced(client, "default");
        let mut created = HashMap::new();
        eprintln!("[bench-pods] creating {PODS} pods");
        for i in 0..PODS {
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("bench-{i}"), "labels": {"app": "bench"}},
                "spec": {"containers": [{"name": "web", "image": format!("{TESTPOD_IMAGE}:1"),
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1}}]},
            }))?;
            created.insert(format!("bench-{i}"), Instant::now());
            pods.create(&PostParams::default(), &pod).await?;
        }
        let mut times = HashMap::new();
        let mut nodes: BTreeMap<String, usize> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while times.len() < PODS {
            anyhow::ensure!(Instant::now() < deadline, "only {} of {PODS} pods Ready after 120 s", times.len());
            for pod in pods.list(&ListParams::default().labels("app=bench")).await?.items {
                let name = pod.metadata.name.clone().unwrap_or_default();
                if ready(&pod) && !times.contains_key(&name) {
                    times.insert(name.clone(), created[&name].elapsed());
                    let node = pod.spec.and_then(|s| s.node_name).unwrap_or_default();
                    *nodes.entry(node).or_default() += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok::<_, anyhow::Error>((times, nodes))
    })
    .context("measuring pods")?;
    let mut sorted: Vec<Duration> = times.into_values().collect();
    sorted.sort();
    println!();
    println!("| measurement | value |");
    println!("|---|---:|");
    println!(
        "| control plane + 3 node agents + kube-proxy + CoreDNS, start to all nodes Ready | {:.1} s |",
        start.as_secs_f64()
    );
    println!(
        "| pod create -> Ready, p50 ({PODS} pods, one burst) | {} ms |",
        quantile(&sorted, 0.5).as_millis()
    );
    println!(
        "| pod create -> Ready, p99 | {} ms |",
        quantile(&sorted, 0.99).as_millis()
    );
    println!(
        "| pods per node | {} |",
        nodes
            .iter()
            .map(|(n, c)| format!("{n}: {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    drop(plane);
    Ok(())
}
