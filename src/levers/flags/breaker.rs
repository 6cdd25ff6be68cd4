//! The auto-degrade circuit breaker: a pure state machine over samples of a live signal.
//!
//! Closed (flag on) → Open (flag off) once the value has stayed above the threshold for `for`;
//! Open → HalfOpen as soon as the value is back at or below it (the flag stays off); HalfOpen →
//! Closed once it has stayed there for `recoverAfter`, or back to Open if it rises again.
//!
//! A stretch only counts while it is observed: a failing or empty query never moves the breaker
//! and restarts the stretch being timed, so an outage of Prometheus neither flips a flag nor
//! completes a `for`/`recoverAfter` that nobody saw. The state is kept in the cluster (an
//! annotation on the published flags) between passes, never in operator memory.

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// Where the breaker is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// The signal is healthy: the flag is on.
    #[default]
    Closed,
    /// The signal stayed above the threshold for `for`: the flag is off.
    Open,
    /// The signal is back below the threshold but not yet for `recoverAfter`: the flag stays off.
    HalfOpen,
}

impl State {
    /// Whether the flag is on in this state.
    pub fn enabled(self) -> bool {
        self == State::Closed
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "Closed",
            State::Open => "Open",
            State::HalfOpen => "HalfOpen",
        }
    }
}

/// One flag's breaker, as persisted between passes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Breaker {
    pub state: State,
    /// When the flag got its current value (the last flip, or when the breaker started).
    pub since: Timestamp,
    /// While Closed: since when the value has been above the threshold, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above_since: Option<Timestamp>,
    /// While HalfOpen: since when the value has been at or below the threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below_since: Option<Timestamp>,
    /// The value that caused the last flip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Whether the last query failed or returned nothing (kept so a failure is announced once).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failing: bool,
}

/// What one query of the signal gave.
#[derive(Clone, Debug, PartialEq)]
pub enum Sample {
    Value(f64),
    /// The query failed or returned no number; the message says why, for a person.
    Failed(String),
}

/// The breaker's thresholds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rule {
    pub above: f64,
    pub for_: SignedDuration,
    pub recover_after: SignedDuration,
}

/// What changed in one step, for events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    None,
    /// The flag turned off.
    Opened,
    /// The flag turned back on.
    Closed,
    /// The breaker moved without changing the flag (half-open, or back to open).
    Moved,
    /// The query started failing.
    StartedFailing,
    /// The query works again.
    Recovered,
}

impl Breaker {
    /// A breaker that starts closed at `now`.
    pub fn new(now: Timestamp) -> Breaker {
        Breaker { since: now, ..Breaker::default() }
    }

    /// The breaker after one sample taken at `now`, and what changed.
    pub fn step(&self, sample: &Sample, rule: &Rule, now: Timestamp) -> (Breaker, Change) {
        let mut next = self.clone();
        let value = match sample {
            Sample::Failed(_) => {
                next.failing = true;
                next.above_since = None;
                next.below_since = None;
                let change = if self.failing { Change::None } else { Change::StartedFailing };
                return (next, change);
            }
            Sample::Value(v) => *v,
        };
        next.failing = false;
        let high = value > rule.above;
        let change = match (self.state, high) {
            (State::Closed, true) => {
                let above_since = self.above_since.unwrap_or(now);
                if now.duration_since(above_since) >= rule.for_ {
                    next = Breaker { state: State::Open, since: now, value: Some(value), ..Breaker::default() };
                    Change::Opened
                } else {
                    next.above_since = Some(above_since);
                    Change::None
                }
            }
            (State::Closed, false) => {
                next.above_since = None;
                Change::None
            }
            (State::Open, true) => Change::None,
            (State::Open | State::HalfOpen, false) => {
                let below_since = self.below_since.unwrap_or(now);
                if now.duration_since(below_since) >= rule.recover_after {
                    next = Breaker { state: State::Closed, since: now, value: Some(value), ..Breaker::default() };
                    Change::Closed
                } else {
                    next.state = State::HalfOpen;
                    next.below_since = Some(below_since);
                    if self.state == State::Open { Change::Moved } else { Change::None }
                }
            }
            (State::HalfOpen, true) => {
                next.state = State::Open;
                next.below_since = None;
                Change::Moved
            }
        };
        let change = match (change, self.failing) {
            (Change::None, true) => Change::Recovered,
            (change, _) => change,
        };
        (next, change)
    }

    /// When a pending stretch completes if the signal stays where it is, so the next pass can be
    /// timed to it.
    pub fn due(&self, rule: &Rule) -> Option<Timestamp> {
        match self.state {
            State::Closed => self.above_since.and_then(|t| t.checked_add(rule.for_).ok()),
            State::HalfOpen => self.below_since.and_then(|t| t.checked_add(rule.recover_after).ok()),
            State::Open => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    const RULE: Rule =
        Rule { above: 0.5, for_: SignedDuration::from_secs(30), recover_after: SignedDuration::from_secs(60) };

    /// Runs samples `(second, sample)` from a closed breaker, returning each step's state and change.
    fn run(samples: &[(i64, Sample)]) -> Vec<(State, Change)> {
        let mut b = Breaker::new(t(0));
        samples
            .iter()
            .map(|(s, sample)| {
                let (next, change) = b.step(sample, &RULE, t(*s));
                b = next;
                (b.state, change)
            })
            .collect()
    }

    fn v(x: f64) -> Sample {
        Sample::Value(x)
    }

    #[test]
    fn opens_only_after_the_value_stays_above_for_the_whole_for() {
        use {Change as C, State as S};
        let steps = run(&[(0, v(0.9)), (15, v(0.9)), (29, v(0.9)), (30, v(0.9)), (40, v(0.9))]);
        assert_eq!(
            steps,
            [
                (S::Closed, C::None),
                (S::Closed, C::None),
                (S::Closed, C::None),
                (S::Open, C::Opened),
                (S::Open, C::None)
            ]
        );
    }

    #[test]
    fn a_dip_below_restarts_the_for() {
        let steps = run(&[(0, v(0.9)), (20, v(0.1)), (25, v(0.9)), (50, v(0.9)), (55, v(0.9))]);
        let states: Vec<State> = steps.iter().map(|(s, _)| *s).collect();
        assert_eq!(states, [State::Closed, State::Closed, State::Closed, State::Closed, State::Open]);
    }

    #[test]
    fn the_threshold_itself_is_not_above() {
        let steps = run(&[(0, v(0.5)), (100, v(0.5))]);
        assert!(steps.iter().all(|(s, _)| *s == State::Closed));
    }

    #[test]
    fn half_open_keeps_the_flag_off_until_recover_after() {
        use {Change as C, State as S};
        let steps = run(&[(0, v(1.0)), (30, v(1.0)), (40, v(0.1)), (70, v(0.1)), (99, v(0.1)), (100, v(0.1))]);
        assert_eq!(
            steps,
            [
                (S::Closed, C::None),
                (S::Open, C::Opened),
                (S::HalfOpen, C::Moved),
                (S::HalfOpen, C::None),
                (S::HalfOpen, C::None),
                (S::Closed, C::Closed),
            ]
        );
        assert!(!State::HalfOpen.enabled());
    }

    #[test]
    fn half_open_goes_back_to_open_when_the_value_rises_again() {
        use {Change as C, State as S};
        let steps = run(&[(0, v(1.0)), (30, v(1.0)), (40, v(0.1)), (50, v(0.8)), (60, v(0.1)), (119, v(0.1))]);
        assert_eq!(
            steps,
            [
                (S::Closed, C::None),
                (S::Open, C::Opened),
                (S::HalfOpen, C::Moved),
                (S::Open, C::Moved),
                (S::HalfOpen, C::Moved),
                (S::HalfOpen, C::None),
            ],
            "recoverAfter counts from the last rise, not the first dip"
        );
    }

    #[test]
    fn failing_queries_never_flip_and_restart_the_stretch() {
        use {Change as C, State as S};
        let fail = || Sample::Failed("connection refused".into());
        // Above for 20s, then Prometheus is gone for a minute: still closed, and the next high
        // value starts a new stretch.
        let steps = run(&[(0, v(0.9)), (20, fail()), (40, fail()), (80, v(0.9)), (109, v(0.9)), (110, v(0.9))]);
        assert_eq!(
            steps,
            [
                (S::Closed, C::None),
                (S::Closed, C::StartedFailing),
                (S::Closed, C::None),
                (S::Closed, C::Recovered),
                (S::Closed, C::None),
                (S::Open, C::Opened),
            ]
        );
        // An open breaker stays open however long the query fails.
        let steps = run(&[(0, v(0.9)), (30, v(0.9)), (40, fail()), (400, fail())]);
        assert_eq!(steps.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [S::Closed, S::Open, S::Open, S::Open]);
    }

    #[test]
    fn open_records_the_value_and_time_of_the_flip() {
        let mut b = Breaker::new(t(0));
        for (s, x) in [(0, 0.7), (31, 0.8)] {
            b = b.step(&v(x), &RULE, t(s)).0;
        }
        assert_eq!((b.state, b.since, b.value), (State::Open, t(31), Some(0.8)));
    }

    #[test]
    fn due_names_when_a_pending_stretch_completes() {
        let b = Breaker::new(t(0)).step(&v(0.9), &RULE, t(5)).0;
        assert_eq!(b.due(&RULE), Some(t(35)));
        assert_eq!(Breaker::new(t(0)).due(&RULE), None);
    }

    #[test]
    fn persists_as_compact_json() -> Result<(), serde_json::Error> {
        let b = Breaker::new(t(0)).step(&v(0.9), &RULE, t(5)).0;
        let text = serde_json::to_string(&b)?;
        assert_eq!(text, r#"{"state":"Closed","since":"2027-01-15T08:00:00Z","aboveSince":"2027-01-15T08:00:05Z"}"#);
        assert_eq!(serde_json::from_str::<Breaker>(&text)?, b);
        Ok(())
    }

    /// One step from each state, with and without a pending stretch and a failing query: the
    /// state after, what changed, the stretch timed, and whether the query is failing.
    #[test]
    fn one_step_from_every_state_and_sample() {
        use {Change as C, State as S};
        let b = |state: S, above: Option<i64>, below: Option<i64>, failing: bool| Breaker {
            state,
            since: t(0),
            above_since: above.map(t),
            below_since: below.map(t),
            value: None,
            failing,
        };
        let fail = || Sample::Failed("connection refused".into());
        // (case, before, sample at t(100), state, change, above since, below since, failing)
        type Row = (&'static str, Breaker, Sample, S, C, Option<i64>, Option<i64>, bool);
        let table: Vec<Row> = vec![
            ("closed, low", b(S::Closed, None, None, false), v(0.1), S::Closed, C::None, None, None, false),
            (
                "closed, high: the stretch starts",
                b(S::Closed, None, None, false),
                v(0.9),
                S::Closed,
                C::None,
                Some(100),
                None,
                false,
            ),
            (
                "closed, high for less than for",
                b(S::Closed, Some(71), None, false),
                v(0.9),
                S::Closed,
                C::None,
                Some(71),
                None,
                false,
            ),
            (
                "closed, high for exactly for",
                b(S::Closed, Some(70), None, false),
                v(0.9),
                S::Open,
                C::Opened,
                None,
                None,
                false,
            ),
            (
                "closed, back low: the stretch ends",
                b(S::Closed, Some(90), None, false),
                v(0.5),
                S::Closed,
                C::None,
                None,
                None,
                false,
            ),
            (
                "closed, the query fails",
                b(S::Closed, Some(90), None, false),
                fail(),
                S::Closed,
                C::StartedFailing,
                None,
                None,
                true,
            ),
            (
                "closed, the query still fails",
                b(S::Closed, None, None, true),
                fail(),
                S::Closed,
                C::None,
                None,
                None,
                true,
            ),
            (
                "closed, the query works again",
                b(S::Closed, None, None, true),
                v(0.9),
                S::Closed,
                C::Recovered,
                Some(100),
                None,
                false,
            ),
            ("open, high", b(S::Open, None, None, false), v(0.9), S::Open, C::None, None, None, false),
            (
                "open, low: half-open",
                b(S::Open, None, None, false),
                v(0.1),
                S::HalfOpen,
                C::Moved,
                None,
                Some(100),
                false,
            ),
            (
                "open, the query fails",
                b(S::Open, None, None, false),
                fail(),
                S::Open,
                C::StartedFailing,
                None,
                None,
                true,
            ),
            (
                "open, works again and low: the move is the news",
                b(S::Open, None, None, true),
                v(0.1),
                S::HalfOpen,
                C::Moved,
                None,
                Some(100),
                false,
            ),
            (
                "open, works again and high",
                b(S::Open, None, None, true),
                v(0.9),
                S::Open,
                C::Recovered,
                None,
                None,
                false,
            ),
            (
                "half-open, low for less than recoverAfter",
                b(S::HalfOpen, None, Some(41), false),
                v(0.1),
                S::HalfOpen,
                C::None,
                None,
                Some(41),
                false,
            ),
            (
                "half-open, low for exactly recoverAfter",
                b(S::HalfOpen, None, Some(40), false),
                v(0.1),
                S::Closed,
                C::Closed,
                None,
                None,
                false,
            ),
            (
                "half-open, high again",
                b(S::HalfOpen, None, Some(90), false),
                v(0.9),
                S::Open,
                C::Moved,
                None,
                None,
                false,
            ),
            (
                "half-open, the query fails: the stretch restarts",
                b(S::HalfOpen, None, Some(41), false),
                fail(),
                S::HalfOpen,
                C::StartedFailing,
                None,
                None,
                true,
            ),
            (
                "half-open, works again and low",
                b(S::HalfOpen, None, None, true),
                v(0.1),
                S::HalfOpen,
                C::Recovered,
                None,
                Some(100),
                false,
            ),
        ];
        for (case, before, sample, state, change, above, below, failing) in table {
            let (after, got) = before.step(&sample, &RULE, t(100));
            let summary = (after.state, got, after.above_since, after.below_since, after.failing);
            assert_eq!(summary, (state, change, above.map(t), below.map(t), failing), "{case}");
            let flipped = matches!(got, C::Opened | C::Closed);
            assert_eq!(after.since, if flipped { t(100) } else { t(0) }, "{case}: since moves only with the flag");
            if flipped {
                assert_eq!(after.value, sample_value(&sample), "{case}: the value that flipped it");
            }
        }
    }

    fn sample_value(sample: &Sample) -> Option<f64> {
        match sample {
            Sample::Value(v) => Some(*v),
            Sample::Failed(_) => None,
        }
    }

    /// When the next pass should look, per state, and whether the flag is on.
    #[test]
    fn each_state_says_whether_the_flag_is_on_and_when_its_stretch_completes() {
        let b = |state: State, above: Option<i64>, below: Option<i64>| Breaker {
            state,
            since: t(0),
            above_since: above.map(t),
            below_since: below.map(t),
            ..Breaker::default()
        };
        // (case, breaker, flag on, name, due)
        let table = [
            ("closed, nothing pending", b(State::Closed, None, None), true, "Closed", None),
            ("closed, above since 10s", b(State::Closed, Some(10), None), true, "Closed", Some(t(40))),
            ("open", b(State::Open, None, None), false, "Open", None),
            ("half-open, below since 10s", b(State::HalfOpen, None, Some(10)), false, "HalfOpen", Some(t(70))),
            ("half-open after a failed query", b(State::HalfOpen, None, None), false, "HalfOpen", None),
        ];
        for (case, breaker, on, name, due) in table {
            let got = (breaker.state.enabled(), breaker.state.as_str(), breaker.due(&RULE));
            assert_eq!(got, (on, name, due), "{case}");
        }
    }
}
