//! The store: where desired state (networks, ports) and leases are kept.
//!
//! [`Store`] is the seam between lanyard and its database. The single-host
//! default is [`sqlite::SqliteStore`], an embedded SQLite file in WAL mode with
//! one transaction per change; a multi-host store (etcd) implements the same
//! trait. Nothing above this module knows which one it talks to.

#[cfg(test)]
pub(crate) mod contract;
pub mod etcd;
pub mod lease_journal;
pub mod sqlite;

use std::net::Ipv4Addr;

use crate::auth::Token;
use crate::model::{Lease, Network, Port, Project};

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened.
    #[error("cannot open the state database {path}: {source}")]
    Open {
        /// Database path.
        path: String,
        /// Cause.
        source: rusqlite::Error,
    },
    /// A database file's mode could not be checked or set.
    #[error("cannot make {path} private to root: {source}")]
    Mode {
        /// File path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A query or commit failed.
    #[error("state database: {0}")]
    Db(rusqlite::Error),
    /// The DHCP lease journal could not be written or read.
    #[error("the lease journal in the state directory: {0}")]
    Journal(std::io::Error),
    /// The disk holding the state database is full: nothing was written.
    #[error("the state database's disk is full, so nothing was changed: free space in the state directory and retry")]
    DiskFull,
    /// The database was written by a newer lanyard, whose schema this one
    /// does not know: nothing is read or changed.
    #[error("the state database has schema version {found}, newer than this lanyard's {supported}: run the lanyard that wrote it (or a newer one)")]
    Newer {
        /// The database's version.
        found: i64,
        /// The newest this build knows.
        supported: i64,
    },
    /// A stored record could not be decoded (written by an incompatible version?).
    #[error("stored record {key} is unreadable: {source}")]
    Corrupt {
        /// Record key.
        key: String,
        /// Cause.
        source: serde_json::Error,
    },
    /// The cluster store (etcd) did not answer in time: nothing was written.
    #[error("etcd at {endpoints} is unreachable, so writes are refused (nothing was changed): retry when it is back")]
    Unavailable {
        /// The etcd endpoints, comma-separated.
        endpoints: String,
    },
    /// etcd answered with a refusal or could not be used.
    #[error("cluster store: {0}")]
    Etcd(String),
    /// A record that must be unique already exists; nothing was written.
    #[error("{0} already exists")]
    Exists(String),
    /// A value a write claims ([`Store::put_ports`]) is held by another
    /// owner (another port, possibly created through another host):
    /// nothing was written.
    #[error("{kind} {value} is taken (by {holder})")]
    Claimed {
        /// The claim's kind ([`CLAIM_IP`], [`CLAIM_MAC`]).
        kind: String,
        /// The value.
        value: String,
        /// Who holds it.
        holder: String,
    },
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            StoreError::DiskFull
        } else {
            StoreError::Db(e)
        }
    }
}

/// One change to the lease table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LeaseChange {
    /// Insert or replace the lease for its address (and drop any other row of the same client).
    Upsert(Lease),
    /// Remove the lease on `ip` in `net`.
    Remove {
        /// Network name.
        net: String,
        /// Address.
        ip: Ipv4Addr,
    },
}

/// One change to the documents ([`Store::documents`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentChange {
    /// Insert or replace the document of `kind` under `key`.
    Put {
        /// The kind of record (e.g. [`FIP_POOLS`]).
        kind: &'static str,
        /// Its key within the kind.
        key: String,
        /// The JSON body.
        body: String,
    },
    /// Remove the document of `kind` under `key` (nothing when absent).
    Delete {
        /// The kind of record.
        kind: &'static str,
        /// Its key within the kind.
        key: String,
    },
}

impl DocumentChange {
    /// Puts `value` as JSON under `key`.
    pub fn put<T: serde::Serialize>(kind: &'static str, key: impl Into<String>, value: &T) -> DocumentChange {
        let body = serde_json::to_string(value).expect("records serialize");
        DocumentChange::Put { kind, key: key.into(), body }
    }

    /// Deletes the document under `key`.
    pub fn delete(kind: &'static str, key: impl Into<String>) -> DocumentChange {
        DocumentChange::Delete { kind, key: key.into() }
    }
}

/// Documents: floating IP pools, by name.
pub const FIP_POOLS: &str = "fip-pools";
/// Documents: floating IPs, by address.
pub const FLOATING_IPS: &str = "floating-ips";
/// Documents: inter-project grants, by `FROM>TO>WHAT`.
pub const GRANTS: &str = "grants";
/// Documents: static DHCP hosts (MACs that are not ports), by `NET/MAC`.
pub const HOSTS: &str = "hosts";
/// Documents: port forwards, by `NET/PROTO/ADDRESS/PORT`
/// ([`crate::model::forwards::PortForward::doc_key`]).
pub const FORWARDS: &str = "port-forwards";

/// Claims: a port's fixed IP, as `NET/IP` (unique per network).
pub const CLAIM_IP: &str = "ip";
/// Claims: a port's MAC. Unique across all networks, not per network: the
/// engine has always refused a MAC already used by any port (a guest's MAC
/// names it in DHCP leases, the anti-spoofing sets and, with VXLAN, the
/// FDB of every host), and one rule on every host keeps that true for
/// the cluster.
pub const CLAIM_MAC: &str = "mac";

/// One held value: `owner` holds `value` of `kind`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Claim {
    /// The kind ([`CLAIM_IP`], [`CLAIM_MAC`], ...).
    pub kind: String,
    /// The value.
    pub value: String,
    /// The holder (for a port's values, the port's id).
    pub owner: String,
}

/// The values a port holds while it exists: its fixed IP in its network
/// and its MAC, both owned by the port's id.
pub fn port_claims(p: &Port) -> Vec<Claim> {
    let mut out = Vec::with_capacity(2);
    if let Some(ip) = p.ip {
        out.push(Claim { kind: CLAIM_IP.into(), value: format!("{}/{ip}", p.net), owner: p.id.clone() });
    }
    out.push(Claim { kind: CLAIM_MAC.into(), value: p.mac.to_string(), owner: p.id.clone() });
    out
}

/// A change to desired state made by any writer, as the cluster store's
/// watch reports it (the mirror of a multi-host daemon follows these).
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The network with this key is now the record, or gone (None).
    Network(String, Option<Network>),
    /// The port with this id is now the record, or gone (None).
    Port(String, Option<Port>),
    /// The project with this name is now the record, or gone (None).
    Project(String, Option<Project>),
    /// The document of this kind and key ([`Store::documents`]) is now
    /// this JSON body, or gone (None).
    Document {
        /// Its kind ([`FIP_POOLS`], ...).
        kind: String,
        /// Its key within the kind.
        key: String,
        /// The body.
        body: Option<String>,
    },
    /// Some other record of desired state (a setting, a record that does
    /// not decode) changed: only a read of the store tells what it means.
    Other,
    /// A node registered, changed its registration or left: the overlay's
    /// tunnels ([`Store::node_addresses`]) may end elsewhere now.
    Nodes,
}

/// The documents of `kind`, decoded.
pub fn load<T: serde::de::DeserializeOwned>(store: &dyn Store, kind: &str) -> Result<Vec<T>, StoreError> {
    store
        .documents(kind)?
        .into_iter()
        .map(|(key, body)| {
            serde_json::from_str(&body).map_err(|source| StoreError::Corrupt { key: format!("{kind}/{key}"), source })
        })
        .collect()
}

/// Persistent state. Implementations must make each call atomic.
///
/// Networks are kept by their key ([`Network::key`]), which holds their
/// project; ports and leases name their network by that key.
pub trait Store: Send + Sync {
    /// The documents of one kind (records that need no table of their
    /// own: floating IP pools, floating IPs, grants), as (key, JSON body),
    /// by key.
    fn documents(&self, kind: &str) -> Result<Vec<(String, String)>, StoreError>;
    /// Applies document changes in one transaction.
    fn write_documents(&self, changes: &[DocumentChange]) -> Result<(), StoreError>;
    /// A setting (a JSON document) by key, None when never set.
    fn setting(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Sets a setting.
    fn put_setting(&self, key: &str, body: &str) -> Result<(), StoreError>;
    /// All projects.
    fn projects(&self) -> Result<Vec<Project>, StoreError>;
    /// Inserts or replaces a project.
    fn put_project(&self, project: &Project) -> Result<(), StoreError>;
    /// Deletes a project (the caller has made sure it owns nothing) and,
    /// in the same transaction, its access tokens.
    fn delete_project(&self, name: &str) -> Result<(), StoreError>;
    /// All access tokens (their hashes; secrets are never stored), by
    /// project and creation.
    fn tokens(&self) -> Result<Vec<Token>, StoreError>;
    /// The token whose secret hashes to `hash`, if any.
    fn token_by_hash(&self, hash: &str) -> Result<Option<Token>, StoreError>;
    /// Inserts a token.
    fn put_token(&self, token: &Token) -> Result<(), StoreError>;
    /// Deletes a token by id; whether there was one.
    fn delete_token(&self, id: &str) -> Result<bool, StoreError>;
    /// All networks.
    fn networks(&self) -> Result<Vec<Network>, StoreError>;
    /// Inserts or replaces a network.
    fn put_network(&self, net: &Network) -> Result<(), StoreError>;
    /// Deletes a network (by key) with its ports and leases, and releases
    /// its ports' claims ([`port_claims`]).
    fn delete_network(&self, key: &str) -> Result<(), StoreError>;
    /// All ports.
    fn ports(&self) -> Result<Vec<Port>, StoreError>;
    /// Inserts or replaces ports and claims their values ([`port_claims`],
    /// owned by each port's id), all in one transaction: when any value is
    /// held by another owner nothing is written and the call fails with
    /// [`StoreError::Claimed`]. A port's own claims are claimed again
    /// harmlessly (an update, a restore).
    fn put_ports(&self, ports: &[Port]) -> Result<(), StoreError>;
    /// Deletes a port and its lease, and releases its claims.
    fn delete_port(&self, port: &Port) -> Result<(), StoreError>;
    /// Deletes a port like [`Store::delete_port`] and, in the same
    /// transaction where the store has them, keeps `hold`: the lease its
    /// guest may still hold, now the old MAC's dynamic lease until it ends.
    fn release_port(&self, port: &Port, hold: Option<&Lease>) -> Result<(), StoreError> {
        self.delete_port(port)?;
        match hold {
            Some(l) => self.write_leases(&[LeaseChange::Upsert(l.clone())]),
            None => Ok(()),
        }
    }
    /// All leases of all networks.
    fn leases(&self) -> Result<Vec<Lease>, StoreError>;
    /// Applies a batch of lease changes (the DHCP server's group commit):
    /// all or none, and when it returns they survive a crash of the daemon
    /// (SQLite: in its lease journal, on disk within a fold interval).
    fn write_leases(&self, changes: &[LeaseChange]) -> Result<(), StoreError>;
    /// Whether [`write_leases`](Store::write_leases) is one `write` to a
    /// local file: no disk flush and no network round trip to wait for, a
    /// few microseconds. Then the DHCP server writes its leases on its own
    /// thread, where a hand-off to the lease writer thread would cost more
    /// than the write (see [`crate::dhcp::writer`]).
    fn lease_writes_are_appends(&self) -> bool {
        false
    }
    /// Claims `value` of `kind` (a fixed IP as `NET/IP`, a MAC, a VNI, a
    /// floating IP) for `owner` unless someone else holds it; whether
    /// `owner` holds it now. Create-if-absent: of any number of concurrent
    /// claims of one value, on any number of hosts, exactly one wins.
    fn claim(&self, kind: &str, value: &str, owner: &str) -> Result<bool, StoreError>;
    /// Gives up `owner`'s claim of `value`; whether it held it (a claim of
    /// another owner is left alone).
    fn release_claim(&self, kind: &str, value: &str, owner: &str) -> Result<bool, StoreError>;
    /// Every claim of `kind`, by value.
    fn claims(&self, kind: &str) -> Result<Vec<Claim>, StoreError>;
    /// Claims each of `claims` that nobody holds; returns those held by
    /// another owner (left as they are). The start-up backfill of claims
    /// for ports written before claims existed; a store that can should do
    /// it in one transaction.
    fn claim_many(&self, claims: &[Claim]) -> Result<Vec<Claim>, StoreError> {
        let mut taken = Vec::new();
        for c in claims {
            if !self.claim(&c.kind, &c.value, &c.owner)? {
                taken.push(c.clone());
            }
        }
        Ok(taken)
    }
    /// The underlay addresses of the cluster's registered nodes, by node
    /// name (nodes that registered none are left out): where the VXLAN
    /// tunnels of each node end. A single host's store has no nodes.
    fn node_addresses(&self) -> Result<std::collections::BTreeMap<String, std::net::Ipv4Addr>, StoreError> {
        Ok(std::collections::BTreeMap::new())
    }
}
