//! DR drills end to end, with real faults on a three-instance synchronous DatabaseCluster run by
//! the chart's operator: a run whose guard names a missing SLO is Skipped with nothing injected;
//! an SLO (real Prometheus, synthetic exporter) that starts burning mid-drill aborts the run
//! within two guard intervals and rolls it back, and the next run is Skipped at the gate;
//! a hand-made PrimaryFrozen run holds the target while a DrillSchedule with a seconds field
//! starts its first run on time, which waits for the target (one active run per target); both
//! end Succeeded with their RTO measured and no acknowledged write lost, the fault rolled back
//! and the lock released; ticks during a run start nothing (Forbid); the history limit holds;
//! and the report metrics move. Then, on another cluster, the operator is SIGKILLed as each
//! phase is recorded; on a third, a zone outage, a switchover and a partition of the primary are
//! measured through a DNS name as a client of that name sees it, then a slow enactor and an
//! outage of a zone's server (BIND9 in a pod) on DnsEndpoints. Local control plane only (real
//! instance pods).

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use bulwark_controllers::dns::provider::DnsProvider;
use bulwark_controllers::slo::{prometheus_rule_name, prometheus_rule_resource};
use bulwark_crds::dns::{DnsEndpoint, RecordType};
use bulwark_crds::drills::{DrillRun, DrillSchedule};
use bulwark_crds::postgres::DatabaseCluster;
use bulwark_crds::slo::ServiceLevelObjective;
use bulwark_e2e::bind::{Bind, BindPod};
use bulwark_e2e::dns::{apply_endpoint, create_zone, create_zone_at};
use bulwark_e2e::eventually;
use bulwark_e2e::postgres::{DatabaseTest, container_of, events, three_synchronous_instances};
use bulwark_e2e::process::free_port;
use bulwark_e2e::slo::{
    ERRORS_SELECTOR, Exporter, Prometheus, TOTAL_SELECTOR, install_prometheus_rule_crd,
};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

const DELAY: Duration = Duration::from_secs(2);
const SCHEDULE_LABEL: &str = "bulwark.dev/drill-schedule";
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

fn drill_run(name: &str, spec: Value) -> DrillRun {
    serde_json::from_value(json!({
        "apiVersion": "bulwark.dev/v1alpha1", "kind": "DrillRun",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("a valid DrillRun")
}

/// Waits for `name` to complete; its status.
async fn completed(runs: &Api<DrillRun>, name: &str, within: Duration) -> Value {
    eventually(within, &format!("DrillRun {name} Completed"), || async {
        let status = serde_json::to_value(runs.get(name).await.ok()?.status).ok()?;
        (status["phase"] == "Completed").then_some(status)
    })
    .await
    .unwrap()
}

/// Creates the run `name` against the cluster `db` and waits for it to complete; its status.
async fn run_on_db(runs: &Api<DrillRun>, name: &str, mut spec: Value, within: Duration) -> Value {
    spec["target"] = json!({"kind": "DatabaseCluster", "name": "db"});
    runs.create(&PostParams::default(), &drill_run(name, spec))
        .await
        .unwrap();
    completed(runs, name, within).await
}

/// Runs `fault` on `db` for `duration` with the write probe also going through the DNS name
/// of DnsEndpoint `db`, and waits for it to complete; its status.
async fn run_on_db_through_dns(
    runs: &Api<DrillRun>,
    name: &str,
    fault: &str,
    duration: &str,
    max_rto: &str,
) -> Value {
    let spec = json!({
        "scenario": {"fault": fault, "duration": duration},
        "dnsProbe": {"endpoint": "db"},
        "success": {"maxRto": max_rto},
    });
    run_on_db(runs, name, spec, Duration::from_secs(300)).await
}

/// Stops a schedule from starting more runs.
async fn suspend(schedules: &Api<DrillSchedule>, name: &str) {
    schedules
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": true}})),
        )
        .await
        .unwrap();
}

/// The runs that have left Pending and not yet Completed: the ones that may hold a target.
fn past_pending(runs: &[DrillRun]) -> Vec<String> {
    runs.iter()
        .filter(|r| {
            let phase = r.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, None | Some("Pending") | Some("Completed"))
        })
        .map(|r| r.metadata.name.clone().unwrap())
        .collect()
}

fn phases(status: &Value) -> Vec<String> {
    status["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["phase"].as_str().unwrap().to_string())
        .collect()
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

/// A drill that ran to its end: every phase in order, rolled back, judged on measurements.
fn assert_succeeded(name: &str, status: &Value) {
    assert_eq!(status["result"], "Succeeded", "{name}: {status:#}");
    assert_eq!(
        phases(status),
        [
            "Gating",
            "Injecting",
            "Observing",
            "RollingBack",
            "RollingBack",
            "Completed"
        ],
        "{name}: the second RollingBack entry is the fault seen gone"
    );
    assert_eq!(status["lostWrites"], 0, "{name}: {status:#}");
    assert!(
        status["writes"]["acknowledged"].as_u64().unwrap() > 0,
        "{name}: {status:#}"
    );
    let rto = status["rtoSeconds"]
        .as_f64()
        .expect("an outage was measured");
    assert!(rto > 0.0 && rto < 60.0, "{name}: RTO {rto}");
    assert_eq!(condition(status, "RolledBack")["status"], "True", "{name}");
    assert_eq!(condition(status, "Succeeded")["status"], "True", "{name}");
    for field in ["injectedAt", "rolledBackAt", "completedAt", "victim"] {
        assert!(status[field].is_string(), "{name}: no {field}: {status:#}");
    }
}

#[tokio::test]
async fn drills_are_gated_measured_rolled_back_and_one_at_a_time_per_target() {
    // The guards' SLO: a real Prometheus scraping a synthetic exporter whose error ratio the
    // test sets, read by the operator's SLO controller every second.
    let exporter = Exporter::start("api", 200.0).unwrap();
    let prometheus_port = free_port().unwrap();
    // The pods' gateway is known once the control plane runs.
    let _ = bulwark_e2e::cluster();
    let prometheus_host = bulwark_e2e::host_address_for_pods().unwrap_or([127, 0, 0, 1].into());
    let prometheus_url = format!("slo.prometheusURL=http://{prometheus_host}:{prometheus_port}");
    let Some(test) =
        DatabaseTest::start_with("drills", 1, &[&prometheus_url, "slo.statusInterval=1s"]).await
    else {
        return;
    };
    let db = test.create(&three_synchronous_instances("db", DELAY)).await;
    let DatabaseTest {
        client,
        ns,
        release,
        ..
    } = test;
    install_prometheus_rule_crd(&client).await.unwrap();
    let slos: Api<ServiceLevelObjective> = Api::namespaced(client.clone(), &ns);
    let slo: ServiceLevelObjective = serde_json::from_value(json!({
        "apiVersion": "bulwark.dev/v1alpha1", "kind": "ServiceLevelObjective",
        "metadata": {"name": "checkout"},
        "spec": {
            "service": "checkout", "objective": 99.9, "period": "30d",
            "indicator": {"ratio": {"errors": ERRORS_SELECTOR, "total": TOTAL_SELECTOR}},
        },
    }))
    .unwrap();
    slos.create(&PostParams::default(), &slo).await.unwrap();
    // It also scrapes the operator, for the drill dashboard's queries.
    let operator = release.pods(&client).await.unwrap().remove(0);
    let operator_metrics = format!("{}:8080", operator.status.unwrap().pod_ip.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let prometheus = Prometheus::start(
        dir.path(),
        prometheus_port,
        &[exporter.address.clone(), operator_metrics],
        "1s",
    )
    .await
    .unwrap();
    let rules: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &prometheus_rule_resource());
    let rule = eventually(
        Duration::from_secs(60),
        "checkout's PrometheusRule",
        || async { rules.get(&prometheus_rule_name("checkout")).await.ok() },
    )
    .await
    .unwrap();
    prometheus
        .load_rules(&rule.data["spec"]["groups"])
        .await
        .unwrap();
    let burn_5m = || async {
        let status = slos.get("checkout").await.ok()?.status?;
        status
            .burn_rates
            .iter()
            .find(|b| b.window == "5m")
            .map(|b| b.burn_rate)
    };
    let live = eventually(
        Duration::from_secs(60),
        "checkout's live 5m burn rate",
        || async { burn_5m().await.filter(|b| *b < 1.0) },
    )
    .await;
    if let Err(error) = live {
        let status = slos.get("checkout").await.unwrap().status;
        panic!("{error}: {status:#?}");
    }

    let healthy = db.healthy(Duration::from_secs(180)).await.unwrap();
    let runs: Api<DrillRun> = Api::namespaced(client.clone(), &ns);
    let schedules: Api<DrillSchedule> = Api::namespaced(client.clone(), &ns);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let lock = "drill-lock-databasecluster-db";

    // A guard nothing can vouch for: Skipped at the gate, nothing injected.
    let crash = json!({"fault": "PrimaryCrash", "duration": "8s"});
    let skipped = run_on_db(
        &runs,
        "unguarded",
        json!({
            "scenario": crash,
            "guards": [{"slo": "inventory", "maxBurnRate": 14.4}],
        }),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(skipped["result"], "Skipped", "{skipped:#}");
    assert!(
        skipped["message"]
            .as_str()
            .unwrap()
            .contains("ServiceLevelObjective inventory does not exist"),
        "{skipped:#}"
    );
    assert_eq!(phases(&skipped), ["Gating", "Completed"]);
    assert_eq!(
        condition(&skipped, "RolledBack")["reason"],
        "NothingInjected"
    );
    assert!(skipped["injectedAt"].is_null() && skipped["victim"].is_null());
    assert!(
        events(&client, &ns, "unguarded", "FaultInjected", "Warning")
            .await
            .is_empty()
    );
    let after_skip = db.status().await;
    assert_eq!(
        after_skip["epoch"], healthy["epoch"],
        "no failover happened"
    );
    eventually(Duration::from_secs(10), "the lock released", || async {
        leases.get_opt(lock).await.unwrap().is_none().then_some(())
    })
    .await
    .unwrap();

    // The SLO starts burning mid-drill: aborted and rolled back within two guard intervals.
    let guard = json!([{"slo": "checkout", "window": "5m", "maxBurnRate": 2.0}]);
    runs.create(
        &PostParams::default(),
        &drill_run(
            "burning",
            json!({
                "target": {"kind": "DatabaseCluster", "name": "db"},
                "scenario": {"fault": "PrimaryFrozen", "duration": "120s"},
                "guards": guard,
                "guardInterval": "2s",
            }),
        ),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(30), "burning is Observing", || async {
        let run = runs.get("burning").await.ok()?;
        (run.status?.phase.as_deref() == Some("Observing")).then_some(())
    })
    .await
    .unwrap();
    exporter.set_error_ratio(0.05);
    let crossed = eventually(
        Duration::from_secs(60),
        "checkout burning above 2x",
        || async { burn_5m().await.filter(|b| *b > 2.0) },
    )
    .await
    .unwrap();
    let crossed_at = std::time::Instant::now();
    eventually(Duration::from_secs(10), "burning aborted", || async {
        let status = runs.get("burning").await.ok()?.status?;
        (status.phase.as_deref() != Some("Observing")).then_some(())
    })
    .await
    .unwrap();
    let abort_after = crossed_at.elapsed();
    let aborted = completed(&runs, "burning", Duration::from_secs(180)).await;
    assert_eq!(aborted["result"], "Aborted", "{aborted:#}");
    let message = aborted["message"].as_str().unwrap();
    assert!(
        message.starts_with("guard: checkout burns its budget at")
            && message.contains("over 5m, above maxBurnRate 2"),
        "{aborted:#}"
    );
    assert!(aborted["guardReadings"][0]["burnRate"].as_f64().unwrap() > 2.0);
    assert!(
        abort_after <= Duration::from_secs(4),
        "aborted {abort_after:?} after the SLO status showed {crossed:.1}x: two guard intervals are 4s"
    );
    assert_eq!(condition(&aborted, "RolledBack")["status"], "True");
    let timeline = aborted["timeline"].as_array().unwrap();
    let abort_recorded = timeline
        .iter()
        .find(|e| e["phase"] == "RollingBack")
        .unwrap();
    let at = |text: &Value| text.as_str().unwrap().parse::<Timestamp>().unwrap();
    let rollback_took = at(&aborted["rolledBackAt"]).duration_since(at(&abort_recorded["time"]));
    println!(
        "guard crossing ({crossed:.1}x) seen in SLO status → run aborted: {:.2}s; abort recorded → fault rolled back: {:.3}s",
        abort_after.as_secs_f64(),
        rollback_took.as_secs_f64()
    );

    // Still burning: the next run is Skipped at the gate, naming the SLO and its value.
    let skipped_burning = run_on_db(
        &runs,
        "while-burning",
        json!({
            "scenario": crash,
            "guards": guard,
        }),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(skipped_burning["result"], "Skipped", "{skipped_burning:#}");
    assert!(
        skipped_burning["message"]
            .as_str()
            .unwrap()
            .starts_with("guard: checkout burns its budget at"),
        "{skipped_burning:#}"
    );
    assert!(skipped_burning["victim"].is_null());
    exporter.set_error_ratio(0.0);
    let before_frozen = db.healthy(Duration::from_secs(120)).await.unwrap();

    // A hand-made freeze holds the target; a schedule's first run waits for it.
    runs.create(
        &PostParams::default(),
        &drill_run(
            "frozen",
            json!({
                "target": {"kind": "DatabaseCluster", "name": "db"},
                "scenario": {"fault": "PrimaryFrozen", "duration": "15s"},
                "success": {"maxRto": "60s"},
            }),
        ),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(30), "frozen is Observing", || async {
        let run = runs.get("frozen").await.ok()?;
        (run.status?.phase.as_deref() == Some("Observing")).then_some(())
    })
    .await
    .unwrap();
    let schedule: DrillSchedule = serde_json::from_value(json!({
        "apiVersion": "bulwark.dev/v1alpha1", "kind": "DrillSchedule",
        "metadata": {"name": "often"},
        "spec": {
            "schedule": "*/10 * * * * *",
            "successfulRunsHistoryLimit": 1,
            "runTemplate": {
                "target": {"kind": "DatabaseCluster", "name": "db"},
                "scenario": crash,
                "success": {"maxRto": "60s", "maxLostWrites": 0},
            },
        },
    }))
    .unwrap();
    schedules
        .create(&PostParams::default(), &schedule)
        .await
        .unwrap();

    // Until both runs end: never two past Pending at once on one target, and the schedule's
    // first run is created on its tick.
    let scheduled_first = Mutex::new(None);
    let seen_active = Mutex::new(BTreeSet::new());
    eventually(
        Duration::from_secs(300),
        "frozen and the first scheduled run Completed",
        || async {
            let all = runs.list(&ListParams::default()).await.ok()?.items;
            let holding = past_pending(&all);
            assert!(holding.len() <= 1, "two runs hold db: {holding:?}");
            seen_active.lock().unwrap().extend(holding);
            let mut scheduled: Vec<&DrillRun> = all
                .iter()
                .filter(|r| {
                    r.metadata
                        .labels
                        .as_ref()
                        .is_some_and(|l| l.contains_key(SCHEDULE_LABEL))
                })
                .collect();
            scheduled.sort_by_key(|r| r.metadata.name.clone());
            if let Some(first) = scheduled.first() {
                scheduled_first
                    .lock()
                    .unwrap()
                    .get_or_insert_with(|| (*first).clone());
            }
            let done = |r: &DrillRun| {
                r.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Completed")
            };
            let frozen_done = all
                .iter()
                .any(|r| r.metadata.name.as_deref() == Some("frozen") && done(r));
            (frozen_done && scheduled.first().is_some_and(|r| done(r))).then_some(())
        },
    )
    .await
    .unwrap();
    // The schedule must not start another while we read the results.
    suspend(&schedules, "often").await;

    let frozen = completed(&runs, "frozen", Duration::from_secs(1)).await;
    assert_succeeded("frozen", &frozen);
    assert_eq!(
        frozen["victim"], before_frozen["primary"],
        "the primary was frozen"
    );
    let first = scheduled_first
        .into_inner()
        .unwrap()
        .expect("the schedule created a run");
    let seen_active = seen_active.into_inner().unwrap();
    let first_name = first.metadata.name.clone().unwrap();
    let tick: i64 = first_name.strip_prefix("often-").unwrap().parse().unwrap();
    let created = first.metadata.creation_timestamp.unwrap().0.as_second();
    assert!(
        (0..=3).contains(&(created - tick)),
        "{first_name} created {}s after its tick",
        created - tick
    );
    assert_eq!(tick % 10, 0, "a tick of */10 seconds");
    assert!(seen_active.contains("frozen") && seen_active.contains(&first_name));
    let crashed = completed(&runs, &first_name, Duration::from_secs(1)).await;
    assert_succeeded(&first_name, &crashed);
    assert_ne!(
        crashed["victim"], frozen["victim"],
        "the frozen primary was failed over, so the crash hit its successor"
    );
    // It waited for the target: it held it only once the frozen run had let go.
    assert!(at(&crashed["timeline"][0]["time"]) >= at(&frozen["completedAt"]));
    // Each fault went in once.
    for run in ["frozen", first_name.as_str()] {
        assert_eq!(
            events(&client, &ns, run, "FaultInjected", "Warning")
                .await
                .len(),
            1,
            "{run}"
        );
    }
    // Ticks while the scheduled run was active started nothing.
    let forbidden = events(&client, &ns, "often", "Forbidden", "Normal").await;
    assert!(!forbidden.is_empty(), "a tick came while {first_name} ran");
    assert!(forbidden[0].contains(&first_name), "{forbidden:?}");

    // The history limit holds once the schedule's runs settle (a tick just before the suspend
    // may have started one more).
    eventually(
        Duration::from_secs(120),
        "one Succeeded run kept",
        || async {
            let scheduled = runs
                .list(&ListParams::default().labels(&format!("{SCHEDULE_LABEL}=often")))
                .await
                .ok()?
                .items;
            let all_done = scheduled
                .iter()
                .all(|r| r.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Completed"));
            (all_done && scheduled.len() <= 1).then_some(())
        },
    )
    .await
    .unwrap();
    // Nothing left behind: the lock released, the cluster healthy with its old primary back as
    // a replica.
    if let Err(error) = eventually(Duration::from_secs(10), "the lock released", || async {
        leases.get_opt(lock).await.unwrap().is_none().then_some(())
    })
    .await
    {
        let holder = leases
            .get_opt(lock)
            .await
            .unwrap()
            .and_then(|l| l.spec?.holder_identity);
        let phases: Vec<(String, Option<String>)> = runs
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|r| (r.name_any(), r.status.and_then(|s| s.phase)))
            .collect();
        panic!("{error}: held by {holder:?}; runs {phases:?}");
    }
    db.healthy(Duration::from_secs(60)).await.unwrap();
    let status = serde_json::to_value(schedules.get("often").await.unwrap().status).unwrap();
    assert!(status["lastSuccessfulTime"].is_string(), "{status:#}");
    assert!(status["lastScheduleTime"].is_string(), "{status:#}");

    let metrics = release.metrics(&client).await.unwrap();
    let value = |prefix: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    // Runs stopped unjudged carry why, and the SLO whose guard stopped them.
    let runs_total = |guard: &str, reason: &str, result: &str, scenario: &str| {
        value(&format!(
            r#"bulwark_drill_runs_total{{guard="{guard}",reason="{reason}",result="{result}",scenario="{scenario}"}}"#
        ))
    };
    assert!(runs_total("", "", "Succeeded", "PrimaryCrash") >= 1.0);
    assert_eq!(runs_total("", "", "Succeeded", "PrimaryFrozen"), 1.0);
    assert_eq!(
        runs_total("inventory", "GuardUnreadable", "Skipped", "PrimaryCrash"),
        1.0
    );
    assert_eq!(
        runs_total("checkout", "GuardCrossed", "Skipped", "PrimaryCrash"),
        1.0
    );
    assert_eq!(
        runs_total("checkout", "GuardCrossed", "Aborted", "PrimaryFrozen"),
        1.0
    );
    let target = format!(r#"{{kind="DatabaseCluster",namespace="{ns}",target="db"}}"#);
    assert_eq!(
        value(&format!("bulwark_drill_last_lost_writes{target}")),
        0.0
    );
    assert!(value(&format!("bulwark_drill_last_rto_seconds{target}")) > 0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        now - value(&format!(
            "bulwark_drill_last_success_timestamp_seconds{target}"
        )) < 300.0
    );
    assert_eq!(
        value(&format!("bulwark_drill_last_max_rto_seconds{target}")),
        60.0
    );

    // Every query of the chart's drill dashboard answers from the operator's metrics.
    let board: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/bulwark/dashboards/drills.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let queries = bulwark_controllers::slo::dashboard::queries(&board);
    assert!(queries.len() >= 6, "{queries:?}");
    for query in &queries {
        eventually(Duration::from_secs(30), query, || async {
            prometheus
                .query(query)
                .await
                .ok()
                .filter(|answer| !answer.is_empty())
        })
        .await
        .unwrap();
    }
    println!(
        "drills: frozen RTO {}s, crash RTO {}s, writes {} / {}",
        frozen["rtoSeconds"], crashed["rtoSeconds"], frozen["writes"], crashed["writes"]
    );
}

/// The operator SIGKILLed as each phase is recorded, in turn: the restarted operator resumes
/// from the persisted phase; a run whose fault may be in place is rolled back (Aborted,
/// `OperatorRestarted`) and never injected again, one killed before that goes on; either way the
/// fault is gone, the lock released and the cluster healthy. Then a schedule's ticks missed
/// while the operator was scaled to zero run once, and Replace ends the old run first.
#[tokio::test]
async fn an_operator_killed_at_any_step_rolls_back_and_never_injects_twice() {
    let Some(test) = DatabaseTest::start("drills-killed", 1).await else {
        return;
    };
    let db = test.create(&three_synchronous_instances("db", DELAY)).await;
    // One instance: its zone holds every instance, so a zone outage would leave nothing.
    let single: DatabaseCluster = serde_json::from_value(json!({
        "apiVersion": "bulwark.dev/v1alpha1", "kind": "DatabaseCluster",
        "metadata": {"name": "single"},
        "spec": {"instances": 1, "storage": {"size": "1Gi"}},
    }))
    .unwrap();
    let single = test.create(&single).await;
    let DatabaseTest {
        client,
        ns,
        release,
        ..
    } = test;
    let runs: Api<DrillRun> = Api::namespaced(client.clone(), &ns);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let schedules: Api<DrillSchedule> = Api::namespaced(client.clone(), &ns);

    // Bad input: what admission can see is refused there, the rest is a Condition naming it.
    let template = json!({
        "target": {"kind": "DatabaseCluster", "name": "db"},
        "scenario": {"fault": "PrimaryCrash", "duration": "5s"},
    });
    let bad_schedule = |name: &str, schedule: &str, zone: &str| -> DrillSchedule {
        serde_json::from_value(json!({
            "apiVersion": "bulwark.dev/v1alpha1", "kind": "DrillSchedule",
            "metadata": {"name": name},
            "spec": {"schedule": schedule, "timeZone": zone, "runTemplate": template},
        }))
        .unwrap()
    };
    let refused = schedules
        .create(
            &PostParams::default(),
            &bad_schedule("four-fields", "* * * *", "UTC"),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("schedule needs 5 fields"), "{refused}");
    for (name, schedule, zone, expected) in [
        (
            "minute-61",
            "61 * * * *",
            "UTC",
            "field 1 (minute, 0-59) \"61\"",
        ),
        (
            "on-mars",
            "0 9 * * *",
            "Mars/Olympus_Mons",
            "is not an IANA time zone name",
        ),
    ] {
        schedules
            .create(&PostParams::default(), &bad_schedule(name, schedule, zone))
            .await
            .unwrap();
        let message = eventually(Duration::from_secs(30), name, || async {
            let status = schedules.get(name).await.ok()?.status?;
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
            (ready.reason == "InvalidSchedule").then(|| ready.message.clone())
        })
        .await
        .unwrap();
        assert!(message.contains(expected), "{name}: {message}");
        let runs_of = ListParams::default().labels(&format!("bulwark.dev/drill-schedule={name}"));
        assert!(runs.list(&runs_of).await.unwrap().items.is_empty());
    }
    let run = drill_run(
        "immutable",
        json!({
            "target": {"kind": "DatabaseCluster", "name": "missing"},
            "scenario": {"fault": "PrimaryCrash", "duration": "5s"},
        }),
    );
    runs.create(&PostParams::default(), &run).await.unwrap();
    let changed = runs
        .patch(
            "immutable",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"scenario": {"duration": "50s"}}})),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        changed.contains("a DrillRun cannot change once created"),
        "{changed}"
    );
    let missing = completed(&runs, "immutable", Duration::from_secs(30)).await;
    assert_eq!(missing["result"], "Skipped");
    assert_eq!(missing["message"], "DatabaseCluster missing does not exist");
    single.healthy(Duration::from_secs(180)).await.unwrap();
    runs.create(
        &PostParams::default(),
        &drill_run(
            "whole-zone",
            json!({
                "target": {"kind": "DatabaseCluster", "name": "single"},
                "scenario": {"fault": "ZoneOutage", "duration": "5s"},
            }),
        ),
    )
    .await
    .unwrap();
    let whole_zone = completed(&runs, "whole-zone", Duration::from_secs(60)).await;
    assert_eq!(whole_zone["result"], "Skipped", "{whole_zone:#}");
    let message = whole_zone["message"].as_str().unwrap();
    assert!(
        message.starts_with("every instance of DatabaseCluster single is in zone ")
            && message.ends_with("its outage would leave none to fail over to"),
        "{message}"
    );
    assert!(
        events(&client, &ns, "whole-zone", "FaultInjected", "Warning")
            .await
            .is_empty()
    );
    single
        .api
        .delete("single", &Default::default())
        .await
        .unwrap();
    for phase in ["Gating", "Injecting", "Observing", "RollingBack"] {
        let before = db.healthy(Duration::from_secs(180)).await.unwrap();
        let name = format!("killed-in-{}", phase.to_lowercase());
        let updates = watcher(
            runs.clone(),
            watcher::Config::default().fields(&format!("metadata.name={name}")),
        )
        .applied_objects();
        let mut updates = std::pin::pin!(updates);
        runs.create(
            &PostParams::default(),
            &drill_run(
                &name,
                json!({
                    "target": {"kind": "DatabaseCluster", "name": "db"},
                    "scenario": {"fault": "PrimaryFrozen", "duration": "5s"},
                    "success": {"maxRto": "60s"},
                }),
            ),
        )
        .await
        .unwrap();
        let operator = release.pods(&client).await.unwrap().remove(0);
        tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(Ok(run)) = updates.next().await {
                let status = run.status.unwrap_or_default();
                assert_ne!(
                    status.phase.as_deref(),
                    Some("Completed"),
                    "{name} ended before {phase}"
                );
                if status.phase.as_deref() == Some(phase) {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{name} reached {phase}"));
        bulwark_chaos::node_agent::crash(&[container_of(&operator)]).unwrap();
        let at_kill = runs.get(&name).await.unwrap().status.unwrap();

        let status = completed(&runs, &name, Duration::from_secs(300)).await;
        let injections = events(&client, &ns, &name, "FaultInjected", "Warning").await;
        println!(
            "killed at {phase} (status then {:?}): {} after {} injection(s): {}",
            at_kill.phase,
            status["result"],
            injections.len(),
            status["message"]
        );
        assert!(
            injections.len() <= 1,
            "{name} injected twice: {injections:?}"
        );
        match phase {
            // Nothing was in place: the next operator gated and drove the run itself.
            "Gating" if at_kill.phase.as_deref() == Some("Gating") => {
                assert_succeeded(&name, &status);
                assert_eq!(injections.len(), 1);
            }
            // The fault may have been in place: rolled back without a second injection.
            _ => {
                assert_eq!(status["result"], "Aborted", "{name}: {status:#}");
                assert!(
                    status["message"]
                        .as_str()
                        .unwrap()
                        .contains("the operator that"),
                    "{name}: {status:#}"
                );
                assert!(status["rolledBackAt"].is_string(), "{name}: {status:#}");
                assert_eq!(condition(&status, "RolledBack")["status"], "True");
            }
        }
        eventually(Duration::from_secs(10), "the lock released", || async {
            leases
                .get_opt("drill-lock-databasecluster-db")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await
        .unwrap();
        // The frozen primary thawed: every instance ready in one epoch, at most one failover.
        let after = db.healthy(Duration::from_secs(120)).await.unwrap();
        assert!(after["epoch"].as_u64() <= before["epoch"].as_u64().map(|e| e + 1));
        // A fresh operator pod for the next kill: the killed one's next restart would wait out
        // a crash-loop back-off (10 s, then 20 s, 40 s) that measures nothing here.
        pods.delete(
            operator.metadata.name.as_deref().unwrap(),
            &Default::default(),
        )
        .await
        .unwrap();
        eventually(
            Duration::from_secs(60),
            "one fresh operator pod, Ready",
            || async {
                let operators = release.pods(&client).await.ok()?;
                let [fresh] = operators.as_slice() else {
                    return None;
                };
                (fresh.metadata.uid != operator.metadata.uid
                    && fresh
                        .status
                        .as_ref()?
                        .conditions
                        .as_ref()?
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True"))
                .then_some(())
            },
        )
        .await
        .unwrap();
    }

    // The operator pod leading now started after every run above completed: its report gauges
    // were rebuilt from their status, each from the newest run that has its value.
    let mut done: Vec<Value> = runs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|r| r.spec.target.name == "db")
        .map(|r| serde_json::to_value(r.status).unwrap())
        .collect();
    done.sort_by_key(|s| s["completedAt"].as_str().unwrap().to_string());
    let newest = |field: &str| done.iter().rev().find_map(|s| s[field].as_f64());
    let newest_success = done
        .iter()
        .rev()
        .find(|s| s["result"] == "Succeeded")
        .map(|s| {
            let at: Timestamp = s["completedAt"].as_str().unwrap().parse().unwrap();
            at.as_millisecond() as f64 / 1000.0
        });
    let expected = [
        ("bulwark_drill_last_rto_seconds", newest("rtoSeconds")),
        ("bulwark_drill_last_lost_writes", newest("lostWrites")),
        (
            "bulwark_drill_last_success_timestamp_seconds",
            newest_success,
        ),
    ];
    assert!(
        expected[0].1.is_some(),
        "some run measured an RTO: {done:#?}"
    );
    let target = format!(r#"{{kind="DatabaseCluster",namespace="{ns}",target="db"}}"#);
    eventually(
        Duration::from_secs(30),
        "the new leader's report gauges rebuilt from the runs' status",
        || async {
            let metrics = release.metrics(&client).await.ok()?;
            let gauge = |name: &str| -> Option<f64> {
                let prefix = format!("{name}{target} ");
                metrics
                    .lines()
                    .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
            };
            expected
                .iter()
                .all(|(name, value)| match (gauge(name), value) {
                    (Some(shown), Some(value)) => (shown - value).abs() < 0.001,
                    (shown, value) => shown.is_none() && value.is_none(),
                })
                .then_some(())
        },
    )
    .await
    .unwrap();
    println!("report gauges rebuilt by the new leader: {expected:?}");

    // Missed ticks: a schedule every 5 s (its runs Skipped at once by a guard on an SLO that
    // does not exist) while the operator is scaled to zero for 20 s: on its return exactly one
    // run starts for the ticks missed, an Event counts the rest, and the history limit holds.
    let schedule: DrillSchedule = serde_json::from_value(json!({
        "apiVersion": "bulwark.dev/v1alpha1", "kind": "DrillSchedule",
        "metadata": {"name": "every-5s"},
        "spec": {
            "schedule": "*/5 * * * * *",
            "failedRunsHistoryLimit": 1,
            "runTemplate": {
                "target": {"kind": "DatabaseCluster", "name": "db"},
                "scenario": {"fault": "PrimaryCrash", "duration": "5s"},
                "guards": [{"slo": "absent", "maxBurnRate": 1}],
            },
        },
    }))
    .unwrap();
    schedules
        .create(&PostParams::default(), &schedule)
        .await
        .unwrap();
    // Events of one reason aggregate into one, so the runs started are read from the ticks
    // lastScheduleTime passes through.
    let ticks = Mutex::new(BTreeSet::new());
    let started = || async {
        let status = schedules.get("every-5s").await.ok()?.status?;
        let tick = status.last_schedule_time?.0.as_second();
        let mut ticks = ticks.lock().unwrap();
        ticks.insert(tick);
        Some(ticks.iter().copied().collect::<Vec<i64>>())
    };
    eventually(Duration::from_secs(60), "two runs of every-5s", || async {
        started().await.filter(|t| t.len() >= 2)
    })
    .await
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let deployment = deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items[0]
        .metadata
        .name
        .clone()
        .unwrap();
    let scale = |replicas: i32| {
        let deployments = deployments.clone();
        let deployment = deployment.clone();
        async move {
            deployments
                .patch(
                    &deployment,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"replicas": replicas}})),
                )
                .await
                .unwrap();
        }
    };
    scale(0).await;
    eventually(Duration::from_secs(60), "the operator gone", || async {
        release.pods(&client).await.ok()?.is_empty().then_some(())
    })
    .await
    .unwrap();
    let down_at = unix_now();
    let before_down = started().await.unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let up_at = unix_now();
    scale(1).await;
    // The first tick handled after the return is the latest missed one, or a new one.
    let after = eventually(
        Duration::from_secs(90),
        "a run after the downtime",
        || async { started().await.filter(|t| t.len() > before_down.len()) },
    )
    .await
    .unwrap();
    // No tick of the downtime ran but the latest, handled once the operator was back.
    let last_before = *before_down.last().unwrap();
    let first_after = *after.iter().find(|t| **t > last_before).unwrap();
    assert!(
        first_after - last_before >= 20 && first_after >= up_at - 5,
        "the ticks of the downtime {down_at}..{up_at} ran: {after:?}"
    );
    let missed = events(&client, &ns, "every-5s", "MissedTicks", "Warning").await;
    let counted: u64 = missed
        .iter()
        .filter_map(|m| m.split_whitespace().next()?.parse().ok())
        .max()
        .unwrap_or(0);
    assert!(counted >= 3, "20 s down at one tick per 5 s: {missed:?}");
    println!(
        "operator down {}s: one run for the latest missed tick, {missed:?}",
        up_at - down_at
    );
    suspend(&schedules, "every-5s").await;
    eventually(Duration::from_secs(60), "the history limit", || async {
        let kept = runs
            .list(&ListParams::default().labels("bulwark.dev/drill-schedule=every-5s"))
            .await
            .ok()?
            .items;
        let all_done = kept
            .iter()
            .all(|r| r.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Completed"));
        (all_done && kept.len() == 1).then_some(())
    })
    .await
    .unwrap();

    // Replace: the tick after a run began deletes it, which rolls its fault back, and starts
    // the next, which waits for the target meanwhile.
    db.healthy(Duration::from_secs(120)).await.unwrap();
    let schedule: DrillSchedule = serde_json::from_value(json!({
        "apiVersion": "bulwark.dev/v1alpha1", "kind": "DrillSchedule",
        "metadata": {"name": "replacing"},
        "spec": {
            "schedule": "*/20 * * * * *",
            "concurrencyPolicy": "Replace",
            "runTemplate": {
                "target": {"kind": "DatabaseCluster", "name": "db"},
                "scenario": {"fault": "PrimaryFrozen", "duration": "120s"},
            },
        },
    }))
    .unwrap();
    schedules
        .create(&PostParams::default(), &schedule)
        .await
        .unwrap();
    let of_schedule = ListParams::default().labels("bulwark.dev/drill-schedule=replacing");
    let first = eventually(
        Duration::from_secs(60),
        "the first run Observing",
        || async {
            runs.list(&of_schedule)
                .await
                .ok()?
                .items
                .into_iter()
                .find(|r| r.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Observing"))
        },
    )
    .await
    .unwrap();
    let first_name = first.metadata.name.unwrap();
    let second_name = eventually(Duration::from_secs(40), "the next tick's run", || async {
        let all = runs.list(&of_schedule).await.ok()?.items;
        let holding = past_pending(&all);
        assert!(holding.len() <= 1, "two runs hold db: {holding:?}");
        all.into_iter()
            .map(|r| r.metadata.name.unwrap())
            .find(|n| *n != first_name)
    })
    .await
    .unwrap();
    suspend(&schedules, "replacing").await;
    eventually(
        Duration::from_secs(180),
        "the replaced run rolled back and gone",
        || async {
            runs.get_opt(&first_name)
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await
    .unwrap();
    let replaced = events(&client, &ns, "replacing", "Replaced", "Normal").await;
    assert!(
        replaced.iter().any(|m| m.contains(&first_name)),
        "{replaced:?}"
    );
    let deleted = events(&client, &ns, &first_name, "Deleted", "Warning").await;
    assert!(
        !deleted.is_empty(),
        "{first_name} aborted because it was deleted"
    );
    assert_eq!(
        events(&client, &ns, &first_name, "RolledBack", "Normal")
            .await
            .len(),
        1
    );
    runs.delete(&second_name, &Default::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(180), "the second run gone", || async {
        runs.get_opt(&second_name)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await
    .unwrap();
    db.healthy(Duration::from_secs(120)).await.unwrap();
}

/// Seconds since the epoch.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A client that finds the database by a DNS name: a DnsEndpoint follows the cluster's `-rw`
/// Service on a real BIND9. A zone outage (every instance in the primary's zone frozen) fails
/// the cluster over, the planner re-plans the name, and the drill's DNS-resolving write probe
/// measures the outage a client of the name sees, beside the one through the Service; no
/// acknowledged write is lost on either path.
#[tokio::test]
async fn a_zone_outage_is_measured_through_dns_as_a_client_sees_it() {
    let Some(test) = DatabaseTest::start("drills-zone", 1).await else {
        return;
    };
    let db = test.create(&three_synchronous_instances("db", DELAY)).await;
    let DatabaseTest { client, ns, .. } = test;
    let runs: Api<DrillRun> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let bind = Bind::start("drill.test").unwrap();
    create_zone(&client, &ns, "drill", &bind).await.unwrap();
    let endpoint: DnsEndpoint = serde_json::from_value(json!({
        "apiVersion": "bulwark.dev/v1alpha1", "kind": "DnsEndpoint",
        "metadata": {"name": "db"},
        "spec": {
            "zoneRef": "drill", "fqdn": "db.drill.test", "ttl": 5,
            "targets": [{"serviceRef": {"name": "db-rw"}}],
        },
    }))
    .unwrap();
    Api::<DnsEndpoint>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &endpoint)
        .await
        .unwrap();
    let provider = bind.provider();
    // The A records BIND9 serves for `fqdn`.
    let a_records = |fqdn: &'static str| {
        let provider = &provider;
        async move {
            let rrsets = provider.served_records(fqdn).await.ok()?;
            Some(
                rrsets
                    .into_iter()
                    .find(|r| r.record_type == RecordType::A)?
                    .values,
            )
        }
    };
    let answers_with_primary = |primary: String| {
        let pods = &pods;
        async move {
            let address = pods.get(&primary).await.ok()?.status?.pod_ip?;
            (a_records("db.drill.test").await? == [address.clone()]).then_some(address)
        }
    };
    let before = db.healthy(Duration::from_secs(180)).await.unwrap();
    let primary = before["primary"].as_str().unwrap().to_string();
    eventually(
        Duration::from_secs(60),
        "db.drill.test answers with the primary's address",
        || answers_with_primary(primary.clone()),
    )
    .await
    .unwrap();
    let instances = pods
        .list(&ListParams::default().labels("bulwark.dev/cluster=db"))
        .await
        .unwrap()
        .items;
    let zone_of = |name: &str| {
        instances
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .and_then(|p| p.metadata.labels.as_ref()?.get(ZONE_LABEL).cloned())
            .expect("PodTopologyLabels copied the node's zone onto the pod")
    };
    let zone = zone_of(&primary);
    let in_zone: Vec<String> = instances
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .filter(|name| zone_of(name) == zone)
        .collect();

    let status = run_on_db_through_dns(&runs, "zone-outage", "ZoneOutage", "10s", "60s").await;
    assert_succeeded("zone-outage", &status);
    assert_eq!(status["victim"], format!("zone {zone}"), "{status:#}");
    assert_eq!(status["faultedInstances"], json!(in_zone), "{status:#}");
    let dns = &status["dnsProbe"];
    assert_eq!(dns["fqdn"], "db.drill.test", "{status:#}");
    assert_eq!(dns["lostWrites"], 0, "{status:#}");
    let dns_rto = dns["rtoSeconds"]
        .as_f64()
        .expect("the DNS probe saw the outage end");
    let detection = status["detectionSeconds"].as_f64().unwrap();
    assert!((0.0..10.0).contains(&detection), "{status:#}");

    // Rolled back: the zone's instances thawed and back as replicas of the new primary, which
    // the name now answers with.
    let after = db.healthy(Duration::from_secs(180)).await.unwrap();
    let new_primary = after["primary"].as_str().unwrap().to_string();
    assert!(!in_zone.contains(&new_primary), "{after:#}");
    eventually(
        Duration::from_secs(60),
        "db.drill.test answers with the new primary's address",
        || answers_with_primary(new_primary.clone()),
    )
    .await
    .unwrap();
    println!(
        "zone outage of zone {zone} {in_zone:?}: fault injected → first failed write {detection}s; \
         RTO through the Service {}s, through DNS {dns_rto}s; writes {} (Service) / {} (DNS)",
        status["rtoSeconds"], status["writes"], dns["writes"]
    );

    // A switchover drill: the most caught-up replica is promoted through spec.switchoverTo,
    // which the rollback takes back once the drill is over.
    let switched = run_on_db_through_dns(&runs, "switchover", "Switchover", "15s", "30s").await;
    assert_eq!(switched["result"], "Succeeded", "{switched:#}");
    assert_eq!(switched["lostWrites"], 0, "{switched:#}");
    assert_eq!(switched["dnsProbe"]["lostWrites"], 0, "{switched:#}");
    let target = switched["victim"].as_str().unwrap().to_string();
    assert_ne!(
        target, new_primary,
        "a replica was the target: {switched:#}"
    );
    let after = db.healthy(Duration::from_secs(180)).await.unwrap();
    assert_eq!(after["primary"], target.as_str(), "{after:#}");
    let spec = serde_json::to_value(&db.api.get("db").await.unwrap().spec).unwrap();
    assert!(spec["switchoverTo"].is_null(), "taken back: {spec:#}");
    println!(
        "switchover to {target}: RTO through the Service {}s, through DNS {}s",
        switched["rtoSeconds"], switched["dnsProbe"]["rtoSeconds"]
    );

    // A partition: the primary's pod cut off by a NetworkPolicy (new connections) and by its
    // manager (established ones). PostgreSQL keeps running there, so the primary fences
    // itself as isolated while a replica is promoted; healed, it rejoins as a replica.
    let partitioned =
        run_on_db_through_dns(&runs, "partition", "PrimaryPartitioned", "15s", "60s").await;
    assert_succeeded("partition", &partitioned);
    assert_eq!(partitioned["victim"], target.as_str(), "{partitioned:#}");
    assert_eq!(partitioned["dnsProbe"]["lostWrites"], 0, "{partitioned:#}");
    let after = db.healthy(Duration::from_secs(180)).await.unwrap();
    assert_ne!(after["primary"], target.as_str(), "{after:#}");
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let left = policies.list(&ListParams::default()).await.unwrap().items;
    assert!(
        left.is_empty(),
        "the partition's NetworkPolicy is gone: {left:?}"
    );
    let log = pods
        .logs(
            &target,
            &LogParams {
                container: Some("postgres".into()),
                ..LogParams::default()
            },
        )
        .await
        .unwrap();
    // The newest of each: the same pod fenced itself on an epoch in the zone outage.
    let line = |text: &str| {
        log.lines()
            .rev()
            .find(|l| l.contains(text))
            .map(str::to_string)
    };
    let cut = line("the partition holds").expect("the manager cut the established flows");
    let fenced = line("fencing myself").expect("the partitioned primary fenced itself");
    assert!(fenced.contains("isolated"), "{fenced}");
    println!(
        "partition of {target}: fault injected → first failed write {}s; RTO through the Service {}s, through DNS {}s; manager: {cut}; {fenced}",
        partitioned["detectionSeconds"],
        partitioned["rtoSeconds"],
        partitioned["dnsProbe"]["rtoSeconds"]
    );

    // A DnsEndpoint target takes DNS scenarios only, refused at admission otherwise.
    let web = |fault: &str| {
        drill_run(
            &format!("web-{}", fault.to_lowercase()),
            json!({
                "target": {"kind": "DnsEndpoint", "name": "web"},
                "scenario": {"fault": fault, "duration": "10s"},
                "success": {"maxRto": "5s"},
            }),
        )
    };
    let refused = runs
        .create(&PostParams::default(), &web("PrimaryCrash"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("scenario.fault does not apply to target.kind"),
        "{refused}"
    );
    // A schedule's run template is the same type, so the same rule refuses it.
    let schedule: DrillSchedule = serde_json::from_value(json!({
        "apiVersion": "bulwark.dev/v1alpha1", "kind": "DrillSchedule",
        "metadata": {"name": "web-crash"},
        "spec": {"schedule": "0 10 * * 2", "runTemplate": web("PrimaryCrash").spec},
    }))
    .unwrap();
    let refused = Api::<DrillSchedule>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &schedule)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("scenario.fault does not apply to target.kind"),
        "{refused}"
    );

    // A slow enactor: every enactor stalls 10 s before each write while the name's address
    // changes. The old answer stays served through the stall (never an empty name), the new
    // one goes live after it, and the rollback takes the annotation away.
    apply_endpoint(
        &client,
        &ns,
        "web",
        "drill",
        "web.drill.test",
        &["10.9.0.1".into()],
    )
    .await
    .unwrap();
    let served = || a_records("web.drill.test");
    eventually(Duration::from_secs(30), "web.drill.test live", || async {
        (served().await? == ["10.9.0.1"]).then_some(())
    })
    .await
    .unwrap();
    runs.create(&PostParams::default(), &web("SlowDnsEnactor"))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the slow enactor in place",
        || async {
            let status = runs.get("web-slowdnsenactor").await.ok()?.status?;
            (status.phase.as_deref() == Some("Observing")).then_some(())
        },
    )
    .await
    .unwrap();
    let changed = std::time::Instant::now();
    apply_endpoint(
        &client,
        &ns,
        "web",
        "drill",
        "web.drill.test",
        &["10.9.0.2".into()],
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        served().await.unwrap(),
        ["10.9.0.1"],
        "the enactors stall before writing the new plan"
    );
    eventually(Duration::from_secs(60), "the new address live", || async {
        (served().await? == ["10.9.0.2"]).then_some(())
    })
    .await
    .unwrap();
    let live_after = changed.elapsed();
    let slow = completed(&runs, "web-slowdnsenactor", Duration::from_secs(60)).await;
    assert_eq!(slow["result"], "Succeeded", "{slow:#}");
    assert_eq!(slow["victim"], "web.drill.test", "{slow:#}");
    assert!(
        slow["rtoSeconds"].is_null(),
        "the name always had an answer: {slow:#}"
    );
    let endpoint = Api::<DnsEndpoint>::namespaced(client.clone(), &ns)
        .get("web")
        .await
        .unwrap();
    assert!(
        !endpoint
            .annotations()
            .contains_key("bulwark.dev/drill-slow-enactor"),
        "rolled back"
    );
    println!(
        "slow enactor (10 s stall): the changed address went live {:.1}s after the change; the name never went unanswered",
        live_after.as_secs_f64()
    );

    // A DNS server outage needs a server Bulwark can cut off: `drill`'s is outside the cluster,
    // so the run is Skipped at the gate, naming why, with nothing injected.
    let outage = |name: &str, endpoint: &str| {
        drill_run(
            name,
            json!({
                "target": {"kind": "DnsEndpoint", "name": endpoint},
                "scenario": {"fault": "DnsServerOutage", "duration": "10s"},
                "success": {"maxRto": "30s"},
            }),
        )
    };
    runs.create(&PostParams::default(), &outage("web-outage", "web"))
        .await
        .unwrap();
    let skipped = completed(&runs, "web-outage", Duration::from_secs(60)).await;
    assert_eq!(skipped["result"], "Skipped", "{skipped:#}");
    assert!(
        skipped["message"]
            .as_str()
            .unwrap()
            .contains("is not a Service in namespace"),
        "{skipped:#}"
    );
    assert!(skipped["injectedAt"].is_null(), "{skipped:#}");

    // With BIND9 in a pod behind a Service (the DnsZone names its cluster IP), the drill cuts
    // that pod off for 10 s: the answer probe sees the name unanswered for the outage and
    // answered again after it, and the rollback removes the NetworkPolicy.
    let server = BindPod::deploy(&client, &ns, "ns-outage", "outage.test", &bind.secret)
        .await
        .unwrap();
    create_zone_at(
        &client,
        &ns,
        "outage",
        &server.cluster_address,
        &bind.secret,
        "outage.test",
    )
    .await
    .unwrap();
    apply_endpoint(
        &client,
        &ns,
        "api",
        "outage",
        "api.outage.test",
        &["10.9.1.1".into()],
    )
    .await
    .unwrap();
    let in_pod = server.provider();
    eventually(Duration::from_secs(60), "api.outage.test live", || async {
        let rrsets = in_pod.served_records("api.outage.test").await.ok()?;
        rrsets
            .iter()
            .any(|r| r.values == ["10.9.1.1"])
            .then_some(())
    })
    .await
    .unwrap();
    runs.create(&PostParams::default(), &outage("api-outage", "api"))
        .await
        .unwrap();
    let cut = completed(&runs, "api-outage", Duration::from_secs(120)).await;
    assert_eq!(cut["result"], "Succeeded", "{cut:#}");
    assert_eq!(cut["victim"], "ns-outage", "{cut:#}");
    assert_eq!(cut["faultedInstances"], json!(["ns-outage"]), "{cut:#}");
    assert_eq!(condition(&cut, "RolledBack")["status"], "True", "{cut:#}");
    let rto = cut["rtoSeconds"].as_f64().expect("the outage was seen");
    assert!(
        (9.0..30.0).contains(&rto),
        "unanswered for the outage: {cut:#}"
    );
    let detection = cut["detectionSeconds"].as_f64().unwrap();
    // A question sent as the cut went in is known unanswered after the 2 s question timeout.
    assert!((0.0..3.0).contains(&detection), "{cut:#}");
    let left = policies.list(&ListParams::default()).await.unwrap().items;
    assert!(
        left.is_empty(),
        "the outage's NetworkPolicy is gone: {left:?}"
    );
    println!(
        "DNS server outage (10 s) of {}: fault injected → first unanswered question {detection}s; the name unanswered for {rto}s; answers {}",
        server.pod, cut["writes"]
    );
}
