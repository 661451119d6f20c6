//! A NETLINK_NETFILTER socket: the system calls the monitor and the table
//! query make, each wrapped once with its safety argument. The socket
//! belongs to the network namespace of the thread that opens it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// An open NETLINK_NETFILTER socket, bound to a kernel-chosen port id.
#[derive(Debug)]
pub struct NfSocket {
    fd: OwnedFd,
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl NfSocket {
    /// Opens and binds the socket.
    pub fn open() -> io::Result<NfSocket> {
        // SAFETY: plain socket(2) call with constant arguments.
        let fd =
            unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_NETFILTER) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
        let socket = NfSocket { fd: unsafe { OwnedFd::from_raw_fd(fd) } };
        // SAFETY: sockaddr_nl is plain data; all zeros is a valid value.
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `address` is a sockaddr_nl that outlives the call, and its
        // size is passed with it.
        check(unsafe {
            libc::bind(
                socket.fd.as_raw_fd(),
                std::ptr::from_ref(&address).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        })?;
        Ok(socket)
    }

    fn set_int_option(&self, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
        // SAFETY: the fd is an open socket; the option value is a c_int that
        // lives across the call, and its size is passed with it.
        check(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                std::ptr::from_ref(&value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })
    }

    /// Asks for a kernel receive buffer of `bytes`: SO_RCVBUFFORCE passes
    /// the rmem_max limit (root); SO_RCVBUF is the best an unprivileged
    /// caller gets.
    pub fn set_receive_buffer(&self, bytes: libc::c_int) -> io::Result<()> {
        self.set_int_option(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes)
            .or_else(|_| self.set_int_option(libc::SOL_SOCKET, libc::SO_RCVBUF, bytes))
    }

    /// Joins a multicast group.
    pub fn join(&self, group: libc::c_int) -> io::Result<()> {
        self.set_int_option(libc::SOL_NETLINK, libc::NETLINK_ADD_MEMBERSHIP, group)
    }

    /// Sends one request to the kernel.
    pub fn send(&self, message: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_nl is plain data; all zeros (port id 0) is the kernel.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `message` and `kernel` are valid for the lengths passed.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
                std::ptr::from_ref(&kernel).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        match usize::try_from(sent) {
            Ok(n) if n == message.len() => Ok(()),
            Ok(_) => Err(io::Error::new(io::ErrorKind::WriteZero, "netlink request sent in part")),
            Err(_) => Err(io::Error::last_os_error()),
        }
    }

    /// Receives one datagram without waiting. Returns its full size, which
    /// is larger than `buffer` when it was cut (MSG_TRUNC).
    pub fn recv(&self, buffer: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buffer` is writable for its whole length, which is passed.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Whether a datagram (or an error) is waiting within `timeout`.
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // Round up so that a sub-millisecond timeout still waits.
            let ms = libc::c_int::try_from(left.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
            let mut pollfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd, count 1.
            let rc = unsafe { libc::poll(&mut pollfd, 1, ms) };
            match rc {
                1.. => return Ok(true),
                0 => return Ok(false),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }
}
