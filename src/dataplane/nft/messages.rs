//! The nf_tables netlink messages lanyard reads and writes, by hand: which
//! table a notification concerns, and the one request the driver makes
//! itself (NFT_MSG_GETTABLE, for a table's comment). Only a few bytes are
//! needed (the netlink header, the nfgenmsg family, an attribute or two),
//! so they are parsed with every bound checked: whatever the kernel (or
//! anyone able to write to the socket) sends, this returns an answer or
//! nothing, never panics.

use crate::kernel::firewall::{Family, TableId};
use crate::kernel::KernelEvent;

/// `struct nlmsghdr`: length, type, flags, sequence, port id.
const NLMSG_HDRLEN: usize = 16;
/// `struct nfgenmsg`: family, version, resource id.
const NFGENMSG_LEN: usize = 4;
/// `struct nlattr`: length, type.
const NLA_HDRLEN: usize = 4;
/// Attribute type bits (the top two are the nested and byte-order flags).
const NLA_TYPE_MASK: u16 = 0x3fff;
/// `NLMSG_ERROR`: an error (or acknowledgement) for a request.
const NLMSG_ERROR: u16 = 2;
/// `NLM_F_REQUEST`.
const NLM_F_REQUEST: u16 = 1;

/// `NFNL_SUBSYS_NFTABLES` (linux/netfilter/nfnetlink.h): the high byte of
/// an nf_tables message type.
const NFNL_SUBSYS_NFTABLES: u16 = 10;

/// nf_tables message types (linux/netfilter/nf_tables.h).
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
/// Messages that describe no table: the end of a transaction
/// (NFT_MSG_NEWGEN), its query, and packet traces.
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFT_MSG_TRACE: u16 = 17;

/// The attribute that names the table: NFTA_TABLE_NAME, NFTA_CHAIN_TABLE,
/// NFTA_RULE_TABLE, NFTA_SET_TABLE, NFTA_SET_ELEM_LIST_TABLE,
/// NFTA_OBJ_TABLE and NFTA_FLOWTABLE_TABLE are all attribute 1.
const NFTA_TABLE: u16 = 1;
/// NFTA_TABLE_USERDATA: where nft keeps a table's comment.
const NFTA_TABLE_USERDATA: u16 = 6;
/// In that user data (libnftnl's TLVs of a u8 type and a u8 length), the
/// comment, a NUL-terminated string: NFTNL_UDATA_TABLE_COMMENT.
const UDATA_TABLE_COMMENT: u8 = 0;

/// NFPROTO_* values (linux/netfilter.h) of the families a [`TableId`] can
/// name; tables of other families (ip6, arp, netdev) are never lanyard's.
fn family(nfproto: u8) -> Option<Family> {
    match nfproto {
        1 => Some(Family::Inet),
        2 => Some(Family::Ip),
        7 => Some(Family::Bridge),
        _ => None,
    }
}

fn nfproto(family: Family) -> u8 {
    match family {
        Family::Inet => 1,
        Family::Ip => 2,
        Family::Bridge => 7,
    }
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

/// Netlink's 4-byte alignment.
fn align(len: usize) -> Option<usize> {
    Some(len.checked_add(3)? & !3)
}

/// One netlink message: its type, sequence number and body.
pub(crate) struct Message<'a> {
    /// Subsystem << 8 | message type.
    pub(crate) kind: u16,
    /// The request it answers.
    pub(crate) seq: u32,
    /// What follows the netlink header (the nfgenmsg, then attributes).
    pub(crate) body: &'a [u8],
}

/// The messages of a datagram, in order. A malformed message ends the
/// sequence: what follows it cannot be framed.
pub(crate) fn messages(datagram: &[u8]) -> impl Iterator<Item = Message<'_>> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let len = usize::try_from(u32_at(datagram, at)?).ok()?;
        let end = at.checked_add(len).filter(|&end| len >= NLMSG_HDRLEN && end <= datagram.len())?;
        let message = Message {
            kind: u16_at(datagram, at + 4)?,
            seq: u32_at(datagram, at + 8)?,
            body: datagram.get(at + NLMSG_HDRLEN..end)?,
        };
        at = at.checked_add(align(len)?)?;
        Some(message)
    })
}

/// The attributes after a body's nfgenmsg: (type without flags, payload).
/// A malformed attribute ends the sequence.
fn attributes(body: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    nested(body.get(NFGENMSG_LEN..).unwrap_or_default())
}

/// The attributes in `bytes` (a nested attribute's payload, or a body after
/// its nfgenmsg): type (flags masked off) and payload. A malformed one ends
/// the sequence.
pub(crate) fn nested(bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(rest, 0)?);
        let kind = u16_at(rest, 2)? & NLA_TYPE_MASK;
        let payload = rest.get(NLA_HDRLEN..len)?;
        rest = rest.get(align(len)?..).unwrap_or_default();
        Some((kind, payload))
    })
}

/// A NUL-terminated (or unterminated) UTF-8 string attribute.
fn string(payload: &[u8]) -> Option<&str> {
    let bytes = payload.split(|b| *b == 0).next().unwrap_or_default();
    std::str::from_utf8(bytes).ok()
}

/// The events in one datagram of the NFNLGRP_NFTABLES group, in order.
pub fn events(datagram: &[u8]) -> Vec<KernelEvent> {
    messages(datagram).filter_map(|m| table_of(m.kind, m.body)).map(|table| KernelEvent::Firewall { table }).collect()
}

/// The table an nf_tables message of type `kind` concerns, from its body.
fn table_of(kind: u16, body: &[u8]) -> Option<TableId> {
    if kind >> 8 != NFNL_SUBSYS_NFTABLES || matches!(kind & 0xff, NFT_MSG_NEWGEN | NFT_MSG_GETGEN | NFT_MSG_TRACE) {
        return None;
    }
    let family = family(*body.first()?)?;
    let (_, name) = attributes(body).find(|(kind, _)| *kind == NFTA_TABLE)?;
    let name = string(name).filter(|n| !n.is_empty())?;
    Some(TableId { family, name: name.to_string() })
}

/// An NFT_MSG_GETTABLE request for `table`, numbered `seq`.
pub fn get_table_request(table: &TableId, seq: u32) -> Vec<u8> {
    let mut name = table.name.as_bytes().to_vec();
    name.push(0);
    let attr_len = NLA_HDRLEN + name.len();
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + align(attr_len).unwrap_or(attr_len);
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    m.extend_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETTABLE).to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    m.extend_from_slice(&[nfproto(table.family), 0, 0, 0]); // family, NFNETLINK_V0, res_id
    m.extend_from_slice(&u16::try_from(attr_len).unwrap_or(u16::MAX).to_ne_bytes());
    m.extend_from_slice(&NFTA_TABLE.to_ne_bytes());
    m.extend_from_slice(&name);
    m.resize(len, 0);
    m
}

/// An NFT_MSG_GETGEN request (the ruleset's generation), numbered `seq`.
pub fn get_gen_request(seq: u32) -> Vec<u8> {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    m.extend_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN).to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]); // AF_UNSPEC, NFNETLINK_V0, res_id
    m
}

/// NFTA_GEN_ID: the generation, big-endian.
const NFTA_GEN_ID: u16 = 1;

/// The answer to GETGEN request `seq` in a datagram, if it holds one: the
/// generation, or the errno it failed with.
pub fn gen_reply(datagram: &[u8], seq: u32) -> Option<Result<u32, i32>> {
    messages(datagram).filter(|m| m.seq == seq).find_map(|m| {
        if m.kind == NLMSG_ERROR {
            let errno = i32::from_ne_bytes(m.body.get(..4)?.try_into().ok()?);
            return (errno != 0).then(|| Err(errno.checked_neg().unwrap_or(i32::MAX)));
        }
        if m.kind != NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN {
            return None;
        }
        let (_, id) = attributes(m.body).find(|(kind, _)| *kind == NFTA_GEN_ID)?;
        Some(Ok(u32::from_be_bytes(id.get(..4)?.try_into().ok()?)))
    })
}

/// The kernel's answer to a GETTABLE request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableReply {
    /// The table exists, with this comment (None: it has none).
    Found(Option<String>),
    /// The request failed with this errno (ENOENT: no such table).
    Error(i32),
}

/// The answer to request `seq` in a datagram, if it holds one.
pub fn table_reply(datagram: &[u8], seq: u32) -> Option<TableReply> {
    messages(datagram).filter(|m| m.seq == seq).find_map(|m| {
        if m.kind == NLMSG_ERROR {
            // struct nlmsgerr: a negative errno, then the request's header.
            let errno = i32::from_ne_bytes(m.body.get(..4)?.try_into().ok()?);
            return (errno != 0).then(|| TableReply::Error(errno.checked_neg().unwrap_or(i32::MAX)));
        }
        if m.kind != NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWTABLE {
            return None;
        }
        let comment = attributes(m.body)
            .find(|(kind, _)| *kind == NFTA_TABLE_USERDATA)
            .and_then(|(_, udata)| comment_in_user_data(udata));
        Some(TableReply::Found(comment))
    })
}

/// The comment among libnftnl's user data TLVs (u8 type, u8 length, value).
fn comment_in_user_data(mut udata: &[u8]) -> Option<String> {
    while let [kind, len, rest @ ..] = udata {
        let value = rest.get(..usize::from(*len))?;
        if *kind == UDATA_TABLE_COMMENT {
            return string(value).map(str::to_string);
        }
        udata = &rest[value.len()..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A netlink message: header, nfgenmsg, attributes (type, payload).
    fn message(kind: u16, family: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        message_numbered(kind, 0, family, attrs)
    }

    fn message_numbered(kind: u16, seq: u32, family: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![family, 0, 0, 0];
        for (t, payload) in attrs {
            let len = NLA_HDRLEN + payload.len();
            body.extend_from_slice(&(len as u16).to_ne_bytes());
            body.extend_from_slice(&t.to_ne_bytes());
            body.extend_from_slice(payload);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 2]);
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&[0; 4]);
        m.extend_from_slice(&body);
        m
    }

    fn nft(msg: u16) -> u16 {
        NFNL_SUBSYS_NFTABLES << 8 | msg
    }

    fn lanyard() -> KernelEvent {
        KernelEvent::Firewall { table: TableId { family: Family::Inet, name: "lanyard".into() } }
    }

    #[test]
    fn table_chain_rule_set_and_element_messages_name_their_table() {
        // NEWTABLE, DELTABLE, NEWCHAIN, DELCHAIN, NEWRULE, DELRULE, NEWSET,
        // DELSET, NEWSETELEM, DELSETELEM.
        for msg in [0, 2, 3, 5, 6, 8, 9, 11, 12, 14] {
            let m = message(nft(msg), 1, &[(1, b"lanyard\0"), (2, b"bridges\0")]);
            assert_eq!(events(&m), [lanyard()], "message {msg}");
        }
        let ip = message(nft(0), 2, &[(1, b"nat\0")]);
        assert_eq!(events(&ip), [KernelEvent::Firewall { table: TableId { family: Family::Ip, name: "nat".into() } }]);
    }

    #[test]
    fn the_table_attribute_need_not_come_first() {
        let m = message(nft(12), 1, &[(3, &[0, 0, 0, 9]), (0x8000 | 1, b"lanyard\0")]);
        assert_eq!(events(&m), [lanyard()]);
    }

    #[test]
    fn several_messages_in_one_datagram() {
        let mut d = message(nft(8), 1, &[(1, b"lanyard\0")]);
        d.extend(message(nft(15), 0, &[(1, &[0, 0, 0, 1])])); // NEWGEN: no table
        d.extend(message(nft(2), 7, &[(1, b"br\0")]));
        assert_eq!(
            events(&d),
            [lanyard(), KernelEvent::Firewall { table: TableId { family: Family::Bridge, name: "br".into() } }]
        );
    }

    #[test]
    fn other_subsystems_families_and_tableless_messages_are_ignored() {
        assert!(events(&message(1 << 8, 1, &[(1, b"lanyard\0")])).is_empty()); // ctnetlink
        assert!(events(&message(nft(0), 10, &[(1, b"lanyard\0")])).is_empty()); // ip6
        assert!(events(&message(nft(17), 1, &[(1, b"lanyard\0")])).is_empty()); // trace
        assert!(events(&message(nft(6), 1, &[(2, b"chain\0")])).is_empty()); // no table attribute
        assert!(events(&message(nft(6), 1, &[(1, b"\0")])).is_empty()); // empty name
        assert!(events(&message(nft(6), 1, &[(1, &[0xff, 0xfe, 0])])).is_empty());
        // not UTF-8
    }

    #[test]
    fn truncated_and_garbage_input_never_panics() {
        let good = message(nft(12), 1, &[(1, b"lanyard\0"), (2, b"bridges\0")]);
        // Every prefix of a valid message.
        for cut in 0..good.len() {
            assert!(events(&good[..cut]).is_empty(), "cut at {cut}");
        }
        // Lengths that lie: header length 0, shorter than a header, past
        // the end, u32::MAX; an attribute longer than the message.
        for len in [0u32, 4, 15, good.len() as u32 + 1, u32::MAX] {
            let mut bad = good.clone();
            bad[..4].copy_from_slice(&len.to_ne_bytes());
            assert!(events(&bad).is_empty(), "length {len}");
        }
        let mut bad_attr = good.clone();
        bad_attr[NLMSG_HDRLEN + NFGENMSG_LEN..][..2].copy_from_slice(&u16::MAX.to_ne_bytes());
        assert!(events(&bad_attr).is_empty());
        let mut zero_attr = good.clone();
        zero_attr[NLMSG_HDRLEN + NFGENMSG_LEN..][..2].copy_from_slice(&0u16.to_ne_bytes());
        assert!(events(&zero_attr).is_empty());
        // Pseudo-random bytes, and valid messages followed by them.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for round in 0..2000 {
            let len = round % 97;
            let mut junk = Vec::with_capacity(len);
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                junk.push(state as u8);
            }
            let _ = events(&junk);
            let mut after = good.clone();
            after.extend_from_slice(&junk);
            assert_eq!(events(&after).first(), Some(&lanyard()));
        }
    }

    fn lanyard_id() -> TableId {
        TableId { family: Family::Inet, name: "lanyard".into() }
    }

    #[test]
    fn the_gettable_request_names_family_and_table() {
        let request = get_table_request(&lanyard_id(), 77);
        assert_eq!(request.len() % 4, 0);
        assert_eq!(u32_at(&request, 0), Some(request.len() as u32));
        assert_eq!(u16_at(&request, 6), Some(NLM_F_REQUEST));
        let parsed: Vec<Message<'_>> = messages(&request).collect();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].kind, nft(NFT_MSG_GETTABLE));
        assert_eq!(parsed[0].seq, 77);
        assert_eq!(parsed[0].body[0], 1, "NFPROTO_INET");
        assert_eq!(attributes(parsed[0].body).collect::<Vec<_>>(), [(NFTA_TABLE, &b"lanyard\0"[..])]);
    }

    /// libnftnl user data: (type, value) TLVs.
    fn user_data(items: &[(u8, &[u8])]) -> Vec<u8> {
        items.iter().flat_map(|(t, v)| [vec![*t, v.len() as u8], v.to_vec()].concat()).collect()
    }

    #[test]
    fn the_table_reply_carries_the_comment() {
        // Newer nft versions store their version before or after the comment.
        let udata = user_data(&[(1, &[1, 0, 6, 0]), (0, b"lanyard:00112233aabbccdd\0"), (2, &[9; 8])]);
        let reply = message_numbered(nft(NFT_MSG_NEWTABLE), 77, 1, &[(1, b"lanyard\0"), (2, &[0; 4]), (6, &udata)]);
        assert_eq!(table_reply(&reply, 77), Some(TableReply::Found(Some("lanyard:00112233aabbccdd".into()))));
        assert_eq!(table_reply(&reply, 78), None, "another request's answer");
        let bare = message_numbered(nft(NFT_MSG_NEWTABLE), 5, 1, &[(1, b"lanyard\0")]);
        assert_eq!(table_reply(&bare, 5), Some(TableReply::Found(None)));
    }

    #[test]
    fn a_missing_table_is_an_errno() {
        let mut body = (-libc::ENOENT).to_ne_bytes().to_vec();
        body.extend_from_slice(&get_table_request(&lanyard_id(), 9)[..NLMSG_HDRLEN]);
        let mut error = ((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes().to_vec();
        error.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        error.extend_from_slice(&[0; 2]);
        error.extend_from_slice(&9u32.to_ne_bytes());
        error.extend_from_slice(&[0; 4]);
        error.extend_from_slice(&body);
        assert_eq!(table_reply(&error, 9), Some(TableReply::Error(libc::ENOENT)));
        // An acknowledgement (errno 0) is not an answer.
        error[NLMSG_HDRLEN..NLMSG_HDRLEN + 4].copy_from_slice(&0i32.to_ne_bytes());
        assert_eq!(table_reply(&error, 9), None);
    }

    #[test]
    fn bad_user_data_or_replies_never_panic() {
        for udata in
            [vec![0u8], vec![0, 200, b'x'], vec![0, 3, 0xff, 0xfe, 0], vec![5, 1], user_data(&[(0, b"lanyard:no-nul")])]
        {
            let reply = message_numbered(nft(NFT_MSG_NEWTABLE), 1, 1, &[(6, &udata)]);
            match table_reply(&reply, 1) {
                Some(TableReply::Found(c)) => assert!(c.is_none() || c.as_deref() == Some("lanyard:no-nul"), "{c:?}"),
                other => panic!("{other:?}"),
            }
        }
        let reply =
            message_numbered(nft(NFT_MSG_NEWTABLE), 1, 1, &[(6, &user_data(&[(0, b"lanyard:0011223344556677\0")]))]);
        for cut in 0..reply.len() {
            assert_eq!(table_reply(&reply[..cut], 1), None, "cut at {cut}");
        }
        // An error message too short to hold its errno.
        let mut short_error = ((NLMSG_HDRLEN + 2) as u32).to_ne_bytes().to_vec();
        short_error.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        short_error.extend_from_slice(&[0; 2]);
        short_error.extend_from_slice(&1u32.to_ne_bytes());
        short_error.extend_from_slice(&[0; 4]);
        short_error.extend_from_slice(&[0xff; 2]);
        assert_eq!(table_reply(&short_error, 1), None);
    }
}
