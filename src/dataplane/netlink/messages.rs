//! The rtnetlink requests the driver sends, one builder per request, as
//! typed `netlink-packet-route` values with the NLM_F_* flags that go with
//! them. Pure: nothing here opens a socket, so every message can be checked
//! without root.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;

use ipnet::Ipv4Net;
use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    AfSpecBridge, BridgeFlag, BridgeStpState, BridgeVlanInfo, BridgeVlanInfoFlags, InfoBridge, InfoData, InfoKind,
    InfoVeth, InfoVlan, InfoVxlan, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::kernel::link::{VethSpec, VxlanSpec};
use crate::kernel::{Route, RouteProto};
use crate::model::Mac;

/// One request: the message and its NLM_F_* flags (NLM_F_REQUEST and
/// NLM_F_ACK are added by the socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The rtnetlink message.
    pub message: RouteNetlinkMessage,
    /// Creation flags.
    pub flags: u16,
}

/// Creating a link: it must not exist yet.
const CREATE: u16 = NLM_F_CREATE | NLM_F_EXCL;

fn request(message: RouteNetlinkMessage, flags: u16) -> Request {
    Request { message, flags }
}

/// A link message addressed to the link `name` (the kernel looks links up
/// by IFLA_IFNAME when the index is 0).
fn link_named(name: &str) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg
}

/// Counters are never read, and they are a fifth of a link message.
fn skip_stats() -> LinkAttribute {
    LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats])
}

/// RTM_GETLINK of one link by name.
pub fn get_link_by_name(name: &str) -> RouteNetlinkMessage {
    let mut msg = link_named(name);
    msg.attributes.push(skip_stats());
    RouteNetlinkMessage::GetLink(msg)
}

/// RTM_GETLINK of one link by index.
pub fn get_link_by_index(index: u32) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes.push(skip_stats());
    RouteNetlinkMessage::GetLink(msg)
}

/// RTM_GETLINK dump of every link.
pub fn dump_links() -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes.push(skip_stats());
    RouteNetlinkMessage::GetLink(msg)
}

/// RTM_GETLINK dump of family AF_BRIDGE with each bridge port's (and each
/// bridge's own) VLAN table, one entry per VLAN (`bridge vlan show`). The
/// kernel cannot filter this dump by link.
pub fn dump_bridge_vlans() -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.interface_family = AddressFamily::Bridge;
    msg.attributes.push(LinkAttribute::ExtMask(vec![LinkExtentMask::Brvlan]));
    RouteNetlinkMessage::GetLink(msg)
}

/// RTM_GETNEIGH dump of family AF_BRIDGE: every bridge port's and VXLAN
/// device's forwarding entries (`bridge fdb show`).
pub fn dump_fdb() -> RouteNetlinkMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    RouteNetlinkMessage::GetNeighbour(msg)
}

/// RTM_GETADDR dump of IPv4 addresses: of every link, or (the kernel
/// filters with strict checking on) of link `index`.
pub fn dump_addresses(index: Option<u32>) -> RouteNetlinkMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.index = index.unwrap_or(0);
    RouteNetlinkMessage::GetAddress(msg)
}

/// RTM_GETROUTE dump of the IPv4 main table (the kernel filters by table
/// with strict checking on).
pub fn dump_routes() -> RouteNetlinkMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    RouteNetlinkMessage::GetRoute(msg)
}

fn link_info(kind: InfoKind, data: Option<InfoData>) -> LinkAttribute {
    let mut info = vec![LinkInfo::Kind(kind)];
    info.extend(data.map(LinkInfo::Data));
    LinkAttribute::LinkInfo(info)
}

fn mac_attr(mac: Mac) -> LinkAttribute {
    LinkAttribute::Address(mac.0.to_vec())
}

/// RTM_NEWLINK of a bridge, STP off, down. The alias is not part of it: the
/// kernel ignores IFLA_IFALIAS when it creates a link (see [`set_alias`]).
pub fn create_bridge(name: &str, mac: Option<Mac>, mtu: Option<u32>) -> Request {
    let mut msg = link_named(name);
    msg.attributes.extend(mac.map(mac_attr));
    msg.attributes.extend(mtu.map(LinkAttribute::Mtu));
    let data = InfoData::Bridge(vec![InfoBridge::StpState(BridgeStpState::Disabled)]);
    msg.attributes.push(link_info(InfoKind::Bridge, Some(data)));
    request(RouteNetlinkMessage::NewLink(msg), CREATE)
}

/// RTM_NEWLINK of a veth pair: the host side `spec.name` with the MTU; the
/// peer with its name, MAC and MTU, in the namespace whose fd is `netns`.
/// Both down: see `ops` for why the peer comes up in a second step.
pub fn create_veth(spec: &VethSpec, netns: RawFd) -> Request {
    let mut peer = link_named(&spec.peer_name);
    peer.attributes.push(mac_attr(spec.peer_mac));
    peer.attributes.extend(spec.mtu.map(LinkAttribute::Mtu));
    peer.attributes.push(LinkAttribute::NetNsFd(netns));
    let mut msg = link_named(&spec.name);
    msg.attributes.extend(spec.mtu.map(LinkAttribute::Mtu));
    msg.attributes.push(link_info(InfoKind::Veth, Some(InfoData::Veth(InfoVeth::Peer(peer)))));
    request(RouteNetlinkMessage::NewLink(msg), CREATE)
}

/// RTM_NEWLINK of an 802.1Q device for VLAN `id` on the link `parent`.
pub fn create_vlan(name: &str, parent: u32, id: u16) -> Request {
    let mut msg = link_named(name);
    msg.attributes.push(LinkAttribute::Link(parent));
    msg.attributes.push(link_info(InfoKind::Vlan, Some(InfoData::Vlan(vec![InfoVlan::Id(id)]))));
    request(RouteNetlinkMessage::NewLink(msg), CREATE)
}

/// RTM_NEWLINK of a VXLAN device over the link `dev` (an index). Learning
/// is off: remote MACs come from the control plane as FDB entries.
pub fn create_vxlan(spec: &VxlanSpec, dev: Option<u32>) -> Request {
    let mut msg = link_named(&spec.name);
    msg.attributes.extend(spec.mtu.map(LinkAttribute::Mtu));
    let mut data = vec![InfoVxlan::Id(spec.vni), InfoVxlan::Local(spec.local)];
    data.extend(dev.map(InfoVxlan::Link));
    data.push(InfoVxlan::Port(spec.port));
    data.push(InfoVxlan::Learning(false));
    // Answers ARP for remote guests from its neighbour entries instead of
    // flooding the request to every host.
    data.push(InfoVxlan::Proxy(true));
    msg.attributes.push(link_info(InfoKind::Vxlan, Some(InfoData::Vxlan(data))));
    request(RouteNetlinkMessage::NewLink(msg), CREATE)
}

/// RTM_DELLINK.
pub fn delete_link(name: &str) -> Request {
    request(RouteNetlinkMessage::DelLink(link_named(name)), 0)
}

/// RTM_SETLINK of the link's group (IFLA_GROUP).
pub fn set_group(name: &str, group: u32) -> Request {
    let mut msg = link_named(name);
    msg.attributes.push(LinkAttribute::Group(group));
    set_link(msg)
}

/// RTM_DELLINK of every link in `group`: the kernel unregisters them in one
/// batch (`ip link delete group N`).
pub fn delete_group(group: u32) -> Request {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::Group(group));
    request(RouteNetlinkMessage::DelLink(msg), 0)
}

fn set_link(msg: LinkMessage) -> Request {
    request(RouteNetlinkMessage::SetLink(msg), 0)
}

/// RTM_SETLINK of the alias (ifalias), lanyard's ownership mark.
pub fn set_alias(name: &str, alias: &str) -> Request {
    let mut msg = link_named(name);
    msg.attributes.push(LinkAttribute::IfAlias(alias.to_string()));
    set_link(msg)
}

/// RTM_SETLINK of what a new TAP gets after the ioctls: MAC, MTU, alias.
pub fn configure_tap(name: &str, mac: Mac, mtu: Option<u32>, alias: &str) -> Request {
    let mut msg = link_named(name);
    msg.attributes.push(mac_attr(mac));
    msg.attributes.extend(mtu.map(LinkAttribute::Mtu));
    msg.attributes.push(LinkAttribute::IfAlias(alias.to_string()));
    set_link(msg)
}

/// RTM_SETLINK of the master: a bridge's index, or 0 to release.
pub fn set_master(name: &str, master: u32) -> Request {
    let mut msg = link_named(name);
    msg.attributes.push(LinkAttribute::Controller(master));
    set_link(msg)
}

/// RTM_SETLINK of IFF_UP alone.
pub fn set_up(name: &str, up: bool) -> Request {
    let mut msg = link_named(name);
    msg.header.flags = if up { LinkFlags::Up } else { LinkFlags::empty() };
    msg.header.change_mask = LinkFlags::Up;
    set_link(msg)
}

/// RTM_SETLINK of the MTU.
pub fn set_mtu(name: &str, mtu: u32) -> Request {
    let mut msg = link_named(name);
    msg.attributes.push(LinkAttribute::Mtu(mtu));
    set_link(msg)
}

/// RTM_SETLINK of the hardware address.
pub fn set_mac(name: &str, mac: Mac) -> Request {
    let mut msg = link_named(name);
    msg.attributes.push(mac_attr(mac));
    set_link(msg)
}

/// RTM_NEWLINK (no NLM_F_CREATE: a change of an existing link's kind
/// data, which RTM_SETLINK does not carry) of a bridge's VLAN filtering.
pub fn set_vlan_filtering(bridge: &str, on: bool) -> Request {
    let mut msg = link_named(bridge);
    let data = InfoData::Bridge(vec![InfoBridge::VlanFiltering(on)]);
    msg.attributes.push(link_info(InfoKind::Bridge, Some(data)));
    request(RouteNetlinkMessage::NewLink(msg), 0)
}

/// A port's VLAN entry, as `bridge vlan add|del dev LINK vid VID [pvid]
/// [untagged] [self]` sends it: RTM_SETLINK (add) or RTM_DELLINK (remove)
/// of family AF_BRIDGE for the link `index`, with IFLA_AF_SPEC holding the
/// flags (only for `self`) and the VLAN info.
pub fn bridge_vlan(index: u32, vid: u16, pvid: bool, untagged: bool, self_: bool, add: bool) -> Request {
    let mut msg = LinkMessage::default();
    msg.header.interface_family = AddressFamily::Bridge;
    msg.header.index = index;
    let mut flags = BridgeVlanInfoFlags::empty();
    if pvid {
        flags |= BridgeVlanInfoFlags::Pvid;
    }
    if untagged {
        flags |= BridgeVlanInfoFlags::Untagged;
    }
    let mut spec = Vec::new();
    if self_ {
        spec.push(AfSpecBridge::Flags(BridgeFlag::LowerDev));
    }
    spec.push(AfSpecBridge::VlanInfo(BridgeVlanInfo { flags, vid }));
    msg.attributes.push(LinkAttribute::AfSpecBridge(spec));
    if add {
        set_link(msg)
    } else {
        request(RouteNetlinkMessage::DelLink(msg), 0)
    }
}

/// A forwarding entry of the device `index`, as `bridge fdb append|del MAC
/// dev LINK [dst DST]` sends it: family AF_BRIDGE, NTF_SELF (the device's
/// own table: a VXLAN's remote list), NUD_PERMANENT. Appending lets one MAC
/// (00:00:00:00:00:00, the flood entry) have several destinations.
pub fn fdb(index: u32, mac: Mac, dst: Option<Ipv4Addr>, add: bool) -> Request {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    msg.attributes.extend(dst.map(|d| NeighbourAttribute::Destination(NeighbourAddress::Inet(d))));
    if add {
        request(RouteNetlinkMessage::NewNeighbour(msg), NLM_F_CREATE | NLM_F_APPEND)
    } else {
        request(RouteNetlinkMessage::DelNeighbour(msg), 0)
    }
}

/// RTM_GETNEIGH dump of family AF_INET: every link's IPv4 neighbours
/// (`ip neigh show`).
pub fn dump_neighbours() -> RouteNetlinkMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Inet;
    RouteNetlinkMessage::GetNeighbour(msg)
}

/// A permanent IPv4 neighbour entry of link `index`, as `ip neigh replace
/// IP lladdr MAC dev LINK nud permanent` (add) or `ip neigh del IP dev
/// LINK` sends it.
pub fn neighbour(index: u32, ip: Ipv4Addr, mac: Mac, add: bool) -> Request {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    if add {
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        request(RouteNetlinkMessage::NewNeighbour(msg), NLM_F_CREATE | NLM_F_REPLACE)
    } else {
        request(RouteNetlinkMessage::DelNeighbour(msg), 0)
    }
}

/// RTM_NEWADDR (which must not exist yet) or RTM_DELADDR of an IPv4
/// address on link `index`, as `ip address add|del` sends it: IFA_LOCAL and
/// IFA_ADDRESS both the address.
pub fn address(index: u32, addr: Ipv4Net, add: bool) -> Request {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = addr.prefix_len();
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(IpAddr::V4(addr.addr())));
    msg.attributes.push(AddressAttribute::Address(IpAddr::V4(addr.addr())));
    if add {
        request(RouteNetlinkMessage::NewAddress(msg), CREATE)
    } else {
        request(RouteNetlinkMessage::DelAddress(msg), 0)
    }
}

/// rtm_protocol of a route lanyard writes. Static is written as
/// RTPROT_BOOT, what `ip route` (and so the iproute2 driver) gives routes,
/// so a route looks the same whichever driver wrote it.
pub fn proto_number(proto: RouteProto) -> u8 {
    match proto {
        RouteProto::Kernel => 2,
        RouteProto::Static => 3,
        RouteProto::Dhcp => 16,
        RouteProto::Other(n) => n,
    }
}

fn route_message(oif: u32, route: &Route) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.kind = RouteType::Unicast;
    if let Some(dst) = route.dst {
        msg.header.destination_prefix_length = dst.prefix_len();
        msg.attributes.push(RouteAttribute::Destination(RouteAddress::Inet(dst.network())));
    }
    msg.attributes.extend(route.gateway.map(|g| RouteAttribute::Gateway(RouteAddress::Inet(g))));
    msg.attributes.push(RouteAttribute::Oif(oif));
    msg.attributes.extend(route.metric.map(RouteAttribute::Priority));
    msg.attributes.extend(route.prefsrc.map(|s| RouteAttribute::PrefSource(RouteAddress::Inet(s))));
    msg
}

/// RTM_NEWROUTE with NLM_F_CREATE | NLM_F_REPLACE through link `oif`,
/// main table, scope link without a gateway (a directly connected
/// destination) and universe with one.
pub fn replace_route(oif: u32, route: &Route) -> Request {
    let mut msg = route_message(oif, route);
    msg.header.protocol = RouteProtocol::from(proto_number(route.proto));
    msg.header.scope = if route.gateway.is_some() { RouteScope::Universe } else { RouteScope::Link };
    request(RouteNetlinkMessage::NewRoute(msg), NLM_F_CREATE | NLM_F_REPLACE)
}

/// RTM_DELROUTE of the route through link `oif`. Scope "nowhere" matches
/// any scope; the protocol is matched only when it is unambiguous, since
/// Static stands for both RTPROT_BOOT and RTPROT_STATIC.
pub fn delete_route(oif: u32, route: &Route) -> Request {
    let mut msg = route_message(oif, route);
    msg.header.protocol = match route.proto {
        RouteProto::Static => RouteProtocol::Unspec,
        other => RouteProtocol::from(proto_number(other)),
    };
    msg.header.scope = RouteScope::NoWhere;
    request(RouteNetlinkMessage::DelRoute(msg), 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::link::VethSpec;

    fn link(req: &Request) -> &LinkMessage {
        match &req.message {
            RouteNetlinkMessage::NewLink(m) | RouteNetlinkMessage::SetLink(m) | RouteNetlinkMessage::DelLink(m) => m,
            other => panic!("not a link message: {other:?}"),
        }
    }

    fn mac() -> Mac {
        Mac([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc])
    }

    #[test]
    fn a_bridge_is_created_exclusively_with_stp_off() {
        let req = create_bridge("br0", Some(mac()), Some(1400));
        assert_eq!(req.flags, NLM_F_CREATE | NLM_F_EXCL);
        let m = link(&req);
        assert!(m.attributes.contains(&LinkAttribute::IfName("br0".into())));
        assert!(m.attributes.contains(&LinkAttribute::Mtu(1400)));
        assert!(m.attributes.contains(&LinkAttribute::Address(mac().0.to_vec())));
        assert!(m.attributes.contains(&LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::StpState(BridgeStpState::Disabled)])),
        ])));
        assert!(!m.header.flags.contains(LinkFlags::Up), "created down");
    }

    #[test]
    fn the_veth_peer_is_named_and_moved() {
        let spec = VethSpec {
            name: "vh".into(),
            peer_netns: "ns".into(),
            peer_name: "eth0".into(),
            peer_mac: mac(),
            mtu: Some(9000),
            alias: "lanyard:port:p".into(),
        };
        let req = create_veth(&spec, 42);
        let m = link(&req);
        assert!(!m.header.change_mask.contains(LinkFlags::Up));
        let Some(LinkAttribute::LinkInfo(info)) = m.attributes.iter().find(|a| matches!(a, LinkAttribute::LinkInfo(_)))
        else {
            panic!("no link info")
        };
        let Some(LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer)))) = info.get(1) else { panic!("no peer") };
        for a in [
            LinkAttribute::IfName("eth0".into()),
            LinkAttribute::Address(mac().0.to_vec()),
            LinkAttribute::Mtu(9000),
            LinkAttribute::NetNsFd(42),
        ] {
            assert!(peer.attributes.contains(&a), "{a:?}");
        }
    }

    #[test]
    fn up_and_down_change_only_iff_up() {
        let up = set_up("x", true);
        assert_eq!(link(&up).header.flags, LinkFlags::Up);
        assert_eq!(link(&up).header.change_mask, LinkFlags::Up);
        let down = set_up("x", false);
        assert_eq!(link(&down).header.flags, LinkFlags::empty());
        assert_eq!(link(&down).header.change_mask, LinkFlags::Up);
    }

    #[test]
    fn bridge_vlans_carry_self_only_when_asked() {
        let req = bridge_vlan(7, 10, true, true, false, true);
        assert!(matches!(req.message, RouteNetlinkMessage::SetLink(_)));
        let m = link(&req);
        assert_eq!(m.header.interface_family, AddressFamily::Bridge);
        assert_eq!(m.header.index, 7);
        assert_eq!(
            m.attributes,
            vec![LinkAttribute::AfSpecBridge(vec![AfSpecBridge::VlanInfo(BridgeVlanInfo {
                flags: BridgeVlanInfoFlags::Pvid | BridgeVlanInfoFlags::Untagged,
                vid: 10
            })])]
        );
        let req = bridge_vlan(7, 10, false, false, true, false);
        assert!(matches!(req.message, RouteNetlinkMessage::DelLink(_)));
        let LinkAttribute::AfSpecBridge(spec) = &link(&req).attributes[0] else { panic!() };
        assert_eq!(spec[0], AfSpecBridge::Flags(BridgeFlag::LowerDev));
    }

    #[test]
    fn fdb_append_is_permanent_self_with_its_destination() {
        let req = fdb(3, Mac([0; 6]), Some(Ipv4Addr::new(192, 0, 2, 1)), true);
        assert_eq!(req.flags, NLM_F_CREATE | NLM_F_APPEND);
        let RouteNetlinkMessage::NewNeighbour(m) = &req.message else { panic!() };
        assert_eq!(m.header.family, AddressFamily::Bridge);
        assert_eq!(m.header.state, NeighbourState::Permanent);
        assert_eq!(m.header.flags, NeighbourFlags::Own);
        assert!(m
            .attributes
            .contains(&NeighbourAttribute::Destination(NeighbourAddress::Inet(Ipv4Addr::new(192, 0, 2, 1)))));
        assert!(matches!(fdb(3, mac(), None, false).message, RouteNetlinkMessage::DelNeighbour(_)));
    }

    #[test]
    fn a_neighbour_entry_is_permanent_and_replaces() {
        let ip = Ipv4Addr::new(10, 83, 0, 5);
        let req = neighbour(3, ip, mac(), true);
        assert_eq!(req.flags, NLM_F_CREATE | NLM_F_REPLACE);
        let RouteNetlinkMessage::NewNeighbour(m) = &req.message else { panic!() };
        assert_eq!(
            (m.header.family, m.header.ifindex, m.header.state),
            (AddressFamily::Inet, 3, NeighbourState::Permanent)
        );
        assert!(m.attributes.contains(&NeighbourAttribute::Destination(NeighbourAddress::Inet(ip))));
        assert!(m.attributes.contains(&NeighbourAttribute::LinkLayerAddress(mac().0.to_vec())));
        assert!(matches!(neighbour(3, ip, mac(), false).message, RouteNetlinkMessage::DelNeighbour(_)));
    }

    #[test]
    fn routes_take_scope_from_the_gateway_and_protocol_from_the_route() {
        let mut route = Route {
            dst: Some("10.1.0.0/16".parse().unwrap()),
            gateway: None,
            metric: Some(50),
            proto: RouteProto::Dhcp,
            ..Default::default()
        };
        let req = replace_route(4, &route);
        assert_eq!(req.flags, NLM_F_CREATE | NLM_F_REPLACE);
        let RouteNetlinkMessage::NewRoute(m) = &req.message else { panic!() };
        assert_eq!(m.header.scope, RouteScope::Link);
        assert_eq!(m.header.protocol, RouteProtocol::Dhcp);
        assert_eq!(m.header.table, RouteHeader::RT_TABLE_MAIN);
        assert_eq!(m.header.destination_prefix_length, 16);
        assert!(m.attributes.contains(&RouteAttribute::Oif(4)));
        assert!(m.attributes.contains(&RouteAttribute::Priority(50)));
        route.gateway = Some(Ipv4Addr::new(10, 0, 0, 1));
        route.dst = None;
        route.proto = RouteProto::Static;
        let RouteNetlinkMessage::NewRoute(m) = replace_route(4, &route).message else { panic!() };
        assert_eq!(m.header.scope, RouteScope::Universe);
        assert_eq!(m.header.destination_prefix_length, 0);
        assert!(!m.attributes.iter().any(|a| matches!(a, RouteAttribute::Destination(_))), "default route");
        let RouteNetlinkMessage::DelRoute(m) = delete_route(4, &route).message else { panic!() };
        assert_eq!(m.header.protocol, RouteProtocol::Unspec, "static matches boot and static");
        assert_eq!(m.header.scope, RouteScope::NoWhere);
    }

    #[test]
    fn an_address_is_local_and_address_with_its_prefix() {
        let req = address(9, "10.0.0.1/24".parse().unwrap(), true);
        assert_eq!(req.flags, NLM_F_CREATE | NLM_F_EXCL);
        let RouteNetlinkMessage::NewAddress(m) = &req.message else { panic!() };
        assert_eq!((m.header.index, m.header.prefix_len), (9, 24));
        assert_eq!(
            m.attributes,
            vec![
                AddressAttribute::Local(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
                AddressAttribute::Address(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
            ]
        );
    }

    #[test]
    fn vxlan_port_goes_big_endian_on_the_wire() {
        use netlink_packet_core::Emitable;
        let spec = VxlanSpec {
            name: "vx".into(),
            vni: 42,
            local: Ipv4Addr::new(10, 0, 0, 1),
            dev: None,
            port: 4789,
            mtu: None,
            alias: "a".into(),
        };
        let req = create_vxlan(&spec, Some(5));
        let m = link(&req);
        let mut bytes = vec![0; m.buffer_len()];
        m.emit(&mut bytes);
        // IFLA_VXLAN_PORT (15), length 6, value 4789 in network order.
        let needle = [6u8, 0, 15, 0, 0x12, 0xb5];
        assert!(bytes.windows(6).any(|w| w == needle), "{bytes:?}");
    }
}
