//! Port forwards: a host port (on every local address, or one) that leads
//! to a guest's port on a nat or route network, as `docker run -p` and
//! Incus' network forwards publish a service. A forward costs a few
//! elements of lanyard's table, never a rule; it goes with its port and
//! its network (docs/ecosystem.md, "Port forwarding").
//!
//! Invariant: no two forwards overlap ([`PortForward::overlaps`]): a
//! packet to the host matches at most one, whichever network it leads
//! into.

use std::net::Ipv4Addr;

use super::{Engine, EngineError};
use crate::kernel::firewall::apply_elements;
use crate::kernel::{FirewallChange, Plan};
use crate::model::forwards::{parse_address, parse_port, parse_proto, PortForward, PortForwardSpec};
use crate::model::{ModelError, Port};
use crate::planner::forwards::{live, takes_forwards, LiveForward};
use crate::store::{DocumentChange, FORWARDS};

/// A port forward as the API shows it: with its port's VM and address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct ForwardView {
    /// The network (its name in the project).
    pub net: String,
    /// tcp or udp.
    #[schema(value_type = String, pattern = r"^(tcp|udp)$")]
    pub proto: crate::model::forwards::Proto,
    /// The host's port.
    pub host_port: u16,
    /// The host address it is forwarded on; absent: every local address.
    #[schema(value_type = Option<String>, format = Ipv4)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// The id of the port it leads to.
    pub to_port: String,
    /// The guest's port.
    pub to_port_number: u16,
    /// The port's VM.
    pub vm: String,
    /// The port's fixed IP, where the forward leads.
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub to_ip: Option<Ipv4Addr>,
}

/// Host ports lanyard's own servers answer on every network's gateway
/// (an address of the host): forwarded on every address, they would take
/// DNS and DHCP from the guests.
const SERVICE_PORTS: [(crate::model::forwards::Proto, u16, &str); 3] = [
    (crate::model::forwards::Proto::Udp, 53, "DNS"),
    (crate::model::forwards::Proto::Tcp, 53, "DNS"),
    (crate::model::forwards::Proto::Udp, 67, "DHCP"),
];

fn no_such_forward(net: &str, what: &str) -> EngineError {
    EngineError::NotFound(format!("network {net:?} has no port forward of {what} (see `lanyard net forward list`)"))
}

impl Engine {
    fn forward_view(&self, f: &PortForward) -> ForwardView {
        let port = self.index.by_id.get(&f.to_port);
        let net = self.networks.iter().find(|n| n.key() == f.net).map_or_else(|| f.net.clone(), |n| n.name.clone());
        ForwardView {
            net,
            proto: f.proto,
            host_port: f.host_port,
            address: f.address,
            to_port: f.to_port.clone(),
            to_port_number: f.to_port_number,
            vm: port.map(|p| p.vm.clone()).unwrap_or_default(),
            to_ip: port.and_then(|p| p.ip),
        }
    }

    /// The port forwards into a network (by key), by protocol, port and
    /// address.
    pub fn forwards(&self, net: &str) -> Result<Vec<ForwardView>, EngineError> {
        self.network(net)?;
        Ok(self.forwards.iter().filter(|f| f.net == net).map(|f| self.forward_view(f)).collect())
    }

    /// The port `to` names on network `net`: a port id, or the VM of
    /// exactly one port there.
    fn forward_target(&self, net: &str, to: &str) -> Result<Port, EngineError> {
        self.port_by_id_or_vm(to, |p| p.net == net).map_err(|ids| match ids.as_slice() {
            [] => EngineError::NotFound(format!(
                "network {net:?} has no port or VM named {to:?} (see `lanyard port list --net {net}`)"
            )),
            many => EngineError::Conflict(format!(
                "VM {to:?} has {} ports on network {net:?} ({}): name one by its id",
                many.len(),
                many.join(", ")
            )),
        })
    }

    /// The live forwards (as the firewall holds them) of `forwards`: those
    /// whose port is this host's, on an active nat or route network.
    fn live_of<'a>(&self, forwards: impl IntoIterator<Item = &'a PortForward>) -> Vec<LiveForward> {
        forwards
            .into_iter()
            .filter_map(|f| {
                let port = self.index.by_id.get(&f.to_port).filter(|p| self.is_local(p))?;
                live(f, port, self.networks.iter().find(|n| n.key() == f.net)?)
            })
            .collect()
    }

    /// The forwards that lead to the port `id`.
    pub(super) fn forwards_to(&self, id: &str) -> Vec<PortForward> {
        self.forwards.iter().filter(|f| f.to_port == id).cloned().collect()
    }

    /// The element changes that take away the forwards `gone` (all
    /// forwards to the ports being deleted), for that deletion's plan.
    pub(super) fn forward_removals(&self, gone: &[PortForward]) -> Vec<crate::kernel::ElementChange> {
        crate::planner::firewall::forward_changes(&self.live_of(gone), &[])
    }

    /// Forgets forwards whose documents the caller deleted (with their
    /// port or network).
    pub(super) fn forget_forwards(&mut self, gone: &[PortForward]) {
        for f in gone {
            tracing::info!(net = f.net, forward = f.label(), port = f.to_port, "port forward deleted with its port");
        }
        self.forwards.retain(|f| !gone.contains(f));
    }

    /// The document writes that delete `forwards` (or, `put`, restore them).
    pub(super) fn forward_writes(forwards: &[PortForward], put: bool) -> Vec<DocumentChange> {
        forwards
            .iter()
            .map(|f| {
                if put {
                    DocumentChange::put(FORWARDS, f.doc_key(), f)
                } else {
                    DocumentChange::delete(FORWARDS, f.doc_key())
                }
            })
            .collect()
    }

    /// Adds a port forward into network `net` (by key): its port must be
    /// on that network and have a fixed IP; the network must be a nat or
    /// route network; no other forward (of any network) may take the same
    /// protocol and port on an address this one covers.
    pub fn add_forward(&mut self, net: &str, spec: PortForwardSpec) -> Result<ForwardView, EngineError> {
        let network = self.network(net)?;
        let mut forward = spec.validate(net)?;
        if !takes_forwards(&network) {
            return Err(EngineError::Invalid(ModelError::Invalid {
                what: "network",
                value: network.name.clone(),
                why: format!(
                    "is a {} network: port forwards lead into nat and route networks (the host DNATs into them; \
                     host-only and isolated guests are not to be reached from outside, open and bridge guests are \
                     reached directly)",
                    network.mode
                ),
            }));
        }
        let port = self.forward_target(net, &forward.to_port)?;
        if port.ip.is_none() {
            return Err(EngineError::Conflict(format!(
                "port {} (vm {}) has no fixed IPv4 address, so a forward cannot lead to it",
                port.id, port.vm
            )));
        }
        forward.to_port.clone_from(&port.id);
        if let Some(other) = self.forwards.iter().find(|f| f.overlaps(&forward)) {
            // Host ports are shared by every project; another project's
            // forward is named only as that, not by its network or port.
            let theirs = self.networks.iter().find(|n| n.key() == other.net);
            let whose = match theirs {
                Some(n) if n.project == network.project => {
                    format!("to port {} on network {:?}", other.to_port, n.name)
                }
                _ => "by another project".into(),
            };
            return Err(EngineError::Conflict(format!(
                "host port {} is already forwarded ({whose}): delete that forward first",
                other.label()
            )));
        }
        let gateway = |a: Ipv4Addr| self.networks.iter().any(|n| n.has_host_address() && n.gateway == a);
        if let Some((_, _, what)) = SERVICE_PORTS
            .iter()
            .find(|(p, n, _)| *p == forward.proto && *n == forward.host_port)
            .filter(|_| forward.address.is_none_or(gateway))
        {
            return Err(EngineError::Conflict(format!(
                "host port {} is lanyard's {what} on every network's gateway: forward it on one outside address \
                 (--address)",
                forward.label()
            )));
        }
        // Only forwards to the same port share elements with this one.
        let siblings = self.forwards_to(&port.id);
        let before = self.live_of(&siblings);
        let after = self.live_of(siblings.iter().chain(std::iter::once(&forward)));
        let changes = crate::planner::firewall::forward_changes(&before, &after);
        let put = Self::forward_writes(std::slice::from_ref(&forward), true);
        let undo = Self::forward_writes(std::slice::from_ref(&forward), false);
        self.commit_forward_elements(changes, put, undo)?;
        let at = self.forwards.partition_point(|f| f < &forward);
        self.forwards.insert(at, forward.clone());
        tracing::info!(
            net,
            forward = forward.label(),
            port = port.id,
            to = forward.to_port_number,
            "port forward added"
        );
        Ok(self.forward_view(&forward))
    }

    /// Deletes the forward of `proto`/`host_port` into network `net` (by
    /// key); `address` names which when the network has one on several
    /// addresses. New connections to it are refused from then on;
    /// established ones end as they would.
    pub fn delete_forward(
        &mut self,
        net: &str,
        proto: &str,
        host_port: &str,
        address: Option<&str>,
    ) -> Result<(), EngineError> {
        let network = self.network(net)?;
        let proto = parse_proto(proto)?;
        let host_port = host_port
            .trim()
            .parse::<u32>()
            .map_err(|_| ModelError::Invalid {
                what: "host port",
                value: host_port.to_string(),
                why: "use a port from 1 to 65535".into(),
            })
            .and_then(|n| parse_port("host port", n))?;
        let address = parse_address(address)?;
        let named = |f: &&PortForward| {
            f.net == net && f.proto == proto && f.host_port == host_port && (address.is_none() || f.address == address)
        };
        let found: Vec<PortForward> = self.forwards.iter().filter(named).cloned().collect();
        let what = match address {
            Some(a) => format!("{}/{a}:{host_port}", proto.as_str()),
            None => format!("{}/{host_port}", proto.as_str()),
        };
        let forward = match found.as_slice() {
            [one] => one.clone(),
            [] => return Err(no_such_forward(&network.name, &what)),
            many => {
                let addresses: Vec<String> =
                    many.iter().map(|f| f.address.map_or_else(|| "every address".into(), |a| a.to_string())).collect();
                return Err(EngineError::Invalid(ModelError::Invalid {
                    what: "port forward",
                    value: what,
                    why: format!("is forwarded on {}: name one with --address", addresses.join(", ")),
                }));
            }
        };
        let siblings = self.forwards_to(&forward.to_port);
        let before = self.live_of(&siblings);
        let after = self.live_of(siblings.iter().filter(|f| **f != forward));
        let changes = crate::planner::firewall::forward_changes(&before, &after);
        let delete = Self::forward_writes(std::slice::from_ref(&forward), false);
        let undo = Self::forward_writes(std::slice::from_ref(&forward), true);
        self.commit_forward_elements(changes, delete, undo)?;
        self.forwards.retain(|f| *f != forward);
        tracing::info!(net, forward = forward.label(), "port forward deleted");
        Ok(())
    }

    /// The engine's protocol for a forward's change: its elements (nothing
    /// else is read or planned), its document, then (the caller) memory.
    fn commit_forward_elements(
        &mut self,
        changes: Vec<crate::kernel::ElementChange>,
        write: Vec<DocumentChange>,
        undo: Vec<DocumentChange>,
    ) -> Result<(), EngineError> {
        let firewall = if changes.is_empty() { Vec::new() } else { vec![FirewallChange::Elements(changes.clone())] };
        self.commit(
            &Plan { ops: Vec::new(), firewall },
            |t| apply_elements(t, &changes),
            |s| s.write_documents(&write),
            |s| s.write_documents(&undo),
        )
    }
}
