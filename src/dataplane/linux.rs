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

use super::{Dataplane, DataplaneError, OpsResult};
use crate::planner::{Observed, ObservedLink, Op, Route};

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
        Op::CreateTap { name, mac, owner, group, mtu: m, alias } => {
            let mut add = format!("tuntap add dev {name} mode tap");
            if let Some(u) = owner {
                add.push_str(&format!(" user {u}"));
            }
            if let Some(g) = group {
                add.push_str(&format!(" group {g}"));
            }
            vec![add, format!("link set dev {name} address {mac}{} alias {alias}", mtu(m))]
        }
        Op::CreateVeth { name, peer_netns, peer_name, peer_mac, mtu: m, alias } => vec![
            format!(
                "link add name {name}{mt} type veth peer name {peer_name} address {peer_mac}{mt} netns {peer_netns}",
                mt = mtu(m)
            ),
            format!("link set dev {name} alias {alias}"),
        ],
        Op::AddAddress { link, addr } => vec![format!("address add {addr} dev {link}")],
        Op::DelAddress { link, addr } => vec![format!("address del {addr} dev {link}")],
        Op::SetMaster { link, master } => vec![format!("link set dev {link} master {master}")],
        Op::NoMaster { link } => vec![format!("link set dev {link} nomaster")],
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
            if let Some(p) = route.proto.as_deref().filter(|p| p.chars().all(|c| c.is_ascii_alphanumeric())) {
                l.push_str(&format!(" proto {p}"));
            }
            vec![l]
        }
        Op::SetMtu { link, mtu } => vec![format!("link set dev {link} mtu {mtu}")],
        Op::SetUp { link } => vec![format!("link set dev {link} up")],
        Op::DeleteLink { name } => vec![format!("link del dev {name}")],
        Op::PeerUp { .. } | Op::EnableForwarding => vec![],
    }
}

/// Runs an op that `ip -batch` cannot express.
fn run_single(op: &Op) -> Result<(), DataplaneError> {
    match op {
        Op::EnableForwarding => std::fs::write(IP_FORWARD, "1")
            .map_err(|source| DataplaneError::Sysctl { key: "net.ipv4.ip_forward", source }),
        Op::PeerUp { netns, name } => {
            let (ok, _, err) = run_capture("ip", &["-n", netns, "link", "set", "dev", name, "up"], None)?;
            if ok {
                Ok(())
            } else {
                Err(DataplaneError::Op {
                    op: format!("ip -n {netns} link set dev {name} up"),
                    message: err.trim().to_string(),
                })
            }
        }
        _ => unreachable!("only non-batch ops are run singly"),
    }
}

fn is_single(op: &Op) -> bool {
    matches!(op, Op::EnableForwarding | Op::PeerUp { .. })
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
        .map_err(|source| DataplaneError::Spawn { program, source })?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin was piped");
        // A write error means the child exited early; its status says why.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| DataplaneError::Spawn { program, source })?;
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
            (op_index, Some(DataplaneError::Op { op: format!("ip {op_text}"), message }))
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
            ObservedLink {
                up: l.flags.iter().any(|f| f == "UP"),
                name: l.ifname,
                kind,
                master: l.master,
                mtu: l.mtu,
                addrs,
                alias: l.ifalias,
                bridge_id: data.as_ref().and_then(|d| d.bridge_id.as_deref()).map(brctl_bridge_id),
                stp: data.as_ref().and_then(|d| d.stp_state).map(|s| s != 0),
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
                        proto: r["protocol"].as_str().map(String::from),
                    })
                })
                .collect()
        })
        .unwrap_or_default())
}

impl Dataplane for LinuxDataplane {
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
            firewall_fingerprint: None,
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

    fn firewall_fingerprint(&self) -> Result<Option<String>, DataplaneError> {
        // No table (nft exits non-zero) simply means no fingerprint. The
        // text listing, because nft 1.0.6's JSON leaves table comments out.
        let (ok, table, _) = run_capture("nft", &["list", "table", "inet", crate::planner::NFT_TABLE], None)?;
        Ok(if ok { crate::planner::fingerprint(&table) } else { None })
    }

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

    fn apply_firewall(&self, script: &str) -> Result<(), DataplaneError> {
        let (ok, _, err) = run_capture("nft", &["-f", "-"], Some(script))?;
        if ok {
            Ok(())
        } else {
            Err(DataplaneError::Firewall(err.trim().replace('\n', "; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_json() {
        let json = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
        {"ifindex":5,"ifname":"lybr0","flags":["BROADCAST","MULTICAST","UP"],"mtu":1500,"ifalias":"lanyard:net:default","linkinfo":{"info_kind":"bridge"},"addr_info":[{"family":"inet","local":"192.168.122.1","prefixlen":24},{"family":"inet6","local":"fe80::1","prefixlen":64}]},
        {"ifindex":6,"ifname":"lyab","flags":["BROADCAST"],"mtu":1500,"master":"lybr0","linkinfo":{"info_kind":"tun"},"addr_info":[]}]"#;
        let links = parse_links(json).unwrap();
        assert_eq!(links.len(), 3);
        assert!(links[1].owned() && links[1].up && links[1].kind.as_deref() == Some("bridge"));
        assert_eq!(links[1].addrs, vec!["192.168.122.1/24".parse::<Ipv4Net>().unwrap()]);
        assert_eq!(links[2].master.as_deref(), Some("lybr0"));
        assert!(!links[2].up);
        let routes = parse_routes(
            r#"[{"dst":"default","gateway":"10.0.0.1","dev":"eth0","protocol":"dhcp","metric":100},{"dst":"10.0.0.0/8"},{"dst":"10.1.2.3"}]"#,
        )
        .unwrap();
        assert_eq!(routes[0].dst, None);
        assert_eq!(routes[0].gateway, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(
            batch_lines(&Op::ReplaceRoute { link: "br0".into(), route: routes[0].clone() }),
            vec!["route replace default via 10.0.0.1 dev br0 metric 100 proto dhcp"]
        );
        let routes: Vec<_> = routes.into_iter().skip(1).map(|r| r.dst.unwrap()).collect();
        assert_eq!(brctl_bridge_id("8000.3a:22:d0:c6:46:9"), "8000.3a22d0c64609");
        assert_eq!(routes, vec!["10.0.0.0/8".parse::<Ipv4Net>().unwrap(), "10.1.2.3/32".parse().unwrap()]);
    }

    #[test]
    fn reads_the_table_fingerprint_from_the_listing() {
        let listing = "table inet lanyard {\n\tcomment \"lanyard:00ff\"\n\tchain input {\n\t}\n}\n";
        assert_eq!(crate::planner::fingerprint(listing).as_deref(), Some("lanyard:00ff"));
    }

    #[test]
    fn batch_lines_are_plain_iproute2() {
        let op = Op::CreateVeth {
            name: "lyab".into(),
            peer_netns: "vm1".into(),
            peer_name: "eth0".into(),
            peer_mac: "52:54:00:00:00:01".parse().unwrap(),
            mtu: None,
            alias: "lanyard:port:ab".into(),
        };
        assert_eq!(
            batch_lines(&op),
            vec![
                "link add name lyab type veth peer name eth0 address 52:54:00:00:00:01 netns vm1",
                "link set dev lyab alias lanyard:port:ab"
            ]
        );
    }
}
