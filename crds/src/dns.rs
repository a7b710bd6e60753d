//! DNS plan enactment API: `DnsZone`, `DnsEndpoint`, `DnsPlan`.
//!
//! A `DnsPlan` is the fencing unit: an immutable, generation-numbered description of the exact
//! RRsets a name should serve. Enactors write it to the DNS server in one atomic RFC 2136 UPDATE
//! guarded by the fence record, so the generation is checked at the server, not in the enactor.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A lowercase DNS name of letters, digits and hyphens, with an optional trailing dot.
pub const DNS_NAME_PATTERN: &str =
    r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.?$";

/// An authoritative zone Bulwark may change, and how to reach its primary server.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bulwark.dev",
    version = "v1alpha1",
    kind = "DnsZone",
    namespaced,
    status = "DnsZoneStatus",
    shortname = "dz",
    category = "bulwark",
    printcolumn(name = "Zone", type_ = "string", json_path = ".spec.zone"),
    printcolumn(
        name = "Server",
        type_ = "string",
        json_path = ".spec.provider.rfc2136.server"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DnsZoneSpec {
    /// Zone apex, for example `example.com`.
    #[schemars(length(min = 1, max = 253), pattern(DNS_NAME_PATTERN))]
    pub zone: String,
    pub provider: DnsProvider,
}

/// The provider that applies changes. Exactly one provider is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.rfc2136)").message("exactly one provider must be set; supported: rfc2136"))]
pub struct DnsProvider {
    /// Dynamic updates (RFC 2136) authenticated with TSIG (RFC 8945).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rfc2136: Option<Rfc2136Provider>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Rfc2136Provider {
    /// Primary server as `host:port`, for example `10.0.0.53:53` or `ns1.example.com:53`.
    #[schemars(length(min = 3, max = 261), pattern(r"^[^\s:]+:[0-9]{1,5}$"))]
    pub server: String,
    /// TSIG key name as configured on the server.
    #[schemars(length(min = 1, max = 253), pattern(DNS_NAME_PATTERN))]
    pub tsig_key_name: String,
    #[serde(default)]
    pub tsig_algorithm: TsigAlgorithm,
    /// Secret (same namespace) holding the base64 TSIG secret as the server prints it.
    pub tsig_secret_ref: SecretKeySelector,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TsigAlgorithm {
    #[serde(rename = "hmac-sha256")]
    #[default]
    HmacSha256,
    #[serde(rename = "hmac-sha384")]
    HmacSha384,
    #[serde(rename = "hmac-sha512")]
    HmacSha512,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DnsZoneStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A managed name: its targets, how healthy targets become answers, and the generation counter
/// of the plans minted for it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bulwark.dev",
    version = "v1alpha1",
    kind = "DnsEndpoint",
    namespaced,
    status = "DnsEndpointStatus",
    shortname = "dne",
    validation = Rule::new("self.metadata.name.size() <= 63").message("DnsEndpoint names are at most 63 characters: every plan carries the name as a label value and in its own name"),
    category = "bulwark",
    printcolumn(name = "FQDN", type_ = "string", json_path = ".spec.fqdn"),
    printcolumn(
        name = "Generation",
        type_ = "integer",
        json_path = ".status.latestPlanGeneration"
    ),
    printcolumn(name = "Live", type_ = "integer", json_path = ".status.liveGeneration"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DnsEndpointSpec {
    /// Name of the `DnsZone` (same namespace) that holds `fqdn`. Immutable: records written in
    /// one zone are not moved to another.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("zoneRef is immutable; create a new DnsEndpoint for another zone"))]
    pub zone_ref: String,
    /// Fully qualified name inside the zone, for example `api.example.com`. Immutable, since the
    /// plans and the fence record are tied to the name. At most 244 characters, so the fence
    /// record `_bulwark.<fqdn>` is still a valid DNS name.
    #[schemars(length(min = 1, max = 244), pattern(DNS_NAME_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("fqdn is immutable; create a new DnsEndpoint for another name"))]
    pub fqdn: String,
    /// Record TTL in seconds.
    #[serde(default = "default_ttl")]
    #[schemars(range(min = 1, max = 86400))]
    pub ttl: u32,
    #[serde(default)]
    pub routing: RoutingPolicy,
    /// Allow a plan with no records when no target is healthy. Off by default: an empty answer
    /// is an outage, so the last non-empty plan stays live instead.
    #[serde(default)]
    pub allow_empty: bool,
    /// Take over a name whose records Bulwark did not write: they are replaced by this
    /// endpoint's. Off by default: such a name is a `Conflict` and nothing is written. A name
    /// another DnsEndpoint manages is never taken over.
    #[serde(default)]
    pub adopt: bool,
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.all(t, self.exists_one(u, u == t))").message("targets must not repeat"))]
    pub targets: Vec<DnsTarget>,
}

fn default_ttl() -> u32 {
    60
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RoutingPolicy {
    /// Answer with every healthy target.
    #[default]
    AllHealthy,
    /// Answer with the healthy targets of the lowest-numbered group that has any.
    Failover,
}

/// One target: a literal address, or a Service whose ready endpoints are the addresses.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.address) != has(self.serviceRef)").message("set exactly one of address or serviceRef"))]
pub struct DnsTarget {
    /// IPv4 or IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 45))]
    #[x_kube(validation = Rule::new("isIP(self)").message("address must be an IPv4 or IPv6 address"))]
    pub address: Option<String>,
    /// Service (same namespace) whose ready EndpointSlice addresses are the targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_ref: Option<ServiceRef>,
    /// 0 drains the target; any positive weight puts it in the answer (plain DNS answers carry
    /// no weights, so weights are not proportional).
    #[serde(default = "default_weight")]
    #[schemars(range(min = 0, max = 1000))]
    pub weight: u32,
    /// Failover group: with `Failover` routing, lower groups are preferred.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub group: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub region: Option<String>,
}

fn default_weight() -> u32 {
    1
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRef {
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DnsEndpointStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Generation of the newest plan reserved or live. A plan minted above a pending one is
    /// reserved here first, with a resourceVersion compare-and-set; the one right after the live
    /// generation needs no reservation and is recorded here when it goes live.
    #[serde(default)]
    pub latest_plan_generation: u64,
    /// Generation the DNS server's fence record held when last read: the live plan. Which plan
    /// is live is recorded here only, not on the plans, so a change costs no write on them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_generation: Option<u64>,
    /// Identity of the enactor whose UPDATE made the live generation live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enacted_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enacted_at: Option<Time>,
    /// When the authoritative server was seen answering with the live generation's records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// An immutable, generation-numbered set of RRsets for one endpoint, minted by the planner.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bulwark.dev",
    version = "v1alpha1",
    kind = "DnsPlan",
    namespaced,
    status = "DnsPlanStatus",
    shortname = "dnp",
    category = "bulwark",
    validation = Rule::new("self.spec == oldSelf.spec").message("DnsPlan spec is immutable; the planner mints a new generation instead"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".spec.endpointRef"),
    printcolumn(name = "Generation", type_ = "integer", json_path = ".spec.generation"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct DnsPlanSpec {
    /// Name of the `DnsEndpoint` this plan belongs to.
    #[schemars(length(min = 1, max = 253))]
    pub endpoint_ref: String,
    #[schemars(length(min = 1, max = 244), pattern(DNS_NAME_PATTERN))]
    pub fqdn: String,
    /// 1, 2, 3, … per endpoint. The fencing token checked at the DNS server.
    #[schemars(range(min = 1))]
    pub generation: u64,
    #[schemars(length(max = 8))]
    pub rrsets: Vec<RRSet>,
    /// SHA-256 of the canonical RRsets, so "did the content change" is a string compare.
    #[schemars(length(min = 64, max = 64))]
    pub content_hash: String,
    /// When the planner minted the plan, to the microsecond (creationTimestamp has whole seconds):
    /// the enactment latency and a pending plan's wait are timed from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minted_at: Option<MicroTime>,
    /// The DnsEndpoint's `metadata.generation` the plan was minted from: once the plan is live,
    /// the spec the endpoint's `observedGeneration` and `Ready` speak for. A plan minted without
    /// a reservation is the planner's only write, so it carries this instead of a status write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_generation: Option<i64>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct RRSet {
    pub record_type: RecordType,
    #[schemars(range(min = 1, max = 86400))]
    pub ttl: u32,
    #[schemars(length(min = 1, max = 256))]
    pub values: Vec<String>,
}

#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub enum RecordType {
    A,
    #[allow(clippy::upper_case_acronyms)]
    AAAA,
}

/// Why an enactor refused a plan. A plan no enactor refused has no phase: whether it is live,
/// pending or past is its generation against the endpoint's `status.liveGeneration`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanPhase {
    /// A newer generation was live at the server; never retried.
    Superseded,
    /// Not what the planner could have minted for its endpoint (the message says why); checked
    /// again at each enactment, so a plan refused for a fault since cleared is enacted then.
    Rejected,
}

/// Written only when an enactor refuses the plan.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DnsPlanStatus {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "refusal_phase"
    )]
    pub phase: Option<PlanPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Reads `status.phase`, where plans written before refusals alone had a phase say `Pending` or
/// `Live`: neither is a refusal, and failing on them would stop the operator's plan watch.
fn refusal_phase<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<PlanPhase>, D::Error> {
    let phase = Option::<String>::deserialize(deserializer)?;
    Ok(phase.and_then(|phase| serde_json::from_value(serde_json::Value::String(phase)).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_phases_from_before_refusals_alone_had_one_read_as_no_refusal() {
        let phase = |json: serde_json::Value| -> Option<PlanPhase> {
            serde_json::from_value::<DnsPlanStatus>(json).unwrap().phase
        };
        assert_eq!(phase(serde_json::json!({"phase": "Live"})), None);
        assert_eq!(phase(serde_json::json!({"phase": "Pending"})), None);
        assert_eq!(phase(serde_json::json!({})), None);
        assert_eq!(
            phase(serde_json::json!({"phase": "Rejected", "message": "m"})),
            Some(PlanPhase::Rejected)
        );
        assert_eq!(
            phase(serde_json::json!({"phase": "Superseded"})),
            Some(PlanPhase::Superseded)
        );
    }
}
