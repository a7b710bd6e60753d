//! SLO burn-rate alerting API: `ServiceLevelObjective`.
//!
//! An SLO names the events that count (a ratio of error or good events over all events, or a
//! latency histogram and threshold), the objective and its period. The controller turns it into
//! multiwindow multi-burn-rate Prometheus rules and a Grafana dashboard, both owned by the SLO,
//! and reports the live burn rates in status.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Prometheus label names: what alert labels may be called.
const LABEL_NAMES_RULE: &str = "self.all(k, k.matches('^[a-zA-Z_][a-zA-Z0-9_]*$'))";
/// Prometheus expands Go templates (`{{ … }}`) in alert labels and annotations, and a template
/// can run queries (reading other tenants' metrics): user strings that reach them carry none.
const NO_TEMPLATE_VALUES_RULE: &str = "self.all(k, !self[k].contains('{{'))";
const NO_TEMPLATE_VALUES_MESSAGE: &str =
    "alert label values must not contain template syntax ({{ … }}): Prometheus would expand it";
/// Labels Bulwark sets on every alert, which routing and ownership depend on.
const RESERVED_FOR_ALL_RULE: &str =
    "!self.exists(k, k in ['namespace', 'slo_namespace', 'slo_name', 'tier', 'service'])";
const RESERVED_FOR_ALL_MESSAGE: &str =
    "namespace, slo_namespace, slo_name, tier and service are set by Bulwark on every alert";

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bulwark.dev",
    version = "v1alpha1",
    kind = "ServiceLevelObjective",
    namespaced,
    status = "ServiceLevelObjectiveStatus",
    shortname = "slo",
    category = "bulwark",
    printcolumn(name = "Service", type_ = "string", json_path = ".spec.service"),
    printcolumn(name = "Objective", type_ = "number", json_path = ".spec.objective"),
    printcolumn(name = "Period", type_ = "string", json_path = ".spec.period"),
    printcolumn(
        name = "Budget",
        type_ = "number",
        description = "Fraction of the period's error budget left",
        json_path = ".status.errorBudgetRemaining"
    ),
    printcolumn(name = "Firing", type_ = "string", json_path = ".status.firing"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceLevelObjectiveSpec {
    /// The service this objective is about; the `service` label of its alerts.
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("!self.contains('{{')").message("service must not contain template syntax ({{ … }}): Prometheus would expand it in alert labels"))]
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// Target percentage of good events, for example `99.9`.
    #[x_kube(validation = Rule::new("self > 0.0 && self < 100.0").message("objective is a percentage strictly between 0 and 100, for example 99.9"))]
    pub objective: f64,
    /// Rolling window the objective holds over, in days: `7d` to `90d`.
    #[serde(default = "default_period")]
    #[schemars(length(min = 2, max = 3))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{1,2}d$') && int(self.replace('d', '')) >= 7 && int(self.replace('d', '')) <= 90").message("period must be whole days from 7d to 90d, for example 30d"))]
    pub period: String,
    pub indicator: Indicator,
    #[serde(default)]
    pub alerting: Alerting,
}

fn default_period() -> String {
    "30d".into()
}

/// What counts as a bad event. Exactly one indicator is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.ratio) != has(self.latency)").message("set exactly one indicator: ratio or latency"))]
pub struct Indicator {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<RatioIndicator>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyIndicator>,
}

/// Counters of events: errors (or good events) over all events. Each is a PromQL vector
/// selector such as `http_requests_total{job="api",code=~"5.."}`; Bulwark takes their rates.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.errors) != has(self.good)").message("set exactly one of errors or good"))]
pub struct RatioIndicator {
    /// Counter of failed events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub errors: Option<String>,
    /// Counter of successful events (errors are total minus good).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub good: Option<String>,
    /// Counter of all events.
    #[schemars(length(min = 1, max = 1024))]
    pub total: String,
}

/// A Prometheus histogram: events slower than `threshold` are bad.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LatencyIndicator {
    /// The histogram's base name with label matchers, for example
    /// `http_request_duration_seconds{job="api"}`; Bulwark reads its `_bucket` and `_count`.
    #[schemars(length(min = 1, max = 1024))]
    pub histogram: String,
    /// Upper bound of a bucket, written exactly as its `le` label, for example `0.3`.
    #[schemars(
        length(min = 1, max = 32),
        pattern(r"^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$")
    )]
    pub threshold: String,
}

/// Where burn-rate alerts go. Page: 2% of the budget in 1h or 5% in 6h; ticket: 10% in 1d or
/// 10% in 3d (the SRE workbook's tiers, scaled to the period).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Alerting {
    /// Labels on both tiers' alerts, for example `team: payments`. `severity` belongs to the
    /// tiers, and the labels Bulwark sets itself are reserved.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    // Bounded so the API server can bound the CEL rules' cost.
    #[schemars(extend("maxProperties" = 32, "additionalProperties" = {"type": "string", "maxLength": 1024}))]
    #[x_kube(
        validation = Rule::new(LABEL_NAMES_RULE).message("alert label names must match [a-zA-Z_][a-zA-Z0-9_]*"),
        validation = Rule::new(NO_TEMPLATE_VALUES_RULE).message(NO_TEMPLATE_VALUES_MESSAGE),
        validation = Rule::new(RESERVED_FOR_ALL_RULE).message(RESERVED_FOR_ALL_MESSAGE),
        validation = Rule::new("!('severity' in self)").message("severity is set per tier: put it in alerting.page.labels or alerting.ticket.labels"),
    )]
    pub labels: BTreeMap<String, String>,
    /// Linked from every alert as the `runbook_url` annotation.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "runbookURL"
    )]
    #[schemars(length(max = 2048))]
    #[x_kube(
        validation = Rule::new("isURL(self)").message("runbookURL must be an absolute URL"),
        validation = Rule::new("!self.contains('{{')").message("runbookURL must not contain template syntax ({{ … }}): Prometheus would expand it"),
    )]
    pub runbook_url: Option<String>,
    #[serde(default = "AlertTier::page")]
    pub page: AlertTier,
    #[serde(default = "AlertTier::ticket")]
    pub ticket: AlertTier,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AlertTier {
    /// Generate no alert for this tier.
    #[serde(default)]
    pub disabled: bool,
    /// Labels of this tier's alert (default `severity: page` or `severity: ticket`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    // Bounded so the API server can bound the CEL rules' cost.
    #[schemars(extend("maxProperties" = 32, "additionalProperties" = {"type": "string", "maxLength": 1024}))]
    #[x_kube(
        validation = Rule::new(LABEL_NAMES_RULE).message("alert label names must match [a-zA-Z_][a-zA-Z0-9_]*"),
        validation = Rule::new(NO_TEMPLATE_VALUES_RULE).message(NO_TEMPLATE_VALUES_MESSAGE),
        validation = Rule::new(RESERVED_FOR_ALL_RULE).message(RESERVED_FOR_ALL_MESSAGE),
    )]
    pub labels: BTreeMap<String, String>,
}

impl AlertTier {
    fn with_severity(severity: &str) -> Self {
        Self {
            disabled: false,
            labels: BTreeMap::from([("severity".to_string(), severity.to_string())]),
        }
    }
    pub fn page() -> Self {
        Self::with_severity("page")
    }
    pub fn ticket() -> Self {
        Self::with_severity("ticket")
    }
}

impl Default for Alerting {
    fn default() -> Self {
        Self {
            labels: BTreeMap::new(),
            runbook_url: None,
            page: AlertTier::page(),
            ticket: AlertTier::ticket(),
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceLevelObjectiveStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Burn rate per alerting window (1 = spending the budget exactly over the period).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["window"]))]
    pub burn_rates: Vec<WindowBurnRate>,
    /// Fraction of the period's error budget left (negative once overspent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_budget_remaining: Option<f64>,
    /// Alert tiers firing now, for example `page`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firing: Option<String>,
    /// When the numbers above were read from Prometheus. While they stay the same it moves at
    /// most once a minute, so an unchanged SLO does not rewrite its status every interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluated_at: Option<Time>,
    /// Rules in the generated PrometheusRule: recording and alerting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<RuleCount>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WindowBurnRate {
    /// `5m`, `30m`, `1h`, `2h`, `6h`, `1d` or `3d`.
    pub window: String,
    pub burn_rate: f64,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RuleCount {
    pub recording: u32,
    pub alerting: u32,
}
