//! The DHCP socket of one network: bound to port 67 on the network's bridge
//! only (SO_BINDTODEVICE), so servers of several networks share the port and
//! a request is answered by the network it arrived on.
//!
//! The hot path, per batch of up to [`BATCH`] datagrams: one `recvmmsg`,
//! one lock of the address book, each packet parsed and answered into one
//! reused send buffer, one `sendmmsg` for the replies that need no commit
//! (OFFERs, NAKs), and one hand-off to the lease writer of the batch's
//! lease changes with their ACKs, sent once the changes are durable: with
//! the SQLite store right here, after one append to its lease journal,
//! with etcd by the writer thread ([`super::writer`]). The receive loop
//! never waits for a disk or a network.
//!
//! Overload: DISCOVERs are shed right after parsing, before any work on
//! the address book or the store, and counted (`overload`), when the
//! server has more than it can finish ([`super::admission`]): its clients
//! leave too many OFFERs unanswered, or (for clients the network does not
//! know) the socket's receive queue is more than half full or the lease
//! writer is far behind. Exchanges already under way and registered ports
//! are served first, so completed exchanges stay near the peak instead of
//! collapsing.
//!
//! Defences, because every byte comes from guests: a packet is parsed by
//! [`super::wire`] (nothing panics on wire data, and a panic anyway costs
//! one packet, counted), each client MAC has a rate ([`MacLimiter`]),
//! dropped packets are counted and summarised once a minute instead of
//! logged one by one, and a lease that cannot be written to the store is
//! taken back out of memory (the client gets no ACK and retries).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dhcproto::v4::MessageType;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::admission::{discover_filter, set_filter, Client, OfferWindow, UNANSWERED};
use super::batch::{RecvBatch, SendBatch, Via, BATCH};
use super::link::{LinkSocket, BROADCAST_MAC};
use super::wire::Request;
use super::writer::{Committed, LeaseWriter};
use super::{handle, neighbour, Decision, Destination, DhcpConfig, Outcome};
use crate::ipam::AddressBook;
use crate::model::{Lease, Mac};
use crate::store::LeaseChange;

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Packets whose handling panicked, over all networks. A panic is a bug,
/// but it must cost one packet, never the network's DHCP service: a dead
/// server lets a rogue DHCP server in a guest win every client.
static HANDLER_PANICS: AtomicU64 = AtomicU64::new(0);

/// How many packets' handling panicked since the daemon started.
pub fn handler_panics() -> u64 {
    HANDLER_PANICS.load(Ordering::Relaxed)
}

/// Packets a client MAC may send per second, sustained, and in a burst. A
/// client's whole exchange is two packets; a renewal one.
pub const MAC_RATE: f64 = 4.0;
/// See [`MAC_RATE`].
pub const MAC_BURST: f64 = 16.0;
/// Client MACs remembered by the limiter before idle ones are forgotten.
const MAX_TRACKED_MACS: usize = 65_536;
/// How often expired leases are pruned and drops summarised.
const HOUSEKEEPING: Duration = Duration::from_secs(60);
/// Lease changes the writer may be behind before new clients are shed.
/// Group commit writes a large backlog at once, so a backlog alone is no
/// overload (shedding at 2,048 while a commit stalled emptied the pipeline
/// and cut completed exchanges by half); only a backlog of several full
/// commits, seconds of ACK delay, is.
pub const SHED_BACKLOG: usize = 4 * super::writer::MAX_BATCH;
/// How long the receive loop pauses after a batch of at least
/// [`PACE_FROM`] datagrams. Each wake-up of the loop (epoll, the runtime,
/// a context switch: about a fifth of the server's CPU in a profile under
/// a boot storm) is paid per batch, and without a pause a batch under load
/// is a few datagrams; a pause makes it a millisecond's worth. Measured at
/// 8,000 exchanges/s: a quarter less CPU per exchange, p50 from 0.5 to
/// 1.7 ms, p99 unchanged (docs/performance.md). An idle or lightly used
/// server never pauses: a lone request is answered at once.
const PACE: Duration = Duration::from_millis(1);
/// See [`PACE`].
const PACE_FROM: usize = 4;
/// The receive buffer the server asks for (as root it gets it regardless
/// of net.core.rmem_max). The kernel doubles it, and a queued request
/// costs about 1.3 KB of it (1,638 datagrams of 300 bytes filled 1 MiB
/// asked, on a loopback socket), so 1 MiB holds some 1,600 requests: a burst
/// of that many clients at once, or about 5 ms of the server's work at
/// its peak (some 300,000 requests a second on the bench machine). A
/// deeper queue adds no throughput when the CPU is full, only delay to
/// every reply: at the knee's rates, 2 MiB (3,300 requests) gave a
/// median p99 of 8.8 ms against 6.4 ms, and as many steps over 1% drops
/// (4 of 10 each; ten alternated pairs, docs/performance.md).
const RECV_BUFFER: usize = 1 << 20;

/// A token bucket per client MAC.
#[derive(Debug, Default)]
pub struct MacLimiter {
    buckets: HashMap<Mac, (f64, Instant)>,
}

impl MacLimiter {
    /// Whether `mac` may be served now; takes a token if so.
    pub fn allow(&mut self, mac: Mac, at: Instant) -> bool {
        if self.buckets.len() >= MAX_TRACKED_MACS && !self.buckets.contains_key(&mac) {
            // Forget clients whose bucket has refilled: they lose nothing.
            let full = Duration::from_secs_f64(MAC_BURST / MAC_RATE);
            self.buckets.retain(|_, (_, last)| at.duration_since(*last) < full);
            if self.buckets.len() >= MAX_TRACKED_MACS {
                // A flood of distinct MACs: make room for the newcomer.
                self.buckets.clear();
            }
        }
        let (tokens, last) = self.buckets.entry(mac).or_insert((MAC_BURST, at));
        *tokens = (*tokens + at.duration_since(*last).as_secs_f64() * MAC_RATE).min(MAC_BURST);
        *last = at;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What one network's server has seen, for the minute summary and
/// `lanyard status`.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Datagrams received.
    pub received: AtomicU64,
    /// Not a valid client message.
    pub malformed: AtomicU64,
    /// Over the client's rate.
    pub rate_limited: AtomicU64,
    /// No address free to offer.
    pub no_address: AtomicU64,
    /// Requests refused with a NAK.
    pub nakked: AtomicU64,
    /// Lease writes that failed (disk full?); the reply was withheld.
    pub store_failures: AtomicU64,
    /// DISCOVERs shed because the server had more than it could finish
    /// ([`super::admission`]).
    pub shed: AtomicU64,
    /// Client messages parsed, by option 53 value ([`crate::metrics::DHCP_TYPES`]).
    pub received_by_type: [AtomicU64; 9],
    /// Replies sent, by option 53 value.
    pub sent_by_type: [AtomicU64; 9],
}

impl ServerStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> [u64; 6] {
        [&self.malformed, &self.rate_limited, &self.no_address, &self.nakked, &self.store_failures, &self.shed]
            .map(|c| c.load(Ordering::Relaxed))
    }
}

/// What the receive loop keeps between packets.
#[derive(Debug)]
pub struct ServerState {
    limiter: MacLimiter,
    last_housekeeping: u64,
    /// Whether the server is behind (receive queue or lease writer): new
    /// clients' DISCOVERs are shed while it is.
    pub overloaded: bool,
    /// OFFERs made and answered lately: whether new exchanges are taken on.
    pub window: OfferWindow,
    /// The time of the batch being handled.
    pub clock: Instant,
}

impl ServerState {
    /// A fresh state at time `t`.
    pub fn new(t: u64) -> Self {
        let clock = Instant::now();
        ServerState {
            limiter: MacLimiter::default(),
            last_housekeeping: t,
            overloaded: false,
            window: OfferWindow::new(clock),
            clock,
        }
    }
}

/// Parses and answers one packet; the reply, if any, is appended to `out`.
/// `None` when it is not served (malformed, over its client's rate, or
/// shed: counted in `stats`).
pub fn process(
    buf: &[u8],
    book: &mut AddressBook,
    cfg: &DhcpConfig,
    t: u64,
    state: &mut ServerState,
    stats: &ServerStats,
    out: &mut Vec<u8>,
) -> Option<Decision> {
    let req = match Request::parse(buf) {
        Ok(r) => r,
        Err(_) => {
            ServerStats::bump(&stats.malformed);
            return None;
        }
    };
    ServerStats::bump(&stats.received_by_type[crate::metrics::dhcp_type_index(u8::from(req.kind))]);
    if req.kind == MessageType::Discover {
        let client = || {
            if book.static_ip(req.mac).is_some() {
                Client::Port
            } else if book.lease_of(req.mac).is_some() {
                Client::Leased
            } else {
                Client::Unknown
            }
        };
        if !state.window.admits(client, state.overloaded, state.clock) {
            ServerStats::bump(&stats.shed);
            return None;
        }
    }
    if !state.limiter.allow(req.mac, state.clock) {
        ServerStats::bump(&stats.rate_limited);
        return None;
    }
    let d = handle(book, cfg, &req, t, out);
    match d.outcome {
        Outcome::Offered => state.window.offered(state.clock),
        Outcome::Acked => state.window.acked(state.clock),
        Outcome::NoAddress => ServerStats::bump(&stats.no_address),
        Outcome::Nakked => ServerStats::bump(&stats.nakked),
        _ => {}
    }
    Some(d)
}

/// Opens the server socket on `bridge`.
pub fn bind(bridge: &str) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(bridge.as_bytes()))?;
    s.set_nonblocking(true)?;
    force_recv_buffer(s.as_raw_fd(), RECV_BUFFER);
    s.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67)).into())?;
    UdpSocket::from_std(s.into())
}

/// `SO_RCVBUFFORCE` from asm-generic/socket.h (not in every libc crate
/// target): a buffer size beyond net.core.rmem_max, for CAP_NET_ADMIN.
const SO_RCVBUFFORCE: libc::c_int = 33;
/// `SO_MEMINFO` from asm-generic/socket.h.
const SO_MEMINFO: libc::c_int = 55;

/// Asks for `bytes` of receive buffer; without the privilege to exceed
/// the system's maximum, takes what the system allows.
fn force_recv_buffer(fd: RawFd, bytes: usize) {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    for opt in [SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt reads one c_int, which lives for the call.
        let rc = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, opt, (&v as *const libc::c_int).cast(), len) };
        if rc == 0 {
            return;
        }
    }
}

/// Whether more than half of the socket's receive buffer is in use: the
/// kernel is about to drop datagrams at random, requests and discovers
/// alike, unless the server sheds the cheap-to-refuse ones first.
fn receive_queue_deep(fd: RawFd) -> bool {
    let Some(info) = memory_info(fd) else {
        return false;
    };
    let (alloc, limit) = (info[libc::SK_MEMINFO_RMEM_ALLOC as usize], info[libc::SK_MEMINFO_RCVBUF as usize]);
    alloc > limit / 2
}

/// Datagrams the socket has dropped since it was made (a full receive
/// queue, or its filter), as the kernel counts them; 0 if it cannot say.
fn socket_drops(fd: RawFd) -> u64 {
    memory_info(fd).map(|info| u64::from(info[libc::SK_MEMINFO_DROPS as usize])).unwrap_or(0)
}

/// The socket's `SO_MEMINFO` (indexed by `SK_MEMINFO_*`).
fn memory_info(fd: RawFd) -> Option<[u32; 16]> {
    let mut info = [0u32; 16];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: SO_MEMINFO writes at most `len` bytes into `info`.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, SO_MEMINFO, info.as_mut_ptr().cast(), &mut len) };
    (rc == 0).then_some(info)
}

/// Everything one network's server works with.
struct Server {
    net: String,
    /// The interface the socket is bound to, for neighbour entries.
    ifname: String,
    socket: UdpSocket,
    /// Where replies to clients without an address go out, as frames;
    /// `None` without the privilege for a packet socket.
    link: Option<LinkSocket>,
    book: Arc<Mutex<AddressBook>>,
    stats: Arc<ServerStats>,
}

impl Server {
    fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// How the reply for `dest` goes. A client without an address gets a
    /// frame ([`super::link`]); without a link socket, a unicast to it
    /// needs its neighbour entry planted first, and if that cannot be made
    /// the reply is broadcast, which always arrives.
    fn address(&self, dest: Destination) -> Via {
        match (dest, &self.link) {
            (Destination::Broadcast, Some(_)) => Via::Frame { mac: BROADCAST_MAC, ip: Ipv4Addr::BROADCAST },
            (Destination::Unicast { ip, mac }, Some(_)) => Via::Frame { mac, ip },
            (Destination::Broadcast, None) => Via::Udp(SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)),
            (Destination::Client(ip), _) => Via::Udp(SocketAddrV4::new(ip, 68)),
            (Destination::Relay(ip), _) => Via::Udp(SocketAddrV4::new(ip, 67)),
            (Destination::Unicast { ip, mac }, None) => match neighbour::plant(self.fd(), &self.ifname, ip, mac) {
                Ok(()) => Via::Udp(SocketAddrV4::new(ip, 68)),
                Err(e) => {
                    tracing::debug!(net = self.net, %ip, "no neighbour entry for a unicast reply, broadcasting: {e}");
                    Via::Udp(SocketAddrV4::new(Ipv4Addr::BROADCAST, 68))
                }
            },
        }
    }

    /// Sends the batch; counts what went out by message type.
    fn flush(&self, out: &mut SendBatch) {
        let stats = &self.stats;
        let failed = out.flush(self.fd(), self.link.as_ref(), |kind| {
            ServerStats::bump(&stats.sent_by_type[crate::metrics::dhcp_type_index(kind)]);
        });
        if failed > 0 {
            tracing::debug!(net = self.net, failed, "dhcp replies not sent");
        }
    }
}

/// A batch's lease changes and the replies that wait for them; the lease
/// writer calls [`Committed::committed`] on it after the write.
struct AfterCommit {
    server: Arc<Server>,
    /// ACKs to send once the changes are durable.
    replies: SendBatch,
    /// Per change, the client's lease before it: restored if the commit fails.
    previous: Vec<Option<Lease>>,
}

impl Committed for AfterCommit {
    fn committed(mut self: Box<Self>, result: &Result<(), String>, changes: &[LeaseChange]) {
        match result {
            Ok(()) => self.server.flush(&mut self.replies),
            Err(e) => {
                // No ACK for a lease that is not durable; the client
                // retries. Memory goes back to what the store holds.
                let k = changes.len() as u64;
                let before = self.server.stats.store_failures.fetch_add(k, Ordering::Relaxed);
                // One line each time the count passes a power of two.
                if before == 0 || (before + k).ilog2() > before.ilog2() {
                    tracing::error!(net = self.server.net, failures = before + k, "lease not saved (disk full?): {e}");
                }
                let mut book = self.server.book.lock().unwrap_or_else(|p| p.into_inner());
                for (change, previous) in changes.iter().zip(self.previous.drain(..)) {
                    book.revert(change, previous);
                }
            }
        }
    }
}

/// Serves DHCP on `socket` (bound to `ifname`) until the task is aborted.
pub async fn serve(
    net: String,
    socket: UdpSocket,
    ifname: String,
    book: Arc<Mutex<AddressBook>>,
    cfg: DhcpConfig,
    writer: LeaseWriter,
) {
    // The network's counters outlive this server: a restart goes on counting.
    let stats = crate::metrics::dhcp_stats(&net);
    let link = match LinkSocket::open(&ifname, cfg.server_ip) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(
                net,
                "no packet socket on {ifname} ({e}): replies to clients without an address go through the IP stack"
            );
            None
        }
    };
    let server = Arc::new(Server { net, ifname, socket, link, book, stats });
    let fd = server.fd();
    let mut batch = RecvBatch::default();
    let mut now_out = SendBatch::with_capacity(BATCH);
    let mut state = ServerState::new(now());
    let mut reported = server.stats.snapshot();
    let mut kernel_shed = KernelShed::new(&server, state.clock);
    loop {
        let recv = server.socket.async_io(Interest::READABLE, || batch.recv(fd));
        let received = if kernel_shed.on {
            // No DISCOVER reaches the loop while the kernel sheds them, so
            // nothing else would wake it to see that the overload is over.
            tokio::time::timeout(KERNEL_SHED_RECHECK, recv).await.ok()
        } else {
            Some(recv.await)
        };
        let Some(received) = received else {
            state.clock = Instant::now();
            kernel_shed.update(&server, &mut state);
            continue;
        };
        let n = match received {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(net = server.net, "dhcp receive failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        server.stats.received.fetch_add(n as u64, Ordering::Relaxed);
        let t = now();
        if t >= state.last_housekeeping + HOUSEKEEPING.as_secs() {
            state.last_housekeeping = t;
            housekeeping(&server, &writer, t, &mut reported);
        }
        state.clock = Instant::now();
        // A full batch means more is queued: check how much.
        state.overloaded = writer.backlog() > SHED_BACKLOG || (n == BATCH && receive_queue_deep(fd));
        let mut changes: Vec<LeaseChange> = Vec::new();
        let mut after: Option<Box<AfterCommit>> = None;
        {
            let mut book = server.book.lock().unwrap_or_else(|p| p.into_inner());
            for i in 0..n {
                let (packet, peer) = batch.packet(i);
                let start = now_out.mark();
                let outcome = catch_unwind(AssertUnwindSafe(|| {
                    process(packet, &mut book, &cfg, t, &mut state, &server.stats, now_out.buffer())
                }));
                let d = match outcome {
                    Ok(Some(d)) => d,
                    Ok(None) => {
                        now_out.discard(start);
                        continue;
                    }
                    Err(_) => {
                        now_out.discard(start);
                        let n = HANDLER_PANICS.fetch_add(1, Ordering::Relaxed) + 1;
                        tracing::error!(net = server.net, %peer, panics = n, "a DHCP packet made the handler panic; packet dropped, server goes on");
                        continue;
                    }
                };
                let Some(change) = d.persist else {
                    match d.reply {
                        Some((kind, dest)) => now_out.push(start, server.address(dest), u8::from(kind)),
                        None => now_out.discard(start),
                    }
                    continue;
                };
                let after = after.get_or_insert_with(|| {
                    Box::new(AfterCommit {
                        server: server.clone(),
                        replies: SendBatch::with_capacity(8),
                        previous: Vec::new(),
                    })
                });
                changes.push(change);
                after.previous.push(d.previous);
                match (d.reply, d.wait_for_commit) {
                    (Some((kind, dest)), false) => now_out.push(start, server.address(dest), u8::from(kind)),
                    (Some((kind, dest)), true) => {
                        // The ACK moves to the batch sent after the commit.
                        let to = server.address(dest);
                        let bytes = &now_out.buffer()[start..];
                        let at = after.replies.mark();
                        after.replies.buffer().extend_from_slice(bytes);
                        after.replies.push(at, to, u8::from(kind));
                        now_out.discard(start);
                    }
                    (None, _) => now_out.discard(start),
                }
            }
        }
        server.flush(&mut now_out);
        if let Some(after) = after {
            writer.submit(changes, after);
        }
        kernel_shed.update(&server, &mut state);
        // Under load, let a millisecond's requests gather before the next
        // receive (a full batch means more is queued: no pause then).
        if (PACE_FROM..BATCH).contains(&n) {
            tokio::time::sleep(PACE).await;
        }
    }
}

/// While the kernel sheds DISCOVERs: how often the receive loop wakes up
/// to see whether that is still needed, measures what arrives, and
/// refreshes the filter's share and list of ports (a port made meanwhile
/// is let through within this time).
const KERNEL_SHED_RECHECK: Duration = Duration::from_millis(100);
/// The shortest time over which arrivals are measured to decide whether
/// the kernel starts shedding.
const KERNEL_SHED_FIRST_LOOK: Duration = Duration::from_millis(10);

/// While the kernel sheds, the DISCOVERs it lets through, as a multiple
/// of the ACKs the server sent over the same time. Above 1, so the server
/// never idles for want of DISCOVERs and what it completes can grow (by
/// up to this factor every [`KERNEL_SHED_RECHECK`]); the excess it sheds
/// itself, cheaply, while its receive queue is deep.
const KERNEL_SHED_HEADROOM: f64 = 1.25;

/// Whether and how much the kernel sheds DISCOVERs for the server
/// ([`discover_filter`]). Beyond twice the admission limit of unanswered
/// OFFERs, it lets through only the DISCOVERs the server can turn into
/// exchanges: [`KERNEL_SHED_HEADROOM`] times the ACKs it sends, as a
/// random share of the DISCOVERs arriving, both measured over the last
/// [`KERNEL_SHED_RECHECK`]. (ACKs over the window's whole second made it
/// climb from a cold start by a quarter a second: in run 19, 2x completed
/// 70,266 a second with hardly a REQUEST lost.) All or nothing
/// (the filter before) left the server idle while it dropped everything,
/// and let the queue fill with DISCOVERs, where REQUESTs of exchanges
/// under way were lost, while it dropped nothing: at 2x the knee it
/// completed less than half of the knee (docs/performance.md, run 18).
struct KernelShed {
    on: bool,
    /// When arrivals were last measured, with the DISCOVERs read, the
    /// datagrams the socket had dropped and the ACKs sent by then.
    sampled: (Instant, u64, u64, u64),
    /// DISCOVERs arriving per second over the last measurement: read by
    /// the server, or dropped by its socket (the filter, or a full queue).
    arriving: f64,
    /// ACKs sent per second over the last measurement.
    acking: f64,
}

impl KernelShed {
    fn new(server: &Server, at: Instant) -> Self {
        let sampled = (
            at,
            counted(server, MessageType::Discover, false),
            socket_drops(server.fd()),
            counted(server, MessageType::Ack, true),
        );
        KernelShed { on: false, sampled, arriving: 0.0, acking: 0.0 }
    }

    /// Measures arrivals every [`KERNEL_SHED_RECHECK`], and attaches,
    /// refreshes or detaches the filter as the window and they say.
    fn update(&mut self, server: &Server, state: &mut ServerState) {
        let now = state.clock;
        let since = now.saturating_duration_since(self.sampled.0);
        let overloaded = state.window.unanswered(now) > 2 * UNANSWERED;
        // On, the share is set anew every recheck; off, as soon as the
        // window says overload, from the arrivals since the last sample.
        let look = match (self.on, overloaded) {
            (true, _) => since >= KERNEL_SHED_RECHECK,
            (false, true) => since >= KERNEL_SHED_FIRST_LOOK,
            (false, false) => false,
        };
        // Sampled while off too, so that the first look measures the
        // last few milliseconds, not everything since the loop last shed.
        if look || since >= KERNEL_SHED_RECHECK {
            let read = counted(server, MessageType::Discover, false);
            let dropped = socket_drops(server.fd());
            let acked = counted(server, MessageType::Ack, true);
            let new = read.saturating_sub(self.sampled.1) + dropped.saturating_sub(self.sampled.2);
            self.arriving = new as f64 / since.as_secs_f64();
            self.acking = acked.saturating_sub(self.sampled.3) as f64 / since.as_secs_f64();
            self.sampled = (now, read, dropped, acked);
        }
        if !look {
            return;
        }
        // A share of 1: no more DISCOVERs arrive than the server can take
        // on (the knee's own bursts), and it sheds what it must by itself.
        let share = if self.arriving > 0.0 {
            (KERNEL_SHED_HEADROOM * self.acking / self.arriving).min(1.0)
        } else if self.on && !overloaded {
            1.0
        } else {
            // Nothing arrived to measure a share by: the filter stays as
            // it is while the overload lasts.
            return;
        };
        let wanted = share < 1.0;
        if !wanted && !self.on {
            return;
        }
        let program = if wanted {
            let keep = (share * f64::from(u32::MAX)) as u32;
            discover_filter(&server.book.lock().unwrap_or_else(|p| p.into_inner()).static_macs(), keep)
        } else {
            None
        };
        // Too many ports to list: no filter, the server sheds on its own
        // (and still rechecks, to attach one if ports go away).
        match set_filter(&server.socket, program.as_deref()) {
            Ok(()) => self.on = wanted,
            Err(e) => tracing::debug!(net = server.net, "dhcp: kernel filter not changed: {e}"),
        }
    }
}

/// Messages of `kind` the server has read, or sent (the network's counts,
/// which outlive a server).
fn counted(server: &Server, kind: MessageType, sent: bool) -> u64 {
    let i = crate::metrics::dhcp_type_index(u8::from(kind));
    let counts = if sent { &server.stats.sent_by_type } else { &server.stats.received_by_type };
    counts[i].load(Ordering::Relaxed)
}

/// Prunes expired leases (memory and store) and logs one line about what
/// was dropped since the last time, if anything was.
fn housekeeping(server: &Arc<Server>, writer: &LeaseWriter, t: u64, reported: &mut [u64; 6]) {
    let pruned = server.book.lock().unwrap_or_else(|p| p.into_inner()).expire(t);
    if !pruned.is_empty() {
        let changes: Vec<LeaseChange> =
            pruned.iter().map(|l| LeaseChange::Remove { net: l.net.clone(), ip: l.ip }).collect();
        let writer = writer.clone();
        tokio::spawn(async move {
            // A failed prune is retried naturally: the rows stay expired.
            let _ = writer.commit(changes).await;
        });
    }
    let now = server.stats.snapshot();
    if now != *reported {
        let d: Vec<u64> = now.iter().zip(reported.iter()).map(|(a, b)| a - b).collect();
        tracing::warn!(
            net = server.net,
            malformed = d[0],
            rate_limited = d[1],
            no_address = d[2],
            nakked = d[3],
            store_failures = d[4],
            shed_overload = d[5],
            "dhcp: packets not served in the last minute"
        );
        *reported = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_mac_cannot_flood_and_others_are_not_held_back() {
        let mut l = MacLimiter::default();
        let t = Instant::now();
        let a = Mac([0x52, 0x54, 0, 0, 0, 1]);
        let served = (0..1000).filter(|_| l.allow(a, t)).count();
        assert_eq!(served, MAC_BURST as usize);
        assert!(l.allow(Mac([0x52, 0x54, 0, 0, 0, 2]), t));
        assert!(l.allow(a, t + Duration::from_millis(300)), "the rate comes back");
    }

    #[test]
    fn the_limiter_stays_bounded_under_a_flood_of_macs() {
        let mut l = MacLimiter::default();
        let t = Instant::now();
        for i in 0..(MAX_TRACKED_MACS as u32 + 10) {
            let [_, a, b, c] = i.to_be_bytes();
            assert!(l.allow(Mac([0x52, 0x54, 0, a, b, c]), t));
        }
        assert!(l.buckets.len() <= MAX_TRACKED_MACS);
    }

    fn discover(mac: [u8; 6]) -> Vec<u8> {
        let mut b = vec![0u8; 236];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[28..34].copy_from_slice(&mac);
        b.extend_from_slice(&[99, 130, 83, 99, 53, 1, 1, 255]);
        b
    }

    /// Runs `f` on a thread of its own, in a network namespace of its own
    /// with only its loopback up; `None` without the privilege for one.
    fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        std::thread::spawn(move || {
            // SAFETY: unshare changes only this thread's network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return None;
            }
            let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
            // SAFETY: ifreq is plain old data; all zeroes is a valid value.
            let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
            for (d, b) in ifr.ifr_name.iter_mut().zip(b"lo") {
                *d = *b as libc::c_char;
            }
            ifr.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as libc::c_short;
            // SAFETY: SIOCSIFFLAGS reads the ifreq, alive for the call.
            if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } != 0 {
                return None;
            }
            Some(f())
        })
        .join()
        .expect("the namespace's thread")
    }

    #[test]
    fn the_kernel_filter_comes_off_once_the_overload_is_over_though_nothing_passes_it() {
        let ran = in_private_netns(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let name = format!("kshed-{}", std::process::id());
                let net = crate::model::test_network(&name, "10.77.0.0/16", "lo");
                let cfg = DhcpConfig::for_network(&net, None);
                let mut book = AddressBook::new(net);
                // Clients with a lease: served until twice the limit of
                // unanswered OFFERs, then shed, by the kernel.
                let n = 2 * crate::dhcp::admission::UNANSWERED + 300;
                let macs: Vec<[u8; 6]> = (0..n).map(|i| [2, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]).collect();
                for m in &macs {
                    let ip = book.offer(Mac(*m), None, 0).unwrap();
                    book.ack(Mac(*m), ip, 0, 3600, None, None).unwrap();
                }
                let std_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                std_socket.set_nonblocking(true).unwrap();
                force_recv_buffer(std_socket.as_raw_fd(), RECV_BUFFER);
                let to = std_socket.local_addr().unwrap();
                let socket = UdpSocket::from_std(std_socket).unwrap();
                let store: Arc<dyn crate::store::Store> =
                    Arc::new(crate::store::sqlite::SqliteStore::in_memory().unwrap());
                let book = Arc::new(Mutex::new(book));
                let server =
                    tokio::spawn(serve(name.clone(), socket, "lo".into(), book, cfg, LeaseWriter::start(store)));
                let stats = crate::metrics::dhcp_stats(&name);
                let discovers = || stats.received_by_type[1].load(Ordering::Relaxed);
                let settled = || async {
                    let mut last = discovers();
                    loop {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let now = discovers();
                        if now == last {
                            return now;
                        }
                        last = now;
                    }
                };
                let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                for (i, m) in macs.iter().enumerate() {
                    client.send_to(&discover(*m), to).unwrap();
                    if i % 256 == 255 {
                        // Within the socket's buffer, and within a second.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                let seen = settled().await;
                assert!(seen > 2 * crate::dhcp::admission::UNANSWERED as u64, "served up to the limit, saw {seen}");
                // The filter is on: one more DISCOVER never reaches the server.
                client.send_to(&discover([2, 0xee, 0, 0, 0, 1]), to).unwrap();
                assert_eq!(settled().await, seen, "the kernel sheds DISCOVERs beyond twice the limit");
                // The overload leaves the window; nothing else arrives, and
                // a newcomer's DISCOVER must still reach the server.
                tokio::time::sleep(Duration::from_millis(1_300)).await;
                client.send_to(&discover([2, 0xee, 0, 0, 0, 2]), to).unwrap();
                assert_eq!(settled().await, seen + 1, "the filter stayed on with the overload over");
                server.abort();
            })
        });
        if ran.is_none() {
            let require = std::env::var("LANYARD_REQUIRE_PRIVILEGED").map(|v| v == "1").unwrap_or(false);
            assert!(!require, "this test needs a network namespace of its own (root)");
        }
    }

    #[test]
    fn overload_sheds_new_clients_before_any_work_and_serves_ports_and_leases() {
        let net = crate::model::test_network("default", "192.168.122.0/24", "lybr0");
        let cfg = DhcpConfig::for_network(&net, None);
        let mut book = AddressBook::new(net);
        let port = Mac([0x52, 0x54, 0, 0, 0, 1]);
        book.reserve_fixed(port, None, 0).unwrap();
        let leased = Mac([0x52, 0x54, 0, 0, 0, 2]);
        let ip = book.offer(leased, None, 0).unwrap();
        book.ack(leased, ip, 0, 3600, None, None).unwrap();
        let stats = ServerStats::default();
        let mut state = ServerState::new(0);
        state.overloaded = true;
        let mut out = Vec::new();
        let newcomer = [0x52, 0x54, 0, 0, 0, 3];
        assert!(process(&discover(newcomer), &mut book, &cfg, 1, &mut state, &stats, &mut out).is_none());
        assert_eq!(stats.shed.load(Ordering::Relaxed), 1);
        assert!(out.is_empty(), "nothing written for a shed packet");
        assert!(book.lease_of(Mac(newcomer)).is_none());
        for known in [port, leased] {
            let d = process(&discover(known.0), &mut book, &cfg, 1, &mut state, &stats, &mut out).unwrap();
            assert_eq!(d.outcome, Outcome::Offered, "{known} is served under overload");
        }
        assert_eq!(stats.shed.load(Ordering::Relaxed), 1);
        state.overloaded = false;
        let d = process(&discover(newcomer), &mut book, &cfg, 1, &mut state, &stats, &mut out).unwrap();
        assert_eq!(d.outcome, Outcome::Offered, "served again once the overload is over");

        // Clients that leave OFFERs unanswered: no new exchange is taken
        // on, also with a short queue, then none of a leased client; a
        // port's always is.
        for _ in 0..=2 * crate::dhcp::admission::UNANSWERED {
            state.window.offered(state.clock);
        }
        let other = [0x52, 0x54, 0, 0, 0, 4];
        assert!(process(&discover(other), &mut book, &cfg, 1, &mut state, &stats, &mut out).is_none());
        assert!(process(&discover(leased.0), &mut book, &cfg, 1, &mut state, &stats, &mut out).is_none());
        let d = process(&discover(port.0), &mut book, &cfg, 1, &mut state, &stats, &mut out).unwrap();
        assert_eq!(d.outcome, Outcome::Offered, "a port is served whatever its neighbours do");
        assert_eq!(stats.shed.load(Ordering::Relaxed), 3);
    }
}
