//! The planner (leader only): turns each DnsEndpoint and the readiness of its targets into
//! immutable, generation-numbered DnsPlans.
//!
//! A change to a settled endpoint mints the generation after the live one by creating the plan
//! under its deterministic name `<endpoint>-<generation>`: that create is the compare-and-set
//! between two planners (a deposed leader that has not noticed yet, and the new one). A plan
//! minted while another is still pending is reserved first in the endpoint's status, by a
//! compare-and-set on its resourceVersion, since enactors accept nothing above the reservation
//! but the generation after the live one ([`trusted_bound`](super::fencing::trusted_bound)).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use bulwark_crds::dns::{DnsEndpoint, DnsEndpointSpec, DnsPlan, DnsPlanSpec, DnsZone};
use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::desired::{
    Candidate, PlanDecision, PlanInput, ServerView, decide_plan, desired_rrsets, needs_reservation,
    newest_minted,
};
use super::provider::DnsProvider;
use super::runtime::{
    Backoff, CachedPlan, DnsSettings, ENDPOINT_LABEL, EndpointsAndPlans, Error,
    LEADER_TOKEN_ANNOTATION, RESERVATION_LAG, another_plan, apply_endpoint_status, drain,
    endpoint_and_plan_triggers, endpoint_condition_for, in_namespace, key, namespaced_key,
    plans_of, provider_for, publish, zone_not_found,
};
use crate::backlog::{self, QueueBound};
use crate::events::Recorder;
use crate::index::{Changes, Indexed, SharedWatch, name_ref, projection_lookup};
use crate::leadership::{Leadership, became_leader, still_leading};
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::scope::Scope;

const CONTROLLER: &str = "dns-planner";
const FIELD_MANAGER: &str = "bulwark-dns-planner";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

struct Context {
    client: kube::Client,
    metrics: Metrics,
    recorder: Recorder,
    leadership: watch::Receiver<Leadership>,
    plans: Indexed<CachedPlan>,
    slices: Indexed<ServiceAddresses>,
    readiness: Readiness,
    backoff: Backoff,
    server_timeout: Duration,
    scope: Scope,
    /// Plans this planner created in the last [`RESERVATION_LAG`], by endpoint: a reservation
    /// whose plan is not cached yet is known to be this planner's own without asking the API
    /// server (a GET for most plans in a burst, the reservation's watch event being first).
    minted: Mutex<HashMap<ObjectRef<DnsEndpoint>, Minted>>,
    /// The endpoints queued in kube-runtime's scheduler (see `backlog`).
    backlog: Arc<QueueBound<DnsEndpoint>>,
}

/// A plan this planner created, and whether its status write reserved the generation.
#[derive(Clone, Copy)]
struct Minted {
    generation: u64,
    reserved: bool,
    at: Instant,
}

/// The planner's task; subscribes to the shared caches at once, so call it before running them.
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
    // A deleted plan concerns its endpoint too (the planner mints another if it was reserved);
    // the enactors' status writes on plans do not: each woke the planner with an endpoint its
    // cache may not have caught up with, and minting from it lost the compare-and-set.
    let caches = caches.subscribe(
        &readiness,
        CONTROLLER,
        Changes::Applied,
        Changes::TouchedIf(another_plan),
    );
    async move {
        let scope = settings.scope;
        let namespace = scope.namespace();
        let mut slice_watch = SharedWatch::new::<EndpointSlice>(
            &client,
            namespace,
            watcher::Config::default().labels(SERVICE_NAME_LABEL),
            ServiceAddresses::keys,
            ServiceAddresses::of,
        );
        let slices = slice_watch.indexed();
        let slice_changes = slice_watch.subscribe(
            Changes::Touched,
            readiness.gate(format!("{CONTROLLER}/EndpointSlice")),
        );
        let endpoints = caches.endpoints;
        let backlog = QueueBound::new();
        let context = Arc::new(Context {
            client,
            metrics,
            recorder,
            leadership: leadership.clone(),
            plans: caches.plans,
            slices,
            readiness,
            backoff: Backoff::default(),
            server_timeout: settings.server_timeout,
            scope: scope.clone(),
            minted: Mutex::default(),
            backlog: backlog.clone(),
        });
        let slice_triggers = slice_changes.flat_map({
            let endpoints = endpoints.clone();
            move |slice| {
                let followers = slice
                    .service
                    .as_deref()
                    .map(|service| endpoints.refs(service));
                futures::stream::iter(followers.unwrap_or_default())
            }
        });
        // A new leader plans every endpoint.
        let all_on_leading = became_leader(leadership).flat_map({
            let store = endpoints.store().clone();
            move |()| {
                let all: Vec<_> = store.state().iter().map(|e| name_ref(&**e)).collect();
                futures::stream::iter(all)
            }
        });
        let sources = [
            endpoint_and_plan_triggers(caches.endpoint_changes, caches.plan_changes),
            slice_triggers.boxed(),
            all_on_leading.boxed(),
        ];
        let results = backlog::controller(endpoints.store().clone(), sources, backlog)
            .graceful_shutdown_on(shutdown.clone().cancelled_owned())
            .run(reconcile, error_policy, context);
        let slice_watch = shutdown.run_until_cancelled_owned(slice_watch.run());
        futures::future::join(drain(CONTROLLER, results), slice_watch).await;
    }
}

/// The index key of the Service an EndpointSlice belongs to.
fn service_of(slice: &EndpointSlice) -> Option<String> {
    let service = slice.labels().get(SERVICE_NAME_LABEL)?;
    Some(in_namespace(slice, service))
}

/// What planning reads of an EndpointSlice, and all a replica keeps of one: its Service and its
/// addresses with their readiness. Cached as the API object, even with all else dropped, a slice
/// of two addresses took about 2 KB (its label map alone a 550-byte B-tree node): 10 MB of a
/// replica's memory for 5,000 Services.
#[derive(Clone, Debug)]
pub struct ServiceAddresses {
    name: String,
    namespace: String,
    /// The Service's index key.
    service: Option<String>,
    /// Each address and whether it is ready; an address that does not parse is left out.
    addresses: Box<[(IpAddr, bool)]>,
}

impl ServiceAddresses {
    fn of(slice: EndpointSlice) -> Self {
        let addresses = slice
            .endpoints
            .iter()
            .flatten()
            .flat_map(|endpoint| {
                // An unset `ready` means ready (EndpointSlice API contract).
                let ready = endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true);
                endpoint
                    .addresses
                    .iter()
                    .filter_map(move |address| Some((address.parse().ok()?, ready)))
            })
            .collect();
        ServiceAddresses {
            service: service_of(&slice),
            name: slice.metadata.name.unwrap_or_default(),
            namespace: slice.metadata.namespace.unwrap_or_default(),
            addresses,
        }
    }

    /// Its index key: the Service it belongs to.
    fn keys(&self) -> Vec<String> {
        self.service.iter().cloned().collect()
    }
}

projection_lookup!(ServiceAddresses, EndpointSlice);

/// Every address the endpoint's targets stand for, with readiness from EndpointSlices.
/// Returns the candidates and, for the Degraded message, the Services with no ready address.
fn candidates(
    spec: &DnsEndpointSpec,
    namespace: &str,
    slices: &Indexed<ServiceAddresses>,
) -> (Vec<Candidate>, Vec<String>) {
    let mut found = Vec::new();
    let mut services_without_ready = Vec::new();
    for target in &spec.targets {
        if let Some(address) = &target.address {
            // CEL validation guarantees an IP; an unparsable one is skipped, not fatal.
            if let Ok(address) = address.parse() {
                found.push(Candidate {
                    address,
                    weight: target.weight,
                    group: target.group,
                    healthy: true,
                });
            }
            continue;
        }
        let Some(service) = &target.service_ref else {
            continue;
        };
        let before = found.len();
        for slice in slices.get(&namespaced_key(namespace, &service.name)) {
            found.extend(slice.addresses.iter().map(|&(address, ready)| Candidate {
                address,
                weight: target.weight,
                group: target.group,
                healthy: ready,
            }));
        }
        if !found[before..].iter().any(|c| c.healthy) {
            services_without_ready.push(service.name.clone());
        }
    }
    (found, services_without_ready)
}

async fn reconcile(endpoint: Arc<DnsEndpoint>, context: Arc<Context>) -> Result<Action, Error> {
    if let Some(action) = context.readiness.until_synced(CONTROLLER) {
        return Ok(action);
    }
    context.backlog.reconciling(&endpoint);
    let Some(token) = context.leadership.borrow().token() else {
        return Ok(Action::await_change());
    };
    if endpoint.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if let Some(action) = context.scope.not_managed(endpoint.namespace().as_deref()) {
        return Ok(action);
    }
    let timer = context.metrics.reconcile(CONTROLLER);
    let result = match plan(&endpoint, &context, token).await {
        // Lost a compare-and-set to a newer version of the endpoint (an enactor wrote its status):
        // that version's watch event brings the endpoint back, so this is not a failure.
        Err(Error::Kube(kube::Error::Api(status))) if status.is_conflict() => {
            context.metrics.dns.conflict("planner");
            debug!(endpoint = %key(&endpoint), read = ?endpoint.resource_version(), reserved = endpoint.status.as_ref().map(|s| s.latest_plan_generation), "reservation lost a compare-and-set");
            Ok(Action::await_change())
        }
        other => other,
    };
    timer.done(result.as_ref().err().map(Error::kind));
    if result.is_ok() {
        context.backoff.succeeded(&key(&endpoint));
    }
    result
}

impl Context {
    /// What this planner minted for the endpoint in the last [`RESERVATION_LAG`].
    fn minted_recently(&self, endpoint: &DnsEndpoint) -> Option<Minted> {
        let minted = self.minted.lock().unwrap_or_else(|e| e.into_inner());
        minted
            .get(&name_ref(endpoint))
            .filter(|minted| minted.at.elapsed() < RESERVATION_LAG)
            .copied()
    }

    fn forget_minted(&self, endpoint: &DnsEndpoint) {
        let mut minted = self.minted.lock().unwrap_or_else(|e| e.into_inner());
        minted.remove(&name_ref(endpoint));
    }

    fn minted_now(&self, endpoint: &DnsEndpoint, generation: u64, reserved: bool) {
        let mut minted = self.minted.lock().unwrap_or_else(|e| e.into_inner());
        minted.retain(|_, minted| minted.at.elapsed() < RESERVATION_LAG);
        let at = Instant::now();
        minted.insert(
            name_ref(endpoint),
            Minted {
                generation,
                reserved,
                at,
            },
        );
    }
}

fn error_policy(endpoint: Arc<DnsEndpoint>, error: &Error, context: Arc<Context>) -> Action {
    warn!(endpoint = %key(&endpoint), %error, "planning failed");
    context.backoff.failed(&key(&endpoint))
}

async fn plan(endpoint: &DnsEndpoint, context: &Context, token: u64) -> Result<Action, Error> {
    let namespace = endpoint.namespace().unwrap_or_default();
    let spec = &endpoint.spec;
    let (found, services_without_ready) = candidates(spec, &namespace, &context.slices);
    let status = endpoint.status.as_ref();
    let reserved = status.map_or(0, |s| s.latest_plan_generation);
    let live = status.and_then(|s| s.live_generation);
    let plans = plans_of(&context.plans, endpoint);
    let existing: Vec<u64> = plans.iter().map(|p| p.spec.generation).collect();
    let newest = newest_minted(reserved, live, &existing);
    // By its deterministic name: a same-generation object someone else created is not it.
    let newest_name = plan_name(endpoint, newest);
    let newest_plan = plans
        .iter()
        .find(|p| p.spec.generation == newest && p.name == newest_name);
    // This planner's own writes that its caches have not caught up with: planning from them
    // lost the reservation's compare-and-set (a 409 for nearly every plan in a burst), and
    // asking the API server cost a GET for most plans.
    let minted = context.minted_recently(endpoint);
    if minted.is_some_and(|m| m.generation > newest || (m.reserved && m.generation > reserved)) {
        // The plan or its reservation is not cached yet (the plan's event may come first: a
        // condition written from the endpoint without its reservation lost the compare-and-set,
        // for most new endpoints): its watch event brings the endpoint back.
        return Ok(Action::await_change());
    }
    if newest_plan.is_some() {
        context.forget_minted(endpoint);
    } else if newest > 0 {
        // The plan is not cached yet: its watch event brings the endpoint back (and, for one this
        // planner remembers minting, this requeue if it was deleted before it was cached).
        if minted.is_some_and(|m| m.generation == newest) {
            return Ok(Action::requeue(RESERVATION_LAG));
        }
        if plan_exists(context, endpoint, newest).await? {
            return Ok(Action::await_change());
        }
    }
    let server: ServerView;
    let mut input = PlanInput {
        newest,
        newest_plan_hash: newest_plan.map(|p| p.spec.content_hash.as_str()),
        existing_plans: &existing,
        desired: desired_rrsets(spec.routing, spec.ttl, &found),
        allow_empty: spec.allow_empty,
        server: None,
    };
    let mut decision = decide_plan(input.clone());
    if decision == PlanDecision::ReadServer {
        server = read_server(endpoint, context).await?;
        input.server = Some(&server);
        decision = decide_plan(input);
    }
    // Degraded carries no observedGeneration: it is the planner's view as of the endpoint's
    // observedGeneration. One of its own changed with every spec change, and so cost a status
    // write per change that a plan minted without a reservation does not otherwise need.
    let (degraded, degraded_changed) = match &decision {
        PlanDecision::WithheldEmpty
        | PlanDecision::Mint {
            recovered: true, ..
        } => endpoint_condition_for(
            endpoint,
            None,
            "Degraded",
            true,
            "NoHealthyTarget",
            no_healthy_message(&services_without_ready, &decision, newest),
        ),
        _ => endpoint_condition_for(
            endpoint,
            None,
            "Degraded",
            false,
            "TargetsHealthy",
            "at least one target is healthy",
        ),
    };
    if degraded_changed && degraded.status == "True" {
        publish(
            &context.recorder,
            endpoint,
            EventType::Warning,
            "NoHealthyTarget",
            degraded.message.clone(),
        )
        .await;
    }
    match decision {
        PlanDecision::Mint {
            generation,
            rrsets,
            content_hash,
            recovered,
        } => {
            if !still_leading(&context.leadership, token) {
                return Ok(Action::await_change());
            }
            // A status write made anyway (a new endpoint's first Degraded condition) reserves
            // the generation too: enactors then know a plan is on its way.
            let reserve = needs_reservation(generation, reserved, live) || degraded_changed;
            if reserve {
                write_status(context, endpoint, generation, degraded).await?;
                if !still_leading(&context.leadership, token) {
                    // A newer leader sees the reservation without a plan and mints the next one.
                    return Ok(Action::await_change());
                }
            }
            create_plan(endpoint, context, generation, rrsets, content_hash, token).await?;
            context.minted_now(endpoint, generation, reserve);
            if recovered {
                publish(
                    &context.recorder,
                    endpoint,
                    EventType::Warning,
                    "LivePlanRecovered",
                    format!(
                        "the object of plan {newest} is gone and no target is healthy; plan {generation} carries the records the server serves"
                    ),
                )
                .await;
            }
        }
        PlanDecision::Unchanged | PlanDecision::WithheldEmpty | PlanDecision::ReadServer => {
            // A plan minted from this spec carries its generation, which the enactor records
            // as observedGeneration when it goes live: writing it here too raced that write.
            let minted_from = newest_plan.and_then(|p| p.spec.endpoint_generation);
            let observed_changed = status.and_then(|s| s.observed_generation).max(minted_from)
                != endpoint.metadata.generation;
            if (degraded_changed || observed_changed) && still_leading(&context.leadership, token) {
                write_status(context, endpoint, reserved, degraded).await?;
            }
        }
    }
    Ok(Action::await_change())
}

/// The planner's status fields: the reserved generation, the spec planned from, and Degraded. A
/// compare-and-set on the resourceVersion planned from.
async fn write_status(
    context: &Context,
    endpoint: &DnsEndpoint,
    reserved: u64,
    degraded: Condition,
) -> Result<(), Error> {
    apply_endpoint_status(
        &context.client,
        endpoint,
        FIELD_MANAGER,
        serde_json::json!({
            "latestPlanGeneration": reserved,
            "observedGeneration": endpoint.metadata.generation,
        }),
        &[degraded],
        endpoint.resource_version().as_deref(),
    )
    .await?;
    Ok(())
}

/// A plan's deterministic name: under it, the create is the compare-and-set between planners.
fn plan_name(endpoint: &DnsEndpoint, generation: u64) -> String {
    format!("{}-{generation}", endpoint.name_any())
}

/// Whether plan `generation` of the endpoint exists at the API server (the cache may lag behind
/// this planner's own create).
async fn plan_exists(
    context: &Context,
    endpoint: &DnsEndpoint,
    generation: u64,
) -> Result<bool, Error> {
    let api: Api<DnsPlan> = Api::namespaced(
        context.client.clone(),
        &endpoint.namespace().unwrap_or_default(),
    );
    Ok(api
        .get_opt(&plan_name(endpoint, generation))
        .await?
        .is_some())
}

/// What the DNS server serves for the endpoint's name: read only on the rare path where the
/// reserved plan's object is gone and no healthy target can replace it.
async fn read_server(endpoint: &DnsEndpoint, context: &Context) -> Result<ServerView, Error> {
    let zones: Api<DnsZone> = Api::namespaced(
        context.client.clone(),
        &endpoint.namespace().unwrap_or_default(),
    );
    let zone = zones
        .get_opt(&endpoint.spec.zone_ref)
        .await?
        .ok_or_else(|| zone_not_found(endpoint))?;
    let dns = provider_for(&context.client, &zone, endpoint, context.server_timeout).await?;
    let fqdn = endpoint.spec.fqdn.as_str();
    let owner = endpoint.uid().unwrap_or_default();
    // Records under anyone else's fence (or none) are not this endpoint's to preserve.
    let Some(fence) = dns
        .read_fence(fqdn)
        .await?
        .filter(|f| f.owned_by(&owner) && !f.removed)
    else {
        return Ok(ServerView {
            fence: None,
            records: Vec::new(),
        });
    };
    Ok(ServerView {
        fence: Some(fence.generation),
        records: dns.served_records(fqdn).await?,
    })
}

fn no_healthy_message(
    services_without_ready: &[String],
    decision: &PlanDecision,
    newest: u64,
) -> String {
    let keeping = match decision {
        PlanDecision::Mint { generation, .. } => {
            format!("plan {generation} keeps the records the server serves")
        }
        _ if newest > 0 => "the live plan stays live".into(),
        _ => "no plan is minted".into(),
    };
    if services_without_ready.is_empty() {
        format!("no target is healthy and allowEmpty is false; {keeping}")
    } else {
        format!(
            "no target is healthy (no ready endpoints in Service {}) and allowEmpty is false; {keeping}",
            services_without_ready.join(", ")
        )
    }
}

async fn create_plan(
    endpoint: &DnsEndpoint,
    context: &Context,
    generation: u64,
    rrsets: Vec<bulwark_crds::dns::RRSet>,
    content_hash: String,
    token: u64,
) -> Result<(), Error> {
    let namespace = endpoint.namespace().unwrap_or_default();
    let name = endpoint.name_any();
    let summary = rrsets
        .iter()
        .map(|r| format!("{:?} {}", r.record_type, r.values.join(",")))
        .collect::<Vec<_>>()
        .join("; ");
    let plan = DnsPlan {
        metadata: ObjectMeta {
            name: Some(plan_name(endpoint, generation)),
            namespace: Some(namespace.clone()),
            labels: Some(BTreeMap::from([(ENDPOINT_LABEL.into(), name.clone())])),
            annotations: Some(BTreeMap::from([(
                LEADER_TOKEN_ANNOTATION.into(),
                token.to_string(),
            )])),
            owner_references: endpoint.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: DnsPlanSpec {
            endpoint_ref: name.clone(),
            fqdn: endpoint.spec.fqdn.clone(),
            generation,
            rrsets,
            content_hash,
            minted_at: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            endpoint_generation: endpoint.metadata.generation,
        },
        status: None,
    };
    let api: Api<DnsPlan> = Api::namespaced(context.client.clone(), &namespace);
    match api.create(&PostParams::default(), &plan).await {
        Ok(_) => {
            context.metrics.dns.plans_minted.inc();
            // No Event per plan: the enactor's PlanLive Event on the endpoint tells each change.
            info!(endpoint = %key(endpoint), generation, records = %summary, "plan minted");
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slice as the EndpointSlice controller writes it: ports, topology, target references.
    fn slice(name: &str, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "namespace": "shop",
                "uid": "3b1c8e0e-0c0a-4d55-9a52-6a3c1bde1f10",
                "labels": {SERVICE_NAME_LABEL: "web", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-12-02T10:00:00Z"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "1b5f", "controller": true}]
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    #[test]
    fn a_cached_slice_keeps_each_address_with_its_readiness() {
        let endpoint = |address: &str, ready: Option<bool>| {
            serde_json::json!({
                "addresses": [address],
                "conditions": {"ready": ready, "serving": true, "terminating": false},
                "nodeName": "kwok-node-3",
                "zone": "zone-a",
                "targetRef": {"kind": "Pod", "name": format!("web-{address}"), "namespace": "shop", "uid": "9d1e"}
            })
        };
        let slices = [
            slice(
                "web-1",
                serde_json::json!([
                    endpoint("10.0.0.1", Some(true)),
                    endpoint("10.0.0.2", Some(false)),
                    endpoint("not-an-address", Some(true))
                ]),
            ),
            slice("web-2", serde_json::json!([endpoint("10.0.0.3", None)])),
        ];
        let spec: DnsEndpointSpec = serde_json::from_value(serde_json::json!({
            "zoneRef": "shop", "fqdn": "web.shop.test",
            "targets": [{"serviceRef": {"name": "web"}, "weight": 3, "group": 1}, {"address": "192.0.2.9"}]
        }))
        .unwrap();
        let cached = Indexed::listed(
            slices.into_iter().map(ServiceAddresses::of),
            ServiceAddresses::keys,
        );
        let (mut found, without_ready) = candidates(&spec, "shop", &cached);
        found.sort_by_key(|c| (c.address, c.healthy));
        let candidate = |address: &str, weight, group, healthy| Candidate {
            address: address.parse().unwrap(),
            weight,
            group,
            healthy,
        };
        assert_eq!(
            found,
            [
                candidate("10.0.0.1", 3, 1, true),
                candidate("10.0.0.2", 3, 1, false),
                // An unset `ready` means ready.
                candidate("10.0.0.3", 3, 1, true),
                candidate("192.0.2.9", 1, 0, true),
            ]
        );
        assert!(without_ready.is_empty());
        let only_unready = [slice(
            "web-1",
            serde_json::json!([endpoint("10.0.0.2", Some(false))]),
        )];
        let cached = Indexed::listed(
            only_unready.into_iter().map(ServiceAddresses::of),
            ServiceAddresses::keys,
        );
        assert_eq!(candidates(&spec, "shop", &cached).1, ["web"]);
    }
}
