//! `lanyard import libvirt` on XML that libvirt itself ships: the
//! `default.xml` of Debian's libvirt-daemon-config-network, fetched at
//! test time (`apt-get download` + `dpkg -x` into a temporary directory,
//! never installed, never committed) and imported into a daemon in a
//! namespace. Skips with a message when the package cannot be fetched;
//! fails then under LANYARD_REQUIRE_PRIVILEGED=1. Needs root; see
//! `common::privileged`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

/// libvirt's default.xml from Debian's package, or why it is not there.
fn libvirt_default_xml(dir: &TempDir) -> Result<PathBuf, String> {
    // apt-get download writes only the .deb, into its working directory.
    let mut get = std::process::Command::new(tool("apt-get"));
    get.args(["download", "-q", "libvirt-daemon-config-network"]).current_dir(dir.path());
    let o = run(&mut get, Duration::from_secs(180));
    if !o.status.success() {
        return Err(format!("apt-get download libvirt-daemon-config-network failed: {}", stderr(&o)));
    }
    let deb = std::fs::read_dir(dir.path())
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or("apt-get download left no .deb")?;
    let root = dir.path().join("x");
    let o = run(std::process::Command::new(tool("dpkg")).arg("-x").arg(&deb).arg(&root), Duration::from_secs(60));
    if !o.status.success() {
        return Err(format!("dpkg -x {} failed: {}", deb.display(), stderr(&o)));
    }
    let xml = root.join("usr/share/libvirt/networks/default.xml");
    xml.is_file()
        .then_some(xml)
        .ok_or_else(|| format!("the package has no {}", "usr/share/libvirt/networks/default.xml"))
}

#[test]
fn libvirts_default_network_imports() {
    if !privileged("libvirts_default_network_imports", &["ip", "nft", "kill", "apt-get", "dpkg"]) {
        return;
    }
    let dir = TempDir::new("libvirt");
    let xml = match libvirt_default_xml(&dir) {
        Ok(x) => x,
        Err(why) if require_privileged() => panic!("libvirt's default.xml is needed ({REQUIRE_ENV}=1): {why}"),
        Err(why) => {
            eprintln!("skipping libvirts_default_network_imports: {why}");
            return;
        }
    };
    let host = Host::start();
    let xml = xml.display().to_string();
    let v = host.cli_json(&["import", "libvirt", &xml]);
    let net = &v["network"];
    assert_eq!(net["name"], "default", "{v}");
    assert_eq!(net["mode"], "nat", "libvirt's <forward/> is NAT: {v}");
    assert_eq!(net["subnet"], "192.168.122.0/24", "{v}");
    assert_eq!(net["gateway"], "192.168.122.1", "{v}");
    assert_eq!(net["bridge"], "virbr0", "{v}");
    assert_eq!(net["state"], "active", "{v}");
    assert_eq!(net["dhcp_range"]["first"], "192.168.122.2", "{v}");
    assert_eq!(net["dhcp_range"]["last"], "192.168.122.254", "{v}");
    assert_eq!(v["hosts"], serde_json::json!([]), "{v}");
    let shown = host.cli_json(&["net", "show", "default"]);
    assert_eq!(shown["dhcp_range"], net["dhcp_range"], "net show after the import: {shown}");
    assert_eq!(host.ns.ipv4_addrs("virbr0"), vec!["192.168.122.1/24".to_string()], "the bridge's address");

    // Importing it again is a conflict that changes nothing.
    let again = host.cli(&["import", "libvirt", &xml]);
    assert_eq!(again.status.code(), Some(4), "second import: {}", stderr(&again));
    assert_eq!(stderr(&again).trim().lines().count(), 1, "one line: {}", stderr(&again));
}

#[test]
fn static_hosts_come_along_and_unsupported_elements_are_listed() {
    if !privileged("static_hosts_come_along_and_unsupported_elements_are_listed", &["ip", "nft", "kill"]) {
        return;
    }
    let dir = TempDir::new("libvirt-hosts");
    let host = Host::start();
    let good = dir.path().join("lab.xml");
    std::fs::write(
        &good,
        "<network><name>lab</name><forward mode='route'/><mac address='52:54:00:01:02:03'/>\
         <ip address='10.50.0.1' prefix='24'><dhcp><range start='10.50.0.100' end='10.50.0.199'/>\
         <host mac='52:54:00:00:50:01' ip='10.50.0.11' name='db'/><host mac='52:54:00:00:50:02' ip='10.50.0.12'/>\
         </dhcp></ip></network>",
    )
    .unwrap();
    let out = host.cli(&["import", "libvirt", &good.display().to_string()]);
    assert!(out.status.success(), "import: {}", stderr(&out));
    assert!(stdout(&out).contains("2 static hosts"), "{}", stdout(&out));
    assert!(stderr(&out).contains("warning: ignored <mac address='52:54:00:01:02:03'>"), "{}", stderr(&out));
    let hosts = host.cli_json(&["net", "host", "list", "lab"]);
    assert_eq!(hosts[0]["name"], "db", "{hosts}");
    assert_eq!(hosts[1]["ip"], "10.50.0.12", "{hosts}");

    // Meaning-changing elements: refused, listed in one line, nothing made.
    let bad = dir.path().join("v6.xml");
    std::fs::write(
        &bad,
        "<network><name>v6</name><forward mode='nat' dev='eth0'/><dns><txt name='x' value='y'/></dns>\
         <ip address='10.51.0.1' prefix='24'/><ip family='ipv6' address='fd00::1' prefix='64'/></network>",
    )
    .unwrap();
    let nets = host.cli_json(&["net", "list", "--all"]);
    let out = host.cli(&["import", "libvirt", &bad.display().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    for want in ["dev='eth0'", "<dns><txt>", "ipv6"] {
        assert!(err.contains(want), "{want} missing in: {err}");
    }
    assert_eq!(host.cli_json(&["net", "list", "--all"]), nets, "a refused import changed the networks");

    // A host lanyard refuses (outside the subnet): the network goes too.
    let half = dir.path().join("half.xml");
    std::fs::write(
        &half,
        "<network><name>half</name><ip address='10.52.0.1' prefix='24'><dhcp>\
         <host mac='52:54:00:00:52:01' ip='10.99.0.5'/></dhcp></ip></network>",
    )
    .unwrap();
    let out = host.cli(&["import", "libvirt", &half.display().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not kept"), "{}", stderr(&out));
    assert_eq!(host.cli_json(&["net", "list", "--all"]), nets, "a half import left a network");
}
