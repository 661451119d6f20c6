//! Replies to clients that have no address yet, sent as link-layer frames.
//!
//! A client in DISCOVER or first REQUEST has no address: its reply goes to
//! the limited broadcast address (the client asked for it, or the reply is
//! a NAK) or to the address being offered, at the client's MAC. Through
//! the UDP socket each costs the whole IP output path. A broadcast is also
//! looped back into the server's own stack (`ip_mc_output` copies every
//! broadcast for local delivery, where nothing listens on port 68): in a
//! boot-storm profile (32,000 exchanges/s) the copy was 14% of the
//! daemon's CPU and its way back in (`ip_rcv`) 7% more. A unicast needs a neighbour entry planted first,
//! one system call per client, in a table the kernel caps.
//!
//! So, like Kea's raw sockets and ISC dhcpd's LPF, the server writes the
//! IPv4 and UDP headers itself and hands each reply to an `AF_PACKET`
//! socket on the network's interface, addressed to the client's MAC or to
//! ff:ff:ff:ff:ff:ff; the kernel adds the Ethernet header. The frame
//! enters the bridge as a frame from the host, exactly where the UDP
//! path would have put it, so the bridge's own filters still see it. The
//! socket listens to protocol 0: it receives nothing.
//!
//! Without `CAP_NET_RAW` there is no such socket and the server uses the
//! UDP path ([`super::neighbour`] for unicasts).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::model::Mac;

/// The destination MAC of a limited broadcast.
pub const BROADCAST_MAC: Mac = Mac([0xff; 6]);
/// Bytes of IPv4 header (no options) and UDP header in front of a reply.
pub const HEADERS: usize = 28;
/// `ETH_P_IP`, in network order, as `sockaddr_ll` wants it.
const IP_PROTOCOL: u16 = (libc::ETH_P_IP as u16).to_be();

/// A packet socket that sends the frames of one network's interface.
#[derive(Debug)]
pub struct LinkSocket {
    fd: OwnedFd,
    ifindex: libc::c_int,
    /// The source address of every reply: the server identifier.
    src: Ipv4Addr,
}

impl LinkSocket {
    /// A socket sending on `ifname`, from `src`.
    pub fn open(ifname: &str, src: Ipv4Addr) -> io::Result<Self> {
        let name = std::ffi::CString::new(ifname).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a NUL-terminated name that lives for the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        // Protocol 0: the socket is bound to no protocol and receives nothing.
        // SAFETY: plain socket(2).
        let fd =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just opened and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let ifindex = libc::c_int::try_from(ifindex).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        Ok(LinkSocket { fd, ifindex, src })
    }

    /// The socket's descriptor, for `sendmmsg`.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Where a frame to `mac` goes.
    pub fn address(&self, mac: Mac) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as libc::c_ushort;
        sa.sll_protocol = IP_PROTOCOL;
        sa.sll_ifindex = self.ifindex;
        sa.sll_halen = 6;
        sa.sll_addr[..6].copy_from_slice(&mac.0);
        sa
    }

    /// The IPv4 and UDP headers of a reply of `payload` to `dst`, port 68.
    pub fn headers(&self, dst: Ipv4Addr, payload: &[u8]) -> [u8; HEADERS] {
        headers(self.src, dst, payload)
    }
}

/// The IPv4 header (DF, TTL 64, no options) and UDP header (67 -> 68, with
/// its checksum) of a DHCP reply carrying `payload`.
pub fn headers(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> [u8; HEADERS] {
    // A reply is a few hundred bytes; the wire parser never makes more
    // than a datagram's worth, so these lengths cannot overflow.
    let udp_len = (8 + payload.len()).min(usize::from(u16::MAX) - 20) as u16;
    let total = udp_len + 20;
    let mut h = [0u8; HEADERS];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[6] = 0x40; // don't fragment; the identification stays 0 (RFC 6864)
    h[8] = 64;
    h[9] = libc::IPPROTO_UDP as u8;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let ip_sum = !fold(sum(&h[..20], 0));
    h[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    h[20..22].copy_from_slice(&67u16.to_be_bytes());
    h[22..24].copy_from_slice(&68u16.to_be_bytes());
    h[24..26].copy_from_slice(&udp_len.to_be_bytes());
    // Pseudo-header, UDP header (checksum field zero) and payload.
    let mut s = sum(&h[12..20], 0) + u32::from(libc::IPPROTO_UDP as u16) + u32::from(udp_len);
    s = sum(&h[20..28], s);
    s = sum(payload, s);
    let udp_sum = match !fold(s) {
        0 => 0xffff, // 0 would mean "no checksum" (RFC 768)
        x => x,
    };
    h[26..28].copy_from_slice(&udp_sum.to_be_bytes());
    h
}

/// Adds `bytes` as big-endian 16-bit words to `acc` (an odd last byte is
/// padded with zero).
fn sum(bytes: &[u8], mut acc: u32) -> u32 {
    let mut words = bytes.chunks_exact(2);
    for w in &mut words {
        acc += u32::from(u16::from_be_bytes([w[0], w[1]]));
        // Fold early enough that a jumbo payload cannot overflow.
        if acc > 0xffff_0000 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
    }
    if let [last] = words.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

/// The one's-complement 16-bit sum of `acc`.
fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one's-complement sum over a whole header, its checksum
    /// included, is 0xffff when the checksum is right.
    fn verifies(bytes: &[u8], start: u32) -> bool {
        fold(sum(bytes, start)) == 0xffff
    }

    #[test]
    fn ip_and_udp_checksums_verify_as_a_receiver_checks_them() {
        let src = Ipv4Addr::new(10, 20, 0, 1);
        for (dst, payload) in [
            (Ipv4Addr::BROADCAST, vec![1u8; 300]),
            (Ipv4Addr::new(10, 20, 3, 7), (0..=254u8).collect::<Vec<u8>>()),
            (Ipv4Addr::new(192, 168, 122, 9), vec![]),
        ] {
            let h = headers(src, dst, &payload);
            assert!(verifies(&h[..20], 0), "IPv4 header checksum");
            let udp_len = 8 + payload.len() as u32;
            let pseudo = sum(&h[12..20], 0) + 17 + udp_len;
            let mut udp = h[20..].to_vec();
            udp.extend_from_slice(&payload);
            assert!(verifies(&udp, pseudo), "UDP checksum over {} bytes to {dst}", payload.len());
            assert_eq!(u16::from_be_bytes([h[2], h[3]]) as usize, 28 + payload.len());
            assert_eq!(&h[16..20], &dst.octets());
            assert_eq!(u16::from_be_bytes([h[22], h[23]]), 68);
        }
    }

    #[test]
    fn the_header_matches_one_computed_by_hand() {
        // 10.0.0.1 -> 255.255.255.255, 4 bytes of payload: the IPv4
        // checksum worked out on paper.
        let h = headers(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::BROADCAST, &[0, 0, 0, 0]);
        assert_eq!(&h[..12], &[0x45, 0, 0, 32, 0, 0, 0x40, 0, 64, 17, 0x30, 0xcd]);
    }
}
