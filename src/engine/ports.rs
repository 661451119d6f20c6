//! Port mutations: create (one, or a batch all or nothing) and delete. A
//! port's cost does not depend on how many ports exist: only its own link
//! is read and changed.

use std::collections::{BTreeMap, HashSet};

use super::{lock, Engine, EngineError, PortIndex, BRIDGE_MAX_PORTS};
use crate::kernel::firewall::apply_elements;
use crate::kernel::{FirewallChange, Op, Plan};
use crate::model::{network_key, Mac, ModelError, NetState, Port, PortSpec, DEFAULT_PROJECT};
use crate::planner;
use crate::store::{port_claims, StoreError, CLAIM_IP};

/// Element changes as one firewall change per table (each is one
/// nftables transaction).
fn per_table(changes: &[crate::kernel::ElementChange]) -> Vec<FirewallChange> {
    let mut tables: Vec<&crate::kernel::TableId> = changes.iter().map(|c| &c.table).collect();
    tables.sort();
    tables.dedup();
    tables
        .into_iter()
        .map(|t| FirewallChange::Elements(changes.iter().filter(|c| &c.table == t).cloned().collect()))
        .collect()
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

/// How often a port create chooses again when other hosts' ports took
/// the values it chose (each time after learning what they hold).
const CLAIM_ATTEMPTS: usize = 16;

/// How long an address another host's port holds is kept out of this
/// host's choices after its claim was seen (the watch brings the port
/// itself well within that).
const CLAIMED_ELSEWHERE_HOLD_SECS: u64 = 60;

/// The conflict a lost claim becomes.
fn claimed(kind: &str, value: &str, holder: &str, named: bool) -> EngineError {
    let what = if kind == CLAIM_IP {
        format!("IP {}", value.rsplit_once('/').map_or(value, |(_, ip)| ip))
    } else {
        format!("MAC {value}")
    };
    EngineError::Conflict(if named {
        format!("{what} is in use by port {holder} (possibly created through another host)")
    } else {
        format!(
            "{what} was taken by port {holder} while this port was being created, {CLAIM_ATTEMPTS} times in a row: \
             other hosts are creating ports on this network too; retry"
        )
    })
}

impl Engine {
    /// The port `name` names among the ports `keep` selects: one with that
    /// id, else the one port of the VM of that name. `Err` with the ids of
    /// the VM's ports when it has none (empty) or several there; the
    /// caller says which, in its own words.
    pub(super) fn port_by_id_or_vm(&self, name: &str, keep: impl Fn(&Port) -> bool) -> Result<Port, Vec<String>> {
        if let Some(p) = self.index.by_id.get(name).filter(|p| keep(p)) {
            return Ok(p.clone());
        }
        let mut of_vm = self.ports.iter().filter(|p| p.vm == name && keep(p));
        match (of_vm.next(), of_vm.next()) {
            (Some(one), None) => Ok(one.clone()),
            (None, _) => Err(Vec::new()),
            (Some(a), Some(b)) => Err([a, b].into_iter().chain(of_vm).map(|p| p.id.clone()).collect()),
        }
    }

    /// Creates a port: its device, bridge membership and fixed IP.
    pub fn create_port(&mut self, spec: PortSpec) -> Result<Port, EngineError> {
        Ok(self.create_ports(vec![spec])?.remove(0))
    }

    /// Creates several ports all or nothing: one pass over the kernel, one
    /// store transaction. The bulk path for provisioning.
    pub fn create_ports(&mut self, mut specs: Vec<PortSpec>) -> Result<Vec<Port>, EngineError> {
        // Ports that name no network go on their project's VLAN-manager
        // network, made now if need be, and gone again if the ports fail.
        let made = self.resolve_project_networks(&mut specs)?;
        let result = self.create_ports_on(specs);
        if result.is_err() {
            self.forget_networks(&made);
        }
        result
    }

    fn create_ports_on(&mut self, specs: Vec<PortSpec>) -> Result<Vec<Port>, EngineError> {
        let mut attempt = 1;
        let ports = loop {
            let mut batch = PortIndex::default();
            let mut ports: Vec<Port> = Vec::with_capacity(specs.len());
            for (i, spec) in specs.iter().enumerate() {
                match self.prepare_port(spec, &mut batch, attempt > 1) {
                    Ok(p) => ports.push(p),
                    Err(e) => {
                        self.release_addresses(&ports);
                        return Err(if specs.len() > 1 { in_batch(i, e) } else { e });
                    }
                }
            }
            match self.commit_ports(&ports) {
                Ok(()) => break ports,
                Err(EngineError::Store(StoreError::Claimed { kind, value, holder })) => {
                    // Another host's port holds a value this host thought
                    // free: one it chose is chosen again, after learning
                    // what the others hold; one the request named is a
                    // conflict, as on a single host.
                    self.release_addresses(&ports);
                    let named = ports.iter().zip(&specs).any(|(p, spec)| {
                        port_claims(p).iter().any(|c| c.kind == kind && c.value == value)
                            && if kind == CLAIM_IP { spec.ip.is_some() } else { spec.mac.is_some() }
                    });
                    if named || attempt >= CLAIM_ATTEMPTS {
                        return Err(claimed(&kind, &value, &holder, named));
                    }
                    if kind == CLAIM_IP {
                        self.learn_claimed_addresses()?;
                    }
                    attempt += 1;
                }
                Err(e) => {
                    self.release_addresses(&ports);
                    return Err(e);
                }
            }
        };
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

    /// Plans, applies and stores new ports. Only these ports' links are
    /// looked at and changed.
    fn commit_ports(&mut self, ports: &[Port]) -> Result<(), EngineError> {
        let names: Vec<String> =
            ports.iter().flat_map(|p| planner::links::port_link_names(p, &self.trunk_of(p))).collect();
        let mut names: Vec<&str> = names.iter().map(String::as_str).collect();
        let active: Vec<&crate::model::Network> = self
            .networks
            .iter()
            .filter(|n| n.state == NetState::Active && ports.iter().any(|p| p.net == n.key()))
            .collect();
        names.extend(active.iter().map(|n| n.bridge.as_str()));
        let links = self.kernel.observe_links(&names)?;
        // A bridge gone (or taken) under lanyard is the healer's to restore
        // (or to stop the network); until then a port cannot join it.
        if let Some(n) = active.iter().find(|n| !links.get(&n.bridge).is_some_and(|l| l.owned() || n.adopted)) {
            return Err(EngineError::Conflict(format!(
                "network {:?} has lost its bridge {} (see `lanyard status` and the daemon's log); try again once \
                 it is restored",
                n.name, n.bridge
            )));
        }
        let mut ops = Vec::new();
        for p in ports {
            let net = self.networks.iter().find(|n| n.key() == p.net && n.state == NetState::Active);
            ops.extend(planner::port_ops(p, net, &self.trunk_of(p), &links));
        }
        let changes = planner::firewall::port_changes(ports, &self.networks, true);
        let firewall = if changes.is_empty() { Vec::new() } else { vec![FirewallChange::Elements(changes.clone())] };
        let plan = Plan { ops, firewall };
        self.commit(&plan, |t| apply_elements(t, &changes), |s| s.put_ports(ports), |_| Ok(()))
    }

    /// The active VLAN networks a trunk port carries.
    pub(super) fn trunk_of(&self, port: &Port) -> Vec<&crate::model::Network> {
        port.trunk
            .iter()
            .filter_map(|t| self.networks.iter().find(|n| n.key() == *t && n.state == NetState::Active))
            .collect()
    }

    /// Checks a trunk port's networks: each exists (in the port's project)
    /// and is a VLAN network, all ride on one uplink, and the untagged
    /// network is not also tagged. Returns their keys.
    fn check_trunk_port(
        &self,
        spec: &PortSpec,
        project: &str,
        native: &str,
        untagged: bool,
    ) -> Result<Vec<String>, EngineError> {
        let Some(trunk) = &spec.trunk else { return Ok(Vec::new()) };
        let invalid = |name: &str, why: String| {
            EngineError::Invalid(ModelError::Invalid { what: "trunk", value: name.to_string(), why })
        };
        let mut first: Option<(&str, &str)> = None;
        let mut keys = Vec::with_capacity(trunk.len());
        for name in trunk {
            let key = network_key(project, name);
            let n = self.networks.iter().find(|n| n.key() == key).ok_or_else(|| {
                EngineError::NotFound(format!("no network named {name:?} to carry (see `lanyard net list`)"))
            })?;
            keys.push(key.into_owned());
            if untagged && name == native {
                return Err(invalid(name, "is the port's untagged (native) network; it cannot also be tagged".into()));
            }
            let (Some(_), Some(_), Some(up)) = (n.vlan, n.vlan_backend, n.uplink.as_deref()) else {
                return Err(invalid(name, "is not a VLAN network; a trunk carries networks made with --vlan".into()));
            };
            match first {
                Some((uplink, other)) if uplink != up => {
                    return Err(invalid(
                        name,
                        format!("rides on {up}, but {other:?} on {uplink}: a trunk's networks share one uplink"),
                    ))
                }
                Some(_) => {}
                None => first = Some((up, n.name.as_str())),
            }
            // On a VLAN-filtering bridge the port is a port of that bridge,
            // so its untagged frames can only be one of that bridge's VLANs.
            let native_net = self.networks.iter().find(|x| x.key() == network_key(project, native));
            if untagged && n.filtering() && !native_net.is_some_and(|x| x.filtering() && x.bridge == n.bridge) {
                return Err(EngineError::Invalid(ModelError::Invalid {
                    what: "native",
                    value: native.to_string(),
                    why: format!(
                        "is not a VLAN of {}, the VLAN-filtering bridge the trunk's networks share; give \
                         --native one of that bridge's networks, or none",
                        n.bridge
                    ),
                }));
            }
        }
        Ok(keys)
    }

    /// Keeps out of this host's address books, for a while, the fixed IPs
    /// other hosts' ports hold (their claims) that this host does not know
    /// of yet: the next choice avoids them.
    fn learn_claimed_addresses(&self) -> Result<(), EngineError> {
        let until = self.host.now() + CLAIMED_ELSEWHERE_HOLD_SECS;
        let ours: HashSet<&str> = self.ports.iter().map(|p| p.id.as_str()).collect();
        for c in self.store.claims(CLAIM_IP)? {
            if ours.contains(c.owner.as_str()) {
                continue;
            }
            // `NET/IP`: the address is after the last '/', the rest is the
            // network's key (which may hold '/' itself).
            let Some((net, ip)) = c.value.rsplit_once('/') else { continue };
            let (Some(book), Ok(ip)) = (self.books.get(net), ip.parse()) else { continue };
            lock(book).hold_elsewhere(ip, until);
        }
        Ok(())
    }

    fn release_addresses(&self, ports: &[Port]) {
        for p in ports {
            if let Some(book) = self.books.get(&p.net) {
                lock(book).remove_static(p.mac);
            }
        }
    }

    /// Validates one port request against the state (and the ports earlier
    /// in the same batch) and reserves its MAC, id and fixed IP; `scatter`:
    /// a chosen IP is a random free one, not the lowest (after another
    /// host's port took the lowest).
    fn prepare_port(&self, spec: &PortSpec, batch: &mut PortIndex, scatter: bool) -> Result<Port, EngineError> {
        let taken_mac = |m: &Mac| self.index.macs.contains(m) || batch.macs.contains(m) || self.is_host_mac(m);
        let taken_ifname = |n: &str| self.index.has_ifname(n) || batch.has_ifname(n);
        let taken_id = |i: &str| self.index.ids.contains(i) || batch.ids.contains(i);
        let checked = spec.check()?;
        let project = spec.project.as_deref().unwrap_or(DEFAULT_PROJECT);
        let key = self.network_key(project, &spec.net)?;
        let net = self.network(&key)?;
        // Only this host's ports are on its bridge: another host's ports
        // of a network spanning hosts are on that host's bridge.
        let on_bridge = |i: &PortIndex| i.on_bridge(&key, self.node.as_deref());
        // Bridge mode: the uplink is a port of the bridge too; on a
        // cluster member, so is the network's VXLAN device.
        let vxlan = self.node.is_some() && planner::overlay::spans(&net);
        let room = BRIDGE_MAX_PORTS - usize::from(net.uplink.is_some()) - usize::from(vxlan);
        if on_bridge(&self.index) + on_bridge(batch) >= room {
            return Err(EngineError::Conflict(if vxlan {
                format!(
                    "network {:?} has {room} ports on this host, the most a Linux bridge takes beside the \
                     network's VXLAN device; put more VMs on another host or network",
                    net.name
                )
            } else {
                format!(
                    "network {:?} has {room} ports, the most a Linux bridge takes; put more VMs on another network",
                    net.name
                )
            }));
        }
        // The VM's name is its DNS name on the network: two ports with one
        // name would make DNS answer for whichever came last.
        let vm = (key.clone(), spec.vm.clone());
        if let Some(id) = self.index.vms.get(&vm) {
            return Err(EngineError::Conflict(format!(
                "vm {:?} already has port {id} on network {:?} (its DNS name there); give this port another --vm",
                spec.vm, net.name
            )));
        }
        if batch.vms.contains_key(&vm) {
            return Err(EngineError::Conflict(format!("vm {:?} is given twice on network {:?}", spec.vm, net.name)));
        }
        if self.host_named(&key, &spec.vm) {
            return Err(EngineError::Conflict(format!(
                "{:?} is a static host's DNS name on network {:?} (see `lanyard net host list`); give this port another --vm",
                spec.vm, net.name
            )));
        }
        if let Some((ns, ifname)) = &checked.peer {
            if !self.host.netns_exists(ns) {
                return Err(EngineError::NotFound(if crate::model::netns_is_process(ns) {
                    format!("no network namespace {ns}: is the process running?")
                } else {
                    format!("no network namespace named {ns:?} (create it with `ip netns add {ns}`)")
                }));
            }
            if self.host.netns_has_link(ns, ifname) {
                return Err(EngineError::Conflict(format!(
                    "an interface named {ifname} already exists in network namespace {ns:?}; give another --ifname"
                )));
            }
        }
        // Checked here, not when the TAP is made: a user or group that does
        // not exist is a mistake in the request.
        for (what, name) in [("owner", &spec.owner), ("group", &spec.group)] {
            if let Some(name) = name.as_deref().filter(|n| !self.host.account_exists(what, n)) {
                let kind = if what == "owner" { "user" } else { "group" };
                return Err(EngineError::Invalid(ModelError::Invalid {
                    what,
                    value: name.to_string(),
                    why: format!("no {kind} of that name on this host"),
                }));
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
                        None if self.is_host_mac(&mac) => {
                            format!("MAC {mac} is a static DHCP host's (see `lanyard net host list`)")
                        }
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
        let book = self
            .books
            .get(&key)
            .cloned()
            .ok_or_else(|| EngineError::Internal(format!("network {key:?} has no address book")))?;
        let untagged = spec.untagged.unwrap_or(true);
        let trunk = self.check_trunk_port(spec, project, &net.name, untagged)?;
        // On a bridge-mode network the LAN's DHCP server assigns addresses;
        // a trunk port without a native network has none.
        let ip = if !untagged {
            None
        } else if net.mode.serves_dhcp() {
            let now = self.host.now();
            Some(match checked.ip {
                None if scatter => lock(&book).reserve_fixed_from(mac, rand::random::<u16>().into(), now)?,
                ip => lock(&book).reserve_fixed(mac, ip, now)?,
            })
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
            project: project.to_string(),
            net: key,
            vm: spec.vm.clone(),
            port_type: checked.port_type,
            mac,
            ip,
            netns,
            peer_ifname,
            owner: spec.owner.clone(),
            group: spec.group.clone(),
            spoof_check: spec.spoof_check.unwrap_or(true) && trunk.is_empty(),
            trunk,
            untagged,
            node: self.node.clone(),
        };
        batch.insert(&port);
        Ok(port)
    }

    fn check_adoptable(&self, tap: &str) -> Result<(), EngineError> {
        if let Some(p) = self.ports.iter().find(|p| p.ifname == tap) {
            return Err(EngineError::Conflict(format!("{tap} is already port {} (vm {})", p.id, p.vm)));
        }
        // Only this one link matters: no full observation of the host.
        let links = self.kernel.observe_links(&[tap])?;
        match links.get(tap) {
            None => Err(EngineError::NotFound(format!("no interface named {tap} to adopt"))),
            Some(l) if l.kind != crate::kernel::LinkKind::Tun => {
                Err(EngineError::Conflict(format!("{tap} is not a TAP device; only TAPs can be adopted")))
            }
            Some(l) if l.master.is_some() => Err(EngineError::Conflict(format!(
                "{tap} is already a port of bridge {}",
                l.master.as_deref().unwrap_or_default()
            ))),
            Some(_) => Ok(()),
        }
    }

    /// Deletes a port: its device goes, its IP is free again.
    pub fn delete_port(&mut self, id: &str) -> Result<(), EngineError> {
        let port = self
            .ports
            .iter()
            .find(|p| p.id == id)
            .cloned()
            .ok_or_else(|| EngineError::NotFound(format!("no port with id {id:?} (see `lanyard port list`)")))?;
        // Another node's port (deleted through this host) has no device or
        // firewall elements here: only its records go.
        let local = self.is_local(&port);
        let links: BTreeMap<_, _> = self.kernel.observe_links(&[&port.ifname])?;
        // lanyard deletes only what it created; an adopted TAP is QEMU's.
        let ops = match links.get(&port.ifname) {
            Some(l) if local && l.owned() => vec![Op::DeleteLink { name: port.ifname.clone() }],
            _ => Vec::new(),
        };
        let mut changes = if local {
            planner::firewall::port_changes(std::slice::from_ref(&port), &self.networks, false)
        } else {
            Vec::new()
        };
        // Its floating IP stays the project's, associated with nothing.
        let bound = self.bound_floating_ips(std::slice::from_ref(&port));
        let unbound = super::floating::unbound(&bound);
        let mut ops = ops;
        for f in bound.iter().filter(|_| local) {
            if let Some(a) = self.live(f) {
                changes.extend(planner::firewall::association_changes(&[a], false));
                if let Some(link) = self.pool_interface(&f.pool) {
                    ops.insert(0, Op::DelAddress { link, addr: planner::floating::host_address(f.ip) });
                }
            }
        }
        // Its forwards go with it: they would lead nowhere, and a new port
        // should not inherit them by taking its VM's name.
        let forwards = self.forwards_to(&port.id);
        changes.extend(self.forward_removals(&forwards));
        let firewall = per_table(&changes);
        let plan = Plan { ops, firewall };
        let lease = self.books.get(&port.net).and_then(|b| lock(b).leases().find(|l| l.mac == port.mac).cloned());
        // The address waits for the guest's lease to end before anyone
        // else may have it.
        let now = self.host.now();
        let holds = self.networks.iter().any(|n| n.key() == port.net && n.holds_released_addresses());
        let hold = lease
            .as_ref()
            .filter(|l| holds && l.expiry > now && Some(l.ip) == port.ip)
            .map(|l| crate::model::Lease { kind: crate::model::LeaseKind::Dynamic, ..l.clone() });
        self.commit(
            &plan,
            |t| apply_elements(t, &changes),
            |s| {
                let mut documents = super::floating::unbind_writes(&unbound);
                documents.extend(Engine::forward_writes(&forwards, false));
                s.write_documents(&documents)?;
                s.release_port(&port, hold.as_ref())
            },
            |s| {
                let mut documents = super::floating::unbind_writes(&bound);
                documents.extend(Engine::forward_writes(&forwards, true));
                s.write_documents(&documents)?;
                s.put_ports(std::slice::from_ref(&port))?;
                match &lease {
                    Some(l) => s.write_leases(&[crate::store::LeaseChange::Upsert(l.clone())]),
                    None => Ok(()),
                }
            },
        )?;
        self.ports.retain(|p| p.id != id);
        self.index.remove(&port);
        self.forget_ports_floating_ips(&unbound);
        self.forget_forwards(&forwards);
        if let Some(book) = self.books.get(&port.net) {
            match hold {
                Some(_) => drop(lock(book).release_static(port.mac, now)),
                None => lock(book).remove_static(port.mac),
            }
        }
        match &hold {
            Some(l) => {
                tracing::info!(port = id, "port deleted; {} stays held until its lease ends ({})", l.ip, l.expiry)
            }
            None => tracing::info!(port = id, "port deleted"),
        }
        Ok(())
    }
}
