//! DR drill report metrics: what a readiness dashboard and the chart's drill alerts (a failed
//! drill, no successful drill lately) read. The per-target gauges are the leader's alone.

use prometheus::{GaugeVec, IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct DrillMetrics {
    pub runs: IntCounterVec,
    /// Per target (`namespace`, `kind`, `target`), from its most recently completed run.
    pub last_rto_seconds: GaugeVec,
    /// That run's `success.maxRto`, to draw the RTO against.
    pub last_max_rto_seconds: GaugeVec,
    pub last_lost_writes: GaugeVec,
    /// 1 when the target's last judged drill (Succeeded or Failed) failed its criteria.
    pub last_failed: GaugeVec,
    /// When the target's last Succeeded run completed (seconds since the epoch).
    pub last_success_timestamp: GaugeVec,
}

pub const TARGET_LABELS: [&str; 3] = ["namespace", "kind", "target"];

impl DrillMetrics {
    pub fn register(registry: &Registry) -> Self {
        let gauge =
            |name: &str, help: &str| GaugeVec::new(Opts::new(name, help), &TARGET_LABELS).unwrap();
        let metrics = DrillMetrics {
            runs: IntCounterVec::new(
                Opts::new(
                    "drill_runs_total",
                    "DrillRuns completed by this replica, by result, scenario, why a run stopped \
                     unjudged (reason), and the SLO whose guard stopped it (guard)",
                ),
                &["result", "scenario", "reason", "guard"],
            )
            .unwrap(),
            last_rto_seconds: gauge(
                "drill_last_rto_seconds",
                "Longest outage the write probe saw in the target's last completed drill",
            ),
            last_max_rto_seconds: gauge(
                "drill_last_max_rto_seconds",
                "The success.maxRto of the target's last completed drill",
            ),
            last_lost_writes: gauge(
                "drill_last_lost_writes",
                "Acknowledged writes missing after the target's last completed drill (RPO)",
            ),
            last_failed: gauge(
                "drill_last_failed",
                "1 when the target's last judged drill failed its success criteria, else 0",
            ),
            last_success_timestamp: gauge(
                "drill_last_success_timestamp_seconds",
                "When the target's last Succeeded drill completed",
            ),
        };
        for collector in [
            Box::new(metrics.runs.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.last_rto_seconds.clone()),
            Box::new(metrics.last_max_rto_seconds.clone()),
            Box::new(metrics.last_lost_writes.clone()),
            Box::new(metrics.last_failed.clone()),
            Box::new(metrics.last_success_timestamp.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        metrics
    }

    /// Drops the per-target report: only the leader speaks for targets, so alerts taking the
    /// max over replicas never read a former leader's stale word.
    pub fn forget_targets(&self) {
        self.last_rto_seconds.reset();
        self.last_max_rto_seconds.reset();
        self.last_lost_writes.reset();
        self.last_failed.reset();
        self.last_success_timestamp.reset();
    }
}
