//! Replicated PostgreSQL: the operator's failover decisions (`failover`, pure, model-checked);
//! the instance manager (`bulwark instance`, the main process of every instance pod): its pure
//! command decisions, self-fencing when isolated, the driver that runs PostgreSQL, and its
//! mutual-TLS command API; the operator's DatabaseCluster controller (`cluster`) that drives
//! `failover`; the write probe that judges a database through a fault, and the TLS every client of
//! Bulwark's uses (`client`).

pub mod api;
pub mod client;
pub mod cluster;
pub mod failover;
pub mod instance;
pub mod isolation;
pub mod manager;
pub mod pki;
pub mod probe;
pub mod rollout;
