//! Inter-project grants: `lanyard project allow P --to Q [--proto tcp
//! --port 22]` lets P's guests start connections to Q's guests (all, one
//! protocol, or one port of one protocol), in that direction only; Q's
//! answers flow back. Without a grant, traffic between two projects'
//! networks is refused, as between any two lanyard networks.

use serde::{Deserialize, Serialize};

use super::{invalid, validate_project_name, ModelError};
pub use crate::kernel::firewall::Proto;

/// A grant as the admin asks for it (the granting project is in the
/// request's path).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"to": "blue", "proto": "tcp", "port": 22}))]
pub struct GrantSpec {
    /// The project whose guests may be reached.
    pub to: String,
    /// tcp, udp or icmp (default: every protocol).
    #[serde(default)]
    #[schema(pattern = r"^(tcp|udp|icmp)$")]
    pub proto: Option<String>,
    /// A TCP or UDP destination port (needs `proto` tcp or udp).
    #[serde(default)]
    pub port: Option<u16>,
}

/// One grant: `from`'s guests may start connections to `to`'s.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Grant {
    /// The project whose guests connect.
    pub from: String,
    /// The project whose guests are reached.
    pub to: String,
    /// Only this protocol (None: all).
    #[serde(default)]
    pub proto: Option<Proto>,
    /// Only this destination port.
    #[serde(default)]
    pub port: Option<u16>,
}

impl Grant {
    /// The grant's key in the store.
    pub fn key(&self) -> String {
        format!("{}>{}>{}", self.from, self.to, self.what())
    }

    /// What it lets through: `all`, `icmp`, `tcp/22`.
    pub fn what(&self) -> String {
        match (self.proto, self.port) {
            (None, _) => "all".into(),
            (Some(p), None) => p.as_str().into(),
            (Some(p), Some(port)) => format!("{}/{port}", p.as_str()),
        }
    }
}

impl GrantSpec {
    /// Validates the spec for grants from project `from`.
    pub fn validate(&self, from: &str) -> Result<Grant, ModelError> {
        validate_project_name(from)?;
        validate_project_name(&self.to)?;
        if from == self.to {
            return Err(invalid("project", &self.to, "is the granting project itself; its networks are its own"));
        }
        let proto = match self.proto.as_deref() {
            None => None,
            Some(text) => Some(
                Proto::parse(text)
                    .filter(|_| text.parse::<u8>().is_err())
                    .ok_or_else(|| invalid("proto", text, "use tcp, udp or icmp"))?,
            ),
        };
        match (proto, self.port) {
            (_, Some(0)) => return Err(invalid("port", 0, "use a port from 1 to 65535")),
            (None, Some(port)) => return Err(invalid("port", port, "needs --proto tcp or --proto udp")),
            (Some(Proto::Icmp), Some(port)) => return Err(invalid("port", port, "ICMP has no ports")),
            _ => {}
        }
        Ok(Grant { from: from.into(), to: self.to.clone(), proto, port: self.port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(to: &str, proto: Option<&str>, port: Option<u16>) -> GrantSpec {
        GrantSpec { to: to.into(), proto: proto.map(Into::into), port }
    }

    #[test]
    fn grants_name_a_direction_and_what_it_carries() {
        let g = spec("q", Some("tcp"), Some(22)).validate("p").unwrap();
        assert_eq!((g.key(), g.what()), ("p>q>tcp/22".to_string(), "tcp/22".to_string()));
        assert_eq!(spec("q", None, None).validate("p").unwrap().what(), "all");
        assert_eq!(spec("q", Some("icmp"), None).validate("p").unwrap().what(), "icmp");
        for (bad, why) in [
            (spec("p", None, None), "itself"),
            (spec("q", Some("sctp"), None), "tcp, udp or icmp"),
            (spec("q", Some("6"), None), "tcp, udp or icmp"),
            (spec("q", None, Some(22)), "needs --proto"),
            (spec("q", Some("icmp"), Some(1)), "no ports"),
            (spec("q", Some("udp"), Some(0)), "1 to 65535"),
            (spec("q r", None, None), "contains"),
        ] {
            let e = bad.validate("p").unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
