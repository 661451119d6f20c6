//! The control plane: turns API requests into validated records, plans,
//! kernel changes and stored state.
//!
//! Every mutation follows one protocol ([`Engine::commit`]):
//! 1. validate the request and check it against the state (conflicts);
//! 2. plan (pure) the kernel changes;
//! 3. apply them to the kernel; a failure rolls them back;
//! 4. persist to the store; a failure undoes the applied plan;
//! 5. only then change memory (networks, ports, address books, services).
//!
//! Addresses for new ports are reserved in the network's address book at
//! step 1, so the DHCP server, which runs concurrently, cannot hand them out
//! meanwhile; a failure at any later step releases them.
//!
//! The engine does no I/O of its own: the kernel, the store, the host
//! (namespaces, resolvers, clock) and the DHCP/DNS servers are behind
//! traits. It is synchronous and runs on blocking threads, behind one lock.
//!
//! - [`networks`]: create, delete, start, stop, autostart;
//! - [`heal`]: restoring what was changed under lanyard;
//! - [`ports`]: create (one or a batch), delete;
//! - [`leases`]: delete (an operator forgets a guest's lease);
//! - [`projects`]: create, delete, and (project, name) -> network key;
//! - [`services`]: the DHCP/DNS servers seam;
//! - [`host`]: the host facts seam;
//! - [`config`]: what a port's guest is told outside DHCP (cloud-init);
//! - [`managers`]: nova's VLAN manager configuration;
//! - [`floating`]: floating IP pools and floating IPs;
//! - [`forwards`]: port forwards (host port to a guest's port);
//! - [`grants`]: grants between projects;
//! - [`mirror`]: following changes other hosts made to the store.

pub mod access;
pub mod blocks;
pub mod config;
pub mod floating;
pub mod forwards;
pub mod grants;
pub mod heal;
pub mod host;
pub mod hosts;
pub mod leases;
pub mod managers;
pub mod mirror;
pub mod networks;
pub mod ports;
pub mod projects;
pub mod services;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::ipam::{AddressBook, IpamError};
use crate::kernel::{ApplyError, Coexistence, Kernel, KernelError, Observed, Op, Plan, Table, Tables};
use crate::model::floating::{FipPool, FloatingIp};
use crate::model::{Lease, Mac, ModelError, NetState, Network, Port, PortType, Project};
use crate::planner;
use crate::store::{Store, StoreError};

use host::Host;
use services::Services;

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
    Kernel(#[from] KernelError),
    /// The state database failed; the kernel change was undone.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bug: the request could not complete (for example it panicked).
    #[error("internal error: {0}")]
    Internal(String),
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

/// A port as the API shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct PortView {
    /// The stored record.
    #[serde(flatten)]
    pub port: Port,
    /// QEMU arguments for tap ports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qemu_args: Option<String>,
    /// The 802.1Q VLANs the port is in: its network's (an access port), or
    /// `trunk 10,20` (tagged) with the native network's untagged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<String>,
}

impl From<Port> for PortView {
    fn from(port: Port) -> Self {
        PortView { qemu_args: port.qemu_args(), vlan: None, port }
    }
}

/// One bridge as `brctl show` prints it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct BridgeView {
    /// The VLAN the bridge is (a VLAN network's bridge): every port of it
    /// is an access port of that VLAN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// Bridge name.
    pub name: String,
    /// Network it serves, by key (`PROJECT/NAME` outside the default project).
    pub net: String,
    /// Bridge id (priority.MAC).
    pub bridge_id: String,
    /// "yes" or "no".
    pub stp: String,
    /// Ports enslaved to it.
    pub interfaces: Vec<String>,
    /// A VLAN-filtering bridge's VLAN tables, by interface (the bridge's
    /// own under its name), as `bridge vlan show` prints them:
    /// `10 pvid untagged`, `20`.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub vlans: std::collections::BTreeMap<String, String>,
}

/// `lanyard status`: counts and the self-healing record.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct StatusView {
    /// The daemon's version and git commit.
    pub version: String,
    /// Unix time the daemon started (None outside a daemon).
    pub started_at: Option<u64>,
    /// Seconds since then.
    pub uptime_secs: Option<u64>,
    /// Where desired state lives: `sqlite PATH` or `etcd URL,...`.
    pub store: Option<String>,
    /// Leases not expired, over all networks.
    pub leases: u64,
    /// Floating IPs.
    pub floating_ips: usize,
    /// Projects.
    pub projects: usize,
    /// Defined networks.
    pub networks: usize,
    /// Active networks.
    pub active_networks: usize,
    /// Ports.
    pub ports: usize,
    /// What self-healing repaired.
    pub self_healing: heal::RepairStats,
    /// Other tools' firewalls at the forward hook.
    pub coexistence: Coexistence,
    /// DHCP packets whose handling panicked (each was dropped; the server went on).
    pub dhcp_handler_panics: u64,
}

/// The keys that must be unique across ports, kept alongside the port list
/// so a new port is checked in O(1), not by scanning ten thousand ports.
#[derive(Debug, Default)]
struct PortIndex {
    macs: HashSet<Mac>,
    ids: HashSet<String>,
    /// The ports by id: what a floating IP leads to is found without a
    /// scan of ten thousand ports.
    by_id: HashMap<String, Port>,
    /// Host-side interface name -> port id (the monitor reports names).
    ifnames: HashMap<String, String>,
    /// Ports per network and owning node (`Port.node`): a Linux bridge
    /// takes at most [`BRIDGE_MAX_PORTS`], and in a cluster a host's
    /// bridge holds only its own ports.
    per_net: HashMap<String, HashMap<Option<String>, usize>>,
    /// (network key, VM name) -> port id: a VM name is a DNS name on its
    /// network, so one port per name and network.
    vms: HashMap<(String, String), String>,
}

/// The most ports a Linux bridge takes (port numbers are 10 bits, 0 is
/// not used): the kernel refuses the next one with EXFULL.
pub const BRIDGE_MAX_PORTS: usize = 1023;

impl PortIndex {
    fn of(ports: &[Port]) -> Self {
        let mut index = PortIndex::default();
        ports.iter().for_each(|p| index.insert(p));
        index
    }

    fn insert(&mut self, p: &Port) {
        self.macs.insert(p.mac);
        self.ids.insert(p.id.clone());
        self.by_id.insert(p.id.clone(), p.clone());
        self.ifnames.insert(p.ifname.clone(), p.id.clone());
        *self.per_net.entry(p.net.clone()).or_default().entry(p.node.clone()).or_default() += 1;
        self.vms.insert((p.net.clone(), p.vm.clone()), p.id.clone());
    }

    fn remove(&mut self, p: &Port) {
        self.macs.remove(&p.mac);
        self.ids.remove(&p.id);
        self.by_id.remove(&p.id);
        self.ifnames.remove(&p.ifname);
        if let Some(n) = self.per_net.get_mut(&p.net).and_then(|m| m.get_mut(&p.node)) {
            *n = n.saturating_sub(1);
        }
        let vm = (p.net.clone(), p.vm.clone());
        if self.vms.get(&vm) == Some(&p.id) {
            self.vms.remove(&vm);
        }
    }

    /// The ports of `net` on the bridge of `node` (the host's own ports,
    /// and records that name no node; a single host, `None`: all).
    fn on_bridge(&self, net: &str, node: Option<&str>) -> usize {
        let Some(owners) = self.per_net.get(net) else { return 0 };
        owners
            .iter()
            .filter(|(owner, _)| node.is_none() || owner.is_none() || owner.as_deref() == node)
            .map(|(_, n)| n)
            .sum()
    }

    fn has_ifname(&self, name: &str) -> bool {
        self.ifnames.contains_key(name)
    }
}

/// What the engine is built from.
pub struct Parts {
    /// Desired state and leases.
    pub store: Arc<dyn Store>,
    /// The kernel of the managed namespace.
    pub kernel: Arc<dyn Kernel>,
    /// DHCP and DNS servers.
    pub services: Box<dyn Services>,
    /// Namespaces, resolvers, clock.
    pub host: Arc<dyn Host>,
    /// This host's cluster node (`--node`), None on a single host.
    pub node: Option<String>,
}

/// The control plane of one daemon.
pub struct Engine {
    store: Arc<dyn Store>,
    kernel: Arc<dyn Kernel>,
    services: Box<dyn Services>,
    host: Arc<dyn Host>,
    /// Projects, by name.
    projects: Vec<Project>,
    /// Floating IP pools, by name.
    pools: Vec<FipPool>,
    /// Floating IPs, by address.
    floating_ips: Vec<FloatingIp>,
    /// Grants between projects, ordered.
    grants: Vec<crate::model::grants::Grant>,
    /// Static DHCP hosts, by network key and MAC.
    hosts: Vec<crate::model::hosts::StaticHost>,
    /// Port forwards, ordered (by network key, protocol, port, address).
    forwards: Vec<crate::model::forwards::PortForward>,
    networks: Vec<Network>,
    ports: Vec<Port>,
    index: PortIndex,
    /// Address books by network key.
    books: HashMap<String, Arc<Mutex<AddressBook>>>,
    /// The firewall tables the kernel is known to hold (lanyard is their
    /// only writer, so after start it need not ask nftables).
    firewall: Tables,
    repair_stats: heal::RepairStats,
    /// The nftables generation at which the kernel is known to hold
    /// exactly `firewall` (set after lanyard's own changes and full
    /// checks): a firewall event at that generation is lanyard's own, and
    /// healing needs no read of the sets (which hold thousands of elements
    /// at scale). None: unknown, check in full.
    known_generation: Option<u32>,
    /// What other tools' firewalls do at the forward hook.
    coexistence: Coexistence,
    /// This host's cluster node: ports of other nodes are known (listed,
    /// their addresses taken) but have no device here.
    node: Option<String>,
    /// This node's tunnel address, once its registration was read: kept,
    /// so a registration that lapses for a moment does not take the
    /// overlay down with it.
    underlay: Option<std::net::Ipv4Addr>,
    /// The other nodes' addresses the kernel's tunnels were last planned
    /// with: a registration change that differs needs a new plan. None:
    /// unknown (a plan that failed), so the next follow plans again.
    planned_remotes: Option<std::collections::BTreeMap<String, std::net::Ipv4Addr>>,
    /// The MTU of networks spanning the hosts (underlay − 50), once a plan
    /// found the underlay: DHCP tells guests (option 26) on networks that
    /// name no MTU of their own.
    overlay_mtu: Option<u32>,
}

/// This node's tunnel address and the others' underlay addresses by name.
type OverlayNodes = (std::net::Ipv4Addr, std::collections::BTreeMap<String, std::net::Ipv4Addr>);

/// What the planner needs of the cluster to plan the VXLAN overlay
/// ([`planner::overlay::Overlay`]), owned.
pub(crate) struct OverlayInputs {
    local: std::net::Ipv4Addr,
    remotes: std::collections::BTreeMap<String, std::net::Ipv4Addr>,
    remote_ports: Vec<Port>,
}

impl OverlayInputs {
    pub(crate) fn view(&self) -> planner::overlay::Overlay<'_> {
        planner::overlay::Overlay { local: self.local, remotes: &self.remotes, remote_ports: &self.remote_ports }
    }
}

fn lock(book: &Mutex<AddressBook>) -> std::sync::MutexGuard<'_, AddressBook> {
    book.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    /// Loads the stored state and reconciles the kernel with it.
    pub fn start(parts: Parts) -> Result<Self, EngineError> {
        let Parts { store, kernel, services, host, node } = parts;
        // Claims before ports: a claim is written with its port, so every
        // claim read here whose port the next read lacks is an orphan.
        let mut held = store.claims(crate::store::CLAIM_IP)?;
        held.extend(store.claims(crate::store::CLAIM_MAC)?);
        let projects = store.projects()?;
        let networks = store.networks()?;
        let ports = store.ports()?;
        let leases = store.leases()?;
        let pools = crate::store::load(store.as_ref(), crate::store::FIP_POOLS)?;
        let mut floating_ips: Vec<FloatingIp> = crate::store::load(store.as_ref(), crate::store::FLOATING_IPS)?;
        floating_ips.sort_by_key(|f| f.ip);
        let mut grants: Vec<crate::model::grants::Grant> = crate::store::load(store.as_ref(), crate::store::GRANTS)?;
        grants.sort();
        let mut hosts: Vec<crate::model::hosts::StaticHost> = crate::store::load(store.as_ref(), crate::store::HOSTS)?;
        // Hosts of a network deleted while its hosts' delete failed go.
        hosts.retain(|h| networks.iter().any(|n| n.key() == h.net));
        hosts.sort_by(|a, b| (&a.net, a.mac).cmp(&(&b.net, b.mac)));
        let mut forwards: Vec<crate::model::forwards::PortForward> =
            crate::store::load(store.as_ref(), crate::store::FORWARDS)?;
        // Forwards whose network or port went while their delete failed go
        // (their documents stay until the next change to them: harmless).
        forwards.retain(|f| networks.iter().any(|n| n.key() == f.net) && ports.iter().any(|p| p.id == f.to_port));
        forwards.sort();
        let mut engine = Engine {
            grants,
            hosts,
            forwards,
            pools,
            floating_ips,
            store,
            kernel,
            services,
            host,
            index: PortIndex::of(&ports),
            projects,
            networks,
            ports,
            books: HashMap::new(),
            firewall: Tables::new(),
            repair_stats: heal::RepairStats::default(),
            known_generation: None,
            coexistence: Coexistence::default(),
            node,
            underlay: None,
            planned_remotes: Default::default(),
            overlay_mtu: None,
        };
        engine.ensure_default_project()?;
        for net in engine.networks.clone() {
            let book = engine.new_book(&net);
            engine.books.insert(net.key().into_owned(), Arc::new(Mutex::new(book)));
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
        for net in engine.networks.iter().map(|n| n.key().into_owned()).collect::<Vec<_>>() {
            engine.book_hosts(&net);
        }
        for l in leases {
            if let Some(b) = engine.books.get(&l.net) {
                lock(b).restore_lease(l);
            }
        }
        engine.sync_claims(held)?;
        engine.backfill_vnis();
        let observed = engine.kernel.observe()?;
        engine.boot_states(&observed)?;
        let read_at = engine.generation();
        engine.firewall = engine.kernel_firewall()?;
        if let Err(e) = engine.reconcile_with(&observed, read_at) {
            // The daemon still serves its API and the networks that work;
            // the error names what the operator has to look at.
            tracing::error!("reconcile incomplete: {e}");
        }
        engine.check_coexistence();
        Ok(engine)
    }

    /// Brings the claims of ports' fixed IPs and MACs in line with the
    /// ports (`held`: the claims read before the ports): claims the values
    /// of ports written before claims existed, and releases the claims of
    /// ports that are gone (a network's claims are released after its
    /// delete, which a daemon stopped in between leaves undone).
    fn sync_claims(&self, held: Vec<crate::store::Claim>) -> Result<(), EngineError> {
        let have: HashSet<&crate::store::Claim> = held.iter().collect();
        let missing: Vec<crate::store::Claim> =
            self.ports.iter().flat_map(crate::store::port_claims).filter(|c| !have.contains(c)).collect();
        if !missing.is_empty() {
            let taken = self.store.claim_many(&missing)?;
            tracing::info!(claims = missing.len() - taken.len(), "claimed the fixed IPs and MACs of existing ports");
            for c in taken {
                tracing::warn!(port = c.owner, "the port's {} {} is claimed by another owner too", c.kind, c.value);
            }
        }
        let ids: HashSet<&str> = self.ports.iter().map(|p| p.id.as_str()).collect();
        for c in held.iter().filter(|c| !ids.contains(c.owner.as_str())) {
            if let Err(e) = self.store.release_claim(&c.kind, &c.value, &c.owner) {
                tracing::warn!("cannot release the {} claim of {} (port {} is gone): {e}", c.kind, c.value, c.owner);
            }
        }
        Ok(())
    }

    /// The table the kernel holds, as far as lanyard can tell: when its
    /// fingerprint is the wanted one, the wanted structure with the
    /// kernel's elements (so reconcile changes only elements); otherwise an
    /// unknown table, which reconcile replaces whole.
    fn kernel_firewall(&self) -> Result<Tables, EngineError> {
        let wanted = planner::firewall::tables(&self.networks, &self.local(&self.ports), self.plan_context());
        let mut out = Tables::new();
        for id in planner::table_ids() {
            if let Some(t) = self.kernel_table(&id, wanted.get(&id))? {
                out.insert(id, t);
            }
        }
        Ok(out)
    }

    /// What lanyard can tell of one of its tables in the kernel, given the
    /// wanted one: None when absent; the wanted structure with the
    /// kernel's elements when the fingerprints agree; otherwise a table
    /// that matches nothing wanted, so the plan replaces (or deletes) it.
    fn kernel_table(&self, id: &crate::kernel::TableId, wanted: Option<&Table>) -> Result<Option<Table>, EngineError> {
        let Some(fingerprint) = self.kernel.firewall_fingerprint(id)? else { return Ok(None) };
        let unknown = Table { id: id.clone(), sets: Vec::new(), chains: Vec::new() };
        let Some(wanted) = wanted else { return Ok(Some(unknown)) };
        if wanted.fingerprint() != fingerprint {
            return Ok(Some(unknown));
        }
        let mut current = wanted.clone();
        for set in current.sets.iter_mut().filter(|s| s.dynamic_timeout.is_none()) {
            set.elements = self.kernel.firewall_elements(id, set)?;
        }
        Ok(Some(current))
    }

    /// After a host reboot the kernel has none of lanyard's bridges: like
    /// libvirt, networks come back only if they are marked autostart. A
    /// daemon restart keeps every network as it was: an active one whose
    /// bridge went meanwhile is re-created (drift is healed), and one the
    /// user stopped stays stopped, autostart or not. When the host cannot
    /// tell whether it booted, a missing bridge is taken for a reboot. A
    /// cluster member keeps every network as its shared record says.
    fn boot_states(&mut self, observed: &Observed) -> Result<(), EngineError> {
        let booted = self.host.booted();
        let mut pin = Vec::new();
        for net in &mut self.networks {
            let present = observed.links.contains_key(&net.bridge);
            if let Some(link) = observed.links.get(&net.bridge).filter(|l| !l.owned() && !net.adopted) {
                // Someone else's interface has the bridge's name (after a
                // reboot, say): lanyard touches nothing of it and keeps the
                // network down until the name is free.
                if net.state == NetState::Active || net.autostart {
                    let project = if net.project == crate::model::DEFAULT_PROJECT {
                        String::new()
                    } else {
                        format!("--project {} ", net.project)
                    };
                    tracing::error!(
                        net = %net.key(),
                        "interface {} exists and is not lanyard's (no lanyard mark): network {:?} stays stopped; \
                         remove or rename that interface, then `lanyard net start {project}{}`",
                        link.name,
                        net.key(),
                        net.name
                    );
                }
                if net.state != NetState::Inactive {
                    net.state = NetState::Inactive;
                    // A cluster's record is every host's: the network
                    // stays down here only.
                    if self.node.is_none() {
                        self.store.put_network(net)?;
                    }
                }
                continue;
            }
            if let Some(uplink) = net.uplink.as_deref().filter(|u| !observed.links.contains_key(*u)) {
                tracing::warn!(
                    net = %net.key(),
                    "uplink {uplink} is missing: the bridge comes up without it and takes it when it appears"
                );
            }
            if net.gateway_mac.is_none() && net.uplink.is_none() {
                // A record from before gateway MACs were stored: keep the MAC
                // the running bridge has (changing it would cut every guest
                // off until its ARP entry expires) and pin it there.
                let current = observed.links.get(&net.bridge).and_then(|l| l.mac);
                net.gateway_mac = Some(current.unwrap_or_else(Mac::new_gateway));
                if let Some(mac) = current {
                    pin.push(Op::SetMac { link: net.bridge.clone(), mac, previous: Some(mac) });
                }
                self.store.put_network(net)?;
            }
            // In a cluster the record's state is the cluster's, not this
            // host's: a host that starts without the bridge (a reboot, a
            // new host) brings it up as the record says, and writes nothing.
            let want = match booted {
                _ if self.node.is_some() => net.state,
                Some(false) => net.state,
                Some(true) | None if net.autostart => NetState::Active,
                Some(true) => NetState::Inactive,
                None if present => net.state,
                None => NetState::Inactive,
            };
            if want != net.state {
                net.state = want;
                self.store.put_network(net)?;
                tracing::info!(net = %net.key(), state = ?want, "boot state");
            }
        }
        // Setting a bridge's MAC, even to the one it has, pins it.
        for op in pin {
            if let Err(e) = self.kernel.apply_op(&op) {
                tracing::warn!("cannot pin the gateway MAC: {e}");
            }
        }
        Ok(())
    }

    /// Brings the kernel to the stored state and starts missing servers.
    fn reconcile_with(&mut self, observed: &Observed, read_at: Option<u32>) -> Result<(), EngineError> {
        let overlay = self.overlay_nodes()?.map(|(local, remotes)| OverlayInputs {
            local,
            remotes,
            remote_ports: self.ports.iter().filter(|p| !self.is_local(p)).cloned().collect(),
        });
        self.note_overlay_mtu(overlay.as_ref(), observed);
        let (plan, tables) = self.plan_for(&self.networks, &self.ports, observed, overlay.as_ref());
        tracing::info!(ops = plan.ops.len(), firewall = %firewall_kind(&plan), "reconciling");
        plan.apply(self.kernel.as_ref(), &self.firewall).inspect_err(|_| self.planned_remotes = None)?;
        self.firewall = tables;
        self.known_generation = self.generation_after(read_at, &plan);
        for net in self.networks.clone() {
            self.ensure_services(&net);
        }
        Ok(())
    }

    /// The plan that brings the kernel to `networks` and `ports`, and the
    /// tables it leaves: devices for the ports that can have them here
    /// ([`Engine::plannable`]), firewall elements for every port of this
    /// host, so a port left detached keeps its elements with its record
    /// (its delete removes them) and what the engine believes the kernel
    /// holds is what the plan makes.
    fn plan_for(
        &self,
        networks: &[Network],
        ports: &[Port],
        observed: &Observed,
        overlay: Option<&OverlayInputs>,
    ) -> (Plan, Tables) {
        let ctx = self.plan_context();
        let tables = planner::firewall::tables(networks, &self.local(ports), ctx);
        let ops = planner::kernel_ops(
            networks,
            &self.plannable(ports, observed),
            ctx,
            observed,
            overlay.map(OverlayInputs::view).as_ref(),
        );
        (Plan { ops, firewall: crate::kernel::FirewallChange::all_between(&self.firewall, &tables) }, tables)
    }

    /// This node's tunnel address and the other nodes' underlay addresses
    /// of a cluster member whose node has one (`--underlay`); None on a
    /// single host, which has no VXLAN devices. Reads the node
    /// registrations from the store.
    fn overlay_nodes(&mut self) -> Result<Option<OverlayNodes>, EngineError> {
        let Some(node) = self.node.clone() else { return Ok(None) };
        let mut remotes = self.store.node_addresses()?;
        if let Some(local) = remotes.remove(&node) {
            self.underlay = Some(local);
        }
        if self.underlay.is_some() {
            self.planned_remotes = Some(remotes.clone());
        }
        Ok(self.underlay.map(|local| (local, remotes)))
    }

    /// Whether the node registrations differ from what the overlay was
    /// last planned with (this node's address appeared, another node came,
    /// went or moved). A store that cannot be read says yes: the re-plan
    /// that follows reports the error and is retried.
    fn overlay_moved(&self) -> bool {
        let Some(node) = &self.node else { return false };
        let Ok(mut remotes) = self.store.node_addresses() else { return true };
        match (self.underlay, remotes.remove(node)) {
            // No overlay here (no --underlay), nor any to make.
            (None, None) => false,
            (None, Some(_)) => true,
            (Some(_), _) => self.planned_remotes.as_ref() != Some(&remotes),
        }
    }

    /// [`Engine::overlay_nodes`] with the other nodes' ports of `ports`.
    fn overlay_inputs(&mut self, ports: &[Port]) -> Result<Option<OverlayInputs>, EngineError> {
        let Some((local, remotes)) = self.overlay_nodes()? else { return Ok(None) };
        let remote_ports = ports.iter().filter(|p| !self.is_local(p)).cloned().collect();
        Ok(Some(OverlayInputs { local, remotes, remote_ports }))
    }

    /// What plans need beyond the networks and ports: the projects'
    /// floating IPs and grants, and whether this host is a cluster member.
    fn plan_context(&self) -> planner::PlanContext<'_> {
        planner::PlanContext {
            pools: &self.pools,
            floating_ips: &self.floating_ips,
            grants: &self.grants,
            forwards: &self.forwards,
            cluster: self.node.is_some(),
        }
    }

    /// Whether `port` is this host's: created through it, or a record
    /// that names no node.
    fn is_local(&self, port: &Port) -> bool {
        port.node.is_none() || port.node == self.node
    }

    /// This host's ports of `ports` ([`Engine::is_local`]): the ones its
    /// kernel holds devices and firewall elements for.
    fn local<'a>(&self, ports: &'a [Port]) -> std::borrow::Cow<'a, [Port]> {
        if self.node.is_none() || ports.iter().all(|p| self.is_local(p)) {
            std::borrow::Cow::Borrowed(ports)
        } else {
            std::borrow::Cow::Owned(ports.iter().filter(|p| self.is_local(p)).cloned().collect())
        }
    }

    /// Ports whose veth peer namespace is gone cannot be re-created; they
    /// are left out of the plan (and logged) instead of failing everything.
    /// So is a veth gone from a process's namespace (`/proc/PID/ns/net`):
    /// the pair dies with the namespace, and the PID may be another
    /// process's by now, whose namespace must not get the peer.
    fn plannable(&self, ports: &[Port], observed: &Observed) -> Vec<Port> {
        ports
            .iter()
            .filter(|p| self.is_local(p))
            .filter(|p| match (&p.port_type, &p.netns) {
                (PortType::Veth, Some(ns)) => {
                    let reused = crate::model::netns_is_process(ns) && !observed.links.contains_key(&p.ifname);
                    let ok = !reused && self.host.netns_exists(ns);
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

    /// Starts the servers of an active network that serves DHCP.
    fn ensure_services(&mut self, net: &Network) {
        if net.state != NetState::Active || !net.mode.serves_dhcp() {
            return;
        }
        let Some(book) = self.books.get(net.key().as_ref()).cloned() else { return };
        let resolv = self.host.resolv_conf();
        let served = self.served(net);
        self.services.start(&served, book, &resolv);
    }

    /// A network's new address book: a cluster member's leases dynamic
    /// addresses from no block until it has claimed one ([`blocks`]).
    pub(crate) fn new_book(&self, net: &Network) -> AddressBook {
        let mut book = AddressBook::new(net.clone());
        if self.node.is_some() {
            book.set_blocks(Some(Vec::new()));
        }
        book
    }

    /// Remembers the overlay's MTU from a plan's view of the kernel.
    pub(crate) fn note_overlay_mtu(&mut self, overlay: Option<&OverlayInputs>, observed: &Observed) {
        if let Some(m) = overlay.and_then(|o| planner::overlay::mtu(o.local, observed)) {
            self.overlay_mtu = Some(m);
        }
    }

    /// `net` as its servers see it: a network spanning the hosts that
    /// names no MTU has the overlay's, which DHCP tells its guests (their
    /// frames must fit in the tunnel).
    fn served<'a>(&self, net: &'a Network) -> std::borrow::Cow<'a, Network> {
        match self.overlay_mtu {
            Some(m) if net.mtu.is_none() && planner::overlay::spans(net) => {
                std::borrow::Cow::Owned(Network { mtu: Some(m), ..net.clone() })
            }
            _ => std::borrow::Cow::Borrowed(net),
        }
    }

    /// The kernel as the planner needs it, read now.
    fn observe(&self) -> Result<Observed, EngineError> {
        Ok(self.kernel.observe()?)
    }

    /// Steps 3 to 5 of the protocol: applies `plan` and runs `persist`;
    /// only when both succeeded does `firewall` bring the tables lanyard
    /// knows the kernel holds up to date (whole, or element by element, in
    /// place). The caller changes memory after.
    ///
    /// A reversible plan is applied first and undone if the store fails. A
    /// plan that deletes links is persisted first, because the store can
    /// undo a write (`restore`) and the kernel cannot bring a deleted link
    /// back; if the kernel then fails, `restore` puts the records back.
    fn commit(
        &mut self,
        plan: &Plan,
        firewall: impl FnOnce(&mut Tables),
        persist: impl FnOnce(&dyn Store) -> Result<(), StoreError>,
        restore: impl FnOnce(&dyn Store) -> Result<(), StoreError>,
    ) -> Result<(), EngineError> {
        // Known before: the kernel held `self.firewall` at the generation
        // it is at now (no one else's transaction since).
        let before = self.generation().filter(|g| Some(*g) == self.known_generation);
        self.known_generation = None;
        use crate::metrics::{KERNEL_APPLY, STORE_COMMIT};
        if plan.reversible() {
            KERNEL_APPLY.time(|| plan.apply(self.kernel.as_ref(), &self.firewall))?;
            crate::fault::point("store");
            if let Err(e) = STORE_COMMIT.time(|| persist(self.store.as_ref())) {
                for re in plan.undo(self.kernel.as_ref(), &self.firewall) {
                    tracing::error!("undo after a store failure incomplete: {re}");
                }
                return Err(e.into());
            }
        } else {
            crate::fault::point("store");
            STORE_COMMIT.time(|| persist(self.store.as_ref()))?;
            if let Err(e) = KERNEL_APPLY.time(|| plan.apply(self.kernel.as_ref(), &self.firewall)) {
                if let Err(se) = restore(self.store.as_ref()) {
                    tracing::error!("restoring the store after a kernel failure failed: {se}");
                }
                return Err(e.into());
            }
        }
        crate::fault::point("memory");
        self.known_generation = self.generation_after(before, plan);
        let inet = planner::table_id();
        let had_rules = self.firewall.contains_key(&inet);
        firewall(&mut self.firewall);
        if !had_rules && self.firewall.contains_key(&inet) {
            // lanyard has rules now: other tools' chains matter from here.
            self.check_coexistence();
        }
        Ok(())
    }

    /// The kernel's nftables generation, when the driver tells it.
    fn generation(&self) -> Option<u32> {
        self.kernel.firewall_generation().ok().flatten()
    }

    /// The generation at which the kernel holds the tables `plan` led to,
    /// when it held the ones before at `before` and nothing but `plan`'s
    /// own transactions (one per non-empty firewall change) came between;
    /// None when that cannot be told.
    fn generation_after(&self, before: Option<u32>, plan: &Plan) -> Option<u32> {
        let own = plan.firewall.iter().filter(|c| c.is_transaction()).count();
        let after = self.generation()?;
        (before?.wrapping_add(u32::try_from(own).ok()?) == after).then_some(after)
    }

    /// All networks of all projects.
    pub fn networks(&self) -> Vec<Network> {
        self.networks.clone()
    }

    /// One network, by key ([`Network::key`]; a name in the default project).
    pub fn network(&self, key: &str) -> Result<Network, EngineError> {
        self.networks
            .iter()
            .find(|n| n.key() == key)
            .cloned()
            .ok_or_else(|| EngineError::NotFound(format!("no network named {key:?} (see `lanyard net list`)")))
    }

    /// Ports, optionally filtered by VM and network key.
    pub fn ports(&self, vm: Option<&str>, net: Option<&str>) -> Vec<Port> {
        self.ports_of(None, vm, net)
    }

    /// Ports, optionally filtered by project, VM and network key.
    pub fn ports_of(&self, project: Option<&str>, vm: Option<&str>, net: Option<&str>) -> Vec<Port> {
        self.ports
            .iter()
            .filter(|p| {
                project.is_none_or(|pr| p.project == pr)
                    && vm.is_none_or(|v| p.vm == v)
                    && net.is_none_or(|n| p.net == n)
            })
            .cloned()
            .collect()
    }

    /// A port as the API shows it: with its QEMU arguments and its VLANs,
    /// and its networks by name (they are all in the port's project).
    pub fn port_view(&self, port: Port) -> PortView {
        let find = |key: &str| self.networks.iter().find(|n| n.key() == key);
        let vlan_of = |key: &str| find(key).and_then(|n| n.vlan);
        let vlan = if port.trunk.is_empty() {
            vlan_of(&port.net).filter(|_| port.untagged).map(|v| v.to_string())
        } else {
            let tagged: Vec<String> = port.trunk.iter().filter_map(|t| vlan_of(t)).map(|v| v.to_string()).collect();
            Some(format!("trunk {}", tagged.join(",")))
        };
        let name_of = |key: &String| find(key).map_or_else(|| key.clone(), |n| n.name.clone());
        let qemu_args = port.qemu_args_on(find(&port.net).and_then(|n| n.mtu));
        let shown = Port { net: name_of(&port.net), trunk: port.trunk.iter().map(name_of).collect(), ..port };
        PortView { vlan, qemu_args, port: shown }
    }

    /// Leases of a network (by key), ordered by address.
    pub fn leases(&self, net: &str) -> Result<Vec<Lease>, EngineError> {
        self.network(net)?;
        let mut v: Vec<Lease> = self.books.get(net).map(|b| lock(b).leases().cloned().collect()).unwrap_or_default();
        v.sort_by_key(|l| l.ip);
        Ok(v)
    }

    /// lanyard's bridges and their interfaces.
    pub fn bridges(&self) -> Result<Vec<BridgeView>, EngineError> {
        let observed = self.observe()?;
        let table = |vlans: &[crate::kernel::BridgeVlan]| {
            let entries: Vec<String> = vlans
                .iter()
                .map(|v| {
                    format!(
                        "{}{}{}",
                        v.vid,
                        if v.pvid { " pvid" } else { "" },
                        if v.untagged { " untagged" } else { "" }
                    )
                })
                .collect();
            entries.join(", ")
        };
        let mut views: Vec<BridgeView> = Vec::new();
        for n in &self.networks {
            let Some(b) = observed.links.get(&n.bridge) else { continue };
            // A VLAN-filtering bridge is listed once, with all its networks.
            if let Some(view) = views.iter_mut().find(|v| v.name == n.bridge) {
                view.net = format!("{},{}", view.net, n.key());
                continue;
            }
            let interfaces: Vec<&crate::kernel::ObservedLink> =
                observed.links.values().filter(|l| l.master.as_deref() == Some(n.bridge.as_str())).collect();
            let vlans = if n.filtering() {
                std::iter::once(b)
                    .chain(interfaces.iter().copied())
                    .map(|l| (l.name.clone(), table(&l.vlans)))
                    .collect()
            } else {
                Default::default()
            };
            views.push(BridgeView {
                vlan: n.vlan.filter(|_| !n.filtering()),
                bridge_id: b.bridge.as_ref().map(|i| i.id.clone()).unwrap_or_default(),
                stp: if b.bridge.as_ref().is_some_and(|i| i.stp) { "yes" } else { "no" }.into(),
                name: n.bridge.clone(),
                net: n.key().into_owned(),
                interfaces: interfaces.iter().map(|l| l.name.clone()).collect(),
                vlans,
            });
        }
        Ok(views)
    }

    /// Looks at other tools' forward chains (docs/coexistence.md): puts
    /// lanyard's rules into Docker's DOCKER-USER when it exists and lanyard
    /// has rules of its own, and warns, once per change, about drop-policy
    /// chains that will cut lanyard's forwarded traffic.
    fn check_coexistence(&mut self) {
        let mark = planner::firewall::ACCEPT_MARK;
        if self.firewall.contains_key(&planner::table_id()) {
            match self.kernel.ensure_docker_user(mark) {
                Ok(true) => tracing::info!("put lanyard's rules at the top of Docker's DOCKER-USER chain"),
                Ok(false) => {}
                Err(e) => tracing::warn!("cannot put lanyard's rules into DOCKER-USER: {e}"),
            }
        }
        let now = match self.kernel.coexistence(mark) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("cannot read other tables' chains: {e}");
                return;
            }
        };
        let before: Vec<String> = self.coexistence.blocking().into_iter().map(String::from).collect();
        for chain in now.blocking() {
            if !before.iter().any(|b| b == chain) {
                tracing::warn!(
                    "nftables chain `{chain}` drops forwarded packets by policy: lanyard's networks lose \
                     their forwarded traffic there unless it accepts `meta mark & {mark:#010x} == {mark:#010x}` \
                     (see docs/coexistence.md)"
                );
            }
        }
        self.coexistence = now;
    }

    /// The daemon's health in numbers.
    pub fn status(&self) -> StatusView {
        let facts = crate::metrics::daemon_facts();
        let now = self.host.now();
        let leases = self.books.values().map(|b| lock(b).usage(now).0).sum();
        StatusView {
            version: crate::cli::VERSION.to_string(),
            started_at: facts.map(|f| f.started_at),
            uptime_secs: facts.map(|f| now.saturating_sub(f.started_at)),
            store: facts.map(|f| f.store.clone()),
            leases,
            floating_ips: self.floating_ips.len(),
            projects: self.projects.len(),
            networks: self.networks.len(),
            active_networks: self.networks.iter().filter(|n| n.state == NetState::Active).count(),
            ports: self.ports.len(),
            self_healing: self.repair_stats.clone(),
            coexistence: self.coexistence.clone(),
            dhcp_handler_panics: crate::dhcp::server::handler_panics(),
        }
    }

    /// Ports by the node that carries them (None: records that name no
    /// node, this host's), for `node list`.
    pub fn ports_per_node(&self) -> HashMap<Option<String>, usize> {
        let mut out = HashMap::new();
        for p in &self.ports {
            *out.entry(p.node.clone()).or_default() += 1;
        }
        out
    }

    /// What `GET /metrics` shows of the engine: per network its leases and
    /// free addresses, and the totals.
    pub fn gauges(&self) -> crate::metrics::Gauges {
        let now = self.host.now();
        let networks = self
            .networks
            .iter()
            .map(|n| {
                let key = n.key().into_owned();
                let (leases, free) = self.books.get(&key).map_or((0, 0), |b| lock(b).usage(now));
                crate::metrics::NetGauges { network: key, active: n.state == NetState::Active, leases, free }
            })
            .collect();
        crate::metrics::Gauges {
            networks,
            ports: self.ports.len() as u64,
            floating_ips: self.floating_ips.len() as u64,
            repairs: self.repair_stats.repairs,
            heal_failures: self.repair_stats.failures,
        }
    }

    /// Stops the DHCP and DNS servers (the kernel state stays: VMs keep running).
    pub fn shutdown(&mut self) {
        self.services.stop_all();
    }
}

fn firewall_kind(plan: &Plan) -> String {
    let kinds: Vec<String> = plan
        .firewall
        .iter()
        .map(|c| match c {
            crate::kernel::FirewallChange::None => "unchanged".to_string(),
            crate::kernel::FirewallChange::Elements(v) => format!("{} elements", v.len()),
            crate::kernel::FirewallChange::Replace(t) => format!("replace {}", t.id),
            crate::kernel::FirewallChange::Delete(id) => format!("delete {id}"),
        })
        .collect();
    if kinds.is_empty() {
        "unchanged".into()
    } else {
        kinds.join(", ")
    }
}

#[cfg(test)]
mod tests;
