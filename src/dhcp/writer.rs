//! Group commit of lease changes.
//!
//! Every DHCP server hands its lease changes to one writer thread. The
//! thread takes whatever has queued up while the previous commit ran and
//! writes it all at once (with the SQLite store: one append to the lease
//! journal), so under load one commit covers many ACKs, and at idle a lease
//! is durable in one commit's time. The store stays off the async
//! runtime, and a server's receive loop never waits for it:
//! it [`submit`](LeaseWriter::submit)s a batch with what to do once the
//! batch is durable (send the ACKs), and goes on receiving.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::store::{LeaseChange, Store};

/// What runs once a submitted batch is written (or could not be).
pub trait Committed: Send {
    /// `changes` are the batch's, as submitted; `result` says whether
    /// they are durable.
    fn committed(self: Box<Self>, result: &Result<(), String>, changes: &[LeaseChange]);
}

enum Then {
    Notify(oneshot::Sender<Result<(), String>>),
    Call(Box<dyn Committed>),
}

struct Job {
    changes: Vec<LeaseChange>,
    then: Then,
}

/// Most changes written in one transaction.
pub const MAX_BATCH: usize = 4096;

// No wait between commits: under load a commit carries whatever queued
// while the previous one ran, which is already a batch. A deliberate 1 ms
// spacing (sessions 7-9) saved no CPU at the knee and added up to 1 ms to
// every ACK. Without it, eight runs at 128,000 exchanges/s alternated with
// eight with it: median p99 4.2 against 5.4 ms, the same CPU per exchange;
// at 3,200/s 5-10% more CPU (docs/performance.md, session 10).

/// Handle to the lease writer thread; cheap to clone.
#[derive(Clone)]
pub struct LeaseWriter {
    tx: mpsc::Sender<Job>,
    backlog: Arc<AtomicUsize>,
}

impl LeaseWriter {
    /// Starts the writer thread over `store`.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let backlog = Arc::new(AtomicUsize::new(0));
        let pending = backlog.clone();
        std::thread::Builder::new()
            .name("lease-writer".into())
            .spawn(move || {
                let mut all: Vec<LeaseChange> = Vec::new();
                let mut jobs: Vec<(usize, Then)> = Vec::new();
                while let Ok(first) = rx.recv() {
                    // The batch's changes back to back; each job keeps the
                    // range that is its own, to hand back after the commit.
                    let take = |job: Job, all: &mut Vec<LeaseChange>, jobs: &mut Vec<(usize, Then)>| {
                        all.extend(job.changes);
                        jobs.push((all.len(), job.then));
                    };
                    take(first, &mut all, &mut jobs);
                    while all.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(j) => take(j, &mut all, &mut jobs),
                            Err(_) => break,
                        }
                    }
                    crate::fault::point("lease-commit");
                    let result = store.write_leases(&all).map_err(|e| e.to_string());
                    crate::fault::point("lease-reply");
                    pending.fetch_sub(all.len(), Ordering::Relaxed);
                    let mut from = 0;
                    for (end, then) in jobs.drain(..) {
                        match then {
                            // A waiter that gave up is no error of ours.
                            Then::Notify(done) => {
                                let _ = done.send(result.clone());
                            }
                            Then::Call(c) => c.committed(&result, &all[from..end]),
                        }
                        from = end;
                    }
                    all.clear();
                }
            })
            .expect("spawning a thread at start-up");
        LeaseWriter { tx, backlog }
    }

    /// Changes submitted and not written yet: how far the store is behind.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }

    fn send(&self, job: Job) -> Result<(), Job> {
        let n = job.changes.len();
        self.backlog.fetch_add(n, Ordering::Relaxed);
        self.tx.send(job).map_err(|e| {
            self.backlog.fetch_sub(n, Ordering::Relaxed);
            e.0
        })
    }

    /// Queues `changes`; `then` runs on the writer thread once they are
    /// written (or failed). Never waits. If the writer is gone, `then`
    /// runs at once with the error.
    pub fn submit(&self, changes: Vec<LeaseChange>, then: Box<dyn Committed>) {
        if let Err(Job { changes, then: Then::Call(c) }) = self.send(Job { changes, then: Then::Call(then) }) {
            c.committed(&Err("lease writer stopped".to_string()), &changes);
        }
    }

    /// Persists `changes`; returns once they are durable.
    pub async fn commit(&self, changes: Vec<LeaseChange>) -> Result<(), String> {
        if changes.is_empty() {
            return Ok(());
        }
        let (done_tx, done_rx) = oneshot::channel();
        if self.send(Job { changes, then: Then::Notify(done_tx) }).is_err() {
            return Err("lease writer stopped".to_string());
        }
        done_rx.await.map_err(|_| "lease writer stopped".to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Lease, LeaseKind, Mac};
    use crate::store::sqlite::SqliteStore;
    use std::time::Duration;

    struct Report(mpsc::Sender<(bool, usize)>);

    impl Committed for Report {
        fn committed(self: Box<Self>, result: &Result<(), String>, changes: &[LeaseChange]) {
            let _ = self.0.send((result.is_ok(), changes.len()));
        }
    }

    fn lease(i: u8) -> LeaseChange {
        LeaseChange::Upsert(Lease {
            net: "default".into(),
            expiry: 100,
            mac: Mac([0x52, 0x54, 0, 0, 0, i]),
            ip: std::net::Ipv4Addr::new(10, 0, 0, i),
            hostname: None,
            client_id: None,
            kind: LeaseKind::Dynamic,
        })
    }

    #[test]
    fn submitted_batches_are_written_and_each_gets_its_own_changes_back() {
        let dir = std::env::temp_dir().join(format!("lanyard-writer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir).unwrap());
        let writer = LeaseWriter::start(store.clone());
        let (tx, rx) = mpsc::channel();
        for (n, first) in [(1usize, 1u8), (3, 10), (2, 20)] {
            let changes = (0..n as u8).map(|i| lease(first + i)).collect();
            writer.submit(changes, Box::new(Report(tx.clone())));
        }
        let mut got: Vec<(bool, usize)> = (0..3).map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
        got.sort();
        assert_eq!(got, vec![(true, 1), (true, 2), (true, 3)]);
        assert_eq!(store.leases().unwrap().len(), 6);
        assert_eq!(writer.backlog(), 0, "nothing left behind");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
