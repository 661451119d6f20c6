//! The in-process nftables driver and monitor against the real kernel.
//!
//! Each test runs in a thread of its own that first moves into a new,
//! empty network namespace (`unshare(CLONE_NEWNET)`); the driver's
//! libnftables context, the monitor's socket and every `nft` process the
//! test starts to check results live there, and the namespace disappears
//! with the thread, also when the test fails. Around every test the root
//! namespace's ruleset is read from the test's own thread and must be
//! unchanged.
//!
//! Needs root (and `nft`); see `common::privileged`.
//!
//! `measure` (ignored) prints timings:
//! `cargo test --release --test nft_driver -- --ignored --nocapture measure`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lanyard::dataplane::nft::ffi::{Context, Output};
use lanyard::dataplane::nft::{NftDriver, NftMonitor};
use lanyard::kernel::firewall::{Action, Field, Match, Rule, Value};
use lanyard::kernel::{Element, ElementChange, FirewallChange, KernelError, KernelEvent, Table};
use lanyard::model::grants::{Grant, Proto};
use lanyard::model::{NetState, Network, NetworkSpec};
use lanyard::planner::firewall::{table, table_id};
use lanyard::planner::floating::Association;
use lanyard::planner::forwards::LiveForward;
use serde_json::Value as Json;

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

fn may_run(test: &str) -> bool {
    common::privileged(test, &["nft"])
}

/// The root namespace's ruleset, read from the calling (test) thread.
fn root_ruleset() -> String {
    nft(&["list", "ruleset"])
}

/// Runs `test` in a new network namespace of its own (see the module
/// comment) and checks that the root namespace's ruleset did not change.
fn in_private_netns<T: Send + 'static>(test: impl FnOnce() -> T + Send + 'static) -> T {
    let before = root_ruleset();
    let outcome = std::thread::spawn(move || {
        // SAFETY: unshare(2) with CLONE_NEWNET moves only this thread into a
        // new network namespace; it takes no pointers.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        }
        test()
    })
    .join();
    assert_eq!(root_ruleset(), before, "the root namespace's ruleset changed");
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Runs nft (in the calling thread's namespace) and returns its output;
/// panics with nft's error when it fails.
fn nft(args: &[&str]) -> String {
    try_nft(args).unwrap_or_else(|e| panic!("nft {}: {e}", args.join(" ")))
}

fn try_nft(args: &[&str]) -> Result<String, String> {
    let out = Command::new(common::tool("nft")).args(args).output().expect("run nft");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Feeds `script` to `nft -f -`.
fn nft_script(script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new(common::tool("nft"))
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("run nft");
    let mut stdin = child.stdin.take().expect("piped");
    // A failed write means nft exited early; its status says why.
    let _ = stdin.write_all(script.as_bytes());
    drop(stdin);
    let out = child.wait_with_output().expect("wait for nft");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn network(name: &str, mode: &str, subnet: &str, bridge: &str) -> Network {
    let spec = NetworkSpec {
        name: name.into(),
        mode: mode.into(),
        subnet: subnet.into(),
        uplink: (mode == "bridge").then(|| "eth9".into()),
        ..Default::default()
    };
    let mut n = spec.validate(|| bridge.into()).expect("a valid network");
    n.state = NetState::Active;
    n
}

/// Networks of every mode (open and bridge ask for no rules, the rest fill
/// every set of the table).
fn every_mode() -> Vec<Network> {
    // One network's project denies egress, so that set has an element too;
    // it is another project's, which the grants of every_mode_table name.
    let denied =
        Network { egress_denied: true, project: "other".into(), ..network("nat1", "nat", "10.10.0.0/16", "lybr1") };
    vec![
        network("nat0", "nat", "192.168.122.0/24", "lybr0"),
        denied,
        network("routed", "route", "10.20.0.0/24", "lybr2"),
        network("hostonly", "host-only", "10.30.0.0/24", "lybr3"),
        network("iso", "isolated", "10.40.0.0/24", "lybr4"),
        network("open", "open", "10.50.0.0/24", "lybr5"),
        network("lan", "bridge", "10.60.0.0/24", "lybr6"),
    ]
}

fn every_mode_table() -> Table {
    // One floating IP, so that its maps and set have elements too.
    let fip = Association { fip: "203.0.113.10".parse().unwrap(), fixed: "192.168.122.5".parse().unwrap() };
    // Grants of every kind, so that their sets have elements too.
    let grant = |proto, port| Grant { from: "default".into(), to: "other".into(), proto, port };
    let grants = [grant(None, None), grant(Some(Proto::Icmp), None), grant(Some(Proto::Tcp), Some(22))];
    // Port forwards on every address and on one, TCP and UDP, so that
    // the interval map's keys of both shapes are read back too.
    let forward = |address: Option<&str>, proto, host_port, to_port| LiveForward {
        address: address.map(|a| a.parse().unwrap()),
        proto,
        host_port,
        target: "192.168.122.5".parse().unwrap(),
        to_port,
        subnet: "192.168.122.0/24".parse().unwrap(),
    };
    let forwards = [forward(None, Proto::Tcp, 8080, 80), forward(Some("198.51.100.7"), Proto::Udp, 5353, 53)];
    table(&every_mode(), &[fip], &forwards, &grants).expect("networks that need rules")
}

fn replace(driver: &NftDriver, t: &Table) {
    driver.apply(&FirewallChange::Replace(Box::new(t.clone()))).expect("replace the table");
}

fn ifname(name: &str) -> Element {
    Element::key(vec![Value::Ifname(name.into())])
}

fn change(set: &str, add: bool, element: Element) -> ElementChange {
    ElementChange { table: lanyard::planner::table_id(), set: set.into(), add, element }
}

/// The `elem` list of `nft -j list set inet lanyard NAME` (empty when the
/// set has none).
fn listed_elements(set: &str) -> Vec<Json> {
    let out = nft(&["-j", "list", "set", "inet", "lanyard", set]);
    let json: Json = serde_json::from_str(&out).expect("nft prints JSON");
    json["nftables"]
        .as_array()
        .expect("nftables list")
        .iter()
        .find_map(|i| i.get("set"))
        .and_then(|s| s.get("elem"))
        .and_then(Json::as_array)
        .cloned()
        .unwrap_or_default()
}

const FOREIGN: &str = "table inet other {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n\t\tip saddr 10.9.9.9 drop\n\t}\n}\n";

fn assert_one_line_naming(err: &KernelError, names: &[&str]) {
    let text = err.to_string();
    assert!(!text.contains('\n'), "error spans lines: {text:?}");
    for n in names {
        assert!(text.contains(n), "error does not name {n:?}: {text}");
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn replace_creates_the_table_and_fingerprint_reads_it_back() {
    if !may_run("replace_creates_the_table_and_fingerprint_reads_it_back") {
        return;
    }
    in_private_netns(|| {
        let driver = NftDriver::new().expect("driver");
        assert_eq!(driver.fingerprint(&table_id()).unwrap(), None, "no table yet");
        let t = every_mode_table();
        replace(&driver, &t);
        let listing = nft(&["list", "table", "inet", "lanyard"]);
        assert!(listing.contains(&format!("comment \"{}\"", t.fingerprint())), "{listing}");
        for set in &t.sets {
            let kind = if set.data.is_empty() { "set" } else { "map" };
            assert!(listing.contains(&format!("{kind} {} {{", set.name)), "{kind} {} missing: {listing}", set.name);
        }
        assert_eq!(driver.fingerprint(&table_id()).unwrap(), Some(t.fingerprint()));
        // A table of that name without lanyard's comment exists, with a
        // fingerprint no plan has.
        nft(&["delete", "table", "inet", "lanyard"]);
        nft(&["add", "table", "inet", "lanyard"]);
        assert_eq!(driver.fingerprint(&table_id()).unwrap(), Some(String::new()));
        nft(&["delete", "table", "inet", "lanyard"]);
        nft(&["add", "table", "inet", "lanyard", "{ comment \"someone else's\"; }"]);
        assert_eq!(driver.fingerprint(&table_id()).unwrap(), Some(String::new()));
        // Same name, another family: not lanyard's table.
        nft(&["delete", "table", "inet", "lanyard"]);
        nft_script(&format!("table ip lanyard {{ comment \"{}\"; }}\n", t.fingerprint())).unwrap();
        assert_eq!(driver.fingerprint(&table_id()).unwrap(), None);
    });
}

#[test]
fn replace_swaps_any_table_for_another_structure_atomically() {
    if !may_run("replace_swaps_any_table_for_another_structure_atomically") {
        return;
    }
    in_private_netns(|| {
        let driver = NftDriver::new().expect("driver");
        // Someone else's content in a table of lanyard's name.
        nft_script("table inet lanyard {\n\tset junk { type ipv4_addr; }\n\tchain junk { }\n}\n").unwrap();
        let first = every_mode_table();
        replace(&driver, &first);
        assert!(!nft(&["list", "table", "inet", "lanyard"]).contains("junk"));

        let second = table(&[network("iso", "isolated", "10.40.0.0/24", "lybr4")], &[], &[], &[]).unwrap();
        let mut other = second.clone();
        other.chains.retain(|c| c.name != "postrouting");
        assert_ne!(other.fingerprint(), first.fingerprint());
        replace(&driver, &other);
        assert_eq!(driver.fingerprint(&table_id()).unwrap(), Some(other.fingerprint()));
        let listing = nft(&["list", "table", "inet", "lanyard"]);
        assert!(!listing.contains("chain postrouting"), "{listing}");
        assert!(!listing.contains("lybr0"), "old elements left: {listing}");
        assert!(listing.contains("lybr4"), "{listing}");

        // A replacement nftables refuses (a rule naming a set that does
        // not exist) leaves the table as it was.
        let before = nft(&["list", "table", "inet", "lanyard"]);
        let mut broken = first.clone();
        broken.chains[0].rules.push(Rule::new(vec![Match::in_set(&[Field::Iifname], "no_such_set")], Action::Drop));
        let err = driver.apply(&FirewallChange::Replace(Box::new(broken))).unwrap_err();
        assert_one_line_naming(&err, &["replacing table inet lanyard", "no_such_set"]);
        assert_eq!(nft(&["list", "table", "inet", "lanyard"]), before, "a refused replacement changed the table");
    });
}

#[test]
fn a_foreign_table_survives_every_operation() {
    if !may_run("a_foreign_table_survives_every_operation") {
        return;
    }
    in_private_netns(|| {
        nft_script(FOREIGN).unwrap();
        let original = nft(&["list", "table", "inet", "other"]);
        let check = |after: &str| {
            assert_eq!(nft(&["list", "table", "inet", "other"]), original, "foreign table changed by {after}");
        };
        let driver = NftDriver::new().expect("driver");
        let t = every_mode_table();
        replace(&driver, &t);
        check("replace");
        driver.apply(&FirewallChange::Elements(vec![change("bridges", true, ifname("x0"))])).unwrap();
        check("element add");
        driver.apply(&FirewallChange::Elements(vec![change("bridges", false, ifname("x0"))])).unwrap();
        check("element delete");
        let _ = driver.apply(&FirewallChange::Elements(vec![change("bridges", false, ifname("absent"))]));
        check("a failed element change");
        replace(&driver, &t);
        check("a second replace");
        for set in &t.sets {
            driver.elements(&table_id(), set).unwrap();
        }
        driver.fingerprint(&table_id()).unwrap();
        check("reading");
        driver.apply(&FirewallChange::Delete(table_id())).unwrap();
        check("delete");
    });
}

#[test]
fn element_changes_show_up_in_nft() {
    if !may_run("element_changes_show_up_in_nft") {
        return;
    }
    in_private_netns(|| {
        let driver = NftDriver::new().expect("driver");
        replace(&driver, &every_mode_table());
        let nat = Element::key(vec![Value::Ifname("lybr9".into()), Value::Net("10.99.0.0/24".parse().unwrap())]);
        let old_nat =
            Element::key(vec![Value::Ifname("lybr0".into()), Value::Net("192.168.122.0/24".parse().unwrap())]);
        driver
            .apply(&FirewallChange::Elements(vec![
                change("bridges", true, ifname("lybr9")),
                change("nat_nets", false, old_nat.clone()),
                change("nat_nets", true, nat.clone()),
            ]))
            .expect("element changes");
        assert!(listed_elements("bridges").contains(&Json::from("lybr9")));
        let nat_json = serde_json::json!({"concat": ["lybr9", {"prefix": {"addr": "10.99.0.0", "len": 24}}]});
        let old_json = serde_json::json!({"concat": ["lybr0", {"prefix": {"addr": "192.168.122.0", "len": 24}}]});
        let listed = listed_elements("nat_nets");
        assert!(listed.contains(&nat_json), "{listed:?}");
        assert!(!listed.contains(&old_json), "{listed:?}");

        driver
            .apply(&FirewallChange::Elements(vec![
                change("bridges", false, ifname("lybr9")),
                change("nat_nets", false, nat),
            ]))
            .expect("element deletions");
        assert!(!listed_elements("bridges").contains(&Json::from("lybr9")));
        assert!(!listed_elements("nat_nets").contains(&nat_json));
    });
}

#[test]
fn elements_round_trip_every_set_of_the_planned_table() {
    if !may_run("elements_round_trip_every_set_of_the_planned_table") {
        return;
    }
    in_private_netns(|| {
        let driver = NftDriver::new().expect("driver");
        let t = every_mode_table();
        replace(&driver, &t);
        for set in &t.sets {
            assert!(!set.elements.is_empty(), "set {} has no elements: the test would prove nothing", set.name);
            assert_eq!(driver.elements(&table_id(), set).unwrap(), set.elements, "set {}", set.name);
        }
        // The table for fewer networks, reached with element changes only.
        let fewer = table(&every_mode()[..3], &[], &[], &[]).unwrap();
        let changes = t.element_changes(&fewer).expect("same structure");
        driver.apply(&FirewallChange::Elements(changes)).unwrap();
        for set in &fewer.sets {
            assert_eq!(driver.elements(&table_id(), set).unwrap(), set.elements, "set {}", set.name);
        }
    });
}

#[test]
fn a_refused_element_transaction_changes_nothing() {
    if !may_run("a_refused_element_transaction_changes_nothing") {
        return;
    }
    in_private_netns(|| {
        let driver = NftDriver::new().expect("driver");
        replace(&driver, &every_mode_table());
        let before = nft(&["-j", "list", "table", "inet", "lanyard"]);
        let absent_net = Element::key(vec![Value::Ifname("nope".into()), Value::Net("10.77.0.0/24".parse().unwrap())]);
        let new_net = Element::key(vec![Value::Ifname("lybr9".into()), Value::Net("10.99.0.0/24".parse().unwrap())]);
        for changes in [
            // A valid add with the deletion of an element that is not there,
            // in a hash set and in an interval set of concatenations.
            vec![change("bridges", true, ifname("lybr9")), change("bridges", false, ifname("absent"))],
            vec![change("nat_nets", true, new_net.clone()), change("nat_nets", false, absent_net.clone())],
            vec![change("bridges", true, ifname("lybr9")), change("no_such_set", true, ifname("x"))],
        ] {
            let err = driver.apply(&FirewallChange::Elements(changes.clone())).unwrap_err();
            assert_one_line_naming(&err, &["in table inet lanyard"]);
            assert_eq!(nft(&["-j", "list", "table", "inet", "lanyard"]), before, "{changes:?} left a change");
        }
    });
}

#[test]
fn delete_removes_only_lanyards_table() {
    if !may_run("delete_removes_only_lanyards_table") {
        return;
    }
    in_private_netns(|| {
        nft_script(FOREIGN).unwrap();
        let driver = NftDriver::new().expect("driver");
        replace(&driver, &every_mode_table());
        driver.apply(&FirewallChange::Delete(table_id())).expect("delete");
        assert_eq!(driver.fingerprint(&table_id()).unwrap(), None);
        assert_eq!(nft(&["list", "tables"]), "table inet other\n");
        // Deleting a table that is already gone reaches the same state.
        driver.apply(&FirewallChange::Delete(table_id())).expect("delete an absent table");
        assert_eq!(nft(&["list", "tables"]), "table inet other\n");
    });
}

/// Events until `want` shows up or 1 s passes.
fn wait_for(monitor: &mut NftMonitor, want: &KernelEvent) -> Vec<KernelEvent> {
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut seen = Vec::new();
    while Instant::now() < deadline && !seen.contains(want) {
        seen.extend(monitor.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("monitor"));
    }
    seen
}

fn drain(monitor: &mut NftMonitor) {
    while !monitor.recv_timeout(Duration::from_millis(50)).expect("monitor").is_empty() {}
}

#[test]
fn the_monitor_reports_changes_by_other_processes() {
    if !may_run("the_monitor_reports_changes_by_other_processes") {
        return;
    }
    in_private_netns(|| {
        let mut monitor = NftMonitor::open().expect("monitor");
        assert!(monitor.recv_timeout(Duration::from_millis(20)).unwrap().is_empty(), "events from nowhere");
        let driver = NftDriver::new().expect("driver");
        let lanyard = KernelEvent::Firewall { table: table_id() };
        let t = every_mode_table();
        replace(&driver, &t);
        assert!(wait_for(&mut monitor, &lanyard).contains(&lanyard), "lanyard's own replace");
        drain(&mut monitor);
        for (what, args) in [
            ("add element", &["add", "element", "inet", "lanyard", "bridges", "{ \"x9\" }"][..]),
            ("delete table", &["delete", "table", "inet", "lanyard"][..]),
            ("flush ruleset", &["flush", "ruleset"][..]),
        ] {
            if driver.fingerprint(&table_id()).unwrap().is_none() {
                replace(&driver, &t);
                drain(&mut monitor);
            }
            nft(args);
            let seen = wait_for(&mut monitor, &lanyard);
            assert!(seen.contains(&lanyard), "nft {what}: saw {seen:?}");
        }
        // Someone else's table is reported under its own name.
        nft_script(FOREIGN).unwrap();
        let other = KernelEvent::Firewall {
            table: lanyard::kernel::firewall::TableId {
                family: lanyard::kernel::firewall::Family::Inet,
                name: "other".into(),
            },
        };
        assert!(wait_for(&mut monitor, &other).contains(&other));
    });
}

#[test]
fn a_monitor_that_falls_behind_reports_overflow() {
    if !may_run("a_monitor_that_falls_behind_reports_overflow") {
        return;
    }
    in_private_netns(|| {
        let mut monitor = NftMonitor::with_receive_buffer(16 << 10).expect("monitor");
        let driver = NftDriver::new().expect("driver");
        replace(&driver, &every_mode_table());
        // Thousands of element notifications, none read meanwhile.
        let adds = (0..5000).map(|i| change("bridges", true, ifname(&format!("o{i}")))).collect();
        driver.apply(&FirewallChange::Elements(adds)).unwrap();
        let events = monitor.recv_timeout(Duration::from_secs(1)).unwrap();
        assert!(events.contains(&KernelEvent::Overflow), "{events:?}");
        // The socket keeps working afterwards.
        drain(&mut monitor);
        nft(&["add", "element", "inet", "lanyard", "bridges", "{ \"fresh\" }"]);
        let lanyard = KernelEvent::Firewall { table: table_id() };
        assert!(wait_for(&mut monitor, &lanyard).contains(&lanyard));
    });
}

#[test]
fn driver_errors_are_one_line_and_name_what_failed() {
    if !may_run("driver_errors_are_one_line_and_name_what_failed") {
        return;
    }
    in_private_netns(|| {
        let driver = NftDriver::new().expect("driver");
        let t = every_mode_table();
        // No table yet: element changes and reads fail.
        let err = driver.apply(&FirewallChange::Elements(vec![change("bridges", true, ifname("a"))])).unwrap_err();
        assert!(matches!(err, KernelError::Firewall { .. }), "{err:?}");
        assert_one_line_naming(&err, &["1 element additions and 0 deletions in table inet lanyard", "bridges"]);
        let err = driver.elements(&table_id(), &t.sets[0]).unwrap_err();
        assert_one_line_naming(&err, &["set bridges of table inet lanyard"]);
        replace(&driver, &t);
        let mut missing = t.sets[0].clone();
        missing.name = "no_such_set".into();
        let err = driver.elements(&table_id(), &missing).unwrap_err();
        assert_one_line_naming(&err, &["no_such_set"]);
        // An element the declared types cannot read is named.
        nft(&["add", "element", "inet", "lanyard", "masq_nets", "{ 10.1.0.1-10.1.0.9 }"]);
        let mut as_ifnames = t.set("masq_nets").unwrap().clone();
        as_ifnames.key = vec![lanyard::kernel::firewall::DataType::Ifname];
        let err = driver.elements(&table_id(), &as_ifnames).unwrap_err();
        assert_one_line_naming(&err, &["masq_nets", "10.1.0.1"]);
        // ... while the declared types read it as the range it is.
        let read = driver.elements(&table_id(), t.set("masq_nets").unwrap()).unwrap();
        let range = Element::key(vec![Value::Range("10.1.0.1".parse().unwrap(), "10.1.0.9".parse().unwrap())]);
        assert!(read.contains(&range), "{read:?}");
    });
}

// ---------------------------------------------------------------------------
// Measurements (printed, not asserted)
// ---------------------------------------------------------------------------

/// Runs `round` `rounds` times (each after `setup`, which is not timed)
/// and prints the median and the fastest time.
fn bench(label: &str, rounds: usize, mut setup: impl FnMut(), mut round: impl FnMut()) {
    let mut times: Vec<Duration> = (0..rounds)
        .map(|_| {
            setup();
            let start = Instant::now();
            round();
            start.elapsed()
        })
        .collect();
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("{label:<62} median {:>9.3} ms   min {:>9.3} ms   ({rounds} runs)", ms(times[rounds / 2]), ms(times[0]));
}

/// `n` networks with distinct bridges and subnets (10.a.b.0/24).
fn many_networks(n: usize) -> Vec<Network> {
    (0..n)
        .map(|i| network(&format!("n{i}"), "nat", &format!("10.{}.{}.0/24", i / 256, i % 256), &format!("b{i}")))
        .collect()
}

/// nftables JSON commands adding (or deleting) `names` to `bridges`.
fn json_elements(verb: &str, names: &[String]) -> String {
    serde_json::json!({"nftables": [{verb: {"element": {
        "family": "inet", "table": "lanyard", "name": "bridges", "elem": names,
    }}}]})
    .to_string()
}

/// The JSON commands that replace the table as nft lists it now.
fn json_replacement() -> String {
    let listing: Json = serde_json::from_str(&nft(&["-j", "list", "table", "inet", "lanyard"])).unwrap();
    let mut commands = vec![
        serde_json::json!({"add": {"table": {"family": "inet", "name": "lanyard"}}}),
        serde_json::json!({"delete": {"table": {"family": "inet", "name": "lanyard"}}}),
    ];
    let objects = listing["nftables"].as_array().unwrap().iter().filter(|i| i.get("metainfo").is_none());
    commands.extend(objects.map(|i| serde_json::json!({ "add": i })));
    serde_json::json!({ "nftables": commands }).to_string()
}

fn elements_change(adds: &[ElementChange], add: bool) -> FirewallChange {
    FirewallChange::Elements(adds.iter().map(|c| if add { c.clone() } else { c.inverse() }).collect())
}

#[test]
#[ignore = "prints timings; run with --release --ignored --nocapture"]
fn measure() {
    if !may_run("measure") {
        return;
    }
    in_private_netns(|| {
        let driver = NftDriver::new().expect("driver");
        let mut ctx = Context::new().unwrap();
        let id = table_id();
        let small = table(&every_mode(), &[], &[], &[]).unwrap();
        let big = table(&many_networks(10_000), &[], &[], &[]).unwrap();
        let big_elements: usize = big.sets.iter().map(|s| s.elements.len()).sum();
        println!("\n== nftables driver ({})", nft(&["--version"]).trim());
        replace(&driver, &small);

        println!("-- one element added, then deleted (one transaction each)");
        let one = [change("bridges", true, ifname("m0"))];
        bench(
            "libnftables in-process, text",
            201,
            || {},
            || {
                driver.apply(&elements_change(&one, true)).unwrap();
                driver.apply(&elements_change(&one, false)).unwrap();
            },
        );
        let m0 = ["m0".to_string()];
        bench(
            "libnftables in-process, JSON",
            201,
            || {},
            || {
                ctx.run(&json_elements("add", &m0), Output::Json).unwrap();
                ctx.run(&json_elements("delete", &m0), Output::Json).unwrap();
            },
        );
        bench(
            "nft -f - process per transaction (the old driver)",
            51,
            || {},
            || {
                nft_script("add element inet lanyard bridges { \"m0\" }\n").unwrap();
                nft_script("delete element inet lanyard bridges { \"m0\" }\n").unwrap();
            },
        );

        println!("-- replacing the whole table");
        bench("7 networks, text", 31, || {}, || replace(&driver, &small));
        let json = json_replacement();
        bench("7 networks, JSON", 31, || {}, || drop(ctx.run(&json, Output::Json).unwrap()));
        bench(
            &format!("10,000 networks ({big_elements} elements) over the small table, text"),
            5,
            || replace(&driver, &small),
            || replace(&driver, &big),
        );
        bench("10,000 networks over itself, text", 5, || {}, || replace(&driver, &big));
        let json = json_replacement();
        bench("10,000 networks over itself, JSON", 5, || {}, || drop(ctx.run(&json, Output::Json).unwrap()));
        bench(
            "nft -f - process: 10,000 networks over itself",
            5,
            || {},
            || nft_script(&format!("table inet lanyard {{}}\ndelete table inet lanyard\n{}", big.render())).unwrap(),
        );

        println!("-- reading the 10,000-network table");
        bench("fingerprint (one NFT_MSG_GETTABLE)", 101, || {}, || drop(driver.fingerprint(&id).unwrap()));
        bench(
            "  vs a terse listing in-process (fetches the elements anyway)",
            5,
            || {},
            || drop(ctx.run("list table inet lanyard", Output::Terse).unwrap()),
        );
        for name in ["bridges", "nat_nets"] {
            let set = big.set(name).unwrap();
            bench(
                &format!("elements of {name} ({} elements)", set.elements.len()),
                5,
                || {},
                || assert_eq!(driver.elements(&id, set).unwrap().len(), set.elements.len()),
            );
        }

        println!("-- 10,000 element changes in one transaction (on the small table)");
        replace(&driver, &small);
        let names: Vec<String> = (0..10_000).map(|i| format!("v{i}")).collect();
        let bridges: Vec<ElementChange> = names.iter().map(|n| change("bridges", true, ifname(n))).collect();
        bench(
            "add 10,000 to bridges (hash), text",
            5,
            || replace(&driver, &small),
            || driver.apply(&elements_change(&bridges, true)).unwrap(),
        );
        bench(
            "delete 10,000 from bridges, text",
            5,
            || {
                replace(&driver, &small);
                driver.apply(&elements_change(&bridges, true)).unwrap();
            },
            || driver.apply(&elements_change(&bridges, false)).unwrap(),
        );
        bench(
            "add 10,000 to bridges, JSON",
            5,
            || replace(&driver, &small),
            || drop(ctx.run(&json_elements("add", &names), Output::Json).unwrap()),
        );
        bench(
            "delete 10,000 from bridges, JSON",
            5,
            || {
                replace(&driver, &small);
                driver.apply(&elements_change(&bridges, true)).unwrap();
            },
            || drop(ctx.run(&json_elements("delete", &names), Output::Json).unwrap()),
        );
        let nets: Vec<ElementChange> = (0..10_000)
            .map(|i| {
                let net = format!("10.{}.{}.0/24", 100 + i / 256, i % 256).parse().unwrap();
                change("nat_nets", true, Element::key(vec![Value::Ifname(format!("b{i}")), Value::Net(net)]))
            })
            .collect();
        for n in [1_000, 10_000] {
            let nets = &nets[..n];
            bench(
                &format!("add {n} to nat_nets (interval, concatenated), text"),
                3,
                || replace(&driver, &small),
                || driver.apply(&elements_change(nets, true)).unwrap(),
            );
            bench(
                &format!("delete {n} from nat_nets, text"),
                3,
                || {
                    replace(&driver, &small);
                    driver.apply(&elements_change(nets, true)).unwrap();
                },
                || driver.apply(&elements_change(nets, false)).unwrap(),
            );
        }
        let deletions: String =
            nets.iter().map(|c| format!("delete element inet lanyard nat_nets {{ {} }}\n", c.element)).collect();
        bench(
            "delete 10000 from nat_nets, nft -f - process",
            3,
            || {
                replace(&driver, &small);
                driver.apply(&elements_change(&nets, true)).unwrap();
            },
            || nft_script(&deletions).unwrap(),
        );
    });
}

#[test]
fn every_transaction_moves_the_generation_on_by_one() {
    if !may_run("every_transaction_moves_the_generation_on_by_one") {
        return;
    }
    in_private_netns(|| {
        let driver = NftDriver::new().expect("driver");
        let g0 = driver.generation().expect("generation");
        let t = every_mode_table();
        replace(&driver, &t);
        let g1 = driver.generation().unwrap();
        assert_eq!(g1, g0.wrapping_add(1), "one replace, one transaction");
        let change = ElementChange { table: table_id(), set: "bridges".into(), add: true, element: ifname("lybr9") };
        driver.apply(&FirewallChange::Elements(vec![change])).unwrap();
        assert_eq!(driver.generation().unwrap(), g1.wrapping_add(1), "one element change, one transaction");
        // Anyone's transaction counts, another table's too.
        nft(&["add", "table", "inet", "other"]);
        assert_eq!(driver.generation().unwrap(), g1.wrapping_add(2));
    });
}
