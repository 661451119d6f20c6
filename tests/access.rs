//! Access control end to end, in a throw-away namespace: two projects and
//! a token for one; with `LANYARD_TOKEN` set the CLI lists only that
//! project's networks and ports, and another project's network is not
//! found (exit 3) exactly like a missing one; admin-only kinds are refused
//! (exit 6). Needs root; see `common::privileged`.

mod common;

use std::process::{Command, Output};

use common::*;
use serde_json::Value;

/// `lanyard --socket S ARGS` with `LANYARD_TOKEN=token`.
fn cli_as(host: &Host, token: &str, args: &[&str]) -> Output {
    let mut c = Command::new(LANYARD);
    c.arg("--socket").arg(host.daemon.socket()).args(args).env_remove("LANYARD_SOCKET").env("LANYARD_TOKEN", token);
    run(&mut c, CLI_TIMEOUT)
}

fn json_as(host: &Host, token: &str, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    let o = cli_as(host, token, &a);
    assert!(o.status.success(), "{}", describe(&format!("lanyard {}", a.join(" ")), &o));
    serde_json::from_str(&stdout(&o)).expect("JSON")
}

fn names(v: &Value, key: &str) -> Vec<String> {
    let mut out: Vec<String> = v.as_array().into_iter().flatten().map(|x| field(x, key).to_string()).collect();
    out.sort();
    out
}

#[test]
fn a_project_token_sees_only_its_project() {
    if !privileged("a_project_token_sees_only_its_project", &["ip", "nft"]) {
        return;
    }
    let host = Host::start();
    let mut ports = Vec::new();
    for (project, subnet) in [("red", "10.81.0.0/24"), ("blue", "10.82.0.0/24")] {
        host.cli_ok(&["project", "create", project]);
        host.cli_ok(&[
            "net",
            "create",
            &format!("net-{project}"),
            "--mode",
            "nat",
            "--subnet",
            subnet,
            "--project",
            project,
        ]);
        let p = host.cli_json(&[
            "port",
            "create",
            "--net",
            &format!("net-{project}"),
            "--vm",
            &format!("vm-{project}"),
            "--project",
            project,
        ]);
        ports.push(field(&p, "id").to_string());
    }
    let made = host.cli_json(&["project", "token", "create", "red", "--name", "ci"]);
    let token = field(&made, "token").to_string();
    assert!(token.starts_with("lyt_") && token.len() == 68, "{made}");
    let listed = host.cli_ok(&["project", "token", "list", "red"]);
    assert!(listed.contains(field(&made, "id")) && !listed.contains(&token), "{listed}");

    // The admin sees both; the token only red's.
    assert_eq!(names(&host.cli_json(&["net", "list"]), "name"), ["net-blue", "net-red"]);
    assert_eq!(names(&json_as(&host, &token, &["net", "list"]), "name"), ["net-red"]);
    assert_eq!(names(&json_as(&host, &token, &["port", "list"]), "id"), [ports[0].clone()]);
    assert_eq!(names(&json_as(&host, &token, &["project", "list"]), "name"), ["red"]);
    let shown = json_as(&host, &token, &["net", "show", "net-red"]);
    assert_eq!(field(&shown, "project"), "red", "without --project, the token's project: {shown}");

    // Blue's network is as missing as a network that does not exist.
    let theirs = cli_as(&host, &token, &["net", "show", "net-blue"]);
    let missing = cli_as(&host, &token, &["net", "show", "net-none"]);
    assert_eq!(theirs.status.code(), Some(3), "{}", stderr(&theirs));
    assert_eq!(stderr(&theirs), stderr(&missing).replace("net-none", "net-blue"));
    let theirs = cli_as(&host, &token, &["net", "show", "net-blue", "--project", "blue"]);
    let missing = cli_as(&host, &token, &["net", "show", "net-blue", "--project", "nosuch"]);
    assert_eq!(theirs.status.code(), Some(3), "{}", stderr(&theirs));
    assert_eq!(stderr(&theirs), stderr(&missing).replace("nosuch", "blue"));
    for args in [vec!["port", "delete", ports[1].as_str()], vec!["net", "delete", "net-blue"]] {
        let o = cli_as(&host, &token, &args);
        assert_eq!(o.status.code(), Some(3), "{args:?}: {}", stderr(&o));
    }
    assert_eq!(host.cli_json(&["port", "list"]).as_array().map(Vec::len), Some(2), "blue's port is still there");

    // Admin-only: one line, exit 6, nothing made.
    let o = cli_as(&host, &token, &["net", "create", "f1", "--manager", "flat", "--subnet", "10.83.0.0/24"]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(stderr(&o).starts_with("error: creating a --manager flat network") && stderr(&o).lines().count() == 1);
    let o = cli_as(&host, &token, &["project", "create", "green"]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    let bad = format!("lyt_{}", "1".repeat(64));
    let o = cli_as(&host, &bad, &["net", "list"]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(stderr(&o).starts_with("error: invalid token"), "{}", stderr(&o));
    assert_eq!(names(&host.cli_json(&["net", "list"]), "name"), ["net-blue", "net-red"]);

    // What it may do lands in red.
    let net = json_as(&host, &token, &["net", "create", "more", "--mode", "nat", "--subnet", "10.84.0.0/24"]);
    assert_eq!(field(&net, "project"), "red", "{net}");
    let o = cli_as(&host, &token, &["net", "delete", "more"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // A deleted token stops working at once.
    host.cli_ok(&["project", "token", "delete", "red", field(&made, "id")]);
    assert_eq!(cli_as(&host, &token, &["net", "list"]).status.code(), Some(6));
}

/// A CA and a server certificate for 127.0.0.1 it signed, made with
/// `openssl` in `dir`: (ca.pem, cert.pem, key.pem).
fn certificates(dir: &std::path::Path) -> [String; 3] {
    let p = |f: &str| dir.join(f).display().to_string();
    let openssl = |args: &[&str]| {
        let o = run(Command::new(tool("openssl")).args(args).current_dir(dir), CLI_TIMEOUT);
        assert!(o.status.success(), "{}", describe(&format!("openssl {}", args.join(" ")), &o));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[
            &["req", "-x509"],
            &ec[..],
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=lanyard test CA"],
        ]
        .concat(),
    );
    openssl(&[&["req"], &ec[..], &["-keyout", "key.pem", "-out", "srv.csr", "-subj", "/CN=127.0.0.1"]].concat());
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    [p("ca.pem"), p("cert.pem"), p("key.pem")]
}

/// The TCP listener, on the loopback of the test's namespace: TLS only and
/// a project's token on every request.
#[test]
fn the_tls_listener_needs_a_token() {
    if !privileged("the_tls_listener_needs_a_token", &["ip", "nft", "openssl", "bash"]) {
        return;
    }
    let mut host = Host::start();
    let [ca, cert, key] = certificates(host.ns.dir());
    const ADDR: &str = "127.0.0.1:7443";
    host.daemon.set_env("LANYARD_LISTEN", Some(ADDR));
    host.daemon.set_env("LANYARD_TLS_CERT", Some(&cert));
    host.daemon.set_env("LANYARD_TLS_KEY", Some(&key));
    host.daemon.restart();
    host.cli_ok(&["project", "create", "red"]);
    host.cli_ok(&["net", "create", "net-red", "--mode", "nat", "--subnet", "10.85.0.0/24", "--project", "red"]);
    host.cli_ok(&["net", "create", "net-admin", "--mode", "nat", "--subnet", "10.86.0.0/24"]);
    let token = field(&host.cli_json(&["project", "token", "create", "red"]), "token").to_string();
    let url = format!("https://{ADDR}");
    // The CLI in the test's namespace, against the listener.
    let remote = |token: Option<&str>, ca: &str, args: &[&str]| {
        let mut c = host.ns.command(LANYARD, &[&["--url", url.as_str(), "--ca", ca], args].concat());
        c.env_remove("LANYARD_TOKEN").env_remove("LANYARD_SOCKET").env("LANYARD_SOCKET", "/nonexistent/lanyard.sock");
        if let Some(t) = token {
            c.env("LANYARD_TOKEN", t);
        }
        run(&mut c, CLI_TIMEOUT)
    };

    let o = remote(Some(&token), &ca, &["net", "list", "-o", "json"]);
    assert!(o.status.success(), "{}\n{}", describe("net list over TLS", &o), host.daemon.log());
    let nets: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(names(&nets, "name"), ["net-red"], "{nets}");
    let o = remote(None, &ca, &["net", "list"]);
    assert_eq!(o.status.code(), Some(6), "no token: {}", stderr(&o));
    assert!(stderr(&o).contains("needs a project token"), "{}", stderr(&o));
    let o = remote(Some(&format!("lyt_{}", "3".repeat(64))), &ca, &["net", "list"]);
    assert_eq!(o.status.code(), Some(6), "bad token: {}", stderr(&o));
    assert!(stderr(&o).starts_with("error: invalid token"), "{}", stderr(&o));
    // A CA that did not sign the daemon's certificate: no session at all.
    let o = remote(Some(&token), &cert, &["net", "list"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("no TLS connection") && stderr(&o).lines().count() == 1, "{}", stderr(&o));

    // Plain HTTP on the TLS port gets no HTTP answer.
    let script = format!(
        "exec 3<>/dev/tcp/{}/{}; printf 'GET /v1/networks HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n' >&3; timeout 5 cat <&3",
        "127.0.0.1", "7443"
    );
    let o = host.ns.exec("bash", &["-c", &script]);
    let answer = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(!answer.contains("HTTP/1.") && !answer.contains("net-red"), "plain HTTP was answered: {answer:?}");

    // The listener is the namespace's loopback only, and the unix socket
    // still serves the admin.
    assert_eq!(names(&host.cli_json(&["net", "list"]), "name"), ["net-admin", "net-red"]);
    let log = host.daemon.log();
    assert!(log.contains("TLS listener ready") && !log.contains("ERROR"), "{log}");
}
