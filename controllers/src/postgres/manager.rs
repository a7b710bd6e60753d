//! `bulwark instance`: the main process of a PostgreSQL pod. It bootstraps the data directory
//! (initdb for the first primary, pg_basebackup for a replica), writes the configuration Bulwark
//! manages, supervises `postgres` (restarting it when it dies, unless fenced), and carries out
//! the operator's commands, each decided by [`super::instance::decide`] and persisted to the
//! volume before PostgreSQL is touched, so a crash mid-command never forgets an epoch.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command as Process};
use tokio::sync::Mutex;
use tracing::{info, warn};

use bulwark_chaos::instance::{self as faults, FaultsInPlace, InstanceFault};
use bulwark_chaos::network_policy;

use super::instance::{Action, Command, Refusal, Role, State, Synchronous, decide};
use super::isolation::{Contacts, Replies};
use crate::tls::TlsFiles;

/// How long a partition's manager half waits for its NetworkPolicy to hold before it cuts
/// established flows regardless.
const POLICY_HOLD_WAIT: Duration = Duration::from_secs(10);

/// How long a running replica may take to stream from a new primary after a reload before it
/// is restarted instead.
const RETARGET_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the database's port and the replication credentials come from.
#[derive(Clone, Debug)]
pub struct Config {
    /// The instance's volume: `pgdata/`, the persisted state, the socket directory, the log.
    pub volume: PathBuf,
    /// PostgreSQL's programs (Debian: /usr/lib/postgresql/<major>/bin).
    pub bin_dir: PathBuf,
    pub port: u16,
    /// The role a new volume starts in; a volume that has a state file keeps its own.
    pub bootstrap: Role,
    pub replication_user: String,
    pub replication_password_file: PathBuf,
    /// The application's database and its owner role, created with the first primary.
    pub database: Option<Database>,
    /// The DatabaseCluster (in the pod's namespace) whose recorded epoch this instance checks:
    /// a primary serves only once it has read an epoch no newer than its own, and fences itself
    /// when it reads a newer one. None: a standalone instance, trusted as it starts.
    pub cluster: Option<String>,
    /// The cluster's serving certificate (PostgreSQL's as well as the command API's) and CA
    /// (the root replicas check their primary's certificate against).
    pub tls: TlsFiles,
    /// The user's PostgreSQL settings (DatabaseCluster `spec.parameters`): names the API
    /// admitted, none of them one Bulwark manages.
    pub parameters: Vec<(String, String)>,
}

#[derive(Clone, Debug)]
pub struct Database {
    pub name: String,
    pub owner: String,
    pub owner_password_file: PathBuf,
}

impl Config {
    fn pgdata(&self) -> PathBuf {
        self.volume.join("pgdata")
    }
    fn state_file(&self) -> PathBuf {
        self.volume.join("bulwark-instance.json")
    }
    /// Unix socket directory: local connections never leave the pod.
    fn socket_dir(&self) -> PathBuf {
        self.volume.join("run")
    }
    /// PostgreSQL's copies of the certificate files: it refuses a key others may read, and the
    /// Secret's mounted files are readable by the pod's whole group.
    fn tls_dir(&self) -> PathBuf {
        self.volume.join("tls")
    }
    fn log_file(&self) -> PathBuf {
        self.volume.join("postgres.log")
    }
    fn program(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
    fn replication_password(&self) -> Result<String> {
        let password = std::fs::read_to_string(&self.replication_password_file)
            .with_context(|| format!("{}", self.replication_password_file.display()))?;
        Ok(password.trim().to_string())
    }
}

/// What `GET /status` reports.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub epoch: u64,
    #[serde(flatten)]
    pub role: Role,
    /// The standbys its commits wait for once it is primary.
    pub synchronous: Option<Synchronous>,
    /// PostgreSQL answers on its socket.
    pub running: bool,
    pub in_recovery: Option<bool>,
    pub timeline: Option<i32>,
    /// The primary's current WAL position.
    pub current_lsn: Option<String>,
    pub received_lsn: Option<String>,
    pub replayed_lsn: Option<String>,
    /// The WAL receiver's state (`streaming` on a healthy replica).
    pub wal_receiver: Option<String>,
    /// Standbys streaming from this primary: (application name, sync state).
    pub standbys: Vec<(String, String)>,
    /// Why this instance fenced itself, when it did.
    pub fence_reason: Option<String>,
    /// Where a stopped instance's WAL ends (its last checkpoint): a switchover's target must
    /// have replayed this far before it is promoted.
    pub final_lsn: Option<String>,
    /// The volume's size and what is left of it for PostgreSQL (a full volume stops it).
    #[serde(default)]
    pub volume_bytes: Option<u64>,
    #[serde(default)]
    pub volume_free_bytes: Option<u64>,
}

pub struct Manager {
    config: Config,
    inner: Mutex<Inner>,
    /// A drill's freeze: the PostgreSQL processes stopped, and the API's status and commands
    /// held until it thaws. The processes are kept apart from `inner`, whose holder may be
    /// waiting on the frozen PostgreSQL.
    frozen: std::sync::Mutex<Option<Vec<i32>>>,
    /// A drill's partition, from when it started (see [`InstanceFault::Partition`]).
    partitioned: std::sync::Mutex<Option<Instant>>,
    /// False while a freeze or a partition holds status and commands.
    answering: tokio::sync::watch::Sender<bool>,
}

struct Inner {
    state: State,
    postgres: Option<Child>,
    fence_reason: Option<String>,
    /// Since it started, the instance has learnt the cluster's epoch is not newer than its own
    /// (from the API server, or from a command of the operator's): until then a primary does
    /// not start PostgreSQL, so a restarted or thawed old primary never serves a stale epoch.
    epoch_confirmed: bool,
}

impl Manager {
    /// Loads the persisted state, or bootstraps a new volume in `config.bootstrap`'s role.
    pub async fn open(config: Config) -> Result<Arc<Self>> {
        std::fs::create_dir_all(config.socket_dir())?;
        install_tls(&config)?;
        let state = match std::fs::read(config.state_file()) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{}", config.state_file().display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let state = State {
                    epoch: 0,
                    role: config.bootstrap.clone(),
                    synchronous: None,
                };
                // No state file: any data directory is from a bootstrap that did not finish.
                if config.pgdata().exists() {
                    warn!("removing the data directory of an unfinished bootstrap");
                    std::fs::remove_dir_all(config.pgdata())?;
                }
                bootstrap(&config, &state.role).await?;
                persist(&config, &state)?;
                state
            }
            Err(e) => return Err(e.into()),
        };
        info!(epoch = state.epoch, role = ?state.role, "instance state");
        write_config(&config, &state)?;
        let epoch_confirmed = config.cluster.is_none();
        let manager = Arc::new(Manager {
            config,
            inner: Mutex::new(Inner {
                state,
                postgres: None,
                fence_reason: None,
                epoch_confirmed,
            }),
            frozen: std::sync::Mutex::new(None),
            partitioned: std::sync::Mutex::new(None),
            answering: tokio::sync::watch::Sender::new(true),
        });
        Ok(manager)
    }

    /// Keeps PostgreSQL running unless fenced; returns only on shutdown.
    pub async fn supervise(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            {
                let mut inner = self.inner.lock().await;
                let exited = match inner.postgres.as_mut() {
                    Some(child) => child.try_wait().ok().flatten(),
                    None => None,
                };
                if let Some(status) = exited {
                    warn!(%status, "postgres exited; restarting it");
                    inner.postgres = None;
                }
                // A replica whose new copy failed (the primary was unreachable) tries again.
                let role = inner.state.role.clone();
                if let Err(error) = ensure_replica_data(&self.config, &inner.state).await {
                    warn!(
                        error = format!("{error:#}"),
                        "no data directory yet; retrying"
                    );
                } else if inner.postgres.is_none()
                    && role.serves()
                    && (inner.epoch_confirmed || role != Role::Primary)
                {
                    match start_postgres(&self.config) {
                        Ok(child) => inner.postgres = Some(child),
                        Err(error) => warn!(%error, "could not start postgres"),
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        let mut inner = self.inner.lock().await;
        if let Some(child) = inner.postgres.take() {
            // Fast shutdown: sessions end, a checkpoint is written, nothing is lost.
            stop_postgres(child, libc::SIGINT).await;
        }
    }

    /// Decides, persists, then acts. A refusal leaves everything as it was.
    pub async fn command(&self, command: Command) -> Result<State, CommandError> {
        let mut inner = self.inner.lock().await;
        let (next, action) = decide(&inner.state, &command).map_err(CommandError::Refused)?;
        persist(&self.config, &next).map_err(CommandError::Failed)?;
        // The operator read the cluster's epoch before commanding.
        inner.epoch_confirmed = true;
        let previous = std::mem::replace(&mut inner.state, next.clone());
        info!(?command, from = ?previous, to = ?next, ?action, "command accepted");
        match action {
            Action::Nothing => {}
            Action::Promote => {
                let output = Process::new(self.config.program("pg_ctl"))
                    .arg("promote")
                    .arg("-w")
                    .arg("-D")
                    .arg(self.config.pgdata())
                    .output()
                    .await
                    .map_err(|e| CommandError::Failed(e.into()))?;
                if !output.status.success() {
                    return Err(CommandError::Failed(anyhow::anyhow!(
                        "pg_ctl promote: {}",
                        String::from_utf8_lossy(&output.stderr)
                    )));
                }
                // As a primary it now waits for the synchronous standbys it was given.
                write_config(&self.config, &next).map_err(CommandError::Failed)?;
                self.reload().await.map_err(CommandError::Failed)?;
                // A checkpoint puts the new timeline in the control file, where pg_rewind on
                // the old primary looks for it (without one it sees the same timeline and does
                // nothing).
                let checkpoint = async {
                    self.session()
                        .await?
                        .batch_execute("CHECKPOINT")
                        .await
                        .map_err(anyhow::Error::from)
                };
                checkpoint.await.map_err(CommandError::Failed)?;
            }
            Action::StopImmediately => {
                if let Some(child) = inner.postgres.take() {
                    stop_postgres(child, libc::SIGQUIT).await;
                }
            }
            Action::Reload => {
                write_config(&self.config, &next).map_err(CommandError::Failed)?;
                if inner.postgres.is_some() {
                    self.reload().await.map_err(CommandError::Failed)?;
                }
            }
            Action::StopCleanly => {
                if let Some(child) = inner.postgres.take() {
                    stop_postgres(child, libc::SIGINT).await;
                }
            }
            Action::Follow { primary, rewind } => {
                if !rewind && inner.postgres.is_some() {
                    write_config(&self.config, &next).map_err(CommandError::Failed)?;
                    match self.retarget(&primary).await {
                        Ok(()) => return Ok(next),
                        Err(error) => warn!(
                            error = format!("{error:#}"),
                            "the running replica did not switch over to the new primary; restarting it"
                        ),
                    }
                }
                if let Some(child) = inner.postgres.take() {
                    stop_postgres(child, libc::SIGINT).await;
                }
                // This instance's history may hold writes the new primary never had: rewind it
                // to where the histories split; if that fails, it gets a new copy.
                if rewind && let Err(error) = rewind_to(&self.config, &next.role).await {
                    warn!(
                        error = format!("{error:#}"),
                        "pg_rewind failed; cloning the new primary instead"
                    );
                    std::fs::remove_dir_all(self.config.pgdata())
                        .map_err(|e| CommandError::Failed(e.into()))?;
                }
                ensure_replica_data(&self.config, &next)
                    .await
                    .map_err(CommandError::Failed)?;
                write_config(&self.config, &next).map_err(CommandError::Failed)?;
                // The supervisor starts it again as a replica.
            }
        }
        Ok(next)
    }

    /// Carries out a drill's fault (see [`InstanceFault`]).
    pub async fn inject(self: &Arc<Self>, fault: InstanceFault) -> Result<FaultsInPlace> {
        match fault {
            InstanceFault::Crash => {
                warn!("drill: crashing (SIGKILL of PostgreSQL, then the manager exits)");
                if let Some(pid) = self.postmaster().await {
                    faults::kill_tree(pid)?;
                }
                // No cleanup, as in a crash. A container's PID 1 ignores its own SIGKILL, so exit.
                // SAFETY: _exit(2) ends the process at once.
                unsafe { libc::_exit(137) }
            }
            InstanceFault::Freeze { seconds } => {
                let pid = self
                    .postmaster()
                    .await
                    .context("PostgreSQL is not running: nothing to freeze")?;
                let mut frozen = self.frozen.lock().unwrap();
                if frozen.is_none() {
                    warn!(seconds, "drill: freezing PostgreSQL and this manager's API");
                    *frozen = Some(faults::stop_tree(pid)?);
                    drop(frozen);
                    self.update_answering();
                    let manager = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(seconds)).await;
                        if manager.thaw() {
                            warn!(seconds, "drill: the freeze reached its deadline; thawed");
                        }
                    });
                }
            }
            InstanceFault::Thaw => {
                if self.thaw() {
                    info!("drill: thawed");
                }
            }
            InstanceFault::Partition { seconds } => {
                let started = Instant::now();
                let mut partitioned = self.partitioned.lock().unwrap();
                if partitioned.is_none() {
                    warn!(
                        seconds,
                        "drill: partitioned; cutting established flows once the NetworkPolicy holds"
                    );
                    *partitioned = Some(started);
                    drop(partitioned);
                    self.update_answering();
                    let manager = self.clone();
                    tokio::spawn(async move { manager.cut_established_flows(started).await });
                    let manager = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(seconds)).await;
                        if manager.heal(Some(started)) {
                            warn!(seconds, "drill: the partition reached its deadline; healed");
                        }
                    });
                }
            }
            InstanceFault::Heal => {
                if self.heal(None) {
                    info!("drill: partition healed");
                }
            }
        }
        Ok(self.faults())
    }

    /// Continues what a freeze stopped; whether anything was frozen.
    fn thaw(&self) -> bool {
        let Some(pids) = self.frozen.lock().unwrap().take() else {
            return false;
        };
        faults::resume(&pids);
        self.update_answering();
        true
    }

    /// Ends the partition (only the one that started at `started`, when given: a deadline
    /// does not end a later partition); whether one was in place.
    fn heal(&self, started: Option<Instant>) -> bool {
        let mut partitioned = self.partitioned.lock().unwrap();
        if partitioned.is_none() || started.is_some_and(|s| *partitioned != Some(s)) {
            return false;
        }
        *partitioned = None;
        drop(partitioned);
        self.update_answering();
        true
    }

    fn partitioned_since(&self, started: Instant) -> bool {
        *self.partitioned.lock().unwrap() == Some(started)
    }

    fn update_answering(&self) {
        let faults = self.faults();
        self.answering.send_replace(!faults.any());
    }

    pub fn faults(&self) -> FaultsInPlace {
        FaultsInPlace {
            frozen: self.frozen.lock().unwrap().is_some(),
            partitioned: self.partitioned.lock().unwrap().is_some(),
        }
    }

    /// Returns once no freeze or partition holds the API.
    pub async fn until_answering(&self) {
        let mut answering = self.answering.subscribe();
        let _ = answering.wait_for(|answering| *answering).await;
    }

    /// A partition's manager half: once a new connection to the API server fails (the
    /// NetworkPolicy holds; cutting earlier would let clients reconnect before it does, and
    /// keep those connections through it), terminates PostgreSQL's client and replication
    /// sessions, which the network plugin lets through as established flows.
    async fn cut_established_flows(&self, started: Instant) {
        let deadline = started + POLICY_HOLD_WAIT;
        while self.partitioned_since(started) && api_server_connects().await {
            if Instant::now() >= deadline {
                warn!(
                    waited = ?POLICY_HOLD_WAIT,
                    "drill: the API server still accepts new connections from this pod: the partition's NetworkPolicy does not hold (yet); cutting sessions anyway"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !self.partitioned_since(started) {
            return;
        }
        let cut = async {
            let row = self
                .session()
                .await?
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE pid <> pg_backend_pid() AND backend_type IN ('client backend', 'walsender')",
                    &[],
                )
                .await?;
            anyhow::Ok(row.get::<_, i64>(0))
        };
        match cut.await {
            Ok(sessions) => warn!(
                sessions,
                "drill: the partition holds; PostgreSQL's sessions cut"
            ),
            Err(error) => warn!(
                error = format!("{error:#}"),
                "drill: cutting PostgreSQL's sessions failed"
            ),
        }
    }

    async fn postmaster(&self) -> Option<i32> {
        let inner = self.inner.lock().await;
        inner.postgres.as_ref()?.id().map(|pid| pid as i32)
    }

    pub async fn status(&self) -> Status {
        let (state, fence_reason) = {
            let inner = self.inner.lock().await;
            (inner.state.clone(), inner.fence_reason.clone())
        };
        let mut status = Status {
            epoch: state.epoch,
            role: state.role,
            synchronous: state.synchronous,
            running: false,
            in_recovery: None,
            timeline: None,
            current_lsn: None,
            received_lsn: None,
            replayed_lsn: None,
            wal_receiver: None,
            standbys: Vec::new(),
            fence_reason,
            final_lsn: None,
            volume_bytes: None,
            volume_free_bytes: None,
        };
        if let Some((size, free)) = filesystem_space(&self.config.volume) {
            status.volume_bytes = Some(size);
            status.volume_free_bytes = Some(free);
        }
        if let Err(error) = self.read_postgres(&mut status).await {
            tracing::debug!(%error, "postgres did not answer");
        }
        if !status.role.serves() {
            status.final_lsn = self.final_lsn().await.ok();
        }
        status
    }

    /// Points this running replica at `primary` (its configuration already names it) without a
    /// restart: on a reload PostgreSQL restarts only the WAL receiver. Returns once it streams
    /// from there, so it no longer takes WAL from the old primary. Restarting instead would
    /// leave the new primary without this synchronous standby for a second or more of the
    /// failover.
    async fn retarget(&self, primary: &str) -> Result<()> {
        let (host, port) = split_address(primary)?;
        let port: i32 = port.parse().with_context(|| format!("port of {primary}"))?;
        self.reload().await?;
        let session = self.session().await?;
        let deadline = Instant::now() + RETARGET_TIMEOUT;
        loop {
            let streaming = session
                .query_opt(
                    "SELECT 1 FROM pg_stat_wal_receiver
                     WHERE status = 'streaming' AND sender_host = $1 AND sender_port = $2",
                    &[&host, &port],
                )
                .await?
                .is_some();
            if streaming {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("not streaming from {primary} within {RETARGET_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Makes the running postgres re-read its configuration.
    async fn reload(&self) -> Result<()> {
        let pgdata = self.config.pgdata().display().to_string();
        run(
            &self.config.program("pg_ctl"),
            &["reload", "-D", &pgdata],
            &[],
        )
        .await
    }

    /// The last checkpoint's location, from the control file of a stopped data directory.
    async fn final_lsn(&self) -> Result<String> {
        let output = Process::new(self.config.program("pg_controldata"))
            .arg(self.config.pgdata())
            .output()
            .await?;
        let text = String::from_utf8_lossy(&output.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("Latest checkpoint location:"))
            .map(|lsn| lsn.trim().to_string())
            .context("pg_controldata printed no checkpoint location")
    }

    /// A session over the Unix socket as the superuser.
    async fn session(&self) -> Result<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::Config::new()
            .host_path(self.config.socket_dir())
            .port(self.config.port)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(1))
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(connection);
        Ok(client)
    }

    async fn read_postgres(&self, status: &mut Status) -> Result<()> {
        let client = self.session().await?;
        let row = client
            .query_one(
                // A primary's timeline is in its current WAL file's name (the checkpoint's
                // lags a promotion); a replica's is the one it receives.
                "SELECT pg_is_in_recovery(),
                        CASE WHEN pg_is_in_recovery()
                             THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver),
                                           (SELECT timeline_id FROM pg_control_checkpoint()))
                             ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
                        END,
                        CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
                        pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text,
                        (SELECT status FROM pg_stat_wal_receiver)",
                &[],
            )
            .await?;
        status.running = true;
        status.in_recovery = row.get(0);
        status.timeline = row.get(1);
        status.current_lsn = row.get(2);
        status.received_lsn = row.get(3);
        status.replayed_lsn = row.get(4);
        status.wal_receiver = row.get(5);
        status.standbys = client
            .query(
                "SELECT application_name, sync_state FROM pg_stat_replication ORDER BY 1",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        Ok(())
    }
}

impl Manager {
    /// While primary, checks every half second whether the API server and any replica can still
    /// be heard from, and fences this instance once neither could for `bound` (see
    /// [`super::isolation`]).
    pub async fn watch_isolation(
        self: Arc<Self>,
        api_server: kube::Client,
        bound: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let check_timeout = Duration::from_secs(1);
        let mut contacts = Contacts::fresh(Instant::now());
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            if self.inner.lock().await.state.role != Role::Primary {
                contacts = Contacts::fresh(Instant::now());
                continue;
            }
            // A partition's pooled connection would pass as established: only new ones count.
            let client = match self.faults().partitioned {
                true => kube::Client::try_default().await.ok(),
                false => Some(api_server.clone()),
            };
            let sent = Instant::now();
            let contact = async {
                match &client {
                    Some(client) => self.contact_api_server(client).await,
                    None => Err(anyhow::anyhow!("no API server client")),
                }
            };
            let (api, replies) = tokio::join!(
                tokio::time::timeout(check_timeout, contact),
                tokio::time::timeout(check_timeout, self.standby_replies()),
            );
            if matches!(api, Ok(Ok(()))) {
                contacts.api_server_answered(sent);
            }
            let now = Instant::now();
            // A failed query tells nothing about the standbys; the next check compares again.
            if let Ok(Ok(replies)) = replies {
                contacts.replies_seen(replies, sent);
            }
            if contacts.isolated(now, bound) {
                let reason = format!(
                    "isolated: neither the API server nor any replica answered for {:.1}s (bound {:.1}s)",
                    contacts.silent_for(now).as_secs_f64(),
                    bound.as_secs_f64()
                );
                self.fence_self(reason).await;
                contacts = Contacts::fresh(now);
            }
        }
    }

    /// Reaches the API server: reads the cluster's recorded epoch when there is a cluster, and
    /// acts on it; otherwise asks for the server's version.
    async fn contact_api_server(&self, api_server: &kube::Client) -> Result<()> {
        let Some(name) = &self.config.cluster else {
            api_server.apiserver_version().await?;
            return Ok(());
        };
        let cluster = kube::Api::<bulwark_crds::postgres::DatabaseCluster>::default_namespaced(
            api_server.clone(),
        )
        .get(name)
        .await?;
        let status = cluster.status.unwrap_or_default();
        let me = application_name(&self.config);
        // A switchover's primary waits to be demoted cleanly (its final checkpoint is what the
        // target replays); stopping it at once here would cut that short.
        let switching_from_me = status
            .failover
            .as_ref()
            .is_some_and(|f| f.kind == "switchover" && f.from == me);
        let own = self.inner.lock().await.state.epoch;
        if status.epoch > own {
            if !switching_from_me {
                self.fence_self(format!(
                    "the cluster's epoch is {}, newer than this instance's {own}: another instance is being promoted",
                    status.epoch
                ))
                .await;
            }
        } else {
            self.inner.lock().await.epoch_confirmed = true;
        }
        Ok(())
    }

    /// Each connected standby's last reply, to tell at the next check whether any replied since.
    async fn standby_replies(&self) -> Result<Replies> {
        let rows = self
            .session()
            .await?
            .query(
                "SELECT pid, reply_time::text FROM pg_stat_replication WHERE reply_time IS NOT NULL",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Stops a primary at once, in its own epoch: it acknowledges nothing more until the
    /// operator brings it back with `follow` (a new primary will have been promoted by then).
    async fn fence_self(&self, reason: String) {
        let mut inner = self.inner.lock().await;
        if inner.state.role != Role::Primary {
            return;
        }
        let fenced = State {
            role: Role::Fenced,
            ..inner.state.clone()
        };
        if let Err(error) = persist(&self.config, &fenced) {
            warn!(%error, "could not persist the fence; stopping postgres anyway");
        }
        warn!(%reason, epoch = fenced.epoch, "fencing myself");
        inner.state = fenced;
        inner.fence_reason = Some(reason);
        if let Some(child) = inner.postgres.take() {
            stop_postgres(child, libc::SIGQUIT).await;
        }
    }
}

/// Whether a new TCP connection to the API server (the in-cluster address; outside a pod there
/// is none to cut) is accepted.
async fn api_server_connects() -> bool {
    let Ok(config) = kube::Config::incluster() else {
        return false;
    };
    let Some(host) = config.cluster_url.host() else {
        return false;
    };
    let port = config.cluster_url.port_u16().unwrap_or(443);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    network_policy::tcp_connects(host, port).await
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    Refused(Refusal),
    #[error("accepted but not carried out: {0:#}")]
    Failed(anyhow::Error),
}

/// Writes the state to a new file, syncs it, then renames it over the old one: a crash leaves
/// either the old state or the new, never a torn one.
fn persist(config: &Config, state: &State) -> Result<()> {
    use std::io::Write;
    let path = config.state_file();
    let temporary = path.with_extension("json.new");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(&serde_json::to_vec(state)?)?;
    file.sync_all()?;
    std::fs::rename(&temporary, &path)?;
    std::fs::File::open(&config.volume)?.sync_all()?;
    Ok(())
}

async fn run(program: &Path, args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    let output = Process::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .await
        .with_context(|| format!("running {}", program.display()))?;
    if !output.status.success() {
        bail!(
            "{} {}: {}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let said = String::from_utf8_lossy(&output.stderr);
    if !said.trim().is_empty() {
        info!(program = %program.display(), output = %said.trim(), "finished");
    }
    Ok(())
}

/// A new data directory: initdb and the replication role for a primary, a base backup of the
/// primary for a replica.
async fn bootstrap(config: &Config, role: &Role) -> Result<()> {
    let pgdata = config.pgdata().display().to_string();
    let password = config.replication_password()?;
    match role {
        Role::Primary | Role::Fenced | Role::Demoted => {
            info!("initdb");
            // Checksums: a torn page is detected instead of replicated.
            run(
                &config.program("initdb"),
                &[
                    "-D",
                    &pgdata,
                    "-U",
                    "postgres",
                    "--data-checksums",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ],
                &[],
            )
            .await?;
            write_config(
                config,
                &State {
                    epoch: 0,
                    role: role.clone(),
                    synchronous: None,
                },
            )?;
            // Single-user mode: the replication role exists before anyone can connect.
            // The replication role also reads what pg_rewind needs from a new primary.
            let user = &config.replication_user;
            let mut sql = format!(
                "CREATE ROLE {user} WITH REPLICATION LOGIN PASSWORD {};\n",
                sql_literal(&password)
            );
            for function in [
                "pg_ls_dir(text, boolean, boolean)",
                "pg_stat_file(text, boolean)",
                "pg_read_binary_file(text)",
                "pg_read_binary_file(text, bigint, bigint, boolean)",
            ] {
                sql.push_str(&format!(
                    "GRANT EXECUTE ON FUNCTION {function} TO {user};\n"
                ));
            }
            if let Some(database) = &config.database {
                let owner_password = std::fs::read_to_string(&database.owner_password_file)
                    .with_context(|| format!("{}", database.owner_password_file.display()))?;
                sql.push_str(&format!(
                    "CREATE ROLE \"{owner}\" WITH LOGIN PASSWORD {password};\nCREATE DATABASE \"{name}\" OWNER \"{owner}\";\n",
                    owner = database.owner,
                    password = sql_literal(owner_password.trim()),
                    name = database.name,
                ));
            }
            let mut single = Process::new(config.program("postgres"))
                .args(["--single", "-D", &pgdata, "postgres"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()?;
            use tokio::io::AsyncWriteExt;
            single
                .stdin
                .take()
                .unwrap()
                .write_all(sql.as_bytes())
                .await?;
            let output = single.wait_with_output().await?;
            if !output.status.success() {
                bail!(
                    "creating the replication role: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
        Role::Replica { primary } => {
            info!(%primary, "pg_basebackup");
            run(
                &config.program("pg_basebackup"),
                &[
                    "-D",
                    &pgdata,
                    "-d",
                    &replication_conninfo(config, primary)?,
                    "-X",
                    "stream",
                    "--checkpoint=fast",
                ],
                &[("PGPASSWORD", &password)],
            )
            .await?;
        }
    }
    Ok(())
}

/// A replica without a complete data directory (its copy was never made, or failed) gets a new
/// copy of its primary.
async fn ensure_replica_data(config: &Config, state: &State) -> Result<()> {
    if !matches!(state.role, Role::Replica { .. }) || config.pgdata().join("PG_VERSION").exists() {
        return Ok(());
    }
    if config.pgdata().exists() {
        std::fs::remove_dir_all(config.pgdata())?;
    }
    bootstrap(config, &state.role).await?;
    write_config(config, state)
}

/// `pg_rewind` of a stopped former primary onto the primary of `role`: only the blocks that
/// changed since the histories split are copied. It first finishes crash recovery itself when
/// the instance was stopped at once (fenced).
async fn rewind_to(config: &Config, role: &Role) -> Result<()> {
    let Role::Replica { primary } = role else {
        bail!("rewinding needs a primary to follow");
    };
    let source = format!("{} dbname=postgres", replication_conninfo(config, primary)?);
    info!(%primary, "pg_rewind");
    run(
        &config.program("pg_rewind"),
        &[
            "--target-pgdata",
            &config.pgdata().display().to_string(),
            "--source-server",
            &source,
        ],
        &[("PGPASSWORD", &config.replication_password()?)],
    )
    .await
}

/// How an instance connects to `primary` (`host:port`) for streaming, base backups and rewinds:
/// TLS checked against the cluster's CA. verify-ca rather than verify-full, because the primary
/// is known by its pod address and every instance serves the one certificate the CA issued.
/// `sslcert` names a file that does not exist, so libpq sends no client certificate instead of
/// trying the one under $HOME (which a pod's user may not be able to read).
fn replication_conninfo(config: &Config, primary: &str) -> Result<String> {
    let (host, port) = split_address(primary)?;
    let file = |name: &str| conninfo_value(&config.tls_dir().join(name).display().to_string());
    Ok(format!(
        "host={} port={} user={} sslmode=verify-ca sslrootcert={} sslcert={}",
        conninfo_value(&host),
        conninfo_value(&port),
        conninfo_value(&config.replication_user),
        file("ca.crt"),
        file("no-client.crt"),
    ))
}

/// Copies the mounted certificate, key and CA to the volume, the key readable by this user
/// alone (PostgreSQL refuses to start with a key others may read).
fn install_tls(config: &Config) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = config.tls_dir();
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    for (source, name) in [
        (&config.tls.cert, "tls.crt"),
        (&config.tls.key, "tls.key"),
        (&config.tls.client_ca, "ca.crt"),
    ] {
        let bytes = std::fs::read(source).with_context(|| format!("{}", source.display()))?;
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| std::io::Write::write_all(&mut file, &bytes))
            .with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}

fn split_address(address: &str) -> Result<(String, String)> {
    let (host, port) = address
        .rsplit_once(':')
        .with_context(|| format!("{address:?} is not host:port"))?;
    Ok((host.to_string(), port.to_string()))
}

/// The settings Bulwark manages, in `bulwark.conf` (included last, so they win), and the whole
/// of `pg_hba.conf`; a replica also gets `standby.signal`.
fn write_config(config: &Config, state: &State) -> Result<()> {
    let role = &state.role;
    let pgdata = config.pgdata();
    let main = pgdata.join("postgresql.conf");
    let text = std::fs::read_to_string(&main)?;
    let include = "include 'bulwark.conf'";
    if !text.lines().any(|l| l.trim() == include) {
        std::fs::write(&main, format!("{text}\n{include}\n"))?;
    }
    // wal_keep_size: a former primary keeps the WAL pg_rewind reads back to where the
    // histories split, and a replica that fell behind can still catch up. The receiver's 1 s
    // timeout: a replica stops reporting `streaming` from a hung primary within 1 s (the
    // operator waits for that before a failover, so this bounds how soon a hung primary is
    // replaced; an idle primary is asked for a keepalive after 0.5 s of silence). The sender's
    // 2 s: a primary sees a silent standby as gone, its status arriving every second. The 1 s
    // retry interval (PostgreSQL's default is 5 s): a replica that lost its primary tries it
    // again within a second, so a primary restarted in place has its synchronous standbys back
    // as soon.
    let mut settings: String = config
        .parameters
        .iter()
        .map(|(name, value)| format!("{name} = {}\n", conf_literal(value)))
        .collect();
    settings += &format!(
        "listen_addresses = '*'\nport = {port}\nunix_socket_directories = '{socket}'\n\
         wal_level = replica\nmax_wal_senders = 10\nhot_standby = on\nwal_log_hints = on\n\
         wal_receiver_status_interval = 1s\nwal_keep_size = '512MB'\n\
         wal_receiver_timeout = 1s\nwal_sender_timeout = 2s\nwal_retrieve_retry_interval = 1s\n\
         ssl = on\nssl_cert_file = '{tls}/tls.crt'\nssl_key_file = '{tls}/tls.key'\n",
        port = config.port,
        socket = config.socket_dir().display(),
        tls = config.tls_dir().display(),
    );
    if let (Role::Primary, Some(synchronous)) = (role, &state.synchronous) {
        settings.push_str(&format!(
            "synchronous_standby_names = '{}'\n",
            synchronous.standby_names()
        ));
    }
    let standby_signal = pgdata.join("standby.signal");
    if let Role::Replica { primary } = role {
        let conninfo = format!(
            "{} password={} application_name={}",
            replication_conninfo(config, primary)?,
            conninfo_value(&config.replication_password()?),
            conninfo_value(&application_name(config)),
        );
        // postgresql.conf quotes with '' inside a quoted value.
        settings.push_str(&format!(
            "primary_conninfo = '{}'\n",
            conninfo.replace('\'', "''")
        ));
        std::fs::write(&standby_signal, "")?;
    } else if standby_signal.exists() {
        std::fs::remove_file(&standby_signal)?;
    }
    std::fs::write(pgdata.join("bulwark.conf"), settings)?;
    std::fs::write(
        pgdata.join("pg_hba.conf"),
        format!(
            "# Written by Bulwark's instance manager.\n\
             local all all trust\n\
             hostssl replication {user} all scram-sha-256\n\
             hostssl all all all scram-sha-256\n",
            user = config.replication_user
        ),
    )?;
    Ok(())
}

/// The size of the filesystem holding `path` and the bytes an unprivileged writer may still use.
fn filesystem_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statvfs the call fills in.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let block = stat.f_frsize as u64;
    Some((stat.f_blocks as u64 * block, stat.f_bavail as u64 * block))
}

/// A SQL string literal.
fn sql_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A postgresql.conf string value: a backslash starts an escape there, a quote is doubled.
fn conf_literal(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// A libpq connection-string value, quoted so spaces, quotes and backslashes survive.
fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The name this instance streams under (what a primary's pg_stat_replication shows).
fn application_name(config: &Config) -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| format!("port-{}", config.port))
    })
}

fn start_postgres(config: &Config) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.log_file())?;
    info!("starting postgres");
    let mut command = Process::new(config.program("postgres"));
    command
        .arg("-D")
        .arg(config.pgdata())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // If the manager dies, postgres goes too (SIGQUIT: immediate shutdown, which takes its
    // backends with it), so a restarted manager never finds a stray postmaster on its volume.
    // SAFETY: prctl is async-signal-safe and touches only the child.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(command.spawn()?)
}

/// SIGINT is PostgreSQL's fast shutdown, SIGQUIT its immediate one.
async fn stop_postgres(mut child: Child, signal: i32) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid as i32, signal) };
    }
    if tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}
