//! lanyard under systemd and as a Debian package.
//!
//! - The daemon tells `$NOTIFY_SOCKET` `READY=1` once it has reconciled
//!   the kernel (`Type=notify`): a datagram socket the test binds stands in
//!   for systemd, the daemon runs in a test namespace.
//! - `scripts/deb` builds the package with cargo-deb (the debug build, for
//!   time); its contents are checked with `dpkg -c`, and the unit it ships
//!   with `systemd-analyze verify` (never installed, enabled or started on
//!   this host).

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// The next datagram on `sock` as text, within `timeout`.
fn next_message(sock: &UnixDatagram, timeout: Duration) -> Option<String> {
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn the_daemon_tells_systemd_it_is_ready_once_reconciled() {
    const NAME: &str = "the_daemon_tells_systemd_it_is_ready_once_reconciled";
    if !privileged(NAME, &["ip", "nft", "env"]) {
        return;
    }
    let ns = Netns::new("notify");
    let path = ns.dir().join("notify.sock");
    let systemd = UnixDatagram::bind(&path).expect("the stand-in for systemd binds");
    let env = format!("NOTIFY_SOCKET={}", path.display());
    let mut daemon = Daemon::start_wrapped(&ns, &["env", &env], &[]);

    let ready = next_message(&systemd, Duration::from_secs(30)).expect("no READY=1 within 30 s");
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(ready.contains("STATUS=serving; 0 of 0 networks active"), "{ready}");
    assert!(ready.contains(&format!("MAINPID={}", daemon.pid())), "{ready} (the daemon is pid {})", daemon.pid());

    let net = daemon.cli_json(&["net", "create", "sd", "--mode", "nat", "--subnet", "10.66.0.0/24"]);
    let bridge = net["bridge"].as_str().expect("the network's bridge").to_string();
    daemon.stop();
    let stopping = next_message(&systemd, Duration::from_secs(5)).expect("no STOPPING=1 on SIGTERM");
    assert_eq!(stopping, "STOPPING=1\n");

    // While the daemon is down the bridge goes; READY=1 of the next start
    // must come only once the daemon has put it back.
    ns.ip_ok(&["link", "del", &bridge]);
    let watcher = {
        let systemd = systemd.try_clone().unwrap();
        let (ns_name, bridge) = (ns.name().to_string(), bridge.clone());
        std::thread::spawn(move || {
            let message = next_message(&systemd, Duration::from_secs(60));
            let bridge_up = Command::new(tool("ip"))
                .args(["-n", &ns_name, "link", "show", "dev", &bridge])
                .output()
                .is_ok_and(|o| o.status.success());
            (message, bridge_up)
        })
    };
    daemon.start_again();
    let (message, bridge_up) = watcher.join().unwrap();
    let message = message.expect("no READY=1 after the restart");
    assert!(message.contains("READY=1") && message.contains("1 of 1 networks active"), "{message}");
    assert!(bridge_up, "READY=1 came before the daemon had made bridge {bridge} again");
}

/// The paths the package must install (besides the man pages).
const INSTALLED: &[&str] = &[
    "./usr/bin/lanyard",
    "./usr/lib/systemd/system/lanyard.service",
    "./usr/lib/tmpfiles.d/lanyard.conf",
    "./etc/lanyard/lanyard.toml",
    "./usr/share/bash-completion/completions/lanyard",
    "./usr/share/zsh/vendor-completions/_lanyard",
    "./usr/share/fish/vendor_completions.d/lanyard.fish",
    "./usr/share/man/man1/lanyard.1.gz",
    "./usr/share/man/man1/lanyard-daemon.1.gz",
    "./usr/share/man/man1/lanyard-net-create.1.gz",
    "./usr/share/doc/lanyard/copyright",
    "./usr/share/doc/lanyard/openapi.json",
];

#[test]
fn the_debian_package_installs_binary_unit_man_pages_completions_and_ifup_links() {
    const NAME: &str = "the_debian_package_installs_binary_unit_man_pages_completions_and_ifup_links";
    let cargo_deb = which("cargo-deb").or_else(|| {
        let home = std::env::var_os("CARGO_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
        Some(home.join("bin/cargo-deb")).filter(|p| p.is_file())
    });
    let missing: Vec<&str> = [("cargo-deb", cargo_deb.is_some()), ("dpkg-deb", which("dpkg-deb").is_some())]
        .into_iter()
        .chain([("systemd-analyze", which("systemd-analyze").is_some())])
        .filter(|(_, found)| !found)
        .map(|(name, _)| name)
        .collect();
    if !missing.is_empty() {
        let why = format!("needs {} (scripts/setup installs them)", missing.join(", "));
        assert!(!require_privileged(), "{NAME} {why}, and {REQUIRE_ENV}=1 forbids skipping it");
        eprintln!("skipping {NAME}: {why}");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(dir) = cargo_deb.as_ref().and_then(|p| p.parent()) {
        path = std::env::join_paths(std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&path))).unwrap();
    }
    let build = run(
        Command::new(root.join("scripts/deb")).env("LANYARD_DEB_PROFILE", "dev").env("PATH", &path),
        Duration::from_secs(1200),
    );
    assert!(build.status.success(), "{}", describe("scripts/deb", &build));
    let deb = format!("target/debian/lanyard_{}-1_{}.deb", env!("CARGO_PKG_VERSION"), debian_arch());
    let deb = root.join(deb);
    assert!(deb.is_file(), "scripts/deb made no {}: {}", deb.display(), stdout(&build));

    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb), Duration::from_secs(60));
    let listing = stdout(&listing);
    let entries: Vec<&str> = listing.lines().filter_map(|l| l.split_whitespace().nth(5)).collect();
    for want in INSTALLED {
        assert!(entries.contains(want), "the package lacks {want}:\n{listing}");
    }
    for top in top_level_commands() {
        let page = format!("./usr/share/man/man1/lanyard-{top}.1.gz");
        assert!(entries.contains(&page.as_str()), "the package lacks {page}");
    }
    for link in ["lanyard-ifup", "lanyard-ifdown"] {
        let line = listing.lines().find(|l| l.contains(&format!("./usr/libexec/{link} "))).unwrap_or_default();
        assert!(
            line.starts_with('l') && line.ends_with("-> ../bin/lanyard"),
            "{link} is not a link to lanyard: {line:?}"
        );
    }

    // Unpacked (never installed), the unit is verified with ExecStart on
    // the unpacked binary and the man pages it names from the package.
    let dir = TempDir::new("deb");
    let x = run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dir.path()), Duration::from_secs(120));
    assert!(x.status.success(), "{}", describe("dpkg-deb -x", &x));
    let bin = dir.path().join("usr/bin/lanyard");
    let version = run(Command::new(&bin).arg("--version"), Duration::from_secs(30));
    assert!(stdout(&version).contains(env!("CARGO_PKG_VERSION")), "{}", describe("lanyard --version", &version));
    let unit_text = std::fs::read_to_string(dir.path().join("usr/lib/systemd/system/lanyard.service")).unwrap();
    for must in [
        "Type=notify",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "StateDirectory=lanyard",
        "RuntimeDirectory=lanyard",
        "--config /etc/lanyard/lanyard.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit_text.contains(must), "the unit lacks {must}");
    }
    let units = TempDir::new("unit");
    let unit = units.path().join("lanyard.service");
    std::fs::write(&unit, unit_text.replace("/usr/bin/lanyard", bin.to_str().unwrap())).unwrap();
    let mut verify = Command::new("systemd-analyze");
    verify.arg("verify");
    if which("man").is_some() {
        verify.env("MANPATH", dir.path().join("usr/share/man"));
    } else {
        verify.arg("--man=no");
    }
    let verified = run(verify.arg(&unit).current_dir(units.path()), Duration::from_secs(60));
    assert!(
        verified.status.success() && stderr(&verified).trim().is_empty(),
        "{}",
        describe("systemd-analyze verify", &verified)
    );
}

/// dpkg's name for this machine's architecture.
fn debian_arch() -> String {
    let o = run(Command::new("dpkg").arg("--print-architecture"), Duration::from_secs(30));
    stdout(&o).trim().to_string()
}

/// The top-level commands, from the clap definition.
fn top_level_commands() -> Vec<String> {
    use clap::CommandFactory;
    lanyard::cli::Cli::command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name().to_string())
        .collect()
}
