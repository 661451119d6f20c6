//! nova-network's VLAN manager: the administrator's configuration (one
//! trunk, a range of VLAN ids, a supernet cut into subnets of one size, the
//! mode of the networks) and the pure choice of a project's VLAN and subnet:
//! the lowest of each that no network holds and no host route covers.
//!
//! The allocation is not stored apart from the networks it made: a
//! project's VLAN network *is* its allocation, so a restart, a crash or a
//! second daemon reading the same store can never hand out a VLAN or a
//! subnet twice.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::kernel::Route;
use crate::model::{validate_ifname, Mode, ModelError, Network, VlanBackend, VLAN_MAX};

/// The store key of the configuration.
pub const SETTING_KEY: &str = "vlan_manager";

/// `lanyard manager vlan set` as the API receives it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"uplink": "eth0", "vlans": "100-199", "supernet": "10.100.0.0/16", "prefix": 24}))]
pub struct VlanManagerSpec {
    /// The trunk every project's VLAN rides on.
    pub uplink: String,
    /// VLAN ids to hand out, `FIRST-LAST` (e.g. `100-999`).
    pub vlans: String,
    /// The block projects' subnets are cut from (e.g. `10.0.0.0/16`).
    pub supernet: String,
    /// Prefix length of each project's subnet (e.g. 24).
    pub prefix: u8,
    /// Mode of the projects' networks (default nat).
    #[serde(default)]
    pub mode: Option<String>,
    /// VLAN backend (default subif).
    #[serde(default)]
    pub vlan_backend: Option<String>,
}

/// A validated VLAN-manager configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VlanManager {
    /// The trunk.
    pub uplink: String,
    /// First VLAN id handed out.
    pub first_vlan: u16,
    /// Last VLAN id handed out.
    pub last_vlan: u16,
    /// Where subnets come from.
    #[schema(value_type = String, example = "192.168.122.0/24")]
    pub supernet: Ipv4Net,
    /// Each subnet's prefix length.
    pub prefix: u8,
    /// Mode of the networks made.
    pub mode: Mode,
    /// How their VLANs are made.
    pub vlan_backend: VlanBackend,
}

/// Why no VLAN or subnet could be handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Every VLAN id of the range is taken on the trunk.
    #[error("no free VLAN in {first}-{last} on {uplink}: every one is a network's; widen --vlans or delete a project")]
    NoVlan {
        /// Range start.
        first: u16,
        /// Range end.
        last: u16,
        /// The trunk.
        uplink: String,
    },
    /// Every subnet of the supernet overlaps a network or a host route.
    #[error("no free /{prefix} in {supernet}: every one overlaps a network or a route of the host; widen --supernet")]
    NoSubnet {
        /// The supernet.
        supernet: Ipv4Net,
        /// Prefix length asked for.
        prefix: u8,
    },
}

fn invalid(what: &'static str, value: impl ToString, why: impl Into<String>) -> ModelError {
    ModelError::Invalid { what, value: value.to_string(), why: why.into() }
}

impl VlanManagerSpec {
    /// Checks the configuration on its own (the uplink's existence is the
    /// engine's to check).
    pub fn validate(&self) -> Result<VlanManager, ModelError> {
        validate_ifname("uplink", &self.uplink)?;
        let range = || invalid("vlans", &self.vlans, format!("write FIRST-LAST with 1 <= FIRST <= LAST <= {VLAN_MAX}"));
        let (first, last) = self.vlans.split_once('-').ok_or_else(range)?;
        let (first, last): (u16, u16) =
            (first.trim().parse().map_err(|_| range())?, last.trim().parse().map_err(|_| range())?);
        if first == 0 || first > last || last > VLAN_MAX {
            return Err(range());
        }
        let supernet: Ipv4Net = self
            .supernet
            .parse()
            .map_err(|_| invalid("supernet", &self.supernet, "write an IPv4 block such as 10.0.0.0/16"))?;
        if supernet.trunc() != supernet {
            return Err(invalid(
                "supernet",
                supernet,
                format!("host bits are set; did you mean {}?", supernet.trunc()),
            ));
        }
        if self.prefix < supernet.prefix_len() || self.prefix > 29 {
            return Err(invalid(
                "prefix",
                self.prefix,
                format!(
                    "must be between the supernet's /{} and /29 (room for a gateway and guests)",
                    supernet.prefix_len()
                ),
            ));
        }
        let mode: Mode = self.mode.as_deref().unwrap_or("nat").parse()?;
        if matches!(mode, Mode::Bridge | Mode::Open) {
            return Err(invalid(
                "mode",
                mode,
                "a project's network is lanyard's (nat, route, host-only or isolated), with its DHCP",
            ));
        }
        let vlan_backend = self.vlan_backend.as_deref().unwrap_or("subif").parse()?;
        Ok(VlanManager {
            uplink: self.uplink.clone(),
            first_vlan: first,
            last_vlan: last,
            supernet,
            prefix: self.prefix,
            mode,
            vlan_backend,
        })
    }
}

impl VlanManager {
    /// The lowest VLAN id of the range that no network uses on the trunk.
    pub fn free_vlan(&self, networks: &[Network]) -> Result<u16, AllocError> {
        let taken =
            |vid: u16| networks.iter().any(|n| n.vlan == Some(vid) && n.uplink.as_deref() == Some(&self.uplink));
        (self.first_vlan..=self.last_vlan).find(|v| !taken(*v)).ok_or_else(|| AllocError::NoVlan {
            first: self.first_vlan,
            last: self.last_vlan,
            uplink: self.uplink.clone(),
        })
    }

    /// The lowest subnet of the supernet that overlaps no network giving
    /// the host an address and no route of the host (other than the
    /// default route).
    pub fn free_subnet(&self, networks: &[Network], routes: &[Route]) -> Result<Ipv4Net, AllocError> {
        let overlaps = |a: &Ipv4Net, b: &Ipv4Net| a.contains(&b.network()) || b.contains(&a.network());
        let subnets = self.supernet.subnets(self.prefix).map_err(|_| self.exhausted())?;
        subnets
            .into_iter()
            .find(|s| {
                !networks.iter().any(|n| n.has_host_address() && overlaps(&n.subnet, s))
                    && !routes.iter().filter_map(|r| r.dst).any(|d| overlaps(&d, s))
            })
            .ok_or_else(|| self.exhausted())
    }

    fn exhausted(&self) -> AllocError {
        AllocError::NoSubnet { supernet: self.supernet, prefix: self.prefix }
    }

    /// The gateway of a subnet handed out: its first host address.
    pub fn gateway(subnet: Ipv4Net) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(subnet.network()) + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NetworkSpec;

    fn spec(vlans: &str, supernet: &str, prefix: u8) -> VlanManagerSpec {
        VlanManagerSpec {
            uplink: "eth0".into(),
            vlans: vlans.into(),
            supernet: supernet.into(),
            prefix,
            ..Default::default()
        }
    }

    fn vnet(name: &str, vid: u16, subnet: &str) -> Network {
        NetworkSpec {
            name: name.into(),
            mode: "nat".into(),
            subnet: subnet.into(),
            uplink: Some("eth0".into()),
            vlan: Some(vid),
            ..Default::default()
        }
        .validate(|| format!("brvlan{vid}"))
        .unwrap()
    }

    #[test]
    fn the_lowest_free_vlan_and_subnet_are_handed_out() {
        let m = spec("100-102", "10.0.0.0/22", 24).validate().unwrap();
        assert_eq!((m.mode, m.vlan_backend), (Mode::Nat, VlanBackend::Subif));
        assert_eq!(m.free_vlan(&[]).unwrap(), 100);
        assert_eq!(m.free_subnet(&[], &[]).unwrap().to_string(), "10.0.0.0/24");
        let nets = vec![vnet("a", 100, "10.0.0.0/24"), vnet("b", 102, "10.0.2.0/24")];
        assert_eq!(m.free_vlan(&nets).unwrap(), 101);
        assert_eq!(m.free_subnet(&nets, &[]).unwrap().to_string(), "10.0.1.0/24");
        // A route of the host to 10.0.1.0/25 makes 10.0.1.0/24 unusable.
        let route = Route { dst: Some("10.0.1.0/25".parse().unwrap()), ..Default::default() };
        assert_eq!(m.free_subnet(&nets, std::slice::from_ref(&route)).unwrap().to_string(), "10.0.3.0/24");
        // The default route covers nothing.
        assert_eq!(m.free_subnet(&nets, &[Route::default()]).unwrap().to_string(), "10.0.1.0/24");
        let full = vec![vnet("a", 100, "10.0.0.0/24"), vnet("b", 101, "10.0.1.0/24"), vnet("c", 102, "10.0.2.0/24")];
        assert_eq!(
            m.free_vlan(&full).unwrap_err().to_string().split(':').next(),
            Some("no free VLAN in 100-102 on eth0")
        );
        let mut full = full;
        full.push(vnet("d", 200, "10.0.3.0/24"));
        let err = m.free_subnet(&full, &[route]).unwrap_err().to_string();
        assert!(err.starts_with("no free /24 in 10.0.0.0/22"), "{err}");
    }

    #[test]
    fn bad_configurations_are_refused() {
        for (s, want) in [
            (spec("0-10", "10.0.0.0/16", 24), "FIRST-LAST"),
            (spec("10-5", "10.0.0.0/16", 24), "FIRST-LAST"),
            (spec("100-4095", "10.0.0.0/16", 24), "FIRST-LAST"),
            (spec("100", "10.0.0.0/16", 24), "FIRST-LAST"),
            (spec("100-999", "10.0.0.1/16", 24), "host bits are set; did you mean 10.0.0.0/16?"),
            (spec("100-999", "ten", 24), "IPv4 block"),
            (spec("100-999", "10.0.0.0/16", 8), "between the supernet's /16 and /29"),
            (spec("100-999", "10.0.0.0/16", 30), "between the supernet's /16 and /29"),
            (VlanManagerSpec { mode: Some("bridge".into()), ..spec("1-2", "10.0.0.0/16", 24) }, "a project's network"),
            (VlanManagerSpec { uplink: "bad/name".into(), ..spec("1-2", "10.0.0.0/16", 24) }, "uplink"),
        ] {
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{s:?}: {err}");
        }
    }
}
