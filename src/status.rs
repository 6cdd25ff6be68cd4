//! Deciding the status from the spec, the clock and what the levers observed (pure), and
//! merging conditions so an unchanged status compares equal and writes nothing.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Resource;

use crate::{
    api::{FlashSale, FlashSaleStatus, Phase},
    timeline::{self, Schedule, ScheduleError},
};

/// Condition types.
pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// The status a sale should show at `now`, before lever detail is added.
pub fn decide(
    sale: &FlashSale,
    schedule: &Result<Schedule, ScheduleError>,
    now: Timestamp,
) -> FlashSaleStatus {
    let generation = sale.meta().generation;
    let schedule = match schedule {
        Ok(s) => s,
        Err(err) => {
            let message = err.to_string();
            return FlashSaleStatus {
                phase: sale.status.as_ref().and_then(|s| s.phase),
                next_transition_time: None,
                observed_generation: generation,
                conditions: vec![
                    condition(READY, false, "InvalidSpec", &message),
                    condition(STALLED, true, "InvalidSpec", &message),
                    condition(
                        RECONCILING,
                        false,
                        "InvalidSpec",
                        "waiting for the spec to be fixed",
                    ),
                ],
                clusters: vec![],
            };
        }
    };
    let position = timeline::position(schedule, sale.spec.suspend, true, now);
    let (ready, reason, message) = match position.phase {
        Phase::Scheduled => (
            true,
            "Scheduled",
            format!("Preparation starts at {}", schedule.prepare_at),
        ),
        Phase::Preparing => (
            true,
            "Prepared",
            format!("Sale starts at {}", schedule.start),
        ),
        Phase::Active => (true, "Active", format!("Sale ends at {}", schedule.end)),
        Phase::CoolingDown => (
            true,
            "CoolingDown",
            format!("Restore starts at {}", schedule.restore_at),
        ),
        Phase::Restoring => (
            false,
            "Restoring",
            "Restoring the original state".to_owned(),
        ),
        Phase::Completed => (
            true,
            "Completed",
            "The sale is over and everything is restored".to_owned(),
        ),
        Phase::Suspended => (
            true,
            "Suspended",
            "spec.suspend is set; everything is restored".to_owned(),
        ),
    };
    let reconciling = position.phase == Phase::Restoring;
    FlashSaleStatus {
        phase: Some(position.phase),
        next_transition_time: position.next.map(Time),
        observed_generation: generation,
        conditions: vec![
            condition(READY, ready, reason, &message),
            condition(STALLED, false, "AsExpected", "The spec can be acted on"),
            condition(RECONCILING, reconciling, reason, &message),
        ],
        clusters: vec![],
    }
}

/// A condition with no timestamps or generation yet; [`ConditionSet::merge`] fills them in.
pub fn condition(type_: &str, status: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: None,
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
    }
}

/// The conditions currently on an object, to merge new ones into.
pub struct ConditionSet(Vec<Condition>);

impl From<Vec<Condition>> for ConditionSet {
    fn from(conditions: Vec<Condition>) -> Self {
        ConditionSet(conditions)
    }
}

impl ConditionSet {
    /// The wanted conditions, keeping each existing condition's transition time when its status
    /// did not change, so that a status that says the same thing compares equal. Conditions
    /// not wanted any more are dropped; the result is sorted by type for stable comparison.
    pub fn merge(
        self,
        wanted: Vec<Condition>,
        generation: Option<i64>,
        now: Timestamp,
    ) -> Vec<Condition> {
        let mut merged: Vec<Condition> = wanted
            .into_iter()
            .map(|mut c| {
                c.observed_generation = generation;
                c.last_transition_time = match self.0.iter().find(|old| old.type_ == c.type_) {
                    Some(old) if old.status == c.status => old.last_transition_time.clone(),
                    _ => Time(now),
                };
                c
            })
            .collect();
        merged.sort_by(|a, b| a.type_.cmp(&b.type_));
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn merge_keeps_transition_time_when_status_is_unchanged() {
        let t0 = ts("2026-11-10T00:00:00Z");
        let first =
            ConditionSet::from(vec![]).merge(vec![condition(READY, true, "A", "a")], Some(1), t0);
        assert_eq!(first[0].last_transition_time, Time(t0));
        let t1 = ts("2026-11-10T01:00:00Z");
        let same = ConditionSet::from(first.clone()).merge(
            vec![condition(READY, true, "B", "b")],
            Some(2),
            t1,
        );
        assert_eq!(
            same[0].last_transition_time,
            Time(t0),
            "status unchanged: time kept"
        );
        assert_eq!(same[0].reason, "B");
        let flipped =
            ConditionSet::from(same).merge(vec![condition(READY, false, "C", "c")], Some(2), t1);
        assert_eq!(flipped[0].last_transition_time, Time(t1));
    }

    #[test]
    fn merging_the_same_conditions_is_a_fixed_point() {
        let t0 = ts("2026-11-10T00:00:00Z");
        let wanted = || {
            vec![
                condition(STALLED, false, "X", "x"),
                condition(READY, true, "Y", "y"),
            ]
        };
        let once = ConditionSet::from(vec![]).merge(wanted(), Some(3), t0);
        let twice =
            ConditionSet::from(once.clone()).merge(wanted(), Some(3), ts("2026-11-10T05:00:00Z"));
        assert_eq!(once, twice);
        assert_eq!(
            once.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(),
            ["Ready", "Stalled"]
        );
    }
}
