//! The loop that keeps lanyard's kernel objects as the store says: monitor
//! threads read kernel events and a healer thread hands them, debounced, to
//! [`Engine::heal`](crate::engine::Engine::heal).
//!
//! Debouncing: after the first event the healer waits [`DEBOUNCE`] for more,
//! so a storm (a `nft flush ruleset`, a bridge deleted with its hundred
//! ports) costs one plan. The repair then lands well within a second.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::api::Shared;
use crate::kernel::{KernelEvent, Monitor};

/// How long the healer gathers events after the first one.
pub const DEBOUNCE: Duration = Duration::from_millis(50);
/// How often threads look at the stop flag.
const POLL: Duration = Duration::from_millis(200);
/// More distinct events than this in one batch: check everything instead.
const MAX_BATCH: usize = 10_000;

/// The monitor and healer threads; dropping it stops them.
pub struct Healer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Healer {
    /// Starts one thread per monitor and the healer thread.
    pub fn start(engine: Shared, monitors: Vec<Box<dyn Monitor>>) -> Healer {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let mut threads = Vec::new();
        for (i, m) in monitors.into_iter().enumerate() {
            let (tx, stop) = (tx.clone(), stop.clone());
            let t = std::thread::Builder::new().name(format!("lanyard-monitor-{i}")).spawn(move || watch(m, tx, stop));
            match t {
                Ok(t) => threads.push(t),
                Err(e) => tracing::error!("cannot start a kernel monitor thread: {e}"),
            }
        }
        drop(tx);
        let s = stop.clone();
        match std::thread::Builder::new().name("lanyard-healer".into()).spawn(move || heal_loop(rx, engine, s)) {
            Ok(t) => threads.push(t),
            Err(e) => tracing::error!("cannot start the healer thread: {e}"),
        }
        Healer { stop, threads }
    }

    /// Stops and joins the threads.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn watch(mut monitor: Box<dyn Monitor>, tx: Sender<KernelEvent>, stop: Arc<AtomicBool>) {
    let mut failures = 0u32;
    while !stop.load(Ordering::SeqCst) {
        match monitor.recv_timeout(POLL) {
            Ok(events) => {
                failures = 0;
                for e in events {
                    if tx.send(e).is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                failures += 1;
                // One line and one full check per burst of failures: what
                // was missed meanwhile is checked as a whole.
                if failures == 1 {
                    tracing::error!("kernel monitor: {e}; retrying");
                    let _ = tx.send(KernelEvent::Overflow);
                }
                std::thread::sleep(POLL);
            }
        }
    }
}

/// Collects events for [`DEBOUNCE`] after the first, deduplicated.
fn gather(first: KernelEvent, rx: &Receiver<KernelEvent>) -> Vec<KernelEvent> {
    let mut batch = BTreeSet::from([first]);
    let deadline = Instant::now() + DEBOUNCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(e) => {
                batch.insert(e);
            }
            Err(_) => break,
        }
    }
    if batch.len() > MAX_BATCH {
        return vec![KernelEvent::Overflow];
    }
    batch.into_iter().collect()
}

fn heal_loop(rx: Receiver<KernelEvent>, engine: Shared, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        let first = match rx.recv_timeout(POLL) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let batch = gather(first, &rx);
        let mut engine = engine.lock().unwrap_or_else(|p| p.into_inner());
        // heal() logs and counts its own failures; nothing more to do here.
        let _ = engine.heal(&batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_is_one_deduplicated_batch() {
        let (tx, rx) = mpsc::channel();
        for i in 0..1000 {
            tx.send(KernelEvent::Link { name: format!("ly{}", i % 10), gone: true }).unwrap();
        }
        let first = rx.recv().unwrap();
        let batch = gather(first, &rx);
        assert_eq!(batch.len(), 10);
        assert!(rx.try_recv().is_err(), "everything sent before the deadline is in the batch");
    }

    #[test]
    fn too_many_distinct_events_mean_check_everything() {
        let (tx, rx) = mpsc::channel();
        for i in 0..=MAX_BATCH {
            tx.send(KernelEvent::Link { name: format!("ly{i}"), gone: true }).unwrap();
        }
        let first = rx.recv().unwrap();
        assert_eq!(gather(first, &rx), vec![KernelEvent::Overflow]);
    }
}
