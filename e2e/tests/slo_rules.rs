//! The generated rules, checked by Prometheus's own tools: `promtool check rules` over many
//! SLOs, and generated `promtool test rules` suites proving when alerts fire and resolve.

use std::process::Command;

use bulwark_controllers::slo::rules::{CompiledSlo, Tier, compile};
use bulwark_crds::slo::{
    Alerting, Indicator, LatencyIndicator, RatioIndicator, ServiceLevelObjectiveSpec,
};
use bulwark_e2e::slo::{
    ERRORS_SELECTOR, Phase, Scenario, TOTAL_SELECTOR, promtool, promtool_suite, reference_firing,
};

fn ratio_spec(objective: f64, period_days: u32) -> ServiceLevelObjectiveSpec {
    ServiceLevelObjectiveSpec {
        service: "api".into(),
        description: None,
        objective,
        period: format!("{period_days}d"),
        indicator: Indicator {
            ratio: Some(RatioIndicator {
                errors: Some(ERRORS_SELECTOR.into()),
                good: None,
                total: TOTAL_SELECTOR.into(),
            }),
            latency: None,
        },
        alerting: Alerting::default(),
    }
}

/// `promtool check rules` over a rules file holding `groups`.
fn check_rules(groups: &serde_json::Value) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.json"),
        serde_json::json!({ "groups": groups }).to_string(),
    )
    .unwrap();
    promtool(&["check", "rules", "rules.json"], dir.path())
}

#[test]
fn promtool_accepts_every_generated_rule_set() {
    let mut groups = Vec::new();
    let mut expected_rules = 0;
    for period in [7, 14, 28, 30, 90] {
        for objective in [90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999] {
            for indicator in ["errors", "good", "latency"] {
                for (page, ticket) in [(true, true), (true, false), (false, true)] {
                    let mut spec = ratio_spec(objective, period);
                    match indicator {
                        "good" => {
                            spec.indicator.ratio = Some(RatioIndicator {
                                errors: None,
                                good: Some(r#"http_requests_total{job="api",code!~"5.."}"#.into()),
                                total: TOTAL_SELECTOR.into(),
                            })
                        }
                        "latency" => {
                            spec.indicator = Indicator {
                                ratio: None,
                                latency: Some(LatencyIndicator {
                                    histogram: r#"http_request_duration_seconds{job="api"}"#.into(),
                                    threshold: "0.25".into(),
                                }),
                            }
                        }
                        _ => {}
                    }
                    spec.alerting.page.disabled = !page;
                    spec.alerting.ticket.disabled = !ticket;
                    spec.alerting.runbook_url = Some("https://runbooks.example.com/api".into());
                    let name = format!(
                        "{indicator}-{period}d-{}-{page}-{ticket}",
                        objective.to_string().replace('.', "-")
                    );
                    let group = compile("shop", &name, &spec).unwrap().rule_group();
                    expected_rules += group.rules.len();
                    groups.push(group);
                }
            }
        }
    }
    let (ok, output) = check_rules(&serde_json::json!(groups));
    println!(
        "{} SLOs, {expected_rules} rules: promtool check rules says:\n{output}",
        groups.len()
    );
    assert!(ok, "promtool rejected generated rules:\n{output}");
    assert!(
        output.contains(&format!("SUCCESS: {expected_rules} rules found")),
        "{output}"
    );
}

/// Healthy traffic before each burn, longer than the longest window, so every window is full.
const WARM_UP: u32 = 3 * 24 * 60 + 60;
/// One scrape interval and one evaluation interval of the suite.
const SLACK: u32 = 2;

/// A scenario and what it must show: (minute, tier, firing). Each expectation is checked
/// against the exact reference before promtool runs, so a suite cannot pass by checking the
/// wrong moment; promtool then holds Prometheus's evaluation to the reference at those minutes.
struct Proof {
    scenario: Scenario,
    expect: Vec<(u32, Tier, bool)>,
}

fn proof(name: String, phases: Vec<Phase>, expect: Vec<(u32, Tier, bool)>) -> Proof {
    let checks = expect.iter().map(|(minute, _, _)| *minute).collect();
    Proof {
        scenario: Scenario {
            name,
            phases,
            checks,
        },
        expect,
    }
}

/// A burn just above the tier's first factor fires within the workbook's detection time (long
/// window × factor / burn), not 10 minutes before, and resolves once the burn stops and the
/// tier's short windows have passed.
fn detection_and_reset(period: u32, tier: Tier) -> Proof {
    let conditions = tier.conditions();
    let first = conditions[0];
    let factor = first.factor(period);
    let burn = factor * 1.05;
    let detection = f64::from(first.long.minutes) * factor / burn;
    let burn_ends = WARM_UP + detection.ceil() as u32 + 5;
    let longest_short = conditions.iter().map(|c| c.short.minutes).max().unwrap();
    proof(
        format!(
            "{period}d {}: a {burn:.3}x burn fires within {detection:.1}m (+{SLACK}m) and resolves {longest_short}m (+{SLACK}m) after it stops",
            tier.name()
        ),
        vec![
            Phase {
                minutes: WARM_UP,
                burn: 0.0,
            },
            Phase {
                minutes: burn_ends - WARM_UP,
                burn,
            },
            Phase {
                minutes: longest_short + 3 * SLACK,
                burn: 0.0,
            },
        ],
        vec![
            (WARM_UP + detection as u32 - 10, tier, false),
            (WARM_UP + detection.ceil() as u32 + SLACK, tier, true),
            (burn_ends + longest_short + SLACK, tier, false),
        ],
    )
}

/// Every request failing pages within the workbook's detection time.
fn outage(slo: &CompiledSlo) -> Proof {
    let burn = 1.0 / slo.error_budget();
    let detection = 60.0 * Tier::Page.conditions()[0].factor(slo.period_days) / burn;
    proof(
        format!(
            "{}d page: a total outage pages within {detection:.2}m (+{SLACK}m)",
            slo.period_days
        ),
        vec![
            Phase {
                minutes: WARM_UP,
                burn: 0.0,
            },
            Phase { minutes: 10, burn },
        ],
        vec![
            (WARM_UP - 1, Tier::Page, false),
            (WARM_UP + detection.ceil() as u32 + SLACK, Tier::Page, true),
        ],
    )
}

/// Spending the budget exactly over the period alerts neither tier, over four days.
fn steady_one_x(period: u32) -> Proof {
    let four_days = 4 * 24 * 60;
    proof(
        format!("{period}d page and ticket: a steady 1x burn never alerts"),
        vec![Phase {
            minutes: four_days,
            burn: 1.0,
        }],
        (1..=16)
            .flat_map(|i| Tier::ALL.map(|tier| (i * four_days / 16, tier, false)))
            .collect(),
    )
}

/// The SLO of a scenario: tier scenarios run with only that tier enabled, so an alert of the
/// other tier near its own threshold cannot blur what the scenario proves.
fn variant(period: u32, only: Option<Tier>) -> CompiledSlo {
    let mut spec = ratio_spec(99.9, period);
    if let Some(tier) = only {
        spec.alerting.page.disabled = tier != Tier::Page;
        spec.alerting.ticket.disabled = tier != Tier::Ticket;
    }
    let suffix = only.map_or("all", Tier::name);
    compile("shop", &format!("api-{period}d-{suffix}"), &spec).unwrap()
}

#[test]
fn promtool_unit_tests_prove_detection_and_reset() {
    let dir = tempfile::tempdir().unwrap();
    // One thread per period: the suites are independent and CPU-bound (promtool and the
    // reference model evaluate days of samples), and this test was the slowest of its binary.
    std::thread::scope(|scope| {
        for period in [7, 30, 90] {
            let dir = dir.path();
            scope.spawn(move || prove_period(period, dir));
        }
    });
}

fn prove_period(period: u32, dir: &std::path::Path) {
    let page_only = variant(period, Some(Tier::Page));
    let suites = [
        (
            page_only.clone(),
            vec![detection_and_reset(period, Tier::Page), outage(&page_only)],
        ),
        (
            variant(period, Some(Tier::Ticket)),
            vec![detection_and_reset(period, Tier::Ticket)],
        ),
        (variant(period, None), vec![steady_one_x(period)]),
    ];
    for (slo, proofs) in suites {
        for proof in &proofs {
            for &(minute, tier, firing) in &proof.expect {
                let reference = reference_firing(&slo, &proof.scenario.phases, minute);
                assert_eq!(
                    reference.contains(&tier),
                    firing,
                    "{}: the reference disagrees at minute {minute}",
                    proof.scenario.name
                );
            }
        }
        let group = slo.rule_group();
        let rules = format!("{}.rules.json", slo.name);
        let suite = format!("{}.test.json", slo.name);
        std::fs::write(
            dir.join(&rules),
            serde_json::json!({ "groups": [group] }).to_string(),
        )
        .unwrap();
        let scenarios: Vec<Scenario> = proofs.into_iter().map(|p| p.scenario).collect();
        std::fs::write(
            dir.join(&suite),
            promtool_suite(&slo, &group, &rules, &scenarios).to_string(),
        )
        .unwrap();
        let (ok, output) = promtool(&["test", "rules", &suite], dir);
        assert!(ok, "promtool test rules failed for {}:\n{output}", slo.name);
        for scenario in &scenarios {
            println!("promtool test rules passed: {}", scenario.name);
        }
    }
}

fn bulwark(args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(bulwark_e2e::operator::bulwark_binary().unwrap())
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn offline_render_of_the_example_passes_promtool() {
    let (ok, stdout, stderr) = bulwark(&["slo", "render", "-f", "examples/slo.yaml"], "");
    assert!(ok, "bulwark slo render failed: {stderr}");
    let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(&stdout).unwrap();
    let kinds: Vec<&str> = documents
        .iter()
        .filter_map(|d| d["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        ["PrometheusRule", "ConfigMap", "PrometheusRule", "ConfigMap"]
    );
    let groups: Vec<serde_json::Value> = documents
        .iter()
        .filter(|d| d["kind"] == "PrometheusRule")
        .flat_map(|d| d["spec"]["groups"].as_array().cloned().unwrap())
        .collect();
    let (ok, output) = check_rules(&serde_json::json!(groups));
    assert!(ok && output.contains("SUCCESS: 7 rules found"), "{output}");

    let (ok, _, stderr) = bulwark(
        &["slo", "render", "-f", "-"],
        "apiVersion: bulwark.dev/v1alpha1\nkind: ServiceLevelObjective\nmetadata: {name: bad}\nspec:\n  service: api\n  objective: 99.9\n  indicator: {ratio: {errors: 'x{code=~\"5..\"', total: x}}\n",
    );
    assert!(!ok);
    assert!(
        stderr.contains(
            "spec.indicator.ratio.errors: column 14: unexpected end of input inside braces"
        ),
        "{stderr}"
    );
}

#[test]
fn openslo_import_converts_or_names_what_it_cannot() {
    let openslo = r#"apiVersion: openslo/v1
kind: SLO
metadata: {name: checkout}
spec:
  service: checkout
  timeWindow: [{duration: 28d, isRolling: true}]
  budgetingMethod: Occurrences
  objectives: [{target: 0.995}]
  indicator:
    metadata: {name: checkout-errors}
    spec:
      ratioMetric:
        counter: true
        bad: {metricSource: {type: Prometheus, spec: {query: 'http_requests_total{code=~"5.."}'}}}
        total: {metricSource: {type: Prometheus, spec: {query: 'http_requests_total'}}}
"#;
    let (ok, stdout, stderr) = bulwark(&["slo", "import", "-f", "-", "-n", "shop"], openslo);
    assert!(ok, "{stderr}");
    let slo: bulwark_crds::slo::ServiceLevelObjective = serde_saphyr::from_str(&stdout).unwrap();
    assert_eq!(slo.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(
        (slo.spec.objective, slo.spec.period.as_str()),
        (99.5, "28d")
    );
    // The conversion renders: it is a usable SLO, not just valid YAML.
    let (ok, _, stderr) = bulwark(&["slo", "render", "-f", "-"], &stdout);
    assert!(ok, "{stderr}");

    let unsupported = openslo.replace(
        "budgetingMethod: Occurrences",
        "budgetingMethod: Timeslices\n  alertPolicies: [fast-burn]",
    );
    let (ok, stdout, stderr) = bulwark(&["slo", "import", "-f", "-"], &unsupported);
    assert!(!ok && stdout.is_empty());
    for wanted in [
        "spec.budgetingMethod: Timeslices is not supported",
        "spec.alertPolicies: not supported",
    ] {
        assert!(stderr.contains(wanted), "{wanted:?} missing from {stderr}");
    }
}
