//! Planning the VXLAN overlay of a cluster member: one VXLAN device per
//! network on every host, enslaved to the network's bridge, and its
//! forwarding entries towards the other hosts (a flood entry per remote
//! node with ports on the network, a unicast entry per remote port).
//!
//! Pure, like the rest of the planner: the cluster's view comes in as an
//! [`Overlay`] (this node's tunnel address, the other nodes' underlay
//! addresses, the other nodes' ports) and the kernel's as [`Observed`]
//! (its links and the remote entries of lanyard's VXLAN devices). A single
//! host has no overlay and gets none of this.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::kernel::link::{VxlanSpec, OWNER_ALIAS_PREFIX};
use crate::kernel::{Observed, Op};
use crate::model::{Mac, Network, OverlayKind, Port};

/// UDP port of the tunnels (IANA's VXLAN port).
pub const VXLAN_PORT: u16 = 4789;

/// What VXLAN adds to a frame on an IPv4 underlay (outer Ethernet 14, IPv4
/// 20, UDP 8, VXLAN 8): the overlay's MTU is the underlay's minus this.
pub const VXLAN_OVERHEAD: u32 = 50;

/// The all-zeros MAC: a VXLAN forwarding entry for it floods (broadcast,
/// unknown unicast, multicast) to its destination.
pub const FLOOD: Mac = Mac([0; 6]);

/// The cluster as this host's planner sees it.
#[derive(Debug, Clone, Copy)]
pub struct Overlay<'a> {
    /// This node's tunnel address (its underlay IP).
    pub local: Ipv4Addr,
    /// Underlay IPs of the other nodes, by node name (registered nodes
    /// only: a node that is gone has no entry, and neither do its ports).
    pub remotes: &'a BTreeMap<String, Ipv4Addr>,
    /// Every port of the other nodes.
    pub remote_ports: &'a [Port],
}

/// A network's VXLAN network identifier: derived from its key (FNV-1a,
/// folded to 24 bits, never 0), so every host computes the same one
/// without asking anyone. The engine claims it at network creation, so two
/// networks whose keys meet on one VNI cannot both exist.
pub fn vni(net_key: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in net_key.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let folded = (h >> 24) ^ (h & 0x00ff_ffff);
    if folded == 0 {
        1
    } else {
        folded
    }
}

/// What the names of lanyard's VXLAN devices start with.
pub const VXLAN_PREFIX: &str = "lyvx";

/// The VXLAN device of a network: `lyvx` and its VNI in hex (10 bytes).
pub fn vxlan_ifname(net: &Network) -> String {
    format!("{VXLAN_PREFIX}{:06x}", vni(&net.key()))
}

/// Ownership mark of a network's VXLAN device.
pub fn vxlan_alias(net: &str) -> String {
    format!("{OWNER_ALIAS_PREFIX}vxlan:{net}")
}

/// Whether a network spans the cluster over VXLAN: one that asks for it
/// (`--overlay vxlan`), and by default every network with a bridge of its
/// own (an uplink or a VLAN puts it on the physical network instead, which
/// already spans hosts); not one that asks for `vlan` or `none`.
pub fn spans(net: &Network) -> bool {
    match net.overlay {
        Some(OverlayKind::Vxlan) => true,
        Some(OverlayKind::Vlan | OverlayKind::None) => false,
        None => net.uplink.is_none() && net.vlan.is_none(),
    }
}

/// The bridge port through which a cluster member's network reaches the
/// other hosts, where the gateway's ARP and DHCP must not cross: its VXLAN
/// device, or the VLAN device on the trunk of a VLAN network (`subif`
/// backend; a VLAN-filtering bridge's trunk also carries the host's own
/// untagged LAN, so nothing is dropped there). None for `--overlay none`
/// and networks on a bridge-mode uplink.
pub fn crossing_port(net: &Network) -> Option<String> {
    if spans(net) {
        return Some(vxlan_ifname(net));
    }
    match net.overlay {
        Some(OverlayKind::None) => None,
        _ => super::links::network_vlan_device(net),
    }
}

/// The VXLAN devices the active `networks` want.
pub fn devices<'a>(networks: impl Iterator<Item = &'a Network>) -> Vec<String> {
    networks.filter(|n| spans(n)).map(vxlan_ifname).collect()
}

/// The link that holds this node's tunnel address `local`: the underlay.
fn underlay_link(local: Ipv4Addr, observed: &Observed) -> Option<&crate::kernel::ObservedLink> {
    observed.links.values().find(|l| l.addrs.iter().any(|a| a.addr() == local))
}

/// The MTU of the networks that span the hosts: the underlay's less what
/// VXLAN adds. None while no link holds the tunnel address.
pub fn mtu(local: Ipv4Addr, observed: &Observed) -> Option<u32> {
    underlay_link(local, observed).map(|l| l.mtu.saturating_sub(VXLAN_OVERHEAD))
}

/// The operations that bring an active network's VXLAN device and its
/// forwarding entries to `overlay`: created (MTU = underlay MTU − 50, the
/// underlay being the link that holds the local address), enslaved, up;
/// remote entries added and removed. The bridge gets the overlay MTU too,
/// unless the network names its own.
pub fn network_ops(net: &Network, overlay: &Overlay<'_>, observed: &Observed) -> Vec<Op> {
    let mut ops = Vec::new();
    if !spans(net) {
        return ops;
    }
    let name = vxlan_ifname(net);
    let key = net.key();
    let underlay = underlay_link(overlay.local, observed);
    let mtu = mtu(overlay.local, observed);
    match observed.links.get(&name) {
        None => {
            ops.push(Op::CreateVxlan(VxlanSpec {
                name: name.clone(),
                vni: vni(&key),
                local: overlay.local,
                dev: underlay.map(|l| l.name.clone()),
                port: VXLAN_PORT,
                mtu,
                alias: vxlan_alias(&key),
            }));
            ops.push(Op::SetMaster { link: name.clone(), master: Some(net.bridge.clone()), previous: None });
            ops.push(Op::SetUp { link: name.clone(), up: true });
        }
        Some(link) => {
            if let Some(m) = mtu.filter(|m| *m != link.mtu) {
                ops.push(Op::SetMtu { link: name.clone(), mtu: m, previous: link.mtu });
            }
            if link.master.as_deref() != Some(net.bridge.as_str()) {
                ops.push(Op::SetMaster {
                    link: name.clone(),
                    master: Some(net.bridge.clone()),
                    previous: link.master.clone(),
                });
            }
            if !link.up {
                ops.push(Op::SetUp { link: name.clone(), up: true });
            }
        }
    }
    // The bridge takes the smallest MTU of its ports by itself, but only
    // until someone sets it; set it, so a TAP added later cannot raise it.
    if let (None, Some(m)) = (net.mtu, mtu) {
        let bridge_mtu = observed.links.get(&net.bridge).map(|l| l.mtu);
        if bridge_mtu != Some(m) {
            ops.push(Op::SetMtu { link: net.bridge.clone(), mtu: m, previous: bridge_mtu.unwrap_or(1500) });
        }
    }
    let want = wanted_fdb(&key, overlay);
    let have = observed.fdb.get(&name).cloned().unwrap_or_default();
    for (mac, dst) in have.difference(&want) {
        ops.push(Op::DelFdb { link: name.clone(), mac: *mac, dst: Some(*dst) });
    }
    for (mac, dst) in want.difference(&have) {
        ops.push(Op::AddFdb { link: name.clone(), mac: *mac, dst: Some(*dst) });
    }
    let want = wanted_neighbours(&key, overlay);
    let have = observed.neighbours.get(&name).cloned().unwrap_or_default();
    for (ip, mac) in have.difference(&want) {
        ops.push(Op::DelNeighbour { link: name.clone(), ip: *ip, mac: *mac });
    }
    for (ip, mac) in want.difference(&have) {
        ops.push(Op::AddNeighbour { link: name.clone(), ip: *ip, mac: *mac });
    }
    ops
}

/// The neighbour entries network `key`'s VXLAN device wants: each remote
/// port's fixed address and MAC, so the device answers a guest's ARP for
/// a guest on another host itself (proxy) instead of flooding it to every
/// host (ARP suppression).
pub fn wanted_neighbours(key: &str, overlay: &Overlay<'_>) -> BTreeSet<(Ipv4Addr, Mac)> {
    overlay
        .remote_ports
        .iter()
        .filter(|p| p.net == key)
        .filter(|p| p.node.as_ref().and_then(|n| overlay.remotes.get(n)).is_some_and(|dst| *dst != overlay.local))
        .filter_map(|p| p.ip.map(|ip| (ip, p.mac)))
        .collect()
}

/// The remote entries network `key`'s VXLAN device wants: a flood entry
/// for every remote node with a port on it, and each remote port's MAC
/// towards its node.
pub fn wanted_fdb(key: &str, overlay: &Overlay<'_>) -> BTreeSet<(Mac, Ipv4Addr)> {
    let mut want = BTreeSet::new();
    for p in overlay.remote_ports.iter().filter(|p| p.net == key) {
        let Some(dst) = p.node.as_ref().and_then(|n| overlay.remotes.get(n)) else { continue };
        // A node that registered our own address (a misconfiguration) is
        // no tunnel destination.
        if *dst == overlay.local {
            continue;
        }
        want.insert((FLOOD, *dst));
        want.insert((p.mac, *dst));
    }
    want
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{LinkKind, ObservedLink};
    use crate::model::test_network;

    fn remote_port(id: &str, net: &str, node: &str, mac: [u8; 6]) -> Port {
        let ip = Some(Ipv4Addr::new(192, 168, 122, mac[5].max(2)));
        Port { node: Some(node.into()), mac: Mac(mac), ip, ..crate::model::test_port(id, net) }
    }

    fn underlay() -> Observed {
        let mut o = Observed::default();
        o.links.insert(
            "eth1".into(),
            ObservedLink {
                name: "eth1".into(),
                mtu: 1500,
                up: true,
                addrs: vec!["10.213.1.2/24".parse().unwrap()],
                ..Default::default()
            },
        );
        o
    }

    const A: Ipv4Addr = Ipv4Addr::new(10, 213, 1, 2);
    const B: Ipv4Addr = Ipv4Addr::new(10, 213, 2, 2);

    #[test]
    fn a_network_spans_as_it_asks_and_by_default_when_it_has_its_own_bridge() {
        use crate::model::NetworkSpec;
        let made = |overlay: Option<&str>, vlan: Option<u16>| {
            NetworkSpec {
                name: "n".into(),
                mode: "nat".into(),
                subnet: "10.9.0.0/24".into(),
                overlay: overlay.map(String::from),
                vlan,
                uplink: vlan.map(|_| "eth0".into()),
                ..Default::default()
            }
            .validate(|| "lybr1".into())
        };
        assert!(spans(&made(None, None).unwrap()), "its own bridge: VXLAN by default");
        assert!(spans(&made(Some("vxlan"), None).unwrap()));
        assert!(!spans(&made(Some("none"), None).unwrap()), "none: each host alone");
        assert!(!spans(&made(None, Some(10)).unwrap()), "a VLAN is on the trunk");
        assert!(!spans(&made(Some("vlan"), Some(10)).unwrap()));
        assert!(!spans(&made(Some("none"), Some(10)).unwrap()));
        for (overlay, vlan, why) in [
            (Some("vlan"), None, "add --vlan ID --uplink IF"),
            (Some("vxlan"), Some(10), "on the physical network already"),
            (Some("geneve"), None, "use vxlan, vlan or none"),
        ] {
            let e = made(overlay, vlan).unwrap_err().to_string();
            assert!(e.contains(why), "{overlay:?} {vlan:?}: {e}");
        }
    }

    #[test]
    fn vni_is_stable_nonzero_and_24_bits() {
        assert_eq!(vni("default"), vni("default"));
        assert_ne!(vni("default"), vni("web"));
        for k in ["", "a", "default", "p/web", "azure%2Fweb"] {
            assert!(vni(k) > 0 && vni(k) < 1 << 24, "{k}");
        }
        let n = test_network("web", "10.9.0.0/24", "lybr1");
        assert!(vxlan_ifname(&n).len() <= 15);
    }

    #[test]
    fn a_fresh_network_gets_its_device_and_entries_for_remote_ports() {
        let n = test_network("default", "192.168.122.0/24", "lybr0");
        let remotes = BTreeMap::from([("b".to_string(), B)]);
        let ports = [remote_port("p1", "default", "b", [2, 0, 0, 0, 0, 1]), remote_port("p2", "other", "b", [2; 6])];
        let overlay = Overlay { local: A, remotes: &remotes, remote_ports: &ports };
        let ops = network_ops(&n, &overlay, &underlay());
        let name = vxlan_ifname(&n);
        assert!(matches!(&ops[0], Op::CreateVxlan(v)
            if v.name == name && v.local == A && v.port == 4789 && v.mtu == Some(1450) && v.dev.as_deref() == Some("eth1")));
        assert!(ops.contains(&Op::SetMaster { link: name.clone(), master: Some("lybr0".into()), previous: None }));
        assert!(ops.contains(&Op::SetMtu { link: "lybr0".into(), mtu: 1450, previous: 1500 }));
        let fdb: Vec<&Op> = ops.iter().filter(|o| matches!(o, Op::AddFdb { .. })).collect();
        assert_eq!(
            fdb,
            [
                &Op::AddFdb { link: name.clone(), mac: FLOOD, dst: Some(B) },
                &Op::AddFdb { link: name.clone(), mac: Mac([2, 0, 0, 0, 0, 1]), dst: Some(B) },
            ]
        );
        // ARP suppression: the remote port's address answered by the device.
        let neighbours: Vec<&Op> = ops.iter().filter(|o| matches!(o, Op::AddNeighbour { .. })).collect();
        let p1 = (Ipv4Addr::new(192, 168, 122, 2), Mac([2, 0, 0, 0, 0, 1]));
        assert_eq!(neighbours, [&Op::AddNeighbour { link: name.clone(), ip: p1.0, mac: p1.1 }]);
    }

    #[test]
    fn converged_needs_nothing_and_a_gone_port_loses_its_entries() {
        let n = test_network("default", "192.168.122.0/24", "lybr0");
        let name = vxlan_ifname(&n);
        let remotes = BTreeMap::from([("b".to_string(), B)]);
        let ports = [remote_port("p1", "default", "b", [2, 0, 0, 0, 0, 1])];
        let overlay = Overlay { local: A, remotes: &remotes, remote_ports: &ports };
        let mut o = underlay();
        o.links.insert(
            "lybr0".into(),
            ObservedLink { name: "lybr0".into(), kind: LinkKind::Bridge, mtu: 1450, up: true, ..Default::default() },
        );
        o.links.insert(
            name.clone(),
            ObservedLink {
                name: name.clone(),
                kind: LinkKind::Vxlan,
                mtu: 1450,
                up: true,
                master: Some("lybr0".into()),
                alias: Some(vxlan_alias("default")),
                ..Default::default()
            },
        );
        o.fdb.insert(name.clone(), wanted_fdb("default", &overlay));
        o.neighbours.insert(name.clone(), wanted_neighbours("default", &overlay));
        assert_eq!(network_ops(&n, &overlay, &o), []);

        let none = Overlay { local: A, remotes: &remotes, remote_ports: &[] };
        assert_eq!(
            network_ops(&n, &none, &o),
            [
                Op::DelFdb { link: name.clone(), mac: FLOOD, dst: Some(B) },
                Op::DelFdb { link: name.clone(), mac: Mac([2, 0, 0, 0, 0, 1]), dst: Some(B) },
                Op::DelNeighbour {
                    link: name.clone(),
                    ip: Ipv4Addr::new(192, 168, 122, 2),
                    mac: Mac([2, 0, 0, 0, 0, 1])
                },
            ]
        );
        // The address taken by another port (deleted and made again
        // elsewhere): the entry is replaced.
        let moved = [Port { mac: Mac([2, 0, 0, 0, 0, 9]), ..ports[0].clone() }];
        let other = Overlay { local: A, remotes: &remotes, remote_ports: &moved };
        let ops = network_ops(&n, &other, &o);
        let ip = Ipv4Addr::new(192, 168, 122, 2);
        assert!(ops.ends_with(&[
            Op::DelNeighbour { link: name.clone(), ip, mac: Mac([2, 0, 0, 0, 0, 1]) },
            Op::AddNeighbour { link: name.clone(), ip, mac: Mac([2, 0, 0, 0, 0, 9]) },
        ]));
        // A node that is not registered has no destination.
        let nobody = BTreeMap::new();
        let unknown = Overlay { local: A, remotes: &nobody, remote_ports: &ports };
        assert!(wanted_fdb("default", &unknown).is_empty());
    }

    #[test]
    fn uplink_and_vlan_networks_do_not_span() {
        let mut n = test_network("default", "192.168.122.0/24", "lybr0");
        n.uplink = Some("eth0".into());
        let remotes = BTreeMap::new();
        let overlay = Overlay { local: A, remotes: &remotes, remote_ports: &[] };
        assert!(network_ops(&n, &overlay, &underlay()).is_empty());
    }
}
