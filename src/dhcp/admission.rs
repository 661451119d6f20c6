//! Which DISCOVERs a server takes on when it has more than it can finish.
//!
//! An exchange is only worth something once its REQUEST is ACKed. Under a
//! boot storm larger than the server and its clients can complete, an
//! OFFER that the client never turns into a REQUEST (its queue overflowed,
//! it gave up) is wasted work on both sides, and the broadcast ones reach
//! every guest on the bridge. Measured before this existed: at 4x the knee
//! the server sent 120,000 OFFERs a second and completed 600 exchanges a
//! second, because the clients drowned in OFFERs and their REQUESTs came
//! back too late or not at all.
//!
//! So the server counts, over the last second, the OFFERs it made and the
//! REQUESTs it ACKed ([`OfferWindow`]). When more than [`UNANSWERED`] OFFERs
//! of that second are unanswered, it stops taking on new exchanges: a
//! DISCOVER from a client it does not know is shed before any work; beyond
//! twice that, so is one from a client with a lease (after a power cut
//! every rebooting VM has one). A registered port's DISCOVER is always
//! served. The server's OFFERs then follow what its clients complete, plus
//! at most [`UNANSWERED`] a second, and completed exchanges stay near the
//! peak. The shed DISCOVERs are counted (`overload`), never logged one by
//! one, and their clients retry (RFC 2131: after about 4 s).

use std::time::{Duration, Instant};

/// Unanswered OFFERs of the last second beyond which new clients are shed
/// (twice as many: clients with a lease too). At the knee a client's
/// REQUEST comes back within a few milliseconds, so a second holds a few
/// hundred unanswered OFFERs; a drowning client leaves tens of thousands.
pub const UNANSWERED: u32 = 4096;

/// Slots of the window, each [`SLOT`] long: one second in all.
const SLOTS: usize = 10;
const SLOT: Duration = Duration::from_millis(100);

/// OFFERs made and REQUESTs ACKed over the last second, per 100 ms slot.
#[derive(Debug)]
pub struct OfferWindow {
    start: Instant,
    /// The slot number (since `start`) of the newest slot.
    newest: u64,
    /// (OFFERs, ACKs) per slot, by slot number modulo [`SLOTS`].
    slots: [(u32, u32); SLOTS],
}

/// Who is asking: what the server knows of a DISCOVER's client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// A registered port: always served.
    Port,
    /// A client with a lease (current or expired, not yet forgotten).
    Leased,
    /// A client the network does not know.
    Unknown,
}

impl OfferWindow {
    /// An empty window starting at `at`.
    pub fn new(at: Instant) -> Self {
        OfferWindow { start: at, newest: 0, slots: [(0, 0); SLOTS] }
    }

    /// Moves the window to `at`, emptying the slots it leaves behind.
    fn advance(&mut self, at: Instant) -> &mut (u32, u32) {
        let slot = (at.saturating_duration_since(self.start).as_millis() / SLOT.as_millis()) as u64;
        if slot >= self.newest + SLOTS as u64 {
            self.slots = [(0, 0); SLOTS];
        } else {
            for s in self.newest + 1..=slot {
                self.slots[(s % SLOTS as u64) as usize] = (0, 0);
            }
        }
        self.newest = self.newest.max(slot);
        &mut self.slots[(self.newest % SLOTS as u64) as usize]
    }

    /// An OFFER was made at `at`.
    pub fn offered(&mut self, at: Instant) {
        let s = self.advance(at);
        s.0 = s.0.saturating_add(1);
    }

    /// A REQUEST was ACKed at `at`.
    pub fn acked(&mut self, at: Instant) {
        let s = self.advance(at);
        s.1 = s.1.saturating_add(1);
    }

    /// OFFERs of the last second not matched by ACKs (renewals, which
    /// follow no OFFER, only make this smaller: the window errs towards
    /// serving).
    pub fn unanswered(&mut self, at: Instant) -> u32 {
        self.advance(at);
        let (o, a) = self.slots.iter().fold((0u64, 0u64), |(o, a), s| (o + u64::from(s.0), a + u64::from(s.1)));
        u32::try_from(o.saturating_sub(a)).unwrap_or(u32::MAX)
    }

    /// Whether a DISCOVER from `client` is taken on at `at`; `overloaded`
    /// says the server is behind anyway (its receive queue or its lease
    /// writer), which sheds unknown clients by itself.
    pub fn admits(&mut self, client: Client, overloaded: bool, at: Instant) -> bool {
        match client {
            Client::Port => true,
            Client::Leased => self.unanswered(at) <= 2 * UNANSWERED,
            Client::Unknown => !overloaded && self.unanswered(at) <= UNANSWERED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unanswered_offers_shed_new_clients_then_leased_ones_but_never_ports() {
        let t = Instant::now();
        let mut w = OfferWindow::new(t);
        for _ in 0..UNANSWERED {
            w.offered(t);
        }
        assert!(w.admits(Client::Unknown, false, t), "up to the limit");
        w.offered(t);
        assert!(!w.admits(Client::Unknown, false, t), "beyond it, new clients wait");
        assert!(w.admits(Client::Leased, false, t), "clients with a lease are served longer");
        for _ in 0..UNANSWERED {
            w.offered(t);
        }
        assert!(!w.admits(Client::Leased, false, t), "and shed beyond twice the limit");
        assert!(w.admits(Client::Port, false, t), "a port always");
        // REQUESTs come back: new clients are taken on again.
        for _ in 0..UNANSWERED + 2 {
            w.acked(t + Duration::from_millis(50));
        }
        assert!(w.admits(Client::Unknown, false, t + Duration::from_millis(60)));
        assert!(!w.admits(Client::Unknown, true, t + Duration::from_millis(60)), "a deep queue sheds them anyway");
    }

    #[test]
    fn offers_leave_the_window_after_a_second() {
        let t = Instant::now();
        let mut w = OfferWindow::new(t);
        for i in 0..3 * UNANSWERED {
            w.offered(t + Duration::from_micros(u64::from(i)));
        }
        assert_eq!(w.unanswered(t + Duration::from_millis(500)), 3 * UNANSWERED);
        assert!(!w.admits(Client::Leased, false, t + Duration::from_millis(500)));
        assert_eq!(w.unanswered(t + Duration::from_millis(1_050)), 0, "the slot of those offers has left");
        assert!(w.admits(Client::Unknown, false, t + Duration::from_millis(1_050)));
        // A long silence empties everything at once.
        w.offered(t + Duration::from_secs(5));
        assert_eq!(w.unanswered(t + Duration::from_secs(60)), 0);
    }

    #[test]
    fn acks_without_offers_never_make_the_count_negative() {
        let t = Instant::now();
        let mut w = OfferWindow::new(t);
        for _ in 0..100 {
            w.acked(t);
        }
        w.offered(t);
        assert_eq!(w.unanswered(t), 0);
    }
}
