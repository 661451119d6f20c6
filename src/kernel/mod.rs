//! The kernel seam: the vocabulary shared by the planner, which produces
//! it, and the drivers, which perform it.
//!
//! - [`link`]: what the kernel has ([`Observed`]) and the typed operations
//!   that change links, addresses, routes, bridge VLANs and FDB entries
//!   ([`Op`]);
//! - [`firewall`]: nftables as typed values ([`Table`], sets, maps, chains,
//!   rules) and element-level changes;
//! - [`Kernel`]: the trait every driver implements, one acknowledged
//!   operation at a time, so an error names the operation and rollback
//!   undoes exactly what was done;
//! - [`Plan`] and [`Plan::apply`]: a planner's output and how it is applied
//!   all or nothing.
//!
//! Nothing here knows a text format or a socket: the drivers live in
//! [`crate::dataplane`].

pub mod firewall;
pub mod link;

use std::collections::{BTreeMap, BTreeSet};

pub use firewall::{Element, ElementChange, FirewallChange, Set, Table, TableId, Tables};
pub use link::{BridgeVlan, LinkKind, Observed, ObservedLink, Op, Route, RouteProto};

/// A kernel operation failed or the kernel could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// The kernel refused an operation.
    #[error("{op}: {message}")]
    Op {
        /// The operation, as [`Op`]'s `Display` names it.
        op: String,
        /// The kernel's errno, when it gave one.
        errno: Option<i32>,
        /// What the kernel said.
        message: String,
    },
    /// nftables refused a change to lanyard's table.
    #[error("nftables refused {what}: {message}")]
    Firewall {
        /// The change, in a few words.
        what: String,
        /// nftables' message.
        message: String,
    },
    /// The kernel's state could not be read.
    #[error("cannot read {what}: {message}")]
    Observe {
        /// What was being read.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// A facility lanyard needs is missing on this host.
    #[error("{0}")]
    Unavailable(String),
}

impl KernelError {
    /// An operation failed with an OS error.
    pub fn op(op: &Op, err: &std::io::Error) -> KernelError {
        KernelError::Op { op: op.to_string(), errno: err.raw_os_error(), message: err.to_string() }
    }
}

/// What other tools' firewalls do that affects lanyard's networks
/// (docs/coexistence.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Coexistence {
    /// Other tables' forward chains whose policy is drop, as
    /// `family table chain`.
    pub forward_drops: Vec<String>,
    /// Docker's DOCKER-USER chain exists.
    pub docker_user: bool,
    /// lanyard's rules are at the top of DOCKER-USER.
    pub docker_user_rules: bool,
}

impl Coexistence {
    /// The drop-policy chains that cut lanyard's forwarded traffic: all of
    /// them, but Docker's FORWARD when DOCKER-USER lets lanyard's through.
    pub fn blocking(&self) -> Vec<&str> {
        self.forward_drops
            .iter()
            .map(String::as_str)
            .filter(|c| !(self.docker_user_rules && *c == "ip filter FORWARD"))
            .collect()
    }
}

/// Access to the kernel of the network namespace lanyard manages.
pub trait Kernel: Send + Sync {
    /// Links (with their IPv4 addresses), IPv4 routes of the main table and
    /// ip_forward.
    fn observe(&self) -> Result<Observed, KernelError>;
    /// Just the named links; absent ones are left out.
    fn observe_links(&self, names: &[&str]) -> Result<BTreeMap<String, ObservedLink>, KernelError>;
    /// Performs one operation completely or not at all.
    fn apply_op(&self, op: &Op) -> Result<(), KernelError>;
    /// The fingerprint comment on a table, None when the table is absent.
    fn firewall_fingerprint(&self, table: &TableId) -> Result<Option<String>, KernelError>;
    /// The elements the kernel has in a set or map of a table.
    fn firewall_elements(&self, table: &TableId, set: &Set) -> Result<BTreeSet<Element>, KernelError>;
    /// Applies one firewall change in one nftables transaction.
    fn apply_firewall(&self, change: &FirewallChange) -> Result<(), KernelError>;
    /// The ruleset's generation, which every committed nftables
    /// transaction (anyone's) moves on by one; None where the driver
    /// cannot tell (then every firewall event is checked in full).
    fn firewall_generation(&self) -> Result<Option<u32>, KernelError> {
        Ok(None)
    }
    /// Reads what other tables do at the forward hook (read only).
    fn coexistence(&self, mark: u32) -> Result<Coexistence, KernelError>;
    /// When Docker's DOCKER-USER chain exists, puts lanyard's rules at its
    /// top (one transaction) unless they are there. Returns whether it
    /// changed anything.
    fn ensure_docker_user(&self, mark: u32) -> Result<bool, KernelError>;
    /// Removes the tracked connections to and from `ip` (original or reply
    /// destination): their NAT was decided for where `ip` led before.
    /// Returns how many went.
    fn forget_flows(&self, ip: std::net::Ipv4Addr) -> Result<usize, KernelError>;
    /// Announces `ip` on `link` with a gratuitous ARP, so neighbours send
    /// to this host at once.
    fn announce(&self, link: &str, ip: std::net::Ipv4Addr) -> Result<(), KernelError>;
}

/// Something changed in the kernel, as a monitor reports it. Monitors
/// report what they see, lanyard's own changes included; the engine decides
/// what concerns it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelEvent {
    /// A link was created, changed (flags, master, name, MTU, address) or,
    /// with `gone`, deleted.
    Link {
        /// Interface name.
        name: String,
        /// Deleted.
        gone: bool,
    },
    /// An IPv4 address was added or, with `gone`, removed.
    Address {
        /// Interface name.
        link: String,
        /// Address with prefix.
        addr: ipnet::Ipv4Net,
        /// Removed.
        gone: bool,
    },
    /// A route of the main table changed.
    Route,
    /// Something in an nftables table changed (the table itself, a chain,
    /// a rule, a set or its elements), or the ruleset was flushed.
    Firewall {
        /// The table.
        table: TableId,
    },
    /// The monitor lost events (its socket buffer overflowed): everything
    /// must be checked.
    Overflow,
}

/// A source of [`KernelEvent`]s (netlink multicast groups).
pub trait Monitor: Send {
    /// Waits up to `timeout` for events; an empty list on timeout.
    fn recv_timeout(&mut self, timeout: std::time::Duration) -> Result<Vec<KernelEvent>, KernelError>;
}

/// What to do to bring the kernel to the desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Link operations, in order; deletions last.
    pub ops: Vec<Op>,
    /// The firewall changes, at most one per table.
    pub firewall: Vec<FirewallChange>,
}

/// A plan failed and was rolled back as far as possible.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{cause}{}", rollback_note(.rollback_errors))]
pub struct ApplyError {
    /// What failed.
    pub cause: KernelError,
    /// Errors met while undoing (empty when the rollback was clean).
    pub rollback_errors: Vec<KernelError>,
}

fn rollback_note(errs: &[KernelError]) -> String {
    if errs.is_empty() {
        String::new()
    } else {
        let v: Vec<String> = errs.iter().map(ToString::to_string).collect();
        format!(" (rollback incomplete: {})", v.join("; "))
    }
}

/// The change that undoes `change`, given the table the kernel had before.
pub fn inverse(change: &FirewallChange, before: Option<&Table>) -> FirewallChange {
    match change {
        FirewallChange::None => FirewallChange::None,
        FirewallChange::Elements(v) => FirewallChange::Elements(v.iter().rev().map(ElementChange::inverse).collect()),
        FirewallChange::Replace(t) => match before {
            Some(b) => FirewallChange::Replace(Box::new(b.clone())),
            None => FirewallChange::Delete(t.id.clone()),
        },
        FirewallChange::Delete(_) => match before {
            Some(b) => FirewallChange::Replace(Box::new(b.clone())),
            None => FirewallChange::None,
        },
    }
}

impl Plan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.firewall.iter().all(|c| *c == FirewallChange::None)
    }

    /// Whether every operation can be undone exactly. Deleting a link
    /// cannot (a TAP re-created under the same name is not the device a VM
    /// had open).
    pub fn reversible(&self) -> bool {
        self.ops.iter().all(|o| o.undo().is_some())
    }

    /// Applies the firewall changes (one transaction each), then the link
    /// operations in order. If anything fails, what was done is undone in
    /// reverse and the tables are put back to `before` (collecting, not
    /// stopping at, rollback errors). The firewall goes first because its
    /// changes are always reversible, while a plan's last operations may be
    /// deletions that are not.
    pub fn apply(&self, kernel: &dyn Kernel, before: &Tables) -> Result<(), ApplyError> {
        let mut applied: Vec<&FirewallChange> = Vec::new();
        let undo_firewall = |applied: &[&FirewallChange]| -> Vec<KernelError> {
            applied
                .iter()
                .rev()
                .map(|c| inverse(c, c.table().and_then(|id| before.get(id))))
                .filter(|back| *back != FirewallChange::None)
                .filter_map(|back| kernel.apply_firewall(&back).err())
                .collect()
        };
        for change in self.firewall.iter().filter(|c| **c != FirewallChange::None) {
            crate::fault::point("kernel-firewall");
            if let Err(cause) = kernel.apply_firewall(change) {
                return Err(ApplyError { cause, rollback_errors: undo_firewall(&applied) });
            }
            applied.push(change);
        }
        for (done, op) in self.ops.iter().enumerate() {
            crate::fault::point("kernel-op");
            if let Err(cause) = kernel.apply_op(op) {
                let mut rollback_errors = undo_ops(kernel, &self.ops[..done]);
                rollback_errors.extend(undo_firewall(&applied));
                return Err(ApplyError { cause, rollback_errors });
            }
        }
        Ok(())
    }

    /// Undoes a plan that was applied completely (a later step of the
    /// mutation, such as the store write, failed). Returns the errors met.
    pub fn undo(&self, kernel: &dyn Kernel, before: &Tables) -> Vec<KernelError> {
        let mut errors = Vec::new();
        for change in self.firewall.iter().rev() {
            let back = inverse(change, change.table().and_then(|id| before.get(id)));
            if back != FirewallChange::None {
                if let Err(e) = kernel.apply_firewall(&back) {
                    errors.push(e);
                }
            }
        }
        errors.extend(undo_ops(kernel, &self.ops));
        errors
    }
}

/// Undoes `done` in reverse, one op at a time, so one failed undo does not
/// stop the rest.
fn undo_ops(kernel: &dyn Kernel, done: &[Op]) -> Vec<KernelError> {
    done.iter().rev().filter_map(Op::undo).filter_map(|op| kernel.apply_op(&op).err()).collect()
}
