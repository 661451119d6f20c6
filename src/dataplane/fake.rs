//! A recording dataplane for unit tests: every call is logged as one line,
//! and a chosen line can be made to fail.

use std::sync::Mutex;

use super::{Dataplane, DataplaneError, OpsResult};
use std::collections::BTreeMap;

use crate::planner::{Observed, ObservedLink, Op};

/// Records operations instead of performing them.
#[derive(Debug, Default)]
pub struct FakeDataplane {
    log: Mutex<Vec<String>>,
    fail: Mutex<Option<String>>,
    /// What `observe` returns.
    pub observed: Mutex<Observed>,
}

impl FakeDataplane {
    /// Makes the call whose log line equals `line` fail (once logged).
    pub fn fail_on(&self, line: &str) {
        *self.fail.lock().unwrap() = Some(line.to_string());
    }

    /// The calls made so far (failed ones excluded).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn record(&self, line: String) -> Result<(), DataplaneError> {
        if self.fail.lock().unwrap().as_deref() == Some(line.as_str()) {
            return Err(DataplaneError::Op { op: line, message: "injected failure".into() });
        }
        self.log.lock().unwrap().push(line);
        Ok(())
    }
}

/// A one-line description of an op, used by the fake's log.
pub fn describe(op: &Op) -> String {
    match op {
        Op::CreateBridge { name, .. } => format!("CreateBridge {name}"),
        Op::CreateTap { name, .. } => format!("CreateTap {name}"),
        Op::CreateVeth { name, peer_netns, peer_name, .. } => format!("CreateVeth {name} {peer_netns}/{peer_name}"),
        Op::AddAddress { link, addr } => format!("AddAddress {link} {addr}"),
        Op::DelAddress { link, addr } => format!("DelAddress {link} {addr}"),
        Op::SetMaster { link, master } => format!("SetMaster {link} {master}"),
        Op::NoMaster { link } => format!("NoMaster {link}"),
        Op::ReplaceRoute { link, route } => format!("ReplaceRoute {link} {:?} via {:?}", route.dst, route.gateway),
        Op::SetMtu { link, mtu } => format!("SetMtu {link} {mtu}"),
        Op::SetUp { link } => format!("SetUp {link}"),
        Op::DeleteLink { name } => format!("DeleteLink {name}"),
        Op::PeerUp { netns, name } => format!("PeerUp {netns}/{name}"),
        Op::EnableForwarding => "EnableForwarding".into(),
    }
}

impl Dataplane for FakeDataplane {
    fn observe(&self) -> Result<Observed, DataplaneError> {
        Ok(self.observed.lock().unwrap().clone())
    }

    fn observe_links(&self, names: &[&str]) -> Result<BTreeMap<String, ObservedLink>, DataplaneError> {
        let o = self.observed.lock().unwrap();
        Ok(o.links.iter().filter(|(k, _)| names.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn firewall_fingerprint(&self) -> Result<Option<String>, DataplaneError> {
        Ok(self.observed.lock().unwrap().firewall_fingerprint.clone())
    }

    fn run(&self, ops: &[Op]) -> OpsResult {
        for (i, op) in ops.iter().enumerate() {
            if let Err(e) = self.record(describe(op)) {
                return (i, Some(e));
            }
        }
        (ops.len(), None)
    }

    fn apply_firewall(&self, script: &str) -> Result<(), DataplaneError> {
        self.record(format!("firewall {script}"))
    }
}
