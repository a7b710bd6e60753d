//! What the planner and enactor controllers share: settings, errors, backoff, plan lookup,
//! endpoint status writes and Events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulwark_chaos::slow_enactor::SlowEnactor;
use bulwark_crds::dns::{
    DnsEndpoint, DnsPlan, DnsPlanSpec, DnsZone, PlanPhase, RRSet, TsigAlgorithm,
};
use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

pub use crate::runtime::{
    Backoff, apply_status, cached, drain, publish, publish_regarding, scoped_api,
};

use super::fencing::Strategy;
use super::provider::ProviderError;
use super::rfc2136::Rfc2136;
use crate::conditions;
use crate::index::{Changes, Indexed, SharedWatch, name_ref, projection_lookup};
use crate::readiness::{Gate, Readiness};
use crate::scope::Scope;

/// The endpoint and plan caches of a replica, one watch each, which the planner and the enactor
/// share: a watch per controller held every endpoint and plan twice and had the API server send
/// every write twice.
pub struct EndpointsAndPlans {
    endpoints: SharedWatch<DnsEndpoint>,
    plans: SharedWatch<CachedPlan>,
}

/// One controller's view of [`EndpointsAndPlans`]: the caches (endpoints indexed by the Services
/// they follow, plans by endpoint) and its own streams of changes. Its gates
/// `<controller>/DnsEndpoint` and `<controller>/DnsPlan` open once both are listed.
pub struct Subscription {
    pub endpoints: Indexed<DnsEndpoint>,
    pub endpoint_changes: UnboundedReceiver<Arc<DnsEndpoint>>,
    pub plans: Indexed<CachedPlan>,
    pub plan_changes: UnboundedReceiver<Arc<CachedPlan>>,
}

impl EndpointsAndPlans {
    pub fn new(client: &kube::Client, namespace: Option<&str>) -> Self {
        EndpointsAndPlans {
            endpoints: SharedWatch::new::<DnsEndpoint>(
                client,
                namespace,
                watcher::Config::default(),
                followed_services,
                compact_endpoint,
            ),
            plans: SharedWatch::new::<DnsPlan>(
                client,
                namespace,
                watcher::Config::default(),
                CachedPlan::keys,
                CachedPlan::of,
            ),
        }
    }

    /// The endpoint and plan changes `endpoint_changes` and `plan_changes` select.
    pub fn subscribe(
        &mut self,
        readiness: &Readiness,
        controller: &str,
        endpoint_changes: Changes<DnsEndpoint>,
        plan_changes: Changes<CachedPlan>,
    ) -> Subscription {
        let gate = |kind: &str| readiness.gate(format!("{controller}/{kind}"));
        Subscription {
            endpoints: self.endpoints.indexed(),
            endpoint_changes: self
                .endpoints
                .subscribe(endpoint_changes, gate("DnsEndpoint")),
            plans: self.plans.indexed(),
            plan_changes: self.plans.subscribe(plan_changes, gate("DnsPlan")),
        }
    }

    /// Endpoint changes for a task beside the controllers; `gate` opens once endpoints are
    /// listed.
    pub fn subscribe_endpoints(
        &mut self,
        changes: Changes<DnsEndpoint>,
        gate: Gate,
    ) -> UnboundedReceiver<Arc<DnsEndpoint>> {
        self.endpoints.subscribe(changes, gate)
    }

    /// Runs both watches until shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        let watches = futures::future::join(self.endpoints.run(), self.plans.run());
        shutdown.run_until_cancelled(watches).await;
    }
}

/// What a replica keeps of a DnsPlan: what enactment and planning read. The cache holds every
/// plan of every endpoint (up to three each); as a trimmed API object a plan cost its whole
/// `ObjectMeta` and owner reference besides (about 500 bytes), and the cache's key a copy of its
/// UID. Left out: the label, the annotations (the leader token, for audits), the resourceVersion
/// (no write to a plan is a compare-and-set on it) and a refusal's message.
#[derive(Clone, Debug)]
pub struct CachedPlan {
    pub name: String,
    pub namespace: String,
    /// The precondition of its deletion, so a plan minted again under the same name survives it.
    pub uid: String,
    /// Its endpoint's UID: tells the plans of an endpoint created again under the same name apart
    /// ([`plans_of`]).
    pub owner_uid: Option<String>,
    pub spec: DnsPlanSpec,
    /// Why an enactor refused it, if one did.
    pub refusal: Option<PlanPhase>,
}

impl CachedPlan {
    fn of(plan: DnsPlan) -> Self {
        let meta = plan.metadata;
        CachedPlan {
            name: meta.name.unwrap_or_default(),
            namespace: meta.namespace.unwrap_or_default(),
            uid: meta.uid.unwrap_or_default(),
            owner_uid: meta
                .owner_references
                .into_iter()
                .flatten()
                .find(|owner| owner.kind == <DnsEndpoint as Resource>::kind(&()))
                .map(|owner| owner.uid),
            spec: DnsPlanSpec {
                rrsets: compact_rrsets(plan.spec.rrsets),
                ..plan.spec
            },
            refusal: plan.status.and_then(|status| status.phase),
        }
    }

    /// Its index key: its endpoint.
    fn keys(&self) -> Vec<String> {
        vec![namespaced_key(&self.namespace, &self.spec.endpoint_ref)]
    }

    /// What an Event about the plan is about.
    pub fn regarding(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some(<DnsPlan as Resource>::api_version(&()).into_owned()),
            kind: Some(<DnsPlan as Resource>::kind(&()).into_owned()),
            name: Some(self.name.clone()),
            namespace: Some(self.namespace.clone()),
            uid: Some(self.uid.clone()),
            ..ObjectReference::default()
        }
    }
}

projection_lookup!(CachedPlan, DnsPlan);

/// An endpoint as cached: its lists without spare capacity (see [`crate::runtime::strip_unread`]).
fn compact_endpoint(mut endpoint: DnsEndpoint) -> DnsEndpoint {
    endpoint.spec.targets.shrink_to_fit();
    if let Some(status) = endpoint.status.as_mut() {
        status.conditions.shrink_to_fit();
    }
    endpoint
}

/// A plan's RRsets as cached: without spare capacity, as [`compact_endpoint`].
fn compact_rrsets(mut rrsets: Vec<RRSet>) -> Vec<RRSet> {
    rrsets.shrink_to_fit();
    for rrset in &mut rrsets {
        rrset.values.shrink_to_fit();
    }
    rrsets
}

/// [`Changes::AppliedIf`] for plans: another plan under the name (plans are immutable but for
/// refusals, which enactors write themselves; relisted ones are always sent).
pub fn another_plan(cached: &CachedPlan, new: &CachedPlan) -> bool {
    cached.uid != new.uid
}

/// The endpoint a plan's change concerns.
pub fn endpoint_of(plan: &CachedPlan) -> Option<ObjectRef<DnsEndpoint>> {
    Some(ObjectRef::new(&plan.spec.endpoint_ref).within(&plan.namespace))
}

/// The endpoints a controller's subscription triggers: those changed, and those whose plans did.
pub fn endpoint_and_plan_triggers(
    endpoint_changes: UnboundedReceiver<Arc<DnsEndpoint>>,
    plan_changes: UnboundedReceiver<Arc<CachedPlan>>,
) -> BoxStream<'static, ObjectRef<DnsEndpoint>> {
    let plan_triggers = plan_changes.filter_map(|plan| std::future::ready(endpoint_of(&plan)));
    futures::stream::select(endpoint_changes.map(|e| name_ref(&*e)), plan_triggers).boxed()
}

/// `<namespace>/<name>`: an index key for `name` in the object's namespace.
pub fn in_namespace(object: &impl Resource, name: &str) -> String {
    namespaced_key(object.meta().namespace.as_deref().unwrap_or_default(), name)
}

pub fn namespaced_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Index keys of the Services whose EndpointSlices the endpoint's targets follow.
fn followed_services(endpoint: &DnsEndpoint) -> Vec<String> {
    endpoint
        .spec
        .targets
        .iter()
        .filter_map(|t| t.service_ref.as_ref())
        .map(|service| in_namespace(endpoint, &service.name))
        .collect()
}

/// Label on every DnsPlan naming its DnsEndpoint.
pub const ENDPOINT_LABEL: &str = "bulwark.dev/endpoint";

/// How long a plan's reservation may lag behind the plan in a replica's caches (two watches).
pub const RESERVATION_LAG: Duration = Duration::from_secs(10);

/// The planner's leader fencing token at minting time, for audits of who minted what.
pub const LEADER_TOKEN_ANNOTATION: &str = "bulwark.dev/leader-token";

#[derive(Clone, Debug)]
pub struct DnsSettings {
    /// The namespaces whose objects this replica manages.
    pub scope: Scope,
    /// This replica's identity, recorded as an endpoint's `enactedBy`.
    pub identity: String,
    pub strategy: Strategy,
    /// Plans kept below the live generation.
    pub retention: u64,
    /// How often a converged endpoint is verified against the server again (repairs drift).
    pub resync: Duration,
    pub server_timeout: Duration,
    pub slow_enactor: SlowEnactor,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Provider(#[from] ProviderError),
    /// The objects as written cannot work; the message says what to change.
    #[error("{message}")]
    Invalid {
        reason: &'static str,
        message: String,
    },
}

impl Error {
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "api",
            Error::Provider(e) => e.kind(),
            Error::Invalid { .. } => "invalid",
        }
    }

    /// The Condition reason that explains this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "ApiError",
            Error::Provider(ProviderError::Config(_)) => "ProviderConfigInvalid",
            Error::Provider(ProviderError::Unreachable { .. }) => "ServerUnreachable",
            Error::Provider(ProviderError::Rejected { .. }) => "ServerRejected",
            Error::Provider(ProviderError::BadResponse(_)) => "ServerAnswerInvalid",
            Error::Invalid { reason, .. } => reason,
        }
    }
}

pub fn key(endpoint: &DnsEndpoint) -> String {
    format!(
        "{}/{}",
        endpoint.namespace().unwrap_or_default(),
        endpoint.name_any()
    )
}

/// The endpoint's plans in the cache, oldest first.
pub fn plans_of(plans: &Indexed<CachedPlan>, endpoint: &DnsEndpoint) -> Vec<Arc<CachedPlan>> {
    let uid = endpoint.uid();
    let mut found: Vec<Arc<CachedPlan>> = plans
        .get(&in_namespace(endpoint, &endpoint.name_any()))
        .into_iter()
        // A same-named endpoint that was deleted and recreated does not inherit plans.
        .filter(|p| p.owner_uid.is_some() && p.owner_uid == uid)
        .collect();
    found.sort_by_key(|p| p.spec.generation);
    found
}

/// Every DnsEndpoint in the plan's namespace that a zone change concerns.
pub fn endpoints_in_zone(
    endpoints: &Store<DnsEndpoint>,
    zone: &DnsZone,
) -> Vec<ObjectRef<DnsEndpoint>> {
    let namespace = zone.namespace();
    let name = zone.name_any();
    endpoints
        .state()
        .iter()
        .filter(|e| e.namespace() == namespace && e.spec.zone_ref == name)
        .map(|e| ObjectRef::from_obj(e.as_ref()))
        .collect()
}

/// Whether `fqdn` is `zone` or a name below it.
pub fn fqdn_in_zone(fqdn: &str, zone: &str) -> bool {
    let fqdn = fqdn.trim_end_matches('.').to_ascii_lowercase();
    let zone = zone.trim_end_matches('.').to_ascii_lowercase();
    fqdn == zone || fqdn.ends_with(&format!(".{zone}"))
}

/// The endpoint's zone (from the zone cache) and a client for its server from `clients`.
pub async fn zone_provider(
    client: &kube::Client,
    zones: &Store<DnsZone>,
    clients: &ZoneClients,
    endpoint: &DnsEndpoint,
    timeout: Duration,
) -> Result<(Arc<DnsZone>, Rfc2136), Error> {
    let namespace = endpoint.namespace().unwrap_or_default();
    let zone = zones
        .get(&ObjectRef::new(&endpoint.spec.zone_ref).within(&namespace))
        .ok_or_else(|| zone_not_found(endpoint))?;
    check_in_zone(&zone, endpoint)?;
    let provider = clients.get(client, &zone, timeout).await?;
    Ok((zone, provider))
}

/// How long a zone's TSIG key, once read from its Secret, is used without reading it again: a
/// rotated key takes effect within this, or at once after the server refuses the old one. At
/// 10,000 endpoints in 4 zones that is under one Secret read per second, not one per reconcile.
pub const TSIG_SECRET_TTL: Duration = Duration::from_secs(5);

/// The enactor's clients for zone servers, one per DnsZone. Reading the TSIG Secret on every
/// reconcile was most of the API reads at 10,000 endpoints, and a client per reconcile opened a
/// TCP connection per exchange; a cached client keeps its connections open for the next one.
#[derive(Clone, Default)]
pub struct ZoneClients {
    by_zone: Arc<Mutex<HashMap<ObjectRef<DnsZone>, CachedClient>>>,
    /// Held while a key is read, so the reconciles that all miss at start read it once, not
    /// once each.
    reading: Arc<tokio::sync::Mutex<()>>,
}

struct CachedClient {
    /// The zone object the client was made from: any change to it makes a new client.
    zone_version: Option<String>,
    key_read_at: Instant,
    settings: ClientSettings,
    client: Rfc2136,
}

impl ZoneClients {
    pub async fn get(
        &self,
        client: &kube::Client,
        zone: &DnsZone,
        timeout: Duration,
    ) -> Result<Rfc2136, Error> {
        let key = ObjectRef::from_obj(zone);
        let version = zone.resource_version();
        let cached = |clients: &Self| {
            clients
                .lock()
                .get(&key)
                .filter(|c| c.zone_version == version && c.key_read_at.elapsed() < TSIG_SECRET_TTL)
                .map(|c| c.client.clone())
        };
        if let Some(client) = cached(self) {
            return Ok(client);
        }
        let _reading = self.reading.lock().await;
        if let Some(client) = cached(self) {
            return Ok(client);
        }
        let settings = client_settings(client, zone, timeout).await?;
        let mut by_zone = self.lock();
        // The same settings again keep the client, and so its open connections.
        let reused = by_zone
            .remove(&key)
            .filter(|cached| cached.settings == settings)
            .map(|cached| cached.client);
        let rfc2136 = match reused {
            Some(client) => client,
            None => settings.client()?,
        };
        by_zone.insert(
            key,
            CachedClient {
                zone_version: version,
                key_read_at: Instant::now(),
                settings,
                client: rfc2136.clone(),
            },
        );
        Ok(rfc2136)
    }

    /// Drops the zone's client after a failure, so the next attempt reads the key again (it may
    /// have been rotated) and connects anew.
    pub fn forget(&self, zone_ref: ObjectRef<DnsZone>) {
        self.lock().remove(&zone_ref);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<DnsZone>, CachedClient>> {
        self.by_zone.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub fn zone_not_found(endpoint: &DnsEndpoint) -> Error {
    Error::Invalid {
        reason: "ZoneNotFound",
        message: format!(
            "DnsZone {:?} does not exist in namespace {}",
            endpoint.spec.zone_ref,
            endpoint.namespace().unwrap_or_default()
        ),
    }
}

/// A client for the endpoint's name in `zone`, with the TSIG key read from its Secret now.
pub async fn provider_for(
    client: &kube::Client,
    zone: &DnsZone,
    endpoint: &DnsEndpoint,
    timeout: Duration,
) -> Result<Rfc2136, Error> {
    check_in_zone(zone, endpoint)?;
    zone_client(client, zone, timeout).await
}

fn check_in_zone(zone: &DnsZone, endpoint: &DnsEndpoint) -> Result<(), Error> {
    if fqdn_in_zone(&endpoint.spec.fqdn, &zone.spec.zone) {
        return Ok(());
    }
    Err(Error::Invalid {
        reason: "FqdnOutsideZone",
        message: format!(
            "{} is not inside zone {} (DnsZone {})",
            endpoint.spec.fqdn,
            zone.spec.zone,
            zone.name_any()
        ),
    })
}

/// A client for the zone's server, with the TSIG key read from its Secret now.
pub async fn zone_client(
    client: &kube::Client,
    zone: &DnsZone,
    timeout: Duration,
) -> Result<Rfc2136, Error> {
    Ok(client_settings(client, zone, timeout).await?.client()?)
}

/// Everything a zone's client is made from.
#[derive(Clone, PartialEq)]
struct ClientSettings {
    server: String,
    zone: String,
    key_name: String,
    algorithm: TsigAlgorithm,
    secret: String,
    timeout: Duration,
}

impl ClientSettings {
    fn client(&self) -> Result<Rfc2136, ProviderError> {
        Rfc2136::new(
            &self.server,
            &self.zone,
            &self.key_name,
            self.algorithm,
            &self.secret,
            self.timeout,
        )
    }
}

/// The zone's provider settings with the TSIG key read from its Secret.
async fn client_settings(
    client: &kube::Client,
    zone: &DnsZone,
    timeout: Duration,
) -> Result<ClientSettings, Error> {
    let namespace = zone.namespace().unwrap_or_default();
    let settings = zone
        .spec
        .provider
        .rfc2136
        .as_ref()
        .ok_or_else(|| Error::Invalid {
            reason: "ProviderMissing",
            message: format!("DnsZone {} has no provider", zone.name_any()),
        })?;
    let secret_ref = &settings.tsig_secret_ref;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let missing = |what: &str| Error::Invalid {
        reason: "TsigSecretMissing",
        message: format!(
            "TSIG secret {}/{} key {:?}: {what}",
            namespace, secret_ref.name, secret_ref.key
        ),
    };
    let secret = secrets
        .get_opt(&secret_ref.name)
        .await?
        .ok_or_else(|| missing("Secret not found"))?;
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&secret_ref.key))
        .ok_or_else(|| missing("key not found in the Secret"))?;
    let value = std::str::from_utf8(&value.0).map_err(|_| missing("value is not text"))?;
    Ok(ClientSettings {
        server: settings.server.clone(),
        zone: zone.spec.zone.clone(),
        key_name: settings.tsig_key_name.clone(),
        algorithm: settings.tsig_algorithm,
        secret: value.to_owned(),
        timeout,
    })
}

/// Writes the status fields and conditions one controller owns, by server-side apply under its
/// own field manager, so the planner and the enactors never overwrite each other's fields.
/// `resource_version` turns the write into a compare-and-set.
pub async fn apply_endpoint_status(
    client: &kube::Client,
    endpoint: &DnsEndpoint,
    manager: &str,
    fields: serde_json::Value,
    conditions: &[Condition],
    resource_version: Option<&str>,
) -> Result<(), kube::Error> {
    let mut status = fields;
    status["conditions"] = serde_json::to_value(conditions).expect("conditions serialize");
    apply_status(client, endpoint, manager, status, resource_version)
        .await
        .map(drop)
}

/// The endpoint's current conditions, for [`conditions::condition`].
pub fn endpoint_conditions(endpoint: &DnsEndpoint) -> &[Condition] {
    endpoint
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default()
}

/// Builds the condition `type_` for the endpoint's current spec and reports whether it changes
/// anything.
pub fn endpoint_condition(
    endpoint: &DnsEndpoint,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
) -> (Condition, bool) {
    endpoint_condition_for(
        endpoint,
        endpoint.metadata.generation,
        type_,
        status,
        reason,
        message,
    )
}

/// [`endpoint_condition`] for the spec of `observed_generation`.
pub fn endpoint_condition_for(
    endpoint: &DnsEndpoint,
    observed_generation: Option<i64>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
) -> (Condition, bool) {
    let existing = endpoint_conditions(endpoint);
    let wanted = conditions::condition(
        existing,
        type_,
        status,
        reason,
        message,
        observed_generation,
    );
    let changed = conditions::differs(existing, &wanted);
    (wanted, changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_plan_still_belongs_to_its_endpoint_and_not_to_a_namesake() {
        let endpoint = |uid: &str| -> DnsEndpoint {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "bulwark.dev/v1alpha1", "kind": "DnsEndpoint",
                "metadata": {"name": "api", "namespace": "ns", "uid": uid},
                "spec": {"zoneRef": "zone", "fqdn": "api.example.com",
                         "targets": [{"address": "192.0.2.1"}]},
            }))
            .unwrap()
        };
        let plan = |uid: &str, owners: serde_json::Value| -> DnsPlan {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "bulwark.dev/v1alpha1", "kind": "DnsPlan",
                "metadata": {"name": "api-1", "namespace": "ns", "uid": uid,
                    "resourceVersion": "812", "annotations": {LEADER_TOKEN_ANNOTATION: "3"},
                    "ownerReferences": owners},
                "spec": {"endpointRef": "api", "fqdn": "api.example.com", "generation": 1,
                         "rrsets": [], "contentHash": "0".repeat(64),
                         "mintedAt": "2026-12-02T00:00:00.123456Z"},
                "status": {"phase": "Rejected", "message": "generation 1 was never reserved"},
            }))
            .unwrap()
        };
        let owned_by_first = serde_json::json!([
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "audit", "uid": "other"},
            {"apiVersion": "bulwark.dev/v1alpha1", "kind": "DnsEndpoint", "name": "api",
             "uid": "first", "controller": true}
        ]);
        let cached = CachedPlan::of(plan("p1", owned_by_first));
        assert_eq!(cached.refusal, Some(PlanPhase::Rejected));
        assert_eq!((cached.uid.as_str(), cached.name.as_str()), ("p1", "api-1"));
        assert!(
            cached.spec.minted_at.is_some(),
            "the enactment latency is timed from it"
        );
        assert_eq!(
            endpoint_of(&cached),
            Some(ObjectRef::new("api").within("ns"))
        );
        let regarding = cached.regarding();
        assert_eq!(regarding.kind.as_deref(), Some("DnsPlan"));
        assert_eq!(regarding.uid.as_deref(), Some("p1"));
        let mut orphan = CachedPlan::of(plan("p2", serde_json::json!([])));
        orphan.name = "api-2".into();
        let plans = Indexed::listed([cached.clone(), orphan], CachedPlan::keys);
        assert_eq!(plans.get("ns/api").len(), 2);
        let of_first = plans_of(&plans, &endpoint("first"));
        assert_eq!(of_first.iter().map(|p| &p.uid).collect::<Vec<_>>(), ["p1"]);
        assert!(plans_of(&plans, &endpoint("second")).is_empty());
        let mut minted_again = cached.clone();
        minted_again.uid = "p3".into();
        assert!(another_plan(&cached, &minted_again));
        let mut refused = cached.clone();
        refused.refusal = Some(PlanPhase::Superseded);
        assert!(
            !another_plan(&cached, &refused),
            "a refusal is not a new plan"
        );
    }

    #[test]
    fn cached_endpoints_and_plans_keep_no_spare_list_capacity() {
        // Parsed from text, as the watch's bytes are: a `Value` would tell serde the lengths.
        let mut endpoint: DnsEndpoint = serde_json::from_str(
            &serde_json::json!({
                "apiVersion": "bulwark.dev/v1alpha1", "kind": "DnsEndpoint",
                "metadata": {"name": "api", "namespace": "ns", "uid": "e1",
                             "finalizers": ["bulwark.dev/dns-records"]},
                "spec": {"zoneRef": "zone", "fqdn": "api.example.com",
                         "targets": [{"serviceRef": {"name": "web"}}]},
                "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Verified",
                    "message": "live", "lastTransitionTime": "2026-12-03T00:00:00Z"}]},
            })
            .to_string(),
        )
        .unwrap();
        let as_listed = endpoint.clone();
        assert!(
            endpoint.spec.targets.capacity() > 1,
            "serde_json leaves room to spare, or this test shows nothing"
        );
        crate::runtime::strip_unread(&mut endpoint);
        let cached = compact_endpoint(endpoint);
        assert_eq!(
            serde_json::to_value(&cached).unwrap(),
            serde_json::to_value(&as_listed).unwrap(),
            "only capacity is dropped"
        );
        assert_eq!(cached.spec.targets.capacity(), 1);
        assert_eq!(cached.status.as_ref().unwrap().conditions.capacity(), 1);
        assert_eq!(cached.metadata.finalizers.as_ref().unwrap().capacity(), 1);

        let plan: DnsPlan = serde_json::from_str(
            &serde_json::json!({
                "apiVersion": "bulwark.dev/v1alpha1", "kind": "DnsPlan",
                "metadata": {"name": "api-1", "namespace": "ns", "uid": "p1"},
                "spec": {"endpointRef": "api", "fqdn": "api.example.com", "generation": 1,
                         "rrsets": [{"recordType": "A", "ttl": 60,
                                     "values": ["192.0.2.1", "192.0.2.2"]}],
                         "contentHash": "0".repeat(64)},
            })
            .to_string(),
        )
        .unwrap();
        let rrsets = plan.spec.rrsets.clone();
        let cached = CachedPlan::of(plan);
        assert_eq!(cached.spec.rrsets, rrsets);
        assert_eq!(cached.spec.rrsets.capacity(), 1);
        assert_eq!(cached.spec.rrsets[0].values.capacity(), 2);
    }

    #[test]
    fn names_belong_to_a_zone_only_at_a_label_boundary() {
        assert!(fqdn_in_zone("api.example.com", "example.com"));
        assert!(fqdn_in_zone("API.Example.com.", "example.com."));
        assert!(fqdn_in_zone("example.com", "example.com"));
        assert!(!fqdn_in_zone("api.badexample.com", "example.com"));
        assert!(!fqdn_in_zone("api.example.org", "example.com"));
    }
}
