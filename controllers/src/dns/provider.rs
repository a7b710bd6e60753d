//! The provider interface: the operations the enactor and cleanup need from a DNS server.
//! Any provider must make `write_plan` atomic and honour the fence guard at the server (Route 53
//! change batches could: a DELETE of the old fence value must match, or the batch fails).

use std::future::Future;

use bulwark_crds::dns::RRSet;

use super::fencing::{Fence, FenceGuard};

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Bad settings or input that retrying cannot fix (bad secret, name outside the zone).
    #[error("{0}")]
    Config(String),
    #[error("cannot reach {server}: {reason}")]
    Unreachable { server: String, reason: String },
    /// The server answered with an error code.
    #[error("server answered {rcode}: {detail}")]
    Rejected { rcode: String, detail: String },
    #[error("unusable answer: {0}")]
    BadResponse(String),
}

impl ProviderError {
    /// A short stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::Config(_) => "config",
            ProviderError::Unreachable { .. } => "unreachable",
            ProviderError::Rejected { .. } => "rejected",
            ProviderError::BadResponse(_) => "bad_response",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WriteOutcome {
    Applied,
    /// The guard did not hold: the fence changed since it was read. Nothing was written.
    FenceMismatch,
}

pub trait DnsProvider: Send + Sync {
    /// The name's fence record, `None` when there is none.
    fn read_fence(
        &self,
        fqdn: &str,
    ) -> impl Future<Output = Result<Option<Fence>, ProviderError>> + Send;

    /// Replace the name's records with `rrsets` and its fence with `fence`, all or nothing, and
    /// only if `guard` holds at the server (no guard: unconditionally).
    fn write_plan(
        &self,
        fqdn: &str,
        fence: &Fence,
        rrsets: &[RRSet],
        guard: Option<&FenceGuard>,
    ) -> impl Future<Output = Result<WriteOutcome, ProviderError>> + Send;

    /// Remove the name's managed records and leave `tombstone` as its fence, all or nothing,
    /// only if `guard` holds.
    fn remove_name(
        &self,
        fqdn: &str,
        tombstone: &Fence,
        guard: &FenceGuard,
    ) -> impl Future<Output = Result<WriteOutcome, ProviderError>> + Send;

    /// What the authoritative server answers for the name, canonicalised like a plan's RRsets.
    fn served_records(
        &self,
        fqdn: &str,
    ) -> impl Future<Output = Result<Vec<RRSet>, ProviderError>> + Send;

    /// Remove exactly these records. Only the unfenced test strategy's cleanup uses it.
    fn delete_records(
        &self,
        fqdn: &str,
        rrsets: &[RRSet],
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;
}
