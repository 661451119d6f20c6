//! Planning lanyard's nftables table: a fixed list of rules that look
//! networks up in named sets. The number of rules (and the work per packet)
//! does not grow with the number of networks; a network adds elements.

use crate::kernel::firewall::{
    Action, BaseChain, Chain, ChainType, DataType, Element, Family, Field, Hook, Match, Policy, Rule, Set, Table,
    TableId, Value,
};
use crate::model::{Mode, NetState, Network};

/// Name of lanyard's nftables table (family inet).
pub const NFT_TABLE: &str = "lanyard";

/// The packet mark bit lanyard's forward chain sets on what it accepts, so
/// that another tool's drop-policy forward chain (Docker's) can let exactly
/// that through: see docs/coexistence.md.
pub const ACCEPT_MARK: u32 = 0x2000_0000;

/// Priority of lanyard's forward chain: just before the usual filter
/// chains (0), so its mark is on the packet before theirs look.
pub const FORWARD_PRIORITY: i32 = -1;

/// lanyard's table's identity.
pub fn table_id() -> TableId {
    TableId { family: Family::Inet, name: NFT_TABLE.into() }
}

/// The table for the active networks, None when no network needs rules
/// (then lanyard has no table at all).
pub fn table(networks: &[Network]) -> Option<Table> {
    // Open networks ask for no rules; bridge-mode bridges are the physical
    // LAN (the host's own uplink), not a private network to wall off.
    let nets: Vec<&Network> = networks
        .iter()
        .filter(|n| n.state == NetState::Active && !matches!(n.mode, Mode::Open | Mode::Bridge))
        .collect();
    if nets.is_empty() {
        return None;
    }
    let of = |modes: &'static [Mode]| nets.iter().filter(move |n| modes.contains(&n.mode)).copied();
    let bridge = |n: &Network| Value::Ifname(n.bridge.clone());
    let pair = |n: &Network| Element::key(vec![bridge(n), Value::Net(n.subnet)]);
    let fill = |mut s: Set, elements: Vec<Element>| {
        s.elements = elements.into_iter().collect();
        s
    };
    use DataType::{Ifname, Ipv4Addr};
    let sets = vec![
        // Every walled-off network's bridge.
        fill(Set::new("bridges", &[Ifname], false), nets.iter().map(|n| Element::key(vec![bridge(n)])).collect()),
        // Bridge to itself (routed hairpin within one network).
        fill(
            Set::new("same_bridge", &[Ifname, Ifname], false),
            nets.iter().map(|n| Element::key(vec![bridge(n), bridge(n)])).collect(),
        ),
        // Isolated networks: the host answers DHCP and DNS only.
        fill(
            Set::new("isolated", &[Ifname], false),
            of(&[Mode::Isolated]).map(|n| Element::key(vec![bridge(n)])).collect(),
        ),
        // NAT networks: replies may come in, new connections may not.
        fill(Set::new("nat_nets", &[Ifname, Ipv4Addr], true), of(&[Mode::Nat]).map(pair).collect()),
        // Routed networks: the outside may connect in.
        fill(Set::new("routed_nets", &[Ifname, Ipv4Addr], true), of(&[Mode::Route]).map(pair).collect()),
        // Networks whose guests may go out (with their own source address).
        fill(Set::new("outbound", &[Ifname, Ipv4Addr], true), of(&[Mode::Nat, Mode::Route]).map(pair).collect()),
        // Subnets masqueraded on the way out.
        fill(
            Set::new("masq_nets", &[Ipv4Addr], true),
            of(&[Mode::Nat]).map(|n| Element::key(vec![Value::Net(n.subnet)])).collect(),
        ),
    ];
    Some(Table { id: table_id(), sets, chains: chains() })
}

fn base(kind: ChainType, hook: Hook, priority: i32) -> Option<BaseChain> {
    Some(BaseChain { kind, hook, priority, policy: Policy::Accept })
}

fn ports(v: &[u16]) -> Vec<Value> {
    v.iter().map(|p| Value::Port(*p)).collect()
}

/// The fixed rules. Every rule names a lanyard set, so traffic that is not
/// lanyard's is left to whoever owns it; every chain's policy is accept.
fn chains() -> Vec<Chain> {
    use crate::kernel::firewall::CtState::{Established, Related};
    use Field::*;
    let set = Match::in_set;
    let rule = Rule::new;
    let accept = Action::MarkAccept(ACCEPT_MARK);
    vec![
        Chain {
            name: "input".into(),
            base: base(ChainType::Filter, Hook::Input, 0),
            rules: vec![
                rule(vec![set(&[Iifname], "isolated"), Match::any_of(UdpDport, ports(&[53, 67]))], Action::Accept),
                rule(vec![set(&[Iifname], "isolated"), Match::any_of(TcpDport, ports(&[53]))], Action::Accept),
                rule(vec![set(&[Iifname], "isolated")], Action::Drop),
            ],
        },
        Chain {
            name: "output".into(),
            base: base(ChainType::Filter, Hook::Output, 0),
            rules: vec![
                rule(vec![set(&[Oifname], "isolated"), Match::any_of(UdpSport, ports(&[53, 67]))], Action::Accept),
                rule(vec![set(&[Oifname], "isolated"), Match::any_of(TcpSport, ports(&[53]))], Action::Accept),
                rule(vec![set(&[Oifname], "isolated")], Action::Drop),
            ],
        },
        Chain {
            name: "forward".into(),
            base: base(ChainType::Filter, Hook::Forward, FORWARD_PRIORITY),
            rules: vec![
                rule(vec![set(&[Iifname, Oifname], "same_bridge")], accept.clone()),
                rule(vec![set(&[Iifname], "bridges"), set(&[Oifname], "bridges")], Action::Reject),
                rule(
                    vec![Match::ct_state(&[Established, Related]), set(&[Oifname, IpDaddr], "nat_nets")],
                    accept.clone(),
                ),
                rule(vec![set(&[Oifname, IpDaddr], "routed_nets")], accept.clone()),
                rule(vec![set(&[Iifname, IpSaddr], "outbound")], accept),
                rule(vec![set(&[Oifname], "bridges")], Action::Reject),
                rule(vec![set(&[Iifname], "bridges")], Action::Reject),
            ],
        },
        Chain {
            name: "postrouting".into(),
            base: base(ChainType::Nat, Hook::Postrouting, 100),
            rules: vec![
                rule(vec![set(&[Oifname, IpSaddr], "nat_nets")], Action::Return),
                rule(
                    vec![
                        set(&[IpSaddr], "masq_nets"),
                        Match::none_of(
                            IpDaddr,
                            vec![Value::Net("224.0.0.0/24".parse().expect("literal")), Value::Ip([255; 4].into())],
                        ),
                    ],
                    Action::Masquerade,
                ),
            ],
        },
    ]
}
