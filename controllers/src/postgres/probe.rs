//! The write probe: the instrument tests, benchmarks and DR drills share to judge a database
//! through a fault. It writes client-numbered rows one after another and classifies each write:
//! acknowledged (the commit returned), failed (never sent: no session), or indeterminate (sent,
//! but the session broke or timed out before an answer: it may or may not have committed).
//! Afterwards every acknowledged row must be found; the unavailability window (RTO as a client
//! sees it) is the longest stretch without an acknowledgement that contains failures.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::client::Endpoint;

/// The table the probe writes to (created if missing).
pub const TABLE: &str = "bulwark_write_probe";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Acknowledged,
    Failed,
    Indeterminate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Write {
    pub sequence: i64,
    /// When the outcome was known.
    pub at: Instant,
    pub outcome: Outcome,
}

/// Everything the probe saw, in order.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub writes: Vec<Write>,
}

/// What reading the rows back found.
#[derive(Debug, PartialEq, Eq)]
pub struct Verification {
    /// Acknowledged writes that are missing: the RPO, in writes.
    pub lost: Vec<i64>,
    /// Indeterminate writes that did commit, and those that did not.
    pub indeterminate_committed: usize,
    pub indeterminate_absent: usize,
}

impl Report {
    pub fn count(&self, outcome: Outcome) -> usize {
        self.writes.iter().filter(|w| w.outcome == outcome).count()
    }

    /// The outage a fault at `moment` caused: from the last acknowledgement before the first
    /// write after `moment` that was not acknowledged, to the next acknowledgement. None when
    /// every write after `moment` was acknowledged, or none was again.
    pub fn outage_after(&self, moment: Instant) -> Option<Duration> {
        let first_miss = self
            .writes
            .iter()
            .position(|w| w.at >= moment && w.outcome != Outcome::Acknowledged)?;
        let acknowledged = |w: &&Write| w.outcome == Outcome::Acknowledged;
        let before = self.writes[..first_miss].iter().rev().find(acknowledged)?;
        let after = self.writes[first_miss..].iter().find(acknowledged)?;
        Some(after.at.duration_since(before.at))
    }

    /// Acknowledged writes whose acknowledgement came after `moment`.
    pub fn acknowledged_after(&self, moment: Instant) -> Vec<Write> {
        self.writes
            .iter()
            .filter(|w| w.outcome == Outcome::Acknowledged && w.at > moment)
            .copied()
            .collect()
    }

    /// From `moment` to the first write after it that was not acknowledged.
    pub fn first_miss_after(&self, moment: Instant) -> Option<Duration> {
        self.writes
            .iter()
            .find(|w| w.at >= moment && w.outcome != Outcome::Acknowledged)
            .map(|w| w.at.duration_since(moment))
    }

    /// The longest time between two acknowledgements (or from the last one to the end of the
    /// report) that holds at least one write that was not acknowledged.
    pub fn unavailability(&self) -> Option<Duration> {
        let mut longest = None;
        let mut last_ack: Option<Instant> = None;
        let mut failed_since = false;
        for write in &self.writes {
            match write.outcome {
                Outcome::Acknowledged => {
                    if failed_since && let Some(start) = last_ack {
                        let gap = write.at.duration_since(start);
                        longest = Some(longest.map_or(gap, |l: Duration| l.max(gap)));
                    }
                    last_ack = Some(write.at);
                    failed_since = false;
                }
                Outcome::Failed | Outcome::Indeterminate => failed_since = true,
            }
        }
        if failed_since && let (Some(start), Some(end)) = (last_ack, self.writes.last()) {
            let gap = end.at.duration_since(start);
            longest = Some(longest.map_or(gap, |l: Duration| l.max(gap)));
        }
        longest
    }

    /// Compares the report with the sequences found in the table.
    pub fn verify(&self, found: &std::collections::BTreeSet<i64>) -> Verification {
        let mut verification = Verification {
            lost: Vec::new(),
            indeterminate_committed: 0,
            indeterminate_absent: 0,
        };
        for write in &self.writes {
            let present = found.contains(&write.sequence);
            match (write.outcome, present) {
                (Outcome::Acknowledged, false) => verification.lost.push(write.sequence),
                (Outcome::Indeterminate, true) => verification.indeterminate_committed += 1,
                (Outcome::Indeterminate, false) => verification.indeterminate_absent += 1,
                _ => {}
            }
        }
        verification
    }
}

/// A running probe: a task making one attempt every interval and recording its outcome, until
/// [`Probe::stop`] ends it and returns the report. The write probe is one; the DNS answer probe
/// (`dns::answer_probe`) another, so drills measure both on one timeline.
pub struct Probe {
    report: Arc<Mutex<Report>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub type WriteProbe = Probe;

impl Probe {
    /// Writes every `interval` through sessions opened to `endpoint`, each write bounded by
    /// `timeout`, numbering them from 0.
    pub fn start(endpoint: Endpoint, interval: Duration, timeout: Duration) -> Self {
        Self::start_at(endpoint, 0, interval, timeout)
    }

    /// As [`Probe::start`], numbering from `first`: probes sharing a table each take their own
    /// range.
    pub fn start_at(endpoint: Endpoint, first: i64, interval: Duration, timeout: Duration) -> Self {
        Self::writes(endpoint, None, first, interval, timeout)
    }

    /// As [`Probe::start_at`], but each new session goes to the address `resolve` gives at that
    /// moment (the endpoint's certificate name is kept): a client that follows a DNS name.
    pub fn start_resolving(
        endpoint: Endpoint,
        resolve: Resolve,
        first: i64,
        interval: Duration,
        timeout: Duration,
    ) -> Self {
        Self::writes(endpoint, Some(resolve), first, interval, timeout)
    }

    fn writes(
        endpoint: Endpoint,
        resolve: Option<Resolve>,
        first: i64,
        interval: Duration,
        timeout: Duration,
    ) -> Self {
        // The session outlives one attempt; a failed or broken one is dropped and reopened.
        let session: Arc<Mutex<Option<tokio_postgres::Client>>> = Arc::default();
        Self::spawn(first, interval, move |sequence| {
            let (session, endpoint, resolve) = (session.clone(), endpoint.clone(), resolve.clone());
            async move {
                let mut current = session.lock().unwrap().take();
                if current.is_none() {
                    current = tokio::time::timeout(timeout, open(&endpoint, resolve.as_ref()))
                        .await
                        .ok()
                        .flatten();
                }
                let Some(client) = current else {
                    return Outcome::Failed;
                };
                let insert = format!("INSERT INTO {TABLE} (sequence) VALUES ($1)");
                match tokio::time::timeout(timeout, client.execute(&insert, &[&sequence])).await {
                    Ok(Ok(_)) => {
                        *session.lock().unwrap() = Some(client);
                        Outcome::Acknowledged
                    }
                    _ => Outcome::Indeterminate,
                }
            }
        })
    }

    /// Runs `attempt` for sequences `first`, `first + 1`, ... every `interval` until stopped.
    pub fn spawn<F, A>(first: i64, interval: Duration, mut attempt: F) -> Self
    where
        F: FnMut(i64) -> A + Send + 'static,
        A: std::future::Future<Output = Outcome> + Send,
    {
        let report = Arc::new(Mutex::new(Report::default()));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let report = report.clone();
            let stop = stop.clone();
            async move {
                for sequence in first.. {
                    if stop.is_cancelled() {
                        break;
                    }
                    let outcome = attempt(sequence).await;
                    report.lock().unwrap().writes.push(Write {
                        sequence,
                        at: Instant::now(),
                        outcome,
                    });
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(interval) => {}
                    }
                }
            }
        });
        Probe { report, stop, task }
    }

    /// What the probe has seen so far.
    pub fn report(&self) -> Report {
        self.report.lock().unwrap().clone()
    }

    pub async fn stop(self) -> Report {
        self.stop.cancel();
        let _ = self.task.await;
        self.report.lock().unwrap().clone()
    }
}

/// The address for a probe's next session; `None` when there is none to try.
pub type Resolve = Arc<dyn Fn() -> BoxFuture<'static, Option<IpAddr>> + Send + Sync>;

/// A session with the probe's table in place.
async fn open(endpoint: &Endpoint, resolve: Option<&Resolve>) -> Option<tokio_postgres::Client> {
    let client = match resolve {
        None => endpoint.connect().await.ok()?,
        Some(resolve) => endpoint.at(resolve().await?).connect().await.ok()?,
    };
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (sequence bigint PRIMARY KEY, written_at timestamptz NOT NULL DEFAULT now())"
        ))
        .await
        .ok()?;
    Some(client)
}

/// The sequences a probe's table holds, read through `client`.
pub async fn sequences_found(
    client: &tokio_postgres::Client,
) -> Result<std::collections::BTreeSet<i64>, tokio_postgres::Error> {
    Ok(client
        .query(&format!("SELECT sequence FROM {TABLE}"), &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outage_after_a_fault_runs_from_the_last_acknowledgement_to_the_next() {
        use Outcome::*;
        let (start, report) = report(&[
            (0, Acknowledged),
            (100, Acknowledged),
            (200, Failed),
            (300, Indeterminate),
            (900, Acknowledged),
            (1000, Failed),
            (1400, Acknowledged),
        ]);
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(
            report.outage_after(at(150)),
            Some(Duration::from_millis(800))
        );
        // A later fault: the outage that follows it, not the first one.
        assert_eq!(
            report.outage_after(at(950)),
            Some(Duration::from_millis(500))
        );
        assert_eq!(report.outage_after(at(1200)), None);
        // How soon a client felt each fault: the first write after it that was not acknowledged.
        assert_eq!(
            report.first_miss_after(at(150)),
            Some(Duration::from_millis(50))
        );
        assert_eq!(
            report.first_miss_after(at(950)),
            Some(Duration::from_millis(50))
        );
        assert_eq!(report.first_miss_after(at(1100)), None);
    }

    fn report(outcomes: &[(u64, Outcome)]) -> (Instant, Report) {
        let start = Instant::now();
        let writes = outcomes
            .iter()
            .enumerate()
            .map(|(i, (ms, outcome))| Write {
                sequence: i as i64,
                at: start + Duration::from_millis(*ms),
                outcome: *outcome,
            })
            .collect();
        (start, Report { writes })
    }

    #[test]
    fn unavailability_is_the_longest_gap_between_acknowledgements_that_holds_failures() {
        use Outcome::*;
        let (_, steady) = report(&[(0, Acknowledged), (100, Acknowledged), (200, Acknowledged)]);
        assert_eq!(steady.unavailability(), None);
        let (_, outage) = report(&[
            (0, Acknowledged),
            (100, Indeterminate),
            (1100, Failed),
            (2100, Failed),
            (2600, Acknowledged),
            (2700, Failed),
            (3000, Acknowledged),
        ]);
        assert_eq!(outage.unavailability(), Some(Duration::from_millis(2600)));
        // Still down when the probe stopped: measured to its last write.
        let (_, unresolved) = report(&[(0, Acknowledged), (500, Failed), (1500, Failed)]);
        assert_eq!(
            unresolved.unavailability(),
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn verification_counts_lost_acknowledged_writes_and_settles_indeterminate_ones() {
        use Outcome::*;
        let (start, writes) = report(&[
            (0, Acknowledged),
            (10, Acknowledged),
            (20, Indeterminate),
            (30, Indeterminate),
            (40, Failed),
            (50, Acknowledged),
        ]);
        let found = [0, 2, 5].into_iter().collect();
        assert_eq!(
            writes.verify(&found),
            Verification {
                lost: vec![1],
                indeterminate_committed: 1,
                indeterminate_absent: 1
            }
        );
        assert_eq!(writes.count(Acknowledged), 3);
        assert_eq!(
            writes
                .acknowledged_after(start + Duration::from_millis(5))
                .iter()
                .map(|w| w.sequence)
                .collect::<Vec<_>>(),
            vec![1, 5]
        );
    }
}
