//! DNS fixtures for e2e tests and benchmarks: a zone backed by a real BIND9, endpoints, and a
//! set of operator replicas scoped to one namespace.

use std::path::Path;

use anyhow::{Context, Result};
use bulwark_crds::dns::{DnsEndpoint, DnsPlan, DnsZone};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};

use crate::bind::{Bind, KEY_NAME};
use crate::operator::Operator;
use crate::operator::start_operator;

pub const SECRET_NAME: &str = "tsig";
pub const SECRET_KEY: &str = "secret";

/// Creates the TSIG Secret and a DnsZone `zone_name` for `bind`'s first zone.
pub async fn create_zone(
    client: &kube::Client,
    ns: &str,
    zone_name: &str,
    bind: &Bind,
) -> Result<()> {
    create_zone_for(client, ns, zone_name, bind, &bind.zone).await
}

/// Creates the TSIG Secret and a DnsZone `zone_name` for `dns_zone`, one of `bind`'s zones.
pub async fn create_zone_for(
    client: &kube::Client,
    ns: &str,
    zone_name: &str,
    bind: &Bind,
    dns_zone: &str,
) -> Result<()> {
    create_zone_at(
        client,
        ns,
        zone_name,
        &bind.server(),
        &bind.secret,
        dns_zone,
    )
    .await
}

/// Creates the TSIG Secret (`secret`) and a DnsZone `zone_name` for `dns_zone` at `server`.
pub async fn create_zone_at(
    client: &kube::Client,
    ns: &str,
    zone_name: &str,
    server: &str,
    secret: &str,
    dns_zone: &str,
) -> Result<()> {
    set_tsig_secret(client, ns, secret).await?;
    let zones: Api<DnsZone> = Api::namespaced(client.clone(), ns);
    let zone: DnsZone = serde_json::from_value(serde_json::json!({
        "apiVersion": "bulwark.dev/v1alpha1", "kind": "DnsZone",
        "metadata": {"name": zone_name},
        "spec": {"zone": dns_zone, "provider": {"rfc2136": {
            "server": server, "tsigKeyName": KEY_NAME,
            "tsigSecretRef": {"name": SECRET_NAME, "key": SECRET_KEY}}}}
    }))?;
    zones.create(&PostParams::default(), &zone).await?;
    Ok(())
}

/// Creates or replaces the TSIG Secret's value.
pub async fn set_tsig_secret(client: &kube::Client, ns: &str, secret: &str) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let object: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET_NAME},
        "stringData": {SECRET_KEY: secret}
    }))?;
    secrets
        .patch(
            SECRET_NAME,
            &PatchParams::apply("bulwark-e2e").force(),
            &Patch::Apply(&object),
        )
        .await?;
    Ok(())
}

/// Creates or updates a DnsEndpoint answering with literal `addresses`.
pub async fn apply_endpoint(
    client: &kube::Client,
    ns: &str,
    name: &str,
    zone_ref: &str,
    fqdn: &str,
    addresses: &[String],
) -> Result<()> {
    let targets: Vec<serde_json::Value> = addresses
        .iter()
        .map(|a| serde_json::json!({"address": a}))
        .collect();
    let endpoint = serde_json::json!({
        "apiVersion": "bulwark.dev/v1alpha1", "kind": "DnsEndpoint",
        "metadata": {"name": name},
        "spec": {"zoneRef": zone_ref, "fqdn": fqdn, "ttl": 30, "targets": targets}
    });
    let api: Api<DnsEndpoint> = Api::namespaced(client.clone(), ns);
    api.patch(
        name,
        &PatchParams::apply("bulwark-e2e").force(),
        &Patch::Apply(&endpoint),
    )
    .await?;
    Ok(())
}

/// `replicas` operators watching only `ns`, sharing a leader Lease there.
pub fn start_operators(
    kubeconfig: &Path,
    ns: &str,
    replicas: usize,
    extra_args: &[&str],
    log_dir: &Path,
) -> Result<Vec<Operator>> {
    (0..replicas)
        .map(|i| {
            start_operator(
                kubeconfig,
                ns,
                &format!("{ns}-enactor-{i}"),
                extra_args,
                log_dir,
            )
        })
        .collect()
}

/// The endpoint's DnsPlans, oldest first.
pub async fn plans(client: &kube::Client, ns: &str, endpoint: &str) -> Result<Vec<DnsPlan>> {
    let api: Api<DnsPlan> = Api::namespaced(client.clone(), ns);
    let mut plans: Vec<DnsPlan> = api
        .list(&kube::api::ListParams::default().labels(&format!("bulwark.dev/endpoint={endpoint}")))
        .await?
        .items;
    plans.sort_by_key(|p| p.spec.generation);
    Ok(plans)
}

/// external-dns's DNSEndpoint kind (the benchmarks' peer).
pub fn external_dns_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "externaldns.k8s.io",
        "v1alpha1",
        "DNSEndpoint",
    ))
}

/// external-dns's own DNSEndpoint CRD, from the module the binary was built from.
pub async fn install_external_dns_crd(client: &kube::Client) -> Result<()> {
    let modcache = std::process::Command::new("go")
        .args(["env", "GOMODCACHE"])
        .output()?;
    let path = std::path::PathBuf::from(String::from_utf8(modcache.stdout)?.trim())
        .join(format!(
            "sigs.k8s.io/external-dns@{}",
            crate::binaries::pinned("EXTERNAL_DNS_VERSION")
        ))
        .join("config/crd/standard/dnsendpoints.externaldns.k8s.io.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let crd: CustomResourceDefinition = serde_saphyr::from_str(&text)?;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.metadata.name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply("bulwark-bench").force(),
        &Patch::Apply(&crd),
    )
    .await?;
    let established = kube::runtime::wait::await_condition(
        api,
        &name,
        kube::runtime::wait::conditions::is_crd_established(),
    );
    tokio::time::timeout(std::time::Duration::from_secs(30), established).await??;
    Ok(())
}

/// external-dns (RFC 2136 provider against `bind`, DNSEndpoint CRD source, TXT registry, sync
/// policy) for `zones`, watching `ns`, with `settings` appended; its log in `log`.
pub fn start_external_dns(
    bind: &Bind,
    zones: &[&str],
    ns: &str,
    kubeconfig: &Path,
    settings: &[&str],
    log: &Path,
) -> Result<crate::process::Process> {
    let mut args: Vec<String> = [
        "--source=crd",
        "--crd-source-apiversion=externaldns.k8s.io/v1alpha1",
        "--crd-source-kind=DNSEndpoint",
        "--provider=rfc2136",
        "--rfc2136-host=127.0.0.1",
        "--rfc2136-tsig-secret-alg=hmac-sha256",
        "--rfc2136-tsig-axfr",
        "--registry=txt",
        "--txt-owner-id=bench",
        "--policy=sync",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend([
        format!("--rfc2136-port={}", bind.port),
        format!("--rfc2136-tsig-keyname={KEY_NAME}"),
        format!("--rfc2136-tsig-secret={}", bind.secret),
        format!("--namespace={ns}"),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!(
            "--metrics-address=127.0.0.1:{}",
            crate::process::free_port()?
        ),
    ]);
    for zone in zones {
        args.push(format!("--rfc2136-zone={zone}"));
        args.push(format!("--domain-filter={zone}"));
    }
    args.extend(settings.iter().map(|s| s.to_string()));
    crate::process::Process::spawn(
        "external-dns",
        &crate::binaries::binary("external-dns")?,
        &args,
        &[],
        log,
    )
}
