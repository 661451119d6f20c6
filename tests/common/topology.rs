//! Who is where: [`Host`] (a namespace with a daemon), [`Vm`] (a namespace
//! with a lanyard veth port), outside namespaces joined to the host by a
//! veth, namespaces plugged into a bridge by hand, and [`Topology`], the one
//! builder of "host + outsides + networks + VMs" that the tests share.

use std::net::Ipv4Addr;
use std::process::Output;

use serde_json::Value;

use super::daemon::Daemon;
use super::netns::Netns;
use super::probes::{field, in_subnet, parse_cidr, Dnsmasq};
use super::process::{stderr, stdout};

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

    /// See [`plug_by_hand`].
    pub fn attach_by_hand(&self, bridge: &str, role: &str, host_if: &str) -> Netns {
        plug_by_hand(&self.ns, bridge, role, host_if)
    }
}

/// A namespace plugged into `bridge` of `host` by hand (a veth lanyard
/// knows nothing about): `HOST_IF` in the host, `eth0` inside, both up.
pub fn plug_by_hand(host: &Netns, bridge: &str, role: &str, host_if: &str) -> Netns {
    let ns = Netns::new(role);
    host.ip_ok(&["link", "add", "name", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns.name()]);
    host.ip_ok(&["link", "set", "dev", host_if, "master", bridge]);
    host.ip_ok(&["link", "set", "dev", host_if, "up"]);
    ns.ip_ok(&["link", "set", "dev", "eth0", "up"]);
    ns
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

/// A network of a [`Topology`], as lanyard described it.
pub struct Net {
    /// Network name.
    pub name: String,
    /// `nat`, `route`, `bridge`, ...
    pub mode: String,
    /// "a.b.c.d/len".
    pub subnet: String,
    /// The host's address on the network (the gateway VMs use; in bridge
    /// mode the host's address on the LAN).
    pub gateway: Ipv4Addr,
    /// The bridge lanyard made for it.
    pub bridge: String,
    /// DNS domain (defaults to the network's name; empty if none).
    pub domain: String,
    /// What `net create -o json` returned.
    pub json: Value,
}

/// A VM of a [`Topology`]: a [`Vm`] on one of its networks.
pub struct Guest {
    /// Index into [`Topology::nets`].
    pub net: usize,
    /// The port's IP, or (bridge mode) what the LAN's DHCP server leased,
    /// once known.
    pub ip: Option<Ipv4Addr>,
    /// The VM (`vm.name` is the guest's name).
    pub vm: Vm,
}

/// An outside namespace of a [`Topology`], joined to the host by a veth.
pub struct Outside {
    /// Endpoint name (`out`, `outa`, ...).
    pub name: String,
    /// Its address (on `eth0`).
    pub ip: Ipv4Addr,
    /// The host's address on the link to it.
    pub host_ip: Ipv4Addr,
    /// A DHCP server playing the LAN's (bridge mode); dropped before the
    /// namespace.
    pub dhcp: Option<Dnsmasq>,
    /// The namespace.
    pub ns: Netns,
}

/// A host namespace with a daemon, and the outsides, networks and VMs a
/// test adds to it, each checked against the CLI contract on the way.
/// Endpoints are named: `host`, an outside's name, a VM's name. Fields drop
/// in order: VMs, outsides, then the host with its daemon.
pub struct Topology {
    /// VMs, in the order they were added.
    pub guests: Vec<Guest>,
    /// Outside namespaces.
    pub outsides: Vec<Outside>,
    /// Networks, in the order they were created.
    pub nets: Vec<Net>,
    /// The host namespace and its daemon.
    pub host: Host,
}

impl Topology {
    /// A new host namespace with a daemon in it; nothing else yet.
    pub fn start() -> Topology {
        Topology { guests: Vec::new(), outsides: Vec::new(), nets: Vec::new(), host: Host::start() }
    }

    /// An outside `name` joined to the host by a veth: `host_if` in the host
    /// with `host_cidr`, `eth0` outside with `outside_cidr`. No routes
    /// beyond the connected ones.
    pub fn add_outside(&mut self, name: &str, host_if: &str, host_cidr: &str, outside_cidr: &str) -> &mut Outside {
        let ns = self.host.add_outside_on(host_if, host_cidr, outside_cidr);
        self.outsides.push(Outside {
            name: name.to_string(),
            ip: parse_cidr(outside_cidr).0,
            host_ip: parse_cidr(host_cidr).0,
            dhcp: None,
            ns,
        });
        self.outsides.last_mut().expect("just added")
    }

    /// `lanyard net create NAME --mode MODE --subnet SUBNET -o json`,
    /// checked: the name, mode and subnet asked for, `active`, a gateway in
    /// the subnet, the DNS domain defaulting to the name. Returns the
    /// network's index.
    pub fn create_net(&mut self, name: &str, mode: &str, subnet: &str) -> usize {
        let v = self.host.cli_json(&["net", "create", name, "--mode", mode, "--subnet", subnet]);
        assert_eq!(v["name"], name, "net create: name in {v}");
        assert_eq!(v["mode"], mode, "net create: mode in {v}");
        assert_eq!(v["subnet"], subnet, "net create: subnet in {v}");
        assert_eq!(v["state"], "active", "net create: state in {v}");
        let gateway: Ipv4Addr = field(&v, "gateway").parse().expect("gateway is an IPv4 address");
        assert!(in_subnet(gateway, subnet), "gateway {gateway} outside {subnet}: {v}");
        assert_eq!(field(&v, "domain"), name, "the DNS domain defaults to the network name: {v}");
        self.push_net(v, gateway)
    }

    /// Records a network lanyard created (`v`: its JSON), the host having
    /// `gateway` on it. Returns its index.
    pub fn push_net(&mut self, v: Value, gateway: Ipv4Addr) -> usize {
        self.nets.push(Net {
            name: field(&v, "name").to_string(),
            mode: field(&v, "mode").to_string(),
            subnet: field(&v, "subnet").to_string(),
            gateway,
            bridge: field(&v, "bridge").to_string(),
            domain: v["domain"].as_str().unwrap_or_default().to_string(),
            json: v,
        });
        self.nets.len() - 1
    }

    /// A VM namespace `name` with a veth port (`eth0`) on network `net`
    /// (`EXTRA`: more `port create` flags), checked: the port is on that
    /// network and has an address of its subnet other than the gateway's,
    /// or none in bridge mode.
    pub fn add_vm(&mut self, name: &str, net: usize, extra: &[&str]) -> &Guest {
        let n = &self.nets[net];
        let vm = self.host.attach_vm(&n.name, name, extra);
        assert_eq!(vm.port["net"], n.name.as_str(), "port create: net in {}", vm.port);
        let ip = if n.mode == "bridge" {
            assert!(vm.port["ip"].is_null(), "bridge mode: a port gets no fixed IP (`ip` null): {}", vm.port);
            None
        } else {
            let ip = vm.ip();
            assert!(in_subnet(ip, &n.subnet), "port IP {ip} outside {}", n.subnet);
            assert_ne!(ip, n.gateway, "port got the gateway's address");
            Some(ip)
        };
        self.guests.push(Guest { net, ip, vm });
        self.guests.last().expect("just added")
    }

    /// The VM named `name`.
    pub fn guest(&self, name: &str) -> &Guest {
        self.guests.iter().find(|g| g.vm.name == name).unwrap_or_else(|| panic!("no VM {name:?} in the topology"))
    }

    /// The [`Vm`] named `name`.
    pub fn vm(&self, name: &str) -> &Vm {
        &self.guest(name).vm
    }

    /// Every VM, in the order they were added.
    pub fn vms(&self) -> impl Iterator<Item = &Vm> {
        self.guests.iter().map(|g| &g.vm)
    }

    /// The outside named `name`, if there is one.
    pub fn outside(&self, name: &str) -> Option<&Outside> {
        self.outsides.iter().find(|o| o.name == name)
    }

    /// The address of VM `name` (its port's, or what it leased).
    pub fn guest_ip(&self, name: &str) -> Ipv4Addr {
        self.guest(name).ip.unwrap_or_else(|| panic!("VM {name} has no address yet"))
    }

    /// The namespace of an endpoint: `host`, an outside's or a VM's name.
    pub fn ns(&self, who: &str) -> &Netns {
        if who == "host" {
            &self.host.ns
        } else if let Some(o) = self.outside(who) {
            &o.ns
        } else {
            &self.guest(who).vm.ns
        }
    }

    /// `port list -o json`.
    pub fn ports(&self) -> Vec<Value> {
        self.host.cli_json(&["port", "list"]).as_array().cloned().unwrap_or_else(|| panic!("port list is not an array"))
    }

    /// `lease list NET -o json`.
    pub fn leases(&self, net: &str) -> Vec<Value> {
        self.host
            .cli_json(&["lease", "list", net])
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("lease list {net} is not an array"))
    }

    /// The host's addresses, routes, forwarding and ruleset, for messages.
    pub fn diagnostics(&self) -> String {
        let h = &self.host.ns;
        let text = |o: Output| format!("{}{}", stdout(&o), stderr(&o));
        format!(
            "--- host: ip -br addr ---\n{}--- host: ip route ---\n{}--- host: ip_forward = {} ---\n--- host: nft list ruleset ---\n{}",
            text(h.ip(&["-br", "addr"])),
            text(h.ip(&["route"])),
            text(h.exec("cat", &["/proc/sys/net/ipv4/ip_forward"])).trim(),
            text(h.exec("nft", &["list", "ruleset"])),
        )
    }
}
