//! Prometheus metrics shared by every controller, labelled by controller name.

use crate::dns::metrics::DnsMetrics;
use crate::drills::metrics::DrillMetrics;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use std::time::Instant;

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    reconciles: IntCounterVec,
    reconcile_errors: IntCounterVec,
    reconcile_duration: HistogramVec,
    pub is_leader: IntGauge,
    pub leader_token: IntGauge,
    pub dns: DnsMetrics,
    pub drills: DrillMetrics,
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("bulwark".into()), None).expect("static prefix is valid");
        let reconciles = IntCounterVec::new(
            Opts::new(
                "reconciles_total",
                "Reconciliations run, by controller and outcome",
            ),
            &["controller", "result"],
        )
        .unwrap();
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "reconcile_errors_total",
                "Reconciliations that failed, by controller and error kind",
            ),
            &["controller", "error"],
        )
        .unwrap();
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "reconcile_duration_seconds",
                "Time spent in one reconciliation",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["controller"],
        )
        .unwrap();
        let is_leader =
            IntGauge::new("leader", "1 while this replica holds the leader Lease").unwrap();
        let leader_token = IntGauge::new(
            "leader_fencing_token",
            "Lease transitions at this replica's acquisition (0 if never led)",
        )
        .unwrap();
        for collector in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_errors.clone()),
            Box::new(reconcile_duration.clone()),
            Box::new(is_leader.clone()),
            Box::new(leader_token.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        let dns = DnsMetrics::register(&registry);
        let drills = DrillMetrics::register(&registry);
        Self {
            dns,
            drills,
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            is_leader,
            leader_token,
        }
    }

    /// Starts timing one reconciliation of `controller`; finish it with [`ReconcileTimer::done`].
    pub fn reconcile(&self, controller: &'static str) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            controller,
            started: Instant::now(),
        }
    }

    /// Text exposition format for `/metrics`.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .expect("text encoding of gathered metrics cannot fail")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    controller: &'static str,
    started: Instant,
}

impl ReconcileTimer<'_> {
    /// Records the outcome; `error_kind` is a short stable label such as `"api"` or `"dns"`.
    pub fn done(self, error_kind: Option<&str>) {
        let m = self.metrics;
        m.reconcile_duration
            .with_label_values(&[self.controller])
            .observe(self.started.elapsed().as_secs_f64());
        let result = if error_kind.is_some() { "error" } else { "ok" };
        m.reconciles
            .with_label_values(&[self.controller, result])
            .inc();
        if let Some(kind) = error_kind {
            m.reconcile_errors
                .with_label_values(&[self.controller, kind])
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_outcomes_are_counted_per_controller() {
        let metrics = Metrics::new();
        metrics.reconcile("dns-zone").done(None);
        metrics.reconcile("dns-zone").done(Some("api"));
        let text = metrics.render();
        assert!(
            text.contains(r#"bulwark_reconciles_total{controller="dns-zone",result="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"bulwark_reconciles_total{controller="dns-zone",result="error"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"bulwark_reconcile_errors_total{controller="dns-zone",error="api"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"bulwark_reconcile_duration_seconds_count{controller="dns-zone"} 2"#),
            "{text}"
        );
    }
}
