//! Patroni, the peer the database benchmark compares with: Debian's package, three members on
//! loopback running this machine's PostgreSQL as the `postgres` user, its etcd3 DCS on the etcd
//! the local control plane is built with, `synchronous_mode` on. Faults act on a member's whole
//! process tree (Patroni and the postmaster it detaches), as a machine crash or hang would.
//! Like Bulwark's instances, the members accept clients over TLS only, so the same probe pays
//! the same handshake on both.

use crate::binaries::binary;
use crate::postgres::POSTGRES_BIN;
use crate::process::{Process, free_port};
use anyhow::{Context, Result, bail};
use bulwark_controllers::postgres::client::Endpoint;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

const SUPERUSER_PASSWORD: &str = "bench-superuser";

/// Patroni's timing: the leader key's TTL, the HA loop's sleep, and DCS/PostgreSQL retries.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub ttl: u32,
    pub loop_wait: u32,
    pub retry_timeout: u32,
}

impl Timing {
    /// What Patroni runs with unless told otherwise.
    pub const DEFAULTS: Timing = Timing {
        ttl: 30,
        loop_wait: 10,
        retry_timeout: 10,
    };
    /// The smallest values Patroni's documentation allows (ttl ≥ 20, loop_wait ≥ 1,
    /// retry_timeout ≥ 3), within its rule loop_wait + 2 × retry_timeout ≤ ttl.
    pub const FASTEST: Timing = Timing {
        ttl: 20,
        loop_wait: 1,
        retry_timeout: 3,
    };
}

struct Member {
    name: String,
    config: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    postgres_port: u16,
    api: String,
    patroni: Option<Process>,
}

pub struct PatroniCluster {
    _etcd: Process,
    /// What the members' certificate (for `localhost`) is checked against.
    ca: String,
    members: Vec<Member>,
    http: reqwest::Client,
}

impl PatroniCluster {
    /// Starts etcd and three members under `dir` and waits until one leads and both others
    /// stream from it, one of them synchronously.
    pub async fn start(dir: &Path, timing: Timing) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (uid, gid) = crate::postgres::postgres_user();
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
        let pki = bulwark_controllers::postgres::pki::issue("patroni", vec!["localhost".into()])?;
        let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
        for (path, pem) in [(&cert, &pki.server.cert), (&key, &pki.server.key)] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(path, pem)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        }
        let etcd_port = free_port()?;
        let etcd_peer_port = free_port()?;
        let etcd = Process::spawn(
            "patroni-etcd",
            &binary("etcd")?,
            &[
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
                format!("--initial-cluster=default=http://127.0.0.1:{etcd_peer_port}"),
            ],
            &[],
            &dir.join("etcd.log"),
        )?;
        let mut members = vec![];
        for index in 1..=3 {
            let name = format!("m{index}");
            let postgres_port = free_port()?;
            let api_port = free_port()?;
            let config = dir.join(format!("{name}.yml"));
            let data_dir = dir.join(&name);
            // JSON is YAML: Patroni reads it as its configuration file.
            let document = json!({
                "scope": "bench",
                "name": name,
                "log": {"level": "INFO"},
                "restapi": {"listen": format!("127.0.0.1:{api_port}"), "connect_address": format!("127.0.0.1:{api_port}")},
                "etcd3": {"hosts": format!("127.0.0.1:{etcd_port}")},
                "bootstrap": {
                    "dcs": {
                        "ttl": timing.ttl,
                        "loop_wait": timing.loop_wait,
                        "retry_timeout": timing.retry_timeout,
                        "synchronous_mode": true,
                        "postgresql": {"use_pg_rewind": true, "parameters": {
                            "wal_log_hints": "on", "max_connections": 50,
                            "ssl": "on", "ssl_cert_file": cert, "ssl_key_file": key,
                        }},
                    },
                    "initdb": [{"encoding": "UTF8"}],
                },
                "postgresql": {
                    "listen": format!("127.0.0.1:{postgres_port}"),
                    "connect_address": format!("127.0.0.1:{postgres_port}"),
                    "data_dir": data_dir,
                    "bin_dir": POSTGRES_BIN,
                    "pgpass": dir.join(format!("{name}.pgpass")),
                    "pg_hba": [
                        "local all all trust",
                        "hostssl all all 127.0.0.1/32 scram-sha-256",
                        "hostssl replication all 127.0.0.1/32 scram-sha-256",
                    ],
                    "authentication": {
                        "superuser": {"username": "postgres", "password": SUPERUSER_PASSWORD},
                        "replication": {"username": "replicator", "password": "bench-replicator"},
                        "rewind": {"username": "rewinder", "password": "bench-rewinder"},
                    },
                },
            });
            std::fs::write(&config, serde_json::to_vec_pretty(&document)?)?;
            members.push(Member {
                log: dir.join(format!("{name}.log")),
                name,
                config,
                data_dir,
                postgres_port,
                api: format!("http://127.0.0.1:{api_port}"),
                patroni: None,
            });
        }
        bulwark_controllers::runtime::ensure_crypto_provider();
        let mut cluster = PatroniCluster {
            _etcd: etcd,
            ca: pki.ca,
            members,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(1))
                .build()?,
        };
        for index in 0..cluster.members.len() {
            cluster.start_member(index)?;
            // The first one bootstraps (initdb) unhurried; the others then clone it.
            if index == 0 {
                cluster.wait_for_primary(Duration::from_secs(60)).await?;
            }
        }
        cluster.wait_healthy(Duration::from_secs(120)).await?;
        Ok(cluster)
    }

    fn start_member(&mut self, index: usize) -> Result<()> {
        let member = &mut self.members[index];
        // setpriv execs Patroni itself, so the process (and group) is Patroni's.
        member.patroni = Some(Process::spawn(
            &format!("patroni-{}", member.name),
            Path::new("/usr/bin/setpriv"),
            &[
                "--reuid=postgres".into(),
                "--regid=postgres".into(),
                "--init-groups".into(),
                "/usr/bin/patroni".into(),
                member.config.display().to_string(),
            ],
            &[],
            &member.log,
        )?);
        Ok(())
    }

    /// How clients reach the primary: every member listed, libpq's
    /// `target_session_attrs=read-write` picking the one that accepts writes.
    pub fn application(&self) -> Result<Endpoint> {
        let mut config = tokio_postgres::Config::new();
        for member in &self.members {
            config
                .host("localhost")
                .hostaddr(std::net::Ipv4Addr::LOCALHOST.into())
                .port(member.postgres_port);
        }
        config
            .user("postgres")
            .password(SUPERUSER_PASSWORD)
            .dbname("postgres")
            .target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite)
            .connect_timeout(Duration::from_secs(1));
        Endpoint::new(config, self.ca.as_bytes())
    }

    async fn member_status(&self, member: &Member) -> Option<Value> {
        let response = self
            .http
            .get(format!("{}/patroni", member.api))
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    /// The member that Patroni says runs as primary, if one does.
    pub async fn primary(&self) -> Option<String> {
        for member in &self.members {
            let status = self.member_status(member).await;
            if status.is_some_and(|s| {
                s["state"] == "running" && (s["role"] == "master" || s["role"] == "primary")
            }) {
                return Some(member.name.clone());
            }
        }
        None
    }

    async fn wait_for_primary(&self, within: Duration) -> Result<String> {
        crate::eventually(within, "a Patroni primary", || self.primary()).await
    }

    /// Waits until a primary streams to both other members, one of them synchronously, both
    /// run as replicas on its timeline (a member just rewound has settled), and the DCS names
    /// that synchronous standby (in synchronous_mode only it may be promoted: a crash while the
    /// key is being reassigned leaves Patroni with no candidate, a state worth measuring on its
    /// own but not what a failover round is about).
    pub async fn wait_healthy(&self, within: Duration) -> Result<()> {
        crate::eventually(within, "Patroni healthy", || async {
            let primary = self.primary().await?;
            let mut statuses = vec![];
            for member in &self.members {
                statuses.push((member.name == primary, self.member_status(member).await?));
            }
            let leader = &statuses.iter().find(|(leads, _)| *leads)?.1;
            let standbys = leader["replication"].as_array()?;
            let replicas_on_its_timeline =
                statuses.iter().filter(|(leads, _)| !leads).all(|(_, s)| {
                    s["role"] == "replica"
                        && s["state"] == "running"
                        && s["timeline"] == leader["timeline"]
                });
            let streaming_sync = standbys
                .iter()
                .find(|s| s["state"] == "streaming" && s["sync_state"] == "sync")?;
            let leader_member = self.members.iter().find(|m| m.name == primary)?;
            let cluster: Value = self
                .http
                .get(format!("{}/cluster", leader_member.api))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let named_sync = cluster["members"].as_array()?.iter().any(|m| {
                m["role"] == "sync_standby" && m["name"] == streaming_sync["application_name"]
            });
            (standbys.len() == self.members.len() - 1
                && standbys.iter().all(|s| s["state"] == "streaming")
                && named_sync
                && replicas_on_its_timeline)
                .then_some(())
        })
        .await
    }

    fn member(&self, name: &str) -> Result<usize> {
        self.members
            .iter()
            .position(|m| m.name == name)
            .with_context(|| format!("no Patroni member {name}"))
    }

    /// Patroni's process and the postmaster it started (detached from it), for the injectors.
    fn process_leaders(&self, index: usize) -> Result<Vec<i32>> {
        let member = &self.members[index];
        let mut leaders: Vec<i32> = member.patroni.iter().filter_map(Process::pid).collect();
        if let Ok(pid_file) = std::fs::read_to_string(member.data_dir.join("postmaster.pid"))
            && let Some(Ok(postmaster)) = pid_file.lines().next().map(str::parse::<i32>)
        {
            leaders.push(postmaster);
        }
        if leaders.is_empty() {
            bail!("member {} runs no process", member.name);
        }
        Ok(leaders)
    }

    /// SIGKILL to every process of the member; it stays down until [`Self::restart`].
    pub fn crash(&mut self, name: &str) -> Result<()> {
        let index = self.member(name)?;
        bulwark_chaos::node_agent::signal_process_groups(
            &self.process_leaders(index)?,
            libc::SIGKILL,
        )?;
        if let Some(mut process) = self.members[index].patroni.take() {
            process.wait_exit(Duration::from_secs(5));
        }
        Ok(())
    }

    /// The crashed member's machine is back: Patroni starts again (and rejoins with pg_rewind).
    pub fn restart(&mut self, name: &str) -> Result<()> {
        let index = self.member(name)?;
        self.start_member(index)
    }

    /// SIGSTOP (`true`) or SIGCONT to every process of the member.
    pub fn freeze(&self, name: &str, frozen: bool) -> Result<()> {
        let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        bulwark_chaos::node_agent::signal_process_groups(
            &self.process_leaders(self.member(name)?)?,
            signal,
        )?;
        Ok(())
    }
}

impl Drop for PatroniCluster {
    /// Members go with their whole trees (the postmasters outlive a stopped Patroni).
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            if let Ok(leaders) = self.process_leaders(index) {
                let _ = bulwark_chaos::node_agent::signal_process_groups(&leaders, libc::SIGCONT);
                let _ = bulwark_chaos::node_agent::signal_process_groups(&leaders, libc::SIGKILL);
            }
        }
    }
}
