//! `bulwark-local`: the whole system on this machine. Starts the local control plane (or uses
//! the current KUBECONFIG with `--use-current-kubeconfig`), installs the CRDs, runs the operator,
//! and keeps everything up until Ctrl-C.

use anyhow::{Context, Result};
use bulwark_e2e::{binaries, control_plane::ControlPlane, operator::Operator};
use std::path::PathBuf;
use std::time::Duration;

fn main() -> Result<()> {
    // Installed first: a Ctrl-C during startup is held until everything started can be stopped.
    let stop_requested = stop_signals()?;
    let use_current = std::env::args().any(|a| a == "--use-current-kubeconfig");
    let (plane, kubeconfig) = if use_current {
        let path = std::env::var_os("KUBECONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".kube/config")
            });
        println!("using the cluster in {}", path.display());
        (None, path)
    } else {
        println!(
            "starting the local control plane (first run builds the Kubernetes binaries; this takes a while)"
        );
        let plane = ControlPlane::start()?;
        println!(
            "control plane ready in {:.1}s at {}",
            plane.started_in.as_secs_f64(),
            plane.server
        );
        let kubeconfig = plane.kubeconfig.clone();
        (Some(plane), kubeconfig)
    };
    bulwark_e2e::block_on(async {
        let client = bulwark_e2e::client_for(&kubeconfig).await?;
        bulwark_e2e::install_crds(&client).await
    })
    .context("installing CRDs")?;
    println!(
        "CRDs installed: {}",
        bulwark_crds::all()
            .iter()
            .filter_map(|c| c.metadata.name.clone())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let log_dir = plane
        .as_ref()
        .map_or_else(std::env::temp_dir, |p| p.dir.join("logs"));
    let mut operator = Operator::start(&kubeconfig, "bulwark-local", &[], &log_dir)?;
    bulwark_e2e::block_on(async {
        for _ in 0..100 {
            if operator
                .get("/readyz")
                .await
                .is_ok_and(|(code, _)| code == 200)
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!(
            "operator not ready within 10s; log: {}",
            operator.process.log.display()
        )
    })?;
    let kubectl = binaries::binary("kubectl")?;
    println!(
        "operator running: metrics at http://{}/metrics, log {}",
        operator.metrics_addr,
        operator.process.log.display()
    );
    println!(
        "\nUse it with:\n  export KUBECONFIG={}\n  {} get nodes,dnszones,dnsendpoints,dnsplans -A\n",
        kubeconfig.display(),
        kubectl.display()
    );
    println!("Press Ctrl-C to stop everything.");

    loop {
        if stop_requested.recv_timeout(Duration::from_secs(1)).is_ok() {
            break;
        }
        operator.process.check_alive()?;
    }
    println!("stopping");
    operator.process.stop(Duration::from_secs(10));
    drop(plane);
    Ok(())
}

/// Delivers SIGINT/SIGTERM as a message instead of killing the process, so children are stopped.
/// Returns once the handlers are installed.
fn stop_signals() -> Result<std::sync::mpsc::Receiver<()>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (installed_tx, installed_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            let _ = installed_tx.send(());
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        });
        let _ = tx.send(());
    });
    installed_rx.recv().context("signal handler thread")?;
    Ok(rx)
}
