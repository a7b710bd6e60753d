//! The DNS answer probe: asks a name's authoritative server for its addresses every interval, as
//! a client resolving it would. Its report is on the write probe's timeline, so a drill measures
//! a name's outage the way it measures a database's: an answer with addresses counts as
//! acknowledged, an empty one (the name gone) as failed, no answer (server unreachable, timed
//! out) as indeterminate.

use std::time::Duration;

use crate::postgres::probe::{Outcome, Probe};

use super::provider::DnsProvider;

/// Starts asking `provider`'s server for `fqdn` every `interval`, each question bounded by
/// `timeout`.
pub fn start<P>(provider: P, fqdn: String, interval: Duration, timeout: Duration) -> Probe
where
    P: DnsProvider + Clone + 'static,
{
    Probe::spawn(0, interval, move |_| {
        let (provider, fqdn) = (provider.clone(), fqdn.clone());
        async move {
            match tokio::time::timeout(timeout, provider.served_records(&fqdn)).await {
                Ok(Ok(rrsets)) if rrsets.iter().any(|r| !r.values.is_empty()) => {
                    Outcome::Acknowledged
                }
                Ok(Ok(_)) => Outcome::Failed,
                _ => Outcome::Indeterminate,
            }
        }
    })
}
