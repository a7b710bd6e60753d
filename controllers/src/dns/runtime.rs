//! What the planner and enactor controllers share: settings, errors, backoff, plan lookup,
//! endpoint status writes and Events.

use std::sync::Arc;
use std::time::Duration;

use bulwark_chaos::slow_enactor::SlowEnactor;
use bulwark_crds::dns::{DnsEndpoint, DnsPlan, DnsZone};
use futures::Stream;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

pub use crate::runtime::{Backoff, apply_status, cached, drain, publish, scoped_api};

use super::fencing::Strategy;
use super::provider::ProviderError;
use super::rfc2136::Rfc2136;
use crate::conditions;
use crate::readiness::Readiness;
use crate::scope::Scope;

/// The caches both DNS controllers work from: endpoints (their main stream) and plans, each with
/// a readiness gate `<controller>/<kind>`.
pub struct EndpointsAndPlans<E, P> {
    pub endpoints: Store<DnsEndpoint>,
    pub endpoint_events: E,
    pub plans: Store<DnsPlan>,
    pub plan_events: P,
}

pub fn endpoints_and_plans(
    client: &kube::Client,
    namespace: Option<&str>,
    readiness: &Readiness,
    controller: &str,
) -> EndpointsAndPlans<
    impl Stream<Item = Result<watcher::Event<DnsEndpoint>, watcher::Error>> + Send + 'static,
    impl Stream<Item = Result<watcher::Event<DnsPlan>, watcher::Error>> + Send + 'static,
> {
    let gate = |kind: &str| readiness.gate(format!("{controller}/{kind}"));
    let (endpoints, endpoint_events) = cached(
        client,
        namespace,
        watcher::Config::default(),
        gate("DnsEndpoint"),
    );
    let (plans, plan_events) = cached(
        client,
        namespace,
        watcher::Config::default(),
        gate("DnsPlan"),
    );
    EndpointsAndPlans {
        endpoints,
        endpoint_events,
        plans,
        plan_events,
    }
}

/// Label on every DnsPlan naming its DnsEndpoint.
pub const ENDPOINT_LABEL: &str = "bulwark.dev/endpoint";
/// When the planner minted a plan, with nanoseconds (creationTimestamp has whole seconds only).
pub const MINTED_AT_ANNOTATION: &str = "bulwark.dev/minted-at";
/// The planner's leader fencing token at minting time, for audits of who minted what.
pub const LEADER_TOKEN_ANNOTATION: &str = "bulwark.dev/leader-token";

#[derive(Clone, Debug)]
pub struct DnsSettings {
    /// The namespaces whose objects this replica manages.
    pub scope: Scope,
    /// This replica's identity, recorded as a plan's `enactedBy`.
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
pub fn plans_of(plans: &Store<DnsPlan>, endpoint: &DnsEndpoint) -> Vec<Arc<DnsPlan>> {
    let namespace = endpoint.namespace();
    let name = endpoint.name_any();
    let uid = endpoint.uid();
    let mut found: Vec<Arc<DnsPlan>> = plans
        .state()
        .into_iter()
        .filter(|p| {
            p.namespace() == namespace
                && p.spec.endpoint_ref == name
                // A same-named endpoint that was deleted and recreated does not inherit plans.
                && p.owner_references().iter().any(|o| Some(&o.uid) == uid.as_ref())
        })
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

/// The endpoint's zone (from the zone cache) and a provider for it, with the TSIG secret read
/// from its Secret.
pub async fn zone_provider(
    client: &kube::Client,
    zones: &Store<DnsZone>,
    endpoint: &DnsEndpoint,
    timeout: Duration,
) -> Result<(Arc<DnsZone>, Rfc2136), Error> {
    let namespace = endpoint.namespace().unwrap_or_default();
    let zone = zones
        .get(&ObjectRef::new(&endpoint.spec.zone_ref).within(&namespace))
        .ok_or_else(|| zone_not_found(endpoint))?;
    let provider = provider_for(client, &zone, endpoint, timeout).await?;
    Ok((zone, provider))
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

/// A provider for the endpoint's name in `zone`.
pub async fn provider_for(
    client: &kube::Client,
    zone: &DnsZone,
    endpoint: &DnsEndpoint,
    timeout: Duration,
) -> Result<Rfc2136, Error> {
    if !fqdn_in_zone(&endpoint.spec.fqdn, &zone.spec.zone) {
        return Err(Error::Invalid {
            reason: "FqdnOutsideZone",
            message: format!(
                "{} is not inside zone {} (DnsZone {})",
                endpoint.spec.fqdn,
                zone.spec.zone,
                zone.name_any()
            ),
        });
    }
    zone_client(client, zone, timeout).await
}

/// A client for the zone's server, with the TSIG secret read from its Secret.
pub async fn zone_client(
    client: &kube::Client,
    zone: &DnsZone,
    timeout: Duration,
) -> Result<Rfc2136, Error> {
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
    Ok(Rfc2136::new(
        &settings.server,
        &zone.spec.zone,
        &settings.tsig_key_name,
        settings.tsig_algorithm,
        value,
        timeout,
    )?)
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

/// Builds the condition `type_` for the endpoint and reports whether it changes anything.
pub fn endpoint_condition(
    endpoint: &DnsEndpoint,
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
        endpoint.metadata.generation,
    );
    let changed = conditions::differs(existing, &wanted);
    (wanted, changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_belong_to_a_zone_only_at_a_label_boundary() {
        assert!(fqdn_in_zone("api.example.com", "example.com"));
        assert!(fqdn_in_zone("API.Example.com.", "example.com."));
        assert!(fqdn_in_zone("example.com", "example.com"));
        assert!(!fqdn_in_zone("api.badexample.com", "example.com"));
        assert!(!fqdn_in_zone("api.example.org", "example.com"));
    }
}
