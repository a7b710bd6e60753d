//! Live SLO numbers from the Prometheus HTTP API: the burn rate per window, the budget left over
//! the period and the firing tiers, read with the same expressions the rules and dashboard use.

use std::time::Duration;

use bulwark_crds::slo::WindowBurnRate;
use futures::future::try_join_all;
use serde::Deserialize;

use super::dashboard::{budget_remaining, burn_rate, firing_alerts};
use super::rules::{CompiledSlo, EVENTS_RATE, WINDOWS};

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
    pub metric: std::collections::BTreeMap<String, String>,
    /// `[unix seconds, "value"]`.
    pub value: (f64, String),
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

    /// Burn rate per window, budget remaining and firing tiers of `slo`.
    pub async fn live(&self, slo: &CompiledSlo) -> Result<Live, LiveError> {
        let mut queries: Vec<String> = WINDOWS.iter().map(|w| burn_rate(slo, w.minutes)).collect();
        queries.push(budget_remaining(slo));
        queries.push(firing_alerts(slo));
        let answers = try_join_all(queries.iter().map(|q| self.query(q))).await?;
        let (windows, rest) = answers.split_at(WINDOWS.len());
        let first_finite = |samples: &Vec<Sample>| samples.first().and_then(Sample::finite);
        let burn_rates: Vec<WindowBurnRate> = WINDOWS
            .iter()
            .zip(windows)
            .filter_map(|(w, samples)| {
                first_finite(samples).map(|burn_rate| WindowBurnRate {
                    window: w.name.into(),
                    burn_rate: round(burn_rate),
                })
            })
            .collect();
        if burn_rates.is_empty() {
            return Err(LiveError::NoData(format!(
                "Prometheus at {} has no events for this SLO in any window: {EVENTS_RATE}{{{}}} is absent or zero (are the rules loaded, and does the selector match series with traffic?)",
                self.base,
                slo.selector()
            )));
        }
        let mut firing: Vec<String> = rest[1]
            .iter()
            .filter_map(|s| s.metric.get("tier").cloned())
            .collect();
        firing.sort();
        firing.dedup();
        Ok(Live {
            burn_rates,
            budget_remaining: first_finite(&rest[0]).map(round),
            firing,
        })
    }
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

    #[test]
    fn vectors_parse_and_errors_are_quoted() {
        let ok = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"tier":"page"},"value":[1700000000.5,"14.4"]},{"metric":{},"value":[1,"NaN"]}]}}"#;
        let samples = parse_vector(ok).unwrap();
        assert_eq!(samples[0].finite(), Some(14.4));
        assert_eq!(samples[0].metric["tier"], "page");
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
