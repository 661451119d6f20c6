//! Watching the kernel: a NETLINK_ROUTE socket subscribed to link, IPv4
//! address and IPv4 route notifications, turned into [`KernelEvent`]s. The
//! events say what changed, not how: the engine re-reads what concerns it.

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::Socket;

use super::messages;
use super::observe::{address_from_message, address_label, get_link, in_main_table, link_from_message, parse_link};
use super::socket::{messages as split, receive, RawMessage, RouteSocket};
use crate::kernel::{KernelError, KernelEvent};

const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV4_ROUTE: u32 = 7;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;

/// Socket receive buffer asked for. The kernel caps it at
/// net.core.rmem_max; a burst larger than the buffer is reported as
/// [`KernelEvent::Overflow`], after which everything is re-read.
const RECEIVE_BUFFER: usize = 8 << 20;
/// Datagrams read in one call after the first, so a burst comes back as
/// one batch without starving the caller.
const BATCH: usize = 256;

/// Link, address and route notifications of the namespace the monitor was
/// opened in.
pub struct LinkMonitor {
    socket: Socket,
    buf: Vec<u8>,
    /// Link names by index, from the link notifications seen (and look-ups),
    /// so an address event can name its link even after the link is gone.
    names: HashMap<u32, String>,
    /// For links first met through an address event; opened when needed.
    lookup: Option<RouteSocket>,
    /// The receive timeout the socket has now.
    timeout: Option<Duration>,
}

fn unavailable(what: &str, e: &io::Error) -> KernelError {
    KernelError::Unavailable(format!("cannot {what} the netlink monitor socket: {e}"))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

impl LinkMonitor {
    /// Opens the socket in the calling thread's network namespace and
    /// subscribes to links, IPv4 addresses and IPv4 routes.
    pub fn open() -> Result<LinkMonitor, KernelError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| unavailable("open", &e))?;
        socket.bind_auto().map_err(|e| unavailable("bind", &e))?;
        for group in [RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE] {
            socket.add_membership(group).map_err(|e| unavailable("subscribe", &e))?;
        }
        // A smaller buffer than asked for only means earlier overflows.
        let _ = socket.set_rx_buf_sz(RECEIVE_BUFFER);
        Ok(LinkMonitor { socket, buf: Vec::new(), names: HashMap::new(), lookup: None, timeout: None })
    }

    /// Blocks until something changes and returns what did.
    pub fn recv(&mut self) -> Result<Vec<KernelEvent>, KernelError> {
        loop {
            let events = self.next_batch(None)?;
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }

    /// As [`LinkMonitor::recv`], but returns an empty list when nothing
    /// changed within `timeout`, so the thread running the monitor can look
    /// at a stop flag between calls.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Vec<KernelEvent>, KernelError> {
        let deadline = Instant::now() + timeout;
        loop {
            // SO_RCVTIMEO of zero means "forever": never ask for less than 1 ms.
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            let events = self.next_batch(Some(left))?;
            if !events.is_empty() || Instant::now() >= deadline {
                return Ok(events);
            }
        }
    }

    fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), KernelError> {
        if self.timeout != timeout {
            socket2::SockRef::from(&self.socket).set_read_timeout(timeout).map_err(|e| unavailable("configure", &e))?;
            self.timeout = timeout;
        }
        Ok(())
    }

    /// One blocking read (up to `timeout`) and whatever else is already
    /// queued, as events. Empty on timeout or when nothing concerned us.
    fn next_batch(&mut self, timeout: Option<Duration>) -> Result<Vec<KernelEvent>, KernelError> {
        self.set_timeout(timeout)?;
        let mut events = Vec::new();
        for n in 0..=BATCH {
            let flags = if n == 0 { 0 } else { libc::MSG_DONTWAIT };
            let mut buf = std::mem::take(&mut self.buf);
            let got = receive(&self.socket, &mut buf, flags);
            match got {
                Ok(()) => self.parse_datagram(&buf, &mut events),
                // The kernel dropped notifications: say so, and go on.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => events.push(KernelEvent::Overflow),
                Err(e) if is_timeout(&e) => {
                    self.buf = buf;
                    break;
                }
                Err(e) => return Err(unavailable("read", &e)),
            }
            self.buf = buf;
        }
        events.dedup();
        Ok(events)
    }

    fn parse_datagram(&mut self, datagram: &[u8], events: &mut Vec<KernelEvent>) {
        for raw in split(datagram) {
            // What cannot be read may have been anything: re-read all.
            let event = match raw {
                Ok(raw) => self.event(&raw).unwrap_or(Some(KernelEvent::Overflow)),
                Err(_) => Some(KernelEvent::Overflow),
            };
            events.extend(event);
        }
    }

    /// The event of one notification; Err when it cannot be parsed.
    fn event(&mut self, raw: &RawMessage<'_>) -> Result<Option<KernelEvent>, ()> {
        Ok(match raw.kind {
            RTM_NEWLINK | RTM_DELLINK => {
                let m = parse_link(raw).map_err(|_| ())?.ok_or(())?;
                let gone = raw.kind == RTM_DELLINK;
                let name = m.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                });
                let name = match name {
                    Some(n) => n,
                    None => self.names.get(&m.header.index).cloned().ok_or(())?,
                };
                if gone {
                    self.names.remove(&m.header.index);
                } else {
                    self.names.insert(m.header.index, name.clone());
                }
                Some(KernelEvent::Link { name, gone })
            }
            RTM_NEWADDR | RTM_DELADDR => {
                let (RouteNetlinkMessage::NewAddress(m) | RouteNetlinkMessage::DelAddress(m)) =
                    raw.parse().map_err(|_| ())?
                else {
                    return Err(());
                };
                let Some((index, addr)) = address_from_message(&m) else { return Ok(None) };
                let link = match self.link_name(index) {
                    Some(name) => name,
                    None => address_label(&m).map(str::to_string).ok_or(())?,
                };
                Some(KernelEvent::Address { link, addr, gone: raw.kind == RTM_DELADDR })
            }
            RTM_NEWROUTE | RTM_DELROUTE => {
                let (RouteNetlinkMessage::NewRoute(m) | RouteNetlinkMessage::DelRoute(m)) =
                    raw.parse().map_err(|_| ())?
                else {
                    return Err(());
                };
                in_main_table(&m).then_some(KernelEvent::Route)
            }
            _ => None,
        })
    }

    /// The name of link `index`: known, or asked of the kernel (None if the
    /// link is already gone; the address's label then names it).
    fn link_name(&mut self, index: u32) -> Option<String> {
        if let Some(name) = self.names.get(&index) {
            return Some(name.clone());
        }
        if self.lookup.is_none() {
            self.lookup = RouteSocket::open().ok();
        }
        let socket = self.lookup.as_mut()?;
        let msg = get_link(socket, messages::get_link_by_index(index)).ok()??;
        let name = link_from_message(&msg)?.0.name;
        self.names.insert(index, name.clone());
        Some(name)
    }
}
