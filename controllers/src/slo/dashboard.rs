//! The Grafana dashboard of one SLO, in Grafana's dashboard JSON model (schemaVersion 41):
//! the SLI, the burn rate of each alerting condition's two windows against its threshold,
//! the budget remaining over the period, and the burn-rate alerts' state from `ALERTS`.

use serde_json::{Value, json};

use super::rules::{ALERT_NAME, CompiledSlo, RATE_WINDOW, Tier, number};

const SCHEMA_VERSION: u32 = 41;
const DATASOURCE: &str = "${datasource}";

/// The dashboard's uid: stable per SLO, within Grafana's 40 characters.
pub fn uid(slo: &CompiledSlo) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{}/{}", slo.namespace, slo.name).as_bytes(),
    );
    let hex: String = digest.as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("bulwark-slo-{hex}")
}

fn target(ref_id: &str, expr: String, legend: &str) -> Value {
    json!({
        "refId": ref_id,
        "datasource": {"type": "prometheus", "uid": DATASOURCE},
        "expr": expr,
        "legendFormat": legend,
        "range": true,
    })
}

fn grid(x: u32, y: u32, w: u32, h: u32) -> Value {
    json!({"x": x, "y": y, "w": w, "h": h})
}

fn stat(id: u32, title: &str, expr: String, unit: &str, x: u32, steps: Value) -> Value {
    json!({
        "id": id,
        "type": "stat",
        "title": title,
        "datasource": {"type": "prometheus", "uid": DATASOURCE},
        "gridPos": grid(x, 0, 6, 4),
        "targets": [target("A", expr, "")],
        "options": {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"},
        "fieldConfig": {"defaults": {"unit": unit, "decimals": 3, "thresholds": {"mode": "absolute", "steps": steps}}, "overrides": []},
    })
}

fn timeseries(
    id: u32,
    title: &str,
    description: String,
    targets: Vec<Value>,
    unit: &str,
    position: Value,
    threshold: Option<f64>,
) -> Value {
    let steps = match threshold {
        Some(t) => json!([{"color": "green", "value": null}, {"color": "red", "value": t}]),
        None => json!([{"color": "green", "value": null}]),
    };
    json!({
        "id": id,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": DATASOURCE},
        "gridPos": position,
        "targets": targets,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "custom": {"thresholdsStyle": {"mode": if threshold.is_some() { "line+area" } else { "off" }}},
                "thresholds": {"mode": "absolute", "steps": steps},
            },
            "overrides": [],
        },
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]}},
    })
}

/// Burn rate over `minutes`: the error ratio in units of the error budget.
fn burn_rate(slo: &CompiledSlo, minutes: u32) -> String {
    format!(
        "{} / {}",
        slo.error_ratio(minutes),
        number(slo.error_budget())
    )
}

/// Fraction of the period's budget left: 1 − (error ratio over the period) / budget.
fn budget_remaining(slo: &CompiledSlo) -> String {
    format!(
        "1 - {} / {}",
        slo.error_ratio(slo.period_days * 24 * 60),
        number(slo.error_budget())
    )
}

/// This SLO's burn-rate alerts that are firing (one series per tier).
fn firing_alerts(slo: &CompiledSlo) -> String {
    format!(
        "ALERTS{{alertname=\"{ALERT_NAME}\",alertstate=\"firing\",{}}}",
        slo.selector()
    )
}

pub fn dashboard(slo: &CompiledSlo) -> Value {
    let period = format!("{}d", slo.period_days);
    let mut panels = vec![
        stat(
            1,
            "Objective",
            format!("vector({})", number(slo.objective / 100.0)),
            "percentunit",
            0,
            json!([{"color": "blue", "value": null}]),
        ),
        stat(
            2,
            &format!("SLI ({period})"),
            format!("1 - {}", slo.error_ratio(slo.period_days * 24 * 60)),
            "percentunit",
            6,
            json!([{"color": "red", "value": null}, {"color": "green", "value": slo.objective / 100.0}]),
        ),
        stat(
            3,
            &format!("Error budget remaining ({period})"),
            budget_remaining(slo),
            "percentunit",
            12,
            json!([{"color": "red", "value": null}, {"color": "orange", "value": 0}, {"color": "green", "value": 0.25}]),
        ),
        json!({
            "id": 4,
            "type": "state-timeline",
            "title": "Burn-rate alerts",
            "datasource": {"type": "prometheus", "uid": DATASOURCE},
            "gridPos": grid(18, 0, 6, 4),
            "targets": [target("A", format!("max by (tier) ({})", firing_alerts(slo)), "{{tier}}")],
            "fieldConfig": {"defaults": {"mappings": [{"type": "value", "options": {"1": {"text": "firing", "color": "red"}}}]}, "overrides": []},
            "options": {"showValue": "never"},
        }),
        timeseries(
            5,
            "SLI",
            format!("Share of good events; objective {}%", number(slo.objective)),
            vec![
                target(
                    "A",
                    format!("1 - {}", slo.error_ratio(RATE_WINDOW.minutes)),
                    "5m",
                ),
                target("B", format!("1 - {}", slo.error_ratio(60)), "1h"),
            ],
            "percentunit",
            grid(0, 4, 24, 8),
            Some(slo.objective / 100.0),
        ),
    ];
    let mut id = 6;
    let mut y = 12;
    for tier in Tier::ALL.into_iter().filter(|t| slo.tier_enabled(*t)) {
        for (i, condition) in tier.conditions().iter().enumerate() {
            let factor = condition.factor(slo.period_days);
            panels.push(timeseries(
                id,
                &format!(
                    "Burn rate, {}: {} and {} above {}×",
                    tier.name(),
                    condition.long.name,
                    condition.short.name,
                    number(factor)
                ),
                format!(
                    "Fires when both windows burn faster than {}× ({}% of the {period} budget in {}).",
                    number(factor),
                    condition.budget_percent,
                    condition.long.name
                ),
                [condition.long, condition.short]
                    .iter()
                    .zip(["A", "B"])
                    .map(|(w, r)| target(r, burn_rate(slo, w.minutes), w.name))
                    .collect(),
                "x",
                grid(12 * i as u32, y, 12, 8),
                Some(factor),
            ));
            id += 1;
        }
        y += 8;
    }
    json!({
        "uid": uid(slo),
        "title": format!("SLO {}/{} ({})", slo.namespace, slo.name, slo.service),
        "tags": ["bulwark", "slo", slo.service],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": false,
        "graphTooltip": 1,
        "time": {"from": "now-2d", "to": "now"},
        "refresh": "1m",
        "timezone": "browser",
        "annotations": {"list": []},
        "templating": {"list": [{
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
        }]},
        "panels": panels,
    })
}

/// Every PromQL query of a dashboard, for checks.
pub fn queries(dashboard: &Value) -> Vec<String> {
    dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str().map(String::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slo::rules::{compile, tests::spec};

    #[test]
    fn shows_every_condition_with_its_threshold_and_parses() {
        let slo = compile("shop", "checkout", &spec(99.9, "30d")).unwrap();
        let board = dashboard(&slo);
        assert_eq!(board["schemaVersion"], 41);
        assert!(board["uid"].as_str().unwrap().len() <= 40);
        let titles: Vec<&str> = board["panels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["title"].as_str().unwrap())
            .collect();
        for wanted in [
            "SLI",
            "Error budget remaining (30d)",
            "Burn-rate alerts",
            "Burn rate, page: 1h and 5m above 14.4×",
            "Burn rate, page: 6h and 30m above 6×",
            "Burn rate, ticket: 1d and 2h above 3×",
            "Burn rate, ticket: 3d and 6h above 1×",
        ] {
            assert!(titles.contains(&wanted), "{wanted} missing from {titles:?}");
        }
        let page = board["panels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["title"] == "Burn rate, page: 1h and 5m above 14.4×")
            .unwrap();
        assert_eq!(
            page["fieldConfig"]["defaults"]["thresholds"]["steps"][1]["value"],
            14.4
        );
        let queries = queries(&board);
        assert!(
            queries
                .iter()
                .any(|q| q.contains("ALERTS{alertname=\"ErrorBudgetBurn\""))
        );
        for query in &queries {
            promql_parser::parser::parse(query).unwrap_or_else(|e| panic!("{e}: {query}"));
        }
    }

    #[test]
    fn disabled_tiers_have_no_panels() {
        let mut s = spec(99.9, "30d");
        s.alerting.ticket.disabled = true;
        let board = dashboard(&compile("a", "b", &s).unwrap());
        let titles = board["panels"].to_string();
        assert!(titles.contains("Burn rate, page"));
        assert!(!titles.contains("Burn rate, ticket"));
    }
}
