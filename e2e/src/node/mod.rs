//! Node agents: the kubelet's job for pods whose images map to programs on this machine (see
//! "Test bed" in DESIGN.md). One `bulwark-node agent` process per node; each pod is a sandbox
//! process holding its network namespace, and each container a process in its own mount
//! namespace over an overlay of the host's root filesystem.

pub mod agent;
pub mod host;
pub mod images;
pub mod launch;
pub mod logs;
pub mod netpol;
pub mod network;
pub mod pod;
pub mod probe;
pub mod services;
pub mod status;
pub mod volumes;
