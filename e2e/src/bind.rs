//! A real BIND9 (Debian's `named`) on a loopback port, authoritative for one zone that accepts
//! RFC 2136 updates signed with one TSIG key.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use bulwark_controllers::dns::provider::{DnsProvider, ProviderError};
use bulwark_controllers::dns::rfc2136::Rfc2136;
use bulwark_crds::dns::TsigAlgorithm;

use crate::node::images::BIND9_IMAGE;
use crate::process::{Process, free_port};

pub const KEY_NAME: &str = "bulwark-test-key";

pub struct Bind {
    /// The first zone; `provider()` is for this one.
    pub zone: String,
    pub zones: Vec<String>,
    pub port: u16,
    /// The address `named` listens on besides loopback, and that DnsZones name.
    address: std::net::IpAddr,
    /// Base64 TSIG secret, as `tsig-keygen` prints it.
    pub secret: String,
    dir: tempfile::TempDir,
    process: Option<Process>,
}

impl Bind {
    /// Starts `named` for `zone` and waits until it answers for it.
    pub fn start(zone: &str) -> Result<Self> {
        Self::start_zones(&[zone])
    }

    /// Starts `named` authoritative for every zone in `zones`, all updatable with one key.
    pub fn start_zones(zones: &[&str]) -> Result<Self> {
        Self::start_in(&std::env::temp_dir(), zones)
    }

    /// Like [`Self::start_zones`], with its files in a new directory under `parent` (a run
    /// directory, so a sweep of stale runs removes them too).
    pub fn start_in(parent: &std::path::Path, zones: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bulwark-bind-")
            .tempdir_in(parent)?;
        let secret = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
        let zones: Vec<String> = zones
            .iter()
            .map(|z| z.trim_end_matches('.').to_owned())
            .collect();
        let mut bind = Bind {
            zone: zones[0].clone(),
            zones,
            port: free_port()?,
            address: crate::host_address_for_pods().unwrap_or([127, 0, 0, 1].into()),
            secret,
            dir,
            process: None,
        };
        bind.write_config()?;
        for zone in &bind.zones {
            bind.write_empty_zone(zone)?;
        }
        bind.run()?;
        Ok(bind)
    }

    /// Where DnsZones point: an address the cluster's pods reach when there is one (see
    /// [`crate::host_address_for_pods`]), else loopback.
    pub fn server(&self) -> String {
        format!("{}:{}", self.address, self.port)
    }

    /// A provider for the zone with the right key.
    pub fn provider(&self) -> Rfc2136 {
        self.provider_with(&self.zone, KEY_NAME, &self.secret)
    }

    pub fn provider_with(&self, zone: &str, key_name: &str, secret: &str) -> Rfc2136 {
        Rfc2136::new(
            &self.server(),
            zone,
            key_name,
            TsigAlgorithm::HmacSha256,
            secret,
            Duration::from_secs(2),
        )
        .expect("valid provider settings")
    }

    /// Runs `nsupdate` (bind9-utils) with these update lines, as an operator editing the zone by
    /// hand would: records Bulwark did not write.
    pub fn nsupdate(&self, updates: &[&str]) -> Result<()> {
        use std::io::Write;
        let mut script = format!("server 127.0.0.1 {}\nzone {}\n", self.port, self.zone);
        for update in updates {
            script.push_str(&format!("update {update}\n"));
        }
        script.push_str("send\n");
        let mut child = std::process::Command::new("nsupdate")
            .arg("-y")
            .arg(format!("hmac-sha256:{KEY_NAME}:{}", self.secret))
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running nsupdate (bind9-utils)")?;
        child.stdin.take().unwrap().write_all(script.as_bytes())?;
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!(
                "nsupdate failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop(Duration::from_secs(5));
        }
    }

    /// Stops and starts `named` on the same port; the zone and its update journal survive.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.run()
    }

    /// Stops `named`, puts back the first zone as it was before any update (a restore from an
    /// old backup), and starts it again.
    pub fn restore_empty_zone(&mut self) -> Result<()> {
        self.stop();
        let zone = self.zone.clone();
        let _ = std::fs::remove_file(self.journal(&zone));
        self.write_empty_zone(&zone)?;
        self.run()
    }

    pub fn log_tail(&self) -> String {
        self.process
            .as_ref()
            .map(|p| p.log_tail(30))
            .unwrap_or_default()
    }

    fn zone_file(&self, zone: &str) -> PathBuf {
        zone_file(self.dir.path(), zone)
    }

    fn journal(&self, zone: &str) -> PathBuf {
        journal(self.dir.path(), zone)
    }

    fn write_config(&self) -> Result<()> {
        let config = named_conf(
            self.dir.path(),
            self.port,
            &format!("127.0.0.1; {};", self.address),
            &self.secret,
            &self.zones,
        );
        std::fs::write(self.dir.path().join("named.conf"), config)?;
        Ok(())
    }

    fn write_empty_zone(&self, zone: &str) -> Result<()> {
        std::fs::write(self.zone_file(zone), empty_zone(zone))?;
        Ok(())
    }

    fn run(&mut self) -> Result<()> {
        let config = self.dir.path().join("named.conf");
        let named = PathBuf::from("/usr/sbin/named");
        if !named.exists() {
            bail!("BIND9 is not installed (/usr/sbin/named); `./dev deps` installs it");
        }
        let mut process = Process::spawn(
            "named",
            &named,
            &[
                "-g".into(),
                "-4".into(),
                "-c".into(),
                config.display().to_string(),
            ],
            &[],
            &self.dir.path().join("named.log"),
        )?;
        let provider = self.provider();
        let deadline = Instant::now() + Duration::from_secs(20);
        let probe = format!("probe.{}", self.zone);
        loop {
            process.check_alive()?;
            match crate::block_on(provider.read_fence(&probe)) {
                Ok(_) => break,
                // Not listening yet, or SERVFAIL while the zone loads.
                Err(ProviderError::Unreachable { .. } | ProviderError::Rejected { .. })
                    if Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("named did not come up:\n{}", process.log_tail(20))
                    });
                }
            }
        }
        self.process = Some(process);
        Ok(())
    }
}

fn zone_file(dir: &Path, zone: &str) -> PathBuf {
    dir.join(format!("{zone}.db"))
}

fn journal(dir: &Path, zone: &str) -> PathBuf {
    dir.join(format!("{zone}.db.jnl"))
}

/// `named.conf` for a primary of every zone in `zones`, its files in `dir`, listening on `port`
/// at `listen_on` (a BIND address match list), updatable with one TSIG key.
fn named_conf(dir: &Path, port: u16, listen_on: &str, secret: &str, zones: &[String]) -> String {
    let directory = dir.display();
    let mut config = format!(
        r#"options {{
    directory "{directory}";
    pid-file "{directory}/named.pid";
    session-keyfile "{directory}/session.key";
    managed-keys-directory "{directory}";
    listen-on port {port} {{ {listen_on} }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
    // external-dns lists a zone's records by AXFR (the benchmark compares with it).
    allow-transfer {{ key "{KEY_NAME}"; }};
}};
controls {{ }};
key "{KEY_NAME}" {{ algorithm hmac-sha256; secret "{secret}"; }};
"#
    );
    for zone in zones {
        config.push_str(&format!(
            r#"zone "{zone}" {{
    type primary;
    file "{zone_file}";
    journal "{journal}";
    allow-update {{ key "{KEY_NAME}"; }};
}};
"#,
            zone_file = zone_file(dir, zone).display(),
            journal = journal(dir, zone).display(),
        ));
    }
    config
}

/// A zone with only its SOA and NS records: what a new zone holds before any update.
fn empty_zone(zone: &str) -> String {
    format!(
        "$TTL 60\n@ IN SOA ns1.{zone}. hostmaster.{zone}. 1 60 60 600 60\n@ IN NS ns1.{zone}.\nns1 IN A 127.0.0.1\n"
    )
}

/// BIND9 run as a pod behind a Service, as a cluster that hosts its own authoritative server
/// has it: the server a DnsServerOutage drill can cut off. The pod runs this machine's `named`
/// (the node agents map [`BIND9_IMAGE`] to it), its zone copied from a ConfigMap into an
/// emptyDir so updates can be journaled.
pub struct BindPod {
    pub zone: String,
    /// The Service's cluster IP and port: what the DnsZone names.
    pub cluster_address: String,
    /// The pod's own address and port, reached from this machine (never filtered by policy).
    pub pod_address: String,
    pub pod: String,
    secret: String,
}

/// Where the pod finds its configuration, and keeps its zone and journal.
const POD_CONFIG: &str = "/etc/bind-pod";
const POD_DATA: &str = "/var/cache/bind-pod";

impl BindPod {
    /// Creates the ConfigMap, pod and Service `name` in `ns` serving `zone` with TSIG `secret`,
    /// and waits until the zone answers through the Service.
    pub async fn deploy(
        client: &kube::Client,
        ns: &str,
        name: &str,
        zone: &str,
        secret: &str,
    ) -> Result<Self> {
        use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
        use kube::api::{Api, PostParams};
        let zones = [zone.to_string()];
        let config_map: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "data": {
                "named.conf": named_conf(Path::new(POD_DATA), 53, "any;", secret, &zones),
                (format!("{zone}.db")): empty_zone(zone),
            },
        }))?;
        let labels = serde_json::json!({"app": name});
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "containers": [{
                    "name": "named",
                    "image": BIND9_IMAGE,
                    "command": ["sh", "-c", format!(
                        "cp {POD_CONFIG}/*.db {POD_DATA}/ && exec /usr/sbin/named -g -4 -c {POD_CONFIG}/named.conf"
                    )],
                    "volumeMounts": [
                        {"name": "config", "mountPath": POD_CONFIG},
                        {"name": "data", "mountPath": POD_DATA},
                    ],
                }],
                "volumes": [
                    {"name": "config", "configMap": {"name": name}},
                    {"name": "data", "emptyDir": {}},
                ],
            },
        }))?;
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"selector": labels, "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            ]},
        }))?;
        let create = PostParams::default();
        Api::<ConfigMap>::namespaced(client.clone(), ns)
            .create(&create, &config_map)
            .await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        pods.create(&create, &pod).await?;
        let service = Api::<Service>::namespaced(client.clone(), ns)
            .create(&create, &service)
            .await?;
        let cluster_ip = service
            .spec
            .and_then(|s| s.cluster_ip)
            .context("the Service got no cluster IP")?;
        let pod_ip = crate::eventually(
            Duration::from_secs(60),
            "the BIND9 pod's address",
            || async { pods.get(name).await.ok()?.status?.pod_ip },
        )
        .await?;
        let bind = BindPod {
            zone: zone.to_string(),
            cluster_address: format!("{cluster_ip}:53"),
            pod_address: format!("{pod_ip}:53"),
            pod: name.to_string(),
            secret: secret.to_string(),
        };
        let through_service = bind.provider_at(&bind.cluster_address);
        let probe = format!("probe.{zone}");
        crate::eventually(
            Duration::from_secs(60),
            "BIND9 in its pod to answer through its Service",
            || async { through_service.read_fence(&probe).await.ok().map(|_| ()) },
        )
        .await?;
        Ok(bind)
    }

    /// A provider talking to the pod directly, from this machine.
    pub fn provider(&self) -> Rfc2136 {
        self.provider_at(&self.pod_address)
    }

    fn provider_at(&self, server: &str) -> Rfc2136 {
        Rfc2136::new(
            server,
            &self.zone,
            KEY_NAME,
            TsigAlgorithm::HmacSha256,
            &self.secret,
            Duration::from_secs(2),
        )
        .expect("valid provider settings")
    }
}
