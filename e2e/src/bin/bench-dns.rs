//! DNS benchmark: time from a change of a DNS endpoint object to the authoritative answer
//! changing, for Bulwark and for external-dns (RFC 2136 provider, CRD source) at its defaults
//! and at its fastest settings, in one run against the same BIND9 and the same API server; then
//! Bulwark's enactment throughput with 1,000 endpoints. Prints a table. Run: `./dev bench dns`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bulwark_controllers::dns::provider::DnsProvider;
use bulwark_controllers::dns::rfc2136::Rfc2136;
use bulwark_crds::dns::{DnsEndpoint, RRSet, RecordType};
use bulwark_e2e::binaries::pinned;
use bulwark_e2e::bind::{Bind, KEY_NAME};
use bulwark_e2e::dns::{
    apply_endpoint, create_zone_for, external_dns_resource, install_external_dns_crd,
    start_external_dns,
};
use bulwark_e2e::operator::Operator;
use bulwark_e2e::{cluster, install_crds};
use futures::StreamExt;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};

/// Changes measured per system (the issue asks for at least 200).
const CHANGES: usize = 200;
/// One change every this often, the same open-loop pace for every system.
const PACE: Duration = Duration::from_millis(100);
const THROUGHPUT_ENDPOINTS: usize = 1000;

const ZONE_BULWARK: &str = "bulwark.bench";
const ZONE_EDNS_DEFAULT: &str = "edns-default.bench";
const ZONE_EDNS_FAST: &str = "edns-fast.bench";
const ZONE_THROUGHPUT: &str = "bulwark-1k.bench";

fn address(round: usize, i: usize) -> String {
    format!("10.{}.{}.{}", round + 1, i / 250, i % 250 + 1)
}

fn a_record(value: String) -> Vec<RRSet> {
    vec![RRSet {
        record_type: RecordType::A,
        ttl: 30,
        values: vec![value],
    }]
}

fn progress(message: impl AsRef<str>) {
    eprintln!("[bench-dns] {}", message.as_ref());
}

/// Points DnsEndpoint `e<i>` (DnsZone `bench`) in `zone` at round `round`'s address for it.
async fn set_bench_endpoint(
    client: &kube::Client,
    ns: &str,
    zone: &str,
    i: usize,
    round: usize,
) -> Result<()> {
    let fqdn = format!("e{i}.{zone}");
    apply_endpoint(
        client,
        ns,
        &format!("e{i}"),
        "bench",
        &fqdn,
        &[address(round, i)],
    )
    .await
}

/// Convergence times of one system, sorted.
struct Sample {
    system: String,
    times: Vec<Duration>,
    missing: usize,
}

impl Sample {
    fn quantile(&self, q: f64) -> Duration {
        let index = ((self.times.len() as f64 * q).ceil() as usize).clamp(1, self.times.len()) - 1;
        self.times[index]
    }
}

/// Waits until every name answers with its wanted records, polling only names still pending.
async fn wait_all_served(
    dns: &Rfc2136,
    wanted: &[(String, Vec<RRSet>)],
    timeout: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    let mut pending: Vec<&(String, Vec<RRSet>)> = wanted.iter().collect();
    while !pending.is_empty() {
        if started.elapsed() > timeout {
            bail!(
                "{} of {} names not served after {timeout:?}",
                pending.len(),
                wanted.len()
            );
        }
        let answers = futures::stream::iter(pending.iter().map(|(name, want)| async move {
            dns.served_records(name).await.ok().as_ref() == Some(want)
        }))
        .buffered(16)
        .collect::<Vec<bool>>()
        .await;
        pending = pending
            .into_iter()
            .zip(answers)
            .filter_map(|(entry, served)| (!served).then_some(entry))
            .collect();
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(started.elapsed())
}

/// Issues `CHANGES` changes at `PACE` through `change(i)` while a poller records when each
/// name's answer first shows the change.
async fn measure<F, Fut>(
    system: &str,
    dns: Rfc2136,
    zone: &str,
    change: F,
    timeout: Duration,
) -> Result<Sample>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    progress(format!("{system}: {CHANGES} changes, one every {PACE:?}"));
    let pending: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    let seen: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let poller = {
        let (pending, seen, zone) = (pending.clone(), seen.clone(), zone.to_owned());
        tokio::spawn(async move {
            loop {
                let snapshot: Vec<(usize, Instant)> = pending
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(i, t)| (*i, *t))
                    .collect();
                for (i, issued) in snapshot {
                    let name = format!("e{i}.{zone}");
                    if dns.served_records(&name).await.ok() == Some(a_record(address(1, i))) {
                        let at = issued.elapsed();
                        pending.lock().unwrap().remove(&i);
                        seen.lock().unwrap().push(at);
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let started = Instant::now();
    for i in 0..CHANGES {
        tokio::time::sleep_until((started + PACE * i as u32).into()).await;
        pending.lock().unwrap().insert(i, Instant::now());
        change(i).await?;
    }
    let deadline = Instant::now() + timeout;
    while !pending.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    poller.abort();
    let mut times = seen.lock().unwrap().clone();
    times.sort();
    let missing = pending.lock().unwrap().len();
    progress(format!(
        "{system}: {} converged, {missing} did not within {timeout:?}",
        times.len()
    ));
    Ok(Sample {
        system: system.into(),
        times,
        missing,
    })
}

/// Two replicas watching `ns`, with the chart's default lease and DNS settings.
fn start_replicas(kubeconfig: &Path, ns: &str, logs: &Path) -> Result<Vec<Operator>> {
    let args = [
        format!("--watch-namespace={ns}"),
        format!("--lease-namespace={ns}"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (0..2)
        .map(|i| Operator::start(kubeconfig, &format!("{ns}-{i}"), &args, logs))
        .collect()
}

async fn bench_bulwark(
    client: &kube::Client,
    kubeconfig: &Path,
    bind: &Bind,
    logs: &Path,
) -> Result<Sample> {
    let ns = cluster().namespace("bench-bulwark").await;
    create_zone_for(client, &ns, "bench", bind, ZONE_BULWARK).await?;
    let _operators = start_replicas(kubeconfig, &ns, logs)?;
    let dns = bind.provider_with(ZONE_BULWARK, KEY_NAME, &bind.secret);
    progress(format!("bulwark: creating {CHANGES} DnsEndpoints"));
    let mut initial = Vec::new();
    for i in 0..CHANGES {
        set_bench_endpoint(client, &ns, ZONE_BULWARK, i, 0).await?;
        initial.push((format!("e{i}.{ZONE_BULWARK}"), a_record(address(0, i))));
    }
    wait_all_served(&dns, &initial, Duration::from_secs(120)).await?;
    // Measure the steady state, not the tail of the initial creation: every endpoint Ready.
    let endpoints: Api<DnsEndpoint> = Api::namespaced(client.clone(), &ns);
    let settle = Instant::now();
    loop {
        let list = endpoints.list(&ListParams::default()).await?;
        let ready = list.items.iter().filter(|e| {
            e.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        });
        if ready.count() == CHANGES {
            break;
        }
        if settle.elapsed() > Duration::from_secs(60) {
            bail!("DnsEndpoints not all Ready 60 s after their records were served");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ns = ns.as_str();
    measure(
        "bulwark (2 replicas)",
        dns,
        ZONE_BULWARK,
        |i| async move { set_bench_endpoint(client, ns, ZONE_BULWARK, i, 1).await },
        Duration::from_secs(60),
    )
    .await
}

async fn apply_dns_endpoint(
    api: &Api<DynamicObject>,
    i: usize,
    zone: &str,
    target: String,
) -> Result<()> {
    let object = serde_json::json!({
        "apiVersion": "externaldns.k8s.io/v1alpha1", "kind": "DNSEndpoint",
        "metadata": {"name": format!("e{i}")},
        "spec": {"endpoints": [{"dnsName": format!("e{i}.{zone}"), "recordTTL": 30,
                                "recordType": "A", "targets": [target]}]}
    });
    api.patch(
        &format!("e{i}"),
        &PatchParams::apply("bulwark-bench").force(),
        &Patch::Apply(object),
    )
    .await?;
    Ok(())
}

async fn bench_external_dns(
    client: &kube::Client,
    kubeconfig: &Path,
    bind: &Bind,
    logs: &Path,
    label: &str,
    zone: &str,
    settings: &[&str],
) -> Result<Sample> {
    let ns = cluster().namespace("bench-edns").await;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &external_dns_resource());
    progress(format!("{label}: creating {CHANGES} DNSEndpoints"));
    let mut initial = Vec::new();
    for i in 0..CHANGES {
        apply_dns_endpoint(&api, i, zone, address(0, i)).await?;
        initial.push((format!("e{i}.{zone}"), a_record(address(0, i))));
    }
    let log = logs.join(format!("external-dns-{zone}.log"));
    let mut process = start_external_dns(bind, &[zone], &ns, kubeconfig, settings, &log)?;
    let dns = bind.provider_with(zone, KEY_NAME, &bind.secret);
    progress(format!("{label}: waiting for the initial sync"));
    wait_all_served(&dns, &initial, Duration::from_secs(180))
        .await
        .with_context(|| format!("external-dns log tail:\n{}", process.log_tail(20)))?;
    let api = &api;
    let sample = measure(
        label,
        dns,
        zone,
        |i| async move { apply_dns_endpoint(api, i, zone, address(1, i)).await },
        Duration::from_secs(180),
    )
    .await;
    process.check_alive()?;
    process.stop(Duration::from_secs(5));
    sample
}

/// 1,000 DnsEndpoints changed at once: time until every endpoint records its new plan live.
async fn bench_throughput(
    client: &kube::Client,
    kubeconfig: &Path,
    bind: &Bind,
    logs: &Path,
) -> Result<(Duration, Duration)> {
    let ns = cluster().namespace("bench-1k").await;
    create_zone_for(client, &ns, "bench", bind, ZONE_THROUGHPUT).await?;
    let _operators = start_replicas(kubeconfig, &ns, logs)?;
    let endpoints: Api<DnsEndpoint> = Api::namespaced(client.clone(), &ns);
    let live_count = |generation: u64| {
        let endpoints = endpoints.clone();
        async move {
            endpoints
                .list(&ListParams::default())
                .await
                .map(|list| {
                    list.items
                        .iter()
                        .filter(|e| {
                            e.status
                                .as_ref()
                                .and_then(|s| s.live_generation)
                                .is_some_and(|live| live >= generation)
                        })
                        .count()
                })
                .unwrap_or(0)
        }
    };
    let mut rounds = Vec::new();
    for (round, generation) in [(0, 1), (1, 2)] {
        progress(format!(
            "throughput: {} {THROUGHPUT_ENDPOINTS} DnsEndpoints",
            if round == 0 { "creating" } else { "changing" }
        ));
        let started = Instant::now();
        let ns = ns.as_str();
        futures::stream::iter(0..THROUGHPUT_ENDPOINTS)
            .map(|i| async move { set_bench_endpoint(client, ns, ZONE_THROUGHPUT, i, round).await })
            .buffer_unordered(32)
            .collect::<Vec<Result<()>>>()
            .await
            .into_iter()
            .collect::<Result<()>>()?;
        while live_count(generation).await < THROUGHPUT_ENDPOINTS {
            if started.elapsed() > Duration::from_secs(300) {
                bail!("plans of generation {generation} not all Live after 300 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        rounds.push(started.elapsed());
    }
    let dns = bind.provider_with(ZONE_THROUGHPUT, KEY_NAME, &bind.secret);
    let wanted: Vec<(String, Vec<RRSet>)> = (0..THROUGHPUT_ENDPOINTS)
        .map(|i| (format!("e{i}.{ZONE_THROUGHPUT}"), a_record(address(1, i))))
        .collect();
    wait_all_served(&dns, &wanted, Duration::from_secs(30))
        .await
        .context("plans Live but BIND does not answer with them")?;
    Ok((rounds[0], rounds[1]))
}

fn ms(d: Duration) -> String {
    if d >= Duration::from_secs(10) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    }
}

fn print_convergence(samples: &[Sample]) {
    println!();
    println!("DNS convergence: endpoint object changed -> authoritative BIND9 answer changed");
    println!(
        "({CHANGES} changes per system, one every {PACE:?}, same BIND9 and API server, external-dns {})",
        pinned("EXTERNAL_DNS_VERSION")
    );
    println!(
        "{:<66} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "system", "p50", "p90", "p99", "max", "missed"
    );
    for s in samples {
        if s.times.is_empty() {
            println!(
                "{:<66} {:>9} {:>9} {:>9} {:>9} {:>7}",
                s.system, "-", "-", "-", "-", s.missing
            );
            continue;
        }
        println!(
            "{:<66} {:>9} {:>9} {:>9} {:>9} {:>7}",
            s.system,
            ms(s.quantile(0.5)),
            ms(s.quantile(0.9)),
            ms(s.quantile(0.99)),
            ms(*s.times.last().unwrap()),
            s.missing
        );
    }
    let bulwark = &samples[0];
    for peer in &samples[1..] {
        if !peer.times.is_empty() && !bulwark.times.is_empty() {
            println!(
                "Bulwark vs {}: p50 {:.0}x faster, p99 {:.0}x faster",
                peer.system,
                peer.quantile(0.5).as_secs_f64() / bulwark.quantile(0.5).as_secs_f64(),
                peer.quantile(0.99).as_secs_f64() / bulwark.quantile(0.99).as_secs_f64()
            );
        }
    }
    println!();
}

/// `bench-dns [all|convergence|throughput|bulwark]` (`bulwark`: Bulwark's convergence row only)
#[tokio::main]
async fn main() -> Result<()> {
    let phase = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    if !["all", "convergence", "throughput", "bulwark"].contains(&phase.as_str()) {
        bail!("usage: bench-dns [all|convergence|throughput|bulwark]");
    }
    let started = Instant::now();
    progress("starting BIND9 and the control plane");
    let bind = Bind::start_zones(&[
        ZONE_BULWARK,
        ZONE_EDNS_DEFAULT,
        ZONE_EDNS_FAST,
        ZONE_THROUGHPUT,
    ])?;
    let cluster = cluster();
    let client = cluster.client().await;
    install_crds(&client).await?;
    let logs = std::env::temp_dir().join("bulwark-bench-logs");
    std::fs::create_dir_all(&logs)?;
    let kubeconfig = cluster.kubeconfig.clone();

    if phase == "bulwark" {
        print_convergence(&[bench_bulwark(&client, &kubeconfig, &bind, &logs).await?]);
    }
    if phase == "all" || phase == "convergence" {
        install_external_dns_crd(&client).await?;
        let mut samples = vec![bench_bulwark(&client, &kubeconfig, &bind, &logs).await?];
        let peers: [(&str, &str, &[&str]); 2] = [
            (
                "external-dns defaults (interval 1m)",
                ZONE_EDNS_DEFAULT,
                &[],
            ),
            (
                "external-dns fastest (--events, min-event-sync 0s, interval 1s)",
                ZONE_EDNS_FAST,
                &["--events", "--min-event-sync-interval=0s", "--interval=1s"],
            ),
        ];
        for (label, zone, settings) in peers {
            let sample =
                bench_external_dns(&client, &kubeconfig, &bind, &logs, label, zone, settings);
            samples.push(sample.await?);
        }
        print_convergence(&samples);
    }
    if phase == "all" || phase == "throughput" {
        let (create_1k, change_1k) = bench_throughput(&client, &kubeconfig, &bind, &logs).await?;
        println!("Enactment throughput, {THROUGHPUT_ENDPOINTS} DnsEndpoints, 2 replicas:");
        for (what, took) in [
            ("created at once (plan 1)", create_1k),
            ("changed at once (plan 2)", change_1k),
        ] {
            println!(
                "  {what}: all Live in {:.1} s = {:.0} plans/s",
                took.as_secs_f64(),
                THROUGHPUT_ENDPOINTS as f64 / took.as_secs_f64()
            );
        }
    }
    progress(format!(
        "done in {:.0} s; logs in {}",
        started.elapsed().as_secs_f64(),
        logs.display()
    ));
    Ok(())
}
