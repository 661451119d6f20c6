//! The embedded single-host store: one SQLite file in WAL mode.
//!
//! Records are kept as JSON documents keyed by name/id, so adding a field to
//! the model needs no migration; leases are a real table because the DHCP
//! server writes them in batches and the CLI lists them.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection};
use serde::de::DeserializeOwned;

use super::{LeaseChange, Store, StoreError};
use crate::model::{Lease, LeaseKind, Network, Port};

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
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
        // synchronous=FULL makes every commit durable before the DHCP ACK
        // that depends on it is sent. Group commit amortises the fsync.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        // WAL checkpoints stay SQLite's own (every 1,000 pages, inside a
        // commit): measured against a separate checkpointer thread with
        // PASSIVE checkpoints every 500 ms, the built-in one gave 3,200 and
        // 4,800 DHCP exchanges/s at the knee against 300 and 2,400
        // (docs/performance.md).
        // The WAL and shared-memory files exist now; SQLite made them with
        // the database's mode, which this checks.
        make_private(dir)?;
        Ok(SqliteStore { conn: Mutex::new(conn) })
    }

    /// An in-memory store for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteStore { conn: Mutex::new(conn) })
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

fn kind_str(k: LeaseKind) -> &'static str {
    match k {
        LeaseKind::Static => "static",
        LeaseKind::Dynamic => "dynamic",
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

    fn networks(&self) -> Result<Vec<Network>, StoreError> {
        let c = self.conn();
        let mut st = c.prepare("SELECT name, body FROM networks ORDER BY name")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        rows.map(|r| {
            let (k, b) = r?;
            decode(&k, &b)
        })
        .collect()
    }

    fn put_network(&self, net: &Network) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO networks (name, body) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET body = excluded.body",
            params![net.name, encode(net)],
        )?;
        Ok(())
    }

    fn delete_network(&self, name: &str) -> Result<(), StoreError> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        tx.execute("DELETE FROM leases WHERE net = ?1", [name])?;
        tx.execute("DELETE FROM ports WHERE net = ?1", [name])?;
        tx.execute("DELETE FROM networks WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(())
    }

    fn ports(&self) -> Result<Vec<Port>, StoreError> {
        let c = self.conn();
        let mut st = c.prepare("SELECT id, body FROM ports ORDER BY rowid")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        rows.map(|r| {
            let (k, b) = r?;
            decode(&k, &b)
        })
        .collect()
    }

    fn put_ports(&self, ports: &[Port]) -> Result<(), StoreError> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO ports (id, net, body) VALUES (?1, ?2, ?3) ON CONFLICT(id) DO UPDATE SET net = excluded.net, body = excluded.body",
            )?;
            for port in ports {
                st.execute(params![port.id, port.net, encode(port)])?;
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

    fn write_leases(&self, changes: &[LeaseChange]) -> Result<(), StoreError> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        {
            // Two statements, not one with OR: each uses an index (the
            // primary key, leases_by_mac), where `ip = ? OR mac = ?` scans
            // the table once per lease.
            let mut del_ip = tx.prepare_cached("DELETE FROM leases WHERE net = ?1 AND ip = ?2")?;
            let mut del_mac = tx.prepare_cached("DELETE FROM leases WHERE net = ?1 AND mac = ?2")?;
            let mut ins = tx.prepare_cached(
                "INSERT INTO leases (net, ip, mac, expiry, hostname, client_id, kind) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut rm = tx.prepare_cached("DELETE FROM leases WHERE net = ?1 AND ip = ?2")?;
            for ch in changes {
                match ch {
                    LeaseChange::Upsert(l) => {
                        let (ip, mac) = (l.ip.to_string(), l.mac.to_string());
                        del_ip.execute(params![l.net, ip])?;
                        del_mac.execute(params![l.net, mac])?;
                        ins.execute(params![
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Mac, PortType};

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
                id: "0011aabb".into(),
                net: "default".into(),
                vm: "vm1".into(),
                port_type: PortType::Tap,
                ifname: "ly0011aabb".into(),
                mac: Mac([0x52, 0x54, 0, 1, 2, 3]),
                ip: Some("192.168.122.2".parse().unwrap()),
                netns: None,
                peer_ifname: None,
                owner: None,
                group: None,
                adopted: false,
                trunk: Vec::new(),
                untagged: true,
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
}
