//! Faults an instance manager carries out on its own PostgreSQL when a DR drill asks: they act
//! from inside the pod, so they work the same wherever the instance runs (kind or the local
//! node agents). A freeze thaws itself at its deadline, so a drill whose operator died still
//! leaves nothing frozen for longer than it asked; a partition heals itself the same way.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::node_agent::process_group_tree;

/// `POST /faults` on the instance manager's API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "camelCase")]
pub enum InstanceFault {
    /// SIGKILL PostgreSQL and every process under it, then the manager exits at once: the
    /// container dies as a crashed machine's would, and its restart policy brings it back.
    Crash,
    /// SIGSTOP PostgreSQL and every process under it, and stop answering status and commands,
    /// until `thaw` or `seconds` pass.
    Freeze { seconds: u64 },
    /// Undo a freeze; harmless when nothing is frozen.
    Thaw,
    /// The manager's half of a partition, for `seconds` or until `heal`: a NetworkPolicy
    /// isolating the pod stops new connections, but network plugins let established ones
    /// through, so the manager cuts those itself once the policy holds (PostgreSQL's client and
    /// replication sessions terminated, status and commands unanswered as across a cut link),
    /// and reaches the API server only over new connections, which the policy drops.
    Partition { seconds: u64 },
    /// Undo a partition's manager half; harmless when none is in place.
    Heal,
}

/// `GET /faults`: what is in place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultsInPlace {
    pub frozen: bool,
    #[serde(default)]
    pub partitioned: bool,
}

impl FaultsInPlace {
    pub fn any(&self) -> bool {
        self.frozen || self.partitioned
    }
}

/// SIGKILL to `root` and every process under it.
pub fn kill_tree(root: i32) -> Result<()> {
    signal(&process_group_tree(root)?, libc::SIGKILL);
    Ok(())
}

/// SIGSTOP to `root` and every process under it; the processes stopped, for [`resume`].
pub fn stop_tree(root: i32) -> Result<Vec<i32>> {
    let pids = process_group_tree(root)?;
    signal(&pids, libc::SIGSTOP);
    Ok(pids)
}

/// SIGCONT to what [`stop_tree`] stopped (processes gone since are skipped).
pub fn resume(pids: &[i32]) {
    signal(pids, libc::SIGCONT);
}

fn signal(pids: &[i32], signal: i32) {
    for &pid in pids {
        // SAFETY: kill(2) of the manager's own PostgreSQL processes.
        unsafe { libc::kill(pid, signal) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_read_as_the_api_documents_them() {
        let freeze: InstanceFault =
            serde_json::from_str(r#"{"fault": "freeze", "seconds": 30}"#).unwrap();
        assert_eq!(freeze, InstanceFault::Freeze { seconds: 30 });
        let partition: InstanceFault =
            serde_json::from_str(r#"{"fault": "partition", "seconds": 30}"#).unwrap();
        assert_eq!(partition, InstanceFault::Partition { seconds: 30 });
        assert_eq!(
            serde_json::to_string(&InstanceFault::Crash).unwrap(),
            r#"{"fault":"crash"}"#
        );
    }

    #[test]
    fn a_stopped_child_is_stopped_and_continued() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let state = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap()
                .rsplit(") ")
                .next()
                .unwrap()
                .chars()
                .next()
                .unwrap()
        };
        let stopped = stop_tree(pid).unwrap();
        assert_eq!(stopped, vec![pid]);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(state(), 'T');
        resume(&stopped);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(state(), 'S');
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
