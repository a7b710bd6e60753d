//! jemalloc's own account of the heap on `/metrics`: the bytes live allocations hold beside the
//! bytes of resident pages it holds for them. RSS alone cannot tell a replica that holds more
//! from one whose allocator keeps partly used pages (at 10,000 endpoints, trimming 7 MB from the
//! caches did not move RSS).

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGauge, Opts};

pub struct HeapCollector {
    allocated: IntGauge,
    resident: IntGauge,
}

impl HeapCollector {
    pub fn new() -> Self {
        let gauge = |name: &str, help: &str| {
            IntGauge::with_opts(Opts::new(name, help)).expect("valid name")
        };
        HeapCollector {
            allocated: gauge(
                "heap_allocated_bytes",
                "Bytes the operator's live allocations hold (jemalloc stats.allocated)",
            ),
            resident: gauge(
                "heap_resident_bytes",
                "Bytes of resident pages jemalloc holds, its own metadata included (stats.resident)",
            ),
        }
    }
}

impl Collector for HeapCollector {
    fn desc(&self) -> Vec<&Desc> {
        [&self.allocated, &self.resident]
            .into_iter()
            .flat_map(|gauge| gauge.desc())
            .collect()
    }

    /// Read at each scrape: jemalloc refreshes its statistics when the epoch advances.
    fn collect(&self) -> Vec<MetricFamily> {
        if tikv_jemalloc_ctl::epoch::advance().is_ok() {
            if let Ok(bytes) = tikv_jemalloc_ctl::stats::allocated::read() {
                self.allocated.set(bytes as i64);
            }
            if let Ok(bytes) = tikv_jemalloc_ctl::stats::resident::read() {
                self.resident.set(bytes as i64);
            }
        }
        [&self.allocated, &self.resident]
            .into_iter()
            .flat_map(|gauge| gauge.collect())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heap_figures_are_read_from_jemalloc() {
        let metrics = bulwark_controllers::metrics::Metrics::new();
        metrics
            .registry
            .register(Box::new(HeapCollector::new()))
            .unwrap();
        let held: Vec<u8> = vec![1; 8 << 20];
        let families = metrics.registry.gather();
        let value = |name: &str| {
            families
                .iter()
                .find(|f| f.name() == name)
                .map(|f| f.get_metric()[0].get_gauge().get_value())
                .unwrap_or_else(|| panic!("{name} collected"))
        };
        let (allocated, resident) = (
            value("bulwark_heap_allocated_bytes"),
            value("bulwark_heap_resident_bytes"),
        );
        assert!(allocated >= held.len() as f64, "allocated {allocated}");
        assert!(
            resident >= allocated,
            "resident {resident} < allocated {allocated}"
        );
        drop(held);
    }
}
