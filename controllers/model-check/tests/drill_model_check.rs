//! Model check of the DrillRun state machine: the production decision (`drills::run::step`)
//! drives two runs on one target over every interleaving (breadth first, so a counterexample is
//! a shortest one) with the operator killed between any two steps (its memory lost), a guard
//! crossing at any moment, either run deleted at any moment, an injection failing with part of
//! the fault in place, and the fault's duration ending at any moment after injection.
//!
//! What is abstracted: the API server is the runs' recorded status and the target's lock, taken
//! by an atomic create-if-absent; the target is the set of faults in place (a fault held until
//! rolled back, as a freeze is); the target recovers once no fault is in place. An operator
//! restart and a leadership move are the same event here: the new driver has no memory.

use std::collections::HashSet;

use bulwark_controllers::drills::run::{
    Driving, Guards, Lock, Observation, Outcome, Phase, Recorded, Step, step,
};
use bulwark_model_check::StateSpace;

const RUNS: usize = 2;
const CRASHES: u8 = 2;

/// How the model weakens the driver, to show each safeguard is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Blindness {
    None,
    /// A restarted driver takes a recorded `Injecting` as its own.
    Restarts,
    /// Every run believes it holds the target's lock.
    Lock,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Run {
    recorded: Recorded,
    deleting: bool,
    /// Finished: the finalizer is gone.
    done: bool,
    /// The driver's memory (lost in a crash).
    driving: Driving,
    /// Its injection failed (also memory).
    injection_failed: bool,
    /// The scenario's duration has passed since the injection.
    held_long_enough: bool,
    injections: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct World {
    runs: [Run; RUNS],
    lock: Option<usize>,
    /// Runs whose fault is in place on the target.
    faults: Vec<usize>,
    guard_crossed: bool,
    crashes: u8,
}

fn initial() -> World {
    let run = Run {
        recorded: Recorded {
            phase: Phase::Pending,
            outcome: None,
            rolled_back: false,
        },
        deleting: false,
        done: false,
        driving: Driving::No,
        injection_failed: false,
        held_long_enough: false,
        injections: 0,
    };
    World {
        runs: [run.clone(), run],
        lock: None,
        faults: vec![],
        guard_crossed: false,
        crashes: 0,
    }
}

fn observe(world: &World, r: usize, blindness: Blindness) -> Observation {
    let run = &world.runs[r];
    let lock = match world.lock {
        _ if blindness == Blindness::Lock => Lock::Mine,
        None => Lock::Free,
        Some(holder) if holder == r => Lock::Mine,
        Some(holder) => Lock::Held(format!("run-{holder}")),
    };
    let driving = match run.driving {
        Driving::No
            if blindness == Blindness::Restarts && run.recorded.phase == Phase::Injecting =>
        {
            Driving::Recorded
        }
        driving => driving,
    };
    Observation {
        recorded: run.recorded,
        deleting: run.deleting,
        lock,
        guards: if world.guard_crossed {
            Guards::Crossed("burn rate above its limit".into())
        } else {
            Guards::Clear
        },
        driving,
        injection_error: run.injection_failed.then(|| "the target refused it".into()),
        fault_held_long_enough: run.held_long_enough,
        fault_absent: !world.faults.contains(&r),
        target_recovered: world.faults.is_empty(),
        recovery_overdue: false,
    }
}

/// The driver carries out one step for run `r`; `None` when it changes nothing (a wait).
fn operate(world: &World, r: usize, blindness: Blindness) -> Option<(World, String)> {
    let mut next = world.clone();
    let decided = step(&observe(world, r, blindness));
    let run = &mut next.runs[r];
    match &decided {
        Step::AcquireLock => {
            if next.lock.is_some() {
                return None; // the API server refuses: AlreadyExists
            }
            next.lock = Some(r);
        }
        Step::Record(phase, verdict) => {
            run.recorded.phase = *phase;
            if let Some(verdict) = verdict {
                run.recorded.outcome = Some(verdict.outcome);
            }
            if *phase == Phase::Injecting {
                run.driving = Driving::Recorded;
            }
        }
        Step::Inject => {
            run.injections += 1;
            run.driving = Driving::Injected;
            next.faults.push(r);
        }
        Step::RollBack => next.faults.retain(|&f| f != r),
        Step::RecordRolledBack => run.recorded.rolled_back = true,
        Step::Complete => {
            run.recorded.phase = Phase::Completed;
            run.recorded.outcome.get_or_insert(Outcome::Succeeded);
        }
        Step::ReleaseLock => {
            if next.lock == Some(r) {
                next.lock = None;
            }
        }
        Step::Wait(_) => return None,
        Step::Done => {
            if run.done {
                return None;
            }
            run.done = true;
        }
    }
    Some((next, format!("run-{r}: {decided:?}")))
}

fn successors(world: &World, blindness: Blindness) -> Vec<(World, String)> {
    let mut out = vec![];
    for r in 0..RUNS {
        if let Some(s) = operate(world, r, blindness) {
            out.push(s);
        }
        // The injection fails instead, part of the fault in place (a zone half frozen).
        if step(&observe(world, r, blindness)) == Step::Inject {
            let mut next = world.clone();
            next.runs[r].injections += 1;
            next.runs[r].injection_failed = true;
            next.faults.push(r);
            out.push((next, format!("run-{r}: Inject fails partway")));
        }
        let run = &world.runs[r];
        if !run.deleting && !run.done {
            let mut next = world.clone();
            next.runs[r].deleting = true;
            out.push((next, format!("run-{r} is deleted")));
        }
        if run.driving == Driving::Injected && !run.held_long_enough {
            let mut next = world.clone();
            next.runs[r].held_long_enough = true;
            out.push((next, format!("run-{r}'s fault duration passes")));
        }
    }
    if !world.guard_crossed {
        let mut next = world.clone();
        next.guard_crossed = true;
        out.push((next, "the guarded SLO starts burning".into()));
    }
    if world.crashes < CRASHES && world.runs.iter().any(|r| r.driving != Driving::No) {
        let mut next = world.clone();
        next.crashes += 1;
        for run in &mut next.runs {
            run.driving = Driving::No;
            run.injection_failed = false;
        }
        out.push((next, "the operator is killed".into()));
    }
    out
}

/// The first invariant `world` breaks.
fn violation(world: &World) -> Option<String> {
    for (r, run) in world.runs.iter().enumerate() {
        if run.injections > 1 {
            return Some(format!(
                "NeverInjectedTwice: run-{r} injected {}",
                run.injections
            ));
        }
        if run.recorded.phase == Phase::Completed && world.faults.contains(&r) {
            return Some(format!(
                "CompletedIsRolledBack: run-{r} completed, fault in place"
            ));
        }
        if run.recorded.outcome == Some(Outcome::Skipped) && run.injections > 0 {
            return Some(format!("SkippedInjectsNothing: run-{r}"));
        }
        let active = (Phase::Gating..Phase::Completed).contains(&run.recorded.phase);
        if active && world.lock != Some(r) {
            return Some(format!(
                "OneActiveRunPerTarget: run-{r} active without the lock"
            ));
        }
    }
    if world.faults.iter().collect::<HashSet<_>>().len() > 1 {
        return Some("OneFaultPerTarget: two runs' faults in place".into());
    }
    None
}

/// A state the driver makes no progress in, and where waiting changes nothing (no fault's
/// duration left to pass), must be the end: both runs done, nothing in place, the target free.
/// Guards and deletions are the adversary's choice, never needed for progress.
fn stuck(world: &World, blindness: Blindness) -> Option<String> {
    let finished =
        world.runs.iter().all(|r| r.done) && world.faults.is_empty() && world.lock.is_none();
    let progress = (0..RUNS).any(|r| operate(world, r, blindness).is_some())
        || world
            .runs
            .iter()
            .any(|r| r.driving == Driving::Injected && !r.held_long_enough);
    (!finished && !progress).then(|| format!("Termination: stuck at {world:?}"))
}

struct Checked {
    states: usize,
    completed_with_fault_injected: usize,
    counterexample: Option<(String, Vec<String>)>,
}

fn check(blindness: Blindness) -> Checked {
    let mut space = StateSpace::new(initial());
    let mut completed_with_fault_injected = HashSet::new();
    while let Some(at) = space.next_to_expand() {
        let world = space.world(at).clone();
        let broken = violation(&world).or_else(|| stuck(&world, blindness));
        if let Some(broken) = broken {
            return Checked {
                states: space.len(),
                completed_with_fault_injected: completed_with_fault_injected.len(),
                counterexample: Some((broken, space.trace(at))),
            };
        }
        for (r, run) in world.runs.iter().enumerate() {
            if run.done && run.injections == 1 && run.recorded.outcome.is_some() {
                completed_with_fault_injected.insert((r, run.recorded.outcome.map(|o| o.name())));
            }
        }
        for (next, label) in successors(&world, blindness) {
            space.reach(at, || label, next);
        }
    }
    Checked {
        states: space.len(),
        completed_with_fault_injected: completed_with_fault_injected.len(),
        counterexample: None,
    }
}

fn print(name: &str, checked: &Checked) {
    match &checked.counterexample {
        None => println!("{name}: every invariant holds ({} states)", checked.states),
        Some((broken, trace)) => {
            println!(
                "{name}: counterexample for {broken} ({} states):",
                checked.states
            );
            for (i, label) in trace.iter().enumerate() {
                println!("  {:>2}. {label}", i + 1);
            }
        }
    }
}

#[test]
fn drills_inject_once_and_always_roll_back_whatever_is_killed_or_deleted() {
    let checked = check(Blindness::None);
    print("production", &checked);
    assert!(checked.counterexample.is_none());
    // Not vacuous: both runs reach the end with their fault injected, and with each of the
    // outcomes an injected drill can have.
    assert!(
        checked.completed_with_fault_injected >= 4,
        "only {} (run, outcome) pairs ended after an injection",
        checked.completed_with_fault_injected
    );
}

#[test]
fn a_driver_that_trusts_a_recorded_injecting_after_a_restart_injects_twice() {
    let checked = check(Blindness::Restarts);
    print("blind to restarts", &checked);
    let (broken, _) = checked.counterexample.expect("a counterexample");
    assert!(broken.starts_with("NeverInjectedTwice"), "{broken}");
}

#[test]
fn without_the_target_lock_two_runs_fault_one_target() {
    let checked = check(Blindness::Lock);
    print("blind to the lock", &checked);
    let (broken, _) = checked.counterexample.expect("a counterexample");
    assert!(broken.starts_with("OneActiveRunPerTarget"), "{broken}");
}
