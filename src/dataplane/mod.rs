//! Drivers: the only code that changes the kernel. Each implements
//! [`crate::kernel::Kernel`] for the network namespace the daemon runs in.
//!
//! - [`linux`]: the Linux driver;
//! - [`tun`]: TAP creation through `/dev/net/tun` (the driver's `unsafe`);
//! - [`fake`]: a simulated kernel for unit tests.

pub mod fake;
pub mod linux;
pub mod tun;
