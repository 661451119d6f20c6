//! Looking at the network from inside a namespace: `ping` (once or in the
//! background), `dig`, dnsmasq as a LAN's DHCP server, and the small
//! parsing helpers assertions use (CIDRs, ranges, MACs, JSON fields).

use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::netns::Netns;
use super::process::{poll, run, show, signal, stderr, stdout, wait_timeout, CLIENT_PATH};

/// Result of one `ping` run.
#[derive(Debug, Clone)]
pub struct Ping {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Echo replies received.
    pub received: u32,
    /// ping's exit status was 0.
    pub success: bool,
    /// ping's output, for messages.
    pub output: String,
}

impl Ping {
    fn parse(o: &Output) -> Ping {
        let text = format!("{}{}", stdout(o), stderr(o));
        let mut transmitted = 0;
        let mut received = 0;
        if let Some(line) = text.lines().find(|l| l.contains("packets transmitted")) {
            let num = |key: &str| {
                line.split(',')
                    .find(|p| p.contains(key))
                    .and_then(|p| p.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            transmitted = num("transmitted");
            received = num("received");
        }
        Ping { transmitted, received, success: o.status.success(), output: text }
    }

    /// Packet loss in percent (100 if nothing was sent).
    pub fn loss_pct(&self) -> f64 {
        if self.transmitted == 0 {
            100.0
        } else {
            100.0 * f64::from(self.transmitted - self.received.min(self.transmitted)) / f64::from(self.transmitted)
        }
    }

    /// Every request got a reply.
    pub fn all_replied(&self) -> bool {
        self.success && self.transmitted > 0 && self.received == self.transmitted
    }

    /// No request got a reply (but some were sent).
    pub fn none_replied(&self) -> bool {
        self.transmitted > 0 && self.received == 0
    }
}

/// `ping -c COUNT -i 0.2 -W 1 -w DEADLINE TARGET` in `ns`.
pub fn ping(ns: &Netns, target: &str, count: u32, deadline_secs: u32) -> Ping {
    let (c, w) = (count.to_string(), deadline_secs.to_string());
    let o = run(
        &mut ns.command("ping", &["-n", "-c", &c, "-i", "0.2", "-W", "1", "-w", &w, target]),
        Duration::from_secs(u64::from(deadline_secs) + 15),
    );
    Ping::parse(&o)
}

/// A ping running in the background.
pub struct PingJob {
    child: Option<Child>,
    desc: String,
}

impl PingJob {
    /// Starts `ping -n ARGS TARGET` in `ns`.
    pub fn start(ns: &Netns, target: &str, args: &[&str]) -> PingJob {
        let mut a = vec!["-n"];
        a.extend_from_slice(args);
        a.push(target);
        let mut cmd = ns.command("ping", &a);
        let desc = show(&cmd);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start `{desc}`: {e}"));
        PingJob { child: Some(child), desc }
    }

    /// Still running?
    pub fn running(&mut self) -> bool {
        self.child.as_mut().map(|c| c.try_wait().ok().flatten().is_none()).unwrap_or(false)
    }

    /// Waits up to `timeout` for the ping to end; panics (killing it) if it
    /// does not.
    pub fn wait(mut self, timeout: Duration) -> Ping {
        let mut child = self.child.take().expect("ping job");
        match wait_timeout(&mut child, timeout) {
            Some(_) => {
                let o = child.wait_with_output().expect("ping output");
                Ping::parse(&o)
            }
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`{}` did not finish within {timeout:?}", self.desc);
            }
        }
    }
}

impl Drop for PingJob {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What one `dig` query got.
#[derive(Debug, Clone)]
pub struct Dig {
    /// The header's status (NOERROR, NXDOMAIN, REFUSED, ...); empty if no
    /// answer came back at all.
    pub status: String,
    /// A records of the answer section.
    pub answers: Vec<Ipv4Addr>,
    /// dig's whole output, for messages.
    pub output: String,
}

/// `dig +time=2 +tries=2 @SERVER NAME A` in `ns`: a real resolver query
/// to one server (a lanyard gateway) and nothing else.
pub fn dig(ns: &Netns, server: &str, name: &str) -> Dig {
    let at = format!("@{server}");
    let o = run(&mut ns.command("dig", &["+time=2", "+tries=2", &at, name, "A"]), Duration::from_secs(15));
    let output = format!("{}{}", stdout(&o), stderr(&o));
    let status = output
        .lines()
        .find_map(|l| l.split_once("status: "))
        .map(|(_, rest)| rest.split(',').next().unwrap_or_default().trim().to_string())
        .unwrap_or_default();
    let mut answers = Vec::new();
    let mut in_answer = false;
    for line in output.lines() {
        if line.starts_with(";; ANSWER SECTION") {
            in_answer = true;
        } else if line.trim().is_empty() {
            in_answer = false;
        } else if in_answer {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 5 && f[2] == "IN" && f[3] == "A" {
                if let Ok(ip) = f[4].parse() {
                    answers.push(ip);
                }
            }
        }
    }
    Dig { status, answers, output }
}

/// dnsmasq as the DHCP server of a LAN, in a namespace that plays the LAN
/// (never anywhere else): DHCP only (`--port=0`, no DNS), no resolv.conf,
/// no hosts file, no config file, bound to `ifname` only, with its lease,
/// pid and log files in the namespace's scratch directory. Drop kills it by
/// pid.
pub struct Dnsmasq {
    child: Option<Child>,
    log: PathBuf,
}

impl Dnsmasq {
    /// Starts dnsmasq in `ns` on `ifname`, leasing `first`..`last` (a /24
    /// with `mask`) with `router` as option 3; waits until it listens.
    pub fn start(ns: &Netns, ifname: &str, first: &str, last: &str, mask: &str, router: &str) -> Dnsmasq {
        let dir = ns.dir();
        let (leases, pid, log) = (dir.join("dnsmasq.leases"), dir.join("dnsmasq.pid"), dir.join("dnsmasq.log"));
        let err_file = dir.join("dnsmasq.stderr");
        let args: Vec<String> = vec![
            "--keep-in-foreground".into(),
            "--conf-file=/dev/null".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--port=0".into(),
            "--bind-interfaces".into(),
            format!("--interface={ifname}"),
            "--except-interface=lo".into(),
            format!("--dhcp-range={first},{last},{mask},1h"),
            format!("--dhcp-option=option:router,{router}"),
            "--dhcp-authoritative".into(),
            // No ping before an offer: the test's LAN has no strangers, and
            // the probe would add seconds to every lease.
            "--no-ping".into(),
            format!("--dhcp-leasefile={}", leases.display()),
            format!("--pid-file={}", pid.display()),
            format!("--log-facility={}", log.display()),
            "--log-dhcp".into(),
            "--user=root".into(),
        ];
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = ns.command("dnsmasq", &a);
        let desc = show(&cmd);
        let err = File::create(&err_file).expect("dnsmasq stderr file");
        cmd.env_clear().env("PATH", CLIENT_PATH).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(err));
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start `{desc}`: {e}"));
        let mut d = Dnsmasq { child: None, log: log.clone() };
        // Listening once its pid file exists (written after the sockets are bound).
        let ready = poll(Duration::from_secs(10), Duration::from_millis(50), || {
            if let Ok(Some(status)) = child.try_wait() {
                let err = fs::read_to_string(&err_file).unwrap_or_default();
                panic!("`{desc}` exited at start ({status}): {err}\n{}", fs::read_to_string(&log).unwrap_or_default());
            }
            pid.exists().then_some(())
        });
        d.child = Some(child);
        assert!(ready.is_some(), "`{desc}` wrote no pid file within 10 s:\n{}", d.log());
        d
    }

    /// dnsmasq's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "TERM");
            if wait_timeout(&mut c, Duration::from_secs(5)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("--- dnsmasq log ({}) ---\n{}--- end of dnsmasq log ---", self.log.display(), self.log());
        }
    }
}

// ---------------------------------------------------------------------------
// Small helpers for assertions
// ---------------------------------------------------------------------------

/// Parses "a.b.c.d/len".
pub fn parse_cidr(s: &str) -> (Ipv4Addr, u8) {
    let (a, l) = s.split_once('/').unwrap_or_else(|| panic!("not a CIDR: {s}"));
    (a.parse().unwrap_or_else(|_| panic!("not a CIDR: {s}")), l.parse().unwrap_or_else(|_| panic!("not a CIDR: {s}")))
}

/// Whether `ip` is inside `cidr`.
pub fn in_subnet(ip: Ipv4Addr, cidr: &str) -> bool {
    let (net, len) = parse_cidr(cidr);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
    u32::from(ip) & mask == u32::from(net) & mask
}

/// Whether `first <= ip <= last`.
pub fn in_range(ip: Ipv4Addr, first: Ipv4Addr, last: Ipv4Addr) -> bool {
    (u32::from(first)..=u32::from(last)).contains(&u32::from(ip))
}

/// A string field of a JSON object, or a panic naming it.
pub fn field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("no string field `{key}` in {v}"))
}

/// Whether `s` looks like a lower-case unicast MAC "xx:xx:xx:xx:xx:xx".
pub fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}
