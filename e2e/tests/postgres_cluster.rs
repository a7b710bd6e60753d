//! DatabaseCluster end to end: the operator (chart pods) creates a three-instance cluster with
//! synchronous `ANY 1` replication and `required` durability; a write probe inserts numbered
//! rows through the `-rw` Service while the primary's processes are SIGKILLed, then while the
//! primary hangs (SIGSTOP) until a failover, after which it is thawed, and through a switchover;
//! cutting only the operator's link to the primary must not fail over. Every acknowledged write
//! must be on the primary at the end, the hung primary must be back as a replica of the new
//! epoch, and the Events must tell the story. The operator's leader is SIGKILLed in the middle of
//! a failover, which the next leader completes; last, the primary's whole node stops. Local
//! control plane only (the instance pods run this machine's PostgreSQL and the built `bulwark`).

use std::time::{Duration, Instant};

use bulwark_chaos::node_agent::{Partition, Side};
use bulwark_controllers::postgres::client::Endpoint;
use bulwark_controllers::postgres::probe::{Outcome, WriteProbe, sequences_found};

use bulwark_e2e::postgres::{
    Database, DatabaseTest, container_of, isolate, three_synchronous_instances,
};
use bulwark_e2e::{cluster, eventually};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::Role;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

/// Writes come this often; each waits at most this long for its acknowledgement.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The failover delay the cluster runs with (synchronous `required` needs no isolation margin).
const DELAY: Duration = Duration::from_secs(2);

#[tokio::test]
async fn failovers_and_a_switchover_lose_no_acknowledged_write_through_the_rw_service() {
    // Two operator replicas: one leads, the other takes over when the leader is killed.
    let Some(DatabaseTest {
        client,
        ns,
        clusters,
        release,
    }) = DatabaseTest::start("pg-cluster", 2).await
    else {
        return;
    };
    clusters
        .create(
            &PostParams::default(),
            &three_synchronous_instances("db", DELAY),
        )
        .await
        .unwrap();
    let db = Database::new(clusters.clone(), "db");
    let healthy = db.healthy(Duration::from_secs(180)).await.unwrap();
    println!(
        "healthy: primary {}, epoch {}",
        healthy["primary"], healthy["epoch"]
    );

    // What the operator made for the cluster, owned by it.
    let owned_by_db = |meta: &kube::api::ObjectMeta| {
        meta.owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "DatabaseCluster" && o.name == "db")
    };
    for name in ["db-rw", "db-ro", "db-r"] {
        let service = Api::<Service>::namespaced(client.clone(), &ns)
            .get(name)
            .await
            .unwrap();
        assert!(owned_by_db(&service.metadata), "{name}");
    }
    let budget = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns)
        .get("db")
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(budget.spec.unwrap().max_unavailable).unwrap(),
        json!(1)
    );
    let app_secret = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("db-app")
        .await
        .unwrap();
    let mut keys: Vec<&String> = app_secret.data.as_ref().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "ca.crt", "dbname", "host", "password", "port", "uri", "username"
        ]
    );
    assert!(owned_by_db(&app_secret.metadata));
    let role = Api::<Role>::namespaced(client.clone(), &ns)
        .get("db-instance")
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(role.rules).unwrap(),
        json!([{"apiGroups": ["bulwark.dev"], "resources": ["databaseclusters"], "resourceNames": ["db"], "verbs": ["get"]}]),
        "the instances may read their own cluster and nothing else"
    );
    for n in 1..=3 {
        let claim = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
            .get(&format!("db-{n}"))
            .await
            .unwrap();
        assert!(
            owned_by_db(&claim.metadata),
            "reclaim Delete: db-{n}'s volume goes with the cluster"
        );
    }

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // The zone spread constraint: one instance per zone's node.
    let mut nodes = std::collections::BTreeSet::new();
    for n in 1..=3 {
        let pod = pods.get(&format!("db-{n}")).await.unwrap();
        let spec = pod.spec.unwrap();
        nodes.insert(spec.node_name.unwrap());
        // PostgreSQL's official image, given `bulwark` by an init container from the operator's.
        let main = &spec.containers[0];
        assert_eq!(main.image.as_deref(), Some("docker.io/library/postgres:15"));
        assert_eq!(
            main.command.as_deref(),
            Some(&["/bulwark/bulwark".to_string()][..])
        );
        let init = &spec.init_containers.unwrap()[0];
        assert!(
            init.image
                .as_deref()
                .unwrap()
                .starts_with("ghcr.io/bulwark-dev/bulwark:")
        );
        assert_eq!(init.args.as_deref().unwrap()[0], "copy-binary");
    }
    assert_eq!(
        nodes.len(),
        3,
        "the instances spread over the zones: {nodes:?}"
    );
    let app = db.application(&client, &ns).await;
    // TLS only: the application's endpoint checks the certificate for db-rw's name against the
    // Secret's CA; a session without TLS is refused, and so is a certificate from another CA.
    app.connect().await.unwrap();
    let mut plain = app.config.clone();
    plain.ssl_mode(tokio_postgres::config::SslMode::Disable);
    let refused = plain.connect(tokio_postgres::NoTls).await.err().unwrap();
    assert!(
        refused
            .as_db_error()
            .is_some_and(|e| e.message().ends_with("no encryption")),
        "a session without TLS: {refused:?}"
    );
    let stranger = bulwark_controllers::postgres::pki::issue("stranger", vec![]).unwrap();
    let untrusted = Endpoint::new(app.config.clone(), stranger.ca.as_bytes()).unwrap();
    let refused = untrusted.connect().await.err().unwrap();
    assert!(
        format!("{refused:?}").contains("UnknownIssuer"),
        "a server certificate from another CA: {refused:?}"
    );
    let probe = WriteProbe::start(app.clone(), PROBE_INTERVAL, PROBE_TIMEOUT);
    eventually(
        Duration::from_secs(30),
        "writes acknowledged through db-rw",
        || async {
            (probe
                .report()
                .count(bulwark_controllers::postgres::probe::Outcome::Acknowledged)
                > 20)
                .then_some(())
        },
    )
    .await
    .unwrap();

    // 0. Only the operator's link to the primary is cut: the replicas still stream from it,
    //    so there is no failover, and writes go on.
    let primary = healthy["primary"].as_str().unwrap().to_string();
    let ip_of = |pod: &Pod| pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
    let primary_ip = ip_of(&pods.get(&primary).await.unwrap());
    let operator_ips: Vec<String> = release
        .pods(&client)
        .await
        .unwrap()
        .iter()
        .map(ip_of)
        .collect();
    let cut = Partition::start(
        std::slice::from_ref(&primary_ip),
        &Side::Pods(operator_ips.clone()),
    )
    .unwrap();
    let cut_at = Instant::now();
    tokio::time::sleep(DELAY * 4).await;
    let during_cut = db.status().await;
    let acknowledged_during_cut = probe.report().acknowledged_after(cut_at + DELAY).len();
    cut.heal().unwrap();
    println!(
        "operator cut off from {primary} for {:?}: primary {} in epoch {}, {acknowledged_during_cut} writes acknowledged meanwhile",
        DELAY * 4,
        during_cut["primary"],
        during_cut["epoch"]
    );
    assert_eq!(
        during_cut["primary"],
        primary.as_str(),
        "no failover on the operator's link alone"
    );
    assert_eq!(during_cut["epoch"], healthy["epoch"]);
    assert!(acknowledged_during_cut > 0, "the primary kept serving");

    // 1. SIGKILL of every process of the primary's pod (instance manager and PostgreSQL). The
    //    pod restarts; if it serves again within the failover delay there is no failover.
    let killed_at = Instant::now();
    let primary = db.status().await["primary"].as_str().unwrap().to_string();
    let container = container_of(&pods.get(&primary).await.unwrap());
    let killed = bulwark_chaos::node_agent::crash(&[container]).unwrap();
    println!("SIGKILLed {killed} processes of {primary}");
    eventually(
        Duration::from_secs(60),
        "writes acknowledged again after the kill",
        || async {
            let s = db.status().await;
            let ready = s["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            (ready
                && !probe
                    .report()
                    .acknowledged_after(killed_at + Duration::from_secs(1))
                    .is_empty())
            .then_some(())
        },
    )
    .await
    .unwrap();
    let after_kill = db.status().await;
    println!(
        "after the SIGKILL: primary {} in epoch {} ({})",
        after_kill["primary"],
        after_kill["epoch"],
        if after_kill["primary"] == primary.as_str() {
            "restarted in place"
        } else {
            "failed over"
        }
    );

    // 2. The primary hangs (every process stopped, sockets open): the replicas stop hearing
    //    from it, the operator fails over, and once thawed it rejoins as a replica.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let frozen_at = Instant::now();
    let epoch = after_kill["epoch"].as_u64().unwrap();
    let old_primary = after_kill["primary"].as_str().unwrap().to_string();
    let container = container_of(&pods.get(&old_primary).await.unwrap());
    bulwark_chaos::node_agent::freeze(std::slice::from_ref(&container)).unwrap();
    let after = db.failed_over(&old_primary, epoch).await;
    // Thawed whatever happened, so a failure leaves no stopped processes behind.
    tokio::time::sleep(Duration::from_secs(3)).await;
    bulwark_chaos::node_agent::thaw(&[container]).unwrap();
    let after = after.unwrap();
    assert_eq!(after["lastFailover"]["from"], old_primary.as_str());
    db.rejoined(&old_primary).await;

    // 2b. The primary is cut off from the API server, the replicas and the operator (its node's
    //     network fails): with no contact it fences itself within its isolation timeout, the
    //     replicas fail over, and once healed it rejoins.
    let isolated = after["primary"].as_str().unwrap().to_string();
    let isolated_epoch = after["epoch"].as_u64().unwrap();
    let isolated_ip = ip_of(&pods.get(&isolated).await.unwrap());
    // A second probe writes to the isolated primary directly (the host's path to it stays).
    let direct_probe = WriteProbe::start_at(
        app.at(isolated_ip.parse().unwrap()),
        1_000_000_000,
        PROBE_INTERVAL,
        PROBE_TIMEOUT,
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let isolated_at = Instant::now();
    let cuts = isolate(&pods, &isolated, cluster().local_api_server_port().unwrap())
        .await
        .unwrap();
    let after_isolation = db.failed_over(&isolated, isolated_epoch).await;
    let direct_report = direct_probe.stop().await;
    let isolated_window = direct_report
        .acknowledged_after(isolated_at)
        .last()
        .map(|w| w.at.duration_since(isolated_at));
    for cut in cuts {
        cut.heal().unwrap();
    }
    let after_isolation = after_isolation.unwrap();
    db.rejoined(&isolated).await;
    assert!(
        direct_report.count(Outcome::Acknowledged) > 0,
        "the direct probe reached the isolated primary before the cut"
    );
    // Synchronous and required: with its standbys cut off it cannot acknowledge a commit; one
    // in flight at the cut may still complete.
    if isolated_window.is_some_and(|w| w >= Duration::from_millis(500)) {
        let logs = pods
            .logs(
                &isolated,
                &kube::api::LogParams {
                    tail_lines: Some(60),
                    ..Default::default()
                },
            )
            .await
            .unwrap_or_default();
        let late: Vec<_> = direct_report
            .acknowledged_after(isolated_at)
            .iter()
            .map(|w| (w.sequence, w.at.duration_since(isolated_at)))
            .collect();
        println!(
            "acknowledged by {isolated} after the cut: {late:?}\nstatus: {}\nlogs of {isolated}:\n{logs}",
            db.status().await
        );
    }
    assert!(
        isolated_window.is_none_or(|w| w < Duration::from_millis(500)),
        "the isolated primary acknowledged a write {isolated_window:?} after the cut"
    );

    // 2c. The operator's leader is SIGKILLed in the middle of a failover (the primary hangs; the
    //     kill follows the watch event of the failover's first step, which is recorded before
    //     any side effect). The next leader (the restarted pod renewing its own Lease, or the other
    //     replica once the Lease expires) finishes it from what status records. A failover can
    //     finish in under a second, before the kill lands: then it is tried again.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let leader = || async {
        leases
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|l| {
                l.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.ends_with("-leader"))
            })
            .and_then(|l| l.spec?.holder_identity)
            .expect("an operator leads")
    };
    let mut attempt = 0;
    let (killed, at_kill, resumed) = loop {
        attempt += 1;
        let before = db.status().await;
        let hung = before["primary"].as_str().unwrap().to_string();
        let hung_container = container_of(&pods.get(&hung).await.unwrap());
        let killed = leader().await;
        let killed_container = container_of(&pods.get(&killed).await.unwrap());
        let updates = watcher(
            clusters.clone(),
            watcher::Config::default().fields("metadata.name=db"),
        )
        .applied_objects();
        let mut updates = std::pin::pin!(updates);
        bulwark_chaos::node_agent::freeze(std::slice::from_ref(&hung_container)).unwrap();
        let begun = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(Ok(db)) = updates.next().await {
                if db.status.and_then(|s| s.failover).is_some() {
                    return;
                }
            }
        })
        .await;
        if begun.is_ok() {
            bulwark_chaos::node_agent::crash(&[killed_container]).unwrap();
        }
        let at_kill = db.status().await;
        let resumed = db
            .failed_over(&hung, before["epoch"].as_u64().unwrap())
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        bulwark_chaos::node_agent::thaw(&[hung_container]).unwrap();
        begun.expect("a failover began while the primary hung");
        let resumed = resumed.unwrap();
        assert_eq!(resumed["lastFailover"]["from"], hung.as_str());
        db.rejoined(&hung).await;
        if !at_kill["failover"].is_null() {
            break (killed, at_kill, resumed);
        }
        assert!(
            attempt < 3,
            "three failovers completed before the leader could be killed"
        );
        println!("attempt {attempt}: the failover completed before the kill; again");
    };
    println!(
        "operator leader {killed} SIGKILLed at failover step {} (epoch {}, attempt {attempt}); {} completed it: {} → {} in epoch {}, recorded {}s",
        at_kill["failover"]["step"],
        at_kill["failover"]["epoch"],
        leader().await,
        resumed["lastFailover"]["from"],
        resumed["lastFailover"]["to"],
        resumed["lastFailover"]["epoch"],
        resumed["lastFailover"]["durationSeconds"],
    );
    // The same failover, resumed: its epoch, or a later one only if it had to retarget.
    assert!(resumed["lastFailover"]["epoch"].as_u64() >= at_kill["failover"]["epoch"].as_u64());

    // 3. A switchover under load, to a replica on a node where the operator's leader is not
    //    (step 4 stops the new primary's node, and is about the database, not the operator).
    let node_of = |pod: Pod| pod.spec.unwrap().node_name.unwrap();
    let leader_node = node_of(pods.get(&leader().await).await.unwrap());
    let before = db.status().await;
    let mut target = None;
    for instance in before["instances"].as_array().unwrap() {
        let name = instance["name"].as_str().unwrap();
        if before["primary"] != name && node_of(pods.get(name).await.unwrap()) != leader_node {
            target = Some(name.to_string());
        }
    }
    let target = target.expect("a replica on a node the leader is not on");
    let switchover_at = Instant::now();
    clusters
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"switchoverTo": target}})),
        )
        .await
        .unwrap();
    let switched = eventually(Duration::from_secs(60), "the switchover", || async {
        let s = db.status().await;
        (s["primary"] == target.as_str()
            && s["lastFailover"]["kind"] == "switchover"
            && s["phase"] == "Healthy")
            .then_some(s)
    })
    .await
    .unwrap();
    // 4. The primary's node stops the way a machine dies (its agent and every process on it
    //    SIGKILLed): the replicas fail over; started again, the old primary rejoins.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let node = node_of(pods.get(&target).await.unwrap());
    let node_stopped_at = Instant::now();
    cluster().with_plane(|plane| plane.kill_node(&node));
    let after_node = db
        .failed_over(&target, switched["epoch"].as_u64().unwrap())
        .await;
    cluster()
        .with_plane(|plane| plane.start_node(&node))
        .unwrap();
    let after_node = after_node.unwrap();
    db.rejoined(&target).await;

    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = probe.stop().await;

    let reader = app.connect().await.unwrap();
    let found = sequences_found(&reader).await.unwrap();
    let verification = report.verify(&found);
    let direct_verification = direct_report.verify(&found);
    let rto = |fault: Instant| {
        report
            .outage_after(fault)
            .map_or("none".to_string(), |d| format!("{:.2}s", d.as_secs_f64()))
    };
    println!(
        "write probe: {} acknowledged, {} failed, {} indeterminate ({} committed), lost {:?}",
        report.count(Outcome::Acknowledged),
        report.count(Outcome::Failed),
        report.count(Outcome::Indeterminate),
        verification.indeterminate_committed,
        verification.lost,
    );
    println!(
        "RTO seen by the probe: SIGKILL {}; hung primary {old_primary} → {} (epoch {}) {}, recorded failover {}s",
        rto(killed_at),
        after["primary"],
        after["epoch"],
        rto(frozen_at),
        after["lastFailover"]["durationSeconds"],
    );
    println!(
        "isolated primary {isolated} → {} (epoch {}): outage {}, recorded failover {}s; last write acknowledged by the isolated primary: {isolated_window:?} after the cut",
        after_isolation["primary"],
        after_isolation["epoch"],
        rto(isolated_at),
        after_isolation["lastFailover"]["durationSeconds"],
    );
    println!(
        "switchover {} → {target} (epoch {}): RTO {}, recorded {}s",
        before["primary"],
        switched["epoch"],
        rto(switchover_at),
        switched["lastFailover"]["durationSeconds"],
    );
    println!(
        "node {node} of primary {target} stopped → {} (epoch {}): RTO {}, recorded {}s",
        after_node["primary"],
        after_node["epoch"],
        rto(node_stopped_at),
        after_node["lastFailover"]["durationSeconds"],
    );
    assert!(
        verification.lost.is_empty(),
        "acknowledged writes lost: {:?}",
        verification.lost
    );
    assert!(
        direct_verification.lost.is_empty(),
        "writes the isolated primary acknowledged were lost: {:?}",
        direct_verification.lost
    );

    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some("db"))
        .filter_map(|e| e.reason)
        .collect();
    for wanted in [
        "FailoverStarted",
        "Promoted",
        "FailoverCompleted",
        "Following",
    ] {
        assert!(
            reasons.iter().any(|r| r == wanted),
            "no {wanted} Event among {reasons:?}"
        );
    }
}
