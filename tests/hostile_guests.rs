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
