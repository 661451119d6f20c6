//! `lanyard port config ID --format cloud-init`: the NoCloud data of a
//! port on a nat network, printed, as JSON, and as a `cidata` seed ISO
//! that an independent reader (`isoinfo` from genisoimage, `blkid` from
//! util-linux, as cloud-init itself finds the seed) must read back with
//! the exact file names and contents. Needs root; see `common::privileged`.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const NET: &str = "ci";
const SUBNET: &str = "10.77.0.0/24";
const MAC: &str = "52:54:00:12:34:56";
const IP: &str = "10.77.0.9";
const TOOLS: &[&str] = &["ip", "isoinfo", "blkid"];

/// The network-config lanyard must generate for the test's port.
fn expected_network_config() -> String {
    format!(
        r#"version: 2
ethernets:
  eth0:
    match:
      macaddress: "{MAC}"
    set-name: "eth0"
    addresses:
      - "{IP}/24"
    routes:
      - to: "0.0.0.0/0"
        via: "10.77.0.1"
    nameservers:
      addresses:
        - "10.77.0.1"
      search:
        - "lab.test"
    mtu: 1400
"#
    )
}

fn expected_meta_data(id: &str) -> String {
    format!("instance-id: \"lanyard-{id}\"\nlocal-hostname: \"guest1\"\n")
}

/// Runs `isoinfo -i ISO ARGS`, which must succeed.
fn isoinfo(iso: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(tool("isoinfo"));
    cmd.arg("-i").arg(iso).args(args);
    let o = run(&mut cmd, Duration::from_secs(30));
    assert!(o.status.success(), "{}", describe(&format!("isoinfo {}", args.join(" ")), &o));
    stdout(&o)
}

/// The file names `isoinfo -l` lists in the root directory (`.` and `..` left out).
fn listed(listing: &str) -> Vec<String> {
    let mut names: Vec<String> = listing
        .lines()
        .filter(|l| l.starts_with('-') || l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().last().map(String::from))
        .filter(|n| n != "." && n != "..")
        .collect();
    names.sort();
    names
}

/// Exit code 0 is refused here: the command must fail with `code` and
/// exactly one `error:` line that contains `says`, and print nothing.
fn refused(o: &Output, code: i32, says: &str, what: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "{what}: {}", describe("lanyard", o));
    assert_eq!(err.lines().count(), 1, "{what}: one line on stderr: {err:?}");
    assert!(err.starts_with("error: ") && err.contains(says), "{what}: {err:?} does not say {says:?}");
    assert!(o.stdout.is_empty(), "{what}: printed {:?}", stdout(o));
}

#[test]
fn port_config_writes_a_cidata_seed_that_isoinfo_reads() {
    if !privileged("port_config_writes_a_cidata_seed_that_isoinfo_reads", TOOLS) {
        return;
    }
    let host = Host::start();
    host.cli_json(&[
        "net", "create", NET, "--mode", "nat", "--subnet", SUBNET, "--mtu", "1400", "--domain", "lab.test",
    ]);
    let port = host.cli_json(&["port", "create", "--net", NET, "--vm", "guest1", "--mac", MAC, "--ip", IP]);
    let id = port["id"].as_str().expect("port id").to_string();

    // Printed: the two files under their headers.
    let text = host.cli_ok(&["port", "config", &id, "--format", "cloud-init"]);
    assert_eq!(
        text,
        format!("# network-config\n{}\n# meta-data\n{}", expected_network_config(), expected_meta_data(&id))
    );
    // JSON: the three files.
    let v = host.cli_json(&["port", "config", &id, "--format", "cloud-init"]);
    assert_eq!(v["network_config"], expected_network_config(), "{v}");
    assert_eq!(v["meta_data"], expected_meta_data(&id), "{v}");
    assert_eq!(v["user_data"], "#cloud-config\n{}\n", "{v}");

    // The seed ISO, read by genisoimage's isoinfo.
    let tmp = TempDir::new("seed");
    let iso = tmp.path().join("seed.iso");
    let iso_arg = iso.to_str().expect("a UTF-8 path");
    let said = host.cli_ok(&["port", "config", &id, "--format", "cloud-init", "--iso", iso_arg]);
    assert!(said.contains(iso_arg) && said.contains("cidata"), "{said}");
    let info = isoinfo(&iso, &["-d"]);
    assert!(info.lines().any(|l| l.trim() == "Volume id: cidata"), "{info}");
    assert!(info.contains("Rock Ridge signatures version 1 found"), "{info}");
    assert!(info.contains("Joliet with UCS level 3 found"), "{info}");
    let files = ["meta-data", "network-config", "user-data"];
    let rock = isoinfo(&iso, &["-R", "-l"]);
    assert_eq!(listed(&rock), files, "Rock Ridge names:\n{rock}");
    assert!(
        rock.lines().filter(|l| l.starts_with('-')).all(|l| l.starts_with("-r--r--r--")),
        "files are read-only for all:\n{rock}"
    );
    let joliet = isoinfo(&iso, &["-J", "-l"]);
    assert_eq!(listed(&joliet), files, "Joliet names:\n{joliet}");
    for (flag, name, want) in [
        ("-R", "/meta-data", expected_meta_data(&id)),
        ("-R", "/network-config", expected_network_config()),
        ("-R", "/user-data", "#cloud-config\n{}\n".to_string()),
        ("-J", "/meta-data", expected_meta_data(&id)),
        ("-J", "/network-config", expected_network_config()),
        ("-J", "/user-data", "#cloud-config\n{}\n".to_string()),
    ] {
        assert_eq!(isoinfo(&iso, &[flag, "-x", name]), want, "isoinfo {flag} -x {name}");
    }
    // How cloud-init finds the seed: by its label.
    let mut cmd = Command::new(tool("blkid"));
    cmd.args(["-p", "-o", "export"]).arg(&iso);
    let o = run(&mut cmd, Duration::from_secs(30));
    let probe = stdout(&o);
    assert!(probe.lines().any(|l| l == "LABEL=cidata"), "{}", describe("blkid", &o));
    assert!(probe.lines().any(|l| l == "TYPE=iso9660"), "{}", describe("blkid", &o));

    // An existing file is kept unless --force.
    fs::write(&iso, b"not a seed").expect("overwrite the seed");
    let o = host.cli(&["port", "config", &id, "--format", "cloud-init", "--iso", iso_arg]);
    refused(&o, 4, "already exists; give --force to overwrite it", "--iso onto an existing file");
    assert_eq!(fs::read(&iso).expect("the file"), b"not a seed");
    host.cli_ok(&["port", "config", &id, "--format", "cloud-init", "--iso", iso_arg, "--force"]);
    assert_eq!(isoinfo(&iso, &["-R", "-x", "/meta-data"]), expected_meta_data(&id));

    // Unknown port, unknown format: one line each, nothing written.
    let other = tmp.path().join("other.iso");
    let other_arg = other.to_str().expect("a UTF-8 path");
    let o = host.cli(&["port", "config", "0badc0de", "--format", "cloud-init", "--iso", other_arg]);
    refused(&o, 3, "no port with id \"0badc0de\"", "unknown port");
    let o = host.cli(&["port", "config", &id, "--format", "ignition", "--iso", other_arg]);
    refused(&o, 2, "invalid format \"ignition\": the supported format is cloud-init", "unknown format");
    let o = host.cli(&["port", "config", &id, "--format", "cloud-init&x=1", "--iso", other_arg]);
    refused(&o, 2, "invalid format \"cloud-init&x=1\"", "a format that is not one query value");
    assert!(!other.exists(), "a refused request wrote {}", other.display());
}
