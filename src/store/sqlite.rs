//! The embedded single-host store: one SQLite file in WAL mode.
//!
//! Records are kept as JSON documents keyed by network key / port id, so
//! adding a field to the model needs no migration; leases are a real table
//! because the DHCP server writes them in batches and the CLI lists them.
//! Changes of the tables themselves are numbered migrations
//! (`PRAGMA user_version`, see [`SCHEMA_VERSION`]).

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection};
use serde::de::DeserializeOwned;

use super::lease_journal::{LeaseJournal, FOLDING, FOLD_AT, FOLD_AT_LATEST, JOURNAL, SYNC_EVERY};
use super::{port_claims, Claim, DocumentChange, LeaseChange, Store, StoreError, CLAIM_IP, CLAIM_MAC};
use crate::auth::Token;
use crate::model::{Lease, LeaseKind, Network, Port, Project};

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// Where DHCP leases go first (None in memory, where leases go straight
    /// into the table): see [`super::lease_journal`].
    leases: Option<Arc<LeaseLog>>,
    /// The `lease-sync` thread, which ends when this is dropped.
    _lease_sync: Option<std::sync::mpsc::Sender<()>>,
}

/// The lease journal and the connection that folds it into the table.
struct LeaseLog {
    journal: LeaseJournal,
    /// `synchronous=FULL`: a fold is on disk when it returns.
    conn: Mutex<Connection>,
}

fn journal_err(e: std::io::Error) -> StoreError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        StoreError::DiskFull
    } else {
        StoreError::Journal(e)
    }
}

impl LeaseLog {
    /// Commits what the journal holds to the leases table (fsync'd), then
    /// empties the journal of it; appends go on meanwhile.
    fn fold(&self) -> Result<(), StoreError> {
        let folding = self.journal.begin_fold().map_err(journal_err)?;
        if folding.is_empty() {
            return Ok(());
        }
        let mut c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = c.transaction()?;
        apply_lease_changes(&tx, &folding)?;
        tx.commit()?;
        self.journal.end_fold(folding).map_err(journal_err)
    }

    /// Until `stop`'s sender is dropped: every [`SYNC_EVERY`], folds when
    /// a fold is due (the server was quiet for the whole interval, or
    /// [`FOLD_AT_LATEST`] passed, or [`FOLD_AT`] changes wait) and
    /// otherwise puts the journal on disk.
    fn keep_folding(self: Arc<Self>, stop: std::sync::mpsc::Receiver<()>) {
        // The fold is bulk work that no reply waits for (leases are durable
        // in the journal before their ACK), but under a boot storm it is
        // tens of milliseconds of CPU a time, and at the default priority
        // the scheduler gave it whole slices while the DHCP receive loop
        // and the lease writer waited: it set the p99 of replies
        // (docs/performance.md, run 10). The lowest priority lets it run
        // in the gaps. Linux nice values are per thread. A foreground fold
        // (a lease listing, a port's release) that waits for this one
        // waits longer only while the CPUs are full.
        // SAFETY: setpriority on this thread's own id; nothing is borrowed.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
        let mut failing = false;
        let (mut seen, _) = self.journal.counts();
        let mut last_fold = std::time::Instant::now();
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(SYNC_EVERY) {
            let (appended, waiting) = self.journal.counts();
            let quiet = appended == seen;
            seen = appended;
            let due = waiting > 0 && (quiet || waiting >= FOLD_AT || last_fold.elapsed() >= FOLD_AT_LATEST);
            let result = if due {
                last_fold = std::time::Instant::now();
                self.fold()
            } else if !quiet {
                self.journal.sync().map_err(journal_err)
            } else {
                Ok(())
            };
            match result {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("DHCP leases are written to disk again");
                }
                Ok(()) => {}
                // The journal keeps everything; one line, not one per round.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!("DHCP leases stay in the journal, retried every {SYNC_EVERY:?}: {e}");
                }
                Err(_) => {}
            }
        }
        // A last fold, so a clean stop leaves an empty journal.
        let _ = self.fold();
    }
}

/// Writes lease changes in order: a client's other rows go first (by
/// leases_by_mac; `ip = ? OR mac = ?` would scan the table once per lease),
/// then the lease is written over whatever held its address, in place when
/// a row is there (a renewal: one index probe instead of a delete and an
/// insert).
fn apply_lease_changes(tx: &rusqlite::Transaction<'_>, changes: &[LeaseChange]) -> Result<(), StoreError> {
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
    Ok(())
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
fn db_files(dir: &Path) -> [PathBuf; 6] {
    ["lanyard.db", "lanyard.db-wal", "lanyard.db-shm", "lanyard.db-journal", JOURNAL, FOLDING].map(|f| dir.join(f))
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
        // DHCP leases go to the journal, and from it into the table: see
        // store::lease_journal. What a previous run left there is
        // committed first.
        let (journal, left) = LeaseJournal::open(dir).map_err(journal_err)?;
        let fold_conn = Connection::open(&path).map_err(open_err)?;
        fold_conn.pragma_update(None, "synchronous", "FULL").map_err(open_err)?;
        fold_conn.busy_timeout(Duration::from_secs(5)).map_err(open_err)?;
        if !left.is_empty() {
            let tx = conn.transaction()?;
            apply_lease_changes(&tx, &left)?;
            tx.commit()?;
            tracing::info!("{} lease changes from the journal committed to the state database", left.len());
        }
        journal.recovered().map_err(journal_err)?;
        let log = Arc::new(LeaseLog { journal, conn: Mutex::new(fold_conn) });
        let (stop, stopped) = std::sync::mpsc::channel();
        let folder = log.clone();
        std::thread::Builder::new()
            .name("lease-sync".into())
            .spawn(move || folder.keep_folding(stopped))
            .map_err(journal_err)?;
        // The WAL, shared-memory and journal files exist now; SQLite made
        // its files with the database's mode, which this checks.
        make_private(dir)?;
        Ok(SqliteStore { conn: Mutex::new(conn), leases: Some(log), _lease_sync: Some(stop) })
    }

    /// An in-memory store for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        let mut conn = Connection::open_in_memory()?;
        migrate(&mut conn)?;
        Ok(SqliteStore { conn: Mutex::new(conn), leases: None, _lease_sync: None })
    }

    /// Brings the leases table up to date with the journal, before the
    /// table is read or rewritten outside it (so an older journal record
    /// is never replayed over a newer write).
    fn fold_leases(&self) -> Result<(), StoreError> {
        self.leases.as_ref().map_or(Ok(()), |l| l.fold())
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
        self.fold_leases()?;
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
        self.fold_leases()?;
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
        self.fold_leases()?;
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

    fn lease_writes_are_appends(&self) -> bool {
        self.leases.is_some()
    }

    fn write_leases(&self, changes: &[LeaseChange]) -> Result<(), StoreError> {
        if let Some(log) = &self.leases {
            return log.journal.append(changes).map_err(journal_err);
        }
        let mut c = self.conn();
        let tx = c.transaction()?;
        apply_lease_changes(&tx, changes)?;
        tx.commit()?;
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
    fn dhcp_leases_are_folded_into_the_database_once_the_server_is_quiet() {
        let dir = std::env::temp_dir().join(format!("lanyard-store-fold-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = SqliteStore::open(&dir).unwrap();
        let changes: Vec<LeaseChange> = (1..=20)
            .map(|i| LeaseChange::Upsert(lease(&format!("192.168.122.{i}"), &format!("52:54:00:00:00:{i:02x}"))))
            .collect();
        store.write_leases(&changes).unwrap();
        assert!(std::fs::metadata(dir.join(JOURNAL)).unwrap().len() > 0, "in the journal at once");
        // The lease-sync thread must have committed them to the database
        // (WAL and database file, without the journal) and emptied the
        // journal: one interval sees the appends, the next is quiet.
        std::thread::sleep(SYNC_EVERY * 4);
        assert_eq!(std::fs::metadata(dir.join(JOURNAL)).unwrap().len(), 0, "the journal is folded");
        let copy = dir.join("copy");
        std::fs::create_dir_all(&copy).unwrap();
        for f in ["lanyard.db", "lanyard.db-wal"] {
            std::fs::copy(dir.join(f), copy.join(f)).unwrap();
        }
        let alone = Connection::open(copy.join("lanyard.db")).unwrap();
        let n: i64 = alone.query_row("SELECT count(*) FROM leases", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 20, "leases in the database itself");
        drop(store);
        let store = SqliteStore::open(&dir).unwrap();
        assert_eq!(store.leases().unwrap().len(), 20, "and after reopening");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn no_fold_runs_while_leases_keep_coming() {
        let dir = std::env::temp_dir().join(format!("lanyard-store-busy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = SqliteStore::open(&dir).unwrap();
        // A lease every 100 ms for five fold intervals: the journal only
        // grows (a fold would empty it), and is folded once they stop.
        let mut last = 0;
        for i in 1..=(5 * SYNC_EVERY.as_millis() / 100) as u32 {
            let ip = format!("192.168.122.{i}");
            store.write_leases(&[LeaseChange::Upsert(lease(&ip, &format!("52:54:00:00:00:{i:02x}")))]).unwrap();
            let len = std::fs::metadata(dir.join(JOURNAL)).unwrap().len();
            assert!(len > last, "the journal was folded while leases kept coming ({len} after {last})");
            last = len;
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(SYNC_EVERY * 4);
        assert_eq!(std::fs::metadata(dir.join(JOURNAL)).unwrap().len(), 0, "folded once they stopped");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn leases_left_in_the_journal_are_there_after_a_restart_and_reads_see_them_at_once() {
        let dir = std::env::temp_dir().join(format!("lanyard-store-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = SqliteStore::open(&dir).unwrap();
        store.write_leases(&[LeaseChange::Upsert(lease("192.168.122.7", "52:54:00:00:00:07"))]).unwrap();
        assert_eq!(store.leases().unwrap().len(), 1, "a read folds first");
        store.write_leases(&[LeaseChange::Upsert(lease("192.168.122.8", "52:54:00:00:00:08"))]).unwrap();
        // As if the daemon died before the next fold: the thread's last
        // fold is skipped by leaking the store.
        std::mem::forget(store);
        let again = SqliteStore::open(&dir).unwrap();
        let ips: Vec<String> = again.leases().unwrap().iter().map(|l| l.ip.to_string()).collect();
        assert_eq!(ips, vec!["192.168.122.7", "192.168.122.8"]);
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
