//! The NETLINK_ROUTE socket: one request at a time, each with its own
//! sequence number, read until the kernel's acknowledgement (or, for a
//! dump, its end), and the kernel's refusal turned into an errno with its
//! text and the extended-ack message. Also the datagram reading and
//! message splitting the monitor shares.

use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN, NLM_F_ACK,
    NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::Socket;

/// Length of `struct nlmsghdr`.
const HEADER_LEN: usize = 16;
/// `NLMSGERR_ATTR_MSG`: the extended ack's human-readable message.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Receive buffer kept across calls. Dumps are sent in datagrams sized by
/// the largest buffer the reader offers (up to 32 KiB), so offering 64 KiB
/// gets the fewest datagrams; larger ones are sized on demand.
const RECV_BUFFER: usize = 64 * 1024;

/// Why a request failed: the kernel's errno, when it gave one, and a
/// message (the errno's text, with the kernel's own explanation when it
/// sent one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NlError {
    /// errno.
    pub errno: Option<i32>,
    /// Human-readable cause.
    pub message: String,
}

impl NlError {
    /// The kernel refused with `errno`, explaining itself with `extack`.
    pub fn kernel(errno: i32, extack: Option<&str>) -> NlError {
        let text = io::Error::from_raw_os_error(errno).to_string();
        let message = match extack.map(str::trim).filter(|m| !m.is_empty()) {
            Some(why) => format!("{text}: {why}"),
            None => text,
        };
        NlError { errno: Some(errno), message }
    }

    /// A failed system call.
    pub fn io(err: &io::Error) -> NlError {
        NlError { errno: err.raw_os_error(), message: err.to_string() }
    }

    /// The kernel's answer could not be read.
    pub fn malformed(what: impl std::fmt::Display) -> NlError {
        NlError { errno: None, message: format!("malformed netlink answer: {what}") }
    }

    /// Whether this is the kernel's `errno`.
    pub fn is(&self, errno: i32) -> bool {
        self.errno == Some(errno)
    }

    /// The same error, its message prefixed with what it concerns.
    pub fn about(self, what: &str) -> NlError {
        NlError { errno: self.errno, message: format!("{what}: {}", self.message) }
    }
}

/// One netlink message of a received datagram, not yet parsed.
#[derive(Debug, Clone, Copy)]
pub struct RawMessage<'a> {
    /// nlmsg_type.
    pub kind: u16,
    /// nlmsg_flags.
    pub flags: u16,
    /// nlmsg_seq.
    pub seq: u32,
    /// The whole message, header included.
    pub bytes: &'a [u8],
}

impl<'a> RawMessage<'a> {
    /// What follows the header.
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[HEADER_LEN..]
    }

    /// The message as the typed rtnetlink value.
    pub fn parse(&self) -> Result<RouteNetlinkMessage, NlError> {
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(self.bytes) {
            Ok(NetlinkMessage { payload: NetlinkPayload::InnerMessage(m), .. }) => Ok(m),
            Ok(_) => Err(NlError::malformed(format!("message type {} is not an rtnetlink message", self.kind))),
            Err(e) => Err(NlError::malformed(format!("message type {}: {e}", self.kind))),
        }
    }

    /// For NLMSG_ERROR and NLMSG_DONE: None for success, the error
    /// otherwise.
    fn status(&self) -> Result<Option<NlError>, NlError> {
        let payload = self.payload();
        let code = payload.get(..4).ok_or_else(|| NlError::malformed("truncated error message"))?;
        let code = i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
        if code == 0 {
            return Ok(None);
        }
        let rest = &payload[4..];
        let tlvs = if self.flags & NLM_F_ACK_TLVS == 0 {
            None
        } else if self.kind == NLMSG_DONE {
            Some(rest)
        } else {
            // An error echoes the request: just its header when capped
            // (NETLINK_CAP_ACK), the whole message otherwise. The extended
            // ack attributes follow it.
            let echoed = if self.flags & NLM_F_CAPPED != 0 {
                HEADER_LEN
            } else {
                rest.get(..4).map_or(rest.len(), |l| u32::from_ne_bytes([l[0], l[1], l[2], l[3]]) as usize)
            };
            rest.get(align(echoed)..)
        };
        let extack = tlvs.and_then(|t| attribute(t, NLMSGERR_ATTR_MSG)).map(|m| {
            let m = m.split(|b| *b == 0).next().unwrap_or_default();
            String::from_utf8_lossy(m).into_owned()
        });
        Ok(Some(NlError::kernel(code.saturating_neg(), extack.as_deref())))
    }
}

/// NLMSG_ALIGN / NLA_ALIGN.
fn align(len: usize) -> usize {
    len.saturating_add(3) & !3
}

/// The value of attribute `kind` in a run of netlink attributes.
fn attribute(mut attrs: &[u8], kind: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if ty == kind {
            return Some(&attrs[4..len]);
        }
        attrs = attrs.get(align(len)..)?;
    }
    None
}

/// The messages of one datagram, in order; a message whose length does not
/// fit ends the iteration with an error.
pub fn messages(datagram: &[u8]) -> impl Iterator<Item = Result<RawMessage<'_>, NlError>> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        if rest.len() < HEADER_LEN {
            return None;
        }
        let word = |at: usize| u32::from_ne_bytes([rest[at], rest[at + 1], rest[at + 2], rest[at + 3]]);
        let len = word(0) as usize;
        if len < HEADER_LEN || len > rest.len() {
            rest = &[];
            return Some(Err(NlError::malformed(format!("message length {len} in a datagram of {}", datagram.len()))));
        }
        let msg = RawMessage {
            kind: u16::from_ne_bytes([rest[4], rest[5]]),
            flags: u16::from_ne_bytes([rest[6], rest[7]]),
            seq: word(8),
            bytes: &rest[..len],
        };
        rest = rest.get(align(len)..).unwrap_or_default();
        Some(Ok(msg))
    })
}

/// Reads one datagram into `buf` (replacing its contents), growing `buf`
/// first if the datagram is larger, so nothing is ever truncated. `flags`
/// may add MSG_DONTWAIT.
pub fn receive(socket: &Socket, buf: &mut Vec<u8>, flags: libc::c_int) -> io::Result<()> {
    loop {
        // A zero-length peek with MSG_TRUNC returns the datagram's real
        // size without consuming it.
        let mut probe: &mut [u8] = &mut [];
        let size = match socket.recv(&mut probe, libc::MSG_PEEK | libc::MSG_TRUNC | flags) {
            Ok(size) => size,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        buf.clear();
        buf.reserve(size.max(RECV_BUFFER));
        match socket.recv(buf, flags) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A NETLINK_ROUTE socket for requests, in the network namespace of the
/// thread that opened it.
pub struct RouteSocket {
    socket: Socket,
    seq: u32,
    /// Received datagrams, reused across calls.
    buf: Vec<u8>,
    /// The serialized request, reused across calls.
    out: Vec<u8>,
}

impl RouteSocket {
    /// Opens and binds the socket.
    pub fn open() -> io::Result<RouteSocket> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        // Each of these only improves what the kernel tells us, and each
        // exists since Linux 4.20 at the latest: extended acks give the
        // kernel's reason for a refusal, capped acks keep errors short, and
        // strict checking lets dumps be filtered by the kernel (addresses
        // of one link). Without them requests still work; answers are
        // filtered here too.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        let _ = socket.set_netlink_get_strict_chk(true);
        Ok(RouteSocket { socket, seq: 0, buf: Vec::with_capacity(RECV_BUFFER), out: Vec::new() })
    }

    fn send(&mut self, message: RouteNetlinkMessage, flags: u16) -> Result<u32, NlError> {
        // Zero is left out so a reply's sequence number is never confused
        // with a notification's.
        self.seq = self.seq.wrapping_add(1).max(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        self.out.clear();
        self.out.resize(packet.buffer_len(), 0);
        packet.serialize(&mut self.out);
        loop {
            match self.socket.send(&self.out, 0) {
                Ok(_) => return Ok(self.seq),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NlError::io(&e)),
            }
        }
    }

    /// Sends `message` with NLM_F_ACK and `flags`, hands every answer
    /// message to `each` and returns when the kernel acknowledges, or its
    /// refusal.
    pub fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        each: impl FnMut(&RawMessage<'_>) -> Result<(), NlError>,
    ) -> Result<(), NlError> {
        let seq = self.send(message, flags | NLM_F_ACK)?;
        self.read_answer(seq, each).map(|_| ())
    }

    /// Sends `message` and waits for the acknowledgement.
    pub fn ack(&mut self, message: RouteNetlinkMessage, flags: u16) -> Result<(), NlError> {
        self.request(message, flags, |_| Ok(()))
    }

    /// Dumps: sends `message` with NLM_F_DUMP and hands every message to
    /// `each`. A dump the kernel marked inconsistent (links changed while
    /// it ran) is an EINTR error, for the caller to start over.
    pub fn dump(
        &mut self,
        message: RouteNetlinkMessage,
        each: impl FnMut(&RawMessage<'_>) -> Result<(), NlError>,
    ) -> Result<(), NlError> {
        let seq = self.send(message, NLM_F_DUMP)?;
        if self.read_answer(seq, each)? {
            return Err(NlError { errno: Some(libc::EINTR), message: "the kernel interrupted the dump".into() });
        }
        Ok(())
    }

    /// Reads until the ack, error or end of dump of request `seq`. Returns
    /// whether the kernel flagged the answer as interrupted.
    fn read_answer(
        &mut self,
        seq: u32,
        mut each: impl FnMut(&RawMessage<'_>) -> Result<(), NlError>,
    ) -> Result<bool, NlError> {
        let mut interrupted = false;
        loop {
            receive(&self.socket, &mut self.buf, 0).map_err(|e| NlError::io(&e))?;
            for msg in messages(&self.buf) {
                let msg = msg?;
                // Left over from an earlier request that ended in an error.
                if msg.seq != seq {
                    continue;
                }
                interrupted |= msg.flags & NLM_F_DUMP_INTR != 0;
                match msg.kind {
                    NLMSG_NOOP => {}
                    NLMSG_ERROR | NLMSG_DONE => {
                        return match msg.status()? {
                            None => Ok(interrupted),
                            Some(e) => Err(e),
                        }
                    }
                    NLMSG_OVERRUN => return Err(NlError::malformed("the kernel reported an overrun")),
                    _ => each(&msg)?,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = (HEADER_LEN + payload.len()) as u32;
        let mut v = Vec::new();
        v.extend_from_slice(&len.to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(value);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn an_error_carries_errno_text_and_extended_ack() {
        let mut payload = (-95i32).to_ne_bytes().to_vec();
        payload.extend_from_slice(&message(16, 0x405, 7, &[])); // the capped echo
        payload.extend_from_slice(&nla(NLMSGERR_ATTR_MSG, b"Unknown device type\0"));
        let bytes = message(NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, 7, &payload);
        let msgs: Vec<_> = messages(&bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 1);
        let err = msgs[0].status().unwrap().unwrap();
        assert_eq!(err.errno, Some(95));
        assert_eq!(err.message, "Operation not supported (os error 95): Unknown device type");
    }

    #[test]
    fn an_uncapped_error_skips_the_whole_echoed_request() {
        let echoed = message(16, 0x405, 7, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let mut payload = (-17i32).to_ne_bytes().to_vec();
        payload.extend_from_slice(&echoed);
        payload.extend_from_slice(&nla(NLMSGERR_ATTR_MSG, b"exists\0"));
        let bytes = message(NLMSG_ERROR, NLM_F_ACK_TLVS, 7, &payload);
        let err = messages(&bytes).next().unwrap().unwrap().status().unwrap().unwrap();
        assert_eq!(err.message, "File exists (os error 17): exists");
        // Without TLVs the message is the errno's text alone.
        let bytes = message(NLMSG_ERROR, 0, 7, &(-17i32).to_ne_bytes());
        let err = messages(&bytes).next().unwrap().unwrap().status().unwrap().unwrap();
        assert_eq!(err, NlError { errno: Some(17), message: "File exists (os error 17)".into() });
    }

    #[test]
    fn an_ack_is_success() {
        let bytes = message(NLMSG_ERROR, 0, 3, &0i32.to_ne_bytes());
        assert_eq!(messages(&bytes).next().unwrap().unwrap().status().unwrap(), None);
    }

    #[test]
    fn splitting_stops_at_a_lying_length() {
        let mut bytes = message(NLMSG_NOOP, 0, 1, &[]);
        let mut bad = message(NLMSG_NOOP, 0, 2, &[0; 4]);
        bad[0] = 200; // longer than the datagram
        bytes.extend_from_slice(&bad);
        let got: Vec<_> = messages(&bytes).collect();
        assert_eq!(got.len(), 2);
        assert!(got[0].is_ok());
        assert!(got[1].is_err());
        // Truncated error payloads are errors too, not panics.
        let short = message(NLMSG_ERROR, 0, 1, &[1, 2]);
        assert!(messages(&short).next().unwrap().unwrap().status().is_err());
    }
}
