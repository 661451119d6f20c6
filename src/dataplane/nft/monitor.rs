//! [`NftMonitor`]: nf_tables change notifications, the in-process
//! `nft monitor`. A NETLINK_NETFILTER socket joined to the NFNLGRP_NFTABLES
//! multicast group receives one message per table, chain, rule, set or
//! element created or deleted by anyone in the namespace (lanyard
//! included); each becomes a [`KernelEvent::Firewall`] naming the table.
//! `nft flush ruleset` deletes every table, so it reports lanyard's too.

use std::time::Duration;

use super::messages;
use super::socket::NfSocket;
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
    socket: NfSocket,
    buffer: Vec<u8>,
}

/// Adds `event` unless it is already there: a transaction touching a
/// thousand elements is one thing to check, not a thousand.
fn push_once(events: &mut Vec<KernelEvent>, event: KernelEvent) {
    if !events.contains(&event) {
        events.push(event);
    }
}

impl NftMonitor {
    /// Opens the socket with a receive buffer of 8 MiB and joins the
    /// nf_tables group.
    pub fn open() -> Result<NftMonitor, KernelError> {
        NftMonitor::with_receive_buffer(RECEIVE_BUFFER)
    }

    /// Like [`NftMonitor::open`] with a kernel receive buffer of `bytes`:
    /// what may queue up between two reads before events are lost.
    pub fn with_receive_buffer(bytes: libc::c_int) -> Result<NftMonitor, KernelError> {
        let socket = NfSocket::open().map_err(|e| monitor_error("netfilter netlink socket", e))?;
        socket.set_receive_buffer(bytes).map_err(|e| monitor_error("receive buffer", e))?;
        socket.join(NFNLGRP_NFTABLES).map_err(|e| monitor_error("join NFNLGRP_NFTABLES", e))?;
        Ok(NftMonitor { socket, buffer: vec![0; DATAGRAM_MAX] })
    }

    /// Waits up to `timeout` for notifications, then returns every event
    /// already queued, each once, in the order first seen: empty on
    /// timeout, [`KernelEvent::Overflow`] when the kernel dropped some.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Vec<KernelEvent>, KernelError> {
        if !self.socket.wait_readable(timeout).map_err(|e| monitor_error("poll", e))? {
            return Ok(Vec::new());
        }
        let mut events: Vec<KernelEvent> = Vec::new();
        loop {
            let n = match self.socket.recv(&mut self.buffer) {
                Ok(n) => n,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => {
                        push_once(&mut events, KernelEvent::Overflow);
                        continue;
                    }
                    _ => return Err(monitor_error("receive", e)),
                },
            };
            if n > self.buffer.len() {
                push_once(&mut events, KernelEvent::Overflow);
            }
            for e in messages::events(&self.buffer[..n.min(self.buffer.len())]) {
                push_once(&mut events, e);
            }
        }
        Ok(events)
    }
}
