//! Planning lanyard's nftables tables: fixed lists of rules that look
//! networks up in named sets. The number of rules (and the work per packet)
//! does not grow with the number of networks; a network adds elements.
//!
//! - `inet lanyard`: each mode's policy (forward, NAT, isolation) and the
//!   floating IPs: one DNAT map and one SNAT map, so a floating IP costs
//!   two map elements and every packet one lookup, however many there are;
//!   and the port forwards, likewise: one DNAT map keyed by the host's
//!   address, protocol and port, and two sets;
//! - `bridge lanyard`: what must be decided per bridge port, before the IP
//!   layer: a DHCP rate per port, so one guest cannot drown its network's
//!   DHCP server, and anti-spoofing, so a guest sends only from its own
//!   MAC and IP (docs/anti-spoofing.md).

use super::floating::{associations, Association};
use super::forwards::{live_forwards, LiveForward};
use super::PlanContext;
use crate::kernel::firewall::{
    Action, AddrType, BaseChain, Chain, ChainType, DataType, Element, Family, Field, Hook, Match, Policy, Proto, Rule,
    Set, Table, TableId, Tables, Value,
};
use crate::kernel::ElementChange;
use crate::model::grants::Grant;
use crate::model::{Mode, NetState, Network, Port};
use ipnet::Ipv4Net;
use std::collections::BTreeSet;

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

/// The tables for the active networks, their ports and the projects'
/// floating IPs (only those some network needs).
pub fn tables(networks: &[Network], ports: &[Port], policy: PlanContext<'_>) -> Tables {
    let live = associations(networks, ports, policy);
    let forwards = live_forwards(networks, ports, policy.forwards);
    table(networks, &live, &forwards, policy.grants)
        .into_iter()
        .chain(bridge_table(networks, ports, policy.cluster))
        .map(|t| (t.id.clone(), t))
        .collect()
}

/// The elements one live floating IP puts in the `inet` table's maps and
/// sets: inbound DNAT, the port's own SNAT, and its fixed IP as one that
/// new inbound flows may reach.
fn association_elements(a: &Association) -> [(&'static str, Element); 3] {
    [
        ("fip_dnat", Element { key: vec![Value::Ip(a.fip)], data: vec![Value::Ip(a.fixed)] }),
        ("fip_snat", Element { key: vec![Value::Ip(a.fixed)], data: vec![Value::Ip(a.fip)] }),
        ("fip_fixed", Element::key(vec![Value::Ip(a.fixed)])),
    ]
}

/// The element changes that make (or, with `add` false, unmake) the live
/// associations `changed`: six elements per floating IP, never a rule.
pub fn association_changes(changed: &[Association], add: bool) -> Vec<ElementChange> {
    changed
        .iter()
        .flat_map(association_elements)
        .map(|(set, element)| ElementChange { table: table_id(), set: set.into(), add, element })
        .collect()
}

/// The elements one live port forward puts in the `inet` table: the
/// DNAT from the host's address (every address: 0.0.0.0/0, the map is
/// an interval map), protocol and port to the guest's address and port;
/// the guest's address, protocol and port as one that DNATed flows may
/// reach; and its network's subnet with the guest's address, whose
/// flows through the host are masqueraded (hairpin). Two forwards to one
/// guest port share the last two: see [`forward_changes`].
fn forward_elements(f: &LiveForward) -> [(&'static str, Element); 3] {
    let any = Ipv4Net::default();
    let address = f.address.map_or(any, Ipv4Net::from);
    let host32 = Ipv4Net::from(f.target);
    [
        (
            "port_fwd",
            Element {
                key: vec![Value::Net(address), Value::Proto(f.proto), Value::Port(f.host_port)],
                data: vec![Value::Ip(f.target), Value::Port(f.to_port)],
            },
        ),
        ("fwd_targets", Element::key(vec![Value::Ip(f.target), Value::Proto(f.proto), Value::Port(f.to_port)])),
        ("fwd_hairpin", Element::key(vec![Value::Net(f.subnet), Value::Net(host32)])),
    ]
}

/// Every element the live forwards `live` put in the `inet` table, once
/// each.
fn forward_element_set(live: &[LiveForward]) -> BTreeSet<(&'static str, Element)> {
    live.iter().flat_map(forward_elements).collect()
}

/// The element changes that take the table from the live forwards
/// `before` to `after`: the difference of their elements, so that an
/// element two forwards share (one guest port behind two host ports)
/// stays while either does. Elements only, never a rule.
pub fn forward_changes(before: &[LiveForward], after: &[LiveForward]) -> Vec<ElementChange> {
    let (old, new) = (forward_element_set(before), forward_element_set(after));
    let change = |add: bool, (set, element): &(&'static str, Element)| ElementChange {
        table: table_id(),
        set: (*set).into(),
        add,
        element: element.clone(),
    };
    old.difference(&new).map(|e| change(false, e)).chain(new.difference(&old).map(|e| change(true, e))).collect()
}

/// Whether lanyard limits DHCP per port on `net`: an active network it
/// serves DHCP on, but not an open one (lanyard adds no rules there).
fn dhcp_limited(net: &Network) -> bool {
    net.state == NetState::Active && net.mode.serves_dhcp() && net.mode != Mode::Open
}

fn port_element(port: &Port) -> Element {
    Element::key(vec![Value::Ifname(port.ifname.clone())])
}

/// Whether lanyard checks the sources of what guests send on `net`'s
/// ports: an active network, but not an open one (no rules there).
fn guards(net: &Network) -> bool {
    net.state == NetState::Active && net.mode != Mode::Open
}

/// Whether `port` is checked for spoofing: asked for (the default) and
/// not a trunk port, whose tagged frames carry other VLANs' sources.
fn guarded(port: &Port) -> bool {
    port.spoof_check && port.trunk.is_empty()
}

/// Each set of the bridge table and the elements one port puts in it.
fn port_elements(port: &Port, net: &Network) -> Vec<(&'static str, Element)> {
    let name = || Value::Ifname(port.ifname.clone());
    let mut out = Vec::new();
    if dhcp_limited(net) {
        out.push(("dhcp_ports", port_element(port)));
    }
    if guards(net) && guarded(port) {
        out.push(("guarded", port_element(port)));
        out.push(("port_mac", Element::key(vec![name(), Value::Mac(port.mac)])));
        if let Some(ip) = port.ip {
            out.push(("guarded_ip", port_element(port)));
            out.push(("port_ip", Element::key(vec![name(), Value::Ip(ip)])));
        }
    }
    out
}

/// The bridge-family table: a DHCP rate per bridge port on the networks in
/// [`dhcp_limited`], and anti-spoofing on the ports of the networks in
/// [`guards`]. None when there is no such network. The rules are fixed;
/// a port adds elements (see [`port_changes`]).
/// (The ports are named one by one: this kernel family has no
/// `meta ibrname` everywhere, see docs/reliability.md.)
///
/// On a cluster member (`cluster`) the table also keeps each host's
/// gateway to itself (the anycast gateway, docs/multi-host.md): every
/// host's bridge has the same gateway address and MAC, so ARP for or
/// from the gateway and DHCP never cross a network's VXLAN port, in or
/// out; each guest's first hop, DHCP and DNS are its own host's.
pub fn bridge_table(networks: &[Network], ports: &[Port], cluster: bool) -> Option<Table> {
    // Every network in dhcp_limited is in guards too: the table exists
    // whenever a port of either kind may come, so a port's elements
    // always have their sets.
    let nets: std::collections::BTreeMap<std::borrow::Cow<'_, str>, &Network> =
        networks.iter().filter(|n| guards(n)).map(|n| (n.key(), n)).collect();
    if nets.is_empty() {
        return None;
    }
    use DataType::{EtherAddr, Ifname, Ipv4Addr};
    let mut sets = vec![
        Set::new("dhcp_ports", &[Ifname], false),
        Set::new("dhcp_rate", &[Ifname], false),
        // Ports whose guests may send only from their own MAC...
        Set::new("guarded", &[Ifname], false),
        Set::new("port_mac", &[Ifname, EtherAddr], false),
        // ... and, when they have a fixed IP, only from it.
        Set::new("guarded_ip", &[Ifname], false),
        Set::new("port_ip", &[Ifname, Ipv4Addr], false),
    ];
    sets[1].dynamic_timeout = Some(60);
    let mut chains = Vec::new();
    if cluster {
        let mut vxlan_ports = Set::new("overlay_ports", &[Ifname], false);
        let mut gateways = Set::new("overlay_gw", &[Ifname, Ipv4Addr], false);
        for net in nets.values() {
            let Some(port) = super::overlay::crossing_port(net) else { continue };
            let port = Value::Ifname(port);
            vxlan_ports.elements.insert(Element::key(vec![port.clone()]));
            if net.has_host_address() {
                gateways.elements.insert(Element::key(vec![port, Value::Ip(net.gateway)]));
            }
        }
        sets.extend([vxlan_ports, gateways]);
        // Out through a VXLAN port: before the device encapsulates it.
        chains.push(Chain {
            name: "postrouting".into(),
            base: base(ChainType::Filter, Hook::Postrouting, 0),
            rules: overlay_rules(Field::Oifname),
        });
    }
    for p in ports {
        let Some(net) = nets.get(p.net.as_str()) else { continue };
        for (set, element) in port_elements(p, net) {
            if let Some(s) = sets.iter_mut().find(|s| s.name == set) {
                s.elements.insert(element);
            }
        }
    }
    // Prerouting: an excess DHCP broadcast or a forged frame is dropped
    // before the bridge floods it to every other port, not only before
    // the host sees it.
    let mut input_rules = if cluster { overlay_rules(Field::Iifname) } else { Vec::new() };
    input_rules.extend(rules());
    let input =
        Chain { name: "prerouting".into(), base: base(ChainType::Filter, Hook::Prerouting, 0), rules: input_rules };
    chains.insert(0, input);
    Some(Table { id: bridge_table_id(), sets, chains })
}

/// What never crosses a VXLAN port (`port` is the field naming it:
/// in or out): DHCP (each host serves its own guests), and ARP asking
/// for or coming from the gateway (every host answers for the same
/// gateway address and MAC, so the asking guest's own host answers; a
/// guest on another host that answered a host's ARP would send its reply
/// to its own host's gateway, which has the same MAC).
fn overlay_rules(port: Field) -> Vec<Rule> {
    use Field::{ArpDaddrIp, ArpSaddrIp, UdpDport};
    vec![
        Rule::new(
            vec![Match::in_set(&[port], "overlay_ports"), Match::any_of(UdpDport, ports_of(&[67, 68]))],
            Action::Drop,
        ),
        Rule::new(vec![Match::in_set(&[port, ArpDaddrIp], "overlay_gw")], Action::Drop),
        Rule::new(vec![Match::in_set(&[port, ArpSaddrIp], "overlay_gw")], Action::Drop),
    ]
}

/// The bridge table's fixed rules: the DHCP rate, then anti-spoofing.
fn rules() -> Vec<Rule> {
    use crate::kernel::firewall::{EtherType, Icmpv6Type};
    use Field::*;
    let set = Match::in_set;
    let not_in = Match::not_in_set;
    let guarded = || set(&[Iifname], "guarded");
    let guarded_ip = || set(&[Iifname], "guarded_ip");
    let unspecified = || vec![Value::Ip(std::net::Ipv4Addr::UNSPECIFIED)];
    let ether_types = [EtherType::Ip, EtherType::Arp, EtherType::Ip6].map(Value::EtherType).to_vec();
    vec![
        Rule::new(
            vec![set(&[Iifname], "dhcp_ports"), Match::any_of(UdpDport, ports_of(&[67]))],
            Action::DropOverRate {
                fields: vec![Iifname],
                set: "dhcp_rate".into(),
                per_second: DHCP_PORT_RATE,
                burst: DHCP_PORT_BURST,
            },
        ),
        // Nothing but IPv4, ARP and IPv6 (no VLAN tags, no STP, no LLDP).
        Rule::new(vec![guarded(), Match::none_of(EtherType, ether_types)], Action::Drop),
        // Only the port's own MAC.
        Rule::new(vec![guarded(), not_in(&[Iifname, EtherSaddr], "port_mac")], Action::Drop),
        // No DHCP server, no IPv6 router.
        Rule::new(vec![guarded(), Match::any_of(UdpSport, ports_of(&[67]))], Action::Drop),
        Rule::new(
            vec![guarded(), Match::any_of(Icmpv6Type, vec![Value::Icmpv6Type(Icmpv6Type::NdRouterAdvert)])],
            Action::Drop,
        ),
        // A DHCP client before it has its address sends from 0.0.0.0; it
        // leaves this chain here (so rules for IPv4 sources go below it).
        Rule::new(
            vec![guarded_ip(), Match::any_of(IpSaddr, unspecified()), Match::any_of(UdpDport, ports_of(&[67]))],
            Action::Return,
        ),
        // Only the port's own IPv4 address.
        Rule::new(vec![guarded_ip(), not_in(&[Iifname, IpSaddr], "port_ip")], Action::Drop),
        // ARP only for the port's own MAC and address (a probe, from
        // 0.0.0.0, stays allowed: it is how a guest checks its address).
        Rule::new(vec![guarded(), not_in(&[Iifname, ArpSaddrEther], "port_mac")], Action::Drop),
        Rule::new(
            vec![guarded_ip(), Match::none_of(ArpSaddrIp, unspecified()), not_in(&[Iifname, ArpSaddrIp], "port_ip")],
            Action::Drop,
        ),
    ]
}

/// The element changes that adding (or removing) `ports` makes to the
/// bridge table: a port's DHCP rate and anti-spoofing elements. A port's
/// own change costs a few elements, never a rebuilt set or a rule.
pub fn port_changes(ports: &[Port], networks: &[Network], add: bool) -> Vec<ElementChange> {
    ports
        .iter()
        .filter_map(|p| networks.iter().find(|n| n.key() == p.net && guards(n)).map(|n| (p, n)))
        .flat_map(|(p, n)| port_elements(p, n))
        .map(|(set, element)| ElementChange { table: bridge_table_id(), set: set.into(), add, element })
        .collect()
}

/// The elements of the grant sets: for each grant, every pair of an active
/// walled-off network of the granting project and one of the granted
/// project (by subnet), into the set for what it carries; and each pair
/// once into `grant_pairs`, which lets the answers back.
fn grant_elements(nets: &[&Network], grants: &[Grant]) -> Vec<(&'static str, Element)> {
    let of = |project: &str| -> Vec<&Network> {
        nets.iter().filter(|n| n.project == project && n.has_host_address()).copied().collect()
    };
    let mut out = Vec::new();
    for g in grants {
        for from in of(&g.from) {
            for to in of(&g.to) {
                let pair = vec![Value::Net(from.subnet), Value::Net(to.subnet)];
                out.push(("grant_pairs", Element::key(pair.clone())));
                // A new connection names the bridge it comes in on too: a
                // packet from elsewhere with a source in `from`'s subnet
                // is not `from`'s.
                let start = [vec![Value::Ifname(from.l3_ifname())], pair].concat();
                out.push(match (g.proto, g.port) {
                    (None, _) => ("grants", Element::key(start)),
                    (Some(p), None) => ("grants_proto", Element::key([start, vec![Value::Proto(p)]].concat())),
                    (Some(p), Some(port)) => {
                        ("grants_port", Element::key([start, vec![Value::Proto(p), Value::Port(port)]].concat()))
                    }
                });
            }
        }
    }
    out
}

/// The table for the active networks, the live floating IPs, the live
/// port forwards and the grants between projects, None when no network
/// needs rules (then lanyard has no table at all).
pub fn table(networks: &[Network], live: &[Association], forwards: &[LiveForward], grants: &[Grant]) -> Option<Table> {
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
    use DataType::{Ifname, InetProto, InetService, Ipv4Addr};
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
        // Networks whose project denies egress: their guests start no
        // connection beyond their own network.
        fill(
            Set::new("egress_denied", &[Ifname], false),
            nets.iter().filter(|n| n.egress_denied).map(|n| Element::key(vec![bridge(n)])).collect(),
        ),
        // Subnets masqueraded on the way out.
        fill(
            Set::new("masq_nets", &[Ipv4Addr], true),
            of(&[Mode::Nat]).map(|n| Element::key(vec![Value::Net(n.subnet)])).collect(),
        ),
        // Subnets whose guests may go out: those that may reach a
        // floating IP from inside (hairpin).
        fill(
            Set::new("outbound_subnets", &[Ipv4Addr], true),
            of(&[Mode::Nat, Mode::Route]).map(|n| Element::key(vec![Value::Net(n.subnet)])).collect(),
        ),
        // Floating IPs: inbound, to the port's fixed IP...
        Set::map("fip_dnat", &[Ipv4Addr], &[Ipv4Addr], false),
        // ... the port's own traffic out, from its floating IP...
        Set::map("fip_snat", &[Ipv4Addr], &[Ipv4Addr], false),
        // ... and the fixed IPs new inbound flows may reach.
        Set::new("fip_fixed", &[Ipv4Addr], false),
        // Grants between projects, by (from bridge, from subnet, to
        // subnet): all traffic, one protocol, one port of one protocol;
        // and every granted pair of subnets, for the answers.
        Set::new("grants", &[Ifname, Ipv4Addr, Ipv4Addr], true),
        Set::new("grants_proto", &[Ifname, Ipv4Addr, Ipv4Addr, InetProto], true),
        Set::new("grants_port", &[Ifname, Ipv4Addr, Ipv4Addr, InetProto, InetService], true),
        Set::new("grant_pairs", &[Ipv4Addr, Ipv4Addr], true),
        // Port forwards: the host's address (0.0.0.0/0 for every one),
        // protocol and port to a guest's address and port...
        Set::map("port_fwd", &[Ipv4Addr, InetProto, InetService], &[Ipv4Addr, InetService], true),
        // ... the guests' addresses, protocols and ports that DNATed
        // flows may reach...
        Set::new("fwd_targets", &[Ipv4Addr, InetProto, InetService], false),
        // ... and (subnet, guest) pairs: a guest reaching a forward to
        // its own network through the host's address is masqueraded.
        Set::new("fwd_hairpin", &[Ipv4Addr, Ipv4Addr], true),
    ];
    let mut table = Table { id: table_id(), sets, chains: chains() };
    let grant_elements = grant_elements(&nets, grants);
    let live_elements = live.iter().flat_map(association_elements);
    let forward_elements = forward_element_set(forwards);
    for (set, element) in live_elements.chain(grant_elements).chain(forward_elements) {
        if let Some(s) = table.sets.iter_mut().find(|s| s.name == set) {
            s.elements.insert(element);
        }
    }
    Some(table)
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
    use crate::kernel::firewall::CtState::{Established, New, Related};
    use Field::*;
    let set = Match::in_set;
    let rule = Rule::new;
    let accept = Action::MarkAccept(ACCEPT_MARK);
    let dnat = || Match::ct_status(&[crate::kernel::firewall::CtStatus::Dnat]);
    let new = || Match::ct_state(&[New]);
    let to_floating = || Action::DnatMap { fields: vec![IpDaddr], map: "fip_dnat".into() };
    let from_floating = || Action::SnatMap { fields: vec![IpSaddr], map: "fip_snat".into() };
    // A flow a guest started to another guest's floating IP.
    let hairpin = || vec![dnat(), set(&[IpSaddr], "outbound_subnets"), set(&[IpDaddr], "fip_fixed")];
    // Port forwards: only what is addressed to the host itself (on any of
    // its addresses, which the routing table knows: no list of them to
    // keep up to date), TCP or UDP (the map's key needs a transport
    // header), is looked up.
    let for_the_host = || Match::any_of(FibDaddrType, vec![Value::AddrType(AddrType::Local)]);
    let tcp_or_udp = || Match::any_of(L4Proto, vec![Value::Proto(Proto::Tcp), Value::Proto(Proto::Udp)]);
    let to_forward = || Action::DnatMap { fields: vec![IpDaddr, L4Proto, ThDport], map: "port_fwd".into() };
    // After DNAT: a flow to a guest port some forward leads to.
    let forwarded = || set(&[IpDaddr, L4Proto, ThDport], "fwd_targets");
    // A floating IP's DNAT comes first: the whole address is the guest's.
    vec![
        Chain {
            name: "prerouting".into(),
            base: base(ChainType::Nat, Hook::Prerouting, -100),
            rules: vec![rule(vec![], to_floating()), rule(vec![for_the_host(), tcp_or_udp()], to_forward())],
        },
        // The host itself reaches floating IPs and forwards too (not on
        // loopback: a packet from 127.0.0.1 cannot be sent to a guest).
        Chain {
            name: "nat_output".into(),
            base: base(ChainType::Nat, Hook::Output, -100),
            rules: vec![
                rule(vec![], to_floating()),
                rule(
                    vec![
                        Match::none_of(IpDaddr, vec![Value::Net("127.0.0.0/8".parse().expect("literal"))]),
                        for_the_host(),
                        tcp_or_udp(),
                    ],
                    to_forward(),
                ),
            ],
        },
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
                // Grants: new connections in the granted direction, and
                // the answers of connections a grant let start. Before egress
                // control: a grant is the admin's explicit exception to it.
                rule(vec![new(), set(&[Iifname, IpSaddr, IpDaddr], "grants")], accept.clone()),
                rule(vec![new(), set(&[Iifname, IpSaddr, IpDaddr, L4Proto], "grants_proto")], accept.clone()),
                rule(vec![new(), set(&[Iifname, IpSaddr, IpDaddr, L4Proto, ThDport], "grants_port")], accept.clone()),
                rule(
                    vec![
                        Match::ct_state(&[Established, Related]),
                        set(&[CtOriginalIpSaddr, CtOriginalIpDaddr], "grant_pairs"),
                    ],
                    accept.clone(),
                ),
                rule(vec![set(&[Iifname], "egress_denied"), Match::ct_state(&[New])], Action::Reject),
                // Floating IPs: new flows from outside to a port's floating
                // IP; from a guest that may go out (hairpin); and the
                // replies of hairpin flows, which cross bridges.
                rule(
                    vec![dnat(), Match::not_in_set(&[Iifname], "bridges"), set(&[IpDaddr], "fip_fixed")],
                    accept.clone(),
                ),
                rule(vec![dnat(), set(&[Iifname, IpSaddr], "outbound"), set(&[IpDaddr], "fip_fixed")], accept.clone()),
                rule(
                    vec![dnat(), Match::ct_state(&[Established, Related]), set(&[IpSaddr], "fip_fixed")],
                    accept.clone(),
                ),
                // Port forwards, likewise: new flows from outside, from
                // a guest that may go out (another network's; one on the
                // target's own bridge is same_bridge's), and the answers
                // of those that cross bridges.
                rule(vec![dnat(), Match::not_in_set(&[Iifname], "bridges"), forwarded()], accept.clone()),
                rule(vec![dnat(), set(&[Iifname, IpSaddr], "outbound"), forwarded()], accept.clone()),
                rule(
                    vec![
                        dnat(),
                        Match::ct_state(&[Established, Related]),
                        set(&[IpSaddr, L4Proto, ThSport], "fwd_targets"),
                    ],
                    accept.clone(),
                ),
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
                // Hairpin: the guest behind a floating IP answers whoever
                // reached it through the host, not the other guest
                // directly (whose reply would then come from the wrong
                // address): a source with a floating IP of its own shows
                // that, any other the gateway's address.
                rule(hairpin(), from_floating()),
                rule(hairpin(), Action::Masquerade),
                // A guest reaching a forward to its own network through
                // the host: the guest behind it would answer it directly
                // over the bridge, from the wrong address, unless it sees
                // the gateway as the source.
                rule(vec![dnat(), set(&[IpSaddr, IpDaddr], "fwd_hairpin")], Action::Masquerade),
                // Nothing is translated onto a lanyard network's bridge
                // (its own guests, or a grant's peers, see each other's
                // addresses); a port's own traffic out leaves from its
                // floating IP, everyone else's masqueraded.
                rule(vec![set(&[Oifname], "bridges")], Action::Return),
                rule(vec![], from_floating()),
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
