//! Standard `metav1.Condition` bookkeeping shared by every controller.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The condition to write for `type_`: `lastTransitionTime` moves only when the status flips.
pub fn condition(
    existing: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let last_transition_time = existing
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation,
        last_transition_time,
    }
}

/// Whether writing `wanted` would change what `existing` says (ignoring the timestamp).
pub fn differs(existing: &[Condition], wanted: &Condition) -> bool {
    !existing.iter().any(|c| {
        c.type_ == wanted.type_
            && c.status == wanted.status
            && c.reason == wanted.reason
            && c.message == wanted.message
            && c.observed_generation == wanted.observed_generation
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let first = condition(&[], "Ready", false, "NoPlan", "waiting", Some(1));
        let existing = vec![first.clone()];
        let same = condition(
            &existing,
            "Ready",
            false,
            "ZoneNotFound",
            "other reason",
            Some(2),
        );
        assert_eq!(same.last_transition_time, first.last_transition_time);
        assert!(differs(&existing, &same));
        assert!(!differs(&existing, &first));
        std::thread::sleep(std::time::Duration::from_millis(2));
        let flipped = condition(&existing, "Ready", true, "Live", "plan 1 live", Some(2));
        assert_ne!(flipped.last_transition_time, first.last_transition_time);
        assert_eq!(flipped.status, "True");
    }
}
