//! One pod on a node agent: its sandbox, volumes, containers, probes and status, driven by one
//! task that owns them all. Facts (a process exited, a probe verdict flipped, the pod object
//! changed) arrive as messages; the kubelet's rules in [`super::status`] decide what follows.

use super::images::ImageTable;
use super::launch::{BindMount, LaunchSpec};
use super::network;
use super::probe::{self, Kind, Timing, Verdict};
use super::status::{self, Container as Record, Exit, PodFacts, State};
use super::volumes::{self, PodVolumes};
use crate::process::spawn_bound;
use anyhow::{Context, Result};
use bulwark_controllers::events::Recorder;
use bulwark_controllers::runtime::publish;
use k8s_openapi::api::core::v1::{Container, Pod, PodCondition, PodStatus};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::EventType;
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// What every pod worker of one node shares.
pub struct NodeContext {
    pub client: kube::Client,
    pub node: String,
    pub pod_cidr: String,
    pub host_ip: String,
    /// The node's directory: pods/<uid>/{volumes,containers,logs}.
    pub dir: PathBuf,
    pub images: ImageTable,
    /// This executable, for its `sandbox`, `container` and `enter` modes.
    pub agent: PathBuf,
    /// Cluster DNS server for pods with dnsPolicy ClusterFirst, if the cluster has one.
    pub cluster_dns: Option<Ipv4Addr>,
    /// KUBERNETES_SERVICE_HOST and friends, as the kubelet injects them.
    pub service_env: Vec<(String, String)>,
    pub used_ips: Mutex<HashSet<Ipv4Addr>>,
    pub recorder: Recorder,
    /// `namespace/name` → UID of the pods on this node, for the containerLogs endpoint.
    pub pods: Mutex<BTreeMap<String, String>>,
    /// Log files a running container is still writing (`kubectl logs -f` follows these).
    pub live_logs: Mutex<HashSet<PathBuf>>,
}

impl NodeContext {
    pub fn pod_uid(&self, namespace: &str, name: &str) -> Option<String> {
        self.pods
            .lock()
            .unwrap()
            .get(&format!("{namespace}/{name}"))
            .cloned()
    }

    pub fn is_logging(&self, file: &Path) -> bool {
        self.live_logs.lock().unwrap().contains(file)
    }
}

/// A container process the worker started.
struct Running {
    pid: u32,
    log: PathBuf,
    instance: u32,
    started_at: Instant,
    probes: Vec<tokio::task::JoinHandle<()>>,
    startup_passed: watch::Sender<bool>,
    killing: Option<String>,
}

enum Message {
    Exited {
        name: String,
        instance: u32,
        exit: Exit,
    },
    Probe {
        name: String,
        instance: u32,
        kind: Kind,
        passing: bool,
        detail: String,
    },
}

struct Sandbox {
    child: Child,
    ip: Ipv4Addr,
}

struct Worker {
    ctx: Arc<NodeContext>,
    pod: Pod,
    uid: String,
    dir: PathBuf,
    sandbox: Option<Sandbox>,
    volumes: Option<PodVolumes>,
    volumes_refreshed: Instant,
    records: Vec<Record>,
    running: BTreeMap<String, Running>,
    restart_at: BTreeMap<String, Instant>,
    next_instance: u32,
    start_time: Timestamp,
    written: Option<serde_json::Value>,
    transitions: BTreeMap<String, (String, Timestamp)>,
    messages: mpsc::UnboundedSender<Message>,
    sandbox_error: Option<String>,
}

/// Projected tokens live an hour; refresh well before, as the kubelet does at 80%.
const VOLUME_REFRESH: Duration = Duration::from_secs(600);

/// Runs the pod until it is deleted (or disappears) and everything it had is cleaned up.
pub async fn run(ctx: Arc<NodeContext>, mut updates: watch::Receiver<Option<Pod>>) {
    let Some(pod) = updates.borrow_and_update().clone() else {
        return;
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let spec = pod.spec.clone().unwrap_or_default();
    let previous = pod.status.clone().unwrap_or_default();
    let mut records: Vec<Record> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| Record::new(&c.name, c.image.as_deref().unwrap_or_default(), true))
        .chain(
            spec.containers
                .iter()
                .map(|c| Record::new(&c.name, c.image.as_deref().unwrap_or_default(), false)),
        )
        .collect();
    // After a node restart the pod's containers ran before: their restarts keep counting.
    for record in &mut records {
        let before = previous
            .init_container_statuses
            .iter()
            .chain(previous.container_statuses.iter())
            .flatten()
            .find(|s| s.name == record.name);
        if let Some(before) = before {
            record.restart_count = before.restart_count + i32::from(before.container_id.is_some());
        }
    }
    let terminal = matches!(previous.phase.as_deref(), Some("Succeeded" | "Failed"));
    let mut worker = Worker {
        dir: ctx.dir.join("pods").join(&uid),
        ctx,
        pod,
        uid,
        sandbox: None,
        volumes: None,
        volumes_refreshed: Instant::now(),
        records,
        running: BTreeMap::new(),
        restart_at: BTreeMap::new(),
        next_instance: 0,
        start_time: Timestamp::now(),
        written: None,
        transitions: BTreeMap::new(),
        messages: tx,
        sandbox_error: None,
    };
    loop {
        let deleting = worker.pod.metadata.deletion_timestamp.is_some();
        if deleting {
            worker.terminate(&mut rx).await;
            worker.finish_deletion().await;
            return;
        }
        if !terminal {
            worker.step().await;
        }
        worker.write_status().await;
        let wake = worker.next_wake();
        tokio::select! {
            changed = updates.changed() => {
                match changed.ok().and_then(|_| updates.borrow_and_update().clone()) {
                    Some(pod) => worker.pod = pod,
                    None => {
                        // Gone from the API server without a graceful deletion: stop at once.
                        worker.kill_all(Duration::ZERO, &mut rx).await;
                        worker.cleanup();
                        return;
                    }
                }
            }
            Some(message) = rx.recv() => worker.handle(message).await,
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

impl Worker {
    fn name(&self) -> String {
        format!(
            "{}/{}",
            self.pod.metadata.namespace.as_deref().unwrap_or_default(),
            self.pod.metadata.name.as_deref().unwrap_or_default()
        )
    }

    fn spec_container(&self, name: &str) -> Option<Container> {
        let spec = self.pod.spec.as_ref()?;
        spec.init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .find(|c| c.name == name)
            .cloned()
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn next_wake(&self) -> Instant {
        let mut wake = Instant::now() + Duration::from_secs(2);
        if self.sandbox.is_some() && self.volumes.is_some() {
            wake = self
                .restart_at
                .values()
                .copied()
                .fold(Instant::now() + VOLUME_REFRESH, Instant::min);
            let waiting = self.records.iter().any(|r| {
                matches!(r.state, State::Waiting { .. }) && !self.restart_at.contains_key(&r.name)
            });
            if waiting {
                wake = wake.min(Instant::now() + Duration::from_secs(2));
            }
        }
        wake
    }

    async fn event(&self, type_: EventType, reason: &str, note: String) {
        publish(&self.ctx.recorder, &self.pod, type_, reason, note).await;
    }

    fn set_waiting(&mut self, name: &str, reason: &str, message: Option<String>) {
        if let Some(r) = self.records.iter_mut().find(|r| r.name == name) {
            r.state = State::Waiting {
                reason: reason.into(),
                message,
            };
        }
    }

    /// Every container waits for the same reason (the pod's sandbox or volumes are not there).
    fn all_waiting(&mut self, reason: &str, message: &str) {
        for record in &mut self.records {
            record.state = State::Waiting {
                reason: reason.into(),
                message: Some(message.into()),
            };
        }
    }

    /// Brings the pod one step closer to running: sandbox, volumes, then containers.
    async fn step(&mut self) {
        if self.sandbox.is_none() {
            match self.start_sandbox() {
                Ok(sandbox) => {
                    self.sandbox = Some(sandbox);
                    self.sandbox_error = None;
                }
                Err(e) => {
                    let message = format!("{e:#}");
                    if self.sandbox_error.as_ref() != Some(&message) {
                        warn!(pod = %self.name(), error = %message, "pod sandbox failed");
                        self.event(
                            EventType::Warning,
                            "FailedCreatePodSandBox",
                            message.clone(),
                        )
                        .await;
                    }
                    self.sandbox_error = Some(message.clone());
                    self.all_waiting("ContainerCreating", &message);
                    return;
                }
            }
        }
        if self.volumes.is_none() || self.volumes_refreshed.elapsed() > VOLUME_REFRESH {
            match PodVolumes::prepare(&self.ctx.client, &self.pod, &self.dir).await {
                Ok(volumes) => {
                    self.volumes = Some(volumes);
                    self.volumes_refreshed = Instant::now();
                }
                Err(e) if self.volumes.is_none() => {
                    self.all_waiting("ContainerCreating", &format!("{e:#}"));
                    return;
                }
                Err(e) => {
                    warn!(pod = %self.name(), error = %format!("{e:#}"), "refreshing volumes failed")
                }
            }
        }
        let now = Instant::now();
        // Init containers one at a time, in order; app containers once all succeeded.
        let init_pending = self
            .records
            .iter()
            .find(|r| r.init && !r.succeeded())
            .map(|r| r.name.clone());
        let candidates: Vec<String> = match init_pending {
            Some(name) => vec![name],
            None => self
                .records
                .iter()
                .filter(|r| !r.init)
                .map(|r| r.name.clone())
                .collect(),
        };
        for name in candidates {
            if self.running.contains_key(&name) {
                continue;
            }
            let record = self
                .records
                .iter()
                .find(|r| r.name == name)
                .cloned()
                .unwrap();
            let due = self.restart_at.get(&name).is_none_or(|at| *at <= now);
            let startable = match &record.state {
                State::Waiting { .. } => due,
                State::Terminated(_) => false,
                State::Running { .. } => false,
            };
            if startable {
                self.restart_at.remove(&name);
                self.start_container(&name).await;
            }
        }
    }

    fn start_sandbox(&mut self) -> Result<Sandbox> {
        let hostname = self.pod.metadata.name.clone().unwrap_or_default();
        let mut command = Command::new(&self.ctx.agent);
        command
            .args(["sandbox", &hostname])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = spawn_bound(command).context("starting the pod sandbox")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("pod sandbox did not start (see the node agent's log)");
        }
        let ip = {
            let mut used = self.ctx.used_ips.lock().unwrap();
            let ip = network::allocate(
                &self.ctx.pod_cidr,
                &used.iter().copied().collect::<Vec<_>>(),
            )?;
            used.insert(ip);
            ip
        };
        if let Err(e) = network::attach(child.id(), &network::veth_name(&self.uid), ip) {
            let _ = child.kill();
            let _ = child.wait();
            self.ctx.used_ips.lock().unwrap().remove(&ip);
            return Err(e);
        }
        info!(pod = %self.name(), %ip, "pod sandbox ready");
        Ok(Sandbox { child, ip })
    }

    fn security(&self, container: &Container) -> Result<(u32, u32, Vec<u32>)> {
        let pod_sc = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.clone())
            .unwrap_or_default();
        let sc = container.security_context.clone().unwrap_or_default();
        let uid = sc.run_as_user.or(pod_sc.run_as_user);
        let gid = sc.run_as_group.or(pod_sc.run_as_group);
        let non_root = sc
            .run_as_non_root
            .or(pod_sc.run_as_non_root)
            .unwrap_or(false);
        match uid {
            None if non_root => anyhow::bail!(
                "container has runAsNonRoot and image will run as root (set runAsUser: images here have no user of their own)"
            ),
            Some(0) if non_root => anyhow::bail!(
                "container's runAsUser breaks non-root policy (runAsUser 0 with runAsNonRoot)"
            ),
            _ => {}
        }
        let mut groups: Vec<u32> = pod_sc
            .supplemental_groups
            .iter()
            .flatten()
            .map(|g| *g as u32)
            .collect();
        groups.extend(pod_sc.fs_group.map(|g| g as u32));
        Ok((
            uid.unwrap_or(0) as u32,
            gid.or(uid).unwrap_or(0) as u32,
            groups,
        ))
    }

    fn files(&self, ip: Ipv4Addr) -> Vec<(String, String)> {
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        let ns = self.pod.metadata.namespace.clone().unwrap_or_default();
        let mut files = vec![
            ("/etc/hostname".into(), format!("{name}\n")),
            (
                "/etc/hosts".into(),
                format!("127.0.0.1\tlocalhost\n::1\tlocalhost\n{ip}\t{name}\n"),
            ),
        ];
        let policy = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.dns_policy.clone())
            .unwrap_or_else(|| "ClusterFirst".into());
        if let (Some(dns), "ClusterFirst") = (self.ctx.cluster_dns, policy.as_str()) {
            files.push((
                "/etc/resolv.conf".into(),
                format!("search {ns}.svc.cluster.local svc.cluster.local cluster.local\nnameserver {dns}\noptions ndots:5\n"),
            ));
        }
        files
    }

    async fn start_container(&mut self, name: &str) {
        let Some(container) = self.spec_container(name) else {
            return;
        };
        let prepared = self.prepare_container(&container).await;
        let (spec, log) = match prepared {
            Ok(ready) => ready,
            Err((reason, e)) => {
                let message = format!("{e:#}");
                let record = self.records.iter().find(|r| r.name == name);
                let changed = !matches!(record.map(|r| &r.state), Some(State::Waiting { reason: r, message: Some(m) }) if r == reason && *m == message);
                if changed {
                    self.event(
                        EventType::Warning,
                        "Failed",
                        format!("container {name}: {message}"),
                    )
                    .await;
                }
                self.set_waiting(name, reason, Some(message));
                return;
            }
        };
        let instance = self.next_instance;
        self.next_instance += 1;
        let spec_path = spec.scratch.join("spec.json");
        let started = (|| -> Result<Child> {
            std::fs::write(&spec_path, serde_json::to_vec(&spec)?)?;
            let out = std::fs::File::create(&log)?;
            let mut command = Command::new(&self.ctx.agent);
            command
                .arg("container")
                .arg(&spec_path)
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
            Ok(spawn_bound(command)?)
        })();
        let mut child = match started {
            Ok(child) => child,
            Err(e) => {
                self.set_waiting(name, "RunContainerError", Some(format!("{e:#}")));
                return;
            }
        };
        let pid = child.id();
        let started_at = Timestamp::now();
        let messages = self.messages.clone();
        let exit_name = name.to_string();
        std::thread::spawn(move || {
            use std::os::unix::process::ExitStatusExt;
            let status = child.wait();
            let (code, signal) = match status {
                Ok(s) => (s.code().unwrap_or(0), s.signal()),
                Err(_) => (255, None),
            };
            let _ = messages.send(Message::Exited {
                name: exit_name,
                instance,
                exit: Exit::new(code, signal, started_at),
            });
        });
        let (startup_passed, _) = watch::channel(container.startup_probe.is_none());
        self.ctx.live_logs.lock().unwrap().insert(log.clone());
        let mut running = Running {
            pid,
            log: log.clone(),
            instance,
            started_at: Instant::now(),
            probes: vec![],
            startup_passed,
            killing: None,
        };
        let ip = self
            .sandbox
            .as_ref()
            .map(|s| s.ip.to_string())
            .unwrap_or_default();
        for (kind, probe) in [
            (Kind::Startup, &container.startup_probe),
            (Kind::Liveness, &container.liveness_probe),
            (Kind::Readiness, &container.readiness_probe),
        ] {
            let Some(probe) = probe.clone() else { continue };
            running.probes.push(tokio::spawn(probe_loop(
                kind,
                probe,
                container.clone(),
                ip.clone(),
                (pid as i32, spec.uid, spec.gid),
                self.ctx.agent.clone(),
                instance,
                running.startup_passed.subscribe(),
                self.messages.clone(),
            )));
        }
        let has_readiness = container.readiness_probe.is_some();
        let has_startup = container.startup_probe.is_some();
        if let Some(record) = self.records.iter_mut().find(|r| r.name == name) {
            record.restart_count = record.starting_count();
            record.state = State::Running { started_at, pid };
            record.started = !has_startup;
            record.ready = !has_readiness && !has_startup;
        }
        self.running.insert(name.to_string(), running);
        info!(pod = %self.name(), container = name, pid, "container started");
        self.event(
            EventType::Normal,
            "Started",
            format!("Started container {name}"),
        )
        .await;
    }

    /// Everything a container needs before it can start; the error carries the Waiting reason.
    async fn prepare_container(
        &self,
        container: &Container,
    ) -> Result<(LaunchSpec, PathBuf), (&'static str, anyhow::Error)> {
        let image = container.image.clone().unwrap_or_default();
        let resolved = self
            .ctx
            .images
            .resolve(
                &image,
                container.command.as_deref().unwrap_or_default(),
                container.args.as_deref().unwrap_or_default(),
                &container
                    .volume_mounts
                    .iter()
                    .flatten()
                    .map(|m| m.mount_path.as_str())
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| ("ErrImagePull", e))?;
        let env = volumes::environment(
            &self.ctx.client,
            &self.pod,
            container,
            &self.ctx.service_env,
        )
        .await
        .map_err(|e| ("CreateContainerConfigError", e))?;
        let argv = resolved
            .argv
            .iter()
            .map(|a| volumes::expand(a, &env))
            .collect();
        let (uid, gid, groups) = self
            .security(container)
            .map_err(|e| ("CreateContainerConfigError", e))?;
        let volumes = self.volumes.as_ref().expect("volumes before containers");
        let mut mounts = volumes
            .mounts_for(container)
            .map_err(|e| ("CreateContainerConfigError", e))?;
        if resolved.own {
            mounts.push(BindMount {
                source: resolved.host_path.clone(),
                target: resolved.path.display().to_string(),
                read_only: true,
            });
        }
        let sandbox = self.sandbox.as_ref().expect("sandbox before containers");
        let scratch = self
            .dir
            .join("containers")
            .join(format!("{}-{}", container.name, self.next_instance));
        let logs = log_dir(&self.ctx.dir, &self.uid, &container.name);
        let restart = self
            .records
            .iter()
            .find(|r| r.name == container.name)
            .map_or(0, Record::starting_count);
        (|| -> Result<()> {
            for dir in [scratch.join("layer"), scratch.join("root"), logs.clone()] {
                std::fs::create_dir_all(dir)?;
            }
            Ok(())
        })()
        .map_err(|e| ("RunContainerError", e))?;
        Ok((
            LaunchSpec {
                sandbox_pid: sandbox.child.id() as i32,
                scratch,
                mounts,
                files: self.files(sandbox.ip),
                program: resolved.path.clone(),
                argv,
                env,
                working_dir: container.working_dir.clone(),
                uid,
                gid,
                supplemental_groups: groups,
            },
            logs.join(format!("{restart}.log")),
        ))
    }

    async fn handle(&mut self, message: Message) {
        match message {
            Message::Exited {
                name,
                instance,
                mut exit,
            } => {
                let Some(running) = self.take_exited(&name, instance) else {
                    return;
                };
                exit.message = running.killing.clone();
                info!(pod = %self.name(), container = %name, exit_code = exit.exit_code, "container exited");
                let policy = self.restart_policy();
                let init = self
                    .records
                    .iter()
                    .find(|r| r.name == name)
                    .is_some_and(|r| r.init);
                // An init container under Always is retried until it succeeds, as OnFailure.
                let policy = if init && policy == "Always" {
                    "OnFailure".to_string()
                } else {
                    policy
                };
                let again = status::restarts(&policy, exit.exit_code);
                let record = self.records.iter_mut().find(|r| r.name == name).unwrap();
                record.ready = false;
                record.started = false;
                if again {
                    // A container that ran ten minutes has earned a fresh back-off, as in the kubelet.
                    let count = if running.started_at.elapsed() > Duration::from_secs(600) {
                        0
                    } else {
                        record.restart_count
                    };
                    let delay = status::backoff(count);
                    record.last_exit = Some(exit.clone());
                    record.state = State::Waiting {
                        reason: if delay.is_zero() {
                            "ContainerCreating"
                        } else {
                            "CrashLoopBackOff"
                        }
                        .into(),
                        message: (!delay.is_zero()).then(|| {
                            format!(
                                "back-off {}s restarting failed container {name}",
                                delay.as_secs()
                            )
                        }),
                    };
                    self.restart_at.insert(name.clone(), Instant::now() + delay);
                    if !delay.is_zero() {
                        self.event(
                            EventType::Warning,
                            "BackOff",
                            format!("Back-off restarting failed container {name}"),
                        )
                        .await;
                    }
                } else {
                    record.state = State::Terminated(exit);
                }
            }
            Message::Probe {
                name,
                instance,
                kind,
                passing,
                detail,
            } => {
                let Some(running) = self
                    .running
                    .get_mut(&name)
                    .filter(|r| r.instance == instance)
                else {
                    return;
                };
                let record = self.records.iter_mut().find(|r| r.name == name).unwrap();
                match (kind, passing) {
                    (Kind::Readiness, ready) => record.ready = ready,
                    (Kind::Startup, true) => {
                        record.started = true;
                        let _ = running.startup_passed.send(true);
                        // Without a readiness probe a started container is ready.
                        if self
                            .spec_container(&name)
                            .is_some_and(|c| c.readiness_probe.is_none())
                        {
                            self.records
                                .iter_mut()
                                .find(|r| r.name == name)
                                .unwrap()
                                .ready = true;
                        }
                    }
                    (Kind::Startup | Kind::Liveness, false) => {
                        let what = if kind == Kind::Startup {
                            "startup"
                        } else {
                            "liveness"
                        };
                        let reason =
                            format!("Container {name} failed {what} probe, will be restarted");
                        running.killing = Some(reason.clone());
                        self.event(
                            EventType::Warning,
                            "Unhealthy",
                            format!("{what} probe failed: {detail}"),
                        )
                        .await;
                        self.event(EventType::Normal, "Killing", reason).await;
                        let grace = self.grace();
                        let pid = self.running[&name].pid;
                        tokio::spawn(stop_process(pid, grace));
                    }
                    (Kind::Liveness, true) => {}
                }
                if !passing && kind == Kind::Readiness {
                    self.event(
                        EventType::Warning,
                        "Unhealthy",
                        format!("Readiness probe failed: {detail}"),
                    )
                    .await;
                }
            }
        }
    }

    fn grace(&self) -> Duration {
        let seconds = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or(self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30);
        Duration::from_secs(seconds.max(0) as u64)
    }

    /// SIGTERM to every container, SIGKILL after `grace`, until none runs.
    async fn kill_all(&mut self, grace: Duration, rx: &mut mpsc::UnboundedReceiver<Message>) {
        for running in self.running.values() {
            signal_group(running.pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while !self.running.is_empty() {
            let wait = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(message @ Message::Exited { .. })) => self.handle_exit_only(message),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    for running in self.running.values() {
                        signal_group(running.pid, libc::SIGKILL);
                    }
                    // SIGKILL cannot be ignored; the exits follow promptly.
                    let hard = Instant::now() + Duration::from_secs(5);
                    while !self.running.is_empty() && Instant::now() < hard {
                        if let Ok(Some(message)) =
                            tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
                        {
                            self.handle_exit_only(message);
                        }
                    }
                    break;
                }
            }
        }
    }

    fn handle_exit_only(&mut self, message: Message) {
        let Message::Exited {
            name,
            instance,
            exit,
        } = message
        else {
            return;
        };
        if self.take_exited(&name, instance).is_some()
            && let Some(record) = self.records.iter_mut().find(|r| r.name == name)
        {
            record.state = State::Terminated(exit);
            record.ready = false;
        }
    }

    /// Forgets the container instance that exited (its probes, live log and scratch directory);
    /// `None` if that instance is not the one running (a late message).
    fn take_exited(&mut self, name: &str, instance: u32) -> Option<Running> {
        if self
            .running
            .get(name)
            .is_none_or(|r| r.instance != instance)
        {
            return None;
        }
        let running = self.running.remove(name)?;
        self.ctx.live_logs.lock().unwrap().remove(&running.log);
        running.probes.iter().for_each(|p| p.abort());
        let _ = std::fs::remove_dir_all(
            self.dir
                .join("containers")
                .join(format!("{name}-{instance}")),
        );
        Some(running)
    }

    /// Graceful deletion: not Ready at once, containers stopped within the grace period.
    async fn terminate(&mut self, rx: &mut mpsc::UnboundedReceiver<Message>) {
        self.write_status().await;
        if !self.running.is_empty() {
            self.event(
                EventType::Normal,
                "Killing",
                "Stopping all containers".into(),
            )
            .await;
        }
        let grace = self.grace();
        self.kill_all(grace, rx).await;
    }

    fn cleanup(&mut self) {
        if let Some(mut sandbox) = self.sandbox.take() {
            let _ = sandbox.child.kill();
            let _ = sandbox.child.wait();
            self.ctx.used_ips.lock().unwrap().remove(&sandbox.ip);
        }
        // Logs stay in the run directory; everything else of the pod goes.
        for dir in ["containers", "volumes"] {
            let _ = std::fs::remove_dir_all(self.dir.join(dir));
        }
    }

    async fn finish_deletion(&mut self) {
        self.cleanup();
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            self.pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        if let Err(e) = api.delete(&name, &params).await
            && !bulwark_controllers::runtime::is_not_found(&e)
        {
            warn!(pod = %self.name(), error = %e, "final delete failed");
        }
    }

    async fn write_status(&mut self) {
        let foreign: Vec<PodCondition> = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|c| {
                ![
                    "PodReadyToStartContainers",
                    "Initialized",
                    "ContainersReady",
                    "Ready",
                ]
                .contains(&c.type_.as_str())
            })
            .collect();
        let policy = self.restart_policy();
        let facts = PodFacts {
            restart_policy: &policy,
            pod_ip: self.sandbox.as_ref().map(|s| s.ip.to_string()),
            host_ip: self.ctx.host_ip.clone(),
            start_time: self.start_time,
            sandbox_ready: self.sandbox.is_some(),
            foreign_conditions: foreign,
            terminating: self.pod.metadata.deletion_timestamp.is_some(),
        };
        let mut status: PodStatus = status::pod_status(&facts, &self.records);
        // A condition's transition time changes only when its status does.
        for condition in status.conditions.iter_mut().flatten() {
            let entry = self.transitions.entry(condition.type_.clone());
            let kept = entry.or_insert_with(|| (condition.status.clone(), Timestamp::now()));
            if kept.0 != condition.status {
                *kept = (condition.status.clone(), Timestamp::now());
            }
            if condition.last_transition_time.is_some() && condition.type_ != "PodScheduled" {
                condition.last_transition_time =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(kept.1));
            }
        }
        let value = serde_json::json!({ "status": status });
        if self.written.as_ref() == Some(&value) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            self.pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&value))
            .await
        {
            Ok(_) => self.written = Some(value),
            Err(e) => warn!(pod = %self.name(), error = %e, "pod status update failed"),
        }
    }
}

fn signal_group(pid: u32, signal: i32) {
    // SAFETY: kill(2) on the container's own process group (spawn_bound calls setpgid).
    unsafe { libc::kill(-(pid as i32), signal) };
}

/// SIGTERM, then SIGKILL after `grace` if the process group is still there.
async fn stop_process(pid: u32, grace: Duration) {
    signal_group(pid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        // SAFETY: kill(pid, 0) only checks for existence.
        if unsafe { libc::kill(pid as i32, 0) } != 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal_group(pid, libc::SIGKILL);
}

#[allow(clippy::too_many_arguments)]
async fn probe_loop(
    kind: Kind,
    probe: k8s_openapi::api::core::v1::Probe,
    container: Container,
    pod_ip: String,
    exec_target: (i32, u32, u32),
    agent: PathBuf,
    instance: u32,
    mut startup_passed: watch::Receiver<bool>,
    messages: mpsc::UnboundedSender<Message>,
) {
    // Liveness and readiness wait for the startup probe, as in the kubelet.
    if kind != Kind::Startup && startup_passed.wait_for(|passed| *passed).await.is_err() {
        return;
    }
    let timing = Timing::of(&probe);
    tokio::time::sleep(timing.initial_delay).await;
    let mut verdict = Verdict::default();
    loop {
        let result = probe::check(&probe, &container, &pod_ip, Some(exec_target), &agent).await;
        let detail = result
            .as_ref()
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        if let Some(passing) = verdict.record(&timing, result.is_ok()) {
            let _ = messages.send(Message::Probe {
                name: container.name.clone(),
                instance,
                kind,
                passing,
                detail,
            });
            if kind == Kind::Startup && passing {
                return;
            }
        }
        tokio::time::sleep(timing.period).await;
    }
}

/// Where a container's logs stay (`<restart count>.log` per run), also after the pod is gone.
pub fn log_dir(node_dir: &Path, pod_uid: &str, container: &str) -> PathBuf {
    node_dir
        .join("pods")
        .join(pod_uid)
        .join("logs")
        .join(container)
}
