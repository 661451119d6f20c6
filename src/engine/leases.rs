//! Lease mutations: an operator forgets a guest's dynamic lease (`lease
//! delete`), so that its address is free again at once, as after a
//! DHCPRELEASE the guest never sent.

use super::{lock, Engine, EngineError};
use crate::model::{Lease, LeaseKind, Mac, ModelError};
use crate::store::LeaseChange;

impl Engine {
    /// Deletes the lease on network `net` (by key) that `which` names: its
    /// IP address or its client's MAC. A port's fixed address is the
    /// port's for its life: refused, with the port to delete instead.
    pub fn delete_lease(&mut self, net: &str, which: &str) -> Result<Lease, EngineError> {
        let shown = self.network(net)?.name;
        let ip = which.parse::<std::net::Ipv4Addr>().ok();
        let mac = if ip.is_none() {
            Some(which.parse::<Mac>().map_err(|_| {
                EngineError::Invalid(ModelError::Invalid {
                    what: "lease",
                    value: which.to_string(),
                    why: "name it by its IP address or its client's MAC (see `lanyard lease list`)".into(),
                })
            })?)
        } else {
            None
        };
        let book = self
            .books
            .get(net)
            .cloned()
            .ok_or_else(|| EngineError::Internal(format!("network {net:?} has no address book")))?;
        let lease = lock(&book)
            .leases()
            .find(|l| Some(l.ip) == ip || Some(l.mac) == mac)
            .cloned()
            .ok_or_else(|| EngineError::NotFound(format!("no lease of {which} on network {shown:?}")))?;
        if lease.kind == LeaseKind::Static {
            let port = self.ports.iter().find(|p| p.net == net && p.mac == lease.mac);
            return Err(EngineError::Conflict(match port {
                Some(p) => {
                    format!("{} is the fixed address of port {} (vm {}); delete the port instead", lease.ip, p.id, p.vm)
                }
                None => format!("{} is a port's fixed address; delete the port instead", lease.ip),
            }));
        }
        // The store first: memory never runs ahead of it.
        self.store.write_leases(&[LeaseChange::Remove { net: net.to_string(), ip: lease.ip }])?;
        lock(&book).release(lease.mac, lease.ip);
        tracing::info!(net, ip = %lease.ip, mac = %lease.mac, "lease deleted");
        Ok(lease)
    }
}
