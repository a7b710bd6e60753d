//! Scheduled DR drills: the scheduling decision ([`schedule`]), the run's state machine
//! ([`run`]), and the controllers that carry them out.

pub mod run;
pub mod schedule;
