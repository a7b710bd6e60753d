//! The DrillSchedule controller (leader only): at each tick [`schedule::plan`] decides, this
//! creates the run named after the tick (so a second attempt finds the first), records the tick
//! as handled with a compare-and-set, prunes history and sleeps until the next tick.

use std::sync::Arc;
use std::time::Duration;

use bulwark_crds::drills::{ConcurrencyPolicy, DrillRun, DrillSchedule, DrillScheduleStatus};
use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::run::Outcome;
use super::run_controller::{DrillSettings, Error, retry_on_conflict};
use super::schedule::{self, Decision, Due, Schedule, Window};
use crate::conditions;
use crate::events::Recorder;
use crate::leadership::{Leadership, became_leader, still_leading};
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::runtime::{
    Backoff, apply_status, as_leader, cached, drain, is_not_found, object_key, publish,
};

const CONTROLLER: &str = "drill-schedule";
const FIELD_MANAGER: &str = "bulwark-drill-schedules";
/// Every run a schedule creates carries its name here.
pub const SCHEDULE_LABEL: &str = "bulwark.dev/drill-schedule";
pub const READY: &str = "Ready";

struct Context {
    client: kube::Client,
    metrics: Metrics,
    recorder: Recorder,
    leadership: watch::Receiver<Leadership>,
    settings: DrillSettings,
    backoff: Backoff,
}

pub async fn run(
    client: kube::Client,
    metrics: Metrics,
    recorder: Recorder,
    readiness: Readiness,
    leadership: watch::Receiver<Leadership>,
    settings: DrillSettings,
    shutdown: CancellationToken,
) {
    let namespace = settings.scope.namespace();
    let (schedules, schedule_events) = cached::<DrillSchedule>(
        &client,
        namespace,
        watcher::Config::default(),
        readiness.gate(format!("{CONTROLLER}/DrillSchedule")),
    );
    // A run ending frees its schedule for the next tick and moves its history.
    let (_runs, run_events) = cached::<DrillRun>(
        &client,
        namespace,
        watcher::Config::default().labels(SCHEDULE_LABEL),
        readiness.gate(format!("{CONTROLLER}/DrillRun")),
    );
    let context = Arc::new(Context {
        client,
        metrics,
        recorder,
        leadership: leadership.clone(),
        settings,
        backoff: Backoff::default(),
    });
    let results = Controller::for_stream(schedule_events.applied_objects(), schedules)
        .owns_stream(run_events.touched_objects())
        .reconcile_all_on(became_leader(leadership))
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, context);
    drain(CONTROLLER, results).await;
}

fn error_policy(schedule: Arc<DrillSchedule>, error: &Error, context: Arc<Context>) -> Action {
    warn!(schedule = %object_key(&*schedule), %error, "DrillSchedule reconciliation failed");
    context.backoff.failed(&object_key(&*schedule))
}

async fn reconcile(schedule: Arc<DrillSchedule>, context: Arc<Context>) -> Result<Action, Error> {
    as_leader(
        &*schedule,
        CONTROLLER,
        &context.leadership,
        &context.settings.scope,
        &context.metrics,
        &context.backoff,
        |token| reconcile_as_leader(&schedule, &context, token),
    )
    .await
    .or_else(retry_on_conflict)
}

/// The schedule and its blocked windows, parsed; an error names what is wrong.
fn parse(schedule: &DrillSchedule) -> Result<(Schedule, Vec<Window>), String> {
    let spec = &schedule.spec;
    let zone = spec.time_zone.as_deref();
    let cron = Schedule::parse(&spec.schedule, zone).map_err(|e| e.to_string())?;
    let windows = spec
        .blocked_windows
        .iter()
        .map(|window| {
            let opens = Schedule::parse(&window.opens, zone)
                .map_err(|e| format!("blockedWindows {}: opens: {e}", window.name))?;
            let length = window_length(&window.duration).ok_or_else(|| {
                format!(
                    "blockedWindows {}: duration {:?} is not like 30m or 8h",
                    window.name, window.duration
                )
            })?;
            Ok(Window {
                name: window.name.clone(),
                opens,
                length,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok((cron, windows))
}

/// `90s`, `30m`, `8h`.
fn window_length(text: &str) -> Option<chrono::Duration> {
    let (number, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: i64 = number.parse().ok()?;
    match unit {
        "s" => Some(chrono::Duration::seconds(n)),
        "m" => Some(chrono::Duration::minutes(n)),
        "h" => Some(chrono::Duration::hours(n)),
        _ => None,
    }
}

fn time(at: DateTime<Utc>) -> Time {
    Time(Timestamp::from_microsecond(at.timestamp_micros()).expect("a time in range"))
}

fn date_time(at: &Time) -> DateTime<Utc> {
    super::utc(at.0)
}

async fn reconcile_as_leader(
    drill_schedule: &DrillSchedule,
    context: &Context,
    token: u64,
) -> Result<Action, Error> {
    let namespace = drill_schedule.namespace().unwrap_or_default();
    let name = drill_schedule.name_any();
    let runs_api: Api<DrillRun> = Api::namespaced(context.client.clone(), &namespace);
    let mut status = drill_schedule.status.clone().unwrap_or_default();
    status.observed_generation = drill_schedule.metadata.generation;
    let mut events: Vec<(EventType, &str, String)> = vec![];

    let (cron, windows) = match parse(drill_schedule) {
        Ok(parsed) => parsed,
        Err(invalid) => {
            set_ready(
                &mut status,
                drill_schedule,
                false,
                "InvalidSchedule",
                invalid.clone(),
                &mut events,
            );
            status.next_run_time = None;
            write(drill_schedule, context, token, status, events).await?;
            return Ok(Action::await_change());
        }
    };
    let runs = runs_api
        .list(&ListParams::default().labels(&format!("{SCHEDULE_LABEL}={name}")))
        .await?
        .items;
    let mut active: Vec<&DrillRun> = runs.iter().filter(|r| !completed(r)).collect();
    let now = Utc::now();
    let since = status
        .last_handled_time
        .as_ref()
        .map(date_time)
        .or_else(|| {
            drill_schedule
                .meta()
                .creation_timestamp
                .as_ref()
                .map(date_time)
        })
        .unwrap_or(now);
    let plan = schedule::plan(
        &cron,
        since,
        now,
        drill_schedule
            .spec
            .starting_deadline_seconds
            .map(chrono::Duration::seconds),
        &windows,
    );
    let mut created = None;
    if drill_schedule.spec.suspend {
        set_ready(
            &mut status,
            drill_schedule,
            true,
            "Suspended",
            "suspended: no runs start".into(),
            &mut events,
        );
    } else {
        set_ready(
            &mut status,
            drill_schedule,
            true,
            "Scheduled",
            format!("schedule {:?} is valid", drill_schedule.spec.schedule),
            &mut events,
        );
        let due = match &plan.decision {
            Decision::Nothing => None,
            Decision::Start(due) => Some(due),
            Decision::TooLate(due) => {
                events.push((
                    EventType::Warning,
                    "TooLate",
                    format!(
                        "the tick of {} is more than startingDeadlineSeconds late: no run",
                        due.tick
                    ),
                ));
                Some(due)
            }
            Decision::Blocked { due, window } => {
                events.push((
                    EventType::Normal,
                    "Blocked",
                    format!(
                        "the tick of {} falls in blocked window {window}: no run",
                        due.tick
                    ),
                ));
                Some(due)
            }
        };
        if let Some(due) = due {
            if due.missed > 0 {
                events.push((EventType::Warning, "MissedTicks", missed(due)));
            }
            status.last_handled_time = Some(time(due.tick));
        }
        if let Decision::Start(due) = &plan.decision {
            let run_name = schedule::run_name(&name, due.tick);
            // A run of this very tick is one an earlier pass created before its status write
            // was lost: creating it again finds it.
            active.retain(|r| r.name_any() != run_name);
            match (drill_schedule.spec.concurrency_policy, active.is_empty()) {
                (_, true) => {}
                (ConcurrencyPolicy::Forbid, false) => {
                    let names: Vec<String> = active.iter().map(|r| r.name_any()).collect();
                    events.push((EventType::Normal, "Forbidden", format!("the tick of {} starts nothing: {} still active (concurrencyPolicy Forbid)", due.tick, names.join(", "))));
                }
                (ConcurrencyPolicy::Replace, false) => {
                    for old in &active {
                        if !still_leading(&context.leadership, token) {
                            return Ok(Action::await_change());
                        }
                        // Its finalizer rolls its fault back before it goes; the new run waits
                        // for the target meanwhile.
                        delete_run(&runs_api, old).await?;
                        events.push((
                            EventType::Normal,
                            "Replaced",
                            format!(
                                "run {} deleted for the tick of {} (concurrencyPolicy Replace)",
                                old.name_any(),
                                due.tick
                            ),
                        ));
                    }
                    active.clear();
                }
            }
            if active.is_empty() {
                if !still_leading(&context.leadership, token) {
                    return Ok(Action::await_change());
                }
                create_run(&runs_api, drill_schedule, &run_name).await?;
                events.push((
                    EventType::Normal,
                    "Started",
                    format!("run {run_name} for the tick of {}", due.tick),
                ));
                status.last_schedule_time = Some(time(due.tick));
                created = Some(run_name);
            }
        }
    }
    status.next_run_time = plan.next.filter(|_| !drill_schedule.spec.suspend).map(time);
    status.active = active.iter().map(|r| r.name_any()).chain(created).collect();
    status.active_count = status.active.len() as u32;
    if let Some(success) = runs
        .iter()
        .filter(|r| result(r) == Some(Outcome::Succeeded))
        .filter_map(|r| r.status.as_ref()?.completed_at.clone())
        .max_by_key(|t| t.0)
        && status
            .last_successful_time
            .as_ref()
            .is_none_or(|t| t.0 < success.0)
    {
        status.last_successful_time = Some(success);
    }
    prune_history(&runs_api, drill_schedule, &runs, context, token).await?;
    write(drill_schedule, context, token, status, events).await?;
    Ok(match plan.next {
        Some(next) if !drill_schedule.spec.suspend => {
            Action::requeue((next - Utc::now()).to_std().unwrap_or(Duration::ZERO))
        }
        _ => Action::await_change(),
    })
}

fn missed(due: &Due) -> String {
    let count = if due.missed_at_least {
        format!("at least {}", due.missed)
    } else {
        due.missed.to_string()
    };
    format!(
        "{count} earlier ticks were missed (the operator was down or the schedule suspended); only the latest, {}, is handled",
        due.tick
    )
}

async fn create_run(
    runs: &Api<DrillRun>,
    drill_schedule: &DrillSchedule,
    name: &str,
) -> Result<(), Error> {
    let mut run = DrillRun::new(name, drill_schedule.spec.run_template.clone());
    run.metadata.labels = Some([(SCHEDULE_LABEL.to_string(), drill_schedule.name_any())].into());
    run.metadata.owner_references = drill_schedule.controller_owner_ref(&()).map(|o| vec![o]);
    match runs.create(&PostParams::default(), &run).await {
        Ok(_) => Ok(()),
        // The tick's run exists: this tick was handled before its status write landed.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Deletes a run (its finalizer rolls its fault back first); one already gone is no error.
async fn delete_run(runs: &Api<DrillRun>, run: &DrillRun) -> Result<(), Error> {
    match runs.delete(&run.name_any(), &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(error) if is_not_found(&error) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

fn completed(run: &DrillRun) -> bool {
    run.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Completed")
}

fn result(run: &DrillRun) -> Option<Outcome> {
    Outcome::from_name(run.status.as_ref()?.result.as_deref()?)
}

/// Deletes completed runs beyond the history limits, oldest first: Succeeded ones against
/// `successfulRunsHistoryLimit`, every other result against `failedRunsHistoryLimit`.
async fn prune_history(
    runs_api: &Api<DrillRun>,
    drill_schedule: &DrillSchedule,
    runs: &[DrillRun],
    context: &Context,
    token: u64,
) -> Result<(), Error> {
    let spec = &drill_schedule.spec;
    for (succeeded, limit) in [
        (true, spec.successful_runs_history_limit),
        (false, spec.failed_runs_history_limit),
    ] {
        let mut kept: Vec<&DrillRun> = runs
            .iter()
            .filter(|r| completed(r) && (result(r) == Some(Outcome::Succeeded)) == succeeded)
            .collect();
        kept.sort_by_key(|r| {
            r.status
                .as_ref()
                .and_then(|s| s.completed_at.as_ref().map(|t| t.0))
        });
        let excess = kept.len().saturating_sub(limit as usize);
        for old in &kept[..excess] {
            if !still_leading(&context.leadership, token) {
                return Ok(());
            }
            info!(schedule = %object_key(drill_schedule), run = %old.name_any(), "history limit: deleting a completed run");
            delete_run(runs_api, old).await?;
        }
    }
    Ok(())
}

fn set_ready(
    status: &mut DrillScheduleStatus,
    drill_schedule: &DrillSchedule,
    ok: bool,
    reason: &str,
    message: String,
    events: &mut Vec<(EventType, &str, String)>,
) {
    let wanted = conditions::condition(
        &status.conditions,
        READY,
        ok,
        reason,
        message.clone(),
        drill_schedule.metadata.generation,
    );
    if !ok && conditions::differs(&status.conditions, &wanted) {
        events.push((EventType::Warning, "InvalidSchedule", message));
    }
    status.conditions.retain(|c| c.type_ != READY);
    status.conditions.push(wanted);
}

/// Publishes the Events first: they tell of what this pass already did (a run created, one
/// deleted), which stays done even if the status write below loses its race. Then writes status
/// with a compare-and-set on the schedule's resourceVersion, so a tick is handled once even if
/// two passes race.
async fn write(
    drill_schedule: &DrillSchedule,
    context: &Context,
    token: u64,
    status: DrillScheduleStatus,
    events: Vec<(EventType, &str, String)>,
) -> Result<(), Error> {
    for (kind, reason, note) in events {
        info!(schedule = %object_key(drill_schedule), reason, %note, "drill schedule");
        publish(&context.recorder, drill_schedule, kind, reason, note).await;
    }
    if still_leading(&context.leadership, token) && drill_schedule.status.as_ref() != Some(&status)
    {
        let value = serde_json::to_value(&status).expect("status serializes");
        apply_status(
            &context.client,
            drill_schedule,
            FIELD_MANAGER,
            value,
            drill_schedule.resource_version().as_deref(),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_lengths_take_seconds_minutes_and_hours() {
        assert_eq!(window_length("90s"), Some(chrono::Duration::seconds(90)));
        assert_eq!(window_length("30m"), Some(chrono::Duration::minutes(30)));
        assert_eq!(window_length("8h"), Some(chrono::Duration::hours(8)));
        assert_eq!(window_length("8d"), None);
        assert_eq!(window_length(""), None);
    }
}
