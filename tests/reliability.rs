//! Reliability of a running network under ordinary operations that used to
//! hurt bystanders, in throw-away namespaces.
//!
//! ```text
//!   vm1 ─┐
//!        ├─ veth ports ── lybrN 192.168.122.1/24 (lanyard)
//!   vm2 ─┘
//! ```

mod common;

use std::time::Duration;

use common::*;

const NET: &str = "default";
const SUBNET: &str = "192.168.122.0/24";
const GATEWAY: &str = "192.168.122.1";

/// Deleting the port whose MAC is the lowest on the bridge must not move
/// the gateway's MAC: without a pinned MAC the kernel re-derives the
/// bridge's address from its ports, and every other guest loses its
/// gateway until its ARP entry expires (30-46 s seen).
#[test]
fn deleting_a_port_never_moves_the_gateway_mac() {
    if !privileged("deleting_a_port_never_moves_the_gateway_mac", NAT_TOOLS) {
        return;
    }
    let host = Host::start();
    let net = host.cli_json(&["net", "create", NET, "--mode", "nat", "--subnet", SUBNET]);
    let bridge = field(&net, "bridge").to_string();
    let pinned = field(&net, "gateway_mac").to_string();
    assert!(is_mac(&pinned), "net create must report the gateway MAC: {net}");
    let vms: Vec<Vm> = (1..=3).map(|i| host.attach_vm(NET, &format!("vm{i}"), &[])).collect();
    for vm in &vms {
        vm.configure_static(24, GATEWAY);
    }
    assert_eq!(host.ns.mac(&bridge), pinned, "the bridge does not carry the network's gateway MAC");

    // The port the kernel would take the bridge's MAC from: the lowest.
    let lowest = vms.iter().min_by_key(|vm| host.ns.mac(&vm.host_ifname())).expect("three VMs");
    let watcher = vms.iter().find(|vm| vm.name != lowest.name).expect("another VM");
    assert!(ping(&watcher.ns, GATEWAY, 2, 5).all_replied(), "no path to the gateway before the delete");

    let job = PingJob::start(&watcher.ns, GATEWAY, &["-i", "0.05", "-c", "60", "-W", "1"]);
    std::thread::sleep(Duration::from_millis(500));
    host.cli_ok(&["port", "delete", &lowest.id()]);
    let p = job.wait(Duration::from_secs(30));
    assert_eq!(host.ns.mac(&bridge), pinned, "deleting a port moved the gateway MAC");
    assert!(
        p.all_replied(),
        "{} of {} pings to the gateway lost around the delete:\n{}",
        p.transmitted - p.received,
        p.transmitted,
        p.output
    );
}

/// A full disk: the state directory is a 1 MB tmpfs (in the daemon's own
/// mount namespace), filled up while VMs run. A port's VM renews its fixed
/// lease every time (its binding is the port, already stored); whatever a
/// dynamic client is told is what the store holds (never memory ahead of
/// disk); a refused `port create` leaves nothing behind; the log says the
/// disk is the problem; and all is well again once space is back.
#[test]
fn a_full_disk_keeps_running_vms_leased() {
    let tools = [NAT_TOOLS, &["unshare", "nsenter", "dd"]].concat();
    if !privileged("a_full_disk_keeps_running_vms_leased", &tools) {
        return;
    }
    let ns = Netns::new("host");
    let daemon = Daemon::start_on_tmpfs(&ns, "1m");
    let mut host = Host { daemon, ns };
    let net = host.cli_json(&["net", "create", NET, "--mode", "nat", "--subnet", SUBNET]);
    let bridge = field(&net, "bridge").to_string();
    let vm = host.attach_vm(NET, "vm1", &[]);
    udhcpc(&vm.ns, "eth0", None).unwrap_or_else(|e| panic!("no lease before the disk fills: {e}"));

    let filler = host.daemon.state_dir().join("filler");
    let filler = filler.display().to_string();
    let _ = host.daemon.in_its_mounts("dd", &["if=/dev/zero", &format!("of={filler}"), "bs=4k"]);
    let df = host.daemon.in_its_mounts("df", &["-k", &host.daemon.state_dir().display().to_string()]);
    assert!(stdout(&df).contains("100%"), "the state directory is not full:\n{}", stdout(&df));

    for i in 0..3 {
        let lease = udhcpc(&vm.ns, "eth0", None)
            .unwrap_or_else(|e| panic!("renewal {i} on a full disk failed: {e}\n{}", host.daemon.log()));
        assert_eq!(lease.ip, vm.ip());
    }

    // A dynamic client: whatever it gets must be what the store holds.
    let client = host.attach_by_hand(&bridge, "dyn", "lydyn0");
    let got = udhcpc(&client, "eth0", None).ok();
    let mac = client.mac("eth0");
    let listed = |host: &Host| {
        host.cli_json(&["lease", "list", NET])
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| l["mac"] == mac.as_str())
            .filter_map(|l| l["ip"].as_str().map(String::from))
            .collect::<Vec<_>>()
    };
    let in_memory = listed(&host);
    match &got {
        Some(lease) => assert_eq!(in_memory, vec![lease.ip.to_string()], "ACKed but not listed"),
        None => assert!(in_memory.is_empty(), "memory holds a lease the client never got: {in_memory:?}"),
    }

    // Provisioning: a port create either works or is refused cleanly.
    let links_before = host.ns.links().len();
    let out = host.cli(&["port", "create", "--net", NET, "--vm", "vm2"]);
    if !out.status.success() {
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "one error line: {err}");
        assert_eq!(host.ns.links().len(), links_before, "a refused port create left a link: {err}");
    }
    eprintln!(
        "on a full disk: the dynamic client got {:?}; port create: {} {}",
        got.as_ref().map(|l| l.ip),
        out.status,
        stderr(&out).trim()
    );
    if got.is_none() || !out.status.success() {
        let log = host.daemon.log();
        // The DHCP path's line, SQLite's own words, or the store's typed
        // error (a fold of the lease journal before the write may be what
        // hits the full disk first).
        assert!(
            ["disk full?", "database or disk is full", "disk is full"].iter().any(|m| log.contains(m)),
            "nothing says why:\n{log}"
        );
    }

    // Space comes back: everything works, and a restart finds what was
    // promised.
    let _ = host.daemon.in_its_mounts("rm", &["-f", &filler]);
    let lease = udhcpc(&client, "eth0", None).unwrap_or_else(|e| panic!("no lease once space is back: {e}"));
    host.cli_ok(&["port", "create", "--net", NET, "--vm", "vm3"]);
    host.daemon.restart();
    assert_eq!(listed(&host), vec![lease.ip.to_string()], "the store lost the client's lease");
}

/// Two daemons on one state directory would both serve DHCP on its bridges
/// and undo each other's changes: the second is refused before it does
/// anything (even on another socket), in one line, and the first serves on.
#[test]
fn a_second_daemon_on_the_same_state_directory_is_refused() {
    if !privileged("a_second_daemon_on_the_same_state_directory_is_refused", NAT_TOOLS) {
        return;
    }
    let host = Host::start();
    host.cli_ok(&["net", "create", NET, "--mode", "nat", "--subnet", SUBNET]);
    let other = host.daemon.state_dir().with_file_name("other.sock");
    let state = host.daemon.state_dir().display().to_string();
    let mut second =
        host.ns.command(LANYARD, &["--socket", &other.display().to_string(), "daemon", "--state-dir", &state]);
    let o = run(&mut second, Duration::from_secs(30));
    let err = stderr(&o);
    assert!(!o.status.success(), "the second daemon ran: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: another lanyard daemon (pid "), "{err}");
    assert!(err.contains(&format!("uses the state directory {state}")), "{err}");
    assert!(!other.exists(), "the second daemon made its socket");
    assert_eq!(host.cli_json(&["net", "list"]).as_array().map(Vec::len), Some(1), "the first serves on");
}
