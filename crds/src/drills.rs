//! DR drill API: `DrillSchedule` (when) and `DrillRun` (one drill).
//!
//! A `DrillRun` injects one fault into one target, gated by SLO guards, measured by a write probe
//! and always rolled back. Its status is a state machine written before each side effect, so an
//! operator restart resumes the run (and rolls back) instead of injecting twice. At most one run
//! is active per target: a run holds the target's lock, a Lease with a name derived from the
//! target, created only if absent (the API server refuses a second one).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::postgres::{DNS_LABEL_PATTERN, DURATION_PATTERN};

/// One drill: a fault injected into a target, observed, rolled back and judged.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bulwark.dev",
    version = "v1alpha1",
    kind = "DrillRun",
    namespaced,
    status = "DrillRunStatus",
    shortname = "drill",
    category = "bulwark",
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.target.name"),
    printcolumn(
        name = "Scenario",
        type_ = "string",
        json_path = ".spec.scenario.fault"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Result", type_ = "string", json_path = ".status.result"),
    printcolumn(name = "RTO", type_ = "number", json_path = ".status.rtoSeconds"),
    printcolumn(name = "Lost", type_ = "integer", json_path = ".status.lostWrites"),
    printcolumn(
        name = "DNS RTO",
        type_ = "number",
        json_path = ".status.dnsProbe.rtoSeconds"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("a DrillRun cannot change once created: delete it (which rolls its fault back) and create another"))]
#[x_kube(validation = Rule::new("(self.target.kind == 'DnsEndpoint') == (self.scenario.fault in ['SlowDnsEnactor', 'DnsServerOutage'])").message("scenario.fault does not apply to target.kind: a DnsEndpoint takes SlowDnsEnactor or DnsServerOutage; a DatabaseCluster takes PrimaryCrash, PrimaryFrozen, PrimaryPartitioned, Switchover or ZoneOutage"))]
#[x_kube(validation = Rule::new("!has(self.dnsProbe) || self.target.kind == 'DatabaseCluster'").message("dnsProbe measures a DatabaseCluster's writes through a DNS name; a DnsEndpoint target is probed through its own name already"))]
pub struct DrillRunSpec {
    pub target: DrillTarget,
    pub scenario: Scenario,
    /// SLOs whose live status must allow the drill: checked before the fault and every
    /// `guardInterval` during it. A crossed guard at the start skips the run; during it, aborts
    /// and rolls back at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub guards: Vec<Guard>,
    /// How often guards are read during the fault, `1s` to `60s`.
    #[serde(default = "default_guard_interval")]
    #[schemars(length(min = 2, max = 8), pattern(DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('60s')").message("guardInterval must be from 1s to 60s"))]
    pub guard_interval: String,
    #[serde(default)]
    pub success: SuccessCriteria,
    /// Also measure what a client that follows a DNS name sees: writes through this
    /// `DnsEndpoint`'s name (it should follow the target's `-rw` Service), resolved at its
    /// zone's authoritative server before every connect, so the outage includes the DNS re-plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_probe: Option<DnsProbe>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DnsProbe {
    /// The `DnsEndpoint`'s name, in the run's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub endpoint: String,
}

fn default_guard_interval() -> String {
    "5s".into()
}

/// What the drill is run against.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "camelCase")]
pub struct DrillTarget {
    pub kind: TargetKind,
    /// The target's name, in the run's namespace.
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL_PATTERN))]
    pub name: String,
}

#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub enum TargetKind {
    DatabaseCluster,
    /// Probed by asking its zone's authoritative server for its name.
    DnsEndpoint,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::DatabaseCluster => "DatabaseCluster",
            TargetKind::DnsEndpoint => "DnsEndpoint",
        }
    }
}

/// On a DnsEndpoint, how long every enactor stalls between reading the name's fence and writing
/// a plan (`5s`): the slow enactor of the October 2025 outage, set and removed by a
/// `SlowDnsEnactor` drill.
pub const SLOW_ENACTOR_ANNOTATION: &str = "bulwark.dev/drill-slow-enactor";

/// The fault and how long it stays in place.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Scenario {
    pub fault: Fault,
    /// How long the fault is held before it is rolled back (`1s` to `3600s`). A crash and a
    /// switchover happen at once; the duration is how long the drill then observes.
    #[schemars(length(min = 2, max = 8), pattern(DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('3600s')").message("scenario.duration must be from 1s to 3600s"))]
    pub duration: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The primary's container is killed (SIGKILL of the instance manager and PostgreSQL).
    PrimaryCrash,
    /// The primary's PostgreSQL and instance manager stop answering (SIGSTOP), sockets open,
    /// until rolled back.
    PrimaryFrozen,
    /// The primary cut off from everything but its node: a NetworkPolicy isolating its pod
    /// (both directions) stops new connections, and its instance manager cuts the established
    /// ones the network plugin lets through. PostgreSQL keeps running: the primary should fence
    /// itself while a replica is promoted. Needs a network plugin that enforces NetworkPolicy.
    PrimaryPartitioned,
    /// A planned switchover to the most caught-up replica.
    Switchover,
    /// Every instance in the primary's zone (its node's `topology.kubernetes.io/zone`) frozen
    /// at once, as when a zone's machines stop answering.
    ZoneOutage,
    /// Every enactor of a DnsEndpoint stalls for the drill's duration before each write, so
    /// newer plans are minted while an older one is about to be written.
    SlowDnsEnactor,
    /// The zone's authoritative server unreachable: a NetworkPolicy cuts off every pod of the
    /// Service the DnsZone's server address names (`<service>.<namespace>.svc[.cluster.local]`
    /// or the Service's cluster IP, in the zone's namespace), so clients and enactors alike
    /// get no answer. Needs a network plugin that enforces NetworkPolicy.
    DnsServerOutage,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::PrimaryCrash => "PrimaryCrash",
            Fault::PrimaryFrozen => "PrimaryFrozen",
            Fault::PrimaryPartitioned => "PrimaryPartitioned",
            Fault::Switchover => "Switchover",
            Fault::ZoneOutage => "ZoneOutage",
            Fault::SlowDnsEnactor => "SlowDnsEnactor",
            Fault::DnsServerOutage => "DnsServerOutage",
        }
    }
}

/// Limits on one SLO's live status (`ServiceLevelObjective` status, in the run's namespace).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.maxBurnRate) || has(self.minBudgetRemaining)").message("a guard needs maxBurnRate or minBudgetRemaining"))]
pub struct Guard {
    /// The ServiceLevelObjective's name.
    #[schemars(length(min = 1, max = 253))]
    pub slo: String,
    /// The burn rate window to read (`5m`, `30m`, `1h`, `2h`, `6h`, `1d`, `3d`); `5m` when unset.
    #[serde(default = "default_guard_window")]
    #[schemars(pattern(r"^(5m|30m|1h|2h|6h|1d|3d)$"))]
    pub window: String,
    /// The drill does not start, or aborts, when that window burns faster than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_burn_rate: Option<f64>,
    /// The drill does not start, or aborts, when less than this fraction of the error budget is
    /// left (0 to 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_budget_remaining: Option<f64>,
}

fn default_guard_window() -> String {
    "5m".into()
}

/// What makes a drill Succeeded rather than Failed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SuccessCriteria {
    /// The longest outage the write probe may see (`1s` to `3600s`); none when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 8), pattern(DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('3600s')").message("success.maxRto must be from 1s to 3600s"))]
    pub max_rto: Option<String>,
    /// How many acknowledged writes may be missing afterwards (the RPO, in writes).
    #[serde(default)]
    pub max_lost_writes: u32,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DrillRunStatus {
    /// `Pending` (waiting for the target's lock), `Gating`, `Injecting`, `Observing`,
    /// `RollingBack`, `Completed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// `Succeeded`, `Failed`, `Aborted` or `Skipped`; set when decided, which for an abort is
    /// before the rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Why the result is what it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// For a run stopped before it was judged, why, in one word: `GuardCrossed`,
    /// `GuardUnreadable`, `TargetUnfit`, `Deleted`, `OperatorRestarted` or `NotRecovered`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the fault was aimed at (an instance, `zone <name>`, a DNS name, or the Service of
    /// a zone's server), written before it was injected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub victim: Option<String>,
    /// The instances (or DNS server pods) the fault acts on, written before it was injected:
    /// what a rollback undoes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faulted_instances: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected_at: Option<MicroTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_at: Option<MicroTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// From the fault's injection to the first write through the `-rw` Service that was not
    /// acknowledged: how soon a client felt it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection_seconds: Option<f64>,
    /// The longest outage the write probe saw through the `-rw` Service, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_seconds: Option<f64>,
    /// Acknowledged writes missing afterwards (the RPO, in writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_writes: Option<u64>,
    /// The probe's attempts by outcome. For a DnsEndpoint, its questions: answered with
    /// addresses (acknowledged), answered empty (failed), unanswered (indeterminate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes: Option<WriteCounts>,
    /// What the DNS probe (`spec.dnsProbe`) saw: the client-visible outage through DNS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_probe: Option<DnsProbeResult>,
    /// The guards' values when the run was skipped or aborted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guard_readings: Vec<GuardReading>,
    /// Every step, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<TimelineEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// What the write probe saw.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WriteCounts {
    pub acknowledged: u64,
    pub failed: u64,
    /// Sent, but the session broke before an answer.
    pub indeterminate: u64,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DnsProbeResult {
    /// The name resolved before every connect.
    pub fqdn: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_seconds: Option<f64>,
    pub lost_writes: u64,
    pub writes: WriteCounts,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GuardReading {
    pub slo: String,
    pub window: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burn_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_remaining: Option<f64>,
    /// This guard is the one that skipped or aborted the run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped_the_run: bool,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    pub time: MicroTime,
    pub phase: String,
    pub message: String,
}

/// Drills on a cron schedule, like a CronJob of DrillRuns.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bulwark.dev",
    version = "v1alpha1",
    kind = "DrillSchedule",
    namespaced,
    status = "DrillScheduleStatus",
    shortname = "drills",
    category = "bulwark",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Suspend", type_ = "boolean", json_path = ".spec.suspend"),
    printcolumn(name = "Active", type_ = "integer", json_path = ".status.activeCount"),
    printcolumn(name = "Last", type_ = "date", json_path = ".status.lastScheduleTime"),
    printcolumn(
        name = "Last success",
        type_ = "date",
        json_path = ".status.lastSuccessfulTime"
    ),
    printcolumn(name = "Next", type_ = "date", json_path = ".status.nextRunTime"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DrillScheduleSpec {
    /// Cron: `minute hour day-of-month month day-of-week`, with an optional leading seconds
    /// field (`*/30 * * * * *`). Errors name the field.
    #[schemars(length(min = 9, max = 256))]
    #[x_kube(validation = Rule::new("self.trim().split(' ').filter(f, f != '').size() in [5, 6]").message("schedule needs 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first"))]
    pub schedule: String,
    /// IANA time zone of the schedule, such as `Europe/Berlin`; UTC when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// A tick missed by more than this many seconds is not run (counted in an Event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub starting_deadline_seconds: Option<i64>,
    #[serde(default)]
    pub suspend: bool,
    #[serde(default = "default_successful_history")]
    #[schemars(range(max = 100))]
    pub successful_runs_history_limit: u32,
    #[serde(default = "default_failed_history")]
    #[schemars(range(max = 100))]
    pub failed_runs_history_limit: u32,
    /// Times no drill starts in, such as a release freeze.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub blocked_windows: Vec<BlockedWindow>,
    /// The spec of every DrillRun this schedule creates.
    pub run_template: DrillRunSpec,
}

fn default_successful_history() -> u32 {
    3
}

fn default_failed_history() -> u32 {
    1
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConcurrencyPolicy {
    /// A tick while a run of this schedule is active creates nothing.
    #[default]
    Forbid,
    /// A tick while a run is active deletes it (its fault is rolled back first) and creates the
    /// new one, which waits for the target.
    Replace,
}

/// A window opened by a cron expression (in the schedule's time zone) that lasts `duration`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BlockedWindow {
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    #[schemars(length(min = 9, max = 256))]
    pub opens: String,
    /// `1s` to `744h` (31 days).
    #[schemars(length(min = 2, max = 8), pattern(r"^[0-9]{1,6}(s|m|h)$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('744h')").message("a blocked window lasts from 1s to 744h"))]
    pub duration: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DrillScheduleStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The nominal time of the last tick a run was created for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// The nominal time of the last tick handled: a run created, or none because a run was
    /// active (Forbid), the tick was in a blocked window or past its starting deadline. Each
    /// tick is handled once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_time: Option<Time>,
    /// When the last Succeeded run of this schedule completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_time: Option<Time>,
    /// Runs of this schedule not yet Completed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<String>,
    #[serde(default)]
    pub active_count: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
