//! Anti-spoofing on VM ports (docs/anti-spoofing.md), with real tools in
//! throw-away namespaces:
//!
//! ```text
//!   a (attacker) ─┐
//!   b ────────────┤
//!   c (victim) ───┼─ veth ports ── lybrN 192.168.122.1/24 (lanyard, nat)
//!   d (newcomer) ─┤
//!   r (router VM, --no-spoof-check)
//! ```
//!
//! The attacker forges with scapy (Debian's python3-scapy) and runs
//! busybox udhcpd; the victims count what reaches them with nft counters
//! in their own namespaces. Every attack is judged on the victim's side,
//! and each has a control (the same detector counting an honest packet),
//! so a detector that sees nothing cannot pass the test by accident.

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;

const NET: &str = "default";
const SUBNET: &str = "192.168.122.0/24";
const GATEWAY: &str = "192.168.122.1";

/// Frames the attacker builds. `ip SRC_MAC DST_MAC SRC_IP DST_IP ID`: five
/// ICMP echo requests with that ICMP id. `arp MY_MAC VICTIM_MAC CLAIMED_IP
/// VICTIM_IP`: ARP replies to the victim and gratuitous ones claiming
/// CLAIMED_IP for MY_MAC, for about two seconds.
const FORGE: &str = r#"
import sys, time
from scapy.all import Ether, IP, ICMP, ARP, sendp
mode, a = sys.argv[1], sys.argv[2:]
if mode == "ip":
    p = Ether(src=a[0], dst=a[1]) / IP(src=a[2], dst=a[3]) / ICMP(id=int(a[4]))
    sendp(p, iface="eth0", count=5, inter=0.05, verbose=False)
elif mode == "arp":
    bcast = "ff:ff:ff:ff:ff:ff"
    for _ in range(7):
        sendp(Ether(src=a[0], dst=a[1]) / ARP(op=2, hwsrc=a[0], psrc=a[2], hwdst=a[1], pdst=a[3]), iface="eth0", verbose=False)
        sendp(Ether(src=a[0], dst=bcast) / ARP(op=2, hwsrc=a[0], psrc=a[2], hwdst=bcast, pdst=a[2]), iface="eth0", verbose=False)
        time.sleep(0.3)
print("sent")
"#;

/// Counters in a victim's namespace, one per rule, read back by the
/// rule's text (`inet probe`, its own table: nothing of lanyard's).
struct Probe<'a> {
    ns: &'a Netns,
}

impl<'a> Probe<'a> {
    fn install(ns: &'a Netns, rules: &[String]) -> Probe<'a> {
        let body: String = rules.iter().map(|r| format!("\t\t{r} counter\n")).collect();
        let script = format!(
            "table inet probe {{\n\tchain pre {{\n\t\ttype filter hook prerouting priority -300; policy accept;\n{body}\t}}\n}}\n"
        );
        let path = ns.dir().join("probe.nft");
        std::fs::write(&path, script).expect("probe script written");
        ns.exec_ok("nft", &["-f", path.to_str().expect("utf-8 path")]);
        Probe { ns }
    }

    /// Packets counted by the rule whose text contains `what`.
    fn count(&self, what: &str) -> u64 {
        let listing = self.ns.exec_ok("nft", &["list", "chain", "inet", "probe", "pre"]);
        let line = listing.lines().find(|l| l.contains(what)).unwrap_or_else(|| panic!("no rule {what:?}:\n{listing}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "packets").unwrap_or_else(|| panic!("no counter in {line:?}"));
        words[at + 1].parse().unwrap_or_else(|_| panic!("bad counter in {line:?}"))
    }
}

fn forge(vm: &Vm, args: &[&str]) {
    let mut all = vec!["-c", FORGE];
    all.extend_from_slice(args);
    let out = vm.ns.exec_ok("/usr/bin/python3", &all);
    assert!(out.contains("sent"), "scapy in {} printed {out:?}", vm.name);
}

fn echo(vm: &Vm, src_mac: &str, dst: &Vm, src_ip: &str, id: u16) {
    forge(vm, &["ip", src_mac, &dst.mac(), src_ip, &dst.ip().to_string(), &id.to_string()]);
}

/// The lladdr of `ip`'s neighbour entry in `vm`, if any.
fn neighbour(vm: &Vm, ip: &str) -> Option<String> {
    let v = vm.ns.ip_json(&["neigh", "show", ip, "dev", "eth0"]);
    v.as_array()?.first()?.get("lladdr")?.as_str().map(str::to_string)
}

/// Busybox udhcpd in `vm`, serving a range of its network as if it were
/// the gateway; its own config, lease and pid files in the VM's scratch
/// directory.
fn rogue_dhcp(vm: &Vm) -> Child {
    let dir = vm.ns.dir();
    let conf = dir.join("udhcpd.conf");
    let text = format!(
        "start 192.168.122.240\nend 192.168.122.250\ninterface eth0\nlease_file {}\npidfile {}\n\
         opt subnet 255.255.255.0\nopt router {}\nopt lease 600\n",
        dir.join("leases").display(),
        dir.join("udhcpd.pid").display(),
        vm.ip(),
    );
    std::fs::write(&conf, text).expect("udhcpd config written");
    std::fs::write(dir.join("leases"), b"").expect("lease file");
    // -a: wait 100 ms (not 2 s) for an answer to its ARP check of an
    // address before offering it, so its offers race lanyard's.
    let mut cmd = vm.ns.command("busybox", &["udhcpd", "-f", "-a", "100", conf.to_str().expect("utf-8 path")]);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    cmd.spawn().expect("udhcpd starts")
}

#[test]
fn forged_sources_arp_and_dhcp_replies_reach_nobody_and_a_router_vm_may_forward() {
    let tools = [NAT_TOOLS, &["python3", "busybox"]].concat();
    if !privileged("forged_sources_arp_and_dhcp_replies_reach_nobody_and_a_router_vm_may_forward", &tools) {
        return;
    }
    let mut host = Host::start();
    host.cli_json(&["net", "create", NET, "--mode", "nat", "--subnet", SUBNET]);
    let a = host.attach_vm(NET, "a", &[]);
    let b = host.attach_vm(NET, "b", &[]);
    let c = host.attach_vm(NET, "c", &[]);
    let r = host.attach_vm(NET, "router", &["--no-spoof-check"]);
    assert_eq!(a.port["spoof_check"], true, "a port is checked by default: {}", a.port);
    assert_eq!(r.port["spoof_check"], false, "{}", r.port);
    for vm in [&a, &b, &c, &r] {
        vm.configure_static(24, GATEWAY);
    }
    let (a_ip, b_ip, c_ip) = (a.ip().to_string(), b.ip().to_string(), c.ip().to_string());
    let probe = Probe::install(
        &c.ns,
        &(4100..=4105).map(|id| format!("icmp type echo-request icmp id {id}")).collect::<Vec<_>>(),
    );
    // Everything that goes wrong is collected, so one run shows every
    // attack that got through.
    let mut failures = Vec::new();
    let mut expect = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };

    // Control: a's honest ping, and an honest scapy echo, reach c.
    expect(ping(&a.ns, &c_ip, 3, 5).all_replied(), "a's honest ping to c failed".into());
    echo(&a, &a.mac(), &c, &a_ip, 4100);
    expect(probe.count("icmp id 4100") == 5, format!("c saw {} of a's 5 honest echoes", probe.count("icmp id 4100")));

    // a forges b's source IP.
    echo(&a, &a.mac(), &c, &b_ip, 4101);
    let n = probe.count("icmp id 4101");
    expect(n == 0, format!("c received {n} echoes from b's IP sent by a"));

    // a forges its source MAC (with its own IP).
    echo(&a, "02:00:00:00:be:ef", &c, &a_ip, 4102);
    let n = probe.count("icmp id 4102");
    expect(n == 0, format!("c received {n} frames with a forged source MAC"));

    // A router VM may send from another source IP.
    echo(&r, &r.mac(), &c, "10.200.0.7", 4105);
    let n = probe.count("icmp id 4105");
    expect(n == 5, format!("c received {n} of the router VM's 5 forwarded echoes"));

    // a claims b's IP by ARP, after c has learnt b's MAC (and after the
    // kernel's 1 s lock on a fresh entry).
    expect(ping(&c.ns, &b_ip, 2, 4).all_replied(), "c could not ping b before the ARP attack".into());
    std::thread::sleep(Duration::from_millis(1200));
    forge(&a, &["arp", &a.mac(), &c.mac(), &b_ip, &c_ip]);
    let seen = neighbour(&c, &b_ip);
    expect(seen.as_deref() == Some(b.mac().as_str()), format!("c's entry for b's IP is {seen:?}, b is {}", b.mac()));
    expect(ping(&c.ns, &b_ip, 3, 5).all_replied(), "c could not ping b after the ARP attack".into());

    // a runs a DHCP server; a new VM gets its lease from lanyard, and no
    // reply from a's server reaches it.
    let mut udhcpd = rogue_dhcp(&a);
    std::thread::sleep(Duration::from_millis(500));
    let d = host.attach_vm(NET, "d", &[]);
    let rogue = Probe::install(&d.ns, &[format!("ip saddr {a_ip} udp sport 67")]);
    for i in 0..3 {
        match udhcpc(&d.ns, "eth0", None) {
            Ok(lease) => {
                expect(lease.ip == d.ip(), format!("lease {i}: {} instead of d's port IP {}", lease.ip, d.ip()));
                expect(
                    lease.server_id == Some(GATEWAY.parse().unwrap()),
                    format!("lease {i} from server {:?}", lease.server_id),
                );
            }
            Err(e) => expect(false, format!("d got no lease ({i}): {e}")),
        }
    }
    // Give its last offer time to arrive (or be dropped).
    std::thread::sleep(Duration::from_millis(500));
    let alive = udhcpd.try_wait().expect("udhcpd's status").is_none();
    let _ = udhcpd.kill();
    let _ = udhcpd.wait();
    assert!(alive, "the rogue udhcpd exited early: the DHCP case tested nothing");
    let n = rogue.count("udp sport 67");
    expect(n == 0, format!("d received {n} replies from a's DHCP server"));

    // A restart rebuilds the same elements from the store.
    let guarded = |host: &Host| {
        let listing = host.ns.exec_ok("nft", &["list", "set", "bridge", "lanyard", "guarded"]);
        let mut names: Vec<String> =
            [&a, &b, &c, &d, &r].iter().map(|v| v.host_ifname()).filter(|n| listing.contains(n.as_str())).collect();
        names.sort();
        names
    };
    let before = guarded(&host);
    let mut want: Vec<String> = [&a, &b, &c, &d].iter().map(|v| v.host_ifname()).collect();
    want.sort();
    expect(before == want, format!("guarded ports {before:?}, expected {want:?} (not the router VM)"));
    host.daemon.restart();
    let after = guarded(&host);
    expect(after == before, format!("after a restart guarded ports are {after:?}, were {before:?}"));

    assert!(failures.is_empty(), "attacks that got through:\n{}\n{}", failures.join("\n"), host.ns.nft_ruleset());
}
