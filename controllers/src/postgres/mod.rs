//! Replicated PostgreSQL: the operator's failover decisions (`failover`, pure, model-checked);
//! the instance manager (`bulwark instance`, the main process of every instance pod): its pure
//! command decisions, self-fencing when isolated, the driver that runs PostgreSQL, and its
//! mutual-TLS command API; and the write probe that judges a database through a fault. The
//! operator's DatabaseCluster controller that drives `failover` is not written yet.

pub mod api;
pub mod failover;
pub mod instance;
pub mod isolation;
pub mod manager;
pub mod probe;
