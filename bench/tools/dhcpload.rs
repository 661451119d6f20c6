//! dhcpload: a small DHCPv4 load generator for bench/cmp/10-dhcp.sh.
//!
//! It behaves like `perfdhcp -4 -l IFACE -B -r RATE -p SECONDS -R CLIENTS`
//! (perfdhcp could not offer more than ~13k exchanges/s on the 2-CPU bench
//! machine): for SECONDS it starts RATE new DISCOVER/OFFER/REQUEST/ACK
//! exchanges per second, paced in 1 ms slices and sent with sendmmsg, each
//! from client number (counter mod CLIENTS) with MAC 02:xx:xx:xx:xx:xx and a
//! unique xid, broadcast flag set. An OFFER for an outstanding xid is answered
//! at once with a REQUEST (50 = offered address, 54 = the OFFER's server id);
//! an ACK completes the exchange; NAKs are counted; anything else is ignored.
//! After SECONDS it waits up to WAIT (default 2) s for outstanding replies and
//! prints one line on stdout in the format of bench/tools/perfdhcp-parse.awk,
//! with one field more at the end:
//!
//!   sent_do recv_do sent_ra recv_ra p50_ms p99_ms p99_do_ms p99_ra_ms max_ms n_samples p99_read_ms
//!
//! Delays are reply time minus request time, DISCOVER->OFFER and
//! REQUEST->ACK pooled for p50/p99/max. The request time is taken once per
//! sendmmsg batch; the reply time is when the reply reached the generator's
//! namespace (the kernel's `SO_TIMESTAMPNS`), not when the generator read
//! it: on a machine where the generator and the server share the CPUs, the
//! generator's own wait for a CPU is not the server's delay. The last field
//! is the p99 as the generator read the replies, so that wait shows. Both
//! clocks are CLOCK_REALTIME, the clock of the kernel's stamps. Its own CPU (utime+stime) goes to stderr as
//! `dhcpload: cpu_ms=N`, and its share of a core over the sending seconds
//! as `dhcpload: sending_cpu_pct=N`. All per-exchange state is allocated before the run
//! (indexed by exchange number, xid = base + index): nothing is allocated per
//! packet.
//!
//! Run it inside the client's namespace (`ip netns exec NS dhcpload ...`); it
//! binds 0.0.0.0:68 with SO_BINDTODEVICE to receive, as root. It sends as
//! DHCP clients and perfdhcp do: frames from 0.0.0.0 to ff:ff:ff:ff:ff:ff
//! through a packet socket on IFACE (IPv4 and UDP headers of its own), not
//! through the IP stack, which copies every broadcast back into the
//! sender's own stack (`ip_mc_output`) and so costs the generator about a
//! third more per DISCOVER.

use std::ffi::CString;
use std::io;
use std::mem;
use std::process::ExitCode;

const USAGE: &str = "usage: dhcpload [-4] [-B] -l IFACE -r RATE -p SECONDS [-R CLIENTS] [-W WAIT_SECONDS] [-d DROP_MS]";

const PKT_LEN: usize = 300;
/// IPv4 (20) and UDP (8) headers in front of each message.
const HDR: usize = 28;
/// A whole packet: headers and message.
const FRAME_LEN: usize = HDR + PKT_LEN;
const BATCH: usize = 64;
const RECV_BUF: usize = 2048;
/// A message's control buffer, in u64s: one cmsghdr and a timespec.
const CTRL_WORDS: usize = 8;
const SLICE_NS: u64 = 1_000_000;
const MAGIC: [u8; 4] = [99, 130, 83, 99];

// Exchange states.
const S_NEW: u8 = 0;
const S_DISCOVER: u8 = 1;
const S_REQUEST: u8 = 2;
const S_DONE: u8 = 3;
const S_NAK: u8 = 4;

struct Args {
    iface: String,
    rate: u64,
    seconds: u64,
    clients: u64,
    wait: u64,
    /// A reply later than this after its request is lost (perfdhcp's
    /// `-d`, 1 s by default): a server that stalls loses those exchanges
    /// here as under perfdhcp.
    drop_ms: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut iface, mut rate, mut seconds, mut clients, mut wait) = (None, None, None, None, 2u64);
    let mut drop_ms = 1000u64;
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        let num = |name: &str, v: String| v.parse::<u64>().map_err(|_| format!("{name}: not a number: {v}"));
        match a.as_str() {
            "-4" | "-B" => {}
            "-l" => iface = Some(val("-l")?),
            "-r" => rate = Some(num("-r", val("-r")?)?),
            "-p" => seconds = Some(num("-p", val("-p")?)?),
            "-R" => clients = Some(num("-R", val("-R")?)?),
            "-W" => wait = num("-W", val("-W")?)?,
            "-d" => drop_ms = num("-d", val("-d")?)?,
            "-h" | "--help" => return Err(String::new()),
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    let iface = iface.ok_or("-l IFACE is required")?;
    if iface.is_empty() || iface.len() >= libc::IFNAMSIZ {
        return Err(format!("-l: bad interface name {iface:?}"));
    }
    let rate = rate.ok_or("-r RATE is required")?;
    let seconds = seconds.ok_or("-p SECONDS is required")?;
    if rate == 0 || seconds == 0 {
        return Err("-r and -p must be > 0".into());
    }
    let total = rate.checked_mul(seconds).filter(|&t| t <= 50_000_000);
    if total.is_none() {
        return Err("-r RATE x -p SECONDS must be <= 50,000,000".into());
    }
    let clients = clients.unwrap_or(u64::MAX);
    if clients == 0 || wait > 600 {
        return Err("-R must be > 0 and -W <= 600".into());
    }
    if drop_ms == 0 {
        return Err("-d must be > 0".into());
    }
    Ok(Args { iface, rate, seconds, clients, wait, drop_ms })
}

fn timespec_ns(ts: libc::timespec) -> u64 {
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    // SAFETY: zeroed is a valid timespec; clock_gettime writes it.
    let mut ts: libc::timespec = unsafe { mem::zeroed() };
    // SAFETY: `ts` is a live timespec; both clocks used here always exist.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    timespec_ns(ts)
}

/// The clock of the pacing: CLOCK_MONOTONIC.
fn now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// The clock of request and reply times: CLOCK_REALTIME, because the
/// kernel's receive timestamps (`SO_TIMESTAMPNS`) are on it. A step of the
/// wall clock during a run would show as one odd delay; NTP's slewing is
/// far below the microseconds measured here.
fn stamp_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// The kernel's receive time of a message read by `recvmmsg`: the
/// `SCM_TIMESTAMPNS` control message, if there is one.
fn arrival_ns(m: &libc::msghdr) -> Option<u64> {
    // SAFETY: the CMSG macros walk the control buffer that `m` points to
    // within the length the kernel set; each header they return lies in it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(m);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                return Some(timespec_ns(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast())));
            }
            c = libc::CMSG_NXTHDR(m, c);
        }
    }
    None
}

fn setopt<T>(fd: libc::c_int, level: libc::c_int, name: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: v points to a live T of the length passed.
    let r =
        unsafe { libc::setsockopt(fd, level, name, (v as *const T).cast(), mem::size_of::<T>() as libc::socklen_t) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn open_socket(iface: &str) -> io::Result<libc::c_int> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let one: libc::c_int = 1;
    setopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &one)?;
    setopt(fd, libc::SOL_SOCKET, libc::SO_BROADCAST, &one)?;
    // Replies are timed when they reach this namespace, not when this
    // process gets round to reading them: on a machine whose CPUs the
    // generator shares with the server, its own lateness is no server's.
    setopt(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &one)?;
    let big: libc::c_int = 8 << 20;
    if setopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &big).is_err() {
        setopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &big)?;
    }
    if setopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &big).is_err() {
        let _ = setopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, &big);
    }
    let name = CString::new(iface).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"))?;
    let bytes = name.as_bytes_with_nul();
    // SAFETY: bytes is a NUL-terminated buffer of the length passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            bytes.as_ptr().cast(),
            bytes.len() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let addr = sockaddr(0, 68);
    // SAFETY: addr is a valid sockaddr_in of the length passed.
    let r = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The packet socket the generator sends on, and the broadcast address of
/// `iface` for it.
fn open_sender(iface: &str) -> io::Result<(libc::c_int, libc::sockaddr_ll)> {
    let name = CString::new(iface).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"))?;
    // SAFETY: a NUL-terminated name that lives for the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    // Protocol 0: the socket receives nothing.
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let big: libc::c_int = 8 << 20;
    if setopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &big).is_err() {
        let _ = setopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, &big);
    }
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut to: libc::sockaddr_ll = unsafe { mem::zeroed() };
    to.sll_family = libc::AF_PACKET as libc::c_ushort;
    to.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    to.sll_ifindex = ifindex as libc::c_int;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    Ok((fd, to))
}

/// One's-complement sum of `b` as big-endian 16-bit words, added to `acc`.
fn csum(b: &[u8], mut acc: u32) -> u32 {
    let mut w = b.chunks_exact(2);
    for x in &mut w {
        acc += u32::from(u16::from_be_bytes([x[0], x[1]]));
    }
    if let [last] = w.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Writes the UDP checksum of a packet built by [`template`] (whose
/// message was patched since).
fn udp_checksum(p: &mut [u8; FRAME_LEN]) {
    p[26] = 0;
    p[27] = 0;
    let pseudo = csum(&p[12..20], 0) + 17 + (FRAME_LEN - 20) as u32;
    let sum = match !fold(csum(&p[20..], pseudo)) {
        0 => 0xffff,
        x => x,
    };
    p[26..28].copy_from_slice(&sum.to_be_bytes());
}

fn sockaddr(ip: u32, port: u16) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
    let mut a: libc::sockaddr_in = unsafe { mem::zeroed() };
    a.sin_family = libc::AF_INET as libc::sa_family_t;
    a.sin_port = port.to_be();
    a.sin_addr.s_addr = ip.to_be();
    a
}

/// The fixed part of a client packet: IPv4 header (0.0.0.0 ->
/// 255.255.255.255, its checksum), UDP header (68 -> 67) and message;
/// xid, chaddr and (for REQUEST) options 50/54 are patched per packet,
/// then the UDP checksum ([`udp_checksum`]).
fn template(kind: u8) -> [u8; FRAME_LEN] {
    let mut p = [0u8; FRAME_LEN];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(FRAME_LEN as u16).to_be_bytes());
    p[8] = 64; // TTL
    p[9] = 17; // UDP
    p[16..20].copy_from_slice(&[255; 4]);
    let ip_sum = !fold(csum(&p[..20], 0));
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p[20..22].copy_from_slice(&68u16.to_be_bytes());
    p[22..24].copy_from_slice(&67u16.to_be_bytes());
    p[24..26].copy_from_slice(&((FRAME_LEN - 20) as u16).to_be_bytes());
    let m = &mut p[HDR..];
    m[0] = 1; // BOOTREQUEST
    m[1] = 1; // Ethernet
    m[2] = 6;
    m[10] = 0x80; // broadcast flag
    m[236..240].copy_from_slice(&MAGIC);
    let mut o = vec![53, 1, kind];
    if kind == 3 {
        o.extend_from_slice(&[50, 4, 0, 0, 0, 0, 54, 4, 0, 0, 0, 0]);
    }
    o.extend_from_slice(&[55, 6, 1, 3, 6, 15, 51, 54, 255]);
    m[240..240 + o.len()].copy_from_slice(&o);
    p
}
// Offsets (in the packet) of the REQUEST's option 50 and 54 values.
const REQ_OPT50: usize = HDR + 240 + 3 + 2;
const REQ_OPT54: usize = HDR + 240 + 3 + 6 + 2;

fn fill(p: &mut [u8; FRAME_LEN], xid: u32, client: u64) {
    p[HDR + 4..HDR + 8].copy_from_slice(&xid.to_be_bytes());
    let c = client.to_be_bytes();
    p[HDR + 28] = 0x02;
    p[HDR + 29..HDR + 34].copy_from_slice(&c[3..8]);
}

/// A batch of outgoing packets with their mmsghdrs, built once.
struct SendBatch {
    bufs: Vec<[u8; FRAME_LEN]>,
    iov: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    idx: [u32; BATCH], // exchange index of each queued packet
    n: usize,
}

impl SendBatch {
    fn new(kind: u8, dest: *const libc::sockaddr_ll) -> Box<SendBatch> {
        let t = template(kind);
        let mut b = Box::new(SendBatch {
            bufs: vec![t; BATCH],
            iov: Vec::with_capacity(BATCH),
            msgs: Vec::with_capacity(BATCH),
            idx: [0; BATCH],
            n: 0,
        });
        for i in 0..BATCH {
            let base = b.bufs[i].as_mut_ptr();
            b.iov.push(libc::iovec { iov_base: base.cast(), iov_len: FRAME_LEN });
        }
        for i in 0..BATCH {
            // SAFETY: mmsghdr is plain data; all-zero is valid.
            let mut m: libc::mmsghdr = unsafe { mem::zeroed() };
            m.msg_hdr.msg_name = dest as *mut libc::c_void;
            m.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            m.msg_hdr.msg_iov = &mut b.iov[i];
            m.msg_hdr.msg_iovlen = 1;
            b.msgs.push(m);
        }
        b
    }
}

struct Gen {
    /// The packet socket everything is sent on.
    tx: libc::c_int,
    base: u32,
    total: usize,
    clients: u64,
    state: Vec<u8>,
    t_do: Vec<u64>, // DISCOVER sent
    t_ra: Vec<u64>, // REQUEST sent
    d_do: Vec<u64>, // DISCOVER->OFFER delays, ns
    d_ra: Vec<u64>, // REQUEST->ACK delays, ns
    /// Both kinds of delay as this process read the replies (later than
    /// they arrived when it is busy or waits for a CPU).
    d_read: Vec<u64>,
    sent_do: u64,
    recv_do: u64,
    sent_ra: u64,
    recv_ra: u64,
    naks: u64,
    /// Replies that came after the drop time: ignored, the exchange lost.
    late: u64,
    drop_ns: u64,
    send_errs: u64,
    last_err: Option<io::Error>,
}

impl Gen {
    /// Sends the queued packets of `b`; stamps and counts those that left.
    fn flush(&mut self, b: &mut SendBatch, request: bool) {
        let mut off = 0;
        while off < b.n {
            let t = stamp_ns();
            // SAFETY: msgs[off..n] are initialised mmsghdrs whose pointers
            // (buffers, iovecs, destination) live as long as `b`.
            let r = unsafe { libc::sendmmsg(self.tx, b.msgs.as_mut_ptr().add(off), (b.n - off) as libc::c_uint, 0) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.send_errs += (b.n - off) as u64;
                self.last_err = Some(e);
                break;
            }
            let r = r as usize;
            for &i in &b.idx[off..off + r] {
                let i = i as usize;
                if request {
                    self.t_ra[i] = t;
                    self.state[i] = S_REQUEST;
                    self.sent_ra += 1;
                } else {
                    self.t_do[i] = t;
                    self.state[i] = S_DISCOVER;
                    self.sent_do += 1;
                }
            }
            if r == 0 {
                break;
            }
            off += r;
        }
        b.n = 0;
    }

    /// Queues (and, when the batch is full, sends) DISCOVERs next..upto.
    fn discover(&mut self, b: &mut SendBatch, next: &mut usize, upto: usize) {
        while *next < upto {
            let i = *next;
            let k = b.n;
            fill(&mut b.bufs[k], self.base.wrapping_add(i as u32), i as u64 % self.clients + 1);
            udp_checksum(&mut b.bufs[k]);
            b.idx[k] = i as u32;
            b.n += 1;
            *next += 1;
            if b.n == BATCH {
                self.flush(b, false);
            }
        }
        self.flush(b, false);
    }

    /// One received packet, arrived at `t` and read at `read`; an OFFER
    /// queues a REQUEST in `rq`.
    fn reply(&mut self, p: &[u8], t: u64, read: u64, rq: &mut SendBatch) {
        if p.len() < 240 || p[0] != 2 || p[236..240] != MAGIC {
            return;
        }
        let xid = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        let i = xid.wrapping_sub(self.base) as usize;
        if i >= self.total {
            return;
        }
        let (mut kind, mut server) = (0u8, None);
        let mut o = 240;
        while o < p.len() {
            let code = p[o];
            if code == 255 {
                break;
            }
            if code == 0 {
                o += 1;
                continue;
            }
            if o + 1 >= p.len() {
                break;
            }
            let len = p[o + 1] as usize;
            let v = o + 2;
            if v + len > p.len() {
                break;
            }
            match (code, len) {
                (53, 1) => kind = p[v],
                (54, 4) => server = Some([p[v], p[v + 1], p[v + 2], p[v + 3]]),
                _ => {}
            }
            o = v + len;
        }
        match (kind, self.state[i]) {
            (2, S_DISCOVER) if t.saturating_sub(self.t_do[i]) > self.drop_ns => {
                self.late += 1;
                self.state[i] = S_NAK; // lost: nothing more counts
            }
            (5 | 6, S_REQUEST) if self.t_ra[i] != 0 && t.saturating_sub(self.t_ra[i]) > self.drop_ns => {
                self.late += 1;
                self.state[i] = S_NAK;
            }
            (2, S_DISCOVER) => {
                // OFFER: answer with a REQUEST for the offered address.
                let Some(server) = server else { return };
                self.recv_do += 1;
                self.d_do.push(t.saturating_sub(self.t_do[i]));
                self.d_read.push(read.saturating_sub(self.t_do[i]));
                self.state[i] = S_REQUEST; // until the REQUEST is sent: no second OFFER counts
                let k = rq.n;
                let b = &mut rq.bufs[k];
                fill(b, xid, i as u64 % self.clients + 1);
                b[REQ_OPT50..REQ_OPT50 + 4].copy_from_slice(&p[16..20]);
                b[REQ_OPT54..REQ_OPT54 + 4].copy_from_slice(&server);
                udp_checksum(b);
                rq.idx[k] = i as u32;
                rq.n += 1;
                if rq.n == BATCH {
                    self.flush(rq, true);
                }
            }
            (5, S_REQUEST) if self.t_ra[i] != 0 => {
                self.recv_ra += 1;
                self.d_ra.push(t.saturating_sub(self.t_ra[i]));
                self.d_read.push(read.saturating_sub(self.t_ra[i]));
                self.state[i] = S_DONE;
            }
            (6, S_REQUEST) if self.t_ra[i] != 0 => {
                self.naks += 1;
                self.state[i] = S_NAK;
            }
            _ => {}
        }
    }
}

fn pct(v: &[u64], p: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let i = ((p * v.len() as f64) + 0.999999) as usize;
    Some(v[i.clamp(1, v.len()) - 1])
}

fn ms(v: Option<u64>) -> String {
    v.map(|ns| format!("{:.3}", ns as f64 / 1e6)).unwrap_or_default()
}

/// (user, system) CPU of this process, ms.
fn cpu_ms() -> (u64, u64) {
    // SAFETY: getrusage fills the local struct.
    let ru = unsafe {
        let mut ru: libc::rusage = mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (us(ru.ru_utime) / 1000, us(ru.ru_stime) / 1000)
}

fn run(a: &Args) -> io::Result<()> {
    let fd = open_socket(&a.iface)?;
    let (tx, to) = open_sender(&a.iface)?;
    let total = (a.rate * a.seconds) as usize;
    let base = (now_ns() as u32) ^ (std::process::id() << 16);
    let mut g = Gen {
        tx,
        base,
        total,
        clients: a.clients,
        state: vec![S_NEW; total],
        t_do: vec![0; total],
        t_ra: vec![0; total],
        d_do: Vec::with_capacity(total),
        d_ra: Vec::with_capacity(total),
        d_read: Vec::with_capacity(2 * total),
        sent_do: 0,
        recv_do: 0,
        sent_ra: 0,
        recv_ra: 0,
        naks: 0,
        late: 0,
        drop_ns: a.drop_ms * 1_000_000,
        send_errs: 0,
        last_err: None,
    };
    let dest = Box::new(to);
    let mut disc = SendBatch::new(1, &*dest);
    let mut req = SendBatch::new(3, &*dest);

    let mut rbufs = vec![[0u8; RECV_BUF]; BATCH];
    // Room for one SCM_TIMESTAMPNS per message (u64s: cmsghdr's alignment).
    let mut ctrl = vec![[0u64; CTRL_WORDS]; BATCH];
    let mut riov: Vec<libc::iovec> =
        rbufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: RECV_BUF }).collect();
    let mut rmsgs: Vec<libc::mmsghdr> = riov
        .iter_mut()
        .map(|v| {
            // SAFETY: mmsghdr is plain data; all-zero is valid.
            let mut m: libc::mmsghdr = unsafe { mem::zeroed() };
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();

    let start = now_ns();
    let send_end = start + a.seconds * 1_000_000_000;
    let end = send_end + a.wait * 1_000_000_000;
    let mut next = 0usize;
    let mut next_slice = start;
    // This process's CPU over the sending seconds: the WAIT after them is
    // nearly idle, so a share of the whole run would hide a generator that
    // was saturated while it sent.
    let mut sending_cpu_ms: Option<u64> = None;
    loop {
        let now = now_ns();
        if sending_cpu_ms.is_none() && now >= send_end {
            let (user, sys) = cpu_ms();
            sending_cpu_ms = Some(user + sys);
        }
        if now >= next_slice && next < total {
            let due = (((now - start) as u128 * a.rate as u128 / 1_000_000_000) as usize + 1).min(total);
            g.discover(&mut disc, &mut next, due);
            next_slice = now - (now - start) % SLICE_NS + SLICE_NS;
        }
        let now = now_ns();
        if now >= end || (next >= total && now >= send_end && outstanding(&g) == 0) {
            break;
        }
        let wake = if next < total { next_slice } else { end.min(now + 10 * SLICE_NS) };
        let wait = wake.saturating_sub(now);
        let ts = libc::timespec {
            tv_sec: (wait / 1_000_000_000) as libc::time_t,
            tv_nsec: (wait % 1_000_000_000) as libc::c_long,
        };
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd, a valid timespec, no signal mask.
        let r = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            continue;
        }
        // Read what is there (bounded, so the sends keep their pace).
        for _ in 0..32 {
            for (m, c) in rmsgs.iter_mut().zip(ctrl.iter_mut()) {
                m.msg_len = 0;
                m.msg_hdr.msg_flags = 0;
                m.msg_hdr.msg_control = c.as_mut_ptr().cast();
                m.msg_hdr.msg_controllen = mem::size_of_val(c) as _;
            }
            // SAFETY: rmsgs are initialised mmsghdrs pointing at rbufs through riov, all alive.
            let n = unsafe {
                libc::recvmmsg(fd, rmsgs.as_mut_ptr(), BATCH as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut())
            };
            if n <= 0 {
                break;
            }
            let read = stamp_ns();
            for k in 0..n as usize {
                let len = (rmsgs[k].msg_len as usize).min(RECV_BUF);
                let t = arrival_ns(&rmsgs[k].msg_hdr).unwrap_or(read);
                g.reply(&rbufs[k][..len], t, read, &mut req);
            }
            g.flush(&mut req, true);
            if (n as usize) < BATCH {
                break;
            }
        }
    }
    // SAFETY: both are ours.
    unsafe {
        libc::close(fd);
        libc::close(tx);
    }

    let (mut d_do, mut d_ra, mut d_read) = (mem::take(&mut g.d_do), mem::take(&mut g.d_ra), mem::take(&mut g.d_read));
    d_read.sort_unstable();
    let mut all = Vec::with_capacity(d_do.len() + d_ra.len());
    all.extend_from_slice(&d_do);
    all.extend_from_slice(&d_ra);
    d_do.sort_unstable();
    d_ra.sort_unstable();
    all.sort_unstable();
    println!(
        "{} {} {} {} {} {} {} {} {} {} {}",
        g.sent_do,
        g.recv_do,
        g.sent_ra,
        g.recv_ra,
        ms(pct(&all, 0.50)),
        ms(pct(&all, 0.99)),
        ms(pct(&d_do, 0.99)),
        ms(pct(&d_ra, 0.99)),
        ms(all.last().copied()),
        all.len(),
        ms(pct(&d_read, 0.99)),
    );
    let secs = (now_ns() - start) as f64 / 1e9;
    eprintln!(
        "dhcpload: -r {} -p {}: {} DISCOVERs sent ({} asked), {} OFFERs, {} REQUESTs, {} ACKs ({:.0}/s over {} s), {} NAKs, {} replies after {} ms (lost), {} send errors{}; ran {:.2} s",
        a.rate,
        a.seconds,
        g.sent_do,
        total,
        g.recv_do,
        g.sent_ra,
        g.recv_ra,
        g.recv_ra as f64 / a.seconds as f64,
        a.seconds,
        g.naks,
        g.late,
        a.drop_ms,
        g.send_errs,
        g.last_err.as_ref().map(|e| format!(" (last: {e})")).unwrap_or_default(),
        secs
    );
    let (user, sys) = cpu_ms();
    eprintln!("dhcpload: cpu_ms={} (user {user}, system {sys})", user + sys);
    let sending_cpu_ms = sending_cpu_ms.unwrap_or(user + sys);
    eprintln!("dhcpload: sending_cpu_pct={}", sending_cpu_ms * 100 / (a.seconds * 1000).max(1));
    Ok(())
}

/// Exchanges started and neither completed nor refused.
fn outstanding(g: &Gen) -> u64 {
    g.sent_do.saturating_sub(g.recv_ra + g.naks + g.late)
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("dhcpload: {e}; {USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dhcpload: {e}");
            ExitCode::from(1)
        }
    }
}
