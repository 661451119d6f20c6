//! Daemon start-up and shutdown: open the store, reconcile the kernel of the
//! namespace the process runs in, keep it healed ([`healer`]), serve the API
//! until SIGTERM/SIGINT.
//! Shutdown leaves every kernel object in place, so VMs keep their network
//! while the daemon restarts.

pub mod cluster;
pub mod config;
pub mod healer;
pub mod mirror;
pub mod notify;
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
    /// Another daemon holds the state directory's lock.
    #[error("another lanyard daemon{0} uses the state directory {1}; stop it first or give another --state-dir")]
    StateDirLocked(String, String),
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
    /// Where Prometheus scrapes `GET /metrics` over plain HTTP (`--metrics-listen`).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where the read-only web page is served (`--web-listen`).
    pub web_listen: Option<std::net::SocketAddr>,
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
        Ok(Options { socket_group, listen, cluster: None, metrics_listen: None, web_listen: None })
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

/// Takes the state directory's lock (`lock`, flock'ed, holding the pid):
/// two daemons on one state would both serve DHCP on its bridges and undo
/// each other's changes. The lock lasts as long as the returned file is
/// open, and the kernel drops it when the process dies, however it dies.
pub fn lock_state_dir(dir: &Path) -> Result<std::fs::File, DaemonError> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io_err("cannot open the lock file", &path))?;
    // SAFETY: flock takes a file descriptor, which `file` keeps open for
    // the call; it touches no memory.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io_err("cannot lock", &path)(e));
        }
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        let pid = pid.trim().parse::<u32>().map(|p| format!(" (pid {p})")).unwrap_or_default();
        return Err(DaemonError::StateDirLocked(pid, dir.display().to_string()));
    }
    let written = file.set_len(0).and_then(|()| file.rewind()).and_then(|()| writeln!(file, "{}", std::process::id()));
    written.map_err(io_err("cannot write", &path))?;
    Ok(file)
}

/// The kernel's boot id now and the one of the daemon's last start (in
/// `STATE/boot_id`): autostart applies when they differ, i.e. at the
/// daemon's first start after the host booted, as virsh's does at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootId {
    /// This boot's id (None when the kernel does not say).
    pub now: Option<String>,
    /// The id stored at the last start (None before the first).
    pub last: Option<String>,
}

/// Where the kernel tells its boot id, new at every boot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

impl BootId {
    /// Reads both ids.
    pub fn read(state_dir: &Path) -> BootId {
        let read = |p: &Path| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        BootId { now: read(Path::new(BOOT_ID)), last: read(&state_dir.join("boot_id")) }
    }

    /// Whether the host booted since the last start; None when either id
    /// is unknown (the engine then takes missing bridges for a boot).
    pub fn booted(&self) -> Option<bool> {
        Some(self.now.as_ref()? != self.last.as_ref()?)
    }

    /// Stores this boot's id for the next start.
    pub fn remember(&self, state_dir: &Path) {
        let Some(now) = &self.now else { return };
        if self.last.as_ref() != Some(now) {
            if let Err(e) = std::fs::write(state_dir.join("boot_id"), format!("{now}\n")) {
                tracing::warn!("cannot store the boot id in {}: {e}", state_dir.display());
            }
        }
    }
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
    let _lock = lock_state_dir(state_dir)?;
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
    let store_text = match &options.cluster {
        None => format!("sqlite {}", state_dir.join("lanyard.db").display()),
        Some(c) => format!("etcd {}", c.endpoints.join(",")),
    };
    crate::metrics::daemon_started(crate::metrics::DaemonFacts { started_at: started, store: store_text });
    let rt = tokio::runtime::Handle::current();
    let services = Box::new(NetworkServices::new(rt, LeaseWriter::start(store.clone())));
    let kernel = Arc::new(LinuxKernel::new().map_err(EngineError::Kernel)?);
    // Monitors first: what changes while the engine reconciles is seen.
    let monitors = LinuxKernel::monitors().map_err(EngineError::Kernel)?;
    let node = options.cluster.as_ref().map(|c| c.node.clone());
    let boot = BootId::read(state_dir);
    let parts = Parts { store, kernel, services, host: Arc::new(SystemHost { booted: boot.booted() }), node };
    let engine = tokio::task::spawn_blocking(move || Engine::start(parts))
        .await
        .map_err(|e| EngineError::Internal(format!("engine start-up failed: {e}")))??;
    // Only once the boot's autostart is done: a start that fails before
    // tries it again.
    boot.remember(state_dir);
    let shared = Arc::new(Mutex::new(engine));
    let healer = healer::Healer::start(shared.clone(), monitors);
    let (registration, mirror, blocks) = match membership {
        Some((reg, etcd, from)) => (
            Some(reg),
            Some(mirror::Mirror::start(&etcd, from, shared.clone())),
            Some(cluster::keep_dhcp_blocks(shared.clone())),
        ),
        None => (None, None, None),
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
    let metrics = match options.metrics_listen {
        Some(addr) => {
            let app = crate::api::metrics_router(shared.clone());
            Some(serve_tcp(addr, "metrics (GET /metrics only)", "cannot listen for metrics on", app).await?)
        }
        None => None,
    };
    let web = match options.web_listen {
        Some(addr) => {
            let app = crate::web::router(shared.clone());
            Some(serve_tcp(addr, "web page", "cannot listen for the web page on", app).await?)
        }
        None => None,
    };
    tracing::info!(socket = %socket.display(), "lanyard daemon ready");
    // The kernel is reconciled and the socket listens: units ordered after
    // lanyard.service (Type=notify) may start now.
    let ready = {
        let status = shared.lock().unwrap_or_else(|p| p.into_inner()).status();
        notify::ready_message(status.networks, status.active_networks)
    };
    match notify::notify(&ready) {
        Ok(true) => tracing::info!("told systemd the daemon is ready"),
        Ok(false) => {}
        // systemd then times the start out, which says more than failing here.
        Err(e) => tracing::warn!("{e}"),
    }
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
            if let Err(e) = notify::notify("STOPPING=1\n") {
                tracing::warn!("{e}");
            }
        })
        .await
        .map_err(io_err("serving API on", socket))?;
    for task in [remote, metrics, blocks, web].into_iter().flatten() {
        task.abort();
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

/// Serves `app` over plain HTTP on `addr` (the metrics and web listeners:
/// read-only, no token) until aborted; `what` names it in the log,
/// `refusal` in the error when the address cannot be taken.
async fn serve_tcp(
    addr: std::net::SocketAddr,
    what: &'static str,
    refusal: &'static str,
    app: axum::Router,
) -> Result<tokio::task::JoinHandle<()>, DaemonError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| DaemonError::Io {
        what: refusal,
        path: addr.to_string(),
        source,
    })?;
    tracing::info!(%addr, "{what} listener ready (read-only)");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(%addr, "{what} listener failed: {e}");
        }
    }))
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

    #[test]
    fn the_boot_id_tells_a_boot_from_a_restart() {
        let dir = std::env::temp_dir().join(format!("lanyard-boot-id-{}", std::process::id()));
        prepare_state_dir(&dir).unwrap();
        let first = BootId::read(&dir);
        assert!(first.now.is_some(), "Linux tells its boot id");
        assert_eq!(first.booted(), None, "no id stored yet: unknown");
        first.remember(&dir);
        assert_eq!(BootId::read(&dir).booted(), Some(false), "a restart");
        std::fs::write(dir.join("boot_id"), "another-boot\n").unwrap();
        assert_eq!(BootId::read(&dir).booted(), Some(true), "a boot");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_daemon_per_state_dir() {
        let dir = std::env::temp_dir().join(format!("lanyard-state-lock-{}", std::process::id()));
        prepare_state_dir(&dir).unwrap();
        let held = lock_state_dir(&dir).unwrap();
        // flock locks belong to the open file: a second open is a second daemon.
        let e = lock_state_dir(&dir).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "another lanyard daemon (pid {}) uses the state directory {}; stop it first or give another --state-dir",
                std::process::id(),
                dir.display()
            )
        );
        drop(held);
        drop(lock_state_dir(&dir).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
