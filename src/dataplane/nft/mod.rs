//! The in-process nftables driver: lanyard's table through libnftables
//! (loaded at run time, no `nft` process per change).
//!
//! - [`ffi`]: libnftables loaded with `dlopen`, one safe [`ffi::Context`];
//! - [`NftDriver`]: the table's fingerprint, a set's elements, and every
//!   [`crate::kernel::FirewallChange`] as one transaction;
//! - `script`: the nft command text of each change;
//! - `elements`: nftables JSON listings read into typed elements.

mod driver;
mod elements;
pub mod ffi;
mod script;

pub use driver::NftDriver;
