//! Scheduled DR drills. So far the scheduling decision alone ([`schedule`]); the DrillSchedule
//! and DrillRun controllers that act on it are not built yet.

pub mod schedule;
