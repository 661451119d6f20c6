//! A simulated kernel for unit tests: it keeps links, addresses, routes and
//! nftables tables in memory, refuses what the kernel would refuse (a name
//! that exists, a link that does not), logs every call as one line, and can
//! be told to fail a chosen call. Tests compare its [`FakeKernel::snapshot`]
//! before and after a failed mutation to prove that nothing was left behind.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use crate::kernel::firewall::TableId;
use crate::kernel::link::DEFAULT_PVID;
use crate::kernel::{
    BridgeVlan, Element, FirewallChange, Kernel, KernelError, LinkKind, Observed, ObservedLink, Op, Set, Table,
};

/// Everything the fake kernel holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeState {
    /// Links, addresses, routes, ip_forward.
    pub observed: Observed,
    /// nftables tables.
    pub tables: BTreeMap<TableId, Table>,
    /// FDB entries: (link, mac, dst).
    pub fdb: BTreeSet<(String, String, String)>,
}

/// The simulated kernel.
#[derive(Debug, Default)]
pub struct FakeKernel {
    state: Mutex<FakeState>,
    log: Mutex<Vec<String>>,
    fail: Mutex<Vec<String>>,
    /// The nftables generation: every firewall transaction and every
    /// tampering moves it on.
    generation: std::sync::atomic::AtomicU32,
    /// How many set listings were read (what a full firewall check costs).
    element_reads: std::sync::atomic::AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn refuse(op: &Op, errno: i32, message: &str) -> KernelError {
    KernelError::Op { op: op.to_string(), errno: Some(errno), message: message.into() }
}

impl FakeKernel {
    /// Makes the calls whose log line equals `line` fail (each time); a
    /// `*` in `line` matches any text.
    pub fn fail_on(&self, line: &str) {
        lock(&self.fail).push(line.to_string());
    }

    /// Stops injecting failures.
    pub fn heal(&self) {
        lock(&self.fail).clear();
    }

    /// The calls that succeeded so far, one line each.
    pub fn log(&self) -> Vec<String> {
        lock(&self.log).clone()
    }

    /// Forgets the log.
    pub fn clear_log(&self) {
        lock(&self.log).clear();
    }

    /// A copy of the whole kernel state.
    pub fn snapshot(&self) -> FakeState {
        lock(&self.state).clone()
    }

    /// Changes the state behind lanyard's back (a test playing the operator).
    pub fn tamper(&self, f: impl FnOnce(&mut FakeState)) {
        f(&mut lock(&self.state));
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many set listings lanyard has read so far.
    pub fn element_reads(&self) -> usize {
        self.element_reads.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn check(&self, line: &str) -> Result<(), String> {
        if lock(&self.fail).iter().any(|f| matches_pattern(f, line)) {
            return Err("injected failure".into());
        }
        Ok(())
    }

    fn record(&self, line: String) {
        lock(&self.log).push(line);
    }
}

/// Whether `line` matches `pattern`, where `*` matches any text.
fn matches_pattern(pattern: &str, line: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = line.strip_prefix(first) else { return false };
    let tail: Vec<&str> = parts.collect();
    for (i, part) in tail.iter().enumerate() {
        if i + 1 == tail.len() {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

fn new_link(name: &str, kind: LinkKind, mtu: Option<u32>, alias: &str) -> ObservedLink {
    ObservedLink { name: name.into(), kind, mtu: mtu.unwrap_or(1500), alias: Some(alias.into()), ..Default::default() }
}

fn perform(s: &mut FakeState, op: &Op) -> Result<(), KernelError> {
    let links = &mut s.observed.links;
    let exists = |links: &BTreeMap<String, ObservedLink>, n: &str| links.contains_key(n);
    let create = |links: &mut BTreeMap<String, ObservedLink>, l: ObservedLink| {
        if links.contains_key(&l.name) {
            return Err(refuse(op, 17, "File exists"));
        }
        links.insert(l.name.clone(), l);
        Ok(())
    };
    let missing = || refuse(op, 19, "No such device");
    match op {
        Op::CreateBridge { name, mac, mtu, alias } => {
            let mut l = new_link(name, LinkKind::Bridge, *mtu, alias);
            l.mac = *mac;
            l.bridge = Some(Default::default());
            // As the kernel: the bridge itself starts in the default VLAN.
            l.vlans = vec![BridgeVlan::access(DEFAULT_PVID)];
            create(links, l)?;
        }
        Op::CreateTap(t) => {
            let mut l = new_link(&t.name, LinkKind::Tun, t.mtu, &t.alias);
            l.mac = Some(t.mac);
            create(links, l)?;
        }
        Op::CreateVeth(v) => create(links, new_link(&v.name, LinkKind::Veth, v.mtu, &v.alias))?,
        Op::CreateVlan { name, parent, alias, .. } => {
            if !exists(links, parent) {
                return Err(missing());
            }
            create(links, new_link(name, LinkKind::Vlan, None, alias))?;
        }
        Op::CreateVxlan(v) => create(links, new_link(&v.name, LinkKind::Vxlan, v.mtu, &v.alias))?,
        Op::DeleteLinks { names } => {
            for name in names {
                if links.remove(name).is_some() {
                    s.observed.fdb.remove(name);
                    s.observed.neighbours.remove(name);
                    for l in links.values_mut().filter(|l| l.master.as_deref() == Some(name.as_str())) {
                        l.master = None;
                        l.vlans.clear();
                    }
                    s.observed.routes.retain(|r| r.dev.as_deref() != Some(name.as_str()));
                }
            }
        }
        Op::DeleteLink { name } => {
            links.remove(name).ok_or_else(missing)?;
            s.observed.fdb.remove(name);
            s.observed.neighbours.remove(name);
            for l in links.values_mut().filter(|l| l.master.as_deref() == Some(name.as_str())) {
                l.master = None;
                l.vlans.clear();
            }
            s.observed.routes.retain(|r| r.dev.as_deref() != Some(name.as_str()));
        }
        Op::AddAddress { link, addr } => {
            let l = links.get_mut(link).ok_or_else(missing)?;
            if l.addrs.contains(addr) {
                return Err(refuse(op, 17, "File exists"));
            }
            l.addrs.push(*addr);
        }
        Op::DelAddress { link, addr } => {
            let l = links.get_mut(link).ok_or_else(missing)?;
            let before = l.addrs.len();
            l.addrs.retain(|a| a != addr);
            if l.addrs.len() == before {
                return Err(refuse(op, 99, "Cannot assign requested address"));
            }
        }
        Op::SetMaster { link, master, .. } => {
            if let Some(m) = master {
                if !exists(links, m) {
                    return Err(missing());
                }
            }
            let l = links.get_mut(link).ok_or_else(missing)?;
            if l.master != *master {
                // A port joins its bridge in the default VLAN and leaves
                // with its VLAN table.
                l.vlans = if master.is_some() { vec![BridgeVlan::access(DEFAULT_PVID)] } else { Vec::new() };
            }
            l.master = master.clone();
        }
        Op::SetUp { link, up } => links.get_mut(link).ok_or_else(missing)?.up = *up,
        Op::SetMtu { link, mtu, .. } => links.get_mut(link).ok_or_else(missing)?.mtu = *mtu,
        Op::SetMac { link, mac, .. } => links.get_mut(link).ok_or_else(missing)?.mac = Some(*mac),
        Op::ReplaceRoute { link, route } => {
            if !exists(links, link) {
                return Err(missing());
            }
            let mut r = route.clone();
            r.dev = Some(link.clone());
            s.observed.routes.retain(|x| !(x.dst == r.dst && x.metric == r.metric));
            s.observed.routes.push(r);
        }
        Op::DelRoute { link, route } => {
            let before = s.observed.routes.len();
            s.observed.routes.retain(|x| !(x.dst == route.dst && x.dev.as_deref() == Some(link.as_str())));
            if s.observed.routes.len() == before {
                return Err(refuse(op, 3, "No such process"));
            }
        }
        Op::SetVlanFiltering { bridge, on } => {
            let b = links.get_mut(bridge).ok_or_else(missing)?;
            b.bridge.get_or_insert_with(Default::default).vlan_filtering = *on;
        }
        Op::AddBridgeVlan { link, vid, pvid, untagged, self_ } => {
            let l = links.get_mut(link).ok_or_else(missing)?;
            if (*self_ && l.kind != LinkKind::Bridge) || (!*self_ && l.master.is_none()) {
                return Err(refuse(op, 95, "Operation not supported"));
            }
            // One PVID per port: a new one takes the flag from the old.
            if *pvid {
                l.vlans.iter_mut().for_each(|v| v.pvid = false);
            }
            l.vlans.retain(|v| v.vid != *vid);
            l.vlans.push(BridgeVlan { vid: *vid, pvid: *pvid, untagged: *untagged });
            l.vlans.sort();
        }
        Op::DelBridgeVlan { link, entry, .. } => {
            let l = links.get_mut(link).ok_or_else(missing)?;
            let before = l.vlans.len();
            l.vlans.retain(|v| v.vid != entry.vid);
            if l.vlans.len() == before {
                return Err(refuse(op, 2, "No such file or directory"));
            }
        }
        Op::AddFdb { link, mac, dst } => {
            if !exists(links, link) {
                return Err(missing());
            }
            s.fdb.insert((link.clone(), mac.to_string(), format!("{dst:?}")));
            if let Some(dst) = dst {
                s.observed.fdb.entry(link.clone()).or_default().insert((*mac, *dst));
            }
        }
        Op::DelFdb { link, mac, dst } => {
            if !s.fdb.remove(&(link.clone(), mac.to_string(), format!("{dst:?}"))) {
                return Err(refuse(op, 2, "No such file or directory"));
            }
            if let (Some(dst), Some(entries)) = (dst, s.observed.fdb.get_mut(link)) {
                entries.remove(&(*mac, *dst));
            }
        }
        Op::AddNeighbour { link, ip, mac } => {
            if !exists(links, link) {
                return Err(missing());
            }
            let entries = s.observed.neighbours.entry(link.clone()).or_default();
            entries.retain(|(i, _)| i != ip);
            entries.insert((*ip, *mac));
        }
        Op::DelNeighbour { link, ip, .. } => {
            let entries = s.observed.neighbours.get_mut(link);
            let before = entries.as_ref().map_or(0, |e| e.len());
            if let Some(e) = entries {
                e.retain(|(i, _)| i != ip);
                if e.len() == before {
                    return Err(refuse(op, 2, "No such file or directory"));
                }
            } else {
                return Err(refuse(op, 2, "No such file or directory"));
            }
        }
        Op::SetForwarding { on } => s.observed.ip_forward = *on,
    }
    Ok(())
}

/// The log line of a firewall change.
pub fn describe_firewall(change: &FirewallChange) -> String {
    match change {
        FirewallChange::None => "firewall none".into(),
        FirewallChange::Elements(v) => {
            let items: Vec<String> = v.iter().map(ToString::to_string).collect();
            format!("firewall {}", items.join("; "))
        }
        FirewallChange::Replace(t) => format!("firewall replace {}", t.id),
        FirewallChange::Delete(id) => format!("firewall delete {id}"),
    }
}

fn firewall_error(change: &FirewallChange, message: &str) -> KernelError {
    KernelError::Firewall { what: describe_firewall(change), message: message.into() }
}

impl Kernel for FakeKernel {
    fn observe(&self) -> Result<Observed, KernelError> {
        Ok(lock(&self.state).observed.clone())
    }

    fn observe_links(&self, names: &[&str]) -> Result<BTreeMap<String, ObservedLink>, KernelError> {
        let s = lock(&self.state);
        Ok(names.iter().filter_map(|n| s.observed.links.get(*n)).map(|l| (l.name.clone(), l.clone())).collect())
    }

    fn apply_op(&self, op: &Op) -> Result<(), KernelError> {
        let line = op.to_string();
        self.check(&line).map_err(|m| refuse(op, 5, &m))?;
        perform(&mut lock(&self.state), op)?;
        self.record(line);
        Ok(())
    }

    fn firewall_fingerprint(&self, table: &TableId) -> Result<Option<String>, KernelError> {
        Ok(lock(&self.state).tables.get(table).map(Table::fingerprint))
    }

    fn firewall_elements(&self, table: &TableId, set: &Set) -> Result<BTreeSet<Element>, KernelError> {
        self.element_reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let s = lock(&self.state);
        Ok(s.tables.get(table).and_then(|t| t.set(&set.name)).map(|x| x.elements.clone()).unwrap_or_default())
    }

    fn coexistence(&self, _mark: u32) -> Result<crate::kernel::Coexistence, KernelError> {
        Ok(crate::kernel::Coexistence::default())
    }

    fn ensure_docker_user(&self, _mark: u32) -> Result<bool, KernelError> {
        Ok(false)
    }

    fn forget_flows(&self, ip: std::net::Ipv4Addr) -> Result<usize, KernelError> {
        self.record(format!("forget flows of {ip}"));
        Ok(0)
    }

    fn announce(&self, link: &str, ip: std::net::Ipv4Addr) -> Result<(), KernelError> {
        self.record(format!("announce {ip} on {link}"));
        Ok(())
    }

    fn apply_firewall(&self, change: &FirewallChange) -> Result<(), KernelError> {
        let line = describe_firewall(change);
        self.check(&line).map_err(|m| firewall_error(change, &m))?;
        let mut s = lock(&self.state);
        match change {
            FirewallChange::None => {}
            FirewallChange::Replace(t) => {
                s.tables.insert(t.id.clone(), (**t).clone());
            }
            // As the nft driver: deleting a table that is not there succeeds.
            FirewallChange::Delete(id) => {
                s.tables.remove(id);
            }
            FirewallChange::Elements(v) => {
                // One transaction: check everything, then change.
                let Some(id) = v.first().map(|c| c.table.clone()) else { return Ok(()) };
                let Some(mut t) = s.tables.get(&id).cloned() else {
                    return Err(firewall_error(change, "No such file or directory"));
                };
                for c in v {
                    let set = t
                        .sets
                        .iter_mut()
                        .find(|x| x.name == c.set)
                        .ok_or_else(|| firewall_error(change, "No such file or directory"))?;
                    if c.add {
                        set.elements.insert(c.element.clone());
                    } else if !set.elements.remove(&c.element) {
                        return Err(firewall_error(change, "No such file or directory"));
                    }
                }
                s.tables.insert(t.id.clone(), t);
            }
        }
        drop(s);
        if change.is_transaction() {
            self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.record(line);
        Ok(())
    }

    fn firewall_generation(&self) -> Result<Option<u32>, KernelError> {
        Ok(Some(self.generation.load(std::sync::atomic::Ordering::SeqCst)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Plan;

    fn bridge(name: &str) -> Op {
        Op::CreateBridge { name: name.into(), mac: None, mtu: None, alias: "lanyard:net:x".into() }
    }

    #[test]
    fn failure_rolls_back_completed_ops_in_reverse() {
        let k = FakeKernel::default();
        k.fail_on("set lybr0 up");
        let before = k.snapshot();
        let plan = Plan {
            ops: vec![
                bridge("lybr0"),
                Op::AddAddress { link: "lybr0".into(), addr: "10.0.0.1/24".parse().unwrap() },
                Op::SetUp { link: "lybr0".into(), up: true },
            ],
            firewall: Vec::new(),
        };
        let err = plan.apply(&k, &Default::default()).unwrap_err();
        assert!(err.rollback_errors.is_empty());
        assert_eq!(
            k.log(),
            vec![
                "create bridge lybr0",
                "add address 10.0.0.1/24 to lybr0",
                "remove address 10.0.0.1/24 from lybr0",
                "delete link lybr0",
            ]
        );
        assert_eq!(k.snapshot(), before);
    }

    #[test]
    fn firewall_failure_undoes_links() {
        let k = FakeKernel::default();
        let table =
            crate::planner::firewall::table(&[crate::model::test_network("a", "10.0.0.0/24", "b")], &[], &[], &[])
                .unwrap();
        k.fail_on("firewall replace inet lanyard");
        let plan = Plan { ops: vec![bridge("b")], firewall: vec![FirewallChange::Replace(Box::new(table.clone()))] };
        assert!(plan.apply(&k, &Default::default()).is_err());
        assert!(k.log().is_empty(), "the firewall goes first: {:?}", k.log());
        assert_eq!(k.snapshot(), FakeState::default());
        // A link op failing after the firewall applied takes the table back.
        k.heal();
        k.fail_on("create bridge b");
        assert!(plan.apply(&k, &Default::default()).is_err());
        assert_eq!(k.log(), vec!["firewall replace inet lanyard", "firewall delete inet lanyard"]);
        assert_eq!(k.snapshot(), FakeState::default());
    }

    #[test]
    fn refuses_what_the_kernel_refuses() {
        let k = FakeKernel::default();
        k.apply_op(&bridge("b")).unwrap();
        let e = k.apply_op(&bridge("b")).unwrap_err();
        assert!(matches!(e, KernelError::Op { errno: Some(17), .. }), "{e}");
        assert!(k.apply_op(&Op::DeleteLink { name: "nope".into() }).is_err());
    }
}
