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
