//! Planning links: bridges with their gateway addresses, ports' TAPs and
//! veths, bridge-mode uplinks, and the removal of owned links nobody wants.

use std::collections::{BTreeMap, BTreeSet};

use crate::kernel::link::{TapSpec, VethSpec, OWNER_ALIAS_PREFIX};
use crate::kernel::{LinkKind, Observed, ObservedLink, Op, RouteProto};
use crate::model::{NetState, Network, Port, PortType, VlanBackend};

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

/// Ownership mark of a network's VLAN device.
pub fn vlan_alias(net: &str) -> String {
    format!("{OWNER_ALIAS_PREFIX}vlan:{net}")
}

pub use crate::model::vlan_ifname;

/// The VLAN device a network owns, if it is a VLAN network made of VLAN
/// devices (the `subif` backend).
pub fn network_vlan_device(net: &Network) -> Option<String> {
    match (net.uplink.as_deref(), net.vlan, net.vlan_backend) {
        (Some(u), Some(vid), Some(VlanBackend::Subif)) => Some(vlan_ifname(u, vid)),
        _ => None,
    }
}

/// Ownership mark of a port's host-side link.
pub fn port_alias(id: &str) -> String {
    format!("{OWNER_ALIAS_PREFIX}port:{id}")
}

/// Moves the host's IPv4 configuration from `from` to `to`: addresses
/// first added on `to` then removed from `from` (no moment without them),
/// then the routes that are not the kernel's own prefix routes.
pub(super) fn move_config(from: &ObservedLink, to: &str, observed: &Observed) -> Vec<Op> {
    let routes = &observed.routes;
    let mut ops = Vec::new();
    // An address the target has already (the NIC came back with the
    // address it had before the move) is only removed from the source.
    let has = |a: &ipnet::Ipv4Net| observed.links.get(to).is_some_and(|l| l.addrs.contains(a));
    for a in from.addrs.iter().filter(|a| !has(a)) {
        ops.push(Op::AddAddress { link: to.to_string(), addr: *a });
    }
    for a in &from.addrs {
        ops.push(Op::DelAddress { link: from.name.clone(), addr: *a });
    }
    for r in routes.iter().filter(|r| r.dev.as_deref() == Some(from.name.as_str()) && r.proto != RouteProto::Kernel) {
        ops.push(Op::ReplaceRoute { link: to.to_string(), route: r.clone() });
    }
    ops
}

/// The link operations that bring `observed` to `networks` + `ports`.
/// Ports of networks that are not active are left detached from any bridge
/// (their TAPs persist so VMs keep their file descriptors). Deletions come
/// last, so nothing after them can fail. With an `overlay` (a cluster
/// member) every spanning network also gets its VXLAN device and entries.
pub fn plan_links(
    networks: &[Network],
    ports: &[Port],
    observed: &Observed,
    overlay: Option<&super::overlay::Overlay<'_>>,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let active: BTreeMap<std::borrow::Cow<'_, str>, &Network> =
        networks.iter().filter(|n| n.state == NetState::Active).map(|n| (n.key(), n)).collect();
    let mut wanted: BTreeSet<&str> = BTreeSet::new();

    let vlan_devices: Vec<String> = active.values().filter_map(|n| network_vlan_device(n)).collect();
    wanted.extend(vlan_devices.iter().map(String::as_str));
    for net in active.values() {
        wanted.insert(&net.bridge);
        if !net.filtering() {
            ops.extend(bridge_ops(net, observed));
        }
    }
    let gateway_devices: Vec<String> =
        active.values().filter(|n| n.filtering() && n.has_host_address()).map(|n| n.l3_ifname()).collect();
    wanted.extend(gateway_devices.iter().map(String::as_str));
    for (uplink, nets) in super::filtering::groups(active.values().copied()) {
        ops.extend(super::filtering::bridge_ops(uplink, &nets, observed));
    }
    let mut trunk_names: Vec<String> = Vec::new();
    for port in ports {
        wanted.insert(&port.ifname);
        let net = active.get(port.net.as_str()).copied();
        let trunk: Vec<&Network> = port.trunk.iter().filter_map(|t| active.get(t.as_str()).copied()).collect();
        trunk_names.extend(trunk_devices(port, &trunk).into_iter().map(|(n, _)| n));
        ops.extend(port_ops(port, net, &trunk, &observed.links));
    }
    wanted.extend(trunk_names.iter().map(String::as_str));
    // After the bridges (a VXLAN device is enslaved to one), before the
    // deletions.
    let vxlans = overlay.map(|_| super::overlay::devices(active.values().copied())).unwrap_or_default();
    wanted.extend(vxlans.iter().map(String::as_str));
    if let Some(overlay) = overlay {
        for net in active.values() {
            ops.extend(super::overlay::network_ops(net, overlay, observed));
        }
    }
    if active.values().any(|n| n.mode.forwards()) && !observed.ip_forward {
        ops.push(Op::SetForwarding { on: true });
    }
    ops.extend(stale_ops(observed, &wanted));
    ops
}

/// Owned links nobody wants any more: ports before bridges, so no bridge
/// is deleted while it still carries a VM's link.
fn stale_ops(observed: &Observed, wanted: &BTreeSet<&str>) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut stale: Vec<&ObservedLink> =
        observed.links.values().filter(|l| l.owned() && !wanted.contains(l.name.as_str())).collect();
    stale.sort_by_key(|l| (l.kind == LinkKind::Bridge, l.name.clone()));
    // Ports (not bridges) go in one batch: the kernel's wait for a removed
    // link is then paid once.
    let (ports, bridges): (Vec<&ObservedLink>, Vec<&ObservedLink>) =
        stale.into_iter().partition(|l| l.kind != LinkKind::Bridge);
    match ports.as_slice() {
        [] => {}
        [one] => ops.push(Op::DeleteLink { name: one.name.clone() }),
        many => ops.push(Op::DeleteLinks { names: many.iter().map(|l| l.name.clone()).collect() }),
    }
    for link in bridges {
        let uplink = link.alias.as_deref().and_then(alias_uplink).and_then(|u| observed.links.get(u));
        if let Some(uplink) = uplink {
            // Give the host its configuration back before the bridge goes.
            ops.extend(move_config(link, &uplink.name, observed));
            ops.push(Op::SetMaster { link: uplink.name.clone(), master: None, previous: uplink.master.clone() });
        }
        ops.push(Op::DeleteLink { name: link.name.clone() });
    }
    ops
}

/// The operations that bring one active network's bridge to its desired
/// state given what the kernel has: created, addressed, up.
pub fn bridge_ops(net: &Network, observed: &Observed) -> Vec<Op> {
    if let (Some(uplink), true) = (net.uplink.as_deref(), net.enslaves_uplink()) {
        return uplinked_bridge_ops(net, uplink, observed);
    }
    let mut ops = own_bridge_ops(net, observed);
    ops.extend(vlan_device_ops(net, observed));
    ops
}

/// A VLAN network's VLAN device (`subif`): created on the uplink with the
/// network's VLAN id, in the network's bridge, up.
fn vlan_device_ops(net: &Network, observed: &Observed) -> Vec<Op> {
    let (Some(name), Some(uplink), Some(id)) = (network_vlan_device(net), net.uplink.clone(), net.vlan) else {
        return Vec::new();
    };
    let mut ops = Vec::new();
    let existing = observed.links.get(&name);
    if existing.is_some_and(|l| !l.owned()) {
        // Someone else's device with that name: never touched.
        return ops;
    }
    if existing.is_none() {
        if !observed.links.contains_key(&uplink) {
            // The trunk is missing: the bridge waits for it.
            return ops;
        }
        ops.push(Op::CreateVlan { name: name.clone(), parent: uplink, id, alias: vlan_alias(&net.key()) });
    }
    let master = existing.and_then(|l| l.master.clone());
    if master.as_deref() != Some(net.bridge.as_str()) {
        ops.push(Op::SetMaster { link: name.clone(), master: Some(net.bridge.clone()), previous: master });
    }
    if let Some(mtu) = net.mtu.filter(|m| existing.is_none_or(|l| l.mtu != *m)) {
        ops.push(Op::SetMtu { link: name.clone(), mtu, previous: existing.map_or(1500, |l| l.mtu) });
    }
    if !existing.is_some_and(|l| l.up) {
        ops.push(Op::SetUp { link: name, up: true });
    }
    ops
}

/// The network's own bridge: created, with the gateway address when the
/// host has one on the network, its pinned MAC, up.
fn own_bridge_ops(net: &Network, observed: &Observed) -> Vec<Op> {
    let mut ops = Vec::new();
    let name = &net.bridge;
    match observed.links.get(name) {
        // A flat network's adopted bridge: lanyard's address on it, up;
        // never its MAC or MTU.
        Some(link) if net.adopted && link.kind == LinkKind::Bridge => {
            if !link.addrs.contains(&net.gateway_cidr()) {
                ops.push(Op::AddAddress { link: name.clone(), addr: net.gateway_cidr() });
            }
            if !link.up {
                ops.push(Op::SetUp { link: name.clone(), up: true });
            }
        }
        // Someone else's interface with that name: never touched.
        Some(link) if !link.owned() => {}
        None => {
            ops.push(Op::CreateBridge {
                name: name.clone(),
                mac: net.gateway_mac,
                mtu: net.mtu,
                alias: bridge_alias(&net.key(), None),
            });
            if net.has_host_address() {
                ops.push(Op::AddAddress { link: name.clone(), addr: net.gateway_cidr() });
            }
            ops.push(Op::SetUp { link: name.clone(), up: true });
        }
        Some(link) => {
            if net.has_host_address() && !link.addrs.contains(&net.gateway_cidr()) {
                ops.push(Op::AddAddress { link: name.clone(), addr: net.gateway_cidr() });
            }
            if let Some(mac) = net.gateway_mac.filter(|m| link.mac != Some(*m)) {
                ops.push(Op::SetMac { link: name.clone(), mac, previous: link.mac });
            }
            if let Some(mtu) = net.mtu.filter(|m| *m != link.mtu) {
                ops.push(Op::SetMtu { link: name.clone(), mtu, previous: link.mtu });
            }
            if !link.up {
                ops.push(Op::SetUp { link: name.clone(), up: true });
            }
        }
    }
    ops
}

/// Ownership mark of a trunk port's VLAN device.
pub fn trunk_alias(port_id: &str) -> String {
    format!("{OWNER_ALIAS_PREFIX}trunk:{port_id}")
}

/// The VLAN devices a trunk port needs on its host side, one per VLAN
/// network it carries, by name, with the network (`subif` only: on a
/// VLAN-filtering bridge the port's VLAN table does that).
pub fn trunk_devices<'a>(port: &Port, trunk: &[&'a Network]) -> Vec<(String, &'a Network)> {
    trunk.iter().filter(|n| !n.filtering()).filter_map(|n| Some((vlan_ifname(&port.ifname, n.vlan?), *n))).collect()
}

/// The links a port consists of: its own and, for a trunk port, a VLAN
/// device per carried network.
pub fn port_link_names(port: &Port, trunk: &[&Network]) -> Vec<String> {
    std::iter::once(port.ifname.clone()).chain(trunk_devices(port, trunk).into_iter().map(|(n, _)| n)).collect()
}

/// The operations that bring one port's links to their desired state,
/// given its network (None when it is not active), the active VLAN
/// networks it carries as a trunk, and what the kernel has under the
/// port's link names (`links` needs only those). Used by [`plan_links`]
/// and, on its own, by the engine when a port is created, so that adding a
/// port costs the same with ten thousand ports as with one.
///
/// A trunk port's own link carries the untagged frames (its native
/// network's, or none); each carried network gets a VLAN device on the
/// port's link (`ly1234abcd.10`) in that network's bridge, so the guest
/// sees exactly those VLANs tagged and no other.
pub fn port_ops(
    port: &Port,
    net: Option<&Network>,
    trunk: &[&Network],
    links: &BTreeMap<String, ObservedLink>,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let existing = links.get(&port.ifname);
    if existing.is_none() && port.adopted {
        // Its owner (QEMU) is gone; the port waits for `qemu-ifdown` or
        // `port delete`.
        return ops;
    }
    if existing.is_none() {
        let mtu = net.and_then(|n| n.mtu);
        let alias = port_alias(&port.id);
        match (port.port_type, &port.netns, &port.peer_ifname) {
            (PortType::Veth, Some(ns), Some(peer)) => ops.push(Op::CreateVeth(VethSpec {
                name: port.ifname.clone(),
                peer_netns: ns.clone(),
                peer_name: peer.clone(),
                peer_mac: port.mac,
                mtu,
                alias,
            })),
            _ => ops.push(Op::CreateTap(TapSpec {
                name: port.ifname.clone(),
                mac: port.mac.host_side(),
                owner: port.owner.clone(),
                group: port.group.clone(),
                mtu,
                alias,
            })),
        }
    }
    if let Some(on) = super::filtering::port_bridge(net, trunk) {
        ops.extend(super::filtering::port_ops(port, net, trunk, on, existing));
        return ops;
    }
    let master = existing.and_then(|l| l.master.clone());
    let untagged_net = net.filter(|_| port.untagged);
    match untagged_net {
        Some(net) => {
            if master.as_deref() != Some(net.bridge.as_str()) {
                ops.push(Op::SetMaster {
                    link: port.ifname.clone(),
                    master: Some(net.bridge.clone()),
                    previous: master,
                });
            }
        }
        None => {
            if master.is_some() {
                ops.push(Op::SetMaster { link: port.ifname.clone(), master: None, previous: master });
            }
        }
    }
    let carries = !trunk.is_empty();
    if (untagged_net.is_some() || carries) && !existing.is_some_and(|l| l.up) {
        ops.push(Op::SetUp { link: port.ifname.clone(), up: true });
    }
    for (name, vnet) in trunk_devices(port, trunk) {
        let Some(id) = vnet.vlan else { continue };
        let dev = links.get(&name);
        if dev.is_none() {
            ops.push(Op::CreateVlan {
                name: name.clone(),
                parent: port.ifname.clone(),
                id,
                alias: trunk_alias(&port.id),
            });
        }
        let master = dev.and_then(|l| l.master.clone());
        if master.as_deref() != Some(vnet.bridge.as_str()) {
            ops.push(Op::SetMaster { link: name.clone(), master: Some(vnet.bridge.clone()), previous: master });
        }
        if !dev.is_some_and(|l| l.up) {
            ops.push(Op::SetUp { link: name, up: true });
        }
    }
    ops
}

/// What lanyard takes back first from a flat network's bridge that is not
/// simply deleted when the network stops or goes: its gateway address, off
/// an adopted bridge (which stays) or off a bridge whose addresses go back
/// to the flat interface (which should get only its own). Ports go as
/// anywhere.
pub fn release_gateway(net: &Network, observed: &Observed) -> Vec<Op> {
    let flat = net.manager.is_some() && (net.adopted || net.enslaves_uplink());
    match observed.links.get(&net.bridge) {
        Some(b) if flat && b.addrs.contains(&net.gateway_cidr()) => {
            vec![Op::DelAddress { link: net.bridge.clone(), addr: net.gateway_cidr() }]
        }
        _ => Vec::new(),
    }
}

/// A bridge-mode network, or a flat network with its flat interface: the
/// uplink NIC joins the bridge and the host's addresses and routes move
/// from the NIC to the bridge; a flat network's gateway address is added.
fn uplinked_bridge_ops(net: &Network, uplink: &str, observed: &Observed) -> Vec<Op> {
    let mut ops = Vec::new();
    let up = observed.links.get(uplink);
    let bridge = observed.links.get(&net.bridge);
    match bridge {
        Some(b) if !b.owned() && !net.adopted => return Vec::new(),
        None => {
            ops.push(Op::CreateBridge {
                name: net.bridge.clone(),
                mac: up.and_then(|u| u.mac),
                mtu: net.mtu,
                alias: bridge_alias(&net.key(), Some(uplink)),
            });
            ops.push(Op::SetUp { link: net.bridge.clone(), up: true });
        }
        Some(b) if !b.up => ops.push(Op::SetUp { link: net.bridge.clone(), up: true }),
        Some(_) => {}
    }
    // A flat network's gateway (bridge mode's is the LAN's: the host's own
    // addresses move over from the NIC below).
    let has_gateway = bridge.is_some_and(|b| b.addrs.contains(&net.gateway_cidr()));
    if net.mode != crate::model::Mode::Bridge && !has_gateway {
        ops.push(Op::AddAddress { link: net.bridge.clone(), addr: net.gateway_cidr() });
    }
    let Some(up) = up else { return ops };
    if up.master.as_deref() != Some(net.bridge.as_str()) {
        ops.push(Op::SetMaster {
            link: uplink.to_string(),
            master: Some(net.bridge.clone()),
            previous: up.master.clone(),
        });
    }
    ops.extend(move_config(up, &net.bridge, observed));
    ops
}
