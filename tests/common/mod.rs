//! Harness for lanyard's privileged integration tests.
//!
//! Everything a test does happens inside network namespaces it creates
//! (`ip netns add`, names unique per process and call) and in a temporary
//! directory; every resource is a guard that cleans up in `Drop`, also when
//! the test panics. Nothing here touches the root network namespace: links,
//! addresses, routes and nft rules are only ever created with `ip -n NS` or
//! `ip netns exec NS`.
//!
//! Privilege: tests call [`privileged`] first. Without root (or without a
//! needed tool) they print why and return, so plain `cargo test` passes for
//! anyone; with `LANYARD_REQUIRE_PRIVILEGED=1` (CI, which is root) the same
//! situation is a failure instead of a silent skip.
//!
//! Only std and serde_json are used.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// The lanyard binary under test.
pub const LANYARD: &str = env!("CARGO_BIN_EXE_lanyard");

/// Set to `1` to turn "skipping: needs root/tool" into a test failure.
pub const REQUIRE_ENV: &str = "LANYARD_REQUIRE_PRIVILEGED";

/// Set to `1` to keep temporary directories (daemon state, client logs).
pub const KEEP_TMP_ENV: &str = "LANYARD_KEEP_TMP";

/// Tools a test with a daemon, VMs and DHCP clients needs.
pub const NAT_TOOLS: &[&str] = &["ip", "nft", "ping", "kill", "udhcpc", "dhclient"];

/// How long one CLI call may take before the test fails.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the daemon may take to answer on its socket after start.
pub const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the daemon may take to exit after SIGTERM.
pub const DAEMON_STOP_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// Privilege and tools
// ---------------------------------------------------------------------------

fn require_privileged() -> bool {
    std::env::var(REQUIRE_ENV).map(|v| v == "1").unwrap_or(false)
}

/// The effective uid of this process, from /proc/self/status.
pub fn euid() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok())
        .unwrap_or(u32::MAX)
}

/// Where `name` is installed: PATH first, then the sbin directories that a
/// non-login PATH often lacks.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false))
}

/// Absolute path of a tool that [`privileged`] checked for.
pub fn tool(name: &str) -> PathBuf {
    which(name).unwrap_or_else(|| panic!("tool `{name}` not found (list it in the test's privileged() call)"))
}

/// Whether the test `test` may run: root and all `tools` present.
///
/// Prints why not and returns false otherwise; panics instead when
/// `LANYARD_REQUIRE_PRIVILEGED=1`. Use as
/// `if !common::privileged("mytest", common::NAT_TOOLS) { return; }`.
pub fn privileged(test: &str, tools: &[&str]) -> bool {
    let mut why = Vec::new();
    if euid() != 0 {
        why.push("needs root".to_string());
    }
    let missing: Vec<&str> = tools.iter().copied().filter(|t| which(t).is_none()).collect();
    if !missing.is_empty() {
        why.push(format!("needs {}", missing.join(", ")));
    }
    if why.is_empty() {
        return true;
    }
    let why = why.join("; ");
    if require_privileged() {
        panic!("{test} {why}, and {REQUIRE_ENV}=1 forbids skipping it");
    }
    eprintln!("skipping {test}: {why} (set {REQUIRE_ENV}=1 to make this a failure)");
    false
}

// ---------------------------------------------------------------------------
// Names, temporary directories, processes
// ---------------------------------------------------------------------------

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn base36(mut n: usize) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(digits[n % 36]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

/// A name unique to this process and call: `lt` + the first four
/// alphanumerics of `role` + pid and a counter in base 36, e.g.
/// `lthost-2hwrk-0`. Always at most 15 bytes, so it is also a valid
/// interface name (callers rely on that).
pub fn unique(role: &str) -> String {
    let role: String = role.chars().filter(char::is_ascii_alphanumeric).take(4).collect();
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("lt{role}-{}-{}", base36(std::process::id() as usize), base36(n))
}

/// A temporary directory, removed on drop (unless `LANYARD_KEEP_TMP=1`).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/lanyard-it-TAG-PID-N`.
    pub fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "lanyard-it-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var(KEEP_TMP_ENV).map(|v| v == "1").unwrap_or(false) {
            eprintln!("keeping {}", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Shows a command line as a shell would.
fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion with piped output; panics if it takes longer
/// than `timeout` (after killing it) or cannot be started.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = show(cmd);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run `{desc}`: {e}"));
    let mut out = child.stdout.take().expect("stdout is piped");
    let mut err = child.stderr.take().expect("stderr is piped");
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let status = wait_timeout(&mut child, timeout).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("`{desc}` did not finish within {timeout:?}; killed it")
    });
    Output { status, stdout: t_out.join().unwrap_or_default(), stderr: t_err.join().unwrap_or_default() }
}

/// Waits up to `timeout` for `child` to exit.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(e) => panic!("waiting for pid {}: {e}", child.id()),
        }
        if Instant::now() >= deadline {
            return None;
        }
        sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` (e.g. "TERM", "KILL") to one process we started.
pub fn signal(pid: u32, signal: &str) -> bool {
    let Some(kill) = which("kill") else { return false };
    Command::new(kill)
        .args([format!("-{signal}"), pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Text of stdout.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Text of stderr.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn describe(what: &str, o: &Output) -> String {
    format!("{what}: {}\n--- stdout ---\n{}--- stderr ---\n{}", o.status, stdout(o), stderr(o))
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Polls `f` every `every` until it returns Some or `timeout` passes.
pub fn poll<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        sleep(every);
    }
}

// ---------------------------------------------------------------------------
// Network namespaces
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// The daemon and its CLI
// ---------------------------------------------------------------------------

/// `lanyard daemon` running in a namespace, with its own socket and state
/// directory. Drop stops it (SIGTERM, then SIGKILL) and, if the test is
/// failing, prints its log.
pub struct Daemon {
    netns: String,
    child: Option<Child>,
    socket: PathBuf,
    state_dir: PathBuf,
    log: PathBuf,
    starts: usize,
    tmp: TempDir,
}

impl Daemon {
    /// Starts the daemon in `ns` and waits until it answers.
    pub fn start(ns: &Netns) -> Daemon {
        let tmp = TempDir::new("daemon");
        let mut d = Daemon {
            netns: ns.name().to_string(),
            child: None,
            socket: tmp.path().join("l.sock"),
            state_dir: tmp.path().join("state"),
            log: tmp.path().join("daemon.log"),
            starts: 0,
            tmp,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        self.starts += 1;
        let mut log = OpenOptions::new().create(true).append(true).open(&self.log).expect("daemon log");
        use std::io::Write;
        let _ = writeln!(log, "===== lanyard daemon start #{} =====", self.starts);
        let mut cmd = Command::new(tool("ip"));
        cmd.args(["netns", "exec", &self.netns])
            .arg(LANYARD)
            .arg("daemon")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .env_remove("LANYARD_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log fd")))
            .stderr(Stdio::from(log));
        if std::env::var_os("LANYARD_LOG").is_none() {
            cmd.env("LANYARD_LOG", "info");
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start `{}`: {e}", show(&cmd)));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + DAEMON_START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                panic!("lanyard daemon exited during start-up ({status}); log:\n{}", self.log());
            }
            if self.socket.exists() {
                let o = run(&mut self.cli_command(&["net", "list"]), Duration::from_secs(10));
                if o.status.success() {
                    return;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "lanyard daemon did not answer on {} within {DAEMON_START_TIMEOUT:?}; log:\n{}",
                    self.socket.display(),
                    self.log()
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// Pid of the running daemon (of `ip netns exec`, which execs it).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon is running").id()
    }

    /// The API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Everything the daemon wrote to stdout/stderr, over all its starts.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the daemon with SIGTERM and returns its exit status. Panics if
    /// it does not exit within [`DAEMON_STOP_TIMEOUT`] (it is then killed).
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon is running");
        signal(child.id(), "TERM");
        match wait_timeout(&mut child, DAEMON_STOP_TIMEOUT) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("lanyard daemon ignored SIGTERM for {DAEMON_STOP_TIMEOUT:?}; killed it; log:\n{}", self.log());
            }
        }
    }

    /// SIGTERM, wait for exit (which must be clean), start again on the
    /// same state directory and wait until it answers.
    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(status.success(), "lanyard daemon exited with {status} on SIGTERM; log:\n{}", self.log());
        self.spawn();
    }

    fn cli_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(LANYARD);
        c.arg("--socket").arg(&self.socket).args(args).env_remove("LANYARD_SOCKET");
        c
    }

    /// Runs `lanyard --socket S ARGS`.
    pub fn cli(&self, args: &[&str]) -> Output {
        run(&mut self.cli_command(args), CLI_TIMEOUT)
    }

    /// Runs the CLI; panics (with the daemon log) unless it succeeds.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "{}\n--- daemon log ---\n{}",
            describe(&format!("lanyard {}", args.join(" ")), &o),
            self.log()
        );
        stdout(&o)
    }

    /// Runs the CLI with `-o json` (added unless present) and parses stdout.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut a: Vec<&str> = args.to_vec();
        if !a.windows(2).any(|w| w == ["-o", "json"]) {
            a.extend(["-o", "json"]);
        }
        let text = self.cli_ok(&a);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("`lanyard {}` printed no JSON ({e}):\n{text}", a.join(" ")))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            if wait_timeout(&mut child, DAEMON_STOP_TIMEOUT).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("--- lanyard daemon log ({}) ---\n{}--- end of daemon log ---", self.log.display(), self.log());
        }
    }
}

// ---------------------------------------------------------------------------
// Topology: a host namespace with a daemon, VMs, an "outside"
// ---------------------------------------------------------------------------

/// The namespace that plays the host, with a daemon running in it. Fields
/// drop in order: the daemon stops before its namespace goes away.
pub struct Host {
    /// The daemon.
    pub daemon: Daemon,
    /// The host namespace.
    pub ns: Netns,
}

impl Host {
    /// A new host namespace with a daemon in it.
    pub fn start() -> Host {
        let ns = Netns::new("host");
        let daemon = Daemon::start(&ns);
        Host { daemon, ns }
    }

    /// See [`Daemon::cli`].
    pub fn cli(&self, args: &[&str]) -> Output {
        self.daemon.cli(args)
    }

    /// See [`Daemon::cli_ok`].
    pub fn cli_ok(&self, args: &[&str]) -> String {
        self.daemon.cli_ok(args)
    }

    /// See [`Daemon::cli_json`].
    pub fn cli_json(&self, args: &[&str]) -> Value {
        self.daemon.cli_json(args)
    }

    /// A namespace `outside` joined to the host by a veth: `up0` in the host
    /// with `host_cidr`, `eth0` outside with `outside_cidr`. No routes are
    /// added beyond the connected ones.
    pub fn add_outside(&self, host_cidr: &str, outside_cidr: &str) -> Netns {
        let out = Netns::new("out");
        self.ns.ip_ok(&["link", "add", "name", "up0", "type", "veth", "peer", "name", "eth0", "netns", out.name()]);
        self.ns.ip_ok(&["addr", "add", host_cidr, "dev", "up0"]);
        self.ns.ip_ok(&["link", "set", "dev", "up0", "up"]);
        out.ip_ok(&["addr", "add", outside_cidr, "dev", "eth0"]);
        out.ip_ok(&["link", "set", "dev", "eth0", "up"]);
        out
    }

    /// A fresh VM namespace attached with
    /// `lanyard port create --net NET --vm VM --type veth --netns NS --ifname eth0 EXTRA -o json`.
    pub fn attach_vm(&self, net: &str, vm: &str, extra: &[&str]) -> Vm {
        let ns = Netns::new(vm);
        let port = self.veth_port(net, vm, &ns, extra);
        Vm { name: vm.to_string(), ifname: "eth0".to_string(), port, ns }
    }

    /// `lanyard port create --net NET --vm VM --type veth --netns NS --ifname eth0 EXTRA -o json`
    /// into an existing namespace; the port as JSON.
    pub fn veth_port(&self, net: &str, vm: &str, ns: &Netns, extra: &[&str]) -> Value {
        let mut args = vec![
            "port",
            "create",
            "--net",
            net,
            "--vm",
            vm,
            "--type",
            "veth",
            "--netns",
            ns.name(),
            "--ifname",
            "eth0",
        ];
        args.extend_from_slice(extra);
        self.cli_json(&args)
    }

    /// A namespace plugged into `bridge` by hand (a veth lanyard knows
    /// nothing about): `HOST_IF` in the host, `eth0` inside, both up.
    pub fn attach_by_hand(&self, bridge: &str, role: &str, host_if: &str) -> Netns {
        let ns = Netns::new(role);
        self.ns.ip_ok(&["link", "add", "name", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns.name()]);
        self.ns.ip_ok(&["link", "set", "dev", host_if, "master", bridge]);
        self.ns.ip_ok(&["link", "set", "dev", host_if, "up"]);
        ns.ip_ok(&["link", "set", "dev", "eth0", "up"]);
        ns
    }
}

/// A VM: a namespace with a lanyard veth port in it.
pub struct Vm {
    /// VM name given to `--vm`.
    pub name: String,
    /// Guest-side interface name.
    pub ifname: String,
    /// What `port create -o json` returned.
    pub port: Value,
    /// The VM's namespace.
    pub ns: Netns,
}

impl Vm {
    /// The port's id.
    pub fn id(&self) -> String {
        self.port["id"].as_str().unwrap_or_else(|| panic!("port without string id: {}", self.port)).to_string()
    }

    /// The port's IP.
    pub fn ip(&self) -> Ipv4Addr {
        self.port["ip"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("port without IPv4 ip: {}", self.port))
    }

    /// The port's MAC.
    pub fn mac(&self) -> String {
        self.port["mac"].as_str().unwrap_or_else(|| panic!("port without mac: {}", self.port)).to_string()
    }

    /// The host-side interface name.
    pub fn host_ifname(&self) -> String {
        self.port["ifname"].as_str().unwrap_or_else(|| panic!("port without ifname: {}", self.port)).to_string()
    }

    /// Configures the port's IP by hand (no DHCP): `ip/prefix`, default route
    /// via `gateway`.
    pub fn configure_static(&self, prefix: u8, gateway: &str) {
        let cidr = format!("{}/{prefix}", self.ip());
        self.ns.ip_ok(&["link", "set", "dev", &self.ifname, "up"]);
        self.ns.ip_ok(&["addr", "replace", &cidr, "dev", &self.ifname]);
        self.ns.ip_ok(&["route", "replace", "default", "via", gateway, "dev", &self.ifname]);
    }
}

// ---------------------------------------------------------------------------
// DHCP clients
// ---------------------------------------------------------------------------

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

/// PATH for DHCP clients and their scripts (they get no other environment).
const CLIENT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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

// ---------------------------------------------------------------------------
// Ping
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// More topology and tools: second uplinks, DNS queries, a LAN DHCP server
// ---------------------------------------------------------------------------

impl Host {
    /// Like [`add_outside`](Self::add_outside), with the host side named
    /// `host_if` (for hosts with several uplinks): `host_if` in the host with
    /// `host_cidr`, `eth0` in a new outside namespace with `outside_cidr`.
    /// No routes beyond the connected ones.
    pub fn add_outside_on(&self, host_if: &str, host_cidr: &str, outside_cidr: &str) -> Netns {
        let out = Netns::new("out");
        self.ns.ip_ok(&["link", "add", "name", host_if, "type", "veth", "peer", "name", "eth0", "netns", out.name()]);
        self.ns.ip_ok(&["addr", "add", host_cidr, "dev", host_if]);
        self.ns.ip_ok(&["link", "set", "dev", host_if, "up"]);
        out.ip_ok(&["addr", "add", outside_cidr, "dev", "eth0"]);
        out.ip_ok(&["link", "set", "dev", "eth0", "up"]);
        out
    }
}

impl Netns {
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
