//! Faults for pods on the local control plane's node agents, where every pod is processes and a
//! network namespace on this machine: crash (SIGKILL every container process), freeze and thaw
//! (SIGSTOP/SIGCONT, a hung machine), and network partitions (nftables drop rules in the host's
//! path, which every pod packet crosses). Each has an undo. Whole-node stop and restart is the
//! harness's (`ControlPlane::kill_node` / `start_node`): it owns the node agent processes.

use anyhow::{Context, Result, bail};
use std::io::Write;
use std::process::{Command, Stdio};

/// nftables tables of partitions are named with this prefix, so a sweep can remove leftovers.
pub const PARTITION_TABLE_PREFIX: &str = "bulwark-chaos-";

/// Every process of a container: its process group (the node agent starts each container as a
/// group leader whose pid is in the container ID `bulwark://PID`) and all their descendants
/// (see [`process_group_tree`]).
pub fn container_processes(container_id: &str) -> Result<Vec<i32>> {
    process_group_tree(container_leader(container_id)?)
}

fn container_leader(container_id: &str) -> Result<i32> {
    Ok(container_id
        .strip_prefix("bulwark://")
        .with_context(|| format!("{container_id:?} is not a node-agent container"))?
        .parse()?)
}

/// The process `leader`, every process of the group it leads, and all their descendants, which
/// may have left the group (PostgreSQL's backends and WAL senders start sessions of their own): a
/// frozen primary must not go on committing through them.
pub fn process_group_tree(leader: i32) -> Result<Vec<i32>> {
    // (pid, parent, group) of every process.
    let mut table = vec![];
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command (which may hold spaces): state, ppid, pgrp, ...
        let fields: Vec<i32> = stat
            .rsplit(") ")
            .next()
            .unwrap_or_default()
            .split(' ')
            .skip(1)
            .take(2)
            .filter_map(|f| f.parse().ok())
            .collect();
        if let [parent, group] = fields[..] {
            table.push((pid, parent, group));
        }
    }
    Ok(members_and_descendants(&table, leader))
}

/// The process `leader`, the processes of its group and, transitively, their children (a
/// process that leads no group, like a postmaster its supervisor detached, brings its children).
fn members_and_descendants(table: &[(i32, i32, i32)], leader: i32) -> Vec<i32> {
    let mut found: Vec<i32> = table
        .iter()
        .filter(|(pid, _, g)| *g == leader || *pid == leader)
        .map(|(pid, _, _)| *pid)
        .collect();
    let mut next = 0;
    while next < found.len() {
        let parent = found[next];
        for (pid, _, _) in table.iter().filter(|(_, p, _)| *p == parent) {
            if !found.contains(pid) {
                found.push(*pid);
            }
        }
        next += 1;
    }
    found
}

/// Sends `signal` to every process of each leader's tree (see [`process_group_tree`]).
pub fn signal_process_groups(leaders: &[i32], signal: i32) -> Result<usize> {
    let mut signalled = 0;
    for leader in leaders {
        for pid in process_group_tree(*leader)? {
            // SAFETY: kill(2) of a process under test.
            if unsafe { libc::kill(pid, signal) } == 0 {
                signalled += 1;
            }
        }
    }
    if signalled == 0 {
        bail!("no process of the groups {leaders:?} is running");
    }
    Ok(signalled)
}

fn signal_all(container_ids: &[String], signal: i32) -> Result<usize> {
    let leaders = container_ids
        .iter()
        .map(|id| container_leader(id))
        .collect::<Result<Vec<_>>>()?;
    signal_process_groups(&leaders, signal).with_context(|| format!("containers {container_ids:?}"))
}

/// A crash: SIGKILL to every process of these containers (the pod's restartPolicy then acts).
pub fn crash(container_ids: &[String]) -> Result<usize> {
    signal_all(container_ids, libc::SIGKILL)
}

/// A hung machine: every process stops and answers nothing, its sockets stay open.
pub fn freeze(container_ids: &[String]) -> Result<usize> {
    signal_all(container_ids, libc::SIGSTOP)
}

/// Undoes [`freeze`].
pub fn thaw(container_ids: &[String]) -> Result<usize> {
    signal_all(container_ids, libc::SIGCONT)
}

/// Applies an nftables script in one transaction (`nft -f -`); the error quotes nft.
pub fn apply_nft(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (Debian package nftables)")?;
    child.stdin.take().unwrap().write_all(script.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("nft: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// One side of a partition: pod addresses, or a TCP endpoint on the host (the API server).
#[derive(Clone, Debug)]
pub enum Side {
    Pods(Vec<String>),
    HostPort(String, u16),
}

/// A partition in place until [`Partition::heal`]: packets between the two sides are dropped in
/// both directions, established connections included (no conntrack shortcut).
#[derive(Debug)]
pub struct Partition {
    table: String,
}

/// The nftables table of a partition between `a` (pods) and `b`.
pub fn partition_rules(table: &str, a: &[String], b: &Side) -> String {
    let pods = format!("{{ {} }}", a.join(", "));
    let (forward, local) = match b {
        Side::Pods(others) => {
            let others = format!("{{ {} }}", others.join(", "));
            (
                format!(
                    "    ip saddr {pods} ip daddr {others} drop\n    ip saddr {others} ip daddr {pods} drop\n"
                ),
                String::new(),
            )
        }
        // The API server is local to the host: pod -> host is input, host -> pod is output.
        Side::HostPort(address, port) => (
            String::new(),
            format!(
                "  chain input {{\n    type filter hook input priority -10; policy accept;\n    ip saddr {pods} ip daddr {address} tcp dport {port} drop\n  }}\n  chain output {{\n    type filter hook output priority -10; policy accept;\n    ip saddr {address} ip daddr {pods} tcp sport {port} drop\n  }}\n"
            ),
        ),
    };
    format!(
        "table inet {table} {{\n  chain forward {{\n    type filter hook forward priority -10; policy accept;\n{forward}  }}\n{local}}}\n"
    )
}

impl Partition {
    /// Cuts pods `a` off from `b`.
    pub fn start(a: &[String], b: &Side) -> Result<Self> {
        anyhow::ensure!(!a.is_empty(), "a partition needs pods on its first side");
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let table = format!(
            "{PARTITION_TABLE_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        apply_nft(&partition_rules(&table, a, b))?;
        Ok(Self { table })
    }

    /// Undoes the partition.
    pub fn heal(self) -> Result<()> {
        apply_nft(&format!("delete table inet {}\n", self.table))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_is_its_group_and_every_descendant() {
        // 10 leads the group; 11 (its child) started a session of its own, 12 is 11's child;
        // 20 is another container's.
        let table = [
            (10, 1, 10),
            (11, 10, 11),
            (12, 11, 11),
            (20, 1, 20),
            (21, 20, 20),
        ];
        let mut found = members_and_descendants(&table, 10);
        found.sort();
        assert_eq!(found, vec![10, 11, 12]);
        // 11 leads no group of its own members but brings its child.
        let mut found = members_and_descendants(&table, 11);
        found.sort();
        assert_eq!(found, vec![11, 12]);
    }

    #[test]
    fn a_pod_partition_drops_both_directions_and_an_api_partition_only_that_port() {
        let rules = partition_rules(
            "t",
            &["10.244.1.2".into()],
            &Side::Pods(vec!["10.244.2.2".into()]),
        );
        assert!(rules.contains("ip saddr { 10.244.1.2 } ip daddr { 10.244.2.2 } drop"));
        assert!(rules.contains("ip saddr { 10.244.2.2 } ip daddr { 10.244.1.2 } drop"));
        assert!(
            !rules.contains("established"),
            "established connections must break too"
        );
        let api = partition_rules(
            "t",
            &["10.244.1.2".into()],
            &Side::HostPort("10.244.0.1".into(), 6443),
        );
        assert!(api.contains("ip saddr { 10.244.1.2 } ip daddr 10.244.0.1 tcp dport 6443 drop"));
        assert!(api.contains("ip saddr 10.244.0.1 ip daddr { 10.244.1.2 } tcp sport 6443 drop"));
    }

    #[test]
    fn only_node_agent_containers_are_accepted() {
        assert!(container_processes("containerd://abc").is_err());
    }
}
