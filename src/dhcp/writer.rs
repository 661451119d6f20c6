//! Group commit of lease changes.
//!
//! Every DHCP server hands its lease changes to one writer thread and waits
//! for the commit before it ACKs. The thread takes whatever has queued up
//! while the previous commit ran and writes it all in one transaction, so
//! under load one fsync covers many ACKs, and at idle a lease is durable in
//! one commit's time. SQLite stays off the async runtime.

use std::sync::mpsc;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::store::{LeaseChange, Store};

type Job = (Vec<LeaseChange>, oneshot::Sender<Result<(), String>>);

/// Most changes written in one transaction.
const MAX_BATCH: usize = 4096;

/// Handle to the lease writer thread; cheap to clone.
#[derive(Clone)]
pub struct LeaseWriter {
    tx: mpsc::Sender<Job>,
}

impl LeaseWriter {
    /// Starts the writer thread over `store`.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("lease-writer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    let mut n = jobs[0].0.len();
                    while n < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(j) => {
                                n += j.0.len();
                                jobs.push(j);
                            }
                            Err(_) => break,
                        }
                    }
                    let changes: Vec<LeaseChange> = jobs.iter().flat_map(|j| j.0.iter().cloned()).collect();
                    crate::fault::point("lease-commit");
                    let result = store.write_leases(&changes).map_err(|e| e.to_string());
                    crate::fault::point("lease-reply");
                    for (_, done) in jobs {
                        // A waiter that gave up is no error of ours.
                        let _ = done.send(result.clone());
                    }
                }
            })
            .expect("spawning a thread at start-up");
        LeaseWriter { tx }
    }

    /// Persists `changes`; returns once they are durable.
    pub async fn commit(&self, changes: Vec<LeaseChange>) -> Result<(), String> {
        if changes.is_empty() {
            return Ok(());
        }
        let (done_tx, done_rx) = oneshot::channel();
        self.tx.send((changes, done_tx)).map_err(|_| "lease writer stopped".to_string())?;
        done_rx.await.map_err(|_| "lease writer stopped".to_string())?
    }
}
