//! DNS plan enactment with generation fencing (see "DNS plan enactment" in DESIGN.md).
//!
//! `desired` and `fencing` are pure decisions; `rfc2136` talks to the DNS server; the
//! controllers (planner, enactor, cleanup) connect them to the Kubernetes API.

pub mod desired;
pub mod fencing;
pub mod provider;
pub mod rfc2136;
