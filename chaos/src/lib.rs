//! Fault injectors. Each one is small, explicit and off unless a test or a drill turns it on.

pub mod slow_enactor;
