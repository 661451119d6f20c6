//! Planning lanyard's nftables tables: fixed lists of rules that look
//! networks up in named sets. The number of rules (and the work per packet)
//! does not grow with the number of networks; a network adds elements.
//!
//! - `inet lanyard`: each mode's policy (forward, NAT, isolation);
//! - `bridge lanyard`: what must be decided per bridge port, before the IP
//!   layer: today a DHCP rate per port, so one guest cannot drown its
//!   network's DHCP server.

use crate::kernel::firewall::{
    Action, BaseChain, Chain, ChainType, DataType, Element, Family, Field, Hook, Match, Policy, Rule, Set, Table,
    TableId, Tables, Value,
};
use crate::kernel::ElementChange;
use crate::model::{Mode, NetState, Network, Port};

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

/// lanyard's bridge-family table's identity.
pub fn bridge_table_id() -> TableId {
    TableId { family: Family::Bridge, name: NFT_TABLE.into() }
}

/// Every table lanyard may own, wanted or not.
pub fn table_ids() -> [TableId; 2] {
    [table_id(), bridge_table_id()]
}

/// DHCP packets one bridge port may send per second, sustained, and in a
/// burst: a guest's boot is four packets, a renewal one.
pub const DHCP_PORT_RATE: u32 = 20;
/// See [`DHCP_PORT_RATE`].
pub const DHCP_PORT_BURST: u32 = 40;

/// The tables for the active networks and their ports (only those some
/// network needs).
pub fn tables(networks: &[Network], ports: &[Port]) -> Tables {
    table(networks).into_iter().chain(bridge_table(networks, ports)).map(|t| (t.id.clone(), t)).collect()
}

/// Whether lanyard limits DHCP per port on `net`: an active network it
/// serves DHCP on, but not an open one (lanyard adds no rules there).
fn dhcp_limited(net: &Network) -> bool {
    net.state == NetState::Active && net.mode.serves_dhcp() && net.mode != Mode::Open
}

fn port_element(port: &Port) -> Element {
    Element::key(vec![Value::Ifname(port.ifname.clone())])
}

/// The bridge-family table: a DHCP rate per bridge port, on the ports of
/// the networks in [`dhcp_limited`]. None when there is no such network.
/// (The ports are named one by one: this kernel family has no
/// `meta ibrname` everywhere, see docs/reliability.md.)
pub fn bridge_table(networks: &[Network], ports: &[Port]) -> Option<Table> {
    let limited: std::collections::BTreeSet<std::borrow::Cow<'_, str>> =
        networks.iter().filter(|n| dhcp_limited(n)).map(|n| n.key()).collect();
    if limited.is_empty() {
        return None;
    }
    let mut members = Set::new("dhcp_ports", &[DataType::Ifname], false);
    members.elements = ports.iter().filter(|p| limited.contains(p.net.as_str())).map(port_element).collect();
    let mut meter = Set::new("dhcp_rate", &[DataType::Ifname], false);
    meter.dynamic_timeout = Some(60);
    // Prerouting: an excess DHCP broadcast is dropped before the bridge
    // floods it to every other port, not only before the server sees it.
    let input = Chain {
        name: "prerouting".into(),
        base: base(ChainType::Filter, Hook::Prerouting, 0),
        rules: vec![Rule::new(
            vec![Match::in_set(&[Field::Iifname], "dhcp_ports"), Match::any_of(Field::UdpDport, ports_of(&[67]))],
            Action::DropOverRate {
                fields: vec![Field::Iifname],
                set: "dhcp_rate".into(),
                per_second: DHCP_PORT_RATE,
                burst: DHCP_PORT_BURST,
            },
        )],
    };
    Some(Table { id: bridge_table_id(), sets: vec![members, meter], chains: vec![input] })
}

/// The element changes that adding (or removing) `ports` makes to the
/// bridge table: one per port on a [`dhcp_limited`] network. A port's own
/// change costs one element, not a rebuilt set.
pub fn port_changes(ports: &[Port], networks: &[Network], add: bool) -> Vec<ElementChange> {
    ports
        .iter()
        .filter(|p| networks.iter().any(|n| n.key() == p.net && dhcp_limited(n)))
        .map(|p| ElementChange { table: bridge_table_id(), set: "dhcp_ports".into(), add, element: port_element(p) })
        .collect()
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
    // The interface the host's side of a network is: its bridge, or its
    // gateway's VLAN device on a VLAN-filtering bridge.
    let bridge = |n: &Network| Value::Ifname(n.l3_ifname());
    let pair = |n: &Network| Element::key(vec![bridge(n), Value::Net(n.subnet)]);
    let fill = |mut s: Set, elements: Vec<Element>| {
        s.elements = elements.into_iter().collect();
        s
    };
    use DataType::{Ifname, Ipv4Addr};
    let sets = vec![
        // Every walled-off network's bridge.
        fill(Set::new("bridges", &[Ifname], false), nets.iter().map(|n| Element::key(vec![bridge(n)])).collect()),
        // Bridge to itself (routed hairpin within one network). A shared
        // VLAN-filtering bridge is there too: with br_netfilter, frames it
        // bridges between two guests of one VLAN show it as both ends.
        fill(
            Set::new("same_bridge", &[Ifname, Ifname], false),
            nets.iter()
                .flat_map(|n| {
                    let shared = n.filtering().then(|| Value::Ifname(n.bridge.clone()));
                    std::iter::once(bridge(n)).chain(shared)
                })
                .map(|i| Element::key(vec![i.clone(), i]))
                .collect(),
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

fn ports_of(v: &[u16]) -> Vec<Value> {
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
                rule(vec![set(&[Iifname], "isolated"), Match::any_of(UdpDport, ports_of(&[53, 67]))], Action::Accept),
                rule(vec![set(&[Iifname], "isolated"), Match::any_of(TcpDport, ports_of(&[53]))], Action::Accept),
                rule(vec![set(&[Iifname], "isolated")], Action::Drop),
            ],
        },
        Chain {
            name: "output".into(),
            base: base(ChainType::Filter, Hook::Output, 0),
            rules: vec![
                rule(vec![set(&[Oifname], "isolated"), Match::any_of(UdpSport, ports_of(&[53, 67]))], Action::Accept),
                rule(vec![set(&[Oifname], "isolated"), Match::any_of(TcpSport, ports_of(&[53]))], Action::Accept),
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
