//! Network mutations: create, delete, start, stop, autostart. Each follows
//! the engine's protocol (validate, plan, apply, persist, then memory).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use super::{Engine, EngineError};
use crate::kernel::{LinkKind, Observed};
use crate::model::{
    network_key, Manager, Mode, ModelError, NetState, Network, NetworkSpec, Port, VlanBackend, DEFAULT_PROJECT,
};
use crate::planner;
use crate::store::{LeaseChange, Store, StoreError};

/// Claim kind of a network's VXLAN network identifier.
pub const CLAIM_VNI: &str = "vni";

impl Engine {
    /// Plans `networks` + `ports` against `observed` and commits the plan
    /// with `persist`. Memory is the caller's to change afterwards.
    pub(super) fn commit_state(
        &mut self,
        networks: &[Network],
        ports: &[Port],
        observed: &Observed,
        persist: impl FnOnce(&dyn Store) -> Result<(), StoreError>,
        restore: impl FnOnce(&dyn Store) -> Result<(), StoreError>,
    ) -> Result<(), EngineError> {
        // An adopted bridge stays, but not with lanyard's gateway address
        // on it once its network is stopped or deleted; a flat interface
        // gets back its own addresses, not the gateway's. The rest is
        // planned as if that address were gone already.
        let stays = |n: &Network| networks.iter().any(|m| m.key() == n.key() && m.state == NetState::Active);
        let release: Vec<crate::kernel::Op> = self
            .networks
            .iter()
            .filter(|n| !stays(n))
            .flat_map(|n| planner::links::release_gateway(n, observed))
            .collect();
        let mut after_release = observed.clone();
        for op in &release {
            if let crate::kernel::Op::DelAddress { link, addr } = op {
                if let Some(l) = after_release.links.get_mut(link) {
                    l.addrs.retain(|a| a != addr);
                }
            }
        }
        let overlay = self.overlay_inputs(ports)?;
        self.note_overlay_mtu(overlay.as_ref(), &after_release);
        let (mut plan, tables) = self.plan_for(networks, ports, &after_release, overlay.as_ref());
        plan.ops.splice(0..0, release);
        // A refused plan leaves the tunnels unknown: the next follow plans.
        self.commit(&plan, |t| *t = tables, persist, restore).inspect_err(|_| self.planned_remotes = None)
    }

    /// Defines and starts a network.
    pub fn create_network(&mut self, spec: NetworkSpec) -> Result<Network, EngineError> {
        self.create_network_as(spec, None)
    }

    /// Defines and starts a network, `manager` (the VLAN manager's, which
    /// no user asks for by name) marking it as the manager's.
    pub(super) fn create_network_as(
        &mut self,
        spec: NetworkSpec,
        manager: Option<Manager>,
    ) -> Result<Network, EngineError> {
        let project = spec.project.as_deref().unwrap_or(DEFAULT_PROJECT);
        self.check_project(project)?;
        if self.networks.iter().any(|n| n.key() == network_key(project, &spec.name)) {
            return Err(EngineError::Conflict(if project == DEFAULT_PROJECT {
                format!("a network named {:?} already exists", spec.name)
            } else {
                format!("a network named {:?} already exists in project {project:?}", spec.name)
            }));
        }
        // `default` and `Default` side by side would be told apart by
        // nobody reading a listing or typing a command.
        if let Some(other) =
            self.networks.iter().find(|n| n.project == project && n.name.eq_ignore_ascii_case(&spec.name))
        {
            return Err(EngineError::Conflict(format!(
                "a network named {:?} exists; names that differ only in case are refused",
                other.name
            )));
        }
        let observed = self.observe()?;
        let mut net = self.validate_network(spec, &observed)?;
        if manager.is_some() {
            net.manager = manager;
        }
        // A network follows its project's egress.
        net.egress_denied = self.egress_denied(&net.project);
        if let Some(link) = observed.links.get(&net.bridge).filter(|l| !l.owned()) {
            // A flat network's given bridge is someone else's: adopted,
            // never changed or deleted. Anything else with the name is a
            // conflict (below).
            if net.manager == Some(Manager::Flat) && link.kind == LinkKind::Bridge {
                net.adopted = true;
                net.gateway_mac = None;
            }
        }
        self.check_network_conflicts(&net, &observed)?;

        let mut networks = self.networks.clone();
        networks.push(net.clone());
        let ports = self.ports.clone();
        let key = net.key().into_owned();
        let vni = self.claim_vni(&net)?;
        if let Err(e) =
            self.commit_state(&networks, &ports, &observed, |s| s.put_network(&net), |s| s.delete_network(&key))
        {
            self.release_vni(vni.as_deref(), &key);
            return Err(e);
        }

        self.networks = networks;
        self.books.insert(key.clone(), Arc::new(Mutex::new(self.new_book(&net))));
        self.ensure_services(&net);
        tracing::info!(net = key, subnet = %net.subnet, bridge = net.bridge, "network created");
        Ok(net)
    }

    /// Validates a spec against the host: defaults the bridge name and, in
    /// bridge mode, takes the LAN's subnet from the uplink.
    fn validate_network(&self, spec: NetworkSpec, observed: &Observed) -> Result<Network, EngineError> {
        let taken: BTreeSet<&str> =
            self.networks.iter().map(|n| n.bridge.as_str()).chain(observed.links.keys().map(String::as_str)).collect();
        let default_bridge =
            || (0..).map(|i| format!("lybr{i}")).find(|b| !taken.contains(b.as_str())).expect("unbounded");
        let mut spec = spec;
        let mode: Mode = spec.mode()?;
        // Before the uplink's address fills in a bridge network's gateway.
        spec.check_bridge_options()?;
        if let (Some(uplink), Some(vid)) = (spec.uplink.as_deref(), spec.vlan) {
            crate::model::validate_ifname("uplink", uplink)?;
            let backend = spec.vlan_backend.as_deref().map(str::parse).transpose()?.unwrap_or(VlanBackend::Subif);
            self.check_trunk(uplink, vid, backend, observed)?;
            match backend {
                VlanBackend::Subif if spec.bridge.is_none() => {
                    // The seed's name; when it is taken the user names one.
                    let seed_name = format!("brvlan{vid}");
                    if taken.contains(seed_name.as_str()) {
                        return Err(EngineError::Conflict(format!(
                            "bridge {seed_name} is in use; give the network's bridge a name with --bridge"
                        )));
                    }
                    spec.bridge = Some(seed_name);
                }
                VlanBackend::Subif => {}
                VlanBackend::Filtering => {
                    // One bridge per uplink, named by the first network on it.
                    let shared = self.filtering_bridge_of(uplink);
                    match (&spec.bridge, shared) {
                        (Some(asked), Some(shared)) if *asked != shared => {
                            return Err(EngineError::Conflict(format!(
                                "the VLANs on {uplink} share bridge {shared}; leave out --bridge or give that name"
                            )))
                        }
                        (_, Some(shared)) => spec.bridge = Some(shared),
                        (Some(_), None) => {}
                        (None, None) => spec.bridge = Some(crate::model::filtering_bridge_name(uplink)),
                    }
                }
            }
        } else if let (Some(uplink), Some(_)) = (spec.uplink.as_deref(), spec.manager.as_deref()) {
            // A flat network's flat interface joins its bridge (a given
            // bridge may have it already).
            crate::model::validate_ifname("uplink", uplink)?;
            let given = spec.bridge.as_deref().filter(|b| observed.links.get(*b).is_some_and(|l| !l.owned()));
            self.check_uplink(uplink, given, observed)?;
        } else if let (Some(uplink), Mode::Bridge) = (spec.uplink.as_deref(), mode) {
            crate::model::validate_ifname("uplink", uplink)?;
            self.check_uplink(uplink, None, observed)?;
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
        Ok(spec.validate(default_bridge)?)
    }

    fn check_network_conflicts(&self, net: &Network, observed: &Observed) -> Result<(), EngineError> {
        if let (Some(mtu), Some(uplink), Some(vid)) = (net.mtu, net.uplink.as_deref(), net.vlan) {
            let trunk = observed.links.get(uplink).map_or(0, |l| l.mtu);
            if mtu > trunk {
                return Err(EngineError::Invalid(ModelError::Invalid {
                    what: "mtu",
                    value: mtu.to_string(),
                    why: format!("VLAN {vid} rides on {uplink}, whose MTU is {trunk}; give at most that"),
                }));
            }
        }
        // Networks on one uplink's VLAN-filtering bridge share it.
        let shares = |other: &Network| net.filtering() && other.filtering() && other.uplink == net.uplink;
        if let Some(other) = self.networks.iter().find(|n| n.bridge == net.bridge && !shares(n)) {
            return Err(EngineError::Conflict(format!("bridge {} is in use by network {:?}", net.bridge, other.key())));
        }
        let shared = self.networks.iter().any(|n| n.bridge == net.bridge);
        if observed.links.contains_key(&net.bridge) && !shared && !net.adopted {
            return Err(EngineError::Conflict(format!(
                "an interface named {} already exists on this host",
                net.bridge
            )));
        }
        if net.filtering() && net.has_host_address() {
            let device = net.l3_ifname();
            if observed.links.get(&device).is_some_and(|l| !l.owned()) {
                return Err(EngineError::Conflict(format!(
                    "an interface named {device} exists and is not lanyard's; remove it to put a gateway on VLAN {} \
                     of {}",
                    net.vlan.unwrap_or_default(),
                    net.bridge
                )));
            }
        }
        if let Some(other) = self.networks.iter().find(|n| n.clashes_with(net)) {
            return Err(EngineError::Conflict(format!(
                "subnet {} overlaps {} of network {:?}",
                net.subnet,
                other.subnet,
                other.key()
            )));
        }
        // A bridge-mode network's subnet is the LAN the uplink already
        // routes to: only other interfaces' routes count as a clash. An
        // L2-only network gives the host no address and so no route.
        let clash = observed
            .routes
            .iter()
            .filter(|_| net.has_host_address())
            .filter(|r| r.dev.is_none() || r.dev != net.uplink || net.vlan.is_some())
            .find_map(|r| r.dst.filter(|d| d.contains(&net.subnet.network()) || net.subnet.contains(&d.network())));
        if let Some(dst) = clash {
            return Err(EngineError::Conflict(format!("subnet {} overlaps the host's route to {dst}", net.subnet)));
        }
        Ok(())
    }

    /// Checks a NIC that is to join a network's bridge; `given` is a bridge
    /// of someone else's it may already be a port of.
    fn check_uplink(&self, uplink: &str, given: Option<&str>, observed: &Observed) -> Result<(), EngineError> {
        not_loopback(uplink)?;
        let Some(link) = observed.links.get(uplink) else {
            return Err(EngineError::NotFound(format!("no interface named {uplink} to use as uplink (see `ip link`)")));
        };
        if let Some(master) = link.master.as_deref().filter(|m| Some(*m) != given) {
            return Err(EngineError::Conflict(format!("uplink {uplink} is already a port of bridge {master}")));
        }
        if link.owned() || link.kind == LinkKind::Bridge {
            return Err(EngineError::Conflict(format!("{uplink} is a bridge or a lanyard port, not a NIC to uplink")));
        }
        if let Some(other) = self.networks.iter().find(|n| n.uplink.as_deref() == Some(uplink)) {
            return Err(EngineError::Conflict(format!("uplink {uplink} is in use by network {:?}", other.key())));
        }
        Ok(())
    }

    /// Checks a VLAN network's trunk: it exists, is a NIC (not a bridge, a
    /// lanyard port or another bridge's port), carries no network that puts
    /// the NIC itself in a bridge, uses one backend, and this VLAN once.
    pub(super) fn check_trunk(
        &self,
        uplink: &str,
        vid: u16,
        backend: VlanBackend,
        observed: &Observed,
    ) -> Result<(), EngineError> {
        not_loopback(uplink)?;
        let Some(link) = observed.links.get(uplink) else {
            return Err(EngineError::NotFound(format!(
                "no interface named {uplink} to carry VLAN {vid} (see `ip link`)"
            )));
        };
        for other in self.networks.iter().filter(|n| n.uplink.as_deref() == Some(uplink)) {
            match (other.vlan, other.vlan_backend) {
                (None, _) => {
                    return Err(EngineError::Conflict(format!(
                        "uplink {uplink} is in network {:?}'s bridge; it cannot carry VLANs too",
                        other.key()
                    )))
                }
                (Some(v), _) if v == vid => {
                    return Err(EngineError::Conflict(format!(
                        "VLAN {vid} on {uplink} is network {:?}'s already",
                        other.key()
                    )))
                }
                (Some(_), Some(b)) if b != backend => {
                    return Err(EngineError::Conflict(format!(
                        "the VLANs on {uplink} use the {b} backend (network {:?}); one uplink takes one backend",
                        other.key()
                    )))
                }
                _ => {}
            }
        }
        // With `filtering` the uplink is a port of its VLAN bridge once the
        // first network is there.
        let shared = self.filtering_bridge_of(uplink).filter(|_| backend == VlanBackend::Filtering);
        if let Some(master) = link.master.as_ref().filter(|m| Some(*m) != shared.as_ref()) {
            return Err(EngineError::Conflict(format!(
                "uplink {uplink} is a port of bridge {master}; a trunk must be a NIC"
            )));
        }
        if link.owned() || link.kind == LinkKind::Bridge {
            return Err(EngineError::Conflict(format!(
                "{uplink} is a bridge or a lanyard port, not a NIC to carry VLANs"
            )));
        }
        if backend == VlanBackend::Filtering {
            return Ok(());
        }
        let device = crate::planner::links::vlan_ifname(uplink, vid);
        if observed.links.get(&device).is_some_and(|l| !l.owned()) {
            return Err(EngineError::Conflict(format!(
                "an interface named {device} exists and is not lanyard's; remove it to put VLAN {vid} on {uplink}"
            )));
        }
        Ok(())
    }

    /// The VLAN-filtering bridge the networks on `uplink` share, if any.
    fn filtering_bridge_of(&self, uplink: &str) -> Option<String> {
        self.networks.iter().find(|n| n.filtering() && n.uplink.as_deref() == Some(uplink)).map(|n| n.bridge.clone())
    }

    /// Starts (`active = true`) or stops a defined network (by key). Stopping removes
    /// its bridge and rules and stops its servers; ports and leases stay.
    pub fn set_active(&mut self, name: &str, active: bool) -> Result<Network, EngineError> {
        let mut net = self.network(name)?;
        let state = if active { NetState::Active } else { NetState::Inactive };
        if net.state == state {
            return Err(EngineError::Conflict(format!(
                "network {name:?} is already {}",
                if active { "active" } else { "inactive" }
            )));
        }
        if active {
            if let Some(other) =
                self.networks.iter().find(|n| n.key() != name && n.state == NetState::Active && n.clashes_with(&net))
            {
                return Err(EngineError::Conflict(format!(
                    "subnet {} overlaps active network {:?}",
                    net.subnet,
                    other.key()
                )));
            }
        }
        let observed = self.observe()?;
        if let Some(link) = observed.links.get(&net.bridge).filter(|l| active && !l.owned() && !net.adopted) {
            return Err(EngineError::Conflict(format!(
                "interface {} exists and is not lanyard's; remove or rename it to start network {name:?}",
                link.name
            )));
        }
        net.state = state;
        let networks: Vec<Network> =
            self.networks.iter().map(|n| if n.key() == name { net.clone() } else { n.clone() }).collect();
        // The servers are bound to the bridge that is about to go.
        if !active {
            self.services.stop(name);
        }
        let ports = self.ports.clone();
        let old = self.network(name)?;
        if let Err(e) =
            self.commit_state(&networks, &ports, &observed, |s| s.put_network(&net), |s| s.put_network(&old))
        {
            if !active {
                self.ensure_services(&old);
            }
            return Err(e);
        }
        self.networks = networks;
        if active {
            self.ensure_services(&net);
        }
        tracing::info!(net = name, active, "network state changed");
        Ok(net)
    }

    /// Changes what `patch` names of a network (by key): autostart, DNS
    /// domain, DHCP range, lease time. Nothing of it is in the kernel: the
    /// record is stored, then the address book and the DHCP/DNS servers
    /// take it (the servers are restarted; guests keep their leases).
    pub fn edit_network(&mut self, name: &str, patch: &crate::model::NetworkPatch) -> Result<Network, EngineError> {
        let old = self.network(name)?;
        let net = old.edited(patch)?;
        if net == old {
            return Ok(net);
        }
        self.store.put_network(&net)?;
        if let Some(n) = self.networks.iter_mut().find(|n| n.key() == name) {
            *n = net.clone();
        }
        if let Some(book) = self.books.get(name) {
            super::lock(book).set_network(net.clone());
        }
        let served = (old.domain.clone(), old.dhcp_range, old.lease_time);
        if served != (net.domain.clone(), net.dhcp_range, net.lease_time) && self.services.running(name) {
            self.services.stop(name);
            self.ensure_services(&net);
        }
        tracing::info!(net = name, "network edited");
        Ok(net)
    }

    /// Marks a network (by key) to start (or not) at boot.
    pub fn set_autostart(&mut self, name: &str, autostart: bool) -> Result<Network, EngineError> {
        let mut net = self.network(name)?;
        net.autostart = autostart;
        self.store.put_network(&net)?;
        if let Some(n) = self.networks.iter_mut().find(|n| n.key() == name) {
            n.autostart = autostart;
        }
        Ok(net)
    }

    /// Deletes a network (by key) as `net delete` asks: one with ports
    /// (VMs may be running on them) only when `force`d, so that no one
    /// loses a VM's network by naming the wrong one.
    pub fn delete_network_checked(&mut self, name: &str, force: bool) -> Result<(), EngineError> {
        let net = self.network(name)?;
        let vms: Vec<&str> = self.ports.iter().filter(|p| p.net == name).map(|p| p.vm.as_str()).collect();
        if !force && !vms.is_empty() {
            let mut shown = vms.iter().take(3).copied().collect::<Vec<_>>().join(", ");
            if vms.len() > 3 {
                shown.push_str(", ...");
            }
            let project =
                if net.project == DEFAULT_PROJECT { String::new() } else { format!(" --project {}", net.project) };
            return Err(EngineError::Conflict(format!(
                "network {:?} has {} port{} ({shown}): delete them first or use `lanyard net delete {}{project} --force`",
                net.name,
                vms.len(),
                if vms.len() == 1 { "" } else { "s" },
                net.name,
            )));
        }
        self.delete_network(name)
    }

    /// Stops and deletes a network (by key) with its ports and leases.
    pub fn delete_network(&mut self, name: &str) -> Result<(), EngineError> {
        let old = self.network(name)?;
        if let Some(p) = self.ports.iter().find(|p| p.net != name && p.trunk.iter().any(|t| t == name)) {
            return Err(EngineError::Conflict(format!(
                "network {name:?} is carried by trunk port {} (vm {}); delete that port first",
                p.id, p.vm
            )));
        }
        let observed = self.observe()?;
        let networks: Vec<Network> = self.networks.iter().filter(|n| n.key() != name).cloned().collect();
        let ports: Vec<Port> = self.ports.iter().filter(|p| p.net != name).cloned().collect();
        let old_ports: Vec<Port> = self.ports.iter().filter(|p| p.net == name).cloned().collect();
        let old_leases: Vec<LeaseChange> = self.leases(name)?.into_iter().map(LeaseChange::Upsert).collect();
        // Their floating IPs stay the project's, associated with nothing.
        let bound = self.bound_floating_ips(&old_ports);
        let unbound = super::floating::unbound(&bound);
        // Its forwards go with it (their elements with its table's).
        let forwards: Vec<_> = self.forwards.iter().filter(|f| f.net == name).cloned().collect();
        let restore = |s: &dyn Store| {
            s.put_network(&old)?;
            s.put_ports(&old_ports)?;
            let mut documents = super::floating::unbind_writes(&bound);
            documents.extend(Engine::forward_writes(&forwards, true));
            s.write_documents(&documents)?;
            s.write_leases(&old_leases)
        };
        let persist = |s: &dyn Store| {
            let mut documents = super::floating::unbind_writes(&unbound);
            documents.extend(Engine::forward_writes(&forwards, false));
            s.write_documents(&documents)?;
            s.delete_network(name)
        };
        self.services.stop(name);
        if let Err(e) = self.commit_state(&networks, &ports, &observed, persist, restore) {
            self.ensure_services(&old);
            return Err(e);
        }
        self.networks = networks;
        self.index = super::PortIndex::of(&ports);
        self.ports = ports;
        self.forget_ports_floating_ips(&unbound);
        self.forwards.retain(|f| f.net != name);
        self.books.remove(name);
        if self.node.is_some() && planner::overlay::spans(&old) {
            self.release_vni(Some(&planner::overlay::vni(name).to_string()), name);
        }
        self.release_blocks(name);
        self.forget_hosts(name);
        tracing::info!(net = name, "network deleted");
        Ok(())
    }

    /// A cluster member claims a spanning network's VNI (kind `vni`, owner
    /// the network's key): the VNI is derived from the key, and two keys
    /// that meet on one VNI would join their networks on every host. The
    /// claimed value, None where there is none to claim (a single host, a
    /// network that does not span).
    fn claim_vni(&self, net: &Network) -> Result<Option<String>, EngineError> {
        if self.node.is_none() || !planner::overlay::spans(net) {
            return Ok(None);
        }
        let key = net.key();
        let vni = planner::overlay::vni(&key).to_string();
        if self.store.claim(CLAIM_VNI, &vni, &key)? {
            return Ok(Some(vni));
        }
        // A claim of this very network left by a deletion that stopped
        // half-way is its own.
        let held = self.store.claims(CLAIM_VNI)?;
        match held.iter().find(|c| c.value == vni) {
            Some(c) if c.owner == key => Ok(Some(vni)),
            Some(c) => Err(EngineError::Conflict(format!(
                "network {key:?} would share VXLAN id {vni} with network {:?}; choose another name",
                c.owner
            ))),
            // Released in between: one more try.
            None if self.store.claim(CLAIM_VNI, &vni, &key)? => Ok(Some(vni)),
            None => Err(EngineError::Conflict(format!("VXLAN id {vni} of network {key:?} is being claimed elsewhere"))),
        }
    }

    /// A cluster member's start: claims the VNIs of spanning networks
    /// created before VNIs were claimed (or whose claim a failed deletion
    /// took). Two such networks meeting on one VNI cannot both be claimed:
    /// the second is named in an error (its traffic would join the
    /// first's on every host; rename one of them).
    pub(super) fn backfill_vnis(&self) {
        if self.node.is_none() {
            return;
        }
        // One read of the claims; a claim call only for what is missing.
        let held = match self.store.claims(CLAIM_VNI) {
            Ok(h) => h,
            Err(e) => return tracing::error!("cannot read the VXLAN id claims: {e}"),
        };
        for net in self.networks.iter().filter(|n| planner::overlay::spans(n)) {
            let (key, vni) = (net.key(), planner::overlay::vni(&net.key()).to_string());
            if held.iter().any(|c| c.value == vni && c.owner == key) {
                continue;
            }
            if let Err(e) = self.claim_vni(net) {
                tracing::error!(net = %key, "cannot claim the network's VXLAN id: {e}");
            }
        }
    }

    /// Gives back a network's VNI claim; a failure leaves an orphan claim,
    /// which only keeps a name that meets the same VNI from being created.
    fn release_vni(&self, vni: Option<&str>, key: &str) {
        let Some(vni) = vni else { return };
        if let Err(e) = self.store.release_claim(CLAIM_VNI, vni, key) {
            tracing::warn!(net = key, vni, "cannot release the VXLAN id claim: {e}");
        }
    }
}

/// Refuses the loopback interface as an uplink or trunk: it carries no
/// Ethernet frames, and the kernel refuses a VLAN on it or a bridge port of
/// it only when the change is applied (found by schemathesis as a 500).
fn not_loopback(uplink: &str) -> Result<(), EngineError> {
    if uplink == "lo" {
        return Err(EngineError::Invalid(crate::model::ModelError::Invalid {
            what: "uplink",
            value: uplink.to_string(),
            why: "the loopback interface carries no Ethernet frames; name a NIC".into(),
        }));
    }
    Ok(())
}
