//! `bulwark-local` (what `./dev up` runs) brings the whole system up and leaves nothing behind,
//! whether stopped with SIGTERM or killed outright: its processes die with it (PDEATHSIG), its
//! pods' namespaces, veths and mounts with their processes, and the next start sweeps the host
//! links, kube-proxy's nftables tables and the run directory.

use bulwark_e2e::control_plane::ControlPlane;
use bulwark_e2e::node::{host, images::TESTPOD_IMAGE};
use bulwark_e2e::{client_for, eventually};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use std::sync::Mutex;

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

/// With `BULWARK_E2E_KUBECONFIG` the suite tests that cluster, which may be a local control plane
/// holding this machine's one pod network: these tests, which start their own, are skipped.
fn skipped() -> bool {
    let skip = std::env::var_os("BULWARK_E2E_KUBECONFIG").is_some();
    if skip {
        println!("skipped: bulwark-local starts its own control plane");
    }
    skip
}

/// The machine has one pod network: these tests take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// `bulwark-local`, SIGKILLed if a failing test drops it (it would otherwise outlive the test).
struct LocalSystem(Child);

impl Drop for LocalSystem {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for LocalSystem {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for LocalSystem {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// Starts `bulwark-local` and waits for it to say the system is up; returns it and its run dir.
fn start_local_system() -> (LocalSystem, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_bulwark-local"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = LocalSystem(child);
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
fn sigkilled_owner_leaves_nothing_behind_after_the_next_start() {
    if skipped() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (mut child, run_dir) = start_local_system();
    let kubeconfig = std::env::temp_dir().join(&run_dir).join("admin.kubeconfig");
    // A running pod: its sandbox, veth, overlay mounts and kube-proxy rules all exist now.
    bulwark_e2e::block_on(async {
        let pods: Api<Pod> = Api::namespaced(client_for(&kubeconfig).await.unwrap(), "default");
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "doomed"},
            "spec": {"containers": [{"name": "web", "image": format!("{TESTPOD_IMAGE}:1")}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        eventually(Duration::from_secs(60), "the pod running", || async {
            let pod = pods.get("doomed").await.ok()?;
            (pod.status?.phase.as_deref() == Some("Running")).then_some(())
        })
        .await
        .unwrap();
    });
    let container_pid: i32 = bulwark_e2e::block_on(async {
        let pods: Api<Pod> = Api::namespaced(client_for(&kubeconfig).await.unwrap(), "default");
        let status = pods.get("doomed").await.unwrap().status.unwrap();
        let id = status.container_statuses.unwrap()[0]
            .container_id
            .clone()
            .unwrap();
        id.trim_start_matches("bulwark://").parse().unwrap()
    });
    let components = processes_mentioning(&run_dir);
    // etcd, kube-apiserver, controller-manager, scheduler, kwok, kube-proxy, CoreDNS, the
    // NetworkPolicy enforcer, three node agents, BIND9, Prometheus, and the sandboxes of the
    // two operator pods and this pod. The owner's own command line does not mention its run
    // directory, nor do containers, which have only their pod's environment.
    assert_eq!(
        components.len(),
        16,
        "expected 16 processes, found {components:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let took = wait_until_gone(&run_dir, Duration::from_secs(10));
    // Dead: gone, or a zombie waiting for whoever inherited it to reap it. The parent-death
    // SIGKILL is delivered when the orphan is next scheduled, so allow a moment on a busy machine.
    let state = || {
        let stat =
            std::fs::read_to_string(format!("/proc/{container_pid}/stat")).unwrap_or_default();
        stat.rsplit(") ").next().unwrap_or_default().to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(state().is_empty() || state().starts_with('Z')) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let last = state();
    assert!(
        last.is_empty() || last.starts_with('Z'),
        "the pod's container died with its node agent (state {last:?})"
    );
    println!(
        "{} processes gone {:.2}s after their owner was SIGKILLed; left for the next start: {:?}",
        components.len(),
        took.as_secs_f64(),
        host::leftovers()
    );

    let run_dir = std::env::temp_dir().join(&run_dir);
    let mut next = ControlPlane::start().expect("the next start takes over the pod network");
    assert!(
        !run_dir.exists(),
        "the next start removes {}",
        run_dir.display()
    );
    next.stop();
    assert_eq!(
        host::leftovers(),
        Vec::<String>::new(),
        "a normal stop leaves no links or rules"
    );
    let mounts = std::fs::read_to_string("/proc/1/mountinfo").unwrap();
    assert!(
        !mounts.contains("bulwark-control-plane"),
        "no mount of a run remains"
    );
}

#[test]
fn sigterm_stops_everything_and_removes_the_run_directory() {
    if skipped() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
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
    assert_eq!(
        host::leftovers(),
        Vec::<String>::new(),
        "no links or nftables rules remain"
    );
}
