//! Reliability of a running network under ordinary operations that used to
//! hurt bystanders, in throw-away namespaces.
//!
//! ```text
//!   vm1 ─┐
//!        ├─ veth ports ── lybrN 192.168.122.1/24 (lanyard)
//!   vm2 ─┘
//! ```

mod common;

use std::time::Duration;

use common::*;

const NET: &str = "default";
const SUBNET: &str = "192.168.122.0/24";
const GATEWAY: &str = "192.168.122.1";

/// Deleting the port whose MAC is the lowest on the bridge must not move
/// the gateway's MAC: without a pinned MAC the kernel re-derives the
/// bridge's address from its ports, and every other guest loses its
/// gateway until its ARP entry expires (30-46 s seen).
#[test]
fn deleting_a_port_never_moves_the_gateway_mac() {
    if !privileged("deleting_a_port_never_moves_the_gateway_mac", NAT_TOOLS) {
        return;
    }
    let host = Host::start();
    let net = host.cli_json(&["net", "create", NET, "--mode", "nat", "--subnet", SUBNET]);
    let bridge = field(&net, "bridge").to_string();
    let pinned = field(&net, "gateway_mac").to_string();
    assert!(is_mac(&pinned), "net create must report the gateway MAC: {net}");
    let vms: Vec<Vm> = (1..=3).map(|i| host.attach_vm(NET, &format!("vm{i}"), &[])).collect();
    for vm in &vms {
        vm.configure_static(24, GATEWAY);
    }
    assert_eq!(host.ns.mac(&bridge), pinned, "the bridge does not carry the network's gateway MAC");

    // The port the kernel would take the bridge's MAC from: the lowest.
    let lowest = vms.iter().min_by_key(|vm| host.ns.mac(&vm.host_ifname())).expect("three VMs");
    let watcher = vms.iter().find(|vm| vm.name != lowest.name).expect("another VM");
    assert!(ping(&watcher.ns, GATEWAY, 2, 5).all_replied(), "no path to the gateway before the delete");

    let job = PingJob::start(&watcher.ns, GATEWAY, &["-i", "0.05", "-c", "60", "-W", "1"]);
    std::thread::sleep(Duration::from_millis(500));
    host.cli_ok(&["port", "delete", &lowest.id()]);
    let p = job.wait(Duration::from_secs(30));
    assert_eq!(host.ns.mac(&bridge), pinned, "deleting a port moved the gateway MAC");
    assert!(
        p.all_replied(),
        "{} of {} pings to the gateway lost around the delete:\n{}",
        p.transmitted - p.received,
        p.transmitted,
        p.output
    );
}
