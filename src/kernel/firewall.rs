//! nftables as typed values: the table lanyard owns, its sets and maps with
//! their elements, and its chains of rules.
//!
//! The planner builds a [`Table`]; the firewall driver turns it into the
//! kernel's table. After the first apply only elements change
//! ([`ElementChange`]), so a network, a port or a floating IP costs a set
//! element, never a rebuilt ruleset. [`Table::fingerprint`] covers the
//! structure (chains, rules, set declarations) and not the elements: two
//! tables with one fingerprint differ at most in elements.
//!
//! `Display` writes nft's own syntax: the form nft(8) reads, used by the
//! driver and readable in tests and logs.

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::model::Mac;

/// Address family of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4 and IPv6 (routing hooks).
    Inet,
    /// IPv4 only.
    Ip,
    /// Bridged frames (bridge hooks).
    Bridge,
}

impl Family {
    /// nft's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Ip => "ip",
            Family::Bridge => "bridge",
        }
    }
}

/// A table's identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableId {
    /// Family.
    pub family: Family,
    /// Name.
    pub name: String,
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.family.as_str(), self.name)
    }
}

/// The type of one component of a set key or map value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DataType {
    /// An interface name.
    Ifname,
    /// An IPv4 address (or prefix, in an interval set).
    Ipv4Addr,
    /// An Ethernet address.
    EtherAddr,
    /// A TCP/UDP port.
    InetService,
    /// A packet mark.
    Mark,
    /// A transport protocol (`meta l4proto`).
    InetProto,
}

impl DataType {
    fn as_str(self) -> &'static str {
        match self {
            DataType::Ifname => "ifname",
            DataType::Ipv4Addr => "ipv4_addr",
            DataType::EtherAddr => "ether_addr",
            DataType::InetService => "inet_service",
            DataType::Mark => "mark",
            DataType::InetProto => "inet_proto",
        }
    }
}

/// One value in an element, a rule or an anonymous set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    /// An interface name.
    Ifname(String),
    /// An IPv4 address.
    Ip(Ipv4Addr),
    /// An IPv4 prefix (interval sets).
    Net(Ipv4Net),
    /// An IPv4 range that is not a prefix, first to last inclusive
    /// (interval sets; what the kernel may hold when someone else added it).
    Range(Ipv4Addr, Ipv4Addr),
    /// An Ethernet address.
    Mac(Mac),
    /// A port number.
    Port(u16),
    /// A plain number (marks).
    Num(u32),
    /// An Ethernet protocol (`ether type`).
    EtherType(EtherType),
    /// An ICMPv6 message type (`icmpv6 type`).
    Icmpv6Type(Icmpv6Type),
    /// A transport protocol.
    Proto(Proto),
    /// A kind of address as the routing table sees it (`fib ... type`).
    AddrType(AddrType),
}

/// Kinds of address the routing table tells apart (`fib daddr type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddrType {
    /// An address of the host itself (any interface's, the local table).
    Local,
}

/// The transport protocols a rule or an element names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// ICMP.
    Icmp,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// nft's (and the user's) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Icmp => "icmp",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// From the name, or the protocol number nft may print.
    pub fn parse(text: &str) -> Option<Proto> {
        match text {
            "icmp" | "1" => Some(Proto::Icmp),
            "tcp" | "6" => Some(Proto::Tcp),
            "udp" | "17" => Some(Proto::Udp),
            _ => None,
        }
    }
}

/// The Ethernet protocols a rule names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EtherType {
    /// IPv4.
    Ip,
    /// ARP.
    Arp,
    /// IPv6.
    Ip6,
}

/// The ICMPv6 message types a rule names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Icmpv6Type {
    /// A router advertisement (neighbour discovery).
    NdRouterAdvert,
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Interface names are validated (letters, digits, - _ .), so
            // quoting cannot be escaped.
            Value::Ifname(n) => write!(f, "\"{n}\""),
            Value::Ip(ip) => write!(f, "{ip}"),
            Value::Net(n) => write!(f, "{n}"),
            Value::Range(first, last) => write!(f, "{first}-{last}"),
            Value::Mac(m) => write!(f, "{m}"),
            Value::Port(p) => write!(f, "{p}"),
            Value::Num(n) => write!(f, "{n}"),
            Value::EtherType(t) => f.write_str(match t {
                EtherType::Ip => "ip",
                EtherType::Arp => "arp",
                EtherType::Ip6 => "ip6",
            }),
            Value::Icmpv6Type(t) => f.write_str(match t {
                Icmpv6Type::NdRouterAdvert => "nd-router-advert",
            }),
            Value::Proto(p) => f.write_str(p.as_str()),
            Value::AddrType(t) => f.write_str(match t {
                AddrType::Local => "local",
            }),
        }
    }
}

/// One element of a set (`key`) or map (`key : data`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Element {
    /// Key: one value per component of the set's key type.
    pub key: Vec<Value>,
    /// Maps only: the value the key maps to.
    pub data: Vec<Value>,
}

impl Element {
    /// A set element.
    pub fn key(key: Vec<Value>) -> Element {
        Element { key, data: Vec::new() }
    }
}

fn concat(f: &mut fmt::Formatter<'_>, values: &[Value]) -> fmt::Result {
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            f.write_str(" . ")?;
        }
        write!(f, "{v}")?;
    }
    Ok(())
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        concat(f, &self.key)?;
        if !self.data.is_empty() {
            f.write_str(" : ")?;
            concat(f, &self.data)?;
        }
        Ok(())
    }
}

/// A named set, or a map when `data` is not empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    /// Name.
    pub name: String,
    /// Key type, one entry per concatenated component.
    pub key: Vec<DataType>,
    /// Maps only: the value type.
    pub data: Vec<DataType>,
    /// Elements may be prefixes or ranges.
    pub interval: bool,
    /// Filled by rules (`update @set { ... }`), its elements expiring after
    /// this many seconds: per-key state such as a rate meter. lanyard never
    /// writes or reads such a set's elements.
    pub dynamic_timeout: Option<u32>,
    /// Elements, kept sorted so that equal sets compare equal.
    pub elements: BTreeSet<Element>,
}

impl Set {
    /// An empty set.
    pub fn new(name: &str, key: &[DataType], interval: bool) -> Set {
        Set {
            name: name.into(),
            key: key.to_vec(),
            data: Vec::new(),
            interval,
            dynamic_timeout: None,
            elements: BTreeSet::new(),
        }
    }

    /// An empty map from `key` to `data`.
    pub fn map(name: &str, key: &[DataType], data: &[DataType], interval: bool) -> Set {
        Set { data: data.to_vec(), ..Set::new(name, key, interval) }
    }

    fn declaration(&self, f: &mut fmt::Formatter<'_>, with_elements: bool) -> fmt::Result {
        let ty = |t: &[DataType]| t.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(" . ");
        if self.data.is_empty() {
            write!(f, "\tset {} {{ type {};", self.name, ty(&self.key))?;
        } else {
            write!(f, "\tmap {} {{ type {} : {};", self.name, ty(&self.key), ty(&self.data))?;
        }
        match (self.interval, self.dynamic_timeout) {
            (true, None) => f.write_str(" flags interval;")?,
            (false, Some(t)) => write!(f, " flags dynamic,timeout; timeout {t}s;")?,
            (true, Some(t)) => write!(f, " flags interval,dynamic,timeout; timeout {t}s;")?,
            (false, None) => {}
        }
        if with_elements && !self.elements.is_empty() {
            f.write_str(" elements = { ")?;
            for (i, e) in self.elements.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{e}")?;
            }
            f.write_str(" };")?;
        }
        f.write_str(" }\n")
    }
}

/// The type of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainType {
    /// Filtering.
    Filter,
    /// Address translation.
    Nat,
}

/// Where a base chain is hooked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Before routing.
    Prerouting,
    /// To the host.
    Input,
    /// Routed through the host.
    Forward,
    /// From the host.
    Output,
    /// After routing.
    Postrouting,
}

/// Default verdict of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Accept what no rule decided.
    Accept,
    /// Drop what no rule decided.
    Drop,
}

/// A base chain's hook, type, priority and policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    /// Type.
    pub kind: ChainType,
    /// Hook.
    pub hook: Hook,
    /// Priority (filter is 0, srcnat 100, dstnat -100).
    pub priority: i32,
    /// Policy.
    pub policy: Policy,
}

/// A chain: hooked (base) or reached by jumps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Name.
    pub name: String,
    /// Hook, for a base chain.
    pub base: Option<BaseChain>,
    /// Rules, in order.
    pub rules: Vec<Rule>,
}

/// A field of the packet or its metadata that a rule compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Input interface name.
    Iifname,
    /// Output interface name.
    Oifname,
    /// IPv4 source.
    IpSaddr,
    /// IPv4 destination.
    IpDaddr,
    /// UDP destination port.
    UdpDport,
    /// UDP source port.
    UdpSport,
    /// TCP destination port.
    TcpDport,
    /// TCP source port.
    TcpSport,
    /// Ethernet source.
    EtherSaddr,
    /// Ethernet protocol.
    EtherType,
    /// ARP: the sender's Ethernet address (in the ARP header, not the
    /// frame's).
    ArpSaddrEther,
    /// ARP: the sender's IPv4 address.
    ArpSaddrIp,
    /// ARP: the target's IPv4 address (the one asked about).
    ArpDaddrIp,
    /// ICMPv6 message type.
    Icmpv6Type,
    /// Conntrack state.
    CtState,
    /// Conntrack status bits (`ct status dnat`).
    CtStatus,
    /// Bridge family: the bridge a frame came in through.
    Ibrname,
    /// The transport protocol.
    L4Proto,
    /// The transport header's destination port (TCP or UDP).
    ThDport,
    /// The transport header's source port (TCP or UDP).
    ThSport,
    /// The kind of the destination address by a routing lookup
    /// (`fib daddr type`): whether the packet is for the host itself,
    /// on whichever of its addresses, without naming them.
    FibDaddrType,
    /// Conntrack: the source of the connection's first packet.
    CtOriginalIpSaddr,
    /// Conntrack: the destination of the connection's first packet.
    CtOriginalIpDaddr,
}

impl Field {
    fn as_str(self) -> &'static str {
        match self {
            Field::Iifname => "iifname",
            Field::Oifname => "oifname",
            Field::IpSaddr => "ip saddr",
            Field::IpDaddr => "ip daddr",
            Field::UdpDport => "udp dport",
            Field::UdpSport => "udp sport",
            Field::TcpDport => "tcp dport",
            Field::TcpSport => "tcp sport",
            Field::EtherSaddr => "ether saddr",
            Field::EtherType => "ether type",
            Field::ArpSaddrEther => "arp saddr ether",
            Field::ArpSaddrIp => "arp saddr ip",
            Field::ArpDaddrIp => "arp daddr ip",
            Field::Icmpv6Type => "icmpv6 type",
            Field::CtState => "ct state",
            Field::CtStatus => "ct status",
            Field::Ibrname => "meta ibrname",
            Field::L4Proto => "meta l4proto",
            Field::ThDport => "th dport",
            Field::ThSport => "th sport",
            Field::FibDaddrType => "fib daddr type",
            Field::CtOriginalIpSaddr => "ct original ip saddr",
            Field::CtOriginalIpDaddr => "ct original ip daddr",
        }
    }
}

/// Conntrack states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtState {
    /// First packet of a connection.
    New,
    /// Part of a known connection.
    Established,
    /// Related to a known connection (ICMP errors, FTP data).
    Related,
    /// Not trackable.
    Invalid,
}

impl CtState {
    fn as_str(self) -> &'static str {
        match self {
            CtState::New => "new",
            CtState::Established => "established",
            CtState::Related => "related",
            CtState::Invalid => "invalid",
        }
    }
}

/// Conntrack status bits a rule names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtStatus {
    /// The connection's destination was translated (DNAT).
    Dnat,
}

impl CtStatus {
    fn as_str(self) -> &'static str {
        match self {
            CtStatus::Dnat => "dnat",
        }
    }
}

/// What a rule compares a field (or a concatenation of fields) with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    /// A named set of the table: `@name`.
    Set(String),
    /// One value, or an anonymous set of several.
    Values(Vec<Value>),
    /// Conntrack states (any of).
    States(Vec<CtState>),
    /// Conntrack status bits (all of).
    Status(Vec<CtStatus>),
}

/// One comparison: `fields == operand` or `!=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// The fields, concatenated when more than one.
    pub fields: Vec<Field>,
    /// `!=` instead of `==`.
    pub negate: bool,
    /// What they are compared with.
    pub operand: Operand,
}

impl Match {
    /// `fields @set`.
    pub fn in_set(fields: &[Field], set: &str) -> Match {
        Match { fields: fields.to_vec(), negate: false, operand: Operand::Set(set.into()) }
    }

    /// `field { values }` (or `field value`).
    pub fn any_of(field: Field, values: Vec<Value>) -> Match {
        Match { fields: vec![field], negate: false, operand: Operand::Values(values) }
    }

    /// `fields != @set`: the concatenation is not in the set.
    pub fn not_in_set(fields: &[Field], set: &str) -> Match {
        Match { negate: true, ..Match::in_set(fields, set) }
    }

    /// `field != { values }`.
    pub fn none_of(field: Field, values: Vec<Value>) -> Match {
        Match { fields: vec![field], negate: true, operand: Operand::Values(values) }
    }

    /// `ct state { states }`.
    pub fn ct_state(states: &[CtState]) -> Match {
        Match { fields: vec![Field::CtState], negate: false, operand: Operand::States(states.to_vec()) }
    }

    /// `ct status bits`: all of them set.
    pub fn ct_status(bits: &[CtStatus]) -> Match {
        Match { fields: vec![Field::CtStatus], negate: false, operand: Operand::Status(bits.to_vec()) }
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fields: Vec<&str> = self.fields.iter().map(|x| x.as_str()).collect();
        f.write_str(&fields.join(" . "))?;
        if self.negate {
            f.write_str(" !=")?;
        }
        match &self.operand {
            Operand::Set(s) => write!(f, " @{s}"),
            Operand::Values(v) if v.len() == 1 => write!(f, " {}", v[0]),
            Operand::Values(v) => {
                let items: Vec<String> = v.iter().map(ToString::to_string).collect();
                write!(f, " {{ {} }}", items.join(", "))
            }
            Operand::States(s) => {
                let items: Vec<&str> = s.iter().map(|x| x.as_str()).collect();
                write!(f, " {}", items.join(","))
            }
            Operand::Status(s) => {
                let items: Vec<&str> = s.iter().map(|x| x.as_str()).collect();
                write!(f, " {}", items.join("|"))
            }
        }
    }
}

/// What a rule does when all its matches hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Accept.
    Accept,
    /// Set these bits in the packet mark, then accept: lets other tools'
    /// chains at the same hook recognise what lanyard's policy accepted.
    MarkAccept(u32),
    /// Drop silently.
    Drop,
    /// Refuse with ICMP administratively prohibited.
    Reject,
    /// Leave this chain.
    Return,
    /// Continue in another chain.
    Jump(String),
    /// Source NAT to the outgoing interface's address.
    Masquerade,
    /// Destination NAT to the value `fields` map to in a named map.
    DnatMap {
        /// Key fields.
        fields: Vec<Field>,
        /// Map name.
        map: String,
    },
    /// Drop what goes over a rate, metered per value of `fields` in the
    /// dynamic set `set`: `update @set { fields limit rate over ... } drop`.
    DropOverRate {
        /// Key fields of the meter.
        fields: Vec<Field>,
        /// The dynamic set that holds one meter per key.
        set: String,
        /// Packets per second allowed per key.
        per_second: u32,
        /// Burst allowed per key.
        burst: u32,
    },
    /// Source NAT to the value `fields` map to in a named map.
    SnatMap {
        /// Key fields.
        fields: Vec<Field>,
        /// Map name.
        map: String,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fields = |v: &[Field]| v.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(" . ");
        match self {
            Action::Accept => f.write_str("accept"),
            Action::MarkAccept(bits) => write!(f, "meta mark set meta mark | {bits:#010x} accept"),
            Action::Drop => f.write_str("drop"),
            Action::Reject => f.write_str("reject with icmpx admin-prohibited"),
            Action::Return => f.write_str("return"),
            Action::Jump(c) => write!(f, "jump {c}"),
            Action::Masquerade => f.write_str("masquerade"),
            Action::DnatMap { fields: k, map } => write!(f, "dnat ip to {} map @{map}", fields(k)),
            Action::SnatMap { fields: k, map } => write!(f, "snat ip to {} map @{map}", fields(k)),
            Action::DropOverRate { fields: k, set, per_second, burst } => {
                write!(
                    f,
                    "update @{set} {{ {} limit rate over {per_second}/second burst {burst} packets }} drop",
                    fields(k)
                )
            }
        }
    }
}

/// A rule: all matches, then the action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Conditions, all of which must hold.
    pub matches: Vec<Match>,
    /// Verdict or statement.
    pub action: Action,
}

impl Rule {
    /// A rule from its matches and action.
    pub fn new(matches: Vec<Match>, action: Action) -> Rule {
        Rule { matches, action }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.matches {
            write!(f, "{m} ")?;
        }
        write!(f, "{}", self.action)
    }
}

/// A whole table: what lanyard owns in nftables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Family and name.
    pub id: TableId,
    /// Sets and maps, declared before the chains that use them.
    pub sets: Vec<Set>,
    /// Chains.
    pub chains: Vec<Chain>,
}

/// Prefix of the table comment that carries the fingerprint.
pub const FINGERPRINT_PREFIX: &str = "lanyard:";

/// FNV-1a: a hash that is the same on every build, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

impl Table {
    /// A set or map by name.
    pub fn set(&self, name: &str) -> Option<&Set> {
        self.sets.iter().find(|s| s.name == name)
    }

    /// The fingerprint of the structure (set declarations, chains, rules),
    /// not of the elements, as the table's comment carries it.
    pub fn fingerprint(&self) -> String {
        let text = Rendered { table: self, elements: false, comment: false }.to_string();
        format!("{FINGERPRINT_PREFIX}{:016x}", fnv1a(text.as_bytes()))
    }

    /// The table in nft syntax with its fingerprint comment, for
    /// `nft -f`: creating it where it is absent.
    pub fn render(&self) -> String {
        Rendered { table: self, elements: true, comment: true }.to_string()
    }

    /// The element changes that turn `self`'s elements into `to`'s, or
    /// None when the structures differ (then only a replacement will do).
    pub fn element_changes(&self, to: &Table) -> Option<Vec<ElementChange>> {
        if self.id != to.id || self.fingerprint() != to.fingerprint() {
            return None;
        }
        let mut out = Vec::new();
        // A dynamic set's elements are the kernel's own state (meters).
        for (old, new) in self.sets.iter().zip(&to.sets).filter(|(o, _)| o.dynamic_timeout.is_none()) {
            for e in old.elements.difference(&new.elements) {
                out.push(ElementChange {
                    table: self.id.clone(),
                    set: old.name.clone(),
                    add: false,
                    element: e.clone(),
                });
            }
            for e in new.elements.difference(&old.elements) {
                out.push(ElementChange {
                    table: self.id.clone(),
                    set: new.name.clone(),
                    add: true,
                    element: e.clone(),
                });
            }
        }
        Some(out)
    }
}

struct Rendered<'a> {
    table: &'a Table,
    elements: bool,
    comment: bool,
}

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.table;
        writeln!(f, "table {} {{", t.id)?;
        if self.comment {
            writeln!(f, "\tcomment \"{}\"", t.fingerprint())?;
        }
        for s in &t.sets {
            s.declaration(f, self.elements)?;
        }
        for c in &t.chains {
            writeln!(f, "\tchain {} {{", c.name)?;
            if let Some(b) = c.base {
                let mut line = String::new();
                let kind = match b.kind {
                    ChainType::Filter => "filter",
                    ChainType::Nat => "nat",
                };
                let hook = match b.hook {
                    Hook::Prerouting => "prerouting",
                    Hook::Input => "input",
                    Hook::Forward => "forward",
                    Hook::Output => "output",
                    Hook::Postrouting => "postrouting",
                };
                let policy = match b.policy {
                    Policy::Accept => "accept",
                    Policy::Drop => "drop",
                };
                let _ = write!(line, "type {kind} hook {hook} priority {}; policy {policy};", b.priority);
                writeln!(f, "\t\t{line}")?;
            }
            for r in &c.rules {
                writeln!(f, "\t\t{r}")?;
            }
            writeln!(f, "\t}}")?;
        }
        writeln!(f, "}}")
    }
}

/// Adding or removing one element of a named set or map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementChange {
    /// The table the set is in.
    pub table: TableId,
    /// Set or map name.
    pub set: String,
    /// Add (true) or delete.
    pub add: bool,
    /// The element.
    pub element: Element,
}

impl ElementChange {
    /// The change that undoes this one.
    pub fn inverse(&self) -> ElementChange {
        ElementChange { add: !self.add, ..self.clone() }
    }
}

impl fmt::Display for ElementChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} element {{ {} }} in @{}", if self.add { "add" } else { "delete" }, self.element, self.set)
    }
}

/// lanyard's tables by identity (`inet lanyard`, `bridge lanyard`).
pub type Tables = std::collections::BTreeMap<TableId, Table>;

/// Applies element changes to the tables lanyard knows the kernel holds
/// (after the kernel took them), in place: no copy of a large set.
pub fn apply_elements(tables: &mut Tables, changes: &[ElementChange]) {
    for c in changes {
        let Some(set) = tables.get_mut(&c.table).and_then(|t| t.sets.iter_mut().find(|s| s.name == c.set)) else {
            continue;
        };
        if c.add {
            set.elements.insert(c.element.clone());
        } else {
            set.elements.remove(&c.element);
        }
    }
}

/// How the firewall gets from the table the kernel has to the one wanted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum FirewallChange {
    /// Nothing to do.
    #[default]
    None,
    /// Only elements change, in one transaction.
    Elements(Vec<ElementChange>),
    /// Replace the whole table atomically (or create it).
    Replace(Box<Table>),
    /// Delete the table (no network needs rules).
    Delete(TableId),
}

impl FirewallChange {
    /// From the table the kernel is known to have to the wanted one.
    pub fn between(current: Option<&Table>, wanted: Option<&Table>) -> FirewallChange {
        match (current, wanted) {
            (None, None) => FirewallChange::None,
            (Some(c), None) => FirewallChange::Delete(c.id.clone()),
            (None, Some(w)) => FirewallChange::Replace(Box::new(w.clone())),
            (Some(c), Some(w)) => match c.element_changes(w) {
                Some(v) if v.is_empty() => FirewallChange::None,
                Some(v) => FirewallChange::Elements(v),
                None => FirewallChange::Replace(Box::new(w.clone())),
            },
        }
    }

    /// The changes, one per table, from the tables the kernel is known to
    /// have to the wanted ones (nothing for a table that stays the same).
    pub fn all_between(current: &Tables, wanted: &Tables) -> Vec<FirewallChange> {
        let ids: std::collections::BTreeSet<&TableId> = current.keys().chain(wanted.keys()).collect();
        ids.into_iter()
            .map(|id| FirewallChange::between(current.get(id), wanted.get(id)))
            .filter(|c| *c != FirewallChange::None)
            .collect()
    }

    /// Whether applying it is an nftables transaction (nothing to do and
    /// no element changes are none): what moves the ruleset's generation.
    pub fn is_transaction(&self) -> bool {
        match self {
            FirewallChange::None => false,
            FirewallChange::Elements(v) => !v.is_empty(),
            _ => true,
        }
    }

    /// The table this change is to.
    pub fn table(&self) -> Option<&TableId> {
        match self {
            FirewallChange::None => None,
            FirewallChange::Elements(v) => v.first().map(|c| &c.table),
            FirewallChange::Replace(t) => Some(&t.id),
            FirewallChange::Delete(id) => Some(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(elements: &[&str]) -> Table {
        let mut s = Set::new("bridges", &[DataType::Ifname], false);
        s.elements = elements.iter().map(|e| Element::key(vec![Value::Ifname((*e).into())])).collect();
        Table {
            id: TableId { family: Family::Inet, name: "lanyard".into() },
            sets: vec![s],
            chains: vec![Chain {
                name: "forward".into(),
                base: Some(BaseChain {
                    kind: ChainType::Filter,
                    hook: Hook::Forward,
                    priority: 0,
                    policy: Policy::Accept,
                }),
                rules: vec![Rule::new(vec![Match::in_set(&[Field::Iifname], "bridges")], Action::Reject)],
            }],
        }
    }

    #[test]
    fn fingerprint_ignores_elements_only() {
        assert_eq!(table(&["a"]).fingerprint(), table(&["a", "b"]).fingerprint());
        let mut other = table(&["a"]);
        other.chains[0].rules[0].action = Action::Drop;
        assert_ne!(table(&["a"]).fingerprint(), other.fingerprint());
    }

    #[test]
    fn element_changes_are_the_difference() {
        let changes = table(&["a", "b"]).element_changes(&table(&["b", "c"])).unwrap();
        let text: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["delete element { \"a\" } in @bridges", "add element { \"c\" } in @bridges"]);
        assert_eq!(FirewallChange::between(Some(&table(&["a"])), Some(&table(&["a"]))), FirewallChange::None);
    }

    #[test]
    fn a_range_renders_as_nft_reads_it() {
        let range = Value::Range("10.1.0.1".parse().unwrap(), "10.1.0.9".parse().unwrap());
        let e = Element::key(vec![Value::Ifname("lybr0".into()), range]);
        assert_eq!(e.to_string(), "\"lybr0\" . 10.1.0.1-10.1.0.9");
    }

    #[test]
    fn a_local_destination_renders_as_a_fib_lookup() {
        let m = Match::any_of(Field::FibDaddrType, vec![Value::AddrType(AddrType::Local)]);
        assert_eq!(m.to_string(), "fib daddr type local");
        let r = Rule::new(
            vec![m, Match::any_of(Field::L4Proto, vec![Value::Proto(Proto::Tcp), Value::Proto(Proto::Udp)])],
            Action::DnatMap { fields: vec![Field::IpDaddr, Field::L4Proto, Field::ThDport], map: "port_fwd".into() },
        );
        assert_eq!(
            r.to_string(),
            "fib daddr type local meta l4proto { tcp, udp } dnat ip to ip daddr . meta l4proto . th dport map @port_fwd"
        );
        let back = Match::in_set(&[Field::IpSaddr, Field::L4Proto, Field::ThSport], "fwd_targets");
        assert_eq!(back.to_string(), "ip saddr . meta l4proto . th sport @fwd_targets");
    }

    #[test]
    fn renders_nft_syntax() {
        let t = table(&["lybr0"]);
        let text = t.render();
        assert_eq!(
            text,
            format!(
                "table inet lanyard {{\n\tcomment \"{}\"\n\tset bridges {{ type ifname; elements = {{ \"lybr0\" }}; }}\n\tchain forward {{\n\t\ttype filter hook forward priority 0; policy accept;\n\t\tiifname @bridges reject with icmpx admin-prohibited\n\t}}\n}}\n",
                t.fingerprint()
            )
        );
    }
}
