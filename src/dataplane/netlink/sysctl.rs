//! net.ipv4.ip_forward of the driver's network namespace: the one setting
//! lanyard changes that is not a netlink object.
//!
//! Files under /proc/sys/net belong to the network namespace of the thread
//! that opens them (unlike /proc/net, which follows the process), so the
//! driver reads and writes the namespace it runs in, as its socket does.

use crate::kernel::KernelError;

/// The sysctl, as a file.
pub const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Whether the namespace forwards IPv4.
pub fn ip_forward() -> Result<bool, KernelError> {
    let text = std::fs::read_to_string(IP_FORWARD)
        .map_err(|e| KernelError::Observe { what: "net.ipv4.ip_forward", message: e.to_string() })?;
    Ok(text.trim() != "0")
}

/// Turns IPv4 forwarding of the namespace on or off.
pub fn set_ip_forward(on: bool) -> std::io::Result<()> {
    std::fs::write(IP_FORWARD, if on { "1\n" } else { "0\n" })
}
