//! Pure kubelet rules: what a pod's status says given its containers' states, whether an exited
//! container restarts, and how long the back-off is. The pod worker only records facts here.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub struct Exit {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
}

impl Exit {
    /// The reason a kubelet gives: Completed for exit 0, Error otherwise.
    pub fn new(exit_code: i32, signal: Option<i32>, started_at: Timestamp) -> Self {
        Self {
            // A signal death reports 128+signal, as a shell and the kubelet do.
            exit_code: signal.map_or(exit_code, |s| 128 + s),
            signal,
            reason: if exit_code == 0 && signal.is_none() {
                "Completed"
            } else {
                "Error"
            }
            .into(),
            message: None,
            started_at,
            finished_at: Timestamp::now(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
        pid: u32,
    },
    Terminated(Exit),
}

/// One container as the pod worker sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub init: bool,
    pub state: State,
    pub last_exit: Option<Exit>,
    pub restart_count: i32,
    /// Readiness probe passing (true without a readiness probe once running).
    pub ready: bool,
    /// Startup probe passed (true without one once running).
    pub started: bool,
}

impl Container {
    pub fn new(name: &str, image: &str, init: bool) -> Self {
        Self {
            name: name.into(),
            image: image.into(),
            init,
            state: State::Waiting {
                reason: "PodInitializing".into(),
                message: None,
            },
            last_exit: None,
            restart_count: 0,
            ready: false,
            started: false,
        }
    }

    /// The restart count once the container (re)starts now: one more if it ran before, so each
    /// run has its own count (and log file).
    pub fn starting_count(&self) -> i32 {
        let rerun = matches!(self.state, State::Waiting { .. }) && self.last_exit.is_some();
        self.restart_count + i32::from(rerun)
    }

    pub fn succeeded(&self) -> bool {
        matches!(&self.state, State::Terminated(exit) if exit.exit_code == 0)
    }
}

/// Whether a container that exited with `exit_code` runs again under `restart_policy`.
pub fn restarts(restart_policy: &str, exit_code: i32) -> bool {
    match restart_policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// The kubelet's crash-loop back-off before restart number `restart_count + 1`: the first
/// restart is immediate, then 10 s doubling up to 5 minutes.
pub fn backoff(restart_count: i32) -> Duration {
    if restart_count == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs(10)
        .saturating_mul(1 << (restart_count - 1).min(5))
        .min(Duration::from_secs(300))
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

fn exit_state(exit: &Exit) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: exit.exit_code,
        signal: exit.signal,
        reason: Some(exit.reason.clone()),
        message: exit.message.clone(),
        started_at: Some(time(exit.started_at)),
        finished_at: Some(time(exit.finished_at)),
        container_id: None,
    }
}

fn container_status(c: &Container) -> ContainerStatus {
    let state = match &c.state {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        State::Running { started_at, .. } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(time(*started_at)),
            }),
            ..Default::default()
        },
        State::Terminated(exit) => ContainerState {
            terminated: Some(exit_state(exit)),
            ..Default::default()
        },
    };
    let container_id = match &c.state {
        State::Running { pid, .. } => Some(format!("bulwark://{pid}")),
        _ => None,
    };
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: format!("bulwark-node://{}", c.image),
        container_id,
        ready: c.ready && matches!(c.state, State::Running { .. }),
        started: Some(c.started && matches!(c.state, State::Running { .. })),
        restart_count: c.restart_count,
        state: Some(state),
        last_state: c.last_exit.as_ref().map(|exit| ContainerState {
            terminated: Some(exit_state(exit)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Facts about the pod that are not per container.
pub struct PodFacts<'a> {
    pub restart_policy: &'a str,
    pub pod_ip: Option<String>,
    pub host_ip: String,
    pub start_time: Timestamp,
    /// The sandbox (network) is up.
    pub sandbox_ready: bool,
    /// Pod conditions owned by others (PodScheduled), kept as they are.
    pub foreign_conditions: Vec<PodCondition>,
    /// Set while the pod is being deleted: nothing is Ready any more.
    pub terminating: bool,
}

/// The phase a kubelet reports: Pending until every init container succeeded and every app
/// container started; Succeeded/Failed once all app containers stopped for good.
pub fn phase(facts: &PodFacts, containers: &[Container]) -> &'static str {
    let (init, app): (Vec<&Container>, Vec<&Container>) = containers.iter().partition(|c| c.init);
    let failed_for_good = |c: &Container| matches!(&c.state, State::Terminated(exit) if !restarts(facts.restart_policy, exit.exit_code));
    if init.iter().any(|c| failed_for_good(c) && !c.succeeded()) {
        return "Failed";
    }
    if !init.iter().all(|c| c.succeeded()) {
        return "Pending";
    }
    if app.iter().all(|c| failed_for_good(c)) && !app.is_empty() {
        return if app.iter().all(|c| c.succeeded()) {
            "Succeeded"
        } else {
            "Failed"
        };
    }
    let ever_started = |c: &&Container| {
        matches!(c.state, State::Running { .. } | State::Terminated(_)) || c.restart_count > 0
    };
    if app.iter().all(ever_started) {
        "Running"
    } else {
        "Pending"
    }
}

pub fn pod_status(facts: &PodFacts, containers: &[Container]) -> PodStatus {
    let now = Timestamp::now();
    let condition = |type_: &str, ok: bool, reason: Option<&str>| PodCondition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: (!ok)
            .then(|| reason.unwrap_or_default().to_string())
            .filter(|r| !r.is_empty()),
        last_transition_time: Some(time(now)),
        ..Default::default()
    };
    let init_done = containers
        .iter()
        .filter(|c| c.init)
        .all(Container::succeeded);
    let app: Vec<&Container> = containers.iter().filter(|c| !c.init).collect();
    let containers_ready = !facts.terminating
        && app
            .iter()
            .all(|c| c.ready && matches!(c.state, State::Running { .. }));
    let mut conditions = facts.foreign_conditions.clone();
    conditions.extend([
        condition("PodReadyToStartContainers", facts.sandbox_ready, None),
        condition("Initialized", init_done, Some("ContainersNotInitialized")),
        condition(
            "ContainersReady",
            containers_ready,
            Some("ContainersNotReady"),
        ),
        condition("Ready", containers_ready, Some("ContainersNotReady")),
    ]);
    PodStatus {
        phase: Some(phase(facts, containers).into()),
        conditions: Some(conditions),
        host_ip: Some(facts.host_ip.clone()),
        host_ips: Some(vec![k8s_openapi::api::core::v1::HostIP {
            ip: facts.host_ip.clone(),
        }]),
        pod_ip: facts.pod_ip.clone(),
        pod_ips: facts.pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        start_time: Some(time(facts.start_time)),
        init_container_statuses: Some(
            containers
                .iter()
                .filter(|c| c.init)
                .map(container_status)
                .collect(),
        ),
        container_statuses: Some(app.iter().map(|c| container_status(c)).collect()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(policy: &str) -> PodFacts<'_> {
        PodFacts {
            restart_policy: policy,
            pod_ip: Some("10.244.1.2".into()),
            host_ip: "10.244.0.1".into(),
            start_time: Timestamp::now(),
            sandbox_ready: true,
            foreign_conditions: vec![],
            terminating: false,
        }
    }

    fn running(name: &str, ready: bool) -> Container {
        let mut c = Container::new(name, "img", false);
        c.state = State::Running {
            started_at: Timestamp::now(),
            pid: 1,
        };
        c.ready = ready;
        c.started = true;
        c
    }

    fn exited(name: &str, code: i32, init: bool) -> Container {
        let mut c = Container::new(name, "img", init);
        c.state = State::Terminated(Exit::new(code, None, Timestamp::now()));
        c
    }

    fn condition(status: &PodStatus, type_: &str) -> String {
        status
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap()
            .status
            .clone()
    }

    #[test]
    fn ready_only_when_every_app_container_is_ready_and_not_terminating() {
        let f = facts("Always");
        let both = [running("a", true), running("b", true)];
        assert_eq!(condition(&pod_status(&f, &both), "Ready"), "True");
        let one = [running("a", true), running("b", false)];
        assert_eq!(condition(&pod_status(&f, &one), "Ready"), "False");
        let terminating = PodFacts {
            terminating: true,
            ..facts("Always")
        };
        assert_eq!(
            condition(&pod_status(&terminating, &both), "Ready"),
            "False"
        );
    }

    #[test]
    fn phases_follow_init_containers_and_restart_policy() {
        let f = facts("Always");
        assert_eq!(
            phase(
                &f,
                &[exited("init", 1, true), Container::new("app", "i", false)]
            ),
            "Pending"
        );
        assert_eq!(phase(&facts("Never"), &[exited("init", 1, true)]), "Failed");
        assert_eq!(
            phase(&f, &[exited("init", 0, true), running("app", false)]),
            "Running"
        );
        // Under Always an exited container is restarting: still Running.
        assert_eq!(phase(&f, &[exited("app", 0, false)]), "Running");
        assert_eq!(
            phase(&facts("OnFailure"), &[exited("app", 0, false)]),
            "Succeeded"
        );
        assert_eq!(
            phase(
                &facts("Never"),
                &[exited("a", 0, false), exited("b", 2, false)]
            ),
            "Failed"
        );
        assert_eq!(phase(&f, &[Container::new("app", "i", false)]), "Pending");
    }

    #[test]
    fn restart_policy_and_backoff_match_the_kubelet() {
        assert!(restarts("Always", 0) && restarts("OnFailure", 1) && !restarts("OnFailure", 0));
        assert!(!restarts("Never", 137));
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(2), Duration::from_secs(20));
        assert_eq!(backoff(12), Duration::from_secs(300));
    }

    #[test]
    fn a_signal_death_reports_128_plus_the_signal() {
        let exit = Exit::new(0, Some(9), Timestamp::now());
        assert_eq!((exit.exit_code, exit.reason.as_str()), (137, "Error"));
    }
}
