//! A project's egress control in throw-away namespaces: with `project set
//! P --egress deny` a VM of P starts no connection beyond its network (a
//! ping to the outside gets nowhere), while it still leases from lanyard,
//! reaches its gateway and resolves through it; another project's VM keeps
//! going out; the setting survives a daemon restart, applies to P's
//! networks made later, and `--egress allow` lifts it. Needs root; see
//! `common::privileged`.

mod common;

use common::*;

const OUT: &str = "203.0.113.2";

#[test]
fn a_project_that_denies_egress_keeps_its_vms_in() {
    if !privileged("a_project_that_denies_egress_keeps_its_vms_in", &["ip", "nft", "ping", "udhcpc"]) {
        return;
    }
    let mut host = Host::start();
    let _out = host.add_outside("203.0.113.1/24", &format!("{OUT}/24"));
    let mut vms = Vec::new();
    for (p, subnet) in [("red", "10.81.0.0/24"), ("blue", "10.82.0.0/24")] {
        host.cli_ok(&["project", "create", p]);
        host.cli_ok(&["net", "create", "private", "--mode", "nat", "--subnet", subnet, "--project", p]);
        let vm = host.attach_vm("private", &format!("vm-{p}"), &["--project", p]);
        udhcpc(&vm.ns, "eth0", None).unwrap_or_else(|e| panic!("vm-{p}: no lease: {e}"));
        assert!(ping(&vm.ns, OUT, 2, 5).all_replied(), "vm-{p} cannot go out before any denial");
        vms.push(vm);
    }
    let (red, blue) = (&vms[0], &vms[1]);

    let shown = host.cli_json(&["project", "set", "red", "--egress", "deny"]);
    assert_eq!(field(&shown, "egress"), "deny", "{shown}");
    assert!(ping(&red.ns, OUT, 3, 4).none_replied(), "red's VM still goes out with egress denied");
    assert!(ping(&red.ns, "10.81.0.1", 2, 5).all_replied(), "red's VM lost its gateway");
    udhcpc(&red.ns, "eth0", None).unwrap_or_else(|e| panic!("red's VM cannot renew its lease: {e}"));
    assert!(ping(&blue.ns, OUT, 2, 5).all_replied(), "blue's VM lost its egress with red's denial");

    // A restart keeps the denial; a network made later follows it.
    host.daemon.restart();
    assert!(ping(&red.ns, OUT, 3, 4).none_replied(), "the denial did not survive a restart");
    let later =
        host.cli_json(&["net", "create", "second", "--mode", "nat", "--subnet", "10.83.0.0/24", "--project", "red"]);
    assert_eq!(later["egress_denied"], true, "a later network of red does not follow its egress: {later}");
    let vm2 = host.attach_vm("second", "vm-red2", &["--project", "red"]);
    udhcpc(&vm2.ns, "eth0", None).unwrap_or_else(|e| panic!("vm-red2: no lease: {e}"));
    assert!(ping(&vm2.ns, OUT, 3, 4).none_replied(), "red's later network goes out");

    host.cli_ok(&["project", "set", "red", "--egress", "allow"]);
    assert!(ping(&red.ns, OUT, 2, 5).all_replied(), "allow did not lift the denial");
    assert!(ping(&vm2.ns, OUT, 2, 5).all_replied(), "allow did not lift the denial on the later network");
    let bad = host.cli(&["project", "set", "red", "--egress", "maybe"]);
    assert_eq!(bad.status.code(), Some(2), "a bad egress value is bad input");
}
