//! The RFC 2136 provider against a real BIND9: fenced writes are all-or-nothing at the server,
//! and every kind of refusal comes back as a specific error.

use bulwark_controllers::dns::fencing::{Fence, FenceGuard};
use bulwark_controllers::dns::provider::{DnsProvider, ProviderError, WriteOutcome};
use bulwark_crds::dns::{RRSet, RecordType};
use bulwark_e2e::bind::{Bind, KEY_NAME};

fn a(values: &[&str]) -> RRSet {
    RRSet {
        record_type: RecordType::A,
        ttl: 30,
        values: values.iter().map(|v| v.to_string()).collect(),
    }
}

const OWNER: &str = "uid-of-the-endpoint";
/// The content hash every plan here is written with (fences carry its first 16 digits).
const CONTENT: &str = "5c0f9e2d7b4a1c8e6f3d0b9a7c5e2f8d1a4b7c0e3f6a9d2c5b8e1f4a7d0c3b6e";

fn fence(generation: u64) -> Fence {
    Fence::live(generation, OWNER, CONTENT)
}

fn guard(expect: Option<u64>) -> Option<FenceGuard> {
    Some(FenceGuard {
        expect: expect.map(fence),
        name_unclaimed: false,
    })
}

async fn generation(dns: &impl DnsProvider, name: &str) -> Option<u64> {
    dns.read_fence(name).await.unwrap().map(|f| f.generation)
}

#[tokio::test]
async fn fenced_writes_apply_all_or_nothing_at_the_server() {
    let bind = Bind::start("fence.test").unwrap();
    let dns = bind.provider();
    let name = "api.fence.test";
    assert_eq!(generation(&dns, name).await, None);
    assert!(dns.served_records(name).await.unwrap().is_empty());

    let gen1 = vec![a(&["10.0.0.2", "10.0.0.1"])];
    assert_eq!(
        dns.write_plan(name, &fence(1), &gen1, guard(None).as_ref())
            .await
            .unwrap(),
        WriteOutcome::Applied
    );
    assert_eq!(generation(&dns, name).await, Some(1));
    assert_eq!(
        dns.served_records(name).await.unwrap(),
        vec![a(&["10.0.0.1", "10.0.0.2"])]
    );

    // A writer that read "no fence" before gen 1 landed is refused, and nothing changes.
    let stale = vec![a(&["192.0.2.66"])];
    assert_eq!(
        dns.write_plan(name, &fence(2), &stale, guard(None).as_ref())
            .await
            .unwrap(),
        WriteOutcome::FenceMismatch
    );
    // So is one that expects a fence value the server does not hold: another generation, or
    // this one with other records (the holder of a plan that was deleted and minted again).
    assert_eq!(
        dns.write_plan(name, &fence(3), &stale, guard(Some(2)).as_ref())
            .await
            .unwrap(),
        WriteOutcome::FenceMismatch
    );
    let other_content = Fence::live(1, OWNER, &"e".repeat(64));
    assert_eq!(
        dns.write_plan(
            name,
            &other_content,
            &stale,
            Some(&FenceGuard {
                expect: Some(other_content.clone()),
                name_unclaimed: false,
            })
        )
        .await
        .unwrap(),
        WriteOutcome::FenceMismatch
    );
    assert_eq!(dns.read_fence(name).await.unwrap(), Some(fence(1)));
    assert_eq!(generation(&dns, name).await, Some(1));
    assert_eq!(
        dns.served_records(name).await.unwrap(),
        vec![a(&["10.0.0.1", "10.0.0.2"])]
    );

    // The right prerequisite replaces every managed RRset, including switching to dual stack.
    let gen2 = vec![
        a(&["10.0.0.3"]),
        RRSet {
            record_type: RecordType::AAAA,
            ttl: 30,
            values: vec!["2001:db8::3".into()],
        },
    ];
    assert_eq!(
        dns.write_plan(name, &fence(2), &gen2, guard(Some(1)).as_ref())
            .await
            .unwrap(),
        WriteOutcome::Applied
    );
    assert_eq!(dns.served_records(name).await.unwrap(), gen2);
    assert_eq!(generation(&dns, name).await, Some(2));

    // The unfenced strategy's unconditional write does regress the server: what fencing stops.
    dns.write_plan(name, &fence(1), &gen1, None).await.unwrap();
    assert_eq!(generation(&dns, name).await, Some(1));
    dns.delete_records(name, &gen1).await.unwrap();
    assert!(dns.served_records(name).await.unwrap().is_empty());
}

#[tokio::test]
async fn refusals_name_the_cause_and_change_nothing() {
    let mut bind = Bind::start("faults.test").unwrap();
    let good = bind.provider();
    let name = "www.faults.test";
    let records = vec![a(&["10.1.0.1"])];
    good.write_plan(name, &fence(1), &records, guard(None).as_ref())
        .await
        .unwrap();

    let wrong_secret = bind.provider_with(&bind.zone, KEY_NAME, "c2VjcmV0LXRoYXQtaXMtd3Jvbmc=");
    let error = wrong_secret
        .write_plan(
            name,
            &fence(2),
            &[a(&["192.0.2.1"])],
            guard(Some(1)).as_ref(),
        )
        .await
        .unwrap_err();
    println!("wrong secret: {error}");
    assert!(
        matches!(&error, ProviderError::Rejected { rcode, detail } if rcode == "NOTAUTH" && detail.contains("BADSIG")),
        "{error}"
    );

    let unknown_key = bind.provider_with(&bind.zone, "no-such-key", &bind.secret);
    let error = unknown_key
        .write_plan(
            name,
            &fence(2),
            &[a(&["192.0.2.1"])],
            guard(Some(1)).as_ref(),
        )
        .await
        .unwrap_err();
    println!("unknown key: {error}");
    assert!(error.to_string().contains("BADKEY"), "{error}");

    let error = good
        .write_plan(
            "www.elsewhere.test",
            &fence(2),
            &records,
            guard(None).as_ref(),
        )
        .await
        .unwrap_err();
    println!("outside the zone: {error}");
    assert!(
        matches!(&error, ProviderError::Config(m) if m.contains("outside zone faults.test")),
        "{error}"
    );

    // A zone this server does not serve: the server's own refusal comes back.
    let foreign = bind.provider_with("other.test", KEY_NAME, &bind.secret);
    let error = foreign
        .write_plan("www.other.test", &fence(1), &records, guard(None).as_ref())
        .await
        .unwrap_err();
    println!("zone not served: {error}");
    assert!(matches!(error, ProviderError::Rejected { .. }), "{error}");

    assert_eq!(generation(&good, name).await, Some(1));
    assert_eq!(good.served_records(name).await.unwrap(), records);

    bind.stop();
    let error = good.read_fence(name).await.unwrap_err();
    println!("server down: {error}");
    assert!(
        matches!(error, ProviderError::Unreachable { .. }),
        "{error}"
    );

    // A restart keeps the applied update (BIND's journal); a restore from an old backup loses it.
    bind.restart().unwrap();
    assert_eq!(generation(&good, name).await, Some(1));
    assert_eq!(good.served_records(name).await.unwrap(), records);
    bind.restore_empty_zone().unwrap();
    assert_eq!(generation(&good, name).await, None);
}

#[tokio::test]
async fn a_claim_is_refused_over_foreign_records_and_removal_leaves_a_tombstone() {
    let bind = Bind::start("owned.test").unwrap();
    let dns = bind.provider();
    let name = "legacy.owned.test";
    bind.nsupdate(&["add legacy.owned.test 300 A 192.0.2.10"])
        .unwrap();
    let records = vec![a(&["10.2.0.1"])];
    let claim = FenceGuard {
        expect: None,
        name_unclaimed: true,
    };
    // The server itself refuses to claim a name that has records nobody fenced.
    assert_eq!(
        dns.write_plan(name, &fence(1), &records, Some(&claim))
            .await
            .unwrap(),
        WriteOutcome::FenceMismatch
    );
    assert_eq!(
        dns.served_records(name).await.unwrap(),
        vec![RRSet {
            ttl: 300,
            ..a(&["192.0.2.10"])
        }]
    );
    assert_eq!(generation(&dns, name).await, None);
    // On an empty name the claim goes through, fence and owner with it.
    let fresh = "fresh.owned.test";
    assert_eq!(
        dns.write_plan(fresh, &fence(1), &records, Some(&claim))
            .await
            .unwrap(),
        WriteOutcome::Applied
    );
    assert_eq!(dns.read_fence(fresh).await.unwrap(), Some(fence(1)));

    // Removal deletes the records and leaves a tombstone; a lagging writer that still expects
    // the live fence cannot bring the records back.
    let tombstone = fence(1).tombstone(OWNER);
    let live = FenceGuard {
        expect: Some(fence(1)),
        name_unclaimed: false,
    };
    assert_eq!(
        dns.remove_name(fresh, &tombstone, &live).await.unwrap(),
        WriteOutcome::Applied
    );
    assert!(dns.served_records(fresh).await.unwrap().is_empty());
    assert_eq!(dns.read_fence(fresh).await.unwrap(), Some(tombstone));
    assert_eq!(
        dns.write_plan(fresh, &fence(1), &records, Some(&live))
            .await
            .unwrap(),
        WriteOutcome::FenceMismatch
    );
    assert!(dns.served_records(fresh).await.unwrap().is_empty());
}
