//! Writing a server reply straight into the caller's buffer.
//!
//! A reply is a fixed BOOTP header and a handful of options the server
//! itself chose, so it is written field by field into a buffer that is
//! reused for every batch: no message object, no option map, no
//! allocation per packet (dhcproto's `Message` cost a dozen allocations
//! per reply). The layout is RFC 2131's; option values longer than one
//! option can carry are cut (nothing the server sends comes near).

use std::net::Ipv4Addr;

use dhcproto::v4::MessageType;

use super::wire::Request;

/// RFC 2131's magic cookie.
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// Offsets in the BOOTP header.
const FLAGS: usize = 10;
const CIADDR: usize = 12;
const YIADDR: usize = 16;
/// The smallest BOOTP message (RFC 1542 section 2.1): some clients drop
/// shorter ones, so replies are padded to it.
const MIN_LEN: usize = 300;

/// One reply being written at the end of a buffer.
pub struct Reply<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> Reply<'a> {
    /// Starts a reply of `kind` to `req` from `server` at the end of `out`:
    /// the header (xid, flags, giaddr and chaddr echoed), the message type
    /// and the server identifier.
    pub fn begin(out: &'a mut Vec<u8>, req: &Request, kind: MessageType, server: Ipv4Addr) -> Self {
        let start = out.len();
        out.resize(start + 236, 0);
        let h = &mut out[start..];
        h[0] = 2; // BOOTREPLY
        h[1] = 1; // Ethernet
        h[2] = 6;
        h[4..8].copy_from_slice(&req.xid.to_be_bytes());
        h[FLAGS..FLAGS + 2].copy_from_slice(&req.flags.to_be_bytes());
        h[20..24].copy_from_slice(&server.octets()); // siaddr
        h[24..28].copy_from_slice(&req.giaddr.octets());
        h[28..34].copy_from_slice(&req.mac.0);
        out.extend_from_slice(&MAGIC);
        let mut r = Reply { out, start };
        r.option(53, &[u8::from(kind)]);
        r.option(54, &server.octets());
        r
    }

    /// Sets the address given to the client.
    pub fn yiaddr(&mut self, ip: Ipv4Addr) -> &mut Self {
        self.out[self.start + YIADDR..self.start + YIADDR + 4].copy_from_slice(&ip.octets());
        self
    }

    /// Sets the client's current address, echoed.
    pub fn ciaddr(&mut self, ip: Ipv4Addr) -> &mut Self {
        self.out[self.start + CIADDR..self.start + CIADDR + 4].copy_from_slice(&ip.octets());
        self
    }

    /// Sets the broadcast flag (a NAK goes to a client whose address is
    /// in doubt).
    pub fn broadcast_flag(&mut self) -> &mut Self {
        self.out[self.start + FLAGS] |= 0x80;
        self
    }

    /// Appends option `code` with `value` (cut at 255 bytes).
    pub fn option(&mut self, code: u8, value: &[u8]) -> &mut Self {
        let v = &value[..value.len().min(255)];
        self.out.push(code);
        self.out.push(v.len() as u8);
        self.out.extend_from_slice(v);
        self
    }

    /// Appends a 4-byte option.
    pub fn u32_option(&mut self, code: u8, value: u32) -> &mut Self {
        self.option(code, &value.to_be_bytes())
    }

    /// Appends an address option.
    pub fn ip_option(&mut self, code: u8, ip: Ipv4Addr) -> &mut Self {
        self.option(code, &ip.octets())
    }

    /// Ends the options and pads to the minimum BOOTP length.
    pub fn finish(self) {
        self.out.push(255);
        let len = self.out.len() - self.start;
        if len < MIN_LEN {
            self.out.resize(self.start + MIN_LEN, 0);
        }
    }
}
