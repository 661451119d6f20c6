//! Projects end to end, in throw-away namespaces: two projects each with a
//! network called `private` (different subnets) and a VM on it; listings
//! with and without `--project`; a project that owns something is not
//! deleted, an empty one is; a daemon restart keeps everything and changes
//! nothing in the kernel. Needs root; see `common::privileged`.

mod common;

use common::*;
use serde_json::Value;

/// (project, subnet, gateway) of the two `private` networks.
const PROJECTS: [(&str, &str, &str); 2] = [("red", "10.71.0.0/24", "10.71.0.1"), ("blue", "10.72.0.0/24", "10.72.0.1")];

/// `(project, name)` of every network in a `net list -o json`.
fn net_names(v: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> =
        v.as_array().into_iter().flatten().map(|n| (field(n, "project").into(), field(n, "name").into())).collect();
    out.sort();
    out
}

/// The ownership mark (alias) of a link in the host namespace.
fn alias(host: &Host, ifname: &str) -> String {
    host.ns.link(ifname).and_then(|l| l["ifalias"].as_str().map(String::from)).unwrap_or_default()
}

#[test]
fn two_projects_each_with_a_network_called_private() {
    if !privileged("two_projects_each_with_a_network_called_private", &["ip", "nft", "ping"]) {
        return;
    }
    let mut host = Host::start();
    let mut vms = Vec::new();
    for (project, subnet, gateway) in PROJECTS {
        let p = host.cli_json(&["project", "create", project, "--description", &format!("team {project}")]);
        assert_eq!((field(&p, "name"), p["networks"].as_u64()), (project, Some(0)), "{p}");
        let net =
            host.cli_json(&["net", "create", "private", "--mode", "nat", "--subnet", subnet, "--project", project]);
        assert_eq!(
            (field(&net, "project"), field(&net, "name"), field(&net, "gateway")),
            (project, "private", gateway)
        );
        let bridge = field(&net, "bridge").to_string();
        assert_eq!(alias(&host, &bridge), format!("lanyard:net:{project}/private"), "the bridge's mark holds the key");
        let vm = host.attach_vm("private", &format!("vm-{project}"), &["--project", project]);
        assert_eq!((field(&vm.port, "project"), field(&vm.port, "net")), (project, "private"), "{}", vm.port);
        assert!(in_subnet(vm.ip(), subnet), "{} not in {subnet}", vm.ip());
        let link = host.ns.link(&vm.host_ifname()).expect("the port's link");
        assert_eq!(link["master"].as_str(), Some(bridge.as_str()), "{link}");
        vm.configure_static(24, gateway);
        assert!(ping(&vm.ns, gateway, 2, 5).all_replied(), "vm-{project} cannot reach its gateway {gateway}");
        vms.push(vm);
    }

    // All projects: both networks, with a Project column in the table.
    let all = host.cli_json(&["net", "list"]);
    let want = vec![("blue".to_string(), "private".to_string()), ("red".to_string(), "private".to_string())];
    assert_eq!(net_names(&all), want, "{all}");
    let table = host.cli_ok(&["net", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].trim_start().starts_with("Project") && lines[0].contains("Name"), "{table}");
    for (project, subnet, _) in PROJECTS {
        assert!(
            lines.iter().any(|l| l.split_whitespace().take(2).eq([project, "private"]) && l.contains(subnet)),
            "no row of {project}'s private network:\n{table}"
        );
    }
    // --project filters, and the table then has no Project column.
    let red = host.cli_json(&["net", "list", "--project", "red"]);
    assert_eq!(net_names(&red), vec![("red".to_string(), "private".to_string())], "{red}");
    assert!(host.cli_ok(&["net", "list", "--project", "red"]).trim_start().starts_with("Name"));
    assert_eq!(host.cli_json(&["net", "list", "--project", "default"]), Value::Array(vec![]));
    let shown = host.cli_json(&["net", "show", "private", "--project", "blue"]);
    assert_eq!(field(&shown, "subnet"), PROJECTS[1].1, "{shown}");
    let ports = host.cli_json(&["port", "list"]);
    assert_eq!(ports.as_array().map(Vec::len), Some(2), "{ports}");
    assert!(host.cli_ok(&["port", "list"]).trim_start().starts_with("Project"));
    let blue_ports = host.cli_json(&["port", "list", "--project", "blue"]);
    let ids: Vec<&str> = blue_ports.as_array().into_iter().flatten().map(|p| field(p, "id")).collect();
    assert_eq!(ids, [vms[1].id().as_str()], "{blue_ports}");
    let leases = host.cli_json(&["lease", "list", "private", "--project", "red"]);
    assert!(leases.is_array(), "{leases}");

    // A project that owns something stays, with one clear line.
    let o = host.cli(&["project", "delete", "red"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: project \"red\" owns 1 network (private) and 1 port"), "{err}");
    let o = host.cli(&["project", "delete", "default"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // An empty one goes.
    host.cli_ok(&["project", "create", "green"]);
    host.cli_ok(&["project", "delete", "green"]);
    let o = host.cli(&["project", "show", "green"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));

    // A restart keeps everything and plans nothing.
    let projects = host.cli_json(&["project", "list"]);
    let links = host.ns.ip_json(&["link", "show"]);
    let ruleset = host.ns.nft_ruleset();
    host.daemon.restart();
    assert_eq!(host.cli_json(&["project", "list"]), projects);
    assert_eq!(host.cli_json(&["net", "list"]), all);
    assert_eq!(host.cli_json(&["port", "list"]), ports);
    assert_eq!(host.ns.nft_ruleset(), ruleset, "a restart changed the ruleset");
    let names =
        |v: &Value| -> Vec<String> { v.as_array().into_iter().flatten().map(|l| field(l, "ifname").into()).collect() };
    assert_eq!(names(&host.ns.ip_json(&["link", "show"])), names(&links), "a restart changed the links");
    for ((_, _, gateway), vm) in PROJECTS.iter().zip(&vms) {
        assert!(ping(&vm.ns, gateway, 2, 5).all_replied(), "{} lost its gateway {gateway} after a restart", vm.name);
    }
    let log = host.daemon.log();
    assert!(!log.contains("ERROR"), "errors in the daemon log:\n{log}");

    // Deleting the network empties the project, which then goes.
    host.cli_ok(&["net", "delete", "private", "--project", "red", "--force"]);
    host.cli_ok(&["project", "delete", "red"]);
    assert_eq!(net_names(&host.cli_json(&["net", "list"])), vec![("blue".to_string(), "private".to_string())]);
}
