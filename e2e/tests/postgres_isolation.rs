//! Self-fencing on real pods: two PostgreSQL instances (`bulwark instance` as the pods' main
//! process, on the node agents) and a client writing to the primary from outside. Cut off from
//! the API server only, or from its replica only, the primary keeps acknowledging writes (either
//! side still sees it, so no failover can happen behind its back). Cut off from both, it stops
//! acknowledging within the isolation bound, and its status says why. Local control plane only.

use std::time::{Duration, Instant};

use bulwark_chaos::node_agent::{Partition, Side};
use bulwark_controllers::postgres::client::Endpoint;
use bulwark_controllers::postgres::probe::WriteProbe;
use bulwark_e2e::node::images::BULWARK_IMAGE;
use bulwark_e2e::pki::Pki;
use bulwark_e2e::postgres::{instance_status, postgres_user};
use bulwark_e2e::{cluster, eventually};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// The isolation bound the primary runs with.
const BOUND: Duration = Duration::from_secs(3);
const APP_PASSWORD: &str = "app-password";

fn instance_pod(name: &str, extra_args: &[String]) -> Pod {
    let (uid, gid) = postgres_user();
    let mut args = vec![
        "instance".to_string(),
        "--volume=/var/lib/bulwark".into(),
        "--port=5432".into(),
        "--api-addr=0.0.0.0:8443".into(),
        "--replication-password-file=/etc/bulwark/replication/password".into(),
        "--database=app".into(),
        "--owner=app".into(),
        "--owner-password-file=/etc/bulwark/app/password".into(),
        "--tls-cert=/etc/bulwark/tls/tls.crt".into(),
        "--tls-key=/etc/bulwark/tls/tls.key".into(),
        "--client-ca=/etc/bulwark/tls/ca.crt".into(),
    ];
    args.extend(extra_args.iter().cloned());
    let secret_volume = |name: &str| json!({"name": name, "secret": {"secretName": name}});
    let mount = |name: &str| json!({"name": name, "mountPath": format!("/etc/bulwark/{name}"), "readOnly": true});
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "db"}},
        "spec": {
            "terminationGracePeriodSeconds": 10,
            "securityContext": {"runAsUser": uid, "runAsGroup": gid},
            "containers": [{
                "name": "postgres",
                "image": BULWARK_IMAGE,
                "args": args,
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "volumeMounts": [
                    {"name": "data", "mountPath": "/var/lib/bulwark"},
                    mount("tls"), mount("replication"), mount("app"),
                ],
            }],
            "volumes": [
                {"name": "data", "emptyDir": {}},
                secret_volume("tls"), secret_volume("replication"), secret_volume("app"),
            ],
        },
    }))
    .unwrap()
}

/// The instance's command API over HTTPS as the operator, reaching `ip` under the name the
/// serving certificate carries.
fn operator_client(ip: &str, ca: &[u8], identity: &reqwest::Identity) -> reqwest::Client {
    bulwark_controllers::runtime::ensure_crypto_provider();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca).unwrap())
        .identity(identity.clone())
        .resolve("instance", format!("{ip}:8443").parse().unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn status(http: &reqwest::Client) -> Option<Value> {
    instance_status(http, "https://instance:8443").await
}

async fn running_pod(pods: &Api<Pod>, pod: Pod) -> String {
    let name = pod.metadata.name.clone().unwrap();
    // The namespace's default ServiceAccount may not exist yet.
    eventually(
        Duration::from_secs(30),
        &format!("{name} created"),
        || async { pods.create(&PostParams::default(), &pod).await.ok() },
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(60),
        &format!("{name} running"),
        || async {
            let status = pods.get(&name).await.ok()?.status?;
            (status.phase.as_deref() == Some("Running")).then_some(status.pod_ip?)
        },
    )
    .await
    .unwrap()
}

/// How the application reaches the instance at `ip`: TLS, under the certificate's name.
fn application(ip: &str, ca: &str) -> Endpoint {
    let mut config = tokio_postgres::Config::new();
    config
        .host("instance")
        .hostaddr(ip.parse().unwrap())
        .port(5432)
        .user("app")
        .password(APP_PASSWORD)
        .dbname("app")
        .connect_timeout(Duration::from_secs(1));
    Endpoint::new(config, ca.as_bytes()).unwrap()
}

#[tokio::test]
async fn an_isolated_primary_stops_acknowledging_writes_within_the_bound() {
    let Some(api_port) = cluster().local_api_server_port() else {
        eprintln!(
            "skipped: instance pods run the built binary on the local control plane's node agents"
        );
        return;
    };
    let client = cluster().client().await;
    let ns = cluster().namespace("pg-isolation").await;

    let dir = tempfile::tempdir().unwrap();
    let (pki, authority) = Pki::generate(dir.path()).unwrap();
    let server = authority.serving("instance", &["instance"]).unwrap();
    let operator = authority.client("bulwark-operator", &[]).unwrap();
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    let ca = read(&pki.ca_cert);
    let identity = reqwest::Identity::from_pem(
        format!("{}{}", read(&operator.cert), read(&operator.key)).as_bytes(),
    )
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for (name, data) in [
        (
            "tls",
            json!({"tls.crt": read(&server.cert), "tls.key": read(&server.key), "ca.crt": ca}),
        ),
        ("replication", json!({"password": "replication-password"})),
        ("app", json!({"password": APP_PASSWORD})),
    ] {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data});
        secrets
            .patch(name, &PatchParams::apply("e2e"), &Patch::Apply(secret))
            .await
            .unwrap();
    }

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let bound = format!("--isolation-timeout={}s", BOUND.as_secs());
    let a_ip = running_pod(&pods, instance_pod("a", std::slice::from_ref(&bound))).await;
    let a = operator_client(&a_ip, ca.as_bytes(), &identity);
    eventually(Duration::from_secs(60), "a serving as primary", || async {
        let s = status(&a).await?;
        (s["running"] == true && s["inRecovery"] == false).then_some(())
    })
    .await
    .unwrap();
    let b_ip = running_pod(
        &pods,
        instance_pod("b", &[format!("--bootstrap-replica-of={a_ip}:5432")]),
    )
    .await;
    let b = operator_client(&b_ip, ca.as_bytes(), &identity);
    eventually(Duration::from_secs(60), "b streaming from a", || async {
        (status(&b).await?["walReceiver"] == "streaming").then_some(())
    })
    .await
    .unwrap();
    assert!(
        application(&a_ip, &ca).connect().await.is_ok(),
        "the application's role and database exist"
    );
    // The application writing to the primary from outside the pods.
    let writer = WriteProbe::start(
        application(&a_ip, &ca),
        Duration::from_millis(50),
        Duration::from_secs(2),
    );
    let api_server = Side::HostPort("10.244.0.1".into(), api_port);
    let replica = Side::Pods(vec![b_ip.clone()]);
    let primary = std::slice::from_ref(&a_ip);

    // One side cut off at a time: the primary keeps acknowledging well past the bound.
    for (what, side) in [("the API server", &api_server), ("its replica", &replica)] {
        let cut = Partition::start(primary, side).unwrap();
        let started = Instant::now();
        tokio::time::sleep(BOUND * 2).await;
        let late = writer
            .report()
            .acknowledged_after(started + BOUND + Duration::from_secs(1));
        cut.heal().unwrap();
        println!(
            "cut off from {what} only: {} writes acknowledged after the bound",
            late.len()
        );
        assert!(
            !late.is_empty(),
            "cut off from {what} only, the primary must keep serving"
        );
        assert_eq!(
            status(&a).await.unwrap()["role"],
            "primary",
            "not fenced over {what} alone"
        );
        eventually(Duration::from_secs(30), "b streaming again", || async {
            (status(&b).await?["walReceiver"] == "streaming").then_some(())
        })
        .await
        .unwrap();
    }

    // Both: isolated. The writes stop within the bound of the last contact.
    let to_api = Partition::start(primary, &api_server).unwrap();
    let to_replica = Partition::start(primary, &replica).unwrap();
    let isolated_at = Instant::now();
    let fenced = eventually(Duration::from_secs(30), "a fenced", || async {
        let s = status(&a).await?;
        (s["role"] == "fenced").then_some(s)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acknowledged = writer.stop().await.acknowledged_after(isolated_at);
    let last = acknowledged
        .last()
        .map(|w| w.at.duration_since(isolated_at));
    to_api.heal().unwrap();
    to_replica.heal().unwrap();
    println!(
        "isolated primary: fenced ({}), last write acknowledged {:.2}s after isolation (bound {}s), {} acknowledged in between",
        fenced["fenceReason"],
        last.unwrap_or_default().as_secs_f64(),
        BOUND.as_secs(),
        acknowledged.len()
    );
    assert!(
        fenced["fenceReason"]
            .as_str()
            .unwrap()
            .starts_with("isolated")
    );
    assert!(
        last.is_none_or(|l| l <= BOUND + Duration::from_secs(1)),
        "the primary acknowledged a write {last:?} after isolation; the bound is {BOUND:?}, counted from the last contact, plus the time to stop PostgreSQL"
    );
    assert!(
        application(&a_ip, &ca).connect().await.is_err(),
        "a fenced primary takes no sessions"
    );
}
