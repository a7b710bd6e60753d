//! The planner's decisions: which records a name should serve, and whether that is a new plan.

use std::collections::BTreeSet;
use std::net::IpAddr;

use bulwark_crds::dns::{RRSet, RecordType, RoutingPolicy};

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
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanDecision {
    /// Mint plan `generation` with these records.
    Mint {
        generation: u64,
        rrsets: Vec<RRSet>,
        content_hash: String,
    },
    /// The newest plan already has this content.
    Unchanged,
    /// No target is healthy and the endpoint does not allow empty answers: the current plan stays
    /// live rather than taking the name down.
    WithheldEmpty,
}

/// Whether the desired records need a new plan. `newest_plan_hash` is the content hash of the
/// plan at `latest_generation` (`None` when no plan was minted yet).
pub fn decide_plan(
    latest_generation: u64,
    newest_plan_hash: Option<&str>,
    rrsets: Vec<RRSet>,
    allow_empty: bool,
) -> PlanDecision {
    if rrsets.is_empty() && !allow_empty {
        return PlanDecision::WithheldEmpty;
    }
    let hash = content_hash(&rrsets);
    if newest_plan_hash == Some(hash.as_str()) {
        return PlanDecision::Unchanged;
    }
    PlanDecision::Mint {
        generation: latest_generation + 1,
        rrsets,
        content_hash: hash,
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
            ..
        } = decide_plan(0, None, rrsets.clone(), false)
        else {
            panic!("first plan must be minted")
        };
        assert_eq!(generation, 1);
        assert_eq!(hash.len(), 64);
        assert_eq!(
            decide_plan(1, Some(&hash), rrsets.clone(), false),
            PlanDecision::Unchanged
        );
        let mut longer_ttl = rrsets.clone();
        longer_ttl[0].ttl = 120;
        assert!(matches!(
            decide_plan(1, Some(&hash), longer_ttl, false),
            PlanDecision::Mint { generation: 2, .. }
        ));
        assert_eq!(
            decide_plan(1, Some(&hash), Vec::new(), false),
            PlanDecision::WithheldEmpty
        );
        assert!(matches!(
            decide_plan(1, Some(&hash), Vec::new(), true),
            PlanDecision::Mint { generation: 2, ref rrsets, .. } if rrsets.is_empty()
        ));
    }
}
