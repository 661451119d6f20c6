//! The multi-host store: desired state in etcd (v3 API), under one prefix.
//!
//! [`EtcdStore`] keeps the same records as [`super::sqlite::SqliteStore`],
//! as the same JSON, one key each:
//!
//! ```text
//! /lanyard/v1/settings/<key>            the setting's JSON document
//! /lanyard/v1/projects/<name>           Project
//! /lanyard/v1/tokens/<id>               token (with its hash)
//! /lanyard/v1/token-hashes/<hash>       the token's id (hashes are unique)
//! /lanyard/v1/networks/<net>            Network
//! /lanyard/v1/ports/<net>/<id>          Port
//! /lanyard/v1/leases/<net>/<ip>         Lease
//! /lanyard/v1/claims/<kind>/<value>     the owner of an allocated value
//! /lanyard/v1/documents/<kind>/<key>    a document (floating IP pools, floating IPs, grants, static hosts,
//!                                       port forwards)
//! /lanyard/v1/nodes/<name>              a daemon's registration (lease-bound)
//! ```
//!
//! `<net>` is a network key (`PROJECT/NAME`) with `/` written `%2F`, so
//! one network's prefix never covers another's. Every [`Store`] call is one
//! etcd transaction; the ones that must read first (the lease rules, a
//! project's tokens) read, decide, and commit only if nothing they read has
//! changed since (a compare on the prefix's revisions), retrying a few
//! times otherwise.
//!
//! The trait is synchronous and etcd-client is async: see [`Runner`].

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::Ipv4Addr;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
    TxnOpResponse,
};
use serde::{Deserialize, Serialize};

use super::{port_claims, Change, Claim, DocumentChange, LeaseChange, Store, StoreError};
use crate::auth::Token;
use crate::model::{Lease, Network, Port, Project};

/// Where lanyard's keys live.
pub const ROOT: &str = "/lanyard/v1";

/// How long one store call may take before etcd counts as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a read-decide-commit call retries when another writer got in
/// between; past that the call fails (it is contention, not an outage).
const CAS_ATTEMPTS: usize = 16;

/// Lease changes written per transaction. etcd refuses a transaction of
/// more than `--max-txn-ops` operations (default 128, nested transactions
/// included); a lease change is at most two (its put, the delete of the
/// client's other lease), so a larger group commit is written as
/// consecutive transactions of this many changes. Each is atomic; the
/// lease writer's promise (durable before the ACK) holds for all of them.
const LEASE_CHANGES_PER_TXN: usize = 60;

/// Runs etcd-client's futures for synchronous callers.
///
/// The engine calls the store from `spawn_blocking` threads, the lease
/// writer from its own thread, and start-up code may call it from within
/// the daemon's runtime. `Runtime::block_on` panics in an async context
/// and `block_in_place` needs a multi-thread runtime's worker, so neither
/// fits every caller. Instead the store owns a small runtime on a thread of
/// its own; a call spawns its future there and waits on a plain channel,
/// which is correct from any thread (from an async context it holds that
/// worker for up to the call's timeout, so the daemon calls the store from
/// blocking threads). The one caller it must never have is a future on its
/// own runtime, which would wait on itself: background work there (the
/// node's keep-alive) uses the client directly. The runtime is also
/// dropped on its thread (dropping a runtime inside another one's async
/// context panics).
struct Runner {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Runner {
    fn start() -> Result<Runner, StoreError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("etcd-client".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(rt.handle().clone()));
                // Drives every spawned call until the store is dropped.
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
            })
            .map_err(|e| StoreError::Etcd(format!("cannot start the etcd client thread: {e}")))?;
        let handle = ready_rx
            .recv()
            .map_err(|_| StoreError::Etcd("the etcd client thread stopped at start".into()))?
            .map_err(|e| StoreError::Etcd(format!("cannot start the etcd client runtime: {e}")))?;
        Ok(Runner { handle, stop: Some(stop_tx) })
    }

    /// Runs `fut` to completion on the store's runtime, at most `timeout`.
    /// `None` when it timed out (or the runtime is gone).
    fn run<T: Send + 'static>(&self, timeout: Duration, fut: impl Future<Output = T> + Send + 'static) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(tokio::time::timeout(timeout, fut).await.ok());
        });
        rx.recv().ok().flatten()
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A token as stored: [`Token`] leaves its hash out of JSON (the API's
/// shape), and the store must keep it.
#[derive(Serialize, Deserialize)]
struct StoredToken {
    id: String,
    project: String,
    name: String,
    hash: String,
    created: u64,
}

impl From<&Token> for StoredToken {
    fn from(t: &Token) -> Self {
        StoredToken {
            id: t.id.clone(),
            project: t.project.clone(),
            name: t.name.clone(),
            hash: t.hash.clone(),
            created: t.created,
        }
    }
}

impl From<StoredToken> for Token {
    fn from(t: StoredToken) -> Self {
        Token { id: t.id, project: t.project, name: t.name, hash: t.hash, created: t.created }
    }
}

/// A network key as one path segment (`PROJECT/NAME` has a slash).
fn segment(key: &str) -> String {
    key.replace('%', "%25").replace('/', "%2F")
}

/// The inverse of [`segment`].
fn unsegment(seg: &str) -> String {
    seg.replace("%2F", "/").replace("%25", "%")
}

/// Claims released per transaction: each is a nested transaction (a
/// delete guarded by its owner), which etcd counts against
/// `--max-txn-ops` with its own operations.
const RELEASES_PER_TXN: usize = 50;

fn encode<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("model types always serialize")
}

fn decode<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<T, StoreError> {
    serde_json::from_slice(kv.value())
        .map_err(|source| StoreError::Corrupt { key: String::from_utf8_lossy(kv.key()).into_owned(), source })
}

/// etcd-backed [`Store`].
pub struct EtcdStore {
    client: Client,
    runner: Runner,
    /// The endpoints, for messages.
    endpoints: String,
    /// Key prefix (normally [`ROOT`]; tests use their own).
    root: String,
}

impl EtcdStore {
    /// Connects to etcd at `endpoints` (`http://HOST:PORT`) and makes sure
    /// the `default` project exists, as a new SQLite database has it.
    pub fn connect(endpoints: &[String]) -> Result<Self, StoreError> {
        Self::connect_at(endpoints, ROOT)
    }

    /// Like [`EtcdStore::connect`], with keys under `root` instead of [`ROOT`].
    pub fn connect_at(endpoints: &[String], root: &str) -> Result<Self, StoreError> {
        let runner = Runner::start()?;
        let joined = endpoints.join(",");
        let eps = endpoints.to_vec();
        let options = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        let client = runner
            .run(CALL_TIMEOUT, async move { Client::connect(eps, Some(options)).await })
            .ok_or_else(|| StoreError::Unavailable { endpoints: joined.clone() })?
            .map_err(|e| error(&joined, e))?;
        let store = EtcdStore { client, runner, endpoints: joined, root: root.trim_end_matches('/').to_string() };
        let default = store.key(&["projects", "default"]);
        let created =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let project = Project { name: "default".into(), description: String::new(), created };
        store.txn(Txn::new().when([Compare::version(default.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
            default,
            encode(&project),
            None,
        )]))?;
        Ok(store)
    }

    /// The endpoints this store talks to, comma-separated.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// The etcd client (for node registration, which lives beside the store).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Runs `f` on the store's runtime with a fresh client handle,
    /// mapping a timeout or transport failure to [`StoreError::Unavailable`].
    pub fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let fut = f(self.client.clone());
        match self.runner.run(CALL_TIMEOUT, fut) {
            None => Err(StoreError::Unavailable { endpoints: self.endpoints.clone() }),
            Some(r) => r.map_err(|e| error(&self.endpoints, e)),
        }
    }

    /// Runs `fut` in the background on the store's runtime (where the
    /// client's connections live), e.g. a lease's keep-alive.
    pub fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) -> tokio::task::JoinHandle<()> {
        self.runner.handle.spawn(fut)
    }

    /// The full key of a record: root, then the parts.
    pub fn key(&self, parts: &[&str]) -> String {
        let mut k = self.root.clone();
        for p in parts {
            k.push('/');
            k.push_str(p);
        }
        k
    }

    /// The prefix of a directory of records (with its trailing slash).
    fn dir(&self, parts: &[&str]) -> String {
        let mut k = self.key(parts);
        k.push('/');
        k
    }

    fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, StoreError> {
        self.call(move |mut c| async move { c.txn(txn).await })
    }

    /// Every key under `prefix`, with the store's revision at the read.
    fn list(&self, prefix: String) -> Result<(Vec<KeyValue>, i64), StoreError> {
        let mut resp =
            self.call(move |mut c| async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await })?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok((resp.take_kvs(), rev))
    }

    fn get(&self, key: String) -> Result<Option<KeyValue>, StoreError> {
        let mut resp = self.call(move |mut c| async move { c.get(key, None).await })?;
        Ok(resp.take_kvs().into_iter().next())
    }

    fn records<T: serde::de::DeserializeOwned>(&self, parts: &[&str]) -> Result<Vec<(KeyValue, T)>, StoreError> {
        let (kvs, _) = self.list(self.dir(parts))?;
        kvs.into_iter()
            .map(|kv| {
                let v = decode(&kv)?;
                Ok((kv, v))
            })
            .collect()
    }

    /// A compare that holds while nothing under `prefix` was written after
    /// revision `rev` (a deletion is not seen, which no caller depends on:
    /// a key deleted meanwhile is deleted again, harmlessly).
    fn unchanged_since(prefix: &str, rev: i64) -> Compare {
        Compare::mod_revision(prefix, CompareOp::Less, rev + 1).with_prefix()
    }

    /// Reads the leases of `nets`, lets `decide` change them (and add other
    /// operations), and writes the difference in one transaction that holds
    /// only if none of those networks' leases changed since the read.
    fn lease_txn(
        &self,
        nets: &BTreeSet<String>,
        decide: impl Fn(&mut BTreeMap<(String, Ipv4Addr), Lease>) -> Vec<TxnOp>,
    ) -> Result<(), StoreError> {
        for _ in 0..CAS_ATTEMPTS {
            let reads: Vec<TxnOp> = nets
                .iter()
                .map(|n| TxnOp::get(self.dir(&["leases", &segment(n)]), Some(GetOptions::new().with_prefix())))
                .collect();
            let resp = self.txn(Txn::new().and_then(reads))?;
            let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
            let mut before = BTreeMap::new();
            for r in resp.op_responses() {
                if let TxnOpResponse::Get(g) = r {
                    for kv in g.kvs() {
                        let l: Lease = decode(kv)?;
                        before.insert((l.net.clone(), l.ip), l);
                    }
                }
            }
            let mut after = before.clone();
            let mut ops = decide(&mut after);
            for (k, l) in &before {
                if !after.contains_key(k) {
                    ops.push(TxnOp::delete(self.key(&["leases", &segment(&l.net), &l.ip.to_string()]), None));
                }
            }
            for (k, l) in &after {
                if before.get(k) != Some(l) {
                    ops.push(TxnOp::put(self.key(&["leases", &segment(&l.net), &l.ip.to_string()]), encode(l), None));
                }
            }
            if ops.is_empty() {
                return Ok(());
            }
            let guards: Vec<Compare> =
                nets.iter().map(|n| Self::unchanged_since(&self.dir(&["leases", &segment(n)]), rev)).collect();
            if self.txn(Txn::new().when(guards).and_then(ops))?.succeeded() {
                return Ok(());
            }
        }
        Err(self.contention("leases"))
    }

    fn contention(&self, what: &str) -> StoreError {
        StoreError::Etcd(format!(
            "{what} kept changing under this write ({CAS_ATTEMPTS} attempts at {}); nothing was written, retry",
            self.endpoints
        ))
    }
}

/// Upserts `l` the way SQLite's lease table does: one lease per address
/// and one per client (MAC) in a network.
fn upsert(leases: &mut BTreeMap<(String, Ipv4Addr), Lease>, l: &Lease) {
    leases.retain(|(net, _), old| !(net == &l.net && old.mac == l.mac));
    leases.insert((l.net.clone(), l.ip), l.clone());
}

/// Classifies an etcd-client error: no answer is an outage, the rest is
/// etcd's own refusal.
fn error(endpoints: &str, e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    match &e {
        E::TransportError(_) | E::IoError(_) => StoreError::Unavailable { endpoints: endpoints.to_string() },
        E::GRpcStatus(s)
            if matches!(s.code(), tonic_code::Unavailable | tonic_code::DeadlineExceeded | tonic_code::Cancelled) =>
        {
            StoreError::Unavailable { endpoints: endpoints.to_string() }
        }
        E::GRpcStatus(s) if s.message().contains("too many operations") => StoreError::Etcd(format!(
            "etcd at {endpoints} refused a change this large in one transaction ({}): write fewer records at once, \
             or raise etcd's --max-txn-ops (default 128)",
            s.message()
        )),
        _ => StoreError::Etcd(format!("etcd at {endpoints}: {e}")),
    }
}

use tonic::Code as tonic_code;

impl Store for EtcdStore {
    fn node_addresses(&self) -> Result<std::collections::BTreeMap<String, std::net::Ipv4Addr>, StoreError> {
        /// The part of a node's registration (`daemon::cluster::NodeRecord`)
        /// the overlay needs.
        #[derive(serde::Deserialize)]
        struct NodeAddress {
            name: String,
            underlay_ip: Option<std::net::Ipv4Addr>,
        }
        let (kvs, _) = self.list(self.dir(&["nodes"]))?;
        let mut out = std::collections::BTreeMap::new();
        for kv in kvs {
            // One node's unreadable record must not keep every other
            // node's tunnels down: it is skipped, and said.
            match serde_json::from_slice::<NodeAddress>(kv.value()) {
                Ok(NodeAddress { name, underlay_ip: Some(ip) }) => {
                    out.insert(name, ip);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "unreadable node record: {e}"),
            }
        }
        Ok(out)
    }

    fn documents(&self, kind: &str) -> Result<Vec<(String, String)>, StoreError> {
        let prefix = self.dir(&["documents", &segment(kind)]);
        let (kvs, _) = self.list(prefix.clone())?;
        let mut out: Vec<(String, String)> = kvs
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                let key = key.strip_prefix(&prefix).unwrap_or(&key).replace("%2F", "/").replace("%25", "%");
                (key, String::from_utf8_lossy(kv.value()).into_owned())
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn write_documents(&self, changes: &[DocumentChange]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let ops: Vec<TxnOp> = changes
            .iter()
            .map(|c| match c {
                DocumentChange::Put { kind, key, body } => {
                    TxnOp::put(self.key(&["documents", &segment(kind), &segment(key)]), body.as_str(), None)
                }
                DocumentChange::Delete { kind, key } => {
                    TxnOp::delete(self.key(&["documents", &segment(kind), &segment(key)]), None)
                }
            })
            .collect();
        self.txn(Txn::new().and_then(ops))?;
        Ok(())
    }

    fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.get(self.key(&["settings", key]))?.map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    fn put_setting(&self, key: &str, body: &str) -> Result<(), StoreError> {
        self.txn(Txn::new().and_then([TxnOp::put(self.key(&["settings", key]), body, None)]))?;
        Ok(())
    }

    fn projects(&self) -> Result<Vec<Project>, StoreError> {
        let mut out: Vec<Project> = self.records(&["projects"])?.into_iter().map(|(_, p)| p).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn put_project(&self, project: &Project) -> Result<(), StoreError> {
        self.txn(Txn::new().and_then([TxnOp::put(self.key(&["projects", &project.name]), encode(project), None)]))?;
        Ok(())
    }

    fn delete_project(&self, name: &str) -> Result<(), StoreError> {
        let dir = self.dir(&["tokens"]);
        for _ in 0..CAS_ATTEMPTS {
            let (kvs, rev) = self.list(dir.clone())?;
            let mut ops = vec![TxnOp::delete(self.key(&["projects", name]), None)];
            for kv in &kvs {
                let t: StoredToken = decode(kv)?;
                if t.project == name {
                    ops.push(TxnOp::delete(kv.key().to_vec(), None));
                    ops.push(TxnOp::delete(self.key(&["token-hashes", &t.hash]), None));
                }
            }
            if self.txn(Txn::new().when([Self::unchanged_since(&dir, rev)]).and_then(ops))?.succeeded() {
                return Ok(());
            }
        }
        Err(self.contention("tokens"))
    }

    fn tokens(&self) -> Result<Vec<Token>, StoreError> {
        let mut out: Vec<Token> =
            self.records::<StoredToken>(&["tokens"])?.into_iter().map(|(_, t)| Token::from(t)).collect();
        out.sort_by(|a, b| (&a.project, a.created, &a.id).cmp(&(&b.project, b.created, &b.id)));
        Ok(out)
    }

    fn token_by_hash(&self, hash: &str) -> Result<Option<Token>, StoreError> {
        let Some(id) = self.get(self.key(&["token-hashes", hash]))? else {
            return Ok(None);
        };
        let id = String::from_utf8_lossy(id.value()).into_owned();
        match self.get(self.key(&["tokens", &id]))? {
            Some(kv) => Ok(Some(decode::<StoredToken>(&kv)?.into()).filter(|t: &Token| t.hash == hash)),
            None => Ok(None),
        }
    }

    fn put_token(&self, token: &Token) -> Result<(), StoreError> {
        let key = self.key(&["tokens", &token.id]);
        let by_hash = self.key(&["token-hashes", &token.hash]);
        let resp = self.txn(
            Txn::new()
                .when([
                    Compare::version(key.clone(), CompareOp::Equal, 0),
                    Compare::version(by_hash.clone(), CompareOp::Equal, 0),
                ])
                .and_then([
                    TxnOp::put(key.clone(), encode(&StoredToken::from(token)), None),
                    TxnOp::put(by_hash, token.id.clone(), None),
                ]),
        )?;
        if !resp.succeeded() {
            return Err(StoreError::Exists(format!("token {} (its id or its hash)", token.id)));
        }
        Ok(())
    }

    fn delete_token(&self, id: &str) -> Result<bool, StoreError> {
        let key = self.key(&["tokens", id]);
        for _ in 0..CAS_ATTEMPTS {
            let Some(kv) = self.get(key.clone())? else {
                return Ok(false);
            };
            let t: StoredToken = decode(&kv)?;
            let resp = self.txn(
                Txn::new().when([Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision())]).and_then([
                    TxnOp::delete(key.clone(), None),
                    TxnOp::delete(self.key(&["token-hashes", &t.hash]), None),
                ]),
            )?;
            if resp.succeeded() {
                return Ok(true);
            }
        }
        Err(self.contention("tokens"))
    }

    fn networks(&self) -> Result<Vec<Network>, StoreError> {
        let mut out: Vec<Network> = self.records(&["networks"])?.into_iter().map(|(_, n)| n).collect();
        out.sort_by(|a, b| a.key().cmp(&b.key()));
        Ok(out)
    }

    fn put_network(&self, net: &Network) -> Result<(), StoreError> {
        self.txn(Txn::new().and_then([TxnOp::put(self.key(&["networks", &segment(&net.key())]), encode(net), None)]))?;
        Ok(())
    }

    fn delete_network(&self, key: &str) -> Result<(), StoreError> {
        let seg = segment(key);
        let ports_dir = self.dir(&["ports", &seg]);
        let all = || Some(DeleteOptions::new().with_prefix());
        // The ports are read first, for their claims; the delete holds only
        // if no port was written since (else its claims would be missed).
        for _ in 0..CAS_ATTEMPTS {
            let (kvs, rev) = self.list(ports_dir.clone())?;
            let ports = kvs.iter().map(decode::<Port>).collect::<Result<Vec<_>, _>>()?;
            let resp = self.txn(Txn::new().when([Self::unchanged_since(&ports_dir, rev)]).and_then([
                TxnOp::delete(self.dir(&["leases", &seg]), all()),
                TxnOp::delete(ports_dir.clone(), all()),
                TxnOp::delete(self.key(&["networks", &seg]), None),
            ]))?;
            if resp.succeeded() {
                // A network's claims may be more than one transaction takes:
                // they go after it, in consecutive ones. Should this daemon
                // stop in between, the next engine start releases the claims
                // whose port is gone (see Engine::start).
                let claims: Vec<Claim> = ports.iter().flat_map(port_claims).collect();
                for chunk in claims.chunks(RELEASES_PER_TXN) {
                    let ops: Vec<TxnOp> = chunk.iter().map(|c| self.release_op(c)).collect();
                    self.txn(Txn::new().and_then(ops))?;
                }
                return Ok(());
            }
        }
        Err(self.contention("ports"))
    }

    fn ports(&self) -> Result<Vec<Port>, StoreError> {
        // SQLite lists ports in insertion order; a key's create revision is
        // that order here (an update keeps it, as an upsert keeps a rowid).
        // A batch shares one revision, so within it the order is by id.
        let mut out = self.records::<Port>(&["ports"])?;
        out.sort_by(|(ka, a), (kb, b)| (ka.create_revision(), &a.id).cmp(&(kb.create_revision(), &b.id)));
        Ok(out.into_iter().map(|(_, p)| p).collect())
    }

    fn put_ports(&self, ports: &[Port]) -> Result<(), StoreError> {
        if ports.is_empty() {
            return Ok(());
        }
        let claims: Vec<Claim> = ports.iter().flat_map(port_claims).collect();
        // First the common case, new values: one transaction that creates
        // every claim if none exists. When one does, the transaction reads
        // them all instead; the ones already this port's are then compared
        // by owner (and not written again), and any other owner fails the call.
        let mut ours = vec![false; claims.len()];
        for _ in 0..CAS_ATTEMPTS {
            let mut guards = Vec::with_capacity(claims.len());
            let mut ops = Vec::with_capacity(claims.len() + ports.len());
            for (c, mine) in claims.iter().zip(&ours) {
                let key = self.claim_key(c);
                if *mine {
                    guards.push(Compare::value(key, CompareOp::Equal, c.owner.as_str()));
                } else {
                    guards.push(Compare::version(key.clone(), CompareOp::Equal, 0));
                    ops.push(TxnOp::put(key, c.owner.as_str(), None));
                }
            }
            ops.extend(
                ports
                    .iter()
                    .map(|p| TxnOp::put(self.key(&["ports", &segment(&p.net), &p.id]), encode(p), None::<PutOptions>)),
            );
            let reads: Vec<TxnOp> = claims.iter().map(|c| TxnOp::get(self.claim_key(c), None)).collect();
            let resp = self.txn(Txn::new().when(guards).and_then(ops).or_else(reads))?;
            if resp.succeeded() {
                return Ok(());
            }
            for ((c, mine), r) in claims.iter().zip(ours.iter_mut()).zip(resp.op_responses()) {
                let TxnOpResponse::Get(g) = r else { continue };
                match g.kvs().first() {
                    None => *mine = false,
                    Some(kv) if kv.value() == c.owner.as_bytes() => *mine = true,
                    Some(kv) => {
                        return Err(StoreError::Claimed {
                            kind: c.kind.clone(),
                            value: c.value.clone(),
                            holder: String::from_utf8_lossy(kv.value()).into_owned(),
                        })
                    }
                }
            }
        }
        Err(self.contention("claims"))
    }

    fn delete_port(&self, port: &Port) -> Result<(), StoreError> {
        self.release_port(port, None)
    }

    fn release_port(&self, port: &Port, hold: Option<&Lease>) -> Result<(), StoreError> {
        let mut nets = BTreeSet::from([port.net.clone()]);
        if let Some(l) = hold {
            nets.insert(l.net.clone());
        }
        let key = self.key(&["ports", &segment(&port.net), &port.id]);
        self.lease_txn(&nets, |leases| {
            leases.retain(|(net, _), l| !(net == &port.net && l.mac == port.mac));
            if let Some(l) = hold {
                upsert(leases, l);
            }
            let mut ops = vec![TxnOp::delete(key.clone(), None)];
            ops.extend(port_claims(port).iter().map(|c| self.release_op(c)));
            ops
        })
    }

    fn claim(&self, kind: &str, value: &str, owner: &str) -> Result<bool, StoreError> {
        let key = self.key(&["claims", &segment(kind), &segment(value)]);
        let resp = self.txn(
            Txn::new()
                .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), owner, None)])
                .or_else([TxnOp::get(key, None)]),
        )?;
        if resp.succeeded() {
            return Ok(true);
        }
        // Held already: by this owner (a repeated claim) or another.
        Ok(resp.op_responses().iter().any(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().iter().any(|kv| kv.value() == owner.as_bytes()),
            _ => false,
        }))
    }

    fn release_claim(&self, kind: &str, value: &str, owner: &str) -> Result<bool, StoreError> {
        let key = self.key(&["claims", &segment(kind), &segment(value)]);
        let resp = self.txn(
            Txn::new()
                .when([Compare::value(key.clone(), CompareOp::Equal, owner)])
                .and_then([TxnOp::delete(key, None)]),
        )?;
        Ok(resp.succeeded())
    }

    fn claims(&self, kind: &str) -> Result<Vec<Claim>, StoreError> {
        let prefix = self.dir(&["claims", &segment(kind)]);
        let (kvs, _) = self.list(prefix.clone())?;
        let mut out: Vec<Claim> = kvs
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                Claim {
                    kind: kind.to_string(),
                    value: unsegment(key.strip_prefix(&prefix).unwrap_or(&key)),
                    owner: String::from_utf8_lossy(kv.value()).into_owned(),
                }
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        let mut out: Vec<Lease> = self.records(&["leases"])?.into_iter().map(|(_, l)| l).collect();
        // SQLite's order: network, then the address as text.
        out.sort_by(|a, b| (&a.net, a.ip.to_string()).cmp(&(&b.net, b.ip.to_string())));
        Ok(out)
    }

    fn write_leases(&self, changes: &[LeaseChange]) -> Result<(), StoreError> {
        changes.chunks(LEASE_CHANGES_PER_TXN).try_for_each(|chunk| self.write_lease_chunk(chunk))
    }
}

/// What a watched key's new value (None: deleted) means to the mirror;
/// None for the keys it does not follow: leases (each host's DHCP writes
/// them, and serves its own ports), claims (they come with their ports)
/// and tokens (never held in memory). A node's registration is followed
/// as [`Change::Nodes`] (the overlay's tunnels end at the nodes). `root`
/// is the store's root.
pub fn change_of(root: &str, key: &[u8], value: Option<&[u8]>) -> Option<Change> {
    let key = std::str::from_utf8(key).ok()?.strip_prefix(root)?.strip_prefix('/')?;
    let (dir, rest) = key.split_once('/')?;
    // A record that does not decode is left to a read of the store
    // (Other), which reports it.
    match dir {
        "networks" => match value.map(serde_json::from_slice::<Network>) {
            Some(Err(_)) => Some(Change::Other),
            Some(Ok(n)) => Some(Change::Network(unsegment(rest), Some(n))),
            None => Some(Change::Network(unsegment(rest), None)),
        },
        "ports" => {
            let (_, id) = rest.rsplit_once('/')?;
            match value.map(serde_json::from_slice::<Port>) {
                Some(Err(_)) => Some(Change::Other),
                Some(Ok(p)) => Some(Change::Port(id.to_string(), Some(p))),
                None => Some(Change::Port(id.to_string(), None)),
            }
        }
        "projects" => match value.map(serde_json::from_slice::<Project>) {
            Some(Err(_)) => Some(Change::Other),
            Some(Ok(p)) => Some(Change::Project(rest.to_string(), Some(p))),
            None => Some(Change::Project(rest.to_string(), None)),
        },
        "documents" => {
            let (kind, key) = rest.split_once('/')?;
            let body = match value.map(std::str::from_utf8) {
                Some(Err(_)) => return Some(Change::Other),
                Some(Ok(b)) => Some(b.to_string()),
                None => None,
            };
            Some(Change::Document { kind: unsegment(kind), key: unsegment(key), body })
        }
        "settings" => Some(Change::Other),
        "nodes" => Some(Change::Nodes),
        _ => None,
    }
}

impl EtcdStore {
    /// The root of this store's keys (`/lanyard/v1`).
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The store's current revision: a watch from the next one sees every
    /// change written after this call.
    pub fn revision(&self) -> Result<i64, StoreError> {
        let key = self.key(&["projects", "default"]);
        let resp = self.call(move |mut c| async move { c.get(key, None).await })?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    fn claim_key(&self, c: &Claim) -> String {
        self.key(&["claims", &segment(&c.kind), &segment(&c.value)])
    }

    /// An operation that deletes claim `c` if its owner still holds it (a
    /// nested transaction: a plain delete could take another owner's).
    fn release_op(&self, c: &Claim) -> TxnOp {
        let key = self.claim_key(c);
        TxnOp::txn(
            Txn::new()
                .when([Compare::value(key.clone(), CompareOp::Equal, c.owner.as_str())])
                .and_then([TxnOp::delete(key, None)]),
        )
    }

    /// [`Store::write_leases`] for at most [`LEASE_CHANGES_PER_TXN`] changes: one transaction.
    fn write_lease_chunk(&self, changes: &[LeaseChange]) -> Result<(), StoreError> {
        let nets: BTreeSet<String> = changes
            .iter()
            .map(|c| match c {
                LeaseChange::Upsert(l) => l.net.clone(),
                LeaseChange::Remove { net, .. } => net.clone(),
            })
            .collect();
        if nets.is_empty() {
            return Ok(());
        }
        self.lease_txn(&nets, |leases| {
            for c in changes {
                match c {
                    LeaseChange::Upsert(l) => upsert(leases, l),
                    LeaseChange::Remove { net, ip } => {
                        leases.remove(&(net.clone(), *ip));
                    }
                }
            }
            Vec::new()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the mirror makes of watched keys: networks and ports by key and
    /// id (a project's network's key holds '/'), projects, documents with
    /// '/' in their keys, deletes; leases, claims and nodes are not followed.
    #[test]
    fn watched_keys_become_changes() {
        let net = crate::model::test_network("web", "10.1.0.0/24", "lybr0");
        let port = crate::model::test_port("00aa", "blue/web");
        let (n, p) = (serde_json::to_vec(&net).unwrap(), serde_json::to_vec(&port).unwrap());
        let change = |k: &str, v: Option<&[u8]>| change_of("/lanyard/v1", k.as_bytes(), v);
        let net_key = "/lanyard/v1/networks/blue%2Fweb";
        assert_eq!(change(net_key, Some(&n)), Some(Change::Network("blue/web".into(), Some(net))));
        assert_eq!(change(net_key, None), Some(Change::Network("blue/web".into(), None)));
        let port_key = "/lanyard/v1/ports/blue%2Fweb/00aa";
        assert_eq!(change(port_key, Some(&p)), Some(Change::Port("00aa".into(), Some(port))));
        assert_eq!(change(port_key, None), Some(Change::Port("00aa".into(), None)));
        assert_eq!(change("/lanyard/v1/projects/blue", None), Some(Change::Project("blue".into(), None)));
        let grant = Change::Document { kind: "grants".into(), key: "a>b/c>all".into(), body: Some("{}".into()) };
        assert_eq!(change("/lanyard/v1/documents/grants/a>b%2Fc>all", Some(b"{}")), Some(grant));
        assert_eq!(change(net_key, Some(b"not json")), Some(Change::Other));
        assert_eq!(change("/lanyard/v1/settings/vlan", Some(b"{}")), Some(Change::Other));
        assert_eq!(change("/lanyard/v1/nodes/h1", None), Some(Change::Nodes));
        for ignored in ["leases/web/10.1.0.5", "claims/mac/52:54:00:00:00:01", "tokens/t1"] {
            assert_eq!(change(&format!("/lanyard/v1/{ignored}"), Some(b"{}")), None, "{ignored}");
        }
        assert_eq!(change("/other/networks/web", Some(&n)), None);
    }
}
