//! Grants between projects (`lanyard project allow P --to Q [--proto tcp
//! --port 22]`, `project deny` to take one back): set elements of the
//! `inet` table, one per pair of the two projects' networks, never a
//! rule. A grant opens one direction; the answers flow back.

use super::{Engine, EngineError};
use crate::kernel::{FirewallChange, Plan};
use crate::model::grants::{Grant, GrantSpec};
use crate::planner;
use crate::store::{DocumentChange, GRANTS};

impl Engine {
    /// The grants project `from` gives (what its guests may reach), as
    /// `Q all`, `Q tcp/22`.
    pub(super) fn allows_of(&self, from: &str) -> Vec<String> {
        self.grants.iter().filter(|g| g.from == from).map(|g| format!("{} {}", g.to, g.what())).collect()
    }

    /// Lets `from`'s guests start connections to `spec.to`'s (all, one
    /// protocol, or one port). Granting what is granted changes nothing.
    pub fn allow_project(&mut self, from: &str, spec: GrantSpec) -> Result<super::projects::ProjectView, EngineError> {
        let grant = spec.validate(from)?;
        self.check_project(from)?;
        self.check_project(&grant.to)?;
        if !self.grants.contains(&grant) {
            let mut grants = self.grants.clone();
            grants.push(grant.clone());
            grants.sort();
            let write = DocumentChange::put(GRANTS, grant.key(), &grant);
            self.commit_grants(grants, write, DocumentChange::delete(GRANTS, grant.key()))?;
            tracing::info!(from, to = grant.to, what = grant.what(), "grant added");
        }
        self.project(from)
    }

    /// Takes back exactly the grant `spec` names.
    pub fn deny_project(&mut self, from: &str, spec: GrantSpec) -> Result<super::projects::ProjectView, EngineError> {
        let grant = spec.validate(from)?;
        self.check_project(from)?;
        if !self.grants.contains(&grant) {
            return Err(EngineError::NotFound(format!(
                "project {from:?} has no grant to {:?} for {} (see `lanyard project show {from}`)",
                grant.to,
                grant.what()
            )));
        }
        let grants: Vec<Grant> = self.grants.iter().filter(|g| **g != grant).cloned().collect();
        let undo = DocumentChange::put(GRANTS, grant.key(), &grant);
        self.commit_grants(grants, DocumentChange::delete(GRANTS, grant.key()), undo)?;
        tracing::info!(from, to = grant.to, what = grant.what(), "grant removed");
        self.project(from)
    }

    /// Commits a new list of grants: the set elements that change, the
    /// record, then memory.
    fn commit_grants(
        &mut self,
        grants: Vec<Grant>,
        write: DocumentChange,
        undo: DocumentChange,
    ) -> Result<(), EngineError> {
        let policy = planner::PlanContext { grants: &grants, ..self.plan_context() };
        let wanted = planner::firewall::tables(&self.networks, &self.local(&self.ports), policy);
        let firewall = FirewallChange::all_between(&self.firewall, &wanted);
        self.commit(
            &Plan { ops: Vec::new(), firewall },
            |t| *t = wanted,
            |s| s.write_documents(&[write]),
            |s| s.write_documents(&[undo]),
        )?;
        self.grants = grants;
        Ok(())
    }

    /// The record changes that remove every grant from or to `project`
    /// (which owns no networks any more, so no set element changes).
    pub(super) fn grants_of_deleted_project(&self, project: &str) -> Vec<DocumentChange> {
        self.grants
            .iter()
            .filter(|g| g.from == project || g.to == project)
            .map(|g| DocumentChange::delete(GRANTS, g.key()))
            .collect()
    }
}
