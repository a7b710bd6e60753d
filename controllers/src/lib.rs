//! Bulwark's controllers, one module per controller, and the runtime pieces they share.
//!
//! Decision logic lives in pure functions inside each module so unit tests and model checks
//! call exactly what production runs; Kubernetes and network I/O stays at the edges.

pub mod backlog;
pub mod conditions;
pub mod dns;
pub mod drills;
pub mod events;
pub mod index;
pub mod leadership;
pub mod metrics;
pub mod postgres;
pub mod readiness;
pub mod runtime;
pub mod scope;
pub mod slo;
pub mod tls;
