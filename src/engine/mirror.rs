//! Following the store when other writers change it (a multi-host daemon:
//! other hosts write the same etcd).
//!
//! The daemon's watcher reports [`Change`]s; [`Engine::follow`] skips those
//! the engine already holds (its own writes, which reach memory through
//! the mutation protocol) and otherwise [`Engine::resync`]s: reads the
//! desired state again and brings memory and the kernel to it. Nothing is
//! validated (another host did that) and nothing is written back: the
//! kernel is planned from the new state against what it holds, so what
//! did not change is not touched, and no table is flushed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::{lock, Engine, EngineError, PortIndex};
use crate::model::floating::{FipPool, FloatingIp};
use crate::model::grants::Grant;
use crate::model::{NetState, Network, Port, Project};
use crate::store::Change;

/// Whether `held` (memory's records of one kind) has what a document's
/// new `body` says of the record `is_key` picks: the same record, or none
/// when the body is gone. A body that does not decode is not held.
fn holds_document<T: serde::de::DeserializeOwned + PartialEq>(
    held: &[T],
    is_key: impl Fn(&T) -> bool,
    body: Option<&str>,
) -> bool {
    let mine = held.iter().find(|t| is_key(t));
    match body {
        None => mine.is_none(),
        Some(b) => serde_json::from_str::<T>(b).is_ok_and(|t| Some(&t) == mine),
    }
}

/// Desired state as read from the store.
struct Desired {
    projects: Vec<Project>,
    networks: Vec<Network>,
    ports: Vec<Port>,
    pools: Vec<FipPool>,
    floating_ips: Vec<FloatingIp>,
    grants: Vec<Grant>,
    forwards: Vec<crate::model::forwards::PortForward>,
}

impl Engine {
    /// Takes in changes the store reported; `resync` when what changed is
    /// not known (the watch lost its history). Whether anything was
    /// changed here.
    pub fn follow(&mut self, changes: &[Change], resync: bool) -> Result<bool, EngineError> {
        if !resync && changes.iter().all(|c| self.holds(c)) {
            return Ok(false);
        }
        self.resync()
    }

    /// Whether memory already holds `change` (this engine wrote it).
    pub(super) fn holds(&self, change: &Change) -> bool {
        match change {
            Change::Network(key, n) => self.networks.iter().find(|m| m.key() == key.as_str()) == n.as_ref(),
            Change::Port(id, p) => self.ports.iter().find(|q| q.id == *id) == p.as_ref(),
            Change::Project(name, p) => self.projects.iter().find(|q| q.name == *name) == p.as_ref(),
            Change::Document { kind, key, body } => {
                let body = body.as_deref();
                match kind.as_str() {
                    crate::store::FIP_POOLS => holds_document(&self.pools, |p| p.name == *key, body),
                    crate::store::FLOATING_IPS => {
                        holds_document(&self.floating_ips, |f| f.ip.to_string() == *key, body)
                    }
                    crate::store::GRANTS => holds_document(&self.grants, |g| g.key() == *key, body),
                    crate::store::FORWARDS => holds_document(&self.forwards, |f| f.doc_key() == *key, body),
                    _ => false,
                }
            }
            Change::Other => false,
            // Held while the tunnels already end where the registrations
            // say (read again here: the event does not carry them all).
            Change::Nodes => !self.overlay_moved(),
        }
    }

    fn read_desired(&self) -> Result<Desired, EngineError> {
        let store = self.store.as_ref();
        let mut floating_ips: Vec<FloatingIp> = crate::store::load(store, crate::store::FLOATING_IPS)?;
        floating_ips.sort_by_key(|f| f.ip);
        let mut grants: Vec<Grant> = crate::store::load(store, crate::store::GRANTS)?;
        grants.sort();
        let mut forwards: Vec<crate::model::forwards::PortForward> = crate::store::load(store, crate::store::FORWARDS)?;
        forwards.sort();
        Ok(Desired {
            forwards,
            projects: store.projects()?,
            networks: store.networks()?,
            ports: store.ports()?,
            pools: crate::store::load(store, crate::store::FIP_POOLS)?,
            floating_ips,
            grants,
        })
    }

    /// Reads the desired state again and brings memory and the kernel to
    /// it; whether anything differed. On a kernel failure memory stays as
    /// it was, so the next call tries again.
    pub fn resync(&mut self) -> Result<bool, EngineError> {
        let mut d = self.read_desired()?;
        if d.projects == self.projects
            && d.networks == self.networks
            && d.ports == self.ports
            && d.pools == self.pools
            && d.floating_ips == self.floating_ips
            && d.grants == self.grants
            && d.forwards == self.forwards
            && !self.overlay_moved()
        {
            return Ok(false);
        }
        let observed = self.observe()?;
        let nated = self.live_associations();
        // As at start: a network whose bridge name another tool's
        // interface has stays down on this host (in memory only).
        for n in &mut d.networks {
            if observed.links.get(&n.bridge).is_some_and(|l| !l.owned() && !n.adopted) {
                n.state = NetState::Inactive;
            }
        }
        // Servers of networks that go or stop are bound to bridges about
        // to go.
        let active = |nets: &[Network], key: &str| nets.iter().any(|n| n.key() == key && n.state == NetState::Active);
        let stopping: Vec<Network> = self.networks.iter().filter(|n| !active(&d.networks, &n.key())).cloned().collect();
        for n in &stopping {
            self.services.stop(&n.key());
        }
        // The plan is made with the new projects' policy (floating IPs,
        // grants); the old one comes back if the kernel refuses.
        let old_policy = (
            std::mem::replace(&mut self.pools, d.pools),
            std::mem::replace(&mut self.floating_ips, d.floating_ips),
            std::mem::replace(&mut self.grants, d.grants),
            std::mem::replace(&mut self.forwards, d.forwards),
        );
        if let Err(e) = self.commit_state(&d.networks, &d.ports, &observed, |_| Ok(()), |_| Ok(())) {
            (self.pools, self.floating_ips, self.grants, self.forwards) = old_policy;
            for n in &stopping {
                self.ensure_services(n);
            }
            return Err(e);
        }
        self.follow_books(&d.networks, &d.ports)?;
        // An edited network (`net edit` through another host): its book
        // takes the record, and its servers restart when what they serve
        // changed (they start again below), as `edit_network` does.
        for n in &d.networks {
            let Some(old) = self.networks.iter().find(|m| m.key() == n.key() && *m != n) else { continue };
            let key = n.key();
            if let Some(book) = self.books.get(key.as_ref()) {
                lock(book).set_network(n.clone());
            }
            if (&old.domain, old.dhcp_range, old.lease_time) != (&n.domain, n.dhcp_range, n.lease_time) {
                self.services.stop(&key);
            }
        }
        let (added, removed) = (
            d.networks.iter().filter(|n| !self.networks.iter().any(|m| m.key() == n.key())).count(),
            self.networks.iter().filter(|n| !d.networks.iter().any(|m| m.key() == n.key())).count(),
        );
        tracing::info!(
            networks = d.networks.len(),
            added,
            removed,
            ports = d.ports.len(),
            "followed a change made through another host"
        );
        self.projects = d.projects;
        self.networks = d.networks;
        self.index = PortIndex::of(&d.ports);
        self.ports = d.ports;
        for net in self.networks.clone() {
            self.ensure_services(&net);
        }
        self.settle_followed_floating_ips(&nated);
        Ok(true)
    }

    /// The address books for the new networks and ports: a new network's
    /// book starts with its ports and stored leases; a gone network's book
    /// goes; ports that came or went (or changed) add or free their fixed IPs.
    fn follow_books(&mut self, networks: &[Network], ports: &[Port]) -> Result<(), EngineError> {
        let keys: HashSet<String> = networks.iter().map(|n| n.key().into_owned()).collect();
        self.books.retain(|k, _| keys.contains(k));
        let new: Vec<&Network> = networks.iter().filter(|n| !self.books.contains_key(n.key().as_ref())).collect();
        if !new.is_empty() {
            let leases = self.store.leases()?;
            for net in new {
                let key = net.key().into_owned();
                let mut book = self.new_book(net);
                for p in ports.iter().filter(|p| p.net == key) {
                    if let Some(ip) = p.ip {
                        book.add_static(p.mac, ip);
                    }
                    book.set_name(p.mac, &p.vm);
                }
                for l in leases.iter().filter(|l| l.net == key) {
                    book.restore_lease(l.clone());
                }
                self.books.insert(key, Arc::new(Mutex::new(book)));
            }
        }
        let before: HashMap<&str, &Port> = self.ports.iter().map(|p| (p.id.as_str(), p)).collect();
        let after: HashMap<&str, &Port> = ports.iter().map(|p| (p.id.as_str(), p)).collect();
        for (id, p) in &before {
            if after.get(id) != Some(p) {
                if let Some(b) = self.books.get(&p.net) {
                    lock(b).remove_static(p.mac);
                }
            }
        }
        for (id, p) in &after {
            if before.get(id) != Some(p) {
                if let Some(b) = self.books.get(&p.net) {
                    let mut b = lock(b);
                    if let Some(ip) = p.ip {
                        b.add_static(p.mac, ip);
                    }
                    b.set_name(p.mac, &p.vm);
                }
            }
        }
        Ok(())
    }
}
