//! Who is where: [`Host`] (a namespace with a daemon), [`Vm`] (a namespace
//! with a lanyard veth port), outside namespaces joined to the host by a
//! veth, namespaces plugged into a bridge by hand.

use std::net::Ipv4Addr;
use std::process::Output;

use serde_json::Value;

use super::daemon::Daemon;
use super::netns::Netns;

/// The namespace that plays the host, with a daemon running in it. Fields
/// drop in order: the daemon stops before its namespace goes away.
pub struct Host {
    /// The daemon.
    pub daemon: Daemon,
    /// The host namespace.
    pub ns: Netns,
}

impl Host {
    /// A new host namespace with a daemon in it.
    pub fn start() -> Host {
        let ns = Netns::new("host");
        let daemon = Daemon::start(&ns);
        Host { daemon, ns }
    }

    /// See [`Daemon::cli`].
    pub fn cli(&self, args: &[&str]) -> Output {
        self.daemon.cli(args)
    }

    /// See [`Daemon::cli_ok`].
    pub fn cli_ok(&self, args: &[&str]) -> String {
        self.daemon.cli_ok(args)
    }

    /// See [`Daemon::cli_json`].
    pub fn cli_json(&self, args: &[&str]) -> Value {
        self.daemon.cli_json(args)
    }

    /// A namespace `outside` joined to the host by a veth: `up0` in the host
    /// with `host_cidr`, `eth0` outside with `outside_cidr`. No routes are
    /// added beyond the connected ones.
    pub fn add_outside(&self, host_cidr: &str, outside_cidr: &str) -> Netns {
        self.add_outside_on("up0", host_cidr, outside_cidr)
    }

    /// Like [`add_outside`](Self::add_outside), with the host side named
    /// `host_if` (for hosts with several uplinks): `host_if` in the host with
    /// `host_cidr`, `eth0` in a new outside namespace with `outside_cidr`.
    /// No routes beyond the connected ones.
    pub fn add_outside_on(&self, host_if: &str, host_cidr: &str, outside_cidr: &str) -> Netns {
        let out = Netns::new("out");
        self.ns.ip_ok(&["link", "add", "name", host_if, "type", "veth", "peer", "name", "eth0", "netns", out.name()]);
        self.ns.ip_ok(&["addr", "add", host_cidr, "dev", host_if]);
        self.ns.ip_ok(&["link", "set", "dev", host_if, "up"]);
        out.ip_ok(&["addr", "add", outside_cidr, "dev", "eth0"]);
        out.ip_ok(&["link", "set", "dev", "eth0", "up"]);
        out
    }

    /// A fresh VM namespace attached with
    /// `lanyard port create --net NET --vm VM --type veth --netns NS --ifname eth0 EXTRA -o json`.
    pub fn attach_vm(&self, net: &str, vm: &str, extra: &[&str]) -> Vm {
        let ns = Netns::new(vm);
        let port = self.veth_port(net, vm, &ns, extra);
        Vm { name: vm.to_string(), ifname: "eth0".to_string(), port, ns }
    }

    /// `lanyard port create --net NET --vm VM --type veth --netns NS --ifname eth0 EXTRA -o json`
    /// into an existing namespace; the port as JSON.
    pub fn veth_port(&self, net: &str, vm: &str, ns: &Netns, extra: &[&str]) -> Value {
        let mut args = vec![
            "port",
            "create",
            "--net",
            net,
            "--vm",
            vm,
            "--type",
            "veth",
            "--netns",
            ns.name(),
            "--ifname",
            "eth0",
        ];
        args.extend_from_slice(extra);
        self.cli_json(&args)
    }

    /// A namespace plugged into `bridge` by hand (a veth lanyard knows
    /// nothing about): `HOST_IF` in the host, `eth0` inside, both up.
    pub fn attach_by_hand(&self, bridge: &str, role: &str, host_if: &str) -> Netns {
        let ns = Netns::new(role);
        self.ns.ip_ok(&["link", "add", "name", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns.name()]);
        self.ns.ip_ok(&["link", "set", "dev", host_if, "master", bridge]);
        self.ns.ip_ok(&["link", "set", "dev", host_if, "up"]);
        ns.ip_ok(&["link", "set", "dev", "eth0", "up"]);
        ns
    }
}

/// A VM: a namespace with a lanyard veth port in it.
pub struct Vm {
    /// VM name given to `--vm`.
    pub name: String,
    /// Guest-side interface name.
    pub ifname: String,
    /// What `port create -o json` returned.
    pub port: Value,
    /// The VM's namespace.
    pub ns: Netns,
}

impl Vm {
    /// The port's id.
    pub fn id(&self) -> String {
        self.port["id"].as_str().unwrap_or_else(|| panic!("port without string id: {}", self.port)).to_string()
    }

    /// The port's IP.
    pub fn ip(&self) -> Ipv4Addr {
        self.port["ip"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("port without IPv4 ip: {}", self.port))
    }

    /// The port's MAC.
    pub fn mac(&self) -> String {
        self.port["mac"].as_str().unwrap_or_else(|| panic!("port without mac: {}", self.port)).to_string()
    }

    /// The host-side interface name.
    pub fn host_ifname(&self) -> String {
        self.port["ifname"].as_str().unwrap_or_else(|| panic!("port without ifname: {}", self.port)).to_string()
    }

    /// Configures the port's IP by hand (no DHCP): `ip/prefix`, default route
    /// via `gateway`.
    pub fn configure_static(&self, prefix: u8, gateway: &str) {
        let cidr = format!("{}/{prefix}", self.ip());
        self.ns.ip_ok(&["link", "set", "dev", &self.ifname, "up"]);
        self.ns.ip_ok(&["addr", "replace", &cidr, "dev", &self.ifname]);
        self.ns.ip_ok(&["route", "replace", "default", "via", gateway, "dev", &self.ifname]);
    }
}
