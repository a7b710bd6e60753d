//! The fencing protocol's decisions, shared by the production enactor and cleanup and by the
//! model checker (`controllers/tests/dns_model_check.rs`), so the checker proves what ships.
//!
//! The token is the plan generation. It lives at the DNS server in a TXT record next to the
//! managed name (`_bulwark.<fqdn>` = `"gen=N"`), and every enactment is one RFC 2136 UPDATE whose
//! prerequisite is the fence value the enactor last read: the server, not the enactor, decides
//! whether a write is stale.

/// How enactors and cleanup protect the live plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// The generation is checked at the server in the same UPDATE as the write, and cleanup keeps
    /// everything from the generation the server serves.
    #[default]
    Fenced,
    /// The October 2025 design, kept only so tests can show what fencing prevents: check the
    /// generation in memory then write unconditionally, and clean up by age, removing the records
    /// a collected plan wrote. Reachable only through a hidden test flag, never from the CRDs or
    /// the chart.
    Unfenced,
}

/// Owner name of the fence TXT record for a managed name.
pub fn fence_name(fqdn: &str) -> String {
    format!("_bulwark.{}", fqdn.trim_end_matches('.'))
}

pub fn fence_value(generation: u64) -> String {
    format!("gen={generation}")
}

/// The generation a fence TXT value carries, or `None` for anything Bulwark did not write.
pub fn parse_fence(value: &str) -> Option<u64> {
    value.strip_prefix("gen=")?.parse().ok().filter(|g| *g > 0)
}

/// What an enactor does with the newest plan once it has read the server's fence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Enactment {
    /// Write the plan. Under [`Strategy::Fenced`] the UPDATE carries the prerequisite "the fence
    /// is exactly `expect_fence`" (`None`: the fence does not exist).
    Apply { expect_fence: Option<u64> },
    /// The server already serves this generation; only verification is left.
    AlreadyLive,
    /// The server serves a newer generation: the plan is marked Superseded and never retried.
    Superseded { live: u64 },
}

/// Decide from the plan's generation and the fence just read from the server. A missing fence or
/// an older one (server restored from backup, manual edit) is repaired by applying the plan.
/// Called again with a fresh read after the server rejects a prerequisite.
pub fn decide_enactment(plan_generation: u64, fence: Option<u64>) -> Enactment {
    match fence {
        Some(live) if live > plan_generation => Enactment::Superseded { live },
        Some(live) if live == plan_generation => Enactment::AlreadyLive,
        _ => Enactment::Apply {
            expect_fence: fence,
        },
    }
}

/// The guard an UPDATE carries: `Some(expected)` is the fence prerequisite, `None` writes
/// unconditionally (the unfenced strategy only).
pub fn write_guard(strategy: Strategy, expect_fence: Option<u64>) -> Option<FenceGuard> {
    match strategy {
        Strategy::Fenced => Some(FenceGuard { expect_fence }),
        Strategy::Unfenced => None,
    }
}

/// RFC 2136 prerequisite on the fence record: it holds exactly `gen=expect_fence`, or does not
/// exist when `expect_fence` is `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FenceGuard {
    pub expect_fence: Option<u64>,
}

/// Prerequisite failures in one pass before yielding to other work (the fence keeps moving).
pub const MAX_FENCE_REFUSALS: u32 = 5;

/// One enactment pass over one plan, as a step function: the driver performs each [`PassStep`]
/// against the DNS server and feeds the answer back as an [`Observation`]. The production enactor
/// and the model checker run this same machine, so every interleaving the checker explores is one
/// the enactor can take.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EnactmentPass {
    generation: u64,
    strategy: Strategy,
    refused: u32,
    /// This pass's UPDATE made the plan live (it, not another replica, enacted it).
    applied: bool,
    /// Verification already rewrote the records once under this plan's fence.
    repaired: bool,
    awaiting: Awaiting,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Awaiting {
    Start,
    Fence,
    Write,
    Served,
    Repair,
}

/// What the server answered to the last [`PassStep`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Observation {
    /// Nothing yet: the first call.
    Start,
    Fence(Option<u64>),
    Written(super::provider::WriteOutcome),
    /// Whether the authoritative answer equals the plan's records.
    Served {
        matches_plan: bool,
    },
}

/// The next I/O the driver performs, or the pass's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PassStep {
    ReadFence,
    /// Write the plan's records and fence in one UPDATE carrying `guard`. `repair` marks a
    /// rewrite under the plan's own, already live fence (records edited at the server).
    Write {
        guard: Option<FenceGuard>,
        repair: bool,
    },
    ReadServed,
    Done(PassOutcome),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PassOutcome {
    /// The fence holds this plan's generation. `verified`: the answer matched the plan on the
    /// last read; `applied`: this pass's own UPDATE made it live.
    Live { applied: bool, verified: bool },
    /// The server holds a newer generation: the plan is marked Superseded and never retried.
    Superseded { live: u64 },
    /// The fence kept moving under this pass; try again shortly.
    Contended,
}

impl EnactmentPass {
    pub fn new(generation: u64, strategy: Strategy) -> Self {
        EnactmentPass {
            generation,
            strategy,
            refused: 0,
            applied: false,
            repaired: false,
            awaiting: Awaiting::Start,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Feed the answer to the previous step; returns the next one.
    pub fn step(&mut self, observation: Observation) -> PassStep {
        use super::provider::WriteOutcome::{Applied, FenceMismatch};
        let step = match (self.awaiting, observation) {
            (Awaiting::Start, _) => PassStep::ReadFence,
            (Awaiting::Fence, Observation::Fence(fence)) => {
                match decide_enactment(self.generation, fence) {
                    Enactment::Apply { expect_fence } => PassStep::Write {
                        guard: write_guard(self.strategy, expect_fence),
                        repair: false,
                    },
                    Enactment::AlreadyLive => PassStep::ReadServed,
                    Enactment::Superseded { live } => {
                        PassStep::Done(PassOutcome::Superseded { live })
                    }
                }
            }
            (Awaiting::Write | Awaiting::Repair, Observation::Written(Applied)) => {
                self.applied |= self.awaiting == Awaiting::Write;
                PassStep::ReadServed
            }
            (Awaiting::Write | Awaiting::Repair, Observation::Written(FenceMismatch)) => {
                self.refused += 1;
                if self.refused >= MAX_FENCE_REFUSALS {
                    PassStep::Done(PassOutcome::Contended)
                } else {
                    // The fence moved since it was read: read it again and decide again, so a
                    // newer live generation ends the pass as Superseded, never as Live.
                    PassStep::ReadFence
                }
            }
            (Awaiting::Served, Observation::Served { matches_plan: true }) => {
                PassStep::Done(PassOutcome::Live {
                    applied: self.applied,
                    verified: true,
                })
            }
            (
                Awaiting::Served,
                Observation::Served {
                    matches_plan: false,
                },
            ) if !self.repaired => {
                // Records edited under this plan's fence: rewrite them, fenced on this very
                // generation so nothing newer can be overwritten.
                self.repaired = true;
                PassStep::Write {
                    guard: write_guard(self.strategy, Some(self.generation)),
                    repair: true,
                }
            }
            (
                Awaiting::Served,
                Observation::Served {
                    matches_plan: false,
                },
            ) => PassStep::Done(PassOutcome::Live {
                applied: self.applied,
                verified: false,
            }),
            (awaiting, observation) => {
                panic!("enactment pass awaiting {awaiting:?} was fed {observation:?}")
            }
        };
        self.awaiting = match step {
            PassStep::ReadFence => Awaiting::Fence,
            PassStep::Write { repair: false, .. } => Awaiting::Write,
            PassStep::Write { repair: true, .. } => Awaiting::Repair,
            PassStep::ReadServed => Awaiting::Served,
            PassStep::Done(_) => self.awaiting,
        };
        step
    }
}

/// Why an enactor refuses a plan: only what the planner could have minted for this endpoint is
/// written, whoever created the object.
pub fn plan_refusal(plan: &PlanFacts<'_>, endpoint: &EndpointFacts<'_>) -> Option<String> {
    if !plan
        .fqdn
        .trim_end_matches('.')
        .eq_ignore_ascii_case(endpoint.fqdn.trim_end_matches('.'))
    {
        return Some(format!(
            "plan is for {} but its endpoint manages {}",
            plan.fqdn, endpoint.fqdn
        ));
    }
    if plan.generation > endpoint.reserved_generation {
        return Some(format!(
            "generation {} was never reserved: the endpoint's newest reserved generation is {}",
            plan.generation, endpoint.reserved_generation
        ));
    }
    if plan.empty && !endpoint.allow_empty {
        return Some(
            "plan has no records and the endpoint does not set allowEmpty: enacting it would empty the name"
                .into(),
        );
    }
    None
}

/// What [`plan_refusal`] checks of a plan.
pub struct PlanFacts<'a> {
    pub fqdn: &'a str,
    pub generation: u64,
    pub empty: bool,
}

/// What [`plan_refusal`] checks a plan against.
pub struct EndpointFacts<'a> {
    pub fqdn: &'a str,
    pub reserved_generation: u64,
    pub allow_empty: bool,
}

/// What one cleanup pass removes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Cleanup {
    /// Plan generations whose `DnsPlan` objects are deleted (each with a UID precondition).
    pub delete_plans: Vec<u64>,
    /// Generations whose records are also removed from the server. Always empty when fenced:
    /// records only ever change through a fenced enactment.
    pub delete_records_of: Vec<u64>,
}

/// Decide which plans to collect. `server_fence` is the fence read from the server at cleanup
/// time, never a remembered value; plans older than `live − retention` go, so the live plan
/// (and anything a stale enactor could still be holding that is newer) stays.
pub fn decide_cleanup(
    strategy: Strategy,
    plan_generations: &[u64],
    server_fence: Option<u64>,
    retention: u64,
) -> Cleanup {
    let basis = match strategy {
        Strategy::Fenced => server_fence,
        Strategy::Unfenced => plan_generations.iter().copied().max(),
    };
    let Some(basis) = basis else {
        return Cleanup::default();
    };
    let keep_from = basis.saturating_sub(retention);
    let mut delete_plans: Vec<u64> = plan_generations
        .iter()
        .copied()
        .filter(|g| *g < keep_from)
        .collect();
    delete_plans.sort_unstable();
    let delete_records_of = match strategy {
        Strategy::Fenced => Vec::new(),
        Strategy::Unfenced => delete_plans.clone(),
    };
    Cleanup {
        delete_plans,
        delete_records_of,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_round_trips_and_rejects_foreign_values() {
        for generation in [1, 2, 99, u64::MAX] {
            assert_eq!(parse_fence(&fence_value(generation)), Some(generation));
        }
        for foreign in ["", "gen=", "gen=0", "gen=-1", "gen=1x", "v=spf1", "GEN=3"] {
            assert_eq!(parse_fence(foreign), None, "{foreign:?}");
        }
        assert_eq!(fence_name("api.example.com."), "_bulwark.api.example.com");
    }

    #[test]
    fn enactment_applies_only_over_older_or_missing_fences() {
        assert_eq!(
            decide_enactment(3, None),
            Enactment::Apply { expect_fence: None }
        );
        assert_eq!(
            decide_enactment(3, Some(2)),
            Enactment::Apply {
                expect_fence: Some(2)
            }
        );
        assert_eq!(decide_enactment(3, Some(3)), Enactment::AlreadyLive);
        assert_eq!(
            decide_enactment(3, Some(7)),
            Enactment::Superseded { live: 7 }
        );
    }

    /// Runs a pass against a scripted server: `answers` are fed in order.
    fn run(generation: u64, answers: &[Observation]) -> Vec<PassStep> {
        let mut pass = EnactmentPass::new(generation, Strategy::Fenced);
        let mut steps = vec![pass.step(Observation::Start)];
        for answer in answers {
            steps.push(pass.step(*answer));
        }
        steps
    }

    #[test]
    fn a_pass_writes_over_an_older_fence_and_verifies() {
        use crate::dns::provider::WriteOutcome::Applied;
        let steps = run(
            3,
            &[
                Observation::Fence(Some(2)),
                Observation::Written(Applied),
                Observation::Served { matches_plan: true },
            ],
        );
        assert_eq!(
            steps,
            vec![
                PassStep::ReadFence,
                PassStep::Write {
                    guard: Some(FenceGuard {
                        expect_fence: Some(2)
                    }),
                    repair: false
                },
                PassStep::ReadServed,
                PassStep::Done(PassOutcome::Live {
                    applied: true,
                    verified: true
                }),
            ]
        );
    }

    #[test]
    fn a_refused_repair_ends_superseded_never_live() {
        // Plan 3 is live, its records were edited; while repairing, plan 4 went live. Before the
        // fix the refused repair counted as verified, and status said 3 while 4 was served.
        use crate::dns::provider::WriteOutcome::FenceMismatch;
        let steps = run(
            3,
            &[
                Observation::Fence(Some(3)),
                Observation::Served {
                    matches_plan: false,
                },
                Observation::Written(FenceMismatch),
                Observation::Fence(Some(4)),
            ],
        );
        assert_eq!(
            steps[2],
            PassStep::Write {
                guard: Some(FenceGuard {
                    expect_fence: Some(3)
                }),
                repair: true
            }
        );
        assert_eq!(
            steps.last(),
            Some(&PassStep::Done(PassOutcome::Superseded { live: 4 }))
        );
    }

    #[test]
    fn a_pass_yields_after_repeated_refusals_and_repairs_only_once() {
        use crate::dns::provider::WriteOutcome::{Applied, FenceMismatch};
        let mut answers = Vec::new();
        for fence in 0..MAX_FENCE_REFUSALS as u64 {
            answers.push(Observation::Fence(Some(fence + 1)));
            answers.push(Observation::Written(FenceMismatch));
        }
        let steps = run(9, &answers);
        assert_eq!(steps.last(), Some(&PassStep::Done(PassOutcome::Contended)));
        let unverified = run(
            3,
            &[
                Observation::Fence(Some(3)),
                Observation::Served {
                    matches_plan: false,
                },
                Observation::Written(Applied),
                Observation::Served {
                    matches_plan: false,
                },
            ],
        );
        assert_eq!(
            unverified.last(),
            Some(&PassStep::Done(PassOutcome::Live {
                applied: false,
                verified: false
            }))
        );
    }

    #[test]
    fn plans_the_planner_could_not_have_minted_are_refused() {
        let endpoint = EndpointFacts {
            fqdn: "api.example.com",
            reserved_generation: 4,
            allow_empty: false,
        };
        let plan = |fqdn, generation, empty| PlanFacts {
            fqdn,
            generation,
            empty,
        };
        assert_eq!(
            plan_refusal(&plan("api.example.com.", 4, false), &endpoint),
            None
        );
        let other = plan_refusal(&plan("bank.example.com", 2, false), &endpoint).unwrap();
        assert!(other.contains("bank.example.com"), "{other}");
        let forged = plan_refusal(&plan("api.example.com", 5, false), &endpoint).unwrap();
        assert!(forged.contains("never reserved"), "{forged}");
        let empty = plan_refusal(&plan("api.example.com", 3, true), &endpoint).unwrap();
        assert!(empty.contains("allowEmpty"), "{empty}");
        let allowing = EndpointFacts {
            allow_empty: true,
            ..endpoint
        };
        assert_eq!(
            plan_refusal(&plan("api.example.com", 3, true), &allowing),
            None
        );
    }

    #[test]
    fn unfenced_writes_carry_no_guard() {
        assert_eq!(
            write_guard(Strategy::Fenced, Some(4)),
            Some(FenceGuard {
                expect_fence: Some(4)
            })
        );
        assert_eq!(write_guard(Strategy::Unfenced, Some(4)), None);
    }

    #[test]
    fn fenced_cleanup_never_collects_the_live_plan_or_anything_newer() {
        let plans: Vec<u64> = (1..=10).collect();
        for live in 0..=12 {
            let fence = (live > 0).then_some(live);
            for retention in 0..4 {
                let cleanup = decide_cleanup(Strategy::Fenced, &plans, fence, retention);
                assert!(cleanup.delete_records_of.is_empty());
                for g in &cleanup.delete_plans {
                    assert!(
                        *g + retention < live,
                        "live {live}, retention {retention}, deleted {g}"
                    );
                }
                let kept = plans.len() - cleanup.delete_plans.len();
                assert_eq!(kept as u64, 10 - live.saturating_sub(retention + 1).min(10));
            }
        }
        assert!(
            decide_cleanup(Strategy::Fenced, &plans, None, 0)
                .delete_plans
                .is_empty(),
            "no fence read means nothing is known to be live, so nothing is collected"
        );
    }

    #[test]
    fn unfenced_cleanup_goes_by_age_and_takes_records_along() {
        let cleanup = decide_cleanup(Strategy::Unfenced, &[3, 1, 2], Some(1), 0);
        assert_eq!(cleanup.delete_plans, vec![1, 2]);
        assert_eq!(cleanup.delete_records_of, vec![1, 2]);
    }
}
