//! Scheduled DR drills: the scheduling decision ([`schedule`]), the run's state machine
//! ([`run`]), the SLO guards ([`guards`]), and the controllers that carry them out
//! ([`schedule_controller`], [`run_controller`]).

pub mod guards;
pub mod metrics;
pub mod run;
pub mod run_controller;
pub mod schedule;
pub mod schedule_controller;

/// A Kubernetes timestamp as the scheduling and guard code's time.
pub fn utc(timestamp: k8s_openapi::jiff::Timestamp) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(timestamp.as_microsecond()).unwrap_or_default()
}
