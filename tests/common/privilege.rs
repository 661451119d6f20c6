//! Who may run the privileged tests: root, the tools a test needs, and the
//! skip rule. Without root (or a tool) a test prints why and returns, so a
//! plain `cargo test` passes for anyone; with `LANYARD_REQUIRE_PRIVILEGED=1`
//! (CI, which is root) the same situation is a failure instead.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// Set to `1` to turn "skipping: needs root/tool" into a test failure.
pub const REQUIRE_ENV: &str = "LANYARD_REQUIRE_PRIVILEGED";

/// Tools a test with a daemon, VMs and DHCP clients needs.
pub const NAT_TOOLS: &[&str] = &["ip", "nft", "ping", "kill", "udhcpc", "dhclient"];

/// Whether `LANYARD_REQUIRE_PRIVILEGED=1` forbids skipping.
pub fn require_privileged() -> bool {
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
    skip_unless_required(test, &why.join("; "))
}

/// Skips `test` for the reason `why` (prints it, returns false), or
/// panics when `LANYARD_REQUIRE_PRIVILEGED=1` asks for every test to run.
fn skip_unless_required(test: &str, why: &str) -> bool {
    if require_privileged() {
        panic!("{test} {why}, and {REQUIRE_ENV}=1 forbids skipping it");
    }
    eprintln!("skipping {test}: {why} (set {REQUIRE_ENV}=1 to make this a failure)");
    false
}

/// Whether the daemon under test has crash points (`src/fault.rs`): they
/// are compiled only into debug builds, so under `cargo test --release`
/// a test that arms one would wait for a crash that never comes. Prints
/// why not and returns false then; panics instead when
/// `LANYARD_REQUIRE_PRIVILEGED=1`, which asks for every test to run.
pub fn crash_points(test: &str) -> bool {
    if cfg!(debug_assertions) {
        return true;
    }
    skip_unless_required(test, "needs crash points, which only debug builds have (run it without --release)")
}
