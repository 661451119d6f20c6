//! [`NftMonitor`]: nf_tables change notifications, the in-process
//! `nft monitor`. A NETLINK_NETFILTER socket joined to the NFNLGRP_NFTABLES
//! multicast group receives one message per table, chain, rule, set or
//! element created or deleted by anyone in the namespace (lanyard
//! included); each becomes a [`KernelEvent::Firewall`] naming the table.
//! `nft flush ruleset` deletes every table, so it reports lanyard's too.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::messages;
use crate::kernel::{KernelError, KernelEvent};

/// `NFNLGRP_NFTABLES` (linux/netfilter/nfnetlink.h).
const NFNLGRP_NFTABLES: libc::c_int = 7;

/// Kernel-side receive buffer asked for: room for the notifications of a
/// large transaction (every element of a 10,000-element set deleted)
/// between two reads. Past it the kernel drops messages and reports
/// ENOBUFS, which becomes [`KernelEvent::Overflow`].
const RECEIVE_BUFFER: libc::c_int = 8 << 20;

/// One read: a datagram holds at most a few pages of messages; a larger
/// one is reported as an overflow (its tail would be lost).
const DATAGRAM_MAX: usize = 256 << 10;

fn monitor_error(what: &str, e: std::io::Error) -> KernelError {
    KernelError::Observe { what: "nftables monitor", message: format!("{what}: {e}") }
}

/// A subscription to nf_tables notifications in the calling thread's
/// network namespace.
#[derive(Debug)]
pub struct NftMonitor {
    socket: OwnedFd,
    buffer: Vec<u8>,
}

/// Adds `event` unless it is already there: a transaction touching a
/// thousand elements is one thing to check, not a thousand.
fn push_once(events: &mut Vec<KernelEvent>, event: KernelEvent) {
    if !events.contains(&event) {
        events.push(event);
    }
}

/// Sets an integer socket option.
fn set_int_option(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> std::io::Result<()> {
    // SAFETY: `fd` is an open socket; the option value is a c_int that
    // lives across the call, and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl NftMonitor {
    /// Opens the socket and joins the nf_tables group.
    pub fn open() -> Result<NftMonitor, KernelError> {
        // SAFETY: plain socket(2) call with constant arguments.
        let fd =
            unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_NETFILTER) };
        if fd < 0 {
            return Err(monitor_error("netfilter netlink socket", std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // SO_RCVBUFFORCE passes the rmem_max limit (root); SO_RCVBUF is the
        // best an unprivileged caller gets.
        set_int_option(&socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RECEIVE_BUFFER)
            .or_else(|_| set_int_option(&socket, libc::SOL_SOCKET, libc::SO_RCVBUF, RECEIVE_BUFFER))
            .map_err(|e| monitor_error("receive buffer", e))?;
        // SAFETY: sockaddr_nl is plain data; all zeros is a valid value.
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `address` is a sockaddr_nl that outlives the call, and its
        // size is passed with it.
        let rc = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                std::ptr::from_ref(&address).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(monitor_error("bind", std::io::Error::last_os_error()));
        }
        set_int_option(&socket, libc::SOL_NETLINK, libc::NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
            .map_err(|e| monitor_error("join NFNLGRP_NFTABLES", e))?;
        Ok(NftMonitor { socket, buffer: vec![0; DATAGRAM_MAX] })
    }

    /// Waits up to `timeout` for notifications, then returns every event
    /// already queued, each once, in the order first seen: empty on
    /// timeout, [`KernelEvent::Overflow`] when the kernel dropped some.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Vec<KernelEvent>, KernelError> {
        if !self.wait_readable(timeout)? {
            return Ok(Vec::new());
        }
        let mut events: Vec<KernelEvent> = Vec::new();
        loop {
            // SAFETY: `buffer` is writable for its whole length, which is
            // passed; MSG_TRUNC makes recv return the datagram's real size.
            let n = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    self.buffer.as_mut_ptr().cast(),
                    self.buffer.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => push_once(&mut events, KernelEvent::Overflow),
                    _ => return Err(monitor_error("receive", e)),
                }
                continue;
            }
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if n > self.buffer.len() {
                push_once(&mut events, KernelEvent::Overflow);
            }
            for e in messages::events(&self.buffer[..n.min(self.buffer.len())]) {
                push_once(&mut events, e);
            }
        }
        Ok(events)
    }

    /// Whether the socket became readable within `timeout`.
    fn wait_readable(&self, timeout: Duration) -> Result<bool, KernelError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // Round up so that a sub-millisecond timeout still waits.
            let ms = libc::c_int::try_from(left.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
            let mut pollfd = libc::pollfd { fd: self.socket.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd, count 1.
            let rc = unsafe { libc::poll(&mut pollfd, 1, ms) };
            if rc > 0 {
                return Ok(true);
            }
            if rc == 0 {
                return Ok(false);
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(monitor_error("poll", e));
            }
        }
    }
}
