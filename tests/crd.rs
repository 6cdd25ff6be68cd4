//! The checked-in CRD (and the chart's copy) must be exactly what the Rust types generate.

use std::path::Path;

fn check(relative: &str) -> Result<(), Box<dyn std::error::Error>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    let on_disk = std::fs::read_to_string(&path)?;
    let generated = flashsale_operator::api::crd_yaml()?;
    assert!(on_disk == generated, "{relative} is out of date with the Rust types; regenerate it with `make crds`");
    Ok(())
}

#[test]
fn checked_in_crd_matches_the_types() -> Result<(), Box<dyn std::error::Error>> {
    check("crds/flashsale.dev_flashsales.yaml")
}

#[test]
fn chart_crd_matches_the_types() -> Result<(), Box<dyn std::error::Error>> {
    check("charts/flashsale-operator/crds/flashsale.dev_flashsales.yaml")
}
