//! Rendering degradation flags in flagd's flag-definition format (pure).
//!
//! Each flag is boolean with the variants `on` (true) and `off` (false). A static flag also
//! carries its off-window in `targeting` on `$flagd.timestamp` (unix seconds, JsonLogic), so an
//! app using the flagd provider flips at the boundary second even when the operator is down;
//! `defaultVariant` follows the phase as the operator sees it. Serialization is stable (keys
//! sorted), so an unchanged pass renders byte-identical text and writes nothing.

use jiff::Timestamp;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

use crate::{api::FlagPhase, timeline::Schedule};

/// The ConfigMap key of the flag file, as the flagd provider's file mode reads it.
pub const FLAGS_KEY: &str = "flags.flagd.json";
/// flagd's published flag-definition schema.
pub const SCHEMA: &str = "https://flagd.dev/schema/v0/flags.json";

/// One flag definition.
pub fn flag(enabled: bool, targeting: Option<Value>) -> Value {
    let mut flag = json!({
        "state": "ENABLED",
        "variants": {"on": true, "off": false},
        "defaultVariant": if enabled { "on" } else { "off" },
    });
    if let (Some(t), Some(obj)) = (targeting, flag.as_object_mut()) {
        obj.insert("targeting".into(), t);
    }
    flag
}

/// The half-open intervals `[from, to)` of unix seconds in which a flag that is off during
/// `phases` is off, adjacent phases merged. Boundaries are rounded up to the whole second, since
/// `$flagd.timestamp` is whole seconds: a flag never flips before its phase begins.
pub fn off_windows(schedule: &Schedule, phases: &[FlagPhase]) -> Vec<(i64, i64)> {
    let bounds = |p: FlagPhase| match p {
        FlagPhase::Preparing => (schedule.prepare_at, schedule.start),
        FlagPhase::Active => (schedule.start, schedule.end),
        FlagPhase::CoolingDown => (schedule.end, schedule.restore_at),
    };
    let mut ranges: Vec<(i64, i64)> = [FlagPhase::Preparing, FlagPhase::Active, FlagPhase::CoolingDown]
        .into_iter()
        .filter(|p| phases.contains(p))
        .map(|p| {
            let (from, to) = bounds(p);
            (ceil_seconds(from), ceil_seconds(to))
        })
        .filter(|(from, to)| from < to)
        .collect();
    ranges.dedup_by(|next, prev| {
        if next.0 <= prev.1 {
            prev.1 = prev.1.max(next.1);
            true
        } else {
            false
        }
    });
    ranges
}

/// JsonLogic answering `off` inside any of `windows` and `on` outside them.
pub fn targeting(windows: &[(i64, i64)]) -> Option<Value> {
    if windows.is_empty() {
        return None;
    }
    let now = json!({"var": "$flagd.timestamp"});
    let mut branches: Vec<Value> = windows
        .iter()
        .flat_map(|(from, to)| [json!({"and": [{">=": [now, from]}, {"<": [now, to]}]}), Value::String("off".into())])
        .collect();
    branches.push(Value::String("on".into()));
    Some(json!({ "if": branches }))
}

/// A whole flag file holding only `flags`.
pub fn document(flags: &BTreeMap<String, Value>) -> String {
    render(&json!({"$schema": SCHEMA, "flags": flags}))
}

/// The flags of a flag file by name (empty when it has none or is not one).
pub fn flags_of(file: &str) -> Map<String, Value> {
    serde_json::from_str::<Value>(file)
        .ok()
        .and_then(|v| v.get("flags").and_then(Value::as_object).cloned())
        .unwrap_or_default()
}

/// A flag file's text: stable (keys sorted) and ending in a newline.
pub fn render(doc: &Value) -> String {
    // Serializing a JSON value cannot fail; the trailing newline keeps the file friendly to diff.
    let mut text = serde_json::to_string_pretty(doc).unwrap_or_default();
    text.push('\n');
    text
}

fn ceil_seconds(t: Timestamp) -> i64 {
    let s = t.as_second();
    if t.subsec_nanosecond() > 0 { s + 1 } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;

    fn schedule() -> Schedule {
        let start: Timestamp = "2026-11-11T00:00:00+08:00".parse().unwrap_or(Timestamp::UNIX_EPOCH);
        Schedule {
            prepare_at: start - SignedDuration::from_mins(30),
            start,
            end: start + SignedDuration::from_hours(2),
            restore_at: start + SignedDuration::from_mins(150),
        }
    }

    /// Evaluates the rendered targeting the way JsonLogic does, for the shapes `targeting` emits.
    fn evaluate(logic: &Value, now: i64) -> String {
        fn truthy(v: &Value, now: i64) -> bool {
            let num = |v: &Value| if v.get("var").is_some() { now } else { v.as_i64().unwrap_or(i64::MIN) };
            if let Some(all) = v.get("and").and_then(Value::as_array) {
                return all.iter().all(|c| truthy(c, now));
            }
            if let Some([a, b]) = v.get(">=").and_then(Value::as_array).map(Vec::as_slice) {
                return num(a) >= num(b);
            }
            if let Some([a, b]) = v.get("<").and_then(Value::as_array).map(Vec::as_slice) {
                return num(a) < num(b);
            }
            panic!("unexpected logic {v}")
        }
        let branches = logic["if"].as_array().cloned().unwrap_or_default();
        for pair in branches.chunks(2) {
            match pair {
                [cond, variant] if truthy(cond, now) => return variant.as_str().unwrap_or("").to_owned(),
                [cond, _] if !truthy(cond, now) => continue,
                [otherwise] => return otherwise.as_str().unwrap_or("").to_owned(),
                _ => {}
            }
        }
        String::new()
    }

    #[test]
    fn adjacent_phases_merge_into_one_window() {
        let s = schedule();
        let windows = off_windows(&s, &[FlagPhase::Active, FlagPhase::Preparing]);
        assert_eq!(windows, [(s.prepare_at.as_second(), s.end.as_second())]);
        let split = off_windows(&s, &[FlagPhase::Preparing, FlagPhase::CoolingDown]);
        assert_eq!(
            split,
            [(s.prepare_at.as_second(), s.start.as_second()), (s.end.as_second(), s.restore_at.as_second())]
        );
    }

    #[test]
    fn targeting_flips_exactly_at_the_boundary_seconds() {
        let s = schedule();
        let windows = off_windows(&s, &[FlagPhase::Preparing, FlagPhase::Active]);
        let logic = targeting(&windows).unwrap_or_default();
        let (p, e) = (s.prepare_at.as_second(), s.end.as_second());
        let table = [(p - 1, "on"), (p, "off"), (s.start.as_second(), "off"), (e - 1, "off"), (e, "on")];
        for (at, want) in table {
            assert_eq!(evaluate(&logic, at), want, "at {at}");
        }
    }

    #[test]
    fn split_windows_are_both_honoured() {
        let s = schedule();
        let logic = targeting(&off_windows(&s, &[FlagPhase::Preparing, FlagPhase::CoolingDown])).unwrap_or_default();
        let table = [
            (s.prepare_at.as_second(), "off"),
            (s.start.as_second(), "on"),
            (s.end.as_second() - 1, "on"),
            (s.end.as_second(), "off"),
            (s.restore_at.as_second() - 1, "off"),
            (s.restore_at.as_second(), "on"),
        ];
        for (at, want) in table {
            assert_eq!(evaluate(&logic, at), want, "at {at}");
        }
    }

    #[test]
    fn fractional_boundaries_round_up_so_no_flag_flips_early() {
        let mut s = schedule();
        s.start += SignedDuration::from_millis(300);
        let windows = off_windows(&s, &[FlagPhase::Active]);
        assert_eq!(windows[0].0, s.start.as_second() + 1);
    }

    #[test]
    fn an_empty_phase_has_no_window() {
        let mut s = schedule();
        s.prepare_at = s.start;
        assert!(off_windows(&s, &[FlagPhase::Preparing]).is_empty());
        assert_eq!(targeting(&[]), None);
    }

    #[test]
    fn rendering_is_stable_and_in_flagd_form() {
        let flags = BTreeMap::from([
            ("reviews".to_owned(), flag(false, None)),
            ("recommendations".to_owned(), flag(true, targeting(&[(10, 20)]))),
        ]);
        let text = document(&flags);
        assert_eq!(text, document(&flags.clone()));
        let v: Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(v["$schema"], SCHEMA);
        assert_eq!(
            v["flags"]["reviews"],
            json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"})
        );
        assert_eq!(v["flags"]["recommendations"]["defaultVariant"], "on");
        assert!(text.find("\"recommendations\"") < text.find("\"reviews\""), "keys sorted");
    }

    /// The off-windows for each choice of phases, including lead times of zero and boundaries
    /// that are not whole seconds.
    #[test]
    fn off_windows_for_every_choice_of_phases() {
        use FlagPhase as F;
        let s = schedule();
        let (p, st, e, r) =
            (s.prepare_at.as_second(), s.start.as_second(), s.end.as_second(), s.restore_at.as_second());
        let no_cooldown = Schedule { restore_at: s.end, ..s };
        let ms = jiff::SignedDuration::from_millis(1);
        let fractional = Schedule { start: s.start + ms, end: s.end + ms, ..s };
        // (case, schedule, phases, windows)
        type Row = (&'static str, Schedule, Vec<FlagPhase>, Vec<(i64, i64)>);
        let table: Vec<Row> = vec![
            ("none", s, vec![], vec![]),
            ("Preparing", s, vec![F::Preparing], vec![(p, st)]),
            ("Active", s, vec![F::Active], vec![(st, e)]),
            ("CoolingDown", s, vec![F::CoolingDown], vec![(e, r)]),
            ("all three, in any order", s, vec![F::CoolingDown, F::Preparing, F::Active], vec![(p, r)]),
            ("Active and CoolingDown", s, vec![F::Active, F::CoolingDown], vec![(st, r)]),
            ("listed twice", s, vec![F::Active, F::Active], vec![(st, e)]),
            ("no cooldown: CoolingDown has no window", no_cooldown, vec![F::CoolingDown], vec![]),
            ("no cooldown, Active and CoolingDown", no_cooldown, vec![F::Active, F::CoolingDown], vec![(st, e)]),
            ("boundaries 1ms past the second", fractional, vec![F::Preparing, F::Active], vec![(p, e + 1)]),
            (
                "boundaries 1ms past the second, split",
                fractional,
                vec![F::Preparing, F::CoolingDown],
                vec![(p, st + 1), (e + 1, r)],
            ),
        ];
        for (case, schedule, phases, want) in table {
            assert_eq!(off_windows(&schedule, &phases), want, "{case}");
        }
    }

    /// Reading the flags back out of a file, whatever the file holds.
    #[test]
    fn the_flags_of_a_file_are_empty_unless_it_is_a_flag_file_with_flags() {
        let one = flag(false, None);
        // (case, file, flag names)
        let table: [(&str, String, Vec<&str>); 6] = [
            (
                "a rendered document",
                document(&BTreeMap::from([("a".to_owned(), one.clone()), ("b".to_owned(), one)])),
                vec!["a", "b"],
            ),
            ("no flags key", r#"{"$schema": "x"}"#.to_owned(), vec![]),
            ("flags not an object", r#"{"flags": ["a"]}"#.to_owned(), vec![]),
            ("not JSON", "a: b".to_owned(), vec![]),
            ("a JSON array", "[]".to_owned(), vec![]),
            ("another owner's flag", r#"{"flags": {"theirs": {"state": "DISABLED"}}}"#.to_owned(), vec!["theirs"]),
        ];
        for (case, file, names) in table {
            let got: Vec<String> = flags_of(&file).keys().cloned().collect();
            assert_eq!(got, names, "{case}");
        }
        // A flag definition: on or off by default, its targeting when it has one.
        let window = targeting(&[(1, 2)]);
        assert_eq!(flag(true, None)["defaultVariant"], "on");
        assert_eq!(flag(true, None).get("targeting"), None);
        assert_eq!(flag(false, window.clone())["targeting"], window.unwrap_or_default());
        assert!(document(&BTreeMap::new()).ends_with("}\n"), "the file ends in a newline");
    }
}
