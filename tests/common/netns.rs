//! [`Netns`]: a network namespace created for one test, deleted (with what
//! still runs in it) on drop, and the `ip`/`nft`/sysctl helpers that look
//! into it. Every change a test makes happens in such a namespace, never in
//! the root one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::privilege::{tool, which};
use super::process::{describe, run, signal, stderr, stdout, unique, TempDir};

/// A network namespace created for one test, with its own scratch
/// directory. Drop kills what still runs inside it (only processes this
/// test started live there) and deletes it.
pub struct Netns {
    name: String,
    dir: TempDir,
}

impl Netns {
    /// Creates a namespace named by [`unique`]`(role)`, loopback up.
    pub fn new(role: &str) -> Netns {
        Netns::named(unique(role))
    }

    /// Creates a namespace with exactly this name (make it unique, e.g.
    /// from [`unique`]), loopback up.
    pub fn named(name: String) -> Netns {
        let o = run(Command::new(tool("ip")).args(["netns", "add", &name]), Duration::from_secs(10));
        assert!(o.status.success(), "{}", describe(&format!("ip netns add {name}"), &o));
        let ns = Netns { dir: TempDir::new("netns"), name };
        ns.ip_ok(&["link", "set", "dev", "lo", "up"]);
        ns
    }

    /// The namespace's name (for `ip netns exec`, `--netns`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Scratch directory belonging to this namespace's user (scripts, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A command that runs `prog` (a tool name or a path) in the namespace.
    pub fn command(&self, prog: &str, args: &[&str]) -> Command {
        let prog = if prog.contains('/') { PathBuf::from(prog) } else { tool(prog) };
        let mut c = Command::new(tool("ip"));
        c.args(["netns", "exec", &self.name]).arg(prog).args(args);
        c
    }

    /// Runs `prog args` in the namespace (60 s limit).
    pub fn exec(&self, prog: &str, args: &[&str]) -> Output {
        run(&mut self.command(prog, args), Duration::from_secs(60))
    }

    /// Like [`exec`](Self::exec); panics unless it succeeds; returns stdout.
    pub fn exec_ok(&self, prog: &str, args: &[&str]) -> String {
        let o = self.exec(prog, args);
        assert!(o.status.success(), "{}", describe(&format!("in {}: {prog} {}", self.name, args.join(" ")), &o));
        stdout(&o)
    }

    /// `ip -n NS ARGS`.
    pub fn ip(&self, args: &[&str]) -> Output {
        run(Command::new(tool("ip")).args(["-n", &self.name]).args(args), Duration::from_secs(30))
    }

    /// `ip -n NS ARGS`; panics unless it succeeds; returns stdout.
    pub fn ip_ok(&self, args: &[&str]) -> String {
        let o = self.ip(args);
        assert!(o.status.success(), "{}", describe(&format!("ip -n {} {}", self.name, args.join(" ")), &o));
        stdout(&o)
    }

    /// `ip -j -n NS ARGS`, parsed (ARGS may start with more options, e.g. `-d`).
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let o = run(Command::new(tool("ip")).args(["-j", "-n", &self.name]).args(args), Duration::from_secs(30));
        assert!(o.status.success(), "{}", describe(&format!("ip -j -n {} {}", self.name, args.join(" ")), &o));
        let text = stdout(&o);
        if text.trim().is_empty() {
            return Value::Array(vec![]);
        }
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("ip -j output is not JSON ({e}): {text}"))
    }

    /// All links with details (`linkinfo`), `ip -j -d link show`.
    pub fn links(&self) -> Vec<Value> {
        self.ip_json(&["-d", "link", "show"]).as_array().cloned().unwrap_or_default()
    }

    /// One link by name, if it exists.
    pub fn link(&self, ifname: &str) -> Option<Value> {
        self.links().into_iter().find(|l| l["ifname"] == ifname)
    }

    /// IPv4 addresses of `ifname` as "a.b.c.d/len".
    pub fn ipv4_addrs(&self, ifname: &str) -> Vec<String> {
        let v = self.ip_json(&["-4", "addr", "show", "dev", ifname]);
        v.as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .filter(|a| a["family"] == "inet")
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or("?"), a["prefixlen"]))
            .collect()
    }

    /// The MAC address of `ifname`.
    pub fn mac(&self, ifname: &str) -> String {
        let l = self.link(ifname).unwrap_or_else(|| panic!("no link {ifname} in {}", self.name));
        l["address"].as_str().unwrap_or_default().to_string()
    }

    /// `nft list ruleset` in the namespace.
    pub fn nft_ruleset(&self) -> String {
        self.exec_ok("nft", &["list", "ruleset"])
    }

    /// Pids of processes in the namespace.
    pub fn pids(&self) -> Vec<u32> {
        let o = run(Command::new(tool("ip")).args(["netns", "pids", &self.name]), Duration::from_secs(10));
        stdout(&o).split_whitespace().filter_map(|p| p.parse().ok()).collect()
    }

    /// Sets `net.ipv4.ip_forward` in this namespace (never the root one:
    /// the write happens under `ip netns exec`).
    pub fn set_ip_forward(&self, on: bool) {
        self.exec_ok("sysctl", &["-qw", if on { "net.ipv4.ip_forward=1" } else { "net.ipv4.ip_forward=0" }]);
    }

    /// `net.ipv4.ip_forward` of this namespace.
    pub fn ip_forward(&self) -> bool {
        self.exec_ok("cat", &["/proc/sys/net/ipv4/ip_forward"]).trim() == "1"
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Only processes this test started run in its namespace (clients,
        // pings, daemons that outlived their guards).
        for pid in self.pids() {
            signal(pid, "KILL");
        }
        let o = Command::new(which("ip").unwrap_or_else(|| "ip".into()))
            .args(["netns", "delete", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        match o {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("warning: ip netns delete {}: {}", self.name, stderr(&o).trim()),
            Err(e) => eprintln!("warning: ip netns delete {}: {e}", self.name),
        }
    }
}
