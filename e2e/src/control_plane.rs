//! A real Kubernetes control plane on this machine: etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, kube-proxy and CoreDNS; node agents (`bulwark-node`, one per zone) whose pods
//! run as real processes; and kwok nodes (status only, tainted, for scale tests).

use crate::binaries::binary;
use crate::node::images::{BIND9_IMAGE, BULWARK_IMAGE, ImageTable, POSTGRES_IMAGE, TESTPOD_IMAGE};
use crate::node::{agent::PROVISIONER, host::PodNetwork, network, services};
use crate::operator::{bulwark_binary, workspace_binary};
use crate::pki::{self, Pki};
use crate::process::{Process, free_port, stop_all};
use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Kwok stages: nodes become Ready, scheduled pods become Running with an IP, deleted pods go.
/// Whether this process runs a started local control plane (and so the pod network's gateway).
static RUNNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn running_in_this_process() -> bool {
    RUNNING.load(std::sync::atomic::Ordering::SeqCst)
}

const KWOK_STAGES: &str = include_str!("../kwok-stages.yaml");
/// One real node (and one kwok node) per zone, as in kind-config.yaml.
pub const ZONES: [&str; 3] = ["a", "b", "c"];
/// Taint on kwok nodes: only pods that tolerate it (scale tests) are "run" by kwok.
pub const KWOK_TAINT: &str = "bulwark.dev/simulated";
/// The default StorageClass: a directory on the node the scheduler picked.
pub const STORAGE_CLASS: &str = "node-directory";

pub fn node_name(zone: &str) -> String {
    format!("node-{zone}")
}

pub struct ControlPlane {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub server: String,
    /// Started in order; stopped in reverse (Drop of the Vec runs front to back, so reversed here).
    processes: Vec<Process>,
    /// The node agents, by node name; stopped and started by node faults.
    agents: Vec<(String, Process)>,
    agent_args: Vec<(String, Vec<String>, PathBuf)>,
    pod_network: Option<PodNetwork>,
    pub started_in: Duration,
}

/// Root of all local control plane directories; each run gets `<root>/<pid>`.
fn runs_root() -> PathBuf {
    std::env::temp_dir().join("bulwark-control-plane")
}

/// Removes directories of runs whose process is gone (a SIGKILLed test binary leaves them).
fn sweep_stale_runs() {
    let Ok(entries) = std::fs::read_dir(runs_root()) else {
        return;
    };
    for entry in entries.flatten() {
        let pid: Option<i32> = entry.file_name().to_str().and_then(|n| n.parse().ok());
        // SAFETY: kill(pid, 0) only checks for existence.
        if pid.is_some_and(|pid| unsafe { libc::kill(pid, 0) } != 0) {
            crate::node::agent::unmount_under(&entry.path());
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl ControlPlane {
    /// Starts everything and waits until pods can be scheduled onto Ready kwok nodes.
    pub fn start() -> Result<Self> {
        let started = Instant::now();
        sweep_stale_runs();
        let pod_network = PodNetwork::take(&runs_root())?;
        let dir = runs_root().join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("logs"))?;
        let bins = [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok",
            "kube-proxy",
            "coredns",
        ]
        .map(|name| binary(name).map(|path| (name, path)))
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
        let bin = |name: &str| {
            bins.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, p)| p.clone())
                .unwrap()
        };

        let (pki, authority) = Pki::generate(&dir.join("pki"))?;
        let etcd_port = free_port()?;
        let etcd_peer_port = free_port()?;
        let api_port = free_port()?;
        // Pods reach the API server at the pod network's gateway, so it listens there.
        let server = format!("https://{}:{api_port}", network::GATEWAY);
        let write_kubeconfig = |name: &str, cn: &str, groups: &[&str]| -> Result<PathBuf> {
            let path = dir.join(format!("{name}.kubeconfig"));
            std::fs::write(
                &path,
                pki::kubeconfig(&server, &pki.ca_cert, &authority.client(cn, groups)?),
            )?;
            Ok(path)
        };
        let kubeconfig = write_kubeconfig("admin", "bulwark-admin", &["system:masters"])?;
        let kcm_kubeconfig =
            write_kubeconfig("controller-manager", "system:kube-controller-manager", &[])?;
        let scheduler_kubeconfig = write_kubeconfig("scheduler", "system:kube-scheduler", &[])?;
        let kwok_kubeconfig = write_kubeconfig("kwok", "kwok", &["system:masters"])?;
        let proxy_kubeconfig = write_kubeconfig("kube-proxy", "system:kube-proxy", &[])?;
        let coredns_kubeconfig = write_kubeconfig("coredns", "coredns", &["system:masters"])?;
        let netpol_kubeconfig = write_kubeconfig(
            "network-policies",
            "bulwark-network-policies",
            &["system:masters"],
        )?;
        let kubelet_client =
            authority.client("kube-apiserver-kubelet-client", &["system:masters"])?;
        let stages = dir.join("kwok-stages.yaml");
        std::fs::write(&stages, KWOK_STAGES)?;

        let mut plane = Self {
            dir: dir.clone(),
            kubeconfig: kubeconfig.clone(),
            server: server.clone(),
            processes: vec![],
            agents: vec![],
            agent_args: vec![],
            pod_network: Some(pod_network),
            started_in: Duration::ZERO,
        };
        let p = |path: &Path| path.display().to_string();
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
        plane.spawn(
            "etcd",
            &bin("etcd"),
            vec![
                "--name=bulwark".into(),
                format!("--data-dir={}", p(&dir.join("etcd"))),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=bulwark={peer_url}"),
                // A throwaway test store: durability across power loss buys nothing, fsync costs a lot.
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
        )?;
        plane.spawn(
            "kube-apiserver",
            &bin("kube-apiserver"),
            vec![
                format!("--etcd-servers={etcd_url}"),
                format!("--bind-address={}", network::GATEWAY),
                // The `kubernetes` Service's endpoint, which kube-proxy routes pods to.
                format!("--advertise-address={}", network::GATEWAY),
                format!("--secure-port={api_port}"),
                // `kubectl logs` reaches the node agents over TLS, verified both ways.
                format!("--kubelet-client-certificate={}", p(&kubelet_client.cert)),
                format!("--kubelet-client-key={}", p(&kubelet_client.key)),
                format!("--kubelet-certificate-authority={}", p(&pki.ca_cert)),
                "--kubelet-preferred-address-types=InternalIP".into(),
                format!("--tls-cert-file={}", p(&pki.serving_cert)),
                format!("--tls-private-key-file={}", p(&pki.serving_key)),
                format!("--client-ca-file={}", p(&pki.ca_cert)),
                // Lets the controller-manager and scheduler load their authentication config quietly.
                format!("--requestheader-client-ca-file={}", p(&pki.ca_cert)),
                "--requestheader-allowed-names=front-proxy-client".into(),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", p(&pki.service_account_pub)),
                format!(
                    "--service-account-signing-key-file={}",
                    p(&pki.service_account_key)
                ),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                "--authorization-mode=Node,RBAC".into(),
                "--allow-privileged=true".into(),
                "--profiling=false".into(),
                "--v=0".into(),
            ],
        )?;
        plane.wait_for_apiserver()?;
        eprintln!(
            "control plane: kube-apiserver ready after {:.1}s",
            started.elapsed().as_secs_f64()
        );
        // Flags the controller-manager and scheduler share: who they are, where they serve.
        let component = |kubeconfig: &Path| -> Result<Vec<String>> {
            Ok(vec![
                format!("--kubeconfig={}", p(kubeconfig)),
                format!("--authentication-kubeconfig={}", p(kubeconfig)),
                format!("--authorization-kubeconfig={}", p(kubeconfig)),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()?),
                "--leader-elect=false".into(),
                "--profiling=false".into(),
            ])
        };
        let mut kcm_args = component(&kcm_kubeconfig)?;
        kcm_args.extend([
            "--use-service-account-credentials=true".into(),
            format!(
                "--service-account-private-key-file={}",
                p(&pki.service_account_key)
            ),
            format!("--root-ca-file={}", p(&pki.ca_cert)),
            format!("--cluster-signing-cert-file={}", p(&pki.ca_cert)),
            format!("--cluster-signing-key-file={}", p(&pki.ca_key)),
            // Node agents renew their Lease every 2 s; a stopped node is NotReady after 10 s.
            "--node-monitor-grace-period=10s".into(),
            "--node-monitor-period=1s".into(),
            // At its default 20 requests/s the EndpointSlice controller took over 4 minutes to
            // write the scale benchmark's 5,000 slices (and as long again for the Endpoints).
            "--kube-api-qps=200".into(),
            "--kube-api-burst=400".into(),
        ]);
        plane.spawn(
            "kube-controller-manager",
            &bin("kube-controller-manager"),
            kcm_args,
        )?;
        plane.spawn(
            "kube-scheduler",
            &bin("kube-scheduler"),
            component(&scheduler_kubeconfig)?,
        )?;
        plane.spawn(
            "kwok",
            &bin("kwok"),
            vec![
                format!("--kubeconfig={}", p(&kwok_kubeconfig)),
                format!("--config={}", p(&stages)),
                "--manage-all-nodes=false".into(),
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
                "--cidr=10.244.0.1/16".into(),
                "--node-ip=10.0.0.1".into(),
                // Renewed every quarter of this; the controller-manager allows 10 s without one.
                "--node-lease-duration-seconds=8".into(),
                format!("--server-address=127.0.0.1:{}", free_port()?),
            ],
        )?;
        crate::block_on(plane.create_nodes_and_wait())?;
        eprintln!(
            "control plane: kwok nodes created after {:.1}s",
            started.elapsed().as_secs_f64()
        );
        crate::block_on(async {
            let client = plane.client().await?;
            services::create_kube_dns_service(&client).await?;
            create_storage_class(&client).await
        })?;
        eprintln!("control plane: building node agent and pod programs (cargo, fresh is a no-op)");
        let images = ImageTable::default()
            .with(BULWARK_IMAGE, &bulwark_binary()?)
            .with(
                TESTPOD_IMAGE,
                &workspace_binary("bulwark-e2e", "bulwark-testpod")?,
            )
            // DatabaseCluster instance pods: this machine's PostgreSQL, run by the `bulwark`
            // their init container copies in.
            .with(
                POSTGRES_IMAGE,
                &PathBuf::from(crate::postgres::POSTGRES_BIN).join("postgres"),
            )
            // An authoritative server run in the cluster (the DnsServerOutage drill's target).
            .with(BIND9_IMAGE, Path::new("/usr/sbin/named"));
        for (index, zone) in ZONES.iter().enumerate() {
            let node = node_name(zone);
            let node_kubeconfig = write_kubeconfig(
                &node,
                &format!("system:node:{node}"),
                &["system:nodes", "system:masters"],
            )?;
            let serving =
                authority.serving(&format!("{node}-serving"), &[&network::GATEWAY.to_string()])?;
            let mut args = vec![
                "agent".to_string(),
                format!("--node={node}"),
                format!("--zone={zone}"),
                format!("--pod-cidr={}", network::pod_cidr(index)),
                format!("--dir={}", p(&dir.join("nodes").join(&node))),
                format!("--cluster-dns={}", services::CLUSTER_DNS),
                format!("--tls-cert={}", p(&serving.cert)),
                format!("--tls-key={}", p(&serving.key)),
                format!("--client-ca={}", p(&pki.ca_cert)),
            ];
            args.extend(images.to_args());
            plane.agent_args.push((node.clone(), args, node_kubeconfig));
            plane.start_node(&node)?;
        }
        eprintln!(
            "control plane: node agents started after {:.1}s",
            started.elapsed().as_secs_f64()
        );
        plane.processes.push(services::start_kube_proxy(
            &dir,
            &proxy_kubeconfig,
            &node_name(ZONES[0]),
        )?);
        plane
            .processes
            .push(services::start_coredns(&dir, &coredns_kubeconfig)?);
        plane.processes.push(Process::spawn(
            "network-policies",
            &workspace_binary("bulwark-e2e", "bulwark-node")?,
            &["network-policies".to_string()],
            &[("KUBECONFIG", netpol_kubeconfig.as_path())],
            &dir.join("logs/network-policies.log"),
        )?);
        crate::block_on(plane.wait_for_nodes(ZONES.len() * 2))?;
        plane.started_in = started.elapsed();
        RUNNING.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(plane)
    }

    fn spawn(&mut self, name: &str, program: &Path, args: Vec<String>) -> Result<()> {
        let log = self.dir.join("logs").join(format!("{name}.log"));
        self.processes
            .push(Process::spawn(name, program, &args, &[], &log)?);
        Ok(())
    }

    /// Fails with the failing component's log tail if any process died.
    fn check_alive(&mut self) -> Result<()> {
        self.processes
            .iter_mut()
            .try_for_each(Process::check_alive)?;
        self.agents
            .iter_mut()
            .try_for_each(|(_, p)| p.check_alive())
    }

    pub async fn client(&self) -> Result<kube::Client> {
        crate::client_for(&self.kubeconfig).await
    }

    fn wait_for_apiserver(&mut self) -> Result<()> {
        let kubeconfig = self.kubeconfig.clone();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            // A component that died will not recover: fail at once with its log.
            self.check_alive()?;
            let ready = crate::block_on(async {
                let client = crate::client_for(&kubeconfig).await.ok()?;
                let request = http::Request::get("/readyz").body(Vec::new()).ok()?;
                let answer =
                    tokio::time::timeout(Duration::from_secs(2), client.request_text(request))
                        .await;
                answer.ok()?.ok()
            });
            if ready.is_some_and(|body| body.trim() == "ok") {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "kube-apiserver not ready after 90s; logs in {}",
                self.dir.join("logs").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    async fn create_nodes_and_wait(&mut self) -> Result<()> {
        let client = self.client().await?;
        let nodes: Api<Node> = Api::all(client.clone());
        for zone in ZONES {
            let node: Node = serde_json::from_value(serde_json::json!({
                "metadata": {
                    "name": format!("kwok-node-{zone}"),
                    "annotations": {"kwok.x-k8s.io/node": "fake"},
                    "labels": {
                        "kubernetes.io/hostname": format!("kwok-node-{zone}"),
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "topology.kubernetes.io/zone": zone,
                        "type": "kwok",
                    },
                },
                "spec": {"taints": [{"key": KWOK_TAINT, "value": "true", "effect": "NoSchedule"}]},
            }))?;
            nodes
                .create(&PostParams::default(), &node)
                .await
                .context("creating kwok node")?;
        }
        Ok(())
    }

    /// Waits until `count` nodes are Ready and pods can be created (default ServiceAccount).
    async fn wait_for_nodes(&mut self, count: usize) -> Result<()> {
        let client = self.client().await?;
        let nodes: Api<Node> = Api::all(client.clone());
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            self.check_alive()?;
            let ready = nodes
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .filter(|n| crate::node_is_ready(n))
                .count();
            // The controller-manager creates each namespace's default ServiceAccount; pods need it.
            let default_sa = Api::<ServiceAccount>::namespaced(client.clone(), "default")
                .get_opt("default")
                .await?;
            if ready == count && default_sa.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let not_ready: Vec<String> = nodes
                    .list(&ListParams::default())
                    .await?
                    .items
                    .iter()
                    .filter(|n| !crate::node_is_ready(n))
                    .filter_map(|n| n.metadata.name.clone())
                    .collect();
                anyhow::bail!(
                    "after 90s only {ready}/{count} nodes are Ready (not Ready: {not_ready:?}; default ServiceAccount present: {})",
                    default_sa.is_some()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Starts (or restarts) the node agent of `node`.
    /// The process ID of component `name` (`kube-apiserver`, `etcd`, ...), for benchmarks that
    /// report what each component spent.
    pub fn pid_of(&self, name: &str) -> Option<i32> {
        self.processes.iter().find(|p| p.name == name)?.pid()
    }

    pub fn start_node(&mut self, node: &str) -> Result<()> {
        let (_, args, kubeconfig) = self
            .agent_args
            .iter()
            .find(|(name, _, _)| name == node)
            .with_context(|| format!("no node agent named {node}"))?;
        let log = self.dir.join("logs").join(format!("{node}.log"));
        let agent = workspace_binary("bulwark-e2e", "bulwark-node")?;
        let process = Process::spawn(
            node,
            &agent,
            args,
            &[("KUBECONFIG", kubeconfig.as_path())],
            &log,
        )?;
        self.agents.retain(|(name, _)| name != node);
        self.agents.push((node.to_string(), process));
        Ok(())
    }

    /// Stops a node the way a machine dies: its agent and every pod process are SIGKILLed, so its
    /// heartbeats stop and its pods stop answering. `start_node` brings it back.
    pub fn kill_node(&mut self, node: &str) {
        if let Some((_, mut process)) = self
            .agents
            .iter()
            .position(|(n, _)| n == node)
            .map(|i| self.agents.remove(i))
        {
            process.signal(libc::SIGKILL);
            process.wait_exit(Duration::from_secs(5));
        }
    }

    /// Stops every component (newest first) and removes the run directory; the logs of a start
    /// that failed are kept in `<runs root>/last-failed-start` so the error's log paths still help.
    pub fn stop(&mut self) {
        RUNNING.store(false, std::sync::atomic::Ordering::SeqCst);
        // Node agents first (their pods go with them, reported to a still running API
        // server), then every component at once.
        let mut agents: Vec<Process> = self.agents.drain(..).map(|(_, agent)| agent).collect();
        stop_all(&mut agents, Duration::from_secs(10));
        stop_all(&mut self.processes, Duration::from_secs(10));
        self.processes.clear();
        if self.started_in.is_zero() && self.dir.exists() {
            let kept = runs_root().join("last-failed-start");
            let _ = std::fs::remove_dir_all(&kept);
            let _ = std::fs::rename(self.dir.join("logs"), &kept);
            eprintln!(
                "control plane: start failed; logs kept in {}",
                kept.display()
            );
        }
        crate::node::agent::unmount_under(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
        drop(self.pod_network.take());
    }
}

/// The default StorageClass, provisioned by the node agents.
async fn create_storage_class(client: &kube::Client) -> Result<()> {
    let class: k8s_openapi::api::storage::v1::StorageClass =
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": STORAGE_CLASS,
                         "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": PROVISIONER,
            "volumeBindingMode": "WaitForFirstConsumer",
            "reclaimPolicy": "Delete",
            "allowVolumeExpansion": true,
        }))?;
    Api::all(client.clone())
        .create(&PostParams::default(), &class)
        .await
        .context("creating the default StorageClass")?;
    Ok(())
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}
