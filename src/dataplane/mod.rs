//! Dataplane drivers: the only code that changes the kernel.
//!
//! [`Dataplane`] is the narrow seam: observe the namespace, run a list of
//! link operations, replace lanyard's nftables table. [`linux::LinuxDataplane`]
//! drives iproute2 and nft; [`fake::FakeDataplane`] records calls for unit
//! tests. [`apply`] runs a plan and rolls a half-applied one back.

pub mod fake;
pub mod linux;

use std::collections::BTreeMap;

use crate::planner::{Observed, ObservedLink, Op, Plan};

/// A kernel operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// A helper program could not be started.
    #[error("cannot run {program}: {source} (is it installed?)")]
    Spawn {
        /// Program name.
        program: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// A link operation was refused by the kernel.
    #[error("{op}: {message}")]
    Op {
        /// The operation, as a command line.
        op: String,
        /// What the kernel said.
        message: String,
    },
    /// nft refused lanyard's ruleset.
    #[error("nftables refused lanyard's ruleset: {0}")]
    Firewall(String),
    /// The kernel's answer could not be read.
    #[error("cannot read {what}: {message}")]
    Observe {
        /// What was being read.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// A sysctl could not be written.
    #[error("cannot set {key}: {source}")]
    Sysctl {
        /// Sysctl path.
        key: &'static str,
        /// Cause.
        source: std::io::Error,
    },
}

/// Runs `ops` in order; stops at the first failure. Returns how many ops
/// completed, and the error if one failed.
pub type OpsResult = (usize, Option<DataplaneError>);

/// Access to the kernel of one network namespace.
pub trait Dataplane: Send + Sync {
    /// Reads links, addresses, routes and ip_forward (not the firewall:
    /// see [`Dataplane::firewall_fingerprint`]).
    fn observe(&self) -> Result<Observed, DataplaneError>;
    /// The fingerprint on lanyard's nftables table, if the table exists.
    /// Read once at start-up; afterwards the engine knows what it applied.
    fn firewall_fingerprint(&self) -> Result<Option<String>, DataplaneError>;
    /// Reads just the named links (absent ones are left out).
    fn observe_links(&self, names: &[&str]) -> Result<BTreeMap<String, ObservedLink>, DataplaneError>;
    /// Runs operations in order, stopping at the first failure.
    fn run(&self, ops: &[Op]) -> OpsResult;
    /// Atomically replaces lanyard's nftables table with `script`.
    fn apply_firewall(&self, script: &str) -> Result<(), DataplaneError>;
}

/// A plan failed and was rolled back as far as possible.
#[derive(Debug, thiserror::Error)]
#[error("{cause}{}", rollback_note(.rollback_errors))]
pub struct ApplyError {
    /// What failed.
    pub cause: DataplaneError,
    /// Errors met while undoing (empty when the rollback was clean).
    pub rollback_errors: Vec<DataplaneError>,
}

fn rollback_note(errs: &[DataplaneError]) -> String {
    if errs.is_empty() {
        String::new()
    } else {
        let v: Vec<String> = errs.iter().map(ToString::to_string).collect();
        format!(" (rollback incomplete: {})", v.join("; "))
    }
}

/// Applies a plan: link operations, then the firewall. If anything fails,
/// the completed operations are undone in reverse order (collecting, not
/// stopping at, rollback errors) and the previous firewall is restored.
pub fn apply(dp: &dyn Dataplane, plan: &Plan, previous_firewall: Option<&str>) -> Result<(), ApplyError> {
    let (done, err) = dp.run(&plan.ops);
    let cause = match err {
        Some(e) => e,
        None if plan.firewall_current => return Ok(()),
        None => match dp.apply_firewall(&plan.firewall) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        },
    };
    let mut rollback_errors = Vec::new();
    let undo: Vec<Op> = plan.ops[..done].iter().rev().filter_map(Op::undo).collect();
    for op in &undo {
        // One by one, so one failed undo does not stop the rest.
        if let (_, Some(e)) = dp.run(std::slice::from_ref(op)) {
            rollback_errors.push(e);
        }
    }
    if let Some(prev) = previous_firewall {
        if let Err(e) = dp.apply_firewall(prev) {
            rollback_errors.push(e);
        }
    }
    Err(ApplyError { cause, rollback_errors })
}

#[cfg(test)]
mod tests {
    use super::fake::FakeDataplane;
    use super::*;

    #[test]
    fn failure_rolls_back_completed_ops_in_reverse() {
        let dp = FakeDataplane::default();
        dp.fail_on("SetUp lybr0");
        let plan = Plan {
            ops: vec![
                Op::CreateBridge { name: "lybr0".into(), mac: None, mtu: None, alias: "lanyard:net:x".into() },
                Op::AddAddress { link: "lybr0".into(), addr: "10.0.0.1/24".parse().unwrap() },
                Op::SetUp { link: "lybr0".into() },
            ],
            firewall: "new".into(),
            firewall_current: false,
        };
        let err = apply(&dp, &plan, Some("old")).unwrap_err();
        assert!(err.rollback_errors.is_empty());
        assert_eq!(
            dp.log(),
            vec![
                "CreateBridge lybr0",
                "AddAddress lybr0 10.0.0.1/24",
                "DelAddress lybr0 10.0.0.1/24",
                "DeleteLink lybr0",
                "firewall old",
            ]
        );
    }

    #[test]
    fn firewall_failure_undoes_links() {
        let dp = FakeDataplane::default();
        dp.fail_on("firewall new");
        let plan = Plan {
            ops: vec![Op::CreateBridge { name: "b".into(), mac: None, mtu: None, alias: "lanyard:net:x".into() }],
            firewall: "new".into(),
            firewall_current: false,
        };
        assert!(apply(&dp, &plan, None).is_err());
        assert_eq!(dp.log(), vec!["CreateBridge b", "DeleteLink b"]);
    }
}
