//! The `flashsale.dev/v1alpha1` API: the `FlashSale` custom resource and its CRD.

pub mod names;
mod spec;
mod status;

pub use spec::*;
pub use status::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{CustomResourceDefinition, JSONSchemaProps};
use kube::CustomResourceExt;

/// The CRD generated from the Rust types, as installed in clusters.
///
/// The embedded Kubernetes schemas (the warm-up Job template, tolerations) keep their full
/// structure, so the API server validates them at admission, but lose their descriptions:
/// those are Kubernetes' own documentation and would triple the CRD's size.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = FlashSale::crd();
    for version in &mut crd.spec.versions {
        let Some(root) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) else {
            continue;
        };
        let Some(spec) = child(root, "spec") else {
            continue;
        };
        if let Some(template) = child(&mut *spec, "cacheWarm").and_then(items).and_then(|w| child(w, "template")) {
            strip_descriptions(template);
        }
        if let Some(toleration) = child(child(spec, "spotDrain"), "tolerations").and_then(items) {
            strip_descriptions(toleration);
        }
    }
    crd
}

/// The CRD as the YAML document checked in under `crds/` and shipped in the chart.
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    // CEL rules and messages stay on one line each, as a reader of the CRD searches for them.
    let mut options = serde_saphyr::SerializerOptions::default();
    options.prefer_block_scalars = false;
    serde_saphyr::to_string_with_options(&crd(), options).map(|body| format!("---\n{body}"))
}

fn child<'a>(schema: impl Into<Option<&'a mut JSONSchemaProps>>, name: &str) -> Option<&'a mut JSONSchemaProps> {
    schema.into()?.properties.as_mut()?.get_mut(name)
}

fn items(schema: &mut JSONSchemaProps) -> Option<&mut JSONSchemaProps> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray;
    match schema.items.as_mut()? {
        JSONSchemaPropsOrArray::Schema(s) => Some(s),
        JSONSchemaPropsOrArray::Schemas(_) => None,
    }
}

fn strip_descriptions(schema: &mut JSONSchemaProps) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
    };
    schema.description = None;
    for p in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        strip_descriptions(p);
    }
    match schema.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(s)) => strip_descriptions(s),
        Some(JSONSchemaPropsOrArray::Schemas(list)) => list.iter_mut().for_each(strip_descriptions),
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(s)) = schema.additional_properties.as_mut() {
        strip_descriptions(s);
    }
    for list in [&mut schema.all_of, &mut schema.any_of, &mut schema.one_of] {
        list.iter_mut().flatten().for_each(strip_descriptions);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sale(yaml: &str) -> FlashSale {
        serde_saphyr::from_str(yaml).expect("test YAML parses")
    }

    const BASE: &str = r#"
apiVersion: flashsale.dev/v1alpha1
kind: FlashSale
metadata: {name: t, namespace: shop}
spec:
  window: {start: "2026-11-11T00:00:00+08:00", end: "2026-11-11T02:00:00+08:00"}
  workloads:
  - ref: {kind: Deployment, name: web}
    scale: {peak: 10}
"#;

    #[test]
    fn defaults_are_filled_and_visible_in_the_schema() {
        let s = sale(BASE);
        assert_eq!(s.spec.cron_hpa_time_zone, "Asia/Shanghai");
        assert_eq!(std::time::Duration::from(s.spec.prepare_before).as_secs(), 1800);
        assert_eq!(std::time::Duration::from(s.spec.cooldown_after).as_secs(), 900);
        assert_eq!(s.spec.workloads[0].scale.mode, ScaleMode::Auto);
        assert_eq!(s.spec.workloads[0].target.api_version, "apps/v1");
        // The schema's human-readable defaults are the same durations serde fills in.
        let warm: CacheWarm = serde_json::from_value(serde_json::json!({"name": "w", "template": {}})).unwrap();
        let d = |s: &str| s.parse::<kube::core::Duration>().unwrap();
        assert_eq!(warm.start_before, d("20m"));
        let degrade: AutoDegrade = serde_json::from_value(serde_json::json!({"query": "up", "above": 1.0})).unwrap();
        assert_eq!((degrade.for_, degrade.recover_after), (d("30s"), d("2m")));
        let yaml = crd_yaml().unwrap();
        for default in
            ["default: Asia/Shanghai", "default: 30m", "default: 15m", "default: 20m", "default: Auto", "default: 2s"]
        {
            assert!(yaml.contains(default), "the CRD does not show `{default}`");
        }
    }

    #[test]
    fn the_crd_carries_the_cel_rules_client_side_validation_uses() {
        assert!(kube::core::cel::validate_cel(&sale(BASE)).is_ok());
        let bad = BASE.replace("peak: 10", "peak: 10}\n  - ref: {kind: Deployment, name: web}\n    scale: {peak: 3");
        let errors = kube::core::cel::validate_cel(&sale(&bad)).unwrap_err().to_string();
        assert!(errors.contains("workloads[].ref must be unique"), "{errors}");
        let backwards = BASE.replace("02:00:00+08:00", "00:00:00+08:00");
        let errors = kube::core::cel::validate_cel(&sale(&backwards)).unwrap_err().to_string();
        assert!(errors.contains("window.end must be after window.start"), "{errors}");
    }
}
