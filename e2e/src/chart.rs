//! Bulwark's Helm chart installed into a test's namespace: the operator runs as the chart's pods
//! (on the local control plane the node agents map its image to the built `bulwark` binary)
//! under the chart's ServiceAccount and RBAC, so a test that passes proves that RBAC is enough.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use crate::binaries::binary;

pub const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/bulwark");
/// The release name every test uses; releases differ by namespace.
pub const RELEASE: &str = "bulwark";

/// Runs helm with its cache and config kept out of the user's home.
pub fn helm(args: &[&str]) -> Output {
    let home = std::env::temp_dir().join("bulwark-e2e-helm");
    Command::new(binary("helm").expect("helm binary"))
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("run helm")
}

/// A command's stdout and stderr, for messages.
pub fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `--set` values for the operator's image: `BULWARK_E2E_IMAGE` (`repository:tag`, the image
/// loaded into kind), else the chart's default, which the local node agents map to the binary.
fn image_values() -> Vec<String> {
    match std::env::var("BULWARK_E2E_IMAGE") {
        Ok(image) => {
            let (repository, tag) = image.rsplit_once(':').unwrap_or((&image, "latest"));
            vec![
                format!("image.repository={repository}"),
                format!("image.tag={tag}"),
            ]
        }
        Err(_) => Vec::new(),
    }
}

/// An installed release; uninstalled (and its pods stopped) when dropped.
pub struct Release {
    pub namespace: String,
    kubeconfig: PathBuf,
    uninstall_on_drop: bool,
}

/// Settings for the operator tests want faster than a production install: short leader Leases,
/// so a test does not wait 15 s for a standby.
pub const FAST_LEADER_ELECTION: [&str; 3] = [
    "leaderElection.leaseDuration=6s",
    "leaderElection.renewDeadline=3s",
    "leaderElection.retryPeriod=1s",
];

impl Release {
    /// Installs the chart into `namespace`, managing only that namespace, with `replicas`
    /// operator pods and the extra `values` (`key=value`), and waits until every pod is ready.
    pub fn install_operator(
        kubeconfig: &Path,
        namespace: &str,
        replicas: usize,
        values: &[&str],
    ) -> Result<Self> {
        let mut sets = vec![
            format!("watchNamespace={namespace}"),
            format!("replicaCount={replicas}"),
        ];
        sets.extend(FAST_LEADER_ELECTION.iter().map(|v| v.to_string()));
        sets.extend(values.iter().map(|v| v.to_string()));
        Self::install(kubeconfig, namespace, &sets)
    }

    /// `helm install --wait` of the chart into `namespace` with `sets` (`key=value`).
    pub fn install(kubeconfig: &Path, namespace: &str, sets: &[String]) -> Result<Self> {
        let kubeconfig_arg = kubeconfig.display().to_string();
        let mut args = vec![
            "install",
            RELEASE,
            CHART,
            "--namespace",
            namespace,
            "--kubeconfig",
            &kubeconfig_arg,
            "--wait",
            "--timeout",
            "180s",
        ];
        let sets: Vec<String> = image_values()
            .into_iter()
            .chain(sets.iter().cloned())
            .collect();
        for set in &sets {
            args.extend(["--set", set]);
        }
        let output = helm(&args);
        if !output.status.success() {
            bail!("helm install into {namespace}: {}", output_text(&output));
        }
        Ok(Release {
            namespace: namespace.to_string(),
            kubeconfig: kubeconfig.to_path_buf(),
            uninstall_on_drop: true,
        })
    }

    /// Leaves the release installed when dropped (its cluster is about to go as a whole).
    pub fn keep(mut self) {
        self.uninstall_on_drop = false;
    }

    /// The operator's identity at the API server: the chart's ServiceAccount.
    pub fn service_account(&self) -> String {
        format!("system:serviceaccount:{}:{RELEASE}", self.namespace)
    }

    /// A client that acts as the operator's ServiceAccount (impersonation), for writes only
    /// Bulwark's identity is admitted to make.
    pub async fn client_as_operator(&self) -> Result<kube::Client> {
        let mut config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&self.kubeconfig)?,
            &Default::default(),
        )
        .await?;
        config.auth_info.impersonate = Some(self.service_account());
        Ok(kube::Client::try_from(config)?)
    }

    /// The operator's pods.
    pub async fn pods(&self, client: &kube::Client) -> Result<Vec<Pod>> {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &self.namespace);
        let selector =
            format!("app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name=bulwark");
        Ok(pods
            .list(&ListParams::default().labels(&selector))
            .await?
            .items)
    }

    /// `/metrics` of every operator pod, one after the other, read through the API server's pod
    /// proxy (so it works wherever the API server reaches pods, kind included); with no port
    /// named, the proxy uses the pod's first container port, the chart's metrics port.
    pub async fn metrics(&self, client: &kube::Client) -> Result<String> {
        let mut all = String::new();
        for pod in self.pods(client).await? {
            let name = pod.metadata.name.unwrap_or_default();
            let request = http::Request::get(format!(
                "/api/v1/namespaces/{}/pods/{name}/proxy/metrics",
                self.namespace
            ))
            .body(Vec::new())?;
            let text = client
                .request_text(request)
                .await
                .with_context(|| format!("/metrics of pod {name}"))?;
            all.push_str(&text);
        }
        Ok(all)
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if !self.uninstall_on_drop {
            return;
        }
        let kubeconfig = self.kubeconfig.display().to_string();
        let output = helm(&[
            "uninstall",
            RELEASE,
            "--namespace",
            &self.namespace,
            "--kubeconfig",
            &kubeconfig,
            "--wait",
            "--timeout",
            "60s",
        ]);
        if !output.status.success() {
            eprintln!(
                "helm uninstall in {}: {}",
                self.namespace,
                output_text(&output)
            );
        }
    }
}
