//! Crash points, for the tests that kill the daemon at every step of every
//! operation and check that a restart converges with nothing lost.
//!
//! `LANYARD_CRASH_AT=NAME#N` makes the N-th time the daemon passes the point
//! `NAME` kill the process with SIGKILL, as a power cut or the OOM killer
//! would: no destructor, no flush. Points count only once the daemon has
//! started and serves ([`arm`]), so the count is the same whatever the
//! start-up reconcile did. Compiled only into debug builds (the ones tests
//! run); in release builds [`point`] is empty.
//!
//! Points: `kernel-op` before each kernel operation of a plan,
//! `kernel-firewall` before a firewall change, `store` before a mutation's
//! store write, `memory` after it and before memory changes, `lease-commit`
//! before a lease batch is written, `lease-reply` after it is written and
//! before replies go out.

/// The environment variable that arms a crash point.
pub const CRASH_AT_ENV: &str = "LANYARD_CRASH_AT";

#[cfg(debug_assertions)]
mod armed {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::OnceLock;

    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    static ARMED: AtomicBool = AtomicBool::new(false);

    pub fn arm() {
        ARMED.store(true, Ordering::SeqCst);
    }

    fn target() -> &'static Option<(String, u64)> {
        TARGET.get_or_init(|| {
            let v = std::env::var(super::CRASH_AT_ENV).ok()?;
            let (name, n) = v.split_once('#')?;
            Some((name.to_string(), n.parse().ok()?))
        })
    }

    pub fn point(name: &str) {
        let Some((want, n)) = target() else { return };
        if want != name || !ARMED.load(Ordering::SeqCst) {
            return;
        }
        if HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            eprintln!("lanyard: crash point {name}#{n} reached: SIGKILL");
            // SAFETY: kill(2) on our own pid with a constant signal number
            // has no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}

/// Passes the crash point `name` (see the module documentation).
#[cfg(debug_assertions)]
pub fn point(name: &str) {
    armed::point(name);
}

/// From now on crash points count (the daemon serves).
#[cfg(debug_assertions)]
pub fn arm() {
    armed::arm();
}

/// From now on crash points count: nothing in release builds.
#[cfg(not(debug_assertions))]
pub fn arm() {}

/// Passes the crash point `name`: nothing in release builds.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn point(_name: &str) {}
