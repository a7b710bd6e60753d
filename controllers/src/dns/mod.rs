//! DNS plan enactment with generation fencing (see "DNS plan enactment" in DESIGN.md).
//!
//! `desired` and `fencing` are pure decisions; `rfc2136` talks to the DNS server; the
//! controllers (planner, enactor, cleanup) connect them to the Kubernetes API.

pub mod answer_probe;
pub mod desired;
pub mod enactor;
pub mod fencing;
pub mod metrics;
pub mod planner;
pub mod provider;
pub mod rfc2136;
pub mod runtime;
pub mod zones;
