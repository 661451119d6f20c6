//! The Linux driver: iproute2 for links and addresses, nft for the firewall,
//! /proc/sys for the forwarding sysctl.
//!
//! Why iproute2 and not a netlink crate: one `ip -batch` process applies a
//! whole plan (thousands of operations) with the kernel's own error text and
//! the line it failed on, `ip tuntap` already does the /dev/net/tun ioctls
//! that rtnetlink cannot, and `ip -n`-free batches run in whatever namespace
//! the daemon lives in. The driver is behind [`Dataplane`], so a netlink
//! implementation can replace it without touching the planner.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;
use serde::Deserialize;
use serde_json::Value;

use crate::kernel::firewall::TableId;
use crate::kernel::{
    Element, FirewallChange, Kernel, KernelError, LinkKind, Observed, ObservedLink, Op, Route, RouteProto, Set,
};

type DataplaneError = KernelError;

/// How many ops completed, and the error if one failed.
type OpsResult = (usize, Option<KernelError>);

/// Drives the kernel of the namespace the daemon runs in.
#[derive(Debug, Default)]
pub struct LinuxDataplane;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// The `ip -batch` lines that perform `op` (empty for non-iproute2 ops).
pub fn batch_lines(op: &Op) -> Vec<String> {
    let mtu = |m: &Option<u32>| m.map(|m| format!(" mtu {m}")).unwrap_or_default();
    match op {
        Op::CreateBridge { name, mac, mtu: m, alias } => {
            let address = mac.map(|a| format!(" address {a}")).unwrap_or_default();
            vec![
                format!("link add name {name}{address}{} type bridge stp_state 0", mtu(m)),
                format!("link set dev {name} alias {alias}"),
            ]
        }
        Op::CreateTap(crate::kernel::link::TapSpec { name, mac, owner, group, mtu: m, alias }) => {
            let mut add = format!("tuntap add dev {name} mode tap");
            if let Some(u) = owner {
                add.push_str(&format!(" user {u}"));
            }
            if let Some(g) = group {
                add.push_str(&format!(" group {g}"));
            }
            vec![add, format!("link set dev {name} address {mac}{} alias {alias}", mtu(m))]
        }
        Op::CreateVeth(crate::kernel::link::VethSpec { name, peer_netns, peer_name, peer_mac, mtu: m, alias }) => vec![
            format!(
                "link add name {name}{mt} type veth peer name {peer_name} address {peer_mac}{mt} netns {peer_netns}",
                mt = mtu(m)
            ),
            format!("link set dev {name} alias {alias}"),
        ],
        Op::AddAddress { link, addr } => vec![format!("address add {addr} dev {link}")],
        Op::DelAddress { link, addr } => vec![format!("address del {addr} dev {link}")],
        Op::SetMaster { link, master: Some(master), .. } => vec![format!("link set dev {link} master {master}")],
        Op::SetMaster { link, master: None, .. } => vec![format!("link set dev {link} nomaster")],
        Op::ReplaceRoute { link, route } => {
            let mut l = format!("route replace {}", route.dst.map_or("default".to_string(), |d| d.to_string()));
            if let Some(gw) = route.gateway {
                l.push_str(&format!(" via {gw}"));
            }
            l.push_str(&format!(" dev {link}"));
            if let Some(m) = route.metric {
                l.push_str(&format!(" metric {m}"));
            }
            if let Some(src) = route.prefsrc {
                l.push_str(&format!(" src {src}"));
            }
            if route.proto == RouteProto::Dhcp {
                l.push_str(" proto dhcp");
            }
            vec![l]
        }
        Op::SetMtu { link, mtu, .. } => vec![format!("link set dev {link} mtu {mtu}")],
        Op::SetMac { link, mac, .. } => vec![format!("link set dev {link} address {mac}")],
        Op::SetUp { link, up: true } => vec![format!("link set dev {link} up")],
        Op::SetUp { link, up: false } => vec![format!("link set dev {link} down")],
        Op::DeleteLink { name } => vec![format!("link del dev {name}")],
        _ => vec![],
    }
}

/// Runs an op that `ip -batch` cannot express.
fn run_single(op: &Op) -> Result<(), DataplaneError> {
    match op {
        Op::SetForwarding { on } => {
            std::fs::write(IP_FORWARD, if *on { "1" } else { "0" }).map_err(|e| KernelError::op(op, &e))
        }
        Op::CreateVeth(v) => {
            let (n, e) = run_batch(std::slice::from_ref(op));
            if let Some(e) = e.filter(|_| n == 0) {
                return Err(e);
            }
            let (ok, _, err) =
                run_capture("ip", &["-n", &v.peer_netns, "link", "set", "dev", &v.peer_name, "up"], None)?;
            if ok {
                Ok(())
            } else {
                Err(KernelError::Op { op: op.to_string(), errno: None, message: err.trim().to_string() })
            }
        }
        other => Err(KernelError::Unavailable(format!("{other}: not supported by the iproute2 driver"))),
    }
}

fn is_single(op: &Op) -> bool {
    batch_lines(op).is_empty() || matches!(op, Op::CreateVeth(_))
}

fn run_capture(
    program: &'static str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<(bool, String, String), DataplaneError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| KernelError::Unavailable(format!("cannot run {program}: {e}")))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin was piped");
        // A write error means the child exited early; its status says why.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| KernelError::Unavailable(format!("cannot run {program}: {e}")))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Runs iproute2 ops in one batch; returns how many ops completed.
fn run_batch(ops: &[Op]) -> OpsResult {
    let mut script = String::new();
    let mut line_to_op = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        for line in batch_lines(op) {
            script.push_str(&line);
            script.push('\n');
            line_to_op.push(i);
        }
    }
    if script.is_empty() {
        return (ops.len(), None);
    }
    match run_capture("ip", &["-batch", "-"], Some(&script)) {
        Err(e) => (0, Some(e)),
        Ok((true, _, _)) => (ops.len(), None),
        Ok((false, _, stderr)) => {
            // iproute2 reports "Command failed -:N" with the 1-based line.
            let failed_line = stderr
                .lines()
                .find_map(|l| l.trim().strip_prefix("Command failed -:"))
                .and_then(|n| n.trim().parse::<usize>().ok())
                .unwrap_or(1);
            let op_index = line_to_op.get(failed_line.saturating_sub(1)).copied().unwrap_or(0);
            let op_text = script.lines().nth(failed_line.saturating_sub(1)).unwrap_or("").to_string();
            let message = stderr.lines().filter(|l| !l.starts_with("Command failed")).collect::<Vec<_>>().join("; ");
            (op_index, Some(DataplaneError::Op { op: format!("ip {op_text}"), errno: None, message }))
        }
    }
}

/// iproute2 prints "8000.3a:22:d0:c6:46:9"; brctl prints "8000.3a22d0c64609".
fn brctl_bridge_id(id: &str) -> String {
    let (prio, mac) = id.split_once('.').unwrap_or(("8000", id));
    let hex: String = mac.split(':').map(|b| format!("{:0>2}", b)).collect();
    format!("{prio}.{hex}")
}

/// The fields lanyard reads from `ip -j -d addr show`. Typed, so the other
/// (many) fields are skipped while parsing instead of being built into a
/// JSON tree: with ten thousand links that is the difference between
/// megabytes and a hundred of them.
#[derive(Deserialize)]
struct IpLink {
    ifname: String,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    mtu: u32,
    master: Option<String>,
    ifalias: Option<String>,
    address: Option<String>,
    #[serde(default)]
    addr_info: Vec<IpAddrInfo>,
    linkinfo: Option<IpLinkInfo>,
}

#[derive(Deserialize)]
struct IpAddrInfo {
    family: Option<String>,
    local: Option<String>,
    prefixlen: Option<u8>,
}

#[derive(Deserialize)]
struct IpLinkInfo {
    info_kind: Option<String>,
    info_data: Option<IpInfoData>,
}

#[derive(Deserialize)]
struct IpInfoData {
    bridge_id: Option<String>,
    stp_state: Option<u64>,
}

fn parse_links(json: &str) -> Result<Vec<ObservedLink>, DataplaneError> {
    let links: Vec<IpLink> = serde_json::from_str(json)
        .map_err(|e| DataplaneError::Observe { what: "links (ip -j -d addr)", message: e.to_string() })?;
    Ok(links
        .into_iter()
        .map(|l| {
            let addrs = l
                .addr_info
                .iter()
                .filter(|a| a.family.as_deref() == Some("inet"))
                .filter_map(|a| Ipv4Net::new(a.local.as_deref()?.parse().ok()?, a.prefixlen?).ok())
                .collect();
            let (kind, data) = match l.linkinfo {
                Some(i) => (i.info_kind, i.info_data),
                None => (None, None),
            };
            let kind = LinkKind::from_kernel(kind.as_deref());
            let bridge = (kind == LinkKind::Bridge).then(|| crate::kernel::link::BridgeInfo {
                id: data.as_ref().and_then(|d| d.bridge_id.as_deref()).map(brctl_bridge_id).unwrap_or_default(),
                stp: data.as_ref().and_then(|d| d.stp_state).is_some_and(|s| s != 0),
                vlan_filtering: false,
            });
            ObservedLink {
                up: l.flags.iter().any(|f| f == "UP"),
                name: l.ifname,
                index: 0,
                kind,
                master: l.master,
                mtu: l.mtu,
                addrs,
                alias: l.ifalias,
                bridge,
                mac: l.address.and_then(|a| a.parse().ok()),
            }
        })
        .collect())
}

fn parse_routes(json: &str) -> Result<Vec<Route>, DataplaneError> {
    let v: Value = serde_json::from_str(json)
        .map_err(|e| DataplaneError::Observe { what: "routes (ip -j route)", message: e.to_string() })?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| {
                    let dst = match r["dst"].as_str()? {
                        "default" => None,
                        d => Some(
                            d.parse::<Ipv4Net>()
                                .ok()
                                .or_else(|| d.parse().ok().and_then(|ip| Ipv4Net::new(ip, 32).ok()))?,
                        ),
                    };
                    Some(Route {
                        dst,
                        gateway: r["gateway"].as_str().and_then(|g| g.parse().ok()),
                        dev: r["dev"].as_str().map(String::from),
                        metric: r["metric"].as_u64().and_then(|m| u32::try_from(m).ok()),
                        prefsrc: r["prefsrc"].as_str().and_then(|g| g.parse().ok()),
                        proto: match r["protocol"].as_str() {
                            Some("kernel") => RouteProto::Kernel,
                            Some("dhcp") => RouteProto::Dhcp,
                            _ => RouteProto::Static,
                        },
                    })
                })
                .collect()
        })
        .unwrap_or_default())
}

impl Kernel for LinuxDataplane {
    fn observe(&self) -> Result<Observed, DataplaneError> {
        let (ok, links, err) = run_capture("ip", &["-j", "-d", "addr", "show"], None)?;
        if !ok {
            return Err(DataplaneError::Observe { what: "links (ip -j -d addr)", message: err });
        }
        let (ok, routes, err) = run_capture("ip", &["-j", "-4", "route", "show"], None)?;
        if !ok {
            return Err(DataplaneError::Observe { what: "routes (ip -j route)", message: err });
        }
        let ip_forward = std::fs::read_to_string(IP_FORWARD).map(|s| s.trim() == "1").unwrap_or(false);
        Ok(Observed {
            links: parse_links(&links)?.into_iter().map(|l| (l.name.clone(), l)).collect(),
            routes: parse_routes(&routes)?,
            ip_forward,
        })
    }

    fn observe_links(&self, names: &[&str]) -> Result<BTreeMap<String, ObservedLink>, DataplaneError> {
        let mut out = BTreeMap::new();
        for name in names {
            // The common case is a new port whose link does not exist yet:
            // ask the kernel by name first instead of starting `ip`.
            let Ok(cname) = std::ffi::CString::new(*name) else { continue };
            // SAFETY: cname is a valid NUL-terminated string that outlives the call.
            if unsafe { libc::if_nametoindex(cname.as_ptr()) } == 0 {
                continue;
            }
            // Exit status 1 with "does not exist" is an answer, not an error.
            let (ok, json, err) = run_capture("ip", &["-j", "-d", "addr", "show", "dev", name], None)?;
            if ok {
                out.extend(parse_links(&json)?.into_iter().map(|l| (l.name.clone(), l)));
            } else if !err.contains("does not exist") {
                return Err(DataplaneError::Observe { what: "links (ip -j -d addr)", message: err });
            }
        }
        Ok(out)
    }

    fn firewall_fingerprint(&self, table: &TableId) -> Result<Option<String>, KernelError> {
        // No table (nft exits non-zero) simply means no fingerprint.
        let (ok, text, _) = run_capture("nft", &["list", "table", table.family.as_str(), &table.name], None)?;
        Ok(if ok { fingerprint(&text) } else { None })
    }

    fn firewall_elements(
        &self,
        _table: &TableId,
        _set: &Set,
    ) -> Result<std::collections::BTreeSet<Element>, KernelError> {
        // Interim: re-adding every wanted element is harmless in nftables.
        Ok(Default::default())
    }

    fn coexistence(&self, _mark: u32) -> Result<crate::kernel::Coexistence, KernelError> {
        Ok(crate::kernel::Coexistence::default())
    }

    fn ensure_docker_user(&self, _mark: u32) -> Result<bool, KernelError> {
        Ok(false)
    }

    fn apply_op(&self, op: &Op) -> Result<(), KernelError> {
        match self.run(std::slice::from_ref(op)) {
            (_, Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    fn apply_firewall(&self, change: &FirewallChange) -> Result<(), KernelError> {
        let script = match change {
            FirewallChange::None => return Ok(()),
            FirewallChange::Replace(t) => format!("table {id} {{}}\ndelete table {id}\n{}", t.render(), id = t.id),
            FirewallChange::Delete(id) => format!("delete table {id}\n"),
            FirewallChange::Elements(v) => {
                let id = crate::planner::table_id();
                v.iter()
                    .map(|c| {
                        format!("{} element {id} {} {{ {} }}\n", if c.add { "add" } else { "delete" }, c.set, c.element)
                    })
                    .collect()
            }
        };
        let (ok, _, err) = run_capture("nft", &["-f", "-"], Some(&script))?;
        if ok {
            Ok(())
        } else {
            Err(KernelError::Firewall { what: "lanyard's table".into(), message: err.trim().replace('\n', "; ") })
        }
    }
}

impl LinuxDataplane {
    fn run(&self, ops: &[Op]) -> OpsResult {
        // Batches run between the ops iproute2 batches cannot hold, keeping
        // the plan's order.
        let mut done = 0;
        for chunk in ops.split_inclusive(is_single) {
            let (batch, single) = match chunk.split_last() {
                Some((last, rest)) if is_single(last) => (rest, Some(last)),
                _ => (chunk, None),
            };
            let (n, err) = run_batch(batch);
            done += n;
            if err.is_some() {
                return (done, err);
            }
            if let Some(op) = single {
                if let Err(e) = run_single(op) {
                    return (done, Some(e));
                }
                done += 1;
            }
        }
        (done, None)
    }
}

/// The fingerprint comment in a table listing.
fn fingerprint(listing: &str) -> Option<String> {
    let start = listing.find("comment \"lanyard:")? + "comment \"".len();
    let len = listing[start..].find('"')?;
    Some(listing[start..start + len].to_string())
}
