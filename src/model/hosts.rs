//! Static DHCP hosts: a MAC that is not a lanyard port (a VM another tool
//! plugged into the bridge, a device on a bridge-mode LAN's side) always
//! gets the same address, and its name resolves in the network's DNS, as
//! libvirt's `<dhcp><host mac= ip= name=/></dhcp>` offers. Pure data and
//! validation; the lifecycle lives in [`crate::engine::hosts`].

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{invalid, validate_vm_name, Mac, ModelError};

/// `POST /v1/networks/{name}/hosts` as the user wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"mac": "52:54:00:aa:bb:cc", "ip": "192.168.122.10", "name": "printer"}))]
pub struct StaticHostSpec {
    /// The client's MAC.
    pub mac: String,
    /// The address DHCP always gives it.
    pub ip: String,
    /// Its DNS name on the network (a DNS label).
    #[serde(default)]
    pub name: Option<String>,
}

/// A static host as stored (document kind [`crate::store::HOSTS`], key
/// [`StaticHost::doc_key`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StaticHost {
    /// The network's key.
    pub net: String,
    /// The client's MAC.
    pub mac: Mac,
    /// Its address.
    #[schema(value_type = String, format = Ipv4)]
    pub ip: Ipv4Addr,
    /// Its DNS name, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl StaticHost {
    /// The store key: `NET/MAC` (a network key may itself hold a '/', the
    /// MAC never does, so the last '/' splits them).
    pub fn doc_key(&self) -> String {
        format!("{}/{}", self.net, self.mac)
    }
}

impl StaticHostSpec {
    /// Checks the spec's own fields (the network's subnet and what else
    /// holds addresses are the engine's to check).
    pub fn validate(&self, net: &str) -> Result<StaticHost, ModelError> {
        let mac: Mac = self.mac.trim().parse()?;
        let ip: Ipv4Addr = self
            .ip
            .trim()
            .parse()
            .map_err(|_| invalid("ip", &self.ip, "write an IPv4 address such as 192.168.122.10"))?;
        let name = match self.name.as_deref() {
            None | Some("") => None,
            Some(n) => {
                validate_vm_name(n).map_err(|_| {
                    invalid(
                        "name",
                        n,
                        "a host name is 1-63 letters, digits, '-', '_' or '.', beginning with a letter or digit",
                    )
                })?;
                Some(n.to_string())
            }
        };
        Ok(StaticHost { net: net.to_string(), mac, ip, name })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mac: &str, ip: &str, name: Option<&str>) -> StaticHostSpec {
        StaticHostSpec { mac: mac.into(), ip: ip.into(), name: name.map(String::from) }
    }

    #[test]
    fn a_valid_host_is_keyed_by_network_and_mac() {
        let h = spec("52:54:00:aa:bb:cc", "192.168.122.10", Some("web")).validate("p/net").unwrap();
        assert_eq!(h.doc_key(), "p/net/52:54:00:aa:bb:cc");
        assert_eq!(h.name.as_deref(), Some("web"));
        let h = spec("52:54:00:aa:bb:cc", "192.168.122.10", Some("")).validate("n").unwrap();
        assert_eq!(h.name, None);
    }

    #[test]
    fn bad_fields_name_themselves() {
        for (s, what) in [
            (spec("nope", "192.168.122.10", None), "mac"),
            (spec("01:00:5e:00:00:01", "192.168.122.10", None), "mac"),
            (spec("52:54:00:aa:bb:cc", "192.168.122", None), "ip"),
            (spec("52:54:00:aa:bb:cc", "192.168.122.10", Some("bad name")), "name"),
            (spec("52:54:00:aa:bb:cc", "192.168.122.10", Some(&"x".repeat(64))), "name"),
        ] {
            match s.validate("n") {
                Err(ModelError::Invalid { what: w, .. }) => assert_eq!(w, what, "{s:?}"),
                other => panic!("{s:?}: {other:?}"),
            }
        }
    }
}
