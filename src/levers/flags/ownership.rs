//! Which part of a shared flag file is the sale's (pure).
//!
//! The sale owns its flag names and nothing else. Each write merges the sale's flags into the
//! file as it is live at that moment, so a flag or key someone else changes during the sale is
//! kept. The record taken before the sale's first write holds, for each of the sale's names, the
//! definition it replaced (or that there was none); the restore puts exactly those names back
//! and leaves everything else as people left it. An object the sale created is deleted only
//! when nothing but the sale's flags is in it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

use super::flagd;

/// What the published object held before the sale, kept in the `flashsale.dev/original-flags`
/// annotation from the write that first adds the sale's flags.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The sale created the object.
    pub created: bool,
    /// The flag file as it was (null: the object had none). A restore that finds nothing else
    /// changed writes this text back byte for byte.
    #[serde(default)]
    pub flags_file: Option<String>,
    /// Each flag name the sale published, with the definition it replaced (null: the sale added
    /// it). Absent in records of earlier versions, which held the whole file instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<BTreeMap<String, Value>>,
}

impl Record {
    /// The record taken before the first write: `live_file` is the object's flag file, if the
    /// object exists (`exists`) and has one.
    pub fn before_first_write(exists: bool, live_file: Option<&str>) -> Record {
        Record { created: !exists, flags_file: live_file.map(str::to_owned), flags: Some(BTreeMap::new()) }
    }

    /// The originals by flag name. A record of an earlier version knew only the whole file:
    /// each of `names` then had the definition that file gave it, or none.
    pub fn originals<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, Value> {
        if let Some(flags) = &self.flags {
            return flags.clone();
        }
        let before = self.flags_file.as_deref().map(flagd::flags_of).unwrap_or_default();
        names.into_iter().map(|n| (n.to_owned(), before.get(n).cloned().unwrap_or(Value::Null))).collect()
    }
}

/// Puts the sale's `wanted` flags into `flags` (the live flag set), recording in `originals` the
/// definition each name replaces the first time the sale writes it. A name the sale no longer
/// publishes (removed from the spec mid-sale) is put back as it was and forgotten. Every other
/// flag is left as it is.
pub fn hold_flags(
    flags: &mut Map<String, Value>,
    originals: &mut BTreeMap<String, Value>,
    wanted: &BTreeMap<String, Value>,
) {
    let dropped: Vec<String> = originals.keys().filter(|n| !wanted.contains_key(*n)).cloned().collect();
    for name in dropped {
        if let Some(original) = originals.remove(&name) {
            put_back(flags, &name, original);
        }
    }
    for (name, flag) in wanted {
        originals.entry(name.clone()).or_insert_with(|| flags.get(name).cloned().unwrap_or(Value::Null));
        flags.insert(name.clone(), flag.clone());
    }
}

/// Puts each of the sale's names back in `flags` as `originals` says (removed when the sale added
/// it); every other flag stays.
pub fn restore_flags(flags: &mut Map<String, Value>, originals: &BTreeMap<String, Value>) {
    for (name, original) in originals {
        put_back(flags, name, original.clone());
    }
}

fn put_back(flags: &mut Map<String, Value>, name: &str, original: Value) {
    if original.is_null() {
        flags.remove(name);
    } else {
        flags.insert(name.to_owned(), original);
    }
}

/// The restore of a FeatureFlag's flags (`live`): a merge patch of `spec.flagSpec.flags` setting
/// each of the sale's names back (null: removed), and whether to delete the object instead (the
/// sale created it and no flag of anyone else's is in it).
pub fn restore_feature_flag<'a>(
    live: &Map<String, Value>,
    record: &Record,
    names: impl IntoIterator<Item = &'a str>,
) -> (Map<String, Value>, bool) {
    let mut flags = live.clone();
    let originals = record.originals(names);
    restore_flags(&mut flags, &originals);
    let patch = originals.keys().map(|n| (n.clone(), flags.get(n).cloned().unwrap_or(Value::Null))).collect();
    (patch, record.created && flags.is_empty())
}

/// A flag file as a document whose `flags` is an object, or why it is not a flag file.
fn parse(file: &str) -> Result<Value, String> {
    let mut doc: Value = serde_json::from_str(file).map_err(|e| format!("it is not JSON ({e})"))?;
    let Some(obj) = doc.as_object_mut() else {
        return Err("it is not a JSON object".into());
    };
    if !obj.entry("flags").or_insert_with(|| Value::Object(Map::new())).is_object() {
        return Err("its \"flags\" is not an object".into());
    }
    Ok(doc)
}

fn flags_mut(doc: &mut Value) -> Option<&mut Map<String, Value>> {
    doc.get_mut("flags").and_then(Value::as_object_mut)
}

/// What a write of the sale's flags into a ConfigMap's flag file puts there.
#[derive(Clone, Debug, PartialEq)]
pub struct Held {
    /// The file to publish.
    pub file: String,
    /// Whether the live file already says this (compared as JSON, so a person's formatting is
    /// never rewritten for nothing).
    pub in_place: bool,
    pub record: Record,
}

/// The ConfigMap flag file to publish: the live file (`live`, or a new file when there is none)
/// with the sale's `wanted` flags merged in. Fails, with a reason for a person, when the live
/// file is not a flag file.
pub fn hold_file(live: Option<&str>, record: &Record, wanted: &BTreeMap<String, Value>) -> Result<Held, String> {
    let mut doc = match live {
        Some(text) => parse(text)?,
        None => json!({"$schema": flagd::SCHEMA, "flags": {}}),
    };
    let before = doc.clone();
    let mut originals = record.originals(wanted.keys().map(String::as_str));
    if let Some(flags) = flags_mut(&mut doc) {
        hold_flags(flags, &mut originals, wanted);
    }
    let in_place = live.is_some() && doc == before;
    let record = Record { flags: Some(originals), ..record.clone() };
    Ok(Held { file: flagd::render(&doc), in_place, record })
}

/// What the restore leaves of a ConfigMap.
#[derive(Clone, Debug, PartialEq)]
pub struct Restored {
    /// The flag file to leave (`None`: the key goes).
    pub file: Option<String>,
    /// Delete the ConfigMap: the sale created it and nothing else is in it.
    pub delete: bool,
}

/// The restore of a ConfigMap's flag file: the sale's names back as `record` says, everything
/// else as it is live. The key goes when the object had none before and only the sale's
/// scaffolding remains; the ConfigMap goes when the sale created it and `other_content` (another
/// data key, binary data) is false. `names` are the sale's flag names now, for records of
/// earlier versions. Fails when the live file is no longer a flag file (nothing is guessed).
pub fn restore_file<'a>(
    live: Option<&str>,
    record: &Record,
    names: impl IntoIterator<Item = &'a str>,
    other_content: bool,
) -> Result<Restored, String> {
    let file = match live {
        None => None,
        Some(text) => {
            let mut doc = parse(text)?;
            if let Some(flags) = flags_mut(&mut doc) {
                restore_flags(flags, &record.originals(names));
            }
            match record.flags_file.as_deref() {
                // Unchanged apart from the sale's flags: the owner's text, byte for byte.
                Some(original) if parse(original).is_ok_and(|o| o == doc) => Some(original.to_owned()),
                None if only_scaffolding(&doc) => None,
                _ => Some(flagd::render(&doc)),
            }
        }
    };
    let delete = record.created && file.is_none() && !other_content;
    Ok(Restored { file, delete })
}

/// A file holding no flag and nothing but what the sale writes into a new file.
fn only_scaffolding(doc: &Value) -> bool {
    doc.as_object().is_some_and(|o| {
        o.keys().all(|k| k == "$schema" || k == "flags")
            && o.get("flags").and_then(Value::as_object).is_some_and(Map::is_empty)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(variant: &str) -> Value {
        json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": variant})
    }

    fn file(flags: &[(&str, &str)]) -> String {
        let flags: Map<String, Value> = flags.iter().map(|(n, v)| ((*n).to_owned(), f(v))).collect();
        flagd::render(&json!({"flags": flags}))
    }

    fn variants(text: &str) -> BTreeMap<String, String> {
        flagd::flags_of(text)
            .into_iter()
            .map(|(n, v)| (n, v["defaultVariant"].as_str().unwrap_or("?").to_owned()))
            .collect()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    /// One sale flag `sale` (published off) over a file; each row: the file before the sale, a
    /// person's edit during the sale, and what the file holds while held and after the restore.
    #[test]
    fn the_sale_owns_its_flag_names_and_nothing_else() {
        let wanted = BTreeMap::from([("sale".to_owned(), f("off"))]);
        type Edit = fn(&str) -> String;
        let none: Edit = |t| t.to_owned();
        let other_off: Edit = |t| {
            let mut doc: Value = serde_json::from_str(t).unwrap_or_default();
            doc["flags"]["other"] = f("off");
            flagd::render(&doc)
        };
        let add_theirs: Edit = |t| {
            let mut doc: Value = serde_json::from_str(t).unwrap_or_default();
            doc["flags"]["theirs"] = f("on");
            flagd::render(&doc)
        };
        let sale_on: Edit = |t| {
            let mut doc: Value = serde_json::from_str(t).unwrap_or_default();
            doc["flags"]["sale"]["defaultVariant"] = json!("on");
            flagd::render(&doc)
        };
        type Row<'a> = (&'a str, Option<String>, Edit, &'a [(&'a str, &'a str)], Option<&'a [(&'a str, &'a str)]>);
        let table: [Row; 6] = [
            // A file of its own, nobody touches it: the sale's flag comes and goes.
            (
                "untouched file",
                Some(file(&[("other", "on")])),
                none,
                &[("other", "on"), ("sale", "off")],
                Some(&[("other", "on")]),
            ),
            // On-call switches another flag off mid-sale: kept while held and after the restore.
            (
                "on-call edit",
                Some(file(&[("other", "on")])),
                other_off,
                &[("other", "off"), ("sale", "off")],
                Some(&[("other", "off")]),
            ),
            // The file had a flag of the sale's name: it comes back as it was.
            (
                "same name",
                Some(file(&[("sale", "on"), ("other", "on")])),
                other_off,
                &[("other", "off"), ("sale", "off")],
                Some(&[("other", "off"), ("sale", "on")]),
            ),
            // No file before, nothing added: the key goes.
            ("no file", None, none, &[("sale", "off")], None),
            // No file before, another team added a flag: the file stays with theirs only.
            (
                "no file, theirs added",
                None,
                add_theirs,
                &[("sale", "off"), ("theirs", "on")],
                Some(&[("theirs", "on")]),
            ),
            // The sale's own flag edited by hand: the sale publishes its value again.
            (
                "sale's flag edited",
                Some(file(&[("other", "on")])),
                sale_on,
                &[("other", "on"), ("sale", "off")],
                Some(&[("other", "on")]),
            ),
        ];
        for (name, before, edit, held, after) in table {
            let record = Record::before_first_write(true, before.as_deref());
            let first = hold_file(before.as_deref(), &record, &wanted).unwrap_or_else(|e| panic!("{name}: {e}"));
            let edited = edit(&first.file);
            let again = hold_file(Some(&edited), &first.record, &wanted).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(variants(&again.file), map(held), "{name}: while held");
            assert_eq!(again.record.flags, first.record.flags, "{name}: the originals are recorded once");
            let restored =
                restore_file(Some(&again.file), &again.record, [], false).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(restored.file.as_deref().map(variants), after.map(map), "{name}: after the restore");
            assert!(!restored.delete, "{name}: a ConfigMap the sale did not create is never deleted");
        }
    }

    #[test]
    fn an_untouched_file_comes_back_byte_for_byte_and_an_unchanged_pass_is_in_place() {
        let owners = "{\"flags\": {\"a\": {\"state\": \"ENABLED\", \"variants\": {\"on\": true, \"off\": false}, \"defaultVariant\": \"on\"}}}";
        let wanted = BTreeMap::from([("sale".to_owned(), f("off"))]);
        let record = Record::before_first_write(true, Some(owners));
        let held = hold_file(Some(owners), &record, &wanted).unwrap_or_else(|e| panic!("{e}"));
        assert!(!held.in_place);
        let again = hold_file(Some(&held.file), &held.record, &wanted).unwrap_or_else(|e| panic!("{e}"));
        assert!(again.in_place, "nothing to write");
        // The owner reformats the file: same JSON, so nothing is rewritten.
        let spaced = held.file.replace('\n', "\n\n");
        assert!(hold_file(Some(&spaced), &held.record, &wanted).is_ok_and(|h| h.in_place));
        let restored = restore_file(Some(&held.file), &held.record, [], false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(restored.file.as_deref(), Some(owners));
    }

    /// A ConfigMap the sale created: (added by others in the file, other data key) -> (key kept, deleted).
    #[test]
    fn a_created_configmap_goes_only_when_nothing_else_is_in_it() {
        let wanted = BTreeMap::from([("sale".to_owned(), f("off"))]);
        let record = Record::before_first_write(false, None);
        let held = hold_file(None, &record, &wanted).unwrap_or_else(|e| panic!("{e}"));
        let mut theirs: Value = serde_json::from_str(&held.file).unwrap_or_default();
        theirs["flags"]["theirs"] = f("on");
        let theirs = flagd::render(&theirs);
        let table = [
            ("nothing added", held.file.clone(), false, false, true),
            ("another team's key", held.file.clone(), true, false, false),
            ("another team's flag", theirs.clone(), false, true, false),
            ("both", theirs, true, true, false),
        ];
        for (name, live, other_key, file_kept, delete) in table {
            let r = restore_file(Some(&live), &held.record, [], other_key).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((r.file.is_some(), r.delete), (file_kept, delete), "{name}");
            if let Some(file) = r.file {
                assert_eq!(variants(&file), map(&[("theirs", "on")]), "{name}: only the sale's flag goes");
            }
        }
        // The key removed by hand meanwhile: nothing of the sale's left to restore.
        let gone = restore_file(None, &held.record, [], false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(gone, Restored { file: None, delete: true });
        let kept = restore_file(None, &held.record, [], true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kept, Restored { file: None, delete: false });
    }

    /// The sale's own FeatureFlag: (flags live at the restore) -> (patch, deleted).
    #[test]
    fn a_feature_flag_the_sale_created_keeps_flags_others_added() {
        let wanted = BTreeMap::from([("sale".to_owned(), f("off"))]);
        let mut live = Map::new();
        let mut originals = BTreeMap::new();
        hold_flags(&mut live, &mut originals, &wanted);
        let record = Record { created: true, flags_file: None, flags: Some(originals) };
        let mut theirs = live.clone();
        theirs.insert("theirs".into(), f("on"));
        let table = [
            ("only the sale's flag", live.clone(), true),
            ("another team's flag", theirs, false),
            ("emptied by hand", Map::new(), true),
        ];
        for (name, flags, delete) in table {
            let (patch, deleted) = restore_feature_flag(&flags, &record, []);
            assert_eq!(deleted, delete, "{name}");
            assert_eq!(
                patch,
                Map::from_iter([("sale".to_owned(), Value::Null)]),
                "{name}: only the sale's name is patched"
            );
        }
        // Held again over a flag someone added: theirs stays, ours is set.
        let mut again: Map<String, Value> = Map::from_iter([("theirs".to_owned(), f("on"))]);
        let mut originals = record.originals([]);
        hold_flags(&mut again, &mut originals, &wanted);
        assert_eq!(again.len(), 2);
        assert_eq!(originals, BTreeMap::from([("sale".to_owned(), Value::Null)]));
    }

    #[test]
    fn a_flag_dropped_from_the_spec_mid_sale_is_put_back_at_once() {
        let before = file(&[("a", "on"), ("other", "on")]);
        let both = BTreeMap::from([("a".to_owned(), f("off")), ("b".to_owned(), f("off"))]);
        let record = Record::before_first_write(true, Some(&before));
        let held = hold_file(Some(&before), &record, &both).unwrap_or_else(|e| panic!("{e}"));
        let only_b = BTreeMap::from([("b".to_owned(), f("off"))]);
        let later = hold_file(Some(&held.file), &held.record, &only_b).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(variants(&later.file), map(&[("a", "on"), ("b", "off"), ("other", "on")]));
        assert_eq!(later.record.flags.map(|f| f.into_keys().collect::<Vec<_>>()), Some(vec!["b".to_owned()]));
    }

    #[test]
    fn a_record_of_an_earlier_version_restores_the_names_from_its_whole_file() -> Result<(), String> {
        let before = file(&[("sale", "on"), ("other", "on")]);
        let legacy: Record =
            serde_json::from_value(json!({"created": false, "flagsFile": before})).map_err(|e| e.to_string())?;
        let live = file(&[("sale", "off"), ("other", "off"), ("new", "on")]);
        let r = restore_file(Some(&live), &legacy, ["sale"], false)?;
        assert_eq!(r.file.as_deref().map(variants), Some(map(&[("new", "on"), ("other", "off"), ("sale", "on")])));
        let created: Record =
            serde_json::from_value(json!({"created": true, "flagsFile": null})).map_err(|e| e.to_string())?;
        let r = restore_file(Some(&file(&[("sale", "off")])), &created, ["sale"], false)?;
        assert_eq!(r, Restored { file: None, delete: true });
        Ok(())
    }

    #[test]
    fn a_file_that_is_no_longer_a_flag_file_is_refused_not_guessed() {
        let record = Record::before_first_write(true, Some("{\"flags\":{}}"));
        let wanted = BTreeMap::from([("sale".to_owned(), f("off"))]);
        assert!(hold_file(Some("x=1"), &record, &wanted).is_err_and(|e| e.contains("not JSON")));
        assert!(restore_file(Some("[1]"), &record, [], false).is_err_and(|e| e.contains("not a JSON object")));
    }

    #[test]
    fn the_record_round_trips_and_reads_earlier_versions() -> Result<(), serde_json::Error> {
        let r = Record {
            created: false,
            flags_file: Some("{}".into()),
            flags: Some(BTreeMap::from([("a".to_owned(), Value::Null)])),
        };
        let text = serde_json::to_string(&r)?;
        assert_eq!(text, r#"{"created":false,"flagsFile":"{}","flags":{"a":null}}"#);
        assert_eq!(serde_json::from_str::<Record>(&text)?, r);
        let legacy: Record = serde_json::from_str(r#"{"created":true,"flagsFile":null}"#)?;
        assert_eq!(legacy.flags, None);
        Ok(())
    }

    /// Which live files the sale merges its flags into, and what else in them it keeps.
    #[test]
    fn a_live_file_is_merged_into_when_it_is_a_json_object_with_object_flags() {
        let wanted = BTreeMap::from([("sale".to_owned(), f("off"))]);
        // (case, live file, Ok(top-level keys after the merge) or the refusal's start)
        type Row = (&'static str, Option<&'static str>, Result<Vec<&'static str>, &'static str>);
        let table: [Row; 8] = [
            ("no file: a new one with the schema", None, Ok(vec!["$schema", "flags"])),
            ("an empty object", Some("{}"), Ok(vec!["flags"])),
            (
                "other top-level keys are kept",
                Some(r#"{"$evaluators": {"x": {}}, "flags": {}}"#),
                Ok(vec!["$evaluators", "flags"]),
            ),
            ("null flags", Some(r#"{"flags": null}"#), Err("its \"flags\" is not an object")),
            ("flags a list", Some(r#"{"flags": []}"#), Err("its \"flags\" is not an object")),
            ("a JSON string", Some(r#""flags""#), Err("it is not a JSON object")),
            ("YAML", Some("flags: {}"), Err("it is not JSON")),
            ("an empty file", Some(""), Err("it is not JSON")),
        ];
        for (case, live, want) in table {
            let record = Record::before_first_write(live.is_some(), live);
            let got = hold_file(live, &record, &wanted).map(|held| {
                let doc: Value = serde_json::from_str(&held.file).unwrap_or_default();
                assert_eq!(variants(&held.file), map(&[("sale", "off")]), "{case}: the sale's flag is in");
                assert!(!held.in_place, "{case}: the first write is never in place");
                doc.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default()
            });
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{case}"),
                (Err(got), Err(want)) => assert!(got.starts_with(want), "{case}: {got}"),
                (got, want) => panic!("{case}: got {got:?}, wanted {want:?}"),
            }
        }
    }

    /// The originals a record gives for the sale's names: its own map when it has one, else
    /// (a record of an earlier version) each name as the whole file had it.
    #[test]
    fn the_originals_come_from_the_record_or_from_the_file_it_kept() {
        let old = file(&[("sale", "on"), ("other", "on")]);
        let with_flags = |flags: &[(&str, Value)]| Record {
            created: false,
            flags_file: Some(old.clone()),
            flags: Some(flags.iter().map(|(n, v)| ((*n).to_owned(), v.clone())).collect()),
        };
        let legacy = |file: Option<&str>| Record { created: false, flags_file: file.map(str::to_owned), flags: None };
        // (case, record, the sale's names now, originals)
        type Row = (&'static str, Record, &'static [&'static str], Vec<(&'static str, Value)>);
        let table: [Row; 6] = [
            ("a new record, nothing replaced yet", Record::before_first_write(true, Some(&old)), &["sale"], vec![]),
            (
                "a record of what the sale replaced",
                with_flags(&[("sale", f("on"))]),
                &["sale", "new"],
                vec![("sale", f("on"))],
            ),
            (
                "a record of a name the sale added",
                with_flags(&[("added", Value::Null)]),
                &[],
                vec![("added", Value::Null)],
            ),
            (
                "an earlier version's record",
                legacy(Some(&old)),
                &["sale", "new"],
                vec![("new", Value::Null), ("sale", f("on"))],
            ),
            ("an earlier version's record of no file", legacy(None), &["sale"], vec![("sale", Value::Null)]),
            ("an earlier version's record, no names", legacy(Some(&old)), &[], vec![]),
        ];
        for (case, record, names, want) in table {
            let want: BTreeMap<String, Value> = want.into_iter().map(|(n, v)| (n.to_owned(), v)).collect();
            assert_eq!(record.originals(names.iter().copied()), want, "{case}");
        }
    }

    /// The restore of a FeatureFlag the sale did not create puts each replaced flag back and
    /// removes each it added, never deleting the object.
    #[test]
    fn a_feature_flag_the_sale_did_not_create_gets_its_flags_back_and_stays() {
        let record = Record {
            created: false,
            flags_file: None,
            flags: Some(BTreeMap::from([("replaced".to_owned(), f("on")), ("added".to_owned(), Value::Null)])),
        };
        let live = |pairs: &[(&str, &str)]| -> Map<String, Value> {
            pairs.iter().map(|(n, v)| ((*n).to_owned(), f(v))).collect()
        };
        // (case, live flags, patch)
        let table = [
            ("both still the sale's", live(&[("replaced", "off"), ("added", "off")])),
            ("with another team's flag", live(&[("replaced", "off"), ("added", "off"), ("theirs", "on")])),
            ("the sale's removed by hand", live(&[])),
        ];
        for (case, flags) in table {
            let (patch, delete) = restore_feature_flag(&flags, &record, []);
            let want = Map::from_iter([("added".to_owned(), Value::Null), ("replaced".to_owned(), f("on"))]);
            assert_eq!((patch, delete), (want, false), "{case}");
        }
    }
}
