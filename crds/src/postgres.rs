//! Replicated PostgreSQL API: `DatabaseCluster`.
//!
//! A `DatabaseCluster` is a primary and its streaming replicas, each instance a pod run by the
//! instance manager (`bulwark instance`). Every change of primary is numbered by an epoch,
//! written to status (a resourceVersion compare-and-set) before any side effect, so an instance
//! refuses commands of an older epoch and a new operator leader resumes an interrupted failover.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Go duration in whole seconds or milliseconds, at most 6 digits so that CEL's `duration()`
/// always parses it.
pub const DURATION_PATTERN: &str = r"^[0-9]{1,6}(ms|s)$";
/// An unsigned Kubernetes quantity in plain, decimal-SI (`k`, `M`, `G`, …) or binary-SI (`Ki`,
/// `Mi`, `Gi`, …) form: no sign, no exponent, no milli.
pub const QUANTITY_PATTERN: &str = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[kMGTPE])?$";
/// An unquoted PostgreSQL identifier that needs no quoting: lowercase, at most 63 bytes.
pub const IDENTIFIER_PATTERN: &str = r"^[a-z_][a-z0-9_]{0,62}$";
/// A DNS label (RFC 1123), as pod names are.
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

/// PostgreSQL settings Bulwark writes itself: replication, recovery, TLS and where files are.
pub const MANAGED_PARAMETERS: [&str; 24] = [
    "listen_addresses",
    "port",
    "unix_socket_directories",
    "wal_level",
    "hot_standby",
    "synchronous_standby_names",
    "synchronous_commit",
    "primary_conninfo",
    "primary_slot_name",
    "restore_command",
    "recovery_target_timeline",
    "wal_log_hints",
    "archive_mode",
    "ssl",
    "ssl_cert_file",
    "ssl_key_file",
    "ssl_ca_file",
    "hba_file",
    "data_directory",
    "max_wal_senders",
    "wal_receiver_timeout",
    "wal_sender_timeout",
    "wal_receiver_status_interval",
    "wal_retrieve_retry_interval",
];
// The rule and message spell out MANAGED_PARAMETERS (attributes take literals); a test checks
// that all three agree.
const MANAGED_PARAMETERS_RULE: &str = "!self.exists(k, k in ['listen_addresses', 'port', 'unix_socket_directories', 'wal_level', 'hot_standby', 'synchronous_standby_names', 'synchronous_commit', 'primary_conninfo', 'primary_slot_name', 'restore_command', 'recovery_target_timeline', 'wal_log_hints', 'archive_mode', 'ssl', 'ssl_cert_file', 'ssl_key_file', 'ssl_ca_file', 'hba_file', 'data_directory', 'max_wal_senders', 'wal_receiver_timeout', 'wal_sender_timeout', 'wal_receiver_status_interval', 'wal_retrieve_retry_interval'])";
const MANAGED_PARAMETERS_MESSAGE: &str = "parameters must not set what Bulwark manages: listen_addresses, port, unix_socket_directories, wal_level, hot_standby, synchronous_standby_names, synchronous_commit, primary_conninfo, primary_slot_name, restore_command, recovery_target_timeline, wal_log_hints, archive_mode, ssl, ssl_cert_file, ssl_key_file, ssl_ca_file, hba_file, data_directory, max_wal_senders, wal_receiver_timeout, wal_sender_timeout, wal_receiver_status_interval, wal_retrieve_retry_interval";

/// A replicated PostgreSQL cluster: one primary, streaming replicas, automatic failover and
/// planned switchover.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bulwark.dev",
    version = "v1alpha1",
    kind = "DatabaseCluster",
    namespaced,
    status = "DatabaseClusterStatus",
    shortname = "dbc",
    category = "bulwark",
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyInstances"
    ),
    printcolumn(name = "Instances", type_ = "integer", json_path = ".spec.instances"),
    printcolumn(name = "Primary", type_ = "string", json_path = ".status.primary"),
    printcolumn(name = "Epoch", type_ = "integer", json_path = ".status.epoch"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.synchronous) || self.synchronous.count < self.instances").message("synchronous.count must be less than instances: it counts replicas, and a cluster of N instances has N-1"))]
#[x_kube(validation = Rule::new(ISOLATION_WITHIN_DELAY_RULE).message(ISOLATION_WITHIN_DELAY_MESSAGE))]
#[x_kube(validation = Rule::new(STANDBY_LIMITS_NOT_LOWERED_RULE).message(STANDBY_LIMITS_NOT_LOWERED_MESSAGE))]
pub struct DatabaseClusterSpec {
    /// The database engine: `postgresql`, the only one.
    #[serde(default)]
    pub engine: Engine,
    /// PostgreSQL major version, 13 to 17. It must match the image's.
    #[serde(default = "default_postgres_version")]
    #[x_kube(validation = Rule::new("self >= 13 && self <= 17").message("postgresVersion must be a PostgreSQL major version from 13 to 17"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("postgresVersion cannot change: a new major version needs pg_upgrade, which Bulwark does not run; create a new cluster and move the data"))]
    pub postgres_version: u32,
    /// Number of instances, 1 to 9: one primary, the rest streaming replicas.
    #[serde(default = "default_instances")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 9").message("instances must be from 1 to 9"))]
    pub instances: u32,
    /// Container image of the instance pods: PostgreSQL of `postgresVersion` and the `bulwark`
    /// binary. The operator chooses one when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,
    pub storage: Storage,
    /// Synchronous replication: commits wait for `count` replicas. Asynchronous when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous: Option<Synchronous>,
    #[serde(default)]
    pub failover: Failover,
    /// A primary that has heard from neither the API server nor any replica for this long stops
    /// acknowledging writes (it fences itself). From `1s` to `60s`, in `s` or `ms`, and at least
    /// 2s below `failover.delay` (one check period and one check timeout), so an isolated
    /// primary has stopped before a replica is promoted; synchronous `required` replication is
    /// safe without that margin.
    #[serde(default = "default_isolation_timeout")]
    #[schemars(length(min = 2, max = 8), pattern(DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('60s')").message("isolationTimeout must be from 1s to 60s"))]
    pub isolation_timeout: String,
    /// PostgreSQL settings (`postgresql.conf`), for example `max_connections: "200"`. The
    /// settings Bulwark manages (replication, recovery, TLS, file locations) are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    // Bounded so the API server can bound the CEL rules' cost.
    #[schemars(extend("maxProperties" = 100, "additionalProperties" = {"type": "string", "maxLength": 1024}))]
    #[x_kube(
        validation = Rule::new("self.all(k, k.matches('^[a-z_][a-z0-9_.]{0,62}$'))").message("parameter names are lowercase PostgreSQL setting names"),
        validation = Rule::new(MANAGED_PARAMETERS_RULE).message(MANAGED_PARAMETERS_MESSAGE),
        validation = Rule::new("self.all(k, !self[k].matches('[\\r\\n]'))").message("parameter values must be one line"),
        validation = Rule::new("['max_connections', 'max_worker_processes', 'max_prepared_transactions', 'max_locks_per_transaction'].all(k, !(k in self) || self[k].matches('^[0-9]{1,9}$'))").message("max_connections, max_worker_processes, max_prepared_transactions and max_locks_per_transaction must be whole numbers"),
    )]
    pub parameters: BTreeMap<String, String>,
    #[serde(default)]
    pub bootstrap: Bootstrap,
    /// Compute resources of each instance's PostgreSQL container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Scheduling constraints of the instance pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Request a planned switchover to this instance (a pod name such as `db-2`):
    /// `kubectl patch databasecluster db --type merge -p '{"spec":{"switchoverTo":"db-2"}}'`.
    /// Each spec generation asks at most once (`status.switchoverGeneration`): a failover away
    /// from it later does not switch back, but another spec change while it is set asks again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL_PATTERN))]
    pub switchover_to: Option<String>,
}

fn default_postgres_version() -> u32 {
    15
}

fn default_instances() -> u32 {
    3
}

fn default_isolation_timeout() -> String {
    "2s".into()
}

/// The isolated primary checks its contacts every 0.5 s, each check waiting at most 1 s: it has
/// fenced itself by `isolationTimeout` + 1.5 s, before a failover `failover.delay` later.
/// Synchronous `required` replication needs no timing: the old primary cannot gather its
/// acknowledgements once the replicas have moved to the new epoch.
/// The settings a hot standby must hold at least at its primary's values (PostgreSQL refuses to
/// run a replica below them). A rolling change replaces the replicas first, so it can raise
/// them; lowering them would need the primary restarted first, with an outage, which Bulwark
/// does not do. An unset one is PostgreSQL's default (the same from version 13 to 17).
const STANDBY_LIMITS_NOT_LOWERED_RULE: &str = "['max_connections', 'max_worker_processes', 'max_prepared_transactions', 'max_locks_per_transaction'].all(k, !((has(self.parameters) && k in self.parameters) ? self.parameters[k] : {'max_connections': '100', 'max_worker_processes': '8', 'max_prepared_transactions': '0', 'max_locks_per_transaction': '64'}[k]).matches('^[0-9]{1,9}$') || !((has(oldSelf.parameters) && k in oldSelf.parameters) ? oldSelf.parameters[k] : {'max_connections': '100', 'max_worker_processes': '8', 'max_prepared_transactions': '0', 'max_locks_per_transaction': '64'}[k]).matches('^[0-9]{1,9}$') || int((has(self.parameters) && k in self.parameters) ? self.parameters[k] : {'max_connections': '100', 'max_worker_processes': '8', 'max_prepared_transactions': '0', 'max_locks_per_transaction': '64'}[k]) >= int((has(oldSelf.parameters) && k in oldSelf.parameters) ? oldSelf.parameters[k] : {'max_connections': '100', 'max_worker_processes': '8', 'max_prepared_transactions': '0', 'max_locks_per_transaction': '64'}[k]))";
const STANDBY_LIMITS_NOT_LOWERED_MESSAGE: &str = "max_connections, max_worker_processes, max_prepared_transactions and max_locks_per_transaction can be raised but not lowered (removing one returns it to PostgreSQL's default): a replica must allow at least what its primary does, and lowering them needs the primary restarted first, which Bulwark does not do";

const ISOLATION_WITHIN_DELAY_RULE: &str = "(has(self.synchronous) && self.synchronous.durability == 'required') || !has(self.failover) || duration(self.isolationTimeout) + duration('2s') <= duration(self.failover.delay)";
const ISOLATION_WITHIN_DELAY_MESSAGE: &str = "failover.delay must be at least isolationTimeout + 2s unless synchronous durability is required: an isolated primary must have fenced itself before a replica is promoted";

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// PostgreSQL with physical streaming replication.
    #[default]
    Postgresql,
}

/// Each instance's volume, a PersistentVolumeClaim holding the data directory.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Size of each instance's volume, a Kubernetes quantity such as `1Gi` or `500M`. Raising it
    /// grows the volumes, if their StorageClass allows expansion; it cannot shrink.
    #[schemars(length(min = 1, max = 32), pattern(QUANTITY_PATTERN))]
    #[x_kube(validation = Rule::new("!isQuantity(self) || !isQuantity(oldSelf) || quantity(self).compareTo(quantity(oldSelf)) >= 0").message("storage.size can grow but not shrink: a volume cannot be made smaller"))]
    pub size: String,
    /// StorageClass of the volumes; the cluster's default StorageClass when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
    /// What happens to the volumes when the DatabaseCluster is deleted: `Delete` (the default)
    /// deletes them with it; `Retain` keeps them, and the data, until deleted by hand.
    #[serde(default)]
    pub reclaim: Reclaim,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reclaim {
    /// The volumes are deleted with the cluster.
    #[default]
    Delete,
    /// The volumes outlive the cluster.
    Retain,
}

/// Synchronous replication: a commit returns once `count` replicas (any of them) have it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Synchronous {
    /// How many replicas must confirm each commit (`ANY count` in `synchronous_standby_names`).
    /// Less than `instances`.
    #[schemars(range(min = 1))]
    pub count: u32,
    /// `required` (the default): commits wait for `count` replicas and never degrade, so an
    /// acknowledged commit survives the primary's loss. `preferred`: with fewer than `count`
    /// replicas streaming, commits stop waiting (asynchronous) until enough are back; a
    /// Condition says so while it lasts.
    #[serde(default)]
    pub durability: Durability,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Commits wait for `count` replicas; never degrade.
    #[default]
    Required,
    /// Degrade to asynchronous while too few replicas are streaming.
    Preferred,
}

/// When and to which replica the primary fails over.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Failover {
    /// How long the primary must be unreachable before a replica is promoted. From `1s` to
    /// `300s`, in `s` or `ms`.
    #[serde(default = "default_failover_delay")]
    #[schemars(length(min = 2, max = 8), pattern(DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('300s')").message("failover.delay must be from 1s to 300s"))]
    pub delay: String,
    /// A replica whose replay lags the primary's last known WAL position by more than this many
    /// bytes (a quantity such as `16Mi`) is never chosen. Any replica may be chosen when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), pattern(QUANTITY_PATTERN))]
    pub max_lag: Option<String>,
}

fn default_failover_delay() -> String {
    "4s".into()
}

impl Default for Failover {
    fn default() -> Self {
        Self {
            delay: default_failover_delay(),
            max_lag: None,
        }
    }
}

/// The database and role created with the cluster. Their credentials are in the Secret
/// `<cluster>-app`, with keys `username`, `password`, `host`, `port`, `dbname` and `uri`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Bootstrap {
    /// The application database, a lowercase identifier (not `postgres`, `template0` or
    /// `template1`).
    #[serde(default = "default_app")]
    #[schemars(length(min = 1, max = 63), pattern(IDENTIFIER_PATTERN))]
    #[x_kube(validation = Rule::new("!(self in ['postgres', 'template0', 'template1'])").message("bootstrap.database must not be postgres, template0 or template1"))]
    pub database: String,
    /// The role that owns it, a lowercase identifier (not `postgres`, `bulwark_replication` or
    /// one starting with `pg_`).
    #[serde(default = "default_app")]
    #[schemars(length(min = 1, max = 63), pattern(IDENTIFIER_PATTERN))]
    #[x_kube(validation = Rule::new("self != 'postgres' && self != 'bulwark_replication' && !self.startsWith('pg_')").message("bootstrap.owner must not be postgres or bulwark_replication, nor start with pg_"))]
    pub owner: String,
}

fn default_app() -> String {
    "app".into()
}

impl Default for Bootstrap {
    fn default() -> Self {
        Self {
            database: default_app(),
            owner: default_app(),
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Creating`, `Healthy`, `Updating` (a rolling update or scale-down under way), `Degraded`,
    /// `FailingOver`, `SwitchingOver` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The instance (pod name) that is primary in `epoch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// Number of the current primary's term: advanced with a resourceVersion compare-and-set at
    /// every failover and switchover, and refused by instances when older than theirs.
    #[serde(default)]
    pub epoch: u64,
    /// Instances running and ready in their role.
    #[serde(default)]
    pub ready_instances: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub instances: Vec<InstanceStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverProgress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<FailoverRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` whose `switchoverTo` was acted on: a request is carried out
    /// once, and a later failover does not send the primary back to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover_generation: Option<i64>,
}

/// One instance as its instance manager last reported it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// Pod name, for example `db-0`.
    pub name: String,
    /// `primary`, `replica`, `fenced`, `demoted` or `unknown`.
    pub role: String,
    /// Serving in its role: accepting writes as primary, or streaming as a replica.
    pub ready: bool,
    /// The newest epoch the instance has accepted a command of.
    #[serde(default)]
    pub epoch: u64,
    /// PostgreSQL timeline the instance is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<i32>,
    /// Last WAL position received from the primary (a replica), for example `0/3000148`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_lsn: Option<String>,
    /// Last WAL position replayed (a replica).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_lsn: Option<String>,
    /// Bytes of WAL the instance's replay is behind the primary's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    /// Why the instance is not ready, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A failover or switchover under way, written with the epoch (compare-and-set on
/// resourceVersion) before any side effect, so a new leader resumes it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverProgress {
    /// The instance that was primary.
    pub from: String,
    /// The instance being promoted.
    pub to: String,
    /// The epoch the promoted instance is primary in.
    pub epoch: u64,
    /// Why, for example `primary unreachable for 2s` or `requested by spec.switchoverTo`.
    pub reason: String,
    /// `failover` or `switchover`.
    pub kind: String,
    /// To the microsecond: a failover takes about a second.
    pub started: MicroTime,
    /// The step reached, for example `fencing`, `promoting` or `repointing replicas`.
    pub step: String,
}

/// The last failover or switchover that completed.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverRecord {
    /// The instance that was primary.
    pub from: String,
    /// The instance that was promoted.
    pub to: String,
    /// The epoch it became primary in.
    pub epoch: u64,
    pub reason: String,
    /// `failover` or `switchover`.
    pub kind: String,
    pub started: MicroTime,
    /// From `started` until the new primary accepted writes.
    pub duration_seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::{Value, json};

    /// Every `x-kubernetes-validations` (rule, message) pair in a schema.
    fn validations(schema: &Value, found: &mut Vec<(String, String)>) {
        match schema {
            Value::Object(map) => {
                if let Some(Value::Array(rules)) = map.get("x-kubernetes-validations") {
                    for rule in rules {
                        found.push((
                            rule["rule"].as_str().unwrap_or_default().to_string(),
                            rule["message"].as_str().unwrap_or_default().to_string(),
                        ));
                    }
                }
                map.values().for_each(|v| validations(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| validations(v, found)),
            _ => {}
        }
    }

    fn schema() -> Value {
        let crd = serde_json::to_value(DatabaseCluster::crd()).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    #[test]
    fn minimal_spec_gets_the_defaults() {
        let spec: DatabaseClusterSpec =
            serde_json::from_value(json!({"storage": {"size": "1Gi"}})).unwrap();
        assert_eq!(spec.instances, 3);
        assert_eq!(spec.postgres_version, 15);
        assert_eq!(spec.engine, Engine::Postgresql);
        assert_eq!(spec.failover.delay, "4s");
        assert_eq!(spec.failover.max_lag, None);
        assert_eq!(spec.isolation_timeout, "2s");
        assert_eq!(spec.storage.reclaim, Reclaim::Delete);
        assert_eq!(spec.bootstrap, Bootstrap::default());
        assert_eq!(spec.bootstrap.database, "app");
        assert!(spec.parameters.is_empty() && spec.synchronous.is_none());
        assert_eq!(
            serde_json::to_value(&spec).unwrap()["engine"],
            json!("postgresql")
        );
    }

    #[test]
    fn enums_serialise_as_documented() {
        assert_eq!(
            serde_json::to_value(Durability::Preferred).unwrap(),
            "preferred"
        );
        assert_eq!(
            serde_json::to_value(Durability::default()).unwrap(),
            "required"
        );
        assert_eq!(serde_json::to_value(Reclaim::Retain).unwrap(), "Retain");
        assert_eq!(serde_json::to_value(Reclaim::default()).unwrap(), "Delete");
    }

    /// The API server applies these defaults, so they must be in the schema, not only in serde.
    #[test]
    fn schema_carries_the_defaults() {
        let spec = &schema()["properties"]["spec"];
        let properties = &spec["properties"];
        assert_eq!(properties["engine"]["default"], "postgresql");
        assert_eq!(properties["postgresVersion"]["default"], 15);
        assert_eq!(properties["instances"]["default"], 3);
        assert_eq!(properties["isolationTimeout"]["default"], "2s");
        assert_eq!(properties["failover"]["default"], json!({"delay": "4s"}));
        assert_eq!(
            properties["bootstrap"]["default"],
            json!({"database": "app", "owner": "app"})
        );
        assert_eq!(
            properties["storage"]["properties"]["reclaim"]["default"],
            "Delete"
        );
        assert_eq!(spec["required"], json!(["storage"]));
    }

    #[test]
    fn every_validation_message_is_in_the_schema() {
        let mut found = Vec::new();
        validations(&schema(), &mut found);
        let messages: Vec<&str> = found.iter().map(|(_, m)| m.as_str()).collect();
        for expected in [
            "postgresVersion must be a PostgreSQL major version from 13 to 17",
            "instances must be from 1 to 9",
            "synchronous.count must be less than instances: it counts replicas, and a cluster of N instances has N-1",
            "failover.delay must be from 1s to 300s",
            "isolationTimeout must be from 1s to 60s",
            ISOLATION_WITHIN_DELAY_MESSAGE,
            "parameter names are lowercase PostgreSQL setting names",
            MANAGED_PARAMETERS_MESSAGE,
            "parameter values must be one line",
            "bootstrap.database must not be postgres, template0 or template1",
            "bootstrap.owner must not be postgres or bulwark_replication, nor start with pg_",
            "postgresVersion cannot change: a new major version needs pg_upgrade, which Bulwark does not run; create a new cluster and move the data",
            "max_connections, max_worker_processes, max_prepared_transactions and max_locks_per_transaction must be whole numbers",
            STANDBY_LIMITS_NOT_LOWERED_MESSAGE,
            "storage.size can grow but not shrink: a volume cannot be made smaller",
        ] {
            assert!(messages.contains(&expected), "missing rule: {expected}");
        }
        assert_eq!(found.len(), 15, "{found:#?}");
    }

    #[test]
    fn managed_parameters_rule_and_message_name_the_same_settings() {
        let quoted: Vec<String> = MANAGED_PARAMETERS
            .iter()
            .map(|p| format!("'{p}'"))
            .collect();
        assert_eq!(
            MANAGED_PARAMETERS_RULE,
            format!("!self.exists(k, k in [{}])", quoted.join(", "))
        );
        assert_eq!(
            MANAGED_PARAMETERS_MESSAGE,
            format!(
                "parameters must not set what Bulwark manages: {}",
                MANAGED_PARAMETERS.join(", ")
            )
        );
    }
}
