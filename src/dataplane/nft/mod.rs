//! The in-process nftables driver: lanyard's table through libnftables
//! (loaded at run time, no `nft` process per change).
//!
//! - [`ffi`]: libnftables loaded with `dlopen`, one safe [`ffi::Context`].

pub mod ffi;
