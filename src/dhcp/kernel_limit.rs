//! How many DISCOVERs a second the kernel lets through to a server that
//! has more than it can finish.
//!
//! Under a storm of DISCOVERs several times what the server completes,
//! shedding them in the server ([`super::admission`]) or at its socket
//! (the socket filter) comes too late: each has already cost the kernel
//! conntrack, routing and the UDP layer on the CPUs that carry the
//! guests' traffic, and in the bench at 4x the knee that work alone let
//! fewer than 6,000 exchanges a second complete out of a peak of 140,000.
//! So the server has the kernel drop the excess at the door: the `inet`
//! table's `dhcp_admit` chain, at priority -300 (see
//! [`crate::planner::firewall::discover_limits`]), holds the server's
//! interface to one of a fixed ladder of rates. Only DISCOVERs are held
//! (a REQUEST finishes an exchange already paid for), and a lanyard
//! port's pass (ports are served first; each has its own rate already).
//!
//! The rate follows what the server can do, as TCP's window follows the
//! path. Trouble is the server's own overload (its socket's receive
//! queue more than half full, or its lease writer far behind, as
//! [`super::server`] finds after a batch) while more than twice
//! [`super::admission::UNANSWERED`] OFFERs of the last second are
//! unanswered, where the admission sheds every DISCOVER but a port's
//! anyway. Either alone is not: a queue is deep for a moment at the
//! knee, and clients slow to answer are shed for in the server. On
//! trouble the rate is set to the highest rung at or
//! below the exchanges the server worked on over the last [`RECENT`]
//! slots, per second (half the DISCOVERs it answered plus the REQUESTs
//! it ACKed: at steady state each exchange is one of each), but not
//! below three quarters of the most it worked on over the last
//! [`PEAK_FOR`]: a flood past what the clients can take makes the work
//! fall to next to nothing for a moment, which is no measure of what the
//! server can do. A limit just
//! set was measured in the middle of the flood, so it first doubles each
//! [`PROBE_AFTER`] without trouble (TCP's slow start); after the next
//! trouble it climbs one rung (1.19x) each [`RAISE_AFTER`] without
//! trouble. Past the top rung the limit is lifted. The kernel's elements expire after [`TTL`] unless
//! refreshed, so a daemon that dies leaves no limit behind for long.

use std::time::{Duration, Instant};

/// How long a limit lives in the kernel unless refreshed.
pub const TTL: Duration = Duration::from_secs(3);
/// How often a limit in force is refreshed.
pub const REFRESH: Duration = Duration::from_secs(1);
/// Time without trouble before the rate climbs one rung.
pub const RAISE_AFTER: Duration = Duration::from_secs(1);
/// Time without trouble before a limit just set doubles.
pub const PROBE_AFTER: Duration = Duration::from_millis(200);
/// How long the most the server worked on is remembered.
pub const PEAK_FOR: Duration = Duration::from_secs(10);
/// Rungs in a doubling (2^(1/4) apart).
const DOUBLE: usize = 4;
/// Time after a change before the rate may be lowered again: the time
/// for the change to show in what the server sees.
const SETTLE: Duration = Duration::from_millis(300);
/// The window slots (100 ms each) the decision looks at.
pub const RECENT: usize = 3;

/// What the kernel must be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Hold the interface to `to` DISCOVERs a second (it was held to
    /// `from`, or not at all).
    Set {
        /// The rate before, if any.
        from: Option<u32>,
        /// The new rate.
        to: u32,
    },
    /// Keep the limit of this rate alive.
    Refresh(u32),
    /// Lift the limit of this rate.
    Lift(u32),
}

/// The rate one server has the kernel hold it to.
#[derive(Debug)]
pub struct DiscoverLimit {
    /// The ladder, ascending.
    rungs: Vec<u32>,
    /// The rung in force, if any.
    rung: Option<usize>,
    /// Whether the limit has not met trouble since it was set: it doubles.
    probing: bool,
    changed: Instant,
    /// The last trouble seen.
    trouble: Instant,
    /// The most exchanges a second the server worked on lately, and when.
    peak: (u64, Instant),
    refreshed: Instant,
}

impl DiscoverLimit {
    /// No limit yet, over the ladder `rungs` (ascending, not empty).
    pub fn new(rungs: Vec<u32>, at: Instant) -> Self {
        DiscoverLimit { rungs, rung: None, probing: false, changed: at, trouble: at, peak: (0, at), refreshed: at }
    }

    /// The rate in force, if any.
    pub fn rate(&self) -> Option<u32> {
        self.rung.map(|r| self.rungs[r])
    }

    /// Decides at `at`, from whether the server is in `trouble` now and
    /// its OFFERs and ACKs of the last [`RECENT`] slots, what the kernel
    /// must be told, if anything. The caller applies the change and calls
    /// [`DiscoverLimit::failed`] if it could not.
    pub fn update(&mut self, trouble: bool, offers: u32, acks: u32, at: Instant) -> Option<Change> {
        if self.rung.is_some() && at.saturating_duration_since(self.refreshed) >= TTL {
            // Not refreshed in time (no packets came to wake the server):
            // the kernel has let the limit go.
            self.rung = None;
        }
        let since = at.saturating_duration_since(self.changed);
        let per_second = (u64::from(offers) / 2 + u64::from(acks)) * 10 / RECENT as u64;
        if per_second >= self.peak.0 || at.saturating_duration_since(self.peak.1) >= PEAK_FOR {
            self.peak = (per_second, at);
        }
        if trouble {
            self.trouble = at;
            let floor = per_second.max(self.peak.0 * 3 / 4);
            let target = self.rungs.iter().rposition(|r| u64::from(*r) <= floor).unwrap_or(0);
            match self.rung {
                None => {
                    self.probing = true;
                    return Some(self.set(target, at));
                }
                Some(now) if since >= SETTLE => {
                    self.probing = false;
                    if target < now {
                        return Some(self.set(target, at));
                    }
                }
                _ => {}
            }
        } else {
            let (wait, step) = if self.probing { (PROBE_AFTER, DOUBLE) } else { (RAISE_AFTER, 1) };
            let quiet = since.min(at.saturating_duration_since(self.trouble));
            if let Some(now) = self.rung.filter(|_| quiet >= wait) {
                if now + step >= self.rungs.len() {
                    let rate = self.rungs[now];
                    self.rung = None;
                    self.changed = at;
                    return Some(Change::Lift(rate));
                }
                return Some(self.set(now + step, at));
            }
        }
        let rate = self.rate()?;
        if at.saturating_duration_since(self.refreshed) >= REFRESH {
            self.refreshed = at;
            return Some(Change::Refresh(rate));
        }
        None
    }

    fn set(&mut self, rung: usize, at: Instant) -> Change {
        let from = self.rate();
        self.rung = Some(rung);
        self.changed = at;
        self.refreshed = at;
        Change::Set { from, to: self.rungs[rung] }
    }

    /// The last change could not be made (it is one transaction: the
    /// kernel kept what it had). The next trouble sets a limit afresh; a
    /// rung left in the kernel meanwhile is no longer refreshed and goes
    /// within [`TTL`] (while both are there, the lower one holds).
    pub fn failed(&mut self) {
        self.rung = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1,000 to 12,000 a second.
    fn limit(at: Instant) -> DiscoverLimit {
        DiscoverLimit::new((1..=12).map(|i| i * 1000).collect(), at)
    }

    fn ms(t: Instant, ms: u64) -> Instant {
        t + Duration::from_millis(ms)
    }

    /// Calls `update` every 100 ms from `from` to `to` (ms) with `offers`
    /// and `acks`; the changes, with their times.
    fn run(
        l: &mut DiscoverLimit,
        t: Instant,
        from: u64,
        to: u64,
        over: bool,
        offers: u32,
        acks: u32,
    ) -> Vec<(u64, Change)> {
        (from / 100..=to / 100)
            .filter_map(|i| l.update(over, offers, acks, ms(t, i * 100)).map(|c| (i * 100, c)))
            .collect()
    }

    #[test]
    fn a_server_that_keeps_up_is_never_limited() {
        let t = Instant::now();
        let mut l = limit(t);
        assert_eq!(run(&mut l, t, 0, 10_000, false, 3000, 3000), vec![]);
        assert_eq!(l.rate(), None);
    }

    #[test]
    fn trouble_sets_the_rung_at_or_below_what_the_server_works_on() {
        let t = Instant::now();
        let mut l = limit(t);
        // 3,000 OFFERs and 2,000 ACKs in 300 ms: 11,666 exchanges a second.
        assert_eq!(l.update(true, 3000, 2000, t), Some(Change::Set { from: None, to: 11_000 }));
        // Still in trouble at once: no second change before it can show.
        assert_eq!(l.update(true, 1000, 500, ms(t, 100)), None);
        // Later, working on less (3,333 a second): lowered, but not below
        // three quarters of the peak (8,750).
        assert_eq!(l.update(true, 1000, 500, ms(t, 400)), Some(Change::Set { from: Some(11_000), to: 8000 }));
        assert_eq!(run(&mut l, t, 500, 900, true, 0, 0), vec![]);
        // With no work seen at all: the lowest rung, never none.
        let mut fresh = limit(t);
        assert_eq!(fresh.update(true, 0, 0, t), Some(Change::Set { from: None, to: 1000 }));
    }

    #[test]
    fn a_moment_of_next_to_no_work_does_not_take_the_rate_below_three_quarters_of_the_peak() {
        let t = Instant::now();
        let mut l = limit(t);
        // Working on 10,000 a second, no trouble.
        assert_eq!(l.update(false, 3000, 1500, t), None);
        // Then flooded: next to nothing gets done.
        assert_eq!(l.update(true, 30, 0, ms(t, 100)), Some(Change::Set { from: None, to: 7000 }));
        // Past PEAK_FOR the peak is what is seen now.
        let changes = run(&mut l, t, 200, 10_000, true, 30, 0);
        assert_eq!(changes.last(), Some(&(10_000, Change::Set { from: Some(7000), to: 1000 })));
        assert!(changes[..changes.len() - 1].iter().all(|(_, c)| *c == Change::Refresh(7000)));
    }

    #[test]
    fn a_new_limit_doubles_until_trouble_then_climbs_a_rung_a_second() {
        let t = Instant::now();
        let mut l = limit(t);
        assert_eq!(l.update(true, 0, 0, t), Some(Change::Set { from: None, to: 1000 }));
        assert_eq!(run(&mut l, t, 100, 300, false, 100, 100), vec![(200, Change::Set { from: Some(1000), to: 5000 })]);
        // Trouble at 5,000 while working on 4,000 a second.
        assert_eq!(l.update(true, 1200, 600, ms(t, 700)), Some(Change::Set { from: Some(5000), to: 4000 }));
        assert_eq!(
            run(&mut l, t, 800, 3700, false, 100, 100),
            vec![
                (1700, Change::Set { from: Some(4000), to: 5000 }),
                (2700, Change::Set { from: Some(5000), to: 6000 }),
                (3700, Change::Set { from: Some(6000), to: 7000 }),
            ]
        );
    }

    #[test]
    fn trouble_that_changes_nothing_still_holds_the_climb_back() {
        let t = Instant::now();
        let mut l = limit(t);
        l.update(true, 0, 0, t);
        // At the rung the server works at: trouble, but nothing lower.
        assert_eq!(run(&mut l, t, 100, 900, true, 0, 300), vec![]);
        assert_eq!(run(&mut l, t, 1000, 1800, false, 0, 300), vec![(1000, Change::Refresh(1000))]);
        assert_eq!(run(&mut l, t, 1900, 1900, false, 0, 300), vec![(1900, Change::Set { from: Some(1000), to: 2000 })]);
    }

    #[test]
    fn without_trouble_the_limit_is_lifted_past_the_top_rung() {
        let t = Instant::now();
        let mut l = limit(t);
        l.update(true, 0, 0, t);
        assert_eq!(
            run(&mut l, t, 100, 5000, false, 100, 100),
            vec![
                (200, Change::Set { from: Some(1000), to: 5000 }),
                (400, Change::Set { from: Some(5000), to: 9000 }),
                (600, Change::Lift(9000)),
            ]
        );
        assert_eq!(l.rate(), None);
    }

    #[test]
    fn a_limit_in_force_is_refreshed_before_the_kernel_lets_it_go() {
        let t = Instant::now();
        let mut l = limit(t);
        l.update(true, 0, 0, t);
        // Trouble at the lowest rung: no change, only refreshes, each
        // within the TTL.
        let changes = run(&mut l, t, 100, 3000, true, 0, 0);
        assert_eq!(changes, [1000, 2000, 3000].map(|at| (at, Change::Refresh(1000))).to_vec());
        assert!(REFRESH < TTL);
    }

    #[test]
    fn a_limit_not_refreshed_in_time_is_taken_for_gone() {
        let t = Instant::now();
        let mut l = limit(t);
        l.update(true, 0, 3000, t);
        assert_eq!(l.rate(), Some(10_000));
        // Idle for longer than the TTL: the kernel dropped it; trouble
        // afterwards sets a limit from nothing.
        assert_eq!(l.update(true, 0, 0, ms(t, 4000)), Some(Change::Set { from: None, to: 7000 }));
    }

    #[test]
    fn a_failed_change_leaves_no_limit_assumed() {
        let t = Instant::now();
        let mut l = limit(t);
        l.update(true, 0, 0, t);
        l.failed();
        assert_eq!(l.rate(), None);
        assert_eq!(l.update(true, 0, 0, ms(t, 100)), Some(Change::Set { from: None, to: 1000 }));
    }
}
