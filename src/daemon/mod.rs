//! Daemon start-up and shutdown: open the store, reconcile the kernel of the
//! namespace the process runs in, keep it healed ([`healer`]), serve the API
//! until SIGTERM/SIGINT.
//! Shutdown leaves every kernel object in place, so VMs keep their network
//! while the daemon restarts.

pub mod cluster;
pub mod healer;
pub mod mirror;
pub mod tls;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::net::UnixListener;

use crate::dataplane::linux::LinuxKernel;
use crate::dhcp::writer::LeaseWriter;
use crate::engine::host::SystemHost;
use crate::engine::services::NetworkServices;
use crate::engine::{Engine, EngineError, Parts};
use crate::store::etcd::EtcdStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};

/// The daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A directory or the socket could not be prepared.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Path involved.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Another daemon answers on the socket.
    #[error("another lanyard daemon is already serving {0}; stop it first or pick another --socket")]
    AlreadyRunning(String),
    /// The state database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Loading state failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// An option is wrong.
    #[error("{0}")]
    Usage(String),
    /// The TLS listener could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// How the daemon serves its API, beyond the socket and state directory.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The group the API socket is given to (`--socket-group`).
    pub socket_group: Option<String>,
    /// The TLS listener for remote clients (`--listen`).
    pub listen: Option<tls::ListenOptions>,
    /// Cluster membership (`--etcd`), None for a single host.
    pub cluster: Option<ClusterOptions>,
}

/// `--etcd URL[,URL...] --node NAME [--underlay IF]`.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// etcd's client URLs.
    pub endpoints: Vec<String>,
    /// This node's name in the cluster.
    pub node: String,
    /// The interface whose first IPv4 address this node publishes.
    pub underlay: Option<String>,
}

impl ClusterOptions {
    /// Checks the cluster flags: `--node` and `--underlay` belong to
    /// `--etcd`, which needs `--node`; URLs are `http://HOST:PORT`.
    pub fn new(
        etcd: Vec<String>,
        node: Option<String>,
        underlay: Option<String>,
    ) -> Result<Option<ClusterOptions>, DaemonError> {
        if etcd.is_empty() {
            if node.is_some() || underlay.is_some() {
                return Err(DaemonError::Usage(
                    "--node and --underlay are for a cluster member: add --etcd URL".into(),
                ));
            }
            return Ok(None);
        }
        let node =
            node.ok_or_else(|| DaemonError::Usage("--etcd needs --node NAME: this host's name in the cluster".into()))?;
        // A node name is a key segment in etcd and a column in tables:
        // the rule of every lanyard name (letters, digits, '-', '_', '.').
        let ok = |n: &str| {
            n.len() <= 63
                && n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !ok(&node) {
            return Err(DaemonError::Usage(format!(
                "--node {node:?}: use 1 to 63 letters, digits, '-', '_' or '.', beginning with a letter or a digit"
            )));
        }
        if let Some(i) = &underlay {
            crate::model::validate_ifname("underlay", i).map_err(|e| DaemonError::Usage(format!("--underlay: {e}")))?;
        }
        for url in &etcd {
            let rest = url.strip_prefix("http://").ok_or_else(|| {
                DaemonError::Usage(format!("--etcd {url:?}: give etcd's client URL as http://HOST:PORT"))
            })?;
            if rest.is_empty() || rest.contains('/') || rest.chars().any(char::is_whitespace) {
                return Err(DaemonError::Usage(format!("--etcd {url:?}: give etcd's client URL as http://HOST:PORT")));
            }
        }
        Ok(Some(ClusterOptions { endpoints: etcd, node, underlay }))
    }
}

impl Options {
    /// Options from the command line: `--listen` needs `--tls-cert` and
    /// `--tls-key` (TCP is served with TLS only), and they need it.
    pub fn new(
        socket_group: Option<String>,
        listen: Option<std::net::SocketAddr>,
        cert: Option<std::path::PathBuf>,
        key: Option<std::path::PathBuf>,
    ) -> Result<Options, DaemonError> {
        let listen = match (listen, cert, key) {
            (Some(addr), Some(cert), Some(key)) => Some(tls::ListenOptions { addr, cert, key }),
            (Some(addr), _, _) => {
                return Err(DaemonError::Usage(format!(
                    "--listen {addr} needs --tls-cert PEM and --tls-key PEM: the TCP listener serves TLS only"
                )))
            }
            (None, None, None) => None,
            (None, _, _) => {
                return Err(DaemonError::Usage("--tls-cert and --tls-key are for --listen ADDR:PORT".into()))
            }
        };
        Ok(Options { socket_group, listen, cluster: None })
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DaemonError + 'a {
    move |source| DaemonError::Io { what, path: path.display().to_string(), source }
}

/// Creates the state directory 0700, or takes group and other access away
/// from an existing one (logged): it holds the database of every network,
/// port and lease. The database files themselves are 0600 ([`SqliteStore::open`]).
pub fn prepare_state_dir(dir: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("cannot create state directory", dir))?;
    crate::store::sqlite::restrict_mode(dir, 0o700).map_err(io_err("cannot make private the state directory", dir))?;
    Ok(())
}

/// Runs the daemon until a termination signal.
pub async fn run(socket: &Path, state_dir: &Path, options: &Options) -> Result<(), DaemonError> {
    let group = match &options.socket_group {
        Some(g) => Some(
            crate::cli::group_id(g)
                .ok_or_else(|| DaemonError::Usage(format!("--socket-group {g:?}: no such group (see /etc/group)")))?,
        ),
        None => None,
    };
    // Certificate and key are read before anything else happens.
    if let Some(l) = &options.listen {
        tls::server_config(&l.cert, &l.key)?;
    }
    prepare_state_dir(state_dir)?;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("cannot create socket directory", dir))?;
    }
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(DaemonError::AlreadyRunning(socket.display().to_string()));
        }
        std::fs::remove_file(socket).map_err(io_err("cannot remove stale socket", socket))?;
    }
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut record = cluster::NodeRecord {
        name: options.cluster.as_ref().map(|c| c.node.clone()).unwrap_or_else(host_name),
        underlay_ip: None,
        started,
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    type Cluster = (Arc<dyn Store>, cluster::Nodes, Option<(cluster::Registration, Arc<EtcdStore>, i64)>);
    let (store, nodes, membership): Cluster = match &options.cluster {
        None => (Arc::new(SqliteStore::open(state_dir)?), cluster::Nodes::Single(record), None),
        Some(c) => {
            if let Some(ifname) = &c.underlay {
                if !cluster::interface_exists(ifname) {
                    return Err(DaemonError::Usage(format!("--underlay {ifname}: no such interface here")));
                }
                record.underlay_ip =
                    cluster::first_ipv4(ifname).map_err(io_err("cannot read the addresses of", Path::new(ifname)))?;
                if record.underlay_ip.is_none() {
                    return Err(DaemonError::Usage(format!("--underlay {ifname} has no IPv4 address")));
                }
            }
            // The etcd client blocks its caller (see store::etcd): off
            // the runtime's worker threads.
            let endpoints = c.endpoints.clone();
            let etcd = tokio::task::spawn_blocking(move || EtcdStore::connect(&endpoints).map(Arc::new))
                .await
                .map_err(|e| EngineError::Internal(format!("connecting to etcd failed: {e}")))??;
            let reg = {
                let (etcd, record) = (etcd.clone(), record.clone());
                tokio::task::spawn_blocking(move || cluster::Registration::start(etcd, &record))
                    .await
                    .map_err(|e| EngineError::Internal(format!("node registration failed: {e}")))??
            };
            tracing::info!(node = %c.node, etcd = %etcd.endpoints(), "registered in the cluster");
            // The mirror follows every change after this revision: the
            // engine reads the store after it, so nothing falls between.
            let from = {
                let etcd = etcd.clone();
                tokio::task::spawn_blocking(move || etcd.revision())
                    .await
                    .map_err(|e| EngineError::Internal(format!("reading etcd's revision failed: {e}")))??
                    + 1
            };
            let nodes = cluster::Nodes::Cluster { store: etcd.clone(), local: c.node.clone() };
            (etcd.clone(), nodes, Some((reg, etcd, from)))
        }
    };
    let rt = tokio::runtime::Handle::current();
    let services = Box::new(NetworkServices::new(rt, LeaseWriter::start(store.clone())));
    let kernel = Arc::new(LinuxKernel::new().map_err(EngineError::Kernel)?);
    // Monitors first: what changes while the engine reconciles is seen.
    let monitors = LinuxKernel::monitors().map_err(EngineError::Kernel)?;
    let node = options.cluster.as_ref().map(|c| c.node.clone());
    let parts = Parts { store, kernel, services, host: Arc::new(SystemHost), node };
    let engine = tokio::task::spawn_blocking(move || Engine::start(parts))
        .await
        .map_err(|e| EngineError::Internal(format!("engine start-up failed: {e}")))??;
    let shared = Arc::new(Mutex::new(engine));
    let healer = healer::Healer::start(shared.clone(), monitors);
    let (registration, mirror) = match membership {
        Some((reg, etcd, from)) => (Some(reg), Some(mirror::Mirror::start(&etcd, from, shared.clone()))),
        None => (None, None),
    };
    crate::fault::arm();
    let listener = UnixListener::bind(socket).map_err(io_err("cannot listen on", socket))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))
        .map_err(io_err("cannot set mode of", socket))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(socket, None, Some(gid)).map_err(io_err("cannot give the socket's group", socket))?;
    }
    let remote = match &options.listen {
        Some(l) => {
            let (listener, acceptor) = tls::bind(l).await?;
            tracing::info!(addr = %l.addr, "TLS listener ready (project tokens only)");
            Some(tokio::spawn(tls::serve(listener, acceptor, shared.clone())))
        }
        None => None,
    };
    tracing::info!(socket = %socket.display(), "lanyard daemon ready");
    let app = crate::api::router(shared.clone()).layer(axum::Extension(Arc::new(nodes)));
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            tracing::info!("shutting down; kernel state is left in place");
        })
        .await
        .map_err(io_err("serving API on", socket))?;
    if let Some(r) = remote {
        r.abort();
    }
    drop(mirror);
    healer.stop();
    shared.lock().unwrap_or_else(|p| p.into_inner()).shutdown();
    if let Some(reg) = registration {
        // Leaves the node list now, not after the lease's TTL.
        let _ = tokio::task::spawn_blocking(move || reg.stop()).await;
    }
    let _ = std::fs::remove_file(socket);
    Ok(())
}

/// The host's name, the node name of a single-host daemon.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_is_private() {
        let top = std::env::temp_dir().join(format!("lanyard-state-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let new = top.join("a/state");
        prepare_state_dir(&new).unwrap();
        assert_eq!(mode(&new), 0o700);
        let old = top.join("old");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_state_dir(&old).unwrap();
        assert_eq!(mode(&old), 0o700);
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o500)).unwrap();
        prepare_state_dir(&old).unwrap();
        assert_eq!(mode(&old), 0o500, "a stricter mode is kept");
        std::fs::remove_dir_all(&top).unwrap();
    }
}
