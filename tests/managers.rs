//! nova's flatdhcp manager on a real kernel, in throw-away namespaces: the
//! flat interface `flat0` (with an address of the host's, its far end a
//! node `lan` on the same L2) joins the network's bridge; the host's address
//! moves to the bridge and the host still reaches `lan`; a guest leases its
//! port's fixed IP from lanyard and reaches `lan` over the flat interface;
//! a deleted port's address is held while its guest's lease lives (nova's
//! disassociate timeout); deleting the network gives `flat0` back with only
//! its own address. Needs root; see `common::privileged`.

mod common;

use common::*;

#[test]
fn flatdhcp_on_a_flat_interface() {
    if !privileged("flatdhcp_on_a_flat_interface", &["ip", "nft", "ping", "udhcpc"]) {
        return;
    }
    let host = Host::start();
    let lan = host.add_outside_on("flat0", "192.0.2.5/24", "192.0.2.9/24");
    lan.ip_ok(&["addr", "add", "10.101.0.200/24", "dev", "eth0"]);
    let net = host.cli_json(&[
        "net",
        "create",
        "fd",
        "--manager",
        "flatdhcp",
        "--subnet",
        "10.101.0.0/24",
        "--uplink",
        "flat0",
    ]);
    assert_eq!((field(&net, "manager"), field(&net, "mode")), ("flatdhcp", "nat"), "{net}");
    let bridge = field(&net, "bridge").to_string();
    let flat0 = host.ns.link("flat0").expect("flat0");
    assert_eq!(flat0["master"].as_str(), Some(bridge.as_str()), "the flat interface joins the bridge: {flat0}");
    let on_bridge = host.ns.ipv4_addrs(&bridge);
    assert!(
        on_bridge.contains(&"192.0.2.5/24".to_string()) && on_bridge.contains(&"10.101.0.1/24".to_string()),
        "the host's address moved, the gateway's was added: {on_bridge:?}"
    );
    assert!(host.ns.ipv4_addrs("flat0").is_empty());
    assert!(ping(&host.ns, "192.0.2.9", 2, 5).all_replied(), "the host lost its LAN");

    let vm = host.attach_vm("fd", "vm1", &[]);
    let lease = udhcpc(&vm.ns, "eth0", None).unwrap_or_else(|e| panic!("no lease on the flatdhcp network: {e}"));
    assert_eq!(lease.ip, vm.ip(), "DHCP hands the port its fixed IP");
    assert!(ping(&vm.ns, "10.101.0.200", 2, 5).all_replied(), "the guest does not reach the LAN over flat0");

    // The port goes; its address waits for the guest's lease to end.
    let ip = vm.ip().to_string();
    host.cli_ok(&["port", "delete", &vm.id()]);
    let spare = Netns::new("spare");
    let again = host.cli(&[
        "port",
        "create",
        "--net",
        "fd",
        "--vm",
        "vm2",
        "--type",
        "veth",
        "--netns",
        spare.name(),
        "--ifname",
        "eth0",
        "--ip",
        &ip,
    ]);
    let err = String::from_utf8_lossy(&again.stderr).to_string();
    assert_eq!(again.status.code(), Some(4), "{ip} was handed out again at once: {err}");
    assert!(err.contains("until unix time"), "{err}");
    let leases = host.cli_json(&["lease", "list", "fd"]);
    assert!(leases.to_string().contains(&ip), "the held lease is listed: {leases}");

    host.cli_ok(&["net", "delete", "fd"]);
    let flat0 = host.ns.link("flat0").expect("flat0");
    assert!(flat0["master"].is_null(), "flat0 is still in a bridge: {flat0}");
    assert_eq!(host.ns.ipv4_addrs("flat0"), vec!["192.0.2.5/24".to_string()], "flat0 gets back its own address only");
    assert!(host.ns.link(&bridge).is_none(), "the bridge is left");
    assert!(ping(&host.ns, "192.0.2.9", 2, 5).all_replied(), "the host lost its LAN after the delete");
}
