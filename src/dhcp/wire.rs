//! Reading a client's DHCP packet off the wire.
//!
//! Every byte here comes from a guest, so this parser is ours and small: it
//! reads only the fields the server uses, checks each length before it
//! slices, and turns anything it cannot trust into a [`WireError`]. No
//! library call that can panic on wire data is made (dhcproto's `chaddr()`
//! slices by the packet's own `hlen` and its option decoder asserts on
//! lengths, so it is used only to encode replies the server builds itself).

use std::net::Ipv4Addr;

use dhcproto::v4::MessageType;

use crate::model::Mac;

/// The BOOTP header before the options: op .. file, then the magic cookie.
const HEADER_LEN: usize = 236;
/// RFC 2131's magic cookie, right after the header.
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// Offsets of the fields read from the header.
const SNAME: std::ops::Range<usize> = 44..108;
const FILE: std::ops::Range<usize> = 108..236;
/// The largest host name the server keeps: one DNS label.
pub const MAX_HOSTNAME: usize = 63;

/// Why a packet is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than the fixed header and cookie.
    Truncated,
    /// Not a BOOTREQUEST (a reply, or garbage).
    NotARequest,
    /// Not Ethernet with a 6-byte address: the server keys clients by MAC.
    NotEthernet,
    /// The magic cookie is wrong.
    BadCookie,
    /// An option's length runs past the end of its area.
    BadOption,
    /// No DHCP message type option (plain BOOTP is not served).
    NoMessageType,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WireError::Truncated => "truncated packet",
            WireError::NotARequest => "not a BOOTREQUEST",
            WireError::NotEthernet => "hardware type is not Ethernet with a 6-byte address",
            WireError::BadCookie => "bad magic cookie",
            WireError::BadOption => "malformed options",
            WireError::NoMessageType => "no DHCP message type",
        })
    }
}

/// The fields of a client message the server acts on, all validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Transaction ID, echoed in the reply.
    pub xid: u32,
    /// The flags field (bit 15 asks for a broadcast reply), echoed.
    pub flags: u16,
    /// The client's current address, if it has one.
    pub ciaddr: Ipv4Addr,
    /// The relay agent's address, if relayed.
    pub giaddr: Ipv4Addr,
    /// The client's hardware address.
    pub mac: Mac,
    /// Option 53.
    pub kind: MessageType,
    /// Option 50.
    pub requested_ip: Option<Ipv4Addr>,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
    /// Option 12, kept only when it is a valid DNS label.
    pub hostname: Option<String>,
    /// Option 61, as raw bytes.
    pub client_id: Option<Vec<u8>>,
}

fn ipv4_at(b: &[u8], at: usize) -> Ipv4Addr {
    // Callers pass offsets inside the checked header.
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

/// Options seen so far; the first instance of each wins.
#[derive(Default)]
struct Options {
    kind: Option<u8>,
    requested_ip: Option<Ipv4Addr>,
    server_id: Option<Ipv4Addr>,
    hostname: Option<String>,
    client_id: Option<Vec<u8>>,
    overload: u8,
}

impl Options {
    /// Walks one option area (RFC 2132 section 2). Returns an error when an
    /// option's length does not fit; stops at END.
    fn read_area(&mut self, area: &[u8]) -> Result<(), WireError> {
        let mut i = 0;
        while let Some(&code) = area.get(i) {
            match code {
                0 => {
                    i += 1;
                    continue;
                }
                255 => return Ok(()),
                _ => {}
            }
            let len = *area.get(i + 1).ok_or(WireError::BadOption)? as usize;
            let value = area.get(i + 2..i + 2 + len).ok_or(WireError::BadOption)?;
            self.take(code, value);
            i += 2 + len;
        }
        Ok(())
    }

    fn take(&mut self, code: u8, v: &[u8]) {
        let ip = || <[u8; 4]>::try_from(v).ok().map(Ipv4Addr::from);
        match code {
            53 if v.len() == 1 => {
                self.kind.get_or_insert(v[0]);
            }
            50 if self.requested_ip.is_none() => self.requested_ip = ip(),
            54 if self.server_id.is_none() => self.server_id = ip(),
            12 if self.hostname.is_none() => self.hostname = valid_hostname(v),
            61 if self.client_id.is_none() && !v.is_empty() => self.client_id = Some(v.to_vec()),
            52 if v.len() == 1 => self.overload = v[0],
            _ => {}
        }
    }
}

/// A host name a guest may give itself: one DNS label (letters, digits,
/// hyphens, not at either end), at most 63 bytes. Anything else is dropped
/// rather than stored: it would be served in DNS and shown in tables.
fn valid_hostname(v: &[u8]) -> Option<String> {
    // Some clients send a trailing NUL.
    let v = v.strip_suffix(&[0]).unwrap_or(v);
    let ok = !v.is_empty()
        && v.len() <= MAX_HOSTNAME
        && v.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && v.first() != Some(&b'-')
        && v.last() != Some(&b'-');
    ok.then(|| String::from_utf8_lossy(v).into_owned())
}

impl Request {
    /// Parses one UDP payload. Never panics, whatever the bytes.
    pub fn parse(b: &[u8]) -> Result<Request, WireError> {
        if b.len() < HEADER_LEN + MAGIC.len() {
            return Err(WireError::Truncated);
        }
        if b[0] != 1 {
            return Err(WireError::NotARequest);
        }
        if b[1] != 1 || b[2] != 6 {
            return Err(WireError::NotEthernet);
        }
        if b[HEADER_LEN..HEADER_LEN + 4] != MAGIC {
            return Err(WireError::BadCookie);
        }
        let mut opts = Options::default();
        opts.read_area(&b[HEADER_LEN + 4..])?;
        // Option overload (option 52): more options in `file` (1), `sname`
        // (2) or both (3), read after the main area, as RFC 2131 orders.
        if opts.overload & 1 != 0 {
            opts.read_area(&b[FILE])?;
        }
        if opts.overload & 2 != 0 {
            opts.read_area(&b[SNAME])?;
        }
        let kind = match opts.kind {
            Some(k) => MessageType::from(k),
            None => return Err(WireError::NoMessageType),
        };
        Ok(Request {
            xid: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            flags: u16::from_be_bytes([b[10], b[11]]),
            ciaddr: ipv4_at(b, 12),
            giaddr: ipv4_at(b, 24),
            mac: Mac([b[28], b[29], b[30], b[31], b[32], b[33]]),
            kind,
            requested_ip: opts.requested_ip,
            server_id: opts.server_id,
            hostname: opts.hostname,
            client_id: opts.client_id,
        })
    }

    /// Whether the client asked for a broadcast reply.
    pub fn wants_broadcast(&self) -> bool {
        self.flags & 0x8000 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A well-formed DISCOVER from 52:54:00:01:02:03 with a host name.
    pub(crate) fn discover() -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&42u32.to_be_bytes());
        b[28..34].copy_from_slice(&[0x52, 0x54, 0, 1, 2, 3]);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&[53, 1, 1, 12, 5, b'g', b'u', b'e', b's', b't', 255]);
        b
    }

    #[test]
    fn reads_a_discover() {
        let r = Request::parse(&discover()).unwrap();
        assert_eq!(r.kind, MessageType::Discover);
        assert_eq!(r.xid, 42);
        assert_eq!(r.mac, Mac([0x52, 0x54, 0, 1, 2, 3]));
        assert_eq!(r.hostname.as_deref(), Some("guest"));
    }

    #[test]
    fn every_hlen_is_checked() {
        for hlen in 0..=255u8 {
            let mut b = discover();
            b[2] = hlen;
            let r = Request::parse(&b);
            if hlen == 6 {
                assert!(r.is_ok());
            } else {
                assert_eq!(r, Err(WireError::NotEthernet), "hlen {hlen}");
            }
        }
    }

    #[test]
    fn truncation_at_every_length_is_an_error_not_a_panic() {
        let full = discover();
        for n in 0..full.len() {
            // Cut inside the options: a length byte that runs past the end.
            let _ = Request::parse(&full[..n]);
        }
        assert_eq!(Request::parse(&full[..100]), Err(WireError::Truncated));
        let mut cut = discover();
        cut.truncate(HEADER_LEN + 4 + 4); // 53,1,1,12 and no length
        assert_eq!(Request::parse(&cut), Err(WireError::BadOption));
    }

    #[test]
    fn overloaded_options_are_read_from_file_and_sname() {
        let mut b = discover();
        b.truncate(HEADER_LEN + 4);
        b.extend_from_slice(&[53, 1, 3, 52, 1, 3, 255]);
        b[FILE.start..FILE.start + 6].copy_from_slice(&[50, 4, 10, 0, 0, 9]);
        b[FILE.start + 6] = 255;
        b[SNAME.start..SNAME.start + 6].copy_from_slice(&[54, 4, 10, 0, 0, 1]);
        b[SNAME.start + 6] = 255;
        let r = Request::parse(&b).unwrap();
        assert_eq!(r.requested_ip, Some(Ipv4Addr::new(10, 0, 0, 9)));
        assert_eq!(r.server_id, Some(Ipv4Addr::new(10, 0, 0, 1)));
        // An overloaded area that is not terminated but malformed is refused.
        b[FILE.start + 1] = 200;
        assert_eq!(Request::parse(&b), Err(WireError::BadOption));
    }

    #[test]
    fn hostile_host_names_are_dropped() {
        for bad in [&b"a\x1b[31mb"[..], b"two\nlines", b"-lead", b"trail-", b"dot.ted", &[b'a'; 64][..]] {
            let mut b = discover();
            b.truncate(HEADER_LEN + 4);
            b.extend_from_slice(&[53, 1, 1, 12, bad.len() as u8]);
            b.extend_from_slice(bad);
            b.push(255);
            assert_eq!(Request::parse(&b).unwrap().hostname, None, "{bad:?}");
        }
    }

    #[test]
    fn jumbo_packets_and_wrong_lengths_are_safe() {
        let mut b = discover();
        b.truncate(HEADER_LEN + 4);
        b.extend_from_slice(&[53, 1, 1, 50, 3, 1, 2, 3, 54, 0, 61, 0]);
        b.resize(8192, 0);
        let r = Request::parse(&b).unwrap();
        assert_eq!((r.requested_ip, r.server_id, r.client_id), (None, None, None));
    }
}
