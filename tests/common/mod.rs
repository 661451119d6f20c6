//! Harness for lanyard's privileged integration tests.
//!
//! Everything a test does happens inside network namespaces it creates
//! (`ip netns add`, names unique per process and call) and in a temporary
//! directory; every resource is a guard that cleans up in `Drop`, also when
//! the test panics. Nothing here touches the root network namespace: links,
//! addresses, routes and nft rules are only ever created with `ip -n NS` or
//! `ip netns exec NS`.
//!
//! Privilege: tests call [`privileged`] first. Without root (or without a
//! needed tool) they print why and return, so plain `cargo test` passes for
//! anyone; with `LANYARD_REQUIRE_PRIVILEGED=1` (CI, which is root) the same
//! situation is a failure instead of a silent skip.
//!
//! One file per concern, all re-exported here (tests `use common::*;`):
//!
//! | file | what it owns |
//! | --- | --- |
//! | `privilege.rs` | root, tools, the skip rule |
//! | `process.rs` | commands with time limits, signals, polling, temp dirs, unique names |
//! | `netns.rs` | [`Netns`], the namespace guard, and what `ip`/`nft`/sysctl show in it |
//! | `daemon.rs` | [`Daemon`]: start, stop, restart, the CLI |
//! | `etcd.rs` | [`Etcd`]: an etcd in a test namespace, for cluster tests |
//! | `capture.rs` | [`Capture`]: tcpdump in a test namespace |
//! | `topology.rs` | [`Host`], [`Vm`], outsides, hand-made bridge ports, and [`Topology`], the one builder of host + outsides + networks + VMs |
//! | `dhcp_clients.rs` | [`udhcpc`], [`dhclient`], [`DhcpLease`] |
//! | `dhcp_storm.rs` | [`Storm`]: thousands of DHCP clients from one namespace, every ACK recorded |
//! | `probes.rs` | [`ping`], [`PingJob`], [`dig`], [`Dnsmasq`], parsing helpers |
//! | `echo.rs` | [`EchoServer`] and [`ask`]: who answers, and whom it saw |
//!
//! Only std, serde_json and libc (setns, for the storm's one thread) are used.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

mod capture;
mod daemon;
mod dhcp_clients;
mod dhcp_storm;
mod echo;
mod etcd;
mod netns;
mod privilege;
mod probes;
mod process;
mod topology;

// A test binary that uses nothing from one of them would warn here.
#[allow(unused_imports)]
pub use {
    capture::*, daemon::*, dhcp_clients::*, dhcp_storm::*, echo::*, etcd::*, netns::*, privilege::*, probes::*,
    process::*, topology::*,
};
