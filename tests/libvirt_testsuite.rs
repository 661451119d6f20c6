//! `lanyard import libvirt`'s parser on the network XML of libvirt's own
//! test suite (`tests/networkxml2xmlin/` of Debian's libvirt source
//! package), fetched at test time with a throw-away deb-src list and apt
//! state of its own (the system's apt configuration and caches are not
//! touched) and never committed. Every file is either imported or
//! refused with the list of what lanyard cannot do: never a panic, never
//! "not a libvirt network". Skips with a message when the source cannot be
//! fetched; fails then under LANYARD_REQUIRE_PRIVILEGED=1.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use lanyard::libvirt::{parse_network, ImportError, Imported};

/// `apt-get` with every state and configuration path under `dir`.
fn apt(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(tool("apt-get"));
    c.arg("-q")
        .arg("-o")
        .arg("Dir::Etc::SourceList=/dev/null")
        .arg("-o")
        .arg(format!("Dir::Etc::SourceParts={}", dir.join("parts").display()))
        .arg("-o")
        .arg(format!("Dir::State::Lists={}", dir.join("lists").display()))
        .arg("-o")
        .arg(format!("Dir::Cache={}", dir.join("cache").display()))
        .args(args)
        .current_dir(dir);
    c
}

/// The directory of libvirt's networkxml2xmlin files, or why not.
fn fetch(dir: &Path) -> Result<PathBuf, String> {
    for d in ["parts", "lists/partial", "cache/archives/partial", "src"] {
        std::fs::create_dir_all(dir.join(d)).map_err(|e| e.to_string())?;
    }
    // The mirror the system's own Debian sources use.
    let system = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    let uri = system
        .lines()
        .filter_map(|l| l.strip_prefix("URIs:"))
        .map(str::trim)
        .find(|u| u.ends_with("/debian"))
        .unwrap_or("http://deb.debian.org/debian")
        .to_string();
    let suite = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME=").map(str::to_string))
        .unwrap_or_else(|| "bookworm".into());
    std::fs::write(
        dir.join("parts/src.sources"),
        format!(
            "Types: deb-src\nURIs: {uri}\nSuites: {suite}\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    for args in [&["update"][..], &["source", "--download-only", "libvirt"][..]] {
        let o = run(&mut apt(dir, args), Duration::from_secs(300));
        if !o.status.success() {
            return Err(format!("apt-get {} failed: {}", args.join(" "), stderr(&o)));
        }
    }
    let orig = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains(".orig.tar.") && !n.ends_with(".asc"))
        })
        .ok_or("apt-get source left no .orig tarball")?;
    let o = run(
        Command::new(tool("tar"))
            .arg("xf")
            .arg(&orig)
            .arg("-C")
            .arg(dir.join("src"))
            .args(["--wildcards", "*/tests/networkxml2xmlin/*"]),
        Duration::from_secs(120),
    );
    if !o.status.success() {
        return Err(format!("tar of {} failed: {}", orig.display(), stderr(&o)));
    }
    let top = std::fs::read_dir(dir.join("src"))
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .next()
        .ok_or("empty tarball")?;
    Ok(top.path().join("tests/networkxml2xmlin"))
}

#[test]
fn libvirts_own_network_xml_is_imported_or_refused_with_reasons() {
    if !privileged("libvirts_own_network_xml_is_imported_or_refused_with_reasons", &["apt-get", "tar"]) {
        return;
    }
    let dir = TempDir::new("libvirt-src");
    let xmls = match fetch(dir.path()) {
        Ok(x) => x,
        Err(why) if require_privileged() => panic!("libvirt's test XML is needed ({REQUIRE_ENV}=1): {why}"),
        Err(why) => {
            eprintln!("skipping libvirts_own_network_xml_is_imported_or_refused_with_reasons: {why}");
            return;
        }
    };
    let mut results: BTreeMap<String, Result<Imported, ImportError>> = BTreeMap::new();
    for e in std::fs::read_dir(&xmls).unwrap_or_else(|e| panic!("{}: {e}", xmls.display())).filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(text) = std::fs::read_to_string(e.path()) {
            results.insert(name, parse_network(&text));
        }
    }
    assert!(results.len() >= 30, "only {} files in {}", results.len(), xmls.display());
    let mut report = String::new();
    for (name, r) in &results {
        match r {
            Ok(i) => {
                report.push_str(&format!("{name}: {} {} ({} hosts)\n", i.network.mode, i.network.subnet, i.hosts.len()))
            }
            Err(e) => report.push_str(&format!("{name}: {e}\n")),
        }
        assert!(!matches!(r, Err(ImportError::Xml(_))), "{name}: libvirt's own XML read as not a network: {r:?}");
    }
    eprintln!("{report}");
    let ok =
        |n: &str| results.get(n).and_then(|r| r.as_ref().ok()).unwrap_or_else(|| panic!("{n} not imported:\n{report}"));
    let refused = |n: &str, why: &str| match results.get(n) {
        Some(Err(ImportError::Unsupported { items, .. })) => {
            assert!(items.iter().any(|i| i.contains(why)), "{n}: {why} not among {items:?}")
        }
        other => panic!("{n} should be refused for {why}: {other:?}"),
    };
    EXPECT_OK.iter().for_each(|(n, mode)| assert_eq!(ok(n).network.mode, *mode, "{n}"));
    EXPECT_REFUSED.iter().for_each(|(n, why)| refused(n, why));
}

/// Files lanyard imports, with the mode they get.
const EXPECT_OK: &[(&str, &str)] = &[
    ("isolated-network.xml", "host-only"),
    ("set-mtu.xml", "host-only"),
    ("open-network.xml", "open"),
    ("direct-net.xml", "bridge"),
];
/// Files lanyard refuses, with one reason each.
const EXPECT_REFUSED: &[(&str, &str)] = &[
    ("routed-network.xml", "<forward dev='eth1'>"),
    ("nat-network.xml", "ipv6"),
    ("netboot-network.xml", "<tftp>"),
    ("host-bridge-net.xml", "a host bridge made elsewhere"),
    ("nat-network-dns-hosts.xml", "<dns><host>"),
    ("nat-network-forward-nat-address.xml", "<address>"),
    ("bandwidth-network.xml", "<bandwidth>"),
    ("vepa-net.xml", "mode='vepa'"),
    ("hostdev.xml", "mode='hostdev'"),
    ("passthrough-pf.xml", "mode='passthrough'"),
];
