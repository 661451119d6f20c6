//! lanyard among the tools operators already use: shell completions and
//! man pages made from the clap definitions, `lanyard status`, and
//! Prometheus metrics.
//!
//! The completion and man page tests need no root and no daemon; the
//! others run a daemon in a test namespace.

mod common;

use std::process::Command;
use std::time::Duration;

use clap::CommandFactory;
use common::*;

/// Runs `lanyard ARGS` with no daemon (bounded to a minute).
fn lanyard(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(LANYARD);
    cmd.args(args).env_remove("LANYARD_SOCKET");
    run(&mut cmd, Duration::from_secs(60))
}

/// The top-level commands, from the clap definition itself, so that a new
/// command is checked without touching this test.
fn top_level_commands() -> Vec<String> {
    let names: Vec<String> = lanyard::cli::Cli::command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name().to_string())
        .collect();
    assert!(names.len() > 10, "the clap definition has only {names:?}");
    names
}

fn stdout_ok(args: &[&str]) -> String {
    let out = lanyard(args);
    assert!(out.status.success(), "lanyard {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn completions_name_every_command_and_parse() {
    let bash = stdout_ok(&["completions", "bash"]);
    for name in top_level_commands() {
        assert!(bash.contains(&name), "the bash completion does not mention `{name}`");
    }
    let dir = TempDir::new("compl");
    let script = dir.path().join("lanyard.bash");
    std::fs::write(&script, &bash).unwrap();
    let check = run(Command::new("bash").arg("-n").arg(&script), Duration::from_secs(60));
    assert!(check.status.success(), "bash -n refuses the script: {}", String::from_utf8_lossy(&check.stderr));

    for shell in ["zsh", "fish"] {
        let script = stdout_ok(&["completions", shell]);
        assert!(script.contains("net") && script.contains("lanyard"), "{shell}: {script:.200}");
    }
    let out = lanyard(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");
}

#[test]
fn man_page_lists_every_command_and_renders_cleanly() {
    // roff writes `-` as `\-`.
    let page = stdout_ok(&["man"]).replace("\\-", "-");
    assert!(page.starts_with(".ie") || page.contains(".TH lanyard 1"), "{page:.300}");
    for name in top_level_commands() {
        assert!(page.contains(&format!("lanyard-{name}(1)")), "lanyard(1) does not list `{name}`");
    }

    let dir = TempDir::new("man");
    stdout_ok(&["man", "--dir", dir.path().to_str().unwrap()]);
    for name in top_level_commands() {
        let file = dir.path().join(format!("lanyard-{name}.1"));
        assert!(file.is_file(), "no {}", file.display());
    }
    assert!(dir.path().join("lanyard.1").is_file());
    assert!(dir.path().join("lanyard-net-create.1").is_file(), "subcommands get their own page");
    let out = lanyard(&["man", "--dir", "/nonexistent/lanyard-man"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));

    let Some(groff) = which("groff") else {
        eprintln!("skipping the rendering check: groff is not installed");
        return;
    };
    let mut pages: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    pages.sort();
    for page in pages {
        let out = run(Command::new(&groff).args(["-man", "-Tutf8", "-ww", "-z"]).arg(&page), Duration::from_secs(60));
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && warnings.trim().is_empty(), "{}: {warnings}", page.display());
    }
}

/// `lanyard status` after a network and a port: every field, in both
/// outputs.
#[test]
fn status_shows_the_daemon_in_one_screen() {
    if !privileged("status_shows_the_daemon_in_one_screen", &["ip", "nft", "udhcpc"]) {
        return;
    }
    let host = Host::start();
    host.cli_json(&["net", "create", "stat", "--mode", "nat", "--subnet", "10.77.0.0/24"]);
    host.cli_json(&["net", "create", "idle", "--mode", "isolated", "--subnet", "10.78.0.0/24"]);
    host.cli_ok(&["net", "stop", "idle"]);
    let vm = host.attach_vm("stat", "vm1", &[]);
    assert_eq!(host.cli_json(&["status"])["leases"], 0, "a port's address is a lease once its guest asks");
    udhcpc(&vm.ns, "eth0", None).unwrap_or_else(|e| panic!("no lease: {e}"));

    let v = host.cli_json(&["status"]);
    let version = v["version"].as_str().unwrap_or_default();
    assert!(version.starts_with(env!("CARGO_PKG_VERSION")) && version.contains("commit"), "{v}");
    let store = v["store"].as_str().unwrap_or_default();
    let db = host.daemon.state_dir().join("lanyard.db");
    assert_eq!(store, format!("sqlite {}", db.display()), "{v}");
    let (started, uptime) = (v["started_at"].as_u64().unwrap_or(0), v["uptime_secs"].as_u64().unwrap_or(u64::MAX));
    assert!(started > 1_700_000_000 && uptime < 600, "{v}");
    assert_eq!(v["projects"], 1, "the default project: {v}");
    assert_eq!(v["networks"], 2, "{v}");
    assert_eq!(v["active_networks"], 1, "{v}");
    assert_eq!(v["ports"], 1, "{v}");
    assert_eq!(v["leases"], 1, "{v}");
    assert_eq!(v["floating_ips"], 0, "{v}");
    assert_eq!(v["dhcp_handler_panics"], 0, "{v}");
    assert!(v["self_healing"]["repairs"].is_u64() && v["coexistence"].is_object(), "{v}");

    let text = host.cli_ok(&["status"]);
    for (label, value) in [
        ("Version:", version.to_string()),
        ("Uptime:", String::new()),
        ("Store:", store.to_string()),
        ("Projects:", "1".into()),
        ("Networks:", "2 (1 active)".into()),
        ("Ports:", "1".into()),
        ("Leases:", "1".into()),
        ("Floating IPs:", "0".into()),
        ("Repairs:", String::new()),
        ("Last repair:", String::new()),
        ("DHCP handler panics:", "0".into()),
    ] {
        let line = text.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no {label} in:\n{text}"));
        assert!(line.contains(&value), "{line:?} should show {value:?}:\n{text}");
    }
    assert!(text.lines().count() <= 24, "one screen:\n{text}");
}

/// `GET PATH` over the daemon's unix socket: status code and body.
fn http_get(socket: &std::path::Path, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut c = std::os::unix::net::UnixStream::connect(socket).expect("connect to the daemon's socket");
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(c, "GET {path} HTTP/1.1\r\nHost: lanyard\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).expect("read the answer");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.into() };
    (code, body)
}

/// A chunked HTTP/1.1 body, joined.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The value of the sample `series` (name and labels, exactly as written).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A lease by busybox udhcpc moves its network's DISCOVER and REQUEST
/// counters; the exposition passes `promtool check metrics`; a project
/// token is refused; `--metrics-listen` serves the same.
#[test]
fn metrics_count_a_lease_and_pass_promtool() {
    if !privileged("metrics_count_a_lease_and_pass_promtool", &["ip", "nft", "udhcpc", "busybox", "dig"]) {
        return;
    }
    let promtool = which("promtool");
    if promtool.is_none() {
        assert!(!require_privileged(), "promtool (Debian package prometheus) is missing; see scripts/setup");
        eprintln!("promtool is not installed (Debian package prometheus): the exposition is not checked by it");
    }
    let ns = Netns::new("host");
    let daemon = Daemon::start_with(&ns, &["--metrics-listen", "127.0.0.1:9477"]);
    daemon.cli_json(&["net", "create", "mnet", "--mode", "nat", "--subnet", "10.79.0.0/24"]);
    let vm_ns = Netns::new("vm1");
    let ns_name = vm_ns.name().to_string();
    daemon.cli_json(&[
        "port", "create", "--net", "mnet", "--vm", "vm1", "--type", "veth", "--netns", &ns_name, "--ifname", "eth0",
    ]);

    let (code, before) = http_get(daemon.socket(), "/metrics", None);
    assert_eq!(code, 200, "{before}");
    let discover = r#"lanyard_dhcp_received_total{network="mnet",type="discover"}"#;
    let request = r#"lanyard_dhcp_received_total{network="mnet",type="request"}"#;
    let ack = r#"lanyard_dhcp_sent_total{network="mnet",type="ack"}"#;
    let d0 = sample(&before, discover).unwrap_or(0.0);
    let r0 = sample(&before, request).unwrap_or(0.0);

    let lease = udhcpc(&vm_ns, "eth0", None).unwrap_or_else(|e| panic!("no lease: {e}\n{}", daemon.log()));
    assert!(lease.ip.to_string().starts_with("10.79.0."), "{lease:?}");

    let answer = dig(&vm_ns, "10.79.0.1", "vm1.mnet");
    assert_eq!(answer.answers, [lease.ip], "{}", answer.output);

    let (code, text) = http_get(daemon.socket(), "/metrics", None);
    assert_eq!(code, 200, "{text}");
    assert!(sample(&text, discover).unwrap_or(0.0) > d0, "DISCOVER not counted:\n{text}");
    assert!(sample(&text, request).unwrap_or(0.0) > r0, "REQUEST not counted:\n{text}");
    assert!(sample(&text, ack).unwrap_or(0.0) >= 1.0, "ACK not counted:\n{text}");
    assert_eq!(sample(&text, r#"lanyard_dhcp_leases_active{network="mnet"}"#), Some(1.0), "{text}");
    assert!(sample(&text, r#"lanyard_dhcp_addresses_free{network="mnet"}"#).unwrap_or(0.0) > 100.0, "{text}");
    assert_eq!(sample(&text, "lanyard_ports"), Some(1.0), "{text}");
    assert!(sample(&text, "lanyard_kernel_apply_seconds_count").unwrap_or(0.0) >= 2.0, "{text}");
    assert!(sample(&text, "lanyard_store_commit_seconds_count").unwrap_or(0.0) >= 2.0, "{text}");
    assert!(sample(&text, "lanyard_kernel_repairs_total").is_some(), "{text}");
    let queries = r#"lanyard_dns_queries_total{network="mnet"}"#;
    assert!(sample(&text, queries).unwrap_or(0.0) >= 1.0, "the DNS query not counted:\n{text}");

    if let Some(promtool) = promtool {
        let dir = TempDir::new("metrics");
        let file = dir.path().join("metrics.txt");
        std::fs::write(&file, &text).unwrap();
        // promtool reads the exposition on stdin; a shell gives it the file.
        let script = format!("{} check metrics < {}", promtool.display(), file.display());
        let out = run(Command::new("sh").args(["-c", &script]), Duration::from_secs(60));
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}\n{text}");
    }

    // A project's token may not read every project's counters.
    daemon.cli_json(&["project", "create", "tenant"]);
    let token = daemon.cli_json(&["project", "token", "create", "tenant"]);
    let token = token["token"].as_str().unwrap_or_else(|| panic!("no token in {token}"));
    let (code, body) = http_get(daemon.socket(), "/metrics", Some(token));
    assert_eq!(code, 403, "{body}");

    // The plain HTTP listener inside the daemon's namespace.
    let out = ns.exec("busybox", &["wget", "-q", "-O", "-", "http://127.0.0.1:9477/metrics"]);
    let served = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && served.contains(discover), "{out:?}");
    let out = ns.exec("busybox", &["wget", "-q", "-O", "-", "http://127.0.0.1:9477/v1/status"]);
    assert!(!out.status.success(), "only /metrics is served on --metrics-listen: {out:?}");
}

/// `lanyard topo` draws what the daemon has: the bridge with its gateway,
/// a VM's port with its leased address, a DHCP client that is no port;
/// as a tree, JSON, DOT and an SVG that parses as XML; `--net` picks one
/// network, an unknown one is refused in one line.
#[test]
fn topo_draws_bridges_ports_and_clients() {
    if !privileged("topo_draws_bridges_ports_and_clients", &["ip", "nft", "udhcpc"]) {
        return;
    }
    let host = Host::start();
    let net = host.cli_json(&["net", "create", "drawn", "--mode", "nat", "--subnet", "10.79.0.0/24"]);
    host.cli_json(&["net", "create", "other", "--mode", "isolated", "--subnet", "10.80.0.0/24"]);
    let bridge = net["bridge"].as_str().unwrap().to_string();
    let vm = host.attach_vm("drawn", "painted", &[]);
    let lease = udhcpc(&vm.ns, "eth0", None).unwrap_or_else(|e| panic!("no lease: {e}"));
    let client = host.attach_by_hand(&bridge, "cl", "hcl");
    let dynamic = udhcpc(&client, "eth0", Some("sketch")).unwrap_or_else(|e| panic!("no dynamic lease: {e}"));

    let text = host.cli_ok(&["topo", "--net", "drawn"]);
    assert!(
        text.starts_with(&format!("{bridge}  nat 10.79.0.0/24  gateway 10.79.0.1  network drawn (active)")),
        "{text}"
    );
    assert!(text.contains(&format!("{}  painted  {}  {}", vm.host_ifname(), vm.mac(), lease.ip)), "{text}");
    assert!(text.contains("(dhcp client)  sketch") && text.contains(&dynamic.ip.to_string()), "{text}");
    assert!(!text.contains("other"), "--net drew another network: {text}");
    let all = host.cli_json(&["topo", "--format", "json"]);
    assert_eq!(all["networks"].as_array().map(Vec::len), Some(2), "{all}");
    let dot = host.cli_ok(&["topo", "--format", "dot"]);
    assert!(dot.starts_with("graph lanyard {") && dot.contains("painted"), "{dot}");
    let svg = host.cli_ok(&["topo", "--format", "svg"]);
    let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("the SVG does not parse: {e}\n{svg}"));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert!(svg.contains("painted") && svg.contains(&lease.ip.to_string()), "{svg}");
    let o = host.cli(&["topo", "--net", "nosuch"]);
    assert!(!o.status.success() && stderr(&o).trim_end().lines().count() == 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("no network named \"nosuch\""), "{}", stderr(&o));
}

/// The daemon's web page (`--web-listen`) in headless Chromium, inside
/// the daemon's namespace: the rendered page shows the topology picture
/// and the tables with the VM, its address and a DHCP client's name
/// (escaping of what guests choose is a unit test of `web`: the DHCP
/// server already refuses names that are no DNS labels). A screenshot is left in
/// target/web-view.png for review.
#[test]
fn the_web_page_shows_the_vms_in_a_browser() {
    if !privileged("the_web_page_shows_the_vms_in_a_browser", &["ip", "nft", "udhcpc", "chromium"]) {
        return;
    }
    let ns = Netns::new("web");
    let daemon = Daemon::start_with(&ns, &["--web-listen", "127.0.0.1:9478"]);
    let net = daemon.cli_json(&["net", "create", "shown", "--mode", "nat", "--subnet", "10.81.0.0/24"]);
    let bridge = net["bridge"].as_str().unwrap().to_string();
    let vm_ns = Netns::new("vmw");
    let port = daemon.cli_json(&[
        "port",
        "create",
        "--net",
        "shown",
        "--vm",
        "webvm",
        "--type",
        "veth",
        "--netns",
        vm_ns.name(),
        "--ifname",
        "eth0",
    ]);
    let lease = udhcpc(&vm_ns, "eth0", None).unwrap_or_else(|e| panic!("no lease: {e}"));
    assert_eq!(Some(lease.ip.to_string().as_str()), port["ip"].as_str());
    let client = plug_by_hand(&ns, &bridge, "clw", "hcw");
    udhcpc(&client, "eth0", Some("sketcher")).unwrap_or_else(|e| panic!("no dynamic lease: {e}"));

    let profile = ns.dir().join("chromium-profile");
    let screenshot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/web-view.png");
    let chromium = |extra: &[&str]| {
        let mut args = vec!["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1200,900"];
        let dir = format!("--user-data-dir={}", profile.display());
        args.push(&dir);
        args.extend_from_slice(extra);
        args.push("http://127.0.0.1:9478/");
        let mut cmd = ns.command("chromium", &args);
        cmd.env("HOME", ns.dir());
        run(&mut cmd, Duration::from_secs(90))
    };
    let dom = chromium(&["--dump-dom"]);
    let dom_text = stdout(&dom);
    assert!(dom.status.success() && dom_text.contains("<svg"), "chromium saw no page: {}\n{}", dom_text, stderr(&dom));
    for want in ["webvm", &lease.ip.to_string(), &bridge, "10.81.0.0/24", "sketcher"] {
        assert!(dom_text.contains(want), "the page lacks {want:?}:\n{dom_text}");
    }
    let shot = format!("--screenshot={}", screenshot.display());
    let o = chromium(&[&shot]);
    assert!(o.status.success() && screenshot.exists(), "no screenshot: {}", stderr(&o));
}

/// `lanyard daemon --config FILE`: the file's options apply (its metrics
/// listener answers), a flag wins over the file, an unknown key refuses the
/// start in one line; SIGHUP reads the file again without ending the
/// daemon, names what waits for a restart, and refuses a broken file
/// changing nothing.
#[test]
fn a_config_file_sets_the_daemon_and_sighup_reads_it_again() {
    if !privileged("a_config_file_sets_the_daemon_and_sighup_reads_it_again", &["ip", "nft", "busybox", "kill"]) {
        return;
    }
    let ns = Netns::new("cfg");
    let file = ns.dir().join("lanyard.toml");
    let path = file.display().to_string();
    std::fs::write(&file, "metrics-listen = \"127.0.0.1:9481\"\nweb-listen = \"127.0.0.1:9482\"\n").unwrap();
    let daemon = Daemon::start_with(&ns, &["--config", &path, "--web-listen", "127.0.0.1:9483"]);
    let get = |port: u16, what: &str| {
        let o = ns.exec("busybox", &["wget", "-q", "-O", "-", &format!("http://127.0.0.1:{port}/{what}")]);
        o.status.success().then(|| stdout(&o))
    };
    assert!(get(9481, "metrics").is_some_and(|m| m.contains("lanyard_")), "the file's metrics listener is not there");
    assert!(get(9483, "").is_some(), "the flag's web listener is not there");
    assert!(get(9482, "").is_none(), "the file's web-listen won over the flag");

    // SIGHUP: read again; the daemon stays; a change is named.
    std::fs::write(&file, "metrics-listen = \"127.0.0.1:9484\"\n").unwrap();
    assert!(signal(daemon.pid(), "HUP"));
    let named = poll(Duration::from_secs(5), Duration::from_millis(50), || {
        daemon.log().contains("metrics-listen, web-listen: takes effect at the next start").then_some(())
    });
    assert!(named.is_some(), "{}", daemon.log());
    assert!(daemon.log().contains("configuration reloaded"), "{}", daemon.log());
    std::fs::write(&file, "metrics-listen = [\n").unwrap();
    assert!(signal(daemon.pid(), "HUP"));
    let refused = poll(Duration::from_secs(5), Duration::from_millis(50), || {
        daemon.log().contains("reload refused, nothing changed").then_some(())
    });
    assert!(refused.is_some(), "{}", daemon.log());
    assert!(get(9481, "metrics").is_some(), "a reload took the running listener away");
    daemon.cli_ok(&["net", "list"]);

    // An unknown key: no start, one line naming it.
    std::fs::write(&file, "metrics-listn = \"127.0.0.1:9485\"\n").unwrap();
    let o = ns.exec(
        env!("CARGO_BIN_EXE_lanyard"),
        &["daemon", "--config", &path, "--state-dir", &ns.dir().join("s").display().to_string()],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.trim_end().lines().count() == 1 && err.contains("unknown field `metrics-listn`"), "{err}");
}
