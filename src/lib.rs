//! lanyard: virtual networks for virtual machines on Linux hosts.
//!
//! The layers, from the user down to the kernel:
//! - [`cli`]: the command line and its client of the daemon's API;
//! - [`api`]: the daemon's REST API on a unix socket;
//! - [`engine`]: the control plane that validates, plans, applies, stores;
//! - [`model`]: networks, ports, leases and their validation;
//! - [`store`]: persistence behind a trait (embedded SQLite by default);
//! - [`ipam`]: who holds which address;
//! - [`planner`]: pure desired-state -> kernel-operations planning;
//! - [`kernel`]: the vocabulary planner and drivers share (ops, observed
//!   state, the typed firewall) and the driver trait;
//! - [`dataplane`]: the drivers that change the kernel;
//! - [`dhcp`]: the built-in DHCPv4 server;
//! - [`dns`]: the built-in DNS server for guest names;
//! - [`cloudinit`]: a port's cloud-init (NoCloud) data and its seed ISO;
//! - [`vlan_manager`]: nova's VLAN manager: its configuration and the choice
//!   of a project's VLAN and subnet;
//! - [`daemon`]: process start-up and shutdown;
//! - [`metrics`]: the daemon's counters and its Prometheus exposition;
//! - [`fault`]: crash points for the crash-safety tests (debug builds only).
#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod cli;
pub mod cloudinit;
pub mod daemon;
pub mod dataplane;
pub mod dhcp;
pub mod dns;
pub mod engine;
pub mod fault;
pub mod ipam;
pub mod kernel;
pub mod libvirt;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod planner;
pub mod store;
pub mod vlan_manager;
pub mod web;
