//! `bulwark-local` (`./dev up`): the whole system on this machine, until Ctrl-C:
//! the local control plane with its node agents, Bulwark's CRDs, the operator installed by its
//! Helm chart (cluster-wide, as pods), BIND9 serving `bulwark.test` with its TSIG key in a Secret
//! and a DnsZone for it, and Prometheus scraping the operator and a synthetic `checkout` service
//! and loading every PrometheusRule's groups (what the Prometheus Operator would do). So
//! `kubectl apply -f examples/` shows a DNS answer and an SLO's live status.
//!
//! `--use-current-kubeconfig` only installs the CRDs and runs the operator as a process against
//! the cluster in `$KUBECONFIG`. With `BULWARK_LOCAL_STATE=FILE`, where every part is goes to
//! FILE as JSON once everything is up (the e2e test of this command reads it).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bulwark_controllers::slo::prometheus_rule_resource;
use bulwark_crds::dns::DnsZone;
use bulwark_e2e::bind::Bind;
use bulwark_e2e::chart::Release;
use bulwark_e2e::control_plane::ControlPlane;
use bulwark_e2e::operator::Operator;
use bulwark_e2e::process::free_port;
use bulwark_e2e::slo::{Exporter, Prometheus, install_prometheus_rule_crd};
use bulwark_e2e::{binaries, client_for, dns, eventually, install_crds};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::{Value, json};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Where the chart is installed.
const SYSTEM_NAMESPACE: &str = "bulwark-system";
/// The zone BIND9 serves, and the DnsZone (in `default`) that examples/ refer to.
const ZONE: &str = "bulwark.test";
const ZONE_OBJECT: &str = "bulwark";
const EXAMPLES_NAMESPACE: &str = "default";
/// The synthetic service examples/slo.yaml measures: 20 requests/s, 0.05% failing (half the
/// budget's burn rate of a 99.9% objective), so live status has numbers at once.
const CHECKOUT_JOB: &str = "checkout";
const CHECKOUT_ERROR_RATIO: f64 = 0.0005;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    // Installed first: a Ctrl-C during startup waits until everything started can be stopped.
    let mut stop = StopSignals::install()?;
    if std::env::args().any(|a| a == "--use-current-kubeconfig") {
        return operator_against_current_kubeconfig(stop).await;
    }
    let started = Instant::now();
    println!(
        "starting the local control plane (first run builds the Kubernetes binaries; this takes a while)"
    );
    let plane = ControlPlane::start()?;
    println!(
        "control plane ready in {:.1}s at {}",
        plane.started_in.as_secs_f64(),
        plane.server
    );
    let client = client_for(&plane.kubeconfig).await?;
    install_crds(&client).await.context("installing CRDs")?;
    install_prometheus_rule_crd(&client).await?;

    let bind = Bind::start_in(&plane.dir, &[ZONE])?;
    dns::create_zone_for(&client, EXAMPLES_NAMESPACE, ZONE_OBJECT, &bind, ZONE).await?;
    println!("BIND9 serving {ZONE} at {}", bind.server());

    let operator_targets = plane.dir.join("prometheus-operator-targets.json");
    std::fs::write(&operator_targets, "[]")?;
    let checkout = Exporter::start(CHECKOUT_JOB, 20.0)?;
    checkout.set_error_ratio(CHECKOUT_ERROR_RATIO);
    let scrapes = vec![
        json!({"job_name": CHECKOUT_JOB, "honor_labels": true,
               "static_configs": [{"targets": [checkout.address]}]}),
        // The operator's pods: Debian's Prometheus has no Kubernetes discovery, so the loop
        // below keeps their addresses in a file Prometheus watches.
        json!({"job_name": "bulwark", "file_sd_configs": [{"files": [operator_targets]}]}),
    ];
    let prometheus =
        Prometheus::start_scraping(&plane.dir.join("prometheus"), free_port()?, scrapes, "5s")
            .await?;
    println!("Prometheus at {}", prometheus.url);

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = json!({"metadata": {"name": SYSTEM_NAMESPACE}});
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(namespace)?)
        .await?;
    println!("installing the Helm chart into {SYSTEM_NAMESPACE} (the operator runs as its pods)");
    let (postgres_uid, postgres_gid) = bulwark_e2e::postgres::postgres_user();
    let release = Release::install(
        &plane.kubeconfig,
        SYSTEM_NAMESPACE,
        &[
            format!("slo.prometheusURL={}", prometheus.url),
            "slo.statusInterval=10s".into(),
            // DatabaseCluster pods run this machine's PostgreSQL as its postgres user.
            format!("postgres.runAsUser={postgres_uid}"),
            format!("postgres.runAsGroup={postgres_gid}"),
        ],
    )?;
    let operator_pods: Vec<String> = release
        .pods(&client)
        .await?
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    let zones: Api<DnsZone> = Api::namespaced(client.clone(), EXAMPLES_NAMESPACE);
    let zone_ready = eventually(Duration::from_secs(60), "DnsZone bulwark Ready", || async {
        let status = zones.get(ZONE_OBJECT).await.ok()?.status?;
        let ready = status.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        (ready.status == "True").then(|| format!("{}: {}", ready.reason, ready.message))
    })
    .await?;

    let kubectl = binaries::binary("kubectl")?;
    let (dns_host, dns_port) = bind
        .server()
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.to_string()))
        .unwrap();
    println!(
        r#"
Bulwark is up ({:.0}s):
  Kubernetes API  {server}   (nodes node-a/b/c run pods as processes; kwok nodes for scale)
  operator        Helm release bulwark in {SYSTEM_NAMESPACE}: pods {pods}
  DNS             BIND9 at {dns} serving {ZONE}; DnsZone {EXAMPLES_NAMESPACE}/{ZONE_OBJECT} Ready ({zone_ready}),
                  TSIG key in Secret {EXAMPLES_NAMESPACE}/{secret}
  Prometheus      {prometheus} scraping the operator and a synthetic `{CHECKOUT_JOB}` service,
                  loading every PrometheusRule
  logs            {logs}

Use it with:
  export KUBECONFIG={kubeconfig}
  alias kubectl={kubectl}
  kubectl apply -f examples/
  dig @{dns_host} -p {dns_port} api.{ZONE} +short
  kubectl get dnsendpoints,dnsplans,slo

Press Ctrl-C to stop everything."#,
        started.elapsed().as_secs_f64(),
        server = plane.server,
        pods = operator_pods.join(", "),
        dns = bind.server(),
        secret = dns::SECRET_NAME,
        prometheus = prometheus.url,
        logs = plane.dir.join("logs").display(),
        kubeconfig = plane.kubeconfig.display(),
        kubectl = kubectl.display(),
    );
    if let Some(path) = std::env::var_os("BULWARK_LOCAL_STATE") {
        let state = json!({
            "kubeconfig": plane.kubeconfig, "kubectl": kubectl,
            "dnsServer": bind.server(), "zone": ZONE, "prometheus": prometheus.url,
        });
        std::fs::write(path, state.to_string())?;
    }

    let mut loaded_groups = Value::Null;
    let mut scraped = Value::Null;
    loop {
        tokio::select! {
            _ = stop.received() => break,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        match release.pods(&client).await {
            Ok(pods) => {
                let targets: Vec<String> = pods
                    .into_iter()
                    .filter_map(|p| Some(format!("{}:8080", p.status?.pod_ip?)))
                    .collect();
                let file = json!([{"targets": targets}]);
                if file != scraped {
                    std::fs::write(&operator_targets, file.to_string())?;
                    scraped = file;
                }
            }
            Err(error) => eprintln!("listing the operator's pods: {error:#}"),
        }
        match rule_groups(&client).await {
            Ok(groups) if groups != loaded_groups => match prometheus.load_rules(&groups).await {
                Ok(()) => loaded_groups = groups,
                Err(error) => eprintln!("loading PrometheusRules into Prometheus: {error:#}"),
            },
            Ok(_) => {}
            Err(error) => eprintln!("listing PrometheusRules: {error:#}"),
        }
    }
    println!("stopping");
    // The release goes with the control plane; no uninstall needed.
    release.keep();
    drop(prometheus);
    drop(bind);
    drop(plane);
    Ok(())
}

/// Every PrometheusRule's groups, in a stable order.
async fn rule_groups(client: &kube::Client) -> Result<Value> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &prometheus_rule_resource());
    let mut rules = api.list(&Default::default()).await?.items;
    rules.sort_by_key(|r| (r.metadata.namespace.clone(), r.metadata.name.clone()));
    let groups: Vec<Value> = rules
        .iter()
        .flat_map(|r| {
            r.data["spec"]["groups"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    Ok(Value::Array(groups))
}

/// `--use-current-kubeconfig`: the CRDs and one operator process against an existing cluster.
async fn operator_against_current_kubeconfig(mut stop: StopSignals) -> Result<()> {
    let kubeconfig = std::env::var_os("KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".kube/config")
        });
    println!("using the cluster in {}", kubeconfig.display());
    let client = client_for(&kubeconfig).await?;
    install_crds(&client).await.context("installing CRDs")?;
    let mut operator = Operator::start(&kubeconfig, "bulwark-local", &[], &std::env::temp_dir())?;
    eventually(
        Duration::from_secs(10),
        "the operator to be ready",
        || async {
            operator
                .get("/readyz")
                .await
                .ok()
                .filter(|(code, _)| *code == 200)
        },
    )
    .await
    .with_context(|| format!("log: {}", operator.process.log.display()))?;
    println!(
        "operator running: metrics at http://{}/metrics, log {}\nPress Ctrl-C to stop it.",
        operator.metrics_addr,
        operator.process.log.display()
    );
    loop {
        tokio::select! {
            _ = stop.received() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => operator.process.check_alive()?,
        }
    }
    operator.process.stop(Duration::from_secs(10));
    Ok(())
}

/// SIGINT and SIGTERM, held from startup on so that children are always stopped.
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    fn install() -> Result<Self> {
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn received(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
