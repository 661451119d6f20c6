//! A veth port into a process's network namespace, named by PID or by
//! `/proc/PID/ns/net`, as container runtimes hand them out (the process
//! here: a `sleep` in a throw-away namespace, which the test ends by pid).

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;

/// A `sleep` in `ns`; killed (by its pid) and reaped on drop.
struct Sleeper(Child);

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_port_goes_into_a_process_namespace_named_by_pid() {
    if !privileged("a_port_goes_into_a_process_namespace_named_by_pid", &["ip", "nft", "sleep"]) {
        return;
    }
    let host = Host::start();
    host.cli_ok(&["net", "create", "default", "--mode", "nat", "--subnet", "192.168.122.0/24"]);
    let box_ns = Netns::new("box");
    let sleeper = Sleeper(
        box_ns.command("sleep", &["600"]).stdin(Stdio::null()).stdout(Stdio::null()).spawn().expect("sleep starts"),
    );
    let pid = sleeper.0.id().to_string();
    // `ip netns exec` execs: the pid is sleep's, in box's namespace.
    let seen = poll(Duration::from_secs(5), Duration::from_millis(20), || {
        box_ns.pids().contains(&sleeper.0.id()).then_some(())
    });
    assert!(seen.is_some(), "sleep {pid} is not in {}", box_ns.name());
    let by_pid = host.cli_json(&[
        "port", "create", "--net", "default", "--vm", "c1", "--type", "veth", "--netns", &pid, "--ifname", "eth0",
        "-o", "json",
    ]);
    assert_eq!(by_pid["netns"], format!("/proc/{pid}/ns/net"), "{by_pid}");
    let path = format!("/proc/{pid}/ns/net");
    let by_path = host.cli_json(&[
        "port", "create", "--net", "default", "--vm", "c2", "--type", "veth", "--netns", &path, "--ifname", "eth1",
        "-o", "json",
    ]);
    assert_eq!(by_path["netns"], path.as_str(), "{by_path}");
    for (ifname, port) in [("eth0", &by_pid), ("eth1", &by_path)] {
        let link = box_ns.link(ifname).unwrap_or_else(|| panic!("no {ifname} in the process's namespace"));
        assert_eq!(link["address"], port["mac"], "{link}");
    }
    let taken = host.cli(&[
        "port", "create", "--net", "default", "--vm", "c3", "--type", "veth", "--netns", &pid, "--ifname", "eth0",
    ]);
    assert_eq!(taken.status.code(), Some(4), "{}", stderr(&taken));
    assert!(
        stderr(&taken).contains(&format!("an interface named eth0 already exists in network namespace \"{path}\"")),
        "{}",
        stderr(&taken)
    );
    host.cli_ok(&["port", "delete", by_pid["id"].as_str().expect("an id")]);
    assert!(box_ns.link("eth0").is_none(), "the peer went with the port");
}
