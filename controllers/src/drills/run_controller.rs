//! The DrillRun controller (leader only): observes the world, asks [`run::step`] for the one
//! next thing to do, does it, and asks again. Each phase is written to status (a
//! resourceVersion compare-and-set) before its side effect; what only this process knows (that
//! it recorded `Injecting` itself, the fault's moment, the write probe) lives in memory and dies
//! with it, which is what makes a successor roll back instead of injecting again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulwark_chaos::instance::{FaultsInPlace, InstanceFault};
use bulwark_chaos::network_policy::{self, Direction};
use bulwark_crds::dns::{DnsEndpoint, DnsZone, RecordType};
use bulwark_crds::drills::{
    DnsProbeResult, DrillRun, DrillRunStatus, DrillTarget, Fault, GuardReading,
    SLOW_ENACTOR_ANNOTATION, TargetKind, TimelineEntry, WriteCounts,
};
use bulwark_crds::postgres::DatabaseCluster;
use bulwark_crds::slo::ServiceLevelObjective;
use chrono::Utc;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::guards;
use super::run::{
    self, Criteria, Driving, Guards, Lock, Measured, Observation, Outcome, Phase, Reason, Recorded,
    Step, Verdict, Waiting,
};
use crate::conditions;
use crate::dns::answer_probe;
use crate::dns::provider::DnsProvider;
use crate::dns::rfc2136::Rfc2136;
use crate::dns::runtime::provider_for;
use crate::events::Recorder;
use crate::leadership::{Leadership, became_leader, still_leading};
use crate::metrics::Metrics;
use crate::postgres::client;
use crate::postgres::cluster::{
    API_PORT, CLUSTER_LABEL, INSTANCE_LABEL, POSTGRES_PORT, instance_client,
};
use crate::postgres::probe::{self, Resolve, WriteProbe};
use crate::readiness::Readiness;
use crate::runtime::{
    Backoff, add_finalizer, apply_status, as_leader, cached, drain, is_not_found, object_key,
    parse_duration, publish, remove_finalizer,
};
use crate::scope::Scope;

const CONTROLLER: &str = "drill-run";
const FIELD_MANAGER: &str = "bulwark-drills";
/// Held while a run may have a fault in place: deleting the run rolls it back first.
pub const FINALIZER: &str = "bulwark.dev/drill-rollback";
/// The write probe's pace, and how long one write may take before it counts as indeterminate.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// At the gate the probe must have a write acknowledged within this, or the target is unfit.
const FIRST_WRITE_LIMIT: Duration = Duration::from_secs(15);
/// How long a run waits at the gate for its target to become Healthy before it is Skipped.
const GATE_PATIENCE: chrono::Duration = chrono::Duration::seconds(60);
/// After the rollback, how long the target has to become healthy before the run fails.
const RECOVERY_LIMIT: chrono::Duration = chrono::Duration::seconds(300);
/// A frozen instance thaws itself this long after its drill's duration, should the rollback
/// never come (the operator gone for good).
const FREEZE_MARGIN_SECONDS: u64 = 30;
/// How long a fault's NetworkPolicy may take to hold before the drill gives up on it.
const POLICY_HOLD_LIMIT: Duration = Duration::from_secs(10);
/// How long the zone's server may take to answer the check that a DNS server outage holds.
const DNS_HOLD_TIMEOUT: Duration = Duration::from_millis(500);
/// Steps taken in one reconcile before handing back to the queue.
const STEPS_PER_PASS: usize = 16;

pub const ROLLED_BACK: &str = "RolledBack";
pub const SUCCEEDED: &str = "Succeeded";

#[derive(Clone, Debug)]
pub struct DrillSettings {
    pub scope: Scope,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

/// The zone label a zone outage reads (on the instances' pods).
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// What this process alone knows of a run it drives.
struct Driven {
    driving: Driving,
    probe: Option<WriteProbe>,
    /// The probe through `spec.dnsProbe`'s name, and that name.
    dns_probe: Option<(String, WriteProbe)>,
    injected: Option<Instant>,
    /// Why the injection failed, when it did.
    injection_error: Option<String>,
}

impl Driven {
    fn probes(&self) -> impl Iterator<Item = &WriteProbe> {
        self.probe
            .iter()
            .chain(self.dns_probe.iter().map(|(_, p)| p))
    }

    fn into_probes(self) -> impl Iterator<Item = WriteProbe> {
        self.probe.into_iter().chain(self.dns_probe.map(|(_, p)| p))
    }
}

/// What a fault is aimed at (shown to people) and the instances it acts on (what a rollback
/// undoes).
struct Aim {
    victim: String,
    instances: Vec<String>,
}

/// The Service a DnsZone's server address names, its selector, and the pods it selects.
struct ZoneServer {
    service: String,
    selector: BTreeMap<String, String>,
    pods: Vec<String>,
}

struct Context {
    client: kube::Client,
    metrics: Metrics,
    recorder: Recorder,
    leadership: watch::Receiver<Leadership>,
    settings: DrillSettings,
    backoff: Backoff,
    /// By run uid.
    driven: Mutex<HashMap<String, Driven>>,
    /// Per target, which run each report gauge shows (see [`Reported`]); rebuilt from status
    /// when a replica starts leading.
    reported: Mutex<HashMap<(String, DrillTarget), Reported>>,
}

pub async fn run(
    client: kube::Client,
    metrics: Metrics,
    recorder: Recorder,
    readiness: Readiness,
    leadership: watch::Receiver<Leadership>,
    settings: DrillSettings,
    shutdown: CancellationToken,
) {
    let (runs, run_events) = cached::<DrillRun>(
        &client,
        settings.scope.namespace(),
        watcher::Config::default(),
        readiness.gate(format!("{CONTROLLER}/DrillRun")),
    );
    let context = Arc::new(Context {
        client,
        metrics,
        recorder,
        leadership: leadership.clone(),
        settings,
        backoff: Backoff::default(),
        driven: Mutex::default(),
        reported: Mutex::default(),
    });
    let results = Controller::for_stream(
        kube::runtime::WatchStreamExt::applied_objects(run_events),
        runs,
    )
    .reconcile_all_on(became_leader(leadership.clone()))
    .graceful_shutdown_on(async move { shutdown.cancelled().await })
    .run(reconcile, error_policy, context.clone());
    tokio::select! {
        _ = drain(CONTROLLER, results) => {}
        _ = forget_when_following(leadership, context) => {}
    }
}

/// A replica that stops leading drops its per-target report (the next leader rebuilds it from
/// the runs' status as it reconciles them) and what it knew of the runs it drove, stopping their
/// probes: should it lead again, it finds them recorded by "another" operator and rolls back.
async fn forget_when_following(mut leadership: watch::Receiver<Leadership>, context: Arc<Context>) {
    while leadership.changed().await.is_ok() {
        if leadership.borrow_and_update().token().is_none() {
            context.metrics.drills.forget_targets();
            context.reported.lock().unwrap().clear();
            let driven: Vec<Driven> = context
                .driven
                .lock()
                .unwrap()
                .drain()
                .map(|(_, driven)| driven)
                .collect();
            for probe in driven.into_iter().flat_map(Driven::into_probes) {
                probe.stop().await;
            }
        }
    }
    // The elector is gone: shutdown ends the controller.
    std::future::pending::<()>().await
}

fn error_policy(run: Arc<DrillRun>, error: &Error, context: Arc<Context>) -> Action {
    warn!(run = %object_key(&*run), %error, "DrillRun reconciliation failed");
    context.backoff.failed(&object_key(&*run))
}

async fn reconcile(run: Arc<DrillRun>, context: Arc<Context>) -> Result<Action, Error> {
    let (run, context) = (&*run, &*context);
    as_leader(
        run,
        CONTROLLER,
        &context.leadership,
        &context.settings.scope,
        &context.metrics,
        &context.backoff,
        |token| async move {
            let driver = Driver {
                context,
                token,
                namespace: run.namespace().unwrap_or_default(),
            };
            driver.drive(run.clone()).await
        },
    )
    .await
    .or_else(retry_on_conflict)
}

/// A compare-and-set lost to a newer version of the object, most often this controller's own
/// write that the cache had not shown yet when the pass began: nothing failed; look again.
pub(super) fn retry_on_conflict(error: Error) -> Result<Action, Error> {
    match error {
        Error::Kube(kube::Error::Api(status)) if status.is_conflict() => {
            Ok(Action::requeue(Duration::from_millis(100)))
        }
        error => Err(error),
    }
}

struct Driver<'a> {
    context: &'a Context,
    token: u64,
    namespace: String,
}

/// What one pass observed besides the decision's inputs.
struct Seen {
    observation: Observation,
    readings: Vec<GuardReading>,
    /// The target as read this pass: a DatabaseCluster or a DnsEndpoint, by the run's kind.
    cluster: Option<DatabaseCluster>,
    endpoint: Option<DnsEndpoint>,
}

impl Driver<'_> {
    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.context.client.clone(), &self.namespace)
    }

    fn leading(&self) -> bool {
        still_leading(&self.context.leadership, self.token)
    }

    async fn drive(&self, mut run: DrillRun) -> Result<Action, Error> {
        for _ in 0..STEPS_PER_PASS {
            if !self.leading() {
                return Ok(Action::await_change());
            }
            let recorded = recorded(&run)?;
            if run.metadata.deletion_timestamp.is_none()
                && recorded.phase != Phase::Completed
                && !run.finalizers().iter().any(|f| f == FINALIZER)
            {
                run = add_finalizer(&self.context.client, &run, FIELD_MANAGER, FINALIZER).await?;
                continue;
            }
            let seen = self.observe(&run, recorded).await?;
            if recorded.phase == Phase::Gating && target_settling(&run, seen.cluster.as_ref()) {
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            let step = run::step(&seen.observation);
            if !self.leading() {
                return Ok(Action::await_change());
            }
            match step {
                Step::Wait(waiting) => return Ok(Action::requeue(self.wait(&run, &waiting))),
                Step::Done => {
                    self.report(&run);
                    if run.finalizers().iter().any(|f| f == FINALIZER) {
                        remove_finalizer(&self.context.client, &run, FINALIZER).await?;
                    }
                    return Ok(Action::await_change());
                }
                Step::AcquireLock => self.acquire_lock(&run).await?,
                Step::ReleaseLock => self.release_lock(&run).await?,
                Step::Record(phase, verdict) => {
                    run = self.record(&run, &seen, phase, verdict).await?;
                }
                Step::Inject => {
                    if let Err(error) = self.inject(&run, &seen).await {
                        let message = format!("{error}");
                        warn!(run = %run.name_any(), error = %message, "injection failed; rolling back");
                        if let Some(driven) = self
                            .context
                            .driven
                            .lock()
                            .unwrap()
                            .get_mut(&Self::uid(&run))
                        {
                            driven.injection_error = Some(message);
                        }
                    }
                }
                Step::RollBack => {
                    if let Err(error) = self.roll_back(&run, &seen).await {
                        self.rollback_failed(&run, &error).await?;
                        return Err(error);
                    }
                }
                Step::RecordRolledBack => run = self.record_rolled_back(&run).await?,
                Step::Complete => run = self.complete(&run).await?,
            }
        }
        Ok(Action::requeue(Duration::ZERO))
    }

    fn uid(run: &DrillRun) -> String {
        run.uid().unwrap_or_default()
    }

    async fn observe(&self, run: &DrillRun, recorded: Recorded) -> Result<Seen, Error> {
        let uid = Self::uid(run);
        let (driving, injection_error, held_long_enough, probe_recovered) = {
            let driven = self.context.driven.lock().unwrap();
            match driven.get(&uid) {
                None => (Driving::No, None, false, true),
                Some(d) => (
                    d.driving,
                    d.injection_error.clone(),
                    d.injected
                        .is_some_and(|at| at.elapsed() >= scenario_duration(run)),
                    d.probes().all(|p| {
                        p.report()
                            .writes
                            .last()
                            .is_some_and(|w| w.outcome == probe::Outcome::Acknowledged)
                    }),
                ),
            }
        };
        let name = &run.spec.target.name;
        let (cluster, endpoint) = match run.spec.target.kind {
            TargetKind::DatabaseCluster => {
                (self.api::<DatabaseCluster>().get_opt(name).await?, None)
            }
            TargetKind::DnsEndpoint => (None, self.api::<DnsEndpoint>().get_opt(name).await?),
        };
        let phase = recorded.phase;
        let (guards, readings) = match phase {
            Phase::Gating => match self.unfit(run, cluster.as_ref(), endpoint.as_ref()).await {
                Some(why) => (Guards::TargetUnfit(why), vec![]),
                None => self.guards(run).await?,
            },
            Phase::Injecting | Phase::Observing => self.guards(run).await?,
            _ => (Guards::Clear, vec![]),
        };
        let lock = match phase {
            Phase::Pending | Phase::Completed => self.lock(run).await?,
            _ => Lock::Mine,
        };
        let fault_absent = if phase == Phase::RollingBack && !recorded.rolled_back {
            self.fault_absent(run, cluster.as_ref(), endpoint.as_ref())
                .await?
        } else {
            false
        };
        let target_recovered = match run.spec.target.kind {
            TargetKind::DatabaseCluster => cluster.as_ref().is_some_and(|c| {
                let status = c.status.clone().unwrap_or_default();
                status.phase.as_deref() == Some("Healthy")
                    && status.ready_instances >= c.spec.instances
            }),
            TargetKind::DnsEndpoint => endpoint.is_some(),
        } && probe_recovered;
        let recovery_overdue = phase_recorded_at(run, Phase::RollingBack)
            .is_some_and(|at| Utc::now() - at > RECOVERY_LIMIT);
        Ok(Seen {
            observation: Observation {
                recorded,
                deleting: run.metadata.deletion_timestamp.is_some(),
                lock,
                guards,
                driving,
                injection_error,
                fault_held_long_enough: held_long_enough,
                fault_absent,
                target_recovered,
                recovery_overdue,
            },
            readings,
            cluster,
            endpoint,
        })
    }

    /// Why the target cannot take this drill now; `None` when it can. Also starts the probes
    /// and waits for each one's first success, so a drill never measures a target that was
    /// down before the fault.
    async fn unfit(
        &self,
        run: &DrillRun,
        cluster: Option<&DatabaseCluster>,
        endpoint: Option<&DnsEndpoint>,
    ) -> Option<String> {
        let name = &run.spec.target.name;
        if run.spec.target.kind == TargetKind::DatabaseCluster {
            let Some(cluster) = cluster else {
                return Some(format!("DatabaseCluster {name} does not exist"));
            };
            let status = cluster.status.clone().unwrap_or_default();
            let phase = status.phase.as_deref().unwrap_or("Creating");
            if phase != "Healthy" {
                return Some(format!(
                    "DatabaseCluster {name} is {phase}, not Healthy: a drill starts only on a healthy target"
                ));
            }
        }
        if let Err(why) = self.aim(run, cluster, endpoint).await {
            return Some(why);
        }
        let uid = Self::uid(run);
        let running = self.context.driven.lock().unwrap().contains_key(&uid);
        if !running {
            let driven = match run.spec.target.kind {
                TargetKind::DatabaseCluster => self.start_write_probes(run).await,
                TargetKind::DnsEndpoint => self.start_answer_probe(name).await,
            };
            match driven {
                Ok(driven) => self
                    .context
                    .driven
                    .lock()
                    .unwrap()
                    .insert(uid.clone(), driven),
                Err(why) => return Some(why),
            };
        }
        let deadline = Instant::now() + FIRST_WRITE_LIMIT;
        loop {
            let silent = self.context.driven.lock().unwrap().get(&uid).and_then(|d| {
                let unacknowledged =
                    |p: &WriteProbe| p.report().count(probe::Outcome::Acknowledged) == 0;
                if d.probe.as_ref().is_some_and(unacknowledged) {
                    return Some(match run.spec.target.kind {
                        TargetKind::DatabaseCluster => {
                            format!("no write acknowledged through Service {name}-rw")
                        }
                        TargetKind::DnsEndpoint => format!(
                            "no address for DnsEndpoint {name}'s name from its zone's server"
                        ),
                    });
                }
                d.dns_probe
                    .as_ref()
                    .filter(|(_, p)| unacknowledged(p))
                    .map(|(fqdn, _)| format!("no write acknowledged through the DNS name {fqdn}"))
            });
            // None: every probe has succeeded once, the target is fit.
            let missing = silent?;
            if Instant::now() >= deadline {
                return Some(format!(
                    "the probe had {missing} in {}s",
                    FIRST_WRITE_LIMIT.as_secs()
                ));
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// The write probe through the cluster's `-rw` Service, and the one through
    /// `spec.dnsProbe`'s name when it is set.
    async fn start_write_probes(&self, run: &DrillRun) -> Result<Driven, String> {
        let name = &run.spec.target.name;
        let endpoint = client::application(&self.context.client, &self.namespace, name)
            .await
            .map_err(|error| {
                format!("cannot reach DatabaseCluster {name} as an application: {error:#}")
            })?;
        let dns_route = match &run.spec.dns_probe {
            None => None,
            Some(dns) => Some(self.resolver(&dns.endpoint).await?),
        };
        // Numbered from the current microsecond, so probes sharing the table never collide; the
        // DNS probe counts up from its negation, a range no Service probe reaches.
        let first = Utc::now().timestamp_micros();
        let dns_probe = dns_route.map(|(fqdn, resolve)| {
            let probe = WriteProbe::start_resolving(
                endpoint.clone(),
                resolve,
                -first,
                PROBE_INTERVAL,
                PROBE_TIMEOUT,
            );
            (fqdn, probe)
        });
        Ok(Driven {
            driving: Driving::No,
            probe: Some(WriteProbe::start_at(
                endpoint,
                first,
                PROBE_INTERVAL,
                PROBE_TIMEOUT,
            )),
            dns_probe,
            injected: None,
            injection_error: None,
        })
    }

    /// The answer probe of a DnsEndpoint target: its name, asked of its zone's server.
    async fn start_answer_probe(&self, endpoint: &str) -> Result<Driven, String> {
        let (endpoint, provider) = self.zone_provider(endpoint, PROBE_TIMEOUT).await?;
        Ok(Driven {
            driving: Driving::No,
            probe: Some(answer_probe::start(
                provider,
                endpoint.spec.fqdn,
                PROBE_INTERVAL,
                PROBE_TIMEOUT,
            )),
            dns_probe: None,
            injected: None,
            injection_error: None,
        })
    }

    /// The DnsEndpoint `name` and a client for its zone's authoritative server.
    async fn zone_provider(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<(DnsEndpoint, Rfc2136), String> {
        let unreadable = |what: String, error: kube::Error| format!("cannot read {what}: {error}");
        let endpoint = self
            .api::<DnsEndpoint>()
            .get_opt(name)
            .await
            .map_err(|e| unreadable(format!("DnsEndpoint {name}"), e))?
            .ok_or_else(|| format!("DnsEndpoint {name} does not exist"))?;
        let zone_name = &endpoint.spec.zone_ref;
        let zone = self
            .api::<DnsZone>()
            .get_opt(zone_name)
            .await
            .map_err(|e| unreadable(format!("DnsZone {zone_name}"), e))?
            .ok_or_else(|| format!("DnsZone {zone_name} of DnsEndpoint {name} does not exist"))?;
        let provider = provider_for(&self.context.client, &zone, &endpoint, timeout)
            .await
            .map_err(|e| format!("DnsEndpoint {name}: {e}"))?
            // The drill sees the server as a new client does: a connection opened before a
            // fault may outlive it (NetworkPolicies commonly spare established connections).
            .with_new_connection_per_exchange();
        Ok((endpoint, provider))
    }

    /// The DnsEndpoint's name and a resolver asking its zone's authoritative server for the
    /// name's address, as a client that just lost its session would.
    async fn resolver(&self, endpoint: &str) -> Result<(String, Resolve), String> {
        let (endpoint, provider) = self.zone_provider(endpoint, PROBE_TIMEOUT).await?;
        let fqdn = endpoint.spec.fqdn.clone();
        let resolve: Resolve = Arc::new({
            let fqdn = fqdn.clone();
            move || {
                let provider = provider.clone();
                let fqdn = fqdn.clone();
                Box::pin(async move {
                    let rrsets = provider.served_records(&fqdn).await.ok()?;
                    let a = rrsets.iter().find(|r| r.record_type == RecordType::A)?;
                    a.values.first()?.parse().ok()
                })
            }
        });
        Ok((fqdn, resolve))
    }

    /// What the run's fault hits now: a cluster's primary, the replica a switchover promotes,
    /// every instance in the primary's zone, a DnsEndpoint's name, or the pods of its zone's
    /// server.
    async fn aim(
        &self,
        run: &DrillRun,
        cluster: Option<&DatabaseCluster>,
        endpoint: Option<&DnsEndpoint>,
    ) -> Result<Aim, String> {
        let (fault, name) = (run.spec.scenario.fault, &run.spec.target.name);
        if matches!(fault, Fault::SlowDnsEnactor | Fault::DnsServerOutage) {
            let endpoint = endpoint.ok_or_else(|| format!("DnsEndpoint {name} does not exist"))?;
            if fault == Fault::SlowDnsEnactor {
                return Ok(Aim {
                    victim: endpoint.spec.fqdn.clone(),
                    instances: vec![],
                });
            }
            let server = self.zone_server(endpoint).await?;
            return Ok(Aim {
                victim: server.service,
                instances: server.pods,
            });
        }
        let cluster = cluster.ok_or_else(|| format!("DatabaseCluster {name} does not exist"))?;
        let victim = victim(fault, cluster)?;
        if fault != Fault::ZoneOutage {
            return Ok(Aim {
                instances: vec![victim.clone()],
                victim,
            });
        }
        let pods = self
            .api::<Pod>()
            .list(&ListParams::default().labels(&format!("{CLUSTER_LABEL}={}", cluster.name_any())))
            .await
            .map_err(|e| format!("cannot list the instances' pods: {e}"))?;
        // The API server's PodTopologyLabels admission (on by default since Kubernetes 1.35)
        // copies the node's zone label onto each pod it binds: no Node access needed.
        let mut zone_of_pod = vec![];
        for pod in &pods.items {
            let zone = pod.labels().get(ZONE_LABEL).cloned().ok_or_else(|| {
                format!(
                    "pod {} has no {ZONE_LABEL} label (the API server's PodTopologyLabels admission, on by default since Kubernetes 1.35, copies it from the node)",
                    pod.name_any()
                )
            })?;
            zone_of_pod.push((pod.name_any(), zone));
        }
        let zone = zone_of_pod
            .iter()
            .find(|(pod, _)| *pod == victim)
            .map(|(_, zone)| zone.clone())
            .ok_or_else(|| format!("the primary {victim} has no pod"))?;
        let everyone = zone_of_pod.len();
        let mut instances: Vec<String> = zone_of_pod
            .into_iter()
            .filter(|(_, z)| *z == zone)
            .map(|(pod, _)| pod)
            .collect();
        if instances.len() == everyone {
            return Err(format!(
                "every instance of DatabaseCluster {} is in zone {zone}: its outage would leave none to fail over to",
                cluster.name_any()
            ));
        }
        instances.sort();
        Ok(Aim {
            victim: format!("zone {zone}"),
            instances,
        })
    }

    /// The Service that serves `endpoint`'s zone (its DnsZone's server address names it, in
    /// the zone's namespace), what it selects, and the pods that are the server now.
    async fn zone_server(&self, endpoint: &DnsEndpoint) -> Result<ZoneServer, String> {
        let zone_name = &endpoint.spec.zone_ref;
        let zone = self
            .api::<DnsZone>()
            .get_opt(zone_name)
            .await
            .map_err(|e| format!("cannot read DnsZone {zone_name}: {e}"))?
            .ok_or_else(|| format!("DnsZone {zone_name} does not exist"))?;
        let server = zone
            .spec
            .provider
            .rfc2136
            .map(|p| p.server)
            .ok_or_else(|| format!("DnsZone {zone_name} has no RFC 2136 server"))?;
        let host = server.rsplit_once(':').map_or(server.as_str(), |(h, _)| h);
        let services = self.api::<Service>();
        let unreadable = |e: kube::Error| format!("cannot read the Services: {e}");
        let service = match service_named_by(host, &self.namespace) {
            Some(name) => services.get_opt(name).await.map_err(unreadable)?,
            None if host.parse::<std::net::IpAddr>().is_ok() => services
                .list(&ListParams::default())
                .await
                .map_err(unreadable)?
                .items
                .into_iter()
                .find(|s| s.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some(host)),
            None => None,
        };
        let namespace = &self.namespace;
        let service = service.ok_or_else(|| {
            format!(
                "DnsZone {zone_name}'s server {server} is not a Service in namespace {namespace}: a DnsServerOutage cuts off the pods of the Service that serves the zone, named as <service>.{namespace}.svc or by its cluster IP"
            )
        })?;
        let name = service.name_any();
        let selector = service
            .spec
            .and_then(|s| s.selector)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                format!("Service {name}, DnsZone {zone_name}'s server, selects no pods")
            })?;
        let query = selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut pods: Vec<String> = self
            .api::<Pod>()
            .list(&ListParams::default().labels(&query))
            .await
            .map_err(|e| format!("cannot list Service {name}'s pods: {e}"))?
            .items
            .iter()
            .map(ResourceExt::name_any)
            .collect();
        if pods.is_empty() {
            return Err(format!(
                "Service {name}, DnsZone {zone_name}'s server, has no pods: the server is down already"
            ));
        }
        pods.sort();
        Ok(ZoneServer {
            service: name,
            selector,
            pods,
        })
    }

    async fn guards(&self, run: &DrillRun) -> Result<(Guards, Vec<GuardReading>), Error> {
        let slos = self.api::<ServiceLevelObjective>();
        let mut statuses = HashMap::new();
        for guard in &run.spec.guards {
            if !statuses.contains_key(&guard.slo) {
                let slo = slos.get_opt(&guard.slo).await?;
                statuses.insert(guard.slo.clone(), slo.map(|s| s.status));
            }
        }
        Ok(guards::evaluate(
            &run.spec.guards,
            |name| statuses.get(name).cloned().flatten(),
            Utc::now(),
        ))
    }

    fn lease_name(run: &DrillRun) -> String {
        format!(
            "drill-lock-{}-{}",
            run.spec.target.kind.name().to_lowercase(),
            run.spec.target.name
        )
    }

    async fn lock(&self, run: &DrillRun) -> Result<Lock, Error> {
        let lease = self.api::<Lease>().get_opt(&Self::lease_name(run)).await?;
        Ok(match lease {
            None => Lock::Free,
            Some(lease) => {
                let mine = lease
                    .owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == run.metadata.uid.as_ref());
                let holder = lease
                    .spec
                    .and_then(|s| s.holder_identity)
                    .unwrap_or_default();
                if mine { Lock::Mine } else { Lock::Held(holder) }
            }
        })
    }

    /// Creates the target's Lease; the API server refuses it while another run holds it, which
    /// is what keeps one run per target across schedules, hand-made runs and replicas.
    async fn acquire_lock(&self, run: &DrillRun) -> Result<(), Error> {
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {
                "name": Self::lease_name(run),
                "ownerReferences": [owned_by(run)],
            },
            "spec": {"holderIdentity": run.name_any()},
        }))
        .expect("a Lease");
        match self
            .api::<Lease>()
            .create(&PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    async fn release_lock(&self, run: &DrillRun) -> Result<(), Error> {
        let lease = self.api::<Lease>().get_opt(&Self::lease_name(run)).await?;
        let Some(uid) = lease.and_then(|l| l.metadata.uid) else {
            return Ok(());
        };
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self
            .api::<Lease>()
            .delete(&Self::lease_name(run), &params)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    fn wait(&self, run: &DrillRun, waiting: &Waiting) -> Duration {
        match waiting {
            Waiting::Target(_) => Duration::from_secs(2),
            Waiting::Recovery => Duration::from_secs(1),
            Waiting::FaultHeld => {
                let left = self
                    .context
                    .driven
                    .lock()
                    .unwrap()
                    .get(&Self::uid(run))
                    .and_then(|d| d.injected)
                    .map_or(Duration::ZERO, |at| {
                        scenario_duration(run).saturating_sub(at.elapsed())
                    });
                left.min(guard_interval(run))
                    .max(Duration::from_millis(100))
            }
        }
    }

    /// Writes `phase` (and the verdict, when one is decided) before anything it leads to.
    async fn record(
        &self,
        run: &DrillRun,
        seen: &Seen,
        phase: Phase,
        verdict: Option<Verdict>,
    ) -> Result<DrillRun, Error> {
        let mut status = run.status.clone().unwrap_or_default();
        let uid = Self::uid(run);
        let mut message = match phase {
            Phase::Gating => format!(
                "holds {} {}",
                run.spec.target.kind.name(),
                run.spec.target.name
            ),
            Phase::Injecting => {
                let aim = self
                    .aim(run, seen.cluster.as_ref(), seen.endpoint.as_ref())
                    .await
                    .map_err(|why| anyhow::anyhow!(why))?;
                let message = format!(
                    "{} of {} ({})",
                    run.spec.scenario.fault.name(),
                    aim.victim,
                    aim.instances.join(", ")
                );
                status.victim = Some(aim.victim);
                status.faulted_instances = aim.instances;
                message
            }
            Phase::Observing => {
                let injected = self
                    .context
                    .driven
                    .lock()
                    .unwrap()
                    .get(&uid)
                    .and_then(|d| d.injected);
                status.injected_at = injected.map(micro_time_of);
                format!(
                    "{} injected; held for {}",
                    run.spec.scenario.fault.name(),
                    run.spec.scenario.duration
                )
            }
            Phase::RollingBack => "rolling the fault back".to_string(),
            Phase::Completed | Phase::Pending => String::new(),
        };
        let mut event = EventType::Normal;
        if let Some(verdict) = &verdict {
            status.result = Some(verdict.outcome.name().to_string());
            status.message = Some(verdict.message.clone());
            status.reason = Some(verdict.reason.to_string());
            if matches!(
                verdict.reason,
                Reason::GuardCrossed | Reason::GuardUnreadable
            ) {
                status.guard_readings = seen.readings.clone();
            }
            if verdict.outcome != Outcome::Succeeded {
                event = EventType::Warning;
            }
            message = format!(
                "{} ({}): {}",
                verdict.outcome.name(),
                verdict.reason,
                verdict.message
            );
        }
        if phase == Phase::Completed {
            status.completed_at = Some(Time(Timestamp::now()));
            // Nothing is left to measure: this run never injected, or did not recover.
            self.forget(&uid);
            let outcome = verdict.as_ref().map(|v| v.outcome);
            set_result_condition(&mut status, run, outcome, &message);
            if status.rolled_back_at.is_none() {
                set_condition(
                    &mut status,
                    run,
                    ROLLED_BACK,
                    true,
                    "NothingInjected",
                    "the fault was never injected".into(),
                );
            }
        }
        if phase == Phase::Injecting {
            set_condition(
                &mut status,
                run,
                ROLLED_BACK,
                false,
                "FaultInjecting",
                format!("{message}: in place until rolled back"),
            );
        }
        let written = self.write_status(run, status, phase, &message).await?;
        if phase == Phase::Injecting
            && let Some(driven) = self.context.driven.lock().unwrap().get_mut(&uid)
        {
            driven.driving = Driving::Recorded;
        }
        if phase == Phase::Completed {
            self.count(&written);
        }
        let reason = verdict.map_or(phase.name().to_string(), |v| v.reason.to_string());
        publish(&self.context.recorder, run, event, &reason, message).await;
        Ok(written)
    }

    /// Appends the timeline entry for `phase` and writes the status with a compare-and-set on
    /// the run's resourceVersion, so two writers never both move the machine.
    async fn write_status(
        &self,
        run: &DrillRun,
        mut status: DrillRunStatus,
        phase: Phase,
        message: &str,
    ) -> Result<DrillRun, Error> {
        status.phase = Some(phase.name().to_string());
        status.timeline.push(TimelineEntry {
            time: MicroTime(Timestamp::now()),
            phase: phase.name().to_string(),
            message: message.to_string(),
        });
        info!(run = %object_key(run), phase = phase.name(), message, "drill step");
        let value = serde_json::to_value(&status).expect("status serializes");
        Ok(apply_status(
            &self.context.client,
            run,
            FIELD_MANAGER,
            value,
            run.resource_version().as_deref(),
        )
        .await?)
    }

    async fn inject(&self, run: &DrillRun, seen: &Seen) -> Result<(), Error> {
        let status = run.status.clone().unwrap_or_default();
        let victim = status
            .victim
            .ok_or_else(|| anyhow::anyhow!("Injecting was recorded without a victim"))?;
        let instances = status.faulted_instances;
        match run.spec.scenario.fault {
            Fault::PrimaryCrash => {
                for instance in &instances {
                    match self
                        .send_fault(&run.spec.target.name, instance, InstanceFault::Crash)
                        .await?
                    {
                        // The manager exits without answering: a request that got through did it.
                        Ok(_) => {}
                        Err(error) if !error.is_connect() => {}
                        Err(error) => {
                            return Err(anyhow::anyhow!(
                                "could not reach {instance}'s manager to crash it: {error}"
                            )
                            .into());
                        }
                    }
                }
            }
            Fault::PrimaryFrozen | Fault::ZoneOutage => {
                let seconds = scenario_duration(run).as_secs() + FREEZE_MARGIN_SECONDS;
                // All at once: a zone's machines stop together, not one after another.
                let freezes = instances.iter().map(|instance| async move {
                    self.send_fault(
                        &run.spec.target.name,
                        instance,
                        InstanceFault::Freeze { seconds },
                    )
                    .await?
                    .map_err(|e| anyhow::anyhow!("could not freeze {instance}: {e}"))?
                    .error_for_status()
                    .map_err(|e| anyhow::anyhow!("{instance}'s manager refused the freeze: {e}"))
                });
                for result in futures::future::join_all(freezes).await {
                    result?;
                }
            }
            Fault::PrimaryPartitioned => {
                let seconds = scenario_duration(run).as_secs() + FREEZE_MARGIN_SECONDS;
                // The manager first: once the policy holds, nothing new reaches it.
                self.send_fault(
                    &run.spec.target.name,
                    &victim,
                    InstanceFault::Partition { seconds },
                )
                .await?
                .and_then(|r| r.error_for_status())
                .map_err(|e| anyhow::anyhow!("{victim}'s manager refused the partition: {e}"))?;
                self.isolate(run, &victim).await?;
            }
            Fault::Switchover => {
                let cluster = seen
                    .cluster
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("the target vanished"))?;
                self.api::<DatabaseCluster>()
                    .patch(
                        &cluster.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"switchoverTo": victim}})),
                    )
                    .await?;
            }
            Fault::SlowDnsEnactor => {
                // Every enactor replica reads it from the endpoint it reconciles.
                self.set_slow_enactor(run, Some(&run.spec.scenario.duration))
                    .await?;
            }
            Fault::DnsServerOutage => {
                let endpoint = seen
                    .endpoint
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("the target vanished"))?;
                let server = self
                    .zone_server(endpoint)
                    .await
                    .map_err(anyhow::Error::msg)?;
                let (endpoint, provider) = self
                    .zone_provider(&run.spec.target.name, DNS_HOLD_TIMEOUT)
                    .await
                    .map_err(anyhow::Error::msg)?;
                let fqdn = endpoint.spec.fqdn;
                self.cut_off(
                    run,
                    &dns_outage_policy_name(&victim),
                    &server.selector,
                    Direction::Ingress,
                    || async { provider.served_records(&fqdn).await.is_ok() },
                    &format!("the zone's server still answers the operator for {fqdn}"),
                )
                .await?;
            }
        }
        if let Some(driven) = self.context.driven.lock().unwrap().get_mut(&Self::uid(run)) {
            driven.driving = Driving::Injected;
            driven.injected = Some(Instant::now());
        }
        let message = format!("{} of {victim} injected", run.spec.scenario.fault.name());
        publish(
            &self.context.recorder,
            run,
            EventType::Warning,
            "FaultInjected",
            message,
        )
        .await;
        Ok(())
    }

    /// Sets (or with `None` removes) the slow-enactor annotation on the target DnsEndpoint.
    async fn set_slow_enactor(&self, run: &DrillRun, delay: Option<&str>) -> Result<(), Error> {
        let patch = json!({"metadata": {"annotations": {SLOW_ENACTOR_ANNOTATION: delay}}});
        self.api::<DnsEndpoint>()
            .patch(
                &run.spec.target.name,
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await?;
        Ok(())
    }

    /// Cuts `victim`'s pod off both ways, until a new connection from here to it fails.
    async fn isolate(&self, run: &DrillRun, victim: &str) -> Result<(), Error> {
        let pod = self.api::<Pod>().get(victim).await?;
        if pod.labels().get(INSTANCE_LABEL).map(String::as_str) != Some(victim) {
            return Err(anyhow::anyhow!(
                "pod {victim} has no {INSTANCE_LABEL} label for a NetworkPolicy to select (made by an older operator: delete it to have it made again)"
            )
            .into());
        }
        let address = pod
            .status
            .and_then(|s| s.pod_ip)
            .ok_or_else(|| anyhow::anyhow!("pod {victim} has no address"))?;
        let selector = BTreeMap::from([
            (CLUSTER_LABEL.to_string(), run.spec.target.name.clone()),
            (INSTANCE_LABEL.to_string(), victim.to_string()),
        ]);
        self.cut_off(
            run,
            &isolation_policy_name(victim),
            &selector,
            Direction::Both,
            || network_policy::tcp_connects(&address, POSTGRES_PORT as u16),
            &format!("pod {victim} still accepts new connections from the operator"),
        )
        .await
    }

    /// Creates the run's NetworkPolicy `name` cutting off the pods `selector` matches (owned by
    /// the run, so it goes with it), then waits until `reachable` says it holds.
    async fn cut_off<F, Fut>(
        &self,
        run: &DrillRun,
        name: &str,
        selector: &BTreeMap<String, String>,
        direction: Direction,
        reachable: F,
        still: &str,
    ) -> Result<(), Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let policy = network_policy::isolation(name, selector, direction, &owned_by(run));
        network_policy::cut_off(&self.api(), &policy, &Self::uid(run)).await?;
        match network_policy::until_unreachable(reachable, POLICY_HOLD_LIMIT).await {
            Some(after) => {
                info!(run = %run.name_any(), policy = name, ?after, "the cut holds");
                Ok(())
            }
            None => Err(anyhow::anyhow!(
                "NetworkPolicy {name} does not hold: {:.0}s after it was made, {still} (the network plugin must enforce NetworkPolicy, and the operator run in the cluster)",
                POLICY_HOLD_LIMIT.as_secs_f64()
            )
            .into()),
        }
    }

    async fn instance_client(&self, cluster: &str) -> anyhow::Result<reqwest::Client> {
        let pods = self
            .api::<Pod>()
            .list(&ListParams::default().labels(&format!("{CLUSTER_LABEL}={cluster}")))
            .await?;
        instance_client(&self.api::<Secret>(), cluster, &pods.items).await
    }

    /// Posts `fault` to the victim's instance manager: the outer error is the client's (the
    /// cluster's Secret or pods unreadable), the inner the request's.
    async fn send_fault(
        &self,
        cluster: &str,
        victim: &str,
        fault: InstanceFault,
    ) -> anyhow::Result<Result<reqwest::Response, reqwest::Error>> {
        let client = self.instance_client(cluster).await?;
        Ok(client
            .post(format!("https://{victim}:{API_PORT}/faults"))
            .timeout(Duration::from_secs(5))
            .json(&fault)
            .send()
            .await)
    }

    /// Whether nothing of the fault is left in place.
    async fn fault_absent(
        &self,
        run: &DrillRun,
        cluster: Option<&DatabaseCluster>,
        endpoint: Option<&DnsEndpoint>,
    ) -> Result<bool, Error> {
        let status = run.status.clone().unwrap_or_default();
        let Some(victim) = status.victim else {
            return Ok(true);
        };
        Ok(match run.spec.scenario.fault {
            // A crash is over once it happened; the restart policy brings the instance back.
            Fault::PrimaryCrash => true,
            Fault::Switchover => cluster
                .and_then(|c| c.spec.switchover_to.as_deref())
                .is_none_or(|to| to != victim),
            Fault::PrimaryFrozen | Fault::ZoneOutage => self
                .still_faulted(run, &status.faulted_instances)
                .await?
                .is_empty(),
            Fault::PrimaryPartitioned => {
                self.own_policy_gone(run, &isolation_policy_name(&victim))
                    .await?
                    && self
                        .still_faulted(run, &status.faulted_instances)
                        .await?
                        .is_empty()
            }
            Fault::SlowDnsEnactor => {
                endpoint.is_none_or(|e| !e.annotations().contains_key(SLOW_ENACTOR_ANNOTATION))
            }
            Fault::DnsServerOutage => {
                self.own_policy_gone(run, &dns_outage_policy_name(&victim))
                    .await?
            }
        })
    }

    /// Whether the run's NetworkPolicy `name` is gone (one of that name it does not own is not
    /// its fault).
    async fn own_policy_gone(&self, run: &DrillRun, name: &str) -> Result<bool, Error> {
        Ok(network_policy::owned(&self.api(), name, &Self::uid(run))
            .await?
            .is_none())
    }

    /// Those of `instances` that may still be frozen or partitioned: their pod exists and its
    /// manager does not say it is free of faults (a pod that is gone took them along).
    async fn still_faulted(
        &self,
        run: &DrillRun,
        instances: &[String],
    ) -> Result<Vec<String>, Error> {
        let mut faulted = vec![];
        for instance in instances {
            if self.api::<Pod>().get_opt(instance).await?.is_none() {
                continue;
            }
            let client = self.instance_client(&run.spec.target.name).await?;
            let url = format!("https://{instance}:{API_PORT}/faults");
            let free = match client.get(url).timeout(Duration::from_secs(5)).send().await {
                Ok(response) => response
                    .json::<FaultsInPlace>()
                    .await
                    .is_ok_and(|faults| !faults.any()),
                Err(_) => false,
            };
            if !free {
                faulted.push(instance.clone());
            }
        }
        Ok(faulted)
    }

    async fn roll_back(&self, run: &DrillRun, seen: &Seen) -> Result<(), Error> {
        let status = run.status.clone().unwrap_or_default();
        let Some(victim) = status.victim else {
            return Ok(());
        };
        match run.spec.scenario.fault {
            Fault::PrimaryCrash => {}
            Fault::PrimaryFrozen | Fault::ZoneOutage => {
                for instance in self.still_faulted(run, &status.faulted_instances).await? {
                    self.send_fault(&run.spec.target.name, &instance, InstanceFault::Thaw)
                        .await?
                        .and_then(|r| r.error_for_status())
                        .map_err(|e| anyhow::anyhow!("thawing {instance}: {e}"))?;
                }
            }
            Fault::PrimaryPartitioned => {
                // The policy first: until it is gone, no new connection reaches the manager.
                network_policy::restore(
                    &self.api(),
                    &isolation_policy_name(&victim),
                    &Self::uid(run),
                )
                .await?;
                for instance in self.still_faulted(run, &status.faulted_instances).await? {
                    self.send_fault(&run.spec.target.name, &instance, InstanceFault::Heal)
                        .await?
                        .and_then(|r| r.error_for_status())
                        .map_err(|e| anyhow::anyhow!("healing {instance}'s partition: {e}"))?;
                }
            }
            Fault::Switchover => {
                // Only the request this drill made is taken back; one a person made since stays.
                if let Some(cluster) = &seen.cluster
                    && cluster.spec.switchover_to.as_deref() == Some(victim.as_str())
                {
                    let patch = json!({
                        "metadata": {"resourceVersion": cluster.resource_version()},
                        "spec": {"switchoverTo": null},
                    });
                    self.api::<DatabaseCluster>()
                        .patch(
                            &cluster.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(patch),
                        )
                        .await?;
                }
            }
            Fault::SlowDnsEnactor => {
                if seen.endpoint.is_some() {
                    self.set_slow_enactor(run, None).await?;
                }
            }
            Fault::DnsServerOutage => {
                network_policy::restore(
                    &self.api(),
                    &dns_outage_policy_name(&victim),
                    &Self::uid(run),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Says exactly what is left in place, and leaves the retry to the backoff.
    async fn rollback_failed(&self, run: &DrillRun, error: &Error) -> Result<(), Error> {
        let status = run.status.clone().unwrap_or_default();
        let victim = status.victim.unwrap_or_default();
        let left = match run.spec.scenario.fault {
            Fault::PrimaryFrozen | Fault::ZoneOutage => format!(
                "PostgreSQL of {} may still be frozen (each thaws itself {FREEZE_MARGIN_SECONDS}s after the drill's duration)",
                status.faulted_instances.join(", ")
            ),
            Fault::PrimaryPartitioned => format!(
                "NetworkPolicy {} may still isolate pod {victim}, and its manager may still cut it off (it heals itself {FREEZE_MARGIN_SECONDS}s after the drill's duration)",
                isolation_policy_name(&victim)
            ),
            Fault::Switchover => format!(
                "DatabaseCluster {} keeps spec.switchoverTo {victim}",
                run.spec.target.name
            ),
            Fault::PrimaryCrash => "nothing".into(),
            Fault::SlowDnsEnactor => format!(
                "DnsEndpoint {} keeps annotation {SLOW_ENACTOR_ANNOTATION} (its enactors stall before every write)",
                run.spec.target.name
            ),
            Fault::DnsServerOutage => format!(
                "NetworkPolicy {} may still cut off {} (the pods of Service {victim}, the zone's server)",
                dns_outage_policy_name(&victim),
                status.faulted_instances.join(", ")
            ),
        };
        let message = format!("rollback failed, retrying: {left}: {error}");
        let mut status = run.status.clone().unwrap_or_default();
        let existing = status.conditions.clone();
        set_condition(
            &mut status,
            run,
            ROLLED_BACK,
            false,
            "RollbackFailed",
            message.clone(),
        );
        if conditions::differs(
            &existing,
            status
                .conditions
                .iter()
                .find(|c| c.type_ == ROLLED_BACK)
                .expect("set"),
        ) {
            let value = serde_json::to_value(&status).expect("status serializes");
            apply_status(
                &self.context.client,
                run,
                FIELD_MANAGER,
                value,
                run.resource_version().as_deref(),
            )
            .await?;
            publish(
                &self.context.recorder,
                run,
                EventType::Warning,
                "RollbackFailed",
                message,
            )
            .await;
        }
        Ok(())
    }

    async fn record_rolled_back(&self, run: &DrillRun) -> Result<DrillRun, Error> {
        let mut status = run.status.clone().unwrap_or_default();
        status.rolled_back_at = Some(MicroTime(Timestamp::now()));
        let message = format!(
            "{} rolled back; waiting for the target to recover",
            run.spec.scenario.fault.name()
        );
        set_condition(
            &mut status,
            run,
            ROLLED_BACK,
            true,
            "RolledBack",
            message.clone(),
        );
        let written = self
            .write_status(run, status, Phase::RollingBack, &message)
            .await?;
        publish(
            &self.context.recorder,
            run,
            EventType::Normal,
            "RolledBack",
            message,
        )
        .await;
        Ok(written)
    }

    /// Stops the probe, reads every row back, judges (unless an abort already decided) and
    /// records `Completed`.
    async fn complete(&self, run: &DrillRun) -> Result<DrillRun, Error> {
        let uid = Self::uid(run);
        let measured = self.context.driven.lock().unwrap().get(&uid).and_then(|d| {
            let probe = d.probe.as_ref()?;
            let dns = d
                .dns_probe
                .as_ref()
                .map(|(fqdn, probe)| (fqdn.clone(), probe.report()));
            Some((probe.report(), dns, d.injected))
        });
        let mut status = run.status.clone().unwrap_or_default();
        let decided = status.result.as_deref().and_then(Outcome::from_name);
        let mut message = status.message.clone().unwrap_or_default();
        if let Some((report, dns, injected)) = measured {
            // A database's rows are read back; a DNS name's answers leave nothing to read.
            let found = match run.spec.target.kind {
                TargetKind::DatabaseCluster => {
                    let name = &run.spec.target.name;
                    let endpoint =
                        client::application(&self.context.client, &self.namespace, name).await?;
                    let session = endpoint.connect().await.map_err(anyhow::Error::from)?;
                    let found = probe::sequences_found(&session)
                        .await
                        .map_err(anyhow::Error::from)?;
                    Some(found)
                }
                TargetKind::DnsEndpoint => None,
            };
            let outage = |report: &probe::Report| {
                injected
                    .and_then(|at| report.outage_after(at))
                    .map(|d| milliseconds(d.as_secs_f64()))
            };
            let lost_in = |report: &probe::Report| {
                found
                    .as_ref()
                    .map_or(0, |found| report.verify(found).lost.len() as u64)
            };
            let lost = lost_in(&report);
            let rto = outage(&report);
            status.detection_seconds = injected
                .and_then(|at| report.first_miss_after(at))
                .map(|d| milliseconds(d.as_secs_f64()));
            status.rto_seconds = rto;
            status.writes = Some(write_counts(&report));
            if found.is_some() {
                status.lost_writes = Some(lost);
            }
            status.dns_probe = dns.map(|(fqdn, report)| DnsProbeResult {
                fqdn,
                rto_seconds: outage(&report),
                lost_writes: lost_in(&report),
                writes: write_counts(&report),
            });
            if decided.is_none() {
                let criteria = Criteria {
                    max_rto_seconds: max_rto(run),
                    max_lost_writes: run.spec.success.max_lost_writes.into(),
                };
                let dns = status.dns_probe.as_ref();
                let measured = Measured {
                    rto_seconds: rto,
                    dns_rto_seconds: dns.and_then(|d| d.rto_seconds),
                    lost_writes: lost + dns.map_or(0, |d| d.lost_writes),
                };
                let (outcome, judged) = run::judge(&measured, &criteria);
                status.result = Some(outcome.name().to_string());
                status.message = Some(judged.clone());
                message = judged;
            }
        }
        let outcome = status.result.as_deref().and_then(Outcome::from_name);
        if outcome.is_none() {
            // Undecided without a probe: the operator that held the fault and rolled it back
            // died, taking the measurements along.
            message = format!(
                "the operator that drove this run is gone ({}): its fault was rolled back; its measurements are lost",
                Reason::OperatorRestarted
            );
            status.result = Some(Outcome::Aborted.name().into());
            status.message = Some(message.clone());
            status.reason = Some(Reason::OperatorRestarted.to_string());
        }
        status.completed_at = Some(Time(Timestamp::now()));
        set_result_condition(&mut status, run, outcome, &message);
        let result = status.result.clone().unwrap_or_default();
        let event = if result == Outcome::Succeeded.name() {
            EventType::Normal
        } else {
            EventType::Warning
        };
        let written = self
            .write_status(
                run,
                status,
                Phase::Completed,
                &format!("{result}: {message}"),
            )
            .await?;
        self.forget(&uid);
        self.count(&written);
        publish(&self.context.recorder, run, event, &result, message).await;
        Ok(written)
    }

    /// Drops what this process knew of a run, stopping its probes.
    fn forget(&self, uid: &str) {
        if let Some(driven) = self.context.driven.lock().unwrap().remove(uid) {
            for probe in driven.into_probes() {
                tokio::spawn(probe.stop());
            }
        }
    }

    /// Counts a run this process completed, and moves the report gauges.
    fn count(&self, run: &DrillRun) {
        let status = run.status.clone().unwrap_or_default();
        let guard = status
            .guard_readings
            .iter()
            .find(|r| r.stopped_the_run)
            .map_or("", |r| r.slo.as_str());
        self.context
            .metrics
            .drills
            .runs
            .with_label_values(&[
                status.result.as_deref().unwrap_or_default(),
                run.spec.scenario.fault.name(),
                status.reason.as_deref().unwrap_or_default(),
                guard,
            ])
            .inc();
        self.report(run);
    }

    /// Sets each per-target report gauge from a completed run that has its value, unless a
    /// newer run set it already.
    fn report(&self, run: &DrillRun) {
        let Some(status) = &run.status else { return };
        let Some(completed) = status.completed_at.as_ref().map(|t| t.0) else {
            return;
        };
        let metrics = &self.context.metrics.drills;
        let labels = [
            self.namespace.as_str(),
            run.spec.target.kind.name(),
            run.spec.target.name.as_str(),
        ];
        let mut reported = self.context.reported.lock().unwrap();
        let shown = reported
            .entry((self.namespace.clone(), run.spec.target.clone()))
            .or_default();
        if let Some(rto) = status.rto_seconds
            && shown.rto.take_if_newer(completed)
        {
            metrics.last_rto_seconds.with_label_values(&labels).set(rto);
            if let Some(limit) = max_rto(run) {
                metrics
                    .last_max_rto_seconds
                    .with_label_values(&labels)
                    .set(limit);
            }
        }
        if let Some(lost) = status.lost_writes
            && shown.lost_writes.take_if_newer(completed)
        {
            metrics
                .last_lost_writes
                .with_label_values(&labels)
                .set(lost as f64);
        }
        let judged = match status.result.as_deref().and_then(Outcome::from_name) {
            Some(Outcome::Succeeded) => Some(0.0),
            Some(Outcome::Failed) => Some(1.0),
            _ => None,
        };
        if let Some(failed) = judged
            && shown.judged.take_if_newer(completed)
        {
            metrics.last_failed.with_label_values(&labels).set(failed);
        }
        if judged == Some(0.0) && shown.succeeded.take_if_newer(completed) {
            metrics
                .last_success_timestamp
                .with_label_values(&labels)
                .set(completed.as_millisecond() as f64 / 1000.0);
        }
    }
}

/// For one target, the completion time of the run each report gauge shows: gauges move only
/// forward whatever order runs are seen in (a new leader sees them all at once), and a run
/// without a value (Skipped, Aborted) leaves the last one that had it.
#[derive(Default)]
struct Reported {
    rto: Newest,
    lost_writes: Newest,
    judged: Newest,
    succeeded: Newest,
}

#[derive(Default)]
struct Newest(Option<Timestamp>);

impl Newest {
    /// Records `completed` and says so unless something newer is recorded.
    fn take_if_newer(&mut self, completed: Timestamp) -> bool {
        if self.0.is_some_and(|newest| newest > completed) {
            return false;
        }
        self.0 = Some(completed);
        true
    }
}

fn recorded(run: &DrillRun) -> Result<Recorded, Error> {
    let status = run.status.clone().unwrap_or_default();
    let phase = Phase::from_name(status.phase.as_deref())
        .ok_or_else(|| anyhow::anyhow!("status.phase {:?} is not a drill phase", status.phase))?;
    Ok(Recorded {
        phase,
        outcome: status.result.as_deref().and_then(Outcome::from_name),
        rolled_back: status.rolled_back_at.is_some(),
    })
}

/// The instance the fault is aimed at: the primary (for a zone outage, the one whose zone goes),
/// or for a switchover the ready replica furthest along.
fn victim(fault: Fault, cluster: &DatabaseCluster) -> Result<String, String> {
    let name = cluster.name_any();
    let status = cluster.status.clone().unwrap_or_default();
    match fault {
        Fault::PrimaryCrash
        | Fault::PrimaryFrozen
        | Fault::PrimaryPartitioned
        | Fault::ZoneOutage => status
            .primary
            .ok_or_else(|| format!("DatabaseCluster {name} has no primary")),
        Fault::Switchover => status
            .instances
            .iter()
            .filter(|i| i.role == "replica" && i.ready)
            .min_by_key(|i| i.lag_bytes.unwrap_or(u64::MAX))
            .map(|i| i.name.clone())
            .ok_or_else(|| {
                format!("DatabaseCluster {name} has no ready replica to switch over to")
            }),
        Fault::SlowDnsEnactor | Fault::DnsServerOutage => Err(format!(
            "{} does not apply to DatabaseCluster {name}",
            fault.name()
        )),
    }
}

fn isolation_policy_name(victim: &str) -> String {
    format!("bulwark-drill-partition-{victim}")
}

fn dns_outage_policy_name(service: &str) -> String {
    format!("bulwark-drill-dns-outage-{service}")
}

/// The Service `host` names in `namespace` by its cluster DNS name
/// (`<service>.<namespace>.svc`, with or without the cluster domain).
fn service_named_by<'a>(host: &'a str, namespace: &str) -> Option<&'a str> {
    let mut labels = host.trim_end_matches('.').split('.');
    let (service, in_namespace, svc) = (labels.next()?, labels.next()?, labels.next()?);
    (in_namespace == namespace && svc == "svc" && !service.is_empty()).then_some(service)
}

/// An owner reference to `run`, for what it creates (its lock, a fault's NetworkPolicy).
fn owned_by(run: &DrillRun) -> OwnerReference {
    OwnerReference {
        api_version: "bulwark.dev/v1alpha1".into(),
        kind: "DrillRun".into(),
        name: run.name_any(),
        uid: run.uid().unwrap_or_default(),
        ..OwnerReference::default()
    }
}

fn write_counts(report: &probe::Report) -> WriteCounts {
    WriteCounts {
        acknowledged: report.count(probe::Outcome::Acknowledged) as u64,
        failed: report.count(probe::Outcome::Failed) as u64,
        indeterminate: report.count(probe::Outcome::Indeterminate) as u64,
    }
}

/// Seconds kept to the millisecond, as status shows them.
fn milliseconds(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

fn max_rto(run: &DrillRun) -> Option<f64> {
    let limit = run.spec.success.max_rto.as_deref()?;
    parse_duration(limit).ok().map(|d| d.as_secs_f64())
}

/// Whether to wait at the gate rather than skip: the target exists but is not Healthy, and the
/// run has gated for less than [`GATE_PATIENCE`] (a cluster settling after the previous drill).
fn target_settling(run: &DrillRun, cluster: Option<&DatabaseCluster>) -> bool {
    let healthy = cluster
        .and_then(|c| c.status.as_ref()?.phase.as_deref())
        .map(|phase| phase == "Healthy");
    healthy == Some(false)
        && phase_recorded_at(run, Phase::Gating).is_some_and(|at| Utc::now() - at < GATE_PATIENCE)
}

fn scenario_duration(run: &DrillRun) -> Duration {
    parse_duration(&run.spec.scenario.duration).unwrap_or(Duration::from_secs(1))
}

fn guard_interval(run: &DrillRun) -> Duration {
    parse_duration(&run.spec.guard_interval).unwrap_or(Duration::from_secs(5))
}

/// When `phase` was first recorded, from the timeline.
fn phase_recorded_at(run: &DrillRun, phase: Phase) -> Option<chrono::DateTime<Utc>> {
    let entry = run
        .status
        .as_ref()?
        .timeline
        .iter()
        .find(|e| e.phase == phase.name())?;
    Some(super::utc(entry.time.0))
}

/// The wall-clock time of an `Instant` in the past.
fn micro_time_of(at: Instant) -> MicroTime {
    let ago = k8s_openapi::jiff::SignedDuration::try_from(at.elapsed()).unwrap_or_default();
    MicroTime(Timestamp::now() - ago)
}

fn set_condition(
    status: &mut DrillRunStatus,
    run: &DrillRun,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
) {
    let wanted = conditions::condition(
        &status.conditions,
        type_,
        ok,
        reason,
        message,
        run.metadata.generation,
    );
    status.conditions.retain(|c| c.type_ != type_);
    status.conditions.push(wanted);
}

fn set_result_condition(
    status: &mut DrillRunStatus,
    run: &DrillRun,
    outcome: Option<Outcome>,
    message: &str,
) {
    let outcome = outcome.unwrap_or(Outcome::Aborted);
    set_condition(
        status,
        run,
        SUCCEEDED,
        outcome == Outcome::Succeeded,
        outcome.name(),
        message.to_string(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zone_server_is_a_service_by_its_cluster_dns_name_in_the_runs_namespace() {
        for host in [
            "bind.dns.svc",
            "bind.dns.svc.cluster.local",
            "bind.dns.svc.example.org.",
        ] {
            assert_eq!(service_named_by(host, "dns"), Some("bind"), "{host}");
        }
        for host in [
            "bind.other.svc",
            "ns1.example.com",
            "bind",
            "10.96.0.53",
            ".dns.svc",
        ] {
            assert_eq!(service_named_by(host, "dns"), None, "{host}");
        }
    }
}
