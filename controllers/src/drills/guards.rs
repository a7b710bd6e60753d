//! Guards: whether the SLOs a drill names can afford it, read from their live status (written by
//! the SLO controller from Prometheus). A guard that cannot be read stops the drill like a
//! crossed one: nothing may vouch for a budget nobody can see.

use bulwark_crds::drills::{Guard, GuardReading};
use bulwark_crds::slo::ServiceLevelObjectiveStatus;
use chrono::{DateTime, Utc};

use super::run::Guards;

/// Live numbers older than this are not trusted (the SLO controller refreshes them every 30 s by
/// default).
pub const STALE_AFTER: chrono::Duration = chrono::Duration::minutes(5);

/// The verdict over every guard, and what each read (for status when the run stops).
pub fn evaluate(
    guards: &[Guard],
    status_of: impl Fn(&str) -> Option<Option<ServiceLevelObjectiveStatus>>,
    now: DateTime<Utc>,
) -> (Guards, Vec<GuardReading>) {
    let mut readings = vec![];
    let mut verdict = Guards::Clear;
    for guard in guards {
        let (mut reading, problem) = read(guard, status_of(&guard.slo), now);
        if verdict == Guards::Clear
            && let Some(problem) = problem
        {
            verdict = problem;
            reading.stopped_the_run = true;
        }
        readings.push(reading);
    }
    (verdict, readings)
}

fn read(
    guard: &Guard,
    status: Option<Option<ServiceLevelObjectiveStatus>>,
    now: DateTime<Utc>,
) -> (GuardReading, Option<Guards>) {
    let mut reading = GuardReading {
        slo: guard.slo.clone(),
        window: guard.window.clone(),
        burn_rate: None,
        budget_remaining: None,
        stopped_the_run: false,
    };
    let slo = &guard.slo;
    let Some(status) = status else {
        return (
            reading,
            Some(Guards::Unreadable(format!(
                "guard: ServiceLevelObjective {slo} does not exist"
            ))),
        );
    };
    let fresh = status
        .as_ref()
        .and_then(|s| s.evaluated_at.as_ref())
        .is_some_and(|at| {
            let at = DateTime::<Utc>::from_timestamp(at.0.as_second(), 0).unwrap_or_default();
            now - at <= STALE_AFTER
        });
    let status = status.unwrap_or_default();
    reading.burn_rate = status
        .burn_rates
        .iter()
        .find(|b| b.window == guard.window)
        .map(|b| b.burn_rate);
    reading.budget_remaining = status.error_budget_remaining;
    if !fresh {
        return (
            reading,
            Some(Guards::Unreadable(format!(
                "guard: ServiceLevelObjective {slo} has no live status from the last {} minutes (is its Prometheus configured and answering?)",
                STALE_AFTER.num_minutes()
            ))),
        );
    }
    if let Some(limit) = guard.max_burn_rate {
        let window = &guard.window;
        match reading.burn_rate {
            None => {
                return (
                    reading,
                    Some(Guards::Unreadable(format!(
                        "guard: ServiceLevelObjective {slo} has no {window} burn rate in status"
                    ))),
                );
            }
            Some(rate) if rate > limit => {
                return (
                    reading,
                    Some(Guards::Crossed(format!(
                        "guard: {slo} burns its budget at {rate:.2}x over {window}, above maxBurnRate {limit}"
                    ))),
                );
            }
            Some(_) => {}
        }
    }
    if let Some(minimum) = guard.min_budget_remaining {
        match reading.budget_remaining {
            None => {
                return (
                    reading,
                    Some(Guards::Unreadable(format!(
                        "guard: ServiceLevelObjective {slo} has no budget remaining in status"
                    ))),
                );
            }
            Some(left) if left < minimum => {
                return (
                    reading,
                    Some(Guards::Crossed(format!(
                        "guard: {slo} has {:.1}% of its error budget left, below minBudgetRemaining {:.1}%",
                        left * 100.0,
                        minimum * 100.0
                    ))),
                );
            }
            Some(_) => {}
        }
    }
    (reading, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_crds::slo::WindowBurnRate;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn guard(max_burn_rate: Option<f64>, min_budget_remaining: Option<f64>) -> Guard {
        Guard {
            slo: "checkout".into(),
            window: "5m".into(),
            max_burn_rate,
            min_budget_remaining,
        }
    }

    fn status(burn_rate: f64, budget: f64, age_seconds: i64) -> ServiceLevelObjectiveStatus {
        let now = k8s_openapi::jiff::Timestamp::now();
        ServiceLevelObjectiveStatus {
            burn_rates: vec![WindowBurnRate {
                window: "5m".into(),
                burn_rate,
            }],
            error_budget_remaining: Some(budget),
            evaluated_at: Some(Time(
                now.checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(age_seconds))
                    .unwrap(),
            )),
            ..Default::default()
        }
    }

    fn verdict(guard: Guard, found: Option<Option<ServiceLevelObjectiveStatus>>) -> Guards {
        evaluate(&[guard], |_| found.clone(), Utc::now()).0
    }

    #[test]
    fn a_guard_is_crossed_by_a_fast_burn_or_a_spent_budget_and_names_the_value() {
        let healthy = Some(Some(status(1.0, 0.9, 10)));
        assert_eq!(
            verdict(guard(Some(14.4), Some(0.5)), healthy),
            Guards::Clear
        );
        let Guards::Crossed(why) =
            verdict(guard(Some(14.4), None), Some(Some(status(20.0, 0.9, 10))))
        else {
            panic!("a burn rate of 20 crosses 14.4");
        };
        assert!(why.contains("20.00x over 5m"), "{why}");
        let Guards::Crossed(why) =
            verdict(guard(None, Some(0.5)), Some(Some(status(1.0, 0.25, 10))))
        else {
            panic!("25% left is below 50%");
        };
        assert!(why.contains("25.0% of its error budget left"), "{why}");
        // Of several guards, the reading of the one that stopped the run says so.
        let payments = Guard {
            slo: "payments".into(),
            ..guard(Some(2.0), None)
        };
        let (verdict, readings) = evaluate(
            &[guard(Some(14.4), None), payments],
            |slo| {
                Some(Some(status(
                    if slo == "payments" { 3.0 } else { 1.0 },
                    0.9,
                    10,
                )))
            },
            Utc::now(),
        );
        assert!(matches!(verdict, Guards::Crossed(why) if why.starts_with("guard: payments")));
        let stopped: Vec<(&str, bool)> = readings
            .iter()
            .map(|r| (r.slo.as_str(), r.stopped_the_run))
            .collect();
        assert_eq!(stopped, [("checkout", false), ("payments", true)]);
    }

    #[test]
    fn a_missing_slo_or_stale_numbers_stop_the_drill() {
        assert!(
            matches!(verdict(guard(Some(1.0), None), None), Guards::Unreadable(why) if why.contains("does not exist"))
        );
        assert!(
            matches!(verdict(guard(Some(1.0), None), Some(None)), Guards::Unreadable(why) if why.contains("no live status"))
        );
        assert!(matches!(
            verdict(guard(Some(14.4), None), Some(Some(status(1.0, 0.9, 600)))),
            Guards::Unreadable(_)
        ));
    }
}
