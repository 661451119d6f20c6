//! Reading the kernel: links, their IPv4 addresses and the IPv4 main
//! table as [`Observed`], by dumps (everything) or by name (a few links,
//! at a cost that does not grow with the number of links on the host), and
//! the translation of rtnetlink messages into lanyard's types.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use netlink_packet_core::{NlasIterator, ParseableParametrized};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    AfSpecBridge, BridgeVlanInfoFlags, InfoBridge, InfoData, LinkAttribute, LinkFlags, LinkHeader, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::messages;
use super::socket::{NlError, RawMessage, RouteSocket};
use super::{sysctl, NetlinkDriver};
use crate::kernel::link::BridgeInfo;
use crate::kernel::{BridgeVlan, KernelError, LinkKind, Observed, ObservedLink, Route, RouteProto};
use crate::model::Mac;

/// RTM_NEWLINK, the answer to RTM_GETLINK, and RTM_DELLINK.
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
/// sizeof(struct ifinfomsg).
const LINK_HEADER_LEN: usize = 16;
/// How often a dump the kernel flagged as interrupted is started over.
const DUMP_ATTEMPTS: usize = 5;

/// A bridge id as `brctl show` prints it: the priority as four hex digits,
/// a dot, the MAC as twelve (`8000.525400aabbcc`).
pub fn brctl_id(priority: u16, mac: [u8; 6]) -> String {
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    format!("{priority:04x}.{hex}")
}

/// Who installed a route, from rtm_protocol.
pub fn route_proto(protocol: u8) -> RouteProto {
    match protocol {
        2 => RouteProto::Kernel,
        3 | 4 => RouteProto::Static,
        16 => RouteProto::Dhcp,
        other => RouteProto::Other(other),
    }
}

fn bridge_info(data: &[InfoBridge]) -> BridgeInfo {
    let mut info = BridgeInfo::default();
    for attr in data {
        match attr {
            InfoBridge::BridgeId(id) => info.id = brctl_id(id.priority, id.address),
            InfoBridge::StpState(state) => info.stp = u32::from(*state) != 0,
            InfoBridge::VlanFiltering(on) => info.vlan_filtering = *on,
            _ => {}
        }
    }
    info
}

/// A link as lanyard sees it, with the index of its master (the name is
/// resolved once every link is known). None for a message without a name.
pub fn link_from_message(msg: &LinkMessage) -> Option<(ObservedLink, Option<u32>)> {
    let mut link =
        ObservedLink { index: msg.header.index, up: msg.header.flags.contains(LinkFlags::Up), ..Default::default() };
    let mut master = None;
    let mut kind = None;
    let mut bridge = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Controller(index) if *index != 0 => master = Some(*index),
            LinkAttribute::IfAlias(alias) => link.alias = Some(alias.clone()),
            // Ethernet-like only; an all-zero address (lo's) is none, as a
            // `Mac` is a NIC's address.
            LinkAttribute::Address(bytes) => {
                link.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().filter(|b| *b != [0; 6]).map(Mac)
            }
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Bridge(data)) => bridge = Some(bridge_info(data)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if link.name.is_empty() {
        return None;
    }
    link.kind = LinkKind::from_kernel(kind.as_deref());
    if link.kind == LinkKind::Bridge {
        link.bridge = Some(bridge.unwrap_or_default());
    }
    Some((link, master))
}

/// An IPv4 address and the index of its link.
pub fn address_from_message(msg: &AddressMessage) -> Option<(u32, Ipv4Net)> {
    if msg.header.family != AddressFamily::Inet {
        return None;
    }
    let v4 = |ip: &IpAddr| match ip {
        IpAddr::V4(a) => Some(*a),
        IpAddr::V6(_) => None,
    };
    // IFA_LOCAL is the address; IFA_ADDRESS is the peer on point-to-point
    // links and the same as IFA_LOCAL elsewhere.
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => v4(ip),
        _ => None,
    });
    let address = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => v4(ip),
        _ => None,
    });
    let addr = local.or(address)?;
    Ipv4Net::new(addr, msg.header.prefix_len).ok().map(|net| (msg.header.index, net))
}

/// The label the kernel gives an IPv4 address (normally its link's name).
pub fn address_label(msg: &AddressMessage) -> Option<&str> {
    msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Label(l) => Some(l.as_str()),
        _ => None,
    })
}

/// Whether a route message is an IPv4 route of the main table.
pub fn in_main_table(msg: &RouteMessage) -> bool {
    let table = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table));
    msg.header.address_family == AddressFamily::Inet && table == u32::from(RouteHeader::RT_TABLE_MAIN)
}

fn inet(addr: &RouteAddress) -> Option<Ipv4Addr> {
    match addr {
        RouteAddress::Inet(a) => Some(*a),
        _ => None,
    }
}

/// A unicast IPv4 route of the main table, its device named by `name_of`.
/// Other route types (blackhole, unreachable, ...) and other tables are
/// not lanyard's business and give None.
pub fn route_from_message(msg: &RouteMessage, name_of: impl Fn(u32) -> Option<String>) -> Option<Route> {
    if !in_main_table(msg) || msg.header.kind != RouteType::Unicast {
        return None;
    }
    let mut route = Route { proto: route_proto(msg.header.protocol.into()), ..Default::default() };
    let mut dst = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst = inet(a),
            RouteAttribute::Gateway(a) => route.gateway = inet(a),
            RouteAttribute::PrefSource(a) => route.prefsrc = inet(a),
            RouteAttribute::Oif(index) => route.dev = name_of(*index),
            RouteAttribute::Priority(metric) => route.metric = Some(*metric),
            _ => {}
        }
    }
    let len = msg.header.destination_prefix_length;
    route.dst = if len == 0 { None } else { Some(Ipv4Net::new(dst.unwrap_or(Ipv4Addr::UNSPECIFIED), len).ok()?) };
    Some(route)
}

/// The link attributes lanyard reads (kernel ABI numbers, `if_link.h`).
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_IFALIAS: u16 = 20;
const READ_LINK_ATTRIBUTES: [u16; 6] = [IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_IFALIAS];

/// An RTM_NEWLINK (or RTM_DELLINK) message with just the attributes lanyard
/// reads, each parsed by the crate; None for other messages. The rest (IPv6
/// configuration, statistics, ..., most of the message) is skipped
/// unparsed: that halves the cost of a dump of ten thousand links, and an
/// attribute some kernel sends in a shape the crate cannot parse never
/// fails an observation.
pub fn parse_link(raw: &RawMessage<'_>) -> Result<Option<LinkMessage>, NlError> {
    if raw.kind != RTM_NEWLINK && raw.kind != RTM_DELLINK {
        return Ok(None);
    }
    let payload = raw.payload();
    let header = LinkHeader::parse(payload).map_err(|e| NlError::malformed(format!("link header: {e}")))?;
    let mut msg = LinkMessage::default();
    msg.header = header;
    for nla in NlasIterator::new(payload.get(LINK_HEADER_LEN..).unwrap_or_default()) {
        let nla = nla.map_err(|e| NlError::malformed(format!("link attribute: {e}")))?;
        if READ_LINK_ATTRIBUTES.contains(&nla.kind()) {
            let attr = LinkAttribute::parse_with_param(&nla, msg.header.interface_family)
                .map_err(|e| NlError::malformed(format!("link attribute {}: {e}", nla.kind())))?;
            msg.attributes.push(attr);
        }
    }
    Ok(Some(msg))
}

/// IFLA_AF_SPEC, where an AF_BRIDGE link message carries the VLAN table.
const IFLA_AF_SPEC: u16 = 26;

/// The VLAN table an AF_BRIDGE RTM_NEWLINK message reports for one link
/// (a bridge port, or a bridge itself), with the link's index; None for
/// other messages.
pub fn parse_bridge_vlans(raw: &RawMessage<'_>) -> Result<Option<(u32, Vec<BridgeVlan>)>, NlError> {
    if raw.kind != RTM_NEWLINK {
        return Ok(None);
    }
    let payload = raw.payload();
    let header = LinkHeader::parse(payload).map_err(|e| NlError::malformed(format!("link header: {e}")))?;
    let mut vlans = Vec::new();
    for nla in NlasIterator::new(payload.get(LINK_HEADER_LEN..).unwrap_or_default()) {
        let nla = nla.map_err(|e| NlError::malformed(format!("link attribute: {e}")))?;
        if nla.kind() != IFLA_AF_SPEC {
            continue;
        }
        let attr = LinkAttribute::parse_with_param(&nla, AddressFamily::Bridge)
            .map_err(|e| NlError::malformed(format!("bridge af_spec: {e}")))?;
        if let LinkAttribute::AfSpecBridge(spec) = attr {
            vlans.extend(spec.iter().filter_map(|a| match a {
                AfSpecBridge::VlanInfo(v) => Some(BridgeVlan {
                    vid: v.vid,
                    pvid: v.flags.contains(BridgeVlanInfoFlags::Pvid),
                    untagged: v.flags.contains(BridgeVlanInfoFlags::Untagged),
                }),
                _ => None,
            }));
        }
    }
    vlans.sort();
    Ok(Some((header.index, vlans)))
}

/// One link by RTM_GETLINK (by name or index); None when the kernel says
/// there is no such device.
pub fn get_link(socket: &mut RouteSocket, request: RouteNetlinkMessage) -> Result<Option<LinkMessage>, NlError> {
    let mut found = None;
    match socket.request(request, 0, |raw| {
        found = parse_link(raw)?;
        Ok(())
    }) {
        Ok(()) => Ok(found),
        Err(e) if e.is(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The index of the link `name`; an error naming the link when there is
/// none. Reads the index from the answer's header without parsing the
/// rest, since ops look links up all the time.
pub fn link_index(socket: &mut RouteSocket, name: &str) -> Result<u32, NlError> {
    let mut index = None;
    socket
        .request(messages::get_link_by_name(name), 0, |raw| {
            if raw.kind == RTM_NEWLINK {
                // struct ifinfomsg: family, pad, type (u16), then the index.
                let bytes = raw.payload().get(4..8).ok_or_else(|| NlError::malformed("truncated ifinfomsg"))?;
                index = Some(u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
            }
            Ok(())
        })
        .map_err(|e| e.about(&format!("link {name}")))?;
    index.ok_or_else(|| NlError::malformed(format!("no link message for {name}")))
}

/// Runs a dump, starting over (with a fresh `state`) when the kernel says
/// the links changed while it ran.
fn dump_consistent<T: Default>(
    socket: &mut RouteSocket,
    request: impl Fn() -> RouteNetlinkMessage,
    mut each: impl FnMut(&mut T, &RawMessage<'_>) -> Result<(), NlError>,
) -> Result<T, NlError> {
    let mut attempts = 0;
    loop {
        let mut state = T::default();
        match socket.dump(request(), |raw| each(&mut state, raw)) {
            Ok(()) => return Ok(state),
            Err(e) if e.is(libc::EINTR) && attempts + 1 < DUMP_ATTEMPTS => attempts += 1,
            Err(e) if e.is(libc::EINTR) => {
                return Err(NlError {
                    errno: e.errno,
                    message: format!("{} {DUMP_ATTEMPTS} times in a row", e.message),
                })
            }
            Err(e) => return Err(e),
        }
    }
}

fn observe_error(what: &'static str) -> impl Fn(NlError) -> KernelError {
    move |e| KernelError::Observe { what, message: e.message }
}

/// Links of a dump by index, with the master index of each.
type LinkTable = BTreeMap<u32, (ObservedLink, Option<u32>)>;

fn dump_links(socket: &mut RouteSocket) -> Result<LinkTable, KernelError> {
    dump_consistent(socket, messages::dump_links, |links: &mut LinkTable, raw| {
        if let Some((link, master)) = parse_link(raw)?.as_ref().and_then(link_from_message) {
            links.insert(link.index, (link, master));
        }
        Ok(())
    })
    .map_err(observe_error("links (RTM_GETLINK)"))
}

/// Every bridge port's and bridge's VLAN table, by link index.
fn dump_bridge_vlans(socket: &mut RouteSocket) -> Result<HashMap<u32, Vec<BridgeVlan>>, KernelError> {
    dump_consistent(socket, messages::dump_bridge_vlans, |tables: &mut HashMap<u32, Vec<BridgeVlan>>, raw| {
        if let Some((index, vlans)) = parse_bridge_vlans(raw)? {
            tables.insert(index, vlans);
        }
        Ok(())
    })
    .map_err(observe_error("bridge vlans (RTM_GETLINK, AF_BRIDGE)"))
}

/// The entries of one RTM_GETNEIGH dump (`request`) that `parse` reads
/// (with their link's index) on the links `wanted` (indexes), by index:
/// the kernel dumps every link's; the rest are skipped.
fn dump_neighbour_entries<E: Ord>(
    socket: &mut RouteSocket,
    request: fn() -> RouteNetlinkMessage,
    parse: fn(&NeighbourMessage) -> Option<(u32, E)>,
    wanted: &BTreeSet<u32>,
    what: &'static str,
) -> Result<HashMap<u32, BTreeSet<E>>, KernelError> {
    dump_consistent(socket, request, |found: &mut HashMap<u32, BTreeSet<E>>, raw| {
        if let RouteNetlinkMessage::NewNeighbour(m) = raw.parse()? {
            if let Some((index, entry)) = parse(&m).filter(|(i, _)| wanted.contains(i)) {
                found.entry(index).or_default().insert(entry);
            }
        }
        Ok(())
    })
    .map_err(observe_error(what))
}

/// The remote forwarding entries (MAC, tunnel endpoint) of the links
/// `wanted`: the VXLAN devices lanyard owns.
fn dump_fdb(
    socket: &mut RouteSocket,
    wanted: &BTreeSet<u32>,
) -> Result<HashMap<u32, BTreeSet<(Mac, Ipv4Addr)>>, KernelError> {
    let what = "forwarding entries (RTM_GETNEIGH, AF_BRIDGE)";
    dump_neighbour_entries(socket, messages::dump_fdb, fdb_entry, wanted, what)
}

/// The permanent IPv4 neighbour entries (address, MAC) of the links
/// `wanted`.
fn dump_neighbours(
    socket: &mut RouteSocket,
    wanted: &BTreeSet<u32>,
) -> Result<HashMap<u32, BTreeSet<(Ipv4Addr, Mac)>>, KernelError> {
    let what = "neighbours (RTM_GETNEIGH, AF_INET)";
    dump_neighbour_entries(socket, messages::dump_neighbours, neighbour_entry, wanted, what)
}

/// A permanent IPv4 neighbour entry with its link's index; None for
/// learned entries (they come and go) and anything else.
pub fn neighbour_entry(m: &NeighbourMessage) -> Option<(u32, (Ipv4Addr, Mac))> {
    if m.header.state != NeighbourState::Permanent {
        return None;
    }
    let mut mac = None;
    let mut ip = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(l.as_slice()).ok().map(Mac),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => ip = Some(*d),
            _ => {}
        }
    }
    Some((m.header.ifindex, (ip?, mac?)))
}

/// A forwarding entry with a remote IPv4 tunnel endpoint, with its link's
/// index; None for local entries and anything else. The crate reads the
/// destination of an AF_BRIDGE message as raw bytes (it knows the address
/// family only from the header): four of them are an IPv4 address.
pub fn fdb_entry(m: &NeighbourMessage) -> Option<(u32, (Mac, Ipv4Addr))> {
    let mut mac = None;
    let mut dst = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(l.as_slice()).ok().map(Mac),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => dst = Some(*d),
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                dst = <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from);
            }
            _ => {}
        }
    }
    Some((m.header.ifindex, (mac?, dst?)))
}

/// Whether a link is a bridge that filters by VLAN.
fn filters_vlans(link: &ObservedLink) -> bool {
    link.bridge.as_ref().is_some_and(|b| b.vlan_filtering)
}

fn dump_addresses(socket: &mut RouteSocket, index: Option<u32>) -> Result<Vec<(u32, Ipv4Net)>, KernelError> {
    dump_consistent(
        socket,
        || messages::dump_addresses(index),
        |addrs: &mut Vec<(u32, Ipv4Net)>, raw| {
            if let RouteNetlinkMessage::NewAddress(m) = raw.parse()? {
                // Without strict checking the kernel dumps every link's.
                addrs.extend(address_from_message(&m).filter(|(i, _)| index.is_none_or(|want| want == *i)));
            }
            Ok(())
        },
    )
    .map_err(observe_error("addresses (RTM_GETADDR)"))
}

fn dump_routes(socket: &mut RouteSocket, names: &HashMap<u32, String>) -> Result<Vec<Route>, KernelError> {
    let routes = dump_consistent(socket, messages::dump_routes, |routes: &mut Vec<Route>, raw| {
        if let RouteNetlinkMessage::NewRoute(m) = raw.parse()? {
            routes.extend(route_from_message(&m, |i| names.get(&i).cloned()));
        }
        Ok(())
    });
    match routes {
        // A namespace that never had a route has no main table yet, and
        // the kernel, filtering by table, says so.
        Err(e) if e.is(libc::ENOENT) => Ok(Vec::new()),
        other => other.map_err(observe_error("routes (RTM_GETROUTE)")),
    }
}

impl NetlinkDriver {
    /// Links (with their IPv4 addresses), IPv4 routes of the main table and
    /// ip_forward, by three dumps and a read of /proc.
    pub fn observe(&self) -> Result<Observed, KernelError> {
        let mut socket = self.socket();
        let table = dump_links(&mut socket)?;
        let names: HashMap<u32, String> = table.iter().map(|(i, (l, _))| (*i, l.name.clone())).collect();
        let mut by_index: BTreeMap<u32, ObservedLink> = table
            .into_iter()
            .map(|(i, (mut link, master))| {
                link.master = master.and_then(|m| names.get(&m).cloned());
                (i, link)
            })
            .collect();
        for (index, addr) in dump_addresses(&mut socket, None)? {
            if let Some(link) = by_index.get_mut(&index) {
                link.addrs.push(addr);
            }
        }
        // VLAN tables matter only on VLAN-filtering bridges: read them
        // (one more dump) only when there is one.
        let filtering: Vec<String> = by_index.values().filter(|l| filters_vlans(l)).map(|l| l.name.clone()).collect();
        if !filtering.is_empty() {
            let mut tables = dump_bridge_vlans(&mut socket)?;
            for (index, link) in &mut by_index {
                let involved =
                    filtering.contains(&link.name) || link.master.as_ref().is_some_and(|m| filtering.contains(m));
                if involved {
                    link.vlans = tables.remove(index).unwrap_or_default();
                }
            }
        }
        // Forwarding entries matter only on lanyard's VXLAN devices: one
        // more dump only when there is one.
        let vxlans: BTreeSet<u32> =
            by_index.values().filter(|l| l.kind == LinkKind::Vxlan && l.owned()).map(|l| l.index).collect();
        let mut fdb = BTreeMap::new();
        let mut neighbours = BTreeMap::new();
        if !vxlans.is_empty() {
            for (index, entries) in dump_fdb(&mut socket, &vxlans)? {
                if let Some(link) = by_index.get(&index) {
                    fdb.insert(link.name.clone(), entries);
                }
            }
            for (index, entries) in dump_neighbours(&mut socket, &vxlans)? {
                if let Some(link) = by_index.get(&index) {
                    neighbours.insert(link.name.clone(), entries);
                }
            }
        }
        let routes = dump_routes(&mut socket, &names)?;
        drop(socket);
        Ok(Observed {
            links: by_index.into_values().map(|l| (l.name.clone(), l)).collect(),
            routes,
            ip_forward: sysctl::ip_forward()?,
            fdb,
            neighbours,
        })
    }

    /// Just the named links, each by one RTM_GETLINK, its master's name by
    /// another and its addresses by a dump the kernel filters to that link;
    /// absent links are left out. Names no interface can have are absent.
    pub fn observe_links(&self, names: &[&str]) -> Result<BTreeMap<String, ObservedLink>, KernelError> {
        let observe = |message: NlError| KernelError::Observe { what: "links (RTM_GETLINK)", message: message.message };
        let mut socket = self.socket();
        let mut out = BTreeMap::new();
        // Links whose VLAN table matters: VLAN-filtering bridges and their ports.
        let mut involved = Vec::new();
        for name in names {
            if name.is_empty() || name.len() > crate::model::IFNAME_MAX || name.contains(['/', '\0']) {
                continue;
            }
            let Some(msg) = get_link(&mut socket, messages::get_link_by_name(name)).map_err(observe)? else {
                continue;
            };
            let Some((mut link, master)) = link_from_message(&msg) else { continue };
            if let Some(master) = master {
                let found = get_link(&mut socket, messages::get_link_by_index(master)).map_err(observe)?;
                let master = found.as_ref().and_then(link_from_message).map(|(m, _)| m);
                if master.as_ref().is_some_and(filters_vlans) {
                    involved.push(link.index);
                }
                link.master = master.map(|m| m.name);
            }
            if filters_vlans(&link) {
                involved.push(link.index);
            }
            link.addrs = dump_addresses(&mut socket, Some(link.index))?.into_iter().map(|(_, a)| a).collect();
            out.insert(link.name.clone(), link);
        }
        if !involved.is_empty() {
            // The kernel dumps every port's table; a port on a filtering
            // bridge pays for that (see docs/performance.md).
            let mut tables = dump_bridge_vlans(&mut socket)?;
            for link in out.values_mut().filter(|l| involved.contains(&l.index)) {
                link.vlans = tables.remove(&link.index).unwrap_or_default();
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::{BridgeId, BridgeStpState, InfoKind};
    use netlink_packet_route::route::RouteProtocol;

    #[test]
    fn bridge_ids_read_as_brctl_prints_them() {
        assert_eq!(brctl_id(0x8000, [0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc]), "8000.525400aabbcc");
        assert_eq!(brctl_id(0x1000, [0x0a, 0, 0, 0, 0, 0x01]), "1000.0a0000000001");
        assert_eq!(brctl_id(7, [0; 6]), "0007.000000000000");
    }

    #[test]
    fn protocols_map_to_who_installed_the_route() {
        assert_eq!(route_proto(2), RouteProto::Kernel);
        assert_eq!(route_proto(3), RouteProto::Static);
        assert_eq!(route_proto(4), RouteProto::Static);
        assert_eq!(route_proto(16), RouteProto::Dhcp);
        assert_eq!(route_proto(186), RouteProto::Other(186));
        assert_eq!(route_proto(0), RouteProto::Other(0));
        // What the driver writes reads back as what it was asked to write.
        for p in [RouteProto::Kernel, RouteProto::Static, RouteProto::Dhcp, RouteProto::Other(99)] {
            assert_eq!(route_proto(messages::proto_number(p)), p);
        }
    }

    #[test]
    fn a_bridge_message_fills_every_field() {
        let mut msg = LinkMessage::default();
        msg.header.index = 4;
        msg.header.flags = LinkFlags::Up | LinkFlags::Broadcast;
        msg.attributes = vec![
            LinkAttribute::IfName("br0".into()),
            LinkAttribute::Mtu(1400),
            LinkAttribute::Controller(9),
            LinkAttribute::IfAlias("lanyard:net:x".into()),
            LinkAttribute::Address(vec![0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Bridge),
                LinkInfo::Data(InfoData::Bridge(vec![
                    InfoBridge::StpState(BridgeStpState::KernelStp),
                    InfoBridge::VlanFiltering(true),
                    InfoBridge::BridgeId(BridgeId { priority: 0x8000, address: [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc] }),
                ])),
            ]),
        ];
        let (link, master) = link_from_message(&msg).unwrap();
        assert_eq!(master, Some(9));
        assert_eq!(
            link,
            ObservedLink {
                name: "br0".into(),
                index: 4,
                kind: LinkKind::Bridge,
                master: None,
                up: true,
                mtu: 1400,
                addrs: vec![],
                alias: Some("lanyard:net:x".into()),
                mac: Some(Mac([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc])),
                bridge: Some(BridgeInfo { id: "8000.525400aabbcc".into(), stp: true, vlan_filtering: true }),
                vlans: vec![],
            }
        );
    }

    #[test]
    fn odd_links_read_without_guessing() {
        let mut msg = LinkMessage::default();
        msg.attributes = vec![
            LinkAttribute::IfName("ip6tnl0".into()),
            LinkAttribute::Address(vec![0; 16]),
            LinkAttribute::Controller(0),
        ];
        let (link, master) = link_from_message(&msg).unwrap();
        assert_eq!((link.kind, link.mac, master, link.bridge), (LinkKind::Device, None, None, None));
        msg.attributes =
            vec![LinkAttribute::IfName("lo".into()), LinkAttribute::Address(vec![0; 6]), LinkAttribute::Controller(0)];
        let (link, master) = link_from_message(&msg).unwrap();
        assert_eq!((link.kind, link.mac, master, link.bridge), (LinkKind::Device, None, None, None));
        assert!(link_from_message(&LinkMessage::default()).is_none(), "no name");
    }

    /// `msg` as the kernel would send it: nlmsghdr, then the message.
    fn wire(kind: u16, msg: &LinkMessage, extra: &[u8]) -> Vec<u8> {
        use netlink_packet_core::Emitable;
        let mut body = vec![0; msg.buffer_len()];
        msg.emit(&mut body);
        body.extend_from_slice(extra);
        let mut bytes = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&[0; 10]);
        bytes.extend_from_slice(&body);
        bytes
    }

    #[test]
    fn links_are_read_from_the_wire_skipping_what_lanyard_does_not_use() {
        let mut msg = LinkMessage::default();
        msg.header.index = 7;
        msg.attributes = vec![
            LinkAttribute::IfName("tap0".into()),
            LinkAttribute::TxQueueLen(1000),
            LinkAttribute::Mtu(1500),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Tun)]),
        ];
        // An IFLA_AF_SPEC (26) whose content makes no sense: skipped, not
        // an error.
        let garbage = [8, 0, 26, 0, 0xff, 0xff, 0xff, 0xff];
        let bytes = wire(RTM_NEWLINK, &msg, &garbage);
        let raw = crate::dataplane::netlink::socket::messages(&bytes).next().unwrap().unwrap();
        let parsed = parse_link(&raw).unwrap().unwrap();
        assert_eq!(parsed.header.index, 7);
        assert_eq!(
            parsed.attributes,
            vec![
                LinkAttribute::IfName("tap0".into()),
                LinkAttribute::Mtu(1500),
                LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Tun)]),
            ]
        );
        let (link, _) = link_from_message(&parsed).unwrap();
        assert_eq!((link.name.as_str(), link.kind, link.mtu), ("tap0", LinkKind::Tun, 1500));
        // Another message type is not a link.
        let bytes = wire(24, &msg, &[]);
        let raw = crate::dataplane::netlink::socket::messages(&bytes).next().unwrap().unwrap();
        assert!(parse_link(&raw).unwrap().is_none());
        // A truncated header is an error, not a panic.
        let bytes = wire(RTM_NEWLINK, &msg, &[]);
        let mut short = bytes[..24].to_vec();
        short[0] = 24;
        let raw = crate::dataplane::netlink::socket::messages(&short).next().unwrap().unwrap();
        assert!(parse_link(&raw).is_err());
    }

    #[test]
    fn bridge_vlan_tables_are_read_from_the_af_bridge_dump() {
        use netlink_packet_route::link::{BridgeVlanInfo, BridgeVlanInfoFlags};
        let mut msg = LinkMessage::default();
        msg.header.interface_family = AddressFamily::Bridge;
        msg.header.index = 9;
        msg.attributes = vec![
            LinkAttribute::IfName("ly0000abcd".into()),
            LinkAttribute::AfSpecBridge(vec![
                AfSpecBridge::VlanInfo(BridgeVlanInfo { flags: BridgeVlanInfoFlags::empty(), vid: 20 }),
                AfSpecBridge::VlanInfo(BridgeVlanInfo {
                    flags: BridgeVlanInfoFlags::Pvid | BridgeVlanInfoFlags::Untagged,
                    vid: 10,
                }),
            ]),
        ];
        let bytes = wire(RTM_NEWLINK, &msg, &[]);
        let raw = crate::dataplane::netlink::socket::messages(&bytes).next().unwrap().unwrap();
        assert_eq!(
            parse_bridge_vlans(&raw).unwrap(),
            Some((9, vec![BridgeVlan::access(10), BridgeVlan::tagged(20)])),
            "sorted by VLAN, flags read"
        );
        // A port without a VLAN table has an empty one.
        msg.attributes.truncate(1);
        let bytes = wire(RTM_NEWLINK, &msg, &[]);
        let raw = crate::dataplane::netlink::socket::messages(&bytes).next().unwrap().unwrap();
        assert_eq!(parse_bridge_vlans(&raw).unwrap(), Some((9, Vec::new())));
        // And a request this driver sends asks for exactly this table.
        let RouteNetlinkMessage::GetLink(req) = messages::dump_bridge_vlans() else { panic!() };
        assert_eq!(req.header.interface_family, AddressFamily::Bridge);
        assert_eq!(req.header.index, 0, "strict checking refuses an index in a bridge dump");
    }

    #[test]
    fn routes_of_the_main_table_only() {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.kind = RouteType::Unicast;
        msg.header.protocol = RouteProtocol::Dhcp;
        msg.attributes = vec![
            RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(10, 0, 0, 1))),
            RouteAttribute::Oif(2),
            RouteAttribute::Priority(100),
            RouteAttribute::PrefSource(RouteAddress::Inet(Ipv4Addr::new(10, 0, 0, 5))),
        ];
        let names = |i: u32| (i == 2).then(|| "eth0".to_string());
        assert_eq!(
            route_from_message(&msg, names),
            Some(Route {
                dst: None,
                gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
                dev: Some("eth0".into()),
                metric: Some(100),
                prefsrc: Some(Ipv4Addr::new(10, 0, 0, 5)),
                proto: RouteProto::Dhcp,
            })
        );
        msg.header.destination_prefix_length = 24;
        msg.attributes.push(RouteAttribute::Destination(RouteAddress::Inet(Ipv4Addr::new(10, 0, 0, 0))));
        assert_eq!(route_from_message(&msg, names).unwrap().dst, Some("10.0.0.0/24".parse().unwrap()));
        msg.attributes.push(RouteAttribute::Table(255));
        assert_eq!(route_from_message(&msg, names), None, "local table");
        msg.attributes.pop();
        msg.header.kind = RouteType::BlackHole;
        assert_eq!(route_from_message(&msg, names), None, "not unicast");
    }

    #[test]
    fn addresses_prefer_local() {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = 24;
        msg.header.index = 3;
        msg.attributes = vec![
            AddressAttribute::Address(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))),
            AddressAttribute::Local(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
            AddressAttribute::Label("br0".into()),
        ];
        assert_eq!(address_from_message(&msg), Some((3, "10.0.0.1/24".parse().unwrap())));
        assert_eq!(address_label(&msg), Some("br0"));
        msg.header.family = AddressFamily::Inet6;
        assert_eq!(address_from_message(&msg), None);
    }

    #[test]
    fn a_vxlan_entry_reads_as_its_mac_and_remote() {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = 7;
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 1]));
        assert_eq!(fdb_entry(&m), None, "a local entry has no remote");
        m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Other(vec![10, 213, 2, 2])));
        assert_eq!(fdb_entry(&m), Some((7, (Mac([2, 0, 0, 0, 0, 1]), Ipv4Addr::new(10, 213, 2, 2)))));
        m.attributes[1] = NeighbourAttribute::Destination(NeighbourAddress::Other(vec![0; 16]));
        assert_eq!(fdb_entry(&m), None, "an IPv6 remote is not lanyard's");
    }

    #[test]
    fn only_permanent_neighbours_are_read() {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = 7;
        m.header.state = NeighbourState::Permanent;
        m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(Ipv4Addr::new(10, 83, 0, 5))));
        assert_eq!(neighbour_entry(&m), None, "no MAC");
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 1]));
        assert_eq!(neighbour_entry(&m), Some((7, (Ipv4Addr::new(10, 83, 0, 5), Mac([2, 0, 0, 0, 0, 1])))));
        m.header.state = NeighbourState::Reachable;
        assert_eq!(neighbour_entry(&m), None, "a learned entry is not lanyard's");
    }
}
