//! `lanyard import libvirt`: a libvirt network definition (`virsh
//! net-dumpxml` output, or a file of /etc/libvirt/qemu/networks) read into
//! the lanyard network and static hosts that behave the same.
//!
//! What lanyard cannot do the same way is refused, all of it listed in one
//! error, so that an import never silently gives guests a different
//! network (IPv6, DNS records, NAT address ranges, forwarding limited to
//! one device...). What changes nothing a guest sees (the bridge's MAC,
//! STP, a UUID, a title) is dropped with a warning.
//!
//! The XML is input from anywhere: it is parsed by `roxmltree` with
//! DTDs refused (no entity expansion) and a size and node limit, and no
//! value is trusted before lanyard's own validation sees it.

use std::net::Ipv4Addr;

use roxmltree::{Document, Node, ParsingOptions};

use crate::model::hosts::StaticHostSpec;
use crate::model::NetworkSpec;

/// The largest definition read: libvirt's are a few kilobytes; a static
/// host is about 80 bytes, so this holds thousands.
pub const MAX_XML_BYTES: usize = 1 << 20;

/// A libvirt network as lanyard will create it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The network.
    pub network: NetworkSpec,
    /// Its `<dhcp><host>` entries.
    pub hosts: Vec<StaticHostSpec>,
    /// What was dropped because it changes nothing a guest sees.
    pub warnings: Vec<String>,
}

/// Why a definition cannot be imported.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImportError {
    /// Not XML lanyard reads (malformed, a DTD, too large).
    #[error("not a libvirt network definition: {0}")]
    Xml(String),
    /// Elements lanyard cannot honour; each entry names one.
    #[error("cannot import libvirt network {name:?}, lanyard cannot do: {}", .items.join("; "))]
    Unsupported {
        /// The network's name.
        name: String,
        /// One line per element or attribute.
        items: Vec<String>,
    },
}

/// What the walk collects.
#[derive(Default)]
struct Notes {
    refused: Vec<String>,
    warnings: Vec<String>,
}

impl Notes {
    /// Each reason once, however many elements give it.
    fn refuse(&mut self, what: impl Into<String>) {
        let what = what.into();
        if !self.refused.contains(&what) {
            self.refused.push(what);
        }
    }
    fn warn(&mut self, what: impl Into<String>) {
        let what = what.into();
        if !self.warnings.contains(&what) {
            self.warnings.push(what);
        }
    }
    /// Attributes of `n` not in `known`: refused (an attribute lanyard does
    /// not know may change what the element means).
    fn only_attrs(&mut self, n: Node, known: &[&str]) {
        for a in n.attributes() {
            if !known.contains(&a.name()) {
                self.refuse(format!("<{} {}='{}'>", n.tag_name().name(), a.name(), a.value()));
            }
        }
    }
}

fn elements<'a, 'i>(n: Node<'a, 'i>) -> impl Iterator<Item = Node<'a, 'i>> {
    n.children().filter(Node::is_element)
}

/// Reads a libvirt network definition.
pub fn parse_network(xml: &str) -> Result<Imported, ImportError> {
    if xml.len() > MAX_XML_BYTES {
        return Err(ImportError::Xml(format!("{} bytes, more than the {MAX_XML_BYTES} read", xml.len())));
    }
    // No DTD: libvirt never writes one, and entities are how XML bombs work.
    let opts = ParsingOptions { allow_dtd: false, nodes_limit: 100_000, ..ParsingOptions::default() };
    let doc = Document::parse_with_options(xml, opts).map_err(|e| ImportError::Xml(e.to_string()))?;
    let root = doc.root_element();
    if root.tag_name().name() != "network" {
        return Err(ImportError::Xml(format!("the root element is <{}>, not <network>", root.tag_name().name())));
    }
    let mut notes = Notes::default();
    let mut spec = NetworkSpec::default();
    let mut hosts = Vec::new();
    let mut forward: Option<Node> = None;
    let mut bridge: Option<Node> = None;
    let mut ips: Vec<Node> = Vec::new();
    for a in root.attributes() {
        match a.name() {
            // How many guests are connected: state, not configuration.
            "connections" => {}
            "ipv6" if a.value() == "no" => {}
            "ipv6" => notes.refuse("<network ipv6='yes'> (lanyard networks are IPv4)"),
            "trustGuestRxFilters" => {
                notes.warn(format!("<network trustGuestRxFilters='{}'> (a macvtap option)", a.value()))
            }
            other => notes.refuse(format!("<network {other}='{}'>", a.value())),
        }
    }
    for n in elements(root) {
        match n.tag_name().name() {
            "name" => spec.name = n.text().unwrap_or_default().trim().to_string(),
            "uuid" => notes.warn("<uuid> (lanyard names networks by name)"),
            "title" | "description" | "metadata" => notes.warn(format!("<{}> (not kept)", n.tag_name().name())),
            "forward" => forward = Some(n),
            "bridge" => bridge = Some(n),
            "mac" => notes.warn(format!(
                "<mac address='{}'> (lanyard chooses the bridge's MAC)",
                n.attribute("address").unwrap_or_default()
            )),
            "domain" => {
                notes.only_attrs(n, &["name", "localOnly", "register"]);
                spec.domain = n.attribute("name").map(String::from);
                if n.attribute("register") == Some("yes") {
                    notes.refuse("<domain register='yes'> (registering with systemd-resolved)");
                }
                // localOnly='yes' is what lanyard does anyway (names of
                // the domain are answered, never forwarded); 'no' is not.
                if n.attribute("localOnly") == Some("no") {
                    notes.refuse("<domain localOnly='no'> (lanyard answers its domain itself)");
                }
            }
            "mtu" => match n.attribute("size").and_then(|s| s.parse::<u32>().ok()) {
                Some(m) => spec.mtu = Some(m),
                None => notes.refuse("<mtu> without a numeric size"),
            },
            "ip" => ips.push(n),
            "dns" => dns(n, &mut notes),
            other => notes.refuse(format!("<{other}>")),
        }
    }
    if spec.name.is_empty() {
        return Err(ImportError::Xml("the network has no <name>".into()));
    }
    spec.mode = mode(forward, &mut spec, &mut notes);
    if let Some(b) = bridge {
        for a in b.attributes() {
            match a.name() {
                "name" => spec.bridge = Some(a.value().to_string()),
                "stp" | "delay" | "macTableManager" => notes.warn(format!(
                    "<bridge {}='{}'> (lanyard's bridges keep the kernel's default)",
                    a.name(),
                    a.value()
                )),
                "zone" => {
                    notes.warn(format!("<bridge zone='{}'> (a firewalld zone; lanyard has its own table)", a.value()))
                }
                other => notes.refuse(format!("<bridge {other}='{}'>", a.value())),
            }
        }
    }
    if spec.mode == "bridge" {
        bridged(&mut spec, &ips, &mut notes);
    } else {
        let v4: Vec<Node> = ips.iter().copied().filter(|n| n.attribute("family").unwrap_or("ipv4") == "ipv4").collect();
        for n in ips.iter().filter(|n| n.attribute("family").unwrap_or("ipv4") != "ipv4") {
            notes.refuse(format!(
                "<ip family='{}'> (lanyard networks are IPv4)",
                n.attribute("family").unwrap_or_default()
            ));
        }
        match v4.as_slice() {
            [] => notes.refuse("a network without an IPv4 <ip> (lanyard needs a subnet)"),
            [ip] => hosts = address(*ip, &mut spec, &mut notes),
            [_, more @ ..] => notes.refuse(format!("{} more IPv4 <ip> elements (one subnet per network)", more.len())),
        }
    }
    if !notes.refused.is_empty() {
        return Err(ImportError::Unsupported { name: spec.name, items: notes.refused });
    }
    Ok(Imported { network: spec, hosts, warnings: notes.warnings })
}

/// The lanyard mode of `<forward>`; its uplink in bridge mode.
fn mode(forward: Option<Node>, spec: &mut NetworkSpec, notes: &mut Notes) -> String {
    // No <forward>: guests reach each other and the host, nothing beyond,
    // which is lanyard's host-only (lanyard's isolated also keeps them
    // from the host, which libvirt's do reach).
    let Some(f) = forward else { return "host-only".into() };
    notes.only_attrs(f, &["mode", "dev"]);
    let mode = f.attribute("mode").unwrap_or("nat");
    let dev = f.attribute("dev");
    let mut interfaces = Vec::new();
    for n in elements(f) {
        match (mode, n.tag_name().name()) {
            ("bridge", "interface") => interfaces.extend(n.attribute("dev").map(String::from)),
            ("nat", "nat") => {
                for c in elements(n) {
                    notes.refuse(format!(
                        "<forward><nat><{}> (lanyard masquerades with the outgoing address)",
                        c.tag_name().name()
                    ));
                }
                notes.only_attrs(n, &[]);
            }
            (_, other) => notes.refuse(format!("<forward mode='{mode}'><{other}>")),
        }
    }
    match mode {
        "nat" | "route" | "open" => {
            if let Some(d) = dev {
                // libvirt forwards only out of `dev`; lanyard out of any
                // interface: more reach than the definition gives.
                notes.refuse(format!("<forward dev='{d}'> (lanyard forwards out of any interface)"));
            }
            mode.into()
        }
        "bridge" => {
            if let Some(d) = dev {
                interfaces.insert(0, d.to_string());
            }
            interfaces.dedup();
            match interfaces.as_slice() {
                [one] => {
                    spec.uplink = Some(one.clone());
                    // libvirt attaches guests to the NIC by macvtap there;
                    // lanyard's bridge on it puts them on the same LAN and
                    // lets them reach the host too.
                    notes.warn(format!("macvtap on {one} (lanyard makes a bridge on {one}: the guests reach the host too)"));
                }
                [] => notes.refuse(
                    "<forward mode='bridge'> without <interface dev=>: a host bridge made elsewhere (lanyard's bridge mode makes its bridge on a NIC: --uplink)",
                ),
                more => notes.refuse(format!("<forward mode='bridge'> over {} interfaces (one uplink per network)", more.len())),
            }
            "bridge".into()
        }
        other => {
            notes.refuse(format!("<forward mode='{other}'>"));
            other.into()
        }
    }
}

/// A bridge-mode network takes the LAN's addresses; libvirt's has no <ip>.
fn bridged(spec: &mut NetworkSpec, ips: &[Node], notes: &mut Notes) {
    if !ips.is_empty() {
        notes.refuse("<ip> on a bridge-mode network (the LAN's own DHCP serves it)");
    }
    // libvirt's <bridge name=> there is the existing host bridge, never
    // one to create: lanyard makes its own.
    if let Some(b) = spec.bridge.take() {
        notes.warn(format!("<bridge name='{b}'> (lanyard names the bridge it makes on the uplink)"));
    }
}

/// `<ip address= netmask=|prefix=>` with its `<dhcp>`.
fn address(ip: Node, spec: &mut NetworkSpec, notes: &mut Notes) -> Vec<StaticHostSpec> {
    notes.only_attrs(ip, &["address", "netmask", "prefix", "family", "localPtr"]);
    if let Some(p) = ip.attribute("localPtr") {
        notes.warn(format!("<ip localPtr='{p}'> (lanyard answers the reverse zone of its subnet anyway)"));
    }
    let Some(addr) = ip.attribute("address").and_then(|a| a.parse::<Ipv4Addr>().ok()) else {
        notes.refuse(format!("<ip address='{}'> (not an IPv4 address)", ip.attribute("address").unwrap_or_default()));
        return Vec::new();
    };
    let prefix = match (ip.attribute("prefix"), ip.attribute("netmask")) {
        (Some(p), None) => p.parse::<u8>().ok().filter(|p| *p <= 32),
        (None, Some(m)) => m.parse::<Ipv4Addr>().ok().and_then(|m| {
            let bits = u32::from(m);
            (bits.leading_ones() + bits.trailing_zeros() == 32).then_some(bits.leading_ones() as u8)
        }),
        _ => None,
    };
    let Some(prefix) = prefix else {
        notes.refuse("<ip> needs one of prefix= (0-32) or netmask= (contiguous)");
        return Vec::new();
    };
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    spec.subnet = format!("{}/{prefix}", Ipv4Addr::from(u32::from(addr) & mask));
    spec.gateway = Some(addr.to_string());
    let mut hosts = Vec::new();
    for n in elements(ip) {
        match n.tag_name().name() {
            "dhcp" => hosts = dhcp(n, spec, notes),
            other => notes.refuse(format!("<ip><{other}>")),
        }
    }
    hosts
}

fn dhcp(d: Node, spec: &mut NetworkSpec, notes: &mut Notes) -> Vec<StaticHostSpec> {
    notes.only_attrs(d, &[]);
    let mut hosts = Vec::new();
    let mut ranges = 0;
    for n in elements(d) {
        match n.tag_name().name() {
            "range" => {
                ranges += 1;
                notes.only_attrs(n, &["start", "end"]);
                let (start, end) = (n.attribute("start").unwrap_or_default(), n.attribute("end").unwrap_or_default());
                spec.dhcp_range = Some(format!("{start}-{end}"));
                for l in elements(n) {
                    match l.tag_name().name() {
                        "lease" => match lease_secs(l) {
                            Some(s) => spec.lease_time = Some(s),
                            None => {
                                notes.refuse("<range><lease> other than a finite expiry in seconds, minutes or hours")
                            }
                        },
                        other => notes.refuse(format!("<range><{other}>")),
                    }
                }
            }
            "host" => {
                notes.only_attrs(n, &["mac", "ip", "name"]);
                match (n.attribute("mac"), n.attribute("ip")) {
                    (Some(mac), Some(ip)) => hosts.push(StaticHostSpec {
                        mac: mac.to_string(),
                        ip: ip.to_string(),
                        name: n.attribute("name").map(String::from),
                    }),
                    _ => notes.refuse(format!(
                        "<host{}> without both mac= and ip= (lanyard's static hosts are a MAC's address)",
                        n.attribute("name").map(|s| format!(" name='{s}'")).unwrap_or_default()
                    )),
                }
                for c in elements(n) {
                    notes.refuse(format!("<host><{}>", c.tag_name().name()));
                }
            }
            other => notes.refuse(format!("<dhcp><{other}>")),
        }
    }
    if ranges > 1 {
        notes.refuse(format!("{ranges} DHCP ranges (one per network)"));
    }
    hosts
}

fn lease_secs(l: Node) -> Option<u32> {
    let n: u32 = l.attribute("expiry")?.parse().ok().filter(|n| *n > 0)?;
    let unit = match l.attribute("unit").unwrap_or("minutes") {
        "seconds" => 1,
        "minutes" => 60,
        "hours" => 3600,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// `<dns>`: lanyard's DNS answers the network's guests and forwards the
/// rest; records, forwarders and switching it off are refused.
fn dns(d: Node, notes: &mut Notes) {
    for a in d.attributes() {
        match (a.name(), a.value()) {
            ("enable", "yes") | ("forwardPlainNames", "yes") => {}
            (k, v) => notes.refuse(format!("<dns {k}='{v}'>")),
        }
    }
    for c in elements(d) {
        notes.refuse(match c.tag_name().name() {
            "forwarder" => "<dns><forwarder> (lanyard forwards to the host's own resolvers)".to_string(),
            other => format!("<dns><{other}> (lanyard's DNS has no records of its own)"),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libvirt's default network, as Debian's libvirt-daemon-config-network ships it.
    const DEFAULT: &str = r#"<network>
  <name>default</name>
  <bridge name="virbr0"/>
  <forward/>
  <ip address="192.168.122.1" netmask="255.255.255.0">
    <dhcp>
      <range start="192.168.122.2" end="192.168.122.254"/>
    </dhcp>
  </ip>
</network>"#;

    fn refused(xml: &str) -> Vec<String> {
        match parse_network(xml) {
            Err(ImportError::Unsupported { items, .. }) => items,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_default_network_is_nat_with_its_range() {
        let i = parse_network(DEFAULT).unwrap();
        let n = &i.network;
        assert_eq!((n.name.as_str(), n.mode.as_str(), n.subnet.as_str()), ("default", "nat", "192.168.122.0/24"));
        assert_eq!(n.gateway.as_deref(), Some("192.168.122.1"));
        assert_eq!(n.dhcp_range.as_deref(), Some("192.168.122.2-192.168.122.254"));
        assert_eq!(n.bridge.as_deref(), Some("virbr0"));
        assert!(i.hosts.is_empty() && i.warnings.is_empty(), "{i:?}");
    }

    #[test]
    fn each_forward_mode_maps() {
        let with = |fwd: &str| {
            format!(
                "<network><name>n</name>{fwd}<ip address='10.1.0.1' prefix='24'><dhcp><range start='10.1.0.100' end='10.1.0.200'/></dhcp></ip></network>"
            )
        };
        for (fwd, mode) in [
            ("<forward mode='nat'/>", "nat"),
            ("<forward mode='route'/>", "route"),
            ("<forward mode='open'/>", "open"),
            ("", "host-only"),
        ] {
            let i = parse_network(&with(fwd)).unwrap_or_else(|e| panic!("{fwd}: {e}"));
            assert_eq!(i.network.mode, mode, "{fwd}");
            assert_eq!(i.network.subnet, "10.1.0.0/24", "{fwd}");
        }
        let b = parse_network(
            "<network><name>lan</name><forward mode='bridge'><interface dev='eth1'/></forward><bridge name='br0'/></network>",
        )
        .unwrap();
        assert_eq!((b.network.mode.as_str(), b.network.uplink.as_deref()), ("bridge", Some("eth1")));
        assert_eq!(b.network.bridge, None, "libvirt's bridge there is someone else's: {b:?}");
        let b = parse_network("<network><name>lan</name><forward mode='bridge' dev='eth2'/></network>").unwrap();
        assert_eq!(b.network.uplink.as_deref(), Some("eth2"));
    }

    #[test]
    fn static_hosts_domain_mtu_and_lease_time_are_read() {
        let i = parse_network(
            "<network><name>n</name><forward mode='nat'><nat/></forward><domain name='example.lan' localOnly='yes'/><mtu size='9000'/>\
             <mac address='52:54:00:0a:0b:0c'/><uuid>x</uuid>\
             <ip address='10.2.0.1' prefix='16'><dhcp><range start='10.2.0.10' end='10.2.0.99'><lease expiry='2' unit='hours'/></range>\
             <host mac='52:54:00:00:00:01' ip='10.2.1.1' name='db'/><host mac='52:54:00:00:00:02' ip='10.2.1.2'/></dhcp></ip></network>",
        )
        .unwrap();
        assert_eq!(i.network.domain.as_deref(), Some("example.lan"));
        assert_eq!((i.network.mtu, i.network.lease_time), (Some(9000), Some(7200)));
        assert_eq!(i.network.subnet, "10.2.0.0/16");
        assert_eq!(i.hosts.len(), 2);
        assert_eq!(
            i.hosts[0],
            StaticHostSpec { mac: "52:54:00:00:00:01".into(), ip: "10.2.1.1".into(), name: Some("db".into()) }
        );
        assert_eq!(i.warnings.len(), 2, "the bridge MAC and the uuid are cosmetic: {:?}", i.warnings);
    }

    #[test]
    fn what_would_change_meaning_is_refused_all_at_once() {
        let items = refused(
            "<network><name>v6</name><forward mode='nat' dev='eth0'><nat><address start='1.2.3.4' end='1.2.3.9'/></nat></forward>\
             <dns><host ip='10.0.0.5'><hostname>x</hostname></host></dns>\
             <ip address='10.3.0.1' prefix='24'><dhcp><range start='10.3.0.2' end='10.3.0.9'/><bootp file='pxe'/></dhcp><tftp root='/t'/></ip>\
             <ip family='ipv6' address='fd00::1' prefix='64'/><portgroup name='x'/></network>",
        );
        for want in ["dev='eth0'", "<address>", "<dns><host>", "<bootp>", "<tftp>", "ipv6", "<portgroup>"] {
            assert!(items.iter().any(|i| i.contains(want)), "{want} not in {items:?}");
        }
        let msg = ImportError::Unsupported { name: "v6".into(), items }.to_string();
        assert!(!msg.contains('\n'), "one line: {msg}");
        for bad in [
            "<network><name>p</name><forward mode='passthrough'><interface dev='eth0'/></forward></network>",
            "<network><name>i</name></network>",
            "<network><name>b</name><forward mode='bridge'/><bridge name='br0'/></network>",
            "<network><name>m</name><ip address='10.0.0.1' netmask='255.0.255.0'/></network>",
            "<network><name>h</name><ip address='10.0.0.1' prefix='24'><dhcp><host name='x' ip='10.0.0.5'/></dhcp></ip></network>",
        ] {
            assert!(!refused(bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn malformed_or_hostile_xml_is_an_error_not_a_panic() {
        for bad in [
            "",
            "<network>",
            "<domain/>",
            "<network><uuid>x</uuid></network>",
            "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;'>]><network><name>&lol2;</name></network>",
            "<network><name>n</name><ip address='10.0.0.1' prefix='99'/></network>",
            "\u{0}\u{ffff}<<<",
        ] {
            assert!(parse_network(bad).is_err(), "{bad:?}");
        }
        let huge = format!("<network><name>{}</name></network>", "x".repeat(MAX_XML_BYTES));
        assert!(matches!(parse_network(&huge), Err(ImportError::Xml(_))));
    }
}
