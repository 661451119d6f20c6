//! The netlink driver for links: lanyard's own NETLINK_ROUTE socket, one
//! typed, acknowledged rtnetlink request per step of an [`Op`], with the
//! kernel's errno and extended-ack message when it refuses; TAPs through
//! [`crate::dataplane::tun`]; and a monitor of link, address and route
//! changes. It works in the network namespace of the thread that creates
//! it, like `ip` does in the namespace it runs in.
//!
//! - [`socket`]: the socket, requests, acks, dumps, errors;
//! - [`messages`]: the request of every step, as typed values (pure);
//! - [`observe`]: reading links, addresses and routes into [`Observed`];
//! - [`ops`]: performing each [`Op`] all or nothing;
//! - [`netns`]: named namespaces, and a socket inside one;
//! - [`sysctl`]: the forwarding setting, net.ipv4.ip_forward;
//! - [`monitor`]: [`LinkMonitor`], change notifications as
//!   [`crate::kernel::KernelEvent`]s.
//!
//! [`Observed`]: crate::kernel::Observed
//! [`Op`]: crate::kernel::Op

pub mod messages;
pub mod monitor;
pub mod netns;
pub mod observe;
pub mod ops;
pub mod socket;
pub mod sysctl;

use std::sync::{Mutex, MutexGuard};

pub use monitor::LinkMonitor;

use crate::kernel::KernelError;
use socket::RouteSocket;

/// Links, addresses, routes, bridge VLANs, FDB entries and forwarding of
/// the network namespace it was created in, by netlink.
///
/// One socket serves every call, one request at a time (the lock), so the
/// driver can be shared between threads; the requests of a call are never
/// interleaved with another call's.
pub struct NetlinkDriver {
    socket: Mutex<RouteSocket>,
}

impl std::fmt::Debug for NetlinkDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetlinkDriver").finish_non_exhaustive()
    }
}

impl NetlinkDriver {
    /// Opens the driver's socket in the calling thread's network namespace.
    pub fn new() -> Result<NetlinkDriver, KernelError> {
        let socket = RouteSocket::open()
            .map_err(|e| KernelError::Unavailable(format!("cannot open a NETLINK_ROUTE socket: {e}")))?;
        Ok(NetlinkDriver { socket: Mutex::new(socket) })
    }

    /// The socket, for one call. A call that panicked half-way left at
    /// worst unread answers behind, which the next request skips by their
    /// sequence numbers, so a poisoned lock is taken over.
    fn socket(&self) -> MutexGuard<'_, RouteSocket> {
        self.socket.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_driver_is_shared_between_threads_and_the_monitor_moves_to_one() {
        fn shared<T: Send + Sync>() {}
        fn movable<T: Send>() {}
        shared::<NetlinkDriver>();
        movable::<LinkMonitor>();
    }
}
