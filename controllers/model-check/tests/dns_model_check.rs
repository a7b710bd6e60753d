//! Exhaustive interleaving search over the DNS protocol, running the production step functions:
//! the planner's `decide_plan`, the enactor's `EnactmentPass` and `plan_refusal`, and cleanup's
//! `decide_cleanup`, and `newest_minted` and `needs_reservation` for when the planner reserves a
//! generation before creating its plan. The checker never re-implements a decision; it only plays
//! the world: the API server (compare-and-set status writes, create by name), the DNS server
//! (guarded UPDATEs), and
//! everything else that happens to a running system: targets losing and regaining health, a
//! target change, a user deleting any plan (which the planner may then mint again under the same
//! generation, with other records), the planner crashing between reserving a generation and
//! creating its plan (or between its reads), and someone editing the records at the server.
//!
//! Every actor does one I/O per step, so any actor can stall between any two of its steps while
//! the others run: the slow enactor of the October 2025 outage is one of the explored schedules.
//! Safety is checked on every transition Bulwark makes; liveness (from every reachable state,
//! Bulwark alone settles the name on its newest enactable plan) on the whole reachable graph.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;

use bulwark_controllers::dns::desired::{
    PlanDecision, PlanInput, ServerView, content_hash, decide_plan, needs_reservation,
    newest_minted,
};
use bulwark_controllers::dns::fencing::{
    EnactmentPass, EndpointFacts, Fence, Observation, PassOutcome, PassStep, PlanFacts, Strategy,
    decide_cleanup, plan_refusal,
};
use bulwark_controllers::dns::provider::WriteOutcome;
use bulwark_crds::dns::{RRSet, RecordType};
use bulwark_model_check::StateSpace;

const FQDN: &str = "api.example.com";
/// The endpoint's UID: one endpoint owns the name throughout (ownership conflicts between
/// endpoints are unit-tested on the decision and tested against BIND, not modelled here).
const OWNER: &str = "endpoint-uid";

/// Record content, abstracted to a number: 0 is no records, `v` is `A 10.0.0.v`.
type Content = u8;
/// Records someone wrote at the server by hand.
const EDITED: Content = 99;

fn records(content: Content) -> Vec<RRSet> {
    if content == 0 {
        return Vec::new();
    }
    vec![RRSet {
        record_type: RecordType::A,
        ttl: 60,
        values: vec![format!("10.0.0.{content}")],
    }]
}

fn content_of(rrsets: &[RRSet]) -> Content {
    match rrsets {
        [] => 0,
        [rrset] => rrset.values[0].rsplit('.').next().unwrap().parse().unwrap(),
        _ => unreachable!("the model serves one RRset"),
    }
}

/// The planner's recovery when the reserved generation's plan object is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recovery {
    /// Production: `decide_plan` mints a new generation, from the server's records if no target
    /// is healthy.
    Production,
    /// The logic before the fix, kept as the weakened variant the checker must catch: recreate
    /// the reserved generation from the current candidates with empty answers allowed.
    RecreateFromCandidates,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admission {
    /// Production: enactors refuse plans `plan_refusal` rejects.
    Production,
    /// Before the fix: every plan object was enacted.
    AnyPlan,
}

/// What a fence tells of the records written with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FenceContent {
    /// Production: the start of the plan's content hash.
    Recorded,
    /// Fences as written before the fix: the generation alone, so the plan minted again under a
    /// generation cannot be told from the deleted one it replaces.
    Absent,
}

struct Config {
    strategy: Strategy,
    recovery: Recovery,
    admission: Admission,
    fence_content: FenceContent,
    enactors: usize,
    retention: u64,
    allow_empty: bool,
    budget: Budget,
}

impl Config {
    /// A fence as this configuration writes it, so as the server compares it in a prerequisite.
    fn as_written(&self, fence: Fence) -> Fence {
        match self.fence_content {
            FenceContent::Recorded => fence,
            FenceContent::Absent => Fence {
                content: None,
                ..fence
            },
        }
    }
}

/// How often each outside event may happen in one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Budget {
    health_flips: u8,
    target_changes: u8,
    plan_deletions: u8,
    planner_crashes: u8,
    record_edits: u8,
}

impl Budget {
    /// Every event that can make the planner mint: the first plan, target changes, recoveries
    /// after a deletion, and a new reservation after a crash.
    fn max_generation(&self) -> u64 {
        1 + u64::from(self.target_changes + self.plan_deletions + self.planner_crashes) * 2
    }
}

/// The endpoint's status as the planner and enactors write it (each write a compare-and-set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct EndpointStatus {
    /// `latestPlanGeneration`: reserved by the planner, advanced to the live one by enactors.
    reserved: u64,
    /// `liveGeneration`, recorded by an enactor after its pass.
    live: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Planner {
    Idle,
    /// Decided `ReadServer` from this snapshot; reads the server next.
    ReadingServer {
        basis: EndpointStatus,
        desired: Content,
    },
    /// Reserves `generation` by compare-and-set against `basis`.
    Reserving {
        basis: EndpointStatus,
        generation: u64,
        content: Content,
    },
    Creating {
        generation: u64,
        content: Content,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Enactor {
    Idle,
    Running {
        content: Content,
        /// Boxed: a pass holds two fences and its plan's hash, and most enactors in most
        /// states are idle.
        pass: Box<EnactmentPass>,
        next: PassStep,
    },
    /// The pass found `generation` live, with the endpoint's status at `basis` (the version its
    /// write is a compare-and-set on); records it in that status next.
    Recording {
        basis: EndpointStatus,
        generation: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Cleanup {
    Idle,
    Holding {
        delete_plans: Vec<u64>,
        delete_records_of: Vec<u64>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct World {
    budget: Budget,
    healthy: bool,
    target: Content,
    status: EndpointStatus,
    /// DnsPlan objects that exist: generation → records.
    plans: BTreeMap<u64, Content>,
    planner: Planner,
    /// The fence at the server: the live generation and the records it was written with.
    fence: Option<(u64, Content)>,
    served: Content,
    enactors: Vec<Enactor>,
    cleanup: Cleanup,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Invariant {
    NeverDeleteActive,
    NeverRegress,
    NeverEmpty,
    /// Nobody but Bulwark writes the name without its fence here, so a Conflict is spurious:
    /// the endpoint would stop and report its own records as someone else's.
    NeverSpuriousConflict,
    /// A write never replaces the records of its generation's current plan object, live under
    /// their own fence, with other records: what the stale holder of a plan that was deleted and
    /// minted again did.
    NeverOverwriteCurrentPlan,
    Convergence,
}

struct Step {
    label: String,
    world: World,
    /// Bulwark's own steps are checked for safety and count for liveness; outside events not.
    by_bulwark: bool,
    violations: Vec<Invariant>,
}

impl World {
    fn initial(config: &Config) -> Self {
        World {
            budget: config.budget,
            healthy: true,
            target: 1,
            status: EndpointStatus {
                reserved: 0,
                live: None,
            },
            plans: BTreeMap::new(),
            planner: Planner::Idle,
            fence: None,
            served: 0,
            enactors: vec![Enactor::Idle; config.enactors],
            cleanup: Cleanup::Idle,
        }
    }

    /// The fence record the server holds.
    fn fence_record(&self, config: &Config) -> Option<Fence> {
        self.fence.map(|(generation, content)| {
            config.as_written(Fence::live(
                generation,
                OWNER,
                &content_hash(&records(content)),
            ))
        })
    }

    fn fence_generation(&self) -> Option<u64> {
        self.fence.map(|(generation, _)| generation)
    }

    fn desired(&self) -> Content {
        if self.healthy { self.target } else { 0 }
    }

    fn plan_hash(&self, generation: u64) -> Option<String> {
        self.plans
            .get(&generation)
            .map(|content| content_hash(&records(*content)))
    }

    /// The production planner decision on this world from the endpoint status `basis`, reading
    /// the server when it asks to.
    fn planner_decision(
        &self,
        config: &Config,
        basis: EndpointStatus,
        desired: Content,
        server: Option<&ServerView>,
    ) -> PlanDecision {
        let existing: Vec<u64> = self.plans.keys().copied().collect();
        let newest = newest_minted(basis.reserved, basis.live, &existing);
        let hash = self.plan_hash(newest);
        decide_plan(PlanInput {
            newest,
            newest_plan_hash: hash.as_deref(),
            existing_plans: &existing,
            desired: records(desired),
            allow_empty: config.allow_empty,
            server,
        })
    }

    fn server_view(&self) -> ServerView {
        ServerView {
            fence: self.fence_generation(),
            records: records(self.served),
        }
    }

    /// Whether the planner has nothing left to do: what it would decide now mints nothing.
    fn planner_quiet(&self, config: &Config) -> bool {
        if self.planner != Planner::Idle {
            return false;
        }
        if config.recovery == Recovery::RecreateFromCandidates
            && self.status.reserved > 0
            && !self.plans.contains_key(&self.status.reserved)
        {
            return false;
        }
        let server = self.server_view();
        matches!(
            self.planner_decision(config, self.status, self.desired(), Some(&server)),
            PlanDecision::Unchanged | PlanDecision::WithheldEmpty
        )
    }

    /// The newest plan an enactor would pick, with the production admission check.
    fn enactable_plan(&self, config: &Config) -> Option<(u64, Content)> {
        self.plans
            .iter()
            .rev()
            .map(|(g, c)| (*g, *c))
            .find(|(generation, content)| {
                config.admission == Admission::AnyPlan
                    || plan_refusal(
                        &PlanFacts {
                            fqdn: FQDN,
                            generation: *generation,
                            empty: *content == 0,
                        },
                        &EndpointFacts {
                            fqdn: FQDN,
                            reserved_generation: self.status.reserved,
                            live_generation: self.status.live,
                            allow_empty: config.allow_empty,
                        },
                    )
                    .is_none()
            })
    }

    fn successors(&self, config: &Config) -> Vec<Step> {
        let mut next = Vec::new();
        next.extend(self.planner_step(config));
        for i in 0..self.enactors.len() {
            next.extend(self.enactor_step(config, i));
        }
        next.extend(self.cleanup_step(config));
        next.extend(self.outside_events());
        next.into_iter()
            .map(|mut step| {
                if step.by_bulwark {
                    let found = violations(config, self, &step.world, &step.label);
                    step.violations.extend(found);
                }
                step
            })
            .collect()
    }

    fn bulwark(&self, label: String, world: World) -> Option<Step> {
        Some(Step {
            label,
            world,
            by_bulwark: true,
            violations: Vec::new(),
        })
    }

    fn after_decision(
        &self,
        config: &Config,
        basis: EndpointStatus,
        decision: PlanDecision,
        label: &str,
    ) -> Vec<Step> {
        let mut w = self.clone();
        w.planner = match decision {
            PlanDecision::Mint {
                generation,
                rrsets,
                recovered,
                ..
            } => {
                assert!(
                    generation <= config.budget.max_generation(),
                    "generation {generation} exceeds the model's bound: the search would be cut short"
                );
                let how = if recovered {
                    " (recovered from the server)"
                } else {
                    ""
                };
                let content = content_of(&rrsets);
                let label = format!(
                    "{label}: mint {generation} with {}{how}",
                    show_content(content)
                );
                let reserving = Planner::Reserving {
                    basis,
                    generation,
                    content,
                };
                if needs_reservation(generation, basis.reserved, basis.live) {
                    w.planner = reserving;
                    return self.bulwark(label, w).into_iter().collect();
                }
                // Production reserves anyway when it writes the endpoint's status for another
                // reason (its Degraded condition changed), which the model leaves to chance.
                let mut reserved_anyway = w.clone();
                reserved_anyway.planner = reserving;
                w.planner = Planner::Creating {
                    generation,
                    content,
                };
                return [
                    self.bulwark(label.clone(), w),
                    self.bulwark(format!("{label}, reserving it anyway"), reserved_anyway),
                ]
                .into_iter()
                .flatten()
                .collect();
            }
            PlanDecision::ReadServer => Planner::ReadingServer {
                basis,
                desired: self.desired(),
            },
            PlanDecision::Unchanged | PlanDecision::WithheldEmpty => Planner::Idle,
        };
        if w == *self {
            return Vec::new();
        }
        self.bulwark(format!("{label}: read the server first"), w)
            .into_iter()
            .collect()
    }

    fn planner_step(&self, config: &Config) -> Vec<Step> {
        match &self.planner {
            Planner::Idle => {
                if config.recovery == Recovery::RecreateFromCandidates
                    && self.status.reserved > 0
                    && !self.plans.contains_key(&self.status.reserved)
                {
                    let mut w = self.clone();
                    w.planner = Planner::Creating {
                        generation: self.status.reserved,
                        content: self.desired(),
                    };
                    let label = format!(
                        "planner finds plan {} missing and recreates it from the candidates ({})",
                        self.status.reserved,
                        show_content(self.desired())
                    );
                    return self.bulwark(label, w).into_iter().collect();
                }
                let decision = self.planner_decision(config, self.status, self.desired(), None);
                let label = format!("planner plans ({})", show_content(self.desired()));
                self.after_decision(config, self.status, decision, &label)
            }
            Planner::ReadingServer { basis, desired } => {
                let server = self.server_view();
                let decision = self.planner_decision(config, *basis, *desired, Some(&server));
                let label = format!(
                    "planner reads the server (fence {}, {})",
                    show(self.fence_generation()),
                    show_content(self.served)
                );
                let mut w = self.clone();
                w.planner = Planner::Idle;
                let steps = w.after_decision(config, *basis, decision, &label);
                if steps.is_empty() {
                    return self.bulwark(label, w).into_iter().collect();
                }
                steps
            }
            Planner::Reserving {
                basis,
                generation,
                content,
            } => {
                let mut w = self.clone();
                if self.status == *basis {
                    w.status.reserved = *generation;
                    w.planner = Planner::Creating {
                        generation: *generation,
                        content: *content,
                    };
                    self.bulwark(format!("planner reserves {generation}"), w)
                } else {
                    w.planner = Planner::Idle;
                    self.bulwark(format!("planner loses the reservation of {generation}"), w)
                }
                .into_iter()
                .collect()
            }
            Planner::Creating {
                generation,
                content,
            } => {
                let mut w = self.clone();
                // Created by name: an existing object of that name is left as it is.
                w.plans.entry(*generation).or_insert(*content);
                w.planner = Planner::Idle;
                self.bulwark(format!("planner creates plan {generation}"), w)
                    .into_iter()
                    .collect()
            }
        }
    }

    fn enactor_step(&self, config: &Config, i: usize) -> Option<Step> {
        let mut w = self.clone();
        let (label, observation, content, mut pass) = match &self.enactors[i] {
            Enactor::Recording { basis, generation } => {
                // Compare-and-set on the status read at the start; never backwards.
                w.enactors[i] = Enactor::Idle;
                if self.status != *basis {
                    return self.bulwark(
                        format!("enactor {i} loses the status write of live {generation}"),
                        w,
                    );
                }
                w.status.live = Some(*generation);
                w.status.reserved = self.status.reserved.max(*generation);
                return self.bulwark(format!("enactor {i} records live {generation}"), w);
            }
            Enactor::Idle => {
                let (generation, content) = self.enactable_plan(config)?;
                let hash = content_hash(&records(content));
                let mut pass = Box::new(EnactmentPass::new(
                    generation,
                    &hash,
                    OWNER,
                    false,
                    config.strategy,
                ));
                assert_eq!(pass.step(Observation::Start), PassStep::ReadFence);
                let label = format!(
                    "enactor {i} picks plan {generation} ({}) and reads fence {}",
                    show_content(content),
                    show_fence(self.fence)
                );
                (
                    label,
                    Observation::Fence(self.fence_record(config)),
                    content,
                    pass,
                )
            }
            Enactor::Running {
                content,
                pass,
                next,
            } => {
                let generation = pass.generation();
                let (label, observation) = match next {
                    PassStep::ReadFence => (
                        format!("enactor {i} re-reads fence {}", show_fence(self.fence)),
                        Observation::Fence(self.fence_record(config)),
                    ),
                    PassStep::Write { guard, repair } => {
                        let holds = guard.as_ref().is_none_or(|g| {
                            g.expect.clone().map(|f| config.as_written(f))
                                == self.fence_record(config)
                                && (!g.name_unclaimed || self.served == 0)
                        });
                        let what = if *repair { "repairs to" } else { "writes" };
                        if holds {
                            w.served = *content;
                            w.fence = Some((generation, *content));
                            (
                                format!("enactor {i} {what} plan {generation}"),
                                Observation::Written(WriteOutcome::Applied),
                            )
                        } else {
                            (
                                format!(
                                    "enactor {i}'s write of plan {generation} is refused (fence {}, expected {})",
                                    show_fence(self.fence),
                                    show(
                                        guard
                                            .as_ref()
                                            .and_then(|g| g.expect.as_ref())
                                            .map(|f| f.generation)
                                    )
                                ),
                                Observation::Written(WriteOutcome::FenceMismatch),
                            )
                        }
                    }
                    PassStep::ReadPlan => {
                        let current = self.plans.get(&generation) == Some(content);
                        let found = if current {
                            "still its"
                        } else {
                            "deleted or minted again"
                        };
                        (
                            format!("enactor {i} reads plan {generation} from the API ({found})"),
                            Observation::Plan { current },
                        )
                    }
                    PassStep::ReadServed => (
                        format!(
                            "enactor {i} reads the answer ({})",
                            show_content(self.served)
                        ),
                        Observation::Served {
                            matches_plan: self.served == *content,
                            empty: self.served == 0,
                        },
                    ),
                    PassStep::Done(_) => unreachable!("a finished pass is Idle"),
                };
                (label, observation, *content, pass.clone())
            }
        };
        let mut found = Vec::new();
        let mut label = label;
        w.enactors[i] = match pass.step(observation) {
            PassStep::Done(PassOutcome::Conflict(conflict)) => {
                label.push_str(&format!(" and reports {conflict:?}"));
                found.push(Invariant::NeverSpuriousConflict);
                Enactor::Idle
            }
            PassStep::Done(PassOutcome::Live { .. })
                if self.status.live < Some(pass.generation()) =>
            {
                Enactor::Recording {
                    basis: self.status,
                    generation: pass.generation(),
                }
            }
            PassStep::Done(_) => Enactor::Idle,
            next => Enactor::Running {
                content,
                pass,
                next,
            },
        };
        if w == *self && found.is_empty() {
            return None;
        }
        let mut step = self.bulwark(label, w)?;
        step.violations = found;
        Some(step)
    }

    fn cleanup_step(&self, config: &Config) -> Option<Step> {
        let mut w = self.clone();
        match &self.cleanup {
            Cleanup::Idle => {
                let plans: Vec<u64> = self.plans.keys().copied().collect();
                let decided = decide_cleanup(
                    config.strategy,
                    &plans,
                    self.fence_generation(),
                    config.retention,
                );
                if decided.delete_plans.is_empty() {
                    return None;
                }
                let label = format!(
                    "cleanup reads fence {} and picks plans {:?}",
                    show(self.fence_generation()),
                    decided.delete_plans
                );
                w.cleanup = Cleanup::Holding {
                    delete_plans: decided.delete_plans,
                    delete_records_of: decided.delete_records_of,
                };
                self.bulwark(label, w)
            }
            Cleanup::Holding {
                delete_plans,
                delete_records_of,
            } => {
                for g in delete_plans {
                    // UID precondition: a plan deleted meanwhile is not deleted again.
                    w.plans.remove(g);
                }
                for g in delete_records_of {
                    if let Some(content) = self.plans.get(g)
                        && self.served == *content
                    {
                        w.served = 0;
                    }
                }
                w.cleanup = Cleanup::Idle;
                let records = if delete_records_of.is_empty() {
                    String::new()
                } else {
                    format!(" and their records {delete_records_of:?}")
                };
                self.bulwark(
                    format!("cleanup deletes plans {delete_plans:?}{records}"),
                    w,
                )
            }
        }
    }

    fn outside_events(&self) -> Vec<Step> {
        let mut events = Vec::new();
        let mut event = |label: String, w: World| {
            events.push(Step {
                label,
                world: w,
                by_bulwark: false,
                violations: Vec::new(),
            })
        };
        if self.budget.health_flips > 0 {
            let mut w = self.clone();
            w.budget.health_flips -= 1;
            w.healthy = !w.healthy;
            let what = if w.healthy { "recover" } else { "all fail" };
            event(format!("targets {what}"), w);
        }
        if self.budget.target_changes > 0 {
            let mut w = self.clone();
            w.budget.target_changes -= 1;
            w.target += 1;
            event(format!("target changes to 10.0.0.{}", w.target), w);
        }
        if self.budget.plan_deletions > 0 {
            for generation in self.plans.keys() {
                let mut w = self.clone();
                w.budget.plan_deletions -= 1;
                w.plans.remove(generation);
                event(format!("user deletes plan {generation}"), w);
            }
        }
        if self.budget.planner_crashes > 0 && self.planner != Planner::Idle {
            let mut w = self.clone();
            w.budget.planner_crashes -= 1;
            w.planner = Planner::Idle;
            event(format!("planner crashes while {:?}", self.planner), w);
        }
        if self.budget.record_edits > 0 && self.served != 0 {
            let mut w = self.clone();
            w.budget.record_edits -= 1;
            w.served = EDITED;
            event("someone edits the records at the server".into(), w);
        }
        events
    }

    /// The name is settled: the planner mints nothing more, no actor is mid-step, and the
    /// server serves the newest enactable plan under its fence.
    fn settled(&self, config: &Config) -> bool {
        self.planner_quiet(config)
            && self.enactors.iter().all(|e| *e == Enactor::Idle)
            && self.cleanup == Cleanup::Idle
            && self
                .enactable_plan(config)
                .is_none_or(|(generation, content)| match self.fence {
                    Some((live, _)) if live > generation => true,
                    Some((live, written)) if live == generation => {
                        written == content && self.served == content
                    }
                    _ => false,
                })
    }
}

fn violations(config: &Config, before: &World, after: &World, label: &str) -> Vec<Invariant> {
    let mut found = Vec::new();
    if let Some(live) = before.fence_generation()
        && label.starts_with("cleanup deletes")
        && before.plans.contains_key(&live)
        && !after.plans.contains_key(&live)
    {
        found.push(Invariant::NeverDeleteActive);
    }
    if after.fence_generation() < before.fence_generation() {
        found.push(Invariant::NeverRegress);
    }
    if let Some((generation, content)) = before.fence
        && before.plans.get(&generation) == Some(&content)
        && before.served == content
        && after.fence_generation() == Some(generation)
        && after.served != content
    {
        found.push(Invariant::NeverOverwriteCurrentPlan);
    }
    if !config.allow_empty && before.served != 0 && after.served == 0 {
        found.push(Invariant::NeverEmpty);
    }
    found
}

fn show(generation: Option<u64>) -> String {
    generation.map_or("none".into(), |g| format!("gen={g}"))
}

fn show_fence(fence: Option<(u64, Content)>) -> String {
    fence.map_or("none".into(), |(g, content)| {
        format!("gen={g} of {}", show_content(content))
    })
}

fn show_content(content: Content) -> String {
    match content {
        0 => "no records".into(),
        EDITED => "hand-edited records".into(),
        v => format!("10.0.0.{v}"),
    }
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
        write!(
            f,
            "      => server answers with {}, fence {}, plans left {:?}",
            show_content(self.end.served),
            show_fence(self.end.fence),
            self.end.plans.keys().collect::<Vec<_>>()
        )
    }
}

struct Report {
    states: usize,
    transitions: usize,
    /// The shortest trace to the first violation of each invariant.
    violations: HashMap<Invariant, Trace>,
    /// How many reachable states had the name serving records, then none: proof the search
    /// reaches the situations the invariants are about.
    states_with_no_healthy_target_and_records_served: usize,
    states_with_the_live_plan_deleted: usize,
    /// States where the live generation's plan object holds other records than the fence was
    /// written with: it was deleted and minted again.
    states_with_the_live_generation_minted_again: usize,
    /// States with a plan minted without a reservation and not yet recorded live.
    states_with_an_unreserved_plan_pending: usize,
}

/// Breadth-first over every interleaving, so each reported trace is a shortest one.
fn check(config: &Config) -> Report {
    let mut space = StateSpace::new(World::initial(config));
    // Bulwark's own steps, reversed, for liveness.
    let mut reverse_edges: Vec<Vec<usize>> = vec![Vec::new()];
    let mut violations: HashMap<Invariant, Trace> = HashMap::new();
    let mut transitions = 0;
    let trace_to = |space: &StateSpace<World>, at: usize| Trace {
        steps: space.trace(at),
        end: space.world(at).clone(),
    };
    while let Some(at) = space.next_to_expand() {
        for step in space.world(at).successors(config) {
            transitions += 1;
            let label = step.label;
            let (to, new) = space.reach(at, || label.clone(), step.world);
            if new {
                reverse_edges.push(Vec::new());
            }
            if step.by_bulwark {
                reverse_edges[to].push(at);
            }
            for invariant in step.violations {
                violations.entry(invariant).or_insert_with(|| {
                    let mut trace = trace_to(&space, at);
                    trace
                        .steps
                        .push(format!("{label}   <-- violates {invariant:?}"));
                    trace.end = space.world(to).clone();
                    trace
                });
            }
        }
    }
    // Liveness: from every reachable state Bulwark alone can settle the name.
    let mut can_settle = vec![false; space.len()];
    let mut back: VecDeque<usize> = (0..space.len())
        .filter(|&i| space.world(i).settled(config))
        .collect();
    for &i in &back {
        can_settle[i] = true;
    }
    while let Some(at) = back.pop_front() {
        for &from in &reverse_edges[at] {
            if !can_settle[from] {
                can_settle[from] = true;
                back.push_back(from);
            }
        }
    }
    if let Some(stuck) = (0..space.len()).find(|&i| !can_settle[i]) {
        violations.insert(Invariant::Convergence, trace_to(&space, stuck));
    }
    Report {
        states: space.len(),
        transitions,
        violations,
        states_with_no_healthy_target_and_records_served: space
            .iter()
            .filter(|w| !w.healthy && w.served != 0)
            .count(),
        states_with_the_live_plan_deleted: space
            .iter()
            .filter(|w| {
                w.fence
                    .is_some_and(|(live, _)| !w.plans.contains_key(&live))
            })
            .count(),
        states_with_the_live_generation_minted_again: space
            .iter()
            .filter(|w| {
                w.fence.is_some_and(|(live, written)| {
                    w.plans
                        .get(&live)
                        .is_some_and(|content| *content != written)
                })
            })
            .count(),
        states_with_an_unreserved_plan_pending: space
            .iter()
            .filter(|w| {
                w.plans
                    .keys()
                    .any(|g| *g > w.status.reserved && Some(*g) > w.status.live)
            })
            .count(),
    }
}

fn every_event() -> Budget {
    Budget {
        health_flips: 2,
        target_changes: 1,
        plan_deletions: 1,
        planner_crashes: 1,
        record_edits: 1,
    }
}

/// The events the old recovery's hole needs (the live plan deleted during an outage, the planner
/// crashing midway), without target changes and record edits, which only multiply the states.
fn outage_and_deletion() -> Budget {
    Budget {
        target_changes: 0,
        record_edits: 0,
        ..every_event()
    }
}

fn production(enactors: usize, retention: u64, budget: Budget) -> Config {
    Config {
        strategy: Strategy::Fenced,
        recovery: Recovery::Production,
        admission: Admission::Production,
        fence_content: FenceContent::Recorded,
        enactors,
        retention,
        allow_empty: false,
        budget,
    }
}

/// Checks `config` and returns how many states had the live generation minted again, which only
/// searches with both a target change and a plan deletion reach.
fn assert_no_violation(name: &str, config: &Config) -> usize {
    let report = check(config);
    println!(
        "{name}: {} states, {} transitions; {} with no healthy target while records are served, {} with the live plan's object deleted, {} with the live generation minted again, {} with a plan minted without a reservation pending; no violation",
        report.states,
        report.transitions,
        report.states_with_no_healthy_target_and_records_served,
        report.states_with_the_live_plan_deleted,
        report.states_with_the_live_generation_minted_again,
        report.states_with_an_unreserved_plan_pending,
    );
    // The invariants must not hold vacuously: the search reaches the situations they guard.
    assert!(report.states > 1000, "the search must actually branch");
    assert!(report.states_with_no_healthy_target_and_records_served > 0);
    assert!(report.states_with_the_live_plan_deleted > 0);
    assert!(report.states_with_an_unreserved_plan_pending > 0);
    let mut found: Vec<_> = report.violations.into_iter().collect();
    found.sort_by_key(|(invariant, _)| *invariant);
    if let Some((invariant, trace)) = found.first() {
        panic!("{name} violates {invariant:?}:\n{trace}");
    }
    report.states_with_the_live_generation_minted_again
}

#[test]
fn production_protocol_keeps_every_invariant_under_deletions_crashes_and_outages() {
    let minted_again = assert_no_violation(
        "production, 2 enactors, retention 0, every event",
        &production(2, 0, every_event()),
    );
    assert!(
        minted_again > 0,
        "the search must reach a generation minted again"
    );
    assert_no_violation(
        "production, 3 enactors, retention 0, outage + deletion + crash",
        &production(
            3,
            0,
            Budget {
                health_flips: 1,
                target_changes: 0,
                record_edits: 0,
                ..every_event()
            },
        ),
    );
}

/// A test of its own, so the two largest searches run in parallel.
#[test]
fn production_protocol_keeps_every_invariant_with_a_plan_retained_below_the_live_one() {
    assert_no_violation(
        "production, 2 enactors, retention 1, every event",
        &production(2, 1, every_event()),
    );
}

#[test]
fn old_recovery_empties_the_name_after_the_live_plan_is_deleted() {
    let old = Config {
        recovery: Recovery::RecreateFromCandidates,
        admission: Admission::AnyPlan,
        ..production(2, 0, outage_and_deletion())
    };
    let report = check(&old);
    let trace = report
        .violations
        .get(&Invariant::NeverEmpty)
        .expect("the checker must find the NeverEmpty violation of the old recovery");
    println!(
        "old recovery, {} states; counterexample for NeverEmpty:\n{trace}\n",
        report.states
    );
    assert_eq!(trace.end.served, 0, "the trace ends with no records");
    assert!(
        trace
            .steps
            .iter()
            .any(|s| s.starts_with("user deletes plan"))
    );
    assert!(trace.steps.iter().any(|s| s == "targets all fail"));
    // Each half of the fix closes the hole on its own: the planner never mints an empty plan the
    // endpoint refuses, and enactors refuse one whoever minted it.
    for (name, recovery, admission) in [
        (
            "production planner, enactors without admission",
            Recovery::Production,
            Admission::AnyPlan,
        ),
        (
            "old recovery, enactors with admission",
            Recovery::RecreateFromCandidates,
            Admission::Production,
        ),
    ] {
        let report = check(&Config {
            recovery,
            admission,
            ..production(2, 0, outage_and_deletion())
        });
        println!("{name}: {} states", report.states);
        assert!(
            !report.violations.contains_key(&Invariant::NeverEmpty),
            "{name}:\n{}",
            report.violations[&Invariant::NeverEmpty]
        );
    }
}

/// The plan of a generation not yet recorded live is deleted, and the planner mints that
/// generation again for a new target. With fences that hold the generation alone, an enactor still
/// holding the deleted plan takes the new records for an edit and "repairs" them back.
#[test]
fn fences_without_content_let_a_stale_enactor_revert_a_plan_minted_again() {
    // One health flip: the production search asserts it reaches an outage too.
    let deletion_and_change = Budget {
        health_flips: 1,
        target_changes: 1,
        plan_deletions: 1,
        planner_crashes: 0,
        record_edits: 0,
    };
    let old = Config {
        fence_content: FenceContent::Absent,
        ..production(2, 0, deletion_and_change)
    };
    let report = check(&old);
    let trace = report
        .violations
        .get(&Invariant::NeverOverwriteCurrentPlan)
        .expect("the checker must find the stale enactor's revert");
    println!(
        "fences without content, {} states; counterexample for NeverOverwriteCurrentPlan:\n{trace}\n",
        report.states
    );
    assert!(
        trace
            .steps
            .iter()
            .any(|s| s.starts_with("user deletes plan"))
    );
    assert!(trace.steps.iter().any(|s| s.starts_with("target changes")));
    let minted_again = assert_no_violation(
        "production, 2 enactors, a deletion and a target change",
        &production(2, 0, deletion_and_change),
    );
    assert!(minted_again > 0);
}

#[test]
fn unfenced_enactment_is_caught_with_a_counterexample_for_each_safety_invariant() {
    let report = check(&Config {
        strategy: Strategy::Unfenced,
        ..production(
            2,
            0,
            Budget {
                health_flips: 0,
                target_changes: 2,
                plan_deletions: 0,
                planner_crashes: 0,
                record_edits: 0,
            },
        )
    });
    println!(
        "unfenced, 2 enactors: {} states, {} transitions",
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
    assert_eq!(
        report.violations[&Invariant::NeverEmpty].end.served,
        0,
        "the NeverEmpty trace ends with no records"
    );
}
