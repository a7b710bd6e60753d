//! When a DrillSchedule starts a run, decided by a pure function of the schedule, the tick it
//! last handled and the time, with CronJob v2's rules: after downtime only the most recent
//! missed tick runs (the others are counted, however many, up to [`COUNT_LIMIT`]); a tick later
//! than `startingDeadlineSeconds` does not run; each tick is handled once, so a run's name can
//! carry its tick and creating it twice is harmless. Ticks are found in the schedule's IANA
//! time zone: a tick in a spring-forward gap runs once, at the first valid time after the gap,
//! and a fixed time in a repeated hour runs once, at its first occurrence (croner's rules).
//! A tick inside a blocked window does not run.

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// Missed ticks are counted one by one up to this many (a schedule every second that was down
/// for a day has 86,400); beyond it the count says "at least".
pub const COUNT_LIMIT: u64 = 100_000;

/// A parsed `schedule` in its time zone.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    zone: Tz,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "schedule {expression:?} has {count} fields; it takes 5 (minute hour day-of-month month day-of-week) or 6 (second first)"
    )]
    FieldCount { expression: String, count: usize },
    #[error("schedule {expression:?}: field {position} ({field}) {value:?}: {reason}")]
    /// `field`: its name and what it takes.
    Field {
        expression: String,
        position: usize,
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("schedule {expression:?}: {reason}")]
    Pattern { expression: String, reason: String },
    #[error("schedule {0:?} never fires (no such date, as February 30)")]
    Never(String),
    #[error("timeZone {0:?} is not an IANA time zone name (such as Europe/Berlin or UTC)")]
    TimeZone(String),
}

/// The fields of a six-field expression, with what each takes; a five-field one has no second.
const FIELDS: [&str; 6] = [
    "second, 0-59",
    "minute, 0-59",
    "hour, 0-23",
    "day-of-month, 1-31",
    "month, 1-12 or JAN-DEC",
    "day-of-week, 0-7 or SUN-SAT",
];

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

impl Schedule {
    /// Parses a cron expression (5 fields, or 6 with seconds first; `@daily` and the other
    /// nicknames) in `time_zone` (UTC when unset). An error names the field and its position.
    pub fn parse(expression: &str, time_zone: Option<&str>) -> Result<Self, ScheduleError> {
        let zone = match time_zone {
            None => Tz::UTC,
            Some(name) => name
                .parse::<Tz>()
                .map_err(|_| ScheduleError::TimeZone(name.to_string()))?,
        };
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let nickname = expression.trim_start().starts_with('@');
        if !nickname && !(5..=6).contains(&fields.len()) {
            return Err(ScheduleError::FieldCount {
                expression: expression.to_string(),
                count: fields.len(),
            });
        }
        match parser().parse(expression) {
            Ok(cron) => {
                let schedule = Schedule { cron, zone };
                // Refused here, so no later search for a tick runs to croner's year limit.
                let reference =
                    DateTime::<Utc>::from_timestamp(946_684_800, 0).expect("2000-01-01 is a time");
                match schedule.next_after(reference) {
                    Some(_) => Ok(schedule),
                    None => Err(ScheduleError::Never(expression.to_string())),
                }
            }
            Err(error) => Err(
                Self::locate(expression, &fields, nickname).unwrap_or_else(|| {
                    ScheduleError::Pattern {
                        expression: expression.to_string(),
                        reason: error.to_string(),
                    }
                }),
            ),
        }
    }

    /// The first field that is refused on its own (every other field `*`).
    fn locate(expression: &str, fields: &[&str], nickname: bool) -> Option<ScheduleError> {
        if nickname {
            return None;
        }
        let names = &FIELDS[6 - fields.len()..];
        fields.iter().enumerate().find_map(|(index, value)| {
            let alone: Vec<&str> = (0..fields.len())
                .map(|i| if i == index { *value } else { "*" })
                .collect();
            let error = parser().parse(&alone.join(" ")).err()?;
            Some(ScheduleError::Field {
                expression: expression.to_string(),
                position: index + 1,
                field: names[index],
                value: value.to_string(),
                reason: match error {
                    croner::errors::CronError::ComponentError(reason) => reason,
                    other => other.to_string(),
                },
            })
        })
    }

    /// The first tick strictly after `time`, if the schedule has one.
    pub fn next_after(&self, time: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&time.with_timezone(&self.zone), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The last tick at or before `time`. Found by searching forward from ever earlier
    /// starts (croner's backward search misplaces a tick in a spring-forward gap), so both
    /// directions follow one set of time-zone rules.
    fn last_at_or_before(&self, time: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut lookback = Duration::seconds(1);
        let first = loop {
            let tick = self.next_after(time - lookback);
            if tick.is_some_and(|t| t <= time) {
                break tick?;
            }
            // Ten years back without a tick: the schedule has none before `time` to speak of.
            if lookback > Duration::days(3660) {
                return None;
            }
            lookback = lookback * 2;
        };
        let mut last = first;
        while let Some(tick) = self.next_after(last).filter(|t| *t <= time) {
            last = tick;
        }
        Some(last)
    }
}

/// A span in which no drill starts: it opens at each tick of `opens` and lasts `length`.
#[derive(Clone, Debug)]
pub struct Window {
    pub name: String,
    pub opens: Schedule,
    pub length: Duration,
}

impl Window {
    pub fn contains(&self, time: DateTime<Utc>) -> bool {
        self.opens
            .last_at_or_before(time)
            .is_some_and(|opened| time < opened + self.length)
    }
}

/// The tick to act on, and how many earlier ones since the last handled tick were skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    pub tick: DateTime<Utc>,
    pub missed: u64,
    /// The count stopped at [`COUNT_LIMIT`]: at least that many were missed.
    pub missed_at_least: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No tick since the last one handled.
    Nothing,
    /// Start the run of this tick.
    Start(Due),
    /// The tick is older than the starting deadline: it does not run (it counts as handled).
    TooLate(Due),
    /// The tick falls in this blocked window: it does not run (it counts as handled).
    Blocked { due: Due, window: String },
}

/// What a schedule does now, and when to look again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub decision: Decision,
    /// The first tick after `now`, if any: when to look again.
    pub next: Option<DateTime<Utc>>,
}

/// Decides for a schedule whose last handled tick (or, before the first, its creation) is
/// `since`. A suspended schedule is the caller's to skip; when it resumes, this runs the latest
/// tick missed meanwhile if the deadline allows, as a CronJob does.
pub fn plan(
    schedule: &Schedule,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
    starting_deadline: Option<Duration>,
    blocked: &[Window],
) -> Plan {
    let next = schedule.next_after(now);
    let decision = match latest_due(schedule, since, now) {
        None => Decision::Nothing,
        Some(due) => {
            if starting_deadline.is_some_and(|deadline| now - due.tick > deadline) {
                Decision::TooLate(due)
            } else if let Some(window) = blocked.iter().find(|w| w.contains(due.tick)) {
                Decision::Blocked {
                    due,
                    window: window.name.clone(),
                }
            } else {
                Decision::Start(due)
            }
        }
    };
    Plan { decision, next }
}

/// The latest tick after `since` and at or before `now`, and how many before it were missed.
fn latest_due(schedule: &Schedule, since: DateTime<Utc>, now: DateTime<Utc>) -> Option<Due> {
    let mut latest = schedule.next_after(since).filter(|t| *t <= now)?;
    let mut missed = 0;
    while let Some(tick) = schedule.next_after(latest).filter(|t| *t <= now) {
        if missed == COUNT_LIMIT {
            return Some(Due {
                tick: schedule.last_at_or_before(now).unwrap_or(tick),
                missed,
                missed_at_least: true,
            });
        }
        missed += 1;
        latest = tick;
    }
    Some(Due {
        tick: latest,
        missed,
        missed_at_least: false,
    })
}

/// The name of the run of `tick`: the schedule's and the tick's Unix time in seconds, so a
/// second attempt to create it finds the first.
pub fn run_name(schedule: &str, tick: DateTime<Utc>) -> String {
    format!("{schedule}-{}", tick.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn start(tick: &str, missed: u64) -> Decision {
        Decision::Start(Due {
            tick: utc(tick),
            missed,
            missed_at_least: false,
        })
    }

    #[test]
    fn after_downtime_only_the_latest_tick_runs_and_the_rest_are_counted() {
        let every_minute = Schedule::parse("* * * * *", None).unwrap();
        let plan = plan_at(
            &every_minute,
            "2026-12-01T10:00:30Z",
            "2026-12-01T10:05:10Z",
        );
        assert_eq!(plan.decision, start("2026-12-01T10:05:00Z", 4));
        assert_eq!(plan.next, Some(utc("2026-12-01T10:06:00Z")));

        let hourly = Schedule::parse("0 * * * *", None).unwrap();
        let month = plan_at(&hourly, "2026-11-01T00:00:00Z", "2026-11-30T12:34:00Z").decision;
        // Ticks after Nov 1 00:00 up to Nov 30 12:00: 29 days and 12 hours of them, less the one
        // that runs.
        assert_eq!(month, start("2026-11-30T12:00:00Z", 29 * 24 + 12 - 1));
    }

    /// The plan with no deadline and no blocked window.
    fn plan_at(schedule: &Schedule, since: &str, now: &str) -> Plan {
        plan(schedule, utc(since), utc(now), None, &[])
    }

    #[test]
    fn a_handled_tick_is_not_run_again() {
        let every_minute = Schedule::parse("* * * * *", None).unwrap();
        let plan = plan_at(
            &every_minute,
            "2026-12-01T10:05:00Z",
            "2026-12-01T10:05:59Z",
        );
        assert_eq!(plan.decision, Decision::Nothing);
        assert_eq!(plan.next, Some(utc("2026-12-01T10:06:00Z")));
    }

    #[test]
    fn a_seconds_field_ticks_within_the_minute() {
        let every_ten = Schedule::parse("*/10 * * * * *", None).unwrap();
        assert_eq!(
            plan_at(&every_ten, "2026-12-01T10:00:00Z", "2026-12-01T10:00:25Z").decision,
            start("2026-12-01T10:00:20Z", 1)
        );
        assert_eq!(
            run_name("nightly", utc("2026-12-01T10:00:20Z")),
            "nightly-1796119220"
        );
    }

    #[test]
    fn a_tick_past_its_starting_deadline_does_not_run() {
        let every_minute = Schedule::parse("* * * * *", None).unwrap();
        let late = plan(
            &every_minute,
            utc("2026-12-01T10:00:00Z"),
            utc("2026-12-01T10:07:30Z"),
            Some(Duration::seconds(20)),
            &[],
        );
        assert_eq!(
            late.decision,
            Decision::TooLate(Due {
                tick: utc("2026-12-01T10:07:00Z"),
                missed: 6,
                missed_at_least: false,
            })
        );
        let in_time = plan(
            &every_minute,
            utc("2026-12-01T10:00:00Z"),
            utc("2026-12-01T10:07:15Z"),
            Some(Duration::seconds(20)),
            &[],
        );
        assert_eq!(in_time.decision, start("2026-12-01T10:07:00Z", 6));
    }

    #[test]
    fn missed_ticks_are_counted_up_to_the_limit() {
        let every_second = Schedule::parse("* * * * * *", None).unwrap();
        let since = utc("2026-12-01T00:00:00Z");
        let now = since + Duration::seconds(COUNT_LIMIT as i64 + 10);
        let Decision::Start(due) = plan(&every_second, since, now, None, &[]).decision else {
            panic!("the latest tick runs");
        };
        assert_eq!(due.tick, now);
        assert_eq!((due.missed, due.missed_at_least), (COUNT_LIMIT, true));
    }

    #[test]
    fn a_spring_forward_gap_tick_runs_once_at_the_first_valid_time() {
        // Berlin skips 02:00-03:00 local on 2026-03-29 (01:00 UTC).
        let half_past_two = Schedule::parse("30 2 * * *", Some("Europe/Berlin")).unwrap();
        let before = "2026-03-29T00:00:00Z";
        assert_eq!(
            plan_at(&half_past_two, before, "2026-03-29T01:30:00Z").decision,
            start("2026-03-29T01:00:00Z", 0),
            "03:00 CEST, the first valid time after the gap"
        );
        let after = plan_at(
            &half_past_two,
            "2026-03-29T01:00:00Z",
            "2026-03-29T20:00:00Z",
        );
        assert_eq!(after.decision, Decision::Nothing);
        assert_eq!(after.next, Some(utc("2026-03-30T00:30:00Z")), "02:30 CEST");
    }

    #[test]
    fn a_repeated_hour_fires_once() {
        // Berlin repeats 02:00-03:00 local on 2026-10-25: 02:30 is 00:30 UTC, then 01:30 UTC.
        let half_past_two = Schedule::parse("30 2 * * *", Some("Europe/Berlin")).unwrap();
        assert_eq!(
            plan_at(
                &half_past_two,
                "2026-10-24T23:00:00Z",
                "2026-10-25T00:45:00Z"
            )
            .decision,
            start("2026-10-25T00:30:00Z", 0)
        );
        let repeated = plan_at(
            &half_past_two,
            "2026-10-25T00:30:00Z",
            "2026-10-25T01:45:00Z",
        );
        assert_eq!(repeated.decision, Decision::Nothing);
        assert_eq!(
            repeated.next,
            Some(utc("2026-10-26T01:30:00Z")),
            "02:30 CET"
        );
    }

    #[test]
    fn ticks_in_a_blocked_window_do_not_run() {
        let hourly = Schedule::parse("0 * * * *", Some("America/New_York")).unwrap();
        let business_hours = Window {
            name: "business-hours".into(),
            opens: Schedule::parse("0 9 * * 1-5", Some("America/New_York")).unwrap(),
            length: Duration::hours(8),
        };
        // Tuesday 2026-12-01, New York is UTC-5: 10:00 local is 15:00 UTC.
        let in_window = plan(
            &hourly,
            utc("2026-12-01T14:30:00Z"),
            utc("2026-12-01T15:00:05Z"),
            None,
            std::slice::from_ref(&business_hours),
        );
        assert_eq!(
            in_window.decision,
            Decision::Blocked {
                due: Due {
                    tick: utc("2026-12-01T15:00:00Z"),
                    missed: 0,
                    missed_at_least: false,
                },
                window: "business-hours".into(),
            }
        );
        // 17:00 local, the window's end, is free again.
        let after = plan(
            &hourly,
            utc("2026-12-01T21:30:00Z"),
            utc("2026-12-01T22:00:05Z"),
            None,
            &[business_hours],
        );
        assert_eq!(after.decision, start("2026-12-01T22:00:00Z", 0));
    }

    #[test]
    fn errors_name_the_field_and_its_position() {
        let error = |expression: &str| Schedule::parse(expression, None).unwrap_err().to_string();
        let minute = error("61 * * * *");
        assert!(minute.contains("field 1 (minute, 0-59) \"61\""), "{minute}");
        let hour = error("0 0 25 * * *");
        assert!(hour.contains("field 3 (hour, 0-23) \"25\""), "{hour}");
        let weekday = error("0 9 * * MON-XYZ");
        assert!(
            weekday.contains("field 5 (day-of-week, 0-7 or SUN-SAT)"),
            "{weekday}"
        );
        let count = error("* * * *");
        assert!(count.contains("has 4 fields"), "{count}");
        assert_eq!(
            Schedule::parse("* * * * *", Some("Mars/Olympus_Mons"))
                .unwrap_err()
                .to_string(),
            "timeZone \"Mars/Olympus_Mons\" is not an IANA time zone name (such as Europe/Berlin or UTC)"
        );
        assert!(Schedule::parse("@daily", Some("Asia/Kolkata")).is_ok());
    }

    #[test]
    fn a_schedule_that_never_fires_is_refused() {
        assert_eq!(
            Schedule::parse("0 0 30 2 *", None).unwrap_err().to_string(),
            "schedule \"0 0 30 2 *\" never fires (no such date, as February 30)"
        );
        assert!(
            Schedule::parse("0 0 29 2 *", None).is_ok(),
            "leap days come"
        );
    }

    /// Schedules are typed by users: any text must parse or be refused, and whatever parses
    /// must plan without a panic.
    #[test]
    fn fuzz_schedules() {
        bolero::check!().for_each(|bytes: &[u8]| {
            let text = String::from_utf8_lossy(bytes);
            let (expression, zone) = text.split_once('|').unwrap_or((&text, "UTC"));
            if let Ok(schedule) = Schedule::parse(expression, Some(zone)) {
                let since = utc("2026-03-29T00:00:00Z");
                let _ = plan(&schedule, since, since + Duration::hours(3), None, &[]);
            }
        });
    }

    #[test]
    fn next_ticks_follow_the_time_zone() {
        let nine = Schedule::parse("0 9 * * *", Some("Asia/Kolkata")).unwrap();
        let from = Utc.with_ymd_and_hms(2026, 12, 1, 4, 0, 0).unwrap();
        assert_eq!(nine.next_after(from), Some(utc("2026-12-02T03:30:00Z")));
    }
}
