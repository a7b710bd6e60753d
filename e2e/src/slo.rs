//! SLO test support: a real Prometheus process, a synthetic exporter whose error ratio the test
//! sets, and `promtool test rules` suites generated from burn scenarios.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bulwark_controllers::slo::rules::{CompiledSlo, RuleGroup, Tier};
use serde_json::{Value, json};

use crate::process::Process;

/// Counters of a service whose request rate and error ratio can change at any moment; scrapes
/// see `http_requests_total{code="200"|"500"}` that grew exactly as configured.
#[derive(Clone)]
pub struct Exporter {
    state: Arc<Mutex<Traffic>>,
    pub address: String,
}

struct Traffic {
    requests_per_second: f64,
    error_ratio: f64,
    ok: f64,
    errors: f64,
    since: Instant,
}

impl Traffic {
    fn advance(&mut self) {
        let elapsed = self.since.elapsed().as_secs_f64();
        self.ok += elapsed * self.requests_per_second * (1.0 - self.error_ratio);
        self.errors += elapsed * self.requests_per_second * self.error_ratio;
        self.since = Instant::now();
    }
}

/// Serves `/metrics` as `render` writes it, on a loopback port, from a thread of its own;
/// returns the address.
pub fn serve_metrics(render: impl Fn() -> String + Send + 'static) -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?.to_string();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let body = render();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(address)
}

impl Exporter {
    /// Serves `http_requests_total{job}` counters, all requests succeeding until told otherwise.
    pub fn start(job: &str, requests_per_second: f64) -> Result<Self> {
        let state = Arc::new(Mutex::new(Traffic {
            requests_per_second,
            error_ratio: 0.0,
            ok: 0.0,
            errors: 0.0,
            since: Instant::now(),
        }));
        let served = state.clone();
        let job = job.to_string();
        let address = serve_metrics(move || {
            let mut traffic = served.lock().unwrap();
            traffic.advance();
            format!(
                "# TYPE http_requests_total counter\nhttp_requests_total{{job=\"{job}\",code=\"200\"}} {}\nhttp_requests_total{{job=\"{job}\",code=\"500\"}} {}\n",
                traffic.ok, traffic.errors
            )
        })?;
        Ok(Self { state, address })
    }

    /// From now on, this share of requests fails.
    pub fn set_error_ratio(&self, ratio: f64) {
        let mut traffic = self.state.lock().unwrap();
        traffic.advance();
        traffic.error_ratio = ratio;
    }
}

/// A Prometheus server (the Debian package) on a loopback port (or the pod network's gateway
/// while a local control plane runs, so the operator's pods reach it), scraping `targets` and
/// evaluating its rule file every `interval`; rules are replaced with [`Self::load_rules`].
/// Its data lives in `dir/data`, so a restart on the same `dir` keeps it.
pub struct Prometheus {
    pub process: Process,
    pub url: String,
    dir: PathBuf,
    http: reqwest::Client,
}

impl Prometheus {
    pub async fn start(dir: &Path, port: u16, targets: &[String], interval: &str) -> Result<Self> {
        // honor_labels: the exporter's own `job` label is the one SLO selectors name.
        let synthetic = json!({"job_name": "synthetic", "honor_labels": true, "static_configs": [{"targets": targets}]});
        Self::start_scraping(dir, port, vec![synthetic], interval).await
    }

    /// Like [`Self::start`], with Prometheus `scrape_configs` of the caller's.
    pub async fn start_scraping(
        dir: &Path,
        port: u16,
        scrape_configs: Vec<Value>,
        interval: &str,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        // Where the operator's pods reach it, when they run on this cluster.
        let address = crate::host_address_for_pods().unwrap_or([127, 0, 0, 1].into());
        let rules = dir.join("rules.json");
        std::fs::write(&rules, r#"{"groups": []}"#)?;
        let config = json!({
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [rules],
            "scrape_configs": scrape_configs,
        });
        let config_file = dir.join("prometheus.json");
        std::fs::write(&config_file, config.to_string())?;
        let args = [
            format!("--config.file={}", config_file.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={address}:{port}"),
            "--web.enable-lifecycle".to_string(),
            // Benchmarks backfill days of history; keep all of it.
            "--storage.tsdb.retention.time=30d".to_string(),
        ];
        let mut process = Process::spawn(
            "prometheus",
            Path::new("prometheus"),
            &args,
            &[],
            &dir.join("prometheus.log"),
        )?;
        let url = format!("http://{address}:{port}");
        bulwark_controllers::runtime::ensure_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            process.check_alive()?;
            if let Ok(r) = http.get(format!("{url}/-/ready")).send().await
                && r.status().is_success()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "Prometheus not ready within 120s:\n{}",
                    process.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Self {
            process,
            url,
            dir: dir.to_path_buf(),
            http,
        })
    }

    /// Replaces the rule files with `groups` and reloads, as the Prometheus Operator's config
    /// reloader does with a PrometheusRule.
    pub async fn load_rules(&self, groups: &Value) -> Result<()> {
        std::fs::write(
            self.dir.join("rules.json"),
            json!({ "groups": groups }).to_string(),
        )?;
        let response = self
            .http
            .post(format!("{}/-/reload", self.url))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("reload refused: {}", response.text().await?);
        }
        Ok(())
    }

    /// GET an API path (`/api/v1/...`) with query parameters; the `data` of a success.
    pub async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value> {
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.url), params)?;
        let body: Value = self.http.get(url).send().await?.json().await?;
        if body["status"] != "success" {
            bail!("{path} {params:?} failed: {body}");
        }
        Ok(body["data"].clone())
    }

    /// A range query from `start` to `end` (Unix seconds) at `step` seconds: its result.
    pub async fn query_range(&self, query: &str, start: i64, end: i64, step: u32) -> Result<Value> {
        let (start, end, step) = (start.to_string(), end.to_string(), step.to_string());
        let data = self
            .api(
                "/api/v1/query_range",
                &[
                    ("query", query),
                    ("start", &start),
                    ("end", &end),
                    ("step", &step),
                ],
            )
            .await?;
        Ok(data["result"].clone())
    }

    /// An instant query's samples as (labels, value).
    pub async fn query(&self, query: &str) -> Result<Vec<(Value, f64)>> {
        let data = self.api("/api/v1/query", &[("query", query)]).await?;
        Ok(data["result"]
            .as_array()
            .context("vector result")?
            .iter()
            .map(|s| {
                let value = s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                (s["metric"].clone(), value)
            })
            .collect())
    }

    /// Stops the server cleanly (its data stays in `dir`).
    pub fn stop(mut self) {
        self.process.stop(Duration::from_secs(30));
    }
}

/// The counters a scenario's SLO reads: `http_requests_total{job="api",code="200"|"500"}`.
pub const ERRORS_SELECTOR: &str = r#"http_requests_total{job="api",code=~"5.."}"#;
pub const TOTAL_SELECTOR: &str = r#"http_requests_total{job="api"}"#;
/// Requests per minute in every scenario.
const REQUESTS_PER_MINUTE: f64 = 1000.0;

/// Traffic for `minutes` at `burn` times the rate that spends the budget exactly over the period.
#[derive(Clone, Copy, Debug)]
pub struct Phase {
    pub minutes: u32,
    pub burn: f64,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub phases: Vec<Phase>,
    /// Minutes from the start at which the alerts are compared with [`reference_firing`].
    pub checks: Vec<u32>,
}

/// The average burn over the `window` minutes before `minute`, computed exactly from the phases
/// (over the data there is, when the window reaches back before the start).
pub fn average_burn(phases: &[Phase], minute: u32, window: u32) -> f64 {
    let (from, to) = (f64::from(minute.saturating_sub(window)), f64::from(minute));
    let mut start = 0.0;
    let mut area = 0.0;
    for phase in phases {
        let end = start + f64::from(phase.minutes);
        area += phase.burn * (end.min(to) - start.max(from)).max(0.0);
        start = end;
    }
    area / (to - from)
}

/// The tiers the workbook's definition says fire at `minute`: a tier fires when, for one of its
/// conditions, both windows' exact average burn exceeds the condition's factor. The reference
/// the generated suites hold Prometheus's evaluation of the rules to.
pub fn reference_firing(slo: &CompiledSlo, phases: &[Phase], minute: u32) -> Vec<Tier> {
    Tier::ALL
        .into_iter()
        .filter(|tier| slo.tier_enabled(*tier))
        .filter(|tier| {
            tier.conditions().iter().any(|c| {
                let factor = c.factor(slo.period_days);
                average_burn(phases, minute, c.long.minutes) > factor
                    && average_burn(phases, minute, c.short.minutes) > factor
            })
        })
        .collect()
}

/// Runs `promtool` (Debian's `prometheus` package) in `dir`: whether it succeeded, and what it
/// printed.
pub fn promtool(args: &[&str], dir: &std::path::Path) -> (bool, String) {
    let output = std::process::Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs (Debian package prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// `promtool` series notation for a counter that grows by `per_minute[i]` during phase i.
fn counter_values(phases: &[Phase], per_minute: impl Fn(&Phase) -> f64) -> String {
    let mut value = 0.0;
    let mut segments = Vec::new();
    for phase in phases {
        let increment = per_minute(phase);
        segments.push(format!("{value}+{increment}x{}", phase.minutes - 1));
        value += increment * f64::from(phase.minutes);
    }
    // One last sample closes the final phase.
    segments.push(format!("{value}"));
    segments.join(" ")
}

/// A `promtool test rules` suite (JSON, which promtool reads as YAML) checking `scenarios`
/// against the rules of `slo` in `rule_file`.
pub fn promtool_suite(
    slo: &CompiledSlo,
    rule_group: &RuleGroup,
    rule_file: &str,
    scenarios: &[Scenario],
) -> Value {
    let budget = slo.error_budget();
    let alerts: Vec<&bulwark_controllers::slo::rules::Rule> = rule_group
        .rules
        .iter()
        .filter(|r| r.alert.is_some())
        .collect();
    let tests: Vec<Value> = scenarios
        .iter()
        .map(|scenario| {
            let errors = counter_values(&scenario.phases, |p| p.burn * budget * REQUESTS_PER_MINUTE);
            let ok = counter_values(&scenario.phases, |p| (1.0 - p.burn * budget) * REQUESTS_PER_MINUTE);
            let checks: Vec<Value> = scenario
                .checks
                .iter()
                .map(|&minute| {
                    let firing = reference_firing(slo, &scenario.phases, minute);
                    let expected: Vec<Value> = alerts
                        .iter()
                        .filter(|rule| {
                            firing.iter().any(|tier| rule.labels.get("tier").map(String::as_str) == Some(tier.name()))
                        })
                        .map(|rule| {
                            json!({"exp_labels": rule.labels, "exp_annotations": rule.annotations})
                        })
                        .collect();
                    json!({
                        "eval_time": format!("{minute}m"),
                        "alertname": alerts.first().and_then(|r| r.alert.clone()).unwrap_or_default(),
                        "exp_alerts": expected,
                    })
                })
                .collect();
            json!({
                "name": scenario.name,
                "interval": "1m",
                "input_series": [
                    {"series": r#"http_requests_total{job="api",code="500"}"#, "values": errors},
                    {"series": r#"http_requests_total{job="api",code="200"}"#, "values": ok},
                ],
                "alert_rule_test": checks,
            })
        })
        .collect();
    json!({
        "rule_files": [rule_file],
        "evaluation_interval": "1m",
        "tests": tests,
    })
}

/// A stand-in for the Prometheus Operator's PrometheusRule CRD (schema left open), for clusters
/// that do not have it. Returns false, touching nothing, when the cluster already serves one.
pub async fn install_prometheus_rule_crd(client: &kube::Client) -> Result<bool> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, PostParams};
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = "prometheusrules.monitoring.coreos.com";
    if api.get_opt(name).await?.is_some() {
        return Ok(false);
    }
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"plural": "prometheusrules", "singular": "prometheusrule", "kind": "PrometheusRule", "listKind": "PrometheusRuleList"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
            }],
        },
    }))?;
    api.create(&PostParams::default(), &crd).await?;
    let established = kube::runtime::wait::await_condition(
        api,
        name,
        kube::runtime::wait::conditions::is_crd_established(),
    );
    tokio::time::timeout(Duration::from_secs(30), established)
        .await
        .context("PrometheusRule CRD not Established within 30s")??;
    Ok(true)
}

/// Whether the cluster serves monitoring.coreos.com/v1 PrometheusRule.
pub async fn prometheus_rules_served(client: &kube::Client) -> Result<bool> {
    match client
        .list_api_group_resources("monitoring.coreos.com/v1")
        .await
    {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == "prometheusrules")),
        Err(e) if bulwark_controllers::runtime::is_not_found(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
