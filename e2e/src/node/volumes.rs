//! A pod's volumes as directories on the node, and its containers' environment. Each volume is a
//! directory under the pod's directory (or the claim's directory for a PVC) that containers get
//! bind-mounted at their mount paths.

use super::launch::BindMount;
use anyhow::{Context, Result, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, ObjectFieldSelector, PersistentVolume,
    PersistentVolumeClaim, Pod, Secret, ServiceAccount, Volume,
};
use kube::api::{Api, PostParams};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A projected token's default lifetime when the pod does not ask (the kubelet's default).
const TOKEN_SECONDS: i64 = 3607;

/// The value of a downward-API field path of `pod`.
pub fn field_value(pod: &Pod, selector: &ObjectFieldSelector) -> Result<String> {
    let meta = &pod.metadata;
    let path = selector.field_path.as_str();
    let from_map = |map: &Option<BTreeMap<String, String>>, rest: &str| {
        let key = rest.trim_start_matches("['").trim_end_matches("']");
        map.as_ref()
            .and_then(|m| m.get(key))
            .cloned()
            .unwrap_or_default()
    };
    let render = |map: &Option<BTreeMap<String, String>>| {
        map.iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}\n"))
            .collect::<String>()
    };
    let status = pod.status.as_ref();
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => render(&meta.labels),
        "metadata.annotations" => render(&meta.annotations),
        "spec.nodeName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        "status.hostIP" => status.and_then(|s| s.host_ip.clone()).unwrap_or_default(),
        _ if path.starts_with("metadata.labels[") => from_map(&meta.labels, &path[15..]),
        _ if path.starts_with("metadata.annotations[") => from_map(&meta.annotations, &path[20..]),
        _ => bail!("downward API field {path:?} is not supported by this node agent"),
    })
}

/// Writes `files` (relative path → bytes) into `dir`, each atomically, with `mode`.
fn write_files(dir: &Path, files: &[(String, Vec<u8>)], mode: u32) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for (relative, contents) in files {
        anyhow::ensure!(
            !relative
                .split('/')
                .any(|part| part == ".." || part.is_empty()),
            "volume path {relative:?} must be relative and stay inside the volume"
        );
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let temporary = path.with_extension("bulwark-tmp");
        std::fs::write(&temporary, contents)?;
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&temporary, &path)?;
    }
    Ok(())
}

/// Keys of a ConfigMap or Secret as files: every key, or only `items` at their paths.
fn key_files(
    data: BTreeMap<String, Vec<u8>>,
    items: &Option<Vec<KeyToPath>>,
    what: &str,
) -> Result<Vec<(String, Vec<u8>)>> {
    match items {
        None => Ok(data.into_iter().collect()),
        Some(items) => items
            .iter()
            .map(|item| {
                let value = data
                    .get(&item.key)
                    .with_context(|| format!("{what} has no key {:?}", item.key))?;
                Ok((item.path.clone(), value.clone()))
            })
            .collect(),
    }
}

fn configmap_data(cm: ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    data.extend(
        cm.binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0)),
    );
    data
}

fn secret_data(secret: Secret) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    data.extend(
        secret
            .string_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes())),
    );
    data
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    ConfigMap,
    Secret,
}

/// The data of a ConfigMap or Secret; `None` if it is missing and `optional`, an error naming it
/// if it is missing and required.
async fn object_data(
    client: &kube::Client,
    ns: &str,
    kind: Kind,
    name: &str,
    optional: Option<bool>,
) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
    let found = match kind {
        Kind::ConfigMap => Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await?
            .map(configmap_data),
        Kind::Secret => Api::<Secret>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await?
            .map(secret_data),
    };
    match found {
        None if optional != Some(true) => bail!("{kind:?} {name:?} not found"),
        data => Ok(data),
    }
}

/// A ConfigMap's or Secret's keys as volume files (none if it is missing and optional).
async fn source_files(
    client: &kube::Client,
    ns: &str,
    kind: Kind,
    name: &str,
    items: &Option<Vec<KeyToPath>>,
    optional: Option<bool>,
) -> Result<Vec<(String, Vec<u8>)>> {
    match object_data(client, ns, kind, name, optional).await? {
        Some(data) => key_files(data, items, &format!("{kind:?} {name}")),
        None => Ok(vec![]),
    }
}

fn downward_files(pod: &Pod, items: &[DownwardAPIVolumeFile]) -> Result<Vec<(String, Vec<u8>)>> {
    items
        .iter()
        .filter_map(|item| item.field_ref.as_ref().map(|f| (item, f)))
        .map(|(item, field)| Ok((item.path.clone(), field_value(pod, field)?.into_bytes())))
        .collect()
}

/// The volumes of one pod, materialised under `pod_dir/volumes`.
pub struct PodVolumes {
    pub dirs: BTreeMap<String, PathBuf>,
}

impl PodVolumes {
    /// Creates or refreshes every volume. A missing optional source is an empty volume; a
    /// missing required one (or an unbound claim) is an error naming it, and the pod waits.
    pub async fn prepare(client: &kube::Client, pod: &Pod, pod_dir: &Path) -> Result<Self> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let mut dirs = BTreeMap::new();
        for volume in pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
        {
            let dir = pod_dir.join("volumes").join(&volume.name);
            let dir = materialise(client, pod, ns, volume, dir)
                .await
                .with_context(|| format!("volume {:?}", volume.name))?;
            dirs.insert(volume.name.clone(), dir);
        }
        Ok(Self { dirs })
    }

    /// Bind mounts for one container's volumeMounts (subPath mounts one entry of the volume).
    pub fn mounts_for(&self, container: &Container) -> Result<Vec<BindMount>> {
        container
            .volume_mounts
            .iter()
            .flatten()
            .map(|mount| {
                let dir = self.dirs.get(&mount.name).with_context(|| {
                    format!("volumeMount {:?} names no volume of the pod", mount.name)
                })?;
                let source = match mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
                    Some(sub) => {
                        anyhow::ensure!(
                            !sub.split('/').any(|p| p == ".."),
                            "subPath {sub:?} leaves the volume"
                        );
                        let path = dir.join(sub);
                        if !path.exists() {
                            std::fs::create_dir_all(&path)?;
                        }
                        path
                    }
                    None => dir.clone(),
                };
                Ok(BindMount {
                    source,
                    target: mount.mount_path.clone(),
                    read_only: mount.read_only.unwrap_or(false),
                })
            })
            .collect()
    }
}

async fn materialise(
    client: &kube::Client,
    pod: &Pod,
    ns: &str,
    volume: &Volume,
    dir: PathBuf,
) -> Result<PathBuf> {
    if volume.empty_dir.is_some() {
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
        return Ok(dir);
    }
    if let Some(host) = &volume.host_path {
        return Ok(PathBuf::from(&host.path));
    }
    if let Some(source) = &volume.config_map {
        let files = source_files(
            client,
            ns,
            Kind::ConfigMap,
            &source.name,
            &source.items,
            source.optional,
        )
        .await?;
        write_files(&dir, &files, source.default_mode.unwrap_or(0o644) as u32)?;
        return Ok(dir);
    }
    if let Some(source) = &volume.secret {
        let name = source.secret_name.clone().unwrap_or_default();
        let files = source_files(
            client,
            ns,
            Kind::Secret,
            &name,
            &source.items,
            source.optional,
        )
        .await?;
        write_files(&dir, &files, source.default_mode.unwrap_or(0o644) as u32)?;
        return Ok(dir);
    }
    if let Some(source) = &volume.downward_api {
        let files = downward_files(pod, source.items.as_deref().unwrap_or_default())?;
        write_files(&dir, &files, source.default_mode.unwrap_or(0o644) as u32)?;
        return Ok(dir);
    }
    if let Some(projected) = &volume.projected {
        let mut files = vec![];
        for source in projected.sources.iter().flatten() {
            if let Some(token) = &source.service_account_token {
                let value = service_account_token(
                    client,
                    pod,
                    ns,
                    token.audience.clone(),
                    token.expiration_seconds,
                )
                .await?;
                files.push((token.path.clone(), value.into_bytes()));
            }
            if let Some(cm) = &source.config_map {
                files.extend(
                    source_files(
                        client,
                        ns,
                        Kind::ConfigMap,
                        &cm.name,
                        &cm.items,
                        cm.optional,
                    )
                    .await?,
                );
            }
            if let Some(secret) = &source.secret {
                files.extend(
                    source_files(
                        client,
                        ns,
                        Kind::Secret,
                        &secret.name,
                        &secret.items,
                        secret.optional,
                    )
                    .await?,
                );
            }
            if let Some(downward) = &source.downward_api {
                files.extend(downward_files(
                    pod,
                    downward.items.as_deref().unwrap_or_default(),
                )?);
            }
        }
        write_files(&dir, &files, projected.default_mode.unwrap_or(0o644) as u32)?;
        return Ok(dir);
    }
    if let Some(claim) = &volume.persistent_volume_claim {
        let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
            .get_opt(&claim.claim_name)
            .await?
            .with_context(|| format!("PersistentVolumeClaim {:?} not found", claim.claim_name))?;
        let pv_name = pvc
            .spec
            .and_then(|s| s.volume_name)
            .filter(|n| !n.is_empty())
            .with_context(|| {
                format!(
                    "PersistentVolumeClaim {:?} is not bound yet",
                    claim.claim_name
                )
            })?;
        let pv = Api::<PersistentVolume>::all(client.clone())
            .get(&pv_name)
            .await?;
        let spec = pv.spec.unwrap_or_default();
        let path = spec
            .local
            .map(|l| l.path)
            .or(spec.host_path.map(|h| h.path))
            .with_context(|| format!("PersistentVolume {pv_name} is neither local nor hostPath"))?;
        return Ok(PathBuf::from(path));
    }
    bail!(
        "this node agent supports emptyDir, configMap, secret, downwardAPI, projected, hostPath and persistentVolumeClaim volumes"
    )
}

/// A token for the pod's ServiceAccount, bound to the pod (TokenRequest, as the kubelet asks).
async fn service_account_token(
    client: &kube::Client,
    pod: &Pod,
    ns: &str,
    audience: Option<String>,
    seconds: Option<i64>,
) -> Result<String> {
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(audience.into_iter().collect()),
            expiration_seconds: Some(seconds.unwrap_or(TOKEN_SECONDS)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        }),
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let answer: TokenRequest = api
        .create_subresource("token", &account, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for ServiceAccount {account}"))?;
    answer
        .status
        .and_then(|s| s.token)
        .context("TokenRequest answered without a token")
}

/// Expands `$(VAR)` references to variables defined so far; `$$(VAR)` stays literal `$(VAR)`.
pub fn expand(value: &str, defined: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(escaped) = tail.strip_prefix("$$") {
            out.push('$');
            rest = escaped;
        } else if let Some((name, after)) = tail.strip_prefix("$(").and_then(|t| t.split_once(')'))
        {
            match defined.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = after;
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// A container's environment: the in-cluster API server variables, envFrom, then env in order
/// (later entries may refer to earlier ones with `$(NAME)`).
pub async fn environment(
    client: &kube::Client,
    pod: &Pod,
    container: &Container,
    service_env: &[(String, String)],
) -> Result<Vec<(String, String)>> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        (
            "HOSTNAME".into(),
            pod.metadata.name.clone().unwrap_or_default(),
        ),
    ];
    env.extend(service_env.iter().cloned());
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let data = if let Some(cm) = &source.config_map_ref {
            object_data(client, ns, Kind::ConfigMap, &cm.name, cm.optional).await?
        } else if let Some(secret) = &source.secret_ref {
            object_data(client, ns, Kind::Secret, &secret.name, secret.optional).await?
        } else {
            None
        };
        let data = data.unwrap_or_default();
        env.extend(data.into_iter().map(|(k, v)| {
            (
                format!("{prefix}{k}"),
                String::from_utf8_lossy(&v).into_owned(),
            )
        }));
    }
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => expand(var.value.as_deref().unwrap_or_default(), &env),
            Some(from) => {
                if let Some(field) = &from.field_ref {
                    field_value(pod, field)?
                } else if let Some((kind, name, key, optional)) = from
                    .secret_key_ref
                    .as_ref()
                    .map(|k| (Kind::Secret, &k.name, &k.key, k.optional))
                    .or(from
                        .config_map_key_ref
                        .as_ref()
                        .map(|k| (Kind::ConfigMap, &k.name, &k.key, k.optional)))
                {
                    // A missing object is an error unless optional, as is a missing key.
                    let data = object_data(client, ns, kind, name, optional).await?;
                    match data.and_then(|d| d.get(key).cloned()) {
                        Some(v) => String::from_utf8_lossy(&v).into_owned(),
                        None if optional == Some(true) => continue,
                        None => bail!("env {}: {kind:?} {name:?} has no key {key:?}", var.name),
                    }
                } else {
                    // resourceFieldRef: this agent enforces no resources, so limits read as 0.
                    "0".into()
                }
            }
        };
        env.push((var.name.clone(), value));
    }
    // Later definitions win, as in a container runtime.
    let mut seen = std::collections::HashSet::new();
    let mut deduplicated: Vec<(String, String)> = env
        .into_iter()
        .rev()
        .filter(|(k, _)| seen.insert(k.clone()))
        .collect();
    deduplicated.reverse();
    Ok(deduplicated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_expand_to_earlier_variables_only() {
        let defined = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &defined), "x-$(B)-$(A)-$");
    }

    #[test]
    fn downward_fields_of_the_pod() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n", "labels": {"app": "web"}},
            "spec": {"containers": [], "nodeName": "node-a"},
        }))
        .unwrap();
        let field = |path: &str| {
            field_value(
                &pod,
                &ObjectFieldSelector {
                    field_path: path.into(),
                    api_version: None,
                },
            )
        };
        assert_eq!(field("metadata.labels['app']").unwrap(), "web");
        assert_eq!(field("spec.nodeName").unwrap(), "node-a");
        assert_eq!(field("metadata.labels").unwrap(), "app=\"web\"\n");
        assert!(field("status.phase").is_err());
    }

    #[test]
    fn volume_files_may_not_leave_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        let error = write_files(dir.path(), &[("../x".into(), vec![])], 0o644).unwrap_err();
        assert!(error.to_string().contains("stay inside the volume"));
    }
}
