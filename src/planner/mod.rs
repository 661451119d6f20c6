//! The planner: desired state + what the kernel has now -> a [`Plan`] of
//! typed kernel operations and the firewall change.
//!
//! Pure code: no syscalls, no clock, no text formats. The plan holds only
//! the differences, so applying it to a kernel that already matches does
//! nothing, which is what lets a restarted daemon reconcile without
//! disturbing running VMs. lanyard marks every link it creates with an alias
//! (`lanyard:...`) and only ever deletes links that carry that mark.
//!
//! - [`links`]: bridges, ports, uplinks, stale links;
//! - [`filtering`]: the `filtering` VLAN backend's shared bridges and their
//!   VLAN tables;
//! - [`firewall`]: lanyard's nftables table as a typed [`Table`];
//! - [`floating`]: floating IPs: live associations, the pools' addresses;
//! - [`forwards`]: port forwards: which are live;
//! - [`overlay`]: a cluster member's VXLAN devices and their forwarding
//!   entries towards the other hosts.

pub mod filtering;
pub mod firewall;
pub mod floating;
pub mod forwards;
pub mod links;
pub mod overlay;

pub use firewall::{bridge_table_id, table_id, table_ids, NFT_TABLE};
pub use links::{alias_uplink, bridge_alias, port_alias, port_ops};

use crate::kernel::{FirewallChange, Observed, Plan, Tables};
use crate::model::{Network, Port};

/// What a plan needs beyond the networks and ports: what the projects add
/// (floating IPs and their pools, grants between projects) and whether
/// this host is a cluster member, whose networks span the hosts
/// ([`overlay`]) and whose bridge table keeps each host's gateway and DHCP
/// to itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanContext<'a> {
    /// Floating IP pools.
    pub pools: &'a [crate::model::floating::FipPool],
    /// Floating IPs, associated or not.
    pub floating_ips: &'a [crate::model::floating::FloatingIp],
    /// Inter-project grants.
    pub grants: &'a [crate::model::grants::Grant],
    /// Port forwards, live or not.
    pub forwards: &'a [crate::model::forwards::PortForward],
    /// This host is a cluster member (`--etcd`).
    pub cluster: bool,
}

/// Plans the changes that bring the kernel (`observed`, and the firewall
/// tables `current` that it is known to hold) to `networks` + `ports` +
/// the projects' `policy`.
pub fn plan(
    networks: &[Network],
    ports: &[Port],
    policy: PlanContext<'_>,
    observed: &Observed,
    current: &Tables,
) -> Plan {
    plan_with(networks, ports, policy, observed, current, None)
}

/// [`plan`] for a cluster member: `overlay` adds the VXLAN devices and
/// forwarding entries (None: a single host, which has none).
pub fn plan_with(
    networks: &[Network],
    ports: &[Port],
    policy: PlanContext<'_>,
    observed: &Observed,
    current: &Tables,
    overlay: Option<&overlay::Overlay<'_>>,
) -> Plan {
    Plan {
        ops: kernel_ops(networks, ports, policy, observed, overlay),
        firewall: FirewallChange::all_between(current, &firewall::tables(networks, ports, policy)),
    }
}

/// The link and address operations of [`plan_with`], without the
/// firewall: for a caller whose tables cover ports that get no devices
/// here (a veth whose namespace went keeps its record and its elements).
pub fn kernel_ops(
    networks: &[Network],
    ports: &[Port],
    policy: PlanContext<'_>,
    observed: &Observed,
    overlay: Option<&overlay::Overlay<'_>>,
) -> Vec<crate::kernel::Op> {
    // The pools' addresses first: they are on interfaces that are not
    // lanyard's, and never depend on its links.
    let live = floating::associations(networks, ports, policy);
    let mut ops = floating::address_ops(&live, policy, observed);
    ops.extend(links::plan_links(networks, ports, observed, overlay));
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{LinkKind, ObservedLink, Op, Table, Tables};
    use crate::model::test_network as net;
    use crate::model::{Mac, Mode, PortType};

    fn port(id: &str, net: &str, ty: PortType) -> Port {
        Port {
            port_type: ty,
            ip: Some("192.168.122.2".parse().unwrap()),
            netns: (ty == PortType::Veth).then(|| "ns1".into()),
            peer_ifname: (ty == PortType::Veth).then(|| "eth0".into()),
            ..crate::model::test_port(id, net)
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
                    kind: LinkKind::Bridge,
                    up: true,
                    mtu: 1500,
                    addrs: vec![n.gateway_cidr()],
                    alias: Some(bridge_alias(&n.key(), None)),
                    mac: n.gateway_mac,
                    ..Default::default()
                },
            );
        }
        for p in ports {
            let bridge = nets.iter().find(|n| n.key() == p.net).unwrap().bridge.clone();
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

    fn kind(op: &Op) -> String {
        format!("{op:?}").split([' ', '{', '(']).next().unwrap().to_string()
    }

    #[test]
    fn fresh_kernel_gets_everything_in_order() {
        let n = net("default", "192.168.122.0/24", "lybr0");
        let ports = [port("aa", "default", PortType::Tap), port("bb", "default", PortType::Veth)];
        let p = plan(std::slice::from_ref(&n), &ports, Default::default(), &Observed::default(), &Tables::new());
        let kinds: Vec<String> = p.ops.iter().map(kind).collect();
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
                "SetMaster",
                "SetUp",
                "SetForwarding"
            ]
        );
        assert!(matches!(&p.ops[3], Op::CreateTap(t) if t.mac.to_string() == "fe:54:00:00:00:01"));
        let replaced: Vec<_> = p
            .firewall
            .iter()
            .filter_map(|c| match c {
                FirewallChange::Replace(t) => Some(t.id.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(replaced, vec![table_id(), bridge_table_id()], "both tables are created: {:?}", p.firewall);
    }

    #[test]
    fn converged_kernel_needs_nothing() {
        let n = vec![net("default", "192.168.122.0/24", "lybr0"), net("b", "10.9.0.0/24", "lybr1")];
        let ports = vec![port("aa", "default", PortType::Tap), port("bb", "b", PortType::Veth)];
        let p = plan(
            &n,
            &ports,
            Default::default(),
            &converged(&n, &ports),
            &firewall::tables(&n, &ports, Default::default()),
        );
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn drift_is_repaired_and_only_owned_links_are_removed() {
        let n = vec![net("default", "192.168.122.0/24", "lybr0")];
        let ports = vec![port("aa", "default", PortType::Tap)];
        let mut o = converged(&n, &ports);
        o.links.get_mut("lyaa").unwrap().master = None;
        o.links.get_mut("lybr0").unwrap().addrs.clear();
        // The kernel re-derived the bridge's MAC from a port.
        let stolen = Mac([0x52, 0x54, 0, 0, 0, 1]);
        o.links.get_mut("lybr0").unwrap().mac = Some(stolen);
        o.links.insert(
            "lyzz".into(),
            ObservedLink { name: "lyzz".into(), alias: Some(port_alias("zz")), ..Default::default() },
        );
        o.links.insert(
            "lybr9".into(),
            ObservedLink {
                name: "lybr9".into(),
                kind: LinkKind::Bridge,
                alias: Some(bridge_alias("gone", None)),
                ..Default::default()
            },
        );
        o.links.insert(
            "docker0".into(),
            ObservedLink { name: "docker0".into(), kind: LinkKind::Bridge, ..Default::default() },
        );
        let p = plan(&n, &ports, Default::default(), &o, &firewall::tables(&n, &ports, Default::default()));
        assert_eq!(
            p.ops,
            vec![
                Op::AddAddress { link: "lybr0".into(), addr: "192.168.122.1/24".parse().unwrap() },
                Op::SetMac { link: "lybr0".into(), mac: n[0].gateway_mac.unwrap(), previous: Some(stolen) },
                Op::SetMaster { link: "lyaa".into(), master: Some("lybr0".into()), previous: None },
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
        let fw = firewall::tables(&n, std::slice::from_ref(&p), Default::default());
        assert!(plan(&n, std::slice::from_ref(&p), Default::default(), &converged(&n, &[]), &fw).ops.is_empty());
        let mut o = converged(&n, &[]);
        o.links.insert("tap0".into(), ObservedLink { name: "tap0".into(), ..Default::default() });
        assert_eq!(
            plan(&n, &[p], Default::default(), &o, &fw).ops,
            vec![
                Op::SetMaster { link: "tap0".into(), master: Some("lybr0".into()), previous: None },
                Op::SetUp { link: "tap0".into(), up: true }
            ]
        );
    }

    #[test]
    fn nat_firewall_golden() {
        let n = net("default", "192.168.122.0/24", "lybr0");
        let fip =
            floating::Association { fip: "203.0.113.10".parse().unwrap(), fixed: "192.168.122.5".parse().unwrap() };
        let fwd = forwards::LiveForward {
            address: None,
            proto: crate::kernel::firewall::Proto::Tcp,
            host_port: 8080,
            target: "192.168.122.5".parse().unwrap(),
            to_port: 80,
            subnet: n.subnet,
        };
        let t = firewall::table(std::slice::from_ref(&n), &[fip], &[fwd], &[]).unwrap();
        let expected = "table inet lanyard {
\tcomment \"FP\"
\tset bridges { type ifname; elements = { \"lybr0\" }; }
\tset same_bridge { type ifname . ifname; elements = { \"lybr0\" . \"lybr0\" }; }
\tset isolated { type ifname; }
\tset nat_nets { type ifname . ipv4_addr; flags interval; elements = { \"lybr0\" . 192.168.122.0/24 }; }
\tset routed_nets { type ifname . ipv4_addr; flags interval; }
\tset outbound { type ifname . ipv4_addr; flags interval; elements = { \"lybr0\" . 192.168.122.0/24 }; }
\tset egress_denied { type ifname; }
\tset masq_nets { type ipv4_addr; flags interval; elements = { 192.168.122.0/24 }; }
\tset outbound_subnets { type ipv4_addr; flags interval; elements = { 192.168.122.0/24 }; }
\tmap fip_dnat { type ipv4_addr : ipv4_addr; elements = { 203.0.113.10 : 192.168.122.5 }; }
\tmap fip_snat { type ipv4_addr : ipv4_addr; elements = { 192.168.122.5 : 203.0.113.10 }; }
\tset fip_fixed { type ipv4_addr; elements = { 192.168.122.5 }; }
\tset grants { type ifname . ipv4_addr . ipv4_addr; flags interval; }
\tset grants_proto { type ifname . ipv4_addr . ipv4_addr . inet_proto; flags interval; }
\tset grants_port { type ifname . ipv4_addr . ipv4_addr . inet_proto . inet_service; flags interval; }
\tset grant_pairs { type ipv4_addr . ipv4_addr; flags interval; }
\tmap port_fwd { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; flags interval; elements = { 0.0.0.0/0 . tcp . 8080 : 192.168.122.5 . 80 }; }
\tset fwd_targets { type ipv4_addr . inet_proto . inet_service; elements = { 192.168.122.5 . tcp . 80 }; }
\tset fwd_hairpin { type ipv4_addr . ipv4_addr; flags interval; elements = { 192.168.122.0/24 . 192.168.122.5/32 }; }
\tchain prerouting {
\t\ttype nat hook prerouting priority -100; policy accept;
\t\tdnat ip to ip daddr map @fip_dnat
\t\tfib daddr type local meta l4proto { tcp, udp } dnat ip to ip daddr . meta l4proto . th dport map @port_fwd
\t}
\tchain nat_output {
\t\ttype nat hook output priority -100; policy accept;
\t\tdnat ip to ip daddr map @fip_dnat
\t\tip daddr != 127.0.0.0/8 fib daddr type local meta l4proto { tcp, udp } dnat ip to ip daddr . meta l4proto . th dport map @port_fwd
\t}
\tchain input {
\t\ttype filter hook input priority 0; policy accept;
\t\tiifname @isolated udp dport { 53, 67 } accept
\t\tiifname @isolated tcp dport 53 accept
\t\tiifname @isolated drop
\t}
\tchain output {
\t\ttype filter hook output priority 0; policy accept;
\t\toifname @isolated udp sport { 53, 67 } accept
\t\toifname @isolated tcp sport 53 accept
\t\toifname @isolated drop
\t}
\tchain forward {
\t\ttype filter hook forward priority -1; policy accept;
\t\tiifname . oifname @same_bridge meta mark set meta mark | 0x20000000 accept
\t\tct state new iifname . ip saddr . ip daddr @grants meta mark set meta mark | 0x20000000 accept
\t\tct state new iifname . ip saddr . ip daddr . meta l4proto @grants_proto meta mark set meta mark | 0x20000000 accept
\t\tct state new iifname . ip saddr . ip daddr . meta l4proto . th dport @grants_port meta mark set meta mark | 0x20000000 accept
\t\tct state established,related ct original ip saddr . ct original ip daddr @grant_pairs meta mark set meta mark | 0x20000000 accept
\t\tiifname @egress_denied ct state new reject with icmpx admin-prohibited
\t\tct status dnat iifname != @bridges ip daddr @fip_fixed meta mark set meta mark | 0x20000000 accept
\t\tct status dnat iifname . ip saddr @outbound ip daddr @fip_fixed meta mark set meta mark | 0x20000000 accept
\t\tct status dnat ct state established,related ip saddr @fip_fixed meta mark set meta mark | 0x20000000 accept
\t\tct status dnat iifname != @bridges ip daddr . meta l4proto . th dport @fwd_targets meta mark set meta mark | 0x20000000 accept
\t\tct status dnat iifname . ip saddr @outbound ip daddr . meta l4proto . th dport @fwd_targets meta mark set meta mark | 0x20000000 accept
\t\tct status dnat ct state established,related ip saddr . meta l4proto . th sport @fwd_targets meta mark set meta mark | 0x20000000 accept
\t\tiifname @bridges oifname @bridges reject with icmpx admin-prohibited
\t\tct state established,related oifname . ip daddr @nat_nets meta mark set meta mark | 0x20000000 accept
\t\toifname . ip daddr @routed_nets meta mark set meta mark | 0x20000000 accept
\t\tiifname . ip saddr @outbound meta mark set meta mark | 0x20000000 accept
\t\toifname @bridges reject with icmpx admin-prohibited
\t\tiifname @bridges reject with icmpx admin-prohibited
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority 100; policy accept;
\t\tct status dnat ip saddr @outbound_subnets ip daddr @fip_fixed snat ip to ip saddr map @fip_snat
\t\tct status dnat ip saddr @outbound_subnets ip daddr @fip_fixed masquerade
\t\tct status dnat ip saddr . ip daddr @fwd_hairpin masquerade
\t\toifname @bridges return
\t\tsnat ip to ip saddr map @fip_snat
\t\tip saddr @masq_nets ip daddr != { 224.0.0.0/24, 255.255.255.255 } masquerade
\t}
}
";
        assert_eq!(t.render(), expected.replace("FP", &t.fingerprint()));
    }

    #[test]
    fn bridge_firewall_golden() {
        let n = net("default", "192.168.122.0/24", "lybr0");
        let t =
            firewall::bridge_table(std::slice::from_ref(&n), &[port("aa", "default", PortType::Tap)], false).unwrap();
        let expected = "table bridge lanyard {
\tcomment \"FP\"
\tset dhcp_ports { type ifname; elements = { \"lyaa\" }; }
\tset dhcp_rate { type ifname; flags dynamic,timeout; timeout 60s; }
\tset guarded { type ifname; elements = { \"lyaa\" }; }
\tset port_mac { type ifname . ether_addr; elements = { \"lyaa\" . 52:54:00:00:00:01 }; }
\tset guarded_ip { type ifname; elements = { \"lyaa\" }; }
\tset port_ip { type ifname . ipv4_addr; elements = { \"lyaa\" . 192.168.122.2 }; }
\tchain prerouting {
\t\ttype filter hook prerouting priority 0; policy accept;
\t\tiifname @dhcp_ports udp dport 67 update @dhcp_rate { iifname limit rate over 20/second burst 40 packets } drop
\t\tiifname @guarded ether type != { ip, arp, ip6 } drop
\t\tiifname @guarded iifname . ether saddr != @port_mac drop
\t\tiifname @guarded udp sport 67 drop
\t\tiifname @guarded icmpv6 type nd-router-advert drop
\t\tiifname @guarded_ip ip saddr 0.0.0.0 udp dport 67 return
\t\tiifname @guarded_ip iifname . ip saddr != @port_ip drop
\t\tiifname @guarded iifname . arp saddr ether != @port_mac drop
\t\tiifname @guarded_ip arp saddr ip != 0.0.0.0 iifname . arp saddr ip != @port_ip drop
\t}
}
";
        assert_eq!(t.render(), expected.replace("FP", &t.fingerprint()));
    }

    /// Which ports each anti-spoofing set names: the elements of a table
    /// built from scratch, and the changes a port's create makes.
    fn guard_sets(t: &Table) -> Vec<(String, Vec<String>)> {
        ["guarded", "port_mac", "guarded_ip", "port_ip", "dhcp_ports"]
            .iter()
            .map(|s| (s.to_string(), t.set(s).unwrap().elements.iter().map(ToString::to_string).collect()))
            .collect()
    }

    #[test]
    fn anti_spoofing_guards_vm_ports_but_trunks_and_router_vms() {
        let nat = net("default", "192.168.122.0/24", "lybr0");
        let mut lan = net("lan", "10.9.0.0/24", "lybr1");
        lan.mode = Mode::Bridge;
        let mut open = net("o", "10.8.0.0/24", "lybr2");
        open.mode = Mode::Open;
        let nets = [nat, lan, open];
        let plain = port("aa", "default", PortType::Tap);
        let mut router = port("bb", "default", PortType::Tap);
        router.spoof_check = false;
        let mut trunk = port("cc", "default", PortType::Tap);
        trunk.trunk = vec!["v10".into()];
        // An old record of a trunk port says spoof_check: true (the default).
        assert!(trunk.spoof_check);
        let mut no_ip = port("dd", "lan", PortType::Tap);
        no_ip.ip = None;
        no_ip.mac = Mac([0x52, 0x54, 0, 0, 0, 4]);
        let mut unruled = port("ee", "o", PortType::Tap);
        unruled.ip = Some("10.8.0.2".parse().unwrap());
        let ports = [plain.clone(), router.clone(), trunk.clone(), no_ip.clone(), unruled.clone()];
        let t = firewall::bridge_table(&nets, &ports, false).unwrap();
        let strings = |v: &[&str]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            guard_sets(&t),
            [
                ("guarded".into(), strings(&["\"lyaa\"", "\"lydd\""])),
                ("port_mac".into(), strings(&["\"lyaa\" . 52:54:00:00:00:01", "\"lydd\" . 52:54:00:00:00:04"])),
                ("guarded_ip".into(), strings(&["\"lyaa\""])),
                ("port_ip".into(), strings(&["\"lyaa\" . 192.168.122.2"])),
                ("dhcp_ports".into(), strings(&["\"lyaa\"", "\"lybb\"", "\"lycc\""])),
            ],
            "a router VM and a trunk port are not guarded, a port without IP only for its MAC, an open network not at all"
        );
        // A port's create and delete are exactly its elements, and a
        // table rebuilt from the store (a restart) has the same.
        let empty = firewall::bridge_table(&nets, &[], false).unwrap();
        assert_eq!(empty.fingerprint(), t.fingerprint(), "ports add elements, never rules");
        let added = firewall::port_changes(&ports, &nets, true);
        assert_eq!(
            Some(added.clone()),
            empty.element_changes(&t).map(|mut v| {
                let order = |c: &crate::kernel::ElementChange| added.iter().position(|a| a == c);
                v.sort_by_key(order);
                v
            })
        );
        let removed = firewall::port_changes(std::slice::from_ref(&plain), &nets, false);
        assert_eq!(removed.len(), 5, "{removed:?}");
        assert!(removed.iter().all(|c| !c.add && c.table == bridge_table_id()));
        assert!(firewall::port_changes(&[router, trunk, unruled], &nets, true).iter().all(|c| c.set == "dhcp_ports"));
        assert_eq!(firewall::port_changes(&[no_ip], &nets, true).len(), 2, "guarded and port_mac only");
    }

    #[test]
    fn a_cluster_members_bridge_table_keeps_gateway_arp_and_dhcp_off_the_tunnels() {
        let spanning = net("default", "192.168.122.0/24", "lybr0");
        let mut on_uplink = net("up", "10.9.0.0/24", "lybr1");
        on_uplink.uplink = Some("eth0".into());
        let nets = [spanning.clone(), on_uplink];
        let vxlan = format!("\"{}\"", overlay::vxlan_ifname(&spanning));
        let member = firewall::bridge_table(&nets, &[], true).unwrap();
        let elements =
            |set: &str| -> Vec<String> { member.set(set).unwrap().elements.iter().map(ToString::to_string).collect() };
        // Only the network that spans over VXLAN (the uplink's is on the
        // physical network, where lanyard has no tunnel port).
        assert_eq!(elements("overlay_ports"), std::slice::from_ref(&vxlan));
        assert_eq!(elements("overlay_gw"), [format!("{vxlan} . 192.168.122.1")]);
        let rules = |chain: &str| -> Vec<String> {
            member.chains.iter().find(|c| c.name == chain).unwrap().rules.iter().map(ToString::to_string).collect()
        };
        for (chain, port) in [("prerouting", "iifname"), ("postrouting", "oifname")] {
            assert_eq!(
                rules(chain)[..3],
                [
                    format!("{port} @overlay_ports udp dport {{ 67, 68 }} drop"),
                    format!("{port} . arp daddr ip @overlay_gw drop"),
                    format!("{port} . arp saddr ip @overlay_gw drop"),
                ],
                "{chain}"
            );
        }
        assert_eq!(rules("postrouting").len(), 3, "nothing else on the way out");
        // A single host has none of it; a member's structure does not
        // depend on which networks span (they are elements).
        let single = firewall::bridge_table(&nets, &[], false).unwrap();
        assert!(!single.render().contains("overlay"), "{}", single.render());
        let fewer = firewall::bridge_table(&nets[1..], &[], true).unwrap();
        assert_eq!(fewer.fingerprint(), member.fingerprint());
        assert!(fewer.set("overlay_ports").unwrap().elements.is_empty());
        // A VLAN network reaches the other hosts over its VLAN device on
        // the trunk: the same holds there; `--overlay none` crosses nowhere.
        let vlan = crate::model::NetworkSpec {
            name: "v10".into(),
            mode: "nat".into(),
            subnet: "10.10.0.0/24".into(),
            vlan: Some(10),
            uplink: Some("eth0".into()),
            ..Default::default()
        };
        let alone = crate::model::NetworkSpec {
            name: "alone".into(),
            subnet: "10.11.0.0/24".into(),
            overlay: Some("none".into()),
            ..vlan.clone()
        };
        let alone = crate::model::NetworkSpec { vlan: None, uplink: None, ..alone };
        let nets = [vlan.validate(|| "brvlan10".into()).unwrap(), alone.validate(|| "lybr5".into()).unwrap()];
        let t = firewall::bridge_table(&nets, &[], true).unwrap();
        let gw: Vec<String> = t.set("overlay_gw").unwrap().elements.iter().map(ToString::to_string).collect();
        assert_eq!(gw, ["\"eth0.10\" . 10.10.0.1"]);
    }

    #[test]
    fn the_bridge_table_exists_for_any_network_whose_ports_are_guarded() {
        let mut lan = net("lan", "10.9.0.0/24", "lybr1");
        lan.mode = Mode::Bridge;
        let mut open = net("o", "10.8.0.0/24", "lybr2");
        open.mode = Mode::Open;
        assert!(
            firewall::bridge_table(std::slice::from_ref(&lan), &[], false).is_some(),
            "bridge mode: a port may come"
        );
        assert!(firewall::bridge_table(std::slice::from_ref(&open), &[], false).is_none(), "open: no rules at all");
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
        let one = firewall::table(&[net("default", "192.168.122.0/24", "lybr0")], &[], &[], &[]).unwrap();
        let all =
            firewall::table(&[net("default", "192.168.122.0/24", "lybr0"), iso, open, host, routed], &[], &[], &[])
                .unwrap();
        let fw = all.render();
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
        assert_eq!(one.fingerprint(), all.fingerprint(), "more networks add set elements, not rules");
        let changes = one.element_changes(&all).unwrap();
        assert!(changes.iter().all(|c| c.add), "{changes:?}");
        assert_eq!(
            changes.len(),
            3 * 2 + 1 + 1 + 1 + 1,
            "bridges and same_bridge 3 each, isolated, routed, outbound, outbound_subnets"
        );
    }

    #[test]
    fn port_forwards_are_map_elements_and_their_rules_appear_once() {
        use crate::model::forwards::{PortForward, Proto};
        let n = net("default", "192.168.122.0/24", "lybr0");
        let web = Port { ip: Some("192.168.122.5".parse().unwrap()), ..crate::model::test_port("aa", "default") };
        let fwd = |proto: Proto, host_port: u16, address: Option<&str>, to: u16| PortForward {
            net: "default".into(),
            proto,
            host_port,
            address: address.map(|a| a.parse().unwrap()),
            to_port: "aa".into(),
            to_port_number: to,
        };
        // Two host ports to the web server's port 80, and one UDP port on one address.
        let forwards = [
            fwd(Proto::Tcp, 8080, None, 80),
            fwd(Proto::Tcp, 8081, None, 80),
            fwd(Proto::Udp, 5353, Some("198.51.100.7"), 53),
        ];
        let tables = |forwards: &[PortForward]| {
            let policy = PlanContext { forwards, ..Default::default() };
            firewall::tables(std::slice::from_ref(&n), std::slice::from_ref(&web), policy).remove(&table_id()).unwrap()
        };
        let none = tables(&[]);
        let t = tables(&forwards);
        let elements =
            |set: &str| -> Vec<String> { t.set(set).unwrap().elements.iter().map(ToString::to_string).collect() };
        assert_eq!(
            elements("port_fwd"),
            [
                "0.0.0.0/0 . tcp . 8080 : 192.168.122.5 . 80",
                "0.0.0.0/0 . tcp . 8081 : 192.168.122.5 . 80",
                "198.51.100.7/32 . udp . 5353 : 192.168.122.5 . 53",
            ]
        );
        assert_eq!(elements("fwd_targets"), ["192.168.122.5 . tcp . 80", "192.168.122.5 . udp . 53"]);
        assert_eq!(elements("fwd_hairpin"), ["192.168.122.0/24 . 192.168.122.5/32"]);
        assert_eq!(none.fingerprint(), t.fingerprint(), "forwards add elements, never rules");
        let text = t.render();
        for (rule, times) in [("map @port_fwd", 2), ("@fwd_targets", 3), ("@fwd_hairpin masquerade", 1)] {
            assert_eq!(text.matches(rule).count(), times, "{rule} in\n{text}");
        }
        // One of the two host ports going takes only its own map element:
        // the guest port the other still leads to stays.
        let live = |f: &[PortForward]| forwards::live_forwards(std::slice::from_ref(&n), std::slice::from_ref(&web), f);
        let changes = firewall::forward_changes(&live(&forwards), &live(&forwards[1..]));
        let text: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["delete element { 0.0.0.0/0 . tcp . 8080 : 192.168.122.5 . 80 } in @port_fwd"]);
        // All of them going takes everything they added.
        let gone = firewall::forward_changes(&live(&forwards), &[]);
        assert_eq!(gone.len(), 3 + 2 + 1);
        assert!(gone.iter().all(|c| !c.add));
        // A stopped network keeps its forwards out of the table.
        let stopped = Network { state: crate::model::NetState::Inactive, ..n.clone() };
        assert!(forwards::live_forwards(&[stopped], std::slice::from_ref(&web), &forwards).is_empty());
    }

    #[test]
    fn firewall_changes_are_elements_once_the_table_exists() {
        let a = net("default", "192.168.122.0/24", "lybr0");
        let b = net("b", "10.9.0.0/24", "lybr1");
        let current = firewall::tables(std::slice::from_ref(&a), &[], Default::default());
        let p = plan(&[a.clone(), b], &[], Default::default(), &Observed::default(), &current);
        let elements: Vec<usize> = p
            .firewall
            .iter()
            .map(|c| match c {
                FirewallChange::Elements(v) => v.len(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(elements, vec![6], "inet: 6 elements; the bridge table names ports, and there are none");
        let p = plan(&[], &[], Default::default(), &Observed::default(), &current);
        assert_eq!(
            p.firewall,
            vec![FirewallChange::Delete(table_id()), FirewallChange::Delete(bridge_table_id())],
            "no network needs rules: the tables go"
        );
        assert!(plan(&[], &[], Default::default(), &Observed::default(), &Tables::new()).firewall.is_empty());
    }
}

#[cfg(test)]
mod vlan_tests {
    use super::*;
    use crate::kernel::{LinkKind, ObservedLink, Op};
    use crate::model::{Mode, NetworkSpec};

    fn vnet(name: &str, mode: &str, subnet: &str, uplink: &str, vlan: u16) -> Network {
        NetworkSpec {
            name: name.into(),
            mode: mode.into(),
            subnet: subnet.into(),
            uplink: Some(uplink.into()),
            vlan: Some(vlan),
            ..Default::default()
        }
        .validate(|| format!("brvlan{vlan}"))
        .unwrap()
    }

    fn nic(name: &str) -> ObservedLink {
        ObservedLink {
            name: name.into(),
            up: true,
            mtu: 1500,
            addrs: vec!["192.0.2.5/24".parse().unwrap()],
            ..Default::default()
        }
    }

    fn with(links: Vec<ObservedLink>) -> Observed {
        Observed {
            links: links.into_iter().map(|l| (l.name.clone(), l)).collect(),
            ip_forward: true,
            ..Default::default()
        }
    }

    /// The kernel after `plan` was applied to `o` (links only, enough for these tests).
    fn after(o: &Observed, p: &Plan) -> Observed {
        let mut o = o.clone();
        for op in &p.ops {
            match op {
                Op::CreateBridge { name, mac, alias, .. } => {
                    o.links.insert(
                        name.clone(),
                        ObservedLink {
                            name: name.clone(),
                            kind: LinkKind::Bridge,
                            mtu: 1500,
                            mac: *mac,
                            alias: Some(alias.clone()),
                            ..Default::default()
                        },
                    );
                }
                Op::CreateTap(t) => {
                    o.links.insert(
                        t.name.clone(),
                        ObservedLink {
                            name: t.name.clone(),
                            kind: LinkKind::Tun,
                            mtu: 1500,
                            mac: Some(t.mac),
                            alias: Some(t.alias.clone()),
                            ..Default::default()
                        },
                    );
                }
                Op::CreateVlan { name, alias, .. } => {
                    o.links.insert(
                        name.clone(),
                        ObservedLink {
                            name: name.clone(),
                            kind: LinkKind::Vlan,
                            mtu: 1500,
                            alias: Some(alias.clone()),
                            ..Default::default()
                        },
                    );
                }
                Op::AddAddress { link, addr } => o.links.get_mut(link).unwrap().addrs.push(*addr),
                Op::SetMaster { link, master, .. } => o.links.get_mut(link).unwrap().master = master.clone(),
                Op::SetUp { link, up } => o.links.get_mut(link).unwrap().up = *up,
                Op::DeleteLink { name } => {
                    o.links.remove(name);
                }
                _ => {}
            }
        }
        o
    }

    #[test]
    fn a_nat_network_on_a_vlan_is_the_seeds_brvlan_with_eth0_dot_10() {
        let n = vnet("v10", "nat", "192.168.100.0/24", "eth0", 10);
        assert_eq!(n.bridge, "brvlan10");
        let o = with(vec![nic("eth0")]);
        let p = plan(std::slice::from_ref(&n), &[], Default::default(), &o, &Tables::new());
        assert_eq!(
            p.ops,
            vec![
                Op::CreateBridge {
                    name: "brvlan10".into(),
                    mac: n.gateway_mac,
                    mtu: None,
                    alias: bridge_alias("v10", None)
                },
                Op::AddAddress { link: "brvlan10".into(), addr: "192.168.100.1/24".parse().unwrap() },
                Op::SetUp { link: "brvlan10".into(), up: true },
                Op::CreateVlan {
                    name: "eth0.10".into(),
                    parent: "eth0".into(),
                    id: 10,
                    alias: "lanyard:vlan:v10".into()
                },
                Op::SetMaster { link: "eth0.10".into(), master: Some("brvlan10".into()), previous: None },
                Op::SetUp { link: "eth0.10".into(), up: true },
            ]
        );
        // The uplink is not touched: it stays the host's.
        assert!(p.ops.iter().all(|op| !op.to_string().contains("eth0 ") && !op.to_string().ends_with("eth0")));
        let restarted = plan(
            std::slice::from_ref(&n),
            &[],
            Default::default(),
            &after(&o, &p),
            &firewall::tables(std::slice::from_ref(&n), &[], Default::default()),
        );
        assert!(restarted.is_empty(), "a restart plans nothing: {restarted:?}");
    }

    #[test]
    fn an_l2_network_on_a_vlan_gives_the_host_no_address_and_moves_nothing() {
        let n = vnet("lan20", "bridge", "192.168.100.0/24", "eth0", 20);
        assert!(!n.has_host_address() && !n.enslaves_uplink());
        let p = plan(std::slice::from_ref(&n), &[], Default::default(), &with(vec![nic("eth0")]), &Tables::new());
        let kinds: Vec<String> = p.ops.iter().map(ToString::to_string).collect();
        assert_eq!(
            kinds,
            [
                "create bridge brvlan20",
                "set brvlan20 up",
                "create vlan eth0.20 (id 20 on eth0)",
                "enslave eth0.20 to brvlan20",
                "set eth0.20 up"
            ]
        );
        let tables: Vec<_> = p.firewall.iter().filter_map(FirewallChange::table).cloned().collect();
        assert_eq!(tables, [bridge_table_id()], "bridge mode gets no IP rules, only its ports' anti-spoofing");
        let other = vnet("lan10", "bridge", "192.168.100.0/24", "eth0", 10);
        assert!(!n.clashes_with(&other), "two VLANs may share a subnet");
        let nat = vnet("v10", "nat", "192.168.100.0/24", "eth0", 10);
        let nat2 = vnet("v11", "nat", "192.168.100.0/24", "eth0", 11);
        assert!(nat.clashes_with(&nat2), "two host addresses in one subnet cannot be routed");
        assert!(!nat.clashes_with(&n));
        let _ = Mode::Bridge;
    }

    #[test]
    fn long_uplink_names_get_a_short_vlan_device_and_it_goes_with_its_network() {
        assert_eq!(links::vlan_ifname("eth0", 10), "eth0.10");
        assert_eq!(links::vlan_ifname("enp0s31f6", 4094), "enp0s31f6.4094");
        let long = links::vlan_ifname("enx001122334455", 100);
        assert!(long.starts_with("lyv") && long.len() <= 15, "{long}");
        assert_ne!(long, links::vlan_ifname("enx001122334455", 101));
        let n = vnet("v10", "nat", "192.168.100.0/24", "eth0", 10);
        let o = with(vec![nic("eth0")]);
        let up = after(&o, &plan(std::slice::from_ref(&n), &[], Default::default(), &o, &Tables::new()));
        let gone = plan(&[], &[], Default::default(), &up, &Tables::new());
        let text: Vec<String> = gone.ops.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["delete link eth0.10", "delete link brvlan10"], "the VLAN device first, then the bridge");
        assert!(up.links.contains_key("eth0"), "the uplink stays");
    }

    #[test]
    fn a_trunk_port_gets_a_vlan_device_per_carried_network_and_nothing_else() {
        let v10 = vnet("v10", "bridge", "192.168.100.0/24", "eth0", 10);
        let v20 = vnet("v20", "bridge", "192.168.100.0/24", "eth0", 20);
        let mgmt = crate::model::test_network("mgmt", "10.0.0.0/24", "lybr0");
        let mut port = crate::model::Port {
            vm: "router".into(),
            mac: crate::model::Mac([0x52, 0x54, 0, 0, 0, 7]),
            trunk: vec!["v10".into(), "v20".into()],
            ..crate::model::test_port("0000abcd", "mgmt")
        };
        let nets = vec![v10.clone(), v20.clone(), mgmt.clone()];
        let o = after(
            &with(vec![nic("eth0")]),
            &plan(&nets, &[], Default::default(), &with(vec![nic("eth0")]), &Tables::new()),
        );
        let p = plan(
            &nets,
            std::slice::from_ref(&port),
            Default::default(),
            &o,
            &firewall::tables(&nets, &[], Default::default()),
        );
        let text: Vec<String> = p.ops.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "create tap ly0000abcd",
                "enslave ly0000abcd to lybr0",
                "set ly0000abcd up",
                "create vlan ly0000abcd.10 (id 10 on ly0000abcd)",
                "enslave ly0000abcd.10 to brvlan10",
                "set ly0000abcd.10 up",
                "create vlan ly0000abcd.20 (id 20 on ly0000abcd)",
                "enslave ly0000abcd.20 to brvlan20",
                "set ly0000abcd.20 up",
            ],
            "untagged frames are mgmt's, VLANs 10 and 20 are tagged, nothing else"
        );
        let applied = after(&o, &p);
        let again = plan(
            &nets,
            std::slice::from_ref(&port),
            Default::default(),
            &applied,
            &firewall::tables(&nets, std::slice::from_ref(&port), Default::default()),
        );
        assert!(again.ops.is_empty(), "a restart plans nothing: {:?}", again.ops);
        // Without a native network the port's own link is up in no bridge.
        port.untagged = false;
        port.net = "v10".into();
        let bare = plan(
            &nets,
            std::slice::from_ref(&port),
            Default::default(),
            &o,
            &firewall::tables(&nets, &[], Default::default()),
        );
        assert!(bare.ops.iter().all(|op| op.to_string() != "enslave ly0000abcd to lybr0"));
        assert!(bare.ops.iter().any(|op| op.to_string() == "set ly0000abcd up"));
    }

    /// The `filtering` backend, against the simulated kernel (which gives
    /// every new bridge port VLAN 1 untagged, as Linux does).
    #[test]
    fn filtering_golden_one_vlan_bridge_access_and_trunk_ports_and_a_restart_plans_nothing() {
        use crate::dataplane::fake::FakeKernel;
        use crate::kernel::Kernel;
        let filtering = |name: &str, mode: &str, vlan: u16| {
            let mut n = vnet(name, mode, "192.168.100.0/24", "eth0", vlan);
            n.bridge = "br-eth0".into();
            n.vlan_backend = Some(crate::model::VlanBackend::Filtering);
            n.gateway_mac = None;
            n
        };
        let nets = vec![filtering("v10", "nat", 10), filtering("v20", "bridge", 20)];
        let port = |id: &str| crate::model::Port {
            mac: crate::model::Mac([0x52, 0x54, 0, 0, 0, 7]),
            ip: Some("192.168.100.10".parse().unwrap()),
            ..crate::model::test_port(id, "v10")
        };
        let access = port("0000aaaa");
        let mut trunk = port("0000bbbb");
        trunk.trunk = vec!["v10".into(), "v20".into()];
        trunk.untagged = false;
        let ports = vec![access, trunk];
        let k = FakeKernel::default();
        k.tamper(|s| {
            let mac = Some(crate::model::Mac([2, 0, 0, 0, 0, 5]));
            s.observed.links.insert("eth0".into(), ObservedLink { mac, ..nic("eth0") });
        });
        let p = plan(&nets, &ports, Default::default(), &k.observe().unwrap(), &Tables::new());
        let text: Vec<String> = p.ops.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "create bridge br-eth0",
                "turn vlan filtering on on br-eth0",
                "set br-eth0 up",
                "add vlan 10 self to br-eth0",
                "enslave eth0 to br-eth0",
                "add vlan 10 to eth0",
                "add vlan 20 to eth0",
                "add address 192.0.2.5/24 to br-eth0",
                "remove address 192.0.2.5/24 from eth0",
                "create vlan br-eth0.10 (id 10 on br-eth0)",
                "add address 192.168.100.1/24 to br-eth0.10",
                "set br-eth0.10 up",
                "create tap ly0000aaaa",
                "enslave ly0000aaaa to br-eth0",
                "add vlan 10 pvid untagged to ly0000aaaa",
                "remove vlan 1 from ly0000aaaa",
                "set ly0000aaaa up",
                "create tap ly0000bbbb",
                "enslave ly0000bbbb to br-eth0",
                "add vlan 10 to ly0000bbbb",
                "add vlan 20 to ly0000bbbb",
                "remove vlan 1 from ly0000bbbb",
                "set ly0000bbbb up",
                "set net.ipv4.ip_forward to 1",
            ],
            "the uplink keeps VLAN 1 (the host's LAN), the ports lose it"
        );
        let uplink_mac = matches!(&p.ops[0], Op::CreateBridge { mac: Some(m), .. } if m.0 == [2, 0, 0, 0, 0, 5]);
        assert!(uplink_mac, "the bridge takes the uplink's MAC");
        p.apply(&k, &Tables::new()).unwrap();
        let again = plan(
            &nets,
            &ports,
            Default::default(),
            &k.observe().unwrap(),
            &firewall::tables(&nets, &ports, Default::default()),
        );
        assert!(again.is_empty(), "a restart plans nothing: {again:?}");
        // Without its networks, the bridge goes and the uplink gets the
        // host's address back.
        let gone = plan(&[], &[], Default::default(), &k.observe().unwrap(), &Tables::new());
        let text: Vec<String> = gone.ops.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "delete 3 links (br-eth0.10 .. ly0000bbbb)",
                "add address 192.0.2.5/24 to eth0",
                "remove address 192.0.2.5/24 from br-eth0",
                "release eth0 from its bridge",
                "delete link br-eth0",
            ]
        );
    }
}
