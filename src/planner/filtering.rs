//! Planning the `filtering` VLAN backend: one VLAN-aware bridge per uplink
//! (`vlan_filtering 1`), shared by every VLAN network on that uplink.
//!
//! - The uplink is the bridge's trunk port: tagged members of exactly the
//!   VLANs in use (never a blanket range), plus the default VLAN 1
//!   untagged, which carries the host's own untagged traffic: the host's
//!   addresses and routes move from the uplink to the bridge (and back when
//!   the last network goes), as in bridge mode.
//! - A network with a gateway has a VLAN device on the bridge
//!   (`br-eth0.10`) with the gateway address, and the bridge itself is a
//!   tagged member of that VLAN (`bridge vlan add dev br-eth0 vid 10 self`)
//!   so frames reach it.
//! - A VM's port is an access port: its network's VLAN `pvid untagged`,
//!   and the default VLAN 1 the kernel gives every new port removed, or the
//!   port would leak into the host's untagged LAN. A trunk port is a member
//!   of each VLAN it carries, tagged, and of its native network's VLAN
//!   untagged.

use std::collections::BTreeMap;

use super::links::{move_config, vlan_alias};
use crate::kernel::link::{BridgeVlan, DEFAULT_PVID, OWNER_ALIAS_PREFIX};
use crate::kernel::{Observed, ObservedLink, Op};
use crate::model::{Network, Port};

/// Ownership mark of an uplink's VLAN-filtering bridge; it names the
/// uplink, so the host's addresses can be given back even if no network
/// record is left.
pub fn bridge_alias(uplink: &str) -> String {
    format!("{OWNER_ALIAS_PREFIX}vlans:uplink:{uplink}")
}

/// The active networks on VLAN-filtering bridges, by uplink.
pub fn groups<'a>(networks: impl IntoIterator<Item = &'a Network>) -> BTreeMap<&'a str, Vec<&'a Network>> {
    let mut groups: BTreeMap<&str, Vec<&Network>> = BTreeMap::new();
    for net in networks.into_iter().filter(|n| n.filtering()) {
        if let Some(uplink) = net.uplink.as_deref() {
            groups.entry(uplink).or_default().push(net);
        }
    }
    groups
}

/// The operations that bring the VLAN table of `link` from `current` to
/// `wanted`: entries added or re-flagged, entries nobody wants removed
/// (but VLAN 1, the host's untagged LAN, where `keep_default`).
fn table_ops(link: &str, self_: bool, current: &[BridgeVlan], wanted: &[BridgeVlan], keep_default: bool) -> Vec<Op> {
    let mut ops = Vec::new();
    for w in wanted.iter().filter(|w| !current.contains(w)) {
        ops.push(Op::AddBridgeVlan { link: link.into(), vid: w.vid, pvid: w.pvid, untagged: w.untagged, self_ });
    }
    for c in current {
        let unwanted = !wanted.iter().any(|w| w.vid == c.vid);
        if unwanted && !(keep_default && c.vid == DEFAULT_PVID) {
            ops.push(Op::DelBridgeVlan { link: link.into(), entry: *c, self_ });
        }
    }
    ops
}

/// The VLAN table a link has once it is (or is about to be) a port of
/// `bridge`: what the kernel reports, or, for a link joining now, the
/// default VLAN the kernel gives it.
fn table_in(link: Option<&ObservedLink>, bridge: &str) -> Vec<BridgeVlan> {
    match link {
        Some(l) if l.master.as_deref() == Some(bridge) => l.vlans.clone(),
        _ => vec![BridgeVlan::access(DEFAULT_PVID)],
    }
}

/// The operations that bring one uplink's VLAN-filtering bridge to what its
/// active networks (`nets`, all on `uplink`, sharing one bridge) need:
/// the bridge, its own VLANs, the uplink as trunk with the host's
/// configuration moved onto the bridge, and each gateway's VLAN device.
pub fn bridge_ops(uplink: &str, nets: &[&Network], observed: &Observed) -> Vec<Op> {
    let Some(bridge) = nets.first().map(|n| n.bridge.as_str()) else { return Vec::new() };
    let mut ops = Vec::new();
    let up = observed.links.get(uplink);
    let existing = observed.links.get(bridge);
    match existing {
        // Someone else's interface with that name: never touched.
        Some(b) if !b.owned() => return ops,
        None => {
            ops.push(Op::CreateBridge {
                name: bridge.into(),
                mac: up.and_then(|u| u.mac),
                mtu: None,
                alias: bridge_alias(uplink),
            });
            ops.push(Op::SetVlanFiltering { bridge: bridge.into(), on: true });
            ops.push(Op::SetUp { link: bridge.into(), up: true });
        }
        Some(b) => {
            if !b.bridge.as_ref().is_some_and(|i| i.vlan_filtering) {
                ops.push(Op::SetVlanFiltering { bridge: bridge.into(), on: true });
            }
            if !b.up {
                ops.push(Op::SetUp { link: bridge.into(), up: true });
            }
        }
    }
    let gateways: Vec<&Network> = nets.iter().copied().filter(|n| n.has_host_address()).collect();
    // The bridge's own table: tagged in each VLAN that has a gateway.
    let own = existing.map_or_else(|| vec![BridgeVlan::access(DEFAULT_PVID)], |b| b.vlans.clone());
    let wanted: Vec<BridgeVlan> = gateways.iter().filter_map(|n| n.vlan).map(BridgeVlan::tagged).collect();
    ops.extend(table_ops(bridge, true, &own, &wanted, true));
    if let Some(up) = up {
        if up.master.as_deref() != Some(bridge) {
            ops.push(Op::SetMaster { link: uplink.into(), master: Some(bridge.into()), previous: up.master.clone() });
        }
        let wanted: Vec<BridgeVlan> = nets.iter().filter_map(|n| n.vlan).map(BridgeVlan::tagged).collect();
        ops.extend(table_ops(uplink, false, &table_in(Some(up), bridge), &wanted, true));
        ops.extend(move_config(up, bridge, observed));
    }
    for net in gateways {
        ops.extend(gateway_ops(net, observed));
    }
    ops
}

/// A network's gateway on the bridge: a VLAN device of the bridge with the
/// gateway address, up.
fn gateway_ops(net: &Network, observed: &Observed) -> Vec<Op> {
    let Some(vid) = net.vlan else { return Vec::new() };
    let name = net.l3_ifname();
    let mut ops = Vec::new();
    let existing = observed.links.get(&name);
    match existing {
        Some(l) if !l.owned() => return ops,
        None => ops.push(Op::CreateVlan {
            name: name.clone(),
            parent: net.bridge.clone(),
            id: vid,
            alias: vlan_alias(&net.key()),
        }),
        Some(_) => {}
    }
    if !existing.is_some_and(|l| l.addrs.contains(&net.gateway_cidr())) {
        ops.push(Op::AddAddress { link: name.clone(), addr: net.gateway_cidr() });
    }
    if let Some(mtu) = net.mtu.filter(|m| existing.is_none_or(|l| l.mtu != *m)) {
        ops.push(Op::SetMtu { link: name.clone(), mtu, previous: existing.map_or(1500, |l| l.mtu) });
    }
    if !existing.is_some_and(|l| l.up) {
        ops.push(Op::SetUp { link: name, up: true });
    }
    ops
}

/// The VLAN-filtering bridge a port belongs to, if its network or the
/// networks it carries are on one.
pub fn port_bridge<'a>(net: Option<&'a Network>, trunk: &[&'a Network]) -> Option<&'a Network> {
    trunk.iter().copied().find(|n| n.filtering()).or(net.filter(|n| n.filtering()))
}

/// A port on a VLAN-filtering bridge (`on` is any network of that
/// bridge): enslaved, up, with the VLAN table of an access port of its
/// network, or of a trunk port of the networks it carries (tagged) and its
/// native network (untagged).
pub fn port_ops(
    port: &Port,
    net: Option<&Network>,
    trunk: &[&Network],
    on: &Network,
    existing: Option<&ObservedLink>,
) -> Vec<Op> {
    let bridge = on.bridge.as_str();
    let mut ops = Vec::new();
    let master = existing.and_then(|l| l.master.clone());
    if master.as_deref() != Some(bridge) {
        ops.push(Op::SetMaster { link: port.ifname.clone(), master: Some(bridge.into()), previous: master });
    }
    let native = net.filter(|n| port.untagged && n.filtering() && n.bridge == bridge);
    let mut wanted: Vec<BridgeVlan> = native.and_then(|n| n.vlan).map(BridgeVlan::access).into_iter().collect();
    wanted.extend(trunk.iter().filter_map(|n| n.vlan).map(BridgeVlan::tagged));
    ops.extend(table_ops(&port.ifname, false, &table_in(existing, bridge), &wanted, false));
    if !existing.is_some_and(|l| l.up) {
        ops.push(Op::SetUp { link: port.ifname.clone(), up: true });
    }
    ops
}
