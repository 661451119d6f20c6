//! The QEMU lab in lab-host mode: boots Debian's cloud kernel under TCG
//! (this machine's kernel lacks 802.1Q and bridge VLAN filtering) with the
//! lanyard binary inside and runs `lab/smoke.sh` there: veth, an 802.1Q
//! device, a vlan_filtering bridge with a VLAN on a port and a tagged ping
//! across it, nftables nat/masquerade/ct/reject, vxlan, `lanyard --version`.
//!
//! Needs root and a lab (`lab/setup`, which this test runs: it installs
//! qemu & co and caches the kernel and images); otherwise skips, or fails
//! with LANYARD_REQUIRE_PRIVILEGED=1. Nothing touches the host's network:
//! the VM has no network device at all.

mod common;
mod lab_support;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{run, stderr, stdout, LANYARD};
use lab_support::{lab_dir, ready};

#[test]
fn lab_host_smoke() {
    if !ready("lab_host_smoke", &[]) {
        return;
    }
    let started = Instant::now();
    let o = run(
        Command::new(lab_dir().join("host-run"))
            .arg(lab_dir().join("smoke.sh"))
            .env("LANYARD_BIN", LANYARD)
            .env("LAB_TIMEOUT", "300"),
        Duration::from_secs(360),
    );
    let (out, err) = (stdout(&o), stderr(&o));
    eprintln!(
        "lab/host-run lab/smoke.sh: {} in {:.1} s\n{}",
        o.status,
        started.elapsed().as_secs_f64(),
        err.trim_end()
    );
    let result = out.lines().map(|l| l.trim_end_matches('\r')).rfind(|l| l.starts_with("LAB-RESULT: "));
    assert!(
        o.status.success() && result == Some("LAB-RESULT: PASS"),
        "lab smoke test did not pass (exit {}, result {result:?}); console:\n{out}\n--- host-run ---\n{err}",
        o.status
    );
    for step in [
        "vlan_filtering bridge ok",
        "tagged ping through vlan_filtering bridge ok",
        "nftables ok",
        "vxlan ok",
        "lanyard runs",
    ] {
        assert!(out.contains(step), "smoke step `{step}` missing from the console:\n{out}");
    }
}
