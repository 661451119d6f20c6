//! Projects: create, list, show, delete, and the lookups that turn a
//! user's (project, name) into a network's key. A project is a record and
//! nothing in the kernel: its networks and ports carry it.

use super::{Engine, EngineError};
use crate::model::{network_key, ModelError, Network, Project, ProjectSpec, DEFAULT_PROJECT};

/// A project as the API shows it: the record and what it owns.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct ProjectView {
    /// The stored record.
    #[serde(flatten)]
    pub project: Project,
    /// How many networks it owns.
    pub networks: usize,
    /// How many ports it owns.
    pub ports: usize,
    /// "allow" or "deny": whether its guests may start connections beyond
    /// their own networks.
    pub egress: String,
    /// The projects its guests may reach, and what: `Q all`, `Q tcp/22`.
    pub allows: Vec<String>,
}

/// The setting that holds a project's egress.
fn egress_key(project: &str) -> String {
    format!("egress:{project}")
}

/// `n thing` or `n things`.
fn count(n: usize, thing: &str) -> String {
    format!("{n} {thing}{}", if n == 1 { "" } else { "s" })
}

/// The error for a project that does not exist (or that the caller may not
/// see: the answer is the same).
pub fn no_such_project(project: &str) -> EngineError {
    EngineError::NotFound(format!("no project named {project:?}; create it with `lanyard project create {project}`"))
}

impl Engine {
    /// The default project, made when the store has none (a new store, or
    /// one whose migration did not make it).
    pub(super) fn ensure_default_project(&mut self) -> Result<(), EngineError> {
        if !self.projects.iter().any(|p| p.name == DEFAULT_PROJECT) {
            let p = Project { name: DEFAULT_PROJECT.into(), description: String::new(), created: self.host.now() };
            self.store.put_project(&p)?;
            self.projects.push(p);
            self.projects.sort_by(|a, b| a.name.cmp(&b.name));
        }
        Ok(())
    }

    /// Fails with one line when `project` does not exist (or is no valid
    /// name at all).
    pub fn check_project(&self, project: &str) -> Result<(), EngineError> {
        crate::model::validate_project_name(project)?;
        if self.projects.iter().any(|p| p.name == project) {
            Ok(())
        } else {
            Err(no_such_project(project))
        }
    }

    /// The key of network `name` in `project`, which must both exist.
    pub fn network_key(&self, project: &str, name: &str) -> Result<String, EngineError> {
        self.check_project(project)?;
        let key = network_key(project, name);
        if self.networks.iter().any(|n| n.key() == key) {
            return Ok(key.into_owned());
        }
        Err(EngineError::NotFound(if project == DEFAULT_PROJECT {
            format!("no network named {name:?} (see `lanyard net list`)")
        } else {
            format!("no network named {name:?} in project {project:?} (see `lanyard net list --project {project}`)")
        }))
    }

    /// Networks, of one project or of all, by project and name (the same
    /// order before and after a restart).
    pub fn networks_of(&self, project: Option<&str>) -> Result<Vec<Network>, EngineError> {
        if let Some(p) = project {
            self.check_project(p)?;
        }
        let mut out: Vec<Network> =
            self.networks.iter().filter(|n| project.is_none_or(|p| n.project == p)).cloned().collect();
        out.sort_by(|a, b| (&a.project, &a.name).cmp(&(&b.project, &b.name)));
        Ok(out)
    }

    fn project_view(&self, project: &Project) -> ProjectView {
        ProjectView {
            project: project.clone(),
            networks: self.networks.iter().filter(|n| n.project == project.name).count(),
            ports: self.ports.iter().filter(|p| p.project == project.name).count(),
            egress: if self.egress_denied(&project.name) { "deny" } else { "allow" }.into(),
            allows: self.allows_of(&project.name),
        }
    }

    /// Whether `project` denies its guests egress (a setting; allowed
    /// unless set).
    pub(super) fn egress_denied(&self, project: &str) -> bool {
        matches!(self.store.setting(&egress_key(project)), Ok(Some(v)) if v == "deny")
    }

    /// `lanyard project set P --egress allow|deny`: every network of the
    /// project, and those it makes later, follow it. The firewall changes
    /// by set elements only.
    pub fn set_project_egress(&mut self, project: &str, egress: &str) -> Result<ProjectView, EngineError> {
        self.check_project(project)?;
        let deny = match egress {
            "deny" => true,
            "allow" => false,
            other => {
                return Err(EngineError::Invalid(ModelError::Invalid {
                    what: "egress",
                    value: other.into(),
                    why: "use allow or deny".into(),
                }))
            }
        };
        let changed: Vec<Network> = self
            .networks
            .iter()
            .filter(|n| n.project == project && n.egress_denied != deny)
            .map(|n| Network { egress_denied: deny, ..n.clone() })
            .collect();
        let networks: Vec<Network> = self
            .networks
            .iter()
            .map(|n| changed.iter().find(|c| c.key() == n.key()).cloned().unwrap_or_else(|| n.clone()))
            .collect();
        let before: Vec<Network> =
            self.networks.iter().filter(|n| changed.iter().any(|c| c.key() == n.key())).cloned().collect();
        let was = if self.egress_denied(project) { "deny" } else { "allow" };
        let key = egress_key(project);
        let observed = self.kernel.observe()?;
        let ports = self.ports.clone();
        self.commit_state(
            &networks,
            &ports,
            &observed,
            |s| {
                s.put_setting(&key, egress)?;
                changed.iter().try_for_each(|n| s.put_network(n))
            },
            |s| {
                s.put_setting(&key, was)?;
                before.iter().try_for_each(|n| s.put_network(n))
            },
        )?;
        self.networks = networks;
        tracing::info!(project, egress, "project egress set");
        self.project(project)
    }

    /// All projects, by name.
    pub fn projects(&self) -> Vec<ProjectView> {
        self.projects.iter().map(|p| self.project_view(p)).collect()
    }

    /// One project.
    pub fn project(&self, name: &str) -> Result<ProjectView, EngineError> {
        self.check_project(name)?;
        let p = self.projects.iter().find(|p| p.name == name).expect("checked");
        Ok(self.project_view(p))
    }

    /// Creates a project.
    pub fn create_project(&mut self, spec: ProjectSpec) -> Result<ProjectView, EngineError> {
        let project = spec.validate(self.host.now())?;
        if self.projects.iter().any(|p| p.name == project.name) {
            return Err(EngineError::Conflict(format!("a project named {:?} already exists", project.name)));
        }
        self.store.put_project(&project)?;
        let at = self.projects.partition_point(|p| p.name < project.name);
        self.projects.insert(at, project.clone());
        tracing::info!(project = project.name, "project created");
        Ok(self.project_view(&project))
    }

    /// Deletes a project that owns nothing; the default project stays.
    pub fn delete_project(&mut self, name: &str) -> Result<(), EngineError> {
        if name == DEFAULT_PROJECT {
            return Err(EngineError::Invalid(ModelError::Invalid {
                what: "project",
                value: name.into(),
                why: "is the default project, which always exists and cannot be deleted".into(),
            }));
        }
        let view = self.project(name)?;
        // The VLAN manager's network is the project's allocation: it goes
        // with the project (once its ports are gone), freeing its VLAN and
        // subnet.
        let managed: Vec<String> = self
            .networks
            .iter()
            .filter(|n| n.project == name && n.manager == Some(crate::model::Manager::Vlan))
            .map(|n| n.key().into_owned())
            .collect();
        let fips = self.floating_ips_held(name);
        if fips > 0 {
            return Err(EngineError::Conflict(format!(
                "project {name:?} holds {}; delete them first (`lanyard fip list --project {name}`)",
                count(fips, "floating IP")
            )));
        }
        if view.networks > managed.len() || view.ports > 0 {
            let mut nets: Vec<&str> =
                self.networks.iter().filter(|n| n.project == name).map(|n| n.name.as_str()).collect();
            nets.truncate(5);
            let more = if view.networks > nets.len() { ", ..." } else { "" };
            return Err(EngineError::Conflict(format!(
                "project {name:?} owns {} ({}{more}) and {}; delete them first \
                 (`lanyard net delete --project {name} NAME` deletes a network with its ports)",
                count(view.networks, "network"),
                nets.join(", "),
                count(view.ports, "port"),
            )));
        }
        for key in &managed {
            self.delete_network(key)?;
        }
        // Grants from and to it go with it.
        self.store.write_documents(&self.grants_of_deleted_project(name))?;
        self.store.delete_project(name)?;
        self.grants.retain(|g| g.from != name && g.to != name);
        self.projects.retain(|p| p.name != name);
        tracing::info!(project = name, "project deleted");
        Ok(())
    }
}
