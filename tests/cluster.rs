//! Two lanyard daemons sharing desired state in one etcd (multi-host,
//! docs/multi-host.md), in throw-away namespaces: a "store"
//! namespace runs etcd, each host namespace runs a daemon with `--etcd`
//! and reaches etcd over a veth pair of its own (10.213.N.0/24); nothing
//! touches the root namespace. A network created through host A appears on
//! host B (listed, its bridge up) without a restart, and goes from B when
//! deleted through A (B's mirror follows etcd); `node list` shows both
//! nodes with their underlay addresses; a SIGKILLed daemon's node leaves the list within
//! the lease's TTL, a cleanly stopped one at once; with etcd gone a change
//! is refused in one line and leaves nothing behind; ports belong to the
//! host they were created through; two hosts racing port creates on one
//! network never share an IP or MAC; three hosts each serve their own
//! VMs as their gateway (DHCP, ARP, NAT), and survive one host's death
//! and etcd's absence. Needs root and etcd;
//! see `common::privileged`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// How soon a change made through one host shows on another.
const FOLLOWS_WITHIN: Duration = Duration::from_secs(3);

/// The node registration's lease TTL (src/daemon/cluster.rs) and a margin.
const NODE_GONE_WITHIN: Duration = Duration::from_secs(10 + 5);

/// A host namespace joined to the store namespace by a veth pair: the
/// host's end `u0` gets `10.213.N.2/24`, the store's `hN` gets `.1`.
fn joined(store: &Netns, n: u8) -> Netns {
    let host = Netns::new(&format!("h{n}"));
    let peer = format!("h{n}");
    host.ip_ok(&["link", "add", "name", "u0", "type", "veth", "peer", "name", &peer, "netns", store.name()]);
    host.ip_ok(&["addr", "add", &format!("10.213.{n}.2/24"), "dev", "u0"]);
    host.ip_ok(&["link", "set", "u0", "up"]);
    store.ip_ok(&["addr", "add", &format!("10.213.{n}.1/24"), "dev", &peer]);
    store.ip_ok(&["link", "set", &peer, "up"]);
    host
}

fn node_names(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|n| n["name"].as_str().map(String::from)).collect()
}

fn net_names(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|n| n["name"].as_str().map(String::from)).collect()
}

#[test]
fn two_daemons_share_state_and_see_each_other() {
    if !privileged("two_daemons_share_state_and_see_each_other", &["ip", "etcd", "busybox", "kill"]) {
        return;
    }
    let store = Netns::new("stor");
    let (ha, hb) = (joined(&store, 1), joined(&store, 2));
    let etcd = Etcd::start_in(&store, &["10.213.1.1", "10.213.2.1"]);
    let (node_a, node_b) = (unique("nda"), unique("ndb"));
    let a = Daemon::start_with(&ha, &["--etcd", &etcd.urls[0], "--node", &node_a, "--underlay", "u0"]);
    let mut b = Daemon::start_with(&hb, &["--etcd", &etcd.urls[1], "--node", &node_b, "--underlay", "u0"]);

    // Both nodes, seen from either daemon, with their underlay addresses.
    for d in [&a, &b] {
        let nodes = d.cli_json(&["node", "list"]);
        assert_eq!(node_names(&nodes), sorted(vec![node_a.clone(), node_b.clone()]), "{nodes}");
        for n in nodes.as_array().unwrap() {
            assert_eq!(n["state"], "up", "{n}");
            let want = if n["name"] == node_a.as_str() { "10.213.1.2" } else { "10.213.2.2" };
            assert_eq!(n["underlay_ip"], want, "{n}");
        }
    }
    let table = a.cli_ok(&["node", "list"]);
    assert!(table.contains(&format!("{node_a} (this)")) && table.contains("10.213.2.2"), "{table}");

    // A network made through A appears on B with no restart (B's mirror
    // follows etcd): listed, its bridge up in B's namespace. A network
    // deleted through A goes from B the same way.
    a.cli_ok(&["net", "create", "shared", "--mode", "isolated", "--subnet", "10.77.0.0/24"]);
    assert_eq!(net_names(&a.cli_json(&["net", "list"])), ["shared"]);
    let started = std::time::Instant::now();
    let on_b = poll(FOLLOWS_WITHIN, Duration::from_millis(50), || {
        let v = b.cli_json(&["net", "list"]);
        (net_names(&v) == ["shared"] && hb.link("lybr0").is_some()).then_some(v)
    });
    let Some(on_b) = on_b else {
        panic!("B did not follow A's network within {FOLLOWS_WITHIN:?}: {}\n{}", b.cli_ok(&["net", "list"]), b.log())
    };
    eprintln!("B followed A's new network in {:?}", started.elapsed());
    assert_eq!(on_b[0]["subnet"], "10.77.0.0/24", "{on_b}");
    assert_eq!(on_b[0]["state"], "active", "{on_b}");
    a.cli_ok(&["net", "create", "brief", "--mode", "nat", "--subnet", "10.79.0.0/24"]);
    let bridge = a.cli_json(&["net", "list"]).as_array().unwrap().iter().find(|n| n["name"] == "brief").unwrap()
        ["bridge"]
        .as_str()
        .unwrap()
        .to_string();
    let came = poll(FOLLOWS_WITHIN, Duration::from_millis(50), || hb.link(&bridge));
    assert!(came.is_some(), "B did not bring up {bridge}: {}", b.log());
    a.cli_ok(&["net", "delete", "brief"]);
    let went = poll(FOLLOWS_WITHIN, Duration::from_millis(50), || {
        (hb.link(&bridge).is_none() && net_names(&b.cli_json(&["net", "list", "--all"])) == ["shared"]).then_some(())
    });
    assert!(went.is_some(), "B kept the network deleted through A: {}", b.cli_ok(&["net", "list", "--all"]));
    // etcd unreachable for a while (paused past the client's keep-alive
    // timeout, so B's watch breaks): once it answers again, B watches
    // again and follows what changed.
    assert!(signal(etcd.pid(), "STOP"), "cannot pause etcd");
    std::thread::sleep(Duration::from_secs(10));
    assert!(signal(etcd.pid(), "CONT"), "cannot resume etcd");
    a.cli_ok(&["net", "create", "later", "--mode", "isolated", "--subnet", "10.80.0.0/24"]);
    let back = poll(Duration::from_secs(15), Duration::from_millis(100), || {
        (net_names(&b.cli_json(&["net", "list"])) == ["later", "shared"]).then_some(())
    });
    assert!(back.is_some(), "B did not follow a change after etcd came back: {}", b.log());
    a.cli_ok(&["net", "delete", "later"]);
    let gone = poll(FOLLOWS_WITHIN, Duration::from_millis(50), || {
        (net_names(&b.cli_json(&["net", "list"])) == ["shared"]).then_some(())
    });
    assert!(gone.is_some(), "{}", b.cli_ok(&["net", "list"]));

    // A restart keeps what B follows.
    b.restart();
    assert_eq!(net_names(&b.cli_json(&["net", "list"])), ["shared"]);
    assert!(hb.link("lybr0").is_some(), "B's restart lost the shared network's bridge");

    // SIGKILL: A's node leaves B's list within the lease's TTL.
    let mut a = a;
    assert!(signal(a.pid(), "KILL"), "cannot kill daemon A");
    assert!(a.exited(Duration::from_secs(10)).is_some(), "daemon A survived SIGKILL");
    let gone = poll(NODE_GONE_WITHIN, Duration::from_millis(500), || {
        let names = node_names(&b.cli_json(&["node", "list"]));
        (names == [node_b.as_str()]).then_some(())
    });
    assert!(
        gone.is_some(),
        "A's node is still listed {NODE_GONE_WITHIN:?} after SIGKILL: {}",
        b.cli_ok(&["node", "list"])
    );

    // A clean stop revokes the lease: B's node is gone at once, as A,
    // started again on the same etcd, sees.
    a.start_again();
    let status = b.stop();
    assert!(status.success(), "daemon B exited with {status}; log:\n{}", b.log());
    assert_eq!(node_names(&a.cli_json(&["node", "list"])), [node_a.as_str()], "B's node outlived its clean stop");
    assert_eq!(net_names(&a.cli_json(&["net", "list"])), ["shared"]);

    // etcd gone: a change is refused in one line (503 from the API, exit
    // 1), and nothing of it stays, in the kernel or in the daemon's memory.
    let links = ha.links().len();
    drop(etcd);
    let o = a.cli(&["net", "create", "late", "--mode", "isolated", "--subnet", "10.78.0.0/24"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: ")
            && err.trim_end().lines().count() == 1
            && err.contains("10.213.1.1:2379 is unreachable"),
        "{err}"
    );
    assert_eq!(ha.links().len(), links, "the refused network left links behind");
    assert_eq!(net_names(&a.cli_json(&["net", "list", "--all"])), ["shared"]);
}

/// Ports belong to the host they were created through: only it has the
/// port's device, every host lists it, `node list` counts it for its node.
/// Every host has every network's bridge, and a host that comes up without
/// one (a reboot) brings it up without stopping the network for the others.
#[test]
fn ports_belong_to_the_host_they_were_created_through() {
    if !privileged("ports_belong_to_the_host_they_were_created_through", &["ip", "etcd", "busybox", "kill"]) {
        return;
    }
    let store = Netns::new("stor");
    let (ha, hb) = (joined(&store, 1), joined(&store, 2));
    let etcd = Etcd::start_in(&store, &["10.213.1.1", "10.213.2.1"]);
    let (node_a, node_b) = (unique("nda"), unique("ndb"));
    let a = Daemon::start_with(&ha, &["--etcd", &etcd.urls[0], "--node", &node_a, "--underlay", "u0"]);
    let mut b = Daemon::start_with(&hb, &["--etcd", &etcd.urls[1], "--node", &node_b, "--underlay", "u0"]);
    let net = a.cli_json(&["net", "create", "pn", "--mode", "isolated", "--subnet", "10.81.0.0/24"]);
    let bridge = net["bridge"].as_str().expect("a bridge name").to_string();
    assert!(poll(FOLLOWS_WITHIN, Duration::from_millis(50), || hb.link(&bridge)).is_some(), "{}", b.log());

    let pa = a.cli_json(&["port", "create", "--net", "pn", "--vm", "va"]);
    let pb = b.cli_json(&["port", "create", "--net", "pn", "--vm", "vb"]);
    assert_eq!((pa["node"].as_str(), pb["node"].as_str()), (Some(node_a.as_str()), Some(node_b.as_str())));
    assert_ne!(pa["ip"], pb["ip"], "two hosts handed out one address");
    let (ia, ib) = (pa["ifname"].as_str().unwrap(), pb["ifname"].as_str().unwrap());
    for d in [&a, &b] {
        let both = poll(FOLLOWS_WITHIN, Duration::from_millis(50), || {
            (d.cli_json(&["port", "list"]).as_array().map(Vec::len) == Some(2)).then_some(())
        });
        assert!(both.is_some(), "a host does not list both ports: {}", d.cli_ok(&["port", "list"]));
    }
    assert!(ha.link(ia).is_some() && ha.link(ib).is_none(), "A's devices: {:?}", ha.links());
    assert!(hb.link(ib).is_some() && hb.link(ia).is_none(), "B's devices: {:?}", hb.links());
    let nodes = a.cli_json(&["node", "list"]);
    for n in nodes.as_array().unwrap() {
        assert_eq!(n["ports"], 1, "{nodes}");
    }
    let table = a.cli_ok(&["node", "list"]);
    assert!(table.contains("Ports"), "{table}");

    // B "reboots": its bridge and TAP are gone when it starts. It brings
    // both back, and the network stays active for A (it is not autostart).
    b.stop();
    hb.ip_ok(&["link", "del", ib]);
    hb.ip_ok(&["link", "del", &bridge]);
    b.start_again();
    assert!(hb.link(&bridge).is_some() && hb.link(ib).is_some(), "B did not bring back its network and port");
    assert!(hb.link(ia).is_none(), "B made A's port's device");
    let on_a = a.cli_json(&["net", "list", "--all"]);
    assert_eq!(on_a[0]["state"], "active", "B's start stopped the network for A: {on_a}");
    assert!(ha.link(&bridge).is_some());
}

/// A network spans hosts over VXLAN: each host has the network's VXLAN
/// device (learning off, its underlay address as local end, MTU of the
/// underlay − 50) on the bridge, and an entry towards the other host for
/// each of its ports; a VM on A pings a VM on B across the underlay; A's
/// entries towards B go when B's node dies and come back with it; the
/// entry goes when B's port is deleted.
#[test]
fn vms_on_two_hosts_reach_each_other_over_vxlan() {
    if !privileged("vms_on_two_hosts_reach_each_other_over_vxlan", &["ip", "etcd", "busybox", "kill", "ping", "bridge"])
    {
        return;
    }
    let store = Netns::new("stor");
    let (ha, hb) = (joined(&store, 1), joined(&store, 2));
    // The underlay: the store namespace routes between the hosts' subnets.
    store.set_ip_forward(true);
    ha.ip_ok(&["route", "add", "10.213.2.0/24", "via", "10.213.1.1"]);
    hb.ip_ok(&["route", "add", "10.213.1.0/24", "via", "10.213.2.1"]);
    assert!(ping(&ha, "10.213.2.2", 1, 5).all_replied(), "the hosts do not reach each other's underlay address");
    let etcd = Etcd::start_in(&store, &["10.213.1.1", "10.213.2.1"]);
    let (node_a, node_b) = (unique("nda"), unique("ndb"));
    let a = Daemon::start_with(&ha, &["--etcd", &etcd.urls[0], "--node", &node_a, "--underlay", "u0"]);
    let b = Daemon::start_with(&hb, &["--etcd", &etcd.urls[1], "--node", &node_b, "--underlay", "u0"]);
    let net = a.cli_json(&["net", "create", "ov", "--mode", "isolated", "--subnet", "10.83.0.0/24"]);
    let bridge = net["bridge"].as_str().expect("a bridge name").to_string();
    assert!(poll(FOLLOWS_WITHIN, Duration::from_millis(50), || hb.link(&bridge)).is_some(), "{}", b.log());

    // One VXLAN device per host on the bridge, as the brief says.
    let vxlan_of = |h: &Netns| {
        h.links().into_iter().find(|l| l["linkinfo"]["info_kind"] == "vxlan" && l["master"] == bridge.as_str())
    };
    let (va, vb) = (vxlan_of(&ha), poll(FOLLOWS_WITHIN, Duration::from_millis(50), || vxlan_of(&hb)));
    let (va, vb) = (va.expect("no VXLAN device on A's bridge"), vb.expect("no VXLAN device on B's bridge"));
    let vxlan = va["ifname"].as_str().unwrap().to_string();
    assert_eq!(vb["ifname"], vxlan.as_str(), "the hosts named the network's VXLAN device differently");
    assert_eq!(va["linkinfo"]["info_data"]["id"], vb["linkinfo"]["info_data"]["id"], "different VNIs");
    for (v, local) in [(&va, "10.213.1.2"), (&vb, "10.213.2.2")] {
        let data = &v["linkinfo"]["info_data"];
        assert_eq!((data["local"].as_str(), data["port"].as_u64()), (Some(local), Some(4789)), "{v}");
        assert_eq!(data["learning"], false, "{v}");
        assert_eq!(v["mtu"], 1450, "{v}");
        assert!(v["ifalias"].as_str().is_some_and(|a| a.starts_with("lanyard:")), "{v}");
    }
    assert_eq!(ha.link(&bridge).unwrap()["mtu"], 1450);

    // A VM (a namespace with a veth port) on each host, addressed as its
    // port says.
    let vm = |d: &Daemon, name: &str| {
        let ns = Netns::new(name);
        let p = d.cli_json(&[
            "port",
            "create",
            "--net",
            "ov",
            "--vm",
            name,
            "--type",
            "veth",
            "--netns",
            ns.name(),
            "--ifname",
            "eth0",
        ]);
        let ip = p["ip"].as_str().expect("a fixed address").to_string();
        ns.ip_ok(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        (ns, p, ip)
    };
    let (vm_a, _pa, _ip_a) = vm(&a, "vma");
    let (_vm_b, pb, ip_b) = vm(&b, "vmb");
    let mac_b = pb["mac"].as_str().unwrap().to_string();
    // A follows B's port: B's MAC towards B's underlay address, and B's
    // flood entry.
    let fdb_a = || ha.exec_ok("bridge", &["fdb", "show", "dev", &vxlan]);
    let entry = poll(FOLLOWS_WITHIN, Duration::from_millis(50), || {
        let f = fdb_a();
        (f.contains(&format!("{mac_b} dst 10.213.2.2")) && f.contains("00:00:00:00:00:00 dst 10.213.2.2")).then_some(f)
    });
    assert!(entry.is_some(), "A has no entry for B's port: {}\n{}", fdb_a(), a.log());
    let fdb_b = hb.exec_ok("bridge", &["fdb", "show", "dev", &vxlan]);
    assert!(fdb_b.contains("00:00:00:00:00:00 dst 10.213.1.2"), "B has no flood entry towards A: {fdb_b}");

    let tx_before = vxlan_tx_packets(&ha, &vxlan);
    let p = ping(&vm_a, &ip_b, 3, 10);
    assert!(p.all_replied(), "VM A cannot reach VM B across hosts: {}", p.output);
    // The replies came over the tunnel: A's VXLAN device sent the requests.
    assert!(vxlan_tx_packets(&ha, &vxlan) >= tx_before + 3, "the pings did not go through {vxlan}");
    // Deleted by hand, the device comes back (the healer), on the bridge,
    // with its entries.
    ha.ip_ok(&["link", "del", &vxlan]);
    let healed = poll(Duration::from_secs(5), Duration::from_millis(50), || {
        let f = stdout(&ha.exec("bridge", &["fdb", "show", "dev", &vxlan]));
        (f.contains(&format!("{mac_b} dst 10.213.2.2")) && vxlan_of(&ha).is_some()).then_some(())
    });
    assert!(healed.is_some(), "A's VXLAN device did not come back: {}", a.log());
    assert!(ping(&vm_a, &ip_b, 2, 10).all_replied(), "VM A cannot reach VM B after the device came back");

    // B's daemon killed: its registration lapses within the TTL, and A's
    // entries towards it go with it; B back, they come back.
    let mut b = b;
    assert!(signal(b.pid(), "KILL"), "cannot kill daemon B");
    assert!(b.exited(Duration::from_secs(10)).is_some(), "daemon B survived SIGKILL");
    let dead =
        poll(NODE_GONE_WITHIN, Duration::from_millis(200), || (!fdb_a().contains("dst 10.213.2.2")).then_some(()));
    assert!(dead.is_some(), "A kept entries towards a dead node: {}\n{}", fdb_a(), a.log());
    b.start_again();
    let back = poll(FOLLOWS_WITHIN, Duration::from_millis(50), || {
        fdb_a().contains(&format!("{mac_b} dst 10.213.2.2")).then_some(())
    });
    assert!(back.is_some(), "A did not take B back: {}\n{}", fdb_a(), a.log());
    assert!(ping(&vm_a, &ip_b, 2, 10).all_replied(), "VM A cannot reach VM B after B's restart");

    // B's port deleted: A drops its entries (B has no port left there).
    b.cli_ok(&["port", "delete", pb["id"].as_str().unwrap()]);
    let gone = poll(FOLLOWS_WITHIN, Duration::from_millis(50), || {
        let f = fdb_a();
        // (The bridge's own learned entry for the MAC ages out; the
        // device's entries, `dst`, are lanyard's.)
        (!f.contains(&format!("{mac_b} dst")) && !f.contains("dst 10.213.2.2")).then_some(())
    });
    assert!(gone.is_some(), "A kept B's deleted port's entries: {}", fdb_a());

    // The network deleted: its VXLAN devices go with the bridges.
    a.cli_ok(&["net", "delete", "ov", "--force"]);
    let cleared = poll(FOLLOWS_WITHIN, Duration::from_millis(50), || {
        (ha.link(&vxlan).is_none() && hb.link(&vxlan).is_none()).then_some(())
    });
    assert!(cleared.is_some(), "a VXLAN device outlived its network");
}

/// `per_host` port creates on network `net` through each of `daemons`,
/// all at once (a client thread per daemon); every CLI outcome. VM names
/// are DNS names on the network: each host's are its own (`hHvmI`).
fn create_at_once(daemons: &[&Daemon], net: &str, per_host: usize) -> Vec<std::process::Output> {
    std::thread::scope(|s| {
        let workers: Vec<_> = daemons
            .iter()
            .enumerate()
            .map(|(h, d)| {
                s.spawn(move || {
                    (0..per_host)
                        .map(|i| d.cli(&["port", "create", "--net", net, "--vm", &format!("h{h}vm{i}"), "-o", "json"]))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("a client thread panicked")).collect()
    })
}

/// Packets a link has sent (`ip -s link`).
fn vxlan_tx_packets(ns: &Netns, ifname: &str) -> u64 {
    let v = ns.ip_json(&["-s", "link", "show", "dev", ifname]);
    v[0]["stats64"]["tx"]["packets"].as_u64().unwrap_or(0)
}

/// Two hosts create ports on one small network at once, through their own
/// daemons: every IP and MAC is handed out once (the claims in etcd), and
/// the only failures are exhaustion.
#[test]
fn two_hosts_creating_ports_at_once_never_share_an_ip_or_mac() {
    if !privileged("two_hosts_creating_ports_at_once_never_share_an_ip_or_mac", &["ip", "etcd", "busybox", "kill"]) {
        return;
    }
    let store = Netns::new("stor");
    let (ha, hb) = (joined(&store, 1), joined(&store, 2));
    let etcd = Etcd::start_in(&store, &["10.213.1.1", "10.213.2.1"]);
    let a = Daemon::start_with(&ha, &["--etcd", &etcd.urls[0], "--node", &unique("nda")]);
    let b = Daemon::start_with(&hb, &["--etcd", &etcd.urls[1], "--node", &unique("ndb")]);
    // A /26: 61 guest addresses for 80 ports.
    a.cli_ok(&["net", "create", "race", "--mode", "isolated", "--subnet", "10.82.0.0/26"]);
    let on_b = poll(FOLLOWS_WITHIN, Duration::from_millis(50), || {
        (net_names(&b.cli_json(&["net", "list"])) == ["race"]).then_some(())
    });
    assert!(on_b.is_some(), "B did not follow the network: {}", b.log());
    const PER_HOST: usize = 40;
    let outcomes = create_at_once(&[&a, &b], "race", PER_HOST);
    let (made, refused): (Vec<_>, Vec<_>) = outcomes.into_iter().partition(|o| o.status.success());
    for o in &refused {
        assert!(stderr(o).contains("no free address"), "a failure that is not exhaustion: {}", stderr(o));
    }
    assert_eq!(made.len(), 61, "{} made, {} refused", made.len(), refused.len());
    let ports = poll(FOLLOWS_WITHIN, Duration::from_millis(100), || {
        let v = a.cli_json(&["port", "list"]);
        (v.as_array().map(Vec::len) == Some(61)).then_some(v)
    })
    .unwrap_or_else(|| panic!("A does not list 61 ports: {}", a.cli_ok(&["port", "list"])));
    let list = ports.as_array().unwrap();
    let ips: std::collections::HashSet<&str> = list.iter().filter_map(|p| p["ip"].as_str()).collect();
    let macs: std::collections::HashSet<&str> = list.iter().filter_map(|p| p["mac"].as_str()).collect();
    assert_eq!((ips.len(), macs.len()), (61, 61), "an IP or a MAC was handed out twice: {ports}");
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Without --etcd the daemon is a single host: `node list` shows it alone.
#[test]
fn a_single_host_daemon_lists_itself() {
    if !privileged("a_single_host_daemon_lists_itself", &["ip"]) {
        return;
    }
    let ns = Netns::new("solo");
    let d = Daemon::start(&ns);
    let nodes = d.cli_json(&["node", "list"]);
    let list = nodes.as_array().expect("a list");
    assert_eq!(list.len(), 1, "{nodes}");
    assert_eq!((list[0]["state"].as_str(), list[0]["local"].as_bool()), (Some("up"), Some(true)), "{nodes}");
    assert!(list[0]["underlay_ip"].is_null(), "{nodes}");
}

/// Wrong cluster flags are refused before anything starts, in one line.
#[test]
fn cluster_flags_are_checked() {
    for (args, want) in [
        (&["--node", "a"][..], "--etcd"),
        (&["--etcd", "http://10.213.9.1:2379"][..], "--node"),
        (&["--etcd", "10.213.9.1:2379", "--node", "a"][..], "http://HOST:PORT"),
        (&["--etcd", "http://10.213.9.1:2379", "--node", "a/b"][..], "--node"),
        (&["--underlay", "u0"][..], "--etcd"),
    ] {
        let dir = TempDir::new("flags");
        let o = run(
            std::process::Command::new(LANYARD)
                .arg("--socket")
                .arg(dir.path().join("s"))
                .args(["daemon", "--state-dir"])
                .arg(dir.path().join("state"))
                .args(args),
            Duration::from_secs(30),
        );
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.trim_end().lines().count() == 1 && err.contains(want),
            "{args:?}: {err}"
        );
        assert!(!dir.path().join("state").exists(), "{args:?} created the state directory");
    }
}

/// The three hosts: one network created through A spans A, B and
/// C over VXLAN with a gateway on every host (the same address and MAC on
/// each bridge). Each VM gets its fixed address from its own host's DHCP
/// (with the tunnel's MTU), and neither DHCP nor ARP for or from the
/// gateway crosses the underlay, where VXLAN carries the VMs' own traffic;
/// each VM reaches the outside through its own host's NAT. A's daemon
/// SIGKILLed and its underlay cut: B's and C's VMs keep talking to each
/// other and to the outside without a loss, A's entries leave B and C
/// within the TTL, and A comes back. etcd gone: the VMs keep their leases
/// and reach each other, a port create is refused in one line; etcd back:
/// the next create works and every host follows it.
#[test]
fn three_hosts_each_the_gateway_of_its_own_vms() {
    if !privileged(
        "three_hosts_each_the_gateway_of_its_own_vms",
        &["ip", "etcd", "busybox", "kill", "ping", "bridge", "tcpdump", "udhcpc"],
    ) {
        return;
    }
    const OUTSIDE: &str = "10.213.99.1";
    let store = Netns::new("stor");
    let hosts: Vec<Netns> = (1..=3).map(|n| joined(&store, n)).collect();
    // The underlay routes through the store namespace, which is also the
    // outside the VMs reach.
    store.set_ip_forward(true);
    store.ip_ok(&["addr", "add", &format!("{OUTSIDE}/32"), "dev", "lo"]);
    let default_route = |i: usize| {
        hosts[i].ip_ok(&["route", "replace", "default", "via", &format!("10.213.{}.1", i + 1)]);
    };
    (0..3).for_each(default_route);
    let underlay = |i: usize| format!("10.213.{}.2", i + 1);
    let mut etcd = Etcd::start_in(&store, &["10.213.1.1", "10.213.2.1", "10.213.3.1"]);
    let mut daemons: Vec<Daemon> = (0..3)
        .map(|i| {
            let node = unique(&format!("nd{i}"));
            Daemon::start_with(&hosts[i], &["--etcd", &etcd.urls[i], "--node", &node, "--underlay", "u0"])
        })
        .collect();

    let net = daemons[0].cli_json(&["net", "create", "span", "--mode", "nat", "--subnet", "10.84.0.0/24"]);
    let bridge = net["bridge"].as_str().expect("a bridge name").to_string();
    let vxlan_of = |h: &Netns| {
        h.links().into_iter().find(|l| l["linkinfo"]["info_kind"] == "vxlan" && l["master"] == bridge.as_str())
    };
    let vxlan = (0..3)
        .map(|i| poll(FOLLOWS_WITHIN, Duration::from_millis(50), || vxlan_of(&hosts[i])))
        .map(|v| v.expect("a host has no VXLAN device on the network's bridge")["ifname"].as_str().unwrap().to_string())
        .collect::<Vec<_>>();
    assert!(vxlan.iter().all(|v| *v == vxlan[0]), "{vxlan:?}");
    let vxlan = vxlan[0].clone();
    // The anycast gateway: one address and one MAC, on every host.
    let gateway_mac = hosts[0].mac(&bridge);
    for h in &hosts {
        assert_eq!(h.mac(&bridge), gateway_mac, "the hosts' bridges have different MACs");
        assert!(h.ipv4_addrs(&bridge).contains(&"10.84.0.1/24".to_string()), "{:?}", h.ipv4_addrs(&bridge));
    }

    let underlay_cap = Capture::start(&store, "underlay", "any", "udp port 4789");
    // A VM on each host, through that host's daemon.
    let vm = |d: &Daemon, name: &str| {
        let ns = Netns::new(name);
        let args = [
            "port",
            "create",
            "--net",
            "span",
            "--vm",
            name,
            "--type",
            "veth",
            "--netns",
            ns.name(),
            "--ifname",
            "eth0",
        ];
        let p = d.cli_json(&args);
        (ns, p)
    };
    let vms: Vec<(Netns, Value)> = (0..3).map(|i| vm(&daemons[i], &format!("vm{i}"))).collect();
    let ip = |i: usize| vms[i].1["ip"].as_str().expect("a fixed address").to_string();
    let mac = |i: usize| vms[i].1["mac"].as_str().expect("a MAC").to_string();
    let fdb = |i: usize| hosts[i].exec_ok("bridge", &["fdb", "show", "dev", &vxlan]);
    // Every host floods to the two others (each has a port now), so a
    // broadcast that were let through would reach them.
    for (i, d) in daemons.iter().enumerate() {
        let others: Vec<String> = (0..3).filter(|j| *j != i).map(underlay).collect();
        let flooding = poll(FOLLOWS_WITHIN, Duration::from_millis(50), || {
            let f = fdb(i);
            others.iter().all(|u| f.contains(&format!("00:00:00:00:00:00 dst {u}"))).then_some(())
        });
        assert!(flooding.is_some(), "host {i} does not flood to the others: {}\n{}", fdb(i), d.log());
    }
    for (i, (ns, _)) in vms.iter().enumerate() {
        let lease = udhcpc(ns, "eth0", None).unwrap_or_else(|e| panic!("VM {i}: {e}"));
        assert_eq!(lease.ip.to_string(), ip(i), "VM {i} did not get its port's address");
        assert_eq!(lease.routers, ["10.84.0.1".parse::<std::net::Ipv4Addr>().unwrap()]);
        assert_eq!(lease.vars.get("mtu").map(String::as_str), Some("1450"), "VM {i} was not told the tunnel's MTU");
    }
    for (i, (ns, _)) in vms.iter().enumerate() {
        for j in (0..3).filter(|j| *j != i) {
            let p = ping(ns, &ip(j), 2, 10);
            assert!(p.all_replied(), "VM {i} cannot reach VM {j} across hosts: {}", p.output);
        }
    }
    let seen = underlay_cap.stop();
    assert!(seen.contains("VXLAN"), "no VXLAN on the underlay: {seen}");
    // No DHCP and nothing of the gateway; and no ARP at all: each host's
    // VXLAN device answers for the other hosts' ports (ARP suppression).
    for never in ["BOOTP", "ARP,"] {
        assert!(!seen.contains(never), "{never:?} crossed the underlay:\n{seen}");
    }
    for (i, h) in hosts.iter().enumerate() {
        let link = h.ip_json(&["-d", "link", "show", "dev", &vxlan]);
        assert_eq!(link[0]["linkinfo"]["info_data"]["proxy"], true, "host {i}: {link}");
        let neigh = h.ip_ok(&["neigh", "show", "dev", &vxlan, "nud", "permanent"]);
        for j in (0..3).filter(|j| *j != i) {
            let entry = format!("{} lladdr {} PERMANENT", ip(j), mac(j));
            assert!(neigh.contains(&entry), "host {i} has no neighbour entry for VM {j}: {neigh}");
        }
    }

    // Each VM leaves through its own host's NAT.
    let outside_cap = Capture::start(&store, "outside", "any", &format!("icmp and dst host {OUTSIDE}"));
    for (i, (ns, _)) in vms.iter().enumerate() {
        assert!(ping(ns, OUTSIDE, 2, 10).all_replied(), "VM {i} cannot reach the outside");
        let neigh = ns.ip_ok(&["neigh", "show", "10.84.0.1"]);
        assert!(neigh.contains(&gateway_mac), "VM {i}'s gateway is not the anycast MAC: {neigh}");
    }
    let seen = outside_cap.stop();
    for i in 0..3 {
        assert!(
            seen.contains(&format!("{} > {OUTSIDE}", underlay(i))),
            "VM {i} did not leave through host {i}: {seen}"
        );
    }
    assert!(!seen.contains("10.84.0."), "a VM's own address reached the outside: {seen}");

    // A dies (SIGKILL) and loses its underlay: B's and C's VMs go on.
    let b_to_c = PingJob::start(&vms[1].0, &ip(2), &["-i", "0.2", "-c", "100", "-W", "1"]);
    let c_out = PingJob::start(&vms[2].0, OUTSIDE, &["-i", "0.2", "-c", "100", "-W", "1"]);
    assert!(signal(daemons[0].pid(), "KILL"), "cannot kill daemon A");
    assert!(daemons[0].exited(Duration::from_secs(10)).is_some(), "daemon A survived SIGKILL");
    hosts[0].ip_ok(&["link", "set", "u0", "down"]);
    let gone = poll(NODE_GONE_WITHIN, Duration::from_millis(200), || {
        (1..3).all(|i| !fdb(i).contains(&format!("dst {}", underlay(0)))).then_some(())
    });
    assert!(gone.is_some(), "B or C kept entries towards dead A: {}\n{}", fdb(1), fdb(2));
    for (what, job) in [("VM B to VM C", b_to_c), ("VM C to the outside", c_out)] {
        let p = job.wait(Duration::from_secs(40));
        assert!(p.all_replied(), "{what} lost packets while A died: {}", p.output);
    }
    // A back: B and C take it back, its VM reaches theirs again.
    hosts[0].ip_ok(&["link", "set", "u0", "up"]);
    default_route(0);
    daemons[0].start_again();
    let back = poll(Duration::from_secs(15), Duration::from_millis(100), || {
        (1..3).all(|i| fdb(i).contains(&format!("{} dst {}", mac(0), underlay(0)))).then_some(())
    });
    assert!(back.is_some(), "B or C did not take A back: {}\n{}", fdb(1), fdb(2));
    for j in 1..3 {
        assert!(ping(&vms[0].0, &ip(j), 2, 10).all_replied(), "VM A cannot reach VM {j} after A's return");
    }

    // etcd gone: leases and connectivity stay; a change is refused.
    etcd.kill();
    let again = udhcpc(&vms[1].0, "eth0", None).expect("VM B gets no lease while etcd is down");
    assert_eq!(again.ip.to_string(), ip(1));
    assert!(ping(&vms[1].0, &ip(2), 2, 10).all_replied(), "VM B cannot reach VM C while etcd is down");
    assert!(ping(&vms[0].0, &ip(1), 2, 10).all_replied(), "VM A cannot reach VM B while etcd is down");
    let late = Netns::new("vm3");
    let late_args = [
        "port",
        "create",
        "--net",
        "span",
        "--vm",
        "vm3",
        "--type",
        "veth",
        "--netns",
        late.name(),
        "--ifname",
        "eth0",
        "-o",
        "json",
    ];
    let o = daemons[2].cli(&late_args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.trim_end().lines().count() == 1 && err.contains("unreachable"), "{err}");
    assert!(late.link("eth0").is_none(), "the refused port left its veth");
    // etcd back: the next create works and every host follows it.
    etcd.start_again(&store);
    let created = poll(Duration::from_secs(20), Duration::from_millis(500), || {
        let o = daemons[2].cli(&late_args);
        o.status.success().then(|| serde_json::from_slice::<Value>(&o.stdout).expect("port JSON"))
    });
    let Some(p) = created else { panic!("no port create after etcd came back: {}", daemons[2].log()) };
    let late_mac = p["mac"].as_str().unwrap().to_string();
    let followed = poll(Duration::from_secs(20), Duration::from_millis(100), || {
        (0..2).all(|i| fdb(i).contains(&format!("{late_mac} dst {}", underlay(2)))).then_some(())
    });
    assert!(followed.is_some(), "A or B did not follow C's new port: {}\n{}", fdb(0), fdb(1));
    drop(daemons);
}

/// Clients that are no port (a hand-made interface on the bridge) get
/// dynamic leases from their own host's DHCP block: two hosts never
/// lease one address (without blocks both would lease the first free
/// address of the range), and a host's second client comes from its
/// block too.
#[test]
fn dynamic_clients_on_two_hosts_lease_from_their_hosts_blocks() {
    if !privileged("dynamic_clients_on_two_hosts_lease_from_their_hosts_blocks", &["ip", "etcd", "busybox", "udhcpc"]) {
        return;
    }
    let store = Netns::new("stor");
    let (ha, hb) = (joined(&store, 1), joined(&store, 2));
    let etcd = Etcd::start_in(&store, &["10.213.1.1", "10.213.2.1"]);
    let a = Daemon::start_with(&ha, &["--etcd", &etcd.urls[0], "--node", &unique("nda")]);
    let _b = Daemon::start_with(&hb, &["--etcd", &etcd.urls[1], "--node", &unique("ndb")]);
    let net = a.cli_json(&["net", "create", "dyn", "--mode", "isolated", "--subnet", "10.86.0.0/24"]);
    let bridge = net["bridge"].as_str().unwrap().to_string();
    let first: std::net::Ipv4Addr = net["dhcp_range"]["first"].as_str().expect("a DHCP range").parse().unwrap();
    assert!(poll(FOLLOWS_WITHIN, Duration::from_millis(50), || hb.link(&bridge)).is_some());
    let by_hand = |h: &Netns, role: &str, host_if: &str| plug_by_hand(h, &bridge, role, host_if);
    let block = |ip: std::net::Ipv4Addr| (u32::from(ip) - u32::from(first)) / 16;
    let lease = |ns: &Netns| udhcpc(ns, "eth0", None).unwrap_or_else(|e| panic!("no dynamic lease: {e}")).ip;
    let (ca, cb, ca2) = (by_hand(&ha, "cla", "hca"), by_hand(&hb, "clb", "hcb"), by_hand(&ha, "cla2", "hca2"));
    let (ip_a, ip_b, ip_a2) = (lease(&ca), lease(&cb), lease(&ca2));
    assert_ne!(ip_a, ip_b, "two hosts leased one address");
    assert_ne!(block(ip_a), block(ip_b), "{ip_a} and {ip_b} are in one block");
    assert_eq!(block(ip_a2), block(ip_a), "A's second client is not in A's block: {ip_a2} ({ip_a})");
    assert!(u32::from(ip_a) >= u32::from(first) && u32::from(ip_b) >= u32::from(first));
}

/// The concurrency case through real daemons: three hosts each
/// create 200 ports on one network at once, each through its own daemon:
/// 600 ports, every IP and MAC once, no failure.
#[test]
fn three_hosts_creating_200_ports_each_at_once() {
    if !privileged("three_hosts_creating_200_ports_each_at_once", &["ip", "etcd", "busybox"]) {
        return;
    }
    let store = Netns::new("stor");
    let hosts: Vec<Netns> = (1..=3).map(|n| joined(&store, n)).collect();
    let etcd = Etcd::start_in(&store, &["10.213.1.1", "10.213.2.1", "10.213.3.1"]);
    let daemons: Vec<Daemon> = (0..3)
        .map(|i| Daemon::start_with(&hosts[i], &["--etcd", &etcd.urls[i], "--node", &unique(&format!("nd{i}"))]))
        .collect();
    daemons[0].cli_ok(&["net", "create", "many", "--mode", "isolated", "--subnet", "10.88.0.0/22"]);
    for d in &daemons {
        let follows = poll(FOLLOWS_WITHIN, Duration::from_millis(50), || {
            (net_names(&d.cli_json(&["net", "list"])) == ["many"]).then_some(())
        });
        assert!(follows.is_some(), "a host did not follow the network: {}", d.log());
    }
    const PER_HOST: usize = 200;
    let outcomes = create_at_once(&daemons.iter().collect::<Vec<_>>(), "many", PER_HOST);
    let failed: Vec<String> = outcomes.iter().filter(|o| !o.status.success()).map(stderr).collect();
    assert!(failed.is_empty(), "{} creates failed, e.g. {:?}", failed.len(), failed.first());
    let listed = poll(Duration::from_secs(10), Duration::from_millis(200), || {
        let v = daemons[2].cli_json(&["port", "list"]);
        (v.as_array().map(Vec::len) == Some(3 * PER_HOST)).then_some(v)
    });
    let Some(listed) = listed else { panic!("host C does not list the 600 ports: {}", daemons[2].log()) };
    let ports = listed.as_array().unwrap();
    let ips: std::collections::BTreeSet<&str> = ports.iter().filter_map(|p| p["ip"].as_str()).collect();
    let macs: std::collections::BTreeSet<&str> = ports.iter().filter_map(|p| p["mac"].as_str()).collect();
    assert_eq!((ips.len(), macs.len()), (3 * PER_HOST, 3 * PER_HOST), "an IP or MAC was handed out twice");
}
