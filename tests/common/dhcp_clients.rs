//! Real DHCP clients in a VM namespace: busybox `udhcpc` and ISC
//! `dhclient`, each with a private script that configures only its
//! interface (never /etc/resolv.conf), and the [`DhcpLease`] they report.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use super::netns::Netns;
use super::privilege::tool;
use super::process::{poll, run, signal, stderr, stdout, wait_timeout, CLIENT_PATH};

/// What a DHCP client was given, from the variables it passed its script.
#[derive(Debug, Clone)]
pub struct DhcpLease {
    /// Leased address.
    pub ip: Ipv4Addr,
    /// Prefix length from the subnet mask.
    pub prefix: u8,
    /// Router option (3).
    pub routers: Vec<Ipv4Addr>,
    /// Server identifier (54).
    pub server_id: Option<Ipv4Addr>,
    /// Every variable the script saw.
    pub vars: BTreeMap<String, String>,
}

fn mask_to_prefix(mask: &str) -> Option<u8> {
    if let Ok(n) = mask.parse::<u8>() {
        return (n <= 32).then_some(n);
    }
    let m: Ipv4Addr = mask.parse().ok()?;
    let bits = u32::from(m);
    (bits.leading_ones() + bits.trailing_zeros() == 32).then(|| bits.leading_ones() as u8)
}

fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

fn write_script(path: &Path, body: &str) {
    fs::write(path, body).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod script");
}

fn lease_from(
    vars: BTreeMap<String, String>,
    ip: &str,
    mask: &str,
    routers: &str,
    server: &str,
) -> Result<DhcpLease, String> {
    let get = |k: &str| vars.get(k).cloned().unwrap_or_default();
    let ip_v: Ipv4Addr = get(ip).parse().map_err(|_| format!("script saw no valid {ip}: {vars:?}"))?;
    let prefix = mask_to_prefix(&get(mask)).ok_or_else(|| format!("script saw no valid {mask}: {vars:?}"))?;
    let routers = get(routers).split_whitespace().filter_map(|r| r.parse().ok()).collect();
    let server_id = get(server).parse().ok();
    Ok(DhcpLease { ip: ip_v, prefix, routers, server_id, vars })
}

/// Runs busybox `udhcpc` once in `ns` on `ifname` (sending `hostname` as
/// option 12 if given) with a script that only configures that interface,
/// and returns the lease it got. Bounded to ~20 s.
pub fn udhcpc(ns: &Netns, ifname: &str, hostname: Option<&str>) -> Result<DhcpLease, String> {
    let dir = ns.dir();
    let script = dir.join("udhcpc.script");
    let env_file = dir.join("udhcpc.env");
    let ip = tool("ip");
    // Touches only the interface udhcpc manages, in the namespace it runs in.
    write_script(
        &script,
        &format!(
            r#"#!/bin/sh
IP={ip}
case "$1" in
  deconfig)
    $IP -4 addr flush dev "$interface"
    $IP link set dev "$interface" up
    ;;
  bound|renew)
    (env; echo "event=$1") > "{env}.tmp"
    $IP -4 addr flush dev "$interface"
    $IP addr add "$ip/$mask" dev "$interface" || exit 1
    for r in $router; do $IP route replace default via "$r" dev "$interface"; break; done
    mv "{env}.tmp" "{env}"
    ;;
esac
exit 0
"#,
            ip = ip.display(),
            env = env_file.display()
        ),
    );
    let _ = fs::remove_file(&env_file);
    let script_s = script.display().to_string();
    let mut args = vec!["-f", "-q", "-n", "-t", "5", "-T", "2", "-A", "1", "-i", ifname, "-s", &script_s];
    let hn;
    if let Some(h) = hostname {
        hn = format!("hostname:{h}");
        args.extend(["-x", &hn]);
    }
    let mut cmd = ns.command("udhcpc", &args);
    cmd.env_clear().env("PATH", CLIENT_PATH);
    let o = run(&mut cmd, Duration::from_secs(30));
    let log = format!("udhcpc {}: {}\n{}{}", args.join(" "), o.status, stdout(&o), stderr(&o));
    if !o.status.success() {
        return Err(format!("udhcpc failed: {log}"));
    }
    let text = fs::read_to_string(&env_file).map_err(|e| format!("udhcpc script left no lease ({e}): {log}"))?;
    lease_from(parse_env(&text), "ip", "mask", "router", "serverid").map_err(|e| format!("{e}\n{log}"))
}

/// Runs ISC `dhclient -4 -1` in `ns` on `ifname` with a private config,
/// lease file, pid file and a script that only configures that interface;
/// returns the lease. The daemonized client is stopped afterwards. Bounded
/// to ~30 s.
pub fn dhclient(ns: &Netns, ifname: &str, hostname: Option<&str>) -> Result<DhcpLease, String> {
    let dir = ns.dir();
    let conf = dir.join("dhclient.conf");
    let script = dir.join("dhclient.script");
    let lease_file = dir.join("dhclient.leases");
    let pid_file = dir.join("dhclient.pid");
    let env_file = dir.join("dhclient.env");
    let log_file = dir.join("dhclient.log");
    let ip = tool("ip");
    let send = hostname.map(|h| format!("send host-name \"{h}\";\n")).unwrap_or_default();
    fs::write(
        &conf,
        format!(
            "timeout 20;\ninitial-interval 1;\nbackoff-cutoff 2;\n{send}request subnet-mask, broadcast-address, routers, domain-name, domain-name-servers, host-name, interface-mtu;\n"
        ),
    )
    .expect("write dhclient.conf");
    write_script(
        &script,
        &format!(
            r#"#!/bin/sh
IP={ip}
case "$reason" in
  PREINIT)
    $IP link set dev "$interface" up
    ;;
  BOUND|RENEW|REBIND|REBOOT)
    env > "{env}.tmp"
    if [ -n "$old_ip_address" ] && [ "$old_ip_address" != "$new_ip_address" ]; then
      $IP -4 addr flush dev "$interface"
    fi
    $IP addr replace "$new_ip_address/$new_subnet_mask" dev "$interface" || exit 1
    for r in $new_routers; do $IP route replace default via "$r" dev "$interface"; break; done
    mv "{env}.tmp" "{env}"
    ;;
  EXPIRE|FAIL|RELEASE|STOP)
    $IP -4 addr flush dev "$interface"
    ;;
esac
exit 0
"#,
            ip = ip.display(),
            env = env_file.display()
        ),
    );
    let _ = fs::remove_file(&env_file);
    let _ = fs::remove_file(&pid_file);
    let log = File::create(&log_file).expect("dhclient log");
    let (c, s, l, p) = (
        conf.display().to_string(),
        script.display().to_string(),
        lease_file.display().to_string(),
        pid_file.display().to_string(),
    );
    let args = ["-4", "-1", "-v", "-cf", &c, "-sf", &s, "-lf", &l, "-pf", &p, ifname];
    // Output goes to a file, not a pipe: the client forks into the
    // background after binding and would keep a pipe open.
    let mut cmd = ns.command("dhclient", &args);
    cmd.env_clear().env("PATH", CLIENT_PATH);
    cmd.stdin(Stdio::null()).stdout(Stdio::from(log.try_clone().expect("fd"))).stderr(Stdio::from(log));
    let mut child = cmd.spawn().map_err(|e| format!("cannot start dhclient: {e}"))?;
    let status = wait_timeout(&mut child, Duration::from_secs(40));
    // Stop the background client (by the pid it writes right after forking)
    // so it does not renew or release behind the test's back.
    if status.is_some_and(|s| s.success()) {
        let pid = poll(Duration::from_secs(3), Duration::from_millis(50), || {
            fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse::<u32>().ok())
        });
        if let Some(pid) = pid.filter(|p| ns.pids().contains(p)) {
            signal(pid, "TERM");
        }
    }
    let text_log = || fs::read_to_string(&log_file).unwrap_or_default();
    let status = match status {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("dhclient did not finish within 40 s:\n{}", text_log()));
        }
    };
    if !status.success() {
        return Err(format!("dhclient {}: {status}\n{}", args.join(" "), text_log()));
    }
    let text =
        fs::read_to_string(&env_file).map_err(|e| format!("dhclient script left no lease ({e}):\n{}", text_log()))?;
    lease_from(parse_env(&text), "new_ip_address", "new_subnet_mask", "new_routers", "new_dhcp_server_identifier")
        .map_err(|e| format!("{e}\n{}", text_log()))
}
