//! The DHCP socket of one network: bound to port 67 on the network's bridge
//! only (SO_BINDTODEVICE), so servers of several networks share the port and
//! a request is answered by the network it arrived on.
//!
//! Defences, because every byte comes from guests: a packet is parsed by
//! [`super::wire`] (nothing panics on wire data, and a panic anyway costs
//! one packet, counted), each client MAC has a rate ([`MacLimiter`]),
//! dropped packets are counted and summarised once a minute instead of
//! logged one by one, and a lease that cannot be written to the store is
//! taken back out of memory (the client gets no ACK and retries).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dhcproto::{Encodable, Encoder};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::wire::Request;
use super::writer::LeaseWriter;
use super::{handle, Decision, Destination, DhcpConfig, Outcome};
use crate::ipam::AddressBook;
use crate::model::Mac;
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
    /// Client messages parsed, by option 53 value ([`crate::metrics::DHCP_TYPES`]).
    pub received_by_type: [AtomicU64; 9],
    /// Replies sent, by option 53 value.
    pub sent_by_type: [AtomicU64; 9],
}

impl ServerStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> [u64; 5] {
        [&self.malformed, &self.rate_limited, &self.no_address, &self.nakked, &self.store_failures]
            .map(|c| c.load(Ordering::Relaxed))
    }
}

/// What the receive loop keeps between packets.
#[derive(Debug)]
pub struct ServerState {
    limiter: MacLimiter,
    last_housekeeping: u64,
}

impl ServerState {
    /// A fresh state at time `t`.
    pub fn new(t: u64) -> Self {
        ServerState { limiter: MacLimiter::default(), last_housekeeping: t }
    }
}

/// Parses and answers one packet. `None` when it is not served (malformed or
/// over its client's rate: counted in `stats`).
pub fn process(
    buf: &[u8],
    book: &Mutex<AddressBook>,
    cfg: &DhcpConfig,
    t: u64,
    state: &mut ServerState,
    stats: &ServerStats,
) -> Option<Decision> {
    let req = match Request::parse(buf) {
        Ok(r) => r,
        Err(_) => {
            ServerStats::bump(&stats.malformed);
            return None;
        }
    };
    ServerStats::bump(&stats.received_by_type[crate::metrics::dhcp_type_index(u8::from(req.kind))]);
    if !state.limiter.allow(req.mac, Instant::now()) {
        ServerStats::bump(&stats.rate_limited);
        return None;
    }
    let mut book = book.lock().unwrap_or_else(|p| p.into_inner());
    let d = handle(&mut book, cfg, &req, t);
    match d.outcome {
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
    s.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67)).into())?;
    UdpSocket::from_std(s.into())
}

/// Everything one network's server works with.
struct Server {
    net: String,
    socket: Arc<UdpSocket>,
    book: Arc<Mutex<AddressBook>>,
    writer: LeaseWriter,
    stats: Arc<ServerStats>,
}

/// Serves DHCP on `socket` until the task is aborted.
///
/// A reply that depends on a lease change is sent by its own task once the
/// lease writer has committed, while this loop goes on receiving: requests
/// that arrive during one commit share the next one (group commit), instead
/// of each waiting for a commit of its own.
pub async fn serve(
    net: String,
    socket: UdpSocket,
    book: Arc<Mutex<AddressBook>>,
    cfg: DhcpConfig,
    writer: LeaseWriter,
) {
    // The network's counters outlive this server: a restart goes on counting.
    let stats = crate::metrics::dhcp_stats(&net);
    let server = Arc::new(Server { net, socket: Arc::new(socket), book, writer, stats });
    let mut buf = vec![0u8; 1500];
    let mut state = ServerState::new(now());
    let mut reported = server.stats.snapshot();
    loop {
        let (len, peer) = match server.socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(net = server.net, "dhcp receive failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        ServerStats::bump(&server.stats.received);
        let t = now();
        if t >= state.last_housekeeping + HOUSEKEEPING.as_secs() {
            state.last_housekeeping = t;
            housekeeping(&server, t, &mut reported).await;
        }
        let outcome =
            catch_unwind(AssertUnwindSafe(|| process(&buf[..len], &server.book, &cfg, t, &mut state, &server.stats)));
        let decision = match outcome {
            Ok(Some(d)) => d,
            Ok(None) => continue,
            Err(_) => {
                let n = HANDLER_PANICS.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::error!(net = server.net, %peer, panics = n, "a DHCP packet made the handler panic; packet dropped, server goes on");
                continue;
            }
        };
        answer(&server, decision).await;
    }
}

/// Sends the reply and persists the lease change in the order the decision
/// asks for.
async fn answer(server: &Arc<Server>, d: Decision) {
    if d.persist.is_empty() {
        if let Some((reply, dest)) = d.reply {
            send(server, &reply, dest).await;
        }
        return;
    }
    if !d.wait_for_commit {
        // A port's fixed lease: answer now, write in the background.
        if let Some((reply, dest)) = &d.reply {
            send(server, reply, *dest).await;
        }
    }
    let server = server.clone();
    tokio::spawn(async move {
        match server.writer.commit(d.persist.clone()).await {
            Ok(()) => {
                if let (true, Some((reply, dest))) = (d.wait_for_commit, d.reply) {
                    send(&server, &reply, dest).await;
                }
            }
            Err(e) => {
                // No ACK for a lease that is not durable; the client
                // retries. Memory goes back to what the store holds.
                let n = server.stats.store_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::error!(net = server.net, failures = n, "lease not saved (disk full?): {e}");
                }
                let mut book = server.book.lock().unwrap_or_else(|p| p.into_inner());
                for change in &d.persist {
                    book.revert(change, d.previous.clone());
                }
            }
        }
    });
}

/// Prunes expired leases (memory and store) and logs one line about what
/// was dropped since the last time, if anything was.
async fn housekeeping(server: &Arc<Server>, t: u64, reported: &mut [u64; 5]) {
    let pruned = server.book.lock().unwrap_or_else(|p| p.into_inner()).expire(t);
    if !pruned.is_empty() {
        let changes: Vec<LeaseChange> =
            pruned.iter().map(|l| LeaseChange::Remove { net: l.net.clone(), ip: l.ip }).collect();
        let writer = server.writer.clone();
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
            "dhcp: packets not served in the last minute"
        );
        *reported = now;
    }
}

async fn send(server: &Server, reply: &dhcproto::v4::Message, dest: Destination) {
    let mut out = Vec::with_capacity(400);
    match catch_unwind(AssertUnwindSafe(|| reply.encode(&mut Encoder::new(&mut out)))) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(net = server.net, "cannot encode reply: {e}");
            return;
        }
        Err(_) => {
            HANDLER_PANICS.fetch_add(1, Ordering::Relaxed);
            tracing::error!(net = server.net, "encoding a DHCP reply panicked; reply dropped");
            return;
        }
    }
    let to = match dest {
        Destination::Broadcast => SocketAddrV4::new(Ipv4Addr::BROADCAST, 68),
        Destination::Client(ip) => SocketAddrV4::new(ip, 68),
        Destination::Relay(ip) => SocketAddrV4::new(ip, 67),
    };
    match server.socket.send_to(&out, to).await {
        Ok(_) => {
            let kind = reply.opts().msg_type().map_or(0, |k| crate::metrics::dhcp_type_index(u8::from(k)));
            ServerStats::bump(&server.stats.sent_by_type[kind]);
        }
        Err(e) => tracing::debug!(net = server.net, %to, "dhcp send failed: {e}"),
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
}
