//! nova's VLAN manager in the engine: its configuration, checked against
//! the host and kept in the store (`lanyard manager vlan set|show`).

use super::{Engine, EngineError};
use crate::model::{Manager, ModelError, NetworkSpec, PortSpec, DEFAULT_PROJECT};
use crate::vlan_manager::{VlanManager, VlanManagerSpec, SETTING_KEY};

impl Engine {
    /// Checks and stores the VLAN manager's configuration. Networks it
    /// made keep their VLANs and subnets; new ones follow the new ranges.
    pub fn set_vlan_manager(&mut self, spec: VlanManagerSpec) -> Result<VlanManager, EngineError> {
        let manager = spec.validate()?;
        let observed = self.observe()?;
        // The trunk must take one more VLAN of the range with that backend.
        let vid = manager.free_vlan(&self.networks).map_err(|e| EngineError::Conflict(e.to_string()))?;
        self.check_trunk(&manager.uplink, vid, manager.vlan_backend, &observed)?;
        let body = serde_json::to_string(&manager).map_err(|e| EngineError::Internal(e.to_string()))?;
        self.store.put_setting(SETTING_KEY, &body)?;
        tracing::info!(uplink = manager.uplink, supernet = %manager.supernet, "VLAN manager configured");
        Ok(manager)
    }

    /// The VLAN manager's configuration.
    pub fn vlan_manager(&self) -> Result<VlanManager, EngineError> {
        let Some(body) = self.store.setting(SETTING_KEY)? else {
            return Err(EngineError::NotFound(
                "the VLAN manager is not configured; configure it with `lanyard manager vlan set --uplink IF \
                 --vlans FIRST-LAST --supernet CIDR --prefix N`"
                    .into(),
            ));
        };
        serde_json::from_str(&body)
            .map_err(|e| EngineError::Internal(format!("the stored VLAN manager configuration is unreadable: {e}")))
    }

    /// Gives each spec that names no network (and is no trunk port) its
    /// project's VLAN-manager network, making it (the lowest free VLAN and
    /// subnet) when the project has none. Returns the keys of networks made
    /// now; on an error none is left.
    pub(super) fn resolve_project_networks(&mut self, specs: &mut [PortSpec]) -> Result<Vec<String>, EngineError> {
        let mut made = Vec::new();
        for spec in specs.iter_mut().filter(|s| s.net.is_empty() && s.trunk.is_none()) {
            let project = spec.project.clone().unwrap_or_else(|| DEFAULT_PROJECT.into());
            match self.project_vlan_network(&project) {
                Ok((name, key)) => {
                    spec.net = name;
                    made.extend(key);
                }
                Err(e) => {
                    self.forget_networks(&made);
                    return Err(e);
                }
            }
        }
        Ok(made)
    }

    /// Deletes networks made for ports that then failed.
    pub(super) fn forget_networks(&mut self, keys: &[String]) {
        for key in keys.iter().rev() {
            if let Err(e) = self.delete_network(key) {
                tracing::error!(net = key, "cannot delete the VLAN-manager network made for failed ports: {e}");
            }
        }
    }

    /// The project's VLAN-manager network's name, and its key when it was
    /// made now.
    fn project_vlan_network(&mut self, project: &str) -> Result<(String, Option<String>), EngineError> {
        if let Some(n) = self.networks.iter().find(|n| n.project == project && n.manager == Some(Manager::Vlan)) {
            return Ok((n.name.clone(), None));
        }
        self.check_project(project)?;
        let manager = match self.vlan_manager() {
            Ok(m) => m,
            Err(EngineError::NotFound(_)) => {
                return Err(EngineError::Invalid(ModelError::Invalid {
                    what: "net",
                    value: String::new(),
                    why: "name the port's network with --net, or configure the VLAN manager (`lanyard manager vlan \
                          set ...`) to give each project its own"
                        .into(),
                }))
            }
            Err(e) => return Err(e),
        };
        let conflict = |e: crate::vlan_manager::AllocError| EngineError::Conflict(e.to_string());
        let vid = manager.free_vlan(&self.networks).map_err(conflict)?;
        let routes = self.observe()?.routes;
        let subnet = manager.free_subnet(&self.networks, &routes).map_err(conflict)?;
        let spec = NetworkSpec {
            name: format!("vlan{vid}"),
            mode: manager.mode.to_string(),
            subnet: subnet.to_string(),
            uplink: Some(manager.uplink.clone()),
            vlan: Some(vid),
            vlan_backend: Some(manager.vlan_backend.to_string()),
            project: Some(project.into()),
            ..Default::default()
        };
        let net = self.create_network_as(spec, Some(Manager::Vlan))?;
        tracing::info!(project, vlan = vid, subnet = %subnet, "VLAN manager gave the project its network");
        Ok((net.name.clone(), Some(net.key().into_owned())))
    }
}
