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
    /// Whether the host booted since the daemon last started, if known:
    /// autostart applies at boot, not at every daemon restart.
    fn booted(&self) -> Option<bool> {
        None
    }
    /// Whether namespace `ns` has an interface named `ifname` (a veth
    /// peer of that name could not move there).
    fn netns_has_link(&self, _ns: &str, _ifname: &str) -> bool {
        false
    }
    /// Whether the user (`what` = "owner") or group (`what` = "group")
    /// `name` exists; digits count as an id, as `ip tuntap` takes them.
    fn account_exists(&self, _what: &str, _name: &str) -> bool {
        true
    }
}

/// The real host.
#[derive(Debug, Default)]
pub struct SystemHost {
    /// Whether the host booted since the daemon last started (the daemon
    /// compares the kernel's boot id with the one it stored), if known.
    pub booted: Option<bool>,
}

impl Host for SystemHost {
    fn booted(&self) -> Option<bool> {
        self.booted
    }

    fn netns_exists(&self, name: &str) -> bool {
        Path::new(&crate::model::netns_path(name)).exists()
    }

    fn resolv_conf(&self) -> String {
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
    }

    fn now(&self) -> u64 {
        crate::dhcp::server::now()
    }

    fn netns_has_link(&self, ns: &str, ifname: &str) -> bool {
        use std::os::fd::AsRawFd;
        let (Ok(file), Ok(name)) = (std::fs::File::open(crate::model::netns_path(ns)), std::ffi::CString::new(ifname))
        else {
            return false;
        };
        // A thread of its own enters the namespace and ends there: the
        // daemon's threads stay in theirs.
        std::thread::spawn(move || {
            // SAFETY: setns takes an open namespace file descriptor, which
            // `file` keeps open for the call; it changes only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return false;
            }
            // SAFETY: `name` is a NUL-terminated string that outlives the call.
            unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
        })
        .join()
        .unwrap_or(false)
    }

    fn account_exists(&self, what: &str, name: &str) -> bool {
        match what {
            "owner" => crate::dataplane::tun::user_id(name).is_ok(),
            _ => crate::dataplane::tun::group_id(name).is_ok(),
        }
    }
}

/// A host for tests: namespaces listed by hand, a fixed clock.
#[derive(Debug, Default)]
pub struct FakeHost {
    /// Namespaces that exist.
    pub netns: std::sync::Mutex<Vec<String>>,
    /// The clock.
    pub time: u64,
    /// What [`Host::booted`] says.
    pub booted: Option<bool>,
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

    fn booted(&self) -> Option<bool> {
        self.booted
    }
}
