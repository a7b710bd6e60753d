//! Metrics in Prometheus text format, the API server's own above all: what benchmarks and tests
//! read to count and time requests as the API server saw them, and to read a replica's gauges.

use std::collections::BTreeMap;

use anyhow::Result;

/// The API server's own metrics, as text.
pub async fn api_metrics(client: &kube::Client) -> Result<String> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    Ok(client.request_text(request).await?)
}

/// The value of `metric` in `text` (Prometheus text format), a metric without labels.
pub fn unlabelled(text: &str, metric: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(metric)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Sums of the series of `metric` in `text`, by the values of `labels` joined with spaces.
pub fn sum_by(text: &str, metric: &str, labels: &[&str]) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line
            .strip_prefix(metric)
            .and_then(|rest| rest.strip_prefix('{'))
        else {
            continue;
        };
        let Some((series, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            series
                .split(',')
                .find_map(|l| l.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let key: Vec<String> = labels.iter().map(|name| label(name)).collect();
        *sums.entry(key.join(" ").trim().to_string()).or_default() +=
            value.parse::<f64>().unwrap_or(0.0);
    }
    sums
}

/// `apiserver_request_total` by verb and by resource with its subresource and, for refused
/// writes, the code (`dnsendpoints/status 409`).
pub fn api_requests(text: &str) -> BTreeMap<(String, String), f64> {
    let mut counts = BTreeMap::new();
    for (key, count) in sum_by(
        text,
        "apiserver_request_total",
        &["verb", "resource", "subresource", "code"],
    ) {
        let mut parts = key.split(' ');
        let mut part = || parts.next().unwrap_or_default().to_string();
        let (verb, mut resource, subresource, code) = (part(), part(), part(), part());
        if !subresource.is_empty() {
            resource = format!("{resource}/{subresource}");
        }
        if code == "409" {
            resource = format!("{resource} {code}");
        }
        *counts.entry((verb, resource)).or_default() += count;
    }
    counts
}
