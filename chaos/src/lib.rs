//! Fault injectors. Each one is small, explicit and off unless a test or a drill turns it on.

pub mod instance;
pub mod network_policy;
pub mod node_agent;
pub mod slow_enactor;
