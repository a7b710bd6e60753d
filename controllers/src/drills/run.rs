//! The DrillRun state machine, as a pure decision: from what is recorded in the run's status and
//! what the driver observed this pass, the one next thing to do. The driver carries it out and
//! decides again; the model check (`controllers/model-check/tests/drill_model_check.rs`) runs
//! this same function with the operator killed between any two steps.
//!
//! Pending → Gating → Injecting → Observing → RollingBack → Completed. Every phase is recorded
//! before its side effect, and the fault is injected only by the process that recorded
//! `Injecting` itself: a process that finds `Injecting` or `Observing` recorded by another (an
//! operator restarted, or leadership moved) cannot know whether the fault is in place, so it rolls
//! back (rollback is idempotent) and never injects.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Waiting for the target's lock.
    Pending,
    /// Reading the guards.
    Gating,
    /// Recorded before the fault goes in.
    Injecting,
    /// The fault is in place (or happened) and the probe watches.
    Observing,
    RollingBack,
    Completed,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Pending,
        Phase::Gating,
        Phase::Injecting,
        Phase::Observing,
        Phase::RollingBack,
        Phase::Completed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Gating => "Gating",
            Phase::Injecting => "Injecting",
            Phase::Observing => "Observing",
            Phase::RollingBack => "RollingBack",
            Phase::Completed => "Completed",
        }
    }

    /// An unset phase is a new run.
    pub fn from_name(name: Option<&str>) -> Option<Phase> {
        match name {
            None => Some(Phase::Pending),
            Some(name) => Phase::ALL.into_iter().find(|p| p.name() == name),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Succeeded,
    Failed,
    /// Ended early (a guard, a deletion, an operator restart); rolled back.
    Aborted,
    /// Never injected: a guard was crossed or unreadable at the gate.
    Skipped,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Succeeded => "Succeeded",
            Outcome::Failed => "Failed",
            Outcome::Aborted => "Aborted",
            Outcome::Skipped => "Skipped",
        }
    }

    pub fn from_name(name: &str) -> Option<Outcome> {
        [
            Outcome::Succeeded,
            Outcome::Failed,
            Outcome::Aborted,
            Outcome::Skipped,
        ]
        .into_iter()
        .find(|o| o.name() == name)
    }
}

/// What the run's status records, as far as the decision needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Recorded {
    pub phase: Phase,
    /// Decided early (an abort) or at the end.
    pub outcome: Option<Outcome>,
    /// `rolledBackAt` is set: the fault was seen gone.
    pub rolled_back: bool,
}

/// The target's lock (a Lease named after the target).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Lock {
    Free,
    Mine,
    /// Held by this other run.
    Held(String),
}

/// The guards' verdict this pass.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Guards {
    Clear,
    /// At the gate only: the target cannot take a drill now (missing, not healthy, no replica
    /// for a switchover, no write acknowledged through it), named.
    TargetUnfit(String),
    /// A limit crossed, named with its value.
    Crossed(String),
    /// An SLO missing or without live status: nothing can vouch for the budget.
    Unreadable(String),
}

/// How far this process itself took the run (kept in memory only: lost with the process).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Driving {
    /// This process did not record `Injecting` for this run.
    No,
    /// It recorded `Injecting`; the fault is not in yet.
    Recorded,
    /// It injected the fault.
    Injected,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Observation {
    pub recorded: Recorded,
    /// The run is being deleted: roll back first.
    pub deleting: bool,
    pub lock: Lock,
    pub guards: Guards,
    pub driving: Driving,
    /// This process's injection failed, with why: part of the fault may be in place.
    pub injection_error: Option<String>,
    /// The scenario's duration has passed since the injection.
    pub fault_held_long_enough: bool,
    /// The world shows no fault in place (nothing frozen, no partition left).
    pub fault_absent: bool,
    /// The target is healthy again (every instance ready, a primary serving).
    pub target_recovered: bool,
    /// The target has had its time to recover and has not.
    pub recovery_overdue: bool,
}

/// Why a run ended early or how it ended, for status and Events.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Verdict {
    pub outcome: Outcome,
    pub reason: Reason,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Deleted,
    GuardCrossed,
    GuardUnreadable,
    TargetUnfit,
    OperatorRestarted,
    InjectionFailed,
    NotRecovered,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Deleted => "Deleted",
            Reason::GuardCrossed => "GuardCrossed",
            Reason::GuardUnreadable => "GuardUnreadable",
            Reason::TargetUnfit => "TargetUnfit",
            Reason::OperatorRestarted => "OperatorRestarted",
            Reason::InjectionFailed => "InjectionFailed",
            Reason::NotRecovered => "NotRecovered",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// Create the target's lock (refused by the API server when it exists).
    AcquireLock,
    /// Record a new phase, and a verdict when one is decided.
    Record(Phase, Option<Verdict>),
    /// Inject the fault (only ever after this process recorded `Injecting`).
    Inject,
    /// Undo the fault; harmless when it is not in place.
    RollBack,
    /// Record `rolledBackAt`: the fault was seen gone.
    RecordRolledBack,
    /// Measure (when this process drove the probe), judge unless already decided, and record
    /// `Completed`.
    Complete,
    ReleaseLock,
    Wait(Waiting),
    /// Nothing left to do (the finalizer may go).
    Done,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Waiting {
    /// Another run holds the target.
    Target(String),
    /// The fault is held for the scenario's duration.
    FaultHeld,
    /// The target is recovering.
    Recovery,
}

fn abort(reason: Reason, message: impl Into<String>) -> Option<Verdict> {
    Some(Verdict {
        outcome: Outcome::Aborted,
        reason,
        message: message.into(),
    })
}

/// The verdict a crossed or unreadable guard gives: Skipped at the gate, Aborted later.
fn guard_verdict(guards: &Guards, outcome: Outcome) -> Option<Verdict> {
    let (reason, message) = match guards {
        Guards::Clear => return None,
        Guards::Crossed(why) => (Reason::GuardCrossed, why),
        Guards::Unreadable(why) => (Reason::GuardUnreadable, why),
        Guards::TargetUnfit(why) => (Reason::TargetUnfit, why),
    };
    Some(Verdict {
        outcome,
        reason,
        message: message.clone(),
    })
}

pub fn step(o: &Observation) -> Step {
    use Phase::*;
    let rolling_back = |verdict| Step::Record(RollingBack, verdict);
    match o.recorded.phase {
        Pending | Gating if o.deleting => Step::Record(
            Completed,
            abort(Reason::Deleted, "deleted before its fault was injected"),
        ),
        Pending => match &o.lock {
            Lock::Free => Step::AcquireLock,
            Lock::Mine => Step::Record(Gating, None),
            Lock::Held(other) => Step::Wait(Waiting::Target(other.clone())),
        },
        Gating => match guard_verdict(&o.guards, Outcome::Skipped) {
            None => Step::Record(Injecting, None),
            skipped => Step::Record(Completed, skipped),
        },
        Injecting | Observing if o.driving == Driving::No => rolling_back(abort(
            Reason::OperatorRestarted,
            format!(
                "the operator that recorded {} is gone: rolled back without injecting again; its measurements are lost",
                o.recorded.phase.name()
            ),
        )),
        Injecting | Observing if o.deleting => {
            rolling_back(abort(Reason::Deleted, "deleted during the fault"))
        }
        Injecting | Observing if o.guards != Guards::Clear => {
            rolling_back(guard_verdict(&o.guards, Outcome::Aborted))
        }
        // Retrying could leave part of a fault in place for good (a zone half frozen): the
        // rollback undoes whatever got in.
        Injecting if o.injection_error.is_some() => rolling_back(abort(
            Reason::InjectionFailed,
            format!(
                "the fault could not be injected ({}): rolled back",
                o.injection_error.as_deref().unwrap_or_default()
            ),
        )),
        Injecting => match o.driving {
            Driving::Recorded => Step::Inject,
            _ => Step::Record(Observing, None),
        },
        Observing if o.fault_held_long_enough => rolling_back(None),
        Observing => Step::Wait(Waiting::FaultHeld),
        RollingBack if !o.recorded.rolled_back => match o.fault_absent {
            false => Step::RollBack,
            true => Step::RecordRolledBack,
        },
        RollingBack if o.target_recovered => Step::Complete,
        RollingBack if o.recovery_overdue => Step::Record(
            Completed,
            Some(Verdict {
                outcome: Outcome::Failed,
                reason: Reason::NotRecovered,
                message: "the target did not recover after the fault was rolled back".into(),
            }),
        ),
        RollingBack => Step::Wait(Waiting::Recovery),
        Completed => match o.lock {
            Lock::Mine => Step::ReleaseLock,
            _ => Step::Done,
        },
    }
}

/// The measured result of a drill that ran to its end.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured {
    /// The longest outage the probe through the Service saw; `None` when it saw none.
    pub rto_seconds: Option<f64>,
    /// The same through the DNS name, when a DNS probe ran and saw an outage.
    pub dns_rto_seconds: Option<f64>,
    /// Acknowledged writes missing, over every probe.
    pub lost_writes: u64,
}

/// Success criteria as numbers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Criteria {
    pub max_rto_seconds: Option<f64>,
    pub max_lost_writes: u64,
}

/// Succeeded when every criterion holds; otherwise Failed, naming each one that did not.
pub fn judge(measured: &Measured, criteria: &Criteria) -> (Outcome, String) {
    let mut broken = vec![];
    for (path, rto) in [
        ("", measured.rto_seconds),
        (" through DNS", measured.dns_rto_seconds),
    ] {
        if let (Some(rto), Some(limit)) = (rto, criteria.max_rto_seconds)
            && rto > limit
        {
            broken.push(format!("RTO{path} {rto:.2}s exceeds maxRto {limit}s"));
        }
    }
    if measured.lost_writes > criteria.max_lost_writes {
        broken.push(format!(
            "{} acknowledged writes lost, maxLostWrites is {}",
            measured.lost_writes, criteria.max_lost_writes
        ));
    }
    let mut rto = measured
        .rto_seconds
        .map_or("no outage".to_string(), |s| format!("RTO {s:.2}s"));
    if let Some(dns) = measured.dns_rto_seconds {
        rto.push_str(&format!(" (through DNS {dns:.2}s)"));
    }
    if broken.is_empty() {
        (
            Outcome::Succeeded,
            format!("{rto}, {} acknowledged writes lost", measured.lost_writes),
        )
    } else {
        (Outcome::Failed, broken.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observation(phase: Phase) -> Observation {
        Observation {
            recorded: Recorded {
                phase,
                outcome: None,
                rolled_back: false,
            },
            deleting: false,
            lock: Lock::Mine,
            guards: Guards::Clear,
            driving: Driving::Recorded,
            injection_error: None,
            fault_held_long_enough: false,
            fault_absent: false,
            target_recovered: false,
            recovery_overdue: false,
        }
    }

    #[test]
    fn only_the_process_that_recorded_injecting_injects() {
        assert_eq!(step(&observation(Phase::Injecting)), Step::Inject);
        let restarted = Observation {
            driving: Driving::No,
            ..observation(Phase::Injecting)
        };
        assert!(matches!(
            step(&restarted),
            Step::Record(
                Phase::RollingBack,
                Some(Verdict {
                    reason: Reason::OperatorRestarted,
                    ..
                })
            )
        ));
        let injected = Observation {
            driving: Driving::Injected,
            ..observation(Phase::Injecting)
        };
        assert_eq!(step(&injected), Step::Record(Phase::Observing, None));
        // A failed injection is never retried: rolled back, naming why.
        let failed = Observation {
            injection_error: Some("NetworkPolicy does not hold".into()),
            ..observation(Phase::Injecting)
        };
        let Step::Record(Phase::RollingBack, Some(verdict)) = step(&failed) else {
            panic!("{:?}", step(&failed));
        };
        assert_eq!(
            (verdict.outcome, verdict.reason),
            (Outcome::Aborted, Reason::InjectionFailed)
        );
        assert!(verdict.message.contains("NetworkPolicy does not hold"));
    }

    #[test]
    fn a_crossed_guard_skips_at_the_gate_and_aborts_during_the_fault() {
        let crossed = Guards::Crossed("checkout 5m burn rate 20.0 > 14.4".into());
        let gate = Observation {
            guards: crossed.clone(),
            ..observation(Phase::Gating)
        };
        assert!(matches!(
            step(&gate),
            Step::Record(
                Phase::Completed,
                Some(Verdict {
                    outcome: Outcome::Skipped,
                    ..
                })
            )
        ));
        let during = Observation {
            guards: crossed,
            driving: Driving::Injected,
            ..observation(Phase::Observing)
        };
        assert!(matches!(
            step(&during),
            Step::Record(
                Phase::RollingBack,
                Some(Verdict {
                    outcome: Outcome::Aborted,
                    ..
                })
            )
        ));
    }

    #[test]
    fn rollback_is_seen_done_before_the_run_completes_and_the_lock_goes_last() {
        let rolling = observation(Phase::RollingBack);
        assert_eq!(step(&rolling), Step::RollBack);
        let gone = Observation {
            fault_absent: true,
            ..rolling.clone()
        };
        assert_eq!(step(&gone), Step::RecordRolledBack);
        let recorded = Observation {
            recorded: Recorded {
                rolled_back: true,
                ..gone.recorded
            },
            ..gone.clone()
        };
        assert_eq!(step(&recorded), Step::Wait(Waiting::Recovery));
        let recovered = Observation {
            target_recovered: true,
            ..recorded
        };
        assert_eq!(step(&recovered), Step::Complete);
        assert_eq!(step(&observation(Phase::Completed)), Step::ReleaseLock);
    }

    #[test]
    fn judging_names_every_criterion_broken() {
        let criteria = Criteria {
            max_rto_seconds: Some(5.0),
            max_lost_writes: 0,
        };
        let good = Measured {
            rto_seconds: Some(3.2),
            dns_rto_seconds: Some(4.1),
            lost_writes: 0,
        };
        let (outcome, message) = judge(&good, &criteria);
        assert_eq!(outcome, Outcome::Succeeded);
        assert_eq!(
            message,
            "RTO 3.20s (through DNS 4.10s), 0 acknowledged writes lost"
        );
        let bad = Measured {
            rto_seconds: Some(7.5),
            dns_rto_seconds: None,
            lost_writes: 2,
        };
        let (outcome, message) = judge(&bad, &criteria);
        assert_eq!(outcome, Outcome::Failed);
        assert!(message.contains("RTO 7.50s exceeds maxRto 5s"), "{message}");
        assert!(message.contains("2 acknowledged writes lost"), "{message}");
        // A client following the DNS name can see a longer outage than the Service's.
        let slow_dns = Measured {
            rto_seconds: Some(3.0),
            dns_rto_seconds: Some(9.0),
            lost_writes: 0,
        };
        let (outcome, message) = judge(&slow_dns, &criteria);
        assert_eq!(outcome, Outcome::Failed);
        assert_eq!(message, "RTO through DNS 9.00s exceeds maxRto 5s");
    }
}
