//! The Helm chart: lint, schema, least-privilege RBAC, hardened pods, and a real install whose
//! Deployment becomes Available (kwok runs the pods on the local control plane).

use bulwark_e2e::{binaries::binary, cluster};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Api;
use serde_json::Value;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/bulwark");

fn helm(args: &[&str]) -> Output {
    let home = std::env::temp_dir().join("bulwark-e2e-helm");
    Command::new(binary("helm").expect("helm binary"))
        .args(args)
        // Keep helm's cache and config out of the user's home.
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("run helm")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn rendered(extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "template",
        "bulwark",
        CHART,
        "--namespace",
        "bulwark-system",
    ];
    args.extend(extra);
    let output = helm(&args);
    assert!(
        output.status.success(),
        "helm template failed: {}",
        text(&output)
    );
    serde_saphyr::from_multiple::<Value>(&String::from_utf8_lossy(&output.stdout))
        .expect("rendered manifests are YAML")
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn chart_lints_and_its_schema_rejects_bad_values() {
    let lint = helm(&["lint", "--strict", CHART]);
    assert!(lint.status.success(), "helm lint --strict: {}", text(&lint));
    for (bad, expected) in [
        ("replicaCount=0", "replicaCount"),
        ("logFormat=xml", "logFormat"),
        ("unknownKey=1", "unknownKey"),
        ("slo.prometheusURL=prometheus:9090", "prometheusURL"),
        ("slo.statusInterval=often", "statusInterval"),
    ] {
        let output = helm(&["lint", CHART, "--set", bad]);
        assert!(!output.status.success(), "--set {bad} must fail the schema");
        assert!(
            text(&output).contains(expected),
            "error for {bad} names the field: {}",
            text(&output)
        );
    }
}

#[test]
fn rbac_is_least_privilege_and_every_rule_says_why() {
    let manifests = rendered(&["--set", "metrics.serviceMonitor.enabled=true"]);
    let kinds: Vec<&str> = manifests
        .iter()
        .filter_map(|m| m["kind"].as_str())
        .collect();
    for kind in [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "ServiceMonitor",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.contains(&kind), "chart renders a {kind}: {kinds:?}");
    }
    for manifest in &manifests {
        if let Some(rules) = manifest["rules"].as_array() {
            for rule in rules {
                for field in ["apiGroups", "resources", "verbs"] {
                    let values: Vec<&str> = rule[field]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter_map(Value::as_str)
                        .collect();
                    assert!(!values.contains(&"*"), "wildcard {field} in {rule}");
                }
            }
        }
        if manifest["kind"] == "ClusterRoleBinding" || manifest["kind"] == "RoleBinding" {
            assert_ne!(manifest["roleRef"]["name"], "cluster-admin");
        }
    }
    // Every rule in the RBAC template is directly preceded by a comment saying which feature needs it.
    let source = std::fs::read_to_string(format!("{CHART}/templates/rbac.yaml")).unwrap();
    let lines: Vec<&str> = source.lines().collect();
    for (i, _) in lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("- apiGroups"))
    {
        assert!(
            lines[i - 1].trim_start().starts_with('#'),
            "rule at line {} has no comment",
            i + 1
        );
    }
}

#[test]
fn pods_are_hardened() {
    let manifests = rendered(&[]);
    let deployment = manifests
        .iter()
        .find(|m| m["kind"] == "Deployment")
        .unwrap();
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
}

#[tokio::test]
async fn chart_installs_and_the_deployment_becomes_available() {
    let cluster = cluster();
    let ns = cluster.namespace("helm").await;
    let kubeconfig = cluster.kubeconfig.display().to_string();
    let started = Instant::now();
    let install = helm(&[
        "install",
        "bulwark",
        CHART,
        "--namespace",
        &ns,
        "--kubeconfig",
        &kubeconfig,
        "--wait",
        "--timeout",
        "120s",
    ]);
    assert!(install.status.success(), "helm install: {}", text(&install));
    println!(
        "helm install --wait: {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let client = cluster.client().await;
    let deployment = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("bulwark")
        .await
        .unwrap();
    let status = deployment.status.unwrap();
    assert_eq!(status.available_replicas, Some(2), "{status:?}");
    let available = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Available");
    assert_eq!(available.map(|c| c.status).as_deref(), Some("True"));
    let pdb = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns)
        .get("bulwark")
        .await
        .unwrap();
    // The disruption controller sees both replicas healthy, so one may be evicted at a time.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pdb = pdb;
    while pdb.status.as_ref().map(|s| s.current_healthy) != Some(Some(2))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        pdb = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns)
            .get("bulwark")
            .await
            .unwrap();
    }
    assert_eq!(
        pdb.status
            .map(|s| (s.current_healthy, s.disruptions_allowed)),
        Some((Some(2), Some(1)))
    );

    let uninstall = helm(&[
        "uninstall",
        "bulwark",
        "--namespace",
        &ns,
        "--kubeconfig",
        &kubeconfig,
        "--wait",
    ]);
    assert!(
        uninstall.status.success(),
        "helm uninstall: {}",
        text(&uninstall)
    );
}
