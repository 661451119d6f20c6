//! Floating IPs against the simulated kernel: what an association costs,
//! refusals that change nothing, failures that leave no trace, restarts
//! that plan nothing, and a property test of the invariants.

use super::*;
use crate::kernel::{KernelEvent, Op};
use crate::model::floating::{FipPoolSpec, FipSpec, FloatingIp};
use crate::model::ProjectSpec;

const FIP: &str = "198.51.100.10";

/// A rig with a nat network `a`, the host's `eth0` (198.51.100.1/24) and a
/// pool `public` of 198.51.100.10-19 on it.
pub(super) fn rig_with_pool() -> Rig {
    let mut r = rig();
    let nic = crate::kernel::ObservedLink {
        name: "eth0".into(),
        up: true,
        mtu: 1500,
        addrs: vec!["198.51.100.1/24".parse().unwrap()],
        mac: Some("02:00:00:00:00:e0".parse().unwrap()),
        ..Default::default()
    };
    r.kernel.tamper(|s| {
        s.observed.links.insert("eth0".into(), nic);
    });
    r.engine.create_network(spec("a", "nat", "10.1.0.0/24")).unwrap();
    r.engine.create_fip_pool(pool("public", "198.51.100.10-198.51.100.19")).unwrap();
    r
}

fn pool(name: &str, range: &str) -> FipPoolSpec {
    FipPoolSpec { name: name.into(), range: range.into(), interface: "eth0".into() }
}

fn fip_in(project: &str) -> FipSpec {
    FipSpec { project: Some(project.into()), ..Default::default() }
}

fn addresses(r: &Rig) -> Vec<String> {
    r.kernel.snapshot().observed.links["eth0"].addrs.iter().map(ToString::to_string).collect()
}

fn map(r: &Rig, name: &str) -> Vec<String> {
    let k = r.kernel.snapshot();
    k.tables[&planner::table_id()].set(name).unwrap().elements.iter().map(ToString::to_string).collect()
}

#[test]
fn an_association_costs_map_elements_and_one_address() {
    let mut r = rig_with_pool();
    let p1 = r.engine.create_port(port("a")).unwrap();
    let p2 = r.engine.create_port(PortSpec { vm: "vm2".into(), ..port("a") }).unwrap();
    let f = r.engine.create_floating_ip(FipSpec::default()).unwrap();
    assert_eq!((f.ip.to_string().as_str(), f.project.as_str()), (FIP, "default"));
    r.kernel.clear_log();
    let shown = r.engine.associate_floating_ip(FIP, &p1.id, None).unwrap();
    assert_eq!(shown.fixed_ip, p1.ip);
    let (fixed1, fixed2) = (p1.ip.unwrap(), p2.ip.unwrap());
    assert_eq!(
        r.kernel.log(),
        [
            format!(
                "firewall add element {{ {FIP} : {fixed1} }} in @fip_dnat; add element {{ {fixed1} : {FIP} }} in \
                 @fip_snat; add element {{ {fixed1} }} in @fip_fixed"
            ),
            format!("add address {FIP}/32 to eth0"),
            format!("announce {FIP} on eth0"),
        ],
        "a first association: three elements, the address, an announcement"
    );
    // A move: the elements change, the address stays, the old flows go.
    r.kernel.clear_log();
    r.engine.associate_floating_ip(FIP, "vm2", None).unwrap();
    let log = r.kernel.log();
    assert_eq!(log.len(), 3, "{log:?}");
    assert!(log[0].starts_with(&format!("firewall delete element {{ {FIP} : {fixed1} }} in @fip_dnat")), "{log:?}");
    assert!(log[0].contains(&format!("add element {{ {FIP} : {fixed2} }} in @fip_dnat")), "{log:?}");
    assert_eq!(log[1..], [format!("forget flows of {FIP}"), format!("announce {FIP} on eth0")]);
    assert_eq!(map(&r, "fip_dnat"), [format!("{FIP} : {fixed2}")]);
    assert!(addresses(&r).contains(&format!("{FIP}/32")));
    // Stopping the network takes the association out of the kernel;
    // starting it brings it back.
    r.engine.set_active("a", false).unwrap();
    assert!(!addresses(&r).contains(&format!("{FIP}/32")), "a stopped network's floating IP stays on eth0");
    r.engine.set_active("a", true).unwrap();
    assert_eq!(map(&r, "fip_dnat"), [format!("{FIP} : {fixed2}")]);
    assert!(addresses(&r).contains(&format!("{FIP}/32")));
    // A restart plans nothing.
    r.kernel.clear_log();
    let again = r.restarted(2000).unwrap();
    assert!(r.kernel.log().is_empty(), "a restart changed the kernel: {:?}", r.kernel.log());
    assert_eq!(again.floating_ips, r.engine.floating_ips);
    // Disassociation removes the elements and the address.
    r.engine.disassociate_floating_ip(FIP, None).unwrap();
    assert!(map(&r, "fip_dnat").is_empty() && map(&r, "fip_snat").is_empty() && map(&r, "fip_fixed").is_empty());
    assert!(!addresses(&r).contains(&format!("{FIP}/32")));
    // Deleting the network of an associated port disassociates it.
    r.engine.associate_floating_ip(FIP, &p1.id, None).unwrap();
    r.engine.delete_network("a").unwrap();
    assert_eq!(r.engine.floating_ip(FIP, None).unwrap().port, None);
    assert!(!addresses(&r).contains(&format!("{FIP}/32")));
    assert_eq!(r.world().floating.0, r.world().floating.1, "store and memory differ");
}

#[test]
fn refusals_change_nothing() {
    let mut r = rig_with_pool();
    r.engine.create_project(ProjectSpec { name: "red".into(), description: None }).unwrap();
    r.engine.create_network(spec("iso", "isolated", "10.2.0.0/24")).unwrap();
    let p = r.engine.create_port(port("a")).unwrap();
    let q = r.engine.create_port(PortSpec { vm: "q".into(), ..port("a") }).unwrap();
    let iso = r.engine.create_port(port("iso")).unwrap();
    r.engine.create_floating_ip(FipSpec::default()).unwrap();
    r.engine.create_floating_ip(FipSpec::default()).unwrap();
    let red = r.engine.create_floating_ip(fip_in("red")).unwrap();
    r.engine.associate_floating_ip(FIP, &p.id, None).unwrap();
    r.kernel.clear_log();
    let before = r.world();
    let conflict = |e: EngineError, text: &str| {
        assert!(matches!(e, EngineError::Conflict(ref m) if m.contains(text)), "wanted a conflict with {text:?}: {e}")
    };
    let not_found = |e: EngineError| assert!(matches!(e, EngineError::NotFound(_)), "{e}");
    let invalid = |e: EngineError| assert!(matches!(e, EngineError::Invalid(_)), "{e}");
    // Pools.
    conflict(r.engine.create_fip_pool(pool("public", "198.51.100.100-198.51.100.110")).unwrap_err(), "already exists");
    conflict(r.engine.create_fip_pool(pool("p2", "198.51.100.15-198.51.100.30")).unwrap_err(), "overlaps pool");
    conflict(r.engine.create_fip_pool(pool("p2", "10.1.0.100-10.1.0.110")).unwrap_err(), "overlaps subnet");
    conflict(r.engine.create_fip_pool(pool("p2", "198.51.100.1-198.51.100.5")).unwrap_err(), "the address of eth0");
    let bridge = r.engine.network("a").unwrap().bridge;
    let on_bridge = FipPoolSpec { interface: bridge, ..pool("p2", "198.51.100.100-198.51.100.110") };
    conflict(r.engine.create_fip_pool(on_bridge).unwrap_err(), "one of lanyard's interfaces");
    let missing = FipPoolSpec { interface: "eth9".into(), ..pool("p2", "198.51.100.100-198.51.100.110") };
    not_found(r.engine.create_fip_pool(missing).unwrap_err());
    invalid(r.engine.create_fip_pool(pool("p2", "198.51.100.110-198.51.100.100")).unwrap_err());
    conflict(r.engine.delete_fip_pool("public").unwrap_err(), "held by projects");
    not_found(r.engine.delete_fip_pool("nosuch").unwrap_err());
    // Floating IPs.
    let at = |ip: &str| FipSpec { ip: Some(ip.into()), ..Default::default() };
    invalid(r.engine.create_floating_ip(at("198.51.100.50")).unwrap_err());
    conflict(r.engine.create_floating_ip(at(FIP)).unwrap_err(), "already held");
    invalid(r.engine.create_floating_ip(at("not-an-ip")).unwrap_err());
    not_found(r.engine.create_floating_ip(FipSpec { pool: Some("nosuch".into()), ..Default::default() }).unwrap_err());
    not_found(r.engine.create_floating_ip(fip_in("nosuch")).unwrap_err());
    // Associations: another project's port or address is as absent as none.
    not_found(r.engine.associate_floating_ip(&red.ip.to_string(), &p.id, None).unwrap_err());
    not_found(r.engine.associate_floating_ip(FIP, &q.id, Some("red")).unwrap_err());
    conflict(r.engine.associate_floating_ip("198.51.100.11", &iso.id, None).unwrap_err(), "is isolated");
    conflict(r.engine.associate_floating_ip("198.51.100.11", &p.id, None).unwrap_err(), "already has floating IP");
    not_found(r.engine.associate_floating_ip("198.51.100.11", "nosuch", None).unwrap_err());
    not_found(r.engine.disassociate_floating_ip("198.51.100.99", None).unwrap_err());
    invalid(r.engine.delete_floating_ip("x", None).unwrap_err());
    conflict(r.engine.delete_project("red").unwrap_err(), "holds 1 floating IP");
    assert!(r.kernel.log().is_empty(), "refusals reached the kernel: {:?}", r.kernel.log());
    assert_eq!(r.world(), before);
}

#[test]
fn failed_floating_ip_mutations_leave_no_trace() {
    let mut r = rig_with_pool();
    let p = r.engine.create_port(port("a")).unwrap();
    let q = r.engine.create_port(PortSpec { vm: "q".into(), ..port("a") }).unwrap();
    r.engine.create_floating_ip(FipSpec::default()).unwrap();
    let address = format!("add address {FIP}/32 to eth0");
    r.refuses_cleanly(&address, |e| e.associate_floating_ip(FIP, &p.id, None));
    r.engine.associate_floating_ip(FIP, &p.id, None).unwrap();
    r.refuses_cleanly("firewall*", |e| e.associate_floating_ip(FIP, &q.id, None));
    let remove = format!("remove address {FIP}/32 from eth0");
    r.refuses_cleanly(&remove, |e| e.disassociate_floating_ip(FIP, None));
    r.refuses_cleanly(&remove, |e| e.delete_floating_ip(FIP, None));
    r.refuses_cleanly("delete link*", |e| e.delete_port(&p.id));
    // The pool address goes first, so nothing irreversible is done yet.
    r.refuses_cleanly(&remove, |e| e.delete_network("a"));
}

/// Across random allocations, associations, moves, disassociations,
/// deletions of addresses and ports, and restarts, over two projects: no
/// floating IP is ever held twice or by two projects, none leads to two
/// ports or to another project's port, no port has two; the kernel's maps
/// and the pool interface's addresses are exactly the live associations;
/// store and memory agree.
#[test]
fn no_floating_ip_is_ever_associated_twice_or_held_by_two_projects() {
    use std::collections::{BTreeSet, HashMap};

    for seed in 1..=10u64 {
        let mut rng = Rng::seeded(seed);
        let mut r = rig_with_pool();
        r.engine.create_project(ProjectSpec { name: "red".into(), description: None }).unwrap();
        r.engine
            .create_network(NetworkSpec { project: Some("red".into()), ..spec("b", "route", "10.2.0.0/24") })
            .unwrap();
        let projects = [("default", "a"), ("red", "b")];
        for step in 0..150 {
            let ctx = format!("seed {seed} step {step}");
            let (project, net) = projects[rng.next(2) as usize];
            let ports: Vec<Port> = r.engine.ports_of(Some(project), None, None);
            let fips: Vec<FloatingIp> =
                r.engine.floating_ips.iter().filter(|f| f.project == project).cloned().collect();
            let pick_port = |rng: &mut Rng| ports.get(rng.next(ports.len().max(1) as u64) as usize).cloned();
            let pick_fip = |rng: &mut Rng| fips.get(rng.next(fips.len().max(1) as u64) as usize).cloned();
            match rng.next(100) {
                0..=19 => {
                    let spec = PortSpec { project: Some(project.into()), vm: format!("vm{step}"), ..port(net) };
                    r.engine.create_port(spec).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                }
                20..=29 => {
                    if let Some(p) = pick_port(&mut rng) {
                        r.engine.delete_port(&p.id).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                    }
                }
                30..=44 => {
                    // Sometimes an address another project holds.
                    let ip = (rng.next(3) == 0).then(|| format!("198.51.100.{}", 10 + rng.next(10)));
                    let _ = r.engine.create_floating_ip(FipSpec { ip, ..fip_in(project) });
                }
                45..=74 => {
                    // Sometimes the other project's port (refused).
                    let other = projects[rng.next(2) as usize].0;
                    let target = r.engine.ports_of(Some(other), None, None);
                    if let (Some(f), Some(p)) = (pick_fip(&mut rng), target.first()) {
                        let _ = r.engine.associate_floating_ip(&f.ip.to_string(), &p.id, Some(project));
                    }
                }
                75..=84 => {
                    if let Some(f) = pick_fip(&mut rng) {
                        r.engine.disassociate_floating_ip(&f.ip.to_string(), Some(project)).unwrap();
                    }
                }
                85..=92 => {
                    if let Some(f) = pick_fip(&mut rng) {
                        r.engine.delete_floating_ip(&f.ip.to_string(), Some(project)).unwrap();
                    }
                }
                _ => {
                    r.kernel.clear_log();
                    r.engine = r.restarted(1000 + step).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                    assert!(r.kernel.log().is_empty(), "{ctx}: a restart changed the kernel: {:?}", r.kernel.log());
                }
            }
            // The invariants.
            let w = r.world();
            assert_eq!(w.floating.0, w.floating.1, "{ctx}: store and memory differ");
            let all = &w.floating.1;
            let ips: BTreeSet<_> = all.iter().map(|f| f.ip).collect();
            assert_eq!(ips.len(), all.len(), "{ctx}: an address held twice: {all:?}");
            let mut per_port: HashMap<&str, usize> = HashMap::new();
            let ports: HashMap<String, Port> =
                r.engine.ports(None, None).into_iter().map(|p| (p.id.clone(), p)).collect();
            let mut live = BTreeSet::new();
            for f in all {
                let Some(id) = f.port.as_deref() else { continue };
                *per_port.entry(id).or_default() += 1;
                let p = ports.get(id).unwrap_or_else(|| panic!("{ctx}: {} leads to a deleted port {id}", f.ip));
                assert_eq!(p.project, f.project, "{ctx}: {} of {} leads to {}'s port", f.ip, f.project, p.project);
                live.insert(format!("{} : {}", f.ip, p.ip.unwrap()));
            }
            assert!(per_port.values().all(|n| *n == 1), "{ctx}: a port with two floating IPs: {per_port:?}");
            let dnat: BTreeSet<String> = map(&r, "fip_dnat").into_iter().collect();
            assert_eq!(dnat, live, "{ctx}: the kernel's DNAT map is not the associations");
            let on_eth0: BTreeSet<String> =
                addresses(&r).into_iter().filter(|a| a.ends_with("/32")).map(|a| a.replace("/32", "")).collect();
            let wanted: BTreeSet<String> = live.iter().map(|l| l.split(' ').next().unwrap().to_string()).collect();
            assert_eq!(on_eth0, wanted, "{ctx}: eth0's addresses are not the associated floating IPs");
        }
    }
}

#[test]
fn a_floating_ip_address_removed_under_lanyard_comes_back_and_a_stray_one_goes() {
    let mut r = rig_with_pool();
    let p = r.engine.create_port(port("a")).unwrap();
    r.engine.create_floating_ip(FipSpec::default()).unwrap();
    r.engine.associate_floating_ip(FIP, &p.id, None).unwrap();
    let good = r.kernel.snapshot();
    let ours: ipnet::Ipv4Net = format!("{FIP}/32").parse().unwrap();
    let stray: ipnet::Ipv4Net = "198.51.100.15/32".parse().unwrap();
    r.kernel.apply_op(&Op::DelAddress { link: "eth0".into(), addr: ours }).unwrap();
    r.kernel.apply_op(&Op::AddAddress { link: "eth0".into(), addr: stray }).unwrap();
    let events = [
        KernelEvent::Address { link: "eth0".into(), addr: ours, gone: true },
        KernelEvent::Address { link: "eth0".into(), addr: stray, gone: false },
    ];
    assert_eq!(r.engine.heal(&events).unwrap(), 2, "the floating IP back, the stray pool address gone");
    assert_eq!(r.kernel.snapshot(), good);
    // The host's own address changing is none of lanyard's business.
    let own: ipnet::Ipv4Net = "198.51.100.1/24".parse().unwrap();
    r.kernel.apply_op(&Op::DelAddress { link: "eth0".into(), addr: own }).unwrap();
    let event = KernelEvent::Address { link: "eth0".into(), addr: own, gone: true };
    assert_eq!(r.engine.heal(&[event]).unwrap(), 0);
}

/// In a cluster a floating IP is NATed on its port's host: associated
/// through A with a port of B, A's kernel gets nothing; B, following the
/// change, adds the elements and the address and announces it; moved to a
/// port of A, B forgets its flows and drops it, and A (whose own
/// association this is) takes it over and announces it.
#[test]
fn a_floating_ip_lives_and_is_announced_on_its_ports_host() {
    use crate::store::Change;
    let store = Arc::new(FlakyStore {
        inner: SqliteStore::in_memory().expect("in-memory store"),
        broken: AtomicBool::new(false),
        nodes: Default::default(),
    });
    // The pool's interface is each member's `u0` (its address, the pool's
    // subnet, registered as no node's underlay: no tunnels here).
    let member = |node: &str| super::cluster_member(&store, node, Ipv4Addr::new(198, 51, 100, 1));
    let (mut a, ka) = member("a");
    let (mut b, kb) = member("b");
    a.create_network(spec("a", "nat", "10.1.0.0/24")).unwrap();
    let public = FipPoolSpec { interface: "u0".into(), ..pool("public", "198.51.100.10-198.51.100.19") };
    a.create_fip_pool(public).unwrap();
    assert!(b.resync().unwrap());
    let on_b = b.create_port(port("a")).unwrap();
    assert!(a.resync().unwrap());
    a.create_floating_ip(FipSpec::default()).unwrap();
    ka.clear_log();
    a.associate_floating_ip(FIP, &on_b.id, None).unwrap();
    assert_eq!(ka.log(), Vec::<String>::new(), "A NATs a floating IP of B's port");
    kb.clear_log();
    assert!(b.follow(&[Change::Other], false).unwrap());
    let has =
        |k: &FakeKernel| k.snapshot().observed.links["u0"].addrs.iter().any(|a| a.to_string() == format!("{FIP}/32"));
    assert!(has(&kb), "B did not take the floating IP of its port");
    assert!(kb.log().contains(&format!("announce {FIP} on u0")), "B did not announce it: {:?}", kb.log());
    // Moved to a port of A, through A: A takes it over; B lets it go.
    let on_a = a.create_port(PortSpec { vm: "vm2".into(), ..port("a") }).unwrap();
    ka.clear_log();
    a.associate_floating_ip(FIP, &on_a.id, None).unwrap();
    assert!(has(&ka) && ka.log().contains(&format!("announce {FIP} on u0")), "{:?}", ka.log());
    kb.clear_log();
    assert!(b.follow(&[Change::Other], false).unwrap());
    assert!(!has(&kb), "B kept the floating IP that moved to A");
    assert!(kb.log().contains(&format!("forget flows of {FIP}")), "B kept the old flows: {:?}", kb.log());
    assert!(!kb.log().iter().any(|l| l.starts_with("announce")), "{:?}", kb.log());
}
