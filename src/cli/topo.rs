//! `lanyard topo`: what is connected to what, drawn the way the seeds draw
//! it: a network's uplink and VLAN device into its bridge, the bridge with
//! its gateway, and the bridge's ports with their VMs, MACs and addresses
//! (plus DHCP clients that are no port). Text for a terminal, DOT for
//! Graphviz, SVG for a browser or a document, JSON for scripts. Read from
//! the API (networks, ports, leases); nothing is changed.

use clap::ValueEnum;
use serde::Serialize;
use serde_json::Value;

use super::{pct, printable, s, with_project, CliError, Client};

/// How `lanyard topo` draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TopoFormat {
    /// A tree per network, for a terminal.
    Text,
    /// Graphviz (`lanyard topo --format dot | dot -Tpng > net.png`).
    Dot,
    /// A picture, for a browser or a document.
    Svg,
    /// The gathered topology.
    Json,
}

/// The topology of the networks shown.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Topology {
    /// One per network.
    pub networks: Vec<NetView>,
}

/// One network: its bridge and what hangs on it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NetView {
    /// The network's key (`PROJECT/NAME`, the bare name in `default`).
    pub key: String,
    /// Mode.
    pub mode: String,
    /// active or inactive.
    pub state: String,
    /// The bridge.
    pub bridge: String,
    /// Subnet.
    pub subnet: String,
    /// The host's address on it.
    pub gateway: String,
    /// The physical NIC or trunk joined to it.
    pub uplink: Option<String>,
    /// The VLAN id on the trunk.
    pub vlan: Option<u64>,
    /// Its ports.
    pub ports: Vec<PortView>,
    /// DHCP clients that are no port (dynamic leases).
    pub clients: Vec<ClientView>,
}

/// One port.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PortView {
    /// The host-side interface.
    pub ifname: String,
    /// The VM.
    pub vm: String,
    /// Its MAC.
    pub mac: String,
    /// Its fixed IP.
    pub ip: Option<String>,
    /// The cluster node it lives on.
    pub node: Option<String>,
}

/// A DHCP client that is no port.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClientView {
    /// Its MAC.
    pub mac: String,
    /// Its leased address.
    pub ip: String,
    /// The name it gave.
    pub hostname: Option<String>,
}

fn opt(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(x) => Some(x.clone()),
        other => Some(other.to_string()),
    }
}

/// Builds the topology from the API's answers: `networks` (GET
/// /v1/networks), `ports` (GET /v1/ports) and each network's leases by key.
pub fn build(networks: &Value, ports: &Value, leases: &dyn Fn(&str) -> Value) -> Topology {
    let mut out = Topology::default();
    for n in networks.as_array().into_iter().flatten() {
        let project = n["project"].as_str().unwrap_or("default");
        let name = s(&n["name"]);
        let key = if project == "default" { name.clone() } else { format!("{project}/{name}") };
        let on_net = |p: &&Value| p["net"].as_str() == Some(key.as_str());
        let ports: Vec<PortView> = ports
            .as_array()
            .into_iter()
            .flatten()
            .filter(on_net)
            .map(|p| PortView {
                ifname: s(&p["ifname"]),
                vm: s(&p["vm"]),
                mac: s(&p["mac"]),
                ip: opt(&p["ip"]),
                node: opt(&p["node"]),
            })
            .collect();
        let clients = leases(&key)
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| l["kind"] == "dynamic")
            .map(|l| ClientView { mac: s(&l["mac"]), ip: s(&l["ip"]), hostname: opt(&l["hostname"]) })
            .collect();
        out.networks.push(NetView {
            key,
            mode: s(&n["mode"]),
            state: s(&n["state"]),
            bridge: s(&n["bridge"]),
            subnet: s(&n["subnet"]),
            gateway: s(&n["gateway"]),
            uplink: opt(&n["uplink"]),
            vlan: n["vlan"].as_u64(),
            ports,
            clients,
        });
    }
    out
}

/// Asks the daemon and builds the topology of every network (or `net`).
pub fn gather(c: &Client, net: Option<&str>, project: Option<&str>) -> Result<Topology, CliError> {
    let mut networks = c.call("GET", &with_project("/v1/networks", project), None)?;
    if let (Some(want), Some(list)) = (net, networks.as_array_mut()) {
        list.retain(|n| n["name"] == want);
        if list.is_empty() {
            return Err(CliError::Refused {
                message: format!("no network named {want:?} (see `lanyard net list --all`)"),
                kind: "not_found".into(),
            });
        }
    }
    let ports = c.call("GET", &with_project("/v1/ports", project), None)?;
    let mut leases = std::collections::BTreeMap::new();
    for n in networks.as_array().into_iter().flatten() {
        let p = n["project"].as_str().unwrap_or("default");
        let name = s(&n["name"]);
        let key = if p == "default" { name.clone() } else { format!("{p}/{name}") };
        let path = with_project(&format!("/v1/networks/{}/leases", pct(&name)), Some(p));
        leases.insert(key, c.call("GET", &path, None).unwrap_or(Value::Null));
    }
    Ok(build(&networks, &ports, &|k| leases.get(k).cloned().unwrap_or(Value::Null)))
}

/// The uplink side of a network: `eth0 ── eth0.10 ── ` before its bridge.
fn uplink_chain(n: &NetView) -> String {
    match (&n.uplink, n.vlan) {
        (Some(u), Some(v)) => format!("{} ── {} (VLAN {v}) ── ", printable(u), crate::model::vlan_ifname(u, v as u16)),
        (Some(u), None) => format!("{} ── ", printable(u)),
        _ => String::new(),
    }
}

/// A tree per network, every guest-chosen string made printable.
pub fn text(t: &Topology) -> String {
    let mut out = String::new();
    for n in &t.networks {
        out.push_str(&format!(
            "{}{}  {} {}  gateway {}  network {} ({})\n",
            uplink_chain(n),
            printable(&n.bridge),
            n.mode,
            n.subnet,
            n.gateway,
            printable(&n.key),
            n.state
        ));
        let rows: Vec<String> = n
            .ports
            .iter()
            .map(|p| {
                let node = p.node.as_deref().map(|x| format!("  on {}", printable(x))).unwrap_or_default();
                format!(
                    "{}  {}  {}  {}{node}",
                    printable(&p.ifname),
                    printable(&p.vm),
                    p.mac,
                    p.ip.as_deref().unwrap_or("-")
                )
            })
            .chain(n.clients.iter().map(|c| {
                format!(
                    "(dhcp client)  {}  {}  {}",
                    printable(c.hostname.as_deref().unwrap_or("-")),
                    printable(&c.mac),
                    printable(&c.ip)
                )
            }))
            .collect();
        for (i, r) in rows.iter().enumerate() {
            let branch = if i + 1 == rows.len() { "└──" } else { "├──" };
            out.push_str(&format!("  {branch} {r}\n"));
        }
        if rows.is_empty() {
            out.push_str("  (no ports)\n");
        }
    }
    if t.networks.is_empty() {
        out.push_str("no networks\n");
    }
    out
}

/// A DOT string literal.
fn dot_str(x: &str) -> String {
    let mut o = String::from("\"");
    for ch in x.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if c.is_control() => o.push(' '),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Graphviz: a cluster per network, uplink → VLAN device → bridge → ports.
pub fn dot(t: &Topology) -> String {
    let mut out = String::from("graph lanyard {\n  rankdir=TB;\n  node [fontname=\"monospace\"];\n");
    for (i, n) in t.networks.iter().enumerate() {
        let id = |kind: &str, x: &str| dot_str(&format!("{i}:{kind}:{x}"));
        out.push_str(&format!(
            "  subgraph cluster_{i} {{\n    label={};\n",
            dot_str(&format!("{} ({} {})", n.key, n.mode, n.subnet))
        ));
        let bridge = id("bridge", &n.bridge);
        out.push_str(&format!(
            "    {bridge} [shape=box, style=bold, label={}];\n",
            dot_str(&format!("{}\ngateway {}", n.bridge, n.gateway))
        ));
        if let Some(u) = &n.uplink {
            let up = id("uplink", u);
            out.push_str(&format!("    {up} [shape=box3d, label={}];\n", dot_str(u)));
            match n.vlan {
                Some(v) => {
                    let vd = id("vlan", &v.to_string());
                    let name = crate::model::vlan_ifname(u, v as u16);
                    out.push_str(&format!("    {vd} [shape=box, label={}];\n", dot_str(&format!("{name}\nVLAN {v}"))));
                    out.push_str(&format!("    {up} -- {vd};\n    {vd} -- {bridge};\n"));
                }
                None => out.push_str(&format!("    {up} -- {bridge};\n")),
            }
        }
        for p in &n.ports {
            let pid = id("port", &p.ifname);
            let label = format!("{}\n{}\n{}\n{}", p.vm, p.ifname, p.mac, p.ip.as_deref().unwrap_or("-"));
            out.push_str(&format!(
                "    {pid} [shape=box, style=rounded, label={}];\n    {bridge} -- {pid};\n",
                dot_str(&label)
            ));
        }
        for c in &n.clients {
            let cid = id("client", &c.mac);
            let label = format!("dhcp client\n{}\n{}", c.mac, c.ip);
            out.push_str(&format!(
                "    {cid} [shape=box, style=dashed, label={}];\n    {bridge} -- {cid};\n",
                dot_str(&label)
            ));
        }
        out.push_str("  }\n");
    }
    out.push_str("}\n");
    out
}

/// Text for XML (SVG) and HTML (the web page): the five characters that
/// matter escaped, control characters dropped.
pub fn xml(x: &str) -> String {
    x.chars()
        .filter(|c| !c.is_control())
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&#39;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

const COL: u32 = 300;
const ROW: u32 = 64;

/// A picture: one column per network, its uplink (and VLAN device) on top,
/// the bridge, then each port as a box joined to the bridge.
pub fn svg(t: &Topology) -> String {
    let rows = t.networks.iter().map(|n| n.ports.len() + n.clients.len()).max().unwrap_or(0) as u32;
    let (width, height) = (COL * (t.networks.len().max(1) as u32) + 20, ROW * (rows + 4) + 20);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"monospace\" \
         font-size=\"12\">\n"
    );
    let boxed = |out: &mut String, x: u32, y: u32, lines: &[String], style: &str| {
        out.push_str(&format!(
            "  <rect x=\"{x}\" y=\"{y}\" width=\"{}\" height=\"{}\" rx=\"6\" {style}/>\n",
            COL - 40,
            ROW - 16
        ));
        for (i, l) in lines.iter().enumerate() {
            out.push_str(&format!("  <text x=\"{}\" y=\"{}\">{}</text>\n", x + 8, y + 16 + 14 * i as u32, xml(l)));
        }
    };
    for (i, n) in t.networks.iter().enumerate() {
        let x = 20 + COL * i as u32;
        let mut y = 20;
        let center = x + (COL - 40) / 2;
        if let Some(u) = &n.uplink {
            let mut lines = vec![format!("uplink {u}")];
            if let Some(v) = n.vlan {
                lines.push(format!("{} (VLAN {v})", crate::model::vlan_ifname(u, v as u16)));
            }
            boxed(&mut out, x, y, &lines, "fill=\"#eef\" stroke=\"#446\"");
            out.push_str(&format!(
                "  <line x1=\"{center}\" y1=\"{}\" x2=\"{center}\" y2=\"{}\" stroke=\"#446\"/>\n",
                y + ROW - 16,
                y + ROW
            ));
        }
        y += ROW;
        boxed(
            &mut out,
            x,
            y,
            &[
                format!("{} — {} ({}, {})", n.bridge, n.key, n.mode, n.state),
                format!("{} gateway {}", n.subnet, n.gateway),
            ],
            "fill=\"#efe\" stroke=\"#262\" stroke-width=\"2\"",
        );
        let top = y + ROW - 16;
        let items: Vec<(Vec<String>, &str)> = n
            .ports
            .iter()
            .map(|p| {
                (
                    vec![format!("{} ({})", p.vm, p.ifname), format!("{} {}", p.ip.as_deref().unwrap_or("-"), p.mac)],
                    "fill=\"#fff\" stroke=\"#333\"",
                )
            })
            .chain(n.clients.iter().map(|c| {
                (
                    vec![format!("dhcp client {}", c.hostname.as_deref().unwrap_or("")), format!("{} {}", c.ip, c.mac)],
                    "fill=\"#fff\" stroke=\"#333\" stroke-dasharray=\"4\"",
                )
            }))
            .collect();
        for (lines, style) in items {
            y += ROW;
            out.push_str(&format!(
                "  <line x1=\"{}\" y1=\"{top}\" x2=\"{}\" y2=\"{}\" stroke=\"#333\"/>\n",
                x + 12,
                x + 12,
                y + (ROW - 16) / 2
            ));
            boxed(&mut out, x + 24, y, &lines, style);
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Topology {
        let hostile = "a\"b<c>&\n\u{1b}[31m";
        let networks = json!([
            {"name": "default", "project": "default", "mode": "nat", "state": "active", "bridge": "lybr0",
             "subnet": "192.168.122.0/24", "gateway": "192.168.122.1", "uplink": null, "vlan": null},
            {"name": "v10", "project": "red", "mode": "route", "state": "active", "bridge": "brvlan10",
             "subnet": "10.0.10.0/24", "gateway": "10.0.10.1", "uplink": "eth0", "vlan": 10},
        ]);
        let ports = json!([
            {"net": "default", "ifname": "ly0011aabb", "vm": "web1", "mac": "52:54:00:00:00:01", "ip": "192.168.122.2"},
            {"net": "red/v10", "ifname": "ly0022ccdd", "vm": hostile, "mac": "52:54:00:00:00:02", "ip": "10.0.10.2", "node": "h2"},
        ]);
        let leases = |k: &str| {
            if k == "default" {
                json!([{"mac": "52:54:00:00:00:09", "ip": "192.168.122.130", "hostname": hostile, "kind": "dynamic"},
                       {"mac": "52:54:00:00:00:01", "ip": "192.168.122.2", "kind": "static"}])
            } else {
                Value::Null
            }
        };
        build(&networks, &ports, &leases)
    }

    #[test]
    fn the_tree_shows_uplinks_bridges_ports_and_clients_printably() {
        let t = text(&sample());
        assert!(t.contains("lybr0  nat 192.168.122.0/24  gateway 192.168.122.1  network default (active)"), "{t}");
        assert!(t.contains("├── ly0011aabb  web1  52:54:00:00:00:01  192.168.122.2"), "{t}");
        assert!(t.contains("└── (dhcp client)"), "{t}");
        assert!(t.contains("eth0 ── eth0.10 (VLAN 10) ── brvlan10"), "{t}");
        assert!(t.contains("on h2"), "{t}");
        assert!(!t.contains('\u{1b}'), "a guest's string reached the terminal raw: {t:?}");
        assert_eq!(t.lines().count(), 5, "{t}");
    }

    #[test]
    fn dot_and_svg_are_well_formed_whatever_the_names() {
        let topo = sample();
        let d = dot(&topo);
        assert!(d.starts_with("graph lanyard {") && d.trim_end().ends_with('}'));
        assert_eq!(d.matches('{').count(), d.matches('}').count(), "{d}");
        assert!(d.contains("label=\"a\\\"b<c>&\\n [31m\\n"), "{d}");
        let svg = svg(&topo);
        let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{e}: {svg}"));
        let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
        assert!(texts.iter().any(|t| t.contains("web1 (ly0011aabb)")), "{texts:?}");
        assert!(texts.iter().any(|t| t.contains("a\"b<c>&[31m")), "{texts:?}");
        assert!(texts.iter().any(|t| t.contains("eth0.10 (VLAN 10)")), "{texts:?}");
        let empty = Topology::default();
        assert!(roxmltree::Document::parse(&super::svg(&empty)).is_ok());
        assert_eq!(text(&empty), "no networks\n");
    }
}
