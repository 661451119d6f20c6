//! Floating IPs (nova-network's public addresses that move between
//! instances): the pools an admin declares and the addresses projects hold.
//!
//! A pool is a range of addresses reachable on one host interface (the
//! host answers ARP for them there). A project allocates an address from
//! a pool and associates it with one of its ports: inbound traffic to the
//! address reaches the port's fixed IP, and the port's own outbound
//! traffic leaves with it as its source. Pure data and validation; the
//! rules live in [`crate::planner::firewall`], the lifecycle in
//! [`crate::engine::floating`].

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{invalid, validate_ifname, validate_name, ModelError, IFNAME_MAX};

/// The most addresses one pool may hold: a /16, more than any host carries
/// (each associated address is an address on the pool's interface).
pub const POOL_MAX: u32 = 65_536;

/// A pool as the admin asked for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "public", "range": "203.0.113.10-203.0.113.20", "interface": "eth0"}))]
pub struct FipPoolSpec {
    /// Pool name (the rules of network names).
    #[schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,14}$")]
    pub name: String,
    /// `FIRST-LAST`, inclusive.
    pub range: String,
    /// The host interface on which the addresses are reachable.
    pub interface: String,
}

/// A pool of floating IPs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FipPool {
    /// Unique name.
    pub name: String,
    /// First address.
    #[schema(value_type = String, format = Ipv4)]
    pub first: Ipv4Addr,
    /// Last address (inclusive).
    #[schema(value_type = String, format = Ipv4)]
    pub last: Ipv4Addr,
    /// The host interface the addresses are announced on.
    pub interface: String,
}

impl FipPool {
    /// Whether `ip` is one of the pool's addresses.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.first <= ip && ip <= self.last
    }

    /// How many addresses the pool has.
    pub fn size(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// Whether two pools share an address.
    pub fn overlaps(&self, other: &FipPool) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

impl FipPoolSpec {
    /// Validates the spec.
    pub fn validate(&self) -> Result<FipPool, ModelError> {
        validate_name("pool name", &self.name, IFNAME_MAX)?;
        validate_ifname("interface", &self.interface)?;
        let (first, last) = self
            .range
            .split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse::<Ipv4Addr>().ok()?, b.trim().parse::<Ipv4Addr>().ok()?)))
            .ok_or_else(|| invalid("range", &self.range, "write FIRST-LAST, e.g. 203.0.113.10-203.0.113.200"))?;
        if first > last {
            return Err(invalid("range", &self.range, "its first address is after its last"));
        }
        for ip in [first, last] {
            if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() || ip.is_link_local() {
                return Err(invalid("range", &self.range, format!("{ip} cannot be a host's address")));
            }
        }
        let pool = FipPool { name: self.name.clone(), first, last, interface: self.interface.clone() };
        if pool.size() > POOL_MAX {
            return Err(invalid("range", &self.range, format!("has {} addresses, at most {POOL_MAX}", pool.size())));
        }
        Ok(pool)
    }
}

/// A request to allocate a floating IP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"pool": "public"}))]
pub struct FipSpec {
    /// The pool (default: the only one).
    #[serde(default)]
    pub pool: Option<String>,
    /// A particular address of the pool (default: the lowest free one).
    #[serde(default)]
    pub ip: Option<String>,
    /// The project that holds it (default the caller's, or the default
    /// project).
    #[serde(default)]
    pub project: Option<String>,
}

/// A floating IP held by a project, associated with at most one port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloatingIp {
    /// The address.
    pub ip: Ipv4Addr,
    /// The pool it comes from.
    pub pool: String,
    /// The project that holds it.
    pub project: String,
    /// The port (by id) it is associated with.
    #[serde(default)]
    pub port: Option<String>,
}

/// Parses a floating IP as a user writes it.
pub fn parse_fip(text: &str) -> Result<Ipv4Addr, ModelError> {
    text.trim().parse().map_err(|_| invalid("floating IP", text, "write an IPv4 address, e.g. 203.0.113.10"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(range: &str) -> FipPoolSpec {
        FipPoolSpec { name: "public".into(), range: range.into(), interface: "eth0".into() }
    }

    #[test]
    fn a_pool_is_a_range_of_host_addresses() {
        let p = spec("203.0.113.10-203.0.113.20").validate().unwrap();
        assert_eq!(p.size(), 11);
        assert!(p.contains("203.0.113.20".parse().unwrap()));
        assert!(!p.contains("203.0.113.21".parse().unwrap()));
        for (range, why) in [
            ("203.0.113.10", "FIRST-LAST"),
            ("203.0.113.20-203.0.113.10", "after its last"),
            ("127.0.0.1-127.0.0.5", "cannot be a host's address"),
            ("10.0.0.0-10.2.0.0", "at most 65536"),
            ("a-b", "FIRST-LAST"),
        ] {
            let e = spec(range).validate().unwrap_err().to_string();
            assert!(e.contains(why), "{range}: {e}");
        }
        let bad_if = FipPoolSpec { interface: "eth0;x".into(), ..spec("203.0.113.1-203.0.113.2") };
        assert!(bad_if.validate().is_err());
    }

    #[test]
    fn pools_overlap_when_they_share_an_address() {
        let a = spec("10.9.0.1-10.9.0.10").validate().unwrap();
        let b = spec("10.9.0.10-10.9.0.20").validate().unwrap();
        let c = spec("10.9.0.11-10.9.0.20").validate().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
    }
}
