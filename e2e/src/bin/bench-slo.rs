//! SLO rules benchmark: Bulwark's rules against Sloth's for the same 100 SLOs, in one Prometheus
//! holding 3.5 days of the same synthetic history (backfilled with promtool, then continued
//! live by an exporter). Prints the rule counts, the rule-evaluation time per cycle of each,
//! and compares the alert decisions of both minute by minute over the last 12 hours, naming
//! every place they differ. Run: `./dev bench slo`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bulwark_controllers::slo::rules::{CompiledSlo, RuleGroup, Tier, compile};
use bulwark_crds::slo::{Alerting, Indicator, RatioIndicator, ServiceLevelObjectiveSpec};
use bulwark_e2e::binaries::{binary, pinned};
use bulwark_e2e::process::free_port;
use bulwark_e2e::slo::{Prometheus, serve_metrics};
use serde_json::{Value, json};

const SERVICES: usize = 100;
const INSTANCES: [&str; 2] = ["a", "b"];
/// Requests per minute per instance.
const REQUESTS_PER_MINUTE: f64 = 600.0;
/// History before the run: the 3-day ticket window plus the 12 hours compared.
const HISTORY_MINUTES: i64 = (3 * 24 + 12) * 60;
const COMPARED_MINUTES: i64 = 12 * 60;
const OBJECTIVES: [f64; 4] = [99.0, 99.5, 99.9, 99.95];
/// Evaluation cycles measured per rule set.
const CYCLES: usize = 12;
const INTERVAL_SECONDS: u64 = 10;

fn progress(message: impl AsRef<str>) {
    eprintln!("[bench-slo] {}", message.as_ref());
}

/// How a service's errors evolve, in budget-burn units, relative to the end of the history.
#[derive(Clone, Copy, Debug)]
enum Profile {
    /// The same burn for the whole history (tests thresholds at steady state).
    Steady(f64),
    /// Healthy, then `burn` for `minutes`, starting `starts_before_end` minutes before the end.
    Incident {
        burn: f64,
        starts_before_end: i64,
        minutes: i64,
    },
}

impl Profile {
    fn burn(&self, minutes_before_end: i64) -> f64 {
        match *self {
            Profile::Steady(burn) => burn,
            Profile::Incident {
                burn,
                starts_before_end,
                minutes,
            } => {
                let into = starts_before_end - minutes_before_end;
                if (0..minutes).contains(&into) {
                    burn
                } else {
                    0.0
                }
            }
        }
    }

    fn describe(&self) -> String {
        match *self {
            Profile::Steady(burn) => format!("steady {burn}x"),
            Profile::Incident { burn, minutes, .. } if burn.is_infinite() => {
                format!("total outage for {minutes}m")
            }
            Profile::Incident { burn, minutes, .. } => format!("{burn}x for {minutes}m"),
        }
    }
}

/// 25 profiles × 4 objectives = 100 services: steady burns on both sides of every factor
/// (never exactly on one), and incidents from a 10-minute total outage to a 10-hour slow burn.
fn profiles() -> Vec<Profile> {
    let mut profiles: Vec<Profile> = [0.2, 0.9, 1.2, 2.5, 3.5, 5.0, 7.0, 12.0, 16.0, 25.0]
        .into_iter()
        .map(Profile::Steady)
        .collect();
    for (i, (burn, minutes)) in [
        (f64::INFINITY, 10),
        (f64::INFINITY, 45),
        (50.0, 20),
        (20.0, 60),
        (15.0, 90),
        (10.0, 120),
        (8.0, 240),
        (6.5, 300),
        (4.0, 360),
        (3.5, 480),
        (2.0, 600),
        (1.5, 600),
        (30.0, 5),
        (14.0, 180),
        (7.0, 30),
    ]
    .into_iter()
    .enumerate()
    {
        profiles.push(Profile::Incident {
            burn,
            starts_before_end: 660 - 20 * i as i64,
            minutes,
        });
    }
    profiles
}

struct Service {
    name: String,
    objective: f64,
    profile: Profile,
}

impl Service {
    /// Errors per minute per instance at `minutes_before_end` (an infinite burn fails everything).
    fn errors_per_minute(&self, minutes_before_end: i64) -> f64 {
        let budget = (100.0 - self.objective) / 100.0;
        (self.profile.burn(minutes_before_end) * budget).min(1.0) * REQUESTS_PER_MINUTE
    }
}

fn all_services() -> Vec<Service> {
    let profiles = profiles();
    (0..SERVICES)
        .map(|i| Service {
            name: format!("svc-{i:03}"),
            objective: OBJECTIVES[i / profiles.len() % OBJECTIVES.len()],
            profile: profiles[i % profiles.len()],
        })
        .collect()
}

fn spec(service: &Service) -> ServiceLevelObjectiveSpec {
    ServiceLevelObjectiveSpec {
        service: service.name.clone(),
        description: None,
        objective: service.objective,
        period: "30d".into(),
        indicator: Indicator {
            ratio: Some(RatioIndicator {
                errors: Some(format!(
                    r#"http_requests_total{{job="{}",code=~"5.."}}"#,
                    service.name
                )),
                good: None,
                total: format!(r#"http_requests_total{{job="{}"}}"#, service.name),
            }),
            latency: None,
        },
        alerting: Alerting::default(),
    }
}

fn sloth_spec(service: &Service) -> String {
    format!(
        r#"version: "prometheus/v1"
service: "{name}"
slos:
  - name: "availability"
    objective: {objective}
    sli:
      events:
        error_query: sum(rate(http_requests_total{{job="{name}",code=~"5.."}}[{{{{.window}}}}]))
        total_query: sum(rate(http_requests_total{{job="{name}"}}[{{{{.window}}}}]))
    alerting:
      name: SlothErrorBudgetBurn
      page_alert:
        labels: {{severity: page}}
      ticket_alert:
        labels: {{severity: ticket}}
"#,
        name = service.name,
        objective = service.objective
    )
}

impl Service {
    /// (Unix minute, ok, errors) counter values per instance, from the start of the history
    /// (ending at `end_minute`) through `until`: the backfill and the live exporter alike.
    fn counters(&self, end_minute: i64, until: i64) -> impl Iterator<Item = (i64, f64, f64)> + '_ {
        (end_minute - HISTORY_MINUTES..=until).scan((0.0, 0.0), move |(ok, errors), minute| {
            let at = (minute, *ok, *errors);
            let failed = self.errors_per_minute(end_minute - minute);
            *errors += failed;
            *ok += REQUESTS_PER_MINUTE - failed;
            Some(at)
        })
    }
}

/// The history as OpenMetrics, every series' samples together; returns the sample count.
fn write_openmetrics(path: &Path, services: &[Service], end_minute: i64) -> Result<usize> {
    let mut text = String::from("# TYPE http_requests counter\n");
    let mut samples = 0;
    for service in services {
        let history: Vec<(i64, f64, f64)> = service.counters(end_minute, end_minute).collect();
        // Series by series: one (instance, code) at a time over all minutes.
        for instance in INSTANCES {
            for errors_series in [false, true] {
                for &(minute, ok, errors) in &history {
                    let (code, value) = if errors_series {
                        ("500", errors)
                    } else {
                        ("200", ok)
                    };
                    writeln!(
                        text,
                        "http_requests_total{{job=\"{}\",instance=\"{instance}\",code=\"{code}\"}} {value} {}",
                        service.name,
                        minute * 60
                    )?;
                    samples += 1;
                }
            }
        }
    }
    text.push_str("# EOF\n");
    std::fs::write(path, text)?;
    Ok(samples)
}

fn run(program: &Path, args: &[&str], dir: &Path) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!("{} {args:?} failed:\n{text}", program.display());
    }
    Ok(text)
}

/// Turns an OpenMetrics file in `dir` into TSDB blocks and moves them into `data`.
fn backfill(dir: &Path, openmetrics: &str, data: &Path) -> Result<usize> {
    run(
        Path::new("promtool"),
        &[
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            "--quiet",
            openmetrics,
            "blocks",
        ],
        dir,
    )?;
    std::fs::remove_file(dir.join(openmetrics))?;
    move_blocks(&dir.join("blocks"), data)
}

/// Moves every TSDB block (a directory with a `meta.json`) from `from` into `to`.
fn move_blocks(from: &Path, to: &Path) -> Result<usize> {
    std::fs::create_dir_all(to)?;
    let mut moved = 0;
    for entry in std::fs::read_dir(from)? {
        let path = entry?.path();
        if path.join("meta.json").is_file() {
            std::fs::rename(&path, to.join(path.file_name().unwrap()))?;
            moved += 1;
        }
    }
    Ok(moved)
}

/// Sloth's alert expression with its recorded ratios replaced by their expressions, so it can
/// be evaluated over the past without Sloth's recordings having a history.
fn inline_sloth(expr: &str, recordings: &BTreeMap<(String, String), String>) -> Result<String> {
    const PREFIX: &str = "slo:sli_error:ratio_rate";
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find(PREFIX) {
        out.push_str(&rest[..at]);
        let after = &rest[at + PREFIX.len()..];
        let open = after.find('{').context("selector without labels")?;
        let close = after.find('}').context("unclosed selector")?;
        let window = &after[..open];
        let labels = &after[open + 1..close];
        let id = labels
            .split("sloth_id=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .context("selector without sloth_id")?;
        let recorded = recordings
            .get(&(id.to_string(), window.to_string()))
            .with_context(|| format!("no recording for {id} {window}"))?;
        write!(out, "({})", recorded.trim())?;
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Minutes (Unix) at which `expr` returned a sample over the compared range.
async fn firing_minutes(prometheus: &Prometheus, expr: &str, end_minute: i64) -> Result<Vec<i64>> {
    let result = prometheus
        .query_range(
            expr,
            (end_minute - COMPARED_MINUTES) * 60,
            end_minute * 60,
            60,
        )
        .await?;
    let mut minutes: Vec<i64> = result
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|series| series["values"].as_array().cloned().unwrap_or_default())
        .filter_map(|point| point[0].as_f64())
        .map(|t| t as i64 / 60)
        .collect();
    minutes.sort();
    minutes.dedup();
    Ok(minutes)
}

/// Rule-evaluation time of every cycle: the sum over the rule set's groups of their last
/// evaluation time, read once per interval after every group has evaluated again.
async fn evaluation_cycles(
    prometheus: &Prometheus,
    groups: &Value,
    label: &str,
) -> Result<Vec<f64>> {
    prometheus.load_rules(groups).await?;
    let mut cycles = Vec::new();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    // The first cycle after a reload includes warming caches; skip it.
    let mut warm = false;
    while cycles.len() < CYCLES {
        tokio::time::sleep(Duration::from_secs(INTERVAL_SECONDS)).await;
        let data = prometheus.api("/api/v1/rules", &[]).await?;
        let groups = data["groups"].as_array().cloned().unwrap_or_default();
        let fresh = groups.iter().all(|g| {
            let name = g["name"].as_str().unwrap_or_default();
            let at = g["lastEvaluation"].as_str().unwrap_or_default();
            last.get(name).is_none_or(|previous| previous != at) && !at.starts_with("0001")
        });
        if !fresh {
            continue;
        }
        for g in &groups {
            last.insert(
                g["name"].as_str().unwrap_or_default().into(),
                g["lastEvaluation"].as_str().unwrap_or_default().into(),
            );
        }
        let total: f64 = groups
            .iter()
            .filter_map(|g| g["evaluationTime"].as_f64())
            .sum();
        if !warm {
            warm = true;
            continue;
        }
        progress(format!(
            "{label}: cycle {} took {:.1} ms",
            cycles.len() + 1,
            total * 1e3
        ));
        cycles.push(total);
    }
    Ok(cycles)
}

/// Waits until Prometheus has compacted the backfilled 2-hour blocks (as a server that has run
/// for days would have), so neither rule set pays for reading dozens of small blocks.
async fn wait_for_compaction(prometheus: &Prometheus) -> Result<()> {
    // Read from Prometheus's own /metrics: it does not scrape itself here.
    let blocks = || async {
        let text = reqwest::get(format!("{}/metrics", prometheus.url))
            .await?
            .text()
            .await?;
        text.lines()
            .find_map(|l| l.strip_prefix("prometheus_tsdb_blocks_loaded "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .context("prometheus_tsdb_blocks_loaded missing from /metrics")
    };
    let mut previous = f64::NAN;
    let mut stable_for = 0;
    // Prometheus runs its compactor once a minute.
    while stable_for < 2 {
        tokio::time::sleep(Duration::from_secs(40)).await;
        let now = blocks().await?;
        progress(format!("compaction: {now} blocks loaded"));
        stable_for = if now == previous { stable_for + 1 } else { 0 };
        previous = now;
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn count_rules(groups: &Value) -> (usize, usize) {
    let rules: Vec<&Value> = groups
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    let recording = rules.iter().filter(|r| r.get("record").is_some()).count();
    (recording, rules.len() - recording)
}

/// Differing minutes as ranges `HH:MM–HH:MM`.
fn ranges(minutes: &[i64]) -> String {
    let clock = |m: i64| format!("{:02}:{:02}", (m / 60) % 24, m % 60);
    let mut out = Vec::new();
    let mut i = 0;
    while i < minutes.len() {
        let mut j = i;
        while j + 1 < minutes.len() && minutes[j + 1] == minutes[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            clock(minutes[i])
        } else {
            format!("{}–{}", clock(minutes[i]), clock(minutes[j]))
        });
        i = j + 1;
    }
    out.join(", ")
}

#[tokio::main]
async fn main() -> Result<()> {
    let sloth = binary("sloth")?;
    let work = tempfile::tempdir()?;
    let dir = work.path();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    let end_minute = now / 60;
    let services = all_services();

    progress(format!(
        "writing {} days of history for {SERVICES} services ({} series, 1 sample per minute)",
        HISTORY_MINUTES as f64 / 1440.0,
        SERVICES * INSTANCES.len() * 2
    ));
    let samples = write_openmetrics(&dir.join("history.om"), &services, end_minute)?;
    progress(format!("backfilling {samples} samples with promtool"));
    let prometheus_dir = dir.join("prometheus");
    let moved = backfill(dir, "history.om", &prometheus_dir.join("data"))?;
    progress(format!("{moved} blocks of raw history"));

    // Both tools' rules for the same SLOs.
    let compiled: Vec<CompiledSlo> = services
        .iter()
        .map(|s| compile("bench", &s.name, &spec(s)))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let bulwark_groups: Vec<RuleGroup> = compiled.iter().map(CompiledSlo::rule_group).collect();
    let bulwark = json!(bulwark_groups);
    let sloth_specs: Vec<String> = services.iter().map(sloth_spec).collect();
    std::fs::write(dir.join("sloth-specs.yaml"), sloth_specs.join("---\n"))?;
    run(
        &sloth,
        &[
            "generate",
            "-i",
            "sloth-specs.yaml",
            "-o",
            "sloth-rules.yaml",
        ],
        dir,
    )?;
    // One rules document per spec.
    let sloth_documents: Vec<Value> =
        serde_saphyr::from_multiple(&std::fs::read_to_string(dir.join("sloth-rules.yaml"))?)?;
    let sloth_groups: Value = sloth_documents
        .iter()
        .flat_map(|d| d["groups"].as_array().cloned().unwrap_or_default())
        .collect();
    let mut recordings = BTreeMap::new();
    for rule in sloth_groups
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
    {
        if let (Some(record), Some(id), Some(window)) = (
            rule["record"].as_str(),
            rule["labels"]["sloth_id"].as_str(),
            rule["labels"]["sloth_window"].as_str(),
        ) && record.starts_with("slo:sli_error:ratio_rate")
        {
            recordings.insert(
                (id.to_string(), window.to_string()),
                rule["expr"].as_str().unwrap_or_default().to_string(),
            );
        }
    }

    // Recorded history: what each rule set's rules read from their own past recordings
    // (Bulwark's 5-minute rates; Sloth's 5-minute ratio, which its 30d SLI averages), evaluated
    // over the raw history with query_range and backfilled like the raw samples. (promtool's
    // own rule backfill writes blocks per rule and time range: thousands of blocks.)
    let history_rules: Vec<Value> = bulwark_groups
        .iter()
        .flat_map(|g| {
            g.rules
                .iter()
                .filter(|r| r.record.is_some())
                .map(|r| json!(r))
        })
        .chain(
            sloth_groups
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .filter(|r| r["labels"]["sloth_window"] == "5m" && r.get("record").is_some()),
        )
        .collect();
    let port = free_port()?;
    let prometheus = Prometheus::start(&prometheus_dir, port, &[], "10s").await?;
    progress(format!(
        "evaluating {} recording rules over the history (query_range, 1m steps)",
        history_rules.len()
    ));
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    for rule in &history_rules {
        let record = rule["record"].as_str().context("recording rule")?;
        let expr = rule["expr"].as_str().context("expression")?;
        let result = prometheus
            .query_range(
                expr,
                (end_minute - HISTORY_MINUTES) * 60,
                end_minute * 60,
                60,
            )
            .await?;
        let labels: Vec<String> = rule["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or_default()))
            .collect();
        let family = families.entry(record.to_string()).or_default();
        for series in result.as_array().into_iter().flatten() {
            for point in series["values"].as_array().into_iter().flatten() {
                let (Some(t), Some(v)) = (point[0].as_f64(), point[1].as_str()) else {
                    continue;
                };
                writeln!(family, "{record}{{{}}} {v} {}", labels.join(","), t as i64)?;
            }
        }
    }
    prometheus.stop();
    let mut recorded = String::new();
    for (record, lines) in &families {
        writeln!(recorded, "# TYPE {record} gauge")?;
        recorded.push_str(lines);
    }
    recorded.push_str("# EOF\n");
    std::fs::write(dir.join("recorded.om"), recorded)?;
    let moved = backfill(dir, "recorded.om", &prometheus_dir.join("data"))?;
    progress(format!("{moved} blocks of recorded history"));

    // Live: the same counters continue after the history, scraped every 10s.
    let live_services = all_services();
    let exporter = serve_metrics(move || {
        let now_minute = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            / 60;
        let mut text = String::from("# TYPE http_requests_total counter\n");
        for service in &live_services {
            let (_, ok, errors) = service
                .counters(end_minute, now_minute)
                .last()
                .expect("the history is never empty");
            for instance in INSTANCES {
                for (code, value) in [("200", ok), ("500", errors)] {
                    let _ = writeln!(
                        text,
                        "http_requests_total{{job=\"{}\",instance=\"{instance}\",code=\"{code}\"}} {value}",
                        service.name
                    );
                }
            }
        }
        text
    })?;
    let prometheus = Prometheus::start(&prometheus_dir, port, &[exporter], "10s").await?;
    wait_for_compaction(&prometheus).await?;

    // Alert decisions minute by minute over the last 12 hours of the history.
    progress(format!(
        "comparing alert decisions over the last {}h (query_range, 1m steps)",
        COMPARED_MINUTES / 60
    ));
    let sloth_alerts: Vec<&Value> = sloth_groups
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter(|r| r.get("alert").is_some())
        .collect();
    let mut compared = 0usize;
    let mut agreeing = 0usize;
    let mut differences = Vec::new();
    for (service, slo) in services.iter().zip(&compiled) {
        for tier in Tier::ALL {
            let sloth_alert = sloth_alerts
                .iter()
                .find(|r| {
                    r["labels"]["sloth_severity"] == tier.name()
                        && r["expr"].as_str().is_some_and(|e| {
                            e.contains(&format!("sloth_service=\"{}\"", service.name))
                        })
                })
                .context("Sloth alert for the SLO")?;
            let sloth_expr = inline_sloth(
                sloth_alert["expr"].as_str().unwrap_or_default(),
                &recordings,
            )?;
            let ours = firing_minutes(&prometheus, &slo.alert_expr(tier), end_minute).await?;
            let theirs = firing_minutes(&prometheus, &sloth_expr, end_minute).await?;
            let points = COMPARED_MINUTES as usize + 1;
            let only_ours: Vec<i64> = ours
                .iter()
                .filter(|m| !theirs.contains(m))
                .copied()
                .collect();
            let only_theirs: Vec<i64> = theirs
                .iter()
                .filter(|m| !ours.contains(m))
                .copied()
                .collect();
            compared += points;
            agreeing += points - only_ours.len() - only_theirs.len();
            if !only_ours.is_empty() || !only_theirs.is_empty() {
                let mut line = format!(
                    "{} ({}%, {}) {}:",
                    service.name,
                    service.objective,
                    service.profile.describe(),
                    tier.name()
                );
                if !only_theirs.is_empty() {
                    write!(line, " only Sloth fires at {};", ranges(&only_theirs))?;
                }
                if !only_ours.is_empty() {
                    write!(line, " only Bulwark fires at {};", ranges(&only_ours))?;
                }
                write!(line, " both fire {} minutes", ours.len() - only_ours.len())?;
                differences.push(line);
            }
        }
    }

    // Rule-evaluation cost, one rule set at a time.
    let bulwark_cycles = evaluation_cycles(&prometheus, &bulwark, "Bulwark").await?;
    let sloth_cycles = evaluation_cycles(&prometheus, &sloth_groups, "Sloth").await?;
    prometheus.load_rules(&json!([])).await?;

    let version = run(Path::new("prometheus"), &["--version"], dir)?;
    let version = version.lines().next().unwrap_or_default().to_string();
    println!();
    println!(
        "SLO rules for {SERVICES} SLOs (30d, objectives {OBJECTIVES:?}), {} raw series with {:.1} days of 1-minute history, {version}, evaluation every {INTERVAL_SECONDS}s, {CYCLES} cycles each",
        SERVICES * INSTANCES.len() * 2,
        HISTORY_MINUTES as f64 / 1440.0
    );
    println!();
    println!("| rules | recording | alerting | total | evaluation per cycle p50 | p90 | max |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut p50s = Vec::new();
    for (label, groups, cycles) in [
        ("Bulwark".to_string(), &bulwark, bulwark_cycles),
        (
            format!("Sloth {}", pinned("SLOTH_VERSION")),
            &sloth_groups,
            sloth_cycles,
        ),
    ] {
        let (recording, alerting) = count_rules(groups);
        let mut sorted = cycles.clone();
        sorted.sort_by(f64::total_cmp);
        p50s.push(percentile(&sorted, 0.5));
        println!(
            "| {label} | {recording} | {alerting} | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
            recording + alerting,
            percentile(&sorted, 0.5) * 1e3,
            percentile(&sorted, 0.9) * 1e3,
            sorted.last().unwrap() * 1e3
        );
    }
    println!();
    println!(
        "Bulwark / Sloth evaluation time (p50): {:.2}x",
        p50s[0] / p50s[1]
    );
    println!();
    println!(
        "Alert decisions, {SERVICES} SLOs x 2 tiers x {} minutes: {agreeing} of {compared} agree ({:.2}%)",
        COMPARED_MINUTES + 1,
        100.0 * agreeing as f64 / compared as f64
    );
    if differences.is_empty() {
        println!("No difference.");
    } else {
        println!("Where they differ (UTC):");
        for line in &differences {
            println!("  {line}");
        }
    }
    Ok(())
}
