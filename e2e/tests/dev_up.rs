//! `./dev up` as a new user meets it: `bulwark-local` starts the whole system, then
//! `kubectl apply -f examples/` gives a DNS answer (`dig` at the printed server) from the
//! example Service's ready pods and the example SLO's live burn rates, within a minute of
//! startup finishing; Prometheus scrapes the operator's pods; Ctrl-C (SIGTERM here) stops
//! everything and exits cleanly.
//!
//! Local control plane only: it starts its own, so it is skipped with `BULWARK_E2E_KUBECONFIG`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bulwark_crds::slo::ServiceLevelObjective;
use bulwark_e2e::process::Process;
use bulwark_e2e::{client_for, eventually};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

/// `dig +short` at `server` (host:port) for `name`'s A records.
fn dig(server: &str, name: &str) -> Vec<String> {
    let (host, port) = server.rsplit_once(':').unwrap();
    let output = Command::new("dig")
        .args([
            &format!("@{host}"),
            "-p",
            port,
            name,
            "A",
            "+short",
            "+time=1",
            "+tries=1",
        ])
        .output()
        .expect("dig (bind9-dnsutils)");
    let mut addresses: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_owned)
        .collect();
    addresses.sort();
    addresses
}

#[tokio::test]
async fn dev_up_answers_dig_and_shows_slo_status_for_the_examples() {
    if std::env::var_os("BULWARK_E2E_KUBECONFIG").is_some() {
        println!("skipped: ./dev up starts its own control plane");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("state.json");
    let log = std::env::temp_dir().join("bulwark-e2e-logs/dev-up.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let mut local = Process::spawn(
        "bulwark-local",
        Path::new(env!("CARGO_BIN_EXE_bulwark-local")),
        &[],
        &[("BULWARK_LOCAL_STATE", &state_file)],
        &log,
    )
    .unwrap();
    let started = Instant::now();
    let state: serde_json::Value = loop {
        if let Ok(text) = std::fs::read_to_string(&state_file) {
            break serde_json::from_str(&text).unwrap();
        }
        local.check_alive().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "./dev up not up within 300s:\n{}",
            local.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "./dev up: everything up in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let kubeconfig = Path::new(state["kubeconfig"].as_str().unwrap());
    let dns_server = state["dnsServer"].as_str().unwrap().to_string();

    let up = Instant::now();
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let apply = Command::new(state["kubectl"].as_str().unwrap())
        .args(["apply", "-f", examples])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap();
    assert!(
        apply.status.success(),
        "kubectl apply -f examples/: {}",
        String::from_utf8_lossy(&apply.stderr)
    );

    // The answer follows the example Service's ready pods.
    let client = client_for(kubeconfig).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let answer = eventually(
        Duration::from_secs(60),
        "dig to answer with the api pods' addresses",
        || async {
            let mut ips: Vec<String> = pods
                .list(&ListParams::default().labels("app=api"))
                .await
                .ok()?
                .items
                .into_iter()
                .filter_map(|p| p.status?.pod_ip)
                .collect();
            ips.sort();
            let answer = dig(&dns_server, "api.bulwark.test");
            (ips.len() == 2 && answer == ips).then_some(answer)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", local.log_tail(30)));
    println!(
        "dig api.bulwark.test: {answer:?}, {:.1}s after kubectl apply",
        up.elapsed().as_secs_f64()
    );

    let slos: Api<ServiceLevelObjective> = Api::namespaced(client.clone(), "default");
    let burn = eventually(
        Duration::from_secs(60),
        "checkout-availability's live burn rates",
        || async {
            let status = slos.get("checkout-availability").await.ok()?.status?;
            let live = status.conditions.iter().find(|c| c.type_ == "LiveStatus")?;
            (live.reason == "Evaluated").then_some(())?;
            serde_json::to_value(&status.burn_rates).ok()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", local.log_tail(30)));
    println!(
        "checkout-availability live burn rates {burn}, {:.1}s after kubectl apply",
        up.elapsed().as_secs_f64()
    );

    // Prometheus scrapes both operator pods.
    let prometheus = state["prometheus"].as_str().unwrap();
    let scraped = eventually(
        Duration::from_secs(60),
        "Prometheus to scrape both operator pods",
        || async {
            let body: serde_json::Value = reqwest::get(format!(
                "{prometheus}/api/v1/query?query=sum(up%7Bjob%3D%22bulwark%22%7D)"
            ))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
            let up = body["data"]["result"][0]["value"][1].as_str()?.to_string();
            (up == "2").then_some(up)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", local.log_tail(30)));
    println!("Prometheus: sum(up{{job=\"bulwark\"}}) = {scraped}");

    local.signal(libc::SIGTERM);
    let exit = local.wait_exit(Duration::from_secs(60));
    assert!(
        exit.is_some_and(|s| s.success()),
        "./dev up stops cleanly on a signal: {exit:?}\n{}",
        local.log_tail(30)
    );
}
