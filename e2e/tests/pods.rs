//! Real pods on the local control plane's node agents: probes, Services, cluster DNS, volumes,
//! restarts, graceful deletion and node failure. Against another cluster (kind) the same pods
//! need the test image built there, so these tests run only on the local control plane.

use bulwark_e2e::node::images::TESTPOD_IMAGE;
use bulwark_e2e::{cluster, eventually};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Skips (with a note) on clusters the harness did not start: their nodes run real images.
fn local_cluster() -> bool {
    let local = cluster().local.lock().unwrap().is_some();
    if !local {
        eprintln!("skipped: node-agent pods exist only on the local control plane");
    }
    local
}

fn testpod(name: &str, labels: Value, extra: Value) -> Pod {
    let mut pod = json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "web",
                "image": format!("{TESTPOD_IMAGE}:1"),
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1},
            }],
        },
    });
    merge(&mut pod, extra);
    serde_json::from_value(pod).unwrap()
}

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (k, v) in patch {
                merge(base.entry(k).or_insert(Value::Null), v);
            }
        }
        (base, patch) => *base = patch,
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn ready_pod(pods: &Api<Pod>, name: &str) -> Pod {
    let ready = eventually(Duration::from_secs(60), &format!("pod {name} Ready"), || async {
        pods.get(name).await.ok().filter(is_ready)
    })
    .await;
    match ready {
        Ok(pod) => pod,
        Err(e) => panic!("{e}: {:?}", pods.get(name).await.ok().and_then(|p| p.status)),
    }
}

/// Whether the Service's EndpointSlices list `ip` as ready.
async fn listed_ready(slices: &Api<EndpointSlice>, service: &str, ip: &str) -> Option<bool> {
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .ok()?;
    Some(list.items.iter().flat_map(|s| s.endpoints.iter().flatten()).any(|e| {
        e.addresses.iter().any(|a| a == ip) && e.conditions.as_ref().and_then(|c| c.ready) == Some(true)
    }))
}

async fn http_get(url: &str) -> Result<String, String> {
    let response = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("{e:#}"))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| e.to_string())?;
    if status.is_success() { Ok(body) } else { Err(format!("HTTP {status}: {body}")) }
}

fn pod_ip(pod: &Pod) -> String {
    pod.status.as_ref().and_then(|s| s.pod_ip.clone()).expect("pod IP")
}

#[tokio::test]
async fn a_probed_pod_serves_through_its_service_by_cluster_ip_and_dns_name() {
    if !local_cluster() {
        return;
    }
    let client = cluster().client().await;
    let ns = cluster().namespace("pods").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let created = Instant::now();
    pods.create(&PostParams::default(), &testpod("web", json!({"app": "web"}), json!({}))).await.unwrap();
    let web = ready_pod(&pods, "web").await;
    eprintln!("pod created -> Ready in {:?} on {:?}", created.elapsed(), web.spec.as_ref().unwrap().node_name);
    let ip = pod_ip(&web);
    assert_eq!(http_get(&format!("http://{ip}:8080/")).await.unwrap().trim(), "web", "hostname is the pod name");

    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
    }))
    .unwrap();
    let service = services.create(&PostParams::default(), &service).await.unwrap();
    let cluster_ip = service.spec.unwrap().cluster_ip.unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    eventually(Duration::from_secs(30), "the EndpointSlice lists the ready pod", || async {
        listed_ready(&slices, "web", &ip).await.filter(|listed| *listed)
    })
    .await
    .unwrap();
    let answer = eventually(Duration::from_secs(30), "the host reaches the Service's ClusterIP", || async {
        http_get(&format!("http://{cluster_ip}/")).await.ok()
    })
    .await
    .unwrap();
    assert_eq!(answer.trim(), "web");

    pods.create(&PostParams::default(), &testpod("client", json!({"app": "client"}), json!({}))).await.unwrap();
    let client_ip = pod_ip(&ready_pod(&pods, "client").await);
    let by_name = format!("http://{client_ip}:8080/fetch?url=http://web.{ns}.svc.cluster.local/");
    let fetched = match eventually(Duration::from_secs(30), "a pod reaches the Service by its DNS name", || async {
        http_get(&by_name).await.ok()
    })
    .await
    {
        Ok(body) => body,
        Err(e) => panic!("{e}; last answer: {:?}", http_get(&by_name).await),
    };
    assert_eq!(fetched.trim(), "web");

    // Readiness drives the Ready condition and the EndpointSlice.
    http_get(&format!("http://{ip}:8080/set?flag=unready")).await.unwrap();
    eventually(Duration::from_secs(15), "the unready pod leaves the Service", || async {
        let pod = pods.get("web").await.ok()?;
        let listed = listed_ready(&slices, "web", &ip).await?;
        (!is_ready(&pod) && !listed).then_some(())
    })
    .await
    .unwrap();
    pods.delete("web", &DeleteParams::default()).await.unwrap();
}
