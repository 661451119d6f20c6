//! Static DHCP hosts (`lanyard net host ...`, libvirt's `<host>`): a
//! client that is not a lanyard port, plugged into the bridge by hand,
//! gets exactly its static address from lanyard's DHCP, its name resolves
//! on the gateway, and both survive a daemon restart. Needs root; see
//! `common::privileged`.

mod common;

use std::net::Ipv4Addr;

use common::*;

const NET: &str = "default";
const SUBNET: &str = "192.168.122.0/24";
const GATEWAY: &str = "192.168.122.1";
/// Outside the default dynamic range, so only the static entry can give it.
const STATIC_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 122, 7);

#[test]
fn a_static_host_gets_its_address_and_name() {
    if !privileged("a_static_host_gets_its_address_and_name", &["ip", "nft", "kill", "udhcpc", "dig"]) {
        return;
    }
    let mut lab = Topology::start();
    let net = lab.create_net(NET, "nat", SUBNET);
    let bridge = lab.nets[net].bridge.clone();
    let client = lab.host.attach_by_hand(&bridge, "stat", "stat0");
    let mac = client.mac("eth0");

    let added = lab.host.cli_json(&[
        "net",
        "host",
        "add",
        NET,
        "--mac",
        &mac,
        "--ip",
        &STATIC_IP.to_string(),
        "--name",
        "printer",
    ]);
    assert_eq!(added["mac"], mac.as_str(), "net host add -o json: {added}");
    assert_eq!(added["ip"], STATIC_IP.to_string(), "net host add -o json: {added}");
    let listed = lab.host.cli_json(&["net", "host", "list", NET]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "net host list: {listed}");
    let table = lab.host.cli_ok(&["net", "host", "list", NET]);
    assert!(table.contains(&mac) && table.contains("printer"), "net host list table:\n{table}");

    let lease = udhcpc(&client, "eth0", None).unwrap_or_else(|e| panic!("the static host got no lease: {e}"));
    assert_eq!(lease.ip, STATIC_IP, "the static host's lease: {:?}", lease.vars);
    let d = dig(&client, GATEWAY, "printer");
    assert_eq!(d.answers, vec![STATIC_IP], "dig printer @{GATEWAY}:\n{}", d.output);

    // Stored: the same after a restart (the address book is filled again).
    lab.host.daemon.restart();
    let listed = lab.host.cli_json(&["net", "host", "list", NET]);
    assert_eq!(listed[0]["ip"], STATIC_IP.to_string(), "after restart: {listed}");
    let again = udhcpc(&client, "eth0", None).unwrap_or_else(|e| panic!("no lease after restart: {e}"));
    assert_eq!(again.ip, STATIC_IP, "after restart: {:?}", again.vars);
    let d = dig(&client, GATEWAY, "printer");
    assert_eq!(d.answers, vec![STATIC_IP], "dig after restart:\n{}", d.output);

    // The lease the client holds outlives the delete, as a dynamic one
    // (as a deleted port's does): its address goes to no one else before
    // it runs out.
    let out = lab.host.cli(&["net", "host", "delete", NET, "--mac", &mac]);
    assert!(out.status.success(), "net host delete: {}", stderr(&out));
    assert_eq!(lab.host.cli_json(&["net", "host", "list", NET]), serde_json::json!([]));
    let leases = lab.host.cli_json(&["lease", "list", NET]);
    let held = leases.as_array().into_iter().flatten().find(|l| l["ip"] == STATIC_IP.to_string());
    assert_eq!(held.map(|l| l["kind"].clone()), Some("dynamic".into()), "leases after the delete: {leases}");
    let vm = lab.host.cli(&["port", "create", "--net", NET, "--vm", "late", "--ip", &STATIC_IP.to_string()]);
    assert!(
        !vm.status.success() && stderr(&vm).contains(&STATIC_IP.to_string()),
        "a port may not take the address the deleted host's client still holds: {}",
        stderr(&vm)
    );
}
