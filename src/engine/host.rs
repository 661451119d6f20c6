//! The host facts the engine reads besides the kernel: which network
//! namespaces exist, which resolvers the host uses, what time it is. Behind
//! a trait, so the engine runs against fakes in unit tests.

use std::path::Path;

/// Where `ip netns` keeps named network namespaces (the ones `--netns` names).
pub const NETNS_DIR: &str = "/run/netns";

/// What the engine asks of the host.
pub trait Host: Send + Sync {
    /// Whether a named network namespace exists.
    fn netns_exists(&self, name: &str) -> bool;
    /// The host's resolv.conf text (empty when unreadable).
    fn resolv_conf(&self) -> String;
    /// Seconds since the epoch.
    fn now(&self) -> u64;
}

/// The real host.
#[derive(Debug, Default)]
pub struct SystemHost;

impl Host for SystemHost {
    fn netns_exists(&self, name: &str) -> bool {
        Path::new(NETNS_DIR).join(name).exists()
    }

    fn resolv_conf(&self) -> String {
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
    }

    fn now(&self) -> u64 {
        crate::dhcp::server::now()
    }
}

/// A host for tests: namespaces listed by hand, a fixed clock.
#[derive(Debug, Default)]
pub struct FakeHost {
    /// Namespaces that exist.
    pub netns: std::sync::Mutex<Vec<String>>,
    /// The clock.
    pub time: u64,
}

impl Host for FakeHost {
    fn netns_exists(&self, name: &str) -> bool {
        self.netns.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|n| n == name)
    }

    fn resolv_conf(&self) -> String {
        String::new()
    }

    fn now(&self) -> u64 {
        self.time
    }
}
