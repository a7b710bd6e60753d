//! SLO burn-rate alerting end to end: the operator (the Helm chart's pod) on the real control
//! plane renders a
//! ServiceLevelObjective; a real Prometheus loads the PrometheusRule's groups, scrapes a
//! synthetic exporter whose error ratio the test sets, fires the page alert, and the SLO's
//! status follows, with every fault on the way shown as a Condition.

use std::time::Duration;

use bulwark_controllers::slo::{dashboard_name, prometheus_rule_name, prometheus_rule_resource};
use bulwark_crds::slo::ServiceLevelObjective;
use bulwark_e2e::apiserver::{api_metrics, sum_by};
use bulwark_e2e::chart::Release;
use bulwark_e2e::process::free_port;
use bulwark_e2e::slo::{
    ERRORS_SELECTOR, Exporter, Prometheus, TOTAL_SELECTOR, install_prometheus_rule_crd,
    prometheus_rules_served,
};
use bulwark_e2e::{cluster, eventually, install_crds};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};

const OBJECTIVE: f64 = 99.9;
/// 2% of requests failing against a 0.1% budget: a 20× burn, above the 14.4× page factor.
const INJECTED_ERROR_RATIO: f64 = 0.02;
const INJECTED_BURN: f64 = INJECTED_ERROR_RATIO / ((100.0 - OBJECTIVE) / 100.0);

/// (status, reason, message) of the SLO's condition `type_`.
async fn condition(
    api: &Api<ServiceLevelObjective>,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let slo = api.get(name).await.ok()?;
    slo.status?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn wait_for_condition(
    api: &Api<ServiceLevelObjective>,
    name: &str,
    type_: &str,
    reason: &str,
) -> String {
    eventually(
        Duration::from_secs(60),
        &format!("{type_} reason {reason}"),
        || async {
            let (_, got, message) = condition(api, name, type_).await?;
            (got == reason).then_some(message)
        },
    )
    .await
    .unwrap()
}

/// `bulwark_reconciles_total` of the SLO controller, all results.
async fn slo_reconciles(release: &Release, client: &kube::Client) -> anyhow::Result<f64> {
    let metrics = release.metrics(client).await?;
    Ok(metrics
        .lines()
        .filter(|l| l.starts_with("bulwark_reconciles_total{") && l.contains("controller=\"slo\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// The writes to PrometheusRules the API server has counted (any client's).
async fn prometheus_rule_writes(client: &kube::Client) -> f64 {
    let metrics = api_metrics(client).await.unwrap();
    sum_by(&metrics, "apiserver_request_total", &["resource", "verb"])
        .into_iter()
        .filter_map(|(key, count)| {
            let verb = key.strip_prefix("prometheusrules ")?;
            ["APPLY", "PATCH", "CREATE", "UPDATE"]
                .contains(&verb)
                .then_some(count)
        })
        .sum()
}

#[tokio::test]
async fn page_alert_fires_in_prometheus_and_status_follows() {
    let cluster = cluster();
    let client = cluster.client().await;
    install_crds(&client).await.unwrap();
    let ns = cluster.namespace("slo").await;
    let exporter = Exporter::start("api", 200.0).unwrap();
    let prometheus_port = free_port().unwrap();
    // Prometheus (started later) listens where the operator's pod reaches it.
    let prometheus_host = bulwark_e2e::host_address_for_pods().unwrap_or([127, 0, 0, 1].into());
    let release = Release::install_operator(
        &cluster.kubeconfig,
        &ns,
        1,
        &[
            &format!("slo.prometheusURL=http://{prometheus_host}:{prometheus_port}"),
            "slo.statusInterval=1s",
        ],
    )
    .unwrap();

    let slos: Api<ServiceLevelObjective> = Api::namespaced(client.clone(), &ns);
    let name = "checkout";
    let slo: ServiceLevelObjective = serde_json::from_value(serde_json::json!({
        "apiVersion": "bulwark.dev/v1alpha1",
        "kind": "ServiceLevelObjective",
        "metadata": {"name": name},
        "spec": {
            "service": "checkout",
            "objective": OBJECTIVE,
            "period": "30d",
            "indicator": {"ratio": {"errors": ERRORS_SELECTOR, "total": TOTAL_SELECTOR}},
            "alerting": {"runbookURL": "https://runbooks.example.com/checkout"},
        },
    }))
    .unwrap();
    let params = PatchParams::apply("e2e").force();
    slos.patch(name, &params, &Patch::Apply(&slo))
        .await
        .unwrap();

    // Before the PrometheusRule kind exists: said so, and the dashboard is applied anyway.
    if prometheus_rules_served(&client).await.unwrap() {
        println!("this cluster already serves PrometheusRule; skipping the missing-CRD phase");
    } else {
        let message = wait_for_condition(&slos, name, "Ready", "PrometheusRuleCRDMissing").await;
        println!("without the CRD: Ready=False PrometheusRuleCRDMissing: {message}");
        install_prometheus_rule_crd(&client).await.unwrap();
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let dashboard = eventually(
        Duration::from_secs(30),
        "the dashboard ConfigMap",
        || async { config_maps.get(&dashboard_name(name)).await.ok() },
    )
    .await
    .unwrap();
    assert_eq!(
        dashboard.metadata.labels.as_ref().unwrap()["grafana_dashboard"],
        "1"
    );
    let owner = &dashboard.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("ServiceLevelObjective", name)
    );
    let board: serde_json::Value =
        serde_json::from_str(dashboard.data.as_ref().unwrap().values().next().unwrap()).unwrap();
    assert!(board["panels"].as_array().unwrap().len() >= 9);

    // Prometheus is not running yet: the status says it cannot be reached.
    let message = wait_for_condition(&slos, name, "LiveStatus", "PrometheusUnreachable").await;
    println!("before Prometheus starts: LiveStatus=False PrometheusUnreachable: {message}");

    let message = wait_for_condition(&slos, name, "Ready", "RulesApplied").await;
    println!("Ready=True RulesApplied: {message}");
    let rules: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &prometheus_rule_resource());
    let rule = rules.get(&prometheus_rule_name(name)).await.unwrap();
    let groups = rule.data["spec"]["groups"].clone();
    assert_eq!(
        groups[0]["rules"].as_array().unwrap().len(),
        4,
        "2 recording rules and 2 alerts"
    );

    // The service is already failing 2% of requests when Prometheus first scrapes it, so
    // every window sees the same 20x burn. Prometheus without the rules: no data yet.
    exporter.set_error_ratio(INJECTED_ERROR_RATIO);
    let dir = tempfile::tempdir().unwrap();
    let prometheus = Prometheus::start(
        dir.path(),
        prometheus_port,
        std::slice::from_ref(&exporter.address),
        "1s",
    )
    .await
    .unwrap();
    let message = wait_for_condition(&slos, name, "LiveStatus", "NoData").await;
    println!("Prometheus without the rules: LiveStatus=False NoData: {message}");

    // The PrometheusRule's groups loaded as the Prometheus Operator would: the page fires in
    // Prometheus, and status shows it with the burn rate.
    prometheus.load_rules(&groups).await.unwrap();
    let loaded = std::time::Instant::now();
    let page = r#"ALERTS{alertname="ErrorBudgetBurn",alertstate="firing",tier="page"}"#;
    let alert = eventually(
        Duration::from_secs(60),
        "the page alert firing in Prometheus",
        || async { prometheus.query(page).await.ok()?.into_iter().next() },
    )
    .await
    .unwrap();
    println!(
        "page alert firing {:.1}s after the rules were loaded: {}",
        loaded.elapsed().as_secs_f64(),
        alert.0
    );
    assert_eq!(alert.0["slo_name"], name);
    assert_eq!(alert.0["service"], "checkout");
    let status = eventually(
        Duration::from_secs(60),
        "status: page firing, 5m burn rate within 10% of the injected one",
        || async {
            let status = slos.get(name).await.ok()?.status?;
            let burn = status
                .burn_rates
                .iter()
                .find(|b| b.window == "5m")?
                .burn_rate;
            let paging = status
                .firing
                .as_deref()
                .is_some_and(|f| f.split(',').any(|t| t == "page"));
            (paging && (burn - INJECTED_BURN).abs() <= 0.1 * INJECTED_BURN).then_some(status)
        },
    )
    .await
    .unwrap();
    println!(
        "status {:.1}s after the rules were loaded, {INJECTED_BURN:.1}x injected: firing={:?}, burn rates {:?}, budget remaining {:?}",
        loaded.elapsed().as_secs_f64(),
        status.firing,
        status
            .burn_rates
            .iter()
            .map(|b| format!("{}={}", b.window, b.burn_rate))
            .collect::<Vec<_>>(),
        status.error_budget_remaining
    );
    assert_eq!(
        status.rules.map(|r| (r.recording, r.alerting)),
        Some((2, 2))
    );
    assert_eq!(
        condition(&slos, name, "LiveStatus")
            .await
            .map(|c| c.1)
            .as_deref(),
        Some("Evaluated")
    );

    // Every query on the dashboard answers with data while the alert fires.
    let queries = bulwark_controllers::slo::dashboard::queries(&board);
    assert!(queries.len() >= 9, "{queries:?}");
    for query in &queries {
        let answer = prometheus
            .query(query)
            .await
            .unwrap_or_else(|e| panic!("dashboard query {query} refused: {e}"));
        assert!(!answer.is_empty(), "dashboard query {query} has no data");
    }
    println!("all {} dashboard queries answered with data", queries.len());

    // Status writes do not feed back into reconciles: refreshes follow the 1s interval.
    let before = slo_reconciles(&release, &client).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let per_second = (slo_reconciles(&release, &client).await.unwrap() - before) / 10.0;
    println!("SLO reconciles per second with a 1s status interval: {per_second:.1}");
    assert!(
        (0.5..=2.0).contains(&per_second),
        "{per_second} reconciles per second: the status must refresh about once a second, without feedback"
    );

    // A restarted operator writes only the rule that changed while it was down (edited by hand
    // here), having listed the rules there are once instead of reading each.
    let other = "search";
    let mut other_slo = slo.clone();
    other_slo.metadata.name = Some(other.into());
    other_slo.spec.service = other.into();
    slos.patch(other, &params, &Patch::Apply(&other_slo))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the second SLO's PrometheusRule",
        || async { rules.get_opt(&prometheus_rule_name(other)).await.ok()? },
    )
    .await
    .unwrap();
    rules
        .patch(
            &prometheus_rule_name(name),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"groups": []}})),
        )
        .await
        .unwrap();
    let writes_before = prometheus_rule_writes(&client).await;
    let old_pods: Vec<String> = release
        .pods(&client)
        .await
        .unwrap()
        .iter()
        .map(|p| p.name_any())
        .collect();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for pod in &old_pods {
        pods.delete(pod, &DeleteParams::default()).await.unwrap();
    }
    let restarted = std::time::Instant::now();
    eventually(
        Duration::from_secs(120),
        "the hand-edited PrometheusRule restored by the restarted operator",
        || async {
            let rule = rules.get(&prometheus_rule_name(name)).await.ok()?;
            (rule.data["spec"]["groups"] == groups).then_some(())
        },
    )
    .await
    .unwrap();
    println!(
        "hand-edited rule restored {:.1}s after the operator pod was deleted",
        restarted.elapsed().as_secs_f64()
    );
    eventually(
        Duration::from_secs(60),
        "the old pod gone and the new one past its first reconcile of both SLOs",
        || async {
            let current = release.pods(&client).await.ok()?;
            let old_gone = current.iter().all(|p| !old_pods.contains(&p.name_any()));
            (old_gone && slo_reconciles(&release, &client).await.ok()? >= 4.0).then_some(())
        },
    )
    .await
    .unwrap();
    let writes = prometheus_rule_writes(&client).await - writes_before;
    assert_eq!(
        writes, 1.0,
        "after a restart only the rule edited meanwhile is written, not the current one"
    );

    // Recovery: once the page's short windows fall below its factors, the page resolves.
    // (Prometheus holds only this test's minutes, so every window is that short.)
    exporter.set_error_ratio(0.0);
    let recovered = std::time::Instant::now();
    eventually(
        Duration::from_secs(300),
        "the page alert to resolve",
        || async {
            let status = slos.get(name).await.ok()?.status?;
            let paging = status.firing.as_deref().is_some_and(|f| f.contains("page"));
            let resolved_in_prometheus = prometheus.query(page).await.ok()?.is_empty();
            (!paging && resolved_in_prometheus).then_some(())
        },
    )
    .await
    .unwrap();
    println!(
        "page resolved {:.1}s after recovery",
        recovered.elapsed().as_secs_f64()
    );

    // A bad selector: a Condition naming the field and column; the last good rules stay.
    let mut bad = slo.clone();
    bad.spec.indicator.ratio.as_mut().unwrap().errors =
        Some(r#"http_requests_total{code=="5xx"}"#.into());
    slos.patch(name, &params, &Patch::Apply(&bad))
        .await
        .unwrap();
    let message = wait_for_condition(&slos, name, "Ready", "InvalidQuery").await;
    println!("bad selector: Ready=False InvalidQuery: {message}");
    assert!(
        message.starts_with("spec.indicator.ratio.errors: column 26: "),
        "{message}"
    );
    let kept = rules.get(&prometheus_rule_name(name)).await.unwrap();
    assert_eq!(
        kept.data["spec"]["groups"], groups,
        "the last valid rules stay in place"
    );

    // Deleting the SLO takes its outputs with it (garbage collection through ownerReferences).
    slos.delete(name, &DeleteParams::default()).await.unwrap();
    eventually(
        Duration::from_secs(60),
        "PrometheusRule and dashboard deleted",
        || async {
            let rule_gone = rules
                .get_opt(&prometheus_rule_name(name))
                .await
                .ok()?
                .is_none();
            let dashboard_gone = config_maps
                .get_opt(&dashboard_name(name))
                .await
                .ok()?
                .is_none();
            (rule_gone && dashboard_gone).then_some(())
        },
    )
    .await
    .unwrap();
}
