//! `lanyard export` and `lanyard apply -f`: the exported file applied to a
//! fresh daemon gives the same state; `--dry-run` prints the plan and
//! changes nothing; applying twice changes nothing; a port forward waits
//! (a warning) until its VM has a port, then applies. Two daemons, each
//! in a namespace of its own. Needs root; see `common::privileged`.

mod common;

use common::*;

#[test]
fn an_exported_state_applies_to_a_fresh_daemon_once() {
    if !privileged("an_exported_state_applies_to_a_fresh_daemon_once", &["ip", "nft", "kill"]) {
        return;
    }
    let dir = TempDir::new("declare");
    let a = Host::start();
    a.cli_ok(&["project", "create", "team", "--description", "the team"]);
    a.cli_ok(&["net", "create", "default", "--mode", "nat", "--subnet", "192.168.122.0/24", "--lease-time", "600"]);
    a.cli_ok(&["net", "create", "iso", "--mode", "isolated", "--subnet", "10.60.0.0/24", "--project", "team"]);
    a.cli_ok(&["net", "host", "add", "default", "--mac", "52:54:00:00:60:01", "--ip", "192.168.122.9", "--name", "db"]);
    a.cli_ok(&["net", "host", "add", "iso", "--project", "team", "--mac", "52:54:00:00:60:02", "--ip", "10.60.0.9"]);
    let _web = a.attach_vm("default", "web1", &[]);
    a.cli_ok(&["net", "forward", "add", "default", "--proto", "tcp", "--host-port", "8080", "--to", "web1:80"]);
    let yaml = a.cli_ok(&["export"]);
    let json = a.cli_json(&["export", "-o", "json"]);
    assert_eq!(json["networks"].as_array().map(Vec::len), Some(2), "{json}");
    assert_eq!(
        json["forwards"],
        serde_json::json!([{"net": "default", "proto": "tcp", "host_port": 8080, "to_port": "web1", "to_port_number": 80}]),
        "the forward names its VM, not the port id: {json}"
    );
    let file = dir.path().join("state.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let file = file.display().to_string();

    let b = Host::start();
    let plan = b.cli_ok(&["apply", "-f", &file, "--dry-run"]);
    for want in [
        "+ project team",
        "+ network default (nat, 192.168.122.0/24)",
        "+ network iso in project team",
        "+ static host 52:54:00:00:60:02",
        "+ forward tcp/8080 to web1:80 on network default",
    ] {
        assert!(plan.contains(want), "{want} missing in the plan:\n{plan}");
    }
    assert!(plan.contains("Plan: 6 to create"), "{plan}");
    assert_eq!(b.cli_json(&["net", "list", "--all"]), serde_json::json!([]), "--dry-run changed something");

    // Ports are not in the file: the forward waits for web1's port.
    let out = b.cli(&["apply", "-f", &file]);
    assert!(out.status.success(), "{}", stderr(&out));
    let done = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(done.contains("Applied: 5 created, 1 waiting for their VMs' ports"), "{done}");
    assert!(stderr(&out).contains("warning: forward tcp/8080 on network default not created"), "{}", stderr(&out));
    let _web_b = b.attach_vm("default", "web1", &[]);
    let done = b.cli_ok(&["apply", "-f", &file]);
    assert!(done.contains("+ forward tcp/8080") && done.contains("Applied: 1 created"), "{done}");
    assert_eq!(b.cli_json(&["export", "-o", "json"]), json, "the applied state differs from the exported one");
    assert_eq!(b.cli_ok(&["export"]), yaml);
    let shown = b.cli_json(&["net", "show", "iso", "--project", "team"]);
    assert_eq!(shown["state"], "active", "{shown}");

    // Twice: nothing to change.
    assert_eq!(b.cli_ok(&["apply", "-f", &file]).trim(), "Nothing to change");
    // A file that declares a different subnet for an existing network: a
    // warning, nothing changed.
    let other = dir.path().join("other.json");
    std::fs::write(&other, r#"{"networks": [{"name": "default", "mode": "nat", "subnet": "10.99.0.0/24"}]}"#).unwrap();
    let out = b.cli(&["apply", "-f", &other.display().to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("warning: network default exists with another subnet"), "{}", stderr(&out));
    assert_eq!(b.cli_json(&["export", "-o", "json"]), json);
    // A malformed file: one line, exit 2.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "netwroks: []\n").unwrap();
    let out = b.cli(&["apply", "-f", &bad.display().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
}
