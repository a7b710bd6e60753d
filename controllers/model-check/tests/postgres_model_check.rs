//! Model check of PostgreSQL failover: the production decisions (`failover::decide` for the
//! operator, `instance::decide` for every instance manager) run against three simulated
//! instances, client writes, crashes, restarts and partitions of any link, over every
//! interleaving (breadth first, so each counterexample is a shortest one).
//!
//! What is abstracted: WAL is a list of write ids; a replica streams one entry at a time from
//! the instance it follows, if its WAL is a prefix of that one's; a primary acknowledges a write
//! once `ANY k` of its standbys that are connected and following it hold it (asynchronous: at
//! once). The operator and the API server are one node; the operator observes and acts in one
//! step. Time appears once, as the bound the README states: the failover delay is longer than
//! the isolation bound, so an isolated primary has fenced itself (or is down) by the time the
//! operator's delay has elapsed.

use std::fmt;

use bulwark_model_check::StateSpace;

use bulwark_controllers::postgres::failover::{
    self, Member, Observation, Recorded, Replication, Report, Step,
};
use bulwark_controllers::postgres::instance::{self, Action, Command, Role, State, Synchronous};

const INSTANCES: usize = 3;
const OPERATOR: usize = INSTANCES;

fn name(i: usize) -> String {
    format!("db-{}", i + 1)
}

fn address(i: usize) -> String {
    format!("{}:5432", name(i))
}

fn index_of_name(n: &str) -> usize {
    (0..INSTANCES)
        .find(|&i| name(i) == n)
        .expect("a member name")
}

fn index_of_address(a: &str) -> usize {
    (0..INSTANCES)
        .find(|&i| address(i) == a)
        .expect("a member address")
}

/// How the model weakens what the operator sees, to show each safeguard is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Blindness {
    None,
    /// The operator does not ask the replicas whether they still stream from the primary.
    ReplicasView,
    /// The operator does not know how much WAL each replica holds.
    WalPositions,
}

#[derive(Clone, Copy, Debug)]
struct Config {
    replication: Replication,
    blindness: Blindness,
    writes: u8,
    faults: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Instance {
    up: bool,
    /// Since it last started, it has read the cluster's epoch from the API server and found it
    /// no newer than its own: a primary serves only then.
    confirmed: bool,
    state: State,
    wal: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Ack {
    write: u8,
    epoch: u64,
    by: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct World {
    instances: Vec<Instance>,
    recorded: Recorded,
    /// Cut links, one bit per pair of nodes (instances and the operator).
    cut: u8,
    acked: Vec<Ack>,
    next_write: u8,
    faults: u8,
    /// The highest epoch an instance has been promoted into.
    promoted: u64,
}

fn link_bit(a: usize, b: usize) -> u8 {
    let (a, b) = (a.min(b), a.max(b));
    // Pairs of 4 nodes: (0,1) (0,2) (0,3) (1,2) (1,3) (2,3).
    let index = match (a, b) {
        (0, 1) => 0,
        (0, 2) => 1,
        (0, 3) => 2,
        (1, 2) => 3,
        (1, 3) => 4,
        (2, 3) => 5,
        _ => unreachable!("no link from a node to itself"),
    };
    1 << index
}

fn node_name(n: usize) -> String {
    if n == OPERATOR {
        "operator".into()
    } else {
        name(n)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Invariant {
    /// Two instances acknowledged writes in the same epoch.
    OneWriterPerEpoch,
    /// An instance acknowledged a write after a newer epoch's primary was promoted.
    NoAckAfterPromotion,
    /// (Synchronous, required) an acknowledged write is missing from the newest primary.
    NoAcknowledgedWriteLost,
}

impl World {
    fn initial(config: &Config) -> Self {
        let synchronous = match config.replication {
            Replication::Synchronous { count, .. } => Some(Synchronous {
                count,
                standbys: (1..INSTANCES).map(name).collect(),
            }),
            Replication::Asynchronous => None,
        };
        let mut instances = vec![Instance {
            up: true,
            confirmed: true,
            state: State {
                epoch: 0,
                role: Role::Primary,
                synchronous,
            },
            wal: Vec::new(),
        }];
        for _ in 1..INSTANCES {
            instances.push(Instance {
                up: true,
                confirmed: true,
                state: State {
                    epoch: 0,
                    role: Role::Replica {
                        primary: address(0),
                    },
                    synchronous: None,
                },
                wal: Vec::new(),
            });
        }
        World {
            instances,
            recorded: Recorded {
                epoch: 0,
                primary: name(0),
                progress: None,
            },
            cut: 0,
            acked: Vec::new(),
            next_write: 0,
            faults: 0,
            promoted: 0,
        }
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        self.cut & link_bit(a, b) == 0
    }

    fn serving(&self, i: usize) -> bool {
        let instance = &self.instances[i];
        instance.up
            && instance.state.role.serves()
            && (instance.confirmed || instance.state.role != Role::Primary)
    }

    /// The instance `i` follows, if it is streaming from it now.
    fn streaming_from(&self, i: usize) -> Option<usize> {
        let me = &self.instances[i];
        let Role::Replica { primary } = &me.state.role else {
            return None;
        };
        let upstream = index_of_address(primary);
        let connected = self.serving(i) && self.serving(upstream) && self.linked(i, upstream);
        (connected && self.instances[upstream].wal.starts_with(&me.wal)).then_some(upstream)
    }

    /// Neither the API server nor any replica streaming from it can reach `i`.
    fn isolated(&self, i: usize) -> bool {
        !self.linked(i, OPERATOR) && (0..INSTANCES).all(|n| self.streaming_from(n) != Some(i))
    }

    fn members(&self, config: &Config) -> Vec<Member> {
        (0..INSTANCES)
            .map(|i| {
                let instance = &self.instances[i];
                let reachable = instance.up && self.linked(i, OPERATOR);
                let report = reachable.then(|| Report {
                    state: instance.state.clone(),
                    running: self.serving(i),
                    writable: self.serving(i) && instance.state.role == Role::Primary,
                    wal_position: (config.blindness != Blindness::WalPositions)
                        .then_some(instance.wal.len() as u64),
                    streaming_from: self
                        .streaming_from(i)
                        .filter(|_| config.blindness != Blindness::ReplicasView)
                        .map(address),
                });
                Member {
                    name: name(i),
                    address: Some(address(i)),
                    report,
                }
            })
            .collect()
    }

    /// The members the operator may have seen down for its failover delay: any it does not see
    /// serving, but for the one timing assumption: an isolated primary fences itself within its
    /// bound, which is shorter than the delay.
    fn down_for_delay(&self) -> Vec<String> {
        (0..INSTANCES)
            .filter(|&i| !(self.serving(i) && self.linked(i, OPERATOR)))
            .filter(|&i| {
                !(self.serving(i)
                    && self.instances[i].state.role == Role::Primary
                    && self.isolated(i))
            })
            .map(name)
            .collect()
    }

    fn operator_step(&self, config: &Config) -> Option<(String, World)> {
        let members = self.members(config);
        let down_for_delay = self.down_for_delay();
        let observation = Observation {
            recorded: &self.recorded,
            members: &members,
            replication: config.replication,
            down_for_delay: &down_for_delay,
            last_primary_position: None,
            max_lag: None,
            switchover: None,
        };
        let mut next = self.clone();
        match failover::decide(&observation) {
            Step::Steady | Step::Wait(_) => None,
            Step::Begin(progress) => {
                let label = format!(
                    "operator records epoch {}: {:?} from {} to {}",
                    progress.epoch, progress.kind, progress.from, progress.to
                );
                next.recorded.epoch = progress.epoch;
                next.recorded.progress = Some(progress);
                Some((label, next))
            }
            Step::Complete { primary } => {
                let label = format!("operator records {primary} as primary");
                next.recorded.primary = primary;
                next.recorded.progress = None;
                Some((label, next))
            }
            Step::Send { member, command } => {
                let i = index_of_name(&member);
                let label = format!("operator sends {command:?} to {member}");
                next.command(i, &command).then_some((label, next))
            }
        }
    }

    /// The instance manager's decision and its effect; false when refused.
    fn command(&mut self, i: usize, command: &Command) -> bool {
        let Ok((state, action)) = instance::decide(&self.instances[i].state, command) else {
            return false;
        };
        match action {
            Action::Promote => self.promoted = self.promoted.max(state.epoch),
            Action::Follow {
                primary,
                rewind: true,
            } => {
                // pg_rewind (or a new copy): back to where the histories split.
                let upstream = &self.instances[index_of_address(&primary)].wal;
                let common = self.instances[i]
                    .wal
                    .iter()
                    .zip(upstream)
                    .take_while(|(a, b)| a == b)
                    .count();
                self.instances[i].wal.truncate(common);
            }
            Action::Nothing
            | Action::StopImmediately
            | Action::Reload
            | Action::StopCleanly
            | Action::Follow { .. } => {}
        }
        self.instances[i].state = state;
        // The command carries the epoch the operator read from the API server.
        self.instances[i].confirmed = true;
        true
    }

    /// The instance manager reads the cluster's epoch from the API server: a primary of an older
    /// one fences itself, anything else may serve.
    fn confirm_epoch(&self, i: usize) -> Option<(String, World)> {
        let instance = &self.instances[i];
        if !instance.up || !self.linked(i, OPERATOR) {
            return None;
        }
        let mut next = self.clone();
        let label =
            if self.recorded.epoch > instance.state.epoch && instance.state.role == Role::Primary {
                next.instances[i].state.role = Role::Fenced;
                format!(
                    "{} reads epoch {} from the API server and fences itself",
                    name(i),
                    self.recorded.epoch
                )
            } else {
                next.instances[i].confirmed = true;
                format!("{} confirms its epoch", name(i))
            };
        (next != *self).then_some((label, next))
    }

    /// Whether `i`, a primary, may acknowledge the write at `position` now.
    fn acknowledgeable(&self, i: usize, position: usize) -> bool {
        let primary = &self.instances[i];
        let Some(synchronous) = &primary.state.synchronous else {
            return true;
        };
        let held_by = synchronous
            .standbys
            .iter()
            .map(|n| index_of_name(n))
            .filter(|&s| self.streaming_from(s) == Some(i))
            .filter(|&s| {
                let wal = &self.instances[s].wal;
                wal.len() > position && primary.wal[..=position] == wal[..=position]
            })
            .count();
        held_by >= synchronous.count as usize
    }

    fn successors(&self, config: &Config) -> Vec<(String, World)> {
        let mut out = Vec::new();
        out.extend(self.operator_step(config));
        for i in 0..INSTANCES {
            let instance = &self.instances[i];
            let primary = self.serving(i) && instance.state.role == Role::Primary;
            if let Some(upstream) = self.streaming_from(i) {
                let wal = &self.instances[upstream].wal;
                if wal.len() > instance.wal.len() {
                    let mut next = self.clone();
                    let entry = wal[instance.wal.len()];
                    next.instances[i].wal.push(entry);
                    out.push((
                        format!("{} receives write {entry} from {}", name(i), name(upstream)),
                        next,
                    ));
                }
            }
            if primary && self.next_write < config.writes {
                let mut next = self.clone();
                let write = self.next_write + 1;
                next.next_write = write;
                next.instances[i].wal.push(write);
                out.push((format!("client writes {write} to {}", name(i)), next));
            }
            if primary {
                for (position, &write) in instance.wal.iter().enumerate() {
                    if !self.acked.iter().any(|a| a.write == write)
                        && self.acknowledgeable(i, position)
                    {
                        let mut next = self.clone();
                        next.acked.push(Ack {
                            write,
                            epoch: instance.state.epoch,
                            by: i,
                        });
                        out.push((
                            format!(
                                "{} acknowledges write {write} in epoch {}",
                                name(i),
                                instance.state.epoch
                            ),
                            next,
                        ));
                    }
                }
            }
            out.extend(self.confirm_epoch(i));
            if primary && self.isolated(i) {
                let mut next = self.clone();
                next.instances[i].state.role = Role::Fenced;
                out.push((format!("{} fences itself (isolated)", name(i)), next));
            }
            if self.faults < config.faults {
                let mut next = self.clone();
                next.faults += 1;
                next.instances[i].up = !instance.up;
                next.instances[i].confirmed = false;
                let verb = if instance.up { "crashes" } else { "restarts" };
                out.push((format!("{} {verb}", name(i)), next));
            }
        }
        for a in 0..=OPERATOR {
            for b in a + 1..=OPERATOR {
                let cut = !self.linked(a, b);
                if !cut && self.faults >= config.faults {
                    continue;
                }
                let mut next = self.clone();
                next.cut ^= link_bit(a, b);
                let label = if cut {
                    format!("link {}–{} heals", node_name(a), node_name(b))
                } else {
                    next.faults += 1;
                    format!("link {}–{} is cut", node_name(a), node_name(b))
                };
                out.push((label, next));
            }
        }
        out
    }
}

fn violations(config: &Config, before: &World, world: &World) -> Vec<Invariant> {
    let mut found = Vec::new();
    if world.acked.iter().any(|a| {
        world
            .acked
            .iter()
            .any(|b| a.epoch == b.epoch && a.by != b.by)
    }) {
        found.push(Invariant::OneWriterPerEpoch);
    }
    if world.acked.len() > before.acked.len()
        && world
            .acked
            .last()
            .is_some_and(|a| a.epoch < before.promoted)
    {
        found.push(Invariant::NoAckAfterPromotion);
    }
    // Checked as each new primary is promoted: it must already hold every acknowledged write
    // (the ones acknowledged after it are its own, or break NoAckAfterPromotion).
    if let Replication::Synchronous { required: true, .. } = config.replication
        && world.promoted > before.promoted
        && let Some(promoted) = world
            .instances
            .iter()
            .find(|i| i.state.epoch == world.promoted && i.state.role == Role::Primary)
        && world.acked.iter().any(|a| !promoted.wal.contains(&a.write))
    {
        found.push(Invariant::NoAcknowledgedWriteLost);
    }
    found
}

struct Trace {
    steps: Vec<String>,
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, step) in self.steps.iter().enumerate() {
            writeln!(f, "  {:>2}. {step}", n + 1)?;
        }
        Ok(())
    }
}

struct Findings {
    states: usize,
    violations: Vec<(Invariant, Trace)>,
    /// States from which, with a majority healthy and faults over, no failover completed.
    stuck: Option<Trace>,
    /// States after a completed failover in which writes were acknowledged: the invariants are
    /// not kept by the model never getting there.
    failed_over_with_acknowledged_writes: usize,
    /// States from which a failover was shown to complete.
    liveness_checked: usize,
}

/// A failover completes with a majority healthy. From a state with one under way, or a steady
/// one whose replicas have all rejoined the current epoch, and no other member fenced: heal
/// every link, keep only the old primary down, and let only the operator and streaming run; another member must end up
/// primary. None for other states (a replica that never rejoined may lack acknowledged writes
/// only the dead primary and one other had: waiting for it is the safe choice).
fn completes_failover(config: &Config, world: &World) -> Option<bool> {
    let recorded = &world.recorded;
    let old = match &recorded.progress {
        Some(progress) => index_of_name(&progress.from),
        None => {
            let primary = index_of_name(&recorded.primary);
            let rejoined = (0..INSTANCES).filter(|&i| i != primary).all(|i| {
                let state = &world.instances[i].state;
                state.epoch == recorded.epoch
                    && state.role
                        == (Role::Replica {
                            primary: address(primary),
                        })
            });
            if !rejoined {
                return None;
            }
            primary
        }
    };
    // A member that fenced itself stays down until it follows a primary: it counts as failed.
    if (0..INSTANCES).any(|i| i != old && world.instances[i].state.role == Role::Fenced) {
        return None;
    }
    let mut world = world.clone();
    world.cut = 0;
    for i in 0..INSTANCES {
        let instance = &mut world.instances[i];
        instance.confirmed &= instance.up;
        instance.up = i != old;
    }
    let quiet = Config {
        faults: 0,
        writes: 0,
        ..*config
    };
    for _ in 0..64 {
        if world.recorded.progress.is_none()
            && world.recorded.primary != name(old)
            && world.serving(index_of_name(&world.recorded.primary))
        {
            return Some(true);
        }
        let next = world
            .operator_step(&quiet)
            .or_else(|| (0..INSTANCES).find_map(|i| world.confirm_epoch(i)))
            .map(|(_, w)| w)
            .or_else(|| {
                (0..INSTANCES).find_map(|i| {
                    let upstream = world.streaming_from(i)?;
                    let wal = world.instances[upstream].wal.clone();
                    (wal.len() > world.instances[i].wal.len()).then(|| {
                        let mut next = world.clone();
                        next.instances[i].wal = wal;
                        next
                    })
                })
            });
        match next {
            Some(next) => world = next,
            None => return Some(false),
        }
    }
    Some(false)
}

fn check(config: &Config) -> Findings {
    let mut space = StateSpace::new(World::initial(config));
    let mut report = Findings {
        states: 0,
        violations: Vec::new(),
        stuck: None,
        failed_over_with_acknowledged_writes: 0,
        liveness_checked: 0,
    };
    while let Some(at) = space.next_to_expand() {
        let world = space.world(at).clone();
        if world.recorded.epoch > 0 && world.recorded.progress.is_none() && !world.acked.is_empty()
        {
            report.failed_over_with_acknowledged_writes += 1;
        }
        match completes_failover(config, &world) {
            Some(true) => report.liveness_checked += 1,
            Some(false) if report.stuck.is_none() => {
                report.stuck = Some(Trace {
                    steps: space.trace(at),
                })
            }
            _ => {}
        }
        for (label, next) in world.successors(config) {
            let (id, new) = space.reach(at, || label, next);
            if !new {
                continue;
            }
            for invariant in violations(config, &world, space.world(id)) {
                if !report.violations.iter().any(|(v, _)| *v == invariant) {
                    report.violations.push((
                        invariant,
                        Trace {
                            steps: space.trace(id),
                        },
                    ));
                }
            }
        }
    }
    report.states = space.len();
    report
}

const SYNCHRONOUS_REQUIRED: Replication = Replication::Synchronous {
    count: 1,
    required: true,
};

fn production(replication: Replication) -> Config {
    Config {
        replication,
        blindness: Blindness::None,
        writes: 2,
        faults: 3,
    }
}

fn assert_safe_and_live(config: Config) {
    let report = check(&config);
    println!(
        "{:?}: {} states, {} after a completed failover with acknowledged writes, {} shown to complete a failover",
        config.replication,
        report.states,
        report.failed_over_with_acknowledged_writes,
        report.liveness_checked
    );
    assert!(report.failed_over_with_acknowledged_writes > 0 && report.liveness_checked > 0);
    if let Some((invariant, trace)) = report.violations.first() {
        panic!("{invariant:?} violated:\n{trace}");
    }
    if let Some(trace) = &report.stuck {
        panic!("with a majority healthy the failover does not complete after:\n{trace}");
    }
}

#[test]
fn synchronous_failover_loses_no_acknowledged_write_and_completes_with_a_majority() {
    assert_safe_and_live(production(SYNCHRONOUS_REQUIRED));
}

#[test]
fn asynchronous_failover_keeps_one_writer_and_completes_with_a_majority() {
    assert_safe_and_live(production(Replication::Asynchronous));
}

/// The counterexample for a weakened operator, printed; `expected` must be among its findings.
fn counterexample(config: Config, expected: Invariant) -> Trace {
    let report = check(&config);
    let (_, trace) = report
        .violations
        .into_iter()
        .find(|(v, _)| *v == expected)
        .unwrap_or_else(|| panic!("{:?}: no counterexample for {expected:?}", config.blindness));
    println!(
        "operator blind to {:?}, {:?}: counterexample for {expected:?} ({} states):\n{trace}",
        config.blindness, config.replication, report.states
    );
    trace
}

#[test]
fn an_operator_that_ignores_the_replicas_view_fails_over_behind_a_live_primary() {
    let trace = counterexample(
        Config {
            blindness: Blindness::ReplicasView,
            ..production(Replication::Asynchronous)
        },
        Invariant::NoAckAfterPromotion,
    );
    assert!(
        trace.steps.iter().any(|s| s == "link db-1–operator is cut"),
        "the trace cuts only the operator's link to the primary"
    );
}

#[test]
fn an_operator_blind_to_wal_positions_loses_acknowledged_writes() {
    let trace = counterexample(
        Config {
            blindness: Blindness::WalPositions,
            ..production(SYNCHRONOUS_REQUIRED)
        },
        Invariant::NoAcknowledgedWriteLost,
    );
    assert!(trace.steps.iter().any(|s| s.contains("acknowledges write")));
    assert!(trace.steps.iter().any(|s| s.contains("Promote")));
}
