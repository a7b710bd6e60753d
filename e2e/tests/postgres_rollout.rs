//! Rolling changes and scaling of a DatabaseCluster under a write probe: a parameter change
//! replaces the replicas first, then switches the primary over and replaces it last, until every
//! instance runs the new setting; scaling down with the primary beyond the new count switches
//! over first and never removes the primary; scaling up again adds a streaming replica. No
//! acknowledged write may be lost. Local control plane only.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bulwark_controllers::postgres::client::Endpoint;
use bulwark_controllers::postgres::probe::{Outcome, WriteProbe, sequences_found};
use bulwark_crds::postgres::DatabaseCluster;
use bulwark_e2e::eventually;
use bulwark_e2e::postgres::{Database, DatabaseTest, three_synchronous_instances};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const PROBE_INTERVAL: Duration = Duration::from_millis(50);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Each instance pod's uid and creation time, by name.
async fn pods_by_name(pods: &Api<Pod>) -> BTreeMap<String, Pod> {
    pods.list(&ListParams::default().labels("bulwark.dev/cluster=db"))
        .await
        .unwrap()
        .into_iter()
        .map(|pod| (pod.name_any(), pod))
        .collect()
}

/// `SHOW work_mem` on every instance, straight to its pod.
async fn work_mem_everywhere(app: &Endpoint, pods: &Api<Pod>) -> Option<Vec<String>> {
    let mut values = vec![];
    for pod in pods_by_name(pods).await.into_values() {
        let ip = pod.status?.pod_ip?.parse().ok()?;
        let session = app.at(ip).connect().await.ok()?;
        let row = session.query_one("SHOW work_mem", &[]).await.ok()?;
        values.push(row.get(0));
    }
    Some(values)
}

async fn patch(clusters: &Api<DatabaseCluster>, spec: Value) {
    clusters
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_rolling_update_and_scaling_lose_no_acknowledged_write() {
    let Some(DatabaseTest {
        client,
        ns,
        clusters,
        release: _release,
    }) = DatabaseTest::start("pg-rollout", 1).await
    else {
        return;
    };
    clusters
        .create(
            &PostParams::default(),
            &three_synchronous_instances("db", Duration::from_secs(2)),
        )
        .await
        .unwrap();
    let db = Database::new(clusters.clone(), "db");
    let before = db.healthy(Duration::from_secs(180)).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let app = db.application(&client, &ns).await;
    let probe = WriteProbe::start(app.clone(), PROBE_INTERVAL, PROBE_TIMEOUT);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 1. A parameter change rolls through every instance: replicas, switchover, old primary.
    let old_primary = before["primary"].as_str().unwrap().to_string();
    let old_pods = pods_by_name(&pods).await;
    let rolled_at = Instant::now();
    patch(&clusters, json!({"parameters": {"work_mem": "8MB"}})).await;
    let rolled = eventually(
        Duration::from_secs(240),
        "every instance replaced and running work_mem 8MB",
        || async {
            let s = db.status().await;
            let now = pods_by_name(&pods).await;
            let all_new = now.len() == 3
                && now
                    .iter()
                    .all(|(name, pod)| old_pods.get(name).is_none_or(|old| old.uid() != pod.uid()));
            (all_new && s["phase"] == "Healthy").then_some(())?;
            let values = work_mem_everywhere(&app, &pods).await?;
            (values.iter().all(|v| v == "8MB")).then_some(s)
        },
    )
    .await
    .unwrap();
    let switchover = &rolled["lastFailover"];
    assert_eq!(switchover["kind"], "switchover", "{switchover}");
    assert_eq!(switchover["from"], old_primary.as_str());
    assert!(
        switchover["reason"]
            .as_str()
            .unwrap()
            .starts_with("rolling update"),
        "{switchover}"
    );
    assert_eq!(
        rolled["epoch"].as_u64().unwrap(),
        before["epoch"].as_u64().unwrap() + 1,
        "one switchover, no failover"
    );
    // The old primary's pod was replaced last, after the switchover.
    let new_pods = pods_by_name(&pods).await;
    let created = |name: &str| new_pods[name].creation_timestamp().unwrap().0;
    for name in new_pods.keys().filter(|n| **n != old_primary) {
        assert!(
            created(name) <= created(&old_primary),
            "{name} replaced before the old primary {old_primary}"
        );
    }

    // 2. Scale down to 2 with the primary on db-3: it hands over before its pod goes.
    if rolled["primary"] != "db-3" {
        patch(&clusters, json!({"switchoverTo": "db-3"})).await;
        eventually(Duration::from_secs(60), "db-3 primary", || async {
            let s = db.status().await;
            (s["primary"] == "db-3" && s["phase"] == "Healthy").then_some(())
        })
        .await
        .unwrap();
    }
    let epoch = db.status().await["epoch"].as_u64().unwrap();
    let scaled_at = Instant::now();
    patch(&clusters, json!({"instances": 2})).await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let scaled = eventually(
        Duration::from_secs(120),
        "two instances, db-3 and its volume gone",
        || async {
            let s = db.status().await;
            let gone = pods.get_opt("db-3").await.ok()?.is_none()
                && claims.get_opt("db-3").await.ok()?.is_none();
            (gone && s["phase"] == "Healthy" && s["readyInstances"] == 2).then_some(s)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_ne!(scaled["primary"], "db-3");
    assert_eq!(scaled["epoch"].as_u64().unwrap(), epoch + 1);
    assert_eq!(scaled["lastFailover"]["kind"], "switchover");
    assert_eq!(scaled["lastFailover"]["from"], "db-3");
    assert!(
        scaled["lastFailover"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("scale-down to 2"),
        "{}",
        scaled["lastFailover"]
    );

    // 3. Scale up again: db-3 comes back as a streaming replica of the current epoch.
    patch(&clusters, json!({"instances": 3})).await;
    db.healthy(Duration::from_secs(120)).await.unwrap();

    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = probe.stop().await;
    let found = sequences_found(&app.connect().await.unwrap())
        .await
        .unwrap();
    let verification = report.verify(&found);
    let outage = |moment: Instant| {
        report
            .outage_after(moment)
            .map_or("none".into(), |d| format!("{:.2}s", d.as_secs_f64()))
    };
    println!(
        "rolling update: switchover {old_primary} → {} recorded {}s, probe outage {}",
        rolled["primary"],
        switchover["durationSeconds"],
        outage(rolled_at)
    );
    println!(
        "scale-down: switchover db-3 → {} recorded {}s, probe outage {}",
        scaled["primary"],
        scaled["lastFailover"]["durationSeconds"],
        outage(scaled_at)
    );
    println!(
        "write probe: {} acknowledged, {} failed, {} indeterminate, lost {:?}",
        report.count(Outcome::Acknowledged),
        report.count(Outcome::Failed),
        report.count(Outcome::Indeterminate),
        verification.lost
    );
    assert!(report.count(Outcome::Acknowledged) > 100);
    assert!(
        verification.lost.is_empty(),
        "acknowledged writes lost: {:?}",
        verification.lost
    );
}
