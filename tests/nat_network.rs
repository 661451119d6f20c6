//! The NAT network end to end, in throw-away namespaces:
//!
//! ```text
//!   vm1 ─┐                       host (lanyard daemon)                 outside
//!   vm2 ─┼─ veth ports ── lybrN 192.168.122.1/24 ── up0 203.0.113.1 ── eth0 203.0.113.2
//!   vm3 ─┘                 (masquerade)                                (no route back)
//!   dyn ── hand-made veth into the bridge (a client lanyard has no port for)
//! ```
//!
//! Each test builds the whole topology from scratch, so tests are independent
//! and may run in parallel. Needs root; see `common::privileged`.

mod common;

use std::net::Ipv4Addr;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const NET: &str = "default";
const SUBNET: &str = "192.168.122.0/24";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 122, 1);
const UPLINK_HOST: &str = "203.0.113.1/24";
const UPLINK_OUTSIDE: &str = "203.0.113.2/24";
const OUTSIDE: &str = "203.0.113.2";

/// Builds host + outside + `default` NAT network + vm1..vm3, checking each
/// answer against the CLI contract on the way. None if the test must skip.
fn lab(test: &str) -> Option<Topology> {
    if !privileged(test, NAT_TOOLS) {
        return None;
    }
    let mut lab = Topology::start();
    lab.add_outside("out", "up0", UPLINK_HOST, UPLINK_OUTSIDE);
    let net = lab.create_net(NET, "nat", SUBNET);
    check_network(&lab.nets[net].json);
    for i in 1..=3 {
        let name = format!("vm{i}");
        lab.add_vm(&name, net, &[]);
        let vm = lab.vm(&name);
        check_port(vm);
        for other in lab.vms().filter(|o| o.name != vm.name) {
            assert_ne!(other.ip(), vm.ip(), "two ports got the same IP: {} and {}", other.port, vm.port);
            assert_ne!(other.mac(), vm.mac(), "two ports got the same MAC: {} and {}", other.port, vm.port);
            assert_ne!(other.id(), vm.id(), "two ports got the same id: {} and {}", other.port, vm.port);
            assert_ne!(other.host_ifname(), vm.host_ifname(), "two ports got the same ifname");
        }
    }
    Some(lab)
}

fn check_network(net: &Value) {
    assert_eq!(net["name"], NET, "net create: name in {net}");
    assert_eq!(net["mode"], "nat", "net create: mode in {net}");
    assert_eq!(net["subnet"], SUBNET, "net create: subnet in {net}");
    assert_eq!(net["gateway"], GATEWAY.to_string(), "net create: default gateway is the first host address: {net}");
    assert_eq!(net["state"], "active", "net create: state in {net}");
    assert!(net["autostart"].is_boolean(), "net create: autostart must be a boolean: {net}");
    assert!(net.get("mtu").is_some(), "net create: no mtu field: {net}");
    assert!(net.get("domain").is_some(), "net create: no domain field: {net}");
    let bridge = field(net, "bridge");
    assert!(
        bridge.len() > 4 && bridge.starts_with("lybr") && bridge[4..].chars().all(|c| c.is_ascii_digit()),
        "default bridge name should look like lybr0, got {bridge:?}"
    );
    let first: Ipv4Addr = field(&net["dhcp_range"], "first").parse().expect("dhcp_range.first is an IPv4 address");
    let last: Ipv4Addr = field(&net["dhcp_range"], "last").parse().expect("dhcp_range.last is an IPv4 address");
    assert!(in_subnet(first, SUBNET) && in_subnet(last, SUBNET) && first <= last, "bad default dhcp_range in {net}");
    assert!(!in_range(GATEWAY, first, last), "the default DHCP range contains the gateway: {net}");
}

fn check_port(vm: &Vm) {
    let p = &vm.port;
    assert!(!vm.id().is_empty(), "port create: empty id: {p}");
    assert_eq!(p["net"], NET, "port create: net in {p}");
    assert_eq!(p["vm"], vm.name.as_str(), "port create: vm in {p}");
    assert_eq!(p["type"], "veth", "port create: type in {p}");
    assert_eq!(p["netns"], vm.ns.name(), "port create: netns in {p}");
    assert_eq!(p["peer_ifname"], "eth0", "port create: peer_ifname in {p}");
    let ifname = vm.host_ifname();
    assert!(
        ifname.len() == 10 && ifname.starts_with("ly") && ifname[2..].chars().all(|c| c.is_ascii_hexdigit()),
        "port host-side ifname should be ly + 8 hex digits, got {ifname:?}"
    );
    let mac = vm.mac();
    assert!(is_mac(&mac) && mac == mac.to_lowercase(), "port create: malformed mac {mac:?}");
    assert!(mac.starts_with("52:54:00:"), "default MAC should be in 52:54:00, got {mac}");
    let ip = vm.ip();
    assert!(in_subnet(ip, SUBNET), "port IP {ip} is outside {SUBNET}");
    assert_ne!(ip, GATEWAY, "port got the gateway's address");
    assert!(
        ip != Ipv4Addr::new(192, 168, 122, 0) && ip != Ipv4Addr::new(192, 168, 122, 255),
        "port got the network/broadcast address {ip}"
    );
    // The guest side is in the VM's namespace, named eth0, with the port's MAC.
    let guest = vm.ns.link("eth0").unwrap_or_else(|| panic!("no eth0 in {} after port create", vm.ns.name()));
    assert_eq!(guest["address"], mac.as_str(), "guest eth0 MAC differs from the port's");
}

fn lease_for<'a>(leases: &'a [Value], mac: &str) -> &'a Value {
    let matching: Vec<&Value> =
        leases.iter().filter(|l| l["mac"].as_str().map(str::to_lowercase) == Some(mac.to_lowercase())).collect();
    assert_eq!(matching.len(), 1, "expected exactly one lease for {mac}, lease list: {leases:#?}");
    matching[0]
}

fn check_client_lease(who: &str, lease: &DhcpLease, vm: &Vm) {
    assert_eq!(lease.ip, vm.ip(), "{who}: leased address differs from the port's ip (vars: {:?})", lease.vars);
    assert_eq!(lease.prefix, 24, "{who}: subnet mask (vars: {:?})", lease.vars);
    assert_eq!(lease.routers, vec![GATEWAY], "{who}: router option (vars: {:?})", lease.vars);
    assert_eq!(lease.server_id, Some(GATEWAY), "{who}: server identifier (vars: {:?})", lease.vars);
    let addrs = vm.ns.ipv4_addrs("eth0");
    assert!(addrs.contains(&format!("{}/24", vm.ip())), "{who}: address not configured in the VM: {addrs:?}");
}

fn check_lease_entry(l: &Value, ip: Ipv4Addr, hostname: &str, kind: &str) {
    assert_eq!(l["ip"], ip.to_string(), "lease ip: {l}");
    assert_eq!(l["hostname"], hostname, "lease hostname: {l}");
    assert_eq!(l["kind"], kind, "lease kind: {l}");
    let expiry = l["expiry"].as_u64().unwrap_or_else(|| panic!("lease expiry is not unix seconds: {l}"));
    assert!(expiry > now(), "lease already expired: {l}");
    assert!(l.get("client_id").is_some(), "lease without client_id field: {l}");
}

fn expect_reach(from: &Netns, what: &str, target: &str) {
    let p = ping(from, target, 3, 6);
    assert!(p.success && p.received >= 3, "{what}: ping {target} failed:\n{}", p.output);
}

#[test]
fn dhcp_clients_lease_their_port_addresses() {
    let Some(lab) = lab("dhcp_clients_lease_their_port_addresses") else { return };
    let (vm1, vm2) = (lab.vm("vm1"), lab.vm("vm2"));

    let l1 = udhcpc(&vm1.ns, "eth0", Some("vm1")).unwrap_or_else(|e| panic!("udhcpc in vm1 got no lease: {e}"));
    check_client_lease("udhcpc in vm1", &l1, vm1);

    let l2 = dhclient(&vm2.ns, "eth0", Some("vm2")).unwrap_or_else(|e| panic!("dhclient in vm2 got no lease: {e}"));
    check_client_lease("dhclient in vm2", &l2, vm2);

    let leases = lab.leases(NET);
    check_lease_entry(lease_for(&leases, &vm1.mac()), vm1.ip(), "vm1", "static");
    check_lease_entry(lease_for(&leases, &vm2.mac()), vm2.ip(), "vm2", "static");
    // The leased address works: the VM reaches its gateway.
    expect_reach(&vm1.ns, "vm1 (udhcpc) -> gateway", &GATEWAY.to_string());
    expect_reach(&vm2.ns, "vm2 (dhclient) -> gateway", &GATEWAY.to_string());
}

#[test]
fn nat_reachability() {
    let Some(lab) = lab("nat_reachability") else { return };
    // Addresses by hand here, so this test is about forwarding and NAT only.
    for vm in lab.vms() {
        vm.configure_static(24, &GATEWAY.to_string());
    }
    let ips: Vec<String> = lab.vms().map(|v| v.ip().to_string()).collect();

    // Precondition of "works only thanks to masquerade".
    let r = lab.ns("out").ip(&["route", "get", &ips[0]]);
    assert!(!r.status.success(), "outside must have no route to {SUBNET}, but: {}", stdout(&r));

    expect_reach(&lab.vm("vm1").ns, "vm1 -> vm2", &ips[1]);
    expect_reach(&lab.vm("vm2").ns, "vm2 -> vm3", &ips[2]);
    expect_reach(&lab.vm("vm3").ns, "vm3 -> vm1", &ips[0]);
    for vm in lab.vms() {
        expect_reach(&vm.ns, &format!("{} -> gateway", vm.name), &GATEWAY.to_string());
        expect_reach(&vm.ns, &format!("{} -> outside (masquerade)", vm.name), OUTSIDE);
    }
    expect_reach(&lab.host.ns, "host -> vm1", &ips[0]);

    // Even with a route to the VM subnet, the outside cannot connect in.
    lab.ns("out").ip_ok(&["route", "add", SUBNET, "via", "203.0.113.1"]);
    let via = lab.ns("out").ip_ok(&["route", "get", &ips[0]]);
    assert!(via.contains("via 203.0.113.1"), "route in outside not in effect: {via}");
    for (vm, ip) in lab.vms().zip(&ips) {
        let p = ping(lab.ns("out"), ip, 3, 4);
        assert!(
            p.none_replied(),
            "outside -> {} ({ip}) must fail in a NAT network, but got replies:\n{}",
            vm.name,
            p.output
        );
    }
    // And the VMs still reach out after that (the route changed nothing for them).
    expect_reach(&lab.vm("vm1").ns, "vm1 -> outside after outside added its route", OUTSIDE);
}

#[test]
fn dynamic_client_gets_a_pool_address() {
    let Some(lab) = lab("dynamic_client_gets_a_pool_address") else { return };
    let shown = lab.host.cli_json(&["net", "show", NET]);
    let bridge = field(&shown, "bridge").to_string();
    assert_eq!(bridge, lab.nets[0].bridge, "net show and net create disagree on the bridge");
    let first: Ipv4Addr = field(&shown["dhcp_range"], "first").parse().expect("dhcp_range.first");
    let last: Ipv4Addr = field(&shown["dhcp_range"], "last").parse().expect("dhcp_range.last");

    let dynamic = lab.host.attach_by_hand(&bridge, "dyn", "dyn0");
    let lease = udhcpc(&dynamic, "eth0", Some("dyn4"))
        .unwrap_or_else(|e| panic!("udhcpc in the hand-attached namespace got no lease: {e}"));
    assert!(in_range(lease.ip, first, last), "dynamic lease {} outside the range {first}-{last}", lease.ip);
    for vm in lab.vms() {
        assert_ne!(lease.ip, vm.ip(), "dynamic client got {}'s port address", vm.name);
    }
    assert_ne!(lease.ip, GATEWAY, "dynamic client got the gateway address");
    assert_eq!(lease.prefix, 24, "dynamic lease mask: {:?}", lease.vars);
    assert_eq!(lease.routers, vec![GATEWAY], "dynamic lease router option: {:?}", lease.vars);
    expect_reach(&dynamic, "dynamic client -> gateway", &GATEWAY.to_string());

    let leases = lab.leases(NET);
    check_lease_entry(lease_for(&leases, &dynamic.mac("eth0")), lease.ip, "dyn4", "dynamic");
    assert_eq!(lab.ports().len(), 3, "a dynamic lease must not create a port");
}

#[test]
fn kernel_state_matches_the_network() {
    let Some(lab) = lab("kernel_state_matches_the_network") else { return };
    let root_forward_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
    let bridge = lab.nets[0].bridge.clone();

    let br = lab
        .host
        .ns
        .link(&bridge)
        .unwrap_or_else(|| panic!("bridge {bridge} missing in the host namespace: {:#?}", lab.host.ns.links()));
    assert_eq!(br["linkinfo"]["info_kind"], "bridge", "{bridge} is not a bridge: {br}");
    let flags = br["flags"].as_array().cloned().unwrap_or_default();
    assert!(flags.contains(&Value::from("UP")), "bridge {bridge} is not up: {br}");
    let addrs = lab.host.ns.ipv4_addrs(&bridge);
    assert_eq!(addrs, vec![format!("{GATEWAY}/24")], "bridge IPv4 addresses");

    for vm in lab.vms() {
        let ifname = vm.host_ifname();
        let l = lab
            .host
            .ns
            .link(&ifname)
            .unwrap_or_else(|| panic!("port link {ifname} ({}) missing in the host namespace", vm.name));
        assert_eq!(l["master"], bridge.as_str(), "port link {ifname} is not in {bridge}: {l}");
        assert_eq!(l["linkinfo"]["info_kind"], "veth", "port link {ifname} is not a veth: {l}");
        let flags = l["flags"].as_array().cloned().unwrap_or_default();
        assert!(flags.contains(&Value::from("UP")), "port link {ifname} is not up: {l}");
    }

    let o = lab.host.ns.exec("nft", &["list", "table", "inet", "lanyard"]);
    assert!(o.status.success(), "no `inet lanyard` table in the host namespace: {}", stderr(&o));
    let table = stdout(&o);
    // The subnet is an element of the masqueraded set, and a rule
    // masquerades what that set matches.
    let masq_set = table
        .split("set masq_nets {")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .unwrap_or_else(|| panic!("no set masq_nets in table inet lanyard:\n{table}"));
    assert!(masq_set.contains(SUBNET), "{SUBNET} is not in set masq_nets:\n{table}");
    assert!(
        table.lines().any(|l| l.contains("@masq_nets") && l.trim_end().ends_with("masquerade")),
        "no masquerade rule on @masq_nets in table inet lanyard:\n{table}"
    );
    let fwd = lab.host.ns.exec_ok("cat", &["/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(fwd.trim(), "1", "IPv4 forwarding is off in the host namespace");

    // Nothing leaked into the root namespace (read-only checks).
    let root_links = String::from_utf8_lossy(
        &std::process::Command::new(tool("ip")).args(["-o", "link", "show"]).output().expect("ip link").stdout,
    )
    .into_owned();
    for vm in lab.vms() {
        let ifname = vm.host_ifname();
        assert!(
            !root_links.contains(&format!(": {ifname}:")) && !root_links.contains(&format!(": {ifname}@")),
            "port link {ifname} appeared in the root namespace"
        );
    }
    let root_forward_after = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
    assert_eq!(root_forward_before, root_forward_after, "the root namespace's ip_forward changed");
}

#[test]
fn port_list_matches_created_ports() {
    let Some(lab) = lab("port_list_matches_created_ports") else { return };
    let keys = ["id", "net", "vm", "type", "ifname", "mac", "ip", "netns", "peer_ifname"];
    let project = |p: &Value| keys.iter().map(|k| (k.to_string(), p[*k].clone())).collect::<serde_json::Map<_, _>>();
    let mut listed: Vec<_> = lab.ports().iter().map(project).collect();
    let mut created: Vec<_> = lab.vms().map(|v| project(&v.port)).collect();
    let by_id = |a: &serde_json::Map<String, Value>, b: &serde_json::Map<String, Value>| {
        a["id"].to_string().cmp(&b["id"].to_string())
    };
    listed.sort_by(by_id);
    created.sort_by(by_id);
    assert_eq!(listed, created, "port list differs from what port create returned");

    let only_vm2 = lab.host.cli_json(&["port", "list", "--vm", "vm2"]);
    let only_vm2 = only_vm2.as_array().expect("array");
    assert_eq!(only_vm2.len(), 1, "port list --vm vm2: {only_vm2:?}");
    assert_eq!(only_vm2[0]["id"], lab.vm("vm2").id().as_str());
    assert_eq!(
        lab.host.cli_json(&["port", "list", "--net", NET]).as_array().map(Vec::len),
        Some(3),
        "port list --net default"
    );
    let nets = lab.host.cli_json(&["net", "list"]);
    assert_eq!(nets.as_array().map(Vec::len), Some(1), "net list: {nets}");
    assert_eq!(nets[0], lab.nets[0].json, "net list entry differs from net create output");
}

#[test]
fn restart_keeps_traffic_and_state() {
    let Some(mut lab) = lab("restart_keeps_traffic_and_state") else { return };
    let vm1_ip = lab.vm("vm1").ip();
    let l1 =
        udhcpc(&lab.vm("vm1").ns, "eth0", Some("vm1")).unwrap_or_else(|e| panic!("udhcpc in vm1 got no lease: {e}"));
    assert_eq!(l1.ip, vm1_ip, "udhcpc in vm1 before restart");
    lab.vm("vm2").configure_static(24, &GATEWAY.to_string());
    expect_reach(&lab.vm("vm1").ns, "vm1 -> outside before restart", OUTSIDE);

    let ports_before = lab.ports();
    let leases_before = lab.leases(NET);
    let net_before = lab.host.cli_json(&["net", "list"]);
    let pid_before = lab.host.daemon.pid();

    let mut job = PingJob::start(&lab.vm("vm1").ns, OUTSIDE, &["-i", "0.1", "-c", "60", "-W", "1"]);
    sleep(Duration::from_millis(1500));
    assert!(job.running(), "ping ended before the restart began");
    let t = Instant::now();
    lab.host.daemon.restart();
    let took = t.elapsed();
    assert_ne!(lab.host.daemon.pid(), pid_before, "daemon did not restart");
    assert!(job.running(), "the restart took {took:?}, longer than the ping ran; the test proves nothing");
    let p = job.wait(Duration::from_secs(30));
    assert!(
        p.transmitted == 60 && p.received == 60,
        "ping vm1 -> outside lost packets across the daemon restart ({:.1}% loss, restart took {took:?}):\n{}",
        p.loss_pct(),
        p.output
    );

    assert_eq!(lab.ports(), ports_before, "port list changed across the restart");
    assert_eq!(lab.leases(NET), leases_before, "lease list changed across the restart");
    assert_eq!(lab.host.cli_json(&["net", "list"]), net_before, "net list changed across the restart");

    let again = udhcpc(&lab.vm("vm1").ns, "eth0", Some("vm1"))
        .unwrap_or_else(|e| panic!("udhcpc in vm1 after the restart got no lease: {e}"));
    assert_eq!(again.ip, vm1_ip, "udhcpc in vm1 after restart got another address");
    expect_reach(&lab.vm("vm1").ns, "vm1 -> vm2 after restart", &lab.vm("vm2").ip().to_string());
    expect_reach(&lab.vm("vm1").ns, "vm1 -> outside after restart", OUTSIDE);
}

#[test]
fn port_delete_removes_link_and_frees_ip() {
    let Some(lab) = lab("port_delete_removes_link_and_frees_ip") else { return };
    let vm3 = lab.vm("vm3");
    let (id, ifname, ip) = (vm3.id(), vm3.host_ifname(), vm3.ip());
    let l3 = udhcpc(&vm3.ns, "eth0", Some("vm3")).unwrap_or_else(|e| panic!("udhcpc in vm3 got no lease: {e}"));
    assert_eq!(l3.ip, ip);

    lab.host.cli_ok(&["port", "delete", &id]);
    assert!(lab.host.ns.link(&ifname).is_none(), "host-side link {ifname} still exists after port delete");
    assert!(vm3.ns.link("eth0").is_none(), "guest eth0 still exists in vm3 after port delete");
    let ports = lab.ports();
    assert!(!ports.iter().any(|p| p["id"] == id.as_str()), "deleted port still listed: {ports:#?}");
    assert_eq!(ports.len(), 2, "port list after delete: {ports:#?}");
    let leases = lab.leases(NET);
    assert!(
        !leases.iter().any(|l| l["ip"] == ip.to_string().as_str()),
        "the deleted port's IP {ip} is still leased: {leases:#?}"
    );

    // The address is free again: a new port may take it.
    let ip_s = ip.to_string();
    let vm5 = lab.host.attach_vm(NET, "vm5", &["--ip", &ip_s]);
    assert_eq!(vm5.ip(), ip, "new port did not get the freed address");
    let l5 = udhcpc(&vm5.ns, "eth0", Some("vm5")).unwrap_or_else(|e| panic!("udhcpc in vm5 got no lease: {e}"));
    assert_eq!(l5.ip, ip, "vm5 leased another address than its port's");
    lab.vm("vm1").configure_static(24, &GATEWAY.to_string());
    expect_reach(&vm5.ns, "vm5 -> vm1", &lab.vm("vm1").ip().to_string());
    expect_reach(&vm5.ns, "vm5 -> outside", OUTSIDE);
}

#[test]
fn veth_port_into_a_namespace_with_a_long_name() {
    // Namespace names are file names under /run/netns, not interface names:
    // CNI and podman use names like "cni-1b2c3d4e-...." (40 bytes).
    if !privileged("veth_port_into_a_namespace_with_a_long_name", NAT_TOOLS) {
        return;
    }
    let mut lab = Topology::start();
    lab.create_net(NET, "nat", SUBNET);
    let ns = Netns::named(format!("{}-0123456789abcdef0123456789", unique("long")));
    assert!(ns.name().len() > 15);
    let port = lab.host.veth_port(NET, "vmlong", &ns, &[]);
    assert_eq!(port["netns"], ns.name(), "port create: netns in {port}");
    let guest = ns.link("eth0").unwrap_or_else(|| panic!("no eth0 in {} after port create", ns.name()));
    assert_eq!(guest["address"], port["mac"], "guest eth0 MAC differs from the port's");
}
