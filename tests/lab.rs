//! The QEMU lab in lab-host mode: boots Debian's cloud kernel under TCG
//! (this machine's kernel lacks 802.1Q and bridge VLAN filtering) with the
//! lanyard binary inside and runs a script there (`lab/host-run`):
//!
//! - `lab_host_smoke` (`lab/smoke.sh`): the kernel has what lanyard needs:
//!   veth, an 802.1Q device, a vlan_filtering bridge with a VLAN on a port
//!   and a tagged ping across it, nftables nat/masquerade/ct/reject, vxlan;
//!   and `lanyard --version` runs.
//! - `lanyard_nat_network_in_the_lab_host` (`lab/lanyard-nat.sh`): lanyard
//!   itself on that kernel, end to end: `lanyard daemon`, `net create` of a
//!   NAT network, a veth port into a namespace, a DHCP lease for it with
//!   busybox udhcpc, DNS for the VM's name, pings to the gateway and
//!   (masqueraded) to an outside namespace, `port delete`, a clean exit on
//!   SIGTERM. The script prints what lanyard answered; this test checks it
//!   (the leased address is the one `port create -o json` gave the port, ...).
//!
//! The two VMs boot in parallel. Needs root and a lab (`lab/setup`, which
//! this test runs: it installs qemu & co and caches the kernel and images);
//! otherwise skips, or fails with LANYARD_REQUIRE_PRIVILEGED=1. Nothing
//! touches the host's network: the VMs have no network device at all.

mod common;
mod lab_support;

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{field, in_subnet, is_mac, run, stderr, stdout, LANYARD};
use lab_support::{lab_dir, parse_lease, ready};
use serde_json::Value;

/// `lab/host-run SCRIPT` (bounded to 300 s inside, 360 s outside); the
/// console (stdout) after asserting the VM printed `LAB-RESULT: PASS`.
fn host_run(script: &str) -> String {
    host_run_with(script, &[])
}

/// [`host_run`] with environment variables passed into the lab VM.
fn host_run_with(script: &str, env: &[(&str, &str)]) -> String {
    let started = Instant::now();
    let mut cmd = Command::new(lab_dir().join("host-run"));
    cmd.arg(lab_dir().join(script)).env("LANYARD_BIN", LANYARD).env("LAB_TIMEOUT", "300");
    let names: Vec<&str> = env.iter().map(|(k, _)| *k).collect();
    cmd.envs(env.iter().copied()).env("LAB_PASS_ENV", names.join(" "));
    let o = run(&mut cmd, Duration::from_secs(360));
    let (out, err) = (stdout(&o), stderr(&o));
    eprintln!(
        "lab/host-run lab/{script}: {} in {:.1} s\n{}",
        o.status,
        started.elapsed().as_secs_f64(),
        err.trim_end()
    );
    let result = out.lines().map(|l| l.trim_end_matches('\r')).rfind(|l| l.starts_with("LAB-RESULT: "));
    assert!(
        o.status.success() && result == Some("LAB-RESULT: PASS"),
        "lab/{script} did not pass (exit {}, result {result:?}); console:\n{out}\n--- host-run ---\n{err}",
        o.status
    );
    out
}

/// The `LAB: ` lines of a console, without the prefix and the serial port's
/// carriage returns.
fn lab_lines(console: &str) -> Vec<String> {
    console.lines().filter_map(|l| l.trim_end_matches('\r').strip_prefix("LAB: ").map(String::from)).collect()
}

#[test]
fn lab_host_smoke() {
    if !ready("lab_host_smoke", &[]) {
        return;
    }
    let out = host_run("smoke.sh");
    for step in [
        "vlan_filtering bridge ok",
        "tagged ping through vlan_filtering bridge ok",
        "nftables ok",
        "vxlan ok",
        "lanyard runs",
    ] {
        assert!(out.contains(step), "smoke step `{step}` missing from the console:\n{out}");
    }
}

#[test]
fn lanyard_nat_network_in_the_lab_host() {
    if !ready("lanyard_nat_network_in_the_lab_host", &[]) {
        return;
    }
    let console = host_run("lanyard-nat.sh");
    let lines = lab_lines(&console);
    let line = |prefix: &str| -> &str {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no `LAB: {prefix}...` on the console:\n{console}"))
    };
    let json = |what: &str| -> Value {
        let text = line(&format!("{what}-json "));
        serde_json::from_str(text).unwrap_or_else(|e| panic!("`LAB: {what}-json` is not JSON ({e}): {text}"))
    };

    // net create: what was asked for.
    let net = json("net");
    let subnet = "192.168.122.0/24";
    assert_eq!(
        (net["name"].as_str(), net["mode"].as_str(), net["subnet"].as_str(), net["state"].as_str()),
        (Some("default"), Some("nat"), Some(subnet), Some("active")),
        "net create: {net}"
    );
    let gateway = field(&net, "gateway").to_string();
    assert_eq!(gateway, "192.168.122.1", "net create: the gateway is the subnet's first address: {net}");

    // port create: a veth into vm1, with an address of the subnet.
    let port = json("port");
    assert_eq!(
        (port["net"].as_str(), port["vm"].as_str(), port["type"].as_str(), port["netns"].as_str()),
        (Some("default"), Some("vm1"), Some("veth"), Some("vm1")),
        "port create: {port}"
    );
    let (id, mac, ip) = (field(&port, "id"), field(&port, "mac"), field(&port, "ip"));
    let ip_v: Ipv4Addr = ip.parse().unwrap_or_else(|_| panic!("port create: ip {ip:?} is not IPv4: {port}"));
    assert!(in_subnet(ip_v, subnet) && ip != gateway, "port create: ip {ip} is no guest address of {subnet}");
    assert!(is_mac(mac), "port create: mac {mac:?}");
    assert_eq!(line("vm1 eth0 mac "), mac, "vm1's eth0 does not carry the port's MAC");

    // DHCP: busybox udhcpc in vm1 leased exactly the port's address.
    let leases: Vec<_> = lines.iter().filter_map(|l| parse_lease(l)).collect();
    assert_eq!(leases.len(), 1, "expected one udhcpc lease in vm1:\n{console}");
    let lease = &leases[0];
    assert_eq!(lease.ip, ip, "vm1 leased {} but `port create` gave the port {ip}:\n{console}", lease.ip);
    assert_eq!(
        (lease.prefix.as_str(), lease.router.as_str(), lease.server.as_str()),
        ("24", gateway.as_str(), gateway.as_str()),
        "lease prefix, router, server identifier: {lease:?}"
    );
    assert!(lease.dns.split(',').any(|d| d == gateway), "the lease names no DNS server on the gateway: {lease:?}");
    let listed = json("leases");
    let listed = listed.as_array().unwrap_or_else(|| panic!("lease list is not an array: {listed}"));
    assert_eq!(listed.len(), 1, "lease list after vm1's DHCP: {listed:?}");
    assert_eq!(
        (listed[0]["mac"].as_str(), listed[0]["ip"].as_str(), listed[0]["kind"].as_str()),
        (Some(mac), Some(ip), Some("static")),
        "lease list entry: {}",
        listed[0]
    );

    // DNS, the gateway, the outside through NAT.
    assert_eq!(line("dns vm1.default "), ip, "lanyard's DNS resolved vm1.default to another address");
    for ping in ["ping gateway ok", "ping outside ok"] {
        assert!(lines.iter().any(|l| l == ping), "`{ping}` missing from the console:\n{console}");
    }

    // port delete: the port and its lease are gone.
    let ports = json("ports-after-delete");
    assert!(!ports.as_array().into_iter().flatten().any(|p| p["id"] == id), "port {id} listed after delete: {ports}");
    let left = json("leases-after-delete");
    assert!(
        !left.as_array().into_iter().flatten().any(|l| l["ip"] == ip || l["mac"] == mac),
        "lease of {mac}/{ip} listed after the port was deleted: {left}"
    );

    assert_eq!(line("daemon exit "), "0", "lanyard daemon's exit status on SIGTERM");
}

/// lanyard's VLAN networks on a kernel that has 802.1Q (`lab/lanyard-vlan.sh`),
/// with the `subif` backend: see [`vlans_in_the_lab`].
#[test]
fn lanyard_vlans_in_the_lab_host() {
    if !ready("lanyard_vlans_in_the_lab_host", &[]) {
        return;
    }
    vlans_in_the_lab("subif");
}

/// The same test body with the `filtering` backend: one VLAN-aware bridge
/// per uplink.
#[test]
fn lanyard_vlans_in_the_lab_host_filtering() {
    if !ready("lanyard_vlans_in_the_lab_host_filtering", &[]) {
        return;
    }
    vlans_in_the_lab("filtering");
}

/// The seed's experiment with L2 networks and static addresses, then with
/// lanyard's DHCP on a nat network: vm3 reaches vm1 on VLAN 10, vm2 on VLAN
/// 20 reaches neither and no frame of it arrives on VLAN 10, the trunk
/// carries both tags to its far end; a restart rebuilds nothing; a router
/// VM on a trunk port reaches VMs on both VLANs it carries and nothing of a
/// third; deleting the networks leaves the trunk as it was.
fn vlans_in_the_lab(backend: &str) {
    let out = host_run_with("lanyard-vlan.sh", &[("VLAN_BACKEND", backend)]);
    let lines = lab_lines(&out);
    for want in [
        &format!("backend {backend}")[..],
        "static vm3 reaches vm1",
        "static trunk carries tags 10 and 20",
        "static vm2 isolated: its ARP never reached VLAN 10",
        "dhcp vm1 192.168.100.10/24",
        "dhcp vm3 192.168.100.30/24",
        "dhcp vm3 reaches vm1",
        "dhcp vm2 isolated: its ARP never reached VLAN 10",
        "restart rebuilt nothing",
        "trunk router reaches vlan 10 and 20",
        "trunk router sees no vlan 30",
        "cleanup ok",
    ] {
        assert!(lines.iter().any(|l| l == want), "`{want}` missing from the lab's lines:\n{}", lines.join("\n"));
    }
    let net = lines.iter().find_map(|l| l.strip_prefix("net-json ")).expect("net create's answer");
    let net: Value = serde_json::from_str(net).expect("net create's answer is JSON");
    assert_eq!((net["vlan"].as_u64(), net["vlan_backend"].as_str()), (Some(10), Some(backend)), "{net}");
    let bridge = if backend == "subif" { "brvlan10" } else { "br-trunk0" };
    assert_eq!(net["bridge"], bridge, "{net}");
    let port = lines.iter().find_map(|l| l.strip_prefix("trunk-port-json ")).expect("the trunk port");
    let port: Value = serde_json::from_str(port).expect("port create's answer is JSON");
    assert_eq!(port["trunk"], serde_json::json!(["v10", "v20"]), "{port}");
    assert_eq!((port["untagged"].as_bool(), port["ip"].is_null()), (Some(false), true), "{port}");
    // `port list` and `lanyard bridges` show the VLANs.
    let json = |tag: &str| -> Value {
        let text = lines.iter().find_map(|l| l.strip_prefix(tag)).unwrap_or_else(|| panic!("no {tag} line"));
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{tag}: {e}"))
    };
    let ports = json("ports-json ");
    let port_of =
        |vm: &str| ports.as_array().into_iter().flatten().find(|p| p["vm"] == vm).cloned().unwrap_or_default();
    assert_eq!(port_of("router")["vlan"], "trunk 10,20", "{ports}");
    assert_eq!(port_of("vm1")["vlan"], "10", "{ports}");
    assert_eq!(port_of("vm4")["vlan"], "30", "{ports}");
    let bridges = json("bridges-json ");
    let named =
        |name: &str| bridges.as_array().into_iter().flatten().find(|b| b["name"] == name).cloned().unwrap_or_default();
    if backend == "subif" {
        let brvlan20 = named("brvlan20");
        assert_eq!(brvlan20["vlan"], 20, "{bridges}");
        assert!(brvlan20["interfaces"].to_string().contains("trunk0.20"), "{bridges}");
    } else {
        // One bridge, every interface with its VLAN table.
        let br = named("br-trunk0");
        assert_eq!(br["net"], "v10,v20,v30", "{bridges}");
        assert_eq!(br["vlans"]["trunk0"], "1 pvid untagged, 10, 20, 30", "{bridges}");
        assert_eq!(br["vlans"]["br-trunk0"], "1 pvid untagged, 10", "the bridge is in VLAN 10 for its gateway");
        let ifname = |vm: &str| port_of(vm)["ifname"].as_str().unwrap_or_default().to_string();
        assert_eq!(br["vlans"][ifname("vm1")], "10 pvid untagged", "{bridges}");
        assert_eq!(br["vlans"][ifname("router")], "10, 20", "{bridges}");
    }
}

/// One VLAN across two hosts (`lab/lanyard-vlan-hosts.sh`): two daemons in
/// two namespaces, their NICs on one switch. A VM on host B's L2 network
/// for VLAN 10 leases from host A's nat network on VLAN 10 and reaches a VM
/// there and host A's gateway; the wire carries tags 10 and 20; VLAN 20
/// stays apart. (This test found two bridges of same-named networks on two
/// hosts sharing one derived MAC: gateway MACs are random now.)
#[test]
fn one_vlan_across_two_hosts_in_the_lab() {
    if !ready("one_vlan_across_two_hosts_in_the_lab", &[]) {
        return;
    }
    vlan_across_hosts("subif");
}

/// The same across hosts with the `filtering` backend.
#[test]
fn one_vlan_across_two_hosts_in_the_lab_filtering() {
    if !ready("one_vlan_across_two_hosts_in_the_lab_filtering", &[]) {
        return;
    }
    vlan_across_hosts("filtering");
}

fn vlan_across_hosts(backend: &str) {
    let lines = lab_lines(&host_run_with("lanyard-vlan-hosts.sh", &[("VLAN_BACKEND", backend)]));
    for want in ["vlan 10 spans both hosts", "the wire carries tags 10 and 20", "vlan 20 stays apart"] {
        assert!(lines.iter().any(|l| l == want), "`{want}` missing from the lab's lines:\n{}", lines.join("\n"));
    }
    let leased = lines.iter().find_map(|l| l.strip_prefix("b1 on host B leased ")).expect("b1's lease");
    let ip: Ipv4Addr = leased.split_whitespace().next().and_then(|a| a.parse().ok()).expect("an address");
    assert!(in_subnet(ip, "192.168.10.0/24"), "b1 leased {ip}, outside VLAN 10's subnet");
}

/// nova's VLAN manager in the lab kernel (`lab/lanyard-projects.sh`): two
/// projects' first ports, naming no network, get each project its own VLAN
/// (100, 101), bridge and subnet; the trunk's far end reaches each project's
/// guest on its VLAN only (the tags on the wire); the projects cannot reach
/// each other; a restart keeps the allocations; a third project is refused
/// when the range is used up, and gets the VLAN a deleted project freed.
#[test]
fn vlan_manager_projects_in_the_lab() {
    if !ready("vlan_manager_projects_in_the_lab", &[]) {
        return;
    }
    let lines = lab_lines(&host_run("lanyard-projects.sh"));
    for want in ["tags 100 and 101 on the wire", "projects apart", "restart kept the allocations", "freed vlan reused"]
    {
        assert!(lines.iter().any(|l| l == want), "`{want}` missing from the lab's lines:\n{}", lines.join("\n"));
    }
    let nets = lines.iter().find_map(|l| l.strip_prefix("nets-json ")).expect("net list");
    let nets: Value = serde_json::from_str(nets).expect("net list is JSON");
    let of = |project: &str| {
        nets.as_array().into_iter().flatten().find(|n| n["project"] == project).cloned().unwrap_or_default()
    };
    assert_eq!((of("a")["vlan"].as_u64(), of("a")["subnet"].as_str()), (Some(100), Some("10.0.0.0/24")), "{nets}");
    assert_eq!((of("b")["vlan"].as_u64(), of("b")["subnet"].as_str()), (Some(101), Some("10.0.1.0/24")), "{nets}");
    assert_eq!(of("a")["manager"], "vlan", "{nets}");
}
