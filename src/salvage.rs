//! Reading a FlashSale the operator's types cannot: a value only a newer chart knows (the
//! operator rolled back under a newer CRD), a status written by hand. Without this its
//! finalizer never runs, and whatever the sale changed stays changed however long it waits.
//!
//! The unreadable parts are left out, one at a time, each named with why (`spec.workloads[0].
//! scale.mode: unknown variant "KEDA"`); what remains is a sale the restore can run on. The
//! restore takes its originals from its records (the annotations on each object, the second
//! record in status) and from the live objects, not from the parts left out, so it puts back
//! what the records say. Pure.

use serde_json::Value;
use serde_path_to_error::Segment;

use crate::api::FlashSale;

/// How many parts may be left out before the object counts as unreadable altogether.
const MAX_LEFT_OUT: usize = 32;

/// A FlashSale read with its unreadable parts left out.
#[derive(Debug)]
pub struct Salvaged {
    pub sale: FlashSale,
    /// Each part left out, as `path: why`, in the order found.
    pub left_out: Vec<String>,
    /// The paths of the spec's parts left out whole (a workload, a cluster, a lever's block):
    /// what they changed, the restore cannot know to put back.
    pub whole: Vec<String>,
}

/// Reads `raw` (the object as the API server returned it), leaving out each part that does
/// not read. `Err` when even the object's frame (metadata, spec, window) does not.
pub fn salvage(mut raw: Value) -> Result<Salvaged, String> {
    let mut left_out = vec![];
    let mut whole = vec![];
    loop {
        let error = match serde_path_to_error::deserialize::<_, FlashSale>(&raw) {
            Ok(sale) => return Ok(Salvaged { sale, left_out, whole }),
            Err(error) => error,
        };
        let mut path: Vec<Segment> = error.path().iter().cloned().collect();
        let why = format!("{}: {}", error.path(), error.inner());
        // A part missing a required field is no use, and a part of what names an object (a
        // workload's `ref`, a cluster entry) left out would make the rest name another object
        // (a namespace dropped is the sale's own): the list item holding it goes whole.
        if (error.inner().to_string().starts_with("missing field") || names_an_object(&path))
            && let Some(item) = path.iter().rposition(|s| matches!(s, Segment::Seq { .. }))
        {
            path.truncate(item + 1);
        }
        if left_out.len() >= MAX_LEFT_OUT || essential(&path) || !remove(&mut raw, &path) {
            return Err(why);
        }
        let in_spec = matches!(path.first(), Some(Segment::Map { key }) if key == "spec");
        if in_spec && (path.len() == 2 || matches!(path.last(), Some(Segment::Seq { .. }))) {
            whole.push(display(&path));
        }
        left_out.push(why);
    }
}

/// Whether `path` lies in what identifies the object a list item acts on: a workload's `ref`,
/// anything of a cluster entry (its name and its credentials).
fn names_an_object(path: &[Segment]) -> bool {
    let keys: Vec<&str> =
        path.iter().filter_map(|s| if let Segment::Map { key } = s { Some(key.as_str()) } else { None }).collect();
    matches!(keys.as_slice(), ["spec", "workloads", "ref", ..] | ["spec", "clusters", ..])
}

/// The parts without which there is no sale to restore: its identity and its window.
fn essential(path: &[Segment]) -> bool {
    let keys: Vec<&str> = path
        .iter()
        .map(|s| match s {
            Segment::Map { key } => key.as_str(),
            Segment::Enum { variant } => variant.as_str(),
            _ => "",
        })
        .collect();
    matches!(keys.as_slice(), [] | ["metadata", ..] | ["spec"] | ["spec", "window", ..])
}

/// A path as `spec.workloads[1]`.
fn display(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => out.push_str(".?"),
        }
    }
    out
}

/// Removes the value at `path` (a map entry, or a list item); false when there is none.
fn remove(value: &mut Value, path: &[Segment]) -> bool {
    let Some((last, parents)) = path.split_last() else { return false };
    let mut node = value;
    for segment in parents {
        let next = match (segment, node) {
            (Segment::Map { key }, Value::Object(map)) => map.get_mut(key),
            (Segment::Seq { index }, Value::Array(items)) => items.get_mut(*index),
            _ => None,
        };
        match next {
            Some(next) => node = next,
            None => return false,
        }
    }
    match (last, node) {
        (Segment::Map { key }, Value::Object(map)) => map.remove(key).is_some(),
        (Segment::Seq { index }, Value::Array(items)) if *index < items.len() => {
            items.remove(*index);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sale(workloads: Value, status: Value) -> Value {
        json!({
            "apiVersion": "flashsale.dev/v1alpha1", "kind": "FlashSale",
            "metadata": {"name": "flash", "namespace": "shop"},
            "spec": {"window": {"start": "2026-11-11T00:00:00Z", "end": "2026-11-11T02:00:00Z"}, "workloads": workloads},
            "status": status,
        })
    }

    #[test]
    fn a_readable_sale_is_read_whole() {
        let got =
            salvage(sale(json!([{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 4}}]), json!({})))
                .unwrap();
        assert!(got.left_out.is_empty() && got.whole.is_empty());
        assert_eq!(got.sale.spec.workloads.len(), 1);
    }

    #[test]
    fn each_unreadable_part_is_left_out_and_named() {
        let workloads = json!([
            {"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 4, "mode": "KEDA"}},
            {"ref": {"kind": "Deployment"}, "scale": {"peak": 2}},
            {"ref": {"kind": "Deployment", "name": "api"}, "scale": {"peak": 3}},
        ]);
        let status = json!({"phase": "Warming", "clusters": [{"name": "local", "reachable": true, "originals": [
            {"object": "Deployment shop/web", "field": "replicas", "value": "2"}
        ]}]});
        let got = salvage(sale(workloads, status)).unwrap();
        let names: Vec<&str> = got.sale.spec.workloads.iter().map(|w| w.target.name.as_str()).collect();
        assert_eq!(names, ["web", "api"], "{:?}", got.left_out);
        assert_eq!(got.left_out.len(), 3, "{:?}", got.left_out);
        assert!(
            got.left_out[0].starts_with("spec.workloads[0].scale.mode: unknown variant `KEDA`"),
            "{:?}",
            got.left_out
        );
        assert!(got.left_out[1].starts_with("spec.workloads[1].ref: missing field `name`"), "{:?}", got.left_out);
        assert!(got.left_out[2].starts_with("status.phase: unknown variant `Warming`"), "{:?}", got.left_out);
        // Only the workload without a name is left out whole.
        assert_eq!(got.whole, ["spec.workloads[1]"]);
        // The records the restore needs are kept.
        let status = got.sale.status.unwrap();
        assert_eq!(status.clusters[0].originals[0].value, "2");
    }

    #[test]
    fn a_part_of_what_names_an_object_takes_its_whole_item() {
        // A namespace that does not read, left out alone, would make the workload the sale's
        // own namespace's `web`: the whole workload is left out instead.
        let workloads = json!([
            {"ref": {"kind": "Deployment", "name": "web", "namespace": 7}, "scale": {"peak": 4}},
            {"ref": {"kind": "Deployment", "name": "api"}, "scale": {"peak": 3}},
        ]);
        let got = salvage(sale(workloads, json!({}))).unwrap();
        let names: Vec<&str> = got.sale.spec.workloads.iter().map(|w| w.target.name.as_str()).collect();
        assert_eq!(names, ["api"], "{:?}", got.left_out);
        assert_eq!(got.whole, ["spec.workloads[0]"]);
        assert!(got.left_out[0].starts_with("spec.workloads[0].ref.namespace: invalid type"), "{:?}", got.left_out);
    }

    #[test]
    fn without_its_window_there_is_no_sale() {
        let mut raw = sale(json!([]), json!({}));
        raw["spec"]["window"] = json!({"start": 7});
        let why = salvage(raw).unwrap_err();
        assert!(why.starts_with("spec.window.start"), "{why}");
    }
}
