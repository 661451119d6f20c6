//! The planner: desired state + what the kernel has now -> a plan of kernel
//! operations and the firewall ruleset.
//!
//! Pure code: no syscalls, no clock. The plan holds only the differences, so
//! applying it to a kernel that already matches does nothing, which is what
//! lets a restarted daemon reconcile without disturbing running VMs.
//! lanyard marks every link it creates with an alias (`lanyard:...`) and only
//! ever deletes links that carry that mark.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use ipnet::Ipv4Net;

use std::net::Ipv4Addr;

use crate::model::{Mac, Mode, NetState, Network, Port, PortType};

/// Prefix of the alias lanyard sets on the links it owns.
pub const OWNER_ALIAS_PREFIX: &str = "lanyard:";
/// Name of lanyard's nftables table (family inet).
pub const NFT_TABLE: &str = "lanyard";

/// One link as the kernel reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedLink {
    /// Interface name.
    pub name: String,
    /// Link kind (bridge, tun, veth, ...), if any.
    pub kind: Option<String>,
    /// Bridge it is enslaved to.
    pub master: Option<String>,
    /// Administratively up.
    pub up: bool,
    /// Current MTU.
    pub mtu: u32,
    /// IPv4 addresses with prefix.
    pub addrs: Vec<Ipv4Net>,
    /// ifalias.
    pub alias: Option<String>,
    /// Bridges only: the bridge id, as `brctl show` prints it.
    pub bridge_id: Option<String>,
    /// Bridges only: whether STP is on.
    pub stp: Option<bool>,
    /// Hardware address.
    pub mac: Option<Mac>,
}

/// An IPv4 route of the main table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// Destination; None for the default route.
    pub dst: Option<Ipv4Net>,
    /// Next hop.
    pub gateway: Option<Ipv4Addr>,
    /// Output device.
    pub dev: Option<String>,
    /// Metric.
    pub metric: Option<u32>,
    /// Preferred source address.
    pub prefsrc: Option<Ipv4Addr>,
    /// Who installed it ("kernel" routes follow their address).
    pub proto: Option<String>,
}

impl ObservedLink {
    /// Whether lanyard created this link.
    pub fn owned(&self) -> bool {
        self.alias.as_deref().is_some_and(|a| a.starts_with(OWNER_ALIAS_PREFIX))
    }
}

/// What the kernel has in the namespace lanyard manages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Links by name.
    pub links: BTreeMap<String, ObservedLink>,
    /// IPv4 routes of the main table.
    pub routes: Vec<Route>,
    /// The fingerprint comment on lanyard's nftables table, if it exists.
    pub firewall_fingerprint: Option<String>,
    /// net.ipv4.ip_forward.
    pub ip_forward: bool,
}

/// One kernel operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create a bridge (STP off) marked with `alias`.
    CreateBridge {
        /// Name.
        name: String,
        /// Hardware address (bridge mode: the uplink's, so the host keeps
        /// its identity on the LAN).
        mac: Option<Mac>,
        /// MTU.
        mtu: Option<u32>,
        /// Ownership mark.
        alias: String,
    },
    /// Create a persistent TAP.
    CreateTap {
        /// Name.
        name: String,
        /// Host-side MAC.
        mac: Mac,
        /// User allowed to open it.
        owner: Option<String>,
        /// Group allowed to open it.
        group: Option<String>,
        /// MTU.
        mtu: Option<u32>,
        /// Ownership mark.
        alias: String,
    },
    /// Create a veth pair whose peer moves into a namespace.
    CreateVeth {
        /// Host-side name.
        name: String,
        /// Namespace of the peer.
        peer_netns: String,
        /// Peer's name there.
        peer_name: String,
        /// Peer's (the guest's) MAC.
        peer_mac: Mac,
        /// MTU of both ends.
        mtu: Option<u32>,
        /// Ownership mark.
        alias: String,
    },
    /// Add an IPv4 address.
    AddAddress {
        /// Link.
        link: String,
        /// Address with prefix.
        addr: Ipv4Net,
    },
    /// Remove an IPv4 address.
    DelAddress {
        /// Link.
        link: String,
        /// Address with prefix.
        addr: Ipv4Net,
    },
    /// Enslave a link to a bridge.
    SetMaster {
        /// Link.
        link: String,
        /// Bridge.
        master: String,
    },
    /// Add or replace a route through `link`.
    ReplaceRoute {
        /// Link.
        link: String,
        /// The route (its `dev` is ignored).
        route: Route,
    },
    /// Release a link from its bridge.
    NoMaster {
        /// Link.
        link: String,
    },
    /// Set the MTU.
    SetMtu {
        /// Link.
        link: String,
        /// MTU.
        mtu: u32,
    },
    /// Bring a link up.
    SetUp {
        /// Link.
        link: String,
    },
    /// Delete a link.
    DeleteLink {
        /// Link.
        name: String,
    },
    /// Bring a veth peer up inside its namespace, so the guest side is
    /// ready as soon as the port exists (a moved link arrives down).
    PeerUp {
        /// Namespace.
        netns: String,
        /// Link name there.
        name: String,
    },
    /// Turn on net.ipv4.ip_forward in this namespace.
    EnableForwarding,
}

impl Op {
    /// The operation that undoes this one, for rollback of a half-applied plan.
    /// Deletions and sysctls have none: a plan deletes only what is unwanted.
    pub fn undo(&self) -> Option<Op> {
        match self {
            Op::CreateBridge { name, .. } | Op::CreateTap { name, .. } | Op::CreateVeth { name, .. } => {
                Some(Op::DeleteLink { name: name.clone() })
            }
            Op::AddAddress { link, addr } => Some(Op::DelAddress { link: link.clone(), addr: *addr }),
            Op::DelAddress { link, addr } => Some(Op::AddAddress { link: link.clone(), addr: *addr }),
            Op::SetMaster { link, .. } => Some(Op::NoMaster { link: link.clone() }),
            _ => None,
        }
    }
}

/// What to do to bring the kernel to the desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Link operations, in order.
    pub ops: Vec<Op>,
    /// The complete nftables script for lanyard's table.
    pub firewall: String,
    /// The kernel already has exactly this table: nothing to apply.
    pub firewall_current: bool,
}

/// Ownership mark of a network's bridge. A bridge-mode bridge also names
/// its uplink, so the host's addresses can be given back even if the
/// network's record is gone.
pub fn bridge_alias(net: &str, uplink: Option<&str>) -> String {
    match uplink {
        Some(u) => format!("{OWNER_ALIAS_PREFIX}net:{net}{UPLINK_MARK}{u}"),
        None => format!("{OWNER_ALIAS_PREFIX}net:{net}"),
    }
}

const UPLINK_MARK: &str = ":uplink:";

/// The uplink named in a bridge's ownership mark.
pub fn alias_uplink(alias: &str) -> Option<&str> {
    alias.split_once(UPLINK_MARK).map(|(_, u)| u)
}

/// Moves the host's IPv4 configuration from `from` to `to`: addresses
/// first added on `to` then removed from `from` (no moment without them),
/// then the routes that are not the kernel's own prefix routes.
fn move_config(from: &ObservedLink, to: &str, routes: &[Route]) -> Vec<Op> {
    let mut ops = Vec::new();
    for a in &from.addrs {
        ops.push(Op::AddAddress { link: to.to_string(), addr: *a });
    }
    for a in &from.addrs {
        ops.push(Op::DelAddress { link: from.name.clone(), addr: *a });
    }
    for r in
        routes.iter().filter(|r| r.dev.as_deref() == Some(from.name.as_str()) && r.proto.as_deref() != Some("kernel"))
    {
        ops.push(Op::ReplaceRoute { link: to.to_string(), route: r.clone() });
    }
    ops
}

/// Ownership mark of a port's host-side link.
pub fn port_alias(id: &str) -> String {
    format!("{OWNER_ALIAS_PREFIX}port:{id}")
}

/// Plans the changes that bring `observed` to `networks` + `ports`.
/// Ports of networks that are not active are left detached from any bridge
/// (their TAPs persist so VMs keep their file descriptors).
pub fn plan(networks: &[Network], ports: &[Port], observed: &Observed) -> Plan {
    let mut ops = Vec::new();
    let active: BTreeMap<&str, &Network> =
        networks.iter().filter(|n| n.state == NetState::Active).map(|n| (n.name.as_str(), n)).collect();
    let mut wanted: BTreeSet<&str> = BTreeSet::new();

    for net in active.values() {
        wanted.insert(&net.bridge);
        if let Some(uplink) = net.uplink.as_deref() {
            plan_uplinked_bridge(net, uplink, observed, &mut ops);
            continue;
        }
        match observed.links.get(&net.bridge) {
            None => {
                ops.push(Op::CreateBridge {
                    name: net.bridge.clone(),
                    mac: None,
                    mtu: net.mtu,
                    alias: bridge_alias(&net.name, None),
                });
                ops.push(Op::AddAddress { link: net.bridge.clone(), addr: net.gateway_cidr() });
                ops.push(Op::SetUp { link: net.bridge.clone() });
            }
            Some(link) => {
                if !link.addrs.contains(&net.gateway_cidr()) {
                    ops.push(Op::AddAddress { link: net.bridge.clone(), addr: net.gateway_cidr() });
                }
                if let Some(mtu) = net.mtu.filter(|m| *m != link.mtu) {
                    ops.push(Op::SetMtu { link: net.bridge.clone(), mtu });
                }
                if !link.up {
                    ops.push(Op::SetUp { link: net.bridge.clone() });
                }
            }
        }
    }

    for port in ports {
        wanted.insert(&port.ifname);
        let net = active.get(port.net.as_str()).copied();
        ops.extend(port_ops(port, net, observed.links.get(&port.ifname)));
    }

    // Owned links nobody wants any more: ports before bridges, so no bridge
    // is deleted while it still carries a VM's link.
    let mut stale: Vec<&ObservedLink> =
        observed.links.values().filter(|l| l.owned() && !wanted.contains(l.name.as_str())).collect();
    stale.sort_by_key(|l| (l.kind.as_deref() == Some("bridge"), l.name.clone()));
    for link in stale {
        let uplink = link.alias.as_deref().and_then(alias_uplink).and_then(|u| observed.links.get(u));
        if let Some(uplink) = uplink {
            // Give the host its configuration back before the bridge goes.
            ops.extend(move_config(link, &uplink.name, &observed.routes));
            ops.push(Op::NoMaster { link: uplink.name.clone() });
        }
        ops.push(Op::DeleteLink { name: link.name.clone() });
    }

    if active.values().any(|n| n.mode.forwards()) && !observed.ip_forward {
        ops.push(Op::EnableForwarding);
    }

    let firewall = firewall(active.values().copied());
    let firewall_current = fingerprint(&firewall) == observed.firewall_fingerprint;
    Plan { ops, firewall, firewall_current }
}

/// The operations that bring one port's link to its desired state, given
/// its network (None when the network is not active) and what the kernel
/// has under the port's name. Used by [`plan`] and, on its own, by the
/// engine when one port is created, so that adding a port costs the same
/// with ten thousand ports as with one.
pub fn port_ops(port: &Port, net: Option<&Network>, existing: Option<&ObservedLink>) -> Vec<Op> {
    let mut ops = Vec::new();
    if existing.is_none() && port.adopted {
        // Its owner (QEMU) is gone; the port waits for `qemu-ifdown` or
        // `port delete`.
        return ops;
    }
    if existing.is_none() {
        let mtu = net.and_then(|n| n.mtu);
        let alias = port_alias(&port.id);
        match (port.port_type, &port.netns, &port.peer_ifname) {
            (PortType::Veth, Some(ns), Some(peer)) => {
                ops.push(Op::CreateVeth {
                    name: port.ifname.clone(),
                    peer_netns: ns.clone(),
                    peer_name: peer.clone(),
                    peer_mac: port.mac,
                    mtu,
                    alias,
                });
                ops.push(Op::PeerUp { netns: ns.clone(), name: peer.clone() });
            }
            _ => ops.push(Op::CreateTap {
                name: port.ifname.clone(),
                mac: port.mac.host_side(),
                owner: port.owner.clone(),
                group: port.group.clone(),
                mtu,
                alias,
            }),
        }
    }
    match net {
        Some(net) => {
            if existing.and_then(|l| l.master.as_deref()) != Some(net.bridge.as_str()) {
                ops.push(Op::SetMaster { link: port.ifname.clone(), master: net.bridge.clone() });
            }
            if !existing.is_some_and(|l| l.up) {
                ops.push(Op::SetUp { link: port.ifname.clone() });
            }
        }
        None => {
            if existing.is_some_and(|l| l.master.is_some()) {
                ops.push(Op::NoMaster { link: port.ifname.clone() });
            }
        }
    }
    ops
}

/// A bridge-mode network: the uplink NIC joins the bridge and the host's
/// addresses and routes move from the NIC to the bridge.
fn plan_uplinked_bridge(net: &Network, uplink: &str, observed: &Observed, ops: &mut Vec<Op>) {
    let up = observed.links.get(uplink);
    if !observed.links.contains_key(&net.bridge) {
        ops.push(Op::CreateBridge {
            name: net.bridge.clone(),
            mac: up.and_then(|u| u.mac),
            mtu: net.mtu,
            alias: bridge_alias(&net.name, Some(uplink)),
        });
        ops.push(Op::SetUp { link: net.bridge.clone() });
    } else if !observed.links[&net.bridge].up {
        ops.push(Op::SetUp { link: net.bridge.clone() });
    }
    let Some(up) = up else { return };
    if up.master.as_deref() != Some(net.bridge.as_str()) {
        ops.push(Op::SetMaster { link: uplink.to_string(), master: net.bridge.clone() });
    }
    ops.extend(move_config(up, &net.bridge, &observed.routes));
}

/// Renders lanyard's whole nftables table for the active networks, as one
/// script that atomically replaces the previous table (create-if-missing,
/// delete, re-create in one transaction). Conntrack state is untouched, so
/// established flows survive a re-apply. Nothing outside the table is named.
///
/// The table carries a comment with a fingerprint of its rules, so a
/// restarted daemon can tell that the kernel already has exactly this
/// table and leave it alone instead of rebuilding it.
pub fn firewall<'a>(networks: impl IntoIterator<Item = &'a Network>) -> String {
    let script = render_firewall(networks);
    let open = format!("table inet {NFT_TABLE} {{\n");
    match script.rfind(&open) {
        Some(i) => {
            let fp = fnv1a(script.as_bytes());
            let at = i + open.len();
            format!("{}\tcomment \"{FINGERPRINT_PREFIX}{fp:016x}\"\n{}", &script[..at], &script[at..])
        }
        None => script,
    }
}

const FINGERPRINT_PREFIX: &str = "lanyard:";

/// The fingerprint a firewall script stamps on its table, if it creates one.
pub fn fingerprint(script: &str) -> Option<String> {
    let start = script.find(&format!("comment \"{FINGERPRINT_PREFIX}"))? + "comment \"".len();
    let len = script[start..].find('"')?;
    Some(script[start..start + len].to_string())
}

/// FNV-1a: a hash that is the same on every build, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// Elements of a named set, as nft syntax (empty when there are none).
fn elements(items: &[String]) -> String {
    if items.is_empty() {
        String::new()
    } else {
        format!(" elements = {{ {} }};", items.join(", "))
    }
}

/// The table as sets of per-network facts and a fixed list of rules that
/// look them up: the number of rules (and the work per packet) does not grow
/// with the number of networks, and adding a network only adds elements.
fn render_firewall<'a>(networks: impl IntoIterator<Item = &'a Network>) -> String {
    // Open networks ask for no rules; bridge-mode bridges are the physical
    // LAN (the host's own uplink), not a private network to wall off.
    let nets: Vec<&Network> = networks.into_iter().filter(|n| !matches!(n.mode, Mode::Open | Mode::Bridge)).collect();
    let mut s = format!("table inet {NFT_TABLE} {{}}\ndelete table inet {NFT_TABLE}\n");
    if nets.is_empty() {
        return s;
    }
    let q = |b: &str| format!("\"{b}\"");
    let pair = |n: &Network| format!("\"{}\" . {}", n.bridge, n.subnet);
    let of = |modes: &[Mode]| nets.iter().filter(|n| modes.contains(&n.mode)).copied().collect::<Vec<_>>();
    let bridges: Vec<String> = nets.iter().map(|n| q(&n.bridge)).collect();
    let same: Vec<String> = nets.iter().map(|n| format!("{} . {}", q(&n.bridge), q(&n.bridge))).collect();
    let isolated: Vec<String> = of(&[Mode::Isolated]).iter().map(|n| q(&n.bridge)).collect();
    let nat: Vec<String> = of(&[Mode::Nat]).iter().map(|n| pair(n)).collect();
    let routed: Vec<String> = of(&[Mode::Route]).iter().map(|n| pair(n)).collect();
    let outbound: Vec<String> = of(&[Mode::Nat, Mode::Route]).iter().map(|n| pair(n)).collect();
    let masq: Vec<String> = of(&[Mode::Nat]).iter().map(|n| n.subnet.to_string()).collect();

    let _ = writeln!(s, "table inet {NFT_TABLE} {{");
    let sets = [
        // Every walled-off network's bridge.
        ("bridges", "ifname", false, &bridges),
        // Bridge to itself (routed hairpin within one network).
        ("same_bridge", "ifname . ifname", false, &same),
        // Isolated networks: the host answers DHCP and DNS only.
        ("isolated", "ifname", false, &isolated),
        // NAT networks: replies may come in, new connections may not.
        ("nat_nets", "ifname . ipv4_addr", true, &nat),
        // Routed networks: the outside may connect in.
        ("routed_nets", "ifname . ipv4_addr", true, &routed),
        // Networks whose guests may go out (with their own source address).
        ("outbound", "ifname . ipv4_addr", true, &outbound),
        // Subnets masqueraded on the way out.
        ("masq_nets", "ipv4_addr", true, &masq),
    ];
    for (name, ty, interval, items) in sets {
        let flags = if interval { " flags interval;" } else { "" };
        let _ = writeln!(s, "\tset {name} {{ type {ty};{flags}{} }}", elements(items));
    }
    s.push_str(
        "\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname @isolated udp dport { 53, 67 } accept
\t\tiifname @isolated tcp dport 53 accept
\t\tiifname @isolated drop
\t}
\tchain output {
\t\ttype filter hook output priority filter; policy accept;
\t\toifname @isolated udp sport { 53, 67 } accept
\t\toifname @isolated tcp sport 53 accept
\t\toifname @isolated drop
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname . oifname @same_bridge accept
\t\tiifname @bridges oifname @bridges reject with icmpx admin-prohibited
\t\tct state established,related oifname . ip daddr @nat_nets accept
\t\toifname . ip daddr @routed_nets accept
\t\tiifname . ip saddr @outbound accept
\t\toifname @bridges reject with icmpx admin-prohibited
\t\tiifname @bridges reject with icmpx admin-prohibited
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname . ip saddr @nat_nets return
\t\tip saddr @masq_nets ip daddr != { 224.0.0.0/24, 255.255.255.255 } masquerade
\t}
}
",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_network as net;

    fn port(id: &str, net: &str, ty: PortType) -> Port {
        Port {
            id: id.into(),
            net: net.into(),
            vm: "vm".into(),
            port_type: ty,
            ifname: Port::ifname_for(id),
            mac: Mac([0x52, 0x54, 0, 0, 0, 1]),
            ip: Some("192.168.122.2".parse().unwrap()),
            netns: (ty == PortType::Veth).then(|| "ns1".into()),
            peer_ifname: (ty == PortType::Veth).then(|| "eth0".into()),
            owner: None,
            group: None,
            adopted: false,
        }
    }

    /// The kernel state a fully applied plan leaves behind.
    fn converged(nets: &[Network], ports: &[Port]) -> Observed {
        let mut o = Observed { ip_forward: true, ..Default::default() };
        for n in nets {
            o.links.insert(
                n.bridge.clone(),
                ObservedLink {
                    name: n.bridge.clone(),
                    kind: Some("bridge".into()),
                    up: true,
                    mtu: 1500,
                    addrs: vec![n.gateway_cidr()],
                    alias: Some(bridge_alias(&n.name, None)),
                    ..Default::default()
                },
            );
        }
        for p in ports {
            let bridge = nets.iter().find(|n| n.name == p.net).unwrap().bridge.clone();
            o.links.insert(
                p.ifname.clone(),
                ObservedLink {
                    name: p.ifname.clone(),
                    master: Some(bridge),
                    up: true,
                    mtu: 1500,
                    alias: Some(port_alias(&p.id)),
                    ..Default::default()
                },
            );
        }
        o
    }

    #[test]
    fn fresh_kernel_gets_everything_in_order() {
        let n = net("default", "192.168.122.0/24", "lybr0");
        let ports = [port("aa", "default", PortType::Tap), port("bb", "default", PortType::Veth)];
        let p = plan(std::slice::from_ref(&n), &ports, &Observed::default());
        let kinds: Vec<String> =
            p.ops.iter().map(|o| format!("{o:?}").split([' ', '{']).next().unwrap().to_string()).collect();
        assert_eq!(
            kinds,
            [
                "CreateBridge",
                "AddAddress",
                "SetUp",
                "CreateTap",
                "SetMaster",
                "SetUp",
                "CreateVeth",
                "PeerUp",
                "SetMaster",
                "SetUp",
                "EnableForwarding"
            ]
        );
        assert!(matches!(&p.ops[3], Op::CreateTap { mac, .. } if mac.to_string() == "fe:54:00:00:00:01"));
    }

    #[test]
    fn converged_kernel_needs_nothing() {
        let n = vec![net("default", "192.168.122.0/24", "lybr0"), net("b", "10.9.0.0/24", "lybr1")];
        let ports = vec![port("aa", "default", PortType::Tap), port("bb", "b", PortType::Veth)];
        let p = plan(&n, &ports, &converged(&n, &ports));
        assert!(p.ops.is_empty(), "{:?}", p.ops);
    }

    #[test]
    fn drift_is_repaired_and_only_owned_links_are_removed() {
        let n = vec![net("default", "192.168.122.0/24", "lybr0")];
        let ports = vec![port("aa", "default", PortType::Tap)];
        let mut o = converged(&n, &ports);
        o.links.get_mut("lyaa").unwrap().master = None;
        o.links.get_mut("lybr0").unwrap().addrs.clear();
        o.links.insert(
            "lyzz".into(),
            ObservedLink { name: "lyzz".into(), alias: Some(port_alias("zz")), ..Default::default() },
        );
        o.links.insert(
            "lybr9".into(),
            ObservedLink {
                name: "lybr9".into(),
                kind: Some("bridge".into()),
                alias: Some(bridge_alias("gone", None)),
                ..Default::default()
            },
        );
        o.links.insert(
            "docker0".into(),
            ObservedLink { name: "docker0".into(), kind: Some("bridge".into()), ..Default::default() },
        );
        let p = plan(&n, &ports, &o);
        assert_eq!(
            p.ops,
            vec![
                Op::AddAddress { link: "lybr0".into(), addr: "192.168.122.1/24".parse().unwrap() },
                Op::SetMaster { link: "lyaa".into(), master: "lybr0".into() },
                Op::DeleteLink { name: "lyzz".into() },
                Op::DeleteLink { name: "lybr9".into() },
            ]
        );
    }

    #[test]
    fn adopted_taps_are_attached_never_created() {
        let n = vec![net("default", "192.168.122.0/24", "lybr0")];
        let mut p = port("aa", "default", PortType::Tap);
        p.adopted = true;
        p.ifname = "tap0".into();
        assert!(plan(&n, std::slice::from_ref(&p), &converged(&n, &[])).ops.is_empty());
        let mut o = converged(&n, &[]);
        o.links.insert("tap0".into(), ObservedLink { name: "tap0".into(), ..Default::default() });
        assert_eq!(
            plan(&n, &[p], &o).ops,
            vec![Op::SetMaster { link: "tap0".into(), master: "lybr0".into() }, Op::SetUp { link: "tap0".into() }]
        );
    }

    #[test]
    fn undo_reverses_creations() {
        let op = Op::AddAddress { link: "b".into(), addr: "10.0.0.1/24".parse().unwrap() };
        assert_eq!(op.undo(), Some(Op::DelAddress { link: "b".into(), addr: "10.0.0.1/24".parse().unwrap() }));
        assert_eq!(Op::DeleteLink { name: "x".into() }.undo(), None);
    }

    #[test]
    fn nat_firewall_golden() {
        let n = net("default", "192.168.122.0/24", "lybr0");
        let fw = firewall([&n]);
        let expected = "table inet lanyard {}
delete table inet lanyard
table inet lanyard {
\tcomment \"lanyard:FP\"
\tset bridges { type ifname; elements = { \"lybr0\" }; }
\tset same_bridge { type ifname . ifname; elements = { \"lybr0\" . \"lybr0\" }; }
\tset isolated { type ifname; }
\tset nat_nets { type ifname . ipv4_addr; flags interval; elements = { \"lybr0\" . 192.168.122.0/24 }; }
\tset routed_nets { type ifname . ipv4_addr; flags interval; }
\tset outbound { type ifname . ipv4_addr; flags interval; elements = { \"lybr0\" . 192.168.122.0/24 }; }
\tset masq_nets { type ipv4_addr; flags interval; elements = { 192.168.122.0/24 }; }
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname @isolated udp dport { 53, 67 } accept
\t\tiifname @isolated tcp dport 53 accept
\t\tiifname @isolated drop
\t}
\tchain output {
\t\ttype filter hook output priority filter; policy accept;
\t\toifname @isolated udp sport { 53, 67 } accept
\t\toifname @isolated tcp sport 53 accept
\t\toifname @isolated drop
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname . oifname @same_bridge accept
\t\tiifname @bridges oifname @bridges reject with icmpx admin-prohibited
\t\tct state established,related oifname . ip daddr @nat_nets accept
\t\toifname . ip daddr @routed_nets accept
\t\tiifname . ip saddr @outbound accept
\t\toifname @bridges reject with icmpx admin-prohibited
\t\tiifname @bridges reject with icmpx admin-prohibited
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname . ip saddr @nat_nets return
\t\tip saddr @masq_nets ip daddr != { 224.0.0.0/24, 255.255.255.255 } masquerade
\t}
}
";
        let fp = fingerprint(&fw).unwrap();
        assert_eq!(fw, expected.replace("lanyard:FP", &fp));
    }

    #[test]
    fn modes_land_in_their_sets_and_the_rules_stay_fixed() {
        let mut iso = net("iso", "10.7.0.0/24", "lybr1");
        iso.mode = Mode::Isolated;
        let mut open = net("o", "10.8.0.0/24", "lybr2");
        open.mode = Mode::Open;
        let mut host = net("h", "10.9.0.0/24", "lybr3");
        host.mode = Mode::HostOnly;
        let mut routed = net("r", "10.10.0.0/24", "lybr4");
        routed.mode = Mode::Route;
        let one = firewall([&net("default", "192.168.122.0/24", "lybr0")]);
        let fw = firewall([&net("default", "192.168.122.0/24", "lybr0"), &iso, &open, &host, &routed]);
        for line in [
            "set bridges { type ifname; elements = { \"lybr0\", \"lybr1\", \"lybr3\", \"lybr4\" }; }",
            "set isolated { type ifname; elements = { \"lybr1\" }; }",
            "set nat_nets { type ifname . ipv4_addr; flags interval; elements = { \"lybr0\" . 192.168.122.0/24 }; }",
            "set routed_nets { type ifname . ipv4_addr; flags interval; elements = { \"lybr4\" . 10.10.0.0/24 }; }",
            "elements = { \"lybr0\" . 192.168.122.0/24, \"lybr4\" . 10.10.0.0/24 }",
            "set masq_nets { type ipv4_addr; flags interval; elements = { 192.168.122.0/24 }; }",
        ] {
            assert!(fw.contains(line), "missing {line:?} in\n{fw}");
        }
        assert!(!fw.contains("lybr2"), "open networks get no rules");
        let rules = |f: &str| f.lines().filter(|l| l.starts_with("\t\t") && !l.contains("type ")).count();
        assert_eq!(rules(&one), rules(&fw), "more networks add set elements, not rules");
    }

    #[test]
    fn an_identical_table_is_left_alone() {
        let n = vec![net("default", "192.168.122.0/24", "lybr0")];
        let mut o = converged(&n, &[]);
        let p = plan(&n, &[], &o);
        assert!(!p.firewall_current);
        o.firewall_fingerprint = fingerprint(&p.firewall);
        assert!(plan(&n, &[], &o).firewall_current);
        let mut other = n.clone();
        other[0].mode = Mode::Route;
        assert!(!plan(&other, &[], &o).firewall_current, "a changed ruleset has another fingerprint");
        assert!(plan(&[], &[], &Observed::default()).firewall_current, "no table wanted, none there");
    }

    #[test]
    fn no_networks_removes_the_table() {
        assert_eq!(firewall([]), "table inet lanyard {}\ndelete table inet lanyard\n");
    }
}
