//! Database failover benchmark: the write probe at a fixed pace through the primary's address
//! while the primary is crashed (SIGKILL of every process) or hung (SIGSTOP until the others
//! have failed over), round after round, for Bulwark (3 instances, synchronous `ANY 1`
//! `required`, the chart's operator on the local control plane, the probe through `db-rw`) and
//! for Patroni (Debian's, 3 members on loopback, synchronous_mode, clients using libpq's
//! `target_session_attrs=read-write` over all members) at its defaults and at its fastest
//! settings. Then Bulwark's isolated-primary window. Prints a table. Each round starts from a
//! healthy system (every member back and replicating), so rounds measure failovers, not the
//! after-effects of the last one.
//! Run: `./dev bench db` (`./dev bench db bulwark` or `patroni` runs one system's rows alone).

use anyhow::{Context, Result, bail};
use bulwark_chaos::node_agent as chaos;
use bulwark_controllers::postgres::client::Endpoint;
use bulwark_controllers::postgres::probe::{Outcome, Report, WriteProbe, sequences_found};
use bulwark_crds::postgres::DatabaseCluster;
use bulwark_e2e::patroni::{PatroniCluster, Timing};
use bulwark_e2e::postgres::{
    Database, container_of, install_operator, isolate, three_synchronous_instances,
};
use bulwark_e2e::{cluster, eventually, install_crds};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use std::time::{Duration, Instant};

/// Failovers per fault for Bulwark, and for Patroni at each of its settings.
const BULWARK_ROUNDS: usize = 20;
const PATRONI_ROUNDS: usize = 10;
const ISOLATION_ROUNDS: usize = 5;
/// One write every this often, each bounded by the timeout, for both systems.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bulwark's failover delay (synchronous `required` needs no isolation margin).
const DELAY: Duration = Duration::from_secs(1);

fn progress(message: impl AsRef<str>) {
    eprintln!("[bench-db] {}", message.as_ref());
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Crash,
    Hang,
}

impl Fault {
    fn label(self) -> &'static str {
        match self {
            Fault::Crash => "primary crash (SIGKILL)",
            Fault::Hang => "hung primary (SIGSTOP)",
        }
    }
}

/// What a system under test offers the rounds.
trait System {
    async fn wait_healthy(&self) -> Result<()>;
    async fn primary(&self) -> Result<String>;
    async fn inject(&mut self, fault: Fault, member: &str) -> Result<()>;
    /// Called once writes are acknowledged again: a hung member is thawed, a crashed Patroni
    /// member's machine comes back (Bulwark's pod restarts by itself).
    async fn undo(&mut self, fault: Fault, member: &str) -> Result<()>;
}

/// One row of the table.
struct Row {
    system: String,
    fault: Fault,
    outages: Vec<Duration>,
    /// Rounds where the crashed primary came back as primary before any failover.
    in_place: usize,
    /// Rounds with no writes for [`STUCK_AFTER`]: the outage ran until the member came back.
    stuck: usize,
    /// Why the rounds ended early: the system did not recover (no later round can start).
    broken: Option<String>,
}

/// A failover not done by then is stuck: the fault is undone (the member comes back) and the
/// outage runs on until writes resume.
const STUCK_AFTER: Duration = Duration::from_secs(120);

/// Runs `rounds` faults one after another, each on the primary of a healthy system, and returns
/// the outage the probe saw after each.
async fn rounds(
    name: &str,
    system: &mut impl System,
    probe: &WriteProbe,
    fault: Fault,
    rounds: usize,
) -> Result<Row> {
    let mut row = Row {
        system: name.to_string(),
        fault,
        outages: vec![],
        in_place: 0,
        stuck: 0,
        broken: None,
    };
    for round in 1..=rounds {
        if let Err(error) = system.wait_healthy().await {
            row.broken = Some(format!(
                "not healthy again after round {}: {error:#}",
                round - 1
            ));
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let primary = system.primary().await?;
        let at = Instant::now();
        system.inject(fault, &primary).await?;
        let resumed = || async { probe.report().outage_after(at) };
        let (outage, stuck) =
            match eventually(STUCK_AFTER, "writes acknowledged again", resumed).await {
                Ok(outage) => {
                    system.undo(fault, &primary).await?;
                    (outage, false)
                }
                Err(_) => {
                    system.undo(fault, &primary).await?;
                    let back = "writes acknowledged again once the member is back";
                    match eventually(Duration::from_secs(180), back, resumed).await {
                        Ok(outage) => (outage, true),
                        Err(error) => {
                            row.broken = Some(format!("round {round}: {error:#}"));
                            break;
                        }
                    }
                }
            };
        let now_primary = system.primary().await.unwrap_or_default();
        if stuck {
            row.stuck += 1;
        } else if now_primary == primary {
            row.in_place += 1;
        }
        progress(format!(
            "{name}: {} {round}/{rounds}: {primary} → {now_primary}, outage {:.2} s{}",
            fault.label(),
            outage.as_secs_f64(),
            if stuck { " (stuck: no failover)" } else { "" }
        ));
        row.outages.push(outage);
    }
    row.outages.sort();
    Ok(row)
}

struct Bulwark {
    db: Database,
    pods: Api<Pod>,
    frozen: Option<String>,
}

impl System for Bulwark {
    async fn wait_healthy(&self) -> Result<()> {
        self.db.healthy(Duration::from_secs(180)).await.map(drop)
    }

    async fn primary(&self) -> Result<String> {
        let status = self.db.status().await;
        Ok(status["primary"]
            .as_str()
            .context("no primary recorded")?
            .to_string())
    }

    async fn inject(&mut self, fault: Fault, member: &str) -> Result<()> {
        let container = container_of(&self.pods.get(member).await?);
        match fault {
            Fault::Crash => chaos::crash(&[container])?,
            Fault::Hang => {
                self.frozen = Some(container.clone());
                chaos::freeze(&[container])?
            }
        };
        Ok(())
    }

    async fn undo(&mut self, _: Fault, member: &str) -> Result<()> {
        if let Some(container) = self.frozen.take() {
            chaos::thaw(&[container])?;
        }
        // A pod crashed over and over waits out the kubelet's growing back-off (10 s doubling
        // to 5 min) before each restart; Patroni's members are started again at once, as systemd
        // would. So a crashed pod the kubelet holds back is replaced: the operator recreates it
        // on its volume and it rejoins the same way.
        let pod = self.pods.get(member).await?;
        let backing_off = pod
            .status
            .and_then(|s| s.container_statuses)
            .into_iter()
            .flatten()
            .any(|c| {
                c.state
                    .and_then(|s| s.waiting)
                    .is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"))
            });
        if backing_off {
            self.pods
                .delete(member, &DeleteParams::default().grace_period(0))
                .await?;
        }
        Ok(())
    }
}

impl System for PatroniCluster {
    async fn wait_healthy(&self) -> Result<()> {
        PatroniCluster::wait_healthy(self, Duration::from_secs(240)).await
    }

    async fn primary(&self) -> Result<String> {
        PatroniCluster::primary(self)
            .await
            .context("no Patroni member runs as primary")
    }

    async fn inject(&mut self, fault: Fault, member: &str) -> Result<()> {
        match fault {
            Fault::Crash => self.crash(member),
            Fault::Hang => self.freeze(member, true),
        }
    }

    async fn undo(&mut self, fault: Fault, member: &str) -> Result<()> {
        match fault {
            Fault::Crash => self.restart(member),
            Fault::Hang => self.freeze(member, false),
        }
    }
}

/// Waits for the probe's first acknowledged writes: the rounds measure from a working path.
async fn writing(probe: &WriteProbe, system: &str) -> Result<()> {
    eventually(
        Duration::from_secs(60),
        "the probe's first writes",
        || async { (probe.report().count(Outcome::Acknowledged) >= 20).then_some(()) },
    )
    .await
    .with_context(|| {
        let report = probe.report();
        format!(
            "{system}: the write probe got no acknowledgement ({} failed, {} indeterminate)",
            report.count(Outcome::Failed),
            report.count(Outcome::Indeterminate)
        )
    })
}

/// Lost = acknowledged by the probe but absent from the primary's table at the end.
async fn lost_writes(report: &Report, endpoint: &Endpoint) -> Result<usize> {
    let client = endpoint.connect().await?;
    let found = sequences_found(&client).await?;
    Ok(report.verify(&found).lost.len())
}

/// Bulwark's rows, and the isolated-primary windows.
async fn bench_bulwark() -> Result<(Vec<Row>, usize, Vec<Option<Duration>>)> {
    let test_cluster = cluster();
    let client = test_cluster.client().await;
    install_crds(&client).await?;
    let ns = test_cluster.namespace("bench-db").await;
    progress("Bulwark: installing the chart's operator");
    let _release = install_operator(&test_cluster.kubeconfig, &ns, 1, &[])?;
    let clusters: Api<DatabaseCluster> = Api::namespaced(client.clone(), &ns);
    clusters
        .create(
            &PostParams::default(),
            &three_synchronous_instances("db", DELAY),
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut bulwark = Bulwark {
        db: Database::new(clusters, "db"),
        pods: pods.clone(),
        frozen: None,
    };
    progress("Bulwark: waiting for 3 ready instances");
    bulwark.wait_healthy().await?;
    let app = bulwark.db.application(&client, &ns).await;
    let probe = WriteProbe::start(app.clone(), PROBE_INTERVAL, PROBE_TIMEOUT);
    writing(&probe, "Bulwark").await?;
    let mut rows = vec![];
    for fault in [Fault::Crash, Fault::Hang] {
        let row = rounds("Bulwark", &mut bulwark, &probe, fault, BULWARK_ROUNDS).await?;
        if let Some(why) = &row.broken {
            bail!("Bulwark: {why}");
        }
        rows.push(row);
    }
    let windows = isolated_windows(&bulwark, &app, &pods).await?;
    bulwark.wait_healthy().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = probe.stop().await;
    let lost = lost_writes(&report, &app).await?;
    progress(format!(
        "Bulwark: {} writes acknowledged, {lost} lost",
        report.count(Outcome::Acknowledged)
    ));
    Ok((rows, lost, windows))
}

/// The primary cut off from the API server, the replicas and the operator, a probe writing to it
/// directly: how long after the cut it still acknowledged a write (`None`: nothing after it).
async fn isolated_windows(
    bulwark: &Bulwark,
    app: &Endpoint,
    pods: &Api<Pod>,
) -> Result<Vec<Option<Duration>>> {
    let api_server_port = cluster()
        .local_api_server_port()
        .context("the isolation rounds cut pods off the local control plane's API server")?;
    let mut windows = vec![];
    for round in 1..=ISOLATION_ROUNDS {
        bulwark.wait_healthy().await?;
        let primary = bulwark.primary().await?;
        let epoch = bulwark.db.status().await["epoch"].as_u64().unwrap_or(0);
        let primary_ip = pods
            .get(&primary)
            .await?
            .status
            .and_then(|s| s.pod_ip)
            .context("the primary has no address")?;
        let first = 1_000_000_000 * round as i64;
        let direct_probe = WriteProbe::start_at(
            app.at(primary_ip.parse()?),
            first,
            PROBE_INTERVAL,
            PROBE_TIMEOUT,
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cut_at = Instant::now();
        let cuts = isolate(pods, &primary, api_server_port).await?;
        let failed_over = bulwark.db.failed_over(&primary, epoch).await;
        let report = direct_probe.stop().await;
        for cut in cuts {
            cut.heal()?;
        }
        failed_over?;
        if report.count(Outcome::Acknowledged) == 0 {
            bail!("the direct probe never reached {primary} before the cut");
        }
        let window = report
            .acknowledged_after(cut_at)
            .last()
            .map(|w| w.at.duration_since(cut_at));
        progress(format!(
            "Bulwark: isolated primary {round}/{ISOLATION_ROUNDS}: {primary}, last acknowledgement after the cut: {window:?}"
        ));
        windows.push(window);
        bulwark.db.rejoined(&primary).await;
    }
    Ok(windows)
}

async fn bench_patroni(label: &str, timing: Timing) -> Result<(Vec<Row>, Option<usize>)> {
    let dir = std::env::temp_dir().join(format!(
        "bulwark-bench-patroni-{}-{}",
        std::process::id(),
        timing.ttl
    ));
    let _ = std::fs::remove_dir_all(&dir);
    progress(format!(
        "{label}: starting etcd and 3 members in {}",
        dir.display()
    ));
    let mut patroni = PatroniCluster::start(&dir, timing).await?;
    let app = patroni.application()?;
    let probe = WriteProbe::start(app.clone(), PROBE_INTERVAL, PROBE_TIMEOUT);
    writing(&probe, label).await?;
    let mut rows = vec![];
    for fault in [Fault::Crash, Fault::Hang] {
        let row = rounds(label, &mut patroni, &probe, fault, PATRONI_ROUNDS).await?;
        let broken = row.broken.is_some();
        rows.push(row);
        if broken {
            break;
        }
    }
    // Counted on whichever member accepts writes at the end, healthy or not.
    let report = probe.stop().await;
    let lost = match lost_writes(&report, &app).await {
        Ok(lost) => Some(lost),
        Err(error) => {
            progress(format!("{label}: could not count lost writes: {error:#}"));
            None
        }
    };
    progress(format!(
        "{label}: {} writes acknowledged, {lost:?} lost",
        report.count(Outcome::Acknowledged)
    ));
    drop(patroni);
    let _ = std::fs::remove_dir_all(&dir);
    Ok((rows, lost))
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn print_table(rows: &[(Row, Option<usize>)]) {
    println!();
    println!(
        "Failover: outage the write probe saw (one write every {} ms, each waiting at most {} s)",
        PROBE_INTERVAL.as_millis(),
        PROBE_TIMEOUT.as_secs()
    );
    println!();
    println!(
        "| system | fault | failovers | p50 | p90 | p99 | max | back in place | stuck | acknowledged writes lost (whole run) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (row, lost) in rows {
        let s = |q: f64| match row.outages.is_empty() {
            true => "–".to_string(),
            false => format!("{:.2} s", quantile(&row.outages, q).as_secs_f64()),
        };
        let lost = lost.map_or("unknown (no primary at the end)".into(), |l| l.to_string());
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {lost} |",
            row.system,
            row.fault.label(),
            row.outages.len() - row.in_place - row.stuck,
            s(0.5),
            s(0.9),
            s(0.99),
            s(1.0),
            row.in_place,
            row.stuck,
        );
    }
    for (row, _) in rows {
        if let Some(why) = &row.broken {
            println!();
            println!(
                "{}, {}: ended after {} rounds: {why}",
                row.system,
                row.fault.label(),
                row.outages.len()
            );
        }
    }
}

/// `bench-db [all|bulwark|patroni]`
#[tokio::main]
async fn main() -> Result<()> {
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    if !["all", "bulwark", "patroni"].contains(&which.as_str()) {
        bail!("usage: bench-db [all|bulwark|patroni]");
    }
    let started = Instant::now();
    let mut table = vec![];
    let mut windows = None;
    if which != "patroni" {
        let (rows, lost, isolated) = bench_bulwark().await?;
        table.extend(rows.into_iter().map(|row| (row, Some(lost))));
        windows = Some(isolated);
    }
    if which != "bulwark" {
        let peers = [
            ("Patroni defaults (ttl 30, loop_wait 10)", Timing::DEFAULTS),
            ("Patroni fastest (ttl 20, loop_wait 1)", Timing::FASTEST),
        ];
        for (label, timing) in peers {
            let (rows, lost) = bench_patroni(label, timing).await?;
            table.extend(rows.into_iter().map(|row| (row, lost)));
        }
    }
    print_table(&table);
    if let Some(windows) = windows {
        let windows: Vec<String> = windows
            .iter()
            .map(|w| w.map_or("none".into(), |w| format!("{:.2} s", w.as_secs_f64())))
            .collect();
        println!();
        println!(
            "Bulwark isolated primary (cut off from the API server, replicas and operator), last write it acknowledged after the cut, {ISOLATION_ROUNDS} rounds: {}",
            windows.join(", ")
        );
    }
    progress(format!("done in {:.0} s", started.elapsed().as_secs_f64()));
    Ok(())
}
