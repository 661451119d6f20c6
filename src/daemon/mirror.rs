//! The watch-driven mirror of a cluster member: follows etcd and brings the
//! engine up to date when another host changes desired state.
//!
//! Two tasks. The watcher, on the store's runtime (where the etcd client's
//! connection lives), watches everything under the store's root from the
//! revision after the daemon's first read, and turns events into
//! [`Change`]s. When etcd has compacted the history it needs (or after a
//! lost connection whose history is gone), it watches again from the
//! current revision and asks for a full re-read instead. The follower, on
//! the daemon's runtime, takes what has queued up and hands it to the
//! engine ([`Engine::follow`]) on a blocking thread; a follow that failed
//! (etcd unreachable mid-read, a kernel refusal) is retried as a full
//! re-read after a pause, until one succeeds or a newer change comes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use tokio::sync::mpsc;

use crate::engine::Engine;
use crate::store::etcd::{change_of, EtcdStore};
use crate::store::Change;

/// How long the watcher waits before watching again after a failure.
const REWATCH_AFTER: Duration = Duration::from_secs(1);

/// How long the follower waits before retrying a failed follow.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// What the watcher tells the follower.
#[derive(Debug)]
enum News {
    /// Records changed.
    Changes(Vec<Change>),
    /// What changed is not known: read everything again.
    Resync,
}

/// The running mirror; stops when dropped.
pub struct Mirror {
    watcher: tokio::task::JoinHandle<()>,
    follower: tokio::task::JoinHandle<()>,
}

impl Mirror {
    /// Follows `store` from revision `from` (the one after the store's
    /// state the engine was started from) into `engine`. Call from the
    /// daemon's runtime.
    pub fn start(store: &Arc<EtcdStore>, from: i64, engine: Arc<Mutex<Engine>>) -> Mirror {
        let (tx, rx) = mpsc::unbounded_channel();
        let client = store.client();
        let root = store.root().to_string();
        let watcher = store.spawn(watch(client, root, from, tx));
        let follower = tokio::spawn(follow(rx, engine, store.clone()));
        Mirror { watcher, follower }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.watcher.abort();
        self.follower.abort();
    }
}

async fn watch(client: etcd_client::Client, root: String, mut next: i64, tx: mpsc::UnboundedSender<News>) {
    let prefix = format!("{root}/");
    let mut failing = false;
    // Runs until the daemon stops (the task is aborted) or the follower is gone.
    loop {
        let mut c = client.clone();
        let options = WatchOptions::new().with_prefix().with_start_revision(next);
        let mut stream = match c.watch(prefix.clone(), Some(options)).await {
            Ok(s) => s,
            Err(e) => {
                if !failing {
                    tracing::warn!("cannot watch etcd (changes made through other hosts wait): {e}");
                    failing = true;
                }
                tokio::time::sleep(REWATCH_AFTER).await;
                continue;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    if failing {
                        tracing::info!("watching etcd again");
                        failing = false;
                    }
                    if resp.compact_revision() > 0 || resp.canceled() {
                        // The history from `next` is gone: start over from
                        // now, and read everything once.
                        tracing::warn!(
                            from = next,
                            compacted = resp.compact_revision(),
                            "etcd no longer has the changes since the last one seen: reading the whole state again"
                        );
                        next = match c.get(prefix.clone(), Some(etcd_client::GetOptions::new().with_count_only())).await
                        {
                            Ok(r) => r.header().map_or(next, |h| h.revision() + 1),
                            Err(_) => next,
                        };
                        if tx.send(News::Resync).is_err() {
                            return;
                        }
                        break;
                    }
                    let mut changes = Vec::new();
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        next = next.max(kv.mod_revision() + 1);
                        let value = (ev.event_type() == EventType::Put).then(|| kv.value());
                        changes.extend(change_of(&root, kv.key(), value));
                    }
                    if !changes.is_empty() && tx.send(News::Changes(changes)).is_err() {
                        return;
                    }
                }
                Ok(None) | Err(_) => {
                    // The connection went: watch again from the next
                    // revision not seen (etcd replays what was missed).
                    if !failing {
                        tracing::warn!("lost the watch on etcd; watching again");
                        failing = true;
                    }
                    tokio::time::sleep(REWATCH_AFTER).await;
                    break;
                }
            }
        }
    }
}

async fn follow(mut rx: mpsc::UnboundedReceiver<News>, engine: Arc<Mutex<Engine>>, store: Arc<EtcdStore>) {
    let mut retry = false;
    loop {
        let first = if retry {
            match tokio::time::timeout(RETRY_AFTER, rx.recv()).await {
                Ok(Some(n)) => Some(n),
                Ok(None) => return,
                Err(_) => {
                    // A re-read holds the engine's lock; while etcd does
                    // not answer it would hold it for the call's timeout
                    // each time, stalling the API. Ask etcd first, unlocked.
                    let s = store.clone();
                    if !matches!(tokio::task::spawn_blocking(move || s.revision()).await, Ok(Ok(_))) {
                        continue;
                    }
                    None
                }
            }
        } else {
            match rx.recv().await {
                Some(n) => Some(n),
                None => return,
            }
        };
        // Everything queued goes in one follow.
        let mut changes = Vec::new();
        let mut resync = retry;
        let mut take = |n: News| match n {
            News::Changes(c) => changes.extend(c),
            News::Resync => resync = true,
        };
        if let Some(n) = first {
            take(n);
        }
        while let Ok(n) = rx.try_recv() {
            take(n);
        }
        let engine = engine.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut e = engine.lock().unwrap_or_else(|p| p.into_inner());
            e.follow(&changes, resync)
        })
        .await;
        retry = match done {
            Ok(Ok(_)) => false,
            Ok(Err(e)) => {
                tracing::error!("cannot follow a change made through another host (retrying): {e}");
                true
            }
            Err(e) => {
                tracing::error!("following a change made through another host failed (retrying): {e}");
                true
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::fake::FakeKernel;
    use crate::engine::host::FakeHost;
    use crate::engine::services::FakeServices;
    use crate::engine::Parts;
    use crate::model::NetState;
    use crate::store::contract::EtcdServer;
    use crate::store::Store;

    /// Waits (bounded) until `f` holds of the engine.
    async fn until(engine: &Arc<Mutex<Engine>>, what: &str, f: impl Fn(&Engine) -> bool) {
        for _ in 0..100 {
            if f(&engine.lock().unwrap()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the mirror did not follow: {what}");
    }

    /// A mirror started from a revision etcd has compacted away reads the
    /// whole state instead, then follows changes as they come.
    #[test]
    fn a_compacted_watch_reads_the_state_again_and_follows_on() {
        let Some(etcd) = EtcdServer::start("a_compacted_watch_reads_the_state_again_and_follows_on") else { return };
        let other = etcd.store("/lanyard-test/mirror");
        let here = Arc::new(etcd.store("/lanyard-test/mirror"));
        let from = here.revision().unwrap() + 1;
        let engine = Engine::start(Parts {
            store: Arc::new(etcd.store("/lanyard-test/mirror")),
            kernel: Arc::new(FakeKernel::default()),
            services: Box::<FakeServices>::default(),
            host: Arc::new(FakeHost::default()),
            node: Some("here".into()),
        })
        .unwrap();
        let engine = Arc::new(Mutex::new(engine));
        // Another host writes, and etcd forgets the history since `from`.
        let n1 = crate::model::test_network("n1", "10.61.0.0/24", "lybr61");
        other.put_network(&n1).unwrap();
        other.put_network(&crate::model::test_network("n2", "10.62.0.0/24", "lybr62")).unwrap();
        let now = other.revision().unwrap();
        other.call(move |mut c| async move { c.compact(now, None).await }).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let _mirror = Mirror::start(&here, from, engine.clone());
            until(&engine, "the networks written before the compaction", |e| e.networks().len() == 2).await;
            // From here on, events.
            let mut stopped = n1.clone();
            stopped.state = NetState::Inactive;
            other.put_network(&stopped).unwrap();
            other.delete_network("n2").unwrap();
            until(&engine, "a stop and a delete", |e| e.networks() == vec![stopped.clone()]).await;
        });
    }
}
