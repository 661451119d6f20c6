//! Datagrams in batches: one `recvmmsg` takes up to [`BATCH`] client
//! messages off the socket, one `sendmmsg` puts a batch of replies on it.
//!
//! Under a boot storm the per-system-call cost (and the runtime wake-up
//! behind each one) is what a server pays per packet on top of its own
//! work; a batch pays it once. The buffers are allocated once per server
//! and reused for every batch, so the hot path allocates nothing here.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::Range;
use std::os::fd::RawFd;

use super::link::{LinkSocket, HEADERS};
use crate::model::Mac;

/// Most datagrams taken or sent in one system call.
pub const BATCH: usize = 64;
/// Bytes kept of one client message: an Ethernet MTU's payload. A longer
/// one is truncated, as `recv_from` into a 1,500-byte buffer did.
pub const SLOT: usize = 1500;

fn sockaddr(to: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all zeroes is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = to.port().to_be();
    sa.sin_addr = libc::in_addr { s_addr: u32::from(*to.ip()).to_be() };
    sa
}

fn from_sockaddr(sa: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)), u16::from_be(sa.sin_port))
}

/// Reusable buffers for `recvmmsg`.
pub struct RecvBatch {
    bufs: Vec<[u8; SLOT]>,
    addrs: Vec<libc::sockaddr_in>,
    lens: Vec<usize>,
    n: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        // SAFETY: as in `sockaddr`: zeroed sockaddr_in is valid.
        let zero: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        RecvBatch { bufs: vec![[0u8; SLOT]; BATCH], addrs: vec![zero; BATCH], lens: vec![0; BATCH], n: 0 }
    }
}

impl RecvBatch {
    /// Takes what is queued on `fd` (at most [`BATCH`]) without waiting:
    /// `WouldBlock` when nothing is. Returns how many were taken.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut iov: [libc::iovec; BATCH] =
            std::array::from_fn(|i| libc::iovec { iov_base: self.bufs[i].as_mut_ptr().cast(), iov_len: SLOT });
        // SAFETY: mmsghdr is plain old data; zeroed is valid (no control data).
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (i, m) in msgs.iter_mut().enumerate() {
            m.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            m.msg_hdr.msg_iov = &mut iov[i];
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every pointer in `msgs` points into buffers that live
        // for the call, with the lengths given.
        let rc = unsafe {
            libc::recvmmsg(fd, msgs.as_mut_ptr(), BATCH as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        if rc < 0 {
            self.n = 0;
            return Err(io::Error::last_os_error());
        }
        self.n = rc as usize;
        for (len, m) in self.lens.iter_mut().zip(&msgs[..self.n]) {
            *len = (m.msg_len as usize).min(SLOT);
        }
        Ok(self.n)
    }

    /// Datagram `i` of the last batch and who sent it.
    pub fn packet(&self, i: usize) -> (&[u8], SocketAddrV4) {
        (&self.bufs[i][..self.lens[i]], from_sockaddr(&self.addrs[i]))
    }

    /// How many datagrams the last [`recv`](Self::recv) took.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the last batch was empty.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

/// Where one reply of a [`SendBatch`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A datagram through the server's UDP socket, to this address.
    Udp(SocketAddrV4),
    /// A frame through the network's [`LinkSocket`], to this MAC, with
    /// this destination address in its IPv4 header (port 68).
    Frame {
        /// The frame's destination.
        mac: Mac,
        /// The packet's destination.
        ip: Ipv4Addr,
    },
}

/// Replies waiting to be sent: their encoded bytes back to back in one
/// buffer, each with its destination.
#[derive(Debug, Default)]
pub struct SendBatch {
    bytes: Vec<u8>,
    items: Vec<(Range<usize>, Via, u8)>,
}

impl SendBatch {
    /// An empty batch with room for `n` replies.
    pub fn with_capacity(n: usize) -> Self {
        SendBatch { bytes: Vec::with_capacity(n * 400), items: Vec::with_capacity(n) }
    }

    /// The buffer the next reply is encoded into (appended to the batch's
    /// bytes); [`push`](Self::push) or [`discard`](Self::discard) follows.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Where the reply being encoded starts.
    pub fn mark(&self) -> usize {
        self.bytes.len()
    }

    /// Takes the bytes from `start` on as one reply to `to`; `tag` is the
    /// caller's (the message type, for counters).
    pub fn push(&mut self, start: usize, to: Via, tag: u8) {
        self.items.push((start..self.bytes.len(), to, tag));
    }

    /// Drops the bytes from `start` on (a reply that is not sent).
    pub fn discard(&mut self, start: usize) {
        self.bytes.truncate(start);
    }

    /// Replies in the batch.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the batch holds no reply.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.items.clear();
    }

    /// Sends every reply, datagrams on `udp` and frames on `link` (without
    /// waiting for room: a reply that does not fit the socket's buffer is
    /// lost, as on the wire, and the client retries), and calls `sent(tag)`
    /// for each that went out. Returns how many could not be sent (frames
    /// without a link socket among them). The batch is emptied.
    pub fn flush(&mut self, udp: RawFd, link: Option<&LinkSocket>, mut sent: impl FnMut(u8)) -> usize {
        let mut failed = 0;
        // Each kind in chunks of its own, through its own socket: the
        // replies are to different clients, their order does not matter.
        let mut picks = [0usize; BATCH];
        for frames in [false, true] {
            let mut next = 0;
            loop {
                let mut n = 0;
                while next < self.items.len() && n < BATCH {
                    if matches!(self.items[next].1, Via::Frame { .. }) == frames {
                        picks[n] = next;
                        n += 1;
                    }
                    next += 1;
                }
                if n == 0 {
                    break;
                }
                let picks = &picks[..n];
                failed += match (frames, link) {
                    (false, _) => self.send_datagrams(udp, picks, &mut sent),
                    (true, Some(link)) => self.send_frames(link, picks, &mut sent),
                    (true, None) => n,
                };
            }
        }
        self.clear();
        failed
    }

    /// Sends replies `picks` (all [`Via::Udp`]) on `fd`.
    fn send_datagrams(&self, fd: RawFd, picks: &[usize], sent: &mut impl FnMut(u8)) -> usize {
        // SAFETY: sockaddr_in is plain old data; zeroed is valid.
        let mut addrs: [libc::sockaddr_in; BATCH] = unsafe { std::mem::zeroed() };
        let mut iov: [libc::iovec; BATCH] =
            std::array::from_fn(|_| libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 });
        for (k, &i) in picks.iter().enumerate() {
            let (r, via, _) = &self.items[i];
            if let Via::Udp(to) = via {
                addrs[k] = sockaddr(*to);
            }
            iov[k] = libc::iovec { iov_base: self.bytes[r.clone()].as_ptr() as *mut libc::c_void, iov_len: r.len() };
        }
        // SAFETY: mmsghdr is plain old data; zeroed is valid.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (k, m) in msgs.iter_mut().enumerate().take(picks.len()) {
            m.msg_hdr.msg_name = (&mut addrs[k] as *mut libc::sockaddr_in).cast();
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            m.msg_hdr.msg_iov = &mut iov[k];
            m.msg_hdr.msg_iovlen = 1;
        }
        send_all(fd, &mut msgs[..picks.len()], |k| sent(self.items[picks[k]].2))
    }

    /// Sends replies `picks` (all [`Via::Frame`]) on `link`, each behind
    /// the IPv4 and UDP headers written here.
    fn send_frames(&self, link: &LinkSocket, picks: &[usize], sent: &mut impl FnMut(u8)) -> usize {
        let mut headers = [[0u8; HEADERS]; BATCH];
        // SAFETY: sockaddr_ll is plain old data; zeroed is valid.
        let mut addrs: [libc::sockaddr_ll; BATCH] = unsafe { std::mem::zeroed() };
        for (k, &i) in picks.iter().enumerate() {
            let (r, via, _) = &self.items[i];
            if let Via::Frame { mac, ip } = via {
                headers[k] = link.headers(*ip, &self.bytes[r.clone()]);
                addrs[k] = link.address(*mac);
            }
        }
        let empty = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
        let mut iov = [[empty; 2]; BATCH];
        for (k, &i) in picks.iter().enumerate() {
            let r = &self.items[i].0;
            iov[k] = [
                libc::iovec { iov_base: headers[k].as_mut_ptr().cast(), iov_len: HEADERS },
                libc::iovec { iov_base: self.bytes[r.clone()].as_ptr() as *mut libc::c_void, iov_len: r.len() },
            ];
        }
        // SAFETY: mmsghdr is plain old data; zeroed is valid.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (k, m) in msgs.iter_mut().enumerate().take(picks.len()) {
            m.msg_hdr.msg_name = (&mut addrs[k] as *mut libc::sockaddr_ll).cast();
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            m.msg_hdr.msg_iov = iov[k].as_mut_ptr();
            m.msg_hdr.msg_iovlen = 2;
        }
        send_all(link.fd(), &mut msgs[..picks.len()], |k| sent(self.items[picks[k]].2))
    }
}

/// `sendmmsg` until every message went out or failed; `sent(k)` for each
/// that went. A message that fails is skipped. Returns how many failed.
fn send_all(fd: RawFd, msgs: &mut [libc::mmsghdr], mut sent: impl FnMut(usize)) -> usize {
    let (mut failed, mut at) = (0, 0);
    while at < msgs.len() {
        let rest = &mut msgs[at..];
        // SAFETY: the caller's messages point at buffers alive and
        // unchanged for the call.
        let rc = unsafe { libc::sendmmsg(fd, rest.as_mut_ptr(), rest.len() as libc::c_uint, libc::MSG_DONTWAIT) };
        if rc <= 0 {
            // The first message failed: skip it, go on.
            failed += 1;
            at += 1;
            continue;
        }
        for k in at..at + rc as usize {
            sent(k);
        }
        at += rc as usize;
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_batch_goes_out_and_comes_back_in_one_call_each() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = match rx.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("{other}"),
        };
        let mut out = SendBatch::with_capacity(4);
        for i in 0..100u8 {
            let start = out.mark();
            out.buffer().extend_from_slice(&[i; 10]);
            out.push(start, Via::Udp(to), i);
        }
        let mut tags = Vec::new();
        assert_eq!(out.flush(tx.as_raw_fd(), None, |t| tags.push(t)), 0);
        assert_eq!(tags, (0..100).collect::<Vec<u8>>());
        assert!(out.is_empty());
        let mut batch = RecvBatch::default();
        let mut seen = Vec::new();
        while seen.len() < 100 {
            let n = batch.recv(rx.as_raw_fd()).unwrap();
            assert!(n <= BATCH);
            for i in 0..n {
                let (p, from) = batch.packet(i);
                assert_eq!(
                    from,
                    match tx.local_addr().unwrap() {
                        std::net::SocketAddr::V4(a) => a,
                        other => panic!("{other}"),
                    }
                );
                seen.push(p[0]);
                assert_eq!(p.len(), 10);
            }
        }
        assert_eq!(seen, (0..100).collect::<Vec<u8>>());
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }
}
