//! Planning port forwards: which are live and what they put in the
//! `inet` table's maps and sets (see [`super::firewall`]). A forward is
//! elements, never a rule, so the thousandth costs what the first did.
//!
//! A forward is live when its port exists on its network, has a fixed IP,
//! and the network is an active nat or route network: a stopped network's
//! forwards stay stored but lead nowhere, and come back with it.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::model::forwards::{PortForward, Proto};
use crate::model::{Mode, NetState, Network, Port};

/// Whether a forward may lead into `net`: the host DNATs into it and its
/// guests' answers go back through the host (nat and route networks).
/// Not host-only or isolated networks, whose guests the outside must not
/// reach at all; nor open or bridge networks, where lanyard adds no rules
/// (their guests are reachable directly, without a forward).
pub fn takes_forwards(net: &Network) -> bool {
    matches!(net.mode, Mode::Nat | Mode::Route) && net.has_host_address()
}

/// One live forward, as the firewall needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LiveForward {
    /// The host address it listens on (None: every local address).
    pub address: Option<Ipv4Addr>,
    /// tcp or udp.
    pub proto: Proto,
    /// The host's port.
    pub host_port: u16,
    /// The port's fixed IP.
    pub target: Ipv4Addr,
    /// The guest's port.
    pub to_port: u16,
    /// The target's network's subnet: its guests reaching the forward
    /// through the host are masqueraded (hairpin).
    pub subnet: Ipv4Net,
}

/// The live forward `f` is with `port` on `net`, if it is one.
pub fn live(f: &PortForward, port: &Port, net: &Network) -> Option<LiveForward> {
    let on = port.id == f.to_port && port.net == f.net && net.key() == f.net;
    (on && net.state == NetState::Active && takes_forwards(net)).then_some(LiveForward {
        address: f.address,
        proto: f.proto,
        host_port: f.host_port,
        target: port.ip?,
        to_port: f.to_port_number,
        subnet: net.subnet,
    })
}

/// The live forwards among `forwards` (see the module's doc), sorted.
pub fn live_forwards(networks: &[Network], ports: &[Port], forwards: &[PortForward]) -> Vec<LiveForward> {
    if forwards.is_empty() {
        return Vec::new();
    }
    let nets: HashMap<std::borrow::Cow<'_, str>, &Network> = networks.iter().map(|n| (n.key(), n)).collect();
    let by_id: HashMap<&str, &Port> = ports.iter().map(|p| (p.id.as_str(), p)).collect();
    let mut out: Vec<LiveForward> =
        forwards.iter().filter_map(|f| live(f, by_id.get(f.to_port.as_str())?, nets.get(f.net.as_str())?)).collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_network;

    fn forward(to_port: &str) -> PortForward {
        PortForward {
            net: "default".into(),
            proto: Proto::Tcp,
            host_port: 8080,
            address: None,
            to_port: to_port.into(),
            to_port_number: 80,
        }
    }

    #[test]
    fn only_forwards_to_ports_with_an_address_on_active_nat_or_route_networks_are_live() {
        let n = test_network("default", "192.168.122.0/24", "lybr0");
        let port = Port { ip: Some("192.168.122.5".parse().unwrap()), ..crate::model::test_port("aa", "default") };
        let live = live_forwards(std::slice::from_ref(&n), std::slice::from_ref(&port), &[forward("aa")]);
        assert_eq!(live.len(), 1);
        assert_eq!((live[0].target, live[0].to_port, live[0].subnet), (port.ip.unwrap(), 80, n.subnet));
        // Another port's, a port without an address, a stopped network, a
        // host-only network: nothing.
        assert!(live_forwards(std::slice::from_ref(&n), std::slice::from_ref(&port), &[forward("bb")]).is_empty());
        let bare = Port { ip: None, ..port.clone() };
        assert!(live_forwards(std::slice::from_ref(&n), &[bare], &[forward("aa")]).is_empty());
        let stopped = Network { state: NetState::Inactive, ..n.clone() };
        assert!(live_forwards(&[stopped], std::slice::from_ref(&port), &[forward("aa")]).is_empty());
        let host_only = Network { mode: Mode::HostOnly, ..n };
        assert!(live_forwards(&[host_only], &[port], &[forward("aa")]).is_empty());
    }
}
