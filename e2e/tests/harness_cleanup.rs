//! A SIGKILLed harness leaves nothing behind: its processes die with it (PDEATHSIG), its pods'
//! namespaces, veths and mounts with their processes, and the next start sweeps the host links,
//! kube-proxy's nftables tables and the run directory. Never shares a cluster: it starts its own.

use bulwark_e2e::control_plane::ControlPlane;
use bulwark_e2e::node::{host, images::TESTPOD_IMAGE};
use bulwark_e2e::operator::workspace_binary;
use bulwark_e2e::{client_for, eventually};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Processes whose command line mentions `needle` (the killed run's directory).
fn processes_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            text.contains(needle)
                .then(|| format!("{}: {text}", e.file_name().to_string_lossy()))
        })
        .collect()
}

#[test]
fn a_sigkilled_harness_leaves_nothing_behind() {
    if std::env::var_os("BULWARK_E2E_KUBECONFIG").is_some() {
        eprintln!("skipped: this test starts local control planes");
        return;
    }
    let local = workspace_binary("bulwark-e2e", "bulwark-local").unwrap();
    let mut harness = Command::new(local)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut kubeconfig = None;
    for line in BufReader::new(harness.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(path) = line.trim().strip_prefix("export KUBECONFIG=") {
            kubeconfig = Some(PathBuf::from(path));
            break;
        }
    }
    let kubeconfig = kubeconfig.expect("bulwark-local printed its kubeconfig");
    let run_dir = kubeconfig.parent().unwrap().to_path_buf();
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
    assert!(!processes_mentioning(&run_dir.display().to_string()).is_empty());

    harness.kill().unwrap();
    harness.wait().unwrap();
    let needle = run_dir.display().to_string();
    bulwark_e2e::block_on(eventually(
        Duration::from_secs(10),
        "every process of the killed run gone",
        || async { processes_mentioning(&needle).is_empty().then_some(()) },
    ))
    .unwrap_or_else(|e| panic!("{e}: {:?}", processes_mentioning(&needle)));
    let left = host::leftovers();
    eprintln!("left on the host until the next start: {left:?}");

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
