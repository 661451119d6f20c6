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
//!
//! Beyond twice the limit the server also has the kernel shed them
//! ([`discover_filter`], classic BPF on its socket), all but a random
//! share that follows the ACKs the server sends (`server::KernelShed`):
//! the rest are dropped before they are queued, so the REQUESTs of
//! exchanges under way do not wait behind them (or get lost in a full
//! queue), and the server spends nothing on them. A port's DISCOVERs
//! always pass. The kernel counts what it drops only as the socket's
//! drops; the `overload` counter holds what the server itself shed.

use std::time::{Duration, Instant};

use socket2::SockFilter;

use crate::model::Mac;

/// Unanswered OFFERs of the last second beyond which new clients are shed
/// (twice as many: clients with a lease too). An estimate from run 12: at
/// the knee (51,200/s) an OFFER is answered 2-10 ms later, so a second
/// holds some 100-500 unanswered OFFERs; drowning clients left 69,000 a
/// second in run 10 (447,190 OFFERs, 102,869 REQUESTs in 5 s).
pub const UNANSWERED: u32 = 4096;

/// The most ports [`discover_filter`] lets through by MAC (five
/// instructions each; the kernel takes 4,096). A network with more gets no
/// kernel filter, only the server's own shedding.
pub const FILTER_PORTS: usize = 512;

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
    /// writer), which sheds unknown clients by itself. `client` is asked
    /// only when something is being shed: while nothing is, a DISCOVER
    /// costs no look-up.
    pub fn admits(&mut self, client: impl FnOnce() -> Client, overloaded: bool, at: Instant) -> bool {
        let unanswered = self.unanswered(at);
        if !overloaded && unanswered <= UNANSWERED {
            return true;
        }
        match client() {
            Client::Port => true,
            Client::Leased => unanswered <= 2 * UNANSWERED,
            Client::Unknown => false,
        }
    }
}

/// Where the filter looks, from the UDP header (where a UDP socket's
/// filter starts): the first option's code and value, and the client MAC.
const FIRST_OPTION: u32 = 8 + 240;
const FIRST_VALUE: u32 = FIRST_OPTION + 2;
const CHADDR: u32 = 8 + 28;
/// What a filter returns to keep a whole datagram, and to drop it.
const KEEP: u32 = 0xffff;
const DROP: u32 = 0;

fn stmt(code: u32, k: u32) -> SockFilter {
    SockFilter::new(code as u16, 0, 0, k)
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> SockFilter {
    SockFilter::new(code as u16, jt, jf, k)
}

/// A classic BPF program for a DHCP server's socket that lets through
/// every DISCOVER from `ports` and, of the others, a random `keep` in
/// 2^32 (0: none), dropping the rest in the kernel. Anything else passes,
/// as does a DISCOVER whose first option is not the message type (every
/// common client puts it first; the server sheds the rest itself). `None`
/// with more than [`FILTER_PORTS`] ports.
pub fn discover_filter(ports: &[Mac], keep: u32) -> Option<Vec<SockFilter>> {
    use libc::{BPF_ABS, BPF_B, BPF_H, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    if ports.len() > FILTER_PORTS {
        return None;
    }
    let mut p = vec![
        stmt(BPF_LD | BPF_B | BPF_ABS, FIRST_OPTION),
        jump(BPF_JMP | BPF_JEQ | BPF_K, 53, 1, 0),
        stmt(BPF_RET | BPF_K, KEEP),
        stmt(BPF_LD | BPF_B | BPF_ABS, FIRST_VALUE),
        jump(BPF_JMP | BPF_JEQ | BPF_K, 1, 1, 0),
        stmt(BPF_RET | BPF_K, KEEP),
    ];
    for mac in ports {
        let m = mac.0;
        p.extend([
            stmt(BPF_LD | BPF_W | BPF_ABS, CHADDR),
            jump(BPF_JMP | BPF_JEQ | BPF_K, u32::from_be_bytes([m[0], m[1], m[2], m[3]]), 0, 3),
            stmt(BPF_LD | BPF_H | BPF_ABS, CHADDR + 4),
            jump(BPF_JMP | BPF_JEQ | BPF_K, u32::from(u16::from_be_bytes([m[4], m[5]])), 0, 1),
            stmt(BPF_RET | BPF_K, KEEP),
        ]);
    }
    if keep > 0 {
        // The kernel's random number (an ancillary load): below `keep`
        // the DISCOVER passes.
        p.extend([
            stmt(BPF_LD | BPF_W | BPF_ABS, (libc::SKF_AD_OFF + libc::SKF_AD_RANDOM) as u32),
            jump(BPF_JMP | BPF_JGE | BPF_K, keep, 1, 0),
            stmt(BPF_RET | BPF_K, KEEP),
        ]);
    }
    p.push(stmt(BPF_RET | BPF_K, DROP));
    Some(p)
}

/// Attaches `program` to `socket` (replacing any filter there), or with
/// `None` detaches it.
pub fn set_filter(socket: &impl std::os::fd::AsFd, program: Option<&[SockFilter]>) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(socket);
    match program {
        Some(p) => socket.attach_filter(p),
        // No filter attached is not an error here.
        None => match socket.detach_filter() {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, mac: [u8; 6], type_first: bool) -> Vec<u8> {
        let mut b = vec![0u8; 236];
        b[0] = 1;
        b[28..34].copy_from_slice(&mac);
        b.extend_from_slice(&[99, 130, 83, 99]);
        if !type_first {
            b.extend_from_slice(&[12, 2, b'v', b'm']);
        }
        b.extend_from_slice(&[53, 1, kind, 255]);
        b
    }

    #[test]
    fn the_kernel_filter_drops_discovers_but_a_ports_and_lets_everything_else_through() {
        use std::net::UdpSocket;
        let port = [0x52, 0x54, 0, 0xab, 0xcd, 0xef];
        let other = [0x52, 0x54, 0, 0xab, 0xcd, 0xee];
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let prog = discover_filter(&[Mac([1, 2, 3, 4, 5, 6]), Mac(port)], 0).unwrap();
        set_filter(&rx, Some(&prog)).unwrap();
        let cases = [
            (message(1, other, true), false, "another client's DISCOVER"),
            (message(1, port, true), true, "the port's DISCOVER"),
            (message(3, other, true), true, "a REQUEST"),
            (message(1, other, false), true, "a DISCOVER with its type further on (the server decides)"),
        ];
        let mut buf = [0u8; 600];
        for (msg, passes, what) in &cases {
            tx.send_to(msg, rx.local_addr().unwrap()).unwrap();
            let got = rx.recv(&mut buf).is_ok();
            assert_eq!(got, *passes, "{what}");
        }
        set_filter(&rx, None).unwrap();
        tx.send_to(&cases[0].0, rx.local_addr().unwrap()).unwrap();
        assert!(rx.recv(&mut buf).is_ok(), "detached: everything passes");
        set_filter(&rx, None).unwrap();
        let many: Vec<Mac> = (0..=FILTER_PORTS as u32).map(|i| Mac([2, 0, 0, 0, (i >> 8) as u8, i as u8])).collect();
        assert!(discover_filter(&many, 0).is_none());
        assert!(discover_filter(&many[..FILTER_PORTS], u32::MAX / 2).unwrap().len() <= 4096);
    }

    #[test]
    fn the_kernel_filter_lets_through_its_share_of_other_clients_discovers() {
        use std::net::UdpSocket;
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = [0u8; 600];
        // A quarter, then all of them: 400 DISCOVERs each time, fewer than
        // the socket's queue holds, read after each 100.
        for (keep, low, high) in [(u32::MAX / 4, 60, 140), (u32::MAX, 400, 400)] {
            set_filter(&rx, Some(&discover_filter(&[], keep).unwrap())).unwrap();
            let mut got = 0;
            for round in 0..4u8 {
                for i in 0..100u8 {
                    tx.send_to(&message(1, [2, 0, 0, 0, round, i], true), rx.local_addr().unwrap()).unwrap();
                }
                while rx.recv(&mut buf).is_ok() {
                    got += 1;
                }
            }
            assert!((low..=high).contains(&got), "keep {keep}: {got} of 400 passed");
            tx.send_to(&message(3, [2, 0, 0, 0, 9, 9], true), rx.local_addr().unwrap()).unwrap();
            assert!(rx.recv(&mut buf).is_ok(), "a REQUEST always passes");
        }
    }

    #[test]
    fn unanswered_offers_shed_new_clients_then_leased_ones_but_never_ports() {
        let t = Instant::now();
        let mut w = OfferWindow::new(t);
        for _ in 0..UNANSWERED {
            w.offered(t);
        }
        assert!(w.admits(|| Client::Unknown, false, t), "up to the limit");
        w.offered(t);
        assert!(!w.admits(|| Client::Unknown, false, t), "beyond it, new clients wait");
        assert!(w.admits(|| Client::Leased, false, t), "clients with a lease are served longer");
        for _ in 0..UNANSWERED {
            w.offered(t);
        }
        assert!(!w.admits(|| Client::Leased, false, t), "and shed beyond twice the limit");
        assert!(w.admits(|| Client::Port, false, t), "a port always");
        // REQUESTs come back: new clients are taken on again.
        for _ in 0..UNANSWERED + 2 {
            w.acked(t + Duration::from_millis(50));
        }
        assert!(w.admits(|| Client::Unknown, false, t + Duration::from_millis(60)));
        assert!(!w.admits(|| Client::Unknown, true, t + Duration::from_millis(60)), "a deep queue sheds them anyway");
    }

    #[test]
    fn offers_leave_the_window_after_a_second() {
        let t = Instant::now();
        let mut w = OfferWindow::new(t);
        for i in 0..3 * UNANSWERED {
            w.offered(t + Duration::from_micros(u64::from(i)));
        }
        assert_eq!(w.unanswered(t + Duration::from_millis(500)), 3 * UNANSWERED);
        assert!(!w.admits(|| Client::Leased, false, t + Duration::from_millis(500)));
        assert_eq!(w.unanswered(t + Duration::from_millis(1_050)), 0, "the slot of those offers has left");
        assert!(w.admits(|| Client::Unknown, false, t + Duration::from_millis(1_050)));
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
