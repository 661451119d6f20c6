//! Floating IPs in throw-away namespaces, with real tools: each VM runs a
//! UDP and a TCP listener that answers with the VM's name and the address
//! it sees the asker at; the outside runs the same. The outside reaches a
//! VM through its floating IP and the VM sees the outside's own address;
//! the VM's own connections reach the outside from its floating IP while
//! another VM's are masqueraded; a VM reaches another's floating IP from
//! inside (hairpin); a running UDP stream and a ping follow a re-association
//! within a second (conntrack entries are removed); disassociation stops
//! them; a restart rebuilds the maps exactly; deleting the port leaves the
//! floating IP with its project.
//!
//! With two projects: each one's floating IP leads to its VM; egress deny
//! on one holds (its VM starts nothing outward, its inbound floating-IP
//! flows still get answers) while the other keeps going out; a grant
//! `allow red --to blue --proto tcp --port 22` lets red reach blue's port
//! 22 and nothing else, and not blue reach red; `deny` takes it back; a
//! restart keeps it. Needs root; see `common::privileged`.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const NET: &str = "pub";
const SUBNET: &str = "10.91.0.0/24";
const GATEWAY: &str = "10.91.0.1";
const HOST_UP: &str = "198.51.100.1";
const OUT: &str = "198.51.100.2";
const FIP: &str = "198.51.100.10";
const PORT: u16 = 7000;

/// A UDP stream from one source port: a packet every 50 ms for `secs`
/// seconds; prints `MILLISECONDS NAME` per answer.
const STREAM: &str = r#"
import socket, sys, time
host, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 40000))
s.settimeout(0.05)
start = time.time()
while time.time() - start < secs:
    s.sendto(b"?", (host, port))
    end = time.time() + 0.05
    while time.time() < end:
        try:
            d, _ = s.recvfrom(2048)
            print("%d %s" % ((time.time() - start) * 1000, d.decode().split()[0]), flush=True)
        except socket.timeout:
            break
    time.sleep(max(0.0, end - time.time()))
"#;

/// Captures ARP for `secs` seconds; prints the sender address of each
/// gratuitous request (sender address = target address).
const GARP: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.settimeout(0.2)
end = time.time() + float(sys.argv[1])
print("ready", flush=True)
while time.time() < end:
    try:
        f = s.recv(2048)
    except socket.timeout:
        continue
    a = f[14:]
    if len(a) >= 28 and a[6:8] == b"\x00\x01" and a[14:18] == a[24:28]:
        print(socket.inet_ntoa(a[14:18]), flush=True)
"#;

/// A process the test started, killed and reaped on drop.
fn serve(ns: &Netns, name: &str) -> EchoServer {
    echo_server(ns, name, PORT)
}

/// The answer to one question from `ns` on [`PORT`]: `NAME PEER` or `-`.
fn ask(ns: &Netns, proto: &str, host: &str) -> String {
    common::ask(ns, proto, host, PORT)
}

fn fip_json(host: &Host, args: &[&str]) -> serde_json::Value {
    host.cli_json(&[&["fip"], args].concat())
}

fn addresses(host: &Host, ifname: &str) -> Vec<String> {
    host.ns.ipv4_addrs(ifname)
}

fn map(host: &Host, name: &str) -> String {
    let out = host.ns.exec("nft", &["list", "map", "inet", "lanyard", name]);
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn a_floating_ip_leads_in_and_out_moves_with_its_flows_and_hairpins() {
    let tools = [NAT_TOOLS, &["python3"]].concat();
    if !privileged("a_floating_ip_leads_in_and_out_moves_with_its_flows_and_hairpins", &tools) {
        return;
    }
    let mut host = Host::start();
    let out = host.add_outside(&format!("{HOST_UP}/24"), &format!("{OUT}/24"));
    host.cli_json(&["net", "create", NET, "--mode", "nat", "--subnet", SUBNET]);
    let a = host.attach_vm(NET, "a", &[]);
    let b = host.attach_vm(NET, "b", &[]);
    for vm in [&a, &b] {
        vm.configure_static(24, GATEWAY);
    }
    let _servers = [serve(&a.ns, "a"), serve(&b.ns, "b"), serve(&out, "out")];

    // Bad input first: nothing changes.
    let bad =
        host.cli(&["fip", "pool", "create", "public", "--range", "198.51.100.20-198.51.100.10", "--interface", "up0"]);
    assert_eq!(bad.status.code(), Some(2), "a reversed range is bad input");
    let bad = host.cli(&["fip", "pool", "create", "public", "--range", "10.91.0.50-10.91.0.60", "--interface", "up0"]);
    assert_ne!(bad.status.code(), Some(0), "a range inside a network is refused");
    let pool =
        fip_json(&host, &["pool", "create", "public", "--range", "198.51.100.10-198.51.100.19", "--interface", "up0"]);
    assert_eq!(pool["size"], 10, "{pool}");
    let fip = fip_json(&host, &["create"]);
    assert_eq!(field(&fip, "ip"), FIP, "the pool's lowest address first: {fip}");
    assert!(ask(&out, "udp", FIP).starts_with('-'), "an unassociated floating IP answers");

    // Inbound reaches a, which sees the outside's own address; a's own
    // traffic leaves from the floating IP, b's is masqueraded. The
    // association is announced by gratuitous ARP on the pool's interface.
    let mut garp = out.command("python3", &["-u", "-c", GARP, "3"]);
    garp.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut garp = garp.spawn().expect("the ARP capture starts");
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(garp.stdout.as_mut().expect("stdout")), &mut ready)
        .expect("the capture is ready");
    let shown = fip_json(&host, &["associate", FIP, "a"]);
    let announced = String::from_utf8_lossy(&garp.wait_with_output().expect("capture output").stdout).to_string();
    assert!(announced.lines().any(|l| l == FIP), "no gratuitous ARP for {FIP} reached the outside: {announced:?}");
    assert_eq!(field(&shown, "vm"), "a", "{shown}");
    assert_eq!(field(&shown, "fixed_ip"), a.ip().to_string(), "{shown}");
    assert!(addresses(&host, "up0").contains(&format!("{FIP}/32")), "the host does not carry {FIP} on up0");
    assert_eq!(ask(&out, "udp", FIP), format!("a {OUT}"), "inbound UDP to the floating IP");
    assert_eq!(ask(&out, "tcp", FIP), format!("a {OUT}"), "inbound TCP to the floating IP");
    assert_eq!(ask(&a.ns, "udp", OUT), format!("out {FIP}"), "a's own traffic does not leave from its floating IP");
    assert_eq!(ask(&a.ns, "tcp", OUT), format!("out {FIP}"), "a's own TCP does not leave from its floating IP");
    assert_eq!(ask(&b.ns, "udp", OUT), format!("out {HOST_UP}"), "b's traffic is not masqueraded");
    // Hairpin: b reaches a through a's floating IP.
    assert!(ask(&b.ns, "udp", FIP).starts_with("a "), "b does not reach a's floating IP from inside");
    assert!(ask(&b.ns, "tcp", FIP).starts_with("a "), "b does not reach a's floating IP over TCP from inside");

    // A running UDP stream (one source port: one conntrack entry) and a
    // ping follow a re-association within a second.
    let mut stream = out.command("python3", &["-c", STREAM, FIP, &PORT.to_string(), "4"]);
    stream.stdout(Stdio::piped()).stderr(Stdio::null());
    let stream = stream.spawn().expect("stream starts");
    let ping = PingJob::start(&out, FIP, &["-i", "0.2", "-c", "20", "-W", "1"]);
    std::thread::sleep(Duration::from_millis(1500));
    let t0 = Instant::now();
    let moved = fip_json(&host, &["associate", FIP, &b.id()]);
    let moved_at = 1500 + t0.elapsed().as_millis() as u64;
    assert_eq!(field(&moved, "vm"), "b", "{moved}");
    let lines = String::from_utf8_lossy(&stream.wait_with_output().expect("stream output").stdout).to_string();
    let answers: Vec<(u64, String)> =
        lines.lines().filter_map(|l| l.split_once(' ').map(|(t, n)| (t.parse().unwrap_or(0), n.to_string()))).collect();
    assert!(answers.iter().any(|(t, n)| *t < 1400 && n == "a"), "a did not answer before the move: {lines}");
    let first_b = answers.iter().find(|(_, n)| n == "b").map(|(t, _)| *t);
    let Some(first_b) = first_b else { panic!("the stream never reached b after the move at {moved_at} ms: {lines}") };
    assert!(first_b <= moved_at + 1000, "the stream reached b only at {first_b} ms, moved at {moved_at} ms: {lines}");
    assert!(
        !answers.iter().any(|(t, n)| *t > moved_at + 1000 && n == "a"),
        "a still answers the stream after the move: {lines}"
    );
    let p = ping.wait(Duration::from_secs(15));
    assert!(p.loss_pct() <= 15.0, "the ping lost {}% across the move", p.loss_pct());

    // A restart rebuilds the maps exactly and keeps the association.
    let before = (map(&host, "fip_dnat"), map(&host, "fip_snat"));
    assert!(before.0.contains(&format!("{FIP} : {}", b.ip())), "{}", before.0);
    host.daemon.restart();
    assert_eq!((map(&host, "fip_dnat"), map(&host, "fip_snat")), before, "a restart changed the maps");
    assert_eq!(ask(&out, "udp", FIP), format!("b {OUT}"), "the floating IP lost b across a restart");

    // Disassociation stops it; the project keeps the address.
    let ping = PingJob::start(&out, FIP, &["-i", "0.2", "-c", "10", "-W", "1"]);
    std::thread::sleep(Duration::from_millis(600));
    let gone = fip_json(&host, &["disassociate", FIP]);
    assert!(gone["port"].is_null(), "{gone}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ask(&out, "udp", FIP), "-", "the floating IP still leads somewhere");
    let p = ping.wait(Duration::from_secs(15));
    assert!(!p.all_replied(), "the ping went on after the disassociation");
    assert!(!addresses(&host, "up0").contains(&format!("{FIP}/32")), "{FIP} stays on up0");
    assert_eq!(ask(&a.ns, "udp", OUT), format!("out {HOST_UP}"), "a still leaves from the floating IP");

    // Deleting the associated port disassociates it.
    fip_json(&host, &["associate", FIP, "a"]);
    host.cli_ok(&["port", "delete", &a.id()]);
    let listed = fip_json(&host, &["list"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert!(listed[0]["port"].is_null(), "the deleted port keeps its floating IP: {listed}");
    assert!(!addresses(&host, "up0").contains(&format!("{FIP}/32")), "{FIP} stays on up0 after its port went");
    let refused = host.cli(&["fip", "pool", "delete", "public"]);
    assert_ne!(refused.status.code(), Some(0), "a pool whose addresses are held was deleted");
    host.cli_ok(&["fip", "delete", FIP]);
    host.cli_ok(&["fip", "pool", "delete", "public"]);
}

#[test]
fn two_projects_floating_ips_egress_and_a_grant() {
    let tools = [NAT_TOOLS, &["python3"]].concat();
    if !privileged("two_projects_floating_ips_egress_and_a_grant", &tools) {
        return;
    }
    let mut host = Host::start();
    let out = host.add_outside(&format!("{HOST_UP}/24"), &format!("{OUT}/24"));
    fip_json(&host, &["pool", "create", "public", "--range", "198.51.100.10-198.51.100.19", "--interface", "up0"]);
    let mut vms = Vec::new();
    for (p, subnet, gateway) in [("red", "10.81.0.0/24", "10.81.0.1"), ("blue", "10.82.0.0/24", "10.82.0.1")] {
        host.cli_ok(&["project", "create", p]);
        host.cli_ok(&["net", "create", "private", "--mode", "nat", "--subnet", subnet, "--project", p]);
        let vm = host.attach_vm("private", &format!("vm-{p}"), &["--project", p]);
        vm.configure_static(24, gateway);
        let fip = fip_json(&host, &["create", "--project", p]);
        fip_json(&host, &["associate", field(&fip, "ip"), &format!("vm-{p}")]);
        vms.push((vm, field(&fip, "ip").to_string()));
    }
    let (red, red_fip) = (&vms[0].0, vms[0].1.clone());
    let (blue, blue_fip) = (&vms[1].0, vms[1].1.clone());
    let _servers = [
        serve(&red.ns, "red"),
        serve(&blue.ns, "blue"),
        serve(&out, "out"),
        echo_server(&red.ns, "red-ssh", 22),
        echo_server(&blue.ns, "blue-ssh", 22),
    ];
    let listed = fip_json(&host, &["list", "--project", "red"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "red sees only its own: {listed}");

    // Each floating IP leads to its project's VM, which goes out from it.
    assert_eq!(ask(&out, "udp", &red_fip), format!("red {OUT}"));
    assert_eq!(ask(&out, "udp", &blue_fip), format!("blue {OUT}"));
    assert_eq!(ask(&red.ns, "udp", OUT), format!("out {red_fip}"));
    assert_eq!(ask(&blue.ns, "udp", OUT), format!("out {blue_fip}"));

    // Egress deny on red: red starts nothing outward, its floating IP's
    // inbound flows are still answered; blue keeps going out.
    host.cli_ok(&["project", "set", "red", "--egress", "deny"]);
    assert_eq!(ask(&red.ns, "udp", OUT), "-", "red goes out with egress denied");
    assert_eq!(ask(&red.ns, "tcp", OUT), "-", "red goes out over TCP with egress denied");
    assert_eq!(ask(&out, "tcp", &red_fip), format!("red {OUT}"), "red's inbound floating-IP flow got no answer");
    assert_eq!(ask(&blue.ns, "udp", OUT), format!("out {blue_fip}"), "blue lost its egress with red's denial");

    // Between the projects: nothing, until a grant opens red -> blue:22/tcp.
    let (red_ip, blue_ip) = (red.ip().to_string(), blue.ip().to_string());
    assert_eq!(common::ask(&red.ns, "tcp", &blue_ip, 22), "-", "red reaches blue without a grant");
    let shown = host.cli_json(&["project", "allow", "red", "--to", "blue", "--proto", "tcp", "--port", "22"]);
    assert_eq!(shown["allows"], serde_json::json!(["blue tcp/22"]), "{shown}");
    let bad = host.cli(&["project", "allow", "red", "--to", "blue", "--port", "22"]);
    assert_eq!(bad.status.code(), Some(2), "a port without a protocol is bad input");
    host.daemon.restart();
    assert_eq!(
        common::ask(&red.ns, "tcp", &blue_ip, 22),
        format!("blue-ssh {red_ip}"),
        "the grant does not let red in"
    );
    assert_eq!(common::ask(&red.ns, "tcp", &blue_ip, PORT), "-", "the grant opens more than port 22");
    assert_eq!(common::ask(&red.ns, "udp", &blue_ip, 22), "-", "the grant opens UDP too");
    assert_eq!(common::ask(&blue.ns, "tcp", &red_ip, 22), "-", "the grant opens the other direction");
    assert_eq!(ask(&red.ns, "udp", OUT), "-", "the grant lifted red's egress denial");
    host.cli_ok(&["project", "deny", "red", "--to", "blue", "--proto", "tcp", "--port", "22"]);
    assert_eq!(common::ask(&red.ns, "tcp", &blue_ip, 22), "-", "deny did not take the grant back");
    let again = host.cli(&["project", "deny", "red", "--to", "blue", "--proto", "tcp", "--port", "22"]);
    assert_eq!(again.status.code(), Some(3), "taking back a grant that is not there (not found): {again:?}");
}
