//! Foundation tests against a real API server: CRDs, the operator's endpoints, leader election
//! handover, and failing fast without a cluster.

use bulwark_e2e::apiserver::unlabelled;
use bulwark_e2e::operator::{Operator, bulwark_binary};
use bulwark_e2e::{cluster, install_crds};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn log_dir(test: &str) -> PathBuf {
    std::env::temp_dir().join("bulwark-e2e-logs").join(test)
}

fn bulwark_api(client: &kube::Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("bulwark.dev", "v1alpha1", kind));
    Api::namespaced_with(client.clone(), ns, &resource)
}

fn object(kind: &str, name: &str, spec: serde_json::Value) -> DynamicObject {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "bulwark.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

/// The API server's rejection message for creating `obj`, or a panic if it was accepted.
async fn rejection(api: &Api<DynamicObject>, obj: &DynamicObject) -> String {
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => panic!(
            "{} was accepted but must be rejected",
            obj.metadata.name.as_deref().unwrap()
        ),
        Err(kube::Error::Api(status)) => status.message,
        Err(other) => panic!("unexpected error: {other}"),
    }
}

#[tokio::test]
async fn crds_are_accepted_and_validate_input() {
    let cluster = cluster();
    let client = cluster.client().await;
    install_crds(&client)
        .await
        .expect("every CRD is a structural schema the API server accepts");
    let ns = cluster.namespace("crds").await;

    let zones = bulwark_api(&client, &ns, "DnsZone");
    let zone = object(
        "DnsZone",
        "example",
        serde_json::json!({
            "zone": "example.test",
            "provider": {"rfc2136": {"server": "127.0.0.1:5353", "tsigKeyName": "bulwark", "tsigSecretRef": {"name": "tsig", "key": "secret"}}}
        }),
    );
    let created = zones
        .create(&PostParams::default(), &zone)
        .await
        .expect("a valid DnsZone is accepted");
    assert_eq!(
        created.data["spec"]["provider"]["rfc2136"]["tsigAlgorithm"], "hmac-sha256",
        "default applied"
    );
    let no_provider = object(
        "DnsZone",
        "no-provider",
        serde_json::json!({"zone": "example.test", "provider": {}}),
    );
    assert!(
        rejection(&zones, &no_provider)
            .await
            .contains("exactly one provider must be set")
    );

    let endpoints = bulwark_api(&client, &ns, "DnsEndpoint");
    let endpoint = |name: &str, targets: serde_json::Value| {
        object(
            "DnsEndpoint",
            name,
            serde_json::json!({"zoneRef": "example", "fqdn": "api.example.test", "targets": targets}),
        )
    };
    endpoints
        .create(
            &PostParams::default(),
            &endpoint(
                "ok",
                serde_json::json!([{"address": "192.0.2.1"}, {"address": "192.0.2.2"}]),
            ),
        )
        .await
        .expect("a valid DnsEndpoint is accepted");
    let duplicate = endpoint(
        "dup",
        serde_json::json!([{"address": "192.0.2.1"}, {"address": "192.0.2.1"}]),
    );
    assert!(
        rejection(&endpoints, &duplicate)
            .await
            .contains("targets must not repeat")
    );
    let both = endpoint(
        "both",
        serde_json::json!([{"address": "192.0.2.1", "serviceRef": {"name": "web"}}]),
    );
    assert!(
        rejection(&endpoints, &both)
            .await
            .contains("set exactly one of address or serviceRef")
    );
    let not_ip = endpoint("not-ip", serde_json::json!([{"address": "not-an-ip"}]));
    assert!(
        rejection(&endpoints, &not_ip)
            .await
            .contains("address must be an IPv4 or IPv6 address")
    );

    let long_name = endpoint(
        &"n".repeat(64),
        serde_json::json!([{"address": "192.0.2.1"}]),
    );
    assert!(
        rejection(&endpoints, &long_name)
            .await
            .contains("DnsEndpoint names are at most 63 characters")
    );
    // The fence record `_bulwark.<fqdn>` must fit a DNS name (253 characters).
    let long_fqdn = format!(
        "{}.{}.example.test",
        vec!["a".repeat(60); 3].join("."),
        "a".repeat(50)
    );
    assert_eq!(long_fqdn.len(), 246, "a valid DNS name, too long to fence");
    let mut too_long = endpoint("long-fqdn", serde_json::json!([{"address": "192.0.2.1"}]));
    too_long.data["spec"]["fqdn"] = long_fqdn.into();
    let rejected = rejection(&endpoints, &too_long).await;
    assert!(
        rejected.contains("spec.fqdn") && rejected.contains("244"),
        "{rejected}"
    );

    let plans = bulwark_api(&client, &ns, "DnsPlan");
    let plan = object(
        "DnsPlan",
        "ok-1",
        serde_json::json!({
            "endpointRef": "ok", "fqdn": "api.example.test", "generation": 1,
            "rrsets": [{"recordType": "A", "ttl": 60, "values": ["192.0.2.1"]}],
            "contentHash": "0".repeat(64),
        }),
    );
    let mut stored = plans
        .create(&PostParams::default(), &plan)
        .await
        .expect("a valid DnsPlan is accepted");
    stored.data["spec"]["generation"] = serde_json::json!(2);
    match plans.replace("ok-1", &PostParams::default(), &stored).await {
        Err(kube::Error::Api(status)) => assert!(
            status.message.contains("DnsPlan spec is immutable"),
            "{}",
            status.message
        ),
        other => panic!("changing a plan's spec must be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn slo_validation_rejects_bad_objects_with_clear_messages() {
    let cluster = cluster();
    let client = cluster.client().await;
    install_crds(&client).await.unwrap();
    let ns = cluster.namespace("slo-validation").await;
    let slos = bulwark_api(&client, &ns, "ServiceLevelObjective");
    let valid = || {
        serde_json::json!({
            "service": "api",
            "objective": 99.9,
            "indicator": {"ratio": {"errors": "x{code=~\"5..\"}", "total": "x"}},
        })
    };
    let created = slos
        .create(
            &PostParams::default(),
            &object("ServiceLevelObjective", "ok", valid()),
        )
        .await
        .expect("a valid SLO is accepted");
    assert_eq!(created.data["spec"]["period"], "30d", "default period");
    assert_eq!(
        created.data["spec"]["alerting"]["page"]["labels"]["severity"], "page",
        "default page labels"
    );
    let cases: [(&str, &str, serde_json::Value, &str); 13] = [
        (
            "objective",
            "/objective",
            serde_json::json!(100),
            "objective is a percentage strictly between 0 and 100",
        ),
        (
            "period-short",
            "/period",
            serde_json::json!("6d"),
            "period must be whole days from 7d to 90d",
        ),
        (
            "period-unit",
            "/period",
            serde_json::json!("4w"),
            "period must be whole days from 7d to 90d",
        ),
        (
            "two-indicators",
            "/indicator/latency",
            serde_json::json!({"histogram": "h", "threshold": "0.3"}),
            "set exactly one indicator: ratio or latency",
        ),
        (
            "errors-and-good",
            "/indicator/ratio/good",
            serde_json::json!("x"),
            "set exactly one of errors or good",
        ),
        (
            "label-name",
            "/alerting",
            serde_json::json!({"labels": {"bad-name": "x"}}),
            "alert label names must match",
        ),
        (
            "runbook",
            "/alerting",
            serde_json::json!({"runbookURL": "not a url"}),
            "runbookURL must be an absolute URL",
        ),
        (
            "service-template",
            "/service",
            serde_json::json!(r#"{{ query "secret_metric" }}"#),
            "service must not contain template syntax",
        ),
        (
            "label-template",
            "/alerting",
            serde_json::json!({"labels": {"team": "{{ $labels.instance }}"}}),
            "alert label values must not contain template syntax",
        ),
        (
            "tier-label-template",
            "/alerting",
            serde_json::json!({"page": {"labels": {"severity": "{{ 1 }}"}}}),
            "alert label values must not contain template syntax",
        ),
        (
            "runbook-template",
            "/alerting",
            serde_json::json!({"runbookURL": "https://runbooks.example.com/{{ $value }}"}),
            "runbookURL must not contain template syntax",
        ),
        (
            "reserved-namespace",
            "/alerting",
            serde_json::json!({"ticket": {"labels": {"namespace": "other-team"}}}),
            "namespace, slo_namespace, slo_name, tier and service are set by Bulwark",
        ),
        (
            "common-severity",
            "/alerting",
            serde_json::json!({"labels": {"severity": "page"}}),
            "severity is set per tier",
        ),
    ];
    for (name, pointer, value, message) in cases {
        let mut spec = valid();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        spec.pointer_mut(parent).unwrap()[key] = value;
        let rejected = rejection(&slos, &object("ServiceLevelObjective", name, spec)).await;
        assert!(rejected.contains(message), "{name}: {rejected}");
    }
}

/// Waits for /readyz: every watch has listed its objects.
async fn wait_ready(operator: &Operator) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = operator.get("/readyz").await;
        if let Ok((200, _)) = answer {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "operator not ready in 20s ({answer:?}); log {}",
            operator.process.log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn operator_serves_metrics_health_and_readiness() {
    let cluster = cluster();
    let ns = cluster.namespace("endpoints").await;
    install_crds(&cluster.client().await).await.unwrap();
    let operator = Operator::start(
        &cluster.kubeconfig,
        "probe",
        &["--lease-namespace", &ns],
        &log_dir("endpoints"),
    )
    .unwrap();
    wait_ready(&operator).await;
    let (code, body) = operator.get("/healthz").await.unwrap();
    assert_eq!((code, body.trim()), (200, "ok"));
    let (code, body) = operator.get("/readyz").await.unwrap();
    assert_eq!((code, body.trim()), (200, "ok"));

    // The only replica becomes leader; the metric says so with its fencing token.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, metrics) = operator.get("/metrics").await.unwrap();
        assert_eq!(code, 200);
        assert!(metrics.contains("# TYPE bulwark_leader gauge"), "{metrics}");
        // The heap as jemalloc counts it: a running operator holds some, in resident pages.
        let heap = |name: &str| {
            unlabelled(&metrics, name).unwrap_or_else(|| panic!("no {name} in {metrics}"))
        };
        let allocated = heap("bulwark_heap_allocated_bytes");
        assert!(allocated > 0.0 && heap("bulwark_heap_resident_bytes") >= allocated);
        if metrics.contains("\nbulwark_leader 1\n") {
            assert!(
                metrics.contains("bulwark_leader_fencing_token 0"),
                "first acquisition has token 0: {metrics}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never became leader: {metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, _) = operator.get("/no-such-path").await.unwrap();
    assert_eq!(code, 404);
}

const FAST_LEASE: [&str; 6] = [
    "--lease-duration=6s",
    "--renew-deadline=3s",
    "--retry-period=1s",
    "--lease-name=handover",
    "--lease-namespace",
    "",
];

fn fast_lease_args(ns: &str) -> Vec<&str> {
    let mut args = FAST_LEASE.to_vec();
    *args.last_mut().unwrap() = ns;
    args
}

async fn lease_holder(api: &Api<Lease>) -> Option<(String, i32)> {
    let spec = api.get_opt("handover").await.ok()??.spec?;
    Some((spec.holder_identity?, spec.lease_transitions.unwrap_or(0)))
}

async fn wait_holder(api: &Api<Lease>, among: &[&str], timeout: Duration) -> (String, i32) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((holder, transitions)) = lease_holder(api)
            .await
            .filter(|(h, _)| among.contains(&h.as_str()))
        {
            return (holder, transitions);
        }
        assert!(
            Instant::now() < deadline,
            "no leader among {among:?} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts replicas `a` and `b`, returns them with the name of the one that leads.
async fn two_replicas(ns: &str, test: &str) -> (Vec<Operator>, Api<Lease>, String, i32) {
    let cluster = cluster();
    let args = fast_lease_args(ns);
    install_crds(&cluster.client().await).await.unwrap();
    let replicas: Vec<Operator> = ["a", "b"]
        .iter()
        .map(|id| Operator::start(&cluster.kubeconfig, id, &args, &log_dir(test)).unwrap())
        .collect();
    for replica in &replicas {
        wait_ready(replica).await;
    }
    let leases: Api<Lease> = Api::namespaced(cluster.client().await, ns);
    let (leader, token) = wait_holder(&leases, &["a", "b"], Duration::from_secs(15)).await;
    (replicas, leases, leader, token)
}

#[tokio::test]
async fn standby_leads_within_the_lease_duration_after_the_leader_is_sigkilled() {
    let ns = cluster().namespace("handover").await;
    let (mut replicas, leases, leader, token) = two_replicas(&ns, "handover-kill").await;
    let standby = if leader == "a" { "b" } else { "a" };
    let killed_at = Instant::now();
    replicas
        .iter()
        .find(|r| r.identity == leader)
        .unwrap()
        .process
        .signal(libc::SIGKILL);
    let (new_leader, new_token) = wait_holder(&leases, &[standby], Duration::from_secs(20)).await;
    let handover = killed_at.elapsed();
    println!(
        "leader handover after SIGKILL: {:.2}s (lease duration 6s, retry period 1s)",
        handover.as_secs_f64()
    );
    assert_eq!(new_leader, standby);
    assert!(
        new_token > token,
        "the fencing token must grow: {token} -> {new_token}"
    );
    // The standby waits one lease duration from when it last saw the Lease change (the dead
    // leader's last renewal), never longer.
    assert!(
        handover <= Duration::from_millis(6_500),
        "handover took {handover:?}, lease duration is 6s"
    );
    let survivor = replicas.iter_mut().find(|r| r.identity == standby).unwrap();
    let (_, metrics) = survivor.get("/metrics").await.unwrap();
    assert!(
        metrics.contains(&format!("bulwark_leader_fencing_token {new_token}")),
        "{metrics}"
    );
}

#[tokio::test]
async fn leader_releases_the_lease_on_sigterm_so_the_standby_leads_at_once() {
    let ns = cluster().namespace("release").await;
    let (mut replicas, leases, leader, _) = two_replicas(&ns, "handover-term").await;
    let standby = if leader == "a" { "b" } else { "a" };
    let stopping = replicas.iter_mut().find(|r| r.identity == leader).unwrap();
    let signalled_at = Instant::now();
    stopping.process.signal(libc::SIGTERM);
    let status = stopping
        .process
        .wait_exit(Duration::from_secs(10))
        .expect("operator exits on SIGTERM");
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    wait_holder(&leases, &[standby], Duration::from_secs(6)).await;
    let handover = signalled_at.elapsed();
    println!(
        "leader handover after SIGTERM (lease released): {:.2}s",
        handover.as_secs_f64()
    );
    // Without the release the standby would wait for the 6s lease to expire.
    assert!(
        handover < Duration::from_secs(3),
        "release did not speed up handover: {handover:?}"
    );
}

#[tokio::test]
async fn a_task_that_dies_takes_the_replica_down_so_kubernetes_restarts_it() {
    let cluster = cluster();
    let client = cluster.client().await;
    install_crds(&client).await.unwrap();
    let ns = cluster.namespace("supervise").await;
    for task in ["dns-planner", "slo-controller"] {
        let crash = format!("--chaos-crash-task={task}");
        let mut operator = bulwark_e2e::operator::start_operator(
            &cluster.kubeconfig,
            &ns,
            &format!("crash-{task}"),
            &[&crash],
            &std::env::temp_dir().join("bulwark-e2e-logs/supervise"),
        )
        .unwrap();
        let started = Instant::now();
        let status = operator
            .process
            .wait_exit(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("the replica must exit once {task} dies"));
        println!(
            "{task} panicked: replica exited with {status} after {:.1}s",
            started.elapsed().as_secs_f64()
        );
        assert!(!status.success(), "a dead task must exit non-zero");
        let log = operator.process.log_tail(40);
        assert!(
            log.contains(&format!("task {task} panicked before shutdown")),
            "{log}"
        );
    }
}

/// `bulwark run` with this kubeconfig: (exit success, stderr, time taken).
fn run_with_kubeconfig(kubeconfig: &std::path::Path) -> (bool, String, Duration) {
    let started = Instant::now();
    let output = std::process::Command::new(bulwark_binary().unwrap())
        .args(["run", "--metrics-addr=127.0.0.1:0"])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn unreachable_or_broken_kubeconfig_fails_fast_with_one_actionable_line() {
    let dir = log_dir("bad-kubeconfig");
    std::fs::create_dir_all(&dir).unwrap();
    let port = bulwark_e2e::process::free_port().unwrap();
    let unreachable = dir.join("unreachable.kubeconfig");
    std::fs::write(&unreachable, format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\n\
         users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n"
    )).unwrap();
    let broken = dir.join("broken.kubeconfig");
    std::fs::write(&broken, "this is not a kubeconfig: [").unwrap();

    for kubeconfig in [&unreachable, &broken] {
        let (ok, stderr, took) = run_with_kubeconfig(kubeconfig);
        assert!(!ok, "must exit non-zero");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "exactly one line, got: {stderr}");
        assert!(
            lines[0].contains(&kubeconfig.display().to_string()),
            "names the kubeconfig: {}",
            lines[0]
        );
        assert!(
            lines[0].contains("./dev up"),
            "says how to start the local control plane: {}",
            lines[0]
        );
        assert!(took < Duration::from_secs(15), "took {took:?}");
    }
}

#[tokio::test]
async fn examples_are_accepted_by_the_api_server() {
    let cluster = cluster();
    let client = cluster.client().await;
    install_crds(&client).await.unwrap();
    let ns = cluster.namespace("examples").await;
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"));
    // examples/ and the folders in it (objects for a user's own servers).
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            files.push(path);
        }
    }
    let mut checked = 0;
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for document in serde_saphyr::from_multiple::<serde_json::Value>(&text).unwrap() {
            let object: DynamicObject = serde_json::from_value(document).unwrap();
            let types = object.types.clone().unwrap();
            let (group, version) = types
                .api_version
                .split_once('/')
                .unwrap_or(("", &types.api_version));
            let gvk = GroupVersionKind::gvk(group, version, &types.kind);
            let (resource, _) = kube::discovery::pinned_kind(&client, &gvk).await.unwrap();
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
            let params = PostParams {
                dry_run: true,
                ..PostParams::default()
            };
            api.create(&params, &object).await.unwrap_or_else(|e| {
                panic!("{} in {} is rejected: {e}", types.kind, path.display())
            });
            checked += 1;
        }
    }
    assert!(checked >= 7, "examples/ holds the documented objects");
}
