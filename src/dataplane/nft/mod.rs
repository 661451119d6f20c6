//! The in-process nftables driver: lanyard's table through libnftables
//! (loaded at run time, no `nft` process per change), and a monitor of
//! nf_tables notifications.
//!
//! - [`ffi`]: libnftables loaded with `dlopen`, one safe [`ffi::Context`];
//! - [`NftDriver`]: the table's fingerprint, a set's elements, and every
//!   [`crate::kernel::FirewallChange`] as one transaction;
//! - `script`: the nft command text of each change;
//! - `elements`: nftables JSON listings read into typed elements;
//! - `table_query`: a table's comment (the fingerprint) with one
//!   NFT_MSG_GETTABLE request;
//! - [`NftMonitor`]: nf_tables notifications as
//!   [`crate::kernel::KernelEvent`]s;
//! - `messages`: the nf_tables netlink messages read and written by hand;
//! - `socket`: the NETLINK_NETFILTER socket they travel on;
//! - [`coexist`]: other tools' forward chains and Docker's DOCKER-USER.

pub mod coexist;
mod driver;
mod elements;
pub mod ffi;
pub(crate) mod messages;
mod monitor;
mod script;
pub(crate) mod socket;
mod table_query;

pub use driver::NftDriver;
pub use monitor::NftMonitor;
