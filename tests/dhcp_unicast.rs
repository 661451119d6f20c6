//! Replies to a client without an address go to that client alone: the
//! server sends OFFER and ACK as frames to the client's MAC (headers of its
//! own, through a packet socket on the bridge), so in a boot storm no guest
//! receives every other guest's replies. udhcpc reads them with a raw
//! socket and checks the IPv4 and UDP checksums. A client that sets the
//! broadcast flag still gets broadcasts.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn replies_to_a_client_without_an_address_are_unicast_unless_it_asks_for_broadcast() {
    if !privileged(
        "replies_to_a_client_without_an_address_are_unicast_unless_it_asks_for_broadcast",
        &["ip", "nft", "udhcpc"],
    ) {
        return;
    }
    let host = Host::start();
    host.cli_ok(&["net", "create", "uni", "--mode", "isolated", "--subnet", "10.62.0.0/24"]);
    let bridge = field(&host.cli_json(&["net", "show", "uni"]), "bridge").to_string();
    let client = host.attach_by_hand(&bridge, "uni", "lyuni0");
    let bystander_ns = host.attach_by_hand(&bridge, "near", "lynear0");
    bystander_ns.ip_ok(&["addr", "add", "10.62.0.250/24", "dev", "eth0"]);
    let bystander = Bystander::start(&bystander_ns, "eth0");

    // udhcpc does not set the broadcast flag (no -B).
    let lease = udhcpc(&client, "eth0", None).unwrap_or_else(|e| panic!("no lease: {e}"));
    assert!(lease.ip.to_string().starts_with("10.62.0."), "{lease:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(bystander.heard(), 0, "the bystander overheard the client's OFFER/ACK");

    // A client that asks for broadcast (the storm's clients do) gets it,
    // and then the bystander hears it too: the listener works.
    let others = host.attach_by_hand(&bridge, "bcast", "lybcast0");
    others.ip_ok(&["addr", "add", "10.62.0.251/24", "dev", "eth0"]);
    let storm = Storm::start(&others, "eth0", storm_macs(1, 3), 3, Duration::from_secs(20)).wait();
    assert_eq!(storm.acked.len(), 3, "{storm:?}");
    let heard = poll(Duration::from_secs(5), Duration::from_millis(50), || (bystander.heard() >= 6).then_some(()));
    assert!(heard.is_some(), "broadcast OFFERs and ACKs reach every guest; heard {}", bystander.heard());
}
