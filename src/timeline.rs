//! The sale's timeline: which phase a sale is in at a given instant, and when that changes.
//!
//! Pure: no clock, no I/O. The controller passes the current instant and what it has observed
//! of the restore; everything else follows from the spec.

use jiff::{SignedDuration, Timestamp};
use thiserror::Error;

use crate::api::{FlashSaleSpec, Phase};

/// The four instants that bound a sale's phases, resolved from its spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// `start - prepareBefore`: Preparing begins.
    pub prepare_at: Timestamp,
    /// Window start: Active begins.
    pub start: Timestamp,
    /// Window end: CoolingDown begins.
    pub end: Timestamp,
    /// `end + cooldownAfter`: Restoring begins.
    pub restore_at: Timestamp,
}

/// A spec the admission rules let through but the timeline still cannot use.
///
/// With the CRD's CEL rules installed these cannot happen; they are reported rather than
/// assumed, because a CRD can be installed without them (or edited).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("spec.window.{field} is not an RFC 3339 timestamp with an offset: {value:?}")]
    BadTimestamp { field: &'static str, value: String },
    #[error("spec.window.end ({end}) must be after spec.window.start ({start})")]
    EndNotAfterStart { start: String, end: String },
    #[error("spec.{field} must not be negative")]
    NegativeDuration { field: &'static str },
    #[error("spec.{field} is out of range")]
    OutOfRange { field: &'static str },
}

impl Schedule {
    /// Resolves the spec's window and lead times into instants.
    pub fn from_spec(spec: &FlashSaleSpec) -> Result<Self, ScheduleError> {
        let start = parse_instant("start", &spec.window.start)?;
        let end = parse_instant("end", &spec.window.end)?;
        if end <= start {
            return Err(ScheduleError::EndNotAfterStart {
                start: spec.window.start.clone(),
                end: spec.window.end.clone(),
            });
        }
        let prepare = signed("prepareBefore", &spec.prepare_before)?;
        let cooldown = signed("cooldownAfter", &spec.cooldown_after)?;
        let prepare_at =
            start.checked_sub(prepare).map_err(|_| ScheduleError::OutOfRange { field: "prepareBefore" })?;
        let restore_at = end.checked_add(cooldown).map_err(|_| ScheduleError::OutOfRange { field: "cooldownAfter" })?;
        Ok(Schedule { prepare_at, start, end, restore_at })
    }

    /// The instant `lead` before the window start (for levers with their own lead time, such as
    /// cache warm-up), never later than the start itself.
    pub fn before_start(&self, lead: SignedDuration) -> Timestamp {
        self.start.checked_sub(lead).unwrap_or(Timestamp::MIN).min(self.start)
    }
}

/// Converts a spec duration, refusing negative ones.
pub fn signed(field: &'static str, d: &kube::core::Duration) -> Result<SignedDuration, ScheduleError> {
    if d.is_negative() {
        return Err(ScheduleError::NegativeDuration { field });
    }
    SignedDuration::try_from(std::time::Duration::from(*d)).map_err(|_| ScheduleError::OutOfRange { field })
}

fn parse_instant(field: &'static str, value: &str) -> Result<Timestamp, ScheduleError> {
    value.parse::<Timestamp>().map_err(|_| ScheduleError::BadTimestamp { field, value: value.to_owned() })
}

/// Where a sale is at `now`, and when that changes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub phase: Phase,
    /// The next instant at which the phase changes by the clock alone. `None` once only the
    /// restore's progress (or a spec change) can move the sale on.
    pub next: Option<Timestamp>,
}

/// The phase at `now`.
///
/// `restored` says whether every lever has reported its restore complete since the sale last
/// changed anything; it only matters once the clock has passed `restore_at` (or while
/// suspended, where it is reported separately by the levers' conditions).
pub fn position(schedule: &Schedule, suspend: bool, restored: bool, now: Timestamp) -> Position {
    if suspend {
        return Position { phase: Phase::Suspended, next: None };
    }
    let (phase, next) = if now < schedule.prepare_at {
        (Phase::Scheduled, Some(schedule.prepare_at))
    } else if now < schedule.start {
        (Phase::Preparing, Some(schedule.start))
    } else if now < schedule.end {
        (Phase::Active, Some(schedule.end))
    } else if now < schedule.restore_at {
        (Phase::CoolingDown, Some(schedule.restore_at))
    } else if restored {
        (Phase::Completed, None)
    } else {
        (Phase::Restoring, None)
    };
    Position { phase, next }
}

/// Whether levers should hold the sale's changes in place in `phase` (as opposed to leaving
/// everything untouched before, or putting it back after).
pub fn holds_changes(phase: Phase) -> bool {
    matches!(phase, Phase::Preparing | Phase::Active | Phase::CoolingDown)
}

/// Whether levers should be putting things back in `phase`.
pub fn restores(phase: Phase) -> bool {
    matches!(phase, Phase::Restoring | Phase::Completed | Phase::Suspended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{FlashSaleSpec, Window};
    use proptest::prelude::*;

    fn spec(start: &str, end: &str, prepare: &str, cooldown: &str) -> FlashSaleSpec {
        serde_json::from_value(serde_json::json!({
            "window": {"start": start, "end": end},
            "prepareBefore": prepare,
            "cooldownAfter": cooldown,
            "workloads": [{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 3}}],
        }))
        .unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn double_eleven() -> Schedule {
        Schedule::from_spec(&spec("2026-11-11T00:00:00+08:00", "2026-11-11T02:00:00+08:00", "30m", "15m")).unwrap()
    }

    #[test]
    fn resolves_offsets_to_instants() {
        let s = double_eleven();
        assert_eq!(s.prepare_at, ts("2026-11-10T15:30:00Z"));
        assert_eq!(s.start, ts("2026-11-10T16:00:00Z"));
        assert_eq!(s.end, ts("2026-11-10T18:00:00Z"));
        assert_eq!(s.restore_at, ts("2026-11-10T18:15:00Z"));
    }

    #[test]
    fn defaults_apply_when_lead_times_are_omitted() {
        let spec: FlashSaleSpec = serde_json::from_value(serde_json::json!({
            "window": {"start": "2026-11-11T00:00:00Z", "end": "2026-11-11T01:00:00Z"},
            "workloads": [{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 3}}],
        }))
        .unwrap();
        let s = Schedule::from_spec(&spec).unwrap();
        assert_eq!(s.prepare_at, ts("2026-11-10T23:30:00Z"));
        assert_eq!(s.restore_at, ts("2026-11-11T01:15:00Z"));
    }

    #[test]
    fn every_boundary_just_before_at_and_after() {
        let s = double_eleven();
        let ms = SignedDuration::from_millis(1);
        let table = [
            (s.prepare_at, Phase::Scheduled, Phase::Preparing),
            (s.start, Phase::Preparing, Phase::Active),
            (s.end, Phase::Active, Phase::CoolingDown),
            (s.restore_at, Phase::CoolingDown, Phase::Restoring),
        ];
        for (boundary, before, at) in table {
            let p = position(&s, false, false, boundary - ms);
            assert_eq!(p.phase, before, "1ms before {boundary}");
            assert_eq!(p.next, Some(boundary), "1ms before {boundary} the next boundary is {boundary}");
            assert_eq!(position(&s, false, false, boundary).phase, at, "exactly at {boundary}");
            assert_eq!(position(&s, false, false, boundary + ms).phase, at, "1ms after {boundary}");
        }
    }

    #[test]
    fn restoring_becomes_completed_once_restored() {
        let s = double_eleven();
        let after = s.restore_at + SignedDuration::from_hours(1);
        assert_eq!(position(&s, false, false, after), Position { phase: Phase::Restoring, next: None });
        assert_eq!(position(&s, false, true, after), Position { phase: Phase::Completed, next: None });
        // `restored` means nothing before the restore boundary.
        assert_eq!(position(&s, false, true, s.start).phase, Phase::Active);
    }

    #[test]
    fn suspend_wins_in_every_phase() {
        let s = double_eleven();
        for now in [s.prepare_at - SignedDuration::from_hours(1), s.prepare_at, s.start, s.end, s.restore_at] {
            assert_eq!(position(&s, true, false, now), Position { phase: Phase::Suspended, next: None });
        }
    }

    #[test]
    fn windows_in_any_offset_are_the_same_instants() {
        let a =
            Schedule::from_spec(&spec("2026-11-11T00:00:00+08:00", "2026-11-11T02:00:00+08:00", "30m", "15m")).unwrap();
        let b = Schedule::from_spec(&spec("2026-11-10T16:00:00Z", "2026-11-10T18:00:00Z", "30m", "15m")).unwrap();
        let c =
            Schedule::from_spec(&spec("2026-11-10T11:00:00-05:00", "2026-11-10T13:00:00-05:00", "30m", "15m")).unwrap();
        assert_eq!(a, b);
        assert_eq!(b, c);
    }

    #[test]
    fn dst_crossing_window_counts_real_elapsed_time() {
        // Europe/Berlin falls back at 2026-10-25 03:00 CEST -> 02:00 CET: the wall clock shows a
        // 2h window, but 3h pass.
        let s =
            Schedule::from_spec(&spec("2026-10-25T01:00:00+02:00", "2026-10-25T03:00:00+01:00", "1h", "0s")).unwrap();
        assert_eq!(s.end.duration_since(s.start), SignedDuration::from_hours(3));
        assert_eq!(position(&s, false, false, ts("2026-10-25T00:30:00Z")).phase, Phase::Active);
        assert_eq!(position(&s, false, false, ts("2026-10-25T02:00:00Z")).phase, Phase::Restoring);
    }

    #[test]
    fn zero_lead_times_skip_empty_phases() {
        let s = Schedule::from_spec(&spec("2026-11-11T00:00:00Z", "2026-11-11T01:00:00Z", "0s", "0s")).unwrap();
        assert_eq!(position(&s, false, false, ts("2026-11-10T23:59:59.999Z")).next, Some(s.start));
        assert_eq!(position(&s, false, false, s.start).phase, Phase::Active);
        assert_eq!(position(&s, false, false, s.end).phase, Phase::Restoring);
    }

    #[test]
    fn rejects_what_admission_should_have() {
        let bad = spec("2026-11-11T01:00:00Z", "2026-11-11T00:00:00Z", "30m", "15m");
        assert!(matches!(Schedule::from_spec(&bad), Err(ScheduleError::EndNotAfterStart { .. })));
        let mut garbage = spec("2026-11-11T00:00:00Z", "2026-11-11T01:00:00Z", "30m", "15m");
        garbage.window = Window { start: "tomorrow".into(), end: "2026-11-11T01:00:00Z".into() };
        let err = Schedule::from_spec(&garbage).unwrap_err();
        assert_eq!(err.to_string(), "spec.window.start is not an RFC 3339 timestamp with an offset: \"tomorrow\"");
        let negative = spec("2026-11-11T00:00:00Z", "2026-11-11T01:00:00Z", "-5m", "15m");
        assert_eq!(Schedule::from_spec(&negative), Err(ScheduleError::NegativeDuration { field: "prepareBefore" }));
    }

    /// Where the clock puts the sale, and the next boundary, at instants on and around each
    /// boundary, with `suspend` and the restore's progress (`restored`) set or not.
    #[test]
    fn the_phase_and_next_boundary_at_and_around_each_boundary() {
        let s = double_eleven();
        let ms = SignedDuration::from_millis(1);
        let hour = SignedDuration::from_hours(1);
        let (scheduled, preparing, active, cooling) = (
            Position { phase: Phase::Scheduled, next: Some(s.prepare_at) },
            Position { phase: Phase::Preparing, next: Some(s.start) },
            Position { phase: Phase::Active, next: Some(s.end) },
            Position { phase: Phase::CoolingDown, next: Some(s.restore_at) },
        );
        let restoring = Position { phase: Phase::Restoring, next: None };
        let completed = Position { phase: Phase::Completed, next: None };
        let suspended = Position { phase: Phase::Suspended, next: None };
        // (case, instant, suspend, restored, position)
        let table = [
            ("long before preparing", s.prepare_at - hour * 24 * 30, false, false, scheduled),
            ("1ms before preparing", s.prepare_at - ms, false, false, scheduled),
            ("1ms before preparing, restored says nothing yet", s.prepare_at - ms, false, true, scheduled),
            ("preparing begins", s.prepare_at, false, false, preparing),
            ("preparing begins, restored", s.prepare_at, false, true, preparing),
            ("1ms into preparing", s.prepare_at + ms, false, false, preparing),
            ("1ms before the start", s.start - ms, false, false, preparing),
            ("the start", s.start, false, false, active),
            ("mid-window, restored", s.start + hour, false, true, active),
            ("1ms before the end", s.end - ms, false, false, active),
            ("the end", s.end, false, false, cooling),
            ("the end, restored", s.end, false, true, cooling),
            ("1ms before the restore", s.restore_at - ms, false, true, cooling),
            ("the restore begins", s.restore_at, false, false, restoring),
            ("the restore begins, already restored", s.restore_at, false, true, completed),
            ("1ms into the restore", s.restore_at + ms, false, false, restoring),
            ("a day later, still restoring", s.restore_at + hour * 24, false, false, restoring),
            ("a day later, restored", s.restore_at + hour * 24, false, true, completed),
            ("suspended before preparing", s.prepare_at - ms, true, false, suspended),
            ("suspended as preparing begins", s.prepare_at, true, false, suspended),
            ("suspended mid-window", s.start + hour, true, false, suspended),
            ("suspended mid-window, restored", s.start + hour, true, true, suspended),
            ("suspended at the end", s.end, true, false, suspended),
            ("suspended after the restore, restored", s.restore_at + ms, true, true, suspended),
        ];
        for (case, now, suspend, restored, want) in table {
            assert_eq!(position(&s, suspend, restored, now), want, "{case}");
        }
    }

    /// What the levers do in each phase: hold the sale's changes from Preparing to CoolingDown,
    /// put everything back from Restoring on and while suspended, and neither before.
    #[test]
    fn each_phase_either_holds_restores_or_leaves_things_alone() {
        use crate::levers::Intent;
        // (phase, holds changes, restores, lever intent)
        let table = [
            (Phase::Scheduled, false, false, Intent::Preflight),
            (Phase::Preparing, true, false, Intent::Hold),
            (Phase::Active, true, false, Intent::Hold),
            (Phase::CoolingDown, true, false, Intent::Hold),
            (Phase::Restoring, false, true, Intent::Restore),
            (Phase::Completed, false, true, Intent::Restore),
            (Phase::Suspended, false, true, Intent::Restore),
        ];
        assert_eq!(table.map(|(p, ..)| p), Phase::ALL, "every phase, in order");
        for (phase, holds, restore, intent) in table {
            let got = (holds_changes(phase), restores(phase), Intent::for_phase(phase));
            assert_eq!(got, (holds, restore, intent), "{phase}");
        }
    }

    /// A lever's own lead time before the start (cache warm-up's `startBefore`), never after
    /// the start, and the earliest instant when the lead does not fit.
    #[test]
    fn a_lead_before_the_start_is_never_after_it() {
        let s = double_eleven();
        // (case, lead, instant)
        let table = [
            ("no lead: the start", SignedDuration::ZERO, s.start),
            ("20 minutes", SignedDuration::from_mins(20), ts("2026-11-10T15:40:00Z")),
            ("longer than prepareBefore", SignedDuration::from_hours(2), ts("2026-11-10T14:00:00Z")),
            ("a negative lead is the start", SignedDuration::from_mins(-5), s.start),
            ("a lead past the earliest instant", SignedDuration::MAX, Timestamp::MIN),
        ];
        for (case, lead, want) in table {
            assert_eq!(s.before_start(lead), want, "{case}");
        }
    }

    /// Which specs the timeline refuses, and the error each gives.
    #[test]
    fn each_unusable_spec_names_its_field() {
        let ok = ("2026-11-11T00:00:00Z", "2026-11-11T01:00:00Z");
        // (case, start, end, prepareBefore, cooldownAfter, error)
        let table = [
            ("end before start", ok.1, ok.0, "30m", "15m", Some("EndNotAfterStart")),
            ("end equal to start", ok.0, ok.0, "30m", "15m", Some("EndNotAfterStart")),
            ("a start without an offset", "2026-11-11T00:00:00", ok.1, "30m", "15m", Some("BadTimestamp start")),
            ("an end that is not a time", ok.0, "soon", "30m", "15m", Some("BadTimestamp end")),
            ("negative prepareBefore", ok.0, ok.1, "-1s", "15m", Some("NegativeDuration prepareBefore")),
            ("negative cooldownAfter", ok.0, ok.1, "30m", "-1s", Some("NegativeDuration cooldownAfter")),
            ("zero lead times", ok.0, ok.1, "0s", "0s", None),
            ("a 1ms window", ok.0, "2026-11-11T00:00:00.001Z", "30m", "15m", None),
        ];
        for (case, start, end, prepare, cooldown, want) in table {
            let got = Schedule::from_spec(&spec(start, end, prepare, cooldown)).err().map(|e| match e {
                ScheduleError::BadTimestamp { field, .. } => format!("BadTimestamp {field}"),
                ScheduleError::EndNotAfterStart { .. } => "EndNotAfterStart".to_owned(),
                ScheduleError::NegativeDuration { field } => format!("NegativeDuration {field}"),
                ScheduleError::OutOfRange { field } => format!("OutOfRange {field}"),
            });
            assert_eq!(got.as_deref(), want, "{case}");
        }
    }

    fn order(p: Phase) -> u8 {
        match p {
            Phase::Scheduled => 0,
            Phase::Preparing => 1,
            Phase::Active => 2,
            Phase::CoolingDown => 3,
            Phase::Restoring | Phase::Completed => 4,
            Phase::Suspended => 5,
        }
    }

    proptest! {
        #[test]
        fn phases_never_go_backwards_and_next_is_in_the_future(
            start_s in 0i64..4_000_000_000,
            len_s in 1i64..604_800,
            prepare_s in 0i64..86_400,
            cooldown_s in 0i64..86_400,
            mut offsets in proptest::collection::vec(-100_000i64..2_000_000, 2..40),
        ) {
            let start = Timestamp::from_second(start_s).unwrap();
            let s = Schedule {
                prepare_at: start - SignedDuration::from_secs(prepare_s),
                start,
                end: start + SignedDuration::from_secs(len_s),
                restore_at: start + SignedDuration::from_secs(len_s + cooldown_s),
            };
            offsets.sort();
            let mut last = 0;
            for off in offsets {
                let now = s.prepare_at + SignedDuration::from_secs(off);
                let p = position(&s, false, false, now);
                prop_assert!(order(p.phase) >= last, "went back to {:?} at {}", p.phase, now);
                last = order(p.phase);
                if let Some(next) = p.next {
                    prop_assert!(next > now, "next {} not after now {}", next, now);
                    // Nothing changes strictly before `next`.
                    let just_before = next - SignedDuration::from_millis(1);
                    prop_assert_eq!(position(&s, false, false, just_before.max(now)).phase, p.phase);
                    prop_assert_ne!(position(&s, false, false, next).phase, p.phase);
                } else {
                    prop_assert!(now >= s.restore_at);
                }
            }
        }
    }
}
