//! Wrong input is refused cleanly: non-zero exit, exactly one line on stderr
//! beginning "error:" that names the problem, nothing on stdout, and no
//! change to lanyard's state or to the kernel (links, nft ruleset) of the
//! namespace the daemon runs in. Needs root; see `common::privileged`.

mod common;

use std::fmt::Write as _;
use std::thread::sleep;
use std::time::Duration;

use common::*;
use serde_json::Value;

const NET: &str = "default";
const SUBNET: &str = "192.168.122.0/24";
/// The valid port's fixed MAC and IP, for the duplicate cases.
const MAC: &str = "52:54:00:aa:bb:01";
const IP: &str = "192.168.122.10";
/// The static DHCP host's MAC and IP.
const HOST_MAC: &str = "52:54:00:aa:bb:02";
const HOST_IP: &str = "192.168.122.20";
/// A link in the host namespace that lanyard does not own.
const TAKEN: &str = "taken0";
/// A project that owns the network `mine`.
const OWNER: &str = "owner";

/// Everything that must not change when a request is refused.
#[derive(Debug, PartialEq)]
struct Snapshot {
    projects: Value,
    fips: Value,
    hosts: Value,
    forwards: Value,
    nets: Value,
    ports: Value,
    leases: Value,
    links: Value,
    ruleset: String,
}

/// `ip -j link` of the host namespace, minus `operstate`, which the kernel
/// moves on its own (a new bridge goes UNKNOWN -> UP when carrier settles).
fn links_without_operstate(host: &Host) -> Value {
    let mut links = host.ns.ip_json(&["link", "show"]);
    for l in links.as_array_mut().into_iter().flatten() {
        if let Some(o) = l.as_object_mut() {
            o.remove("operstate");
        }
    }
    links
}

fn snapshot(host: &Host) -> Snapshot {
    Snapshot {
        projects: host.cli_json(&["project", "list"]),
        fips: host.cli_json(&["fip", "list"]),
        hosts: host.cli_json(&["net", "host", "list", NET]),
        forwards: host.cli_json(&["net", "forward", "list", NET]),
        nets: host.cli_json(&["net", "list", "--all"]),
        ports: host.cli_json(&["port", "list"]),
        leases: host.cli_json(&["lease", "list", NET]),
        links: links_without_operstate(host),
        ruleset: host.ns.nft_ruleset(),
    }
}

/// What differs between two snapshots, element by element.
fn diff(before: &Snapshot, after: &Snapshot) -> String {
    fn items(v: &Value) -> Vec<String> {
        match v {
            Value::Array(a) => a.iter().map(Value::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_string).collect()
    }
    let mut out = String::new();
    let mut part = |name: &str, a: Vec<String>, b: Vec<String>| {
        if a == b {
            return;
        }
        let _ = write!(out, "\n      {name} changed:");
        for gone in a.iter().filter(|x| !b.contains(x)) {
            let _ = write!(out, "\n        - {gone}");
        }
        for new in b.iter().filter(|x| !a.contains(x)) {
            let _ = write!(out, "\n        + {new}");
        }
    };
    part("project list", items(&before.projects), items(&after.projects));
    part("fip list", items(&before.fips), items(&after.fips));
    part("net forward list", items(&before.forwards), items(&after.forwards));
    part("net list", items(&before.nets), items(&after.nets));
    part("port list", items(&before.ports), items(&after.ports));
    part("lease list", items(&before.leases), items(&after.leases));
    part("ip -j link (host ns)", items(&before.links), items(&after.links));
    part("nft list ruleset (host ns)", lines(&before.ruleset), lines(&after.ruleset));
    out
}

/// Exit codes from the README: 2 bad input, 3 not found, 4 conflict, 6 not allowed.
const INVALID: Option<i32> = Some(2);
const NOT_FOUND: Option<i32> = Some(3);
const CONFLICT: Option<i32> = Some(4);
/// 6: a bad token, or an operation for the admin only.
const NOT_ALLOWED: Option<i32> = Some(6);
/// Any non-zero code (the README's classes do not decide it).
const ANY: Option<i32> = None;
/// What the refusal of a name that begins with '-', '.' or '_' says.
const LEADING: &str = "must begin with a letter or a digit";

struct Case {
    what: &'static str,
    args: Vec<String>,
    /// Expected exit code, or None for any non-zero one.
    code: Option<i32>,
    /// The message must contain at least one of these (case-insensitive).
    mentions: Vec<String>,
}

fn case(what: &'static str, args: Vec<String>, code: Option<i32>, mentions: &[&str]) -> Case {
    Case { what, args, code, mentions: mentions.iter().map(|m| m.to_string()).collect() }
}

fn argv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// `net create NAME --mode nat --subnet SUBNET EXTRA...`
fn net_create(name: &str, subnet: &str, extra: &[&str]) -> Vec<String> {
    let mut v = argv(&["net", "create", name, "--mode", "nat", "--subnet", subnet]);
    v.extend(argv(extra));
    v
}

/// `port create --net NET --vm vmx --type veth --netns NS --ifname IF EXTRA...`
fn port_create(net: &str, vmns: &str, ifname: &str, extra: &[&str]) -> Vec<String> {
    let mut v =
        argv(&["port", "create", "--net", net, "--vm", "vmx", "--type", "veth", "--netns", vmns, "--ifname", ifname]);
    v.extend(argv(extra));
    v
}

#[test]
fn wrong_input_is_refused_without_side_effects() {
    if !privileged("wrong_input_is_refused_without_side_effects", &["ip", "nft", "kill"]) {
        return;
    }
    let mut lab = Topology::start();
    let net = lab.create_net(NET, "nat", SUBNET);
    let bridge = lab.nets[net].bridge.clone();
    let port = lab.add_vm("vm1", net, &["--mac", MAC, "--ip", IP]).vm.port.clone();
    let host = &lab.host;
    let spare = Netns::new("spare");
    assert_eq!((port["mac"].as_str(), port["ip"].as_str()), (Some(MAC), Some(IP)), "the valid port: {port}");
    host.ns.ip_ok(&["link", "add", "name", TAKEN, "type", "veth", "peer", "name", "taken1"]);
    // A project that owns a network, for the project cases.
    host.cli_ok(&["project", "create", OWNER]);
    host.cli_ok(&["net", "create", "mine", "--mode", "nat", "--subnet", "10.99.0.0/24", "--project", OWNER]);
    let made = host.cli_json(&["project", "token", "create", OWNER]);
    let token = made["token"].as_str().expect("a token").to_string();
    let as_owner = |args: &[&str]| -> Vec<String> { argv(&[&["--token", token.as_str()], args].concat()) };
    // A floating IP pool on the foreign link, with one address held.
    host.cli_ok(&["fip", "pool", "create", "pub", "--range", "198.51.100.10-198.51.100.12", "--interface", TAKEN]);
    host.cli_ok(&["fip", "create", "--ip", "198.51.100.10"]);
    // A static DHCP host (a MAC that is not a port), for the host cases.
    host.cli_ok(&["net", "host", "add", NET, "--mac", HOST_MAC, "--ip", HOST_IP, "--name", "printer"]);
    // A port forward, for the duplicate case.
    host.cli_ok(&["net", "forward", "add", NET, "--proto", "tcp", "--host-port", "8080", "--to", "vm1:80"]);
    let forward = |extra: &[&str]| -> Vec<String> { argv(&[&["net", "forward", "add", NET], extra].concat()) };
    let spare_ns = spare.name().to_string();
    let never_state = spare.dir().join("never").display().to_string();
    let missing_ns = unique("miss"); // never created
                                     // A VLAN manager whose only subnet is the default network's: a
                                     // project's first port finds no free subnet.
    host.cli_ok(&[
        "manager",
        "vlan",
        "set",
        "--uplink",
        TAKEN,
        "--vlans",
        "100-101",
        "--supernet",
        SUBNET,
        "--prefix",
        "24",
    ]);
    let vlan_set = |extra: &[&str]| {
        let mut a = argv(&[
            "manager",
            "vlan",
            "set",
            "--uplink",
            TAKEN,
            "--vlans",
            "100-199",
            "--supernet",
            "10.64.0.0/16",
            "--prefix",
            "24",
        ]);
        for pair in extra.chunks(2) {
            match a.iter().position(|x| x == pair[0]) {
                Some(i) => a[i + 1] = pair[1].to_string(),
                None => a.extend(pair.iter().map(|x| x.to_string())),
            }
        }
        a
    };

    let cases = vec![
        // Subnets, gateway, range, mode.
        case("malformed subnet /33", net_create("n1", "10.0.0.0/33", &[]), INVALID, &["10.0.0.0/33", "prefix"]),
        case("malformed subnet banana", net_create("n1", "banana", &[]), INVALID, &["banana"]),
        case(
            "subnet overlapping default (inside)",
            net_create("n1", "192.168.122.128/25", &[]),
            CONFLICT,
            &["overlap"],
        ),
        case("subnet overlapping default (around)", net_create("n1", "192.168.0.0/16", &[]), CONFLICT, &["overlap"]),
        case("subnet equal to default's", net_create("n1", SUBNET, &[]), CONFLICT, &["overlap"]),
        case(
            "gateway outside subnet",
            net_create("n1", "10.10.0.0/24", &["--gateway", "10.20.0.1"]),
            INVALID,
            &["gateway", "10.20.0.1"],
        ),
        case(
            "dhcp range outside subnet",
            net_create("n1", "10.10.0.0/24", &["--dhcp-range", "10.10.1.10-10.10.1.20"]),
            INVALID,
            &["range"],
        ),
        case(
            "dhcp range half outside subnet",
            net_create("n1", "10.10.0.0/24", &["--dhcp-range", "10.10.0.10-10.10.1.20"]),
            INVALID,
            &["range"],
        ),
        case(
            "dhcp range reversed",
            net_create("n1", "10.10.0.0/24", &["--dhcp-range", "10.10.0.200-10.10.0.100"]),
            INVALID,
            &["range"],
        ),
        case(
            "dhcp range malformed",
            net_create("n1", "10.10.0.0/24", &["--dhcp-range", "10.10.0.100"]),
            INVALID,
            &["range"],
        ),
        case(
            "unknown mode",
            argv(&["net", "create", "n1", "--mode", "wifi", "--subnet", "10.10.0.0/24"]),
            INVALID,
            &["wifi", "mode"],
        ),
        case(
            "nat network without a subnet",
            argv(&["net", "create", "n1", "--mode", "nat"]),
            INVALID,
            &["a nat network needs --subnet CIDR"],
        ),
        case("link-local subnet", net_create("n1", "169.254.0.0/16", &[]), INVALID, &["link-local"]),
        case(
            "dhcp range over the gateway",
            net_create("n1", "10.10.0.0/24", &["--dhcp-range", "10.10.0.1-10.10.0.20"]),
            INVALID,
            &["holds the gateway 10.10.0.1"],
        ),
        case(
            "bridge mode with a gateway",
            argv(&["net", "create", "b1", "--mode", "bridge", "--uplink", TAKEN, "--gateway", "10.10.0.1"]),
            INVALID,
            &["--gateway means nothing in bridge mode"],
        ),
        case(
            "bridge mode with a dhcp range",
            argv(&["net", "create", "b1", "--mode", "bridge", "--uplink", TAKEN, "--dhcp-range", "10.0.0.5-10.0.0.9"]),
            INVALID,
            &["--dhcp-range means nothing in bridge mode"],
        ),
        case(
            "lease time under two minutes",
            net_create("n1", "10.10.0.0/24", &["--lease-time", "60"]),
            INVALID,
            &["invalid lease time \"60\""],
        ),
        case(
            "bridge mode with a domain",
            argv(&["net", "create", "b1", "--mode", "bridge", "--uplink", TAKEN, "--domain", "lan"]),
            INVALID,
            &["--domain means nothing in bridge mode"],
        ),
        case(
            "network name differing only in case",
            net_create("Default", "10.10.0.0/24", &[]),
            CONFLICT,
            &["differ only in case"],
        ),
        // Refused by the command line parser: one line that names what is wrong.
        case(
            "missing required option",
            argv(&["port", "create", "--net", NET]),
            INVALID,
            &["the following required arguments were not provided: --vm <VM>"],
        ),
        case(
            "misspelt option",
            argv(&["net", "create", "n1", "--mode", "nat", "--subnt", "10.10.0.0/24"]),
            INVALID,
            &["a similar argument exists: '--subnet'"],
        ),
        case("unknown output format", argv(&["net", "list", "-o", "xml"]), INVALID, &["possible values: table, json"]),
        case("empty network name", argv(&["net", "show", ""]), INVALID, &["a value is required for '<NAME>'"]),
        case("mtu not a number", net_create("n1", "10.10.0.0/24", &["--mtu", "abc"]), INVALID, &["mtu", "abc"]),
        // VLANs (refused before the kernel is asked, so this kernel's lack
        // of 802.1Q does not matter).
        case("vlan 0", net_create("n1", "10.10.0.0/24", &["--vlan", "0", "--uplink", TAKEN]), INVALID, &["1 to 4094"]),
        case(
            "vlan 4095",
            net_create("n1", "10.10.0.0/24", &["--vlan", "4095", "--uplink", TAKEN]),
            INVALID,
            &["1 to 4094"],
        ),
        case("vlan not a number", net_create("n1", "10.10.0.0/24", &["--vlan", "ten"]), INVALID, &["vlan", "ten"]),
        case("vlan without uplink", net_create("n1", "10.10.0.0/24", &["--vlan", "10"]), INVALID, &["--uplink"]),
        case(
            "vlan on a missing uplink",
            net_create("n1", "10.10.0.0/24", &["--vlan", "10", "--uplink", "nosuch0"]),
            NOT_FOUND,
            &["nosuch0"],
        ),
        case(
            "vlan on a lanyard bridge",
            net_create("n1", "10.10.0.0/24", &["--vlan", "10", "--uplink", &bridge]),
            CONFLICT,
            &["bridge"],
        ),
        case(
            "unknown vlan backend",
            net_create("n1", "10.10.0.0/24", &["--vlan", "10", "--uplink", TAKEN, "--vlan-backend", "ovs"]),
            INVALID,
            &["subif or filtering"],
        ),
        case(
            "vlan backend without vlan",
            net_create("n1", "10.10.0.0/24", &["--vlan-backend", "subif"]),
            INVALID,
            &["--vlan"],
        ),
        case(
            "uplink on a nat network without vlan",
            net_create("n1", "10.10.0.0/24", &["--uplink", TAKEN]),
            INVALID,
            &["--vlan"],
        ),
        case(
            "vlan mtu above the trunk's",
            net_create("n1", "10.10.0.0/24", &["--vlan", "10", "--uplink", TAKEN, "--mtu", "9000"]),
            INVALID,
            &["MTU"],
        ),
        // Network names.
        case("network name of 17 bytes", net_create("abcdefghijklmnopq", "10.10.0.0/24", &[]), INVALID, &["name"]),
        case("network name with /", net_create("a/b", "10.10.0.0/24", &[]), INVALID, &["name"]),
        case("network name with space", net_create("a b", "10.10.0.0/24", &[]), INVALID, &["name"]),
        case("network name with ;", net_create("a;b", "10.10.0.0/24", &[]), INVALID, &["name"]),
        case("network name with '", net_create("a'b", "10.10.0.0/24", &[]), INVALID, &["name"]),
        case("empty network name", net_create("", "10.10.0.0/24", &[]), INVALID, &["name"]),
        case("duplicate network name", net_create(NET, "10.10.0.0/24", &[]), CONFLICT, &["default", "exists"]),
        // Names begin with a letter or a digit (never an option, never hidden).
        case(
            "network name beginning with -",
            argv(&["net", "create", "--mode", "nat", "--subnet", "10.10.0.0/24", "--", "-n1"]),
            INVALID,
            &[LEADING],
        ),
        case("network name beginning with .", net_create(".n1", "10.10.0.0/24", &[]), INVALID, &[LEADING]),
        case("network name beginning with _", net_create("_n1", "10.10.0.0/24", &[]), INVALID, &[LEADING]),
        case("bridge name beginning with -", net_create("n1", "10.10.0.0/24", &["--bridge=-br1"]), INVALID, &[LEADING]),
        case(
            "uplink beginning with -",
            argv(&["net", "create", "n1", "--mode", "bridge", "--uplink=-eth0", "--subnet", "10.10.0.0/24"]),
            INVALID,
            &[LEADING],
        ),
        case(
            "vm name beginning with -",
            argv(&[
                "port", "create", "--net", NET, "--vm=-vm", "--type", "veth", "--netns", &spare_ns, "--ifname", "eth0",
            ]),
            INVALID,
            &[LEADING],
        ),
        case("netns beginning with .", port_create(NET, ".ns", "eth0", &[]), INVALID, &[LEADING]),
        case("peer ifname beginning with _", port_create(NET, &spare_ns, "_eth0", &[]), INVALID, &[LEADING]),
        case(
            "tap owner beginning with -",
            argv(&["port", "create", "--net", NET, "--vm", "vmx", "--owner=-root"]),
            INVALID,
            &[LEADING],
        ),
        case(
            "tap group beginning with .",
            argv(&["port", "create", "--net", NET, "--vm", "vmx", "--group", ".kvm"]),
            INVALID,
            &[LEADING],
        ),
        // Bridge names.
        case(
            "bridge name of another network",
            net_create("n1", "10.10.0.0/24", &["--bridge", &bridge]),
            CONFLICT,
            &[&bridge, "bridge"],
        ),
        case(
            "bridge name of an existing kernel link",
            net_create("n1", "10.10.0.0/24", &["--bridge", TAKEN]),
            CONFLICT,
            &[TAKEN, "bridge"],
        ),
        case(
            "bridge name of 16 bytes",
            net_create("n1", "10.10.0.0/24", &["--bridge", "abcdefghijklmnop"]),
            INVALID,
            &["bridge", "name"],
        ),
        case(
            "bridge name with /",
            net_create("n1", "10.10.0.0/24", &["--bridge", "a/b"]),
            INVALID,
            &["bridge", "name"],
        ),
        // Ports.
        case("port on unknown network", port_create("nosuchnet", &spare_ns, "eth0", &[]), NOT_FOUND, &["nosuchnet"]),
        case("duplicate MAC", port_create(NET, &spare_ns, "eth0", &["--mac", MAC]), CONFLICT, &[MAC, "mac"]),
        case(
            "duplicate MAC, upper case",
            port_create(NET, &spare_ns, "eth0", &["--mac", "52:54:00:AA:BB:01"]),
            CONFLICT,
            &["mac"],
        ),
        case("malformed MAC", port_create(NET, &spare_ns, "eth0", &["--mac", "52:54:00:zz:00:01"]), INVALID, &["mac"]),
        case(
            "MAC with a sign in a byte",
            port_create(NET, &spare_ns, "eth0", &["--mac", "52:54:00:+a:00:01"]),
            INVALID,
            &["mac"],
        ),
        case(
            "MAC of five octets",
            port_create(NET, &spare_ns, "eth0", &["--mac", "52:54:00:00:01"]),
            INVALID,
            &["mac"],
        ),
        case("duplicate IP", port_create(NET, &spare_ns, "eth0", &["--ip", IP]), CONFLICT, &[IP]),
        case(
            "IP of the gateway",
            port_create(NET, &spare_ns, "eth0", &["--ip", "192.168.122.1"]),
            ANY,
            &["192.168.122.1", "gateway"],
        ),
        case(
            "IP outside subnet",
            port_create(NET, &spare_ns, "eth0", &["--ip", "10.1.2.3"]),
            INVALID,
            &["10.1.2.3", "subnet"],
        ),
        case(
            "IP is the network address",
            port_create(NET, &spare_ns, "eth0", &["--ip", "192.168.122.0"]),
            INVALID,
            &["192.168.122.0"],
        ),
        case(
            "IP is the broadcast address",
            port_create(NET, &spare_ns, "eth0", &["--ip", "192.168.122.255"]),
            INVALID,
            &["192.168.122.255"],
        ),
        case(
            "IP malformed",
            port_create(NET, &spare_ns, "eth0", &["--ip", "192.168.122.300"]),
            INVALID,
            &["192.168.122.300"],
        ),
        case(
            "unknown port type",
            argv(&["port", "create", "--net", NET, "--vm", "vmx", "--type", "wlan"]),
            INVALID,
            &["wlan", "type"],
        ),
        case(
            "veth into a namespace that does not exist",
            port_create(NET, &missing_ns, "eth0", &[]),
            NOT_FOUND,
            &["namespace", "netns", &missing_ns],
        ),
        case(
            "veth peer name taken in the namespace",
            port_create(NET, &spare_ns, "lo", &[]),
            CONFLICT,
            &["an interface named lo already exists in network namespace"],
        ),
        case(
            "a second port of one VM on one network",
            argv(&[
                "port", "create", "--net", NET, "--vm", "vm1", "--type", "veth", "--netns", &spare_ns, "--ifname",
                "eth0",
            ]),
            CONFLICT,
            &["vm \"vm1\" already has port"],
        ),
        case(
            "tap owner that is no user",
            argv(&["port", "create", "--net", NET, "--vm", "vmx", "--owner", "nosuchuser"]),
            INVALID,
            &["invalid owner \"nosuchuser\": no user of that name"],
        ),
        case(
            "tap group that is no group",
            argv(&["port", "create", "--net", NET, "--vm", "vmx", "--group", "nosuchgroup"]),
            INVALID,
            &["invalid group \"nosuchgroup\": no group of that name"],
        ),
        case("ports of an unknown network", argv(&["port", "list", "--net", "nosuchnet"]), NOT_FOUND, &["nosuchnet"]),
        case(
            "delete a network that has ports",
            argv(&["net", "delete", NET]),
            CONFLICT,
            &["network \"default\" has 1 port (vm1): delete them first or use `lanyard net delete default --force`"],
        ),
        // Unknown objects.
        case("delete unknown network", argv(&["net", "delete", "nosuchnet"]), NOT_FOUND, &["nosuchnet"]),
        case("show unknown network", argv(&["net", "show", "nosuchnet"]), NOT_FOUND, &["nosuchnet"]),
        case("leases of unknown network", argv(&["lease", "list", "nosuchnet"]), NOT_FOUND, &["nosuchnet"]),
        case(
            "delete a lease nobody holds",
            argv(&["lease", "delete", NET, "192.168.122.99"]),
            NOT_FOUND,
            &["no lease of 192.168.122.99 on network \"default\""],
        ),
        case(
            "delete a lease named by neither IP nor MAC",
            argv(&["lease", "delete", NET, "banana"]),
            INVALID,
            &["banana"],
        ),
        case("delete unknown port", argv(&["port", "delete", "nosuchport"]), NOT_FOUND, &["nosuchport"]),
        case(
            "edit a network's subnet",
            argv(&["net", "edit", NET, "--subnet", "10.10.0.0/24"]),
            INVALID,
            &["a network's subnet cannot be changed"],
        ),
        case(
            "edit a network's range over the gateway",
            argv(&["net", "edit", NET, "--dhcp-range", "192.168.122.1-192.168.122.20"]),
            INVALID,
            &["holds the gateway 192.168.122.1"],
        ),
        case(
            "edit an unknown network",
            argv(&["net", "edit", "nosuchnet", "--domain", "lan"]),
            NOT_FOUND,
            &["nosuchnet"],
        ),
        case("show unknown port", argv(&["port", "show", "nosuchport"]), NOT_FOUND, &["nosuchport"]),
        // Projects.
        case(
            "network in an unknown project",
            net_create("n1", "10.10.0.0/24", &["--project", "nosuchproject"]),
            NOT_FOUND,
            &["no project named \"nosuchproject\"; create it with `lanyard project create nosuchproject`"],
        ),
        case(
            "port in an unknown project",
            port_create(NET, &spare_ns, "eth0", &["--project", "nosuchproject"]),
            NOT_FOUND,
            &["no project named \"nosuchproject\""],
        ),
        case(
            "list of an unknown project",
            argv(&["net", "list", "--project", "nosuchproject"]),
            NOT_FOUND,
            &["nosuchproject"],
        ),
        case(
            "show in an unknown project",
            argv(&["net", "show", NET, "--project", "nosuchproject"]),
            NOT_FOUND,
            &["nosuchproject"],
        ),
        case("network of another project", argv(&["net", "show", "mine"]), NOT_FOUND, &["no network named \"mine\""]),
        case(
            "port on a network of another project",
            port_create("mine", &spare_ns, "eth0", &[]),
            NOT_FOUND,
            &["no network named \"mine\""],
        ),
        case(
            "duplicate network name in one project",
            net_create("mine", "10.10.0.0/24", &["--project", OWNER]),
            CONFLICT,
            &["\"mine\" already exists in project \"owner\""],
        ),
        case(
            "bad project name (slash)",
            net_create("n1", "10.10.0.0/24", &["--project", "a/b"]),
            INVALID,
            &["project name"],
        ),
        case("project name beginning with _", argv(&["project", "create", "_p"]), INVALID, &[LEADING]),
        case("project name too long", argv(&["project", "create", "sixteen-bytes-xx"]), INVALID, &["project name"]),
        case(
            "project description too long",
            argv(&["project", "create", "p1", "--description", &"d".repeat(300)]),
            INVALID,
            &["description"],
        ),
        case("duplicate project", argv(&["project", "create", OWNER]), CONFLICT, &["already exists"]),
        case("show unknown project", argv(&["project", "show", "nosuchproject"]), NOT_FOUND, &["nosuchproject"]),
        case("delete unknown project", argv(&["project", "delete", "nosuchproject"]), NOT_FOUND, &["nosuchproject"]),
        case(
            "delete a project that owns a network",
            argv(&["project", "delete", OWNER]),
            CONFLICT,
            &["project \"owner\" owns 1 network (mine) and 0 ports; delete them first"],
        ),
        case("delete the default project", argv(&["project", "delete", "default"]), INVALID, &["cannot be deleted"]),
        // nova's managers.
        case(
            "unknown manager",
            net_create("n1", "10.10.0.0/24", &["--manager", "nova"]),
            INVALID,
            &["flat or flatdhcp"],
        ),
        case(
            "vlan manager asked for by name",
            net_create("n1", "10.10.0.0/24", &["--manager", "vlan"]),
            INVALID,
            &["lanyard manager vlan set"],
        ),
        case(
            "flat network with another mode",
            argv(&["net", "create", "n1", "--manager", "flat", "--mode", "route", "--subnet", "10.10.0.0/24"]),
            INVALID,
            &["a flat network is a nat network; leave out --mode"],
        ),
        case("vlan range backwards", vlan_set(&["--vlans", "200-100"]), INVALID, &["FIRST-LAST"]),
        case("vlan range past 4094", vlan_set(&["--vlans", "100-4095"]), INVALID, &["FIRST-LAST"]),
        case(
            "supernet with host bits",
            vlan_set(&["--supernet", "10.64.0.1/16"]),
            INVALID,
            &["did you mean 10.64.0.0/16"],
        ),
        case("prefix wider than the supernet", vlan_set(&["--prefix", "8"]), INVALID, &["/16 and /29"]),
        case("projects' networks in bridge mode", vlan_set(&["--mode", "bridge"]), INVALID, &["a project's network"]),
        case("vlan manager on a missing trunk", vlan_set(&["--uplink", "nosuch0"]), NOT_FOUND, &["nosuch0"]),
        case(
            "vlan manager's pool used up",
            argv(&["port", "create", "--vm", "vmx", "--type", "veth", "--netns", &spare_ns, "--ifname", "eth0"]),
            CONFLICT,
            &["no free /24 in 192.168.122.0/24"],
        ),
        // A project's token: admin-only kinds and operations, bad tokens.
        case(
            "flat network from a project token",
            as_owner(&["net", "create", "f1", "--manager", "flat", "--subnet", "10.98.0.0/24"]),
            NOT_ALLOWED,
            &["admin only"],
        ),
        case(
            "bridge network from a project token",
            as_owner(&["net", "create", "b1", "--mode", "bridge", "--uplink", TAKEN]),
            NOT_ALLOWED,
            &["admin only"],
        ),
        case(
            "open network from a project token",
            as_owner(&["net", "create", "o1", "--mode", "open", "--subnet", "10.98.0.0/24"]),
            NOT_ALLOWED,
            &["admin only"],
        ),
        case(
            "VLAN network from a project token",
            as_owner(&[
                "net",
                "create",
                "v1",
                "--mode",
                "nat",
                "--subnet",
                "10.98.0.0/24",
                "--vlan",
                "5",
                "--uplink",
                TAKEN,
            ]),
            NOT_ALLOWED,
            &["admin only"],
        ),
        case(
            "VLAN manager from a project token",
            as_owner(&[
                "manager",
                "vlan",
                "set",
                "--uplink",
                TAKEN,
                "--vlans",
                "100-110",
                "--supernet",
                "10.200.0.0/16",
                "--prefix",
                "24",
            ]),
            NOT_ALLOWED,
            &["admin only"],
        ),
        case(
            "a port without anti-spoofing from a project token",
            as_owner(&[
                "port",
                "create",
                "--net",
                "mine",
                "--vm",
                "vmx",
                "--type",
                "veth",
                "--netns",
                &spare_ns,
                "--ifname",
                "eth0",
                "--no-spoof-check",
            ]),
            NOT_ALLOWED,
            &["admin only", "--no-spoof-check"],
        ),
        case(
            "a port in a process's namespace from a project token",
            as_owner(&[
                "port", "create", "--net", "mine", "--vm", "vmx", "--type", "veth", "--netns", "1", "--ifname", "eth0",
            ]),
            NOT_ALLOWED,
            &["admin only"],
        ),
        case(
            "netns path that is no process's",
            port_create(NET, "/proc/self/ns/net", "eth0", &[]),
            INVALID,
            &["give a namespace name, a PID or /proc/PID/ns/net"],
        ),
        case(
            "project create from a project token",
            as_owner(&["project", "create", "p2"]),
            NOT_ALLOWED,
            &["admin only"],
        ),
        case(
            "another project's network from a project token",
            as_owner(&["net", "delete", NET, "--project", "default"]),
            NOT_FOUND,
            &["no project named \"default\""],
        ),
        case(
            "unknown token",
            argv(&["--token", &format!("lyt_{}", "2".repeat(64)), "net", "list"]),
            NOT_ALLOWED,
            &["invalid token"],
        ),
        case("malformed token", argv(&["--token", "secret", "net", "list"]), NOT_ALLOWED, &["invalid token"]),
        // Floating IPs and grants.
        case(
            "floating IP pool with a reversed range",
            argv(&["fip", "pool", "create", "p2", "--range", "198.51.100.30-198.51.100.20", "--interface", TAKEN]),
            INVALID,
            &["after its last"],
        ),
        case(
            "floating IP pool overlapping another",
            argv(&["fip", "pool", "create", "p2", "--range", "198.51.100.12-198.51.100.20", "--interface", TAKEN]),
            CONFLICT,
            &["overlaps pool \"pub\""],
        ),
        case(
            "floating IP pool inside a network",
            argv(&["fip", "pool", "create", "p2", "--range", "192.168.122.200-192.168.122.210", "--interface", TAKEN]),
            CONFLICT,
            &["overlaps subnet"],
        ),
        case(
            "floating IP pool on lanyard's bridge",
            argv(&["fip", "pool", "create", "p2", "--range", "198.51.100.20-198.51.100.21", "--interface", &bridge]),
            CONFLICT,
            &["one of lanyard's interfaces"],
        ),
        case(
            "floating IP pool on a missing interface",
            argv(&["fip", "pool", "create", "p2", "--range", "198.51.100.20-198.51.100.21", "--interface", "nosuch0"]),
            NOT_FOUND,
            &["no interface named nosuch0"],
        ),
        case(
            "floating IP pool from a project token",
            as_owner(&["fip", "pool", "create", "p2", "--range", "198.51.100.20-198.51.100.21", "--interface", TAKEN]),
            NOT_ALLOWED,
            &["admin only"],
        ),
        case(
            "floating IP outside its pool",
            argv(&["fip", "create", "--ip", "198.51.100.99"]),
            INVALID,
            &["is not in pool"],
        ),
        case(
            "floating IP held already",
            argv(&["fip", "create", "--ip", "198.51.100.10"]),
            CONFLICT,
            &["already held"],
        ),
        // Port forwards.
        case(
            "forward of a host port already forwarded",
            forward(&["--proto", "tcp", "--host-port", "8080", "--to", "vm1:81"]),
            CONFLICT,
            &["tcp/8080", "already forwarded"],
        ),
        case(
            "forward of a port forwarded on every address, on one",
            forward(&["--proto", "tcp", "--host-port", "8080", "--to", "vm1", "--address", "198.51.100.1"]),
            CONFLICT,
            &["already forwarded"],
        ),
        case(
            "forward to an unknown port",
            forward(&["--proto", "tcp", "--host-port", "8081", "--to", "nobody:80"]),
            NOT_FOUND,
            &["nobody"],
        ),
        case(
            "forward of host port 0",
            forward(&["--proto", "tcp", "--host-port", "0", "--to", "vm1:80"]),
            INVALID,
            &["host port", "1 to 65535"],
        ),
        case(
            "forward to guest port 0",
            forward(&["--proto", "tcp", "--host-port", "8081", "--to", "vm1:0"]),
            INVALID,
            &["1 to 65535"],
        ),
        case(
            "forward of host port 65536",
            forward(&["--proto", "tcp", "--host-port", "65536", "--to", "vm1:80"]),
            INVALID,
            &["65536"],
        ),
        case(
            "forward of ICMP",
            forward(&["--proto", "icmp", "--host-port", "8081", "--to", "vm1:80"]),
            INVALID,
            &["icmp", "tcp or udp"],
        ),
        case(
            "forward to a guest port that is not a number",
            forward(&["--proto", "tcp", "--host-port", "8081", "--to", "vm1:http"]),
            INVALID,
            &["vm1:http"],
        ),
        case(
            "forward on a loopback address",
            forward(&["--proto", "tcp", "--host-port", "8081", "--to", "vm1", "--address", "127.0.0.1"]),
            INVALID,
            &["loopback"],
        ),
        case(
            "forward of DNS on every address",
            forward(&["--proto", "udp", "--host-port", "53", "--to", "vm1"]),
            CONFLICT,
            &["DNS"],
        ),
        case(
            "forward into another project's network",
            as_owner(&["net", "forward", "add", NET, "--proto", "tcp", "--host-port", "8081", "--to", "vm1"]),
            NOT_FOUND,
            &[NET],
        ),
        case(
            "deleting a forward that is not there",
            argv(&["net", "forward", "delete", NET, "--proto", "tcp", "--host-port", "8081"]),
            NOT_FOUND,
            &["tcp/8081"],
        ),
        case(
            "static host outside the subnet",
            argv(&["net", "host", "add", NET, "--mac", "52:54:00:aa:bb:03", "--ip", "10.0.0.5"]),
            INVALID,
            &["10.0.0.5", "subnet"],
        ),
        case(
            "static host on the gateway",
            argv(&["net", "host", "add", NET, "--mac", "52:54:00:aa:bb:03", "--ip", "192.168.122.1"]),
            INVALID,
            &["192.168.122.1", "gateway"],
        ),
        case(
            "static host on the broadcast address",
            argv(&["net", "host", "add", NET, "--mac", "52:54:00:aa:bb:03", "--ip", "192.168.122.255"]),
            INVALID,
            &["192.168.122.255"],
        ),
        case(
            "static host on a port's IP",
            argv(&["net", "host", "add", NET, "--mac", "52:54:00:aa:bb:03", "--ip", IP]),
            CONFLICT,
            &[IP],
        ),
        case(
            "static host on another host's IP",
            argv(&["net", "host", "add", NET, "--mac", "52:54:00:aa:bb:03", "--ip", HOST_IP]),
            CONFLICT,
            &[HOST_IP, HOST_MAC],
        ),
        case(
            "static host with a port's MAC",
            argv(&["net", "host", "add", NET, "--mac", MAC, "--ip", "192.168.122.30"]),
            CONFLICT,
            &[MAC, "port"],
        ),
        case(
            "static host MAC given twice",
            argv(&["net", "host", "add", NET, "--mac", HOST_MAC, "--ip", "192.168.122.30"]),
            CONFLICT,
            &[HOST_MAC],
        ),
        case(
            "static host with a taken name",
            argv(&["net", "host", "add", NET, "--mac", "52:54:00:aa:bb:03", "--ip", "192.168.122.30", "--name", "vm1"]),
            CONFLICT,
            &["vm1"],
        ),
        case(
            "static host with a bad name",
            argv(&["net", "host", "add", NET, "--mac", "52:54:00:aa:bb:03", "--ip", "192.168.122.30", "--name", "a b"]),
            INVALID,
            &["name"],
        ),
        case(
            "static host with a malformed MAC",
            argv(&["net", "host", "add", NET, "--mac", "52:54:00:zz:00:03", "--ip", "192.168.122.30"]),
            INVALID,
            &["mac"],
        ),
        case(
            "static host with a malformed IP",
            argv(&["net", "host", "add", NET, "--mac", "52:54:00:aa:bb:03", "--ip", "192.168.122"]),
            INVALID,
            &["ip"],
        ),
        case(
            "static host on a missing network",
            argv(&["net", "host", "add", "nosuch", "--mac", "52:54:00:aa:bb:03", "--ip", "192.168.122.30"]),
            NOT_FOUND,
            &["nosuch"],
        ),
        case(
            "port with a static host's MAC",
            port_create(NET, &spare_ns, "eth0", &["--mac", HOST_MAC]),
            CONFLICT,
            &[HOST_MAC, "static"],
        ),
        case(
            "port whose VM is a static host's name",
            argv(&[
                "port", "create", "--net", NET, "--vm", "Printer", "--type", "veth", "--netns", &spare_ns, "--ifname",
                "eth0",
            ]),
            CONFLICT,
            &["Printer", "static host"],
        ),
        case(
            "port on a static host's IP",
            port_create(NET, &spare_ns, "eth0", &["--ip", HOST_IP]),
            CONFLICT,
            &[HOST_IP],
        ),
        case(
            "deleting a missing static host",
            argv(&["net", "host", "delete", NET, "--mac", "52:54:00:aa:bb:09"]),
            NOT_FOUND,
            &["52:54:00:aa:bb:09"],
        ),
        case(
            "another project's network's static hosts from a project token",
            as_owner(&["net", "host", "list", NET]),
            NOT_FOUND,
            &[NET],
        ),
        case("floating IP from a missing pool", argv(&["fip", "create", "--pool", "nosuch"]), NOT_FOUND, &["nosuch"]),
        case("malformed floating IP", argv(&["fip", "associate", "banana", "vm1"]), INVALID, &["banana"]),
        case(
            "floating IP to a missing VM",
            argv(&["fip", "associate", "198.51.100.10", "nosuchvm"]),
            NOT_FOUND,
            &["nosuchvm"],
        ),
        case(
            "another project's floating IP from a project token",
            as_owner(&["fip", "associate", "198.51.100.10", "vm1"]),
            NOT_FOUND,
            &["no floating IP 198.51.100.10"],
        ),
        case("deleting a pool with held addresses", argv(&["fip", "pool", "delete", "pub"]), CONFLICT, &["held"]),
        case("grant to the project itself", argv(&["project", "allow", OWNER, "--to", OWNER]), INVALID, &["itself"]),
        case(
            "grant of a port without a protocol",
            argv(&["project", "allow", OWNER, "--to", "default", "--port", "22"]),
            INVALID,
            &["needs --proto"],
        ),
        case(
            "grant to a missing project",
            argv(&["project", "allow", OWNER, "--to", "nosuch"]),
            NOT_FOUND,
            &["no project named \"nosuch\""],
        ),
        case(
            "grant from a project token",
            as_owner(&["project", "allow", OWNER, "--to", "default"]),
            NOT_ALLOWED,
            &["admin only"],
        ),
        case(
            "taking back a grant that was never made",
            argv(&["project", "deny", OWNER, "--to", "default", "--proto", "tcp", "--port", "22"]),
            NOT_FOUND,
            &["has no grant"],
        ),
        // Refused while parsing options, before the daemon touches anything
        // (and the test daemon's live socket would stop it next).
        case(
            "--listen without a certificate and key",
            argv(&["daemon", "--listen", "127.0.0.1:7444", "--state-dir", &never_state]),
            INVALID,
            &["--listen 127.0.0.1:7444 needs --tls-cert PEM and --tls-key PEM"],
        ),
        case(
            "--log-level that is no level",
            // --listen without its PEMs too: were the level taken, the
            // daemon would still stop before it starts.
            argv(&["daemon", "--log-level", "lanyard=loud", "--listen", "127.0.0.1:7444", "--state-dir", &never_state]),
            INVALID,
            &["invalid --log-level (or LANYARD_LOG) \"lanyard=loud\""],
        ),
        case(
            "--listen without a key",
            argv(&["daemon", "--listen", "127.0.0.1:7444", "--tls-cert", "/etc/hostname", "--state-dir", &never_state]),
            INVALID,
            &["needs --tls-cert PEM and --tls-key PEM"],
        ),
    ];

    // Let the kernel settle (bridge carrier etc.) before taking the baseline.
    let mut before = snapshot(host);
    for i in 0..20 {
        sleep(Duration::from_millis(500));
        let again = snapshot(host);
        if again == before {
            eprintln!("baseline settled after {} checks", i + 1);
            break;
        }
        before = again;
    }

    let mut failures = Vec::new();
    for c in &cases {
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        let o = host.cli(&args);
        let err = stderr(&o);
        let lines: Vec<&str> = err.lines().collect();
        let mut problems = Vec::new();
        match (o.status.code(), c.code) {
            (Some(0), _) => problems.push("exited 0".to_string()),
            (got, Some(want)) if got != Some(want) => problems.push(format!("exit code {got:?}, want {want}")),
            _ => {}
        }
        if lines.len() != 1 {
            problems.push(format!("{} stderr lines instead of 1", lines.len()));
        }
        if !lines.first().is_some_and(|l| l.starts_with("error: ")) {
            problems.push("stderr does not begin with \"error: \"".to_string());
        }
        let lower = err.to_lowercase();
        if !c.mentions.iter().any(|m| lower.contains(&m.to_lowercase())) {
            problems.push(format!("message mentions none of {:?}", c.mentions));
        }
        if !o.stdout.is_empty() {
            problems.push(format!("stdout not empty: {:?}", stdout(&o)));
        }
        let after = snapshot(host);
        let changed = diff(&before, &after);
        if !changed.is_empty() {
            problems.push(format!("state changed:{changed}"));
            before = after; // judge the next case on its own
        }
        eprintln!(
            "[{}] {}: {} stderr={:?}",
            if problems.is_empty() { "ok" } else { "FAIL" },
            c.what,
            o.status,
            err.trim_end()
        );
        for p in &problems {
            eprintln!("       - {p}");
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: `lanyard {}` ({}, stderr {:?}):\n  - {}",
                c.what,
                args.join(" "),
                o.status,
                err,
                problems.join("\n  - ")
            ));
        }
    }

    // The daemon is still healthy and the valid network still usable.
    let port2 = host.cli_json(&[
        "port", "create", "--net", NET, "--vm", "vm2", "--type", "veth", "--netns", &spare_ns, "--ifname", "eth0",
    ]);
    assert_eq!(port2["net"], NET, "valid port create after the bad inputs: {port2}");
    assert!(spare.link("eth0").is_some(), "valid port after the bad inputs has no eth0 in its namespace");

    assert!(
        failures.is_empty(),
        "{} of {} bad inputs were not refused cleanly:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
