//! Scale benchmark: DnsEndpoints over several zones on one BIND9 (half following Services backed
//! by kwok pods through EndpointSlices, half literal) and SLOs against one Prometheus, run by two
//! operator replicas (release build), then external-dns on the same names. Prints a table: per
//! replica peak and steady RSS, its live heap against the resident heap, connections to the API
//! server and CPU seconds; start → every name
//! served; API requests per plan (from the API server's own metrics); bursts of changes;
//! Prometheus queries per SLO status interval (from Prometheus's own metrics); a restart with
//! everything live. Run:
//! `./dev bench scale [ENDPOINTS] [SLOS]` (defaults 10000 and 1000).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bulwark_e2e::apiserver::{api_metrics, api_requests, sum_by, unlabelled};
use bulwark_e2e::binaries::pinned;
use bulwark_e2e::bind::{Bind, KEY_NAME};
use bulwark_e2e::control_plane::{KWOK_TAINT, ZONES as NODE_ZONES};
use bulwark_e2e::dns::{create_zone_for, start_external_dns};
use bulwark_e2e::operator::Operator;
use bulwark_e2e::process::free_port;
use bulwark_e2e::slo::{Prometheus, install_prometheus_rule_crd};
use bulwark_e2e::{cluster, install_crds};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

const ZONES: [&str; 4] = ["z0.scale", "z1.scale", "z2.scale", "z3.scale"];
const EDNS_ZONES: [&str; 4] = ["z0.edns", "z1.edns", "z2.edns", "z3.edns"];
/// Kwok pods behind each Service a following endpoint names.
const PODS_PER_SERVICE: usize = 2;
const SLO_STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// Concurrent API requests while creating objects.
const CREATE_CONCURRENCY: usize = 32;

fn progress(message: impl AsRef<str>) {
    eprintln!("[bench-scale] {}", message.as_ref());
}

fn zone_of(i: usize, zones: &[&str; 4]) -> String {
    zones[i % zones.len()].to_string()
}

fn fqdn(i: usize, zones: &[&str; 4]) -> String {
    format!("e{i}.{}", zone_of(i, zones))
}

/// The literal address of endpoint `i` in `round`.
fn address(round: usize, i: usize) -> String {
    format!("10.{}.{}.{}", 100 + round, i / 250, i % 250 + 1)
}

/// Endpoint `i` follows Service `s<i>` when even, else answers with a literal address.
fn follows_service(i: usize) -> bool {
    i.is_multiple_of(2)
}

/// What every name should answer: its A record values, sorted.
type Answers = HashMap<String, Vec<String>>;

/// Every A record in `zone`, by zone transfer (what external-dns also reads).
fn transfer(bind: &Bind, zone: &str) -> Result<Answers> {
    let output = std::process::Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &bind.port.to_string(),
            "-y",
            &format!("hmac-sha256:{KEY_NAME}:{}", bind.secret),
            zone,
            "AXFR",
            "+noall",
            "+answer",
        ])
        .output()
        .context("dig (bind9-dnsutils)")?;
    let mut answers: Answers = HashMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [name, _ttl, "IN", "A", value] = fields[..] {
            answers
                .entry(name.trim_end_matches('.').to_string())
                .or_default()
                .push(value.to_string());
        }
    }
    for values in answers.values_mut() {
        values.sort();
    }
    Ok(answers)
}

/// Waits until every name in `wanted` is served as wanted; how long that took, and when each
/// name was first seen served as wanted (from the start, to within one zone transfer).
async fn until_served(
    bind: &Bind,
    zones: &[&str; 4],
    wanted: &Answers,
    timeout: Duration,
) -> Result<(Duration, HashMap<String, Instant>)> {
    let started = Instant::now();
    let mut reported = Instant::now();
    let mut first_served = HashMap::new();
    loop {
        let mut served = Answers::new();
        for zone in zones {
            served.extend(transfer(bind, zone)?);
        }
        let seen_at = Instant::now();
        let mut wrong = 0;
        for (name, values) in wanted {
            if served.get(name) == Some(values) {
                first_served.entry(name.clone()).or_insert(seen_at);
            } else {
                wrong += 1;
            }
        }
        if wrong == 0 {
            return Ok((started.elapsed(), first_served));
        }
        if started.elapsed() > timeout {
            bail!(
                "{wrong} of {} names not served as wanted after {timeout:?}",
                wanted.len()
            );
        }
        if reported.elapsed() >= Duration::from_secs(10) {
            progress(format!(
                "{} of {} names served ({:.0} s)",
                wanted.len() - wrong,
                wanted.len(),
                started.elapsed().as_secs_f64()
            ));
            reported = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `make(i)` for every `i` in `range`, `CREATE_CONCURRENCY` at a time.
async fn for_each<F, Fut>(what: &str, count: usize, make: F) -> Result<()>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let started = Instant::now();
    progress(format!("{what}: {count}"));
    futures::stream::iter(0..count)
        .map(make)
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect::<Vec<Result<()>>>()
        .await
        .into_iter()
        .collect::<Result<()>>()?;
    progress(format!(
        "{what}: done in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Resident memory now and at its peak, and CPU seconds used, of process `pid`. RSS counts the
/// pages of the program's own file it has touched (its code: shared by replicas on a node and
/// reclaimable) besides its anonymous memory (heap and stacks), so both parts are shown.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    rss_mib: f64,
    anonymous_mib: f64,
    file_mib: f64,
    peak_rss_mib: f64,
    cpu_seconds: f64,
}

impl Usage {
    fn resident_parts(&self) -> String {
        format!(
            "{:.0} MiB anonymous + {:.0} MiB of files (code)",
            self.anonymous_mib, self.file_mib
        )
    }
}

fn usage(pid: i32) -> Result<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |field: &str| {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces): utime and stime are the 12th and 13th.
    let after_command = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_command.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(Usage {
        rss_mib: kib("VmRSS:") / 1024.0,
        anonymous_mib: kib("RssAnon:") / 1024.0,
        file_mib: kib("RssFile:") / 1024.0,
        peak_rss_mib: kib("VmHWM:") / 1024.0,
        cpu_seconds: (ticks(11) + ticks(12)) / per_second,
    })
}

/// Mean time per request between two readings of the API server's metrics: its own handling,
/// by the most frequent kinds of request, and the wait in API Priority and Fairness queues, by
/// priority level. Where a change's time goes when the API server is not out of CPU.
fn api_latency(before: &str, after: &str) -> String {
    let mean = |metric: &str, labels: &[&str]| {
        let delta = |suffix: &str| {
            let (old, new) = (
                sum_by(before, &format!("{metric}_{suffix}"), labels),
                sum_by(after, &format!("{metric}_{suffix}"), labels),
            );
            new.into_iter()
                .map(|(key, value)| {
                    let change = value - old.get(&key).unwrap_or(&0.0);
                    (key, change)
                })
                .collect::<BTreeMap<_, _>>()
        };
        let (sums, counts) = (delta("sum"), delta("count"));
        let mut means: Vec<(f64, String)> = counts
            .into_iter()
            .filter(|(_, count)| *count > 0.0)
            .map(|(key, count)| {
                let ms = sums.get(&key).unwrap_or(&0.0) / count * 1000.0;
                (count, format!("{key} {ms:.0} ms"))
            })
            .collect();
        means.sort_by(|a, b| b.0.total_cmp(&a.0));
        means
            .into_iter()
            .take(5)
            .map(|(_, m)| m)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "handling: {}; queued: {}",
        mean(
            "apiserver_request_duration_seconds",
            &["verb", "resource", "subresource"]
        ),
        mean(
            "apiserver_flowcontrol_request_wait_duration_seconds",
            &["priority_level"]
        ),
    )
}

/// Requests between two readings, leaving out node and Lease heartbeats (kwok's nodes, leader
/// election), which go on whatever Bulwark does.
struct Requests {
    writes: f64,
    all: f64,
    /// (count, "VERB resource"), most first.
    by_kind: Vec<(f64, String)>,
}

impl Requests {
    fn between(
        before: &BTreeMap<(String, String), f64>,
        after: &BTreeMap<(String, String), f64>,
    ) -> Self {
        let mut requests = Requests {
            writes: 0.0,
            all: 0.0,
            by_kind: Vec::new(),
        };
        for ((verb, resource), count) in after {
            let kind = resource.split(['/', ' ']).next().unwrap_or_default();
            if ["leases", "nodes"].contains(&kind) {
                continue;
            }
            let delta = count
                - before
                    .get(&(verb.clone(), resource.clone()))
                    .unwrap_or(&0.0);
            if delta <= 0.0 {
                continue;
            }
            requests.all += delta;
            if ["POST", "PUT", "PATCH", "DELETE", "APPLY"].contains(&verb.as_str()) {
                requests.writes += delta;
            }
            requests.by_kind.push((delta, format!("{verb} {resource}")));
        }
        requests.by_kind.sort_by(|a, b| b.0.total_cmp(&a.0));
        requests
    }

    /// The most frequent kinds, each per `per` (a plan, or 1).
    fn top(&self, per: f64) -> String {
        self.by_kind
            .iter()
            .take(6)
            .map(|(count, kind)| format!("{kind} {:.1}", count / per))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Keeps `peak` at the largest `bulwark_dns_pending_endpoints` any replica reports; runs until
/// the caller drops it.
async fn sample_pending(operators: &[Operator], peak: &std::cell::Cell<i64>) {
    loop {
        for operator in operators {
            if let Ok((_, body)) = operator.get("/metrics").await {
                let pending = body
                    .lines()
                    .find_map(|l| l.strip_prefix("bulwark_dns_pending_endpoints "))
                    .and_then(|v| v.trim().parse::<i64>().ok())
                    .unwrap_or(0);
                peak.set(peak.get().max(pending));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The `q`-quantile of `values` (sorted in place), nearest rank.
fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// Queries Prometheus has answered on its query endpoint, from its own metrics.
async fn prometheus_queries(prometheus: &Prometheus) -> Result<f64> {
    let text = reqwest::get(format!("{}/metrics", prometheus.url))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with("prometheus_http_requests_total{")
                && l.contains("handler=\"/api/v1/query\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum())
}

/// Sets literal endpoint `i` to its `round` address.
async fn set_literal(api: &Api<DynamicObject>, i: usize, round: usize) -> Result<()> {
    let endpoint = json!({
        "apiVersion": "bulwark.dev/v1alpha1", "kind": "DnsEndpoint",
        "metadata": {"name": format!("e{i}")},
        "spec": {"zoneRef": zone_of(i, &ZONES).replace('.', "-"), "fqdn": fqdn(i, &ZONES),
                 "ttl": 30, "targets": [{"address": address(round, i)}]},
    });
    api.patch(
        &format!("e{i}"),
        &PatchParams::apply("bench-scale").force(),
        &Patch::Apply(endpoint),
    )
    .await?;
    Ok(())
}

/// The first `count` literal endpoints (odd indexes).
fn literal_indexes(endpoints: usize, count: usize) -> Vec<usize> {
    (0..endpoints)
        .filter(|i| !follows_service(*i))
        .take(count)
        .collect()
}

struct Row {
    what: String,
    figure: String,
}

fn row(rows: &mut Vec<Row>, what: impl Into<String>, figure: impl Into<String>) {
    let (what, figure) = (what.into(), figure.into());
    progress(format!("{what}: {figure}"));
    rows.push(Row { what, figure });
}

fn replicas(kubeconfig: &Path, ns: &str, prometheus: &str, logs: &Path) -> Result<Vec<Operator>> {
    let args = [
        format!("--watch-namespace={ns}"),
        format!("--lease-namespace={ns}"),
        format!("--prometheus-url={prometheus}"),
        format!("--slo-status-interval={}s", SLO_STATUS_INTERVAL.as_secs()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (0..2)
        .map(|i| Operator::start(kubeconfig, &format!("scale-{i}"), &args, logs))
        .collect()
}

/// The port of the API server `kubeconfig` points at.
fn api_server_port(kubeconfig: &Path) -> Result<u16> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let server = config
        .clusters
        .iter()
        .find_map(|c| c.cluster.as_ref()?.server.clone())
        .context("the kubeconfig names no server")?;
    let url: http::Uri = server.parse()?;
    Ok(url.port_u16().unwrap_or(443))
}

/// Established TCP connections of process `pid` to `port`: its sockets (`/proc/<pid>/fd`) found
/// in the kernel's connection tables, by inode.
fn connections_to(pid: i32, port: u16) -> Result<usize> {
    let sockets: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))?
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let inode = target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?;
            Some(inode.to_owned())
        })
        .collect();
    let mut count = 0;
    for table in ["tcp", "tcp6"] {
        let table = std::fs::read_to_string(format!("/proc/{pid}/net/{table}"))?;
        // After the header: local and remote address as hex `IP:PORT`, state (01 established),
        // and the socket's inode as the tenth field.
        count += table
            .lines()
            .skip(1)
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() > 9 && f[3] == "01" && sockets.contains(f[9]))
            .filter(|f| {
                let remote_port = f[2].rsplit_once(':').map(|(_, p)| p);
                remote_port.and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port)
            })
            .count();
    }
    Ok(count)
}

fn pid(operator: &Operator) -> Result<i32> {
    operator
        .process
        .pid()
        .with_context(|| format!("{} is not running", operator.identity))
}

/// Endpoints whose live plan this replica has read back from the server
/// (`bulwark_dns_endpoints_verified`).
async fn verified_by(operator: &Operator) -> Result<usize> {
    Ok(unlabelled_metric(operator, "bulwark_dns_endpoints_verified").await? as usize)
}

/// The value of one of the replica's metrics that has no labels.
async fn unlabelled_metric(operator: &Operator, name: &str) -> Result<f64> {
    let (_, body) = operator.get("/metrics").await?;
    unlabelled(&body, name).with_context(|| format!("no number for {name} in /metrics"))
}

/// `bulwark_dns_endpoint_write_conflicts_total` of one replica, by writer.
async fn write_conflicts(operator: &Operator) -> Result<BTreeMap<String, f64>> {
    let (_, body) = operator.get("/metrics").await?;
    Ok(body
        .lines()
        .filter_map(|l| l.strip_prefix("bulwark_dns_endpoint_write_conflicts_total{writer=\""))
        .filter_map(|l| {
            let (writer, count) = l.split_once("\"} ")?;
            Some((writer.to_owned(), count.trim().parse().ok()?))
        })
        .collect())
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let endpoints: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let slos: usize = args.next().map_or(Ok(1_000), |a| a.parse())?;
    let burst = 1_000.min(endpoints / 2);
    let started = Instant::now();
    let mut rows = Vec::new();

    progress("starting BIND9, Prometheus and the control plane");
    let all_zones: Vec<&str> = ZONES.iter().chain(EDNS_ZONES.iter()).copied().collect();
    let bind = Bind::start_zones(&all_zones)?;
    let logs = std::env::temp_dir().join("bulwark-bench-logs/scale");
    std::fs::create_dir_all(&logs)?;
    let prometheus = Prometheus::start(&logs.join("prometheus"), free_port()?, &[], "15s").await?;
    let cluster = cluster();
    let client = cluster.client().await;
    install_crds(&client).await?;
    install_prometheus_rule_crd(&client).await?;
    let ns = cluster.namespace("bench-scale").await;
    for zone in ZONES {
        create_zone_for(&client, &ns, &zone.replace('.', "-"), &bind, zone).await?;
    }

    // Services, each backed by kwok pods (status only: Running and Ready with an address).
    let services = endpoints.div_ceil(2);
    let (pods_api, services_api): (Api<Pod>, Api<Service>) = (
        Api::namespaced(client.clone(), &ns),
        Api::namespaced(client.clone(), &ns),
    );
    for_each("Services", services, |s| {
        let api = services_api.clone();
        async move {
            let service: Service = serde_json::from_value(json!({
                "metadata": {"name": format!("s{}", s * 2)},
                "spec": {"selector": {"app": format!("s{}", s * 2)},
                         "ports": [{"port": 80}]},
            }))?;
            api.create(&PostParams::default(), &service).await?;
            Ok(())
        }
    })
    .await?;
    for_each("kwok pods", services * PODS_PER_SERVICE, |p| {
        let api = pods_api.clone();
        async move {
            let app = format!("s{}", (p / PODS_PER_SERVICE) * 2);
            // Placed here rather than by kube-scheduler, which took minutes over 10,000 pods on
            // 2 cores before the operators under test started.
            let node = format!("kwok-node-{}", NODE_ZONES[p % NODE_ZONES.len()]);
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": format!("{app}-{}", p % PODS_PER_SERVICE),
                             "labels": {"app": app}},
                "spec": {
                    "containers": [{"name": "web", "image": "bench.invalid/web"}],
                    "nodeName": node,
                    "tolerations": [{"key": KWOK_TAINT, "operator": "Exists"}],
                },
            }))?;
            api.create(&PostParams::default(), &pod).await?;
            Ok(())
        }
    })
    .await?;
    progress("waiting for every kwok pod to have an address");
    let addresses: HashMap<String, Vec<String>> = loop {
        let pods = pods_api.list(&ListParams::default()).await?.items;
        let mut by_app: HashMap<String, Vec<String>> = HashMap::new();
        for pod in &pods {
            let app = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app"))
                .cloned();
            let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
            if let (Some(app), Some(ip)) = (app, ip) {
                by_app.entry(app).or_default().push(ip);
            }
        }
        if by_app.values().map(Vec::len).sum::<usize>() == services * PODS_PER_SERVICE {
            break by_app;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // The operators start on a cluster whose EndpointSlices are all there, as in a cluster they
    // join: the controller-manager writes 5,000 of them at about 14/s, and operators started
    // before that re-plan every endpoint as its Service's slice arrives.
    progress("waiting for every Service's EndpointSlice to list its pods");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    loop {
        let listed = slices.list(&ListParams::default()).await?.items;
        let complete = listed
            .iter()
            .filter(|slice| slice.endpoints.iter().flatten().count() == PODS_PER_SERVICE)
            .count();
        if complete == services {
            break;
        }
        progress(format!("{complete} of {services} EndpointSlices complete"));
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let mut wanted = Answers::new();
    for i in 0..endpoints {
        let mut values = match follows_service(i) {
            true => addresses[&format!("s{i}")].clone(),
            false => vec![address(0, i)],
        };
        values.sort();
        wanted.insert(fqdn(i, &ZONES), values);
    }

    let dns_endpoints: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "bulwark.dev",
            "v1alpha1",
            "DnsEndpoint",
        )),
    );
    for_each("DnsEndpoints", endpoints, |i| {
        let api = dns_endpoints.clone();
        async move {
            if !follows_service(i) {
                return set_literal(&api, i, 0).await;
            }
            let endpoint = json!({
                "apiVersion": "bulwark.dev/v1alpha1", "kind": "DnsEndpoint",
                "metadata": {"name": format!("e{i}")},
                "spec": {"zoneRef": zone_of(i, &ZONES).replace('.', "-"), "fqdn": fqdn(i, &ZONES),
                         "ttl": 30, "targets": [{"serviceRef": {"name": format!("s{i}")}}]},
            });
            api.create(&PostParams::default(), &serde_json::from_value(endpoint)?)
                .await?;
            Ok(())
        }
    })
    .await?;
    let slo_api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "bulwark.dev",
            "v1alpha1",
            "ServiceLevelObjective",
        )),
    );
    for_each("ServiceLevelObjectives", slos, |i| {
        let api = slo_api.clone();
        async move {
            let slo: Value = json!({
                "apiVersion": "bulwark.dev/v1alpha1", "kind": "ServiceLevelObjective",
                "metadata": {"name": format!("slo{i}")},
                "spec": {"service": format!("svc{i}"), "objective": 99.9, "period": "30d",
                         "indicator": {"ratio": {
                             "errors": format!("http_requests_total{{job=\"svc{i}\",code=~\"5..\"}}"),
                             "total": format!("http_requests_total{{job=\"svc{i}\"}}")}}},
            });
            api.create(&PostParams::default(), &serde_json::from_value(slo)?)
                .await?;
            Ok(())
        }
    })
    .await?;

    // Two replicas from nothing to every name served.
    progress("starting two operator replicas");
    let operators_started = Instant::now();
    let mut operators = replicas(&cluster.kubeconfig, &ns, &prometheus.url, &logs)?;
    let (to_served, _) = until_served(&bind, &ZONES, &wanted, Duration::from_secs(1800)).await?;
    row(
        &mut rows,
        format!("start → all {endpoints} names served at BIND9"),
        format!("{:.1} s", to_served.as_secs_f64()),
    );
    for operator in &operators {
        let lost = write_conflicts(operator).await?;
        row(
            &mut rows,
            format!(
                "  {}: endpoint writes lost to a 409 until then",
                operator.identity
            ),
            format!("{lost:?}"),
        );
    }
    let peak_at_start: Vec<Usage> = operators
        .iter()
        .map(|o| usage(pid(o)?))
        .collect::<Result<_>>()?;
    let api_port = api_server_port(&cluster.kubeconfig)?;
    progress("settling for 60 s");
    tokio::time::sleep(Duration::from_secs(30)).await;
    // One reading can land on a passing spike of several MiB: steady is the median of a reading
    // a second over the last 30 s.
    let mut readings: Vec<Vec<Usage>> = vec![Vec::new(); operators.len()];
    for _ in 0..30 {
        for (operator, readings) in operators.iter().zip(&mut readings) {
            readings.push(usage(pid(operator)?)?);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for ((operator, first), mut readings) in operators.iter().zip(&peak_at_start).zip(readings) {
        let now = *readings.last().expect("30 readings");
        readings.sort_by(|a, b| a.rss_mib.total_cmp(&b.rss_mib));
        let steady = readings[readings.len() / 2];
        let (low, high) = (readings[0].rss_mib, readings[readings.len() - 1].rss_mib);
        row(
            &mut rows,
            format!("{}: RSS peak / steady", operator.identity),
            format!(
                "{:.0} MiB / {:.0} MiB = {} ({low:.0} to {high:.0} MiB over 30 s; peak {:.0} MiB when all names were served)",
                now.peak_rss_mib,
                steady.rss_mib,
                steady.resident_parts(),
                first.peak_rss_mib
            ),
        );
        let mib = |bytes: f64| bytes / (1 << 20) as f64;
        row(
            &mut rows,
            format!(
                "{}: heap allocated / resident, at the end",
                operator.identity
            ),
            format!(
                "{:.1} MiB / {:.1} MiB (jemalloc: live allocations / the resident pages it holds)",
                mib(unlabelled_metric(operator, "bulwark_heap_allocated_bytes").await?),
                mib(unlabelled_metric(operator, "bulwark_heap_resident_bytes").await?),
            ),
        );
        row(
            &mut rows,
            format!(
                "{}: connections to the API server, steady",
                operator.identity
            ),
            connections_to(pid(operator)?, api_port)?.to_string(),
        );
        row(
            &mut rows,
            format!("{}: CPU", operator.identity),
            format!(
                "{:.1} s over {:.0} s",
                now.cpu_seconds,
                operators_started.elapsed().as_secs_f64()
            ),
        );
    }

    // Prometheus queries per SLO status interval, steady state.
    let queries_before = prometheus_queries(&prometheus).await?;
    tokio::time::sleep(SLO_STATUS_INTERVAL * 3).await;
    let per_interval = (prometheus_queries(&prometheus).await? - queries_before) / 3.0;
    row(
        &mut rows,
        format!(
            "Prometheus queries per {}s status interval, {slos} SLOs",
            SLO_STATUS_INTERVAL.as_secs()
        ),
        format!("{per_interval:.0}"),
    );

    // A burst: `burst` literal endpoints changed at once.
    let changed = literal_indexes(endpoints, burst);
    for &i in &changed {
        wanted.insert(fqdn(i, &ZONES), vec![address(1, i)]);
    }
    let metrics_before = api_metrics(&client).await?;
    let mut conflicts_before = Vec::new();
    for operator in &operators {
        conflicts_before.push(write_conflicts(operator).await?);
    }
    // What the burst cost each process: on two cores, whichever is near 2 s per second bounds it.
    let mut busy: Vec<(String, i32)> = operators
        .iter()
        .map(|o| Ok((o.identity.clone(), pid(o)?)))
        .collect::<Result<_>>()?;
    if let Some(plane) = cluster.local.lock().unwrap().as_ref() {
        for component in ["kube-apiserver", "etcd"] {
            busy.extend(
                plane
                    .pid_of(component)
                    .map(|pid| (component.to_owned(), pid)),
            );
        }
    }
    let cpu_before: Vec<f64> = busy
        .iter()
        .map(|(_, pid)| usage(*pid).map(|u| u.cpu_seconds))
        .collect::<Result<_>>()?;
    let burst_started = Instant::now();
    let changed_at = std::sync::Mutex::new(HashMap::new());
    let peak_pending = std::cell::Cell::new(0);
    let burst_run = async {
        for_each("burst of changes", changed.len(), |k| {
            let (api, i, changed_at) = (dns_endpoints.clone(), changed[k], &changed_at);
            async move {
                set_literal(&api, i, 1).await?;
                let now = Instant::now();
                changed_at.lock().unwrap().insert(fqdn(i, &ZONES), now);
                Ok(())
            }
        })
        .await?;
        until_served(&bind, &ZONES, &wanted, Duration::from_secs(600)).await
    };
    let (_, first_served) = tokio::select! {
        served = burst_run => served?,
        () = sample_pending(&operators, &peak_pending) => unreachable!("sampling never ends"),
    };
    let took = burst_started.elapsed();
    let metrics_after = api_metrics(&client).await?;
    let requests = Requests::between(
        &api_requests(&metrics_before),
        &api_requests(&metrics_after),
    );
    let mut latencies: Vec<f64> = changed_at
        .into_inner()
        .unwrap()
        .iter()
        .map(|(name, at)| {
            first_served[name]
                .saturating_duration_since(*at)
                .as_secs_f64()
        })
        .collect();
    row(
        &mut rows,
        format!("burst: {burst} endpoints changed at once → all served"),
        format!(
            "{:.1} s = {:.0} plans/s",
            took.as_secs_f64(),
            burst as f64 / took.as_secs_f64()
        ),
    );
    row(
        &mut rows,
        "burst: change → served at BIND9, p50 / p99 (to within one zone transfer)",
        format!(
            "{:.2} s / {:.2} s",
            quantile(&mut latencies, 0.5),
            quantile(&mut latencies, 0.99)
        ),
    );
    let spent: Vec<String> = busy
        .iter()
        .zip(&cpu_before)
        .map(|((name, pid), before)| {
            let seconds = usage(*pid).map_or(0.0, |u| u.cpu_seconds) - before;
            format!("{name} {:.2}", seconds / took.as_secs_f64())
        })
        .collect();
    row(
        &mut rows,
        "burst: CPU seconds per second (of 2 cores)",
        spent.join(", "),
    );
    row(
        &mut rows,
        "burst: most endpoints pending enactment at once (bulwark_dns_pending_endpoints)",
        format!("{}", peak_pending.get()),
    );
    row(
        &mut rows,
        "API requests per plan in the burst (writes / all, the bench's own changes included)",
        format!(
            "{:.1} / {:.1}",
            requests.writes / burst as f64,
            requests.all / burst as f64
        ),
    );
    row(
        &mut rows,
        "  most frequent, per plan",
        requests.top(burst as f64),
    );
    row(
        &mut rows,
        "  API server time per request in the burst",
        api_latency(&metrics_before, &metrics_after),
    );
    for (operator, before) in operators.iter().zip(&conflicts_before) {
        let lost: Vec<String> = write_conflicts(operator)
            .await?
            .into_iter()
            .map(|(writer, count)| (writer.clone(), count - before.get(&writer).unwrap_or(&0.0)))
            .filter(|(_, lost)| *lost > 0.0)
            .map(|(writer, lost)| format!("{writer} {:.2}", lost / burst as f64))
            .collect();
        row(
            &mut rows,
            format!(
                "  {}: endpoint writes lost to a 409, per plan",
                operator.identity
            ),
            if lost.is_empty() {
                "none".into()
            } else {
                lost.join(", ")
            },
        );
    }

    // A restart with everything live: no writes, every name verified.
    progress("restarting both replicas with everything live");
    for operator in &mut operators {
        operator.process.stop(Duration::from_secs(10));
    }
    let requests_before = api_requests(&api_metrics(&client).await?);
    let restarted = Instant::now();
    let operators = replicas(
        &cluster.kubeconfig,
        &ns,
        &prometheus.url,
        &logs.join("restarted"),
    )?;
    let verify_deadline = Instant::now() + Duration::from_secs(600);
    let verified_in = loop {
        let mut verified = 0;
        for operator in &operators {
            verified = verified.max(verified_by(operator).await.unwrap_or(0));
        }
        if verified >= endpoints {
            break restarted.elapsed();
        }
        if Instant::now() > verify_deadline {
            bail!("{verified} of {endpoints} names verified 600 s after the restart");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let requests = Requests::between(
        &requests_before,
        &api_requests(&api_metrics(&client).await?),
    );
    row(
        &mut rows,
        "restart with all live → every name's fence read at the server",
        format!("{:.1} s", verified_in.as_secs_f64()),
    );
    row(
        &mut rows,
        "restart: API writes until then (+5 s)",
        format!("{:.0}", requests.writes),
    );
    row(&mut rows, "  most frequent requests", requests.top(1.0));
    drop(operators);

    // external-dns on the same names (literal addresses; it has no Service-to-name CRD source),
    // in zones of its own on the same BIND9.
    let edns = external_dns(
        &client,
        &cluster.kubeconfig,
        &bind,
        &logs,
        endpoints,
        burst,
        &mut rows,
    )
    .await;
    if let Err(error) = edns {
        row(&mut rows, "external-dns", format!("failed: {error:#}"));
    }

    println!();
    println!(
        "Scale: {endpoints} DnsEndpoints in {} zones on one BIND9 ({} following Services of {} kwok pods, {} literal), {slos} SLOs on one Prometheus, 2 replicas (release); external-dns {}",
        ZONES.len(),
        endpoints.div_ceil(2),
        services * PODS_PER_SERVICE,
        endpoints / 2,
        pinned("EXTERNAL_DNS_VERSION")
    );
    let width = rows.iter().map(|r| r.what.len()).max().unwrap_or(0);
    for row in &rows {
        println!("  {:<width$}  {}", row.what, row.figure);
    }
    progress(format!(
        "done in {:.0} s; logs in {}",
        started.elapsed().as_secs_f64(),
        logs.display()
    ));
    Ok(())
}

/// external-dns (RFC 2136, CRD source) on `endpoints` names with literal addresses: RSS, time
/// to its first full sync, and the same burst.
async fn external_dns(
    client: &kube::Client,
    kubeconfig: &Path,
    bind: &Bind,
    logs: &Path,
    endpoints: usize,
    burst: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    bulwark_e2e::dns::install_external_dns_crd(client).await?;
    let ns = cluster().namespace("bench-scale-edns").await;
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &bulwark_e2e::dns::external_dns_resource(),
    );
    let apply = |i: usize, round: usize| {
        let api = api.clone();
        async move {
            let object = json!({
                "apiVersion": "externaldns.k8s.io/v1alpha1", "kind": "DNSEndpoint",
                "metadata": {"name": format!("e{i}")},
                "spec": {"endpoints": [{"dnsName": fqdn(i, &EDNS_ZONES), "recordTTL": 30,
                                        "recordType": "A", "targets": [address(round, i)]}]},
            });
            api.patch(
                &format!("e{i}"),
                &PatchParams::apply("bench-scale").force(),
                &Patch::Apply(object),
            )
            .await?;
            anyhow::Ok(())
        }
    };
    for_each("external-dns DNSEndpoints", endpoints, |i| apply(i, 0)).await?;
    let mut wanted: Answers = (0..endpoints)
        .map(|i| (fqdn(i, &EDNS_ZONES), vec![address(0, i)]))
        .collect();
    // Its fastest settings, as in `./dev bench dns`, and no client-side API rate limit: at its
    // default (5 requests/s) it had served none of 3,000 names after 3 minutes, its log silent.
    let fastest = [
        "--events",
        "--min-event-sync-interval=0s",
        "--interval=1s",
        "--kube-api-qps=1000",
        "--kube-api-burst=1000",
    ];
    let log = logs.join("external-dns.log");
    let mut process = start_external_dns(bind, &EDNS_ZONES, &ns, kubeconfig, &fastest, &log)?;
    let (first_sync, _) = until_served(bind, &EDNS_ZONES, &wanted, Duration::from_secs(1800))
        .await
        .with_context(|| format!("external-dns log tail:\n{}", process.log_tail(20)))?;
    row(
        rows,
        format!("external-dns: start → all {endpoints} names served"),
        format!("{:.1} s", first_sync.as_secs_f64()),
    );
    let changed = literal_indexes(endpoints, burst);
    for &i in &changed {
        wanted.insert(fqdn(i, &EDNS_ZONES), vec![address(1, i)]);
    }
    let burst_started = Instant::now();
    for_each("external-dns burst", changed.len(), |k| {
        apply(changed[k], 1)
    })
    .await?;
    until_served(bind, &EDNS_ZONES, &wanted, Duration::from_secs(1800)).await?;
    let took = burst_started.elapsed();
    row(
        rows,
        format!("external-dns: burst of {burst} → all served"),
        format!(
            "{:.1} s = {:.0} changes/s",
            took.as_secs_f64(),
            burst as f64 / took.as_secs_f64()
        ),
    );
    let pid = process.pid().context("external-dns is not running")?;
    let used = usage(pid)?;
    row(
        rows,
        "external-dns: RSS peak / now, CPU",
        format!(
            "{:.0} MiB / {:.0} MiB = {}, {:.1} s",
            used.peak_rss_mib,
            used.rss_mib,
            used.resident_parts(),
            used.cpu_seconds
        ),
    );
    process.check_alive()?;
    process.stop(Duration::from_secs(5));
    Ok(())
}
