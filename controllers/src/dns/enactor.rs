//! The enactor, one in every replica on purpose (availability, as in the original design):
//! applies each endpoint's newest plan to the DNS server in one fenced UPDATE, verifies the
//! authoritative answer, records the live generation on the endpoint, and collects old plans.
//!
//! Several enactors may race on the same endpoint; the fence at the server decides, so a stale
//! or slow enactor's write is refused rather than applied.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulwark_chaos::slow_enactor::SlowEnactor;
use bulwark_crds::dns::{DnsEndpoint, DnsPlan, DnsZone, PlanPhase};
use bulwark_crds::drills::SLOW_ENACTOR_ANNOTATION;
use futures::channel::mpsc::UnboundedReceiver;
use futures::future::ready;
use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Resource, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::desired::{content_hash, newest_minted};
use super::fencing::{
    Conflict, EnactmentPass, EndpointFacts, FenceGuard, MAX_FENCE_REFUSALS, Observation,
    PassOutcome, PassStep, PlanFacts, Strategy, cleanup_may_delete, decide_cleanup, plan_refusal,
    trusted_bound,
};
use super::metrics::DnsMetrics;
use super::provider::{DnsProvider, WriteOutcome};
use super::rfc2136::Rfc2136;
use super::runtime::{
    Backoff, CachedPlan, DnsSettings, EndpointsAndPlans, Error, RESERVATION_LAG, ZoneClients,
    another_plan, apply_endpoint_status, cached, drain, endpoint_and_plan_triggers,
    endpoint_condition, endpoint_condition_for, endpoints_in_zone, key, plans_of, publish,
    publish_regarding, zone_provider,
};
use crate::backlog::{self, QueueBound};
use crate::events::Recorder;
use crate::index::{Changes, Indexed, name_ref};
use crate::leadership::Leadership;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::runtime::{add_finalizer, parse_duration, remove_finalizer};

const CONTROLLER: &str = "dns-enactor";
/// Keeps a deleted DnsEndpoint until its records and fence are gone from the DNS server.
pub const RECORDS_FINALIZER: &str = "bulwark.dev/dns-records";
const FIELD_MANAGER: &str = "bulwark-dns-enactor";
/// The field manager of the enactor's status writes. Not `FIELD_MANAGER`, which earlier versions
/// applied status under without `latestPlanGeneration` and `observedGeneration`: an enactor of
/// such a version (in a rolling upgrade, or after a rollback) would have removed those fields
/// wherever this one had become their only owner, and its planner, reading no reservation, would
/// have minted from generation 1 again, below the fence.
const STATUS_MANAGER: &str = "bulwark-dns-live-record";
/// How long the enactors of replicas that do not lead leave a new plan to the leader's: two
/// replicas racing on every plan doubled the API writes per plan (the fence keeps either
/// winner safe). A leader whose enactor is stalled or gone costs a change about this much; one
/// stuck on a single endpoint while it puts others live, at most [`STANDBY_PATIENCE`].
const STANDBY_GRACE: Duration = Duration::from_secs(2);

/// How long a plan may wait for another replica's enactor that is busy elsewhere (putting other
/// plans live) before a standby takes it over: that enactor may be stuck on this endpoint alone,
/// for example cut off from this zone's server.
const STANDBY_PATIENCE: Duration = Duration::from_secs(10);

struct Context {
    client: kube::Client,
    metrics: Metrics,
    recorder: Recorder,
    settings: DnsSettings,
    plans: Indexed<CachedPlan>,
    zones: Store<DnsZone>,
    zone_clients: ZoneClients,
    leadership: watch::Receiver<Leadership>,
    readiness: Readiness,
    backoff: Backoff,
    verified: Verified,
    held: Held,
    others_progress: OthersProgress,
    /// The endpoints queued in kube-runtime's scheduler (see `backlog`).
    backlog: Arc<QueueBound<DnsEndpoint>>,
}

/// When this replica last saw another replica's enactor put a plan live. A standby leaves new
/// plans to an enactor that is making progress (see [`standby_wait`]).
type OthersProgress = Arc<Mutex<Option<std::time::Instant>>>;

/// The endpoints whose live plan this replica has read back from the server: the
/// `dns_endpoints_verified` gauge, which tells when a restarted replica has checked every name.
/// A set of UIDs (an endpoint created again under its name is not verified yet), not a metric
/// series per endpoint: 10,000 series cost megabytes in every replica and were never removed with
/// their endpoint. Each UID as a 64-bit hash, not a reference of four strings: 2.5 MB at 10,000.
type Verified = Arc<Mutex<HashSet<u64>>>;

/// An endpoint's UID as a key of [`Verified`].
fn uid_key(endpoint: &DnsEndpoint) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    endpoint.metadata.uid.hash(&mut hasher);
    hasher.finish()
}

/// The enactor's task; subscribes to the shared caches at once, so call it before running them.
#[allow(clippy::too_many_arguments)]
pub fn run(
    client: kube::Client,
    metrics: Metrics,
    recorder: Recorder,
    readiness: Readiness,
    leadership: watch::Receiver<Leadership>,
    settings: DnsSettings,
    caches: &mut EndpointsAndPlans,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    // Only a new plan concerns enactment (plans are immutable but for refusals, which enactors
    // write themselves), and only what enactment reads of an endpoint: reacting to every status
    // write re-read the server for nothing, on every replica.
    let endpoints_gone_live = caches.subscribe_endpoints(
        Changes::AppliedIf(went_live),
        readiness.gate(format!("{CONTROLLER}/DnsLiveProgress")),
    );
    let caches = caches.subscribe(
        &readiness,
        CONTROLLER,
        Changes::AppliedIf(enactment_inputs_differ),
        Changes::AppliedIf(another_plan),
    );
    async move {
        let others_progress = OthersProgress::default();
        tokio::spawn(track_others_progress(
            endpoints_gone_live,
            settings.identity.clone(),
            others_progress.clone(),
        ));
        let namespace = settings.scope.namespace();
        // Zones trigger their endpoints and are read from this cache, not fetched per enactment.
        let (zones, zone_events) = cached::<DnsZone>(
            &client,
            namespace,
            watcher::Config::default(),
            readiness.gate(format!("{CONTROLLER}/DnsZone")),
        );
        let endpoints = caches.endpoints.store().clone();
        let backlog = QueueBound::new();
        // Only a spec change of a zone concerns its endpoints' enactment; the prober's status
        // writes would re-check every endpoint in the zone each time.
        let zone_triggers = zone_events
            .touched_objects()
            .predicate_filter(predicates::generation, Default::default())
            .filter_map(|zone| {
                ready(
                    zone.inspect_err(|error| warn!(%error, "DnsZone watch failed"))
                        .ok(),
                )
            })
            .flat_map({
                let endpoints = endpoints.clone();
                move |zone| futures::stream::iter(endpoints_in_zone(&endpoints, &zone))
            });
        let sources = [
            endpoint_and_plan_triggers(caches.endpoint_changes, caches.plan_changes),
            zone_triggers.boxed(),
            resync_sweep(endpoints.clone(), settings.resync).boxed(),
        ];
        let controller = backlog::controller(endpoints.clone(), sources, backlog.clone());
        let verified = Verified::default();
        let held = Held::default();
        tokio::spawn(count_pending_and_verified(
            endpoints.clone(),
            caches.plans.clone(),
            verified.clone(),
            held.clone(),
            metrics.dns.clone(),
            shutdown.clone(),
        ));
        let context = Arc::new(Context {
            client,
            metrics,
            recorder,
            settings,
            plans: caches.plans,
            zones,
            zone_clients: ZoneClients::default(),
            leadership,
            readiness,
            backoff: Backoff::default(),
            verified,
            held: held.clone(),
            others_progress,
            backlog,
        });
        let results = controller
            .graceful_shutdown_on(async move { shutdown.cancelled().await })
            .run(reconcile, error_policy, context);
        drain(CONTROLLER, results).await;
    }
}

/// Brings every endpoint back once per `resync` to check its answer at the server (and repair
/// drift), spread evenly over the interval. A requeue per endpoint instead held a timer and two
/// references per endpoint in kube-runtime's scheduler: about 1 KB each, 10 MB at 10,000.
fn resync_sweep(
    endpoints: Store<DnsEndpoint>,
    resync: Duration,
) -> impl Stream<Item = ObjectRef<DnsEndpoint>> + Send + 'static {
    let round = (VecDeque::<Arc<DnsEndpoint>>::new(), resync);
    futures::stream::unfold(round, move |(mut round, mut gap)| {
        let endpoints = endpoints.clone();
        async move {
            loop {
                if let Some(endpoint) = round.pop_front() {
                    tokio::time::sleep(gap).await;
                    return Some((name_ref(&*endpoint), (round, gap)));
                }
                round = endpoints.state().into();
                if round.is_empty() {
                    // Not listed yet, or nothing to check (at least a second: `--dns-resync=0s`
                    // must not spin).
                    tokio::time::sleep(resync.max(Duration::from_secs(1))).await;
                    continue;
                }
                gap = resync / round.len() as u32;
            }
        }
    })
}

/// The spec generation the planner last planned from, as its status write says.
fn planner_observed(endpoint: &DnsEndpoint) -> Option<i64> {
    endpoint.status.as_ref().and_then(|s| s.observed_generation)
}

/// The spec generation the planner last planned from: its status write, or the newest of the
/// endpoint's plans, which is all a plan minted without a reservation writes.
fn planned_from(endpoint: &DnsEndpoint, plans: &[Arc<CachedPlan>]) -> Option<i64> {
    let minted_from = plans
        .iter()
        .filter_map(|p| p.spec.endpoint_generation)
        .max();
    planner_observed(endpoint).max(minted_from)
}

/// Whether the endpoint changed in what enactment reads: its spec, its reserved and live
/// generations, the spec the planner last looked at, deletion and finalizers, annotations
/// (drills' slow enactor, abandoning records). Not the Ready and Degraded conditions alone.
fn enactment_inputs_differ(cached: &DnsEndpoint, new: &DnsEndpoint) -> bool {
    let (old_meta, new_meta) = (cached.meta(), new.meta());
    old_meta.generation != new_meta.generation
        || reserved_generation(cached) != reserved_generation(new)
        || planner_observed(cached) != planner_observed(new)
        || live_generation(cached) != live_generation(new)
        || old_meta.deletion_timestamp != new_meta.deletion_timestamp
        || old_meta.finalizers != new_meta.finalizers
        || old_meta.annotations != new_meta.annotations
}

/// Keeps `bulwark_dns_pending_endpoints` at the number of endpoints whose newest plan is not yet
/// live: the enactment backlog, which a burst of changes shows as it drains; and
/// `bulwark_dns_endpoints_verified`, forgetting endpoints deleted since (their held writes too).
async fn count_pending_and_verified(
    endpoints: Store<DnsEndpoint>,
    plans: Indexed<CachedPlan>,
    verified: Verified,
    held: Held,
    metrics: DnsMetrics,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while shutdown.run_until_cancelled(tick.tick()).await.is_some() {
        let listed = endpoints.state();
        let pending = listed
            .iter()
            // Reserved 0: nothing to enact (no plan yet, or none minted for want of a target).
            .filter(|e| {
                let generations: Vec<u64> = plans_of(&plans, e)
                    .iter()
                    .map(|p| p.spec.generation)
                    .collect();
                let newest =
                    newest_minted(reserved_generation(e), live_generation(e), &generations);
                newest > 0 && live_generation(e) < Some(newest)
            })
            .count();
        metrics.pending_endpoints.set(pending as i64);
        let present: HashSet<u64> = listed.iter().map(|e| uid_key(e)).collect();
        drop(listed);
        let mut verified = verified.lock().unwrap_or_else(|e| e.into_inner());
        verified.retain(|uid| present.contains(uid));
        metrics.endpoints_verified.set(verified.len() as i64);
        drop(verified);
        let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|endpoint, _| endpoints.get(endpoint).is_some());
    }
}

async fn reconcile(endpoint: Arc<DnsEndpoint>, context: Arc<Context>) -> Result<Action, Error> {
    if let Some(action) = context.readiness.until_synced(CONTROLLER) {
        return Ok(action);
    }
    context.backlog.reconciling(&endpoint);
    if let Some(action) = context
        .settings
        .scope
        .not_managed(endpoint.namespace().as_deref())
    {
        return Ok(action);
    }
    let has_finalizer = endpoint.finalizers().iter().any(|f| f == RECORDS_FINALIZER);
    let deleting = endpoint.meta().deletion_timestamp.is_some();
    if deleting && !has_finalizer {
        return Ok(Action::await_change());
    }
    // The finalizer goes on once the planner has looked at the spec: nothing of the endpoint is
    // on the server before that, and adding it at once raced the planner's reservation (a
    // compare-and-set on the same object: a 409 and a retry for most new endpoints).
    if !has_finalizer
        && !deleting
        && planned_from(&endpoint, &plans_of(&context.plans, &endpoint))
            != endpoint.metadata.generation
    {
        return Ok(Action::await_change());
    }
    let timer = context.metrics.reconcile(CONTROLLER);
    let result = match (deleting, has_finalizer) {
        (true, _) => remove(&endpoint, &context).await,
        // Both replicas adding it raced each other (and the leader's status writes) to a 409.
        (false, false) => {
            match standby_wait(&context, &endpoint, &plans_of(&context.plans, &endpoint)) {
                Some(wait) => Ok(Action::requeue(wait)),
                None => add_records_finalizer(&context, &endpoint).await,
            }
        }
        (false, true) => enact(&endpoint, &context).await,
    };
    timer.done(result.as_ref().err().map(Error::kind));
    match &result {
        Ok(_) => context.backoff.succeeded(&key(&endpoint)),
        Err(error) => {
            if let Error::Provider(_) = error {
                let namespace = endpoint.namespace().unwrap_or_default();
                context
                    .zone_clients
                    .forget(ObjectRef::new(&endpoint.spec.zone_ref).within(&namespace));
            }
            report_failure(&endpoint, &context, error).await
        }
    }
    result
}

/// Adds the finalizer that keeps a deleted endpoint until its name is gone from DNS. By
/// server-side apply ([`add_finalizer`]): a compare-and-set of the whole list lost to the
/// planner's reservation or the other replica for about half of 10,000 new endpoints.
async fn add_records_finalizer(context: &Context, endpoint: &DnsEndpoint) -> Result<Action, Error> {
    match add_finalizer(&context.client, endpoint, FIELD_MANAGER, RECORDS_FINALIZER).await {
        // The update brings the endpoint back with the finalizer in place.
        Ok(_) => Ok(Action::await_change()),
        // Deleted meanwhile (the apply's create fails validation, or deletion has begun).
        Err(kube::Error::Api(s)) if s.is_not_found() || s.code == 422 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

/// Removes the records finalizer once the name is gone from DNS (or abandoned). A
/// compare-and-set on the resourceVersion; losing the race to another replica is not an error.
async fn release_records_finalizer(
    context: &Context,
    endpoint: &DnsEndpoint,
) -> Result<Action, Error> {
    match remove_finalizer(&context.client, endpoint, RECORDS_FINALIZER).await {
        // The object goes, or its watch event brings it back for the other finalizers.
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.is_conflict() => {
            context.metrics.dns.conflict("finalizer");
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

/// Set on a DnsEndpoint being deleted, releases its finalizer without touching the DNS server
/// (for a server that is gone for good); an Event says what was left there.
pub const ABANDON_RECORDS_ANNOTATION: &str = "bulwark.dev/abandon-records";

/// A deleted DnsEndpoint: remove its records from the server, fenced on the fence just read so a
/// concurrent enactment is never half-removed, and leave a tombstone fence so a lagging replica
/// cannot bring them back; then let the object go. Only what this endpoint owns is removed.
async fn remove(endpoint: &DnsEndpoint, context: &Context) -> Result<Action, Error> {
    let fqdn = endpoint.spec.fqdn.as_str();
    let owner = endpoint.uid().unwrap_or_default();
    let abandon = endpoint
        .annotations()
        .get(ABANDON_RECORDS_ANNOTATION)
        .is_some_and(|v| v == "true");
    let provider = zone_provider(
        &context.client,
        &context.zones,
        &context.zone_clients,
        endpoint,
        context.settings.server_timeout,
    )
    .await;
    let note = match provider {
        Ok((_, dns)) if abandon => {
            let left = match (dns.served_records(fqdn).await, dns.read_fence(fqdn).await) {
                (Ok(records), Ok(fence)) => format!(
                    "left at the server: {fqdn} {}, fence {}",
                    show_records(&records),
                    fence.map_or("none".into(), |f| f.value())
                ),
                (Err(e), _) | (_, Err(e)) => format!("the server could not be read ({e})"),
            };
            abandoned(endpoint, context, left).await;
            return release_records_finalizer(context, endpoint).await;
        }
        Ok((_, dns)) => {
            let mut removed = None;
            for _ in 0..MAX_FENCE_REFUSALS {
                let Some(fence) = dns
                    .read_fence(fqdn)
                    .await?
                    .filter(|f| f.owned_by(&owner) && !f.removed)
                else {
                    removed = Some(format!(
                        "nothing of this endpoint's is at the server for {fqdn}"
                    ));
                    break;
                };
                let guard = FenceGuard {
                    expect: Some(fence.clone()),
                    name_unclaimed: false,
                };
                let tombstone = fence.tombstone(&owner);
                if dns.remove_name(fqdn, &tombstone, &guard).await? == WriteOutcome::Applied {
                    removed = Some(format!(
                        "{fqdn} removed from the DNS server; its fence stays as the tombstone {:?}",
                        tombstone.value()
                    ));
                    break;
                }
            }
            let Some(note) = removed else {
                return Ok(Action::requeue(Duration::from_millis(100)));
            };
            note
        }
        Err(_) if abandon => {
            abandoned(endpoint, context, "the zone could not be used".into()).await;
            return release_records_finalizer(context, endpoint).await;
        }
        // No zone, or a name outside it: nothing Bulwark wrote is reachable, so nothing to remove.
        Err(error @ Error::Invalid { .. }) => {
            warn!(endpoint = %key(endpoint), %error, "deleted without removing records");
            format!("nothing removed: {error}")
        }
        Err(error) => return Err(error),
    };
    info!(endpoint = %key(endpoint), fqdn, %note, "records removed");
    publish(
        &context.recorder,
        endpoint,
        EventType::Normal,
        "RecordsRemoved",
        note,
    )
    .await;
    release_records_finalizer(context, endpoint).await
}

async fn abandoned(endpoint: &DnsEndpoint, context: &Context, left: String) {
    let note = format!("finalizer released by the {ABANDON_RECORDS_ANNOTATION} annotation; {left}");
    warn!(endpoint = %key(endpoint), %note, "records abandoned");
    publish(
        &context.recorder,
        endpoint,
        EventType::Warning,
        "RecordsAbandoned",
        note,
    )
    .await;
}

fn show_records(records: &[bulwark_crds::dns::RRSet]) -> String {
    if records.is_empty() {
        return "no records".into();
    }
    records
        .iter()
        .map(|r| format!("{:?} {}", r.record_type, r.values.join(",")))
        .collect::<Vec<_>>()
        .join("; ")
}

fn error_policy(endpoint: Arc<DnsEndpoint>, error: &Error, context: Arc<Context>) -> Action {
    warn!(endpoint = %key(&endpoint), %error, "enactment failed; retrying with backoff");
    context.backoff.failed(&key(&endpoint))
}

/// Ready=False quoting the cause, and a Warning Event when the cause is new.
async fn report_failure(endpoint: &DnsEndpoint, context: &Context, error: &Error) {
    let (ready, changed) =
        endpoint_condition(endpoint, "Ready", false, error.reason(), error.to_string());
    if !changed {
        return;
    }
    publish(
        &context.recorder,
        endpoint,
        EventType::Warning,
        error.reason(),
        error.to_string(),
    )
    .await;
    let planned_from = planned_from(endpoint, &plans_of(&context.plans, endpoint));
    if let Err(e) = write_endpoint_status(
        context,
        endpoint,
        &LiveRecord::of(endpoint),
        planned_from,
        ready,
        "failure",
    )
    .await
    {
        warn!(endpoint = %key(endpoint), error = %e, "could not record the failure in status");
    }
}

/// The slow enactor a `SlowDnsEnactor` drill set on this endpoint, else the configured one.
fn slow_enactor(configured: SlowEnactor, endpoint: &DnsEndpoint) -> SlowEnactor {
    endpoint
        .annotations()
        .get(SLOW_ENACTOR_ANNOTATION)
        .and_then(|delay| parse_duration(delay).ok())
        .map_or(configured, SlowEnactor::new)
}

/// The newest plan the enactor may write. Superseded plans are never retried; a plan the planner
/// could not have minted for this endpoint is marked Rejected with the reason and skipped (the
/// check is repeated each time, so a plan Rejected for a fault that has since cleared, such as a
/// missing zone, is enacted once it clears).
async fn enactable_plan(
    endpoint: &DnsEndpoint,
    context: &Context,
    plans: &[Arc<CachedPlan>],
) -> Result<Option<Arc<CachedPlan>>, Error> {
    let mut fresh: Option<DnsEndpoint> = None;
    let mut newest = None;
    for plan in plans.iter().rev() {
        if plan.refusal == Some(PlanPhase::Superseded) {
            continue;
        }
        let facts = PlanFacts {
            fqdn: &plan.spec.fqdn,
            generation: plan.spec.generation,
            empty: plan.spec.rrsets.is_empty(),
        };
        let mut refusal = plan_refusal(&facts, &endpoint_facts(endpoint));
        if refusal.is_some() && plan.spec.generation > trusted(endpoint) {
            // The plan's watch event may have overtaken its reservation's. A plan just minted is
            // left for that event, which brings the endpoint back; asking the API server for
            // every new plan was a GET per plan per replica.
            if minted_within(plan, RESERVATION_LAG) {
                continue;
            }
            // Still unreserved after that: ask the API server before refusing it.
            let api: Api<DnsEndpoint> = Api::namespaced(
                context.client.clone(),
                &endpoint.namespace().unwrap_or_default(),
            );
            if fresh.is_none() {
                fresh = api.get_opt(&endpoint.name_any()).await?;
            }
            if let Some(fresh) = &fresh {
                refusal = plan_refusal(&facts, &endpoint_facts(fresh));
            }
        }
        // Every refused plan is marked, even beside an enactable one of the same generation.
        match refusal {
            None => {
                newest.get_or_insert_with(|| plan.clone());
            }
            Some(reason) if plan.refusal != Some(PlanPhase::Rejected) => {
                mark_plan(context, plan, PlanPhase::Rejected, &reason).await?
            }
            Some(_) => {}
        }
    }
    Ok(newest)
}

/// How soon an endpoint whose status write lost a compare-and-set is enacted again when no
/// watch event brings it back first.
const STATUS_CONFLICT_RETRY: Duration = Duration::from_secs(5);

/// Whether the plan was minted less than `within` ago.
fn minted_within(plan: &CachedPlan, within: Duration) -> bool {
    age(plan).is_some_and(|age| age < within)
}

/// Time since the planner minted the plan.
fn age(plan: &CachedPlan) -> Option<Duration> {
    let minted = plan.spec.minted_at.as_ref()?.0;
    Some(Timestamp::now().duration_since(minted).unsigned_abs())
}

fn reserved_generation(endpoint: &DnsEndpoint) -> u64 {
    endpoint
        .status
        .as_ref()
        .map_or(0, |s| s.latest_plan_generation)
}

/// The newest generation an enactor accepts for the endpoint as cached.
fn trusted(endpoint: &DnsEndpoint) -> u64 {
    trusted_bound(reserved_generation(endpoint), live_generation(endpoint))
}

fn endpoint_facts(endpoint: &DnsEndpoint) -> EndpointFacts<'_> {
    EndpointFacts {
        fqdn: &endpoint.spec.fqdn,
        reserved_generation: reserved_generation(endpoint),
        live_generation: live_generation(endpoint),
        allow_empty: endpoint.spec.allow_empty,
    }
}

fn live_generation(endpoint: &DnsEndpoint) -> Option<u64> {
    endpoint.status.as_ref().and_then(|s| s.live_generation)
}

/// What the endpoint's status records of its live generation: which it is, who enacted it, when,
/// and when its answer was verified. The only record of which plan is live: writing it on the
/// plans as well cost two writes per change (the new plan's Live, the older one's Superseded).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct LiveRecord {
    #[serde(rename = "liveGeneration", skip_serializing_if = "Option::is_none")]
    generation: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    enacted_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    enacted_at: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verified_at: Option<Time>,
}

impl LiveRecord {
    fn of(endpoint: &DnsEndpoint) -> Self {
        let Some(status) = endpoint.status.as_ref() else {
            return LiveRecord::default();
        };
        LiveRecord {
            generation: status.live_generation,
            enacted_by: status.enacted_by.clone(),
            enacted_at: status.enacted_at.clone(),
            verified_at: status.verified_at.clone(),
        }
    }

    /// The record after a pass that found `generation` live: `applied` by this replica, and its
    /// answer `verified` (at `now`). A new generation starts a new record: what the older one's
    /// said is not true of it.
    fn after_pass(
        mut self,
        generation: u64,
        applied: Option<&str>,
        verified: bool,
        now: Timestamp,
    ) -> Self {
        if self.generation != Some(generation) {
            self = LiveRecord {
                generation: Some(generation),
                ..LiveRecord::default()
            };
        }
        if let Some(identity) = applied {
            self.enacted_by = Some(identity.to_owned());
            self.enacted_at = Some(Time(now));
        }
        if verified && self.verified_at.is_none() {
            self.verified_at = Some(Time(now));
        }
        self
    }

    /// The status fields of the record, unset ones left out. All of them go in every enactor
    /// write: server-side apply removes a field its manager no longer sends.
    fn fields(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a live record serializes")
    }
}

/// Writes the enactor's status fields with a compare-and-set on the endpoint version this
/// reconcile read, so concurrent enactors cannot move `liveGeneration` backwards: a replica that
/// lost the race gets a conflict, reported as `false` and counted for `writer`. A plan minted
/// without a reservation made no status write of the planner's, so this write also carries what
/// the planner's would have: `latestPlanGeneration` up to the live generation, and
/// `observedGeneration` up to the spec the newest plan was minted from (`planned_from`). Both only
/// grow, and go in every write of the enactor's: server-side apply drops a field its manager
/// stops sending.
async fn write_endpoint_status(
    context: &Context,
    endpoint: &DnsEndpoint,
    live: &LiveRecord,
    planned_from: Option<i64>,
    ready: Condition,
    writer: &str,
) -> Result<bool, Error> {
    let mut fields = live.fields();
    fields["latestPlanGeneration"] = reserved_generation(endpoint)
        .max(live.generation.unwrap_or(0))
        .into();
    if let Some(observed) = planner_observed(endpoint).max(planned_from) {
        fields["observedGeneration"] = observed.into();
    }
    match apply_endpoint_status(
        &context.client,
        endpoint,
        STATUS_MANAGER,
        fields,
        &[ready],
        endpoint.resource_version().as_deref(),
    )
    .await
    {
        Ok(()) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_conflict() => {
            context.metrics.dns.conflict(writer);
            debug!(endpoint = %key(endpoint), writer, read = ?endpoint.resource_version(), live = ?live.generation, "status write lost a compare-and-set");
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

async fn enact(endpoint: &DnsEndpoint, context: &Context) -> Result<Action, Error> {
    let plans = plans_of(&context.plans, endpoint);
    let Some(plan) = enactable_plan(endpoint, context, &plans).await? else {
        if reserved_generation(endpoint) > 0
            || planned_from(endpoint, &plans) != endpoint.metadata.generation
        {
            // A reserved plan is on its way, or the planner has not looked at this spec yet: its
            // write brings this endpoint back. Saying NoPlan meanwhile raced the planner's
            // compare-and-set (for every endpoint when thousands are new at once).
            return Ok(Action::await_change());
        }
        let (ready, changed) = endpoint_condition(
            endpoint,
            "Ready",
            false,
            "NoPlan",
            "waiting for the planner to mint a plan",
        );
        if changed {
            write_endpoint_status(
                context,
                endpoint,
                &LiveRecord::of(endpoint),
                planned_from(endpoint, &plans),
                ready,
                "no-plan",
            )
            .await?;
        }
        return Ok(Action::await_change());
    };
    if let Some(wait) = standby_wait(context, endpoint, &plans) {
        return Ok(Action::requeue(wait));
    }
    let settings = &context.settings;
    let dns = match zone_provider(
        &context.client,
        &context.zones,
        &context.zone_clients,
        endpoint,
        settings.server_timeout,
    )
    .await
    {
        Ok((_, dns)) => dns,
        Err(error @ Error::Invalid { .. }) => {
            if plan.refusal != Some(PlanPhase::Rejected) {
                mark_plan(context, &plan, PlanPhase::Rejected, &error.to_string()).await?;
            }
            return Err(error);
        }
        Err(error) => return Err(error),
    };
    let fqdn = plan.spec.fqdn.as_str();
    let generation = plan.spec.generation;

    // The protocol is the pure step function; this loop only performs its I/O.
    let owner = endpoint.uid().unwrap_or_default();
    // Hashed here rather than taken from the plan's contentHash field: the fence must say which
    // records it guards, whoever wrote that field.
    let mut pass = EnactmentPass::new(
        generation,
        &content_hash(&plan.spec.rrsets),
        &owner,
        endpoint.spec.adopt,
        settings.strategy,
    );
    let fence = pass.fence();
    let mut observation = Observation::Start;
    let pass_started = std::time::Instant::now();
    let outcome = loop {
        observation = match pass.step(observation) {
            PassStep::ReadFence => Observation::Fence(dns.read_fence(fqdn).await?),
            PassStep::Write { guard, repair } => {
                if repair {
                    warn!(
                        fqdn,
                        generation, "answer differs from the live plan; repairing"
                    );
                } else {
                    slow_enactor(settings.slow_enactor, endpoint)
                        .stall_before_write(fqdn, generation)
                        .await;
                }
                let written = dns
                    .write_plan(fqdn, &fence, &plan.spec.rrsets, guard.as_ref())
                    .await?;
                if written == WriteOutcome::FenceMismatch {
                    context.metrics.dns.stale_writes_refused.inc();
                    debug!(fqdn, generation, ?guard, "fence moved; re-reading");
                }
                Observation::Written(written)
            }
            PassStep::ReadPlan => Observation::Plan {
                current: still_in_api(context, &plan).await?,
            },
            PassStep::ReadServed => {
                let served = dns.served_records(fqdn).await?;
                Observation::Served {
                    matches_plan: served == plan.spec.rrsets,
                    empty: served.is_empty(),
                }
            }
            PassStep::Done(outcome) => break outcome,
        };
    };
    // Where a change's latency goes: before the pass (events, queue) or in it (the server).
    debug!(
        fqdn,
        generation,
        ?outcome,
        pass = ?pass_started.elapsed(),
        since_minted = ?age(&plan),
        "enactment pass"
    );
    let (applied, verified) = match outcome {
        PassOutcome::Contended => return Ok(Action::requeue(Duration::from_millis(100))),
        PassOutcome::Superseded { live } => {
            let message = format!("generation {live} is live at the server");
            mark_plan(context, &plan, PlanPhase::Superseded, &message).await?;
            // The newer plan's own event brings this endpoint back.
            return Ok(Action::await_change());
        }
        PassOutcome::Live { applied, verified } => (applied, verified),
        PassOutcome::Outdated => {
            info!(
                fqdn,
                generation,
                "another plan of this generation is live and this plan's object is gone: writing nothing"
            );
            // The successor's creation brings the endpoint back.
            return Ok(Action::await_change());
        }
        // Being deleted: the finalizer's removal is under way.
        PassOutcome::Removed => return Ok(Action::await_change()),
        PassOutcome::Conflict(Conflict::ForeignRecords) => {
            let records = show_records(&dns.served_records(fqdn).await?);
            return Err(Error::Invalid {
                reason: "Conflict",
                message: format!(
                    "{fqdn} has records Bulwark did not write ({records}); nothing was written. Set spec.adopt: true to replace them"
                ),
            });
        }
        PassOutcome::Conflict(Conflict::OwnedBy(other)) => {
            return Err(Error::Invalid {
                reason: "Conflict",
                message: format!(
                    "{fqdn} is managed by another DnsEndpoint (uid {other}); nothing was written"
                ),
            });
        }
    };

    // Ready=True speaks for the spec the planner minted from (the plan's, or a later one it found
    // needs no new plan), not for a newer spec it has not planned yet: claiming that one was
    // untrue, and the write raced the planner's reservation (a 409 and a retry for one of them)
    // on every spec change.
    let (ready, changed) = endpoint_condition_for(
        endpoint,
        planned_from(endpoint, std::slice::from_ref(&plan)),
        "Ready",
        true,
        "Live",
        format!("plan {generation} is live and verified at the authoritative server"),
    );
    let now = Timestamp::now();
    let current = LiveRecord::of(endpoint);
    let live = current.generation;
    let applied_by = applied.then_some(context.settings.identity.as_str());
    let record = current
        .clone()
        .after_pass(generation, applied_by, verified, now);
    // The first pass to see this generation's answer: it times the enactment.
    let first_verification =
        verified && (live != Some(generation) || current.verified_at.is_none());
    // While a newer plan is minted, only a live record moving forward is worth a write: the
    // condition is written again once that plan is live. Never move the status backwards: a
    // newer generation recorded by another replica stands.
    let generations: Vec<u64> = plans.iter().map(|p| p.spec.generation).collect();
    let newest = newest_minted(reserved_generation(endpoint), live, &generations);
    let status_wanted = live.is_none_or(|live| live <= generation)
        && (record != current || (changed && newest <= generation));
    if !applied {
        let applier_writes = live < Some(generation) || first_verification;
        let leading = context.leadership.borrow().token().is_some();
        if (applier_writes || (status_wanted && !leading))
            && let Some(wait) = hold(&context.held, name_ref(endpoint), generation)
        {
            mark_verified(context, endpoint);
            return Ok(Action::requeue(wait));
        }
    }
    release(&context.held, &name_ref(endpoint));

    if applied {
        announce_live(context, endpoint, &plan).await;
    }
    // The server's live generation is at most this one or the reserved one, unless another
    // enactor put a newer unreserved plan live since: then cleanup waits for the next pass.
    collect(
        context,
        &dns,
        &plans,
        fqdn,
        &owner,
        reserved_generation(endpoint).max(generation),
    )
    .await?;
    if !verified {
        // The answer changed again right after the repair: look again shortly.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let writer = if applied { "live" } else { "live-readback" };
    if status_wanted
        && !write_endpoint_status(
            context,
            endpoint,
            &record,
            planned_from(endpoint, &plans),
            ready,
            writer,
        )
        .await?
    {
        // Lost to a newer version: the other replica's live generation or the planner's
        // reservation wakes this endpoint at once; a write it is not woken by (the planner's
        // conditions alone) is looked at again after STATUS_CONFLICT_RETRY. Retrying sooner
        // regardless turned a burst into conflict storms (7.6 409s per plan).
        return Ok(Action::requeue(STATUS_CONFLICT_RETRY));
    }
    if first_verification && let Some(minted) = &plan.spec.minted_at {
        let latency = now.duration_since(minted.0).as_secs_f64().max(0.0);
        context.metrics.dns.enactment_latency.observe(latency);
    }
    mark_verified(context, endpoint);
    // Checked again by the resync sweep.
    Ok(Action::await_change())
}

/// Whether the API server still holds this very plan object (same UID), read from it rather than
/// from the cache, which is what is behind when another plan of the generation is live.
async fn still_in_api(context: &Context, plan: &CachedPlan) -> Result<bool, Error> {
    let plans: Api<DnsPlan> = Api::namespaced(context.client.clone(), &plan.namespace);
    let found = plans.get_metadata_opt(&plan.name).await?;
    Ok(found.is_some_and(|found| found.metadata.uid.as_deref() == Some(plan.uid.as_str())))
}

fn mark_verified(context: &Context, endpoint: &DnsEndpoint) {
    context
        .verified
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(uid_key(endpoint));
}

/// How long an enactor that found a plan already live at the server (it read it back, another
/// enactor or its own earlier pass applied it) leaves that plan's and its endpoint's status to
/// the enactor that applied it. Writing them at once raced that enactor's writes from a cache a
/// busy API server's watch had not brought up to date, and lost the compare-and-set: 1.2 409s
/// per plan in a burst of 1,000, with watch events seconds behind. What is still missing after
/// this (the applier crashed between its DNS and API writes) is written then.
const READBACK_GRACE: Duration = Duration::from_secs(10);

/// Status writes this replica's enactor holds back (see [`READBACK_GRACE`]): per endpoint, the
/// generation read back and since when.
type Held = Arc<Mutex<HashMap<ObjectRef<DnsEndpoint>, (u64, std::time::Instant)>>>;

/// How much longer to hold back the status writes for `generation` of the endpoint; `None` once
/// the grace is over, when they are written.
fn hold(held: &Held, endpoint: ObjectRef<DnsEndpoint>, generation: u64) -> Option<Duration> {
    let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
    let now = std::time::Instant::now();
    let (_, since) = held
        .entry(endpoint.clone())
        .and_modify(|entry| {
            if entry.0 != generation {
                *entry = (generation, now);
            }
        })
        .or_insert((generation, now));
    let wait = READBACK_GRACE
        .checked_sub(since.elapsed())
        .filter(|wait| !wait.is_zero());
    if wait.is_none() {
        held.remove(&endpoint);
    }
    wait
}

fn release(held: &Held, endpoint: &ObjectRef<DnsEndpoint>) {
    held.lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(endpoint);
}

/// An endpoint's live generation moving forward: the progress of whichever enactor wrote it.
fn went_live(cached: &DnsEndpoint, new: &DnsEndpoint) -> bool {
    live_generation(new) > live_generation(cached)
}

/// Keeps `progress` at when another replica's enactor last put a plan live.
async fn track_others_progress(
    mut endpoints_gone_live: UnboundedReceiver<Arc<DnsEndpoint>>,
    identity: String,
    progress: OthersProgress,
) {
    while let Some(endpoint) = endpoints_gone_live.next().await {
        let enacted_by = endpoint
            .status
            .as_ref()
            .and_then(|s| s.enacted_by.as_deref());
        if enacted_by.is_some_and(|by| by != identity) {
            *progress.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
        }
    }
}

/// How long this replica's enactor leaves new plans to the leader's (see [`STANDBY_GRACE`]).
/// The grace runs from the oldest plan still pending above the live one: under changes faster
/// than the grace, waiting on the newest plan would leave a stalled leader alone for good. It
/// also runs from the last plan another replica put live (up to [`STANDBY_PATIENCE`]): a leader
/// working through a backlog older than the grace is busy, not stalled, and a standby enacting
/// the same plans beside it doubled the writes and made most of its status writes conflicts
/// (2.4 409s per plan in a burst of 1,000 at 10,000 endpoints).
fn standby_wait(
    context: &Context,
    endpoint: &DnsEndpoint,
    plans: &[Arc<CachedPlan>],
) -> Option<Duration> {
    if context.leadership.borrow().token().is_some() {
        return None;
    }
    let live = live_generation(endpoint);
    let oldest_pending = plans
        .iter()
        .find(|p| Some(p.spec.generation) > live && p.refusal.is_none())?;
    let pending_for = age(oldest_pending)?;
    let plan_wait = STANDBY_GRACE.checked_sub(pending_for);
    let busy_wait = context
        .others_progress
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .and_then(|at| STANDBY_GRACE.checked_sub(at.elapsed()))
        .filter(|_| pending_for < STANDBY_PATIENCE);
    plan_wait.max(busy_wait).filter(|wait| !wait.is_zero())
}

/// Records why the plan is refused, and tells it in an Event.
async fn mark_plan(
    context: &Context,
    plan: &CachedPlan,
    phase: PlanPhase,
    message: &str,
) -> Result<(), Error> {
    patch_plan_status(
        context,
        plan,
        serde_json::json!({ "phase": phase, "message": message }),
    )
    .await?;
    if phase == PlanPhase::Superseded {
        context.metrics.dns.plans_superseded.inc();
    }
    let type_ = if phase == PlanPhase::Rejected {
        EventType::Warning
    } else {
        EventType::Normal
    };
    publish_regarding(
        &context.recorder,
        plan.regarding(),
        type_,
        &format!("{phase:?}"),
        message.to_owned(),
    )
    .await;
    Ok(())
}

/// One Event per change, on the endpoint where `kubectl describe` shows it.
async fn announce_live(context: &Context, endpoint: &DnsEndpoint, plan: &CachedPlan) {
    let generation = plan.spec.generation;
    info!(endpoint = %key(endpoint), generation, "plan live");
    let note = format!(
        "plan {generation} live: {} (applied by {})",
        show_records(&plan.spec.rrsets),
        context.settings.identity
    );
    publish(
        &context.recorder,
        endpoint,
        EventType::Normal,
        "PlanLive",
        note,
    )
    .await;
}

/// Deletes plans below the retention window. The live generation is read from the server's fence
/// now, never remembered, and each delete carries the plan's UID as a precondition.
async fn collect(
    context: &Context,
    dns: &Rfc2136,
    plans: &[Arc<CachedPlan>],
    fqdn: &str,
    owner: &str,
    live_at_most: u64,
) -> Result<(), Error> {
    let settings = &context.settings;
    let generations: Vec<u64> = plans.iter().map(|p| p.spec.generation).collect();
    if settings.strategy == Strategy::Fenced
        && !cleanup_may_delete(&generations, live_at_most, settings.retention)
    {
        return Ok(());
    }
    // Only this endpoint's own live fence says which of its plans are old.
    let live = dns
        .read_fence(fqdn)
        .await?
        .filter(|f| f.owned_by(owner) && !f.removed)
        .map(|f| f.generation);
    let cleanup = decide_cleanup(settings.strategy, &generations, live, settings.retention);
    for plan in plans {
        let generation = plan.spec.generation;
        if cleanup.delete_records_of.contains(&generation) {
            dns.delete_records(fqdn, &plan.spec.rrsets).await?;
        }
        if !cleanup.delete_plans.contains(&generation) {
            continue;
        }
        let api: Api<DnsPlan> = Api::namespaced(context.client.clone(), &plan.namespace);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(plan.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&plan.name, &params).await {
            Ok(_) => context.metrics.dns.plans_collected.inc(),
            // Another enactor collected it first.
            Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn patch_plan_status(
    context: &Context,
    plan: &CachedPlan,
    status: serde_json::Value,
) -> Result<(), Error> {
    let api: Api<DnsPlan> = Api::namespaced(context.client.clone(), &plan.namespace);
    match api
        .patch_status(
            &plan.name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Collected meanwhile: nothing left to mark.
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(generation: i64, status: serde_json::Value) -> DnsEndpoint {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "bulwark.dev/v1alpha1",
            "kind": "DnsEndpoint",
            "metadata": {"name": "api", "namespace": "ns", "generation": generation},
            "spec": {"zoneRef": "example", "fqdn": "api.example.com", "targets": []},
            "status": status,
        }))
        .expect("a valid DnsEndpoint")
    }

    #[test]
    fn enactors_wake_for_what_enactment_reads_not_for_conditions() {
        let ready = |status: &str| {
            serde_json::json!([{"type": "Ready", "status": status, "reason": "Live",
                "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}])
        };
        let base = serde_json::json!({"observedGeneration": 1, "latestPlanGeneration": 1,
            "liveGeneration": 1, "conditions": ready("True")});
        let before = endpoint(1, base.clone());
        let changed = |field: &str, value: serde_json::Value| {
            let mut status = base.clone();
            status[field] = value;
            enactment_inputs_differ(&before, &endpoint(1, status))
        };
        assert!(!changed("conditions", ready("False")), "a condition alone");
        assert!(changed("latestPlanGeneration", 2.into()), "a reservation");
        assert!(
            changed("liveGeneration", 2.into()),
            "another replica's enactment"
        );
        assert!(
            changed("observedGeneration", 2.into()),
            "the planner looked at a new spec"
        );
        assert!(
            enactment_inputs_differ(&before, &endpoint(2, base.clone())),
            "a spec change"
        );
    }

    #[test]
    fn the_live_record_starts_anew_with_each_generation_and_keeps_its_first_verification() {
        let at = |second: i64| Timestamp::from_second(1_800_000_000 + second).unwrap();
        let first = LiveRecord::default().after_pass(3, Some("replica-0"), false, at(0));
        assert_eq!(first.generation, Some(3));
        assert_eq!(first.enacted_by.as_deref(), Some("replica-0"));
        assert!(first.verified_at.is_none(), "not seen answering yet");

        let verified = first.clone().after_pass(3, None, true, at(1));
        assert_eq!(verified.enacted_by.as_deref(), Some("replica-0"));
        assert_eq!(verified.verified_at, Some(Time(at(1))));
        let again = verified.clone().after_pass(3, None, true, at(9));
        assert_eq!(
            again, verified,
            "a resync changes nothing, so writes nothing"
        );

        let next = verified.after_pass(4, None, true, at(20));
        assert_eq!(next.generation, Some(4));
        assert!(
            next.enacted_by.is_none(),
            "read back, not applied: who applied generation 4 is not known"
        );
        assert_eq!(next.verified_at, Some(Time(at(20))));
    }

    #[test]
    fn every_enactor_write_carries_the_whole_live_record() {
        let record = LiveRecord::default().after_pass(
            2,
            Some("replica-1"),
            true,
            Timestamp::from_second(1_800_000_000).unwrap(),
        );
        assert_eq!(
            record.fields(),
            serde_json::json!({"liveGeneration": 2, "enactedBy": "replica-1",
                "enactedAt": "2027-01-15T08:00:00Z", "verifiedAt": "2027-01-15T08:00:00Z"})
        );
        assert_eq!(
            LiveRecord::default().fields(),
            serde_json::json!({}),
            "no nulls: an unset field is left out"
        );
        let status = serde_json::json!({"liveGeneration": 2, "enactedBy": "replica-1",
            "enactedAt": "2027-01-15T08:00:00Z", "verifiedAt": "2027-01-15T08:00:00Z",
            "latestPlanGeneration": 2});
        assert_eq!(LiveRecord::of(&endpoint(1, status)), record);
    }
}
