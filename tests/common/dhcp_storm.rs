//! [`Storm`]: many DHCP clients at once from one namespace, as after a
//! power cut, recording exactly which addresses the server ACKed; and a
//! [`Bystander`], a guest that only listens on port 68 and counts the
//! server replies it overhears.
//!
//! Real clients (udhcpc, dhclient) run one per namespace and report only
//! their own lease; a boot storm needs thousands of MACs, and a test that
//! kills the server mid-storm must know every ACK that reached a client.
//! So this is a small client of its own: one UDP socket on port 68 in the
//! client namespace (its thread enters the namespace with setns, nothing
//! else does), DISCOVER and REQUEST with the broadcast flag set, a bounded
//! window of clients in flight, and retransmission after a timeout.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::netns::Netns;

/// A client's hardware address.
pub type MacAddr = [u8; 6];

/// What the storm's clients were told.
#[derive(Debug, Default, Clone)]
pub struct StormResult {
    /// The address each client was last ACKed.
    pub acked: BTreeMap<MacAddr, Ipv4Addr>,
    /// The address each client was last offered.
    pub offered: BTreeMap<MacAddr, Ipv4Addr>,
    /// DHCP messages sent (first tries and retransmissions).
    pub sent: usize,
}

/// A storm running in its own thread.
pub struct Storm {
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicUsize>,
    thread: Option<JoinHandle<Result<StormResult, String>>>,
}

/// `n` distinct locally administered MACs (02:53:...), numbered from `first`.
pub fn storm_macs(first: u32, n: u32) -> Vec<MacAddr> {
    (first..first + n)
        .map(|i| {
            let [a, b, c, d] = i.to_be_bytes();
            [0x02, 0x53, a, b, c, d]
        })
        .collect()
}

impl Storm {
    /// Starts every client of `macs` in `ns` on `ifname` (up, with an
    /// address, on the server's segment), at most
    /// `window` exchanges in flight. Each client does DISCOVER, REQUEST
    /// once and is done when ACKed; it stops on its own after `limit`.
    pub fn start(ns: &Netns, ifname: &str, macs: Vec<MacAddr>, window: usize, limit: Duration) -> Storm {
        let ifname = ifname.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicUsize::new(0));
        let path = format!("/var/run/netns/{}", ns.name());
        let (stop2, acks2) = (stop.clone(), acks.clone());
        let thread = std::thread::spawn(move || {
            enter_netns(&path)?;
            run_clients(&ifname, macs, window, limit, &stop2, &acks2)
        });
        Storm { stop, acks, thread: Some(thread) }
    }

    /// ACKs received so far.
    pub fn acks(&self) -> usize {
        self.acks.load(Ordering::Relaxed)
    }

    /// Stops the clients and returns what they were told.
    pub fn finish(mut self) -> StormResult {
        self.stop.store(true, Ordering::Relaxed);
        let t = self.thread.take().expect("storm thread");
        t.join().expect("storm thread panicked").unwrap_or_else(|e| panic!("storm: {e}"))
    }

    /// Waits until every client is done (or the storm's limit passed).
    pub fn wait(mut self) -> StormResult {
        let t = self.thread.take().expect("storm thread");
        t.join().expect("storm thread panicked").unwrap_or_else(|e| panic!("storm: {e}"))
    }
}

impl Drop for Storm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Moves the calling thread (only it) into the namespace at `path`.
fn enter_netns(path: &str) -> Result<(), String> {
    let f = File::open(path).map_err(|e| format!("open {path}: {e}"))?;
    // SAFETY: setns on a valid namespace fd affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

const MAGIC: [u8; 4] = [99, 130, 83, 99];

/// A BOOTREQUEST of `kind` (1 DISCOVER, 3 REQUEST) from `mac`, broadcast flag set.
fn request(kind: u8, mac: &MacAddr, xid: u32, requested: Option<Ipv4Addr>, server: Option<Ipv4Addr>) -> Vec<u8> {
    let mut b = vec![0u8; 236];
    b[0] = 1;
    b[1] = 1;
    b[2] = 6;
    b[4..8].copy_from_slice(&xid.to_be_bytes());
    b[10] = 0x80;
    b[28..34].copy_from_slice(mac);
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&[53, 1, kind]);
    if let Some(ip) = requested {
        b.extend_from_slice(&[50, 4]);
        b.extend_from_slice(&ip.octets());
    }
    if let Some(ip) = server {
        b.extend_from_slice(&[54, 4]);
        b.extend_from_slice(&ip.octets());
    }
    b.push(255);
    b
}

/// A reply's (xid, message type, yiaddr, server id), if it is one.
fn reply(b: &[u8]) -> Option<(u32, u8, Ipv4Addr, Option<Ipv4Addr>)> {
    if b.len() < 240 || b[0] != 2 || b[236..240] != MAGIC {
        return None;
    }
    let xid = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    let yiaddr = Ipv4Addr::new(b[16], b[17], b[18], b[19]);
    let (mut kind, mut server) = (None, None);
    let mut i = 240;
    while i < b.len() && b[i] != 255 {
        if b[i] == 0 {
            i += 1;
            continue;
        }
        let len = *b.get(i + 1)? as usize;
        let v = b.get(i + 2..i + 2 + len)?;
        match (b[i], len) {
            (53, 1) => kind = Some(v[0]),
            (54, 4) => server = Some(Ipv4Addr::new(v[0], v[1], v[2], v[3])),
            _ => {}
        }
        i += 2 + len;
    }
    Some((xid, kind?, yiaddr, server))
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Waiting,
    Discovering,
    Requesting(Ipv4Addr, Option<Ipv4Addr>),
    Done,
}

/// How long a client waits for an answer before it sends again.
const RETRY: Duration = Duration::from_millis(500);

/// A socket on port 68, on `ifname` only, that may broadcast.
fn client_socket(ifname: &str) -> Result<UdpSocket, String> {
    let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)).map_err(|e| format!("bind :68: {e}"))?;
    sock.set_broadcast(true).map_err(|e| e.to_string())?;
    // Limited broadcast has no route of its own: it leaves by the device
    // the socket is bound to.
    let dev = ifname.as_bytes();
    // SAFETY: SO_BINDTODEVICE reads `dev.len()` bytes, which live for the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            dev.as_ptr().cast(),
            dev.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(format!("SO_BINDTODEVICE {ifname}: {}", std::io::Error::last_os_error()));
    }
    sock.set_read_timeout(Some(Duration::from_millis(20))).map_err(|e| e.to_string())?;
    Ok(sock)
}

fn run_clients(
    ifname: &str,
    macs: Vec<MacAddr>,
    window: usize,
    limit: Duration,
    stop: &AtomicBool,
    acks: &AtomicUsize,
) -> Result<StormResult, String> {
    let sock = client_socket(ifname)?;
    let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let mut phase = vec![Phase::Waiting; macs.len()];
    let mut last_sent = vec![Instant::now(); macs.len()];
    let mut out = StormResult::default();
    let (mut next, mut in_flight, mut done) = (0usize, 0usize, 0usize);
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 1500];
    let send = |i: usize, p: Phase, out: &mut StormResult| {
        let xid = i as u32;
        let pkt = match p {
            Phase::Requesting(ip, server) => request(3, &macs[i], xid, Some(ip), server),
            _ => request(1, &macs[i], xid, None, None),
        };
        // A full send buffer is a lost packet: the retry covers it.
        let _ = sock.send_to(&pkt, to);
        out.sent += 1;
    };
    while done < macs.len() && !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        while in_flight < window && next < macs.len() {
            phase[next] = Phase::Discovering;
            last_sent[next] = Instant::now();
            send(next, Phase::Discovering, &mut out);
            next += 1;
            in_flight += 1;
        }
        // Everything that has arrived, then the retries.
        while let Ok(n) = sock.recv(&mut buf) {
            let Some((xid, kind, yiaddr, server)) = reply(&buf[..n]) else { continue };
            let i = xid as usize;
            if i >= macs.len() {
                continue;
            }
            match (kind, phase[i]) {
                (2, Phase::Discovering) => {
                    out.offered.insert(macs[i], yiaddr);
                    phase[i] = Phase::Requesting(yiaddr, server);
                    last_sent[i] = Instant::now();
                    send(i, phase[i], &mut out);
                }
                (5, Phase::Requesting(ip, _)) if ip == yiaddr => {
                    out.acked.insert(macs[i], yiaddr);
                    acks.fetch_add(1, Ordering::Relaxed);
                    phase[i] = Phase::Done;
                    in_flight -= 1;
                    done += 1;
                }
                (6, Phase::Requesting(..)) => {
                    phase[i] = Phase::Discovering;
                    last_sent[i] = Instant::now();
                    send(i, Phase::Discovering, &mut out);
                }
                _ => {}
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        let now = Instant::now();
        for i in 0..next {
            if matches!(phase[i], Phase::Discovering | Phase::Requesting(..)) && now - last_sent[i] > RETRY {
                last_sent[i] = now;
                send(i, phase[i], &mut out);
            }
        }
    }
    Ok(out)
}

/// A guest that asks for nothing and counts the DHCP replies it hears on
/// port 68: with unicast replies it hears none of the other clients'.
pub struct Bystander {
    stop: Arc<AtomicBool>,
    heard: Arc<AtomicUsize>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Bystander {
    /// Starts listening in `ns` on `ifname`; returns once the socket is bound.
    pub fn start(ns: &Netns, ifname: &str) -> Bystander {
        let (stop, heard) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let (stop2, heard2) = (stop.clone(), heard.clone());
        let (path, ifname) = (format!("/var/run/netns/{}", ns.name()), ifname.to_string());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let sock = enter_netns(&path).and_then(|()| client_socket(&ifname));
            let _ = ready_tx.send(sock.as_ref().err().cloned());
            let sock = sock?;
            let mut buf = [0u8; 1500];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    if reply(&buf[..n]).is_some() {
                        heard2.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok(())
        });
        if let Ok(Some(e)) = ready_rx.recv_timeout(Duration::from_secs(10)) {
            panic!("bystander: {e}");
        }
        Bystander { stop, heard, thread: Some(thread) }
    }

    /// Server replies heard so far.
    pub fn heard(&self) -> usize {
        self.heard.load(Ordering::Relaxed)
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
