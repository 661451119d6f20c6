//! Port forwards: a TCP or UDP port of the host (on every address it has,
//! or on one) leads to a port of a guest, as `docker run -p 8080:80`,
//! Incus' network forwards and libvirt's hooks publish a VM's service.
//! Pure data and validation; the lifecycle lives in
//! [`crate::engine::forwards`], the rules in [`crate::planner::firewall`].

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{invalid, ModelError};
pub use crate::kernel::firewall::Proto;

/// `POST /v1/networks/{name}/forwards` as the user wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"proto": "tcp", "host_port": 8080, "to_port": "web1", "to_port_number": 80}))]
pub struct PortForwardSpec {
    /// tcp or udp.
    #[schema(pattern = r"^(tcp|udp)$")]
    pub proto: String,
    /// The host's port (1-65535).
    #[schema(minimum = 1, maximum = 65535)]
    pub host_port: u32,
    /// The lanyard port it leads to: a port id, or the name of a VM with
    /// one port on the network.
    pub to_port: String,
    /// The guest's port (default: the host's port).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 65535)]
    pub to_port_number: Option<u32>,
    /// Only traffic to this IPv4 address of the host (default: to any of
    /// the host's own addresses).
    #[serde(default)]
    pub address: Option<String>,
}

/// A port forward as stored (document kind [`crate::store::FORWARDS`],
/// key [`PortForward::doc_key`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortForward {
    /// The network's key.
    pub net: String,
    /// tcp or udp.
    pub proto: Proto,
    /// The host's port.
    pub host_port: u16,
    /// The address it is forwarded on (None: every local address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// The id of the lanyard port it leads to.
    pub to_port: String,
    /// The guest's port.
    pub to_port_number: u16,
}

impl PortForward {
    /// The store key: `NET/PROTO/ADDRESS/PORT`, `*` for every address (a
    /// network key may itself hold a '/'; the rest never does).
    pub fn doc_key(&self) -> String {
        let address = self.address.map_or_else(|| "*".to_string(), |a| a.to_string());
        format!("{}/{}/{address}/{}", self.net, self.proto.as_str(), self.host_port)
    }

    /// Whether a packet could match both: same protocol and port, and
    /// the same address or either on every address. Two such forwards
    /// would make the host's answer depend on the order of lookups, so
    /// the second is refused.
    pub fn overlaps(&self, other: &PortForward) -> bool {
        self.proto == other.proto
            && self.host_port == other.host_port
            && (self.address.is_none() || other.address.is_none() || self.address == other.address)
    }

    /// `tcp/8080` or `tcp/192.0.2.1:8080`, as messages name it.
    pub fn label(&self) -> String {
        match self.address {
            Some(a) => format!("{}/{a}:{}", self.proto.as_str(), self.host_port),
            None => format!("{}/{}", self.proto.as_str(), self.host_port),
        }
    }
}

/// tcp or udp, from the user's text.
pub fn parse_proto(text: &str) -> Result<Proto, ModelError> {
    match text.trim() {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        _ => Err(invalid("proto", text, "a port forward is tcp or udp")),
    }
}

/// A TCP or UDP port number, 1-65535.
pub fn parse_port(what: &'static str, n: u32) -> Result<u16, ModelError> {
    u16::try_from(n).ok().filter(|p| *p != 0).ok_or_else(|| invalid(what, n, "use a port from 1 to 65535"))
}

/// The address a forward listens on, when one is named: an address the
/// host may have (not 0.0.0.0, loopback, multicast or broadcast). An
/// empty text means every address.
pub fn parse_address(text: Option<&str>) -> Result<Option<Ipv4Addr>, ModelError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else { return Ok(None) };
    let ip: Ipv4Addr =
        text.parse().map_err(|_| invalid("address", text, "write an IPv4 address of the host such as 192.0.2.10"))?;
    if ip.is_unspecified() {
        return Err(invalid("address", text, "leave --address out to forward on every address of the host"));
    }
    if ip.is_loopback() {
        // Translated to a guest, a packet from 127.0.0.1 cannot leave the
        // host (the kernel drops loopback sources on other interfaces).
        return Err(invalid("address", text, "loopback addresses cannot be forwarded to a guest"));
    }
    if ip.is_multicast() || ip.is_broadcast() {
        return Err(invalid("address", text, "name a unicast address of the host"));
    }
    Ok(Some(ip))
}

impl PortForwardSpec {
    /// Checks the spec's own fields; `to_port` stays as written (the
    /// engine resolves it to a port id).
    pub fn validate(&self, net: &str) -> Result<PortForward, ModelError> {
        let proto = parse_proto(&self.proto)?;
        let host_port = parse_port("host port", self.host_port)?;
        let to_port_number = match self.to_port_number {
            Some(n) => parse_port("to port number", n)?,
            None => host_port,
        };
        let to = self.to_port.trim();
        if to.is_empty() {
            return Err(ModelError::Missing("name the port to forward to: a port id or a VM name (--to)".into()));
        }
        Ok(PortForward {
            net: net.to_string(),
            proto,
            host_port,
            address: parse_address(self.address.as_deref())?,
            to_port: to.to_string(),
            to_port_number,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(proto: &str, host_port: u32, to_port_number: Option<u32>, address: Option<&str>) -> PortForwardSpec {
        PortForwardSpec {
            proto: proto.into(),
            host_port,
            to_port: "web1".into(),
            to_port_number,
            address: address.map(String::from),
        }
    }

    #[test]
    fn the_guest_port_defaults_to_the_host_port() {
        let f = spec("tcp", 8080, None, None).validate("p/net").unwrap();
        assert_eq!((f.proto, f.host_port, f.to_port_number, f.address), (Proto::Tcp, 8080, 8080, None));
        assert_eq!(f.doc_key(), "p/net/tcp/*/8080");
        let f = spec("udp", 53, Some(5353), Some("192.0.2.1")).validate("n").unwrap();
        assert_eq!(f.doc_key(), "n/udp/192.0.2.1/53");
        assert_eq!(f.label(), "udp/192.0.2.1:53");
    }

    #[test]
    fn bad_fields_name_themselves() {
        for (s, what) in [
            (spec("icmp", 8080, None, None), "proto"),
            (spec("6", 8080, None, None), "proto"),
            (spec("tcp", 0, None, None), "host port"),
            (spec("tcp", 65536, None, None), "host port"),
            (spec("tcp", 80, Some(0), None), "to port number"),
            (spec("tcp", 80, Some(70000), None), "to port number"),
            (spec("tcp", 80, None, Some("nope")), "address"),
            (spec("tcp", 80, None, Some("0.0.0.0")), "address"),
            (spec("tcp", 80, None, Some("127.0.0.1")), "address"),
            (spec("tcp", 80, None, Some("224.0.0.1")), "address"),
        ] {
            match s.validate("n") {
                Err(ModelError::Invalid { what: w, .. }) => assert_eq!(w, what, "{s:?}"),
                other => panic!("{s:?}: {other:?}"),
            }
        }
        assert!(matches!(
            PortForwardSpec { to_port: " ".into(), ..spec("tcp", 80, None, None) }.validate("n"),
            Err(ModelError::Missing(_))
        ));
    }

    #[test]
    fn forwards_overlap_on_one_port_and_a_shared_address() {
        let f = |proto: &str, port: u32, address: Option<&str>| spec(proto, port, None, address).validate("n").unwrap();
        assert!(f("tcp", 80, None).overlaps(&f("tcp", 80, Some("192.0.2.1"))));
        assert!(f("tcp", 80, Some("192.0.2.1")).overlaps(&f("tcp", 80, Some("192.0.2.1"))));
        assert!(!f("tcp", 80, Some("192.0.2.1")).overlaps(&f("tcp", 80, Some("192.0.2.2"))));
        assert!(!f("tcp", 80, None).overlaps(&f("udp", 80, None)));
        assert!(!f("tcp", 80, None).overlaps(&f("tcp", 81, None)));
    }
}
