//! Group commit of lease changes.
//!
//! A DHCP server hands the lease changes of each received batch, with the
//! ACKs that wait for them, to a [`LeaseWriter`]. The receive loop never
//! waits for the store, and one write covers every lease of a batch. How
//! the write happens depends on the store:
//!
//! - A store whose lease write is one append to a local file
//!   ([`Store::lease_writes_are_appends`], the SQLite store's lease
//!   journal) is written on the submitting thread, and the ACKs go out
//!   at once. The append takes a few microseconds; a hand-off to another
//!   thread costs more (a wake-up, two context switches) and, with the
//!   server's CPU full, made every ACK wait until the writer thread got
//!   the CPU: the REQUEST->ACK delays were the tail of the replies at the
//!   knee (docs/performance.md, session 12).
//! - Any other store (etcd: a network round trip per write) gets a writer
//!   thread, shared by all servers. It takes whatever has queued up while
//!   the previous commit ran and writes it all at once, so under load one
//!   commit covers many ACKs, and at idle a lease is durable in one
//!   commit's time; the store stays off the async runtime.

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

/// Where a server's lease changes are written; cheap to clone.
#[derive(Clone)]
pub struct LeaseWriter(Mode);

#[derive(Clone)]
enum Mode {
    /// On the submitting thread (a store whose writes are appends).
    Inline(Arc<dyn Store>),
    /// By the writer thread.
    Thread { tx: mpsc::Sender<Job>, backlog: Arc<AtomicUsize> },
}

/// Writes `changes` and says how it went, with the fault points the crash
/// tests stop the daemon at (before the write, and after it but before any
/// ACK for it is sent).
fn write(store: &dyn Store, changes: &[LeaseChange]) -> Result<(), String> {
    crate::fault::point("lease-commit");
    let result = store.write_leases(changes).map_err(|e| e.to_string());
    crate::fault::point("lease-reply");
    result
}

impl LeaseWriter {
    /// A writer over `store`: inline if its lease writes are appends,
    /// otherwise a thread of its own.
    pub fn start(store: Arc<dyn Store>) -> Self {
        if store.lease_writes_are_appends() {
            return LeaseWriter(Mode::Inline(store));
        }
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
                    let result = write(&*store, &all);
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
        LeaseWriter(Mode::Thread { tx, backlog })
    }

    /// Changes submitted and not written yet: how far the store is behind
    /// (never anything for an inline writer).
    pub fn backlog(&self) -> usize {
        match &self.0 {
            Mode::Inline(_) => 0,
            Mode::Thread { backlog, .. } => backlog.load(Ordering::Relaxed),
        }
    }

    /// Queues `job` for the writer thread.
    fn send(tx: &mpsc::Sender<Job>, backlog: &AtomicUsize, job: Job) -> Result<(), Job> {
        let n = job.changes.len();
        backlog.fetch_add(n, Ordering::Relaxed);
        tx.send(job).map_err(|e| {
            backlog.fetch_sub(n, Ordering::Relaxed);
            e.0
        })
    }

    /// Writes `changes`, then runs `then`: inline, before this returns;
    /// with a writer thread, there, and this never waits (if the thread is
    /// gone, `then` runs at once with the error).
    pub fn submit(&self, changes: Vec<LeaseChange>, then: Box<dyn Committed>) {
        let (tx, backlog) = match &self.0 {
            Mode::Inline(store) => return then.committed(&write(&**store, &changes), &changes),
            Mode::Thread { tx, backlog } => (tx, backlog),
        };
        if let Err(Job { changes, then: Then::Call(c) }) =
            Self::send(tx, backlog, Job { changes, then: Then::Call(then) })
        {
            c.committed(&Err("lease writer stopped".to_string()), &changes);
        }
    }

    /// Persists `changes`; returns once they are durable.
    pub async fn commit(&self, changes: Vec<LeaseChange>) -> Result<(), String> {
        if changes.is_empty() {
            return Ok(());
        }
        let (tx, backlog) = match &self.0 {
            Mode::Inline(store) => return write(&**store, &changes),
            Mode::Thread { tx, backlog } => (tx, backlog),
        };
        let (done_tx, done_rx) = oneshot::channel();
        if Self::send(tx, backlog, Job { changes, then: Then::Notify(done_tx) }).is_err() {
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

    /// Says how a batch went, its size, and the thread that wrote it.
    struct Report(mpsc::Sender<(bool, usize, Option<String>)>);

    impl Committed for Report {
        fn committed(self: Box<Self>, result: &Result<(), String>, changes: &[LeaseChange]) {
            let thread = std::thread::current().name().map(str::to_string);
            let _ = self.0.send((result.is_ok(), changes.len(), thread));
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

    /// Submits batches of 1, 3 and 2 changes from a thread named "server";
    /// returns what each batch's report said, in the order they came.
    fn submit_three(store: Arc<dyn Store>) -> Vec<(bool, usize, Option<String>)> {
        let writer = LeaseWriter::start(store.clone());
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("server".into())
            .spawn(move || {
                for (n, first) in [(1usize, 1u8), (3, 10), (2, 20)] {
                    let changes = (0..n as u8).map(|i| lease(first + i)).collect();
                    writer.submit(changes, Box::new(Report(tx.clone())));
                }
                writer
            })
            .unwrap()
            .join()
            .map(|writer| {
                let got: Vec<_> = (0..3).map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
                assert_eq!(writer.backlog(), 0, "nothing left behind");
                assert_eq!(store.leases().unwrap().len(), 6, "every change written");
                got
            })
            .unwrap()
    }

    #[test]
    fn a_journal_is_appended_to_by_the_server_itself_and_each_batch_gets_its_own_changes_back() {
        let dir = std::env::temp_dir().join(format!("lanyard-writer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let got = submit_three(Arc::new(SqliteStore::open(&dir).unwrap()));
        let server = Some("server".to_string());
        assert_eq!(got, vec![(true, 1, server.clone()), (true, 3, server.clone()), (true, 2, server)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_store_without_a_journal_is_written_by_the_writer_thread() {
        let mut got = submit_three(Arc::new(SqliteStore::in_memory().unwrap()));
        got.sort();
        let writer = Some("lease-writer".to_string());
        assert_eq!(got, vec![(true, 1, writer.clone()), (true, 2, writer.clone()), (true, 3, writer)]);
    }
}
