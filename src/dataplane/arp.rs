//! Gratuitous ARP: announcing that an address is now behind an interface,
//! so that neighbours (the upstream router, other hosts) update their ARP
//! caches at once when a floating IP is associated or moves, instead of
//! sending to the old place until their entries expire.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::kernel::KernelError;
use crate::model::Mac;

const ETH_P_ARP: u16 = 0x0806;

/// An ARP request from `ip` for `ip` (the form every stack takes as an
/// announcement), from `mac`.
pub fn gratuitous_request(mac: Mac, ip: Ipv4Addr) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    p[8..14].copy_from_slice(&mac.0);
    p[14..18].copy_from_slice(&ip.octets());
    // Target hardware address unknown (zero), target protocol address ours.
    p[24..28].copy_from_slice(&ip.octets());
    p
}

fn failed(link: &str, ip: Ipv4Addr, e: impl std::fmt::Display) -> KernelError {
    KernelError::Op { op: format!("announce {ip} on {link}"), errno: None, message: e.to_string() }
}

/// A packet socket kept open for the daemon's life: closing one waits for
/// an RCU grace period in the kernel (8 ms measured here), which would be
/// most of what an association costs.
#[derive(Debug, Default)]
pub struct Announcer {
    socket: std::sync::Mutex<Option<OwnedFd>>,
}

impl Announcer {
    /// Broadcasts a gratuitous ARP request for `ip` on interface `link`,
    /// from the interface's own MAC. Two ioctls and one send: no look at
    /// the interface's addresses, of which a pool's interface may carry
    /// thousands.
    pub fn announce(&self, link: &str, ip: Ipv4Addr) -> Result<(), KernelError> {
        let mut guard = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(open().map_err(|e| failed(link, ip, e))?);
        }
        let socket = guard.as_ref().expect("opened above");
        send(socket, link, ip)
    }
}

fn open() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send(socket: &OwnedFd, link: &str, ip: Ipv4Addr) -> Result<(), KernelError> {
    let (index, mac) = interface(socket, link).map_err(|e| failed(link, ip, e))?;
    // SAFETY: sockaddr_ll is plain data; all zeros is a valid value.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_ARP.to_be();
    to.sll_ifindex = i32::try_from(index).map_err(|e| failed(link, ip, e))?;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let packet = gratuitous_request(mac, ip);
    // SAFETY: `packet` and `to` are valid for the lengths passed.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            std::ptr::from_ref(&to).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(failed(link, ip, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The index and hardware address of interface `name`.
fn interface(socket: &OwnedFd, name: &str) -> std::io::Result<(u32, Mac)> {
    // SAFETY: ifreq is plain data; all zeros is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= req.ifr_name.len() || bytes.contains(&0) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an interface name"));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is an ifreq with a NUL-terminated name, valid for the
    // call; SIOCGIFINDEX writes only its ifru_ifindex.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFINDEX, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFINDEX filled the union's index member.
    let index = u32::try_from(unsafe { req.ifr_ifru.ifru_ifindex }).unwrap_or(0);
    // SAFETY: as above; SIOCGIFHWADDR writes only its ifru_hwaddr.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR filled the union's hwaddr member.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Ok((index, Mac(mac)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announcement_asks_for_its_own_address() {
        let mac: Mac = "02:00:00:00:00:01".parse().unwrap();
        let p = gratuitous_request(mac, Ipv4Addr::new(203, 0, 113, 10));
        assert_eq!(&p[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&p[8..14], &mac.0);
        assert_eq!(&p[14..18], &[203, 0, 113, 10]);
        assert_eq!(&p[18..24], &[0; 6]);
        assert_eq!(&p[24..28], &[203, 0, 113, 10]);
    }
}
