//! DNS plan enactment end to end: the real control plane, operator replicas, a real BIND9, and a
//! poller that queries the authoritative server continuously. The operator runs as the Helm
//! chart's pods (its ServiceAccount and RBAC), except where a test needs test-only flags on a
//! host process: the slow enactor and the unfenced variant.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bulwark_controllers::dns::provider::DnsProvider;
use bulwark_controllers::dns::rfc2136::Rfc2136;
use bulwark_controllers::dns::runtime::TSIG_SECRET_TTL;
use bulwark_crds::dns::{DnsEndpoint, DnsPlan, DnsZone, PlanPhase, RRSet, RecordType};
use bulwark_e2e::bind::Bind;
use bulwark_e2e::chart::Release;
use bulwark_e2e::dns::{apply_endpoint, create_zone, plans, set_tsig_secret, start_operators};
use bulwark_e2e::operator::{Operator, start_operator};
use bulwark_e2e::{cluster, eventually, install_crds};
use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};

fn log_dir(test: &str) -> std::path::PathBuf {
    std::env::temp_dir().join("bulwark-e2e-logs").join(test)
}

fn a(values: &[&str]) -> Vec<RRSet> {
    vec![RRSet {
        record_type: RecordType::A,
        ttl: 30,
        values: values.iter().map(|v| v.to_string()).collect(),
    }]
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| v.to_string()).collect()
}

/// The endpoint's Ready condition as (status, reason, message).
async fn ready(api: &Api<DnsEndpoint>, name: &str) -> Option<(String, String, String)> {
    let endpoint = api.get(name).await.ok()?;
    let status = endpoint.status?;
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn wait_for_answer(dns: &impl DnsProvider, fqdn: &str, want: &[RRSet], what: &str) {
    eventually(Duration::from_secs(30), what, || async {
        (dns.served_records(fqdn).await.ok()? == want).then_some(())
    })
    .await
    .unwrap();
}

async fn wait_for_ready(api: &Api<DnsEndpoint>, name: &str, status: &str, reason: &str) -> String {
    eventually(
        Duration::from_secs(30),
        &format!("{name} Ready={status} reason {reason}"),
        || async {
            let (s, r, message) = ready(api, name).await?;
            (s == status && r == reason).then_some(message)
        },
    )
    .await
    .unwrap()
}

/// The generation of the name's fence at the server.
async fn generation_at(
    dns: &impl DnsProvider,
    fqdn: &str,
) -> Result<Option<u64>, bulwark_controllers::dns::provider::ProviderError> {
    Ok(dns.read_fence(fqdn).await?.map(|f| f.generation))
}

/// The owner the name's fence records at the server.
async fn owner_at(dns: &impl DnsProvider, fqdn: &str) -> Option<String> {
    dns.read_fence(fqdn).await.unwrap()?.owner
}

/// Deletes an endpoint and waits until its finalizer has let it go.
async fn delete_endpoint(endpoints: &Api<DnsEndpoint>, name: &str) {
    endpoints.delete(name, &Default::default()).await.unwrap();
    eventually(
        Duration::from_secs(20),
        &format!("{name} deleted"),
        || async { endpoints.get_opt(name).await.ok()?.is_none().then_some(()) },
    )
    .await
    .unwrap();
}

/// Reasons of the Events recorded about `name` in `ns`.
async fn event_reasons(client: &kube::Client, ns: &str, name: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    let params = ListParams::default().fields(&format!("involvedObject.name={name}"));
    events
        .list(&params)
        .await
        .map(|list| list.items.into_iter().filter_map(|e| e.reason).collect())
        .unwrap_or_default()
}

/// Names of the release's operator pods (what plans record as `enactedBy`).
async fn pod_names(release: &Release, client: &kube::Client) -> Vec<String> {
    release
        .pods(client)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect()
}

/// One answer of the authoritative server: the addresses it served and the fence beside them.
struct Sample {
    values: Vec<String>,
    fence: Option<u64>,
}

/// Queries the authoritative server in a loop, as a client would, until finished.
struct Poller {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

impl Poller {
    fn start(dns: Rfc2136, fqdn: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let fqdn = fqdn.to_owned();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let (Ok(answer), Ok(fence)) = (
                        dns.served_records(&fqdn).await,
                        generation_at(&dns, &fqdn).await,
                    ) {
                        let values = answer.into_iter().flat_map(|r| r.values).collect();
                        samples.push(Sample { values, fence });
                    }
                }
                samples
            }
        });
        Poller { stop, task }
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// What every DNS test starts from: the control plane with Bulwark's CRDs, a namespace of its
/// own, a BIND9 serving `<zone>.test`, and a DnsZone `zone` for it.
struct TestBed {
    client: kube::Client,
    ns: String,
    bind: Bind,
    dns: Rfc2136,
}

async fn test_bed(test: &str, zone: &str) -> TestBed {
    let cluster = cluster();
    let client = cluster.client().await;
    install_crds(&client).await.unwrap();
    let ns = cluster.namespace(test).await;
    let bind = Bind::start(&format!("{zone}.test")).unwrap();
    create_zone(&client, &ns, zone, &bind).await.unwrap();
    let dns = bind.provider();
    TestBed {
        client,
        ns,
        bind,
        dns,
    }
}

/// Applies the one EndpointSlice of Service `web`: `address`, ready or not.
async fn set_web_slice(slices: &Api<EndpointSlice>, address: &str, ready: bool) {
    let slice = serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": ready}}]});
    slices
        .patch(
            "web-1",
            &PatchParams::apply("bulwark-e2e").force(),
            &Patch::Apply(slice),
        )
        .await
        .unwrap();
}

/// Starts a slow enactor (stalling `stall` before each write) with `args`, and waits until it
/// leads: started before the others, it enacts each new plan first and its writes land last.
async fn start_slow_leader(ns: &str, test: &str, stall: &str, args: &[&str]) -> Operator {
    let mut args = args.to_vec();
    let stall = format!("--chaos-slow-enactor={stall}");
    args.push(&stall);
    let slow = start_operator(
        &cluster().kubeconfig,
        ns,
        &format!("{ns}-slow-enactor"),
        &args,
        &log_dir(test),
    )
    .unwrap();
    eventually(
        Duration::from_secs(30),
        "the slow enactor leads",
        || async {
            let (_, metrics) = slow.get("/metrics").await.ok()?;
            metrics.contains("\nbulwark_leader 1\n").then_some(())
        },
    )
    .await
    .unwrap();
    slow
}

async fn point_api_at(client: &kube::Client, ns: &str, addresses: &[&str]) {
    let fqdn = "api.converge.test";
    apply_endpoint(client, ns, "api", "converge", fqdn, &strings(addresses))
        .await
        .unwrap();
}

#[tokio::test]
async fn endpoints_converge_and_every_fault_surfaces_then_heals() {
    let TestBed {
        client,
        ns,
        mut bind,
        dns,
    } = test_bed("dns-converge", "converge").await;
    let cluster = cluster();
    let release =
        Release::install_operator(&cluster.kubeconfig, &ns, 3, &["dns.resync=1s"]).unwrap();
    let operator_pods = pod_names(&release, &client).await;
    let endpoints: Api<DnsEndpoint> = Api::namespaced(client.clone(), &ns);
    let fqdn = "api.converge.test";

    // A new endpoint: plan 1 goes live and is verified at the server.
    let started = Instant::now();
    point_api_at(&client, &ns, &["10.0.0.2", "10.0.0.1"]).await;
    wait_for_answer(&dns, fqdn, &a(&["10.0.0.1", "10.0.0.2"]), "plan 1 served").await;
    println!(
        "first plan served {:?} after the DnsEndpoint was created",
        started.elapsed()
    );
    wait_for_ready(&endpoints, "api", "True", "Live").await;
    let plan1 = &plans(&client, &ns, "api").await.unwrap()[0];
    assert_eq!(plan1.spec.generation, 1);
    assert!(plan1.spec.minted_at.is_some());
    assert!(
        plan1.status.is_none(),
        "a plan no enactor refused is never written"
    );
    let status = endpoints.get("api").await.unwrap().status.unwrap();
    assert_eq!(status.live_generation, Some(1));
    assert!(
        status.verified_at.is_some(),
        "Ready=True follows verification"
    );
    let enacted_by = status.enacted_by.unwrap();
    assert!(
        operator_pods.contains(&enacted_by),
        "enacted by {enacted_by}, not one of the operator pods {operator_pods:?}"
    );

    // A change mints plan 2; the endpoint records it live, with plan 2's own facts.
    point_api_at(&client, &ns, &["10.0.0.3"]).await;
    wait_for_answer(&dns, fqdn, &a(&["10.0.0.3"]), "plan 2 served").await;
    assert_eq!(generation_at(&dns, fqdn).await.unwrap(), Some(2));
    let status = eventually(
        Duration::from_secs(10),
        "status latest 2, live 2, verified",
        || async {
            let status = endpoints.get("api").await.ok()?.status?;
            (status.latest_plan_generation == 2
                && status.live_generation == Some(2)
                && status.verified_at.is_some())
            .then_some(status)
        },
    )
    .await
    .unwrap();
    assert!(
        status
            .enacted_by
            .is_some_and(|by| operator_pods.contains(&by)),
        "plan 2 was applied by one of the operator pods"
    );
    assert!(
        plans(&client, &ns, "api")
            .await
            .unwrap()
            .iter()
            .all(|p| p.status.is_none()),
        "superseding plan 1 cost no write on it"
    );

    // Unknown zone and a name outside the zone: Ready=False says which, nothing is written.
    let endpoint_in = |zone: &str, fqdn: &str| {
        serde_json::json!({"apiVersion": "bulwark.dev/v1alpha1", "kind": "DnsEndpoint",
            "metadata": {"name": fqdn.split('.').next().unwrap()},
            "spec": {"zoneRef": zone, "fqdn": fqdn, "targets": [{"address": "10.0.0.9"}]}})
    };
    for (zone, name) in [
        ("nope", "lost.converge.test"),
        ("converge", "outside.elsewhere.test"),
    ] {
        endpoints
            .patch(
                name.split('.').next().unwrap(),
                &PatchParams::apply("bulwark-e2e"),
                &Patch::Apply(endpoint_in(zone, name)),
            )
            .await
            .unwrap();
    }
    let message = wait_for_ready(&endpoints, "lost", "False", "ZoneNotFound").await;
    assert!(message.contains("\"nope\""), "{message}");
    let message = wait_for_ready(&endpoints, "outside", "False", "FqdnOutsideZone").await;
    assert!(
        message.contains("not inside zone converge.test"),
        "{message}"
    );
    eventually(
        Duration::from_secs(10),
        "outside's plan Rejected",
        || async {
            let plan = plans(&client, &ns, "outside").await.ok()?.pop()?;
            (plan.status?.phase == Some(PlanPhase::Rejected)).then_some(())
        },
    )
    .await
    .unwrap();

    // Wrong TSIG secret: the server's NOTAUTH/BADSIG is quoted, the old answer stays.
    set_tsig_secret(&client, &ns, "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA==")
        .await
        .unwrap();
    // Enactors use a key read from the Secret up to TSIG_SECRET_TTL ago.
    tokio::time::sleep(TSIG_SECRET_TTL + Duration::from_secs(1)).await;
    point_api_at(&client, &ns, &["10.0.0.4"]).await;
    let message = wait_for_ready(&endpoints, "api", "False", "ServerRejected").await;
    println!("wrong key: {message}");
    assert!(
        message.contains("NOTAUTH") && message.contains("BADSIG"),
        "{message}"
    );
    // The zone itself says so too (the zone prober's signed SOA query).
    let zones: Api<DnsZone> = Api::namespaced(client.clone(), &ns);
    let zone_ready = |status: &'static str| {
        let zones = zones.clone();
        async move {
            eventually(
                Duration::from_secs(30),
                &format!("zone Ready={status}"),
                || async {
                    let zone = zones.get("converge").await.ok()?;
                    let ready = zone
                        .status?
                        .conditions
                        .into_iter()
                        .find(|c| c.type_ == "Ready")?;
                    (ready.status == status).then(|| format!("{}: {}", ready.reason, ready.message))
                },
            )
            .await
            .unwrap()
        }
    };
    let message = zone_ready("False").await;
    println!("zone with a wrong key: Ready=False {message}");
    assert!(
        message.starts_with("ServerRejected") && message.contains("BADSIG"),
        "{message}"
    );
    assert_eq!(dns.served_records(fqdn).await.unwrap(), a(&["10.0.0.3"]));
    set_tsig_secret(&client, &ns, &bind.secret).await.unwrap();
    wait_for_answer(
        &dns,
        fqdn,
        &a(&["10.0.0.4"]),
        "plan 3 after the key is fixed",
    )
    .await;
    wait_for_ready(&endpoints, "api", "True", "Live").await;
    let message = zone_ready("True").await;
    println!("zone with the right key: Ready=True {message}");
    assert!(message.starts_with("Reachable"), "{message}");

    // Server down: ServerUnreachable; it converges once the server is back.
    bind.stop();
    point_api_at(&client, &ns, &["10.0.0.5"]).await;
    let message = wait_for_ready(&endpoints, "api", "False", "ServerUnreachable").await;
    println!("server down: {message}");
    bind.restart().unwrap();
    wait_for_answer(&dns, fqdn, &a(&["10.0.0.5"]), "plan 4 after the restart").await;

    // Restored from an old backup (no records, no fence): the resync repairs it.
    let live_generation = dns.read_fence(fqdn).await.unwrap();
    // (That the restore really empties the zone is asserted in tests/dns_provider.rs; with a
    // 1 s resync the repair can land before this test could look.)
    bind.restore_empty_zone().unwrap();
    wait_for_answer(
        &dns,
        fqdn,
        &a(&["10.0.0.5"]),
        "records repaired after a restore",
    )
    .await;
    assert_eq!(dns.read_fence(fqdn).await.unwrap(), live_generation);

    // Deleting the endpoint removes its records and fence from the server before it goes.
    endpoints
        .delete("outside", &Default::default())
        .await
        .unwrap();
    delete_endpoint(&endpoints, "api").await;
    assert!(dns.served_records(fqdn).await.unwrap().is_empty());
    let tombstone = dns.read_fence(fqdn).await.unwrap().unwrap();
    assert!(
        tombstone.removed && tombstone.generation == live_generation.unwrap().generation,
        "a tombstone fence stays: {tombstone:?}"
    );

    // A Service target follows EndpointSlice readiness; with none ready the answer stays.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let apply = PatchParams::apply("bulwark-e2e").force();
    set_web_slice(&slices, "10.9.0.1", true).await;
    endpoints
        .patch(
            "web",
            &apply,
            &Patch::Apply(
                serde_json::json!({"apiVersion": "bulwark.dev/v1alpha1", "kind": "DnsEndpoint",
                "metadata": {"name": "web"},
                "spec": {"zoneRef": "converge", "fqdn": "web.converge.test", "ttl": 30,
                         "targets": [{"serviceRef": {"name": "web"}}]}}),
            ),
        )
        .await
        .unwrap();
    wait_for_answer(
        &dns,
        "web.converge.test",
        &a(&["10.9.0.1"]),
        "Service target served",
    )
    .await;
    set_web_slice(&slices, "10.9.0.1", false).await;
    let degraded = eventually(Duration::from_secs(20), "web Degraded", || async {
        let status = endpoints.get("web").await.ok()?.status?;
        let c = status.conditions.iter().find(|c| c.type_ == "Degraded")?;
        (c.status == "True").then(|| format!("{}: {}", c.reason, c.message))
    })
    .await
    .unwrap();
    println!("no ready target: {degraded}");
    assert!(
        degraded.contains("NoHealthyTarget") && degraded.contains("Service web"),
        "{degraded}"
    );
    assert_eq!(
        dns.served_records("web.converge.test").await.unwrap(),
        a(&["10.9.0.1"]),
        "the last non-empty plan stays live"
    );
}

/// Defect found by a user: a Service-backed endpoint loses every ready pod (the last plan stays
/// live), then its live plan is deleted by hand. The old recovery recreated that generation with
/// no records and "repaired" the name to empty. The same path ran when a planner died between
/// reserving a generation and creating its plan. A poller queries BIND throughout.
#[tokio::test]
async fn a_deleted_live_plan_or_a_lost_reservation_never_empties_the_name() {
    let TestBed {
        client,
        ns,
        bind,
        dns,
    } = test_bed("dns-recover", "recover").await;
    let cluster = cluster();
    let release =
        Release::install_operator(&cluster.kubeconfig, &ns, 2, &["dns.resync=1s"]).unwrap();
    let endpoints: Api<DnsEndpoint> = Api::namespaced(client.clone(), &ns);
    let plan_api: Api<DnsPlan> = Api::namespaced(client.clone(), &ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let fqdn = "web.recover.test";
    let apply = PatchParams::apply("bulwark-e2e").force();
    set_web_slice(&slices, "10.9.0.1", true).await;
    endpoints
        .patch(
            "web",
            &apply,
            &Patch::Apply(serde_json::json!({"apiVersion": "bulwark.dev/v1alpha1",
                "kind": "DnsEndpoint", "metadata": {"name": "web"},
                "spec": {"zoneRef": "recover", "fqdn": fqdn, "ttl": 30,
                         "targets": [{"serviceRef": {"name": "web"}}]}})),
        )
        .await
        .unwrap();
    wait_for_answer(&dns, fqdn, &a(&["10.9.0.1"]), "plan 1 served").await;
    wait_for_ready(&endpoints, "web", "True", "Live").await;
    let poller = Poller::start(bind.provider(), fqdn);

    // Every pod goes away: plan 1 stays live.
    set_web_slice(&slices, "10.9.0.1", false).await;
    eventually(Duration::from_secs(20), "web Degraded", || async {
        let status = endpoints.get("web").await.ok()?.status?;
        let c = status.conditions.iter().find(|c| c.type_ == "Degraded")?;
        (c.status == "True").then_some(())
    })
    .await
    .unwrap();

    // A planner reserved generation 2 and died before creating its plan.
    endpoints
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"latestPlanGeneration": 2}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let names: Vec<u64> = plans(&client, &ns, "web")
        .await
        .unwrap()
        .iter()
        .map(|p| p.spec.generation)
        .collect();
    assert_eq!(
        dns.served_records(fqdn).await.unwrap(),
        a(&["10.9.0.1"]),
        "a lost reservation must not empty the name"
    );
    assert_eq!(
        names,
        vec![1],
        "nothing to mint while plan 1 is live and intact"
    );

    // The live plan is deleted by hand: generation 3 carries what the server serves.
    plan_api.delete("web-1", &Default::default()).await.unwrap();
    let recovered = eventually(Duration::from_secs(20), "plan 3 live", || async {
        let live = endpoints.get("web").await.ok()?.status?.live_generation;
        let plan = plans(&client, &ns, "web").await.ok()?.pop()?;
        (plan.spec.generation == 3 && live == Some(3)).then_some(plan)
    })
    .await
    .unwrap();
    assert_eq!(recovered.spec.rrsets, a(&["10.9.0.1"]));
    eventually(Duration::from_secs(10), "fence gen=3", || async {
        (generation_at(&dns, fqdn).await.ok()? == Some(3)).then_some(())
    })
    .await
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "LivePlanRecovered Event",
        || async {
            event_reasons(&client, &ns, "web")
                .await
                .contains(&"LivePlanRecovered".to_string())
                .then_some(())
        },
    )
    .await
    .unwrap();

    // Plans the planner could not have minted are refused, not enacted: an empty one at the
    // reserved generation, and one above it. The admission policy admits plans only from
    // Bulwark's ServiceAccount, so they are written as that account (a buggy or compromised
    // planner): the enactors' own check is what stops them.
    let forger: Api<DnsPlan> = Api::namespaced(release.client_as_operator().await.unwrap(), &ns);
    let uid = endpoints.get("web").await.unwrap().metadata.uid;
    for (name, generation, rrsets) in [
        ("web-forged-empty", 3, serde_json::json!([])),
        (
            "web-forged-future",
            9,
            serde_json::json!([{"recordType": "A", "ttl": 30, "values": ["10.6.6.6"]}]),
        ),
    ] {
        let forged: DnsPlan = serde_json::from_value(serde_json::json!({
            "apiVersion": "bulwark.dev/v1alpha1", "kind": "DnsPlan",
            "metadata": {"name": name, "labels": {"bulwark.dev/endpoint": "web"},
                "ownerReferences": [{"apiVersion": "bulwark.dev/v1alpha1", "kind": "DnsEndpoint",
                    "name": "web", "uid": uid, "controller": true}]},
            "spec": {"endpointRef": "web", "fqdn": fqdn, "generation": generation,
                "rrsets": rrsets, "contentHash": "0".repeat(64)}
        }))
        .unwrap();
        forger.create(&Default::default(), &forged).await.unwrap();
    }
    for (name, why) in [
        ("web-forged-empty", "allowEmpty"),
        ("web-forged-future", "never reserved"),
    ] {
        let message = eventually(
            Duration::from_secs(20),
            &format!("{name} Rejected"),
            || async {
                let status = plan_api.get(name).await.ok()?.status?;
                (status.phase == Some(PlanPhase::Rejected))
                    .then_some(status.message.unwrap_or_default())
            },
        )
        .await
        .unwrap();
        println!("{name}: Rejected: {message}");
        assert!(message.contains(why), "{message}");
    }
    assert_eq!(generation_at(&dns, fqdn).await.unwrap(), Some(3));

    // Pods come back with a new address: generation 4.
    set_web_slice(&slices, "10.9.0.2", true).await;
    wait_for_answer(&dns, fqdn, &a(&["10.9.0.2"]), "plan 4 served").await;
    let samples = poller.finish().await;
    let empty = samples.iter().filter(|s| s.values.is_empty()).count();
    println!(
        "recovery: {} polls of {fqdn}, {empty} empty answers; fences seen {:?}",
        samples.len(),
        samples
            .iter()
            .filter_map(|s| s.fence)
            .collect::<std::collections::BTreeSet<_>>()
    );
    assert!(
        samples.len() > 100,
        "the poller must have watched the whole run"
    );
    assert_eq!(empty, 0, "the name must never answer empty");
    // Plan 4 followed a settled endpoint: minted without a reservation, recorded when live.
    eventually(
        Duration::from_secs(10),
        "live generation 4, latest 4",
        || async {
            let status = endpoints.get("web").await.ok()?.status?;
            (status.live_generation == Some(4) && status.latest_plan_generation == 4).then_some(())
        },
    )
    .await
    .unwrap();
}

/// Bulwark writes only names it owns: records it did not write are a Conflict until the endpoint
/// adopts them, a second endpoint on an owned name is a Conflict and the two never fight, and a
/// deleted endpoint leaves a tombstone that releases the name.
#[tokio::test]
async fn names_with_records_bulwark_did_not_write_or_another_owner_are_conflicts() {
    let TestBed {
        client,
        ns,
        bind,
        dns,
    } = test_bed("dns-owner", "owner").await;
    let cluster = cluster();
    let _release = Release::install_operator(&cluster.kubeconfig, &ns, 2, &[]).unwrap();
    let endpoints: Api<DnsEndpoint> = Api::namespaced(client.clone(), &ns);
    let fqdn = "legacy.owner.test";
    bind.nsupdate(&["add legacy.owner.test 300 A 192.0.2.10"])
        .unwrap();
    let hand_written = vec![RRSet {
        ttl: 300,
        ..a(&["192.0.2.10"])[0].clone()
    }];
    let apply = |name: &'static str, address: &'static str, adopt: bool| {
        let endpoints = endpoints.clone();
        async move {
            let endpoint = serde_json::json!({"apiVersion": "bulwark.dev/v1alpha1",
                "kind": "DnsEndpoint", "metadata": {"name": name},
                "spec": {"zoneRef": "owner", "fqdn": fqdn, "ttl": 30, "adopt": adopt,
                         "targets": [{"address": address}]}});
            endpoints
                .patch(
                    name,
                    &PatchParams::apply("bulwark-e2e").force(),
                    &Patch::Apply(endpoint),
                )
                .await
                .unwrap();
        }
    };

    apply("first", "10.3.0.1", false).await;
    let message = wait_for_ready(&endpoints, "first", "False", "Conflict").await;
    println!("records written by hand: Ready=False Conflict: {message}");
    assert!(
        message.contains("192.0.2.10") && message.contains("adopt"),
        "{message}"
    );
    assert_eq!(dns.served_records(fqdn).await.unwrap(), hand_written);
    assert_eq!(dns.read_fence(fqdn).await.unwrap(), None);

    apply("first", "10.3.0.1", true).await;
    wait_for_answer(&dns, fqdn, &a(&["10.3.0.1"]), "adopted").await;
    let uid = endpoints.get("first").await.unwrap().metadata.uid.unwrap();
    assert_eq!(owner_at(&dns, fqdn).await.as_ref(), Some(&uid));

    // A second endpoint on the same name: Conflict, even with adopt, and nothing changes.
    apply("second", "10.3.0.2", true).await;
    let message = wait_for_ready(&endpoints, "second", "False", "Conflict").await;
    println!("second endpoint on an owned name: {message}");
    assert!(message.contains(&uid), "{message}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(dns.served_records(fqdn).await.unwrap(), a(&["10.3.0.1"]));

    // The owner goes: its records go, a tombstone stays, and the name is free for the second.
    delete_endpoint(&endpoints, "first").await;
    let reasons = event_reasons(&client, &ns, "first").await;
    assert!(
        reasons.contains(&"RecordsRemoved".to_string()),
        "{reasons:?}"
    );
    apply("second", "10.3.0.3", true).await;
    wait_for_answer(
        &dns,
        fqdn,
        &a(&["10.3.0.3"]),
        "the second endpoint claims the name",
    )
    .await;
    let second = endpoints.get("second").await.unwrap().metadata.uid;
    assert_eq!(owner_at(&dns, fqdn).await, second);

    // Deleting with the abandon annotation releases the finalizer without touching the server.
    endpoints
        .patch(
            "second",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {
                "bulwark.dev/abandon-records": "true"}}})),
        )
        .await
        .unwrap();
    delete_endpoint(&endpoints, "second").await;
    assert_eq!(dns.served_records(fqdn).await.unwrap(), a(&["10.3.0.3"]));
    let reasons = event_reasons(&client, &ns, "second").await;
    assert!(
        reasons.contains(&"RecordsAbandoned".to_string()),
        "{reasons:?}"
    );
}

/// What the poller and the plan watcher saw while plans churned and one enactor was slow:
/// violation events, each counted once.
#[derive(Default, Debug)]
struct Observations {
    polls: usize,
    empty_answers: Vec<String>,
    regressions: Vec<String>,
    deletions_seen: usize,
    live_plan_deleted: Vec<String>,
}

impl Observations {
    /// NeverEmpty and NeverRegress over the poller's samples, in order.
    /// NeverEmpty and NeverRegress over the poller's samples, in order. Each is counted once
    /// per event (the answer going empty, or moving back from the sample before), not once per
    /// poll while it stays that way.
    fn judge(&mut self, samples: &[Sample], round_of: &HashMap<String, usize>) {
        self.polls = samples.len();
        let (mut previous_round, mut previous_fence, mut was_empty) = (0, 0, false);
        for sample in samples {
            if sample.values.is_empty() {
                if !was_empty {
                    self.empty_answers
                        .push(format!("no records (fence {:?})", sample.fence));
                }
                was_empty = true;
                continue;
            }
            was_empty = false;
            let round = sample
                .values
                .iter()
                .filter_map(|v| round_of.get(v))
                .max()
                .copied()
                .unwrap_or(0);
            if round < previous_round {
                self.regressions.push(format!(
                    "answer went back from round {previous_round} to round {round}"
                ));
            }
            previous_round = round;
            let fence = sample.fence.unwrap_or(0);
            if fence < previous_fence {
                self.regressions.push(format!(
                    "fence went back from gen={previous_fence} to gen={fence}"
                ));
            }
            previous_fence = fence;
        }
    }
}

/// Churns `rounds` plans through 3 operators, one of them a slow enactor, while a poller checks
/// NeverEmpty and NeverRegress on BIND's answers and a watcher checks NeverDeleteActive.
async fn churn_with_slow_enactor(test: &str, extra_args: &[&str], rounds: usize) -> Observations {
    let TestBed {
        client,
        ns,
        bind,
        dns,
    } = test_bed(test, test).await;
    let cluster = cluster();
    let fqdn = format!("api.{test}.test");
    let address = |i: usize| format!("10.77.{}.{}", i / 250, i % 250 + 1);
    let round_of: HashMap<String, usize> = (0..=rounds).map(|i| (address(i), i)).collect();

    let mut args = vec!["--dns-plan-retention=0", "--dns-resync=2s"];
    args.extend_from_slice(extra_args);
    // The slow enactor leads and stalls longer than the others leave a new plan to the
    // leader's (2 s): they enact it and newer ones meanwhile, so its writes land after theirs.
    let slow = start_slow_leader(&ns, test, "3s", &args).await;
    let mut operators =
        start_operators(&cluster.kubeconfig, &ns, 2, &args, &log_dir(test)).unwrap();
    operators.push(slow);

    apply_endpoint(&client, &ns, "api", test, &fqdn, &[address(0)])
        .await
        .unwrap();
    wait_for_answer(&dns, &fqdn, &a(&[&address(0)]), "the first plan").await;

    let poller = Poller::start(bind.provider(), &fqdn);
    let observations = Arc::new(std::sync::Mutex::new(Observations::default()));
    let deletions = {
        let (observations, dns, fqdn) = (observations.clone(), bind.provider(), fqdn.clone());
        let plans: Api<DnsPlan> = Api::namespaced(client.clone(), &ns);
        tokio::spawn(async move {
            // Watch errors are retried with backoff, so the watcher never ends silently.
            let mut events = watcher(plans, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(error) => {
                        println!("plan watch error (retrying): {error}");
                        continue;
                    }
                };
                if let watcher::Event::Delete(plan) = event {
                    observations.lock().unwrap().deletions_seen += 1;
                    // The fence only grows, so a later read that still shows (or is below) the
                    // deleted generation means the deleted plan was the live one.
                    let fence = generation_at(&dns, &fqdn).await.ok().flatten().unwrap_or(0);
                    if plan.spec.generation >= fence {
                        observations.lock().unwrap().live_plan_deleted.push(format!(
                            "plan {} deleted while the fence was gen={fence}",
                            plan.spec.generation
                        ));
                    }
                }
            }
        })
    };

    for round in 1..=rounds {
        apply_endpoint(&client, &ns, "api", test, &fqdn, &[address(round)])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Let the slow enactor's last stall play out, then let everything converge.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let converged = eventually(Duration::from_secs(20), "the last plan served", || async {
        (dns.served_records(&fqdn).await.ok()? == a(&[&address(rounds)])).then_some(())
    })
    .await;
    let samples = poller.finish().await;
    deletions.abort();
    let refused: u64 = futures::future::join_all(operators.iter().map(|o| o.get("/metrics")))
        .await
        .into_iter()
        .filter_map(|r| r.ok())
        .flat_map(|(_, body)| {
            body.lines()
                .filter_map(|l| l.strip_prefix("bulwark_dns_stale_writes_refused_total "))
                .filter_map(|v| v.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum();
    let mut observations = std::mem::take(&mut *observations.lock().unwrap());
    observations.judge(&samples, &round_of);
    println!(
        "{test}: {} polls; {} empty answers, {} regressions; {} plan deletions watched, {} of the live plan; stale writes refused by BIND: {refused}; converged: {}",
        observations.polls,
        observations.empty_answers.len(),
        observations.regressions.len(),
        observations.deletions_seen,
        observations.live_plan_deleted.len(),
        converged.is_ok(),
    );
    for line in observations
        .empty_answers
        .iter()
        .chain(&observations.regressions)
        .chain(&observations.live_plan_deleted)
        .take(10)
    {
        println!("  {line}");
    }
    if extra_args.is_empty() {
        converged.unwrap();
        assert!(
            refused > 0,
            "the slow enactor's stale writes must reach BIND and be refused"
        );
    }
    observations
}

#[tokio::test]
async fn fenced_enactors_never_regress_empty_or_delete_the_live_plan_under_a_slow_enactor() {
    let seen = churn_with_slow_enactor("fenced", &[], 40).await;
    assert!(
        seen.polls > 200,
        "the poller must have watched the whole run"
    );
    assert!(seen.empty_answers.is_empty(), "{:?}", seen.empty_answers);
    assert!(seen.regressions.is_empty(), "{:?}", seen.regressions);
    assert!(
        seen.deletions_seen > 0,
        "with retention 0 cleanup collects plans, and the watcher must have seen it do so"
    );
    assert!(
        seen.live_plan_deleted.is_empty(),
        "{:?}",
        seen.live_plan_deleted
    );
}

#[tokio::test]
async fn unfenced_enactors_let_the_poller_see_the_outage() {
    let seen = churn_with_slow_enactor("unfenced", &["--test-unfenced-enactment"], 40).await;
    assert!(
        !seen.regressions.is_empty() || !seen.empty_answers.is_empty(),
        "without fencing the slow enactor must regress or empty the answer: {seen:?}"
    );
}

/// A plan deleted before its endpoint recorded it live is minted again under the same generation
/// with the records of the moment. The slow enactor still holds the deleted plan; the other
/// replica enacts its successor while it stalls. The deleted plan's records are never served:
/// the fence carries which plan's records it guards, and only the generation's current object
/// (asked of the API server) may write over another's. Before, the slow enactor took the
/// successor's records for an edit and "repaired" the name back to its own.
#[tokio::test]
async fn a_plan_minted_again_under_its_generation_is_never_reverted_by_a_stale_enactor() {
    let test = "reminted";
    let TestBed {
        client,
        ns,
        bind,
        dns,
    } = test_bed(test, test).await;
    let cluster = cluster();
    let fqdn = format!("api.{test}.test");
    let plan_api: Api<DnsPlan> = Api::namespaced(client.clone(), &ns);
    let endpoints: Api<DnsEndpoint> = Api::namespaced(client.clone(), &ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let apply = PatchParams::apply("bulwark-e2e").force();
    // The slow enactor leads and stalls long after the other replica (which leaves a new plan to
    // the leader for 2 s) has enacted the successor.
    let stall = Duration::from_secs(20);
    let slow = start_slow_leader(&ns, test, "20s", &[]).await;
    let other = start_operators(&cluster.kubeconfig, &ns, 1, &[], &log_dir(test)).unwrap();

    let (first, deleted, successor) = ("10.78.0.1", "10.78.0.2", "10.78.0.3");
    set_web_slice(&slices, first, true).await;
    endpoints
        .patch(
            "api",
            &apply,
            &Patch::Apply(serde_json::json!({"apiVersion": "bulwark.dev/v1alpha1",
                "kind": "DnsEndpoint", "metadata": {"name": "api"},
                "spec": {"zoneRef": test, "fqdn": fqdn, "ttl": 30,
                         "targets": [{"serviceRef": {"name": "web"}}]}})),
        )
        .await
        .unwrap();
    wait_for_answer(&dns, &fqdn, &a(&[first]), "plan 1").await;
    eventually(Duration::from_secs(20), "plan 1 recorded live", || async {
        let status = endpoints.get("api").await.ok()?.status?;
        (status.live_generation == Some(1)).then_some(())
    })
    .await
    .unwrap();
    // The slow enactor's own pass over plan 1 (a stalled write, refused) must be over, or it
    // would still be busy with this endpoint when plan 2 comes.
    tokio::time::sleep(stall + Duration::from_secs(1)).await;

    let poller = Poller::start(bind.provider(), &fqdn);
    set_web_slice(&slices, deleted, true).await;
    let minted = eventually(Duration::from_secs(10), "plan 2 minted", || async {
        plan_api.get_opt("api-2").await.ok()?
    })
    .await
    .unwrap();
    assert_eq!(minted.spec.rrsets, a(&[deleted]));
    // Within the other replica's grace, before anyone enacted plan 2, and once the slow enactor
    // has picked it up: the target goes unready (nothing to mint while plan 1 stays live), then
    // plan 2 is deleted by hand.
    tokio::time::sleep(Duration::from_millis(300)).await;
    set_web_slice(&slices, deleted, false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    plan_api.delete("api-2", &Default::default()).await.unwrap();
    assert_eq!(
        dns.served_records(&fqdn).await.unwrap(),
        a(&[first]),
        "plan 2 was deleted before anyone enacted it"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A healthy target again: generation 2 is minted again, with its address.
    set_web_slice(&slices, successor, true).await;
    let again = eventually(Duration::from_secs(10), "plan 2 minted again", || async {
        let plan = plan_api.get_opt("api-2").await.ok()??;
        (plan.metadata.uid != minted.metadata.uid).then_some(plan)
    })
    .await
    .unwrap();
    assert_eq!(again.spec.rrsets, a(&[successor]));
    wait_for_answer(&dns, &fqdn, &a(&[successor]), "plan 2 minted again").await;
    // The slow enactor wakes with the deleted plan and finds its successor live.
    tokio::time::sleep(stall).await;
    let samples = poller.finish().await;
    let successor_from = samples
        .iter()
        .position(|s| s.values == [successor])
        .expect("the poller saw the successor served");
    let reverted = samples[successor_from..]
        .iter()
        .filter(|s| s.values != [successor])
        .count();
    let outdated = std::fs::read_to_string(log_dir(test).join(format!("{}.log", slow.identity)))
        .unwrap()
        .matches("this plan's object is gone: writing nothing")
        .count();
    println!(
        "{} polls, the successor served from poll {successor_from}; {reverted} answers other than the successor's after it; the slow enactor stood down {outdated} times",
        samples.len()
    );
    assert!(
        samples.iter().all(|s| s.values != [deleted]),
        "the deleted plan's records were served"
    );
    assert_eq!(reverted, 0, "the answer moved away from the successor");
    assert!(
        outdated > 0,
        "the slow enactor must have woken with the deleted plan and stood down"
    );
    assert_eq!(
        endpoints
            .get("api")
            .await
            .unwrap()
            .status
            .unwrap()
            .live_generation,
        Some(2)
    );
    drop(other);
}
