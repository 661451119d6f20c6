//! Port forwards in throw-away namespaces, with real tools: each VM runs a
//! UDP and a TCP listener that answers with the VM's name and the address
//! it sees the asker at. The outside reaches the host's uplink address on
//! the forwarded port (TCP and UDP) and gets the VM's answer, the VM
//! seeing the outside's own address; the host reaches its own address;
//! a second VM of the same network reaches the forward through the host's
//! address and is answered (hairpin: masqueraded to the gateway); a VM of
//! another network reaches it too; a forward into a route network works
//! alike; a forward on one address is only
//! there; a guest's own connection to that port elsewhere is untouched; a
//! restart keeps the forwards (the map exactly), and so does a flushed
//! ruleset (self-healing); after a delete, and after the port's deletion,
//! nothing answers. Needs root; see `common::privileged`.

mod common;

use std::time::Duration;

use common::*;

const NET: &str = "web";
const SUBNET: &str = "10.93.0.0/24";
const GATEWAY: &str = "10.93.0.1";
const OTHER_SUBNET: &str = "10.94.0.0/24";
const OTHER_GATEWAY: &str = "10.94.0.1";
const HOST_UP: &str = "198.51.100.1";
const OUT: &str = "198.51.100.2";
/// The guest's service port.
const PORT: u16 = 7000;

fn serve(ns: &Netns, name: &str) -> EchoServer {
    echo_server(ns, name, PORT)
}

/// The elements of the `port_fwd` map, sorted (nft lists an interval
/// map's elements in an order of its own, which a rebuilt map may change).
fn map(host: &Host) -> Vec<String> {
    let out = host.ns.exec("nft", &["list", "map", "inet", "lanyard", "port_fwd"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let Some((_, rest)) = text.split_once("elements = {") else { return Vec::new() };
    let inner = rest.split_once('}').map_or(rest, |(e, _)| e);
    let mut elements: Vec<String> = inner.split(',').map(|e| e.trim().to_string()).collect();
    elements.sort();
    elements
}

#[test]
fn a_forward_publishes_a_vms_port_on_the_hosts_addresses() {
    let tools = [NAT_TOOLS, &["python3"]].concat();
    if !privileged("a_forward_publishes_a_vms_port_on_the_hosts_addresses", &tools) {
        return;
    }
    let mut host = Host::start();
    let out = host.add_outside(&format!("{HOST_UP}/24"), &format!("{OUT}/24"));
    host.cli_json(&["net", "create", NET, "--mode", "nat", "--subnet", SUBNET]);
    host.cli_json(&["net", "create", "other", "--mode", "nat", "--subnet", OTHER_SUBNET]);
    let web = host.attach_vm(NET, "web1", &[]);
    let peer = host.attach_vm(NET, "peer", &[]);
    let far = host.attach_vm("other", "far", &[]);
    web.configure_static(24, GATEWAY);
    peer.configure_static(24, GATEWAY);
    far.configure_static(24, OTHER_GATEWAY);
    let _servers =
        [serve(&web.ns, "web1"), serve(&peer.ns, "peer"), serve(&out, "out"), echo_server(&out, "out8080", 8080)];
    let web_ip = web.ip().to_string();
    assert_eq!(ask(&host.ns, "tcp", HOST_UP, 8080), "-", "something answers on 8080 before any forward");

    // tcp 8080 -> web1:7000 on every address; udp 5353 -> web1:7000.
    let shown =
        host.cli_json(&["net", "forward", "add", NET, "--proto", "tcp", "--host-port", "8080", "--to", "web1:7000"]);
    assert_eq!((field(&shown, "vm"), field(&shown, "to_ip")), ("web1", web_ip.as_str()), "{shown}");
    assert_eq!(shown["to_port_number"], 7000, "{shown}");
    assert!(shown["address"].is_null(), "{shown}");
    host.cli_json(&[
        "net",
        "forward",
        "add",
        NET,
        "--proto",
        "udp",
        "--host-port",
        "5353",
        "--to",
        &format!("{}:7000", web.id()),
    ]);
    let table = host.cli_ok(&["net", "forward", "list", NET]);
    assert!(table.contains("Host-Port") && table.contains(&format!("{web_ip}:7000")), "{table}");

    // From outside: the VM answers and sees the outside's own address.
    assert_eq!(ask(&out, "tcp", HOST_UP, 8080), format!("web1 {OUT}"), "TCP from outside");
    assert_eq!(ask(&out, "udp", HOST_UP, 5353), format!("web1 {OUT}"), "UDP from outside");
    assert_eq!(ask(&out, "udp", HOST_UP, 8080), "-", "the TCP forward answers UDP");
    // The host itself, on its own address.
    assert_eq!(ask(&host.ns, "tcp", HOST_UP, 8080), format!("web1 {HOST_UP}"), "the host on its own address");
    assert_eq!(ask(&host.ns, "udp", HOST_UP, 5353), format!("web1 {HOST_UP}"), "the host over UDP");
    // Hairpin: another VM of the network, through the host's address, is
    // answered; web1 sees the gateway (else it would answer peer directly).
    assert_eq!(ask(&peer.ns, "tcp", HOST_UP, 8080), format!("web1 {GATEWAY}"), "hairpin TCP");
    assert_eq!(ask(&peer.ns, "udp", HOST_UP, 5353), format!("web1 {GATEWAY}"), "hairpin UDP");
    // A VM of another nat network reaches it too (it may go out), seen as itself.
    assert_eq!(ask(&far.ns, "tcp", HOST_UP, 8080), format!("web1 {}", far.ip()), "from another network");
    // Only what is addressed to the host is forwarded: a guest's own
    // connection to port 8080 elsewhere goes where it was going.
    assert_eq!(ask(&far.ns, "tcp", OUT, 8080), format!("out8080 {HOST_UP}"), "a guest's 8080 outside was taken");
    // Nothing else of the VM is published.
    assert_eq!(ask(&out, "tcp", &web_ip, PORT), "-", "the VM's own address is reachable from outside");

    // A forward on one address only: not on the gateway's.
    host.cli_json(&[
        "net",
        "forward",
        "add",
        NET,
        "--proto",
        "tcp",
        "--host-port",
        "9090",
        "--to",
        "peer:7000",
        "--address",
        HOST_UP,
    ]);
    assert_eq!(ask(&out, "tcp", HOST_UP, 9090), format!("peer {OUT}"), "a forward on one address");
    // far reaches the web network's gateway address (the host's) from
    // its own network: 8080 is forwarded there, 9090 is not.
    assert_eq!(ask(&far.ns, "tcp", GATEWAY, 9090), "-", "a forward on one address answers on another");
    assert_eq!(ask(&far.ns, "tcp", GATEWAY, 8080), format!("web1 {}", far.ip()), "every address: a gateway's too");

    // Into a route network too (its guests' answers are not masqueraded,
    // conntrack un-DNATs them on their way out).
    host.cli_json(&["net", "create", "routed", "--mode", "route", "--subnet", "10.95.0.0/24"]);
    let api = host.attach_vm("routed", "api", &[]);
    api.configure_static(24, "10.95.0.1");
    let _api_server = serve(&api.ns, "api");
    host.cli_json(&["net", "forward", "add", "routed", "--proto", "tcp", "--host-port", "8081", "--to", "api:7000"]);
    assert_eq!(ask(&out, "tcp", HOST_UP, 8081), format!("api {OUT}"), "a forward into a route network");

    // A second forward of tcp 8080, on any network, is refused (exit 4).
    let dup = host.cli(&["net", "forward", "add", "other", "--proto", "tcp", "--host-port", "8080", "--to", "far"]);
    assert_eq!(dup.status.code(), Some(4), "{dup:?}");

    // A restart keeps them, the map exactly.
    let before = map(&host);
    assert!(before.contains(&format!("0.0.0.0/0 . tcp . 8080 : {web_ip} . 7000")), "{before:?}");
    host.daemon.restart();
    assert_eq!(map(&host), before, "a restart changed the map");
    assert_eq!(ask(&out, "tcp", HOST_UP, 8080), format!("web1 {OUT}"), "the forward lost across a restart");
    assert_eq!(ask(&out, "udp", HOST_UP, 5353), format!("web1 {OUT}"), "the UDP forward lost across a restart");

    // A flushed ruleset (in the host namespace) gets them back: self-healing.
    host.ns.exec_ok("nft", &["flush", "ruleset"]);
    let healed = (0..50).any(|_| {
        map(&host) == before || {
            std::thread::sleep(Duration::from_millis(100));
            false
        }
    });
    assert!(healed, "the map did not come back after a flush: {:?}", map(&host));
    assert_eq!(ask(&out, "tcp", HOST_UP, 8080), format!("web1 {OUT}"), "the forward lost to a flush");

    // Deleted: nothing answers (the other forwards stay).
    host.cli_ok(&["net", "forward", "delete", NET, "--proto", "tcp", "--host-port", "8080"]);
    assert_eq!(ask(&out, "tcp", HOST_UP, 8080), "-", "a deleted forward still answers");
    assert_eq!(ask(&peer.ns, "tcp", HOST_UP, 8080), "-", "a deleted forward still answers a hairpin");
    assert_eq!(ask(&out, "udp", HOST_UP, 5353), format!("web1 {OUT}"), "deleting one forward took another");
    let again = host.cli(&["net", "forward", "delete", NET, "--proto", "tcp", "--host-port", "8080"]);
    assert_eq!(again.status.code(), Some(3), "deleting a forward that is not there (not found): {again:?}");

    // The port's deletion takes its forwards.
    host.cli_ok(&["port", "delete", &web.id()]);
    let listed = host.cli_json(&["net", "forward", "list", NET]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "only peer's forward stays: {listed}");
    assert_eq!(field(&listed[0], "vm"), "peer", "{listed}");
    assert_eq!(ask(&out, "udp", HOST_UP, 5353), "-", "a deleted port's forward still answers");
    assert!(!map(&host).iter().any(|e| e.contains(&web_ip)), "the deleted port's elements stay: {:?}", map(&host));
}
