//! Network faults by NetworkPolicy, so they work on any cluster whose network plugin enforces
//! NetworkPolicy (kind's, the local test bed's): a drill cuts pods off with a policy it owns (an
//! owner reference to the run, so deleting the run takes it along), checks from outside that it
//! holds, and rolls back by deleting exactly that policy.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use serde_json::json;

/// How long a new connection may take before it counts as refused.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How often a hold check asks again.
const HOLD_POLL: Duration = Duration::from_millis(100);

/// Which traffic of the selected pods a cut stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Nothing reaches them: a server outage.
    Ingress,
    /// Nothing reaches them and nothing leaves them: a partitioned machine.
    Both,
}

/// A NetworkPolicy isolating the pods `selector` matches, owned by `owner`.
pub fn isolation(
    name: &str,
    selector: &BTreeMap<String, String>,
    direction: Direction,
    owner: &OwnerReference,
) -> NetworkPolicy {
    let types = match direction {
        Direction::Ingress => json!(["Ingress"]),
        Direction::Both => json!(["Ingress", "Egress"]),
    };
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": "bulwark"},
            "ownerReferences": [owner],
        },
        // No rules: a selected pod is isolated in each listed direction and nothing is allowed.
        "spec": {"podSelector": {"matchLabels": selector}, "policyTypes": types},
    }))
    .expect("an isolation policy is a valid NetworkPolicy")
}

/// Creates `policy`; one already there counts as made if `owner_uid` owns it (the same drill,
/// before a restart), else it is someone else's and left alone.
pub async fn cut_off(
    api: &Api<NetworkPolicy>,
    policy: &NetworkPolicy,
    owner_uid: &str,
) -> Result<()> {
    match api.create(&PostParams::default(), policy).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let name = policy.name_any();
            if owned(api, &name, owner_uid).await?.is_none() {
                bail!("NetworkPolicy {name} exists and is not this drill's: not touching it");
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// The policy `name`, if it exists and `owner_uid` owns it.
pub async fn owned(
    api: &Api<NetworkPolicy>,
    name: &str,
    owner_uid: &str,
) -> Result<Option<NetworkPolicy>> {
    Ok(api
        .get_opt(name)
        .await?
        .filter(|p| p.owner_references().iter().any(|o| o.uid == owner_uid)))
}

/// Deletes the policy `name` if `owner_uid` owns it, with a UID precondition so a policy of the
/// same name made by someone else since is never the one deleted.
pub async fn restore(api: &Api<NetworkPolicy>, name: &str, owner_uid: &str) -> Result<()> {
    if let Some(policy) = owned(api, name, owner_uid).await? {
        let preconditions = Preconditions {
            uid: policy.uid(),
            resource_version: None,
        };
        match api
            .delete(name, &DeleteParams::default().preconditions(preconditions))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Waits until `reachable` says no (the cut holds), asking every 100 ms for at most `limit`;
/// how long that took, or `None` if it never did.
pub async fn until_unreachable<F, Fut>(mut reachable: F, limit: Duration) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if !reachable().await {
            return Some(started.elapsed());
        }
        if started.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(HOLD_POLL).await;
    }
}

/// Whether a new TCP connection to `address` is accepted within 500 ms: established flows may
/// outlive a policy, new ones show whether it holds.
pub async fn tcp_connects(host: &str, port: u16) -> bool {
    let connect = tokio::net::TcpStream::connect((host, port));
    matches!(
        tokio::time::timeout(CONNECT_TIMEOUT, connect).await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "bulwark.dev/v1alpha1".into(),
            kind: "DrillRun".into(),
            name: "outage".into(),
            uid: "uid-1".into(),
            ..OwnerReference::default()
        }
    }

    #[test]
    fn an_isolation_selects_the_pods_and_allows_nothing_in_its_directions() {
        let selector = BTreeMap::from([("app".to_string(), "bind".to_string())]);
        let outage = isolation("cut", &selector, Direction::Ingress, &owner());
        let spec = outage.spec.clone().unwrap();
        assert_eq!(
            spec.pod_selector.unwrap().match_labels,
            Some(selector.clone())
        );
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
        assert!(spec.ingress.is_none() && spec.egress.is_none());
        assert_eq!(outage.owner_references()[0].uid, "uid-1");
        let partition = isolation("cut", &selector, Direction::Both, &owner());
        assert_eq!(
            partition.spec.unwrap().policy_types,
            Some(vec!["Ingress".to_string(), "Egress".to_string()])
        );
    }

    #[tokio::test]
    async fn a_hold_check_reports_when_the_target_stops_answering_or_gives_up() {
        let mut asked = 0;
        let held = until_unreachable(
            || {
                asked += 1;
                std::future::ready(asked < 3)
            },
            Duration::from_secs(5),
        )
        .await;
        assert!(held.is_some());
        assert_eq!(asked, 3);
        let never =
            until_unreachable(|| std::future::ready(true), Duration::from_millis(250)).await;
        assert_eq!(never, None);
    }

    #[tokio::test]
    async fn a_listening_port_connects_and_a_closed_one_does_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(tcp_connects("127.0.0.1", port).await);
        drop(listener);
        assert!(!tcp_connects("127.0.0.1", port).await);
    }
}
