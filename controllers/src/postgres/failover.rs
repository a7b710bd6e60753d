//! The operator's failover and switchover decisions, pure: from what it sees of a cluster (its
//! recorded epoch and progress, each member's reported state) to the one next step. The driver
//! (`cluster.rs`) carries a step out and observes again; the model checker
//! (`controllers/model-check/tests/postgres_model_check.rs`) runs this same function against
//! simulated instances, crashes and partitions.
//!
//! The order is what makes a failover safe:
//! 1. `Begin`: the new epoch and target are written to the DatabaseCluster status (a
//!    compare-and-set) before anything else happens, so a new leader resumes, never repeats.
//! 2. The old primary is fenced when the operator can reach it.
//! 3. Every reachable replica accepts the new epoch by following the target (cascading from it
//!    until it is promoted). From then on it never streams from the old primary again, so the
//!    old primary cannot collect the synchronous acknowledgements it needs.
//! 4. Only once enough replicas have moved that the old primary can no longer gather `ANY k`
//!    acknowledgements, and none of them holds more WAL than the target, is the target
//!    promoted.

use super::instance::{Command, Role, State, Synchronous};

/// A member of the cluster as the operator sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    pub name: String,
    /// Where replicas stream from it (`host:port`); none until its pod has an address.
    pub address: Option<String>,
    /// What its instance manager reported; none when the operator could not reach it.
    pub report: Option<Report>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Report {
    pub state: State,
    /// PostgreSQL answers.
    pub running: bool,
    /// A primary out of recovery (accepting writes).
    pub writable: bool,
    /// How much WAL it holds: the furthest of received and replayed, as a byte position.
    pub wal_position: Option<u64>,
    /// The address it is streaming from right now (its WAL receiver is connected).
    pub streaming_from: Option<String>,
}

impl Member {
    fn reachable_report(&self) -> Option<&Report> {
        self.report.as_ref()
    }

    fn epoch(&self) -> Option<u64> {
        self.report.as_ref().map(|r| r.state.epoch)
    }

    pub(super) fn streams_from(&self, address: Option<&str>) -> bool {
        let streaming = self
            .report
            .as_ref()
            .and_then(|r| r.streaming_from.as_deref());
        streaming.is_some() && streaming == address
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The primary failed: it is fenced (when reachable) and may have lost unreplicated WAL.
    Failover,
    /// Planned: the primary stops cleanly and the target replays all of its WAL first.
    Switchover,
}

impl Kind {
    /// How status and Events name it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Failover => "failover",
            Kind::Switchover => "switchover",
        }
    }

    /// The kind a status records (anything but `switchover` is a failover).
    pub fn from_name(name: &str) -> Self {
        if name == Kind::Switchover.name() {
            Kind::Switchover
        } else {
            Kind::Failover
        }
    }
}

/// A failover or switchover under way: recorded in status with its epoch before any side effect.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Progress {
    pub kind: Kind,
    pub from: String,
    pub to: String,
    pub epoch: u64,
    pub reason: String,
}

/// What the operator has recorded about the cluster (DatabaseCluster status).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Recorded {
    pub epoch: u64,
    pub primary: String,
    pub progress: Option<Progress>,
}

/// How commits are replicated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Replication {
    Asynchronous,
    /// `ANY count` of the other members; `required`: commits wait rather than degrade.
    Synchronous {
        count: u32,
        required: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation<'a> {
    pub recorded: &'a Recorded,
    pub members: &'a [Member],
    pub replication: Replication,
    /// Members the operator has not seen running for the failover delay (unreachable, or
    /// PostgreSQL down).
    pub down_for_delay: &'a [String],
    /// The primary's WAL position when the operator last saw it healthy, and how far behind it a
    /// failover candidate may be (asynchronous replication only).
    pub last_primary_position: Option<u64>,
    pub max_lag: Option<u64>,
    /// A switchover to make: the user asked for it, or a rolling update or scale-down needs it.
    pub switchover: Option<Planned<'a>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned<'a> {
    pub to: &'a str,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Healthy and configured as wanted.
    Steady,
    /// Nothing safe to do yet, and why.
    Wait(String),
    /// Record this progress (epoch compare-and-set) before anything else.
    Begin(Progress),
    /// Send a command to a member's instance manager.
    Send { member: String, command: Command },
    /// The target serves as primary: record it and clear the progress.
    Complete { primary: String },
}

/// The next step for the cluster.
pub fn decide(observation: &Observation<'_>) -> Step {
    match &observation.recorded.progress {
        Some(progress) => continue_progress(observation, progress),
        None => steady(observation),
    }
}

fn down_for_delay(observation: &Observation<'_>, member: &Member) -> bool {
    observation.down_for_delay.contains(&member.name)
}

fn member<'a>(observation: &'a Observation<'_>, name: &str) -> Option<&'a Member> {
    observation.members.iter().find(|m| m.name == name)
}

/// The primary serves writes in the recorded epoch.
fn serves_as_primary(member: &Member, epoch: u64) -> bool {
    member.reachable_report().is_some_and(|r| {
        r.state.epoch == epoch && r.state.role == Role::Primary && r.running && r.writable
    })
}

/// The synchronous setting the primary `primary` should run with.
fn wanted_synchronous(observation: &Observation<'_>, primary: &Member) -> Option<Synchronous> {
    let Replication::Synchronous { count, required } = observation.replication else {
        return None;
    };
    let standbys: Vec<String> = observation
        .members
        .iter()
        .filter(|m| m.name != primary.name)
        .map(|m| m.name.clone())
        .collect();
    let count = count.min(standbys.len() as u32);
    if count == 0 {
        return None;
    }
    if !required {
        // Preferred durability: too few standbys streaming degrades to asynchronous commits.
        let streaming = observation
            .members
            .iter()
            .filter(|m| m.streams_from(primary.address.as_deref()))
            .count() as u32;
        if streaming < count {
            return None;
        }
    }
    Some(Synchronous { count, standbys })
}

fn synchronous_command(epoch: u64, wanted: &Option<Synchronous>) -> Command {
    let (count, standbys) = wanted
        .as_ref()
        .map(|s| (s.count, s.standbys.clone()))
        .unwrap_or_default();
    Command::Synchronous {
        epoch,
        count,
        standbys,
    }
}

/// How many members other than the old primary must have stopped streaming from it (and then
/// left its epoch) before a new primary may be promoted. Synchronous and required: enough that
/// the old one can no longer gather `ANY k` acknowledgements (n - 1 standbys, k needed: n - k of
/// them), so every write it acknowledged is on one of them. Otherwise every standby: an old
/// primary that still reaches one of them is not isolated, never fences itself, and would go on
/// acknowledging writes on its own.
fn quorum(observation: &Observation<'_>) -> usize {
    let standbys = observation.members.len().saturating_sub(1);
    match observation.replication {
        Replication::Synchronous {
            count,
            required: true,
        } => standbys.saturating_sub(count as usize).saturating_add(1),
        _ => standbys,
    }
    .max(1)
}

fn steady(observation: &Observation<'_>) -> Step {
    let recorded = observation.recorded;
    let Some(primary) = member(observation, &recorded.primary) else {
        return Step::Wait(format!("the primary {} has no pod", recorded.primary));
    };
    if !serves_as_primary(primary, recorded.epoch) {
        return failover(observation, primary);
    }
    if let Some(planned) = &observation.switchover
        && planned.to != primary.name
    {
        return switchover(observation, primary, planned);
    }
    let wanted = wanted_synchronous(observation, primary);
    if primary.report.as_ref().map(|r| &r.state.synchronous) != Some(&wanted) {
        return Step::Send {
            member: primary.name.clone(),
            command: synchronous_command(recorded.epoch, &wanted),
        };
    }
    if let Some(step) = rejoin_one(observation, primary, recorded.epoch) {
        return step;
    }
    Step::Steady
}

/// A reachable member that is not yet a replica of `primary` in `epoch` is told to follow it.
fn rejoin_one(observation: &Observation<'_>, primary: &Member, epoch: u64) -> Option<Step> {
    let address = primary.address.clone()?;
    observation
        .members
        .iter()
        .filter(|m| m.name != primary.name)
        .find(|m| {
            m.reachable_report().is_some_and(|r| {
                r.state.epoch < epoch
                    || r.state.role
                        != (Role::Replica {
                            primary: address.clone(),
                        })
            })
        })
        .map(|m| Step::Send {
            member: m.name.clone(),
            command: Command::Follow {
                primary: address.clone(),
                epoch,
            },
        })
}

/// A member that could take over from `from`: reachable, running as a replica, and no longer
/// streaming from it.
fn candidates<'a>(observation: &'a Observation<'_>, from: &'a Member) -> Vec<&'a Member> {
    observation
        .members
        .iter()
        .filter(|m| m.name != from.name && m.address.is_some())
        .filter(|m| {
            m.reachable_report().is_some_and(|r| {
                r.running && !r.writable && matches!(r.state.role, Role::Replica { .. })
            })
        })
        .filter(|m| !m.streams_from(from.address.as_deref()))
        .collect()
}

/// The candidate holding the most WAL (ties: the first by name).
fn most_wal<'a>(members: &[&'a Member]) -> Option<&'a Member> {
    members.iter().copied().max_by(|a, b| {
        let position = |m: &Member| m.report.as_ref().and_then(|r| r.wal_position);
        position(a)
            .cmp(&position(b))
            .then_with(|| b.name.cmp(&a.name))
    })
}

fn failover(observation: &Observation<'_>, primary: &Member) -> Step {
    if !down_for_delay(observation, primary) {
        return Step::Wait(format!(
            "the primary {} is unhealthy; waiting out the failover delay",
            primary.name
        ));
    }
    if let Some(streaming) = observation
        .members
        .iter()
        .find(|m| m.streams_from(primary.address.as_deref()))
    {
        return Step::Wait(format!(
            "{} still streams from the primary {}: only the operator's link to it is down",
            streaming.name, primary.name
        ));
    }
    choose_target(observation, &[primary], Kind::Failover, |target| {
        format!(
            "the primary {} was unreachable or not serving for the failover delay; {target} holds the most WAL",
            primary.name
        )
    })
}

/// Starts a failover from `writers[0]` (and from any target it already had that may have been
/// promoted: `writers[1..]`) to the replica holding the most WAL.
fn choose_target(
    observation: &Observation<'_>,
    writers: &[&Member],
    kind: Kind,
    reason: impl Fn(&str) -> String,
) -> Step {
    let from = writers[0];
    let candidates: Vec<&Member> = candidates(observation, from)
        .into_iter()
        .filter(|m| {
            writers[1..]
                .iter()
                .all(|w| w.name != m.name && !m.streams_from(w.address.as_deref()))
        })
        .collect();
    let needed = quorum(observation);
    if candidates.len() < needed {
        return Step::Wait(format!(
            "{} of the replicas can be reached and have stopped streaming from {}; {needed} are needed to be sure the new primary holds every acknowledged write",
            candidates.len(),
            from.name
        ));
    }
    let Some(target) = most_wal(&candidates) else {
        return Step::Wait("no replica can take over".into());
    };
    if let (
        Replication::Asynchronous
        | Replication::Synchronous {
            required: false, ..
        },
        Some(max_lag),
        Some(last),
    ) = (
        observation.replication,
        observation.max_lag,
        observation.last_primary_position,
    ) {
        let position = target
            .report
            .as_ref()
            .and_then(|r| r.wal_position)
            .unwrap_or(0);
        if last.saturating_sub(position) > max_lag {
            return Step::Wait(format!(
                "{} is the most advanced replica but lags {} bytes behind the primary's last position, more than maxLag ({max_lag})",
                target.name,
                last.saturating_sub(position)
            ));
        }
    }
    Step::Begin(Progress {
        kind,
        from: from.name.clone(),
        to: target.name.clone(),
        epoch: observation.recorded.epoch.max(highest_epoch(observation)) + 1,
        reason: reason(&target.name),
    })
}

/// The highest epoch any member reports: a new epoch is above all of them.
fn highest_epoch(observation: &Observation<'_>) -> u64 {
    observation
        .members
        .iter()
        .filter_map(Member::epoch)
        .max()
        .unwrap_or(0)
}

fn switchover(observation: &Observation<'_>, primary: &Member, planned: &Planned<'_>) -> Step {
    let target = planned.to;
    let Some(to) = member(observation, target) else {
        return Step::Wait(format!("switchover target {target} is not a member"));
    };
    if !to.streams_from(primary.address.as_deref()) {
        return Step::Wait(format!(
            "switchover target {target} is not streaming from the primary {}",
            primary.name
        ));
    }
    Step::Begin(Progress {
        kind: Kind::Switchover,
        from: primary.name.clone(),
        to: target.into(),
        epoch: observation.recorded.epoch.max(highest_epoch(observation)) + 1,
        reason: planned.reason.clone(),
    })
}

fn continue_progress(observation: &Observation<'_>, progress: &Progress) -> Step {
    let epoch = progress.epoch;
    let Some(from) = member(observation, &progress.from) else {
        return Step::Wait(format!("{} has no pod", progress.from));
    };
    let Some(target) = member(observation, &progress.to) else {
        return Step::Wait(format!("{} has no pod", progress.to));
    };
    if serves_as_primary(target, epoch) {
        return Step::Complete {
            primary: target.name.clone(),
        };
    }
    // 2. The old primary stops: at once for a failover, cleanly for a switchover.
    if let Some(report) = from.reachable_report()
        && report.state.epoch < epoch
    {
        let command = match progress.kind {
            Kind::Failover => Command::Fence { epoch },
            Kind::Switchover => Command::Demote { epoch },
        };
        return Step::Send {
            member: from.name.clone(),
            command,
        };
    }
    if progress.kind == Kind::Switchover && from.report.is_none() {
        return Step::Wait(format!(
            "waiting for {} to stop cleanly before the switchover",
            from.name
        ));
    }
    let Some(target_address) = target.address.clone() else {
        return Step::Wait(format!("{} has no address", target.name));
    };
    // 3. Every reachable replica leaves the old epoch.
    if let Some(replica) = observation.members.iter().find(|m| {
        m.name != from.name && m.name != target.name && m.epoch().is_some_and(|e| e < epoch)
    }) {
        return Step::Send {
            member: replica.name.clone(),
            command: Command::Follow {
                primary: target_address,
                epoch,
            },
        };
    }
    if let Some(report) = target.reachable_report()
        && report.state.epoch == epoch
        && matches!(report.state.role, Role::Primary | Role::Fenced)
    {
        // Promoted (and since restarted, or fenced itself: nothing else fences a target in its
        // own epoch): from here on it is the primary, watched and failed over like any other.
        return Step::Complete {
            primary: target.name.clone(),
        };
    }
    let target_report = target.reachable_report().filter(|r| {
        r.running && matches!(r.state.role, Role::Replica { .. }) && r.state.epoch < epoch
    });
    let Some(target_report) = target_report else {
        if !down_for_delay(observation, target) {
            return Step::Wait(format!(
                "waiting for {} to be a running replica",
                target.name
            ));
        }
        // The target died: start over with a new epoch and target.
        return choose_target(observation, &[from, target], progress.kind, |to| {
            format!(
                "{} ({}); {} could not be promoted, {to} holds the most WAL",
                progress.reason,
                progress.kind.name(),
                progress.to
            )
        });
    };
    // 4. Enough replicas have left the old epoch, and none holds more WAL than the target.
    let moved: Vec<&Member> = observation
        .members
        .iter()
        .filter(|m| m.name != from.name && m.name != target.name)
        .filter(|m| m.epoch().is_some_and(|e| e >= epoch))
        .collect();
    let needed = quorum(observation);
    if moved.len() + 1 < needed {
        return Step::Wait(format!(
            "{} of the replicas have left epoch {}; {needed} are needed before {} is promoted",
            moved.len() + 1,
            epoch - 1,
            target.name
        ));
    }
    let position = |m: &Member| m.report.as_ref().and_then(|r| r.wal_position);
    if let Some(ahead) = moved
        .iter()
        .find(|m| position(m) > target_report.wal_position)
        .filter(|_| progress.kind == Kind::Failover)
    {
        let mut candidates = moved.clone();
        candidates.push(target);
        let best = most_wal(&candidates).unwrap_or(ahead);
        return Step::Begin(Progress {
            kind: progress.kind,
            from: from.name.clone(),
            to: best.name.clone(),
            epoch: epoch.max(highest_epoch(observation)) + 1,
            reason: format!(
                "{}; {} holds more WAL than {}",
                progress.reason, best.name, target.name
            ),
        });
    }
    if progress.kind == Kind::Switchover {
        let final_position = from.report.as_ref().and_then(|r| r.wal_position);
        if final_position.is_none() || target_report.wal_position < final_position {
            return Step::Wait(format!(
                "{} has not yet replayed {}'s final WAL",
                target.name, from.name
            ));
        }
    }
    let wanted = wanted_synchronous(observation, target);
    if target_report.state.synchronous != wanted {
        // Set before the promotion, in the target's current epoch, so its first commit as
        // primary already waits for the standbys.
        return Step::Send {
            member: target.name.clone(),
            command: synchronous_command(target_report.state.epoch, &wanted),
        };
    }
    Step::Send {
        member: target.name.clone(),
        command: Command::Promote { epoch },
    }
}
