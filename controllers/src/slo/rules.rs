//! Multiwindow multi-burn-rate rules (the SRE workbook's alerting on SLOs, chapter 5).
//!
//! A tier fires when both a long and a short window burn the budget faster than a factor. The
//! factors come from budget fractions, so they scale with the period: paging at "2% of the budget
//! in 1h" is a 14.4× burn for 30 days and 43.2× for 90.
//!
//! Cost: two recording rules per SLO, the 5-minute rates of errors and of all events, summed
//! over every matching series. Every longer window is an `avg_over_time` of those two recorded
//! series, so no rule ever scans days of raw samples; Sloth-style rules record one ratio per
//! window (seven `rate()`s over raw series reaching back three days).

use std::collections::BTreeMap;

use bulwark_crds::slo::{Alerting, ServiceLevelObjectiveSpec};
use serde::{Deserialize, Serialize};

use super::promql::{QueryError, vector_selector};

/// A burn-rate window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub name: &'static str,
    pub minutes: u32,
}

const fn window(name: &'static str, minutes: u32) -> Window {
    Window { name, minutes }
}

pub const RATE_WINDOW: Window = window("5m", 5);
/// Every window a tier reads, shortest first: the windows of the status and the dashboard.
pub const WINDOWS: [Window; 7] = [
    RATE_WINDOW,
    window("30m", 30),
    window("1h", 60),
    window("2h", 120),
    window("6h", 360),
    window("1d", 1440),
    window("3d", 4320),
];

/// "`budget_percent` of the period's budget spent within `long`", confirmed by `short` (which
/// also makes the alert resolve soon after the burn stops).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BurnCondition {
    pub budget_percent: u32,
    pub long: Window,
    pub short: Window,
}

impl BurnCondition {
    /// The burn rate that spends `budget_percent` of a `period_days` budget within `long`.
    /// Never below 1: a burn at or below 1× does not exhaust the budget within the period,
    /// so it is not worth an alert (short periods would otherwise ticket on it).
    pub fn factor(&self, period_days: u32) -> f64 {
        let period_minutes = f64::from(period_days * 24 * 60);
        (f64::from(self.budget_percent) / 100.0 * period_minutes / f64::from(self.long.minutes))
            .max(1.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    Page,
    Ticket,
}

impl Tier {
    pub const ALL: [Tier; 2] = [Tier::Page, Tier::Ticket];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Page => "page",
            Tier::Ticket => "ticket",
        }
    }

    pub fn conditions(self) -> [BurnCondition; 2] {
        let c = |budget_percent, long: usize, short: usize| BurnCondition {
            budget_percent,
            long: WINDOWS[long],
            short: WINDOWS[short],
        };
        match self {
            // 2% in 1h (5m), 5% in 6h (30m).
            Tier::Page => [c(2, 2, 0), c(5, 4, 1)],
            // 10% in 1d (2h), 10% in 3d (6h).
            Tier::Ticket => [c(10, 5, 3), c(10, 6, 4)],
        }
    }
}

/// Recorded 5-minute rate of bad events, per SLO.
pub const ERRORS_RATE: &str = "bulwark_slo:errors:rate5m";
/// Recorded 5-minute rate of all events, per SLO.
pub const EVENTS_RATE: &str = "bulwark_slo:events:rate5m";
/// Name of every burn-rate alert; the `tier` label says page or ticket.
pub const ALERT_NAME: &str = "ErrorBudgetBurn";

/// An SLO whose selectors parsed, ready to render.
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledSlo {
    pub namespace: String,
    pub name: String,
    pub service: String,
    pub objective: f64,
    pub period_days: u32,
    /// `sum(rate(...[5m]))` of bad events.
    pub errors_rate: String,
    /// `sum(rate(...[5m]))` of all events.
    pub events_rate: String,
    pub alerting: Alerting,
}

/// Validates the SLO's PromQL and builds the rate expressions its rules record.
pub fn compile(
    namespace: &str,
    name: &str,
    spec: &ServiceLevelObjectiveSpec,
) -> Result<CompiledSlo, QueryError> {
    // The CRD's CEL rules say the same; offline rendering has no API server to apply them.
    if !(spec.objective > 0.0 && spec.objective < 100.0) {
        return Err(QueryError {
            field: "spec.objective".into(),
            column: 1,
            message: format!(
                "{} is not a percentage strictly between 0 and 100",
                spec.objective
            ),
        });
    }
    let rate = |selector: String| format!("sum(rate({selector}[{}]))", RATE_WINDOW.name);
    let (errors_rate, events_rate) = match (&spec.indicator.ratio, &spec.indicator.latency) {
        (Some(ratio), _) => {
            let total =
                rate(vector_selector("spec.indicator.ratio.total", &ratio.total)?.render("", None));
            // A counter of failures often does not exist until the first failure: count none.
            let or_none = |counted: String| format!("({counted} or 0 * {total})");
            let errors = match (&ratio.errors, &ratio.good) {
                (Some(errors), _) => {
                    let errors = vector_selector("spec.indicator.ratio.errors", errors)?;
                    or_none(rate(errors.render("", None)))
                }
                (None, Some(good)) => {
                    let good = vector_selector("spec.indicator.ratio.good", good)?;
                    format!("{total} - {}", or_none(rate(good.render("", None))))
                }
                (None, None) => return Err(missing("spec.indicator.ratio", "errors or good")),
            };
            (errors, total)
        }
        (None, Some(latency)) => {
            let histogram =
                vector_selector("spec.indicator.latency.histogram", &latency.histogram)?;
            if histogram.matchers.contains("le=") || histogram.matchers.contains("le!") {
                return Err(QueryError {
                    field: "spec.indicator.latency.histogram".into(),
                    column: latency.histogram.find("le").map_or(1, |i| i + 1),
                    message: "leave out the le matcher; threshold picks the bucket".into(),
                });
            }
            let total = rate(histogram.render("_count", None));
            let fast =
                rate(histogram.render("_bucket", Some(&format!("le=\"{}\"", latency.threshold))));
            (format!("{total} - {fast}"), total)
        }
        (None, None) => return Err(missing("spec.indicator", "ratio or latency")),
    };
    Ok(CompiledSlo {
        namespace: namespace.to_string(),
        name: name.to_string(),
        service: spec.service.clone(),
        objective: spec.objective,
        period_days: period_days(&spec.period).ok_or_else(|| QueryError {
            field: "spec.period".into(),
            column: 1,
            message: format!("`{}` is not whole days from 7d to 90d", spec.period),
        })?,
        errors_rate,
        events_rate,
        alerting: spec.alerting.clone(),
    })
}

fn missing(field: &str, what: &str) -> QueryError {
    QueryError {
        field: field.into(),
        column: 1,
        message: format!("set {what}"),
    }
}

/// `30d` → 30, within the 7–90 days the CRD allows.
pub fn period_days(period: &str) -> Option<u32> {
    let days: u32 = period.strip_suffix('d')?.parse().ok()?;
    (7..=90).contains(&days).then_some(days)
}

/// A Prometheus rule group, as in a rules file and in a PrometheusRule's `spec.groups`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RuleGroup {
    pub name: String,
    pub rules: Vec<Rule>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
    pub expr: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A number as PromQL text: at most 12 decimals, no float noise (`0.0144`, not
/// `0.014400000000000001`).
pub fn number(value: f64) -> String {
    let text = format!("{value:.12}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text.is_empty() || text == "-" {
        "0".into()
    } else {
        text.into()
    }
}

/// PromQL for the error ratio over `minutes` of the SLOs whose recorded series `selector`
/// matches (every SLO when it is empty), one series per SLO. Longer windows average the
/// recorded 5-minute rates over `minutes − 5`: each rate already covers the 5 minutes before
/// its sample, so the average spans exactly `minutes`, like `rate(x[minutes])` over raw series.
pub fn error_ratio(selector: &str, minutes: u32) -> String {
    let matching = |series: &str| match selector {
        "" => series.to_string(),
        _ => format!("{series}{{{selector}}}"),
    };
    let (errors, events) = (matching(ERRORS_RATE), matching(EVENTS_RATE));
    if minutes <= RATE_WINDOW.minutes {
        return format!("({errors} / {events})");
    }
    let span = minutes - RATE_WINDOW.minutes;
    format!("(avg_over_time({errors}[{span}m]) / avg_over_time({events}[{span}m]))")
}

impl CompiledSlo {
    /// Fraction of events allowed to fail: 0.001 for 99.9%.
    pub fn error_budget(&self) -> f64 {
        (100.0 - self.objective) / 100.0
    }

    /// Label matchers selecting this SLO's recorded series and alerts.
    pub fn selector(&self) -> String {
        format!(
            "slo_namespace=\"{}\",slo_name=\"{}\"",
            self.namespace, self.name
        )
    }

    /// PromQL for this SLO's error ratio over `minutes` (see [`error_ratio`]).
    pub fn error_ratio(&self, minutes: u32) -> String {
        error_ratio(&self.selector(), minutes)
    }

    /// The error ratio above which `condition` holds.
    pub fn threshold(&self, condition: &BurnCondition) -> f64 {
        condition.factor(self.period_days) * self.error_budget()
    }

    pub fn tier_enabled(&self, tier: Tier) -> bool {
        !match tier {
            Tier::Page => self.alerting.page.disabled,
            Tier::Ticket => self.alerting.ticket.disabled,
        }
    }

    /// The alert expression of `tier`: either of its conditions, each over both its windows.
    pub fn alert_expr(&self, tier: Tier) -> String {
        tier.conditions()
            .iter()
            .map(|condition| {
                let threshold = number(self.threshold(condition));
                format!(
                    "({} > {threshold} and {} > {threshold})",
                    self.error_ratio(condition.long.minutes),
                    self.error_ratio(condition.short.minutes)
                )
            })
            .collect::<Vec<_>>()
            .join(" or ")
    }

    pub fn group_name(&self) -> String {
        format!("bulwark-slo-{}-{}", self.namespace, self.name)
    }

    /// The rule group: the two recording rules, then one alert per enabled tier.
    pub fn rule_group(&self) -> RuleGroup {
        let slo_labels = BTreeMap::from([
            ("slo_namespace".to_string(), self.namespace.clone()),
            ("slo_name".to_string(), self.name.clone()),
        ]);
        let record = |name: &str, expr: &str| Rule {
            record: Some(name.into()),
            alert: None,
            expr: expr.into(),
            labels: slo_labels.clone(),
            annotations: BTreeMap::new(),
        };
        let mut rules = vec![
            record(ERRORS_RATE, &self.errors_rate),
            record(EVENTS_RATE, &self.events_rate),
        ];
        for tier in Tier::ALL.into_iter().filter(|t| self.tier_enabled(*t)) {
            rules.push(self.alert(tier));
        }
        RuleGroup {
            name: self.group_name(),
            rules,
        }
    }

    fn alert(&self, tier: Tier) -> Rule {
        let tier_labels = match tier {
            Tier::Page => &self.alerting.page.labels,
            Tier::Ticket => &self.alerting.ticket.labels,
        };
        let mut labels = self.alerting.labels.clone();
        labels.extend(tier_labels.clone());
        // Also in the expression's result; static, they keep every SLO's rules distinct (promtool
        // lints identical alert rules across groups).
        labels.insert("slo_namespace".into(), self.namespace.clone());
        labels.insert("slo_name".into(), self.name.clone());
        labels.insert("tier".into(), tier.name().into());
        labels.insert("service".into(), self.service.clone());
        let conditions = tier
            .conditions()
            .iter()
            .map(|c| {
                format!(
                    "{}% of the budget in {} ({}× burn)",
                    c.budget_percent,
                    c.long.name,
                    number(c.factor(self.period_days))
                )
            })
            .collect::<Vec<_>>()
            .join(" or ");
        let mut annotations = BTreeMap::from([
            (
                "summary".to_string(),
                format!(
                    "{}: SLO {}/{} is burning its error budget too fast ({})",
                    self.service,
                    self.namespace,
                    self.name,
                    tier.name()
                ),
            ),
            (
                "description".to_string(),
                format!(
                    "Objective {}% over {}d; this tier fires at {conditions}. The SLO's dashboard and status show the burn rate per window.",
                    number(self.objective),
                    self.period_days
                ),
            ),
        ]);
        if let Some(url) = &self.alerting.runbook_url {
            annotations.insert("runbook_url".into(), url.clone());
        }
        Rule {
            record: None,
            alert: Some(ALERT_NAME.into()),
            expr: self.alert_expr(tier),
            labels,
            annotations,
        }
    }

    /// Enabled conditions that can never fire: their threshold error ratio is 1 or more, because
    /// the objective leaves that much budget for the period.
    pub fn warnings(&self) -> Vec<String> {
        Tier::ALL
            .into_iter()
            .filter(|tier| self.tier_enabled(*tier))
            .flat_map(|tier| tier.conditions().map(move |c| (tier, c)))
            .filter(|(_, c)| self.threshold(c) >= 1.0)
            .map(|(tier, c)| {
                format!(
                    "{} condition {}/{} can never fire: it needs an error ratio above {} (objective {}% is too loose for a {}× burn)",
                    tier.name(),
                    c.long.name,
                    c.short.name,
                    number(self.threshold(&c)),
                    number(self.objective),
                    number(c.factor(self.period_days))
                )
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bulwark_crds::slo::{Indicator, LatencyIndicator, RatioIndicator};

    pub fn spec(objective: f64, period: &str) -> ServiceLevelObjectiveSpec {
        ServiceLevelObjectiveSpec {
            service: "api".into(),
            description: None,
            objective,
            period: period.into(),
            indicator: Indicator {
                ratio: Some(RatioIndicator {
                    errors: Some(r#"http_requests_total{job="api",code=~"5.."}"#.into()),
                    good: None,
                    total: r#"http_requests_total{job="api"}"#.into(),
                }),
                latency: None,
            },
            alerting: Alerting::default(),
        }
    }

    fn factors(period_days: u32) -> Vec<String> {
        Tier::ALL
            .iter()
            .flat_map(|t| t.conditions())
            .map(|c| number(c.factor(period_days)))
            .collect()
    }

    #[test]
    fn factors_scale_with_the_period_and_never_drop_below_one() {
        assert_eq!(factors(30), ["14.4", "6", "3", "1"]);
        assert_eq!(factors(28), ["13.44", "5.6", "2.8", "1"]);
        assert_eq!(factors(90), ["43.2", "18", "9", "3"]);
        assert_eq!(factors(7), ["3.36", "1.4", "1", "1"]);
    }

    #[test]
    fn two_recording_rules_serve_every_window() {
        let slo = compile("shop", "checkout", &spec(99.9, "30d")).unwrap();
        let group = slo.rule_group();
        let records: Vec<_> = group
            .rules
            .iter()
            .filter_map(|r| r.record.as_deref())
            .collect();
        assert_eq!(records, [ERRORS_RATE, EVENTS_RATE]);
        assert_eq!(
            group.rules[0].expr,
            r#"(sum(rate(http_requests_total{job="api",code=~"5.."}[5m])) or 0 * sum(rate(http_requests_total{job="api"}[5m])))"#
        );
        let page = &group.rules[2];
        assert_eq!(page.labels["tier"], "page");
        assert_eq!(page.labels["severity"], "page");
        assert!(
            page.expr.contains("[55m]) / avg_over_time"),
            "{}",
            page.expr
        );
        assert!(page.expr.contains(" > 0.0144 and "), "{}", page.expr);
        assert!(page.expr.contains(" > 0.006 and "), "{}", page.expr);
        let ticket = &group.rules[3];
        assert!(ticket.expr.contains("[4315m]"), "{}", ticket.expr);
        assert!(ticket.expr.contains(" > 0.001 and "), "{}", ticket.expr);
        for rule in &group.rules {
            promql_parser::parser::parse(&rule.expr)
                .unwrap_or_else(|e| panic!("{e}: {}", rule.expr));
        }
    }

    #[test]
    fn every_window_spans_its_own_length() {
        let slo = compile("ns", "n", &spec(99.0, "30d")).unwrap();
        assert!(slo.error_ratio(5).starts_with(&format!("({ERRORS_RATE}{{")));
        assert!(slo.error_ratio(60).contains("[55m]"));
        assert!(slo.error_ratio(4320).contains("[4315m]"));
    }

    #[test]
    fn disabled_tiers_and_good_and_latency_indicators() {
        let mut s = spec(99.5, "7d");
        s.alerting.page.disabled = true;
        s.indicator.ratio = Some(RatioIndicator {
            errors: None,
            good: Some(r#"jobs_total{result="ok"}"#.into()),
            total: "jobs_total".into(),
        });
        let group = compile("ns", "n", &s).unwrap().rule_group();
        let alerts: Vec<_> = group.rules.iter().filter(|r| r.alert.is_some()).collect();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].labels["tier"], "ticket");
        assert_eq!(
            group.rules[0].expr,
            r#"sum(rate(jobs_total[5m])) - (sum(rate(jobs_total{result="ok"}[5m])) or 0 * sum(rate(jobs_total[5m])))"#
        );

        s.indicator = Indicator {
            ratio: None,
            latency: Some(LatencyIndicator {
                histogram: r#"http_request_duration_seconds{job="api"}"#.into(),
                threshold: "0.3".into(),
            }),
        };
        let latency = compile("ns", "n", &s).unwrap();
        assert_eq!(
            latency.errors_rate,
            r#"sum(rate(http_request_duration_seconds_count{job="api"}[5m])) - sum(rate(http_request_duration_seconds_bucket{job="api",le="0.3"}[5m]))"#
        );
        assert_eq!(
            latency.events_rate,
            r#"sum(rate(http_request_duration_seconds_count{job="api"}[5m]))"#
        );
    }

    #[test]
    fn bad_selectors_are_reported_with_their_field() {
        let mut s = spec(99.9, "30d");
        s.indicator.ratio.as_mut().unwrap().total = "rate(x[5m])".into();
        let e = compile("ns", "n", &s).unwrap_err();
        assert_eq!(e.field, "spec.indicator.ratio.total");
    }

    #[test]
    fn loose_objectives_warn_about_conditions_that_cannot_fire() {
        assert!(
            compile("ns", "n", &spec(99.9, "30d"))
                .unwrap()
                .warnings()
                .is_empty()
        );
        let loose = compile("ns", "n", &spec(90.0, "30d")).unwrap().warnings();
        assert_eq!(loose.len(), 1, "{loose:?}");
        assert!(
            loose[0].starts_with("page condition 1h/5m can never fire"),
            "{loose:?}"
        );
    }

    #[test]
    fn numbers_carry_no_float_noise() {
        assert_eq!(number(14.4 * ((100.0 - 99.9) / 100.0)), "0.0144");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(1e-6), "0.000001");
    }
}
