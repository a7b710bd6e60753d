//! SLO burn-rate alerting: `ServiceLevelObjective` → PrometheusRule + Grafana dashboard, and live
//! burn rates in status.

pub mod controller;
pub mod dashboard;
pub mod openslo;
pub mod promql;
pub mod rules;
pub mod status;

use std::collections::BTreeMap;

use bulwark_crds::slo::ServiceLevelObjective;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject};
use kube::{Resource, ResourceExt};

use promql::QueryError;
use rules::{CompiledSlo, RuleGroup};

/// The Prometheus Operator's rule kind, which Bulwark writes but does not serve.
pub fn prometheus_rule_resource() -> ApiResource {
    ApiResource {
        group: "monitoring.coreos.com".into(),
        version: "v1".into(),
        api_version: "monitoring.coreos.com/v1".into(),
        kind: "PrometheusRule".into(),
        plural: "prometheusrules".into(),
    }
}

/// Label Grafana's dashboard sidecar discovers ConfigMaps by.
pub const GRAFANA_DASHBOARD_LABEL: &str = "grafana_dashboard";
/// Label naming the SLO an output belongs to.
pub const SLO_LABEL: &str = "bulwark.dev/slo";

/// What an SLO renders to.
pub struct Outputs {
    pub compiled: CompiledSlo,
    pub rule_group: RuleGroup,
    pub prometheus_rule: DynamicObject,
    pub dashboard: ConfigMap,
}

pub fn prometheus_rule_name(slo: &str) -> String {
    format!("{slo}-slo")
}

pub fn dashboard_name(slo: &str) -> String {
    format!("{slo}-slo-dashboard")
}

/// Renders `slo`; its objects are owned by it when it has a uid (it was read from a cluster).
/// `default_namespace` stands in when the manifest names none.
pub fn render(slo: &ServiceLevelObjective, default_namespace: &str) -> Result<Outputs, QueryError> {
    let namespace = slo
        .namespace()
        .unwrap_or_else(|| default_namespace.to_string());
    let name = slo.name_any();
    let compiled = rules::compile(&namespace, &name, &slo.spec)?;
    let metadata = |object_name: String, extra_labels: &[(&str, &str)]| {
        let mut labels = BTreeMap::from([
            (
                "app.kubernetes.io/managed-by".to_string(),
                "bulwark".to_string(),
            ),
            (SLO_LABEL.to_string(), label_value(&name)),
        ]);
        labels.extend(
            extra_labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        ObjectMeta {
            name: Some(object_name),
            namespace: Some(namespace.clone()),
            labels: Some(labels),
            owner_references: slo.controller_owner_ref(&()).map(|owner| vec![owner]),
            ..ObjectMeta::default()
        }
    };
    let mut prometheus_rule =
        DynamicObject::new(&prometheus_rule_name(&name), &prometheus_rule_resource());
    prometheus_rule.metadata = metadata(prometheus_rule_name(&name), &[]);
    let rule_group = compiled.rule_group();
    prometheus_rule.data = serde_json::json!({ "spec": { "groups": [rule_group] } });
    let board = dashboard::dashboard(&compiled);
    let dashboard = ConfigMap {
        metadata: metadata(dashboard_name(&name), &[(GRAFANA_DASHBOARD_LABEL, "1")]),
        data: Some(BTreeMap::from([(
            format!("{namespace}-{name}-slo.json"),
            serde_json::to_string_pretty(&board).expect("JSON values serialise"),
        )])),
        ..ConfigMap::default()
    };
    Ok(Outputs {
        compiled,
        rule_group,
        prometheus_rule,
        dashboard,
    })
}

/// Object names reach 253 characters; label values stop at 63.
fn label_value(name: &str) -> String {
    name.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_string()
}
