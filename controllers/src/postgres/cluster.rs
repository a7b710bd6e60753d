//! The DatabaseCluster controller (leader only). It owns each cluster's instance pods and their
//! PVCs (no StatefulSet: which pod is primary is the operator's decision, not an ordinal's), the
//! `-rw`, `-ro` and `-r` Services, a PodDisruptionBudget, the cluster's CA and credential
//! Secrets. It observes every instance manager over mutual TLS and carries out
//! `failover::decide` one step at a time: the epoch and progress are written to status with a
//! resourceVersion compare-and-set before any side effect, and leadership is re-checked right
//! before each write and each command.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulwark_crds::postgres::{
    DatabaseCluster, DatabaseClusterStatus, Durability, FailoverProgress, FailoverRecord,
    InstanceStatus, Reclaim,
};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role as RbacRole, RoleBinding};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::failover::{
    self, Kind, Member, Observation, Planned, Progress, Recorded, Replication, Step,
};
use super::instance::{Command, Role};
use super::manager::Status as InstanceReport;
use super::pki;
use super::rollout::{self, Next};
use crate::conditions;
use crate::events::Recorder;
use crate::leadership::{Leadership, became_leader, still_leading};
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::runtime::{
    Backoff, apply_status, as_leader, cached, drain, forget_deleted, is_not_found, object_key,
    parse_duration, publish,
};
use crate::scope::Scope;

const CONTROLLER: &str = "postgres";
const FIELD_MANAGER: &str = "bulwark-postgres";
pub const CLUSTER_LABEL: &str = "bulwark.dev/cluster";
/// `primary` on the primary of the current epoch (the `-rw` Service's selector), `replica` on
/// streaming replicas (`-ro`); absent otherwise.
pub const ROLE_LABEL: &str = "bulwark.dev/role";
/// Each instance's pod carries its own name, for a drill's NetworkPolicy to select.
pub const INSTANCE_LABEL: &str = "bulwark.dev/instance";
/// On each instance pod: the hash of the template it was made from ([`Reconciler::template`]).
const TEMPLATE_ANNOTATION: &str = "bulwark.dev/template";
pub const POSTGRES_PORT: i32 = 5432;
pub const API_PORT: u16 = 8443;
const REPLICATION_USER: &str = "bulwark_replication";
const VOLUME: &str = "/var/lib/bulwark";
/// Where an instance pod's init container puts the `bulwark` binary its main container runs.
const MANAGER_DIR: &str = "/bulwark";
const MANAGER_BINARY: &str = "/bulwark/bulwark";
/// How long an instance may take to report its status (a few milliseconds when healthy).
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);
/// How long an instance that did not answer last time is waited for, how soon it is asked
/// again, and how often it is given the full timeout ([`Seen::status_timeout`]).
const SILENT_STATUS_TIMEOUT: Duration = Duration::from_millis(200);
const SILENT_RETRY: Duration = Duration::from_secs(1);
const PATIENCE_INTERVAL: Duration = Duration::from_secs(5);
const REAPPLY_INTERVAL: Duration = Duration::from_secs(60);
/// How long a command may take (a promotion waits for the end of recovery and a checkpoint).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Steps carried out in one reconcile before the cluster is looked at afresh from the cache.
const STEPS_PER_RECONCILE: usize = 16;

#[derive(Clone, Debug)]
pub struct PostgresSettings {
    pub scope: Scope,
    /// PostgreSQL image of instance pods whose DatabaseCluster names none; tagged with the
    /// cluster's major version unless it has a tag.
    pub postgres_image: String,
    /// The operator's own image, which an init container copies `bulwark` from.
    pub instance_manager_image: String,
    /// User and group the instance pods run as (the image's postgres user).
    pub run_as: (i64, i64),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

/// What the operator remembers of each instance between reconciles (a new leader starts
/// afresh, which only makes it wait a full failover delay before judging a primary down).
struct Seen {
    healthy_at: Instant,
    /// Whether its manager answered the last status request, when it was last asked, and when
    /// it was last given the full [`STATUS_TIMEOUT`]: see [`Seen::status_timeout`].
    answered: bool,
    asked_at: Instant,
    patient_at: Instant,
    /// The primary's WAL position when last seen healthy.
    position: Option<u64>,
}

impl Seen {
    fn new(now: Instant) -> Self {
        Seen {
            healthy_at: now,
            answered: true,
            asked_at: now,
            patient_at: now,
            position: None,
        }
    }

    /// How long to wait for this instance's status now; `None`: count it silent without asking.
    /// A failover observes every instance at each of its steps, and a hung one must not cost
    /// each step a timeout: one that did not answer is asked again only after
    /// [`SILENT_RETRY`], with [`SILENT_STATUS_TIMEOUT`], and given the full timeout once every
    /// [`PATIENCE_INTERVAL`], so one that is slow but alive is heard again.
    fn status_timeout(&mut self, now: Instant) -> Option<Duration> {
        if self.answered || now.duration_since(self.patient_at) >= PATIENCE_INTERVAL {
            self.asked_at = now;
            self.patient_at = now;
            return Some(STATUS_TIMEOUT);
        }
        if now.duration_since(self.asked_at) < SILENT_RETRY {
            return None;
        }
        self.asked_at = now;
        Some(SILENT_STATUS_TIMEOUT)
    }
}

struct Context {
    client: kube::Client,
    metrics: Metrics,
    recorder: Recorder,
    leadership: watch::Receiver<Leadership>,
    settings: PostgresSettings,
    backoff: Backoff,
    /// By `<cluster uid>/<instance>`: a cluster deleted and created again under its name starts
    /// afresh, rather than finding its new primary "down" since the old one's last answer.
    seen: Mutex<HashMap<String, Seen>>,
    /// When each cluster's own objects (Secrets, RBAC, Services, PodDisruptionBudget; by the
    /// cluster's uid) were last applied: they depend only on its name, so a cluster polled every
    /// second re-applies them only every [`REAPPLY_INTERVAL`] (bringing back one deleted by hand).
    applied: Mutex<HashMap<String, Instant>>,
    /// The `storage.size` every claim of a cluster (by uid) was last found to request, so
    /// steady polls do not read the claims again until the size changes.
    sized: Mutex<HashMap<String, String>>,
    /// The clusters there are, to forget deleted ones in the maps above.
    clusters: Store<DatabaseCluster>,
}

impl Context {
    /// A handful of clusters per replica: scanning them on every reconcile costs nothing.
    fn forget_deleted_clusters(&self) {
        forget_deleted(&mut self.seen.lock().unwrap(), &self.clusters);
        forget_deleted(&mut self.applied.lock().unwrap(), &self.clusters);
        forget_deleted(&mut self.sized.lock().unwrap(), &self.clusters);
    }
}

pub async fn run(
    client: kube::Client,
    metrics: Metrics,
    recorder: Recorder,
    readiness: Readiness,
    leadership: watch::Receiver<Leadership>,
    settings: PostgresSettings,
    shutdown: CancellationToken,
) {
    let namespace = settings.scope.namespace();
    let (clusters, cluster_events) = cached::<DatabaseCluster>(
        &client,
        namespace,
        watcher::Config::default(),
        readiness.gate(format!("{CONTROLLER}/DatabaseCluster")),
    );
    let (_pods, pod_events) = cached::<Pod>(
        &client,
        namespace,
        watcher::Config::default().labels(CLUSTER_LABEL),
        readiness.gate(format!("{CONTROLLER}/Pod")),
    );
    let context = Arc::new(Context {
        client,
        metrics,
        recorder,
        leadership: leadership.clone(),
        settings,
        backoff: Backoff::default(),
        seen: Mutex::new(HashMap::new()),
        applied: Mutex::new(HashMap::new()),
        sized: Mutex::new(HashMap::new()),
        clusters: clusters.clone(),
    });
    use kube::runtime::WatchStreamExt;
    let results = Controller::for_stream(cluster_events.applied_objects(), clusters)
        .owns_stream(pod_events.touched_objects())
        .reconcile_all_on(became_leader(leadership))
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, context);
    drain(CONTROLLER, results).await;
}

fn error_policy(cluster: Arc<DatabaseCluster>, error: &Error, context: Arc<Context>) -> Action {
    warn!(cluster = %object_key(&*cluster), %error, "DatabaseCluster reconciliation failed");
    context.backoff.failed(&object_key(&*cluster))
}

async fn reconcile(cluster: Arc<DatabaseCluster>, context: Arc<Context>) -> Result<Action, Error> {
    let (cluster, context) = (&*cluster, &*context);
    as_leader(
        cluster,
        CONTROLLER,
        &context.leadership,
        &context.settings.scope,
        &context.metrics,
        &context.backoff,
        |token| async move {
            Reconciler::new(cluster, context, token)
                .run((*cluster).clone())
                .await
        },
    )
    .await
}

/// An HTTPS client presenting the operator's certificate, trusting only the cluster's CA, and
/// reaching each instance by its pod name (the name its certificate carries).
pub async fn instance_client(
    secrets: &Api<Secret>,
    cluster: &str,
    pods: &[Pod],
) -> anyhow::Result<reqwest::Client> {
    let secret = secrets.get(&format!("{cluster}-operator-tls")).await?;
    let field = |key: &str| -> anyhow::Result<Vec<u8>> {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone())
            .ok_or_else(|| anyhow::anyhow!("Secret {} has no {key}", secret.name_any()))
    };
    crate::runtime::ensure_crypto_provider();
    let identity = reqwest::Identity::from_pem(&[field("tls.crt")?, field("tls.key")?].concat())?;
    let ca = reqwest::Certificate::from_pem(&field("ca.crt")?)?;
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([ca])
        .identity(identity)
        .connect_timeout(Duration::from_secs(1));
    for pod in pods {
        if let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref())
            && let Ok(ip) = ip.parse::<std::net::IpAddr>()
        {
            builder = builder.resolve(&pod.name_any(), std::net::SocketAddr::new(ip, API_PORT));
        }
    }
    Ok(builder.build()?)
}

/// A Kubernetes binary quantity (`16Mi`, `1G`, `1024`) in bytes.
pub fn quantity_bytes(text: &str) -> Option<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let factor: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(factor)
}

/// A PostgreSQL LSN (`16/B374D848`) as a byte position.
pub fn lsn_position(lsn: &str) -> Option<u64> {
    let (high, low) = lsn.split_once('/')?;
    Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
}

/// What the operator makes of an instance manager's report.
pub fn report(status: &InstanceReport) -> failover::Report {
    let position = [
        &status.current_lsn,
        &status.received_lsn,
        &status.replayed_lsn,
        &status.final_lsn,
    ]
    .into_iter()
    .filter_map(|lsn| lsn.as_deref().and_then(lsn_position))
    .max();
    let streaming_from = match (&status.role, status.wal_receiver.as_deref()) {
        (Role::Replica { primary }, Some("streaming")) => Some(primary.clone()),
        _ => None,
    };
    failover::Report {
        state: super::instance::State {
            epoch: status.epoch,
            role: status.role.clone(),
            synchronous: status.synchronous.clone(),
        },
        running: status.running,
        writable: status.running && status.in_recovery == Some(false),
        wal_position: position,
        streaming_from,
    }
}

fn instance_name(cluster: &str, ordinal: u32) -> String {
    format!("{cluster}-{ordinal}")
}

fn progress_of(status: &DatabaseClusterStatus) -> Option<Progress> {
    status.failover.as_ref().map(|f| Progress {
        kind: Kind::from_name(&f.kind),
        from: f.from.clone(),
        to: f.to.clone(),
        epoch: f.epoch,
        reason: f.reason.clone(),
    })
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

struct Reconciler<'a> {
    context: &'a Context,
    token: u64,
    namespace: String,
    name: String,
    uid: String,
    owner: Value,
}

/// An instance pod and what its manager said.
struct Observed {
    pod: Pod,
    report: Option<InstanceReport>,
}

impl<'a> Reconciler<'a> {
    fn new(cluster: &DatabaseCluster, context: &'a Context, token: u64) -> Self {
        let owner = json!({
            "apiVersion": DatabaseCluster::api_version(&()),
            "kind": DatabaseCluster::kind(&()),
            "name": cluster.name_any(),
            "uid": cluster.uid().unwrap_or_default(),
            "controller": true,
            "blockOwnerDeletion": true,
        });
        Reconciler {
            context,
            token,
            namespace: cluster.namespace().unwrap_or_default(),
            name: cluster.name_any(),
            uid: cluster.uid().unwrap_or_default(),
            owner,
        }
    }

    /// The key of an instance in [`Context::seen`].
    fn seen_key(&self, instance: &str) -> String {
        format!("{}/{instance}", self.uid)
    }

    fn leading(&self) -> bool {
        still_leading(&self.context.leadership, self.token)
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.context.client.clone(), &self.namespace)
    }

    /// Server-side apply of an object this controller owns, unless leadership was lost.
    async fn apply<K>(&self, name: &str, object: Value) -> Result<(), Error>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        if !self.leading() {
            return Ok(());
        }
        self.api::<K>()
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(object),
            )
            .await?;
        Ok(())
    }

    fn labels(&self) -> Value {
        json!({
            CLUSTER_LABEL: self.name,
            "app.kubernetes.io/managed-by": "bulwark",
        })
    }

    async fn run(&self, mut cluster: DatabaseCluster) -> Result<Action, Error> {
        self.context.forget_deleted_clusters();
        let uid = self.uid.clone();
        let applied_at = self.context.applied.lock().unwrap().get(&uid).copied();
        if applied_at.is_none_or(|at| at.elapsed() >= REAPPLY_INTERVAL) {
            self.ensure_secrets().await?;
            self.ensure_instance_account().await?;
            self.ensure_services().await?;
            self.context
                .applied
                .lock()
                .unwrap()
                .insert(uid, Instant::now());
        }
        if cluster
            .status
            .as_ref()
            .and_then(|s| s.primary.as_ref())
            .is_none()
        {
            // The first instance bootstraps as primary of epoch 0, recorded before it exists.
            let mut status = cluster.status.clone().unwrap_or_default();
            status.primary = Some(instance_name(&self.name, 1));
            status.phase = Some("Creating".into());
            self.write_status(&cluster, &status, true).await?;
            return Ok(Action::requeue(Duration::ZERO));
        }
        // A steady cluster is looked at every second: a hung primary is noticed only by looking,
        // and the sooner the failover begins, the sooner `-rw` stops routing clients to it.
        let mut outcome = Action::requeue(Duration::from_secs(1));
        for _ in 0..STEPS_PER_RECONCILE {
            let observed = self.observe(&cluster).await?;
            // Also while no primary serves: growing a full volume may be what brings it back.
            let blocked = match self.ensure_instances(&cluster, &observed).await? {
                None => self.grow_volumes(&cluster).await?,
                blocked => blocked,
            };
            // Until the user fixes it, look again now and then, not at the pace of a failover.
            let retry = blocked.as_ref().map(|_| Duration::from_secs(5));
            let (step, rollout) = self.decide(&cluster, &observed);
            let done = match step {
                Step::Steady => {
                    if let Next::Replace { name, reason } = &rollout {
                        self.replace(&cluster, name, reason).await?;
                        outcome = Action::requeue(Duration::from_secs(1));
                    }
                    let updating = rollout != Next::Done;
                    self.settle(&cluster, &observed, None, blocked, updating)
                        .await?;
                    true
                }
                Step::Wait(reason) => {
                    self.settle(&cluster, &observed, Some(reason), blocked, false)
                        .await?;
                    outcome = Action::requeue(retry.unwrap_or(Duration::from_millis(300)));
                    true
                }
                Step::Begin(progress) => {
                    self.begin(&cluster, &observed, progress).await?;
                    false
                }
                Step::Send { member, command } => {
                    self.send(&cluster, &observed, &member, &command).await?;
                    false
                }
                Step::Complete { primary } => {
                    self.complete(&cluster, &primary).await?;
                    false
                }
            };
            if done || !self.leading() {
                break;
            }
            cluster = self.api::<DatabaseCluster>().get(&self.name).await?;
        }
        Ok(outcome)
    }

    async fn ensure_secrets(&self) -> Result<(), Error> {
        let secrets = self.api::<Secret>();
        let operator_secret = format!("{}-operator-tls", self.name);
        if secrets.get_opt(&operator_secret).await?.is_none() {
            // Clients verify the name they connect by: an instance's, or a Service's in any of
            // the forms cluster DNS resolves.
            let services = ["rw", "ro", "r"].map(|suffix| format!("{}-{suffix}", self.name));
            let names = (1..=9)
                .map(|n| instance_name(&self.name, n))
                .chain(services.iter().flat_map(|service| {
                    let ns = &self.namespace;
                    [
                        service.clone(),
                        format!("{service}.{ns}"),
                        format!("{service}.{ns}.svc"),
                        format!("{service}.{ns}.svc.cluster.local"),
                    ]
                }))
                .collect();
            let pki = pki::issue(&self.name, names)?;
            for (secret, issued) in [
                (format!("{}-instance-tls", self.name), &pki.server),
                (operator_secret, &pki.operator),
            ] {
                let object = json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": secret, "labels": self.labels(), "ownerReferences": [self.owner]},
                    "type": "kubernetes.io/tls",
                    "stringData": {"tls.crt": issued.cert, "tls.key": issued.key, "ca.crt": pki.ca},
                });
                self.apply::<Secret>(&secret, object).await?;
            }
        }
        let ca = secrets
            .get(&format!("{}-instance-tls", self.name))
            .await?
            .data
            .and_then(|data| data.get("ca.crt").cloned())
            .map(|ca| String::from_utf8_lossy(&ca.0).into_owned())
            .unwrap_or_default();
        let cluster = self.api::<DatabaseCluster>().get(&self.name).await?;
        let bootstrap = &cluster.spec.bootstrap;
        for (secret, user) in [
            (format!("{}-replication", self.name), REPLICATION_USER),
            (format!("{}-app", self.name), bootstrap.owner.as_str()),
        ] {
            if secrets.get_opt(&secret).await?.is_some() {
                continue;
            }
            let password = random_password();
            let host = format!("{}-rw.{}.svc", self.name, self.namespace);
            let database = &bootstrap.database;
            let object = json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": secret, "labels": self.labels(), "ownerReferences": [self.owner]},
                "type": "kubernetes.io/basic-auth",
                "stringData": {
                    "username": user, "password": password, "host": host,
                    "port": POSTGRES_PORT.to_string(), "dbname": database,
                    "uri": format!("postgresql://{user}:{password}@{host}:{POSTGRES_PORT}/{database}?sslmode=require"),
                    "ca.crt": ca,
                },
            });
            self.apply::<Secret>(&secret, object).await?;
        }
        Ok(())
    }

    /// The instance pods' identity: it may read its own DatabaseCluster (the recorded epoch)
    /// and nothing else.
    fn instance_account(&self) -> String {
        format!("{}-instance", self.name)
    }

    async fn ensure_instance_account(&self) -> Result<(), Error> {
        let name = self.instance_account();
        let metadata =
            json!({"name": name, "labels": self.labels(), "ownerReferences": [self.owner]});
        self.apply::<ServiceAccount>(
            &name,
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata}),
        )
        .await?;
        let role = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": metadata,
            "rules": [{"apiGroups": ["bulwark.dev"], "resources": ["databaseclusters"], "resourceNames": [self.name], "verbs": ["get"]}],
        });
        self.apply::<RbacRole>(&name, role).await?;
        let binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": metadata,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": self.namespace}],
        });
        self.apply::<RoleBinding>(&name, binding).await
    }

    async fn ensure_services(&self) -> Result<(), Error> {
        for (suffix, role) in [
            ("rw", Some("primary")),
            ("ro", Some("replica")),
            ("r", None),
        ] {
            let name = format!("{}-{suffix}", self.name);
            let mut selector = json!({CLUSTER_LABEL: self.name});
            if let Some(role) = role {
                selector[ROLE_LABEL] = role.into();
            }
            let object = json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "labels": self.labels(), "ownerReferences": [self.owner]},
                "spec": {
                    "selector": selector,
                    "ports": [{"name": "postgres", "port": POSTGRES_PORT, "targetPort": POSTGRES_PORT}],
                },
            });
            self.apply::<Service>(&name, object).await?;
        }
        let object = json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": self.name, "labels": self.labels(), "ownerReferences": [self.owner]},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {CLUSTER_LABEL: self.name}}},
        });
        self.apply::<PodDisruptionBudget>(&self.name, object).await
    }

    /// Every instance pod, and the status its manager reports (none when it did not answer).
    async fn observe(&self, cluster: &DatabaseCluster) -> Result<Vec<Observed>, Error> {
        let pods = self
            .api::<Pod>()
            .list(&ListParams::default().labels(&format!("{CLUSTER_LABEL}={}", self.name)))
            .await?;
        let http = self.instance_client(&pods.items).await?;
        let timeouts: Vec<Option<Duration>> = {
            let mut seen = self.context.seen.lock().unwrap();
            pods.items
                .iter()
                .map(|pod| match seen.get_mut(&self.seen_key(&pod.name_any())) {
                    Some(seen) => seen.status_timeout(Instant::now()),
                    None => Some(STATUS_TIMEOUT),
                })
                .collect()
        };
        let reports =
            futures::future::join_all(pods.items.iter().zip(timeouts).map(|(pod, timeout)| {
                let http = http.clone();
                let name = pod.name_any();
                async move {
                    let response = http
                        .get(format!("https://{name}:{API_PORT}/status"))
                        .timeout(timeout?)
                        .send()
                        .await
                        .ok()?;
                    response.json::<InstanceReport>().await.ok()
                }
            }))
            .await;
        let mut observed: Vec<Observed> = pods
            .items
            .into_iter()
            .zip(reports)
            .map(|(pod, report)| Observed { pod, report })
            .collect();
        observed.sort_by_key(|o| ordinal(&o.pod.name_any()));
        let recorded_primary = cluster.status.as_ref().and_then(|s| s.primary.clone());
        let mut seen = self.context.seen.lock().unwrap();
        for o in &observed {
            let entry = seen
                .entry(self.seen_key(&o.pod.name_any()))
                .or_insert_with(|| Seen::new(Instant::now()));
            entry.answered = o.report.is_some();
            if let Some(report) = o.report.as_ref().filter(|r| r.running) {
                entry.healthy_at = Instant::now();
                if recorded_primary.as_deref() == Some(o.pod.name_any().as_str()) {
                    entry.position = self::report(report).wal_position;
                }
            }
        }
        Ok(observed)
    }

    async fn instance_client(&self, pods: &[Pod]) -> Result<reqwest::Client, Error> {
        Ok(instance_client(&self.api::<Secret>(), &self.name, pods).await?)
    }

    /// Creates what is missing: a PVC and a pod for each of `spec.instances`, and removes the
    /// pods beyond it (never the primary). Returns why an instance could not be created, when
    /// that is something the user must fix.
    async fn ensure_instances(
        &self,
        cluster: &DatabaseCluster,
        observed: &[Observed],
    ) -> Result<Option<Problem>, Error> {
        let status = cluster.status.clone().unwrap_or_default();
        let primary = status.primary.clone().unwrap_or_default();
        let primary_address = observed
            .iter()
            .find(|o| o.pod.name_any() == primary)
            .and_then(pod_address);
        for ordinal in 1..=cluster.spec.instances {
            let name = instance_name(&self.name, ordinal);
            if observed.iter().any(|o| o.pod.name_any() == name) {
                continue;
            }
            // Only the very first instance of a new cluster starts a new database; every other
            // (and any instance recreated later) copies the current primary.
            let bootstrap_primary =
                name == primary && status.epoch == 0 && status.instances.is_empty();
            let replica_of = if bootstrap_primary {
                None
            } else if name == primary {
                // The primary's pod is gone (replaced, or its node lost): it comes back on its
                // volume, whose state says primary (and it serves only once the API server
                // confirms its epoch). Without its volume, it must not start an empty database.
                if self
                    .api::<PersistentVolumeClaim>()
                    .get_opt(&name)
                    .await?
                    .is_none()
                {
                    continue;
                }
                None
            } else if let Some(address) = &primary_address {
                Some(address.clone())
            } else {
                continue;
            };
            if let Some(problem) = self.ensure_volume(cluster, &name).await? {
                return Ok(Some(problem));
            }
            if !self.leading() {
                return Ok(None);
            }
            let mut pod = self.pod(cluster, &name, replica_of.as_deref());
            pod.annotations_mut()
                .insert(TEMPLATE_ANNOTATION.into(), self.template(cluster));
            match self.api::<Pod>().create(&PostParams::default(), &pod).await {
                Ok(_) => info!(cluster = %self.name, pod = %name, "instance pod created"),
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        for o in observed {
            let name = o.pod.name_any();
            if ordinal(&name) > cluster.spec.instances && name != primary && self.leading() {
                self.api::<Pod>()
                    .delete(&name, &DeleteParams::default())
                    .await?;
                if cluster.spec.storage.reclaim == Reclaim::Delete {
                    let pvcs = self.api::<PersistentVolumeClaim>();
                    if let Err(e) = pvcs.delete(&name, &DeleteParams::default()).await
                        && !is_not_found(&e)
                    {
                        return Err(e.into());
                    }
                }
            }
        }
        Ok(None)
    }

    /// Creates the instance's volume unless it exists, or says why it cannot be provisioned.
    async fn ensure_volume(
        &self,
        cluster: &DatabaseCluster,
        name: &str,
    ) -> Result<Option<Problem>, Error> {
        let pvcs = self.api::<PersistentVolumeClaim>();
        if pvcs.get_opt(name).await?.is_some() {
            return Ok(None);
        }
        let storage = &cluster.spec.storage;
        // Checked first: a claim for a class that does not exist stays Pending with no word
        // to the user, and its pod with it.
        if let Some(problem) = self
            .storage_class_problem(storage.storage_class_name.as_deref())
            .await?
        {
            return Ok(Some(problem));
        }
        let mut metadata = json!({"name": name, "labels": self.labels()});
        // Retain: the volumes outlive the cluster (no owner to garbage-collect them with).
        if storage.reclaim == Reclaim::Delete {
            metadata["ownerReferences"] = json!([self.owner]);
        }
        let mut spec = json!({
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": storage.size}},
        });
        if let Some(class) = &storage.storage_class_name {
            spec["storageClassName"] = class.clone().into();
        }
        let object = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata, "spec": spec});
        self.apply::<PersistentVolumeClaim>(name, object).await?;
        Ok(None)
    }

    /// The named StorageClass missing, or none named and no default one. A release watching
    /// one namespace may not read StorageClasses (cluster-scoped): it skips the check.
    async fn storage_class_problem(&self, class: Option<&str>) -> Result<Option<Problem>, Error> {
        let classes: Api<StorageClass> = Api::all(self.context.client.clone());
        let forbidden = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 403);
        let message = match class {
            Some(class) => match classes.get_opt(class).await {
                Err(e) if forbidden(&e) => return Ok(None),
                found => found?,
            }
            .is_none()
            .then(|| {
                format!(
                    "StorageClass {class} does not exist: create it or set spec.storage.storageClassName to one that does"
                )
            }),
            None => {
                let listed = match classes.list(&ListParams::default()).await {
                    Err(e) if forbidden(&e) => return Ok(None),
                    listed => listed?,
                };
                let default = listed.items.iter().any(|c| {
                    c.annotations()
                        .get("storageclass.kubernetes.io/is-default-class")
                        .is_some_and(|v| v == "true")
                });
                (!default).then(|| {
                    "spec.storage.storageClassName is not set and the cluster has no default StorageClass".to_string()
                })
            }
        };
        Ok(message.map(|message| Problem {
            reason: "StorageClassNotFound",
            message,
        }))
    }

    /// Grows each instance's claim to `storage.size` (admission refuses a smaller size; the
    /// volume's driver does the growing). Returns why a claim cannot grow: its StorageClass
    /// does not allow expansion, or the API server refuses; such a claim is left as it was.
    async fn grow_volumes(&self, cluster: &DatabaseCluster) -> Result<Option<Problem>, Error> {
        let size = &cluster.spec.storage.size;
        let uid = cluster.uid().unwrap_or_default();
        if self.context.sized.lock().unwrap().get(&uid) == Some(size) {
            return Ok(None);
        }
        let Some(wanted) = quantity_bytes(size) else {
            return Ok(None);
        };
        let claims = self.api::<PersistentVolumeClaim>();
        for ordinal in 1..=cluster.spec.instances {
            let name = instance_name(&self.name, ordinal);
            let Some(claim) = claims.get_opt(&name).await? else {
                continue;
            };
            let spec = claim.spec.unwrap_or_default();
            let requested = spec
                .resources
                .and_then(|r| r.requests)
                .and_then(|r| r.get("storage").map(|q| q.0.clone()))
                .unwrap_or_default();
            if quantity_bytes(&requested).is_none_or(|bytes| bytes >= wanted) {
                continue;
            }
            if let Some(class) = &spec.storage_class_name {
                let classes: Api<StorageClass> = Api::all(self.context.client.clone());
                // A release confined to one namespace cannot read classes: the API server
                // still refuses the patch below if the class does not allow it.
                if let Ok(Some(found)) = classes.get_opt(class).await
                    && found.allow_volume_expansion != Some(true)
                {
                    return Ok(Some(Problem {
                        reason: "VolumeNotExpandable",
                        message: format!(
                            "storage.size is {size} but StorageClass {class} does not allow volume expansion (allowVolumeExpansion): {name} stays at {requested}"
                        ),
                    }));
                }
            }
            if !self.leading() {
                return Ok(None);
            }
            let patch = json!({"spec": {"resources": {"requests": {"storage": size}}}});
            match claims
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    info!(cluster = %self.name, claim = %name, from = %requested, to = %size, "volume growing");
                    publish(
                        &self.context.recorder,
                        cluster,
                        EventType::Normal,
                        "VolumeExpanding",
                        format!("{name}'s volume grows from {requested} to {size}"),
                    )
                    .await;
                }
                Err(kube::Error::Api(e)) if e.code == 403 || e.code == 422 => {
                    return Ok(Some(Problem {
                        reason: "VolumeNotExpandable",
                        message: format!(
                            "{name}'s volume cannot grow from {requested} to {size}: {}",
                            e.message
                        ),
                    }));
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.context.sized.lock().unwrap().insert(uid, size.clone());
        Ok(None)
    }

    fn pod(&self, cluster: &DatabaseCluster, name: &str, replica_of: Option<&str>) -> Pod {
        let spec = &cluster.spec;
        let (uid, gid) = self.context.settings.run_as;
        let settings = &self.context.settings;
        let image = spec.image.clone().unwrap_or_else(|| {
            let default = &settings.postgres_image;
            let tagged = default
                .rsplit('/')
                .next()
                .is_some_and(|last| last.contains(':'));
            match tagged {
                true => default.clone(),
                false => format!("{default}:{}", spec.postgres_version),
            }
        });
        let mut args = vec![
            "instance".to_string(),
            format!("--volume={VOLUME}"),
            format!(
                "--postgres-bin=/usr/lib/postgresql/{}/bin",
                spec.postgres_version
            ),
            format!("--port={POSTGRES_PORT}"),
            format!("--api-addr=0.0.0.0:{API_PORT}"),
            format!("--replication-user={REPLICATION_USER}"),
            "--replication-password-file=/etc/bulwark/replication/password".into(),
            format!("--database={}", spec.bootstrap.database),
            format!("--owner={}", spec.bootstrap.owner),
            "--owner-password-file=/etc/bulwark/app/password".into(),
            "--tls-cert=/etc/bulwark/tls/tls.crt".into(),
            "--tls-key=/etc/bulwark/tls/tls.key".into(),
            "--client-ca=/etc/bulwark/tls/ca.crt".into(),
            format!("--isolation-timeout={}", spec.isolation_timeout),
            format!("--cluster={}", self.name),
        ];
        args.extend(
            spec.parameters
                .iter()
                .map(|(name, value)| format!("--parameter={name}={value}")),
        );
        if let Some(primary) = replica_of {
            args.push(format!("--bootstrap-replica-of={primary}"));
        }
        let secret = |volume: &str, secret: String| json!({"name": volume, "secret": {"secretName": secret}});
        let mount = |volume: &str| json!({"name": volume, "mountPath": format!("/etc/bulwark/{volume}"), "readOnly": true});
        let mut labels = self.labels();
        labels[INSTANCE_LABEL] = name.into();
        let mut container = json!({
            "name": "postgres",
            "image": image,
            "command": [MANAGER_BINARY],
            "args": args,
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "ports": [
                {"name": "postgres", "containerPort": POSTGRES_PORT},
                {"name": "instance-api", "containerPort": API_PORT},
            ],
            "readinessProbe": {"tcpSocket": {"port": POSTGRES_PORT}, "periodSeconds": 1, "failureThreshold": 1},
            "volumeMounts": [
                {"name": "data", "mountPath": VOLUME},
                {"name": "bulwark", "mountPath": MANAGER_DIR, "readOnly": true},
                mount("tls"), mount("replication"), mount("app"),
            ],
        });
        // PostgreSQL's image has no `bulwark`: this copies the operator's own into the pod (as
        // CloudNativePG does), so any PostgreSQL image of the Debian layout can run.
        let install_manager = json!({
            "name": "bulwark",
            "image": settings.instance_manager_image,
            "args": ["copy-binary", MANAGER_BINARY],
            "volumeMounts": [{"name": "bulwark", "mountPath": MANAGER_DIR}],
        });
        if let Some(resources) = &spec.resources {
            container["resources"] = serde_json::to_value(resources).unwrap_or_default();
        }
        let mut pod_spec = json!({
            "hostname": name,
            "serviceAccountName": self.instance_account(),
            "terminationGracePeriodSeconds": 10,
            "securityContext": {"runAsUser": uid, "runAsGroup": gid, "fsGroup": gid},
            "initContainers": [install_manager],
            "containers": [container],
            "topologySpreadConstraints": [{
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {CLUSTER_LABEL: self.name}},
            }],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": name}},
                {"name": "bulwark", "emptyDir": {}},
                secret("tls", format!("{}-instance-tls", self.name)),
                secret("replication", format!("{}-replication", self.name)),
                secret("app", format!("{}-app", self.name)),
            ],
        });
        if let Some(affinity) = &spec.affinity {
            pod_spec["affinity"] = serde_json::to_value(affinity).unwrap_or_default();
        }
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels, "ownerReferences": [self.owner]},
            "spec": pod_spec,
        }))
        .expect("the instance pod is a valid Pod")
    }

    /// Every instance's pod is made from the same template but for its name: a hash of it, so a
    /// pod made before a change to the spec (or to the operator) is known to be out of date.
    fn template(&self, cluster: &DatabaseCluster) -> String {
        let spec = serde_json::to_vec(&self.pod(cluster, "template", None).spec)
            .expect("a pod spec serializes");
        let digest = ring::digest::digest(&ring::digest::SHA256, &spec);
        digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Deletes an instance's pod for a rolling update; its volume stays, and the pod is made
    /// again from the current template.
    async fn replace(
        &self,
        cluster: &DatabaseCluster,
        name: &str,
        reason: &str,
    ) -> Result<(), Error> {
        if !self.leading() {
            return Ok(());
        }
        match self
            .api::<Pod>()
            .delete(name, &DeleteParams::default())
            .await
        {
            Err(e) if !is_not_found(&e) => return Err(e.into()),
            _ => {}
        }
        info!(cluster = %self.name, pod = %name, %reason, "instance replaced");
        publish(
            &self.context.recorder,
            cluster,
            EventType::Normal,
            "InstanceReplaced",
            format!("{name} recreated from the current template: {reason}"),
        )
        .await;
        Ok(())
    }

    /// The next failover step and, for when it is `Steady`, the next rolling change.
    fn decide(&self, cluster: &DatabaseCluster, observed: &[Observed]) -> (Step, Next) {
        let status = cluster.status.clone().unwrap_or_default();
        let recorded = Recorded {
            epoch: status.epoch,
            primary: status.primary.clone().unwrap_or_default(),
            progress: progress_of(&status),
        };
        let members: Vec<Member> = observed
            .iter()
            .map(|o| Member {
                name: o.pod.name_any(),
                address: pod_address(o),
                report: o.report.as_ref().map(report),
            })
            .collect();
        let template = self.template(cluster);
        let instances: Vec<rollout::Instance> = observed
            .iter()
            .zip(&members)
            .filter(|(o, _)| o.pod.metadata.deletion_timestamp.is_none())
            .map(|(o, member)| rollout::Instance {
                member,
                ordinal: ordinal(&member.name),
                current: o.pod.annotations().get(TEMPLATE_ANNOTATION) == Some(&template),
                ready: pod_ready(&o.pod) && o.report.as_ref().is_some_and(|r| r.running),
            })
            .collect();
        let rollout = rollout::next(&instances, &recorded.primary, cluster.spec.instances);
        let requested = cluster
            .spec
            .switchover_to
            .as_deref()
            .filter(|_| status.switchover_generation != cluster.metadata.generation)
            // Already there (a later spec change still names it): the rollout may go on.
            .filter(|to| *to != recorded.primary)
            .map(|to| Planned {
                to,
                reason: format!("switchover to {to} requested"),
            });
        let planned = requested.or(match &rollout {
            Next::Switchover { to, reason } => Some(Planned {
                to,
                reason: reason.clone(),
            }),
            _ => None,
        });
        // The CRD's pattern admits only durations this parses.
        let delay = parse_duration(&cluster.spec.failover.delay).unwrap_or_default();
        let (down_for_delay, last_primary_position) = {
            let seen = self.context.seen.lock().unwrap();
            let down = members
                .iter()
                .filter(|m| {
                    seen.get(&self.seen_key(&m.name))
                        .is_some_and(|s| s.healthy_at.elapsed() >= delay)
                })
                .map(|m| m.name.clone())
                .collect::<Vec<_>>();
            let position = seen
                .get(&self.seen_key(&recorded.primary))
                .and_then(|s| s.position);
            (down, position)
        };
        let replication = match &cluster.spec.synchronous {
            Some(sync) => Replication::Synchronous {
                count: sync.count,
                required: sync.durability == Durability::Required,
            },
            None => Replication::Asynchronous,
        };
        let step = failover::decide(&Observation {
            recorded: &recorded,
            members: &members,
            replication,
            down_for_delay: &down_for_delay,
            last_primary_position,
            max_lag: cluster
                .spec
                .failover
                .max_lag
                .as_deref()
                .and_then(quantity_bytes),
            switchover: planned,
        });
        (step, rollout)
    }

    /// Writes the whole status this controller owns (server-side apply drops what is left out);
    /// `compare_and_set`: only over the resourceVersion `cluster` was read at.
    async fn write_status(
        &self,
        cluster: &DatabaseCluster,
        status: &DatabaseClusterStatus,
        compare_and_set: bool,
    ) -> Result<(), Error> {
        if !self.leading() {
            return Ok(());
        }
        let resource_version = compare_and_set
            .then(|| cluster.resource_version())
            .flatten();
        apply_status(
            &self.context.client,
            cluster,
            FIELD_MANAGER,
            serde_json::to_value(status).map_err(anyhow::Error::from)?,
            resource_version.as_deref(),
        )
        .await?;
        Ok(())
    }

    async fn begin(
        &self,
        cluster: &DatabaseCluster,
        observed: &[Observed],
        progress: Progress,
    ) -> Result<(), Error> {
        let mut status = cluster.status.clone().unwrap_or_default();
        let kind = progress.kind.name();
        status.epoch = progress.epoch;
        status.phase = Some(if progress.kind == Kind::Switchover {
            "SwitchingOver".into()
        } else {
            "FailingOver".into()
        });
        // A retarget keeps the original start, so the recorded duration is the whole outage.
        let started = status
            .failover
            .as_ref()
            .map(|f| f.started.clone())
            .unwrap_or_else(now);
        if progress.kind == Kind::Switchover {
            status.switchover_generation = cluster.metadata.generation;
        }
        status.failover = Some(FailoverProgress {
            from: progress.from.clone(),
            to: progress.to.clone(),
            epoch: progress.epoch,
            reason: progress.reason.clone(),
            kind: kind.into(),
            started,
            step: "epoch recorded".into(),
        });
        // The compare-and-set: a leader that read an older status writes nothing.
        self.write_status(cluster, &status, true).await?;
        info!(cluster = %self.name, epoch = progress.epoch, from = %progress.from, to = %progress.to, kind, "failover begun");
        publish(
            &self.context.recorder,
            cluster,
            EventType::Warning,
            if progress.kind == Kind::Switchover {
                "SwitchoverStarted"
            } else {
                "FailoverStarted"
            },
            format!(
                "epoch {}: {} from {} to {}: {}",
                progress.epoch, kind, progress.from, progress.to, progress.reason
            ),
        )
        .await;
        // Off the -rw Service at once, before anything is asked of the instances.
        if let Some(old) = observed.iter().find(|o| o.pod.name_any() == progress.from) {
            self.label_role(&old.pod, None).await?;
        }
        Ok(())
    }

    async fn send(
        &self,
        cluster: &DatabaseCluster,
        observed: &[Observed],
        member: &str,
        command: &Command,
    ) -> Result<(), Error> {
        let pods: Vec<Pod> = observed.iter().map(|o| o.pod.clone()).collect();
        let http = self.instance_client(&pods).await?;
        if !self.leading() {
            return Ok(());
        }
        let response = http
            .post(format!("https://{member}:{API_PORT}/commands"))
            .timeout(COMMAND_TIMEOUT)
            .json(command)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{member}: {command:?}: {e}"))?;
        let code = response.status();
        let body = response.text().await.unwrap_or_default();
        if !code.is_success() {
            return Err(anyhow::anyhow!("{member} answered {code} to {command:?}: {body}").into());
        }
        info!(cluster = %self.name, %member, ?command, "instance command carried out");
        let note = match command {
            Command::Promote { epoch } => Some((
                "Promoted",
                format!("{member} promoted to primary of epoch {epoch}"),
            )),
            Command::Fence { epoch } => {
                Some(("Fenced", format!("{member} fenced for epoch {epoch}")))
            }
            Command::Demote { epoch } => Some((
                "Demoted",
                format!("{member} stopped cleanly for the switchover to epoch {epoch}"),
            )),
            Command::Follow { primary, epoch } => Some((
                "Following",
                format!("{member} follows {primary} in epoch {epoch}"),
            )),
            Command::Synchronous { .. } => None,
        };
        if let Some((reason, note)) = note {
            publish(
                &self.context.recorder,
                cluster,
                EventType::Normal,
                reason,
                note,
            )
            .await;
        }
        Ok(())
    }

    async fn complete(&self, cluster: &DatabaseCluster, primary: &str) -> Result<(), Error> {
        let mut status = cluster.status.clone().unwrap_or_default();
        if let Some(progress) = status.failover.take() {
            let started = progress.started.0;
            let duration = k8s_openapi::jiff::Timestamp::now().duration_since(started);
            let record = FailoverRecord {
                from: progress.from,
                to: primary.into(),
                epoch: progress.epoch,
                reason: progress.reason,
                kind: progress.kind,
                started: progress.started,
                duration_seconds: duration.as_secs_f64(),
            };
            publish(
                &self.context.recorder,
                cluster,
                EventType::Normal,
                "FailoverCompleted",
                format!(
                    "{} {} → {} in epoch {} took {:.1}s",
                    record.kind, record.from, record.to, record.epoch, record.duration_seconds
                ),
            )
            .await;
            status.last_failover = Some(record);
        }
        status.primary = Some(primary.into());
        self.write_status(cluster, &status, true).await
    }

    /// Labels each pod with its role, and writes the per-instance status and Conditions.
    async fn settle(
        &self,
        cluster: &DatabaseCluster,
        observed: &[Observed],
        waiting: Option<String>,
        blocked: Option<Problem>,
        updating: bool,
    ) -> Result<(), Error> {
        let mut problems: Vec<Problem> = blocked.into_iter().collect();
        let mut status = cluster.status.clone().unwrap_or_default();
        let primary = status.primary.clone().unwrap_or_default();
        let primary_position = observed
            .iter()
            .find(|o| o.pod.name_any() == primary)
            .and_then(|o| o.report.as_ref())
            .and_then(|r| report(r).wal_position);
        let mut instances = Vec::new();
        for o in observed {
            let name = o.pod.name_any();
            let role = o.report.as_ref().map(|r| {
                let serving_primary = r.role == Role::Primary
                    && r.running
                    && r.in_recovery == Some(false)
                    && r.epoch == status.epoch
                    && name == primary
                    && status.failover.is_none();
                if serving_primary {
                    Some("primary")
                } else if matches!(r.role, Role::Replica { .. }) && r.running {
                    Some("replica")
                } else {
                    None
                }
            });
            self.label_role(&o.pod, role.flatten()).await?;
            let ready = pod_ready(&o.pod);
            let (role_name, mut reason) = match &o.report {
                Some(r) => (
                    match &r.role {
                        Role::Primary => "primary",
                        Role::Replica { .. } => "replica",
                        Role::Fenced => "fenced",
                        Role::Demoted => "demoted",
                    },
                    r.fence_reason.clone(),
                ),
                None => match why_not_running(&o.pod) {
                    Some(why) => {
                        problems.push(Problem {
                            reason: "InstanceNotRunning",
                            message: format!("{name}: {why}"),
                        });
                        ("unknown", Some(why))
                    }
                    None => (
                        "unknown",
                        Some("the instance manager did not answer".into()),
                    ),
                },
            };
            if let Some(full) = o.report.as_ref().and_then(volume_full) {
                problems.push(Problem {
                    reason: "VolumeFull",
                    message: format!("{name}: {full}"),
                });
                reason.get_or_insert(full);
            }
            let position = o.report.as_ref().and_then(|r| report(r).wal_position);
            instances.push(InstanceStatus {
                name,
                role: role_name.into(),
                ready,
                epoch: o.report.as_ref().map(|r| r.epoch).unwrap_or_default(),
                timeline: o.report.as_ref().and_then(|r| r.timeline),
                received_lsn: o.report.as_ref().and_then(|r| r.received_lsn.clone()),
                replayed_lsn: o.report.as_ref().and_then(|r| r.replayed_lsn.clone()),
                lag_bytes: match (primary_position, position) {
                    (Some(p), Some(r)) if role_name == "replica" => Some(p.saturating_sub(r)),
                    _ => None,
                },
                reason,
            });
        }
        let ready = instances.iter().filter(|i| i.ready).count() as u32;
        let healthy_primary = instances
            .iter()
            .any(|i| i.name == primary && i.role == "primary" && i.ready);
        let wanted = cluster.spec.instances;
        status.phase = Some(
            if let Some(f) = &status.failover {
                if f.kind == "switchover" {
                    "SwitchingOver"
                } else {
                    "FailingOver"
                }
            } else if healthy_primary && ready >= wanted && updating {
                // A rolling update or a scale-down is under way.
                "Updating"
            } else if healthy_primary && ready >= wanted {
                "Healthy"
            } else if status.last_failover.is_none()
                && status.instances.is_empty()
                && !healthy_primary
            {
                "Creating"
            } else {
                "Degraded"
            }
            .into(),
        );
        let generation = cluster.metadata.generation;
        let mut conditions = status.conditions.clone();
        let mut set = |type_: &str, ok: bool, reason: &str, message: String| {
            let wanted = conditions::condition(&conditions, type_, ok, reason, message, generation);
            conditions.retain(|c| c.type_ != type_);
            conditions.push(wanted);
        };
        // What the user must fix comes before what the operator is waiting for.
        let problem_text = (!problems.is_empty()).then(|| {
            problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        });
        set(
            "Ready",
            healthy_primary,
            if healthy_primary {
                "PrimaryServing"
            } else {
                problems.first().map_or("NoPrimary", |p| p.reason)
            },
            if healthy_primary {
                format!(
                    "{primary} serves writes in epoch {}; {ready}/{wanted} instances ready",
                    status.epoch
                )
            } else {
                format!(
                    "no primary serves writes: {}",
                    problem_text
                        .clone()
                        .or(waiting.clone())
                        .unwrap_or_else(|| "starting".into())
                )
            },
        );
        let degraded = ready < wanted || !problems.is_empty();
        set(
            "Degraded",
            degraded,
            match problems.first() {
                Some(p) if degraded => p.reason,
                _ if degraded => "InstancesNotReady",
                _ => "AllInstancesReady",
            },
            match &problem_text {
                Some(text) if degraded => format!("{ready}/{wanted} instances ready: {text}"),
                _ => format!("{ready}/{wanted} instances ready"),
            },
        );
        let failing_over = status.failover.as_ref().filter(|f| f.kind != "switchover");
        let switching_over = status.failover.as_ref().filter(|f| f.kind == "switchover");
        for (type_, progress) in [
            ("FailingOver", failing_over),
            ("SwitchingOver", switching_over),
        ] {
            match progress {
                Some(p) => set(
                    type_,
                    true,
                    "InProgress",
                    format!(
                        "epoch {}: {} → {}: {}",
                        p.epoch,
                        p.from,
                        p.to,
                        waiting.clone().unwrap_or_else(|| p.reason.clone())
                    ),
                ),
                None => set(type_, false, "Idle", String::new()),
            }
        }
        let synchronous = cluster.spec.synchronous.as_ref();
        if let Some(sync) = synchronous.filter(|s| s.durability == Durability::Preferred) {
            let streaming = instances
                .iter()
                .filter(|i| i.role == "replica" && i.ready)
                .count() as u32;
            let degraded = streaming < sync.count;
            set(
                "SynchronousDegraded",
                degraded,
                if degraded {
                    "TooFewStandbys"
                } else {
                    "Synchronous"
                },
                format!(
                    "{streaming} standbys streaming, ANY {} wanted{}",
                    sync.count,
                    if degraded {
                        ": commits are acknowledged without waiting (durability preferred)"
                    } else {
                        ""
                    }
                ),
            );
        }
        // One Warning per new problem (the Condition holds it meanwhile), not one per reconcile.
        let degraded_as = |list: &[Condition]| {
            list.iter()
                .find(|c| c.type_ == "Degraded")
                .map(|c| (c.reason.clone(), c.message.clone()))
        };
        if let Some(problem) = problems.first()
            && degraded_as(&conditions) != degraded_as(&status.conditions)
        {
            publish(
                &self.context.recorder,
                cluster,
                EventType::Warning,
                problem.reason,
                problem_text.clone().unwrap_or_default(),
            )
            .await;
        }
        status.conditions = conditions;
        status.instances = instances;
        status.ready_instances = ready;
        status.observed_generation = generation;
        if let Some(f) = status.failover.as_mut()
            && let Some(reason) = &waiting
        {
            f.step = reason.clone();
        }
        if cluster.status.as_ref() != Some(&status) {
            self.write_status(cluster, &status, false).await?;
        }
        Ok(())
    }

    async fn label_role(&self, pod: &Pod, role: Option<&str>) -> Result<(), Error> {
        if pod.labels().get(ROLE_LABEL).map(String::as_str) == role || !self.leading() {
            return Ok(());
        }
        let patch = json!({"metadata": {"labels": {ROLE_LABEL: role}}});
        self.api::<Pod>()
            .patch(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await?;
        Ok(())
    }
}

fn ordinal(name: &str) -> u32 {
    name.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(u32::MAX)
}

fn pod_address(observed: &Observed) -> Option<String> {
    let ip = observed.pod.status.as_ref()?.pod_ip.as_deref()?;
    Some(format!("{ip}:{POSTGRES_PORT}"))
}

/// Says so when less than 5 % of the instance's volume is left: PostgreSQL stops (or cannot
/// write) when it runs out, and the user must act (only they may grow a claim).
fn volume_full(report: &InstanceReport) -> Option<String> {
    let (size, free) = (report.volume_bytes?, report.volume_free_bytes?);
    // The free figure stays out of the message: each change of it would be a new Event.
    (free.saturating_mul(20) < size).then(|| {
        format!(
            "its volume of {} MiB is full (under 5 % free): free space in the database, or expand its PersistentVolumeClaim if the StorageClass allows it",
            size / (1024 * 1024)
        )
    })
}

/// Something the user must fix, with the Condition reason and Event reason it goes under.
struct Problem {
    reason: &'static str,
    message: String,
}

/// Why the instance is not running, when the scheduler or the kubelet says (no node fits, an
/// image that cannot be pulled or run, a crash loop); `None` while it is merely starting.
fn why_not_running(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    });
    if let Some(condition) = unschedulable {
        return Some(format!(
            "not scheduled: {}",
            condition.message.as_deref().unwrap_or("no node fits")
        ));
    }
    status.container_statuses.iter().flatten().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref()?;
        if matches!(reason, "ContainerCreating" | "PodInitializing") {
            return None;
        }
        Some(match &waiting.message {
            Some(message) => format!("container {}: {reason}: {message}", c.name),
            None => format!("container {}: {reason}", c.name),
        })
    })
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn random_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..32)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_instance_costs_a_failover_step_no_wait_and_is_heard_again() {
        let start = Instant::now();
        let at = |millis: u64| start + Duration::from_millis(millis);
        let mut seen = Seen::new(start);
        assert_eq!(seen.status_timeout(at(0)), Some(STATUS_TIMEOUT));
        seen.answered = false;
        assert_eq!(
            seen.status_timeout(at(300)),
            None,
            "just asked: not waited for"
        );
        assert_eq!(seen.status_timeout(at(1000)), Some(SILENT_STATUS_TIMEOUT));
        assert_eq!(seen.status_timeout(at(1500)), None);
        assert_eq!(seen.status_timeout(at(2100)), Some(SILENT_STATUS_TIMEOUT));
        assert_eq!(
            seen.status_timeout(at(5000)),
            Some(STATUS_TIMEOUT),
            "a slow instance gets the full timeout now and then"
        );
        seen.answered = true;
        assert_eq!(seen.status_timeout(at(5100)), Some(STATUS_TIMEOUT));
    }

    #[test]
    fn lsns_durations_and_quantities_parse() {
        assert_eq!(lsn_position("0/3000060"), Some(0x3000060));
        assert_eq!(lsn_position("16/B374D848"), Some((0x16 << 32) | 0xB374D848));
        assert_eq!(lsn_position("nonsense"), None);
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(quantity_bytes("16Mi"), Some(16 << 20));
        assert_eq!(quantity_bytes("1G"), Some(1_000_000_000));
        assert_eq!(quantity_bytes("12"), Some(12));
        assert_eq!(quantity_bytes("1Qi"), None);
    }
}
