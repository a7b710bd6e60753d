//! `bulwark slo render` and `bulwark slo import`: the SLO pipeline without a cluster.

use std::path::Path;

use anyhow::Context as _;
use bulwark_controllers::slo::{openslo, render};
use bulwark_crds::slo::ServiceLevelObjective;
use kube::Resource;

fn read(path: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
        .with_context(|| format!("{} is not YAML", path.display()))?;
    Ok(documents.into_iter().filter(|d| !d.is_null()).collect())
}

fn yaml<T: serde::Serialize>(value: &T) -> String {
    serde_saphyr::to_string(value).expect("Kubernetes objects serialise to YAML")
}

/// Prints the PrometheusRule and dashboard ConfigMap of every ServiceLevelObjective in `path`.
pub fn render_file(path: &Path, namespace: &str) -> anyhow::Result<()> {
    let kind = ServiceLevelObjective::kind(&());
    let mut out = Vec::new();
    for (index, document) in read(path)?.into_iter().enumerate() {
        let label = format!("{}: document {}", path.display(), index + 1);
        if document["kind"] != *kind {
            eprintln!("{label}: skipping kind {}", document["kind"]);
            continue;
        }
        let slo: ServiceLevelObjective = serde_json::from_value(document)
            .with_context(|| format!("{label} is not a valid ServiceLevelObjective"))?;
        let outputs = render(&slo, namespace).map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
        for warning in outputs.compiled.warnings() {
            eprintln!("{label}: warning: {warning}");
        }
        out.push(yaml(&outputs.prometheus_rule));
        out.push(yaml(&outputs.dashboard));
    }
    anyhow::ensure!(!out.is_empty(), "{}: no {kind} found", path.display());
    print!("---\n{}", out.join("---\n"));
    Ok(())
}

/// Prints the ServiceLevelObjectives converted from the OpenSLO v1 documents in `path`.
pub fn import_file(path: &Path, namespace: Option<&str>) -> anyhow::Result<()> {
    let mut slos = openslo::import(&read(path)?).map_err(|problems| {
        anyhow::anyhow!(
            "{} cannot be converted without losing meaning:\n  {}",
            path.display(),
            problems.join("\n  ")
        )
    })?;
    anyhow::ensure!(
        !slos.is_empty(),
        "{}: no OpenSLO v1 SLO found",
        path.display()
    );
    let mut out = Vec::new();
    for slo in &mut slos {
        if let Some(namespace) = namespace {
            slo.metadata.namespace = Some(namespace.to_string());
        }
        let mut object = serde_json::to_value(&*slo)?;
        object["apiVersion"] = ServiceLevelObjective::api_version(&()).into();
        object["kind"] = ServiceLevelObjective::kind(&()).into();
        out.push(yaml(&object));
    }
    print!("---\n{}", out.join("---\n"));
    Ok(())
}
