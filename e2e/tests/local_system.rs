//! `bulwark-local` (what `./dev up` runs) brings the whole system up and leaves nothing behind,
//! whether stopped with SIGTERM or killed outright.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Pids whose command line or environment mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let mentions = ["cmdline", "environ"].iter().any(|file| {
            std::fs::read(entry.path().join(file))
                .is_ok_and(|bytes| String::from_utf8_lossy(&bytes).contains(needle))
        });
        if mentions {
            pids.push(pid);
        }
    }
    pids
}

/// Starts `bulwark-local` and waits for it to say the system is up; returns it and its run dir.
fn start_local_system() -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulwark-local"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut kubeconfig_line = None;
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("bulwark-local came up");
        if line.contains("export KUBECONFIG=") {
            kubeconfig_line = Some(line.clone());
        }
        if line.contains("Press Ctrl-C") {
            break;
        }
    }
    let run_dir = format!("bulwark-control-plane/{}", child.id());
    assert!(
        kubeconfig_line.unwrap().contains(&run_dir),
        "prints the kubeconfig to use"
    );
    (child, run_dir)
}

fn wait_until_gone(run_dir: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    while !processes_mentioning(run_dir).is_empty() {
        assert!(
            started.elapsed() < timeout,
            "processes left behind: {:?}",
            processes_mentioning(run_dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

#[test]
fn sigkilled_owner_leaves_no_component_running() {
    let (mut child, run_dir) = start_local_system();
    let components = processes_mentioning(&run_dir);
    // etcd, kube-apiserver, controller-manager, scheduler, kwok and the operator (plus itself? no:
    // the owner's own command line does not mention its run directory).
    assert_eq!(
        components.len(),
        6,
        "expected 6 components, found {components:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let took = wait_until_gone(&run_dir, Duration::from_secs(10));
    println!(
        "{} components gone {:.2}s after their owner was SIGKILLed",
        components.len(),
        took.as_secs_f64()
    );
}

#[test]
fn sigterm_stops_everything_and_removes_the_run_directory() {
    let (mut child, run_dir) = start_local_system();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "bulwark-local exits 0 on SIGTERM, got {status}"
    );
    wait_until_gone(&run_dir, Duration::from_secs(1));
    let dir = std::env::temp_dir().join(&run_dir);
    assert!(!dir.exists(), "{} is removed", dir.display());
}
