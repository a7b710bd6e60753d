//! The Helm chart: lint, schema, least-privilege RBAC, hardened pods, and a real cluster-wide
//! install whose operator pods (run by the node agents) become Available, enact a DnsEndpoint,
//! and leave namespaces labelled `bulwark.dev/exclude=true` to the release installed there.

use bulwark_controllers::dns::provider::DnsProvider;
use bulwark_crds::dns::{DnsEndpoint, DnsPlan};
use bulwark_e2e::bind::Bind;
use bulwark_e2e::chart::Release;
use bulwark_e2e::chart::{CHART, helm, output_text as text};
use bulwark_e2e::dns::{apply_endpoint, create_zone, plans};
use bulwark_e2e::slo::promtool;
use bulwark_e2e::{cluster, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

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
    // Cluster-wide, namespaces labelled bulwark.dev/exclude=true are left to their own release:
    // the operator reads namespace labels, and the admission policy does not bind there.
    let cluster_role = manifests
        .iter()
        .find(|m| m["kind"] == "ClusterRole")
        .unwrap();
    assert!(
        cluster_role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resources"] == serde_json::json!(["namespaces"])
                && r["verbs"] == serde_json::json!(["list", "watch"])),
        "{cluster_role}"
    );
    let binding = manifests
        .iter()
        .find(|m| m["kind"] == "ValidatingAdmissionPolicyBinding")
        .unwrap();
    assert_eq!(
        binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"],
        serde_json::json!([{"key": "bulwark.dev/exclude", "operator": "NotIn", "values": ["true"]}])
    );
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
fn a_single_namespace_install_gets_roles_there_and_the_lease_rule_names_its_lease() {
    let manifests = rendered(&["--set", "watchNamespace=shop"]);
    let of_kind =
        |kind: &str| -> Vec<&Value> { manifests.iter().filter(|m| m["kind"] == kind).collect() };
    assert!(
        of_kind("ClusterRole").is_empty() && of_kind("ClusterRoleBinding").is_empty(),
        "no cluster-wide access when one namespace is watched"
    );
    let controller_role = of_kind("Role")
        .into_iter()
        .find(|r| r["metadata"]["namespace"] == "shop")
        .expect("a Role in the watched namespace");
    let rules = controller_role["rules"].as_array().unwrap();
    assert!(
        rules.iter().any(|r| r["resources"]
            .as_array()
            .unwrap()
            .contains(&"secrets".into())),
        "the TSIG Secrets are read in the watched namespace"
    );
    let binding = of_kind("RoleBinding")
        .into_iter()
        .find(|b| b["metadata"]["namespace"] == "shop")
        .expect("a RoleBinding in the watched namespace");
    assert_eq!(binding["subjects"][0]["namespace"], "bulwark-system");

    let leader = of_kind("Role")
        .into_iter()
        .find(|r| r["metadata"]["name"] == "bulwark-leader-election")
        .unwrap();
    for rule in leader["rules"].as_array().unwrap() {
        let verbs = rule["verbs"].as_array().unwrap();
        if verbs.contains(&"create".into()) {
            assert_eq!(
                verbs.len(),
                1,
                "create is the only verb without a name: {rule}"
            );
        } else {
            assert_eq!(
                rule["resourceNames"],
                serde_json::json!(["bulwark-leader"]),
                "{rule}"
            );
        }
    }
    // The admission policy then applies to the watched namespace only.
    let binding = of_kind("ValidatingAdmissionPolicyBinding")[0];
    assert_eq!(
        binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "shop"
    );
}

/// The drill alerts as Prometheus evaluates them (`promtool test rules`): a target's failed
/// drill fires until a later one succeeds, and a target without a successful drill for
/// `overdueAfterHours` fires; both off unless enabled.
#[test]
fn drill_alerts_fire_for_a_failed_drill_and_an_overdue_target() {
    assert!(
        rendered(&[]).iter().all(|m| m["kind"] != "PrometheusRule"),
        "the PrometheusRule needs the Prometheus Operator: off by default"
    );
    let manifests = rendered(&[
        "--set",
        "drills.alerts.enabled=true",
        "--set",
        "drills.alerts.overdueAfterHours=2",
    ]);
    let rule = manifests
        .iter()
        .find(|m| m["kind"] == "PrometheusRule")
        .expect("a PrometheusRule");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.json"),
        json!({"groups": rule["spec"]["groups"]}).to_string(),
    )
    .unwrap();
    let target = r#"namespace="shop",kind="DatabaseCluster",target="db""#;
    let labels = json!({"namespace": "shop", "kind": "DatabaseCluster", "target": "db", "severity": "warning"});
    let failed = json!([{"exp_labels": labels, "exp_annotations": {
        "summary": "The last DR drill of DatabaseCluster shop/db failed its success criteria",
        "description": "kubectl get drillruns -n shop shows the run, its RTO, lost writes and why.",
    }}]);
    let overdue = json!([{"exp_labels": labels, "exp_annotations": {
        "summary": "DatabaseCluster shop/db has had no successful DR drill for 2h",
        "description": "Its failover is unproven: check its DrillSchedule (suspended, blocked windows, runs skipped by guards or failing).",
    }}]);
    let check = |minute: u32, alert: &str, expected: &Value| json!({"eval_time": format!("{minute}m"), "alertname": alert, "exp_alerts": expected});
    let suite = json!({
        "rule_files": ["rules.json"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": format!("bulwark_drill_last_failed{{{target},pod=\"a\"}}"), "values": "0 0 1 1 0 0"},
                // The last success at time 0.
                {"series": format!("bulwark_drill_last_success_timestamp_seconds{{{target},pod=\"a\"}}"), "values": "0x130"},
            ],
            "alert_rule_test": [
                check(1, "BulwarkDrillFailed", &json!([])),
                check(3, "BulwarkDrillFailed", &failed),
                check(5, "BulwarkDrillFailed", &json!([])),
                check(119, "BulwarkDrillOverdue", &json!([])),
                check(121, "BulwarkDrillOverdue", &overdue),
            ],
        }],
    });
    std::fs::write(dir.path().join("test.json"), suite.to_string()).unwrap();
    let (ok, text) = promtool(&["test", "rules", "test.json"], dir.path());
    assert!(ok, "promtool test rules:\n{text}\n{suite:#}");
}

#[test]
fn the_drill_dashboard_is_a_grafana_configmap_unless_disabled() {
    let manifests = rendered(&[]);
    let dashboard = manifests
        .iter()
        .find(|m| m["kind"] == "ConfigMap" && m["metadata"]["name"] == "bulwark-drills-dashboard")
        .expect("the drill dashboard ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let board: Value =
        serde_json::from_str(dashboard["data"]["bulwark-drills.json"].as_str().unwrap()).unwrap();
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{CHART}/dashboards/drills.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(board, file);
    assert!(
        rendered(&["--set", "drills.dashboard.enabled=false"])
            .iter()
            .all(|m| m["metadata"]["name"] != "bulwark-drills-dashboard")
    );
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
    // Only a cluster-wide release makes a ClusterRole; a second one would manage the same
    // namespaces as the one already there.
    let cluster_roles: Api<ClusterRole> = Api::all(cluster.client().await);
    let installed = cluster_roles
        .list(&ListParams::default().labels("app.kubernetes.io/name=bulwark"))
        .await
        .unwrap()
        .items;
    if let Some(role) = installed.first() {
        println!(
            "skipped: a cluster-wide Bulwark is installed here (ClusterRole {}); a second would act on the same namespaces",
            role.metadata.name.as_deref().unwrap_or_default()
        );
        return;
    }
    let ns = cluster.namespace_for_cluster_wide_release("helm").await;
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

    // Only Bulwark's ServiceAccount may mint or mark DnsPlans (ValidatingAdmissionPolicy).
    let plan: DnsPlan = serde_json::from_value(serde_json::json!({
        "apiVersion": "bulwark.dev/v1alpha1", "kind": "DnsPlan",
        "metadata": {"name": "forged-1"},
        "spec": {"endpointRef": "web", "fqdn": "web.example.com", "generation": 1,
            "rrsets": [{"recordType": "A", "ttl": 30, "values": ["192.0.2.66"]}],
            "contentHash": "0".repeat(64)}
    }))
    .unwrap();
    let as_admin: Api<DnsPlan> = Api::namespaced(client.clone(), &ns);
    let denied = eventually(
        Duration::from_secs(30),
        "the admission policy to deny a DnsPlan from a user",
        || async {
            match as_admin.create(&PostParams::default(), &plan).await {
                Err(kube::Error::Api(status)) if status.is_forbidden() => Some(status.message),
                Ok(_) => {
                    // Not in force yet: undo and look again.
                    let _ = as_admin.delete("forged-1", &Default::default()).await;
                    None
                }
                Err(_) => None,
            }
        },
    )
    .await
    .unwrap();
    println!("DnsPlan from a user: {denied}");
    assert!(
        denied.contains("minted and marked only by Bulwark"),
        "{denied}"
    );
    let operator = format!("system:serviceaccount:{ns}:bulwark");
    let mut config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&cluster.kubeconfig).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    config.auth_info.impersonate = Some(operator.clone());
    let as_operator: Api<DnsPlan> = Api::namespaced(kube::Client::try_from(config).unwrap(), &ns);
    as_operator
        .create(&PostParams::default(), &plan)
        .await
        .unwrap_or_else(|e| panic!("{operator} may create DnsPlans: {e}"));
    // Its status, too, only Bulwark may write; a user's metadata edit (a label) is let through.
    let status = serde_json::json!({"status": {"phase": "Superseded"}});
    let error = as_admin
        .patch_status("forged-1", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("only by Bulwark"), "{error}");
    as_admin
        .patch(
            "forged-1",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"note": "checked"}}})),
        )
        .await
        .unwrap();

    a_cluster_wide_release_leaves_excluded_namespaces_alone(&client, &ns).await;

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

/// With a cluster-wide release installed (in `release_ns`), a DnsEndpoint in a managed namespace
/// is enacted by its pods, and one in a namespace labelled `bulwark.dev/exclude=true` only by the
/// release installed there: the way the e2e suite and a canary release share a cluster.
async fn a_cluster_wide_release_leaves_excluded_namespaces_alone(
    client: &kube::Client,
    release_ns: &str,
) {
    let cluster = cluster();
    let bind = Bind::start("scope.test").unwrap();
    let managed = cluster.namespace_for_cluster_wide_release("managed").await;
    let excluded = cluster.namespace("excluded").await;
    let own_release = Release::install_operator(&cluster.kubeconfig, &excluded, 1, &[]).unwrap();
    let pod_names = |ns: String| async move {
        let pods: Api<Pod> = Api::namespaced(cluster.client().await, &ns);
        let list = pods.list(&Default::default()).await.unwrap();
        list.items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect::<Vec<_>>()
    };
    let cluster_wide_pods = pod_names(release_ns.to_string()).await;
    let own_pods = pod_names(excluded.clone()).await;
    for (ns, fqdn, address, enactors) in [
        (
            &managed,
            "managed.scope.test",
            "192.0.2.10",
            &cluster_wide_pods,
        ),
        (&excluded, "excluded.scope.test", "192.0.2.20", &own_pods),
    ] {
        create_zone(client, ns, "scope", &bind).await.unwrap();
        apply_endpoint(client, ns, "web", "scope", fqdn, &[address.to_string()])
            .await
            .unwrap();
        let endpoints: Api<DnsEndpoint> = Api::namespaced(client.clone(), ns);
        let enacted_by = eventually(
            Duration::from_secs(60),
            &format!("{ns}: plan 1 live with its enactor recorded"),
            || async {
                // Another enactor may read the served answer back, and record plan 1 live,
                // before the one that applied it records itself.
                let status = endpoints.get("web").await.ok()?.status?;
                (status.live_generation == Some(1))
                    .then_some(status.enacted_by)
                    .flatten()
            },
        )
        .await
        .unwrap();
        println!("{ns}: plan 1 enacted by {enacted_by}");
        assert!(
            enactors.contains(&enacted_by),
            "{ns}: enacted by {enacted_by}, expected one of {enactors:?}"
        );
        assert_eq!(
            plans(client, ns, "web").await.unwrap().len(),
            1,
            "{ns}: one planner, one plan"
        );
        assert_eq!(
            bind.provider().served_records(fqdn).await.unwrap()[0].values,
            vec![address.to_string()]
        );
        // Every Event Bulwark recorded there comes from the expected release's pods.
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
        let reporters: std::collections::BTreeSet<String> = events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reporting_controller.as_deref() == Some("bulwark"))
            .filter_map(|e| e.reporting_instance)
            .collect();
        println!("{ns}: Events reported by {reporters:?}");
        assert!(!reporters.is_empty(), "{ns}: the enactment left Events");
        assert!(
            reporters.iter().all(|r| enactors.contains(r)),
            "{ns}: Events from {reporters:?}, expected only {enactors:?}"
        );
    }
    drop(own_release);
}
