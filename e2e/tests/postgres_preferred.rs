//! Synchronous replication with `durability: preferred`: when too few standbys stream, the
//! primary stops waiting for them (commits keep being acknowledged) and the cluster says so in
//! the `SynchronousDegraded` Condition; when they are back, commits wait for them again. The
//! `required` counterpart (commits wait, never degrade) is `postgres_cluster.rs`. Local control
//! plane only.

use std::time::{Duration, Instant};

use bulwark_controllers::postgres::client::Endpoint;
use bulwark_controllers::postgres::probe::{Outcome, WriteProbe, sequences_found};
use bulwark_crds::postgres::DatabaseCluster;
use bulwark_e2e::eventually;
use bulwark_e2e::postgres::{Database, DatabaseTest, container_of, diagnostics};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

/// The primary's `synchronous_standby_names`, through `db-rw`.
async fn standby_names(app: &Endpoint) -> Option<String> {
    let session = app.connect().await.ok()?;
    let row = session
        .query_one("SHOW synchronous_standby_names", &[])
        .await
        .ok()?;
    Some(row.get(0))
}

fn synchronous_degraded(status: &Value) -> Option<Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "SynchronousDegraded")
        .cloned()
}

#[tokio::test]
async fn preferred_durability_degrades_to_asynchronous_commits_and_says_so() {
    let Some(DatabaseTest {
        client,
        ns,
        clusters,
        release: _release,
    }) = DatabaseTest::start("pg-preferred", 1).await
    else {
        return;
    };
    let spec: DatabaseCluster = serde_json::from_value(json!({
        "apiVersion": "bulwark.dev/v1alpha1", "kind": "DatabaseCluster",
        "metadata": {"name": "db"},
        "spec": {
            "instances": 2,
            "storage": {"size": "1Gi"},
            "synchronous": {"count": 1, "durability": "preferred"},
        },
    }))
    .unwrap();
    clusters
        .create(&PostParams::default(), &spec)
        .await
        .unwrap();
    let db = Database::new(clusters, "db");
    let healthy = db.healthy(Duration::from_secs(180)).await.unwrap();
    let synchronous = eventually(
        Duration::from_secs(30),
        "commits waiting for the standby",
        || async {
            let s = db.status().await;
            (synchronous_degraded(&s)?["status"] == "False").then_some(s)
        },
    )
    .await
    .unwrap();
    let primary = synchronous["primary"].as_str().unwrap().to_string();
    let replica = if primary == "db-1" { "db-2" } else { "db-1" };
    let app = db.application(&client, &ns).await;
    let names = standby_names(&app).await.unwrap();
    assert!(
        names.contains(replica),
        "commits wait for {replica}: {names:?}"
    );
    let probe = WriteProbe::start(
        app.clone(),
        Duration::from_millis(50),
        Duration::from_secs(2),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The only standby hangs: with `required` every commit would wait for it from here on.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let container = container_of(&pods.get(replica).await.unwrap());
    bulwark_chaos::node_agent::freeze(std::slice::from_ref(&container)).unwrap();
    let frozen_at = Instant::now();
    let degraded = eventually(
        Duration::from_secs(30),
        "SynchronousDegraded, synchronous_standby_names cleared, commits acknowledged again",
        || async {
            let s = db.status().await;
            let condition = synchronous_degraded(&s)?;
            let acknowledged = probe
                .report()
                .acknowledged_after(frozen_at + Duration::from_secs(1))
                .len();
            // Checked while the standby is still frozen: once thawed it is waited for again.
            let asynchronous = standby_names(&app).await?.is_empty();
            (condition["status"] == "True" && asynchronous && acknowledged >= 20)
                .then_some(condition)
        },
    )
    .await;
    let degraded_in = frozen_at.elapsed();
    bulwark_chaos::node_agent::thaw(&[container]).unwrap();
    let degraded = match degraded {
        Ok(condition) => condition,
        Err(e) => panic!("{e:#}\n{}", diagnostics(&client, &ns, "db").await),
    };
    assert_eq!(degraded["reason"], "TooFewStandbys", "{degraded}");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("acknowledged without waiting"),
        "{degraded}"
    );
    assert_eq!(
        db.status().await["primary"],
        primary.as_str(),
        "no failover: only the standby hangs"
    );

    // Back: commits wait for it again.
    eventually(
        Duration::from_secs(60),
        "synchronous again once the standby is back",
        || async {
            let s = db.status().await;
            let names = standby_names(&app).await?;
            (synchronous_degraded(&s)?["status"] == "False"
                && s["phase"] == "Healthy"
                && names.contains(replica))
            .then_some(())
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = probe.stop().await;
    let found = sequences_found(&app.connect().await.unwrap())
        .await
        .unwrap();
    let verification = report.verify(&found);
    // A commit waited for the frozen standby until the operator let it go.
    let acknowledged: Vec<_> = report
        .writes
        .iter()
        .filter(|w| w.outcome == Outcome::Acknowledged)
        .collect();
    let stall = acknowledged
        .windows(2)
        .filter(|pair| pair[1].at > frozen_at)
        .map(|pair| pair[1].at - pair[0].at)
        .max()
        .unwrap_or_default();
    println!(
        "preferred: standby frozen; SynchronousDegraded and 20 commits acknowledged within {:.2}s (longest wait between acknowledgements {:.2}s, probe outage {}); {} acknowledged, lost {:?}; epoch {} throughout",
        degraded_in.as_secs_f64(),
        stall.as_secs_f64(),
        report
            .outage_after(frozen_at)
            .map_or("none".into(), |d| format!("{:.2}s", d.as_secs_f64())),
        report.count(Outcome::Acknowledged),
        verification.lost,
        healthy["epoch"],
    );
    assert!(verification.lost.is_empty(), "{:?}", verification.lost);
}
