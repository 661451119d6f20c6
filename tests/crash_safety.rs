//! Crash safety: the daemon is killed with SIGKILL at every crash point of
//! every operation (network create, delete, start, stop; port create, batch
//! create, delete; lease commit) and restarted at once. Afterwards the
//! kernel must hold exactly what the store says (no orphan link, no missing
//! one, ports on their bridges, lanyard's set elements right), and no lease
//! may be lost or doubled.
//!
//! The crash points are compiled into debug builds only (`src/fault.rs`):
//! `LANYARD_CRASH_AT=NAME#N` kills the daemon the N-th time it passes NAME.
//! For each operation and point, N counts up until the operation completes
//! without reaching the point.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::Value;

const CRASH_ENV: &str = "LANYARD_CRASH_AT";
const POINTS: &[&str] = &["kernel-firewall", "kernel-op", "store", "memory"];
/// Most hits of one point any operation here reaches.
const MAX_HITS: usize = 12;

/// The names of a JSON array's string field.
fn names(v: &Value, key: &str) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|x| x[key].as_str().map(String::from)).collect()
}

/// Asserts that the kernel holds exactly what the (restarted) daemon's
/// state says.
fn check_consistent(host: &Host, what: &str) {
    let nets = host.cli_json(&["net", "list", "--all"]);
    let ports = host.cli_json(&["port", "list"]);
    let nets = nets.as_array().cloned().unwrap_or_default();
    let ports = ports.as_array().cloned().unwrap_or_default();
    let active: Vec<&Value> = nets.iter().filter(|n| n["state"] == "active").collect();
    let mut wanted: BTreeSet<String> = active.iter().filter_map(|n| n["bridge"].as_str().map(String::from)).collect();
    wanted.extend(ports.iter().filter_map(|p| p["ifname"].as_str().map(String::from)));
    let links = host.ns.links();
    let owned: BTreeSet<String> = links
        .iter()
        .filter(|l| l["ifalias"].as_str().is_some_and(|a| a.starts_with("lanyard:")))
        .filter_map(|l| l["ifname"].as_str().map(String::from))
        .collect();
    assert_eq!(owned, wanted, "{what}: lanyard's links differ from its state\nnets {nets:?}\nports {ports:?}");
    for p in &ports {
        let net = nets.iter().find(|n| n["name"] == p["net"]).unwrap_or_else(|| panic!("{what}: port of no net: {p}"));
        let link = host.ns.link(field(p, "ifname")).unwrap_or_else(|| panic!("{what}: no link for {p}"));
        let master = link["master"].as_str();
        if net["state"] == "active" {
            assert_eq!(master, net["bridge"].as_str(), "{what}: port {} not on its bridge", field(p, "id"));
        } else {
            assert_eq!(master, None, "{what}: port {} on a bridge of a stopped network", field(p, "id"));
        }
    }
    for n in &active {
        let bridge = field(n, "bridge");
        let cidr = format!("{}/{}", field(n, "gateway"), field(n, "subnet").split('/').nth(1).unwrap_or("24"));
        assert!(host.ns.ipv4_addrs(bridge).contains(&cidr), "{what}: {bridge} lacks its gateway {cidr}");
    }
    // lanyard's table: the bridges set holds the active networks' bridges.
    let listing = host.ns.exec("nft", &["-j", "list", "set", "inet", "lanyard", "bridges"]);
    let elements: BTreeSet<String> = if listing.status.success() {
        let v: Value = serde_json::from_slice(&listing.stdout).expect("nft json");
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i.get("set"))
            .flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e.as_str().map(String::from))
            .collect()
    } else {
        BTreeSet::new()
    };
    let want: BTreeSet<String> = active.iter().filter_map(|n| n["bridge"].as_str().map(String::from)).collect();
    assert_eq!(elements, want, "{what}: lanyard's bridges set differs from the active networks");
}

/// The state every run starts from: network `a` (nat) with one tap port,
/// and, for `stopped`, `a` stopped.
fn base(stopped: bool) -> (Host, Value) {
    let host = Host::start();
    host.cli_ok(&["net", "create", "a", "--mode", "nat", "--subnet", "10.50.0.0/24"]);
    let port = host.cli_json(&["port", "create", "--net", "a", "--vm", "vm1"]);
    if stopped {
        host.cli_ok(&["net", "stop", "a"]);
    }
    (host, port)
}

/// Runs `op` against a fresh base state once per (point, hit) until it
/// completes without reaching the point; after each crash the daemon is
/// restarted and the state checked. Returns how many crashes were tried.
fn crash_everywhere(name: &str, stopped: bool, op: impl Fn(&Host, &Value) -> std::process::Output) -> usize {
    let mut crashes = 0;
    for point in POINTS {
        for n in 1..=MAX_HITS {
            let (mut host, port) = base(stopped);
            host.daemon.set_env(CRASH_ENV, Some(&format!("{point}#{n}")));
            host.daemon.restart();
            let out = op(&host, &port);
            match host.daemon.exited(Duration::from_secs(5)) {
                None => {
                    assert!(out.status.success(), "{name}: failed without a crash: {}", stderr(&out));
                    check_consistent(&host, &format!("{name}, no crash at {point}#{n}"));
                    break;
                }
                Some(_) => {
                    crashes += 1;
                    assert_eq!(out.status.code(), Some(5), "{name}: the CLI must say the daemon went away");
                    let log = host.daemon.log();
                    assert!(
                        log.contains(&format!("crash point {point}#{n} reached")),
                        "{name}: died elsewhere:\n{log}"
                    );
                    host.daemon.set_env(CRASH_ENV, None);
                    host.daemon.respawn();
                    check_consistent(&host, &format!("{name}, crashed at {point}#{n}"));
                }
            }
            assert!(n < MAX_HITS, "{name}: {point} was still reached at hit {MAX_HITS}");
        }
    }
    eprintln!("{name}: {crashes} crashes, each restarted consistent");
    crashes
}

fn skip(test: &str) -> bool {
    !privileged(test, NAT_TOOLS) || !common::crash_points(test)
}

#[test]
fn crash_during_network_create() {
    if skip("crash_during_network_create") {
        return;
    }
    let n = crash_everywhere("net create", false, |h, _| {
        h.cli(&["net", "create", "b", "--mode", "route", "--subnet", "10.51.0.0/24"])
    });
    assert!(n >= 5, "only {n} crash points reached");
}

#[test]
fn crash_during_network_stop_start_delete() {
    if skip("crash_during_network_stop_start_delete") {
        return;
    }
    let n = crash_everywhere("net stop", false, |h, _| h.cli(&["net", "stop", "a"]))
        + crash_everywhere("net start", true, |h, _| h.cli(&["net", "start", "a"]))
        + crash_everywhere("net delete", false, |h, _| h.cli(&["net", "delete", "a", "--force"]));
    assert!(n >= 12, "only {n} crash points reached");
}

#[test]
fn crash_during_port_create_batch_delete() {
    if skip("crash_during_port_create_batch_delete") {
        return;
    }
    let batch = r#"[{"net": "a", "vm": "b1"}, {"net": "a", "vm": "b2"}, {"net": "a", "vm": "b3"}]"#;
    let n = crash_everywhere("port create", false, |h, _| h.cli(&["port", "create", "--net", "a", "--vm", "vm2"]))
        + crash_everywhere("port create-batch", false, |h, _| {
            let f = h.daemon.state_dir().with_file_name("batch.json");
            std::fs::write(&f, batch).expect("batch file");
            h.cli(&["port", "create-batch", &f.display().to_string()])
        })
        + crash_everywhere("port delete", false, |h, p| h.cli(&["port", "delete", field(p, "id")]));
    assert!(n >= 12, "only {n} crash points reached");
}

/// A dynamic client's lease across a crash before and after its commit:
/// afterwards the client holds one lease, the store has exactly that one.
#[test]
fn crash_during_lease_commit() {
    if skip("crash_during_lease_commit") {
        return;
    }
    for point in ["lease-commit", "lease-reply"] {
        let (mut host, _) = base(false);
        let bridge = field(&host.cli_json(&["net", "show", "a"]), "bridge").to_string();
        let client = host.attach_by_hand(&bridge, "dyn", "lydyn0");
        host.daemon.set_env(CRASH_ENV, Some(&format!("{point}#1")));
        host.daemon.restart();
        // The first exchange kills the daemon; udhcpc gives up (no ACK).
        let _ = udhcpc(&client, "eth0", None);
        assert!(host.daemon.exited(Duration::from_secs(5)).is_some(), "{point}: the daemon did not crash");
        host.daemon.set_env(CRASH_ENV, None);
        host.daemon.respawn();
        let lease = udhcpc(&client, "eth0", None).unwrap_or_else(|e| panic!("{point}: no lease after restart: {e}"));
        let mac = client.mac("eth0");
        let leases = host.cli_json(&["lease", "list", "a"]);
        let mine: Vec<&Value> = leases.as_array().into_iter().flatten().filter(|l| l["mac"] == mac.as_str()).collect();
        assert_eq!(mine.len(), 1, "{point}: leases of the client: {leases}");
        assert_eq!(mine[0]["ip"], lease.ip.to_string(), "{point}: the client and the store disagree");
        check_consistent(&host, &format!("lease, crashed at {point}"));
        // And the store agrees after one more restart.
        host.daemon.restart();
        let again = host.cli_json(&["lease", "list", "a"]);
        assert_eq!(
            names(&again, "ip").into_iter().filter(|ip| *ip == lease.ip.to_string()).count(),
            1,
            "{point}: {again}"
        );
    }
}
