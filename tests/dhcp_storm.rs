//! DHCP under a boot storm: the daemon is SIGKILLed while thousands of
//! clients ask for leases at once, and restarted. Every lease a client saw
//! ACKed must be in the store afterwards, and the restarted server must
//! answer that client identically (the same address offered and ACKed).
//! An ACK sent before its lease is durable, or a commit that loses part of
//! a batch, fails here.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Clients in the storm, and how many exchanges are in flight at once.
const CLIENTS: u32 = 4000;
const WINDOW: usize = 256;
/// ACKs seen before the kill: well into the storm.
const KILL_AFTER_ACKS: usize = 400;

fn mac_text(m: &MacAddr) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// How the daemon dies in the middle of the storm.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// SIGKILL from outside once the storm is well under way: wherever
    /// the daemon happens to be.
    FromOutside,
    /// The daemon SIGKILLs itself at a crash point (debug builds,
    /// `src/fault.rs`), the N-th time it passes it: `lease-commit` is just
    /// before a batch of leases is written, `lease-reply` just after,
    /// before its ACKs go out. Deterministic: an ACK sent before its
    /// lease is durable is lost at `lease-commit`.
    At(&'static str, u32),
}

/// Runs a storm, kills the daemon as `kill` says, restarts it, and checks
/// that every ACKed lease is stored and answered identically.
fn storm_kill_restart(kill: Kill) {
    let mut host = Host::start();
    host.cli_ok(&[
        "net",
        "create",
        "storm",
        "--mode",
        "isolated",
        "--subnet",
        "10.61.0.0/16",
        "--dhcp-range",
        "10.61.1.0-10.61.40.255",
    ]);
    let bridge = field(&host.cli_json(&["net", "show", "storm"]), "bridge").to_string();
    let clients = host.attach_by_hand(&bridge, "storm", "lystorm0");
    clients.ip_ok(&["addr", "add", "10.61.255.250/16", "dev", "eth0"]);
    if let Kill::At(point, n) = kill {
        host.daemon.set_env(CRASH_ENV, Some(&format!("{point}#{n}")));
        host.daemon.restart();
    }

    let macs = storm_macs(1, CLIENTS);
    let storm = Storm::start(&clients, "eth0", macs, WINDOW, Duration::from_secs(120));
    match kill {
        Kill::FromOutside => {
            let reached = poll(Duration::from_secs(90), Duration::from_millis(5), || {
                (storm.acks() >= KILL_AFTER_ACKS).then_some(())
            });
            assert!(reached.is_some(), "the storm got only {} ACKs in 90 s; log:\n{}", storm.acks(), host.daemon.log());
            assert!(signal(host.daemon.pid(), "KILL"), "SIGKILL the daemon");
            assert!(host.daemon.exited(Duration::from_secs(10)).is_some(), "the daemon survived SIGKILL");
        }
        Kill::At(point, n) => {
            assert!(
                host.daemon.exited(Duration::from_secs(90)).is_some(),
                "{point}#{n} not reached in 90 s ({} ACKs); log:\n{}",
                storm.acks(),
                host.daemon.log()
            );
            assert!(host.daemon.log().contains(&format!("crash point {point}#{n} reached")), "{}", host.daemon.log());
            host.daemon.set_env(CRASH_ENV, None);
        }
    }
    // Replies already on the wire still arrive; then the storm stops.
    std::thread::sleep(Duration::from_millis(300));
    let before = storm.finish();
    assert!(!before.acked.is_empty(), "{kill:?}: no ACK before the kill");
    assert!(before.acked.len() < CLIENTS as usize, "{kill:?}: the kill came after the storm, not during it");

    host.daemon.respawn();
    let listed = host.cli_json(&["lease", "list", "storm"]);
    let stored: BTreeMap<String, String> = listed
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l: &Value| Some((l["mac"].as_str()?.to_string(), l["ip"].as_str()?.to_string())))
        .collect();
    let lost: Vec<String> = before
        .acked
        .iter()
        .filter(|(mac, ip)| stored.get(&mac_text(mac)) != Some(&ip.to_string()))
        .map(|(mac, ip)| format!("{} {ip} (store: {:?})", mac_text(mac), stored.get(&mac_text(mac))))
        .collect();
    assert!(
        lost.is_empty(),
        "{kill:?}: {} of {} ACKed leases not in the store: {:?}",
        lost.len(),
        before.acked.len(),
        &lost[..lost.len().min(10)]
    );

    // The same clients again: each is offered and ACKed what it had.
    let again =
        Storm::start(&clients, "eth0", before.acked.keys().copied().collect(), WINDOW, Duration::from_secs(60)).wait();
    let differ: Vec<String> = before
        .acked
        .iter()
        .filter(|(mac, ip)| again.offered.get(*mac) != Some(*ip) || again.acked.get(*mac) != Some(*ip))
        .map(|(mac, ip)| {
            format!(
                "{} had {ip}, offered {:?}, ACKed {:?}",
                mac_text(mac),
                again.offered.get(mac),
                again.acked.get(mac)
            )
        })
        .collect();
    assert!(
        differ.is_empty(),
        "{kill:?}: {} clients answered differently after the restart: {:?}",
        differ.len(),
        &differ[..differ.len().min(10)]
    );
    eprintln!(
        "storm, {kill:?}: {} ACKed before the kill ({} messages sent), all in the store and answered identically after restart",
        before.acked.len(),
        before.sent
    );
}

const CRASH_ENV: &str = "LANYARD_CRASH_AT";

#[test]
fn every_acked_lease_survives_sigkill_during_a_storm() {
    if !privileged("every_acked_lease_survives_sigkill_during_a_storm", &["ip", "nft", "kill"]) {
        return;
    }
    storm_kill_restart(Kill::FromOutside);
}

#[test]
fn every_acked_lease_survives_a_crash_at_each_commit_step_of_a_storm() {
    let test = "every_acked_lease_survives_a_crash_at_each_commit_step_of_a_storm";
    if !privileged(test, &["ip", "nft", "kill"]) || !common::crash_points(test) {
        return;
    }
    for point in ["lease-commit", "lease-reply"] {
        storm_kill_restart(Kill::At(point, 20));
    }
}
