//! IP address management for one network: who holds which address.
//!
//! [`AddressBook`] is the single in-memory authority for a network's
//! addresses. Ports' fixed IPs (static leases) and dynamic leases live in one
//! table, so the same address can never be handed to two clients, whichever
//! path asks. It is pure (time is passed in), so it is unit-tested without
//! sockets; the DHCP server and the control plane both call it under one lock
//! and persist what it decides.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::model::{Lease, LeaseKind, Mac, Network};
use crate::store::LeaseChange;

/// Why an address could not be given.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    /// {ip} is not a usable address of {subnet}
    #[error("{ip} is not a usable guest address of {subnet} (network, broadcast and gateway addresses are reserved)")]
    OutsideSubnet {
        /// Requested address.
        ip: Ipv4Addr,
        /// The network's subnet.
        subnet: String,
    },
    /// The address is held by another client.
    #[error("{ip} is already in use by {holder}")]
    InUse {
        /// Requested address.
        ip: Ipv4Addr,
        /// Who holds it.
        holder: String,
    },
    /// No address left.
    #[error("no free address left in {0}")]
    Exhausted(String),
}

/// How long an OFFER reserves its address for the client it was made to.
pub const OFFER_HOLD_SECS: u64 = 30;
/// How long a DECLINEd address is kept out of the pool.
pub const DECLINE_HOLD_SECS: u64 = 600;
/// How long an expired dynamic lease is kept before it is forgotten.
pub const EXPIRED_LEASE_KEEP_SECS: u64 = 600;

#[derive(Debug, Clone)]
struct Offer {
    ip: Ipv4Addr,
    until: u64,
}

/// The address table of one network.
#[derive(Debug)]
pub struct AddressBook {
    net: Network,
    statics: HashMap<Mac, Ipv4Addr>,
    names: HashMap<Mac, String>,
    static_owner: HashMap<Ipv4Addr, Mac>,
    leases: HashMap<Mac, Lease>,
    lease_owner: HashMap<Ipv4Addr, Mac>,
    offers: HashMap<Mac, Offer>,
    /// Index of `offers` by address, so checks stay O(1) with many clients.
    offered: HashMap<Ipv4Addr, Mac>,
    declined: HashMap<Ipv4Addr, u64>,
    /// Addresses another host's port holds (its claim in the cluster
    /// store said so) that this table does not know yet, until when.
    elsewhere: HashMap<Ipv4Addr, u64>,
    /// Where the next search for a free pool address starts, so allocation
    /// stays O(1) amortised instead of rescanning from the bottom each time.
    cursor: u32,
    /// The blocks of the DHCP range this host may lease dynamically from
    /// (first, last; a cluster member's, claimed in the store so no two
    /// hosts lease one address); None: the whole range (a single host).
    blocks: Option<Vec<(Ipv4Addr, Ipv4Addr)>>,
}

impl AddressBook {
    /// An empty table for `net`.
    pub fn new(net: Network) -> Self {
        let cursor = u32::from(net.dhcp_range.first);
        AddressBook {
            net,
            statics: HashMap::new(),
            names: HashMap::new(),
            static_owner: HashMap::new(),
            leases: HashMap::new(),
            lease_owner: HashMap::new(),
            offers: HashMap::new(),
            offered: HashMap::new(),
            declined: HashMap::new(),
            elsewhere: HashMap::new(),
            cursor,
            blocks: None,
        }
    }

    /// Leases dynamic addresses only from `blocks` (None: from the whole
    /// DHCP range). Leases already given stay until they end; a renewal
    /// outside the blocks is refused (NAK), so its client asks again.
    pub fn set_blocks(&mut self, blocks: Option<Vec<(Ipv4Addr, Ipv4Addr)>>) {
        self.blocks = blocks;
    }

    /// The blocks dynamic leases come from (None: the whole range).
    pub fn blocks(&self) -> Option<&[(Ipv4Addr, Ipv4Addr)]> {
        self.blocks.as_deref()
    }

    /// Whether a dynamic lease of `ip` may be given here: in the DHCP range
    /// and, on a cluster member, in one of this host's blocks.
    fn in_pool(&self, ip: Ipv4Addr) -> bool {
        self.net.dhcp_range.contains(ip)
            && self.blocks.as_ref().is_none_or(|b| b.iter().any(|(first, last)| (*first..=*last).contains(&ip)))
    }

    /// How many addresses of this host's blocks nobody holds (None on a
    /// single host, which leases from the whole range).
    pub fn free_in_blocks(&self, now: u64) -> Option<usize> {
        let nobody = Mac([0; 6]);
        let blocks = self.blocks.as_ref()?;
        Some(
            blocks
                .iter()
                .flat_map(|(first, last)| u32::from(*first)..=u32::from(*last))
                .map(Ipv4Addr::from)
                .filter(|ip| self.in_pool(*ip) && self.free_for(*ip, nobody, now))
                .count(),
        )
    }

    /// The network this table serves.
    pub fn network(&self) -> &Network {
        &self.net
    }

    /// Serves `net`, an edited version of the network (`net edit`): a new
    /// DHCP range applies to the next offer; leases outside it last until
    /// their clients renew, which the range then refuses (NAK).
    pub fn set_network(&mut self, net: Network) {
        if net.dhcp_range != self.net.dhcp_range {
            self.cursor = u32::from(net.dhcp_range.first);
        }
        self.net = net;
    }

    /// Loads a lease read back from the store.
    pub fn restore_lease(&mut self, lease: Lease) {
        if lease.kind == LeaseKind::Static && self.statics.get(&lease.mac) != Some(&lease.ip) {
            // The port it belonged to is gone or has another address now.
            return;
        }
        self.drop_lease(lease.mac);
        if let Some(prev) = self.lease_owner.insert(lease.ip, lease.mac) {
            if prev != lease.mac {
                self.leases.remove(&prev);
            }
        }
        self.leases.insert(lease.mac, lease);
    }

    /// Who holds `ip` at time `now`, if anyone.
    fn holder(&self, ip: Ipv4Addr, now: u64) -> Option<String> {
        if ip == self.net.gateway {
            return Some("the gateway".into());
        }
        if let Some(m) = self.static_owner.get(&ip) {
            return Some(format!("the fixed address of MAC {m} (a port or a static host)"));
        }
        if let Some(m) = self.lease_owner.get(&ip) {
            if let Some(l) = self.leases.get(m).filter(|l| l.expiry > now) {
                return Some(format!("the lease of {m} until unix time {}", l.expiry));
            }
        }
        if let Some(m) = self.offered.get(&ip).filter(|m| self.offers.get(m).is_some_and(|o| o.until > now)) {
            return Some(format!("an offer to {m}"));
        }
        if self.declined.get(&ip).is_some_and(|&t| t > now) {
            return Some("a client that declined it (address conflict)".into());
        }
        if self.elsewhere.get(&ip).is_some_and(|&t| t > now) {
            return Some("a port created through another host".into());
        }
        None
    }

    fn free_for(&self, ip: Ipv4Addr, mac: Mac, now: u64) -> bool {
        if !self.net.is_assignable(ip) {
            return false;
        }
        if self.static_owner.get(&ip).is_some_and(|m| *m != mac) {
            return false;
        }
        if self.lease_owner.get(&ip).is_some_and(|m| *m != mac && self.leases.get(m).is_some_and(|l| l.expiry > now)) {
            return false;
        }
        if self.offered.get(&ip).is_some_and(|m| *m != mac && self.offers.get(m).is_some_and(|o| o.until > now)) {
            return false;
        }
        self.declined.get(&ip).is_none_or(|&t| t <= now) && self.elsewhere.get(&ip).is_none_or(|&t| t <= now)
    }

    /// Reserves a fixed IP for a new port with `mac`: `requested` if it is
    /// valid and free, else the lowest free address, preferring addresses
    /// outside the dynamic range. A dynamic lease the same MAC held is dropped.
    pub fn reserve_fixed(&mut self, mac: Mac, requested: Option<Ipv4Addr>, now: u64) -> Result<Ipv4Addr, IpamError> {
        let ip = match requested {
            Some(ip) => {
                if !self.net.is_assignable(ip) {
                    return Err(IpamError::OutsideSubnet { ip, subnet: self.net.subnet.to_string() });
                }
                if !self.free_for(ip, mac, now) {
                    let holder = self.holder(ip, now).unwrap_or_else(|| "another client".into());
                    return Err(IpamError::InUse { ip, holder });
                }
                ip
            }
            None => self.lowest_free_fixed(mac, now)?,
        };
        self.drop_lease(mac);
        self.add_static(mac, ip);
        Ok(ip)
    }

    /// Like [`AddressBook::reserve_fixed`] without a requested address,
    /// but the search starts at the `start`-th candidate (wrapping) instead
    /// of the lowest: hosts that keep choosing the same lowest address at
    /// the same moment (and losing it to each other's claims) spread out.
    pub fn reserve_fixed_from(&mut self, mac: Mac, start: usize, now: u64) -> Result<Ipv4Addr, IpamError> {
        let first = u32::from(self.net.subnet.network()) + 1;
        let last = u32::from(self.net.subnet.broadcast()) - 1;
        let range = self.net.dhcp_range;
        let outside = (first..=last).map(Ipv4Addr::from).filter(|ip| !range.contains(*ip));
        let inside = (u32::from(range.first)..=u32::from(range.last)).map(Ipv4Addr::from);
        let all: Vec<Ipv4Addr> = outside.chain(inside).collect();
        let n = all.len().max(1);
        let ip = (0..all.len())
            .map(|i| all[(start + i) % n])
            .find(|ip| self.free_for(*ip, mac, now))
            .ok_or_else(|| IpamError::Exhausted(self.net.subnet.to_string()))?;
        self.drop_lease(mac);
        self.add_static(mac, ip);
        Ok(ip)
    }

    fn lowest_free_fixed(&self, mac: Mac, now: u64) -> Result<Ipv4Addr, IpamError> {
        let first = u32::from(self.net.subnet.network()) + 1;
        let last = u32::from(self.net.subnet.broadcast()) - 1;
        let range = self.net.dhcp_range;
        let outside = (first..=last).map(Ipv4Addr::from).filter(|ip| !range.contains(*ip));
        let inside = (u32::from(range.first)..=u32::from(range.last)).map(Ipv4Addr::from);
        outside
            .chain(inside)
            .find(|ip| self.free_for(*ip, mac, now))
            .ok_or_else(|| IpamError::Exhausted(self.net.subnet.to_string()))
    }

    /// Keeps `ip` from being given out here until `until`: another host's
    /// port holds it (its claim said so) and this table does not know that
    /// port yet.
    pub fn hold_elsewhere(&mut self, ip: Ipv4Addr, until: u64) {
        self.elsewhere.insert(ip, until);
    }

    /// Records a port's fixed IP (at start-up, from the store).
    pub fn add_static(&mut self, mac: Mac, ip: Ipv4Addr) {
        self.statics.insert(mac, ip);
        self.static_owner.insert(ip, mac);
    }

    fn withdraw_offer(&mut self, mac: Mac) {
        if let Some(o) = self.offers.remove(&mac) {
            if self.offered.get(&o.ip) == Some(&mac) {
                self.offered.remove(&o.ip);
            }
        }
    }

    /// Records the VM name of the port with `mac` (sent as its host name).
    pub fn set_name(&mut self, mac: Mac, name: &str) {
        self.names.insert(mac, name.to_string());
    }

    /// The VM name of the port with `mac`.
    pub fn name_of(&self, mac: Mac) -> Option<&str> {
        self.names.get(&mac).map(String::as_str)
    }

    /// The address of guest `host` (case-insensitive): a port's VM name
    /// first, then the host name a client with a live lease sent.
    pub fn resolve(&self, host: &str, now: u64) -> Option<Ipv4Addr> {
        let by_port =
            self.names.iter().find(|(_, n)| n.eq_ignore_ascii_case(host)).and_then(|(m, _)| self.statics.get(m));
        by_port.copied().or_else(|| {
            self.leases
                .values()
                .filter(|l| l.expiry > now && l.hostname.as_deref().is_some_and(|h| h.eq_ignore_ascii_case(host)))
                .max_by_key(|l| l.expiry)
                .map(|l| l.ip)
        })
    }

    /// The guest name for `ip`, if a port or a live lease holds it.
    pub fn reverse(&self, ip: Ipv4Addr, now: u64) -> Option<String> {
        if let Some(name) = self.static_owner.get(&ip).and_then(|m| self.names.get(m)) {
            return Some(name.clone());
        }
        let mac = self.lease_owner.get(&ip)?;
        self.leases.get(mac).filter(|l| l.expiry > now).and_then(|l| l.hostname.clone())
    }

    /// A deleted port gives its fixed IP back, but not before the lease
    /// its guest may still hold could have expired (nova's disassociate
    /// timeout): a live lease stays, as a dynamic lease of the old MAC until
    /// its expiry, and keeps the address out of everyone else's reach.
    /// Returns that held lease, for the store; None when the address is free
    /// at once (no lease was ever handed out, or it has expired).
    pub fn release_static(&mut self, mac: Mac, now: u64) -> Option<Lease> {
        let held = self
            .leases
            .get(&mac)
            .filter(|l| l.expiry > now && self.statics.get(&mac) == Some(&l.ip))
            .map(|l| Lease { kind: LeaseKind::Dynamic, ..l.clone() });
        self.remove_static(mac);
        if let Some(l) = &held {
            self.restore_lease(l.clone());
        }
        held
    }

    /// Forgets a port's fixed IP: the address is free again.
    pub fn remove_static(&mut self, mac: Mac) {
        if let Some(ip) = self.statics.remove(&mac) {
            self.static_owner.remove(&ip);
        }
        self.names.remove(&mac);
        self.drop_lease(mac);
    }

    fn drop_lease(&mut self, mac: Mac) -> Option<Lease> {
        let l = self.leases.remove(&mac)?;
        if self.lease_owner.get(&l.ip) == Some(&mac) {
            self.lease_owner.remove(&l.ip);
        }
        self.withdraw_offer(mac);
        Some(l)
    }

    /// The fixed IP of the port with `mac`, if it is a port.
    pub fn static_ip(&self, mac: Mac) -> Option<Ipv4Addr> {
        self.statics.get(&mac).copied()
    }

    /// The MACs with a fixed IP (ports and static hosts).
    pub fn static_macs(&self) -> Vec<Mac> {
        self.statics.keys().copied().collect()
    }

    /// Chooses the address to OFFER to `mac`: its fixed IP; else its current
    /// lease; else `requested` if free in the pool; else the next free pool
    /// address. The choice is held for [`OFFER_HOLD_SECS`].
    pub fn offer(&mut self, mac: Mac, requested: Option<Ipv4Addr>, now: u64) -> Result<Ipv4Addr, IpamError> {
        if let Some(ip) = self.static_ip(mac) {
            return Ok(ip);
        }
        let pool_ok = |s: &Self, ip: Ipv4Addr| s.in_pool(ip) && s.free_for(ip, mac, now);
        let candidate = [
            self.offers.get(&mac).filter(|o| o.until > now).map(|o| o.ip),
            self.leases.get(&mac).map(|l| l.ip),
            requested,
        ]
        .into_iter()
        .flatten()
        .find(|ip| pool_ok(self, *ip));
        let ip = match candidate {
            Some(ip) => ip,
            None => self.next_free_in_pool(mac, now)?,
        };
        self.withdraw_offer(mac);
        self.offers.insert(mac, Offer { ip, until: now + OFFER_HOLD_SECS });
        self.offered.insert(ip, mac);
        Ok(ip)
    }

    fn next_free_in_pool(&mut self, mac: Mac, now: u64) -> Result<Ipv4Addr, IpamError> {
        if let Some(blocks) = &self.blocks {
            // A host's blocks are a few dozen addresses: a scan is cheap.
            let found = blocks
                .iter()
                .flat_map(|(first, last)| u32::from(*first)..=u32::from(*last))
                .map(Ipv4Addr::from)
                .find(|ip| self.in_pool(*ip) && self.free_for(*ip, mac, now));
            return found.ok_or_else(|| {
                IpamError::Exhausted(format!(
                    "this host's DHCP blocks of {}-{} (more are claimed as they fill)",
                    self.net.dhcp_range.first, self.net.dhcp_range.last
                ))
            });
        }
        let first = u32::from(self.net.dhcp_range.first);
        let last = u32::from(self.net.dhcp_range.last);
        let size = last - first + 1;
        let start = self.cursor.clamp(first, last);
        for i in 0..size {
            let n = first + (start - first + i) % size;
            let ip = Ipv4Addr::from(n);
            if self.free_for(ip, mac, now) {
                self.cursor = if n == last { first } else { n + 1 };
                return Ok(ip);
            }
        }
        Err(IpamError::Exhausted(format!("{}-{}", self.net.dhcp_range.first, self.net.dhcp_range.last)))
    }

    /// Commits `ip` to `mac` (a REQUEST): returns the lease to persist before
    /// the ACK is sent, or an error that becomes a NAK.
    pub fn ack(
        &mut self,
        mac: Mac,
        ip: Ipv4Addr,
        now: u64,
        lease_secs: u32,
        hostname: Option<String>,
        client_id: Option<String>,
    ) -> Result<Lease, IpamError> {
        let kind = match self.static_ip(mac) {
            Some(fixed) if fixed == ip => LeaseKind::Static,
            Some(fixed) => {
                return Err(IpamError::InUse { ip, holder: format!("nobody; this client's fixed address is {fixed}") });
            }
            None => {
                if !self.net.dhcp_range.contains(ip) {
                    return Err(IpamError::OutsideSubnet { ip, subnet: self.net.subnet.to_string() });
                }
                if !self.in_pool(ip) {
                    return Err(IpamError::InUse { ip, holder: "another host's DHCP block".into() });
                }
                if !self.free_for(ip, mac, now) {
                    let holder = self.holder(ip, now).unwrap_or_else(|| "another client".into());
                    return Err(IpamError::InUse { ip, holder });
                }
                LeaseKind::Dynamic
            }
        };
        self.withdraw_offer(mac);
        let hostname = match kind {
            // A port's name is its VM's; what it sends is kept as sent.
            LeaseKind::Static => hostname,
            LeaseKind::Dynamic => self.claimable_name(mac, hostname, now),
        };
        let lease = Lease {
            net: self.net.key().into_owned(),
            expiry: now + u64::from(lease_secs),
            mac,
            ip,
            hostname,
            client_id,
            kind,
        };
        {
            if let Some(old) = self.leases.get(&mac) {
                if old.ip != ip && self.lease_owner.get(&old.ip) == Some(&mac) {
                    self.lease_owner.remove(&old.ip);
                }
            }
            if let Some(prev_mac) = self.lease_owner.insert(ip, mac) {
                if prev_mac != mac {
                    // An expired lease of another client gave way.
                    self.leases.remove(&prev_mac);
                }
            }
            self.leases.insert(mac, lease.clone());
        }
        Ok(lease)
    }

    /// A RELEASE: the client gives `ip` back. Returns the dropped lease.
    pub fn release(&mut self, mac: Mac, ip: Ipv4Addr) -> Option<Lease> {
        self.withdraw_offer(mac);
        match self.leases.get(&mac) {
            Some(l) if l.ip == ip => self.drop_lease(mac),
            _ => None,
        }
    }

    /// A DECLINE: the client found `ip` in use on the wire. The address is
    /// kept out of the pool for a while. Returns the dropped lease.
    pub fn decline(&mut self, mac: Mac, ip: Ipv4Addr, now: u64) -> Option<Lease> {
        self.withdraw_offer(mac);
        if self.static_ip(mac) == Some(ip) {
            // A port's fixed IP is never taken from it; the conflict is the
            // other machine's, and the operator sees it in the log.
            return None;
        }
        self.declined.insert(ip, now + DECLINE_HOLD_SECS);
        match self.leases.get(&mac) {
            Some(l) if l.ip == ip => self.drop_lease(mac),
            _ => None,
        }
    }

    /// The lease `mac` holds (or held, if expired and not yet forgotten).
    pub fn lease_of(&self, mac: Mac) -> Option<&Lease> {
        self.leases.get(&mac)
    }

    /// Puts the table back as it was before `change` when `change` could
    /// not be written to the store: memory never runs ahead of the store.
    pub fn revert(&mut self, change: &LeaseChange, previous: Option<Lease>) {
        if let LeaseChange::Upsert(l) = change {
            if self.leases.get(&l.mac) == Some(l) {
                self.drop_lease(l.mac);
            }
        }
        if let Some(p) = previous {
            self.restore_lease(p);
        }
    }

    /// For metrics and status: leases not expired at `now`, and addresses
    /// of the dynamic range that no lease, port or decline holds.
    pub fn usage(&self, now: u64) -> (u64, u64) {
        let range = &self.net.dhcp_range;
        let size = u64::from(u32::from(range.last)).saturating_sub(u64::from(u32::from(range.first))) + 1;
        let active: Vec<Ipv4Addr> = self.leases.values().filter(|l| l.expiry > now).map(|l| l.ip).collect();
        let held: std::collections::HashSet<Ipv4Addr> = active
            .iter()
            .copied()
            .chain(self.static_owner.keys().copied())
            .chain(self.declined.iter().filter(|(_, t)| **t > now).map(|(ip, _)| *ip))
            .filter(|ip| range.contains(*ip))
            .collect();
        (active.len() as u64, size.saturating_sub(held.len() as u64))
    }

    /// Every lease a client holds or held (expired ones stay until reused).
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// Housekeeping: drops expired offers and declines, and dynamic leases
    /// that expired more than [`EXPIRED_LEASE_KEEP_SECS`] ago (kept that
    /// long so a client coming back soon gets its old address). Returns the
    /// dropped leases, for the store.
    pub fn expire(&mut self, now: u64) -> Vec<Lease> {
        self.offers.retain(|_, o| o.until > now);
        let offers = &self.offers;
        self.offered.retain(|ip, m| offers.get(m).is_some_and(|o| o.ip == *ip));
        self.declined.retain(|_, t| *t > now);
        self.elsewhere.retain(|_, t| *t > now);
        let stale: Vec<Mac> = self
            .leases
            .values()
            .filter(|l| l.kind == LeaseKind::Dynamic && l.expiry + EXPIRED_LEASE_KEEP_SECS <= now)
            .map(|l| l.mac)
            .collect();
        stale.into_iter().filter_map(|m| self.drop_lease(m)).collect()
    }

    /// The host name a client may keep: not one a port's VM has, and not
    /// one another client's live lease holds (first come keeps it), so a
    /// guest cannot take another guest's DNS name.
    fn claimable_name(&self, mac: Mac, name: Option<String>, now: u64) -> Option<String> {
        let name = name?;
        let port_has = self.names.iter().any(|(m, n)| *m != mac && n.eq_ignore_ascii_case(&name));
        let lease_has = self.leases.values().any(|l| {
            l.mac != mac && l.expiry > now && l.hostname.as_deref().is_some_and(|h| h.eq_ignore_ascii_case(&name))
        });
        (!port_has && !lease_has).then_some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NetworkSpec;
    use std::collections::HashSet;

    fn net(subnet: &str, range: Option<&str>) -> Network {
        NetworkSpec {
            name: "n".into(),
            mode: "nat".into(),
            subnet: subnet.into(),
            dhcp_range: range.map(Into::into),
            ..Default::default()
        }
        .validate(|| "b".into())
        .unwrap()
    }

    fn mac(i: u32) -> Mac {
        let b = i.to_be_bytes();
        Mac([0x52, 0x54, 0x00, b[1], b[2], b[3]])
    }

    #[test]
    fn a_released_fixed_ip_waits_for_its_lease_to_end() {
        let mut book = AddressBook::new(net("10.0.0.0/24", None));
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        book.reserve_fixed(mac(1), Some(ip), 100).unwrap();
        let lease = |m: Mac, expiry: u64| Lease {
            net: "n".into(),
            expiry,
            mac: m,
            ip,
            hostname: None,
            client_id: None,
            kind: LeaseKind::Static,
        };
        book.restore_lease(lease(mac(1), 3700));
        let held = book.release_static(mac(1), 200).expect("a live lease is held");
        assert_eq!((held.kind, held.expiry, held.mac), (LeaseKind::Dynamic, 3700, mac(1)));
        let err = book.reserve_fixed(mac(2), Some(ip), 3699).unwrap_err().to_string();
        assert!(err.contains("until unix time 3700"), "{err}");
        assert_ne!(book.reserve_fixed(mac(2), None, 3699).unwrap(), ip, "not handed out by the pool either");
        assert_eq!(book.reserve_fixed(mac(3), Some(ip), 3700).unwrap(), ip, "free once the lease could have ended");
        // A port whose guest never leased (or whose lease ended) frees its
        // address at once.
        let other = Ipv4Addr::new(10, 0, 0, 6);
        book.reserve_fixed(mac(4), Some(other), 100).unwrap();
        assert_eq!(book.release_static(mac(4), 200), None);
        assert_eq!(book.reserve_fixed(mac(5), Some(other), 200).unwrap(), other);
    }

    #[test]
    fn fixed_ips_prefer_outside_the_pool_and_never_repeat() {
        let mut book = AddressBook::new(net("10.0.0.0/28", Some("10.0.0.8-10.0.0.14")));
        let ips: Vec<_> = (0..13).map(|i| book.reserve_fixed(mac(i), None, 0).unwrap()).collect();
        assert_eq!(ips[0], Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(ips[5], Ipv4Addr::new(10, 0, 0, 7));
        assert_eq!(ips[6], Ipv4Addr::new(10, 0, 0, 8));
        assert_eq!(ips.iter().collect::<HashSet<_>>().len(), ips.len());
        assert!(matches!(book.reserve_fixed(mac(99), None, 0), Err(IpamError::Exhausted(_))));
        book.remove_static(mac(3));
        assert_eq!(book.reserve_fixed(mac(99), None, 0).unwrap(), ips[3]);
    }

    #[test]
    fn requested_fixed_ip_must_be_valid_and_free() {
        let mut book = AddressBook::new(net("10.0.0.0/24", None));
        let gw = Ipv4Addr::new(10, 0, 0, 1);
        assert!(matches!(book.reserve_fixed(mac(1), Some(gw), 0), Err(IpamError::OutsideSubnet { .. })));
        assert!(book.reserve_fixed(mac(1), Some(Ipv4Addr::new(10, 0, 1, 5)), 0).is_err());
        assert!(book.reserve_fixed(mac(1), Some(Ipv4Addr::new(10, 0, 0, 255)), 0).is_err());
        book.reserve_fixed(mac(1), Some(Ipv4Addr::new(10, 0, 0, 9)), 0).unwrap();
        let e = book.reserve_fixed(mac(2), Some(Ipv4Addr::new(10, 0, 0, 9)), 0).unwrap_err();
        assert!(matches!(e, IpamError::InUse { .. }), "{e}");
    }

    #[test]
    fn a_port_cannot_take_a_live_dynamic_lease() {
        let mut book = AddressBook::new(net("10.0.0.0/24", None));
        let ip = book.offer(mac(1), None, 0).unwrap();
        book.ack(mac(1), ip, 0, 3600, None, None).unwrap();
        assert!(book.reserve_fixed(mac(2), Some(ip), 10).is_err());
        // Once expired, it can.
        assert_eq!(book.reserve_fixed(mac(2), Some(ip), 4000).unwrap(), ip);
    }

    #[test]
    fn ports_get_their_fixed_ip_by_dhcp() {
        let mut book = AddressBook::new(net("10.0.0.0/24", None));
        let fixed = book.reserve_fixed(mac(7), Some(Ipv4Addr::new(10, 0, 0, 77)), 0).unwrap();
        assert_eq!(book.offer(mac(7), Some(Ipv4Addr::new(10, 0, 0, 5)), 0).unwrap(), fixed);
        let l = book.ack(mac(7), fixed, 0, 60, Some("vm".into()), None).unwrap();
        assert_eq!(l.kind, LeaseKind::Static);
        assert!(book.ack(mac(7), Ipv4Addr::new(10, 0, 0, 5), 0, 60, None, None).is_err());
    }

    #[test]
    fn dynamic_clients_never_share_an_address() {
        let mut book = AddressBook::new(net("10.0.0.0/24", Some("10.0.0.10-10.0.0.20")));
        book.reserve_fixed(mac(1000), Some(Ipv4Addr::new(10, 0, 0, 12)), 0).unwrap();
        let mut seen = HashSet::new();
        for i in 0..10 {
            let ip = book.offer(mac(i), None, 0).unwrap();
            book.ack(mac(i), ip, 0, 3600, None, None).unwrap();
            assert!(seen.insert(ip), "{ip} handed out twice");
            assert_ne!(ip, Ipv4Addr::new(10, 0, 0, 12));
        }
        assert!(book.offer(mac(50), None, 0).is_err(), "pool of 11 minus 1 static is full");
        // Another client asking for a held address is refused.
        let taken = *seen.iter().next().unwrap();
        assert!(book.ack(mac(51), taken, 0, 3600, None, None).is_err());
        // A released address comes back.
        let ip0 = book.leases().find(|l| l.mac == mac(0)).unwrap().ip;
        book.release(mac(0), ip0);
        assert!(book.offer(mac(50), None, 0).is_ok());
    }

    #[test]
    fn offers_hold_their_address_and_clients_keep_theirs() {
        let mut book = AddressBook::new(net("10.0.0.0/24", None));
        let a = book.offer(mac(1), None, 0).unwrap();
        let b = book.offer(mac(2), Some(a), 0).unwrap();
        assert_ne!(a, b, "an outstanding offer is not given away");
        book.ack(mac(1), a, 0, 100, None, None).unwrap();
        assert_eq!(book.offer(mac(1), None, 50).unwrap(), a, "a client gets its own lease back");
    }

    #[test]
    fn restored_leases_block_reuse_after_restart() {
        let n = net("10.0.0.0/24", Some("10.0.0.10-10.0.0.11"));
        let mut book = AddressBook::new(n.clone());
        let ip = book.offer(mac(1), None, 0).unwrap();
        let lease = book.ack(mac(1), ip, 0, 3600, None, None).unwrap();
        let mut after = AddressBook::new(n);
        after.restore_lease(lease);
        let other = after.offer(mac(2), Some(ip), 10).unwrap();
        assert_ne!(other, ip);
        assert!(after.offer(mac(3), None, 10).is_err());
        assert_eq!(after.offer(mac(1), None, 10).unwrap(), ip);
    }

    #[test]
    fn declined_addresses_rest() {
        let mut book = AddressBook::new(net("10.0.0.0/24", Some("10.0.0.10-10.0.0.11")));
        let ip = book.offer(mac(1), None, 0).unwrap();
        book.ack(mac(1), ip, 0, 3600, None, None).unwrap();
        let dropped = book.decline(mac(1), ip, 0);
        assert_eq!(dropped.map(|l| l.ip), Some(ip), "DECLINE drops the client's lease");
        assert!(book.leases().all(|l| l.mac != mac(1)), "the declining client keeps a lease");
        // For DECLINE_HOLD_SECS nobody gets it: not the client that declined
        // it (it has no lease now), nor one asking for it, nor a new port.
        let other = book.offer(mac(1), Some(ip), 1).unwrap();
        assert_ne!(other, ip, "the declining client is offered the declined address again");
        assert!(
            matches!(book.offer(mac(2), Some(ip), 1), Err(IpamError::Exhausted(_))),
            "pool: one declined, one offered"
        );
        assert!(matches!(book.ack(mac(2), ip, 1, 3600, None, None), Err(IpamError::InUse { .. })));
        assert!(matches!(book.reserve_fixed(mac(3), Some(ip), 1), Err(IpamError::InUse { .. })));
        let last = DECLINE_HOLD_SECS - 1;
        assert_ne!(book.offer(mac(2), Some(ip), last).unwrap(), ip, "declined address given out before the hold ended");
        // Then it is back in the pool, and housekeeping forgets the hold.
        assert_eq!(book.offer(mac(4), Some(ip), DECLINE_HOLD_SECS).unwrap(), ip, "declined address never came back");
        book.expire(DECLINE_HOLD_SECS);
        assert!(book.declined.is_empty(), "expire keeps an ended hold: {:?}", book.declined);
    }

    #[test]
    fn a_full_dynamic_pool_leaves_ports_their_addresses() {
        // The default range: ports' half and guests' half of a /24.
        let mut b = AddressBook::new(net("10.0.0.0/24", None));
        let pool = u32::from(b.network().dhcp_range.last) - u32::from(b.network().dhcp_range.first) + 1;
        for i in 0..pool {
            let ip = b.offer(mac(1000 + i), None, 0).unwrap();
            b.ack(mac(1000 + i), ip, 0, 3600, None, None).unwrap();
        }
        assert!(b.offer(mac(5000), None, 0).is_err(), "the dynamic pool is exhausted");
        for i in 0..100 {
            b.reserve_fixed(mac(i), None, 0).expect("ports still get fixed IPs");
        }
    }

    #[test]
    fn expired_dynamic_leases_are_forgotten_after_a_while() {
        let mut b = AddressBook::new(net("10.0.0.0/24", None));
        let ip = b.offer(mac(1), None, 0).unwrap();
        b.ack(mac(1), ip, 0, 100, None, None).unwrap();
        let port_ip = b.reserve_fixed(mac(2), None, 0).unwrap();
        b.ack(mac(2), port_ip, 0, 100, None, None).unwrap();
        assert!(b.expire(100 + EXPIRED_LEASE_KEEP_SECS - 1).is_empty(), "kept a while for a returning client");
        let gone = b.expire(100 + EXPIRED_LEASE_KEEP_SECS);
        assert_eq!(gone.iter().map(|l| l.mac).collect::<Vec<_>>(), vec![mac(1)]);
        assert!(b.lease_of(mac(1)).is_none());
        assert!(b.lease_of(mac(2)).is_some(), "a port's lease stays with its port");
    }

    #[test]
    fn guests_cannot_take_each_others_names() {
        let mut b = AddressBook::new(net("10.0.0.0/24", None));
        b.reserve_fixed(mac(9), None, 0).unwrap();
        b.set_name(mac(9), "web");
        let lease = |b: &mut AddressBook, m: u32, name: &str| {
            let ip = b.offer(mac(m), None, 0).unwrap();
            b.ack(mac(m), ip, 0, 3600, Some(name.into()), None).unwrap().hostname
        };
        assert_eq!(lease(&mut b, 1, "laptop"), Some("laptop".into()));
        assert_eq!(lease(&mut b, 2, "LAPTOP"), None, "a live lease keeps its name");
        assert_eq!(lease(&mut b, 3, "web"), None, "a port's VM name is not for guests");
        assert_eq!(b.resolve("laptop", 1), b.lease_of(mac(1)).map(|l| l.ip));
        assert_eq!(lease(&mut b, 1, "laptop"), Some("laptop".into()), "a client renews its own name");
    }

    #[test]
    fn a_lease_that_was_not_stored_is_taken_back() {
        let mut b = AddressBook::new(net("10.0.0.0/24", None));
        let ip = b.offer(mac(1), None, 0).unwrap();
        let first = b.ack(mac(1), ip, 0, 3600, None, None).unwrap();
        let renewed = b.ack(mac(1), ip, 100, 3600, None, None).unwrap();
        b.revert(&LeaseChange::Upsert(renewed), Some(first.clone()));
        assert_eq!(b.lease_of(mac(1)), Some(&first));
        let ip2 = b.offer(mac(2), None, 0).unwrap();
        let new = b.ack(mac(2), ip2, 0, 3600, None, None).unwrap();
        b.revert(&LeaseChange::Upsert(new), None);
        assert!(b.lease_of(mac(2)).is_none());
        assert!(b.offer(mac(3), Some(ip2), 0).unwrap() == ip2, "the address is free again");
    }
}
