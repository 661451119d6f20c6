//! Self-healing: when something lanyard owns is deleted or changed under it
//! (its table flushed, a bridge or a running port's link deleted, the
//! gateway address removed, a port released from its bridge), the kernel
//! monitor reports it and [`Engine::heal`] re-plans only the objects
//! concerned and restores them.
//!
//! Monitors report every change, lanyard's own included; healing an object
//! that is as it should be plans nothing, so lanyard's own changes cost one
//! look at the links they touched. What lanyard does not own is never
//! looked at twice and never touched.

use std::collections::{BTreeMap, BTreeSet};

use super::{Engine, EngineError};
use crate::kernel::{FirewallChange, KernelEvent, Observed, Op, Plan, Tables};
use crate::model::{NetState, Network, Port, PortType};
use crate::planner;

/// What healing has done since the daemon started.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct RepairStats {
    /// Kernel changes made to restore lanyard's state.
    pub repairs: u64,
    /// Heals that found something to repair.
    pub heals: u64,
    /// The last repair, in words.
    pub last: Option<String>,
    /// When it happened (unix seconds).
    pub last_at: Option<u64>,
    /// Heals that failed (the error is logged).
    pub failures: u64,
}

/// The objects a batch of events concerns.
#[derive(Debug, Default)]
struct Scope {
    /// Networks whose bridge must be checked. Their ports are checked too
    /// only when the bridge has to be re-created: a port released from a
    /// bridge that stays reports its own event (the kernel sends one for
    /// the bridge on every port change, and checking every port each time
    /// would cost O(ports) per port).
    networks: BTreeSet<String>,
    /// Ports to check, by id.
    ports: BTreeSet<String>,
    firewall: bool,
    /// Another tool's table changed: look at coexistence again.
    foreign: bool,
    /// Floating IP pools' interfaces that changed (re-created, say): all
    /// their pool addresses are checked.
    pool_interfaces: BTreeSet<String>,
    /// Pool addresses reported added (true) or removed, the last report of
    /// each: lanyard's own association costs this one look, not a read of
    /// an interface that may carry thousands of addresses.
    pool_addresses: BTreeMap<std::net::Ipv4Addr, (String, bool)>,
    /// Networks whose VXLAN device changed (a cluster member's): the
    /// device and its forwarding entries are checked.
    overlay: BTreeSet<String>,
}

impl Engine {
    /// Repairs what `events` show was changed under lanyard. Returns the
    /// number of kernel changes made.
    pub fn heal(&mut self, events: &[KernelEvent]) -> Result<usize, EngineError> {
        let scope = self.scope(events);
        if scope.foreign {
            self.check_coexistence();
        }
        if scope.networks.is_empty()
            && scope.ports.is_empty()
            && !scope.firewall
            && scope.pool_interfaces.is_empty()
            && scope.pool_addresses.is_empty()
            && scope.overlay.is_empty()
        {
            return Ok(0);
        }
        let result = self.repair(&scope);
        match &result {
            Ok(0) => {}
            Ok(n) => self.repair_stats.heals += u64::from(*n > 0),
            Err(e) => {
                self.repair_stats.failures += 1;
                tracing::error!("self-healing failed: {e}");
            }
        }
        result
    }

    /// What the repair counters say.
    pub fn repair_stats(&self) -> RepairStats {
        self.repair_stats.clone()
    }

    fn scope(&self, events: &[KernelEvent]) -> Scope {
        let mut scope = Scope::default();
        let active = || self.networks.iter().filter(|n| n.state == NetState::Active);
        for ev in events {
            match ev {
                KernelEvent::Overflow => {
                    scope.networks.extend(active().map(|n| n.key().into_owned()));
                    scope.ports.extend(self.ports.iter().map(|p| p.id.clone()));
                    scope.firewall = true;
                }
                KernelEvent::Address { link, addr, gone }
                    if addr.prefix_len() == 32
                        && self.pools.iter().any(|p| &p.interface == link && p.contains(addr.addr())) =>
                {
                    // A floating IP's address on its pool's interface.
                    scope.pool_addresses.insert(addr.addr(), (link.clone(), !gone));
                }
                KernelEvent::Link { name, .. } | KernelEvent::Address { link: name, .. } => {
                    if matches!(ev, KernelEvent::Link { .. }) && self.pools.iter().any(|p| &p.interface == name) {
                        scope.pool_interfaces.insert(name.clone());
                    }
                    // A trunk carries every VLAN network on it.
                    for net in active().filter(|n| {
                        &n.bridge == name
                            || &n.l3_ifname() == name
                            || n.uplink.as_deref() == Some(name.as_str())
                            || planner::links::network_vlan_device(n).as_deref() == Some(name.as_str())
                    }) {
                        scope.networks.insert(net.key().into_owned());
                    }
                    if let Some(id) = self.index.ifnames.get(name) {
                        scope.ports.insert(id.clone());
                    }
                    // Only a member with tunnels has VXLAN devices to heal.
                    if self.underlay.is_some() && name.starts_with(planner::overlay::VXLAN_PREFIX) {
                        for net in active().filter(|n| planner::overlay::spans(n)) {
                            if planner::overlay::vxlan_ifname(net) == *name {
                                scope.overlay.insert(net.key().into_owned());
                            }
                        }
                    }
                }
                KernelEvent::Firewall { table } if planner::table_ids().contains(table) => scope.firewall = true,
                KernelEvent::Firewall { .. } => scope.foreign = true,
                // Bridge-mode routes move with the uplink's addresses, which
                // the link and address events already cover.
                KernelEvent::Route => {}
            }
        }
        scope
    }

    /// Stops the networks of `scope` whose bridge's name someone else's
    /// interface has taken: lanyard cannot re-create the bridge without
    /// touching what is not its own, and showing such a network as active
    /// would be a lie (its ports could not join it). Returns how many.
    fn stop_displaced(&mut self, scope: &Scope) -> Result<usize, EngineError> {
        let nets: Vec<Network> = self
            .networks
            .iter()
            .filter(|n| n.state == NetState::Active && !n.adopted && scope.networks.contains(n.key().as_ref()))
            .cloned()
            .collect();
        let names: Vec<&str> = nets.iter().map(|n| n.bridge.as_str()).collect();
        let links = self.kernel.observe_links(&names)?;
        let mut stopped = 0;
        for net in nets.iter().filter(|n| links.get(&n.bridge).is_some_and(|l| !l.owned())) {
            let key = net.key().into_owned();
            let project = if net.project == crate::model::DEFAULT_PROJECT {
                String::new()
            } else {
                format!("--project {} ", net.project)
            };
            let words = format!(
                "stopped network {key:?}: interface {} took its bridge's name and is not lanyard's; remove or rename \
                 it, then `lanyard net start {project}{}`",
                net.bridge, net.name
            );
            self.set_active(&key, false)?;
            tracing::error!(net = %key, "{words}");
            self.repair_stats.last = Some(words);
            self.repair_stats.last_at = Some(self.host.now());
            stopped += 1;
        }
        Ok(stopped)
    }

    fn repair(&mut self, scope: &Scope) -> Result<usize, EngineError> {
        let stopped = self.stop_displaced(scope)?;
        let nets: Vec<Network> = self
            .networks
            .iter()
            .filter(|n| n.state == NetState::Active && scope.networks.contains(n.key().as_ref()))
            .cloned()
            .collect();
        // A VLAN-filtering bridge is planned with every network on it.
        let groups = planner::filtering::groups(
            self.networks
                .iter()
                .filter(|n| n.state == NetState::Active && nets.iter().any(|x| x.filtering() && x.uplink == n.uplink)),
        );
        let mut names: Vec<String> = nets.iter().flat_map(|n| [n.bridge.clone(), n.l3_ifname()]).collect();
        names.extend(nets.iter().filter_map(|n| n.uplink.clone()));
        names.extend(groups.values().flatten().map(|n| n.l3_ifname()));
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let bridge_links = self.kernel.observe_links(&names)?;
        let mut ops = Vec::new();
        let mut rebuilt = BTreeSet::new();
        let rebuilds = |ops: &[Op]| ops.iter().any(|o| matches!(o, Op::CreateBridge { .. } | Op::AddAddress { .. }));
        for net in nets.iter().filter(|n| !n.filtering()) {
            let observed = Observed {
                links: bridge_links.clone(),
                routes: self.kernel_routes_for(net)?,
                ip_forward: true,
                ..Default::default()
            };
            let bridge_ops = planner::links::bridge_ops(net, &observed);
            if rebuilds(&bridge_ops) {
                rebuilt.insert(net.key().into_owned());
            }
            ops.extend(bridge_ops);
        }
        for (uplink, group) in &groups {
            let observed = Observed {
                links: bridge_links.clone(),
                routes: self.kernel_routes_for(group[0])?,
                ip_forward: true,
                ..Default::default()
            };
            let group_ops = planner::filtering::bridge_ops(uplink, group, &observed);
            if rebuilds(&group_ops) {
                rebuilt.extend(group.iter().map(|n| n.key().into_owned()));
            }
            ops.extend(group_ops);
        }
        ops.extend(self.overlay_repair(scope, &rebuilt, &nets)?);
        // Ports: those the events named, and every port of a bridge that is
        // re-created (the kernel released them all when it went).
        let ports: Vec<Port> = self
            .ports
            .iter()
            .filter(|p| scope.ports.contains(&p.id) || rebuilt.contains(&p.net))
            .filter(|p| self.is_local(p))
            .filter(|p| match (&p.port_type, &p.netns) {
                // A veth whose namespace is gone (the VM is gone) stays gone.
                (PortType::Veth, Some(ns)) => self.host.netns_exists(ns),
                _ => true,
            })
            .cloned()
            .collect();
        let port_names: Vec<String> =
            ports.iter().flat_map(|p| planner::links::port_link_names(p, &self.trunk_of(p))).collect();
        let port_names: Vec<&str> = port_names.iter().map(String::as_str).collect();
        let links = self.kernel.observe_links(&port_names)?;
        let active: BTreeMap<std::borrow::Cow<'_, str>, &Network> =
            self.networks.iter().filter(|n| n.state == NetState::Active).map(|n| (n.key(), n)).collect();
        for p in &ports {
            ops.extend(planner::port_ops(p, active.get(p.net.as_str()).copied(), &self.trunk_of(p), &links));
        }
        if !scope.pool_interfaces.is_empty() {
            let names: Vec<&str> = scope.pool_interfaces.iter().map(String::as_str).collect();
            let observed = Observed { links: self.kernel.observe_links(&names)?, ..Default::default() };
            let live = planner::floating::associations(&self.networks, &self.local(&self.ports), self.plan_context());
            ops.extend(planner::floating::address_ops(&live, self.plan_context(), &observed));
        }
        for (ip, (link, present)) in &scope.pool_addresses {
            if scope.pool_interfaces.contains(link) {
                continue;
            }
            let wanted = self.floating_ips.iter().find(|f| f.ip == *ip).and_then(|f| self.live(f)).is_some();
            let addr = planner::floating::host_address(*ip);
            match (wanted, present) {
                (true, false) => ops.push(Op::AddAddress { link: link.clone(), addr }),
                (false, true) => ops.push(Op::DelAddress { link: link.clone(), addr }),
                _ => {}
            }
        }
        // A firewall event at the generation lanyard's own last change left
        // is that change: nothing to read. Otherwise read and compare all.
        let read_at = self.generation();
        let check = scope.firewall && !(read_at.is_some() && read_at == self.known_generation);
        let (firewall, wanted) = if check { self.firewall_repair()? } else { (Vec::new(), None) };
        if check {
            self.known_generation = None;
        }
        let plan = Plan { ops, firewall };
        if plan.is_empty() {
            if check {
                // Read in full and found as wanted: known from here.
                self.known_generation = self.generation_after(read_at, &plan);
            }
            return Ok(stopped);
        }
        plan.apply(self.kernel.as_ref(), &self.firewall)?;
        if let Some(wanted) = wanted {
            self.firewall = wanted;
            self.known_generation = self.generation_after(read_at, &plan);
        }
        // Servers bound to a bridge that was re-created (or whose gateway
        // address came back) listen on a device that is gone: restart them.
        for name in &rebuilt {
            if let Some(net) = self.networks.iter().find(|n| n.key() == *name).cloned() {
                self.services.stop(name);
                self.ensure_services(&net);
            }
        }
        let n = plan.ops.len() + plan.firewall.len();
        let words = describe(&plan);
        tracing::warn!(changes = n, "repaired what was changed under lanyard: {words}");
        self.repair_stats.repairs += n as u64;
        self.repair_stats.last = Some(words);
        self.repair_stats.last_at = Some(self.host.now());
        Ok(n)
    }

    /// The operations that bring back the VXLAN devices of the networks
    /// in `scope.overlay` and of those among `nets` whose bridge is
    /// `rebuilt` (which released the device): the device, its place on
    /// the bridge and its forwarding entries. Planned with the cluster as
    /// last seen (this node's address, the other nodes' of the last plan,
    /// the ports in memory), so a device deleted by hand comes back while
    /// etcd is unreachable too. Reads the whole kernel: rare, and the
    /// device's underlay link is found by its address.
    fn overlay_repair(
        &self,
        scope: &Scope,
        rebuilt: &BTreeSet<String>,
        nets: &[Network],
    ) -> Result<Vec<Op>, EngineError> {
        let Some(local) = self.underlay else { return Ok(Vec::new()) };
        let spanning: Vec<&Network> = self
            .networks
            .iter()
            .filter(|n| n.state == NetState::Active && planner::overlay::spans(n))
            .filter(|n| {
                let key = n.key();
                scope.overlay.contains(key.as_ref())
                    || (rebuilt.contains(key.as_ref()) && nets.iter().any(|x| x.key() == key))
            })
            .collect();
        if spanning.is_empty() {
            return Ok(Vec::new());
        }
        let observed = self.kernel.observe()?;
        let remotes = self.planned_remotes.clone().unwrap_or_default();
        let remote_ports: Vec<Port> = self.ports.iter().filter(|p| !self.is_local(p)).cloned().collect();
        let overlay = planner::overlay::Overlay { local, remotes: &remotes, remote_ports: &remote_ports };
        Ok(spanning.into_iter().flat_map(|n| planner::overlay::network_ops(n, &overlay, &observed)).collect())
    }

    /// Routes matter only to bridge-mode networks (the host's routes moved
    /// onto the bridge); others need none.
    fn kernel_routes_for(&self, net: &Network) -> Result<Vec<crate::kernel::Route>, EngineError> {
        Ok(if net.uplink.is_some() { self.kernel.observe()?.routes } else { Vec::new() })
    }

    /// The firewall changes that restore lanyard's tables, and the tables
    /// the kernel will then hold.
    fn firewall_repair(&self) -> Result<(Vec<FirewallChange>, Option<Tables>), EngineError> {
        let wanted = planner::firewall::tables(&self.networks, &self.local(&self.ports), self.plan_context());
        let current = self.kernel_firewall()?;
        Ok((FirewallChange::all_between(&current, &wanted), Some(wanted)))
    }
}

/// A plan in a few words, for the one log line a repair writes.
fn describe(plan: &Plan) -> String {
    let mut parts: Vec<String> = plan.ops.iter().take(8).map(ToString::to_string).collect();
    if plan.ops.len() > 8 {
        parts.push(format!("and {} more", plan.ops.len() - 8));
    }
    for change in &plan.firewall {
        match change {
            FirewallChange::None => {}
            FirewallChange::Replace(t) => parts.push(format!("restored nftables table {}", t.id)),
            FirewallChange::Elements(v) => parts.push(format!("restored {} set elements", v.len())),
            FirewallChange::Delete(id) => parts.push(format!("removed stale nftables table {id}")),
        }
    }
    parts.join(", ")
}
