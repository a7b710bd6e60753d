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
    let ready = eventually(
        Duration::from_secs(60),
        &format!("pod {name} Ready"),
        || async { pods.get(name).await.ok().filter(is_ready) },
    )
    .await;
    match ready {
        Ok(pod) => pod,
        Err(e) => panic!(
            "{e}: {:?}",
            pods.get(name).await.ok().and_then(|p| p.status)
        ),
    }
}

/// Whether the Service's EndpointSlices list `ip` as ready.
async fn listed_ready(slices: &Api<EndpointSlice>, service: &str, ip: &str) -> Option<bool> {
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .ok()?;
    Some(
        list.items
            .iter()
            .flat_map(|s| s.endpoints.iter().flatten())
            .any(|e| {
                e.addresses.iter().any(|a| a == ip)
                    && e.conditions.as_ref().and_then(|c| c.ready) == Some(true)
            }),
    )
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
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("HTTP {status}: {body}"))
    }
}

fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("pod IP")
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
    pods.create(
        &PostParams::default(),
        &testpod("web", json!({"app": "web"}), json!({})),
    )
    .await
    .unwrap();
    let web = ready_pod(&pods, "web").await;
    eprintln!(
        "pod created -> Ready in {:?} on {:?}",
        created.elapsed(),
        web.spec.as_ref().unwrap().node_name
    );
    let ip = pod_ip(&web);
    assert_eq!(
        http_get(&format!("http://{ip}:8080/"))
            .await
            .unwrap()
            .trim(),
        "web",
        "hostname is the pod name"
    );
    // `kubectl logs`: the API server fetches them from the node agent over mutual TLS.
    let logs = pods
        .logs("web", &kube::api::LogParams::default())
        .await
        .expect("pod logs through the API server");
    assert!(
        logs.contains("bulwark-testpod listening on :8080"),
        "logs: {logs:?}"
    );
    // -f: a request made now shows up in the followed stream; --tail=1: only the last line.
    let follow = kube::api::LogParams {
        follow: true,
        ..Default::default()
    };
    let mut lines = futures::AsyncBufReadExt::lines(pods.log_stream("web", &follow).await.unwrap());
    http_get(&format!("http://{ip}:8080/?followed-marker"))
        .await
        .unwrap();
    let followed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = futures::StreamExt::next(&mut lines).await {
            if line.unwrap().contains("followed-marker") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        followed.ok(),
        Some(true),
        "the followed log shows a new request"
    );
    let tail = kube::api::LogParams {
        tail_lines: Some(1),
        ..Default::default()
    };
    let last = pods.logs("web", &tail).await.unwrap();
    assert_eq!(last.lines().count(), 1, "{last:?}");

    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
    }))
    .unwrap();
    let service = services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let cluster_ip = service.spec.unwrap().cluster_ip.unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    eventually(
        Duration::from_secs(30),
        "the EndpointSlice lists the ready pod",
        || async {
            listed_ready(&slices, "web", &ip)
                .await
                .filter(|listed| *listed)
        },
    )
    .await
    .unwrap();
    let answer = eventually(
        Duration::from_secs(30),
        "the host reaches the Service's ClusterIP",
        || async { http_get(&format!("http://{cluster_ip}/")).await.ok() },
    )
    .await
    .unwrap();
    assert_eq!(answer.trim(), "web");

    pods.create(
        &PostParams::default(),
        &testpod("client", json!({"app": "client"}), json!({})),
    )
    .await
    .unwrap();
    let client_ip = pod_ip(&ready_pod(&pods, "client").await);
    let by_name = format!("http://{client_ip}:8080/fetch?url=http://web.{ns}.svc.cluster.local/");
    let fetched = match eventually(
        Duration::from_secs(30),
        "a pod reaches the Service by its DNS name",
        || async { http_get(&by_name).await.ok() },
    )
    .await
    {
        Ok(body) => body,
        Err(e) => panic!("{e}; last answer: {:?}", http_get(&by_name).await),
    };
    assert_eq!(fetched.trim(), "web");

    // Readiness drives the Ready condition and the EndpointSlice.
    http_get(&format!("http://{ip}:8080/set?flag=unready"))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(15),
        "the unready pod leaves the Service",
        || async {
            let pod = pods.get("web").await.ok()?;
            let listed = listed_ready(&slices, "web", &ip).await?;
            (!is_ready(&pod) && !listed).then_some(())
        },
    )
    .await
    .unwrap();
    pods.delete("web", &DeleteParams::default()).await.unwrap();
}

fn container_status(pod: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()
        .cloned()
}

#[tokio::test]
async fn liveness_failures_and_crashes_restart_the_container_and_deletion_honours_the_grace_period()
{
    if !local_cluster() {
        return;
    }
    let client = cluster().client().await;
    let ns = cluster().namespace("pods").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let live = json!({"spec": {"containers": [{
        "name": "web", "image": format!("{TESTPOD_IMAGE}:1"), "args": ["--ignore-sigterm"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1, "failureThreshold": 2},
    }], "terminationGracePeriodSeconds": 2}});
    pods.create(&PostParams::default(), &testpod("live", json!({}), live))
        .await
        .unwrap();
    let ip = pod_ip(&ready_pod(&pods, "live").await);
    http_get(&format!("http://{ip}:8080/set?flag=unhealthy"))
        .await
        .unwrap();
    // The container ignores SIGTERM: the liveness kill takes the 2 s grace period, then SIGKILL.
    let restarted = eventually(Duration::from_secs(30), "a liveness restart", || async {
        let pod = pods.get("live").await.ok()?;
        let status = container_status(&pod)?;
        (status.restart_count == 1 && status.state.as_ref()?.running.is_some()).then_some(status)
    })
    .await
    .unwrap();
    let last = restarted
        .last_state
        .and_then(|s| s.terminated)
        .expect("lastState.terminated");
    assert_eq!(
        last.exit_code, 137,
        "SIGKILLed after ignoring SIGTERM: {last:?}"
    );
    assert!(
        last.message
            .unwrap_or_default()
            .contains("failed liveness probe")
    );
    // --previous: the log of the container the liveness probe killed.
    let previous = kube::api::LogParams {
        previous: true,
        ..Default::default()
    };
    let before = pods.logs("live", &previous).await.unwrap();
    assert!(before.contains("/set?flag=unhealthy"), "{before:?}");
    // The restarted container has a fresh /tmp, so it is healthy again.
    let pod = ready_pod(&pods, "live").await;
    assert_eq!(
        http_get(&format!("http://{}:8080/healthz", pod_ip(&pod)))
            .await
            .unwrap()
            .trim(),
        "ok"
    );

    // A crash (SIGKILL of every container process) is an exit that restartPolicy Always restarts.
    let id = container_status(&pod).unwrap().container_id.unwrap();
    bulwark_chaos::node_agent::crash(&[id]).unwrap();
    let crashed = eventually(
        Duration::from_secs(30),
        "the crashed container restarted",
        || async {
            let status = container_status(&pods.get("live").await.ok()?)?;
            (status.restart_count == 2 && status.state.as_ref()?.running.is_some())
                .then_some(status)
        },
    )
    .await
    .unwrap();
    let last = crashed.last_state.and_then(|s| s.terminated).unwrap();
    assert_eq!((last.exit_code, last.signal), (137, Some(9)));

    // Deletion: SIGTERM is ignored, so the process must be gone right after the grace period.
    let pid: i32 = crashed
        .container_id
        .unwrap()
        .trim_start_matches("bulwark://")
        .parse()
        .unwrap();
    let deleting = Instant::now();
    pods.delete("live", &DeleteParams::default()).await.unwrap();
    eventually(
        Duration::from_secs(20),
        "the pod object is gone",
        || async {
            pods.get_opt("live")
                .await
                .ok()
                .and_then(|p| p.is_none().then_some(()))
        },
    )
    .await
    .unwrap();
    let took = deleting.elapsed();
    // SAFETY: kill(pid, 0) only checks for existence.
    assert!(
        unsafe { libc::kill(pid, 0) } != 0,
        "the container's process outlived its pod"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "deletion took {took:?}"
    );

    // An image that maps to no program stays Waiting, and says which image.
    pods.create(
        &PostParams::default(),
        &testpod(
            "unmapped",
            json!({}),
            json!({"spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}),
        ),
    )
    .await
    .unwrap();
    let waiting = eventually(
        Duration::from_secs(30),
        "the unmapped image is reported",
        || async {
            container_status(&pods.get("unmapped").await.ok()?)?
                .state?
                .waiting
        },
    )
    .await
    .unwrap();
    assert_eq!(waiting.reason.as_deref(), Some("ErrImagePull"));
    assert!(
        waiting
            .message
            .unwrap_or_default()
            .contains("\"nginx:1.27\" is not mapped")
    );
}

#[tokio::test]
async fn a_file_on_a_claim_survives_the_pod() {
    if !local_cluster() {
        return;
    }
    let client = cluster().client().await;
    let ns = cluster().namespace("pods").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(client.clone(), &ns);
    claims
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let with_claim = json!({"spec": {
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        "containers": [{"name": "web", "image": format!("{TESTPOD_IMAGE}:1"),
            "volumeMounts": [{"name": "data", "mountPath": "/var/lib/testpod"}],
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}],
    }});
    pods.create(
        &PostParams::default(),
        &testpod("writer", json!({}), with_claim.clone()),
    )
    .await
    .unwrap();
    let writer = ready_pod(&pods, "writer").await;
    let node = writer.spec.as_ref().unwrap().node_name.clone();
    let ip = pod_ip(&writer);
    http_get(&format!(
        "http://{ip}:8080/write?path=/var/lib/testpod/kept&value=written-by-writer"
    ))
    .await
    .unwrap();
    pods.delete("writer", &DeleteParams::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "the writer is gone", || async {
        pods.get_opt("writer")
            .await
            .ok()
            .and_then(|p| p.is_none().then_some(()))
    })
    .await
    .unwrap();
    pods.create(
        &PostParams::default(),
        &testpod("reader", json!({}), with_claim),
    )
    .await
    .unwrap();
    let reader = ready_pod(&pods, "reader").await;
    assert_eq!(
        reader.spec.as_ref().unwrap().node_name,
        node,
        "the volume pins the pod to its node"
    );
    let read = http_get(&format!(
        "http://{}:8080/read?path=/var/lib/testpod/kept",
        pod_ip(&reader)
    ))
    .await
    .unwrap();
    assert_eq!(read, "written-by-writer");
    // Nothing of the claim leaked onto the host: the mount point exists only inside the pod.
    assert!(!std::path::Path::new("/var/lib/testpod").exists());
}

#[tokio::test]
async fn a_network_policy_isolates_a_pod_until_it_is_deleted() {
    if !local_cluster() {
        return;
    }
    let client = cluster().client().await;
    let ns = cluster().namespace("pods").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(
        &PostParams::default(),
        &testpod("b", json!({"app": "b"}), json!({})),
    )
    .await
    .unwrap();
    pods.create(
        &PostParams::default(),
        &testpod("a", json!({"app": "a"}), json!({})),
    )
    .await
    .unwrap();
    let b = pod_ip(&ready_pod(&pods, "b").await);
    let a = pod_ip(&ready_pod(&pods, "a").await);
    let a_to_b = format!("http://{a}:8080/fetch?url=http://{b}:8080/");
    assert_eq!(http_get(&a_to_b).await.unwrap().trim(), "b");

    let policies: Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
        Api::namespaced(client.clone(), &ns);
    let isolate_b = serde_json::from_value(json!({
        "metadata": {"name": "isolate-b"},
        "spec": {"podSelector": {"matchLabels": {"app": "b"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "trusted"}}}]}]},
    }))
    .unwrap();
    policies
        .create(&PostParams::default(), &isolate_b)
        .await
        .unwrap();
    let isolated = Instant::now();
    let refused = eventually(Duration::from_secs(15), "A cut off from B", || async {
        http_get(&a_to_b).await.err()
    })
    .await
    .unwrap();
    eprintln!("policy enforced within {:?}: {refused}", isolated.elapsed());
    assert!(
        refused.contains("connecting to"),
        "the connection is dropped, not answered: {refused}"
    );
    // Probes come from the host, which policies do not filter: B stays Ready.
    assert!(is_ready(&pods.get("b").await.unwrap()));

    policies
        .delete("isolate-b", &DeleteParams::default())
        .await
        .unwrap();
    let healed = eventually(Duration::from_secs(15), "A reaches B again", || async {
        http_get(&a_to_b).await.ok()
    })
    .await
    .unwrap();
    assert_eq!(healed.trim(), "b");
}

#[tokio::test]
async fn freezes_and_partitions_hurt_and_their_undos_heal() {
    use bulwark_chaos::node_agent::{Partition, Side, freeze, thaw};
    if !local_cluster() {
        return;
    }
    let api_port = cluster().local_api_server_port().unwrap();
    let client = cluster().client().await;
    let ns = cluster().namespace("pods").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &testpod("x", json!({}), json!({})))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &testpod("y", json!({}), json!({})))
        .await
        .unwrap();
    let x = pod_ip(&ready_pod(&pods, "x").await);
    let y_pod = ready_pod(&pods, "y").await;
    let y = pod_ip(&y_pod);
    let x_to_y = format!("http://{x}:8080/fetch?url=http://{y}:8080/");
    assert_eq!(http_get(&x_to_y).await.unwrap().trim(), "y");

    // Frozen: the process holds its socket but answers nothing; thawed, it answers again.
    let y_containers = vec![container_status(&y_pod).unwrap().container_id.unwrap()];
    freeze(&y_containers).unwrap();
    let frozen = reqwest::Client::new()
        .get(format!("http://{y}:8080/"))
        .timeout(Duration::from_secs(1))
        .send()
        .await;
    assert!(frozen.is_err(), "a frozen pod must not answer: {frozen:?}");
    thaw(&y_containers).unwrap();
    assert_eq!(
        http_get(&format!("http://{y}:8080/")).await.unwrap().trim(),
        "y"
    );

    // Partitioned from each other: packets drop; healed: they flow.
    let partition =
        Partition::start(std::slice::from_ref(&x), &Side::Pods(vec![y.clone()])).unwrap();
    let cut = http_get(&x_to_y).await.unwrap_err();
    assert!(cut.contains("connecting to"), "{cut}");
    partition.heal().unwrap();
    assert_eq!(http_get(&x_to_y).await.unwrap().trim(), "y");

    // Partitioned from the API server (through the kubernetes Service's ClusterIP).
    let x_to_api = format!("http://{x}:8080/fetch?url=http://10.96.0.1:443/");
    let partition = Partition::start(
        std::slice::from_ref(&x),
        &Side::HostPort("10.244.0.1".into(), api_port),
    )
    .unwrap();
    let cut = http_get(&x_to_api).await.unwrap_err();
    assert!(cut.contains("connecting to"), "{cut}");
    partition.heal().unwrap();
    // Reachable again: the connection opens (plain HTTP to a TLS port then fails differently).
    let reached = http_get(&x_to_api).await.unwrap_err();
    assert!(!reached.contains("connecting to"), "{reached}");
}

#[tokio::test]
async fn init_containers_volumes_env_users_and_exec_and_startup_probes_reach_the_container() {
    if !local_cluster() {
        return;
    }
    let client = cluster().client().await;
    let ns = cluster().namespace("pods").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let post = PostParams::default();
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), &ns)
        .create(
            &post,
            &serde_json::from_value(
                json!({"metadata": {"name": "settings"}, "data": {"mode": "strict"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns)
        .create(
            &post,
            &serde_json::from_value(
                json!({"metadata": {"name": "creds"}, "stringData": {"password": "hunter2"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let spec = json!({"spec": {
        "securityContext": {"runAsUser": 1234, "runAsGroup": 2345, "runAsNonRoot": true},
        "volumes": [
            {"name": "work", "emptyDir": {}},
            {"name": "settings", "configMap": {"name": "settings"}},
            {"name": "creds", "secret": {"secretName": "creds"}},
            {"name": "about", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
        ],
        "initContainers": [
            {"name": "first", "image": format!("{TESTPOD_IMAGE}:1"), "command": ["sh", "-c", "echo first > /work/order"],
             "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
            {"name": "second", "image": format!("{TESTPOD_IMAGE}:1"), "command": ["sh", "-c", "echo second >> /work/order"],
             "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
        ],
        "containers": [{
            "name": "web", "image": format!("{TESTPOD_IMAGE}:1"),
            "workingDir": "/work",
            "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
            "env": [
                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "GREETING", "value": "node $(NODE)"},
            ],
            "volumeMounts": [
                {"name": "work", "mountPath": "/work"},
                {"name": "settings", "mountPath": "/etc/settings", "readOnly": true},
                {"name": "creds", "mountPath": "/etc/creds"},
                {"name": "about", "mountPath": "/etc/about"},
            ],
            "startupProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
            "readinessProbe": {"exec": {"command": ["sh", "-c", "test -s /work/order"]}, "periodSeconds": 1},
        }],
    }});
    pods.create(
        &post,
        &testpod("configured", json!({"tier": "front"}), spec),
    )
    .await
    .unwrap();
    let pod = ready_pod(&pods, "configured").await;
    let ip = pod_ip(&pod);
    let node = pod.spec.as_ref().unwrap().node_name.clone().unwrap();
    let get = |path: &str| {
        let url = format!("http://{ip}:8080{path}");
        async move { http_get(&url).await.unwrap() }
    };
    assert_eq!(
        get("/read?path=/work/order").await,
        "first\nsecond\n",
        "init containers ran in order"
    );
    assert_eq!(get("/read?path=/etc/settings/mode").await, "strict");
    assert!(
        get("/read?path=/etc/about/labels")
            .await
            .contains("tier=\"front\"")
    );
    assert_eq!(get("/env?name=PASSWORD").await, "hunter2");
    assert_eq!(
        get("/env?name=CFG_mode").await,
        "strict",
        "envFrom with a prefix"
    );
    assert_eq!(
        get("/read?path=order").await,
        "first\nsecond\n",
        "relative to workingDir"
    );
    assert_eq!(get("/read?path=/etc/creds/password").await, "hunter2");
    assert_eq!(get("/env?name=GREETING").await, format!("node {node}"));
    assert_eq!(get("/env?name=KUBERNETES_SERVICE_HOST").await, "10.96.0.1");
    assert_eq!(get("/id").await, "1234 2345", "runAsUser and runAsGroup");
    let refused = http_get(&format!(
        "http://{}:8080/write?path=/etc/settings/mode&value=x",
        pod_ip(&pod)
    ))
    .await;
    assert!(
        refused.unwrap_err().contains("Read-only"),
        "a readOnly mount refuses writes"
    );
    let statuses = pod.status.unwrap().init_container_statuses.unwrap();
    assert!(statuses.iter().all(|s| {
        s.state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code
            == 0
    }));

    // runAsNonRoot without a user is refused with the kubelet's reason.
    let root = json!({"spec": {"securityContext": {"runAsNonRoot": true}}});
    pods.create(&post, &testpod("as-root", json!({}), root))
        .await
        .unwrap();
    let waiting = eventually(Duration::from_secs(30), "runAsNonRoot refused", || async {
        container_status(&pods.get("as-root").await.ok()?)?
            .state?
            .waiting
            .filter(|w| w.reason.as_deref() == Some("CreateContainerConfigError"))
    })
    .await
    .unwrap();
    assert!(waiting.message.unwrap_or_default().contains("runAsNonRoot"));
}
