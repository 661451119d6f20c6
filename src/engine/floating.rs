//! Floating IPs: pools (admin), and the addresses projects allocate from
//! them and associate with their ports. An association costs a few map
//! elements and one address on the pool's interface, never a rule or a
//! rebuilt table, so the 10,000th costs what the first did
//! (docs/floating-ips.md).
//!
//! Invariants (checked by `engine::tests::floating`): a floating IP is
//! held by one project (it is one record, keyed by address), associated
//! with at most one port, of that project; a port has at most one
//! floating IP (its outbound traffic has one source).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use super::{Engine, EngineError};
use crate::kernel::firewall::apply_elements;
use crate::kernel::{FirewallChange, Op, Plan};
use crate::model::floating::{parse_fip, FipPool, FipPoolSpec, FipSpec, FloatingIp};
use crate::model::{ModelError, Port, DEFAULT_PROJECT};
use crate::planner::floating::{association, host_address, takes_floating_ips, Association};
use crate::store::{DocumentChange, FIP_POOLS, FLOATING_IPS};

/// A pool as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct FipPoolView {
    /// The stored record.
    #[serde(flatten)]
    pub pool: FipPool,
    /// How many addresses it has.
    pub size: u32,
    /// How many projects hold.
    pub allocated: usize,
    /// How many are associated with a port.
    pub associated: usize,
}

/// A floating IP as the API shows it: with its port's VM, fixed IP and
/// network.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct FipView {
    /// The address.
    #[schema(value_type = String, format = Ipv4)]
    pub ip: Ipv4Addr,
    /// Its pool.
    pub pool: String,
    /// The project that holds it.
    pub project: String,
    /// The associated port's id.
    pub port: Option<String>,
    /// The associated port's VM.
    pub vm: Option<String>,
    /// The associated port's fixed IP.
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub fixed_ip: Option<Ipv4Addr>,
    /// The associated port's network (its name in the project).
    pub net: Option<String>,
}

fn no_such_fip(ip: Ipv4Addr) -> EngineError {
    EngineError::NotFound(format!("no floating IP {ip} (see `lanyard fip list`)"))
}

fn no_such_pool(name: &str) -> EngineError {
    EngineError::NotFound(format!("no floating IP pool named {name:?} (see `lanyard fip pool list`)"))
}

impl Engine {
    /// The pools, by name.
    pub fn fip_pools(&self) -> Vec<FipPoolView> {
        self.pools.iter().map(|p| self.pool_view(p)).collect()
    }

    fn pool_view(&self, pool: &FipPool) -> FipPoolView {
        let held = self.floating_ips.iter().filter(|f| f.pool == pool.name);
        FipPoolView {
            pool: pool.clone(),
            size: pool.size(),
            allocated: held.clone().count(),
            associated: held.filter(|f| f.port.is_some()).count(),
        }
    }

    /// Declares a pool. Its range may not overlap another pool, a network,
    /// or the interface's own addresses; the interface must exist and not
    /// be one of lanyard's.
    pub fn create_fip_pool(&mut self, spec: FipPoolSpec) -> Result<FipPoolView, EngineError> {
        let pool = spec.validate()?;
        if self.pools.iter().any(|p| p.name == pool.name) {
            return Err(EngineError::Conflict(format!("a floating IP pool named {:?} already exists", pool.name)));
        }
        if let Some(other) = self.pools.iter().find(|p| p.overlaps(&pool)) {
            return Err(EngineError::Conflict(format!(
                "range {} overlaps pool {:?} ({}-{})",
                spec.range, other.name, other.first, other.last
            )));
        }
        let overlaps = |n: &&crate::model::Network| {
            n.subnet.contains(&pool.first) || n.subnet.contains(&pool.last) || pool.contains(n.subnet.network())
        };
        if let Some(n) = self.networks.iter().find(overlaps) {
            return Err(EngineError::Conflict(format!(
                "range {} overlaps subnet {} of network {:?}: floating IPs are outside addresses",
                spec.range,
                n.subnet,
                n.key()
            )));
        }
        let lanyards = self.networks.iter().any(|n| n.bridge == pool.interface || n.l3_ifname() == pool.interface)
            || self.index.has_ifname(&pool.interface);
        if lanyards {
            return Err(EngineError::Conflict(format!(
                "{} is one of lanyard's interfaces; name the host interface the floating IPs are reachable on",
                pool.interface
            )));
        }
        let links = self.kernel.observe_links(&[&pool.interface])?;
        let Some(link) = links.get(&pool.interface) else {
            return Err(EngineError::NotFound(format!(
                "no interface named {} (the floating IPs are announced there)",
                pool.interface
            )));
        };
        if let Some(own) = link.addrs.iter().find(|a| a.prefix_len() < 32 && pool.contains(a.addr())) {
            return Err(EngineError::Conflict(format!(
                "range {} holds {}, the address of {} itself",
                spec.range, own, pool.interface
            )));
        }
        self.store.write_documents(&[DocumentChange::put(FIP_POOLS, &pool.name, &pool)])?;
        let at = self.pools.partition_point(|p| p.name < pool.name);
        self.pools.insert(at, pool.clone());
        tracing::info!(pool = pool.name, first = %pool.first, last = %pool.last, "floating IP pool created");
        Ok(self.pool_view(&pool))
    }

    /// Deletes a pool none of whose addresses is held.
    pub fn delete_fip_pool(&mut self, name: &str) -> Result<(), EngineError> {
        let pool = self.pools.iter().find(|p| p.name == name).cloned().ok_or_else(|| no_such_pool(name))?;
        let held: Vec<String> =
            self.floating_ips.iter().filter(|f| f.pool == name).map(|f| f.ip.to_string()).take(5).collect();
        if !held.is_empty() {
            return Err(EngineError::Conflict(format!(
                "pool {name:?} has floating IPs held by projects ({}{}); delete them first",
                held.join(", "),
                if self.pool_view(&pool).allocated > held.len() { ", ..." } else { "" }
            )));
        }
        self.store.write_documents(&[DocumentChange::delete(FIP_POOLS, name)])?;
        self.pools.retain(|p| p.name != name);
        tracing::info!(pool = name, "floating IP pool deleted");
        Ok(())
    }

    fn fip_view(&self, f: &FloatingIp) -> FipView {
        let port = f.port.as_deref().and_then(|id| self.index.by_id.get(id));
        let net = port.and_then(|p| self.networks.iter().find(|n| n.key() == p.net)).map(|n| n.name.clone());
        FipView {
            ip: f.ip,
            pool: f.pool.clone(),
            project: f.project.clone(),
            port: f.port.clone(),
            vm: port.map(|p| p.vm.clone()),
            fixed_ip: port.and_then(|p| p.ip),
            net,
        }
    }

    /// Floating IPs, of one project or of all, by address.
    pub fn floating_ips(&self, project: Option<&str>) -> Result<Vec<FipView>, EngineError> {
        if let Some(p) = project {
            self.check_project(p)?;
        }
        Ok(self
            .floating_ips
            .iter()
            .filter(|f| project.is_none_or(|p| f.project == p))
            .map(|f| self.fip_view(f))
            .collect())
    }

    /// One floating IP, which `scope` (a project's caller: its own) must hold.
    pub fn floating_ip(&self, ip: &str, scope: Option<&str>) -> Result<FipView, EngineError> {
        Ok(self.fip_view(&self.held(ip, scope)?))
    }

    /// The record of floating IP `ip`, which `scope` must hold; another
    /// project's is as absent as one nobody holds.
    fn held(&self, ip: &str, scope: Option<&str>) -> Result<FloatingIp, EngineError> {
        let ip = parse_fip(ip)?;
        // Kept sorted by address.
        let at = self.floating_ips.partition_point(|f| f.ip < ip);
        self.floating_ips
            .get(at)
            .filter(|f| f.ip == ip && scope.is_none_or(|p| f.project == p))
            .cloned()
            .ok_or_else(|| no_such_fip(ip))
    }

    /// Allocates a floating IP to a project: the address asked for, or
    /// the pool's lowest free one.
    pub fn create_floating_ip(&mut self, spec: FipSpec) -> Result<FipView, EngineError> {
        let project = spec.project.clone().unwrap_or_else(|| DEFAULT_PROJECT.into());
        self.check_project(&project)?;
        let pool = match spec.pool.as_deref() {
            Some(name) => self.pools.iter().find(|p| p.name == name).ok_or_else(|| no_such_pool(name))?,
            None => match self.pools.as_slice() {
                [one] => one,
                [] => {
                    return Err(EngineError::Conflict(
                        "there is no floating IP pool: an admin creates one with `lanyard fip pool create NAME \
                         --range FIRST-LAST --interface IF`"
                            .into(),
                    ))
                }
                many => {
                    let names: Vec<&str> = many.iter().map(|p| p.name.as_str()).collect();
                    return Err(EngineError::Invalid(ModelError::Invalid {
                        what: "pool",
                        value: String::new(),
                        why: format!("there are {} pools ({}): name one with --pool", many.len(), names.join(", ")),
                    }));
                }
            },
        }
        .clone();
        let held: HashSet<Ipv4Addr> = self.floating_ips.iter().map(|f| f.ip).collect();
        let ip = match spec.ip.as_deref() {
            Some(text) => {
                let ip = parse_fip(text)?;
                if !pool.contains(ip) {
                    return Err(EngineError::Invalid(ModelError::Invalid {
                        what: "floating IP",
                        value: ip.to_string(),
                        why: format!("is not in pool {:?} ({}-{})", pool.name, pool.first, pool.last),
                    }));
                }
                if held.contains(&ip) {
                    return Err(EngineError::Conflict(format!("floating IP {ip} is already held")));
                }
                ip
            }
            None => (u32::from(pool.first)..=u32::from(pool.last))
                .map(Ipv4Addr::from)
                .find(|ip| !held.contains(ip))
                .ok_or_else(|| {
                    EngineError::Conflict(format!(
                        "pool {:?} is exhausted: all {} addresses are held",
                        pool.name,
                        pool.size()
                    ))
                })?,
        };
        let fip = FloatingIp { ip, pool: pool.name.clone(), project, port: None };
        self.store.write_documents(&[DocumentChange::put(FLOATING_IPS, ip.to_string(), &fip)])?;
        let at = self.floating_ips.partition_point(|f| f.ip < ip);
        self.floating_ips.insert(at, fip.clone());
        tracing::info!(fip = %ip, project = fip.project, "floating IP allocated");
        Ok(self.fip_view(&fip))
    }

    /// The port `port` names among `project`'s: a port id, or the name of
    /// a VM with exactly one port.
    fn port_named(&self, port: &str, project: &str) -> Result<Port, EngineError> {
        self.port_by_id_or_vm(port, |p| p.project == project).map_err(|ids| match ids.as_slice() {
            [] => EngineError::NotFound(format!(
                "no port or VM named {port:?} in project {project:?} (see `lanyard port list`)"
            )),
            many => EngineError::Conflict(format!(
                "VM {port:?} has {} ports ({}): name one by its id",
                many.len(),
                many.join(", ")
            )),
        })
    }

    /// The interface of pool `name`.
    pub(super) fn pool_interface(&self, name: &str) -> Option<String> {
        self.pools.iter().find(|p| p.name == name).map(|p| p.interface.clone())
    }

    /// The live association of `fip` (as the planner sees it), if any: one
    /// look at its port and network, whatever else exists.
    pub(super) fn live(&self, fip: &FloatingIp) -> Option<Association> {
        let port = self.index.by_id.get(fip.port.as_deref()?)?;
        // Another node's port's floating IP is NATed on that node.
        if !self.is_local(port) {
            return None;
        }
        let net = self.networks.iter().find(|n| n.key() == port.net)?;
        association(fip, port, net)
    }

    /// Associates floating IP `ip` with `port` (an id, or a VM with one
    /// port) of the project that holds it; an association it had moves,
    /// established flows included.
    pub fn associate_floating_ip(&mut self, ip: &str, port: &str, scope: Option<&str>) -> Result<FipView, EngineError> {
        let old = self.held(ip, scope)?;
        let port = self.port_named(port, &old.project)?;
        if port.ip.is_none() {
            return Err(EngineError::Conflict(format!(
                "port {} (vm {}) has no fixed IP, so a floating IP cannot lead to it",
                port.id, port.vm
            )));
        }
        let net = self.network(&port.net)?;
        if !takes_floating_ips(&net) {
            return Err(EngineError::Conflict(format!(
                "network {:?} is {}: floating IPs lead to ports of nat and route networks",
                net.name, net.mode
            )));
        }
        if let Some(other) = self.floating_ips.iter().find(|f| f.port.as_deref() == Some(&port.id) && f.ip != old.ip) {
            return Err(EngineError::Conflict(format!(
                "port {} (vm {}) already has floating IP {}; disassociate it first",
                port.id, port.vm, other.ip
            )));
        }
        if old.port.as_deref() == Some(&port.id) {
            return Ok(self.fip_view(&old));
        }
        let new = FloatingIp { port: Some(port.id.clone()), ..old.clone() };
        self.rebind(&old, Some(&new))?;
        Ok(self.fip_view(&new))
    }

    /// Ends floating IP `ip`'s association (it stays the project's).
    pub fn disassociate_floating_ip(&mut self, ip: &str, scope: Option<&str>) -> Result<FipView, EngineError> {
        let old = self.held(ip, scope)?;
        if old.port.is_none() {
            return Ok(self.fip_view(&old));
        }
        let new = FloatingIp { port: None, ..old.clone() };
        self.rebind(&old, Some(&new))?;
        Ok(self.fip_view(&new))
    }

    /// Gives floating IP `ip` back to its pool (disassociating it first).
    pub fn delete_floating_ip(&mut self, ip: &str, scope: Option<&str>) -> Result<(), EngineError> {
        let old = self.held(ip, scope)?;
        self.rebind(&old, None)
    }

    /// Changes one floating IP's record from `old` to `new` (None: gone)
    /// by the engine's protocol: the map elements and the pool interface's
    /// address that change (nothing else is read or planned), the record,
    /// then memory; then its old flows are forgotten and its new place
    /// announced.
    fn rebind(&mut self, old: &FloatingIp, new: Option<&FloatingIp>) -> Result<(), EngineError> {
        let before = self.live(old);
        let after = new.and_then(|n| self.live(n));
        let mut changes = Vec::new();
        if before != after {
            changes.extend(crate::planner::firewall::association_changes(before.as_slice(), false));
            changes.extend(crate::planner::firewall::association_changes(after.as_slice(), true));
        }
        let interface = self.pools.iter().find(|p| p.name == old.pool).map(|p| p.interface.clone());
        let mut ops = Vec::new();
        if let Some(link) = &interface {
            match (before.is_some(), after.is_some()) {
                (false, true) => ops.push(Op::AddAddress { link: link.clone(), addr: host_address(old.ip) }),
                (true, false) => ops.push(Op::DelAddress { link: link.clone(), addr: host_address(old.ip) }),
                _ => {}
            }
        }
        let firewall = if changes.is_empty() { Vec::new() } else { vec![FirewallChange::Elements(changes.clone())] };
        let key = old.ip.to_string();
        let write = match new {
            Some(n) => DocumentChange::put(FLOATING_IPS, key.clone(), n),
            None => DocumentChange::delete(FLOATING_IPS, key.clone()),
        };
        let undo = DocumentChange::put(FLOATING_IPS, key, old);
        self.commit(
            &Plan { ops, firewall },
            |t| apply_elements(t, &changes),
            |s| s.write_documents(&[write]),
            |s| s.write_documents(&[undo]),
        )?;
        match new {
            Some(n) => {
                if let Some(f) = self.floating_ips.iter_mut().find(|f| f.ip == old.ip) {
                    *f = n.clone();
                }
            }
            None => self.floating_ips.retain(|f| f.ip != old.ip),
        }
        if before.is_some() {
            // Flows decided for the old place would keep going there.
            match self.kernel.forget_flows(old.ip) {
                Ok(n) => tracing::debug!(fip = %old.ip, flows = n, "forgot the old flows"),
                Err(e) => tracing::warn!(fip = %old.ip, "cannot remove the old flows: {e}"),
            }
        }
        if let (Some(_), Some(link)) = (after, &interface) {
            if let Err(e) = self.kernel.announce(link, old.ip) {
                tracing::warn!(fip = %old.ip, "cannot announce the floating IP: {e}");
            }
        }
        match new.and_then(|n| n.port.as_deref()) {
            Some(port) => tracing::info!(fip = %old.ip, port, "floating IP associated"),
            None if new.is_some() => tracing::info!(fip = %old.ip, "floating IP disassociated"),
            None => tracing::info!(fip = %old.ip, "floating IP released"),
        }
        Ok(())
    }

    /// The floating IPs this host NATs now, by address.
    pub(super) fn live_associations(&self) -> std::collections::BTreeMap<std::net::Ipv4Addr, Association> {
        self.floating_ips.iter().filter_map(|f| self.live(f).map(|a| (f.ip, a))).collect()
    }

    /// After a change made through another host (`before`: what this host
    /// NATed until then): the flows of a floating IP that left this host
    /// or moved on it are forgotten, and one that came or moved is
    /// announced from here, as an association made through this host is.
    pub(super) fn settle_followed_floating_ips(
        &self,
        before: &std::collections::BTreeMap<std::net::Ipv4Addr, Association>,
    ) {
        let after = self.live_associations();
        for ip in before.keys().filter(|ip| before.get(*ip) != after.get(*ip)) {
            if let Err(e) = self.kernel.forget_flows(*ip) {
                tracing::warn!(fip = %ip, "cannot remove the old flows: {e}");
            }
        }
        for ip in after.keys().filter(|ip| before.get(*ip) != after.get(*ip)) {
            let Some(f) = self.floating_ips.iter().find(|f| f.ip == *ip) else { continue };
            let Some(pool) = self.pools.iter().find(|p| p.name == f.pool) else { continue };
            match self.kernel.announce(&pool.interface, *ip) {
                Ok(()) => {
                    tracing::info!(fip = %ip, port = f.port.as_deref().unwrap_or(""), "floating IP taken over here")
                }
                Err(e) => tracing::warn!(fip = %ip, "cannot announce the floating IP: {e}"),
            }
        }
    }

    /// The floating IPs associated with `ports`, as they are.
    pub(super) fn bound_floating_ips(&self, ports: &[Port]) -> Vec<FloatingIp> {
        let ids: HashSet<&str> = ports.iter().map(|p| p.id.as_str()).collect();
        self.floating_ips.iter().filter(|f| f.port.as_deref().is_some_and(|p| ids.contains(p))).cloned().collect()
    }

    /// Puts `unbound` (from [`unbound`]) in memory, and forgets their flows.
    pub(super) fn forget_ports_floating_ips(&mut self, unbound: &[FloatingIp]) {
        for u in unbound {
            if let Some(f) = self.floating_ips.iter_mut().find(|f| f.ip == u.ip) {
                *f = u.clone();
            }
            if let Err(e) = self.kernel.forget_flows(u.ip) {
                tracing::warn!(fip = %u.ip, "cannot remove the old flows: {e}");
            }
            tracing::info!(fip = %u.ip, "floating IP disassociated: its port is gone");
        }
    }

    /// How many floating IPs `project` holds.
    pub(super) fn floating_ips_held(&self, project: &str) -> usize {
        self.floating_ips.iter().filter(|f| f.project == project).count()
    }
}

/// `bound` once their ports are gone: disassociated (the project keeps
/// them). The caller persists them with the ports' deletion and then calls
/// [`Engine::forget_ports_floating_ips`].
pub(super) fn unbound(bound: &[FloatingIp]) -> Vec<FloatingIp> {
    bound.iter().map(|f| FloatingIp { port: None, ..f.clone() }).collect()
}

/// The document writes that persist `records` (floating IPs unbound from
/// deleted ports, or, to undo that, as they were).
pub(super) fn unbind_writes(records: &[FloatingIp]) -> Vec<DocumentChange> {
    records.iter().map(|f| DocumentChange::put(FLOATING_IPS, f.ip.to_string(), f)).collect()
}
