//! The model: what a network and a port are, and the validation that every
//! request passes before anything is stored or planned.
//!
//! Everything here is pure. A [`NetworkSpec`] or [`PortSpec`] is what a user
//! asked for; [`Network`] and [`Port`] are the validated, fully defaulted
//! records the store keeps and the planner reads.

use std::borrow::Cow;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub mod floating;
pub mod forwards;
pub mod grants;
pub mod hosts;

/// A request that can never succeed as written; the message says what to change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    /// invalid {what} {value:?}: {why} (a long value shortened)
    #[error("invalid {what} {}: {why}", quoted(.value))]
    Invalid {
        /// Which field.
        what: &'static str,
        /// What was given.
        value: String,
        /// Why it is refused and what would be accepted.
        why: String,
    },
    /// A required option is missing: the message names it.
    #[error("{0}")]
    Missing(String),
}

/// `value` quoted as `{:?}` does, but a value of more than 64 bytes shows
/// only its start and its length, so that a 10,000-byte name cannot make a
/// 10,000-byte message.
fn quoted(value: &str) -> String {
    const MAX: usize = 64;
    if value.len() <= MAX {
        return format!("{value:?}");
    }
    let cut = (0..=48).rev().find(|&i| value.is_char_boundary(i)).unwrap_or(0);
    format!("{:?}... ({} bytes)", &value[..cut], value.len())
}

fn invalid(what: &'static str, value: impl fmt::Display, why: impl Into<String>) -> ModelError {
    ModelError::Invalid { what, value: value.to_string(), why: why.into() }
}

/// How a network reaches (or does not reach) the world beyond its bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Private subnet, masqueraded to the outside; outside cannot connect in.
    Nat,
    /// Subnet routed by the host without NAT.
    Route,
    /// VMs and the host only.
    HostOnly,
    /// VMs reach each other only; the host serves DHCP and DNS, nothing else.
    Isolated,
    /// An uplink NIC joins the bridge; VMs sit on the physical LAN.
    Bridge,
    /// Like route, with no firewall rules at all.
    Open,
}

impl Mode {
    /// Every mode, in the order the docs present them.
    pub const ALL: [Mode; 6] = [Mode::Nat, Mode::Route, Mode::HostOnly, Mode::Isolated, Mode::Bridge, Mode::Open];

    /// The name used on the command line and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Nat => "nat",
            Mode::Route => "route",
            Mode::HostOnly => "host-only",
            Mode::Isolated => "isolated",
            Mode::Bridge => "bridge",
            Mode::Open => "open",
        }
    }

    /// Whether lanyard's own DHCP server runs on networks of this mode.
    /// Bridge networks take their leases from the physical LAN.
    pub fn serves_dhcp(self) -> bool {
        !matches!(self, Mode::Bridge)
    }

    /// Whether the host routes for this network, so IPv4 forwarding must be on.
    pub fn forwards(self) -> bool {
        matches!(self, Mode::Nat | Mode::Route | Mode::Open)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL.into_iter().find(|m| m.as_str() == s).ok_or_else(|| {
            let known: Vec<_> = Mode::ALL.iter().map(|m| m.as_str()).collect();
            invalid("mode", s, format!("use one of {}", known.join(", ")))
        })
    }
}

/// The addresses a network's DHCP server hands to clients that are not ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DhcpRange {
    /// First address of the pool.
    #[schema(value_type = String, format = Ipv4)]
    pub first: Ipv4Addr,
    /// Last address of the pool (inclusive).
    #[schema(value_type = String, format = Ipv4)]
    pub last: Ipv4Addr,
}

impl DhcpRange {
    /// Whether `ip` lies in the pool.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.first <= ip && ip <= self.last
    }
}

impl FromStr for DhcpRange {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || invalid("dhcp range", s, "write it as FIRST-LAST, e.g. 192.168.122.2-192.168.122.254");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let first = a.trim().parse().map_err(|_| bad())?;
        let last = b.trim().parse().map_err(|_| bad())?;
        Ok(DhcpRange { first, last })
    }
}

/// A network as the user asked for it; fields left out get defaults, and
/// unknown fields are refused (a misspelt option must not be ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "default", "mode": "nat", "subnet": "192.168.122.0/24"}))]
pub struct NetworkSpec {
    /// Network name (also used as the default DNS domain), unique within
    /// its project.
    #[schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,14}$")]
    pub name: String,
    /// Mode name, e.g. "nat".
    pub mode: String,
    /// IPv4 subnet in CIDR form.
    pub subnet: String,
    /// Host's address on the bridge; default first host address.
    #[serde(default)]
    pub gateway: Option<String>,
    /// Dynamic pool, "FIRST-LAST"; default every host address but the gateway.
    #[serde(default)]
    pub dhcp_range: Option<String>,
    /// Bridge interface name; default `lybrN`.
    #[serde(default)]
    pub bridge: Option<String>,
    /// MTU of the bridge and its ports.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// DNS domain served to guests; default the network name.
    #[serde(default)]
    pub domain: Option<String>,
    /// Start the network when the host boots (default false, as `virsh net-define`).
    #[serde(default)]
    pub autostart: Option<bool>,
    /// Bridge mode: the physical NIC that joins the bridge. With `vlan`:
    /// the trunk the VLAN rides on (any mode).
    #[serde(default)]
    pub uplink: Option<String>,
    /// 802.1Q VLAN id (1..4094) on `uplink`: the network's L2 segment is
    /// that VLAN on the trunk.
    #[serde(default)]
    pub vlan: Option<u16>,
    /// How the VLAN is made: "subif" (default: a VLAN device per uplink and
    /// VLAN in a bridge per VLAN) or "filtering" (one VLAN-aware bridge per
    /// uplink).
    #[serde(default)]
    #[schema(pattern = r"^(subif|filtering)$")]
    pub vlan_backend: Option<String>,
    /// The project the network belongs to (default [`DEFAULT_PROJECT`]).
    #[serde(default)]
    pub project: Option<String>,
    /// nova-network's manager: "flat" or "flatdhcp" (the mode is then nat).
    #[serde(default)]
    pub manager: Option<String>,
    /// DHCP lease time in seconds (default one hour).
    #[serde(default)]
    pub lease_time: Option<u32>,
    /// How the network spans the hosts of a cluster: "vxlan", "vlan" or
    /// "none" (default: vxlan for a network with a bridge of its own, the
    /// physical network for one with --uplink or --vlan).
    #[serde(default)]
    #[schema(pattern = r"^(vxlan|vlan|none)$")]
    pub overlay: Option<String>,
}

/// nova-network's network managers, as network kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Manager {
    /// FlatManager: the subnet is the pool, the bridge is given (adopted
    /// when it exists) or created, no DHCP is served: each port's address
    /// and gateway reach the guest as cloud-init data. The host is the
    /// gateway and NATs.
    Flat,
    /// FlatDHCPManager: one shared bridge (on the flat interface when
    /// given), DHCP hands each port its fixed IP; the host NATs.
    #[serde(rename = "flatdhcp")]
    FlatDhcp,
    /// VLANManager: a project's own VLAN, bridge and subnet, made by
    /// lanyard when the project's first port asks for no network
    /// (`lanyard manager vlan set`); never asked for with `--manager`.
    Vlan,
}

impl FromStr for Manager {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "flat" => Ok(Manager::Flat),
            "flatdhcp" => Ok(Manager::FlatDhcp),
            "vlan" => Err(invalid(
                "manager",
                s,
                "VLAN-manager networks are made per project on demand; configure them with `lanyard manager vlan set`",
            )),
            _ => Err(invalid("manager", s, "use flat or flatdhcp")),
        }
    }
}

impl fmt::Display for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Manager::Flat => "flat",
            Manager::FlatDhcp => "flatdhcp",
            Manager::Vlan => "vlan",
        })
    }
}

/// How a network spans the hosts of a cluster (`--overlay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OverlayKind {
    /// A VXLAN device per host on the network's bridge.
    Vxlan,
    /// Its VLAN on the physical trunk, which reaches every host: no tunnel.
    Vlan,
    /// Not at all: each host's bridge is its own segment.
    None,
}

impl FromStr for OverlayKind {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vxlan" => Ok(OverlayKind::Vxlan),
            "vlan" => Ok(OverlayKind::Vlan),
            "none" => Ok(OverlayKind::None),
            _ => Err(invalid("overlay", s, "use vxlan, vlan or none")),
        }
    }
}

impl fmt::Display for OverlayKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OverlayKind::Vxlan => "vxlan",
            OverlayKind::Vlan => "vlan",
            OverlayKind::None => "none",
        })
    }
}

/// How a VLAN network is realized in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VlanBackend {
    /// A VLAN device (`eth0.10`) per uplink and VLAN, in a bridge per VLAN
    /// (`brvlan10`): the seed's realization.
    Subif,
    /// One VLAN-aware bridge per uplink (`vlan_filtering 1`), the uplink its
    /// trunk port, each VM port an access port.
    Filtering,
}

impl FromStr for VlanBackend {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "subif" => Ok(VlanBackend::Subif),
            "filtering" => Ok(VlanBackend::Filtering),
            _ => Err(invalid("vlan backend", s, "use subif or filtering")),
        }
    }
}

impl fmt::Display for VlanBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VlanBackend::Subif => "subif",
            VlanBackend::Filtering => "filtering",
        })
    }
}

/// The VLAN device of VLAN `vid` on `parent`: `eth0.10` as the seed names
/// it, or, when that would not fit an interface name (15 bytes), `lyv`
/// and a hash of the two.
pub fn vlan_ifname(parent: &str, vid: u16) -> String {
    let plain = format!("{parent}.{vid}");
    if plain.len() <= IFNAME_MAX {
        return plain;
    }
    format!("lyv{:08x}", fnv1a(&plain))
}

/// The VLAN-filtering bridge of an uplink (the `filtering` backend):
/// `br-eth0`, or `lyf` and a hash when that would not fit.
pub fn filtering_bridge_name(uplink: &str) -> String {
    let plain = format!("br-{uplink}");
    if plain.len() <= IFNAME_MAX {
        return plain;
    }
    format!("lyf{:08x}", fnv1a(uplink))
}

/// A short stable hash for names (FNV-1a, 32 bits).
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// The highest 802.1Q VLAN id (4095 is reserved).
pub const VLAN_MAX: u16 = 4094;

/// Whether a network's kernel objects exist and its DHCP server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetState {
    /// Bridge, rules and DHCP are up.
    Active,
    /// Defined only.
    Inactive,
}

/// A change to a defined network (`PATCH /v1/networks/{name}`, `net
/// edit`): only what changes nothing in the kernel and takes nothing from
/// running guests. The other fields are listed so that asking to change
/// them is answered with why not, rather than "unknown field".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"domain": "lab.example", "lease_time": 7200}))]
pub struct NetworkPatch {
    /// Start the network at boot.
    #[serde(default)]
    pub autostart: Option<bool>,
    /// DNS domain served to guests.
    #[serde(default)]
    pub domain: Option<String>,
    /// Dynamic pool, "FIRST-LAST".
    #[serde(default)]
    pub dhcp_range: Option<String>,
    /// DHCP lease time in seconds.
    #[serde(default)]
    pub lease_time: Option<u32>,
    /// Refused: the subnet.
    #[serde(default)]
    pub subnet: Option<serde_json::Value>,
    /// Refused: the gateway.
    #[serde(default)]
    pub gateway: Option<serde_json::Value>,
    /// Refused: the mode.
    #[serde(default)]
    pub mode: Option<serde_json::Value>,
    /// Refused: the bridge.
    #[serde(default)]
    pub bridge: Option<serde_json::Value>,
    /// Refused: the MTU.
    #[serde(default)]
    pub mtu: Option<serde_json::Value>,
    /// Refused: the name.
    #[serde(default)]
    pub name: Option<serde_json::Value>,
}

/// A validated network record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Network {
    /// Name, unique within its project.
    pub name: String,
    /// The project the network belongs to; records written before projects
    /// existed are the default project's.
    #[serde(default = "default_project")]
    pub project: String,
    /// How the network reaches the world.
    pub mode: Mode,
    /// IPv4 subnet.
    #[schema(value_type = String, example = "192.168.122.0/24")]
    pub subnet: Ipv4Net,
    /// Host's address on the bridge.
    #[schema(value_type = String, format = Ipv4)]
    pub gateway: Ipv4Addr,
    /// Dynamic DHCP pool.
    pub dhcp_range: DhcpRange,
    /// Bridge interface name.
    pub bridge: String,
    /// MTU, when set.
    pub mtu: Option<u32>,
    /// DNS domain for guest names.
    pub domain: String,
    /// Start at boot (when the daemon starts and finds the bridge missing).
    pub autostart: bool,
    /// Desired state.
    pub state: NetState,
    /// Bridge mode: the physical NIC in the bridge.
    #[serde(default)]
    pub uplink: Option<String>,
    /// The bridge's (the gateway's) MAC, pinned so that no port coming or
    /// going ever changes it (the kernel otherwise re-derives a bridge's
    /// MAC from its lowest port MAC, and every guest loses its gateway
    /// until its ARP entry expires). None in records written before it was
    /// stored, and for bridge mode, where the bridge takes the uplink's.
    #[serde(default)]
    pub gateway_mac: Option<Mac>,
    /// 802.1Q VLAN id on `uplink`.
    #[serde(default)]
    pub vlan: Option<u16>,
    /// How the VLAN is realized (Some exactly when `vlan` is).
    #[serde(default)]
    pub vlan_backend: Option<VlanBackend>,
    /// The nova-network manager this network follows, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<Manager>,
    /// The bridge existed and is not lanyard's (a flat network's given
    /// bridge): lanyard adds its gateway address and ports to it and takes
    /// them away again, and never creates, changes or deletes the bridge.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
    /// Its project denies egress (`lanyard project set P --egress deny`):
    /// its guests start no connection beyond their own network; DHCP, DNS
    /// and replies to connections made to them still flow.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub egress_denied: bool,
    /// DHCP lease time in seconds; None: the default, one hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_time: Option<u32>,
    /// How it spans the hosts of a cluster, as asked (`--overlay`); None:
    /// the default for its kind (see `planner::overlay::spans`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<OverlayKind>,
}

impl Network {
    /// This network with `patch` applied, checked as `net create` checks
    /// the same fields.
    pub fn edited(&self, patch: &NetworkPatch) -> Result<Network, ModelError> {
        let fixed = [
            ("subnet", &patch.subnet),
            ("gateway", &patch.gateway),
            ("mode", &patch.mode),
            ("bridge", &patch.bridge),
            ("mtu", &patch.mtu),
            ("name", &patch.name),
        ];
        if let Some((what, v)) = fixed.iter().find(|(_, v)| v.is_some()) {
            let value = match v {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            return Err(invalid(
                what,
                value,
                format!(
                    "a network's {what} cannot be changed (its bridge, addresses and guests depend on it); \
                     create another network; `net edit` changes autostart, domain, DHCP range and lease time"
                ),
            ));
        }
        let mut net = self.clone();
        if self.mode == Mode::Bridge
            && (patch.domain.is_some() || patch.dhcp_range.is_some() || patch.lease_time.is_some())
        {
            return Err(invalid(
                "option",
                "bridge",
                "a bridge-mode network's guests are served by the LAN's DHCP server; only autostart can be changed",
            ));
        }
        if let Some(a) = patch.autostart {
            net.autostart = a;
        }
        if let Some(d) = &patch.domain {
            validate_domain(d)?;
            net.domain = d.clone();
        }
        if let Some(r) = &patch.dhcp_range {
            net.dhcp_range = parse_dhcp_range(r, self.subnet, self.gateway)?;
        }
        if let Some(t) = patch.lease_time {
            net.lease_time = Some(validate_lease_time(t)?);
        }
        Ok(net)
    }

    /// The network's key inside lanyard (store rows, ports' `net`, leases,
    /// ownership marks, logs): see [`network_key`].
    pub fn key(&self) -> Cow<'_, str> {
        network_key(&self.project, &self.name)
    }

    /// Whether the host has an address on this network (every mode but an
    /// L2-only bridge-mode network on a VLAN).
    pub fn has_host_address(&self) -> bool {
        !(self.mode == Mode::Bridge && self.vlan.is_some())
    }

    /// Whether the uplink NIC itself joins the bridge (bridge mode without
    /// a VLAN, or a flat network's flat interface): the host's addresses
    /// then move to the bridge.
    pub fn enslaves_uplink(&self) -> bool {
        (self.mode == Mode::Bridge || self.manager.is_some()) && self.vlan.is_none() && self.uplink.is_some()
    }

    /// Whether a deleted port's fixed IP waits for its guest's lease to end
    /// before anyone else may have it (nova's disassociate timeout: a
    /// cloud's instances come and go and their addresses are recycled).
    /// libvirt-like networks free it at once, as libvirt does: the port's
    /// link is gone, so its guest cannot use it any more on this host.
    pub fn holds_released_addresses(&self) -> bool {
        self.manager.is_some()
    }

    /// Whether lanyard's DHCP server runs here (not in bridge mode, whose
    /// LAN has its own, nor on a `flat` network, whose guests get their
    /// addresses as cloud-init data).
    pub fn serves_dhcp(&self) -> bool {
        self.mode.serves_dhcp() && self.manager != Some(Manager::Flat)
    }

    /// Whether the network is a VLAN of its uplink's VLAN-filtering bridge
    /// (the `filtering` backend), a bridge it shares with the uplink's
    /// other VLAN networks.
    pub fn filtering(&self) -> bool {
        self.vlan.is_some() && self.vlan_backend == Some(VlanBackend::Filtering)
    }

    /// The interface that carries the host's side of the network: its
    /// gateway address, the DHCP and DNS sockets, the firewall's rules.
    /// The bridge, but for a network on a VLAN-filtering bridge, whose
    /// gateway is on a VLAN device of that bridge (`br-eth0.10`).
    pub fn l3_ifname(&self) -> String {
        match (self.filtering(), self.vlan) {
            (true, Some(vid)) => vlan_ifname(&self.bridge, vid),
            _ => self.bridge.clone(),
        }
    }

    /// The gateway as an interface address, e.g. 192.168.122.1/24.
    pub fn gateway_cidr(&self) -> Ipv4Net {
        Ipv4Net::new(self.gateway, self.subnet.prefix_len()).expect("prefix came from a valid subnet")
    }

    /// Whether the two networks' subnets share any address.
    pub fn subnet_overlaps(&self, other: &Network) -> bool {
        self.subnet.contains(&other.subnet.network()) || other.subnet.contains(&self.subnet.network())
    }

    /// Whether the two networks cannot live on one host: both give the host
    /// an address in overlapping subnets (the host could not tell which
    /// bridge an address is behind). An L2-only network (bridge mode on a
    /// VLAN) shares its subnet with anyone: the seed's experiment puts two
    /// VLANs in one subnet.
    pub fn clashes_with(&self, other: &Network) -> bool {
        self.has_host_address() && other.has_host_address() && self.subnet_overlaps(other)
    }

    /// Whether `ip` may be given to a guest: inside the subnet and neither
    /// the network address, the broadcast address nor the gateway.
    pub fn is_assignable(&self, ip: Ipv4Addr) -> bool {
        self.subnet.contains(&ip) && ip != self.subnet.network() && ip != self.subnet.broadcast() && ip != self.gateway
    }
}

/// The project every installation has: it cannot be deleted, and
/// networks and ports made without `--project` belong to it.
pub const DEFAULT_PROJECT: &str = "default";

fn default_project() -> String {
    DEFAULT_PROJECT.to_string()
}

/// A network's key inside lanyard: its name in the default project,
/// `PROJECT/NAME` in any other. Names never contain '/', so keys are
/// unambiguous, and the default project's keys are the names networks had
/// before projects existed (an upgraded daemon finds its own ownership
/// marks and plans nothing).
pub fn network_key<'a>(project: &str, name: &'a str) -> Cow<'a, str> {
    if project == DEFAULT_PROJECT {
        Cow::Borrowed(name)
    } else {
        Cow::Owned(format!("{project}/{name}"))
    }
}

/// Checks a project name: the rules of network names.
pub fn validate_project_name(name: &str) -> Result<(), ModelError> {
    validate_name("project name", name, IFNAME_MAX)
}

/// The longest project description, in bytes.
pub const DESCRIPTION_MAX: usize = 256;

/// A project as the user asked for it; unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "blue", "description": "the blue team"}))]
pub struct ProjectSpec {
    /// Project name (the rules of network names).
    #[schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,14}$")]
    pub name: String,
    /// Free text for people.
    #[serde(default)]
    pub description: Option<String>,
}

/// A tenant: networks and ports belong to exactly one project, and names
/// are unique within it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Project {
    /// Unique name.
    pub name: String,
    /// Free text for people.
    #[serde(default)]
    pub description: String,
    /// Unix time it was created.
    pub created: u64,
}

impl ProjectSpec {
    /// Validates the spec; `now` is the creation time.
    pub fn validate(&self, now: u64) -> Result<Project, ModelError> {
        validate_project_name(&self.name)?;
        let description = self.description.clone().unwrap_or_default();
        if description.len() > DESCRIPTION_MAX {
            return Err(invalid(
                "description",
                &description,
                format!("is {} bytes, at most {DESCRIPTION_MAX} are allowed", description.len()),
            ));
        }
        if let Some(c) = description.chars().find(|c| c.is_control()) {
            return Err(invalid("description", &description, format!("contains the control character {c:?}")));
        }
        Ok(Project { name: self.name.clone(), description, created: now })
    }
}

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// Checks that `name` is 1..=`max` bytes of letters, digits, `-`, `_` and
/// `.` that begins with a letter or a digit: safe as an interface name, a
/// file name (never `.`, `..` or hidden) and an argument (never taken for an
/// option), whatever it is used for.
fn validate_name(what: &'static str, name: &str, max: usize) -> Result<(), ModelError> {
    if name.is_empty() {
        return Err(invalid(what, name, "must not be empty"));
    }
    if name.len() > max {
        return Err(invalid(what, name, format!("is {} bytes, at most {max} are allowed", name.len())));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(invalid(what, name, format!("contains {c:?}; use letters, digits, '-', '_' or '.'")));
    }
    if let Some(c) = name.chars().next().filter(|c| !c.is_ascii_alphanumeric()) {
        return Err(invalid(what, name, format!("begins with {c:?}; it must begin with a letter or a digit")));
    }
    Ok(())
}

/// Checks an interface name (the kernel's limit is 15 bytes).
pub fn validate_ifname(what: &'static str, name: &str) -> Result<(), ModelError> {
    validate_name(what, name, IFNAME_MAX)
}

/// Checks a network namespace reference: a name under /run/netns (CNI and
/// podman use names like `cni-<uuid>`, so up to 255 bytes), or a process's
/// namespace as `/proc/PID/ns/net` (what container runtimes hand out).
pub fn validate_netns(name: &str) -> Result<(), ModelError> {
    if let Some(pid) = name.strip_prefix("/proc/").and_then(|r| r.strip_suffix("/ns/net")) {
        if !pid.is_empty() && pid.len() <= 10 && pid.bytes().all(|b| b.is_ascii_digit()) && pid != "0" {
            return Ok(());
        }
        return Err(invalid("netns", name, "give a namespace name, a PID or /proc/PID/ns/net"));
    }
    validate_name("netns", name, 255)
}

/// The netns a request names, as it is stored: a PID (digits only) is
/// the process's namespace, `/proc/PID/ns/net`; anything else as given.
pub fn netns_reference(given: &str) -> String {
    if !given.is_empty() && given.len() <= 10 && given.bytes().all(|b| b.is_ascii_digit()) {
        format!("/proc/{given}/ns/net")
    } else {
        given.to_string()
    }
}

/// Whether a (validated) netns reference names a process's namespace
/// rather than one under /run/netns.
pub fn netns_is_process(ns: &str) -> bool {
    ns.starts_with("/proc/")
}

/// The file of a (validated) netns reference: `/proc/PID/ns/net` as it
/// is, a name under /run/netns.
pub fn netns_path(ns: &str) -> String {
    if netns_is_process(ns) {
        ns.to_string()
    } else {
        format!("/run/netns/{ns}")
    }
}

/// Checks a VM name: up to 63 bytes (a DNS label), since it becomes the
/// guest's host name.
pub fn validate_vm_name(name: &str) -> Result<(), ModelError> {
    validate_name("vm name", name, 63)
}

fn parse_subnet(s: &str) -> Result<Ipv4Net, ModelError> {
    let net: Ipv4Net = s.parse().map_err(|_| invalid("subnet", s, "write an IPv4 CIDR such as 192.168.122.0/24"))?;
    if net.prefix_len() > 30 {
        return Err(invalid("subnet", s, "needs a prefix of /30 or shorter to hold a gateway and a guest"));
    }
    if net.prefix_len() < 8 {
        return Err(invalid("subnet", s, "a prefix shorter than /8 is not a VM network"));
    }
    if net != net.trunc() {
        return Err(invalid("subnet", s, format!("has host bits set; did you mean {}?", net.trunc())));
    }
    let a = net.network();
    if a.is_loopback() || a.is_multicast() || a.is_unspecified() || a.is_broadcast() || a.octets()[0] >= 240 {
        return Err(invalid("subnet", s, "is not a unicast range usable for guests"));
    }
    // Link-local addresses are what a host gives itself without DHCP
    // (APIPA): routers never forward them, so NAT and routing cannot work.
    let link_local: Ipv4Net = "169.254.0.0/16".parse().expect("a CIDR");
    if link_local.contains(&a) || net.contains(&link_local.network()) {
        return Err(invalid("subnet", s, "overlaps 169.254.0.0/16, the link-local range hosts give themselves"));
    }
    Ok(net)
}

/// A DHCP range "FIRST-LAST" for `subnet` with `gateway`: inside its host
/// addresses, in order, and without the gateway.
fn parse_dhcp_range(r: &str, subnet: Ipv4Net, gateway: Ipv4Addr) -> Result<DhcpRange, ModelError> {
    let r: DhcpRange = r.parse()?;
    let shown = format!("{}-{}", r.first, r.last);
    let in_hosts = |ip: Ipv4Addr| ip != subnet.network() && ip != subnet.broadcast() && subnet.contains(&ip);
    if !in_hosts(r.first) || !in_hosts(r.last) {
        return Err(invalid("dhcp range", shown, format!("must lie within the host addresses of {subnet}")));
    }
    if r.first > r.last {
        return Err(invalid("dhcp range", shown, "first address is after the last"));
    }
    // The gateway is the host's; a guest leased it would cut the network off.
    if (r.first..=r.last).contains(&gateway) {
        return Err(invalid("dhcp range", shown, format!("holds the gateway {gateway}; give a range without it")));
    }
    Ok(r)
}

fn parse_ip(what: &'static str, s: &str) -> Result<Ipv4Addr, ModelError> {
    s.parse().map_err(|_| invalid(what, s, "write an IPv4 address such as 192.168.122.1"))
}

impl NetworkSpec {
    /// Refuses options a bridge-mode network has no use for: the LAN's own
    /// router and DHCP server give guests their gateway, addresses and
    /// domain, and lanyard serves neither DHCP nor DNS there.
    pub fn check_bridge_options(&self) -> Result<(), ModelError> {
        if self.mode()? != Mode::Bridge {
            return Ok(());
        }
        let lease_time = self.lease_time.map(|t| t.to_string());
        let given = [
            ("--gateway", &self.gateway),
            ("--dhcp-range", &self.dhcp_range),
            ("--domain", &self.domain),
            ("--lease-time", &lease_time),
        ];
        match given.iter().find(|(_, v)| v.is_some()) {
            Some((flag, v)) => Err(invalid(
                "option",
                format!("{flag} {}", v.as_deref().unwrap_or_default()),
                format!(
                    "{flag} means nothing in bridge mode: the LAN's router and DHCP server serve its guests; leave it out"
                ),
            )),
            None => Ok(()),
        }
    }

    /// The mode asked for; a network with a manager is nat (nova's flat
    /// networks NAT to the outside through the host).
    pub fn mode(&self) -> Result<Mode, ModelError> {
        let manager = self.manager.as_deref().map(str::parse::<Manager>).transpose()?;
        match (manager, self.mode.as_str()) {
            (Some(_), "" | "nat") => Ok(Mode::Nat),
            (Some(m), other) => {
                Err(invalid("mode", other, format!("a {m} network is a nat network; leave out --mode")))
            }
            (None, m) => m.parse(),
        }
    }

    /// Validates the spec on its own and fills in defaults.
    /// `default_bridge` is used when no bridge was named.
    pub fn validate(&self, default_bridge: impl FnOnce() -> String) -> Result<Network, ModelError> {
        validate_ifname("network name", &self.name)?;
        let project = self.project.as_deref().unwrap_or(DEFAULT_PROJECT);
        validate_project_name(project)?;
        let manager = self.manager.as_deref().map(str::parse::<Manager>).transpose()?;
        let mode = self.mode()?;
        if manager.is_some() && self.vlan.is_some() {
            return Err(invalid(
                "manager",
                manager.map(|m| m.to_string()).unwrap_or_default(),
                "flat networks have no VLAN; leave out --vlan",
            ));
        }
        if mode == Mode::Bridge && self.uplink.is_none() {
            return Err(invalid("uplink", "", "bridge mode needs --uplink IF, the NIC that joins the bridge"));
        }
        if self.subnet.is_empty() {
            return Err(ModelError::Missing(format!(
                "a {mode} network needs --subnet CIDR, e.g. --subnet 192.168.122.0/24"
            )));
        }
        let subnet = parse_subnet(&self.subnet)?;
        let first_host = u32::from(subnet.network()) + 1;
        let last_host = u32::from(subnet.broadcast()) - 1;
        let gateway = match &self.gateway {
            Some(g) => parse_ip("gateway", g)?,
            None => Ipv4Addr::from(first_host),
        };
        let in_hosts = |ip: Ipv4Addr| (first_host..=last_host).contains(&u32::from(ip));
        if !in_hosts(gateway) {
            return Err(invalid("gateway", gateway, format!("is not a host address of {subnet}")));
        }
        let dhcp_range = match &self.dhcp_range {
            Some(r) => parse_dhcp_range(r, subnet, gateway)?,
            None => {
                // The upper half of the host addresses (.128-.254 in a /24);
                // ports' fixed IPs come from the lower half first. libvirt
                // hands out .2-.254, but then guests that ask for addresses
                // can take every address provisioning needs for new ports.
                let mid = first_host + (last_host - first_host).div_ceil(2);
                let (mut first, mut last) = (mid, last_host);
                if u32::from(gateway) == last {
                    last -= 1;
                }
                if u32::from(gateway) == first && first < last {
                    first += 1;
                }
                DhcpRange { first: first.into(), last: last.max(first).into() }
            }
        };
        let bridge = match &self.bridge {
            Some(b) => {
                validate_ifname("bridge name", b)?;
                b.clone()
            }
            None => default_bridge(),
        };
        if let Some(mtu) = self.mtu {
            if !(576..=65535).contains(&mtu) {
                return Err(invalid("mtu", mtu, "must be between 576 and 65535"));
            }
        }
        let domain = self.domain.clone().unwrap_or_else(|| self.name.clone());
        validate_domain(&domain)?;
        let lease_time = self.lease_time.map(validate_lease_time).transpose()?;
        if let Some(v) = self.vlan {
            if !(1..=VLAN_MAX).contains(&v) {
                return Err(invalid("vlan", v, format!("VLAN ids are 1 to {VLAN_MAX}")));
            }
            if self.uplink.is_none() {
                return Err(invalid("vlan", v, "--vlan needs --uplink IF, the trunk the VLAN rides on"));
            }
        }
        let vlan_backend = match (&self.vlan_backend, self.vlan) {
            (Some(b), Some(_)) => Some(b.parse::<VlanBackend>()?),
            (None, Some(_)) => Some(VlanBackend::Subif),
            (Some(b), None) => {
                return Err(invalid("vlan backend", b, "--vlan-backend applies to networks with --vlan"))
            }
            (None, None) => None,
        };
        let overlay = self.overlay.as_deref().map(str::parse::<OverlayKind>).transpose()?;
        match overlay {
            Some(OverlayKind::Vlan) if self.vlan.is_none() => {
                return Err(invalid(
                    "overlay",
                    "vlan",
                    "--overlay vlan spans the hosts over the network's VLAN: add --vlan ID --uplink IF",
                ))
            }
            Some(OverlayKind::Vxlan) if self.vlan.is_some() || self.uplink.is_some() => {
                return Err(invalid(
                    "overlay",
                    "vxlan",
                    "a network with --uplink or --vlan is on the physical network already: use --overlay vlan \
                     (with --vlan) or none",
                ))
            }
            _ => {}
        }
        let uplink = match (&self.uplink, mode, self.vlan) {
            (Some(u), _, _) if manager.is_some() => {
                validate_ifname("uplink", u)?;
                Some(u.clone())
            }
            (Some(u), Mode::Bridge, _) | (Some(u), _, Some(_)) => {
                validate_ifname("uplink", u)?;
                Some(u.clone())
            }
            (None, Mode::Bridge, _) | (None, _, Some(_)) => {
                return Err(invalid("uplink", "", "bridge mode and --vlan need --uplink IF"))
            }
            (Some(u), _, None) => {
                return Err(invalid(
                    "uplink",
                    u,
                    "--uplink applies to bridge mode, a network with --vlan, or a flat network's flat interface",
                ))
            }
            (None, _, None) => None,
        };
        Ok(Network {
            name: self.name.clone(),
            project: project.to_string(),
            mode,
            subnet,
            gateway,
            dhcp_range,
            bridge,
            mtu: self.mtu,
            domain,
            autostart: self.autostart.unwrap_or(false),
            state: NetState::Active,
            // Bridge mode takes the uplink's MAC, and so does a filtering
            // network's gateway: its VLAN device keeps the shared bridge's
            // MAC, which the bridge delivers to itself on every VLAN of its
            // own (a MAC of its own would make the bridge flood the
            // gateway's frames to every port of the VLAN).
            gateway_mac: (mode != Mode::Bridge || self.vlan.is_some())
                .then(Mac::new_gateway)
                .filter(|_| vlan_backend != Some(VlanBackend::Filtering)),
            uplink,
            vlan: self.vlan,
            vlan_backend,
            manager,
            adopted: false,
            egress_denied: false,
            lease_time,
            overlay,
        })
    }
}

/// The shortest and longest DHCP lease times taken: dnsmasq's minimum
/// (shorter ones flood the server with renewals) and a year.
pub const LEASE_TIME_RANGE: std::ops::RangeInclusive<u32> = 120..=31_536_000;

/// Checks a DHCP lease time in seconds.
pub fn validate_lease_time(secs: u32) -> Result<u32, ModelError> {
    if LEASE_TIME_RANGE.contains(&secs) {
        Ok(secs)
    } else {
        Err(invalid("lease time", secs, "give seconds from 120 (two minutes) to 31536000 (a year)"))
    }
}

fn validate_domain(d: &str) -> Result<(), ModelError> {
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(invalid("domain", d, "must be a DNS name made of labels of letters, digits and '-'"))
    }
}

/// A 48-bit Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// QEMU's locally administered prefix, used for every generated address.
    pub const QEMU_OUI: [u8; 3] = [0x52, 0x54, 0x00];

    /// A random address in 52:54:00:xx:xx:xx.
    pub fn random_qemu() -> Mac {
        let tail: [u8; 3] = rand::random();
        Mac([0x52, 0x54, 0x00, tail[0], tail[1], tail[2]])
    }

    /// A new gateway (bridge) MAC: locally administered unicast (02:),
    /// then `4c:59` ("LY"), then three random bytes. Random, not derived
    /// from the network's name: two hosts on one trunk often have networks
    /// of the same name, and two bridges with one MAC on one segment take
    /// each other's frames. Chosen once and stored with the network.
    pub fn new_gateway() -> Mac {
        let tail: [u8; 3] = rand::random();
        Mac([0x02, 0x4c, 0x59, tail[0], tail[1], tail[2]])
    }

    /// The MAC given to the host side of a TAP: libvirt's convention of
    /// replacing the first byte with 0xfe, so the bridge never picks the
    /// guest's address as its own and the two never collide.
    pub fn host_side(self) -> Mac {
        let mut b = self.0;
        b[0] = 0xfe;
        Mac(b)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl FromStr for Mac {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| invalid("mac", s, why);
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(bad("write six hex bytes separated by ':', e.g. 52:54:00:12:34:56"));
        }
        let mut b = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            // Not from_str_radix alone: it takes a sign ("+a").
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad("each byte is two hex digits"));
            }
            b[i] = u8::from_str_radix(p, 16).map_err(|_| bad("each byte is two hex digits"))?;
        }
        if b[0] & 1 == 1 {
            return Err(bad("is a multicast address; a NIC needs a unicast one"));
        }
        if b == [0; 6] {
            return Err(bad("is all zeros"));
        }
        Ok(Mac(b))
    }
}

/// A MAC as the API writes it (`52:54:00:12:34:56`); it reads any case.
impl utoipa::PartialSchema for Mac {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$"))
            .examples(["52:54:00:12:34:56"])
            .into()
    }
}

impl utoipa::ToSchema for Mac {}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What kind of device a port's host side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PortType {
    /// A persistent TAP that QEMU, Cloud Hypervisor or Firecracker opens.
    Tap,
    /// A veth pair whose peer lives in another network namespace.
    Veth,
}

impl fmt::Display for PortType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PortType::Tap => "tap",
            PortType::Veth => "veth",
        })
    }
}

impl FromStr for PortType {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tap" => Ok(PortType::Tap),
            "veth" => Ok(PortType::Veth),
            _ => Err(invalid("port type", s, "use tap or veth")),
        }
    }
}

/// A port as the user asked for it; unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"net": "default", "vm": "web1"}))]
pub struct PortSpec {
    /// Network to attach to (a name in `project`); empty: the project's
    /// VLAN-manager network, made on first use.
    #[serde(default)]
    pub net: String,
    /// The project of the network (default [`DEFAULT_PROJECT`]); the port
    /// belongs to it too.
    #[serde(default)]
    pub project: Option<String>,
    /// Name of the VM that owns the port.
    pub vm: String,
    /// "tap" (default) or "veth".
    #[serde(default, rename = "type")]
    #[schema(pattern = r"^(tap|veth)$")]
    pub port_type: Option<String>,
    /// For veth: namespace the peer moves into.
    #[serde(default)]
    pub netns: Option<String>,
    /// For veth: the peer's name inside `netns`.
    #[serde(default)]
    pub ifname: Option<String>,
    /// Guest MAC; default random in 52:54:00.
    #[serde(default)]
    pub mac: Option<String>,
    /// Fixed IP; default the lowest free address.
    #[serde(default)]
    pub ip: Option<String>,
    /// For tap: user allowed to open the TAP.
    #[serde(default)]
    pub owner: Option<String>,
    /// For tap: group allowed to open the TAP.
    #[serde(default)]
    pub group: Option<String>,
    /// For tap: adopt this existing TAP (one QEMU created, via `qemu-ifup`)
    /// instead of creating one.
    #[serde(default)]
    pub adopt: Option<String>,
    /// A trunk port: the VLAN networks whose frames the guest receives
    /// tagged (a router or firewall VM).
    #[serde(default)]
    pub trunk: Option<Vec<String>>,
    /// Whether the guest's untagged frames are `net`'s (default true). A
    /// trunk port without a native network has none: its `net` is then
    /// only the network it is listed under, and it gets no fixed IP.
    #[serde(default)]
    pub untagged: Option<bool>,
    /// Whether lanyard drops what the guest sends from another MAC or IP
    /// than the port's (default true). False for a router VM, which
    /// forwards others' packets; a trunk port is never checked.
    #[serde(default)]
    pub spoof_check: Option<bool>,
}

/// The parts of a port request that can be checked without any state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedPortSpec {
    /// Device kind.
    pub port_type: PortType,
    /// Requested MAC.
    pub mac: Option<Mac>,
    /// Requested fixed IP.
    pub ip: Option<Ipv4Addr>,
    /// Veth peer placement.
    pub peer: Option<(String, String)>,
    /// Existing TAP to adopt.
    pub adopt: Option<String>,
}

impl PortSpec {
    /// Validates the spec's own fields.
    pub fn check(&self) -> Result<CheckedPortSpec, ModelError> {
        validate_ifname("network name", &self.net)?;
        validate_project_name(self.project.as_deref().unwrap_or(DEFAULT_PROJECT))?;
        validate_vm_name(&self.vm)?;
        let port_type = match &self.port_type {
            Some(t) => t.parse()?,
            None => PortType::Tap,
        };
        let mac = self.mac.as_deref().map(str::parse).transpose()?;
        let ip = self.ip.as_deref().map(|s| parse_ip("ip", s)).transpose()?;
        let peer = match (port_type, &self.netns, &self.ifname) {
            (PortType::Veth, Some(ns), Some(ifn)) => {
                let ns = netns_reference(ns);
                validate_netns(&ns)?;
                validate_ifname("ifname", ifn)?;
                Some((ns, ifn.clone()))
            }
            (PortType::Veth, _, _) => {
                return Err(invalid("port", "veth", "a veth port needs --netns NS and --ifname IF"));
            }
            (PortType::Tap, None, None) => None,
            (PortType::Tap, _, _) => {
                return Err(invalid("port", "tap", "--netns/--ifname apply to veth ports only"));
            }
        };
        if port_type == PortType::Veth && (self.owner.is_some() || self.group.is_some()) {
            return Err(invalid("port", "veth", "--owner/--group apply to tap ports only"));
        }
        for (what, v) in [("owner", &self.owner), ("group", &self.group)] {
            if let Some(v) = v {
                // Linux user and group names are at most 32 bytes.
                validate_name(what, v, 32)?;
            }
        }
        if let Some(trunk) = &self.trunk {
            if trunk.is_empty() {
                return Err(invalid("trunk", "", "name at least one VLAN network"));
            }
            for (i, n) in trunk.iter().enumerate() {
                validate_ifname("trunk network", n)?;
                if trunk[..i].contains(n) {
                    return Err(invalid("trunk", n, "is named twice"));
                }
            }
        }
        if self.untagged == Some(false) && self.trunk.is_none() {
            return Err(invalid("port", &self.net, "a port without untagged frames must be a trunk (--trunk)"));
        }
        if self.untagged == Some(false) && self.ip.is_some() {
            return Err(invalid(
                "ip",
                self.ip.as_deref().unwrap_or_default(),
                "a trunk port without a native network has no fixed IP",
            ));
        }
        let adopt = match (&self.adopt, port_type) {
            (Some(a), PortType::Tap) => {
                validate_ifname("tap", a)?;
                Some(a.clone())
            }
            (Some(a), PortType::Veth) => return Err(invalid("tap", a, "only a tap can be adopted")),
            (None, _) => None,
        };
        Ok(CheckedPortSpec { port_type, mac, ip, peer, adopt })
    }
}

/// A VM's attachment to a network, with its fixed address for life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Port {
    /// Short unique id (8 hex digits).
    pub id: String,
    /// The project it belongs to (its network's); records written before
    /// projects existed are the default project's.
    #[serde(default = "default_project")]
    pub project: String,
    /// Network it belongs to, by key ([`network_key`]).
    pub net: String,
    /// Owning VM's name.
    pub vm: String,
    /// Device kind.
    #[serde(rename = "type")]
    pub port_type: PortType,
    /// Host-side interface name (`ly` + id), a port of the bridge.
    pub ifname: String,
    /// Guest MAC.
    pub mac: Mac,
    /// Fixed IP, served as a static DHCP lease; none on bridge-mode
    /// networks, where the LAN's DHCP server decides.
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub ip: Option<Ipv4Addr>,
    /// Veth only: namespace of the peer.
    pub netns: Option<String>,
    /// Veth only: the peer's name in `netns`.
    pub peer_ifname: Option<String>,
    /// Tap only: owner allowed to open it.
    pub owner: Option<String>,
    /// Tap only: group allowed to open it.
    pub group: Option<String>,
    /// A TAP lanyard did not create (QEMU's, via `qemu-ifup`): lanyard
    /// attaches it but never creates or deletes it.
    #[serde(default)]
    pub adopted: bool,
    /// A trunk port: the VLAN networks carried tagged to the guest (keys,
    /// all in the port's project).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trunk: Vec<String>,
    /// Whether the guest's untagged frames are `net`'s.
    #[serde(default = "yes")]
    pub untagged: bool,
    /// Whether the bridge drops what the guest sends from another MAC or
    /// IP than the port's (see docs/anti-spoofing.md). Records written
    /// before it existed are checked. Always false on a trunk port: its
    /// frames carry other VLANs' sources.
    #[serde(default = "yes")]
    pub spoof_check: bool,
    /// The cluster node whose host carries the port (`--node` of the
    /// daemon it was created through); only that host makes its device.
    /// None on a single host, and on records written before nodes: those
    /// belong to whichever host reads them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

fn yes() -> bool {
    true
}

impl Port {
    /// Host-side interface name for a port id.
    pub fn ifname_for(id: &str) -> String {
        format!("ly{id}")
    }

    /// The QEMU arguments that attach a guest NIC to this (tap) port.
    pub fn qemu_args(&self) -> Option<String> {
        (self.port_type == PortType::Tap).then(|| {
            format!(
                "-netdev tap,id=net-{id},ifname={ifn},script=no,downscript=no -device virtio-net-pci,netdev=net-{id},mac={mac}",
                id = self.id,
                ifn = self.ifname,
                mac = self.mac
            )
        })
    }

    /// [`Port::qemu_args`] for a port on a network of MTU `mtu`: above
    /// Ethernet's 1500, `host_mtu=` tells the guest's virtio-net driver
    /// the larger MTU, which it would not use otherwise.
    pub fn qemu_args_on(&self, mtu: Option<u32>) -> Option<String> {
        let args = self.qemu_args()?;
        Some(match mtu.filter(|m| *m > 1500) {
            Some(m) => format!("{args},host_mtu={m}"),
            None => args,
        })
    }
}

/// One DHCP lease, in the shape of dnsmasq's lease file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Lease {
    /// Network the lease belongs to, by key ([`network_key`]).
    pub net: String,
    /// Unix time the lease ends.
    pub expiry: u64,
    /// Client MAC.
    pub mac: Mac,
    /// Leased address.
    #[schema(value_type = String, format = Ipv4)]
    pub ip: Ipv4Addr,
    /// Host name the client sent, if any.
    pub hostname: Option<String>,
    /// Client identifier (option 61), hex.
    pub client_id: Option<String>,
    /// "static" when the address is a port's fixed IP.
    pub kind: LeaseKind,
}

/// Whether a lease holds a port's fixed IP or a pool address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LeaseKind {
    /// A port's fixed IP.
    Static,
    /// From the dynamic range.
    Dynamic,
}

/// A TAP port of the default project for unit tests across modules:
/// `ly<id>`, MAC 52:54:00:00:00:01, no fixed IP; tests change what they need
/// with struct update syntax.
#[cfg(test)]
pub(crate) fn test_port(id: &str, net: &str) -> Port {
    Port {
        id: id.into(),
        project: DEFAULT_PROJECT.into(),
        net: net.into(),
        vm: "vm".into(),
        port_type: PortType::Tap,
        ifname: Port::ifname_for(id),
        mac: Mac([0x52, 0x54, 0, 0, 0, 1]),
        ip: None,
        netns: None,
        peer_ifname: None,
        owner: None,
        group: None,
        adopted: false,
        trunk: Vec::new(),
        untagged: true,
        spoof_check: true,
        node: None,
    }
}

/// A valid NAT network for unit tests across modules.
#[cfg(test)]
pub(crate) fn test_network(name: &str, subnet: &str, bridge: &str) -> Network {
    NetworkSpec { name: name.into(), mode: "nat".into(), subnet: subnet.into(), ..Default::default() }
        .validate(|| bridge.into())
        .expect("a valid test network")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(subnet: &str) -> NetworkSpec {
        NetworkSpec { name: "default".into(), mode: "nat".into(), subnet: subnet.into(), ..Default::default() }
    }

    #[test]
    fn defaults_follow_libvirt_but_keep_half_for_ports() {
        let n = spec("192.168.122.0/24").validate(|| "lybr0".into()).unwrap();
        assert_eq!(n.gateway, Ipv4Addr::new(192, 168, 122, 1));
        assert_eq!(n.dhcp_range.first, Ipv4Addr::new(192, 168, 122, 128));
        assert_eq!(n.dhcp_range.last, Ipv4Addr::new(192, 168, 122, 254));
        assert_eq!(n.bridge, "lybr0");
        assert_eq!(n.domain, "default");
        assert_eq!(n.gateway_cidr().to_string(), "192.168.122.1/24");
    }

    #[test]
    fn rejects_bad_subnets() {
        for s in ["banana", "10.0.0.0/33", "10.0.0.1/24", "127.0.0.0/8", "224.0.0.0/24", "10.0.0.0/31", "", "10.0.0.0"]
        {
            assert!(spec(s).validate(|| "b".into()).is_err(), "{s} accepted");
        }
    }

    #[test]
    fn gateway_and_range_must_be_inside() {
        let mut s = spec("10.1.0.0/24");
        s.gateway = Some("10.2.0.1".into());
        assert!(s.validate(|| "b".into()).is_err());
        s.gateway = Some("10.1.0.0".into());
        assert!(s.validate(|| "b".into()).is_err());
        s.gateway = Some("10.1.0.255".into());
        assert!(s.validate(|| "b".into()).is_err());
        let mut s = spec("10.1.0.0/24");
        s.dhcp_range = Some("10.1.0.50-10.1.1.10".into());
        assert!(s.validate(|| "b".into()).is_err());
        s.dhcp_range = Some("10.1.0.60-10.1.0.50".into());
        assert!(s.validate(|| "b".into()).is_err());
        s.dhcp_range = Some("10.1.0.50".into());
        assert!(s.validate(|| "b".into()).is_err());
        s.dhcp_range = Some("10.1.0.50-10.1.0.60".into());
        assert!(s.validate(|| "b".into()).is_ok());
        // A range over the gateway would lease it to a guest.
        for r in ["10.1.0.1-10.1.0.20", "10.1.0.1-10.1.0.1"] {
            s.dhcp_range = Some(r.into());
            let e = s.validate(|| "b".into()).unwrap_err().to_string();
            assert!(e.contains("holds the gateway 10.1.0.1"), "{e}");
        }
        s.gateway = Some("10.1.0.55".into());
        s.dhcp_range = Some("10.1.0.50-10.1.0.60".into());
        assert!(s.validate(|| "b".into()).is_err());
    }

    #[test]
    fn a_netns_is_a_name_a_pid_or_a_process_path() {
        for ok in ["vm1", "cni-1234-abcd", "/proc/1/ns/net", "/proc/4194304/ns/net"] {
            assert!(validate_netns(ok).is_ok(), "{ok}");
        }
        for bad in [
            "/proc/abc/ns/net",
            "/proc//ns/net",
            "/proc/0/ns/net",
            "/proc/1/ns/../../etc",
            "/etc/passwd",
            "/run/netns/x",
        ] {
            assert!(validate_netns(bad).is_err(), "{bad}");
        }
        assert_eq!(netns_reference("4242"), "/proc/4242/ns/net");
        assert_eq!(netns_reference("vm1"), "vm1");
        assert_eq!(netns_path("/proc/7/ns/net"), "/proc/7/ns/net");
        assert_eq!(netns_path("vm1"), "/run/netns/vm1");
    }

    #[test]
    fn lease_times_are_kept_within_reason() {
        assert_eq!(spec("10.1.0.0/24").validate(|| "b".into()).unwrap().lease_time, None);
        let mut s = spec("10.1.0.0/24");
        s.lease_time = Some(86_400);
        assert_eq!(s.validate(|| "b".into()).unwrap().lease_time, Some(86_400));
        for bad in [0, 119, 31_536_001] {
            s.lease_time = Some(bad);
            let e = s.validate(|| "b".into()).unwrap_err().to_string();
            assert!(e.starts_with(&format!("invalid lease time \"{bad}\": give seconds from 120")), "{e}");
        }
    }

    #[test]
    fn missing_or_link_local_subnets_are_named() {
        let e = spec("").validate(|| "b".into()).unwrap_err().to_string();
        assert_eq!(e, "a nat network needs --subnet CIDR, e.g. --subnet 192.168.122.0/24");
        for s in ["169.254.0.0/16", "169.254.10.0/24", "169.0.0.0/8"] {
            let e = spec(s).validate(|| "b".into()).unwrap_err().to_string();
            assert!(e.contains("link-local"), "{s}: {e}");
        }
    }

    #[test]
    fn bridge_mode_refuses_what_only_lanyard_served_networks_use() {
        let mut s = NetworkSpec { mode: "bridge".into(), uplink: Some("eth0".into()), ..spec("") };
        assert!(s.check_bridge_options().is_ok());
        for (flag, set) in [
            ("--gateway", (|s: &mut NetworkSpec| s.gateway = Some("10.0.0.1".into())) as fn(&mut NetworkSpec)),
            ("--dhcp-range", |s| s.dhcp_range = Some("10.0.0.5-10.0.0.9".into())),
            ("--domain", |s| s.domain = Some("lan".into())),
        ] {
            let mut t = s.clone();
            set(&mut t);
            let e = t.check_bridge_options().unwrap_err().to_string();
            assert!(e.contains(&format!("{flag} means nothing in bridge mode")), "{e}");
        }
        s.mode = "nat".into();
        s.domain = Some("lan".into());
        assert!(s.check_bridge_options().is_ok());
    }

    #[test]
    fn gateway_elsewhere_moves_default_range() {
        let mut s = spec("10.1.0.0/24");
        s.gateway = Some("10.1.0.254".into());
        let n = s.validate(|| "b".into()).unwrap();
        assert_eq!(n.dhcp_range.first, Ipv4Addr::new(10, 1, 0, 128));
        assert_eq!(n.dhcp_range.last, Ipv4Addr::new(10, 1, 0, 253));
        for (subnet, first, last) in [("10.1.0.0/30", 2, 2), ("10.1.0.0/29", 4, 6), ("10.1.0.0/28", 8, 14)] {
            let n = spec(subnet).validate(|| "b".into()).unwrap();
            let r = (n.dhcp_range.first.octets()[3], n.dhcp_range.last.octets()[3]);
            assert_eq!(r, (first, last), "{subnet}");
        }
    }

    #[test]
    fn interface_names() {
        for ok in ["default", "br0", "a-b_c.d", "fifteen-bytes-x"] {
            validate_ifname("n", ok).unwrap();
        }
        for bad in ["", "sixteen-bytes-xx", "a/b", "a b", "a;b", "a'b", "a\"b", "a\tb", "..", "ü"] {
            assert!(validate_ifname("n", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let long = "a".repeat(10_000);
        let e = validate_ifname("network name", &long).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "invalid network name \"{}\"... (10000 bytes): is 10000 bytes, at most 15 are allowed",
                "a".repeat(48)
            )
        );
        let e = validate_ifname("network name", "ab/c").unwrap_err().to_string();
        assert_eq!(e, "invalid network name \"ab/c\": contains '/'; use letters, digits, '-', '_' or '.'");
        let e = validate_vm_name(&"é".repeat(40)).unwrap_err().to_string();
        assert!(e.starts_with(&format!("invalid vm name \"{}\"... (80 bytes)", "é".repeat(24))), "{e}");
    }

    #[test]
    fn names_begin_with_a_letter_or_digit() {
        for ok in ["a", "0", "9lives", "a-", "a_", "a.", "x.-_y"] {
            validate_ifname("n", ok).unwrap();
            validate_netns(ok).unwrap();
            validate_vm_name(ok).unwrap();
        }
        for bad in ["-", "-a", "--help", ".", "..", ".hidden", "_a", "_", "-0"] {
            let e = validate_ifname("network name", bad).unwrap_err().to_string();
            assert!(e.contains("must begin with a letter or a digit") && e.contains("network name"), "{bad:?}: {e}");
            assert!(validate_netns(bad).is_err(), "netns {bad:?} accepted");
            assert!(validate_vm_name(bad).is_err(), "vm {bad:?} accepted");
        }
        // Every name a request carries goes through the same check.
        let net = |f: &dyn Fn(&mut NetworkSpec)| {
            let mut s = NetworkSpec {
                name: "n".into(),
                mode: "nat".into(),
                subnet: "10.9.0.0/24".into(),
                ..Default::default()
            };
            f(&mut s);
            s.validate(|| "b0".into()).unwrap_err().to_string()
        };
        assert!(net(&|s| s.name = "-n".into()).contains("network name"));
        assert!(net(&|s| s.bridge = Some("_br".into())).contains("bridge name"));
        let port = |f: &dyn Fn(&mut PortSpec)| {
            let mut p = PortSpec { net: "n".into(), vm: "vm".into(), ..Default::default() };
            f(&mut p);
            p.check().unwrap_err().to_string()
        };
        assert!(port(&|p| p.net = ".n".into()).contains("network name"));
        assert!(port(&|p| p.vm = "-vm".into()).contains("vm name"));
        assert!(port(&|p| p.owner = Some("-u".into())).contains("owner"));
        assert!(port(&|p| p.group = Some(".g".into())).contains("group"));
        assert!(port(&|p| p.adopt = Some("-tap".into())).contains("tap"));
        let veth = |f: &dyn Fn(&mut PortSpec)| {
            port(&|p| {
                p.port_type = Some("veth".into());
                p.netns = Some("ns".into());
                p.ifname = Some("eth0".into());
                f(p)
            })
        };
        assert!(veth(&|p| p.netns = Some("-ns".into())).contains("netns"));
        assert!(veth(&|p| p.ifname = Some("_eth0".into())).contains("ifname"));
    }

    #[test]
    fn modes_parse_and_unknown_is_refused() {
        for m in Mode::ALL {
            assert_eq!(m.as_str().parse::<Mode>().unwrap(), m);
        }
        let e = "wifi".parse::<Mode>().unwrap_err().to_string();
        assert!(e.contains("wifi") && e.contains("nat"), "{e}");
    }

    #[test]
    fn macs() {
        let m: Mac = "52:54:00:AB:cd:01".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:01");
        assert_eq!(m.host_side().to_string(), "fe:54:00:ab:cd:01");
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52-54-00-ab-cd-01",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "52:54:00:ab:cd:0g",
            "52:54:00:ab:cd:001",
            "52:54:00:+a:00:01",
            "52:54:00:-a:00:01",
            "52:54:00: a:00:01",
            "+2:54:00:ab:cd:01",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad} accepted");
        }
        let r = Mac::random_qemu();
        assert_eq!(&r.0[..3], &Mac::QEMU_OUI);
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let e =
            serde_json::from_str::<NetworkSpec>(r#"{"name":"n","mode":"nat","subnet":"10.0.0.0/24","colour":"red"}"#)
                .unwrap_err()
                .to_string();
        assert!(e.contains("unknown field `colour`") && e.contains("`mtu`"), "{e}");
        let e = serde_json::from_str::<PortSpec>(r#"{"net":"n","vm":"v","macc":"52:54:00:00:00:01"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `macc`") && e.contains("`mac`"), "{e}");
        let p: PortSpec = serde_json::from_str(r#"{"net":"n","vm":"v","type":"tap","adopt":"tap0"}"#).unwrap();
        assert_eq!((p.port_type.as_deref(), p.adopt.as_deref()), (Some("tap"), Some("tap0")));
    }

    #[test]
    fn a_port_recorded_before_anti_spoofing_is_checked() {
        let old = r#"{"id":"0000abcd","net":"default","vm":"v","type":"tap","ifname":"ly0000abcd","mac":"52:54:00:00:00:01","ip":"10.0.0.2","netns":null,"peer_ifname":null,"owner":null,"group":null}"#;
        let p: Port = serde_json::from_str(old).unwrap();
        assert!(p.spoof_check);
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["spoof_check"], true, "the port's JSON shows it");
    }

    #[test]
    fn port_spec_checks() {
        let mut p = PortSpec { net: "default".into(), vm: "vm1".into(), ..Default::default() };
        assert_eq!(p.check().unwrap().port_type, PortType::Tap);
        p.port_type = Some("veth".into());
        assert!(p.check().is_err(), "veth without netns");
        p.netns = Some("ns1".into());
        p.ifname = Some("eth0".into());
        assert!(p.check().is_ok());
        p.ip = Some("10.0.0.300".into());
        assert!(p.check().is_err());
        p.ip = None;
        p.mac = Some("zz".into());
        assert!(p.check().is_err());
        p.mac = None;
        p.vm = "a b".into();
        assert!(p.check().is_err());
    }

    #[test]
    fn network_keys_are_names_in_the_default_project() {
        assert_eq!(network_key(DEFAULT_PROJECT, "private"), "private");
        assert!(matches!(network_key(DEFAULT_PROJECT, "private"), Cow::Borrowed(_)));
        assert_eq!(network_key("blue", "private"), "blue/private");
        let mut n = test_network("private", "10.1.0.0/24", "b0");
        assert_eq!((n.project.as_str(), n.key().as_ref()), ("default", "private"));
        n.project = "blue".into();
        assert_eq!(n.key(), "blue/private");
        // Records written before projects existed are the default project's.
        let mut old = serde_json::to_value(test_network("private", "10.1.0.0/24", "b0")).unwrap();
        old.as_object_mut().unwrap().remove("project");
        let n: Network = serde_json::from_value(old).unwrap();
        assert_eq!(n.project, DEFAULT_PROJECT);
        let p: Port = serde_json::from_str(
            r#"{"id":"0011aabb","net":"n","vm":"v","type":"tap","ifname":"ly0011aabb","mac":"52:54:00:00:00:01",
                "ip":null,"netns":null,"peer_ifname":null,"owner":null,"group":null}"#,
        )
        .unwrap();
        assert_eq!(p.project, DEFAULT_PROJECT);
    }

    #[test]
    fn projects_follow_the_rules_of_network_names() {
        let spec = |name: &str, d: Option<&str>| ProjectSpec { name: name.into(), description: d.map(String::from) };
        let p = spec("blue", Some("the blue team")).validate(7).unwrap();
        assert_eq!((p.name.as_str(), p.description.as_str(), p.created), ("blue", "the blue team", 7));
        for bad in ["", "a/b", "-x", ".hidden", "sixteen-bytes-xx", "a b"] {
            let e = spec(bad, None).validate(0).unwrap_err().to_string();
            assert!(e.starts_with("invalid project name"), "{bad:?}: {e}");
        }
        assert!(spec("p", Some(&"x".repeat(DESCRIPTION_MAX + 1))).validate(0).is_err());
        assert!(spec("p", Some("two\nlines")).validate(0).unwrap_err().to_string().contains("control character"));
        // A network or port request names its project by the same rules.
        let mut n =
            NetworkSpec { name: "n".into(), mode: "nat".into(), subnet: "10.9.0.0/24".into(), ..Default::default() };
        n.project = Some("a/b".into());
        assert!(n.validate(|| "b0".into()).unwrap_err().to_string().starts_with("invalid project name"));
        n.project = Some("blue".into());
        assert_eq!(n.validate(|| "b0".into()).unwrap().key(), "blue/n");
        let p = PortSpec { net: "n".into(), vm: "v".into(), project: Some("-p".into()), ..Default::default() };
        assert!(p.check().unwrap_err().to_string().starts_with("invalid project name"));
    }
}
