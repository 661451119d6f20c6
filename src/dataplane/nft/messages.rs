//! Reading nf_tables notifications: which table a netlink message
//! concerns. Only a few bytes are needed (the netlink header, the
//! nfgenmsg family and the first attribute, which names the table in every
//! nf_tables object message), so they are parsed by hand with every bound
//! checked: whatever the kernel (or anyone able to write to the socket)
//! sends, this returns events or nothing, never panics.

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

/// `NFNL_SUBSYS_NFTABLES` (linux/netfilter/nfnetlink.h): the high byte of
/// an nf_tables message type.
const NFNL_SUBSYS_NFTABLES: u16 = 10;

/// nf_tables messages that describe no table (linux/netfilter/nf_tables.h):
/// NFT_MSG_NEWGEN (the end of a transaction), NFT_MSG_GETGEN and
/// NFT_MSG_TRACE.
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFT_MSG_TRACE: u16 = 17;

/// The attribute that names the table: NFTA_TABLE_NAME, NFTA_CHAIN_TABLE,
/// NFTA_RULE_TABLE, NFTA_SET_TABLE, NFTA_SET_ELEM_LIST_TABLE,
/// NFTA_OBJ_TABLE and NFTA_FLOWTABLE_TABLE are all attribute 1.
const NFTA_TABLE: u16 = 1;

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

/// The events in one datagram of the NFNLGRP_NFTABLES group, in order. A
/// malformed message ends the parse (what follows cannot be framed).
pub fn events(datagram: &[u8]) -> Vec<KernelEvent> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some(len) = u32_at(datagram, at).and_then(|l| usize::try_from(l).ok()) {
        let Some(end) = at.checked_add(len).filter(|&end| len >= NLMSG_HDRLEN && end <= datagram.len()) else {
            break;
        };
        let Some(kind) = u16_at(datagram, at + 4) else { break };
        if let Some(table) = table_of(kind, &datagram[at + NLMSG_HDRLEN..end]) {
            out.push(KernelEvent::Firewall { table });
        }
        match align(len) {
            Some(next) => at += next,
            None => break,
        }
    }
    out
}

/// The table an nf_tables message of type `kind` concerns, from its body.
fn table_of(kind: u16, body: &[u8]) -> Option<TableId> {
    if kind >> 8 != NFNL_SUBSYS_NFTABLES || matches!(kind & 0xff, NFT_MSG_NEWGEN | NFT_MSG_GETGEN | NFT_MSG_TRACE) {
        return None;
    }
    let family = family(*body.first()?)?;
    let mut attrs = body.get(NFGENMSG_LEN..)?;
    while attrs.len() >= NLA_HDRLEN {
        let len = usize::from(u16_at(attrs, 0)?);
        let kind = u16_at(attrs, 2)? & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > attrs.len() {
            return None;
        }
        if kind == NFTA_TABLE {
            let value = &attrs[NLA_HDRLEN..len];
            let name = value.split(|b| *b == 0).next().unwrap_or_default();
            let name = std::str::from_utf8(name).ok().filter(|n| !n.is_empty())?;
            return Some(TableId { family, name: name.to_string() });
        }
        attrs = attrs.get(align(len)?..).unwrap_or_default();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A netlink message: header, nfgenmsg, attributes (type, payload).
    fn message(kind: u16, family: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
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
        m.extend_from_slice(&[0; 10]);
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
}
