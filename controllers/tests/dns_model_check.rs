//! Exhaustive interleaving search over the DNS enactment protocol, driving the production
//! decision functions (`decide_enactment`, `write_guard`, `decide_cleanup`).
//!
//! Actors: a planner minting generations 1..=max, several enactors, one cleanup and the DNS
//! server. Every enactor and the cleanup split their work into a read step and a write step, so
//! any actor can stall between the two while the others run: the slow enactor of the October 2025
//! outage is one of the explored schedules. Safety is checked on every transition, liveness (the
//! newest plan becomes live) on the whole reachable graph.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;

use bulwark_controllers::dns::fencing::{
    Enactment, Strategy, decide_cleanup, decide_enactment, write_guard,
};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum EnactorPhase {
    Idle,
    /// Read plan `plan` and decided to apply it over the fence it saw.
    Holding {
        plan: u64,
        expect_fence: Option<u64>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum CleanupPhase {
    Idle,
    /// Decided what to delete; deletes on its next step.
    Holding {
        delete_plans: Vec<u64>,
        delete_records_of: Vec<u64>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct World {
    minted: u64,
    /// DnsPlan objects that exist.
    plans: BTreeSet<u64>,
    /// The server's fence TXT.
    fence: Option<u64>,
    /// The generation whose records the server answers with; `None`: no records.
    served: Option<u64>,
    enactors: Vec<EnactorPhase>,
    cleanup: CleanupPhase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Invariant {
    NeverDeleteActive,
    NeverRegress,
    NeverEmpty,
    Convergence,
}

struct Config {
    strategy: Strategy,
    enactors: usize,
    max_generation: u64,
    retention: u64,
}

type Step = (String, World, Vec<Invariant>);

impl World {
    fn initial(config: &Config) -> Self {
        World {
            minted: 0,
            plans: BTreeSet::new(),
            fence: None,
            served: None,
            enactors: vec![EnactorPhase::Idle; config.enactors],
            cleanup: CleanupPhase::Idle,
        }
    }

    /// The server applies an UPDATE: all or nothing when guarded, unconditionally otherwise.
    /// Returns whether the write happened.
    fn server_update(&mut self, strategy: Strategy, plan: u64, expect_fence: Option<u64>) -> bool {
        if let Some(guard) = write_guard(strategy, expect_fence)
            && self.fence != guard.expect_fence
        {
            return false;
        }
        self.served = Some(plan);
        self.fence = Some(plan);
        true
    }

    fn successors(&self, config: &Config) -> Vec<Step> {
        let mut next = Vec::new();
        if self.minted < config.max_generation {
            let mut w = self.clone();
            w.minted += 1;
            w.plans.insert(w.minted);
            next.push((format!("planner mints plan {}", w.minted), w, vec![]));
        }
        for (i, phase) in self.enactors.iter().enumerate() {
            next.extend(self.enactor_step(config, i, phase));
        }
        next.extend(self.cleanup_step(config));
        next
    }

    fn enactor_step(&self, config: &Config, i: usize, phase: &EnactorPhase) -> Option<Step> {
        match phase {
            EnactorPhase::Idle => {
                let newest = *self.plans.last()?;
                let Enactment::Apply { expect_fence } = decide_enactment(newest, self.fence) else {
                    return None;
                };
                let mut w = self.clone();
                w.enactors[i] = EnactorPhase::Holding {
                    plan: newest,
                    expect_fence,
                };
                let label = format!(
                    "enactor {i} reads plan {newest} and fence {}",
                    show(self.fence)
                );
                Some((label, w, vec![]))
            }
            EnactorPhase::Holding { plan, expect_fence } => {
                let mut w = self.clone();
                let label = if w.server_update(config.strategy, *plan, *expect_fence) {
                    w.enactors[i] = EnactorPhase::Idle;
                    format!("enactor {i} writes plan {plan}")
                } else {
                    // Prerequisite failed: re-read the fence and decide again.
                    w.enactors[i] = match decide_enactment(*plan, w.fence) {
                        Enactment::Apply { expect_fence } => EnactorPhase::Holding {
                            plan: *plan,
                            expect_fence,
                        },
                        Enactment::AlreadyLive | Enactment::Superseded { .. } => EnactorPhase::Idle,
                    };
                    format!(
                        "enactor {i}'s write of plan {plan} is refused by the server (fence {}, expected {})",
                        show(w.fence),
                        show(*expect_fence)
                    )
                };
                let violations = transition_violations(self, &w, &[]);
                Some((label, w, violations))
            }
        }
    }

    fn cleanup_step(&self, config: &Config) -> Option<Step> {
        match &self.cleanup {
            CleanupPhase::Idle => {
                let plans: Vec<u64> = self.plans.iter().copied().collect();
                let decided = decide_cleanup(config.strategy, &plans, self.fence, config.retention);
                if decided.delete_plans.is_empty() {
                    return None;
                }
                let label = format!(
                    "cleanup reads fence {} and picks plans {:?}",
                    show(self.fence),
                    decided.delete_plans
                );
                let mut w = self.clone();
                w.cleanup = CleanupPhase::Holding {
                    delete_plans: decided.delete_plans,
                    delete_records_of: decided.delete_records_of,
                };
                Some((label, w, vec![]))
            }
            CleanupPhase::Holding {
                delete_plans,
                delete_records_of,
            } => {
                let mut w = self.clone();
                for g in delete_plans {
                    // UID precondition: a plan deleted meanwhile is not deleted again.
                    w.plans.remove(g);
                }
                for g in delete_records_of {
                    if w.served == Some(*g) {
                        w.served = None;
                    }
                }
                w.cleanup = CleanupPhase::Idle;
                let violations = transition_violations(self, &w, delete_plans);
                let records = if delete_records_of.is_empty() {
                    String::new()
                } else {
                    format!(" and their records {delete_records_of:?}")
                };
                let label = format!("cleanup deletes plans {delete_plans:?}{records}");
                Some((label, w, violations))
            }
        }
    }
}

fn show(generation: Option<u64>) -> String {
    generation.map_or("none".into(), |g| format!("gen={g}"))
}

fn transition_violations(before: &World, after: &World, deleted: &[u64]) -> Vec<Invariant> {
    let mut violations = Vec::new();
    if let Some(live) = before.served
        && deleted.contains(&live)
    {
        violations.push(Invariant::NeverDeleteActive);
    }
    if let (Some(old), Some(new)) = (before.served, after.served)
        && new < old
    {
        violations.push(Invariant::NeverRegress);
    }
    if before.served.is_some() && after.served.is_none() {
        violations.push(Invariant::NeverEmpty);
    }
    violations
}

struct Trace {
    steps: Vec<String>,
    end: World,
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, step) in self.steps.iter().enumerate() {
            writeln!(f, "  {:>2}. {step}", n + 1)?;
        }
        let served = self
            .end
            .served
            .map_or("NO RECORDS".into(), |g| format!("plan {g}"));
        write!(
            f,
            "      => server answers with {served}, fence {}, plans left {:?}",
            show(self.end.fence),
            self.end.plans
        )
    }
}

struct Report {
    states: usize,
    transitions: usize,
    /// The shortest trace to the first violation of each invariant.
    violations: HashMap<Invariant, Trace>,
}

/// Breadth-first over every interleaving, so each reported trace is a shortest one.
fn check(config: &Config) -> Report {
    let initial = World::initial(config);
    let mut index: HashMap<World, usize> = HashMap::from([(initial.clone(), 0)]);
    let mut worlds = vec![initial];
    // parent[i]: predecessor and step label on a shortest path from the initial state.
    let mut parent: Vec<Option<(usize, String)>> = vec![None];
    let mut reverse_edges: Vec<Vec<usize>> = vec![Vec::new()];
    let mut violations: HashMap<Invariant, Trace> = HashMap::new();
    let mut transitions = 0;
    let mut queue = VecDeque::from([0]);
    let trace_to = |parent: &[Option<(usize, String)>], worlds: &[World], mut at: usize| {
        let end = worlds[at].clone();
        let mut steps = Vec::new();
        while let Some((from, label)) = &parent[at] {
            steps.push(label.clone());
            at = *from;
        }
        steps.reverse();
        Trace { steps, end }
    };
    while let Some(at) = queue.pop_front() {
        for (label, next, broken) in worlds[at].successors(config) {
            transitions += 1;
            let to = match index.get(&next) {
                Some(&known) => known,
                None => {
                    let id = worlds.len();
                    index.insert(next.clone(), id);
                    worlds.push(next);
                    parent.push(Some((at, label.clone())));
                    reverse_edges.push(Vec::new());
                    queue.push_back(id);
                    id
                }
            };
            reverse_edges[to].push(at);
            for invariant in broken {
                violations.entry(invariant).or_insert_with(|| {
                    let mut trace = trace_to(&parent, &worlds, at);
                    trace
                        .steps
                        .push(format!("{label}   <-- violates {invariant:?}"));
                    trace.end = worlds[to].clone();
                    trace
                });
            }
        }
    }
    // Liveness: from every reachable state the newest plan can still become live.
    let converged = |w: &World| w.minted == config.max_generation && w.served == Some(w.minted);
    let mut can_converge = vec![false; worlds.len()];
    let mut back: VecDeque<usize> = (0..worlds.len())
        .filter(|&i| converged(&worlds[i]))
        .collect();
    for &i in &back {
        can_converge[i] = true;
    }
    while let Some(at) = back.pop_front() {
        for &from in &reverse_edges[at] {
            if !can_converge[from] {
                can_converge[from] = true;
                back.push_back(from);
            }
        }
    }
    if let Some(stuck) = (0..worlds.len()).find(|&i| !can_converge[i]) {
        violations.insert(Invariant::Convergence, trace_to(&parent, &worlds, stuck));
    }
    Report {
        states: worlds.len(),
        transitions,
        violations,
    }
}

#[test]
fn fenced_enactment_keeps_every_invariant_in_every_interleaving() {
    for enactors in 2..=3 {
        for retention in 0..=1 {
            let config = Config {
                strategy: Strategy::Fenced,
                enactors,
                max_generation: 4,
                retention,
            };
            let report = check(&config);
            println!(
                "fenced, {enactors} enactors, 4 generations, retention {retention}: {} states, {} transitions, no violation",
                report.states, report.transitions
            );
            assert!(report.states > 100, "the search must actually branch");
            let mut found: Vec<_> = report.violations.into_iter().collect();
            found.sort_by_key(|(invariant, _)| *invariant);
            if let Some((invariant, trace)) = found.first() {
                panic!("fenced strategy violates {invariant:?}:\n{trace}");
            }
        }
    }
}

#[test]
fn unfenced_enactment_is_caught_with_a_counterexample_for_each_safety_invariant() {
    let report = check(&Config {
        strategy: Strategy::Unfenced,
        enactors: 2,
        max_generation: 3,
        retention: 0,
    });
    println!(
        "unfenced, 2 enactors, 3 generations: {} states, {} transitions",
        report.states, report.transitions
    );
    for invariant in [
        Invariant::NeverRegress,
        Invariant::NeverDeleteActive,
        Invariant::NeverEmpty,
    ] {
        let trace = report
            .violations
            .get(&invariant)
            .unwrap_or_else(|| panic!("the checker must find a {invariant:?} violation"));
        println!("counterexample for {invariant:?}:\n{trace}\n");
    }
    let empty = &report.violations[&Invariant::NeverEmpty];
    assert_eq!(
        empty.end.served, None,
        "the NeverEmpty trace ends with no records"
    );
}
