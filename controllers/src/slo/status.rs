//! Live SLO numbers from the Prometheus HTTP API: the burn rate per window, the budget left over
//! the period and the firing tiers, from the recorded series the rules write and the dashboard
//! reads, asked for all SLOs at once and split by their `slo_namespace`/`slo_name` labels.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::{Duration, Instant};

use bulwark_crds::slo::WindowBurnRate;
use futures::future::try_join_all;
use serde::Deserialize;

use super::rules::{ALERT_NAME, CompiledSlo, EVENTS_RATE, WINDOWS, error_ratio};

#[derive(Clone)]
pub struct Prometheus {
    http: reqwest::Client,
    base: String,
}

/// Why the live numbers could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LiveError {
    #[error("Prometheus at {url} is unreachable: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("Prometheus at {url} refused `{query}`: {detail}")]
    Rejected {
        url: String,
        query: String,
        detail: String,
    },
    #[error("{0}")]
    NoData(String),
}

impl LiveError {
    pub fn reason(&self) -> &'static str {
        match self {
            LiveError::Unreachable { .. } => "PrometheusUnreachable",
            LiveError::Rejected { .. } => "QueryRejected",
            LiveError::NoData(_) => "NoData",
        }
    }
}

/// What status shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Live {
    pub burn_rates: Vec<WindowBurnRate>,
    pub budget_remaining: Option<f64>,
    pub firing: Vec<String>,
}

#[derive(Deserialize)]
struct Response {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    result_type: String,
    result: Vec<Sample>,
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct Sample {
    pub metric: SampleLabels,
    /// `[unix seconds, "value"]`.
    pub value: (f64, String),
}

/// The labels of a sample a status reads; serde skips the others. An all-SLO answer holds a
/// sample per SLO, and a round parses seven at once on the leader every interval: with every
/// label kept, each sample held a map of its own (a B-tree node of about 500 bytes).
#[derive(Deserialize, Debug, Clone, Default, PartialEq)]
pub struct SampleLabels {
    pub slo_namespace: Option<String>,
    pub slo_name: Option<String>,
    /// The alert tier of an `ALERTS` sample.
    pub tier: Option<String>,
}

impl Sample {
    /// The value, when it is a finite number (a window without traffic divides 0 by 0).
    pub fn finite(&self) -> Option<f64> {
        self.value.1.parse::<f64>().ok().filter(|v| v.is_finite())
    }
}

/// The samples of an instant-vector answer, or the error Prometheus gave.
pub fn parse_vector(body: &str) -> Result<Vec<Sample>, String> {
    let response: Response =
        serde_json::from_str(body).map_err(|e| format!("not a Prometheus API answer: {e}"))?;
    match (response.status.as_str(), response.data) {
        ("success", Some(data)) if data.result_type == "vector" => Ok(data.result),
        ("success", Some(data)) => Err(format!("expected a vector, got a {}", data.result_type)),
        _ => Err(response.error.unwrap_or(response.status)),
    }
}

impl Prometheus {
    pub fn new(base: &str, timeout: Duration) -> Result<Self, String> {
        crate::runtime::ensure_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// One instant query.
    pub async fn query(&self, query: &str) -> Result<Vec<Sample>, LiveError> {
        let unreachable = |detail: String| LiveError::Unreachable {
            url: self.base.clone(),
            detail,
        };
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.base),
            [("query", query)],
        )
        .map_err(|e| unreachable(format!("invalid URL: {e}")))?;
        let response = self
            .http
            .get(url)
            .send()
            .await
            // The URL carries the whole query; the base URL is already in the message.
            .map_err(|e| unreachable(error_chain(&e.without_url())))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        // Prometheus answers a bad query with 400 and a JSON error; anything else non-JSON is
        // a proxy or a wrong URL.
        parse_vector(&body).map_err(|detail| {
            if status.is_server_error() || !body.trim_start().starts_with('{') {
                unreachable(format!("HTTP {status}: {detail}"))
            } else {
                LiveError::Rejected {
                    url: self.base.clone(),
                    query: query.to_string(),
                    detail,
                }
            }
        })
    }

    /// Every SLO's error ratio per window and firing tiers: one query per window and one for
    /// the alerts, however many SLOs there are.
    async fn every_slo(&self) -> Result<EverySlo, LiveError> {
        let mut queries: Vec<String> = WINDOWS.iter().map(|w| error_ratio("", w.minutes)).collect();
        queries.push(format!(
            "ALERTS{{alertname=\"{ALERT_NAME}\",alertstate=\"firing\"}}"
        ));
        let mut answers = try_join_all(queries.iter().map(|q| self.query(q))).await?;
        let alerts = answers.pop().expect("the alerts query");
        let mut firing: HashMap<SloKey, Vec<String>> = HashMap::new();
        for sample in alerts {
            if let (Some(key), Some(tier)) = (slo_of(&sample), sample.metric.tier) {
                firing.entry(key).or_default().push(tier);
            }
        }
        for tiers in firing.values_mut() {
            tiers.sort();
            tiers.dedup();
        }
        Ok(EverySlo {
            windows: answers.into_iter().map(ratio_per_slo).collect(),
            firing,
        })
    }
}

/// Which SLO a sample of an all-SLO query belongs to: its recorded series' labels.
type SloKey = (String, String);

fn slo_of(sample: &Sample) -> Option<SloKey> {
    Some((
        sample.metric.slo_namespace.clone()?,
        sample.metric.slo_name.clone()?,
    ))
}

/// Each SLO's finite value in an all-SLO answer.
fn ratio_per_slo(samples: Vec<Sample>) -> HashMap<SloKey, f64> {
    samples
        .iter()
        .filter_map(|s| Some((slo_of(s)?, s.finite()?)))
        .collect()
}

/// One round of all-SLO answers.
#[derive(Debug, Default)]
struct EverySlo {
    /// Error ratio per SLO, one map per window in [`WINDOWS`] order.
    windows: Vec<HashMap<SloKey, f64>>,
    firing: HashMap<SloKey, Vec<String>>,
}

struct Round {
    taken: Instant,
    answers: Result<EverySlo, LiveError>,
    /// Error ratio over each SLO period (days) asked for during this round.
    periods: HashMap<u32, Result<HashMap<SloKey, f64>, LiveError>>,
}

/// Live numbers for every SLO from shared rounds of queries, so an interval costs one query
/// per window, one for the alerts and one per distinct SLO period, not that many per SLO. A
/// round serves every reconcile until it is a status interval old; the next reconcile then
/// takes a new one (one at a time), so numbers are at most one interval older than their read.
pub struct LiveRounds {
    prometheus: Prometheus,
    max_age: Duration,
    round: tokio::sync::Mutex<Option<Round>>,
}

impl LiveRounds {
    pub fn new(prometheus: Prometheus, max_age: Duration) -> Self {
        LiveRounds {
            prometheus,
            max_age,
            round: tokio::sync::Mutex::new(None),
        }
    }

    pub fn url(&self) -> &str {
        self.prometheus.url()
    }

    /// Burn rate per window, budget remaining and firing tiers of `slo`.
    pub async fn live(&self, slo: &CompiledSlo) -> Result<Live, LiveError> {
        let mut round = self.round.lock().await;
        if round
            .as_ref()
            .is_none_or(|r| r.taken.elapsed() >= self.max_age)
        {
            *round = Some(Round {
                taken: Instant::now(),
                answers: self.prometheus.every_slo().await,
                periods: HashMap::new(),
            });
        }
        let round = round.as_mut().expect("a round was just taken");
        let answers = round.answers.as_ref().map_err(Clone::clone)?;
        let over_period = match round.periods.entry(slo.period_days) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(asked) => {
                let period = error_ratio("", slo.period_days * 24 * 60);
                asked.insert(self.prometheus.query(&period).await.map(ratio_per_slo))
            }
        }
        .as_ref()
        .map_err(Clone::clone)?;
        live_of(slo, answers, over_period).ok_or_else(|| {
            LiveError::NoData(format!(
                "Prometheus at {} has no events for this SLO in any window: {EVENTS_RATE}{{{}}} is absent or zero (are the rules loaded, and does the selector match series with traffic?)",
                self.url(),
                slo.selector()
            ))
        })
    }
}

/// `slo`'s share of a round; `None` when no window has a number for it.
fn live_of(
    slo: &CompiledSlo,
    answers: &EverySlo,
    over_period: &HashMap<SloKey, f64>,
) -> Option<Live> {
    let key = (slo.namespace.clone(), slo.name.clone());
    let budget = slo.error_budget();
    // A ratio over a zero budget (a 100% objective) is no number, as in PromQL.
    let per_budget = |ratio: &f64| Some(ratio / budget).filter(|v| v.is_finite());
    let burn_rates: Vec<WindowBurnRate> = WINDOWS
        .iter()
        .zip(&answers.windows)
        .filter_map(|(window, ratios)| {
            Some(WindowBurnRate {
                window: window.name.into(),
                burn_rate: round(per_budget(ratios.get(&key)?)?),
            })
        })
        .collect();
    if burn_rates.is_empty() {
        return None;
    }
    Some(Live {
        burn_rates,
        budget_remaining: over_period
            .get(&key)
            .and_then(per_budget)
            .map(|spent| round(1.0 - spent)),
        firing: answers.firing.get(&key).cloned().unwrap_or_default(),
    })
}

/// Four significant decimals are plenty for a status and keep it from churning on noise.
fn round(value: f64) -> f64 {
    (value * 10_000.0).round() / 10_000.0
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slo::rules::{compile, tests::spec};

    fn sample(namespace: &str, name: &str, value: &str) -> Sample {
        Sample {
            metric: SampleLabels {
                slo_namespace: Some(namespace.into()),
                slo_name: Some(name.into()),
                tier: None,
            },
            value: (1.0, value.into()),
        }
    }

    #[test]
    fn one_round_of_all_slo_answers_is_split_by_slo_labels() {
        let checkout = compile("shop", "checkout", &spec(99.9, "30d")).unwrap();
        let search = compile("shop", "search", &spec(99.0, "30d")).unwrap();
        let idle = compile("other", "checkout", &spec(99.9, "30d")).unwrap();
        // The 5m window has both SLOs (and one without traffic); the 30m window only checkout.
        let five = ratio_per_slo(vec![
            sample("shop", "checkout", "0.0144"),
            sample("shop", "search", "0.005"),
            sample("other", "checkout", "NaN"),
        ]);
        let thirty = ratio_per_slo(vec![sample("shop", "checkout", "0.001")]);
        let mut windows = vec![five, thirty];
        windows.resize(WINDOWS.len(), HashMap::new());
        let answers = EverySlo {
            windows,
            firing: HashMap::from([(
                ("shop".to_string(), "checkout".to_string()),
                vec!["page".to_string()],
            )]),
        };
        let over_period = ratio_per_slo(vec![
            sample("shop", "checkout", "0.00025"),
            sample("shop", "search", "0.02"),
        ]);

        let live = live_of(&checkout, &answers, &over_period).unwrap();
        let rates: Vec<(String, f64)> = live
            .burn_rates
            .iter()
            .map(|w| (w.window.clone(), w.burn_rate))
            .collect();
        assert_eq!(rates, [("5m".into(), 14.4), ("30m".into(), 1.0)]);
        assert_eq!(live.budget_remaining, Some(0.75));
        assert_eq!(live.firing, ["page"]);

        let live = live_of(&search, &answers, &over_period).unwrap();
        assert_eq!(live.burn_rates.len(), 1);
        assert_eq!(live.burn_rates[0].burn_rate, 0.5);
        assert_eq!(
            live.budget_remaining,
            Some(-1.0),
            "overspent: 2% of a 1% budget"
        );
        assert!(live.firing.is_empty());

        // Same name, other namespace, no traffic: no numbers rather than checkout's.
        assert_eq!(live_of(&idle, &answers, &over_period), None);
    }

    #[test]
    fn all_slo_queries_have_no_selector_and_keep_the_per_slo_shape() {
        let slo = compile("shop", "checkout", &spec(99.9, "30d")).unwrap();
        assert_eq!(
            error_ratio("", 5),
            "(bulwark_slo:errors:rate5m / bulwark_slo:events:rate5m)"
        );
        assert_eq!(
            error_ratio("", 60),
            slo.error_ratio(60)
                .replace(&format!("{{{}}}", slo.selector()), "")
        );
    }

    #[test]
    fn vectors_parse_and_errors_are_quoted() {
        let ok = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"ALERTS","tier":"page","slo_name":"checkout"},"value":[1700000000.5,"14.4"]},{"metric":{},"value":[1,"NaN"]}]}}"#;
        let samples = parse_vector(ok).unwrap();
        assert_eq!(samples[0].finite(), Some(14.4));
        assert_eq!(
            samples[0].metric,
            SampleLabels {
                slo_namespace: None,
                slo_name: Some("checkout".into()),
                tier: Some("page".into()),
            },
            "the labels a status reads, and no others"
        );
        assert_eq!(samples[1].finite(), None);
        let bad = r#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#;
        assert_eq!(parse_vector(bad).unwrap_err(), "parse error at char 5");
        let matrix = r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(parse_vector(matrix).unwrap_err().contains("matrix"));
        assert!(
            parse_vector("<html>")
                .unwrap_err()
                .starts_with("not a Prometheus")
        );
    }
}
