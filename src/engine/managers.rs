//! nova's VLAN manager in the engine: its configuration, checked against
//! the host and kept in the store (`lanyard manager vlan set|show`).

use super::{Engine, EngineError};
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
}
