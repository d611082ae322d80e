//! [`Coalescer`]: when to act on a stream of "something changed" signals.
//!
//! A plain trailing debounce makes every change wait out the quiet time, even a lone change
//! after minutes of calm: that wait was the floor of the agent's change latency. Here the
//! first change of a quiet period is acted on at once (leading edge); only changes that follow
//! the last action closely (a burst: a relist, a rollout, an editor's save dance) are coalesced,
//! and acted on once they stop for `debounce`, or `max_delay` after the first one, whichever
//! comes first. Latency for a lone change is the cost of acting; a burst costs a bounded number
//! of actions.
//!
//! Pure: the caller passes the clock in, so the rules are unit-tested without sleeping.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct Coalescer {
    /// A change at least this long after the last action is acted on at once.
    quiet: Duration,
    /// Inside a burst: act once changes stop for this long...
    debounce: Duration,
    /// ...or this long after the first coalesced change.
    max_delay: Duration,
    last_action: Option<Instant>,
    /// (first, newest) coalesced change.
    pending: Option<(Instant, Instant)>,
}

impl Coalescer {
    pub fn new(quiet: Duration, debounce: Duration, max_delay: Duration) -> Self {
        Self {
            quiet,
            debounce,
            max_delay,
            last_action: None,
            pending: None,
        }
    }

    /// A change arrived at `now`: `true` means act now (then call [`Self::acted`]); `false`
    /// means it is coalesced: act at [`Self::deadline`].
    pub fn changed(&mut self, now: Instant) -> bool {
        let quiet = self
            .last_action
            .is_none_or(|last| now.saturating_duration_since(last) >= self.quiet);
        if self.pending.is_none() && quiet {
            return true;
        }
        self.pending = Some((self.pending.map_or(now, |(first, _)| first), now));
        false
    }

    /// A change known to be complete arrived at `now`: act at once (on it and on anything
    /// coalesced before it) unless the last action was less than `quiet` ago.
    pub fn settled(&mut self, now: Instant) -> bool {
        let quiet = self
            .last_action
            .is_none_or(|last| now.saturating_duration_since(last) >= self.quiet);
        if quiet {
            return true;
        }
        self.hold(now);
        false
    }

    /// Forces the next change to be coalesced, as if an action had just happened (a change
    /// known to be incomplete).
    pub fn hold(&mut self, now: Instant) {
        self.pending = Some((self.pending.map_or(now, |(first, _)| first), now));
    }

    /// When the coalesced changes are due; `None` when nothing waits.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending
            .map(|(first, newest)| (newest + self.debounce).min(first + self.max_delay))
    }

    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// The caller acted (on everything seen so far) at `now`.
    pub fn acted(&mut self, now: Instant) {
        self.pending = None;
        self.last_action = Some(now);
    }
}

/// Sleeps until `deadline`, or forever without one (for `select!` arms).
pub async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn coalescer() -> Coalescer {
        Coalescer::new(20 * MS, 10 * MS, 100 * MS)
    }

    #[test]
    fn a_lone_change_is_acted_on_at_once() {
        let t0 = Instant::now();
        let mut c = coalescer();
        assert!(c.changed(t0));
        c.acted(t0);
        assert_eq!(c.deadline(), None);
        // Quiet again: the next lone change goes straight through too.
        assert!(c.changed(t0 + 25 * MS));
    }

    #[test]
    fn a_burst_is_coalesced_and_bounded() {
        let t0 = Instant::now();
        let mut c = coalescer();
        assert!(c.changed(t0));
        c.acted(t0);
        // Within `quiet` of the action: coalesced, due `debounce` after the newest change.
        assert!(!c.changed(t0 + 5 * MS));
        assert_eq!(c.deadline(), Some(t0 + 15 * MS));
        assert!(!c.changed(t0 + 12 * MS));
        assert_eq!(c.deadline(), Some(t0 + 22 * MS));
        // While something is pending, even a late change joins it.
        assert!(!c.changed(t0 + 30 * MS));
        // A steady stream waits at most `max_delay` after its first change.
        for i in 4..20 {
            assert!(!c.changed(t0 + i * 8 * MS));
        }
        assert_eq!(c.deadline(), Some(t0 + 105 * MS));
        c.acted(t0 + 105 * MS);
        assert!(!c.is_pending());
    }

    #[test]
    fn a_settled_change_ends_a_hold_unless_too_soon() {
        let t0 = Instant::now();
        let mut c = coalescer();
        c.acted(t0);
        assert!(!c.settled(t0 + 5 * MS));
        assert!(c.is_pending());
        c.acted(t0 + 15 * MS);
        c.hold(t0 + 40 * MS);
        assert!(c.settled(t0 + 41 * MS));
    }

    #[test]
    fn hold_coalesces_the_next_change() {
        let t0 = Instant::now();
        let mut c = coalescer();
        c.hold(t0);
        assert_eq!(c.deadline(), Some(t0 + 10 * MS));
        assert!(!c.changed(t0 + 3 * MS));
        assert_eq!(c.deadline(), Some(t0 + 13 * MS));
    }
}
