//! Unicast replies to clients that have no address yet.
//!
//! A client in DISCOVER or first REQUEST cannot answer ARP, so the kernel
//! cannot resolve the address it is being offered. Broadcasting the reply
//! instead reaches every guest on the bridge: in a boot storm, every VM
//! receives every other VM's OFFER and ACK. Like dora and ISC dhcpd, the
//! server plants the neighbour entry itself (`SIOCSARP`: address to the
//! client's MAC, on the network's own interface) and sends the reply to
//! the offered address. The entry is an ordinary reachable one (not
//! permanent): the kernel ages it out like any it learnt. It is made in
//! the namespace the server's socket lives in, on the interface it is
//! bound to, never elsewhere.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;

use crate::model::Mac;

/// `ATF_COM` from linux/if_arp.h: the hardware address is complete.
const ATF_COM: libc::c_int = 0x02;

/// Makes `ip` resolve to `mac` on interface `ifname` (the one `fd` is
/// bound to), so a reply to `ip` goes to that MAC alone.
pub fn plant(fd: RawFd, ifname: &str, ip: Ipv4Addr, mac: Mac) -> io::Result<()> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "interface name length"));
    }
    // SAFETY: arpreq is plain old data; all zeroes is a valid value.
    let mut req: libc::arpreq = unsafe { std::mem::zeroed() };
    // SAFETY: as above for sockaddr_in.
    let mut pa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    pa.sin_family = libc::AF_INET as libc::sa_family_t;
    pa.sin_addr = libc::in_addr { s_addr: u32::from(ip).to_be() };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux; the
    // kernel reads arp_pa as a sockaddr_in when its family is AF_INET.
    req.arp_pa = unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(pa) };
    req.arp_ha.sa_family = libc::ARPHRD_ETHER;
    for (d, s) in req.arp_ha.sa_data.iter_mut().zip(mac.0) {
        *d = s as libc::c_char;
    }
    req.arp_flags = ATF_COM;
    for (d, s) in req.arp_dev.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCSARP reads one arpreq, which lives for the call.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCSARP, &req as *const libc::arpreq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
