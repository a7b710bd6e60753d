//! What the PostgreSQL tests share: the `postgres` user instances run as, and the instance
//! manager's status over its command API, and a DatabaseCluster under test.

use crate::eventually;
use crate::node::network::GATEWAY;
use anyhow::Context as _;
use bulwark_chaos::node_agent::{Partition, Side};
use bulwark_controllers::postgres::client::Endpoint;
use bulwark_crds::postgres::DatabaseCluster;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::json;
use std::time::Duration;

/// This machine's PostgreSQL (Debian's bookworm major): what instance pods, the instance tests
/// and Patroni run.
pub const POSTGRES_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The `postgres` user's uid and gid (Debian's postgresql package creates it): instances run as
/// it, as they would in a pod.
pub fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("the postgres user (Debian's postgresql package)");
    let fields: Vec<&str> = line.split(':').collect();
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

/// The chart's operator in `namespace` with `replicas` pods, its instances running as this
/// machine's `postgres` user (they run its PostgreSQL on the node agents).
pub fn install_operator(
    kubeconfig: &std::path::Path,
    namespace: &str,
    replicas: usize,
    values: &[&str],
) -> anyhow::Result<crate::chart::Release> {
    let (uid, gid) = postgres_user();
    let user = format!("postgres.runAsUser={uid}");
    let group = format!("postgres.runAsGroup={gid}");
    let values: Vec<&str> = [user.as_str(), group.as_str()]
        .into_iter()
        .chain(values.iter().copied())
        .collect();
    crate::chart::Release::install_operator(kubeconfig, namespace, replicas, &values)
}

/// `GET <api>/status` of an instance manager, or `None` while it does not answer.
pub async fn instance_status(http: &reqwest::Client, api: &str) -> Option<serde_json::Value> {
    http.get(format!("{api}/status"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// A DatabaseCluster under test: its status, and waits for what a fault should lead to.
pub struct Database {
    pub api: Api<DatabaseCluster>,
    pub name: String,
}

/// The cluster the fault tests and the benchmark run: three instances, synchronous `ANY 1`,
/// `required` durability, failover after `delay`.
pub fn three_synchronous_instances(name: &str, delay: Duration) -> DatabaseCluster {
    serde_json::from_value(json!({
        "apiVersion": "bulwark.dev/v1alpha1", "kind": "DatabaseCluster",
        "metadata": {"name": name},
        "spec": {
            "instances": 3,
            "storage": {"size": "1Gi"},
            "synchronous": {"count": 1, "durability": "required"},
            "failover": {"delay": format!("{}s", delay.as_secs())},
        },
    }))
    .expect("a valid DatabaseCluster")
}

impl Database {
    pub fn new(api: Api<DatabaseCluster>, name: &str) -> Self {
        Database {
            api,
            name: name.to_string(),
        }
    }

    pub async fn status(&self) -> serde_json::Value {
        serde_json::to_value(self.api.get(&self.name).await.unwrap().status).unwrap()
    }

    /// Waits for every instance to be ready in the current epoch, the cluster Healthy; the error
    /// carries the [`diagnostics`].
    pub async fn healthy(&self, within: Duration) -> anyhow::Result<serde_json::Value> {
        let healthy = eventually(within, &format!("{} healthy", self.name), || async {
            let s = self.status().await;
            let epoch = s["epoch"].as_u64()?;
            let instances = s["instances"].as_array()?;
            (s["phase"] == "Healthy"
                && s["readyInstances"].as_u64()? == instances.len() as u64
                && instances
                    .iter()
                    .all(|i| i["ready"] == true && i["epoch"].as_u64() == Some(epoch)))
            .then_some(s)
        })
        .await;
        match healthy {
            Ok(status) => Ok(status),
            Err(e) => {
                let client = self.api.clone().into_client();
                let ns = self.api.namespace().unwrap_or_default().to_string();
                Err(anyhow::anyhow!(
                    "{e:#}\n{}",
                    diagnostics(&client, &ns, &self.name).await
                ))
            }
        }
    }

    /// Waits for a primary other than `from`, in an epoch after `epoch`, serving writes.
    pub async fn failed_over(&self, from: &str, epoch: u64) -> anyhow::Result<serde_json::Value> {
        eventually(
            Duration::from_secs(60),
            "a new primary in a newer epoch",
            || async {
                let s = self.status().await;
                (s["primary"].as_str()? != from
                    && s["epoch"].as_u64()? > epoch
                    && s["conditions"]
                        .as_array()?
                        .iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True"))
                .then_some(s)
            },
        )
        .await
    }

    /// Waits for `member` to be a ready replica of the current epoch.
    pub async fn rejoined(&self, member: &str) {
        eventually(
            Duration::from_secs(120),
            &format!("{member} rejoins as a replica"),
            || async {
                let s = self.status().await;
                let epoch = s["epoch"].as_u64()?;
                let instance = s["instances"]
                    .as_array()?
                    .iter()
                    .find(|i| i["name"] == member)?
                    .clone();
                (instance["role"] == "replica"
                    && instance["epoch"].as_u64()? == epoch
                    && instance["ready"] == true)
                    .then_some(())
            },
        )
        .await
        .unwrap();
    }

    /// How the application connects: through the `-rw` Service (see
    /// [`bulwark_controllers::postgres::client::application`]).
    pub async fn application(&self, client: &kube::Client, ns: &str) -> Endpoint {
        bulwark_controllers::postgres::client::application(client, ns, &self.name)
            .await
            .unwrap()
    }
}

/// The failure of one instance's node network: `member` cut off from every other pod of its
/// namespace (the other instances and the operator) and from the local control plane's API
/// server, until the returned partitions are healed.
pub async fn isolate(
    pods: &Api<Pod>,
    member: &str,
    api_server_port: u16,
) -> anyhow::Result<[Partition; 2]> {
    let mut address = None;
    let mut others = vec![];
    for pod in pods.list(&ListParams::default()).await? {
        let Some(ip) = pod.status.and_then(|s| s.pod_ip) else {
            continue;
        };
        if pod.metadata.name.as_deref() == Some(member) {
            address = Some(ip);
        } else {
            others.push(ip);
        }
    }
    let address = address.with_context(|| format!("{member} has no address"))?;
    let side = std::slice::from_ref(&address);
    let api_server = Side::HostPort(GATEWAY.to_string(), api_server_port);
    Ok([
        Partition::start(side, &Side::Pods(others))?,
        Partition::start(side, &api_server)?,
    ])
}

/// The node-agent container ID of an instance pod (what the chaos injectors take).
pub fn container_of(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .container_id
        .clone()
        .unwrap()
}

/// What a failed DatabaseCluster test needs to be understood: the cluster's status, the
/// namespace's Events, each pod's state and the tail of its log (the operator's and the
/// instances').
pub async fn diagnostics(client: &kube::Client, ns: &str, cluster: &str) -> String {
    use k8s_openapi::api::core::v1::Event;
    use kube::ResourceExt;
    let mut out = String::new();
    let clusters: Api<DatabaseCluster> = Api::namespaced(client.clone(), ns);
    if let Ok(c) = clusters.get(cluster).await {
        out += &format!(
            "status: {}\n",
            serde_json::to_string_pretty(&c.status).unwrap_or_default()
        );
    }
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    for event in events
        .list(&ListParams::default())
        .await
        .into_iter()
        .flatten()
    {
        out += &format!(
            "event {} {}: {}\n",
            event.involved_object.name.unwrap_or_default(),
            event.reason.unwrap_or_default(),
            event.message.unwrap_or_default()
        );
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for pod in pods
        .list(&ListParams::default())
        .await
        .into_iter()
        .flatten()
    {
        let name = pod.name_any();
        out += &format!(
            "pod {name}: {}\n",
            serde_json::to_string(&pod.status).unwrap_or_default()
        );
        let params = kube::api::LogParams {
            tail_lines: Some(40),
            ..Default::default()
        };
        if let Ok(log) = pods.logs(&name, &params).await {
            out += &format!("log {name}:\n{log}\n");
        }
    }
    out
}

/// A namespace of its own with the chart's operator in it: where each DatabaseCluster test runs.
pub struct DatabaseTest {
    pub client: kube::Client,
    pub ns: String,
    pub clusters: Api<DatabaseCluster>,
    pub release: crate::chart::Release,
}

impl DatabaseTest {
    /// `None` off the local control plane: instance pods run this machine's PostgreSQL on its
    /// node agents, so the test says it is skipped.
    pub async fn start(prefix: &str, operator_replicas: usize) -> Option<Self> {
        Self::start_with(prefix, operator_replicas, &[]).await
    }

    /// Creates `cluster` in the test's namespace.
    pub async fn create(&self, cluster: &DatabaseCluster) -> Database {
        self.clusters
            .create(&kube::api::PostParams::default(), cluster)
            .await
            .unwrap();
        Database::new(
            self.clusters.clone(),
            cluster.metadata.name.as_deref().unwrap_or_default(),
        )
    }

    /// As [`DatabaseTest::start`], with extra chart `values` (`key=value`).
    pub async fn start_with(
        prefix: &str,
        operator_replicas: usize,
        values: &[&str],
    ) -> Option<Self> {
        let cluster = crate::cluster();
        if cluster.local_api_server_port().is_none() {
            eprintln!(
                "skipped: instance pods run this machine's PostgreSQL on the local node agents"
            );
            return None;
        }
        let client = cluster.client().await;
        let ns = cluster.namespace(prefix).await;
        let release =
            install_operator(&cluster.kubeconfig, &ns, operator_replicas, values).unwrap();
        Some(DatabaseTest {
            clusters: Api::namespaced(client.clone(), &ns),
            client,
            ns,
            release,
        })
    }
}

/// The messages of the Warning Events in `ns` about `object` with `reason`.
pub async fn warnings(client: &kube::Client, ns: &str, object: &str, reason: &str) -> Vec<String> {
    events(client, ns, object, reason, "Warning").await
}

/// The messages of the Events of `type_` (`Normal`, `Warning`) and `reason` about `object`.
pub async fn events(
    client: &kube::Client,
    ns: &str,
    object: &str,
    reason: &str,
    type_: &str,
) -> Vec<String> {
    use k8s_openapi::api::core::v1::Event;
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some(object)
                && e.reason.as_deref() == Some(reason)
                && e.type_.as_deref() == Some(type_)
        })
        .filter_map(|e| e.message)
        .collect()
}
