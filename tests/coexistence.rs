//! lanyard beside Docker's firewall, in throw-away namespaces. The host
//! namespace gets Docker's iptables ruleset as Docker writes it (FORWARD
//! policy DROP, DOCKER-USER, DOCKER, DOCKER-ISOLATION-STAGE-1/2, masquerade)
//! and a "container" behind `docker0`:
//!
//! ```text
//!   vm1, vm2 ── lybrN 192.168.122.1/24 (nat)  ┐
//!   vm3 ─────── lybrM 10.88.0.1/24 (route)    ├─ host ── up0 203.0.113.1 ── outside 203.0.113.2
//!   ctr ─────── docker0 172.17.0.1/16         ┘
//! ```
//!
//! lanyard's networks must forward exactly what their modes allow, and the
//! container must stay as isolated as Docker made it.

mod common;

use std::time::Duration;

use common::*;

const NAT_SUBNET: &str = "192.168.122.0/24";
const NAT_GW: &str = "192.168.122.1";
const ROUTE_SUBNET: &str = "10.88.0.0/24";
const ROUTE_GW: &str = "10.88.0.1";
const OUTSIDE: &str = "203.0.113.2";
const CONTAINER: &str = "172.17.0.2";

/// Docker 24's filter and nat rules for the default bridge, in
/// iptables-restore form (iptables-nft: the rules land in nftables tables
/// `ip filter` and `ip nat`).
const DOCKER_RULES: &str = "*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
COMMIT
";

fn iptables_restore(ns: &Netns, rules: &str) {
    let mut cmd = ns.command("iptables-restore", &[]);
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("iptables-restore starts");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(rules.as_bytes()).expect("rules written");
    }
    let out = child.wait_with_output().expect("iptables-restore ends");
    assert!(out.status.success(), "iptables-restore failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// lanyard's rules as `iptables -S DOCKER-USER` shows them.
fn lanyard_rules_in_docker_user(host: &Host) -> Vec<String> {
    host.ns
        .exec_ok("iptables", &["-S", "DOCKER-USER"])
        .lines()
        .filter(|l| l.contains("lanyard:"))
        .map(String::from)
        .collect()
}

fn wait_for_docker_user_rules(host: &Host, what: &str) {
    let ok = poll(Duration::from_secs(3), Duration::from_millis(50), || {
        (lanyard_rules_in_docker_user(host).len() == 3).then_some(())
    });
    assert!(
        ok.is_some(),
        "{what}: lanyard's rules are not in DOCKER-USER: {:?}\n{}",
        host.ns.exec_ok("iptables", &["-S", "DOCKER-USER"]),
        host.daemon.log()
    );
}

#[test]
fn lanyard_networks_work_under_dockers_forward_drop_and_containers_stay_isolated() {
    let tools = [NAT_TOOLS, &["iptables", "iptables-restore"]].concat();
    if !privileged("lanyard_networks_work_under_dockers_forward_drop_and_containers_stay_isolated", &tools) {
        return;
    }
    let mut host = Host::start();
    let outside = host.add_outside("203.0.113.1/24", "203.0.113.2/24");
    // The outside knows the routed network (the operator's manual route),
    // and has a route to Docker's network, so "unreachable" below means
    // refused by policy, not "no route".
    outside.ip_ok(&["route", "add", ROUTE_SUBNET, "via", "203.0.113.1"]);
    outside.ip_ok(&["route", "add", "172.17.0.0/16", "via", "203.0.113.1"]);
    outside.ip_ok(&["route", "add", NAT_SUBNET, "via", "203.0.113.1"]);

    // Docker first: its bridge, a container, its rules.
    host.ns.ip_ok(&["link", "add", "docker0", "type", "bridge"]);
    host.ns.ip_ok(&["addr", "add", "172.17.0.1/16", "dev", "docker0"]);
    host.ns.ip_ok(&["link", "set", "docker0", "up"]);
    let ctr = host.attach_by_hand("docker0", "ctr", "vethctr");
    ctr.ip_ok(&["addr", "add", "172.17.0.2/16", "dev", "eth0"]);
    ctr.ip_ok(&["route", "add", "default", "via", "172.17.0.1"]);
    host.ns.exec_ok("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"]);
    iptables_restore(&host.ns, DOCKER_RULES);
    // What Docker's policy does before lanyard exists: nothing reaches the
    // container from outside, the container reaches the outside.
    assert!(ping(&outside, CONTAINER, 1, 2).none_replied(), "the container is reachable from outside before lanyard");
    assert!(ping(&ctr, OUTSIDE, 2, 4).all_replied(), "the container cannot go out before lanyard");

    host.cli_ok(&["net", "create", "natnet", "--mode", "nat", "--subnet", NAT_SUBNET]);
    host.cli_ok(&["net", "create", "rnet", "--mode", "route", "--subnet", ROUTE_SUBNET]);
    let vm1 = host.attach_vm("natnet", "vm1", &[]);
    let vm2 = host.attach_vm("natnet", "vm2", &[]);
    let vm3 = host.attach_vm("rnet", "vm3", &[]);
    vm1.configure_static(24, NAT_GW);
    vm2.configure_static(24, NAT_GW);
    vm3.configure_static(24, ROUTE_GW);
    wait_for_docker_user_rules(&host, "after lanyard created its networks");

    let check = |when: &str| {
        let ok = |from: &Netns, to: &str, what: &str| {
            let p = ping(from, to, 2, 4);
            assert!(p.all_replied(), "{when}: {what} failed:\n{}", p.output);
        };
        let refused = |from: &Netns, to: &str, what: &str| {
            let p = ping(from, to, 1, 2);
            assert!(p.none_replied(), "{when}: {what} got through:\n{}", p.output);
        };
        ok(&vm1.ns, &vm2.ip().to_string(), "vm1 -> vm2 on one bridge (bridge netfilter)");
        ok(&vm1.ns, OUTSIDE, "vm1 -> outside (nat)");
        ok(&vm3.ns, OUTSIDE, "vm3 -> outside (route)");
        ok(&outside, &vm3.ip().to_string(), "outside -> vm3 (route)");
        refused(&outside, &vm1.ip().to_string(), "outside -> vm1 (nat allows no inbound)");
        refused(&vm1.ns, CONTAINER, "vm1 -> the container (Docker publishes nothing)");
        refused(&vm3.ns, CONTAINER, "vm3 -> the container (Docker publishes nothing)");
        refused(&outside, CONTAINER, "outside -> the container");
        ok(&ctr, OUTSIDE, "the container -> outside (Docker's own policy)");
    };
    check("with Docker's rules");

    // Docker (or an operator) flushes DOCKER-USER: lanyard puts its rules back.
    host.ns.exec_ok("iptables", &["-F", "DOCKER-USER"]);
    host.ns.exec_ok("iptables", &["-A", "DOCKER-USER", "-j", "RETURN"]);
    wait_for_docker_user_rules(&host, "after DOCKER-USER was flushed");
    check("after DOCKER-USER was flushed");

    // A restart finds them in place and adds none.
    host.daemon.restart();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lanyard_rules_in_docker_user(&host).len(), 3, "a restart duplicated lanyard's rules");
    let status = host.cli_json(&["status"]);
    assert_eq!(status["coexistence"]["docker_user_rules"], true, "{status}");
    check("after a daemon restart");
}

#[test]
fn a_foreign_drop_policy_is_named_loudly() {
    if !privileged("a_foreign_drop_policy_is_named_loudly", NAT_TOOLS) {
        return;
    }
    let host = Host::start();
    host.cli_ok(&["net", "create", "natnet", "--mode", "nat", "--subnet", NAT_SUBNET]);
    host.ns.exec_ok("nft", &["add", "table", "inet", "strict"]);
    host.ns.exec_ok(
        "nft",
        &["add", "chain", "inet", "strict", "fw", "{ type filter hook forward priority 0; policy drop; }"],
    );
    let named = poll(Duration::from_secs(3), Duration::from_millis(50), || {
        let status = host.cli_json(&["status"]);
        let drops = status["coexistence"]["forward_drops"].to_string();
        drops.contains("inet strict fw").then_some(status)
    });
    assert!(named.is_some(), "status does not name the foreign drop chain:\n{}", host.daemon.log());
    let log = host.daemon.log();
    assert!(log.contains("inet strict fw") && log.contains("docs/coexistence.md"), "no warning in the log:\n{log}");
}
