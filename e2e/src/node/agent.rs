//! The node agent's long-running part: registers its Node, keeps its Lease and status fresh (so
//! the controller-manager sees it die), runs a worker per pod bound to it, and provisions the
//! PersistentVolumes of claims the scheduler placed on it.

use super::images::ImageTable;
use super::network;
use super::pod::{self, NodeContext};
use anyhow::{Context, Result};
use bulwark_controllers::events::Recorder;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// The provisioner name of the default StorageClass the local control plane creates.
pub const PROVISIONER: &str = "bulwark.dev/node-directory";
/// Lease renewal period; the controller-manager runs with a short grace period to match.
const LEASE_RENEW: Duration = Duration::from_secs(2);
const LEASE_SECONDS: i32 = 10;
const STATUS_EVERY: Duration = Duration::from_secs(10);

pub struct AgentConfig {
    pub node: String,
    pub zone: String,
    pub pod_cidr: String,
    pub dir: PathBuf,
    pub images: ImageTable,
    pub cluster_dns: Option<Ipv4Addr>,
    /// Where pods reach the API server as the `kubernetes` Service (host, port).
    pub kubernetes_service: (String, u16),
    /// The port this agent serves container logs on for the API server (0: any free one, which
    /// the Node then advertises), and its TLS files.
    pub kubelet_port: u16,
    pub tls: super::logs::TlsFiles,
}

fn service_env(host: &str, port: u16) -> Vec<(String, String)> {
    let url = format!("tcp://{host}:{port}");
    [
        ("KUBERNETES_SERVICE_HOST", host.to_string()),
        ("KUBERNETES_SERVICE_PORT", port.to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS", port.to_string()),
        ("KUBERNETES_PORT", url.clone()),
        (&format!("KUBERNETES_PORT_{port}_TCP"), url),
        (&format!("KUBERNETES_PORT_{port}_TCP_PROTO"), "tcp".into()),
        (
            &format!("KUBERNETES_PORT_{port}_TCP_PORT"),
            port.to_string(),
        ),
        (
            &format!("KUBERNETES_PORT_{port}_TCP_ADDR"),
            host.to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

pub async fn run(mut config: AgentConfig, client: kube::Client) -> Result<()> {
    std::fs::create_dir_all(config.dir.join("pods"))?;
    // Bound before registering, so the advertised port is one this agent really holds.
    let address = std::net::SocketAddr::from((network::GATEWAY, config.kubelet_port));
    let logs_listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the containerLogs endpoint {address}"))?;
    config.kubelet_port = logs_listener.local_addr()?.port();
    register(&client, &config).await?;
    let ctx = Arc::new(NodeContext {
        client: client.clone(),
        node: config.node.clone(),
        pod_cidr: config.pod_cidr.clone(),
        host_ip: network::GATEWAY.to_string(),
        dir: config.dir.clone(),
        images: config.images.clone(),
        agent: std::env::current_exe()?,
        cluster_dns: config.cluster_dns,
        service_env: service_env(&config.kubernetes_service.0, config.kubernetes_service.1),
        used_ips: Mutex::new(Default::default()),
        recorder: Recorder::new(client.clone(), "bulwark-node", &config.node),
        pods: Mutex::new(Default::default()),
        live_logs: Mutex::new(Default::default()),
    });
    let tls = super::logs::TlsFiles {
        cert: config.tls.cert.clone(),
        key: config.tls.key.clone(),
        client_ca: config.tls.client_ca.clone(),
    };
    let config = Arc::new(config);
    tokio::try_join!(
        super::logs::serve(ctx.clone(), logs_listener, tls),
        heartbeat(client.clone(), config.clone()),
        run_pods(ctx.clone()),
        provision(client.clone(), config.clone()),
    )?;
    Ok(())
}

fn ready_condition(now: &Timestamp) -> serde_json::Value {
    json!({"type": "Ready", "status": "True", "reason": "KubeletReady",
           "message": "bulwark node agent is posting ready status",
           "lastHeartbeatTime": now.to_string(), "lastTransitionTime": now.to_string()})
}

async fn register(client: &kube::Client, config: &AgentConfig) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": config.node, "labels": {
            "kubernetes.io/hostname": config.node,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "topology.kubernetes.io/zone": config.zone,
            "bulwark.dev/node-agent": "true",
        }},
        "spec": {"podCIDR": config.pod_cidr, "podCIDRs": [config.pod_cidr]},
    });
    nodes
        .patch(
            &config.node,
            &PatchParams::apply("bulwark-node").force(),
            &Patch::Apply(&node),
        )
        .await
        .context("registering the Node")?;
    post_status(&nodes, config, true).await
}

async fn post_status(nodes: &Api<Node>, config: &AgentConfig, full: bool) -> Result<()> {
    let now = Timestamp::now();
    let pressure = |type_: &str, reason: &str| {
        json!({"type": type_, "status": "False", "reason": reason,
               "lastHeartbeatTime": now.to_string(), "lastTransitionTime": now.to_string()})
    };
    let mut status = json!({"conditions": [
        ready_condition(&now),
        pressure("MemoryPressure", "KubeletHasSufficientMemory"),
        pressure("DiskPressure", "KubeletHasNoDiskPressure"),
        pressure("PIDPressure", "KubeletHasSufficientPID"),
    ]});
    if full {
        let capacity =
            json!({"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "50Gi"});
        status["capacity"] = capacity.clone();
        status["allocatable"] = capacity;
        status["addresses"] = json!([
            {"type": "InternalIP", "address": network::GATEWAY.to_string()},
            {"type": "Hostname", "address": config.node},
        ]);
        status["daemonEndpoints"] = json!({"kubeletEndpoint": {"Port": config.kubelet_port}});
        status["nodeInfo"] = json!({
            "machineID": config.node, "systemUUID": config.node, "bootID": Timestamp::now().to_string(),
            "kernelVersion": "", "osImage": "bulwark node agent", "containerRuntimeVersion": "bulwark-node://1",
            "kubeletVersion": crate::binaries::pinned("KUBERNETES_VERSION"),
            "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
        });
    }
    // Merge keeps what the controller-manager owns (taints live in spec, so are untouched).
    nodes
        .patch_status(
            &config.node,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await
        .context("posting node status")?;
    Ok(())
}

async fn heartbeat(client: kube::Client, config: Arc<AgentConfig>) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client.clone());
    let mut last_status = tokio::time::Instant::now();
    loop {
        let node_uid = nodes
            .get(&config.node)
            .await
            .ok()
            .and_then(|n| n.metadata.uid);
        let lease = Lease {
            metadata: kube::api::ObjectMeta {
                name: Some(config.node.clone()),
                owner_references: node_uid.map(|uid| {
                    vec![
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                            api_version: "v1".into(),
                            kind: "Node".into(),
                            name: config.node.clone(),
                            uid,
                            ..Default::default()
                        },
                    ]
                }),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                holder_identity: Some(config.node.clone()),
                lease_duration_seconds: Some(LEASE_SECONDS),
                renew_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                    Timestamp::now(),
                )),
                ..Default::default()
            }),
        };
        let mut lease = serde_json::to_value(lease)?;
        lease["apiVersion"] = json!("coordination.k8s.io/v1");
        lease["kind"] = json!("Lease");
        if let Err(e) = leases
            .patch(
                &config.node,
                &PatchParams::apply("bulwark-node").force(),
                &Patch::Apply(&lease),
            )
            .await
        {
            warn!(error = %e, "renewing the node lease failed");
        }
        if last_status.elapsed() >= STATUS_EVERY {
            if let Err(e) = post_status(&nodes, &config, false).await {
                warn!(error = %format!("{e:#}"), "node status heartbeat failed");
            }
            last_status = tokio::time::Instant::now();
        }
        tokio::time::sleep(LEASE_RENEW).await;
    }
}

/// One worker per pod bound to this node, fed the pod's latest object.
async fn run_pods(ctx: Arc<NodeContext>) -> Result<()> {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node));
    let mut events = watcher(pods, config).boxed();
    let mut workers: HashMap<String, (watch::Sender<Option<Pod>>, tokio::task::JoinHandle<()>)> =
        HashMap::new();
    let mut listed: Vec<String> = vec![];
    while let Some(event) = events.next().await {
        workers.retain(|_, (_, task)| !task.is_finished());
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                warn!(error = %e, "pod watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut deliver = |pod: Pod| {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let key = format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default()
            );
            ctx.pods.lock().unwrap().insert(key, uid.clone());
            match workers.get(&uid) {
                Some((tx, _)) => {
                    let _ = tx.send(Some(pod));
                }
                None => {
                    info!(pod = ?pod.metadata.name, "pod bound to this node");
                    let (tx, rx) = watch::channel(Some(pod));
                    let task = tokio::spawn(pod::run(ctx.clone(), rx));
                    workers.insert(uid, (tx, task));
                }
            }
        };
        match event {
            watcher::Event::Init => listed.clear(),
            watcher::Event::InitApply(pod) => {
                listed.push(pod.metadata.uid.clone().unwrap_or_default());
                deliver(pod);
            }
            watcher::Event::InitDone => {
                // Pods deleted while the watch was down.
                for (uid, (tx, _)) in &workers {
                    if !listed.contains(uid) {
                        let _ = tx.send(None);
                    }
                }
            }
            watcher::Event::Apply(pod) => deliver(pod),
            watcher::Event::Delete(pod) => {
                if let Some((tx, _)) = workers.get(&pod.metadata.uid.clone().unwrap_or_default()) {
                    let _ = tx.send(None);
                }
            }
        }
    }
    Ok(())
}

/// Dynamic provisioning for the default StorageClass: a claim the scheduler placed on this node
/// gets a directory here and a `local` PersistentVolume pinned to this node; a released volume
/// whose policy is Delete loses both.
async fn provision(client: kube::Client, config: Arc<AgentConfig>) -> Result<()> {
    let claims: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let root = config.dir.join("volumes");
    loop {
        if let Err(e) = provision_once(&claims, &volumes, &config, &root).await {
            warn!(error = %format!("{e:#}"), "provisioning pass failed");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn provision_once(
    claims: &Api<PersistentVolumeClaim>,
    volumes: &Api<PersistentVolume>,
    config: &AgentConfig,
    root: &std::path::Path,
) -> Result<()> {
    let listed_claims = claims.list(&ListParams::default()).await?.items;
    for claim in &listed_claims {
        let annotations = claim.metadata.annotations.clone().unwrap_or_default();
        let ours = annotations.get("volume.kubernetes.io/selected-node") == Some(&config.node)
            && annotations
                .get("volume.kubernetes.io/storage-provisioner")
                .map(String::as_str)
                == Some(PROVISIONER);
        let spec = claim.spec.clone().unwrap_or_default();
        let bound = spec.volume_name.as_deref().is_some_and(|v| !v.is_empty());
        if !ours || bound || claim.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let uid = claim.metadata.uid.clone().unwrap_or_default();
        let name = format!("pvc-{uid}");
        if volumes.get_opt(&name).await?.is_some() {
            continue;
        }
        let dir = root.join(&name);
        std::fs::create_dir_all(&dir)?;
        let size = spec
            .resources
            .and_then(|r| r.requests)
            .and_then(|r| r.get("storage").cloned())
            .map_or_else(|| "1Gi".to_string(), |q| q.0);
        let class_name = spec.storage_class_name.clone().unwrap_or_default();
        let class = storage_class(volumes, &class_name).await;
        if is_enforced(class.as_ref()) {
            mount_sized(&dir, &size, false)?;
        }
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
        let reclaim = class
            .and_then(|c| c.reclaim_policy)
            .unwrap_or_else(|| "Delete".into());
        let class = class_name;
        let pv = json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": spec.access_modes.clone().unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
                "persistentVolumeReclaimPolicy": reclaim,
                "storageClassName": class,
                "volumeMode": "Filesystem",
                "local": {"path": dir.display().to_string()},
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                             "namespace": claim.metadata.namespace, "name": claim.metadata.name, "uid": uid},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [config.node]}]}]}},
            },
        });
        volumes
            .create(&PostParams::default(), &serde_json::from_value(pv)?)
            .await?;
        info!(volume = %name, claim = ?claim.metadata.name, "provisioned");
    }
    let listed_volumes = volumes.list(&ListParams::default()).await?.items;
    for claim in &listed_claims {
        if let Err(e) = expand(claims, volumes, &listed_volumes, root, claim).await {
            warn!(claim = ?claim.metadata.name, error = %format!("{e:#}"), "expanding failed");
        }
    }
    for volume in listed_volumes {
        let ours = volume
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("pv.kubernetes.io/provisioned-by"))
            .is_some_and(|p| p == PROVISIONER);
        let spec = volume.spec.clone().unwrap_or_default();
        let path = spec
            .local
            .as_ref()
            .map(|l| std::path::PathBuf::from(&l.path));
        let here = path.as_ref().is_some_and(|p| p.starts_with(root));
        let released = volume.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
        if ours
            && here
            && released
            && spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete")
        {
            if let Some(path) = path {
                unmount_under(&path);
                let _ = std::fs::remove_dir_all(path);
            }
            let name = volume.metadata.name.clone().unwrap_or_default();
            volumes.delete(&name, &DeleteParams::default()).await?;
            info!(volume = %name, "released volume deleted with its directory");
        }
    }
    Ok(())
}

/// Volume expansion, as an external resizer does for its driver (the controller-manager has no
/// in-tree plugin for these volumes and leaves them to one): a bound claim of this node asking
/// for more than its volume holds gets it (a sized volume's filesystem grows at once, online),
/// then the volume's and the claim's recorded capacity follow. The API server has already
/// checked that the StorageClass allows expansion.
async fn expand(
    claims: &Api<PersistentVolumeClaim>,
    volumes: &Api<PersistentVolume>,
    listed_volumes: &[PersistentVolume],
    root: &std::path::Path,
    claim: &PersistentVolumeClaim,
) -> Result<()> {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let quantity = |resources: Option<&std::collections::BTreeMap<String, Quantity>>| {
        resources
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.clone())
    };
    let bytes = |q: &Option<String>| {
        q.as_deref()
            .and_then(bulwark_controllers::postgres::cluster::quantity_bytes)
    };
    let spec = claim.spec.clone().unwrap_or_default();
    let Some(volume_name) = spec.volume_name.filter(|v| !v.is_empty()) else {
        return Ok(());
    };
    let requested = quantity(spec.resources.as_ref().and_then(|r| r.requests.as_ref()));
    let Some(volume) = listed_volumes
        .iter()
        .find(|v| v.metadata.name.as_deref() == Some(volume_name.as_str()))
    else {
        return Ok(());
    };
    let volume_spec = volume.spec.clone().unwrap_or_default();
    let ours = volume
        .annotations()
        .get("pv.kubernetes.io/provisioned-by")
        .is_some_and(|p| p == PROVISIONER);
    let Some(dir) = volume_spec
        .local
        .as_ref()
        .map(|l| std::path::PathBuf::from(&l.path))
        .filter(|p| p.starts_with(root))
    else {
        return Ok(());
    };
    let wanted = bytes(&requested);
    let grow = wanted > bytes(&quantity(volume_spec.capacity.as_ref()));
    // Until the claim is bound its capacity is the binder's to record.
    let recorded = bytes(&quantity(
        claim.status.as_ref().and_then(|s| s.capacity.as_ref()),
    ));
    let record = recorded.is_some() && recorded < wanted;
    let (true, Some(requested)) = (ours && (grow || record), requested) else {
        return Ok(());
    };
    if grow {
        let class = storage_class(volumes, &spec.storage_class_name.unwrap_or_default()).await;
        if is_enforced(class.as_ref()) {
            mount_sized(&dir, &requested, true)?;
        }
        let patch = json!({"spec": {"capacity": {"storage": requested}}});
        volumes
            .patch(&volume_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let patch = json!({"status": {"capacity": {"storage": requested}}});
    let namespace = claim.namespace().unwrap_or_default();
    Api::<PersistentVolumeClaim>::namespaced(claims.clone().into_client(), &namespace)
        .patch_status(
            &claim.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    info!(volume = %volume_name, claim = ?claim.metadata.name, size = %requested, "expanded");
    Ok(())
}

async fn storage_class(
    volumes: &Api<PersistentVolume>,
    class: &str,
) -> Option<k8s_openapi::api::storage::v1::StorageClass> {
    let classes: Api<k8s_openapi::api::storage::v1::StorageClass> =
        Api::all(volumes.clone().into_client());
    classes.get_opt(class).await.ok().flatten()
}

/// A StorageClass parameter of this provisioner: `enforced` gives each volume a filesystem of
/// the claim's size (tmpfs), so a workload can fill it as it would a real disk.
pub const CAPACITY_PARAMETER: &str = "bulwark.dev/capacity";

fn is_enforced(class: Option<&k8s_openapi::api::storage::v1::StorageClass>) -> bool {
    class
        .and_then(|c| c.parameters.as_ref())
        .and_then(|p| p.get(CAPACITY_PARAMETER))
        .is_some_and(|v| v == "enforced")
}

/// Gives `dir` a tmpfs of `quantity` bytes, or (`resize`) grows the one mounted there in
/// place: tmpfs takes a new size while mounted.
fn mount_sized(dir: &std::path::Path, quantity: &str, resize: bool) -> Result<()> {
    let bytes = bulwark_controllers::postgres::cluster::quantity_bytes(quantity)
        .with_context(|| format!("storage request {quantity:?}"))?;
    let mut mount = std::process::Command::new("mount");
    if resize {
        mount.args(["-o", &format!("remount,size={bytes}")]);
    } else {
        mount.args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={bytes}"),
            "bulwark-volume",
        ]);
    }
    let status = mount.arg(dir).status()?;
    anyhow::ensure!(
        status.success(),
        "{} a {quantity} tmpfs at {}",
        if resize { "growing to" } else { "mounting" },
        dir.display()
    );
    Ok(())
}

/// Detaches every mount at or below `dir` (sized volumes), deepest first, so the directory can
/// be removed.
pub fn unmount_under(dir: &std::path::Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .filter(|point| std::path::Path::new(point).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        if let Ok(path) = std::ffi::CString::new(point) {
            // SAFETY: a NUL-terminated path; MNT_DETACH only unhooks the mount.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
