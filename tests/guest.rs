//! Real guests on lanyard networks: the lab guest VM (Debian cloud kernel +
//! busybox under QEMU/TCG, `lab/guest`) boots on a TAP port of a NAT network
//! in the host namespace of a test topology:
//!
//! ```text
//!   guest VMs ── tap ports ── lybr0 192.168.122.1/24 ── up0 203.0.113.1 ── eth0 203.0.113.2
//!   (qemu, virtio-net)         host ns (lanyard daemon, nat)                outside ns
//! ```
//!
//! `guests_on_tap_ports_of_a_nat_network` (one daemon, two guests booted in
//! parallel on `port create --type tap` ports):
//! - guest 1 leases exactly its port's IP from lanyard's DHCP server, with the
//!   gateway as router, and pings the gateway and (masqueraded) the outside;
//! - the host namespace pings guest 1;
//! - guest 2 leases its own port's IP and pings guest 1;
//! - after `port delete` of guest 1's port its TAP is gone, guest 1 loses the
//!   gateway, lanyard lists neither the port nor a lease for it, and the next
//!   `port create` gets the freed IP again (the lowest free address).
//!
//! `guest_attached_by_qemu_ifup`: QEMU creates the TAP itself and runs
//! `lanyard-ifup` / `lanyard-ifdown` (symlinks to the lanyard binary) as its
//! `script=` / `downscript=`; lanyard adopts the TAP as a port with the MAC
//! from QEMU's command line, the guest leases that port's IP, and the port is
//! gone once QEMU has exited.
//!
//! `guest_on_a_flat_network_takes_its_address_from_cloud_init`: on a
//! `--manager flat` network nothing answers DHCP; the guest boots with the
//! port's NoCloud seed ISO (`port config --iso`) as a disk, configures the
//! NIC from it alone (address, route, MTU, name) and reaches the gateway
//! and, through NAT, the outside.
//!
//! Needs root and the lab (see tests/lab.rs); otherwise skips.

mod common;
mod lab_support;

use std::net::Ipv4Addr;
use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};

use common::{field, ping, unique, Host, TempDir, Topology, LANYARD};
use lab_support::{parse_lease, ready, Guest};
use serde_json::Value;

const NET: &str = "default";
const SUBNET: &str = "192.168.122.0/24";
const OUTSIDE: &str = "203.0.113.2";
const TOOLS: &[&str] = &["ip", "nft", "kill", "ping"];

/// Boot to `LAB: done` (TCG, possibly several guests on two cores).
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// Checks a finished guest's console: NIC with `mac`, exactly one DHCP lease,
/// for `ip`, with `gateway` as router and server, and `LAB: ping T ok` for
/// every target in `pinged`.
fn assert_guest_leased(guest: &Guest, mac: &str, ip: &str, gateway: &str, pinged: &[&str]) {
    let console = guest.console();
    let lab = guest.lab_lines();
    assert!(
        lab.iter().any(|l| l == &format!("eth0 mac {mac}")),
        "guest NIC does not have the port's MAC {mac}:\n{console}"
    );
    let leases: Vec<_> =
        lab.iter().filter_map(|l| parse_lease(l)).filter(|l| l.ip.parse::<Ipv4Addr>().is_ok()).collect();
    assert_eq!(leases.len(), 1, "expected one DHCP lease in the guest:\n{console}");
    let lease = &leases[0];
    assert_eq!(lease.ip, ip, "guest leased {} but the port's ip is {ip}:\n{console}", lease.ip);
    assert_eq!(lease.prefix, "24", "lease prefix:\n{console}");
    assert_eq!(lease.router, gateway, "lease router:\n{console}");
    assert_eq!(lease.server, gateway, "lease server identifier:\n{console}");
    for target in pinged {
        assert!(lab.iter().any(|l| l == &format!("ping {target} ok")), "guest cannot ping {target}:\n{console}");
    }
}

/// `port list -o json` entries whose `key` is `value`.
fn ports_with(host: &Host, key: &str, value: &str) -> Vec<Value> {
    let ports = host.cli_json(&["port", "list"]);
    ports.as_array().into_iter().flatten().filter(|p| p[key].as_str() == Some(value)).cloned().collect()
}

/// `lease list NET -o json` entries for `mac` or `ip`.
fn leases_for(host: &Host, mac: &str, ip: &str) -> Vec<Value> {
    let leases = host.cli_json(&["lease", "list", NET]);
    leases
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["mac"].as_str() == Some(mac) || l["ip"].as_str() == Some(ip))
        .cloned()
        .collect()
}

fn link_exists(host: &Host, ifname: &str) -> bool {
    host.ns.ip(&["link", "show", "dev", ifname]).status.success()
}

#[test]
fn guests_on_tap_ports_of_a_nat_network() {
    if !ready("guests_on_tap_ports_of_a_nat_network", TOOLS) {
        return;
    }
    let started = Instant::now();
    let mut lab = Topology::start();
    lab.add_outside("out", "up0", "203.0.113.1/24", &format!("{OUTSIDE}/24"));
    let net = lab.create_net(NET, "nat", SUBNET);
    let gateway = lab.nets[net].gateway.to_string();
    let host = &lab.host;
    let p1 = host.cli_json(&["port", "create", "--net", NET, "--vm", "g1", "--type", "tap"]);
    let p2 = host.cli_json(&["port", "create", "--net", NET, "--vm", "g2", "--type", "tap"]);
    assert_eq!(p1["type"], "tap", "port create: type in {p1}");
    let (id1, tap1, mac1, ip1) = (field(&p1, "id"), field(&p1, "ifname"), field(&p1, "mac"), field(&p1, "ip"));
    let (tap2, mac2, ip2) = (field(&p2, "ifname"), field(&p2, "mac"), field(&p2, "ip"));

    // Both boot at once. Guest 1 stays up (lab.watch keeps pinging the
    // gateway) until the test kills it; guest 2 waits for guest 1 to answer,
    // then powers off.
    let mut g1 = Guest::boot(
        &host.ns,
        tap1,
        mac1,
        &[&format!("lab.ping={gateway},{OUTSIDE}"), &format!("lab.watch={gateway}"), "lab.lifetime=300"],
    );
    let mut g2 =
        Guest::boot(&host.ns, tap2, mac2, &[&format!("lab.ping={ip1}"), "lab.ping_wait=120", "lab.poweroff=1"]);

    // 1. Guest 1: its port's IP, the gateway, the outside through NAT.
    let done = g1.wait_for("done ", BOOT_TIMEOUT).unwrap_or_else(|e| panic!("guest 1: {e}"));
    eprintln!("guest 1 done after {:.1} s ({done})", g1.elapsed());
    assert_guest_leased(&g1, mac1, ip1, &gateway, &[&gateway, OUTSIDE]);
    let mine = leases_for(host, mac1, ip1);
    assert_eq!(mine.len(), 1, "lanyard lease list should have one lease for {mac1}/{ip1}: {mine:?}");
    assert_eq!((mine[0]["mac"].as_str(), mine[0]["ip"].as_str()), (Some(mac1), Some(ip1)), "lease list: {mine:?}");

    // 2. The host reaches the guest.
    let p = ping(&host.ns, ip1, 3, 10);
    assert!(p.success, "host namespace cannot ping guest 1 at {ip1}:\n{}", p.output);

    // 4. Guest 2 leases its own port's IP and reaches guest 1.
    let done = g2.wait_for("done ", BOOT_TIMEOUT).unwrap_or_else(|e| panic!("guest 2: {e}"));
    eprintln!("guest 2 done after {:.1} s ({done})", g2.elapsed());
    assert_guest_leased(&g2, mac2, ip2, &gateway, &[ip1]);
    assert!(g2.wait_exit(Duration::from_secs(30)), "guest 2 did not power off after lab.poweroff=1");

    // 3. port delete: the TAP goes, guest 1 loses the network, the IP is free.
    let watch = format!("watch {gateway} ");
    g1.wait_for(&watch, Duration::from_secs(30)).unwrap_or_else(|e| panic!("guest 1: {e}"));
    assert!(link_exists(host, tap1), "{tap1} missing before port delete");
    let mark = g1.lab_line_count();
    let last = g1.lab_lines().into_iter().take(mark).rfind(|l| l.starts_with(&watch)).unwrap_or_default();
    assert!(last.starts_with(&format!("{watch}up")), "guest 1 should reach the gateway before port delete: `{last}`");
    host.cli_ok(&["port", "delete", id1]);
    assert!(!link_exists(host, tap1), "TAP {tap1} still exists after `port delete {id1}`");
    assert!(ports_with(host, "id", id1).is_empty(), "port {id1} still listed after `port delete`");
    assert!(ports_with(host, "ifname", tap1).is_empty(), "a port on {tap1} still listed after `port delete`");
    let left = leases_for(host, mac1, ip1);
    assert!(left.is_empty(), "lease list still has {mac1}/{ip1} after `port delete {id1}`: {left:?}");
    let down = g1
        .wait_for_after(mark, &format!("{watch}down"), Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("guest 1 still reaches the gateway after `port delete {id1}`: {e}"));
    eprintln!("guest 1 after port delete: {down}");
    let p3 = host.cli_json(&["port", "create", "--net", NET, "--vm", "g3", "--type", "tap"]);
    assert_eq!(field(&p3, "ip"), ip1, "the next port should get the freed (lowest free) address {ip1}: {p3}");

    eprintln!("guests_on_tap_ports_of_a_nat_network: {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn guest_attached_by_qemu_ifup() {
    if !ready("guest_attached_by_qemu_ifup", TOOLS) {
        return;
    }
    let started = Instant::now();
    let mut lab = Topology::start();
    let net = lab.create_net(NET, "nat", SUBNET);
    let (gateway, bridge) = (lab.nets[net].gateway.to_string(), lab.nets[net].bridge.clone());
    let host = &lab.host;

    // QEMU's script=/downscript= take a path: the binary answers to its name.
    let scripts = TempDir::new("ifup");
    let (ifup, ifdown) = (scripts.path().join("lanyard-ifup"), scripts.path().join("lanyard-ifdown"));
    symlink(LANYARD, &ifup).expect("symlink lanyard-ifup");
    symlink(LANYARD, &ifdown).expect("symlink lanyard-ifdown");

    let tap = unique("qtap"); // QEMU creates it in the host namespace
    let mac = "52:54:00:4c:59:01";
    let mut guest = Guest::boot_with(&host.ns, &tap, mac, &[&format!("lab.ping={gateway}"), "lab.poweroff=1"], |c| {
        c.env("LAB_IFUP", &ifup)
            .env("LAB_IFDOWN", &ifdown)
            .env("LANYARD_SOCKET", host.daemon.socket())
            .env("LANYARD_NET", NET)
            // The MAC must come from QEMU's command line, the VM name
            // defaults to the TAP's.
            .env_remove("LANYARD_MAC")
            .env_remove("LANYARD_VM");
    });

    // QEMU ran lanyard-ifup before starting the machine: the port exists
    // once the guest kernel runs.
    guest.wait_for("init ", BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let ports = ports_with(host, "ifname", &tap);
    assert_eq!(ports.len(), 1, "expected one port on QEMU's TAP {tap}: {ports:?}\n{}", guest.console());
    let port = &ports[0];
    assert_eq!(port["mac"], mac, "adopted port's MAC (from QEMU's -device ...,mac=): {port}");
    assert_eq!(port["adopted"], true, "port on QEMU's TAP: {port}");
    assert_eq!((port["type"].as_str(), port["net"].as_str()), (Some("tap"), Some(NET)), "port: {port}");
    assert_eq!(port["vm"], tap.as_str(), "VM name defaults to the TAP's name (QEMU has no -name): {port}");
    let (id, ip) = (field(port, "id").to_string(), field(port, "ip").to_string());
    let link = host.ns.link(&tap).unwrap_or_else(|| panic!("QEMU's TAP {tap} not in the host namespace"));
    assert_eq!(link["master"], bridge.as_str(), "TAP {tap} should be a port of {bridge}: {link}");

    let done = guest.wait_for("done ", BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("guest done after {:.1} s ({done})", guest.elapsed());
    assert_guest_leased(&guest, mac, &ip, &gateway, &[&gateway]);

    // lanyard-ifdown ran before QEMU exited: the port and its lease are gone.
    assert!(guest.wait_exit(Duration::from_secs(30)), "guest did not power off after lab.poweroff=1");
    let said: Vec<String> = guest.console().lines().filter(|l| l.starts_with("lanyard: ")).map(String::from).collect();
    eprintln!("lanyard-ifup/-ifdown said:\n{}", said.join("\n"));
    let left = ports_with(host, "id", &id);
    assert!(
        left.is_empty(),
        "port {id} still listed after QEMU exited (lanyard-ifdown): {left:?}\n{}",
        guest.console()
    );
    assert!(!link_exists(host, &tap), "QEMU's TAP {tap} still exists after QEMU exited");
    let left = leases_for(host, mac, &ip);
    assert!(left.is_empty(), "lease list still has {mac}/{ip} after lanyard-ifdown: {left:?}");

    eprintln!("guest_attached_by_qemu_ifup: {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn guest_on_a_flat_network_takes_its_address_from_cloud_init() {
    if !ready("guest_on_a_flat_network_takes_its_address_from_cloud_init", TOOLS) {
        return;
    }
    let mut lab = Topology::start();
    lab.add_outside("out", "up0", "203.0.113.1/24", &format!("{OUTSIDE}/24"));
    let host = &lab.host;
    let net =
        host.cli_json(&["net", "create", "flat", "--manager", "flat", "--subnet", "10.100.0.0/24", "--mtu", "1400"]);
    assert_eq!((net["manager"].as_str(), net["mode"].as_str()), (Some("flat"), Some("nat")), "{net}");
    let gateway = field(&net, "gateway").to_string();
    let port = host.cli_json(&["port", "create", "--net", "flat", "--vm", "flat1", "--type", "tap"]);
    let (id, tap, mac, ip) = (field(&port, "id"), field(&port, "ifname"), field(&port, "mac"), field(&port, "ip"));
    let dir = TempDir::new("seed");
    let iso = dir.path().join("seed.iso");
    host.cli_ok(&["port", "config", id, "--format", "cloud-init", "--iso", iso.to_str().expect("utf-8 path")]);

    // DHCP is tried first (two DISCOVERs): on a flat network nothing answers.
    let mut guest = Guest::boot_with(
        &host.ns,
        tap,
        mac,
        &[
            "lab.dhcp_tries=2",
            "lab.seed=1",
            &format!("lab.ping={gateway},{OUTSIDE}"),
            "lab.ping_wait=30",
            "lab.poweroff=1",
        ],
        |cmd| {
            cmd.env("LAB_SEED", &iso);
        },
    );
    let done = guest.wait_for("done ", BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("flat guest done after {:.1} s ({done})", guest.elapsed());
    let (console, lines) = (guest.console(), guest.lab_lines());
    assert!(lines.iter().any(|l| l == "lease fail iface eth0"), "a flat network answered DHCP:\n{console}");
    let want = format!("seed ip {ip}/24 router {gateway} host flat1");
    assert!(lines.iter().any(|l| l == &want), "`{want}` missing: the seed did not configure the guest:\n{console}");
    for target in [gateway.as_str(), OUTSIDE] {
        assert!(lines.iter().any(|l| l == &format!("ping {target} ok")), "guest cannot ping {target}:\n{console}");
    }
    assert!(guest.wait_exit(Duration::from_secs(30)), "guest did not power off");
}
