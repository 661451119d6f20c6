//! Planning floating IPs: which associations are live, the map elements
//! that carry them (see [`super::firewall`]) and the addresses on the
//! pools' interfaces that make the host answer ARP for them.
//!
//! An association is live when its port exists, has a fixed IP, and is on
//! an active nat or route network: a stopped network's floating IPs stay
//! associated in the store but reach nothing, and come back with it.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::PlanContext;
use crate::kernel::{Observed, Op};
use crate::model::floating::{FipPool, FloatingIp};
use crate::model::{Mode, NetState, Network, Port};

/// Whether a floating IP may point at a guest on `net`: lanyard routes
/// and NATs for it (nat and route networks; not host-only or isolated,
/// whose guests reach nothing outside, nor open or bridge networks, where
/// lanyard adds no rules).
pub fn takes_floating_ips(net: &Network) -> bool {
    matches!(net.mode, Mode::Nat | Mode::Route) && net.has_host_address()
}

/// One live association: the floating IP and the fixed IP it leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Association {
    /// The floating IP.
    pub fip: Ipv4Addr,
    /// The port's fixed IP.
    pub fixed: Ipv4Addr,
}

/// The live associations (see the module's doc), by floating IP.
pub fn associations(networks: &[Network], ports: &[Port], policy: PlanContext<'_>) -> Vec<Association> {
    if policy.floating_ips.iter().all(|f| f.port.is_none()) {
        return Vec::new();
    }
    let live: HashMap<std::borrow::Cow<'_, str>, &Network> = networks
        .iter()
        .filter(|n| n.state == NetState::Active && takes_floating_ips(n))
        .map(|n| (n.key(), n))
        .collect();
    let by_id: HashMap<&str, &Port> = ports.iter().map(|p| (p.id.as_str(), p)).collect();
    let mut out: Vec<Association> = policy
        .floating_ips
        .iter()
        .filter_map(|f| {
            let port = by_id.get(f.port.as_deref()?)?;
            association(f, port, live.get(port.net.as_str())?)
        })
        .collect();
    out.sort();
    out
}

/// The live association of `fip` with `port` on `net` (see the module's
/// doc), if it is one: the rule [`associations`] applies to each.
pub fn association(fip: &FloatingIp, port: &Port, net: &Network) -> Option<Association> {
    let live = fip.port.as_deref() == Some(port.id.as_str())
        && port.net == net.key()
        && net.state == NetState::Active
        && takes_floating_ips(net);
    live.then_some(Association { fip: fip.ip, fixed: port.ip? })
}

/// The addresses a pool's interface carries for the live associations:
/// the floating IP as a /32, as nova-network puts it on its public
/// interface, so that the host answers ARP for it there.
pub fn host_address(fip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(fip, 32).expect("/32 is a valid prefix")
}

/// The address changes on the pools' interfaces: each live association's
/// /32 added where missing; a /32 inside a pool's range that no live
/// association wants removed (lanyard owns the pools' addresses). An
/// interface that is absent gets nothing until it appears.
pub fn address_ops(associations: &[Association], policy: PlanContext<'_>, observed: &Observed) -> Vec<Op> {
    let mut ops = Vec::new();
    let wanted: BTreeSet<Ipv4Addr> = associations.iter().map(|a| a.fip).collect();
    let interfaces: BTreeSet<&str> = policy.pools.iter().map(|p| p.interface.as_str()).collect();
    for interface in interfaces {
        let Some(link) = observed.links.get(interface) else { continue };
        let pools: Vec<&FipPool> = policy.pools.iter().filter(|p| p.interface == interface).collect();
        let in_pools = |ip: Ipv4Addr| pools.iter().any(|p| p.contains(ip));
        let present: BTreeSet<Ipv4Addr> =
            link.addrs.iter().filter(|a| a.prefix_len() == 32 && in_pools(a.addr())).map(Ipv4Net::addr).collect();
        for ip in wanted.iter().filter(|ip| in_pools(**ip) && !present.contains(ip)) {
            ops.push(Op::AddAddress { link: interface.into(), addr: host_address(*ip) });
        }
        for ip in present.difference(&wanted) {
            ops.push(Op::DelAddress { link: interface.into(), addr: host_address(*ip) });
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::ObservedLink;
    use crate::model::test_network as net;

    fn pool() -> FipPool {
        FipPool {
            name: "public".into(),
            first: "203.0.113.10".parse().unwrap(),
            last: "203.0.113.20".parse().unwrap(),
            interface: "eth0".into(),
        }
    }

    fn fip(ip: &str, port: Option<&str>) -> FloatingIp {
        FloatingIp {
            ip: ip.parse().unwrap(),
            pool: "public".into(),
            project: "default".into(),
            port: port.map(Into::into),
        }
    }

    fn port(id: &str, ip: &str) -> Port {
        Port { ip: Some(ip.parse().unwrap()), ..crate::model::test_port(id, "default") }
    }

    #[test]
    fn only_ports_on_active_nat_or_route_networks_are_live() {
        let nat = net("default", "192.168.122.0/24", "lybr0");
        let ports = [port("aa", "192.168.122.5"), port("bb", "192.168.122.6")];
        let fips = [fip("203.0.113.10", Some("aa")), fip("203.0.113.11", None), fip("203.0.113.12", Some("gone"))];
        let pools = [pool()];
        let policy = PlanContext { pools: &pools, floating_ips: &fips, ..Default::default() };
        let live = associations(std::slice::from_ref(&nat), &ports, policy);
        assert_eq!(live, [Association { fip: fips[0].ip, fixed: "192.168.122.5".parse().unwrap() }]);
        for (mode, state) in [(Mode::Isolated, NetState::Active), (Mode::Nat, NetState::Inactive)] {
            let other = Network { mode, state, ..nat.clone() };
            assert!(associations(&[other], &ports, policy).is_empty(), "{mode:?} {state:?}");
        }
    }

    #[test]
    fn the_pool_interface_carries_exactly_the_live_addresses() {
        let pools = [pool()];
        let fips = [fip("203.0.113.10", Some("aa"))];
        let policy = PlanContext { pools: &pools, floating_ips: &fips, ..Default::default() };
        let live = [Association { fip: fips[0].ip, fixed: "192.168.122.5".parse().unwrap() }];
        let mut o = Observed::default();
        let eth0 = ObservedLink {
            name: "eth0".into(),
            // The host's own address and a /32 outside the pool are not lanyard's.
            addrs: vec![
                "203.0.113.2/24".parse().unwrap(),
                "198.51.100.7/32".parse().unwrap(),
                "203.0.113.15/32".parse().unwrap(),
            ],
            ..Default::default()
        };
        o.links.insert("eth0".into(), eth0);
        let ops = address_ops(&live, policy, &o);
        assert_eq!(
            ops,
            [
                Op::AddAddress { link: "eth0".into(), addr: "203.0.113.10/32".parse().unwrap() },
                Op::DelAddress { link: "eth0".into(), addr: "203.0.113.15/32".parse().unwrap() },
            ]
        );
        assert!(address_ops(&live, policy, &Observed::default()).is_empty(), "no interface, nothing to do");
    }
}
