//! The in-process nftables driver: lanyard's table through libnftables
//! (loaded at run time, no `nft` process per change), and a monitor of
//! nf_tables notifications.
//!
//! - [`ffi`]: libnftables loaded with `dlopen`, one safe [`ffi::Context`];
//! - [`NftDriver`]: the table's fingerprint, a set's elements, and every
//!   [`crate::kernel::FirewallChange`] as one transaction;
//! - `script`: the nft command text of each change;
//! - `elements`: nftables JSON listings read into typed elements;
//! - [`NftMonitor`] and `messages`: nf_tables notifications as
//!   [`crate::kernel::KernelEvent`]s.

mod driver;
mod elements;
pub mod ffi;
mod messages;
mod monitor;
mod script;

pub use driver::NftDriver;
pub use monitor::NftMonitor;
