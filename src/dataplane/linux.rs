//! The Linux driver: [`NetlinkDriver`] for links, addresses, routes, bridge
//! VLANs and FDB entries, [`NftDriver`] for lanyard's nftables table, both
//! in-process, in the network namespace the daemon runs in; and the
//! monitors that report what changes there.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::netlink::{LinkMonitor, NetlinkDriver};
use super::nft::{NftDriver, NftMonitor};
use crate::kernel::{
    Coexistence, Element, FirewallChange, Kernel, KernelError, KernelEvent, Monitor, Observed, ObservedLink, Op, Set,
    TableId,
};

/// The kernel of the daemon's own network namespace.
#[derive(Debug)]
pub struct LinuxKernel {
    links: NetlinkDriver,
    firewall: NftDriver,
    announcer: super::arp::Announcer,
}

impl LinuxKernel {
    /// Opens both drivers in the calling thread's network namespace.
    pub fn new() -> Result<LinuxKernel, KernelError> {
        Ok(LinuxKernel {
            links: NetlinkDriver::new()?,
            firewall: NftDriver::new()?,
            announcer: super::arp::Announcer::default(),
        })
    }

    /// The monitors of this namespace: links/addresses/routes and nftables.
    pub fn monitors() -> Result<Vec<Box<dyn Monitor>>, KernelError> {
        Ok(vec![Box::new(LinkMonitor::open()?), Box::new(NftMonitor::open()?)])
    }
}

impl Kernel for LinuxKernel {
    fn observe(&self) -> Result<Observed, KernelError> {
        self.links.observe()
    }

    fn observe_links(&self, names: &[&str]) -> Result<BTreeMap<String, ObservedLink>, KernelError> {
        self.links.observe_links(names)
    }

    fn apply_op(&self, op: &Op) -> Result<(), KernelError> {
        self.links.apply_op(op)
    }

    fn firewall_fingerprint(&self, table: &TableId) -> Result<Option<String>, KernelError> {
        self.firewall.fingerprint(table)
    }

    fn firewall_elements(&self, table: &TableId, set: &Set) -> Result<BTreeSet<Element>, KernelError> {
        self.firewall.elements(table, set)
    }

    fn apply_firewall(&self, change: &FirewallChange) -> Result<(), KernelError> {
        self.firewall.apply(change)
    }

    fn firewall_generation(&self) -> Result<Option<u32>, KernelError> {
        self.firewall.generation().map(Some)
    }

    fn coexistence(&self, mark: u32) -> Result<Coexistence, KernelError> {
        self.firewall.coexistence(mark)
    }

    fn ensure_docker_user(&self, mark: u32) -> Result<bool, KernelError> {
        self.firewall.ensure_docker_user(mark)
    }

    fn forget_flows(&self, ip: std::net::Ipv4Addr) -> Result<usize, KernelError> {
        super::conntrack::forget_flows(ip)
    }

    fn announce(&self, link: &str, ip: std::net::Ipv4Addr) -> Result<(), KernelError> {
        self.announcer.announce(link, ip)
    }
}

impl Monitor for LinkMonitor {
    fn recv_timeout(&mut self, timeout: Duration) -> Result<Vec<KernelEvent>, KernelError> {
        LinkMonitor::recv_timeout(self, timeout)
    }
}

impl Monitor for NftMonitor {
    fn recv_timeout(&mut self, timeout: Duration) -> Result<Vec<KernelEvent>, KernelError> {
        NftMonitor::recv_timeout(self, timeout)
    }
}
