//! Cluster membership: this daemon's registration as a node in etcd, kept
//! alive by a lease, and the node list (`GET /v1/nodes`).
//!
//! A node is the key `/lanyard/v1/nodes/<NAME>`, bound to an etcd lease of
//! [`NODE_TTL`] seconds that a background task keeps alive: a daemon that
//! dies (even by SIGKILL) drops out of the list within the TTL, one that
//! stops cleanly revokes its lease and drops out at once. A node is `up`
//! while its key exists. A single-host daemon (no `--etcd`) lists itself
//! as the one node.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, GetOptions, PutOptions};
use serde::{Deserialize, Serialize};

use crate::store::etcd::EtcdStore;
use crate::store::StoreError;

/// Seconds a node's registration outlives its last keep-alive.
pub const NODE_TTL: i64 = 10;

/// What a node publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeRecord {
    /// `--node NAME`.
    pub name: String,
    /// The first IPv4 address of `--underlay IF` (where VTEPs will meet).
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub underlay_ip: Option<Ipv4Addr>,
    /// Unix time this daemon started.
    pub started: u64,
    /// lanyard's version.
    pub version: String,
}

/// A node as `node list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeView {
    /// Its registration.
    #[serde(flatten)]
    pub record: NodeRecord,
    /// `up` while its registration lives.
    pub state: String,
    /// Whether this is the daemon that answered.
    pub local: bool,
    /// The ports the node carries (this one's include the records that
    /// name no node).
    #[serde(default)]
    pub ports: usize,
}

/// Where the node list comes from.
pub enum Nodes {
    /// A single-host daemon: itself.
    Single(NodeRecord),
    /// A cluster member: the registrations in etcd.
    Cluster {
        /// The store (and its etcd client).
        store: Arc<EtcdStore>,
        /// This daemon's name.
        local: String,
    },
}

impl Nodes {
    /// The nodes, by name. Blocks (on etcd): call from a blocking thread.
    pub fn list(&self) -> Result<Vec<NodeView>, StoreError> {
        match self {
            Nodes::Single(r) => Ok(vec![NodeView { record: r.clone(), state: "up".into(), local: true, ports: 0 }]),
            Nodes::Cluster { store, local } => {
                let prefix = format!("{}/", store.key(&["nodes"]));
                let mut resp = store
                    .call(move |mut c| async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await })?;
                let mut out = Vec::new();
                for kv in resp.take_kvs() {
                    let record: NodeRecord = serde_json::from_slice(kv.value()).map_err(|source| {
                        StoreError::Corrupt { key: String::from_utf8_lossy(kv.key()).into_owned(), source }
                    })?;
                    let local = &record.name == local;
                    out.push(NodeView { record, state: "up".into(), local, ports: 0 });
                }
                out.sort_by(|a, b| a.record.name.cmp(&b.record.name));
                Ok(out)
            }
        }
    }
}

/// This daemon's registration: its lease is kept alive until [`Registration::stop`].
pub struct Registration {
    store: Arc<EtcdStore>,
    lease: Arc<std::sync::atomic::AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

/// Grants a lease and writes the node's key under it; the lease id.
async fn register(mut client: Client, key: String, body: String) -> Result<i64, etcd_client::Error> {
    let lease = client.lease_grant(NODE_TTL, None).await?.id();
    client.put(key, body, Some(PutOptions::new().with_lease(lease))).await?;
    Ok(lease)
}

/// Keeps `lease` alive until it is lost (expired: returns Ok) or etcd
/// fails (Err); each round bounded by the TTL.
async fn keep_alive(client: &mut Client, lease: i64) -> Result<(), etcd_client::Error> {
    let ttl = Duration::from_secs(NODE_TTL as u64);
    let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
    loop {
        keeper.keep_alive().await?;
        match tokio::time::timeout(ttl, stream.message()).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => {}
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(etcd_client::Error::LeaseKeepAliveError("no answer within the TTL".into())),
        }
        tokio::time::sleep(ttl / 3).await;
    }
}

impl Registration {
    /// Registers `record` (replacing the key of an earlier run of this
    /// node, whose lease may not have run out yet) and starts keeping it alive.
    pub fn start(store: Arc<EtcdStore>, record: &NodeRecord) -> Result<Registration, StoreError> {
        let key = store.key(&["nodes", &record.name]);
        let body = serde_json::to_string(record).expect("a node record serializes");
        let (k, b) = (key.clone(), body.clone());
        let first = store.call(move |c| register(c, k, b))?;
        let lease = Arc::new(std::sync::atomic::AtomicI64::new(first));
        let (client, held) = (store.client(), lease.clone());
        let task = store.spawn(async move {
            let mut client = client;
            loop {
                let id = held.load(std::sync::atomic::Ordering::SeqCst);
                match keep_alive(&mut client, id).await {
                    Ok(()) => tracing::warn!("the node's etcd lease ran out; registering again"),
                    Err(e) => tracing::warn!("keeping the node's etcd lease alive: {e}; retrying"),
                }
                // The lease may still live (a broken stream) or not: a new
                // lease and key either way, once etcd answers again.
                tokio::time::sleep(Duration::from_secs(1)).await;
                match tokio::time::timeout(
                    Duration::from_secs(NODE_TTL as u64),
                    register(client.clone(), key.clone(), body.clone()),
                )
                .await
                {
                    Ok(Ok(new)) => {
                        let old = held.swap(new, std::sync::atomic::Ordering::SeqCst);
                        let _ = client.lease_revoke(old).await;
                        tracing::info!("node registered again in etcd");
                    }
                    Ok(Err(e)) => tracing::warn!("registering the node in etcd: {e}"),
                    Err(_) => tracing::warn!("registering the node in etcd: no answer"),
                }
            }
        });
        Ok(Registration { store, lease, task })
    }

    /// Stops keeping the registration alive and revokes its lease, so the
    /// node leaves the list now rather than after the TTL. Blocks (on etcd).
    pub fn stop(self) {
        self.task.abort();
        let id = self.lease.load(std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = self.store.call(move |mut c| async move { c.lease_revoke(id).await }) {
            tracing::warn!("revoking the node's etcd lease: {e}; it runs out in {NODE_TTL} s");
        }
    }
}

/// The first IPv4 address of interface `ifname` in this network namespace.
pub fn first_ipv4(ifname: &str) -> std::io::Result<Option<Ipv4Addr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list it allocates into `head`; it is
    // freed below with freeifaddrs, exactly once.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, which
        // stays valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_name.is_null() || ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: ifa_addr points to a sockaddr of the list.
        let family = unsafe { (*ifa.ifa_addr).sa_family };
        if name.to_bytes() == ifname.as_bytes() && i32::from(family) == libc::AF_INET {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            break;
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once; no reference
    // into the list outlives this call.
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}

/// Whether interface `ifname` exists in this network namespace.
pub fn interface_exists(ifname: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(ifname).exists()
}

/// How often a cluster member looks at its DHCP blocks.
const BLOCKS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps this member's DHCP blocks topped up ([`crate::engine::blocks`])
/// until aborted: a look every second, a store read only when a network
/// has no block or runs low. A failure (etcd away) is logged when it
/// starts and when it ends, not every second; the blocks held keep
/// serving.
pub fn keep_dhcp_blocks(
    shared: std::sync::Arc<std::sync::Mutex<crate::engine::Engine>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            tokio::time::sleep(BLOCKS_EVERY).await;
            let engine = shared.clone();
            let result = tokio::task::spawn_blocking(move || crate::engine::blocks::top_up(&engine)).await;
            match result {
                Ok(Ok(())) if failing => {
                    failing = false;
                    tracing::info!("DHCP blocks can be claimed again");
                }
                Ok(Ok(())) => {}
                Ok(Err(e)) if !failing => {
                    failing = true;
                    tracing::warn!("cannot claim DHCP blocks (the blocks held keep serving): {e}");
                }
                Ok(Err(_)) => {}
                Err(e) => tracing::error!("the DHCP block task failed: {e}"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_127_0_0_1() {
        assert_eq!(first_ipv4("lo").unwrap(), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(first_ipv4("no-such-if0").unwrap(), None);
    }
}
