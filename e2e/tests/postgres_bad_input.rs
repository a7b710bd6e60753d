//! Bad DatabaseCluster input: what a rule can see is refused at admission (CEL) with a message
//! that says what to change; what only shows at runtime (a StorageClass that does not exist, an
//! image that cannot run, a volume that fills up) becomes a Condition and a Warning Event, with
//! nothing half-applied, and clears once fixed.

use std::time::Duration;

use bulwark_crds::postgres::DatabaseCluster;
use bulwark_e2e::chart::Release;
use bulwark_e2e::node::agent::{CAPACITY_PARAMETER, PROVISIONER};
use bulwark_e2e::postgres::{Database, DatabaseTest, events, postgres_user, warnings};
use bulwark_e2e::{cluster, eventually};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// Invalid specs are refused at admission (CEL), each with a message that says what to change.
#[tokio::test]
async fn invalid_database_clusters_are_refused_with_clear_messages() {
    let client = cluster().client().await;
    bulwark_e2e::install_crds(&client).await.unwrap();
    let ns = cluster().namespace("pg-admission").await;
    let clusters: Api<DatabaseCluster> = Api::namespaced(client, &ns);
    let cases = [
        (json!({"instances": 0}), "instances must be from 1 to 9"),
        (
            json!({"instances": 3, "synchronous": {"count": 3}}),
            "synchronous.count must be less than instances",
        ),
        (
            json!({"parameters": {"wal_level": "minimal"}}),
            "parameters must not set what Bulwark manages",
        ),
        (
            json!({"parameters": {"log_line_prefix": "%m\nDROP"}}),
            "parameter values must be one line",
        ),
        (
            json!({"failover": {"delay": "500ms"}}),
            "failover.delay must be from 1s to 300s",
        ),
        (
            json!({"isolationTimeout": "90s"}),
            "isolationTimeout must be from 1s to 60s",
        ),
        (
            json!({"isolationTimeout": "5s", "failover": {"delay": "6s"}}),
            "failover.delay must be at least isolationTimeout + 2s",
        ),
        (
            json!({"bootstrap": {"database": "postgres"}}),
            "bootstrap.database must not be postgres",
        ),
    ];
    for (n, (overrides, expected)) in cases.into_iter().enumerate() {
        let mut spec = json!({"storage": {"size": "1Gi"}});
        for (key, value) in overrides.as_object().unwrap() {
            spec[key] = value.clone();
        }
        let object: DatabaseCluster = serde_json::from_value(json!({
            "apiVersion": "bulwark.dev/v1alpha1", "kind": "DatabaseCluster",
            "metadata": {"name": format!("bad-{n}")},
            "spec": spec,
        }))
        .unwrap();
        let created = clusters.create(&PostParams::default(), &object).await;
        assert_refused(created, &spec, expected);
    }
    assert!(
        clusters
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "nothing half-created"
    );
}

/// Changes a rolling update cannot carry out are refused at admission, and the stored spec is
/// left as it was; the changes it can carry out pass.
#[tokio::test]
async fn changes_a_rolling_update_cannot_make_are_refused() {
    let client = cluster().client().await;
    bulwark_e2e::install_crds(&client).await.unwrap();
    let ns = cluster().namespace("pg-admission-changes").await;
    let clusters: Api<DatabaseCluster> = Api::namespaced(client, &ns);
    let object: DatabaseCluster = serde_json::from_value(json!({
        "apiVersion": "bulwark.dev/v1alpha1", "kind": "DatabaseCluster",
        "metadata": {"name": "limits"},
        "spec": {"storage": {"size": "1Gi"}, "parameters": {"max_connections": "200"}},
    }))
    .unwrap();
    clusters
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    let lowered = "can be raised but not lowered";
    let refused = [
        (json!({"max_connections": "150"}), lowered),
        // Unset is PostgreSQL's default, 100.
        (json!({"max_connections": null}), lowered),
        (json!({"max_locks_per_transaction": "32"}), lowered),
        (json!({"max_connections": "many"}), "must be whole numbers"),
    ];
    let patch = |spec: serde_json::Value| Patch::Merge(json!({"spec": spec}));
    let mut attempts: Vec<(serde_json::Value, &str)> = refused
        .into_iter()
        .map(|(parameters, expected)| (json!({"parameters": parameters}), expected))
        .collect();
    attempts.push((
        json!({"postgresVersion": 16}),
        "postgresVersion cannot change",
    ));
    attempts.push((
        json!({"storage": {"size": "500Mi"}}),
        "storage.size can grow but not shrink",
    ));
    for (spec, expected) in attempts {
        let patched = clusters
            .patch("limits", &PatchParams::default(), &patch(spec.clone()))
            .await;
        assert_refused(patched, &spec, expected);
    }
    let stored = clusters.get("limits").await.unwrap().spec;
    assert_eq!(stored.parameters["max_connections"], "200");
    assert_eq!(stored.postgres_version, 15);
    let raised = json!({"parameters": {"max_connections": "300", "max_worker_processes": "16"}});
    let accepted = clusters
        .patch("limits", &PatchParams::default(), &patch(raised))
        .await
        .expect("raising the standby limits is a rolling change");
    assert_eq!(accepted.spec.parameters["max_connections"], "300");
}

/// The API server refused `spec` with a message holding `expected`.
fn assert_refused(
    result: Result<DatabaseCluster, kube::Error>,
    spec: &serde_json::Value,
    expected: &str,
) {
    let message = match result.expect_err(&format!("{spec} must be refused")) {
        kube::Error::Api(status) => status.message,
        other => other.to_string(),
    };
    println!("{spec}: {message}");
    assert!(
        message.contains(expected),
        "{spec}: expected {expected:?} in {message}"
    );
}

/// Waits until `name` is Degraded for `reason`, and returns the Condition's message.
async fn degraded_for(
    clusters: &Api<DatabaseCluster>,
    name: &str,
    reason: &str,
    within: Duration,
) -> String {
    let (_, message) = eventually(within, &format!("{name} Degraded for {reason}"), || async {
        condition(&clusters.get(name).await.ok()?, "Degraded").filter(|c| c.0 == reason)
    })
    .await
    .unwrap();
    println!("{name}: Degraded {reason}: {message}");
    message
}

fn condition(cluster: &DatabaseCluster, type_: &str) -> Option<(String, String)> {
    let status = cluster.status.as_ref()?;
    let c = status.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.reason.clone(), c.message.clone()))
}

#[tokio::test]
async fn a_missing_storage_class_and_an_image_that_cannot_run_are_conditions_and_events() {
    let client = cluster().client().await;
    // Cluster-wide: only such a release may read StorageClasses (a single-namespace one has no
    // cluster-wide access, skips the check, and shows the scheduler's words instead).
    let ns = cluster()
        .namespace_for_cluster_wide_release("pg-runtime-errors")
        .await;
    let (uid, gid) = postgres_user();
    let _release = Release::install(
        &cluster().kubeconfig,
        &ns,
        &[
            format!("postgres.runAsUser={uid}"),
            format!("postgres.runAsGroup={gid}"),
        ],
    )
    .unwrap();
    let clusters: Api<DatabaseCluster> = Api::namespaced(client.clone(), &ns);
    // Unique per run: StorageClasses are cluster-wide.
    let class = format!("{ns}-late");
    for (name, spec) in [
        (
            "no-class",
            json!({"instances": 1, "storage": {"size": "1Gi", "storageClassName": class}}),
        ),
        (
            "bad-image",
            json!({"instances": 1, "storage": {"size": "1Gi"}, "image": "registry.invalid/postgres:none"}),
        ),
    ] {
        let object: DatabaseCluster = serde_json::from_value(json!({
            "apiVersion": "bulwark.dev/v1alpha1", "kind": "DatabaseCluster",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap();
        clusters
            .create(&PostParams::default(), &object)
            .await
            .unwrap();
    }

    let message = degraded_for(
        &clusters,
        "no-class",
        "StorageClassNotFound",
        Duration::from_secs(60),
    )
    .await;
    assert!(
        message.contains(&format!("StorageClass {class} does not exist")),
        "{message}"
    );
    let ready = condition(&clusters.get("no-class").await.unwrap(), "Ready").unwrap();
    assert_eq!(ready.0, "StorageClassNotFound", "{ready:?}");
    let selector = ListParams::default().labels("bulwark.dev/cluster=no-class");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    assert!(
        pvcs.list(&selector).await.unwrap().items.is_empty(),
        "no claim for a class that does not exist"
    );
    assert!(
        pods.list(&selector).await.unwrap().items.is_empty(),
        "no pod without its volume"
    );

    let message = degraded_for(
        &clusters,
        "bad-image",
        "InstanceNotRunning",
        Duration::from_secs(90),
    )
    .await;
    assert!(message.contains("bad-image-1: container"), "{message}");
    assert!(
        message.contains("ErrImagePull") || message.contains("ImagePullBackOff"),
        "{message}"
    );
    let instance = clusters
        .get("bad-image")
        .await
        .unwrap()
        .status
        .unwrap()
        .instances;
    assert!(
        instance[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("registry.invalid/postgres:none")),
        "the instance says why: {instance:?}"
    );

    // One Warning per problem, however many reconciles saw it.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let storage_warnings = warnings(&client, &ns, "no-class", "StorageClassNotFound").await;
    assert_eq!(storage_warnings.len(), 1, "{storage_warnings:?}");
    assert!(storage_warnings[0].contains(&class), "{storage_warnings:?}");
    assert!(
        !warnings(&client, &ns, "bad-image", "InstanceNotRunning")
            .await
            .is_empty()
    );

    // Fixed: the class appears (same provisioner as the default one); the volume and the pod
    // follow, and the problem clears.
    let classes: Api<StorageClass> = Api::all(client.clone());
    let default = classes
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|c| {
            c.metadata.annotations.as_ref().is_some_and(|a| {
                a.get("storageclass.kubernetes.io/is-default-class")
                    .map(String::as_str)
                    == Some("true")
            })
        })
        .expect("a default StorageClass");
    let late: StorageClass = serde_json::from_value(json!({
        "metadata": {"name": class},
        "provisioner": default.provisioner,
        "volumeBindingMode": "WaitForFirstConsumer",
    }))
    .unwrap();
    classes.create(&PostParams::default(), &late).await.unwrap();
    eventually(
        Duration::from_secs(60),
        "no-class's volume and pod",
        || async {
            let claims = pvcs.list(&selector).await.ok()?.items.len();
            let pods = pods.list(&selector).await.ok()?.items.len();
            (claims == 1 && pods == 1).then_some(())
        },
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(60),
        "the StorageClass problem cleared",
        || async {
            condition(&clusters.get("no-class").await.ok()?, "Ready")
                .filter(|c| c.0 != "StorageClassNotFound")
        },
    )
    .await
    .unwrap();
    let _ = classes.delete(&class, &DeleteParams::default()).await;
}

/// A volume with a real size (the local provisioner's `enforced` capacity) filled by the
/// application: `VolumeFull` in Degraded, the instance's reason, and a Warning Event. Then
/// `storage.size` is raised: refused as a Condition while the StorageClass does not allow
/// expansion (the claim untouched), carried out once it does, and the database takes writes
/// again.
#[tokio::test]
async fn a_full_volume_is_a_condition_and_growing_the_storage_fixes_it() {
    // Sized volumes come from the local control plane's provisioner.
    let Some(test) = DatabaseTest::start("pg-full-volume", 1).await else {
        return;
    };
    let (client, ns, clusters) = (&test.client, &test.ns, &test.clusters);
    let class = format!("{ns}-sized");
    let classes: Api<StorageClass> = Api::all(client.clone());
    let sized: StorageClass = serde_json::from_value(json!({
        "metadata": {"name": class},
        "provisioner": PROVISIONER,
        "parameters": {CAPACITY_PARAMETER: "enforced"},
        "volumeBindingMode": "WaitForFirstConsumer",
        "allowVolumeExpansion": false,
    }))
    .unwrap();
    classes
        .create(&PostParams::default(), &sized)
        .await
        .unwrap();
    let object: DatabaseCluster = serde_json::from_value(json!({
        "apiVersion": "bulwark.dev/v1alpha1", "kind": "DatabaseCluster",
        "metadata": {"name": "full"},
        "spec": {"instances": 1, "storage": {"size": "160Mi", "storageClassName": class}},
    }))
    .unwrap();
    clusters
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    let db = Database::new(clusters.clone(), "full");
    db.healthy(Duration::from_secs(120)).await.unwrap();

    // Rows of 1 kB (stored as they are: under the size PostgreSQL compresses) until a write fails.
    let endpoint = db.application(client, ns).await;
    // The Service's endpoints may trail the status by a moment.
    let app = eventually(
        Duration::from_secs(20),
        "a session through full-rw",
        || async { endpoint.connect().await.ok() },
    )
    .await
    .unwrap();
    app.batch_execute("CREATE TABLE filler (t text)")
        .await
        .unwrap();
    let mut refused = None;
    for _ in 0..20 {
        let insert = app
            .batch_execute(
                "INSERT INTO filler SELECT repeat(md5(random()::text), 32) FROM generate_series(1, 20000)",
            )
            .await;
        if let Err(e) = insert {
            refused = Some(e);
            break;
        }
    }
    let refused = refused.expect("160 MiB cannot hold 400 MB of rows");
    println!("the database refused a write: {refused:?}");

    let message = degraded_for(clusters, "full", "VolumeFull", Duration::from_secs(30)).await;
    assert!(
        message.contains("full-1: its volume of 160 MiB is full"),
        "{message}"
    );
    let status = clusters.get("full").await.unwrap().status.unwrap();
    assert!(
        status.instances[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("is full")),
        "the instance says why: {:?}",
        status.instances
    );
    let full_warnings = warnings(client, ns, "full", "VolumeFull").await;
    assert!(
        full_warnings.iter().any(|w| w.contains("160 MiB is full")),
        "{full_warnings:?}"
    );

    let grow = Patch::Merge(json!({"spec": {"storage": {"size": "480Mi"}}}));
    clusters
        .patch("full", &PatchParams::default(), &grow)
        .await
        .unwrap();
    let message = degraded_for(
        clusters,
        "full",
        "VolumeNotExpandable",
        Duration::from_secs(30),
    )
    .await;
    // This release watches one namespace and cannot read StorageClasses: the API server's
    // refusal of the claim's patch is what it reports.
    let refused_growth = |m: &str| {
        m.contains("160Mi")
            && m.contains("480Mi")
            && (m.contains("does not allow volume expansion") || m.contains("must support resize"))
    };
    assert!(refused_growth(&message), "{message}");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let requested = |claim: PersistentVolumeClaim| {
        claim
            .spec?
            .resources?
            .requests?
            .get("storage")
            .map(|q| q.0.clone())
    };
    assert_eq!(
        requested(claims.get("full-1").await.unwrap()).as_deref(),
        Some("160Mi"),
        "the claim is left as it was"
    );

    let expandable = Patch::Merge(json!({"allowVolumeExpansion": true}));
    classes
        .patch(&class, &PatchParams::default(), &expandable)
        .await
        .unwrap();
    let grown = eventually(
        Duration::from_secs(60),
        "the claim grown to 480Mi",
        || async {
            let claim = claims.get("full-1").await.ok()?;
            let capacity = claim.status.clone()?.capacity?.get("storage")?.0.clone();
            (requested(claim).as_deref() == Some("480Mi") && capacity == "480Mi").then_some(())
        },
    )
    .await;
    if let Err(e) = grown {
        let claim = claims.get("full-1").await.map(|c| (c.spec, c.status));
        let degraded = condition(&clusters.get("full").await.unwrap(), "Degraded");
        panic!("{e}: claim {claim:?}; the cluster's Degraded: {degraded:?}");
    }
    db.healthy(Duration::from_secs(120)).await.unwrap();
    // The instance reports its volume's size with its status, polled every second.
    let cleared = eventually(Duration::from_secs(30), "VolumeFull cleared", || async {
        let degraded = condition(&clusters.get("full").await.ok()?, "Degraded");
        degraded
            .as_ref()
            .is_none_or(|c| c.0 != "VolumeFull" && c.0 != "VolumeNotExpandable")
            .then_some(())
    })
    .await;
    if let Err(e) = cleared {
        let degraded = condition(&clusters.get("full").await.unwrap(), "Degraded");
        panic!("{e}: {degraded:?}");
    }
    let app = eventually(
        Duration::from_secs(30),
        "a session through full-rw after the growth",
        || async { endpoint.connect().await.ok() },
    )
    .await
    .unwrap();
    app.batch_execute(
        "INSERT INTO filler SELECT repeat(md5(random()::text), 32) FROM generate_series(1, 20000)",
    )
    .await
    .expect("the grown volume takes another 20 MB");
    let refusals = warnings(client, ns, "full", "VolumeNotExpandable").await;
    assert!(refusals.iter().any(|w| refused_growth(w)), "{refusals:?}");
    let growing = events(client, ns, "full", "VolumeExpanding", "Normal").await;
    assert!(
        growing
            .iter()
            .any(|e| e.contains("full-1's volume grows from 160Mi to 480Mi")),
        "{growing:?}"
    );
    let _ = classes.delete(&class, &DeleteParams::default()).await;
}
