//! NetworkPolicy for pods on the node agents, enforced with plain nftables drop rules in the
//! host's forward path (every pod-to-pod packet is routed through the host). kube-network-policies,
//! which kind ships, queues packets to user space with the nftables `queue` statement, which these
//! kernels do not support (see the README); this enforcer compiles policies to rules instead.
//!
//! Semantics follow networking.k8s.io/v1: a pod selected by a policy with an Ingress (Egress)
//! type is isolated in that direction, and only traffic some selecting policy allows passes
//! (egress to the host too, where the API server listens); replies of allowed connections
//! pass; traffic from the host (probes) is never filtered.

use anyhow::Result;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;
use tracing::{info, warn};

pub const TABLE: &str = "bulwark-netpol";

type Labels = BTreeMap<String, String>;
/// Allowed peers: pod IPs, and CIDRs with their exceptions.
type Peers = (Vec<String>, Vec<(String, Vec<String>)>);
/// A rule's peers and ports (`from`/`to` and `ports`).
type Rule<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

/// What policy evaluation needs of a pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodView {
    pub namespace: String,
    pub ip: String,
    pub labels: Labels,
    /// (name, port, protocol) of its containers' ports.
    pub ports: Vec<(String, i32, String)>,
}

impl PodView {
    pub fn of(pod: &Pod) -> Option<Self> {
        let spec = pod.spec.as_ref()?;
        if spec.host_network == Some(true) {
            return None;
        }
        let ip = pod.status.as_ref()?.pod_ip.clone()?;
        Some(Self {
            namespace: pod.metadata.namespace.clone()?,
            ip,
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ports: spec
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .filter_map(|p| {
                    Some((
                        p.name.clone()?,
                        p.container_port,
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    ))
                })
                .collect(),
        })
    }
}

/// Whether `labels` match `selector` (an empty selector matches everything).
pub fn matches(selector: &LabelSelector, labels: &Labels) -> bool {
    let exact = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    exact && expressions
}

fn policy_types(policy: &NetworkPolicy) -> (bool, bool) {
    let spec = policy.spec.as_ref();
    match spec.and_then(|s| s.policy_types.as_ref()) {
        Some(types) => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
        None => (true, spec.is_some_and(|s| s.egress.is_some())),
    }
}

/// Source or destination addresses a peer list allows: `None` is "anyone".
fn peer_matches(
    peers: Option<&Vec<NetworkPolicyPeer>>,
    policy_namespace: &str,
    pods: &[PodView],
    namespaces: &BTreeMap<String, Labels>,
) -> Option<Peers> {
    let peers = peers.filter(|p| !p.is_empty())?;
    let mut ips = vec![];
    let mut cidrs = vec![];
    for peer in peers {
        if let Some(block) = &peer.ip_block {
            cidrs.push((block.cidr.clone(), block.except.clone().unwrap_or_default()));
            continue;
        }
        for pod in pods {
            let namespace_ok = match &peer.namespace_selector {
                Some(selector) => namespaces
                    .get(&pod.namespace)
                    .is_some_and(|labels| matches(selector, labels)),
                None => pod.namespace == policy_namespace,
            };
            let pod_ok = peer
                .pod_selector
                .as_ref()
                .is_none_or(|s| matches(s, &pod.labels));
            if namespace_ok && pod_ok {
                ips.push(pod.ip.clone());
            }
        }
    }
    ips.sort();
    ips.dedup();
    Some((ips, cidrs))
}

/// nftables port matches for a rule's ports, resolving named ports against `target`.
fn port_matches(ports: Option<&Vec<NetworkPolicyPort>>, target: &PodView) -> Vec<String> {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return vec![String::new()];
    };
    ports
        .iter()
        .filter_map(|port| {
            let protocol = port
                .protocol
                .clone()
                .unwrap_or_else(|| "TCP".into())
                .to_lowercase();
            let number = match &port.port {
                None => return Some(format!("meta l4proto {protocol} ")),
                Some(IntOrString::Int(n)) => *n,
                Some(IntOrString::String(name)) => {
                    target
                        .ports
                        .iter()
                        .find(|(n, _, p)| n == name && p.to_lowercase() == protocol)?
                        .1
                }
            };
            let range = port
                .end_port
                .map_or(number.to_string(), |end| format!("{number}-{end}"));
            Some(format!("meta l4proto {protocol} th dport {range} "))
        })
        .collect()
}

/// The whole nftables script for these policies (applied atomically by `nft -f -`).
pub fn ruleset(
    policies: &[NetworkPolicy],
    pods: &[PodView],
    namespaces: &BTreeMap<String, Labels>,
) -> String {
    let mut chains = String::new();
    let mut dispatch = String::new();
    // Pod -> host traffic (the API server listens on the host) is input, not forward.
    let mut to_host = String::new();
    for (index, pod) in pods.iter().enumerate() {
        let selecting: Vec<&NetworkPolicy> = policies
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(pod.namespace.as_str()))
            .filter(|p| {
                p.spec.as_ref().is_some_and(|s| {
                    s.pod_selector
                        .as_ref()
                        .is_none_or(|sel| matches(sel, &pod.labels))
                })
            })
            .collect();
        for ingress in [true, false] {
            let isolating: Vec<&&NetworkPolicy> = selecting
                .iter()
                .filter(|p| {
                    if ingress {
                        policy_types(p).0
                    } else {
                        policy_types(p).1
                    }
                })
                .collect();
            if isolating.is_empty() {
                continue;
            }
            let chain = format!("{}-{index}", if ingress { "ingress" } else { "egress" });
            let (own, peer) = if ingress {
                ("daddr", "saddr")
            } else {
                ("saddr", "daddr")
            };
            let _ = writeln!(dispatch, "    ip {own} {} jump {chain}", pod.ip);
            if !ingress {
                let _ = writeln!(to_host, "    ip {own} {} jump {chain}", pod.ip);
            }
            let _ = writeln!(chains, "  chain {chain} {{");
            for policy in isolating {
                let spec = policy.spec.as_ref().unwrap();
                let namespace = policy.metadata.namespace.as_deref().unwrap_or_default();
                let rules: Vec<Rule<'_>> = if ingress {
                    spec.ingress
                        .iter()
                        .flatten()
                        .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                        .collect()
                } else {
                    spec.egress
                        .iter()
                        .flatten()
                        .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                        .collect()
                };
                for (peers, ports) in rules {
                    let allowed = peer_matches(peers, namespace, pods, namespaces);
                    let peer_clauses: Vec<String> = match &allowed {
                        None => vec![String::new()],
                        Some((ips, cidrs)) => {
                            let mut clauses: Vec<String> = cidrs
                                .iter()
                                .map(|(cidr, except)| match except.is_empty() {
                                    true => format!("ip {peer} {cidr} "),
                                    false => format!(
                                        "ip {peer} {cidr} ip {peer} != {{ {} }} ",
                                        except.join(", ")
                                    ),
                                })
                                .collect();
                            if !ips.is_empty() {
                                clauses.push(format!("ip {peer} {{ {} }} ", ips.join(", ")));
                            }
                            clauses
                        }
                    };
                    // Named ports of an ingress rule are the isolated pod's; of an egress rule,
                    // each destination's.
                    let targets: Vec<&PodView> = match (&allowed, ingress) {
                        (_, true) => vec![pod],
                        (Some((ips, _)), false) => {
                            pods.iter().filter(|p| ips.contains(&p.ip)).collect()
                        }
                        (None, false) => vec![pod],
                    };
                    for clause in &peer_clauses {
                        for target in &targets {
                            for port in port_matches(ports, target) {
                                let _ = writeln!(chains, "    {clause}{port}return");
                            }
                        }
                    }
                }
            }
            let _ = writeln!(chains, "    drop\n  }}");
        }
    }
    format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n{chains}  chain forward {{\n    type filter hook forward priority filter; policy accept;\n    ct state established,related accept\n{dispatch}  }}\n  chain input {{\n    type filter hook input priority filter; policy accept;\n    ct state established,related accept\n{to_host}  }}\n}}\n"
    )
}

/// A cache of every `K` in the cluster and the stream that keeps it filled (one item per change).
fn cached<K>(
    client: &kube::Client,
) -> (
    reflector::Store<K>,
    futures::stream::BoxStream<'static, Result<(), watcher::Error>>,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let changes = reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .map(|event| event.map(|_| ()))
    .boxed();
    (store, changes)
}

/// Watches policies, pods and namespaces and keeps the table in step, one atomic nft
/// transaction per change.
pub async fn enforce(client: kube::Client) -> Result<()> {
    let (policies, policy_changes) = cached::<NetworkPolicy>(&client);
    let (pods, pod_changes) = cached::<Pod>(&client);
    let (namespaces, namespace_changes) = cached::<Namespace>(&client);
    let changes = futures::stream::select_all([policy_changes, pod_changes, namespace_changes]);
    let mut changes = changes.ready_chunks(256);
    let mut applied = String::new();
    while let Some(batch) = changes.next().await {
        if let Some(Err(e)) = batch.iter().find(|r| r.is_err()) {
            warn!(error = %e, "watch failed; retrying");
        }
        let policies: Vec<NetworkPolicy> = policies.state().iter().map(|p| (**p).clone()).collect();
        let pods: Vec<PodView> = pods.state().iter().filter_map(|p| PodView::of(p)).collect();
        let namespaces: BTreeMap<String, Labels> = namespaces
            .state()
            .iter()
            .map(|n: &std::sync::Arc<Namespace>| {
                (
                    n.metadata.name.clone().unwrap_or_default(),
                    n.metadata.labels.clone().unwrap_or_default(),
                )
            })
            .collect();
        let script = ruleset(&policies, &pods, &namespaces);
        if script != applied {
            match bulwark_chaos::node_agent::apply_nft(&script) {
                Ok(()) => {
                    info!(
                        policies = policies.len(),
                        pods = pods.len(),
                        "network policy rules applied"
                    );
                    applied = script;
                }
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "applying network policy rules failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, ip: &str, app: &str) -> PodView {
        PodView {
            namespace: ns.into(),
            ip: ip.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ports: vec![("http".into(), 8080, "TCP".into())],
        }
    }

    fn policy(ns: &str, spec: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": ns}, "spec": spec}))
            .unwrap()
    }

    #[test]
    fn an_isolated_pod_admits_only_selected_peers_on_their_ports() {
        let pods = [
            pod("a", "10.244.1.2", "db"),
            pod("a", "10.244.1.3", "web"),
            pod("b", "10.244.2.2", "web"),
        ];
        let policies = [policy(
            "a",
            json!({
                "podSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": "http"}]}],
            }),
        )];
        let script = ruleset(&policies, &pods, &BTreeMap::new());
        assert!(
            script.contains("ip daddr 10.244.1.2 jump ingress-0"),
            "{script}"
        );
        // Same-namespace web only (no namespaceSelector), on the named port resolved to 8080.
        assert!(
            script.contains("ip saddr { 10.244.1.3 } meta l4proto tcp th dport 8080 return"),
            "{script}"
        );
        assert!(!script.contains("10.244.2.2 }"), "{script}");
        assert!(
            !script.contains("egress"),
            "an ingress-only policy isolates no egress: {script}"
        );
    }

    #[test]
    fn an_empty_rule_list_denies_and_a_missing_from_allows_everyone() {
        let pods = [pod("a", "10.244.1.2", "db")];
        let deny = ruleset(
            &[policy(
                "a",
                json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
            )],
            &pods,
            &BTreeMap::new(),
        );
        assert!(deny.contains("chain ingress-0 {\n    drop\n  }"), "{deny}");
        assert!(deny.contains("chain egress-0 {\n    drop\n  }"), "{deny}");
        // Egress isolation covers the host (the API server) as well as other pods.
        let input = &deny[deny.find("chain input").expect("an input chain")..];
        assert!(
            input.contains("ip saddr 10.244.1.2 jump egress-0"),
            "{deny}"
        );
        assert!(!input.contains("jump ingress"), "{deny}");
        let allow = ruleset(
            &[policy("a", json!({"podSelector": {}, "ingress": [{}]}))],
            &pods,
            &BTreeMap::new(),
        );
        assert!(
            allow.contains("chain ingress-0 {\n    return\n    drop\n  }"),
            "{allow}"
        );
    }

    #[test]
    fn selectors_follow_match_expressions_and_namespace_labels() {
        let labels: Labels = [("tier".to_string(), "front".to_string())].into();
        let selector: LabelSelector = serde_json::from_value(json!({"matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["front", "edge"]}, {"key": "x", "operator": "DoesNotExist"}]}))
        .unwrap();
        assert!(matches(&selector, &labels));
        let pods = [pod("a", "10.244.1.2", "db"), pod("b", "10.244.2.2", "web")];
        let namespaces = BTreeMap::from([("b".to_string(), labels)]);
        let script = ruleset(
            &[policy(
                "a",
                json!({"podSelector": {}, "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"tier": "front"}}}, {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.244.0.0/16"]}}]}]}),
            )],
            &pods,
            &namespaces,
        );
        assert!(
            script.contains("ip saddr { 10.244.2.2 } return"),
            "{script}"
        );
        assert!(
            script.contains("ip saddr 10.0.0.0/8 ip saddr != { 10.244.0.0/16 } return"),
            "{script}"
        );
    }
}
