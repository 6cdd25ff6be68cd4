//! The `flashsale.dev/v1alpha1` API: the `FlashSale` custom resource and its CRD.

mod spec;
mod status;

pub use spec::*;
pub use status::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::CustomResourceExt;

/// The CRD generated from the Rust types, as installed in clusters.
///
/// The embedded Kubernetes schemas (the warm-up Job template, tolerations) keep their full
/// structure, so the API server validates them at admission, but lose their descriptions:
/// those are Kubernetes' own documentation and would triple the CRD's size.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = FlashSale::crd();
    for version in &mut crd.spec.versions {
        let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        let Some(spec) = child(root, "spec") else {
            continue;
        };
        if let Some(template) = child(&mut *spec, "cacheWarm")
            .and_then(items)
            .and_then(|w| child(w, "template"))
        {
            strip_descriptions(template);
        }
        if let Some(toleration) = child(child(spec, "spotDrain"), "tolerations").and_then(items) {
            strip_descriptions(toleration);
        }
    }
    crd
}

/// The CRD as the YAML document checked in under `crds/` and shipped in the chart.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&crd()).map(|body| format!("---\n{body}"))
}

fn child<'a>(
    schema: impl Into<Option<&'a mut JSONSchemaProps>>,
    name: &str,
) -> Option<&'a mut JSONSchemaProps> {
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
