//! The control plane: turns API requests into validated records, plans,
//! kernel changes and stored state, in that order, so a request that fails
//! at any step leaves both the store and the kernel as they were.
//!
//! The engine is synchronous (it runs on blocking threads, behind one lock);
//! the only async pieces it starts are the per-network DHCP servers.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::dataplane::{self, ApplyError, Dataplane, DataplaneError};
use crate::dhcp::server::now;
use crate::dhcp::writer::LeaseWriter;
use crate::dhcp::{self, DhcpConfig};
use crate::dns;
use crate::ipam::{AddressBook, IpamError};
use crate::model::{Lease, Mac, Mode, ModelError, NetState, Network, NetworkSpec, Port, PortSpec, PortType};
use crate::planner::{self, Observed, Op};
use crate::store::{Store, StoreError};

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request itself is wrong.
    #[error(transparent)]
    Invalid(#[from] ModelError),
    /// The request is well formed but clashes with existing state.
    #[error("{0}")]
    Conflict(String),
    /// A named object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The kernel refused a change; everything done so far was rolled back.
    #[error("kernel change failed and was rolled back: {0}")]
    Apply(#[from] ApplyError),
    /// The kernel could not be read.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Names the failing entry of a batch request.
fn in_batch(i: usize, e: EngineError) -> EngineError {
    match e {
        EngineError::Conflict(m) => EngineError::Conflict(format!("port #{i}: {m}")),
        EngineError::NotFound(m) => EngineError::NotFound(format!("port #{i}: {m}")),
        EngineError::Invalid(ModelError::Invalid { what, value, why }) => {
            EngineError::Invalid(ModelError::Invalid { what, value, why: format!("{why} (port #{i})") })
        }
        other => other,
    }
}

impl From<IpamError> for EngineError {
    fn from(e: IpamError) -> Self {
        match e {
            IpamError::OutsideSubnet { ref ip, .. } => {
                EngineError::Invalid(ModelError::Invalid { what: "ip", value: ip.to_string(), why: e.to_string() })
            }
            other => EngineError::Conflict(other.to_string()),
        }
    }
}

/// Where the daemon keeps network namespaces that `--netns` names.
const NETNS_DIR: &str = "/run/netns";

/// A port as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PortView {
    /// The stored record.
    #[serde(flatten)]
    pub port: Port,
    /// QEMU arguments for tap ports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qemu_args: Option<String>,
}

impl From<Port> for PortView {
    fn from(port: Port) -> Self {
        PortView { qemu_args: port.qemu_args(), port }
    }
}

/// One bridge as `brctl show` prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BridgeView {
    /// Bridge name.
    pub name: String,
    /// Network it serves.
    pub net: String,
    /// Bridge id (priority.MAC).
    pub bridge_id: String,
    /// "yes" or "no".
    pub stp: String,
    /// Ports enslaved to it.
    pub interfaces: Vec<String>,
}

/// Ports whose veth peer namespace is gone cannot be re-created; they
/// are left out of the plan (and logged) instead of failing everything.
fn plannable(ports: &[Port]) -> Vec<Port> {
    ports
        .iter()
        .filter(|p| match (&p.port_type, &p.netns) {
            (PortType::Veth, Some(ns)) => {
                let ok = Path::new(NETNS_DIR).join(ns).exists();
                if !ok {
                    tracing::warn!(port = p.id, netns = ns, "namespace is gone; port left detached");
                }
                ok
            }
            _ => true,
        })
        .cloned()
        .collect()
}

/// The keys that must be unique across ports, kept alongside the port list
/// so a new port is checked in O(1), not by scanning ten thousand ports.
#[derive(Debug, Default)]
struct PortIndex {
    macs: HashSet<Mac>,
    ids: HashSet<String>,
    ifnames: HashSet<String>,
}

impl PortIndex {
    fn of(ports: &[Port]) -> Self {
        let mut index = PortIndex::default();
        ports.iter().for_each(|p| index.insert(p));
        index
    }

    fn insert(&mut self, p: &Port) {
        self.macs.insert(p.mac);
        self.ids.insert(p.id.clone());
        self.ifnames.insert(p.ifname.clone());
    }

    fn remove(&mut self, p: &Port) {
        self.macs.remove(&p.mac);
        self.ids.remove(&p.id);
        self.ifnames.remove(&p.ifname);
    }
}

/// The control plane of one daemon.
pub struct Engine {
    store: Arc<dyn Store>,
    dp: Box<dyn Dataplane>,
    rt: Handle,
    writer: LeaseWriter,
    networks: Vec<Network>,
    ports: Vec<Port>,
    index: PortIndex,
    books: HashMap<String, Arc<Mutex<AddressBook>>>,
    /// Per network: its DHCP and DNS server tasks.
    services: HashMap<String, Vec<JoinHandle<()>>>,
    firewall: Option<String>,
}

fn lock(book: &Mutex<AddressBook>) -> std::sync::MutexGuard<'_, AddressBook> {
    book.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    /// Loads the stored state and reconciles the kernel with it.
    pub fn start(store: Arc<dyn Store>, dp: Box<dyn Dataplane>, rt: Handle) -> Result<Self, EngineError> {
        let writer = LeaseWriter::start(store.clone());
        let networks = store.networks()?;
        let ports = store.ports()?;
        let leases = store.leases()?;
        let mut engine = Engine {
            store,
            dp,
            rt,
            writer,
            index: PortIndex::of(&ports),
            networks,
            ports,
            books: HashMap::new(),
            services: HashMap::new(),
            firewall: None,
        };
        for net in engine.networks.clone() {
            engine.books.insert(net.name.clone(), Arc::new(Mutex::new(AddressBook::new(net))));
        }
        for p in &engine.ports {
            if let Some(b) = engine.books.get(&p.net) {
                let mut b = lock(b);
                if let Some(ip) = p.ip {
                    b.add_static(p.mac, ip);
                }
                b.set_name(p.mac, &p.vm);
            }
        }
        for l in leases {
            if let Some(b) = engine.books.get(&l.net) {
                lock(b).restore_lease(l);
            }
        }
        let mut observed = engine.dp.observe()?;
        observed.firewall_fingerprint = engine.dp.firewall_fingerprint()?;
        engine.boot_states(&observed)?;
        if let Err(e) = engine.reconcile_with(&observed) {
            // The daemon still serves its API and the networks that work;
            // the error names what the operator has to look at.
            tracing::error!("reconcile incomplete: {e}");
        }
        Ok(engine)
    }

    /// After a host reboot the kernel has none of lanyard's bridges: like
    /// libvirt, networks come back only if they are marked autostart. A
    /// daemon restart finds the bridges in place and keeps networks active.
    fn boot_states(&mut self, observed: &Observed) -> Result<(), EngineError> {
        for net in &mut self.networks {
            let present = observed.links.contains_key(&net.bridge);
            let want = if net.autostart {
                NetState::Active
            } else if present {
                net.state
            } else {
                NetState::Inactive
            };
            if want != net.state {
                net.state = want;
                self.store.put_network(net)?;
                tracing::info!(net = net.name, state = ?want, "boot state");
            }
        }
        Ok(())
    }

    /// Brings the kernel to the stored state and starts missing DHCP servers.
    fn reconcile_with(&mut self, observed: &Observed) -> Result<(), EngineError> {
        let ports = plannable(&self.ports);
        let plan = planner::plan(&self.networks, &ports, observed);
        tracing::info!(ops = plan.ops.len(), "reconciling");
        dataplane::apply(self.dp.as_ref(), &plan, None)?;
        self.firewall = Some(plan.firewall);
        for net in self.networks.clone() {
            self.ensure_services(&net);
        }
        Ok(())
    }

    /// Starts the DHCP and DNS servers of an active network that has none
    /// running. A server that cannot start is logged; the network stays up.
    fn ensure_services(&mut self, net: &Network) {
        if net.state != NetState::Active || !net.mode.serves_dhcp() {
            return;
        }
        if self.services.get(&net.name).is_some_and(|v| v.iter().any(|h| !h.is_finished())) {
            return;
        }
        let Some(book) = self.books.get(&net.name).cloned() else { return };
        let _guard = self.rt.enter();
        let mut tasks = Vec::new();
        let dns_socket = dns::bind(net.gateway, &net.bridge);
        let dns_addr = dns_socket.is_ok().then_some(net.gateway);
        match dns_socket {
            Ok((udp, tcp)) => {
                let forwards = net.mode != Mode::Isolated;
                let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
                let upstreams = dns::upstreams(&resolv, net.gateway);
                let resolver = Arc::new(dns::Resolver::new(net.name.clone(), book.clone(), forwards, upstreams));
                tasks.push(self.rt.spawn(dns::serve_udp(udp, resolver.clone())));
                tasks.push(self.rt.spawn(dns::serve_tcp(tcp, resolver)));
            }
            Err(e) => tracing::error!(net = net.name, "cannot open the DNS socket on {}:53: {e}", net.gateway),
        }
        match dhcp::server::bind(&net.bridge) {
            Ok(socket) => {
                let cfg = DhcpConfig::for_network(net, dns_addr);
                tasks.push(self.rt.spawn(dhcp::server::serve(
                    net.name.clone(),
                    socket,
                    book,
                    cfg,
                    self.writer.clone(),
                )));
            }
            Err(e) => tracing::error!(net = net.name, "cannot open the DHCP socket on {}: {e}", net.bridge),
        }
        tracing::info!(net = net.name, bridge = net.bridge, dns = ?dns_addr, "dhcp and dns servers started");
        self.services.insert(net.name.clone(), tasks);
    }

    fn stop_services(&mut self, name: &str) {
        for h in self.services.remove(name).into_iter().flatten() {
            h.abort();
        }
    }

    /// Applies the plan for `networks` + `ports`; on success they become the
    /// engine's state.
    fn apply_state(
        &mut self,
        networks: Vec<Network>,
        ports: Vec<Port>,
        observed: &Observed,
    ) -> Result<(), EngineError> {
        let plan = planner::plan(&networks, &plannable(&ports), observed);
        dataplane::apply(self.dp.as_ref(), &plan, self.firewall.as_deref())?;
        self.firewall = Some(plan.firewall);
        self.networks = networks;
        self.index = PortIndex::of(&ports);
        self.ports = ports;
        Ok(())
    }

    /// The kernel as the planner needs it: links and routes read now, and
    /// the firewall's fingerprint taken from the table this engine last
    /// applied (it is the only writer of that table, so it need not ask nft).
    fn observe(&self) -> Result<Observed, EngineError> {
        let mut o = self.dp.observe()?;
        o.firewall_fingerprint = self.firewall.as_deref().and_then(planner::fingerprint);
        Ok(o)
    }

    /// Runs link operations that leave the firewall as it is.
    fn apply_ops(&self, ops: Vec<Op>) -> Result<(), EngineError> {
        let plan = planner::Plan { ops, firewall: String::new(), firewall_current: true };
        dataplane::apply(self.dp.as_ref(), &plan, None)?;
        Ok(())
    }

    /// All networks.
    pub fn networks(&self) -> Vec<Network> {
        self.networks.clone()
    }

    /// One network.
    pub fn network(&self, name: &str) -> Result<Network, EngineError> {
        self.networks
            .iter()
            .find(|n| n.name == name)
            .cloned()
            .ok_or_else(|| EngineError::NotFound(format!("no network named {name:?} (see `lanyard net list`)")))
    }

    /// Defines and starts a network.
    pub fn create_network(&mut self, spec: NetworkSpec) -> Result<Network, EngineError> {
        if self.networks.iter().any(|n| n.name == spec.name) {
            return Err(EngineError::Conflict(format!("a network named {:?} already exists", spec.name)));
        }
        let observed = self.observe()?;
        let taken: BTreeSet<&str> =
            self.networks.iter().map(|n| n.bridge.as_str()).chain(observed.links.keys().map(String::as_str)).collect();
        let default_bridge =
            || (0..).map(|i| format!("lybr{i}")).find(|b| !taken.contains(b.as_str())).expect("unbounded");
        let mut spec = spec;
        if let (Some(uplink), "bridge") = (spec.uplink.as_deref(), spec.mode.as_str()) {
            crate::model::validate_ifname("uplink", uplink)?;
            self.check_uplink(uplink, &observed)?;
            if spec.subnet.is_empty() {
                // The LAN's subnet, as the uplink is configured now.
                let Some(addr) = observed.links.get(uplink).and_then(|l| l.addrs.first()) else {
                    return Err(EngineError::Invalid(ModelError::Invalid {
                        what: "subnet",
                        value: String::new(),
                        why: format!(
                            "uplink {uplink} has no IPv4 address to take the LAN's subnet from; give --subnet"
                        ),
                    }));
                };
                spec.subnet = addr.trunc().to_string();
                spec.gateway.get_or_insert_with(|| addr.addr().to_string());
            }
        }
        let net = spec.validate(default_bridge)?;
        if let Some(other) = self.networks.iter().find(|n| n.bridge == net.bridge) {
            return Err(EngineError::Conflict(format!("bridge {} is in use by network {:?}", net.bridge, other.name)));
        }
        if observed.links.contains_key(&net.bridge) {
            return Err(EngineError::Conflict(format!(
                "an interface named {} already exists on this host",
                net.bridge
            )));
        }
        if let Some(other) = self.networks.iter().find(|n| n.subnet_overlaps(&net)) {
            return Err(EngineError::Conflict(format!(
                "subnet {} overlaps {} of network {:?}",
                net.subnet, other.subnet, other.name
            )));
        }
        // A bridge-mode network's subnet is the LAN the uplink already
        // routes to: only other interfaces' routes count as a clash.
        let clash = observed
            .routes
            .iter()
            .filter(|r| r.dev.is_none() || r.dev != net.uplink)
            .find_map(|r| r.dst.filter(|d| d.contains(&net.subnet.network()) || net.subnet.contains(&d.network())));
        if let Some(dst) = clash {
            return Err(EngineError::Conflict(format!("subnet {} overlaps the host's route to {dst}", net.subnet)));
        }

        let mut networks = self.networks.clone();
        networks.push(net.clone());
        self.apply_state(networks, self.ports.clone(), &observed)?;
        if let Err(e) = self.store.put_network(&net) {
            self.networks.retain(|n| n.name != net.name);
            self.rollback_to_state();
            return Err(e.into());
        }
        self.books.insert(net.name.clone(), Arc::new(Mutex::new(AddressBook::new(net.clone()))));
        self.ensure_services(&net);
        tracing::info!(net = net.name, subnet = %net.subnet, bridge = net.bridge, "network created");
        Ok(net)
    }

    fn check_adoptable(&self, tap: &str) -> Result<(), EngineError> {
        if let Some(p) = self.ports.iter().find(|p| p.ifname == tap) {
            return Err(EngineError::Conflict(format!("{tap} is already port {} (vm {})", p.id, p.vm)));
        }
        // Only this one link matters: no full observation of the host.
        let links = self.dp.observe_links(&[tap])?;
        match links.get(tap) {
            None => Err(EngineError::NotFound(format!("no interface named {tap} to adopt"))),
            Some(l) if l.kind.as_deref() != Some("tun") => {
                Err(EngineError::Conflict(format!("{tap} is not a TAP device; only TAPs can be adopted")))
            }
            Some(l) if l.master.is_some() => Err(EngineError::Conflict(format!(
                "{tap} is already a port of bridge {}",
                l.master.as_deref().unwrap_or_default()
            ))),
            Some(_) => Ok(()),
        }
    }

    fn check_uplink(&self, uplink: &str, observed: &Observed) -> Result<(), EngineError> {
        let Some(link) = observed.links.get(uplink) else {
            return Err(EngineError::NotFound(format!("no interface named {uplink} to use as uplink (see `ip link`)")));
        };
        if let Some(master) = &link.master {
            return Err(EngineError::Conflict(format!("uplink {uplink} is already a port of bridge {master}")));
        }
        if link.owned() || link.kind.as_deref() == Some("bridge") {
            return Err(EngineError::Conflict(format!("{uplink} is a bridge or a lanyard port, not a NIC to uplink")));
        }
        if let Some(other) = self.networks.iter().find(|n| n.uplink.as_deref() == Some(uplink)) {
            return Err(EngineError::Conflict(format!("uplink {uplink} is in use by network {:?}", other.name)));
        }
        Ok(())
    }

    /// After a store failure: bring the kernel back to the engine's state.
    fn rollback_to_state(&mut self) {
        let result = self.observe().and_then(|o| {
            let plan = planner::plan(&self.networks, &plannable(&self.ports), &o);
            dataplane::apply(self.dp.as_ref(), &plan, self.firewall.as_deref()).map_err(EngineError::from)?;
            self.firewall = Some(plan.firewall);
            Ok(())
        });
        if let Err(e) = result {
            tracing::error!("rollback after a store failure incomplete: {e}");
        }
    }

    /// Starts (`active = true`) or stops a defined network. Stopping removes
    /// its bridge and rules and stops its DHCP server; ports and leases stay.
    pub fn set_active(&mut self, name: &str, active: bool) -> Result<Network, EngineError> {
        let mut net = self.network(name)?;
        let state = if active { NetState::Active } else { NetState::Inactive };
        if net.state == state {
            return Err(EngineError::Conflict(format!(
                "network {name:?} is already {}",
                if active { "active" } else { "inactive" }
            )));
        }
        let observed = self.observe()?;
        if active {
            if let Some(other) =
                self.networks.iter().find(|n| n.name != name && n.state == NetState::Active && n.subnet_overlaps(&net))
            {
                return Err(EngineError::Conflict(format!(
                    "subnet {} overlaps active network {:?}",
                    net.subnet, other.name
                )));
            }
        } else {
            self.stop_services(name);
        }
        net.state = state;
        let networks: Vec<Network> =
            self.networks.iter().map(|n| if n.name == name { net.clone() } else { n.clone() }).collect();
        if let Err(e) = self.apply_state(networks, self.ports.clone(), &observed) {
            if !active {
                let old = self.network(name)?;
                self.ensure_services(&old);
            }
            return Err(e);
        }
        self.store.put_network(&net)?;
        if active {
            self.ensure_services(&net);
        }
        tracing::info!(net = name, active, "network state changed");
        Ok(net)
    }

    /// Marks a network to start (or not) at boot.
    pub fn set_autostart(&mut self, name: &str, autostart: bool) -> Result<Network, EngineError> {
        let mut net = self.network(name)?;
        net.autostart = autostart;
        self.store.put_network(&net)?;
        if let Some(n) = self.networks.iter_mut().find(|n| n.name == name) {
            n.autostart = autostart;
        }
        Ok(net)
    }

    /// Stops and deletes a network with its ports and leases.
    pub fn delete_network(&mut self, name: &str) -> Result<(), EngineError> {
        self.network(name)?;
        let observed = self.observe()?;
        let networks: Vec<Network> = self.networks.iter().filter(|n| n.name != name).cloned().collect();
        let ports: Vec<Port> = self.ports.iter().filter(|p| p.net != name).cloned().collect();
        self.stop_services(name);
        if let Err(e) = self.apply_state(networks, ports, &observed) {
            let net = self.network(name)?;
            self.ensure_services(&net);
            return Err(e);
        }
        self.store.delete_network(name)?;
        self.books.remove(name);
        tracing::info!(net = name, "network deleted");
        Ok(())
    }

    /// Ports, optionally filtered.
    pub fn ports(&self, vm: Option<&str>, net: Option<&str>) -> Vec<Port> {
        self.ports.iter().filter(|p| vm.is_none_or(|v| p.vm == v) && net.is_none_or(|n| p.net == n)).cloned().collect()
    }

    /// Creates a port: its device, bridge membership and fixed IP.
    pub fn create_port(&mut self, spec: PortSpec) -> Result<Port, EngineError> {
        Ok(self.create_ports(vec![spec])?.remove(0))
    }

    /// Creates several ports all or nothing: one pass over the kernel (one
    /// `ip -batch`), one store transaction. The bulk path for provisioning.
    pub fn create_ports(&mut self, specs: Vec<PortSpec>) -> Result<Vec<Port>, EngineError> {
        let mut batch = PortIndex::default();
        let mut ports: Vec<Port> = Vec::with_capacity(specs.len());
        let release = |engine: &Self, ports: &[Port]| {
            for p in ports {
                if let Some(book) = engine.books.get(&p.net) {
                    lock(book).remove_static(p.mac);
                }
            }
        };
        for (i, spec) in specs.iter().enumerate() {
            match self.prepare_port(spec, &mut batch) {
                Ok(p) => ports.push(p),
                Err(e) => {
                    release(self, &ports);
                    return Err(if specs.len() > 1 { in_batch(i, e) } else { e });
                }
            }
        }
        // Only these ports' links are looked at and changed: the cost of a
        // port does not grow with the number of ports already there.
        let names: Vec<&str> = ports.iter().map(|p| p.ifname.as_str()).collect();
        let result = self.dp.observe_links(&names).map_err(EngineError::from).and_then(|links| {
            let mut ops = Vec::new();
            for p in &ports {
                let net = self.networks.iter().find(|n| n.name == p.net && n.state == NetState::Active);
                ops.extend(planner::port_ops(p, net, links.get(&p.ifname)));
            }
            self.apply_ops(ops)
        });
        if let Err(e) = result {
            release(self, &ports);
            return Err(e);
        }
        if let Err(e) = self.store.put_ports(&ports) {
            release(self, &ports);
            let undo = ports.iter().flat_map(|p| planner::port_ops(p, None, None)).filter_map(|op| op.undo()).collect();
            if let Err(re) = self.apply_ops(undo) {
                tracing::error!("rollback after a store failure incomplete: {re}");
            }
            return Err(e.into());
        }
        for p in &ports {
            if let Some(book) = self.books.get(&p.net) {
                lock(book).set_name(p.mac, &p.vm);
            }
            tracing::info!(port = p.id, vm = p.vm, net = p.net, ip = ?p.ip, mac = %p.mac, "port created");
        }
        ports.iter().for_each(|p| self.index.insert(p));
        self.ports.extend(ports.iter().cloned());
        Ok(ports)
    }

    /// Validates one port request against the state (and the ports earlier
    /// in the same batch) and reserves its MAC, id and fixed IP.
    fn prepare_port(&self, spec: &PortSpec, batch: &mut PortIndex) -> Result<Port, EngineError> {
        let taken_mac = |m: &Mac| self.index.macs.contains(m) || batch.macs.contains(m);
        let taken_ifname = |n: &str| self.index.ifnames.contains(n) || batch.ifnames.contains(n);
        let taken_id = |i: &str| self.index.ids.contains(i) || batch.ids.contains(i);
        let checked = spec.check()?;
        let net = self.network(&spec.net)?;
        if let Some((ns, _)) = &checked.peer {
            if !Path::new(NETNS_DIR).join(ns).exists() {
                return Err(EngineError::NotFound(format!(
                    "no network namespace named {ns:?} (create it with `ip netns add {ns}`)"
                )));
            }
        }
        if let Some(tap) = &checked.adopt {
            if taken_ifname(tap) {
                return Err(EngineError::Conflict(format!("{tap} is already a port")));
            }
            self.check_adoptable(tap)?;
        }
        let mac = match checked.mac {
            Some(mac) => {
                if taken_mac(&mac) {
                    let holder = self.ports.iter().find(|p| p.mac == mac);
                    return Err(EngineError::Conflict(match holder {
                        Some(p) => format!("MAC {mac} is in use by port {} (vm {})", p.id, p.vm),
                        None => format!("MAC {mac} is given twice"),
                    }));
                }
                mac
            }
            None => loop {
                let m = Mac::random_qemu();
                if !taken_mac(&m) {
                    break m;
                }
            },
        };
        let id = loop {
            let id = format!("{:08x}", rand::random::<u32>());
            if !taken_id(&id) && !taken_ifname(&Port::ifname_for(&id)) {
                break id;
            }
        };
        let book = self.books.get(&net.name).cloned().expect("every network has an address book");
        // On a bridge-mode network the LAN's DHCP server assigns addresses.
        let ip = if net.mode.serves_dhcp() {
            Some(lock(&book).reserve_fixed(mac, checked.ip, now())?)
        } else if let Some(ip) = checked.ip {
            return Err(EngineError::Invalid(ModelError::Invalid {
                what: "ip",
                value: ip.to_string(),
                why: "a bridge-mode network's addresses come from the LAN's DHCP server; leave out --ip".into(),
            }));
        } else {
            None
        };
        let (netns, peer_ifname) = checked.peer.map_or((None, None), |(a, b)| (Some(a), Some(b)));
        let ifname = checked.adopt.clone().unwrap_or_else(|| Port::ifname_for(&id));
        let port = Port {
            adopted: checked.adopt.is_some(),
            ifname,
            id,
            net: net.name.clone(),
            vm: spec.vm.clone(),
            port_type: checked.port_type,
            mac,
            ip,
            netns,
            peer_ifname,
            owner: spec.owner.clone(),
            group: spec.group.clone(),
        };
        batch.insert(&port);
        Ok(port)
    }

    /// Deletes a port: its device goes, its IP is free again.
    pub fn delete_port(&mut self, id: &str) -> Result<(), EngineError> {
        let port = self
            .ports
            .iter()
            .find(|p| p.id == id)
            .cloned()
            .ok_or_else(|| EngineError::NotFound(format!("no port with id {id:?} (see `lanyard port list`)")))?;
        let links = self.dp.observe_links(&[&port.ifname])?;
        // lanyard deletes only what it created; an adopted TAP is QEMU's.
        if links.get(&port.ifname).is_some_and(|l| l.owned()) {
            self.apply_ops(vec![Op::DeleteLink { name: port.ifname.clone() }])?;
        }
        self.ports.retain(|p| p.id != id);
        self.index.remove(&port);
        self.store.delete_port(&port)?;
        if let Some(book) = self.books.get(&port.net) {
            lock(book).remove_static(port.mac);
        }
        tracing::info!(port = id, "port deleted");
        Ok(())
    }

    /// Leases of a network, ordered by address.
    pub fn leases(&self, net: &str) -> Result<Vec<Lease>, EngineError> {
        self.network(net)?;
        let mut v: Vec<Lease> = self.books.get(net).map(|b| lock(b).leases().cloned().collect()).unwrap_or_default();
        v.sort_by_key(|l| l.ip);
        Ok(v)
    }

    /// lanyard's bridges and their interfaces.
    pub fn bridges(&self) -> Result<Vec<BridgeView>, EngineError> {
        let observed = self.dp.observe()?;
        Ok(self
            .networks
            .iter()
            .filter(|n| observed.links.contains_key(&n.bridge))
            .map(|n| BridgeView {
                bridge_id: observed.links[&n.bridge].bridge_id.clone().unwrap_or_default(),
                stp: if observed.links[&n.bridge].stp == Some(true) { "yes" } else { "no" }.into(),
                name: n.bridge.clone(),
                net: n.name.clone(),
                interfaces: observed
                    .links
                    .values()
                    .filter(|l| l.master.as_deref() == Some(n.bridge.as_str()))
                    .map(|l| l.name.clone())
                    .collect(),
            })
            .collect())
    }

    /// Stops the DHCP and DNS servers (the kernel state stays: VMs keep running).
    pub fn shutdown(&mut self) {
        for h in self.services.drain().flat_map(|(_, v)| v) {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::fake::FakeDataplane;
    use crate::store::sqlite::SqliteStore;
    use std::net::Ipv4Addr;

    fn engine(dp: FakeDataplane) -> (Engine, tokio::runtime::Runtime) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        let e = Engine::start(store, Box::new(dp), rt.handle().clone()).unwrap();
        (e, rt)
    }

    fn spec(name: &str, subnet: &str) -> NetworkSpec {
        NetworkSpec { name: name.into(), mode: "open".into(), subnet: subnet.into(), ..Default::default() }
    }

    #[test]
    fn conflicts_are_refused_before_any_kernel_change() {
        let (mut e, _rt) = engine(FakeDataplane::default());
        e.create_network(spec("a", "10.1.0.0/24")).unwrap();
        let before = e.networks();
        for bad in [spec("a", "10.2.0.0/24"), spec("b", "10.1.0.128/25"), spec("c", "10.0.0.0/8")] {
            assert!(matches!(e.create_network(bad), Err(EngineError::Conflict(_))));
        }
        let mut s = spec("d", "10.3.0.0/24");
        s.bridge = Some("lybr0".into());
        assert!(matches!(e.create_network(s), Err(EngineError::Conflict(_))));
        assert_eq!(e.networks(), before);
    }

    #[test]
    fn a_failed_apply_leaves_state_unchanged() {
        let dp = FakeDataplane::default();
        dp.fail_on("SetUp lybr0");
        let (mut e, _rt) = engine(dp);
        let err = e.create_network(spec("a", "10.1.0.0/24")).unwrap_err();
        assert!(matches!(err, EngineError::Apply(_)), "{err}");
        assert!(e.networks().is_empty());
        assert!(e.store.networks().unwrap().is_empty());
    }

    #[test]
    fn ports_get_unique_macs_and_ips() {
        let (mut e, _rt) = engine(FakeDataplane::default());
        e.create_network(spec("a", "10.1.0.0/29")).unwrap();
        let p = |ip: Option<&str>, mac: Option<&str>| PortSpec {
            net: "a".into(),
            vm: "vm".into(),
            ip: ip.map(Into::into),
            mac: mac.map(Into::into),
            ..Default::default()
        };
        let a = e.create_port(p(None, Some("52:54:00:00:00:01"))).unwrap();
        assert!(matches!(e.create_port(p(None, Some("52:54:00:00:00:01"))), Err(EngineError::Conflict(_))));
        assert!(matches!(e.create_port(p(Some(&a.ip.unwrap().to_string()), None)), Err(EngineError::Conflict(_))));
        assert!(matches!(e.create_port(p(Some("10.9.0.1"), None)), Err(EngineError::Invalid(_))));
        let ips: BTreeSet<Option<Ipv4Addr>> =
            (0..4).map(|_| e.create_port(p(None, None)).unwrap().ip).chain([a.ip]).collect();
        assert_eq!(ips.len(), 5, "a /29 has 5 guest addresses");
        assert!(matches!(e.create_port(p(None, None)), Err(EngineError::Conflict(_))));
        e.delete_port(&a.id).unwrap();

        assert_eq!(e.create_port(p(None, None)).unwrap().ip, a.ip);
        assert_eq!(e.store.ports().unwrap().len(), 5);
    }

    #[test]
    fn a_batch_is_all_or_nothing() {
        let (mut e, _rt) = engine(FakeDataplane::default());
        e.create_network(spec("a", "10.1.0.0/24")).unwrap();
        let p = |mac: Option<&str>| PortSpec {
            net: "a".into(),
            vm: "vm".into(),
            mac: mac.map(Into::into),
            ..Default::default()
        };
        let err =
            e.create_ports(vec![p(None), p(Some("52:54:00:00:00:07")), p(Some("52:54:00:00:00:07"))]).unwrap_err();
        assert!(err.to_string().contains("port #2"), "{err}");
        assert!(e.ports(None, None).is_empty());
        assert!(e.store.ports().unwrap().is_empty());
        let made = e.create_ports(vec![p(None), p(None), p(None)]).unwrap();
        assert_eq!(made[0].ip, Some("10.1.0.2".parse().unwrap()), "addresses released by the failed batch are reused");
        assert_eq!(e.store.ports().unwrap().len(), 3);
    }
}
