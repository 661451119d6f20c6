//! Links, addresses and routes: what the kernel reports ([`Observed`]) and
//! the operations that change it ([`Op`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::model::Mac;

/// Prefix of the alias lanyard sets on the links it owns.
pub const OWNER_ALIAS_PREFIX: &str = "lanyard:";

/// What sort of device a link is (IFLA_INFO_KIND).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkKind {
    /// A Linux bridge.
    Bridge,
    /// A TUN or TAP device.
    Tun,
    /// One end of a veth pair.
    Veth,
    /// An 802.1Q VLAN device.
    Vlan,
    /// A VXLAN tunnel endpoint.
    Vxlan,
    /// A physical NIC or anything without a kind.
    #[default]
    Device,
    /// Any other kind, by its kernel name.
    Other(String),
}

impl LinkKind {
    /// The kind from its kernel name (IFLA_INFO_KIND), None for no kind.
    pub fn from_kernel(kind: Option<&str>) -> LinkKind {
        match kind {
            None => LinkKind::Device,
            Some("bridge") => LinkKind::Bridge,
            Some("tun") => LinkKind::Tun,
            Some("veth") => LinkKind::Veth,
            Some("vlan") => LinkKind::Vlan,
            Some("vxlan") => LinkKind::Vxlan,
            Some(other) => LinkKind::Other(other.to_string()),
        }
    }
}

/// Bridge attributes of a bridge link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeInfo {
    /// The bridge id, as `brctl show` prints it (`8000.525400aabbcc`).
    pub id: String,
    /// Whether STP is on.
    pub stp: bool,
    /// Whether VLAN filtering is on.
    pub vlan_filtering: bool,
}

/// One entry of a bridge port's (or a bridge's own) VLAN table, as
/// `bridge vlan show` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BridgeVlan {
    /// VLAN id.
    pub vid: u16,
    /// Untagged frames arriving here belong to `vid`.
    pub pvid: bool,
    /// Frames of `vid` leave here untagged.
    pub untagged: bool,
}

impl BridgeVlan {
    /// A tagged member of `vid`.
    pub fn tagged(vid: u16) -> BridgeVlan {
        BridgeVlan { vid, pvid: false, untagged: false }
    }

    /// An access port's entry: untagged frames in, untagged frames out.
    pub fn access(vid: u16) -> BridgeVlan {
        BridgeVlan { vid, pvid: true, untagged: true }
    }
}

/// The VLAN a bridge gives every new port (and itself), untagged
/// (`default_pvid`). lanyard leaves the default as it is, and removes the
/// entry where it would leak an access port into VLAN 1.
pub const DEFAULT_PVID: u16 = 1;

/// One link as the kernel reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedLink {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// Device kind.
    pub kind: LinkKind,
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
    /// Hardware address.
    pub mac: Option<Mac>,
    /// Bridges only.
    pub bridge: Option<BridgeInfo>,
    /// Bridge VLAN table (a port's, or a bridge's own), by VLAN id. Read
    /// only where a VLAN-filtering bridge is involved; empty elsewhere.
    pub vlans: Vec<BridgeVlan>,
}

impl ObservedLink {
    /// Whether lanyard created this link.
    pub fn owned(&self) -> bool {
        self.alias.as_deref().is_some_and(|a| a.starts_with(OWNER_ALIAS_PREFIX))
    }
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
    /// Who installed it.
    pub proto: RouteProto,
}

/// Who installed a route (rtm_protocol).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RouteProto {
    /// The kernel, for an address's prefix: it follows its address.
    Kernel,
    /// A DHCP client.
    Dhcp,
    /// Static, by an administrator or a tool (the default).
    #[default]
    Static,
    /// Any other protocol number.
    Other(u8),
}

/// What the kernel has in the namespace lanyard manages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Links by name.
    pub links: BTreeMap<String, ObservedLink>,
    /// IPv4 routes of the main table.
    pub routes: Vec<Route>,
    /// net.ipv4.ip_forward.
    pub ip_forward: bool,
    /// Forwarding entries with a remote tunnel endpoint (MAC, remote) of
    /// lanyard's VXLAN devices, by device name. Read only when lanyard
    /// owns a VXLAN device; empty elsewhere.
    pub fdb: BTreeMap<String, BTreeSet<(Mac, Ipv4Addr)>>,
    /// Permanent IPv4 neighbour entries (address, MAC) of lanyard's VXLAN
    /// devices, by device name: what the device answers ARP with itself
    /// (proxy). Read with [`Observed::fdb`].
    pub neighbours: BTreeMap<String, BTreeSet<(Ipv4Addr, Mac)>>,
}

/// How to create a TAP device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapSpec {
    /// Name.
    pub name: String,
    /// Host-side MAC.
    pub mac: Mac,
    /// User allowed to open it.
    pub owner: Option<String>,
    /// Group allowed to open it.
    pub group: Option<String>,
    /// MTU.
    pub mtu: Option<u32>,
    /// Ownership mark.
    pub alias: String,
}

/// How to create a veth pair whose peer lives in another namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethSpec {
    /// Host-side name.
    pub name: String,
    /// Namespace of the peer (a name under /run/netns).
    pub peer_netns: String,
    /// Peer's name there.
    pub peer_name: String,
    /// Peer's (the guest's) MAC.
    pub peer_mac: Mac,
    /// MTU of both ends.
    pub mtu: Option<u32>,
    /// Ownership mark.
    pub alias: String,
}

/// How to create a VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    /// Name.
    pub name: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// Local tunnel address.
    pub local: Ipv4Addr,
    /// Underlay device.
    pub dev: Option<String>,
    /// UDP port (4789 by IANA).
    pub port: u16,
    /// MTU.
    pub mtu: Option<u32>,
    /// Ownership mark.
    pub alias: String,
}

/// One kernel operation. Each is performed as one unit: the driver either
/// does all of it or, when a later step of it fails, undoes its earlier
/// steps before it reports the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create a bridge (STP off), down, marked with `alias`.
    CreateBridge {
        /// Name.
        name: String,
        /// Hardware address, pinned so no port change ever moves it.
        mac: Option<Mac>,
        /// MTU.
        mtu: Option<u32>,
        /// Ownership mark.
        alias: String,
    },
    /// Create a persistent TAP (down).
    CreateTap(TapSpec),
    /// Create a veth pair; the peer moves into its namespace and comes up
    /// there, the host side stays down.
    CreateVeth(VethSpec),
    /// Create an 802.1Q device `name` for VLAN `id` on `parent` (down).
    CreateVlan {
        /// Name.
        name: String,
        /// Parent (trunk) link.
        parent: String,
        /// VLAN id, 1..=4094.
        id: u16,
        /// Ownership mark.
        alias: String,
    },
    /// Create a VXLAN device (down).
    CreateVxlan(VxlanSpec),
    /// Delete a link.
    DeleteLink {
        /// Name.
        name: String,
    },
    /// Delete several links in one kernel batch: a link's removal waits
    /// for the kernel to let go of it, and in one batch that wait is paid
    /// once (a network's 500 ports go in well under a second, not in 8 s).
    /// Links already gone are skipped.
    DeleteLinks {
        /// Names.
        names: Vec<String>,
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
    /// Enslave a link to a bridge (None: release it). `previous` is what it
    /// had before, so the op can be undone exactly.
    SetMaster {
        /// Link.
        link: String,
        /// New master.
        master: Option<String>,
        /// Master before.
        previous: Option<String>,
    },
    /// Bring a link up or down.
    SetUp {
        /// Link.
        link: String,
        /// Up (true) or down.
        up: bool,
    },
    /// Set the MTU.
    SetMtu {
        /// Link.
        link: String,
        /// MTU.
        mtu: u32,
        /// MTU before.
        previous: u32,
    },
    /// Set the hardware address.
    SetMac {
        /// Link.
        link: String,
        /// Address.
        mac: Mac,
        /// Address before.
        previous: Option<Mac>,
    },
    /// Add or replace a route through `link`.
    ReplaceRoute {
        /// Link.
        link: String,
        /// The route (its `dev` is ignored).
        route: Route,
    },
    /// Delete a route.
    DelRoute {
        /// Link.
        link: String,
        /// The route (its `dev` is ignored).
        route: Route,
    },
    /// Turn VLAN filtering of a bridge on or off.
    SetVlanFiltering {
        /// Bridge.
        bridge: String,
        /// On or off.
        on: bool,
    },
    /// Add a VLAN to a bridge port's (or, with `self_`, the bridge's own)
    /// VLAN table: `bridge vlan add`.
    AddBridgeVlan {
        /// Port (or bridge).
        link: String,
        /// VLAN id.
        vid: u16,
        /// Untagged frames arriving here belong to `vid`.
        pvid: bool,
        /// Frames of `vid` leave here untagged.
        untagged: bool,
        /// The bridge's own entry (`self`), not a port's.
        self_: bool,
    },
    /// Remove a VLAN from a port's VLAN table: `bridge vlan del`.
    DelBridgeVlan {
        /// Port (or bridge).
        link: String,
        /// The entry as it is, so the op can be undone exactly.
        entry: BridgeVlan,
        /// The bridge's own entry.
        self_: bool,
    },
    /// Add a forwarding entry: `bridge fdb append MAC dev LINK dst DST`
    /// (a VXLAN's flood or unicast destination when `dst` is set).
    AddFdb {
        /// Port or VXLAN device.
        link: String,
        /// Destination MAC (00:00:00:00:00:00 floods).
        mac: Mac,
        /// Remote tunnel endpoint.
        dst: Option<Ipv4Addr>,
    },
    /// Remove a forwarding entry.
    DelFdb {
        /// Port or VXLAN device.
        link: String,
        /// MAC.
        mac: Mac,
        /// Remote tunnel endpoint.
        dst: Option<Ipv4Addr>,
    },
    /// Add (or replace) a permanent neighbour entry: `ip neigh replace IP
    /// lladdr MAC dev LINK nud permanent` (on a VXLAN device with proxy
    /// on, the device answers ARP for IP itself).
    AddNeighbour {
        /// VXLAN device.
        link: String,
        /// IPv4 address.
        ip: Ipv4Addr,
        /// Its MAC.
        mac: Mac,
    },
    /// Remove a neighbour entry.
    DelNeighbour {
        /// VXLAN device.
        link: String,
        /// IPv4 address.
        ip: Ipv4Addr,
        /// Its MAC (to undo the removal).
        mac: Mac,
    },
    /// Turn net.ipv4.ip_forward in this namespace on or off.
    SetForwarding {
        /// On or off.
        on: bool,
    },
}

impl Op {
    /// The operation that undoes this one, for rollback of a half-applied
    /// plan. Deletions have none: a deleted link cannot be brought back as
    /// it was.
    pub fn undo(&self) -> Option<Op> {
        Some(match self {
            Op::CreateBridge { name, .. } | Op::CreateVlan { name, .. } => Op::DeleteLink { name: name.clone() },
            Op::CreateTap(t) => Op::DeleteLink { name: t.name.clone() },
            Op::CreateVeth(v) => Op::DeleteLink { name: v.name.clone() },
            Op::CreateVxlan(v) => Op::DeleteLink { name: v.name.clone() },
            Op::AddAddress { link, addr } => Op::DelAddress { link: link.clone(), addr: *addr },
            Op::DelAddress { link, addr } => Op::AddAddress { link: link.clone(), addr: *addr },
            Op::SetMaster { link, master, previous } => {
                Op::SetMaster { link: link.clone(), master: previous.clone(), previous: master.clone() }
            }
            Op::SetUp { link, up } => Op::SetUp { link: link.clone(), up: !up },
            Op::SetMtu { link, mtu, previous } => Op::SetMtu { link: link.clone(), mtu: *previous, previous: *mtu },
            Op::SetMac { link, mac, previous } => {
                Op::SetMac { link: link.clone(), mac: (*previous)?, previous: Some(*mac) }
            }
            Op::ReplaceRoute { link, route } => Op::DelRoute { link: link.clone(), route: route.clone() },
            Op::DelRoute { link, route } => Op::ReplaceRoute { link: link.clone(), route: route.clone() },
            Op::SetVlanFiltering { bridge, on } => Op::SetVlanFiltering { bridge: bridge.clone(), on: !on },
            Op::AddBridgeVlan { link, vid, pvid, untagged, self_ } => Op::DelBridgeVlan {
                link: link.clone(),
                entry: BridgeVlan { vid: *vid, pvid: *pvid, untagged: *untagged },
                self_: *self_,
            },
            Op::DelBridgeVlan { link, entry, self_ } => Op::AddBridgeVlan {
                link: link.clone(),
                vid: entry.vid,
                pvid: entry.pvid,
                untagged: entry.untagged,
                self_: *self_,
            },
            Op::AddFdb { link, mac, dst } => Op::DelFdb { link: link.clone(), mac: *mac, dst: *dst },
            Op::AddNeighbour { link, ip, mac } => Op::DelNeighbour { link: link.clone(), ip: *ip, mac: *mac },
            Op::DelNeighbour { link, ip, mac } => Op::AddNeighbour { link: link.clone(), ip: *ip, mac: *mac },
            Op::SetForwarding { on } => Op::SetForwarding { on: !on },
            Op::DelFdb { .. } | Op::DeleteLink { .. } | Op::DeleteLinks { .. } => return None,
        })
    }

    /// The link this op creates, if any.
    pub fn creates(&self) -> Option<&str> {
        match self {
            Op::CreateBridge { name, .. } | Op::CreateVlan { name, .. } => Some(name),
            Op::CreateTap(t) => Some(&t.name),
            Op::CreateVeth(v) => Some(&v.name),
            Op::CreateVxlan(v) => Some(&v.name),
            _ => None,
        }
    }
}

fn opt<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "none".to_string(), ToString::to_string)
}

/// One short line per op, as errors and logs name it.
impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::CreateBridge { name, .. } => write!(f, "create bridge {name}"),
            Op::CreateTap(t) => write!(f, "create tap {}", t.name),
            Op::CreateVeth(v) => write!(f, "create veth {} (peer {} in netns {})", v.name, v.peer_name, v.peer_netns),
            Op::CreateVlan { name, parent, id, .. } => write!(f, "create vlan {name} (id {id} on {parent})"),
            Op::CreateVxlan(v) => write!(f, "create vxlan {} (vni {})", v.name, v.vni),
            Op::DeleteLink { name } => write!(f, "delete link {name}"),
            Op::DeleteLinks { names } => match names.as_slice() {
                [] => write!(f, "delete no links"),
                [one] => write!(f, "delete link {one}"),
                [first, .., last] => write!(f, "delete {} links ({first} .. {last})", names.len()),
            },
            Op::AddAddress { link, addr } => write!(f, "add address {addr} to {link}"),
            Op::DelAddress { link, addr } => write!(f, "remove address {addr} from {link}"),
            Op::SetMaster { link, master: Some(m), .. } => write!(f, "enslave {link} to {m}"),
            Op::SetMaster { link, master: None, .. } => write!(f, "release {link} from its bridge"),
            Op::SetUp { link, up } => write!(f, "set {link} {}", if *up { "up" } else { "down" }),
            Op::SetMtu { link, mtu, .. } => write!(f, "set mtu {mtu} on {link}"),
            Op::SetMac { link, mac, .. } => write!(f, "set address {mac} on {link}"),
            Op::ReplaceRoute { link, route } => {
                write!(f, "replace route {} via {} dev {link}", opt(&route.dst), opt(&route.gateway))
            }
            Op::DelRoute { link, route } => {
                write!(f, "delete route {} via {} dev {link}", opt(&route.dst), opt(&route.gateway))
            }
            Op::SetVlanFiltering { bridge, on } => {
                write!(f, "turn vlan filtering {} on {bridge}", if *on { "on" } else { "off" })
            }
            Op::AddBridgeVlan { link, vid, pvid, untagged, self_ } => write!(
                f,
                "add vlan {vid}{}{}{} to {link}",
                if *pvid { " pvid" } else { "" },
                if *untagged { " untagged" } else { "" },
                if *self_ { " self" } else { "" }
            ),
            Op::DelBridgeVlan { link, entry, self_ } => {
                write!(f, "remove vlan {}{} from {link}", entry.vid, if *self_ { " self" } else { "" })
            }
            Op::AddFdb { link, mac, dst } => write!(f, "add fdb {mac} dst {} on {link}", opt(dst)),
            Op::DelFdb { link, mac, dst } => write!(f, "remove fdb {mac} dst {} on {link}", opt(dst)),
            Op::AddNeighbour { link, ip, mac } => write!(f, "add neighbour {ip} lladdr {mac} on {link}"),
            Op::DelNeighbour { link, ip, .. } => write!(f, "remove neighbour {ip} from {link}"),
            Op::SetForwarding { on } => write!(f, "set net.ipv4.ip_forward to {}", u8::from(*on)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undo_of_undo_is_the_op() {
        let ops = [
            Op::AddAddress { link: "b".into(), addr: "10.0.0.1/24".parse().unwrap() },
            Op::SetMaster { link: "p".into(), master: Some("b".into()), previous: None },
            Op::SetMaster { link: "p".into(), master: Some("b".into()), previous: Some("c".into()) },
            Op::SetUp { link: "b".into(), up: true },
            Op::SetMtu { link: "b".into(), mtu: 9000, previous: 1500 },
            Op::SetVlanFiltering { bridge: "b".into(), on: true },
            Op::AddBridgeVlan { link: "p".into(), vid: 10, pvid: true, untagged: true, self_: false },
            Op::DelBridgeVlan { link: "b".into(), entry: BridgeVlan::tagged(10), self_: true },
        ];
        for op in ops {
            assert_eq!(op.undo().and_then(|u| u.undo()), Some(op.clone()), "{op}");
        }
        assert_eq!(Op::DeleteLink { name: "x".into() }.undo(), None);
        assert_eq!(
            Op::CreateBridge { name: "b".into(), mac: None, mtu: None, alias: "lanyard:net:x".into() }.undo(),
            Some(Op::DeleteLink { name: "b".into() })
        );
    }
}
