//! `bulwark`: the operator binary.

mod api_client;
mod heap;
mod http;
mod leader;
mod slo_cli;
mod telemetry;

use anyhow::Context as _;
use bulwark_chaos::slow_enactor::SlowEnactor;
use bulwark_controllers::dns::{
    self,
    fencing::Strategy,
    runtime::{DnsSettings, EndpointsAndPlans},
};
use bulwark_controllers::drills::{self, run_controller::DrillSettings};
use bulwark_controllers::postgres::{self, cluster::PostgresSettings};
use bulwark_controllers::runtime::parse_duration;
use bulwark_controllers::slo::{self, controller::SloSettings};
use bulwark_controllers::{events::Recorder, metrics::Metrics, readiness::Readiness, scope::Scope};
use clap::{Parser, Subcommand};
use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// jemalloc, not glibc's malloc: at 10,000 endpoints a replica's anonymous memory was 75 MiB
/// beside 83 MiB with glibc's default arenas, and 59 beside 70 with two arenas, in two
/// benchmark runs (`./dev bench scale`, two replicas, one preloading each allocator).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings (`_RJEM_MALLOC_CONF` overrides them): one arena, not four per CPU, and freed
/// pages handed back after one second, not ten, by a background thread even while a replica idles:
/// a replica's RSS is then its live heap more closely.
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_CONF: &[u8; 53] = b"narenas:1,background_thread:true,dirty_decay_ms:1000\0";

#[derive(Parser)]
#[command(
    name = "bulwark",
    version,
    about = "Bulwark: fenced DNS, replicated PostgreSQL, SLO alerting, DR drills"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers against the cluster in KUBECONFIG (or in-cluster config).
    Run(Box<RunArgs>),
    /// Write the CustomResourceDefinition manifests generated from the API types.
    Crdgen {
        /// Directories to write `<plural>.bulwark.dev.yaml` files into.
        #[arg(long = "out", default_values = ["crds", "charts/bulwark/crds"])]
        out: Vec<PathBuf>,
    },
    /// Work with ServiceLevelObjectives offline.
    #[command(subcommand)]
    Slo(SloCommand),
    /// Run a PostgreSQL instance: the main process of a DatabaseCluster's pod.
    Instance(Box<InstanceArgs>),
    /// Copy this binary to PATH: an instance pod's init container, which gives the PostgreSQL
    /// image the instance manager it runs.
    CopyBinary { path: PathBuf },
}

#[derive(clap::Args)]
struct InstanceArgs {
    /// The instance's volume (data directory, persisted epoch and role, sockets, log).
    #[arg(long, env = "BULWARK_INSTANCE_VOLUME")]
    volume: PathBuf,
    /// PostgreSQL's programs.
    #[arg(
        long,
        env = "BULWARK_POSTGRES_BIN",
        default_value = "/usr/lib/postgresql/15/bin"
    )]
    postgres_bin: PathBuf,
    #[arg(long, default_value_t = 5432)]
    port: u16,
    /// A new volume starts as the primary, or as a replica of this primary (host:port).
    #[arg(long)]
    bootstrap_replica_of: Option<String>,
    #[arg(long, default_value = "replicator")]
    replication_user: String,
    #[arg(long)]
    replication_password_file: PathBuf,
    /// The application database a new primary creates, owned by `--owner`.
    #[arg(long, value_parser = sql_name, requires_all = ["owner", "owner_password_file"])]
    database: Option<String>,
    #[arg(long, value_parser = sql_name)]
    owner: Option<String>,
    #[arg(long)]
    owner_password_file: Option<PathBuf>,
    /// A primary that hears from neither the API server (in-cluster config) nor any replica for
    /// this long stops at once (self-fencing). Unset: no isolation check.
    #[arg(long, value_parser = parse_duration)]
    isolation_timeout: Option<Duration>,
    /// The DatabaseCluster (in this pod's namespace) whose recorded epoch a primary checks with
    /// each isolation check: it starts serving only once that epoch is no newer than its own,
    /// and fences itself on a newer one.
    #[arg(long, requires = "isolation_timeout")]
    cluster: Option<String>,
    /// Address of the command API (HTTPS, client certificates only).
    #[arg(long, default_value = "0.0.0.0:8443")]
    api_addr: SocketAddr,
    /// A PostgreSQL setting, NAME=VALUE (repeatable); the ones Bulwark manages come after and win.
    #[arg(long = "parameter", value_parser = parameter)]
    parameters: Vec<(String, String)>,
    #[arg(long)]
    tls_cert: PathBuf,
    #[arg(long)]
    tls_key: PathBuf,
    /// The cluster's CA: only certificates it signed may command this instance (the
    /// operator's), and a replica accepts only a primary whose certificate it signed.
    #[arg(long)]
    client_ca: PathBuf,
    #[arg(long, env = "BULWARK_LOG_FORMAT", value_enum, default_value_t)]
    log_format: telemetry::LogFormat,
}

#[derive(Subcommand)]
enum SloCommand {
    /// Print the PrometheusRule and Grafana dashboard ConfigMap each SLO in the file becomes.
    Render {
        /// YAML file of ServiceLevelObjectives (`-` for standard input).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Namespace for SLOs whose manifest names none.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Convert OpenSLO v1 SLO documents (and the SLIs they reference) to ServiceLevelObjectives.
    Import {
        /// YAML file of OpenSLO documents (`-` for standard input).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Namespace to put the ServiceLevelObjectives in.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "BULWARK_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    #[arg(long, env = "BULWARK_LOG_FORMAT", value_enum, default_value_t)]
    log_format: telemetry::LogFormat,
    /// Namespace of the leader Lease (default: the pod's namespace, else the kubeconfig's).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    #[arg(long, default_value = "bulwark-leader")]
    lease_name: String,
    /// This replica's identity in the Lease (default: the pod name, else host name and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long a leader's Lease stays valid after its last renewal, e.g. `15s`.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,
    /// A leader that cannot renew for this long steps down; must be below the lease duration.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    renew_deadline: Duration,
    /// Interval between renewals and acquisition attempts.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    retry_period: Duration,
    /// Watch only this namespace (default: every namespace not labelled bulwark.dev/exclude=true).
    #[arg(long, env = "BULWARK_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// DnsPlans kept below each endpoint's live generation (for audit and rollback).
    #[arg(long, default_value_t = 2)]
    dns_plan_retention: u64,
    /// How often a converged DnsEndpoint is checked against its DNS server again.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    dns_resync: Duration,
    /// Timeout of one exchange with a DNS server.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    dns_server_timeout: Duration,
    /// Prometheus whose HTTP API the SLO controller reads live burn rates from, e.g.
    /// `http://prometheus-operated.monitoring:9090`.
    #[arg(long, env = "BULWARK_PROMETHEUS_URL")]
    prometheus_url: Option<String>,
    /// How often each SLO's burn rates are read from Prometheus.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    slo_status_interval: Duration,
    /// Timeout of one Prometheus query.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    prometheus_timeout: Duration,
    /// PostgreSQL image of DatabaseCluster instance pods that name none (the official, Debian
    /// based one); without a tag, the cluster's `postgresVersion` is the tag.
    #[arg(
        long,
        env = "BULWARK_POSTGRES_IMAGE",
        default_value = "docker.io/library/postgres"
    )]
    postgres_image: String,
    /// This binary's image: an init container copies `bulwark` from it into each instance pod,
    /// whose main process it becomes (the PostgreSQL image has none).
    #[arg(long, env = "BULWARK_INSTANCE_MANAGER_IMAGE", default_value = concat!("ghcr.io/bulwark-dev/bulwark:", env!("CARGO_PKG_VERSION")))]
    instance_manager_image: String,
    /// `UID:GID` instance pods run as: the image's postgres user.
    #[arg(long, default_value = "999:999", value_parser = parse_user)]
    postgres_run_as: (i64, i64),
    /// TEST ONLY: enact DNS plans the unsafe way (check, then write without a fence; clean up by
    /// age), so tests can show the outage fencing prevents. Hidden; never set by the chart.
    #[arg(long, hide = true)]
    test_unfenced_enactment: bool,
    /// TEST ONLY (chaos): stall this long between reading a DNS plan and writing it.
    #[arg(long, hide = true, value_parser = parse_duration)]
    chaos_slow_enactor: Option<Duration>,
    /// TEST ONLY (chaos): run this supervised task (dns-planner, dns-zone-prober, dns-enactor,
    /// slo-controller, postgres-controller, http, leader-election) as one that panics a second after start, to prove that a dead task
    /// takes the replica down.
    #[arg(long, hide = true)]
    chaos_crash_task: Option<String>,
}

fn parse_user(text: &str) -> Result<(i64, i64), String> {
    let invalid = || format!("`{text}` is not UID:GID, for example 999:999");
    let (uid, gid) = text.split_once(':').ok_or_else(invalid)?;
    Ok((
        uid.parse().map_err(|_| invalid())?,
        gid.parse().map_err(|_| invalid())?,
    ))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Slo(command) => {
            let result = match command {
                SloCommand::Render { file, namespace } => slo_cli::render_file(&file, &namespace),
                SloCommand::Import { file, namespace } => {
                    slo_cli::import_file(&file, namespace.as_deref())
                }
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bulwark slo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Crdgen { out } => match crdgen(&out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bulwark crdgen: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::CopyBinary { path } => match copy_binary(&path) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bulwark copy-binary: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Instance(args) => {
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            match runtime.block_on(instance(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bulwark instance: {}", format!("{e:#}").replace('\n', " "));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(args) => {
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            match runtime.block_on(run(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // One actionable line, whatever the cause.
                    eprintln!("bulwark: {}", format!("{e:#}").replace('\n', " "));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn copy_binary(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let this = std::env::current_exe().context("finding this binary")?;
    // Written aside and renamed, so a restarted init container never leaves half a binary.
    let partial = path.with_extension("partial");
    std::fs::copy(&this, &partial)
        .with_context(|| format!("copying {} to {}", this.display(), partial.display()))?;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&partial, path).with_context(|| format!("{}", path.display()))?;
    println!("copied {} to {}", this.display(), path.display());
    Ok(())
}

async fn instance(args: InstanceArgs) -> anyhow::Result<()> {
    use bulwark_controllers::postgres::{api, instance::Role, manager};
    telemetry::init(args.log_format);
    bulwark_controllers::runtime::ensure_crypto_provider();
    let tls = bulwark_controllers::tls::TlsFiles {
        cert: args.tls_cert,
        key: args.tls_key,
        client_ca: args.client_ca,
    };
    let config = manager::Config {
        volume: args.volume,
        bin_dir: args.postgres_bin,
        port: args.port,
        bootstrap: match args.bootstrap_replica_of {
            Some(primary) => Role::Replica { primary },
            None => Role::Primary,
        },
        replication_user: args.replication_user,
        replication_password_file: args.replication_password_file,
        database: match (args.database, args.owner, args.owner_password_file) {
            (Some(name), Some(owner), Some(owner_password_file)) => Some(manager::Database {
                name,
                owner,
                owner_password_file,
            }),
            _ => None,
        },
        cluster: args.cluster,
        tls: tls.clone(),
        parameters: args.parameters,
    };
    // Connected before anything starts, so a missing in-cluster config fails at once.
    let api_server = match args.isolation_timeout {
        Some(bound) => Some((
            kube::Client::try_default()
                .await
                .context("the API server client the isolation check needs")?,
            bound,
        )),
        None => None,
    };
    // Bound before bootstrapping, so a taken port fails at once.
    let tcp = tokio::net::TcpListener::bind(args.api_addr)
        .await
        .with_context(|| format!("binding the command API on {}", args.api_addr))?;
    let manager = manager::Manager::open(config).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    info!(address = %args.api_addr, "command API listening");
    let supervisor = tokio::spawn(manager.clone().supervise(shutdown.clone()));
    if let Some((client, bound)) = api_server {
        info!(bound = ?bound, "self-fencing when isolated");
        tokio::spawn(
            manager
                .clone()
                .watch_isolation(client, bound, shutdown.clone()),
        );
    }
    let served = api::serve(manager, tcp, &tls, shutdown.clone()).await;
    shutdown.cancel();
    supervisor.await?;
    served
}

fn parameter(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("{text:?}: expected NAME=VALUE")),
    }
}

/// A role or database name Bulwark puts in SQL: lower-case letters, digits and underscores.
fn sql_name(name: &str) -> Result<String, String> {
    let valid = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(name.to_string())
    } else {
        Err(format!(
            "{name:?}: use at most 63 lower-case letters, digits and underscores, not starting with a digit"
        ))
    }
}

fn crdgen(dirs: &[PathBuf]) -> anyhow::Result<()> {
    for dir in dirs {
        let written =
            bulwark_crds::write_all(dir).with_context(|| format!("writing {}", dir.display()))?;
        println!("{}: {}", dir.display(), written.join(", "));
    }
    Ok(())
}

/// Where the client configuration came from, for error messages.
fn config_source() -> String {
    if let Ok(path) = std::env::var("KUBECONFIG") {
        return format!("kubeconfig {path}");
    }
    let default = std::env::var("HOME")
        .map(|h| format!("{h}/.kube/config"))
        .unwrap_or_default();
    if std::path::Path::new(&default).exists() || std::env::var("KUBERNETES_SERVICE_HOST").is_err()
    {
        format!("kubeconfig {default}")
    } else {
        "in-cluster service account".into()
    }
}

/// Builds a client and proves the API server answers, so a wrong kubeconfig fails in seconds.
/// Runs before logging starts, so a failure is the one line `main` prints, not a log stream.
async fn connect() -> anyhow::Result<(kube::Client, String, String)> {
    let hint =
        "start the local control plane with `./dev up`, or set KUBECONFIG to a reachable cluster";
    let source = config_source();
    let mut config = kube::Config::infer().await.map_err(|e| {
        anyhow::anyhow!("cannot load a Kubernetes client config ({source}): {e}; {hint}")
    })?;
    config.connect_timeout = Some(Duration::from_secs(5));
    // Above the watcher's 290 s server-side timeout: an idle watch must not look like a failure.
    config.read_timeout = Some(Duration::from_secs(295));
    let url = config.cluster_url.clone();
    let namespace = config.default_namespace.clone();
    let client = api_client::client(config)
        .map_err(|e| anyhow::anyhow!("invalid Kubernetes client config ({source}): {e}; {hint}"))?;
    let version = match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version())
        .await
    {
        Ok(Ok(version)) => version.git_version,
        Ok(Err(e)) => {
            anyhow::bail!("cannot reach the Kubernetes API server {url} ({source}): {e}; {hint}")
        }
        Err(_) => anyhow::bail!(
            "the Kubernetes API server {url} ({source}) did not answer within 10s; {hint}"
        ),
    };
    Ok((client, namespace, format!("{url} ({version})")))
}

/// Fails with one actionable line when the cluster lacks Bulwark's CRDs: without them every
/// watch would retry forever and the operator would sit unready without saying why.
async fn require_crds(client: &kube::Client) -> anyhow::Result<()> {
    let wanted: Vec<String> = bulwark_crds::all()
        .iter()
        .map(|crd| crd.spec.names.plural.clone())
        .collect();
    let served: Vec<String> = match client
        .list_api_group_resources("bulwark.dev/v1alpha1")
        .await
    {
        Ok(list) => list.resources.into_iter().map(|r| r.name).collect(),
        Err(e) if bulwark_controllers::runtime::is_not_found(&e) => Vec::new(),
        Err(e) => return Err(e).context("discovering the bulwark.dev API"),
    };
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|name| !served.contains(name))
        .map(String::as_str)
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "the cluster does not serve bulwark.dev/v1alpha1 {}; install the CRDs with `kubectl apply -f crds/` (the Helm chart installs them too)",
        missing.join(", ")
    );
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    // A leader notices a failed renewal at most one request timeout (2 retry periods) after the
    // deadline; that must still be before a standby may take the lease.
    anyhow::ensure!(
        args.renew_deadline + 2 * args.retry_period < args.lease_duration,
        "--renew-deadline plus two --retry-period must be shorter than --lease-duration, or two leaders could overlap"
    );
    let (client, default_namespace, server) = connect().await?;
    require_crds(&client).await?;
    telemetry::init(args.log_format);
    info!(%server, "connected to the Kubernetes API");
    let metrics = Metrics::new();
    metrics
        .registry
        .register(Box::new(heap::HeapCollector::new()))
        .expect("metric names are unique");
    let readiness = Readiness::default();
    readiness.gate("apiserver").open();

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let identity = args.identity.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let election = leader::ElectionConfig {
        lease_name: args.lease_name,
        namespace: args.lease_namespace.unwrap_or(default_namespace),
        identity,
        lease_duration: args.lease_duration,
        renew_deadline: args.renew_deadline,
        retry_period: args.retry_period,
    };
    info!(identity = %election.identity, lease = %election.lease_name, namespace = %election.namespace, "starting");
    let identity = election.identity.clone();
    let (elector, leadership) = leader::Elector::new(client.clone(), election, metrics.clone());
    let recorder = Recorder::new(client.clone(), "bulwark", &identity);
    metrics
        .registry
        .register(Box::new(recorder.dropped.clone()))
        .expect("metric names are unique");
    let strategy = if args.test_unfenced_enactment {
        warn!("TEST ONLY: DNS enactment is unfenced; stale plans can overwrite newer ones");
        Strategy::Unfenced
    } else {
        Strategy::Fenced
    };
    // Every long-running task is supervised: one that ends before shutdown (a panic, a stream
    // closed for good) takes the process down with a non-zero exit, so Kubernetes restarts the
    // replica instead of leaving one that looks healthy and does nothing.
    let mut tasks = Supervisor::new(args.chaos_crash_task.clone());
    let scope = match args.watch_namespace {
        Some(namespace) => Scope::pinned(namespace),
        None => {
            let (scope, namespace_cache) =
                Scope::cluster_wide(&client, &readiness, shutdown.clone());
            tasks.spawn("namespace-cache", namespace_cache);
            scope
        }
    };
    info!(?scope, "managing");
    let dns_settings = DnsSettings {
        scope: scope.clone(),
        identity,
        strategy,
        retention: args.dns_plan_retention,
        resync: args.dns_resync,
        server_timeout: args.dns_server_timeout,
        slow_enactor: SlowEnactor::new(args.chaos_slow_enactor.unwrap_or_default()),
    };
    let mut dns_caches = EndpointsAndPlans::new(&client, scope.namespace());
    tasks.spawn(
        "dns-planner",
        dns::planner::run(
            client.clone(),
            metrics.clone(),
            recorder.clone(),
            readiness.clone(),
            leadership.clone(),
            dns_settings.clone(),
            &mut dns_caches,
            shutdown.clone(),
        ),
    );
    tasks.spawn(
        "dns-zone-prober",
        dns::zones::run(
            client.clone(),
            metrics.clone(),
            readiness.clone(),
            leadership.clone(),
            dns_settings.clone(),
            shutdown.clone(),
        ),
    );
    tasks.spawn(
        "dns-enactor",
        dns::enactor::run(
            client.clone(),
            metrics.clone(),
            recorder.clone(),
            readiness.clone(),
            leadership.clone(),
            dns_settings,
            &mut dns_caches,
            shutdown.clone(),
        ),
    );
    tasks.spawn("dns-caches", dns_caches.run(shutdown.clone()));
    tasks.spawn(
        "postgres-controller",
        postgres::cluster::run(
            client.clone(),
            metrics.clone(),
            recorder.clone(),
            readiness.clone(),
            leadership.clone(),
            PostgresSettings {
                scope: scope.clone(),
                postgres_image: args.postgres_image,
                instance_manager_image: args.instance_manager_image,
                run_as: args.postgres_run_as,
            },
            shutdown.clone(),
        ),
    );
    let drill_settings = DrillSettings {
        scope: scope.clone(),
    };
    tasks.spawn(
        "drill-run-controller",
        drills::run_controller::run(
            client.clone(),
            metrics.clone(),
            recorder.clone(),
            readiness.clone(),
            leadership.clone(),
            drill_settings.clone(),
            shutdown.clone(),
        ),
    );
    tasks.spawn(
        "drill-schedule-controller",
        drills::schedule_controller::run(
            client.clone(),
            metrics.clone(),
            recorder.clone(),
            readiness.clone(),
            leadership.clone(),
            drill_settings,
            shutdown.clone(),
        ),
    );
    let slo_settings = SloSettings {
        scope,
        prometheus_url: args.prometheus_url,
        status_interval: args.slo_status_interval,
        query_timeout: args.prometheus_timeout,
    };
    tasks.spawn(
        "slo-controller",
        slo::controller::run(
            client.clone(),
            metrics.clone(),
            recorder,
            readiness.clone(),
            leadership.clone(),
            slo_settings,
            shutdown.clone(),
        ),
    );
    let http = http::serve(
        args.metrics_addr,
        metrics.clone(),
        readiness.clone(),
        shutdown.clone(),
    );
    tasks.spawn("http", async move {
        if let Err(error) = http.await {
            error!(%error, "metrics and probes server failed");
        }
    });
    tasks.spawn("leader-election", elector.run(shutdown.clone()));
    tasks.run_until(&shutdown).await
}

/// The replica's long-running tasks, by name.
struct Supervisor {
    tasks: tokio::task::JoinSet<()>,
    names: std::collections::HashMap<tokio::task::Id, &'static str>,
    crash: Option<String>,
}

impl Supervisor {
    fn new(crash: Option<String>) -> Self {
        Supervisor {
            tasks: tokio::task::JoinSet::new(),
            names: Default::default(),
            crash,
        }
    }

    fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let handle = if self.crash.as_deref() == Some(name) {
            warn!(
                task = name,
                "TEST ONLY (chaos): this task will panic in a second"
            );
            self.tasks.spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                panic!("chaos: task {name} crashed");
            })
        } else {
            self.tasks.spawn(task)
        };
        self.names.insert(handle.id(), name);
    }

    /// Waits for shutdown, or for the first task to end before it (then shuts the rest down and
    /// returns an error naming it). Either way every task is given time to finish: the elector
    /// releases the Lease on its way out, so a standby leads at once.
    async fn run_until(mut self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let died = tokio::select! {
            _ = shutdown.cancelled() => None,
            Some(ended) = self.tasks.join_next_with_id() => 'ended: {
                if shutdown.is_cancelled() {
                    break 'ended None;
                }
                let (id, how) = match ended {
                    Ok((id, ())) => (id, "returned"),
                    Err(error) if error.is_panic() => (error.id(), "panicked"),
                    Err(error) => (error.id(), "was cancelled"),
                };
                let name = self.names.get(&id).copied().unwrap_or("unknown");
                error!(task = name, how, "a task ended before shutdown; stopping the replica so it is restarted");
                shutdown.cancel();
                Some((name, how))
            }
        };
        info!("shutting down");
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!("tasks still running 10 s after shutdown; exiting anyway");
        }
        match died {
            Some((name, how)) => anyhow::bail!("task {name} {how} before shutdown"),
            None => {
                info!("stopped");
                Ok(())
            }
        }
    }
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_parse_with_units_and_reject_garbage() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("15h").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("soon").is_err());
    }
}
