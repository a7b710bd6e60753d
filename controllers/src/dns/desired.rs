//! The planner's decisions: which records a name should serve, and whether that is a new plan.

use std::collections::BTreeSet;
use std::net::IpAddr;

use bulwark_crds::dns::{RRSet, RecordType, RoutingPolicy};

use super::fencing::trusted_bound;

/// One address a target resolved to, with the health the planner observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub address: IpAddr,
    pub weight: u32,
    pub group: u32,
    pub healthy: bool,
}

/// The RRsets a name should serve. Weight 0 drains a target (plain DNS answers carry no weights,
/// so any positive weight means "in the answer"). Output is canonical: sorted, deduplicated.
pub fn desired_rrsets(routing: RoutingPolicy, ttl: u32, candidates: &[Candidate]) -> Vec<RRSet> {
    let serving = candidates.iter().filter(|c| c.healthy && c.weight > 0);
    let chosen: Vec<&Candidate> = match routing {
        RoutingPolicy::AllHealthy => serving.collect(),
        RoutingPolicy::Failover => {
            let serving: Vec<&Candidate> = serving.collect();
            match serving.iter().map(|c| c.group).min() {
                Some(best) => serving.into_iter().filter(|c| c.group == best).collect(),
                None => Vec::new(),
            }
        }
    };
    let mut v4 = BTreeSet::new();
    let mut v6 = BTreeSet::new();
    for candidate in chosen {
        match candidate.address {
            IpAddr::V4(a) => v4.insert(a),
            IpAddr::V6(a) => v6.insert(a),
        };
    }
    let mut rrsets = Vec::new();
    if !v4.is_empty() {
        rrsets.push(RRSet {
            record_type: RecordType::A,
            ttl,
            values: v4.iter().map(ToString::to_string).collect(),
        });
    }
    if !v6.is_empty() {
        rrsets.push(RRSet {
            record_type: RecordType::AAAA,
            ttl,
            values: v6.iter().map(ToString::to_string).collect(),
        });
    }
    rrsets
}

/// SHA-256 over the canonical RRsets, hex encoded: equal content, equal hash.
pub fn content_hash(rrsets: &[RRSet]) -> String {
    let canonical = serde_json::to_vec(rrsets).expect("RRsets serialize");
    let digest = ring::digest::digest(&ring::digest::SHA256, &canonical);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Not format! per byte: the planner hashes on every reconcile, the model checker per state.
    digest
        .as_ref()
        .iter()
        .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]])
        .map(char::from)
        .collect()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanDecision {
    /// Mint plan `generation` with these records, reserving the generation first (compare-and-set)
    /// when [`needs_reservation`] says so.
    /// `recovered`: the records are what the server serves, because the live plan's object is
    /// gone and no healthy target can replace it.
    Mint {
        generation: u64,
        rrsets: Vec<RRSet>,
        content_hash: String,
        recovered: bool,
    },
    /// The newest plan already has this content.
    Unchanged,
    /// No target is healthy and the endpoint does not allow empty answers: what is live stays
    /// live rather than taking the name down.
    WithheldEmpty,
    /// The newest generation's plan is gone (deleted, or its planner died between reserving
    /// and creating it) and no healthy target can replace it: read what the server serves, then
    /// decide again with [`PlanInput::server`] set.
    ReadServer,
}

/// What the authoritative server serves for the name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerView {
    pub fence: Option<u64>,
    pub records: Vec<RRSet>,
}

/// Everything the planner decides from.
#[derive(Clone, Debug)]
pub struct PlanInput<'a> {
    /// The newest generation minted for the endpoint ([`newest_minted`]; 0: none yet).
    pub newest: u64,
    /// Content hash of the plan at `newest`; `None` when that plan object does not exist.
    pub newest_plan_hash: Option<&'a str>,
    /// Generations whose plan objects exist.
    pub existing_plans: &'a [u64],
    /// The records the targets' health asks for.
    pub desired: Vec<RRSet>,
    pub allow_empty: bool,
    /// Set after a [`PlanDecision::ReadServer`].
    pub server: Option<&'a ServerView>,
}

/// The newest generation minted for an endpoint, as far as the planner can tell: the reserved
/// one, the live one, or the newest existing plan an enactor would accept (one minted without a
/// reservation, not live yet). Plans above [`trusted_bound`] do not count: they are refused.
pub fn newest_minted(reserved: u64, live: Option<u64>, existing_plans: &[u64]) -> u64 {
    let bound = trusted_bound(reserved, live);
    existing_plans
        .iter()
        .copied()
        .filter(|generation| *generation <= bound)
        .chain([reserved, live.unwrap_or(0)])
        .max()
        .unwrap_or(0)
}

/// Whether minting `generation` needs its reservation written first: only when enactors would
/// otherwise refuse it, that is when a plan above the live one is already minted. A change to a
/// settled endpoint mints the generation after the live one with no write but the plan's create.
pub fn needs_reservation(generation: u64, reserved: u64, live: Option<u64>) -> bool {
    generation > trusted_bound(reserved, live)
}

/// The planner's step. A generation is never minted over a plan that exists: whatever is missing,
/// the next plan takes a new generation above the newest minted one. And no plan
/// is ever minted that the endpoint's own rules refuse: empty records need `allowEmpty`, and when
/// the live plan's object is gone with no healthy target, the replacement carries the records the
/// server already serves.
pub fn decide_plan(input: PlanInput<'_>) -> PlanDecision {
    let next = input.newest + 1;
    if !input.desired.is_empty() || input.allow_empty {
        let hash = content_hash(&input.desired);
        if input.newest_plan_hash == Some(hash.as_str()) {
            return PlanDecision::Unchanged;
        }
        return PlanDecision::Mint {
            generation: next,
            rrsets: input.desired,
            content_hash: hash,
            recovered: false,
        };
    }
    if input.newest == 0 || input.newest_plan_hash.is_some() {
        return PlanDecision::WithheldEmpty;
    }
    let Some(server) = input.server else {
        return PlanDecision::ReadServer;
    };
    let live_plan_exists = server
        .fence
        .is_some_and(|live| input.existing_plans.contains(&live));
    if server.records.is_empty() || live_plan_exists {
        return PlanDecision::WithheldEmpty;
    }
    PlanDecision::Mint {
        generation: next,
        content_hash: content_hash(&server.records),
        rrsets: server.records.clone(),
        recovered: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(address: &str, group: u32, healthy: bool) -> Candidate {
        Candidate {
            address: address.parse().unwrap(),
            weight: 1,
            group,
            healthy,
        }
    }

    #[test]
    fn all_healthy_serves_every_healthy_weighted_address_once_in_order() {
        let mut drained = candidate("10.0.0.9", 0, true);
        drained.weight = 0;
        let rrsets = desired_rrsets(
            RoutingPolicy::AllHealthy,
            30,
            &[
                candidate("10.0.0.2", 0, true),
                candidate("2001:db8::1", 1, true),
                candidate("10.0.0.1", 0, true),
                candidate("10.0.0.2", 0, true),
                candidate("10.0.0.3", 0, false),
                drained,
            ],
        );
        assert_eq!(
            rrsets,
            vec![
                RRSet {
                    record_type: RecordType::A,
                    ttl: 30,
                    values: vec!["10.0.0.1".into(), "10.0.0.2".into()]
                },
                RRSet {
                    record_type: RecordType::AAAA,
                    ttl: 30,
                    values: vec!["2001:db8::1".into()]
                },
            ]
        );
    }

    #[test]
    fn failover_serves_the_lowest_group_with_a_healthy_target() {
        let targets = [
            candidate("10.0.0.1", 0, false),
            candidate("10.0.1.1", 1, true),
            candidate("10.0.1.2", 1, true),
            candidate("10.0.2.1", 2, true),
        ];
        let rrsets = desired_rrsets(RoutingPolicy::Failover, 60, &targets);
        assert_eq!(rrsets.len(), 1);
        assert_eq!(rrsets[0].values, vec!["10.0.1.1", "10.0.1.2"]);
        let all_down: Vec<Candidate> = targets
            .iter()
            .map(|c| Candidate {
                healthy: false,
                ..c.clone()
            })
            .collect();
        assert!(desired_rrsets(RoutingPolicy::Failover, 60, &all_down).is_empty());
    }

    fn input(newest: u64, hash: Option<&str>, desired: Vec<RRSet>) -> PlanInput<'_> {
        PlanInput {
            newest,
            newest_plan_hash: hash,
            existing_plans: &[],
            desired,
            allow_empty: false,
            server: None,
        }
    }

    #[test]
    fn a_new_plan_only_when_content_changes_and_never_empty_unless_allowed() {
        let rrsets = desired_rrsets(
            RoutingPolicy::AllHealthy,
            60,
            &[candidate("10.0.0.1", 0, true)],
        );
        let PlanDecision::Mint {
            generation,
            content_hash: hash,
            recovered: false,
            ..
        } = decide_plan(input(0, None, rrsets.clone()))
        else {
            panic!("first plan must be minted")
        };
        assert_eq!(generation, 1);
        assert_eq!(hash.len(), 64);
        assert_eq!(
            decide_plan(input(1, Some(&hash), rrsets.clone())),
            PlanDecision::Unchanged
        );
        let mut longer_ttl = rrsets.clone();
        longer_ttl[0].ttl = 120;
        assert!(matches!(
            decide_plan(input(1, Some(&hash), longer_ttl)),
            PlanDecision::Mint { generation: 2, .. }
        ));
        assert_eq!(
            decide_plan(input(1, Some(&hash), Vec::new())),
            PlanDecision::WithheldEmpty
        );
        assert!(matches!(
            decide_plan(PlanInput { allow_empty: true, ..input(1, Some(&hash), Vec::new()) }),
            PlanDecision::Mint { generation: 2, ref rrsets, .. } if rrsets.is_empty()
        ));
    }

    #[test]
    fn a_missing_reserved_plan_is_replaced_by_a_new_generation_never_by_an_empty_one() {
        let live = desired_rrsets(
            RoutingPolicy::AllHealthy,
            60,
            &[candidate("10.0.0.1", 0, true)],
        );
        let moved = desired_rrsets(
            RoutingPolicy::AllHealthy,
            60,
            &[candidate("10.0.0.2", 0, true)],
        );
        // Healthy targets: a fresh generation with them; no server read needed.
        assert!(matches!(
            decide_plan(input(4, None, moved.clone())),
            PlanDecision::Mint { generation: 5, ref rrsets, recovered: false, .. } if *rrsets == moved
        ));
        // No healthy target: ask the server first.
        assert_eq!(
            decide_plan(input(4, None, Vec::new())),
            PlanDecision::ReadServer
        );
        // The live plan's object is gone: its records come back as generation 5.
        let served = ServerView {
            fence: Some(4),
            records: live.clone(),
        };
        let existing = [2, 3];
        let recovering = PlanInput {
            existing_plans: &existing,
            server: Some(&served),
            ..input(4, None, Vec::new())
        };
        assert!(matches!(
            decide_plan(recovering.clone()),
            PlanDecision::Mint { generation: 5, ref rrsets, recovered: true, .. } if *rrsets == live
        ));
        // A planner died between reserving 4 and creating it; plan 3 is live and intact.
        let older_live = ServerView {
            fence: Some(3),
            records: live.clone(),
        };
        assert_eq!(
            decide_plan(PlanInput {
                server: Some(&older_live),
                ..recovering.clone()
            }),
            PlanDecision::WithheldEmpty
        );
        // Nothing served: nothing to preserve, and no empty plan either.
        let nothing = ServerView {
            fence: None,
            records: Vec::new(),
        };
        assert_eq!(
            decide_plan(PlanInput {
                server: Some(&nothing),
                ..recovering
            }),
            PlanDecision::WithheldEmpty
        );
    }

    #[test]
    fn a_change_to_a_settled_endpoint_needs_no_reservation_one_above_a_pending_plan_does() {
        // New endpoint: plan 1 needs none.
        assert_eq!(newest_minted(0, None, &[]), 0);
        assert!(!needs_reservation(1, 0, None));
        // Plan 1 minted, not live yet: plan 2 is reserved first.
        assert_eq!(newest_minted(0, None, &[1]), 1);
        assert!(needs_reservation(2, 0, None));
        // Plans 1 (live) and 2 (reserved, pending): plan 3 is reserved too.
        assert_eq!(newest_minted(2, Some(1), &[1, 2]), 2);
        assert!(needs_reservation(3, 2, Some(1)));
        // Settled on 2: plan 3 needs none, whether or not plan 2's object still exists.
        assert_eq!(newest_minted(2, Some(2), &[1, 2]), 2);
        assert_eq!(newest_minted(2, Some(2), &[]), 2);
        assert!(!needs_reservation(3, 2, Some(2)));
        // A plan above what enactors accept is not counted as minted.
        assert_eq!(newest_minted(2, Some(2), &[1, 2, 9]), 2);
        // An unreserved plan 3 minted, pending: plan 4 is reserved first.
        assert_eq!(newest_minted(2, Some(2), &[2, 3]), 3);
        assert!(needs_reservation(4, 2, Some(2)));
    }

    proptest::proptest! {
        /// The planner never mints an empty plan the endpoint refuses, never reuses a
        /// generation, and mints from the server only what that server served.
        #[test]
        fn the_planner_never_mints_an_empty_plan_it_must_refuse_nor_reuses_a_generation(
            reserved in 0u64..6,
            reserved_plan_present in proptest::bool::ANY,
            desired in proptest::collection::vec(1u8..5, 0..3),
            allow_empty in proptest::bool::ANY,
            served in proptest::collection::vec(1u8..5, 0..3),
            fence in proptest::option::of(1u64..6),
            existing in proptest::collection::vec(1u64..6, 0..4),
        ) {
            let rrsets = |octets: &[u8]| {
                let candidates: Vec<Candidate> = octets
                    .iter()
                    .map(|o| candidate(&format!("10.0.0.{o}"), 0, true))
                    .collect();
                desired_rrsets(RoutingPolicy::AllHealthy, 60, &candidates)
            };
            let hash = content_hash(&rrsets(&[9]));
            let server = ServerView { fence, records: rrsets(&served) };
            let input = PlanInput {
                newest: reserved,
                newest_plan_hash: (reserved > 0 && reserved_plan_present).then_some(hash.as_str()),
                existing_plans: &existing,
                desired: rrsets(&desired),
                allow_empty,
                server: Some(&server),
            };
            if let PlanDecision::Mint { generation, rrsets: minted, recovered, .. } = decide_plan(input) {
                proptest::prop_assert_eq!(generation, reserved + 1);
                proptest::prop_assert!(allow_empty || !minted.is_empty());
                if recovered {
                    proptest::prop_assert_eq!(minted, server.records);
                }
            }
        }
    }
}
