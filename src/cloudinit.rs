//! Cloud-init data for a port: what a guest is told about its network
//! when nothing answers its DHCP (nova's "injected" addresses, today's way).
//!
//! This module owns the NoCloud seed of one port: its `network-config`
//! (network config version 2, the Netplan dialect cloud-init reads), its
//! `meta-data` (instance id and host name) and a minimal `user-data`, all
//! pure functions of the [`Port`] and its [`Network`]; and, in [`iso`], the
//! `cidata` ISO 9660 image that carries them to the guest.
//!
//! The YAML is written by hand: every string is double-quoted ([`quote`]),
//! so no value can be read as another type (a MAC of digits only,
//! `52:54:00:00:43:62`, is a base-60 integer to a YAML 1.1 reader) or
//! break out of its place. The default route is written `to: 0.0.0.0/0`,
//! not `to: default`: netplan and cloud-init's own renderers both take the
//! former, while cloud-init 22.4 (Debian 12) rejects `default` when it
//! renders for ifupdown or networkd itself, and netplan 0.99 rejects it
//! too. `gateway4` is deprecated and not used.

pub mod iso;

use std::fmt::Write as _;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::{Mode, ModelError, Network, Port};

/// The formats `GET /v1/ports/{id}/config` and `lanyard port config` know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A NoCloud seed: `network-config` (v2), `meta-data`, `user-data`.
    CloudInit,
}

impl Format {
    /// Every format, by the name the API and CLI take.
    pub const ALL: [(&'static str, Format); 1] = [("cloud-init", Format::CloudInit)];
}

impl FromStr for Format {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL.iter().find(|(name, _)| *name == s).map(|(_, f)| *f).ok_or_else(|| {
            let known: Vec<&str> = Format::ALL.iter().map(|(n, _)| *n).collect();
            ModelError::Invalid {
                what: "format",
                value: s.to_string(),
                why: format!("the supported format is {}", known.join(", ")),
            }
        })
    }
}

/// A port's NoCloud seed: the three files cloud-init reads, as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    /// `network-config`: network config version 2.
    pub network_config: String,
    /// `meta-data`: instance id and host name.
    pub meta_data: String,
    /// `user-data`: a `#cloud-config` with nothing to do.
    pub user_data: String,
}

/// The volume label cloud-init's NoCloud datasource looks for.
pub const VOLUME_LABEL: &str = "cidata";

impl Seed {
    /// The seed of `port` on `net`.
    pub fn new(port: &Port, net: &Network) -> Seed {
        Seed { network_config: network_config(port, net), meta_data: meta_data(port), user_data: user_data() }
    }

    /// The files in the seed, by the names NoCloud reads.
    pub fn files(&self) -> [(&'static str, &[u8]); 3] {
        [
            ("meta-data", self.meta_data.as_bytes()),
            ("network-config", self.network_config.as_bytes()),
            ("user-data", self.user_data.as_bytes()),
        ]
    }

    /// The seed as a `cidata` ISO 9660 image (Rock Ridge and Joliet names).
    pub fn iso(&self) -> Result<Vec<u8>, iso::IsoError> {
        iso::write(VOLUME_LABEL, &self.files())
    }
}

/// The name the guest's NIC gets (`set-name`), also the id of the one
/// `ethernets` entry: the entry matches the NIC by MAC and names it so.
///
/// Without `set-name` only netplan would find the NIC by its MAC alone:
/// cloud-init 22.4 (Debian 12) renders the entry for networkd as `[Match]
/// MACAddress=` *and* `Name=<id>`, and for ifupdown as `iface <id>`, so a
/// NIC the kernel called `ens3` would be configured by neither. With
/// `set-name`, cloud-init renames the NIC before it renders, and every
/// renderer agrees. `eth0`, as nova's injected configuration named it.
pub const GUEST_IFNAME: &str = "eth0";

/// Whether lanyard serves DNS on `net`'s gateway: wherever it serves DHCP
/// (every mode but bridge, whose LAN has its own servers).
pub fn serves_dns(net: &Network) -> bool {
    net.mode.serves_dhcp() && net.has_host_address()
}

/// The port's `network-config` (version 2): the NIC with the port's MAC,
/// named [`GUEST_IFNAME`], with its fixed IP and the network's prefix,
/// the default route through the gateway (none on an
/// isolated network, which routes nowhere, as its DHCP gives no router),
/// the gateway as DNS server with the network's domain to search, and the
/// MTU when the network has one. A port without a fixed IP (bridge mode,
/// where the LAN's DHCP decides) gets `dhcp4: true`.
pub fn network_config(port: &Port, net: &Network) -> String {
    let mut y = String::new();
    y.push_str("version: 2\n");
    y.push_str("ethernets:\n");
    let _ = writeln!(y, "  {GUEST_IFNAME}:");
    y.push_str("    match:\n");
    let _ = writeln!(y, "      macaddress: {}", quote(&port.mac.to_string()));
    let _ = writeln!(y, "    set-name: {}", quote(GUEST_IFNAME));
    match port.ip {
        Some(ip) => {
            y.push_str("    addresses:\n");
            let _ = writeln!(y, "      - {}", quote(&format!("{ip}/{}", net.subnet.prefix_len())));
            if net.mode != Mode::Isolated {
                y.push_str("    routes:\n");
                let _ = writeln!(y, "      - to: {}", quote("0.0.0.0/0"));
                let _ = writeln!(y, "        via: {}", quote(&net.gateway.to_string()));
            }
            if serves_dns(net) {
                y.push_str("    nameservers:\n");
                y.push_str("      addresses:\n");
                let _ = writeln!(y, "        - {}", quote(&net.gateway.to_string()));
                y.push_str("      search:\n");
                let _ = writeln!(y, "        - {}", quote(&net.domain));
            }
        }
        None => y.push_str("    dhcp4: true\n"),
    }
    if let Some(mtu) = net.mtu {
        let _ = writeln!(y, "    mtu: {mtu}");
    }
    y
}

/// The port's `meta-data`: an instance id that stays the same for the
/// port's life (`lanyard-<port id>`: cloud-init applies a network config
/// once per instance, and a port's addresses never change) and the VM's
/// name as its host name.
pub fn meta_data(port: &Port) -> String {
    format!("instance-id: {}\nlocal-hostname: {}\n", quote(&instance_id(port)), quote(&port.vm))
}

/// The instance id of a port's guest.
pub fn instance_id(port: &Port) -> String {
    format!("lanyard-{}", port.id)
}

/// The `user-data`: NoCloud needs the file, lanyard has nothing to say in it.
pub fn user_data() -> String {
    "#cloud-config\n{}\n".to_string()
}

/// `s` as a YAML double-quoted scalar: `"` and `\` escaped, and every
/// character that is not printable ASCII as `\xNN` or `\uNNNN`, so the
/// result is one line of ASCII whatever `s` holds.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if u32::from(c) <= 0xff => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if u32::from(c) <= 0xffff => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\U{:08x}", u32::from(c));
            }
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{test_network, Mac};
    use std::net::Ipv4Addr;

    fn port(ip: Option<Ipv4Addr>) -> Port {
        Port {
            vm: "vm2".into(),
            mac: Mac([0x52, 0x54, 0x00, 0x00, 0x43, 0x62]),
            ip,
            ..crate::model::test_port("5c42a4c5", "default")
        }
    }

    fn nat() -> Network {
        test_network("default", "192.168.122.0/24", "lybr0")
    }

    #[test]
    fn a_fixed_ip_on_a_nat_network() {
        let p = port(Some(Ipv4Addr::new(192, 168, 122, 3)));
        assert_eq!(
            network_config(&p, &nat()),
            r#"version: 2
ethernets:
  eth0:
    match:
      macaddress: "52:54:00:00:43:62"
    set-name: "eth0"
    addresses:
      - "192.168.122.3/24"
    routes:
      - to: "0.0.0.0/0"
        via: "192.168.122.1"
    nameservers:
      addresses:
        - "192.168.122.1"
      search:
        - "default"
"#
        );
        assert_eq!(meta_data(&p), "instance-id: \"lanyard-5c42a4c5\"\nlocal-hostname: \"vm2\"\n");
        assert_eq!(user_data(), "#cloud-config\n{}\n");
    }

    #[test]
    fn mtu_domain_and_prefix_come_from_the_network() {
        let mut n = test_network("lab", "10.20.0.0/16", "lybr1");
        n.mtu = Some(9000);
        n.domain = "lab.example".into();
        n.gateway = Ipv4Addr::new(10, 20, 255, 254);
        let y = network_config(&port(Some(Ipv4Addr::new(10, 20, 0, 7))), &n);
        assert!(y.contains("      - \"10.20.0.7/16\"\n"), "{y}");
        assert!(y.contains("        via: \"10.20.255.254\"\n"), "{y}");
        assert!(y.contains("        - \"10.20.255.254\"\n      search:\n        - \"lab.example\"\n"), "{y}");
        assert!(y.ends_with("    mtu: 9000\n"), "{y}");
    }

    #[test]
    fn an_isolated_network_has_no_default_route() {
        let mut n = nat();
        n.mode = Mode::Isolated;
        let y = network_config(&port(Some(Ipv4Addr::new(192, 168, 122, 3))), &n);
        assert!(!y.contains("routes:"), "{y}");
        assert!(y.contains("nameservers:"), "isolated networks still serve DNS: {y}");
    }

    #[test]
    fn a_port_without_a_fixed_ip_asks_dhcp() {
        let mut n = nat();
        n.mode = Mode::Bridge;
        n.mtu = Some(1400);
        assert_eq!(
            network_config(&port(None), &n),
            r#"version: 2
ethernets:
  eth0:
    match:
      macaddress: "52:54:00:00:43:62"
    set-name: "eth0"
    dhcp4: true
    mtu: 1400
"#
        );
    }

    #[test]
    fn quoting_keeps_every_value_one_ascii_string() {
        assert_eq!(quote("vm1"), "\"vm1\"");
        assert_eq!(quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(quote("x\ny: 1"), "\"x\\x0ay: 1\"");
        assert_eq!(quote("é\u{202e}😀"), "\"\\xe9\\u202e\\U0001f600\"");
        assert_eq!(quote(""), "\"\"");
    }

    #[test]
    fn formats() {
        assert_eq!("cloud-init".parse::<Format>(), Ok(Format::CloudInit));
        let e = "ignition".parse::<Format>().unwrap_err().to_string();
        assert_eq!(e, "invalid format \"ignition\": the supported format is cloud-init");
    }

    #[test]
    fn the_seed_iso_holds_the_three_files() {
        let p = port(Some(Ipv4Addr::new(192, 168, 122, 3)));
        let seed = Seed::new(&p, &nat());
        let image = seed.iso().unwrap();
        assert_eq!(iso::tests::label_of(&image), "cidata", "NoCloud finds its seed by this label");
        let files = iso::tests::read_rock_ridge(&image);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["meta-data", "network-config", "user-data"]);
        assert_eq!(files[0].1, seed.meta_data.as_bytes());
        assert_eq!(files[1].1, seed.network_config.as_bytes());
        assert_eq!(files[2].1, seed.user_data.as_bytes());
        assert_eq!(seed.iso().unwrap(), image, "the image is deterministic");
    }
}
