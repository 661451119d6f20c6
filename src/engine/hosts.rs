//! Static DHCP hosts (libvirt's `<host mac= ip= name=>`): MACs that are
//! not ports but always get one address and a DNS name. They live in the
//! network's address book as static leases, exactly like a port's fixed
//! IP, so DHCP and DNS need nothing of their own for them.

use super::{lock, Engine, EngineError};
use crate::model::hosts::{StaticHost, StaticHostSpec};
use crate::model::{Mac, ModelError};
use crate::store::{DocumentChange, LeaseChange, HOSTS};

fn no_such_host(net: &str, mac: &str) -> EngineError {
    EngineError::NotFound(format!("network {net:?} has no static host with MAC {mac} (see `lanyard net host list`)"))
}

impl Engine {
    /// The static hosts of a network (by key), ordered by MAC.
    pub fn hosts(&self, net: &str) -> Result<Vec<StaticHost>, EngineError> {
        self.network(net)?;
        Ok(self.hosts.iter().filter(|h| h.net == net).cloned().collect())
    }

    /// Adds a static host to a network (by key). The address must be one
    /// a guest may have (inside the subnet, not the gateway, broadcast or
    /// network address) and free: no port's, no other host's, no live
    /// lease of another MAC. The MAC may not be a port's (ports' MACs are
    /// unique everywhere) nor another host's of the network; the name not
    /// another's on the network (DNS would answer for one of them only).
    pub fn add_host(&mut self, net: &str, spec: StaticHostSpec) -> Result<StaticHost, EngineError> {
        let network = self.network(net)?;
        let host = spec.validate(net)?;
        if !network.mode.serves_dhcp() || network.manager == Some(crate::model::Manager::Flat) {
            return Err(EngineError::Conflict(format!(
                "network {:?} has no lanyard DHCP server ({} mode): static hosts need one",
                network.name,
                if network.manager == Some(crate::model::Manager::Flat) {
                    "flat manager".into()
                } else {
                    format!("{:?}", network.mode).to_lowercase()
                }
            )));
        }
        if let Some(p) = self.ports.iter().find(|p| p.mac == host.mac) {
            return Err(EngineError::Conflict(format!(
                "MAC {} is port {}'s (vm {}): a port already has its fixed IP",
                host.mac, p.id, p.vm
            )));
        }
        if self.hosts.iter().any(|h| h.net == net && h.mac == host.mac) {
            return Err(EngineError::Conflict(format!(
                "network {:?} already has a static host with MAC {} (delete it first)",
                network.name, host.mac
            )));
        }
        if let Some(h) = self.hosts.iter().find(|h| h.net == net && h.ip == host.ip) {
            return Err(EngineError::Conflict(format!("{} is already static host {}'s", host.ip, h.mac)));
        }
        if let Some(name) = &host.name {
            let clash = self.ports.iter().any(|p| p.net == net && p.vm.eq_ignore_ascii_case(name))
                || self
                    .hosts
                    .iter()
                    .any(|h| h.net == net && h.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(name)));
            if clash {
                return Err(EngineError::Conflict(format!(
                    "the name {name:?} is already taken on network {:?}",
                    network.name
                )));
            }
        }
        if !network.subnet.contains(&host.ip) {
            return Err(EngineError::Invalid(ModelError::Invalid {
                what: "ip",
                value: host.ip.to_string(),
                why: format!("is outside the network's subnet {}", network.subnet),
            }));
        }
        let book = self
            .books
            .get(net)
            .cloned()
            .ok_or_else(|| EngineError::Internal(format!("network {net:?} has no address book")))?;
        let now = self.host.now();
        // The address book refuses the gateway, the broadcast and network
        // addresses, ports' fixed IPs and live leases of other MACs.
        lock(&book).reserve_fixed(host.mac, Some(host.ip), now)?;
        if let Err(e) = self.store.write_documents(&[DocumentChange::put(HOSTS, host.doc_key(), &host)]) {
            lock(&book).remove_static(host.mac);
            return Err(e.into());
        }
        if let Some(name) = &host.name {
            lock(&book).set_name(host.mac, name);
        }
        let at = self.hosts.partition_point(|h| (&h.net, h.mac) < (&host.net, host.mac));
        self.hosts.insert(at, host.clone());
        tracing::info!(net, mac = %host.mac, ip = %host.ip, "static host added");
        Ok(host)
    }

    /// Deletes a static host. A lease its client still holds stays, as a
    /// dynamic lease until it expires (as a deleted port's does), so the
    /// address is not given to someone else under a running client.
    pub fn delete_host(&mut self, net: &str, mac: &str) -> Result<(), EngineError> {
        self.network(net)?;
        let m: Mac = mac.trim().parse()?;
        let host =
            self.hosts.iter().find(|h| h.net == net && h.mac == m).cloned().ok_or_else(|| no_such_host(net, mac))?;
        let now = self.host.now();
        let held = self.books.get(net).and_then(|b| lock(b).release_static(m, now));
        self.store.write_documents(&[DocumentChange::delete(HOSTS, host.doc_key())])?;
        if let Some(l) = held {
            if let Err(e) = self.store.write_leases(&[LeaseChange::Upsert(l)]) {
                tracing::warn!(net, mac = %m, "cannot store the deleted host's held lease: {e}");
            }
        }
        self.hosts.retain(|h| !(h.net == net && h.mac == m));
        tracing::info!(net, mac = %m, "static host deleted");
        Ok(())
    }

    /// Puts the static hosts of a network into its address book (at start,
    /// and when a book is made again).
    pub(super) fn book_hosts(&self, net: &str) {
        let Some(book) = self.books.get(net) else { return };
        let mut book = lock(book);
        for h in self.hosts.iter().filter(|h| h.net == net) {
            book.add_static(h.mac, h.ip);
            if let Some(name) = &h.name {
                book.set_name(h.mac, name);
            }
        }
    }

    /// Forgets a deleted network's static hosts (their documents too).
    pub(super) fn forget_hosts(&mut self, net: &str) {
        let gone: Vec<DocumentChange> =
            self.hosts.iter().filter(|h| h.net == net).map(|h| DocumentChange::delete(HOSTS, h.doc_key())).collect();
        if gone.is_empty() {
            return;
        }
        if let Err(e) = self.store.write_documents(&gone) {
            // Harmless leftovers: a host of a network that no longer
            // exists is dropped when the daemon starts.
            tracing::warn!(net, "cannot delete the network's static hosts: {e}");
        }
        self.hosts.retain(|h| h.net != net);
    }

    /// Whether a MAC is a static host's on some network (a new port may
    /// not take it: DHCP would give it the host's address).
    pub(super) fn is_host_mac(&self, mac: &Mac) -> bool {
        self.hosts.iter().any(|h| h.mac == *mac)
    }

    /// Whether a static host of network `net` has the DNS name `name`
    /// (a port's VM of that name would make DNS answer for one of them).
    pub(super) fn host_named(&self, net: &str, name: &str) -> bool {
        self.hosts.iter().any(|h| h.net == net && h.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(name)))
    }
}
