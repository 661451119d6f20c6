//! Guests that attack the network's services, in throw-away namespaces:
//!
//! ```text
//!   attacker ─┐
//!             ├─ veth ports ── lybrN 192.168.122.1/24 (lanyard: DHCP, DNS)
//!   victim  ──┘
//! ```
//!
//! The attacker sends what a hostile guest can; afterwards an honest guest
//! must still get its lease from lanyard and the daemon must still be alive.

mod common;

use std::time::Duration;

use common::*;

const NET: &str = "default";
const SUBNET: &str = "192.168.122.0/24";
const GATEWAY: &str = "192.168.122.1";

/// Python (Debian's, with only the standard library) that sends DHCP
/// packets built from a valid DISCOVER with one field broken each: every
/// `hlen` 0..255, truncation at every length, option lengths that run past
/// the end, option overload with broken areas, 8 KB packets.
const HOSTILE_DHCP: &str = r#"
import socket, struct, sys
server = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
def discover(hlen=6, opts=b"\x35\x01\x01\xff"):
    h = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, hlen, 0, 0x1234, 0, 0x8000,
                    b"\0"*4, b"\0"*4, b"\0"*4, b"\0"*4, bytes.fromhex("525400ee0001") + b"\0"*10,
                    b"\0"*64, b"\0"*128)
    return h + b"\x63\x82\x53\x63" + opts
sent = 0
def send(p):
    global sent
    s.sendto(p, (server, 67)); sent += 1
for hlen in range(256):
    send(discover(hlen=hlen))
full = discover(opts=b"\x35\x01\x01\x0c\x05guest\x3d\x07\x01\x52\x54\x00\xee\x00\x01\xff")
for n in range(len(full)):
    send(full[:n])
for code in (1, 3, 6, 12, 15, 50, 51, 52, 53, 54, 55, 57, 61, 81, 82, 118, 121, 151, 152):
    for ln in (0, 1, 2, 3, 5, 255):
        send(discover(opts=b"\x35\x01\x01" + bytes([code, ln]) + b"\x01" * min(ln, 4) + b"\xff"))
send(discover(opts=b"\x35\x01\x01\x34\x01\x03\xff")[:44] + b"\x32\xff" + b"\0" * 300)
send(discover(opts=b"\x35\x01\x01\x0c\xff" + b"A" * 8000))
send(b"\x01" * 8192)
for t in range(1, 19):
    send(discover(opts=bytes([53, 1, t, 255])))
print(sent)
"#;

#[test]
fn hostile_dhcp_packets_do_not_stop_the_server() {
    if !privileged("hostile_dhcp_packets_do_not_stop_the_server", NAT_TOOLS) {
        return;
    }
    let mut lab = Topology::start();
    let net = lab.create_net(NET, "nat", SUBNET);
    let attacker = &lab.add_vm("attacker", net, &[]).vm;
    attacker.configure_static(24, GATEWAY);
    let out = attacker.ns.exec_ok("/usr/bin/python3", &["-c", HOSTILE_DHCP, GATEWAY]);
    let sent: u32 = out.trim().parse().unwrap_or_else(|_| panic!("attack script printed {out:?}"));
    assert!(sent > 600, "the attack sent only {sent} packets");
    // Let the server work through its queue before the honest client asks.
    std::thread::sleep(Duration::from_millis(500));

    lab.add_vm("victim", net, &[]);
    let (victim, host) = (lab.vm("victim"), &lab.host);
    let lease = udhcpc(&victim.ns, "eth0", None)
        .unwrap_or_else(|e| panic!("after the attack an honest guest got no lease: {e}\n{}", host.daemon.log()));
    assert_eq!(lease.ip, victim.ip(), "the victim must get its port's fixed IP");
    let log = host.daemon.log();
    assert!(!log.contains("panicked"), "a hostile packet made the daemon panic:\n{log}");
    assert!(signal(host.daemon.pid(), "0"), "the daemon died during the attack:\n{log}");
}

/// Scapy (Debian's python3-scapy) builds the packets, an AF_PACKET socket
/// sends them as fast as Python can, for a bounded time. `exhaust`: a
/// REQUEST (no DISCOVER) for every address of the dynamic range, each from
/// a new random MAC, steadily (under a port's DHCP rate, so each counts).
/// `flood`: DISCOVERs from random MACs (Ethernet source and chaddr) and
/// from one MAC over and over, until the deadline.
const ATTACK: &str = r#"
import os, random, socket, sys, time
from scapy.all import Ether, IP, UDP, BOOTP, DHCP, raw
mode, iface, first, last, seconds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
def mac():
    return bytes([0x02, random.randrange(256), random.randrange(256), random.randrange(256), random.randrange(256), random.randrange(256)])
def pkt(m, kind, ip=None):
    opts = [("message-type", kind)] + ([("requested_addr", ip)] if ip else []) + ["end"]
    e = Ether(src=m, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
    return raw(e / BOOTP(chaddr=m + b"\0" * 10, xid=random.randrange(1 << 32), flags=0x8000) / DHCP(options=opts))
sent = 0
def send(p):
    # A full queue (ENOBUFS) is the flood working; go on.
    global sent
    try:
        s.send(p); sent += 1
    except OSError:
        pass
deadline = time.time() + seconds
if mode == "exhaust":
    a = [int(x) for x in first.split(".")]
    b = [int(x) for x in last.split(".")]
    for n in range(a[3], b[3] + 1):
        if time.time() > deadline:
            break
        send(pkt(mac(), "request", "%d.%d.%d.%d" % (a[0], a[1], a[2], n)))
        time.sleep(0.06)
else:
    templates = [pkt(mac(), "discover") for _ in range(64)]
    same = pkt(mac(), "discover")
    while time.time() < deadline:
        for t in templates:
            m = mac()
            p = bytearray(t); p[6:12] = m; p[42 + 28:42 + 34] = m
            send(bytes(p)); send(same)
print(sent)
"#;

#[test]
fn a_flood_and_a_pool_exhaustion_attack_leave_ports_served() {
    let tools = [NAT_TOOLS, &["python3"]].concat();
    if !privileged("a_flood_and_a_pool_exhaustion_attack_leave_ports_served", &tools) {
        return;
    }
    let host = Host::start();
    let net = host.cli_json(&["net", "create", NET, "--mode", "nat", "--subnet", SUBNET]);
    let (first, last) = (field(&net["dhcp_range"], "first").to_string(), field(&net["dhcp_range"], "last").to_string());
    let victim = host.attach_vm(NET, "victim", &[]);
    udhcpc(&victim.ns, "eth0", None).unwrap_or_else(|e| panic!("no lease before the attack: {e}"));
    // The attackers' ports are not checked for spoofing (a router VM's
    // are not): otherwise the bridge drops their random source MACs and
    // the server's own defences are never tested. tests/anti_spoofing.rs
    // tests the check.
    let attack = |who: &str, mode: &str| {
        let vm = host.attach_vm(NET, who, &["--no-spoof-check"]);
        let mut cmd = vm.ns.command("/usr/bin/python3", &["-c", ATTACK, mode, "eth0", &first, &last, "14"]);
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let child = cmd.spawn().expect("the attack starts");
        (vm, child)
    };
    let (_exhauster, exhaust) = attack("exhauster", "exhaust");
    let (_flooder, flood) = attack("flooder", "flood");
    std::thread::sleep(Duration::from_secs(2));

    // During the flood: the victim renews its fixed lease every time, and
    // provisioning goes on.
    for i in 0..4 {
        let lease = udhcpc(&victim.ns, "eth0", None)
            .unwrap_or_else(|e| panic!("renewal {i} during the flood failed: {e}\n{}", host.daemon.log()));
        assert_eq!(lease.ip, victim.ip(), "renewal {i} gave another address");
    }
    let newcomer = host.attach_vm(NET, "newcomer", &[]);
    let lease = udhcpc(&newcomer.ns, "eth0", None).unwrap_or_else(|e| panic!("a new port got no lease: {e}"));
    assert_eq!(lease.ip, newcomer.ip());

    let sent_by = |child: std::process::Child, what: &str| -> u64 {
        let out = child.wait_with_output().expect("the attack ends");
        stdout(&out).trim().parse().unwrap_or_else(|_| panic!("{what} printed {:?}{}", stdout(&out), stderr(&out)))
    };
    let flooded = sent_by(flood, "the flood");
    assert!(flooded > 5_000, "the flood sent only {flooded} packets");
    let sent = flooded + sent_by(exhaust, "the exhaustion");
    // The pool is the attacker's now; the ports' half is untouched.
    let leases = host.cli_json(&["lease", "list", NET]);
    let dynamic = leases.as_array().into_iter().flatten().filter(|l| l["kind"] == "dynamic").count();
    assert!(dynamic > 100, "the exhaustion took only {dynamic} addresses");
    // Dropped packets are summarised, not logged one by one.
    std::thread::sleep(Duration::from_millis(200));
    let log = host.daemon.log();
    assert!(log.lines().count() < 300, "{} log lines for {sent} hostile packets", log.lines().count());
    assert!(signal(host.daemon.pid(), "0"), "the daemon died during the flood:\n{log}");
}
