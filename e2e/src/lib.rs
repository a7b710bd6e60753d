//! Bulwark's real-cluster test harness.
//!
//! By default each test binary starts one local control plane ([`control_plane`]) on first use
//! and shares it; every test gets its own namespace. With `BULWARK_E2E_KUBECONFIG` set, the same
//! tests run against that cluster instead (for example kind, see README.md).

pub mod apiserver;
pub mod binaries;
pub mod bind;
pub mod chart;
pub mod control_plane;
pub mod dns;
pub mod node;
pub mod operator;
pub mod patroni;
pub mod pki;
pub mod postgres;
pub mod process;
pub mod slo;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Runs `future` to completion on a fresh runtime in a fresh thread, so synchronous harness code
/// can make API calls whether or not the caller is already inside a tokio runtime.
pub fn block_on<T: Send>(future: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime")
                    .block_on(future)
            })
            .join()
            .expect("harness thread panicked")
    })
}

/// A client for the cluster a kubeconfig file points at.
pub async fn client_for(kubeconfig: &Path) -> Result<kube::Client> {
    let file = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

pub fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The cluster the tests of this binary share.
pub struct TestCluster {
    pub kubeconfig: PathBuf,
    /// `Some` when the harness started the control plane itself; taken at exit to stop it.
    pub local: Mutex<Option<control_plane::ControlPlane>>,
}

/// A failed start is remembered so later tests fail at once with the same reason.
static CLUSTER: OnceLock<Result<TestCluster, String>> = OnceLock::new();

extern "C" fn stop_shared_cluster() {
    // Statics are never dropped; stop the shared control plane when the test binary exits.
    // (If the binary is killed instead, PR_SET_PDEATHSIG takes the components down.)
    if let Some(Ok(cluster)) = CLUSTER.get() {
        drop(
            cluster
                .local
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
    }
}

/// The shared cluster, started on first use.
pub fn cluster() -> &'static TestCluster {
    let cluster = CLUSTER.get_or_init(|| {
        if let Some(path) = std::env::var_os("BULWARK_E2E_KUBECONFIG") {
            eprintln!("e2e: using the existing cluster in {}", Path::new(&path).display());
            return Ok(TestCluster { kubeconfig: path.into(), local: Mutex::new(None) });
        }
        eprintln!("e2e: starting the local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)");
        let plane = control_plane::ControlPlane::start().map_err(|e| format!("local control plane: {e:#}"))?;
        eprintln!("e2e: control plane ready in {:.1}s at {}", plane.started_in.as_secs_f64(), plane.server);
        // SAFETY: registering a plain extern "C" fn with atexit.
        unsafe { libc::atexit(stop_shared_cluster) };
        Ok(TestCluster { kubeconfig: plane.kubeconfig.clone(), local: Mutex::new(Some(plane)) })
    });
    cluster.as_ref().unwrap_or_else(|e| panic!("{e}"))
}

/// An address of this machine that the test cluster's pods reach, for the servers tests run on
/// the host (BIND9, Prometheus) when the operator runs as pods: the pod network's gateway while
/// this process runs the local control plane; on another cluster `BULWARK_E2E_HOST_ADDRESS` (for
/// kind, the Docker network's gateway). `None`: only host processes reach the host's servers.
pub fn host_address_for_pods() -> Option<std::net::IpAddr> {
    if let Some(address) = std::env::var_os("BULWARK_E2E_HOST_ADDRESS") {
        let address = address.to_string_lossy();
        return Some(address.parse().unwrap_or_else(|_| {
            panic!("BULWARK_E2E_HOST_ADDRESS={address:?} is not an IP address")
        }));
    }
    control_plane::running_in_this_process().then_some(node::network::GATEWAY.into())
}

impl TestCluster {
    pub async fn client(&self) -> kube::Client {
        client_for(&self.kubeconfig)
            .await
            .expect("client for the test cluster")
    }

    /// Acts on the local control plane this process runs (stopping and starting nodes).
    pub fn with_plane<T>(&self, act: impl FnOnce(&mut control_plane::ControlPlane) -> T) -> T {
        act(self
            .local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .expect("the local control plane"))
    }

    /// The API server's port when this process runs the local control plane (pods reach it at
    /// the gateway on that port; partitions name it).
    pub fn local_api_server_port(&self) -> Option<u16> {
        let local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        let server = &local.as_ref()?.server;
        server.rsplit(':').next()?.parse().ok()
    }

    /// Creates a fresh namespace `<prefix>-<n>` for one test that runs its own operators. It is
    /// labelled `bulwark.dev/exclude=true`, so a cluster-wide Bulwark installed on the cluster
    /// leaves it to them.
    pub async fn namespace(&self, prefix: &str) -> String {
        self.namespace_labelled(prefix, true).await
    }

    /// A fresh namespace a cluster-wide Bulwark manages (no exclusion label).
    pub async fn namespace_for_cluster_wide_release(&self, prefix: &str) -> String {
        self.namespace_labelled(prefix, false).await
    }

    async fn namespace_labelled(&self, prefix: &str, excluded: bool) -> String {
        let client = self.client().await;
        let api: Api<Namespace> = Api::all(client);
        let mut labels = serde_json::json!({"bulwark.dev/e2e": "true"});
        if excluded {
            labels[bulwark_controllers::scope::EXCLUDE_LABEL] = "true".into();
        }
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"generateName": format!("{prefix}-"), "labels": labels}
        }))
        .unwrap();
        let created = api
            .create(&PostParams::default(), &ns)
            .await
            .expect("create test namespace");
        created.metadata.name.unwrap()
    }
}

/// Applies every Bulwark CRD (server-side apply) and waits until each is Established.
pub async fn install_crds(client: &kube::Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("bulwark-e2e").force();
    for crd in bulwark_crds::all() {
        let name = crd.metadata.name.clone().unwrap();
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("applying CRD {name}"))?;
    }
    for crd in bulwark_crds::all() {
        let name = crd.metadata.name.unwrap();
        let established = kube::runtime::wait::await_condition(
            api.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .with_context(|| format!("CRD {name} not Established within 30s"))??;
    }
    Ok(())
}

/// Polls `check` every 50 ms until it returns `Some`, failing after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
