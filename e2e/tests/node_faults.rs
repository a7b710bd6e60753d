//! Whole-node faults on the local control plane: a node whose agent dies (a machine lost) goes
//! NotReady and its pods stop answering and become not Ready; restarted, they recover. In its own
//! test binary because it takes a node away from every other test.

use bulwark_e2e::control_plane::node_name;
use bulwark_e2e::node::images::TESTPOD_IMAGE;
use bulwark_e2e::{cluster, eventually, node_is_ready};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use serde_json::json;
use std::time::{Duration, Instant};

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn answers(ip: &str) -> bool {
    reqwest::Client::new()
        .get(format!("http://{ip}:8080/healthz"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

#[tokio::test]
async fn a_stopped_node_goes_not_ready_with_its_pods_and_recovers_when_restarted() {
    let Some(_) = cluster().local.lock().unwrap().as_ref().map(|_| ()) else {
        eprintln!("skipped: stopping a node needs the local control plane");
        return;
    };
    let client = cluster().client().await;
    let ns = cluster().namespace("node-faults").await;
    let node = node_name("c");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let nodes: Api<Node> = Api::all(client.clone());
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "pinned"},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "containers": [{"name": "web", "image": format!("{TESTPOD_IMAGE}:1"),
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1}}],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let running = eventually(Duration::from_secs(60), "the pinned pod Ready", || async {
        pods.get("pinned").await.ok().filter(pod_ready)
    })
    .await
    .unwrap();
    let ip = running.status.unwrap().pod_ip.unwrap();
    assert!(answers(&ip).await);

    let stopped = Instant::now();
    cluster().with_plane(|plane| plane.kill_node(&node));
    assert!(
        !answers(&ip).await,
        "a pod of a dead node must stop answering at once"
    );
    eventually(
        Duration::from_secs(40),
        "the node NotReady and its pod not Ready",
        || async {
            let down = !node_is_ready(&nodes.get(&node).await.ok()?);
            let pod_down = !pod_ready(&pods.get("pinned").await.ok()?);
            (down && pod_down).then_some(())
        },
    )
    .await
    .unwrap();
    eprintln!(
        "node {node} NotReady with its pod not Ready {:.1}s after it stopped",
        stopped.elapsed().as_secs_f64()
    );

    let restarted = Instant::now();
    cluster()
        .with_plane(|plane| plane.start_node(&node))
        .unwrap();
    let back = eventually(
        Duration::from_secs(60),
        "the node and its pod Ready again",
        || async {
            let up = node_is_ready(&nodes.get(&node).await.ok()?);
            let pod = pods.get("pinned").await.ok().filter(pod_ready)?;
            up.then_some(pod)
        },
    )
    .await
    .unwrap();
    let ip = back.status.unwrap().pod_ip.unwrap();
    assert!(answers(&ip).await, "the recovered pod answers at {ip}");
    eprintln!(
        "node {node} and its pod Ready {:.1}s after the restart",
        restarted.elapsed().as_secs_f64()
    );
}
