//! Drivers: the only code that changes the kernel. Each implements
//! [`crate::kernel::Kernel`] for the network namespace the daemon runs in.
//!
//! - [`linux`]: the Linux driver, [`netlink`] and [`nft`] together, and the
//!   monitors that report what changes under lanyard;
//! - [`netlink`]: links, addresses, routes, bridge VLANs and FDB entries
//!   by lanyard's own netlink socket, and a monitor of their changes;
//! - [`tun`]: TAP creation through `/dev/net/tun` (where the driver's
//!   `unsafe` is);
//! - [`nft`]: the in-process nftables driver (libnftables) and monitor;
//! - [`conntrack`]: removing tracked flows of an address (ctnetlink);
//! - [`arp`]: gratuitous ARP announcements;
//! - [`fake`]: a simulated kernel for unit tests.

pub mod arp;
pub mod conntrack;
pub mod fake;
pub mod linux;
pub mod netlink;
pub mod nft;
pub mod tun;
