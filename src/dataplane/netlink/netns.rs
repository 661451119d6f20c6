//! Named network namespaces (`/run/netns/NAME`, as `ip netns add` makes
//! them): opening one, and a netlink socket inside one, for the step of
//! veth creation that has to happen in the peer's namespace.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use super::socket::{NlError, RouteSocket};

/// The namespace `name` (a name under /run/netns, or `/proc/PID/ns/net`),
/// as an open file (what IFLA_NET_NS_FD and setns take).
pub fn open(name: &str) -> Result<File, NlError> {
    // The planner only passes validated names; checked again here because
    // the name becomes a path.
    crate::model::validate_netns(name).map_err(|e| NlError { errno: Some(libc::EINVAL), message: e.to_string() })?;
    let path = crate::model::netns_path(name);
    File::open(&path).map_err(|e| NlError::io(&e).about(&path))
}

/// A NETLINK_ROUTE socket in the namespace `netns`. A socket belongs to
/// the namespace of the thread that creates it, for good; so a thread of
/// its own enters the namespace, opens the socket and ends, and the caller's
/// thread never leaves its namespace.
pub fn socket_in(netns: &File) -> Result<RouteSocket, NlError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns takes an fd, open for the whole call (borrowed
            // from `netns`), and a flag; it moves only the calling thread,
            // this short-lived one, which does nothing else there but open
            // the socket.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(NlError::io(&io::Error::last_os_error()).about("enter the peer's namespace"));
            }
            RouteSocket::open().map_err(|e| NlError::io(&e))
        })
        .join()
        .unwrap_or_else(|_| Err(NlError { errno: None, message: "the namespace thread panicked".into() }))
    })
}
