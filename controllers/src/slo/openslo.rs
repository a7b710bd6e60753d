//! `bulwark slo import`: OpenSLO v1 `SLO` documents (with their `SLI` documents for
//! `indicatorRef`) to ServiceLevelObjectives.
//!
//! Every field is either converted or named as unsupported: the conversion consumes the fields
//! it understands from the document and reports whatever is left, so nothing is dropped quietly.

use std::collections::BTreeMap;

use bulwark_crds::slo::{
    Alerting, Indicator, RatioIndicator, ServiceLevelObjective, ServiceLevelObjectiveSpec,
};
use kube::api::ObjectMeta;
use serde_json::{Map, Value};

use super::promql::vector_selector;
use super::rules::period_days;

/// Annotation keeping an OpenSLO `displayName`.
pub const DISPLAY_NAME_ANNOTATION: &str = "bulwark.dev/display-name";

/// Converts every `SLO` in `documents`; on any problem, returns all of them, one line each.
pub fn import(documents: &[Value]) -> Result<Vec<ServiceLevelObjective>, Vec<String>> {
    let indicators: BTreeMap<&str, &Value> = documents
        .iter()
        .filter(|d| d["kind"] == "SLI")
        .filter_map(|d| Some((d["metadata"]["name"].as_str()?, d)))
        .collect();
    let mut problems = Vec::new();
    let mut converted = Vec::new();
    for (index, document) in documents.iter().enumerate() {
        let label = format!(
            "document {} ({} {})",
            index + 1,
            document["kind"].as_str().unwrap_or("?"),
            document["metadata"]["name"].as_str().unwrap_or("?")
        );
        if document["apiVersion"] != "openslo/v1" {
            problems.push(format!(
                "{label}: apiVersion {} is not supported; expected openslo/v1",
                document["apiVersion"]
            ));
            continue;
        }
        match document["kind"].as_str() {
            Some("SLO") => {}
            // Used through indicatorRef.
            Some("SLI") => continue,
            other => {
                problems.push(format!(
                    "{label}: kind {} is not supported; only SLO (and SLI through indicatorRef) convert",
                    other.unwrap_or("(none)")
                ));
                continue;
            }
        }
        let mut reader = Reader {
            document: document.clone(),
            problems: Vec::new(),
        };
        let slo = convert(&mut reader, &indicators);
        reader.report_leftovers();
        if reader.problems.is_empty()
            && let Some(slo) = slo
        {
            converted.push(slo);
        }
        problems.extend(reader.problems.into_iter().map(|p| format!("{label}: {p}")));
    }
    if problems.is_empty() {
        Ok(converted)
    } else {
        Err(problems)
    }
}

/// A document being consumed: `take` removes a field, so whatever remains was not understood.
struct Reader {
    document: Value,
    problems: Vec<String>,
}

impl Reader {
    fn take(&mut self, path: &str) -> Option<Value> {
        let (parent, last) = match path.rsplit_once('.') {
            Some((parent, last)) => (pointer(parent), last),
            None => (String::new(), path),
        };
        let value = self
            .document
            .pointer_mut(&parent)?
            .as_object_mut()?
            .remove(last)?;
        Some(value)
    }

    fn take_str(&mut self, path: &str) -> Option<String> {
        match self.take(path) {
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                self.problem(path, format!("must be a string, got {other}"));
                None
            }
            None => None,
        }
    }

    fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(format!("{path}: {}", message.into()));
    }

    fn unsupported(&mut self, path: &str, why: &str) {
        if self.take(path).is_some() {
            self.problem(path, format!("not supported: {why}"));
        }
    }

    /// Every field nobody took, by path.
    fn report_leftovers(&mut self) {
        let mut leftovers = Vec::new();
        collect_leaves("", &self.document, &mut leftovers);
        for path in leftovers {
            self.problem(&path, "not supported by Bulwark's ServiceLevelObjective");
        }
    }
}

fn pointer(path: &str) -> String {
    path.split('.').map(|p| format!("/{p}")).collect()
}

fn collect_leaves(prefix: &str, value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                collect_leaves(&path, child, out);
            }
        }
        Value::Object(_) | Value::Null => {}
        _ => out.push(prefix.to_string()),
    }
}

fn convert(
    reader: &mut Reader,
    indicators: &BTreeMap<&str, &Value>,
) -> Option<ServiceLevelObjective> {
    reader.take("apiVersion");
    reader.take("kind");
    let name = reader.take_str("metadata.name");
    let namespace = reader.take_str("metadata.namespace");
    let display_name = reader.take_str("metadata.displayName");
    let labels = string_map(reader, "metadata.labels");
    let mut annotations = string_map(reader, "metadata.annotations").unwrap_or_default();
    if let Some(display_name) = display_name {
        annotations.insert(DISPLAY_NAME_ANNOTATION.into(), display_name);
    }
    let description = reader.take_str("spec.description");
    let service = reader.take_str("spec.service");
    if service.is_none() {
        reader.problem("spec.service", "required");
    }
    let period = period(reader);
    match reader.take_str("spec.budgetingMethod").as_deref() {
        None | Some("Occurrences") => {}
        Some(other) => reader.problem(
            "spec.budgetingMethod",
            format!("{other} is not supported; Bulwark counts Occurrences"),
        ),
    }
    let objective = objective(reader);
    let indicator = indicator(reader, indicators);
    reader.unsupported(
        "spec.alertPolicies",
        "Bulwark derives page and ticket burn-rate alerts from the objective; set spec.alerting instead",
    );
    Some(ServiceLevelObjective {
        metadata: ObjectMeta {
            name: Some(name?),
            namespace,
            labels,
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..ObjectMeta::default()
        },
        spec: ServiceLevelObjectiveSpec {
            service: service?,
            description,
            objective: objective?,
            period: period?,
            indicator: indicator?,
            alerting: Alerting::default(),
        },
        status: None,
    })
}

fn string_map(reader: &mut Reader, path: &str) -> Option<BTreeMap<String, String>> {
    let map = match reader.take(path)? {
        Value::Object(map) => map,
        other => {
            reader.problem(path, format!("must be a map, got {other}"));
            return None;
        }
    };
    Some(
        map.into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect(),
    )
}

fn period(reader: &mut Reader) -> Option<String> {
    let path = "spec.timeWindow";
    let Some(Value::Array(mut windows)) = reader.take(path) else {
        reader.problem(
            path,
            "required: one rolling window such as {duration: 30d, isRolling: true}",
        );
        return None;
    };
    if windows.len() != 1 {
        reader.problem(
            path,
            format!("exactly one window is supported, got {}", windows.len()),
        );
        return None;
    }
    let Value::Object(mut window) = windows.remove(0) else {
        reader.problem(path, "must hold objects");
        return None;
    };
    if window.remove("isRolling") != Some(Value::Bool(true)) {
        reader.problem(
            &format!("{path}[0].isRolling"),
            "calendar windows are not supported; Bulwark's periods roll",
        );
    }
    if window.remove("calendar").is_some() {
        reader.problem(
            &format!("{path}[0].calendar"),
            "not supported: periods roll",
        );
    }
    let duration = window
        .remove("duration")
        .and_then(|d| d.as_str().map(String::from));
    report_rest(reader, &format!("{path}[0]"), window);
    let duration = duration.or_else(|| {
        reader.problem(&format!("{path}[0].duration"), "required");
        None
    })?;
    match period_of(&duration) {
        Some(period) => Some(period),
        None => {
            reader.problem(
                &format!("{path}[0].duration"),
                format!(
                    "{duration} is not supported; periods are whole days or weeks from 7d to 90d"
                ),
            );
            None
        }
    }
}

/// An OpenSLO rolling duration (a number and one unit of m, h, d, w, M, Q, Y) as a Bulwark
/// period, when it is whole days or weeks within the supported range. Untrusted input: any
/// string, however long or wherever its multi-byte characters fall.
fn period_of(duration: &str) -> Option<String> {
    let unit = duration.chars().last()?;
    let number: u32 = duration[..duration.len() - unit.len_utf8()].parse().ok()?;
    let days = match unit {
        'd' => number,
        'w' => number.checked_mul(7)?,
        _ => return None,
    };
    Some(format!("{days}d")).filter(|p| period_days(p).is_some())
}

fn objective(reader: &mut Reader) -> Option<f64> {
    let path = "spec.objectives";
    let Some(Value::Array(mut objectives)) = reader.take(path) else {
        reader.problem(path, "required: one objective with a target");
        return None;
    };
    if objectives.len() != 1 {
        reader.problem(
            path,
            format!(
                "exactly one objective is supported, got {}",
                objectives.len()
            ),
        );
        return None;
    }
    let Value::Object(mut objective) = objectives.remove(0) else {
        reader.problem(path, "must hold objects");
        return None;
    };
    objective.remove("displayName");
    let target = objective.remove("target").and_then(|t| t.as_f64());
    let percent = objective.remove("targetPercent").and_then(|t| t.as_f64());
    report_rest(reader, &format!("{path}[0]"), objective);
    let percent = match (target, percent) {
        (Some(target), _) => target * 100.0,
        (None, Some(percent)) => percent,
        (None, None) => {
            reader.problem(&format!("{path}[0].target"), "required, for example 0.999");
            return None;
        }
    };
    if !(percent > 0.0 && percent < 100.0) {
        reader.problem(
            &format!("{path}[0].target"),
            format!("{percent}% is not strictly between 0 and 100%"),
        );
        return None;
    }
    // 0.999 × 100 is 99.9 plus float noise; objectives have few digits.
    Some((percent * 1e9).round() / 1e9)
}

fn indicator(reader: &mut Reader, indicators: &BTreeMap<&str, &Value>) -> Option<Indicator> {
    let (path, mut spec) = if let Some(name) = reader.take_str("spec.indicatorRef") {
        let Some(sli) = indicators.get(name.as_str()) else {
            reader.problem(
                "spec.indicatorRef",
                format!("no SLI document named {name} in the input"),
            );
            return None;
        };
        ("SLI.spec".to_string(), sli["spec"].clone())
    } else if let Some(mut inline) = reader.take("spec.indicator") {
        if let Some(map) = inline.as_object_mut() {
            map.remove("metadata");
        }
        let spec = inline
            .get_mut("spec")
            .map(Value::take)
            .unwrap_or(Value::Null);
        if let Value::Object(rest) = inline {
            report_rest(
                reader,
                "spec.indicator",
                rest.into_iter().filter(|(k, _)| k != "spec").collect(),
            );
        }
        ("spec.indicator.spec".to_string(), spec)
    } else {
        reader.problem("spec.indicator", "required (or indicatorRef)");
        return None;
    };
    spec.as_object_mut()?.remove("description");
    if spec.get("thresholdMetric").is_some() {
        reader.problem(
            &format!("{path}.thresholdMetric"),
            "not supported: Bulwark's indicators are event ratios or latency histograms",
        );
        return None;
    }
    let Some(Value::Object(mut ratio)) = spec.as_object_mut()?.remove("ratioMetric") else {
        reader.problem(&format!("{path}.ratioMetric"), "required");
        return None;
    };
    let ratio_path = format!("{path}.ratioMetric");
    if ratio.remove("counter") != Some(Value::Bool(true)) {
        reader.problem(
            &format!("{ratio_path}.counter"),
            "must be true: Bulwark takes rate() of counters",
        );
    }
    let mut query = |field: &str, reader: &mut Reader| -> Option<String> {
        let source = ratio.remove(field)?;
        let field_path = format!("{ratio_path}.{field}.metricSource");
        let kind = source["metricSource"]["type"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        if kind != "prometheus" {
            reader.problem(
                &format!("{field_path}.type"),
                format!("{kind:?} is not supported; only Prometheus"),
            );
            return None;
        }
        let text = source["metricSource"]["spec"]["query"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match vector_selector(&format!("{field_path}.spec.query"), &text) {
            Ok(_) => Some(text),
            Err(e) => {
                reader.problems.push(e.to_string());
                None
            }
        }
    };
    let good = query("good", reader);
    let errors = query("bad", reader);
    let total = query("total", reader);
    report_rest(reader, &ratio_path, ratio);
    report_rest(reader, &path, spec.as_object().cloned().unwrap_or_default());
    if good.is_some() == errors.is_some() {
        reader.problem(&ratio_path, "set exactly one of good or bad");
        return None;
    }
    Some(Indicator {
        ratio: Some(RatioIndicator {
            errors,
            good,
            total: total?,
        }),
        latency: None,
    })
}

/// Names every field of `rest` (already removed from the document) as unsupported.
fn report_rest(reader: &mut Reader, path: &str, rest: Map<String, Value>) {
    let mut leftovers = Vec::new();
    collect_leaves(path, &Value::Object(rest), &mut leftovers);
    for leftover in leftovers {
        reader.problem(
            &leftover,
            "not supported by Bulwark's ServiceLevelObjective",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn openslo(extra: Value) -> Value {
        let mut slo = json!({
            "apiVersion": "openslo/v1",
            "kind": "SLO",
            "metadata": {"name": "checkout-availability", "displayName": "Checkout availability"},
            "spec": {
                "service": "checkout",
                "description": "Checkout answers",
                "budgetingMethod": "Occurrences",
                "timeWindow": [{"duration": "4w", "isRolling": true}],
                "objectives": [{"displayName": "good", "target": 0.999}],
                "indicator": {
                    "metadata": {"name": "checkout-errors"},
                    "spec": {"ratioMetric": {
                        "counter": true,
                        "bad": {"metricSource": {"type": "Prometheus", "spec": {"query": "http_requests_total{job=\"checkout\",code=~\"5..\"}"}}},
                        "total": {"metricSource": {"type": "Prometheus", "spec": {"query": "http_requests_total{job=\"checkout\"}"}}}
                    }}
                }
            }
        });
        if let (Value::Object(spec), Value::Object(extra)) = (&mut slo["spec"], extra) {
            spec.extend(extra);
        }
        slo
    }

    #[test]
    fn durations_with_multibyte_units_or_huge_counts_are_refused_not_panics() {
        for duration in [
            "30日",
            "日",
            "",
            "d",
            "99999999999w",
            "613566757w",
            "4294967295d",
            "-1d",
        ] {
            assert_eq!(period_of(duration), None, "{duration:?}");
        }
        assert_eq!(period_of("4w").as_deref(), Some("28d"));
        assert_eq!(period_of("30d").as_deref(), Some("30d"));
        let documents = [openslo(
            json!({"timeWindow": [{"duration": "30日", "isRolling": true}]}),
        )];
        let problems = import(&documents).unwrap_err();
        assert!(problems.iter().any(|p| p.contains("30日")), "{problems:?}");
    }

    /// OpenSLO files are user input. Raw bytes as JSON documents, and every string field of a
    /// valid document replaced by fuzzed text: imported or refused with problems, never a panic.
    #[test]
    fn fuzz_openslo_documents() {
        bolero::check!().for_each(|bytes: &[u8]| {
            if let Ok(documents) = serde_json::from_slice::<Vec<Value>>(bytes) {
                let _ = import(&documents);
            }
            let Ok(text) = std::str::from_utf8(bytes) else {
                return;
            };
            for field in [
                "/spec/timeWindow/0/duration",
                "/spec/service",
                "/spec/budgetingMethod",
                "/metadata/name",
                "/spec/indicator/spec/ratioMetric/bad/metricSource/spec/query",
                "/spec/indicator/spec/ratioMetric/total/metricSource/type",
            ] {
                let mut document = openslo(json!({}));
                *document.pointer_mut(field).unwrap() = Value::String(text.to_owned());
                let _ = import(&[document]);
            }
            let mut document = openslo(json!({}));
            document["spec"]["objectives"][0]["target"] = json!(text.len() as f64 / 7.0 - 3.0);
            let _ = import(&[document]);
        });
    }

    #[test]
    fn a_rolling_ratio_slo_converts_field_by_field() {
        let slos = import(&[openslo(json!({}))]).unwrap();
        let slo = &slos[0];
        assert_eq!(slo.metadata.name.as_deref(), Some("checkout-availability"));
        assert_eq!(slo.spec.service, "checkout");
        assert_eq!(slo.spec.objective, 99.9);
        assert_eq!(slo.spec.period, "28d");
        let ratio = slo.spec.indicator.ratio.as_ref().unwrap();
        assert_eq!(
            ratio.errors.as_deref(),
            Some("http_requests_total{job=\"checkout\",code=~\"5..\"}")
        );
        assert_eq!(ratio.total, "http_requests_total{job=\"checkout\"}");
        assert_eq!(
            slo.metadata.annotations.as_ref().unwrap()[DISPLAY_NAME_ANNOTATION],
            "Checkout availability"
        );
    }

    #[test]
    fn indicator_refs_resolve_to_sli_documents() {
        let mut slo = openslo(json!({"indicatorRef": "checkout-errors"}));
        let sli = json!({
            "apiVersion": "openslo/v1", "kind": "SLI", "metadata": {"name": "checkout-errors"},
            "spec": slo["spec"]["indicator"]["spec"].take()
        });
        slo["spec"].as_object_mut().unwrap().remove("indicator");
        let slos = import(&[sli, slo]).unwrap();
        assert_eq!(slos.len(), 1);
        assert!(
            slos[0]
                .spec
                .indicator
                .ratio
                .as_ref()
                .unwrap()
                .errors
                .is_some()
        );
    }

    #[test]
    fn every_unsupported_field_is_named() {
        let problems = import(&[openslo(json!({
            "alertPolicies": [{"kind": "AlertPolicy"}],
            "budgetingMethod": "Timeslices",
            "timeWindow": [{"duration": "1M", "isRolling": false}],
            "surprise": {"nested": 1}
        }))])
        .unwrap_err();
        let all = problems.join("\n");
        for wanted in [
            "document 1 (SLO checkout-availability): spec.alertPolicies: not supported",
            "spec.budgetingMethod: Timeslices is not supported",
            "spec.timeWindow[0].isRolling: calendar windows are not supported",
            "spec.timeWindow[0].duration: 1M is not supported",
            "spec.surprise.nested: not supported",
        ] {
            assert!(all.contains(wanted), "{wanted:?} missing from:\n{all}");
        }
    }

    #[test]
    fn queries_must_be_plain_selectors() {
        let mut slo = openslo(json!({}));
        slo["spec"]["indicator"]["spec"]["ratioMetric"]["bad"]["metricSource"]["spec"]["query"] =
            json!("sum(rate(http_requests_total{code=~\"5..\"}[5m]))");
        let problems = import(&[slo]).unwrap_err().join("\n");
        assert!(
            problems.contains("spec.indicator.spec.ratioMetric.bad.metricSource.spec.query: column 1: must be a plain vector selector"),
            "{problems}"
        );
    }
}
