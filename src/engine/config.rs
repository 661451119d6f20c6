//! A port's configuration for its guest, outside DHCP: the cloud-init
//! (NoCloud) seed that carries its fixed IP, gateway and DNS (read only).

use super::{Engine, EngineError};
use crate::cloudinit::{Format, Seed};

impl Engine {
    /// The configuration of port `id` in `format`.
    pub fn port_config(&self, id: &str, format: Format) -> Result<Seed, EngineError> {
        let port = self
            .ports
            .iter()
            .find(|p| p.id == id)
            .ok_or_else(|| EngineError::NotFound(format!("no port with id {id:?} (see `lanyard port list`)")))?;
        let net = self.networks.iter().find(|n| n.key() == port.net).ok_or_else(|| {
            EngineError::Internal(format!("port {id} is on network {:?}, which is unknown", port.net))
        })?;
        match format {
            Format::CloudInit => Ok(Seed::new(port, net)),
        }
    }
}
