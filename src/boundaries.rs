//! Phase changes before lever passes, across sales.
//!
//! Hundreds of sales may share one boundary (every shop's sale prepares at 23:30:00). Each
//! announces its new phase in a reconcile of its own (one status write) and pulls its levers in
//! the next one, which sends many writes. The API server queues one client's requests in one
//! flow, so the writes of the first sales' lever passes would queue ahead of the later sales'
//! announcements and hold them back by seconds. So the controller keeps, for every sale, the
//! instant of its next phase change; a lever pass that starts while a boundary has just passed
//! and some sale has not announced it yet waits (briefly, bounded) until they have.

use jiff::{SignedDuration, Timestamp};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Mutex,
    time::Duration,
};
use tokio::sync::Notify;

/// How long after a boundary a sale that has not announced it still holds other lever passes
/// back: a sale whose reconcile fails or whose spec moved its boundary stops counting then.
const STALE: SignedDuration = SignedDuration::from_secs(3);

/// The next phase change of every sale, by `namespace/name`.
#[derive(Debug, Default)]
pub struct Boundaries {
    inner: Mutex<Inner>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    next: HashMap<String, Timestamp>,
    by_instant: BTreeMap<Timestamp, BTreeSet<String>>,
}

impl Boundaries {
    /// Notes the sale's next phase change, as its status just said (`None`: none is due).
    pub fn expect(&self, sale: &str, at: Option<Timestamp>) {
        let Ok(mut inner) = self.inner.lock() else { return };
        if inner.next.get(sale) == at.as_ref() {
            return;
        }
        if let Some(old) = inner.next.remove(sale)
            && let Some(sales) = inner.by_instant.get_mut(&old)
        {
            sales.remove(sale);
            if sales.is_empty() {
                inner.by_instant.remove(&old);
            }
        }
        if let Some(at) = at {
            inner.next.insert(sale.to_owned(), at);
            inner.by_instant.entry(at).or_default().insert(sale.to_owned());
        }
        drop(inner);
        self.changed.notify_waiters();
    }

    /// Forgets a sale that is gone.
    pub fn forget(&self, sale: &str) {
        self.expect(sale, None);
    }

    /// How many sales other than `sale` have a boundary that passed within [`STALE`] of `now`
    /// and not announced it yet.
    pub fn unannounced(&self, sale: &str, now: Timestamp) -> usize {
        let Ok(inner) = self.inner.lock() else { return 0 };
        inner.by_instant.range(now - STALE..=now).flat_map(|(_, sales)| sales).filter(|s| s.as_str() != sale).count()
    }

    /// Waits until every other sale has announced the boundaries that just passed, or `limit`.
    /// Returns how long it waited.
    pub async fn announced_first(&self, sale: &str, limit: Duration) -> Duration {
        let started = std::time::Instant::now();
        loop {
            // Registered before the check, so an announcement in between is not missed.
            let changed = self.changed.notified();
            let left = limit.saturating_sub(started.elapsed());
            if left.is_zero() || self.unannounced(sale, Timestamp::now()) == 0 {
                return started.elapsed();
            }
            // A boundary also stops counting when it goes stale: look again at least that often.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(250)), changed).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn only_sales_whose_boundary_just_passed_unannounced_hold_others_back() {
        let b = Boundaries::default();
        let boundary = ts("2026-11-10T15:30:00Z");
        b.expect("shop/a", Some(boundary));
        b.expect("shop/b", Some(boundary));
        b.expect("shop/later", Some(ts("2026-11-11T15:30:00Z")));
        b.expect("shop/none", None);
        let cases = [
            ("before the boundary nothing is due", "shop/a", ts("2026-11-10T15:29:59Z"), 0),
            ("at it, the other sale sharing it", "shop/a", boundary, 1),
            ("a sale not sharing it waits for both", "shop/later", ts("2026-11-10T15:30:01Z"), 2),
            ("stale after three seconds", "shop/later", ts("2026-11-10T15:30:03.5Z"), 0),
        ];
        for (case, sale, now, want) in cases {
            assert_eq!(b.unannounced(sale, now), want, "{case}");
        }
        // a announces: its next boundary is the start; b still counts.
        b.expect("shop/a", Some(ts("2026-11-10T16:00:00Z")));
        assert_eq!(b.unannounced("shop/later", boundary), 1, "after a announced");
        b.forget("shop/b");
        assert_eq!(b.unannounced("shop/later", boundary), 0, "after b is gone");
        // The same instant again changes nothing.
        b.expect("shop/a", Some(ts("2026-11-10T16:00:00Z")));
        assert_eq!(b.unannounced("shop/x", ts("2026-11-10T16:00:01Z")), 1);
    }

    #[tokio::test]
    async fn a_lever_pass_waits_for_the_announcement_and_no_longer_than_its_limit() {
        let b = std::sync::Arc::new(Boundaries::default());
        let now = Timestamp::now();
        b.expect("shop/slow", Some(now - SignedDuration::from_millis(100)));
        // Nobody announces: the wait ends at its limit.
        let waited = b.announced_first("shop/me", Duration::from_millis(200)).await;
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        // The other sale announces while this one waits: the wait ends then.
        let announcer = b.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            announcer.expect("shop/slow", Some(Timestamp::now() + SignedDuration::from_hours(1)));
        });
        let waited = b.announced_first("shop/me", Duration::from_secs(2)).await;
        task.await.unwrap();
        assert!(waited >= Duration::from_millis(40) && waited < Duration::from_secs(1), "{waited:?}");
        // Nothing pending: no wait at all.
        assert!(b.announced_first("shop/me", Duration::from_secs(2)).await < Duration::from_millis(50));
    }
}
