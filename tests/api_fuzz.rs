//! schemathesis against a live daemon: generated requests for every
//! operation of the OpenAPI description (valid and invalid bodies, path
//! and query parameters), checked for no 500, no crash, and every response
//! matching the description.
//!
//! schemathesis comes from PyPI into a throw-away virtualenv under
//! target/ (made once, reused). It speaks HTTP over TCP, the daemon over a
//! unix socket: a small forwarder on the test namespace's loopback joins
//! them, so requests come from root over the socket, the admin (see
//! src/auth.rs), and reach every operation.
//!
//! The daemon runs in its own PID namespace with its own /proc, so a
//! generated `netns` of a veth port that is a PID (`1`) or
//! `/proc/1/ns/net` names a process of the test namespace, never the
//! host's root namespace; the field is also left out of what schemathesis
//! generates.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The schemathesis release the test installs (pinned: a new release's
/// new checks must not fail CI by surprise).
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// Where the forwarder listens, on the test namespace's loopback.
const LISTEN: &str = "127.0.0.1:8080";

/// A TCP-to-unix-socket forwarder (Python's standard library only).
const FORWARDER: &str = r#"
import asyncio, sys
host, port = sys.argv[1].rsplit(":", 1)
path = sys.argv[2]

async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()

async def handle(client_r, client_w):
    try:
        up_r, up_w = await asyncio.open_unix_connection(path)
    except OSError:
        client_w.close()
        return
    await asyncio.gather(pipe(client_r, up_w), pipe(up_r, client_w))

async def main():
    server = await asyncio.start_server(handle, host, int(port))
    async with server:
        await server.serve_forever()

asyncio.run(main())
"#;

/// The virtualenv with schemathesis, made on first use; None (with why)
/// when it cannot be made (no python3-venv, no network to PyPI).
fn schemathesis() -> Result<PathBuf, String> {
    let venv = std::env::var_os("LANYARD_SCHEMATHESIS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/schemathesis-venv"));
    let st = venv.join("bin/st");
    let pinned = venv.join(format!("{SCHEMATHESIS}.installed"));
    if st.is_file() && pinned.is_file() {
        return Ok(st);
    }
    let python = which("python3").ok_or("no python3")?;
    let o = run(Command::new(python).args(["-m", "venv", "--clear"]).arg(&venv), Duration::from_secs(120));
    if !o.status.success() {
        return Err(format!(
            "python3 -m venv failed (is python3-venv installed?): {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let o = run(
        Command::new(venv.join("bin/pip")).args(["install", "--quiet", "--disable-pip-version-check", SCHEMATHESIS]),
        Duration::from_secs(600),
    );
    if !o.status.success() || !st.is_file() {
        return Err(format!("pip install {SCHEMATHESIS} failed: {}", String::from_utf8_lossy(&o.stderr)));
    }
    std::fs::write(&pinned, "").map_err(|e| e.to_string())?;
    Ok(st)
}

/// The forwarder process; killed (by its pid) on drop.
struct Forwarder(Child);

impl Forwarder {
    fn start(ns: &Netns, socket: &Path) -> Forwarder {
        let script = ns.dir().join("forward.py");
        std::fs::write(&script, FORWARDER).unwrap();
        let child = ns
            .command("python3", &[script.to_str().unwrap(), LISTEN, socket.to_str().unwrap()])
            .stdin(Stdio::null())
            .spawn()
            .expect("the forwarder starts");
        let f = Forwarder(child);
        // Ready once something answers on the port (at most 10 s).
        let deadline = Instant::now() + Duration::from_secs(10);
        let probe = format!(
            "import socket; socket.create_connection(('127.0.0.1', {}), 1)",
            LISTEN.rsplit(':').next().unwrap()
        );
        while !ns.exec("python3", &["-c", &probe]).status.success() {
            assert!(Instant::now() < deadline, "the forwarder did not listen on {LISTEN}");
            std::thread::sleep(Duration::from_millis(100));
        }
        f
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The description schemathesis runs from: the daemon's, without the
/// `netns` of a port (see the module comment).
fn description_to_fuzz(daemon: &Daemon, dir: &Path) -> PathBuf {
    let text = daemon.cli_ok(&["openapi"]);
    let mut doc: serde_json::Value = serde_json::from_str(&text).expect("the description is JSON");
    let spec = doc["components"]["schemas"]["PortSpec"]["properties"].as_object_mut().expect("PortSpec has properties");
    assert!(spec.remove("netns").is_some(), "PortSpec has no netns any more: update this test");
    let path = dir.join("openapi.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    path
}

#[test]
fn schemathesis_finds_no_server_error_and_no_mismatch_with_the_description() {
    const NAME: &str = "schemathesis_finds_no_server_error_and_no_mismatch_with_the_description";
    if !privileged(NAME, &["ip", "nft", "python3", "unshare"]) {
        return;
    }
    let st = match schemathesis() {
        Ok(st) => st,
        Err(why) if require_privileged() => panic!("{NAME}: cannot install schemathesis: {why}"),
        Err(why) => {
            eprintln!(
                "skipping {NAME}: cannot install schemathesis: {why} (set {REQUIRE_ENV}=1 to make this a failure)"
            );
            return;
        }
    };
    let ns = Netns::new("fuzz");
    // PID 1 of the daemon's view is the daemon (see the module comment).
    let daemon = Daemon::start_wrapped(&ns, &["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"], &[]);
    // Something for the generated requests to find besides 404s.
    // The description's examples name the default network and these.
    daemon.cli_ok(&["net", "create", "default", "--mode", "nat", "--subnet", "192.168.122.0/24"]);
    daemon.cli_ok(&["port", "create", "--net", "default", "--vm", "vm1"]);
    daemon.cli_ok(&["project", "create", "tenant"]);
    // The NIC the examples' VLAN manager and floating IP pool name.
    ns.ip_ok(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer"]);
    ns.ip_ok(&["link", "set", "eth0", "up"]);

    // Without 802.1Q in the kernel (no 8021q module) every port of a VLAN
    // manager's network is a kernel refusal (500): configuring it is left
    // out there.
    let vlans =
        ns.ip(&["link", "add", "link", "eth0", "name", "eth0.4000", "type", "vlan", "id", "4000"]).status.success();
    let mut exclude: Vec<&str> = Vec::new();
    if vlans {
        ns.ip_ok(&["link", "del", "eth0.4000"]);
    } else {
        eprintln!("{NAME}: this kernel makes no VLAN devices; PUT /v1/managers/vlan is not fuzzed");
        exclude.extend(["--exclude-operation-id", "put_v1_managers_vlan"]);
    }
    let spec = description_to_fuzz(&daemon, ns.dir());
    let _forwarder = Forwarder::start(&ns, daemon.socket());
    let fuzz = Fuzz { st: &st, ns: &ns, daemon: &daemon, spec: &spec, exclude: &exclude };
    // As the admin (no token on the socket): every operation is open.
    fuzz.run("admin", &[]);
    // As a project's token: the same requests through the checks of
    // src/auth.rs (403 for admin-only operations, only its own project).
    // A project of its own: the admin's run may have deleted "tenant".
    daemon.cli_ok(&["project", "create", "fuzzed"]);
    daemon.cli_ok(&["net", "create", "fz", "--project", "fuzzed", "--mode", "isolated", "--subnet", "10.89.0.0/24"]);
    let token = daemon.cli_json(&["project", "token", "create", "fuzzed"]);
    let bearer = format!("Authorization: Bearer {}", token["token"].as_str().expect("a token"));
    fuzz.run("a project's token", &["--header", &bearer]);
}

/// One schemathesis run against the daemon.
struct Fuzz<'a> {
    st: &'a Path,
    ns: &'a Netns,
    daemon: &'a Daemon,
    spec: &'a Path,
    exclude: &'a [&'a str],
}

impl Fuzz<'_> {
    /// Runs schemathesis with `extra` arguments (as `who`); panics with its
    /// report on a failure or when the daemon no longer answers.
    fn run(&self, who: &str, extra: &[&str]) {
        let seed = std::env::var("LANYARD_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
        let examples = std::env::var("LANYARD_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "15".into());
        let report = self.ns.dir().join("report");
        let url = format!("http://{LISTEN}");
        let mut args = vec![
            "run",
            self.spec.to_str().unwrap(),
            "--url",
            &url,
            "--checks",
            "all",
            // Schema-valid values the daemon refuses by rules the
            // description does not spell out (a subnet's prefix, a name
            // that exists): a 4xx there is right, not a defect.
            "--exclude-checks",
            "positive_data_acceptance,use_after_free,ensure_resource_availability",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            &examples,
            "--seed",
            &seed,
            "--workers",
            "1",
            "--request-timeout",
            "20",
            "--suppress-health-check",
            "all",
            "--report",
            "junit",
            "--report-dir",
            report.to_str().unwrap(),
        ];
        args.extend(self.exclude);
        args.extend(extra);
        // In the namespace's scratch directory: schemathesis keeps a cache
        // (.schemathesis/) where it runs, not in the repository.
        let mut cmd = self.ns.command(self.st.to_str().unwrap(), &args);
        cmd.env("NO_COLOR", "1").current_dir(self.ns.dir());
        let out = run(&mut cmd, Duration::from_secs(900));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let alive = self.daemon.cli(&["status"]).status.success();
        assert!(
            out.status.success() && alive,
            "schemathesis as {who} found failures (seed {seed}; the daemon {}):\n{stdout}\n{}\n--- daemon log (tail) ---\n{}",
            if alive { "still answers" } else { "no longer answers" },
            String::from_utf8_lossy(&out.stderr),
            tail(&self.daemon.log(), 60)
        );
        eprintln!("schemathesis as {who}:\n{}", tail(&stdout, 12));
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
