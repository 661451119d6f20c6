//! The CLI as a client: what it does when the daemon is not there, goes
//! away mid-request or refuses it the socket, when its reader goes away
//! (`| head`), and what it shows of strings a guest chose.
//!
//! Most of these talk to a stand-in daemon, a thread on a unix socket in a
//! temporary directory that answers as the test tells it, so they need no
//! root; the last two need a real daemon (and root).

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Runs `lanyard --socket SOCKET ARGS` (bounded to a minute).
fn lanyard(socket: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(LANYARD);
    cmd.arg("--socket").arg(socket).args(args).env_remove("LANYARD_SOCKET");
    run(&mut cmd, Duration::from_secs(60))
}

/// Reads one HTTP request (header and Content-Length body) from `c`.
fn read_request(c: &mut UnixStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return head;
            }
        }
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&buf).to_string(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A stand-in daemon: accepts `conns` connections on a fresh socket and
/// hands each to `serve`.
struct FakeDaemon {
    socket: PathBuf,
    thread: Option<JoinHandle<()>>,
    _dir: TempDir,
}

impl FakeDaemon {
    fn start(conns: usize, serve: impl Fn(UnixStream) + Send + 'static) -> FakeDaemon {
        let dir = TempDir::new("fake-daemon");
        let socket = dir.path().join("l.sock");
        let listener = UnixListener::bind(&socket).expect("bind the stand-in daemon's socket");
        let thread = thread::spawn(move || {
            for c in listener.incoming().take(conns) {
                serve(c.expect("accept"));
            }
        });
        FakeDaemon { socket, thread: Some(thread), _dir: dir }
    }

    /// Answers every request with `status` and the JSON `body`.
    fn answering(conns: usize, status: u16, body: Value) -> FakeDaemon {
        let body = body.to_string();
        FakeDaemon::start(conns, move |mut c| {
            read_request(&mut c);
            let _ = write!(
                c,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
        })
    }

    fn join(mut self) {
        if let Some(t) = self.thread.take() {
            t.join().expect("the stand-in daemon panicked");
        }
    }
}

/// The checks every failing CLI call must pass: the exit code, one line on
/// stderr beginning "error: " that contains `says`, nothing on stdout, no panic.
fn assert_fails(o: &Output, code: i32, says: &str, what: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "{what}: {}", describe("lanyard", o));
    assert_eq!(err.lines().count(), 1, "{what}: stderr is not one line: {err:?}");
    assert!(err.starts_with("error: "), "{what}: {err:?}");
    assert!(err.contains(says), "{what}: {err:?} does not say {says:?}");
    assert!(o.stdout.is_empty(), "{what}: stdout {:?}", stdout(o));
    assert!(!err.contains("panicked"), "{what}: {err}");
}

#[test]
fn exit_5_when_no_daemon_listens() {
    let dir = TempDir::new("no-daemon");
    let missing = dir.path().join("missing.sock");
    assert_fails(&lanyard(&missing, &["net", "list"]), 5, "is `lanyard daemon` running?", "no socket file");
    // A socket file nobody listens on (a daemon that died without cleaning up).
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).expect("bind"));
    assert!(stale.exists());
    assert_fails(&lanyard(&stale, &["net", "list"]), 5, "Connection refused", "stale socket");
}

#[test]
fn exit_5_when_the_daemon_goes_away_mid_request() {
    // Accepts and closes at once, before reading anything.
    let d = FakeDaemon::start(1, drop);
    let o = lanyard(&d.socket, &["net", "create", "n1", "--mode", "nat", "--subnet", "10.0.0.0/24"]);
    assert_fails(&o, 5, "closed the connection without answering", "closed at once");
    d.join();
    // Reads the request, then dies without a word.
    let d = FakeDaemon::start(1, |mut c| {
        read_request(&mut c);
    });
    assert_fails(
        &lanyard(&d.socket, &["port", "list"]),
        5,
        "closed the connection without answering",
        "read, no answer",
    );
    d.join();
    // Dies in the middle of its answer: the header promises more than comes.
    let d = FakeDaemon::start(1, |mut c| {
        read_request(&mut c);
        let _ =
            c.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n[{\"id\":");
    });
    assert_fails(&lanyard(&d.socket, &["port", "list"]), 5, "closed the connection mid-answer", "half an answer");
    d.join();
    // Dies in the middle of a chunked answer.
    let d = FakeDaemon::start(1, |mut c| {
        read_request(&mut c);
        let _ = c.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n40\r\n[{\"id\":");
    });
    assert_fails(&lanyard(&d.socket, &["net", "list"]), 5, "mid-answer", "half a chunked answer");
    d.join();
    // An answer that is not HTTP at all is still "unexpected" (exit 1).
    let d = FakeDaemon::start(1, |mut c| {
        read_request(&mut c);
        let _ = c.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n");
    });
    assert_fails(&lanyard(&d.socket, &["net", "list"]), 1, "unexpected answer", "not HTTP");
    d.join();
}

/// A port list of `n` ports, as the daemon answers it.
fn ports(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| {
                json!({"id": format!("{i:08x}"), "net": "default", "vm": format!("vm{i}"), "type": "tap",
                       "ifname": format!("ly{i:08x}"), "mac": "52:54:00:00:00:01", "ip": "192.168.122.2"})
            })
            .collect(),
    )
}

#[test]
fn a_closed_stdout_ends_the_cli_quietly() {
    // The reader goes away before the CLI writes a byte: the answer comes
    // only once the pipe's read end is closed.
    let (closed_tx, closed_rx) = mpsc::channel::<()>();
    let closed_rx = std::sync::Mutex::new(closed_rx);
    let body = ports(3).to_string();
    let d = FakeDaemon::start(2, move |mut c| {
        read_request(&mut c);
        closed_rx.lock().unwrap().recv_timeout(Duration::from_secs(30)).expect("the test closed the pipe");
        let _ = write!(
            c,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
    });
    for args in [&["port", "list", "-o", "json"][..], &["port", "list"]] {
        let mut child = Command::new(LANYARD)
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lanyard");
        drop(child.stdout.take());
        closed_tx.send(()).unwrap();
        let status = wait_timeout(&mut child, Duration::from_secs(30)).expect("lanyard exits");
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert_eq!((status.code(), err.as_str()), (Some(0), ""), "lanyard {} into a closed pipe", args.join(" "));
    }
    d.join();

    // The shell's way: more output than a pipe holds, and `head` leaves early.
    let d = FakeDaemon::answering(2, 200, ports(3000));
    for args in ["port list -o json | head -c 10", "port list | head -n 1"] {
        let script = format!("\"$0\" --socket \"$1\" {args} >/dev/null");
        let o = run(
            Command::new("sh").args(["-c", &script, LANYARD]).arg(&d.socket).env_remove("LANYARD_SOCKET"),
            Duration::from_secs(60),
        );
        assert!(o.status.success() && o.stderr.is_empty(), "`lanyard {args}`: {}", describe("sh", &o));
    }
    d.join();
}

#[test]
fn tables_show_guest_strings_escaped_and_json_exact() {
    let hostile = "a\u{1b}[31mb\n 52:54:00:00:00:99  10.0.0.99\u{9b}2J\r";
    let leases = json!([
        {"net": "default", "expiry": 1_795_305_600u64, "mac": "52:54:00:00:00:01", "ip": "192.168.122.130",
         "hostname": hostile, "client_id": hostile, "kind": "dynamic"},
    ]);
    let d = FakeDaemon::answering(2, 200, leases.clone());
    let table = lanyard(&d.socket, &["lease", "list", "default"]);
    let text = stdout(&table);
    assert!(table.status.success(), "{}", describe("lease list", &table));
    assert!(!table.stdout.contains(&0x1b) && !text.contains('\r') && !text.contains('\u{9b}'), "{text:?}");
    assert_eq!(text.lines().count(), 3, "a header, a rule and one row: {text}");
    assert!(text.contains(r"a\x1b[31mb\x0a 52:54:00:00:00:99  10.0.0.99\x9b2J\x0d"), "{text}");
    let json = lanyard(&d.socket, &["lease", "list", "default", "-o", "json"]);
    let v: Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(v, leases, "-o json must give the exact strings");
    d.join();

    // An error message the daemon sends is one line, escaped, too.
    let d = FakeDaemon::answering(1, 404, json!({"error": "no network named \"x\u{1b}[2J\ny\"", "kind": "not_found"}));
    assert_fails(&lanyard(&d.socket, &["net", "show", "x"]), 3, r#"no network named "x\x1b[2J\x0ay""#, "escaped error");
    d.join();
}

#[test]
fn permission_denied_on_the_socket_says_so() {
    if !privileged("permission_denied_on_the_socket_says_so", &["setpriv"]) {
        return;
    }
    let dir = TempDir::new("perm");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("l.sock");
    let _listener = UnixListener::bind(&socket).expect("bind");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660)).unwrap();
    // nobody, in no group of root's.
    let mut cmd = Command::new(tool("setpriv"));
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", LANYARD, "--socket"])
        .arg(&socket)
        .args(["net", "list"])
        .env_remove("LANYARD_SOCKET");
    let o = run(&mut cmd, Duration::from_secs(60));
    let want = format!("permission denied on {}: run as root or as a member of the socket's group", socket.display());
    assert_fails(&o, 5, &want, "socket 0660 root:root, user nobody");
    assert!(!stderr(&o).contains("is `lanyard daemon` running"), "{}", stderr(&o));
}

#[test]
fn hostile_dhcp_host_name_never_reaches_the_terminal_raw() {
    if !privileged("hostile_dhcp_host_name_never_reaches_the_terminal_raw", NAT_TOOLS) {
        return;
    }
    let mut lab = Topology::start();
    let net = lab.create_net("default", "nat", "192.168.122.0/24");
    lab.add_vm("vm1", net, &[]);
    let (vm, host) = (lab.vm("vm1"), &lab.host);
    let lease = udhcpc(&vm.ns, "eth0", Some("a\u{1b}[31mb"))
        .unwrap_or_else(|e| panic!("no lease for the guest: {e}\n{}", host.daemon.log()));
    assert_eq!(lease.ip, vm.ip());
    for args in [&["lease", "list", "default"][..], &["port", "list"], &["net", "show", "default"], &["status"]] {
        let out = host.cli_ok(args);
        assert!(!out.contains('\u{1b}'), "`lanyard {}` printed a raw ESC:\n{out:?}", args.join(" "));
    }
    let leases = host.cli_json(&["lease", "list", "default"]);
    let mine = leases.as_array().into_iter().flatten().find(|l| l["mac"] == vm.mac());
    assert!(mine.is_some(), "the guest's lease is not listed: {leases}");

    // `| head` on a real daemon: the reader is gone before the answer.
    let mut child = Command::new(LANYARD)
        .arg("--socket")
        .arg(host.daemon.socket())
        .args(["port", "list", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lanyard");
    drop(child.stdout.take());
    let status = wait_timeout(&mut child, Duration::from_secs(30)).expect("lanyard exits");
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!((status.code(), err.as_str()), (Some(0), ""), "port list -o json into a closed pipe");
}

#[test]
fn an_oversized_batch_is_refused_in_one_line() {
    if !privileged("an_oversized_batch_is_refused_in_one_line", &["ip", "nft", "kill"]) {
        return;
    }
    let host = Host::start();
    // Over the API's 4 MiB: the daemon answers 413 before it has read it
    // all and closes, so the CLI's write fails; the answer still counts.
    let batch = format!("[{}]", vec![r#"{"net":"default","vm":"vm1","type":"tap"}"#; 120_000].join(","));
    let dir = TempDir::new("batch");
    let file = dir.path().join("batch.json");
    std::fs::write(&file, &batch).unwrap();
    let o = host.cli(&["port", "create-batch", file.to_str().unwrap()]);
    assert_fails(&o, 2, "request body is larger than the API's limit of 4 MiB", "5 MB batch");
    assert_eq!(host.cli_json(&["port", "list"]), json!([]));
}
