//! Connection tracking, by ctnetlink: removing the flows of an address
//! when a floating IP moves, so established flows follow it at once (what
//! nova's `clean_conntrack` and Neutron do with `conntrack -D`).
//!
//! One dump of the IPv4 table, then one delete per matching entry, naming
//! it by the original tuple exactly as the dump gave it (its payload is
//! sent back unparsed, so every protocol's tuple works the same way). The
//! framing is nfnetlink's, read with [`super::nft::messages`].

use std::net::Ipv4Addr;
use std::time::Duration;

use super::nft::messages::{messages, nested};
use super::nft::socket::NfSocket;
use crate::kernel::KernelError;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLA_F_NESTED: u16 = 0x8000;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;

/// How long the kernel may take to answer one message.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

fn error(what: impl std::fmt::Display) -> KernelError {
    KernelError::Observe { what: "conntrack", message: what.to_string() }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A netlink message header + nfgenmsg (AF_INET) + `attributes`.
fn message(kind: u16, flags: u16, seq: u32, attributes: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + attributes.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | kind).to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
    m.extend_from_slice(attributes);
    m
}

/// One attribute: header (length, `kind`) and payload, padded to 4 bytes.
fn attribute(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(align4(4 + payload.len()));
    a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(payload);
    a.resize(align4(a.len()), 0);
    a
}

/// The destination address of a tuple attribute's payload.
fn tuple_dst(tuple: &[u8]) -> Option<Ipv4Addr> {
    let (_, ip) = nested(tuple).find(|(k, _)| *k == CTA_TUPLE_IP)?;
    let (_, dst) = nested(ip).find(|(k, _)| *k == CTA_IP_V4_DST)?;
    Some(Ipv4Addr::from(<[u8; 4]>::try_from(dst).ok()?))
}

/// What to send back to delete one dumped entry (a message body, nfgenmsg
/// first): its original tuple and zone, unparsed.
fn delete_attributes(body: &[u8], ip: Ipv4Addr) -> Option<Vec<u8>> {
    let attrs: Vec<(u16, &[u8])> = nested(body.get(NFGENMSG_LEN..)?).collect();
    let dst = |kind| attrs.iter().find(|(k, _)| *k == kind).and_then(|(_, p)| tuple_dst(p));
    // The original destination is the floating IP for flows into it; the
    // reply's destination is it for a port's own flows out, SNATed to it.
    if dst(CTA_TUPLE_ORIG) != Some(ip) && dst(CTA_TUPLE_REPLY) != Some(ip) {
        return None;
    }
    let mut out = Vec::new();
    for (kind, payload) in &attrs {
        match *kind {
            CTA_TUPLE_ORIG => out.extend(attribute(CTA_TUPLE_ORIG | NLA_F_NESTED, payload)),
            CTA_ZONE => out.extend(attribute(CTA_ZONE, payload)),
            _ => {}
        }
    }
    Some(out)
}

/// The errno of an NLMSG_ERROR body (0: an acknowledgement).
fn errno(body: &[u8]) -> i32 {
    body.get(0..4).map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
}

/// Removes every IPv4 conntrack entry whose original destination or reply
/// destination is `ip`. Returns how many were removed.
pub fn forget_flows(ip: Ipv4Addr) -> Result<usize, KernelError> {
    let socket = NfSocket::open().map_err(|e| error(format!("cannot open a netfilter netlink socket: {e}")))?;
    socket.set_receive_buffer(1 << 20).map_err(error)?;
    socket.send(&message(IPCTNL_MSG_CT_GET, NLM_F_DUMP, 1, &[])).map_err(error)?;
    let mut buffer = vec![0u8; 1 << 16];
    let mut doomed: Vec<Vec<u8>> = Vec::new();
    'dump: loop {
        if !socket.wait_readable(REPLY_TIMEOUT).map_err(error)? {
            return Err(error("the kernel did not finish the conntrack dump"));
        }
        let n = match socket.recv(&mut buffer) {
            Ok(n) => n.min(buffer.len()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) => continue,
            Err(e) => return Err(error(e)),
        };
        for m in messages(&buffer[..n]).filter(|m| m.seq == 1) {
            match m.kind {
                NLMSG_DONE => break 'dump,
                NLMSG_ERROR if errno(m.body) != 0 => {
                    return Err(error(std::io::Error::from_raw_os_error(-errno(m.body))));
                }
                NLMSG_ERROR => {}
                _ => doomed.extend(delete_attributes(m.body, ip)),
            }
        }
    }
    let mut removed = 0;
    for (i, attrs) in doomed.iter().enumerate() {
        let seq = 2 + i as u32;
        socket.send(&message(IPCTNL_MSG_CT_DELETE, NLM_F_ACK, seq, attrs)).map_err(error)?;
        // The acknowledgement; ENOENT means the flow ended meanwhile.
        loop {
            if !socket.wait_readable(REPLY_TIMEOUT).map_err(error)? {
                return Err(error("the kernel did not acknowledge a conntrack delete"));
            }
            let n = match socket.recv(&mut buffer) {
                Ok(n) => n.min(buffer.len()),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) => continue,
                Err(e) => return Err(error(e)),
            };
            let Some(ack) = messages(&buffer[..n]).find(|m| m.kind == NLMSG_ERROR && m.seq == seq) else { continue };
            match -errno(ack.body) {
                0 => removed += 1,
                libc::ENOENT => {}
                e => return Err(error(std::io::Error::from_raw_os_error(e))),
            }
            break;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(kind: u16, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let ip = attribute(CTA_TUPLE_IP | NLA_F_NESTED, &[attribute(1, &src), attribute(CTA_IP_V4_DST, &dst)].concat());
        attribute(kind | NLA_F_NESTED, &ip)
    }

    #[test]
    fn an_entry_is_named_by_its_original_tuple_when_either_direction_leads_to_the_address() {
        let inbound = [
            vec![2, 0, 0, 0],
            tuple(CTA_TUPLE_ORIG, [198, 51, 100, 1], [203, 0, 113, 10]),
            tuple(CTA_TUPLE_REPLY, [10, 0, 0, 5], [198, 51, 100, 1]),
        ]
        .concat();
        let fip = Ipv4Addr::new(203, 0, 113, 10);
        let sent = delete_attributes(&inbound, fip).expect("an inbound flow to the floating IP");
        assert_eq!(sent, tuple(CTA_TUPLE_ORIG, [198, 51, 100, 1], [203, 0, 113, 10]));
        let outbound = [
            vec![2, 0, 0, 0],
            tuple(CTA_TUPLE_ORIG, [10, 0, 0, 5], [198, 51, 100, 1]),
            tuple(CTA_TUPLE_REPLY, [198, 51, 100, 1], [203, 0, 113, 10]),
        ]
        .concat();
        assert!(delete_attributes(&outbound, fip).is_some(), "the port's own flow, SNATed to it");
        assert!(delete_attributes(&outbound, Ipv4Addr::new(203, 0, 113, 11)).is_none());
        assert!(delete_attributes(&[1, 2], fip).is_none(), "short input is no entry");
    }
}
