//! DNS enactment metrics.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct DnsMetrics {
    /// Endpoints whose live plan this replica has read back from the server.
    pub endpoints_verified: IntGauge,
    /// From the planner minting a plan to the authoritative server answering with it.
    pub enactment_latency: Histogram,
    pub plans_minted: IntCounter,
    /// Writes the server refused because the fence had moved on: stale enactors stopped.
    pub stale_writes_refused: IntCounter,
    pub plans_superseded: IntCounter,
    pub plans_collected: IntCounter,
    /// Endpoints whose newest reserved plan is not live yet, as this replica's cache shows.
    pub pending_endpoints: IntGauge,
    /// Compare-and-set writes of a DnsEndpoint the API server answered 409, by writer: each
    /// is a wasted request and a later retry, so a rise shows replicas racing each other.
    pub endpoint_write_conflicts: IntCounterVec,
}

impl DnsMetrics {
    pub fn register(registry: &Registry) -> Self {
        let metrics = DnsMetrics {
            endpoints_verified: IntGauge::new(
                "dns_endpoints_verified",
                "DnsEndpoints whose live plan this replica has read back from the authoritative server",
            )
            .unwrap(),
            enactment_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "dns_enactment_latency_seconds",
                    "Time from a plan being minted to the authoritative server answering with it",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
            )
            .unwrap(),
            plans_minted: IntCounter::new("dns_plans_minted_total", "DnsPlans created").unwrap(),
            stale_writes_refused: IntCounter::new(
                "dns_stale_writes_refused_total",
                "Enactor writes the DNS server refused because its fence had moved on",
            )
            .unwrap(),
            plans_superseded: IntCounter::new(
                "dns_plans_superseded_total",
                "Plans an enactor marked Superseded because the DNS server held a newer generation",
            )
            .unwrap(),
            plans_collected: IntCounter::new(
                "dns_plans_collected_total",
                "Old DnsPlans deleted by cleanup",
            )
            .unwrap(),
            pending_endpoints: IntGauge::new(
                "dns_pending_endpoints",
                "DnsEndpoints whose newest plan is not live yet (the enactment backlog)",
            )
            .unwrap(),
            endpoint_write_conflicts: IntCounterVec::new(
                Opts::new(
                    "dns_endpoint_write_conflicts_total",
                    "DnsEndpoint compare-and-set writes answered 409 Conflict, by writer",
                ),
                &["writer"],
            )
            .unwrap(),
        };
        for collector in [
            Box::new(metrics.endpoints_verified.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.enactment_latency.clone()),
            Box::new(metrics.plans_minted.clone()),
            Box::new(metrics.stale_writes_refused.clone()),
            Box::new(metrics.plans_superseded.clone()),
            Box::new(metrics.plans_collected.clone()),
            Box::new(metrics.pending_endpoints.clone()),
            Box::new(metrics.endpoint_write_conflicts.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        metrics
    }

    /// Counts a DnsEndpoint write lost to a newer version.
    pub fn conflict(&self, writer: &str) {
        self.endpoint_write_conflicts
            .with_label_values(&[writer])
            .inc();
    }
}
