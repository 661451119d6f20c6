//! The REST API spoken to directly, as a client other than lanyard's CLI
//! would: every wrong request (bad JSON, wrong types, unknown fields, no
//! JSON content type, an oversized body, path tricks, unknown paths, wrong
//! methods) is answered with the right status and `{"error", "kind"}` JSON
//! and changes nothing; 20 conflicting creates at once leave exactly one;
//! the state directory and database are private to root. Needs root; see
//! `common::privileged`.

mod common;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const NET: &str = "default";
const SUBNET: &str = "192.168.122.0/24";
/// The API's body limit (`api::BODY_LIMIT`), 4 MiB.
const BODY_LIMIT: usize = 4 * 1024 * 1024;

/// One HTTP answer.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// Header lines, lower-cased names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// A request as bytes: `Content-Type` only if given, always a length.
fn request(method: &str, path: &str, ctype: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: lanyard\r\nConnection: close\r\n");
    if let Some(c) = ctype {
        let _ = write!(head, "Content-Type: {c}\r\n");
    }
    let _ = write!(head, "Content-Length: {}\r\n\r\n", body.len());
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap_or("0").trim(), 16).unwrap_or(0);
        b = &b[eol + 2..];
        if size == 0 || b.len() < size {
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = b.get(size + 2..).unwrap_or_default();
    }
    out
}

/// Sends `raw` on the daemon's socket (from a second thread, so a daemon
/// that answers before reading everything cannot block us) and reads the
/// answer until the daemon closes.
fn send(socket: &Path, raw: Vec<u8>) -> Reply {
    let mut stream = UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    writer.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    let sending = std::thread::spawn(move || {
        // The daemon may close before taking all of an oversized body.
        let _ = writer.write_all(&raw);
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // A unix socket closed with unread data reports ECONNRESET
            // after the last byte sent.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the answer: {e} after {} bytes", buf.len()),
        }
    }
    sending.join().unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {:?}", String::from_utf8_lossy(&buf)));
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = buf[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")) {
        body = dechunk(&body);
    }
    Reply { status, headers, body }
}

fn get(socket: &Path, path: &str) -> Value {
    let r = send(socket, request("GET", path, None, b""));
    assert_eq!(r.status, 200, "GET {path}: {:?}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// What a refused request must leave as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    nets: Value,
    ports: Value,
    leases: Value,
    links: Value,
}

fn snapshot(host: &Host) -> Snapshot {
    let socket = host.daemon.socket();
    let mut links = host.ns.ip_json(&["link", "show"]);
    for l in links.as_array_mut().into_iter().flatten() {
        if let Some(o) = l.as_object_mut() {
            o.remove("operstate"); // moves on its own as carrier settles
        }
    }
    Snapshot {
        nets: get(socket, "/v1/networks"),
        ports: get(socket, "/v1/ports"),
        leases: get(socket, &format!("/v1/networks/{NET}/leases")),
        links,
    }
}

struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    ctype: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    kind: &'static str,
    /// The error message contains this.
    says: String,
}

const JSON: Option<&str> = Some("application/json");

#[allow(clippy::too_many_arguments)]
fn case(
    what: &'static str,
    method: &'static str,
    path: &str,
    ctype: Option<&'static str>,
    body: impl Into<Vec<u8>>,
    status: u16,
    kind: &'static str,
    says: &str,
) -> Case {
    Case { what, method, path: path.into(), ctype, body: body.into(), status, kind, says: says.into() }
}

#[test]
fn wrong_requests_get_json_errors_and_change_nothing() {
    if !privileged("wrong_requests_get_json_errors_and_change_nothing", &["ip", "nft", "kill"]) {
        return;
    }
    let mut lab = Topology::start();
    let net = lab.create_net(NET, "nat", SUBNET);
    lab.add_vm("vm1", net, &[]);
    let host = &lab.host;
    let socket = host.daemon.socket();

    let long = "a".repeat(10_000);
    let spec = |extra: &str| format!(r#"{{"name":"n1","mode":"nat","subnet":"10.10.0.0/24"{extra}}}"#);
    let oversized = format!("[{}]", vec![r#"{"net":"default","vm":"bulk"}"#; BODY_LIMIT / 25].join(","));
    assert!(oversized.len() > BODY_LIMIT);
    let cases = vec![
        // Bodies that are not JSON.
        case(
            "truncated JSON",
            "POST",
            "/v1/networks",
            JSON,
            r#"{"name": "n1","#,
            400,
            "invalid",
            "invalid JSON at line 1 column 14",
        ),
        case(
            "single quotes",
            "POST",
            "/v1/networks",
            JSON,
            "{'name': 'n1'}",
            400,
            "invalid",
            "invalid JSON at line 1 column 2: key must be a string",
        ),
        case(
            "not JSON at all",
            "POST",
            "/v1/ports",
            JSON,
            "net=default&vm=x",
            400,
            "invalid",
            "invalid JSON at line 1 column 2: expected ident",
        ),
        case("trailing garbage", "POST", "/v1/networks", JSON, spec("") + "}", 400, "invalid", "trailing characters"),
        case("empty body", "POST", "/v1/networks", JSON, "", 400, "invalid", "empty request body"),
        case(
            "invalid UTF-8",
            "POST",
            "/v1/networks",
            JSON,
            b"{\"name\":\"\xff\"}".to_vec(),
            400,
            "invalid",
            "invalid JSON",
        ),
        // JSON of the wrong shape.
        case(
            "mtu of the wrong type",
            "POST",
            "/v1/networks",
            JSON,
            spec(r#","mtu":"big""#),
            422,
            "invalid",
            r#"mtu: invalid type: string "big", expected u32"#,
        ),
        case(
            "mtu out of u32",
            "POST",
            "/v1/networks",
            JSON,
            spec(r#","mtu":99999999999"#),
            422,
            "invalid",
            "mtu: invalid value",
        ),
        case(
            "subnet a number",
            "POST",
            "/v1/networks",
            JSON,
            r#"{"name":"n1","mode":"nat","subnet":24}"#,
            422,
            "invalid",
            "subnet: invalid type",
        ),
        case(
            "autostart a string",
            "POST",
            "/v1/networks",
            JSON,
            spec(r#","autostart":"yes""#),
            422,
            "invalid",
            "autostart: invalid type",
        ),
        case(
            "missing field",
            "POST",
            "/v1/networks",
            JSON,
            r#"{"name":"n1"}"#,
            422,
            "invalid",
            r#"missing field "mode""#,
        ),
        case("an array for a network", "POST", "/v1/networks", JSON, "[1]", 422, "invalid", "invalid request body"),
        case(
            "port ip an array",
            "POST",
            "/v1/ports",
            JSON,
            r#"{"net":"default","vm":"x","ip":[1]}"#,
            422,
            "invalid",
            "ip: invalid type: sequence",
        ),
        case(
            "batch not an array",
            "POST",
            "/v1/ports/batch",
            JSON,
            r#"{"net":"default","vm":"x"}"#,
            422,
            "invalid",
            "expected a sequence",
        ),
        case(
            "batch entry of the wrong type",
            "POST",
            "/v1/ports/batch",
            JSON,
            r#"[{"net":"default","vm":"x"},{"net":"default","vm":"y","mac":1}]"#,
            422,
            "invalid",
            "[1].mac: invalid type: integer 1",
        ),
        case(
            "autostart enabled a string",
            "POST",
            "/v1/networks/default/autostart",
            JSON,
            r#"{"enabled":"yes"}"#,
            422,
            "invalid",
            "enabled: invalid type",
        ),
        // Unknown fields.
        case(
            "unknown network field",
            "POST",
            "/v1/networks",
            JSON,
            spec(r#","colour":"red""#),
            422,
            "invalid",
            r#"unknown field "colour", expected one of "name", "mode", "subnet""#,
        ),
        case(
            "misspelt port field",
            "POST",
            "/v1/ports",
            JSON,
            r#"{"net":"default","vm":"x","macc":"52:54:00:00:00:09"}"#,
            422,
            "invalid",
            r#"unknown field "macc""#,
        ),
        case(
            "unknown field in a batch entry",
            "POST",
            "/v1/ports/batch",
            JSON,
            r#"[{"net":"default","vm":"x","vlan":5}]"#,
            422,
            "invalid",
            r#"[0]: unknown field "vlan""#,
        ),
        case(
            "unknown autostart field",
            "POST",
            "/v1/networks/default/autostart",
            JSON,
            r#"{"enabled":true,"at":"boot"}"#,
            422,
            "invalid",
            r#"unknown field "at", expected "enabled""#,
        ),
        case(
            "unknown query parameter",
            "GET",
            "/v1/ports?colour=red",
            None,
            "",
            400,
            "invalid",
            r#"invalid query string: colour: unknown field "colour", expected one of "vm", "net", "project""#,
        ),
        // Content types.
        case("no Content-Type", "POST", "/v1/networks", None, spec(""), 415, "invalid", "missing Content-Type"),
        case(
            "text/plain",
            "POST",
            "/v1/networks",
            Some("text/plain"),
            spec(""),
            415,
            "invalid",
            r#"Content-Type "text/plain" is not JSON"#,
        ),
        case(
            "a form",
            "POST",
            "/v1/ports",
            Some("application/x-www-form-urlencoded"),
            "net=default&vm=x",
            415,
            "invalid",
            "is not JSON",
        ),
        // Size.
        case(
            "oversized batch",
            "POST",
            "/v1/ports/batch",
            JSON,
            oversized,
            413,
            "invalid",
            "larger than the API's limit of 4 MiB",
        ),
        // Path tricks.
        case("encoded ../..", "GET", "/v1/networks/..%2f..", None, "", 404, "not_found", r#"no network named "../..""#),
        case(
            "encoded .. deleting",
            "DELETE",
            "/v1/networks/..%2f..%2fv1%2fnetworks%2fdefault",
            None,
            "",
            404,
            "not_found",
            "no network named",
        ),
        case("encoded ..", "GET", "/v1/networks/%2e%2e", None, "", 404, "not_found", r#"no network named "..""#),
        case("raw ..", "GET", "/v1/networks/../networks", None, "", 404, "not_found", "no API endpoint"),
        case("NUL", "GET", "/v1/networks/%00", None, "", 404, "not_found", "no network named"),
        case("NUL deleting", "DELETE", "/v1/networks/default%00", None, "", 404, "not_found", "no network named"),
        case("not UTF-8", "GET", "/v1/networks/%ff", None, "", 400, "invalid", "UTF-8"),
        case(
            "encoded port path",
            "DELETE",
            "/v1/ports/..%2fnetworks%2fdefault",
            None,
            "",
            404,
            "not_found",
            "no port with id",
        ),
        case("10,000-byte name", "GET", &format!("/v1/networks/{long}"), None, "", 404, "not_found", "bytes ...] aaa"),
        case(
            "10,000-byte name deleting",
            "DELETE",
            &format!("/v1/networks/{long}/leases"),
            None,
            "",
            405,
            "invalid",
            "use GET",
        ),
        case(
            "10,000-byte name created",
            "POST",
            "/v1/networks",
            JSON,
            format!(r#"{{"name":"{long}","mode":"nat","subnet":"10.10.0.0/24"}}"#),
            400,
            "invalid",
            "... (10000 bytes): is 10000 bytes, at most 15 are allowed",
        ),
        case(
            "doubled slashes",
            "GET",
            "//v1//networks",
            None,
            "",
            404,
            "not_found",
            "no API endpoint GET //v1//networks",
        ),
        case("trailing slash", "GET", "/v1/networks/", None, "", 404, "not_found", "no API endpoint"),
        // Unknown paths.
        case("another version", "GET", "/v2/networks", None, "", 404, "not_found", "no API endpoint GET /v2/networks"),
        case("root", "GET", "/", None, "", 404, "not_found", "no API endpoint GET /"),
        case("below batch", "POST", "/v1/ports/batch/x", JSON, "[]", 404, "not_found", "no API endpoint"),
        case("unknown action", "POST", "/v1/networks/default/restart", JSON, "", 404, "not_found", "no API endpoint"),
        // Wrong methods.
        case(
            "PUT networks",
            "PUT",
            "/v1/networks",
            JSON,
            spec(""),
            405,
            "invalid",
            "method PUT is not allowed on /v1/networks; use GET, HEAD, POST",
        ),
        case(
            "DELETE all ports",
            "DELETE",
            "/v1/ports",
            None,
            "",
            405,
            "invalid",
            "method DELETE is not allowed on /v1/ports",
        ),
        case(
            "PUT a network",
            "PUT",
            "/v1/networks/default",
            JSON,
            spec(""),
            405,
            "invalid",
            "use GET, HEAD, PATCH, DELETE",
        ),
        case(
            "PATCH a network's subnet",
            "PATCH",
            "/v1/networks/default",
            JSON,
            r#"{"subnet": "10.1.0.0/24"}"#,
            400,
            "invalid",
            "a network's subnet cannot be changed",
        ),
        case(
            "PATCH a network with an unknown field",
            "PATCH",
            "/v1/networks/default",
            JSON,
            r#"{"colour": "red"}"#,
            422,
            "invalid",
            "unknown field",
        ),
        case("GET batch", "GET", "/v1/ports/batch", None, "", 405, "invalid", "use POST"),
        case("GET start", "GET", "/v1/networks/default/start", None, "", 405, "invalid", "use POST"),
        case("POST status", "POST", "/v1/status", JSON, "{}", 405, "invalid", "use GET"),
    ];

    let mut before = snapshot(host);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        let again = snapshot(host);
        if again == before {
            break;
        }
        before = again;
    }
    let mut failures = Vec::new();
    for c in &cases {
        let r = send(socket, request(c.method, &c.path, c.ctype, &c.body));
        let mut problems = Vec::new();
        if r.status != c.status {
            problems.push(format!("status {}, want {}", r.status, c.status));
        }
        if !r.header("content-type").is_some_and(|t| t.starts_with("application/json")) {
            problems.push(format!("content-type {:?}", r.header("content-type")));
        }
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        let error = v["error"].as_str().unwrap_or_default();
        if v.as_object().map(|o| o.len()) != Some(2) || !v["kind"].is_string() || error.is_empty() {
            problems.push(format!("not an {{error, kind}} body: {:?}", String::from_utf8_lossy(&r.body)));
        }
        if v["kind"] != c.kind {
            problems.push(format!("kind {}, want {}", v["kind"], c.kind));
        }
        if error.contains('\n') || error.len() > 512 {
            problems.push("the message is not one short line".into());
        }
        if !error.contains(&c.says) {
            problems.push(format!("the message does not say {:?}", c.says));
        }
        if c.status == 405 && r.header("allow").is_none() {
            problems.push("405 without Allow".into());
        }
        let after = snapshot(host);
        if after != before {
            problems.push(format!("state changed:\n  before {before:?}\n  after  {after:?}"));
            before = after;
        }
        let shown = if error.len() > 200 { format!("{}...", &error[..200]) } else { error.to_string() };
        eprintln!("[{}] {}: {} {:?}", if problems.is_empty() { "ok" } else { "FAIL" }, c.what, r.status, shown);
        if !problems.is_empty() {
            failures.push(format!(
                "{} ({} {}):\n  - {}",
                c.what,
                c.method,
                &c.path[..c.path.len().min(80)],
                problems.join("\n  - ")
            ));
        }
    }
    // Still serving, and the network still usable.
    assert_eq!(get(socket, &format!("/v1/networks/{NET}"))["state"], "active");
    assert!(failures.is_empty(), "{} of {} wrong requests:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// Sends the same kind of request from `n` threads released at once; the statuses and bodies.
fn at_once(socket: &Path, n: usize, make: impl Fn(usize) -> (String, Value)) -> Vec<(u16, Value)> {
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (path, body) = make(i);
            let (socket, barrier) = (socket.to_path_buf(), barrier.clone());
            std::thread::spawn(move || {
                let raw = request("POST", &path, JSON, body.to_string().as_bytes());
                barrier.wait();
                let r = send(&socket, raw);
                (r.status, r.json())
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().expect("a request thread panicked")).collect()
}

fn one_wins(results: &[(u16, Value)], what: &str) {
    let won = results.iter().filter(|(s, _)| *s == 201).count();
    let lost: Vec<&Value> = results.iter().filter(|(s, _)| *s == 409).map(|(_, v)| v).collect();
    assert_eq!((won, lost.len()), (1, results.len() - 1), "{what}: {results:?}");
    for v in lost {
        assert_eq!(v["kind"], "conflict", "{what}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty() && !e.contains('\n')), "{what}: {v}");
    }
}

#[test]
fn twenty_conflicting_creates_at_once_leave_exactly_one() {
    if !privileged("twenty_conflicting_creates_at_once_leave_exactly_one", &["ip", "nft", "kill"]) {
        return;
    }
    let mut lab = Topology::start();
    lab.create_net(NET, "nat", SUBNET);
    let host = &lab.host;
    let socket = host.daemon.socket();

    // The same network name, each with a subnet of its own.
    let results = at_once(socket, 20, |i| {
        ("/v1/networks".into(), json!({"name": "race", "mode": "nat", "subnet": format!("10.77.{i}.0/24")}))
    });
    one_wins(&results, "20 creates of network \"race\"");
    let nets = get(socket, "/v1/networks");
    let races: Vec<&Value> = nets.as_array().unwrap().iter().filter(|n| n["name"] == "race").collect();
    assert_eq!(races.len(), 1, "{nets}");
    let bridges = host.ns.ip_json(&["-d", "link", "show", "type", "bridge"]);
    assert_eq!(bridges.as_array().map(Vec::len), Some(2), "one bridge each for default and race: {bridges}");

    // The same MAC on 20 TAP ports of different VMs.
    let mac = "52:54:00:77:77:77";
    let results = at_once(socket, 20, |i| {
        ("/v1/ports".into(), json!({"net": NET, "vm": format!("vm{i}"), "type": "tap", "mac": mac}))
    });
    one_wins(&results, "20 ports with one MAC");
    let ports = get(socket, "/v1/ports");
    assert_eq!(ports.as_array().unwrap().iter().filter(|p| p["mac"] == mac).count(), 1, "{ports}");
    let taps: Vec<Value> = host
        .ns
        .links()
        .into_iter()
        .filter(|l| l["ifname"].as_str().is_some_and(|n| n.starts_with("ly") && !n.starts_with("lybr")))
        .collect();
    assert_eq!(taps.len(), 1, "one TAP in the kernel: {taps:?}");

    // And the state survives a restart as it is.
    lab.host.daemon.restart();
    let socket = lab.host.daemon.socket();
    assert_eq!(get(socket, "/v1/networks").as_array().map(Vec::len), Some(2));
    assert_eq!(get(socket, "/v1/ports").as_array().map(Vec::len), Some(1));
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o7777
}

#[test]
fn state_is_private_to_root() {
    if !privileged("state_is_private_to_root", &["ip", "nft", "kill"]) {
        return;
    }
    let mut lab = Topology::start();
    lab.create_net(NET, "nat", SUBNET);
    let daemon = &mut lab.host.daemon;
    let dir = daemon.state_dir().to_path_buf();
    let db = dir.join("lanyard.db");
    let companions = [dir.join("lanyard.db-wal"), dir.join("lanyard.db-shm")];
    assert_eq!(mode(&dir), 0o700, "state directory");
    assert_eq!(mode(&db), 0o600, "database");
    for f in &companions {
        assert_eq!(mode(f), 0o600, "{} while the daemon runs", f.display());
    }
    assert_eq!(mode(daemon.socket()), 0o660, "socket");

    // Loosened while the daemon is stopped: tightened, and said so, at start.
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    for f in companions.iter().filter(|f| f.exists()) {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let log_before = daemon.log().len();
    daemon.start_again();
    let log = daemon.log()[log_before..].to_string();
    assert_eq!(mode(&dir), 0o700, "state directory after restart");
    assert_eq!(mode(&db), 0o600, "database after restart");
    for f in &companions {
        assert_eq!(mode(f), 0o600, "{} after restart", f.display());
    }
    for what in [format!("{} from 0755 to 0700", dir.display()), format!("{} from 0644 to 0600", db.display())] {
        assert!(log.contains(&format!("tightened the mode of {what}")), "no log of {what}:\n{log}");
    }
    assert_eq!(get(daemon.socket(), "/v1/networks").as_array().map(Vec::len), Some(1), "the state is intact");
}
