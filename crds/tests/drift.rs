//! The committed CRD manifests must be exactly what the Rust types render.
use std::path::Path;

fn assert_no_drift(dir: &Path) {
    for crd in bulwark_crds::all() {
        let path = dir.join(bulwark_crds::file_name(&crd));
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{} is missing ({e}); run `cargo run -p bulwark -- crdgen`",
                path.display()
            )
        });
        assert!(
            committed == bulwark_crds::render(&crd),
            "{} drifted from the Rust types; run `cargo run -p bulwark -- crdgen`",
            path.display()
        );
    }
    let stale: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bulwark.dev.yaml"))
        .filter(|n| {
            !bulwark_crds::all()
                .iter()
                .any(|c| &bulwark_crds::file_name(c) == n)
        })
        .collect();
    assert!(
        stale.is_empty(),
        "stale CRD manifests in {}: {stale:?}",
        dir.display()
    );
}

#[test]
fn crds_dir_matches_types() {
    assert_no_drift(Path::new(env!("CARGO_MANIFEST_DIR")));
}

#[test]
fn chart_crds_match_types() {
    assert_no_drift(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/bulwark/crds"));
}

#[test]
fn every_kind_has_status_printer_columns_and_short_names() {
    for crd in bulwark_crds::all() {
        let name = crd.metadata.name.clone().unwrap();
        assert_eq!(crd.spec.scope, "Namespaced", "{name}");
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty()),
            "{name}: short name"
        );
        for version in &crd.spec.versions {
            assert!(
                version
                    .subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some(),
                "{name}: status"
            );
            let columns = version
                .additional_printer_columns
                .as_deref()
                .unwrap_or_default();
            assert!(
                columns.iter().any(|c| c.name == "Age"),
                "{name}: Age column"
            );
        }
    }
}
