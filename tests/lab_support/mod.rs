//! Helpers for the QEMU lab tests (`tests/lab.rs`, `tests/guest.rs`): make
//! sure the lab is set up (`lab/setup`), boot a lab guest on a TAP device in
//! a test namespace, read its serial console. See `lab/README.md`.
//!
//! Builds on `tests/common` (namespaces, daemon, skip rules); the including
//! test crate declares `mod common; mod lab_support;`. Only std is used.

#![allow(dead_code)] // Each test binary uses a different part.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::common::{privileged, require_privileged, run, stderr, stdout, tool, which, Netns, REQUIRE_ENV};

/// How long `lab/setup` may take (first run: apt-get install + kernel download).
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(900);

/// The repository's `lab/` directory.
pub fn lab_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lab")
}

/// Runs `lab/setup` once per test process; Err carries its output.
fn setup() -> &'static Result<(), String> {
    static SETUP: OnceLock<Result<(), String>> = OnceLock::new();
    SETUP.get_or_init(|| {
        let started = Instant::now();
        let o = run(&mut Command::new(lab_dir().join("setup")), SETUP_TIMEOUT);
        if !o.status.success() {
            return Err(format!("lab/setup failed ({}):\n{}{}", o.status, stdout(&o), stderr(&o)));
        }
        eprintln!("lab/setup ok in {:.1} s:\n{}", started.elapsed().as_secs_f64(), stderr(&o).trim_end());
        if which("qemu-system-x86_64").is_none() {
            return Err("lab/setup succeeded but qemu-system-x86_64 is not on PATH".into());
        }
        Ok(())
    })
}

/// Whether the lab test `test` can run: root, `tools` present, and the lab
/// set up (running `lab/setup` if needed). Prints why not and returns
/// false; panics instead when `LANYARD_REQUIRE_PRIVILEGED=1`.
pub fn ready(test: &str, tools: &[&str]) -> bool {
    if !privileged(test, tools) {
        return false;
    }
    match setup() {
        Ok(()) => true,
        Err(why) => {
            let msg = format!(
                "skipping {test}: the QEMU lab cannot be set up (set {REQUIRE_ENV}=1 to make this a failure): {why}"
            );
            if require_privileged() {
                panic!("{msg}");
            }
            eprintln!("{msg}");
            false
        }
    }
}

/// A console line without the carriage return the serial port adds.
fn clean(line: &str) -> String {
    line.trim_end_matches(['\r', '\n']).replace('\r', "")
}

/// A lab guest VM (`lab/guest`) booted on a TAP device in a namespace.
/// Collects its console; Drop kills qemu (by pid) and, if the test is
/// failing, prints the console.
pub struct Guest {
    tap: String,
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    started: Instant,
}

impl Guest {
    /// `ip netns exec NS lab/guest TAP MAC PARAMS...`; PARAMS are extra
    /// kernel command line words such as `lab.ping=192.168.122.1`.
    pub fn boot(ns: &Netns, tap: &str, mac: &str, params: &[&str]) -> Guest {
        Guest::boot_with(ns, tap, mac, params, |_| {})
    }

    /// Like [`boot`](Self::boot), with `configure` adjusting the command
    /// first (environment: `LAB_IFUP`, `LAB_IFDOWN`, `LAB_MEM`, ...; see
    /// `lab/guest`). qemu, and the scripts it runs, inherit it.
    pub fn boot_with(ns: &Netns, tap: &str, mac: &str, params: &[&str], configure: impl FnOnce(&mut Command)) -> Guest {
        let mut cmd = Command::new(tool("ip"));
        cmd.args(["netns", "exec", ns.name()]).arg(lab_dir().join("guest")).args([tap, mac]).args(params);
        configure(&mut cmd);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start lab/guest: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("piped stdout"));
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("piped stderr"));
        for stream in [out, err] {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                    lines.lock().unwrap_or_else(|e| e.into_inner()).push(clean(&String::from_utf8_lossy(&line)));
                }
            });
        }
        Guest { tap: tap.to_string(), child: Some(child), lines, started: Instant::now() }
    }

    /// The console (and lab/guest's stderr) so far.
    pub fn console(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = lines.join("\n");
        s.push('\n');
        s
    }

    /// The `LAB: ...` lines so far, without the prefix.
    pub fn lab_lines(&self) -> Vec<String> {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().filter_map(|l| l.find("LAB: ").map(|i| l[i + 5..].to_string())).collect()
    }

    /// Waits up to `timeout` for a `LAB: ` line starting with `prefix`;
    /// Err (with the console) if it does not come or qemu exits first.
    pub fn wait_for(&mut self, prefix: &str, timeout: Duration) -> Result<String, String> {
        self.wait_for_after(0, prefix, timeout)
    }

    /// How many `LAB: ` lines there are so far: a mark for
    /// [`wait_for_after`](Self::wait_for_after).
    pub fn lab_line_count(&self) -> usize {
        self.lab_lines().len()
    }

    /// Like [`wait_for`](Self::wait_for), but only `LAB: ` lines after the
    /// first `skip` count (see [`lab_line_count`](Self::lab_line_count)):
    /// something the guest printed after a given moment.
    pub fn wait_for_after(&mut self, skip: usize, prefix: &str, timeout: Duration) -> Result<String, String> {
        let find = |g: &Guest| g.lab_lines().into_iter().skip(skip).find(|l| l.starts_with(prefix));
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = find(self) {
                return Ok(l);
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                sleep(Duration::from_millis(300)); // let the readers drain
                if let Some(l) = find(self) {
                    return Ok(l);
                }
                return Err(format!("guest exited ({status}) before `LAB: {prefix}`; console:\n{}", self.console()));
            }
            if Instant::now() >= deadline {
                return Err(format!("no `LAB: {prefix}` within {timeout:?}; console:\n{}", self.console()));
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// Whether qemu is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Seconds since the boot was started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Waits up to `timeout` for qemu to exit (after `lab.poweroff=1`).
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let Some(child) = self.child.as_mut() else { return true };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return true;
            }
            sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `ip netns exec` execs lab/guest, which execs qemu: one pid.
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- guest console ({}) ---\n{}--- end of guest console ---", self.tap, self.console());
        }
    }
}

/// What the guest printed for its DHCP lease:
/// `LAB: lease <ip> router <r> prefix <n> server <id> time <s> dns <list> iface <if>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestLease {
    pub ip: String,
    pub router: String,
    pub prefix: String,
    pub server: String,
    pub dns: String,
}

/// Parses a `lease ...` line (as returned by [`Guest::wait_for`]).
pub fn parse_lease(line: &str) -> Option<GuestLease> {
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.first() != Some(&"lease") || words.len() < 2 {
        return None;
    }
    let get = |key: &str| words.windows(2).find(|w| w[0] == key).map(|w| w[1].to_string()).unwrap_or_default();
    Some(GuestLease {
        ip: words[1].to_string(),
        router: get("router"),
        prefix: get("prefix"),
        server: get("server"),
        dns: get("dns"),
    })
}
