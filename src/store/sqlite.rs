//! The embedded single-host store: one SQLite file in WAL mode.
//!
//! Records are kept as JSON documents keyed by network key / port id, so
//! adding a field to the model needs no migration; leases are a real table
//! because the DHCP server writes them in batches and the CLI lists them.
//! Changes of the tables themselves are numbered migrations
//! (`PRAGMA user_version`, see [`SCHEMA_VERSION`]).

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection};
use serde::de::DeserializeOwned;

use super::{port_claims, Claim, DocumentChange, LeaseChange, Store, StoreError, CLAIM_IP, CLAIM_MAC};
use crate::auth::Token;
use crate::model::{Lease, LeaseKind, Network, Port, Project};

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// The DHCP lease writer's own connection (None in memory, where there
    /// is only one database per connection): its commits are written to
    /// the OS before the ACK that depends on them and fsync'd by
    /// [`Checkpointer`] within [`LEASE_SYNC_EVERY`], see [`SqliteStore::open`].
    leases: Option<Mutex<Connection>>,
    /// The checkpointer thread, which ends when this is dropped.
    _lease_sync: Option<Checkpointer>,
    /// Lease commits so far, for the checkpointer to see whether there is
    /// anything to sync.
    written: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// How long a lease written by the DHCP server may wait for its fsync.
pub const LEASE_SYNC_EVERY: Duration = Duration::from_millis(500);

/// A thread that checkpoints the WAL (and with it fsyncs what the lease
/// connection wrote) every [`LEASE_SYNC_EVERY`] while there was something
/// new, off the DHCP path: the lease writer never waits for the disk.
struct Checkpointer {
    /// Dropped with the store: the thread sees the channel close and ends.
    _stop: std::sync::mpsc::Sender<()>,
}

impl Checkpointer {
    fn start(path: &Path, written: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Result<Self, rusqlite::Error> {
        use std::sync::atomic::Ordering;
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("lease-sync".into())
            .spawn(move || {
                let mut seen = 0;
                // Ends when the store is dropped (the sender goes).
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(LEASE_SYNC_EVERY) {
                    let now = written.load(Ordering::Relaxed);
                    if now == seen {
                        continue;
                    }
                    // PASSIVE never blocks the writer: it copies what it can
                    // and fsyncs the WAL first, so every lease committed
                    // before it is on disk after it. A failure is retried
                    // on the next round (the WAL keeps everything).
                    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        Ok(()) => seen = now,
                        Err(e) => tracing::warn!("lease checkpoint failed, retried: {e}"),
                    }
                }
            })
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Checkpointer { _stop: stop })
    }
}

/// The schema as lanyard wrote it before projects (version 0): a fresh
/// database is made with it and then migrated like an old one, so every
/// database takes the one path of [`MIGRATIONS`].
const SCHEMA_V0: &str = "
CREATE TABLE IF NOT EXISTS networks (name TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ports (id TEXT PRIMARY KEY, net TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    net TEXT NOT NULL,
    ip TEXT NOT NULL,
    mac TEXT NOT NULL,
    expiry INTEGER NOT NULL,
    hostname TEXT,
    client_id TEXT,
    kind TEXT NOT NULL,
    PRIMARY KEY (net, ip)
);
CREATE INDEX IF NOT EXISTS leases_by_mac ON leases (net, mac);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, body TEXT NOT NULL);
";

/// Version 1, projects: a `projects` table with the default project, and a
/// `project` column on networks and ports (their records get the field
/// too). Every existing network and port lands in `default`, whose keys
/// are the names they had, so their ports' and leases' `net` stay valid.
const V1_PROJECTS: &str = "
CREATE TABLE projects (name TEXT PRIMARY KEY, description TEXT NOT NULL DEFAULT '', created INTEGER NOT NULL);
INSERT INTO projects (name, description, created) VALUES ('default', '', CAST(strftime('%s', 'now') AS INTEGER));
ALTER TABLE networks ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
ALTER TABLE ports ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
UPDATE networks SET body = json_set(body, '$.project', 'default');
UPDATE ports SET body = json_set(body, '$.project', 'default');
CREATE INDEX networks_by_project ON networks (project);
CREATE INDEX ports_by_project ON ports (project);
";

/// Version 2, access tokens: each project's bearer tokens, by id, with the
/// SHA-256 of the secret (never the secret) and its label. A project's
/// tokens go with it ([`Store::delete_project`]).
const V2_TOKENS: &str = "
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    hash TEXT NOT NULL UNIQUE,
    created INTEGER NOT NULL
);
CREATE INDEX tokens_by_project ON tokens (project);
";

/// Version 3, documents: records of further kinds (floating IP pools,
/// floating IPs, inter-project grants), one JSON body per (kind, key), so a
/// new kind needs no migration of its own ([`Store::documents`]).
const V3_DOCUMENTS: &str = "
CREATE TABLE documents (kind TEXT NOT NULL, key TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (kind, key));
";

/// Version 4, claims: which owner holds an allocated value of a kind
/// ([`Store::claim`]); the primary key makes a claim create-if-absent.
const V4_CLAIMS: &str = "
CREATE TABLE claims (
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    owner TEXT NOT NULL,
    PRIMARY KEY (kind, value)
);
";

/// Migration `i` takes a database from version `i` to `i + 1`
/// (`PRAGMA user_version`); each runs in the transaction that records it.
const MIGRATIONS: &[&str] = &[V1_PROJECTS, V2_TOKENS, V3_DOCUMENTS, V4_CLAIMS];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`SCHEMA_VERSION`], one migration per version,
/// each in one transaction with its version number: a crash leaves the
/// database at the last version it completed. A database of a newer
/// version is refused untouched.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let found: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::Newer { found, supported: SCHEMA_VERSION });
    }
    let had_tables: i64 =
        tx.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'networks'", [], |r| {
            r.get(0)
        })?;
    tx.commit()?;
    for (from, step) in MIGRATIONS.iter().enumerate().skip(usize::try_from(found).unwrap_or(0)) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if from == 0 {
            tx.execute_batch(SCHEMA_V0)?;
        }
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", from as i64 + 1)?;
        tx.commit()?;
        if had_tables > 0 {
            tracing::info!("state database migrated to schema version {}", from + 1);
        }
    }
    Ok(())
}

/// Takes away every permission bit of `path` outside `allowed` (e.g. 0o600:
/// group and others lose all access); logs when it had to. Returns whether
/// the mode changed. A missing file is left alone.
pub fn restrict_mode(path: &Path, allowed: u32) -> std::io::Result<bool> {
    let old = match std::fs::metadata(path) {
        Ok(m) => m.permissions().mode() & 0o7777,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let new = old & allowed;
    if new == old {
        return Ok(false);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(new))?;
    tracing::warn!("tightened the mode of {} from {old:04o} to {new:04o}: it is for its owner alone", path.display());
    Ok(true)
}

/// The database and SQLite's companion files (WAL, shared memory, rollback journal).
fn db_files(dir: &Path) -> [PathBuf; 4] {
    ["lanyard.db", "lanyard.db-wal", "lanyard.db-shm", "lanyard.db-journal"].map(|f| dir.join(f))
}

/// Creates the database file 0600 if it is missing (SQLite then gives its
/// `-wal` and `-shm` files the same mode) and tightens every existing one
/// to 0600: leases name guests and their MACs, the rest of the host has no
/// business reading them.
fn make_private(dir: &Path) -> Result<(), StoreError> {
    let [db, ..] = db_files(dir);
    let mode_err = |p: &Path| {
        let path = p.display().to_string();
        move |source| StoreError::Mode { path, source }
    };
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&db) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(mode_err(&db)(e)),
    }
    for f in db_files(dir) {
        restrict_mode(&f, 0o600).map_err(mode_err(&f))?;
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/lanyard.db`, private to its owner
    /// (0600, and its `-wal`/`-shm` files too).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("lanyard.db");
        let open_err = |source| StoreError::Open { path: path.display().to_string(), source };
        make_private(dir)?;
        let conn = Connection::open(&path).map_err(open_err)?;
        // WAL lets readers proceed during the lease writer's commits;
        // synchronous=FULL makes every control-plane commit (networks,
        // ports, claims) durable before the API answers.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(open_err)?;
        let mut conn = conn;
        migrate(&mut conn).map_err(|e| match e {
            StoreError::Db(source) => open_err(source),
            other => other,
        })?;
        // The lease writer's connection: synchronous=NORMAL, so a commit
        // is in the OS (it survives any crash of the daemon, the case the
        // DHCP clients outlive) when the ACK goes, without waiting for the
        // disk; the checkpointer fsyncs it within LEASE_SYNC_EVERY. A power
        // loss, which takes the guests down with their server, may cost
        // the last leases: the guests ask again (docs/reliability.md).
        // No checkpoint runs inside its commits (they fsync).
        let leases = Connection::open(&path).map_err(open_err)?;
        leases.pragma_update(None, "synchronous", "NORMAL").map_err(open_err)?;
        leases.pragma_update(None, "wal_autocheckpoint", 0).map_err(open_err)?;
        leases.busy_timeout(Duration::from_secs(5)).map_err(open_err)?;
        let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let checkpointer = Checkpointer::start(&path, written.clone()).map_err(open_err)?;
        // The WAL and shared-memory files exist now; SQLite made them with
        // the database's mode, which this checks.
        make_private(dir)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            leases: Some(Mutex::new(leases)),
            _lease_sync: Some(checkpointer),
            written,
        })
    }

    /// An in-memory store for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        let mut conn = Connection::open_in_memory()?;
        migrate(&mut conn)?;
        Ok(SqliteStore { conn: Mutex::new(conn), leases: None, _lease_sync: None, written: Default::default() })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (transactions roll back on drop), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn decode<T: DeserializeOwned>(key: &str, body: &str) -> Result<T, StoreError> {
    serde_json::from_str(body).map_err(|source| StoreError::Corrupt { key: key.to_string(), source })
}

fn encode<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("model types always serialize")
}

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Token> {
    Ok(Token {
        id: r.get(0)?,
        project: r.get(1)?,
        name: r.get(2)?,
        hash: r.get(3)?,
        created: r.get::<_, i64>(4)?.max(0) as u64,
    })
}

fn kind_str(k: LeaseKind) -> &'static str {
    match k {
        LeaseKind::Static => "static",
        LeaseKind::Dynamic => "dynamic",
    }
}

impl SqliteStore {
    /// The JSON records a `SELECT key, body` query returns, decoded.
    fn records<T: DeserializeOwned>(&self, sql: &str) -> Result<Vec<T>, StoreError> {
        let c = self.conn();
        let mut st = c.prepare(sql)?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        rows.map(|r| {
            let (k, b) = r?;
            decode(&k, &b)
        })
        .collect()
    }
}

impl Store for SqliteStore {
    fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let c = self.conn();
        let mut st = c.prepare_cached("SELECT body FROM settings WHERE key = ?1")?;
        let mut rows = st.query([key])?;
        Ok(match rows.next()? {
            Some(r) => Some(r.get(0)?),
            None => None,
        })
    }

    fn put_setting(&self, key: &str, body: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO settings (key, body) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET body = excluded.body",
            params![key, body],
        )?;
        Ok(())
    }

    fn documents(&self, kind: &str) -> Result<Vec<(String, String)>, StoreError> {
        let c = self.conn();
        let mut st = c.prepare_cached("SELECT key, body FROM documents WHERE kind = ?1 ORDER BY key")?;
        let rows = st.query_map([kind], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn write_documents(&self, changes: &[DocumentChange]) -> Result<(), StoreError> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        for change in changes {
            match change {
                DocumentChange::Put { kind, key, body } => tx.execute(
                    "INSERT INTO documents (kind, key, body) VALUES (?1, ?2, ?3) \
                     ON CONFLICT(kind, key) DO UPDATE SET body = excluded.body",
                    params![kind, key, body],
                )?,
                DocumentChange::Delete { kind, key } => {
                    tx.execute("DELETE FROM documents WHERE kind = ?1 AND key = ?2", params![kind, key])?
                }
            };
        }
        tx.commit()?;
        Ok(())
    }

    fn projects(&self) -> Result<Vec<Project>, StoreError> {
        let c = self.conn();
        let mut st = c.prepare("SELECT name, description, created FROM projects ORDER BY name")?;
        let rows = st.query_map([], |r| {
            Ok(Project { name: r.get(0)?, description: r.get(1)?, created: r.get::<_, i64>(2)?.max(0) as u64 })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn put_project(&self, project: &Project) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO projects (name, description, created) VALUES (?1, ?2, ?3) \
             ON CONFLICT(name) DO UPDATE SET description = excluded.description, created = excluded.created",
            params![project.name, project.description, i64::try_from(project.created).unwrap_or(i64::MAX)],
        )?;
        Ok(())
    }

    fn delete_project(&self, name: &str) -> Result<(), StoreError> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        tx.execute("DELETE FROM tokens WHERE project = ?1", [name])?;
        tx.execute("DELETE FROM projects WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(())
    }

    fn tokens(&self) -> Result<Vec<Token>, StoreError> {
        let c = self.conn();
        let mut st = c.prepare("SELECT id, project, name, hash, created FROM tokens ORDER BY project, created, id")?;
        let rows = st.query_map([], token_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn token_by_hash(&self, hash: &str) -> Result<Option<Token>, StoreError> {
        let c = self.conn();
        let mut st = c.prepare("SELECT id, project, name, hash, created FROM tokens WHERE hash = ?1")?;
        let mut rows = st.query_map([hash], token_row)?;
        Ok(rows.next().transpose()?)
    }

    fn put_token(&self, token: &Token) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO tokens (id, project, name, hash, created) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![token.id, token.project, token.name, token.hash, i64::try_from(token.created).unwrap_or(i64::MAX)],
        )?;
        Ok(())
    }

    fn delete_token(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.conn().execute("DELETE FROM tokens WHERE id = ?1", [id])? > 0)
    }

    fn networks(&self) -> Result<Vec<Network>, StoreError> {
        self.records("SELECT name, body FROM networks ORDER BY name")
    }

    fn put_network(&self, net: &Network) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO networks (name, project, body) VALUES (?1, ?2, ?3) \
             ON CONFLICT(name) DO UPDATE SET project = excluded.project, body = excluded.body",
            params![net.key(), net.project, encode(net)],
        )?;
        Ok(())
    }

    fn delete_network(&self, key: &str) -> Result<(), StoreError> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        tx.execute("DELETE FROM leases WHERE net = ?1", [key])?;
        tx.execute(
            "DELETE FROM claims WHERE kind IN (?2, ?3) AND owner IN (SELECT id FROM ports WHERE net = ?1)",
            params![key, CLAIM_IP, CLAIM_MAC],
        )?;
        tx.execute("DELETE FROM ports WHERE net = ?1", [key])?;
        tx.execute("DELETE FROM networks WHERE name = ?1", [key])?;
        tx.commit()?;
        Ok(())
    }

    fn ports(&self) -> Result<Vec<Port>, StoreError> {
        self.records("SELECT id, body FROM ports ORDER BY rowid")
    }

    fn put_ports(&self, ports: &[Port]) -> Result<(), StoreError> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO ports (id, net, project, body) VALUES (?1, ?2, ?3, ?4) ON CONFLICT(id) \
                 DO UPDATE SET net = excluded.net, project = excluded.project, body = excluded.body",
            )?;
            for port in ports {
                st.execute(params![port.id, port.net, port.project, encode(port)])?;
            }
            // The claims go in the same transaction (one commit, one
            // fsync); a value held by another owner rolls it all back.
            let mut claim = tx.prepare_cached(
                "INSERT INTO claims (kind, value, owner) VALUES (?1, ?2, ?3) ON CONFLICT(kind, value) DO NOTHING",
            )?;
            let mut holder = tx.prepare_cached("SELECT owner FROM claims WHERE kind = ?1 AND value = ?2")?;
            for c in ports.iter().flat_map(port_claims) {
                if claim.execute(params![c.kind, c.value, c.owner])? == 0 {
                    let owner: String = holder.query_row(params![c.kind, c.value], |r| r.get(0))?;
                    if owner != c.owner {
                        return Err(StoreError::Claimed { kind: c.kind, value: c.value, holder: owner });
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn delete_port(&self, port: &Port) -> Result<(), StoreError> {
        self.release_port(port, None)
    }

    fn release_port(&self, port: &Port, hold: Option<&Lease>) -> Result<(), StoreError> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        tx.execute("DELETE FROM leases WHERE net = ?1 AND mac = ?2", params![port.net, port.mac.to_string()])?;
        tx.execute("DELETE FROM ports WHERE id = ?1", [&port.id])?;
        for c in port_claims(port) {
            tx.execute(
                "DELETE FROM claims WHERE kind = ?1 AND value = ?2 AND owner = ?3",
                params![c.kind, c.value, c.owner],
            )?;
        }
        if let Some(l) = hold {
            tx.execute(
                "INSERT INTO leases (net, ip, mac, expiry, hostname, client_id, kind) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    l.net,
                    l.ip.to_string(),
                    l.mac.to_string(),
                    i64::try_from(l.expiry).unwrap_or(i64::MAX),
                    l.hostname,
                    l.client_id,
                    kind_str(l.kind)
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        let c = self.conn();
        let mut st =
            c.prepare("SELECT net, ip, mac, expiry, hostname, client_id, kind FROM leases ORDER BY net, ip")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, String>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (net, ip, mac, expiry, hostname, client_id, kind) = row?;
            let key = format!("lease {net}/{ip}");
            let bad = |e: String| StoreError::Corrupt { key: key.clone(), source: serde::de::Error::custom(e) };
            out.push(Lease {
                net: net.clone(),
                ip: ip.parse().map_err(|e: std::net::AddrParseError| bad(e.to_string()))?,
                mac: mac.parse().map_err(|e: crate::model::ModelError| bad(e.to_string()))?,
                expiry: expiry.max(0) as u64,
                hostname,
                client_id,
                kind: if kind == "static" { LeaseKind::Static } else { LeaseKind::Dynamic },
            });
        }
        Ok(out)
    }

    fn claim(&self, kind: &str, value: &str, owner: &str) -> Result<bool, StoreError> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        tx.execute(
            "INSERT INTO claims (kind, value, owner) VALUES (?1, ?2, ?3) ON CONFLICT(kind, value) DO NOTHING",
            params![kind, value, owner],
        )?;
        let holder: String =
            tx.query_row("SELECT owner FROM claims WHERE kind = ?1 AND value = ?2", params![kind, value], |r| {
                r.get(0)
            })?;
        tx.commit()?;
        Ok(holder == owner)
    }

    fn release_claim(&self, kind: &str, value: &str, owner: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .execute("DELETE FROM claims WHERE kind = ?1 AND value = ?2 AND owner = ?3", params![kind, value, owner])?
            > 0)
    }

    fn claims(&self, kind: &str) -> Result<Vec<Claim>, StoreError> {
        let c = self.conn();
        let mut st = c.prepare("SELECT value, owner FROM claims WHERE kind = ?1 ORDER BY value")?;
        let rows =
            st.query_map([kind], |r| Ok(Claim { kind: kind.to_string(), value: r.get(0)?, owner: r.get(1)? }))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn claim_many(&self, claims: &[Claim]) -> Result<Vec<Claim>, StoreError> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let mut taken = Vec::new();
        {
            let mut claim = tx.prepare_cached(
                "INSERT INTO claims (kind, value, owner) VALUES (?1, ?2, ?3) ON CONFLICT(kind, value) DO NOTHING",
            )?;
            let mut holder = tx.prepare_cached("SELECT owner FROM claims WHERE kind = ?1 AND value = ?2")?;
            for c in claims {
                if claim.execute(params![c.kind, c.value, c.owner])? == 0 {
                    let owner: String = holder.query_row(params![c.kind, c.value], |r| r.get(0))?;
                    if owner != c.owner {
                        taken.push(c.clone());
                    }
                }
            }
        }
        tx.commit()?;
        Ok(taken)
    }

    fn write_leases(&self, changes: &[LeaseChange]) -> Result<(), StoreError> {
        let mut c = match &self.leases {
            Some(l) => l.lock().unwrap_or_else(|p| p.into_inner()),
            None => self.conn(),
        };
        let tx = c.transaction()?;
        {
            // A client's other rows go first (by leases_by_mac; `ip = ? OR
            // mac = ?` would scan the table once per lease), then the
            // lease is written over whatever held its address, in place
            // when a row is there (a renewal, the common case under load:
            // one index probe instead of a delete and an insert).
            let mut del_mac = tx.prepare_cached("DELETE FROM leases WHERE net = ?1 AND mac = ?2 AND ip <> ?3")?;
            let mut upsert = tx.prepare_cached(
                "INSERT INTO leases (net, ip, mac, expiry, hostname, client_id, kind) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (net, ip) DO UPDATE SET mac = excluded.mac, expiry = excluded.expiry,
                 hostname = excluded.hostname, client_id = excluded.client_id, kind = excluded.kind",
            )?;
            let mut rm = tx.prepare_cached("DELETE FROM leases WHERE net = ?1 AND ip = ?2")?;
            for ch in changes {
                match ch {
                    LeaseChange::Upsert(l) => {
                        let (ip, mac) = (l.ip.to_string(), l.mac.to_string());
                        del_mac.execute(params![l.net, mac, ip])?;
                        upsert.execute(params![
                            l.net,
                            ip,
                            mac,
                            i64::try_from(l.expiry).unwrap_or(i64::MAX),
                            l.hostname,
                            l.client_id,
                            kind_str(l.kind)
                        ])?;
                    }
                    LeaseChange::Remove { net, ip } => {
                        rm.execute(params![net, ip.to_string()])?;
                    }
                }
            }
        }
        tx.commit()?;
        self.written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Mac;

    /// One network, the same every call (its gateway MAC is random when
    /// validated, so it is pinned here).
    fn net() -> Network {
        let mut n = crate::model::test_network("default", "192.168.122.0/24", "lybr0");
        n.gateway_mac = Some(Mac([0x02, 0x4c, 0x59, 0, 0, 1]));
        n
    }

    fn lease(ip: &str, mac: &str) -> Lease {
        Lease {
            net: "default".into(),
            expiry: 100,
            mac: mac.parse().unwrap(),
            ip: ip.parse().unwrap(),
            hostname: Some("h".into()),
            client_id: None,
            kind: LeaseKind::Dynamic,
        }
    }

    #[test]
    fn dhcp_leases_reach_the_database_file_within_the_sync_interval() {
        let dir = std::env::temp_dir().join(format!("lanyard-store-sync-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = SqliteStore::open(&dir).unwrap();
        let changes: Vec<LeaseChange> = (1..=20)
            .map(|i| LeaseChange::Upsert(lease(&format!("192.168.122.{i}"), &format!("52:54:00:00:00:{i:02x}"))))
            .collect();
        store.write_leases(&changes).unwrap();
        // Seen at once through the main connection (WAL readers).
        assert_eq!(store.leases().unwrap().len(), 20);
        // The lease connection never checkpoints itself; the checkpointer
        // must have copied (and fsync'd) the leases into the database file:
        // a copy of that file alone, without the WAL, holds them.
        std::thread::sleep(LEASE_SYNC_EVERY * 3);
        let copy = dir.join("copy");
        std::fs::create_dir_all(&copy).unwrap();
        std::fs::copy(dir.join("lanyard.db"), copy.join("lanyard.db")).unwrap();
        let alone = Connection::open(copy.join("lanyard.db")).unwrap();
        let n: i64 = alone.query_row("SELECT count(*) FROM leases", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 20, "leases in the database file itself");
        drop(store);
        let store = SqliteStore::open(&dir).unwrap();
        assert_eq!(store.leases().unwrap().len(), 20, "and after reopening");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn database_files_are_private() {
        let dir = std::env::temp_dir().join(format!("lanyard-store-modes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let files = db_files(&dir);
        {
            let s = SqliteStore::open(&dir).unwrap();
            s.put_network(&net()).unwrap();
            for f in &files[..3] {
                assert_eq!(mode(f), 0o600, "new {}", f.display());
            }
            // Loosened while open (an admin's chmod, an old version's files) ...
            for f in &files[..3] {
                std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
            }
        }
        // ... and a stale rollback journal: tightened at the next open.
        std::fs::write(&files[3], b"").unwrap();
        std::fs::set_permissions(&files[3], std::fs::Permissions::from_mode(0o666)).unwrap();
        if files[1].exists() {
            std::fs::set_permissions(&files[1], std::fs::Permissions::from_mode(0o664)).unwrap();
        }
        let s = SqliteStore::open(&dir).unwrap();
        assert_eq!(s.networks().unwrap(), vec![net()]);
        for f in files.iter().filter(|f| f.exists()) {
            assert_eq!(mode(f), 0o600, "reopened {}", f.display());
        }
        assert!(!restrict_mode(&files[0], 0o600).unwrap(), "already private");
        assert!(!restrict_mode(&dir.join("missing"), 0o600).unwrap());
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn round_trips_and_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("lanyard-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        {
            let s = SqliteStore::open(&dir).unwrap();
            s.put_network(&net()).unwrap();
            let port = Port {
                vm: "vm1".into(),
                mac: Mac([0x52, 0x54, 0, 1, 2, 3]),
                ip: Some("192.168.122.2".parse().unwrap()),
                ..crate::model::test_port("0011aabb", "default")
            };
            s.put_ports(std::slice::from_ref(&port)).unwrap();
            s.write_leases(&[LeaseChange::Upsert(lease("192.168.122.50", "52:54:00:00:00:01"))]).unwrap();
        }
        let s = SqliteStore::open(&dir).unwrap();
        assert_eq!(s.networks().unwrap(), vec![net()]);
        assert_eq!(s.ports().unwrap().len(), 1);
        assert_eq!(s.leases().unwrap(), vec![lease("192.168.122.50", "52:54:00:00:00:01")]);
        s.delete_network("default").unwrap();
        assert!(s.ports().unwrap().is_empty() && s.leases().unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn upsert_keeps_one_row_per_client_and_per_address() {
        let s = SqliteStore::in_memory().unwrap();
        s.write_leases(&[
            LeaseChange::Upsert(lease("192.168.122.50", "52:54:00:00:00:01")),
            LeaseChange::Upsert(lease("192.168.122.51", "52:54:00:00:00:01")),
            LeaseChange::Upsert(lease("192.168.122.51", "52:54:00:00:00:02")),
        ])
        .unwrap();
        assert_eq!(s.leases().unwrap(), vec![lease("192.168.122.51", "52:54:00:00:00:02")]);
        s.write_leases(&[LeaseChange::Remove { net: "default".into(), ip: "192.168.122.51".parse().unwrap() }])
            .unwrap();
        assert!(s.leases().unwrap().is_empty());
    }

    /// A database exactly as the lanyard before projects left it: its
    /// tables, one network, two ports and two leases, written as it wrote
    /// them (records without a project).
    fn old_database(dir: &Path) {
        let c = Connection::open(dir.join("lanyard.db")).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch(
            "CREATE TABLE IF NOT EXISTS networks (name TEXT PRIMARY KEY, body TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS ports (id TEXT PRIMARY KEY, net TEXT NOT NULL, body TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS leases (
                 net TEXT NOT NULL,
                 ip TEXT NOT NULL,
                 mac TEXT NOT NULL,
                 expiry INTEGER NOT NULL,
                 hostname TEXT,
                 client_id TEXT,
                 kind TEXT NOT NULL,
                 PRIMARY KEY (net, ip)
             );
             CREATE INDEX IF NOT EXISTS leases_by_mac ON leases (net, mac);",
        )
        .unwrap();
        let mut body = serde_json::to_value(net()).unwrap();
        body.as_object_mut().unwrap().remove("project");
        c.execute("INSERT INTO networks (name, body) VALUES ('default', ?1)", [body.to_string()]).unwrap();
        for (id, mac, ip) in
            [("0011aabb", "52:54:00:01:02:03", "192.168.122.2"), ("0011aabc", "52:54:00:01:02:04", "192.168.122.3")]
        {
            let body = format!(
                r#"{{"id":"{id}","net":"default","vm":"vm-{id}","type":"tap","ifname":"ly{id}","mac":"{mac}","ip":"{ip}","netns":null,"peer_ifname":null,"owner":null,"group":null,"adopted":false,"untagged":true}}"#
            );
            c.execute("INSERT INTO ports (id, net, body) VALUES (?1, 'default', ?2)", [id, body.as_str()]).unwrap();
            c.execute(
                "INSERT INTO leases (net, ip, mac, expiry, hostname, client_id, kind) VALUES ('default', ?1, ?2, 0, ?3, NULL, 'static')",
                params![ip, mac, format!("vm-{id}")],
            )
            .unwrap();
        }
        c.execute_batch(
            "INSERT INTO leases (net, ip, mac, expiry, hostname, client_id, kind) \
             VALUES ('default', '192.168.122.200', '52:54:00:00:00:01', 100, 'h', '01aa', 'dynamic')",
        )
        .unwrap();
        let version: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, 0);
    }

    #[test]
    fn an_old_database_is_migrated_into_the_default_project() {
        let dir = std::env::temp_dir().join(format!("lanyard-store-migrate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        old_database(&dir);
        for round in 0..2 {
            // The second open finds version 1 and changes nothing.
            let s = SqliteStore::open(&dir).unwrap();
            let version: i64 = s.conn().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
            assert_eq!(version, SCHEMA_VERSION, "round {round}");
            let projects = s.projects().unwrap();
            assert_eq!(projects.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["default"], "round {round}");
            assert!(projects[0].created > 1_600_000_000, "{projects:?}");
            assert_eq!(s.networks().unwrap(), vec![net()], "round {round}");
            let ports = s.ports().unwrap();
            assert_eq!(ports.len(), 2, "round {round}");
            for p in &ports {
                assert_eq!((p.project.as_str(), p.net.as_str()), ("default", "default"), "{p:?}");
            }
            assert_eq!(ports[1].ip, Some("192.168.122.3".parse().unwrap()));
            let leases = s.leases().unwrap();
            assert_eq!(leases.len(), 3, "round {round}: {leases:?}");
            let dynamic = leases.iter().find(|l| l.kind == LeaseKind::Dynamic).unwrap();
            assert_eq!(
                (dynamic.ip.to_string().as_str(), dynamic.client_id.as_deref()),
                ("192.168.122.200", Some("01aa"))
            );
            assert!(leases.iter().all(|l| l.net == "default"));
            // The columns and the records agree on the project.
            let c = s.conn();
            let rows: Vec<(String, String)> = c
                .prepare("SELECT project, json_extract(body, '$.project') FROM networks UNION ALL SELECT project, json_extract(body, '$.project') FROM ports")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(rows, vec![("default".to_string(), "default".to_string()); 3]);
        }
        // Writing after the migration: a second project's network with the
        // same name lives beside the first.
        let s = SqliteStore::open(&dir).unwrap();
        let mut blue = net();
        blue.project = "blue".into();
        s.put_project(&Project { name: "blue".into(), description: "b".into(), created: 5 }).unwrap();
        s.put_network(&blue).unwrap();
        assert_eq!(s.networks().unwrap().len(), 2);
        s.delete_network("blue/default").unwrap();
        s.delete_project("blue").unwrap();
        assert_eq!(s.networks().unwrap(), vec![net()]);
        assert_eq!(s.projects().unwrap().len(), 1);
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_newer_database_is_refused_untouched() {
        let dir = std::env::temp_dir().join(format!("lanyard-store-newer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let c = Connection::open(dir.join("lanyard.db")).unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        drop(c);
        let e = SqliteStore::open(&dir).err().expect("a newer schema is refused").to_string();
        assert!(e.contains(&format!("schema version {}", SCHEMA_VERSION + 1)), "{e}");
        let c = Connection::open(dir.join("lanyard.db")).unwrap();
        let tables: i64 = c.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0)).unwrap();
        assert_eq!(tables, 0, "nothing was created");
        drop(c);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_new_database_has_the_default_project() {
        let s = SqliteStore::in_memory().unwrap();
        assert_eq!(s.projects().unwrap().iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["default"]);
        s.put_project(&Project { name: "blue".into(), description: String::new(), created: 1 }).unwrap();
        s.put_project(&Project { name: "blue".into(), description: "again".into(), created: 1 }).unwrap();
        assert_eq!(s.projects().unwrap()[0].description, "again");
    }

    /// A database at version 1 (projects, before tokens) takes migration 2 (and the later ones):
    /// its projects stay, the tokens table is there, and a project's
    /// tokens go with it.
    #[test]
    fn a_version_1_database_gets_tokens() {
        let dir = std::env::temp_dir().join(format!("lanyard-store-v1-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        {
            let mut c = Connection::open(dir.join("lanyard.db")).unwrap();
            let tx = c.transaction().unwrap();
            tx.execute_batch(SCHEMA_V0).unwrap();
            tx.execute_batch(V1_PROJECTS).unwrap();
            tx.execute("INSERT INTO projects (name, description, created) VALUES ('blue', 'b', 5)", []).unwrap();
            tx.pragma_update(None, "user_version", 1).unwrap();
            tx.commit().unwrap();
        }
        let s = SqliteStore::open(&dir).unwrap();
        let version: i64 = s.conn().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(s.projects().unwrap().iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["blue", "default"]);
        let token = |id: &str, project: &str| Token {
            id: id.into(),
            project: project.into(),
            name: format!("label-{id}"),
            hash: format!("hash-{id}"),
            created: 7,
        };
        s.put_token(&token("t1", "blue")).unwrap();
        s.put_token(&token("t2", "default")).unwrap();
        assert!(s.put_token(&Token { id: "t3".into(), ..token("t1", "blue") }).is_err(), "hashes are unique");
        assert_eq!(s.tokens().unwrap(), vec![token("t1", "blue"), token("t2", "default")]);
        assert_eq!(s.token_by_hash("hash-t1").unwrap(), Some(token("t1", "blue")));
        assert_eq!(s.token_by_hash("nope").unwrap(), None);
        s.delete_project("blue").unwrap();
        assert_eq!(s.tokens().unwrap(), vec![token("t2", "default")], "the project's tokens went with it");
        assert!(s.delete_token("t2").unwrap());
        assert!(!s.delete_token("t2").unwrap());
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
